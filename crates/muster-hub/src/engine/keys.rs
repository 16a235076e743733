//! Idempotency keys: a request repeated with the key of an earlier one gets
//! that earlier run or job, never a second one.
//!
//! The index holds the keys of the runs and jobs this hub has in memory, and
//! of those that ended, until the batch that ended them is committed; only
//! then can the store answer for them. A key the index does not hold is
//! looked up in the store ([`Lookup::RunKey`]); requests with that key wait
//! in line until the answer comes back, and are then served in order: the
//! first creates, the others find what it created.
//!
//! [`Lookup::RunKey`]: super::Lookup::RunKey

use std::collections::HashMap;

use muster_proto::jobs::{JobInfo, JobSpec};
use muster_proto::messages::{Principal, RunCreate};
use muster_proto::{ErrorCode, JobId, RequestId, RunId, RunInfo, UnixMillis};

use super::batch::ReplyTo;
use super::error::ApiError;
use super::{Engine, Lookup};

/// Runs or jobs: their keys live in separate spaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// `run.create` keys.
    Run,
    /// `job.create` keys.
    Job,
}

/// One idempotency key of one API key name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyRef {
    /// Runs or jobs.
    pub kind: KeyKind,
    /// The API key name that sent it.
    pub owner: String,
    /// The key.
    pub key: String,
}

/// What the store holds under a key.
#[derive(Debug)]
pub enum Found {
    /// The run it created, if any.
    Run(Option<RunInfo>),
    /// The job it created, if any.
    Job(Option<JobInfo>),
}

/// The answer to a lookup.
#[derive(Debug)]
pub struct KeyFound {
    /// The key looked up.
    pub key: KeyRef,
    /// What the store holds, or why it could not say.
    pub found: Result<Found, String>,
}

/// A request waiting for its key to be looked up.
pub(crate) enum Pending {
    /// A `run.create`.
    Run {
        to: ReplyTo,
        re: Option<RequestId>,
        id: RunId,
        create: RunCreate,
        principal: Principal,
    },
    /// A `job.create`.
    Job {
        to: ReplyTo,
        re: Option<RequestId>,
        id: JobId,
        spec: JobSpec,
        subscribe: bool,
        key: Option<String>,
        principal: Principal,
    },
}

impl Pending {
    fn key(&self) -> Option<KeyRef> {
        match self {
            Self::Run {
                create, principal, ..
            } => create.request.idempotency_key.as_ref().map(|key| KeyRef {
                kind: KeyKind::Run,
                owner: principal.name.clone(),
                key: key.clone(),
            }),
            Self::Job { key, principal, .. } => key.as_ref().map(|key| KeyRef {
                kind: KeyKind::Job,
                owner: principal.name.clone(),
                key: key.clone(),
            }),
        }
    }
}

/// The keys this hub answers for from memory, and the lookups in flight.
#[derive(Default)]
pub(crate) struct KeyIndex {
    runs: HashMap<(String, String), RunId>,
    run_keys: HashMap<RunId, (String, String)>,
    /// Keyed runs that ended, until their batch is committed.
    ended_runs: HashMap<RunId, RunInfo>,
    jobs: HashMap<(String, String), JobId>,
    job_keys: HashMap<JobId, (String, String)>,
    waiting: HashMap<KeyRef, Vec<Pending>>,
}

impl KeyIndex {
    /// A keyed run now exists.
    pub(crate) fn insert_run(&mut self, owner: &str, key: &str, id: RunId) {
        let pair = (owner.to_owned(), key.to_owned());
        self.runs.insert(pair.clone(), id);
        self.run_keys.insert(id, pair);
    }

    /// A run ended; a keyed one's record answers for its key until the release.
    pub(crate) fn run_ended(&mut self, run: &RunInfo) {
        if self.run_keys.contains_key(&run.id) {
            self.ended_runs.insert(run.id, run.clone());
        }
    }

    /// A keyed job now exists.
    pub(crate) fn insert_job(&mut self, owner: &str, key: &str, id: JobId) {
        let pair = (owner.to_owned(), key.to_owned());
        self.jobs.insert(pair.clone(), id);
        self.job_keys.insert(id, pair);
    }

    /// The batch that ended `runs` and `jobs` is committed: the store
    /// answers for their keys now.
    pub(crate) fn release(&mut self, runs: &[RunId], jobs: &[JobId]) {
        for id in runs {
            if let Some(pair) = self.run_keys.remove(id) {
                self.runs.remove(&pair);
            }
            self.ended_runs.remove(id);
        }
        for id in jobs {
            if let Some(pair) = self.job_keys.remove(id) {
                self.jobs.remove(&pair);
            }
        }
    }

    fn run(&self, key: &KeyRef) -> Option<RunId> {
        self.runs
            .get(&(key.owner.clone(), key.key.clone()))
            .copied()
    }

    fn job(&self, key: &KeyRef) -> Option<JobId> {
        self.jobs
            .get(&(key.owner.clone(), key.key.clone()))
            .copied()
    }
}

impl Engine {
    /// Routes a `run.create` or `job.create` by its key: `Some` gives it
    /// back to be created now; `None` means it was answered (the key's run
    /// or job exists) or parked until a lookup.
    pub(super) fn route_by_key(&mut self, pending: Pending) -> Option<Pending> {
        let Some(key) = pending.key() else {
            return Some(pending);
        };
        match &pending {
            Pending::Run {
                to,
                re,
                id: asked,
                create,
                ..
            } => {
                let held = self.keys.run(&key).and_then(|id| self.held_run(id));
                if let Some(run) = held {
                    self.answer_existing_run(to, re.clone(), *asked, create.subscribe, run);
                    return None;
                }
            }
            Pending::Job {
                to, re, subscribe, ..
            } => {
                if let Some(id) = self.keys.job(&key) {
                    self.answer_existing_job(to, re.clone(), *subscribe, id);
                    return None;
                }
            }
        }
        self.park(key, pending);
        None
    }

    /// A run's latest record while the hub holds it: running, or ended and
    /// not yet released.
    fn held_run(&self, id: RunId) -> Option<RunInfo> {
        self.runs
            .get(&id)
            .map(|r| r.info.clone())
            .or_else(|| self.ended.get(&id).cloned())
            .or_else(|| self.keys.ended_runs.get(&id).cloned())
    }

    /// Parks `pending` behind a lookup of `key`, starting one if none is in flight.
    fn park(&mut self, key: KeyRef, pending: Pending) {
        let waiting = self.keys.waiting.entry(key.clone()).or_default();
        waiting.push(pending);
        if waiting.len() == 1 {
            self.lookups.push(match key.kind {
                KeyKind::Run => Lookup::RunKey(key),
                KeyKind::Job => Lookup::JobKey(key),
            });
        }
    }

    /// Serves the requests that waited for a lookup, in order.
    pub(super) fn key_found(&mut self, found: KeyFound, now: UnixMillis) {
        let waiting = self.keys.waiting.remove(&found.key).unwrap_or_default();
        for pending in waiting {
            match &found.found {
                Err(e) => self.fail_pending(pending, e),
                Ok(Found::Run(Some(run))) => {
                    if let Pending::Run {
                        to, re, id, create, ..
                    } = pending
                    {
                        self.answer_existing_run(&to, re, id, create.subscribe, run.clone());
                    }
                }
                Ok(Found::Job(Some(job))) => {
                    if let Pending::Job {
                        to, re, subscribe, ..
                    } = pending
                    {
                        self.answer_stored_job(&to, re, subscribe, job.clone());
                    }
                }
                // Not in the store: the first creates, the others find it in memory.
                Ok(Found::Run(None) | Found::Job(None)) => match self.route_again(pending) {
                    Some(Pending::Run {
                        to,
                        re,
                        id,
                        create,
                        principal,
                    }) => self.create_run_answered(&principal, &to, re, id, create, now),
                    Some(Pending::Job {
                        to,
                        re,
                        id,
                        spec,
                        subscribe,
                        key,
                        principal,
                    }) => {
                        self.create_job_answered(&principal, &to, re, id, spec, subscribe, key, now)
                    }
                    None => {}
                },
            }
        }
    }

    /// Like [`Engine::key_for_run`], but never parks again: a key still
    /// unknown after its lookup is created now.
    fn route_again(&mut self, pending: Pending) -> Option<Pending> {
        let key = pending.key()?;
        let known = match key.kind {
            KeyKind::Run => self.keys.run(&key).is_some(),
            KeyKind::Job => self.keys.job(&key).is_some(),
        };
        if known {
            self.route_by_key(pending)
        } else {
            Some(pending)
        }
    }

    fn fail_pending(&mut self, pending: Pending, error: &str) {
        tracing::error!(error, "looking up an idempotency key failed");
        let error = ApiError::new(
            ErrorCode::StorageUnavailable,
            "the hub could not read its store to check the idempotency key; retry",
        );
        match pending {
            Pending::Run {
                to, re, id, create, ..
            } => {
                let channel = create.subscribe.then_some(muster_proto::Channel::Run(id));
                self.reply_error(&to, re, error, channel);
            }
            Pending::Job { to, re, .. } => self.reply_error(&to, re, error, None),
        }
    }
}
