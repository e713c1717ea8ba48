//! The messenger: receives kept posted, messages taken in order, and credits.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use super::engine::{Engine, State};
use super::exposed::Exposed;
use super::handshake::{self, PeerSizes};
use super::header::{Kind, Rendezvous, HEADER_LEN, REQUEST_LEN};
use super::protocol::{Gate, Limits, Protocol, Route, CONTROL_RECEIVES, READS_IN_FLIGHT};
use super::waiting::{self, Place};
use super::{Message, MessengerOptions};
use crate::cm::{Connection, ConnectionOptions, Incoming};
use crate::error::{Error, QpShutdownReason, Result};
use crate::mr::{Access, LocalBuf};
use crate::op::{Op, Recv};
use crate::pool::{MemoryPool, PoolOptions};
use crate::qp::QueuePair;
use crate::remote::RemoteRegion;
use crate::stats::MessengerStats;
use crate::wake::lock;

/// A message in registered memory, ready to post (what [`Messenger::send`] makes before it
/// waits for a credit).
pub(crate) struct Outgoing {
    kind: Kind,
    imm: Option<u32>,
    /// The header's room and the payload (or, for a rendezvous request, where the message is).
    message: LocalBuf,
    /// Bytes of the payload that are sent (at most what `message` has room for).
    len: usize,
    /// For a rendezvous request: the memory the peer reads, and where it is.
    exposed: Option<(Exposed, RemoteRegion)>,
    /// When it first found no credit, if it did (for the messenger's statistics).
    waiting_since: Option<Instant>,
}

impl Outgoing {
    /// A rendezvous request in `message` for `exposed`, which the peer reads at `remote`.
    pub(crate) fn request(
        imm: Option<u32>,
        message: LocalBuf,
        exposed: Exposed,
        remote: RemoteRegion,
    ) -> Outgoing {
        Outgoing {
            kind: Kind::Request,
            imm,
            message,
            len: REQUEST_LEN,
            exposed: Some((exposed, remote)),
            waiting_since: None,
        }
    }

    /// What a rendezvous request would have exposed (it was never posted).
    pub(crate) fn into_exposed(self) -> Option<Exposed> {
        self.exposed.map(|(exposed, _)| exposed)
    }

    /// The payload, to fill in place (an eager message's).
    pub(crate) fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.message[HEADER_LEN..HEADER_LEN + self.len]
    }

    /// Room for the payload of an eager message.
    pub(crate) fn capacity(&self) -> usize {
        self.message.len() - HEADER_LEN
    }

    /// Sends only the first `len` bytes of the payload (at most its capacity).
    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len.min(self.capacity());
    }

    /// Bytes of the payload that will be sent.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// Messages over a connected queue pair: `send` waits for the peer to have a receive posted
/// for it (credits), so the peer never answers "receiver not ready", and `recv` takes
/// messages in arrival order. See the [module documentation](super).
///
/// Cheap to clone: clones share the stream (several tasks may send and receive at once).
#[derive(Clone)]
pub struct Messenger {
    inner: Arc<Engine>,
}

/// The most memory a messenger keeps registered for reading large messages into; a large
/// message that finds none free gets a registration of its own.
const READ_POOL_BYTES: usize = 128 << 20;

/// A messenger's receives, posted before its peer is known.
struct Posted {
    pool: MemoryPool,
    /// Where large messages are read into.
    read_pool: MemoryPool,
    posted: VecDeque<Op<LocalBuf, Recv>>,
    receive_len: usize,
}

impl Posted {
    fn new(qp: &QueuePair, options: MessengerOptions) -> Result<Posted> {
        let depth = options.depth;
        let caps = qp.caps();
        // Control messages (credits, dones) land in receives of their own, beyond the depth.
        let max_depth = (caps.max_recv_wr as usize).saturating_sub(CONTROL_RECEIVES);
        if !(2..=max_depth).contains(&depth) {
            return Err(Error::InvalidArgument(format!(
                "a messenger needs a depth of 2 to {max_depth} (the receive queue's depth less \
                 {CONTROL_RECEIVES} receives for control messages), not {depth}; a depth of \
                 {depth} needs a receive queue of {} (MessengerOptions::receive_queue_depth)",
                options.receive_queue_depth()
            )));
        }
        // The reads of the peer's large messages take places in the send queue; messages need
        // two more (one of them kept for control messages).
        let send_depth = caps.max_send_wr as usize;
        if send_depth < READS_IN_FLIGHT + 2 {
            return Err(Error::InvalidArgument(format!(
                "a messenger needs a send queue of at least {} ({READS_IN_FLIGHT} for reading \
                 large messages, 2 for messages), not {send_depth}",
                READS_IN_FLIGHT + 2
            )));
        }
        let receive_len = HEADER_LEN + options.eager_limit.max(REQUEST_LEN);
        let pool = MemoryPool::new(
            qp.pd(),
            PoolOptions {
                largest: receive_len.next_power_of_two(),
                ..PoolOptions::default()
            },
        );
        let mut posted = VecDeque::with_capacity(depth + CONTROL_RECEIVES);
        for _ in 0..depth + CONTROL_RECEIVES {
            let mut receive = qp.recv(pool.alloc(receive_len)?);
            // A receive that could not be posted (its CQ full, the queue pair failed) is an
            // error now: a messenger short of receives would send its peer into RNR. Those
            // already posted wait for their flush, holding their buffers.
            if let Some(err) = receive.take_early_error() {
                return Err(err);
            }
            posted.push_back(receive);
        }
        // Large messages are read into memory kept for reuse: registering (and faulting in)
        // a fresh buffer per message costs as much as moving megabytes.
        let largest = options.max_message.max(1).next_power_of_two();
        let read_pool = MemoryPool::new(
            qp.pd(),
            PoolOptions {
                smallest: (receive_len + 1).next_power_of_two(),
                largest: largest.min(READ_POOL_BYTES),
                max_bytes: READ_POOL_BYTES,
                ..PoolOptions::default()
            },
        );
        Ok(Posted {
            pool,
            read_pool,
            posted,
            receive_len,
        })
    }
}

impl Messenger {
    /// A messenger over `qp`, which must be connected (or about to be: receives may be
    /// posted before [`QueuePair::connect`], and must be, so that the peer's first message
    /// finds one). Posts `options.depth` receives from a pool of its own, and 7 more for
    /// control messages. The peer runs a messenger of the same version with the same
    /// options.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a depth of 0, 1 or above the receive queue's depth
    /// less 7; the pool's errors when posting the receives fails.
    pub fn new(qp: &QueuePair, options: MessengerOptions) -> Result<Messenger> {
        let posted = Posted::new(qp, options)?;
        Ok(Self::assemble(
            qp.clone(),
            options,
            posted,
            PeerSizes::same_as(options),
            None,
        ))
    }

    /// Connects to a messenger's [`accept`](Messenger::accept) at `addr`: the two sides
    /// agree on their depths and largest messages in the connection's private data, and
    /// this side's receives are posted before the request goes out. The messenger owns the
    /// connection ([`connection`](Messenger::connection)); dropping its last clone closes it.
    ///
    /// # Errors
    /// [`Connection::connect`]'s errors; [`Error::BadMessage`] when the peer is not a
    /// messenger (no handshake in its accept); the errors of [`Messenger::new`].
    pub async fn connect(
        addr: SocketAddr,
        mut connection: ConnectionOptions,
        options: MessengerOptions,
    ) -> Result<Messenger> {
        connection.private_data = handshake::write(options);
        let (connection, posted) =
            Connection::connect_and(addr, connection, |qp| Posted::new(qp, options)).await?;
        let posted = posted?;
        let peer = handshake::read(connection.private_data())?;
        let qp = connection.queue_pair().clone();
        Ok(Self::assemble(qp, options, posted, peer, Some(connection)))
    }

    /// Accepts a messenger's [`connect`](Messenger::connect) request, posting this side's
    /// receives before answering. A request without the handshake is rejected.
    ///
    /// # Errors
    /// [`Error::BadMessage`] for a request that is not a messenger's (rejected);
    /// [`Incoming::accept_with`]'s errors; the errors of [`Messenger::new`].
    pub async fn accept(
        incoming: Incoming,
        mut connection: ConnectionOptions,
        options: MessengerOptions,
    ) -> Result<Messenger> {
        let peer = match handshake::read(incoming.private_data()) {
            Ok(peer) => peer,
            Err(err) => {
                incoming.reject(b"anyrdma: not a messenger's connect request");
                return Err(err);
            }
        };
        connection.private_data = handshake::write(options);
        let (connection, posted) = incoming
            .accept_and(connection, |qp| Posted::new(qp, options))
            .await?;
        let posted = posted?;
        let qp = connection.queue_pair().clone();
        Ok(Self::assemble(qp, options, posted, peer, Some(connection)))
    }

    fn assemble(
        qp: QueuePair,
        options: MessengerOptions,
        posted: Posted,
        peer: PeerSizes,
        connection: Option<Connection>,
    ) -> Messenger {
        let depth = options.depth;
        let send_limit = qp.caps().max_send_wr as usize - READS_IN_FLIGHT;
        let protocol = Protocol::new(Limits {
            depth,
            credit_batch: Limits::credit_batch_for(depth),
            peer_depth: peer.depth,
            peer_eager_limit: peer.eager_limit,
            // The pool's largest block (see `Posted::new`).
            send_buffer: posted.receive_len.next_power_of_two() - HEADER_LEN,
            max_message: options.max_message,
            send_limit,
        });
        let messenger = Messenger {
            inner: Arc::new(Engine {
                qp,
                pool: posted.pool,
                read_pool: posted.read_pool,
                receive_len: posted.receive_len,
                peer_max_message: peer.max_message,
                send_limit,
                state: Mutex::new(State::new(protocol, posted.posted)),
                connection,
            }),
        };
        #[cfg(feature = "metrics")]
        crate::stats::metrics::track(&messenger.inner);
        messenger
    }

    /// The engine under every clone.
    pub(super) fn engine(&self) -> &Engine {
        &self.inner
    }

    /// The connection, for a messenger made by [`connect`](Messenger::connect) or
    /// [`accept`](Messenger::accept).
    pub fn connection(&self) -> Option<&Connection> {
        self.inner.connection.as_ref()
    }

    /// The largest message this side may send (the peer's largest).
    pub fn max_message(&self) -> usize {
        self.inner.peer_max_message
    }

    /// Messages up to this many bytes travel in one send; larger ones by rendezvous (the
    /// peer reads them). The smaller of the peer's eager limit and this side's (what its
    /// send buffers hold, rounded up to a power of two with the header).
    pub fn eager_limit(&self) -> usize {
        lock(&self.inner.state).protocol.eager_limit()
    }

    /// Large messages of this side still exposed to the peer (sent by rendezvous, and not
    /// yet known to be read).
    pub fn exposed(&self) -> usize {
        lock(&self.inner.state).exposed.len()
    }

    /// What this messenger (with its clones) did since it was made: messages and bytes each
    /// way, rendezvous, and the time sends waited for credits (see [`MessengerStats`]).
    /// Takes the messenger's lock for a moment.
    pub fn stats(&self) -> MessengerStats {
        lock(&self.inner.state).stats
    }

    /// The queue pair the messages travel on.
    pub fn queue_pair(&self) -> &QueuePair {
        &self.inner.qp
    }

    /// Sends `data` as one message, of any size up to [`max_message`](Messenger::max_message).
    /// Waits while the peer has no receive free for it (backpressure, not an error), and
    /// returns once the message is posted: `data` was copied, so the caller may reuse it, and
    /// the message is on its way, as with a socket's write. A failure after that (the peer
    /// gone) shows as the messenger's failure on the next call; [`flush`](Messenger::flush)
    /// waits until the peer has everything sent so far.
    ///
    /// A message up to the [eager limit](Messenger::eager_limit) is copied into one send. A
    /// larger one is copied into memory registered for it alone, with remote read rights, and
    /// the peer is told where it is; the peer reads it and says so, and the registration goes
    /// (its key stops working) when that word is taken in, by whichever task next receives,
    /// flushes, sends a large message or waits to send on this messenger, or when the
    /// messenger fails or is dropped.
    /// At most 4 large messages are exposed at once (as many as the peer reads and holds at
    /// once): a further one waits.
    ///
    /// Dropping the future before the message (or its rendezvous request) was posted leaves
    /// nothing at the peer and nothing exposed; after, the whole message arrives.
    ///
    /// # Errors
    /// [`Error::TooLarge`] above [`max_message`](Messenger::max_message) (nothing sent); the
    /// messenger's failure ([`Error::QpInError`] with its cause, e.g.
    /// [`Error::Disconnected`]) once it failed.
    pub async fn send(&self, data: &[u8]) -> Result<()> {
        self.send_message(data, None).await
    }

    /// Sends `data` with 32 bits of immediate data, which the peer reads as
    /// [`Message::imm`]. As [`send`](Messenger::send).
    ///
    /// # Errors
    /// As [`Messenger::send`].
    pub async fn send_with_imm(&self, data: &[u8], imm: u32) -> Result<()> {
        self.send_message(data, Some(imm)).await
    }

    async fn send_message(&self, data: &[u8], imm: Option<u32>) -> Result<()> {
        let mut outgoing = Some(self.outgoing(data, imm)?);
        let engine = &*self.inner;
        waiting::call(engine, |state, cx| {
            Self::poll_post(engine, state, cx, &mut outgoing)
        })
        .await
    }

    /// `data` copied into registered memory as one message, ready to post: into a send
    /// buffer up to the eager limit, or, above it, into memory registered for it alone that
    /// the peer will read (with a rendezvous request to send).
    pub(crate) fn outgoing(&self, data: &[u8], imm: Option<u32>) -> Result<Outgoing> {
        self.outgoing_filled(data.len(), imm, |payload| payload.copy_from_slice(data))
    }

    /// A message of `len` bytes as [`outgoing`](Messenger::outgoing) makes it, its bytes
    /// written in place by `fill` (given exactly `len` bytes): a vectored write's slices
    /// are copied once, straight into the registered memory that is sent or read.
    pub(crate) fn outgoing_filled(
        &self,
        len: usize,
        imm: Option<u32>,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<Outgoing> {
        let engine = &*self.inner;
        if len > engine.peer_max_message {
            return Err(Error::TooLarge {
                what: "message (Messenger::max_message)",
                len,
                max: engine.peer_max_message,
            });
        }
        let route = lock(&engine.state).protocol.route(len);
        if route == Route::Eager {
            let mut outgoing = self.eager_outgoing(len, imm)?;
            fill(outgoing.payload_mut());
            return Ok(outgoing);
        }
        // Rendezvous: the message in memory of its own that the peer may read.
        let mut exposed = engine.qp.pd().alloc(len, Access::REMOTE_READ)?;
        fill(&mut exposed);
        let remote = exposed.remote()?;
        Ok(Outgoing::request(
            imm,
            engine.pool.alloc(HEADER_LEN + REQUEST_LEN)?,
            Exposed::copy(exposed),
            remote,
        ))
    }

    /// An empty eager message with room for `capacity` bytes (at most the
    /// [eager limit](Messenger::eager_limit)), to be filled in place and cut to its length
    /// with [`Outgoing::set_len`].
    pub(crate) fn eager_outgoing(&self, capacity: usize, imm: Option<u32>) -> Result<Outgoing> {
        Ok(Outgoing {
            kind: Kind::Data,
            imm,
            message: self.inner.pool.alloc(HEADER_LEN + capacity)?,
            len: capacity,
            exposed: None,
            waiting_since: None,
        })
    }

    /// Posts `outgoing` once a credit and a place in the send queue are free (and, for a
    /// rendezvous request, once fewer than the peer's depth of messages are exposed). A poll
    /// with the state locked; `outgoing` is taken when it is posted.
    pub(super) fn poll_post(
        engine: &Engine,
        state: &mut State,
        cx: &mut TaskContext<'_>,
        outgoing: &mut Option<Outgoing>,
    ) -> Poll<Result<()>> {
        let Some(kind) = outgoing.as_ref().map(|o| o.kind) else {
            return Poll::Ready(Err(Error::InvalidArgument("polled after it ended".into())));
        };
        // A large message takes in the peer's "read it" words first, so that the copies it
        // has read are unregistered now, not when the sender next has to wait.
        if kind == Kind::Request && !state.exposed.is_empty() {
            engine.pump(state, cx);
        }
        let route = if kind == Kind::Request {
            Route::Rendezvous
        } else {
            Route::Eager
        };
        loop {
            engine.learn_disconnect(state);
            match state.protocol.gate(route) {
                Gate::Failed(failure) => return Poll::Ready(Err(engine.failed(&failure))),
                Gate::Open => break,
                Gate::Wait => {}
            }
            let room = state.sending.len() + 2 <= engine.send_limit;
            // Waiting: take in what the peer sent (credits, done messages) and make room.
            let mut progressed = engine.pump(state, cx);
            if !room {
                let before = state.sending.len();
                let _ = engine.poll_sends_down_to(state, engine.send_limit - 2, cx);
                progressed |= state.sending.len() < before;
            }
            if !progressed {
                if !state.protocol.has_credit() {
                    if let Some(outgoing) = outgoing.as_mut() {
                        outgoing.waiting_since.get_or_insert_with(Instant::now);
                    }
                }
                state.waiters.wait(cx.waker());
                return Poll::Pending;
            }
        }
        let Some(Outgoing {
            kind,
            imm,
            mut message,
            len,
            exposed,
            waiting_since,
        }) = outgoing.take()
        else {
            unreachable!("checked above");
        };
        // The payload's bytes: the message's own, or those the peer will read.
        let bytes = exposed
            .as_ref()
            .map_or(len as u64, |(_, remote)| remote.len);
        if HEADER_LEN + len < message.len() {
            drop(message.split_off(HEADER_LEN + len));
        }
        if let Some((exposed, remote)) = exposed {
            let token = state.protocol.expose();
            Rendezvous {
                addr: remote.addr,
                len: remote.len,
                rkey: remote.rkey,
                token,
            }
            .write(&mut message[HEADER_LEN..]);
            // Exposed until the peer says it has read it (whoever drives the messenger
            // then takes the registration down), or until the messenger fails.
            state.exposed.insert(token, exposed);
        }
        // Posted under the lock: the credits it returns and the order of messages are those
        // of this moment.
        let posted = engine.post(state, kind, imm, message);
        if posted.is_ok() {
            let waited = waiting_since.map(|since| since.elapsed());
            state.stats.sent(bytes, kind == Kind::Request, waited);
        }
        Poll::Ready(posted)
    }

    /// Runs one poll of a messenger call for a caller that keeps its own [`Place`] among
    /// the waiters (a stream half, a [`Messages`]): pending, the task counts as waiting
    /// until a later poll of the same place is ready or the place is abandoned.
    pub(crate) fn poll_at<T>(
        &self,
        cx: &mut TaskContext<'_>,
        place: &mut Place,
        step: impl FnOnce(&Engine, &mut State, &mut TaskContext<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let engine = &*self.inner;
        let mut state = lock(&engine.state);
        let poll = step(engine, &mut state, cx);
        if let Some(left) = place.after(&mut state.waiters, cx, &poll) {
            engine.forget(&state, &left);
        }
        poll
    }

    /// Polls to post `outgoing`, waiting as [`send`](Messenger::send) does.
    pub(crate) fn poll_post_at(
        &self,
        cx: &mut TaskContext<'_>,
        place: &mut Place,
        outgoing: &mut Option<Outgoing>,
    ) -> Poll<Result<()>> {
        self.poll_at(cx, place, |engine, state, cx| {
            Self::poll_post(engine, state, cx, outgoing)
        })
    }

    /// Posts `outgoing` if it can go at once (the peer has a receive free for it and the
    /// send queue room): `Ok(true)` when posted, `Ok(false)` when it would have to wait. It
    /// leaves nothing registered either way: the caller does not wait for it.
    pub(crate) fn try_post(
        &self,
        cx: &mut TaskContext<'_>,
        outgoing: &mut Option<Outgoing>,
    ) -> Result<bool> {
        let mut place = Place::default();
        let poll = self.poll_at(cx, &mut place, |engine, state, cx| {
            match Self::poll_post(engine, state, cx, outgoing) {
                // Not waiting after all: ready, so that the task leaves the waiters now.
                Poll::Pending => Poll::Ready(Ok(false)),
                Poll::Ready(result) => Poll::Ready(result.map(|()| true)),
            }
        });
        match poll {
            Poll::Ready(result) => result,
            Poll::Pending => Ok(false),
        }
    }

    /// Polls [`flush`](Messenger::flush) for a caller with its own place.
    pub(crate) fn poll_flush_at(
        &self,
        cx: &mut TaskContext<'_>,
        place: &mut Place,
    ) -> Poll<Result<()>> {
        self.poll_at(cx, place, Self::poll_flush)
    }

    /// Polls [`recv`](Messenger::recv) for a caller with its own place.
    pub(crate) fn poll_recv_at(
        &self,
        cx: &mut TaskContext<'_>,
        place: &mut Place,
    ) -> Poll<Result<Message>> {
        self.poll_at(cx, place, Self::poll_next_message)
    }

    /// The caller of `place` stopped waiting (dropped while pending).
    pub(crate) fn abandon(&self, place: &mut Place) {
        place.abandon(&self.inner);
    }

    /// Ends the messenger for a peer that broke a protocol carried in its messages (the
    /// byte stream's framing): the queue pair is shut down, every call ends with `err` as
    /// the cause, and the error calls will return is returned.
    pub(crate) fn fail_with(&self, err: Error) -> Error {
        let engine = &*self.inner;
        let _ = engine.qp.shared.shut_down(QpShutdownReason::Application);
        // The peer learns at once that it is not talked to any more.
        if let Some(connection) = &engine.connection {
            connection.cut_off();
        }
        let mut state = lock(&engine.state);
        let failure = state.protocol.fail(err);
        engine.apply(&mut state);
        state.waiters.wake_all();
        engine.failed(&failure)
    }

    /// Waits until the peer has every message sent so far: the device is done with each
    /// send (the peer's queue pair acknowledged it) and the peer has read each large message.
    /// Messages sent while it waits count too.
    ///
    /// # Errors
    /// The messenger's failure, as [`Messenger::send`]'s.
    pub async fn flush(&self) -> Result<()> {
        let engine = &*self.inner;
        waiting::call(engine, |state, cx| Self::poll_flush(engine, state, cx)).await
    }

    /// A poll of [`flush`](Messenger::flush), with the state locked.
    fn poll_flush(
        engine: &Engine,
        state: &mut State,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<()>> {
        loop {
            let before = state.sending.len();
            let mut progressed = engine.pump(state, cx);
            let sent = engine.poll_sends_finished(state, cx);
            progressed |= state.sending.len() < before;
            engine.learn_disconnect(state);
            // Everything delivered is a flush done, even when the connection failed just
            // after (a peer that read the last message and closed).
            if sent.is_ready() && state.sending.is_empty() && state.protocol.delivered() {
                return Poll::Ready(Ok(()));
            }
            // A failure is the answer once no send is in flight: one that is may still turn
            // out delivered.
            if let (Poll::Ready(()), Some(failure)) = (sent, state.failure()) {
                return Poll::Ready(Err(engine.failed(failure)));
            }
            if !progressed {
                state.waiters.wait(cx.waker());
                return Poll::Pending;
            }
        }
    }

    /// The next message, in the order they arrived. Dropping the future never loses a
    /// message: it stays for the next call.
    ///
    /// # Errors
    /// The messenger's failure once it failed (after the messages that arrived before were
    /// taken): [`Error::QpInError`] with its cause, e.g. [`Error::Disconnected`] or
    /// [`Error::BadMessage`].
    pub async fn recv(&self) -> Result<Message> {
        let engine = &*self.inner;
        waiting::call(engine, |state, cx| {
            Self::poll_next_message(engine, state, cx)
        })
        .await
    }

    /// Polls for the next message (what [`recv`](Messenger::recv) awaits; a `Stream` can be
    /// built on it, as [`messages`](Messenger::messages) does).
    ///
    /// Keep polling until it is ready: a task that gives up while it is pending may hold the
    /// turn of the other tasks waiting on this messenger, and of other connections sharing
    /// its completion queue, until it polls again or this messenger is used or dropped.
    /// [`recv`](Messenger::recv) and [`Messages`] give their turn up when dropped.
    pub fn poll_recv(&self, cx: &mut TaskContext<'_>) -> Poll<Result<Message>> {
        let engine = &*self.inner;
        let mut state = lock(&engine.state);
        let poll = Self::poll_next_message(engine, &mut state, cx);
        if poll.is_ready() {
            if let Some(left) = Place::default().after(&mut state.waiters, cx, &poll) {
                engine.forget(&state, &left);
            }
        }
        poll
    }

    /// The task of `waker` gave up a pending [`poll_recv`](Messenger::poll_recv): it leaves
    /// the waiters, as a dropped [`recv`](Messenger::recv) future does.
    pub(crate) fn leave(&self, waker: &std::task::Waker) {
        let engine = &*self.inner;
        let mut state = lock(&engine.state);
        if state.waiters.leave(waker) {
            engine.forget(&state, waker);
        }
    }

    /// A poll for the next message, with the state locked.
    fn poll_next_message(
        engine: &Engine,
        state: &mut State,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<Message>> {
        loop {
            if let Some(next) = engine.take_message(state) {
                return Poll::Ready(next);
            }
            if !engine.pump(state, cx) {
                state.waiters.wait(cx.waker());
                return Poll::Pending;
            }
        }
    }
}

/// The messages of a [`Messenger`] as a [`Stream`](futures_core::Stream) (from
/// [`Messenger::messages`]): each item is what [`Messenger::recv`] would return, and after the
/// messenger's failure (a disconnect included) has been yielded once, the stream ends. Dropping
/// it, or a `next()` future, loses no message.
///
/// ```no_run
/// # async fn demo(messenger: anyrdma_core::msg::Messenger) {
/// use std::pin::pin;
/// use futures_core::Stream;
/// let mut messages = pin!(messenger.messages());
/// while let Some(message) = std::future::poll_fn(|cx| messages.as_mut().poll_next(cx)).await {
///     match message {
///         Ok(message) => println!("{} bytes", message.data.len()),
///         Err(err) => println!("the stream ended: {err}"),
///     }
/// }
/// # }
/// ```
pub struct Messages {
    messenger: Messenger,
    ended: bool,
    /// Its place among the messenger's waiters while a poll is pending.
    place: Place,
}

impl Clone for Messages {
    /// Another stream of the same messages (each message goes to one of them), with no
    /// poll pending.
    fn clone(&self) -> Self {
        Messages {
            messenger: self.messenger.clone(),
            ended: self.ended,
            place: Place::default(),
        }
    }
}

impl std::fmt::Debug for Messages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messages")
            .field("messenger", &self.messenger)
            .field("ended", &self.ended)
            .finish()
    }
}

impl Messenger {
    /// The messages as a [`Stream`](futures_core::Stream): see [`Messages`].
    pub fn messages(&self) -> Messages {
        Messages {
            messenger: self.clone(),
            ended: false,
            place: Place::default(),
        }
    }
}

impl futures_core::Stream for Messages {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this.messenger.poll_recv_at(cx, &mut this.place) {
            Poll::Ready(Ok(message)) => Poll::Ready(Some(Ok(message))),
            Poll::Ready(Err(err)) => {
                this.ended = true;
                Poll::Ready(Some(Err(err)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Messages {
    fn drop(&mut self) {
        self.place.abandon(&self.messenger.inner);
    }
}

impl futures_core::FusedStream for Messages {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

impl std::fmt::Debug for Messenger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // What explains a messenger that waits: its credits and what it owes the peer, and
        // what is posted, arrived, in flight and exposed.
        let state = lock(&self.inner.state);
        f.debug_struct("Messenger")
            .field("qpn", &self.inner.qp.qpn())
            .field("credits", &state.protocol.credits())
            .field("owed", &state.protocol.owed())
            .field("receives_posted", &state.posted.len())
            .field("arrived", &state.protocol.arrived())
            .field("reading", &state.reads.len())
            .field("sending", &state.sending.len())
            .field("exposed", &state.exposed.len())
            .field("done_to_send", &state.protocol.done_to_send())
            .field("waiters", &state.waiters.len())
            .field("failure", &state.failure())
            .finish()
    }
}
