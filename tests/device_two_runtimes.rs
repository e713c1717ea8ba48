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
