//! # anyrdma: async RDMA for Rust, on any async runtime
//!
//! anyrdma wraps libibverbs and librdmacm in safe, owned objects and turns every RDMA
//! operation into a future that completes when its work completion arrives.
//!
//! ## Choosing a runtime
//! An application enables one runtime feature:
//!
//! ```toml
//! [dependencies]
//! anyrdma = { version = "0.1", features = ["tokio"] }   # or "async-std", or "smol"
//! ```
//!
//! No type names the runtime: `anyrdma::QueuePair`, `anyrdma::CompletionQueue`,
//! `anyrdma::timeout` are the same whatever the feature. The feature sets the default runtime
//! that objects use when none is given ([`runtime`] says how it is picked when several
//! features are on). With no runtime feature the build stops with an error that says which
//! line to add. One process can drive one device with Tokio and another with smol:
//! [`Context::with_runtime`] binds a context to a runtime, named in [`runtime`].
//!
//! ## Writing a library
//! A library depends on `anyrdma-core` alone and writes plain code; the application's
//! runtime feature decides how it waits:
//!
//! ```no_run
//! use anyrdma_core::{LocalBuf, QueuePair, RemoteRegion, Result};
//!
//! pub async fn put(qp: &QueuePair, data: LocalBuf, at: RemoteRegion) -> Result<LocalBuf> {
//!     let (result, data) = qp.write(data, at).await;
//!     result.map(|()| data)
//! }
//! ```

/// The executor-neutral core, re-exported whole.
pub use anyrdma_core as core;
/// Every object's counters exported through the `metrics` facade (feature `metrics`).
#[cfg(feature = "metrics")]
pub use anyrdma_core::metrics;
pub use anyrdma_core::{cm, device, error, msg, remote_memory, stats, stream, ud};
pub use anyrdma_core::{
    default_port, devices, registered_regions, sleep, timeout, Access, Atomic, Batch, Buffers,
    ClassStats, CompletionQueue, ConnectOptions, Context, CqOptions, CqStats, DeviceEvent,
    DeviceEventKind, DeviceInfo, DeviceLimits, DeviceSpec, Done, Elapsed, Endpoint, Error, Gid,
    GidEntry, GidType, LinkLayer, LocalBuf, MemoryPool, MemoryRegion, MessageKind, NextEvent, Op,
    Outcome, PollMode, PoolOptions, PoolStats, PortCounters, PortInfo, PortSelection, PortState,
    ProtectionDomain, QpOptions, QpShutdownReason, QpStats, QueuePair, ReadinessFd, Received, Recv,
    RemoteRegion, Result, Runtime, RuntimeHandle, SharedReceiveQueue, SharedRegion, SrqOptions,
    StableBytes, WcStatus, WireProblem, WorkKind, DEVICE_ENV, MAX_SGE,
};

#[cfg(not(any(feature = "tokio", feature = "async-std", feature = "smol")))]
compile_error!(
    "anyrdma needs an async runtime: enable one of the features \"tokio\", \"async-std\" or \
     \"smol\". In Cargo.toml: anyrdma = { version = \"0.1\", features = [\"tokio\"] }. \
     A library should depend on `anyrdma-core` instead: its types name no runtime."
);

#[cfg(any(feature = "tokio", feature = "async-std", feature = "smol"))]
pub mod runtime;
