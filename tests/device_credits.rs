//! Queue depth and credits tell the truth: `QueueFull` only when the queue is full after
//! every waiting completion was taken, a message that names the queue, a batch that can never
//! fit refused at once, and a completion queue that never overruns.

mod support;

use std::time::Duration;

use anyrdma::{
    Access, CompletionQueue, ConnectOptions, Context, CqOptions, Error, PollMode, QpOptions,
    QueuePair,
};
use support::{holds_pattern, within, Pair, Rt};

/// Operations whose futures were dropped leave completions that nobody polls. Before, they
/// kept the CQ "full" forever; now a new operation reaps them and goes through.
async fn dropped_operations_do_not_keep_the_queue_full(rt: Rt) {
    if !support::device_present("dropped_operations_do_not_keep_the_queue_full") {
        return;
    }
    let pair = Pair::with(
        CqOptions {
            entries: 4,
            ..CqOptions::default()
        },
        QpOptions::default(),
        ConnectOptions::default(),
    );
    let target = pair.pd.alloc_shared(64, Access::REMOTE_WRITE).unwrap();
    let at = target.remote().unwrap();
    let room = pair.cq_a.entries() as usize;
    for i in 0..room + 3 {
        drop(pair.a.write(pair.patterned(64, i as u8), at));
    }
    // Let the device finish them all.
    anyrdma::sleep(Duration::from_millis(100)).await;
    let (result, buf) = within(
        5,
        "write after drops",
        pair.a.write(pair.patterned(64, 99), at),
    )
    .await;
    result.unwrap_or_else(|e| {
        panic!(
            "{}: completions of dropped operations were not reaped: {e}",
            rt.name()
        )
    });
    assert!(holds_pattern(&buf, 99));
    assert!(
        holds_pattern(&target.to_vec(..).unwrap(), 99),
        "{}: the write did not land",
        rt.name()
    );
    assert_eq!(pair.cq_a.in_flight(), 0, "{}: slots left behind", rt.name());
}

/// More work in one post than a queue can ever hold is refused at once, with the buffers
/// back and a message that says which queue and what to do.
async fn batch_longer_than_the_queue_is_refused_at_once(rt: Rt) {
    if !support::device_present("batch_longer_than_the_queue_is_refused_at_once") {
        return;
    }
    let pair = Pair::with(
        CqOptions {
            entries: 256,
            ..CqOptions::default()
        },
        QpOptions {
            max_send_wr: 8,
            ..QpOptions::default()
        },
        ConnectOptions::default(),
    );
    let depth = pair.a.caps().max_send_wr;
    let target = pair.pd.alloc_shared(64, Access::REMOTE_WRITE).unwrap();
    let at = target.remote().unwrap();
    let mut batch = pair.a.batch();
    for i in 0..=depth {
        batch = batch.write(pair.patterned(8, i as u8), at);
    }
    let (result, buffers) = within(5, "oversized batch", batch.submit()).await;
    let err = result.expect_err("a batch longer than the send queue cannot be posted");
    assert!(
        matches!(err, Error::TooManyRequests { requests, queue: "send queue", depth: d } if requests == depth + 1 && d == depth),
        "{}: {err:?}",
        rt.name()
    );
    assert!(err.to_string().contains("split the batch"), "{err}");
    assert_eq!(buffers.len(), depth as usize + 1, "the buffers come back");
    // The queue pair is unharmed.
    let (result, _) = within(5, "write", pair.a.write(pair.patterned(8, 1), at)).await;
    result.unwrap();
}

/// Four queue pairs share a completion queue far smaller than the work they post at once:
/// every operation completes with its data intact or is refused with `QueueFull` naming a
/// queue; none hangs (an overrun CQ loses completions, and their futures would).
async fn small_cq_shared_by_many_queue_pairs_never_overruns(rt: Rt) {
    if !support::device_present("small_cq_shared_by_many_queue_pairs_never_overruns") {
        return;
    }
    let ctx = Context::open_default().unwrap();
    let pd = ctx.alloc_pd().unwrap();
    let small = CompletionQueue::new(
        &ctx,
        CqOptions {
            entries: 16,
            poll_mode: PollMode::Event { spin: 0 },
        },
    )
    .unwrap();
    let peer_cq = CompletionQueue::new(&ctx, CqOptions::default()).unwrap();
    let options = QpOptions {
        max_send_wr: 32,
        ..QpOptions::default()
    };
    let mut tasks = Vec::new();
    for q in 0..4u8 {
        let qp = QueuePair::new(&pd, &small, &small, options).unwrap();
        let peer = QueuePair::new(&pd, &peer_cq, &peer_cq, options).unwrap();
        qp.connect(&peer.endpoint(), ConnectOptions::default())
            .unwrap();
        peer.connect(&qp.endpoint(), ConnectOptions::default())
            .unwrap();
        let pd = pd.clone();
        tasks.push(rt.spawn(async move {
            let target = pd.alloc_shared(32 * 64, Access::REMOTE_WRITE).unwrap();
            let at = target.remote().unwrap();
            let (mut done, mut refused) = (0, 0);
            for round in 0..10u8 {
                let ops: Vec<_> = (0..24u64)
                    .map(|i| {
                        let seed = q.wrapping_mul(31) ^ round ^ i as u8;
                        let mut buf = pd.alloc(64, Access::LOCAL).unwrap();
                        support::fill(&mut buf, seed);
                        (
                            seed,
                            i,
                            qp.write(buf, at.slice(i * 64..(i + 1) * 64).unwrap()),
                        )
                    })
                    .collect();
                for (seed, i, op) in ops {
                    let (result, buf) = op.await;
                    match result {
                        Ok(()) => {
                            assert!(holds_pattern(&buf, seed));
                            let landed = target
                                .to_vec((i * 64) as usize..((i + 1) * 64) as usize)
                                .unwrap();
                            assert!(holds_pattern(&landed, seed), "QP {q}: write {i} corrupted");
                            done += 1;
                        }
                        Err(Error::QueueFull { queue, .. }) => {
                            assert!(
                                ["completion queue", "send queue"].contains(&queue),
                                "{queue}"
                            );
                            refused += 1;
                        }
                        Err(other) => panic!("QP {q}: {other}"),
                    }
                }
            }
            drop(peer);
            (done, refused)
        }));
    }
    let mut done = 0;
    let mut refused = 0;
    for task in tasks {
        let (d, r) = within(60, "a queue pair's rounds", task).await;
        done += d;
        refused += r;
    }
    assert!(done > 0, "{}: nothing completed", rt.name());
    assert_eq!(done + refused, 4 * 10 * 24);
    assert_eq!(small.in_flight(), 0, "{}: slots left behind", rt.name());
}

runtime_tests!(
    dropped_operations_do_not_keep_the_queue_full,
    batch_longer_than_the_queue_is_refused_at_once,
    small_cq_shared_by_many_queue_pairs_never_overruns,
);
