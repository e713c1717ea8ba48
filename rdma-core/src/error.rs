//! The one error type of anyrdma.
//!
//! Every variant says what went wrong, where, and what to do about it; `Display` gives a
//! sentence a newcomer can act on.

use std::fmt;
use std::io;
use std::sync::Arc;

use crate::remote::RemoteRegion;
use crate::wc::{WcStatus, WorkKind};

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
    /// No async runtime is available to wait on: the object was given none, and there is no
    /// process default (see [`crate::runtime::default_runtime`]).
    NoRuntime,
    /// The async runtime could not watch a file descriptor (for example, Tokio's, when the
    /// waiting thread is outside any Tokio runtime).
    Runtime {
        /// The runtime's name, e.g. `tokio`.
        runtime: &'static str,
        /// What it was asked to watch, e.g. `the completion channel`.
        what: &'static str,
        /// The runtime's error.
        source: io::Error,
    },
    /// Registering memory failed because of the locked-memory limit (`RLIMIT_MEMLOCK`).
    MemlockLimit {
        /// Bytes that were to be registered.
        requested: usize,
        /// The soft limit in force, in bytes.
        limit: u64,
    },
    /// An argument was outside what the operation accepts; nothing was posted.
    InvalidArgument(String),
    /// An option is outside the range the transport can carry; nothing was changed.
    OptionOutOfRange {
        /// The option, e.g. `ConnectOptions::retry_cnt`.
        option: &'static str,
        /// The value given.
        value: u64,
        /// The largest value it takes.
        max: u64,
    },
    /// A remote access would fall outside the remote region; nothing was posted.
    OutOfBounds {
        /// The region that was to be accessed.
        region: RemoteRegion,
        /// Offset of the access within the region.
        offset: u64,
        /// Length of the access.
        len: u64,
    },
    /// An atomic operation's remote address is not 8-byte aligned, or its local buffer is
    /// not 8 bytes; nothing was posted.
    Misaligned {
        /// The remote address.
        addr: u64,
    },
    /// The queue has no room for the work request now, even after taking every completion
    /// that was waiting; nothing was posted.
    QueueFull {
        /// Which queue: "send queue", "receive queue", "shared receive queue" or
        /// "completion queue".
        queue: &'static str,
        /// Its depth.
        depth: u32,
    },
    /// More work requests in one post (a batch) than the queue can ever hold; nothing was
    /// posted.
    TooManyRequests {
        /// Work requests in the post.
        requests: u32,
        /// Which queue is too small, as in [`Error::QueueFull`].
        queue: &'static str,
        /// Its depth.
        depth: u32,
    },
    /// The queue pair is not connected yet (or not ready to send); nothing was posted.
    NotConnected {
        /// The queue pair number.
        qpn: u32,
    },
    /// A work request completed with an error status. The queue pair is now in the error
    /// state.
    WorkCompletion {
        /// What the work request was.
        kind: WorkKind,
        /// The completion status.
        status: WcStatus,
        /// The provider's vendor error code.
        vendor_err: u32,
        /// The local queue pair number.
        qpn: u32,
        /// The remote memory the request addressed, for RDMA and atomic requests.
        remote: Option<RemoteRegion>,
    },
    /// The work request was flushed because its queue pair is in the error state.
    Flushed {
        /// What the work request was.
        kind: WorkKind,
        /// The local queue pair number.
        qpn: u32,
        /// The failure that put the queue pair in error, when anyrdma saw it.
        cause: Option<Arc<Error>>,
    },
    /// The queue pair was moved to the error state on purpose.
    Shutdown {
        /// The local queue pair number.
        qpn: u32,
        /// Why.
        reason: QpShutdownReason,
    },
    /// The queue pair is in the error state: new work requests fail at once.
    QpInError {
        /// The local queue pair number.
        qpn: u32,
        /// The failure that put it there.
        cause: Arc<Error>,
    },
}

/// Why anyrdma or the application moved a queue pair to the error state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QpShutdownReason {
    /// The application called `QueuePair::shutdown`.
    Application,
    /// A batch was posted only in part; the queue pair was failed so that its buffers are
    /// released safely when it is destroyed.
    PartialBatch,
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
        Self::Verbs {
            call,
            source,
            hint: None,
        }
    }

    pub(crate) fn with_hint(mut self, text: &'static str) -> Self {
        if let Error::Verbs { hint, .. } = &mut self {
            *hint = Some(text);
        }
        self
    }

    /// The work completion status, for errors that came from a work completion.
    pub fn wc_status(&self) -> Option<WcStatus> {
        match self {
            Error::WorkCompletion { status, .. } => Some(*status),
            Error::Flushed { .. } => Some(WcStatus::WR_FLUSH_ERR),
            _ => None,
        }
    }

    /// The failure at the root of a flush or of a queue pair in error (itself otherwise).
    pub fn root_cause(&self) -> &Error {
        match self {
            Error::Flushed {
                cause: Some(cause), ..
            }
            | Error::QpInError { cause, .. } => cause.root_cause(),
            other => other,
        }
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
            Error::NoRuntime => write!(
                f,
                "no async runtime to wait on: enable a runtime feature of the `anyrdma` crate \
                 (`features = [\"tokio\"]`, `\"async-std\"` or `\"smol\"`), or give one with \
                 `Context::with_runtime` or `anyrdma_core::runtime::set_default_runtime`"
            ),
            Error::Runtime {
                runtime,
                what,
                source,
            } => write!(f, "the {runtime} runtime cannot watch {what}: {source}"),
            Error::MemlockLimit { requested, limit } => write!(
                f,
                "registering {requested} bytes of memory failed: the locked-memory limit \
                 (RLIMIT_MEMLOCK) is {limit} bytes and RDMA must pin every registered page. \
                 Raise it: `ulimit -l unlimited` in the shell that starts the program, \
                 `LimitMEMLOCK=infinity` for a systemd service, `--ulimit memlock=-1` for a \
                 container, or a `memlock` line in /etc/security/limits.conf"
            ),
            Error::InvalidArgument(what) => {
                write!(f, "invalid argument: {what}; nothing was posted")
            }
            Error::OptionOutOfRange { option, value, max } => write!(
                f,
                "{option} is {value}, but the transport carries at most {max}; nothing was \
                 changed (its documentation says what each value means)"
            ),
            Error::OutOfBounds {
                region,
                offset,
                len,
            } => write!(
                f,
                "remote access out of bounds: {len} bytes at offset {offset} of the remote \
                 region {region} ({} bytes long); nothing was posted",
                region.len
            ),
            Error::Misaligned { addr } => write!(
                f,
                "atomic operations need an 8-byte aligned remote address and an 8-byte local \
                 buffer; remote address {addr:#x} (or the local buffer) does not fit; nothing \
                 was posted"
            ),
            Error::QueueFull { queue, depth } => write!(
                f,
                "the {queue} is full ({depth} entries in flight); nothing was posted. Await \
                 operations in flight before posting more, or create {}",
                bigger(queue)
            ),
            Error::TooManyRequests {
                requests,
                queue,
                depth,
            } => write!(
                f,
                "{requests} work requests in one post, but the {queue} holds at most {depth}; \
                 nothing was posted. Post fewer at once (split the batch), or create {}",
                bigger(queue)
            ),
            Error::NotConnected { qpn } => write!(
                f,
                "queue pair {qpn} is not connected: call connect() with the peer's endpoint \
                 before sending; nothing was posted"
            ),
            Error::WorkCompletion {
                kind,
                status,
                vendor_err,
                qpn,
                remote,
            } => {
                write!(f, "{kind} on queue pair {qpn} failed: {}", status.explain())?;
                if let Some(region) = remote {
                    write!(f, " [remote {region}]")?;
                }
                write!(
                    f,
                    " (status {} {status}, vendor error {vendor_err:#x})",
                    status.0
                )?;
                if let Some(hint) = status.hint() {
                    write!(f, ". {hint}")?;
                }
                Ok(())
            }
            Error::Flushed {
                kind,
                qpn,
                cause: Some(cause),
            } => {
                write!(f, "{kind} on queue pair {qpn} was flushed: an earlier failure put the queue pair in the error state: {cause}")
            }
            Error::Flushed {
                kind,
                qpn,
                cause: None,
            } => write!(
                f,
                "{kind} on queue pair {qpn} was flushed: the queue pair is in the error state \
                 (it was closed, or failed without a completion anyrdma saw)"
            ),
            Error::Shutdown {
                qpn,
                reason: QpShutdownReason::Application,
            } => {
                write!(f, "queue pair {qpn} was shut down by the application")
            }
            Error::Shutdown {
                qpn,
                reason: QpShutdownReason::PartialBatch,
            } => write!(
                f,
                "queue pair {qpn} was failed because the device accepted only part of a batch; \
                 its buffers are released when the queue pair is destroyed"
            ),
            Error::QpInError { qpn, cause } => write!(
                f,
                "queue pair {qpn} is in the error state and takes no new work; nothing was \
                 posted. It failed because: {cause}. Create and connect a new queue pair"
            ),
        }
    }
}

/// What to create instead of a queue that is too small.
fn bigger(queue: &str) -> &'static str {
    if queue == "completion queue" {
        "the completion queue with more entries (CqOptions::entries)"
    } else if queue == "shared receive queue" {
        "the shared receive queue deeper (SrqOptions::max_wr)"
    } else {
        "the queue pair with a deeper queue (QpOptions::max_send_wr, max_recv_wr)"
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Verbs { source, .. } | Error::Runtime { source, .. } => Some(source),
            Error::Flushed {
                cause: Some(cause), ..
            }
            | Error::QpInError { cause, .. } => Some(&**cause),
            _ => None,
        }
    }
}
