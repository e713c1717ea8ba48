//! The environment variable that chooses the default device. A file of its own that imports
//! nothing from the crate, so that the error module can name the variable in its messages
//! without importing device discovery.

/// The environment variable that overrides the default device choice of
/// [`default_port()`](crate::device::default_port): `name`, `name:port` or
/// `name:port:gid_index`, e.g. `rxe0:1:1`.
pub const DEVICE_ENV: &str = "ANYRDMA_DEVICE";
