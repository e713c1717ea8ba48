//! A descriptor registered with the runtime of a task that waits on it.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use super::{ReadinessFd, RuntimeHandle};
use crate::error::Error;
use crate::wake::lock;

/// A non-blocking descriptor shared by every task that waits on it (a device's async-event
/// descriptor, an rdma_cm event channel): registered with the runtime of the first caller,
/// and kept while it works. A caller on another runtime is woken through that one.
///
/// A failure is not for ever: a failed registration is tried again by the next caller (why it
/// failed may be the caller's: a Tokio-bound descriptor first waited on outside Tokio, then
/// from inside it, must be watched at once), and a registration whose reactor fails (its
/// runtime shut down) is let go, so that the next caller registers the descriptor with its
/// own runtime.
pub(crate) struct LazyWatch {
    fd: RawFd,
    /// What the descriptor is, for errors: e.g. `the rdma_cm event channel`.
    what: &'static str,
    state: Mutex<State>,
}

enum State {
    Unregistered,
    Registered(Arc<dyn ReadinessFd>),
    Failed(Arc<Error>),
}

/// The registration as one caller uses it: reading through it, and letting it go when its
/// reactor fails.
pub(crate) struct Watch<'a> {
    lazy: &'a LazyWatch,
    registered: Arc<dyn ReadinessFd>,
}

impl LazyWatch {
    /// # Safety
    /// `fd` is in non-blocking mode and stays open until this value is dropped.
    pub(crate) unsafe fn new(fd: RawFd, what: &'static str) -> LazyWatch {
        LazyWatch {
            fd,
            what,
            state: Mutex::new(State::Unregistered),
        }
    }

    /// The registration: made with `runtime` when there is none (or the last attempt failed).
    pub(crate) fn get(&self, runtime: &RuntimeHandle) -> Result<Watch<'_>, Arc<Error>> {
        let mut state = lock(&self.state);
        match &*state {
            State::Registered(registered) => {
                return Ok(Watch {
                    lazy: self,
                    registered: registered.clone(),
                })
            }
            State::Unregistered | State::Failed(_) => {}
        }
        // SAFETY: `new`'s contract: non-blocking and open while this value lives, which the
        // registration (dropped with it, or before) does not outlive.
        match unsafe { runtime.register_fd(self.fd) } {
            Ok(registered) => {
                let registered: Arc<dyn ReadinessFd> = Arc::from(registered);
                *state = State::Registered(registered.clone());
                Ok(Watch {
                    lazy: self,
                    registered,
                })
            }
            Err(source) => {
                let error = Arc::new(Error::Runtime {
                    runtime: runtime.name(),
                    what: self.what,
                    source,
                });
                *state = State::Failed(error.clone());
                Err(error)
            }
        }
    }

    /// Why registering failed, as an error of its own, if the last attempt did.
    pub(crate) fn error(&self, runtime: &RuntimeHandle) -> Option<Error> {
        match &*lock(&self.state) {
            State::Failed(error) => Some(Error::Runtime {
                runtime: runtime.name(),
                what: self.what,
                source: io::Error::other(error.to_string()),
            }),
            _ => None,
        }
    }

    /// Lets `registered` go, if it is still the registration: the next caller registers
    /// afresh.
    fn forget(&self, registered: &Arc<dyn ReadinessFd>) {
        let mut state = lock(&self.state);
        if matches!(&*state, State::Registered(known) if Arc::ptr_eq(known, registered)) {
            *state = State::Unregistered;
        }
    }
}

impl Watch<'_> {
    /// [`ReadinessFd::poll_read_with`] of the registration. An error (the reactor refused:
    /// its runtime shut down, say) lets the registration go, so that the next caller
    /// registers the descriptor with its own runtime.
    pub(crate) fn poll_read_with(
        &self,
        cx: &mut Context<'_>,
        op: &mut dyn FnMut() -> io::Result<()>,
    ) -> Poll<io::Result<()>> {
        let result = self.registered.poll_read_with(cx, op);
        if let Poll::Ready(Err(_)) = &result {
            self.lazy.forget(&self.registered);
        }
        result
    }
}
