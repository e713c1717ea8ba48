//! smol adapter for anyrdma: implements [`anyrdma_core::Runtime`] with
//! [`async_io::Async`] readiness and [`async_io::Timer`].
//!
//! Works with any executor that runs on async-io's reactor (smol's `block_on`, `Executor`, `LocalExecutor`).
//!
//! ```no_run
//! # fn demo() -> anyrdma_core::Result<()> {
//! let ctx = anyrdma_core::Context::open_default()?.with_runtime(anyrdma_smol::Smol);
//! # Ok(()) }
//! ```

use std::io;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::task::{Context, Poll};
use std::time::Duration;

use anyrdma_core::runtime::Sleep;
use anyrdma_core::{ReadinessFd, Runtime};
use async_io::{Async, Timer};

/// The smol runtime (its reactor is async-io's).
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol;

/// A descriptor registered with async-io's reactor. Dropping it deregisters, never closes.
#[derive(Debug)]
struct SmolFd(Async<WatchedFd>);

/// A raw descriptor that async-io may watch but does not own.
#[derive(Debug)]
struct WatchedFd(RawFd);

impl AsFd for WatchedFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `Runtime::register_fd` requires the descriptor to stay open until the
        // `SmolFd` holding this value is dropped.
        unsafe { BorrowedFd::borrow_raw(self.0) }
    }
}

impl Runtime for Smol {
    fn name(&self) -> &'static str {
        "smol"
    }

    unsafe fn register_fd(&self, fd: RawFd) -> io::Result<Box<dyn ReadinessFd>> {
        Ok(Box::new(SmolFd(Async::new(WatchedFd(fd))?)))
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        let timer = Timer::after(duration);
        Box::pin(async move {
            timer.await;
        })
    }
}

impl ReadinessFd for SmolFd {
    fn poll_read_with(
        &self,
        cx: &mut Context<'_>,
        op: &mut dyn FnMut() -> io::Result<()>,
    ) -> Poll<io::Result<()>> {
        loop {
            // Ask the reactor first: `op` costs a system call, and the reactor knows when the
            // descriptor is not readable. Its interest is level-triggered (epoll without
            // EPOLLET), so a descriptor already readable when interest is re-armed after a
            // `WouldBlock` is reported at once: no edge is lost between the two.
            match self.0.poll_readable(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
            match op() {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result),
            }
        }
    }

    /// async-io's interest is one-shot and level-triggered: re-armed by `poll_readable`
    /// after `WouldBlock`, it reports a descriptor that is still readable at once.
    fn level_triggered(&self) -> bool {
        true
    }
}
