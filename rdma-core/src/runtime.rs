//! The executor-neutral boundary: what the core needs from an async runtime.
//!
//! anyrdma's futures are completion-driven: they make progress when they are polled, by
//! polling a completion queue or reading an event channel. The only things the core needs
//! from an executor are a way to sleep until a file descriptor becomes readable (the
//! completion channel of a CQ, the rdma_cm event channel, the device's async event fd) and
//! timers. It never spawns tasks and never blocks.
//!
//! Adapter crates implement [`Runtime`] for Tokio (`anyrdma-tokio`), async-std
//! (`anyrdma-async-std`) and smol (`anyrdma-smol`). Library code stays generic:
//!
//! ```
//! use anyrdma_core::Runtime;
//! use std::time::Duration;
//!
//! /// Works on any runtime the application picked.
//! async fn pause<R: Runtime>() {
//!     R::sleep(Duration::from_millis(1)).await;
//! }
//! ```

use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// An async runtime, as seen by the anyrdma core.
///
/// Implementations are zero-sized marker types (`TokioRuntime`, `AsyncStdRuntime`,
/// `SmolRuntime`); all operations are associated functions, so a type parameter
/// `R: Runtime` carries the choice at compile time with no cost at run time.
pub trait Runtime: Send + Sync + Sized + 'static {
    /// A file descriptor registered with the runtime's reactor.
    ///
    /// Dropping it deregisters the descriptor from the reactor (it does not close it).
    type Fd: ReadinessFd;

    /// The future returned by [`Runtime::sleep`].
    type Sleep: Future + Send;

    /// Registers `fd` for read readiness. The handle does not take ownership of it.
    ///
    /// # Safety
    /// `fd` must be an open descriptor in non-blocking mode, and must stay open (and refer
    /// to the same file description) until the returned handle is dropped.
    ///
    /// # Errors
    /// Fails when the reactor refuses the descriptor (for example, it is already
    /// registered, or no runtime is running on this thread when the runtime needs one).
    unsafe fn register_fd(fd: RawFd) -> io::Result<Self::Fd>;

    /// A future that completes after `duration`.
    fn sleep(duration: Duration) -> Self::Sleep;
}

/// A file descriptor whose read readiness wakes a task.
pub trait ReadinessFd: Send + Sync + 'static {
    /// Runs the non-blocking operation `op` until it succeeds or fails with an error other
    /// than [`io::ErrorKind::WouldBlock`].
    ///
    /// When `op` would block, the readiness is cleared, the task in `cx` is registered to be
    /// woken when the descriptor becomes readable again, and `Poll::Pending` is returned.
    /// Because `op` drains the source up to `WouldBlock` before the task sleeps, no edge is
    /// ever lost.
    fn poll_read_with<T>(
        &self,
        cx: &mut Context<'_>,
        op: impl FnMut() -> io::Result<T>,
    ) -> Poll<io::Result<T>>;
}

/// The error of [`timeout`]: the deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(pub Duration);

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "timed out after {:?}", self.0)
    }
}

impl std::error::Error for Elapsed {}

/// Runs `future` for at most `duration` on runtime `R`.
///
/// # Errors
/// [`Elapsed`] when the deadline passes first; `future` is dropped then.
pub async fn timeout<R: Runtime, F: Future>(
    duration: Duration,
    future: F,
) -> Result<F::Output, Elapsed> {
    let mut future = pin!(future);
    let mut sleep = pin!(R::sleep(duration));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(_) => Poll::Ready(Err(Elapsed(duration))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Puts `fd` in non-blocking mode, as [`Runtime::register_fd`] requires.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL take no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
