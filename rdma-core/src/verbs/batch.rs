//! Several send-queue work requests posted with one doorbell.

use rdma_sys::*;

use crate::buffers::check_pd;
use crate::error::Error;
use crate::mr::LocalBuf;
use crate::op::{Done, Op, Owner};
use crate::qp::{QpShared, QueuePair};
use crate::queue::{PartlyPosted, Posted};
use crate::remote::RemoteRegion;
use crate::send::SendKind;
use crate::signaling::Signal;
use crate::slots::SlotId;
use crate::wc::WorkKind;

/// Send-queue work requests to post together: one `ibv_post_send`, one completion.
///
/// Every request but the last is unsignaled; the batch's buffers come back together when
/// the last one completes, which on a reliable connection means all of them did. If any
/// fails, the batch resolves to the first failure.
#[must_use = "nothing is posted until submit()"]
pub struct Batch {
    qp: QueuePair,
    items: Vec<(LocalBuf, SendKind)>,
}

impl Batch {
    pub(crate) fn new(qp: QueuePair) -> Self {
        Batch {
            qp,
            items: Vec::new(),
        }
    }

    fn push(mut self, buf: LocalBuf, kind: SendKind) -> Self {
        self.items.push((buf, kind));
        self
    }

    /// Adds a send.
    pub fn send(self, buf: LocalBuf) -> Self {
        self.push(buf, SendKind::Send { imm: None })
    }

    /// Adds a send with immediate data.
    pub fn send_with_imm(self, buf: LocalBuf, imm: u32) -> Self {
        self.push(buf, SendKind::Send { imm: Some(imm) })
    }

    /// Adds an RDMA write.
    pub fn write(self, buf: LocalBuf, remote: RemoteRegion) -> Self {
        self.push(buf, SendKind::Write { remote, imm: None })
    }

    /// Adds an RDMA write with immediate data.
    pub fn write_with_imm(self, buf: LocalBuf, remote: RemoteRegion, imm: u32) -> Self {
        self.push(
            buf,
            SendKind::Write {
                remote,
                imm: Some(imm),
            },
        )
    }

    /// Adds an RDMA read.
    pub fn read(self, buf: LocalBuf, remote: RemoteRegion) -> Self {
        self.push(buf, SendKind::Read { remote })
    }

    /// Adds an atomic fetch-and-add (`buf` receives the previous value).
    pub fn fetch_and_add(self, buf: LocalBuf, remote: RemoteRegion, add: u64) -> Self {
        self.push(buf, SendKind::FetchAdd { remote, add })
    }

    /// Adds an atomic compare-and-swap (`buf` receives the previous value).
    pub fn compare_and_swap(
        self,
        buf: LocalBuf,
        remote: RemoteRegion,
        compare: u64,
        swap: u64,
    ) -> Self {
        self.push(
            buf,
            SendKind::CompareSwap {
                remote,
                compare,
                swap,
            },
        )
    }

    /// Number of work requests in the batch.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Posts the whole batch with one doorbell; resolves when all of it completed, to the
    /// result and the buffers in the order they were added.
    pub fn submit(self) -> Op<Vec<LocalBuf>, Done> {
        let Batch { qp, items } = self;
        let shared = qp.shared;
        let posted = Self::post(&shared, &items);
        let buffers: Vec<LocalBuf> = items.into_iter().map(|(buf, _)| buf).collect();
        match posted {
            Ok(slot) => Op::new(Owner::Send(shared), Ok(slot), buffers),
            Err(PartlyPosted {
                error,
                slot: Some(slot),
                ..
            }) => {
                // Part of the chain is on the wire, unsignaled, and no completion will say
                // when the device is done with it: fail the queue pair, and keep the buffers
                // in the slot of the part, which its destruction releases. The caller gets
                // the error, not the buffers.
                shared.fail_after_partial_post();
                shared.send_cq.shared.abandon(slot, Box::new(buffers));
                Op::new(Owner::Send(shared), Err(error), Vec::new())
            }
            Err(PartlyPosted {
                error, slot: None, ..
            }) => Op::new(Owner::Send(shared), Err(error), buffers),
        }
    }

    fn post(
        shared: &QpShared,
        items: &[(LocalBuf, SendKind)],
    ) -> std::result::Result<SlotId, PartlyPosted> {
        let refused = |error| PartlyPosted {
            error,
            slot: None,
            taken: 0,
        };
        if items.is_empty() {
            return Err(refused(Error::InvalidArgument(
                "an empty batch: add work requests before submit(); nothing was posted".into(),
            )));
        }
        let pd = shared.pd.raw();
        let ctx = shared.pd.context();
        let (device, atomics) = (ctx.device_name(), ctx.limits().atomics);
        let mut sges = Vec::with_capacity(items.len());
        for (buf, kind) in items {
            check_pd(buf, pd).map_err(refused)?;
            kind.validate(buf.len(), device, atomics).map_err(refused)?;
            sges.push(buf.piece().sge().map_err(refused)?);
        }
        let max_inline = shared.caps.max_inline_data as usize;
        let count = u32::try_from(items.len()).unwrap_or(u32::MAX);
        shared
            .send_queue()
            .map_err(refused)?
            .post_chain(WorkKind::Batch, None, count, Signal::Always, |id, _| {
                // SAFETY: ibv_send_wr is plain C data; zero is valid for the fields not set.
                let mut wrs: Vec<ibv_send_wr> = items
                    .iter()
                    .map(|_| unsafe { std::mem::zeroed() })
                    .collect();
                let last = wrs.len() - 1;
                for (i, ((buf, kind), wr)) in items.iter().zip(wrs.iter_mut()).enumerate() {
                    wr.wr_id = id.wr_id(i == last);
                    if !buf.is_empty() {
                        wr.sg_list = &mut sges[i];
                        wr.num_sge = 1;
                    }
                    if i == last {
                        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
                    }
                    kind.encode(wr, !buf.is_empty() && buf.len() <= max_inline);
                }
                // SAFETY: the WRs' SGEs (`sges`) live across the call; the buffers are owned
                // by the Op (or its slot) until the last WR completes.
                let posted = unsafe { post_linked(shared, &mut wrs) };
                // Under the send queue's signaling lock, as every send-queue post.
                let taken = if posted.rc == 0 {
                    items.len()
                } else {
                    posted.accepted as usize
                };
                for (buf, kind) in &items[..taken] {
                    kind.count_posted(&shared.status.counters, buf.len());
                }
                posted
            })
            .map(|posted| posted.id)
    }
}

/// Links `wrs` into one chain and posts it with one doorbell; how many the device accepted
/// before one it refused, as the verbs contract reports it.
///
/// # Safety
/// Every work request must be valid for `ibv_post_send` on `shared`'s queue pair: its SGEs
/// live across the call, and the memory and address handles they name stay alive (owned by
/// an operation or its slot) until the request completes.
pub(crate) unsafe fn post_linked(shared: &QpShared, wrs: &mut [ibv_send_wr]) -> Posted {
    for i in 1..wrs.len() {
        let next: *mut ibv_send_wr = &mut wrs[i];
        wrs[i - 1].next = next;
    }
    let mut bad = std::ptr::null_mut();
    // SAFETY: the QP is valid while `shared` lives; the chain lives across the call, and
    // what it names is valid by the caller's contract.
    let rc = unsafe { ibv_post_send(shared.raw(), wrs.as_mut_ptr(), &mut bad) };
    let accepted = if rc == 0 || bad.is_null() {
        0
    } else {
        // SAFETY: `bad` points into `wrs` (the verbs contract for a failed post).
        let refused_at = unsafe { bad.offset_from(wrs.as_ptr()) };
        u32::try_from(refused_at).unwrap_or(0)
    };
    Posted { rc, accepted }
}
