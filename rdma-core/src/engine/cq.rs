//! Completion queues and the completion engine.
//!
//! Each in-flight work request owns a slot in its completion queue's slab; its `wr_id` is
//! the slot index plus a generation. Polling the CQ dispatches every completion found to its
//! slot and wakes the task that waits there (only that one): there is no background thread
//! and no timer.
//!
//! A task whose operation is polled takes its result from its slot if a poll already
//! delivered it; otherwise it polls the CQ itself, once (the fast path: no wake-up between a
//! completion and its task when the completion is already there). If its own completion is
//! not there yet, it leaves its waker in its slot and sleeps: no task ever waits on another
//! task's polling, so a future that is polled and then kept aside unpolled holds up nothing
//! but itself.
//!
//! In event mode, the completion channel is watched by the CQ's own driver: the waker the
//! reactor holds for the channel's fd is not a task's but the CQ's. When the channel
//! signals, the reactor's wake-up itself takes the channel events (draining the channel
//! until it would block, which leaves the CQ's waker with the reactor again), then polls the
//! CQ until it is empty and dispatches what it finds (waking exactly the tasks whose
//! completions came; a poll that finds less than it asked for is the last). If a task still
//! waits, it re-arms the CQ (`ibv_req_notify_cq`) and polls once more, to close the race with
//! completions that came before the arm; if none does, the CQ stays unarmed, so that a
//! completion nobody waits for (a send whose future is awaited later, say) raises no event
//! and costs no wake-up. A waiting task only
//! makes sure this is so before it sleeps: when the driver does not watch (the first wait,
//! or the channel's round is under way) it runs a round itself, and a round already under
//! way on another thread is asked to run once more instead. The fd is registered with the
//! context's runtime on the first such round (never in busy mode), from inside the waiting
//! task. So a completion costs about one wake-up, of its own task, however many tasks wait
//! on the CQ. The driver holds the CQ weakly: a CQ dropped while the reactor still holds its
//! waker is simply not driven.
//!
//! In busy mode the tasks poll the CQ themselves until their completion comes, yielding
//! to the executor between rounds of polls; the channel is never watched. A CQ whose
//! channel fails (or whose runtime cannot watch it) falls back to that.

use std::any::Any;
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context as TaskContext, Poll, Wake, Waker};

use rdma_sys::*;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::runtime::{default_runtime, set_nonblocking, ReadinessFd, RuntimeHandle};
use crate::slots::{QpStatus, SlotId, SlotInfo, SlotResult, SlotTable};
use crate::stats::{CqCounters, CqStats};
use crate::wake::{lock, DriveState, WakeList, POLL_BATCH};

/// Polls of an empty CQ in busy mode before yielding to the executor: a yield costs more
/// than a poll.
const BUSY_SPINS: u32 = 64;
/// Channel events acknowledged with one `ibv_ack_cq_events` call.
const ACK_BATCH: u32 = 64;

/// How a task waits for completions when the CQ is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Poll the CQ up to `spin` more times, then sleep until the completion comes. Uses no
    /// CPU while idle.
    ///
    /// The CQ's completion channel wakes the CQ itself, not a task: the runtime's reactor
    /// then polls the CQ and wakes exactly the tasks whose completions it found. No task
    /// polls for another, so an operation's future kept aside unpolled (the losing branch of
    /// a `select!` kept for later, say) holds up no other operation of its CQ.
    Event {
        /// Extra polls of an empty CQ before sleeping (0: sleep at once).
        spin: u32,
    },
    /// Never sleep on the channel: poll the CQ (up to 64 times in a row, then yield to the
    /// executor and poll again). Lowest latency; a core stays busy while operations are
    /// pending.
    Busy,
}

impl Default for PollMode {
    fn default() -> Self {
        PollMode::Event { spin: 0 }
    }
}

/// Options of a completion queue.
#[derive(Debug, Clone, Copy)]
pub struct CqOptions {
    /// Entries (completions that may be pending at once); capped at the device's limit.
    pub entries: u32,
    /// How tasks wait for completions.
    pub poll_mode: PollMode,
}

impl Default for CqOptions {
    fn default() -> Self {
        CqOptions {
            entries: 1024,
            poll_mode: PollMode::default(),
        }
    }
}

/// A completion queue with its completion channel. It waits with the runtime of the
/// [`Context`] it was made from.
///
/// Cheap to clone. Queue pairs keep it alive while they exist.
///
/// ```no_run
/// # fn demo() -> anyrdma_core::Result<()> {
/// use anyrdma_core::{CompletionQueue, Context, CqOptions};
/// let ctx = Context::open_default()?;
/// let cq = CompletionQueue::new(&ctx, CqOptions::default())?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CompletionQueue {
    pub(crate) shared: Arc<CqShared>,
}

pub(crate) struct CqShared {
    raw: NonNull<ibv_cq>,
    channel: NonNull<ibv_comp_channel>,
    /// The channel's fd.
    fd: std::os::fd::RawFd,
    /// The runtime bound to the context it was made from; else the process default, looked
    /// up by the first operation posted in event mode (from inside its task, as a rule).
    runtime: OnceLock<RuntimeHandle>,
    /// The channel's fd registered with the runtime, on the first sleep. Dropped before the
    /// channel is destroyed.
    watch: OnceLock<Box<dyn ReadinessFd>>,
    /// Who drives the channel now, and whether the reactor watches it.
    driving: DriveState,
    /// The waker the reactor holds for the channel: the CQ's own driver ([`ChannelWaker`]).
    channel_waker: Waker,
    /// The device events' generation (plus one) when this CQ last polled them.
    events_seen: AtomicU64,
    state: Mutex<CqState>,
    pub(crate) entries: u32,
    mode: PollMode,
    pub(crate) ctx: Context,
}

// SAFETY: libibverbs CQs and channels are thread-safe; all mutable state is behind `state`.
unsafe impl Send for CqShared {}
// SAFETY: as above.
unsafe impl Sync for CqShared {}

/// The state of a CQ, behind one lock.
struct CqState {
    table: SlotTable,
    armed: bool,
    unacked: u32,
    /// The channel failed, or the runtime cannot watch it: fall back to polling.
    channel_failed: bool,
    /// Why the runtime cannot watch the channel, when it cannot.
    watch_error: Option<Arc<Error>>,
    /// `ibv_poll_cq` failed: the CQ is broken and is not polled again.
    broken: bool,
    /// The failure of `ibv_poll_cq`, until the task that takes it fails the CQ's queue pairs.
    poll_error: Option<Arc<Error>>,
    /// What it counts as it polls, sleeps and wakes (tasks woken: the slot table's count).
    counters: CqCounters,
}

/// The waker the reactor holds for a CQ's completion channel: a wake-up drives the CQ (see
/// the module docs). It holds the CQ weakly, so a CQ that is gone is not driven and is not
/// kept alive by a reactor that has not dropped its registration yet.
struct ChannelWaker(Weak<CqShared>);

impl Wake for ChannelWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(cq) = self.0.upgrade() {
            cq.channel_signalled();
        }
    }
}

impl CompletionQueue {
    /// Creates a completion queue with its own completion channel. It waits with the runtime
    /// of `ctx` (see [`Context::with_runtime`]); nothing is registered with a runtime until
    /// a task first sleeps on it, so it can be created outside any runtime.
    ///
    /// # Errors
    /// [`Error::Verbs`] when the channel or CQ cannot be created.
    pub fn new(ctx: &Context, options: CqOptions) -> Result<CompletionQueue> {
        let entries = options.entries.clamp(1, ctx.limits().max_cqe.max(1));
        // SAFETY: the context is open while `ctx` lives, and CqShared keeps a clone.
        let channel = unsafe { ibv_create_comp_channel(ctx.raw()) };
        let channel =
            NonNull::new(channel).ok_or_else(|| Error::last_os("ibv_create_comp_channel"))?;
        let destroy_channel = |err: Error| {
            // SAFETY: the channel was created above and no CQ uses it yet.
            unsafe { ibv_destroy_comp_channel(channel.as_ptr()) };
            err
        };
        // SAFETY: `channel` is valid; reading its fd field.
        let fd = unsafe { (*channel.as_ptr()).fd };
        set_nonblocking(fd).map_err(|e| destroy_channel(Error::verbs("fcntl(O_NONBLOCK)", e)))?;
        // SAFETY: context and channel are valid; the CQ is destroyed before both.
        let raw = unsafe {
            ibv_create_cq(
                ctx.raw(),
                entries as i32,
                std::ptr::null_mut(),
                channel.as_ptr(),
                0,
            )
        };
        let Some(raw) = NonNull::new(raw) else {
            return Err(destroy_channel(Error::last_os("ibv_create_cq")));
        };
        // SAFETY: `raw` is the CQ just created; ibv_create_cq may round the size up.
        let entries = unsafe { (*raw.as_ptr()).cqe }.max(1) as u32;
        let cq = CompletionQueue {
            shared: Arc::new_cyclic(|weak| CqShared {
                raw,
                channel,
                fd,
                runtime: ctx
                    .runtime()
                    .cloned()
                    .map(OnceLock::from)
                    .unwrap_or_default(),
                watch: OnceLock::new(),
                state: Mutex::new(CqState {
                    table: SlotTable::new(entries),
                    armed: false,
                    unacked: 0,
                    channel_failed: false,
                    watch_error: None,
                    broken: false,
                    poll_error: None,
                    counters: CqCounters::default(),
                }),
                driving: DriveState::default(),
                channel_waker: Waker::from(Arc::new(ChannelWaker(weak.clone()))),
                events_seen: AtomicU64::new(0),
                entries,
                mode: options.poll_mode,
                ctx: ctx.clone(),
            }),
        };
        #[cfg(feature = "metrics")]
        crate::stats::metrics::track(&cq.shared);
        Ok(cq)
    }

    /// Checks that this CQ and `pd` belong to the same device context.
    pub(crate) fn check_device(&self, pd: &crate::pd::ProtectionDomain) -> Result<()> {
        if self.shared.ctx.raw() != pd.context().raw() {
            return Err(Error::InvalidArgument(
                "the completion queue was created on another device context than the protection domain".into(),
            ));
        }
        Ok(())
    }

    /// Entries of the queue.
    pub fn entries(&self) -> u32 {
        self.shared.entries
    }

    /// Operations posted on this CQ whose completion has not been taken yet (including
    /// those whose future was dropped and whose buffers wait for the NIC to finish).
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.state).table.in_use()
    }

    /// Why this CQ polls instead of sleeping on its completion channel, if it does: the
    /// runtime could not watch the channel (for example, Tokio's, when the first task that
    /// waited ran outside any Tokio runtime, or after that runtime shut down), or arming the
    /// channel failed. Operations still complete, at the cost of a busy core while they are
    /// pending.
    pub fn wait_error(&self) -> Option<Arc<Error>> {
        lock(&self.shared.state).watch_error.clone()
    }

    /// The runtime this CQ waits with, once it is settled (see [`Context::with_runtime`]).
    pub fn runtime(&self) -> Option<RuntimeHandle> {
        self.shared.runtime.get().cloned()
    }

    /// What this completion queue did since it was created: polls, empty polls,
    /// completions, sleeps on its channel and wake-ups (see [`CqStats`]). Takes the queue's
    /// lock for a moment.
    pub fn stats(&self) -> CqStats {
        self.shared.stats()
    }

    /// Polls the CQ once and dispatches what it finds, without waiting. Operations' futures
    /// do this themselves; call it to release the buffers of dropped operations when no
    /// future is pending on this CQ.
    pub fn poll_now(&self) -> usize {
        let mut wake = WakeList::new();
        let (found, _) = self
            .shared
            .poll_cq(&mut lock(&self.shared.state), &mut wake, None);
        wake.run();
        found
    }
}

impl CqShared {
    #[inline]
    pub(crate) fn raw(&self) -> *mut ibv_cq {
        self.raw.as_ptr()
    }

    /// A snapshot of its counters.
    fn stats(&self) -> CqStats {
        let state = lock(&self.state);
        state.counters.snapshot(state.table.tasks_woken())
    }

    /// Takes a slot for `info`, reserving CQ room for its work requests.
    ///
    /// The first one also settles the runtime that waits for completions (and keeps the
    /// cooperative budget): with none at all, the operation fails here, before anything is
    /// posted, rather than being awaited with no way to sleep.
    #[inline]
    pub(crate) fn reserve(&self, info: SlotInfo) -> Result<SlotId> {
        if self.runtime.get().is_none() {
            self.runtime()?;
        }
        lock(&self.state).table.reserve(info)
    }

    /// The device took only the first `accepted` requests of slot `id`.
    pub(crate) fn shrink(&self, id: SlotId, accepted: u32) {
        lock(&self.state).table.shrink(id, accepted);
    }

    /// Polls the CQ until it is empty, dispatching everything: frees the room and the queue
    /// credits of completions nobody polled.
    pub(crate) fn reap(&self) {
        drop(self.drain());
    }

    /// Polls the CQ until a poll finds nothing, waking the owners of what it dispatched
    /// (outside the lock), and returns the state locked with the CQ empty.
    fn drain(&self) -> MutexGuard<'_, CqState> {
        loop {
            let mut wake = WakeList::new();
            let mut state = lock(&self.state);
            if self.poll_cq(&mut state, &mut wake, None).0 == 0 {
                return state;
            }
            drop(state);
            wake.run();
        }
    }

    /// The outcome of slot `id` if a poll of the CQ already delivered it; never polls the
    /// CQ itself, registers no waker and never waits (for owners that collect many finished
    /// operations at once, while other operations drive the CQ).
    pub(crate) fn take_if_done(&self, id: SlotId) -> Option<SlotResult> {
        lock(&self.state).table.take_done(id)
    }

    /// The task of `waker` stops waiting for `id`: the slot forgets it (whoever polls the
    /// operation next registers anew). Nothing else depends on it: no task waits on another.
    pub(crate) fn stop_waiting(&self, id: SlotId, waker: &Waker) {
        lock(&self.state).table.forget_waker(id, waker);
    }

    /// Gives back a slot whose work requests were never posted.
    pub(crate) fn unreserve(&self, id: SlotId) {
        lock(&self.state).table.unreserve(id);
    }

    /// Marks the future of `id` as gone: its buffers wait in the slot for the completion.
    pub(crate) fn abandon(&self, id: SlotId, buffers: Box<dyn Any + Send>) {
        let done_already = lock(&self.state).table.abandon(id, buffers);
        drop(done_already); // outside the lock: dropping buffers may deregister memory
    }

    /// After the queue pair (or shared receive queue) of `owner` was destroyed or reset, so
    /// the device no longer touches its buffers: dispatches what the CQ holds, then ends every
    /// slot it left behind. A dropped operation's buffers are released; a waiting one ends
    /// with a flush error caused by `cause` (after a destroy, none waits: a waiting
    /// operation keeps its queue pair alive).
    pub(crate) fn end_owner(&self, owner: &Arc<QpStatus>, cause: Option<&Arc<Error>>) {
        let mut wake = WakeList::new();
        let mut wakers = Vec::new();
        let mut state = self.drain();
        state.table.end_owner(owner, cause, &mut wake, &mut wakers);
        drop(state);
        wake.run();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Reads the device's asynchronous events, if this CQ's runtime watches them; true if
    /// any was applied (completions may have changed: poll again). `waiter` is woken by the
    /// next one.
    ///
    /// The descriptor is polled only when it signalled since this CQ last polled it (its
    /// generation moved): the registration and `waiter` stay armed until then, so the common
    /// sleep costs one atomic load here instead of a reactor poll.
    fn poll_device_events(&self, waiter: Option<&Waker>) -> bool {
        let Some(runtime) = self.runtime.get() else {
            return false;
        };
        let ctx = &*self.ctx.inner;
        ctx.events.retire_overdue();
        // Read before the poll: a signal during it moves the generation past this value.
        let generation = ctx.events.generation() + 1;
        if self.events_seen.load(Ordering::Relaxed) == generation {
            return false;
        }
        let applied = ctx.events.poll(ctx, runtime, waiter);
        self.events_seen.store(generation, Ordering::Relaxed);
        applied > 0
    }

    /// Polls for the completion of slot `id`, as described in the module docs. The result
    /// stays boxed on error: the caller unboxes it once, into its own output.
    #[inline]
    pub(crate) fn poll_slot(&self, id: SlotId, cx: &mut TaskContext<'_>) -> Poll<SlotResult> {
        // A task whose operations are always complete when polled must still let others run.
        // (Refused here, the task is woken by the runtime to poll again; until then its slot
        // keeps whatever waker it had, and no other operation depends on it.)
        if let Some(runtime) = self.runtime.get() {
            if runtime.poll_budget(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let mut state = lock(&self.state);
        if let Some(result) = state.table.take_done(id) {
            // Already dispatched by another poll: no wake list, no CQ poll.
            return Poll::Ready(result);
        }
        let mut first = Some(state);
        let mut spins = 0u32;
        let mut wake = WakeList::new();
        loop {
            // The first time round, the slot was just found not done under this same lock.
            let (mut state, done) = match first.take() {
                Some(state) => (state, None),
                None => {
                    let mut state = lock(&self.state);
                    let done = state.table.take_done(id);
                    (state, done)
                }
            };
            let (found, own) = match done {
                Some(result) => (0, Some(result)),
                None => self.poll_cq(&mut state, &mut wake, Some(id)),
            };
            if let Some(result) = own {
                drop(state);
                wake.run();
                return Poll::Ready(result);
            }
            // A poll that found less than it asked for emptied the CQ: as after an empty one,
            // the task sleeps (or spins), with no empty poll first.
            if found == POLL_BATCH {
                drop(state);
                wake.run();
                continue;
            }
            if let Some(error) = state.poll_error.take() {
                // Fails its queue pairs, which ends their operations (this one included).
                drop(state);
                wake.run();
                self.ctx.inner.events.fail_cq(self.raw() as usize, &error);
                continue;
            }
            // The CQ is empty and our completion has not come.
            let mode = if state.channel_failed {
                PollMode::Busy
            } else {
                self.mode
            };
            match mode {
                PollMode::Busy if spins < BUSY_SPINS => {}
                PollMode::Event { spin } if spins < spin => {}
                PollMode::Busy => {
                    state.table.set_waker(id, cx.waker());
                    drop(state);
                    if self.poll_device_events(None) {
                        spins = 0;
                        continue;
                    }
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                PollMode::Event { .. } => {
                    state.table.set_waker(id, cx.waker());
                    if state.armed && self.driving.is_watched() {
                        // The CQ was armed before the driver's last poll and the reactor
                        // watches the channel: our completion wakes the driver, which wakes us.
                        drop(state);
                        wake.run();
                        return Poll::Pending;
                    }
                    drop(state);
                    wake.run();
                    if let Some(result) = self.drive(Some(id)) {
                        return Poll::Ready(result);
                    }
                    let state = lock(&self.state);
                    if state.channel_failed {
                        first = Some(state); // no way to sleep: poll instead
                        continue;
                    }
                    return Poll::Pending;
                }
            }
            spins += 1;
            drop(state);
            wake.run();
            std::hint::spin_loop();
        }
    }

    /// The reactor's wake-up of the completion channel's waker (or of the device's events,
    /// which it watches too): drives the CQ. Never called with the state locked by this
    /// thread: the reactors call wakers outside the registrations' locks, and this module
    /// never wakes the channel's waker itself.
    fn channel_signalled(&self) {
        self.driving.clear_watched();
        let none = self.drive(None);
        debug_assert!(none.is_none(), "no slot is handed back to the reactor");
    }

    /// Runs rounds of the driver (see [`CqShared::drive_round`]) unless another caller runs
    /// them, which then runs one more. Returns the result of slot `polling` if a round found
    /// its completion. Called without the state lock.
    fn drive(&self, polling: Option<SlotId>) -> Option<SlotResult> {
        if !self.driving.begin() {
            return None;
        }
        let mut own = None;
        loop {
            self.drive_round(polling, &mut own);
            if self.driving.finish() {
                return own;
            }
        }
    }

    /// One round of the driver: takes the channel's events and leaves the CQ's own waker
    /// with the reactor (one `poll_read_with`, which drains the channel until it would
    /// block, or takes one event where the reactor reports readiness by level, which reports
    /// the rest again), acknowledges the events, polls the CQ until it is empty (dispatching every
    /// completion, waking their tasks outside the lock) and, while a task waits, arms the CQ
    /// and polls once more, then reads the device's events. The waker is with the reactor
    /// before the arm, so an event raised after it is never missed. Ends with the channel
    /// watched (the reactor wakes the driver on the next event; the CQ is armed if a task
    /// waits, else the next task to sleep arms it in a round of its own), or with the channel
    /// given up (every waiting task woken to poll instead). The result of `polling`, if
    /// found, goes to `own`.
    fn drive_round(&self, polling: Option<SlotId>, own: &mut Option<SlotResult>) {
        let mut wake = WakeList::new();
        loop {
            let watch = match self.watch.get() {
                Some(watch) => &**watch,
                None => {
                    let mut state = lock(&self.state);
                    if state.channel_failed {
                        return;
                    }
                    match self.watch_channel(&mut state, &mut wake) {
                        Some(watch) => watch,
                        // No way to sleep: the tasks poll instead (channel_failed is set and
                        // they are queued in `wake`).
                        None => return,
                    }
                }
            };
            let mut events = 0u32;
            let mut channel_cx = TaskContext::from_waker(&self.channel_waker);
            // A reactor that reports readiness by level reports an event left in the channel
            // again once interest is re-armed: one event per readiness is enough there, and
            // saves the read that would find the channel empty. (The CQ is armed at most
            // once per taken event, so there is seldom more than one.)
            let one_per_readiness = watch.level_triggered();
            let watched = watch.poll_read_with(&mut channel_cx, &mut || loop {
                self.get_event()?;
                events += 1;
                if one_per_readiness {
                    return Err(std::io::ErrorKind::WouldBlock.into());
                }
            });
            let registered = watched.is_pending();
            let mut state = lock(&self.state);
            if events > 0 {
                state.armed = false;
                state.counters.wakeups += u64::from(events);
                state.unacked += events;
                if state.unacked >= ACK_BATCH {
                    // SAFETY: the CQ is valid; `unacked` events were taken from it.
                    unsafe { ibv_ack_cq_events(self.raw(), state.unacked) };
                    state.unacked = 0;
                }
            }
            if let Poll::Ready(Err(source)) = watched {
                // The reactor refused (its runtime shut down, say) or the channel failed.
                let runtime = self.runtime.get().map_or("none", RuntimeHandle::name);
                let reason = Error::Runtime {
                    runtime,
                    what: "the completion channel",
                    source,
                };
                self.fail_channel(&mut state, reason, &mut wake);
            }
            loop {
                let (found, result) = self.poll_cq(&mut state, &mut wake, polling);
                if result.is_some() {
                    *own = result;
                }
                if let Some(error) = state.poll_error.take() {
                    drop(state);
                    wake.run();
                    self.ctx.inner.events.fail_cq(self.raw() as usize, &error);
                    state = lock(&self.state);
                    continue;
                }
                if found == POLL_BATCH {
                    drop(state);
                    wake.run();
                    state = lock(&self.state);
                    continue;
                }
                // A poll that found less than it asked for emptied the CQ. Armed before it,
                // the next completion raises an event. Unarmed, it stays so while no task
                // waits: a completion nobody waits for costs no event and no wake-up (the
                // next task to sleep arms it, in its own round).
                if state.armed || state.channel_failed || !state.table.has_waiters() {
                    break;
                }
                // Arm, then poll again: a completion that came before the arm raises no event.
                if let Err(err) = self.arm(&mut state) {
                    self.fail_channel(&mut state, err, &mut wake);
                }
            }
            if state.channel_failed {
                return;
            }
            drop(state);
            wake.run();
            if self.poll_device_events(Some(&self.channel_waker)) {
                continue;
            }
            if registered {
                self.driving.set_watched();
                return;
            }
            // The reactor reported the channel readable but `get_event` never said it would
            // block (an adapter that does not drain): take the events again.
        }
    }

    /// The channel cannot be used, for `reason` (kept for [`CompletionQueue::wait_error`]):
    /// every waiting task is queued in `wake`, to be woken once the lock is released, and
    /// polls from then on.
    fn fail_channel(&self, state: &mut CqState, reason: Error, wake: &mut WakeList) {
        crate::trace::event!(warn, %reason, "completion channel given up: polling instead");
        state.channel_failed = true;
        state.watch_error.get_or_insert_with(|| Arc::new(reason));
        self.driving.clear_watched();
        state.table.wake_all_waiting(wake);
    }

    /// The runtime that waits for this CQ's completions (see the `runtime` field).
    fn runtime(&self) -> Result<&RuntimeHandle> {
        if let Some(runtime) = self.runtime.get() {
            return Ok(runtime);
        }
        let runtime = default_runtime()?;
        Ok(self.runtime.get_or_init(|| runtime))
    }

    /// The completion channel's fd as registered with the runtime: registered on the first
    /// call, under the state lock so that it happens once. When the runtime cannot watch
    /// it, the CQ falls back to polling and keeps the reason ([`CompletionQueue::wait_error`]).
    fn watch_channel(&self, state: &mut CqState, wake: &mut WakeList) -> Option<&dyn ReadinessFd> {
        if let Some(watch) = self.watch.get() {
            return Some(&**watch);
        }
        let registered = self.runtime().and_then(|runtime| {
            // SAFETY: the channel's fd was made non-blocking in `new`, and stays open until
            // Drop, which drops this registration before it destroys the channel.
            unsafe { runtime.register_fd(self.fd) }.map_err(|source| Error::Runtime {
                runtime: runtime.name(),
                what: "the completion channel",
                source,
            })
        });
        match registered {
            Ok(watch) => Some(&**self.watch.get_or_init(|| watch)),
            Err(err) => {
                self.fail_channel(state, err, wake);
                None
            }
        }
    }

    fn arm(&self, state: &mut CqState) -> Result<()> {
        // SAFETY: the CQ is valid for the life of self.
        let rc = unsafe { ibv_req_notify_cq(self.raw(), 0) };
        if rc != 0 {
            return Err(Error::from_code("ibv_req_notify_cq", rc));
        }
        state.armed = true;
        state.counters.sleeps += 1;
        Ok(())
    }

    /// Reads one event from the (non-blocking) completion channel.
    fn get_event(&self) -> std::io::Result<()> {
        let mut cq = std::ptr::null_mut();
        let mut cq_context = std::ptr::null_mut();
        // SAFETY: the channel is valid and non-blocking; out pointers are valid.
        let rc = unsafe { ibv_get_cq_event(self.channel.as_ptr(), &mut cq, &mut cq_context) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Drains up to one batch of completions into their slots. Returns how many it found,
    /// and the result of `polling` if it was among them.
    fn poll_cq(
        &self,
        state: &mut CqState,
        wake: &mut WakeList,
        polling: Option<SlotId>,
    ) -> (usize, Option<SlotResult>) {
        if state.broken {
            return (0, None);
        }
        let mut wcs: [MaybeUninit<ibv_wc>; POLL_BATCH] =
            [const { MaybeUninit::uninit() }; POLL_BATCH];
        // SAFETY: the CQ is valid; `wcs` has room for POLL_BATCH entries.
        let n = unsafe { ibv_poll_cq(self.raw(), POLL_BATCH as i32, wcs.as_mut_ptr().cast()) };
        let Ok(n) = usize::try_from(n) else {
            state.broken = true;
            state.poll_error = Some(Arc::new(Error::Verbs {
                call: "ibv_poll_cq",
                source: std::io::Error::other(format!("returned {n}")),
                hint: Some("the completion queue is broken; its queue pairs are failed"),
            }));
            return (0, None);
        };
        state.counters.polls += 1;
        let mut own = None;
        if n != 0 {
            // Counted only here: an empty poll costs its count and no more.
            state.counters.found(n);
            for wc in &wcs[..n] {
                // SAFETY: ibv_poll_cq initialised the first `n` entries.
                let wc = unsafe { wc.assume_init_ref() };
                if let Some(result) = state.table.dispatch(wc, wake, polling) {
                    own = Some(result);
                }
            }
        }
        (n, own)
    }

    /// Test emulation of what libmlx5 (and mlx4, hns) do when a queue pair enters RESET or
    /// is destroyed: the completions of queue pair `qpn` still in the CQ are removed, never
    /// to be polled (those of other queue pairs are dispatched). Used only under
    /// [`QueuePair::emulate_cq_clean_on_reset`](crate::QueuePair::emulate_cq_clean_on_reset).
    pub(crate) fn clean_emulated(&self, qpn: u32) {
        loop {
            let mut wake = WakeList::new();
            let mut state = lock(&self.state);
            if state.broken {
                return;
            }
            let mut wcs: [MaybeUninit<ibv_wc>; POLL_BATCH] =
                [const { MaybeUninit::uninit() }; POLL_BATCH];
            // SAFETY: the CQ is valid; `wcs` has room for POLL_BATCH entries.
            let n = unsafe { ibv_poll_cq(self.raw(), POLL_BATCH as i32, wcs.as_mut_ptr().cast()) };
            let Ok(n @ 1..) = usize::try_from(n) else {
                return;
            };
            for wc in &wcs[..n] {
                // SAFETY: ibv_poll_cq initialised the first `n` entries.
                let wc = unsafe { wc.assume_init_ref() };
                if wc.qp_num != qpn {
                    state.table.dispatch(wc, &mut wake, None);
                }
            }
            drop(state);
            wake.run();
        }
    }
}

#[cfg(feature = "metrics")]
impl crate::stats::metrics::Exported for CqShared {
    fn export(&self) {
        let stats = self.stats();
        // SAFETY: the CQ is valid for the life of self; reading its handle field.
        let handle = unsafe { (*self.raw()).handle };
        crate::stats::metrics::record_cq(&stats, self.ctx.device_name(), handle);
    }
}

impl Drop for CqShared {
    fn drop(&mut self) {
        // Every queue pair using this CQ is gone (each holds an Arc), so the device no
        // longer touches the buffers of abandoned slots: they drop with `state`.
        let unacked = self
            .state
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .unacked;
        if unacked > 0 {
            // SAFETY: all events taken from this CQ must be acknowledged before destroying it.
            unsafe { ibv_ack_cq_events(self.raw(), unacked) };
        }
        // SAFETY: no QP object of ours uses the CQ any more; it is destroyed once.
        let rc = unsafe { ibv_destroy_cq(self.raw()) };
        // The registration goes before its fd is closed.
        drop(self.watch.take());
        if rc != 0 {
            crate::trace::event!(
                error,
                errno = rc,
                "ibv_destroy_cq failed: the buffers of its slots and its channel are leaked"
            );
            // A queue pair whose destruction failed still uses the CQ, so the device may
            // still write the buffers its slots hold: leak them (and the channel the CQ
            // still refers to) rather than free memory the device may touch.
            let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
            std::mem::forget(std::mem::replace(&mut state.table, SlotTable::new(0)));
            return;
        }
        // SAFETY: the channel's only CQ is destroyed; destroyed once.
        unsafe { ibv_destroy_comp_channel(self.channel.as_ptr()) };
    }
}
