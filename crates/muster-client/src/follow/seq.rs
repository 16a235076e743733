//! Sequence bookkeeping for one followed run: which output frame is due next,
//! and what to do with a frame or a `stream.synced` that does not fit.
//!
//! The hub promises every frame once, in order, across resubscriptions. This
//! type does not trust that promise blindly: a frame below the expected `seq`
//! is a duplicate and is dropped; a frame, or a sync point, above it means
//! output went missing, which is reported as a [`Gap`] and never skipped over.

/// What to do with an output frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The frame is the one due next: deliver it.
    Deliver,
    /// The frame was delivered before: drop it.
    Duplicate,
}

/// Output went missing: the frames from `expected` to `got - 1` never arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gap {
    /// The sequence number that was due.
    pub(crate) expected: u64,
    /// The sequence number the hub went on with.
    pub(crate) got: u64,
}

/// Which output frame of one run is due next.
#[derive(Clone, Debug)]
pub(crate) struct SeqTracker {
    next: u64,
}

impl SeqTracker {
    /// A tracker whose first expected frame is `since`.
    pub(crate) fn new(since: u64) -> Self {
        Self { next: since }
    }

    /// The `seq` of the next frame to deliver; what to resubscribe `since`.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// Judges the frame numbered `seq`, advancing past it when it is delivered.
    pub(crate) fn frame(&mut self, seq: u64) -> Result<Verdict, Gap> {
        if seq < self.next {
            return Ok(Verdict::Duplicate);
        }
        if seq > self.next {
            return Err(Gap {
                expected: self.next,
                got: seq,
            });
        }
        self.next += 1;
        Ok(Verdict::Deliver)
    }

    /// Checks a `stream.synced`: after its replay, the hub's next frame is
    /// `next_seq`. Above what this tracker expects, frames were skipped; below
    /// it, live frames simply overtook the replay.
    pub(crate) fn synced(&self, next_seq: u64) -> Result<(), Gap> {
        if next_seq > self.next {
            return Err(Gap {
                expected: self.next,
                got: next_seq,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_in_order_are_delivered() {
        let mut seq = SeqTracker::new(0);
        for n in 0..5 {
            assert_eq!(seq.frame(n), Ok(Verdict::Deliver));
        }
        assert_eq!(seq.next(), 5);
    }

    #[test]
    fn duplicates_are_dropped_without_moving_on() {
        let mut seq = SeqTracker::new(0);
        seq.frame(0).unwrap();
        seq.frame(1).unwrap();
        // A resubscription replays what live delivery already brought.
        assert_eq!(seq.frame(0), Ok(Verdict::Duplicate));
        assert_eq!(seq.frame(1), Ok(Verdict::Duplicate));
        assert_eq!(seq.next(), 2);
        assert_eq!(seq.frame(2), Ok(Verdict::Deliver));
    }

    #[test]
    fn a_frame_past_the_expected_one_is_a_gap() {
        let mut seq = SeqTracker::new(3);
        assert_eq!(
            seq.frame(5),
            Err(Gap {
                expected: 3,
                got: 5
            })
        );
        // Nothing was delivered: the tracker still waits for 3.
        assert_eq!(seq.next(), 3);
    }

    #[test]
    fn resuming_starts_at_since() {
        let mut seq = SeqTracker::new(7);
        assert_eq!(seq.frame(6), Ok(Verdict::Duplicate));
        assert_eq!(seq.frame(7), Ok(Verdict::Deliver));
    }

    #[test]
    fn a_sync_point_past_the_expected_frame_is_a_gap() {
        let mut seq = SeqTracker::new(0);
        seq.frame(0).unwrap();
        assert_eq!(seq.synced(1), Ok(()));
        // Live frames may overtake the replay's end; that is no gap.
        seq.frame(1).unwrap();
        assert_eq!(seq.synced(1), Ok(()));
        assert_eq!(
            seq.synced(4),
            Err(Gap {
                expected: 2,
                got: 4
            })
        );
    }
}
