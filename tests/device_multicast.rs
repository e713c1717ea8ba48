//! Multicast on datagram queue pairs, on a real device and every runtime: four members each
//! get every datagram sent to their group, intact and with its sender; a member that drops
//! its membership gets nothing more while the others still do, and nothing of it stays
//! behind; joins that cannot work fail with typed errors.

// SERIAL is held for a whole test, across its awaits, on purpose: each test runs on its own
// runtime, and the lock only keeps the tests of this binary from running at the same time.
#![allow(clippy::await_holding_lock)]

mod support;

use std::net::IpAddr;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyrdma::ud::{self, Membership, MulticastOptions, UdOptions, UdQueuePair, MULTICAST_QPN};
use anyrdma::{registered_regions, Access, CompletionQueue, Context, CqOptions, Error, LocalBuf};
use support::{fill, holds_pattern, within, Rt};

/// The tests count the device's objects and process-wide registrations: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const MEMBERS: usize = 4;

/// The device behind [`cm_ip`]; `ANYRDMA_TEST_CM_DEVICE` overrides it.
fn cm_device() -> String {
    std::env::var("ANYRDMA_TEST_CM_DEVICE").unwrap_or_else(|_| "rxe0".to_owned())
}

/// A group of its own for each test and runtime, so that nothing one leaves behind reaches
/// another.
fn group(test: u8, rt: Rt) -> IpAddr {
    IpAddr::from([239, 77, test, rt as u8 + 1])
}

fn options() -> MulticastOptions {
    MulticastOptions {
        bind: Some(support::cm_ip()),
        ..MulticastOptions::default()
    }
}

/// cm ids on the devices, as `rdma resource` counts them.
fn cm_ids() -> u64 {
    let out = Command::new("rdma")
        .args(["resource", "show"])
        .output()
        .expect("run `rdma resource show`");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut sum = 0;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            if pair[0] == "cm_id" {
                sum += pair[1].parse::<u64>().unwrap_or(0);
            }
        }
    }
    sum
}

struct Node {
    pd: anyrdma::ProtectionDomain,
    cq: CompletionQueue,
}

impl Node {
    fn new() -> Node {
        let ctx = Context::open(&cm_device()).expect("open the rdma_cm device");
        let pd = ctx.alloc_pd().expect("alloc PD");
        let cq = CompletionQueue::new(&ctx, CqOptions::default()).expect("create CQ");
        Node { pd, cq }
    }

    fn qp(&self) -> UdQueuePair {
        self.qp_with(UdOptions::default())
    }

    fn qp_with(&self, options: UdOptions) -> UdQueuePair {
        UdQueuePair::new(&self.pd, &self.cq, &self.cq, options).expect("create UD QP")
    }

    fn patterned(&self, len: usize, seed: u8) -> LocalBuf {
        let mut buf = self.pd.alloc(len, Access::LOCAL).expect("alloc");
        fill(&mut buf, seed);
        buf
    }

    fn blank(&self, len: usize) -> LocalBuf {
        self.pd.alloc(len, Access::LOCAL).expect("alloc")
    }
}

async fn join_all(rt: Rt, members: &[UdQueuePair], group: IpAddr) -> Vec<Membership> {
    let mut joined = Vec::new();
    for (i, qp) in members.iter().enumerate() {
        let membership = within(20, "join", qp.join_with(group, options()))
            .await
            .unwrap_or_else(|err| panic!("{}: member {i} joining {group}: {err}", rt.name()));
        assert_eq!(membership.group(), group);
        assert_eq!(membership.peer().qpn(), MULTICAST_QPN);
        assert_eq!(membership.peer().qkey(), ud::DEFAULT_QKEY);
        joined.push(membership);
    }
    joined
}

/// The length of datagram `i` of a burst: from empty to the MTU.
fn len_of(i: usize, mtu: usize) -> usize {
    [0, 1, 64, 333, mtu - 1, mtu, 40, 1000.min(mtu)][i % 8]
}

async fn multicast_reaches_every_member(rt: Rt) {
    if !support::device_present("multicast_reaches_every_member") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let group = group(1, rt);
    let node = Node::new();
    let members: Vec<_> = (0..MEMBERS).map(|_| node.qp()).collect();
    let sender = node.qp();
    let joined = join_all(rt, &members, group).await;
    let mtu = sender.max_datagram();
    const COUNT: usize = 16;
    let inboxes: Vec<Vec<_>> = members
        .iter()
        .map(|qp| (0..COUNT).map(|_| qp.recv(node.blank(mtu))).collect())
        .collect();
    // The sender is no member: it sends to the group through a member's peer (same PD).
    let to_group = joined[0].peer().clone();
    for i in 0..COUNT {
        let buf = node.patterned(len_of(i, mtu).max(1), i as u8);
        let buf = if len_of(i, mtu) == 0 {
            let mut buf = buf;
            buf.split_to(0)
        } else {
            buf
        };
        let (sent, _) = within(
            20,
            "send",
            sender.send_to_with_imm(buf, &to_group, i as u32),
        )
        .await;
        sent.unwrap_or_else(|err| panic!("{}: send {i}: {err}", rt.name()));
    }
    let sender_gid = sender.address().gid;
    for (m, inbox) in inboxes.into_iter().enumerate() {
        for (i, recv) in inbox.into_iter().enumerate() {
            let what = format!("{}: member {m}, datagram {i}", rt.name());
            let (got, buf) = within(20, &what, recv).await;
            let got = got.unwrap_or_else(|err| panic!("{what}: {err}"));
            let len = len_of(i, mtu);
            assert_eq!(got.len, len, "{what}: length");
            assert_eq!(got.imm, Some(i as u32), "{what}: immediate data (order)");
            assert_eq!(got.src_qpn, sender.qpn(), "{what}: sender's queue pair");
            assert_eq!(got.src_gid, Some(sender_gid), "{what}: sender's GID");
            assert!(
                holds_pattern(&buf[..len], i as u8),
                "{what}: payload corrupted"
            );
        }
    }
    // Loopback: a member sends to its own group. The others get it; whether the sender
    // does is the device's choice, reported here.
    let inboxes: Vec<_> = members.iter().map(|qp| qp.recv(node.blank(mtu))).collect();
    let (sent, _) = members[0]
        .send_to(node.patterned(100, 0xa5), joined[0].peer())
        .await;
    sent.expect("a member's send to its group");
    let mut inboxes = inboxes.into_iter();
    let own = inboxes.next().expect("member 0's receive");
    for (m, recv) in inboxes.enumerate() {
        let (got, buf) = within(20, "a member's datagram", recv).await;
        let got = got.expect("a member's datagram");
        assert_eq!(
            (got.len, got.src_qpn),
            (100, members[0].qpn()),
            "member {}",
            m + 1
        );
        assert!(holds_pattern(&buf[..100], 0xa5));
    }
    let looped = anyrdma::timeout(Duration::from_millis(500), own).await;
    eprintln!(
        "{}: a member's own multicast send came back to it: {}",
        rt.name(),
        match looped {
            Ok((Ok(got), _)) if got.src_qpn == members[0].qpn() => "yes",
            Ok(_) => "something else arrived",
            Err(_) => "no (nothing within 500 ms)",
        }
    );
    drop(joined);
}

async fn leaving_on_drop_stops_delivery(rt: Rt) {
    if !support::device_present("leaving_on_drop_stops_delivery") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let group = group(2, rt);
    let (ids, regions, handles) = (cm_ids(), registered_regions(), ud::live_address_handles());
    {
        let node = Node::new();
        let members: Vec<_> = (0..MEMBERS).map(|_| node.qp()).collect();
        let sender = node.qp();
        let mut joined = join_all(rt, &members, group).await;
        assert_eq!(cm_ids(), ids + MEMBERS as u64, "one cm id per membership");
        let to_group = joined[0].peer().clone();
        let mtu = sender.max_datagram();
        // One datagram while all four are members: everyone gets it.
        let first: Vec<_> = members.iter().map(|qp| qp.recv(node.blank(mtu))).collect();
        let (sent, _) = sender.send_to(node.patterned(64, 1), &to_group).await;
        sent.expect("send");
        for (m, recv) in first.into_iter().enumerate() {
            let (got, _) = within(20, "before leaving", recv).await;
            assert_eq!(got.expect("before leaving").len, 64, "member {m}");
        }
        // The last member leaves (its queue pair lives on, with receives posted).
        drop(joined.pop());
        assert_eq!(
            cm_ids(),
            ids + MEMBERS as u64 - 1,
            "the leaver's cm id is gone"
        );
        let mut left: Vec<_> = (0..4)
            .map(|_| members[MEMBERS - 1].recv(node.blank(mtu)))
            .collect();
        let stayed: Vec<Vec<_>> = members[..MEMBERS - 1]
            .iter()
            .map(|qp| (0..4).map(|_| qp.recv(node.blank(mtu))).collect())
            .collect();
        for i in 0..4u8 {
            let (sent, _) = sender.send_to(node.patterned(64, i), &to_group).await;
            sent.expect("send after one left");
        }
        for (m, inbox) in stayed.into_iter().enumerate() {
            for (i, recv) in inbox.into_iter().enumerate() {
                let what = format!("{}: member {m} after another left, datagram {i}", rt.name());
                let (got, buf) = within(20, &what, recv).await;
                assert_eq!(
                    got.unwrap_or_else(|e| panic!("{what}: {e}")).len,
                    64,
                    "{what}"
                );
                assert!(holds_pattern(&buf[..64], i as u8), "{what}");
            }
        }
        // The others got all four: had the leaver still been attached, its datagrams would
        // be there by now too.
        let late = anyrdma::timeout(Duration::from_millis(300), left.remove(0)).await;
        assert!(
            late.is_err(),
            "{}: a member that left still got a datagram of the group",
            rt.name()
        );
        drop((joined, left));
    }
    assert_eq!(
        cm_ids(),
        ids,
        "{}: a cm id outlived its membership",
        rt.name()
    );
    assert_eq!(
        registered_regions(),
        regions,
        "{}: a registration outlived the memberships",
        rt.name()
    );
    assert_eq!(
        ud::live_address_handles(),
        handles,
        "{}: an address handle outlived the memberships",
        rt.name()
    );
}

async fn join_errors_are_typed(rt: Rt) {
    if !support::device_present("join_errors_are_typed") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let group = group(3, rt);
    let ids = cm_ids();
    let node = Node::new();
    let qp = node.qp();
    // Not a multicast address.
    let err = qp.join_with(support::cm_ip(), options()).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument(_)),
        "{}: {err}",
        rt.name()
    );
    // An IPv6 group from an IPv4 address.
    let err = qp
        .join_with(IpAddr::from([0xff0e, 0, 0, 0, 0, 0, 0, 0x77]), options())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument(_)),
        "{}: {err}",
        rt.name()
    );
    // A local address of no interface here.
    let nowhere = MulticastOptions {
        bind: Some(IpAddr::from([192, 0, 2, 1])),
        ..MulticastOptions::default()
    };
    let err = qp.join_with(group, nowhere).await.unwrap_err();
    let bind_failed = matches!(
        &err,
        Error::MulticastJoin { stage: "binding the local address", group: g, .. } if *g == group
    );
    assert!(bind_failed, "{}: {err}", rt.name());
    // A queue pair whose Q_Key is not the group's: it could never receive the group's
    // datagrams, so the join is refused (and left).
    let other = node.qp_with(UdOptions {
        qkey: 0x1111,
        ..UdOptions::default()
    });
    let err = within(20, "join", other.join_with(group, options()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::MulticastJoin {
                stage: "matching the group's Q_Key",
                ..
            }
        ),
        "{}: {err}",
        rt.name()
    );
    assert!(err.to_string().contains("0x1234567"), "{err}");
    // A queue pair of another device than the local address's.
    if let Ok(lo) = Context::open("rxe_lo") {
        let pd = lo.alloc_pd().expect("PD");
        let cq = CompletionQueue::new(&lo, CqOptions::default()).expect("CQ");
        let elsewhere = UdQueuePair::new(&pd, &cq, &cq, UdOptions::default()).expect("QP");
        let err = elsewhere.join_with(group, options()).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument(_)),
            "{}: {err}",
            rt.name()
        );
    }
    // Nothing of the failed joins stays.
    assert_eq!(cm_ids(), ids, "{}: a failed join left a cm id", rt.name());
    // The queue pair can still join after all that.
    let joined = within(20, "join", qp.join_with(group, options()))
        .await
        .expect("join after failures");
    drop(joined);
}

/// Two memberships of one queue pair in one group: the queue pair stays attached until the
/// last is dropped.
async fn a_queue_pair_joined_twice_stays_until_the_last_leaves(rt: Rt) {
    if !support::device_present("a_queue_pair_joined_twice_stays_until_the_last_leaves") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let group = group(4, rt);
    let node = Node::new();
    let (member, sender) = (node.qp(), node.qp());
    let first = within(20, "join", member.join_with(group, options()))
        .await
        .expect("first join");
    let second = within(20, "join", member.join_with(group, options()))
        .await
        .expect("second join");
    let to_group = first.peer().clone();
    drop(first);
    let recv = member.recv(node.blank(256));
    let (sent, _) = sender.send_to(node.patterned(64, 9), &to_group).await;
    sent.expect("send");
    let (got, buf) = within(20, "after one of two memberships left", recv).await;
    let got = got.unwrap_or_else(|err| panic!("{}: {err}", rt.name()));
    assert_eq!(got.len, 64, "{}", rt.name());
    assert!(holds_pattern(&buf[..64], 9));
    drop(second);
    let recv = member.recv(node.blank(256));
    let (sent, _) = sender.send_to(node.patterned(64, 10), &to_group).await;
    sent.expect("send");
    let late = anyrdma::timeout(Duration::from_millis(300), recv).await;
    assert!(
        late.is_err(),
        "{}: the queue pair still got the group's datagrams after its last membership left",
        rt.name()
    );
}

runtime_tests!(
    multicast_reaches_every_member,
    leaving_on_drop_stops_delivery,
    join_errors_are_typed,
    a_queue_pair_joined_twice_stays_until_the_last_leaves,
);
