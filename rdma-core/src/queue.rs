//! Posting on a work queue: take credits and a completion slot, post, undo on failure.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use rdma_sys::{ibv_pd, ibv_recv_wr};

use crate::buffers::{Buffers, SgeList};
use crate::cq::CqShared;
use crate::error::{Error, Result};
use crate::remote::RemoteRegion;
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

impl WorkQueueRef<'_> {
    fn used(&self) -> &AtomicU32 {
        match self.queue {
            WorkQueue::Send => &self.status.sq_used,
            WorkQueue::Recv => &self.status.rq_used,
        }
    }

    /// Reserves `wrs` entries of the queue and a completion slot, runs `post` (which
    /// returns the verbs return code), and undoes the reservation when posting fails.
    pub(crate) fn post(
        &self,
        kind: WorkKind,
        remote: Option<RemoteRegion>,
        wrs: u32,
        post: impl FnOnce(SlotId) -> i32,
    ) -> Result<SlotId> {
        let before = self.used().fetch_add(wrs, Ordering::AcqRel);
        if before + wrs > self.depth {
            self.used().fetch_sub(wrs, Ordering::AcqRel);
            return Err(Error::QueueFull {
                queue: self.name,
                depth: self.depth,
            });
        }
        let info = SlotInfo {
            qp: self.status.clone(),
            kind,
            remote,
            queue: self.queue,
            wrs,
        };
        let id = self
            .cq
            .reserve(info)
            .inspect_err(|_| self.status.release(self.queue, wrs))?;
        let rc = post(id);
        if rc != 0 {
            self.cq.unreserve(id);
            self.status.release(self.queue, wrs);
            // ENOMEM from a post means the queue is full (our count and the device's disagree
            // only if the device reserves entries of its own).
            return Err(if rc == libc::ENOMEM {
                Error::QueueFull {
                    queue: self.name,
                    depth: self.depth,
                }
            } else {
                Error::from_code(self.call, rc)
            });
        }
        Ok(id)
    }

    /// Posts one receive of `buffers` with `raw_post` (`ibv_post_recv` or `ibv_post_srq_recv`).
    pub(crate) fn post_recv<B: Buffers>(
        &self,
        buffers: &B,
        max_sge: u32,
        pd: *mut ibv_pd,
        raw_post: impl FnOnce(&mut ibv_recv_wr, &mut *mut ibv_recv_wr) -> i32,
    ) -> Result<SlotId> {
        let mut sges = SgeList::collect(buffers, max_sge, pd)?;
        self.post(WorkKind::Recv, None, 1, |id| {
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
    }
}
