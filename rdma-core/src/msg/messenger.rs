//! The messenger: receives kept posted, messages taken in order, and credits.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};

use super::header::{Header, HeaderProblem, Kind, HEADER_LEN};
use super::MessengerOptions;
use crate::cm::{Connection, ConnectionOptions, Incoming};
use crate::error::{Error, QpShutdownReason, Result};
use crate::mr::LocalBuf;
use crate::op::{Op, Recv};
use crate::pool::{MemoryPool, PoolOptions};
use crate::qp::QueuePair;
use crate::wake::lock;
use std::net::SocketAddr;

/// A message taken from a [`Messenger`]: its bytes (an owned buffer of the messenger's pool,
/// given back to it when dropped) and the sender's immediate data.
#[derive(Debug)]
pub struct Message {
    /// The bytes, exactly as sent.
    pub data: LocalBuf,
    /// The immediate the sender gave, if any.
    pub imm: Option<u32>,
}

/// Messages over a connected queue pair: `send` waits for the peer to have a receive posted
/// for it (credits), so the peer never answers "receiver not ready", and `recv` takes
/// messages in arrival order. See the [module documentation](super).
///
/// Cheap to clone: clones share the stream (several tasks may send and receive at once).
#[derive(Clone)]
pub struct Messenger {
    inner: Arc<Inner>,
}

struct Inner {
    qp: QueuePair,
    pool: MemoryPool,
    /// Bytes of each posted receive: the header and the largest payload.
    receive_len: usize,
    /// The largest payload the peer's receives take.
    max_payload: usize,
    /// Receives the peer keeps posted for this side: the most credits there can be.
    peer_depth: usize,
    /// Return credits once this many receives were posted again without telling the peer.
    credit_batch: usize,
    state: Mutex<State>,
    /// The connection the messenger owns, if it made it.
    connection: Option<Connection>,
}

/// A messenger's receives, posted before its peer is known.
struct Posted {
    pool: MemoryPool,
    posted: VecDeque<Op<LocalBuf, Recv>>,
    receive_len: usize,
}

impl Posted {
    fn new(qp: &QueuePair, options: MessengerOptions) -> Result<Posted> {
        let depth = options.depth;
        let max_depth = qp.caps().max_recv_wr as usize;
        if !(2..=max_depth).contains(&depth) {
            return Err(Error::InvalidArgument(format!(
                "a messenger needs a depth of 2 to {max_depth} (the receive queue's depth), \
                 not {depth}"
            )));
        }
        let receive_len = HEADER_LEN + options.max_message;
        let pool = MemoryPool::new(
            qp.pd(),
            PoolOptions {
                largest: receive_len.next_power_of_two(),
                ..PoolOptions::default()
            },
        );
        let mut posted = VecDeque::with_capacity(depth);
        for _ in 0..depth {
            posted.push_back(qp.recv(pool.alloc(receive_len)?));
        }
        Ok(Posted {
            pool,
            posted,
            receive_len,
        })
    }
}

/// What a messenger says in its connect request or accept: `AMSG`, version 1, its depth and
/// its largest message (each 32 bits, little endian).
const HANDSHAKE_LEN: usize = 13;

fn handshake(options: MessengerOptions) -> [u8; HANDSHAKE_LEN] {
    let mut bytes = [0u8; HANDSHAKE_LEN];
    bytes[..4].copy_from_slice(b"AMSG");
    bytes[4] = 1;
    bytes[5..9].copy_from_slice(&(options.depth.min(u32::MAX as usize) as u32).to_le_bytes());
    bytes[9..13]
        .copy_from_slice(&(options.max_message.min(u32::MAX as usize) as u32).to_le_bytes());
    bytes
}

/// The peer's depth and largest message from its handshake (the transport may have padded
/// the private data with zeroes).
fn read_handshake(bytes: &[u8]) -> Result<(usize, usize)> {
    let bad = || Error::BadMessage {
        problem: HeaderProblem::Handshake,
    };
    if bytes.len() < HANDSHAKE_LEN || &bytes[..4] != b"AMSG" || bytes[4] != 1 {
        return Err(bad());
    }
    let depth = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as usize;
    let max = u32::from_le_bytes([bytes[9], bytes[10], bytes[11], bytes[12]]) as usize;
    if depth < 2 {
        return Err(bad());
    }
    Ok((depth, max))
}

struct State {
    /// Receives posted, oldest first: they complete in this order.
    posted: VecDeque<Op<LocalBuf, Recv>>,
    /// Data messages received and not taken yet (at most the depth: their receives are
    /// posted again, and credited to the peer, only when they are taken).
    ready: VecDeque<Message>,
    /// Sends the peer has a receive posted for.
    credits: usize,
    /// Receives posted again since the peer was last told.
    owed: usize,
    /// Why the messenger stopped, once it did.
    failure: Option<Arc<Error>>,
    /// Tasks waiting in `send` (for credits) or `recv` (for a message).
    waiters: Vec<Waker>,
}

impl Messenger {
    /// A messenger over `qp`, which must be connected (or about to be: receives may be
    /// posted before [`QueuePair::connect`], and must be, so that the peer's first message
    /// finds one). Posts `options.depth` receives from a pool of its own. The peer runs a
    /// messenger with the same `depth` and `max_message`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a depth of 0, 1 or above the receive queue's; the
    /// pool's errors when posting the receives fails.
    pub fn new(qp: &QueuePair, options: MessengerOptions) -> Result<Messenger> {
        let posted = Posted::new(qp, options)?;
        Ok(Self::assemble(
            qp.clone(),
            posted,
            options.depth,
            options.max_message,
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
        connection.private_data = handshake(options).to_vec();
        let (connection, posted) =
            Connection::connect_and(addr, connection, |qp| Posted::new(qp, options)).await?;
        let posted = posted?;
        let (peer_depth, peer_max) = read_handshake(connection.private_data())?;
        let qp = connection.queue_pair().clone();
        Ok(Self::assemble(
            qp,
            posted,
            peer_depth,
            peer_max,
            Some(connection),
        ))
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
        let (peer_depth, peer_max) = match read_handshake(incoming.private_data()) {
            Ok(peer) => peer,
            Err(err) => {
                incoming.reject(b"anyrdma: not a messenger's connect request");
                return Err(err);
            }
        };
        connection.private_data = handshake(options).to_vec();
        let (connection, posted) = incoming
            .accept_and(connection, |qp| Posted::new(qp, options))
            .await?;
        let posted = posted?;
        let qp = connection.queue_pair().clone();
        Ok(Self::assemble(
            qp,
            posted,
            peer_depth,
            peer_max,
            Some(connection),
        ))
    }

    fn assemble(
        qp: QueuePair,
        posted: Posted,
        peer_depth: usize,
        peer_max_message: usize,
        connection: Option<Connection>,
    ) -> Messenger {
        let depth = posted.posted.len();
        Messenger {
            inner: Arc::new(Inner {
                qp,
                pool: posted.pool,
                receive_len: posted.receive_len,
                max_payload: peer_max_message,
                peer_depth,
                credit_batch: (depth / 4).max(1),
                state: Mutex::new(State {
                    posted: posted.posted,
                    ready: VecDeque::new(),
                    credits: peer_depth,
                    owed: 0,
                    failure: None,
                    waiters: Vec::new(),
                }),
                connection,
            }),
        }
    }

    /// The connection, for a messenger made by [`connect`](Messenger::connect) or
    /// [`accept`](Messenger::accept).
    pub fn connection(&self) -> Option<&Connection> {
        self.inner.connection.as_ref()
    }

    /// The largest message this side may send (the peer's receive size).
    pub fn max_message(&self) -> usize {
        self.inner.max_payload
    }

    /// The queue pair the messages travel on.
    pub fn queue_pair(&self) -> &QueuePair {
        &self.inner.qp
    }

    /// Sends `data` as one message. Waits while the peer has no receive free for it
    /// (backpressure, not an error). Dropping the future before it sent leaves nothing at
    /// the peer; after, the whole message arrives.
    ///
    /// # Errors
    /// [`Error::TooLarge`] for a message above [`max_message`](Messenger::max_message)
    /// (nothing sent); the messenger's failure ([`Error::QpInError`] with its cause, e.g.
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
        let inner = &*self.inner;
        if data.len() > inner.max_payload {
            return Err(Error::TooLarge {
                what: "message (Messenger::max_message)",
                len: data.len(),
                max: inner.max_payload,
            });
        }
        let mut buf = Some(inner.pool.alloc(HEADER_LEN + data.len())?);
        let mut data = Some(data);
        let sending = poll_fn(|cx| {
            let mut state = lock(&inner.state);
            inner.pump(&mut state, cx);
            if let Some(failure) = &state.failure {
                return Poll::Ready(Err(inner.failed(failure)));
            }
            // One credit stays for returning credits, so that both sides can always tell
            // each other about receives posted again.
            if state.credits < 2 {
                state.wait(cx.waker());
                return Poll::Pending;
            }
            let (Some(mut message), Some(payload)) = (buf.take(), data.take()) else {
                return Poll::Ready(Err(Error::InvalidArgument("polled after it ended".into())));
            };
            state.credits -= 1;
            let header = Header {
                kind: Kind::Data,
                credits: state.take_owed(),
                imm,
            };
            header.write(&mut message[..HEADER_LEN]);
            message[HEADER_LEN..].copy_from_slice(payload);
            // Posted under the lock: the credits it returns and the order of messages are
            // those of this moment.
            Poll::Ready(Ok(inner.qp.send(message)))
        });
        let op = sending.await?;
        op.await.0
    }

    /// The next message, in the order they arrived. Dropping the future never loses a
    /// message: it stays for the next call.
    ///
    /// # Errors
    /// The messenger's failure once it failed (after the messages that arrived before were
    /// taken): [`Error::QpInError`] with its cause, e.g. [`Error::Disconnected`] or
    /// [`Error::BadMessage`].
    pub async fn recv(&self) -> Result<Message> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message (what [`recv`](Messenger::recv) awaits; a `Stream` can be
    /// built on it).
    pub fn poll_recv(&self, cx: &mut TaskContext<'_>) -> Poll<Result<Message>> {
        let inner = &*self.inner;
        let mut state = lock(&inner.state);
        if state.ready.is_empty() {
            inner.pump(&mut state, cx);
        }
        if let Some(message) = state.ready.pop_front() {
            // Its receive goes back to the peer's credit.
            inner.repost(&mut state);
            inner.return_credits(&mut state);
            return Poll::Ready(Ok(message));
        }
        if let Some(failure) = &state.failure {
            return Poll::Ready(Err(inner.failed(failure)));
        }
        state.wait(cx.waker());
        Poll::Pending
    }
}

impl State {
    fn wait(&mut self, waker: &Waker) {
        if !self.waiters.iter().any(|w| w.will_wake(waker)) {
            self.waiters.push(waker.clone());
        }
    }

    fn wake_all(&mut self) {
        for waker in self.waiters.drain(..) {
            waker.wake();
        }
    }

    /// The credits to return now (at most what a header carries).
    fn take_owed(&mut self) -> u16 {
        let now = self.owed.min(u16::MAX as usize);
        self.owed -= now;
        now as u16
    }
}

impl Inner {
    /// Takes the receives that completed, in order: credits are counted, credit messages'
    /// receives posted again at once, data messages queued for `recv`. Any task may drive
    /// it (one sending and never receiving still learns of its credits).
    fn pump(&self, state: &mut State, cx: &mut TaskContext<'_>) {
        let mut progressed = false;
        while state.failure.is_none() {
            let Some(front) = state.posted.front_mut() else {
                break;
            };
            let Poll::Ready((result, buf)) = Pin::new(front).poll(cx) else {
                break;
            };
            state.posted.pop_front();
            progressed = true;
            let received = match result {
                Ok(received) => received,
                Err(err) => {
                    state.failure = Some(Arc::new(err));
                    break;
                }
            };
            if let Err(problem) = self.take(state, buf, received.len) {
                // A peer that breaks the protocol is not talked to any more.
                let _ = self.qp.shared.shut_down(QpShutdownReason::Application);
                state.failure = Some(Arc::new(Error::BadMessage { problem }));
            }
        }
        if progressed {
            state.wake_all();
        }
    }

    /// One received message of `len` bytes in `buf`.
    fn take(
        &self,
        state: &mut State,
        mut buf: LocalBuf,
        len: usize,
    ) -> std::result::Result<(), HeaderProblem> {
        let len = len.min(buf.len());
        let header = Header::read(&buf[..len])?;
        let returned = usize::from(header.credits);
        if state.credits + returned > self.peer_depth {
            return Err(HeaderProblem::TooManyCredits {
                returned: header.credits,
                max: self.peer_depth - state.credits,
            });
        }
        state.credits += returned;
        match header.kind {
            Kind::Credit => {
                drop(buf);
                self.repost(state);
                self.return_credits(state);
            }
            Kind::Data => {
                let mut data = buf.split_off(HEADER_LEN);
                drop(data.split_off(len - HEADER_LEN));
                drop(buf);
                state.ready.push_back(Message {
                    data,
                    imm: header.imm,
                });
            }
        }
        Ok(())
    }

    /// Posts one more receive (for one taken), owed to the peer as a credit.
    fn repost(&self, state: &mut State) {
        match self.pool.alloc(self.receive_len) {
            Ok(buf) => {
                state.posted.push_back(self.qp.recv(buf));
                state.owed += 1;
            }
            Err(err) => state.failure = Some(Arc::new(err)),
        }
    }

    /// Tells the peer about receives posted again, once enough are owed and no data message
    /// is about to carry them, with the credit kept for it.
    fn return_credits(&self, state: &mut State) {
        if state.owed < self.credit_batch || state.credits == 0 {
            return;
        }
        let Ok(mut message) = self.pool.alloc(HEADER_LEN) else {
            return; // the next data message carries them
        };
        state.credits -= 1;
        Header {
            kind: Kind::Credit,
            credits: state.take_owed(),
            imm: None,
        }
        .write(&mut message);
        // Not awaited: its buffer returns to the pool when the device is done with it, and a
        // failure shows on the queue pair's next operation.
        drop(self.qp.send(message));
    }

    fn failed(&self, failure: &Arc<Error>) -> Error {
        Error::QpInError {
            qpn: self.qp.qpn(),
            cause: failure.clone(),
        }
    }
}

impl std::fmt::Debug for Messenger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = lock(&self.inner.state);
        f.debug_struct("Messenger")
            .field("qpn", &self.inner.qp.qpn())
            .field("credits", &state.credits)
            .field("ready", &state.ready.len())
            .finish()
    }
}
