//! The byte stream as hyper and tonic use it, reduced to plain reads and writes: behaviour
//! the HTTP and gRPC tests depend on, each as a minimal case.
//!
//! Runs on rxe0's address in the guest, 169.254.77.1 (`ANYRDMA_TEST_CM_ADDR` overrides it).

mod support;

use std::time::Duration;

use anyrdma::stream::{RdmaStream, StreamListener};
use support::{device_present, listen_addr, Flavor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A writer whose peer has read every byte and then gone: its `flush` has nothing left to
/// wait for. hyper's HTTP/1.1 server flushes after the last bytes of a response, and a
/// client that read the response and closed its connection at that moment made the server's
/// connection end with "error writing a body to connection" on most connections.
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
