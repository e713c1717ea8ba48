//! Reliable connected queue pairs: creation, endpoints, and the RESET→INIT→RTR→RTS path.

use std::hash::{BuildHasher, Hasher};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use rdma_sys::*;

use crate::context::mtu_enum;
use crate::cq::CompletionQueue;
use crate::endpoint::Endpoint;
use crate::error::{Error, QpShutdownReason, Result};
use crate::pd::ProtectionDomain;
use crate::queue::WorkQueueRef;
use crate::slots::{QpStatus, WorkQueue};
use crate::srq::SharedReceiveQueue;
use crate::stats::QpStats;

/// Sizes of a queue pair; each is capped at what the device allows.
#[derive(Debug, Clone, Copy)]
pub struct QpOptions {
    /// Depth of the send queue.
    pub max_send_wr: u32,
    /// Depth of the receive queue.
    pub max_recv_wr: u32,
    /// Scatter-gather entries per send, write, read or atomic.
    pub max_send_sge: u32,
    /// Scatter-gather entries per receive.
    pub max_recv_sge: u32,
    /// Sends and writes up to this many bytes are copied into the work request (inline),
    /// which saves the device a DMA read.
    pub max_inline: u32,
    /// While the send queue is busy, at least every this many requests ask the device for a
    /// completion; the others resolve with the next one that does (an idle queue's request
    /// always has its own). 1 signals every request. Default 16. See
    /// [selective signaling](crate::signaling).
    pub signal_every: u32,
}

impl Default for QpOptions {
    fn default() -> Self {
        QpOptions {
            max_send_wr: 256,
            max_recv_wr: 256,
            max_send_sge: 4,
            max_recv_sge: 4,
            max_inline: 64,
            signal_every: 16,
        }
    }
}

/// Transport parameters used by [`QueuePair::connect`].
///
/// # A peer that is gone
/// Reliable connected transport has no keepalive. A peer that died (its process killed, its
/// machine down, its queue pair destroyed), or one that never existed (a wrong queue pair
/// number), shows only when this side sends, writes, reads or uses an atomic and no
/// acknowledgement comes back: the request is sent again every `timeout` until `retry_cnt`
/// retries are spent, then it fails with
/// [`WcStatus::RETRY_EXC_ERR`](crate::WcStatus::RETRY_EXC_ERR), the queue pair goes to the
/// error state and everything else pending on it, receives too, is flushed. A queue pair that
/// only waits for receives waits until then, so post a send or a write to find out. With the
/// defaults that takes 7 tries of at least 67 ms each: about half a second.
///
/// # Ranges
/// The transport carries these values in 3 or 5 bits. [`QueuePair::connect`] refuses a value
/// outside its range with [`Error::OptionOutOfRange`] rather than clamping it, since a clamped
/// count can turn into the one value that means "forever".
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// Local ACK timeout: how long a request waits for its acknowledgement before it is sent
    /// again, as the exponent of the verbs encoding: at least 4.096 µs × 2^timeout (a device
    /// may round it up). 0-31. Default 14: about 67 ms per try (12: 17 ms, 18: 1.07 s).
    ///
    /// 0 disables the timer: a lost packet or a dead peer is then never detected, and an
    /// operation to such a peer never completes. Use it only to debug.
    pub timeout: u8,
    /// Transport retries: how many times a request is sent again after its timeout expired
    /// (or after the peer reported a lost packet) before it fails with `RETRY_EXC_ERR`. 0-7.
    /// Default 6: a peer that is gone is detected after 7 tries, about 7 × 67 ms ≈ 0.47 s
    /// with the default `timeout`.
    ///
    /// 7 is accepted: by the InfiniBand specification it is a plain count of 7 (unlike
    /// `rnr_retry`, this counter has no "infinite" value), and hardware NICs such as mlx5
    /// count it so. Soft-RoCE (rxe), however, treats 7 as "retry forever": there a dead or
    /// wrong peer is never detected and the operation never completes. Portable code uses 6
    /// at most.
    pub retry_cnt: u8,
    /// Receiver-not-ready retries: how many times a send (or a write with immediate) is sent
    /// again after the peer answered that it had no receive posted, before it fails with
    /// `RNR_RETRY_EXC_ERR`. 0-7; by the specification 7 means retry forever, on every device,
    /// which hangs a send to a peer that never posts a receive. Each retry waits the delay
    /// the peer asks for (its `min_rnr_timer`). Default 6: with the peer's default timer, a
    /// send fails after about 6 × 1.28 ms ≈ 8 ms without a receive; a peer that posts its
    /// receives late should raise its `min_rnr_timer`.
    pub rnr_retry: u8,
    /// The delay this side asks a sender to wait before it retries a send that found no
    /// receive posted, in the verbs encoding (0-31, not linear): 1 = 0.01 ms, 12 = 0.64 ms,
    /// 14 = 1.28 ms (the default), 18 = 5.12 ms, 22 = 20.48 ms, 26 = 81.92 ms,
    /// 31 = 491.52 ms, and 0 = 655.36 ms.
    pub min_rnr_timer: u8,
    /// Outstanding RDMA reads and atomics, each way (capped at the device's limit).
    pub max_rd_atomic: u8,
    /// Path MTU in bytes; default: the smaller of the two ports' active MTUs.
    pub mtu: Option<u32>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: 14,
            // Not 7: finite on every device (see the field's documentation).
            retry_cnt: 6,
            rnr_retry: 6,
            min_rnr_timer: 14,
            max_rd_atomic: 16,
            mtu: None,
        }
    }
}

impl ConnectOptions {
    /// Checks that every field fits the bits the transport carries it in.
    pub(crate) fn check(&self) -> Result<()> {
        let fields = [
            ("ConnectOptions::timeout", self.timeout, 31),
            ("ConnectOptions::retry_cnt", self.retry_cnt, 7),
            ("ConnectOptions::rnr_retry", self.rnr_retry, 7),
            ("ConnectOptions::min_rnr_timer", self.min_rnr_timer, 31),
        ];
        for (option, value, max) in fields {
            check_option(option, value, max)?;
        }
        Ok(())
    }
}

/// `Err(OptionOutOfRange)` when option `option`'s `value` is above `max` (the bits the
/// device or the transport carries it in).
pub(crate) fn check_option<T: Into<u64> + PartialOrd>(
    option: &'static str,
    value: T,
    max: T,
) -> Result<()> {
    if value > max {
        return Err(Error::OptionOutOfRange {
            option,
            value: value.into(),
            max: max.into(),
        });
    }
    Ok(())
}

/// Whether RESET and destroy drop the queue pair's completions still in its CQs, as libmlx5
/// does (see [`QueuePair::emulate_cq_clean_on_reset`]).
static EMULATE_CQ_CLEAN: AtomicBool = AtomicBool::new(false);

/// Where a queue pair is in its life.
const STATE_INIT: u8 = 0;
const STATE_RTS: u8 = 2;

/// A reliable connected queue pair (see [`Context`](crate::Context) for the runtime it waits with).
///
/// Cheap to clone. It keeps its protection domain and completion queues alive.
///
/// # Teardown
/// The last clone (and the last pending operation) to go moves it to the error state if
/// work is pending, drains its completion queues (so that a completion already there reaches
/// its operation: mlx5 removes a destroyed queue pair's completions), destroys it, and only
/// then releases the buffers its dropped operations left behind. Nothing in this blocks for
/// long: `ibv_destroy_qp` is one system call, which waits only for the acknowledgement of the
/// queue pair's asynchronous events, and anyrdma acknowledges each as soon as it reads it. A
/// queue pair on a shared receive queue is instead kept by that queue until the device
/// reports that it takes no more receives from it (see
/// [`SharedReceiveQueue::retiring`](crate::SharedReceiveQueue::retiring)). If the device
/// refuses to destroy it, its buffers, completion queues and protection domain are leaked,
/// never freed (and reported through `tracing` with that feature).
///
/// ```no_run
/// # fn demo(peer: anyrdma_core::Endpoint) -> anyrdma_core::Result<()> {
/// use anyrdma_core::*;
/// let ctx = Context::open_default()?;
/// let pd = ctx.alloc_pd()?;
/// let cq = CompletionQueue::new(&ctx, CqOptions::default())?;
/// let qp = QueuePair::new(&pd, &cq, &cq, QpOptions::default())?;
/// let mine = qp.endpoint(); // send this to the peer, receive `peer`
/// qp.connect(&peer, ConnectOptions::default())?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct QueuePair {
    pub(crate) shared: Arc<QpShared>,
}

pub(crate) struct QpShared {
    raw: NonNull<ibv_qp>,
    pub(crate) status: Arc<QpStatus>,
    pub(crate) pd: ProtectionDomain,
    pub(crate) send_cq: CompletionQueue,
    pub(crate) recv_cq: CompletionQueue,
    pub(crate) caps: ibv_qp_cap,
    /// The shared receive queue its receives come from, if any.
    pub(crate) srq: Option<SharedReceiveQueue>,
    state: AtomicU8,
    psn: u32,
    /// Set when the device reports the last receive this queue pair takes from its shared
    /// receive queue (`IBV_EVENT_QP_LAST_WQE_REACHED`).
    last_wqe_reached: std::sync::atomic::AtomicBool,
    /// For an unreliable datagram queue pair, its Q_Key and what its fences are sent to.
    pub(crate) datagram: Option<crate::ud::DatagramQp>,
}

// SAFETY: libibverbs QPs are thread-safe (posting and modifying from any thread); the
// pointer stays valid until QpShared drops.
unsafe impl Send for QpShared {}
// SAFETY: as above.
unsafe impl Sync for QpShared {}

impl QueuePair {
    /// Creates a reliable connected queue pair and moves it to INIT, so receives can be
    /// posted before [`connect`](QueuePair::connect).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the CQs belong to another device; [`Error::Verbs`]
    /// when the device refuses the sizes.
    pub fn new(
        pd: &ProtectionDomain,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        options: QpOptions,
    ) -> Result<QueuePair> {
        Self::create(pd, send_cq, recv_cq, None, options, None)
    }

    /// Creates a reliable connected queue pair that takes its receives from `srq`; its
    /// receive completions arrive on the SRQ's completion queue.
    ///
    /// # Errors
    /// As [`QueuePair::new`].
    pub fn with_srq(
        pd: &ProtectionDomain,
        send_cq: &CompletionQueue,
        srq: &SharedReceiveQueue,
        options: QpOptions,
    ) -> Result<QueuePair> {
        Self::create(pd, send_cq, srq.cq(), Some(srq), options, None)
    }

    /// Creates an unreliable datagram queue pair and moves it to RTS: a datagram queue pair
    /// has no peer, so nothing is left to connect (see [`crate::ud`]).
    pub(crate) fn new_datagram(
        pd: &ProtectionDomain,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        srq: Option<&SharedReceiveQueue>,
        options: QpOptions,
        datagram: crate::ud::DatagramQp,
    ) -> Result<QueuePair> {
        let recv_cq = srq.map_or(recv_cq, |srq| srq.cq());
        let qp = Self::create(pd, send_cq, recv_cq, srq, options, Some(datagram))?;
        use ibv_qp_attr_mask as M;
        // SAFETY: ibv_qp_attr is plain C data.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_RTR;
        qp.shared.modify(&mut attr, M::IBV_QP_STATE, "RTR")?;
        // SAFETY: ibv_qp_attr is plain C data.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_RTS;
        attr.sq_psn = qp.shared.psn;
        qp.shared
            .modify(&mut attr, M::IBV_QP_STATE | M::IBV_QP_SQ_PSN, "RTS")?;
        qp.shared.mark_connected();
        Ok(qp)
    }

    fn create(
        pd: &ProtectionDomain,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        srq: Option<&SharedReceiveQueue>,
        options: QpOptions,
        datagram: Option<crate::ud::DatagramQp>,
    ) -> Result<QueuePair> {
        let ctx = pd.context();
        send_cq.check_device(pd)?;
        recv_cq.check_device(pd)?;
        let limits = ctx.limits();
        let cap = ibv_qp_cap {
            max_send_wr: options.max_send_wr.clamp(1, limits.max_qp_wr.max(1)),
            max_recv_wr: options.max_recv_wr.clamp(1, limits.max_qp_wr.max(1)),
            max_send_sge: options.max_send_sge.clamp(1, limits.max_sge.max(1)),
            max_recv_sge: options.max_recv_sge.clamp(1, limits.max_sge.max(1)),
            max_inline_data: options.max_inline,
        };
        // SAFETY: ibv_qp_init_attr is plain C data; zero is valid for the fields not set.
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = send_cq.shared.raw();
        init.recv_cq = recv_cq.shared.raw();
        init.cap = cap;
        init.qp_type = if datagram.is_some() {
            ibv_qp_type::IBV_QPT_UD
        } else {
            ibv_qp_type::IBV_QPT_RC
        };
        if let Some(srq) = srq {
            init.srq = srq.raw();
        }
        // SAFETY: PD and CQs are valid and outlive the QP (QpShared holds them).
        let raw = unsafe { ibv_create_qp(pd.raw(), &mut init) };
        let raw = NonNull::new(raw).ok_or_else(|| {
            Error::last_os("ibv_create_qp")
                .with_hint("the requested queue depths, SGE counts or inline size may exceed the device's limits")
        })?;
        // SAFETY: `raw` is the QP just created.
        let qpn = unsafe { (*raw.as_ptr()).qp_num };
        let qkey = datagram.as_ref().map(|datagram| datagram.qkey);
        let shared = QpShared {
            raw,
            status: QpStatus::for_qp(qpn, options.signal_every),
            pd: pd.clone(),
            send_cq: send_cq.clone(),
            recv_cq: recv_cq.clone(),
            // ibv_create_qp writes back the capabilities actually granted.
            caps: init.cap,
            srq: srq.cloned(),
            state: AtomicU8::new(STATE_INIT),
            psn: random_psn(qpn),
            last_wqe_reached: std::sync::atomic::AtomicBool::new(false),
            datagram,
        };
        // SAFETY: ibv_qp_attr is plain C data.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_INIT;
        attr.pkey_index = 0;
        attr.port_num = ctx.port();
        attr.qp_access_flags = (ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_READ
            | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_ATOMIC)
            .0;
        use ibv_qp_attr_mask as M;
        // A datagram queue pair has a Q_Key instead of remote access rights (it takes no
        // RDMA requests).
        let fourth = match qkey {
            Some(qkey) => {
                attr.qkey = qkey;
                M::IBV_QP_QKEY
            }
            None => M::IBV_QP_ACCESS_FLAGS,
        };
        shared.modify(
            &mut attr,
            M::IBV_QP_STATE | M::IBV_QP_PKEY_INDEX | M::IBV_QP_PORT | fourth,
            "INIT",
        )?;
        if let Some(srq) = srq {
            srq.shared.status.attach(&shared.status);
        }
        let shared = Arc::new(shared);
        #[cfg(feature = "metrics")]
        crate::stats::metrics::track(&shared);
        let events = &ctx.inner.events;
        events.register_qp(raw.as_ptr(), Arc::downgrade(&shared));
        if let Some(failure) = events.failure.get() {
            // The device is gone already: the new queue pair fails at once.
            let _ = shared.status.failure.set(failure.clone());
        }
        Ok(QueuePair { shared })
    }

    /// This queue pair's address, for the peer's [`connect`](QueuePair::connect).
    pub fn endpoint(&self) -> Endpoint {
        let ctx = &self.shared.pd.context().inner;
        Endpoint {
            qpn: self.qpn(),
            psn: self.shared.psn,
            gid: ctx.gid,
            lid: ctx.lid,
            mtu: ctx.mtu,
        }
    }

    /// Connects to the peer's queue pair `remote` (INIT→RTR→RTS). The peer connects to
    /// this side's [`endpoint`](QueuePair::endpoint) the same way.
    ///
    /// # Errors
    /// [`Error::OptionOutOfRange`] when a field of `options` is outside its range: the queue
    /// pair is left as it was and can be connected with corrected options.
    /// [`Error::Verbs`] with the failing transition when the device refuses the attributes
    /// (e.g. an unreachable GID).
    pub fn connect(&self, remote: &Endpoint, options: ConnectOptions) -> Result<()> {
        #[cfg(feature = "tracing")]
        let _span =
            tracing::debug_span!("connect", qpn = self.qpn(), remote_qpn = remote.qpn).entered();
        options.check()?;
        let ctx = self.shared.pd.context();
        let limits = ctx.limits();
        let local_mtu = ctx.mtu();
        let mtu = options
            .mtu
            .unwrap_or(local_mtu)
            .min(local_mtu)
            .min(remote.mtu.max(256));
        let rd_atomic_in =
            u32::from(options.max_rd_atomic).clamp(1, limits.max_qp_rd_atom.max(1)) as u8;
        let rd_atomic_out =
            u32::from(options.max_rd_atomic).clamp(1, limits.max_qp_init_rd_atom.max(1)) as u8;
        use ibv_qp_attr_mask as M;

        // SAFETY: ibv_qp_attr is plain C data.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_RTR;
        attr.path_mtu = mtu_enum(mtu);
        attr.dest_qp_num = remote.qpn;
        attr.rq_psn = remote.psn;
        attr.max_dest_rd_atomic = rd_atomic_in;
        attr.min_rnr_timer = options.min_rnr_timer;
        attr.ah_attr.dlid = remote.lid;
        attr.ah_attr.port_num = ctx.port();
        if !remote.gid.is_zero() {
            attr.ah_attr.is_global = 1;
            attr.ah_attr.grh.dgid = remote.gid.to_raw();
            attr.ah_attr.grh.sgid_index = ctx.gid_index();
            attr.ah_attr.grh.hop_limit = 64;
        }
        self.shared.modify(
            &mut attr,
            M::IBV_QP_STATE
                | M::IBV_QP_AV
                | M::IBV_QP_PATH_MTU
                | M::IBV_QP_DEST_QPN
                | M::IBV_QP_RQ_PSN
                | M::IBV_QP_MAX_DEST_RD_ATOMIC
                | M::IBV_QP_MIN_RNR_TIMER,
            "RTR",
        )?;

        // SAFETY: ibv_qp_attr is plain C data.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_RTS;
        attr.timeout = options.timeout;
        attr.retry_cnt = options.retry_cnt;
        attr.rnr_retry = options.rnr_retry;
        attr.sq_psn = self.shared.psn;
        attr.max_rd_atomic = rd_atomic_out;
        self.shared.modify(
            &mut attr,
            M::IBV_QP_STATE
                | M::IBV_QP_TIMEOUT
                | M::IBV_QP_RETRY_CNT
                | M::IBV_QP_RNR_RETRY
                | M::IBV_QP_SQ_PSN
                | M::IBV_QP_MAX_QP_RD_ATOMIC,
            "RTS",
        )?;
        self.shared.state.store(STATE_RTS, Ordering::Release);
        Ok(())
    }

    /// The queue pair number.
    pub fn qpn(&self) -> u32 {
        self.shared.status.qpn
    }

    /// What this queue pair did since it was created: requests posted and completed on
    /// each queue, failed and flushed, bytes sent, written and read (see [`QpStats`]). A
    /// few atomic loads, no lock: cheap enough to call as often as wanted.
    pub fn stats(&self) -> QpStats {
        self.shared.status.stats()
    }

    /// The largest send or write that goes inline.
    pub fn max_inline(&self) -> u32 {
        self.shared.caps.max_inline_data
    }

    /// The capabilities the device granted (queue depths, SGEs, inline size).
    pub fn caps(&self) -> QpOptions {
        let c = self.shared.caps;
        QpOptions {
            max_send_wr: c.max_send_wr,
            max_recv_wr: c.max_recv_wr,
            max_send_sge: c.max_send_sge,
            max_recv_sge: c.max_recv_sge,
            max_inline: c.max_inline_data,
            signal_every: self.shared.status.signaling.every(),
        }
    }

    /// The failure that put the queue pair in the error state, if it is there; or, when the
    /// connection ended after a failed completion, that end ([`Error::Disconnected`]): a peer
    /// that dies shows first as a failed operation (a retry error, or a remote access error
    /// once its memory is gone), and the disconnect that follows is what that failure meant.
    /// The operation that failed first keeps its own error.
    pub fn failure(&self) -> Option<Arc<Error>> {
        self.shared.status.cause()
    }

    /// The protection domain.
    pub fn pd(&self) -> &ProtectionDomain {
        &self.shared.pd
    }

    /// Moves the queue pair to the error state: every pending operation completes with a
    /// flush error, and new ones fail at once.
    ///
    /// # Errors
    /// [`Error::Verbs`] when the device refuses the transition.
    pub fn shutdown(&self) -> Result<()> {
        self.shared.fail(QpShutdownReason::Application);
        self.shared.to_error()
    }

    /// For tests only, process-wide: from now on (`true`), every queue pair that enters
    /// RESET or is destroyed loses its completions still in its completion queues, as on
    /// mlx5 (libmlx5's `mlx5_modify_qp` to RESET and `mlx5_destroy_qp` call
    /// `__mlx5_cq_clean`, which removes them; for a receive of a shared receive queue it
    /// gives the receive back to the SRQ without a completion). Soft-RoCE leaves them in the
    /// CQ, so a test on it cannot see an order of teardown that loses them; under this
    /// emulation it can. It costs one atomic load per reset or destroy and does nothing
    /// else; applications never call it.
    #[doc(hidden)]
    pub fn emulate_cq_clean_on_reset(on: bool) {
        EMULATE_CQ_CLEAN.store(on, Ordering::Relaxed);
    }
}

/// Under [`QueuePair::emulate_cq_clean_on_reset`], removes the completions of queue pair
/// `qpn` from `send_cq` and `recv_cq`, as libmlx5 does when it enters RESET.
fn emulate_cq_clean(qpn: u32, send_cq: &CompletionQueue, recv_cq: &CompletionQueue) {
    if !EMULATE_CQ_CLEAN.load(Ordering::Relaxed) {
        return;
    }
    recv_cq.shared.clean_emulated(qpn);
    if !Arc::ptr_eq(&send_cq.shared, &recv_cq.shared) {
        send_cq.shared.clean_emulated(qpn);
    }
}

impl QpShared {
    #[inline]
    pub(crate) fn raw(&self) -> *mut ibv_qp {
        self.raw.as_ptr()
    }

    /// The send queue, for posting: fails fast when the QP is in error or not connected.
    #[inline]
    pub(crate) fn send_queue(&self) -> Result<WorkQueueRef<'_>> {
        self.check_failure()?;
        if self.state.load(Ordering::Acquire) != STATE_RTS {
            return Err(Error::NotConnected {
                qpn: self.status.qpn,
            });
        }
        Ok(WorkQueueRef {
            status: &self.status,
            cq: &self.send_cq.shared,
            queue: WorkQueue::Send,
            depth: self.caps.max_send_wr,
            name: "send queue",
            call: "ibv_post_send",
        })
    }

    /// The receive queue, for posting: fails fast when the QP is in error.
    #[inline]
    pub(crate) fn recv_queue(&self) -> Result<WorkQueueRef<'_>> {
        self.check_failure()?;
        Ok(WorkQueueRef {
            status: &self.status,
            cq: &self.recv_cq.shared,
            queue: WorkQueue::Recv,
            depth: self.caps.max_recv_wr,
            name: "receive queue",
            call: "ibv_post_recv",
        })
    }

    #[inline]
    fn check_failure(&self) -> Result<()> {
        match self.status.cause() {
            Some(cause) => Err(Error::QpInError {
                qpn: self.status.qpn,
                cause,
            }),
            None => Ok(()),
        }
    }

    /// Records why the QP is being moved to the error state (unless it already failed).
    fn fail(&self, reason: QpShutdownReason) {
        let _ = self.status.failure.set(Arc::new(Error::Shutdown {
            qpn: self.status.qpn,
            reason,
        }));
    }

    /// Fails the QP after the device took only part of a chain: the part is flushed, and
    /// its buffers wait in its slot until the QP is destroyed.
    pub(crate) fn fail_after_partial_post(&self) {
        self.fail(QpShutdownReason::PartialBatch);
        let _ = self.to_error();
    }

    pub(crate) fn modify(
        &self,
        attr: &mut ibv_qp_attr,
        mask: ibv_qp_attr_mask,
        to: &'static str,
    ) -> Result<()> {
        // SAFETY: the QP is valid; `attr` is a valid attribute block for `mask`.
        let rc = unsafe { ibv_modify_qp(self.raw(), attr, mask.0 as i32) };
        crate::trace::event!(
            debug,
            qpn = self.status.qpn,
            to,
            result = rc,
            "queue pair state change"
        );
        if rc == 0 && to == "RESET" {
            emulate_cq_clean(self.status.qpn, &self.send_cq, &self.recv_cq);
        }
        if rc != 0 {
            let hint = match to {
                "INIT" => "check the port number and that the port is active",
                "RTR" => "check the peer's endpoint: GID reachable from this port, QP number, MTU",
                "RTS" => {
                    "check timeout, retry counts and max_rd_atomic against the device's limits"
                }
                _ => "the device refused the state change",
            };
            return Err(Error::Verbs {
                call: "ibv_modify_qp",
                source: std::io::Error::from_raw_os_error(rc),
                hint: Some(hint),
            });
        }
        Ok(())
    }

    /// Marks the queue pair connected, once something outside [`QueuePair::connect`] (the
    /// connection manager) moved it to RTS: sends may be posted from now on.
    pub(crate) fn mark_connected(&self) {
        self.state.store(STATE_RTS, Ordering::Release);
    }

    /// Fails the queue pair for `reason` (new posts fail with it) and moves it to the error
    /// state, which flushes what is pending.
    pub(crate) fn shut_down(&self, reason: QpShutdownReason) -> Result<()> {
        self.fail(reason);
        self.to_error()
    }

    /// The connection of this queue pair ended (the peer disconnected), for `cause`: new
    /// posts fail with it, and the queue pair goes to the error state, where the device
    /// completes every pending work request with a flush error, after those it completed
    /// before (the verbs specification: all outstanding requests complete, flushed, once a
    /// queue pair is in ERR).
    ///
    /// It is not reset: what the completion queues hold for it (messages that arrived before
    /// the disconnect, requests that completed) stays there for its operations to take. A
    /// reset would lose it on mlx5, whose library removes a queue pair's completions from its
    /// CQs when it enters RESET, and a receive it took from a shared receive queue would then
    /// never complete. If the device refuses the error state, no flush would come: the queue
    /// pair is then failed as by [`fail_now`](QpShared::fail_now).
    pub(crate) fn connection_ended(&self, cause: &Arc<Error>) {
        crate::trace::event!(info, qpn = self.status.qpn, %cause, "connection ended");
        self.record_disconnect(cause);
        if self.to_error().is_err() {
            self.fail_now(cause);
        }
    }

    /// Records the end of the connection, `cause`, as why the queue pair failed: as its first
    /// failure, or in place of an earlier failed completion, which the disconnect explains.
    /// A deliberate shutdown or a device failure that came first stays the cause.
    fn record_disconnect(&self, cause: &Arc<Error>) {
        if let Err(cause) = self.status.failure.set(cause.clone()) {
            let earlier = self.status.failure.get();
            if earlier.is_some_and(|earlier| matches!(**earlier, Error::WorkCompletion { .. })) {
                let _ = self.status.disconnect.set(cause);
            }
        }
    }

    /// Fails the queue pair now for `cause`, when its completions may never come (its
    /// completion queue failed, or the device failed or is going away): new posts fail, and
    /// once the device has let go of the work (the queue pair is reset, which removes every
    /// work request it holds), every pending operation ends with [`Error::Flushed`] and gets
    /// its buffers back. What its completion queues hold is taken before the reset (mlx5
    /// removes a queue pair's completions when it enters RESET), so an operation that
    /// completed ends with its own result. If the device refuses the reset, the operations
    /// wait for their flush completions instead, and their buffers are not released before.
    pub(crate) fn fail_now(&self, cause: &Arc<Error>) {
        crate::trace::event!(warn, qpn = self.status.qpn, %cause, "failing queue pair");
        if cause.is_disconnect() {
            self.record_disconnect(cause);
        } else {
            let _ = self.status.failure.set(cause.clone());
        }
        let _ = self.to_error();
        self.send_cq.shared.reap();
        if !Arc::ptr_eq(&self.send_cq.shared, &self.recv_cq.shared) {
            self.recv_cq.shared.reap();
        }
        // SAFETY: ibv_qp_attr is plain C data.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_RESET;
        if self
            .modify(&mut attr, ibv_qp_attr_mask::IBV_QP_STATE, "RESET")
            .is_err()
        {
            return;
        }
        self.state.store(STATE_INIT, Ordering::Release);
        self.send_cq.shared.end_owner(&self.status, Some(cause));
        if !Arc::ptr_eq(&self.send_cq.shared, &self.recv_cq.shared) {
            self.recv_cq.shared.end_owner(&self.status, Some(cause));
        }
    }

    /// The device reported that this queue pair takes no more receives from its shared
    /// receive queue.
    pub(crate) fn last_wqe_reached(&self) {
        self.last_wqe_reached
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn to_error(&self) -> Result<()> {
        // SAFETY: ibv_qp_attr is plain C data.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_ERR;
        self.modify(&mut attr, ibv_qp_attr_mask::IBV_QP_STATE, "ERR")
    }
}

#[cfg(feature = "metrics")]
impl crate::stats::metrics::Exported for QpShared {
    fn export(&self) {
        use crate::stats::metrics;
        let labels = metrics::qp_labels(self.pd.context().device_name(), self.status.qpn);
        metrics::record_qp(&self.status.stats(), &labels);
    }
}

// The device's events reach the queue pair through this (the events module is below the
// queue pairs it serves, and does not name their type).
impl crate::events::EventQp for QpShared {
    fn note_failure(&self, cause: Arc<Error>) {
        let _ = self.status.failure.set(cause);
    }

    fn last_wqe_reached(&self) {
        QpShared::last_wqe_reached(self);
    }

    fn fail_now(&self, cause: &Arc<Error>) {
        QpShared::fail_now(self, cause);
    }

    fn uses_cq(&self, cq: usize) -> bool {
        self.send_cq.shared.raw() as usize == cq || self.recv_cq.shared.raw() as usize == cq
    }

    fn uses_srq(&self, srq: usize) -> bool {
        self.srq
            .as_ref()
            .is_some_and(|shared| shared.raw() as usize == srq)
    }
}

impl Drop for QpShared {
    fn drop(&mut self) {
        let ctx = &self.pd.context().inner;
        let busy = self.status.in_flight() > 0;
        if busy || self.srq.is_some() {
            // Stop the device working on the dropped operations before destroying.
            let _ = self.to_error();
        }
        ctx.events.unregister_qp(self.raw());
        let dying = DyingQp {
            raw: self.raw,
            status: self.status.clone(),
            send_cq: self.send_cq.clone(),
            recv_cq: self.recv_cq.clone(),
            pd: self.pd.clone(),
        };
        if let Some(srq) = &self.srq {
            // In the error state, the queue pair may still be completing a receive it took
            // from the shared receive queue; the device says when it took its last one.
            // Destroying it before could lose that completion (mlx5 gives the receive back
            // to the SRQ without one), so until then the SRQ keeps it, without blocking here.
            // Noted as retiring first: whoever reads the event from now on destroys it.
            srq.shared.retire(dying);
            ctx.events.note_retiring(self.raw(), &srq.shared);
            ctx.events.read_now(ctx);
            if self.last_wqe_reached.load(Ordering::Acquire) || ctx.events.take_last_wqe(self.raw())
            {
                ctx.events.last_wqe_of_dropped(self.raw() as usize);
            }
            return;
        }
        dying.destroy();
    }
}

/// What destroying a queue pair needs once its `QpShared` is gone: the device objects it uses
/// stay alive (held here) until it is destroyed.
pub(crate) struct DyingQp {
    raw: NonNull<ibv_qp>,
    status: Arc<QpStatus>,
    send_cq: CompletionQueue,
    recv_cq: CompletionQueue,
    pd: ProtectionDomain,
}

// SAFETY: as for QpShared: the QP is only destroyed through this value, from any thread.
unsafe impl Send for DyingQp {}

impl DyingQp {
    /// The address of the `ibv_qp`, as the device's events name it.
    pub(crate) fn address(&self) -> usize {
        self.raw.as_ptr() as usize
    }

    /// Drains the completion queues, destroys the queue pair, then releases the buffers its
    /// dropped operations left behind.
    pub(crate) fn destroy(self) {
        let distinct_cqs = !Arc::ptr_eq(&self.send_cq.shared, &self.recv_cq.shared);
        // Drain first: mlx5 removes a destroyed queue pair's completions from its CQs, so a
        // completion not yet polled (a message received for it) would be lost.
        self.send_cq.shared.reap();
        if distinct_cqs {
            self.recv_cq.shared.reap();
        }
        // SAFETY: no QueuePair clone and no pending future is left (both hold the QpShared
        // this came from), and the QP is destroyed only here, once.
        let rc = unsafe { ibv_destroy_qp(self.raw.as_ptr()) };
        if rc == 0 {
            emulate_cq_clean(self.status.qpn, &self.send_cq, &self.recv_cq);
        }
        if rc != 0 {
            crate::trace::event!(
                error,
                qpn = self.status.qpn,
                errno = rc,
                "ibv_destroy_qp failed: its buffers, CQs and PD are leaked"
            );
            // The device may still use the buffers of dropped operations, the CQs and the
            // PD: keep them all (a leak is safe; freeing memory the NIC may write is not).
            std::mem::forget(self);
            return;
        }
        // Destroyed: the device touches none of its buffers any more.
        self.send_cq.shared.end_owner(&self.status, None);
        if distinct_cqs {
            self.recv_cq.shared.end_owner(&self.status, None);
        }
        drop(self.pd);
    }
}

/// A random 24-bit initial PSN, as the transport expects.
fn random_psn(qpn: u32) -> u32 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(qpn);
    if let Ok(elapsed) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(elapsed.as_nanos());
    }
    (hasher.finish() & 0x00ff_ffff) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_options_outside_their_bits_are_refused() {
        assert!(ConnectOptions::default().check().is_ok());
        let edges = ConnectOptions {
            timeout: 31,
            retry_cnt: 7,
            rnr_retry: 7,
            min_rnr_timer: 31,
            ..ConnectOptions::default()
        };
        assert!(edges.check().is_ok(), "the top of every range is accepted");
        let over = [
            (
                "ConnectOptions::timeout",
                ConnectOptions {
                    timeout: 32,
                    ..edges
                },
            ),
            (
                "ConnectOptions::retry_cnt",
                ConnectOptions {
                    retry_cnt: 8,
                    ..edges
                },
            ),
            (
                "ConnectOptions::rnr_retry",
                ConnectOptions {
                    rnr_retry: 8,
                    ..edges
                },
            ),
            (
                "ConnectOptions::min_rnr_timer",
                ConnectOptions {
                    min_rnr_timer: 32,
                    ..edges
                },
            ),
        ];
        for (name, options) in over {
            match options.check() {
                Err(Error::OptionOutOfRange { option, value, max }) => {
                    assert_eq!((option, value), (name, max + 1));
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn psn_is_24_bits() {
        for qpn in 0..100 {
            assert!(random_psn(qpn) < (1 << 24));
        }
    }
}
