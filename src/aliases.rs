//! Non-generic names for the one runtime this build picked.

use crate::DefaultRuntime;
use std::time::Duration;

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
