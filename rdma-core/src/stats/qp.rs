//! A queue pair's counters and their snapshot, [`QpStats`].

use super::counter::Counter;

/// What a queue pair did since it was created: a snapshot, from
/// [`QueuePair::stats`](crate::QueuePair::stats) (also
/// [`UdQueuePair::stats`](crate::ud::UdQueuePair::stats) and, for its receives,
/// [`SharedReceiveQueue::stats`](crate::SharedReceiveQueue::stats)).
///
/// Counts are of work requests (a [`Batch`](crate::Batch) of 5 counts 5). A request is
/// *completed* once its completion was taken, whatever its status: successfully, failed or
/// flushed, so `posted - completed` are in flight and `completed - failed - flushed`
/// succeeded. An unsignaled request completes with the signaled request that covers it (see
/// [selective signaling](crate::signaling)). The zero-length fences selective signaling posts
/// count as send-queue requests (and in [`fences`](QpStats::fences)). A queue pair that takes
/// its receives from a shared receive queue posts none: they count there.
///
/// A snapshot taken while a post is under way may already count its requests as posted (and
/// then, should the device refuse them, the next snapshot not): each number is read on its
/// own, with no lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QpStats {
    /// Send-queue work requests posted: sends, writes, reads, atomics, fences.
    pub sends_posted: u64,
    /// Send-queue work requests completed (successfully or not).
    pub sends_completed: u64,
    /// Receives posted.
    pub receives_posted: u64,
    /// Receives completed (successfully or not).
    pub receives_completed: u64,
    /// Work completions with an error status other than a flush (a retry error, a remote
    /// access error, ...): the failure that puts the queue pair in the error state, and any
    /// other the device reports.
    pub failed: u64,
    /// Work requests flushed: completed with `WR_FLUSH_ERR` once the queue pair was in the
    /// error state, or ended by anyrdma as flushed when the device let go of them (a reset
    /// after a failed completion queue or device).
    pub flushed: u64,
    /// Bytes of the sends posted (with or without immediate data).
    pub bytes_sent: u64,
    /// Bytes of the RDMA writes posted (with or without immediate data).
    pub bytes_written: u64,
    /// Bytes of the RDMA reads posted (the bytes asked for).
    pub bytes_read: u64,
    /// Zero-length fences posted, each of which completed the unsignaled requests before it
    /// whose futures were awaited (or dropped) with nothing signaled after them.
    pub fences: u64,
    /// Posts that found their work queue or completion queue full and took the completions
    /// waiting in the completion queue to make room: each such post counts once, whether it
    /// then found room or failed with [`Error::QueueFull`](crate::Error::QueueFull).
    pub room_waits: u64,
}

impl QpStats {
    /// Work requests posted on both queues.
    pub fn posted(&self) -> u64 {
        self.sends_posted + self.receives_posted
    }

    /// Work requests completed on both queues (successfully or not).
    pub fn completed(&self) -> u64 {
        self.sends_completed + self.receives_completed
    }

    /// Work requests posted and not completed yet.
    pub fn in_flight(&self) -> u64 {
        self.posted().saturating_sub(self.completed())
    }
}

/// The counters of a queue pair that its work queues' credits (posted, completed) do not
/// give.
#[derive(Debug, Default)]
pub(crate) struct QpCounters {
    /// Counted where a failed completion is filed (any completion queue: shared adds).
    pub(crate) failed: Counter,
    pub(crate) flushed: Counter,
    /// Counted inside a send-queue post, which holds the queue's signaling chain lock: every
    /// send-queue post does, so these writers never race.
    pub(crate) bytes_sent: Counter,
    pub(crate) bytes_written: Counter,
    pub(crate) bytes_read: Counter,
    /// Counted where the fences and the waits happen (off the hot path: shared adds).
    pub(crate) fences: Counter,
    pub(crate) room_waits: Counter,
}

impl QpCounters {
    /// A work completion with an error status came: a flush (`flushed`) or a failure.
    #[cold]
    pub(crate) fn failed_completion(&self, flushed: bool) {
        if flushed {
            self.flushed.add(1);
        } else {
            self.failed.add(1);
        }
    }

    /// Fills the counts of `stats` that these counters keep.
    pub(crate) fn fill(&self, stats: &mut QpStats) {
        stats.failed = self.failed.get();
        stats.flushed = self.flushed.get();
        stats.bytes_sent = self.bytes_sent.get();
        stats.bytes_written = self.bytes_written.get();
        stats.bytes_read = self.bytes_read.get();
        stats.fences = self.fences.get();
        stats.room_waits = self.room_waits.get();
    }
}
