//! Unit tests of the ledger: reopening after a crash, compaction, and refusing
//! run ids it has seen.

use std::io::Write;

use super::file::LEDGER_FILE_NAME;
use super::index::Status;
use super::*;

fn runs(count: usize) -> Vec<RunId> {
    let mut runs: Vec<_> = (0..count).map(|_| RunId::generate()).collect();
    runs.sort();
    runs
}

fn ledger_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(LEDGER_FILE_NAME)).unwrap()
}

async fn start(ledger: &Ledger, run: RunId) {
    assert!(ledger.claim(run), "{run} was already known");
    ledger.record_started(run).await.unwrap();
}

#[tokio::test]
async fn a_reopened_ledger_refuses_known_ids_and_reports_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = runs(3)[..] else {
        unreachable!()
    };
    let ledger = Ledger::open(Some(dir.path())).unwrap();
    for run in [a, b, c] {
        start(&ledger, run).await;
    }
    ledger.settle(b);
    ledger.flush().await;
    // A crash: the process is gone, possibly half-way through a line.
    drop(ledger);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join(LEDGER_FILE_NAME))
        .unwrap();
    file.write_all(b"started 01J").unwrap();
    drop(file);

    let ledger = Ledger::open(Some(dir.path())).unwrap();
    assert_eq!(ledger.orphans(), [a, c]);
    for run in [a, b, c] {
        assert!(!ledger.claim(run), "{run} would run twice");
    }
    assert!(ledger.claim(RunId::generate()));
    assert!(!ledger_text(dir.path()).contains("01J\n"), "torn line kept");
}

#[tokio::test]
async fn settled_orphans_are_not_reported_again() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunId::generate();
    start(&Ledger::open(Some(dir.path())).unwrap(), run).await;

    let ledger = Ledger::open(Some(dir.path())).unwrap();
    assert_eq!(ledger.orphans(), [run]);
    ledger.settle_orphans();
    assert!(ledger.orphans().is_empty());
    ledger.flush().await;

    let ledger = Ledger::open(Some(dir.path())).unwrap();
    assert!(ledger.orphans().is_empty());
    assert!(!ledger.claim(run));
}

#[test]
fn opening_compacts_to_the_most_recent_ids() {
    let dir = tempfile::tempdir().unwrap();
    let ids = runs(LEDGER_KEEP_RUNS + 50);
    let (newest, settled) = ids.split_last().unwrap();
    let mut text = String::new();
    for run in settled {
        text.push_str(&format!("started {run}\nsettled {run}\n"));
    }
    text.push_str(&format!("started {newest}\n"));
    std::fs::write(dir.path().join(LEDGER_FILE_NAME), text).unwrap();

    let ledger = Ledger::open(Some(dir.path())).unwrap();
    let index = ledger.index();
    assert_eq!(index.len(), LEDGER_KEEP_RUNS);
    assert_eq!(index.status(*newest), Some(Status::Orphaned));
    // The 50 oldest ids are forgotten.
    assert_eq!(index.status(settled[49]), None);
    assert_eq!(index.status(settled[50]), Some(Status::Settled));
    drop(index);
    let lines = ledger_text(dir.path()).lines().count();
    assert_eq!(lines, 2 * LEDGER_KEEP_RUNS - 1);
    assert!(!dir.path().join("runs.ledger.tmp").exists());
    assert_eq!(ledger.orphans(), [*newest]);
}

#[tokio::test]
async fn a_running_ledger_compacts_when_it_reaches_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(Some(dir.path())).unwrap();
    let ids = runs(LEDGER_COMPACT_AT);
    for run in &ids[..LEDGER_COMPACT_AT - 1] {
        assert!(ledger.claim(*run));
        ledger.settle(*run);
    }
    assert_eq!(ledger.index().len(), LEDGER_COMPACT_AT - 1);
    let last = ids[LEDGER_COMPACT_AT - 1];
    start(&ledger, last).await;
    assert_eq!(ledger.index().len(), LEDGER_KEEP_RUNS);
    assert!(ledger.claim(ids[0]), "the oldest id is forgotten");
    // The file was rewritten too, and a reopened ledger agrees.
    ledger.flush().await;
    let reopened = Ledger::open(Some(dir.path())).unwrap();
    assert_eq!(reopened.index().len(), LEDGER_KEEP_RUNS);
    assert_eq!(reopened.orphans(), [last]);
}

#[test]
fn an_in_memory_ledger_refuses_repeats_and_has_no_orphans() {
    let ledger = Ledger::open(None).unwrap();
    let run = RunId::generate();
    assert!(ledger.claim(run));
    assert!(!ledger.claim(run));
    ledger.settle(run);
    assert!(!ledger.claim(run));
    assert!(ledger.orphans().is_empty());
}

#[test]
fn lines_round_trip() {
    let run = RunId::generate();
    for line in [Line::Started(run), Line::Settled(run)] {
        assert_eq!(line.to_string().parse::<Line>(), Ok(line));
    }
    assert!("finished 01J".parse::<Line>().is_err());
    assert!("started".parse::<Line>().is_err());
}
