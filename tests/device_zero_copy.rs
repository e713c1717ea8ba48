//! Zero-copy writes of owned memory (`RdmaStream::write_owned`, `WriteHalf::write_owned`,
//! `Messenger::send_owned`), on every runtime: the bytes arrive intact at sizes around the
//! eager limit and at 16 MiB; a large write stays pending until the peer has read it, while
//! exactly one registration (the caller's bytes) is exposed, and comes back as the same
//! allocation with that registration gone; order is kept with the copying writes around it
//! (gathered bytes first); a future dropped after posting still delivers its bytes and leaves
//! nothing registered once they are read, one dropped before posting sends nothing; a killed
//! peer ends a pending write with an error, and the buffer back, within 5 s.
//!
//! Listeners bind rxe0's address in the guest, 169.254.77.1 (`ANYRDMA_TEST_CM_ADDR` overrides it).

// support::alone orders tests (each holds its guard across its awaits), not tasks.
#![allow(clippy::await_holding_lock)]

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::{Duration, Instant};

use anyrdma::cm::{ConnectionOptions, Listener};
use anyrdma::msg::{Messenger, MessengerOptions};
use anyrdma::registered_regions;
use anyrdma::stream::{RdmaStream, StreamListener};
use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use support::{within, Rt};

/// Set in the child process that plays the peer of the test that kills it.
const PEER_ENV: &str = "ANYRDMA_TEST_ZERO_COPY_PEER";

/// What the peer process writes first, so that the test knows its stream carries data.
const HELLO: &[u8] = b"hello from the zero-copy peer\n";

/// The default messenger's eager limit: writes up to it are copied, above it not.
const EAGER: usize = 8192;

/// The large size of the tests (and of the benchmark's row).
const BIG: usize = 16 << 20;

/// How long a write must stay pending while the peer does not read.
const HELD: Duration = Duration::from_millis(300);

fn any_port() -> SocketAddr {
    SocketAddr::new(support::cm_ip(), 0)
}

/// Bytes `offset..offset + len` of the sequence seeded by `seed`: each 8-byte word depends on
/// its position, so a byte lost, duplicated or moved changes what follows.
fn data(seed: u64, offset: usize, len: usize) -> Vec<u8> {
    let key = support::mix(seed);
    // Whole words from the one holding `offset` (fast in an unoptimized build), then cut.
    let first = offset / 8;
    let words = (offset + len).div_ceil(8) - first;
    let mut out = Vec::with_capacity(words * 8);
    for word in first..first + words {
        out.extend_from_slice(&support::mix(key ^ word as u64).to_le_bytes());
    }
    out.drain(..offset % 8);
    out.truncate(len);
    out
}

/// Checks `got` against the sequence seeded by `seed` from `offset`, naming the first
/// byte that differs.
fn check(got: &[u8], seed: u64, offset: usize, what: &str) {
    let want = data(seed, offset, got.len());
    if got == want {
        return;
    }
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "{what}: byte {} of the stream is {:#04x}, expected {:#04x}: a byte lost, \
             duplicated or out of order",
            offset + i,
            got[i],
            want[i]
        );
    }
}

/// A connected pair (client, server) on a listener of its own.
async fn pair() -> (RdmaStream, RdmaStream) {
    let listener = StreamListener::bind(any_port()).expect("bind a stream listener");
    let addr = listener.local_addr();
    let (client, server) = within(
        20,
        "connect and accept",
        futures_util::future::join(RdmaStream::connect(addr), listener.accept()),
    )
    .await;
    (client.expect("connect"), server.expect("accept"))
}

/// Polls `future` for `HELD`: it must still be pending (the peer has not read).
async fn stays_pending<F: Future + Unpin>(future: &mut F, what: &str) {
    if anyrdma::timeout(HELD, future).await.is_ok() {
        panic!("{what}: done while the peer had not read the bytes");
    }
}

/// Reads `len` bytes from `stream` and checks them against the sequence from `offset`.
async fn read_checked(stream: &mut RdmaStream, seed: u64, offset: usize, len: usize, what: &str) {
    let mut got = vec![0; len];
    within(30, what, stream.read_exact(&mut got))
        .await
        .unwrap_or_else(|err| panic!("{what}: {err}"));
    check(&got, seed, offset, what);
}

/// Writes of owned buffers just below, at and above the eager limit, at 64 KiB and at 16 MiB:
/// every byte arrives; a large one stays pending while the peer does not read, with exactly
/// one more registration (the caller's bytes) and one message exposed, and comes back as the
/// same allocation, unchanged, with that registration gone and nothing exposed. Each size is
/// written once first, so that the reader's pool holds a block for it.
async fn write_owned_gives_back_the_allocation_once_read(rt: Rt) {
    if !support::device_present("write_owned_gives_back_the_allocation_once_read") {
        return;
    }
    let _alone = support::alone();
    let (mut client, mut server) = pair().await;
    let mut at = 0;
    for len in [EAGER - 1, EAGER, EAGER + 1, (64 << 10) + 3, BIG] {
        let what = format!("{}: write_owned of {len} bytes", rt.name());
        for round in 0..2 {
            let buf = data(1, at, len);
            let (ptr, capacity) = (buf.as_ptr(), buf.capacity());
            let baseline = registered_regions();
            let back = {
                let mut write = pin!(client.write_owned(buf));
                if len > EAGER {
                    stays_pending(&mut write, &what).await;
                }
                if len > EAGER && round == 1 {
                    assert_eq!(
                        registered_regions(),
                        baseline + 1,
                        "{what}: registrations while the peer had not read (one: the caller's \
                         bytes)"
                    );
                }
                let reading = read_checked(&mut server, 1, at, len, &what);
                within(30, &what, futures_util::future::join(write, reading))
                    .await
                    .0
            };
            let back = back.unwrap_or_else(|err| panic!("{what}: {err}"));
            let after = registered_regions();
            assert!(
                std::ptr::eq(back.as_ptr(), ptr) && back.capacity() == capacity,
                "{what}: another allocation came back"
            );
            check(&back, 1, at, &format!("{what}: the buffer given back"));
            assert_eq!(client.messenger().exposed(), 0, "{what}: still exposed");
            if round == 1 {
                assert_eq!(
                    after, baseline,
                    "{what}: registrations when it came back ({baseline} before): the \
                     peer's key still works"
                );
            }
            at += len;
        }
    }
    println!("{}: {at} bytes written from owned buffers", rt.name());
}

/// Copying writes and owned writes interleaved arrive in the order written: 200 tiny writes
/// first (more than the peer has receives, so the last ones gather and wait), then an owned
/// write of 2 MiB, then small and eager-sized writes, another owned write, and the close.
async fn write_owned_keeps_the_order_of_writes(rt: Rt) {
    if !support::device_present("write_owned_keeps_the_order_of_writes") {
        return;
    }
    let _beside = support::beside_others();
    let (client, mut server) = pair().await;
    let (_read, mut write) = client.split();
    let what = format!("{}: write, write_owned, write", rt.name());
    let reader = rt.spawn(async move {
        // Late, so that the tiny writes gather.
        anyrdma::sleep(Duration::from_millis(200)).await;
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read to the end");
        got
    });
    let mut at = 0;
    for i in 0..200 {
        let piece = data(2, at, 1 + i % 16);
        write.write_all(&piece).await.expect("a tiny write");
        at += piece.len();
    }
    for len in [2 << 20, 100, EAGER + 5, 3000, BIG + 1, 1] {
        let piece = data(2, at, len);
        if len > EAGER {
            let ptr = piece.as_ptr();
            let back = within(30, &what, write.write_owned(piece))
                .await
                .expect("write_owned");
            assert!(
                std::ptr::eq(back.as_ptr(), ptr),
                "{what}: another allocation"
            );
        } else {
            write.write_all(&piece).await.expect("a write");
        }
        at += len;
    }
    within(30, &what, write.close()).await.expect("close");
    let got = within(60, &what, reader).await;
    assert_eq!(got.len(), at, "{what}: bytes read");
    check(&got, 2, 0, &what);
    // A write after the close fails like a write, and gives the buffer back.
    let err = write
        .write_owned(vec![1u8; BIG])
        .await
        .expect_err("write_owned after close");
    assert_eq!(
        std::io::Error::from(err.error).kind(),
        std::io::ErrorKind::BrokenPipe
    );
    assert!(err.data.is_some_and(|data| data.len() == BIG));
}

/// An owned write whose future is dropped after it was posted (pending: the peer does not
/// read) still arrives whole, and once the peer has read it and the writer has taken in its
/// "read it" word (a flush), nothing stays registered. One dropped before it was posted (while
/// the tiny writes gathered before it wait for the peer's room) sends nothing and leaves
/// nothing registered.
async fn a_dropped_write_owned_leaves_nothing_registered(rt: Rt) {
    if !support::device_present("a_dropped_write_owned_leaves_nothing_registered") {
        return;
    }
    let _alone = support::alone();
    let what = format!("{}: a write_owned dropped after posting", rt.name());
    let (mut client, mut server) = pair().await;
    // Warm the reader's pool for the size, so that only the writer's registrations count.
    let back = within(
        30,
        &what,
        futures_util::future::join(
            client.write_owned(data(3, 0, BIG)),
            read_checked(&mut server, 3, 0, BIG, &what),
        ),
    )
    .await
    .0
    .expect("a first write_owned");
    drop(back);
    let baseline = registered_regions();
    {
        let mut write = pin!(client.write_owned(data(3, BIG, BIG)));
        stays_pending(&mut write, &what).await;
    }
    assert_eq!(
        registered_regions(),
        baseline + 1,
        "{what}: the bytes stay exposed while the peer may read them"
    );
    read_checked(&mut server, 3, BIG, BIG, &what).await;
    within(10, &what, client.flush()).await.expect("flush");
    assert_eq!(
        registered_regions(),
        baseline,
        "{what}: registrations once the peer read it ({baseline} before)"
    );
    assert_eq!(client.messenger().exposed(), 0, "{what}");

    // Dropped before posting: 200 tiny writes (more than the peer's receives) hold it back.
    let what = format!("{}: a write_owned dropped before posting", rt.name());
    let mut tiny = 0;
    for i in 0..200 {
        let piece = data(4, tiny, 1 + i % 16);
        client.write_all(&piece).await.expect("a tiny write");
        tiny += piece.len();
    }
    {
        let mut write = pin!(client.write_owned(vec![0xee; BIG]));
        stays_pending(&mut write, &what).await;
    }
    assert_eq!(
        registered_regions(),
        baseline,
        "{what}: registrations after the drop"
    );
    let (server_side, closed) = within(
        30,
        &what,
        futures_util::future::join(
            async {
                let mut got = Vec::new();
                server.read_to_end(&mut got).await.expect("read to the end");
                got
            },
            client.close(),
        ),
    )
    .await;
    closed.expect("close");
    assert_eq!(
        server_side.len(),
        tiny,
        "{what}: bytes at the peer (the tiny writes only)"
    );
    check(&server_side, 4, 0, &what);
}

/// `Messenger::send_owned`, with and without immediate data, between copying sends: every
/// message arrives in order, intact, and each owned buffer comes back as the same allocation.
async fn send_owned_messages_arrive_in_order(rt: Rt) {
    if !support::device_present("send_owned_messages_arrive_in_order") {
        return;
    }
    let _beside = support::beside_others();
    let listener = Listener::bind(any_port()).expect("bind");
    let addr = listener.local_addr();
    let options = MessengerOptions::default();
    let server = rt.spawn(async move {
        let incoming = listener.incoming().await.expect("incoming");
        let messenger = Messenger::accept(incoming, ConnectionOptions::default(), options)
            .await
            .expect("accept a messenger");
        let mut got = Vec::new();
        for _ in 0..8 {
            let message = messenger.recv().await.expect("recv");
            got.push((message.data.to_vec(), message.imm));
        }
        messenger.send(b"done").await.expect("answer");
        messenger.flush().await.expect("flush");
        got
    });
    let messenger = Messenger::connect(addr, ConnectionOptions::default(), options)
        .await
        .expect("connect a messenger");
    let what = format!("{}: send_owned between sends", rt.name());
    let sizes = [10, BIG, EAGER, EAGER + 1, 1, 5 << 20, 0, 300];
    for (i, len) in sizes.into_iter().enumerate() {
        let bytes = data(5, i, len);
        match i % 3 {
            0 => messenger.send(&bytes).await.expect("send"),
            1 => {
                let ptr = bytes.as_ptr();
                let back = within(30, &what, messenger.send_owned(bytes.into_boxed_slice()))
                    .await
                    .expect("send_owned");
                assert!(
                    std::ptr::eq(back.as_ptr(), ptr),
                    "{what}: another allocation"
                );
            }
            _ => {
                let back = within(30, &what, messenger.send_owned_with_imm(bytes, i as u32))
                    .await
                    .expect("send_owned_with_imm");
                assert_eq!(back.len(), len);
            }
        }
    }
    let answer = within(30, &what, messenger.recv()).await.expect("answer");
    assert_eq!(&answer.data[..], b"done");
    let got = within(30, &what, server).await;
    for (i, (len, (bytes, imm))) in sizes.into_iter().zip(got).enumerate() {
        assert_eq!(bytes.len(), len, "{what}: message {i}");
        check(&bytes, 5, i, &format!("{what}: message {i}"));
        let want = (i % 3 == 2).then_some(i as u32);
        assert_eq!(imm, want, "{what}: message {i}'s immediate");
    }
    assert_eq!(messenger.exposed(), 0, "{what}");
}

/// The child process of `a_killed_peer_ends_write_owned` (does nothing in a normal run).
async fn zero_copy_peer_process(_rt: Rt) {
    support::silent_stream_peer(PEER_ENV, HELLO).await;
}

/// A peer process that never reads is killed while an owned 16 MiB write waits for it: the
/// write ends with an error within 5 s and gives the buffer back, the same allocation.
async fn a_killed_peer_ends_write_owned(rt: Rt) {
    if !support::device_present("a_killed_peer_ends_write_owned") {
        return;
    }
    let _beside = support::beside_others();
    let listener = StreamListener::bind(any_port()).expect("bind");
    let (mut peer, mut stream) =
        support::start_silent_stream_peer(rt, "zero_copy_peer_process", PEER_ENV, HELLO, &listener)
            .await;
    let what = format!("{}: write_owned to a killed peer", rt.name());
    let buf = vec![0x5a; BIG];
    let ptr = buf.as_ptr();
    let mut write = pin!(stream.write_owned(buf));
    stays_pending(&mut write, &what).await;
    let killed = Instant::now();
    peer.0.kill().expect("kill the peer");
    peer.0.wait().expect("reap the peer");
    let err = within(10, &what, write)
        .await
        .expect_err("a write to a killed peer");
    let took = killed.elapsed();
    println!("{what}: failed after {took:?} ({err})");
    assert!(took <= Duration::from_secs(5), "{what}: took {took:?}");
    let back = err.data.expect("the buffer given back");
    assert!(
        std::ptr::eq(back.as_ptr(), ptr),
        "{what}: another allocation"
    );
}

runtime_tests!(
    write_owned_gives_back_the_allocation_once_read,
    write_owned_keeps_the_order_of_writes,
    a_dropped_write_owned_leaves_nothing_registered,
    send_owned_messages_arrive_in_order,
    zero_copy_peer_process,
    a_killed_peer_ends_write_owned,
);
