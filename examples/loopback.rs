//! Two queue pairs on one device, connected to each other: RDMA write, read, send/recv
//! with immediate data, atomics and a batch, printing what happened.
//!
//!     cargo run --example loopback --features tokio      # or async-std, or smol
//!
//! Without an RDMA NIC, run it inside the Soft-RoCE VM: `scripts/rxe-vm target/debug/examples/loopback`.
//!
//! The body names no runtime, as library code should not; `main` runs it on the runtime of
//! the enabled feature, which anyrdma then uses by default.

use anyrdma::{
    Access, CompletionQueue, ConnectOptions, Context, CqOptions, QpOptions, QueuePair, Result,
};
use clap::Parser;

/// Two queue pairs on one device, connected to each other: RDMA write, read, send/recv with
/// immediate data, atomics and a batch, printing what happened (on the device ANYRDMA_DEVICE
/// names, else the first active port).
#[derive(Parser)]
#[command(name = "loopback", version)]
struct Args {}

async fn run() -> Result<()> {
    let ctx = Context::open_default()?;
    println!(
        "device {} port {} (MTU {} bytes)",
        ctx.device_name(),
        ctx.port(),
        ctx.mtu()
    );
    let pd = ctx.alloc_pd()?;
    let cq_a = CompletionQueue::new(&ctx, CqOptions::default())?;
    let cq_b = CompletionQueue::new(&ctx, CqOptions::default())?;
    let a = QueuePair::new(&pd, &cq_a, &cq_a, QpOptions::default())?;
    let b = QueuePair::new(&pd, &cq_b, &cq_b, QpOptions::default())?;
    // Out of band, the two endpoints would travel over TCP; here they are at hand.
    a.connect(&b.endpoint(), ConnectOptions::default())?;
    b.connect(&a.endpoint(), ConnectOptions::default())?;
    println!("connected QP {} <-> QP {}", a.qpn(), b.qpn());

    // b exposes a region for remote reads, writes and atomics; a gets its description. A peer
    // can change it at any time, so it is a SharedRegion: b reads it by copying, never as &[u8].
    let exposed = pd.alloc_shared(
        4096,
        Access::REMOTE_READ | Access::REMOTE_WRITE | Access::REMOTE_ATOMIC,
    )?;
    let remote = exposed.remote()?;
    println!("b exposes {remote}");

    // RDMA write, then read it back.
    let mut msg = pd.alloc(32, Access::LOCAL)?;
    msg[..13].copy_from_slice(b"hello, remote");
    let (result, msg) = a.write(msg, remote).await;
    result?;
    println!(
        "write: b's region now starts with {:?}",
        String::from_utf8_lossy(&exposed.to_vec(..13)?)
    );
    let (result, back) = a.read(pd.alloc(13, Access::LOCAL)?, remote).await;
    result?;
    println!("read:  a read back {:?}", String::from_utf8_lossy(&back));

    // Send with immediate data into a receive b posted first.
    let inbox = b.recv(pd.alloc(64, Access::LOCAL)?);
    let (result, _msg) = a.send_with_imm(msg, 42).await;
    result?;
    let (received, inbox) = inbox.await;
    let received = received?;
    println!(
        "send:  b received {} bytes {:?} with immediate {:?}",
        received.len,
        String::from_utf8_lossy(&inbox[..13]),
        received.imm
    );

    // Atomics on the 8-byte word at offset 64 of b's region.
    let word = remote.slice(64..72)?;
    let (old, scratch) = a.fetch_and_add(pd.alloc(8, Access::LOCAL)?, word, 5).await;
    println!("fetch_and_add(5): previous value {}", old?);
    let (old, _) = a.compare_and_swap(scratch, word, 5, 100).await;
    println!("compare_and_swap(5 -> 100): previous value {}", old?);
    println!("the word is now {}", exposed.load_u64(64)?);

    // Three writes with one doorbell and one completion.
    let mut batch = a.batch();
    for (i, text) in [&b"one"[..], b"two", b"six"].into_iter().enumerate() {
        let mut piece = pd.alloc(3, Access::LOCAL)?;
        piece.copy_from_slice(text);
        batch = batch.write(piece, remote.slice(128 + 4 * i as u64..)?);
    }
    let (result, _) = batch.submit().await;
    result?;
    println!(
        "batch: b's region holds {:?}",
        String::from_utf8_lossy(&exposed.to_vec(128..139)?)
    );

    // A mistake gets a plain error: this write does not fit in the region.
    let (result, _) = a.write(pd.alloc(8192, Access::LOCAL)?, remote).await;
    println!("oversized write: {}", result.expect_err("4096-byte region"));
    Ok(())
}

fn main() {
    Args::parse();
    let result = block_on_enabled_runtime();
    if let Err(err) = result {
        eprintln!("loopback: {err}");
        std::process::exit(1);
    }
}

#[cfg(feature = "tokio")]
fn block_on_enabled_runtime() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run())
}

#[cfg(all(feature = "async-std", not(feature = "tokio")))]
fn block_on_enabled_runtime() -> Result<()> {
    async_std::task::block_on(run())
}

#[cfg(all(feature = "smol", not(feature = "tokio"), not(feature = "async-std")))]
fn block_on_enabled_runtime() -> Result<()> {
    smol::block_on(run())
}
