//! Reading lists page by page: [`Page`], and the bookkeeping that follows
//! `next_cursor` to the end of a list without trusting the hub to end it.
//!
//! The hub answers `agent.list`, `run.list`, `job.list` and `job.targets` one
//! page at a time; a reply with `next_cursor` has more pages after it, and a
//! reply without one is the last. Cursors are opaque. [`Pages`] collects the
//! pages of one list and refuses to spin: a cursor that comes back a second
//! time, or more pages than the list can have, end the read with
//! [`ClientError::Protocol`]. An item a page repeats (a hub paging by offset
//! while new runs push older ones down) is kept once, where it first came.

use std::collections::HashSet;
use std::hash::Hash;

use muster_proto::jobs::{JobInfo, JobTarget};
use muster_proto::{AgentInfo, AgentName, JobId, RunId, RunInfo};

use crate::error::ClientError;

/// Most pages one list is read in. At the hub's smallest sensible pages this
/// is far more records than a fleet or its history holds; a hub that keeps
/// sending fresh cursors past it is broken, and the read stops with an error
/// instead of running on.
pub const MAX_PAGES: usize = 10_000;

/// The page size asked for when a whole list of runs or jobs is read: the
/// protocol's largest, so the fewest round trips.
pub(crate) const FULL_PAGE: u32 = 1000;

/// One page of a list, and where the next one starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    /// The records on this page, in the list's order.
    pub items: Vec<T>,
    /// Present when more pages follow: pass it as the next request's `cursor`.
    pub next_cursor: Option<String>,
}

/// A record that a list holds at most once, known by its key.
pub(crate) trait Keyed {
    /// What tells two records apart.
    type Key: Eq + Hash;
    /// This record's key.
    fn key(&self) -> Self::Key;
}

impl Keyed for AgentInfo {
    type Key = AgentName;
    fn key(&self) -> AgentName {
        self.name.clone()
    }
}

impl Keyed for RunInfo {
    type Key = RunId;
    fn key(&self) -> RunId {
        self.id
    }
}

impl Keyed for JobInfo {
    type Key = JobId;
    fn key(&self) -> JobId {
        self.id
    }
}

impl Keyed for JobTarget {
    type Key = AgentName;
    fn key(&self) -> AgentName {
        self.agent.clone()
    }
}

/// The pages of one list read so far; see the [module docs](self).
pub(crate) struct Pages<T: Keyed> {
    /// The request type, for error messages (`run.list`).
    what: &'static str,
    items: Vec<T>,
    keys: HashSet<T::Key>,
    /// Every cursor seen, the one the read started from included.
    cursors: HashSet<String>,
    pages: usize,
    max_pages: usize,
    /// Stop once this many records are in (`None`: read to the end).
    max_items: Option<usize>,
}

impl<T: Keyed> Pages<T> {
    /// A read of the list `what`, keeping at most `max_items` records.
    pub(crate) fn new(what: &'static str, max_items: Option<usize>) -> Self {
        Self {
            what,
            items: Vec::new(),
            keys: HashSet::new(),
            cursors: HashSet::new(),
            pages: 0,
            max_pages: MAX_PAGES,
            max_items,
        }
    }

    /// Bounds the read to `max_pages` pages, when the list's size is known.
    pub(crate) fn with_max_pages(mut self, max_pages: usize) -> Self {
        self.max_pages = max_pages.min(MAX_PAGES);
        self
    }

    /// Notes the cursor a read starts from, so the hub cannot send it back.
    pub(crate) fn starting_at(mut self, cursor: Option<&String>) -> Self {
        self.cursors.extend(cursor.cloned());
        self
    }

    /// How many records the next page should hold at most: what is still
    /// wanted, but no more than `page_size` (`None`: the hub's default).
    pub(crate) fn page_limit(&self, page_size: Option<u32>) -> Option<u32> {
        let wanted = self
            .max_items
            .map(|max| u32::try_from(max - self.items.len()).unwrap_or(u32::MAX));
        match (wanted, page_size) {
            (Some(wanted), Some(size)) => Some(wanted.min(size)),
            (wanted, size) => wanted.or(size),
        }
    }

    /// Whether every record wanted is in.
    pub(crate) fn is_full(&self) -> bool {
        self.max_items.is_some_and(|max| self.items.len() >= max)
    }

    /// Adds a page; returns the cursor to read next, or `None` when the read
    /// is complete (the last page came, or enough records).
    pub(crate) fn add(&mut self, page: Page<T>) -> Result<Option<String>, ClientError> {
        self.pages += 1;
        for item in page.items {
            if self.is_full() {
                break;
            }
            if self.keys.insert(item.key()) {
                self.items.push(item);
            }
        }
        let Some(cursor) = page.next_cursor else {
            return Ok(None);
        };
        if self.is_full() {
            return Ok(None);
        }
        if self.pages >= self.max_pages {
            return Err(self.broken(format!(
                "it has more than {} pages, more than it can hold",
                self.max_pages
            )));
        }
        if !self.cursors.insert(cursor.clone()) {
            return Err(self.broken(format!("cursor {cursor:?} came back")));
        }
        Ok(Some(cursor))
    }

    /// The records read, in the list's order.
    pub(crate) fn into_items(self) -> Vec<T> {
        self.items
    }

    /// Reads pages with `fetch(cursor, limit)`, starting at `cursor`, until
    /// the read is complete; each page holds at most `page_size` records
    /// (`None`: as many as the hub likes).
    pub(crate) async fn read<F, Fut>(
        mut self,
        mut cursor: Option<String>,
        page_size: Option<u32>,
        mut fetch: F,
    ) -> Result<Vec<T>, ClientError>
    where
        F: FnMut(Option<String>, Option<u32>) -> Fut,
        Fut: Future<Output = Result<Page<T>, ClientError>>,
    {
        while !self.is_full() {
            let page = fetch(cursor.take(), self.page_limit(page_size)).await?;
            match self.add(page)? {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(self.items)
    }

    fn broken(&self, why: String) -> ClientError {
        ClientError::Protocol(format!(
            "the hub's {} does not end: {why} after {} pages; stopped reading",
            self.what, self.pages
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record keyed by itself.
    impl Keyed for u32 {
        type Key = u32;
        fn key(&self) -> u32 {
            *self
        }
    }

    fn page(items: &[u32], next: Option<&str>) -> Page<u32> {
        Page {
            items: items.to_vec(),
            next_cursor: next.map(str::to_owned),
        }
    }

    #[test]
    fn pages_are_followed_to_the_one_without_a_cursor() {
        let mut pages = Pages::new("agent.list", None);
        assert_eq!(
            pages.add(page(&[1, 2], Some("a"))).unwrap().as_deref(),
            Some("a")
        );
        assert_eq!(
            pages.add(page(&[3], Some("b"))).unwrap().as_deref(),
            Some("b")
        );
        assert_eq!(pages.add(page(&[], None)).unwrap(), None);
        assert_eq!(pages.into_items(), [1, 2, 3]);
    }

    #[test]
    fn a_total_limit_stops_the_read_and_shrinks_the_last_page() {
        let mut pages = Pages::new("run.list", Some(5));
        assert_eq!(pages.page_limit(Some(1000)), Some(5));
        pages.add(page(&[1, 2, 3], Some("a"))).unwrap();
        assert_eq!(pages.page_limit(Some(1000)), Some(2));
        // A hub that sends more than asked is cut at the limit.
        assert_eq!(pages.add(page(&[4, 5, 6], Some("b"))).unwrap(), None);
        assert!(pages.is_full());
        assert_eq!(pages.into_items(), [1, 2, 3, 4, 5]);
        let all = Pages::<u32>::new("agent.list", None);
        assert_eq!(all.page_limit(None), None);
        assert_eq!(all.page_limit(Some(1000)), Some(1000));
    }

    #[test]
    fn a_repeated_cursor_is_an_error() {
        let mut pages = Pages::new("job.list", None).starting_at(Some(&"x".to_owned()));
        pages.add(page(&[1], Some("a"))).unwrap();
        let err = pages.add(page(&[2], Some("x"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "protocol error: the hub's job.list does not end: \
             cursor \"x\" came back after 2 pages; stopped reading"
        );
    }

    #[test]
    fn more_pages_than_the_list_can_have_is_an_error() {
        let mut pages = Pages::new("job.targets", None).with_max_pages(2);
        pages.add(page(&[1], Some("a"))).unwrap();
        let err = pages.add(page(&[2], Some("b"))).unwrap_err();
        assert!(err.to_string().contains("more than 2 pages"), "{err}");
    }

    #[test]
    fn repeated_records_are_kept_once() {
        let mut pages = Pages::new("run.list", Some(3));
        pages.add(page(&[1, 2], Some("a"))).unwrap();
        // An offset-paging hub shifted by one new record.
        assert_eq!(pages.add(page(&[2, 3], Some("b"))).unwrap(), None);
        assert_eq!(pages.into_items(), [1, 2, 3]);
    }
}
