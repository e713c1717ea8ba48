//! The process default runtime: what objects use when no runtime was given to them.

use std::sync::{OnceLock, RwLock};

use super::RuntimeHandle;
use crate::error::{Error, Result};

/// Picks the default runtime for the calling thread, or `None` when it has none.
pub type DefaultProvider = fn() -> Option<RuntimeHandle>;

/// Set by the application with [`set_default_runtime`]; wins over the provider.
static EXPLICIT: RwLock<Option<RuntimeHandle>> = RwLock::new(None);
/// Set once, before `main`, by the `anyrdma` crate from its runtime features.
static PROVIDER: OnceLock<DefaultProvider> = OnceLock::new();

/// The runtime that objects use when none was given to them (a [`Context`](crate::Context)
/// opened without [`with_runtime`](crate::Context::with_runtime), the free
/// [`timeout`](fn@super::timeout) and [`sleep`](super::sleep)).
///
/// In order: the runtime set with [`set_default_runtime`]; else the pick of the `anyrdma`
/// crate's runtime features, made for the calling thread: Tokio when the `tokio` feature is
/// on and the caller runs inside a Tokio runtime, otherwise the first enabled of async-std,
/// smol and Tokio. Objects look it up when they first wait, from inside the waiting task.
///
/// # Errors
/// [`Error::NoRuntime`] when there is none: the program links no `anyrdma` runtime feature
/// and none was set.
pub fn default_runtime() -> Result<RuntimeHandle> {
    let explicit = EXPLICIT
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    explicit
        .or_else(|| PROVIDER.get().and_then(|pick| pick()))
        .ok_or(Error::NoRuntime)
}

/// Makes `runtime` the process default, whatever the runtime features pick (`None` goes
/// back to their pick). Objects that already registered with a runtime keep theirs.
///
/// ```
/// # #[derive(Debug)] struct Inert;
/// # impl anyrdma_core::Runtime for Inert {
/// #     fn name(&self) -> &'static str { "inert" }
/// #     unsafe fn register_fd(&self, _: std::os::fd::RawFd) -> std::io::Result<Box<dyn anyrdma_core::ReadinessFd>> { unimplemented!() }
/// #     fn sleep(&self, _: std::time::Duration) -> anyrdma_core::runtime::Sleep { unimplemented!() }
/// # }
/// use anyrdma_core::runtime::{default_runtime, set_default_runtime, RuntimeHandle};
/// set_default_runtime(Some(RuntimeHandle::new(Inert)));
/// assert_eq!(default_runtime().unwrap().name(), "inert");
/// ```
pub fn set_default_runtime(runtime: Option<RuntimeHandle>) {
    *EXPLICIT
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = runtime;
}

/// Installs the function that picks the default runtime from the enabled runtime features.
/// The `anyrdma` crate calls it before `main`; the first call wins, later ones are ignored
/// and return false. Applications use [`set_default_runtime`] instead.
#[doc(hidden)]
pub fn set_default_provider(provider: DefaultProvider) -> bool {
    PROVIDER.set(provider).is_ok()
}
