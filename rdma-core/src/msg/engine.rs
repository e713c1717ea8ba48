//! The messenger's engine: the I/O around its protocol ([`super::protocol`]). It posts
//! what the protocol's actions say (receives, control messages, reads of large messages),
//! keeps the operations in flight and the buffers exposed to the peer, and feeds their
//! completions back, in order.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};

use super::exposed::Exposed;
use super::header::{Header, Kind, Rendezvous, DONE_LEN, HEADER_LEN};
use super::protocol::{Action, Incoming, Protocol};
use super::waiting::Waiters;
use super::Message;
use crate::cm::Connection;
use crate::error::{Error, QpShutdownReason, Result};
use crate::mr::{Access, LocalBuf};
use crate::op::{Done, Op, Received, Recv};
use crate::pool::MemoryPool;
use crate::qp::QueuePair;
use crate::remote::RemoteRegion;
use crate::stats::MessengerStats;

pub(crate) struct Engine {
    pub(crate) qp: QueuePair,
    pub(crate) pool: MemoryPool,
    /// Large messages are read into blocks of this pool (registered once, reused), or, when
    /// it has none free, into a registration of their own.
    pub(crate) read_pool: MemoryPool,
    /// Bytes of each posted receive: the header and the largest eager payload.
    pub(crate) receive_len: usize,
    /// The largest message the peer takes.
    pub(crate) peer_max_message: usize,
    /// Sends (messages, requests and control messages) in flight at most: the send queue's
    /// depth less what the reads of large messages take.
    pub(crate) send_limit: usize,
    pub(crate) state: Mutex<State>,
    /// The connection the messenger owns, if it made it.
    pub(crate) connection: Option<Connection>,
}

pub(crate) struct State {
    /// Credits, rendezvous and the order of messages, with no I/O.
    pub(crate) protocol: Protocol<LocalBuf>,
    /// Receives posted, oldest first: they complete in this order.
    pub(crate) posted: VecDeque<Op<LocalBuf, Recv>>,
    /// Reads of the peer's large messages, oldest first (they finish in this order), with
    /// the protocol's name for each.
    pub(crate) reads: VecDeque<(u64, Op<LocalBuf, Done>)>,
    /// Sends posted, oldest first (a send queue completes in order): kept, not dropped, so
    /// that the send queue's room is known and a failed send fails the messenger.
    pub(crate) sending: VecDeque<Op<LocalBuf, Done>>,
    /// Our large messages the peer may be reading, by token: exposed until it says done.
    pub(crate) exposed: HashMap<u32, Exposed>,
    /// Tasks waiting in `send`, `recv` or `flush`, and the one the operations will wake.
    pub(crate) waiters: Waiters,
    /// What the messenger counts (under this lock).
    pub(crate) stats: MessengerStats,
}

impl State {
    pub(crate) fn new(protocol: Protocol<LocalBuf>, posted: VecDeque<Op<LocalBuf, Recv>>) -> State {
        State {
            protocol,
            posted,
            reads: VecDeque::new(),
            sending: VecDeque::new(),
            exposed: HashMap::new(),
            waiters: Waiters::default(),
            stats: MessengerStats::default(),
        }
    }

    pub(crate) fn failure(&self) -> Option<&Arc<Error>> {
        self.protocol.failure()
    }
}

impl Engine {
    /// Takes what completed, in order: receives and the reads of large messages, and does
    /// what the protocol says about them. Any task may drive it: one that waits to send still
    /// learns of its credits and of the peer's done messages. Returns whether anything
    /// completed; when nothing did, the task is registered to be woken by the oldest receive
    /// and the oldest read (in busy-poll mode, after polling the CQ for a while).
    ///
    /// What a poll of the CQ already delivered is taken first, without polling it again: a
    /// task that finds messages waiting neither spins nor registers for the next one.
    pub(crate) fn pump(&self, state: &mut State, cx: &mut TaskContext<'_>) -> bool {
        let mut progressed = self.take_delivered(state);
        if !progressed && state.failure().is_none() {
            state.waiters.register(cx.waker());
            if let Some(front) = state.posted.front_mut() {
                if let Poll::Ready((result, buf)) = Pin::new(front).poll(cx) {
                    state.posted.pop_front();
                    self.took_receive(state, result, buf);
                    progressed = true;
                }
            }
            progressed |= self.poll_oldest_read(state, cx);
            if progressed {
                self.take_delivered(state);
            }
        }
        // Finished sends are collected in bulk (their buffers back to the pool) once half the
        // send queue is used; below, a failed send shows on the receives (flushed) anyway.
        if state.sending.len() >= self.send_limit / 2 {
            progressed |= self.collect_sends(state);
        }
        state.protocol.poke();
        self.apply(state);
        if progressed {
            state.waiters.wake_all();
        }
        progressed
    }

    /// The operations forget the task of `waker`, which handed its place on: whoever polls
    /// them next registers anew (see [`super::waiting`]).
    pub(crate) fn forget(&self, state: &State, waker: &Waker) {
        if let Some(front) = state.posted.front() {
            front.stop_waiting(waker);
        }
        for (_, read) in &state.reads {
            read.stop_waiting(waker);
        }
        if let Some(front) = state.sending.front() {
            front.stop_waiting(waker);
        }
    }

    /// Does what the protocol asked for, in order.
    pub(crate) fn apply(&self, state: &mut State) {
        while let Some(action) = state.protocol.poll_action() {
            match action {
                Action::Control { header, token } => {
                    let payload = token.map(u32::to_le_bytes);
                    let len = HEADER_LEN + payload.map_or(0, |p| p.len());
                    match self.pool.alloc(len) {
                        Ok(mut message) => {
                            header.write(&mut message[..HEADER_LEN]);
                            if let Some(payload) = payload {
                                message[HEADER_LEN..HEADER_LEN + DONE_LEN]
                                    .copy_from_slice(&payload);
                            }
                            state.sending.push_back(self.qp.send(message));
                        }
                        Err(err) => {
                            state.protocol.on_send_done(Ok(()));
                            state.protocol.fail(err);
                        }
                    }
                }
                Action::Repost => match self.pool.alloc(self.receive_len) {
                    Ok(buf) => state.posted.push_back(self.qp.recv(buf)),
                    Err(err) => {
                        state.protocol.fail(err);
                    }
                },
                Action::Read { read, from } => {
                    let len = from.len as usize;
                    let into = self
                        .read_pool
                        .alloc(len)
                        .or_else(|_| self.qp.pd().alloc(len, Access::LOCAL));
                    match into {
                        Ok(into) => {
                            let remote = RemoteRegion {
                                addr: from.addr,
                                len: from.len,
                                rkey: from.rkey,
                            };
                            state.reads.push_back((read, self.qp.read(into, remote)));
                        }
                        Err(err) => state.protocol.on_read(read, Err(err)),
                    }
                }
                Action::Unexpose(token) => {
                    if let Some(exposed) = state.exposed.remove(&token) {
                        exposed.take_down(true);
                    }
                }
                Action::UnexposeAll => {
                    for (_, exposed) in state.exposed.drain() {
                        exposed.take_down(false);
                    }
                }
            }
        }
    }

    /// Takes the receives and reads whose completions a poll of the CQ delivered already,
    /// oldest first. Returns whether there were any.
    fn take_delivered(&self, state: &mut State) -> bool {
        let mut taken = false;
        while state.failure().is_none() {
            let Some(front) = state.posted.front_mut() else {
                break;
            };
            let Some((result, buf)) = front.take_if_done() else {
                break;
            };
            state.posted.pop_front();
            self.took_receive(state, result, buf);
            taken = true;
        }
        while let Some((_, front)) = state.reads.front_mut() {
            let Some((result, data)) = front.take_if_done() else {
                // Reads finish in the order they were posted.
                break;
            };
            let Some((read, _)) = state.reads.pop_front() else {
                break;
            };
            taken = true;
            self.finished_read(state, read, result.map(|()| data));
        }
        taken
    }

    /// Polls the oldest read still in flight (registering this task for it). Returns whether
    /// it finished.
    fn poll_oldest_read(&self, state: &mut State, cx: &mut TaskContext<'_>) -> bool {
        let Some((_, front)) = state.reads.front_mut() else {
            return false;
        };
        let Poll::Ready((result, data)) = Pin::new(front).poll(cx) else {
            return false;
        };
        let Some((read, _)) = state.reads.pop_front() else {
            return false;
        };
        self.finished_read(state, read, result.map(|()| data));
        true
    }

    /// The read `read` of a large message of the peer finished with `result`.
    fn finished_read(&self, state: &mut State, read: u64, result: Result<LocalBuf>) {
        state.stats.rendezvous_received += u64::from(result.is_ok());
        state.protocol.on_read(read, result);
        self.apply(state);
    }

    /// A receive completed with `result` into `buf`.
    fn took_receive(&self, state: &mut State, result: Result<Received>, buf: LocalBuf) {
        match result {
            Ok(received) => {
                let taken = Self::incoming(buf, received.len)
                    .and_then(|(header, incoming)| state.protocol.on_message(header, incoming));
                if let Err(problem) = taken {
                    // A peer that breaks the protocol is not talked to any more.
                    let _ = self.qp.shared.shut_down(QpShutdownReason::Application);
                    state.protocol.fail(Error::BadMessage { problem });
                }
            }
            Err(err) => {
                state.protocol.fail(err);
            }
        }
        self.apply(state);
    }

    /// Decodes one received message of `len` bytes in `buf`.
    fn incoming(
        mut buf: LocalBuf,
        len: usize,
    ) -> std::result::Result<(Header, Incoming<LocalBuf>), super::header::HeaderProblem> {
        let len = len.min(buf.len());
        let header = Header::read(&buf[..len])?;
        let incoming = match header.kind {
            Kind::Credit => Incoming::Credit,
            Kind::Done => Incoming::Done(u32::from_le_bytes(
                buf[HEADER_LEN..HEADER_LEN + DONE_LEN]
                    .try_into()
                    .unwrap_or_default(),
            )),
            Kind::Data => {
                let mut data = buf.split_off(HEADER_LEN);
                drop(data.split_off(len - HEADER_LEN));
                Incoming::Data(data)
            }
            Kind::Request => Incoming::Request(Rendezvous::read(&buf[HEADER_LEN..len])),
        };
        Ok((header, incoming))
    }

    /// Takes the sends a poll of the CQ found finished, oldest first, without polling it (the
    /// receives' polls do). A failed send fails the messenger. Returns whether any finished.
    fn collect_sends(&self, state: &mut State) -> bool {
        let mut collected = false;
        while let Some(front) = state.sending.front_mut() {
            let Some((result, buf)) = front.take_if_done() else {
                break;
            };
            state.sending.pop_front();
            collected = true;
            Self::send_done(state, result, &buf);
        }
        self.apply(state);
        collected
    }

    /// A send of `message` finished with `result`. A data message or a rendezvous request
    /// that failed may not have reached the peer; a control message's failure loses nothing
    /// the application wrote (credits and "read it" words end with the connection anyway).
    fn send_done(state: &mut State, result: Result<()>, message: &LocalBuf) {
        if result.is_err() && Header::read(message).is_ok_and(|h| h.kind.carries_data()) {
            state.protocol.lost_data();
        }
        state.protocol.on_send_done(result);
    }

    /// Ready once at most `keep` sends are in flight (or the messenger failed); else the
    /// oldest send will wake this task when it finishes.
    pub(crate) fn poll_sends_down_to(
        &self,
        state: &mut State,
        keep: usize,
        cx: &mut TaskContext<'_>,
    ) -> Poll<()> {
        self.poll_sends(state, keep, false, cx)
    }

    /// Ready once every send finished, even after the messenger failed (a failed queue pair
    /// flushes what it holds at once): a flush learns so whether each reached the peer. A
    /// flush that gave up at the failure failed for a credit message still in flight, or a
    /// send whose good completion was not taken yet, when the peer had every byte.
    pub(crate) fn poll_sends_finished(
        &self,
        state: &mut State,
        cx: &mut TaskContext<'_>,
    ) -> Poll<()> {
        self.poll_sends(state, 0, true, cx)
    }

    fn poll_sends(
        &self,
        state: &mut State,
        keep: usize,
        past_failure: bool,
        cx: &mut TaskContext<'_>,
    ) -> Poll<()> {
        self.collect_sends(state);
        while state.sending.len() > keep && (past_failure || state.failure().is_none()) {
            state.waiters.register(cx.waker());
            let Some(front) = state.sending.front_mut() else {
                break;
            };
            let Poll::Ready((result, buf)) = Pin::new(front).poll(cx) else {
                return Poll::Pending;
            };
            state.sending.pop_front();
            Self::send_done(state, result, &buf);
            self.apply(state);
        }
        Poll::Ready(())
    }

    /// Posts a data message or a rendezvous request (its gate was open), spending a credit
    /// and a place in the send queue; the credits owed go with it. A queue pair that cannot
    /// post any more fails the messenger.
    pub(crate) fn post(
        &self,
        state: &mut State,
        kind: Kind,
        imm: Option<u32>,
        mut message: LocalBuf,
    ) -> Result<()> {
        state
            .protocol
            .post(kind, imm)
            .write(&mut message[..HEADER_LEN]);
        let mut op = self.qp.send(message);
        if let Some(err) = op.take_early_error() {
            // Never in flight: not a send to wait for (its caller gets the error).
            state.protocol.on_send_done(Ok(()));
            let failure = state.protocol.fail(err);
            self.apply(state);
            return Err(self.failed(&failure));
        }
        state.sending.push_back(op);
        Ok(())
    }

    /// Takes the next message, if it has arrived whole (its receive goes back to the peer),
    /// or the failure once the messages before it were taken.
    pub(crate) fn take_message(&self, state: &mut State) -> Option<Result<Message>> {
        self.learn_disconnect(state);
        let next = state.protocol.take();
        self.apply(state);
        match next? {
            Ok((data, imm)) => {
                state.stats.received(data.len());
                Some(Ok(Message { data, imm }))
            }
            Err(failure) => Some(Err(self.failed(&failure))),
        }
    }

    /// A failure that was not a disconnect may have been the first sign of one (a read of a
    /// dead peer's memory fails before the connection's disconnect event comes): once the
    /// connection, or the queue pair, knows of the disconnect, it becomes the failure.
    pub(crate) fn learn_disconnect(&self, state: &mut State) {
        if !state
            .failure()
            .is_some_and(|failure| !failure.is_disconnect())
        {
            return;
        }
        let qpn = self.qp.qpn();
        let disconnect = if self
            .connection
            .as_ref()
            .is_some_and(Connection::is_disconnected)
        {
            Some(Error::Disconnected {
                qpn,
                why: "the peer disconnected",
            })
        } else {
            self.qp
                .failure()
                .and_then(|failure| match failure.root_cause() {
                    Error::Disconnected { qpn, why } => {
                        Some(Error::Disconnected { qpn: *qpn, why })
                    }
                    _ => None,
                })
        };
        if let Some(disconnect) = disconnect {
            state.protocol.fail(disconnect);
            self.apply(state);
        }
    }

    pub(crate) fn failed(&self, failure: &Arc<Error>) -> Error {
        in_error(self.qp.qpn(), failure)
    }
}

#[cfg(feature = "metrics")]
impl crate::stats::metrics::Exported for Engine {
    fn export(&self) {
        use crate::stats::metrics;
        let stats = crate::wake::lock(&self.state).stats;
        let labels = metrics::qp_labels(self.qp.pd().context().device_name(), self.qp.qpn());
        metrics::record_messenger(&stats, &labels);
    }
}

/// The error a call of a messenger whose queue pair `qpn` failed with `failure` returns.
/// A failure that is already "queue pair `qpn` is in the error state" (a post refused
/// after the queue pair failed) is not wrapped again: its text would say so twice.
fn in_error(qpn: u32, failure: &Arc<Error>) -> Error {
    let cause = match &**failure {
        Error::QpInError { qpn: failed, cause } if *failed == qpn => cause.clone(),
        _ => failure.clone(),
    };
    Error::QpInError { qpn, cause }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::QpShutdownReason;

    /// The error state is named once, whether the messenger's failure was recorded as the
    /// queue pair's cause or as a post refused because of it.
    #[test]
    fn in_error_names_the_error_state_once() {
        let cause = Arc::new(Error::Shutdown {
            qpn: 7,
            reason: QpShutdownReason::Application,
        });
        let refused = Arc::new(Error::QpInError {
            qpn: 7,
            cause: cause.clone(),
        });
        for failure in [&cause, &refused] {
            let text = in_error(7, failure).to_string();
            assert_eq!(text.matches("is in the error state").count(), 1, "{text}");
            assert!(text.contains(&cause.to_string()), "{text}");
        }
        // Another queue pair's error state is a cause worth telling.
        let other = Arc::new(Error::QpInError { qpn: 8, cause });
        let text = in_error(7, &other).to_string();
        assert!(
            text.contains("queue pair 8 is in the error state"),
            "{text}"
        );
    }
}
