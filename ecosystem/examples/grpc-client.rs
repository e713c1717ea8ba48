//! gRPC client over RDMA byte streams: a tonic channel whose connections are
//! `anyrdma::stream::RdmaStream`s, calling `grpc-server`'s `Patterns` service: `--calls`
//! unary `Echo` calls (`--concurrency` at once), then one server-streaming `Generate` call;
//! every byte is checked.
//!
//!     cargo run -p anyrdma-ecosystem --example grpc-client -- --connect 169.254.77.1
//!
//! Options: `--connect ADDR[:PORT]` (default port 50051), `--calls N` (default 1000),
//! `--concurrency C` (default 8), `--size N|MIN-MAX` (payload bytes, default 0-65536),
//! `--chunks N` (default 256) and `--chunk-size N` (default 65536) for the stream.
//! Exits with status 1 if any call fails or any byte differs.

#[path = "common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyrdma_ecosystem::{error_chain, grpc, BoxError};
use common::Sizes;

const USAGE: &str = "usage: grpc-client --connect ADDR[:PORT] [--calls N] [--concurrency C] \
                     [--size N|MIN-MAX] [--chunks N] [--chunk-size N]";
const DEFAULT_PORT: u16 = 50051;

async fn run(args: &common::Args) -> Result<(), BoxError> {
    let addr = args.addr("--connect", DEFAULT_PORT, USAGE);
    let calls = args.number("--calls", 1000) as u64;
    let concurrency = args.number("--concurrency", 8).max(1);
    let sizes = args.sizes("--size", Sizes { min: 0, max: 65536 });
    let chunks = u32::try_from(args.number("--chunks", 256))?;
    let chunk_size = u32::try_from(args.number("--chunk-size", 65536))?;

    // One HTTP/2 connection over RDMA; the calls below are multiplexed on it.
    let client = grpc::client(grpc::channel(addr).await?);
    println!(
        "grpc-client: connected to {addr}: {calls} Echo calls of {sizes}, {concurrency} at once"
    );

    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (mut client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls {
                        return Ok::<(), String>(());
                    }
                    let len = sizes.of(i);
                    grpc::check_echo(&mut client, i, len)
                        .await
                        .map_err(|err| format!("Echo {i} ({len} bytes): {}", error_chain(&*err)))?;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "grpc-client: {calls} Echo calls checked in {secs:.2} s: {:.0} calls/s",
        calls as f64 / secs
    );

    let started = Instant::now();
    let mut client = client;
    let bytes = grpc::check_generate(&mut client, calls, chunks, chunk_size).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "grpc-client: Generate streamed {chunks} chunks of {chunk_size} bytes, checked in {secs:.2} s ({:.1} MB/s)",
        bytes as f64 / secs / 1e6
    );
    Ok(())
}

fn main() {
    let args = common::Args::parse("grpc-client", USAGE, &[]);
    if let Err(err) = common::block_on(run(&args)) {
        common::fail("grpc-client", &error_chain(&*err));
    }
}
