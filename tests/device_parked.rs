//! An operation's future that was polled and then kept aside unpolled (the losing branch of
//! a `select!` kept for later, a call given up after a poll) never holds up the other
//! operations of its completion queue: no operation waits on another task's polling.

mod support;

use std::task::{Context, Poll, Waker};

use anyrdma::Access;
use support::{within, HandPolled, Rt, SharedCqPairs};

/// Round trips of the ping-pong beside the parked operation: 1,000 operations (a send and a
/// receive each) on the shared CQ.
const ROUND_TRIPS: u64 = 500;

/// A task on `a[1]` (the shared CQ) exchanging `ROUND_TRIPS` numbered messages with an echo
/// task on `b[1]`, within a time limit; `what` says what else is going on. Each receive is
/// polled before its message is sent, so its completion comes while its task sleeps.
async fn ping_pong_beside(rt: Rt, pairs: &SharedCqPairs, what: &str) {
    let (client, echo) = (pairs.a[1].clone(), pairs.b[1].clone());
    let pd = pairs.pd.clone();
    let alloc = move || pd.alloc(8, Access::LOCAL).expect("alloc");
    let echo_alloc = alloc.clone();
    // Its next receive is always posted before it sends back: the client never meets RNR.
    let echo_task = rt.spawn(async move {
        let mut next = echo.recv(echo_alloc());
        for round in 0..ROUND_TRIPS {
            let (result, buf) = next.await;
            let received = result.unwrap_or_else(|e| panic!("echo's receive {round}: {e}"));
            assert_eq!(received.len, 8);
            next = echo.recv(echo_alloc());
            let (result, _) = echo.send(buf).await;
            result.unwrap_or_else(|e| panic!("echo's send {round}: {e}"));
        }
    });
    let client_task = rt.spawn(async move {
        for round in 0..ROUND_TRIPS {
            let reply = client.recv(alloc());
            let mut buf = alloc();
            buf.copy_from_slice(&round.to_le_bytes());
            let (result, _) = client.send(buf).await;
            result.unwrap_or_else(|e| panic!("send {round}: {e}"));
            let (result, buf) = reply.await;
            result.unwrap_or_else(|e| panic!("reply {round}: {e}"));
            assert_eq!(buf[..8], round.to_le_bytes(), "reply {round}");
        }
    });
    within(30, what, async {
        client_task.await;
        echo_task.await;
    })
    .await;
}

/// Sends `message` from `b[0]` to the receive posted on `a[0]`, and waits for the send.
async fn send_to_parked(pairs: &SharedCqPairs, message: &[u8]) {
    let mut buf = pairs.pd.alloc(message.len(), Access::LOCAL).expect("alloc");
    buf.copy_from_slice(message);
    let (result, _) = within(20, "the send to the parked receive", pairs.b[0].send(buf)).await;
    result.expect("send to the parked receive");
}

/// A receive polled once and then parked (kept, never polled, never dropped) while 1,000
/// operations of other tasks complete on the same CQ; the receive is woken by its own
/// completion only, and yields its message when polled at last.
async fn a_parked_receive_never_stalls_its_cq(rt: Rt) {
    if !support::device_present("a_parked_receive_never_stalls_its_cq") {
        return;
    }
    let pairs = SharedCqPairs::new();
    let mut parked =
        HandPolled::new(pairs.a[0].recv(pairs.pd.alloc(64, Access::LOCAL).expect("alloc")));
    assert!(parked.poll().is_pending(), "nothing was sent yet");

    ping_pong_beside(
        rt,
        &pairs,
        "1,000 operations of other tasks while a polled receive is parked on their CQ",
    )
    .await;
    assert_eq!(
        parked.woken(),
        0,
        "the parked receive was woken by completions that were not its own"
    );

    send_to_parked(&pairs, b"for the parked receive").await;
    parked
        .until_woken(|| "the parked receive's message came, but it was never woken".into())
        .await;
    let Poll::Ready((result, buf)) = parked.poll() else {
        panic!("woken for its completion, but still pending");
    };
    let received = result.expect("the parked receive");
    assert_eq!(&buf[..received.len], b"for the parked receive");
    assert_eq!(pairs.shared.in_flight(), 0);
}

/// A waker that wakes nothing.
struct Idle;

impl std::task::Wake for Idle {
    fn wake(self: std::sync::Arc<Self>) {}
}

/// Spends what is left of the task's cooperative budget in this poll, so that the next
/// operation polled in it is refused by the budget check (and registers nothing).
fn spend_budget(rt: Rt, cx: &mut Context<'_>) {
    let idle_waker = Waker::from(std::sync::Arc::new(Idle));
    let mut idle = Context::from_waker(&idle_waker);
    match rt {
        Rt::Tokio | Rt::TokioCurrentThread => {
            while let Poll::Ready(progress) = ::tokio::task::coop::poll_proceed(&mut idle) {
                progress.made_progress();
            }
        }
        Rt::AsyncStd | Rt::Smol => {
            // The thread's count of operation polls: run it to its yield, then to one short
            // of the next.
            while anyrdma::runtime::budget::poll_yield_now_and_then(&mut idle).is_ready() {}
            for _ in 1..anyrdma::runtime::budget::POLLS_PER_YIELD {
                assert!(anyrdma::runtime::budget::poll_yield_now_and_then(&mut idle).is_ready());
            }
        }
    }
    // The task itself yields after this poll (Tokio's refusal woke the idle waker only).
    cx.waker().wake_by_ref();
}

/// Issue 22, defect 15: a receive polled (and registered) by one task, then polled by
/// another whose budget is spent (refused before it registers anything), after which both
/// give it up without dropping it, as a messenger call that is dropped leaves its
/// operations to the next call. Nothing is stalled: 1,000 operations of other tasks on the CQ
/// complete, and a third task that polls the receive later gets its message.
async fn an_operation_refused_by_the_budget_and_left_stalls_nothing(rt: Rt) {
    if !support::device_present("an_operation_refused_by_the_budget_and_left_stalls_nothing") {
        return;
    }
    let pairs = SharedCqPairs::new();
    let recv = pairs.a[0].recv(pairs.pd.alloc(64, Access::LOCAL).expect("alloc"));
    let mut first = HandPolled::new(recv);
    assert!(first.poll().is_pending(), "nothing was sent yet");
    // The second task: its budget spent, its poll is refused; then it leaves.
    let mut refused = false;
    std::future::poll_fn(|cx| {
        spend_budget(rt, cx);
        refused = first.poll().is_pending();
        Poll::Ready(())
    })
    .await;
    assert!(refused, "a poll with the budget spent returns Pending");

    ping_pong_beside(
        rt,
        &pairs,
        "1,000 operations of other tasks after a task whose poll the budget refused left",
    )
    .await;

    send_to_parked(&pairs, b"for whoever polls next").await;
    // A third task polls the receive now and then until it ends.
    let (result, buf) = within(20, "the receive, polled by a third task", async {
        loop {
            if let Poll::Ready(done) = first.poll() {
                break done;
            }
            anyrdma::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let received = result.expect("the receive");
    assert_eq!(&buf[..received.len], b"for whoever polls next");
    assert_eq!(pairs.shared.in_flight(), 0);
}

runtime_tests!(
    a_parked_receive_never_stalls_its_cq,
    an_operation_refused_by_the_budget_and_left_stalls_nothing
);
