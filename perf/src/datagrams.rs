//! Unreliable datagrams (`anyrdma::ud`), measured as perftest's
//! `ib_send_lat -c UD` and `ib_send_bw -c UD` measure (perftest 4.5's `run_iter_lat_send`,
//! `run_iter_bw` and `run_iter_bw_server`, with the defaults they run with on Soft-RoCE):
//!
//! * `ud_send_lat`: a ping-pong of datagram sends between one `UdQueuePair` on each side.
//!   Like perftest with UD, each side posts `min(iters, 16000)` receives before the first
//!   send (its `rx_depth` for UD is the iteration count, capped at 16,000) and posts another
//!   only for what is left beyond them, so with iteration counts up to 16,000 no receive is
//!   posted inside the timed loop; every send is signaled and awaited (perftest's latency
//!   `tx_depth` is 1, so its CQ moderation is 1). The client stamps each send; the latency is
//!   half the time between consecutive stamps, median and 99th percentile, as perftest's
//!   `t_typical` and `99% percentile`. Sizes up to the port's MTU (`--ud-sizes`), the largest
//!   datagram on both.
//! * `ud_send_rate`: the client keeps `window` (128, perftest's `tx_depth`) datagram sends of
//!   `size` bytes (64) in flight on each of `qps` queue pairs (one CQ, one task), each queue
//!   pair sending to its own queue pair on the server, unbatched; messages per second from the
//!   first post to the last completion, as perftest's sender reports (its completions are
//!   moderated every 100 sends, anyrdma's selective signaling every 16). The server, like
//!   perftest's, posts `min(iters, 16000)` receives per queue pair before the start, takes
//!   every datagram as it arrives (busy: spinning, event: sleeping on the channel) and posts
//!   receives only beyond those. A datagram send completes when the device has sent it, so,
//!   as in perftest, the rate is the sender's; the receives are all posted in time so none is
//!   lost, and the server says so on stderr if some are.
//!
//! Receive buffers are `max_datagram()` (the port's MTU) long, the size that holds any
//! datagram; anyrdma puts the 40-byte routing header in a block of its own in front (perftest
//! posts `size + 40` bytes in one piece). The peers' addresses (GID, QPN, Q_Key) go over the
//! control channel, as the RC rows exchange their endpoints (perftest `-c UD`
//! uses its own TCP exchange the same way). Inline sends follow `--inline` (0 on Soft-RoCE,
//! as perftest's). Not for `raw`.

use std::collections::VecDeque;
use std::future::Future;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyrdma::core::CompletionQueue;
use anyrdma::ud::{UdAddress, UdOptions, UdPeer, UdQueuePair, UdRecv, DEFAULT_QKEY};
use anyrdma::{Access, Context, CqOptions, Gid, LocalBuf, ProtectionDomain, QpOptions};

use crate::catalog::Test;
use crate::pacing::Pacing;
use crate::rc::{pool, step};
use crate::stats::{latency, rate, Outcome};
use crate::wire::{barrier, recv_exact, send_all, Spec};
use crate::Res;

/// perftest's largest receive queue for UD and UC (`UC_MAX_RX`): receives posted up front.
const MAX_RX: usize = 16_000;

/// How long the rate server waits for its datagrams beyond what the run should take: a lost
/// datagram must not hang the server.
const PATIENCE: Duration = Duration::from_secs(20);

/// GID, LID, QPN and Q_Key of a datagram queue pair, as sent over the control channel.
const ADDRESS_LEN: usize = 16 + 2 + 4 + 4;

fn encode(a: &UdAddress) -> [u8; ADDRESS_LEN] {
    let mut b = [0u8; ADDRESS_LEN];
    b[..16].copy_from_slice(&a.gid.0);
    b[16..18].copy_from_slice(&a.lid.to_le_bytes());
    b[18..22].copy_from_slice(&a.qpn.to_le_bytes());
    b[22..26].copy_from_slice(&a.qkey.to_le_bytes());
    b
}

fn decode(b: &[u8; ADDRESS_LEN]) -> UdAddress {
    let word = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    UdAddress {
        gid: Gid(b[..16].try_into().expect("16 bytes")),
        lid: u16::from_le_bytes([b[16], b[17]]),
        qpn: word(18),
        qkey: word(22),
    }
}

/// Each side's queue pairs, and the peers they send to (the other side's queue pair of the
/// same index).
struct Ud {
    pd: ProtectionDomain,
    qps: Vec<UdQueuePair>,
    peers: Vec<UdPeer>,
    _cq: CompletionQueue,
}

fn setup(ctx: &Context, spec: &Spec, ctl: &mut TcpStream) -> Res<Ud> {
    let pd = ctx.alloc_pd()?;
    let recv_depth = spec.iters.clamp(1, MAX_RX);
    let send_depth = if spec.test == Test::UdSendRate {
        spec.window + 16
    } else {
        16
    };
    let cq = CompletionQueue::new(
        ctx,
        CqOptions {
            entries: (spec.qps * (send_depth + recv_depth) + 64) as u32,
            poll_mode: spec.mode.poll_mode(),
        },
    )?;
    let options = UdOptions {
        qkey: DEFAULT_QKEY,
        queues: QpOptions {
            max_send_wr: send_depth as u32,
            max_recv_wr: recv_depth as u32,
            max_send_sge: 1,
            max_recv_sge: 3,
            max_inline: spec.inline,
            ..QpOptions::default()
        },
    };
    let qps = (0..spec.qps)
        .map(|_| UdQueuePair::new(&pd, &cq, &cq, options))
        .collect::<Result<Vec<_>, _>>()?;
    if spec.size > qps[0].max_datagram() {
        return Err(format!(
            "{}: {} B datagrams do not fit the port's MTU ({} B)",
            spec.test.name(),
            spec.size,
            qps[0].max_datagram()
        )
        .into());
    }
    let mut mine = Vec::new();
    for qp in &qps {
        mine.extend_from_slice(&encode(&qp.address()));
    }
    send_all(ctl, &mine)?;
    let mut peers = Vec::new();
    for qp in &qps {
        let theirs = decode(&recv_exact::<ADDRESS_LEN>(ctl)?);
        peers.push(
            qp.peer(&theirs)
                .map_err(step("the peer's address handle"))?,
        );
    }
    Ok(Ud {
        pd,
        qps,
        peers,
        _cq: cq,
    })
}

/// Posts perftest's receives for one queue pair: `min(iters, 16000)` of them, each of the
/// largest datagram.
fn post_receives(ud: &Ud, q: usize, iters: usize) -> Res<VecDeque<UdRecv<LocalBuf>>> {
    let qp = &ud.qps[q];
    let n = iters.clamp(1, MAX_RX);
    Ok(pool(&ud.pd, qp.max_datagram(), n)?
        .into_iter()
        .map(|buf| qp.recv(buf))
        .collect())
}

/// Awaits the oldest receive of `posted`, checks it is a datagram of `size` bytes and posts
/// its buffer again while fewer than `iters` receives were posted (`*count` of them).
async fn take(
    qp: &UdQueuePair,
    posted: &mut VecDeque<UdRecv<LocalBuf>>,
    count: &mut usize,
    iters: usize,
    size: usize,
) -> Res<()> {
    let next = posted.pop_front().ok_or("no receive posted")?;
    let (got, buf) = next.await;
    let got = got?;
    if got.len != size {
        return Err(format!("a datagram of {} bytes, {size} expected", got.len).into());
    }
    if *count < iters {
        posted.push_back(qp.recv(buf));
        *count += 1;
    }
    Ok(())
}

/// `future`, given up after `patience`, with what the side was waiting for in the error
/// (one timer for the whole loop, not one per datagram).
async fn patiently<T>(
    ctx: &Context,
    patience: Duration,
    what: &str,
    future: impl Future<Output = Res<T>>,
) -> Res<T> {
    let waited = match ctx.runtime() {
        Some(rt) => rt.timeout(patience, future).await,
        None => anyrdma::timeout(patience, future).await,
    };
    waited.map_err(|_| format!("{what}: nothing after {patience:?} (a datagram lost?)"))?
}

/// One datagram measurement; the client returns the figures.
pub async fn measure(
    ctx: &Context,
    spec: &Spec,
    client: bool,
    ctl: &mut TcpStream,
) -> Res<Outcome> {
    let ud = setup(ctx, spec, ctl)?;
    let outcome = match spec.test {
        Test::UdSendLat => latency(&lat(&ud, spec, client, ctl).await?, true),
        Test::UdSendRate => match rate_run(ctx, &ud, spec, client, ctl).await? {
            Some(elapsed) => rate(spec.iters * spec.qps, spec.size, elapsed),
            None => Outcome::default(),
        },
        _ => unreachable!("only datagram rows come here"),
    };
    // The peer keeps its queue pairs until both sides are done.
    barrier(ctl)?;
    drop(ud);
    Ok(outcome)
}

async fn lat(ud: &Ud, spec: &Spec, client: bool, ctl: &mut TcpStream) -> Res<Vec<Instant>> {
    let (qp, peer) = (&ud.qps[0], &ud.peers[0]);
    let mut posted = post_receives(ud, 0, spec.iters)?;
    let mut count = posted.len();
    let mut message = ud.pd.alloc(spec.size, Access::LOCAL)?;
    message.fill(0x5a);
    let mut sbuf = Some(message);
    let mut stamps = Vec::with_capacity(spec.iters + 1);
    let pacing = Pacing::from_env();
    // Both sides' receives are posted before either sends.
    barrier(ctl)?;
    // No deadline around the timed loop (as in perftest and the RC rows: nothing but the
    // ping-pong is polled); whoever runs the measurement bounds it.
    for _ in 0..spec.iters {
        if client {
            stamps.push(Instant::now());
            // Posted and awaited, as perftest waits for each send's completion.
            let buf = sbuf.take().expect("buffer back");
            let (sent, buf) = qp.send_to(buf, peer).await;
            sent?;
            sbuf = Some(buf);
            pacing.after_client_post();
        }
        take(qp, &mut posted, &mut count, spec.iters, spec.size).await?;
        if !client {
            pacing.before_server_reply();
            let buf = sbuf.take().expect("buffer back");
            let (sent, buf) = qp.send_to(buf, peer).await;
            sent?;
            sbuf = Some(buf);
        }
    }
    stamps.push(Instant::now());
    drop(posted); // the receives left stay posted; released when the queue pair goes
    Ok(stamps)
}

async fn rate_run(
    ctx: &Context,
    ud: &Ud,
    spec: &Spec,
    client: bool,
    ctl: &mut TcpStream,
) -> Res<Option<Duration>> {
    let total = spec.iters * spec.qps;
    if !client {
        // Receives posted up front on every queue pair; each datagram taken as it comes.
        let mut posted = Vec::new();
        for q in 0..spec.qps {
            posted.push(post_receives(ud, q, spec.iters)?);
        }
        let mut counts: Vec<usize> = posted.iter().map(VecDeque::len).collect();
        barrier(ctl)?;
        let mut got = 0;
        let patience = PATIENCE + Duration::from_micros(100 * total as u64);
        let taken = patiently(ctx, patience, "ud_send_rate", async {
            // In the order they arrive on one queue pair; round robin over the queue pairs,
            // which the client serves alike.
            while got < total {
                let q = got % spec.qps;
                take(
                    &ud.qps[q],
                    &mut posted[q],
                    &mut counts[q],
                    spec.iters,
                    spec.size,
                )
                .await?;
                got += 1;
            }
            Ok(())
        })
        .await;
        if let Err(err) = taken {
            // The client's figure is its own sending rate (perftest's): a loss is reported,
            // not fatal.
            eprintln!(
                "anyrdma-perf server: ud_send_rate: {got} of {total} datagrams arrived ({err})"
            );
        }
        return Ok(None);
    }
    let window = spec.window.max(1);
    let mut pools: Vec<Vec<LocalBuf>> = Vec::new();
    for _ in 0..spec.qps {
        let mut bufs = pool(&ud.pd, spec.size, window)?;
        for b in &mut bufs {
            b.fill(0xa5);
        }
        pools.push(bufs);
    }
    let mut sent = vec![0usize; spec.qps];
    let mut queue: VecDeque<(usize, anyrdma::ud::UdSend<LocalBuf>)> = VecDeque::new();
    let post = |q: usize, buf: LocalBuf| ud.qps[q].send_to(buf, &ud.peers[q]);
    barrier(ctl)?;
    let start = Instant::now();
    // The first window on every queue pair, then one more per completion.
    loop {
        let mut more = false;
        for q in 0..spec.qps {
            if sent[q] < spec.iters {
                if let Some(buf) = pools[q].pop() {
                    queue.push_back((q, post(q, buf)));
                    sent[q] += 1;
                    more = true;
                }
            }
        }
        if !more {
            break;
        }
    }
    while let Some((q, op)) = queue.pop_front() {
        let (res, buf) = op.await;
        res?;
        if sent[q] < spec.iters {
            queue.push_back((q, post(q, buf)));
            sent[q] += 1;
        }
    }
    Ok(Some(start.elapsed()))
}
