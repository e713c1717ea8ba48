//! Unreliable datagram queue pairs: sends to address handles, receives with the GRH hidden.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use rdma_sys::*;

use super::ah::{AddressHandle, AhCache};
use super::grh::{sender_gid, WithGrh, GRH_LEN};
use super::DatagramQp;
use crate::buffers::{sealed, Buffers, SgeList};
use crate::cq::CompletionQueue;
use crate::device::Gid;
use crate::error::{Error, Result};
use crate::mr::LocalBuf;
use crate::op::{Completion, Done, Op, Outcome, Owner};
use crate::pd::ProtectionDomain;
use crate::pool::{MemoryPool, PoolOptions};
use crate::qp::{check_option, QpOptions, QpShared, QueuePair};
use crate::queue::PostedSlot;
use crate::signaling::Signal;
use crate::srq::SharedReceiveQueue;
use crate::wc::{WcStatus, WorkKind};

/// The Q_Key librdmacm gives datagram queue pairs (`RDMA_UDP_QKEY`), the default here so
/// that peers found through the connection manager match.
pub const DEFAULT_QKEY: u32 = 0x0123_4567;

/// Q_Keys with the top bit set are "controlled": the device replaces them with the queue
/// pair's own, and only privileged processes may use them. anyrdma refuses them.
const MAX_QKEY: u32 = 0x7fff_ffff;

/// Largest queue pair number (24 bits).
const MAX_QPN: u32 = 0x00ff_ffff;

/// Options of a [`UdQueuePair`].
#[derive(Debug, Clone, Copy)]
pub struct UdOptions {
    /// The queue pair's Q_Key: a datagram is delivered only if the sender names this key
    /// (others are dropped by the device, silently). 0 to 0x7fff_ffff. Default
    /// [`DEFAULT_QKEY`].
    pub qkey: u32,
    /// Queue depths, scatter-gather entries, inline size and selective signaling, as for a
    /// reliable queue pair. A receive takes up to two more scatter-gather entries than its
    /// buffers (the hidden GRH, and room for the rest of the MTU), so `max_recv_sge` is at
    /// least 3.
    pub queues: QpOptions,
}

impl Default for UdOptions {
    fn default() -> Self {
        UdOptions {
            qkey: DEFAULT_QKEY,
            queues: QpOptions::default(),
        }
    }
}

/// Where a datagram queue pair can be reached: what a peer needs to send to it. Exchange
/// it out of band (or through the connection manager), then turn it into a [`UdPeer`] with
/// [`UdQueuePair::peer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdAddress {
    /// The port's GID (on RoCE, its IP address).
    pub gid: Gid,
    /// The port's LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// The queue pair number.
    pub qpn: u32,
    /// The queue pair's Q_Key.
    pub qkey: u32,
}

/// A destination of datagram sends: an address handle, a queue pair number and its Q_Key.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct UdPeer {
    ah: AddressHandle,
    qpn: u32,
    qkey: u32,
}

impl UdPeer {
    /// The destination queue pair `qpn`, with Q_Key `qkey`, at the port `ah` leads to.
    ///
    /// # Errors
    /// [`Error::OptionOutOfRange`] when `qpn` is above 24 bits or `qkey` has its top bit
    /// set (a controlled Q_Key).
    pub fn new(ah: AddressHandle, qpn: u32, qkey: u32) -> Result<UdPeer> {
        check_option("UdPeer qpn", qpn, MAX_QPN)?;
        check_option("UdPeer qkey", qkey, MAX_QKEY)?;
        Ok(UdPeer { ah, qpn, qkey })
    }

    /// The address handle.
    pub fn address_handle(&self) -> &AddressHandle {
        &self.ah
    }

    /// The destination queue pair number.
    pub fn qpn(&self) -> u32 {
        self.qpn
    }

    /// The destination's Q_Key.
    pub fn qkey(&self) -> u32 {
        self.qkey
    }
}

/// A datagram received: what a [`UdQueuePair::recv`] resolves to. The payload is at the
/// start of the receive's buffers; the 40 bytes the device puts in front of it never
/// appear there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// Payload bytes, from the start of the buffers.
    pub len: usize,
    /// Immediate data sent with it, if any.
    pub imm: Option<u32>,
    /// The sending queue pair's number.
    pub src_qpn: u32,
    /// The sending port's GID (on RoCE v2 over IPv4, its IPv4-mapped address), read from the
    /// datagram's routing header; `None` when it came without one (InfiniBand within a
    /// subnet).
    pub src_gid: Option<Gid>,
    /// The sender's LID (InfiniBand; 0 on RoCE).
    pub slid: u16,
    /// Service level it travelled with.
    pub sl: u8,
    /// Index of the P_Key it matched in this port's table.
    pub pkey_index: u16,
}

/// An unreliable datagram (UD) queue pair: one queue pair sends to and receives from any
/// number of peers, each datagram on its own, without a connection. See the [module
/// documentation](crate::ud) for what the transport promises and what it loses.
///
/// Cheap to clone. It uses the completion queues, futures, buffer ownership and selective
/// signaling of [`QueuePair`](crate::QueuePair), and is torn down the same way.
///
/// ```no_run
/// # async fn demo(their_address: anyrdma_core::ud::UdAddress) -> anyrdma_core::Result<()> {
/// use anyrdma_core::ud::{UdOptions, UdQueuePair};
/// use anyrdma_core::*;
/// let ctx = Context::open_default()?;
/// let pd = ctx.alloc_pd()?;
/// let cq = CompletionQueue::new(&ctx, CqOptions::default())?;
/// let qp = UdQueuePair::new(&pd, &cq, &cq, UdOptions::default())?;
/// let mine = qp.address(); // give this to peers
///
/// let inbox = qp.recv(pd.alloc(qp.max_datagram(), Access::LOCAL)?);
/// let peer = qp.peer(&their_address)?; // address handle cached per destination
/// let mut hello = pd.alloc(5, Access::LOCAL)?;
/// hello.copy_from_slice(b"hello");
/// let (sent, _hello) = qp.send_to(hello, &peer).await;
/// sent?;
/// let (got, buf) = inbox.await;
/// let got = got?;
/// println!("{} bytes from queue pair {}: {:?}", got.len, got.src_qpn, &buf[..got.len]);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct UdQueuePair {
    qp: QueuePair,
    extra: Arc<UdShared>,
}

struct UdShared {
    qkey: u32,
    /// The port's active MTU: the longest datagram.
    mtu: u32,
    cache: AhCache,
    /// The 40-byte blocks receives put in front of the user's buffers, and the blocks they
    /// put behind those shorter than the MTU.
    pool: MemoryPool,
    /// The multicast groups (MGID, MLID) the queue pair is attached to, with how many
    /// memberships hold each: attached on the first, detached with the last, so that two
    /// memberships of one group do not detach each other.
    attached: Mutex<HashMap<(Gid, u16), usize>>,
}

impl UdQueuePair {
    /// Creates a datagram queue pair on `pd`'s port and makes it ready to send and receive
    /// (INIT, RTR, RTS: a datagram queue pair has no remote side to name).
    ///
    /// # Errors
    /// [`Error::OptionOutOfRange`] for a Q_Key with its top bit set; [`Error::Verbs`] when
    /// the device refuses the queue pair or one of its states; the errors of
    /// [`QueuePair::new`](crate::QueuePair::new).
    pub fn new(
        pd: &ProtectionDomain,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        options: UdOptions,
    ) -> Result<UdQueuePair> {
        Self::create(pd, send_cq, recv_cq, None, options)
    }

    pub(super) fn create(
        pd: &ProtectionDomain,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        srq: Option<&SharedReceiveQueue>,
        options: UdOptions,
    ) -> Result<UdQueuePair> {
        check_option("UdOptions::qkey", options.qkey, MAX_QKEY)?;
        let ctx = &pd.context().inner;
        // Fences (see `post_datagram_fence`) go to this queue pair's own port.
        let fence = AddressHandle::new(pd, ctx.gid, ctx.lid)?;
        let mut queues = options.queues;
        queues.max_recv_sge = queues.max_recv_sge.max(3);
        let qp = QueuePair::new_datagram(
            pd,
            send_cq,
            recv_cq,
            srq,
            queues,
            DatagramQp {
                qkey: options.qkey,
                fence,
            },
        )?;
        let pool = block_pool(pd);
        Ok(UdQueuePair {
            qp,
            extra: Arc::new(UdShared {
                qkey: options.qkey,
                mtu: ctx.mtu,
                cache: AhCache::new(pd),
                pool,
                attached: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The queue pair number.
    pub fn qpn(&self) -> u32 {
        self.qp.qpn()
    }

    /// What this queue pair did since it was created: datagrams and bytes sent, receives,
    /// failures (see [`QpStats`](crate::QpStats)).
    pub fn stats(&self) -> crate::QpStats {
        self.qp.stats()
    }

    /// The Q_Key datagrams to this queue pair must carry.
    pub fn qkey(&self) -> u32 {
        self.extra.qkey
    }

    /// This queue pair's address, for peers to send to.
    pub fn address(&self) -> UdAddress {
        let ctx = &self.qp.shared.pd.context().inner;
        UdAddress {
            gid: ctx.gid,
            lid: ctx.lid,
            qpn: self.qpn(),
            qkey: self.extra.qkey,
        }
    }

    /// The longest datagram, in bytes: the port's active MTU. Longer sends are refused
    /// with [`Error::DatagramTooLarge`]; receives of this size hold any datagram.
    pub fn max_datagram(&self) -> usize {
        self.extra.mtu as usize
    }

    /// The destination `address`, with its address handle from this queue pair's cache
    /// (created on first use: on RoCE that resolves the destination's Ethernet address and
    /// may wait for a neighbour lookup).
    ///
    /// # Errors
    /// [`Error::OptionOutOfRange`] for a QP number above 24 bits or a controlled Q_Key;
    /// [`Error::Verbs`] when the address handle cannot be created.
    pub fn peer(&self, address: &UdAddress) -> Result<UdPeer> {
        check_option("UdAddress::qpn", address.qpn, MAX_QPN)?;
        check_option("UdAddress::qkey", address.qkey, MAX_QKEY)?;
        let ah = self.extra.cache.get(address.gid, address.lid)?;
        Ok(UdPeer {
            ah,
            qpn: address.qpn,
            qkey: address.qkey,
        })
    }

    /// The sender of `datagram`, to answer it: its GID (or LID) and queue pair, with this
    /// queue pair's Q_Key (datagram peers usually share one; the datagram does not carry the
    /// sender's).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the datagram came with neither a GID nor a LID;
    /// those of [`peer`](UdQueuePair::peer).
    pub fn reply_to(&self, datagram: &Datagram) -> Result<UdPeer> {
        if datagram.src_gid.is_none() && datagram.slid == 0 {
            return Err(Error::InvalidArgument(
                "the datagram came without a routing header or source LID: there is no \
                 address to answer to"
                    .into(),
            ));
        }
        self.peer(&UdAddress {
            gid: datagram.src_gid.unwrap_or_default(),
            lid: datagram.slid,
            qpn: datagram.src_qpn,
            qkey: self.extra.qkey,
        })
    }

    pub(crate) fn shared(&self) -> &Arc<QpShared> {
        &self.qp.shared
    }

    /// The multicast groups the queue pair is attached to, with their memberships.
    pub(super) fn attached(&self) -> &Mutex<HashMap<(Gid, u16), usize>> {
        &self.extra.attached
    }

    /// Destinations whose address handles the cache holds.
    pub fn cached_peers(&self) -> usize {
        self.extra.cache.len()
    }

    /// Sends `buffers` as one datagram to `to`. Resolves once the device has sent it, which
    /// says nothing of its arrival (see the [module documentation](crate::ud)).
    ///
    /// A datagram longer than [`max_datagram`](UdQueuePair::max_datagram) is refused before
    /// anything is posted, with [`Error::DatagramTooLarge`].
    pub fn send_to<B: Buffers>(&self, buffers: B, to: &UdPeer) -> UdSend<B> {
        self.send_op(buffers, to, None)
    }

    /// Sends like [`send_to`](UdQueuePair::send_to), with 32 bits of immediate data that
    /// arrive in [`Datagram::imm`].
    pub fn send_to_with_imm<B: Buffers>(&self, buffers: B, to: &UdPeer, imm: u32) -> UdSend<B> {
        self.send_op(buffers, to, Some(imm))
    }

    fn send_op<B: Buffers>(&self, buffers: B, to: &UdPeer, imm: Option<u32>) -> UdSend<B> {
        let addressed = Addressed {
            user: buffers,
            _ah: Held::One(to.ah.clone()),
        };
        let posted = self.post_send(&addressed, to, imm);
        UdSend {
            op: Op::posted(Owner::Send(self.qp.shared.clone()), posted, addressed),
        }
    }

    fn post_send<B: Buffers>(
        &self,
        buffers: &B,
        to: &UdPeer,
        imm: Option<u32>,
    ) -> Result<PostedSlot> {
        let shared = &self.qp.shared;
        if to.ah.pd().raw() != shared.pd.raw() {
            return Err(Error::InvalidArgument(
                "the peer's address handle belongs to another protection domain than the \
                 queue pair's; nothing was posted"
                    .into(),
            ));
        }
        let mut sges = SgeList::new();
        sges.collect(buffers, shared.caps.max_send_sge, shared.pd.raw())?;
        if sges.total > self.extra.mtu as usize {
            return Err(Error::DatagramTooLarge {
                len: sges.total,
                mtu: self.extra.mtu,
                device: shared.pd.context().device_name().to_owned(),
            });
        }
        let inline_ok = sges.total > 0 && sges.total <= shared.caps.max_inline_data as usize;
        let kind = match imm {
            Some(_) => WorkKind::SendWithImm,
            None => WorkKind::Send,
        };
        let (ah, qpn, qkey) = (to.ah.raw(), to.qpn, to.qkey);
        shared
            .send_queue()?
            .post(kind, None, 1, Signal::Selective, |id, signaled| {
                // SAFETY: ibv_send_wr is plain C data; zero is valid for the fields not set.
                let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
                wr.wr_id = id.wr_id(true);
                (wr.sg_list, wr.num_sge) = sges.entries();
                wr.opcode = match imm {
                    Some(imm) => {
                        wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
                        ibv_wr_opcode::IBV_WR_SEND_WITH_IMM
                    }
                    None => ibv_wr_opcode::IBV_WR_SEND,
                };
                if signaled {
                    wr.send_flags |= ibv_send_flags::IBV_SEND_SIGNALED.0;
                }
                if inline_ok {
                    wr.send_flags |= ibv_send_flags::IBV_SEND_INLINE.0;
                }
                wr.wr.ud = ud_t {
                    ah,
                    remote_qpn: qpn,
                    remote_qkey: qkey,
                };
                let mut bad = std::ptr::null_mut();
                // SAFETY: the QP is valid; `wr` and its SGE list live across the call; the
                // memory the SGEs name and the address handle are owned by the Op (or its
                // slot) until the completion that covers the request.
                let rc = unsafe { ibv_post_send(shared.raw(), &mut wr, &mut bad) };
                if rc == 0 {
                    // Under the send queue's signaling lock, as every send-queue post.
                    shared
                        .status
                        .counters
                        .bytes_sent
                        .add_exclusive(sges.total as u64);
                }
                rc
            })
    }

    /// Posts a receive into `buffers`; resolves to the [`Datagram`] that lands there, its
    /// payload at offset 0. The device writes 40 bytes in front of every datagram; they go
    /// to a block of the queue pair's own, never to `buffers`.
    ///
    /// A datagram longer than `buffers` fails this receive alone with
    /// [`Error::DatagramTruncated`], on every device: the queue pair and its other receives
    /// go on (behind buffers shorter than the MTU the receive posts a block of its own for
    /// the rest, so that the device never sees a length error; see
    /// [`crate::ud`]). Receives of [`max_datagram`](UdQueuePair::max_datagram) bytes hold any
    /// datagram.
    pub fn recv<B: Buffers>(&self, buffers: B) -> UdRecv<B> {
        let shared = &self.qp.shared;
        let capacity = buffers.total_len();
        let (with_grh, allocated) = with_blocks(&self.extra.pool, self.max_datagram(), buffers);
        let allocated = allocated.and_then(|()| match shared.srq {
            Some(_) => Err(Error::InvalidArgument(
                "this queue pair takes its receives from a shared receive queue: post them \
                 there (UdSharedReceiveQueue::recv); nothing was posted"
                    .into(),
            )),
            None => Ok(()),
        });
        let posted = allocated.and_then(|()| {
            shared.recv_queue().and_then(|queue| {
                queue.post_recv(
                    &with_grh,
                    shared.caps.max_recv_sge,
                    shared.pd.raw(),
                    |wr, bad| {
                        // SAFETY: the QP is valid; `wr` and its SGEs live across the call; the
                        // memory they name is owned by the Op (or its slot) until the
                        // completion.
                        unsafe { ibv_post_recv(shared.raw(), wr, bad) }
                    },
                )
            })
        });
        UdRecv {
            op: Op::new(Owner::Recv(shared.clone()), posted, with_grh),
            qpn: self.qpn(),
            capacity,
        }
    }

    /// The failure that put the queue pair in the error state, if it is there.
    pub fn failure(&self) -> Option<Arc<Error>> {
        self.qp.failure()
    }

    /// Moves the queue pair to the error state: every pending operation completes with a
    /// flush error, and new ones fail at once.
    ///
    /// # Errors
    /// [`Error::Verbs`] when the device refuses the transition.
    pub fn shutdown(&self) -> Result<()> {
        self.qp.shutdown()
    }

    /// The capabilities the device granted (queue depths, SGEs, inline size).
    pub fn caps(&self) -> QpOptions {
        self.qp.caps()
    }

    /// The protection domain.
    pub fn pd(&self) -> &ProtectionDomain {
        self.qp.pd()
    }
}

impl std::fmt::Debug for UdQueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdQueuePair")
            .field("qpn", &self.qpn())
            .field("qkey", &self.extra.qkey)
            .finish()
    }
}

/// The pool of a queue pair's (or shared receive queue's) hidden blocks: 40-byte GRH blocks
/// and the rest-of-the-MTU blocks behind short receives.
pub(crate) fn block_pool(pd: &ProtectionDomain) -> MemoryPool {
    MemoryPool::new(
        pd,
        PoolOptions {
            chunk_size: 256 << 10,
            max_bytes: 256 << 20,
            smallest: 64,
            // The largest MTU.
            largest: 4096,
        },
    )
}

/// `buffers` with the blocks a datagram receive puts around them (see `ud::grh`), and
/// whether they could be allocated (nothing is to be posted otherwise).
pub(crate) fn with_blocks<B: Buffers>(
    pool: &MemoryPool,
    mtu: usize,
    buffers: B,
) -> (WithGrh<B>, Result<()>) {
    let spare = mtu.saturating_sub(buffers.total_len());
    let blocks = pool.alloc(GRH_LEN).and_then(|grh| {
        let overflow = match spare {
            0 => None,
            spare => Some(pool.alloc(spare)?),
        };
        Ok((grh, overflow))
    });
    let (grh, overflow, allocated) = match blocks {
        Ok((grh, overflow)) => (Some(grh), overflow, Ok(())),
        Err(err) => (None, None, Err(err)),
    };
    let with_grh = WithGrh {
        grh,
        user: buffers,
        overflow,
    };
    (with_grh, allocated)
}

impl QpShared {
    /// The fence of a datagram queue pair (see [`crate::signaling`]): a signaled zero-length
    /// send. It goes to this queue pair itself under a Q_Key that is not its own, so its
    /// receive side drops it without taking a receive (and without it leaving the port: the
    /// device loops it back). Its slot keeps the address handle until it completes.
    pub(crate) fn post_datagram_fence(&self, datagram: &DatagramQp) -> Result<()> {
        let ah = datagram.fence.raw();
        let qpn = self.status.qpn;
        // Differs from the queue pair's Q_Key in its lowest bit; never a controlled key,
        // since the queue pair's own has the top bit clear.
        let qkey = datagram.qkey ^ 1;
        let posted = self
            .send_queue()?
            .post(WorkKind::Send, None, 1, Signal::Fence, |id, _| {
                // SAFETY: ibv_send_wr is plain C data; zero is valid for the fields not set
                // (no SGE).
                let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
                wr.wr_id = id.wr_id(true);
                wr.opcode = ibv_wr_opcode::IBV_WR_SEND;
                wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
                wr.wr.ud = ud_t {
                    ah,
                    remote_qpn: qpn,
                    remote_qkey: qkey,
                };
                let mut bad = std::ptr::null_mut();
                // SAFETY: the QP is valid; `wr` lives across the call and names no memory;
                // the address handle is kept by the slot until the completion.
                unsafe { ibv_post_send(self.raw(), &mut wr, &mut bad) }
            })?;
        self.send_cq
            .shared
            .abandon(posted.id, Box::new(datagram.fence.clone()));
        self.status.counters.fences.add(1);
        Ok(())
    }
}

/// A send's buffers and the address handles it names, kept together until the completion.
pub(crate) struct Addressed<B> {
    pub(crate) user: B,
    pub(crate) _ah: Held,
}

/// The address handles a send (or a batch of them) names: held, never read, so that they
/// outlive the requests that name them.
#[allow(dead_code)]
pub(crate) enum Held {
    /// A batch refused before posting names none.
    None,
    One(AddressHandle),
    Many(Vec<AddressHandle>),
}

impl<B: Buffers> sealed::Sealed for Addressed<B> {}
impl<B: Buffers> Buffers for Addressed<B> {
    fn for_each_piece(&self, f: &mut dyn FnMut(sealed::Piece<'_>)) {
        self.user.for_each_piece(f);
    }

    fn single_piece(&self) -> Option<sealed::Piece<'_>> {
        self.user.single_piece()
    }
}

/// A datagram send in flight: resolves to the result and the buffers. Dropping it gives up
/// the result only; the buffers (and the address handle) are released once the device is
/// done with them.
#[must_use = "the datagram is posted; await it to get the result and the buffers back"]
pub struct UdSend<B: Buffers> {
    pub(crate) op: Op<Addressed<B>, Done>,
}

impl<B: Buffers> Future for UdSend<B> {
    type Output = (Result<()>, B);

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.op)
            .poll(cx)
            .map(|(result, addressed)| (result, addressed.user))
    }
}

/// How a datagram receive reads its completion: all of it, for [`UdRecv`] to turn into a
/// [`Datagram`] with the GRH at hand.
pub(crate) enum RawRecv {}
impl sealed::Sealed for RawRecv {}
impl Outcome for RawRecv {
    type Output = Completion;
    fn output<B: Buffers>(completion: Completion, _: &B) -> Completion {
        completion
    }
}

/// A datagram receive in flight: resolves to the [`Datagram`] and the buffers. Dropping it
/// gives up the result only: the buffers are released once the device is done with them
/// (a datagram that lands there meanwhile is lost).
#[must_use = "the receive is posted; await it to get the datagram and the buffers back"]
pub struct UdRecv<B: Buffers> {
    pub(crate) op: Op<WithGrh<B>, RawRecv>,
    /// The queue pair for errors before a completion names one (0 for a shared receive
    /// queue).
    pub(crate) qpn: u32,
    pub(crate) capacity: usize,
}

impl<B: Buffers> Future for UdRecv<B> {
    type Output = (Result<Datagram>, B);

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let (qpn, capacity) = (self.qpn, self.capacity);
        Pin::new(&mut self.op).poll(cx).map(|(result, with_grh)| {
            let result = match result {
                Ok(completion) => datagram(completion, with_grh.grh.as_ref(), capacity),
                // A device that checks lengths itself (a datagram above this port's MTU).
                Err(Error::WorkCompletion {
                    status: WcStatus::LOC_LEN_ERR,
                    ..
                }) => Err(Error::DatagramTruncated {
                    qpn,
                    capacity,
                    len: None,
                }),
                Err(err) => Err(err),
            };
            (result, with_grh.user)
        })
    }
}

/// The datagram a successful receive completion describes; `grh` holds the 40 bytes the
/// device wrote in front of it (the receive is complete: the device is done with them).
/// A datagram longer than the user's `capacity` (its end went to the overflow block) fails
/// the receive.
fn datagram(completion: Completion, grh: Option<&LocalBuf>, capacity: usize) -> Result<Datagram> {
    let info = completion.0;
    // The device counts the 40 bytes in front in the length.
    let len = (info.byte_len as usize).saturating_sub(GRH_LEN);
    if len > capacity {
        return Err(Error::DatagramTruncated {
            qpn: info.datagram().qp_num,
            capacity,
            len: Some(len),
        });
    }
    let source = info.datagram();
    let src_gid = grh
        .and_then(|grh| <&[u8; GRH_LEN]>::try_from(&grh[..]).ok())
        .and_then(|bytes| sender_gid(bytes, source.grh));
    Ok(Datagram {
        len,
        imm: info.imm(),
        src_qpn: source.src_qp,
        src_gid,
        slid: source.slid,
        sl: source.sl,
        pkey_index: source.pkey_index,
    })
}
