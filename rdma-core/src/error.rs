//! The one error type of anyrdma.
//!
//! Every variant says what went wrong, where, and what to do about it; `Display` gives a
//! sentence a newcomer can act on.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::device::DEVICE_ENV;
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
        /// The names of the devices that are present (none when `wanted` is `None`).
        available: Vec<String>,
    },
    /// The device choice in the `ANYRDMA_DEVICE` environment variable ([`DEVICE_ENV`])
    /// cannot be used: it is malformed, or names a device, port or GID index that is
    /// missing, inactive or unused.
    BadDeviceEnv {
        /// The variable's value.
        value: String,
        /// What is wrong with it.
        problem: String,
        /// The names of the devices that are present.
        available: Vec<String>,
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
    /// An argument was outside what the call accepts. When an operation returns it, the
    /// message says that nothing was posted.
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
    /// A length is more than anyrdma can handle there: an allocation larger than any the
    /// system allows, or a piece of a work request of 4 GiB or more. Nothing was allocated
    /// or posted.
    TooLarge {
        /// What the length is of, e.g. `memory allocation`.
        what: &'static str,
        /// The length asked for, in bytes.
        len: usize,
        /// The most it can be, in bytes.
        max: usize,
    },
    /// The system could not allocate the memory.
    OutOfMemory {
        /// Bytes that were to be allocated.
        requested: usize,
    },
    /// A remote access or sub-region would fall outside the remote region. Operations check
    /// this before posting: one refused for it posted nothing.
    OutOfBounds {
        /// The region that was to be accessed.
        region: RemoteRegion,
        /// Offset of the access within the region.
        offset: u64,
        /// Length of the access.
        len: u64,
    },
    /// A range starts after it ends.
    ReversedRange {
        /// The first offset of the range.
        start: u64,
        /// The offset after its end.
        end: u64,
    },
    /// A remote region runs past the end of the 64-bit address space (`addr + len`
    /// overflows), so it cannot be a registration. Operations check this before posting:
    /// one refused for it posted nothing.
    RegionWraps {
        /// The region.
        region: RemoteRegion,
    },
    /// An atomic operation's remote address is not 8-byte aligned; nothing was posted.
    Misaligned {
        /// The remote address.
        addr: u64,
    },
    /// An atomic operation's local buffer is not 8 bytes long: it receives the 8-byte
    /// value the remote word had. Nothing was posted.
    AtomicBufferLen {
        /// The buffer's length.
        len: usize,
    },
    /// An atomic operation was asked of a device without atomics; nothing was posted.
    AtomicsUnsupported {
        /// The device name.
        device: String,
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
    /// Memory a peer can write (remote write or atomic rights) was asked for as a
    /// [`LocalBuf`](crate::LocalBuf), whose bytes Rust code reads as `&[u8]`: that would race
    /// with the peer. Nothing was allocated or registered.
    PeerWritable {
        /// The rights asked for.
        access: crate::mr::Access,
    },
    /// Memory registered for local use only was asked to be described to a peer.
    LocalOnly,
    /// An empty container was to be registered: a registration needs at least one byte.
    EmptyRegistration,
    /// [`MemoryPool`](crate::MemoryPool) memory was asked to be shared with peers: its key
    /// is its chunk's and would expose the neighbouring blocks.
    PoolMemoryIsLocal,
    /// A [`MemoryPool`](crate::MemoryPool) would have to register more than its cap.
    PoolExhausted {
        /// The block size that was needed.
        requested: usize,
        /// Bytes the pool has registered.
        registered: usize,
        /// Its cap ([`PoolOptions::max_bytes`](crate::PoolOptions::max_bytes)).
        max_bytes: usize,
    },
    /// The memory's registration was to change (shared with peers, or revoked), but this
    /// piece is not the whole allocation, or other pieces of it are alive.
    NotWholeRegion,
    /// A local access to a [`SharedRegion`](crate::SharedRegion) falls outside it; nothing
    /// was read or written.
    SharedOutOfRange {
        /// Offset of the access in the region.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Length of the region.
        region_len: usize,
    },
    /// A 64-bit word of a [`SharedRegion`](crate::SharedRegion) was accessed at an address
    /// that is not a multiple of 8; nothing was read or written.
    SharedMisaligned {
        /// Offset of the word in the region.
        offset: usize,
    },
    /// The device reported an asynchronous event that failed this object: a queue pair's
    /// fatal error, a failed completion queue, a device that failed or is going away.
    DeviceEvent {
        /// The device's name.
        device: String,
        /// The event.
        event: crate::events::DeviceEventKind,
    },
    /// Bytes a peer sent (an encoded [`Endpoint`](crate::Endpoint) or
    /// [`RemoteRegion`]) were refused: they are not what this build's `to_bytes` writes, or
    /// they describe something that cannot exist. Nothing of them was used.
    BadWireFormat {
        /// What was to be decoded, e.g. `endpoint` or `remote region`.
        what: &'static str,
        /// What is wrong with the bytes.
        problem: WireProblem,
    },
    /// No one listens at the address: the peer's connection manager refused the request
    /// (nothing bound to that port there).
    ConnectRefused {
        /// The address connected to.
        addr: SocketAddr,
    },
    /// The peer's application rejected the connection; `reason` is the private data it
    /// rejected with (often text: see [`Error::reject_reason`]).
    ConnectRejected {
        /// The address connected to.
        addr: SocketAddr,
        /// What the peer sent with its rejection (up to 148 bytes; may be empty).
        reason: Vec<u8>,
        /// The transport's rejection code (28 when the peer's application rejected).
        code: i32,
    },
    /// The address cannot be reached over RDMA: no route to it, no RDMA device on the route,
    /// or no answer from the peer's connection manager.
    Unreachable {
        /// The address connected to.
        addr: SocketAddr,
        /// Which step failed, e.g. `resolving the address`.
        stage: &'static str,
        /// What the connection manager reported.
        source: io::Error,
    },
    /// A connection step did not finish in time (see the timeouts of
    /// [`ConnectionOptions`](crate::cm::ConnectionOptions)).
    ConnectTimeout {
        /// The peer's address.
        addr: SocketAddr,
        /// Which step did not finish.
        stage: &'static str,
        /// How long it was given.
        after: std::time::Duration,
    },
    /// A message from the peer broke the messaging protocol (see
    /// [`msg`](crate::msg)); the peer is not talked to any more.
    BadMessage {
        /// What was wrong with it.
        problem: crate::msg::HeaderProblem,
    },
    /// A message from the peer broke the byte stream's framing (see
    /// [`stream`](crate::stream)); the peer is not talked to any more.
    BadStreamFrame {
        /// What was wrong with it.
        problem: crate::stream::FrameProblem,
    },
    /// A write to a byte stream after its write side was closed (`close`, `shutdown`).
    StreamClosed,
    /// A control message of remote memory from the peer broke the protocol (see
    /// [`remote_memory`](crate::remote_memory)); nothing of it was used.
    BadControlMessage {
        /// What was wrong with it.
        problem: crate::remote_memory::ControlProblem,
    },
    /// An access to memory a peer granted was refused before anything was posted: the range
    /// is outside the grant, the rights were not granted, an atomic is not 8-byte aligned, or
    /// the grant has ended.
    GrantCheck {
        /// The grant's id on its connection.
        grant: u64,
        /// The granted range.
        region: RemoteRegion,
        /// Offset of the access within the granted range.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// What is wrong.
        problem: crate::remote_memory::GrantProblem,
    },
    /// The peer refused a request for memory or for a longer lease.
    RegionRefused {
        /// Why, as the peer said.
        reason: crate::remote_memory::RefuseReason,
    },
    /// The memory session of a connection has ended (its connection failed, it was closed,
    /// or the peer broke its protocol); `cause` says why, when known.
    SessionEnded {
        /// Why it ended.
        cause: Option<Arc<Error>>,
    },
    /// The peer did not answer a remote-memory request in time (is
    /// [`MemorySession::serve`](crate::remote_memory::MemorySession::serve) running on
    /// both sides?).
    NoAnswer {
        /// What was asked, e.g. `request for memory`.
        what: &'static str,
        /// How long this side waited.
        after: Duration,
    },
    /// A datagram is longer than the path MTU, the most one unreliable datagram carries
    /// (the port's active MTU); nothing was sent. Split the message, or send it over a
    /// reliable connection.
    DatagramTooLarge {
        /// The datagram's length in bytes.
        len: usize,
        /// The path MTU in bytes.
        mtu: u32,
        /// The device whose port sets it.
        device: String,
    },
    /// A datagram was longer than the buffers of the receive it landed in: only this
    /// receive failed (what its buffers hold is unspecified), and the datagram queue pair
    /// goes on.
    DatagramTruncated {
        /// The local queue pair number.
        qpn: u32,
        /// Bytes of payload the receive could hold.
        capacity: usize,
        /// The datagram's length, when the device delivered it whole (`None`: the device
        /// dropped it and reported a length error).
        len: Option<usize>,
    },
    /// Joining a multicast group failed; nothing of the join stays behind.
    MulticastJoin {
        /// The group's address.
        group: IpAddr,
        /// Which step failed, e.g. `binding the local address` or `the connection
        /// manager's answer (RDMA_CM_EVENT_MULTICAST_ERROR)`.
        stage: &'static str,
        /// What the step reported.
        source: io::Error,
    },
    /// The connection manager did not answer a multicast join in time (see
    /// [`MulticastOptions::timeout`](crate::ud::MulticastOptions::timeout)).
    MulticastTimeout {
        /// The group's address.
        group: IpAddr,
        /// How long it was given.
        after: Duration,
    },
    /// The connection ended: the peer disconnected (or its process died), or the device went
    /// away. Pending operations of the connection end with it (as the cause of
    /// [`Error::Flushed`]: see [`Error::is_disconnect`]).
    Disconnected {
        /// The connection's queue pair number.
        qpn: u32,
        /// Why, in words.
        why: &'static str,
    },
}

/// Why encoded bytes from a peer were refused ([`Error::BadWireFormat`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireProblem {
    /// The bytes are not as long as the format: truncated, padded, or another format.
    Length {
        /// The format's length in bytes.
        expected: usize,
        /// The length received.
        actual: usize,
    },
    /// The leading kind byte is not this format's: the bytes are another format, not from
    /// anyrdma, or from an anyrdma that did not tag its formats yet.
    Kind {
        /// This format's kind byte.
        expected: u8,
        /// The byte received.
        actual: u8,
    },
    /// The bytes are a version of the format that this build does not read.
    Version {
        /// The version this build reads.
        expected: u8,
        /// The version received.
        actual: u8,
    },
    /// A 24-bit field (a queue pair number or a packet sequence number) is 2^24 or more.
    Above24Bits {
        /// The field, e.g. `QP number`.
        field: &'static str,
        /// The value received.
        value: u32,
    },
    /// The MTU is not one of 256, 512, 1024, 2048 and 4096 bytes.
    Mtu(u32),
    /// The region runs past the end of the 64-bit address space: `addr + len` overflows.
    AddressWraps {
        /// The address received.
        addr: u64,
        /// The length received.
        len: u64,
    },
}

impl fmt::Display for WireProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireProblem::Length { expected, actual } => write!(
                f,
                "{actual} bytes where the format has {expected}: they were cut short, padded, \
                 or are not this format"
            ),
            WireProblem::Kind { expected, actual } => write!(
                f,
                "the first byte is {actual:#04x}, not {expected:#04x}: these bytes are another \
                 format, not from anyrdma, or from a version of anyrdma that did not tag its \
                 formats; both peers must run compatible versions"
            ),
            WireProblem::Version { expected, actual } => write!(
                f,
                "format version {actual}, but this build reads version {expected}; both peers \
                 must run compatible versions of anyrdma"
            ),
            WireProblem::Above24Bits { field, value } => {
                write!(f, "the {field} {value:#x} does not fit in 24 bits")
            }
            WireProblem::Mtu(mtu) => write!(
                f,
                "the MTU {mtu} is not one of 256, 512, 1024, 2048 and 4096 bytes"
            ),
            WireProblem::AddressWraps { addr, len } => write!(
                f,
                "{len} bytes at {addr:#x} run past the end of the 64-bit address space"
            ),
        }
    }
}

/// How to get a device where there is none.
const GET_A_DEVICE: &str = "Without an RDMA NIC, create a Soft-RoCE device: `sudo modprobe \
     rdma_rxe && sudo rdma link add rxe0 type rxe netdev <your-nic>`; on a machine whose kernel \
     lacks rdma_rxe, run inside the project's VM: `scripts/rxe-vm <command>`";

/// Why anyrdma or the application moved a queue pair to the error state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QpShutdownReason {
    /// The application called `QueuePair::shutdown`.
    Application,
    /// A batch was posted only in part; the queue pair was failed so that its buffers are
    /// released safely when it is destroyed.
    PartialBatch,
    /// The application closed the connection (`Connection::close`, or dropped it).
    Closed,
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

    /// A rejection's reason as text, when the peer sent printable UTF-8 (trailing NULs
    /// dropped); `None` for other errors or binary data.
    pub fn reject_reason(&self) -> Option<&str> {
        let Error::ConnectRejected { reason, .. } = self else {
            return None;
        };
        let end = reason.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        std::str::from_utf8(&reason[..end])
            .ok()
            .filter(|text| !text.chars().any(char::is_control))
    }

    /// Whether this error means that the connection ended (the peer disconnected or died, or
    /// the device went away), directly or as the cause of a flush.
    ///
    /// A peer that dies may show first as one failed operation (a read of memory it no longer
    /// has fails with a remote access error, a request it no longer answers with a retry
    /// error): that operation reports its own failure. Once the disconnect is read, it is the
    /// queue pair's cause: every operation that fails after it (new ones, and pending ones
    /// flushed) reports it, and this is true for them.
    pub fn is_disconnect(&self) -> bool {
        matches!(self.root_cause(), Error::Disconnected { .. })
    }

    /// The failure at the root of a flush or of a queue pair in error (itself otherwise).
    pub fn root_cause(&self) -> &Error {
        match self {
            Error::Flushed {
                cause: Some(cause), ..
            }
            | Error::QpInError { cause, .. }
            | Error::SessionEnded { cause: Some(cause) } => cause.root_cause(),
            other => other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoDevice {
                wanted: Some(name),
                available,
            } if !available.is_empty() => write!(
                f,
                "no RDMA device named {name:?}; the devices present are {}. Open one of them \
                 by name, or let {DEVICE_ENV}=name[:port[:gid_index]] choose the default \
                 (examples/devices shows their ports and GIDs)",
                available.join(", ")
            ),
            Error::NoDevice {
                wanted: Some(name), ..
            } => write!(
                f,
                "no RDMA device named {name:?}, and no RDMA device is present at all. \
                 {GET_A_DEVICE}"
            ),
            Error::NoDevice { wanted: None, .. } => write!(
                f,
                "no RDMA device found ({DEVICE_ENV} only chooses among devices that are \
                 present). {GET_A_DEVICE}"
            ),
            Error::BadDeviceEnv {
                value,
                problem,
                available,
            } => {
                write!(
                    f,
                    "{DEVICE_ENV}={value:?} cannot be used: {problem}. It takes `name`, \
                     `name:port` or `name:port:gid_index`, e.g. `rxe0:1:1`; "
                )?;
                if available.is_empty() {
                    write!(f, "no RDMA device is present. {GET_A_DEVICE}")
                } else {
                    write!(
                        f,
                        "the devices present are {} (examples/devices shows their ports and \
                         GIDs), or unset {DEVICE_ENV} to use the first active port",
                        available.join(", ")
                    )
                }
            }
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
            Error::OptionOutOfRange { option, value, max } => write!(
                f,
                "{option} is {value}, but the transport carries at most {max}; nothing was \
                 changed (its documentation says what each value means)"
            ),
            Error::TooLarge { what, len, max } => write!(
                f,
                "{len} bytes is too large for a {what}: the most is {max} bytes; use smaller \
                 pieces"
            ),
            Error::OutOfMemory { requested } => write!(
                f,
                "out of memory: allocating {requested} bytes failed; free memory or allocate \
                 less"
            ),
            Error::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            Error::OutOfBounds {
                region,
                offset,
                len,
            } => write!(
                f,
                "out of bounds: {len} bytes at offset {offset} do not fit in the remote region \
                 {region} ({} bytes long); an operation refused for this posted nothing",
                region.len
            ),
            Error::ReversedRange { start, end } => {
                write!(f, "the range {start}..{end} starts after it ends")
            }
            Error::RegionWraps { region } => write!(
                f,
                "the remote region {region} runs past the end of the 64-bit address space, \
                 so it cannot be memory a peer registered (RemoteRegion::from_bytes refuses \
                 such bytes); an operation refused for this posted nothing"
            ),
            Error::Misaligned { addr } => write!(
                f,
                "atomic operations need an 8-byte aligned remote address, and {addr:#x} is not; \
                 nothing was posted"
            ),
            Error::AtomicBufferLen { len } => write!(
                f,
                "an atomic operation's local buffer receives the remote word's previous value \
                 and must be exactly 8 bytes, not {len}; nothing was posted"
            ),
            Error::AtomicsUnsupported { device } => write!(
                f,
                "device {device} does not support atomic operations (its atomic capability is \
                 none: `ibv_devinfo -v` shows atomic_cap); nothing was posted. Use another \
                 device, or RDMA reads and writes"
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
            Error::Shutdown {
                qpn,
                reason: QpShutdownReason::Closed,
            } => write!(
                f,
                "the connection of queue pair {qpn} was closed by this side"
            ),
            Error::QpInError { qpn, cause } => write!(
                f,
                "queue pair {qpn} is in the error state and takes no new work; nothing was \
                 posted. It failed because: {cause}. Create and connect a new queue pair"
            ),
            Error::DeviceEvent { device, event } => write!(f, "{device} reported: {event}"),
            Error::PeerWritable { access } => write!(
                f,
                "memory with remote write or atomic rights ({access:?}) can change while Rust \
                 code reads it, so it is a SharedRegion, not a LocalBuf: allocate it with \
                 ProtectionDomain::alloc_shared (or share a LocalBuf with LocalBuf::share); \
                 nothing was allocated"
            ),
            Error::LocalOnly => write!(
                f,
                "this memory is registered for local use only, so a peer cannot use it: \
                 allocate it with remote rights (Access::REMOTE_READ with alloc, or \
                 alloc_shared for remote write or atomics)"
            ),
            Error::EmptyRegistration => write!(
                f,
                "cannot register an empty container: a registration needs at least one byte"
            ),
            Error::PoolMemoryIsLocal => write!(
                f,
                "pool memory is local only: its key would expose the neighbouring blocks; \
                 allocate memory for peers with ProtectionDomain::alloc_shared"
            ),
            Error::PoolExhausted {
                requested,
                registered,
                max_bytes,
            } => write!(
                f,
                "the memory pool is at its cap: a {requested}-byte block needs a new chunk, and \
                 {registered} of at most {max_bytes} bytes are registered; drop buffers, call \
                 trim, or raise PoolOptions::max_bytes"
            ),
            Error::NotWholeRegion => write!(
                f,
                "the registration cannot change while other pieces of it are alive: join the \
                 pieces split from it (unsplit) and wait for the operations that hold some"
            ),
            Error::SharedOutOfRange {
                offset,
                len,
                region_len,
            } => write!(
                f,
                "{len} bytes at offset {offset} do not fit in the shared region of {region_len} \
                 bytes; nothing was read or written"
            ),
            Error::SharedMisaligned { offset } => write!(
                f,
                "the 64-bit word at offset {offset} of the shared region is not 8-byte aligned; \
                 nothing was read or written"
            ),
            Error::BadWireFormat { what, problem } => {
                write!(f, "refused the {what} bytes from the peer: {problem}")
            }
            Error::ConnectRefused { addr } => write!(
                f,
                "connection to {addr} refused: nothing listens on that port there (is the \
                 server running, and on this port?)"
            ),
            Error::ConnectRejected { addr, reason, code } => {
                write!(f, "{addr} rejected the connection")?;
                match self.reject_reason() {
                    Some(text) if !text.is_empty() => write!(f, ": {text:?}"),
                    _ if reason.is_empty() => write!(f, " (no reason given; code {code})"),
                    _ => write!(
                        f,
                        " with {} bytes of private data (code {code})",
                        reason.len()
                    ),
                }
            }
            Error::Unreachable {
                addr,
                stage,
                source,
            } => write!(
                f,
                "cannot reach {addr} over RDMA ({stage} failed: {source}); check that the \
                 address belongs to an RDMA-capable interface (`rdma link` shows which netdevs \
                 have an RDMA device) and is routable from here"
            ),
            Error::ConnectTimeout { addr, stage, after } => write!(
                f,
                "connecting to {addr}: {stage} did not finish within {after:?}"
            ),
            Error::BadMessage { problem } => write!(
                f,
                "the peer sent a message that breaks the messaging protocol ({problem}); the \
                 connection was shut down"
            ),
            Error::StreamClosed => write!(
                f,
                "written after the stream's write side was closed (close or shutdown ends it)"
            ),
            Error::BadStreamFrame { problem } => write!(
                f,
                "the peer sent a message that breaks the byte stream's framing ({problem}); \
                 the connection was shut down"
            ),
            Error::BadControlMessage { problem } => write!(
                f,
                "the peer sent a remote-memory control message that breaks the protocol \
                 ({problem}); the connection was shut down"
            ),
            Error::GrantCheck {
                grant,
                region,
                offset,
                len,
                problem,
            } => write!(
                f,
                "grant {grant} ({region}): {len} bytes at offset {offset} refused, nothing was \
                 posted: {problem}"
            ),
            Error::RegionRefused { reason } => {
                write!(f, "the peer refused: {reason}")
            }
            Error::SessionEnded { cause: Some(cause) } => {
                write!(f, "the memory session has ended: {cause}")
            }
            Error::SessionEnded { cause: None } => write!(f, "the memory session has ended"),
            Error::NoAnswer { what, after } => write!(
                f,
                "the peer did not answer the {what} within {after:?}: is the peer's \
                 MemorySession::serve running?"
            ),
            Error::DatagramTooLarge { len, mtu, device } => write!(
                f,
                "a datagram of {len} bytes is longer than the path MTU of {device}, {mtu} \
                 bytes, the most one unreliable datagram carries; nothing was sent. Split the \
                 message, or use a reliable connection for large messages"
            ),
            Error::DatagramTruncated { qpn, capacity, len } => {
                match len {
                    Some(len) => write!(f, "a datagram of {len} bytes")?,
                    None => write!(f, "a datagram")?,
                }
                write!(
                    f,
                    " for queue pair {qpn} was longer than the {capacity} bytes its receive \
                     could hold: this receive failed and the datagram is lost (the queue pair \
                     goes on); post receives as large as the path MTU"
                )
            }
            Error::Disconnected { qpn, why } => {
                write!(f, "the connection of queue pair {qpn} ended: {why}")
            }
            Error::MulticastJoin {
                group,
                stage,
                source,
            } => write!(
                f,
                "cannot join multicast group {group} ({stage} failed: {source}); the group \
                 must be a multicast address of the local address's family, and the local \
                 address must belong to the queue pair's RDMA device (`rdma link`)"
            ),
            Error::MulticastTimeout { group, after } => write!(
                f,
                "joining multicast group {group}: the connection manager did not answer within \
                 {after:?}"
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

/// For `AsyncRead` and `AsyncWrite` (the byte streams of [`stream`](crate::stream)): the
/// error inside is this one ([`io::Error::get_ref`], [`io::Error::into_inner`]), of a kind a
/// socket user checks: `ConnectionReset` for a disconnect, `TimedOut` for a connect that
/// did not finish, `InvalidInput` and `InvalidData` for bad arguments and a peer's bad
/// messages, `BrokenPipe` for a write after `close`, `Other` else.
impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        let kind = match err.root_cause() {
            _ if err.is_disconnect() => io::ErrorKind::ConnectionReset,
            Error::ConnectTimeout { .. } | Error::MulticastTimeout { .. } => {
                io::ErrorKind::TimedOut
            }
            Error::ConnectRefused { .. } | Error::ConnectRejected { .. } => {
                io::ErrorKind::ConnectionRefused
            }
            Error::InvalidArgument(_) | Error::TooLarge { .. } => io::ErrorKind::InvalidInput,
            Error::BadMessage { .. } | Error::BadStreamFrame { .. } => io::ErrorKind::InvalidData,
            Error::StreamClosed => io::ErrorKind::BrokenPipe,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Verbs { source, .. }
            | Error::Runtime { source, .. }
            | Error::Unreachable { source, .. }
            | Error::MulticastJoin { source, .. } => Some(source),
            Error::Flushed {
                cause: Some(cause), ..
            }
            | Error::QpInError { cause, .. } => Some(&**cause),
            _ => None,
        }
    }
}
