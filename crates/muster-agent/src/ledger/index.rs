//! The ledger's contents in memory: what each known run id's status is, and
//! which ids a compaction keeps. No I/O here; `file` persists these as [`Line`]s.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use muster_proto::RunId;

/// One line of the ledger file: `started <run id>` or `settled <run id>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Line {
    /// The agent is about to spawn the run (fsynced before it does).
    Started(RunId),
    /// The hub acknowledged the run's exit, or was told the outcome is unknown.
    Settled(RunId),
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Started(run) => write!(f, "started {run}"),
            Self::Settled(run) => write!(f, "settled {run}"),
        }
    }
}

impl FromStr for Line {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("invalid ledger line {line:?}");
        let (word, id) = line.split_once(' ').ok_or_else(invalid)?;
        let run = id.parse::<RunId>().map_err(|_| invalid())?;
        match word {
            "started" => Ok(Self::Started(run)),
            "settled" => Ok(Self::Settled(run)),
            _ => Err(invalid()),
        }
    }
}

/// Where a known run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
    /// Started by this agent process; not settled yet.
    Started,
    /// Started by an earlier agent process that never settled it: outcome unknown.
    Orphaned,
    /// Settled; kept only so that a repeated `run.start` is refused.
    Settled,
}

#[derive(Clone, Copy, Debug)]
struct Record {
    /// Position in start order; larger is more recent.
    order: u64,
    status: Status,
}

/// Every run id the ledger knows.
#[derive(Debug, Default)]
pub(super) struct Index {
    records: HashMap<RunId, Record>,
    next_order: u64,
}

impl Index {
    /// The index an earlier process left in `lines`; its unsettled runs are orphans.
    pub(super) fn replay(lines: impl IntoIterator<Item = Line>) -> Self {
        let mut index = Self::default();
        for line in lines {
            match line {
                Line::Started(run) => {
                    index.insert(run, Status::Orphaned);
                }
                Line::Settled(run) => {
                    index.settle(run);
                }
            }
        }
        index
    }

    /// Records that this process starts `run`; false if the id is known already.
    pub(super) fn claim(&mut self, run: RunId) -> bool {
        self.insert(run, Status::Started)
    }

    /// Marks `run` settled; false if it is unknown or settled already.
    pub(super) fn settle(&mut self, run: RunId) -> bool {
        match self.records.get_mut(&run) {
            Some(record) if record.status != Status::Settled => {
                record.status = Status::Settled;
                true
            }
            _ => false,
        }
    }

    /// Runs an earlier agent process started and never settled.
    pub(super) fn orphans(&self) -> Vec<RunId> {
        let mut orphans: Vec<_> = self
            .records
            .iter()
            .filter(|(_, record)| record.status == Status::Orphaned)
            .map(|(run, record)| (record.order, *run))
            .collect();
        orphans.sort_unstable();
        orphans.into_iter().map(|(_, run)| run).collect()
    }

    /// How many run ids the index holds.
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    /// Forgets every run but the `keep` most recent ones, whatever their status:
    /// an old unsettled run is forgotten too, so that a hub that never
    /// acknowledges cannot grow the ledger (or the `hello` report) without bound.
    pub(super) fn compact(&mut self, keep: usize) {
        if self.records.len() <= keep {
            return;
        }
        let mut orders: Vec<u64> = self.records.values().map(|record| record.order).collect();
        let cut = orders.len() - keep;
        let (_, &mut oldest_kept, _) = orders.select_nth_unstable(cut);
        self.records.retain(|_, record| record.order >= oldest_kept);
    }

    /// The lines that describe this index, oldest run first.
    pub(super) fn lines(&self) -> Vec<Line> {
        let mut records: Vec<_> = self.records.iter().collect();
        records.sort_unstable_by_key(|(_, record)| record.order);
        let mut lines = Vec::with_capacity(records.len() * 2);
        for (run, record) in records {
            lines.push(Line::Started(*run));
            if record.status == Status::Settled {
                lines.push(Line::Settled(*run));
            }
        }
        lines
    }

    #[cfg(test)]
    pub(super) fn status(&self, run: RunId) -> Option<Status> {
        self.records.get(&run).map(|record| record.status)
    }

    fn insert(&mut self, run: RunId, status: Status) -> bool {
        if self.records.contains_key(&run) {
            return false;
        }
        let order = self.next_order;
        self.next_order += 1;
        self.records.insert(run, Record { order, status });
        true
    }
}
