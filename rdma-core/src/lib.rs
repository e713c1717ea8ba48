//! anyrdma-core: the executor-neutral core of anyrdma.
//!
//! It wraps libibverbs and librdmacm (through `rdma-sys`) in owned, reference-counted
//! objects and exposes every data operation as a future that completes when its work
//! completion arrives. It depends on no async runtime: the [`Runtime`] trait is the whole
//! boundary, implemented by the `anyrdma-tokio`, `anyrdma-async-std` and `anyrdma-smol`
//! adapters.
//!
//! No public type names a runtime: the runtime is a value ([`RuntimeHandle`]) held by the
//! [`Context`]. Applications usually depend on the `anyrdma` facade crate with one runtime
//! feature, which sets the process default; libraries depend on this crate and write plain
//! code:
//!
//! ```no_run
//! use anyrdma_core::{LocalBuf, QueuePair, RemoteRegion, Result};
//!
//! pub async fn put(qp: &QueuePair, data: LocalBuf, at: RemoteRegion) -> Result<LocalBuf> {
//!     let (result, data) = qp.write(data, at).await;
//!     result.map(|()| data)
//! }
//! ```

#![warn(missing_docs)]

mod assertions;
pub mod cm;
mod engine;
pub mod error;
mod events;
mod memory;
pub mod msg;
pub mod remote_memory;
pub mod runtime;
pub mod stats;
pub mod stream;
mod sync;
mod trace;
pub mod ud;
mod verbs;
mod wire;

// The layers' modules under their short names, as the rest of the crate uses them.
pub use engine::signaling;
pub(crate) use engine::{cq, credits, op, queue, slots, wake, wc};
pub(crate) use memory::{buffers, hot_slots, mr, owned, pool, remote, shared, span};
pub use verbs::device;
pub(crate) use verbs::{batch, context, endpoint, pd, port_counters, qp, send, srq};

pub use batch::Batch;
pub use buffers::{Buffers, MAX_SGE};
pub use context::{Context, DeviceLimits};
pub use cq::{CompletionQueue, CqOptions, PollMode};
pub use device::{
    default_port, devices, DeviceInfo, DeviceSpec, Gid, GidEntry, GidType, LinkLayer, PortInfo,
    PortSelection, PortState, DEVICE_ENV,
};
pub use endpoint::Endpoint;
pub use error::{Error, QpShutdownReason, Result, WireProblem};
pub use events::{DeviceEvent, DeviceEventKind, NextEvent};
pub use mr::{registered_regions, Access, LocalBuf, MemoryRegion};
pub use op::{Atomic, Done, MessageKind, Op, Outcome, Received, Recv};
pub use owned::StableBytes;
pub use pd::ProtectionDomain;
pub use pool::{ClassStats, MemoryPool, PoolOptions, PoolStats};
pub use port_counters::PortCounters;
pub use qp::{ConnectOptions, QpOptions, QueuePair};
pub use remote::RemoteRegion;
pub use runtime::{sleep, timeout, Elapsed, ReadinessFd, Runtime, RuntimeHandle};
pub use shared::SharedRegion;
pub use srq::{SharedReceiveQueue, SrqOptions};
#[cfg(feature = "metrics")]
pub use stats::metrics;
pub use stats::{CqStats, QpStats};
pub use wc::{WcStatus, WorkKind};
