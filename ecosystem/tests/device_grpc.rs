//! tonic over anyrdma streams: tonic's server on a `StreamListener` (its `incoming()` given to
//! `serve_with_incoming_shutdown`) and a tonic channel whose connector opens `RdmaStream`s, on
//! Tokio's multi-thread and current-thread schedulers.
//!
//! Each test makes 32 unary calls at once with payloads of 0 B to 16 MiB (the server checks
//! each payload and sends it back, the client checks what comes back), then server-streaming
//! calls at once (many small chunks, and a few large ones), every chunk's position and bytes
//! checked; then it shuts the server down, which must end once the client is gone.
//!
//! Runs on rxe0's address in the guest, 169.254.77.1 (`ANYRDMA_TEST_CM_ADDR` overrides it).

mod support;

use anyrdma::stream::StreamListener;
use anyrdma_ecosystem::{error_chain, grpc};
use support::{device_present, listen_addr, Flavor};

/// Unary calls in flight at once.
const IN_FLIGHT: usize = 32;

/// The payload of unary call `i`: 0 B, 1 B, 100 B, 64 KiB and 1 MiB in turn, and 16 MiB for
/// the last.
fn payload_size(i: usize) -> usize {
    if i == IN_FLIGHT - 1 {
        16 << 20
    } else {
        [0, 1, 100, 64 << 10, 1 << 20][i % 5]
    }
}

/// Server-streaming calls made at once: (chunks, chunk size).
const STREAMS: [(u32, u32); 5] = [
    (1000, 100),
    (256, 4096),
    (64, 64 << 10),
    (4, 1 << 20),
    (0, 1 << 10),
];

async fn run(run: u64) {
    let listener = StreamListener::bind(listen_addr()).expect("bind a stream listener");
    let addr = listener.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(grpc::serve_with_shutdown(listener, async {
        let _ = stopped.await;
    }));
    let channel = grpc::channel(addr).await.expect("connect a gRPC channel");
    let client = grpc::client(channel);

    let started = std::time::Instant::now();
    let unary: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let len = payload_size(i);
                grpc::check_echo(&mut client, (run << 32) | i as u64, len)
                    .await
                    .map_err(|err| format!("Echo {i} of {len} bytes: {}", error_chain(&*err)))
            })
        })
        .collect();
    let mut failures = Vec::new();
    let mut bytes = 0;
    for call in unary {
        match call.await.expect("unary task") {
            Ok(len) => bytes += 2 * len,
            Err(failure) => failures.push(failure),
        }
    }
    let streaming: Vec<_> = STREAMS
        .iter()
        .enumerate()
        .map(|(i, &(chunks, size))| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let seed = (run << 32) | (1000 + i as u64);
                grpc::check_generate(&mut client, seed, chunks, size)
                    .await
                    .map_err(|err| {
                        format!("Generate {chunks} x {size} bytes: {}", error_chain(&*err))
                    })
            })
        })
        .collect();
    for call in streaming {
        match call.await.expect("streaming task") {
            Ok(len) => bytes += len,
            Err(failure) => failures.push(failure),
        }
    }
    assert!(
        failures.is_empty(),
        "{} calls failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "gRPC: {} unary and {} streaming calls, {:.1} MiB checked in {secs:.2} s",
        IN_FLIGHT,
        STREAMS.len(),
        bytes as f64 / (1 << 20) as f64
    );

    // tonic's graceful shutdown waits for the connections to end: the client goes first.
    drop(client);
    stop.send(()).expect("the server is running");
    server
        .await
        .expect("server task")
        .expect("the gRPC server ends without an error");
}

#[test]
fn grpc_multi_thread() {
    if device_present("grpc_multi_thread") {
        Flavor::MultiThread.run("grpc", 120, run(1));
    }
}

#[test]
fn grpc_current_thread() {
    if device_present("grpc_current_thread") {
        Flavor::CurrentThread.run("grpc", 120, run(2));
    }
}
