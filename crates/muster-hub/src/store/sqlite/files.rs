//! The data dir and its database file: private to the hub's user, and never
//! anything but Muster's own database taken for one.
//!
//! An absent database is made under a temporary name and renamed into place
//! only once its schema is complete, so a crash half-way leaves nothing that
//! looks like a database. An existing one must be Muster's: a zero-length
//! file (a truncated database, say) or another program's database is refused
//! with a clear message, never silently replaced by a new hub with a new
//! admin key.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Read as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use rusqlite::{Connection, OpenFlags};

/// The database's file name in the data dir.
pub(super) const DB_FILE: &str = "muster.db";

/// The file of the database that holds run output (attached as `output`).
pub(super) const OUTPUT_FILE: &str = "output.db";

/// The migration that moved run output into [`OUTPUT_FILE`].
const OUTPUT_MIGRATION: i64 = 10;

/// Where a new database is made before it is renamed to [`DB_FILE`].
const INIT_FILE: &str = "muster.db.init";

/// What every SQLite database file starts with.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Files next to a database that SQLite keeps in WAL mode.
const WAL_SUFFIXES: [&str; 2] = ["-wal", "-shm"];

/// Makes `dir` (mode 0700, parents included) if it is absent. An existing
/// one is left as it is, with a warning if others may enter it: it may be a
/// directory the operator shares on purpose.
pub(super) fn data_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    data_dir = %dir.display(),
                    mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "the data dir is open to other users; the database in it is not, \
                     but consider chmod 700"
                );
            }
            Ok(())
        }
        Ok(_) => bail!("the data dir {} is not a directory", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating data dir {}", dir.display())),
        Err(e) => Err(e).with_context(|| format!("reading data dir {}", dir.display())),
    }
}

/// The database in `dir`: checked if it exists, made with `init` (which
/// gets the new database's connection) if it does not. Returns its path.
pub(super) fn database(
    dir: &Path,
    init: impl FnOnce(&mut Connection) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(DB_FILE);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => {
            check_is_muster(&path)?;
            for file in with_wal_files(&path) {
                make_private(&file)?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(dir, &path, init)?,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    Ok(path)
}

/// The output database in `dir`, made (empty, mode 0600) if absent; its
/// schema is made when it is attached. Refused when it is missing or empty
/// while the main database says run output was moved into it: that output
/// is lost, and a hub must not carry on as if runs had none.
pub(super) fn output_database(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(OUTPUT_FILE);
    let main = dir.join(DB_FILE);
    let len = match std::fs::metadata(&path) {
        Ok(meta) => Some(meta.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if len.unwrap_or(0) == 0 && output_was_moved(&main) {
        bail!(
            "{} is missing or empty, but {} keeps its runs' output there: restore both from              the same backup, or move both away to start a new hub",
            path.display(),
            main.display()
        );
    }
    match len {
        Some(0) | None => {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
        }
        Some(_) => check_is_sqlite(&path)?,
    }
    for file in with_wal_files(&path) {
        make_private(&file)?;
    }
    Ok(path)
}

/// Whether the main database at `main` records that run output moved into
/// the output database. Anything unreadable says no: opening the main
/// database reports what is wrong with it.
fn output_was_moved(main: &Path) -> bool {
    let Ok(conn) = Connection::open_with_flags(main, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return false;
    };
    conn.query_row(
        "SELECT count(*) FROM schema_migrations WHERE version = ?1",
        [OUTPUT_MIGRATION],
        |row| row.get::<_, i64>(0),
    )
    .is_ok_and(|n| n > 0)
}

/// Refuses a file that is not a SQLite database.
fn check_is_sqlite(path: &Path) -> anyhow::Result<()> {
    let mut header = [0u8; 16];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut header));
    if read.is_err() || &header != SQLITE_HEADER {
        bail!(
            "{} is not a SQLite database, so not Muster's; this hub will not start on it. \
             Move it away, or point --data-dir elsewhere",
            path.display()
        );
    }
    Ok(())
}

/// Refuses a database that is not Muster's, saying what it is instead.
fn check_is_muster(path: &Path) -> anyhow::Result<()> {
    let shown = path.display();
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {shown} to check it"))?;
    let len = file.metadata()?.len();
    if len == 0 {
        bail!(
            "{shown} is empty (0 bytes): it is not a Muster database, and this hub will not \
             start on it or replace it. If it was truncated, restore it from a backup; to \
             start a new hub, move it away first"
        );
    }
    let mut header = [0u8; 16];
    if len < header.len() as u64
        || file.read_exact(&mut header).is_err()
        || &header != SQLITE_HEADER
    {
        bail!(
            "{shown} is not a SQLite database, so not a Muster database; this hub will not \
             start on it. Move it away, or point --data-dir elsewhere"
        );
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {shown} to check it"))?;
    let ours: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master
             WHERE type = 'table' AND name IN ('schema_migrations', '_sqlx_migrations')",
            [],
            |row| row.get(0),
        )
        .with_context(|| format!("reading the schema of {shown}"))?;
    if ours == 0 {
        bail!(
            "{shown} is a SQLite database, but not Muster's (it has no schema_migrations \
             table); this hub will not start on it. Move it away, or point --data-dir elsewhere"
        );
    }
    Ok(())
}

/// Makes the database at `path` under [`INIT_FILE`] first, then renames it.
fn create(
    dir: &Path,
    path: &Path,
    init: impl FnOnce(&mut Connection) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let temp = dir.join(INIT_FILE);
    // What a crash during an earlier attempt left.
    for file in with_wal_files(&temp) {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", file.display())),
        }
    }
    // Made 0600 before SQLite opens it; SQLite gives its WAL files the same mode.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("creating {}", temp.display()))?;
    {
        let mut conn =
            Connection::open(&temp).with_context(|| format!("opening {}", temp.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        init(&mut conn)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        conn.close()
            .map_err(|(_, e)| e)
            .with_context(|| format!("closing {}", temp.display()))?;
    }
    OpenOptions::new()
        .write(true)
        .open(&temp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", temp.display()))?;
    std::fs::rename(&temp, path)
        .with_context(|| format!("renaming {} to {}", temp.display(), path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// `path` and the WAL files SQLite keeps next to it.
pub(super) fn with_wal_files(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_owned()];
    for suffix in WAL_SUFFIXES {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        files.push(PathBuf::from(name));
    }
    files
}

/// Takes group and other access away from `file`, if it exists.
fn make_private(file: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::metadata(file) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(file, Permissions::from_mode(mode & 0o700))
            .with_context(|| format!("restricting {} to its owner", file.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn init(conn: &mut Connection) -> anyhow::Result<()> {
        conn.execute_batch("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)")?;
        Ok(())
    }

    #[test]
    fn a_new_data_dir_and_database_are_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/data");
        data_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let path = database(&dir, init).unwrap();
        assert_eq!(mode(&path), 0o600);
        // SQLite makes the WAL files with the database's mode.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        for file in with_wal_files(&path) {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        assert!(!dir.join(INIT_FILE).exists());
        // Opened again, it is checked and kept.
        drop(conn);
        database(&dir, |_| panic!("not made twice")).unwrap();
    }

    #[test]
    fn an_empty_database_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        std::fs::write(&path, b"").unwrap();
        let err = database(dir.path(), init).unwrap_err().to_string();
        assert!(err.contains("is empty (0 bytes)"), "{err}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), b"{\"runs\": []}\n").unwrap();
        let err = database(dir.path(), init).unwrap_err().to_string();
        assert!(err.contains("is not a SQLite database"), "{err}");
    }

    #[test]
    fn another_programs_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE users (name TEXT)")
            .unwrap();
        let err = database(dir.path(), init).unwrap_err().to_string();
        assert!(err.contains("not Muster's"), "{err}");
    }

    #[test]
    fn a_half_made_database_is_made_again_and_an_open_one_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INIT_FILE), b"torn").unwrap();
        let path = database(dir.path(), init).unwrap();
        assert!(!dir.path().join(INIT_FILE).exists());
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        database(dir.path(), init).unwrap();
        assert_eq!(mode(&path), 0o600);
    }
}
