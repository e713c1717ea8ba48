//! The credits of one work queue: the work requests it holds, as the difference of two counts
//! that only grow (requests posted, requests completed), so that the queue's statistics
//! ([`QpStats`](crate::QpStats): posted, completed) are these same two words and cost the
//! hot path nothing beyond the credits it always kept.

use std::sync::atomic::{AtomicU64, Ordering};

/// Work requests posted on one work queue and completed there. `posted - completed` is what
/// the queue holds (its credits taken); both only grow, except that a post the device refused
/// gives its requests back ([`WorkCount::unpost`]).
#[derive(Debug, Default)]
pub(crate) struct WorkCount {
    posted: AtomicU64,
    completed: AtomicU64,
}

impl WorkCount {
    /// Takes `wrs` credits, unless the queue would then hold more than `depth` requests. A
    /// compare and swap, never an add undone afterwards: a poster that does not fit must not
    /// make a concurrent one that does fit see a full queue.
    #[inline]
    pub(crate) fn take(&self, wrs: u32, depth: u32) -> bool {
        // Read first: completions only make room, so a stale value can refuse (the poster
        // then takes what the CQ holds and tries again) but never admits too much.
        let limit = self.completed.load(Ordering::Acquire) + u64::from(depth);
        self.posted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |posted| {
                let taken = posted + u64::from(wrs);
                (taken <= limit).then_some(taken)
            })
            .is_ok()
    }

    /// `wrs` requests completed (their completion was taken, or they ended with their queue):
    /// their credits are free again.
    #[inline]
    pub(crate) fn complete(&self, wrs: u32) {
        self.completed.fetch_add(u64::from(wrs), Ordering::Release);
    }

    /// `wrs` requests whose credits were taken were never posted after all (the device
    /// refused them): their credits are free again, and they do not count as posted.
    pub(crate) fn unpost(&self, wrs: u32) {
        self.posted.fetch_sub(u64::from(wrs), Ordering::AcqRel);
    }

    /// Requests the queue holds now (posted and not completed).
    #[inline]
    pub(crate) fn in_flight(&self) -> u64 {
        // Completed first: every completion counted there was posted before, so the posted
        // count read after it is at least as large.
        let completed = self.completed.load(Ordering::Acquire);
        self.posted
            .load(Ordering::Acquire)
            .saturating_sub(completed)
    }

    /// Requests posted so far.
    pub(crate) fn posted(&self) -> u64 {
        self.posted.load(Ordering::Relaxed)
    }

    /// Requests completed so far.
    pub(crate) fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    /// 56 of 64 credits taken; a poster of 16 (cannot fit) races one of 8 (fits exactly):
    /// the one that fits must always get in.
    #[test]
    fn a_poster_that_does_not_fit_never_blocks_one_that_does() {
        let count = WorkCount::default();
        let start = Barrier::new(2);
        for round in 0..20_000u64 {
            // 56 held: whatever was posted before completed.
            assert!(count.take(56, 64));
            let (big, small) = std::thread::scope(|scope| {
                let big = scope.spawn(|| {
                    start.wait();
                    count.take(16, 64)
                });
                let small = scope.spawn(|| {
                    start.wait();
                    count.take(8, 64)
                });
                (big.join().unwrap(), small.join().unwrap())
            });
            assert!(!big, "16 more than 56 of 64 must not fit");
            assert!(small, "8 more than 56 of 64 fit, but were refused");
            assert_eq!(count.in_flight(), 64);
            count.complete(64);
            assert_eq!(count.posted(), 64 * (round + 1));
        }
    }

    /// Posted and completed are the queue's statistics: a refused post counts in neither.
    #[test]
    fn refused_posts_count_neither_as_posted_nor_as_completed() {
        let count = WorkCount::default();
        assert!(count.take(3, 4));
        assert!(!count.take(2, 4), "5 of 4");
        count.unpost(1);
        count.complete(2);
        assert_eq!(
            (count.posted(), count.completed(), count.in_flight()),
            (2, 2, 0)
        );
        assert!(count.take(4, 4), "the whole depth is free again");
    }
}
