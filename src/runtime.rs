//! Runtimes: the one the runtime features pick by default, and each of them by name.
//!
//! With one runtime feature, everything uses that runtime. With several (Cargo unifies
//! features across the dependency graph, so a dependency may turn on another), the default
//! is picked for the thread that first needs it, in this fixed order:
//!
//! 1. Tokio, when the `tokio` feature is on and the thread runs inside a Tokio runtime;
//! 2. otherwise async-std, then smol, then Tokio: the first whose feature is on.
//!
//! An object looks the default up when it first needs a runtime (a completion queue: its
//! first operation in event mode), from inside the task that posts or awaits, so a Tokio task
//! gets Tokio and a smol task gets smol. To choose explicitly, bind a context to a runtime
//! ([`Context::with_runtime`](crate::Context::with_runtime)), or override the process
//! default with [`set_default_runtime`].
//!
//! ```no_run
//! # fn demo() -> anyrdma::Result<()> {
//! use anyrdma::Context;
//! let default_ctx = Context::open_default()?; // the features' pick
//! # #[cfg(feature = "smol")]
//! let smol_ctx = Context::open("rxe0")?.with_runtime(anyrdma::runtime::Smol);
//! # Ok(()) }
//! ```

use std::sync::LazyLock;

pub use anyrdma_core::runtime::*;

#[cfg(feature = "async-std")]
pub use anyrdma_async_std::AsyncStd;
#[cfg(feature = "smol")]
pub use anyrdma_smol::Smol;
#[cfg(feature = "tokio")]
pub use anyrdma_tokio::Tokio;

/// The enabled runtimes' handles, made once so that looking the default up allocates nothing.
#[cfg(feature = "tokio")]
static TOKIO: LazyLock<RuntimeHandle> = LazyLock::new(|| Tokio.into());
#[cfg(feature = "async-std")]
static ASYNC_STD: LazyLock<RuntimeHandle> = LazyLock::new(|| AsyncStd.into());
#[cfg(feature = "smol")]
static SMOL: LazyLock<RuntimeHandle> = LazyLock::new(|| Smol.into());

/// The runtime features' pick for the calling thread, in the order of the module docs.
#[allow(unreachable_code)]
pub fn feature_default() -> RuntimeHandle {
    #[cfg(feature = "tokio")]
    if Tokio::is_current() {
        return TOKIO.clone();
    }
    #[cfg(feature = "async-std")]
    return ASYNC_STD.clone();
    #[cfg(feature = "smol")]
    return SMOL.clone();
    #[cfg(feature = "tokio")]
    return TOKIO.clone();
    unreachable!("the crate does not build without a runtime feature")
}

/// Hands [`feature_default`] to the core before `main`: the core cannot name the runtimes,
/// and an application may use only types the core defines, so no call into this crate is
/// guaranteed to happen before the first wait.
extern "C" fn install_feature_default() {
    anyrdma_core::runtime::set_default_provider(|| Some(feature_default()));
}

/// Run by the dynamic loader with the other initialisers of the program (`.init_array`, as
/// C++ static constructors are), before `main`. It only stores a function pointer.
#[used]
#[link_section = ".init_array"]
static INSTALL_FEATURE_DEFAULT: extern "C" fn() = install_feature_default;
