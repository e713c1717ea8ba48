//! Raw verbs: rdma-sys driven directly in a plain loop (`--runtime raw`), the device's own
//! cost, against which anyrdma's overhead shows. Latency tests only, on one queue pair; the
//! setup follows anyrdma's (`ConnectOptions::default()`'s transport parameters, a fresh PSN).

use std::net::TcpStream;
use std::ptr::null_mut;
use std::time::Instant;

use anyrdma::{Context, Endpoint, RemoteRegion};
use rdma_sys::*;

use crate::abort;
use crate::catalog::{Mode, Test};
use crate::pacing::Pacing;
use crate::rc::{spin_until, tag};
use crate::stats::{latency, Outcome};
use crate::wire::{barrier, exchange, Spec};
use crate::Res;

struct Raw {
    ctx: *mut ibv_context,
    pd: *mut ibv_pd,
    channel: *mut ibv_comp_channel,
    cq: *mut ibv_cq,
    qp: *mut ibv_qp,
    mrs: Vec<(*mut ibv_mr, *mut u8, std::alloc::Layout)>,
    event: bool,
    /// Completions taken from the CQ and not yet claimed, by kind.
    sends_done: u32,
    recvs_done: u32,
}

fn check(rc: i32, what: &str) -> Res<()> {
    if rc != 0 {
        return Err(format!("{what}: {}", std::io::Error::from_raw_os_error(rc.abs())).into());
    }
    Ok(())
}

impl Raw {
    unsafe fn open(actx: &Context, event: bool, inline: u32) -> Res<Raw> {
        let mut n = 0;
        let list = ibv_get_device_list(&mut n);
        let mut ctx = null_mut();
        for i in 0..n as usize {
            let dev = *list.add(i);
            let name = std::ffi::CStr::from_ptr(ibv_get_device_name(dev));
            if name.to_str() == Ok(actx.device_name()) {
                ctx = ibv_open_device(dev);
            }
        }
        ibv_free_device_list(list);
        if ctx.is_null() {
            return Err("ibv_open_device failed".into());
        }
        let pd = ibv_alloc_pd(ctx);
        let channel = ibv_create_comp_channel(ctx);
        let cq = ibv_create_cq(ctx, 256, null_mut(), channel, 0);
        let mut init: ibv_qp_init_attr = std::mem::zeroed();
        init.send_cq = cq;
        init.recv_cq = cq;
        init.qp_type = ibv_qp_type::IBV_QPT_RC;
        init.cap = ibv_qp_cap {
            max_send_wr: 64,
            max_recv_wr: 64,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: inline,
        };
        let qp = ibv_create_qp(pd, &mut init);
        if pd.is_null() || cq.is_null() || qp.is_null() {
            return Err("raw verbs setup failed".into());
        }
        let mut attr: ibv_qp_attr = std::mem::zeroed();
        attr.qp_state = ibv_qp_state::IBV_QPS_INIT;
        attr.port_num = actx.port();
        attr.qp_access_flags = (ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ibv_access_flags::IBV_ACCESS_REMOTE_READ
            | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE)
            .0;
        use ibv_qp_attr_mask as M;
        check(
            ibv_modify_qp(
                qp,
                &mut attr,
                (M::IBV_QP_STATE | M::IBV_QP_PKEY_INDEX | M::IBV_QP_PORT | M::IBV_QP_ACCESS_FLAGS).0
                    as i32,
            ),
            "INIT",
        )?;
        Ok(Raw {
            ctx,
            pd,
            channel,
            cq,
            qp,
            mrs: Vec::new(),
            event,
            sends_done: 0,
            recvs_done: 0,
        })
    }

    unsafe fn alloc(&mut self, len: usize) -> Res<(*mut u8, *mut ibv_mr)> {
        let layout = std::alloc::Layout::from_size_align(len.max(8).div_ceil(4096) * 4096, 4096)?;
        let p = std::alloc::alloc_zeroed(layout);
        let mr = ibv_reg_mr(
            self.pd,
            p.cast(),
            len.max(8),
            (ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
                | ibv_access_flags::IBV_ACCESS_REMOTE_READ
                | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE)
                .0 as i32,
        );
        if mr.is_null() {
            return Err("ibv_reg_mr failed".into());
        }
        self.mrs.push((mr, p, layout));
        Ok((p, mr))
    }

    fn endpoint(&self, actx: &Context, psn: u32) -> Res<Endpoint> {
        // SAFETY: `ibv_gid` is a C union of plain bytes: all zeroes is a valid value.
        let mut gid: ibv_gid = unsafe { std::mem::zeroed() };
        // SAFETY: valid context and out pointer.
        check(
            unsafe { ibv_query_gid(self.ctx, actx.port(), actx.gid_index() as i32, &mut gid) },
            "ibv_query_gid",
        )?;
        Ok(Endpoint {
            // SAFETY: the QP is valid.
            qpn: unsafe { (*self.qp).qp_num },
            psn,
            // SAFETY: reading the raw bytes of the GID union.
            gid: anyrdma::Gid(unsafe { gid.raw }),
            lid: 0,
            mtu: actx.mtu(),
        })
    }

    unsafe fn connect(&self, actx: &Context, psn: u32, peer: &Endpoint) -> Res<()> {
        use ibv_qp_attr_mask as M;
        let mtu = match actx.mtu().min(peer.mtu) {
            256 => ibv_mtu::IBV_MTU_256,
            512 => ibv_mtu::IBV_MTU_512,
            1024 => ibv_mtu::IBV_MTU_1024,
            2048 => ibv_mtu::IBV_MTU_2048,
            _ => ibv_mtu::IBV_MTU_4096,
        };
        let mut attr: ibv_qp_attr = std::mem::zeroed();
        attr.qp_state = ibv_qp_state::IBV_QPS_RTR;
        attr.path_mtu = mtu;
        attr.dest_qp_num = peer.qpn;
        attr.rq_psn = peer.psn;
        attr.max_dest_rd_atomic = 16;
        attr.min_rnr_timer = 14;
        attr.ah_attr.dlid = peer.lid;
        attr.ah_attr.port_num = actx.port();
        attr.ah_attr.is_global = 1;
        attr.ah_attr.grh.dgid = peer.gid.to_raw();
        attr.ah_attr.grh.sgid_index = actx.gid_index();
        attr.ah_attr.grh.hop_limit = 64;
        check(
            ibv_modify_qp(
                self.qp,
                &mut attr,
                (M::IBV_QP_STATE
                    | M::IBV_QP_AV
                    | M::IBV_QP_PATH_MTU
                    | M::IBV_QP_DEST_QPN
                    | M::IBV_QP_RQ_PSN
                    | M::IBV_QP_MAX_DEST_RD_ATOMIC
                    | M::IBV_QP_MIN_RNR_TIMER)
                    .0 as i32,
            ),
            "RTR",
        )?;
        let mut attr: ibv_qp_attr = std::mem::zeroed();
        attr.qp_state = ibv_qp_state::IBV_QPS_RTS;
        // The transport parameters of ConnectOptions::default().
        attr.timeout = 14;
        attr.retry_cnt = 6;
        attr.rnr_retry = 6;
        attr.sq_psn = psn;
        attr.max_rd_atomic = 16;
        check(
            ibv_modify_qp(
                self.qp,
                &mut attr,
                (M::IBV_QP_STATE
                    | M::IBV_QP_TIMEOUT
                    | M::IBV_QP_RETRY_CNT
                    | M::IBV_QP_RNR_RETRY
                    | M::IBV_QP_SQ_PSN
                    | M::IBV_QP_MAX_QP_RD_ATOMIC)
                    .0 as i32,
            ),
            "RTS",
        )
    }

    /// Waits for one completion (busy: poll; event: poll, arm, poll, sleep on the channel).
    unsafe fn wait(&self) -> Res<ibv_wc> {
        let mut wc: ibv_wc = std::mem::zeroed();
        loop {
            if ibv_poll_cq(self.cq, 1, &mut wc) > 0 {
                break;
            }
            abort::check()?;
            if self.event {
                check(ibv_req_notify_cq(self.cq, 0), "ibv_req_notify_cq")?;
                if ibv_poll_cq(self.cq, 1, &mut wc) > 0 {
                    break;
                }
                let mut cq = null_mut();
                let mut cq_ctx = null_mut();
                check(
                    ibv_get_cq_event(self.channel, &mut cq, &mut cq_ctx),
                    "ibv_get_cq_event",
                )?;
                ibv_ack_cq_events(self.cq, 1);
            }
        }
        if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
            return Err(format!("work completion status {}", wc.status).into());
        }
        Ok(wc)
    }

    /// Waits until a completion of the wanted kind (receive or send queue) is there, and
    /// claims it; completions of the other kind seen meanwhile are counted for later.
    unsafe fn claim(&mut self, recv: bool) -> Res<()> {
        loop {
            let have = if recv {
                &mut self.recvs_done
            } else {
                &mut self.sends_done
            };
            if *have > 0 {
                *have -= 1;
                return Ok(());
            }
            let wc = self.wait()?;
            if wc.wr_id == 1 {
                self.recvs_done += 1;
            } else {
                self.sends_done += 1;
            }
        }
    }

    unsafe fn post_recv(&self, buf: *mut u8, mr: *mut ibv_mr, len: usize) -> Res<()> {
        let mut sge = ibv_sge {
            addr: buf as u64,
            length: len as u32,
            lkey: (*mr).lkey,
        };
        let mut wr = ibv_recv_wr {
            wr_id: 1,
            next: null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        let mut bad = null_mut();
        check(ibv_post_recv(self.qp, &mut wr, &mut bad), "ibv_post_recv")
    }

    #[allow(clippy::too_many_arguments)]
    unsafe fn post_send(
        &self,
        opcode: ibv_wr_opcode::Type,
        buf: *mut u8,
        mr: *mut ibv_mr,
        len: usize,
        remote: RemoteRegion,
        imm: u32,
        inline: bool,
    ) -> Res<()> {
        let mut sge = ibv_sge {
            addr: buf as u64,
            length: len as u32,
            lkey: (*mr).lkey,
        };
        let mut wr: ibv_send_wr = std::mem::zeroed();
        wr.wr_id = 2;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = opcode;
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        if inline {
            wr.send_flags |= ibv_send_flags::IBV_SEND_INLINE.0;
        }
        wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
        wr.wr.rdma = rdma_t {
            remote_addr: remote.addr,
            rkey: remote.rkey,
        };
        let mut bad = null_mut();
        check(ibv_post_send(self.qp, &mut wr, &mut bad), "ibv_post_send")
    }
}

/// Moves `qp` to the error state (its posted work requests complete, flushed).
fn to_error(qp: *mut ibv_qp) {
    // SAFETY: only called by the abort hook, which `Raw::drop` takes back (waiting for one
    // that runs) before it destroys the queue pair; ibv_modify_qp may be called from any
    // thread; `attr` is a valid attribute set for the call.
    unsafe {
        let mut attr: ibv_qp_attr = std::mem::zeroed();
        attr.qp_state = ibv_qp_state::IBV_QPS_ERR;
        ibv_modify_qp(qp, &mut attr, ibv_qp_attr_mask::IBV_QP_STATE.0 as i32);
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        // No abort hook may touch the queue pair from here on.
        abort::clear_hook();
        // SAFETY: every object was created by `open`/`alloc` and is destroyed once, in order.
        unsafe {
            ibv_destroy_qp(self.qp);
            for (mr, p, layout) in self.mrs.drain(..) {
                ibv_dereg_mr(mr);
                std::alloc::dealloc(p, layout);
            }
            ibv_destroy_cq(self.cq);
            ibv_destroy_comp_channel(self.channel);
            ibv_dealloc_pd(self.pd);
            ibv_close_device(self.ctx);
        }
    }
}

/// One latency measurement with raw verbs; the client returns the result.
pub fn measure(
    actx: &Context,
    spec: Spec,
    client: bool,
    mut ctl: TcpStream,
) -> Res<(Outcome, TcpStream)> {
    if !spec.test.is_verbs_lat() || spec.qps != 1 {
        return Err(
            "raw verbs measure the latency of single operations on one queue pair only \
             (perftest gives the raw rates)"
                .into(),
        );
    }
    // SAFETY: plain verbs calls on objects this function owns; buffers outlive the QP use.
    unsafe {
        let mut r = Raw::open(actx, spec.mode == Mode::Event, spec.inline)?;
        if !client {
            // The server's way out when its client goes away while it sleeps on the channel:
            // its queue pair in the error state flushes the receive it waits for. `Raw`'s
            // drop takes the hook back before it destroys the queue pair.
            let qp = r.qp as usize;
            abort::set_hook(Box::new(move || to_error(qp as *mut ibv_qp)));
        }
        let size = spec.size;
        let (target, target_mr) = r.alloc(size)?;
        let (sbuf, smr) = r.alloc(size)?;
        let (rbuf, rmr) = r.alloc(size)?;
        // A fresh PSN per QP (like anyrdma's): a reused QP number must not accept stale packets.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let psn = (nanos ^ std::process::id().wrapping_mul(7919)) & 0xffffff;
        let mine = r.endpoint(actx, psn)?;
        let region = RemoteRegion {
            addr: target as u64,
            len: size as u64,
            rkey: (*target_mr).rkey,
        };
        let (peers, remote) = exchange(&mut ctl, &[mine], region)?;
        r.connect(actx, psn, &peers[0])?;
        let inline = size <= spec.inline as usize;
        let imm = spec.test == Test::WriteImmLat;
        if matches!(spec.test, Test::SendLat | Test::WriteImmLat) {
            r.post_recv(rbuf, rmr, size)?;
        }
        let last = target as usize + size - 1;
        let mut stamps = Vec::with_capacity(spec.iters + 1);
        let pacing = Pacing::from_env();
        barrier(&mut ctl)?;
        for i in 0..spec.iters {
            match spec.test {
                Test::WriteLat => {
                    if !client {
                        spin_until(last, tag(i))?;
                    }
                    *sbuf.add(size - 1) = tag(i);
                    if client {
                        stamps.push(Instant::now());
                    }
                    r.post_send(
                        ibv_wr_opcode::IBV_WR_RDMA_WRITE,
                        sbuf,
                        smr,
                        size,
                        remote,
                        0,
                        inline,
                    )?;
                    r.claim(false)?;
                    if client {
                        spin_until(last, tag(i))?;
                    }
                }
                Test::SendLat | Test::WriteImmLat => {
                    let opcode = if imm {
                        ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM
                    } else {
                        ibv_wr_opcode::IBV_WR_SEND
                    };
                    if client {
                        stamps.push(Instant::now());
                        r.post_send(opcode, sbuf, smr, size, remote, i as u32, inline)?;
                        pacing.after_client_post();
                    }
                    // Client: the reply, then its request's completion; server: the request,
                    // then the completion of its previous reply. The receive is re-posted before replying.
                    r.claim(true)?;
                    r.post_recv(rbuf, rmr, size)?;
                    if client || i > 0 {
                        r.claim(false)?;
                    }
                    if !client {
                        pacing.before_server_reply();
                        r.post_send(opcode, sbuf, smr, size, remote, i as u32, inline)?;
                    }
                }
                Test::ReadLat => {
                    if client {
                        stamps.push(Instant::now());
                        r.post_send(
                            ibv_wr_opcode::IBV_WR_RDMA_READ,
                            sbuf,
                            smr,
                            size,
                            remote,
                            0,
                            false,
                        )?;
                        r.claim(false)?;
                    }
                }
                _ => unreachable!("only the latency tests pass the check above"),
            }
        }
        stamps.push(Instant::now());
        if !client && spec.iters > 0 && matches!(spec.test, Test::SendLat | Test::WriteImmLat) {
            r.claim(false)?; // the last reply
        }
        barrier(&mut ctl)?;
        drop(r);
        let halve = spec.test != Test::ReadLat;
        Ok((latency(&stamps, halve), ctl))
    }
}
