//! Many tasks waiting on one completion queue: a completion wakes its own task and, at most,
//! the one task that polls the channel for everyone, not every waiting task.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use anyrdma::{Access, ConnectOptions, CqOptions, PollMode, QpOptions};
use support::{fill, holds_pattern, within, yield_now, Pair, Rt};

/// The immediate that tells a receiving task to stop.
const STOP: u32 = u32::MAX;
const LEN: usize = 32;

/// Counts the polls of a future after its first (the first is the one that finds it not
/// done yet; every later one is a wake-up).
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

/// Wake-ups per completed receive with `tasks` tasks each waiting on a receive of one CQ, and
/// `messages` messages sent to them.
async fn wakeups_per_completion(rt: Rt, tasks: u32, messages: u32) -> f64 {
    let pair = Arc::new(Pair::with(
        CqOptions {
            entries: 4096,
            poll_mode: PollMode::Event { spin: 0 },
        },
        QpOptions {
            max_send_wr: 256,
            max_recv_wr: tasks.max(16),
            ..QpOptions::default()
        },
        ConnectOptions::default(),
    ));
    let wakeups = Arc::new(AtomicU64::new(0));
    // Receives posted and not consumed: the sender sends only while there are some, so it
    // never meets a receiver-not-ready.
    let credits = Arc::new(AtomicI64::new(0));
    let mut receivers = Vec::new();
    for _ in 0..tasks {
        let (pair, wakeups, credits) = (pair.clone(), wakeups.clone(), credits.clone());
        // Posted here, before the sender starts, so that the credits count it.
        let mut receive = Some(pair.b.recv(pair.pd.alloc(LEN, Access::LOCAL).unwrap()));
        credits.fetch_add(1, Ordering::AcqRel);
        receivers.push(rt.spawn(async move {
            let mut received = 0u32;
            loop {
                let op = receive.take().expect("a receive is posted");
                let (result, buf) = Counted {
                    future: op,
                    polled: false,
                    wakeups: &wakeups,
                }
                .await;
                let got = result.expect("receive");
                let seq = got.imm.expect("every message carries its number");
                if seq == STOP {
                    return received;
                }
                assert!(
                    holds_pattern(&buf[..LEN], seq as u8),
                    "message {seq} corrupted"
                );
                received += 1;
                receive = Some(pair.b.recv(buf));
                credits.fetch_add(1, Ordering::AcqRel);
            }
        }));
    }
    let mut in_flight = std::collections::VecDeque::new();
    for seq in (0..messages).chain(std::iter::repeat(STOP).take(tasks as usize)) {
        while credits.load(Ordering::Acquire) <= 0 {
            yield_now().await;
        }
        credits.fetch_sub(1, Ordering::AcqRel);
        let mut buf = pair.pd.alloc(LEN, Access::LOCAL).unwrap();
        fill(&mut buf, seq as u8);
        in_flight.push_back(pair.a.send_with_imm(buf, seq));
        if in_flight.len() >= 128 {
            let (sent, _) = in_flight.pop_front().unwrap().await;
            sent.expect("send");
        }
    }
    for op in in_flight {
        op.await.0.expect("send");
    }
    let mut received = 0;
    for receiver in receivers {
        received += receiver.await;
    }
    assert_eq!(received, messages, "{}: messages lost", rt.name());
    let completions = f64::from(messages + tasks);
    wakeups.load(Ordering::Relaxed) as f64 / completions
}

async fn one_completion_wakes_at_most_two_tasks(rt: Rt) {
    if !support::device_present("one_completion_wakes_at_most_two_tasks") {
        return;
    }
    for (tasks, messages) in [(1, 2_000), (100, 2_000), (1000, 10_000)] {
        let per_completion = within(
            300,
            "messages to waiting tasks",
            wakeups_per_completion(rt, tasks, messages),
        )
        .await;
        eprintln!(
            "{}: {tasks} waiting tasks: {per_completion:.3} wake-ups per completion",
            rt.name()
        );
        assert!(
            per_completion <= 2.0,
            "{}: {tasks} waiting tasks: {per_completion:.2} wake-ups per completion",
            rt.name()
        );
    }
}

runtime_tests!(one_completion_wakes_at_most_two_tasks);
