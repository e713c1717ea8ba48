//! One process, two contexts on one device, one driven by Tokio and one by smol, both moving
//! data at once; and a context bound to a runtime that the waiting task does not run on.
//!
//! The runtimes are named through their adapter crates, so these tests need no feature
//! combination: they run in the Tokio build of the device tests.
#![cfg(feature = "tokio")]

mod support;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyrdma::{Context, CqOptions, MessageKind, PollMode, QpOptions, Received, RuntimeHandle};
use support::{holds_pattern, Pair};

const ROUND_TRIPS: usize = 300;

/// Event mode, so every wait sleeps on the runtime's reactor.
fn event_pair(ctx: Context) -> Pair {
    Pair::on(
        ctx,
        CqOptions {
            poll_mode: PollMode::Event { spin: 0 },
            ..CqOptions::default()
        },
        QpOptions::default(),
        anyrdma::ConnectOptions::default(),
    )
}

/// Send ping-pong on `pair`, checking every message; returns when it started and ended.
/// Every 50th receive is awaited before its message is sent, for a moment that `runtime`'s
/// timer ends: that wait has to sleep on the completion channel.
async fn ping_pong(pair: &Pair, runtime: &RuntimeHandle, who: &str) -> (Instant, Instant) {
    let started = Instant::now();
    for i in 0..ROUND_TRIPS {
        let seed = i as u8;
        let len = 1 + (i * 37) % 4096;
        let inbox = pair.pd.alloc(4096, anyrdma::Access::LOCAL).unwrap();
        let mut receive = pair.b.recv(inbox);
        if i % 50 == 0 {
            let early = runtime
                .timeout(Duration::from_millis(20), &mut receive)
                .await;
            assert!(
                early.is_err(),
                "{who}: a receive completed with nothing sent"
            );
        }
        let (sent, _) = pair
            .a
            .send_with_imm(pair.patterned(len, seed), i as u32)
            .await;
        sent.unwrap_or_else(|e| panic!("{who}: send {i}: {e}"));
        let (received, inbox) = receive.await;
        let received = received.unwrap_or_else(|e| panic!("{who}: receive {i}: {e}"));
        assert_eq!(
            received,
            Received {
                len,
                imm: Some(i as u32),
                kind: MessageKind::SendWithImm
            },
            "{who}"
        );
        assert!(holds_pattern(&inbox[..len], seed), "{who}: message {i}");
    }
    (started, Instant::now())
}

/// The CQ of `pair` settled on `runtime` and sleeps on its reactor.
fn assert_waits_with(pair: &Pair, runtime: &str) {
    for cq in [&pair.cq_a, &pair.cq_b] {
        assert_eq!(cq.runtime().map(|r| r.name()), Some(runtime));
        assert!(
            cq.wait_error().is_none(),
            "{runtime}: the CQ polls instead of sleeping: {:?}",
            cq.wait_error()
        );
    }
}

#[test]
fn tokio_and_smol_contexts_move_data_at_once() {
    if !support::device_present("tokio_and_smol_contexts_move_data_at_once") {
        return;
    }
    let start = Arc::new(Barrier::new(2));
    let on_tokio = {
        let start = start.clone();
        std::thread::spawn(move || {
            let tokio = RuntimeHandle::from(anyrdma_tokio::Tokio);
            let pair = event_pair(Context::open_default().unwrap().with_runtime(tokio.clone()));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            start.wait();
            let span = runtime.block_on(ping_pong(&pair, &tokio, "tokio"));
            assert_waits_with(&pair, "tokio");
            span
        })
    };
    let on_smol = std::thread::spawn(move || {
        let smol = RuntimeHandle::from(anyrdma_smol::Smol);
        let pair = event_pair(Context::open_default().unwrap().with_runtime(smol.clone()));
        start.wait();
        let span = smol::block_on(ping_pong(&pair, &smol, "smol"));
        assert_waits_with(&pair, "smol");
        span
    });
    let tokio_span = on_tokio.join().expect("the Tokio side failed");
    let smol_span = on_smol.join().expect("the smol side failed");
    // Both ran at the same time: each started before the other ended.
    assert!(
        tokio_span.0 < smol_span.1 && smol_span.0 < tokio_span.1,
        "the two runtimes did not overlap: tokio {tokio_span:?}, smol {smol_span:?}"
    );
}

/// A context bound to Tokio, awaited from a thread with no Tokio runtime: Tokio cannot watch
/// the channel there, so the CQ says why and polls instead; every operation still completes.
#[test]
fn runtime_that_cannot_watch_falls_back_to_polling() {
    if !support::device_present("runtime_that_cannot_watch_falls_back_to_polling") {
        return;
    }
    let ctx = Context::open_default()
        .unwrap()
        .with_runtime(anyrdma_tokio::Tokio);
    let pair = event_pair(ctx);
    let smol = RuntimeHandle::from(anyrdma_smol::Smol);
    smol::block_on(smol.timeout(
        Duration::from_secs(60),
        ping_pong(&pair, &smol, "tokio-bound, awaited on smol"),
    ))
    .expect("operations must complete by polling");
    let why = pair
        .cq_b
        .wait_error()
        .expect("the CQ must say why it polls");
    assert!(
        why.to_string().contains("tokio") && why.to_string().contains("no Tokio runtime"),
        "{why}"
    );
}

/// A CQ that slept on a Tokio runtime which then shut down: the next wait, on another
/// runtime, finds the reactor gone; the CQ says so (`wait_error`) and polls instead, and
/// every operation still completes.
#[test]
fn runtime_shut_down_is_reported_and_operations_still_complete() {
    if !support::device_present("runtime_shut_down_is_reported_and_operations_still_complete") {
        return;
    }
    let ctx = Context::open_default()
        .unwrap()
        .with_runtime(anyrdma_tokio::Tokio);
    let pair = event_pair(ctx);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tokio_handle = RuntimeHandle::from(anyrdma_tokio::Tokio);
    tokio.block_on(ping_pong(&pair, &tokio_handle, "on Tokio"));
    assert!(pair.cq_b.wait_error().is_none(), "the CQ slept on Tokio");
    drop(tokio);

    let smol = RuntimeHandle::from(anyrdma_smol::Smol);
    smol::block_on(smol.timeout(
        Duration::from_secs(60),
        ping_pong(&pair, &smol, "after Tokio shut down"),
    ))
    .expect("operations must complete by polling");
    let why = pair
        .cq_b
        .wait_error()
        .expect("the CQ must say that its runtime is gone");
    assert!(why.to_string().contains("tokio"), "{why}");
}

/// A context bound to Tokio, awaited from a smol thread (no Tokio runtime there): a wait
/// that needs the context's timer, and the device's events, end with a typed error naming
/// Tokio rather than a panic inside Tokio, and the thread can go on. Awaited on Tokio
/// afterwards, the same context waits for its events normally: the failed registration was
/// the smol thread's, and is not kept.
#[test]
fn a_timer_of_a_runtime_not_running_here_is_a_typed_error() {
    if !support::device_present("a_timer_of_a_runtime_not_running_here_is_a_typed_error") {
        return;
    }
    let ctx = Context::open_default()
        .unwrap()
        .with_runtime(anyrdma_tokio::Tokio);
    let pd = ctx.alloc_pd().unwrap();
    let region = pd
        .alloc_shared(64, anyrdma::Access::LOCAL | anyrdma::Access::REMOTE_WRITE)
        .unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        smol::block_on(async {
            // Nobody writes the word: the wait must sleep, on the context's runtime.
            let waited = smol::future::or(async { Some(region.wait_u64(0, 0).await) }, async {
                smol::Timer::after(Duration::from_secs(20)).await;
                None
            })
            .await;
            let next = smol::future::or(async { Some(ctx.next_event().await) }, async {
                smol::Timer::after(Duration::from_millis(200)).await;
                None
            })
            .await;
            (waited, next)
        })
    }));
    let (waited, next) = outcome.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("a Tokio-bound context awaited on smol panicked: {why}")
    });
    match waited {
        Some(Err(err @ anyrdma::Error::Runtime { .. })) => {
            assert!(err.to_string().contains("tokio"), "{err}");
        }
        other => panic!("the wait on a smol thread: {other:?}"),
    }
    match next {
        Some(Err(err @ anyrdma::Error::Runtime { .. })) => {
            assert!(err.to_string().contains("tokio"), "{err}");
        }
        other => panic!("next_event on a smol thread: {other:?}"),
    }
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let on_tokio = tokio.block_on(async {
        tokio::time::timeout(Duration::from_millis(300), ctx.next_event()).await
    });
    assert!(
        on_tokio.is_err(),
        "on Tokio, next_event must wait for an event (none comes): {on_tokio:?}"
    );
}

/// A connection whose completion queue belongs to a context bound to Tokio, awaited on smol:
/// neither the CQ's channel nor the device's events can be watched there, so its operations
/// poll; the peer's disconnect must still be read by them, and end the pending receive.
#[test]
fn a_poller_that_cannot_sleep_still_reads_the_connection_end() {
    if !support::device_present("a_poller_that_cannot_sleep_still_reads_the_connection_end") {
        return;
    }
    use anyrdma::cm::{
        Connection, ConnectionOptions, ConnectionResources, Listener, ListenerOptions,
    };
    let ip = support::cm_ip();
    let smol_handle = RuntimeHandle::from(anyrdma_smol::Smol);
    let on_smol = ConnectionOptions {
        runtime: Some(smol_handle.clone()),
        ..ConnectionOptions::default()
    };
    let listener = Listener::bind_with(
        std::net::SocketAddr::new(ip, 0),
        ListenerOptions {
            connection: on_smol.clone(),
            ..ListenerOptions::default()
        },
    )
    .expect("bind");
    let addr = listener.local_addr();
    // The client's own resources must be of the device its route takes: the listener's
    // (the default device may be another one, rxe_lo when ANYRDMA_DEVICE says so).
    let route = listener
        .port()
        .expect("the listener's port")
        .expect("a listener bound to one address has a device");
    let tokio_bound = Context::open_port(&route)
        .unwrap()
        .with_runtime(anyrdma_tokio::Tokio);
    let pd = tokio_bound.alloc_pd().unwrap();
    let cq = anyrdma::CompletionQueue::new(&tokio_bound, CqOptions::default()).unwrap();
    let client_options = ConnectionOptions {
        resources: Some(ConnectionResources {
            pd: pd.clone(),
            send_cq: cq.clone(),
            recv_cq: cq.clone(),
        }),
        ..on_smol
    };
    smol::block_on(smol_handle.timeout(Duration::from_secs(60), async {
        // A failed connect ends the pair at once with its error (the listener's accept would
        // wait for another request for ever).
        let (server, client) = smol::future::try_zip(
            async {
                listener
                    .accept()
                    .await
                    .map_err(|err| format!("accept: {err}"))
            },
            async {
                Connection::connect(addr, client_options)
                    .await
                    .map_err(|err| format!("connect: {err}"))
            },
        )
        .await
        .expect("a connection across the two runtimes");
        let pending = client.recv(pd.alloc(64, anyrdma::Access::LOCAL).unwrap());
        server.close().await.expect("close");
        let ended = smol::future::or(async { Some(pending.await) }, async {
            smol::Timer::after(Duration::from_secs(10)).await;
            None
        })
        .await;
        let (result, _) = ended.expect(
            "the receive pending when the peer disconnected never ended: nobody read the \
             disconnect",
        );
        let err = result.expect_err("nothing was sent");
        assert!(err.is_disconnect(), "the receive ended with {err}");
        assert!(
            cq.wait_error().is_some(),
            "the CQ could not have slept on Tokio from a smol thread"
        );
    }))
    .expect("within 60 s");
}

/// Two Tokio runtimes in one process, each with connections through the same device; the
/// first shuts down. The second's connections keep sleeping on their own reactor (their
/// completion queues report no wait error, so nothing polls busily), and a receive awaited
/// by its idle current-thread runtime wakes when the message comes.
#[test]
fn a_tokio_runtime_outlives_another_on_the_same_device() {
    if !support::device_present("a_tokio_runtime_outlives_another_on_the_same_device") {
        return;
    }
    use anyrdma::cm::{Connection, ConnectionOptions, Listener};
    use std::net::SocketAddr;
    use std::sync::mpsc;

    let ip = std::net::IpAddr::from([169, 254, 77, 1]);
    fn event_mode() -> ConnectionOptions {
        ConnectionOptions {
            poll_mode: PollMode::Event { spin: 0 },
            runtime: Some(RuntimeHandle::from(anyrdma_tokio::Tokio)),
            ..ConnectionOptions::default()
        }
    }
    /// One message from `from` to `to`, checked. The receive is awaited first, and the
    /// send comes later, so that the receive sleeps on its completion queue's channel (rxe
    /// may complete a send and its receive within the post).
    async fn one_message(from: &Connection, to: &Connection, seed: u8) {
        let inbox = to.pd().alloc(64, anyrdma::Access::LOCAL).unwrap();
        let mut message = from.pd().alloc(64, anyrdma::Access::LOCAL).unwrap();
        support::fill(&mut message, seed);
        let ((received, inbox), (sent, _)) = tokio::join!(to.recv(inbox), async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            from.send(message).await
        });
        sent.expect("send");
        assert_eq!(received.expect("receive").len, 64);
        assert!(holds_pattern(&inbox[..64], seed));
    }
    /// A listener and a connection to it, both ends, made and used once on the running
    /// runtime.
    async fn connected(
        options: ConnectionOptions,
        ip: std::net::IpAddr,
    ) -> (Connection, Connection) {
        let listening = anyrdma::cm::ListenerOptions {
            connection: options.clone(),
            ..Default::default()
        };
        let listener = Listener::bind_with(SocketAddr::new(ip, 0), listening).expect("bind");
        let addr = listener.local_addr();
        let (client, server) = tokio::join!(Connection::connect(addr, options), listener.accept());
        let (client, server) = (client.expect("connect"), server.expect("accept"));
        one_message(&client, &server, 1).await;
        (client, server)
    }

    // The first runtime's connections: their completion queue sleeps on its reactor.
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let first_pair = first.block_on(connected(event_mode(), ip));

    // The second runtime (current-thread) accepts; its peer runs on a third, in a thread of
    // its own, and sends when told.
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = {
        let listening = anyrdma::cm::ListenerOptions {
            connection: event_mode(),
            ..Default::default()
        };
        Listener::bind_with(SocketAddr::new(ip, 0), listening).expect("bind")
    };
    let addr = listener.local_addr();
    let (go, sends) = mpsc::channel::<u8>();
    let peer = std::thread::spawn(move || {
        let third = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conn = third
            .block_on(Connection::connect(addr, event_mode()))
            .expect("connect");
        // Each seed: a pause (so that the receiver is idle, asleep), then a message.
        while let Ok(seed) = sends.recv() {
            third.block_on(async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let mut message = conn.pd().alloc(64, anyrdma::Access::LOCAL).unwrap();
                support::fill(&mut message, seed);
                let (sent, _) = conn.send(message).await;
                sent.expect("the peer's send");
            });
        }
        third.block_on(conn.close()).expect("close");
    });
    let receive_one = |conn: &Connection, seed: u8| {
        let inbox = conn.pd().alloc(64, anyrdma::Access::LOCAL).unwrap();
        let receive = conn.recv(inbox);
        go.send(seed).unwrap();
        let (received, inbox) = second
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), receive).await })
            .unwrap_or_else(|_| panic!("message {seed}: the idle receiver was never woken"));
        assert_eq!(received.expect("receive").len, 64);
        assert!(holds_pattern(&inbox[..64], seed), "message {seed}");
    };
    let conn = second.block_on(listener.accept()).expect("accept");
    receive_one(&conn, 2);
    assert!(
        conn.recv_cq().wait_error().is_none(),
        "before the first runtime shut down"
    );

    // The first runtime goes (its connections stay).
    drop(first);
    receive_one(&conn, 3);
    receive_one(&conn, 4);
    let why = conn.recv_cq().wait_error();
    assert!(
        why.is_none(),
        "after the first runtime shut down, the second's completion queue polls instead of \
         sleeping: {why:?}"
    );
    drop(go);
    peer.join().expect("the peer");
    drop(first_pair);
}

/// A connection bound to Tokio, awaited outside any Tokio runtime: its handshake's timer
/// cannot be made there, and the connect says so with an error (it panicked inside
/// `tokio::time::sleep` before).
#[test]
fn a_tokio_bound_connect_awaited_outside_tokio_fails_with_a_reason() {
    if !support::device_present("a_tokio_bound_connect_awaited_outside_tokio_fails_with_a_reason") {
        return;
    }
    use anyrdma::cm::{Connection, ConnectionOptions};
    let options = ConnectionOptions {
        runtime: Some(RuntimeHandle::from(anyrdma_tokio::Tokio)),
        ..ConnectionOptions::default()
    };
    let addr = std::net::SocketAddr::from(([169, 254, 77, 1], 7));
    match smol::block_on(Connection::connect(addr, options)) {
        Err(anyrdma::Error::Runtime {
            runtime: "tokio",
            source,
            ..
        }) => assert!(source.to_string().contains("no Tokio runtime"), "{source}"),
        other => panic!("expected a Tokio runtime error, got {other:?}"),
    }
}

/// A listener bound to Tokio whose first `accept` is awaited outside Tokio (which cannot
/// watch its event channel there, an error) and the next inside a Tokio runtime: the
/// registration is tried again, and that accept works (the first failure was kept for
/// ever before, and every later accept failed with it).
#[test]
fn a_failed_registration_is_tried_again() {
    if !support::device_present("a_failed_registration_is_tried_again") {
        return;
    }
    use anyrdma::cm::{Connection, ConnectionOptions, Listener, ListenerOptions};
    let tokio_bound = ConnectionOptions {
        runtime: Some(RuntimeHandle::from(anyrdma_tokio::Tokio)),
        ..ConnectionOptions::default()
    };
    let options = ListenerOptions {
        connection: tokio_bound.clone(),
        ..ListenerOptions::default()
    };
    let listener = Listener::bind_with(std::net::SocketAddr::from(([169, 254, 77, 1], 0)), options)
        .expect("bind");
    let addr = listener.local_addr();
    match smol::block_on(listener.accept()) {
        Err(anyrdma::Error::Runtime {
            runtime: "tokio", ..
        }) => {}
        other => panic!("outside Tokio: expected a Tokio runtime error, got {other:?}"),
    }
    // Past the pause between attempts.
    std::thread::sleep(Duration::from_millis(300));
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (client, server) = tokio.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(Connection::connect(addr, tokio_bound), listener.accept())
        })
        .await
        .expect("connect and accept within 30 s")
    });
    client.expect("connect");
    server.expect("accept inside Tokio, after a failure outside it");
}

/// An operation polled by the block_on future of a Tokio multi-thread runtime with one unit
/// of Tokio's budget left: the budget check lets it through with the last unit, its CQ is not
/// watched yet, so it runs a round of the CQ's driver, whose readiness poll finds the budget
/// spent. That poll must not be refused (Tokio then wakes the waker at once, outside any
/// worker, which would ask the running driver for another round, for ever: a thread spinning
/// at 100% in one poll). The poll returns, and the receive completes when its message comes.
#[test]
fn an_operation_polled_with_the_last_unit_of_budget_returns() {
    if !support::device_present("an_operation_polled_with_the_last_unit_of_budget_returns") {
        return;
    }
    let _watchdog = support::watchdog(60, "a poll with the last unit of Tokio's budget");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pair = Pair::new();
        let mut recv = Box::pin(
            pair.b
                .recv(pair.pd.alloc(64, anyrdma::Access::LOCAL).unwrap()),
        );
        let first = std::future::poll_fn(|cx| {
            // block_on polls with a budget of 128: spend all but one unit.
            for _ in 0..127 {
                match tokio::task::coop::poll_proceed(cx) {
                    std::task::Poll::Ready(guard) => guard.made_progress(),
                    std::task::Poll::Pending => break,
                }
            }
            std::task::Poll::Ready(std::future::Future::poll(recv.as_mut(), cx).is_ready())
        })
        .await;
        assert!(!first, "nothing was sent yet");
        let (sent, _) = pair.a.send(pair.patterned(64, 3)).await;
        sent.expect("send");
        let (received, buf) = tokio::time::timeout(Duration::from_secs(20), recv)
            .await
            .expect("the receive completes");
        received.expect("receive");
        assert!(holds_pattern(&buf, 3), "the message arrived changed");
    });
}
