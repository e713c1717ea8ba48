//! The counters (`anyrdma::stats`) on the device: a known number of operations, messages
//! and bytes shows up exactly in the snapshots of the queue pairs, completion queues,
//! messengers and memory sessions that did them, on every runtime.

mod support;

use std::time::Duration;

use anyrdma::msg::{Messenger, MessengerOptions};
use anyrdma::remote_memory::{
    GrantPolicy, MemorySession, Refusals, RefuseReason, Rights, SessionOptions,
};
use anyrdma::{
    Access, ConnectOptions, CqOptions, CqStats, Error, PollMode, QpOptions, QpStats, RemoteRegion,
};
use support::{within, Pair, Rt};

/// Requests of each kind this many times.
const ROUNDS: u64 = 10;

/// Every request posted on a queue pair shows in its snapshot, with its bytes by kind, and
/// the completions its completion queue found.
async fn every_request_and_byte_is_counted(rt: Rt) {
    if !support::device_present("every_request_and_byte_is_counted") {
        return;
    }
    let pair = Pair::new();
    let target = pair
        .pd
        .alloc_shared(4096, Access::REMOTE_READ | Access::REMOTE_WRITE)
        .unwrap();
    let at = target.remote().unwrap();
    // ROUNDS sends and one write with immediate land in receives b posted first.
    let mut inbox = Vec::new();
    for _ in 0..=ROUNDS {
        inbox.push(pair.b.recv(pair.pd.alloc(64, Access::LOCAL).unwrap()));
    }
    for i in 0..ROUNDS {
        let (result, _) = within(5, "write", pair.a.write(pair.patterned(100, i as u8), at)).await;
        result.unwrap();
        let (result, _) = within(5, "read", pair.a.read(pair.patterned(50, 0), at)).await;
        result.unwrap();
        let (result, _) = within(5, "send", pair.a.send(pair.patterned(30, i as u8))).await;
        result.unwrap();
    }
    let (result, _) = within(
        5,
        "write with immediate",
        pair.a.write_with_imm(pair.patterned(20, 1), at, 7),
    )
    .await;
    result.unwrap();
    let batch = pair
        .a
        .batch()
        .write(pair.patterned(8, 1), at)
        .write(pair.patterned(8, 2), at)
        .write(pair.patterned(8, 3), at);
    let (result, _) = within(5, "batch", batch.submit()).await;
    result.unwrap();
    for receive in inbox {
        let (result, _) = within(5, "receive", receive).await;
        result.unwrap();
    }

    let sends = 3 * ROUNDS + 1 + 3;
    let expected = QpStats {
        sends_posted: sends,
        sends_completed: sends,
        bytes_written: 100 * ROUNDS + 20 + 3 * 8,
        bytes_read: 50 * ROUNDS,
        bytes_sent: 30 * ROUNDS,
        ..QpStats::default()
    };
    assert_eq!(
        pair.a.stats(),
        expected,
        "{}: the sender's queue pair",
        rt.name()
    );
    let received = QpStats {
        receives_posted: ROUNDS + 1,
        receives_completed: ROUNDS + 1,
        ..QpStats::default()
    };
    assert_eq!(
        pair.b.stats(),
        received,
        "{}: the receiver's queue pair",
        rt.name()
    );
    assert_eq!(pair.a.stats().in_flight(), 0);

    // Each awaited request of a's was alone on its queue, so signaled: one completion each
    // (the batch has one, for its last request).
    let cq = pair.cq_a.stats();
    assert_eq!(cq.completions, 3 * ROUNDS + 2, "{}: {cq:?}", rt.name());
    check_cq_invariants(rt, &cq);
    let cq_b = pair.cq_b.stats();
    assert_eq!(cq_b.completions, ROUNDS + 1, "{}: {cq_b:?}", rt.name());
    check_cq_invariants(rt, &cq_b);
}

/// What holds of any completion queue's snapshot: a poll that found something found at least
/// one completion, the channel raises an event only once armed, a task is woken only by a
/// completion.
fn check_cq_invariants(rt: Rt, cq: &CqStats) {
    assert!(cq.polls >= cq.empty_polls, "{}: {cq:?}", rt.name());
    assert!(
        cq.polls - cq.empty_polls <= cq.completions,
        "{}: {cq:?}",
        rt.name()
    );
    assert!(cq.wakeups <= cq.sleeps, "{}: {cq:?}", rt.name());
    assert!(cq.tasks_woken <= cq.completions, "{}: {cq:?}", rt.name());
}

/// A completion queue in busy mode never sleeps on its channel, and every poll that found
/// its completion is counted.
async fn a_busy_queue_never_sleeps(rt: Rt) {
    if !support::device_present("a_busy_queue_never_sleeps") {
        return;
    }
    let pair = Pair::with(
        CqOptions {
            poll_mode: PollMode::Busy,
            ..CqOptions::default()
        },
        QpOptions::default(),
        ConnectOptions::default(),
    );
    let target = pair.pd.alloc_shared(64, Access::REMOTE_WRITE).unwrap();
    let at = target.remote().unwrap();
    for i in 0..ROUNDS {
        let (result, _) = within(5, "write", pair.a.write(pair.patterned(64, i as u8), at)).await;
        result.unwrap();
    }
    let cq = pair.cq_a.stats();
    assert_eq!(cq.completions, ROUNDS, "{}: {cq:?}", rt.name());
    assert_eq!(
        (cq.sleeps, cq.wakeups, cq.tasks_woken),
        (0, 0, 0),
        "{}: {cq:?}",
        rt.name()
    );
    // Each write's own poll found it: at least one poll per write that found something.
    assert!(cq.polls - cq.empty_polls >= ROUNDS, "{}: {cq:?}", rt.name());
    check_cq_invariants(rt, &cq);
}

/// A write that fails puts the queue pair in error, and the receives it held are flushed:
/// one failure, every receive flushed, and a post refused after counts as nothing.
async fn failures_and_flushes_are_counted(rt: Rt) {
    if !support::device_present("failures_and_flushes_are_counted") {
        return;
    }
    let pair = Pair::new();
    let receives: Vec<_> = (0..5)
        .map(|_| pair.a.recv(pair.pd.alloc(64, Access::LOCAL).unwrap()))
        .collect();
    let target = pair.pd.alloc_shared(64, Access::REMOTE_WRITE).unwrap();
    let wrong_key = RemoteRegion {
        rkey: target.remote().unwrap().rkey ^ 0x5a5a,
        ..target.remote().unwrap()
    };
    let (result, _) = within(
        5,
        "bad write",
        pair.a.write(pair.patterned(64, 1), wrong_key),
    )
    .await;
    assert!(
        result.is_err(),
        "{}: a write with a wrong key fails",
        rt.name()
    );
    for receive in receives {
        let (result, _) = within(5, "flushed receive", receive).await;
        assert!(
            matches!(result, Err(Error::Flushed { .. })),
            "{}: {result:?}",
            rt.name()
        );
    }
    let (result, _) = pair
        .a
        .write(pair.patterned(64, 2), target.remote().unwrap())
        .await;
    assert!(result.is_err(), "{}: the queue pair is in error", rt.name());
    let stats = pair.a.stats();
    let expected = QpStats {
        sends_posted: 1,
        sends_completed: 1,
        receives_posted: 5,
        receives_completed: 5,
        failed: 1,
        flushed: 5,
        bytes_written: 64,
        ..QpStats::default()
    };
    assert_eq!(stats, expected, "{}", rt.name());
}

/// Posts that find the send queue full take the completions waiting (of dropped operations)
/// to make room, once per post; an unsignaled request awaited alone gets a fence.
async fn room_waits_and_fences_are_counted(rt: Rt) {
    if !support::device_present("room_waits_and_fences_are_counted") {
        return;
    }
    let pair = Pair::with(
        CqOptions::default(),
        QpOptions {
            max_send_wr: 4,
            signal_every: 1,
            ..QpOptions::default()
        },
        ConnectOptions::default(),
    );
    let depth = u64::from(pair.a.caps().max_send_wr);
    let target = pair.pd.alloc_shared(64, Access::REMOTE_WRITE).unwrap();
    let at = target.remote().unwrap();
    for i in 0..depth {
        drop(pair.a.write(pair.patterned(16, i as u8), at));
    }
    // The device finishes them; nobody polls their completions.
    anyrdma::sleep(Duration::from_millis(200)).await;
    assert_eq!(pair.a.stats().room_waits, 0);
    let (result, _) = within(
        5,
        "a write into a full queue",
        pair.a.write(pair.patterned(16, 9), at),
    )
    .await;
    result.unwrap_or_else(|e| panic!("{}: the completions were not reaped: {e}", rt.name()));
    let stats = pair.a.stats();
    assert_eq!(stats.room_waits, 1, "{}: {stats:?}", rt.name());
    assert_eq!(stats.sends_posted, depth + 1, "{}: {stats:?}", rt.name());
    assert_eq!(
        stats.bytes_written,
        16 * (depth + 1),
        "{}: {stats:?}",
        rt.name()
    );
    assert_eq!(stats.fences, 0, "{}: every request was signaled", rt.name());

    // Selective signaling (the default): the first of two writes is signaled, the second
    // not; awaited first, the second has nothing signaled after it and posts a fence.
    let pair = Pair::new();
    let target = pair.pd.alloc_shared(64, Access::REMOTE_WRITE).unwrap();
    let at = target.remote().unwrap();
    let first = pair.a.write(pair.patterned(16, 1), at);
    let second = pair.a.write(pair.patterned(16, 2), at);
    let (result, _) = within(5, "the unsignaled write", second).await;
    result.unwrap();
    let (result, _) = within(5, "the signaled write", first).await;
    result.unwrap();
    let stats = pair.a.stats();
    assert_eq!(stats.fences, 1, "{}: {stats:?}", rt.name());
    assert_eq!(
        (stats.sends_posted, stats.sends_completed),
        (3, 3),
        "{}: {stats:?}",
        rt.name()
    );
    assert_eq!(
        stats.bytes_written,
        32,
        "{}: a fence writes nothing",
        rt.name()
    );
}

/// A messenger on each queue pair of `pair`, both with `depth`.
fn messengers(pair: &Pair, depth: usize) -> (Messenger, Messenger) {
    let options = MessengerOptions {
        depth,
        ..MessengerOptions::default()
    };
    let a = Messenger::new(&pair.a, options).expect("messenger a");
    let b = Messenger::new(&pair.b, options).expect("messenger b");
    (a, b)
}

/// Messages and their bytes each way, and the large ones that went by rendezvous.
async fn messages_bytes_and_rendezvous_are_counted(rt: Rt) {
    if !support::device_present("messages_bytes_and_rendezvous_are_counted") {
        return;
    }
    let pair = Pair::new();
    let (a, b) = messengers(&pair, 16);
    let eager = a.eager_limit();
    let small: Vec<usize> = (0..20).map(|i| i * 37 % (eager + 1)).collect();
    let large: Vec<usize> = (1..=3).map(|i| eager + i * 5000).collect();
    let replies: Vec<usize> = (0..5).map(|i| 100 + i).collect();
    let to_b: Vec<usize> = small.iter().chain(&large).copied().collect();
    let receiver = {
        let b = b.clone();
        let expected = to_b.clone();
        let replies = replies.clone();
        rt.spawn(async move {
            for len in expected {
                let message = within(10, "a message to b", b.recv()).await.unwrap();
                assert_eq!(message.data.len(), len);
            }
            for len in replies {
                b.send(&vec![3u8; len]).await.unwrap();
            }
            b.flush().await.unwrap();
        })
    };
    for &len in &to_b {
        within(10, "send", a.send(&vec![7u8; len])).await.unwrap();
    }
    within(10, "flush", a.flush()).await.unwrap();
    for &len in &replies {
        let message = within(10, "a reply", a.recv()).await.unwrap();
        assert_eq!(message.data.len(), len);
    }
    within(10, "the receiver", receiver).await;

    let sum = |lens: &[usize]| lens.iter().sum::<usize>() as u64;
    let sent = a.stats();
    assert_eq!(
        (sent.messages_sent, sent.bytes_sent, sent.rendezvous_sent),
        (to_b.len() as u64, sum(&to_b), large.len() as u64),
        "{}: {sent:?}",
        rt.name()
    );
    assert_eq!(
        (
            sent.messages_received,
            sent.bytes_received,
            sent.rendezvous_received
        ),
        (replies.len() as u64, sum(&replies), 0),
        "{}: {sent:?}",
        rt.name()
    );
    let got = b.stats();
    assert_eq!(
        (
            got.messages_received,
            got.bytes_received,
            got.rendezvous_received
        ),
        (to_b.len() as u64, sum(&to_b), large.len() as u64),
        "{}: {got:?}",
        rt.name()
    );
    assert_eq!(
        (got.messages_sent, got.bytes_sent, got.rendezvous_sent),
        (replies.len() as u64, sum(&replies), 0),
        "{}: {got:?}",
        rt.name()
    );
}

/// A sender whose peer takes nothing waits for credits: one wait, as long as the peer kept
/// the first message.
async fn a_send_without_credit_counts_its_wait(rt: Rt) {
    if !support::device_present("a_send_without_credit_counts_its_wait") {
        return;
    }
    let pair = Pair::new();
    // Depth 2: one message takes the credits a message needs, the next waits for them.
    let (a, b) = messengers(&pair, 2);
    within(5, "first", a.send(b"one")).await.unwrap();
    assert_eq!(a.stats().credit_waits, 0);
    let hold = Duration::from_millis(300);
    let receiver = rt.spawn(async move {
        anyrdma::sleep(hold).await;
        for _ in 0..2 {
            within(5, "receive", b.recv()).await.unwrap();
        }
    });
    within(5, "second", a.send(b"two")).await.unwrap();
    within(5, "the receiver", receiver).await;
    let stats = a.stats();
    assert_eq!(stats.credit_waits, 1, "{}: {stats:?}", rt.name());
    assert!(
        stats.credit_wait >= hold / 2 && stats.credit_wait < Duration::from_secs(5),
        "{}: waited {:?} for a peer that held its message {hold:?}",
        rt.name(),
        stats.credit_wait
    );
}

/// Grants made live and their bytes, grants held, and refusals by reason on both sides.
async fn grants_and_refusals_are_counted(rt: Rt) {
    if !support::device_present("grants_and_refusals_are_counted") {
        return;
    }
    let pair = Pair::new();
    let (a, b) = messengers(&pair, 16);
    let policy = GrantPolicy {
        max_bytes: 1 << 20,
        max_regions: 1,
        rights: Rights::READ | Rights::WRITE,
        max_lease: Some(Duration::from_secs(60)),
        ..GrantPolicy::default()
    };
    let owner = MemorySession::new(
        a,
        SessionOptions {
            policy,
            ..SessionOptions::default()
        },
    );
    let holder = MemorySession::new(b, SessionOptions::default());
    let owner_serve = {
        let owner = owner.clone();
        rt.spawn(async move { owner.serve().await })
    };
    let holder_serve = {
        let holder = holder.clone();
        rt.spawn(async move { holder.serve().await })
    };

    let region = pair.pd.alloc_shared(16384, Access::LOCAL).unwrap();
    let small = owner.grant(&region, ..4096, Rights::READ, None).unwrap();
    let big = owner.grant(&region, 4096.., Rights::WRITE, None).unwrap();
    let held = [
        within(5, "grant", holder.next_grant()).await.unwrap(),
        within(5, "grant", holder.next_grant()).await.unwrap(),
    ];
    let lease = Some(Duration::from_secs(10));
    let long = holder.request_region(64, Rights::READ, Some(Duration::from_secs(3600)));
    match within(5, "a request for too long a lease", long).await {
        Err(Error::RegionRefused { reason }) => assert_eq!(reason, RefuseReason::LeaseTooLong),
        other => panic!("{}: {other:?}", rt.name()),
    }
    let requested = within(
        5,
        "request",
        holder.request_region(8192, Rights::READ, lease),
    )
    .await
    .unwrap();
    let refusals = [
        // The policy's one region is taken now.
        (
            holder.request_region(64, Rights::READ, lease),
            RefuseReason::TooManyRegions,
        ),
        (
            holder.request_region(64, Rights::ATOMIC, lease),
            RefuseReason::AccessNotAllowed,
        ),
    ];
    for (request, reason) in refusals {
        match within(5, "refused request", request).await {
            Err(Error::RegionRefused { reason: got }) => assert_eq!(got, reason),
            other => panic!("{}: {other:?}", rt.name()),
        }
    }

    let refused = Refusals {
        lease_too_long: 1,
        too_many_regions: 1,
        access_not_allowed: 1,
        ..Refusals::default()
    };
    let stats = owner.stats();
    assert_eq!(
        (
            stats.grants_live,
            stats.bytes_live,
            stats.grants_made,
            stats.bytes_granted
        ),
        (3, 16384 + 8192, 3, 16384 + 8192),
        "{}: {stats:?}",
        rt.name()
    );
    assert_eq!(stats.refused, refused, "{}: {stats:?}", rt.name());
    assert_eq!(stats.refused_by_peer, Refusals::default(), "{}", rt.name());
    let stats = holder.stats();
    assert_eq!(stats.grants_held, 3, "{}: {stats:?}", rt.name());
    assert_eq!(stats.refused_by_peer, refused, "{}: {stats:?}", rt.name());
    assert_eq!(
        (stats.grants_made, stats.grants_live),
        (0, 0),
        "{}",
        rt.name()
    );

    // Revoked by the owner: live no more; made stays.
    drop(big);
    let stats = owner.stats();
    assert_eq!(
        (
            stats.grants_live,
            stats.bytes_live,
            stats.grants_made,
            stats.bytes_granted
        ),
        (2, 4096 + 8192, 3, 16384 + 8192),
        "{}: {stats:?}",
        rt.name()
    );
    drop((small, held, requested));
    owner.close();
    holder.close();
    let _ = within(10, "the owner's serve", owner_serve).await;
    let _ = within(10, "the holder's serve", holder_serve).await;
    let stats = owner.stats();
    assert_eq!(
        (stats.grants_live, stats.bytes_live),
        (0, 0),
        "{}: {stats:?}",
        rt.name()
    );
    assert_eq!(holder.stats().grants_held, 0, "{}", rt.name());
}

/// Many tasks posting on one queue pair at once (threads in parallel on a multi-thread
/// runtime): no post and no byte is lost from the counts, and in flight returns to zero.
async fn concurrent_posters_lose_no_count(rt: Rt) {
    if !support::device_present("concurrent_posters_lose_no_count") {
        return;
    }
    const TASKS: u64 = 16;
    const WRITES: u64 = 40;
    let pair = Pair::new();
    let target = pair.pd.alloc_shared(4096, Access::REMOTE_WRITE).unwrap();
    let at = target.remote().unwrap();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let qp = pair.a.clone();
        // A different length per task, so that a lost or doubled byte count shows.
        let buffers: Vec<_> = (0..WRITES)
            .map(|i| pair.patterned(8 * (task as usize + 1), i as u8))
            .collect();
        tasks.push(rt.spawn(async move {
            for buf in buffers {
                let (result, _) = within(10, "write", qp.write(buf, at)).await;
                result.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await;
    }
    let stats = pair.a.stats();
    let bytes: u64 = (0..TASKS).map(|task| 8 * (task + 1) * WRITES).sum();
    // Fences (signaled zero-length writes, as the tails of bursts need) count as sends too.
    assert_eq!(
        (
            stats.sends_posted - stats.fences,
            stats.sends_completed - stats.fences,
            stats.bytes_written
        ),
        (TASKS * WRITES, TASKS * WRITES, bytes),
        "{}: {stats:?}",
        rt.name()
    );
    assert_eq!(stats.in_flight(), 0, "{}", rt.name());
    check_cq_invariants(rt, &pair.cq_a.stats());
}

runtime_tests!(
    every_request_and_byte_is_counted,
    a_busy_queue_never_sleeps,
    failures_and_flushes_are_counted,
    room_waits_and_fences_are_counted,
    messages_bytes_and_rendezvous_are_counted,
    a_send_without_credit_counts_its_wait,
    grants_and_refusals_are_counted,
    concurrent_posters_lose_no_count,
);
