//! Messengers under load from both sides at once: 16 connections to one listener, each side of
//! each sending eager (4 KiB) and rendezvous (1 MiB) messages to the other while receiving.
//! Every message must arrive once, intact and in order, and every side must finish: a credit
//! protocol in which both peers can end owing each other with nothing left to send with
//! deadlocks here.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyrdma::cm::{ConnectionOptions, Listener};
use anyrdma::msg::{Messenger, MessengerOptions};
use support::{within, Rt};

const CONNECTIONS: usize = 16;
/// Messages each side sends on each connection: alternately 4 KiB and 1 MiB.
const EACH: u64 = 8;

fn size(i: u64) -> usize {
    if i % 2 == 0 {
        4096
    } else {
        1 << 20
    }
}

/// The messages of one side: message `i` starts with its number, and its bytes depend on `i`
/// and on the side. Made once: checking 1 MiB messages byte by byte is cheap, making them is
/// not (in a debug build on the emulated guest).
fn messages(side: u8) -> Vec<Vec<u8>> {
    (0..EACH)
        .map(|i| {
            let mut bytes: Vec<u8> = (0..size(i))
                .map(|at| (at as u64 ^ (i * 131 + u64::from(side) * 17)) as u8)
                .collect();
            bytes[..8].copy_from_slice(&i.to_le_bytes());
            bytes
        })
        .collect()
}

/// Sends the messages of `side` and receives the other side's, at once, on one messenger;
/// returns the messenger when both are done (and the peer has everything), to be kept until
/// every side is done: a side that dropped its messenger at once would end the connection
/// before its last acknowledgements reached the peer, whose `flush` would then fail.
async fn exchange(
    rt: Rt,
    messenger: Messenger,
    side: u8,
    all: Arc<[Vec<Vec<u8>>; 2]>,
    what: String,
) -> Messenger {
    let sender = {
        let (messenger, all, what) = (messenger.clone(), all.clone(), what.clone());
        rt.spawn(async move {
            for (i, message) in all[usize::from(side)].iter().enumerate() {
                messenger
                    .send(message)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: send {i}: {e}"));
            }
            messenger
                .flush()
                .await
                .unwrap_or_else(|e| panic!("{what}: flush: {e}"));
        })
    };
    for (i, expected) in all[usize::from(1 - side)].iter().enumerate() {
        let got = messenger
            .recv()
            .await
            .unwrap_or_else(|e| panic!("{what}: receive {i}: {e}"));
        assert!(
            got.data[..] == expected[..],
            "{what}: message {i} of the peer is not intact or out of order"
        );
    }
    sender.await;
    messenger
}

/// 16 connections, all established first; then both sides of each send 4 KiB and 1 MiB
/// messages to the other at once, while receiving.
async fn sixteen_messengers_send_both_ways_at_once(rt: Rt) {
    if !support::device_present("sixteen_messengers_send_both_ways_at_once") {
        return;
    }
    let all = Arc::new([messages(0), messages(1)]);
    let listener = Listener::bind(SocketAddr::from(([169, 254, 77, 1], 0))).expect("bind");
    let addr = listener.local_addr();
    let options = MessengerOptions::default();
    let connection = ConnectionOptions {
        connect_timeout: Duration::from_secs(30),
        ..ConnectionOptions::default()
    };
    let server_connection = connection.clone();
    let server = rt.spawn(async move {
        let mut accepted = Vec::new();
        for _ in 0..CONNECTIONS {
            let incoming = listener.incoming().await.expect("incoming");
            let connection = server_connection.clone();
            accepted.push(rt.spawn(async move {
                Messenger::accept(incoming, connection, options)
                    .await
                    .expect("accept")
            }));
        }
        let mut messengers = Vec::new();
        for messenger in accepted {
            messengers.push(messenger.await);
        }
        messengers
    });
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|n| {
            let connection = connection.clone();
            rt.spawn(async move {
                Messenger::connect(addr, connection, options)
                    .await
                    .unwrap_or_else(|err| panic!("client {n}: {err}"))
            })
        })
        .collect();
    let mut sides = Vec::new();
    for (n, client) in clients.into_iter().enumerate() {
        let messenger = within(120, "a client's connect", client).await;
        let what = format!("{}: client {n}", rt.name());
        sides.push(rt.spawn(exchange(rt, messenger, 1, all.clone(), what)));
    }
    let server_messengers = within(120, "the server's accepts", server).await;
    for (n, messenger) in server_messengers.into_iter().enumerate() {
        let what = format!("{}: server side {n}", rt.name());
        sides.push(rt.spawn(exchange(rt, messenger, 0, all.clone(), what)));
    }
    let mut done = Vec::new();
    for side in sides {
        done.push(within(240, "an exchange", side).await);
    }
    drop(done);
}

runtime_tests!(sixteen_messengers_send_both_ways_at_once);
