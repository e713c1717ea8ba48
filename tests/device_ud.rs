//! Unreliable datagram queue pairs on a real device, on every runtime: one queue pair with
//! many peers, the 40-byte GRH kept out of the user's buffers, the MTU limit, receives too
//! small, floods, wrong Q_Keys, and teardown.

// SERIAL is held for a whole test, across its awaits, on purpose: each test runs on its own
// runtime, and the lock only keeps the tests of this binary from running at the same time.
#![allow(clippy::await_holding_lock)]

mod support;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use anyrdma::ud::{
    self, Datagram, UdAddress, UdListener, UdOptions, UdQueuePair, UdSessionOptions,
};
use anyrdma::{
    registered_regions, Access, CompletionQueue, Context, CqOptions, Error, LocalBuf, SrqOptions,
};
use support::{fill, holds_pattern, within, Rt};

/// The leak checks read process-wide counters, and the flood needs the device to itself:
/// one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// What receive buffers hold before a datagram lands: nothing of a datagram (or of its GRH)
/// may change a byte of it past the payload.
const SENTINEL: u8 = 0xee;

struct Node {
    ctx: Context,
    pd: anyrdma::ProtectionDomain,
    cq: CompletionQueue,
}

impl Node {
    fn new() -> Node {
        let ctx = Context::open_default().expect("open the default RDMA device");
        let pd = ctx.alloc_pd().expect("alloc PD");
        let cq = CompletionQueue::new(&ctx, CqOptions::default()).expect("create CQ");
        Node { ctx, pd, cq }
    }

    fn qp(&self) -> UdQueuePair {
        self.qp_with(UdOptions::default())
    }

    fn qp_with(&self, options: UdOptions) -> UdQueuePair {
        UdQueuePair::new(&self.pd, &self.cq, &self.cq, options).expect("create UD QP")
    }

    fn patterned(&self, len: usize, seed: u8) -> LocalBuf {
        let mut buf = self.pd.alloc(len.max(1), Access::LOCAL).expect("alloc");
        fill(&mut buf, seed);
        if len == 0 {
            // A zero-length send: an empty piece of the buffer.
            return buf.split_to(0);
        }
        buf
    }

    fn blank(&self, len: usize) -> LocalBuf {
        let mut buf = self.pd.alloc(len, Access::LOCAL).expect("alloc");
        buf.fill(SENTINEL);
        buf
    }
}

/// Checks that `buf` holds the pattern of `seed` in its first `len` bytes and nothing but
/// the sentinel after them.
fn check_payload(rt: Rt, what: &str, buf: &[u8], len: usize, seed: u8) {
    assert!(
        holds_pattern(&buf[..len], seed),
        "{}: {what}: the {len}-byte payload is not at offset 0 or arrived corrupted: {:02x?}",
        rt.name(),
        &buf[..len.min(48)]
    );
    assert!(
        buf[len..].iter().all(|&b| b == SENTINEL),
        "{}: {what}: bytes past the {len}-byte payload were written",
        rt.name()
    );
}

async fn one_queue_pair_exchanges_with_32_peers(rt: Rt) {
    if !support::device_present("one_queue_pair_exchanges_with_32_peers") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let node = Node::new();
    let server = node.qp();
    let mtu = server.max_datagram();
    // The peers share a completion queue of their own.
    let peer_cq = CompletionQueue::new(&node.ctx, CqOptions::default()).expect("peer CQ");
    let peers: Vec<UdQueuePair> = (0..32)
        .map(|_| UdQueuePair::new(&node.pd, &peer_cq, &peer_cq, UdOptions::default()).unwrap())
        .collect();
    // 0 bytes, the MTU, and sizes in between.
    let len_of = |i: usize| match i {
        31 => mtu,
        i => (i * 37) % mtu,
    };

    let inbox: Vec<_> = (0..32).map(|_| server.recv(node.blank(mtu))).collect();
    let to_server: Vec<_> = peers
        .iter()
        .map(|peer| peer.peer(&server.address()).expect("address the server"))
        .collect();
    let replies: Vec<_> = peers
        .iter()
        .map(|peer| peer.recv(node.blank(mtu)))
        .collect();
    for (i, peer) in peers.iter().enumerate() {
        let data = node.patterned(len_of(i), i as u8 + 1);
        let (sent, _) = within(
            20,
            "send to the server",
            peer.send_to_with_imm(data, &to_server[i], i as u32),
        )
        .await;
        sent.unwrap_or_else(|e| panic!("{}: peer {i} send: {e}", rt.name()));
    }

    // Every datagram arrives whole, its payload at offset 0, with its sender.
    let mut seen = [false; 32];
    let mut answers = Vec::new();
    for recv in inbox {
        let (got, buf) = within(20, "server receive", recv).await;
        let got: Datagram = got.unwrap_or_else(|e| panic!("{}: server receive: {e}", rt.name()));
        let i = got.imm.expect("every datagram carries its sender's index") as usize;
        assert!(i < 32 && !seen[i], "{}: index {i} again", rt.name());
        seen[i] = true;
        assert_eq!(got.len, len_of(i), "{}: peer {i}'s length", rt.name());
        check_payload(rt, "server receive", &buf, got.len, i as u8 + 1);
        assert_eq!(got.src_qpn, peers[i].qpn(), "{}: sender QPN", rt.name());
        assert_eq!(
            got.src_gid,
            Some(peers[i].address().gid),
            "{}: sender GID",
            rt.name()
        );
        answers.push((i, got));
    }

    // The server answers each from the datagram alone; one address handle serves all 32
    // (they share a port).
    for (i, got) in &answers {
        let back = server.reply_to(got).expect("reply address");
        assert_eq!(back.qpn(), peers[*i].qpn());
        let data = node.patterned(mtu - len_of(*i), *i as u8 + 101);
        let (sent, _) = within(
            20,
            "server reply",
            server.send_to_with_imm(data, &back, 1000 + *i as u32),
        )
        .await;
        sent.unwrap_or_else(|e| panic!("{}: reply to peer {i}: {e}", rt.name()));
    }
    assert_eq!(
        server.cached_peers(),
        1,
        "{}: one address handle per destination port, not per send",
        rt.name()
    );
    for (i, recv) in replies.into_iter().enumerate() {
        let (got, buf) = within(20, "peer receive", recv).await;
        let got = got.unwrap_or_else(|e| panic!("{}: peer {i} receive: {e}", rt.name()));
        assert_eq!(got.imm, Some(1000 + i as u32), "{}: peer {i}", rt.name());
        assert_eq!(got.len, mtu - len_of(i), "{}: peer {i}", rt.name());
        check_payload(rt, "peer receive", &buf, got.len, i as u8 + 101);
        assert_eq!(got.src_qpn, server.qpn(), "{}: peer {i}", rt.name());
    }
    assert!(server.failure().is_none());
}

async fn the_grh_is_never_visible(rt: Rt) {
    if !support::device_present("the_grh_is_never_visible") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let node = Node::new();
    let (a, b) = (node.qp(), node.qp());
    let to_b = a.peer(&b.address()).unwrap();
    // Into one buffer exactly the payload's size, then into a scatter list of two pieces
    // that splits it: the payload starts at offset 0 of the first piece and runs on into
    // the second, with nothing in front.
    for (len, pieces) in [(100usize, 1usize), (100, 2), (1, 1), (b.max_datagram(), 2)] {
        let seed = len as u8 ^ pieces as u8;
        let (got, bytes) = if pieces == 1 {
            let recv = b.recv(node.blank(len));
            let (sent, _) = within(20, "send", a.send_to(node.patterned(len, seed), &to_b)).await;
            sent.unwrap();
            let (got, buf) = within(20, "receive", recv).await;
            (got, buf.to_vec())
        } else {
            let first = len / 3;
            let recv = b.recv(vec![node.blank(first), node.blank(len - first + 50)]);
            let (sent, _) = within(20, "send", a.send_to(node.patterned(len, seed), &to_b)).await;
            sent.unwrap();
            let (got, bufs) = within(20, "receive", recv).await;
            (got, bufs.iter().flat_map(|b| b.to_vec()).collect())
        };
        let got = got.unwrap_or_else(|e| panic!("{}: {len} bytes: {e}", rt.name()));
        assert_eq!(
            got.len,
            len,
            "{}: payload length, without the GRH",
            rt.name()
        );
        assert_eq!(got.imm, None);
        check_payload(rt, "receive", &bytes, len, seed);
        assert_eq!(got.src_qpn, a.qpn(), "{}: sender QPN", rt.name());
        assert_eq!(
            got.src_gid,
            Some(a.address().gid),
            "{}: sender GID",
            rt.name()
        );
        if let Some(v4) = a.address().gid.to_ipv4() {
            assert_eq!(got.src_gid.and_then(|gid| gid.to_ipv4()), Some(v4));
        }
    }
}

async fn sends_above_the_mtu_are_refused(rt: Rt) {
    if !support::device_present("sends_above_the_mtu_are_refused") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let node = Node::new();
    let (a, b) = (node.qp(), node.qp());
    let mtu = a.max_datagram();
    assert_eq!(mtu as u32, node.ctx.mtu(), "the port's active MTU");
    let to_b = a.peer(&b.address()).unwrap();
    let recv = b.recv(node.blank(mtu + 100));
    let (sent, buf) = within(
        20,
        "oversized send",
        a.send_to(node.patterned(mtu + 1, 1), &to_b),
    )
    .await;
    assert_eq!(buf.len(), mtu + 1, "the buffer comes back");
    match sent {
        Err(Error::DatagramTooLarge { len, mtu: said, .. }) => {
            assert_eq!((len, said as usize), (mtu + 1, mtu), "{}", rt.name())
        }
        other => panic!("{}: {mtu}+1 bytes: {other:?}", rt.name()),
    }
    let shown = Error::DatagramTooLarge {
        len: mtu + 1,
        mtu: mtu as u32,
        device: "dev".into(),
    }
    .to_string();
    assert!(shown.contains(&format!("{mtu} bytes")), "{shown}");
    // Nothing was posted: the receive takes the next datagram, of exactly the MTU.
    let (sent, _) = within(20, "MTU send", a.send_to(node.patterned(mtu, 2), &to_b)).await;
    sent.unwrap();
    let (got, buf) = within(20, "receive", recv).await;
    let got = got.unwrap();
    assert_eq!(got.len, mtu, "{}", rt.name());
    check_payload(rt, "MTU receive", &buf, mtu, 2);
    assert!(a.failure().is_none() && b.failure().is_none());
}

async fn a_receive_too_small_fails_alone(rt: Rt) {
    if !support::device_present("a_receive_too_small_fails_alone") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let node = Node::new();
    let (a, b) = (node.qp(), node.qp());
    let to_b = a.peer(&b.address()).unwrap();
    // A 16-byte receive, then two more behind it that must not suffer for it.
    let small = b.recv(node.blank(16));
    let exact = b.recv(node.blank(8));
    let big = b.recv(node.blank(b.max_datagram()));
    let (sent, _) = within(20, "long send", a.send_to(node.patterned(100, 1), &to_b)).await;
    sent.unwrap();
    let (got, _) = within(20, "small receive", small).await;
    match got {
        Err(Error::DatagramTruncated { qpn, capacity, len }) => {
            assert_eq!(
                (qpn, capacity, len),
                (b.qpn(), 16, Some(100)),
                "{}",
                rt.name()
            );
        }
        other => panic!("{}: 100 bytes into 16: {other:?}", rt.name()),
    }
    assert!(
        b.failure().is_none(),
        "{}: the queue pair goes on",
        rt.name()
    );
    // The receives behind it were not touched, and take the next datagrams whole.
    let (sent, _) = within(20, "short send", a.send_to(node.patterned(8, 2), &to_b)).await;
    sent.unwrap();
    let (got, buf) = within(20, "exact receive", exact).await;
    let got = got.unwrap_or_else(|e| panic!("{}: after the error: {e}", rt.name()));
    assert_eq!(got.len, 8, "{}", rt.name());
    check_payload(rt, "exact receive", &buf, 8, 2);
    let (sent, _) = within(20, "next send", a.send_to(node.patterned(300, 3), &to_b)).await;
    sent.unwrap();
    let (got, buf) = within(20, "big receive", big).await;
    let got = got.unwrap_or_else(|e| panic!("{}: after the error: {e}", rt.name()));
    assert_eq!(got.len, 300, "{}", rt.name());
    check_payload(rt, "big receive", &buf, 300, 3);
    let shown = Error::DatagramTruncated {
        qpn: 7,
        capacity: 16,
        len: Some(100),
    }
    .to_string();
    assert!(
        shown.contains("100 bytes") && shown.contains("16 bytes"),
        "{shown}"
    );
}

async fn a_flood_into_too_few_receives_loses_without_failing(rt: Rt) {
    if !support::device_present("a_flood_into_too_few_receives_loses_without_failing") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let node = Node::new();
    let receiver = node.qp();
    let senders: Vec<UdQueuePair> = (0..16).map(|_| node.qp()).collect();
    const RECEIVES: usize = 8;
    const EACH: usize = 8;
    let counted_before = node.ctx.port_counters().expect("read the port's counters");
    let mut posted: Vec<_> = (0..RECEIVES)
        .map(|_| receiver.recv(node.blank(64)))
        .collect();
    // 128 datagrams from 16 queue pairs, all posted before any is awaited.
    let mut sends = Vec::new();
    for (s, sender) in senders.iter().enumerate() {
        let to = sender.peer(&receiver.address()).unwrap();
        for k in 0..EACH {
            let tag = (s * EACH + k) as u32;
            sends.push(sender.send_to_with_imm(node.patterned(64, tag as u8), &to, tag));
        }
    }
    for send in sends {
        let (sent, _) = within(20, "flood send", send).await;
        sent.unwrap_or_else(|e| panic!("{}: a datagram send fails only locally: {e}", rt.name()));
    }
    // The posted receives take the first datagrams; the rest are dropped by the device.
    let mut received = 0;
    for recv in posted.drain(..) {
        let (got, buf) = within(20, "flood receive", recv).await;
        let got = got.unwrap_or_else(|e| panic!("{}: flood receive: {e}", rt.name()));
        let tag = got.imm.expect("tagged");
        assert_eq!(got.len, 64);
        check_payload(rt, "flood receive", &buf, 64, tag as u8);
        received += 1;
    }
    assert!(receiver.failure().is_none(), "{}: no failure", rt.name());
    // Still working: a marked datagram gets through (a straggler of the flood still on its
    // way may take the receive first; it is counted, and the mark is sent again).
    let to = senders[0].peer(&receiver.address()).unwrap();
    loop {
        let recv = receiver.recv(node.blank(64));
        let (sent, _) = within(
            20,
            "after the flood",
            senders[0].send_to_with_imm(node.patterned(10, 9), &to, u32::MAX),
        )
        .await;
        sent.unwrap();
        let (got, buf) = within(20, "receive after the flood", recv).await;
        let got = got.unwrap();
        if got.imm == Some(u32::MAX) {
            check_payload(rt, "after the flood", &buf, 10, 9);
            break;
        }
        received += 1;
        assert!(received < 128, "{}: more received than sent", rt.name());
    }
    eprintln!(
        "{}: flood of {} datagrams into {RECEIVES} receives: {received} received, {} lost",
        rt.name(),
        senders.len() * EACH,
        senders.len() * EACH - received
    );
    assert!(received < senders.len() * EACH, "some were lost");
    // The device's counters saw the flood: its packets (Soft-RoCE's `rcvd_pkts`, the standard
    // `port_rcv_packets` elsewhere), and, where the device counts them, the drops.
    let counted = node.ctx.port_counters().expect("read the port's counters");
    let packets = ["rcvd_pkts", "port_rcv_packets"]
        .into_iter()
        .find_map(|name| Some((name, counted_before.get(name)?, counted.get(name)?)))
        .unwrap_or_else(|| {
            panic!(
                "{}: no received-packets counter among {:?}",
                rt.name(),
                counted.iter().collect::<Vec<_>>()
            )
        });
    assert!(
        packets.2 - packets.1 >= (received + 1) as u64,
        "{}: {} went from {} to {} while {} datagrams arrived",
        rt.name(),
        packets.0,
        packets.1,
        packets.2,
        received + 1
    );
    if let (Some(before), Some(after)) = (
        counted_before.receive_queue_drops(),
        counted.receive_queue_drops(),
    ) {
        assert!(
            after - before >= (senders.len() * EACH - received) as u64,
            "{}: the device counted {} drops for {} datagrams lost",
            rt.name(),
            after - before,
            senders.len() * EACH - received
        );
    }
}

async fn a_wrong_qkey_is_dropped_silently(rt: Rt) {
    if !support::device_present("a_wrong_qkey_is_dropped_silently") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let node = Node::new();
    let a = node.qp();
    let b = node.qp_with(UdOptions {
        qkey: 0x1357,
        ..UdOptions::default()
    });
    assert_eq!(b.qkey(), 0x1357);
    let mut recv = b.recv(node.blank(64));
    let wrong = a
        .peer(&UdAddress {
            qkey: 0x1356,
            ..b.address()
        })
        .unwrap();
    let (sent, _) = within(20, "wrong Q_Key", a.send_to(node.patterned(20, 1), &wrong)).await;
    sent.expect("a datagram with the wrong Q_Key is sent like any other");
    assert!(
        anyrdma::timeout(Duration::from_millis(500), &mut recv)
            .await
            .is_err(),
        "{}: the receive took a datagram with the wrong Q_Key",
        rt.name()
    );
    let right = a.peer(&b.address()).unwrap();
    let (sent, _) = within(20, "right Q_Key", a.send_to(node.patterned(30, 2), &right)).await;
    sent.unwrap();
    let (got, buf) = within(20, "receive", recv).await;
    let got = got.unwrap();
    assert_eq!(got.len, 30, "{}", rt.name());
    check_payload(rt, "right Q_Key", &buf, 30, 2);
    // A controlled Q_Key (top bit set) is refused.
    assert!(matches!(
        a.peer(&UdAddress {
            qkey: 0x8000_0000,
            ..b.address()
        }),
        Err(Error::OptionOutOfRange { .. })
    ));
}

async fn a_send_to_a_peer_that_is_gone_completes(rt: Rt) {
    if !support::device_present("a_send_to_a_peer_that_is_gone_completes") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let node = Node::new();
    let a = node.qp();
    let gone = {
        let b = node.qp();
        a.peer(&b.address()).unwrap()
    };
    // Nothing answers a datagram: sends to a queue pair that no longer exists are sent like
    // any others (a burst: most unsignaled, the last completed through a fence), and the
    // queue pair goes on.
    let burst: Vec<_> = (0..16)
        .map(|i| a.send_to(node.patterned(32, i), &gone))
        .collect();
    for send in burst.into_iter().rev() {
        let (sent, _) = within(20, "send to nobody", send).await;
        sent.unwrap_or_else(|e| panic!("{}: {e}", rt.name()));
    }
    assert!(a.failure().is_none(), "{}", rt.name());
    let c = node.qp();
    let recv = c.recv(node.blank(64));
    let (sent, _) = within(
        20,
        "send",
        a.send_to(node.patterned(32, 9), &a.peer(&c.address()).unwrap()),
    )
    .await;
    sent.unwrap();
    let (got, buf) = within(20, "receive", recv).await;
    check_payload(rt, "after sends to nobody", &buf, got.unwrap().len, 9);
}

async fn bursts_complete_through_fences(rt: Rt) {
    if !support::device_present("bursts_complete_through_fences") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let node = Node::new();
    let (a, b) = (node.qp(), node.qp());
    // Receives of a's own: the fences go to a itself, and must take none of them.
    let mut own: Vec<_> = (0..4).map(|_| a.recv(node.blank(64))).collect();
    let to_b = a.peer(&b.address()).unwrap();
    let inbox: Vec<_> = (0..40).map(|_| b.recv(node.blank(64))).collect();
    // 40 sends posted at once: with signal_every 16 most are unsignaled, and the last of
    // the burst completes through a fence.
    let sends: Vec<_> = (0..40u32)
        .map(|i| a.send_to_with_imm(node.patterned(64, i as u8), &to_b, i))
        .collect();
    for send in sends.into_iter().rev() {
        let (sent, _) = within(20, "burst send", send).await;
        sent.unwrap();
    }
    for (i, recv) in inbox.into_iter().enumerate() {
        let (got, buf) = within(20, "burst receive", recv).await;
        let got = got.unwrap();
        assert_eq!(got.imm, Some(i as u32), "{}: in order", rt.name());
        check_payload(rt, "burst", &buf, 64, i as u8);
    }
    for recv in &mut own {
        assert!(
            anyrdma::timeout(Duration::from_millis(100), recv)
                .await
                .is_err(),
            "{}: a fence took a receive",
            rt.name()
        );
    }
}

async fn a_batch_reaches_many_peers_with_one_doorbell(rt: Rt) {
    if !support::device_present("a_batch_reaches_many_peers_with_one_doorbell") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let node = Node::new();
    let server = node.qp();
    let mtu = server.max_datagram();
    let peers: Vec<UdQueuePair> = (0..8).map(|_| node.qp()).collect();
    let to: Vec<_> = peers
        .iter()
        .map(|peer| server.peer(&peer.address()).unwrap())
        .collect();
    let inbox: Vec<_> = peers
        .iter()
        .map(|peer| peer.recv(node.blank(mtu)))
        .collect();

    // A batch with one datagram above the MTU is refused whole: nothing reaches anyone.
    let mut batch = server.batch();
    for (i, peer) in to.iter().enumerate() {
        let len = if i == 5 { mtu + 1 } else { 10 };
        batch = batch.send_to(node.patterned(len, 50), peer);
    }
    let (sent, back) = within(20, "refused batch", batch.submit()).await;
    assert!(
        matches!(sent, Err(Error::DatagramTooLarge { len, .. }) if len == mtu + 1),
        "{}: {sent:?}",
        rt.name()
    );
    assert_eq!(back.len(), 8, "the buffers come back");

    let mut batch = server.batch();
    for (i, peer) in to.iter().enumerate() {
        batch = batch.send_to_with_imm(node.patterned(100 * i, i as u8), peer, i as u32);
    }
    assert_eq!(batch.len(), 8);
    let (sent, back) = within(20, "batch", batch.submit()).await;
    sent.unwrap_or_else(|e| panic!("{}: batch: {e}", rt.name()));
    assert_eq!(back.len(), 8);
    for (i, recv) in inbox.into_iter().enumerate() {
        let (got, buf) = within(20, "batch receive", recv).await;
        let got = got.unwrap();
        assert_eq!(
            (got.len, got.imm),
            (100 * i, Some(i as u32)),
            "{}",
            rt.name()
        );
        check_payload(rt, "batch receive", &buf, 100 * i, i as u8);
        assert_eq!(got.src_qpn, server.qpn());
    }
}

async fn peers_find_each_other_by_address(rt: Rt) {
    if !support::device_present("peers_find_each_other_by_address") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let listener = UdListener::bind_with(
        SocketAddr::new(support::cm_ip(), 0),
        UdSessionOptions {
            private_data: b"welcome".to_vec(),
            ..UdSessionOptions::default()
        },
    )
    .expect("bind a datagram listener");
    let addr = listener.local_addr();
    assert_ne!(addr.port(), 0, "a port was chosen");
    let server = listener.queue_pair().clone();
    let mtu = server.max_datagram();
    let alloc = |qp: &UdQueuePair, len: usize| qp.pd().alloc(len, Access::LOCAL).unwrap();
    let inbox: Vec<_> = (0..4)
        .map(|_| {
            let mut buf = alloc(&server, mtu);
            buf.fill(SENTINEL);
            server.recv(buf)
        })
        .collect();
    let server_qpn = server.qpn();
    // Four clients, each finding the server by its address alone, in a task of their own
    // while this one answers them.
    let clients = rt.spawn(async move {
        let mut waiting = Vec::new();
        for i in 0..4u8 {
            let options = UdSessionOptions {
                private_data: vec![i],
                ..UdSessionOptions::default()
            };
            let (qp, peer) = ud::connect(addr, options)
                .await
                .expect("resolve the server");
            assert_eq!((peer.qpn(), peer.qkey()), (server_qpn, ud::DEFAULT_QKEY));
            let reply = qp.recv(qp.pd().alloc(mtu, Access::LOCAL).unwrap());
            let mut ping = qp.pd().alloc(20, Access::LOCAL).unwrap();
            fill(&mut ping, i);
            let (sent, _) = qp.send_to_with_imm(ping, &peer, u32::from(i)).await;
            sent.expect("ping");
            waiting.push((qp, reply));
        }
        for (i, (qp, reply)) in waiting.into_iter().enumerate() {
            let (got, buf) = reply.await;
            let got = got.expect("pong");
            assert_eq!(got.len, 20);
            assert!(holds_pattern(&buf[..20], i as u8 + 100), "pong {i}");
            assert_eq!(got.src_qpn, server_qpn);
            drop(qp);
        }
    });
    fn send<T: Send>(future: T) -> T {
        future
    }
    for i in 0..4u8 {
        // The answer may run in a task of its own: its future is Send.
        let answer = send(listener.answer());
        let (client, data) = within(20, "answer", answer).await.expect("answer");
        // The protocol carries private data in a fixed area: it comes padded with zeros.
        assert_eq!(
            data.first(),
            Some(&i),
            "{}: the request's private data",
            rt.name()
        );
        assert!(data[1..].iter().all(|&b| b == 0), "{}: padding", rt.name());
        assert_eq!(client.ip(), support::cm_ip());
    }
    for recv in inbox {
        let (got, buf) = within(20, "ping", recv).await;
        let got = got.expect("ping");
        let i = got.imm.unwrap() as u8;
        check_payload(rt, "ping", &buf, 20, i);
        let back = server.reply_to(&got).unwrap();
        let mut pong = alloc(&server, 20);
        fill(&mut pong, i + 100);
        let (sent, _) = within(20, "pong", server.send_to(pong, &back)).await;
        sent.unwrap();
    }
    within(30, "clients", clients).await;

    // Nobody listening: the resolution fails, it does not hang.
    drop(listener);
    let options = UdSessionOptions {
        timeout: Duration::from_secs(2),
        ..UdSessionOptions::default()
    };
    match within(20, "resolve nobody", ud::connect(addr, options)).await {
        Err(Error::ConnectRefused { addr: refused }) => assert_eq!(refused, addr),
        Err(other) => panic!("{}: {other}", rt.name()),
        Ok(_) => panic!("{}: resolved a server that is gone", rt.name()),
    }
}

async fn a_shared_receive_queue_serves_many_datagram_pairs(rt: Rt) {
    if !support::device_present("a_shared_receive_queue_serves_many_datagram_pairs") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let regions = registered_regions();
    {
        let node = Node::new();
        let srq_cq = CompletionQueue::new(&node.ctx, CqOptions::default()).unwrap();
        let srq = ud::UdSharedReceiveQueue::new(&node.pd, &srq_cq, SrqOptions::default())
            .expect("create a datagram SRQ");
        let receivers: Vec<UdQueuePair> = (0..4)
            .map(|_| UdQueuePair::with_srq(&node.pd, &node.cq, &srq, UdOptions::default()).unwrap())
            .collect();
        // A queue pair on a shared receive queue takes no receives of its own.
        let (own, _) = within(20, "own receive", receivers[0].recv(node.blank(8))).await;
        assert!(matches!(own, Err(Error::InvalidArgument(_))), "{own:?}");
        let mtu = srq.max_datagram();
        let inbox: Vec<_> = (0..16).map(|_| srq.recv(node.blank(mtu))).collect();
        assert_eq!(srq.posted(), 16);
        let sender = node.qp();
        for (r, receiver) in receivers.iter().enumerate() {
            let to = sender.peer(&receiver.address()).unwrap();
            for k in 0..4 {
                let tag = (r * 4 + k) as u32;
                let data = node.patterned(10 + tag as usize, tag as u8);
                let (sent, _) = within(20, "send", sender.send_to_with_imm(data, &to, tag)).await;
                sent.unwrap();
            }
        }
        let mut seen = [false; 16];
        for recv in inbox {
            let (got, buf) = within(20, "SRQ receive", recv).await;
            let got = got.unwrap_or_else(|e| panic!("{}: SRQ receive: {e}", rt.name()));
            let tag = got.imm.unwrap() as usize;
            assert!(!seen[tag]);
            seen[tag] = true;
            assert_eq!(got.len, 10 + tag);
            check_payload(rt, "SRQ receive", &buf, got.len, tag as u8);
            assert_eq!(got.src_qpn, sender.qpn());
        }
        // Receives left posted when everything goes.
        for _ in 0..4 {
            drop(srq.recv(node.blank(64)));
        }
    }
    assert_eq!(
        registered_regions(),
        regions,
        "{}: a registration outlived the shared receive queue",
        rt.name()
    );
}

async fn nothing_stays_registered_after_drop(rt: Rt) {
    if !support::device_present("nothing_stays_registered_after_drop") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let regions = registered_regions();
    let handles = ud::live_address_handles();
    {
        let node = Node::new();
        let (a, b) = (node.qp(), node.qp());
        let to_b = a.peer(&b.address()).unwrap();
        let (sent, _) = within(20, "send", a.send_to(node.patterned(10, 1), &to_b)).await;
        sent.unwrap();
        // Receives left posted, a send dropped in flight, peers and handles held until
        // the end.
        let _pending: Vec<_> = (0..8).map(|_| b.recv(node.blank(64))).collect();
        drop(a.send_to(node.patterned(10, 2), &to_b));
        for _ in 0..8 {
            drop(a.recv(node.blank(64)));
        }
        assert!(ud::live_address_handles() > handles);
        assert!(registered_regions() > regions);
    }
    assert_eq!(
        registered_regions(),
        regions,
        "{}: a registration outlived its queue pairs",
        rt.name()
    );
    assert_eq!(
        ud::live_address_handles(),
        handles,
        "{}: an address handle outlived its queue pairs",
        rt.name()
    );
}

runtime_tests!(
    one_queue_pair_exchanges_with_32_peers,
    the_grh_is_never_visible,
    sends_above_the_mtu_are_refused,
    a_receive_too_small_fails_alone,
    a_flood_into_too_few_receives_loses_without_failing,
    a_wrong_qkey_is_dropped_silently,
    a_send_to_a_peer_that_is_gone_completes,
    bursts_complete_through_fences,
    a_batch_reaches_many_peers_with_one_doorbell,
    peers_find_each_other_by_address,
    a_shared_receive_queue_serves_many_datagram_pairs,
    nothing_stays_registered_after_drop,
);
