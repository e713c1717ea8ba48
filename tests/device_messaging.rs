//! Messaging (`anyrdma::msg`): receives kept posted, credits that hold a sender back instead
//! of "receiver not ready", receive futures that can be dropped without losing a message,
//! many senders, and a peer that breaks the protocol.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use anyrdma::cm::{Connection, ConnectionOptions, Listener};
use anyrdma::msg::{HeaderProblem, Messenger, MessengerOptions};
use anyrdma::{Error, QpOptions};
use support::{within, Pair, Rt};

/// A pair of queue pairs deep enough for the messengers, and a messenger on each.
fn messengers(options: MessengerOptions) -> (Pair, Messenger, Messenger) {
    let qp = QpOptions {
        max_recv_wr: 512,
        max_send_wr: 512,
        ..QpOptions::default()
    };
    let pair = Pair::with(
        anyrdma::CqOptions {
            entries: 4096,
            ..anyrdma::CqOptions::default()
        },
        qp,
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

/// A receiver that sleeps 1 s before reading, and a sender of 10,000 messages: all arrive in
/// order, no send fails (no "receiver not ready"), and the sender was held back meanwhile.
async fn slow_receiver_holds_sender_back(rt: Rt) {
    if !support::device_present("slow_receiver_holds_sender_back") {
        return;
    }
    const COUNT: u64 = 10_000;
    let options = MessengerOptions {
        depth: 32,
        max_message: 256,
    };
    let (_pair, a, b) = messengers(options);
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let sent = sent.clone();
        rt.spawn(async move {
            for i in 0..COUNT {
                let len = 1 + (i as usize * 13) % 256;
                a.send(&message(i, len))
                    .await
                    .unwrap_or_else(|err| panic!("send {i}: {err}"));
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    anyrdma::sleep(Duration::from_secs(1)).await;
    let before_reading = sent.load(Ordering::Relaxed);
    for i in 0..COUNT {
        let got = within(30, "a message", b.recv()).await.expect("recv");
        let len = 1 + (i as usize * 13) % 256;
        assert_eq!(got.data.len(), len, "message {i}: length");
        assert_eq!(
            &got.data[..],
            &message(i, len)[..],
            "message {i}: bytes or order"
        );
    }
    within(30, "the sender", sender).await;
    println!(
        "{}: the sender sent {before_reading} messages while the receiver slept (depth {})",
        rt.name(),
        options.depth
    );
    assert!(
        before_reading < options.depth,
        "{}: {before_reading} sent with {} receives posted",
        rt.name(),
        options.depth
    );
}

/// `recv` under a timeout of 1 µs to 1 ms, in a loop, over 10,000 messages: none lost,
/// none duplicated, none out of order.
async fn dropped_receives_lose_nothing(rt: Rt) {
    if !support::device_present("dropped_receives_lose_nothing") {
        return;
    }
    const COUNT: u64 = 10_000;
    let (_pair, a, b) = messengers(MessengerOptions::default());
    let sender = rt.spawn(async move {
        for i in 0..COUNT {
            a.send_with_imm(&message(i, 16), i as u32)
                .await
                .expect("send");
        }
        a
    });
    let mut next = 0u64;
    let mut timeouts = 0u64;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    while next < COUNT {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let patience = Duration::from_micros(1 + seed % 1000);
        match anyrdma::timeout(patience, b.recv()).await {
            Ok(got) => {
                let got = got.expect("recv");
                assert_eq!(
                    got.imm,
                    Some(next as u32),
                    "message {next}: lost or out of order"
                );
                assert_eq!(&got.data[..], &message(next, 16)[..]);
                next += 1;
            }
            Err(_) => timeouts += 1,
        }
    }
    let _a = within(30, "the sender", sender).await;
    println!(
        "{}: {COUNT} messages, {timeouts} receives timed out and were dropped",
        rt.name()
    );
    assert!(timeouts > 0, "the test dropped no receive future");
}

/// Sizes 0, 1, the largest, one more (refused, nothing sent), and the stream goes on.
async fn sizes_up_to_the_largest(rt: Rt) {
    if !support::device_present("sizes_up_to_the_largest") {
        return;
    }
    let options = MessengerOptions {
        depth: 8,
        max_message: 4096,
    };
    let (_pair, a, b) = messengers(options);
    for (i, len) in [0usize, 1, 4095, 4096].into_iter().enumerate() {
        a.send(&message(i as u64, len)).await.expect("send");
        let got = within(10, "a message", b.recv()).await.expect("recv");
        assert_eq!(
            &got.data[..],
            &message(i as u64, len)[..],
            "{}: {len} B",
            rt.name()
        );
    }
    match a.send(&[0; 4097]).await {
        Err(Error::TooLarge {
            len: 4097,
            max: 4096,
            ..
        }) => {}
        other => panic!("{}: one byte too many: {other:?}", rt.name()),
    }
    a.send(b"after").await.expect("send after a refusal");
    assert_eq!(
        &within(10, "a message", b.recv()).await.unwrap().data[..],
        b"after"
    );
}

/// 64 tasks send on one messenger at once, 200 messages each; the receiver counts exactly
/// 12,800, each sender's in its own order.
async fn many_senders_share_a_messenger(rt: Rt) {
    if !support::device_present("many_senders_share_a_messenger") {
        return;
    }
    const SENDERS: u64 = 64;
    const EACH: u64 = 200;
    let (_pair, a, b) = messengers(MessengerOptions::default());
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let a = a.clone();
        senders.push(rt.spawn(async move {
            for i in 0..EACH {
                a.send_with_imm(&message(i, 24), (sender << 16 | i) as u32)
                    .await
                    .expect("send");
            }
        }));
    }
    let mut next = vec![0u64; SENDERS as usize];
    for _ in 0..SENDERS * EACH {
        let got = within(30, "a message", b.recv()).await.expect("recv");
        let imm = u64::from(got.imm.expect("an immediate"));
        let (sender, i) = ((imm >> 16) as usize, imm & 0xffff);
        assert_eq!(i, next[sender], "sender {sender}: out of order");
        assert_eq!(&got.data[..], &message(i, 24)[..]);
        next[sender] += 1;
    }
    for sender in senders {
        within(30, "a sender", sender).await;
    }
    assert!(next.iter().all(|&n| n == EACH), "{}: {next:?}", rt.name());
}

/// A peer that breaks the protocol (raw sends on its queue pair): the messenger ends with a
/// typed error naming the problem, and does not panic or hang.
async fn broken_messages_are_refused(rt: Rt) {
    if !support::device_present("broken_messages_are_refused") {
        return;
    }
    type Case = (&'static [u8], fn(&HeaderProblem) -> bool);
    let cases: [Case; 5] = [
        (&[0x10, 0, 0], |p| {
            matches!(p, HeaderProblem::Truncated { len: 3 })
        }),
        (&[0x70, 0, 0, 0, 0, 0, 0, 0], |p| {
            matches!(p, HeaderProblem::Version(7))
        }),
        (&[0x1f, 0, 0, 0, 0, 0, 0, 0], |p| {
            matches!(p, HeaderProblem::Kind(15))
        }),
        (&[0x10, 0x40, 0, 0, 0, 0, 0, 0], |p| {
            matches!(p, HeaderProblem::Flags(0x40))
        }),
        // 1,000 credits returned when the peer's depth is 8.
        (&[0x11, 0, 0xe8, 0x03, 0, 0, 0, 0], |p| {
            matches!(p, HeaderProblem::TooManyCredits { returned: 1000, .. })
        }),
    ];
    for (bytes, expected) in cases {
        let pair = Pair::new();
        let options = MessengerOptions {
            depth: 8,
            max_message: 64,
        };
        let victim = Messenger::new(&pair.b, options).expect("messenger");
        let mut raw = pair
            .pd
            .alloc(bytes.len().max(1), anyrdma::Access::LOCAL)
            .unwrap();
        let raw_piece = {
            let rest = raw.split_off(bytes.len());
            drop(rest);
            raw
        };
        let mut raw_piece = raw_piece;
        raw_piece.copy_from_slice(bytes);
        let (sent, _) = pair.a.send(raw_piece).await;
        sent.expect("the raw send");
        match within(10, "the refusal", victim.recv()).await {
            Err(err) => match err.root_cause() {
                Error::BadMessage { problem } => {
                    assert!(expected(problem), "{}: {bytes:?}: {problem:?}", rt.name())
                }
                other => panic!("{}: {bytes:?}: {other:?}", rt.name()),
            },
            Ok(message) => panic!("{}: {bytes:?} accepted as {message:?}", rt.name()),
        }
        // It stays failed: sending fails at once too.
        assert!(victim.send(b"x").await.is_err());
    }
}

/// Messengers by address: the two sides agree through the connection's handshake, talk, and
/// a peer that goes away ends the other's `recv` with the disconnect error; a connect
/// request that is not a messenger's is rejected with a reason.
async fn messengers_by_address(rt: Rt) {
    if !support::device_present("messengers_by_address") {
        return;
    }
    let listener = Listener::bind(SocketAddr::from(([169, 254, 77, 1], 0))).expect("bind");
    let addr = listener.local_addr();
    let server_options = MessengerOptions {
        depth: 16,
        max_message: 1024,
    };
    let server = rt.spawn(async move {
        // A plain connection first: not a messenger, so it is rejected.
        let plain = listener.incoming().await.expect("incoming");
        let refused = Messenger::accept(plain, ConnectionOptions::default(), server_options).await;
        assert!(
            matches!(refused, Err(Error::BadMessage { .. })),
            "{refused:?}"
        );
        let incoming = listener.incoming().await.expect("incoming");
        let messenger = Messenger::accept(incoming, ConnectionOptions::default(), server_options)
            .await
            .expect("accept a messenger");
        // Echo until the client goes.
        loop {
            match messenger.recv().await {
                Ok(message) => messenger.send(&message.data).await.expect("echo"),
                Err(err) => {
                    assert!(err.is_disconnect(), "the server's recv ended with {err}");
                    return;
                }
            }
        }
    });
    match Connection::connect(addr, ConnectionOptions::default()).await {
        Err(err @ Error::ConnectRejected { .. }) => {
            assert!(
                err.reject_reason().unwrap_or("").contains("messenger"),
                "{err}"
            )
        }
        other => panic!("{}: a plain connect: {other:?}", rt.name()),
    }
    let client_options = MessengerOptions {
        depth: 8,
        max_message: 4096,
    };
    let messenger = Messenger::connect(addr, ConnectionOptions::default(), client_options)
        .await
        .expect("connect a messenger");
    assert_eq!(
        messenger.max_message(),
        1024,
        "the server's largest message"
    );
    for i in 0..500u64 {
        let bytes = message(i, 1 + (i as usize * 31) % 1024);
        messenger.send(&bytes).await.expect("send");
        let echo = within(10, "an echo", messenger.recv()).await.expect("echo");
        assert_eq!(&echo.data[..], &bytes[..], "{}: echo {i}", rt.name());
    }
    assert!(matches!(
        messenger.send(&[0; 1025]).await,
        Err(Error::TooLarge { .. })
    ));
    drop(messenger); // closes the connection: the server's recv ends
    within(10, "the server's end", server).await;
}

runtime_tests!(
    messengers_by_address,
    slow_receiver_holds_sender_back,
    dropped_receives_lose_nothing,
    sizes_up_to_the_largest,
    many_senders_share_a_messenger,
    broken_messages_are_refused,
);
