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
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};

use rdma_sys::*;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::runtime::{set_nonblocking, ReadinessFd, Runtime};
use crate::slots::{QpStatus, SlotId, SlotInfo, SlotResult, SlotTable, WcInfo};
use crate::wake::{lock, Sleepers, WakeList, POLL_BATCH};

/// Polls of an empty CQ in busy mode before yielding to the executor: a yield costs more
/// than a poll.
const BUSY_SPINS: u32 = 64;
/// Channel events acknowledged with one `ibv_ack_cq_events` call.
const ACK_BATCH: u32 = 64;

/// How a task waits for completions when the CQ is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Poll the CQ up to `spin` more times, then arm it and sleep until the completion
    /// channel signals. Uses no CPU while idle.
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

/// The state of a CQ, behind one lock.
struct CqState {
    table: SlotTable,
    armed: bool,
    unacked: u32,
    /// The channel failed: fall back to polling.
    channel_failed: bool,
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
                    table: SlotTable::new(entries),
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
        lock(&self.shared.state).table.in_use()
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

impl<R: Runtime> CqShared<R> {
    pub(crate) fn raw(&self) -> *mut ibv_cq {
        self.raw.as_ptr()
    }

    /// Takes a slot for `info`, reserving CQ room for its work requests.
    pub(crate) fn reserve(&self, info: SlotInfo) -> Result<SlotId> {
        lock(&self.state).table.reserve(info)
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

    /// After the queue pair (or shared receive queue) of `owner` was destroyed, so the device
    /// no longer touches its buffers: dispatches what the CQ holds and releases every slot
    /// it left behind.
    pub(crate) fn release_owner(&self, owner: &Arc<QpStatus>) {
        let mut wake = WakeList::new();
        let mut state = lock(&self.state);
        while self.poll_cq(&mut state, &mut wake, None).0 > 0 {
            drop(state);
            wake.run();
            state = lock(&self.state);
        }
        state.table.release_owner(owner, &mut wake);
        drop(state);
        wake.run();
    }

    /// Polls for the completion of slot `id`, driving the CQ as described in the module docs.
    pub(crate) fn poll_slot(&self, id: SlotId, cx: &mut TaskContext<'_>) -> Poll<Result<WcInfo>> {
        let ready = |result: SlotResult| Poll::Ready(result.map_err(|err| *err));
        let mut spins = 0u32;
        let mut wake = WakeList::new();
        loop {
            let mut state = lock(&self.state);
            if let Some(result) = state.table.take_done(id) {
                return ready(result);
            }
            let (found, own) = self.poll_cq(&mut state, &mut wake, Some(id));
            if found > 0 {
                drop(state);
                wake.run();
                match own {
                    Some(result) => return ready(result),
                    None => continue,
                }
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
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                PollMode::Event { .. } => {
                    state.table.set_waker(id, cx.waker());
                    if !state.armed {
                        // Arm, then poll again: a completion that arrived before the arm
                        // raises no event.
                        if self.arm(&mut state).is_err() {
                            state.channel_failed = true;
                        }
                        continue;
                    }
                    drop(state);
                    match self.wait_channel(cx) {
                        Poll::Ready(()) => continue,
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
            spins += 1;
            drop(state);
            std::hint::spin_loop();
        }
    }

    /// Sleeps on the completion channel; Ready once an event was taken (the CQ is re-armed
    /// then, and must be polled again).
    fn wait_channel(&self, cx: &mut TaskContext<'_>) -> Poll<()> {
        // Register as a sleeper before looking at the fd, so an event after the look finds
        // this task in the list.
        self.sleepers.add(cx.waker());
        let mut channel_cx = TaskContext::from_waker(&self.channel_waker);
        let event = match self.fd.poll_read_with(&mut channel_cx, || self.get_event()) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(event) => event,
        };
        let mut state = lock(&self.state);
        if event.is_err() {
            state.channel_failed = true;
            return Poll::Ready(());
        }
        state.armed = false;
        state.unacked += 1;
        if state.unacked >= ACK_BATCH {
            // SAFETY: the CQ is valid; `unacked` events were taken from it.
            unsafe { ibv_ack_cq_events(self.raw(), state.unacked) };
            state.unacked = 0;
        }
        // Re-arm at once (the caller polls again): another task may already be asleep
        // counting on the CQ being armed.
        if self.arm(&mut state).is_err() {
            state.channel_failed = true;
        }
        Poll::Ready(())
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

    /// Drains up to one batch of completions into their slots. Returns how many it found,
    /// and the result of `polling` if it was among them.
    fn poll_cq(
        &self,
        state: &mut CqState,
        wake: &mut WakeList,
        polling: Option<SlotId>,
    ) -> (usize, Option<SlotResult>) {
        let mut wcs: [MaybeUninit<ibv_wc>; POLL_BATCH] =
            [const { MaybeUninit::uninit() }; POLL_BATCH];
        // SAFETY: the CQ is valid; `wcs` has room for POLL_BATCH entries.
        let n = unsafe { ibv_poll_cq(self.raw(), POLL_BATCH as i32, wcs.as_mut_ptr().cast()) };
        let n = n.max(0) as usize;
        let mut own = None;
        for wc in &wcs[..n] {
            // SAFETY: ibv_poll_cq initialised the first `n` entries.
            let wc = unsafe { wc.assume_init_ref() };
            if let Some(result) = state.table.dispatch(wc, wake, polling) {
                own = Some(result);
            }
        }
        (n, own)
    }
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
