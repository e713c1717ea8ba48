//! A descriptor registered with the runtime of the first task that waits on it.

use std::os::fd::RawFd;
use std::sync::{Arc, OnceLock};

use super::{ReadinessFd, RuntimeHandle};
use crate::error::Error;

/// A non-blocking descriptor shared by every task that waits on it (a device's async-event
/// descriptor, an rdma_cm event channel): registered once, with the runtime of the first
/// caller, and kept with the reason when that fails. A caller on another runtime is woken
/// through the first one.
pub(crate) struct LazyWatch {
    fd: RawFd,
    /// What the descriptor is, for errors: e.g. `the rdma_cm event channel`.
    what: &'static str,
    registered: OnceLock<Result<Box<dyn ReadinessFd>, Arc<Error>>>,
}

impl LazyWatch {
    /// # Safety
    /// `fd` is in non-blocking mode and stays open until this value is dropped.
    pub(crate) unsafe fn new(fd: RawFd, what: &'static str) -> LazyWatch {
        LazyWatch {
            fd,
            what,
            registered: OnceLock::new(),
        }
    }

    /// The registration, made on the first call with `runtime`.
    pub(crate) fn get(&self, runtime: &RuntimeHandle) -> Result<&dyn ReadinessFd, &Arc<Error>> {
        self.registered
            .get_or_init(|| {
                // SAFETY: `new`'s contract: non-blocking and open while this value lives,
                // which the registration (dropped with it) does not outlive.
                unsafe { runtime.register_fd(self.fd) }.map_err(|source| {
                    Arc::new(Error::Runtime {
                        runtime: runtime.name(),
                        what: self.what,
                        source,
                    })
                })
            })
            .as_ref()
            .map(|watch| &**watch)
    }

    /// Why registering failed, as an error of its own, if it did.
    pub(crate) fn error(&self, runtime: &RuntimeHandle) -> Option<Error> {
        match self.registered.get() {
            Some(Err(err)) => Some(Error::Runtime {
                runtime: runtime.name(),
                what: self.what,
                source: std::io::Error::other(err.to_string()),
            }),
            _ => None,
        }
    }
}
