//! Lists in pages: no reply grows with the fleet past the message limit.
//!
//! A page holds at most a count of items and at most a byte budget of their
//! encoded form, whichever comes first; when more items follow, the reply
//! carries `next_cursor`, an opaque string the client sends back to get the
//! next page. Inside the hub a cursor is the sort key of the last item sent:
//! an agent name, or a run or job id.

use muster_proto::{AgentName, ErrorCode, JobId, RunId};
use serde::Serialize;

use crate::engine::ApiError;

/// One page: the items, and whether more follow.
#[derive(Debug, PartialEq)]
pub(crate) struct Page<T> {
    pub(crate) items: Vec<T>,
    pub(crate) more: bool,
}

/// Takes items until `limit` of them, or until the next would take the
/// encoded page past `budget` bytes. The first item is always taken.
pub(crate) fn fill<T: Serialize>(
    items: impl Iterator<Item = T>,
    limit: usize,
    budget: usize,
) -> Page<T> {
    let mut page = Vec::new();
    let mut used = 0usize;
    for item in items {
        if page.len() == limit {
            return Page {
                items: page,
                more: true,
            };
        }
        // The comma between items is the +1.
        let size = serde_json::to_vec(&item).map_or(usize::MAX, |v| v.len().saturating_add(1));
        if !page.is_empty() && used.saturating_add(size) > budget {
            return Page {
                items: page,
                more: true,
            };
        }
        used = used.saturating_add(size);
        page.push(item);
    }
    Page {
        items: page,
        more: false,
    }
}

/// How many items a page may hold: the request's limit within `1..=max`,
/// or `default`.
pub(crate) fn limit(requested: Option<u32>, default: usize, max: usize) -> usize {
    requested.map_or(default, |n| n as usize).clamp(1, max)
}

fn bad_cursor() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidMessage,
        "invalid cursor: pass back the next_cursor of the previous page",
    )
}

/// A cursor over names.
pub(crate) fn name_cursor(cursor: Option<&str>) -> Result<Option<AgentName>, ApiError> {
    cursor
        .map(|c| c.parse().map_err(|_| bad_cursor()))
        .transpose()
}

/// A cursor over runs.
pub(crate) fn run_cursor(cursor: Option<&str>) -> Result<Option<RunId>, ApiError> {
    cursor
        .map(|c| c.parse().map_err(|_| bad_cursor()))
        .transpose()
}

/// A cursor over jobs.
pub(crate) fn job_cursor(cursor: Option<&str>) -> Result<Option<JobId>, ApiError> {
    cursor
        .map(|c| c.parse().map_err(|_| bad_cursor()))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_stops_at_its_count() {
        let page = fill(0..10, 3, usize::MAX);
        assert_eq!(page.items, [0, 1, 2]);
        assert!(page.more);
        let all = fill(0..3, 3, usize::MAX);
        assert_eq!(all.items, [0, 1, 2]);
        assert!(!all.more, "exactly full, nothing left");
    }

    #[test]
    fn a_page_stops_before_its_byte_budget() {
        let words: Vec<String> = (0..10).map(|i| format!("{i:0>98}")).collect();
        // Each encodes to 100 bytes plus a comma.
        let page = fill(words.into_iter(), 100, 350);
        assert_eq!(page.items.len(), 3);
        assert!(page.more);
        let encoded = serde_json::to_vec(&page.items).unwrap();
        assert!(encoded.len() <= 350, "{}", encoded.len());
    }

    #[test]
    fn an_item_larger_than_the_budget_still_makes_progress() {
        let page = fill(["x".repeat(1000)].into_iter(), 10, 10);
        assert_eq!(page.items.len(), 1);
        assert!(!page.more);
    }

    #[test]
    fn limits_are_clamped() {
        assert_eq!(limit(None, 50, 1000), 50);
        assert_eq!(limit(Some(0), 50, 1000), 1);
        assert_eq!(limit(Some(5000), 50, 1000), 1000);
    }

    #[test]
    fn cursors_parse_or_are_refused() {
        assert_eq!(name_cursor(None).unwrap(), None);
        assert_eq!(
            name_cursor(Some("web-1")).unwrap().unwrap().as_str(),
            "web-1"
        );
        assert!(name_cursor(Some("bad name")).is_err());
        assert!(run_cursor(Some("nope")).is_err());
        let id = RunId::generate();
        assert_eq!(run_cursor(Some(&id.to_string())).unwrap(), Some(id));
    }
}
