//! The reliable-connection rows on one or more connected queue pairs, as perftest's
//! `ib_*_lat` and `ib_*_bw` run them: `write_lat`, `write_imm_lat`, `send_lat`, `read_lat`,
//! `write_rate` and `send_rate`. Both sides create their queue pairs on one completion queue,
//! exchange endpoints and a target region over the control channel and connect; the client
//! stamps the iterations or times the whole run.

use std::collections::VecDeque;
use std::future::Future;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyrdma::core::{CompletionQueue, Op, QueuePair};
use anyrdma::{
    Access, ConnectOptions, Context, CqOptions, Done, Endpoint, LocalBuf, ProtectionDomain,
    QpOptions, Recv, RemoteRegion, SharedRegion,
};

use crate::abort;
use crate::catalog::Test;
use crate::messaging;
use crate::pacing::Pacing;
use crate::wire::{barrier, exchange, Spec};
use crate::{BoxError, Res};

/// Names the step of a measurement an error comes from.
pub fn step<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> BoxError {
    move |err| format!("{what}: {err}").into()
}

/// The marker byte of iteration `i` (never 0, the buffers' first content).
pub fn tag(i: usize) -> u8 {
    (i % 255 + 1) as u8
}

/// Spins until the byte at `p` equals `want` (the peer's RDMA write landed), or until the
/// measurement is ended because its client went away (`abort.rs`).
pub fn spin_until(addr: usize, want: u8) -> Res<()> {
    let p = addr as *const u8;
    // SAFETY: `p` points into a registered buffer that lives for the whole test; the device
    // writes it concurrently, hence the volatile read.
    while unsafe { std::ptr::read_volatile(p) } != want {
        abort::check()?;
        std::hint::spin_loop();
    }
    Ok(())
}

/// One side's connected queue pairs and memory.
pub struct Side {
    /// Their protection domain.
    pub pd: ProtectionDomain,
    /// The queue pairs, connected to the peer's of the same index.
    pub qps: Vec<QueuePair>,
    /// This side's target of the peer's writes and reads.
    target: SharedRegion,
    /// The peer's target.
    remote: RemoteRegion,
    _cq: CompletionQueue,
}

/// Creates and connects the queue pairs `spec` asks for, exchanging endpoints over `ctl`.
pub fn setup(ctx: &Context, spec: &Spec, ctl: &mut TcpStream) -> Res<Side> {
    let pd = ctx.alloc_pd()?;
    let recv_depth = match spec.test {
        Test::SendRate => 512.max(spec.window * 2),
        Test::MsgLat | Test::MsgRate => messaging::options().receive_queue_depth(),
        _ => 16,
    };
    let entries = (spec.qps * (spec.window + recv_depth) + 64) as u32;
    let cq = CompletionQueue::new(
        ctx,
        CqOptions {
            entries,
            poll_mode: spec.mode.poll_mode(),
        },
    )?;
    let options = QpOptions {
        max_send_wr: (spec.window + 16) as u32,
        max_recv_wr: recv_depth as u32,
        max_send_sge: 1,
        max_recv_sge: 1,
        max_inline: spec.inline,
        ..QpOptions::default()
    };
    let qps = (0..spec.qps)
        .map(|_| QueuePair::new(&pd, &cq, &cq, options))
        .collect::<Result<Vec<_>, _>>()?;
    let target = pd.alloc_shared(
        spec.size.max(8),
        Access::LOCAL | Access::REMOTE_WRITE | Access::REMOTE_READ,
    )?;
    let mine: Vec<Endpoint> = qps.iter().map(|q| q.endpoint()).collect();
    let (peers, remote) = exchange(ctl, &mine, target.remote()?)?;
    let remote = remote.slice(0..spec.size as u64)?;
    for (qp, peer) in qps.iter().zip(&peers) {
        qp.connect(peer, ConnectOptions::default())?;
    }
    Ok(Side {
        pd,
        qps,
        target,
        remote,
        _cq: cq,
    })
}

async fn done<T>(op: impl Future<Output = (anyrdma::Result<T>, LocalBuf)>) -> Res<LocalBuf> {
    let (res, buf) = op.await;
    res?;
    Ok(buf)
}

/// `write_lat`: the iteration stamps (the client's).
pub async fn lat_write(
    s: &Side,
    spec: &Spec,
    client: bool,
    ctl: &mut TcpStream,
) -> Res<Vec<Instant>> {
    let qp = &s.qps[0];
    // An address, not a pointer, so the future stays Send.
    let last = s.target.addr() as usize + spec.size - 1;
    let mut sbuf = Some(s.pd.alloc(spec.size, Access::LOCAL)?);
    let mut pending: Option<Op<LocalBuf, Done>> = None;
    let mut stamps = Vec::with_capacity(spec.iters + 1);
    barrier(ctl)?;
    for i in 0..spec.iters {
        if !client {
            spin_until(last, tag(i))?;
        }
        if let Some(op) = pending.take() {
            sbuf = Some(done(op).await?);
        }
        let mut buf = sbuf.take().expect("buffer back");
        buf[spec.size - 1] = tag(i);
        if client {
            stamps.push(Instant::now());
        }
        pending = Some(qp.write(buf, s.remote));
        if client {
            spin_until(last, tag(i))?;
        }
    }
    stamps.push(Instant::now());
    if let Some(op) = pending.take() {
        done(op).await?;
    }
    Ok(stamps)
}

/// Ping-pong of sends (`imm == false`) or writes with immediate data, each side waiting on
/// its receive completion: the iteration stamps (the client's).
pub async fn lat_msg(
    s: &Side,
    spec: &Spec,
    client: bool,
    imm: bool,
    ctl: &mut TcpStream,
) -> Res<Vec<Instant>> {
    let qp = &s.qps[0];
    let rlen = if imm { 8 } else { spec.size };
    let mut recv: Op<LocalBuf, Recv> = qp.recv(s.pd.alloc(rlen, Access::LOCAL)?);
    let mut sbuf = Some(s.pd.alloc(spec.size, Access::LOCAL)?);
    let mut pending: Option<Op<LocalBuf, Done>> = None;
    let mut stamps = Vec::with_capacity(spec.iters + 1);
    let post = |buf: LocalBuf, i: usize| {
        if imm {
            qp.write_with_imm(buf, s.remote, i as u32)
        } else {
            qp.send(buf)
        }
    };
    let pacing = Pacing::from_env();
    barrier(ctl)?;
    for i in 0..spec.iters {
        if client {
            stamps.push(Instant::now());
            pending = Some(post(sbuf.take().expect("buffer back"), i));
            pacing.after_client_post();
        }
        let (res, rbuf) = recv.await;
        res?;
        recv = qp.recv(rbuf);
        if let Some(op) = pending.take() {
            sbuf = Some(done(op).await?);
        }
        if !client {
            pacing.before_server_reply();
            pending = Some(post(sbuf.take().expect("buffer back"), i));
        }
    }
    stamps.push(Instant::now());
    if let Some(op) = pending.take() {
        done(op).await?;
    }
    drop(recv); // the last receive stays posted; released when the QP goes
    Ok(stamps)
}

/// `read_lat`: the iteration stamps (the client's).
pub async fn lat_read(
    s: &Side,
    spec: &Spec,
    client: bool,
    ctl: &mut TcpStream,
) -> Res<Vec<Instant>> {
    let qp = &s.qps[0];
    let mut buf = Some(s.pd.alloc(spec.size, Access::LOCAL)?);
    let mut stamps = Vec::with_capacity(spec.iters + 1);
    barrier(ctl)?;
    if client {
        for _ in 0..spec.iters {
            stamps.push(Instant::now());
            buf = Some(done(qp.read(buf.take().expect("buffer back"), s.remote)).await?);
        }
        stamps.push(Instant::now());
    }
    Ok(stamps)
}

enum Pending {
    One(Op<LocalBuf, Done>),
    Many(Op<Vec<LocalBuf>, Done>),
}

/// Splits one registration into `n` buffers of `size` bytes.
pub fn pool(pd: &ProtectionDomain, size: usize, n: usize) -> Res<Vec<LocalBuf>> {
    let mut all = pd.alloc(size * n, Access::LOCAL)?;
    let mut out = Vec::with_capacity(n);
    for _ in 1..n {
        let rest = all.split_off(size);
        out.push(std::mem::replace(&mut all, rest));
    }
    out.push(all);
    Ok(out)
}

/// `write_rate` and `send_rate`: the client's time from the first post to the last
/// completion (the server returns none).
pub async fn rate_run(
    s: &Side,
    spec: &Spec,
    client: bool,
    ctl: &mut TcpStream,
) -> Res<Option<Duration>> {
    let send = spec.test == Test::SendRate;
    if !client {
        if !send {
            barrier(ctl)?;
            return Ok(None);
        }
        // Keep receives posted on every QP; count messages until all arrived.
        let depth = 512.max(spec.window * 2);
        let mut recvs: VecDeque<(usize, Op<LocalBuf, Recv>)> = VecDeque::new();
        let mut pools: Vec<Vec<LocalBuf>> = Vec::new();
        for _ in 0..spec.qps {
            pools.push(pool(&s.pd, spec.size, depth)?);
        }
        for _ in 0..depth {
            for (q, p) in pools.iter_mut().enumerate() {
                recvs.push_back((q, s.qps[q].recv(p.pop().expect("pool"))));
            }
        }
        barrier(ctl)?;
        let total = spec.iters * spec.qps;
        let mut got = 0;
        while got < total {
            let (q, op) = recvs.pop_front().expect("receives posted");
            let (res, buf) = op.await;
            res?;
            got += 1;
            recvs.push_back((q, s.qps[q].recv(buf)));
        }
        return Ok(None);
    }
    let batch = spec.batch.max(1);
    let per_qp = spec.window / batch * batch;
    let mut pools: Vec<Vec<LocalBuf>> = Vec::new();
    for _ in 0..spec.qps {
        pools.push(pool(&s.pd, spec.size, per_qp.max(batch))?);
    }
    let mut posted = vec![0usize; spec.qps];
    let mut queue: VecDeque<(usize, Pending)> = VecDeque::new();
    let remote = s.remote;
    let post = |q: usize, pool: &mut Vec<LocalBuf>| -> Pending {
        let qp = &s.qps[q];
        if batch == 1 {
            let buf = pool.pop().expect("pool");
            Pending::One(if send {
                qp.send(buf)
            } else {
                qp.write(buf, remote)
            })
        } else {
            let mut b = qp.batch();
            for _ in 0..batch {
                let buf = pool.pop().expect("pool");
                b = if send {
                    b.send(buf)
                } else {
                    b.write(buf, remote)
                };
            }
            Pending::Many(b.submit())
        }
    };
    barrier(ctl)?;
    let start = Instant::now();
    loop {
        let mut more = false;
        for q in 0..spec.qps {
            if pools[q].len() >= batch && posted[q] + batch <= spec.iters {
                queue.push_back((q, post(q, &mut pools[q])));
                posted[q] += batch;
                more = true;
            }
        }
        if !more {
            break;
        }
    }
    while let Some((q, op)) = queue.pop_front() {
        match op {
            Pending::One(op) => pools[q].push(done(op).await?),
            Pending::Many(op) => {
                let (res, bufs) = op.await;
                res?;
                pools[q].extend(bufs);
            }
        }
        while pools[q].len() >= batch && posted[q] + batch <= spec.iters {
            queue.push_back((q, post(q, &mut pools[q])));
            posted[q] += batch;
        }
    }
    Ok(Some(start.elapsed()))
}
