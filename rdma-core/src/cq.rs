//! Completion queues and the completion engine.
//!
//! Each in-flight work request owns a slot in its completion queue's slab; its `wr_id` is
//! the slot index plus a generation. Whoever polls an operation's future polls the CQ in
//! batches and dispatches every completion to its slot, waking the task that waits there:
//! there is no background thread and no timer. When the CQ is empty, the future arms the
//! CQ (`ibv_req_notify_cq`), polls once more to close the race with completions that
//! arrived meanwhile, and sleeps on the completion channel's fd through the [`Runtime`].
//! The channel is watched with one waker that fans out to every sleeping task, so a task
//! that leaves never takes the wake-up of the others with it.

use std::any::Any;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Wake, Waker};

use rdma_sys::*;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::remote::RemoteRegion;
use crate::runtime::{set_nonblocking, ReadinessFd, Runtime};
use crate::wc::{WcStatus, WorkKind};

/// How many work completions one `ibv_poll_cq` call takes.
const POLL_BATCH: usize = 32;
/// Channel events acknowledged with one `ibv_ack_cq_events` call.
const ACK_BATCH: u32 = 64;
/// Bit of a `wr_id` that marks the last (signaled) work request of a slot.
pub(crate) const LAST_WR: u64 = 1 << 63;

/// How a task waits for completions when the CQ is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Poll the CQ up to `spin` more times, then arm it and sleep until the completion
    /// channel signals. Uses no CPU while idle.
    Event {
        /// Extra polls of an empty CQ before sleeping (0: sleep at once).
        spin: u32,
    },
    /// Never sleep on the channel: keep polling, yielding to the executor between polls.
    /// Lowest latency; one core stays busy while operations are pending.
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

/// A completion queue with its completion channel, driven by runtime `R`.
///
/// Cheap to clone. Queue pairs keep it alive while they exist.
///
/// ```no_run
/// # async fn demo<R: anyrdma_core::Runtime>() -> anyrdma_core::Result<()> {
/// use anyrdma_core::{CompletionQueue, Context, CqOptions};
/// let ctx = Context::open_default()?;
/// let cq = CompletionQueue::<R>::new(&ctx, CqOptions::default())?;
/// # Ok(()) }
/// ```
pub struct CompletionQueue<R: Runtime> {
    pub(crate) shared: Arc<CqShared<R>>,
}

impl<R: Runtime> Clone for CompletionQueue<R> {
    fn clone(&self) -> Self {
        CompletionQueue {
            shared: self.shared.clone(),
        }
    }
}

pub(crate) struct CqShared<R: Runtime> {
    raw: NonNull<ibv_cq>,
    channel: NonNull<ibv_comp_channel>,
    /// Dropped before the channel is destroyed.
    fd: ManuallyDrop<R::Fd>,
    sleepers: Arc<Sleepers>,
    channel_waker: Waker,
    state: Mutex<CqState>,
    pub(crate) entries: u32,
    mode: PollMode,
    pub(crate) ctx: Context,
}

// SAFETY: libibverbs CQs and channels are thread-safe; all mutable state is behind `state`.
unsafe impl<R: Runtime> Send for CqShared<R> {}
// SAFETY: as above.
unsafe impl<R: Runtime> Sync for CqShared<R> {}

/// Tasks asleep on the completion channel. The channel fd is always polled with a waker of
/// this list, so whichever task polled it last, an event wakes every sleeper.
#[derive(Default)]
struct Sleepers(Mutex<Vec<Waker>>);

impl Sleepers {
    fn add(&self, waker: &Waker) {
        let mut list = lock(&self.0);
        if !list.iter().any(|w| w.will_wake(waker)) {
            list.push(waker.clone());
        }
    }
}

impl Wake for Sleepers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let woken = std::mem::take(&mut *lock(&self.0));
        for waker in woken {
            waker.wake();
        }
    }
}

/// Which work queue a slot's requests went to, for returning queue credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkQueue {
    Send,
    Recv,
}

/// What a successful completion reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WcInfo {
    pub(crate) byte_len: u32,
    pub(crate) imm: Option<u32>,
}

/// The failure state and queue credits of one queue pair (or shared receive queue), shared
/// with its slots.
pub(crate) struct QpStatus {
    /// The queue pair number (0 for a shared receive queue).
    pub(crate) qpn: u32,
    /// A shared receive queue: a failed receive means the consuming QP failed, not the SRQ.
    pub(crate) shared_receive: bool,
    /// The failure that put the QP in the error state, first one wins.
    pub(crate) failure: std::sync::OnceLock<Arc<Error>>,
    pub(crate) sq_used: std::sync::atomic::AtomicU32,
    pub(crate) rq_used: std::sync::atomic::AtomicU32,
}

impl QpStatus {
    pub(crate) fn new(qpn: u32, shared_receive: bool) -> Arc<QpStatus> {
        Arc::new(QpStatus {
            qpn,
            shared_receive,
            failure: std::sync::OnceLock::new(),
            sq_used: std::sync::atomic::AtomicU32::new(0),
            rq_used: std::sync::atomic::AtomicU32::new(0),
        })
    }

    pub(crate) fn release(&self, queue: WorkQueue, wrs: u32) {
        use std::sync::atomic::Ordering::Release;
        match queue {
            WorkQueue::Send => self.sq_used.fetch_sub(wrs, Release),
            WorkQueue::Recv => self.rq_used.fetch_sub(wrs, Release),
        };
    }
}

/// The description of a posted slot, kept for dispatch and error reports.
pub(crate) struct SlotInfo {
    pub(crate) qp: Arc<QpStatus>,
    pub(crate) kind: WorkKind,
    pub(crate) remote: Option<RemoteRegion>,
    pub(crate) queue: WorkQueue,
    /// Work requests posted under this slot (all but the last unsignaled).
    pub(crate) wrs: u32,
}

enum SlotState {
    Free,
    Pending {
        info: SlotInfo,
        waker: Option<Waker>,
        first_error: Option<Error>,
        /// The buffers of an operation whose future was dropped; released on completion.
        abandoned: Option<Box<dyn Any + Send>>,
    },
    Done(Result<WcInfo>),
}

struct Slot {
    generation: u32,
    state: SlotState,
}

/// A posted slot: what the operation's future keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotId {
    index: u32,
    generation: u32,
}

impl SlotId {
    pub(crate) fn wr_id(self, last: bool) -> u64 {
        let id = (u64::from(self.generation) << 32) | u64::from(self.index);
        if last {
            id | LAST_WR
        } else {
            id
        }
    }
}

struct CqState {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Work requests posted and not yet accounted for: each may produce a completion.
    outstanding: u32,
    armed: bool,
    unacked: u32,
    /// The channel failed: fall back to polling.
    channel_failed: bool,
}

/// Wakers gathered under the lock and woken after it is released.
struct WakeList {
    wakers: [Option<Waker>; POLL_BATCH],
    len: usize,
    released: Vec<Box<dyn Any + Send>>,
}

impl WakeList {
    fn new() -> Self {
        WakeList {
            wakers: [const { None }; POLL_BATCH],
            len: 0,
            released: Vec::new(),
        }
    }

    fn push(&mut self, waker: Waker) {
        self.wakers[self.len] = Some(waker);
        self.len += 1;
    }

    fn run(&mut self) {
        for waker in self.wakers[..self.len].iter_mut() {
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
        self.len = 0;
        self.released.clear();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves consistent state (every update is a
    // single assignment), so carry on rather than spread the panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<R: Runtime> CompletionQueue<R> {
    /// Creates a completion queue with its own completion channel, registered with `R`.
    ///
    /// # Errors
    /// [`Error::Verbs`] when the channel or CQ cannot be created; an I/O error from the
    /// runtime when it cannot watch the channel (e.g. no runtime on this thread).
    pub fn new(ctx: &Context, options: CqOptions) -> Result<CompletionQueue<R>> {
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
        // SAFETY: the channel's fd is open and non-blocking, and CqShared drops the
        // registration before it destroys the channel.
        let watched = unsafe { R::register_fd(fd) }
            .map_err(|e| destroy_channel(Error::verbs("Runtime::register_fd", e)))?;
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
            let err = Error::last_os("ibv_create_cq");
            drop(watched);
            return Err(destroy_channel(err));
        };
        // SAFETY: `raw` is the CQ just created; ibv_create_cq may round the size up.
        let entries = unsafe { (*raw.as_ptr()).cqe }.max(1) as u32;
        let sleepers = Arc::new(Sleepers::default());
        Ok(CompletionQueue {
            shared: Arc::new(CqShared {
                raw,
                channel,
                fd: ManuallyDrop::new(watched),
                channel_waker: Waker::from(sleepers.clone()),
                sleepers,
                state: Mutex::new(CqState {
                    slots: Vec::new(),
                    free: Vec::new(),
                    outstanding: 0,
                    armed: false,
                    unacked: 0,
                    channel_failed: false,
                }),
                entries,
                mode: options.poll_mode,
                ctx: ctx.clone(),
            }),
        })
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
        let state = lock(&self.shared.state);
        state.slots.len() - state.free.len()
    }

    /// Polls the CQ once and dispatches what it finds, without waiting. Operations' futures
    /// do this themselves; call it to release the buffers of dropped operations when no
    /// future is pending on this CQ.
    pub fn poll_now(&self) -> usize {
        let mut wake = WakeList::new();
        let n = {
            let mut state = lock(&self.shared.state);
            self.shared.poll_cq(&mut state, &mut wake, None)
        };
        wake.run();
        n
    }
}

impl<R: Runtime> CqShared<R> {
    pub(crate) fn raw(&self) -> *mut ibv_cq {
        self.raw.as_ptr()
    }

    /// Takes a slot for `info`, reserving CQ room for its work requests.
    pub(crate) fn reserve(&self, info: SlotInfo) -> Result<SlotId> {
        let mut state = lock(&self.state);
        if state.outstanding + info.wrs > self.entries {
            return Err(Error::QueueFull {
                queue: "completion queue",
                depth: self.entries,
            });
        }
        state.outstanding += info.wrs;
        let pending = SlotState::Pending {
            info,
            waker: None,
            first_error: None,
            abandoned: None,
        };
        let index = match state.free.pop() {
            Some(index) => {
                state.slots[index as usize].state = pending;
                index
            }
            None => {
                state.slots.push(Slot {
                    generation: 0,
                    state: pending,
                });
                (state.slots.len() - 1) as u32
            }
        };
        Ok(SlotId {
            index,
            generation: state.slots[index as usize].generation,
        })
    }

    /// Gives back a slot whose work requests were never posted.
    pub(crate) fn unreserve(&self, id: SlotId) {
        let mut state = lock(&self.state);
        let wrs = match &state.slots[id.index as usize].state {
            SlotState::Pending { info, .. } => info.wrs,
            _ => 0,
        };
        state.outstanding -= wrs;
        state.free_slot(id.index);
    }

    /// Polls for the completion of slot `id`, driving the CQ as described in the module docs.
    pub(crate) fn poll_slot(&self, id: SlotId, cx: &mut TaskContext<'_>) -> Poll<Result<WcInfo>> {
        let mut spins = 0u32;
        let mut wake = WakeList::new();
        loop {
            let mut state = lock(&self.state);
            if let Some(result) = state.take_done(id) {
                return Poll::Ready(result);
            }
            let found = self.poll_cq(&mut state, &mut wake, Some(id));
            if let Some(result) = state.take_done(id) {
                drop(state);
                wake.run();
                return Poll::Ready(result);
            }
            if found > 0 {
                drop(state);
                wake.run();
                continue;
            }
            // The CQ is empty and our completion has not come.
            state.set_waker(id, cx.waker());
            let mode = if state.channel_failed {
                PollMode::Busy
            } else {
                self.mode
            };
            match mode {
                PollMode::Busy => {
                    drop(state);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                PollMode::Event { spin } if spins < spin => {
                    spins += 1;
                    drop(state);
                    std::hint::spin_loop();
                    continue;
                }
                PollMode::Event { .. } => {}
            }
            if !state.armed {
                // Arm, then poll again: a completion that arrived before the arm raises no event.
                if let Err(err) = self.arm(&mut state) {
                    let _ = err;
                    state.channel_failed = true;
                }
                continue;
            }
            drop(state);
            // Register as a sleeper before looking at the fd, so an event after the look
            // finds us in the list.
            self.sleepers.add(cx.waker());
            let mut channel_cx = TaskContext::from_waker(&self.channel_waker);
            match self.fd.poll_read_with(&mut channel_cx, || self.get_event()) {
                Poll::Ready(Ok(())) => {
                    let mut state = lock(&self.state);
                    state.armed = false;
                    state.unacked += 1;
                    if state.unacked >= ACK_BATCH {
                        // SAFETY: the CQ is valid; `unacked` events were taken from it.
                        unsafe { ibv_ack_cq_events(self.raw(), state.unacked) };
                        state.unacked = 0;
                    }
                    // Re-arm at once (then poll again): another task may already be asleep
                    // counting on the CQ being armed.
                    if self.arm(&mut state).is_err() {
                        state.channel_failed = true;
                    }
                }
                Poll::Ready(Err(_)) => lock(&self.state).channel_failed = true,
                Poll::Pending => return Poll::Pending,
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

    /// Drains up to one batch of completions into their slots. Returns how many it found.
    fn poll_cq(&self, state: &mut CqState, wake: &mut WakeList, polling: Option<SlotId>) -> usize {
        let mut wcs: [MaybeUninit<ibv_wc>; POLL_BATCH] =
            [const { MaybeUninit::uninit() }; POLL_BATCH];
        // SAFETY: the CQ is valid; `wcs` has room for POLL_BATCH entries.
        let n = unsafe { ibv_poll_cq(self.raw(), POLL_BATCH as i32, wcs.as_mut_ptr().cast()) };
        let n = n.max(0) as usize;
        for wc in &wcs[..n] {
            // SAFETY: ibv_poll_cq initialised the first `n` entries.
            let wc = unsafe { wc.assume_init_ref() };
            state.dispatch(wc, wake, polling);
        }
        n
    }

    /// Marks the future of `id` as gone: its buffers wait in the slot for the completion.
    pub(crate) fn abandon(&self, id: SlotId, buffers: Box<dyn Any + Send>) {
        let mut state = lock(&self.state);
        let slot = &mut state.slots[id.index as usize];
        if slot.generation != id.generation {
            return;
        }
        match &mut slot.state {
            SlotState::Pending {
                abandoned, waker, ..
            } => {
                *abandoned = Some(buffers);
                *waker = None;
            }
            SlotState::Done(_) => {
                state.free_slot(id.index);
                drop(state);
                drop(buffers);
            }
            SlotState::Free => {}
        }
    }

    /// After the queue pair (or shared receive queue) of `owner` was destroyed, so the device
    /// no longer touches its buffers: dispatches what the CQ holds and releases every slot
    /// it left behind.
    pub(crate) fn release_owner(&self, owner: &Arc<QpStatus>) {
        let mut wake = WakeList::new();
        {
            let mut state = lock(&self.state);
            while self.poll_cq(&mut state, &mut wake, None) > 0 {
                let mut fresh = WakeList::new();
                std::mem::swap(&mut fresh, &mut wake);
                drop(state);
                fresh.run();
                state = lock(&self.state);
            }
            for index in 0..state.slots.len() {
                if let SlotState::Pending {
                    info, abandoned, ..
                } = &mut state.slots[index].state
                {
                    if Arc::ptr_eq(&info.qp, owner) {
                        let wrs = info.wrs;
                        info.qp.release(info.queue, wrs);
                        if let Some(buffers) = abandoned.take() {
                            wake.released.push(buffers);
                        }
                        state.outstanding = state.outstanding.saturating_sub(wrs);
                        state.free_slot(index as u32);
                    }
                }
            }
        }
        wake.run();
    }
}

impl CqState {
    fn take_done(&mut self, id: SlotId) -> Option<Result<WcInfo>> {
        let slot = &mut self.slots[id.index as usize];
        if slot.generation != id.generation || !matches!(slot.state, SlotState::Done(_)) {
            return None;
        }
        let SlotState::Done(result) = std::mem::replace(&mut slot.state, SlotState::Free) else {
            unreachable!("checked above")
        };
        self.free_slot(id.index);
        Some(result)
    }

    fn set_waker(&mut self, id: SlotId, new: &Waker) {
        if let SlotState::Pending { waker, .. } = &mut self.slots[id.index as usize].state {
            match waker {
                Some(old) if old.will_wake(new) => {}
                _ => *waker = Some(new.clone()),
            }
        }
    }

    fn free_slot(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        slot.state = SlotState::Free;
        slot.generation = slot.generation.wrapping_add(1) & 0x7fff_ffff;
        self.free.push(index);
    }

    fn dispatch(&mut self, wc: &ibv_wc, wake: &mut WakeList, polling: Option<SlotId>) {
        let index = (wc.wr_id & 0xffff_ffff) as u32;
        let generation = ((wc.wr_id >> 32) & 0x7fff_ffff) as u32;
        let last = wc.wr_id & LAST_WR != 0;
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        if slot.generation != generation {
            return; // a completion of a slot released when its queue pair was destroyed
        }
        let SlotState::Pending {
            info,
            waker,
            first_error,
            abandoned,
        } = &mut slot.state
        else {
            return;
        };
        if wc.status != ibv_wc_status::IBV_WC_SUCCESS && first_error.is_none() {
            *first_error = Some(completion_error(wc, info));
        }
        if !last {
            return;
        }
        self.outstanding = self.outstanding.saturating_sub(info.wrs);
        info.qp.release(info.queue, info.wrs);
        let result = match first_error.take() {
            Some(err) => Err(err),
            None => Ok(WcInfo {
                byte_len: wc.byte_len,
                imm: (wc.wc_flags & ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0)
                    // SAFETY: WITH_IMM says the union holds immediate data (network order).
                    .then(|| u32::from_be(unsafe { wc.imm_data_invalidated_rkey_union.imm_data })),
            }),
        };
        if let Some(buffers) = abandoned.take() {
            wake.released.push(buffers);
            self.free_slot(index);
            return;
        }
        let waker = waker.take();
        slot.state = SlotState::Done(result);
        if let Some(waker) = waker {
            let is_poller = polling == Some(SlotId { index, generation });
            if !is_poller {
                wake.push(waker);
            }
        }
    }
}

/// The error a failed work completion reports, recording the queue pair's failure.
fn completion_error(wc: &ibv_wc, info: &SlotInfo) -> Error {
    let status = WcStatus(wc.status);
    // wc.qp_num is the local QP the request ran on (for a shared receive queue, the one that
    // consumed the receive).
    if status == WcStatus::WR_FLUSH_ERR {
        return Error::Flushed {
            kind: info.kind,
            qpn: wc.qp_num,
            cause: info.qp.failure.get().cloned(),
        };
    }
    let describe = || Error::WorkCompletion {
        kind: info.kind,
        status,
        vendor_err: wc.vendor_err,
        qpn: wc.qp_num,
        remote: info.remote,
    };
    // A failed receive of a shared receive queue puts the consuming QP in error, not the SRQ.
    if !info.qp.shared_receive {
        let _ = info.qp.failure.set(Arc::new(describe()));
    }
    describe()
}

impl<R: Runtime> Drop for CqShared<R> {
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
        // SAFETY: no QP uses the CQ any more; it is destroyed once.
        unsafe { ibv_destroy_cq(self.raw()) };
        // SAFETY: the registration is dropped exactly once, before its fd is closed.
        unsafe { ManuallyDrop::drop(&mut self.fd) };
        // SAFETY: the channel's only CQ is destroyed; destroyed once.
        unsafe { ibv_destroy_comp_channel(self.channel.as_ptr()) };
    }
}
