//! The end of a connection as the surviving side sees it: what completed before the peer
//! disconnected is delivered, not lost with the queue pair's teardown, and what fails after
//! a disconnect says it was one.
//!
//! Runs on rxe0's address in the guest, 169.254.77.1 (`ANYRDMA_TEST_CM_ADDR` overrides it).
//! Soft-RoCE leaves a queue pair's completions in its CQ when the queue pair is reset, where
//! mlx5 removes them: these tests turn on the library's emulation of mlx5
//! (`QueuePair::emulate_cq_clean_on_reset`), process-wide, which is why they have a binary of
//! their own.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyrdma::cm::{Connection, ConnectionOptions, ConnectionResources, Listener};
use anyrdma::{
    Access, CompletionQueue, Context, CqOptions, Error, MessageKind, PollMode, QueuePair,
    RemoteRegion, WcStatus,
};
use support::{fill, holds_pattern, within, Rt};

/// Messages the client sends before it disconnects.
const MESSAGES: usize = 4;
const MESSAGE_LEN: usize = 512;
/// Set in the child process that plays the peer of `a_disconnect_after_a_failure_is_reported`.
const PEER_ENV: &str = "ANYRDMA_TEST_DISCONNECT_PEER";

/// A protection domain and a completion queue of their own, for one side of a connection:
/// each side polls only its own CQ, so that one side's completions wait unpolled while the
/// other side works. Event mode without spinning: a poll takes only what is there.
fn own_resources(ctx: &Context) -> ConnectionResources {
    let pd = ctx.alloc_pd().expect("pd");
    let options = CqOptions {
        poll_mode: PollMode::Event { spin: 0 },
        ..CqOptions::default()
    };
    let cq = CompletionQueue::new(ctx, options).expect("cq");
    ConnectionResources {
        pd,
        send_cq: cq.clone(),
        recv_cq: cq,
    }
}

fn with_resources(resources: &ConnectionResources) -> ConnectionOptions {
    ConnectionOptions {
        resources: Some(resources.clone()),
        ..ConnectionOptions::default()
    }
}

/// Reads `ctx`'s events (which reads the connection manager's channels of its connections)
/// until `conn` has seen its end, without polling any completion queue; up to 10 s.
async fn until_disconnected(ctx: &Context, conn: &Connection, what: &str) {
    within(10, what, async {
        while !conn.is_disconnected() {
            let _ = anyrdma::timeout(Duration::from_millis(20), ctx.next_event()).await;
        }
    })
    .await;
}

/// Messages that arrived and a send that completed before the peer disconnected, not yet
/// polled when the disconnect is read, are delivered intact afterwards; the receive still
/// posted then ends with the disconnect. Run with the CQ cleaning of mlx5 emulated: there,
/// a queue pair reset before its completions are taken loses them.
async fn completions_before_a_disconnect_are_delivered(rt: Rt) {
    if !support::device_present("completions_before_a_disconnect_are_delivered") {
        return;
    }
    QueuePair::emulate_cq_clean_on_reset(true);
    let ctx = Context::open("rxe0").expect("open rxe0");
    let (server_side, client_side) = (own_resources(&ctx), own_resources(&ctx));
    let listener = Listener::bind(SocketAddr::new(support::cm_ip(), 0)).expect("bind");
    let addr = listener.local_addr();
    let server_options = with_resources(&server_side);
    let server_pd = server_side.pd.clone();
    let accepting = rt.spawn(async move {
        let incoming = listener.incoming().await.expect("incoming");
        // One receive more than the client sends: it is pending when the client goes.
        incoming
            .accept_and(server_options, |qp| {
                (0..=MESSAGES)
                    .map(|_| qp.recv(server_pd.alloc(MESSAGE_LEN, Access::LOCAL).unwrap()))
                    .collect::<Vec<_>>()
            })
            .await
            .expect("accept")
    });
    let client = within(
        15,
        "connect",
        Connection::connect(addr, with_resources(&client_side)),
    )
    .await
    .expect("connect");
    let (server, receives) = within(15, "accept", accepting).await;

    // The server's send is posted (when it is made) and left alone, unpolled; the client's
    // receive of it completes, so the send's completion waits in the server's CQ.
    let inbox = client.recv(client.pd().alloc(MESSAGE_LEN, Access::LOCAL).unwrap());
    let mut reply = server_side.pd.alloc(MESSAGE_LEN, Access::LOCAL).unwrap();
    fill(&mut reply, 200);
    let sending = server.send(reply);
    let (received, inbox) = within(10, "the server's message", inbox).await;
    assert_eq!(received.expect("the server's message").len, MESSAGE_LEN);
    assert!(holds_pattern(&inbox, 200));

    // The client's messages land in the server's receives; nobody polls the server's CQ.
    for i in 0..MESSAGES {
        let mut message = client.pd().alloc(MESSAGE_LEN, Access::LOCAL).unwrap();
        fill(&mut message, i as u8);
        let (sent, _) = within(10, "a client's send", client.send(message)).await;
        sent.unwrap_or_else(|err| panic!("send {i}: {err}"));
    }
    within(10, "the client's close", client.close())
        .await
        .expect("close");
    until_disconnected(&ctx, &server, "the server seeing the disconnect").await;

    let mut receives = receives.into_iter();
    for i in 0..MESSAGES {
        let receive = receives.next().unwrap();
        let (received, buf) = within(10, "a receive of before the disconnect", receive).await;
        let received = received.unwrap_or_else(|err| {
            panic!(
                "{}: message {i}, received before the peer disconnected, was lost: {err}",
                rt.name()
            )
        });
        assert_eq!(
            (received.len, received.kind),
            (MESSAGE_LEN, MessageKind::Send)
        );
        assert!(holds_pattern(&buf, i as u8), "message {i}: bytes differ");
    }
    let (last, _) = within(10, "the receive still posted", receives.next().unwrap()).await;
    let err = last.expect_err("nothing was sent for the last receive");
    assert!(err.is_disconnect(), "the last receive ended with {err}");
    let (sent, _) = within(10, "the server's send", sending).await;
    sent.unwrap_or_else(|err| {
        panic!(
            "{}: the server's send, completed before the disconnect, is reported as {err}",
            rt.name()
        )
    });
}

/// The peer's memory goes away (its region is deregistered: a read of it fails with a
/// remote access error, as when a peer dies during a rendezvous read), then the peer process
/// is killed (SIGKILL). Once the disconnect is read, every operation that fails says it was
/// a disconnect, and so does the queue pair's failure.
async fn a_disconnect_after_a_failure_is_reported(rt: Rt) {
    if !support::device_present("a_disconnect_after_a_failure_is_reported") {
        return;
    }
    let ctx = Context::open("rxe0").expect("open rxe0");
    let resources = own_resources(&ctx);
    let listener = Listener::bind(SocketAddr::new(support::cm_ip(), 0)).expect("bind");
    let mut peer = Peer::spawn(rt, listener.local_addr());
    let incoming = within(15, "incoming", listener.incoming())
        .await
        .expect("incoming");
    let pd = resources.pd.clone();
    let (conn, region) = within(
        15,
        "accept",
        incoming.accept_and(with_resources(&resources), |qp| {
            qp.recv(pd.alloc(RemoteRegion::ENCODED_LEN, Access::LOCAL).unwrap())
        }),
    )
    .await
    .expect("accept");
    let (received, bytes) = within(10, "the peer's region", region).await;
    received.expect("the peer's region");
    let region = RemoteRegion::from_bytes(&bytes).expect("a region");

    let (read, buf) = within(
        10,
        "a read",
        conn.read(pd.alloc(4096, Access::LOCAL).unwrap(), region),
    )
    .await;
    read.expect("a read of the peer's region");
    assert!(holds_pattern(&buf, 77), "the peer's bytes");

    peer.request("drop");
    let (read, buf) = within(10, "a read of a dropped region", conn.read(buf, region)).await;
    match read {
        Err(Error::WorkCompletion { status, .. }) if status == WcStatus::REM_ACCESS_ERR => {}
        other => panic!("a read of a deregistered region: {other:?}"),
    }

    peer.kill();
    until_disconnected(&ctx, &conn, "the disconnect after the kill").await;
    let failure = conn.failure().expect("the queue pair failed");
    assert!(
        failure.is_disconnect(),
        "{}: the queue pair reports {failure} after its peer disconnected",
        rt.name()
    );
    let (read, buf) = conn.read(buf, region).await;
    let (sent, buf) = conn.send(buf).await;
    let (received, _) = conn.recv(buf).await;
    for (what, result) in [
        ("a read", read.map(drop)),
        ("a send", sent.map(drop)),
        ("a receive", received.map(drop)),
    ] {
        let err = result.expect_err("the connection is gone");
        assert!(
            err.is_disconnect(),
            "{}: {what} after the disconnect fails with {err}",
            rt.name()
        );
    }
}

/// The peer process of `a_disconnect_after_a_failure_is_reported`, seen from the parent.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    /// Runs this test binary again as a client connecting to `addr`.
    fn spawn(rt: Rt, addr: SocketAddr) -> Peer {
        let test = format!("{}::peer_process", rt.module());
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(PEER_ENV, addr.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the peer process");
        let stdin = child.stdin.take().expect("the peer's stdin");
        let stdout = child.stdout.take().expect("the peer's stdout");
        let (tell, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tell.send(line);
            }
        });
        Peer {
            child,
            stdin,
            lines,
        }
    }

    /// Sends `line` and waits for the peer to answer `done {line}`.
    fn request(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to the peer");
        let done = format!("done {line}");
        loop {
            let answer = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("the peer did not answer {line:?}"));
            // The harness may have begun the line with the test's name.
            if answer.ends_with(&done) {
                return;
            }
        }
    }

    /// SIGKILLs the peer and reaps it.
    fn kill(&mut self) {
        self.child.kill().expect("kill the peer");
        self.child.wait().expect("reap the peer");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peer: connects, exposes a region and sends its description, then follows requests
/// on stdin ("drop": deregister the region) until it is killed. Does nothing in a normal run.
async fn peer_process(_rt: Rt) {
    let Ok(addr) = std::env::var(PEER_ENV) else {
        return;
    };
    let addr: SocketAddr = addr.parse().expect("address");
    let conn = Connection::connect(addr, ConnectionOptions::default())
        .await
        .expect("connect");
    let mut exposed = conn
        .pd()
        .alloc(4096, Access::LOCAL | Access::REMOTE_READ)
        .unwrap();
    fill(&mut exposed, 77);
    let mut description = conn
        .pd()
        .alloc(RemoteRegion::ENCODED_LEN, Access::LOCAL)
        .unwrap();
    description.copy_from_slice(&exposed.remote().expect("remote").to_bytes());
    let (sent, _) = conn.send(description).await;
    sent.expect("send the region");
    let (requests, next) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            let _ = requests.send(line);
        }
    });
    let mut exposed = Some(exposed);
    loop {
        match next.try_recv() {
            Ok(line) if line == "drop" => {
                exposed = None;
                println!("done drop");
            }
            Ok(other) => panic!("unknown request {other:?}"),
            Err(mpsc::TryRecvError::Disconnected) => break,
            Err(mpsc::TryRecvError::Empty) => {
                anyrdma::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    drop((exposed, conn));
}

runtime_tests!(
    completions_before_a_disconnect_are_delivered,
    a_disconnect_after_a_failure_is_reported,
    peer_process,
);
