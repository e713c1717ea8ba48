//! Ending a server's measurement whose client went away.
//!
//! A measurement's queue pairs are connected out of band (over the control channel), so a
//! client that dies mid-run leaves the server waiting on receives that never come: no
//! completion, no error, no event. The watchdog (`watchdog.rs`) sees the control connection
//! close and calls [`trigger`]; every way a measurement waits then ends:
//! * a measurement on a runtime runs inside [`abortable`], which stops polling it and drops
//!   it (anyrdma's operations give their buffers back, or keep them from reuse, as any
//!   dropped future does);
//! * spins on memory ([`crate::rc::spin_until`]) and raw verbs' busy polls look at
//!   [`aborted`] when they find nothing;
//! * raw verbs asleep on their completion channel are woken by their queue pair moved to
//!   the error state ([`set_hook`]): the receive it holds completes, flushed.
//!
//! A server runs one measurement at a time, so the state is the process's: [`reset`] starts
//! each measurement with it cleared. A client never triggers it.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::Poll;

use futures_util::task::AtomicWaker;

use crate::Res;

/// What a measurement ended by [`trigger`] returns.
pub const CLIENT_GONE: &str = "the client closed the control connection mid-measurement";

/// Work to do on [`trigger`], set by the measurement that owns what it touches.
pub type Hook = Box<dyn FnOnce() + Send>;

static ABORTED: AtomicBool = AtomicBool::new(false);
static WAKER: AtomicWaker = AtomicWaker::new();
static HOOK: Mutex<Option<Hook>> = Mutex::new(None);

/// Clears the state for the next measurement.
pub fn reset() {
    ABORTED.store(false, Ordering::Release);
    clear_hook();
}

/// Ends the measurement under way: sets the flag, wakes [`abortable`]'s task and runs the
/// hook (under its lock, so [`clear_hook`] waits for it and what it touches stays alive).
pub fn trigger() {
    ABORTED.store(true, Ordering::Release);
    WAKER.wake();
    let mut hook = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(hook) = hook.take() {
        hook();
    }
}

/// True once [`trigger`] was called for this measurement.
pub fn aborted() -> bool {
    ABORTED.load(Ordering::Relaxed)
}

/// `Err(CLIENT_GONE)` once [`trigger`] was called.
pub fn check() -> Res<()> {
    if aborted() {
        return Err(CLIENT_GONE.into());
    }
    Ok(())
}

/// Sets the work [`trigger`] does; the caller must [`clear_hook`] before what it touches
/// goes away.
pub fn set_hook(hook: Hook) {
    *HOOK.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
}

/// Takes the hook back; once this returns, [`trigger`] neither runs nor will run it.
pub fn clear_hook() {
    HOOK.lock().unwrap_or_else(|e| e.into_inner()).take();
}

/// Runs `measurement` until it ends or [`trigger`] is called (then it is dropped, not polled
/// again, and the result is `Err(CLIENT_GONE)`).
pub async fn abortable<T>(measurement: impl Future<Output = Res<T>>) -> Res<T> {
    let mut measurement = pin!(measurement);
    std::future::poll_fn(|cx| {
        WAKER.register(cx.waker());
        // After the registration: a trigger before it is seen here, one after it wakes us.
        if aborted() {
            return Poll::Ready(Err(CLIENT_GONE.into()));
        }
        measurement.as_mut().poll(cx)
    })
    .await
}
