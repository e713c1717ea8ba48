//! Echo client over an RDMA connection: sends `--count` messages of `--size` bytes to an
//! echo server, checks every reply, and prints the round-trip latency and the message rate.
//!
//!     cargo run --example echo-client --features tokio -- --connect 169.254.77.1 --size 64 --count 10000
//!
//! `--help` lists the options.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anyrdma::cm::{Connection, ConnectionOptions};
use anyrdma::{Access, Error, Result};
use clap::Parser;

/// Echo client over an RDMA connection: sends messages to an echo server, checks every reply,
/// and prints the round-trip latency and the message rate.
#[derive(Parser)]
#[command(name = "echo-client", version, args_override_self = true)]
struct Args {
    /// The echo server's address (default port 7471).
    #[arg(long, value_name = "ADDR[:PORT]")]
    connect: String,
    /// Message size in bytes, or MIN-MAX: sizes spread over that range, message by message.
    #[arg(long, value_name = "N|MIN-MAX", default_value = "16")]
    size: common::Sizes,
    /// Messages to send.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Check only the replies' lengths (for servers that answer without echoing, such as
    /// rdma-core's rdma_server).
    #[arg(long)]
    no_verify: bool,
}

const DEFAULT_PORT: u16 = 7471;

/// What message `i` holds: its number, then bytes that depend on it.
fn fill(message: &mut [u8], i: u64) {
    for (at, byte) in message.iter_mut().enumerate() {
        *byte = (i as usize).wrapping_mul(31).wrapping_add(at) as u8;
    }
    let tag = i.to_le_bytes();
    let n = message.len().min(tag.len());
    message[..n].copy_from_slice(&tag[..n]);
}

async fn run(connect: &str, sizes: common::Sizes, count: u64, verify: bool) -> Result<()> {
    let addr = anyrdma::cm::parse_addr(connect, DEFAULT_PORT)?;
    let conn = Connection::connect(addr, ConnectionOptions::default()).await?;
    println!(
        "echo-client: connected to {} from {} (queue pair {})",
        conn.peer_addr(),
        conn.local_addr(),
        conn.qpn()
    );
    let pd = conn.pd();
    let mut message = pd.alloc(sizes.max.max(1), Access::LOCAL)?;
    let mut reply = pd.alloc(sizes.max.max(1), Access::LOCAL)?;
    let mut expected = vec![0; sizes.max];
    let mut samples = Vec::with_capacity(count as usize);
    let started = Instant::now();
    for i in 0..count {
        let size = sizes.of(i);
        let expected = &mut expected[..size];
        fill(expected, i);
        message[..size].copy_from_slice(expected);
        let began = Instant::now();
        // The reply's receive is posted before the message goes out.
        let receive = conn.recv(reply);
        let tail = message.split_off(size);
        let (sent, mut back) = conn.send(message).await;
        back.unsplit(tail).expect("the tail follows its head");
        message = back;
        sent?;
        let (received, back) = receive.await;
        reply = back;
        let received = received?;
        samples.push(began.elapsed());
        if received.len != size {
            return Err(Error::InvalidArgument(format!(
                "reply {i} has {} bytes, not {size}",
                received.len
            )));
        }
        if verify && reply[..size] != *expected {
            return Err(Error::InvalidArgument(format!(
                "reply {i} differs from the message sent"
            )));
        }
    }
    let elapsed = started.elapsed();
    conn.close().await?;
    let (median, p99) = common::median_p99(&mut samples);
    let rate = count as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    println!(
        "echo-client: {count} messages of {sizes}{}: round trip median {:.2} µs, p99 {:.2} µs; {rate:.0} messages/s",
        if verify { ", every reply checked" } else { "" },
        micros(median),
        micros(p99),
    );
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let args = Args::parse();
    let verify = !args.no_verify;
    if let Err(err) = common::block_on(run(&args.connect, args.size, args.count, verify)) {
        common::fail("echo-client", &err.to_string());
    }
}
