//! Datagram ping: one server answers many clients from one unreliable datagram queue pair.
//!
//!     cargo run --example ud-ping --features tokio -- --listen 169.254.77.1
//!     cargo run --example ud-ping --features smol  -- --connect 169.254.77.1 --clients 4 --count 1000 --size 64
//!
//! The server binds a datagram listener (port 7474 by default): clients find its queue pair
//! through the connection manager by its address alone, and it answers each datagram to its
//! sender, keeping nothing per client. Each client (a queue pair of its own in a task of its
//! own) sends `--count` pings of `--size` bytes (at most the path MTU), checks every byte of
//! every answer and prints the round-trip latency (median, p99). Datagrams are unreliable: a
//! ping whose answer does not come within a second is counted as lost and the next one goes
//! out. `--help` lists the options.

#[path = "common/mod.rs"]
mod common;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyrdma::ud::{self, UdListener, UdSessionOptions};
use anyrdma::{Access, Error, Result};
use clap::Parser;

/// Datagram ping: a server (--listen) answers every client from one unreliable datagram queue
/// pair; clients (--connect) find it by its address, ping it and check every answer. The port
/// is 7474 unless the address names one.
#[derive(Parser)]
#[command(name = "ud-ping", version, args_override_self = true)]
struct Args {
    #[command(flatten)]
    side: common::Side,
    /// Client: clients at once, each a queue pair in a task of its own.
    #[arg(long, default_value_t = 1)]
    clients: u32,
    /// Client: pings per client.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Client: bytes per ping (at most the path MTU).
    #[arg(long, default_value_t = 64)]
    size: usize,
}

const DEFAULT_PORT: u16 = 7474;

/// Receives the server keeps posted.
const DEPTH: usize = 64;

/// How long a client waits for an answer before it counts the ping as lost.
const PATIENCE: Duration = Duration::from_secs(1);

/// What ping `seq` of client `client` holds: the sequence number, then bytes that depend on
/// both.
fn fill(message: &mut [u8], client: u32, seq: u64) {
    for (at, byte) in message.iter_mut().enumerate() {
        *byte = (seq as usize)
            .wrapping_mul(31)
            .wrapping_add(at)
            .wrapping_add(client as usize * 7) as u8;
    }
    let tag = seq.to_le_bytes();
    let n = message.len().min(tag.len());
    message[..n].copy_from_slice(&tag[..n]);
}

async fn serve(listen: &str) -> Result<()> {
    let addr = anyrdma::cm::parse_addr(listen, DEFAULT_PORT)?;
    let listener = UdListener::bind(addr)?;
    let qp = listener.queue_pair().clone();
    println!(
        "ud-ping: listening at {} (queue pair {}, datagrams up to {} bytes)",
        listener.local_addr(),
        qp.qpn(),
        qp.max_datagram()
    );
    // Clients are answered in a task of their own while this one serves datagrams.
    common::spawn(async move {
        loop {
            match listener.answer().await {
                Ok((client, _)) => println!("ud-ping: {client} found this queue pair"),
                Err(err) => {
                    eprintln!("ud-ping: answering a client failed: {err}");
                    return;
                }
            }
        }
    });
    let mut posted = VecDeque::new();
    for _ in 0..DEPTH {
        posted.push_back(qp.recv(qp.pd().alloc(qp.max_datagram(), Access::LOCAL)?));
    }
    // Receives complete in the order they were posted: the oldest is always the next.
    while let Some(next) = posted.pop_front() {
        let (got, mut buf) = next.await;
        match got {
            Ok(got) => {
                let back = qp.reply_to(&got)?;
                // Echo exactly the payload: the rest of the buffer goes with it, unsent.
                let tail = buf.split_off(got.len);
                let (sent, mut echoed) = qp.send_to(buf, &back).await;
                echoed.unsplit(tail).expect("the tail follows its head");
                buf = echoed;
                if let Err(err) = sent {
                    eprintln!(
                        "ud-ping: answering queue pair {} failed: {err}",
                        got.src_qpn
                    );
                }
            }
            // A datagram longer than the receive: only that one is lost.
            Err(err @ Error::DatagramTruncated { .. }) => eprintln!("ud-ping: {err}"),
            Err(err) => return Err(err),
        }
        posted.push_back(qp.recv(buf));
    }
    Ok(())
}

/// What one client measured.
struct Report {
    samples: Vec<Duration>,
    lost: u64,
}

async fn client(addr: std::net::SocketAddr, id: u32, count: u64, size: usize) -> Result<Report> {
    let (qp, server) = ud::connect(addr, UdSessionOptions::default()).await?;
    if size > qp.max_datagram() {
        return Err(Error::DatagramTooLarge {
            len: size,
            mtu: qp.max_datagram() as u32,
            device: qp.pd().context().device_name().to_owned(),
        });
    }
    let pd = qp.pd().clone();
    let mut message = pd.alloc(size.max(1), Access::LOCAL)?;
    let mut expected = vec![0; size];
    let mut samples = Vec::with_capacity(count as usize);
    let mut lost = 0;
    let mut reply = Some(qp.recv(pd.alloc(qp.max_datagram(), Access::LOCAL)?));
    for seq in 0..count {
        fill(&mut expected, id, seq);
        message[..size].copy_from_slice(&expected);
        let began = Instant::now();
        let tail = message.split_off(size);
        let (sent, mut back) = qp.send_to(message, &server).await;
        back.unsplit(tail).expect("the tail follows its head");
        message = back;
        sent?;
        // Wait for this ping's answer; a late answer to an earlier ping is skipped.
        loop {
            let mut pending = reply.take().expect("a receive is always posted");
            let left = PATIENCE.saturating_sub(began.elapsed());
            match anyrdma::timeout(left, &mut pending).await {
                Err(_) => {
                    // Lost (or late): the receive stays posted for the next answers.
                    lost += 1;
                    reply = Some(pending);
                    break;
                }
                Ok((got, buf)) => {
                    let got = got?;
                    let answered = (got.len >= 8)
                        .then(|| u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")));
                    let this_one = got.len == size && (size < 8 || answered == Some(seq));
                    if this_one && buf[..size] != *expected {
                        return Err(Error::InvalidArgument(format!(
                            "client {id}: the answer to ping {seq} differs from the ping"
                        )));
                    }
                    reply = Some(qp.recv(buf));
                    if this_one {
                        samples.push(began.elapsed());
                        break;
                    }
                }
            }
        }
    }
    Ok(Report { samples, lost })
}

async fn ping(connect: &str, clients: u32, count: u64, size: usize) -> Result<()> {
    let addr = anyrdma::cm::parse_addr(connect, DEFAULT_PORT)?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|id| common::spawn_join(client(addr, id, count, size)))
        .collect();
    let mut samples = Vec::new();
    let mut lost = 0;
    for task in tasks {
        let report = task.await?;
        samples.extend(report.samples);
        lost += report.lost;
    }
    let elapsed = started.elapsed();
    let answered = samples.len();
    let (median, p99) = common::median_p99(&mut samples);
    println!(
        "ud-ping: {clients} client(s) x {count} pings of {size} bytes to {addr}: \
         {answered} answered (every byte checked), {lost} lost; round trip median {:.2} µs, \
         p99 {:.2} µs; {:.0} pings/s",
        median.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        answered as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
    );
    if answered == 0 && count > 0 {
        return Err(Error::InvalidArgument("no ping was answered".into()));
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    let result = match args.side.role() {
        common::Role::Listen(listen) => common::block_on(serve(listen)),
        common::Role::Connect(connect) => {
            let clients = args.clients.max(1);
            common::block_on(ping(connect, clients, args.count, args.size))
        }
    };
    if let Err(err) = result {
        common::fail("ud-ping", &err.to_string());
    }
}
