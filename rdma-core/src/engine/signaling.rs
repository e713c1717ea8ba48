//! Selective signaling: which send-queue work requests ask the device for a completion.
//!
//! A completion costs the device a write to the CQ and the library a poll and a dispatch. On a
//! reliable connected queue pair the requests of a send queue complete in order, so the
//! completion of a signaled request says that every request posted before it on that queue
//! is done: an unsignaled request resolves with the next signaled one. Errors always
//! produce a completion (signaled or not), and everything after a failed request is flushed
//! with one each, so a failure is never lost.
//!
//! # The rule
//! A request is signaled when
//! - no signaled request of its queue is in flight (an idle queue: a lone operation, such as
//!   a ping-pong's, always gets its own completion, so latency is unchanged), or
//! - [`QpOptions::signal_every`](crate::QpOptions::signal_every) requests were posted since
//!   the last signaled one (a busy queue still hears back regularly, so buffers return
//!   steadily), or
//! - it fills the last places of the send queue (a full queue always has a completion coming
//!   that makes room), or
//! - it ends a [`Batch`](crate::Batch) (as before).
//!
//! An unsignaled request whose future is awaited with no signaled request posted after it
//! (the tail of a burst) would wait for ever: its future then posts a *fence*, a signaled
//! zero-length RDMA write (which the responder does not check against any key, IBA C9-88),
//! whose completion resolves it (on an unreliable datagram queue pair, which has no RDMA
//! writes, a zero-length send to itself under a Q_Key that is not its own, which its
//! receive side drops: see [`crate::ud`]). At most one fence per burst, and none while
//! requests keep coming.
//!
//! Buffers keep their guarantee: an unsignaled operation's buffers are returned, and its
//! future resolves, only when the completion that covers it has been polled, that is when
//! the device is done with them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::slots::SlotId;
use crate::wake::lock;

/// Whether a send-queue post may go unsignaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// The last request is signaled (batches).
    Always,
    /// Signaled only when [the rule](self) says so.
    Selective,
    /// A fence: signaled; its completion-queue entry is the one the newest unsignaled
    /// request holds for it, when that one still has it (see [`Placement::cq_entries`]).
    Fence,
}

/// Where a post stands in its send queue: the sequence number of its first request, and
/// whether its last request is signaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    pub(crate) seq: u64,
    pub(crate) signaled: bool,
    pub(crate) fence: bool,
}

impl Placement {
    /// Completion-queue entries to hold for a post of `wrs` requests: one per request (each
    /// may complete with an error), and for an unsignaled post one more, for the fence that
    /// may have to follow it (the fence takes that one over). So a CQ full of unsignaled
    /// requests always has room for the fence that completes them.
    pub(crate) fn cq_entries(self, wrs: u32) -> u32 {
        if self.signaled {
            wrs
        } else {
            wrs + 1
        }
    }
}

/// The posting side's count: taken while posting, so that sequence numbers follow the order
/// of the requests in the queue.
struct Chain {
    /// Sequence number of the next request (the first is 1).
    next_seq: u64,
    /// Requests posted since the last signaled one.
    since_signaled: u32,
}

/// The selective-signaling state of one send queue.
pub(crate) struct Signaling {
    /// Signal at least every this many requests (1: every request).
    every: u32,
    chain: Mutex<Chain>,
    /// Signaled requests in flight.
    in_flight: AtomicU32,
    /// Sequence number of the newest signaled request posted (0: none yet).
    last_signaled: AtomicU64,
    /// Unsignaled slots in flight, oldest first, with their sequence numbers. Used only with
    /// the send CQ's lock held (reserving, dispatching), so never contended.
    unsignaled: Mutex<VecDeque<(u64, SlotId)>>,
    /// How many there are: a completion with none to cover skips the list's lock (written
    /// with the CQ's lock held, like the list).
    unsignaled_count: AtomicU32,
}

impl Signaling {
    pub(crate) fn new(every: u32) -> Signaling {
        Signaling {
            every: every.max(1),
            chain: Mutex::new(Chain {
                next_seq: 1,
                since_signaled: 0,
            }),
            in_flight: AtomicU32::new(0),
            last_signaled: AtomicU64::new(0),
            unsignaled: Mutex::new(VecDeque::new()),
            unsignaled_count: AtomicU32::new(0),
        }
    }

    /// Signal at least every this many requests.
    pub(crate) fn every(&self) -> u32 {
        self.every
    }

    /// Posts `wrs` requests through `post`, which gets their placement and reports how many
    /// the device took (`Ok(all)` or `Err(taken)`); the queue is locked meanwhile, so that
    /// sequence numbers follow the queue's order. `nearly_full`: the post takes the queue's
    /// last places.
    #[inline]
    pub(crate) fn post<T, E>(
        &self,
        wrs: u32,
        signal: Signal,
        nearly_full: bool,
        post: impl FnOnce(Placement) -> std::result::Result<T, (E, u32)>,
    ) -> std::result::Result<T, E> {
        let mut chain = lock(&self.chain);
        let signaled = signal != Signal::Selective
            || nearly_full
            || self.in_flight.load(Ordering::Acquire) == 0
            || chain.since_signaled + wrs >= self.every;
        let seq = chain.next_seq;
        let last = seq + u64::from(wrs) - 1;
        let previous = self.last_signaled.load(Ordering::Relaxed);
        if signaled {
            // Counted before posting: the completion may be dispatched before `post` returns.
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            self.last_signaled.store(last, Ordering::Release);
        }
        match post(Placement {
            seq,
            signaled,
            fence: signal == Signal::Fence,
        }) {
            Ok(done) => {
                chain.next_seq = last + 1;
                chain.since_signaled = if signaled {
                    0
                } else {
                    chain.since_signaled + wrs
                };
                Ok(done)
            }
            Err((err, taken)) => {
                // The requests the device took keep their numbers (they are on the wire,
                // unsignaled: the queue pair is failed for them); the rest never existed.
                chain.next_seq = seq + u64::from(taken);
                if signaled {
                    self.in_flight.fetch_sub(1, Ordering::AcqRel);
                    self.last_signaled.store(previous, Ordering::Release);
                }
                Err(err)
            }
        }
    }

    /// A signaled request's completion was dispatched.
    #[inline]
    pub(crate) fn signaled_done(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Whether the unsignaled request `seq` has a signaled request posted after it, whose
    /// completion will cover it.
    #[inline]
    pub(crate) fn covered(&self, seq: u64) -> bool {
        self.last_signaled.load(Ordering::Acquire) >= seq
    }

    /// Whether unsignaled requests are in flight (read with the send CQ's lock held).
    #[inline]
    pub(crate) fn has_unsignaled(&self) -> bool {
        self.unsignaled_count.load(Ordering::Relaxed) != 0
    }

    /// The unsignaled slot `id`, request `seq`, was reserved (the send CQ's lock is held).
    pub(crate) fn push_unsignaled(&self, seq: u64, id: SlotId) {
        lock(&self.unsignaled).push_back((seq, id));
        self.unsignaled_count.fetch_add(1, Ordering::Relaxed);
    }

    /// The slot `id` was reserved last and is given back unposted (the send CQ's lock is
    /// held).
    pub(crate) fn forget_unposted(&self, id: SlotId) {
        let mut unsignaled = lock(&self.unsignaled);
        if unsignaled.back().is_some_and(|&(_, last)| last == id) {
            unsignaled.pop_back();
            self.unsignaled_count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The newest unsignaled slot in flight (the send CQ's lock is held).
    pub(crate) fn newest_unsignaled(&self) -> Option<SlotId> {
        if self.unsignaled_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        lock(&self.unsignaled).back().map(|&(_, id)| id)
    }

    /// Takes the oldest unsignaled slot if a completion of request `seq` (slot `id`) covers
    /// it: posted before it, or `id` itself (the send CQ's lock is held).
    pub(crate) fn pop_covered(&self, seq: u64, id: SlotId) -> Option<SlotId> {
        if self.unsignaled_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut unsignaled = lock(&self.unsignaled);
        match unsignaled.front() {
            Some(&(first, covered)) if first < seq || covered == id => {
                unsignaled.pop_front();
                self.unsignaled_count.fetch_sub(1, Ordering::Relaxed);
                Some(covered)
            }
            _ => None,
        }
    }

    /// The queue was destroyed or reset: nothing is in flight any more.
    pub(crate) fn clear(&self) {
        lock(&self.unsignaled).clear();
        self.unsignaled_count.store(0, Ordering::Relaxed);
        self.in_flight.store(0, Ordering::Release);
    }
}
