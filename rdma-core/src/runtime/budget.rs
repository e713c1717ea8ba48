//! Cooperative scheduling for runtimes without a budget of their own.
//!
//! An operation that is already complete at its first poll (a small write on a fast device)
//! returns `Ready` without ever waiting, so `loop { qp.write(buf, at).await }` would never
//! give its thread back: other tasks and timers of that thread would starve. Tokio answers
//! with its cooperative budget (`Runtime::poll_budget` of the Tokio adapter spends it);
//! elsewhere this counter makes every [`POLLS_PER_YIELD`]th operation poll on a thread yield.

use std::cell::Cell;
use std::task::{Context, Poll};

/// Operation polls on one thread between two forced yields: Tokio's budget per scheduling
/// turn, so all runtimes yield about as often.
pub const POLLS_PER_YIELD: u32 = 128;

thread_local! {
    static POLLS: Cell<u32> = const { Cell::new(0) };
}

/// Yields once to the executor: the task is woken at once and polled again after the
/// others that are ready. Works on every runtime.
///
/// ```
/// # async fn demo() {
/// anyrdma_core::runtime::budget::yield_now().await;
/// # }
/// ```
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// `Ready` but once every [`POLLS_PER_YIELD`] calls on this thread, when it wakes the task
/// and returns `Pending`, so that the task yields to its executor.
pub fn poll_yield_now_and_then(cx: &mut Context<'_>) -> Poll<()> {
    POLLS.with(|polls| {
        let count = polls.get() + 1;
        if count < POLLS_PER_YIELD {
            polls.set(count);
            Poll::Ready(())
        } else {
            polls.set(0);
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
}
