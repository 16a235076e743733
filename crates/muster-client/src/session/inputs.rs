//! A writer's numbered inputs: which `seq` the next one gets, which ones the
//! hub has not acknowledged yet, and what to send again after an attach.
//!
//! The rules, with no socket: inputs are numbered from the hub's `last_seq`
//! of the first attach, plus one, each next exactly one more; every input is
//! kept until an acknowledgement covers it; after any later attach, the
//! inputs above that attach's `last_seq` are sent again, in order, and those
//! at or below it are dropped as already taken. So each input reaches the
//! process exactly once, however often the connection drops.

use std::collections::VecDeque;

/// The hub's account of this writer does not fit what the writer sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputLogError {
    /// The hub holds inputs this writer never sent: another process uses the
    /// same writer id.
    #[error(
        "the hub holds input {last_seq} from this writer, which sent only up to {sent}; \
         is its writer id in use elsewhere?"
    )]
    AheadOfWriter {
        /// What the hub said it holds.
        last_seq: u64,
        /// The last input this writer numbered.
        sent: u64,
    },
    /// The hub no longer holds inputs it acknowledged.
    #[error("the hub holds input up to {last_seq}, but acknowledged up to {acked}")]
    BehindAcknowledged {
        /// What the hub said it holds.
        last_seq: u64,
        /// What it had acknowledged before.
        acked: u64,
    },
}

/// A writer's inputs not yet acknowledged, and its numbering.
#[derive(Clone, Debug)]
pub(crate) struct InputLog {
    /// The `seq` the next new input gets.
    next_seq: u64,
    /// Inputs not acknowledged yet, oldest first; their seqs run without a
    /// hole up to `next_seq - 1`.
    unacked: VecDeque<(u64, String)>,
}

impl InputLog {
    /// A log for a writer whose first attach said the hub holds its inputs
    /// up to `last_seq` (0 for a new writer).
    pub(crate) fn starting_after(last_seq: u64) -> Self {
        Self {
            next_seq: last_seq + 1,
            unacked: VecDeque::new(),
        }
    }

    /// Numbers `data` and keeps it until acknowledged; returns its `seq`.
    pub(crate) fn push(&mut self, data: String) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unacked.push_back((seq, data));
        seq
    }

    /// The hub acknowledged every input up to `seq`.
    pub(crate) fn acked(&mut self, seq: u64) -> Result<(), InputLogError> {
        if seq >= self.next_seq {
            return Err(InputLogError::AheadOfWriter {
                last_seq: seq,
                sent: self.next_seq - 1,
            });
        }
        while self.unacked.front().is_some_and(|(s, _)| *s <= seq) {
            self.unacked.pop_front();
        }
        Ok(())
    }

    /// A new attach says the hub holds this writer's inputs up to
    /// `last_seq`: drops what it holds, and checks that it holds everything
    /// it acknowledged and nothing this writer did not send. What is left is
    /// what to send again, from [`after`](Self::after)`(last_seq)`.
    pub(crate) fn attached(&mut self, last_seq: u64) -> Result<(), InputLogError> {
        let acked = self.acked_through();
        if last_seq < acked {
            return Err(InputLogError::BehindAcknowledged { last_seq, acked });
        }
        self.acked(last_seq)
    }

    /// The unacknowledged inputs numbered above `seq`, oldest first.
    pub(crate) fn after(&self, seq: u64) -> impl Iterator<Item = (u64, &str)> {
        self.unacked
            .iter()
            .filter(move |(s, _)| *s > seq)
            .map(|(s, data)| (*s, data.as_str()))
    }

    /// The next input above `seq` to send, if any.
    pub(crate) fn next_after(&self, seq: u64) -> Option<(u64, &str)> {
        self.after(seq).next()
    }

    /// Every input up to this one is acknowledged.
    pub(crate) fn acked_through(&self) -> u64 {
        self.unacked.front().map_or(self.next_seq, |(s, _)| *s) - 1
    }

    /// How many inputs wait for an acknowledgement.
    pub(crate) fn len(&self) -> usize {
        self.unacked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(log: &InputLog, after: u64) -> Vec<u64> {
        log.after(after).map(|(s, _)| s).collect()
    }

    #[test]
    fn inputs_are_numbered_after_the_first_attach() {
        let mut fresh = InputLog::starting_after(0);
        assert_eq!(fresh.push("a".into()), 1);
        assert_eq!(fresh.push("b".into()), 2);
        let mut reused = InputLog::starting_after(41);
        assert_eq!(reused.acked_through(), 41);
        assert_eq!(reused.push("x".into()), 42);
    }

    #[test]
    fn acknowledgements_release_everything_up_to_them() {
        let mut log = InputLog::starting_after(0);
        for data in ["a", "b", "c"] {
            log.push(data.into());
        }
        log.acked(2).unwrap();
        assert_eq!(seqs(&log, 0), [3]);
        assert_eq!(log.acked_through(), 2);
        // An older acknowledgement arriving late changes nothing.
        log.acked(1).unwrap();
        assert_eq!(log.len(), 1);
        log.acked(3).unwrap();
        assert_eq!(log.len(), 0);
        assert_eq!(log.acked_through(), 3);
    }

    #[test]
    fn after_a_drop_only_what_the_hub_lacks_is_sent_again() {
        let mut log = InputLog::starting_after(0);
        for data in ["a", "b", "c", "d"] {
            log.push(data.into());
        }
        log.acked(1).unwrap();
        // The hub stored 2 and 3, but the connection dropped before their acks.
        log.attached(3).unwrap();
        let resend: Vec<_> = log.after(3).collect();
        assert_eq!(resend, [(4, "d")]);
        // Numbering goes on where it was.
        assert_eq!(log.push("e".into()), 5);
    }

    #[test]
    fn an_attach_that_lost_nothing_resends_everything_unacknowledged() {
        let mut log = InputLog::starting_after(0);
        log.push("a".into());
        log.push("b".into());
        log.attached(0).unwrap();
        assert_eq!(seqs(&log, 0), [1, 2]);
        assert_eq!(log.next_after(0), Some((1, "a")));
        assert_eq!(log.next_after(1), Some((2, "b")));
        assert_eq!(log.next_after(2), None);
    }

    #[test]
    fn a_hub_ahead_of_the_writer_or_behind_its_acks_is_an_error() {
        let mut log = InputLog::starting_after(0);
        log.push("a".into());
        log.push("b".into());
        assert_eq!(
            log.attached(5),
            Err(InputLogError::AheadOfWriter {
                last_seq: 5,
                sent: 2
            })
        );
        log.acked(2).unwrap();
        assert_eq!(
            log.attached(1),
            Err(InputLogError::BehindAcknowledged {
                last_seq: 1,
                acked: 2
            })
        );
        assert!(log.acked(3).is_err());
    }
}
