//! Send-queue operations of a queue pair: send, RDMA write and read, atomics.

use rdma_sys::*;

use crate::batch::Batch;
use crate::buffers::{Buffers, SgeList};
use crate::error::{Error, Result};
use crate::mr::LocalBuf;
use crate::op::{Atomic, Done, Op, Outcome, Owner, Recv};
use crate::qp::{QpShared, QueuePair};
use crate::queue::PostedSlot;
use crate::remote::RemoteRegion;
use crate::signaling::Signal;
use crate::stats::QpCounters;
use crate::wc::WorkKind;

/// A send-queue work request, before it is encoded.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SendKind {
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
    pub(crate) fn work_kind(self) -> WorkKind {
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

    pub(crate) fn remote(self) -> Option<RemoteRegion> {
        match self {
            SendKind::Send { .. } => None,
            SendKind::Write { remote, .. }
            | SendKind::Read { remote }
            | SendKind::CompareSwap { remote, .. }
            | SendKind::FetchAdd { remote, .. } => Some(remote),
        }
    }

    /// Checks the request before anything is posted: against its remote region, and for
    /// atomics against the device (`device` is its name, `atomics` whether it has them) and
    /// the local buffer's length.
    pub(crate) fn validate(self, local_len: usize, device: &str, atomics: bool) -> Result<()> {
        match self {
            SendKind::Send { .. } => Ok(()),
            SendKind::Write { remote, .. } | SendKind::Read { remote } => {
                remote.check(0, local_len as u64)
            }
            SendKind::CompareSwap { remote, .. } | SendKind::FetchAdd { remote, .. } => {
                if !atomics {
                    return Err(Error::AtomicsUnsupported {
                        device: device.to_owned(),
                    });
                }
                remote.check_atomic()?;
                if local_len != 8 {
                    return Err(Error::AtomicBufferLen { len: local_len });
                }
                Ok(())
            }
        }
    }

    /// Counts the `bytes` of a posted request of this kind in `counters`. Called from inside
    /// the send-queue post, under the queue's signaling lock (see [`QpCounters`]).
    #[inline]
    pub(crate) fn count_posted(self, counters: &QpCounters, bytes: usize) {
        let bytes = bytes as u64;
        match self {
            SendKind::Send { .. } => counters.bytes_sent.add_exclusive(bytes),
            SendKind::Write { .. } => counters.bytes_written.add_exclusive(bytes),
            SendKind::Read { .. } => counters.bytes_read.add_exclusive(bytes),
            SendKind::CompareSwap { .. } | SendKind::FetchAdd { .. } => {}
        }
    }

    /// Fills the opcode, flags and remote fields of `wr`.
    pub(crate) fn encode(self, wr: &mut ibv_send_wr, inline_ok: bool) {
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

impl QpShared {
    fn post_send_one<B: Buffers>(&self, buffers: &B, kind: SendKind) -> Result<PostedSlot> {
        let mut sges = SgeList::new();
        sges.collect(buffers, self.caps.max_send_sge, self.pd.raw())?;
        let ctx = self.pd.context();
        kind.validate(sges.total, ctx.device_name(), ctx.limits().atomics)?;
        let inline_ok = sges.total > 0 && sges.total <= self.caps.max_inline_data as usize;
        self.send_queue()?.post(
            kind.work_kind(),
            kind.remote(),
            1,
            Signal::Selective,
            |id, signaled| {
                // SAFETY: ibv_send_wr is plain C data; zero is valid for the fields not set.
                let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
                wr.wr_id = id.wr_id(true);
                (wr.sg_list, wr.num_sge) = sges.entries();
                if signaled {
                    wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
                }
                kind.encode(&mut wr, inline_ok);
                let mut bad = std::ptr::null_mut();
                // SAFETY: the QP is valid; `wr` and its SGE list live across the call; the
                // memory the SGEs name is owned by the Op (or its slot) until the completion
                // that covers it (its own, or a later signaled request's).
                let rc = unsafe { ibv_post_send(self.raw(), &mut wr, &mut bad) };
                if rc == 0 {
                    kind.count_posted(&self.status.counters, sges.total);
                }
                rc
            },
        )
    }

    /// Posts a fence: a signaled zero-length RDMA write, whose completion covers every
    /// unsignaled request before it (see [`crate::signaling`]). Its slot holds no buffers
    /// and is freed when it completes.
    pub(crate) fn post_fence(&self) -> Result<()> {
        if let Some(datagram) = &self.datagram {
            return self.post_datagram_fence(datagram);
        }
        let posted =
            self.send_queue()?
                .post(WorkKind::Write, None, 1, Signal::Fence, |id, _| {
                    // SAFETY: ibv_send_wr is plain C data; zero is valid for the fields not set:
                    // no SGE, remote address and key 0 (not checked for a zero-length write).
                    let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
                    wr.wr_id = id.wr_id(true);
                    wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE;
                    wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
                    let mut bad = std::ptr::null_mut();
                    // SAFETY: the QP is valid; `wr` lives across the call and names no memory.
                    unsafe { ibv_post_send(self.raw(), &mut wr, &mut bad) }
                })?;
        self.send_cq.shared.abandon(posted.id, Box::new(()));
        self.status.counters.fences.add(1);
        Ok(())
    }
}

impl QueuePair {
    fn send_op<B: Buffers, O: Outcome>(&self, buffers: B, kind: SendKind) -> Op<B, O> {
        let posted = self.shared.post_send_one(&buffers, kind);
        Op::posted(Owner::Send(self.shared.clone()), posted, buffers)
    }

    /// Sends `buffers` as one message. Messages up to [`max_inline`](QueuePair::max_inline)
    /// bytes go inline.
    ///
    /// ```no_run
    /// # async fn demo(qp: anyrdma_core::QueuePair, mut buf: anyrdma_core::LocalBuf) {
    /// buf[..5].copy_from_slice(b"hello");
    /// let (result, buf) = qp.send(buf).await;
    /// result.expect("the peer had a receive posted");
    /// # }
    /// ```
    pub fn send<B: Buffers>(&self, buffers: B) -> Op<B, Done> {
        self.send_op(buffers, SendKind::Send { imm: None })
    }

    /// Sends `buffers` with 32 bits of immediate data, delivered with the peer's receive.
    pub fn send_with_imm<B: Buffers>(&self, buffers: B, imm: u32) -> Op<B, Done> {
        self.send_op(buffers, SendKind::Send { imm: Some(imm) })
    }

    /// Posts a receive into `buffers` (scattered in order); resolves to the length and
    /// immediate data of the message that lands there.
    pub fn recv<B: Buffers>(&self, buffers: B) -> Op<B, Recv> {
        let posted = match &self.shared.srq {
            Some(_) => Err(Error::InvalidArgument(
                "this queue pair takes its receives from a shared receive queue: post them \
                 there; nothing was posted"
                    .into(),
            )),
            None => self.shared.recv_queue().and_then(|queue| {
                queue.post_recv(
                    &buffers,
                    self.shared.caps.max_recv_sge,
                    self.shared.pd.raw(),
                    |wr, bad| {
                        // SAFETY: the QP is valid; `wr` and its SGEs live across the call; the
                        // memory they name is owned by the Op (or its slot) until the completion.
                        unsafe { ibv_post_recv(self.shared.raw(), wr, bad) }
                    },
                )
            }),
        };
        Op::new(Owner::Recv(self.shared.clone()), posted, buffers)
    }

    /// Writes `buffers` to the start of `remote`. The length is checked against `remote`
    /// before posting: [`Error::OutOfBounds`] and nothing is sent when it does not fit.
    pub fn write<B: Buffers>(&self, buffers: B, remote: RemoteRegion) -> Op<B, Done> {
        self.send_op(buffers, SendKind::Write { remote, imm: None })
    }

    /// Writes like [`write`](QueuePair::write), then consumes one of the peer's posted
    /// receives to deliver `imm`: the peer learns that the data is there without polling
    /// memory. The receive's buffer is left untouched.
    pub fn write_with_imm<B: Buffers>(
        &self,
        buffers: B,
        remote: RemoteRegion,
        imm: u32,
    ) -> Op<B, Done> {
        self.send_op(
            buffers,
            SendKind::Write {
                remote,
                imm: Some(imm),
            },
        )
    }

    /// Reads the start of `remote` into `buffers` (as many bytes as they hold).
    pub fn read<B: Buffers>(&self, buffers: B, remote: RemoteRegion) -> Op<B, Done> {
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
    ) -> Op<LocalBuf, Atomic> {
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
    ) -> Op<LocalBuf, Atomic> {
        self.send_op(buf, SendKind::FetchAdd { remote, add })
    }

    /// Starts a batch: several send-queue work requests posted with one doorbell, of
    /// which only the last is signaled.
    ///
    /// ```no_run
    /// # async fn demo(qp: anyrdma_core::QueuePair, a: anyrdma_core::LocalBuf, b: anyrdma_core::LocalBuf, r: anyrdma_core::RemoteRegion) {
    /// let (result, bufs) = qp.batch().write(a, r).send(b).submit().await;
    /// result.expect("every request of the batch succeeded");
    /// # }
    /// ```
    pub fn batch(&self) -> Batch {
        Batch::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REMOTE: RemoteRegion = RemoteRegion {
        addr: 4096,
        len: 64,
        rkey: 1,
    };

    fn atomics() -> [SendKind; 2] {
        [
            SendKind::FetchAdd {
                remote: REMOTE,
                add: 1,
            },
            SendKind::CompareSwap {
                remote: REMOTE,
                compare: 0,
                swap: 1,
            },
        ]
    }

    #[test]
    fn atomic_local_buffer_must_be_8_bytes() {
        for kind in atomics() {
            assert!(kind.validate(8, "dev0", true).is_ok());
            for len in [0, 4, 7, 9, 16] {
                let err = kind.validate(len, "dev0", true).unwrap_err();
                assert!(
                    matches!(err, Error::AtomicBufferLen { len: l } if l == len),
                    "{len}: {err:?}"
                );
                assert!(err.to_string().contains("exactly 8 bytes"), "{err}");
            }
        }
    }

    #[test]
    fn atomics_on_a_device_without_them_are_refused() {
        for kind in atomics() {
            let err = kind.validate(8, "dev0", false).unwrap_err();
            assert!(
                matches!(&err, Error::AtomicsUnsupported { device } if device == "dev0"),
                "{err:?}"
            );
            assert!(err.to_string().contains("dev0"), "{err}");
        }
        // Other operations do not need atomics.
        let write = SendKind::Write {
            remote: REMOTE,
            imm: None,
        };
        assert!(write.validate(8, "dev0", false).is_ok());
        assert!(SendKind::Send { imm: None }
            .validate(8, "dev0", false)
            .is_ok());
    }
}
