//! Shared receive queues: one pool of receive buffers for many queue pairs.

mod recv;

use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use rdma_sys::*;

use crate::cq::CompletionQueue;
use crate::error::{Error, Result};
use crate::pd::ProtectionDomain;
use crate::qp::DyingQp;
use crate::slots::QpStatus;
use crate::stats::QpStats;
use crate::wake::lock;

/// Sizes of a shared receive queue; capped at what the device allows.
#[derive(Debug, Clone, Copy)]
pub struct SrqOptions {
    /// Receives that may be posted at once.
    pub max_wr: u32,
    /// Scatter-gather entries per receive.
    pub max_sge: u32,
}

impl Default for SrqOptions {
    fn default() -> Self {
        SrqOptions {
            max_wr: 1024,
            max_sge: 4,
        }
    }
}

/// A shared receive queue: receives posted here are consumed by whichever attached queue
/// pair gets a message first, so many connections share one pool of buffers.
///
/// Its receives complete on the completion queue given at creation, which every attached
/// queue pair uses as its receive CQ. Cheap to clone; attached queue pairs keep it alive.
///
/// ```no_run
/// # fn demo() -> anyrdma_core::Result<()> {
/// use anyrdma_core::*;
/// let ctx = Context::open_default()?;
/// let pd = ctx.alloc_pd()?;
/// let cq = CompletionQueue::new(&ctx, CqOptions::default())?;
/// let srq = SharedReceiveQueue::new(&pd, &cq, SrqOptions::default())?;
/// let qp1 = QueuePair::with_srq(&pd, &cq, &srq, QpOptions::default())?;
/// let qp2 = QueuePair::with_srq(&pd, &cq, &srq, QpOptions::default())?;
/// let inbox = srq.recv(pd.alloc(4096, Access::LOCAL)?); // either QP's peer may fill it
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SharedReceiveQueue {
    pub(crate) shared: Arc<SrqShared>,
}

pub(crate) struct SrqShared {
    raw: NonNull<ibv_srq>,
    pub(crate) status: Arc<QpStatus>,
    pd: ProtectionDomain,
    pub(crate) cq: CompletionQueue,
    max_wr: u32,
    max_sge: u32,
    /// Attached queue pairs whose last handle is gone, kept until the device reports that they
    /// take no more receives from this SRQ (see `QpShared`'s Drop).
    retiring: Mutex<Vec<DyingQp>>,
}

// SAFETY: libibverbs SRQs are thread-safe; the pointer stays valid until SrqShared drops.
unsafe impl Send for SrqShared {}
// SAFETY: as above.
unsafe impl Sync for SrqShared {}

impl SharedReceiveQueue {
    /// Creates a shared receive queue whose receives complete on `cq`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `cq` belongs to another device;
    /// [`Error::Verbs`] when the device refuses the sizes.
    pub fn new(pd: &ProtectionDomain, cq: &CompletionQueue, options: SrqOptions) -> Result<Self> {
        cq.check_device(pd)?;
        let limits = pd.context().limits();
        // SAFETY: ibv_srq_init_attr is plain C data.
        let mut init: ibv_srq_init_attr = unsafe { std::mem::zeroed() };
        init.attr.max_wr = options.max_wr.clamp(1, limits.max_qp_wr.max(1));
        init.attr.max_sge = options.max_sge.clamp(1, limits.max_sge.max(1));
        // SAFETY: the PD is valid and outlives the SRQ (SrqShared holds it).
        let raw = unsafe { ibv_create_srq(pd.raw(), &mut init) };
        let raw = NonNull::new(raw).ok_or_else(|| {
            Error::last_os("ibv_create_srq")
                .with_hint("the requested size may exceed the device's limits")
        })?;
        Ok(SharedReceiveQueue {
            shared: Arc::new(SrqShared {
                raw,
                status: QpStatus::for_srq(),
                pd: pd.clone(),
                cq: cq.clone(),
                // ibv_create_srq writes back what it granted.
                max_wr: init.attr.max_wr,
                max_sge: init.attr.max_sge,
                retiring: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Receives posted and not yet consumed.
    pub fn posted(&self) -> u32 {
        u32::try_from(self.shared.status.rq.in_flight()).unwrap_or(u32::MAX)
    }

    /// What this shared receive queue did since it was created: its receives posted and
    /// completed, failed and flushed (the queue pairs attached to it count none of them).
    pub fn stats(&self) -> QpStats {
        self.shared.status.stats()
    }

    /// Attached queue pairs whose last handle is gone but that the device has not yet
    /// reported done with this SRQ: each is destroyed when its "last receive" event arrives,
    /// or a second after it was dropped on a device that sends none (Soft-RoCE), whichever
    /// comes first, by whoever reads the device's events then (a completion-queue poller or
    /// [`Context::next_event`](crate::Context::next_event)); or when the SRQ goes.
    pub fn retiring(&self) -> usize {
        lock(&self.shared.retiring).len()
    }

    /// The completion queue its receives complete on.
    pub fn cq(&self) -> &CompletionQueue {
        &self.shared.cq
    }

    #[inline]
    pub(crate) fn raw(&self) -> *mut ibv_srq {
        self.shared.raw.as_ptr()
    }
}

impl SrqShared {
    /// Keeps attached queue pair `qp` until it takes no more receives from this SRQ.
    pub(crate) fn retire(&self, qp: DyingQp) {
        lock(&self.retiring).push(qp);
    }

    /// The device reported that retiring queue pair `address` takes no more receives:
    /// destroys it.
    pub(crate) fn finish_retiring(&self, address: usize) {
        let dying = {
            let mut retiring = lock(&self.retiring);
            let at = retiring.iter().position(|qp| qp.address() == address);
            at.map(|at| retiring.swap_remove(at))
        };
        if let Some(dying) = dying {
            dying.destroy();
        }
    }
}

// The device's events reach the shared receive queue through this (see `EventQp`).
impl crate::events::EventSrq for SrqShared {
    fn finish_retiring(&self, address: usize) {
        SrqShared::finish_retiring(self, address);
    }
}

impl Drop for SrqShared {
    fn drop(&mut self) {
        // Queue pairs still retiring go first: no receive future is left to lose anything.
        let retiring = std::mem::take(self.retiring.get_mut().unwrap_or_else(|p| p.into_inner()));
        for dying in retiring {
            dying.destroy();
        }
        // SAFETY: no attached QP is left (each holds an Arc to this SRQ) and no pending
        // future either; destroyed once.
        let rc = unsafe { ibv_destroy_srq(self.raw.as_ptr()) };
        if rc != 0 {
            crate::trace::event!(
                error,
                errno = rc,
                "ibv_destroy_srq failed: the buffers of its receives are leaked"
            );
        }
        if rc == 0 {
            // Destroyed: the device touches none of its buffers any more.
            self.cq.shared.end_owner(&self.status, None);
        }
        // Otherwise keep the buffers of dropped receives (a leak is safe; freeing memory the
        // NIC may write is not).
    }
}
