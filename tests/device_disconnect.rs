//! The end of a connection as the surviving side sees it: what completed before the peer
//! disconnected is delivered, not lost with the queue pair's teardown.
//!
//! Runs on rxe0's address in the guest, 169.254.77.1 (`ANYRDMA_TEST_CM_ADDR` overrides it).
//! Soft-RoCE leaves a queue pair's completions in its CQ when the queue pair is reset, where
//! mlx5 removes them: these tests turn on the library's emulation of mlx5
//! (`QueuePair::emulate_cq_clean_on_reset`), process-wide, which is why they have a binary of
//! their own.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyrdma::cm::{Connection, ConnectionOptions, ConnectionResources, Listener};
use anyrdma::{Access, CompletionQueue, Context, CqOptions, MessageKind, PollMode, QueuePair};
use support::{fill, holds_pattern, within, Rt};

/// Messages the client sends before it disconnects.
const MESSAGES: usize = 4;
const MESSAGE_LEN: usize = 512;

fn ip() -> IpAddr {
    std::env::var("ANYRDMA_TEST_CM_ADDR")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(IpAddr::from([169, 254, 77, 1]))
}

/// A protection domain and a completion queue of their own, for one side of a connection:
/// each side polls only its own CQ, so that one side's completions wait unpolled while the
/// other side works. Event mode without spinning: a poll takes only what is there.
fn own_resources(ctx: &Context) -> ConnectionResources {
    let pd = ctx.alloc_pd().expect("pd");
    let options = CqOptions {
        poll_mode: PollMode::Event { spin: 0 },
        ..CqOptions::default()
    };
    let cq = CompletionQueue::new(ctx, options).expect("cq");
    ConnectionResources {
        pd,
        send_cq: cq.clone(),
        recv_cq: cq,
    }
}

fn with_resources(resources: &ConnectionResources) -> ConnectionOptions {
    ConnectionOptions {
        resources: Some(resources.clone()),
        ..ConnectionOptions::default()
    }
}

/// Reads `ctx`'s events (which reads the connection manager's channels of its connections)
/// until `conn` has seen its end, without polling any completion queue; up to 10 s.
async fn until_disconnected(ctx: &Context, conn: &Connection, what: &str) {
    within(10, what, async {
        while !conn.is_disconnected() {
            let _ = anyrdma::timeout(Duration::from_millis(20), ctx.next_event()).await;
        }
    })
    .await;
}

/// Messages that arrived and a send that completed before the peer disconnected, not yet
/// polled when the disconnect is read, are delivered intact afterwards; the receive still
/// posted then ends with the disconnect. Run with the CQ cleaning of mlx5 emulated: there,
/// a queue pair reset before its completions are taken loses them.
async fn completions_before_a_disconnect_are_delivered(rt: Rt) {
    if !support::device_present("completions_before_a_disconnect_are_delivered") {
        return;
    }
    QueuePair::emulate_cq_clean_on_reset(true);
    let ctx = Context::open("rxe0").expect("open rxe0");
    let (server_side, client_side) = (own_resources(&ctx), own_resources(&ctx));
    let listener = Listener::bind(SocketAddr::new(ip(), 0)).expect("bind");
    let addr = listener.local_addr();
    let server_options = with_resources(&server_side);
    let server_pd = server_side.pd.clone();
    let accepting = rt.spawn(async move {
        let incoming = listener.incoming().await.expect("incoming");
        // One receive more than the client sends: it is pending when the client goes.
        incoming
            .accept_and(server_options, |qp| {
                (0..=MESSAGES)
                    .map(|_| qp.recv(server_pd.alloc(MESSAGE_LEN, Access::LOCAL).unwrap()))
                    .collect::<Vec<_>>()
            })
            .await
            .expect("accept")
    });
    let client = within(
        15,
        "connect",
        Connection::connect(addr, with_resources(&client_side)),
    )
    .await
    .expect("connect");
    let (server, receives) = within(15, "accept", accepting).await;

    // The server's send is posted (when it is made) and left alone, unpolled; the client's
    // receive of it completes, so the send's completion waits in the server's CQ.
    let inbox = client.recv(client.pd().alloc(MESSAGE_LEN, Access::LOCAL).unwrap());
    let mut reply = server_side.pd.alloc(MESSAGE_LEN, Access::LOCAL).unwrap();
    fill(&mut reply, 200);
    let sending = server.send(reply);
    let (received, inbox) = within(10, "the server's message", inbox).await;
    assert_eq!(received.expect("the server's message").len, MESSAGE_LEN);
    assert!(holds_pattern(&inbox, 200));

    // The client's messages land in the server's receives; nobody polls the server's CQ.
    for i in 0..MESSAGES {
        let mut message = client.pd().alloc(MESSAGE_LEN, Access::LOCAL).unwrap();
        fill(&mut message, i as u8);
        let (sent, _) = within(10, "a client's send", client.send(message)).await;
        sent.unwrap_or_else(|err| panic!("send {i}: {err}"));
    }
    within(10, "the client's close", client.close())
        .await
        .expect("close");
    until_disconnected(&ctx, &server, "the server seeing the disconnect").await;

    let mut receives = receives.into_iter();
    for i in 0..MESSAGES {
        let receive = receives.next().unwrap();
        let (received, buf) = within(10, "a receive of before the disconnect", receive).await;
        let received = received.unwrap_or_else(|err| {
            panic!(
                "{}: message {i}, received before the peer disconnected, was lost: {err}",
                rt.name()
            )
        });
        assert_eq!(
            (received.len, received.kind),
            (MESSAGE_LEN, MessageKind::Send)
        );
        assert!(holds_pattern(&buf, i as u8), "message {i}: bytes differ");
    }
    let (last, _) = within(10, "the receive still posted", receives.next().unwrap()).await;
    let err = last.expect_err("nothing was sent for the last receive");
    assert!(err.is_disconnect(), "the last receive ended with {err}");
    let (sent, _) = within(10, "the server's send", sending).await;
    sent.unwrap_or_else(|err| {
        panic!(
            "{}: the server's send, completed before the disconnect, is reported as {err}",
            rt.name()
        )
    });
}

runtime_tests!(completions_before_a_disconnect_are_delivered,);
