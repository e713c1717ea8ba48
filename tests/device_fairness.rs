//! A task whose operations are always complete when polled still lets the other tasks and
//! timers of its thread run, and a runtime with such a task shuts down promptly.

mod support;

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyrdma::{Access, ConnectOptions, CqOptions, PollMode, QpOptions};
use support::{Pair, Rt};

/// A pair in busy mode on loopback: small writes are usually complete at their first poll.
fn busy_pair() -> Pair {
    Pair::with(
        CqOptions {
            poll_mode: PollMode::Busy,
            ..CqOptions::default()
        },
        QpOptions::default(),
        ConnectOptions::default(),
    )
}

/// Writes 8 bytes in a loop until `stop` is set; returns how many. Each write's completion
/// is taken from the CQ before its future is polled, as on a device fast enough that every
/// operation is complete when first polled: the loop then never waits.
async fn write_loop(pair: &Pair, stop: &AtomicBool) -> u64 {
    let target = pair.pd.alloc_shared(8, Access::REMOTE_WRITE).unwrap();
    let at = target.remote().unwrap();
    let mut buf = pair.patterned(8, 1);
    let mut writes = 0;
    while !stop.load(Ordering::Relaxed) {
        let write = pair.a.write(buf, at);
        let spinning = Instant::now();
        while pair.cq_a.poll_now() == 0 {
            assert!(
                spinning.elapsed() < Duration::from_secs(10),
                "no completion"
            );
        }
        let (result, back) = write.await;
        result.expect("write");
        buf = back;
        writes += 1;
    }
    writes
}

/// Polls both futures in one task, as `join` does, starting with each in turn (as Tokio's
/// `join!` does, so that a future that spends the task's whole budget does not always come
/// first). If the write loop never returned `Pending`, the sleep would never be polled.
async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut out_a, mut out_b) = (None, None);
    let mut a_first = true;
    std::future::poll_fn(|cx| {
        for turn in [a_first, !a_first] {
            if turn && out_a.is_none() {
                if let Poll::Ready(out) = a.as_mut().poll(cx) {
                    out_a = Some(out);
                }
            }
            if !turn && out_b.is_none() {
                if let Poll::Ready(out) = b.as_mut().poll(cx) {
                    out_b = Some(out);
                }
            }
        }
        a_first = !a_first;
        if out_a.is_some() && out_b.is_some() {
            Poll::Ready((out_a.take().unwrap(), out_b.take().unwrap()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// One task: a write loop and a 10 ms sleep. The sleep must end, and the write loop stop
/// with it; without a cooperative budget the join never returns. How late the sleep ends is
/// printed, beside an idle sleep of the same runtime (wall-clock bounds are noise in the
/// emulated guest).
async fn write_loop_does_not_starve_a_timer(rt: Rt) {
    if !support::device_present("write_loop_does_not_starve_a_timer") {
        return;
    }
    let _watchdog = support::watchdog(60, "a write loop beside a sleep");
    let pair = busy_pair();
    let idle = Instant::now();
    rt.handle().sleep(Duration::from_millis(10)).await;
    let idle = idle.elapsed();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let sleeper = async {
        rt.handle().sleep(Duration::from_millis(10)).await;
        let slept = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        slept
    };
    let (writes, slept) = join(write_loop(&pair, &stop), sleeper).await;
    eprintln!(
        "{}: {writes} writes while a 10 ms sleep took {slept:?} (idle: {idle:?})",
        rt.name()
    );
    assert!(writes > 0);
}

runtime_tests!(write_loop_does_not_starve_a_timer);

/// A Tokio runtime whose task loops on writes shuts down promptly when dropped: the task
/// yields at its budget, where the runtime can cancel it.
#[cfg(feature = "tokio")]
#[test]
fn tokio_runtime_with_a_write_loop_drops_promptly() {
    use std::sync::Arc;
    if !support::device_present("tokio_runtime_with_a_write_loop_drops_promptly") {
        return;
    }
    let _watchdog = support::watchdog(60, "a Tokio runtime with a write loop");
    for threads in [None, Some(2)] {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = match threads {
                None => ::tokio::runtime::Builder::new_current_thread(),
                Some(n) => {
                    let mut builder = ::tokio::runtime::Builder::new_multi_thread();
                    builder.worker_threads(n);
                    builder
                }
            }
            .enable_all()
            .build()
            .unwrap();
            let pair = Arc::new(busy_pair());
            let stop = Arc::new(AtomicBool::new(false));
            runtime.block_on(async {
                let (pair, stop) = (pair.clone(), stop.clone());
                ::tokio::spawn(async move { write_loop(&pair, &stop).await });
                ::tokio::time::sleep(Duration::from_millis(100)).await;
            });
            let dropping = Instant::now();
            drop(runtime);
            done_tx.send(dropping.elapsed()).unwrap();
        });
        let took = done_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| {
                panic!(
                    "a Tokio runtime ({threads:?} workers) with a write loop did not drop in 10 s"
                )
            });
        assert!(took < Duration::from_secs(2), "dropping took {took:?}");
    }
}
