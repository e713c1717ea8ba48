//! The memory session of one connection: grants made and held, requests in flight, leases,
//! and the loop that answers the peer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::mr::Access;
use crate::msg::Messenger;
use crate::qp::QueuePair;
use crate::remote::RemoteRegion;
use crate::runtime::{default_runtime, with_sleep, RuntimeHandle};
use crate::shared::SharedRegion;
use crate::stats::SessionStats;
use crate::wake::lock;

use super::control::{Control, ControlProblem, RefuseReason, RevokeReason, Rights, MAX_LEASE_MS};
use super::expiry;
use super::grant::{Grant, GrantProblem, HeldState, RemoteGrant};
use super::key::RangeKey;
use super::lease::Leases;
use super::lender;
use super::policy::{GrantPolicy, RegionRequest};

/// Options of a [`MemorySession`].
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// What this side lends when the peer asks ([`MemorySession::request_region`]).
    pub policy: GrantPolicy,
    /// How long a request or a renewal waits for the peer's answer.
    pub answer_timeout: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            policy: GrantPolicy::default(),
            answer_timeout: Duration::from_secs(10),
        }
    }
}

/// Memory across one connection: grant the peer access to local memory, use memory the
/// peer grants, ask the peer for memory, with leases. See the [module
/// documentation](super) for the protocol.
///
/// It takes over a [`Messenger`] (its messages carry the control protocol, and nothing
/// else may be sent on it) and uses its queue pair for the one-sided operations of
/// [`RemoteGrant`].
///
/// One task must run [`serve`](MemorySession::serve) on each side for as long as the
/// session is used: it answers the peer's requests, takes in its grants and releases, and
/// tells the peer of what expired (leases end on time without it: see the [module
/// documentation](super)). When it ends (the connection failed, or the peer broke the
/// protocol), every grant made is revoked and every grant held ends.
///
/// ```no_run
/// # async fn demo(messenger: anyrdma_core::msg::Messenger, table: anyrdma_core::SharedRegion) -> anyrdma_core::Result<()> {
/// use std::time::Duration;
/// use anyrdma_core::remote_memory::{MemorySession, Rights, SessionOptions};
/// let session = MemorySession::new(messenger, SessionOptions::default());
/// let serving = session.clone();
/// let grant = session.grant(&table, .., Rights::READ | Rights::WRITE, Some(Duration::from_secs(30)))?;
/// serving.serve().await?; // until the connection ends
/// # drop(grant); Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemorySession {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    messenger: Messenger,
    pub(crate) qp: QueuePair,
    options: SessionOptions,
    state: Mutex<State>,
    /// Whether a serve loop runs (one at most: it alone receives and sends).
    serving: std::sync::atomic::AtomicBool,
    /// This session, for the expiry thread (which must not keep it alive).
    me: std::sync::Weak<Inner>,
}

/// What a grant this side made holds registered (its lease is in [`Leases`]).
///
/// Dropped to revoke: the key stops working (`ibv_dereg_mr`, a system call whose cost
/// grows with the grant's size), so it is dropped outside the session's lock.
struct Granted {
    /// The grant's key. (Read only for its range, when made.)
    _key: RangeKey,
    /// For a grant made for the peer's request: the memory, and its length for the policy.
    requested: Option<(SharedRegion, u64)>,
    /// The bytes its key reaches.
    len: u64,
}

/// What a request of this side's asked for: the answers it may get differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// Memory: a grant of exactly this length, with at most these rights, or a refusal.
    Region { len: u64, rights: Rights },
    /// A longer lease of this grant: a renewal of it or a refusal.
    Renewal(u64),
}

/// A request or renewal of this side's, waiting for its answer.
enum Answer {
    Waiting {
        waker: Option<Waker>,
        asked: Asked,
        /// When it was asked: the lease of the answer counts from here, not from its
        /// arrival, so that this side never believes in a lease longer than the owner's.
        since: Instant,
    },
    Granted(RemoteGrant),
    Renewed(Option<Instant>),
    Refused(RefuseReason),
}

/// An answer that does not fit what was asked: `take_in` lets none through.
fn mismatched() -> Error {
    Error::SessionEnded { cause: None }
}

/// Answers and revocations this side may have queued for the peer before it stops taking
/// the peer's messages in (a peer that sends and never reads would make it grow without end).
const OUTBOX_LIMIT: usize = 256;
/// Grants the peer made on its own initiative that this side has not taken yet; beyond it,
/// new ones are released at once.
const ARRIVED_LIMIT: usize = 1024;

#[derive(Default)]
struct State {
    /// Why the session ended, once it did.
    ended: Option<Option<Arc<Error>>>,
    /// Owner: the last grant id issued, and the grants live.
    last_grant: u64,
    granted: HashMap<u64, Granted>,
    /// The leases of the grants in `granted`: the same ids.
    leases: Leases,
    /// Grants taken out of `granted` whose keys are being deregistered, after the lock:
    /// live until then, since their keys may still work.
    retiring: HashSet<u64>,
    /// The earliest time the expiry thread will call this session (`None`: not at all).
    expiry_armed: Option<Instant>,
    requested_bytes: u64,
    requested_regions: usize,
    /// Holder: the last request or renewal id issued, and those waiting for an answer.
    last_request: u64,
    answers: HashMap<u64, Answer>,
    /// Holder: the highest grant id received, and the grants held.
    last_received: u64,
    held: HashMap<u64, Arc<Mutex<HeldState>>>,
    /// Grants made on the peer's own initiative, for `next_grant`.
    arrived: VecDeque<RemoteGrant>,
    arrived_wakers: Vec<Waker>,
    /// Messages to send, from code that cannot wait (drops, the serve loop's answers).
    outbox: VecDeque<Control>,
    serve_waker: Option<Waker>,
    /// What the session counts (its levels, grants live and held, are the tables' sizes).
    stats: SessionStats,
}

impl State {
    fn check_open(&self) -> Result<()> {
        match &self.ended {
            Some(cause) => Err(Error::SessionEnded {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Owner: files grant `id`, made now.
    fn made(&mut self, id: u64, granted: Granted) {
        self.stats.grants_made += 1;
        self.stats.bytes_granted += granted.len;
        self.stats.bytes_live += granted.len;
        self.granted.insert(id, granted);
    }

    /// The keys of grants of `bytes` in all are deregistered: they are live no more.
    fn retired(&mut self, bytes: u64) {
        self.stats.bytes_live = self.stats.bytes_live.saturating_sub(bytes);
    }

    fn send_later(&mut self, message: Control) {
        if let Control::Refuse { reason, .. } = message {
            self.stats.refused.count(reason);
        }
        self.outbox.push_back(message);
        if let Some(waker) = self.serve_waker.take() {
            waker.wake();
        }
    }
}

fn lease_ms(lease: Option<Duration>) -> Result<u64> {
    match lease {
        None => Ok(0),
        Some(lease) => {
            let ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
            if ms > MAX_LEASE_MS {
                return Err(Error::InvalidArgument(format!(
                    "a lease of {lease:?} is longer than the protocol's longest, 30 days"
                )));
            }
            Ok(ms)
        }
    }
}

fn lease_of(ms: u64) -> Option<Duration> {
    (ms != 0).then(|| Duration::from_millis(ms))
}

fn deadline(from: Instant, lease: Option<Duration>) -> Option<Instant> {
    lease.map(|lease| from + lease)
}

fn broken(problem: ControlProblem) -> Error {
    Error::BadControlMessage { problem }
}

impl MemorySession {
    /// A session over `messenger`, which it takes over: every message on it from now on is a
    /// control message.
    pub fn new(messenger: Messenger, options: SessionOptions) -> MemorySession {
        let session = MemorySession {
            inner: Arc::new_cyclic(|me| Inner {
                qp: messenger.queue_pair().clone(),
                messenger,
                options,
                state: Mutex::new(State::default()),
                serving: std::sync::atomic::AtomicBool::new(false),
                me: me.clone(),
            }),
        };
        #[cfg(feature = "metrics")]
        crate::stats::metrics::track(&session.inner);
        session
    }

    /// The queue pair the one-sided operations go on.
    pub fn queue_pair(&self) -> &QueuePair {
        &self.inner.qp
    }

    /// Grants the peer `rights` to exactly `range` of `region`, for `lease` (`None`: until
    /// revoked). The key the peer gets reaches those bytes and no others (a registration of
    /// its own), and the region's memory stays allocated while it works. The grant goes to
    /// the peer with [`serve`](MemorySession::serve), which sends every control message in
    /// the order they were made. Dropping the returned [`Grant`] revokes it.
    ///
    /// # Errors
    /// [`Error::SharedOutOfRange`] for a range outside the region or empty,
    /// [`Error::InvalidArgument`] for no rights, a lease over 30 days or a region of another
    /// protection domain than the session's queue pair, the registration's error,
    /// [`Error::SessionEnded`].
    pub fn grant(
        &self,
        region: &SharedRegion,
        range: impl RangeBounds<usize>,
        rights: Rights,
        lease: Option<Duration>,
    ) -> Result<Grant> {
        let (offset, len) = resolve(range, region.len())?;
        if rights.bits() == 0 {
            return Err(Error::InvalidArgument(
                "a grant needs at least one right".into(),
            ));
        }
        let ms = lease_ms(lease)?;
        if region.access().is_remote() {
            return Err(Error::InvalidArgument(
                "the region is registered with remote rights of its own, whose key reaches all \
                 of it for as long as it lives: allocate it with Access::LOCAL and let each \
                 grant's own key give access; nothing was granted"
                    .into(),
            ));
        }
        if region.piece().pd_raw() != self.inner.qp.pd().raw() {
            return Err(Error::InvalidArgument(
                "the region is registered in another protection domain than the session's \
                 queue pair: the peer's accesses would fail; nothing was granted"
                    .into(),
            ));
        }
        if lease.is_some() {
            expiry::start()?;
        }
        // Registered before the lock is taken: it pins the range's pages, which takes longer
        // the larger the range.
        let key = RangeKey::register(region, offset, len, rights)?;
        let remote = key.remote();
        let mut state = lock(&self.inner.state);
        if let Err(err) = state.check_open() {
            drop(state);
            drop(key); // deregistered outside the lock
            return Err(err);
        }
        state.last_grant += 1;
        let id = state.last_grant;
        let now = Instant::now();
        let ends = state.leases.grant(id, remote.len, rights, lease, now);
        state.made(
            id,
            Granted {
                _key: key,
                requested: None,
                len: remote.len,
            },
        );
        state.send_later(grant_message(id, 0, remote, rights, ms));
        if let Some(at) = ends {
            self.inner.arm(&mut state, at);
        }
        drop(state);
        Ok(Grant {
            id,
            region: remote,
            rights,
            session: Arc::downgrade(&self.inner),
        })
    }

    /// The next grant the peer made on its own initiative (grants that answer
    /// [`request_region`](MemorySession::request_region) go to it instead).
    ///
    /// # Errors
    /// [`Error::SessionEnded`] once the session has ended.
    pub async fn next_grant(&self) -> Result<RemoteGrant> {
        poll_fn(|cx| {
            let mut state = lock(&self.inner.state);
            if let Some(grant) = state.arrived.pop_front() {
                return Poll::Ready(Ok(grant));
            }
            state.check_open()?;
            if !state.arrived_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                state.arrived_wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Asks the peer to allocate `len` bytes and grant them to this side with `rights`, for
    /// `lease`; the peer's policy decides.
    ///
    /// # Errors
    /// [`Error::RegionRefused`] with the peer's reason, [`Error::NoAnswer`] when it does not
    /// answer within [`SessionOptions::answer_timeout`], [`Error::InvalidArgument`] for
    /// an empty request, no rights or a lease over 30 days, [`Error::SessionEnded`].
    pub async fn request_region(
        &self,
        len: u64,
        rights: Rights,
        lease: Option<Duration>,
    ) -> Result<RemoteGrant> {
        if len == 0 || rights.bits() == 0 {
            return Err(Error::InvalidArgument(
                "a request needs at least one byte and one right".into(),
            ));
        }
        let lease_ms = lease_ms(lease)?;
        let answer = self
            .inner
            .ask(
                "request for memory",
                Asked::Region { len, rights },
                |request| Control::Request {
                    request,
                    len,
                    access: rights,
                    lease_ms,
                },
            )
            .await?;
        match answer {
            Answer::Granted(grant) => Ok(grant),
            Answer::Refused(reason) => Err(Error::RegionRefused { reason }),
            Answer::Renewed(_) | Answer::Waiting { .. } => Err(mismatched()),
        }
    }

    /// Runs the session: answers the peer's requests with the policy, takes in its grants,
    /// releases, revocations and renewals, and sends what other calls queued (among them
    /// the revocations of grants whose lease ended). Returns when the session ends; then
    /// every grant made is revoked and every waiting call ends with [`Error::SessionEnded`].
    ///
    /// Returns `Ok` when the session was [closed](MemorySession::close) on this side. One task
    /// serves at a time (a second call fails with [`Error::InvalidArgument`]); a serve whose
    /// future is dropped can be started again.
    ///
    /// # Errors
    /// [`Error::SessionEnded`] whose cause is why it ended: the connection's failure (a
    /// disconnect), or [`Error::BadControlMessage`] when the peer broke the protocol (the
    /// queue pair is then shut down, so the peer sees the connection end too).
    pub async fn serve(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.inner.serving.swap(true, Ordering::AcqRel) {
            return Err(Error::InvalidArgument(
                "this memory session is already served by another task: run serve once".into(),
            ));
        }
        // Another task may serve once this one ends or is dropped. And the messenger's
        // operations, which serve polls through `poll_recv`, must not keep waking a task that
        // no longer serves: it leaves the messenger's waiters.
        struct Served<'a> {
            inner: &'a Inner,
            waker: Option<std::task::Waker>,
        }
        impl Drop for Served<'_> {
            fn drop(&mut self) {
                if let Some(waker) = self.waker.take() {
                    self.inner.messenger.leave(&waker);
                }
                self.inner.serving.store(false, Ordering::Release);
            }
        }
        let mut served = Served {
            inner: &self.inner,
            waker: None,
        };
        let mut serving = std::pin::pin!(self.inner.serve());
        let result = poll_fn(|cx| {
            if !served
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                served.waker = Some(cx.waker().clone());
            }
            std::future::Future::poll(serving.as_mut(), cx)
        })
        .await;
        drop(served);
        match result {
            Ok(()) => Ok(()),
            Err(err) => {
                if matches!(err, Error::BadControlMessage { .. }) {
                    match self.inner.messenger.connection() {
                        Some(connection) => connection.cut_off(),
                        None => {
                            let _ = self.inner.qp.shutdown();
                        }
                    }
                }
                let cause = Arc::new(err);
                self.inner.end(Some(cause.clone()));
                Err(Error::SessionEnded { cause: Some(cause) })
            }
        }
    }

    /// Ends the session now: revokes every grant made (their keys stop working before this
    /// returns) and ends every grant held. A running [`serve`](MemorySession::serve) then
    /// sends what was queued (releases of grants dropped before) and a revocation of each
    /// grant made, and returns.
    pub fn close(&self) {
        self.inner.end(None);
    }

    /// What this session did since it was made: grants live and their bytes, grants made and
    /// held, refusals each way by reason (see [`SessionStats`]). Takes the session's lock
    /// for a moment.
    pub fn stats(&self) -> SessionStats {
        self.inner.stats()
    }

    /// Grants made that are still live (not released, revoked or expired).
    pub fn granted(&self) -> usize {
        let state = lock(&self.inner.state);
        state.granted.len() + state.retiring.len()
    }
}

/// `range` of a region of `len` bytes as (offset, length), not empty.
fn resolve(range: impl RangeBounds<usize>, len: usize) -> Result<(usize, usize)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => Some(s),
        Bound::Excluded(&s) => s.checked_add(1),
        Bound::Unbounded => Some(0),
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => Some(len),
    };
    match (start, end) {
        (Some(start), Some(end)) if start < end && end <= len => Ok((start, end - start)),
        (start, end) => {
            let start = start.unwrap_or(usize::MAX);
            Err(Error::SharedOutOfRange {
                offset: start,
                len: end.unwrap_or(usize::MAX).saturating_sub(start),
                region_len: len,
            })
        }
    }
}

fn grant_message(id: u64, request: u64, remote: RemoteRegion, rights: Rights, ms: u64) -> Control {
    Control::Grant {
        grant: id,
        request,
        addr: remote.addr,
        len: remote.len,
        rkey: remote.rkey,
        access: rights,
        lease_ms: ms,
    }
}

/// What the serve loop was woken by.
enum Woken {
    Message(Result<crate::msg::Message>),
    /// Sending failed.
    Failed(Error),
    Other,
}

/// A control message being sent, resolving to it once posted.
type Sending<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Control>> + Send + 'a>>;

#[cfg(feature = "metrics")]
impl crate::stats::metrics::Exported for Inner {
    fn export(&self) {
        use crate::stats::metrics;
        let labels = metrics::qp_labels(self.qp.pd().context().device_name(), self.qp.qpn());
        metrics::record_session(&self.stats(), &labels);
    }
}

// The expiry thread reaches the session through this (see `expiry::Expire`).
impl expiry::Expire for Inner {
    fn expire(&self, now: Instant) {
        Inner::expire(self, now);
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// A snapshot of its counters.
    fn stats(&self) -> SessionStats {
        let state = self.state();
        SessionStats {
            grants_live: (state.granted.len() + state.retiring.len()) as u64,
            grants_held: state.held.len() as u64,
            ..state.stats
        }
    }

    fn runtime(&self) -> Result<RuntimeHandle> {
        match self.qp.pd().context().runtime() {
            Some(runtime) => Ok(runtime.clone()),
            None => default_runtime(),
        }
    }

    /// Sends the request `make(id)` and waits for its answer.
    async fn ask(
        &self,
        what: &'static str,
        asked: Asked,
        make: impl FnOnce(u64) -> Control,
    ) -> Result<Answer> {
        let id = {
            let mut state = self.state();
            state.check_open()?;
            state.last_request += 1;
            let id = state.last_request;
            let waiting = Answer::Waiting {
                waker: None,
                asked,
                since: Instant::now(),
            };
            state.answers.insert(id, waiting);
            state.send_later(make(id));
            id
        };
        // Forgets the request if this call is dropped or fails (a late answer is then
        // ignored, as one that crossed), and takes it back if it was not sent yet.
        struct Forget<'a>(&'a Inner, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                let id = self.1;
                let answer = {
                    let mut state = self.0.state();
                    state.outbox.retain(|message| match message {
                        Control::Request { request, .. } | Control::Renew { request, .. } => {
                            *request != id
                        }
                        _ => true,
                    });
                    state.answers.remove(&id)
                };
                // Dropped after the lock: an answer may hold a grant, whose drop locks.
                drop(answer);
            }
        }
        let _forget = Forget(self, id);
        let wait = poll_fn(|cx| {
            let mut state = self.state();
            match state.answers.get_mut(&id) {
                Some(Answer::Waiting { waker, .. }) => {
                    *waker = Some(cx.waker().clone());
                    state.check_open()?;
                    Poll::Pending
                }
                Some(_) => Poll::Ready(Ok(state.answers.remove(&id).expect("just seen"))),
                None => Poll::Ready(Err(Error::SessionEnded { cause: None })),
            }
        });
        let after = self.options.answer_timeout;
        match with_sleep(after, wait, self.runtime()?.try_sleep(after)?).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::NoAnswer { what, after }),
        }
    }

    /// Holder: asks for a longer lease of grant `grant`.
    pub(crate) async fn renew(&self, grant: u64, lease: Duration) -> Result<Option<Instant>> {
        let lease_ms = lease_ms(Some(lease))?;
        match self
            .ask("renewal", Asked::Renewal(grant), |request| Control::Renew {
                request,
                grant,
                lease_ms,
            })
            .await?
        {
            Answer::Renewed(expires) => Ok(expires),
            Answer::Refused(reason) => Err(Error::RegionRefused { reason }),
            Answer::Granted(_) | Answer::Waiting { .. } => Err(mismatched()),
        }
    }

    /// Owner: extends grant `id` to `lease` from now and tells the peer.
    pub(crate) fn extend(&self, id: u64, lease: Option<Duration>) -> Result<()> {
        let ms = lease_ms(lease)?;
        if lease.is_some() {
            expiry::start()?;
        }
        let mut state = self.state();
        state.check_open()?;
        let Some(ends) = state.leases.extend(id, lease, Instant::now()) else {
            return Err(Error::SessionEnded { cause: None });
        };
        state.send_later(Control::Renewed {
            request: 0,
            grant: id,
            lease_ms: ms,
        });
        if let Some(at) = ends {
            self.arm(&mut state, at);
        }
        Ok(())
    }

    /// Has the expiry thread call [`expire`](Inner::expire) at `at`, a grant's deadline,
    /// unless it will come earlier already: the queue holds about one entry per session
    /// (the next deadline), however many grants it has. Under the session's lock, safely:
    /// the expiry thread never holds its queue's lock while it takes a session's.
    fn arm(&self, state: &mut State, at: Instant) {
        if state.expiry_armed.map_or(true, |armed| at < armed) {
            state.expiry_armed = Some(at);
            expiry::schedule(at, self.me.clone());
        }
    }

    /// Owner: whether grant `id`'s key may still work: false once it is deregistered.
    pub(crate) fn is_granted(&self, id: u64) -> bool {
        let state = self.state();
        state.granted.contains_key(&id) || state.retiring.contains(&id)
    }

    /// Owner: ends grant `id` (its key stops working before this returns) and tells the
    /// peer.
    pub(crate) fn revoke(&self, id: u64, reason: RevokeReason) {
        let mut state = self.state();
        let ended = Self::end_grant(&mut state, id);
        if ended.is_some() && state.ended.is_none() {
            state.send_later(Control::Revoke { grant: id, reason });
        }
        self.retire(
            state,
            ended.map(|granted| (id, granted)).into_iter().collect(),
        );
    }

    /// Deregisters the keys of grants taken out of the table, after the lock (their ids
    /// are in `retiring` meanwhile: live while their keys may still work).
    fn retire(&self, mut state: MutexGuard<'_, State>, ended: Vec<(u64, Granted)>) {
        if ended.is_empty() {
            return;
        }
        let ids: Vec<u64> = ended.iter().map(|(id, _)| *id).collect();
        let bytes = ended.iter().map(|(_, granted)| granted.len).sum();
        state.retiring.extend(ids.iter().copied());
        drop(state);
        drop(ended); // deregisters
        let mut state = self.state();
        for id in ids {
            state.retiring.remove(&id);
        }
        state.retired(bytes);
    }

    /// Owner: ends the grants whose lease has run out by `now` (called by the expiry
    /// thread at their deadlines): their keys stop working, and the peer is told.
    pub(crate) fn expire(&self, now: Instant) {
        let mut state = self.state();
        if state.expiry_armed.is_some_and(|armed| armed <= now) {
            state.expiry_armed = None;
        }
        let mut ended = Vec::new();
        for id in state.leases.expire(now) {
            ended.extend(Self::end_grant(&mut state, id).map(|granted| (id, granted)));
            if state.ended.is_none() {
                state.send_later(Control::Revoke {
                    grant: id,
                    reason: RevokeReason::LeaseExpired,
                });
            }
        }
        // The next deadline (a renewal may have moved the one this call was armed for).
        if let Some(next) = state.leases.next_deadline() {
            self.arm(&mut state, next);
        }
        self.retire(state, ended);
    }

    /// Takes grant `id` out of the tables (and the memory lent for a request out of the
    /// policy's count): the caller drops what it returns, after the lock, which deregisters
    /// the key. `None` if it was gone already.
    fn end_grant(state: &mut State, id: u64) -> Option<Granted> {
        state.leases.end(id);
        let granted = state.granted.remove(&id)?;
        if let Some((_, len)) = &granted.requested {
            state.requested_bytes -= len;
            state.requested_regions -= 1;
        }
        Some(granted)
    }

    /// Holder: this side dropped its handle of grant `id`.
    pub(crate) fn released(&self, id: u64) {
        let mut state = self.state();
        if state.held.remove(&id).is_some() && state.ended.is_none() {
            state.send_later(Control::Release { grant: id });
        }
    }

    /// Ends the session: every grant made is revoked, every grant held ends, and every
    /// waiting call and the serve loop are woken.
    ///
    /// Closed on this side (no `cause`), the peer is told: a revocation of each grant made,
    /// after what was queued before (releases of grants dropped, say), sent by the serve loop
    /// as it returns.
    fn end(&self, cause: Option<Arc<Error>>) {
        let mut state = self.state();
        if state.ended.is_some() {
            return;
        }
        let closing = cause.is_none();
        state.ended = Some(cause);
        if closing {
            // Questions whose answers nobody will read are not asked; the peer hears that
            // every grant, either way, has ended.
            state.outbox.retain(|message| {
                !matches!(message, Control::Request { .. } | Control::Renew { .. })
            });
            let mut made: Vec<u64> = state.granted.keys().copied().collect();
            made.sort_unstable();
            for grant in made {
                state.outbox.push_back(Control::Revoke {
                    grant,
                    reason: RevokeReason::Closing,
                });
            }
            let mut held: Vec<u64> = state.held.keys().copied().collect();
            held.sort_unstable();
            for grant in held {
                state.outbox.push_back(Control::Release { grant });
            }
        } else {
            state.outbox.clear();
        }
        // Deregistered after the lock; live until then.
        let made = std::mem::take(&mut state.granted);
        state.retiring.extend(made.keys().copied());
        state.leases = Leases::default();
        state.requested_bytes = 0;
        state.requested_regions = 0;
        for held in state.held.values() {
            lock(held).ended.get_or_insert(GrantProblem::SessionEnded);
        }
        state.held.clear();
        let mut wakers: Vec<Waker> = state.serve_waker.take().into_iter().collect();
        wakers.append(&mut state.arrived_wakers);
        for answer in state.answers.values_mut() {
            if let Answer::Waiting { waker, .. } = answer {
                wakers.extend(waker.take());
            }
        }
        let arrived = std::mem::take(&mut state.arrived);
        drop(state);
        drop(arrived); // outside the lock: a dropped grant releases, which locks
        let ids: Vec<u64> = made.keys().copied().collect();
        let bytes = made.values().map(|granted| granted.len).sum();
        drop(made); // every key deregistered
        let mut state = self.state();
        for id in ids {
            state.retiring.remove(&id);
        }
        state.retired(bytes);
        drop(state);
        for waker in wakers {
            waker.wake();
        }
    }

    async fn serve(self: &Arc<Self>) -> Result<()> {
        let runtime = self.runtime()?;
        // The message being sent: the front of the outbox, taken off once posted. It is
        // driven together with receiving, so that a peer that takes nothing in cannot keep
        // this side from taking its messages in or closing.
        let mut sending: Option<Sending<'_>> = None;
        loop {
            match &self.state().ended {
                Some(None) => break,
                Some(Some(cause)) => {
                    return Err(Error::SessionEnded {
                        cause: Some(cause.clone()),
                    })
                }
                None => {}
            }
            let woke = poll_fn(|cx| {
                if let Err(err) = self.send_queued(&mut sending, cx) {
                    return Poll::Ready(Woken::Failed(err));
                }
                if self.state().ended.is_some() {
                    return Poll::Ready(Woken::Other);
                }
                // The peer's messages, unless this side's answers pile up unsent.
                if self.state().outbox.len() < OUTBOX_LIMIT {
                    if let Poll::Ready(message) = self.messenger.poll_recv(cx) {
                        return Poll::Ready(Woken::Message(message));
                    }
                }
                {
                    let mut state = self.state();
                    if sending.is_none() && !state.outbox.is_empty() {
                        return Poll::Ready(Woken::Other); // queued meanwhile
                    }
                    state.serve_waker = Some(cx.waker().clone());
                }
                Poll::Pending
            })
            .await;
            match woke {
                Woken::Message(message) => {
                    let message = message?;
                    let control = Control::decode(&message.data).map_err(broken)?;
                    self.take_in(control)?;
                }
                Woken::Failed(err) => return Err(err),
                Woken::Other => {}
            }
        }
        // Closed on this side: what is queued goes out, within the answer timeout (a peer
        // that takes nothing in must not hold this up).
        let after = self.options.answer_timeout;
        let rest = poll_fn(|cx| match self.send_queued(&mut sending, cx) {
            Err(err) => Poll::Ready(Err(err)),
            Ok(()) if sending.is_none() => Poll::Ready(Ok(())),
            Ok(()) => Poll::Pending,
        });
        let _ = with_sleep(after, rest, runtime.try_sleep(after)?).await;
        Ok(())
    }

    /// Sends the outbox in order, as far as the messenger takes it now: `sending` is the
    /// message in progress, kept across calls.
    fn send_queued<'a>(
        &'a self,
        sending: &mut Option<Sending<'a>>,
        cx: &mut std::task::Context<'_>,
    ) -> Result<()> {
        loop {
            if sending.is_none() {
                let Some(message) = self.state().outbox.front().copied() else {
                    return Ok(());
                };
                let send = async move {
                    self.messenger.send(&message.encode()).await?;
                    Ok(message)
                };
                *sending = Some(Box::pin(send));
            }
            let Some(send) = sending.as_mut() else {
                return Ok(());
            };
            match send.as_mut().poll(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(result) => {
                    *sending = None;
                    let sent = result?;
                    // Taken off only if still there: a question whose asker gave up may have
                    // been taken back meanwhile.
                    let mut state = self.state();
                    if state.outbox.front() == Some(&sent) {
                        state.outbox.pop_front();
                    }
                }
            }
        }
    }

    /// Applies one control message from the peer; `Err` when it breaks the protocol.
    fn take_in(self: &Arc<Self>, control: Control) -> Result<()> {
        let mut state = self.state();
        if state.ended.is_some() {
            // Closed meanwhile: nothing more is granted, held or answered.
            return Ok(());
        }
        match control {
            Control::Grant {
                grant,
                request,
                addr,
                len,
                rkey,
                access,
                lease_ms,
            } => {
                if grant <= state.last_received {
                    return Err(broken(ControlProblem::DuplicateGrant { grant }));
                }
                let answering = match (request, Self::waiting(&state, request)) {
                    (0, _) => None,
                    // Exactly the length asked for, and no rights beyond those asked.
                    (_, Some((Asked::Region { len: asked, rights }, since)))
                        if asked == len && rights.contains(access) =>
                    {
                        Some((request, since))
                    }
                    // Given up by this side (a late answer crosses): released below.
                    (_, None)
                        if request <= state.last_request
                            && !state.answers.contains_key(&request) =>
                    {
                        None
                    }
                    // Never asked, answered already, or a renewal answered by a grant.
                    _ => return Err(broken(ControlProblem::UnexpectedGrant { request })),
                };
                let unclaimed = request == 0 && state.arrived.len() >= ARRIVED_LIMIT;
                if (request != 0 && answering.is_none()) || unclaimed {
                    // Nobody waits for it, or too many wait to be taken: released at once.
                    state.last_received = grant;
                    state.send_later(Control::Release { grant });
                    return Ok(());
                }
                state.last_received = grant;
                // An answer's lease counts from the question, an unsolicited grant's from now.
                let from = answering.map_or_else(Instant::now, |(_, since)| since);
                let held = Arc::new(Mutex::new(HeldState {
                    expires: deadline(from, lease_of(lease_ms)),
                    ended: None,
                }));
                state.held.insert(grant, held.clone());
                let remote = RemoteGrant {
                    id: grant,
                    region: RemoteRegion { addr, len, rkey },
                    rights: access,
                    state: held,
                    qp: self.qp.clone(),
                    session: Arc::downgrade(self),
                };
                match answering {
                    Some((request, _)) => {
                        Self::answer(&mut state, request, Answer::Granted(remote))
                    }
                    None => {
                        state.arrived.push_back(remote);
                        for waker in state.arrived_wakers.drain(..) {
                            waker.wake();
                        }
                    }
                }
            }
            Control::Request {
                request,
                len,
                access: rights,
                lease_ms,
            } => {
                let asked = RegionRequest {
                    len,
                    rights,
                    lease: lease_of(lease_ms),
                };
                let policy = &self.options.policy;
                if let Err(reason) =
                    policy.admit(&asked, state.requested_bytes, state.requested_regions)
                {
                    state.send_later(Control::Refuse { request, reason });
                    return Ok(());
                }
                // Reserved, then decided, allocated and registered on the lending thread,
                // without the lock (the application's callback may call the session) and off
                // this task (registering takes longer the larger the request); the answer
                // is queued from there.
                state.requested_bytes += len;
                state.requested_regions += 1;
                drop(state);
                let session = Arc::clone(self);
                let lend = move || session.lend_and_answer(request, asked, lease_ms);
                if lender::run(Box::new(lend)).is_err() {
                    self.answer_lent(request, asked, lease_ms, Err(RefuseReason::OutOfMemory));
                }
            }
            Control::Refuse { request, reason } => {
                state.stats.refused_by_peer.count(reason);
                match Self::waiting(&state, request) {
                    Some(_) => Self::answer(&mut state, request, Answer::Refused(reason)),
                    // Given up by this side: nothing to do.
                    None if request <= state.last_request
                        && !state.answers.contains_key(&request) => {}
                    // Never asked, or answered already.
                    None => return Err(broken(ControlProblem::UnknownRequest { request })),
                }
            }
            Control::Release { grant } => {
                if grant > state.last_grant {
                    return Err(broken(ControlProblem::UnknownGrant { grant }));
                }
                // A release of a grant that already ended crossed its revocation: nothing to do.
                let ended = Self::end_grant(&mut state, grant);
                self.retire(
                    state,
                    ended.map(|granted| (grant, granted)).into_iter().collect(),
                );
                return Ok(());
            }
            Control::Revoke { grant, reason } => {
                if grant > state.last_received {
                    return Err(broken(ControlProblem::UnknownGrant { grant }));
                }
                if let Some(held) = state.held.remove(&grant) {
                    lock(&held).ended = Some(GrantProblem::Revoked(reason));
                }
            }
            Control::Renew {
                request,
                grant,
                lease_ms,
            } => {
                if grant > state.last_grant {
                    return Err(broken(ControlProblem::UnknownGrant { grant }));
                }
                // The grant's terms first (live, a lease no longer than its own and the
                // policy's: a renewal that arrives after the lease ended, before it was
                // revoked, is as late as one after), then the owner's policy decides,
                // without the lock (it may call the session).
                let lease = lease_of(lease_ms);
                let policy = &self.options.policy;
                let asked = state
                    .leases
                    .renewal(grant, lease, policy.max_lease, Instant::now());
                let reply = match asked {
                    Err(reason) => Control::Refuse { request, reason },
                    Ok(asked) => {
                        drop(state);
                        let decided = policy.decide_renewal(&asked);
                        state = self.state();
                        if state.ended.is_some() {
                            return Ok(());
                        }
                        // Checked again at the time of the answer: the lease may have
                        // ended while the policy was asked.
                        match decided
                            .and_then(|()| state.leases.renew(grant, lease, Instant::now()))
                        {
                            Ok(ends) => {
                                if let Some(at) = ends {
                                    self.arm(&mut state, at);
                                }
                                Control::Renewed {
                                    request,
                                    grant,
                                    lease_ms,
                                }
                            }
                            Err(reason) => Control::Refuse { request, reason },
                        }
                    }
                };
                state.send_later(reply);
            }
            Control::Renewed {
                request,
                grant,
                lease_ms,
            } => {
                if grant > state.last_received {
                    return Err(broken(ControlProblem::UnknownGrant { grant }));
                }
                let answering = match (request, Self::waiting(&state, request)) {
                    (0, _) => None,
                    (_, Some((Asked::Renewal(asked), since))) if asked == grant => Some(since),
                    // Given up by this side: the new lease still holds.
                    (_, None)
                        if request <= state.last_request
                            && !state.answers.contains_key(&request) =>
                    {
                        None
                    }
                    // Never asked, answered already, a request for memory, another grant's.
                    _ => return Err(broken(ControlProblem::UnknownRequest { request })),
                };
                // An answer's lease counts from the question, an unsolicited one's from now.
                let from = answering.unwrap_or_else(Instant::now);
                let expires = deadline(from, lease_of(lease_ms));
                if let Some(held) = state.held.get(&grant) {
                    lock(held).expires = expires;
                }
                if answering.is_some() {
                    Self::answer(&mut state, request, Answer::Renewed(expires));
                }
            }
        }
        Ok(())
    }

    /// On the lending thread: the policy's say on an admitted request `request` (its bytes
    /// reserved), then its memory and key, then the answer, queued for the peer.
    fn lend_and_answer(self: &Arc<Self>, request: u64, asked: RegionRequest, lease_ms: u64) {
        if self.state().ended.is_some() {
            return; // the reservation went with everything else
        }
        let policy = &self.options.policy;
        // A panicking callback declines: it must not take the lending thread with it.
        let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            policy.decide_request(&asked)
        }))
        .unwrap_or(Err(RefuseReason::Declined));
        let lent = decided.and_then(|()| self.lend(&asked));
        self.answer_lent(request, asked, lease_ms, lent);
    }

    /// Files the outcome of lending for `request`: a grant of the memory, or a refusal that
    /// gives the reservation back.
    fn answer_lent(
        self: &Arc<Self>,
        request: u64,
        asked: RegionRequest,
        lease_ms: u64,
        lent: std::result::Result<(SharedRegion, RangeKey), RefuseReason>,
    ) {
        let mut state = self.state();
        let reply = match lent {
            Ok((region, key)) if state.ended.is_none() => {
                state.last_grant += 1;
                let id = state.last_grant;
                let remote = key.remote();
                let ends =
                    state
                        .leases
                        .grant(id, asked.len, asked.rights, asked.lease, Instant::now());
                state.made(
                    id,
                    Granted {
                        _key: key,
                        requested: Some((region, asked.len)),
                        len: remote.len,
                    },
                );
                if let Some(at) = ends {
                    self.arm(&mut state, at);
                }
                grant_message(id, request, remote, asked.rights, lease_ms)
            }
            // Closed meanwhile: the reservation went with everything else; the key and the
            // memory are deregistered after the lock.
            Ok((region, key)) => {
                drop(state);
                drop((key, region));
                return;
            }
            Err(reason) => {
                if state.ended.is_some() {
                    return;
                }
                state.requested_bytes -= asked.len;
                state.requested_regions -= 1;
                Control::Refuse { request, reason }
            }
        };
        state.send_later(reply);
    }

    /// Allocates and registers memory for an admitted request (on the lending thread: this
    /// zeroes and pins `asked.len` bytes, which takes longer the larger they are).
    fn lend(
        &self,
        asked: &RegionRequest,
    ) -> std::result::Result<(SharedRegion, RangeKey), RefuseReason> {
        let len = usize::try_from(asked.len).map_err(|_| RefuseReason::OutOfMemory)?;
        if asked.lease.is_some() {
            expiry::start().map_err(|_| RefuseReason::OutOfMemory)?;
        }
        let region = self
            .qp
            .pd()
            // Local access only: the peer reaches it through the grant's key alone.
            .alloc_shared(len, Access::LOCAL)
            .map_err(|_| RefuseReason::OutOfMemory)?;
        let key = RangeKey::register(&region, 0, len, asked.rights)
            .map_err(|_| RefuseReason::OutOfMemory)?;
        Ok((region, key))
    }

    /// What request `id` asked for, if it waits for its answer.
    fn waiting(state: &State, id: u64) -> Option<(Asked, Instant)> {
        match state.answers.get(&id) {
            Some(Answer::Waiting { asked, since, .. }) => Some((*asked, *since)),
            _ => None,
        }
    }

    /// Files `answer` for request `id`, if it is still waited for.
    fn answer(state: &mut State, id: u64, answer: Answer) {
        if let Some(slot) = state.answers.get_mut(&id) {
            if let Answer::Waiting {
                waker: Some(waker), ..
            } = std::mem::replace(slot, answer)
            {
                waker.wake();
            }
        }
    }
}
