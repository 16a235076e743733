//! Refusals made at a connection (a role too low, a rate passed, a failed
//! login), reported to the audit log without letting a flood flood it: at
//! most one entry per source, actor, action and code every
//! [`REPEAT_AFTER`]; the refusals in between are counted, and the next
//! entry says how many there were.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use muster_proto::ErrorCode;

use crate::engine::{AuditDraft, Input};
use crate::runtime::EngineHandle;

/// How often the same refusal is recorded at most.
const REPEAT_AFTER: Duration = Duration::from_secs(10);
/// Most refusals remembered; past it, those older than [`REPEAT_AFTER`]
/// are forgotten, and if none is, a new one is not recorded.
const MAX_REMEMBERED: usize = 4096;

type Key = (IpAddr, String, &'static str, ErrorCode);

/// Refusals recorded lately.
#[derive(Debug, Default)]
pub(crate) struct RefusalLog {
    seen: Mutex<HashMap<Key, Seen>>,
}

#[derive(Debug)]
struct Seen {
    recorded: Instant,
    /// Refusals since, not recorded.
    since: u64,
}

impl RefusalLog {
    /// Records that `actor` from `source` was refused `action` with `code`,
    /// unless the same was recorded lately.
    pub(crate) fn refused(
        &self,
        engine: &EngineHandle,
        actor: &str,
        source: IpAddr,
        action: &'static str,
        code: ErrorCode,
        detail: &str,
    ) {
        let Some(repeats) = self.due(source, actor, action, code) else {
            return;
        };
        let detail = match repeats {
            0 => detail.to_owned(),
            n => format!("{detail} ({n} more refused since the last entry)"),
        };
        let draft = AuditDraft::new(actor, Some(source), action)
            .outcome(code.as_str())
            .detail(detail);
        let _ = engine.control().send(Input::Audit(Box::new(draft)));
    }

    /// `Some(refusals not recorded since the last entry)` if this one is
    /// to be recorded.
    fn due(
        &self,
        source: IpAddr,
        actor: &str,
        action: &'static str,
        code: ErrorCode,
    ) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self.seen.lock().expect("refusal log lock poisoned");
        let key = (source, actor.to_owned(), action, code);
        if let Some(last) = seen.get_mut(&key) {
            if now.duration_since(last.recorded) < REPEAT_AFTER {
                last.since = last.since.saturating_add(1);
                return None;
            }
            let since = std::mem::take(&mut last.since);
            last.recorded = now;
            return Some(since);
        }
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, s| now.duration_since(s.recorded) < REPEAT_AFTER);
            if seen.len() >= MAX_REMEMBERED {
                return None;
            }
        }
        seen.insert(
            key,
            Seen {
                recorded: now,
                since: 0,
            },
        );
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_refusal_is_recorded_once_per_window() {
        let log = RefusalLog::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let due = |actor: &str| log.due(ip, actor, "run.create", ErrorCode::RateLimit);
        assert_eq!(due("ops"), Some(0));
        assert_eq!(due("ops"), None);
        assert_eq!(due("ops"), None);
        assert_eq!(due("ci"), Some(0), "another actor is recorded");
        let key = (ip, "ops".to_owned(), "run.create", ErrorCode::RateLimit);
        log.seen.lock().unwrap().get_mut(&key).unwrap().recorded -= REPEAT_AFTER;
        assert_eq!(due("ops"), Some(2), "the next entry counts what it skipped");
    }
}
