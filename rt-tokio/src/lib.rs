//! Tokio adapter for anyrdma: implements [`anyrdma_core::Runtime`] with
//! [`tokio::io::unix::AsyncFd`] and Tokio's timers.
//!
//! The Tokio runtime must have I/O and time enabled (`Builder::enable_all`, or
//! `#[tokio::main]`). Verbs objects can be created anywhere; a completion queue registers
//! its channel with the Tokio runtime of the first task that sleeps on it.
//!
//! ```no_run
//! # fn demo() -> anyrdma_core::Result<()> {
//! let ctx = anyrdma_core::Context::open_default()?.with_runtime(anyrdma_tokio::Tokio);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::task::{Context, Poll};
use std::time::Duration;

use anyrdma_core::runtime::Sleep;
use anyrdma_core::{ReadinessFd, Runtime};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The Tokio runtime (current-thread or multi-thread).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokio;

impl Tokio {
    /// Whether the calling thread runs inside a Tokio runtime.
    pub fn is_current() -> bool {
        tokio::runtime::Handle::try_current().is_ok()
    }
}

/// A descriptor registered with Tokio's reactor. Dropping it deregisters, never closes.
#[derive(Debug)]
struct TokioFd(AsyncFd<BorrowedRawFd>);

/// A raw descriptor that Tokio may watch but does not own.
#[derive(Debug)]
struct BorrowedRawFd(RawFd);

impl AsRawFd for BorrowedRawFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Runtime for Tokio {
    fn name(&self) -> &'static str {
        "tokio"
    }

    unsafe fn register_fd(&self, fd: RawFd) -> io::Result<Box<dyn ReadinessFd>> {
        // AsyncFd::new panics outside a runtime; turn that into an error the user can read.
        let handle = tokio::runtime::Handle::try_current().map_err(|_| no_runtime_here())?;
        let _entered = handle.enter();
        // SAFETY: the caller keeps `fd` open and unchanged until the TokioFd is dropped.
        let watched =
            unsafe { AsyncFd::register_with_interest(BorrowedRawFd(fd), Interest::READABLE) }?;
        Ok(Box::new(TokioFd(watched)))
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }

    /// `tokio::time::sleep` panics outside a runtime; this says so instead.
    fn try_sleep(&self, duration: Duration) -> io::Result<Sleep> {
        tokio::runtime::Handle::try_current().map_err(|_| no_runtime_here())?;
        Ok(self.sleep(duration))
    }

    /// The id of the Tokio runtime the calling thread runs in: each has its own reactor.
    fn current_instance(&self) -> Option<u64> {
        let id = tokio::runtime::Handle::try_current().ok()?.id();
        // `Id` shows its number and offers nothing else to read it by.
        id.to_string().parse().ok()
    }

    /// Tokio's cooperative budget: one unit per operation poll, charged whether or not the
    /// poll completes (as Tokio's own resources do once they made progress).
    fn poll_budget(&self, cx: &mut Context<'_>) -> Poll<()> {
        tokio::task::coop::poll_proceed(cx).map(|guard| guard.made_progress())
    }
}

/// Why Tokio cannot watch a descriptor or make a timer on the calling thread.
fn no_runtime_here() -> io::Error {
    io::Error::other(
        "no Tokio runtime is running on this thread; await anyrdma operations from Tokio \
         tasks (e.g. within #[tokio::main])",
    )
}

impl ReadinessFd for TokioFd {
    fn poll_read_with(
        &self,
        cx: &mut Context<'_>,
        op: &mut dyn FnMut() -> io::Result<()>,
    ) -> Poll<io::Result<()>> {
        // Outside Tokio's cooperative budget: the core charges the budget once per operation
        // poll already, and a readiness poll refused for a spent budget registers nothing and
        // wakes the waker at once (outside a worker: right here). The waker is the CQ's own
        // driver, which would then run again, find the budget still spent, and so on for
        // ever; and whoever asked here would take "pending" for "registered".
        let ready = std::future::poll_fn(|cx| loop {
            let mut guard = match self.0.poll_read_ready(cx) {
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            };
            // try_io clears Tokio's readiness when `op` would block, so the next
            // poll_read_ready re-arms the waker instead of spinning.
            match guard.try_io(|_| op()) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        });
        std::pin::pin!(tokio::task::coop::unconstrained(ready)).poll(cx)
    }
}
