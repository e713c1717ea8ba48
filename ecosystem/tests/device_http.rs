//! hyper 1.x over anyrdma streams: an HTTP server on a `StreamListener` and clients on
//! `RdmaStream`s, HTTP/1.1 and HTTP/2, on Tokio's multi-thread and current-thread schedulers.
//!
//! Each test keeps 32 requests in flight with bodies of 0 B to 16 MiB: `POST /echo` (the body
//! goes to the server and back) and `GET /pattern` (made by the server), every response body
//! checked byte for byte against the pattern of its request's own seed (tests/checks.rs shows
//! that a byte lost, duplicated or reordered fails the check). HTTP/1.1 takes one connection
//! per request in flight, each carrying its requests one after the other (keep-alive); HTTP/2
//! carries all of them at once on one connection.
//!
//! Runs on rxe0's address in the guest, 169.254.77.1 (`ANYRDMA_TEST_CM_ADDR` overrides it).

mod support;

use anyrdma::stream::StreamListener;
use anyrdma_ecosystem::error_chain;
use anyrdma_ecosystem::http::{self, Client, Protocol};
use support::{device_present, listen_addr, Fault, Flavor, Tamper};

/// Requests in flight at once.
const IN_FLIGHT: usize = 32;

/// The body size of task `i`'s echo: 0 B, 1 B, 100 B, 64 KiB and 1 MiB in turn, and 16 MiB
/// for the last task (more would repeat the largest case at seconds of the guest's time each).
fn body_size(i: usize) -> u64 {
    if i == IN_FLIGHT - 1 {
        16 << 20
    } else {
        [0, 1, 100, 64 << 10, 1 << 20][i % 5]
    }
}

/// The body size of task `i`'s pattern request: as its echo's, up to 1 MiB (16 MiB goes both
/// ways in the echo already).
fn pattern_size(i: usize) -> u64 {
    body_size(i).min(1 << 20)
}

/// The seed of request `i` of a run: different for every request, so bytes of one response
/// that reached another fail its check.
fn seed(run: u64, i: usize) -> u64 {
    (run << 32) | i as u64
}

/// Serves `listener` with hyper until the runtime ends.
fn start_server(listener: StreamListener) {
    tokio::spawn(async move {
        if let Err(err) = http::serve(listener).await {
            panic!("the HTTP server stopped accepting: {err}");
        }
    });
}

/// `IN_FLIGHT` tasks, each an echo then a pattern request, with the body sizes of
/// [`body_size`]; task `i` uses `clients[i]`. Returns the bytes checked.
async fn requests(clients: Vec<Client>, run: u64) -> u64 {
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            tokio::spawn(async move {
                let len = body_size(i);
                let echo = client.echo(seed(run, i), len).await.map_err(|err| {
                    format!(
                        "request {i}: POST /echo with {len} bytes: {}",
                        error_chain(&*err)
                    )
                })?;
                let len = pattern_size(i);
                let pattern = client
                    .pattern(seed(run, i + IN_FLIGHT), len)
                    .await
                    .map_err(|err| {
                        format!(
                            "request {i}: GET /pattern of {len} bytes: {}",
                            error_chain(&*err)
                        )
                    })?;
                Ok::<u64, String>(echo.sent + echo.received + pattern.received)
            })
        })
        .collect();
    let mut total = 0;
    let mut failures = Vec::new();
    for task in tasks {
        match task.await.expect("request task") {
            Ok(bytes) => total += bytes,
            Err(failure) => failures.push(failure),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {IN_FLIGHT} requests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    total
}

/// One run of [`requests`] with `protocol`: HTTP/1.1 on a connection per task, HTTP/2 on one
/// connection shared by all.
async fn run(protocol: Protocol, run: u64) {
    let listener = StreamListener::bind(listen_addr()).expect("bind a stream listener");
    let addr = listener.local_addr();
    start_server(listener);
    let clients = match protocol {
        Protocol::Http1 => {
            let connecting: Vec<_> = (0..IN_FLIGHT)
                .map(|_| tokio::spawn(Client::connect(addr, protocol)))
                .collect();
            let mut clients = Vec::new();
            for connect in connecting {
                clients.push(
                    connect
                        .await
                        .expect("connect task")
                        .expect("HTTP/1.1 connect"),
                );
            }
            clients
        }
        Protocol::Http2 => {
            let first = Client::connect(addr, protocol)
                .await
                .expect("HTTP/2 connect");
            let mut clients: Vec<_> = (1..IN_FLIGHT)
                .map(|_| first.share().expect("HTTP/2 shares its connection"))
                .collect();
            clients.push(first);
            clients
        }
    };
    let started = std::time::Instant::now();
    let bytes = requests(clients, run).await;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{}: {} requests, {:.1} MiB checked in {secs:.2} s ({:.1} MiB/s)",
        protocol.name(),
        2 * IN_FLIGHT,
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / (1 << 20) as f64 / secs
    );
}

#[test]
fn http1_multi_thread() {
    if device_present("http1_multi_thread") {
        Flavor::MultiThread.run("http1", 120, run(Protocol::Http1, 1));
    }
}

#[test]
fn http1_current_thread() {
    if device_present("http1_current_thread") {
        Flavor::CurrentThread.run("http1", 120, run(Protocol::Http1, 2));
    }
}

#[test]
fn http2_multi_thread() {
    if device_present("http2_multi_thread") {
        Flavor::MultiThread.run("http2", 120, run(Protocol::Http2, 3));
    }
}

#[test]
fn http2_current_thread() {
    if device_present("http2_current_thread") {
        Flavor::CurrentThread.run("http2", 120, run(Protocol::Http2, 4));
    }
}

/// The checks fail over RDMA too: a byte reordered in what the client reads (by a
/// [`Tamper`] on its `RdmaStream`) fails the request, on each protocol.
#[test]
fn a_reordered_byte_fails_the_check() {
    if !device_present("a_reordered_byte_fails_the_check") {
        return;
    }
    Flavor::MultiThread.run("tamper", 60, async {
        let listener = StreamListener::bind(listen_addr()).expect("bind a stream listener");
        let addr = listener.local_addr();
        start_server(listener);
        for protocol in [Protocol::Http1, Protocol::Http2] {
            let stream = anyrdma::stream::RdmaStream::connect(addr)
                .await
                .expect("connect");
            let (tamper, trigger) = Tamper::new(stream, Fault::Reorder);
            let mut client = Client::handshake(tamper, protocol)
                .await
                .expect("handshake");
            client
                .echo(1, 1000)
                .await
                .expect("the request before the fault");
            trigger.arm(100_000);
            match client.echo(2, 256 << 10).await {
                Ok(_) => panic!("{}: a reordered byte passed the check", protocol.name()),
                Err(err) => eprintln!(
                    "{}: a reordered byte: caught: {}",
                    protocol.name(),
                    error_chain(&*err)
                ),
            }
        }
    });
}
