//! Posting on a work queue: take credits and a completion slot, post, undo on failure.

use std::sync::Arc;

use rdma_sys::{ibv_pd, ibv_recv_wr};

use crate::buffers::{Buffers, SgeList};
use crate::cq::CqShared;
use crate::credits::WorkCount;
use crate::error::{Error, Result};
use crate::remote::RemoteRegion;
use crate::signaling::{Placement, Signal};
use crate::slots::{QpStatus, SlotId, SlotInfo, WorkQueue};
use crate::wc::WorkKind;

/// One work queue (the send or receive queue of a QP, or a shared receive queue) as the
/// posting code sees it.
pub(crate) struct WorkQueueRef<'a> {
    pub(crate) status: &'a Arc<QpStatus>,
    pub(crate) cq: &'a CqShared,
    pub(crate) queue: WorkQueue,
    pub(crate) depth: u32,
    /// For errors: "send queue", "receive queue", "shared receive queue".
    pub(crate) name: &'static str,
    /// The verbs call that posts on it, for errors.
    pub(crate) call: &'static str,
}

/// What a posting function reports: the verbs return code, and how many work requests of
/// the chain the device took before the one it refused.
pub(crate) struct Posted {
    pub(crate) rc: i32,
    pub(crate) accepted: u32,
}

/// A chain the device took only in part: the error, and the slot that now stands for the
/// requests it took. They complete (flushed, once the caller fails the queue pair) without a
/// signaled last request, so the slot stays reserved until the queue pair is destroyed.
pub(crate) struct PartlyPosted {
    pub(crate) error: Error,
    pub(crate) slot: Option<SlotId>,
    /// Requests of the chain the device took.
    pub(crate) taken: u32,
}

/// A slot posted on a work queue, and for a send queue its place there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PostedSlot {
    pub(crate) id: SlotId,
    pub(crate) placement: Option<Placement>,
}

impl WorkQueueRef<'_> {
    fn work(&self) -> &WorkCount {
        self.status.work(self.queue)
    }

    /// Reserves `wrs` entries of the queue and a completion slot, runs `post` (which gets
    /// the slot and whether the request is to be signaled, and returns the verbs return
    /// code), and undoes the reservation when posting fails. On a send queue, `signal` says
    /// whether the request may go unsignaled (see [`crate::signaling`]).
    #[inline]
    pub(crate) fn post(
        &self,
        kind: WorkKind,
        remote: Option<RemoteRegion>,
        wrs: u32,
        signal: Signal,
        post: impl FnOnce(SlotId, bool) -> i32,
    ) -> Result<PostedSlot> {
        self.post_chain(kind, remote, wrs, signal, |id, signaled| Posted {
            rc: post(id, signaled),
            accepted: 0,
        })
        .map_err(|partly| partly.error)
    }

    /// As [`WorkQueueRef::post`], for a chain of `wrs` requests that the device may take in
    /// part (see [`PartlyPosted`]).
    #[inline]
    pub(crate) fn post_chain(
        &self,
        kind: WorkKind,
        remote: Option<RemoteRegion>,
        wrs: u32,
        signal: Signal,
        post: impl FnOnce(SlotId, bool) -> Posted,
    ) -> std::result::Result<PostedSlot, PartlyPosted> {
        if self.queue == WorkQueue::Recv {
            let id = self.post_placed(kind, remote, wrs, None, |id| post(id, true))?;
            return Ok(PostedSlot {
                id,
                placement: None,
            });
        }
        // The last places of the queue always go to a signaled request, so that a full queue
        // has a completion coming that makes room.
        let nearly_full = self.work().in_flight() + 2 * u64::from(wrs) > u64::from(self.depth);
        self.status
            .signaling
            .post(wrs, signal, nearly_full, |placement| {
                self.post_placed(kind, remote, wrs, Some(placement), |id| {
                    post(id, placement.signaled)
                })
                .map(|id| PostedSlot {
                    id,
                    placement: Some(placement),
                })
                .map_err(|partly| {
                    let taken = partly.taken;
                    (partly, taken)
                })
            })
    }

    #[inline]
    fn post_placed(
        &self,
        kind: WorkKind,
        remote: Option<RemoteRegion>,
        wrs: u32,
        placement: Option<Placement>,
        post: impl FnOnce(SlotId) -> Posted,
    ) -> std::result::Result<SlotId, PartlyPosted> {
        let refused = |error| PartlyPosted {
            error,
            slot: None,
            taken: 0,
        };
        if wrs > self.depth || wrs > self.cq.entries {
            let (queue, depth) = if wrs > self.depth {
                (self.name, self.depth)
            } else {
                ("completion queue", self.cq.entries)
            };
            return Err(refused(Error::TooManyRequests {
                requests: wrs,
                queue,
                depth,
            }));
        }
        let info = || SlotInfo {
            qp: self.status.clone(),
            kind,
            remote,
            queue: self.queue,
            wrs,
            placement,
            cq_entries: placement.map_or(wrs, |placement| placement.cq_entries(wrs)),
        };
        let mut reaped = false;
        let id = loop {
            if self.work().take(wrs, self.depth) {
                match self.cq.reserve(info()) {
                    Ok(id) => break id,
                    Err(err) if reaped || !matches!(err, Error::QueueFull { .. }) => {
                        self.work().unpost(wrs);
                        return Err(refused(err));
                    }
                    Err(_) => self.work().unpost(wrs),
                }
            } else if reaped {
                return Err(refused(Error::QueueFull {
                    queue: self.name,
                    depth: self.depth,
                }));
            }
            // Completions that free room may sit unpolled (their operations' futures were
            // dropped, or nobody awaits right now): take them before saying the queue is full.
            self.status.counters.room_waits.add(1);
            self.cq.reap();
            reaped = true;
        };
        let Posted { rc, accepted } = post(id);
        if rc == 0 {
            return Ok(id);
        }
        // ENOMEM from a post means the queue is full (our count and the device's disagree
        // only if the device reserves entries of its own).
        let error = if rc == libc::ENOMEM {
            Error::QueueFull {
                queue: self.name,
                depth: self.depth,
            }
        } else {
            Error::from_code(self.call, rc)
        };
        if accepted == 0 {
            self.cq.unreserve(id);
            self.work().unpost(wrs);
            return Err(refused(error));
        }
        self.cq.shrink(id, accepted);
        self.work().unpost(wrs - accepted);
        Err(PartlyPosted {
            error,
            slot: Some(id),
            taken: accepted,
        })
    }

    /// Posts one receive of `buffers` with `raw_post` (`ibv_post_recv` or `ibv_post_srq_recv`).
    pub(crate) fn post_recv<B: Buffers>(
        &self,
        buffers: &B,
        max_sge: u32,
        pd: *mut ibv_pd,
        raw_post: impl FnOnce(&mut ibv_recv_wr, &mut *mut ibv_recv_wr) -> i32,
    ) -> Result<SlotId> {
        let mut sges = SgeList::new();
        sges.collect(buffers, max_sge, pd)?;
        self.post(WorkKind::Recv, None, 1, Signal::Always, |id, _| {
            let (sg_list, num_sge) = sges.entries();
            let mut wr = ibv_recv_wr {
                wr_id: id.wr_id(true),
                next: std::ptr::null_mut(),
                sg_list,
                num_sge,
            };
            let mut bad = std::ptr::null_mut();
            raw_post(&mut wr, &mut bad)
        })
        .map(|posted| posted.id)
    }
}
