//! Counters of what each object did, read as snapshots.
//!
//! Each object counts as it works and hands out a plain [`Copy`] snapshot on request, beside
//! the [`MemoryPool`](crate::MemoryPool)'s [`stats`](crate::MemoryPool::stats):
//!
//! | object | snapshot | counts |
//! |---|---|---|
//! | [`QueuePair`](crate::QueuePair) (and datagram queue pairs, shared receive queues) | [`QpStats`] | requests posted and completed on each queue, failed, flushed; bytes sent, written, read; fences; posts that waited for room |
//! | [`CompletionQueue`](crate::CompletionQueue) | [`CqStats`] | polls, empty polls, completions; sleeps on the completion channel, wake-ups by it, tasks woken |
//! | [`Messenger`](crate::msg::Messenger) | [`MessengerStats`] | messages and bytes each way, rendezvous each way, sends that waited for credits and how long |
//! | [`MemorySession`](crate::remote_memory::MemorySession) | [`SessionStats`] | grants live and their bytes, grants made and held, refusals by reason, each way |
//!
//! ```no_run
//! # async fn demo(qp: anyrdma_core::QueuePair, cq: anyrdma_core::CompletionQueue) {
//! let before = qp.stats();
//! // ... traffic ...
//! let after = qp.stats();
//! println!(
//!     "{} writes, {} bytes, {} in flight; {} polls of the CQ",
//!     after.sends_posted - before.sends_posted,
//!     after.bytes_written - before.bytes_written,
//!     after.in_flight(),
//!     cq.stats().polls,
//! );
//! # }
//! ```
//!
//! # What they cost
//!
//! Counting must not slow the operations it counts, so nothing is counted that can be
//! derived, and nothing takes a lock, allocates or adds a locked instruction on the path of
//! an operation:
//!
//! - A queue pair's posted and completed requests are the credits each work queue always
//!   kept: the requests it holds are `posted - completed`, two counts that only grow, where
//!   there was one that went up and down.
//! - A count that the path updates under a lock it holds anyway is a plain field of that
//!   locked state (a completion queue's, under its state lock, once per poll, not per
//!   completion, and an empty poll one count only; a messenger's and a memory session's,
//!   under theirs), or, when it must be
//!   read without that lock, a Relaxed load and store (the bytes of a send-queue post,
//!   counted under the queue's signaling lock).
//! - What happens off the hot path (failures, flushes, fences, waits for room) is a Relaxed
//!   atomic add where it happens.
//!
//! A snapshot reads each number on its own: numbers of one snapshot taken while traffic
//! flows may be a few operations apart. Every count starts at zero when its object is made
//! and only grows, except the levels: grants live, bytes live, grants held.
//!
//! With the `metrics` feature, `metrics::record()` hands the
//! snapshots of every live object to the [`metrics`](https://docs.rs/metrics) facade.

mod counter;
mod cq;
mod messenger;
#[cfg(feature = "metrics")]
pub mod metrics;
mod qp;
mod session;

pub(crate) use cq::CqCounters;
pub use cq::CqStats;
pub use messenger::MessengerStats;
pub(crate) use qp::QpCounters;
pub use qp::QpStats;
pub use session::{Refusals, SessionStats};
