//! What a large message (sent by rendezvous) leaves registered when its send is dropped, when
//! the peer goes away in the middle of reading it, and when the messengers are dropped: the
//! process-wide count of registrations says, so these tests live alone in their binary and
//! run one at a time.

mod support;

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyrdma::cm::{ConnectionOptions, Listener};
use anyrdma::msg::{Messenger, MessengerOptions};
use anyrdma::{registered_regions, QpOptions};
use support::{within, Pair, Rt};

/// `registered_regions()` counts the whole process: one test at a time.
static REGIONS: Mutex<()> = Mutex::new(());

/// Waits up to 5 s for the registrations to come back to `want` (buffers of operations the
/// device still held are released as their completions are taken); returns the last count.
async fn registrations_settle_at(want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = registered_regions();
        if now == want || Instant::now() > deadline {
            return now;
        }
        anyrdma::sleep(Duration::from_millis(10)).await;
    }
}

/// A large send that waits for a credit and is dropped: its copy was registered while it
/// waited and is gone after, the peer never sees it, the stream goes on in order, and the
/// messengers leave nothing registered once dropped.
#[allow(clippy::await_holding_lock)] // REGIONS orders tests, not tasks
async fn dropped_large_send_exposes_nothing(rt: Rt) {
    if !support::device_present("dropped_large_send_exposes_nothing") {
        return;
    }
    let _regions = REGIONS.lock().unwrap_or_else(|p| p.into_inner());
    let before_all = registered_regions();
    let options = MessengerOptions {
        depth: 8,
        eager_limit: 64,
        ..MessengerOptions::default()
    };
    let pair = Pair::with(
        anyrdma::CqOptions::default(),
        QpOptions::default(),
        anyrdma::ConnectOptions::default(),
    );
    let a = Messenger::new(&pair.a, options).expect("messenger a");
    let b = Messenger::new(&pair.b, options).expect("messenger b");
    // `b` takes nothing, so returns no credits: `a` may send depth - 1 messages (one credit
    // stays for control messages). Their buffers are as large as a rendezvous request's, so
    // the request finds its pool chunk registered already.
    for i in 0..options.depth as u8 - 1 {
        within(10, "a send", a.send(&[i; 24])).await.expect("send");
    }
    let baseline = registered_regions();
    {
        let mut large = pin!(a.send(&[0xab; 100_000]));
        let first = poll_fn(|cx| Poll::Ready(large.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "{}: sent without a credit", rt.name());
        assert_eq!(
            registered_regions(),
            baseline + 1,
            "{}: the waiting large message's copy is registered (the check can see it)",
            rt.name()
        );
        assert_eq!(a.exposed(), 0, "not exposed before the request is posted");
    }
    assert_eq!(
        registered_regions(),
        baseline,
        "{}: the dropped large send left its copy registered",
        rt.name()
    );
    assert_eq!(a.exposed(), 0);
    for i in 0..options.depth as u8 - 1 {
        let got = within(10, "a message", b.recv()).await.expect("recv");
        assert_eq!(&got.data[..], &[i; 24], "{}: message {i}", rt.name());
    }
    a.send(b"after").await.expect("send after the drop");
    let next = within(10, "a message", b.recv()).await.expect("recv");
    assert_eq!(
        &next.data[..],
        b"after",
        "{}: the dropped message arrived",
        rt.name()
    );
    drop(next);
    drop((a, b, pair));
    assert_eq!(
        registrations_settle_at(before_all).await,
        before_all,
        "{}: the messengers left registrations behind",
        rt.name()
    );
}

/// The peer goes away while it reads a 16 MiB message: the sender's `recv` ends with the
/// disconnect, the message is no longer exposed, and nothing stays registered on either
/// side once both are dropped.
#[allow(clippy::await_holding_lock)] // REGIONS orders tests, not tasks
async fn disconnect_during_large_send(rt: Rt) {
    if !support::device_present("disconnect_during_large_send") {
        return;
    }
    let _regions = REGIONS.lock().unwrap_or_else(|p| p.into_inner());
    let before_all = registered_regions();
    let listener = Listener::bind(SocketAddr::from(([169, 254, 77, 1], 0))).expect("bind");
    let addr = listener.local_addr();
    let options = MessengerOptions::default();
    let request_posted = Arc::new(AtomicBool::new(false));
    let posted = request_posted.clone();
    let server = rt.spawn(async move {
        let incoming = listener.incoming().await.expect("incoming");
        let messenger = Messenger::accept(incoming, ConnectionOptions::default(), options)
            .await
            .expect("accept");
        while !posted.load(Ordering::Acquire) {
            anyrdma::sleep(Duration::from_millis(1)).await;
        }
        // Starts reading the large message, then gives up and goes away mid-read.
        let reading = anyrdma::timeout(Duration::from_millis(30), messenger.recv()).await;
        assert!(
            reading.is_err(),
            "16 MiB read in 30 ms: the test proves nothing"
        );
        drop(messenger);
        drop(listener);
    });
    let sender = Messenger::connect(addr, ConnectionOptions::default(), options)
        .await
        .expect("connect");
    let large: Vec<u8> = (0..16 << 20).map(|i| (i % 251) as u8).collect();
    sender.send(&large).await.expect("send");
    request_posted.store(true, Ordering::Release);
    assert_eq!(sender.exposed(), 1, "exposed while the peer reads");
    within(30, "the server", server).await;
    match within(30, "the disconnect", sender.recv()).await {
        Err(err) => assert!(err.is_disconnect(), "{}: {err}", rt.name()),
        Ok(message) => panic!("{}: a message from a peer gone: {message:?}", rt.name()),
    }
    assert_eq!(
        sender.exposed(),
        0,
        "{}: exposed after the peer went",
        rt.name()
    );
    assert!(
        sender.send(b"x").await.is_err(),
        "sends after the disconnect"
    );
    drop(sender);
    assert_eq!(
        registrations_settle_at(before_all).await,
        before_all,
        "{}: registrations left behind",
        rt.name()
    );
}

/// A receiver whose application is slow to take messages, while a task of its own keeps its
/// messenger going (here `flush`, as a task that sends replies would): 24 messages of 1 MiB
/// arrive. What it registers for them must stay bounded (at most 4 large messages being read
/// or read and not yet taken), and the sender's exposures too (at most 4): not one
/// registration per message. (Before, every finished read started the next one, so all 24
/// were held registered.)
#[allow(clippy::await_holding_lock)] // REGIONS orders tests, not tasks
async fn slow_receiver_pins_a_bounded_number_of_large_messages(rt: Rt) {
    if !support::device_present("slow_receiver_pins_a_bounded_number_of_large_messages") {
        return;
    }
    let _regions = REGIONS.lock().unwrap_or_else(|p| p.into_inner());
    const COUNT: usize = 24;
    const LEN: usize = 1 << 20;
    let options = MessengerOptions {
        depth: 32,
        eager_limit: 64,
        ..MessengerOptions::default()
    };
    let pair = Pair::with(
        anyrdma::CqOptions::default(),
        QpOptions::default(),
        anyrdma::ConnectOptions::default(),
    );
    let a = Messenger::new(&pair.a, options).expect("messenger a");
    let b = Messenger::new(&pair.b, options).expect("messenger b");
    let message = |i: usize| -> Vec<u8> { (0..LEN).map(|at| (i * 31 + at) as u8).collect() };
    let before = registered_regions();
    let sender = {
        let a = a.clone();
        rt.spawn(async move {
            for i in 0..COUNT {
                a.send(&message(i)).await.expect("send");
            }
        })
    };
    // The receiver's application takes nothing for 15 s (long enough for the emulated
    // device to read them all, on a loaded host too); a task keeps its messenger going.
    let mut peak = 0;
    let slow_until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < slow_until && peak <= 12 {
        within(10, "flush", b.flush()).await.expect("flush");
        peak = peak.max(registered_regions().saturating_sub(before));
        anyrdma::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "{}: at most {peak} registrations more while the receiver was slow",
        rt.name()
    );
    // The sender's exposures (4, and the copy of a fifth waiting) and the receiver's
    // messages being read or held (4), and the pools' small chunks.
    assert!(
        peak <= 12,
        "{}: {peak} registrations for {COUNT} large messages of a slow receiver",
        rt.name()
    );
    for i in 0..COUNT {
        let got = within(20, "a message", b.recv()).await.expect("recv");
        assert!(got.data[..] == message(i)[..], "{}: message {i}", rt.name());
    }
    within(20, "the sender", sender).await;
    within(20, "flush", a.flush()).await.expect("flush");
}

runtime_tests!(
    slow_receiver_pins_a_bounded_number_of_large_messages,
    dropped_large_send_exposes_nothing,
    disconnect_during_large_send
);
