//! The checks of the ecosystem tests, without a device: the same HTTP and gRPC exchanges as
//! `device_http` and `device_grpc`, over an in-memory Tokio stream (`tokio::io::duplex`),
//! first intact, then with one byte lost, duplicated or reordered on the client's side. Each
//! fault must make the exchange fail: this is what makes a passing device test mean that the
//! RDMA stream carried every byte once, in order.

mod support;

use std::time::Duration;

use anyrdma_ecosystem::grpc;
use anyrdma_ecosystem::http::{self, Client, Protocol};
use anyrdma_ecosystem::BoxError;
use support::{Fault, Flavor, Tamper, Trigger};

/// The in-memory pipe's buffer: small, so that large bodies take many reads and writes.
const PIPE: usize = 64 << 10;

/// An HTTP client on one end of a pipe, a server on the other; the client's reads pass
/// through a [`Tamper`].
async fn http_pair(protocol: Protocol, fault: Fault) -> (Client, Trigger) {
    let (client_end, server_end) = tokio::io::duplex(PIPE);
    tokio::spawn(async move {
        // A server whose client sent broken bytes may end with an error: that is expected.
        let _ = http::serve_connection(server_end).await;
    });
    let (tamper, trigger) = Tamper::new(client_end, fault);
    let client = Client::handshake(tamper, protocol)
        .await
        .expect("HTTP handshake");
    (client, trigger)
}

/// An intact pipe: every size, echo and pattern, pass.
async fn intact(protocol: Protocol) {
    let (mut client, _) = http_pair(protocol, Fault::Lose).await;
    for (seed, len) in [(1, 0), (2, 1), (3, 100), (4, 65536), (5, 1 << 20)] {
        let echo = client.echo(seed, len).await.expect("echo");
        assert_eq!((echo.sent, echo.received), (len, len));
        let pattern = client.pattern(seed + 100, len).await.expect("pattern");
        assert_eq!(pattern.received, len);
    }
}

/// One request whose response has a byte broken by `fault` somewhere in its body.
async fn broken(protocol: Protocol, fault: Fault) -> Result<(), BoxError> {
    let (mut client, trigger) = http_pair(protocol, fault).await;
    // A first exchange on the same connection, intact.
    client
        .echo(1, 1000)
        .await
        .expect("the exchange before the fault");
    // Past the response's head and (HTTP/2) its first frame header, inside the body.
    trigger.arm(100_000);
    // A lost byte leaves a body with a content-length waiting for its last byte: a hang,
    // which counts as a failure too.
    match tokio::time::timeout(Duration::from_secs(5), client.echo(2, 256 << 10)).await {
        Ok(result) => result.map(drop),
        Err(_) => Err("no response within 5 s".into()),
    }
}

fn http_faults(protocol: Protocol) {
    Flavor::MultiThread.run("intact", 60, intact(protocol));
    for fault in [Fault::Lose, Fault::Duplicate, Fault::Reorder] {
        match Flavor::MultiThread.run("broken", 60, broken(protocol, fault)) {
            Ok(()) => panic!(
                "{} with a byte {fault:?}: the check passed",
                protocol.name()
            ),
            Err(err) => eprintln!("{} with a byte {fault:?}: caught: {err}", protocol.name()),
        }
    }
}

#[test]
fn http1_checks_catch_a_lost_duplicated_or_reordered_byte() {
    http_faults(Protocol::Http1);
}

#[test]
fn http2_checks_catch_a_lost_duplicated_or_reordered_byte() {
    http_faults(Protocol::Http2);
}

/// A gRPC client whose one connection is a pipe, its reads through a [`Tamper`], to tonic's
/// server on the other end.
async fn grpc_pair(fault: Fault) -> (grpc::PatternsClient<tonic::transport::Channel>, Trigger) {
    let (client_end, server_end) = tokio::io::duplex(PIPE);
    // tonic takes a pipe as it is (it is `Connected`, with no addresses).
    let incoming = tokio_stream::iter([Ok::<_, std::io::Error>(server_end)]);
    tokio::spawn(
        tonic::transport::Server::builder().serve_with_incoming(grpc::service(), incoming),
    );
    let (tamper, trigger) = Tamper::new(client_end, fault);
    // The connector hands out the one pipe; a second connection (after a failure) is refused.
    let tamper = std::sync::Mutex::new(Some(tamper));
    let channel = tonic::transport::Endpoint::from_static("http://pipe")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let io = tamper.lock().unwrap().take();
            async move {
                io.map(hyper_util::rt::TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the pipe is used"))
            }
        }))
        .await
        .expect("gRPC channel");
    (grpc::client(channel), trigger)
}

#[test]
fn grpc_checks_catch_a_reordered_byte() {
    Flavor::MultiThread.run("grpc", 60, async {
        let (mut client, trigger) = grpc_pair(Fault::Reorder).await;
        for (seed, len) in [(1, 0), (2, 1), (3, 100), (4, 65536), (5, 1 << 20)] {
            assert_eq!(
                grpc::check_echo(&mut client, seed, len).await.unwrap(),
                len as u64
            );
        }
        assert_eq!(
            grpc::check_generate(&mut client, 6, 16, 65536)
                .await
                .unwrap(),
            16 * 65536
        );
        trigger.arm(100_000);
        let result = grpc::check_generate(&mut client, 7, 16, 65536).await;
        match result {
            Ok(_) => panic!("gRPC with a byte reordered: the check passed"),
            Err(err) => eprintln!("gRPC with a byte reordered: caught: {err}"),
        }
    });
}
