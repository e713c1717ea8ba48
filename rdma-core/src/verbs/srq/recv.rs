//! Posting receives on a shared receive queue. In a file of its own: the operation's future
//! names the queue it was posted on, so the queue's own file does not name the future.

use rdma_sys::*;

use super::SharedReceiveQueue;
use crate::buffers::Buffers;
use crate::op::{Op, Outcome, Owner, Recv};
use crate::queue::WorkQueueRef;
use crate::slots::WorkQueue;

impl SharedReceiveQueue {
    /// Posts a receive into `buffers`; resolves when a message for any attached queue pair
    /// lands there.
    pub fn recv<B: Buffers>(&self, buffers: B) -> Op<B, Recv> {
        self.recv_as(buffers)
    }

    /// Posts a receive into `buffers`, whose completion `O` reads.
    pub(crate) fn recv_as<B: Buffers, O: Outcome>(&self, buffers: B) -> Op<B, O> {
        let shared = &self.shared;
        let queue = WorkQueueRef {
            status: &shared.status,
            cq: &shared.cq.shared,
            queue: WorkQueue::Recv,
            depth: shared.max_wr,
            name: "shared receive queue",
            call: "ibv_post_srq_recv",
        };
        let posted = queue.post_recv(&buffers, shared.max_sge, shared.pd.raw(), |wr, bad| {
            // SAFETY: the SRQ is valid; `wr` and its SGEs live across the call; the memory
            // they name is owned by the Op (or its slot) until the completion.
            unsafe { ibv_post_srq_recv(shared.raw.as_ptr(), wr, bad) }
        });
        Op::new(Owner::Srq(shared.clone()), posted, buffers)
    }
}
