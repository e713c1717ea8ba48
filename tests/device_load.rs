//! Many operations on one queue pair at once, as a fast NIC sees them: 64 writes joined in one
//! task, and 64 tasks writing on one queue pair, in event and in busy mode. Every write must
//! resolve with its bytes in place, no task may be left waiting, and nothing may stay
//! registered or in flight afterwards.
//!
//! The emulated device completes requests one at a time; the joined writes are therefore
//! posted, polled once, and left while the thread sleeps, so that completions pile up and one
//! poll of the queue finds many of them (and their covered, unsignaled predecessors).

// SERIAL is held for a whole test, across its awaits, on purpose: each test runs on its own
// runtime, and the lock only keeps the tests of this binary from running at the same time.
#![allow(clippy::await_holding_lock)]

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyrdma::{registered_regions, Access, ConnectOptions, CqOptions, PollMode, QpOptions};
use support::{holds_pattern, within, Rt};

/// The leak checks read a process-wide counter: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const WRITERS: usize = 64;
const SLOT_LEN: usize = 1024;

fn modes() -> [(&'static str, PollMode); 2] {
    [
        ("event", PollMode::Event { spin: 0 }),
        ("busy", PollMode::Busy),
    ]
}

/// A connected pair whose send queue holds all the writers' requests at once.
fn pair(mode: PollMode) -> support::Pair {
    support::Pair::with(
        CqOptions {
            poll_mode: mode,
            ..CqOptions::default()
        },
        QpOptions {
            max_send_wr: 2 * WRITERS as u32,
            ..QpOptions::default()
        },
        ConnectOptions::default(),
    )
}

/// After a mode's writes: nothing in flight on the writer's CQ, and its queue pair healthy.
fn assert_settled(pair: &support::Pair, mode_name: &str) {
    assert_eq!(
        pair.cq_a.in_flight(),
        0,
        "{mode_name}: operations in flight"
    );
    assert!(
        pair.a.failure().is_none(),
        "{mode_name}: the queue pair failed"
    );
}

/// Polls every future of a list until all are ready, in one task; yields their outputs in
/// order.
struct JoinAll<F: Future> {
    futures: Vec<Option<Pin<Box<F>>>>,
    outputs: Vec<Option<F::Output>>,
}

impl<F: Future> JoinAll<F> {
    fn new(futures: impl IntoIterator<Item = F>) -> Self {
        let futures: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
        let outputs = futures.iter().map(|_| None).collect();
        JoinAll { futures, outputs }
    }
}

impl<F: Future> Future for JoinAll<F>
where
    F::Output: Unpin,
{
    type Output = Vec<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut pending = false;
        for (slot, output) in this.futures.iter_mut().zip(&mut this.outputs) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(out) => {
                        *output = Some(out);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return Poll::Pending;
        }
        Poll::Ready(this.outputs.iter_mut().map(|o| o.take().unwrap()).collect())
    }
}

/// A waker that does nothing: the first poll of the joined writes is by hand.
struct Unwoken;

impl std::task::Wake for Unwoken {
    fn wake(self: Arc<Self>) {}
}

/// 64 writes posted back to back and joined in one task: polled once, then the thread
/// sleeps so that their completions pile up, then awaited together. Each resolves with its
/// own bytes in place. 20 rounds, event and busy mode.
async fn sixty_four_writes_joined_in_one_task(rt: Rt) {
    if !support::device_present("sixty_four_writes_joined_in_one_task") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let baseline = registered_regions();
    for (mode_name, mode) in modes() {
        let pair = pair(mode);
        let target = pair
            .pd
            .alloc_shared(WRITERS * SLOT_LEN, Access::REMOTE_WRITE)
            .unwrap();
        let remote = target.remote().unwrap();
        for round in 0..20u8 {
            let writes = (0..WRITERS).map(|slot| {
                let at = (slot * SLOT_LEN) as u64;
                let seed = round.wrapping_mul(WRITERS as u8).wrapping_add(slot as u8);
                pair.a.write(
                    pair.patterned(SLOT_LEN, seed),
                    remote.slice(at..at + SLOT_LEN as u64).unwrap(),
                )
            });
            let mut joined = JoinAll::new(writes);
            // One poll posts nothing more (they are posted already) but registers every
            // waker; then completions pile up while this thread does not poll.
            let waker = std::task::Waker::from(Arc::new(Unwoken));
            let results = match Pin::new(&mut joined).poll(&mut Context::from_waker(&waker)) {
                Poll::Ready(results) => results,
                Poll::Pending => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    within(30, "64 joined writes", joined).await
                }
            };
            for (slot, (result, buf)) in results.into_iter().enumerate() {
                let seed = round.wrapping_mul(WRITERS as u8).wrapping_add(slot as u8);
                result.unwrap_or_else(|e| {
                    panic!(
                        "{} {mode_name}: round {round}: write {slot}: {e}",
                        rt.name()
                    )
                });
                assert!(holds_pattern(&buf, seed), "write {slot}'s buffer changed");
                let landed = target
                    .to_vec(slot * SLOT_LEN..(slot + 1) * SLOT_LEN)
                    .unwrap();
                assert!(
                    holds_pattern(&landed, seed),
                    "{} {mode_name}: round {round}: write {slot} resolved without its bytes",
                    rt.name()
                );
            }
        }
        assert_settled(&pair, mode_name);
    }
    assert_eq!(
        registered_regions(),
        baseline,
        "{}: registrations leaked",
        rt.name()
    );
}

/// 64 tasks, each writing 30 times into its own slot of one target through one queue pair
/// (so the queue pair is busy, and most requests go unsignaled): every write resolves with its
/// bytes in place, in event and in busy mode.
async fn sixty_four_tasks_writing_on_one_queue_pair(rt: Rt) {
    if !support::device_present("sixty_four_tasks_writing_on_one_queue_pair") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    const ROUNDS: u8 = 30;
    let baseline = registered_regions();
    for (mode_name, mode) in modes() {
        let pair = Arc::new(pair(mode));
        let target = Arc::new(
            pair.pd
                .alloc_shared(WRITERS * SLOT_LEN, Access::REMOTE_WRITE)
                .unwrap(),
        );
        let remote = target.remote().unwrap();
        let tasks: Vec<_> = (0..WRITERS)
            .map(|slot| {
                let (pair, target) = (pair.clone(), target.clone());
                let at = (slot * SLOT_LEN) as u64;
                let to = remote.slice(at..at + SLOT_LEN as u64).unwrap();
                rt.spawn(async move {
                    for round in 0..ROUNDS {
                        let seed = round.wrapping_mul(WRITERS as u8).wrapping_add(slot as u8);
                        let (result, _) = pair.a.write(pair.patterned(SLOT_LEN, seed), to).await;
                        result.unwrap_or_else(|e| panic!("write {slot} round {round}: {e}"));
                        let landed = target
                            .to_vec(slot * SLOT_LEN..(slot + 1) * SLOT_LEN)
                            .unwrap();
                        assert!(
                            holds_pattern(&landed, seed),
                            "write {slot} round {round} resolved without its bytes"
                        );
                    }
                })
            })
            .collect();
        for task in tasks {
            within(120, &format!("{} {mode_name}: a writer", rt.name()), task).await;
        }
        assert_settled(&pair, mode_name);
    }
    assert_eq!(
        registered_regions(),
        baseline,
        "{}: registrations leaked",
        rt.name()
    );
}

runtime_tests!(
    sixty_four_writes_joined_in_one_task,
    sixty_four_tasks_writing_on_one_queue_pair,
);
