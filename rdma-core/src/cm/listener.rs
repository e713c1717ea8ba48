//! Listening for connections by address: `Listener`, and a connect request not yet answered
//! (`Incoming`).
//!
//! [`Listener::accept`] carries several handshakes on at once, in the listener itself (the
//! core spawns no task): whichever task is in `accept` polls all of them, so a client that
//! never confirms holds one of [`ListenerOptions::max_handshakes`] places until its connect
//! timeout, not the whole listener.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};

use rdma_sys::*;

use super::channel::{CmEvent, EventChannel};
use super::connection::{self, ConnParam, Connection, Step};
use super::id::{CmId, MAX_ACCEPT_DATA};
use super::options::{ConnectionOptions, ListenerOptions};
use super::sockaddr;
use crate::error::{Error, Result};
use crate::runtime::{default_runtime, RuntimeHandle};
use crate::wake::{lock, WakerSet};

/// Listens for connections at an address.
///
/// ```no_run
/// # async fn demo() -> anyrdma_core::Result<()> {
/// use anyrdma_core::cm::Listener;
/// let listener = Listener::bind("0.0.0.0:7471".parse().unwrap())?;
/// loop {
///     let conn = listener.accept().await?;
///     println!("{} connected", conn.peer_addr());
///     // serve `conn` (in its own task, or beside the others with a FuturesUnordered)
/// }
/// # }
/// ```
///
/// Connect requests wait in a bounded backlog ([`ListenerOptions::backlog`]) until taken
/// with [`accept`](Listener::accept) or [`incoming`](Listener::incoming); requests beyond it
/// are turned away. `accept` answers up to [`ListenerOptions::max_handshakes`] requests at
/// once and returns the connections in the order their peers confirm, so a slow or silent
/// client does not hold up the others. Dropping the listener rejects the requests still
/// waiting and ends the handshakes `accept` has begun (those peers see the connection end);
/// connections it returned live on.
pub struct Listener {
    /// Declared before `id`: handshakes in progress end before the listening id does.
    handshakes: Mutex<Handshakes<Connection>>,
    /// The tasks waiting in `accept`, all woken by any progress of a handshake or of the
    /// channel: whichever of them polls next carries every handshake on.
    accepters: Arc<WakerSet>,
    accepters_waker: Waker,
    id: CmId,
    local: SocketAddr,
    options: ListenerOptions,
}

/// A handshake `accept` began: the peer's address, and the acceptance to carry on.
type Handshake<T> = Pin<Box<dyn Future<Output = (SocketAddr, Result<T>)> + Send>>;

/// The handshakes of [`Listener::accept`] (or of a listener built on it, which accepts
/// something else than a bare connection: a stream's messenger): answered requests waiting
/// for their peer's confirmation, and connections confirmed but not returned yet.
pub(crate) struct Handshakes<T> {
    running: Vec<Handshake<T>>,
    done: VecDeque<T>,
}

impl<T> Default for Handshakes<T> {
    fn default() -> Self {
        Handshakes {
            running: Vec::new(),
            done: VecDeque::new(),
        }
    }
}

impl<T> Handshakes<T> {
    /// Polls every running handshake once with `cx`; the confirmed ones join `done`, failed
    /// ones (the client gave up, say) are dropped.
    fn advance(&mut self, cx: &mut TaskContext<'_>) {
        let mut index = 0;
        while index < self.running.len() {
            let Poll::Ready((peer, result)) = self.running[index].as_mut().poll(cx) else {
                index += 1;
                continue;
            };
            drop(self.running.swap_remove(index));
            match result {
                Ok(connection) => self.done.push_back(connection),
                Err(err) => {
                    crate::trace::event!(warn, %peer, %err, "accepting a connection failed");
                    // Read only by the event above, which is nothing without `tracing`.
                    let _ = (peer, err);
                }
            }
        }
    }
}

impl Listener {
    /// Listens at `addr` (IPv4 or IPv6; an unspecified address listens on every RDMA
    /// device; port 0 picks a free port: see [`local_addr`](Listener::local_addr)), with
    /// the default options.
    ///
    /// # Errors
    /// As [`Listener::bind_with`].
    pub fn bind(addr: SocketAddr) -> Result<Listener> {
        Self::bind_with(addr, ListenerOptions::default())
    }

    /// Listens at `addr` with `options`.
    ///
    /// # Errors
    /// [`Error::Verbs`] naming `rdma_bind_addr` when the address is in use or belongs to no
    /// RDMA device here (`EADDRINUSE`, `EADDRNOTAVAIL`, `ENODEV`), or naming the call that
    /// failed; [`Error::TooLarge`] when the accept private data is above 196 bytes.
    pub fn bind_with(addr: SocketAddr, options: ListenerOptions) -> Result<Listener> {
        if options.connection.private_data.len() > MAX_ACCEPT_DATA {
            return Err(Error::TooLarge {
                what: "accept's private data",
                len: options.connection.private_data.len(),
                max: MAX_ACCEPT_DATA,
            });
        }
        options.connection.transport.check()?;
        let channel = EventChannel::new()?;
        let id = CmId::new(&channel)?;
        let mut storage = sockaddr::to_storage(addr);
        // SAFETY: the id is valid; the address is read during the call.
        if unsafe { rdma_bind_addr(id.raw(), std::ptr::addr_of_mut!(storage).cast()) } != 0 {
            return Err(Error::last_os("rdma_bind_addr").with_hint(
                "the address must be free and belong to an interface with an RDMA device \
                 (`rdma link` lists them), or be unspecified (0.0.0.0 or ::)",
            ));
        }
        let backlog = options.backlog.clamp(1, i32::MAX as usize);
        id.mailbox.backlog.store(backlog, Ordering::Relaxed);
        // SAFETY: the id is bound.
        if unsafe { rdma_listen(id.raw(), backlog as i32) } != 0 {
            return Err(Error::last_os("rdma_listen"));
        }
        let local = id.local_addr().unwrap_or(addr);
        let accepters = Arc::new(WakerSet::default());
        Ok(Listener {
            handshakes: Mutex::new(Handshakes::default()),
            accepters_waker: Waker::from(accepters.clone()),
            accepters,
            id,
            local,
            options,
        })
    }

    /// The address listened at, with the port chosen when 0 was asked.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The device port the listener is bound to, when its address belongs to one device
    /// (`None` for an unspecified address, which listens on every device): open it with
    /// [`Context::open_port`](crate::Context::open_port) to allocate memory and queues for
    /// the connections it accepts ([`ConnectionOptions::resources`](super::ConnectionOptions::resources)).
    ///
    /// # Errors
    /// As [`PortSelection::for_spec`](crate::PortSelection::for_spec), when the device
    /// cannot be listed.
    pub fn port(&self) -> Result<Option<crate::PortSelection>> {
        let Some((name, port)) = self.id.device() else {
            return Ok(None);
        };
        crate::PortSelection::for_spec(&crate::DeviceSpec {
            name,
            port: Some(port),
            gid_index: None,
        })
        .map(Some)
    }

    /// The next connect request, to accept or reject after looking at it.
    ///
    /// # Errors
    /// [`Error::NoRuntime`] or [`Error::Runtime`] when the event channel cannot be waited
    /// on.
    pub async fn incoming(&self) -> Result<Incoming> {
        let runtime = self.runtime()?;
        loop {
            let event = self.id.next_event(&runtime).await?;
            if let Some(incoming) = self.request(event, &runtime) {
                return Ok(incoming);
            }
        }
    }

    /// The connect request `event` carries, if it is one.
    fn request(&self, event: CmEvent, runtime: &RuntimeHandle) -> Option<Incoming> {
        if event.kind != rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_REQUEST {
            return None;
        }
        let id = event.child?;
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Some(Incoming {
            peer: id.peer_addr().unwrap_or(unspecified),
            id: Some(id),
            private_data: event.private_data,
            peer_responder_resources: event.responder_resources,
            peer_initiator_depth: event.initiator_depth,
            options: self.options.connection.clone(),
            runtime: runtime.clone(),
        })
    }

    /// The next connection, accepted with the listener's options.
    ///
    /// Requests are answered as they come, up to [`ListenerOptions::max_handshakes`] at
    /// once, and connections are returned as their peers confirm: a client that never
    /// confirms holds one place until the connect timeout, while the others go on. Beyond
    /// that many, requests wait in the backlog. A request whose acceptance fails (the
    /// client gave up, say) is skipped: only errors of the listener itself end this.
    /// Handshakes progress while some task is in `accept` (any number of tasks may be);
    /// dropping an `accept` leaves them to the next one.
    ///
    /// # Errors
    /// As [`Listener::incoming`].
    pub async fn accept(&self) -> Result<Connection> {
        let runtime = self.runtime()?;
        poll_fn(|cx| self.poll_accept(&runtime, cx)).await
    }

    fn poll_accept(
        &self,
        runtime: &RuntimeHandle,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<Connection>> {
        self.poll_accept_with(runtime, cx, &self.handshakes, |incoming| {
            Box::pin(incoming.accept())
        })
    }

    /// A poll of `accept` whose handshakes, kept in `handshakes`, make a `T` of each
    /// request with `begin` (which answers it).
    pub(crate) fn poll_accept_with<T: Send + 'static>(
        &self,
        runtime: &RuntimeHandle,
        cx: &mut TaskContext<'_>,
        handshakes: &Mutex<Handshakes<T>>,
        begin: impl Fn(Incoming) -> Pin<Box<dyn Future<Output = Result<T>> + Send>>,
    ) -> Poll<Result<T>> {
        // Before anything is polled, so that progress made meanwhile wakes this task.
        self.accepters.add(cx.waker());
        // Everything is polled with the listener's own waker, which wakes every task in
        // `accept`: a handshake's progress then reaches whoever is waiting, not only the
        // task that polled it last (which may have left with a connection).
        let mut shared_cx = TaskContext::from_waker(&self.accepters_waker);
        let mut handshakes = lock(handshakes);
        loop {
            handshakes.advance(&mut shared_cx);
            if let Some(accepted) = handshakes.done.pop_front() {
                return Poll::Ready(Ok(accepted));
            }
            if handshakes.running.len() >= self.options.max_handshakes.max(1) {
                // Full: new requests wait in the backlog until a handshake ends.
                return Poll::Pending;
            }
            let event = match self.id.poll_event(runtime, &mut shared_cx) {
                Poll::Ready(Ok(event)) => event,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            };
            if let Some(incoming) = self.request(event, runtime) {
                let peer = incoming.peer_addr();
                let handshake = begin(incoming);
                // Polled at the top of the loop: it answers the request at once.
                handshakes
                    .running
                    .push(Box::pin(async move { (peer, handshake.await) }));
            }
        }
    }

    pub(crate) fn runtime(&self) -> Result<RuntimeHandle> {
        match &self.options.connection.runtime {
            Some(runtime) => Ok(runtime.clone()),
            None => default_runtime(),
        }
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.local)
            .finish()
    }
}

/// A connect request taken from a [`Listener`], not answered yet: look at who sent it and
/// what it carries, then [`accept`](Incoming::accept) or [`reject`](Incoming::reject).
/// Dropping it rejects it.
pub struct Incoming {
    id: Option<CmId>,
    peer: SocketAddr,
    private_data: Vec<u8>,
    peer_responder_resources: u8,
    peer_initiator_depth: u8,
    options: ConnectionOptions,
    runtime: RuntimeHandle,
}

impl Incoming {
    /// The address the request came from.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// What the peer sent with its request ([`ConnectionOptions::private_data`] on its
    /// side). May be longer than what was sent: the transport pads it (with zeroes).
    pub fn private_data(&self) -> &[u8] {
        &self.private_data
    }

    /// Accepts with the listener's options.
    ///
    /// # Errors
    /// As [`Incoming::accept_with`].
    pub async fn accept(self) -> Result<Connection> {
        let options = self.options.clone();
        self.accept_with(options).await
    }

    /// Accepts with `options` (its `private_data` goes to the peer, at most 196 bytes):
    /// makes the queue pair, answers, and waits for the peer's confirmation.
    ///
    /// # Errors
    /// [`Error::TooLarge`] for private data above 196 bytes (the request is rejected);
    /// [`Error::ConnectTimeout`] or [`Error::Unreachable`] when the peer does not confirm;
    /// the errors of making a queue pair.
    pub async fn accept_with(self, options: ConnectionOptions) -> Result<Connection> {
        self.accept_and(options, |_| ())
            .await
            .map(|(connection, ())| connection)
    }

    /// Accepts with `options`, running `before` on the new queue pair before the peer is
    /// answered: post receives there, so that the peer's first message finds one (a peer
    /// may send as soon as its `connect` returns, before this side's `accept` does).
    /// Returns what `before` returned with the connection.
    ///
    /// ```no_run
    /// # async fn demo(incoming: anyrdma_core::cm::Incoming, pool: anyrdma_core::MemoryPool) -> anyrdma_core::Result<()> {
    /// use anyrdma_core::cm::ConnectionOptions;
    /// let (conn, receives) = incoming
    ///     .accept_and(ConnectionOptions::default(), |qp| {
    ///         (0..16).map(|_| qp.recv(pool.alloc(4096).expect("pool"))).collect::<Vec<_>>()
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Incoming::accept_with`].
    pub async fn accept_and<T>(
        mut self,
        options: ConnectionOptions,
        before: impl FnOnce(&crate::QueuePair) -> T,
    ) -> Result<(Connection, T)> {
        let Some(id) = self.id.take() else {
            return Err(Error::InvalidArgument(
                "the request was answered already".into(),
            ));
        };
        if options.private_data.len() > MAX_ACCEPT_DATA {
            id.reject(b"");
            return Err(Error::TooLarge {
                what: "accept's private data",
                len: options.private_data.len(),
                max: MAX_ACCEPT_DATA,
            });
        }
        options.transport.check()?;
        let addr = self.peer;
        let (qp, share) = connection::queue_pair_for(&id, &self.runtime, &options, addr)?;
        for state in [
            ibv_qp_state::IBV_QPS_INIT,
            ibv_qp_state::IBV_QPS_RTR,
            ibv_qp_state::IBV_QPS_RTS,
        ] {
            connection::cm_transition(&qp, &id, state, &options)?;
        }
        let prepared = before(&qp);
        let (responder, initiator) = connection::rd_atomic_limits(&qp, &options);
        // No more reads or atomics taken than the peer issues, nor issued than it takes.
        let mut param = ConnParam::new(
            &qp,
            &options,
            responder.min(self.peer_initiator_depth.max(1)),
            initiator.min(self.peer_responder_resources.max(1)),
        );
        // SAFETY: the id is a connect request's; `param` and its private data are read
        // during the call.
        if unsafe { rdma_accept(id.raw(), &mut param.raw) } != 0 {
            return Err(connection::unreachable(
                addr,
                "accepting",
                connection::last_errno(),
            ));
        }
        let step = Step::new(addr, &self.runtime);
        step.next(
            &id,
            rdma_cm_event_type::RDMA_CM_EVENT_ESTABLISHED,
            "waiting for the peer to confirm",
            options.connect_timeout,
        )
        .await?;
        qp.shared.mark_connected();
        let private_data = std::mem::take(&mut self.private_data);
        let connection = Connection::new(qp, id, self.runtime.clone(), private_data, share);
        Ok((connection, prepared))
    }

    /// Rejects the request; the peer's `connect` fails with [`Error::ConnectRejected`]
    /// carrying `reason` (at most 148 bytes are sent).
    pub fn reject(mut self, reason: &[u8]) {
        if let Some(id) = self.id.take() {
            id.reject(reason);
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            id.reject(b"anyrdma: the request was dropped unanswered");
        }
    }
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("peer", &self.peer)
            .field("private_data", &self.private_data.len())
            .finish()
    }
}
