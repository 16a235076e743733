//! The ledger file in the state dir: one [`Line`] per line, appended, and
//! rewritten whole (temp file, fsync, rename, fsync of the directory) when it
//! is compacted, so a crash leaves either the old file or the new one.
//!
//! Every function here blocks; callers run them on blocking threads.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::index::Line;

/// Name of the ledger file inside the state dir.
pub(super) const LEDGER_FILE_NAME: &str = "runs.ledger";

/// Name of the file a rewrite goes through before it replaces the ledger.
const TEMP_FILE_NAME: &str = "runs.ledger.tmp";

/// The open ledger file, positioned for appending.
#[derive(Debug)]
pub(super) struct LedgerFile {
    dir: PathBuf,
    file: File,
}

impl LedgerFile {
    /// Reads the ledger in `dir` (none yet is an empty one) and rewrites it as
    /// `compact` turns what was read into, which also drops a line torn by a crash.
    pub(super) fn open(
        dir: &Path,
        compact: impl FnOnce(Vec<Line>) -> Vec<Line>,
    ) -> anyhow::Result<(Self, Vec<Line>)> {
        crate::state_dir::create(dir)?;
        let lines = compact(read(&dir.join(LEDGER_FILE_NAME))?);
        let file = replace(dir, &lines)?;
        let ledger = Self {
            dir: dir.to_owned(),
            file,
        };
        Ok((ledger, lines))
    }

    /// Appends `lines`; with `durable`, returns only once they are on disk.
    pub(super) fn append(&mut self, lines: &[Line], durable: bool) -> anyhow::Result<()> {
        let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
        self.file
            .write_all(text.as_bytes())
            .context("cannot append to the ledger")?;
        if durable {
            self.file.sync_data().context("cannot sync the ledger")?;
        }
        Ok(())
    }

    /// Replaces the whole file with `lines`.
    pub(super) fn rewrite(&mut self, lines: &[Line]) -> anyhow::Result<()> {
        self.file = replace(&self.dir, lines)?;
        Ok(())
    }
}

/// The lines of the ledger at `path`, skipping any that cannot be read (a
/// crash can leave the last one torn).
fn read(path: &Path) -> anyhow::Result<Vec<Line>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut lines = Vec::new();
    for text in BufReader::new(file).lines() {
        let text = text.with_context(|| format!("cannot read {}", path.display()))?;
        match text.parse() {
            Ok(line) => lines.push(line),
            Err(e) => tracing::warn!("skipping a line of {}: {e}", path.display()),
        }
    }
    Ok(lines)
}

/// Atomically replaces the ledger in `dir` with `lines`; returns it open for appending.
fn replace(dir: &Path, lines: &[Line]) -> anyhow::Result<File> {
    let temp = dir.join(TEMP_FILE_NAME);
    let path = dir.join(LEDGER_FILE_NAME);
    write_synced(&temp, lines).with_context(|| format!("cannot write {}", temp.display()))?;
    fs::rename(&temp, &path)
        .with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))?;
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot sync the state dir {}", dir.display()))?;
    OpenOptions::new()
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))
}

fn write_synced(path: &Path, lines: &[Line]) -> std::io::Result<()> {
    // Readable by the agent's user only, as everything in the state dir.
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // A file left by a crash keeps its mode through `open`.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let mut writer = BufWriter::new(file);
    for line in lines {
        writeln!(writer, "{line}")?;
    }
    writer.into_inner().map_err(|e| e.into_error())?.sync_all()
}
