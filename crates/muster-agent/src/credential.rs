//! The agent's credential: the token it says `hello` with, and the file in
//! its state dir where a token the hub rotated is kept.
//!
//! A stored credential was handed over by the hub after the agent was
//! started, so it is newer than any token given on the command line or in
//! the environment, and wins over it. Deleting the file goes back to the
//! given token.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The file in the state dir that holds a rotated token.
pub const CREDENTIAL_FILE: &str = "credential";

/// The token in use, and where a new one goes.
pub(crate) struct Credential {
    token: String,
    /// `<state dir>/credential`; `None` without a state dir, which cannot
    /// take a rotated token.
    file: Option<PathBuf>,
}

impl Credential {
    /// The credential stored in `state_dir`, else `given`.
    pub(crate) fn load(given: &str, state_dir: Option<&Path>) -> anyhow::Result<Self> {
        let file = state_dir.map(|dir| dir.join(CREDENTIAL_FILE));
        let stored = match &file {
            Some(path) => match fs::read_to_string(path) {
                Ok(text) => Some(text.trim().to_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot read {}", path.display()));
                }
            },
            None => None,
        };
        let token = match stored {
            Some(token) if !token.is_empty() => {
                tracing::info!(
                    file = %file.as_ref().expect("stored in a file").display(),
                    "using the credential the hub rotated, not the token given"
                );
                token
            }
            _ if given.is_empty() => {
                bail!("no token: give --token, --token-file or MUSTER_AGENT_TOKEN")
            }
            _ => given.to_owned(),
        };
        Ok(Self { token, file })
    }

    /// The token to say `hello` with.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Keeps `token` (mode 0600, written whole and synced before it replaces
    /// the old file) and uses it from the next connection on.
    pub(crate) fn store(&mut self, token: String) -> Result<(), String> {
        let Some(path) = &self.file else {
            return Err("the agent has no state dir to keep a credential in".to_owned());
        };
        let tmp = path.with_extension("tmp");
        let written = (|| {
            let _ = fs::remove_file(&tmp);
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(token.as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent() {
                fs::File::open(dir)?.sync_all()?;
            }
            Ok::<_, std::io::Error>(())
        })();
        written.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        self.token = token;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_stored_credential_wins_and_a_new_one_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let mut credential = Credential::load("given", Some(dir.path())).unwrap();
        assert_eq!(credential.token(), "given");
        credential.store("rotated".into()).unwrap();
        assert_eq!(credential.token(), "rotated");
        let path = dir.path().join(CREDENTIAL_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = Credential::load("given", Some(dir.path())).unwrap();
        assert_eq!(again.token(), "rotated");
    }

    #[test]
    fn without_a_state_dir_nothing_is_stored_and_without_a_token_nothing_starts() {
        let mut credential = Credential::load("given", None).unwrap();
        assert!(credential.store("rotated".into()).is_err());
        assert_eq!(credential.token(), "given");
        let dir = tempfile::tempdir().unwrap();
        assert!(Credential::load("", Some(dir.path())).is_err());
    }
}
