//! The one error type of anyrdma.
//!
//! Every variant says what went wrong, where, and what to do about it; `Display` gives a
//! sentence a newcomer can act on.

use std::fmt;
use std::io;

/// The result type of anyrdma.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in anyrdma.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// No RDMA device is present (or none matches the name that was asked for).
    NoDevice {
        /// The device name that was asked for, if any.
        wanted: Option<String>,
    },
    /// A verbs or rdma_cm call failed.
    Verbs {
        /// The C function that failed, e.g. `ibv_create_qp`.
        call: &'static str,
        /// The errno it reported.
        source: io::Error,
        /// What to check, when there is something more specific than the errno.
        hint: Option<&'static str>,
    },
    /// An argument was outside what the operation accepts; nothing was posted.
    InvalidArgument(String),
}

impl Error {
    /// Wraps the current `errno` as the failure of `call`.
    pub(crate) fn last_os(call: &'static str) -> Self {
        Self::verbs(call, io::Error::last_os_error())
    }

    /// Wraps an error code returned by `call` (verbs functions that return the errno).
    pub(crate) fn from_code(call: &'static str, code: i32) -> Self {
        Self::verbs(call, io::Error::from_raw_os_error(code))
    }

    pub(crate) fn verbs(call: &'static str, source: io::Error) -> Self {
        Self::Verbs { call, source, hint: None }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoDevice { wanted: Some(name) } => write!(
                f,
                "no RDMA device named {name:?}; `ibv_devices` lists the devices present \
                 (or run examples/devices)"
            ),
            Error::NoDevice { wanted: None } => write!(
                f,
                "no RDMA device found. Without an RDMA NIC, create a Soft-RoCE device: \
                 `sudo modprobe rdma_rxe && sudo rdma link add rxe0 type rxe netdev <your-nic>`; \
                 on a machine whose kernel lacks rdma_rxe, run inside the project's VM: \
                 `scripts/rxe-vm <command>`"
            ),
            Error::Verbs { call, source, hint } => {
                write!(f, "{call} failed: {source}")?;
                if let Some(hint) = hint {
                    write!(f, " ({hint})")?;
                }
                Ok(())
            }
            Error::InvalidArgument(what) => write!(f, "invalid argument: {what}; nothing was posted"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Verbs { source, .. } => Some(source),
            _ => None,
        }
    }
}
