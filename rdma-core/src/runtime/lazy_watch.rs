//! A descriptor registered with the runtime of the first task that waits on it.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, OnceLock};

use super::{ReadinessFd, RuntimeHandle};
use crate::error::Error;
use crate::wake::lock;

/// A non-blocking descriptor shared by every task that waits on it (a device's async-event
/// descriptor, an rdma_cm event channel): registered once, with the runtime of the first
/// caller that can register it. A caller on another runtime is woken through that one.
///
/// A registration that fails is tried again by the next caller: why it failed may be the
/// caller's (a context bound to Tokio, polled from a thread that runs no Tokio runtime), and
/// a later caller on the right thread must still be able to sleep on the descriptor.
pub(crate) struct LazyWatch {
    fd: RawFd,
    /// What the descriptor is, for errors: e.g. `the rdma_cm event channel`.
    what: &'static str,
    registered: OnceLock<Box<dyn ReadinessFd>>,
    /// Why the last attempt to register failed, until one succeeds. Its lock also keeps two
    /// callers from registering at once.
    failed: Mutex<Option<Arc<Error>>>,
}

impl LazyWatch {
    /// # Safety
    /// `fd` is in non-blocking mode and stays open until this value is dropped.
    pub(crate) unsafe fn new(fd: RawFd, what: &'static str) -> LazyWatch {
        LazyWatch {
            fd,
            what,
            registered: OnceLock::new(),
            failed: Mutex::new(None),
        }
    }

    /// The registration, made with `runtime` by the first call that succeeds.
    pub(crate) fn get(&self, runtime: &RuntimeHandle) -> Result<&dyn ReadinessFd, Arc<Error>> {
        if let Some(watch) = self.registered.get() {
            return Ok(&**watch);
        }
        let mut failed = lock(&self.failed);
        if let Some(watch) = self.registered.get() {
            return Ok(&**watch);
        }
        // SAFETY: `new`'s contract: non-blocking and open while this value lives, which the
        // registration (dropped with it) does not outlive.
        match unsafe { runtime.register_fd(self.fd) } {
            Ok(watch) => {
                *failed = None;
                Ok(&**self.registered.get_or_init(|| watch))
            }
            Err(source) => {
                let error = Arc::new(Error::Runtime {
                    runtime: runtime.name(),
                    what: self.what,
                    source,
                });
                *failed = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Why registering failed, as an error of its own, if the last attempt did.
    pub(crate) fn error(&self, runtime: &RuntimeHandle) -> Option<Error> {
        if self.registered.get().is_some() {
            return None;
        }
        lock(&self.failed).as_ref().map(|err| Error::Runtime {
            runtime: runtime.name(),
            what: self.what,
            source: std::io::Error::other(err.to_string()),
        })
    }
}
