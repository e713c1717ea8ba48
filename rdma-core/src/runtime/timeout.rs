//! Deadlines and sleeps that need no runtime named.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use super::{default_runtime, RuntimeHandle, Sleep};

// Defined here rather than in mod.rs beside the handle's other methods, so that the handle's
// file does not import this one (which uses the process default, defined over the handle).
impl RuntimeHandle {
    /// Runs `future` for at most `duration`, with this runtime's timer.
    ///
    /// # Errors
    /// [`Elapsed`] when the deadline passes first; `future` is dropped then.
    ///
    /// # Panics
    /// As [`sleep`](RuntimeHandle::sleep).
    pub async fn timeout<F: Future>(
        &self,
        duration: Duration,
        future: F,
    ) -> Result<F::Output, Elapsed> {
        with_sleep(duration, future, self.0.sleep(duration)).await
    }
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

/// Runs `future` for at most `duration`, on the [`default_runtime`] of the task that awaits
/// it (use [`RuntimeHandle::timeout`](super::RuntimeHandle::timeout) to name one).
///
/// ```no_run
/// # async fn demo(qp: anyrdma_core::QueuePair, buf: anyrdma_core::LocalBuf) {
/// use std::time::{Duration, Instant};
/// match anyrdma_core::timeout(Duration::from_secs(1), qp.send(buf)).await {
///     Ok((result, buf)) => { /* sent, or a typed error; the buffer is back */ }
///     Err(elapsed) => { /* the Op was dropped: its buffer is released once the NIC is done */ }
/// }
/// # }
/// ```
///
/// # Errors
/// [`Elapsed`] when the deadline passes first; `future` is dropped then.
///
/// # Panics
/// When there is no default runtime (no `anyrdma` runtime feature is linked and none was
/// set with [`set_default_runtime`](super::set_default_runtime)): a deadline that cannot be
/// kept must not be silently ignored.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    with_sleep(duration, future, default_sleep(duration)).await
}

/// Sleeps for `duration` on the [`default_runtime`] of the task that awaits it.
///
/// # Panics
/// As [`timeout`], when there is no default runtime.
pub async fn sleep(duration: Duration) {
    default_sleep(duration).await;
}

fn default_sleep(duration: Duration) -> Sleep {
    match default_runtime() {
        Ok(runtime) => runtime.sleep(duration),
        Err(err) => panic!("anyrdma: cannot start a timer: {err}"),
    }
}

/// Polls `future` until it completes or `sleep` (of `duration`) does.
///
/// The deadline is also checked against the clock at every poll: a runtime's timer may stay
/// pending past its deadline when the task's cooperative budget is spent (Tokio's does, and
/// the future, by spending it, can cause that), while the task keeps being polled.
pub(crate) async fn with_sleep<F: Future>(
    duration: Duration,
    future: F,
    sleep: Sleep,
) -> Result<F::Output, Elapsed> {
    // A duration past the clock's range has no deadline: only `sleep` ends the wait.
    let deadline = Instant::now().checked_add(duration);
    let mut future = pin!(future);
    let mut sleep = sleep;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Poll::Ready(Err(Elapsed(duration)));
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed(duration))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}
