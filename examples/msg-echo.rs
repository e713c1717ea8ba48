//! Echo over the messaging layer (`anyrdma::msg`): any message size from 0 B to 16 MiB on one
//! code path (small ones in one send, large ones read by the receiver), credits instead of
//! "receiver not ready", several senders on one connection.
//!
//!     cargo run --example msg-echo --features tokio -- --listen 169.254.77.1
//!     cargo run --example msg-echo --features smol  -- --connect 169.254.77.1 --size 1-16777216 --count 200 --senders 4
//!
//! The client checks every reply and prints the round-trip latency (median, p99) and messages
//! per second. `--help` lists the options.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use anyrdma::cm::{ConnectionOptions, Listener};
use anyrdma::msg::{Messenger, MessengerOptions};
use anyrdma::{Error, Result};
use clap::Parser;

/// Echo over the messaging layer: a server (--listen) returns every message; a client
/// (--connect) sends messages of any size up to 16 MiB from several tasks and checks the
/// replies. The port is 7473 unless the address names one.
#[derive(Parser)]
#[command(name = "msg-echo", version, args_override_self = true)]
struct Args {
    #[command(flatten)]
    side: common::Side,
    /// Client: message size in bytes, or MIN-MAX: sizes spread over that range.
    #[arg(long, value_name = "N|MIN-MAX", default_value = "64")]
    size: common::Sizes,
    /// Client: messages to send.
    #[arg(long, default_value_t = 1000)]
    count: u32,
    /// Client: tasks sending at once.
    #[arg(long, default_value_t = 1)]
    senders: u32,
}
const DEFAULT_PORT: u16 = 7473;

async fn serve(listen: &str) -> Result<()> {
    let listener = Listener::bind(anyrdma::cm::parse_addr(listen, DEFAULT_PORT)?)?;
    println!("msg-echo: listening on {}", listener.local_addr());
    loop {
        let incoming = listener.incoming().await?;
        common::spawn(async move {
            let peer = incoming.peer_addr();
            let messenger = match Messenger::accept(
                incoming,
                ConnectionOptions::default(),
                MessengerOptions::default(),
            )
            .await
            {
                Ok(messenger) => messenger,
                Err(err) => return eprintln!("msg-echo: {peer}: {err}"),
            };
            let mut echoed = 0u64;
            loop {
                let message = match messenger.recv().await {
                    Ok(message) => message,
                    Err(err) if err.is_disconnect() => break,
                    Err(err) => return eprintln!("msg-echo: {peer}: {err}"),
                };
                let sent = match message.imm {
                    Some(imm) => messenger.send_with_imm(&message.data, imm).await,
                    None => messenger.send(&message.data).await,
                };
                if let Err(err) = sent {
                    if !err.is_disconnect() {
                        eprintln!("msg-echo: {peer}: {err}");
                    }
                    break;
                }
                echoed += 1;
            }
            println!("msg-echo: {peer}: {echoed} messages echoed");
        });
    }
}

/// The bytes of message `i` of `len` bytes.
fn fill(i: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|at| (i as usize).wrapping_mul(131).wrapping_add(at) as u8)
        .collect()
}

async fn run(connect: &str, sizes: common::Sizes, count: u32, senders: u32) -> Result<()> {
    let addr = anyrdma::cm::parse_addr(connect, DEFAULT_PORT)?;
    let messenger = Messenger::connect(
        addr,
        ConnectionOptions::default(),
        MessengerOptions::default(),
    )
    .await?;
    println!("msg-echo: connected to {addr}");
    let size_of = move |i: u32| sizes.of(u64::from(i));
    let started = Instant::now();
    let samples = Arc::new(std::sync::Mutex::new(Vec::with_capacity(count as usize)));
    let mut tasks = Vec::new();
    for sender in 0..senders {
        let (messenger, samples) = (messenger.clone(), samples.clone());
        tasks.push(common::spawn_join(async move {
            for i in (sender..count).step_by(senders as usize) {
                let began = Instant::now();
                messenger.send_with_imm(&fill(i, size_of(i)), i).await?;
                // Replies may come back to any sender: each is checked by its number.
                let reply = messenger.recv().await?;
                let j = reply
                    .imm
                    .ok_or_else(|| Error::InvalidArgument("a reply without its number".into()))?;
                if reply.data[..] != fill(j, size_of(j))[..] {
                    return Err(Error::InvalidArgument(format!(
                        "reply {j} differs from message {j}"
                    )));
                }
                samples.lock().unwrap().push(began.elapsed());
            }
            Ok::<(), Error>(())
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed();
    let mut samples = std::mem::take(&mut *samples.lock().unwrap());
    let (median, p99) = common::median_p99(&mut samples);
    println!(
        "msg-echo: {count} messages of {sizes}, {senders} sender(s), every reply checked: round trip median {:.2} µs, p99 {:.2} µs; {:.0} messages/s",
        median.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        count as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    );
    Ok(())
}

fn main() {
    let args = Args::parse();
    let result = match args.side.role() {
        common::Role::Listen(listen) => common::block_on(serve(listen)),
        common::Role::Connect(connect) => {
            let senders = args.senders.max(1);
            common::block_on(run(connect, args.size, args.count, senders))
        }
    };
    if let Err(err) = result {
        common::fail("msg-echo", &err.to_string());
    }
}
