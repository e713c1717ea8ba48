//! A peer that is gone, or never existed, is detected with default options: its operations
//! fail with a typed error within seconds, and nothing waits forever.
//!
//! Reliable connected transport has no keepalive: a dead peer shows only when this side
//! sends and the retries run out. Both tests therefore send after the peer is gone and
//! measure how long the default retry count and timeout take to give up.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyrdma::{
    Access, CompletionQueue, ConnectOptions, Context, CqOptions, Endpoint, Error, LocalBuf,
    ProtectionDomain, QpOptions, QueuePair, RemoteRegion, WcStatus,
};
use support::{fill, holds_pattern, within, Rt};

/// Set in the child process that plays the peer of `killed_peer_is_detected`.
const PEER_ENV: &str = "ANYRDMA_TEST_PEER_PROCESS";
/// Size of the region the peer exposes to remote writes.
const REGION_LEN: usize = 4096;
/// How long the parent waits for each line of the peer before giving up on it.
const PEER_PATIENCE: Duration = Duration::from_secs(30);

/// One context, protection domain, CQ and unconnected queue pair.
struct Side {
    pd: ProtectionDomain,
    cq: CompletionQueue,
    qp: QueuePair,
}

impl Side {
    fn new() -> Side {
        let ctx = Context::open_default().expect("open the default RDMA device");
        let pd = ctx.alloc_pd().expect("alloc PD");
        let cq = CompletionQueue::new(&ctx, CqOptions::default()).expect("create CQ");
        let qp = QueuePair::new(&pd, &cq, &cq, QpOptions::default()).expect("create QP");
        Side { pd, cq, qp }
    }

    fn patterned(&self, len: usize, seed: u8) -> LocalBuf {
        let mut buf = self.pd.alloc(len, Access::LOCAL).expect("alloc");
        fill(&mut buf, seed);
        buf
    }
}

async fn bogus_endpoint_fails_with_retry_exceeded(rt: Rt) {
    if !support::device_present("bogus_endpoint_fails_with_retry_exceeded") {
        return;
    }
    let side = Side::new();
    // A queue pair number that does not exist: one this device handed out and that is now
    // destroyed. Soft-RoCE hands numbers out cyclically, so no queue pair created meanwhile
    // (by the tests running in parallel) takes it back.
    let gone = QueuePair::new(&side.pd, &side.cq, &side.cq, QpOptions::default())
        .expect("create the QP to destroy")
        .qpn();
    assert_ne!(gone, side.qp.qpn());
    let bogus = Endpoint {
        qpn: gone,
        ..side.qp.endpoint()
    };
    side.qp
        .connect(&bogus, ConnectOptions::default())
        .expect("connecting to any QP number succeeds: nothing is sent yet");
    let target = side
        .pd
        .alloc_shared(REGION_LEN, Access::REMOTE_WRITE)
        .unwrap();
    let remote = target.remote().unwrap();

    let started = Instant::now();
    write_fails_with_retry_exceeded(
        rt,
        &side,
        remote,
        3,
        "a write with default options to a QP number that does not exist",
    )
    .await;
    let took = started.elapsed();
    assert!(
        side.qp.failure().is_some(),
        "the queue pair is now in error"
    );
    assert_eq!(side.cq.in_flight(), 0, "nothing left in flight");
    println!(
        "{}: bogus endpoint: retry exceeded after {:.3} s",
        rt.name(),
        took.as_secs_f64()
    );
}

/// A write of 64 patterned bytes from `side` to `remote` fails with retry exceeded within
/// 5 s, naming the region and the queue pair, and gives its buffer back intact.
async fn write_fails_with_retry_exceeded(
    rt: Rt,
    side: &Side,
    remote: RemoteRegion,
    seed: u8,
    what: &str,
) {
    let (result, buf) = within(5, what, side.qp.write(side.patterned(64, seed), remote)).await;
    let err = result.expect_err(what);
    assert_eq!(
        err.wc_status(),
        Some(WcStatus::RETRY_EXC_ERR),
        "{}: {err}",
        rt.name()
    );
    assert!(
        matches!(&err, Error::WorkCompletion { remote: Some(r), qpn, .. }
            if *r == remote && *qpn == side.qp.qpn()),
        "{err:?}"
    );
    assert!(
        buf.len() == 64 && holds_pattern(&buf, seed),
        "the buffer comes back intact"
    );
}

async fn killed_peer_is_detected(rt: Rt) {
    if std::env::var_os(PEER_ENV).is_some() {
        return peer_process();
    }
    if !support::device_present("killed_peer_is_detected") {
        return;
    }
    let side = Side::new();
    let mut peer = Peer::spawn(rt, "killed_peer_is_detected");
    let hello = peer.expect("its endpoint and region");
    let (endpoint, remote) = match hello.split(' ').collect::<Vec<_>>()[..] {
        ["hello", endpoint, region] => (
            Endpoint::from_bytes(&unhex(endpoint)).expect("an encoded endpoint"),
            RemoteRegion::from_bytes(&unhex(region)).expect("an encoded region"),
        ),
        _ => panic!("the peer said {hello:?}"),
    };
    side.qp
        .connect(&endpoint, ConnectOptions::default())
        .expect("connect to the peer");
    peer.request(&hex(&side.qp.endpoint().to_bytes()));
    assert_eq!(peer.expect("its connect"), "connected");

    // The connection works: each write lands in the peer's memory.
    for seed in 1..=3u8 {
        let (wrote, _) = within(
            5,
            "a write to the live peer",
            side.qp.write(side.patterned(REGION_LEN, seed), remote),
        )
        .await;
        wrote.unwrap_or_else(|e| panic!("{}: write to the live peer: {e}", rt.name()));
        peer.request(&format!("check {seed}"));
        assert_eq!(
            peer.expect("its check of the write"),
            format!("holds {seed}")
        );
    }

    // A receive waiting when the peer dies: no message will ever come for it.
    let recv = side.qp.recv(side.pd.alloc(256, Access::LOCAL).unwrap());
    let pending = rt.spawn(async move {
        let (result, buf) = recv.await;
        (result, buf, Instant::now())
    });
    // Let the task start waiting on the completion queue before the peer goes.
    anyrdma::sleep(Duration::from_millis(20)).await;

    peer.kill();
    let killed = Instant::now();
    write_fails_with_retry_exceeded(
        rt,
        &side,
        remote,
        9,
        "a write with default options to a killed peer",
    )
    .await;
    let write_took = killed.elapsed();

    let (result, buf, flushed_at) =
        within(5, "the receive pending when the peer was killed", pending).await;
    let recv_took = flushed_at.duration_since(killed);
    let err = result.expect_err("a receive of a failed queue pair is flushed");
    assert!(
        matches!(&err, Error::Flushed { cause: Some(_), .. }),
        "{}: {err:?}",
        rt.name()
    );
    assert_eq!(
        err.root_cause().wc_status(),
        Some(WcStatus::RETRY_EXC_ERR),
        "the flush names the failure: {err}"
    );
    assert_eq!(buf.len(), 256, "the receive's buffer comes back");
    assert!(
        recv_took < Duration::from_secs(5),
        "the pending receive took {recv_took:?}"
    );
    assert_eq!(side.cq.in_flight(), 0, "nothing left in flight");
    println!(
        "{}: killed peer: write failed (retry exceeded) {:.3} s after the kill; \
         the pending receive was flushed {:.3} s after it",
        rt.name(),
        write_took.as_secs_f64(),
        recv_took.as_secs_f64()
    );
}

/// A retry count the transport cannot carry is refused, not clamped (a clamped 8 would be
/// 7, which Soft-RoCE retries forever), and the queue pair is left unchanged.
async fn out_of_range_options_are_refused_and_change_nothing(rt: Rt) {
    if !support::device_present("out_of_range_options_are_refused_and_change_nothing") {
        return;
    }
    let side = Side::new();
    let peer = QueuePair::new(&side.pd, &side.cq, &side.cq, QpOptions::default()).unwrap();
    let too_many = ConnectOptions {
        retry_cnt: 8,
        ..ConnectOptions::default()
    };
    let err = side
        .qp
        .connect(&peer.endpoint(), too_many)
        .expect_err("retry_cnt 8 does not fit in 3 bits");
    assert!(
        matches!(
            err,
            Error::OptionOutOfRange {
                option: "ConnectOptions::retry_cnt",
                value: 8,
                max: 7
            }
        ),
        "{}: {err:?}",
        rt.name()
    );
    let text = err.to_string();
    assert!(
        text.contains("retry_cnt is 8") && text.contains("at most 7"),
        "message: {text}"
    );
    // Nothing was changed: the queue pair is still unconnected...
    let (result, _) = side.qp.send(side.patterned(8, 1)).await;
    assert!(
        matches!(result, Err(Error::NotConnected { .. })),
        "{result:?}"
    );
    // ...and connects with corrected options.
    side.qp
        .connect(&peer.endpoint(), ConnectOptions::default())
        .expect("connect with the defaults");
    peer.connect(&side.qp.endpoint(), ConnectOptions::default())
        .expect("connect the peer");
    let recv = peer.recv(side.pd.alloc(64, Access::LOCAL).unwrap());
    let (sent, _) = within(
        5,
        "a send after the refused connect",
        side.qp.send(side.patterned(8, 2)),
    )
    .await;
    sent.expect("send");
    let (got, buf) = within(5, "its receive", recv).await;
    assert_eq!(got.expect("receive").len, 8);
    assert!(holds_pattern(&buf[..8], 2));
}

runtime_tests!(
    bogus_endpoint_fails_with_retry_exceeded,
    killed_peer_is_detected,
    out_of_range_options_are_refused_and_change_nothing,
);

/// The child process of `killed_peer_is_detected`, seen from the parent. Dropping it kills
/// and reaps the child, so a failing test leaves no process behind.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    /// The child's protocol lines (what follows `PEER `), without the prefix.
    lines: mpsc::Receiver<String>,
    reaped: bool,
}

impl Peer {
    /// Runs this test binary again as the peer: the same test, on the same runtime, with
    /// [`PEER_ENV`] set.
    fn spawn(rt: Rt, test: &str) -> Peer {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "--exact",
                &format!("{}::{test}", rt.module()),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PEER_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the peer process");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        // A thread reads the pipe so that the test can wait for a line with a deadline; it
        // ends when the child's stdout closes.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Anywhere in the line: with one test thread, libtest prints
                // "test NAME ... " before the test runs, without a newline.
                if let Some(at) = line.find("PEER ") {
                    if tx.send(line[at + "PEER ".len()..].to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        Peer {
            child,
            stdin,
            lines,
            reaped: false,
        }
    }

    /// The peer's next line.
    fn expect(&self, what: &str) -> String {
        match self.lines.recv_timeout(PEER_PATIENCE) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the peer process did not send {what} within {PEER_PATIENCE:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the peer process ended before it sent {what} (its stderr is above)")
            }
        }
    }

    fn request(&mut self, line: &str) {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .expect("write to the peer process");
    }

    /// SIGKILLs the peer and reaps it: when this returns, the process, and with it its
    /// queue pair and memory registration, is gone.
    fn kill(&mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) reads and writes no memory of this process. `pid` is this
        // process's own child, not yet reaped, so the number names that child and no other.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the peer") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the killed peer did not exit within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        self.reaped = true;
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "the peer died of SIGKILL, not of its own accord: {status}"
        );
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The peer's side, in the child process: a queue pair and a region open to remote writes.
/// It answers on stdout (after `PEER `) what the parent asks on stdin, one line each, and
/// ends when stdin closes, so it never outlives its parent.
fn peer_process() {
    let side = Side::new();
    let region = side
        .pd
        .alloc_shared(REGION_LEN, Access::REMOTE_WRITE)
        .expect("peer: alloc the exposed region");
    let remote = region.remote().expect("peer: remote description");
    say(&format!(
        "hello {} {}",
        hex(&side.qp.endpoint().to_bytes()),
        hex(&remote.to_bytes())
    ));
    let mut lines = std::io::stdin().lock().lines();
    let Some(Ok(parent)) = lines.next() else {
        return;
    };
    let parent = Endpoint::from_bytes(&unhex(&parent)).expect("peer: an endpoint");
    side.qp
        .connect(&parent, ConnectOptions::default())
        .expect("peer: connect");
    say("connected");
    for line in lines {
        let Ok(line) = line else { return };
        match line.split_once(' ') {
            Some(("check", seed)) => {
                let seed: u8 = seed.parse().expect("peer: a seed");
                let verdict = if holds_pattern(&region.to_vec(..).unwrap(), seed) {
                    "holds"
                } else {
                    "differs"
                };
                say(&format!("{verdict} {seed}"));
            }
            _ => panic!("peer: unknown request {line:?}"),
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "PEER {line}")
        .and_then(|()| out.flush())
        .expect("peer: write to the parent");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len() % 2 == 0, "odd hex length: {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digits"))
        .collect()
}
