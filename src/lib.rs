//! # anyrdma: async RDMA for Rust, on any async runtime
//!
//! anyrdma wraps libibverbs and librdmacm in safe, owned objects and turns every RDMA
//! operation into a future that completes when its work completion arrives.
//!
//! ## Choosing a runtime
//! An application enables exactly one runtime feature:
//!
//! ```toml
//! [dependencies]
//! anyrdma = { version = "0.1", features = ["tokio"] }   # or "async-std", or "smol"
//! ```
//!
//! That gives `DefaultRuntime` and non-generic names at this crate's root
//! (`anyrdma::CompletionQueue`, `anyrdma::QueuePair`, `anyrdma::timeout`, ...). With no runtime feature the build stops with
//! an error that says which line to add. Enabling several (as `--all-features` does) builds
//! too; then the aliases are absent and code names the runtime type, e.g.
//! `anyrdma::core::CompletionQueue<anyrdma::TokioRuntime>`.
//!
//! ## Writing a library
//! A library depends on `anyrdma-core` alone and stays generic over the runtime:
//!
//! ```
//! use anyrdma_core::Runtime;
//! use std::time::Duration;
//!
//! /// Retries `op` up to three times, whatever runtime the application chose.
//! async fn with_retries<R: Runtime, T, E, F, Fut>(mut op: F) -> Result<T, E>
//! where
//!     F: FnMut() -> Fut,
//!     Fut: std::future::Future<Output = Result<T, E>>,
//! {
//!     let mut attempt = 0;
//!     loop {
//!         match op().await {
//!             Err(_) if attempt < 2 => {
//!                 attempt += 1;
//!                 R::sleep(Duration::from_millis(10)).await;
//!             }
//!             result => return result,
//!         }
//!     }
//! }
//! ```

/// The executor-neutral core, re-exported whole: its runtime-generic types
/// (`core::QueuePair<R>`, `core::CompletionQueue<R>`, ...) are here.
pub use anyrdma_core as core;
pub use anyrdma_core::{device, error, runtime};
// Everything that does not depend on the runtime, at the root.
pub use anyrdma_core::{
    default_port, devices, registered_regions, Access, Atomic, Buffers, ConnectOptions, Context,
    CqOptions, DeviceInfo, DeviceLimits, DeviceSpec, Done, Elapsed, Endpoint, Error, Gid, GidEntry,
    GidType, LinkLayer, LocalBuf, MemoryRegion, Outcome, PollMode, PortInfo, PortSelection,
    PortState, ProtectionDomain, QpOptions, QpShutdownReason, ReadinessFd, Received, Recv,
    RemoteRegion, Result, Runtime, SrqOptions, WcStatus, WorkKind, DEVICE_ENV, MAX_SGE,
};

#[cfg(feature = "async-std")]
pub use anyrdma_async_std::AsyncStdRuntime;
#[cfg(feature = "smol")]
pub use anyrdma_smol::SmolRuntime;
#[cfg(feature = "tokio")]
pub use anyrdma_tokio::TokioRuntime;

cfg_if::cfg_if! {
    if #[cfg(not(any(feature = "tokio", feature = "async-std", feature = "smol")))] {
        compile_error!(
            "anyrdma needs an async runtime: enable exactly one of the features \"tokio\", \
             \"async-std\" or \"smol\". In Cargo.toml: \
             anyrdma = { version = \"0.1\", features = [\"tokio\"] }. \
             A library should depend on `anyrdma-core` instead and stay generic over `R: Runtime`."
        );
    } else if #[cfg(all(feature = "tokio", not(feature = "async-std"), not(feature = "smol")))] {
        /// The runtime picked by this build's one runtime feature.
        pub type DefaultRuntime = anyrdma_tokio::TokioRuntime;
        mod aliases;
        pub use aliases::*;
    } else if #[cfg(all(feature = "async-std", not(feature = "tokio"), not(feature = "smol")))] {
        /// The runtime picked by this build's one runtime feature.
        pub type DefaultRuntime = anyrdma_async_std::AsyncStdRuntime;
        mod aliases;
        pub use aliases::*;
    } else if #[cfg(all(feature = "smol", not(feature = "tokio"), not(feature = "async-std")))] {
        /// The runtime picked by this build's one runtime feature.
        pub type DefaultRuntime = anyrdma_smol::SmolRuntime;
        mod aliases;
        pub use aliases::*;
    }
}
