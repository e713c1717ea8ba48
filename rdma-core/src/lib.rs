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

pub mod device;
pub mod error;
pub mod runtime;

pub use device::{
    default_port, devices, DeviceInfo, DeviceSpec, Gid, GidEntry, GidType, LinkLayer, PortInfo,
    PortSelection, PortState, DEVICE_ENV,
};
pub use error::{Error, Result};
pub use runtime::{timeout, Elapsed, ReadinessFd, Runtime};
