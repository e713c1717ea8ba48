//! Cancellation: dropping an operation's future never frees or exposes memory the NIC may
//! still touch, and everything is released once the completion arrives.

// SERIAL is held for a whole test, across its awaits, on purpose: each test runs on its own
// runtime, and the lock only keeps the tests of this binary from running at the same time.
#![allow(clippy::await_holding_lock)]

mod support;

use std::sync::Mutex;

use anyrdma::{registered_regions, Access};
use support::{drain, holds_pattern, within, Pair, Rt};

/// The leak checks read a process-wide counter: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

async fn dropped_operations_hold_buffers_until_completion(rt: Rt) {
    if !support::device_present("dropped_operations_hold_buffers_until_completion") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let pair = Pair::new();
    let (region, remote) = {
        let buf = pair
            .pd
            .alloc_shared(
                1 << 20,
                Access::REMOTE_READ | Access::REMOTE_WRITE | Access::REMOTE_ATOMIC,
            )
            .unwrap();
        let remote = buf.remote().unwrap();
        (buf, remote)
    };
    let baseline = registered_regions();

    // Receive: dropped before the message arrives; the buffer stays registered.
    drop(pair.b.recv(pair.pd.alloc(4096, Access::LOCAL).unwrap()));
    assert_eq!(
        pair.cq_b.in_flight(),
        1,
        "the dropped receive is still posted"
    );
    assert_eq!(
        registered_regions(),
        baseline + 1,
        "its buffer is still registered"
    );
    let (sent, _) = within(
        20,
        "send into the dropped receive",
        pair.a.send(pair.patterned(4096, 1)),
    )
    .await;
    sent.expect("the receive was still there to take it");
    drain(&pair.cq_b, "receive").await;
    assert_eq!(
        registered_regions(),
        baseline,
        "released after its completion"
    );

    // Each send-queue kind, dropped right after posting.
    drop(pair.b.recv(pair.pd.alloc(64, Access::LOCAL).unwrap()));
    drop(pair.a.send(pair.patterned(64, 2)));
    drop(pair.a.write(pair.patterned(1 << 20, 3), remote));
    drop(
        pair.a
            .read(pair.pd.alloc(1 << 19, Access::LOCAL).unwrap(), remote),
    );
    drop(pair.a.fetch_and_add(
        pair.pd.alloc(8, Access::LOCAL).unwrap(),
        remote.slice(0..8).unwrap(),
        1,
    ));
    drop(pair.a.compare_and_swap(
        pair.pd.alloc(8, Access::LOCAL).unwrap(),
        remote.slice(8..16).unwrap(),
        0,
        1,
    ));
    drop(
        pair.a
            .batch()
            .write(pair.patterned(100, 4), remote)
            .write(pair.patterned(100, 5), remote)
            .submit(),
    );
    drain(&pair.cq_a, "send queue").await;
    drain(&pair.cq_b, "receive queue").await;
    assert_eq!(
        registered_regions(),
        baseline,
        "{}: every dropped buffer is released",
        rt.name()
    );
    assert!(
        pair.a.failure().is_none() && pair.b.failure().is_none(),
        "no operation failed"
    );
    drop(region);
}

/// A write dropped right after posting still sends its own bytes: its buffer is not freed
/// and reused (here: by freshly poisoned allocations) before the NIC has read it.
async fn dropped_write_sends_the_original_bytes(rt: Rt) {
    if !support::device_present("dropped_write_sends_the_original_bytes") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let pair = Pair::new();
    let region = pair.pd.alloc_shared(1 << 20, Access::REMOTE_WRITE).unwrap();
    let remote = region.remote().unwrap();
    for round in 0..8u8 {
        drop(pair.a.write(pair.patterned(1 << 20, round), remote));
        // Try hard to get the same memory back and scribble on it.
        let poison: Vec<_> = (0..4)
            .map(|_| {
                let mut p = pair.pd.alloc(1 << 20, Access::LOCAL).unwrap();
                p.fill(0xde);
                p
            })
            .collect();
        drain(&pair.cq_a, "dropped write").await;
        assert!(
            holds_pattern(&region.to_vec(..).unwrap(), round),
            "{}: round {round}: the NIC sent reused memory",
            rt.name()
        );
        drop(poison);
    }
}

/// Thousands of operations, half of them dropped at random points, end with nothing
/// leaked: no slot in flight, no registration alive, queues fully usable.
async fn stress_random_drops_leak_nothing(rt: Rt) {
    if !support::device_present("stress_random_drops_leak_nothing") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let baseline = registered_regions();
    {
        let pair = Pair::new();
        let region = pair
            .pd
            .alloc_shared(64 << 10, Access::REMOTE_READ | Access::REMOTE_WRITE)
            .unwrap();
        let remote = region.remote().unwrap();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut kept = Vec::new();
        for i in 0..3000u32 {
            let len = (next() % 4096) as usize + 1;
            let op: std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> =
                match next() % 3 {
                    0 => {
                        let fut = pair.a.write(
                            pair.patterned(len, i as u8),
                            remote.slice(0..len as u64).unwrap(),
                        );
                        Box::pin(async move { fut.await.0.is_ok() })
                    }
                    1 => {
                        let fut = pair
                            .a
                            .read(pair.pd.alloc(len, Access::LOCAL).unwrap(), remote);
                        Box::pin(async move { fut.await.0.is_ok() })
                    }
                    _ => {
                        let recv = pair.b.recv(pair.pd.alloc(len, Access::LOCAL).unwrap());
                        let send = pair.a.send(pair.patterned(len, i as u8));
                        Box::pin(async move { send.await.0.is_ok() & recv.await.0.is_ok() })
                    }
                };
            if next() % 2 == 0 {
                drop(op); // cancelled at once
            } else {
                kept.push(op);
            }
            if kept.len() >= 32 {
                for op in kept.drain(..) {
                    // Await some, drop others after partial progress.
                    if next() % 4 == 0 {
                        drop(op);
                    } else {
                        assert!(
                            within(20, "kept op", op).await,
                            "{}: an operation failed",
                            rt.name()
                        );
                    }
                }
            }
        }
        drop(kept);
        drain(&pair.cq_a, "stress a").await;
        drain(&pair.cq_b, "stress b").await;
        assert!(
            pair.a.failure().is_none(),
            "{}: {:?}",
            rt.name(),
            pair.a.failure()
        );
        // The queues are whole again: a full send queue's worth posts fine.
        let depth = pair.a.caps().max_send_wr as usize;
        let ops: Vec<_> = (0..depth)
            .map(|_| pair.a.write(pair.patterned(8, 1), remote))
            .collect();
        for op in ops {
            within(20, "refill", op)
                .await
                .0
                .expect("full queue depth after the stress");
        }
        drop(region);
    }
    assert_eq!(
        registered_regions(),
        baseline,
        "{}: registrations leaked",
        rt.name()
    );
}

/// Dropping a queue pair with operations in flight destroys it and releases their buffers,
/// without waiting for anything.
async fn dropping_a_busy_queue_pair_releases_its_buffers(rt: Rt) {
    if !support::device_present("dropping_a_busy_queue_pair_releases_its_buffers") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let pair = Pair::new();
    let baseline = registered_regions();
    for _ in 0..8 {
        drop(pair.b.recv(pair.pd.alloc(4096, Access::LOCAL).unwrap()));
    }
    assert_eq!(registered_regions(), baseline + 8);
    let Pair { b, cq_b, .. } = pair;
    drop(b);
    assert_eq!(
        registered_regions(),
        baseline,
        "{}: the destroyed queue pair's buffers are released",
        rt.name()
    );
    assert_eq!(cq_b.in_flight(), 0);
}

runtime_tests!(
    dropped_operations_hold_buffers_until_completion,
    dropped_write_sends_the_original_bytes,
    stress_random_drops_leak_nothing,
    dropping_a_busy_queue_pair_releases_its_buffers,
);
