//! The live counter behind every number of a snapshot that is not kept under a lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A count that only grows, read at any time by [snapshots](super) (Relaxed: it orders
/// nothing, it only counts).
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` where writers never race: every caller holds one lock that orders them (the
    /// counter's documentation names it). A plain load and store, no locked instruction, so
    /// it costs a hot path what a field of its own locked state would.
    #[inline]
    pub(crate) fn add_exclusive(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Adds `n` from any thread (for counts off the hot path: failures, waits).
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    /// The count now.
    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_and_shared_adds_both_count() {
        let counter = Counter::default();
        counter.add_exclusive(3);
        counter.add(4);
        counter.add_exclusive(u64::MAX);
        assert_eq!(counter.get(), 6, "adds wrap, as a counter's reader expects");
    }

    /// Writers ordered by one lock lose nothing with the plain load and store.
    #[test]
    fn exclusive_adds_under_one_lock_lose_nothing() {
        let counter = Counter::default();
        let lock = std::sync::Mutex::new(());
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        let _held = lock.lock().unwrap();
                        counter.add_exclusive(1);
                    }
                });
            }
        });
        assert_eq!(counter.get(), 40_000);
    }
}
