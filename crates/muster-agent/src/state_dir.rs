//! The state dir: the agent's own, private to its user. It holds the run
//! ledger and the event socket; what a run printed never touches it.

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::{Context as _, bail};

/// Makes `dir` (mode 0700, parents included) if it is absent. An existing
/// one is left as it is, with a warning if others may enter it.
pub fn create(dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    state_dir = %dir.display(),
                    mode = format!("{mode:o}"),
                    "the state dir is open to other users; its files are not, but consider chmod 700"
                );
            }
            Ok(())
        }
        Ok(_) => bail!("the state dir {} is not a directory", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the state dir {}", dir.display())),
        Err(e) => Err(e).with_context(|| format!("cannot read the state dir {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_state_dir_is_private_and_an_existing_one_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("var/lib/agent");
        create(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        create(&dir).unwrap();
        let file = root.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(create(&file).is_err());
    }
}
