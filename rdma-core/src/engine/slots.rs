//! The slot table of a completion queue: one slot per operation in flight.
//!
//! A work request's `wr_id` is its slot's index and generation (plus a bit marking the last
//! request of a batch), so a completion goes straight to its slot: no map, no search. A
//! slot is freed when its result is taken, or, for an operation whose future was dropped,
//! when its completion arrives; the generation then changes, so a late completion of a
//! released slot is recognised and ignored.

use std::any::Any;
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;

use rdma_sys::*;

use crate::credits::WorkCount;
use crate::error::{Error, Result};
use crate::remote::RemoteRegion;
use crate::signaling::{Placement, Signaling};
use crate::stats::{QpCounters, QpStats};
use crate::wake::{lock, WakeList};
use crate::wc::{WcStatus, WorkKind};

/// Bit of a `wr_id` that marks the last (signaled) work request of a slot.
const LAST_WR: u64 = 1 << 63;
/// Generations use the 31 bits below LAST_WR.
const GENERATION_MASK: u32 = 0x7fff_ffff;

/// Which work queue a slot's requests went to, for returning queue credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkQueue {
    Send,
    Recv,
}

/// What a successful completion reports. Packed (20 bytes): it is moved on every completion,
/// inside a `Result` and an `Option`, and every byte of it costs instructions there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WcInfo {
    pub(crate) byte_len: u32,
    /// The immediate data, valid with [`WcInfo::HAS_IMM`].
    imm_data: u32,
    /// `HAS_IMM`, `WRITE_WITH_IMM` and `GRH` in the low bits; a datagram's source queue pair
    /// (24 bits) above [`WcInfo::SRC_QP_SHIFT`]; its service level (4 bits) at `SL_SHIFT`.
    bits: u32,
    /// The local queue pair that took a receive (for a shared receive queue, the one that
    /// consumed it); zero for a send.
    qp_num: u32,
    slid: u16,
    pkey_index: u16,
}

impl WcInfo {
    const HAS_IMM: u32 = 1;
    const WRITE_WITH_IMM: u32 = 1 << 1;
    const GRH: u32 = 1 << 2;
    const SL_SHIFT: u32 = 4;
    const SRC_QP_SHIFT: u32 = 8;

    /// A successful completion that reports nothing (an unsignaled request covered by a
    /// later one).
    pub(crate) const EMPTY: WcInfo = WcInfo {
        byte_len: 0,
        imm_data: 0,
        bits: 0,
        qp_num: 0,
        slid: 0,
        pkey_index: 0,
    };

    /// What `wc` reports; a receive's (`recv`) also its sender's fields, which only datagram
    /// receives fill (a send's completion skips them).
    #[inline(always)]
    fn from_wc(wc: &ibv_wc, recv: bool) -> WcInfo {
        let has_imm = wc.wc_flags & ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0;
        let mut bits = (u32::from(has_imm) * Self::HAS_IMM)
            | (u32::from(wc.opcode == ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM)
                * Self::WRITE_WITH_IMM);
        let mut info = WcInfo {
            byte_len: wc.byte_len,
            imm_data: if has_imm {
                // SAFETY: WITH_IMM says the union holds immediate data (network order).
                u32::from_be(unsafe { wc.imm_data_invalidated_rkey_union.imm_data })
            } else {
                0
            },
            bits: 0,
            qp_num: 0,
            slid: 0,
            pkey_index: 0,
        };
        if recv {
            bits |= (u32::from(wc.wc_flags & ibv_wc_flags::IBV_WC_GRH.0 != 0) * Self::GRH)
                | (u32::from(wc.sl & 0xf) << Self::SL_SHIFT)
                | ((wc.src_qp & 0x00ff_ffff) << Self::SRC_QP_SHIFT);
            info.qp_num = wc.qp_num;
            info.slid = wc.slid;
            info.pkey_index = wc.pkey_index;
        }
        info.bits = bits;
        info
    }

    /// The immediate data, if the completion carried any.
    #[inline]
    pub(crate) fn imm(&self) -> Option<u32> {
        (self.bits & Self::HAS_IMM != 0).then_some(self.imm_data)
    }

    /// A receive consumed by an RDMA write with immediate.
    #[inline]
    pub(crate) fn write_with_imm(&self) -> bool {
        self.bits & Self::WRITE_WITH_IMM != 0
    }

    /// What a datagram receive reports of its sender (zero elsewhere).
    pub(crate) fn datagram(&self) -> DatagramSource {
        DatagramSource {
            src_qp: self.bits >> Self::SRC_QP_SHIFT,
            qp_num: self.qp_num,
            grh: self.bits & Self::GRH != 0,
            slid: self.slid,
            sl: ((self.bits >> Self::SL_SHIFT) & 0xf) as u8,
            pkey_index: self.pkey_index,
        }
    }
}

/// The sender of a datagram as its receive completion reports it (`ibv_wc` fields that
/// only unreliable datagram receives fill).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DatagramSource {
    /// The sender's queue pair number (24 bits).
    pub(crate) src_qp: u32,
    /// The local queue pair that took the receive (for a shared receive queue, the one
    /// that consumed it).
    pub(crate) qp_num: u32,
    /// Whether a GRH sits in the first 40 bytes of the receive.
    pub(crate) grh: bool,
    pub(crate) slid: u16,
    /// The service level (4 bits).
    pub(crate) sl: u8,
    pub(crate) pkey_index: u16,
}

/// Queue pairs attached to a shared receive queue: number and status.
type AttachedQps = Vec<(u32, Weak<QpStatus>)>;

/// The failure state and queue credits of one queue pair (or shared receive queue), shared
/// with its slots.
pub(crate) struct QpStatus {
    /// The queue pair number (0 for a shared receive queue).
    pub(crate) qpn: u32,
    /// For a shared receive queue, the queue pairs attached to it (by number): a failed
    /// receive puts the QP that consumed it in error, not the SRQ.
    attached: Option<Mutex<AttachedQps>>,
    /// The failure that put the QP in the error state, first one wins.
    pub(crate) failure: std::sync::OnceLock<Arc<Error>>,
    /// The end of the connection, when it came after a failed completion that it explains
    /// (see [`QpStatus::cause`]).
    pub(crate) disconnect: std::sync::OnceLock<Arc<Error>>,
    /// The send queue's work requests posted and completed: its credits, and its statistics.
    pub(crate) sq: WorkCount,
    /// The receive queue's.
    pub(crate) rq: WorkCount,
    /// The rest of its statistics.
    pub(crate) counters: QpCounters,
    /// Which of its send-queue requests are signaled, and those that are not, in flight.
    pub(crate) signaling: Signaling,
}

impl QpStatus {
    /// The status of queue pair `qpn`, which signals at least every `signal_every` requests.
    pub(crate) fn for_qp(qpn: u32, signal_every: u32) -> Arc<QpStatus> {
        Self::new(qpn, None, signal_every)
    }

    /// The status of a shared receive queue.
    pub(crate) fn for_srq() -> Arc<QpStatus> {
        Self::new(0, Some(Mutex::new(Vec::new())), 1)
    }

    fn new(qpn: u32, attached: Option<Mutex<AttachedQps>>, signal_every: u32) -> Arc<QpStatus> {
        Arc::new(QpStatus {
            qpn,
            attached,
            failure: std::sync::OnceLock::new(),
            disconnect: std::sync::OnceLock::new(),
            sq: WorkCount::default(),
            rq: WorkCount::default(),
            counters: QpCounters::default(),
            signaling: Signaling::new(signal_every),
        })
    }

    /// Why the queue pair is in error, as its operations report it: the first failure, or
    /// the end of the connection that came after it and explains it (a peer that died shows
    /// first as a failed read or a retry error, then as a disconnect).
    #[inline]
    pub(crate) fn cause(&self) -> Option<Arc<Error>> {
        self.disconnect.get().or(self.failure.get()).cloned()
    }

    /// Records that queue pair `qp` takes its receives from this shared receive queue.
    pub(crate) fn attach(&self, qp: &Arc<QpStatus>) {
        if let Some(attached) = &self.attached {
            let mut list = lock(attached);
            list.retain(|(_, weak)| weak.strong_count() > 0);
            list.push((qp.qpn, Arc::downgrade(qp)));
        }
    }

    /// The status that a failed completion on local queue pair `qpn` puts in error.
    fn failing(self: &Arc<Self>, qpn: u32) -> Option<Arc<QpStatus>> {
        match &self.attached {
            None => Some(self.clone()),
            Some(attached) => lock(attached)
                .iter()
                .find(|(attached_qpn, _)| *attached_qpn == qpn)
                .and_then(|(_, weak)| weak.upgrade()),
        }
    }

    /// The work requests and credits of `queue`.
    #[inline]
    pub(crate) fn work(&self, queue: WorkQueue) -> &WorkCount {
        match queue {
            WorkQueue::Send => &self.sq,
            WorkQueue::Recv => &self.rq,
        }
    }

    /// `wrs` requests of `queue` completed: their credits are free again.
    #[inline]
    pub(crate) fn release(&self, queue: WorkQueue, wrs: u32) {
        self.work(queue).complete(wrs);
    }

    /// Work requests the queue pair holds on both queues.
    pub(crate) fn in_flight(&self) -> u64 {
        self.sq.in_flight() + self.rq.in_flight()
    }

    /// A snapshot of its statistics.
    pub(crate) fn stats(&self) -> QpStats {
        let mut stats = QpStats {
            sends_posted: self.sq.posted(),
            sends_completed: self.sq.completed(),
            receives_posted: self.rq.posted(),
            receives_completed: self.rq.completed(),
            ..QpStats::default()
        };
        self.counters.fill(&mut stats);
        stats
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
    /// For a send-queue slot: its place in the queue, and whether its last request is
    /// signaled (an unsignaled one completes with the next signaled request).
    pub(crate) placement: Option<Placement>,
    /// Completion-queue entries held for it (see [`Placement::cq_entries`]).
    pub(crate) cq_entries: u32,
}

enum SlotState {
    Free,
    Pending {
        info: SlotInfo,
        waker: Option<Waker>,
        /// Boxed: errors are rare, and slots stay small.
        first_error: Option<Box<Error>>,
        /// The buffers of an operation whose future was dropped; released on completion.
        abandoned: Option<Box<dyn Any + Send>>,
    },
    Done(Result<WcInfo, Box<Error>>),
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
    /// The `wr_id` of a work request of this slot; `last` marks the signaled one.
    #[inline]
    pub(crate) fn wr_id(self, last: bool) -> u64 {
        let id = (u64::from(self.generation) << 32) | u64::from(self.index);
        if last {
            id | LAST_WR
        } else {
            id
        }
    }
}

/// The outcome of a slot: what a successful completion reported, or the boxed error.
pub(crate) type SlotResult = std::result::Result<WcInfo, Box<Error>>;

/// The slots of one completion queue.
pub(crate) struct SlotTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Work requests posted and not yet accounted for: each may produce a completion.
    outstanding: u32,
    /// Completions the CQ can hold.
    capacity: u32,
    /// Pending slots that hold a waker: tasks asleep until their completion is dispatched.
    waiting: usize,
    /// Tasks woken by the dispatch of their completion (a statistic of the CQ).
    woken: u64,
}

impl SlotTable {
    pub(crate) fn new(capacity: u32) -> SlotTable {
        SlotTable {
            slots: Vec::new(),
            free: Vec::new(),
            outstanding: 0,
            capacity,
            waiting: 0,
            woken: 0,
        }
    }

    /// Whether a task sleeps until a completion of this CQ is dispatched to it (so that the
    /// CQ must raise an event on the next completion).
    #[inline]
    pub(crate) fn has_waiters(&self) -> bool {
        self.waiting != 0
    }

    /// Tasks woken so far by the dispatch of their completion.
    pub(crate) fn tasks_woken(&self) -> u64 {
        self.woken
    }

    /// Slots taken: operations in flight, or completed and not yet collected.
    pub(crate) fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Takes a slot for `info`, reserving CQ room for its work requests.
    #[inline]
    pub(crate) fn reserve(&mut self, info: SlotInfo) -> Result<SlotId> {
        // A fence takes over the entry the newest unsignaled request holds for it.
        let fence = info.placement.is_some_and(|placement| placement.fence);
        let taken_over = fence && self.take_spare_entry(&info.qp);
        if !taken_over && self.outstanding + info.cq_entries > self.capacity {
            return Err(Error::QueueFull {
                queue: "completion queue",
                depth: self.capacity,
            });
        }
        if !taken_over {
            self.outstanding += info.cq_entries;
        }
        let pending = SlotState::Pending {
            info,
            waker: None,
            first_error: None,
            abandoned: None,
        };
        let index = match self.free.pop() {
            Some(index) => {
                // A free slot holds nothing to drop.
                let free = std::mem::replace(&mut self.slots[index as usize].state, pending);
                debug_assert!(matches!(free, SlotState::Free));
                std::mem::forget(free);
                index
            }
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    state: pending,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let id = SlotId {
            index,
            generation: self.slots[index as usize].generation,
        };
        if let SlotState::Pending { info, .. } = &self.slots[index as usize].state {
            if let Some(placement) = info.placement.filter(|placement| !placement.signaled) {
                // Under the CQ's lock, like every use of the list.
                info.qp.signaling.push_unsignaled(placement.seq, id);
            }
        }
        Ok(id)
    }

    /// Takes the completion-queue entry the newest unsignaled slot of `qp` holds for a fence,
    /// if it still holds it.
    fn take_spare_entry(&mut self, qp: &Arc<QpStatus>) -> bool {
        let Some(id) = qp.signaling.newest_unsignaled() else {
            return false;
        };
        let slot = &mut self.slots[id.index as usize];
        match &mut slot.state {
            SlotState::Pending { info, .. }
                if slot.generation == id.generation && info.cq_entries > info.wrs =>
            {
                info.cq_entries -= 1;
                true
            }
            _ => false,
        }
    }

    /// Gives back a slot whose work requests were never posted.
    pub(crate) fn unreserve(&mut self, id: SlotId) {
        if let SlotState::Pending { info, .. } = &self.slots[id.index as usize].state {
            self.outstanding -= info.cq_entries;
            info.qp.signaling.forget_unposted(id);
        }
        self.free_slot(id.index);
    }

    /// The requests of `id` the device took are only the first `accepted`: the rest gives
    /// its CQ room back.
    pub(crate) fn shrink(&mut self, id: SlotId, accepted: u32) {
        if let SlotState::Pending { info, .. } = &mut self.slots[id.index as usize].state {
            self.outstanding -= info.cq_entries.saturating_sub(accepted);
            info.cq_entries = accepted.min(info.cq_entries);
            info.wrs = accepted;
        }
    }

    /// Queues in `wake` the task of every slot that waits for its completion (they go on
    /// waiting: their wakers stay), for a change that concerns them all.
    pub(crate) fn wake_all_waiting(&self, wake: &mut WakeList) {
        for slot in &self.slots {
            if let SlotState::Pending {
                waker: Some(waker), ..
            } = &slot.state
            {
                wake.push(waker.clone());
            }
        }
    }

    /// The result of `id`, if its completion was dispatched; frees the slot.
    #[inline]
    pub(crate) fn take_done(&mut self, id: SlotId) -> Option<SlotResult> {
        let slot = &mut self.slots[id.index as usize];
        if slot.generation != id.generation || !matches!(slot.state, SlotState::Done(_)) {
            return None;
        }
        let SlotState::Done(result) = std::mem::replace(&mut slot.state, SlotState::Free) else {
            unreachable!("checked above")
        };
        self.recycle(id.index);
        Some(result)
    }

    /// Remembers the task to wake when the completion of `id` is dispatched.
    pub(crate) fn set_waker(&mut self, id: SlotId, new: &Waker) {
        if let SlotState::Pending { waker, .. } = &mut self.slots[id.index as usize].state {
            match waker {
                Some(old) if old.will_wake(new) => {}
                Some(old) => *old = new.clone(),
                None => {
                    *waker = Some(new.clone());
                    self.waiting += 1;
                }
            }
        }
    }

    /// Forgets the waker of pending slot `id` if it is `waker`'s task; false if it was not.
    pub(crate) fn forget_waker(&mut self, id: SlotId, waker: &Waker) -> bool {
        let slot = &mut self.slots[id.index as usize];
        match &mut slot.state {
            SlotState::Pending {
                waker: registered, ..
            } if slot.generation == id.generation
                && registered.as_ref().is_some_and(|w| w.will_wake(waker)) =>
            {
                *registered = None;
                self.waiting -= 1;
                true
            }
            _ => false,
        }
    }

    /// The future of `id` is gone: its buffers wait in the slot for the completion. Returns
    /// them when the completion already came, for the caller to drop outside the lock.
    pub(crate) fn abandon(
        &mut self,
        id: SlotId,
        buffers: Box<dyn Any + Send>,
    ) -> Option<Box<dyn Any + Send>> {
        let slot = &mut self.slots[id.index as usize];
        if slot.generation != id.generation {
            return Some(buffers);
        }
        match &mut slot.state {
            SlotState::Pending {
                abandoned, waker, ..
            } => {
                *abandoned = Some(buffers);
                if waker.take().is_some() {
                    self.waiting -= 1;
                }
                None
            }
            SlotState::Done(_) => {
                self.free_slot(id.index);
                Some(buffers)
            }
            SlotState::Free => Some(buffers),
        }
    }

    /// Ends every pending slot of `owner`, whose queue was destroyed or reset (so the
    /// device no longer touches the buffers): a dropped operation's buffers go to `wake`
    /// (released before any task is woken); a waiting one ends with a flush error caused by
    /// `cause` (its task's waker goes to `wakers`), or, without a cause, is freed.
    pub(crate) fn end_owner(
        &mut self,
        owner: &Arc<QpStatus>,
        cause: Option<&Arc<Error>>,
        wake: &mut WakeList,
        wakers: &mut Vec<Waker>,
    ) {
        owner.signaling.clear();
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            let SlotState::Pending {
                info,
                abandoned,
                waker,
                ..
            } = &mut slot.state
            else {
                continue;
            };
            if !Arc::ptr_eq(&info.qp, owner) {
                continue;
            }
            info.qp.release(info.queue, info.wrs);
            if cause.is_some() {
                // The device let go of them without a completion: flushed all the same.
                info.qp.counters.flushed.add(u64::from(info.wrs));
            }
            self.outstanding = self.outstanding.saturating_sub(info.cq_entries);
            let waiting = abandoned.is_none();
            if let Some(buffers) = abandoned.take() {
                wake.release(buffers);
            }
            match cause {
                Some(cause) if waiting => {
                    if let Some(waker) = waker.take() {
                        self.waiting -= 1;
                        wakers.push(waker);
                    }
                    let error = Error::Flushed {
                        kind: info.kind,
                        qpn: info.qp.qpn,
                        cause: Some(cause.clone()),
                    };
                    slot.state = SlotState::Done(Err(Box::new(error)));
                }
                _ => self.free_slot(index as u32),
            }
        }
    }

    #[inline]
    fn free_slot(&mut self, index: u32) {
        let freed = std::mem::replace(&mut self.slots[index as usize].state, SlotState::Free);
        if let SlotState::Pending { waker: Some(_), .. } = freed {
            self.waiting -= 1;
        }
        self.recycle(index);
    }

    /// Puts an emptied slot back on the free list under a new generation.
    #[inline]
    fn recycle(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1) & GENERATION_MASK;
        self.free.push(index);
    }

    /// Files the completion `wc` in its slot and queues the waiting task in `wake`. The
    /// result of `polling`, the slot of the task that polls, is handed back directly.
    /// Inlined into the poll loop that calls it for every completion (always: with the
    /// test-only emulation of a CQ clean as a second caller, the compiler made it a call):
    /// per completion, a call costs as much as the dispatch of a lone completion itself.
    #[inline(always)]
    pub(crate) fn dispatch(
        &mut self,
        wc: &ibv_wc,
        wake: &mut WakeList,
        polling: Option<SlotId>,
    ) -> Option<SlotResult> {
        let index = (wc.wr_id & 0xffff_ffff) as u32;
        let generation = ((wc.wr_id >> 32) as u32) & GENERATION_MASK;
        let last = wc.wr_id & LAST_WR != 0;
        // Only a send-queue completion whose queue has unsignaled requests in flight covers
        // others: checked here, so that every other completion skips the walk.
        let covers = self.slots.get(index as usize).is_some_and(|slot| {
            matches!(&slot.state, SlotState::Pending { info, .. }
                if info.placement.is_some() && info.qp.signaling.has_unsignaled())
        });
        if covers {
            let covered = self.complete_covered(SlotId { index, generation }, wake, polling);
            let own = self.dispatch_own(wc, index, generation, last, wake, polling);
            return own.or(covered);
        }
        // The common case returns its own result as it is (no second result to merge).
        self.dispatch_own(wc, index, generation, last, wake, polling)
    }

    /// A completion of `id`'s send queue arrived: requests complete in order there, so every
    /// unsignaled request posted before it is done. Completes them (successfully: a failed
    /// request has a completion of its own) and returns the result of `polling` if it is one.
    fn complete_covered(
        &mut self,
        id: SlotId,
        wake: &mut WakeList,
        polling: Option<SlotId>,
    ) -> Option<SlotResult> {
        let mut own = None;
        loop {
            let slot = self.slots.get(id.index as usize)?;
            let SlotState::Pending { info, .. } = &slot.state else {
                return own;
            };
            let Some(placement) = info.placement else {
                return own;
            };
            if slot.generation != id.generation {
                return own;
            }
            let Some(covered) = info.qp.signaling.pop_covered(placement.seq, id) else {
                return own;
            };
            if covered == id {
                // Its own (error) completion: dispatched as any other.
                return own;
            }
            if let Some(result) = self.complete_unsignaled(covered, wake, polling) {
                own = Some(result);
            }
        }
    }

    /// Completes the unsignaled slot `id` successfully (a later request of its queue
    /// completed); returns the result when `id` is `polling`.
    fn complete_unsignaled(
        &mut self,
        id: SlotId,
        wake: &mut WakeList,
        polling: Option<SlotId>,
    ) -> Option<SlotResult> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let SlotState::Pending { info, .. } = &mut slot.state else {
            return None;
        };
        self.outstanding = self.outstanding.saturating_sub(info.cq_entries);
        info.qp.release(info.queue, info.wrs);
        let result = Ok(WcInfo::EMPTY);
        self.finish(id, result, wake, polling)
    }

    /// Ends the pending slot `id` with `result`: a dropped operation's buffers are released,
    /// the polling task gets its result back, a waiting one is woken. Inlined (always) into
    /// the dispatch of a completion: as a call, its prologue and the result it returns through
    /// memory cost more per completion than its body.
    #[inline(always)]
    fn finish(
        &mut self,
        id: SlotId,
        result: SlotResult,
        wake: &mut WakeList,
        polling: Option<SlotId>,
    ) -> Option<SlotResult> {
        let slot = &mut self.slots[id.index as usize];
        let SlotState::Pending {
            waker, abandoned, ..
        } = &mut slot.state
        else {
            return None;
        };
        if let Some(buffers) = abandoned.take() {
            wake.release(buffers);
            self.free_slot(id.index);
            return None;
        }
        if polling == Some(id) {
            self.free_slot(id.index);
            return Some(result);
        }
        let waker = waker.take();
        slot.state = SlotState::Done(result);
        if let Some(waker) = waker {
            self.waiting -= 1;
            self.woken += 1;
            wake.push(waker);
        }
        None
    }

    /// Files `wc` in its own slot (`index`, `generation`). Inlined into `dispatch` (always:
    /// the compiler made it a call per completion once `dispatch` was inlined itself).
    #[inline(always)]
    fn dispatch_own(
        &mut self,
        wc: &ibv_wc,
        index: u32,
        generation: u32,
        last: bool,
        wake: &mut WakeList,
        polling: Option<SlotId>,
    ) -> Option<SlotResult> {
        let slot = self.slots.get_mut(index as usize)?;
        if slot.generation != generation {
            return None; // a completion of a slot released when its queue was destroyed
        }
        let SlotState::Pending {
            info, first_error, ..
        } = &mut slot.state
        else {
            return None;
        };
        if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
            info.qp
                .counters
                .failed_completion(wc.status == ibv_wc_status::IBV_WC_WR_FLUSH_ERR);
            if first_error.is_none() {
                *first_error = Some(Box::new(completion_error(wc, info)));
            }
        }
        if !last {
            return None;
        }
        self.outstanding = self.outstanding.saturating_sub(info.cq_entries);
        info.qp.release(info.queue, info.wrs);
        if info.placement.is_some_and(|placement| placement.signaled) {
            info.qp.signaling.signaled_done();
        }
        let result = match first_error.take() {
            Some(err) => Err(err),
            None => Ok(WcInfo::from_wc(wc, info.queue == WorkQueue::Recv)),
        };
        self.finish(SlotId { index, generation }, result, wake, polling)
    }
}

/// The error a failed work completion reports, recording the queue pair's failure.
fn completion_error(wc: &ibv_wc, info: &SlotInfo) -> Error {
    let status = WcStatus(wc.status);
    // Both branches are empty without the `tracing` feature.
    #[allow(clippy::if_same_then_else)]
    if status == WcStatus::WR_FLUSH_ERR {
        crate::trace::event!(trace, qpn = wc.qp_num, kind = %info.kind, "work request flushed");
    } else {
        crate::trace::event!(
            debug,
            qpn = wc.qp_num,
            kind = %info.kind,
            %status,
            vendor_err = wc.vendor_err,
            "work completion failed"
        );
    }
    // wc.qp_num is the local QP the request ran on (for a shared receive queue, the one that
    // consumed the receive).
    if status == WcStatus::WR_FLUSH_ERR {
        return Error::Flushed {
            kind: info.kind,
            qpn: wc.qp_num,
            cause: info.qp.cause(),
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
    if let Some(failed) = info.qp.failing(wc.qp_num) {
        let _ = failed.failure.set(Arc::new(describe()));
    }
    describe()
}

#[cfg(test)]
mod tests;
