//! The registered-memory pool against a registration per buffer (scripts/bench).
//!
//! ```text
//! cargo bench --bench pool --all-features -- [--device NAME] [--json FILE] [--smoke]
//! ```
//!
//! - `alloc`: the median time of one allocation and drop of 64 B, 4 KiB and 64 KiB, from a
//!   warm `MemoryPool` (timed in batches of 1,000) and with `pd.alloc` (a registration each).
//! - `ping-pong`: the median round trip of a 64-byte send ping-pong between two queue pairs
//!   of one device (Tokio current-thread, event mode), once reusing its buffers and once
//!   taking a fresh pool buffer for every send and receive.
//!
//! Printed as one line each, and appended to FILE as JSON.

use std::io::Write;
use std::time::Instant;

use anyrdma::{
    Access, CompletionQueue, ConnectOptions, Context, CqOptions, LocalBuf, MemoryPool, PoolOptions,
    QpOptions, QueuePair,
};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SIZES: [usize; 3] = [64, 4096, 65536];
const MESSAGE: usize = 64;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Median nanoseconds of one pool allocation and drop of `size` bytes.
fn pool_alloc_ns(pool: &MemoryPool, size: usize, batches: usize) -> Res<f64> {
    const BATCH: usize = 1000;
    drop(pool.alloc(size)?); // warm: the class has its chunk
    let mut samples = Vec::with_capacity(batches);
    for _ in 0..batches {
        let started = Instant::now();
        for _ in 0..BATCH {
            std::hint::black_box(pool.alloc(size)?);
        }
        samples.push(started.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    Ok(median(samples))
}

/// Median nanoseconds of one `pd.alloc` (a registration) and drop of `size` bytes.
fn register_ns(pd: &anyrdma::ProtectionDomain, size: usize, runs: usize) -> Res<f64> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        std::hint::black_box(pd.alloc(size, Access::LOCAL)?);
        samples.push(started.elapsed().as_nanos() as f64);
    }
    Ok(median(samples))
}

/// Median microseconds of a send ping-pong round trip; `fresh`: a new pool buffer for every
/// send and receive instead of reusing two.
async fn ping_pong_us(ctx: &Context, fresh: bool, iters: usize) -> Res<f64> {
    let pd = ctx.alloc_pd()?;
    let pool = MemoryPool::new(&pd, PoolOptions::default());
    let cq = CompletionQueue::new(ctx, CqOptions::default())?;
    let a = QueuePair::new(&pd, &cq, &cq, QpOptions::default())?;
    let b = QueuePair::new(&pd, &cq, &cq, QpOptions::default())?;
    a.connect(&b.endpoint(), ConnectOptions::default())?;
    b.connect(&a.endpoint(), ConnectOptions::default())?;
    let fresh_buf = |buf: LocalBuf| -> Res<LocalBuf> {
        if fresh {
            drop(buf);
            Ok(pool.alloc(MESSAGE)?)
        } else {
            Ok(buf)
        }
    };
    let mut ping = pool.alloc(MESSAGE)?;
    let mut pong = pool.alloc(MESSAGE)?;
    let mut inbox_a = pool.alloc(MESSAGE)?;
    let mut inbox_b = pool.alloc(MESSAGE)?;
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let started = Instant::now();
        let at_b = b.recv(fresh_buf(inbox_b)?);
        let at_a = a.recv(fresh_buf(inbox_a)?);
        let (sent, back) = a.send(fresh_buf(ping)?).await;
        sent?;
        ping = back;
        let (got, back) = at_b.await;
        got?;
        inbox_b = back;
        let (sent, back) = b.send(fresh_buf(pong)?).await;
        sent?;
        pong = back;
        let (got, back) = at_a.await;
        got?;
        inbox_a = back;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(samples))
}

fn main() -> Res<()> {
    let mut device = None;
    let mut json = None;
    let mut smoke = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--device" => device = args.next(),
            "--json" => json = args.next(),
            "--smoke" => smoke = true,
            // `--bench` from cargo; an empty argument from an empty option list.
            "--bench" | "" => {}
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let (batches, registrations, iters) = if smoke {
        (20, 20, 200)
    } else {
        (200, 200, 3000)
    };
    let ctx = match &device {
        Some(name) => Context::open(name)?,
        None => Context::open_default()?,
    }
    .with_runtime(anyrdma::runtime::Tokio);
    let pd = ctx.alloc_pd()?;
    let pool = MemoryPool::new(&pd, PoolOptions::default());
    let mut lines = Vec::new();
    for size in SIZES {
        let pooled = pool_alloc_ns(&pool, size, batches)?;
        let registered = register_ns(&pd, size, registrations)?;
        println!(
            "alloc+drop {size:>6} B: pool {pooled:>8.1} ns, pd.alloc {registered:>10.1} ns ({:.0}x)",
            registered / pooled
        );
        lines.push(format!(
            "{{\"test\":\"pool_alloc\",\"size\":{size},\"pool_ns\":{pooled:.2},\"register_ns\":{registered:.1}}}"
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for fresh in [false, true] {
        let us = runtime.block_on(ping_pong_us(&ctx, fresh, iters))?;
        let variant = if fresh { "fresh" } else { "reuse" };
        println!("send ping-pong {MESSAGE} B, {variant} buffers: {us:.2} µs median round trip");
        lines.push(format!(
            "{{\"test\":\"pool_ping_pong\",\"variant\":\"{variant}\",\"size\":{MESSAGE},\"median_us\":{us:.3}}}"
        ));
    }
    if let Some(path) = json {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        for line in lines {
            writeln!(file, "{line}")?;
        }
    }
    Ok(())
}
