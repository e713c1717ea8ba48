//! Messaging (`anyrdma::msg`) over the connected queue pair of `rc.rs`:
//!
//! * `msg_lat`: ping-pong of `Messenger::send` / `recv` (each side sends what it received);
//!   half the round trip, as `send_lat`. Above the eager limit (8 KiB by default) each
//!   message goes by rendezvous: copied into a registration of its own, read by the peer.
//! * `msg_rate`: `senders` concurrent send loops of one task share the client's messenger
//!   and send `iters` messages in all; the server takes them with `recv` and answers with one
//!   message when it has all. Messages per second and MB/s from the first send to that answer.
//!
//! Both sides use `MessengerOptions::default()` (depth 64, eager limit 8 KiB): what an
//! application gets without tuning.

use std::future::Future;
use std::net::TcpStream;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyrdma::msg::{Messenger, MessengerOptions};

use crate::rc::{step, Side};
use crate::wire::{barrier, Spec};
use crate::Res;

/// The messenger of each side: receives for 64 messages in flight (its queue pair is made
/// deep enough for them and for the control messages).
pub fn options() -> MessengerOptions {
    MessengerOptions {
        depth: 64,
        ..MessengerOptions::default()
    }
}

fn messenger(s: &Side) -> Res<Messenger> {
    Ok(Messenger::new(&s.qps[0], options())?)
}

/// Checks that a message is the one expected (its length and first byte): a measurement must
/// not count what did not arrive whole.
fn check(data: &[u8], len: usize, first: u8) -> Res<()> {
    if data.len() != len || data.first().is_some_and(|&b| b != first) {
        return Err(format!("a message of {} bytes, {len} expected", data.len()).into());
    }
    Ok(())
}

pub async fn msg_lat(
    s: &Side,
    spec: &Spec,
    client: bool,
    ctl: &mut TcpStream,
) -> Res<Vec<Instant>> {
    ping_pong(&messenger(s)?, spec, client, ctl).await
}

/// `msg_lat` on any messenger (also one connected by rdma_cm: `cm_msg_lat`).
pub async fn ping_pong(
    messenger: &Messenger,
    spec: &Spec,
    client: bool,
    ctl: &mut TcpStream,
) -> Res<Vec<Instant>> {
    let message = vec![0x5a; spec.size];
    let mut stamps = Vec::with_capacity(spec.iters + 1);
    // Both messengers' receives are posted before either sends.
    barrier(ctl)?;
    for _ in 0..spec.iters {
        if client {
            stamps.push(Instant::now());
            messenger.send(&message).await?;
            let reply = messenger.recv().await?;
            check(&reply.data, spec.size, 0x5a)?;
        } else {
            let got = messenger.recv().await?;
            check(&got.data, spec.size, 0x5a)?;
            messenger.send(&got.data).await?;
        }
    }
    stamps.push(Instant::now());
    messenger.flush().await.map_err(step("flushing"))?;
    Ok(stamps)
}

/// Runs `futures` concurrently on the calling task; the first error wins.
async fn join_all(futures: Vec<Pin<Box<dyn Future<Output = Res<()>> + Send + '_>>>) -> Res<()> {
    let mut left: Vec<_> = futures.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for slot in left.iter_mut() {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(Ok(())) => *slot = None,
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    })
    .await
}

pub async fn msg_rate(
    s: &Side,
    spec: &Spec,
    client: bool,
    ctl: &mut TcpStream,
) -> Res<Option<Duration>> {
    one_way(&messenger(s)?, spec, client, ctl).await
}

/// `msg_rate` on any messenger (also one connected by rdma_cm: `cm_msg_bw`).
pub async fn one_way(
    messenger: &Messenger,
    spec: &Spec,
    client: bool,
    ctl: &mut TcpStream,
) -> Res<Option<Duration>> {
    barrier(ctl)?;
    if !client {
        for _ in 0..spec.iters {
            let got = messenger.recv().await?;
            check(&got.data, spec.size, 0xa5)?;
        }
        messenger
            .send(b"all")
            .await
            .map_err(step("sending the answer"))?;
        messenger
            .flush()
            .await
            .map_err(step("flushing the answer"))?;
        return Ok(None);
    }
    let message = vec![0xa5; spec.size];
    let senders = spec.senders.max(1);
    let start = Instant::now();
    let loops = (0..senders)
        .map(|sender| {
            // The messages divided among the senders, the first ones taking the rest.
            let count = spec.iters / senders + usize::from(sender < spec.iters % senders);
            let message = &message;
            Box::pin(async move {
                for _ in 0..count {
                    messenger.send(message).await?;
                }
                Ok(())
            }) as Pin<Box<dyn Future<Output = Res<()>> + Send + '_>>
        })
        .collect();
    join_all(loops).await?;
    let answer = messenger.recv().await?;
    let elapsed = start.elapsed();
    check(&answer.data, 3, b'a')?;
    Ok(Some(elapsed))
}
