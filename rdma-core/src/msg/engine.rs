//! The messenger's engine: receives taken in order, credits counted and returned, and the
//! two halves of a rendezvous (reading a peer's large message, releasing our own once read).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};

use super::handshake::PeerSizes;
use super::header::{Header, HeaderProblem, Kind, Rendezvous, DONE_LEN, HEADER_LEN};
use super::waiting::Waiters;
use super::Message;
use crate::cm::Connection;
use crate::error::{Error, QpShutdownReason, Result};
use crate::mr::{Access, LocalBuf};
use crate::op::{Done, Op, Received, Recv};
use crate::pool::MemoryPool;
use crate::qp::QueuePair;
use crate::remote::RemoteRegion;

pub(crate) struct Engine {
    pub(crate) qp: QueuePair,
    pub(crate) pool: MemoryPool,
    /// Large messages are read into blocks of this pool (registered once, reused), or, when
    /// it has none free, into a registration of their own.
    pub(crate) read_pool: MemoryPool,
    /// Bytes of each posted receive: the header and the largest eager payload.
    pub(crate) receive_len: usize,
    /// This side's largest message: a larger rendezvous request is refused.
    pub(crate) max_message: usize,
    /// What the peer's receives and messages take.
    pub(crate) peer: PeerSizes,
    /// Return credits once this many receives were posted again without telling the peer.
    pub(crate) credit_batch: usize,
    /// Sends (messages, requests and control messages) in flight at most: the send queue's
    /// depth less what the reads of large messages take ([`READS_IN_FLIGHT`]).
    pub(crate) send_limit: usize,
    pub(crate) state: Mutex<State>,
    /// The connection the messenger owns, if it made it.
    pub(crate) connection: Option<Connection>,
}

/// Something that arrived, in arrival order.
pub(crate) enum Arrival {
    Message(Message),
    /// A large message to read from the sender, waiting for one of the reads in flight to
    /// finish (at most [`READS_IN_FLIGHT`] at once).
    Announced {
        remote: RemoteRegion,
        token: u32,
        imm: Option<u32>,
    },
    /// A large message being read from the sender.
    Reading {
        op: Op<LocalBuf, Done>,
        token: u32,
        imm: Option<u32>,
    },
}

/// Large messages read at once: two keep the link busy while the next one starts, and bound
/// what a peer's announcements can make this side allocate to two of its largest messages.
pub(crate) const READS_IN_FLIGHT: usize = 2;

pub(crate) struct State {
    /// Receives posted, oldest first: they complete in this order.
    pub(crate) posted: VecDeque<Op<LocalBuf, Recv>>,
    /// Messages received and not taken yet (at most the depth: their receives are posted
    /// again, and credited to the peer, only when they are taken).
    pub(crate) arrived: VecDeque<Arrival>,
    /// Sends posted, oldest first (a send queue completes in order): kept, not dropped, so
    /// that the send queue's room is known and a failed send fails the messenger.
    pub(crate) sending: VecDeque<Op<LocalBuf, Done>>,
    /// Sends the peer has a receive posted for.
    pub(crate) credits: usize,
    /// Receives posted again since the peer was last told.
    pub(crate) owed: usize,
    /// Some of the owed receives had taken more than a credit message: the peer spent
    /// credits it may need to say it read our large message (see `return_credits`).
    pub(crate) owed_beyond_credit_messages: bool,
    /// Rendezvous done messages waiting for a credit.
    pub(crate) done_to_send: VecDeque<u32>,
    /// Our large messages the peer may be reading, by token: exposed until it says done.
    pub(crate) exposed: HashMap<u32, LocalBuf>,
    pub(crate) next_token: u32,
    /// Why the messenger stopped, once it did.
    pub(crate) failure: Option<Arc<Error>>,
    /// Tasks waiting in `send`, `recv` or `flush`, and the one the operations will wake.
    pub(crate) waiters: Waiters,
}

impl State {
    pub(crate) fn new(posted: VecDeque<Op<LocalBuf, Recv>>, credits: usize) -> State {
        State {
            posted,
            arrived: VecDeque::new(),
            sending: VecDeque::new(),
            credits,
            owed: 0,
            owed_beyond_credit_messages: false,
            done_to_send: VecDeque::new(),
            exposed: HashMap::new(),
            next_token: 0,
            failure: None,
            waiters: Waiters::default(),
        }
    }

    /// The credits to return now (at most what a header carries).
    pub(crate) fn take_owed(&mut self) -> u16 {
        let now = self.owed.min(u16::MAX as usize);
        self.owed -= now;
        self.owed_beyond_credit_messages = false;
        now as u16
    }

    /// Records why the messenger stopped (the first reason stays) and returns it.
    fn fail(&mut self, err: Error) -> Arc<Error> {
        // The queue pair is failed or being failed: the peer can no longer read.
        self.exposed.clear();
        self.failure.get_or_insert_with(|| Arc::new(err)).clone()
    }
}

impl Engine {
    /// Takes what completed, in order: receives (credits counted, credit and done messages'
    /// receives posted again at once, data and rendezvous requests queued) and the reads of
    /// large messages. Any task may drive it: one that waits to send still learns of its
    /// credits and of the peer's done messages. Returns whether anything completed; when
    /// nothing did, the task is registered to be woken by the oldest receive and the oldest
    /// read (in busy-poll mode, after polling the CQ for a while).
    ///
    /// What a poll of the CQ already delivered is taken first, without polling it again: a
    /// task that finds messages waiting neither spins nor registers for the next one.
    pub(crate) fn pump(&self, state: &mut State, cx: &mut TaskContext<'_>) -> bool {
        let mut progressed = self.take_delivered(state);
        if !progressed && state.failure.is_none() {
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
        self.send_done(state);
        // Receives of control messages were posted again above: a side that only sends (and
        // so never takes a message) must still return them, or a peer that has to say "done"
        // runs out of credits while this side waits for that word.
        self.return_credits(state);
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
        for arrival in &state.arrived {
            if let Arrival::Reading { op, .. } = arrival {
                op.stop_waiting(waker);
            }
        }
        if let Some(front) = state.sending.front() {
            front.stop_waiting(waker);
        }
    }

    /// Takes the receives and reads whose completions a poll of the CQ delivered already,
    /// oldest first. Returns whether there were any.
    fn take_delivered(&self, state: &mut State) -> bool {
        let mut taken = false;
        while state.failure.is_none() {
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
        for at in 0..state.arrived.len() {
            let Arrival::Reading { op, .. } = &mut state.arrived[at] else {
                continue;
            };
            let Some((result, data)) = op.take_if_done() else {
                // Reads finish in the order they were posted.
                break;
            };
            taken = true;
            if !self.read_finished(state, at, result, data) {
                break;
            }
        }
        taken
    }

    /// Polls the oldest read still in flight (registering this task for it). Returns whether
    /// it finished.
    fn poll_oldest_read(&self, state: &mut State, cx: &mut TaskContext<'_>) -> bool {
        let Some(at) = state
            .arrived
            .iter()
            .position(|arrival| matches!(arrival, Arrival::Reading { .. }))
        else {
            return false;
        };
        let Arrival::Reading { op, .. } = &mut state.arrived[at] else {
            return false;
        };
        let Poll::Ready((result, data)) = Pin::new(op).poll(cx) else {
            return false;
        };
        self.read_finished(state, at, result, data);
        true
    }

    /// The read of the large message `arrived[at]` finished with `result`: it becomes a
    /// message, and its sender is to be told. Returns false when it failed (the messenger
    /// then has failed).
    fn read_finished(
        &self,
        state: &mut State,
        at: usize,
        result: Result<()>,
        data: LocalBuf,
    ) -> bool {
        let Arrival::Reading { token, imm, .. } = state.arrived[at] else {
            return true;
        };
        match result {
            Ok(()) => {
                state.arrived[at] = Arrival::Message(Message { data, imm });
                state.done_to_send.push_back(token);
                self.start_reads(state);
                true
            }
            Err(err) => {
                // Its op is spent: it must not stay to be polled again.
                state.arrived.remove(at);
                state.fail(err);
                false
            }
        }
    }

    /// A receive completed with `result` into `buf`.
    fn took_receive(&self, state: &mut State, result: Result<Received>, buf: LocalBuf) {
        match result {
            Ok(received) => {
                if let Err(problem) = self.take(state, buf, received.len) {
                    // A peer that breaks the protocol is not talked to any more.
                    let _ = self.qp.shared.shut_down(QpShutdownReason::Application);
                    state.fail(Error::BadMessage { problem });
                }
            }
            Err(err) => {
                state.fail(err);
            }
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
        if state.credits + returned > self.peer.depth {
            return Err(HeaderProblem::TooManyCredits {
                returned: header.credits,
                max: self.peer.depth - state.credits,
            });
        }
        state.credits += returned;
        match header.kind {
            Kind::Credit => {
                drop(buf);
                self.repost(state, Kind::Credit);
            }
            Kind::Done => {
                let token = u32::from_le_bytes(
                    buf[HEADER_LEN..HEADER_LEN + DONE_LEN]
                        .try_into()
                        .unwrap_or_default(),
                );
                drop(buf);
                // Read: the exposure ends (its registration goes, so the key stops working).
                if state.exposed.remove(&token).is_none() {
                    return Err(HeaderProblem::UnknownToken(token));
                }
                self.repost(state, Kind::Done);
            }
            Kind::Data => {
                let mut data = buf.split_off(HEADER_LEN);
                drop(data.split_off(len - HEADER_LEN));
                drop(buf);
                state.arrived.push_back(Arrival::Message(Message {
                    data,
                    imm: header.imm,
                }));
            }
            Kind::Request => {
                let request = Rendezvous::read(&buf[HEADER_LEN..len]);
                drop(buf);
                if request.len > self.max_message as u64 {
                    return Err(HeaderProblem::RendezvousTooLarge {
                        len: request.len,
                        max: self.max_message,
                    });
                }
                state.arrived.push_back(Arrival::Announced {
                    remote: RemoteRegion {
                        addr: request.addr,
                        len: request.len,
                        rkey: request.rkey,
                    },
                    token: request.token,
                    imm: header.imm,
                });
                self.start_reads(state);
            }
        }
        Ok(())
    }

    /// Starts reading announced large messages, oldest first, while fewer than
    /// [`READS_IN_FLIGHT`] are being read.
    fn start_reads(&self, state: &mut State) {
        let mut reading = state
            .arrived
            .iter()
            .filter(|arrival| matches!(arrival, Arrival::Reading { .. }))
            .count();
        for at in 0..state.arrived.len() {
            if reading >= READS_IN_FLIGHT || state.failure.is_some() {
                return;
            }
            let Arrival::Announced { remote, token, imm } = state.arrived[at] else {
                continue;
            };
            let len = remote.len as usize;
            let into = match self
                .read_pool
                .alloc(len)
                .or_else(|_| self.qp.pd().alloc(len, Access::LOCAL))
            {
                Ok(into) => into,
                Err(err) => {
                    state.fail(err);
                    return;
                }
            };
            state.arrived[at] = Arrival::Reading {
                op: self.qp.read(into, remote),
                token,
                imm,
            };
            reading += 1;
        }
    }

    /// Takes the sends a poll of the CQ found finished, oldest first, without polling it (the
    /// receives' polls do). A failed send fails the messenger. Returns whether any finished.
    fn collect_sends(&self, state: &mut State) -> bool {
        let mut collected = false;
        while let Some(front) = state.sending.front_mut() {
            let Some((result, _buf)) = front.take_if_done() else {
                break;
            };
            state.sending.pop_front();
            collected = true;
            if let Err(err) = result {
                state.fail(err);
            }
        }
        collected
    }

    /// Ready once at most `keep` sends are in flight (or the messenger failed); else the
    /// oldest send will wake this task when it finishes.
    pub(crate) fn poll_sends_down_to(
        &self,
        state: &mut State,
        keep: usize,
        cx: &mut TaskContext<'_>,
    ) -> Poll<()> {
        self.collect_sends(state);
        while state.sending.len() > keep && state.failure.is_none() {
            state.waiters.register(cx.waker());
            let Some(front) = state.sending.front_mut() else {
                break;
            };
            let Poll::Ready((result, _buf)) = Pin::new(front).poll(cx) else {
                return Poll::Pending;
            };
            state.sending.pop_front();
            if let Err(err) = result {
                state.fail(err);
            }
        }
        Poll::Ready(())
    }

    /// Sends the done messages waiting, while there are credits (a control message may use
    /// the credit kept back from data).
    fn send_done(&self, state: &mut State) {
        while state.credits > 0 && state.failure.is_none() && state.sending.len() < self.send_limit
        {
            let Some(&token) = state.done_to_send.front() else {
                break;
            };
            if self
                .send_control(state, Kind::Done, &token.to_le_bytes())
                .is_err()
            {
                break;
            }
            state.done_to_send.pop_front();
        }
    }

    /// Posts one more receive (for one that took a message of kind `took`), owed to the
    /// peer as a credit.
    pub(crate) fn repost(&self, state: &mut State, took: Kind) {
        match self.pool.alloc(self.receive_len) {
            Ok(buf) => {
                state.posted.push_back(self.qp.recv(buf));
                state.owed += 1;
                state.owed_beyond_credit_messages |= took != Kind::Credit;
            }
            Err(err) => {
                state.fail(err);
            }
        }
    }

    /// Tells the peer about receives posted again, once enough are owed, with the credit
    /// kept for it. While this side waits for the peer to read a large message, at once: the
    /// peer needs a credit to say it is done. Not at once for receives that only took credit
    /// messages: two sides both waiting would otherwise answer each other's credit messages
    /// for ever.
    pub(crate) fn return_credits(&self, state: &mut State) {
        let urgent = !state.exposed.is_empty() && state.owed_beyond_credit_messages;
        let batch = if urgent { 1 } else { self.credit_batch };
        if state.owed >= batch && state.credits > 0 && state.sending.len() < self.send_limit {
            let _ = self.send_control(state, Kind::Credit, &[]);
        }
    }

    /// Sends a control message (credits returned with it), spending one credit and a place
    /// in the send queue (the caller checked both).
    fn send_control(&self, state: &mut State, kind: Kind, payload: &[u8]) -> Result<()> {
        let mut message = self.pool.alloc(HEADER_LEN + payload.len())?;
        state.credits -= 1;
        Header {
            kind,
            credits: state.take_owed(),
            imm: None,
        }
        .write(&mut message[..HEADER_LEN]);
        message[HEADER_LEN..].copy_from_slice(payload);
        let op = self.qp.send(message);
        state.sending.push_back(op);
        Ok(())
    }

    /// Posts a data message or a rendezvous request, spending one credit and a place in the
    /// send queue (the caller checked both); the credits owed go with it. A queue pair that
    /// cannot post any more fails the messenger.
    pub(crate) fn post(
        &self,
        state: &mut State,
        kind: Kind,
        imm: Option<u32>,
        mut message: LocalBuf,
    ) -> Result<()> {
        state.credits -= 1;
        Header {
            kind,
            credits: state.take_owed(),
            imm,
        }
        .write(&mut message[..HEADER_LEN]);
        let mut op = self.qp.send(message);
        if let Some(err) = op.take_early_error() {
            let failure = state.fail(err);
            return Err(self.failed(&failure));
        }
        state.sending.push_back(op);
        Ok(())
    }

    /// Takes the next message, if it has arrived whole: its receive goes back to the peer.
    pub(crate) fn take_message(&self, state: &mut State) -> Option<Message> {
        if !matches!(state.arrived.front(), Some(Arrival::Message(_))) {
            return None;
        }
        let Some(Arrival::Message(message)) = state.arrived.pop_front() else {
            return None;
        };
        self.repost(state, Kind::Data);
        self.return_credits(state);
        Some(message)
    }

    pub(crate) fn failed(&self, failure: &Arc<Error>) -> Error {
        Error::QpInError {
            qpn: self.qp.qpn(),
            cause: failure.clone(),
        }
    }
}
