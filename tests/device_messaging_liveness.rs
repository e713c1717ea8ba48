//! Messaging that must keep going: two sides that send large messages to each other at
//! once, and idle messengers that must stay quiet.

// QUIET orders tests (each holds its guard across its awaits), not tasks.
#![allow(clippy::await_holding_lock)]

mod support;

use std::time::Duration;

use anyrdma::msg::{Messenger, MessengerOptions};
use anyrdma::QpOptions;
use support::{within, Pair, Rt};

/// The packet count of `idle_messengers_stay_quiet` must see no other test's traffic: it
/// runs alone (write), the others side by side (read).
static QUIET: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn beside_others() -> std::sync::RwLockReadGuard<'static, ()> {
    QUIET.read().unwrap_or_else(|p| p.into_inner())
}

/// A pair of queue pairs and a messenger on each.
fn messengers(options: MessengerOptions) -> (Pair, Messenger, Messenger) {
    let pair = Pair::with(
        anyrdma::CqOptions::default(),
        QpOptions::default(),
        anyrdma::ConnectOptions::default(),
    );
    let a = Messenger::new(&pair.a, options).expect("messenger a");
    let b = Messenger::new(&pair.b, options).expect("messenger b");
    (pair, a, b)
}

/// Message `i`: its number, then bytes that depend on it, `len` bytes in all.
fn message(i: u64, len: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len).map(|at| (i as usize * 7 + at) as u8).collect();
    let tag = i.to_le_bytes();
    let n = len.min(8);
    bytes[..n].copy_from_slice(&tag[..n]);
    bytes
}

/// Depth 2, eager limit 64: both sides send a 4 KiB message (by rendezvous) and then
/// receive the other's, round after round. Each side's "read it" and credits must still get
/// through when both have spent their credits on large messages at once. (Before, both
/// ended at zero credits owing each other, in the first round.)
async fn both_sides_send_large_at_once_at_depth_two(rt: Rt) {
    if !support::device_present("both_sides_send_large_at_once_at_depth_two") {
        return;
    }
    let _beside = beside_others();
    const ROUNDS: u64 = 40;
    let options = MessengerOptions {
        depth: 2,
        eager_limit: 64,
        ..MessengerOptions::default()
    };
    let (_pair, a, b) = messengers(options);
    let side = |me: Messenger, mine: u64, theirs: u64| async move {
        for round in 0..ROUNDS {
            me.send(&message(mine + round, 4096))
                .await
                .unwrap_or_else(|err| panic!("round {round}: send: {err}"));
            let got = me
                .recv()
                .await
                .unwrap_or_else(|err| panic!("round {round}: recv: {err}"));
            assert_eq!(
                &got.data[..],
                &message(theirs + round, 4096)[..],
                "round {round}"
            );
        }
        me.flush().await.expect("flush");
    };
    let first = rt.spawn(side(a.clone(), 0, 1000));
    let second = rt.spawn(side(b.clone(), 1000, 0));
    within(60, "both sides sending 4 KiB at once at depth 2", async {
        first.await;
        second.await;
    })
    .await;
    println!(
        "{}: {ROUNDS} rounds of 4 KiB both ways at depth 2",
        rt.name()
    );
}

/// Packets this host's RDMA devices sent so far (Soft-RoCE counts them in sysfs).
fn packets_sent() -> u64 {
    let mut total = 0;
    let mut found = false;
    for device in std::fs::read_dir("/sys/class/infiniband").expect("/sys/class/infiniband") {
        let ports = device.expect("a device").path().join("ports");
        for port in std::fs::read_dir(ports).expect("its ports") {
            let counter = port.expect("a port").path().join("hw_counters/sent_pkts");
            if let Ok(text) = std::fs::read_to_string(&counter) {
                total += text.trim().parse::<u64>().expect("a packet count");
                found = true;
            }
        }
    }
    assert!(found, "no hw_counters/sent_pkts: cannot count packets");
    total
}

/// Depth 4 (credits returned one at a time): after an exchange, both sides wait in `recv`
/// with nothing to say. They must stay quiet: a credit message is never answered by one.
/// (Before, each credit message was answered by another, for ever.)
async fn idle_messengers_stay_quiet(rt: Rt) {
    if !support::device_present("idle_messengers_stay_quiet") {
        return;
    }
    let _alone = QUIET.write().unwrap_or_else(|p| p.into_inner());
    let options = MessengerOptions {
        depth: 4,
        eager_limit: 64,
        ..MessengerOptions::default()
    };
    let (_pair, a, b) = messengers(options);
    for i in 0..20 {
        a.send(&message(i, 32)).await.expect("send");
        let got = within(10, "a message", b.recv()).await.expect("recv");
        assert_eq!(&got.data[..], &message(i, 32)[..]);
        b.send(&message(i, 48)).await.expect("send");
        let got = within(10, "a message", a.recv()).await.expect("recv");
        assert_eq!(&got.data[..], &message(i, 48)[..]);
    }
    // Let what the exchange left owed settle.
    let _ = anyrdma::timeout(Duration::from_millis(200), async {
        let (x, y) = (a.recv(), b.recv());
        let (x, y) = (std::pin::pin!(x), std::pin::pin!(y));
        futures_join(x, y).await
    })
    .await;
    let before = packets_sent();
    let idle = anyrdma::timeout(Duration::from_millis(500), async {
        let (x, y) = (a.recv(), b.recv());
        let (x, y) = (std::pin::pin!(x), std::pin::pin!(y));
        futures_join(x, y).await
    })
    .await;
    let sent = packets_sent() - before;
    assert!(idle.is_err(), "{}: a message nobody sent", rt.name());
    println!(
        "{}: {sent} packets while both sides waited 0.5 s",
        rt.name()
    );
    assert!(
        sent < 20,
        "{}: {sent} packets sent in 0.5 s by two messengers that had nothing to say",
        rt.name()
    );
}

/// Polls both futures until both are ready.
async fn futures_join<A: std::future::Future, B: std::future::Future>(
    mut a: std::pin::Pin<&mut A>,
    mut b: std::pin::Pin<&mut B>,
) {
    let (mut a_done, mut b_done) = (false, false);
    std::future::poll_fn(|cx| {
        if !a_done {
            a_done = a.as_mut().poll(cx).is_ready();
        }
        if !b_done {
            b_done = b.as_mut().poll(cx).is_ready();
        }
        if a_done && b_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

runtime_tests!(
    both_sides_send_large_at_once_at_depth_two,
    idle_messengers_stay_quiet,
);
