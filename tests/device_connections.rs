//! Connections by address (rdma_cm): listen, accept, connect, echo, close; refusals,
//! rejections and unreachable addresses as typed errors; many clients at once; a peer
//! process killed mid-stream; and nothing left behind by dropped connections and listeners.
//!
//! Runs on rxe0's address in the guest, 169.254.77.1 (`ANYRDMA_TEST_CM_ADDR` overrides it).

// SERIAL orders the tests of this file (each on its own runtime and thread), not tasks.
#![allow(clippy::await_holding_lock)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyrdma::cm::{
    Connection, ConnectionOptions, ConnectionResources, Incoming, Listener, ListenerOptions,
};
use anyrdma::{
    registered_regions, Access, CompletionQueue, Context, CqOptions, Error, LocalBuf, MemoryPool,
    PoolOptions,
};
use support::{fill, holds_pattern, within, Rt};

/// The tests count the device's objects (`rdma resource`): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Set in the child process that plays a peer; its value says which role.
const PEER_ENV: &str = "ANYRDMA_TEST_CM_PEER";
/// The largest message the echo servers take.
const MAX_MESSAGE: usize = 64 << 10;
/// Receives an echo server keeps posted per connection.
const DEPTH: usize = 8;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Accepts `incoming` with receives posted first and echoes every message until the peer
/// goes; returns how many it echoed.
async fn echo(incoming: Incoming) -> anyrdma::Result<u64> {
    let mut pool = None;
    let (conn, posted) = incoming
        .accept_and(ConnectionOptions::default(), |qp| {
            let new_pool = MemoryPool::new(qp.pd(), PoolOptions::default());
            let posted: Vec<_> = (0..DEPTH)
                .map(|_| qp.recv(new_pool.alloc(MAX_MESSAGE).expect("pool")))
                .collect();
            pool = Some(new_pool);
            posted
        })
        .await?;
    let mut posted: std::collections::VecDeque<_> = posted.into();
    let mut echoed = 0;
    while let Some(receive) = posted.pop_front() {
        let (received, mut buf) = receive.await;
        let received = match received {
            Ok(received) => received,
            Err(err) if err.is_disconnect() => return Ok(echoed),
            Err(err) => return Err(err),
        };
        let tail = buf.split_off(received.len);
        let (sent, mut buf) = conn.send(buf).await;
        match sent {
            Ok(()) => {}
            Err(err) if err.is_disconnect() => return Ok(echoed),
            Err(err) => return Err(err),
        }
        buf.unsplit(tail).expect("neighbours");
        posted.push_back(conn.recv(buf));
        echoed += 1;
    }
    Ok(echoed)
}

/// Serves every connection of `listener` with [`echo`], each in a task of its own (kept:
/// dropping a smol task cancels it).
async fn serve(rt: Rt, listener: Listener) {
    let mut connections = Vec::new();
    loop {
        let incoming = listener.incoming().await.expect("the listener failed");
        connections.push(rt.spawn(async move {
            let peer = incoming.peer_addr();
            if let Err(err) = echo(incoming).await {
                eprintln!("echo server: {peer}: {err}");
            }
        }));
    }
}

/// Sends `sizes.len()` messages on `conn` and checks each echo.
async fn echo_round_trips(conn: &Connection, sizes: &[usize], seed: u8) {
    let pd = conn.pd();
    let mut message = pd.alloc(MAX_MESSAGE, Access::LOCAL).unwrap();
    let mut reply = pd.alloc(MAX_MESSAGE, Access::LOCAL).unwrap();
    for (i, &size) in sizes.iter().enumerate() {
        let tag = seed.wrapping_add(i as u8);
        fill(&mut message[..size], tag);
        let receive = conn.recv(reply);
        let tail = message.split_off(size);
        let (sent, mut back) = conn.send(message).await;
        sent.unwrap_or_else(|err| panic!("send {i} ({size} B): {err}"));
        back.unsplit(tail).unwrap();
        message = back;
        let (received, back) = within(20, "an echo", receive).await;
        reply = back;
        let received = received.unwrap_or_else(|err| panic!("reply {i}: {err}"));
        assert_eq!(received.len, size, "reply {i}: length");
        assert!(
            holds_pattern(&reply[..size], tag),
            "reply {i}: bytes differ"
        );
    }
}

/// Objects of the devices, as `rdma resource` counts them: (qp, cq, pd, cm_id).
fn resources() -> (u64, u64, u64, u64) {
    let out = Command::new("rdma")
        .args(["resource", "show"])
        .output()
        .expect("run `rdma resource show`");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut sums = [0u64; 4];
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            let at = match pair[0] {
                "qp" => 0,
                "cq" => 1,
                "pd" => 2,
                "cm_id" => 3,
                _ => continue,
            };
            sums[at] += pair[1].parse::<u64>().unwrap_or(0);
        }
    }
    (sums[0], sums[1], sums[2], sums[3])
}

/// Connect, accept with private data both ways, echo messages of 1 B to 64 KiB, close.
async fn connect_echo_close(rt: Rt) {
    if !support::device_present("connect_echo_close") {
        return;
    }
    let _serial = serial();
    let listener = Listener::bind(SocketAddr::new(support::cm_ip(), 0)).expect("bind");
    let addr = listener.local_addr();
    assert_ne!(addr.port(), 0, "port 0 picks a free port");
    let server = rt.spawn(async move {
        let incoming = listener.incoming().await.expect("incoming");
        assert!(incoming.private_data().starts_with(b"hello"));
        let options = ConnectionOptions {
            private_data: b"welcome".to_vec(),
            ..ConnectionOptions::default()
        };
        let pool_holder = Mutex::new(None);
        let (conn, receives) = incoming
            .accept_and(options, |qp| {
                let pool = MemoryPool::new(qp.pd(), PoolOptions::default());
                let receives: Vec<_> = (0..4)
                    .map(|_| qp.recv(pool.alloc(MAX_MESSAGE).unwrap()))
                    .collect();
                *pool_holder.lock().unwrap() = Some(pool);
                receives
            })
            .await
            .expect("accept");
        let mut receives: std::collections::VecDeque<_> = receives.into();
        let mut echoed = 0u64;
        while let Some(receive) = receives.pop_front() {
            let (received, mut buf) = receive.await;
            let Ok(received) = received else { break };
            let tail = buf.split_off(received.len);
            let (sent, mut buf) = conn.send(buf).await;
            if sent.is_err() {
                break;
            }
            buf.unsplit(tail).unwrap();
            receives.push_back(conn.recv(buf));
            echoed += 1;
        }
        echoed
    });
    let options = ConnectionOptions {
        private_data: b"hello".to_vec(),
        ..ConnectionOptions::default()
    };
    let conn = within(15, "connect", Connection::connect(addr, options))
        .await
        .expect("connect");
    assert!(conn.private_data().starts_with(b"welcome"));
    assert_eq!(conn.peer_addr(), addr);
    assert_eq!(conn.local_addr().ip(), addr.ip());
    let sizes: Vec<usize> = (0..1000)
        .map(|i| [1, 17, 1024, 4096, 4097, 65536][i % 6])
        .collect();
    echo_round_trips(&conn, &sizes, 3).await;
    within(10, "close", conn.close()).await.expect("close");
    let echoed = within(10, "the server's end", server).await;
    assert_eq!(echoed, sizes.len() as u64, "{}", rt.name());
}

/// A port with no listener, a listener that rejects, and an address with no RDMA device.
async fn refusals_are_typed(rt: Rt) {
    if !support::device_present("refusals_are_typed") {
        return;
    }
    let _serial = serial();
    // Nothing listens: a port bound and released.
    let free_port = Listener::bind(SocketAddr::new(support::cm_ip(), 0))
        .expect("bind")
        .local_addr();
    let started = Instant::now();
    match within(
        15,
        "connect",
        Connection::connect(free_port, ConnectionOptions::default()),
    )
    .await
    {
        Err(Error::ConnectRefused { addr }) => assert_eq!(addr, free_port),
        other => panic!("{}: no listener: {other:?}", rt.name()),
    }
    println!("refused after {:?}", started.elapsed());

    let listener = Listener::bind(SocketAddr::new(support::cm_ip(), 0)).expect("bind");
    let addr = listener.local_addr();
    let rejecting = rt.spawn(async move {
        let incoming = listener.incoming().await.expect("incoming");
        incoming.reject(b"no room at the inn");
    });
    match within(
        15,
        "connect",
        Connection::connect(addr, ConnectionOptions::default()),
    )
    .await
    {
        Err(err @ Error::ConnectRejected { .. }) => {
            assert_eq!(err.reject_reason(), Some("no room at the inn"), "{err}");
            assert!(err.to_string().contains("no room at the inn"), "{err}");
        }
        other => panic!("{}: rejected: {other:?}", rt.name()),
    }
    rejecting.await;

    // 127.0.0.1 has no RDMA device the connection manager can route through.
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 7471));
    let options = ConnectionOptions {
        resolve_timeout: Duration::from_millis(500),
        ..ConnectionOptions::default()
    };
    match within(15, "connect", Connection::connect(nowhere, options)).await {
        Err(Error::Unreachable { addr, stage, .. }) => {
            assert_eq!(addr, nowhere);
            println!("127.0.0.1: unreachable while {stage}");
        }
        other => panic!("{}: no RDMA device: {other:?}", rt.name()),
    }
    let oversized = ConnectionOptions {
        private_data: vec![0; 57],
        ..ConnectionOptions::default()
    };
    assert!(matches!(
        Connection::connect(addr, oversized).await,
        Err(Error::TooLarge { .. })
    ));
}

/// 64 clients connected at once, 250 echoes each, nothing lost (1,000 each took 70 s per
/// runtime in the emulated guest, for no more interleavings: all 64 are at work at once
/// either way).
async fn many_clients_at_once(rt: Rt) {
    if !support::device_present("many_clients_at_once") {
        return;
    }
    let _serial = serial();
    const CLIENTS: usize = 64;
    const ECHOES: usize = 250;
    let listener = Listener::bind(SocketAddr::new(support::cm_ip(), 0)).expect("bind");
    let addr = listener.local_addr();
    let server = rt.spawn(serve(rt, listener));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        clients.push(rt.spawn(async move {
            let conn = Connection::connect(addr, ConnectionOptions::default())
                .await
                .unwrap_or_else(|err| panic!("client {client}: {err}"));
            let sizes: Vec<usize> = (0..ECHOES).map(|i| 1 + (i * 37 + client) % 512).collect();
            echo_round_trips(&conn, &sizes, client as u8).await;
            conn.close().await.expect("close");
        }));
    }
    for client in clients {
        within(240, "a client's echoes", client).await;
    }
    drop(server);
    println!("{}: {CLIENTS} clients x {ECHOES} echoes", rt.name());
}

/// Dropping connections without closing them, and a listener with requests in its backlog,
/// leaves no queue pair, completion queue, protection domain or cm id behind.
async fn dropped_connections_release_everything(rt: Rt) {
    if !support::device_present("dropped_connections_release_everything") {
        return;
    }
    let _serial = serial();
    let before = resources();
    let regions = registered_regions();
    let listener = Listener::bind(SocketAddr::new(support::cm_ip(), 0)).expect("bind");
    let addr = listener.local_addr();
    let server = rt.spawn(async move {
        let mut accepted = Vec::new();
        for _ in 0..3 {
            accepted.push(listener.accept().await.expect("accept"));
        }
        (listener, accepted)
    });
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(
            within(
                15,
                "connect",
                Connection::connect(addr, ConnectionOptions::default()),
            )
            .await
            .expect("connect"),
        );
    }
    let (listener, accepted) = within(15, "accepts", server).await;
    // A pending operation on a dropped connection ends (flushed), it does not hang.
    let buf = clients[0].pd().alloc(64, Access::LOCAL).unwrap();
    let pending = clients[0].recv(buf);
    let during = resources();
    assert!(
        during.0 >= before.0 + 6,
        "six queue pairs: {before:?} -> {during:?}"
    );
    drop(clients);
    let (result, buf) = within(10, "a dropped connection's receive", pending).await;
    assert!(result.is_err(), "{}: flushed, not completed", rt.name());
    drop(buf); // it holds the protection domain
    drop(accepted);
    // Requests left in the backlog when the listener goes are rejected.
    let waiting =
        rt.spawn(async move { Connection::connect(addr, ConnectionOptions::default()).await });
    std::thread::sleep(Duration::from_millis(300));
    drop(listener);
    match within(15, "a request in a dropped listener's backlog", waiting).await {
        Err(Error::ConnectRejected { .. } | Error::ConnectRefused { .. }) => {}
        other => panic!("{}: {other:?}", rt.name()),
    }
    // Destroyed queue pairs leave the counts as the kernel cleans up: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = resources();
    while after != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        after = resources();
    }
    assert_eq!(
        after,
        before,
        "{}: (qp, cq, pd, cm_id) left behind",
        rt.name()
    );
    assert_eq!(
        registered_regions(),
        regions,
        "{}: memory left registered",
        rt.name()
    );
}

/// Requests beyond the backlog are turned away at once, not queued without bound: with a
/// backlog of 2 and a server that accepts late, of 6 clients at most 2 connect and the
/// others fail with a typed error, none hangs.
async fn backlog_is_bounded(rt: Rt) {
    if !support::device_present("backlog_is_bounded") {
        return;
    }
    let _serial = serial();
    const CLIENTS: usize = 6;
    const BACKLOG: usize = 2;
    let options = ListenerOptions {
        backlog: BACKLOG,
        ..ListenerOptions::default()
    };
    let listener =
        Listener::bind_with(SocketAddr::new(support::cm_ip(), 0), options).expect("bind");
    let addr = listener.local_addr();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(rt.spawn(async move {
            let options = ConnectionOptions {
                connect_timeout: Duration::from_secs(4),
                ..ConnectionOptions::default()
            };
            Connection::connect(addr, options).await
        }));
    }
    // Every request has arrived (or been turned away) before the server looks.
    anyrdma::sleep(Duration::from_secs(1)).await;
    let server = rt.spawn(async move {
        let mut accepted = Vec::new();
        while let Ok(Ok(conn)) = anyrdma::timeout(Duration::from_secs(2), listener.accept()).await {
            accepted.push(conn);
        }
        accepted
    });
    let mut connected = 0;
    let mut turned_away = Vec::new();
    for client in clients {
        match within(15, "a client", client).await {
            Ok(_conn) => connected += 1,
            Err(err) => turned_away.push(err),
        }
    }
    let accepted = within(15, "the server", server).await;
    println!(
        "{}: backlog {BACKLOG}: {connected} connected, turned away: {turned_away:?}",
        rt.name()
    );
    assert!(
        connected <= BACKLOG,
        "{connected} connected with a backlog of {BACKLOG}"
    );
    assert_eq!(accepted.len(), connected);
    assert_eq!(connected + turned_away.len(), CLIENTS);
    for err in &turned_away {
        assert!(
            matches!(
                err,
                Error::ConnectRejected { .. }
                    | Error::ConnectRefused { .. }
                    | Error::Unreachable { .. }
                    | Error::ConnectTimeout { .. }
            ),
            "{err:?}"
        );
    }
}

/// The peer process is killed (SIGKILL) with a receive pending on each side of the test;
/// the pending and the new operations end with the disconnect error within seconds.
async fn killed_peer_ends_operations(rt: Rt) {
    if !support::device_present("killed_peer_ends_operations") {
        return;
    }
    let _serial = serial();
    // The peer is the server: this side is the client.
    let (mut child, addr) = spawn_peer(rt, "server", None);
    let conn = within(
        15,
        "connect",
        Connection::connect(addr, ConnectionOptions::default()),
    )
    .await
    .expect("connect");
    let seconds = pending_ends_when_killed(&conn, &mut child).await;
    println!(
        "{}: server killed: the client's receive ended after {seconds:.3} s",
        rt.name()
    );

    // The peer is the client: this side is the server.
    let listener = Listener::bind(SocketAddr::new(support::cm_ip(), 0)).expect("bind");
    let (mut child, _) = spawn_peer(rt, "client", Some(listener.local_addr()));
    let conn = within(15, "accept", listener.accept())
        .await
        .expect("accept");
    let seconds = pending_ends_when_killed(&conn, &mut child).await;
    println!(
        "{}: client killed: the server's receive ended after {seconds:.3} s",
        rt.name()
    );
}

/// Posts a receive on `conn`, kills `child`, and returns how long the receive took to end
/// with the disconnect error; a send after it fails too.
async fn pending_ends_when_killed(conn: &Connection, child: &mut Child) -> f64 {
    let pending = conn.recv(conn.pd().alloc(64, Access::LOCAL).unwrap());
    let killed = Instant::now();
    child.kill().expect("kill the peer");
    child.wait().expect("reap the peer");
    let (result, _buf) = within(10, "the pending receive", pending).await;
    let seconds = killed.elapsed().as_secs_f64();
    let err = result.expect_err("the peer is gone");
    assert!(err.is_disconnect(), "the receive ended with {err}");
    let (sent, _buf) = conn.send(conn.pd().alloc(8, Access::LOCAL).unwrap()).await;
    let err = sent.expect_err("the connection is gone");
    assert!(err.is_disconnect(), "a new send fails with {err}");
    assert!(seconds < 5.0, "took {seconds} s");
    seconds
}

/// Runs this test binary again as the peer (`role`: "server" or "client" connecting to
/// `connect_to`); returns it once it is ready, with the address it listens at.
fn spawn_peer(rt: Rt, role: &str, connect_to: Option<SocketAddr>) -> (Child, SocketAddr) {
    let test = format!("{}::peer_process", rt.module());
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(PEER_ENV, role)
        .env(
            "ANYRDMA_TEST_CM_CONNECT",
            connect_to.map(|a| a.to_string()).unwrap_or_default(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the peer process");
    let stdout = child.stdout.take().expect("the peer's stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the peer exited before it was ready")
            .expect("read the peer's stdout");
        // The harness may have begun the line with the test's name.
        if let Some((_, addr)) = line.split_once("READY ") {
            break addr.trim().parse().expect("the peer's address");
        }
    };
    // Keep draining the peer's output so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

/// The peer process of `killed_peer_ends_operations` (does nothing in a normal run).
async fn peer_process(_rt: Rt) {
    let Ok(role) = std::env::var(PEER_ENV) else {
        return;
    };
    let keep: (Connection, Option<Listener>) = if role == "server" {
        let listener = Listener::bind(SocketAddr::new(support::cm_ip(), 0)).expect("bind");
        println!("READY {}", listener.local_addr());
        let conn = listener.accept().await.expect("accept");
        (conn, Some(listener))
    } else {
        let addr: SocketAddr = std::env::var("ANYRDMA_TEST_CM_CONNECT")
            .expect("address")
            .parse()
            .expect("address");
        println!("READY {addr}");
        let conn = Connection::connect(addr, ConnectionOptions::default())
            .await
            .expect("connect");
        (conn, None)
    };
    // Wait (with a receive posted) until killed.
    let buf: LocalBuf = keep.0.pd().alloc(64, Access::LOCAL).unwrap();
    let pending = keep.0.recv(buf);
    let _ = within(60, "being killed", pending).await;
}

/// A connection on resources of its own: memory allocated before connecting, on a protection
/// domain of the route's device, is used by the connection; resources of another device are
/// refused with a clear error.
async fn own_resources_are_used(rt: Rt) {
    if !support::device_present("own_resources_are_used") {
        return;
    }
    let _serial = serial();
    let listener = Listener::bind(SocketAddr::new(support::cm_ip(), 0)).expect("bind");
    let addr = listener.local_addr();
    let server = rt.spawn(serve(rt, listener));
    let resources_of = |device: &str| {
        let ctx = Context::open(device).expect("open the device");
        let pd = ctx.alloc_pd().expect("pd");
        let cq = CompletionQueue::new(&ctx, CqOptions::default()).expect("cq");
        ConnectionResources {
            pd,
            send_cq: cq.clone(),
            recv_cq: cq,
        }
    };
    // rxe_lo is not on the route to rxe0's address.
    let elsewhere = ConnectionOptions {
        resources: Some(resources_of("rxe_lo")),
        ..ConnectionOptions::default()
    };
    match within(15, "connect", Connection::connect(addr, elsewhere)).await {
        Err(err @ Error::InvalidArgument(_)) => {
            assert!(err.to_string().contains("rxe0"), "{err}");
        }
        other => panic!("{}: resources of another device: {other:?}", rt.name()),
    }
    let own = resources_of("rxe0");
    // Allocated before the connection exists: a registration of the connection's own PD.
    let mut message = own.pd.alloc(4096, Access::LOCAL).unwrap();
    let reply = own.pd.alloc(4096, Access::LOCAL).unwrap();
    fill(&mut message, 9);
    let options = ConnectionOptions {
        resources: Some(own),
        ..ConnectionOptions::default()
    };
    let conn = within(15, "connect", Connection::connect(addr, options))
        .await
        .expect("connect");
    let receive = conn.recv(reply);
    let (sent, _message) = conn.send(message).await;
    sent.expect("send memory registered before connecting");
    let (received, reply) = within(10, "the echo", receive).await;
    assert_eq!(received.expect("echo").len, 4096);
    assert!(holds_pattern(&reply, 9));
    conn.close().await.expect("close");
    drop(server);
}

runtime_tests!(
    connect_echo_close,
    refusals_are_typed,
    many_clients_at_once,
    dropped_connections_release_everything,
    killed_peer_ends_operations,
    backlog_is_bounded,
    own_resources_are_used,
    peer_process,
);
