//! Deterministic simulation of two messenger protocols ([`super::protocol`]) over a
//! simulated reliable, in-order link, with seeded random schedules (quinn-proto's model).
//!
//! Each schedule draws both sides' options (depths 2 to 64, eager limits that differ, send
//! queues of different sizes), the messages each side sends (sizes on both sides of both
//! eager limits), and then an interleaving: which packet arrives when, when each side's
//! tasks poll (a side whose application makes no call takes in nothing, as a messenger with
//! no task in it does), when the device finishes a read, when a send call gives up, how
//! slowly each application receives; in some schedules one side dies in the middle. Then the
//! applications stop sending and receive everything, and the link must settle.
//!
//! What must hold, whatever the schedule:
//! - every message that was posted is delivered once, intact and in order, and a message
//!   whose send call was dropped before it was posted is never delivered;
//! - a message never meets a peer with no receive posted (what RNR would be on the device);
//! - credits are conserved: for each direction, the sender's credits plus what its messages
//!   hold at the peer plus what the peer owes it or is returning make the peer's depth;
//! - what a side exposes, and what its peer holds registered for reading, stays within the
//!   bounds the documentation states;
//! - when the applications stop sending, everything settles: nothing in flight, nothing
//!   exposed, no send unfinished; a state where nothing can happen any more is a deadlock,
//!   and control messages that keep flowing with no application progress are a livelock;
//! - when a peer dies, the survivor gets the messages in order up to some point, then the
//!   failure (a disconnect once that is known), never a gap.
//!
//! A failure panics with the seed; `ANYRDMA_SIM_SEED=<seed>` runs that one schedule, with
//! `ANYRDMA_SIM_TRACE=1` printing its events; `ANYRDMA_SIM_SCHEDULES=<n>` runs the first `n`
//! schedules instead of all.

#[path = "../../../tests/seeded/mod.rs"]
mod seeded;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::header::{Header, Kind, Rendezvous, HEADER_LEN};
use super::protocol::{Action, Gate, Incoming, Limits, Protocol, Route, LARGE_IN_MEMORY};
use crate::error::Error;
use crate::wc::{WcStatus, WorkKind};
use seeded::Rng;

/// A message on the link.
#[derive(Debug, Clone)]
struct Packet {
    header: Header,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    Data(Vec<u8>),
    Credit,
    Request(Rendezvous),
    Done(u32),
}

/// A read of a large message of the peer, as the device does it.
struct Read {
    read: u64,
    from: Rendezvous,
    /// Set once the device finished it (its completion not yet taken).
    result: Option<Result<Vec<u8>, Error>>,
}

/// A send call of the application, pending.
struct SendCall {
    id: u64,
    bytes: Vec<u8>,
}

/// One side: its protocol, the I/O the engine would do, and its application.
struct Side {
    name: &'static str,
    protocol: Protocol<Vec<u8>>,
    /// Its receives posted and free.
    posted: usize,
    /// Its receives posted at the start: what it never exceeds.
    receives: usize,
    /// Messages in its receives, their completions not taken yet.
    received: VecDeque<Packet>,
    reads: VecDeque<Read>,
    /// Sends posted whose completions are ready, not yet taken (in order).
    sends_done: VecDeque<Result<(), Error>>,
    /// Sends posted, not delivered yet.
    sends_in_flight: usize,
    /// Large messages exposed to the peer, by token.
    exposed: BTreeMap<u32, Vec<u8>>,
    /// The largest payload one of its send buffers holds (the pool's largest block less the
    /// header).
    send_buffer: usize,
    /// Messages the application will send.
    to_send: VecDeque<(u64, Vec<u8>)>,
    send_call: Option<SendCall>,
    /// A recv or flush call is pending (its task polls the messenger).
    recv_call: bool,
    /// Messages posted, in order, as the peer must receive them.
    posted_messages: Vec<Vec<u8>>,
    /// Which of them went by rendezvous.
    posted_large: Vec<bool>,
    /// Large messages read and not taken by the application yet.
    large_held: usize,
    /// Messages the application took.
    delivered: Vec<Vec<u8>>,
    /// The failure `recv` gave the application, if any.
    failed: Option<Arc<Error>>,
    dead: bool,
    /// How likely its application calls recv in a step (a slow receiver is unlikely to).
    recv_eagerness: usize,
}

impl Side {
    fn new(name: &'static str, limits: Limits, eager_limit: usize) -> Side {
        let receives = limits.receives();
        Side {
            name,
            protocol: Protocol::new(limits),
            posted: receives,
            receives,
            received: VecDeque::new(),
            reads: VecDeque::new(),
            sends_done: VecDeque::new(),
            sends_in_flight: 0,
            exposed: BTreeMap::new(),
            send_buffer: send_buffer(eager_limit),
            to_send: VecDeque::new(),
            send_call: None,
            recv_call: false,
            posted_messages: Vec::new(),
            posted_large: Vec::new(),
            large_held: 0,
            delivered: Vec::new(),
            failed: None,
            dead: false,
            recv_eagerness: 1,
        }
    }

    /// Whether a task of its application polls the messenger now.
    fn calling(&self) -> bool {
        !self.dead && (self.send_call.is_some() || self.recv_call)
    }
}

/// A failed schedule: what went wrong, with the seed that reproduces it.
#[derive(Debug)]
struct Failure {
    seed: u64,
    what: String,
}

type Check = Result<(), String>;

struct World {
    rng: Rng,
    sides: [Side; 2],
    /// Packets in flight: `links[0]` from side 0 to side 1, `links[1]` back.
    links: [VecDeque<Packet>; 2],
    trace: bool,
    /// Messages taken off the link since the applications last made progress.
    since_progress: usize,
}

/// Control messages with no application progress after which the link counts as livelocked.
const LIVELOCK_PACKETS: usize = 1_000;

/// The largest payload a side's send buffers hold: its pool's largest block (a receive's
/// size, the header and the eager limit or a rendezvous request, rounded up to a power of
/// two) less the header.
fn send_buffer(eager_limit: usize) -> usize {
    (HEADER_LEN + eager_limit.max(24)).next_power_of_two() - HEADER_LEN
}

fn payload(id: u64, len: usize, side: usize) -> Vec<u8> {
    let mut rng = Rng::new(id.wrapping_mul(0x9e37_79b9) ^ (len as u64) << 20 ^ side as u64);
    rng.bytes(len)
}

fn remote_access_error() -> Error {
    Error::WorkCompletion {
        kind: WorkKind::Read,
        status: WcStatus::REM_ACCESS_ERR,
        vendor_err: 0,
        qpn: 0,
        remote: None,
    }
}

fn disconnected() -> Error {
    Error::Disconnected {
        qpn: 0,
        why: "the peer disconnected",
    }
}

impl World {
    fn new(seed: u64, trace: bool) -> World {
        let mut rng = Rng::new(seed);
        let depth = [2 + rng.below(63), 2 + rng.below(63)];
        let depth = if rng.below(3) == 0 {
            // Small depths, where credits are scarcest, half the time more often.
            [2 + rng.below(7), 2 + rng.below(7)]
        } else {
            depth
        };
        let eager = [
            rng.pick(&[16, 24, 40, 64, 100]),
            rng.pick(&[16, 24, 40, 64, 100]),
        ];
        let send_limit = [4 + rng.below(13), 4 + rng.below(13)];
        let limits = |me: usize| {
            let peer = 1 - me;
            Limits {
                depth: depth[me],
                credit_batch: Limits::credit_batch_for(depth[me]),
                peer_depth: depth[peer],
                peer_eager_limit: eager[peer],
                send_buffer: send_buffer(eager[me]),
                max_message: 1 << 20,
                send_limit: send_limit[me],
            }
        };
        let mut sides = [
            Side::new("A", limits(0), eager[0]),
            Side::new("B", limits(1), eager[1]),
        ];
        for (at, side) in sides.iter_mut().enumerate() {
            let count = rng.below(13);
            for id in 0..count as u64 {
                let len = match rng.below(5) {
                    0 => rng.below(eager[1 - at] + 1),
                    1 => eager[1 - at] - 8 + rng.below(17),
                    2 => side.send_buffer - 4 + rng.below(9),
                    3 => rng.below(4 * eager[1 - at] + 1),
                    _ => eager[1 - at] + 1 + rng.below(3 * eager[1 - at]),
                };
                side.to_send.push_back((id, payload(id, len, at)));
            }
            side.recv_eagerness = rng.pick(&[1, 2, 8, 32]);
        }
        World {
            rng,
            sides,
            links: [VecDeque::new(), VecDeque::new()],
            trace,
            since_progress: 0,
        }
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("{}", what());
        }
    }

    /// Does what side `at`'s protocol asked for.
    fn apply(&mut self, at: usize) -> Check {
        while let Some(action) = self.sides[at].protocol.poll_action() {
            self.log(|| format!("{} does {action:?}", self.sides[at].name));
            let side = &mut self.sides[at];
            match action {
                Action::Control { header, token } => {
                    let body = match token {
                        Some(token) => Body::Done(token),
                        None => Body::Credit,
                    };
                    side.sends_in_flight += 1;
                    self.links[at].push_back(Packet { header, body });
                }
                Action::Repost => {
                    side.posted += 1;
                    if side.posted > side.receives {
                        return Err(format!(
                            "{} posted {} receives, more than its {}",
                            side.name, side.posted, side.receives
                        ));
                    }
                }
                Action::Read { read, from } => side.reads.push_back(Read {
                    read,
                    from,
                    result: None,
                }),
                Action::Unexpose(token) => {
                    side.exposed.remove(&token);
                }
                Action::UnexposeAll => side.exposed.clear(),
            }
        }
        Ok(())
    }

    /// The next packet on link `from` reaches the other side's next receive.
    fn deliver(&mut self, from: usize) -> Check {
        let to = 1 - from;
        let Some(packet) = self.links[from].pop_front() else {
            return Ok(());
        };
        self.sides[from].sends_in_flight -= 1;
        if self.sides[to].dead {
            self.sides[from].sends_done.push_back(Err(disconnected()));
            return Ok(());
        }
        let receiver = &mut self.sides[to];
        if receiver.posted == 0 {
            return Err(format!(
                "{:?} reached {} with no receive posted (receiver not ready)",
                packet, receiver.name
            ));
        }
        receiver.posted -= 1;
        receiver.received.push_back(packet);
        self.sides[from].sends_done.push_back(Ok(()));
        Ok(())
    }

    /// The engine of side `at` takes its oldest receive completion.
    fn take_receive(&mut self, at: usize) -> Check {
        let Some(packet) = self.sides[at].received.pop_front() else {
            return Ok(());
        };
        self.log(|| format!("{} takes {packet:?}", self.sides[at].name));
        if self.sides[at].protocol.failure().is_some() {
            // A failed messenger takes nothing more in.
            return Ok(());
        }
        self.since_progress += 1;
        let incoming = match packet.body {
            Body::Data(bytes) => Incoming::Data(bytes),
            Body::Credit => Incoming::Credit,
            Body::Request(request) => Incoming::Request(request),
            Body::Done(token) => Incoming::Done(token),
        };
        if let Err(problem) = self.sides[at].protocol.on_message(packet.header, incoming) {
            return Err(format!(
                "{} refused a message of a correct peer: {problem}",
                self.sides[at].name
            ));
        }
        self.apply(at)
    }

    /// The device finishes side `at`'s oldest read still running.
    fn finish_read(&mut self, at: usize) {
        let peer = 1 - at;
        let peer_exposed = self.sides[peer].exposed.clone();
        let peer_dead = self.sides[peer].dead;
        let Some(read) = self.sides[at].reads.iter_mut().find(|r| r.result.is_none()) else {
            return;
        };
        let result = match peer_exposed.get(&read.from.rkey) {
            Some(bytes) if !peer_dead && bytes.len() as u64 == read.from.len => Ok(bytes.clone()),
            _ => Err(remote_access_error()),
        };
        read.result = Some(result);
    }

    /// The engine of side `at` takes its oldest finished read.
    fn take_read(&mut self, at: usize) -> Check {
        let side = &mut self.sides[at];
        if !side.reads.front().is_some_and(|r| r.result.is_some()) {
            return Ok(());
        }
        let Some(Read { read, result, .. }) = side.reads.pop_front() else {
            return Ok(());
        };
        let Some(result) = result else {
            return Ok(());
        };
        side.large_held += usize::from(result.is_ok());
        side.protocol.on_read(read, result);
        self.apply(at)
    }

    /// The engine of side `at` takes its oldest finished send.
    fn take_send(&mut self, at: usize) -> Check {
        let Some(result) = self.sides[at].sends_done.pop_front() else {
            return Ok(());
        };
        self.sides[at].protocol.on_send_done(result);
        self.apply(at)
    }

    /// The application of side `at` polls its pending send call.
    fn poll_send(&mut self, at: usize) -> Check {
        let side = &mut self.sides[at];
        let Some(call) = &side.send_call else {
            return Ok(());
        };
        let route = side.protocol.route(call.bytes.len());
        match side.protocol.gate(route) {
            Gate::Wait => return Ok(()),
            Gate::Failed(_) => {
                // The send ends with the failure (messages that arrived before it can
                // still be received).
                side.send_call = None;
                return Ok(());
            }
            Gate::Open => {}
        }
        let Some(SendCall { id, bytes }) = side.send_call.take() else {
            return Ok(());
        };
        let body = match route {
            Route::Eager => {
                if bytes.len() > side.send_buffer {
                    return Err(format!(
                        "{} sends {} bytes eagerly, its send buffers hold {} (TooLarge)",
                        side.name,
                        bytes.len(),
                        side.send_buffer
                    ));
                }
                Body::Data(bytes.clone())
            }
            Route::Rendezvous => {
                let token = side.protocol.expose();
                side.exposed.insert(token, bytes.clone());
                Body::Request(Rendezvous {
                    addr: 0,
                    len: bytes.len() as u64,
                    rkey: token,
                    token,
                })
            }
        };
        let kind = match route {
            Route::Eager => Kind::Data,
            Route::Rendezvous => Kind::Request,
        };
        let imm = (id % 3 == 0).then_some(id as u32);
        let header = side.protocol.post(kind, imm);
        side.sends_in_flight += 1;
        side.posted_messages.push(bytes);
        side.posted_large.push(route == Route::Rendezvous);
        self.log(|| format!("{} posts message {id}: {header:?}", self.sides[at].name));
        self.links[at].push_back(Packet { header, body });
        self.since_progress = 0;
        self.apply(at)
    }

    /// The application of side `at` takes a message (or its failure), if there is one.
    fn poll_recv(&mut self, at: usize) -> Check {
        let side = &mut self.sides[at];
        let Some(next) = side.protocol.take() else {
            return Ok(());
        };
        match next {
            Ok((bytes, _imm)) => {
                if let Some(failure) = &side.failed {
                    return Err(format!(
                        "{} took a message after its failure ({failure})",
                        side.name
                    ));
                }
                side.delivered.push(bytes);
                self.since_progress = 0;
                let name = self.sides[at].name;
                let n = self.sides[at].delivered.len() - 1;
                let sent = &self.sides[1 - at].posted_messages;
                match sent.get(n) {
                    Some(want) if *want == self.sides[at].delivered[n] => {}
                    Some(_) => {
                        return Err(format!("{name} took message {n} changed or out of order"))
                    }
                    None => return Err(format!("{name} took message {n}, never posted")),
                }
                if self.sides[1 - at].posted_large[n] {
                    self.sides[at].large_held -= 1;
                }
            }
            Err(failure) => {
                side.failed = Some(failure);
            }
        }
        self.apply(at)
    }

    /// Credits are conserved in the direction from `from`: its credits, plus the peer's
    /// receives its messages hold (in flight, received and not taken in, or taken in and
    /// not given to the application), plus what the peer owes and what is on its way back,
    /// make the peer's depth.
    fn check_credits(&self, from: usize) -> Check {
        let to = 1 - from;
        let (sender, receiver) = (&self.sides[from], &self.sides[to]);
        if sender.dead || receiver.dead || sender.protocol.failure().is_some() {
            return Ok(());
        }
        if receiver.protocol.failure().is_some() {
            return Ok(());
        }
        let holds = |p: &Packet| usize::from(Protocol::<Vec<u8>>::takes_credit(p.header.kind));
        let in_flight: usize = self.links[from].iter().map(holds).sum::<usize>()
            + receiver.received.iter().map(holds).sum::<usize>();
        let held = receiver.protocol.holding();
        let returning: usize = self.links[to]
            .iter()
            .chain(sender.received.iter())
            .map(|p| usize::from(p.header.credits))
            .sum();
        let total =
            sender.protocol.credits() + in_flight + held + receiver.protocol.owed() + returning;
        if total != receiver.protocol.limits().depth {
            return Err(format!(
                "credits {} -> {}: {} credits + {in_flight} in flight + {held} held + {} owed + \
                 {returning} returning = {total}, not the depth {}",
                sender.name,
                receiver.name,
                sender.protocol.credits(),
                receiver.protocol.owed(),
                receiver.protocol.limits().depth
            ));
        }
        Ok(())
    }

    /// Bounds on what a side exposes and what its peer's large messages make it hold.
    fn check_bounds(&self, at: usize) -> Check {
        let side = &self.sides[at];
        let exposed_max = Protocol::<Vec<u8>>::exposed_max(side.protocol.limits());
        if side.exposed.len() > exposed_max {
            return Err(format!(
                "{} exposes {} large messages, more than {exposed_max}",
                side.name,
                side.exposed.len()
            ));
        }
        let held = side.reads.len() + side.large_held;
        if held > LARGE_IN_MEMORY {
            return Err(format!(
                "{} holds {held} large messages of its peer in memory, more than {LARGE_IN_MEMORY}",
                side.name
            ));
        }
        Ok(())
    }

    fn check(&self) -> Check {
        for at in 0..2 {
            self.check_credits(at)?;
            self.check_bounds(at)?;
        }
        Ok(())
    }

    /// One random step while the applications send and receive as they like.
    fn random_step(&mut self) -> Check {
        let at = self.rng.below(2);
        let what = self.rng.below(12);
        if what < 2 {
            // A dead side's packets already on the link still arrive.
            self.deliver(at)?;
            return self.check();
        }
        if self.sides[at].dead {
            return Ok(());
        }
        match what {
            2 if self.sides[at].calling() => self.take_receive(at)?,
            3 => self.finish_read(at),
            4 if self.sides[at].calling() => self.take_read(at)?,
            5 if self.sides[at].calling() => self.take_send(at)?,
            6 | 7 => {
                let side = &mut self.sides[at];
                if side.send_call.is_none() && side.failed.is_none() {
                    if let Some((id, bytes)) = side.to_send.pop_front() {
                        side.send_call = Some(SendCall { id, bytes });
                    }
                }
                self.poll_send(at)?;
            }
            8 => {
                // A send call given up (a timeout, a select!) while it waits.
                if self.rng.below(4) == 0 {
                    self.sides[at].send_call = None;
                }
            }
            9 | 10 => {
                let side = &mut self.sides[at];
                if self.rng.below(side.recv_eagerness) == 0 {
                    side.recv_call = true;
                    self.poll_recv(at)?;
                }
            }
            _ => {
                // A recv call given up.
                self.sides[at].recv_call = false;
            }
        }
        self.check()
    }

    /// Side `at`'s process dies: what it exposed is gone, what it sent but the device had
    /// not sent yet is lost, and the survivor learns of it by a failed read or, later, the
    /// disconnect.
    fn kill(&mut self, at: usize) {
        self.log(|| format!("{} dies", self.sides[at].name));
        let side = &mut self.sides[at];
        side.dead = true;
        side.exposed.clear();
        side.send_call = None;
        let keep = self.rng.below(self.links[at].len() + 1);
        let lost = self.links[at].len() - keep;
        self.links[at].truncate(keep);
        side.sends_in_flight -= lost;
    }

    /// The applications stop sending new messages (a pending send call is kept, and polled)
    /// and receive everything; everything must settle.
    fn drain(&mut self) -> Check {
        for side in &mut self.sides {
            side.to_send.clear();
            side.recv_call = true;
        }
        self.since_progress = 0;
        self.since_progress = 0;
        let mut disconnect_told = false;
        loop {
            // Everything that can happen now, in a random order: the first that does
            // something is done.
            let mut moves: Vec<(usize, usize)> = (0..2)
                .flat_map(|at| (0..6).map(move |what| (at, what)))
                .collect();
            for i in (1..moves.len()).rev() {
                let j = self.rng.below(i + 1);
                moves.swap(i, j);
            }
            let mut moved = false;
            for (at, what) in moves {
                if self.sides[at].dead && what != 0 {
                    continue;
                }
                let before = self.signature();
                match what {
                    0 => self.deliver(at)?,
                    1 => self.take_receive(at)?,
                    2 => {
                        self.finish_read(at);
                        self.take_read(at)?;
                    }
                    3 => self.take_send(at)?,
                    4 => self.poll_send(at)?,
                    _ => self.poll_recv(at)?,
                }
                self.check()?;
                if self.signature() != before {
                    moved = true;
                    break;
                }
            }
            if self.since_progress > LIVELOCK_PACKETS {
                return Err(format!(
                    "livelock: {} control messages with no application progress ({})",
                    self.since_progress,
                    self.describe()
                ));
            }
            if moved {
                continue;
            }
            // A dead peer: once the link from it is empty, the survivor's connection
            // reports the disconnect (its receives are flushed with it).
            if let Some(dead) = (0..2).find(|&at| self.sides[at].dead) {
                let survivor = 1 - dead;
                if !disconnect_told {
                    disconnect_told = true;
                    self.sides[survivor].received.clear();
                    self.sides[survivor].protocol.fail(disconnected());
                    self.apply(survivor)?;
                    continue;
                }
            }
            return self.settled();
        }
    }

    /// What changes when something happens (to tell a step that did nothing).
    fn signature(&self) -> [usize; 12] {
        let side = |s: &Side| {
            [
                s.received.len(),
                s.reads.len() * 2 + s.reads.iter().filter(|r| r.result.is_some()).count(),
                s.sends_done.len(),
                s.delivered.len() + usize::from(s.failed.is_some()),
                s.posted_messages.len() + usize::from(s.send_call.is_none()),
            ]
        };
        let (a, b) = (side(&self.sides[0]), side(&self.sides[1]));
        [
            a[0],
            a[1],
            a[2],
            a[3],
            a[4],
            b[0],
            b[1],
            b[2],
            b[3],
            b[4],
            self.links[0].len(),
            self.links[1].len(),
        ]
    }

    fn describe(&self) -> String {
        let side = |s: &Side| {
            format!(
                "{}: credits {} owed {} arrived {} reading {} sending {} exposed {} done_to_send {} \
                 posted {} send_call {} delivered {} failed {:?}",
                s.name,
                s.protocol.credits(),
                s.protocol.owed(),
                s.protocol.arrived(),
                s.reads.len(),
                s.protocol.sending(),
                s.exposed.len(),
                s.protocol.done_to_send(),
                s.posted,
                s.send_call.is_some(),
                s.delivered.len(),
                s.failed.as_ref().map(|f| f.to_string()),
            )
        };
        format!("{}; {}", side(&self.sides[0]), side(&self.sides[1]))
    }

    /// Nothing more can happen: check that it is the end it must be.
    fn settled(&self) -> Check {
        let dead = (0..2).find(|&at| self.sides[at].dead);
        for at in 0..2 {
            let (side, peer) = (&self.sides[at], &self.sides[1 - at]);
            if side.dead {
                continue;
            }
            if dead.is_some() {
                // The survivor: a prefix of what the dead side posted, then the failure.
                if side.failed.is_none() {
                    return Err(format!(
                        "{} never learned that its peer died ({})",
                        side.name,
                        self.describe()
                    ));
                }
                if !side.failed.as_ref().is_some_and(|f| f.is_disconnect()) {
                    return Err(format!(
                        "{} was given {} for a peer that disconnected, not the disconnect",
                        side.name,
                        side.failed
                            .as_ref()
                            .map_or(String::new(), |f| f.to_string())
                    ));
                }
                continue;
            }
            if side.send_call.is_some() || !self.links[at].is_empty() {
                return Err(format!(
                    "deadlock: {} still has a message to send ({})",
                    side.name,
                    self.describe()
                ));
            }
            if side.delivered.len() != peer.posted_messages.len() {
                return Err(format!(
                    "deadlock: {} took {} of the {} messages posted to it ({})",
                    side.name,
                    side.delivered.len(),
                    peer.posted_messages.len(),
                    self.describe()
                ));
            }
            if !side.protocol.flushed() || !side.exposed.is_empty() || side.sends_in_flight > 0 {
                return Err(format!(
                    "{} never settled: sends or exposures left ({})",
                    side.name,
                    self.describe()
                ));
            }
            if side.failed.is_some() || side.protocol.failure().is_some() {
                return Err(format!("{} failed with a correct peer", side.name));
            }
        }
        Ok(())
    }
}

/// Runs the schedule of `seed`.
fn run(seed: u64, trace: bool) -> Result<(), Failure> {
    let mut world = World::new(seed, trace);
    let steps = 20 + world.rng.below(200);
    let kill_at = (world.rng.below(6) == 0).then(|| world.rng.below(steps));
    let victim = world.rng.below(2);
    let result = (|| {
        for step in 0..steps {
            if kill_at == Some(step) {
                world.kill(victim);
            }
            world.random_step()?;
        }
        world.drain()
    })();
    result.map_err(|what| Failure { seed, what })
}

/// The schedules of one CI run.
const SCHEDULES: u64 = 100_000;

#[test]
fn two_messengers_over_random_schedules() {
    if let Ok(seed) = std::env::var("ANYRDMA_SIM_SEED") {
        let seed = seed.parse().expect("ANYRDMA_SIM_SEED is a number");
        let trace = std::env::var_os("ANYRDMA_SIM_TRACE").is_some();
        if let Err(failure) = run(seed, trace) {
            panic!("seed {}: {}", failure.seed, failure.what);
        }
        return;
    }
    let base = 0x5eed_0000_0000u64;
    let mut failures = Vec::new();
    let schedules = std::env::var("ANYRDMA_SIM_SCHEDULES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(SCHEDULES);
    for n in 0..schedules {
        if let Err(failure) = run(base + n, false) {
            failures.push(failure);
            if failures.len() >= 5 {
                break;
            }
        }
    }
    if let Some(first) = failures.first() {
        let list: Vec<String> = failures
            .iter()
            .map(|f| format!("seed {}: {}", f.seed, f.what))
            .collect();
        panic!(
            "{} schedules failed (rerun one with ANYRDMA_SIM_SEED={} ANYRDMA_SIM_TRACE=1):\n{}",
            failures.len(),
            first.seed,
            list.join("\n")
        );
    }
}
