//! The executor-neutral boundary: what the core needs from an async runtime, held as a value.
//!
//! anyrdma's futures are completion-driven: they make progress when they are polled, by
//! polling a completion queue or reading an event channel. The only things the core needs
//! from an executor are a way to sleep until a file descriptor becomes readable (the
//! completion channel of a CQ, the rdma_cm event channel, the device's async event fd) and
//! timers. It never spawns tasks and never blocks.
//!
//! A runtime is a value, not a type parameter: [`RuntimeHandle`] is a cheap, shared handle to
//! an object-safe [`Runtime`]. No public type of anyrdma names a runtime, so library code is
//! plain:
//!
//! ```no_run
//! use anyrdma_core::{LocalBuf, QueuePair, RemoteRegion, Result};
//!
//! /// Works on whatever runtime the application picked.
//! pub async fn put(qp: &QueuePair, data: LocalBuf, at: RemoteRegion) -> Result<LocalBuf> {
//!     let (result, data) = qp.write(data, at).await;
//!     result.map(|()| data)
//! }
//! ```
//!
//! # Which runtime drives an object
//! The runtime is held by the [`Context`](crate::Context):
//! [`Context::with_runtime`](crate::Context::with_runtime) binds one explicitly, and every
//! completion queue made from that context uses it. A context opened without one uses the
//! process default ([`default_runtime`]), looked up by a completion queue's first operation
//! in event mode, from inside the task that posts it. Nothing is registered with a runtime before that first wait, so verbs
//! objects can be built in synchronous setup code, outside any runtime.
//!
//! The `anyrdma` crate sets the process default from its runtime features; see
//! [`default_runtime`] for the order. Adapters implement [`Runtime`] for Tokio
//! (`anyrdma-tokio`), async-std (`anyrdma-async-std`) and smol (`anyrdma-smol`).
//!
//! # Cost
//! The runtime is only consulted when a task goes to sleep on a file descriptor or a timer;
//! posting, polling a completion queue and completing an operation never call it.

pub mod budget;
mod default;
mod lazy_watch;
mod timeout;

use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub use default::{default_runtime, set_default_provider, set_default_runtime, DefaultProvider};
pub(crate) use lazy_watch::LazyWatch;
pub(crate) use timeout::with_sleep;
pub use timeout::{sleep, timeout, Elapsed};

/// A boxed timer future, as [`Runtime::sleep`] returns it.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An async runtime, as seen by the anyrdma core. Object-safe: held as a [`RuntimeHandle`].
///
/// Implementations are usually zero-sized (`anyrdma_tokio::Tokio`, `anyrdma_async_std::AsyncStd`,
/// `anyrdma_smol::Smol`).
pub trait Runtime: Send + Sync + fmt::Debug + 'static {
    /// A short name for messages, e.g. `"tokio"`.
    fn name(&self) -> &'static str;

    /// Registers `fd` for read readiness. The handle does not take ownership of `fd`;
    /// dropping it deregisters the descriptor (it does not close it).
    ///
    /// Called from inside a task that is about to wait, so a runtime that needs a current
    /// context (Tokio) finds it there.
    ///
    /// # Safety
    /// `fd` must be an open descriptor in non-blocking mode, and must stay open (and refer
    /// to the same file description) until the returned handle is dropped.
    ///
    /// # Errors
    /// Fails when the reactor refuses the descriptor (for example, it is already
    /// registered, or no runtime is running on this thread when the runtime needs one).
    unsafe fn register_fd(&self, fd: RawFd) -> io::Result<Box<dyn ReadinessFd>>;

    /// A future that completes after `duration`.
    ///
    /// May panic when the runtime cannot make a timer on the calling thread (Tokio's, outside
    /// a Tokio runtime): the core calls [`try_sleep`](Runtime::try_sleep).
    fn sleep(&self, duration: Duration) -> Sleep;

    /// A future that completes after `duration`, or why this runtime cannot make one on the
    /// calling thread (a runtime that needs to be running on it, as Tokio does). The core
    /// makes its timers with this, so that a context bound to one runtime and awaited from
    /// another fails with an error instead of a panic. The default calls
    /// [`sleep`](Runtime::sleep).
    ///
    /// # Errors
    /// When the runtime cannot make a timer here.
    fn try_sleep(&self, duration: Duration) -> io::Result<Sleep> {
        Ok(self.sleep(duration))
    }

    /// Which instance of this runtime the calling thread runs in, when a process may run
    /// several that do not share a reactor (Tokio: each `Runtime` it builds, by its id);
    /// `None` for a runtime with one reactor per process (async-std, smol), or outside any.
    /// Resources that register with a reactor (the shared completion queues of connections)
    /// are kept apart per instance, so that one runtime's shutdown does not take another's
    /// wake-ups with it. The default is `None`.
    fn current_instance(&self) -> Option<u64> {
        None
    }

    /// Asks whether the polling task may go on, before an operation's future does its work.
    /// `Pending` (the task woken at once) makes the future yield, so that a task whose
    /// operations are always complete when polled still lets other tasks and timers of its
    /// thread run.
    ///
    /// A runtime with a cooperative budget spends one unit here (Tokio: 128 a scheduling
    /// turn). The default, for runtimes without one, yields once every
    /// [`budget::POLLS_PER_YIELD`] calls on a thread.
    fn poll_budget(&self, cx: &mut Context<'_>) -> Poll<()> {
        budget::poll_yield_now_and_then(cx)
    }
}

/// A file descriptor registered with a runtime's reactor: its read readiness wakes a task.
pub trait ReadinessFd: Send + Sync {
    /// Runs the non-blocking operation `op` until it succeeds or fails with an error other
    /// than [`io::ErrorKind::WouldBlock`].
    ///
    /// When `op` would block, the readiness is cleared, the task in `cx` is registered to be
    /// woken when the descriptor becomes readable again, and `Poll::Pending` is returned.
    /// Because `op` drains the source up to `WouldBlock` before the task sleeps, and the
    /// readiness is cleared only for what was seen before that attempt, no edge is ever lost.
    ///
    /// An adapter may skip `op` while its reactor knows the descriptor is not readable (it
    /// saves a system call), provided that the reactor reports a descriptor that is already
    /// readable when interest in it is registered or re-armed (level-triggered readiness,
    /// as Tokio's and async-io's are).
    fn poll_read_with(
        &self,
        cx: &mut Context<'_>,
        op: &mut dyn FnMut() -> io::Result<()>,
    ) -> Poll<io::Result<()>>;

    /// Whether `op` may stop before the source is drained: true when the reactor reports
    /// readiness by level, that is, when interest re-armed after `op` said `WouldBlock`
    /// reports a descriptor that is still readable at once, whether or not `op` had read it
    /// to the end (async-io's reactor, with its one-shot, level-triggered epoll interest).
    /// The core then takes one completion event per readiness instead of reading on to an
    /// empty channel (a system call per wake-up saved); an event left in the channel is
    /// reported again. False (the default) for a reactor that clears readiness on
    /// `WouldBlock` and reports only new edges (Tokio's): the core then drains the channel.
    fn level_triggered(&self) -> bool {
        false
    }
}

/// A cheap, shared handle to a [`Runtime`]: what a [`Context`](crate::Context) holds.
///
/// ```
/// use anyrdma_core::runtime::{Runtime, RuntimeHandle, Sleep, ReadinessFd};
/// use std::{io, os::fd::RawFd, time::Duration};
///
/// /// A runtime that can do nothing, to show the shape of an adapter.
/// #[derive(Debug)]
/// struct Inert;
///
/// impl Runtime for Inert {
///     fn name(&self) -> &'static str { "inert" }
///     unsafe fn register_fd(&self, _: RawFd) -> io::Result<Box<dyn ReadinessFd>> {
///         Err(io::Error::other("inert runtime"))
///     }
///     fn sleep(&self, _: Duration) -> Sleep { Box::pin(std::future::pending()) }
/// }
///
/// let handle = RuntimeHandle::new(Inert);
/// assert_eq!(handle.name(), "inert");
/// ```
#[derive(Clone)]
pub struct RuntimeHandle(Arc<dyn Runtime>);

impl RuntimeHandle {
    /// Wraps `runtime`.
    pub fn new(runtime: impl Runtime) -> Self {
        RuntimeHandle(Arc::new(runtime))
    }

    /// The runtime's name, e.g. `"tokio"`.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// Sleeps for `duration` on this runtime.
    ///
    /// # Panics
    /// When the runtime cannot make a timer on the calling thread (Tokio's, outside a Tokio
    /// runtime); [`try_sleep`](RuntimeHandle::try_sleep) returns an error instead.
    pub fn sleep(&self, duration: Duration) -> Sleep {
        self.0.sleep(duration)
    }

    /// Sleeps for `duration` on this runtime, if it can make a timer on the calling thread.
    ///
    /// # Errors
    /// [`Error::Runtime`](crate::Error::Runtime) naming the runtime, when it cannot (Tokio's,
    /// awaited from a thread that runs no Tokio runtime).
    pub fn try_sleep(&self, duration: Duration) -> crate::Result<Sleep> {
        self.0
            .try_sleep(duration)
            .map_err(|source| crate::Error::Runtime {
                runtime: self.name(),
                what: "a timer",
                source,
            })
    }

    /// [`Runtime::current_instance`] of this runtime.
    pub fn current_instance(&self) -> Option<u64> {
        self.0.current_instance()
    }

    /// [`Runtime::poll_budget`] of this runtime.
    #[inline]
    pub fn poll_budget(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_budget(cx)
    }

    /// Registers `fd` for read readiness with this runtime, for code that waits on
    /// descriptors of its own.
    ///
    /// # Safety
    /// As [`Runtime::register_fd`].
    ///
    /// # Errors
    /// As [`Runtime::register_fd`].
    pub unsafe fn register_fd(&self, fd: RawFd) -> io::Result<Box<dyn ReadinessFd>> {
        // SAFETY: forwarded; the caller upholds the contract of Runtime::register_fd.
        unsafe { self.0.register_fd(fd) }
    }
}

impl<R: Runtime> From<R> for RuntimeHandle {
    fn from(runtime: R) -> Self {
        RuntimeHandle::new(runtime)
    }
}

impl fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RuntimeHandle").field(&self.0).finish()
    }
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
