//! A completion queue's counters, [`CqStats`].

/// What a completion queue did since it was created: a snapshot, from
/// [`CompletionQueue::stats`](crate::CompletionQueue::stats).
///
/// Every count is kept under the queue's own lock, which the polling path holds anyway: a poll
/// counts once, however many completions it finds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CqStats {
    /// Polls of the queue (`ibv_poll_cq` calls), by operations' futures, the queue's driver
    /// and [`poll_now`](crate::CompletionQueue::poll_now).
    pub polls: u64,
    /// Polls that found nothing.
    pub empty_polls: u64,
    /// Work completions the polls found (`completions / (polls - empty_polls)` is the batch a
    /// poll takes).
    pub completions: u64,
    /// Times the queue was armed (`ibv_req_notify_cq`) because a task was going to sleep until
    /// its completion came: sleeps on the completion channel, in
    /// [`PollMode::Event`](crate::PollMode::Event).
    pub sleeps: u64,
    /// Events taken from the completion channel: wake-ups of the queue by the runtime's
    /// reactor, each followed by polls that wake the tasks whose completions came.
    pub wakeups: u64,
    /// Tasks woken because a completion they waited for was dispatched to them (a task that
    /// finds its own completion while it polls is not woken).
    pub tasks_woken: u64,
}

/// What a completion queue counts as it works, a plain field each, under its state lock:
/// the snapshot's numbers, with the empty polls derived from the polls that found something,
/// so that an empty poll (most polls of a queue that sleeps) adds one count and no more.
#[derive(Debug, Default)]
pub(crate) struct CqCounters {
    pub(crate) polls: u64,
    /// Polls that found at least one completion.
    pub(crate) fruitful_polls: u64,
    pub(crate) completions: u64,
    pub(crate) sleeps: u64,
    pub(crate) wakeups: u64,
}

impl CqCounters {
    /// A poll found `found` (at least one) completions.
    #[inline]
    pub(crate) fn found(&mut self, found: usize) {
        self.fruitful_polls += 1;
        self.completions += found as u64;
    }

    /// The snapshot, with `tasks_woken` (counted by the queue's slot table).
    pub(crate) fn snapshot(&self, tasks_woken: u64) -> CqStats {
        CqStats {
            polls: self.polls,
            empty_polls: self.polls - self.fruitful_polls,
            completions: self.completions,
            sleeps: self.sleeps,
            wakeups: self.wakeups,
            tasks_woken,
        }
    }
}
