//! Selective signaling (`anyrdma::signaling`): on a busy send queue most requests ask for no
//! completion and resolve with a later one. Their data must still be whole when they
//! resolve, their buffers must not come back before the device is done with them, dropped
//! ones must be released, and a failure in the middle of an unsignaled run must land on the
//! failing request, with flushes after it.

// SERIAL is held for a whole test, across its awaits, on purpose: each test runs on its own
// runtime, and the lock only keeps the tests of this binary from running at the same time.
#![allow(clippy::await_holding_lock)]

mod support;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use anyrdma::{
    registered_regions, Access, CompletionQueue, ConnectOptions, CqOptions, Error, LocalBuf,
    QpOptions, QueuePair, RemoteRegion,
};
use support::{drain, fill, holds_pattern, within, Rt};

/// The leak checks read a process-wide counter: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Slots of the target region, one per operation in flight at most.
const SLOTS: usize = 64;
const SLOT_LEN: usize = 4096;
const OPERATIONS: usize = 10_000;

fn qp_options() -> QpOptions {
    QpOptions {
        max_send_wr: 256,
        max_recv_wr: 16,
        signal_every: 8,
        ..QpOptions::default()
    }
}

/// A connected pair of queue pairs with [`qp_options`].
fn pair() -> support::Pair {
    support::Pair::with(
        CqOptions::default(),
        qp_options(),
        ConnectOptions::default(),
    )
}

fn next_random(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

type Check = Pin<Box<dyn Future<Output = ()> + Send>>;

/// 10,000 writes and reads of random sizes on `qp`, up to 64 in flight, about a fifth
/// dropped right after posting: each awaited read holds the source's bytes when it
/// resolves, and each write's buffer comes back intact (that writes have landed when they
/// resolve is `resolved_writes_have_landed`'s check). Returns how many were dropped.
async fn run_workload(
    name: String,
    qp: QueuePair,
    target: RemoteRegion,
    source: RemoteRegion,
    source_seed: u8,
    mut seed: u64,
) -> usize {
    let pd = qp.pd().clone();
    let mut window: VecDeque<Check> = VecDeque::new();
    let mut dropped = 0;
    for i in 0..OPERATIONS {
        if window.len() >= SLOTS {
            window.pop_front().expect("in flight").await;
        }
        let len = 1 + (next_random(&mut seed) % SLOT_LEN as u64) as usize;
        let drop_it = next_random(&mut seed) % 5 == 0;
        let check: Check = if next_random(&mut seed) % 10 < 7 {
            // Slot i % SLOTS: no other operation in flight writes it (the window is SLOTS).
            let at = (i % SLOTS) * SLOT_LEN;
            let mut buf = pd.alloc(len, Access::LOCAL).unwrap();
            fill(&mut buf, i as u8);
            let op = qp.write(buf, target.slice(at as u64..(at + len) as u64).unwrap());
            let name = name.clone();
            Box::pin(async move {
                let (result, buf) = within(20, "a write", op).await;
                result.unwrap_or_else(|err| panic!("{name}: write {i}: {err}"));
                assert!(
                    holds_pattern(&buf, i as u8),
                    "{name}: write {i}: buffer changed"
                );
            })
        } else {
            let op = qp.read(pd.alloc(len, Access::LOCAL).unwrap(), source);
            let name = name.clone();
            Box::pin(async move {
                let (result, buf) = within(20, "a read", op).await;
                result.unwrap_or_else(|err| panic!("{name}: read {i}: {err}"));
                assert!(
                    holds_pattern(&buf, source_seed) || buf.is_empty(),
                    "{name}: read {i}: resolved before its data was there"
                );
            })
        };
        if drop_it {
            drop(check);
            dropped += 1;
        } else {
            window.push_back(check);
        }
    }
    for check in window {
        check.await;
    }
    dropped
}

/// One queue pair, then four sharing a CQ: every awaited write's bytes are in place when it
/// resolves (checked against the target), reads hold their data, nothing leaks, and the
/// queues are whole after.
async fn unsignaled_operations_resolve_with_their_data(rt: Rt) {
    if !support::device_present("unsignaled_operations_resolve_with_their_data") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let baseline = registered_regions();
    for qps in [1usize, 4] {
        let ctx = anyrdma::Context::open_default().expect("device");
        let pd = ctx.alloc_pd().unwrap();
        let cq_options = CqOptions {
            entries: 2048,
            ..CqOptions::default()
        };
        let cq_a = CompletionQueue::new(&ctx, cq_options).unwrap();
        let cq_b = CompletionQueue::new(&ctx, cq_options).unwrap();
        let mut pairs = Vec::new();
        for _ in 0..qps {
            let a = QueuePair::new(&pd, &cq_a, &cq_a, qp_options()).unwrap();
            let b = QueuePair::new(&pd, &cq_b, &cq_b, qp_options()).unwrap();
            a.connect(&b.endpoint(), ConnectOptions::default()).unwrap();
            b.connect(&a.endpoint(), ConnectOptions::default()).unwrap();
            pairs.push((a, b));
        }
        let target = pd
            .alloc_shared(qps * SLOTS * SLOT_LEN, Access::REMOTE_WRITE)
            .unwrap();
        let source = pd.alloc_shared(SLOT_LEN, Access::REMOTE_READ).unwrap();
        let mut pattern = vec![0u8; SLOT_LEN];
        fill(&mut pattern, 0x5c);
        source.write_at(0, &pattern).unwrap();
        let source_remote = source.remote().unwrap();
        let mut tasks = Vec::new();
        for (q, (a, _)) in pairs.iter().enumerate() {
            let remote = target
                .remote()
                .unwrap()
                .slice((q * SLOTS * SLOT_LEN) as u64..((q + 1) * SLOTS * SLOT_LEN) as u64)
                .unwrap();
            let name = format!("{} {qps} QP(s), QP {q}", rt.name());
            tasks.push(rt.spawn(run_workload(
                name,
                a.clone(),
                remote,
                source_remote,
                0x5c,
                0x9e37_79b9_7f4a_7c15 ^ (q as u64 + 1),
            )));
        }
        let mut dropped = 0;
        for task in tasks {
            dropped += within(300, "a workload", task).await;
        }
        assert!(dropped > 0, "the test dropped nothing");
        drain(&cq_a, "dropped operations").await;
        for (a, b) in &pairs {
            assert!(
                a.failure().is_none() && b.failure().is_none(),
                "{}: a queue pair failed",
                rt.name()
            );
        }
        drop((pairs, target, source, cq_a, cq_b, pd, ctx));
    }
    assert_eq!(
        registered_regions(),
        baseline,
        "{}: registrations leaked",
        rt.name()
    );
}

/// Unsignaled writes resolve only when their data is in place: each write's bytes are read
/// back from the target the moment it resolves, while later writes (to other slots) are
/// still in flight.
async fn resolved_writes_have_landed(rt: Rt) {
    if !support::device_present("resolved_writes_have_landed") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let pair = pair();
    let target = pair
        .pd
        .alloc_shared(SLOTS * SLOT_LEN, Access::REMOTE_WRITE)
        .unwrap();
    let remote = target.remote().unwrap();
    for round in 0..20u8 {
        let ops: Vec<_> = (0..SLOTS)
            .map(|slot| {
                let at = (slot * SLOT_LEN) as u64;
                let seed = round.wrapping_mul(64).wrapping_add(slot as u8);
                (
                    slot,
                    seed,
                    pair.a.write(
                        pair.patterned(SLOT_LEN, seed),
                        remote.slice(at..at + SLOT_LEN as u64).unwrap(),
                    ),
                )
            })
            .collect();
        for (slot, seed, op) in ops {
            let (result, _) = within(20, "a write", op).await;
            result.expect("write");
            let landed = target
                .to_vec(slot * SLOT_LEN..(slot + 1) * SLOT_LEN)
                .unwrap();
            assert!(
                holds_pattern(&landed, seed),
                "{}: round {round}: write {slot} resolved before its bytes landed",
                rt.name()
            );
        }
    }
}

/// An unsignaled write dropped right after posting still sends its own bytes: its buffer
/// is not freed and reused (here: by freshly poisoned allocations) before the device read
/// it, although no completion of its own will ever come.
async fn dropped_unsignaled_write_sends_its_bytes(rt: Rt) {
    if !support::device_present("dropped_unsignaled_write_sends_its_bytes") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let pair = pair();
    let region = pair.pd.alloc_shared(2 << 20, Access::REMOTE_WRITE).unwrap();
    let remote = region.remote().unwrap();
    let (first, second) = (
        remote.slice(0..1 << 20).unwrap(),
        remote.slice(1 << 20..2 << 20).unwrap(),
    );
    for round in 0..8u8 {
        // Signaled (the queue is idle), and still in flight while the next one is posted,
        // which therefore goes unsignaled.
        let busy = pair.a.write(pair.patterned(1 << 20, 0xee), first);
        drop(pair.a.write(pair.patterned(1 << 20, round), second));
        let poison: Vec<LocalBuf> = (0..4)
            .map(|_| {
                let mut p = pair.pd.alloc(1 << 20, Access::LOCAL).unwrap();
                p.fill(0xde);
                p
            })
            .collect();
        within(20, "the signaled write", busy)
            .await
            .0
            .expect("write");
        drain(&pair.cq_a, "the dropped write").await;
        assert!(
            holds_pattern(&region.to_vec(1 << 20..2 << 20).unwrap(), round),
            "{}: round {round}: the device sent reused memory",
            rt.name()
        );
        drop(poison);
    }
}

/// A run of writes, unsignaled but for the first, with one in the middle that the peer
/// refuses (a wrong key): those before it succeed, it fails with the remote access error,
/// and every one after it is flushed.
async fn failure_in_an_unsignaled_run_lands_on_its_request(rt: Rt) {
    if !support::device_present("failure_in_an_unsignaled_run_lands_on_its_request") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    const RUN: usize = 12;
    const BAD: usize = 5;
    let pair = support::Pair::with(
        CqOptions::default(),
        QpOptions {
            signal_every: 64,
            ..qp_options()
        },
        ConnectOptions {
            retry_cnt: 1,
            ..ConnectOptions::default()
        },
    );
    let region = pair
        .pd
        .alloc_shared(RUN * SLOT_LEN, Access::REMOTE_WRITE)
        .unwrap();
    let remote = region.remote().unwrap();
    let ops: Vec<_> = (0..RUN)
        .map(|i| {
            let at = (i * SLOT_LEN) as u64;
            let mut to = remote.slice(at..at + SLOT_LEN as u64).unwrap();
            if i == BAD {
                to.rkey ^= 0x5a5a_0000;
            }
            pair.a.write(pair.patterned(SLOT_LEN, i as u8), to)
        })
        .collect();
    for (i, op) in ops.into_iter().enumerate() {
        let (result, buf) = within(20, "a write of the run", op).await;
        assert!(holds_pattern(&buf, i as u8), "buffer {i} changed");
        match (i, result) {
            (i, Ok(())) if i < BAD => {
                let landed = region.to_vec(i * SLOT_LEN..(i + 1) * SLOT_LEN).unwrap();
                assert!(holds_pattern(&landed, i as u8), "{}: write {i}", rt.name());
            }
            (BAD, Err(Error::WorkCompletion { status, .. })) => {
                assert_eq!(
                    status,
                    anyrdma::WcStatus::REM_ACCESS_ERR,
                    "{}: the failing write",
                    rt.name()
                );
            }
            (i, Err(Error::Flushed { .. })) if i > BAD => {}
            (i, other) => panic!("{}: write {i} of the run: {other:?}", rt.name()),
        }
    }
}

runtime_tests!(
    unsignaled_operations_resolve_with_their_data,
    resolved_writes_have_landed,
    dropped_unsignaled_write_sends_its_bytes,
    failure_in_an_unsignaled_run_lands_on_its_request,
);
