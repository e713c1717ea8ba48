//! anyrdma-core: the executor-neutral core of anyrdma.
//!
//! It wraps libibverbs and librdmacm (through `rdma-sys`) in owned, reference-counted
//! objects and exposes every data operation as a future that completes when its work
//! completion arrives. It depends on no async runtime: the [`Runtime`] trait is the whole
//! boundary, implemented by the `anyrdma-tokio`, `anyrdma-async-std` and `anyrdma-smol`
//! adapters.
//!
//! Applications usually depend on the `anyrdma` facade crate with one runtime feature;
//! libraries depend on this crate and stay generic over `R: Runtime`.

#![warn(missing_docs)]

mod assertions;
mod batch;
mod buffers;
mod context;
mod cq;
pub mod device;
pub mod error;
mod mr;
mod op;
mod pd;
mod qp;
mod queue;
mod remote;
pub mod runtime;
mod send;
mod slots;
mod srq;
mod wake;
mod wc;

pub use batch::Batch;
pub use buffers::{Buffers, MAX_SGE};
pub use context::{Context, DeviceLimits};
pub use cq::{CompletionQueue, CqOptions, PollMode};
pub use device::{
    default_port, devices, DeviceInfo, DeviceSpec, Gid, GidEntry, GidType, LinkLayer, PortInfo,
    PortSelection, PortState, DEVICE_ENV,
};
pub use error::{Error, QpShutdownReason, Result};
pub use mr::{registered_regions, Access, LocalBuf, MemoryRegion};
pub use op::{Atomic, Done, Op, Outcome, Received, Recv};
pub use pd::ProtectionDomain;
pub use qp::{ConnectOptions, Endpoint, QpOptions, QueuePair};
pub use remote::RemoteRegion;
pub use runtime::{timeout, Elapsed, ReadinessFd, Runtime};
pub use srq::{SharedReceiveQueue, SrqOptions};
pub use wc::{WcStatus, WorkKind};
