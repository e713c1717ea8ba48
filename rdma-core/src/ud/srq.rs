//! Shared receive queues for datagram queue pairs.

use super::grh::GRH_LEN;
use super::qp::{block_pool, with_blocks, UdOptions, UdQueuePair, UdRecv};
use crate::buffers::Buffers;
use crate::cq::CompletionQueue;
use crate::error::Result;
use crate::pd::ProtectionDomain;
use crate::pool::MemoryPool;
use crate::srq::{SharedReceiveQueue, SrqOptions};

impl UdQueuePair {
    /// Creates a datagram queue pair that takes its receives from `srq` (several queue
    /// pairs can share one pool of receives); its receive completions arrive on the shared
    /// receive queue's completion queue. Post receives with
    /// [`UdSharedReceiveQueue::recv`].
    ///
    /// # Errors
    /// As [`UdQueuePair::new`].
    pub fn with_srq(
        pd: &ProtectionDomain,
        send_cq: &CompletionQueue,
        srq: &UdSharedReceiveQueue,
        options: UdOptions,
    ) -> Result<UdQueuePair> {
        let srq = srq.inner();
        Self::create(pd, send_cq, srq.cq(), Some(srq), options)
    }
}

/// A shared receive queue for datagram queue pairs ([`UdQueuePair::with_srq`]): receives
/// posted here are taken by whichever attached queue pair gets a datagram first, with the
/// GRH hidden as on a queue pair's own receives ([`UdQueuePair::recv`]).
///
/// Cheap to clone; attached queue pairs keep it alive.
///
/// [`UdQueuePair::with_srq`]: super::UdQueuePair::with_srq
/// [`UdQueuePair::recv`]: super::UdQueuePair::recv
#[derive(Clone)]
pub struct UdSharedReceiveQueue {
    srq: SharedReceiveQueue,
    pool: MemoryPool,
    mtu: usize,
}

impl UdSharedReceiveQueue {
    /// Creates a shared receive queue whose receives complete on `cq`. A receive takes up
    /// to two more scatter-gather entries than its buffers, so `max_sge` is at least 3.
    ///
    /// # Errors
    /// As [`SharedReceiveQueue::new`].
    pub fn new(pd: &ProtectionDomain, cq: &CompletionQueue, options: SrqOptions) -> Result<Self> {
        let options = SrqOptions {
            max_sge: options.max_sge.max(3),
            ..options
        };
        Ok(UdSharedReceiveQueue {
            srq: SharedReceiveQueue::new(pd, cq, options)?,
            pool: block_pool(pd),
            mtu: pd.context().mtu() as usize,
        })
    }

    /// Posts a receive into `buffers`; resolves to the datagram that lands there, for any
    /// attached queue pair, its payload at offset 0 (see [`UdQueuePair::recv`]).
    ///
    /// [`UdQueuePair::recv`]: super::UdQueuePair::recv
    pub fn recv<B: Buffers>(&self, buffers: B) -> UdRecv<B> {
        let capacity = buffers.total_len();
        let (with_grh, allocated) = with_blocks(&self.pool, self.mtu, buffers);
        let op = match allocated {
            Ok(()) => self.srq.recv_as(with_grh),
            Err(err) => crate::op::Op::new(
                crate::op::Owner::Srq(self.srq.shared.clone()),
                Err(err),
                with_grh,
            ),
        };
        UdRecv {
            op,
            qpn: 0,
            capacity,
        }
    }

    /// Receives posted and not yet consumed.
    pub fn posted(&self) -> u32 {
        self.srq.posted()
    }

    /// The completion queue its receives complete on.
    pub fn cq(&self) -> &CompletionQueue {
        self.srq.cq()
    }

    /// The longest datagram a receive here must hold: the port's MTU.
    pub fn max_datagram(&self) -> usize {
        debug_assert!(self.mtu >= GRH_LEN);
        self.mtu
    }

    pub(crate) fn inner(&self) -> &SharedReceiveQueue {
        &self.srq
    }
}
