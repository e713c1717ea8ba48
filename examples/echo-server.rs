//! Echo server over RDMA connections: every message a client sends comes back to it on the
//! same connection. Serves any number of clients at once, each in a task of its own.
//!
//!     cargo run --example echo-server --features tokio -- --listen 169.254.77.1
//!
//! It talks to `echo-client` and to C programs such as rdma-core's `rdma_client`. `--help`
//! lists the options.

#[path = "common/mod.rs"]
mod common;

use std::collections::VecDeque;

use anyrdma::cm::{Incoming, Listener};
use anyrdma::{MemoryPool, PoolOptions, Result};
use clap::Parser;

/// Echo server over RDMA connections: every message a client sends comes back to it on the
/// same connection; any number of clients at once.
#[derive(Parser)]
#[command(name = "echo-server", version, args_override_self = true)]
struct Args {
    /// The address to listen on, an RDMA interface's (default port 7471).
    #[arg(long, value_name = "ADDR[:PORT]")]
    listen: String,
    /// The largest message in bytes.
    #[arg(long, default_value_t = 65536)]
    max_size: usize,
    /// Receives kept posted per connection.
    #[arg(long, default_value_t = 16)]
    depth: usize,
}
const DEFAULT_PORT: u16 = 7471;

async fn serve(listen: &str, max_size: usize, depth: usize) -> Result<()> {
    let addr = anyrdma::cm::parse_addr(listen, DEFAULT_PORT)?;
    let listener = Listener::bind(addr)?;
    println!("echo-server: listening on {}", listener.local_addr());
    loop {
        let incoming = listener.incoming().await?;
        common::spawn(async move {
            let peer = incoming.peer_addr();
            match echo(incoming, max_size, depth).await {
                Ok(messages) => println!("echo-server: {peer}: {messages} messages echoed"),
                Err(err) if err.is_disconnect() => {
                    println!("echo-server: {peer}: disconnected")
                }
                Err(err) => eprintln!("echo-server: {peer}: {err}"),
            }
        });
    }
}

/// Accepts one client and echoes its messages until it disconnects; returns how many.
async fn echo(incoming: Incoming, max_size: usize, depth: usize) -> Result<u64> {
    // Sized for the connection's receives (up to `depth` of `max_size`) and sends.
    let options = anyrdma::cm::ConnectionOptions::default();
    let peer = incoming.peer_addr();
    // The pool must be of the connection's device: made after the queue pair is, on its
    // protection domain, and the receives posted before the client is answered.
    let mut pool = None;
    let (conn, posted) = incoming
        .accept_and(options, |qp| -> Result<VecDeque<_>> {
            let new_pool = MemoryPool::new(
                qp.pd(),
                PoolOptions {
                    largest: max_size.next_power_of_two(),
                    ..PoolOptions::default()
                },
            );
            let receives = (0..depth)
                .map(|_| Ok(qp.recv(new_pool.alloc(max_size)?)))
                .collect::<Result<VecDeque<_>>>();
            pool = Some(new_pool);
            receives
        })
        .await?;
    let mut posted = posted?;
    let pool = pool.expect("set by accept_and's closure");
    println!("echo-server: {peer} connected (queue pair {})", conn.qpn());
    let mut messages = 0;
    // Receives complete in the order they were posted: wait for the oldest.
    while let Some(receive) = posted.pop_front() {
        let (received, mut buf) = receive.await;
        let received = match received {
            Ok(received) => received,
            // The client closed or went away: the normal end.
            Err(err) if err.is_disconnect() => return Ok(messages),
            Err(err) => return Err(err),
        };
        // Echo exactly the bytes that arrived, from the buffer they arrived in.
        let tail = buf.split_off(received.len);
        let (sent, mut buf) = conn.send(buf).await;
        sent?;
        buf.unsplit(tail).expect("the tail follows its head");
        posted.push_back(conn.recv(buf));
        messages += 1;
    }
    drop(pool);
    Ok(messages)
}

fn main() {
    let args = Args::parse();
    let (max_size, depth) = (args.max_size.max(1), args.depth.max(1));
    if let Err(err) = common::block_on(serve(&args.listen, max_size, depth)) {
        common::fail("echo-server", &err.to_string());
    }
}
