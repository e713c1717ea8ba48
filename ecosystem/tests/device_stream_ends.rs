//! How the ends of a byte stream behave when the peer goes, as hyper meets them, each reduced
//! to plain reads and writes: a socket's `flush` and `shutdown` succeed once the peer has
//! everything, even if it has closed and gone since.
//!
//! Runs on rxe0's address in the guest, 169.254.77.1 (`ANYRDMA_TEST_CM_ADDR` overrides it).

mod support;

use std::time::Duration;

use anyrdma::stream::{RdmaStream, StreamListener};
use anyrdma_ecosystem::error_chain;
use anyrdma_ecosystem::http::{self, Client, Protocol};
use support::{device_present, listen_addr, Flavor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A writer whose peer has read every byte and then gone: its `flush` has nothing left to
/// wait for, and succeeds. hyper's HTTP/1.1 server flushes after the last bytes of a response,
/// when its client may have read them and left already (before `msg: flush succeeds when
/// everything sent was delivered`, this failed for small and large writes alike).
async fn flush_after_the_peer_read_everything_and_left(len: usize) {
    let listener = StreamListener::bind(listen_addr()).expect("bind");
    let addr = listener.local_addr();
    let client = tokio::spawn(async move {
        let mut stream = RdmaStream::connect(addr).await.expect("connect");
        let mut buf = vec![0; len];
        stream.read_exact(&mut buf).await.expect("read everything");
        // Gone, with everything read: a socket would be closed here.
        drop(stream);
    });
    let mut server = listener.accept().await.expect("accept");
    server.write_all(&vec![7; len]).await.expect("write");
    client.await.expect("client task");
    // Some time for the disconnect to arrive: as in hyper, the flush comes later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let flushed = server.flush().await;
    assert!(
        flushed.is_ok(),
        "flush of {len} bytes the peer had all read: {}",
        flushed.unwrap_err()
    );
}

#[test]
fn flush_after_the_peer_read_a_small_write_and_left() {
    if device_present("flush_after_the_peer_read_a_small_write_and_left") {
        Flavor::MultiThread.run(
            "flush",
            30,
            flush_after_the_peer_read_everything_and_left(100),
        );
    }
}

#[test]
fn flush_after_the_peer_read_a_large_write_and_left() {
    if device_present("flush_after_the_peer_read_a_large_write_and_left") {
        Flavor::MultiThread.run(
            "flush",
            30,
            flush_after_the_peer_read_everything_and_left(1 << 20),
        );
    }
}

/// hyper's HTTP/1.1 client ends a connection with `shutdown` and drops it; the server reads the
/// end of the stream and shuts its own side down. With everything either side wrote delivered,
/// a socket's `shutdown` succeeds there; an error makes every such connection end with "error
/// shutting down connection" (or, when `shutdown` was pending, "error writing a body to
/// connection" from the flush hyper polls with it) on the server.
async fn shutdown_after_the_peer_closed_and_left() {
    let listener = StreamListener::bind(listen_addr()).expect("bind");
    let addr = listener.local_addr();
    let client = tokio::spawn(async move {
        let mut stream = RdmaStream::connect(addr).await.expect("connect");
        let mut buf = [0; 100];
        stream.read_exact(&mut buf).await.expect("read everything");
        stream.shutdown().await.expect("the client's shutdown");
        drop(stream);
    });
    let mut server = listener.accept().await.expect("accept");
    server.write_all(&[7; 100]).await.expect("write");
    server.flush().await.expect("flush");
    let mut buf = [0; 10];
    let n = server.read(&mut buf).await.expect("read the client's end");
    assert_eq!(n, 0, "the client's end of stream");
    client.await.expect("client task");
    let shut = server.shutdown().await;
    assert!(
        shut.is_ok(),
        "shutdown after the peer read everything, closed and left: {}",
        shut.unwrap_err()
    );
}

#[test]
fn shutdown_after_the_peer_closed_and_left_succeeds() {
    if device_present("shutdown_after_the_peer_closed_and_left_succeeds") {
        Flavor::MultiThread.run("shutdown", 30, shutdown_after_the_peer_closed_and_left());
    }
}

/// hyper's HTTP/1.1 and HTTP/2 servers on streams whose clients made their requests and left,
/// as the HTTP bench's clients do when they stop: every connection ends without an error
/// (the bench server printed "error writing a body to connection ... the peer disconnected"
/// for connections whose clients had every response).
async fn servers_end_cleanly_when_their_clients_leave(protocol: Protocol) {
    let listener = StreamListener::bind(listen_addr()).expect("bind");
    let addr = listener.local_addr();
    let mut failures = Vec::new();
    for round in 0..16u64 {
        let client = tokio::spawn(async move {
            let mut client = Client::connect(addr, protocol).await?;
            for i in 0..4 {
                let seed = round << 8 | i;
                client.echo(seed, 64 << (3 * i)).await?;
                client.pattern(seed, 100 << (3 * i)).await?;
            }
            // Gone, with every response read, as a bench client that stops.
            drop(client);
            Ok::<(), anyrdma_ecosystem::BoxError>(())
        });
        let stream = listener.accept().await.expect("accept");
        let served = http::serve_connection(stream).await;
        client
            .await
            .expect("client task")
            .unwrap_or_else(|err| panic!("round {round}: the client: {}", error_chain(&*err)));
        if let Err(err) = served {
            failures.push(format!("round {round}: {}", error_chain(&*err)));
        }
    }
    assert!(
        failures.is_empty(),
        "{}: {} of 16 connections whose client left ended with an error:\n{}",
        protocol.name(),
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn http_servers_end_cleanly_when_their_clients_leave() {
    if device_present("http_servers_end_cleanly_when_their_clients_leave") {
        for protocol in [Protocol::Http1, Protocol::Http2] {
            Flavor::MultiThread.run(
                protocol.name(),
                60,
                servers_end_cleanly_when_their_clients_leave(protocol),
            );
        }
    }
}
