//! Batches of datagrams: several sends posted with one doorbell.

use rdma_sys::*;

use super::qp::{Addressed, Held, UdPeer, UdQueuePair, UdSend};
use crate::batch::post_linked;
use crate::buffers::check_pd;
use crate::error::{Error, Result};
use crate::mr::LocalBuf;
use crate::op::{Op, Owner};
use crate::qp::QpShared;
use crate::queue::PartlyPosted;
use crate::signaling::Signal;
use crate::slots::SlotId;
use crate::wc::WorkKind;

impl UdQueuePair {
    /// Starts a batch: several datagrams, to one peer or many, posted with one doorbell, of
    /// which only the last is signaled (see [`UdBatch`]).
    ///
    /// ```no_run
    /// # use anyrdma_core::{ud::{UdPeer, UdQueuePair}, ProtectionDomain, Result};
    /// # async fn demo(qp: UdQueuePair, peers: Vec<UdPeer>, pd: ProtectionDomain) -> Result<()> {
    /// let mut batch = qp.batch();
    /// for peer in &peers {
    ///     batch = batch.send_to(pd.alloc(64, anyrdma_core::Access::LOCAL)?, peer);
    /// }
    /// let (result, _buffers) = batch.submit().await;
    /// result?;
    /// # Ok(()) }
    /// ```
    pub fn batch(&self) -> UdBatch {
        UdBatch::new(self.clone())
    }
}

/// Datagrams to post with one doorbell: built with [`UdQueuePair::batch`], posted by
/// [`submit`](UdBatch::submit). Only the last request is signaled; its completion says
/// that the whole batch was sent (a send queue completes in order). Each datagram is one
/// [`LocalBuf`] and may go to its own peer.
///
/// Everything is checked before anything is posted: the MTU, the buffers' and address
/// handles' protection domain, and that the batch fits the queue. If the device takes only
/// part of the batch (a provider limit no check can see), the queue pair is failed and the
/// buffers return once the part it took is flushed, as for a reliable queue pair's
/// [`Batch`](crate::Batch).
#[must_use = "nothing is posted until submit()"]
pub struct UdBatch {
    qp: UdQueuePair,
    items: Vec<(LocalBuf, UdPeer, Option<u32>)>,
}

impl UdBatch {
    pub(crate) fn new(qp: UdQueuePair) -> UdBatch {
        UdBatch {
            qp,
            items: Vec::new(),
        }
    }

    /// Adds a datagram of `buf` to `to`.
    pub fn send_to(mut self, buf: LocalBuf, to: &UdPeer) -> Self {
        self.items.push((buf, to.clone(), None));
        self
    }

    /// Adds a datagram of `buf` to `to` with immediate data `imm`.
    pub fn send_to_with_imm(mut self, buf: LocalBuf, to: &UdPeer, imm: u32) -> Self {
        self.items.push((buf, to.clone(), Some(imm)));
        self
    }

    /// Datagrams in the batch.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Posts the batch; resolves once every datagram of it was sent, with the buffers in the
    /// order they were added.
    ///
    /// # Errors
    /// As a single send ([`UdQueuePair::send_to`]); [`Error::InvalidArgument`] for an empty
    /// batch; [`Error::TooManyRequests`] for more datagrams than the send queue holds.
    pub fn submit(self) -> UdSend<Vec<LocalBuf>> {
        let UdBatch { qp, items } = self;
        let shared = qp.shared().clone();
        let posted = post(&shared, qp.max_datagram(), &items);
        let mut buffers = Vec::with_capacity(items.len());
        let mut handles = Vec::with_capacity(items.len());
        for (buf, peer, _) in items {
            buffers.push(buf);
            handles.push(peer.address_handle().clone());
        }
        let addressed = Addressed {
            user: buffers,
            _ah: Held::Many(handles),
        };
        let op = match posted {
            Ok(slot) => Op::new(Owner::Send(shared), Ok(slot), addressed),
            Err(PartlyPosted {
                error,
                slot: Some(slot),
                ..
            }) => {
                shared.fail_after_partial_post();
                shared.send_cq.shared.abandon(slot, Box::new(addressed));
                let nothing = Addressed {
                    user: Vec::new(),
                    _ah: Held::None,
                };
                Op::new(Owner::Send(shared), Err(error), nothing)
            }
            Err(PartlyPosted {
                error, slot: None, ..
            }) => Op::new(Owner::Send(shared), Err(error), addressed),
        };
        UdSend { op }
    }
}

/// Checks and posts `items` as one chain.
fn post(
    shared: &QpShared,
    mtu: usize,
    items: &[(LocalBuf, UdPeer, Option<u32>)],
) -> std::result::Result<SlotId, PartlyPosted> {
    let refused = |error| PartlyPosted {
        error,
        slot: None,
        taken: 0,
    };
    if items.is_empty() {
        return Err(refused(Error::InvalidArgument(
            "an empty batch: add datagrams before submit(); nothing was posted".into(),
        )));
    }
    let pd = shared.pd.raw();
    let mut sges = Vec::with_capacity(items.len());
    for (buf, peer, _) in items {
        check(shared, mtu, buf, peer).map_err(refused)?;
        check_pd(buf, pd).map_err(refused)?;
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
            for (i, ((buf, peer, imm), wr)) in items.iter().zip(wrs.iter_mut()).enumerate() {
                wr.wr_id = id.wr_id(i == last);
                if !buf.is_empty() {
                    wr.sg_list = &mut sges[i];
                    wr.num_sge = 1;
                }
                if i == last {
                    wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
                }
                if !buf.is_empty() && buf.len() <= max_inline {
                    wr.send_flags |= ibv_send_flags::IBV_SEND_INLINE.0;
                }
                wr.opcode = match imm {
                    Some(imm) => {
                        wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
                        ibv_wr_opcode::IBV_WR_SEND_WITH_IMM
                    }
                    None => ibv_wr_opcode::IBV_WR_SEND,
                };
                wr.wr.ud = ud_t {
                    ah: peer.address_handle().raw(),
                    remote_qpn: peer.qpn(),
                    remote_qkey: peer.qkey(),
                };
            }
            // SAFETY: the WRs' SGEs live across the call; the buffers and address handles
            // are owned by the Op (or its slot) until the last WR completes.
            let posted = unsafe { post_linked(shared, &mut wrs) };
            // Under the send queue's signaling lock, as every send-queue post.
            let taken = if posted.rc == 0 {
                items.len()
            } else {
                posted.accepted as usize
            };
            let bytes: usize = items[..taken].iter().map(|(buf, _, _)| buf.len()).sum();
            shared
                .status
                .counters
                .bytes_sent
                .add_exclusive(bytes as u64);
            posted
        })
        .map(|posted| posted.id)
}

/// The checks of one datagram of a batch that a single send makes too.
fn check(shared: &QpShared, mtu: usize, buf: &LocalBuf, peer: &UdPeer) -> Result<()> {
    if peer.address_handle().pd().raw() != shared.pd.raw() {
        return Err(Error::InvalidArgument(
            "a peer's address handle belongs to another protection domain than the queue \
             pair's; nothing was posted"
                .into(),
        ));
    }
    if buf.len() > mtu {
        return Err(Error::DatagramTooLarge {
            len: buf.len(),
            mtu: mtu as u32,
            device: shared.pd.context().device_name().to_owned(),
        });
    }
    Ok(())
}
