//! Tearing a queue pair down loses nothing it already received.
//!
//! A queue pair attached to a shared receive queue is dropped while a message it received
//! still sits, unpolled, in the SRQ's completion queue. The receive future must still
//! resolve with the message's bytes: the queue pair is moved to the error state, drained,
//! and destroyed only once the device reports that it takes no more receives from the SRQ
//! (on mlx5, destroying it earlier would drop that completion and give the receive back to
//! the SRQ without one; Soft-RoCE sends no such event, so there the queue pair is destroyed
//! a second later). Nothing stays behind: no posted receive, no slot, no retiring queue pair.

mod support;

use std::time::Duration;

use anyrdma::{
    timeout, Access, CompletionQueue, ConnectOptions, Context, CqOptions, MessageKind, QpOptions,
    QueuePair, SharedReceiveQueue, SrqOptions,
};
use support::{fill, holds_pattern, within, Rt};

const LEN: usize = 300;

async fn message_received_before_drop_is_delivered(rt: Rt) {
    if !support::device_present("message_received_before_drop_is_delivered") {
        return;
    }
    let ctx = &Context::open_default().unwrap().with_runtime(rt.handle());
    let pd = &ctx.alloc_pd().unwrap();
    let cq = CompletionQueue::new(ctx, CqOptions::default()).unwrap();
    let srq_cq = CompletionQueue::new(ctx, CqOptions::default()).unwrap();
    let srq = SharedReceiveQueue::new(pd, &srq_cq, SrqOptions::default()).unwrap();
    // `y` sends; `x` takes its receives from the SRQ.
    let x = QueuePair::with_srq(pd, &cq, &srq, QpOptions::default()).unwrap();
    let y = QueuePair::new(pd, &cq, &cq, QpOptions::default()).unwrap();
    y.connect(&x.endpoint(), ConnectOptions::default()).unwrap();
    x.connect(&y.endpoint(), ConnectOptions::default()).unwrap();
    let mut message = pd.alloc(LEN, Access::LOCAL).unwrap();
    fill(&mut message, 9);

    let inbox = srq.recv(pd.alloc(LEN, Access::LOCAL).unwrap());
    let (sent, _) = within(5, "the send to x", y.send_with_imm(message, 77)).await;
    sent.expect("send to x");
    // The send completed: x acknowledged the message, whose receive completion now waits in
    // the SRQ's CQ, unpolled (nothing polled `inbox`).
    assert_eq!(srq_cq.in_flight(), 1);
    drop(x);

    let (received, buf) = within(5, "the receive of the dropped QP's message", inbox).await;
    let received = received.expect("the message x received before it was dropped");
    assert_eq!(received.len, LEN);
    assert_eq!(received.imm, Some(77));
    assert_eq!(received.kind, MessageKind::SendWithImm);
    assert!(
        holds_pattern(&buf[..LEN], 9),
        "{}: message corrupted",
        rt.name()
    );

    // The device reports x's last receive (or, on Soft-RoCE, a second passes); whoever reads
    // events then destroys it.
    within(5, "x to be destroyed", async {
        while srq.retiring() > 0 {
            let _ = timeout(Duration::from_millis(10), ctx.next_event()).await;
        }
    })
    .await;
    assert_eq!(srq.posted(), 0, "{}: a receive credit leaked", rt.name());
    assert_eq!(srq_cq.in_flight(), 0, "{}: a slot leaked", rt.name());
    assert_eq!(cq.in_flight(), 0, "{}: a slot leaked", rt.name());
}

runtime_tests!(message_received_before_drop_is_delivered);
