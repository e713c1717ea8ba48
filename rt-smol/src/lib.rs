//! smol adapter for anyrdma: implements [`anyrdma_core::Runtime`] with
//! [`async_io::Async`] readiness and [`async_io::Timer`].
//!
//! Works with any executor that runs on async-io's reactor (smol's `block_on`, `Executor`,
//! `LocalExecutor`).
//!
//! ```no_run
//! use anyrdma_smol::SmolRuntime;
//! async_io::block_on(anyrdma_core::timeout::<SmolRuntime, _>(std::time::Duration::from_secs(1), async {})).unwrap();
//! ```

use std::io;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::task::{Context, Poll};
use std::time::Duration;

use anyrdma_core::{ReadinessFd, Runtime};
use async_io::{Async, Timer};

/// The smol runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmolRuntime;

/// A descriptor registered with async-io's reactor. Dropping it deregisters, never closes.
#[derive(Debug)]
pub struct SmolFd(Async<WatchedFd>);

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

impl Runtime for SmolRuntime {
    type Fd = SmolFd;
    type Sleep = Timer;

    unsafe fn register_fd(fd: RawFd) -> io::Result<SmolFd> {
        Async::new(WatchedFd(fd)).map(SmolFd)
    }

    fn sleep(duration: Duration) -> Timer {
        Timer::after(duration)
    }
}

impl ReadinessFd for SmolFd {
    fn poll_read_with<T>(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut() -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            match op() {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result),
            }
            // Ready only for a readiness event that arrived after the last Ready: the
            // attempt above ran before, so an edge between the two is not lost.
            match self.0.poll_readable(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
