//! Datagram peers found by IP address, through the connection manager (`RDMA_PS_UDP`).
//!
//! A server binds a [`UdListener`] to an IP address: it opens the device behind that address
//! and makes a datagram queue pair there. A client asks the connection manager to resolve
//! the server's address ([`connect`], or [`UdQueuePair::resolve`] with a queue pair it
//! has): the route picks the device and port, and the server's answer gives its queue pair
//! number and Q_Key, from which the client gets a [`UdPeer`]. This is librdmacm's service ID
//! resolution: no connection is made and nothing stays behind on either side; the server
//! learns each client from the datagrams it sends ([`UdQueuePair::reply_to`]).
//!
//! The connection manager announces every datagram queue pair with librdmacm's Q_Key,
//! [`DEFAULT_QKEY`]: the listener's queue pair uses it, and so must a client's.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::time::Duration;

use rdma_sys::*;

use super::ah::AddressHandle;
use super::qp::{UdOptions, UdPeer, UdQueuePair, DEFAULT_QKEY};
use crate::cm::channel::EventChannel;
use crate::cm::connection::{last_errno, millis, unreachable, Step};
use crate::cm::id::{CmId, MAX_ACCEPT_DATA, MAX_CONNECT_DATA};
use crate::cm::sockaddr;
use crate::context::Context;
use crate::cq::{CompletionQueue, CqOptions};
use crate::device::PortSelection;
use crate::error::{Error, Result};
use crate::qp::QpOptions;
use crate::runtime::{default_runtime, RuntimeHandle};

/// The status of a service ID resolution reply when nothing listens on the port
/// (`IB_SIDR_UNSUPPORTED`), as the unreachable event reports it.
const SIDR_NO_LISTENER: i32 = 1;

/// Resolution requests that may wait for [`UdListener::answer`].
const BACKLOG: usize = 64;

/// Options of a datagram session's queue pair and of its resolution.
#[derive(Debug, Clone)]
pub struct UdSessionOptions {
    /// Depths and sizes of the queue pair [`connect`] or [`UdListener::bind_with`] makes.
    pub queues: QpOptions,
    /// Entries of its completion queue.
    pub cq_entries: u32,
    /// Bytes sent with the resolution request ([`connect`]: up to 56) or its answer
    /// ([`UdListener`]: up to 196).
    pub private_data: Vec<u8>,
    /// How long each step of a resolution may take (address, route, the server's answer).
    /// Default 5 s.
    pub timeout: Duration,
    /// The runtime to wait with; `None`: the process default.
    pub runtime: Option<RuntimeHandle>,
}

impl Default for UdSessionOptions {
    fn default() -> Self {
        UdSessionOptions {
            queues: QpOptions::default(),
            cq_entries: 1024,
            private_data: Vec::new(),
            timeout: Duration::from_secs(5),
            runtime: None,
        }
    }
}

impl UdSessionOptions {
    fn runtime(&self) -> Result<RuntimeHandle> {
        match &self.runtime {
            Some(runtime) => Ok(runtime.clone()),
            None => default_runtime(),
        }
    }
}

/// A datagram queue pair on port `port` of `device`, on a context, protection domain and
/// completion queue of its own.
fn queue_pair_on(
    device: &str,
    port: u8,
    runtime: &RuntimeHandle,
    options: &UdSessionOptions,
) -> Result<UdQueuePair> {
    let selection = PortSelection::for_port(device, port)?;
    let ctx = Context::open_port(&selection)?.with_runtime(runtime.clone());
    let pd = ctx.alloc_pd()?;
    let cq = CompletionQueue::new(
        &ctx,
        CqOptions {
            entries: options.cq_entries,
            ..CqOptions::default()
        },
    )?;
    UdQueuePair::new(
        &pd,
        &cq,
        &cq,
        UdOptions {
            qkey: DEFAULT_QKEY,
            queues: options.queues,
        },
    )
}

/// Resolves the datagram server at `addr` and makes a queue pair on the device the route
/// goes through: the queue pair and the server as a [`UdPeer`].
///
/// ```no_run
/// # async fn demo() -> anyrdma_core::Result<()> {
/// use anyrdma_core::ud::{self, UdSessionOptions};
/// use anyrdma_core::Access;
/// let addr = "169.254.77.1:7474".parse().unwrap();
/// let (qp, server) = ud::connect(addr, UdSessionOptions::default()).await?;
/// let reply = qp.recv(qp.pd().alloc(qp.max_datagram(), Access::LOCAL)?);
/// let (sent, _) = qp.send_to(qp.pd().register(b"ping".to_vec(), Access::LOCAL)?, &server).await;
/// sent?;
/// let (got, buf) = reply.await;
/// println!("{:?}", &buf[..got?.len]);
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`Error::ConnectRefused`] when nothing listens on that port there;
/// [`Error::Unreachable`] when the address, the route or the server cannot be reached;
/// [`Error::ConnectTimeout`] when a step takes longer than [`UdSessionOptions::timeout`];
/// [`Error::TooLarge`] for private data above 56 bytes; the errors of [`UdQueuePair::new`].
pub async fn connect(addr: SocketAddr, options: UdSessionOptions) -> Result<(UdQueuePair, UdPeer)> {
    let runtime = options.runtime()?;
    resolve(addr, &options, &runtime, |device, port| {
        queue_pair_on(device, port, &runtime, &options)
    })
    .await
}

impl UdQueuePair {
    /// Resolves the datagram server at `addr` through the connection manager, for this
    /// queue pair: the server as a [`UdPeer`]. The route to `addr` must go through this
    /// queue pair's device, and the queue pair must use [`DEFAULT_QKEY`] for the server's
    /// answers to reach it.
    ///
    /// # Errors
    /// As [`connect`]; [`Error::InvalidArgument`] when the route goes through another
    /// device.
    pub async fn resolve(&self, addr: SocketAddr, options: UdSessionOptions) -> Result<UdPeer> {
        let runtime = match options.runtime.clone() {
            Some(runtime) => runtime,
            None => match self.pd().context().runtime() {
                Some(runtime) => runtime.clone(),
                None => default_runtime()?,
            },
        };
        let mine = self.pd().context().device_name().to_owned();
        let (_, peer) = resolve(addr, &options, &runtime, |device, _| {
            if device != mine {
                return Err(Error::InvalidArgument(format!(
                    "the route to {addr} goes through device {device}, but this queue pair is \
                     on {mine}: resolve with a queue pair of {device}, or use ud::connect"
                )));
            }
            Ok(self.clone())
        })
        .await?;
        Ok(peer)
    }
}

/// The resolution: address, route, then the service ID resolution request that the server
/// answers with its queue pair number and Q_Key. `qp_for` gives the queue pair once the
/// route's device and port are known.
async fn resolve(
    addr: SocketAddr,
    options: &UdSessionOptions,
    runtime: &RuntimeHandle,
    qp_for: impl FnOnce(&str, u8) -> Result<UdQueuePair>,
) -> Result<(UdQueuePair, UdPeer)> {
    if options.private_data.len() > MAX_CONNECT_DATA {
        return Err(Error::TooLarge {
            what: "datagram resolution request's private data",
            len: options.private_data.len(),
            max: MAX_CONNECT_DATA,
        });
    }
    let channel = EventChannel::new()?;
    let id = CmId::in_port_space(&channel, rdma_port_space::RDMA_PS_UDP)?;
    let mut dst = sockaddr::to_storage(addr);
    let ms = millis(options.timeout);
    // SAFETY: the id is valid; `dst` holds `addr` and is read during the call.
    let rc = unsafe {
        rdma_resolve_addr(
            id.raw(),
            std::ptr::null_mut(),
            std::ptr::addr_of_mut!(dst).cast(),
            ms,
        )
    };
    if rc != 0 {
        return Err(unreachable(addr, "resolving the address", last_errno()));
    }
    let step = Step::new(addr, runtime);
    step.next(
        &id,
        rdma_cm_event_type::RDMA_CM_EVENT_ADDR_RESOLVED,
        "resolving the address",
        options.timeout,
    )
    .await?;
    // SAFETY: the id's address is resolved.
    if unsafe { rdma_resolve_route(id.raw(), ms) } != 0 {
        return Err(unreachable(addr, "resolving the route", last_errno()));
    }
    step.next(
        &id,
        rdma_cm_event_type::RDMA_CM_EVENT_ROUTE_RESOLVED,
        "resolving the route",
        options.timeout,
    )
    .await?;
    let Some((device, port)) = id.device() else {
        return Err(unreachable(
            addr,
            "choosing a device",
            std::io::Error::other("the route has no RDMA device"),
        ));
    };
    let qp = qp_for(&device, port)?;
    // In a block of its own: the raw parameters are not kept across an await (the future
    // stays Send).
    let asked = {
        // SAFETY: rdma_conn_param is plain C data.
        let mut param: rdma_conn_param = unsafe { std::mem::zeroed() };
        param.private_data = options.private_data.as_ptr().cast();
        // Checked above: at most 56.
        param.private_data_len = options.private_data.len() as u8;
        param.qp_num = qp.qpn();
        // SAFETY: the route is resolved; `param` and the private data it points at are
        // read during the call.
        unsafe { rdma_connect(id.raw(), &mut param) }
    };
    if asked != 0 {
        return Err(unreachable(addr, "asking the server", last_errno()));
    }
    let stage = "waiting for the server's answer";
    let event = step.event(&id, stage, options.timeout).await?;
    if event.kind == rdma_cm_event_type::RDMA_CM_EVENT_UNREACHABLE
        && event.status == SIDR_NO_LISTENER
    {
        return Err(Error::ConnectRefused { addr });
    }
    step.expect(&event, rdma_cm_event_type::RDMA_CM_EVENT_ESTABLISHED, stage)?;
    let Some(ud) = event.ud else {
        return Err(unreachable(
            addr,
            "waiting for the server's answer",
            std::io::Error::other("the answer carried no queue pair"),
        ));
    };
    let ah = AddressHandle::from_attr(qp.pd(), &ud.ah_attr)?;
    let peer = UdPeer::new(ah, ud.qp_num, ud.qkey)?;
    // Nothing of the resolution stays: the id goes with this function.
    Ok((qp, peer))
}

/// A datagram server's address: answers the resolution requests of clients
/// ([`connect`], [`UdQueuePair::resolve`]) with its queue pair.
///
/// ```no_run
/// # async fn demo() -> anyrdma_core::Result<()> {
/// use anyrdma_core::ud::UdListener;
/// use anyrdma_core::Access;
/// let listener = UdListener::bind("169.254.77.1:7474".parse().unwrap())?;
/// let qp = listener.queue_pair().clone();
/// // Answer resolutions in a task of their own (here: one), and serve datagrams.
/// let client = listener.answer().await?;
/// let (got, buf) = qp.recv(qp.pd().alloc(qp.max_datagram(), Access::LOCAL)?).await;
/// let got = got?;
/// let back = qp.reply_to(&got)?;
/// let (sent, _) = qp.send_to(buf, &back).await;
/// sent?;
/// # Ok(()) }
/// ```
pub struct UdListener {
    id: CmId,
    qp: UdQueuePair,
    local: SocketAddr,
    runtime: RuntimeHandle,
    private_data: Vec<u8>,
}

impl UdListener {
    /// Listens at `addr` (an address of one RDMA device; port 0 picks a free port) and
    /// makes a datagram queue pair on that device, with the default options.
    ///
    /// # Errors
    /// As [`UdListener::bind_with`].
    pub fn bind(addr: SocketAddr) -> Result<UdListener> {
        Self::bind_with(addr, UdSessionOptions::default())
    }

    /// Listens at `addr` with `options`.
    ///
    /// # Errors
    /// [`Error::Verbs`] naming `rdma_bind_addr` when the address is in use or belongs to no
    /// RDMA device; [`Error::InvalidArgument`] for an unspecified address (the queue pair
    /// needs one device); [`Error::TooLarge`] for private data above 196 bytes; the errors
    /// of [`UdQueuePair::new`].
    pub fn bind_with(addr: SocketAddr, options: UdSessionOptions) -> Result<UdListener> {
        if options.private_data.len() > MAX_ACCEPT_DATA {
            return Err(Error::TooLarge {
                what: "datagram resolution answer's private data",
                len: options.private_data.len(),
                max: MAX_ACCEPT_DATA,
            });
        }
        let runtime = options.runtime()?;
        let channel = EventChannel::new()?;
        let id = CmId::in_port_space(&channel, rdma_port_space::RDMA_PS_UDP)?;
        let mut storage = sockaddr::to_storage(addr);
        // SAFETY: the id is valid; the address is read during the call.
        if unsafe { rdma_bind_addr(id.raw(), std::ptr::addr_of_mut!(storage).cast()) } != 0 {
            return Err(Error::last_os("rdma_bind_addr").with_hint(
                "the address must be free and belong to an interface with an RDMA device \
                 (`rdma link` lists them)",
            ));
        }
        let Some((device, port)) = id.device() else {
            return Err(Error::InvalidArgument(format!(
                "{addr} names no single RDMA device: a datagram listener's queue pair lives \
                 on one, so bind it to that device's address"
            )));
        };
        // Requests beyond this many waiting for `answer` are rejected at once by whoever
        // reads the channel (as for a listener of connections).
        id.mailbox
            .backlog
            .store(BACKLOG, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the id is bound.
        if unsafe { rdma_listen(id.raw(), BACKLOG as i32) } != 0 {
            return Err(Error::last_os("rdma_listen"));
        }
        let qp = queue_pair_on(&device, port, &runtime, &options)?;
        let local = id.local_addr().unwrap_or(addr);
        Ok(UdListener {
            id,
            qp,
            local,
            runtime,
            private_data: options.private_data,
        })
    }

    /// The queue pair clients reach.
    pub fn queue_pair(&self) -> &UdQueuePair {
        &self.qp
    }

    /// The address listened at, with the port chosen when 0 was asked.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Answers the next client's resolution request with the queue pair; returns the
    /// client's address and the private data it sent (the protocol carries it in a fixed
    /// area: it comes padded with zeros). Call it in a loop (in a task of its own) to answer
    /// every client.
    ///
    /// # Errors
    /// [`Error::NoRuntime`] or [`Error::Runtime`] when the event channel cannot be waited
    /// on; [`Error::Verbs`] naming `rdma_accept` when the answer cannot be sent (that client
    /// times out; the listener goes on).
    pub async fn answer(&self) -> Result<(SocketAddr, Vec<u8>)> {
        loop {
            let event = poll_fn(|cx| self.id.poll_event(&self.runtime, cx)).await?;
            if event.kind != rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_REQUEST {
                continue;
            }
            let Some(child) = event.child else {
                continue;
            };
            let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
            let client = child.peer_addr().unwrap_or(unspecified);
            // SAFETY: rdma_conn_param is plain C data.
            let mut param: rdma_conn_param = unsafe { std::mem::zeroed() };
            param.private_data = self.private_data.as_ptr().cast();
            // Checked in bind_with: at most 196.
            param.private_data_len = self.private_data.len() as u8;
            param.qp_num = self.qp.qpn();
            // SAFETY: the id is a resolution request's; `param` and the private data are
            // read during the call. The answer is sent before it returns, so the id can go
            // right after (a datagram resolution leaves no connection).
            if unsafe { rdma_accept(child.raw(), &mut param) } != 0 {
                return Err(Error::last_os("rdma_accept"));
            }
            return Ok((client, event.private_data));
        }
    }
}

impl std::fmt::Debug for UdListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdListener")
            .field("local", &self.local)
            .field("qpn", &self.qp.qpn())
            .finish()
    }
}
