//! What a connection and a listener can be given.

use std::time::Duration;

use crate::cq::{CompletionQueue, PollMode};
use crate::pd::ProtectionDomain;
use crate::qp::{ConnectOptions, QpOptions};
use crate::runtime::RuntimeHandle;

/// How a [`Connection`](super::Connection) is made. The defaults suit hardware NICs and
/// Soft-RoCE alike.
///
/// ```
/// use std::time::Duration;
/// use anyrdma_core::cm::ConnectionOptions;
/// let mut options = ConnectionOptions::default();
/// options.qp.max_recv_wr = 1024;            // deeper receive queue
/// options.transport.retry_cnt = 3;          // notice a dead peer sooner
/// options.connect_timeout = Duration::from_secs(2);
/// options.private_data = b"hello".to_vec(); // the peer reads it before accepting
/// ```
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// Queue depths, scatter-gather entries and inline size of the connection's queue pair
    /// (each capped at the device's limit).
    pub qp: QpOptions,
    /// Transport parameters: ACK timeout, retry and RNR retry counts, the RNR delay asked of
    /// the peer, and outstanding RDMA reads and atomics each way (`max_rd_atomic`, which
    /// sets the connection's responder resources and initiator depth, within the device's
    /// and the peer's limits). The path MTU comes from the connection manager's route; the
    /// `mtu` field is ignored.
    pub transport: ConnectOptions,
    /// How long resolving the address, and then the route, may take each. Default 2 s.
    pub resolve_timeout: Duration,
    /// How long the peer may take to accept (or, when accepting, the peer to confirm).
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// Sent with the connect request (at most 56 bytes) or with the accept (at most 196);
    /// the peer reads it as [`Incoming::private_data`](super::Incoming::private_data) or
    /// [`Connection::private_data`](super::Connection::private_data). Default empty.
    pub private_data: Vec<u8>,
    /// How the completion queue of the connection waits, when the connection creates (or
    /// shares) one. Default [`PollMode::default`].
    pub poll_mode: PollMode,
    /// Entries of each shared completion queue of a device. The connections' queue pairs
    /// are spread over as many as needed so that the send and receive depths of the pairs
    /// on one never exceed its entries (a deeper pair gets a queue of its own size): an
    /// operation never finds a shared queue full. Default 4096.
    pub cq_entries: u32,
    /// The protection domain and completion queues to use instead of the shared ones: they
    /// must be of the device the route goes through.
    pub resources: Option<ConnectionResources>,
    /// The runtime that waits for the connection's events and completions. Default: the
    /// process default ([`default_runtime`](crate::runtime::default_runtime)), looked up
    /// when connecting.
    pub runtime: Option<RuntimeHandle>,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            qp: QpOptions::default(),
            transport: ConnectOptions::default(),
            resolve_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            private_data: Vec::new(),
            poll_mode: PollMode::default(),
            cq_entries: 4096,
            resources: None,
            runtime: None,
        }
    }
}

/// A protection domain and completion queues a connection uses instead of the ones shared
/// by the connections of its device (see [`ConnectionOptions::resources`]).
#[derive(Clone)]
pub struct ConnectionResources {
    /// Where the connection's memory is registered.
    pub pd: ProtectionDomain,
    /// Completions of sends, writes, reads and atomics.
    pub send_cq: CompletionQueue,
    /// Completions of receives.
    pub recv_cq: CompletionQueue,
}

impl std::fmt::Debug for ConnectionResources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionResources")
            .field("pd", &self.pd)
            .finish_non_exhaustive()
    }
}

/// How a [`Listener`](super::Listener) listens.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// Connect requests that may wait to be taken by `accept` or `incoming`, so that a
    /// flood of clients cannot grow the server's memory. It bounds two queues: requests the
    /// kernel holds until this side reads its events (beyond that, the kernel drops a request
    /// and the client's connect ends with [`Error::ConnectTimeout`](crate::Error) after its
    /// connect timeout), and requests read but not taken yet (beyond that, a request is
    /// rejected at once, and the client sees [`Error::ConnectRejected`](crate::Error)).
    /// Default 128.
    pub backlog: usize,
    /// Handshakes [`Listener::accept`](super::Listener::accept) carries on at once: requests
    /// it answered whose peers have not confirmed yet. A peer that never confirms holds its
    /// place until [`ConnectionOptions::connect_timeout`] (then its handshake fails and is
    /// dropped); while all places are held, further requests wait in the backlog (and beyond
    /// it are turned away, as above), so that clients that stall their handshakes cost the
    /// server a bounded number of queue pairs. Default 64; 0 counts as 1.
    pub max_handshakes: usize,
    /// Options of the connections it accepts (`private_data` is sent with each accept).
    pub connection: ConnectionOptions,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        ListenerOptions {
            backlog: 128,
            max_handshakes: 64,
            connection: ConnectionOptions::default(),
        }
    }
}
