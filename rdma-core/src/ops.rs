//! Data operations as futures.
//!
//! Each method posts its work request when called and returns an [`Op`]: a future that
//! resolves, when the work completion arrives, to the result and the buffers it took.
//! Dropping an `Op` early never frees or exposes memory the NIC may still touch: the buffers
//! wait in the completion queue's slot until the completion (success, error or flush)
//! arrives, then they are released.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use rdma_sys::*;

use crate::cq::{SlotId, SlotInfo, WcInfo, WorkQueue};
use crate::error::{Error, Result};
use crate::mr::LocalBuf;
use crate::qp::{QpShared, QueuePair};
use crate::remote::RemoteRegion;
use crate::runtime::Runtime;
use crate::wc::WorkKind;

/// Most scatter-gather entries anyrdma puts in one work request.
pub const MAX_SGE: usize = 32;

mod sealed {
    pub trait Sealed {}
}

/// Owned registered memory an operation can take: one [`LocalBuf`], or several as a
/// scatter-gather list (`Vec<LocalBuf>`, `[LocalBuf; N]`).
pub trait Buffers: sealed::Sealed + Send + Unpin + 'static {
    /// Calls `f` on each piece, in order.
    fn for_each_buf(&self, f: &mut dyn FnMut(&LocalBuf));

    /// Total length in bytes.
    fn total_len(&self) -> usize {
        let mut total = 0;
        self.for_each_buf(&mut |b| total += b.len());
        total
    }
}

impl sealed::Sealed for LocalBuf {}
impl Buffers for LocalBuf {
    fn for_each_buf(&self, f: &mut dyn FnMut(&LocalBuf)) {
        f(self);
    }
}

impl sealed::Sealed for Vec<LocalBuf> {}
impl Buffers for Vec<LocalBuf> {
    fn for_each_buf(&self, f: &mut dyn FnMut(&LocalBuf)) {
        self.iter().for_each(f);
    }
}

impl<const N: usize> sealed::Sealed for [LocalBuf; N] {}
impl<const N: usize> Buffers for [LocalBuf; N] {
    fn for_each_buf(&self, f: &mut dyn FnMut(&LocalBuf)) {
        self.iter().for_each(f);
    }
}

/// What a receive reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes received, from the start of the buffers.
    pub len: usize,
    /// Immediate data sent with the message, if any.
    pub imm: Option<u32>,
}

/// How an operation turns its completion into its output.
pub trait Outcome: sealed::Sealed + Send + 'static {
    /// The output on success.
    type Output;
    #[doc(hidden)]
    fn output<B: Buffers>(completion: Received, buffers: &B) -> Self::Output;
}

/// Output of operations that report nothing but success.
#[derive(Debug)]
pub enum Done {}
impl sealed::Sealed for Done {}
impl Outcome for Done {
    type Output = ();
    fn output<B: Buffers>(_: Received, _: &B) {}
}

/// Output of receives.
#[derive(Debug)]
pub enum Recv {}
impl sealed::Sealed for Recv {}
impl Outcome for Recv {
    type Output = Received;
    fn output<B: Buffers>(completion: Received, _: &B) -> Received {
        completion
    }
}

/// Output of atomics: the value the remote word held before.
#[derive(Debug)]
pub enum Atomic {}
impl sealed::Sealed for Atomic {}
impl Outcome for Atomic {
    type Output = u64;
    fn output<B: Buffers>(_: Received, buffers: &B) -> u64 {
        let mut value = 0;
        buffers.for_each_buf(&mut |b| {
            if let Ok(bytes) = <[u8; 8]>::try_from(&b[..]) {
                value = u64::from_ne_bytes(bytes);
            }
        });
        value
    }
}

/// An operation in flight: resolves to `(result, buffers)`.
///
/// The work request is already posted when the `Op` exists, so several can be in flight
/// from one task. Dropping it cancels nothing on the wire: it only gives up the result, and
/// the buffers are released once the device is done with them.
#[must_use = "the request is posted; await the Op to get the result and the buffers back"]
pub struct Op<R: Runtime, B: Buffers, O: Outcome> {
    qp: Arc<QpShared<R>>,
    queue: WorkQueue,
    slot: Option<SlotId>,
    early: Option<Error>,
    buffers: Option<B>,
    _outcome: PhantomData<fn() -> O>,
}

impl<R: Runtime, B: Buffers, O: Outcome> Op<R, B, O> {
    fn new(qp: &Arc<QpShared<R>>, queue: WorkQueue, posted: Result<SlotId>, buffers: B) -> Self {
        let (slot, early) = match posted {
            Ok(slot) => (Some(slot), None),
            Err(err) => (None, Some(err)),
        };
        Op {
            qp: qp.clone(),
            queue,
            slot,
            early,
            buffers: Some(buffers),
            _outcome: PhantomData,
        }
    }
}

impl<R: Runtime, B: Buffers, O: Outcome> Future for Op<R, B, O> {
    type Output = (Result<O::Output>, B);

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(err) = this.early.take() {
            return Poll::Ready((
                Err(err),
                this.buffers.take().expect("Op polled after completion"),
            ));
        }
        let id = this.slot.expect("Op polled after completion");
        let cq = match this.queue {
            WorkQueue::Send => &this.qp.send_cq,
            WorkQueue::Recv => &this.qp.recv_cq,
        };
        match cq.shared.poll_slot(id, cx) {
            Poll::Ready(result) => {
                this.slot = None;
                let buffers = this.buffers.take().expect("buffers stay until completion");
                let output = result.map(|info| O::output(received(info), &buffers));
                Poll::Ready((output, buffers))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<R: Runtime, B: Buffers, O: Outcome> Drop for Op<R, B, O> {
    fn drop(&mut self) {
        if let (Some(id), Some(buffers)) = (self.slot.take(), self.buffers.take()) {
            let cq = match self.queue {
                WorkQueue::Send => &self.qp.send_cq,
                WorkQueue::Recv => &self.qp.recv_cq,
            };
            cq.shared.abandon(id, Box::new(buffers));
        }
    }
}

fn received(info: WcInfo) -> Received {
    Received {
        len: info.byte_len as usize,
        imm: info.imm,
    }
}

/// A send-queue work request, before it is encoded.
#[derive(Debug, Clone, Copy)]
enum SendKind {
    Send {
        imm: Option<u32>,
    },
    Write {
        remote: RemoteRegion,
        imm: Option<u32>,
    },
    Read {
        remote: RemoteRegion,
    },
    CompareSwap {
        remote: RemoteRegion,
        compare: u64,
        swap: u64,
    },
    FetchAdd {
        remote: RemoteRegion,
        add: u64,
    },
}

impl SendKind {
    fn work_kind(self) -> WorkKind {
        match self {
            SendKind::Send { imm: None } => WorkKind::Send,
            SendKind::Send { imm: Some(_) } => WorkKind::SendWithImm,
            SendKind::Write { imm: None, .. } => WorkKind::Write,
            SendKind::Write { imm: Some(_), .. } => WorkKind::WriteWithImm,
            SendKind::Read { .. } => WorkKind::Read,
            SendKind::CompareSwap { .. } => WorkKind::CompareSwap,
            SendKind::FetchAdd { .. } => WorkKind::FetchAdd,
        }
    }

    fn remote(self) -> Option<RemoteRegion> {
        match self {
            SendKind::Send { .. } => None,
            SendKind::Write { remote, .. }
            | SendKind::Read { remote }
            | SendKind::CompareSwap { remote, .. }
            | SendKind::FetchAdd { remote, .. } => Some(remote),
        }
    }

    /// Checks the request against its remote region before anything is posted.
    fn validate(self, local_len: usize, sges: usize) -> Result<()> {
        match self {
            SendKind::Send { .. } => Ok(()),
            SendKind::Write { remote, .. } | SendKind::Read { remote } => {
                remote.check(0, local_len as u64)
            }
            SendKind::CompareSwap { remote, .. } | SendKind::FetchAdd { remote, .. } => {
                remote.check_atomic()?;
                if local_len != 8 || sges != 1 {
                    return Err(Error::Misaligned { addr: remote.addr });
                }
                Ok(())
            }
        }
    }

    /// Fills the opcode, flags and remote fields of `wr`.
    fn encode(self, wr: &mut ibv_send_wr, inline_ok: bool) {
        use ibv_wr_opcode as Opc;
        let mut flags = 0;
        match self {
            SendKind::Send { imm } => {
                wr.opcode = if imm.is_some() {
                    Opc::IBV_WR_SEND_WITH_IMM
                } else {
                    Opc::IBV_WR_SEND
                };
                if let Some(imm) = imm {
                    wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
                }
                if inline_ok {
                    flags |= ibv_send_flags::IBV_SEND_INLINE.0;
                }
            }
            SendKind::Write { remote, imm } => {
                wr.opcode = if imm.is_some() {
                    Opc::IBV_WR_RDMA_WRITE_WITH_IMM
                } else {
                    Opc::IBV_WR_RDMA_WRITE
                };
                if let Some(imm) = imm {
                    wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
                }
                wr.wr.rdma = rdma_t {
                    remote_addr: remote.addr,
                    rkey: remote.rkey,
                };
                if inline_ok {
                    flags |= ibv_send_flags::IBV_SEND_INLINE.0;
                }
            }
            SendKind::Read { remote } => {
                wr.opcode = Opc::IBV_WR_RDMA_READ;
                wr.wr.rdma = rdma_t {
                    remote_addr: remote.addr,
                    rkey: remote.rkey,
                };
            }
            SendKind::CompareSwap {
                remote,
                compare,
                swap,
            } => {
                wr.opcode = Opc::IBV_WR_ATOMIC_CMP_AND_SWP;
                wr.wr.atomic = atomic_t {
                    remote_addr: remote.addr,
                    compare_add: compare,
                    swap,
                    rkey: remote.rkey,
                };
            }
            SendKind::FetchAdd { remote, add } => {
                wr.opcode = Opc::IBV_WR_ATOMIC_FETCH_AND_ADD;
                wr.wr.atomic = atomic_t {
                    remote_addr: remote.addr,
                    compare_add: add,
                    swap: 0,
                    rkey: remote.rkey,
                };
            }
        }
        wr.send_flags |= flags;
    }
}

/// Scatter-gather entries of one work request, on the stack.
struct SgeList {
    sges: [ibv_sge; MAX_SGE],
    len: usize,
    total: usize,
}

impl SgeList {
    /// Collects the entries of `buffers`, checking their count and protection domain.
    fn collect<B: Buffers>(buffers: &B, max: u32, pd: *mut ibv_pd) -> Result<SgeList> {
        let mut list = SgeList {
            sges: [ibv_sge {
                addr: 0,
                length: 0,
                lkey: 0,
            }; MAX_SGE],
            len: 0,
            total: 0,
        };
        let mut count = 0usize;
        let mut foreign = false;
        buffers.for_each_buf(&mut |buf| {
            count += 1;
            foreign |= buf.pd_raw() != pd;
            if buf.is_empty() || list.len == MAX_SGE {
                return;
            }
            list.sges[list.len] = buf.sge();
            list.len += 1;
            list.total += buf.len();
        });
        if foreign {
            return Err(Error::InvalidArgument(
                "a buffer is registered in another protection domain than the queue pair's".into(),
            ));
        }
        if count > (max as usize).min(MAX_SGE) {
            return Err(Error::InvalidArgument(format!(
                "{count} scatter-gather entries, but the queue pair takes at most {}",
                (max as usize).min(MAX_SGE)
            )));
        }
        Ok(list)
    }

    fn entries(&mut self) -> (*mut ibv_sge, i32) {
        if self.len == 0 {
            (std::ptr::null_mut(), 0)
        } else {
            (self.sges.as_mut_ptr(), self.len as i32)
        }
    }
}

/// What a failed `ibv_post_*` means.
fn post_error(call: &'static str, rc: i32, queue: &'static str, depth: u32) -> Error {
    if rc == libc::ENOMEM {
        return Error::QueueFull { queue, depth };
    }
    Error::from_code(call, rc)
}

impl<R: Runtime> QpShared<R> {
    /// Fails fast when the QP is in error or not ready for `queue`.
    fn check_usable(&self, queue: WorkQueue) -> Result<()> {
        if let Some(cause) = self.status.failure.get() {
            return Err(Error::QpInError {
                qpn: self.status.qpn,
                cause: cause.clone(),
            });
        }
        if queue == WorkQueue::Send && !self.is_connected() {
            return Err(Error::NotConnected {
                qpn: self.status.qpn,
            });
        }
        Ok(())
    }

    /// Takes `wrs` entries of `queue`'s credits, or says it is full.
    fn take_credits(&self, queue: WorkQueue, wrs: u32) -> Result<()> {
        let (used, depth, name) = match queue {
            WorkQueue::Send => (&self.status.sq_used, self.caps.max_send_wr, "send queue"),
            WorkQueue::Recv => (&self.status.rq_used, self.caps.max_recv_wr, "receive queue"),
        };
        let before = used.fetch_add(wrs, Ordering::AcqRel);
        if before + wrs > depth {
            used.fetch_sub(wrs, Ordering::AcqRel);
            return Err(Error::QueueFull { queue: name, depth });
        }
        Ok(())
    }

    /// Reserves credits and a CQ slot for `wrs` work requests, runs `post`, and undoes the
    /// reservation if posting fails.
    fn post_with(
        &self,
        queue: WorkQueue,
        kind: WorkKind,
        remote: Option<RemoteRegion>,
        wrs: u32,
        post: impl FnOnce(SlotId) -> Result<()>,
    ) -> Result<SlotId> {
        self.check_usable(queue)?;
        self.take_credits(queue, wrs)?;
        let cq = match queue {
            WorkQueue::Send => &self.send_cq,
            WorkQueue::Recv => &self.recv_cq,
        };
        let info = SlotInfo {
            qp: self.status.clone(),
            kind,
            remote,
            queue,
            wrs,
        };
        let id = cq
            .shared
            .reserve(info)
            .inspect_err(|_| self.status.release(queue, wrs))?;
        post(id).inspect_err(|_| {
            cq.shared.unreserve(id);
            self.status.release(queue, wrs);
        })?;
        Ok(id)
    }

    fn post_send_one<B: Buffers>(&self, buffers: &B, kind: SendKind) -> Result<SlotId> {
        let mut sges = SgeList::collect(buffers, self.caps.max_send_sge, self.pd.raw())?;
        kind.validate(sges.total, sges.len)?;
        let inline_ok = sges.total > 0 && sges.total <= self.caps.max_inline_data as usize;
        self.post_with(WorkQueue::Send, kind.work_kind(), kind.remote(), 1, |id| {
            // SAFETY: ibv_send_wr is plain C data; zero is valid for the fields not set.
            let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
            wr.wr_id = id.wr_id(true);
            (wr.sg_list, wr.num_sge) = sges.entries();
            wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
            kind.encode(&mut wr, inline_ok);
            let mut bad = std::ptr::null_mut();
            // SAFETY: the QP is valid; `wr` and its SGE list live across the call; the
            // memory the SGEs name is owned by the Op (or its slot) until the completion.
            let rc = unsafe { ibv_post_send(self.raw(), &mut wr, &mut bad) };
            if rc != 0 {
                return Err(post_error(
                    "ibv_post_send",
                    rc,
                    "send queue",
                    self.caps.max_send_wr,
                ));
            }
            Ok(())
        })
    }

    fn post_recv_one<B: Buffers>(&self, buffers: &B) -> Result<SlotId> {
        let mut sges = SgeList::collect(buffers, self.caps.max_recv_sge, self.pd.raw())?;
        self.post_with(WorkQueue::Recv, WorkKind::Recv, None, 1, |id| {
            let (sg_list, num_sge) = sges.entries();
            let mut wr = ibv_recv_wr {
                wr_id: id.wr_id(true),
                next: std::ptr::null_mut(),
                sg_list,
                num_sge,
            };
            let mut bad = std::ptr::null_mut();
            // SAFETY: as in post_send_one.
            let rc = unsafe { ibv_post_recv(self.raw(), &mut wr, &mut bad) };
            if rc != 0 {
                return Err(post_error(
                    "ibv_post_recv",
                    rc,
                    "receive queue",
                    self.caps.max_recv_wr,
                ));
            }
            Ok(())
        })
    }
}

impl<R: Runtime> QueuePair<R> {
    fn send_op<B: Buffers, O: Outcome>(&self, buffers: B, kind: SendKind) -> Op<R, B, O> {
        let posted = self.shared.post_send_one(&buffers, kind);
        Op::new(&self.shared, WorkQueue::Send, posted, buffers)
    }

    /// Sends `buffers` as one message. Messages up to [`max_inline`](QueuePair::max_inline)
    /// bytes go inline.
    ///
    /// ```no_run
    /// # async fn demo<R: anyrdma_core::Runtime>(qp: anyrdma_core::QueuePair<R>, mut buf: anyrdma_core::LocalBuf) {
    /// buf[..5].copy_from_slice(b"hello");
    /// let (result, buf) = qp.send(buf).await;
    /// result.expect("the peer had a receive posted");
    /// # }
    /// ```
    pub fn send<B: Buffers>(&self, buffers: B) -> Op<R, B, Done> {
        self.send_op(buffers, SendKind::Send { imm: None })
    }

    /// Sends `buffers` with 32 bits of immediate data, delivered with the peer's receive.
    pub fn send_with_imm<B: Buffers>(&self, buffers: B, imm: u32) -> Op<R, B, Done> {
        self.send_op(buffers, SendKind::Send { imm: Some(imm) })
    }

    /// Posts a receive into `buffers` (scattered in order); resolves to the length and
    /// immediate data of the message that lands there.
    pub fn recv<B: Buffers>(&self, buffers: B) -> Op<R, B, Recv> {
        let posted = self.shared.post_recv_one(&buffers);
        Op::new(&self.shared, WorkQueue::Recv, posted, buffers)
    }

    /// Writes `buffers` to the start of `remote`. The length is checked against `remote`
    /// before posting: [`Error::OutOfBounds`] and nothing is sent when it does not fit.
    pub fn write<B: Buffers>(&self, buffers: B, remote: RemoteRegion) -> Op<R, B, Done> {
        self.send_op(buffers, SendKind::Write { remote, imm: None })
    }

    /// Writes like [`write`](QueuePair::write), then consumes one of the peer's receives
    /// to deliver `imm` (the peer's receive resolves with `len` 0... the written length and
    /// `imm`).
    pub fn write_with_imm<B: Buffers>(
        &self,
        buffers: B,
        remote: RemoteRegion,
        imm: u32,
    ) -> Op<R, B, Done> {
        self.send_op(
            buffers,
            SendKind::Write {
                remote,
                imm: Some(imm),
            },
        )
    }

    /// Reads the start of `remote` into `buffers` (as many bytes as they hold).
    pub fn read<B: Buffers>(&self, buffers: B, remote: RemoteRegion) -> Op<R, B, Done> {
        self.send_op(buffers, SendKind::Read { remote })
    }

    /// Atomically: if the 8-byte word at `remote` equals `compare`, replace it with `swap`.
    /// Resolves to the previous value (also left in `buf`, which must be 8 bytes).
    pub fn compare_and_swap(
        &self,
        buf: LocalBuf,
        remote: RemoteRegion,
        compare: u64,
        swap: u64,
    ) -> Op<R, LocalBuf, Atomic> {
        self.send_op(
            buf,
            SendKind::CompareSwap {
                remote,
                compare,
                swap,
            },
        )
    }

    /// Atomically adds `add` to the 8-byte word at `remote`; resolves to the previous value
    /// (also left in `buf`, which must be 8 bytes).
    pub fn fetch_and_add(
        &self,
        buf: LocalBuf,
        remote: RemoteRegion,
        add: u64,
    ) -> Op<R, LocalBuf, Atomic> {
        self.send_op(buf, SendKind::FetchAdd { remote, add })
    }

    /// Starts a batch: several send-queue work requests posted with one doorbell, of
    /// which only the last is signaled.
    ///
    /// ```no_run
    /// # async fn demo<R: anyrdma_core::Runtime>(qp: anyrdma_core::QueuePair<R>, a: anyrdma_core::LocalBuf, b: anyrdma_core::LocalBuf, r: anyrdma_core::RemoteRegion) {
    /// let (result, bufs) = qp.batch().write(a, r).send(b).submit().await;
    /// result.expect("every request of the batch succeeded");
    /// # }
    /// ```
    pub fn batch(&self) -> Batch<R> {
        Batch {
            qp: self.clone(),
            items: Vec::new(),
        }
    }
}

/// Send-queue work requests to post together: one `ibv_post_send`, one completion.
///
/// Every request but the last is unsignaled; the batch's buffers come back together when
/// the last one completes, which on a reliable connection means all of them did. If any
/// fails, the batch resolves to the first failure.
#[must_use = "nothing is posted until submit()"]
pub struct Batch<R: Runtime> {
    qp: QueuePair<R>,
    items: Vec<(LocalBuf, SendKind)>,
}

impl<R: Runtime> Batch<R> {
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
    pub fn submit(self) -> Op<R, Vec<LocalBuf>, Done> {
        let Batch { qp, items } = self;
        let shared = &qp.shared;
        let posted = Self::post(shared, &items);
        let buffers = items.into_iter().map(|(buf, _)| buf).collect();
        Op::new(shared, WorkQueue::Send, posted, buffers)
    }

    fn post(shared: &QpShared<R>, items: &[(LocalBuf, SendKind)]) -> Result<SlotId> {
        if items.is_empty() {
            return Err(Error::InvalidArgument("an empty batch".into()));
        }
        let pd = shared.pd.raw();
        let mut sges = Vec::with_capacity(items.len());
        for (buf, kind) in items {
            if buf.pd_raw() != pd {
                return Err(Error::InvalidArgument(
                    "a buffer is registered in another protection domain than the queue pair's"
                        .into(),
                ));
            }
            kind.validate(buf.len(), 1)?;
            sges.push(buf.sge());
        }
        let max_inline = shared.caps.max_inline_data as usize;
        let count = items.len() as u32;
        shared.post_with(WorkQueue::Send, WorkKind::Batch, None, count, |id| {
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
            for i in 0..last {
                let next: *mut ibv_send_wr = &mut wrs[i + 1];
                wrs[i].next = next;
            }
            let mut bad = std::ptr::null_mut();
            // SAFETY: the QP is valid; the WR chain and SGEs live across the call; the
            // buffers are owned by the Op (or its slot) until the last WR completes.
            let rc = unsafe { ibv_post_send(shared.raw(), wrs.as_mut_ptr(), &mut bad) };
            if rc == 0 {
                return Ok(());
            }
            if bad != wrs.as_mut_ptr() {
                // Part of the chain is on the wire, unsignaled: only destroying the queue
                // pair makes its buffers safe to release. Fail the QP so that happens.
                let err = post_error("ibv_post_send", rc, "send queue", shared.caps.max_send_wr);
                let _ = shared
                    .status
                    .failure
                    .set(Arc::new(Error::InvalidArgument(format!(
                        "a batch was posted only in part ({err})"
                    ))));
                return Err(err);
            }
            Err(post_error(
                "ibv_post_send",
                rc,
                "send queue",
                shared.caps.max_send_wr,
            ))
        })
    }
}
