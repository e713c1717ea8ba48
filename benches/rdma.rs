//! anyrdma benchmarks, measured the way perftest measures: two processes (server and client)
//! that exchange queue pair endpoints and remote regions over TCP, then run RC operations.
//!
//! ```text
//! cargo bench --bench rdma --all-features -- [OPTIONS]
//! target/release/deps/rdma-<hash> [OPTIONS]
//! ```
//!
//! Without `--role`, the program starts its own server (a child process, same options) for
//! each runtime and poll mode, and runs the client. Options (lists are comma separated):
//!
//! * `--device NAME` (default `$ANYRDMA_DEVICE`, else the first active port)
//! * `--runtime tokio-ct,tokio-mt,async-std,smol,raw` (`raw`: rdma-sys directly, a plain loop)
//! * `--mode busy,event` (`PollMode::Busy` / `PollMode::Event { spin: 0 }`)
//! * `--tests write_lat,write_imm_lat,send_lat,read_lat,write_rate,send_rate` or `lat`, `rate`
//! * `--sizes 8,64,512,4096,65536` (latency), `--iters N` (latency round trips per size)
//! * `--rate-iters N` (messages per QP), `--rate-sizes 64,65536`, `--qps 1,4,16`,
//!   `--batch 1,16` (work requests per doorbell, only the last signaled), `--window 128`
//!   (work requests in flight per QP)
//! * `--inline N` (largest inline send/write: 0 for none), `--json FILE` (append one JSON
//!   object per line), `--addr 127.0.0.1:18515`, `--smoke` (few iterations)
//!
//! Tests:
//! * `write_lat`: perftest's `ib_write_lat`: each side RDMA-writes `size` bytes to the other
//!   and spins on the last byte of its own buffer until the peer's write lands. Busy only
//!   (memory polling has no event).
//! * `write_imm_lat`: ping-pong of `write_with_imm`, each side waiting on its receive
//!   completion: the write latency as an event-driven program sees it.
//! * `send_lat`: ping-pong of send / recv (`ib_send_lat`).
//! * `read_lat`: the client reads `size` bytes and waits for the completion (`ib_read_lat`;
//!   the figure is the whole round trip, as perftest reports it).
//! * `write_rate`, `send_rate`: the client keeps `window` work requests in flight on each
//!   of `qps` queue pairs (one CQ, one task), `batch` per doorbell; messages per second and
//!   MB/s (`ib_write_bw`, `ib_send_bw`; 64 KiB writes give the bandwidth).
//! * `msg_lat`, `msg_rate`: the same over `anyrdma::msg::Messenger` (benches/rdma/messaging.rs),
//!   sizes `--msg-lat-sizes 64,1048576` and `--msg-rate-sizes 64,1048576,16777216`, with
//!   `--senders 1,16` concurrent senders for the sizes up to 4 KiB. Not for `raw`.
//! * `stream_bw`, `stream_lat`: `anyrdma::stream::RdmaStream` (benches/rdma/streaming.rs):
//!   `--stream-bw-size 1048576` writes (`--stream-bw-iters N` of them; by default as many as
//!   `msg_rate` sends of that size) and a `--stream-lat-size 64` request/response; `cm_msg_bw`, `cm_msg_lat`: the messenger the
//!   stream is built on, over the same rdma_cm connection; these four connect through
//!   rdma_cm at `--cm-addr IP` (an RDMA interface's address; skipped without it).
//!   `tcp_bw`, `tcp_lat`: the same loops over the runtime's TCP on 127.0.0.1, in event mode
//!   only (orientation: the kernel's loopback, not a NIC). `stream_owned_bw`: `stream_bw`
//!   with `RdmaStream::write_owned` (no copy: the peer reads the writer's own buffer, which
//!   comes back once read) instead of `write_all`. `--tests stream` runs all seven.
//!   Not for `raw`.
//! * `ud_send_lat`, `ud_send_rate`: unreliable datagrams (`anyrdma::ud`, benches/rdma/datagrams.rs),
//!   as perftest's `ib_send_lat -c UD` and `ib_send_bw -c UD`: sizes `--ud-sizes 8,64,512,4096`
//!   (at most the port's MTU) and the rate of `--ud-rate-size 64` datagrams on `--ud-qps 1,4`
//!   queue pairs (`--rate-iters` per queue pair). `--tests ud` runs both. Not for `raw`.
//!
//! Latency is half the round trip (except reads): median and 99th percentile of the
//! per-iteration times, in microseconds, as perftest's `t_typical` and `99% percentile`.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyrdma::core::{CompletionQueue, Op, QueuePair};
use anyrdma::{
    Access, ConnectOptions, Context, CqOptions, Done, Endpoint, LocalBuf, PollMode,
    ProtectionDomain, QpOptions, Recv, RemoteRegion, SharedRegion,
};

#[path = "rdma/datagrams.rs"]
mod datagrams;
#[path = "rdma/messaging.rs"]
mod messaging;
#[path = "rdma/streaming.rs"]
mod streaming;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

// ------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    WriteLat,
    WriteImmLat,
    SendLat,
    ReadLat,
    WriteRate,
    SendRate,
    MsgLat,
    MsgRate,
    StreamBw,
    StreamLat,
    CmMsgBw,
    CmMsgLat,
    TcpBw,
    TcpLat,
    StreamOwnedBw,
    UdSendLat,
    UdSendRate,
}

impl Test {
    const ALL: [Test; 17] = [
        Test::WriteLat,
        Test::WriteImmLat,
        Test::SendLat,
        Test::ReadLat,
        Test::WriteRate,
        Test::SendRate,
        Test::MsgLat,
        Test::MsgRate,
        Test::StreamBw,
        Test::StreamLat,
        Test::CmMsgBw,
        Test::CmMsgLat,
        Test::TcpBw,
        Test::TcpLat,
        Test::StreamOwnedBw,
        Test::UdSendLat,
        Test::UdSendRate,
    ];

    fn name(self) -> &'static str {
        match self {
            Test::WriteLat => "write_lat",
            Test::WriteImmLat => "write_imm_lat",
            Test::SendLat => "send_lat",
            Test::ReadLat => "read_lat",
            Test::WriteRate => "write_rate",
            Test::SendRate => "send_rate",
            Test::MsgLat => "msg_lat",
            Test::MsgRate => "msg_rate",
            Test::StreamBw => "stream_bw",
            Test::StreamLat => "stream_lat",
            Test::CmMsgBw => "cm_msg_bw",
            Test::CmMsgLat => "cm_msg_lat",
            Test::TcpBw => "tcp_bw",
            Test::TcpLat => "tcp_lat",
            Test::StreamOwnedBw => "stream_owned_bw",
            Test::UdSendLat => "ud_send_lat",
            Test::UdSendRate => "ud_send_rate",
        }
    }

    fn is_rate(self) -> bool {
        matches!(self, Test::WriteRate | Test::SendRate)
    }

    /// Over the messaging layer rather than single operations.
    fn is_msg(self) -> bool {
        matches!(self, Test::MsgLat | Test::MsgRate)
    }

    /// A row of the byte stream's comparison (benches/rdma/streaming.rs): connected by
    /// rdma_cm or TCP, not by the endpoint exchange.
    fn is_stream(self) -> bool {
        matches!(
            self,
            Test::StreamBw
                | Test::StreamOwnedBw
                | Test::StreamLat
                | Test::CmMsgBw
                | Test::CmMsgLat
                | Test::TcpBw
                | Test::TcpLat
        )
    }

    /// Over unreliable datagrams (benches/rdma/datagrams.rs).
    fn is_ud(self) -> bool {
        matches!(self, Test::UdSendLat | Test::UdSendRate)
    }

    /// Over rdma_cm, so only with `--cm-addr`.
    fn needs_cm(self) -> bool {
        self.is_stream() && !matches!(self, Test::TcpBw | Test::TcpLat)
    }

    /// A stream row measured in MB/s (the others are round trips).
    fn is_bw(self) -> bool {
        matches!(
            self,
            Test::StreamBw | Test::StreamOwnedBw | Test::CmMsgBw | Test::TcpBw
        )
    }

    fn code(self) -> u8 {
        Test::ALL.iter().position(|t| *t == self).expect("listed") as u8
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rt {
    TokioCt,
    TokioMt,
    AsyncStd,
    Smol,
    Raw,
}

impl Rt {
    fn name(self) -> &'static str {
        match self {
            Rt::TokioCt => "tokio-ct",
            Rt::TokioMt => "tokio-mt",
            Rt::AsyncStd => "async-std",
            Rt::Smol => "smol",
            Rt::Raw => "raw",
        }
    }

    fn parse(s: &str) -> Res<Rt> {
        Ok(match s {
            "tokio-ct" => Rt::TokioCt,
            "tokio-mt" => Rt::TokioMt,
            "async-std" => Rt::AsyncStd,
            "smol" => Rt::Smol,
            "raw" => Rt::Raw,
            _ => return Err(format!("unknown runtime {s}").into()),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Busy,
    Event,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Busy => "busy",
            Mode::Event => "event",
        }
    }

    fn poll_mode(self) -> PollMode {
        match self {
            Mode::Busy => PollMode::Busy,
            Mode::Event => PollMode::Event { spin: 0 },
        }
    }
}

#[derive(Debug, Clone)]
struct Opts {
    role: Option<bool>, // Some(true): server
    addr: String,
    device: Option<String>,
    runtimes: Vec<Rt>,
    modes: Vec<Mode>,
    tests: Vec<Test>,
    sizes: Vec<usize>,
    iters: usize,
    rate_iters: usize,
    rate_sizes: Vec<usize>,
    qps: Vec<usize>,
    batches: Vec<usize>,
    window: usize,
    inline: u32,
    msg_lat_sizes: Vec<usize>,
    msg_rate_sizes: Vec<usize>,
    senders: Vec<usize>,
    cm_addr: Option<std::net::IpAddr>,
    stream_bw_size: usize,
    stream_bw_iters: Option<usize>,
    stream_lat_size: usize,
    ud_sizes: Vec<usize>,
    ud_rate_size: usize,
    ud_qps: Vec<usize>,
    json: Option<String>,
}

fn list<T>(s: &str, f: impl Fn(&str) -> Res<T>) -> Res<Vec<T>> {
    s.split(',').filter(|x| !x.is_empty()).map(f).collect()
}

fn parse_opts() -> Res<Opts> {
    let mut o = Opts {
        role: None,
        addr: "127.0.0.1:18515".into(),
        device: std::env::var(anyrdma::DEVICE_ENV).ok(),
        runtimes: vec![Rt::TokioCt, Rt::TokioMt, Rt::AsyncStd, Rt::Smol, Rt::Raw],
        modes: vec![Mode::Busy, Mode::Event],
        tests: Test::ALL.to_vec(),
        sizes: vec![8, 64, 512, 4096, 65536],
        iters: 1000,
        rate_iters: 20000,
        rate_sizes: vec![64, 65536],
        qps: vec![1, 4, 16],
        batches: vec![1, 16],
        window: 128,
        inline: 64,
        msg_lat_sizes: vec![64, 1 << 20],
        msg_rate_sizes: vec![64, 1 << 20, 16 << 20],
        senders: vec![1, 16],
        cm_addr: None,
        stream_bw_size: 1 << 20,
        stream_bw_iters: None,
        stream_lat_size: 64,
        ud_sizes: vec![8, 64, 512, 4096],
        ud_rate_size: 64,
        ud_qps: vec![1, 4],
        json: None,
    };
    let mut args = std::env::args().skip(1);
    let num = |v: &str| -> Res<usize> { Ok(v.parse::<usize>()?) };
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--bench" => {}
            "--role" => o.role = Some(val()? == "server"),
            "--addr" => o.addr = val()?,
            "--device" => o.device = Some(val()?),
            "--runtime" => o.runtimes = list(&val()?, Rt::parse)?,
            "--mode" => {
                o.modes = list(&val()?, |m| match m {
                    "busy" => Ok(Mode::Busy),
                    "event" => Ok(Mode::Event),
                    _ => Err(format!("unknown mode {m}").into()),
                })?
            }
            "--tests" => {
                let mut tests = Vec::new();
                for t in val()?.split(',') {
                    match t {
                        "lat" => tests.extend(Test::ALL.iter().filter(|t| {
                            !t.is_rate() && !t.is_msg() && !t.is_stream() && !t.is_ud()
                        })),
                        "rate" => tests.extend(Test::ALL.iter().filter(|t| t.is_rate())),
                        "msg" => tests.extend(Test::ALL.iter().filter(|t| t.is_msg())),
                        "stream" => tests.extend(Test::ALL.iter().filter(|t| t.is_stream())),
                        "ud" => tests.extend(Test::ALL.iter().filter(|t| t.is_ud())),
                        _ => tests.push(
                            *Test::ALL
                                .iter()
                                .find(|x| x.name() == t)
                                .ok_or_else(|| format!("unknown test {t}"))?,
                        ),
                    }
                }
                o.tests = tests;
            }
            "--sizes" => o.sizes = list(&val()?, num)?,
            "--iters" => o.iters = num(&val()?)?,
            "--rate-iters" => o.rate_iters = num(&val()?)?,
            "--rate-sizes" => o.rate_sizes = list(&val()?, num)?,
            "--qps" => o.qps = list(&val()?, num)?,
            "--batch" => o.batches = list(&val()?, num)?,
            "--window" => o.window = num(&val()?)?,
            "--inline" => o.inline = num(&val()?)? as u32,
            "--msg-lat-sizes" => o.msg_lat_sizes = list(&val()?, num)?,
            "--msg-rate-sizes" => o.msg_rate_sizes = list(&val()?, num)?,
            "--senders" => o.senders = list(&val()?, num)?,
            "--cm-addr" => o.cm_addr = Some(val()?.parse()?),
            "--stream-bw-size" => o.stream_bw_size = num(&val()?)?,
            "--stream-bw-iters" => o.stream_bw_iters = Some(num(&val()?)?),
            "--stream-lat-size" => o.stream_lat_size = num(&val()?)?,
            "--ud-sizes" => o.ud_sizes = list(&val()?, num)?,
            "--ud-rate-size" => o.ud_rate_size = num(&val()?)?,
            "--ud-qps" => o.ud_qps = list(&val()?, num)?,
            "--json" => o.json = Some(val()?),
            "--smoke" => {
                o.iters = 200;
                o.rate_iters = 1000;
            }
            "-h" | "--help" => {
                println!("see the documentation at the top of benches/rdma.rs");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown option {a}").into()),
        }
    }
    Ok(o)
}

// ------------------------------------------------------------------------------------------
// One measurement, as the client asks the server for it.

#[derive(Debug, Clone, Copy)]
struct Spec {
    test: Test,
    size: usize,
    iters: usize,
    qps: usize,
    batch: usize,
    window: usize,
    inline: u32,
    /// Concurrent senders (`msg_rate`).
    senders: usize,
}

impl Spec {
    const LEN: usize = 29;

    fn encode(&self) -> [u8; Spec::LEN] {
        let mut b = [0u8; Spec::LEN];
        b[0] = self.test.code();
        for (i, v) in [
            self.size,
            self.iters,
            self.qps,
            self.batch,
            self.window,
            self.inline as usize,
            self.senders,
        ]
        .iter()
        .enumerate()
        {
            b[1 + 4 * i..5 + 4 * i].copy_from_slice(&(*v as u32).to_le_bytes());
        }
        b
    }

    fn decode(b: &[u8; Spec::LEN]) -> Spec {
        let v = |i: usize| u32::from_le_bytes(b[1 + 4 * i..5 + 4 * i].try_into().unwrap());
        Spec {
            test: Test::ALL[b[0] as usize],
            size: v(0) as usize,
            iters: v(1) as usize,
            qps: v(2) as usize,
            batch: v(3) as usize,
            window: v(4) as usize,
            inline: v(5),
            senders: v(6) as usize,
        }
    }
}

/// A result row.
#[derive(Debug, Clone, Copy, Default)]
struct Outcome {
    median_us: Option<f64>,
    p99_us: Option<f64>,
    mmsg_s: Option<f64>,
    mb_s: Option<f64>,
}

fn latency(stamps: &[Instant], halve: bool) -> Outcome {
    let div = if halve { 2.0 } else { 1.0 };
    let mut lat: Vec<f64> = stamps
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e6 / div)
        .collect();
    if lat.is_empty() {
        return Outcome::default();
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[(((lat.len() - 1) as f64) * p).round() as usize];
    Outcome {
        median_us: Some(pct(0.5)),
        p99_us: Some(pct(0.99)),
        ..Outcome::default()
    }
}

fn rate(msgs: usize, size: usize, elapsed: Duration) -> Outcome {
    let s = elapsed.as_secs_f64();
    Outcome {
        mmsg_s: Some(msgs as f64 / s / 1e6),
        mb_s: Some((msgs * size) as f64 / s / 1e6),
        ..Outcome::default()
    }
}

// ------------------------------------------------------------------------------------------
// Control channel (blocking TCP; used only between measurements).

fn send_all(ctl: &mut TcpStream, b: &[u8]) -> Res<()> {
    ctl.write_all(b)?;
    Ok(())
}

fn recv_exact<const N: usize>(ctl: &mut TcpStream) -> Res<[u8; N]> {
    let mut b = [0u8; N];
    ctl.read_exact(&mut b)?;
    Ok(b)
}

/// Both sides call it: returns once the other side called it too.
fn barrier(ctl: &mut TcpStream) -> Res<()> {
    send_all(ctl, b"B")?;
    let [b] = recv_exact::<1>(ctl)?;
    if b != b'B' {
        return Err(format!("control channel out of step (got {b})").into());
    }
    Ok(())
}

/// Sends this side's endpoints and target region, returns the peer's.
fn exchange(
    ctl: &mut TcpStream,
    mine: &[Endpoint],
    target: RemoteRegion,
) -> Res<(Vec<Endpoint>, RemoteRegion)> {
    let mut out = Vec::new();
    for e in mine {
        out.extend_from_slice(&e.to_bytes());
    }
    out.extend_from_slice(&target.to_bytes());
    send_all(ctl, &out)?;
    let mut peers = Vec::new();
    for _ in mine {
        let bytes = recv_exact::<{ Endpoint::ENCODED_LEN }>(ctl)?;
        peers.push(Endpoint::from_bytes(&bytes)?);
    }
    let bytes = recv_exact::<{ RemoteRegion::ENCODED_LEN }>(ctl)?;
    let region = RemoteRegion::from_bytes(&bytes)?;
    Ok((peers, region))
}

/// Names the step of a measurement an error comes from.
fn step<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> BoxError {
    move |err| format!("{what}: {err}").into()
}

fn tag(i: usize) -> u8 {
    (i % 255 + 1) as u8
}

/// Spins until the byte at `p` equals `want` (the peer's RDMA write landed).
fn spin_until(addr: usize, want: u8) {
    let p = addr as *const u8;
    // SAFETY: `p` points into a registered buffer that lives for the whole test; the device
    // writes it concurrently, hence the volatile read.
    while unsafe { std::ptr::read_volatile(p) } != want {
        std::hint::spin_loop();
    }
}

// ------------------------------------------------------------------------------------------
// anyrdma, generic over the runtime.

struct Side {
    pd: ProtectionDomain,
    qps: Vec<QueuePair>,
    target: SharedRegion,
    remote: RemoteRegion,
    _cq: CompletionQueue,
}

fn setup(ctx: &Context, mode: Mode, spec: &Spec, ctl: &mut TcpStream) -> Res<Side> {
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
            poll_mode: mode.poll_mode(),
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

async fn lat_write(s: &Side, spec: &Spec, client: bool, ctl: &mut TcpStream) -> Res<Vec<Instant>> {
    let qp = &s.qps[0];
    // An address, not a pointer, so the future stays Send.
    let last = s.target.addr() as usize + spec.size - 1;
    let mut sbuf = Some(s.pd.alloc(spec.size, Access::LOCAL)?);
    let mut pending: Option<Op<LocalBuf, Done>> = None;
    let mut stamps = Vec::with_capacity(spec.iters + 1);
    barrier(ctl)?;
    for i in 0..spec.iters {
        if !client {
            spin_until(last, tag(i));
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
            spin_until(last, tag(i));
        }
    }
    stamps.push(Instant::now());
    if let Some(op) = pending.take() {
        done(op).await?;
    }
    Ok(stamps)
}

/// Ping-pong of sends (`imm == false`) or writes with immediate data, each side waiting on
/// its receive completion.
async fn lat_msg(
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

/// Fixed pauses that make the instruction count of a ping-pong independent of timing, for
/// callgrind (`ANYRDMA_BENCH_PACE=server|client`, 2 ms): `server` delays every reply, so the
/// client always finds nothing and sleeps (the event-mode path through the runtime); `client`
/// pauses after each post, so the reply is there at the first poll (no empty polls).
#[derive(Clone, Copy)]
enum Pacing {
    None,
    Server,
    Client,
}

impl Pacing {
    const PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

    fn from_env() -> Pacing {
        match std::env::var("ANYRDMA_BENCH_PACE").as_deref() {
            Ok("server") => Pacing::Server,
            Ok("client") => Pacing::Client,
            _ => Pacing::None,
        }
    }

    fn after_client_post(self) {
        if let Pacing::Client = self {
            std::thread::sleep(Self::PAUSE);
        }
    }

    fn before_server_reply(self) {
        if let Pacing::Server = self {
            std::thread::sleep(Self::PAUSE);
        }
    }
}

async fn lat_read(s: &Side, spec: &Spec, client: bool, ctl: &mut TcpStream) -> Res<Vec<Instant>> {
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
fn pool(pd: &ProtectionDomain, size: usize, n: usize) -> Res<Vec<LocalBuf>> {
    let mut all = pd.alloc(size * n, Access::LOCAL)?;
    let mut out = Vec::with_capacity(n);
    for _ in 1..n {
        let rest = all.split_off(size);
        out.push(std::mem::replace(&mut all, rest));
    }
    out.push(all);
    Ok(out)
}

async fn rate_run(
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

/// One measurement with anyrdma on the runtime `ctx` is bound to; the client returns the result.
async fn measure(
    ctx: Context,
    rt: Rt,
    mode: Mode,
    spec: Spec,
    client: bool,
    mut ctl: TcpStream,
    cm: Option<std::net::IpAddr>,
) -> Res<(Outcome, TcpStream)> {
    if spec.test.is_ud() {
        let outcome = datagrams::measure(&ctx, mode, &spec, client, &mut ctl).await?;
        return Ok((outcome, ctl));
    }
    if spec.test.is_stream() {
        // It keeps the connection until both sides are done.
        let outcome = streaming::measure(&ctx, rt, mode, &spec, client, &mut ctl, cm).await?;
        return Ok((outcome, ctl));
    }
    let side = setup(&ctx, mode, &spec, &mut ctl)?;
    let outcome = match spec.test {
        Test::WriteLat => latency(&lat_write(&side, &spec, client, &mut ctl).await?, true),
        Test::WriteImmLat => latency(&lat_msg(&side, &spec, client, true, &mut ctl).await?, true),
        Test::SendLat => latency(&lat_msg(&side, &spec, client, false, &mut ctl).await?, true),
        Test::ReadLat => latency(&lat_read(&side, &spec, client, &mut ctl).await?, false),
        Test::WriteRate | Test::SendRate => match rate_run(&side, &spec, client, &mut ctl).await? {
            Some(elapsed) => rate(spec.iters * spec.qps, spec.size, elapsed),
            None => Outcome::default(),
        },
        Test::MsgLat => latency(
            &messaging::msg_lat(&side, &spec, client, &mut ctl).await?,
            true,
        ),
        Test::MsgRate => match messaging::msg_rate(&side, &spec, client, &mut ctl).await? {
            Some(elapsed) => rate(spec.iters, spec.size, elapsed),
            None => Outcome::default(),
        },
        _ => unreachable!("stream rows are measured above"),
    };
    // The peer keeps its QPs until both sides are done.
    barrier(&mut ctl)?;
    drop(side);
    Ok((outcome, ctl))
}

/// Runs `measure` for the runtime `rt` on a fresh executor.
fn run_on(
    rt: Rt,
    ctx: Context,
    mode: Mode,
    spec: Spec,
    client: bool,
    ctl: TcpStream,
    cm: Option<std::net::IpAddr>,
) -> Res<(Outcome, TcpStream)> {
    let ctx = match rt {
        Rt::TokioCt | Rt::TokioMt => ctx.with_runtime(anyrdma::runtime::Tokio),
        Rt::AsyncStd => ctx.with_runtime(anyrdma::runtime::AsyncStd),
        Rt::Smol => ctx.with_runtime(anyrdma::runtime::Smol),
        Rt::Raw => ctx,
    };
    match rt {
        Rt::TokioCt => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(measure(ctx, rt, mode, spec, client, ctl, cm)),
        Rt::TokioMt => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                tokio::spawn(measure(ctx, rt, mode, spec, client, ctl, cm)).await?
            })
        }
        Rt::AsyncStd => async_std::task::block_on(measure(ctx, rt, mode, spec, client, ctl, cm)),
        Rt::Smol => smol::block_on(measure(ctx, rt, mode, spec, client, ctl, cm)),
        Rt::Raw => raw::measure(&ctx, mode, spec, client, ctl),
    }
}

// ------------------------------------------------------------------------------------------
// Raw verbs: rdma-sys directly, a plain loop, for the library's overhead.

mod raw {
    use super::*;
    use rdma_sys::*;
    use std::ptr::null_mut;

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
                    (M::IBV_QP_STATE
                        | M::IBV_QP_PKEY_INDEX
                        | M::IBV_QP_PORT
                        | M::IBV_QP_ACCESS_FLAGS)
                        .0 as i32,
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
            let layout =
                std::alloc::Layout::from_size_align(len.max(8).div_ceil(4096) * 4096, 4096)?;
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

    impl Drop for Raw {
        fn drop(&mut self) {
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

    pub(super) fn measure(
        actx: &Context,
        mode: Mode,
        spec: Spec,
        client: bool,
        mut ctl: TcpStream,
    ) -> Res<(Outcome, TcpStream)> {
        if spec.test.is_rate() || spec.qps != 1 {
            return Err(
                "raw verbs mode measures latency only (perftest gives the raw rates)".into(),
            );
        }
        // SAFETY: plain verbs calls on objects this function owns; buffers outlive the QP use.
        unsafe {
            let mut r = Raw::open(actx, mode == Mode::Event, spec.inline)?;
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
                            spin_until(last, tag(i));
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
                            spin_until(last, tag(i));
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
                    _ => unreachable!("rates are refused above"),
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
}

// ------------------------------------------------------------------------------------------
// Driver

fn open_ctx(o: &Opts) -> Res<Context> {
    Ok(match &o.device {
        Some(d) => Context::open(d)?,
        None => Context::open_default()?,
    })
}

fn server(o: &Opts, rt: Rt, mode: Mode) -> Res<()> {
    let ctx = open_ctx(o)?;
    let listener = TcpListener::bind(&o.addr)?;
    let (mut ctl, _) = listener.accept()?;
    ctl.set_nodelay(true)?;
    loop {
        let [cmd] = recv_exact::<1>(&mut ctl)?;
        if cmd == b'E' {
            return Ok(());
        }
        let spec = Spec::decode(&recv_exact::<{ Spec::LEN }>(&mut ctl)?);
        let (_, back) = run_on(rt, ctx.clone(), mode, spec, false, ctl, o.cm_addr)?;
        ctl = back;
    }
}

fn connect_ctl(addr: &str) -> Res<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn specs(o: &Opts, rt: Rt, mode: Mode) -> Vec<Spec> {
    let mut out = Vec::new();
    for &test in &o.tests {
        // Memory polling has no event mode; raw verbs measure latency only.
        if (test == Test::WriteLat && mode == Mode::Event)
            || (rt == Rt::Raw
                && (test.is_rate() || test.is_msg() || test.is_stream() || test.is_ud()))
            // TCP has no poll mode: one pass is enough.
            || (matches!(test, Test::TcpBw | Test::TcpLat) && mode == Mode::Busy)
            || (test.needs_cm() && o.cm_addr.is_none())
        {
            continue;
        }
        let base = Spec {
            test,
            size: 0,
            iters: o.iters,
            qps: 1,
            batch: 1,
            window: o.window,
            inline: o.inline,
            senders: 1,
        };
        if test == Test::UdSendLat {
            for &size in &o.ud_sizes {
                out.push(Spec { size, ..base });
            }
            continue;
        }
        if test == Test::UdSendRate {
            for &qps in &o.ud_qps {
                out.push(Spec {
                    size: o.ud_rate_size,
                    iters: o.rate_iters,
                    qps,
                    ..base
                });
            }
            continue;
        }
        if test == Test::MsgLat {
            for &size in &o.msg_lat_sizes {
                // Large messages go by rendezvous: a registration each, far slower.
                let iters = if size > 65536 {
                    (o.iters / 10).max(20)
                } else {
                    o.iters
                };
                out.push(Spec {
                    size,
                    iters,
                    ..base
                });
            }
            continue;
        }
        if test.is_stream() {
            out.push(if test.is_bw() {
                // By default as many bytes as msg_rate sends at that size, so that the rows
                // compare; the stream and messenger rows always move the same.
                let size = o.stream_bw_size;
                Spec {
                    size,
                    iters: o.stream_bw_iters.unwrap_or_else(|| {
                        (o.rate_iters / 10).min((256 << 20) / size.max(1)).max(8)
                    }),
                    ..base
                }
            } else {
                Spec {
                    size: o.stream_lat_size,
                    ..base
                }
            });
            continue;
        }
        if test == Test::MsgRate {
            for &size in &o.msg_rate_sizes {
                // About 256 MiB per large size at most.
                let iters = if size > 4096 {
                    (o.rate_iters / 10).min((256 << 20) / size).max(8)
                } else {
                    o.rate_iters
                };
                for &senders in &o.senders {
                    if senders > 1 && size > 4096 {
                        continue;
                    }
                    out.push(Spec {
                        size,
                        iters,
                        senders,
                        ..base
                    });
                }
            }
            continue;
        }
        if !test.is_rate() {
            for &size in &o.sizes {
                out.push(Spec { size, ..base });
            }
            continue;
        }
        for &size in &o.rate_sizes {
            let iters = if size > 4096 {
                (o.rate_iters / 10).max(100)
            } else {
                o.rate_iters
            };
            for &qps in &o.qps {
                for &batch in &o.batches {
                    // Batching is measured on one QP; bandwidth (large sizes) on one QP, unbatched.
                    if (batch > 1 && qps > 1) || (size > 4096 && (qps > 1 || batch > 1)) {
                        continue;
                    }
                    out.push(Spec {
                        size,
                        // Whole batches only, so both sides agree on the message count.
                        iters: (iters / batch).max(1) * batch,
                        qps,
                        batch,
                        ..base
                    });
                }
            }
        }
    }
    out
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.prec$}"))
}

fn json_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "null".into(), |x| format!("{x:.4}"))
}

fn client(o: &Opts, rt: Rt, mode: Mode, json: &mut Option<std::fs::File>) -> Res<()> {
    let ctx = open_ctx(o)?;
    let mut ctl = connect_ctl(&o.addr)?;
    for spec in specs(o, rt, mode) {
        send_all(&mut ctl, b"S")?;
        send_all(&mut ctl, &spec.encode())?;
        let (out, back) = run_on(rt, ctx.clone(), mode, spec, true, ctl, o.cm_addr)?;
        ctl = back;
        println!(
            "{:<8} {:<9} {:<5} {:<13} {:>6} {:>3} {:>3} {:>6} | {:>9} {:>9} | {:>8} {:>9}",
            "anyrdma",
            rt.name(),
            mode.name(),
            spec.test.name(),
            spec.size,
            spec.qps,
            // Messaging rows have no batches: their senders take the column.
            if spec.test.is_msg() {
                spec.senders
            } else {
                spec.batch
            },
            spec.iters,
            fmt_opt(out.median_us, 2),
            fmt_opt(out.p99_us, 2),
            fmt_opt(out.mmsg_s, 4),
            fmt_opt(out.mb_s, 1),
        );
        if let Some(f) = json {
            writeln!(
                f,
                "{{\"impl\":\"{}\",\"runtime\":\"{}\",\"mode\":\"{}\",\"test\":\"{}\",\"size\":{},\"qps\":{},\"batch\":{},\"senders\":{},\"iters\":{},\"median_us\":{},\"p99_us\":{},\"mmsg_s\":{},\"mb_s\":{}}}",
                if rt == Rt::Raw { "raw" } else { "anyrdma" },
                rt.name(),
                mode.name(),
                spec.test.name(),
                spec.size,
                spec.qps,
                spec.batch,
                spec.senders,
                spec.iters,
                json_opt(out.median_us),
                json_opt(out.p99_us),
                json_opt(out.mmsg_s),
                json_opt(out.mb_s),
            )?;
        }
    }
    send_all(&mut ctl, b"E")?;
    Ok(())
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("rdma bench: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Res<()> {
    let o = parse_opts()?;
    if o.role != Some(true) && o.cm_addr.is_none() && o.tests.iter().any(|t| t.needs_cm()) {
        eprintln!("rdma bench: no --cm-addr: the stream_* and cm_msg_* rows are skipped");
    }
    let mut json = match &o.json {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        None => None,
    };
    match o.role {
        Some(true) => server(&o, o.runtimes[0], o.modes[0]),
        Some(false) => client(&o, o.runtimes[0], o.modes[0], &mut json),
        None => {
            println!(
                "{:<8} {:<9} {:<5} {:<13} {:>6} {:>3} {:>3} {:>6} | {:>9} {:>9} | {:>8} {:>9}",
                "impl",
                "runtime",
                "mode",
                "test",
                "size",
                "qps",
                "b/s",
                "iters",
                "median_us",
                "p99_us",
                "Mmsg/s",
                "MB/s"
            );
            for &rt in &o.runtimes {
                for &mode in &o.modes {
                    let exe = std::env::current_exe()?;
                    let mut args: Vec<String> = std::env::args().skip(1).collect();
                    args.extend(
                        [
                            "--role",
                            "server",
                            "--runtime",
                            rt.name(),
                            "--mode",
                            mode.name(),
                        ]
                        .map(String::from),
                    );
                    // The server's own options win over the client's lists (last one counts).
                    let mut child = std::process::Command::new(exe)
                        .args(strip_json(&args))
                        .spawn()?;
                    let result = client(&o, rt, mode, &mut json);
                    if result.is_err() {
                        let _ = child.kill();
                    }
                    let status = child.wait()?;
                    result?;
                    if !status.success() {
                        return Err(format!(
                            "the server ({} {}) failed: {status}",
                            rt.name(),
                            mode.name()
                        )
                        .into());
                    }
                }
            }
            Ok(())
        }
    }
}

/// The arguments without `--json FILE` (the server writes no results).
fn strip_json(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        if a == "--json" {
            skip = true;
            continue;
        }
        out.push(a.clone());
    }
    out
}
