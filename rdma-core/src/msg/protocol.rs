//! The messenger's protocol as a state machine with no I/O: credits counted and returned,
//! the two halves of a rendezvous, and the order in which messages and a failure reach the
//! application.
//!
//! It takes events (a message from the peer arrived, a read of a large message finished, a
//! send finished, the application sends or takes a message, a failure) and queues
//! [`Action`]s (post a control message, post a receive again, read a large message, end an
//! exposure). The engine ([`super::engine`]) is the I/O around it: it posts what the actions
//! say and feeds the completions back; the simulation in `super::simulation` drives two of
//! them over a simulated link instead. Nothing here touches a queue pair, so every
//! interleaving of two peers can be tried deterministically.
//!
//! `M` is a message's bytes: an owned registered buffer in the engine, a vector in the
//! simulation.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use super::header::{Header, HeaderProblem, Kind, Rendezvous};
use crate::error::Error;

/// Large messages read at once: two keep the link busy while the next one starts, and bound
/// what a peer's announcements can make this side allocate to two of its largest messages.
pub(crate) const READS_IN_FLIGHT: usize = 2;

/// Large messages of the peer a side holds in memory at once: being read (at most
/// [`READS_IN_FLIGHT`]) or read and not yet taken by the application. A slow application
/// holds further reads back (their senders keep them exposed meanwhile): what a peer makes
/// this side register for its large messages is at most this many of them.
pub(crate) const LARGE_IN_MEMORY: usize = 4;

/// Large messages a side exposes at once (a further one waits until the peer has read one):
/// as many as the peer reads and holds at once ([`LARGE_IN_MEMORY`]), so that none waits
/// exposed for nothing, and a bound on the done messages that can come at once.
pub(crate) const EXPOSED_AT_ONCE: usize = LARGE_IN_MEMORY;

/// Credit messages (credits only) that can be at a side not taken in yet: each returns at
/// least a quarter of the peer's depth ([`Limits::credit_batch_for`]), and no more than a
/// depth's worth of credits can be on their way back at once.
pub(crate) const CREDIT_MESSAGES_AT_ONCE: usize = 4;

/// Receives a side posts beyond its depth, for control messages (credits and dones), which
/// take no credit: with the one receive that data always leaves free (a data message needs
/// two credits), room for [`CREDIT_MESSAGES_AT_ONCE`] credit messages and one done message
/// per exposure ([`EXPOSED_AT_ONCE`]). So a control message never waits for a credit: a
/// side at zero credits can always return credits, and a credit message is never answered
/// by one.
pub(crate) const CONTROL_RECEIVES: usize = CREDIT_MESSAGES_AT_ONCE + EXPOSED_AT_ONCE - 1;

/// The sizes both sides run with, as far as the protocol needs them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Receives this side keeps posted for the peer's data.
    #[cfg_attr(not(test), allow(dead_code))] // the simulation's bounds
    pub(crate) depth: usize,
    /// Return credits once this many receives were posted again without telling the peer.
    pub(crate) credit_batch: usize,
    /// The peer's depth: this side's credits at the start.
    pub(crate) peer_depth: usize,
    /// The largest payload the peer's receives take.
    pub(crate) peer_eager_limit: usize,
    /// The largest payload one of this side's send buffers holds (they are sized by this
    /// side's eager limit, which may be below the peer's).
    pub(crate) send_buffer: usize,
    /// The largest message this side takes: a larger rendezvous request is refused.
    pub(crate) max_message: usize,
    /// Sends (messages and control messages) in flight at most.
    pub(crate) send_limit: usize,
}

impl Limits {
    /// Credits are returned in batches of a quarter of the depth, rounded up: so at most
    /// [`CREDIT_MESSAGES_AT_ONCE`] credit messages carry a depth's worth.
    pub(crate) fn credit_batch_for(depth: usize) -> usize {
        depth.div_ceil(CREDIT_MESSAGES_AT_ONCE).max(1)
    }

    /// Receives a side with these limits keeps posted: its depth for data, and
    /// [`CONTROL_RECEIVES`] more for control messages.
    #[cfg_attr(not(test), allow(dead_code))] // the simulation's bounds
    pub(crate) fn receives(&self) -> usize {
        self.depth + CONTROL_RECEIVES
    }
}

/// What the engine (or the simulation) is to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Post a control message with this header (credits taken already); a rendezvous done
    /// carries `token` after it.
    Control { header: Header, token: Option<u32> },
    /// Post one more receive.
    Repost,
    /// Read the large message `read` from the peer's memory `from` (its length is `from.len`).
    Read { read: u64, from: Rendezvous },
    /// The peer has read our large message `token`: its registration may go.
    Unexpose(u32),
    /// The messenger failed: every exposure ends (the peer can no longer read).
    UnexposeAll,
}

/// What a message from the peer carried, after its header.
#[derive(Debug)]
pub(crate) enum Incoming<M> {
    Data(M),
    Credit,
    Request(Rendezvous),
    Done(u32),
}

/// Something that arrived, in arrival order.
#[derive(Debug)]
enum Arrival<M> {
    /// A message whole (`large`: read from the peer, counted in [`LARGE_IN_MEMORY`]).
    Message {
        data: M,
        imm: Option<u32>,
        large: bool,
    },
    /// A large message to read, waiting for a read to finish.
    Announced { from: Rendezvous, imm: Option<u32> },
    /// A large message being read (`read` names it to the engine).
    Reading {
        read: u64,
        token: u32,
        imm: Option<u32>,
    },
}

/// How a message of some length goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// In one send, into a receive of the peer.
    Eager,
    /// By rendezvous: the peer reads it.
    Rendezvous,
}

/// Whether a message may be posted now.
#[derive(Debug)]
pub(crate) enum Gate {
    Open,
    /// No credit, no room in the send queue, or too much exposed: wait for progress.
    Wait,
    Failed(Arc<Error>),
}

/// What the application takes: a message's bytes and immediate, or the failure.
pub(crate) type Taken<M> = Result<(M, Option<u32>), Arc<Error>>;

/// One side's protocol state.
pub(crate) struct Protocol<M> {
    limits: Limits,
    /// Sends the peer has a receive posted for.
    credits: usize,
    /// Receives that took data messages or rendezvous requests, posted again since the peer
    /// was last told.
    owed: usize,
    arrived: VecDeque<Arrival<M>>,
    /// Rendezvous done messages waiting for room in the send queue.
    done_to_send: VecDeque<u32>,
    /// Our large messages the peer may be reading, by token.
    exposed: BTreeSet<u32>,
    next_token: u32,
    next_read: u64,
    /// Sends posted and not finished.
    sending: usize,
    failure: Option<Arc<Error>>,
    /// Something sent may not have reached the peer: a data send failed, or large messages were
    /// still exposed, not known to be read, when the protocol failed.
    lost: bool,
    actions: VecDeque<Action>,
}

impl<M> Protocol<M> {
    pub(crate) fn new(limits: Limits) -> Protocol<M> {
        Protocol {
            limits,
            credits: limits.peer_depth,
            owed: 0,
            arrived: VecDeque::new(),
            done_to_send: VecDeque::new(),
            exposed: BTreeSet::new(),
            next_token: 0,
            next_read: 0,
            sending: 0,
            failure: None,
            lost: false,
            actions: VecDeque::new(),
        }
    }

    /// The next thing to do, oldest first.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    #[cfg_attr(not(test), allow(dead_code))] // the simulation's checks
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn credits(&self) -> usize {
        self.credits
    }

    pub(crate) fn owed(&self) -> usize {
        self.owed
    }

    #[cfg_attr(not(test), allow(dead_code))] // the simulation's checks
    pub(crate) fn sending(&self) -> usize {
        self.sending
    }

    pub(crate) fn arrived(&self) -> usize {
        self.arrived.len()
    }

    pub(crate) fn done_to_send(&self) -> usize {
        self.done_to_send.len()
    }

    pub(crate) fn failure(&self) -> Option<&Arc<Error>> {
        self.failure.as_ref()
    }

    /// Large messages being read (what their reads registered).
    fn reading(&self) -> usize {
        self.arrived
            .iter()
            .filter(|arrival| matches!(arrival, Arrival::Reading { .. }))
            .count()
    }

    /// Large messages of the peer in memory: being read, or read and not taken yet.
    pub(crate) fn large_in_memory(&self) -> usize {
        self.arrived
            .iter()
            .filter(|arrival| {
                matches!(
                    arrival,
                    Arrival::Reading { .. } | Arrival::Message { large: true, .. }
                )
            })
            .count()
    }

    /// Whether a message of `kind` takes one of the peer's receives counted by credits (until
    /// the peer posts it again and says so).
    #[cfg_attr(not(test), allow(dead_code))] // the simulation's checks
    pub(crate) fn takes_credit(kind: Kind) -> bool {
        matches!(kind, Kind::Data | Kind::Request)
    }

    /// The peer's receives this side holds: messages taken in and not given to the
    /// application yet (their receives are posted again when they are).
    #[cfg_attr(not(test), allow(dead_code))] // the simulation's checks
    pub(crate) fn holding(&self) -> usize {
        self.arrived.len()
    }

    /// The most large messages a side with `limits` exposes at once.
    #[cfg_attr(not(test), allow(dead_code))] // the simulation's checks
    pub(crate) fn exposed_max(limits: &Limits) -> usize {
        let _ = limits;
        EXPOSED_AT_ONCE
    }

    /// The largest message that goes in one send: what the peer's receives take and this
    /// side's send buffers hold.
    pub(crate) fn eager_limit(&self) -> usize {
        self.limits.peer_eager_limit.min(self.limits.send_buffer)
    }

    /// How a message of `len` bytes goes to the peer.
    pub(crate) fn route(&self, len: usize) -> Route {
        if len <= self.eager_limit() {
            Route::Eager
        } else {
            Route::Rendezvous
        }
    }

    /// Records why the messenger stopped and returns it. The first reason stays, unless a
    /// disconnect comes after a failure that was not one: a peer that dies in the middle of
    /// a rendezvous shows first as a failed read of its memory, and then as the disconnect,
    /// which is what happened ([`Error::is_disconnect`] must say so).
    pub(crate) fn fail(&mut self, err: Error) -> Arc<Error> {
        let failure = match self.failure.take() {
            None => {
                // The queue pair is failed or being failed: the peer can no longer read.
                self.lost |= !self.exposed.is_empty();
                self.exposed.clear();
                self.actions.push_back(Action::UnexposeAll);
                Arc::new(err)
            }
            Some(first) if !first.is_disconnect() && err.is_disconnect() => Arc::new(err),
            Some(first) => first,
        };
        self.failure = Some(failure.clone());
        failure
    }

    /// A message from the peer arrived with `header`. A message that breaks the protocol is
    /// refused (the caller fails the messenger).
    pub(crate) fn on_message(
        &mut self,
        header: Header,
        incoming: Incoming<M>,
    ) -> Result<(), HeaderProblem> {
        let returned = usize::from(header.credits);
        if self.credits + returned > self.limits.peer_depth {
            return Err(HeaderProblem::TooManyCredits {
                returned: header.credits,
                max: self.limits.peer_depth - self.credits,
            });
        }
        self.credits += returned;
        match incoming {
            // A control message's receive is posted again at once, and not owed: the peer
            // counts it among its control receives, which need no credit.
            Incoming::Credit => self.actions.push_back(Action::Repost),
            Incoming::Done(token) => {
                // Read: the exposure ends (its registration goes, so the key stops working).
                if !self.exposed.remove(&token) {
                    return Err(HeaderProblem::UnknownToken(token));
                }
                self.actions.push_back(Action::Unexpose(token));
                self.actions.push_back(Action::Repost);
            }
            Incoming::Data(data) => self.arrived.push_back(Arrival::Message {
                data,
                imm: header.imm,
                large: false,
            }),
            Incoming::Request(from) => {
                if from.len > self.limits.max_message as u64 {
                    return Err(HeaderProblem::RendezvousTooLarge {
                        len: from.len,
                        max: self.limits.max_message,
                    });
                }
                self.arrived.push_back(Arrival::Announced {
                    from,
                    imm: header.imm,
                });
                self.start_reads();
            }
        }
        self.control();
        Ok(())
    }

    /// The read `read` finished: with the message's bytes, or failed.
    pub(crate) fn on_read(&mut self, read: u64, result: Result<M, Error>) {
        let Some(at) = self
            .arrived
            .iter()
            .position(|arrival| matches!(arrival, Arrival::Reading { read: r, .. } if *r == read))
        else {
            return;
        };
        let Arrival::Reading { token, imm, .. } = self.arrived[at] else {
            return;
        };
        match result {
            Ok(data) => {
                self.arrived[at] = Arrival::Message {
                    data,
                    imm,
                    large: true,
                };
                self.done_to_send.push_back(token);
                self.start_reads();
            }
            Err(err) => {
                // Its op is spent, and the messages after it can never be given without a
                // gap: the application gets those before it, then the failure.
                self.arrived.truncate(at);
                self.fail(err);
            }
        }
        self.control();
    }

    /// A send (a message or a control message) finished.
    pub(crate) fn on_send_done(&mut self, result: Result<(), Error>) {
        self.sending = self.sending.saturating_sub(1);
        if let Err(err) = result {
            self.fail(err);
        }
        self.control();
    }

    /// Whether this side has the credits a message needs (one of the peer's receives for it,
    /// and one kept for control messages).
    pub(crate) fn has_credit(&self) -> bool {
        self.credits >= 2
    }

    /// Whether a message by `route` may be posted now.
    pub(crate) fn gate(&self, route: Route) -> Gate {
        if let Some(failure) = &self.failure {
            return Gate::Failed(failure.clone());
        }
        // One credit (one of the peer's receives) and one place in the send queue stay for
        // control messages, so that both sides can always return credits and say a large
        // message was read; done messages waiting go first.
        let room = self.sending + 2 <= self.limits.send_limit;
        let exposable =
            route == Route::Eager || self.exposed.len() < Self::exposed_max(&self.limits);
        if self.has_credit() && room && exposable && self.done_to_send.is_empty() {
            Gate::Open
        } else {
            Gate::Wait
        }
    }

    /// A large message is about to be announced: its token (exposed from now on).
    pub(crate) fn expose(&mut self) -> u32 {
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        self.exposed.insert(token);
        token
    }

    /// A data message or rendezvous request is posted (its gate was open): its header, with
    /// the credits owed.
    pub(crate) fn post(&mut self, kind: Kind, imm: Option<u32>) -> Header {
        self.credits -= 1;
        self.sending += 1;
        Header {
            kind,
            credits: self.take_owed(),
            imm,
        }
    }

    /// The next message for the application, or the failure once the messages before it
    /// were taken; `None` while the next one has not arrived whole.
    pub(crate) fn take(&mut self) -> Option<Taken<M>> {
        if matches!(self.arrived.front(), Some(Arrival::Message { .. })) {
            let Some(Arrival::Message { data, imm, large }) = self.arrived.pop_front() else {
                return None;
            };
            if large {
                // Room for the next large message to be read.
                self.start_reads();
            }
            self.repost();
            self.control();
            return Some(Ok((data, imm)));
        }
        let failure = self.failure.clone()?;
        // The failure is final: a read that finishes after it was given is not delivered
        // (the application would see a message after the end).
        self.arrived.clear();
        Some(Err(failure))
    }

    /// Whether the peer has everything sent so far (each send finished, each large message
    /// read).
    pub(crate) fn flushed(&self) -> bool {
        self.sending == 0 && self.exposed.is_empty()
    }

    /// A send of the application's (a data message or a rendezvous request) failed: it may
    /// not have reached the peer.
    pub(crate) fn lost_data(&mut self) {
        self.lost = true;
    }

    /// Whether the peer got everything sent so far, even if the protocol failed since (the
    /// peer read its last message and went): every send finished well, every large message
    /// was read.
    pub(crate) fn delivered(&self) -> bool {
        self.flushed() && !self.lost
    }

    /// The credits to return now (at most what a header carries).
    fn take_owed(&mut self) -> u16 {
        let now = self.owed.min(u16::MAX as usize);
        self.owed -= now;
        now as u16
    }

    /// Posts one more receive (for one that took a data message or a rendezvous request),
    /// owed to the peer as a credit.
    fn repost(&mut self) {
        self.actions.push_back(Action::Repost);
        self.owed += 1;
    }

    /// Starts reading announced large messages, oldest first, while fewer than
    /// [`READS_IN_FLIGHT`] are being read and fewer than [`LARGE_IN_MEMORY`] are in memory.
    fn start_reads(&mut self) {
        let mut reading = self.reading();
        let mut in_memory = self.large_in_memory();
        for at in 0..self.arrived.len() {
            if reading >= READS_IN_FLIGHT || in_memory >= LARGE_IN_MEMORY || self.failure.is_some()
            {
                return;
            }
            let Arrival::Announced { from, imm } = self.arrived[at] else {
                continue;
            };
            let read = self.next_read;
            self.next_read += 1;
            self.arrived[at] = Arrival::Reading {
                read,
                token: from.token,
                imm,
            };
            self.actions.push_back(Action::Read { read, from });
            reading += 1;
            in_memory += 1;
        }
    }

    /// Sends the control messages due, which take no credit (they land in the peer's control
    /// receives) and only a place in the send queue (data leaves one for them): the done
    /// messages waiting, then the credits owed once a batch of them is. A credit message
    /// returns only receives that took data, never those of credit messages, so it is never
    /// answered by one: two idle sides do not talk.
    fn control(&mut self) {
        if self.failure.is_some() {
            return;
        }
        while self.sending < self.limits.send_limit {
            let Some(token) = self.done_to_send.pop_front() else {
                break;
            };
            self.send_control(Kind::Done, Some(token));
        }
        if self.owed >= self.limits.credit_batch && self.sending < self.limits.send_limit {
            self.send_control(Kind::Credit, None);
        }
    }

    fn send_control(&mut self, kind: Kind, token: Option<u32>) {
        self.sending += 1;
        let header = Header {
            kind,
            credits: self.take_owed(),
            imm: None,
        };
        self.actions.push_back(Action::Control { header, token });
    }

    /// Re-runs the control step (after the engine gave up a control send it could not make,
    /// or to flush what is due).
    pub(crate) fn poke(&mut self) {
        self.control();
    }
}
