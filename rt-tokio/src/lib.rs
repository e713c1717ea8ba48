//! Tokio adapter for anyrdma: implements [`anyrdma_core::Runtime`] with
//! [`tokio::io::unix::AsyncFd`] and Tokio's timers.
//!
//! The Tokio runtime must have I/O and time enabled (`Builder::enable_all`, or
//! `#[tokio::main]`), and verbs objects that wait on events must be created inside it.
//!
//! ```no_run
//! # async fn demo() {
//! use anyrdma_tokio::TokioRuntime;
//! anyrdma_core::timeout::<TokioRuntime, _>(std::time::Duration::from_secs(1), async {}).await.unwrap();
//! # }
//! ```

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::task::{Context, Poll};
use std::time::Duration;

use anyrdma_core::{ReadinessFd, Runtime};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The Tokio runtime (current-thread or multi-thread).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioRuntime;

/// A descriptor registered with Tokio's reactor. Dropping it deregisters, never closes.
#[derive(Debug)]
pub struct TokioFd(AsyncFd<BorrowedRawFd>);

/// A raw descriptor that Tokio may watch but does not own.
#[derive(Debug)]
struct BorrowedRawFd(RawFd);

impl AsRawFd for BorrowedRawFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Runtime for TokioRuntime {
    type Fd = TokioFd;
    type Sleep = tokio::time::Sleep;

    unsafe fn register_fd(fd: RawFd) -> io::Result<TokioFd> {
        // AsyncFd::new panics outside a runtime; turn that into an error the user can read.
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            io::Error::other(
                "anyrdma: no Tokio runtime is running on this thread; create verbs objects \
                 inside the runtime (e.g. within #[tokio::main])",
            )
        })?;
        let _entered = handle.enter();
        // SAFETY: the caller keeps `fd` open and unchanged until the TokioFd is dropped.
        unsafe { AsyncFd::register_with_interest(BorrowedRawFd(fd), Interest::READABLE) }
            .map(TokioFd)
            .map_err(io::Error::from)
    }

    fn sleep(duration: Duration) -> tokio::time::Sleep {
        tokio::time::sleep(duration)
    }
}

impl ReadinessFd for TokioFd {
    fn poll_read_with<T>(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut() -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
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
        }
    }
}
