//! A connected queue pair made by address: `Connection::connect`, and the steps both sides
//! share (queue pair states from the connection manager, connection parameters, events).

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use rdma_sys::*;

use super::channel::{CmEvent, EventChannel};
use super::id::{CmId, MAX_CONNECT_DATA};
use super::options::ConnectionOptions;
use super::resources::{self, DeviceShare};
use super::sockaddr;
use crate::cq::CompletionQueue;
use crate::error::{Error, QpShutdownReason, Result};
use crate::events::EventSource;
use crate::pd::ProtectionDomain;
use crate::qp::QueuePair;
use crate::runtime::{default_runtime, RuntimeHandle};
use crate::wake::lock;

/// How long `close` waits for the peer to confirm the disconnect.
const CLOSE_PATIENCE: Duration = Duration::from_secs(2);

/// The rejection code of the InfiniBand CM for "no one listens on this service" (a port
/// with no listener), as rdma_cm reports it in `RDMA_CM_EVENT_REJECTED`.
const REJECT_NO_LISTENER: i32 = 8;

/// A reliable connection to a peer, made by address through the RDMA connection manager.
///
/// It owns its [`QueuePair`] and offers every operation of one (it dereferences to it; hand
/// the queue pair itself out with [`queue_pair`](Connection::queue_pair)). The device, port,
/// GID and path MTU come from the connection manager's route to the address. Its protection
/// domain and completion queue are shared with the other connections of the device (or its
/// own, see [`ConnectionOptions::resources`]); allocate memory for it with
/// [`pd`](Connection::pd).
///
/// # When the connection ends
/// When the peer disconnects (or its process dies: its kernel disconnects for it) or the
/// device goes away, the queue pair fails: every pending operation ends with
/// [`Error::Flushed`] whose cause is [`Error::Disconnected`], and new ones fail at once
/// ([`Error::is_disconnect`] tells both). The connection manager's event is read by whoever
/// waits on the connection's device, so nothing else needs to run. [`close`](Connection::close)
/// ends it gracefully; dropping it ends it too (its pending operations are flushed, the
/// peer is told, and everything is released).
///
/// ```no_run
/// # async fn demo() -> anyrdma_core::Result<()> {
/// use anyrdma_core::cm::{Connection, ConnectionOptions};
/// let conn = Connection::connect("169.254.77.1:7471".parse().unwrap(), ConnectionOptions::default()).await?;
/// let mut message = conn.pd().alloc(16, anyrdma_core::Access::LOCAL)?;
/// message.copy_from_slice(b"sixteen bytes!!!");
/// let (sent, _message) = conn.send(message).await;
/// sent?;
/// conn.close().await?;
/// # Ok(()) }
/// ```
pub struct Connection {
    qp: QueuePair,
    /// Declared after `qp`: the queue pair is failed (in Drop) before the id is destroyed.
    pub(crate) id: CmId,
    peer: SocketAddr,
    local: SocketAddr,
    private_data: Vec<u8>,
    runtime: RuntimeHandle,
    _share: Option<Arc<DeviceShare>>,
}

impl Connection {
    /// Connects to `addr` (IPv4 or IPv6; a listener, or a C program using librdmacm, must be
    /// there): resolves the address and the route, makes a queue pair on the route's device,
    /// and sends the connect request with [`ConnectionOptions::private_data`].
    ///
    /// # Errors
    /// [`Error::ConnectRefused`] when nothing listens there; [`Error::ConnectRejected`] when
    /// the peer rejects (with its reason); [`Error::Unreachable`] when the address has no
    /// route or no RDMA device on it, or the peer does not answer; [`Error::ConnectTimeout`]
    /// when a step takes longer than the options allow; [`Error::TooLarge`] for private
    /// data above 56 bytes; [`Error::OptionOutOfRange`] for transport options out of range.
    pub async fn connect(addr: SocketAddr, options: ConnectionOptions) -> Result<Connection> {
        Self::connect_and(addr, options, |_| ())
            .await
            .map(|(connection, ())| connection)
    }

    /// Connects as [`connect`](Connection::connect) does, running `before` on the new queue
    /// pair before the connect request is sent: post receives there, so that the peer's
    /// first message finds one (the peer may send as soon as its `accept` returns). Returns
    /// what `before` returned with the connection.
    ///
    /// # Errors
    /// As [`Connection::connect`].
    pub async fn connect_and<T>(
        addr: SocketAddr,
        options: ConnectionOptions,
        before: impl FnOnce(&QueuePair) -> T,
    ) -> Result<(Connection, T)> {
        if options.private_data.len() > MAX_CONNECT_DATA {
            return Err(Error::TooLarge {
                what: "connect request's private data",
                len: options.private_data.len(),
                max: MAX_CONNECT_DATA,
            });
        }
        options.transport.check()?;
        let runtime = match &options.runtime {
            Some(runtime) => runtime.clone(),
            None => default_runtime()?,
        };
        let channel = EventChannel::new()?;
        let id = CmId::new(&channel)?;

        let mut dst = sockaddr::to_storage(addr);
        let resolve_ms = millis(options.resolve_timeout);
        // SAFETY: the id is valid; `dst` is a sockaddr_storage holding `addr`, read during
        // the call.
        let rc = unsafe {
            rdma_resolve_addr(
                id.raw(),
                std::ptr::null_mut(),
                std::ptr::addr_of_mut!(dst).cast(),
                resolve_ms,
            )
        };
        if rc != 0 {
            return Err(unreachable(addr, "resolving the address", last_errno()));
        }
        let step = Step::new(addr, &runtime);
        step.next(
            &id,
            rdma_cm_event_type::RDMA_CM_EVENT_ADDR_RESOLVED,
            "resolving the address",
            options.resolve_timeout,
        )
        .await?;

        // SAFETY: the id's address is resolved.
        if unsafe { rdma_resolve_route(id.raw(), resolve_ms) } != 0 {
            return Err(unreachable(addr, "resolving the route", last_errno()));
        }
        step.next(
            &id,
            rdma_cm_event_type::RDMA_CM_EVENT_ROUTE_RESOLVED,
            "resolving the route",
            options.resolve_timeout,
        )
        .await?;

        let (qp, share) = queue_pair_for(&id, &runtime, &options, addr)?;
        cm_transition(&qp, &id, ibv_qp_state::IBV_QPS_INIT, &options)?;
        let prepared = before(&qp);
        let (responder_resources, initiator_depth) = rd_atomic_limits(&qp, &options);
        let mut param = ConnParam::new(&qp, &options, responder_resources, initiator_depth);
        param.raw.retry_count = options.transport.retry_cnt;
        // SAFETY: the route is resolved; `param` and its private data are read during the
        // call.
        if unsafe { rdma_connect(id.raw(), &mut param.raw) } != 0 {
            return Err(unreachable(addr, "connecting", last_errno()));
        }
        let event = step
            .next(
                &id,
                rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_RESPONSE,
                "waiting for the peer to accept",
                options.connect_timeout,
            )
            .await?;
        cm_transition(&qp, &id, ibv_qp_state::IBV_QPS_RTR, &options)?;
        cm_transition(&qp, &id, ibv_qp_state::IBV_QPS_RTS, &options)?;
        // SAFETY: the connect response was received and the queue pair is in RTS.
        if unsafe { rdma_establish(id.raw()) } != 0 {
            return Err(unreachable(addr, "establishing", last_errno()));
        }
        qp.shared.mark_connected();
        let connection = Connection::new(qp, id, runtime, event.private_data, share);
        Ok((connection, prepared))
    }

    /// A connection whose queue pair is in RTS, for `id`.
    pub(crate) fn new(
        qp: QueuePair,
        id: CmId,
        runtime: RuntimeHandle,
        private_data: Vec<u8>,
        share: Option<Arc<DeviceShare>>,
    ) -> Connection {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Connection {
            peer: id.peer_addr().unwrap_or(unspecified),
            local: id.local_addr().unwrap_or(unspecified),
            qp,
            id,
            private_data,
            runtime,
            _share: share,
        }
    }

    /// The connection's queue pair (a clone of it: it may outlive the connection, but once
    /// the connection is closed or dropped, its operations fail).
    pub fn queue_pair(&self) -> &QueuePair {
        &self.qp
    }

    /// The completion queue of the connection's sends, writes, reads and atomics: shared
    /// with other connections of its device and runtime, unless
    /// [`ConnectionOptions::resources`] gave its own. Look at it to see how it waits
    /// ([`CompletionQueue::wait_error`]) or what it holds ([`CompletionQueue::in_flight`]).
    pub fn send_cq(&self) -> &CompletionQueue {
        &self.qp.shared.send_cq
    }

    /// The completion queue of the connection's receives (see [`send_cq`](Connection::send_cq)).
    pub fn recv_cq(&self) -> &CompletionQueue {
        &self.qp.shared.recv_cq
    }

    /// The protection domain: memory for the connection's operations is allocated here.
    pub fn pd(&self) -> &ProtectionDomain {
        self.qp.pd()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// This side's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// What the peer sent when it accepted (on the connecting side) or with its connect
    /// request (on the accepting side). May be longer than what was sent: the transport
    /// pads it (with zeroes).
    pub fn private_data(&self) -> &[u8] {
        &self.private_data
    }

    /// Whether the connection has ended (the peer disconnected, or the device went away),
    /// as far as this side has read its events.
    pub fn is_disconnected(&self) -> bool {
        self.id
            .mailbox
            .ended
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Closes the connection gracefully: pending operations are flushed (they end with
    /// [`Error::Shutdown`]), the peer is told (its operations end with
    /// [`Error::Disconnected`]), and this waits up to 2 s for the peer's confirmation.
    /// Everything is released when the connection is dropped at the end.
    ///
    /// # Errors
    /// None in practice: a peer that never confirms only makes this wait its 2 s.
    pub async fn close(self) -> Result<()> {
        let _ = self.qp.shared.shut_down(QpShutdownReason::Closed);
        self.id.disconnect();
        if self.is_disconnected() {
            return Ok(());
        }
        let closing = async {
            loop {
                let event = self
                    .id
                    .next_event_within(&self.runtime, CLOSE_PATIENCE, || Error::ConnectTimeout {
                        addr: self.peer,
                        stage: "closing",
                        after: CLOSE_PATIENCE,
                    })
                    .await?;
                if event.kind == rdma_cm_event_type::RDMA_CM_EVENT_DISCONNECTED {
                    return Ok::<(), Error>(());
                }
            }
        };
        // Not confirmed in time: the id's destruction below ends it anyway.
        let _ = closing.await;
        Ok(())
    }
}

impl Connection {
    /// Ends the connection at once, without waiting for the peer's confirmation: the queue
    /// pair is shut down and the peer is told (for a peer that broke a protocol).
    pub(crate) fn cut_off(&self) {
        let _ = self.qp.shared.shut_down(QpShutdownReason::Closed);
        self.id.disconnect();
    }
}

impl Deref for Connection {
    type Target = QueuePair;

    fn deref(&self) -> &QueuePair {
        &self.qp
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Pending operations (which hold the queue pair) are flushed; the peer is told when
        // the id is destroyed, after this.
        if self.qp.failure().is_none() {
            let _ = self.qp.shared.shut_down(QpShutdownReason::Closed);
        }
        self.id.disconnect();
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("qpn", &self.qp.qpn())
            .field("local", &self.local)
            .field("peer", &self.peer)
            .finish()
    }
}

/// One connection step's waits and how its outcome reads.
pub(crate) struct Step<'a> {
    addr: SocketAddr,
    runtime: &'a RuntimeHandle,
}

impl<'a> Step<'a> {
    pub(crate) fn new(addr: SocketAddr, runtime: &'a RuntimeHandle) -> Self {
        Step { addr, runtime }
    }

    /// The id's next event, within `timeout`.
    pub(crate) async fn event(
        &self,
        id: &CmId,
        stage: &'static str,
        timeout: Duration,
    ) -> Result<CmEvent> {
        let addr = self.addr;
        // The connection manager's own timeouts (address and route resolution) end a step
        // with an event; this one ends a step whose event never comes.
        let patience = timeout + Duration::from_millis(500);
        id.next_event_within(self.runtime, patience, || Error::ConnectTimeout {
            addr,
            stage,
            after: timeout,
        })
        .await
    }

    /// The id's next event within `timeout`, if it is `expected`; else the error it means.
    pub(crate) async fn next(
        &self,
        id: &CmId,
        expected: u32,
        stage: &'static str,
        timeout: Duration,
    ) -> Result<CmEvent> {
        let event = self.event(id, stage, timeout).await?;
        self.expect(&event, expected, stage)?;
        Ok(event)
    }

    /// `event` if it is `expected`; else the error it means.
    pub(crate) fn expect(&self, event: &CmEvent, expected: u32, stage: &'static str) -> Result<()> {
        use rdma_cm_event_type as E;
        let addr = self.addr;
        match event.kind {
            kind if kind == expected => Ok(()),
            E::RDMA_CM_EVENT_REJECTED if event.status == REJECT_NO_LISTENER => {
                Err(Error::ConnectRefused { addr })
            }
            E::RDMA_CM_EVENT_REJECTED => Err(Error::ConnectRejected {
                addr,
                reason: event.private_data.clone(),
                code: event.status,
            }),
            E::RDMA_CM_EVENT_ADDR_ERROR
            | E::RDMA_CM_EVENT_ROUTE_ERROR
            | E::RDMA_CM_EVENT_UNREACHABLE
            | E::RDMA_CM_EVENT_CONNECT_ERROR => {
                Err(unreachable(addr, stage, status_error(event.status)))
            }
            E::RDMA_CM_EVENT_DISCONNECTED | E::RDMA_CM_EVENT_DEVICE_REMOVAL => {
                Err(Error::Disconnected {
                    qpn: 0,
                    why: "the connection ended while it was being made",
                })
            }
            _ => Err(unreachable(
                addr,
                stage,
                std::io::Error::other(format!("unexpected {}", event.name())),
            )),
        }
    }
}

/// The queue pair of a connection through `id`'s device, on the options' or the shared
/// resources, watched for the connection's end.
pub(crate) fn queue_pair_for(
    id: &CmId,
    runtime: &RuntimeHandle,
    options: &ConnectionOptions,
    addr: SocketAddr,
) -> Result<(QueuePair, Option<Arc<DeviceShare>>)> {
    let Some((device, port)) = id.device() else {
        return Err(unreachable(
            addr,
            "choosing a device",
            std::io::Error::other("the route has no RDMA device"),
        ));
    };
    let (qp, share) = resources::queue_pair(&device, port, runtime, options)?;
    // The connection's end fails the queue pair, whoever reads the event: also the
    // completion-queue pollers of this device.
    *lock(&id.mailbox.qp) = Some(Arc::downgrade(&qp.shared));
    let source: Arc<dyn EventSource> = id.channel.clone();
    qp.pd()
        .context()
        .inner
        .events
        .add_source(Arc::downgrade(&source));
    Ok((qp, share))
}

/// Moves `qp` to `state` with the attributes the connection manager computed for `id` (path,
/// MTU, peer's queue pair number and PSN), and this side's transport options.
pub(crate) fn cm_transition(
    qp: &QueuePair,
    id: &CmId,
    state: ibv_qp_state::Type,
    options: &ConnectionOptions,
) -> Result<()> {
    // SAFETY: ibv_qp_attr is plain C data.
    let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
    attr.qp_state = state;
    let mut mask = 0i32;
    // SAFETY: the id is valid; attr and mask are out parameters.
    if unsafe { rdma_init_qp_attr(id.raw(), &mut attr, &mut mask) } != 0 {
        return Err(Error::last_os("rdma_init_qp_attr"));
    }
    let (responder, initiator) = rd_atomic_limits(qp, options);
    use ibv_qp_attr_mask as M;
    let name = match state {
        ibv_qp_state::IBV_QPS_INIT => {
            // Every remote right is enabled on the queue pair; memory registrations decide.
            attr.qp_access_flags |= (ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
                | ibv_access_flags::IBV_ACCESS_REMOTE_READ
                | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
                | ibv_access_flags::IBV_ACCESS_REMOTE_ATOMIC)
                .0;
            "INIT"
        }
        ibv_qp_state::IBV_QPS_RTR => {
            attr.min_rnr_timer = options.transport.min_rnr_timer;
            mask |= M::IBV_QP_MIN_RNR_TIMER.0 as i32;
            attr.max_dest_rd_atomic = attr.max_dest_rd_atomic.clamp(1, responder.max(1));
            "RTR"
        }
        _ => {
            attr.timeout = options.transport.timeout;
            attr.retry_cnt = options.transport.retry_cnt;
            attr.rnr_retry = options.transport.rnr_retry;
            mask |= (M::IBV_QP_TIMEOUT | M::IBV_QP_RETRY_CNT | M::IBV_QP_RNR_RETRY).0 as i32;
            attr.max_rd_atomic = attr.max_rd_atomic.clamp(1, initiator.max(1));
            "RTS"
        }
    };
    qp.shared
        .modify(&mut attr, ibv_qp_attr_mask(mask as u32), name)
}

/// The connection parameters of a connect or an accept: this side's queue pair, private
/// data and limits.
pub(crate) struct ConnParam<'a> {
    pub(crate) raw: rdma_conn_param,
    _private_data: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> ConnParam<'a> {
    pub(crate) fn new(
        qp: &QueuePair,
        options: &'a ConnectionOptions,
        responder_resources: u8,
        initiator_depth: u8,
    ) -> Self {
        // SAFETY: rdma_conn_param is plain C data.
        let mut raw: rdma_conn_param = unsafe { std::mem::zeroed() };
        // The length was checked against the protocol's limit (at most 196 < 256).
        raw.private_data = options.private_data.as_ptr().cast();
        raw.private_data_len = options.private_data.len().min(255) as u8;
        raw.responder_resources = responder_resources;
        raw.initiator_depth = initiator_depth;
        raw.flow_control = 1;
        raw.rnr_retry_count = options.transport.rnr_retry;
        raw.qp_num = qp.qpn();
        ConnParam {
            raw,
            _private_data: std::marker::PhantomData,
        }
    }
}

// SAFETY: the raw parameters point only at `options.private_data`, which the borrow keeps
// alive and unchanged; they are read only by the librdmacm call they are passed to.
unsafe impl Send for ConnParam<'_> {}

/// The reads and atomics this side takes (responder resources) and issues (initiator
/// depth) at once: the option, within the device's limits.
pub(crate) fn rd_atomic_limits(qp: &QueuePair, options: &ConnectionOptions) -> (u8, u8) {
    let limits = qp.pd().context().limits();
    let wanted = u32::from(options.transport.max_rd_atomic);
    let responder = wanted.clamp(1, limits.max_qp_rd_atom.max(1)).min(255) as u8;
    let initiator = wanted.clamp(1, limits.max_qp_init_rd_atom.max(1)).min(255) as u8;
    (responder, initiator)
}

pub(crate) fn unreachable(addr: SocketAddr, stage: &'static str, source: std::io::Error) -> Error {
    Error::Unreachable {
        addr,
        stage,
        source,
    }
}

/// The error an event's status means (a negative errno).
fn status_error(status: i32) -> std::io::Error {
    if status < 0 {
        std::io::Error::from_raw_os_error(-status)
    } else {
        std::io::Error::other(format!("status {status}"))
    }
}

pub(crate) fn last_errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// `timeout` in whole milliseconds for librdmacm (at least 1).
pub(crate) fn millis(timeout: Duration) -> i32 {
    timeout.as_millis().clamp(1, i32::MAX as u128) as i32
}
