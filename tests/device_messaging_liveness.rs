//! Messaging that must keep going: two sides that send large messages to each other at
//! once, idle messengers that must stay quiet, peers with different eager limits, and a peer
//! killed in the middle of a rendezvous (the survivor gets the messages in order up to the
//! failure, then the failure, never a gap).

// support::alone orders tests (each holds its guard across its awaits), not tasks.
#![allow(clippy::await_holding_lock)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyrdma::cm::{ConnectionOptions, Listener};
use anyrdma::msg::{Messenger, MessengerOptions};
use anyrdma::QpOptions;
use support::{within, Pair, Rt};

/// Set in the child process that plays the killed peer.
const PEER_ENV: &str = "ANYRDMA_TEST_MSG_PEER";

/// A pair of queue pairs and a messenger on each.
fn messengers(options: MessengerOptions) -> (Pair, Messenger, Messenger) {
    let pair = Pair::with(
        anyrdma::CqOptions::default(),
        QpOptions::default(),
        anyrdma::ConnectOptions::default(),
    );
    let a = Messenger::new(&pair.a, options).expect("messenger a");
    let b = Messenger::new(&pair.b, options).expect("messenger b");
    (pair, a, b)
}

/// Message `i`: its number, then bytes that depend on it, `len` bytes in all.
fn message(i: u64, len: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len).map(|at| (i as usize * 7 + at) as u8).collect();
    let tag = i.to_le_bytes();
    let n = len.min(8);
    bytes[..n].copy_from_slice(&tag[..n]);
    bytes
}

/// Depth 2, eager limit 64: both sides send a 4 KiB message (by rendezvous) and then
/// receive the other's, round after round. Each side's "read it" and credits must still get
/// through when both have spent their credits on large messages at once. (Before, both
/// ended at zero credits owing each other, in the first round.)
async fn both_sides_send_large_at_once_at_depth_two(rt: Rt) {
    if !support::device_present("both_sides_send_large_at_once_at_depth_two") {
        return;
    }
    let _beside = support::beside_others();
    const ROUNDS: u64 = 40;
    let options = MessengerOptions {
        depth: 2,
        eager_limit: 64,
        ..MessengerOptions::default()
    };
    let (_pair, a, b) = messengers(options);
    let side = |me: Messenger, mine: u64, theirs: u64| async move {
        for round in 0..ROUNDS {
            me.send(&message(mine + round, 4096))
                .await
                .unwrap_or_else(|err| panic!("round {round}: send: {err}"));
            let got = me
                .recv()
                .await
                .unwrap_or_else(|err| panic!("round {round}: recv: {err}"));
            assert_eq!(
                &got.data[..],
                &message(theirs + round, 4096)[..],
                "round {round}"
            );
        }
        me.flush().await.expect("flush");
    };
    let first = rt.spawn(side(a.clone(), 0, 1000));
    let second = rt.spawn(side(b.clone(), 1000, 0));
    within(60, "both sides sending 4 KiB at once at depth 2", async {
        first.await;
        second.await;
    })
    .await;
    println!(
        "{}: {ROUNDS} rounds of 4 KiB both ways at depth 2",
        rt.name()
    );
}

/// Packets this host's RDMA devices sent so far (Soft-RoCE counts them in sysfs).
fn packets_sent() -> u64 {
    let mut total = 0;
    let mut found = false;
    for device in std::fs::read_dir("/sys/class/infiniband").expect("/sys/class/infiniband") {
        let ports = device.expect("a device").path().join("ports");
        for port in std::fs::read_dir(ports).expect("its ports") {
            let counter = port.expect("a port").path().join("hw_counters/sent_pkts");
            if let Ok(text) = std::fs::read_to_string(&counter) {
                total += text.trim().parse::<u64>().expect("a packet count");
                found = true;
            }
        }
    }
    assert!(found, "no hw_counters/sent_pkts: cannot count packets");
    total
}

/// Depth 4 (credits returned one at a time): after an exchange, both sides wait in `recv`
/// with nothing to say. They must stay quiet: a credit message is never answered by one.
/// (Before, each credit message was answered by another, for ever.)
async fn idle_messengers_stay_quiet(rt: Rt) {
    if !support::device_present("idle_messengers_stay_quiet") {
        return;
    }
    let _alone = support::alone();
    // Two messengers answering each other's credit messages for ever never let their task
    // yield to a timer: only a watchdog thread ends that.
    let _watchdog = support::watchdog(60, "idle messengers that never stop talking");
    let options = MessengerOptions {
        depth: 4,
        eager_limit: 64,
        ..MessengerOptions::default()
    };
    let (_pair, a, b) = messengers(options);
    for i in 0..20 {
        a.send(&message(i, 32)).await.expect("send");
        let got = within(10, "a message", b.recv()).await.expect("recv");
        assert_eq!(&got.data[..], &message(i, 32)[..]);
        b.send(&message(i, 48)).await.expect("send");
        let got = within(10, "a message", a.recv()).await.expect("recv");
        assert_eq!(&got.data[..], &message(i, 48)[..]);
    }
    // Let what the exchange left owed settle.
    let _ = anyrdma::timeout(Duration::from_millis(200), async {
        let (x, y) = (a.recv(), b.recv());
        let (x, y) = (std::pin::pin!(x), std::pin::pin!(y));
        futures_join(x, y).await
    })
    .await;
    let before = packets_sent();
    let idle = anyrdma::timeout(Duration::from_millis(500), async {
        let (x, y) = (a.recv(), b.recv());
        let (x, y) = (std::pin::pin!(x), std::pin::pin!(y));
        futures_join(x, y).await
    })
    .await;
    let sent = packets_sent() - before;
    assert!(idle.is_err(), "{}: a message nobody sent", rt.name());
    println!(
        "{}: {sent} packets while both sides waited 0.5 s",
        rt.name()
    );
    assert!(
        sent < 20,
        "{}: {sent} packets sent in 0.5 s by two messengers that had nothing to say",
        rt.name()
    );
}

/// Polls both futures until both are ready.
async fn futures_join<A: std::future::Future, B: std::future::Future>(
    mut a: std::pin::Pin<&mut A>,
    mut b: std::pin::Pin<&mut B>,
) {
    let (mut a_done, mut b_done) = (false, false);
    std::future::poll_fn(|cx| {
        if !a_done {
            a_done = a.as_mut().poll(cx).is_ready();
        }
        if !b_done {
            b_done = b.as_mut().poll(cx).is_ready();
        }
        if a_done && b_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// The sizes around both eager limits (4096 and the default 8192).
fn sizes_around_the_limits() -> Vec<usize> {
    [4096usize, 8192]
        .iter()
        .flat_map(|limit| limit - 12..=limit + 12)
        .collect()
}

/// A server with an eager limit of 4096 and a client with the default (8192): every size
/// around both limits goes both ways, intact. (Before, the server's sends of 8185 to 8192
/// bytes failed with `TooLarge`: it chose by the client's limit, and its buffers are sized
/// by its own.)
async fn different_eager_limits_both_ways(rt: Rt) {
    if !support::device_present("different_eager_limits_both_ways") {
        return;
    }
    let _beside = support::beside_others();
    let listener = Listener::bind(SocketAddr::new(support::cm_ip(), 0)).expect("bind");
    let addr = listener.local_addr();
    let server_options = MessengerOptions {
        eager_limit: 4096,
        depth: 8,
        ..MessengerOptions::default()
    };
    let server = rt.spawn(async move {
        let incoming = listener.incoming().await.expect("incoming");
        let messenger = Messenger::accept(incoming, ConnectionOptions::default(), server_options)
            .await
            .expect("accept");
        // Echoes each message back.
        for (i, len) in sizes_around_the_limits().into_iter().enumerate() {
            let got = messenger.recv().await.expect("server recv");
            assert_eq!(&got.data[..], &message(i as u64, len)[..], "to the server");
            messenger
                .send(&got.data)
                .await
                .unwrap_or_else(|err| panic!("the server sends {len} bytes back: {err}"));
        }
        messenger.flush().await.expect("server flush");
        let _ = messenger.recv().await;
    });
    let client = Messenger::connect(
        addr,
        ConnectionOptions::default(),
        MessengerOptions::default(),
    )
    .await
    .expect("connect");
    for (i, len) in sizes_around_the_limits().into_iter().enumerate() {
        let sent = message(i as u64, len);
        client
            .send(&sent)
            .await
            .unwrap_or_else(|err| panic!("the client sends {len} bytes: {err}"));
        let back = within(20, "the echo", client.recv())
            .await
            .unwrap_or_else(|err| panic!("{}: the echo of {len} bytes: {err}", rt.name()));
        assert_eq!(&back.data[..], &sent[..], "{}: {len} bytes back", rt.name());
    }
    drop(client);
    within(20, "the server", server).await;
}

/// Messages the killed peer sends while alive (some large), before the two it sends last.
const BEFORE: u64 = 20;

/// Message `i` of the killed peer: 100 bytes, or 1 MiB for some; the one it is killed
/// after is 32 MiB, so that this side is still reading it when the peer dies.
fn peer_message(i: u64) -> Vec<u8> {
    let len = if i == BEFORE {
        32 << 20
    } else if i % 7 == 5 {
        1 << 20
    } else {
        100
    };
    message(i, len)
}

/// A peer process sends numbered messages (some large) and is killed right after it posted
/// a large one and a small one after it, while this side reads the large one. This side's
/// `recv` gives the messages in order up to the failure and then the failure, never the
/// small one without the large one before it; and the failure, once the disconnect is
/// known, says so. (Before, the large message was skipped and the small one delivered.)
async fn killed_peer_mid_rendezvous_leaves_no_gap(rt: Rt) {
    if !support::device_present("killed_peer_mid_rendezvous_leaves_no_gap") {
        return;
    }
    let _beside = support::beside_others();
    let listener = Listener::bind(SocketAddr::new(support::cm_ip(), 0)).expect("bind");
    let (mut child, mut lines) = spawn_peer(rt, listener.local_addr());
    let incoming = within(15, "the peer's request", listener.incoming())
        .await
        .expect("incoming");
    let messenger = Messenger::accept(
        incoming,
        ConnectionOptions::default(),
        MessengerOptions::default(),
    )
    .await
    .expect("accept");
    for i in 0..BEFORE {
        let got = within(20, "a message", messenger.recv())
            .await
            .expect("recv");
        assert_eq!(&got.data[..], &peer_message(i)[..], "message {i}");
    }
    messenger.send(b"go on").await.expect("send");
    // The peer posted the large message and the small one after it: this side starts
    // reading the large one (a recv given up after 5 ms leaves it reading), and the peer is
    // killed in the middle of that read.
    loop {
        let line = lines
            .next()
            .expect("the peer exited before it posted")
            .expect("read the peer's stdout");
        if line.contains("POSTED") {
            break;
        }
    }
    let started = anyrdma::timeout(Duration::from_millis(5), messenger.recv()).await;
    assert!(
        started.is_err(),
        "{}: 32 MiB read in 5 ms: the test proves nothing",
        rt.name()
    );
    child.kill().expect("kill the peer");
    child.wait().expect("reap the peer");
    std::thread::spawn(move || lines.for_each(drop));
    let mut next = BEFORE;
    let err = loop {
        match within(20, "the failure", messenger.recv()).await {
            Ok(got) => {
                assert_eq!(
                    &got.data[..got.data.len().min(8)],
                    &next.to_le_bytes()[..got.data.len().min(8)],
                    "{}: message {next} expected, a gap in the messages",
                    rt.name()
                );
                assert_eq!(got.data.len(), peer_message(next).len());
                next += 1;
            }
            Err(err) => break err,
        }
    };
    println!(
        "{}: got messages up to {} and then {err}",
        rt.name(),
        next - 1
    );
    // The failure is final, and once the disconnect is known, it is what the messenger
    // says (a failed read of a dead peer's memory was only its first sign).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let err = messenger.recv().await.expect_err("the peer is gone");
        if err.is_disconnect() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}: still {err} 10 s after the peer was killed",
            rt.name()
        );
        anyrdma::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs this test binary again as the peer; returns it with its output.
fn spawn_peer(
    rt: Rt,
    connect_to: SocketAddr,
) -> (Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let test = format!("{}::peer_process", rt.module());
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(PEER_ENV, connect_to.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the peer process");
    let stdout = child.stdout.take().expect("the peer's stdout");
    (child, BufReader::new(stdout).lines())
}

/// The peer process of `killed_peer_mid_rendezvous_leaves_no_gap` (does nothing in a
/// normal run).
async fn peer_process(_rt: Rt) {
    let Ok(addr) = std::env::var(PEER_ENV) else {
        return;
    };
    let addr: SocketAddr = addr.parse().expect("the address");
    let messenger = Messenger::connect(
        addr,
        ConnectionOptions::default(),
        MessengerOptions::default(),
    )
    .await
    .expect("connect");
    for i in 0..BEFORE {
        messenger.send(&peer_message(i)).await.expect("send");
    }
    let go = within(30, "go on", messenger.recv()).await.expect("recv");
    assert_eq!(&go.data[..], b"go on");
    messenger.send(&peer_message(BEFORE)).await.expect("send");
    messenger
        .send(&peer_message(BEFORE + 1))
        .await
        .expect("send");
    // Long enough for the device to deliver both (this side is not waiting for them).
    anyrdma::sleep(Duration::from_millis(300)).await;
    println!("POSTED");
    // Wait (exposed) until killed.
    let _ = within(60, "being killed", messenger.recv()).await;
}

runtime_tests!(
    both_sides_send_large_at_once_at_depth_two,
    idle_messengers_stay_quiet,
    different_eager_limits_both_ways,
    killed_peer_mid_rendezvous_leaves_no_gap,
    peer_process,
);
