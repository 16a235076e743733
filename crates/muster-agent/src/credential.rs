//! The agent's credential: the token it says `hello` with, and the file in
//! its state dir where a token the hub handed over (rotated, or answered to
//! an enrollment) is kept.
//!
//! A stored credential was handed over by the hub after the agent was
//! started, so it is newer than any token given on the command line or in
//! the environment, and wins over it, an enrollment token included.
//! Deleting the file goes back to the given token.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use muster_proto::enroll::is_enrollment_token;

/// The file in the state dir that holds a rotated token.
pub const CREDENTIAL_FILE: &str = "credential";

/// The token in use, and where a new one goes.
pub(crate) struct Credential {
    token: String,
    /// Whether `token` is an enrollment token, to be exchanged for the
    /// agent's own.
    enrolling: bool,
    /// `<state dir>/credential`; `None` without a state dir, which cannot
    /// take a rotated token.
    file: Option<PathBuf>,
}

impl Credential {
    /// The credential stored in `state_dir`, else `given`, else the
    /// enrollment token `enroll`.
    pub(crate) fn load(
        given: &str,
        enroll: Option<&str>,
        state_dir: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let file = state_dir.map(|dir| dir.join(CREDENTIAL_FILE));
        if let Some(path) = &file
            && let Some(token) = read_stored(path)?
        {
            let ignored = match (enroll, given.is_empty()) {
                (Some(_), _) => "; ignoring the enrollment token",
                (None, false) => "; ignoring the token given",
                (None, true) => "",
            };
            tracing::info!(file = %path.display(), "a credential is stored{ignored}");
            return Ok(Self {
                token,
                enrolling: false,
                file,
            });
        }
        if let Some(enroll) = enroll {
            check_enrollment(enroll, file.is_some())?;
            return Ok(Self {
                token: enroll.to_owned(),
                enrolling: true,
                file,
            });
        }
        if given.is_empty() {
            bail!(
                "no token: give --token, --token-file, --enroll, MUSTER_AGENT_TOKEN or MUSTER_ENROLL_TOKEN"
            );
        }
        if is_enrollment_token(given) {
            bail!(
                "the token given is an enrollment token: pass it with --enroll or MUSTER_ENROLL_TOKEN"
            );
        }
        Ok(Self {
            token: given.to_owned(),
            enrolling: false,
            file,
        })
    }

    /// Whether the token in use is an enrollment token.
    pub(crate) fn enrolling(&self) -> bool {
        self.enrolling
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
        muster_tls::write_private(path, &token)?;
        self.token = token;
        self.enrolling = false;
        Ok(())
    }
}

/// The token stored in `path`, if there is one (an empty file holds none).
fn read_stored(path: &Path) -> anyhow::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Refuses an enrollment that could not work: a token of another kind, or
/// no state dir to keep the credential it yields in.
fn check_enrollment(enroll: &str, has_state_dir: bool) -> anyhow::Result<()> {
    if !is_enrollment_token(enroll) {
        bail!(
            "--enroll takes an enrollment token (mse_…) as printed by `muster enroll create`; give an agent token with --token"
        );
    }
    if !has_state_dir {
        bail!("enrolling needs a state dir to keep the agent's credential in");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_stored_credential_wins_and_a_new_one_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let mut credential = Credential::load("given", None, Some(dir.path())).unwrap();
        assert_eq!(credential.token(), "given");
        credential.store("rotated".into()).unwrap();
        assert_eq!(credential.token(), "rotated");
        let path = dir.path().join(CREDENTIAL_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = Credential::load("given", None, Some(dir.path())).unwrap();
        assert_eq!(again.token(), "rotated");
        let enrolling = Credential::load("", Some("mse_abcdefghijkl_x"), Some(dir.path())).unwrap();
        assert_eq!(enrolling.token(), "rotated", "the stored credential wins");
        assert!(!enrolling.enrolling());
    }

    #[test]
    fn without_a_state_dir_nothing_is_stored_and_without_a_token_nothing_starts() {
        let mut credential = Credential::load("given", None, None).unwrap();
        assert!(credential.store("rotated".into()).is_err());
        assert_eq!(credential.token(), "given");
        let dir = tempfile::tempdir().unwrap();
        assert!(Credential::load("", None, Some(dir.path())).is_err());
    }

    #[test]
    fn an_enrollment_token_is_used_until_the_credential_it_yields_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let enroll = "mse_abcdefghijkl_secret";
        let mut credential = Credential::load("", Some(enroll), Some(dir.path())).unwrap();
        assert!(credential.enrolling());
        assert_eq!(credential.token(), enroll);
        credential.store("mst_abcdefghijkl_own".into()).unwrap();
        assert!(!credential.enrolling());
        let stored = fs::read_to_string(dir.path().join(CREDENTIAL_FILE)).unwrap();
        assert!(
            !stored.contains("secret"),
            "the enrollment token is not kept"
        );
        // Kinds mixed up, or nowhere to keep the credential, are refused.
        let empty = tempfile::tempdir().unwrap();
        assert!(Credential::load("", Some(enroll), None).is_err());
        assert!(Credential::load("", Some("mst_abcdefghijkl_x"), Some(empty.path())).is_err());
        assert!(Credential::load(enroll, None, Some(empty.path())).is_err());
    }
}
