//! HTTP client over RDMA byte streams: hyper 1.x on `anyrdma::stream::RdmaStream`s, HTTP/1.1
//! or (with `--http2`) HTTP/2. It sends requests to `http-server`, `POST /echo` and
//! `GET /pattern` in turn, checks every byte of every response, and reports the rate.
//!
//!     cargo run -p anyrdma-ecosystem --example http-client -- --connect 169.254.77.1 --http2
//!
//! Options: `--connect ADDR[:PORT]` (default port 8080), `--http2`, `--requests N` (default
//! 1000), `--concurrency C` (requests in flight, default 8: HTTP/1.1 opens C connections,
//! HTTP/2 multiplexes C streams on one), `--size N|MIN-MAX` (body bytes, default 0-65536).
//! Exits with status 1 if any request fails or any byte differs.

#[path = "common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyrdma_ecosystem::http::{Client, Protocol};
use anyrdma_ecosystem::{error_chain, BoxError};
use common::Sizes;

const USAGE: &str = "usage: http-client --connect ADDR[:PORT] [--http2] [--requests N] \
                     [--concurrency C] [--size N|MIN-MAX]";
const DEFAULT_PORT: u16 = 8080;

/// Runs requests `next, next + concurrency, ...` below `requests` on `client`, each checked;
/// returns the body bytes moved.
async fn worker(
    mut client: Client,
    next: Arc<AtomicU64>,
    requests: u64,
    sizes: Sizes,
) -> Result<u64, BoxError> {
    let mut bytes = 0;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= requests {
            return Ok(bytes);
        }
        let len = sizes.of(i) as u64;
        // Every request has a seed of its own: bytes of one response in another fail the check.
        let exchange = if i.is_multiple_of(2) {
            client.echo(i, len).await
        } else {
            client.pattern(i, len).await
        }
        .map_err(|err| format!("request {i} ({len} bytes): {}", error_chain(&*err)))?;
        bytes += exchange.sent + exchange.received;
    }
}

async fn run(args: &common::Args) -> Result<(), BoxError> {
    let addr = args.addr("--connect", DEFAULT_PORT, USAGE);
    let protocol = if args.flag("--http2") {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    let requests = args.number("--requests", 1000) as u64;
    let concurrency = args.number("--concurrency", 8).max(1);
    let sizes = args.sizes("--size", Sizes { min: 0, max: 65536 });

    let mut clients = Vec::with_capacity(concurrency);
    match protocol {
        // One request at a time per HTTP/1.1 connection: a connection per request in flight.
        Protocol::Http1 => {
            for _ in 0..concurrency {
                clients.push(Client::connect(addr, protocol).await?);
            }
        }
        Protocol::Http2 => {
            let first = Client::connect(addr, protocol).await?;
            for _ in 1..concurrency {
                clients.push(first.share().expect("HTTP/2 shares its connection"));
            }
            clients.push(first);
        }
    }
    println!(
        "http-client: connected to {addr} with {}: {requests} requests of {sizes}, {concurrency} in flight",
        protocol.name()
    );
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::spawn(worker(client, next.clone(), requests, sizes)))
        .collect();
    let mut bytes = 0;
    for worker in workers {
        bytes += worker.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "http-client: {requests} requests checked in {secs:.2} s: {:.0} requests/s, {:.1} MB/s of bodies",
        requests as f64 / secs,
        bytes as f64 / secs / 1e6
    );
    Ok(())
}

fn main() {
    let args = common::Args::parse("http-client", USAGE, &["--http2"]);
    if let Err(err) = common::block_on(run(&args)) {
        common::fail("http-client", &error_chain(&*err));
    }
}
