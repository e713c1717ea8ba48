//! Non-generic names for the one runtime this build picked.

use crate::DefaultRuntime;
use std::time::Duration;

/// A completion queue driven by the [`DefaultRuntime`].
pub type CompletionQueue = anyrdma_core::CompletionQueue<DefaultRuntime>;
/// A queue pair driven by the [`DefaultRuntime`].
pub type QueuePair = anyrdma_core::QueuePair<DefaultRuntime>;
/// An operation in flight on the [`DefaultRuntime`].
pub type Op<B, O> = anyrdma_core::Op<DefaultRuntime, B, O>;
/// A shared receive queue driven by the [`DefaultRuntime`].
pub type SharedReceiveQueue = anyrdma_core::SharedReceiveQueue<DefaultRuntime>;
/// A batch of work requests on the [`DefaultRuntime`].
pub type Batch = anyrdma_core::Batch<DefaultRuntime>;

/// [`anyrdma_core::timeout`] on the [`DefaultRuntime`].
///
/// # Errors
/// [`crate::Elapsed`] when `duration` passes before `future` completes.
pub async fn timeout<F: std::future::Future>(
    duration: Duration,
    future: F,
) -> Result<F::Output, crate::Elapsed> {
    anyrdma_core::timeout::<DefaultRuntime, F>(duration, future).await
}

/// Sleeps for `duration` on the [`DefaultRuntime`].
pub async fn sleep(duration: Duration) {
    <DefaultRuntime as crate::Runtime>::sleep(duration).await;
}
