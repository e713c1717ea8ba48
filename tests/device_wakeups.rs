//! Many tasks waiting on one completion queue: a completion wakes its own task and, at most,
//! the one task that polls the channel for everyone, not every waiting task.

mod support;

#[path = "../benches/common/wakeup_count.rs"]
mod wakeup_count;

use std::sync::Arc;

use anyrdma::{ConnectOptions, CqOptions, PollMode, QpOptions};
use support::{within, Pair, Rt};

/// Wake-ups per completed receive with `tasks` tasks each waiting on a receive of `b`'s CQ,
/// and `messages` messages sent to them by `a`.
async fn wakeups_per_completion(rt: Rt, tasks: u32, messages: u32) -> f64 {
    let pair = Pair::with(
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
    );
    let receiver = Arc::new(pair.b.clone());
    wakeup_count::wakeups_per_completion(&pair.pd, &pair.a, receiver, tasks, messages, |task| {
        rt.spawn(task)
    })
    .await
    .unwrap_or_else(|e| panic!("{}: {e}", rt.name()))
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
