//! Operations in flight, as futures.
//!
//! Every operation posts its work request when it is called and returns an [`Op`]: a
//! future that resolves, when the work completion arrives, to the result and the buffers it
//! took. Dropping an `Op` early never frees or exposes memory the NIC may still touch: the
//! buffers wait in the completion queue's slot until the completion (success, error or
//! flush) arrives, then they are released.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use crate::buffers::{sealed, Buffers};
use crate::cq::CqShared;
use crate::error::{Error, Result};
use crate::qp::QpShared;
use crate::queue::PostedSlot;
use crate::slots::{SlotId, SlotResult, WcInfo};
use crate::srq::SrqShared;

/// What a receive reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes placed in the receive buffers, from their start: the message's length for a
    /// send, and 0 for a write with immediate (its data went to the written region, not here).
    pub len: usize,
    /// Immediate data sent with the message, if any.
    pub imm: Option<u32>,
    /// What the peer did to complete this receive.
    pub kind: MessageKind,
}

/// The peer operation that consumed a receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A send: its bytes are in the receive buffers.
    Send,
    /// A send with immediate data: its bytes are in the receive buffers, the immediate in
    /// [`Received::imm`].
    SendWithImm,
    /// An RDMA write with immediate data: its bytes went to the written region; the receive
    /// carries only the immediate.
    WriteWithImm,
}

/// A successful work completion as an [`Outcome`] reads it (nothing of it is public).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Completion(pub(crate) WcInfo);

impl Completion {
    /// What a receive reports of it.
    pub(crate) fn received(self) -> Received {
        received(self.0)
    }
}

/// How an operation turns its completion into its output.
pub trait Outcome: sealed::Sealed + Send + 'static {
    /// The output on success.
    type Output;
    #[doc(hidden)]
    fn output<B: Buffers>(completion: Completion, buffers: &B) -> Self::Output;
}

/// Output of operations that report nothing but success.
#[derive(Debug)]
pub enum Done {}
impl sealed::Sealed for Done {}
impl Outcome for Done {
    type Output = ();
    fn output<B: Buffers>(_: Completion, _: &B) {}
}

/// Output of receives.
#[derive(Debug)]
pub enum Recv {}
impl sealed::Sealed for Recv {}
impl Outcome for Recv {
    type Output = Received;
    fn output<B: Buffers>(completion: Completion, _: &B) -> Received {
        completion.received()
    }
}

/// Output of atomics: the value the remote word held before.
#[derive(Debug)]
pub enum Atomic {}
impl sealed::Sealed for Atomic {}
impl Outcome for Atomic {
    type Output = u64;
    fn output<B: Buffers>(_: Completion, buffers: &B) -> u64 {
        // The operation checked that the buffers are 8 bytes, in one or more pieces.
        let mut bytes = [0u8; 8];
        let mut at = 0;
        buffers.for_each_piece(&mut |piece| {
            let end = (at + piece.len()).min(8);
            piece.copy_out(&mut bytes[at..end]);
            at = end;
        });
        u64::from_ne_bytes(bytes)
    }
}

/// The queue an operation was posted on: keeps it (and so its completion queue) alive.
pub(crate) enum Owner {
    /// The send queue of a queue pair.
    Send(Arc<QpShared>),
    /// The receive queue of a queue pair.
    Recv(Arc<QpShared>),
    /// A shared receive queue.
    Srq(Arc<SrqShared>),
}

impl Owner {
    fn cq(&self) -> &CqShared {
        match self {
            Owner::Send(qp) => &qp.send_cq.shared,
            Owner::Recv(qp) => &qp.recv_cq.shared,
            Owner::Srq(srq) => &srq.cq.shared,
        }
    }
}

/// An operation in flight: resolves to `(result, buffers)`.
///
/// The work request is already posted when the `Op` exists, so several can be in flight
/// from one task. Dropping it cancels nothing on the wire: it only gives up the result, and
/// the buffers are released once the device is done with them.
#[must_use = "the request is posted; await the Op to get the result and the buffers back"]
pub struct Op<B: Buffers, O: Outcome> {
    owner: Owner,
    slot: Option<SlotId>,
    /// Boxed: a failure before posting is rare, and the future stays small.
    early: Option<Box<Error>>,
    buffers: Option<B>,
    /// For an unsignaled send-queue request: its sequence number, until a signaled request
    /// after it is known to be posted (see [`crate::signaling`]).
    unsignaled_seq: Option<u64>,
    _outcome: PhantomData<fn() -> O>,
}

impl<B: Buffers, O: Outcome> Op<B, O> {
    #[inline]
    pub(crate) fn new(owner: Owner, posted: Result<SlotId>, buffers: B) -> Self {
        match posted {
            Ok(id) => Self::with(owner, Some(id), None, None, buffers),
            Err(err) => Self::with(owner, None, Some(Box::new(err)), None, buffers),
        }
    }

    /// The operation of a send-queue post: an unsignaled one remembers its place.
    #[inline]
    pub(crate) fn posted(owner: Owner, posted: Result<PostedSlot>, buffers: B) -> Self {
        match posted {
            Ok(PostedSlot { id, placement }) => {
                let unsignaled_seq = placement
                    .filter(|placement| !placement.signaled)
                    .map(|placement| placement.seq);
                Self::with(owner, Some(id), None, unsignaled_seq, buffers)
            }
            Err(err) => Self::new(owner, Err(err), buffers),
        }
    }

    #[inline]
    fn with(
        owner: Owner,
        slot: Option<SlotId>,
        early: Option<Box<Error>>,
        unsignaled_seq: Option<u64>,
        buffers: B,
    ) -> Self {
        Op {
            owner,
            slot,
            early,
            buffers: Some(buffers),
            unsignaled_seq,
            _outcome: PhantomData,
        }
    }

    /// The error that kept the operation from being posted, if one did (the `Op` is then
    /// spent: its buffers go when it is dropped).
    pub(crate) fn take_early_error(&mut self) -> Option<Error> {
        self.early.take().map(|err| *err)
    }

    /// The outcome, if it is already known (the operation failed before posting, or a poll
    /// of the CQ by another operation delivered its completion); `None` while it is in
    /// flight. Never polls the CQ or registers a waker; after `Some`, the `Op` is spent.
    pub(crate) fn take_if_done(&mut self) -> Option<(Result<O::Output>, B)> {
        if let Some(err) = self.early.take() {
            return Some((Err(*err), self.buffers.take()?));
        }
        let result = self.owner.cq().take_if_done(self.slot?)?;
        self.finished(result)
    }

    /// The task of `waker` no longer polls this operation: if the operation would wake it,
    /// it forgets it (for operations that several tasks poll: see the messenger's `waiting`
    /// module). The operation goes on; whoever polls it next registers anew.
    pub(crate) fn stop_waiting(&self, waker: &std::task::Waker) {
        if let Some(id) = self.slot {
            self.owner.cq().stop_waiting(id, waker);
        }
    }

    /// The slot's result is taken: the operation's output and its buffers (`None` only if
    /// they were already handed out).
    #[inline]
    fn finished(&mut self, result: SlotResult) -> Option<(Result<O::Output>, B)> {
        self.slot = None;
        let buffers = self.buffers.take()?;
        let output = match result {
            Ok(info) => Ok(O::output(Completion(info), &buffers)),
            Err(err) => Err(*err),
        };
        Some((output, buffers))
    }
}

impl<B: Buffers, O: Outcome> Future for Op<B, O> {
    type Output = (Result<O::Output>, B);

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(err) = this.early.take() {
            return Poll::Ready((
                Err(*err),
                this.buffers.take().expect("Op polled after completion"),
            ));
        }
        let id = this.slot.expect("Op polled after completion");
        let mut fence_refused = false;
        if let (Some(seq), Owner::Send(qp)) = (this.unsignaled_seq, &this.owner) {
            if qp.status.signaling.covered(seq) || qp.post_fence().is_ok() {
                // A signaled request follows this one (or the fence just posted): its
                // completion covers this one.
                this.unsignaled_seq = None;
            } else {
                // No room for the fence (a full send queue or CQ). Polling below takes
                // completions, which make room; then the fence is tried again. (A failed
                // queue pair flushes this request instead.)
                fence_refused = qp.status.failure.get().is_none();
            }
        }
        match this.owner.cq().poll_slot(id, cx) {
            Poll::Ready(result) => Poll::Ready(
                this.finished(result)
                    .expect("buffers stay until completion"),
            ),
            Poll::Pending => {
                if fence_refused {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }
}

impl<B: Buffers, O: Outcome> Drop for Op<B, O> {
    fn drop(&mut self) {
        if let (Some(id), Some(buffers)) = (self.slot.take(), self.buffers.take()) {
            self.owner.cq().abandon(id, Box::new(buffers));
            // An unsignaled request with nothing signaled after it would keep its buffers
            // until the queue's next signaled request: a fence makes that now. (Posting does
            // not block; if it fails, the queue pair failed and flushes everything anyway.)
            if let (Some(seq), Owner::Send(qp)) = (self.unsignaled_seq, &self.owner) {
                if !qp.status.signaling.covered(seq) {
                    let _ = qp.post_fence();
                }
            }
        }
    }
}

fn received(info: WcInfo) -> Received {
    // For a write with immediate, byte_len is the write's length (rxe, mlx5): nothing of it
    // is in the receive buffers.
    let (len, kind) = match (info.write_with_imm(), info.imm()) {
        (true, _) => (0, MessageKind::WriteWithImm),
        (false, Some(_)) => (info.byte_len as usize, MessageKind::SendWithImm),
        (false, None) => (info.byte_len as usize, MessageKind::Send),
    };
    Received {
        len,
        imm: info.imm(),
        kind,
    }
}
