//! Wake-ups per completion when many tasks wait on one completion queue: the measurement
//! shared by `tests/device_wakeups.rs` (which asserts the bound) and `benches/wakeups.rs`
//! (which reports it).
//!
//! `tasks` tasks each wait on one receive of `receiver`; `sender` sends `messages` messages
//! (each filled with its number, checked on arrival), never more than the receives posted
//! (so no receiver-not-ready), then one message per task that tells it to stop. Every poll of
//! a receive's future after its first is a wake-up.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use anyrdma::runtime::budget::yield_now;
use anyrdma::{Access, ProtectionDomain, QueuePair};

/// The immediate that tells a receiving task to stop.
const STOP: u32 = u32::MAX;
/// Bytes per message.
const LEN: usize = 32;
/// Sends in flight before the sender waits for the oldest.
const SEND_WINDOW: usize = 128;

/// A receiving task, as the caller's runtime spawns it: the messages it received.
pub type Receiver = Pin<Box<dyn Future<Output = Result<u32, String>> + Send>>;

/// Counts the polls of a future after its first: each is a wake-up.
struct Counted<'a, F> {
    future: F,
    polled: bool,
    wakeups: &'a AtomicU64,
}

impl<F: Future + Unpin> Future for Counted<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if self.polled {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
        }
        self.polled = true;
        Pin::new(&mut self.future).poll(cx)
    }
}

/// Wake-ups per completed receive (see the module docs); `spawn` runs a receiving task on
/// the caller's runtime.
pub async fn wakeups_per_completion(
    pd: &ProtectionDomain,
    sender: &QueuePair,
    receiver: Arc<QueuePair>,
    tasks: u32,
    messages: u32,
    spawn: impl Fn(Receiver) -> Receiver,
) -> Result<f64, String> {
    let wakeups = Arc::new(AtomicU64::new(0));
    // Receives posted and not consumed: the sender sends only while there are some.
    let credits = Arc::new(AtomicI64::new(0));
    let mut receivers = Vec::new();
    for _ in 0..tasks {
        let (receiver, wakeups, credits) = (receiver.clone(), wakeups.clone(), credits.clone());
        // Posted here, before the sender starts, so that the credits count it.
        let inbox = pd.alloc(LEN, Access::LOCAL).map_err(|e| e.to_string())?;
        let mut receive = Some(receiver.recv(inbox));
        credits.fetch_add(1, Ordering::AcqRel);
        receivers.push(spawn(Box::pin(async move {
            let mut received = 0u32;
            while let Some(op) = receive.take() {
                let counted = Counted {
                    future: op,
                    polled: false,
                    wakeups: &wakeups,
                };
                let (result, buf) = counted.await;
                let seq = result
                    .map_err(|e| e.to_string())?
                    .imm
                    .ok_or("a message without its number")?;
                if seq == STOP {
                    break;
                }
                if buf[..LEN].iter().any(|&byte| byte != seq as u8) {
                    return Err(format!("message {seq} corrupted"));
                }
                received += 1;
                receive = Some(receiver.recv(buf));
                credits.fetch_add(1, Ordering::AcqRel);
            }
            Ok(received)
        })));
    }
    let mut in_flight = VecDeque::new();
    for seq in (0..messages).chain(std::iter::repeat(STOP).take(tasks as usize)) {
        while credits.load(Ordering::Acquire) <= 0 {
            yield_now().await;
        }
        credits.fetch_sub(1, Ordering::AcqRel);
        let mut buf = pd.alloc(LEN, Access::LOCAL).map_err(|e| e.to_string())?;
        buf.fill(seq as u8);
        in_flight.push_back(sender.send_with_imm(buf, seq));
        if in_flight.len() >= SEND_WINDOW {
            if let Some(oldest) = in_flight.pop_front() {
                oldest.await.0.map_err(|e| e.to_string())?;
            }
        }
    }
    for op in in_flight {
        op.await.0.map_err(|e| e.to_string())?;
    }
    let mut received = 0;
    for task in receivers {
        received += task.await?;
    }
    if received != messages {
        return Err(format!("{received} of {messages} messages arrived"));
    }
    Ok(wakeups.load(Ordering::Relaxed) as f64 / f64::from(messages + tasks))
}
