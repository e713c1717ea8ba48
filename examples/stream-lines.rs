//! A byte stream over RDMA (`anyrdma::stream`) driven only by `futures::io` utilities, so the
//! same code runs on Tokio, async-std and smol: the server echoes each connection with
//! `futures::io::copy` from the stream's read half to its write half; the client writes
//! lines, half-closes, and reads the echo back line by line through `BufReader::lines`,
//! checking each.
//!
//!     cargo run --example stream-lines --features smol      -- --listen 169.254.77.1
//!     cargo run --example stream-lines --features async-std -- --connect 169.254.77.1 --lines 10000
//!
//! Line `i` is `i` and a run of letters, up to 2,000 bytes, so lines cross the stream's
//! messages. `--help` lists the options.

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use anyrdma::stream::{RdmaStream, StreamListener};
use anyrdma::{Error, Result};
use clap::Parser;
use futures_util::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use futures_util::StreamExt;

/// A byte stream over RDMA through futures::io only: a server (--listen) echoes each
/// connection; a client (--connect) writes lines and checks the echo line by line. The port is
/// 7475 unless the address names one.
#[derive(Parser)]
#[command(name = "stream-lines", version, args_override_self = true)]
struct Args {
    #[command(flatten)]
    side: common::Side,
    /// Client: lines to write and read back.
    #[arg(long, default_value_t = 1000)]
    lines: usize,
}
const DEFAULT_PORT: u16 = 7475;

async fn serve(listen: &str) -> Result<()> {
    let listener = StreamListener::bind(anyrdma::cm::parse_addr(listen, DEFAULT_PORT)?)?;
    println!("stream-lines: listening on {}", listener.local_addr());
    loop {
        let stream = listener.accept().await?;
        common::spawn(async move {
            let peer = stream.peer_addr();
            let (mut read, mut write) = stream.split();
            // The echo ends at the client's half-close; then this side half-closes too.
            match futures_util::io::copy(&mut read, &mut write).await {
                Ok(bytes) => {
                    if let Err(err) = write.close().await {
                        eprintln!("stream-lines: {peer}: close: {err}");
                    }
                    println!("stream-lines: {peer}: {bytes} bytes echoed");
                }
                Err(err) => eprintln!("stream-lines: {peer}: {err}"),
            }
        });
    }
}

/// Line `i` (without its newline).
fn line(i: usize) -> String {
    let letters = (i * 7919) % 2000;
    let mut line = i.to_string();
    line.extend((0..letters).map(|at| (b'a' + ((i + at) % 26) as u8) as char));
    line
}

async fn run(connect: &str, lines: usize) -> Result<()> {
    let addr = anyrdma::cm::parse_addr(connect, DEFAULT_PORT)?;
    let stream = RdmaStream::connect(addr).await?;
    println!("stream-lines: connected to {addr}");
    let started = Instant::now();
    let (read, mut write) = stream.split();
    // Written and read at once, as two tasks would: the echo comes back while lines go out.
    let writing = common::spawn_join(async move {
        for i in 0..lines {
            write.write_all(format!("{}\n", line(i)).as_bytes()).await?;
        }
        write.close().await?;
        Ok::<_, std::io::Error>(write)
    });
    let mut echoed = BufReader::new(read).lines();
    let mut bytes = 0;
    for i in 0..lines {
        let got = echoed
            .next()
            .await
            .ok_or_else(|| Error::InvalidArgument(format!("the echo ended before line {i}")))?
            .map_err(|err| Error::InvalidArgument(format!("line {i}: {err}")))?;
        if got != line(i) {
            return Err(Error::InvalidArgument(format!(
                "line {i} came back as {} bytes that differ from the {} sent",
                got.len(),
                line(i).len()
            )));
        }
        bytes += got.len() + 1;
    }
    if echoed.next().await.is_some() {
        return Err(Error::InvalidArgument("a line nobody wrote".into()));
    }
    let _write = writing
        .await
        .map_err(|err| Error::InvalidArgument(format!("writing: {err}")))?;
    let elapsed = started.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
    println!(
        "stream-lines: {lines} lines ({bytes} bytes) echoed and checked in {:.3} s; {:.1} MB/s each way",
        elapsed,
        bytes as f64 / elapsed / 1e6
    );
    Ok(())
}

fn main() {
    let args = Args::parse();
    let result = match args.side.role() {
        common::Role::Listen(listen) => common::block_on(serve(listen)),
        common::Role::Connect(connect) => common::block_on(run(connect, args.lines)),
    };
    if let Err(err) = result {
        common::fail("stream-lines", &err.to_string());
    }
}
