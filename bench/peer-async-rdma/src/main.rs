//! Benchmark peer: the write and send ping-pong of `benches/rdma.rs`, written with
//! async-rdma 0.5.0 (Tokio), so `scripts/bench` can compare the two on the same device.
//!
//! ```text
//! peer-async-rdma server|client ADDR DEVICE GID_INDEX TEST SIZE ITERS
//! ```
//! TEST is `send_lat` (send_raw / receive_raw ping-pong, raw QP: no agent) or
//! `write_imm_lat` (write_with_imm / receive_write_imm ping-pong, through async-rdma's agent,
//! which pre-posts the receives). The two processes connect with `RdmaBuilder::connect` /
//! `listen` (endpoints exchanged over TCP at ADDR). The client prints one JSON line: the
//! one-way latency (half the round trip) median and 99th percentile in microseconds.

use std::alloc::Layout;
use std::io;
use std::time::{Duration, Instant};

use async_rdma::{LocalMrWriteAccess, Rdma, RdmaBuilder};

struct Args {
    server: bool,
    addr: String,
    device: String,
    gid_index: usize,
    test: String,
    size: usize,
    iters: usize,
}

fn parse() -> Args {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 7 {
        eprintln!("usage: peer-async-rdma server|client ADDR DEVICE GID_INDEX send_lat|write_imm_lat SIZE ITERS");
        std::process::exit(2);
    }
    Args {
        server: a[0] == "server",
        addr: a[1].clone(),
        device: a[2].clone(),
        gid_index: a[3].parse().expect("GID_INDEX"),
        test: a[4].clone(),
        size: a[5].parse().expect("SIZE"),
        iters: a[6].parse().expect("ITERS"),
    }
}

async fn connect(args: &Args, raw: bool) -> io::Result<Rdma> {
    let builder = RdmaBuilder::default()
        .set_dev(&args.device)
        .set_gid_index(args.gid_index)
        .set_raw(raw);
    if args.server {
        builder.listen(args.addr.as_str()).await
    } else {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let builder = RdmaBuilder::default()
                .set_dev(&args.device)
                .set_gid_index(args.gid_index)
                .set_raw(raw);
            match builder.connect(args.addr.as_str()).await {
                Ok(rdma) => return Ok(rdma),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

async fn send_lat(args: &Args) -> io::Result<Vec<Instant>> {
    let rdma = connect(args, true).await?;
    let layout = Layout::from_size_align(args.size, 8).expect("layout");
    let mut lmr = rdma.alloc_local_mr(layout)?;
    lmr.as_mut_slice().fill(1);
    let mut stamps = Vec::with_capacity(args.iters + 1);
    if args.server {
        // The receive of each next message is posted together with the reply (join polls it
        // first), so the client never finds the receive queue empty.
        rdma.receive_raw(layout).await?;
        for _ in 1..args.iters {
            let (r, s) = tokio::join!(rdma.receive_raw(layout), rdma.send_raw(&lmr));
            r?;
            s?;
        }
        rdma.send_raw(&lmr).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    } else {
        // Let the server post its first receive.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..args.iters {
            stamps.push(Instant::now());
            let (r, s) = tokio::join!(rdma.receive_raw(layout), rdma.send_raw(&lmr));
            r?;
            s?;
        }
        stamps.push(Instant::now());
    }
    Ok(stamps)
}

async fn write_imm_lat(args: &Args) -> io::Result<Vec<Instant>> {
    let rdma = connect(args, false).await?;
    let layout = Layout::from_size_align(args.size, 8).expect("layout");
    let mut lmr = rdma.alloc_local_mr(layout)?;
    lmr.as_mut_slice().fill(1);
    let mut rmr = rdma.request_remote_mr(layout).await?;
    // Both sides hold their remote region before the ping-pong starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut stamps = Vec::with_capacity(args.iters + 1);
    for i in 0..args.iters as u32 {
        if args.server {
            rdma.receive_write_imm().await?;
            rdma.write_with_imm(&lmr, &mut rmr, i).await?;
        } else {
            stamps.push(Instant::now());
            rdma.write_with_imm(&lmr, &mut rmr, i).await?;
            rdma.receive_write_imm().await?;
        }
    }
    stamps.push(Instant::now());
    if args.server {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(stamps)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args = parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        match args.test.as_str() {
            "send_lat" => send_lat(&args).await,
            "write_imm_lat" => write_imm_lat(&args).await,
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown test {other}"),
            )),
        }
    });
    let stamps = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "peer-async-rdma {}: {} size {}: {e}",
                if args.server { "server" } else { "client" },
                args.test,
                args.size
            );
            std::process::exit(1);
        }
    };
    if args.server {
        return;
    }
    let mut lat: Vec<f64> = stamps
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e6 / 2.0)
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{{\"impl\":\"async-rdma\",\"runtime\":\"tokio-mt\",\"mode\":\"event\",\"test\":\"{}\",\"size\":{},\"qps\":1,\"batch\":1,\"iters\":{},\"median_us\":{:.3},\"p99_us\":{:.3},\"mmsg_s\":null,\"mb_s\":null}}",
        args.test,
        args.size,
        args.iters,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
}
