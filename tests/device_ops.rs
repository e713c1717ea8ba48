//! Every data operation moves the right bytes on a real device, on every runtime.

mod support;

use anyrdma::{Access, MessageKind, Received, RemoteRegion, SharedRegion};
use support::{holds_pattern, within, Pair, Rt};

/// Sizes every transfer test covers: empty, one byte, a page, one MiB, and just over one
/// MTU (computed per device).
fn sizes(mtu: usize) -> Vec<usize> {
    vec![0, 1, 4096, 1 << 20, mtu + 1]
}

/// A remote-accessible region on side b, and its description.
fn exposed(pair: &Pair, len: usize, access: Access) -> (SharedRegion, RemoteRegion) {
    let buf = pair
        .pd
        .alloc_shared(len, access)
        .expect("alloc exposed region");
    let remote = buf.remote().expect("remote description");
    (buf, remote)
}

async fn send_recv_moves_every_size(rt: Rt) {
    if !support::device_present("send_recv_moves_every_size") {
        return;
    }
    let pair = Pair::new();
    for (i, len) in sizes(pair.ctx.mtu() as usize).into_iter().enumerate() {
        let seed = i as u8 + 1;
        let recv = pair
            .b
            .recv(pair.pd.alloc(len.max(1), Access::LOCAL).unwrap());
        let (sent, _) = within(20, "send", pair.a.send(pair.patterned(len, seed))).await;
        sent.unwrap_or_else(|e| panic!("{}: send of {len} bytes: {e}", rt.name()));
        let (got, buf) = within(20, "recv", recv).await;
        let got = got.unwrap_or_else(|e| panic!("{}: recv of {len} bytes: {e}", rt.name()));
        assert_eq!(
            got,
            Received {
                len,
                imm: None,
                kind: MessageKind::Send
            },
            "{}: {len} bytes",
            rt.name()
        );
        assert!(
            holds_pattern(&buf[..len], seed),
            "{}: {len} bytes arrived corrupted",
            rt.name()
        );
    }
}

async fn immediates_arrive(rt: Rt) {
    if !support::device_present("immediates_arrive") {
        return;
    }
    let pair = Pair::new();
    // Send with immediate.
    let recv = pair.b.recv(pair.pd.alloc(64, Access::LOCAL).unwrap());
    let (sent, _) = within(
        20,
        "send_with_imm",
        pair.a.send_with_imm(pair.patterned(10, 3), 0xdead_beef),
    )
    .await;
    sent.expect("send with imm");
    let (got, buf) = within(20, "recv", recv).await;
    assert_eq!(
        got.expect("recv"),
        Received {
            len: 10,
            imm: Some(0xdead_beef),
            kind: MessageKind::SendWithImm
        }
    );
    assert!(holds_pattern(&buf[..10], 3));
    // An immediate of zero is still an immediate (the flag says so, not the value).
    let recv = pair.b.recv(pair.pd.alloc(64, Access::LOCAL).unwrap());
    let (sent, _) = within(
        20,
        "send_with_imm 0",
        pair.a.send_with_imm(pair.patterned(1, 4), 0),
    )
    .await;
    sent.expect("send with imm 0");
    assert_eq!(
        within(20, "recv", recv).await.0.expect("recv"),
        Received {
            len: 1,
            imm: Some(0),
            kind: MessageKind::SendWithImm
        }
    );
    // Write with immediate: data lands in the region, the immediate in a receive, whose
    // buffer (1 byte here) holds nothing of the 5,000 bytes written: `&buf[..len]` is safe.
    let (region, remote) = exposed(&pair, 8192, Access::REMOTE_WRITE);
    let recv = pair.b.recv(pair.pd.alloc(1, Access::LOCAL).unwrap());
    let (wrote, _) = within(
        20,
        "write_with_imm",
        pair.a.write_with_imm(pair.patterned(5000, 9), remote, 77),
    )
    .await;
    wrote.expect("write with imm");
    let (got, buf) = within(20, "recv of write imm", recv).await;
    let got = got.expect("recv");
    assert_eq!(
        got,
        Received {
            len: 0,
            imm: Some(77),
            kind: MessageKind::WriteWithImm
        },
        "{}",
        rt.name()
    );
    assert!(buf[..got.len].is_empty());
    assert!(
        holds_pattern(&region.to_vec(..5000).unwrap(), 9),
        "{}: written bytes corrupted",
        rt.name()
    );
}

async fn write_and_read_move_every_size(rt: Rt) {
    if !support::device_present("write_and_read_move_every_size") {
        return;
    }
    let pair = Pair::new();
    let (region, remote) = exposed(
        &pair,
        (1 << 20) + 8192,
        Access::REMOTE_READ | Access::REMOTE_WRITE,
    );
    for (i, len) in sizes(pair.ctx.mtu() as usize).into_iter().enumerate() {
        let seed = 40 + i as u8;
        let (wrote, _) = within(20, "write", pair.a.write(pair.patterned(len, seed), remote)).await;
        wrote.unwrap_or_else(|e| panic!("{}: write of {len}: {e}", rt.name()));
        assert!(
            holds_pattern(&region.to_vec(..len).unwrap(), seed),
            "{}: write of {len} corrupted",
            rt.name()
        );
        let (read, back) = within(
            20,
            "read",
            pair.a
                .read(pair.pd.alloc(len, Access::LOCAL).unwrap(), remote),
        )
        .await;
        read.unwrap_or_else(|e| panic!("{}: read of {len}: {e}", rt.name()));
        assert!(
            holds_pattern(&back, seed),
            "{}: read of {len} corrupted",
            rt.name()
        );
    }
    // A write into the middle of the region through a checked sub-slice.
    let middle = remote.slice(100..200).unwrap();
    let (wrote, _) = within(
        20,
        "write middle",
        pair.a.write(pair.patterned(100, 99), middle),
    )
    .await;
    wrote.expect("write into a slice");
    assert!(holds_pattern(&region.to_vec(100..200).unwrap(), 99));
    drop(region);
}

async fn scatter_gather_lists(rt: Rt) {
    if !support::device_present("scatter_gather_lists") {
        return;
    }
    let pair = Pair::new();
    // Gather three pieces into one message, scatter it into two.
    let mut whole = pair.patterned(3000, 5);
    let mut rest = whole.split_off(1000);
    let last = rest.split_off(1500);
    let recv_bufs = vec![
        pair.pd.alloc(2000, Access::LOCAL).unwrap(),
        pair.pd.alloc(2000, Access::LOCAL).unwrap(),
    ];
    let recv = pair.b.recv(recv_bufs);
    let (sent, pieces) = within(20, "gather send", pair.a.send([whole, rest, last])).await;
    sent.expect("gathered send");
    let (got, bufs) = within(20, "scatter recv", recv).await;
    assert_eq!(got.expect("scattered recv").len, 3000);
    let mut joined = bufs[0].to_vec();
    joined.extend_from_slice(&bufs[1][..1000]);
    assert!(
        holds_pattern(&joined, 5),
        "{}: scatter-gather reordered or corrupted bytes",
        rt.name()
    );
    // The pieces join back into the original buffer.
    let [mut a, b, c] = pieces;
    a.unsplit(b).unwrap();
    a.unsplit(c).unwrap();
    assert!(holds_pattern(&a, 5));
    // An RDMA read scattered into two local pieces.
    let mut region = pair.pd.alloc(4096, Access::REMOTE_READ).unwrap();
    let remote = region.remote().unwrap();
    support::fill(&mut region, 6);
    let mut first = pair.pd.alloc(4096, Access::LOCAL).unwrap();
    let second = first.split_off(1024);
    let (read, mut back) = within(
        20,
        "scattered read",
        pair.a.read(vec![first, second], remote),
    )
    .await;
    read.expect("scattered read");
    let second = back.pop().unwrap();
    let mut first = back.pop().unwrap();
    first.unsplit(second).unwrap();
    assert!(
        holds_pattern(&first, 6),
        "{}: scattered read corrupted",
        rt.name()
    );
}

async fn inline_and_batched_sends(rt: Rt) {
    if !support::device_present("inline_and_batched_sends") {
        return;
    }
    let pair = Pair::new();
    let inline = pair.a.max_inline() as usize;
    assert!(
        inline > 0,
        "{}: the device granted no inline data",
        rt.name()
    );
    let recv = pair.b.recv(pair.pd.alloc(inline, Access::LOCAL).unwrap());
    let (sent, _) = within(20, "inline send", pair.a.send(pair.patterned(inline, 11))).await;
    sent.expect("inline send");
    let (got, buf) = within(20, "recv", recv).await;
    assert_eq!(got.unwrap().len, inline);
    assert!(holds_pattern(&buf[..inline], 11));

    // A batch: eight writes and a send with one doorbell and one completion.
    let (region, remote) = exposed(&pair, 8 * 512, Access::REMOTE_WRITE);
    let recv = pair.b.recv(pair.pd.alloc(64, Access::LOCAL).unwrap());
    let mut batch = pair.a.batch();
    for i in 0..8u64 {
        batch = batch.write(
            pair.patterned(512, 20 + i as u8),
            remote.slice(i * 512..(i + 1) * 512).unwrap(),
        );
    }
    let batch = batch.send_with_imm(pair.patterned(8, 1), 8);
    assert_eq!(batch.len(), 9);
    let (result, bufs) = within(20, "batch", batch.submit()).await;
    result.expect("batch");
    assert_eq!(bufs.len(), 9, "every buffer comes back");
    assert_eq!(within(20, "recv", recv).await.0.unwrap().imm, Some(8));
    for i in 0..8 {
        assert!(
            holds_pattern(
                &region.to_vec(i * 512..(i + 1) * 512).unwrap(),
                20 + i as u8
            ),
            "{}: batch write {i}",
            rt.name()
        );
    }
    assert_eq!(pair.cq_a.in_flight(), 0);
}

async fn atomics_count_exactly(rt: Rt) {
    if !support::device_present("atomics_count_exactly") {
        return;
    }
    let pair = Pair::new();
    let (counter, remote) = exposed(&pair, 8, Access::REMOTE_ATOMIC);
    counter.store_u64(0, 5).unwrap();
    // Compare-and-swap: succeeds when the value matches, fails (returning it) otherwise.
    let (old, buf) = within(
        20,
        "cas",
        pair.a
            .compare_and_swap(pair.pd.alloc(8, Access::LOCAL).unwrap(), remote, 5, 100),
    )
    .await;
    assert_eq!(old.expect("cas"), 5);
    let (old, _) = within(20, "cas miss", pair.a.compare_and_swap(buf, remote, 5, 7)).await;
    assert_eq!(
        old.expect("cas miss"),
        100,
        "a failed CAS returns the current value"
    );
    assert_eq!(counter.load_u64(0).unwrap(), 100);

    // 64 tasks doing fetch-and-add on one word give the exact total.
    const TASKS: u64 = 64;
    const ADDS: u64 = 20;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let qp = pair.a.clone();
        let mut buf = pair.pd.alloc(8, Access::LOCAL).unwrap();
        tasks.push(rt.spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..ADDS {
                let (old, back) = qp.fetch_and_add(buf, remote, t + 1).await;
                seen.push(old.expect("fetch_and_add"));
                buf = back;
            }
            seen
        }));
    }
    let mut olds = Vec::new();
    for task in tasks {
        olds.extend(within(60, "fetch_and_add task", task).await);
    }
    let expected: u64 = 100 + ADDS * (1..=TASKS).sum::<u64>();
    assert_eq!(
        counter.load_u64(0).unwrap(),
        expected,
        "{}: lost or doubled adds",
        rt.name()
    );
    olds.sort_unstable();
    olds.dedup();
    assert_eq!(
        olds.len() as u64,
        TASKS * ADDS,
        "{}: every add saw a distinct previous value",
        rt.name()
    );
}

async fn remote_regions_are_checked_before_posting(rt: Rt) {
    if !support::device_present("remote_regions_are_checked_before_posting") {
        return;
    }
    let pair = Pair::new();
    let (_region, remote) = exposed(
        &pair,
        4096,
        Access::REMOTE_READ | Access::REMOTE_WRITE | Access::REMOTE_ATOMIC,
    );
    let (result, buf) = pair.a.write(pair.patterned(4097, 1), remote).await;
    assert!(
        matches!(result, Err(anyrdma::Error::OutOfBounds { len: 4097, .. })),
        "{}: {result:?}",
        rt.name()
    );
    assert_eq!(buf.len(), 4097, "the buffer comes back");
    let (result, _) = pair
        .a
        .read(
            pair.pd.alloc(10, Access::LOCAL).unwrap(),
            remote.slice(4090..).unwrap(),
        )
        .await;
    assert!(matches!(result, Err(anyrdma::Error::OutOfBounds { .. })));
    let (result, _) = pair
        .a
        .fetch_and_add(
            pair.pd.alloc(8, Access::LOCAL).unwrap(),
            remote.slice(4..).unwrap(),
            1,
        )
        .await;
    assert!(
        matches!(result, Err(anyrdma::Error::Misaligned { .. })),
        "{result:?}"
    );
    let (result, _) = pair
        .a
        .fetch_and_add(pair.pd.alloc(16, Access::LOCAL).unwrap(), remote, 1)
        .await;
    assert!(
        matches!(result, Err(anyrdma::Error::AtomicBufferLen { len: 16 })),
        "a 16-byte atomic buffer: {result:?}"
    );
    assert_eq!(pair.cq_a.in_flight(), 0, "nothing was posted");
    assert!(
        pair.a.failure().is_none(),
        "the queue pair is still healthy"
    );
    // And it still works.
    let (result, _) = within(
        20,
        "valid write",
        pair.a.write(pair.patterned(4096, 2), remote),
    )
    .await;
    result.expect("valid write after rejected ones");
}

/// Busy polling and spinning before sleep move the same bytes as the default event mode.
async fn poll_modes_move_bytes(rt: Rt) {
    if !support::device_present("poll_modes_move_bytes") {
        return;
    }
    for mode in [
        anyrdma::PollMode::Busy,
        anyrdma::PollMode::Event { spin: 200 },
    ] {
        let cq = anyrdma::CqOptions {
            poll_mode: mode,
            ..anyrdma::CqOptions::default()
        };
        let pair = Pair::with(
            cq,
            anyrdma::QpOptions::default(),
            anyrdma::ConnectOptions::default(),
        );
        let (region, remote) = exposed(&pair, 4096, Access::REMOTE_WRITE);
        for round in 0..50u8 {
            let recv = pair.b.recv(pair.pd.alloc(4096, Access::LOCAL).unwrap());
            let (sent, _) = within(20, "send", pair.a.send(pair.patterned(4096, round))).await;
            sent.unwrap_or_else(|e| panic!("{} {mode:?}: {e}", rt.name()));
            let (got, buf) = within(20, "recv", recv).await;
            assert_eq!(got.unwrap().len, 4096);
            assert!(
                holds_pattern(&buf, round),
                "{} {mode:?}: corrupted",
                rt.name()
            );
            let (wrote, _) = within(
                20,
                "write",
                pair.a.write(pair.patterned(4096, round), remote),
            )
            .await;
            wrote.unwrap();
            assert!(holds_pattern(&region.to_vec(..).unwrap(), round));
        }
    }
}

/// Disjoint pieces of one registration are in flight at once, with no lock on the region;
/// a user's `Vec` is registered in place and comes back intact.
async fn pieces_of_one_region_fly_together(rt: Rt) {
    if !support::device_present("pieces_of_one_region_fly_together") {
        return;
    }
    let pair = Pair::new();
    let (region, remote) = exposed(&pair, 64 << 10, Access::REMOTE_WRITE);
    let mut whole = pair.patterned(64 << 10, 7);
    let mut pieces = Vec::new();
    while !whole.is_empty() {
        let piece = whole.split_to(whole.len().min(8 << 10));
        pieces.push(piece);
    }
    let ops: Vec<_> = pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| {
            let at = remote.slice((i as u64) * (8 << 10)..).unwrap();
            pair.a.write(piece, at)
        })
        .collect();
    assert_eq!(pair.cq_a.in_flight(), 8, "eight pieces in flight at once");
    let mut back = Vec::new();
    for op in ops {
        let (result, piece) = within(20, "piece write", op).await;
        result.expect("piece write");
        back.push(piece);
    }
    assert!(
        holds_pattern(&region.to_vec(..).unwrap(), 7),
        "{}: the pieces landed in the wrong places",
        rt.name()
    );
    let mut joined = back.remove(0);
    for piece in back {
        joined.unsplit(piece).expect("neighbours join back");
    }
    assert_eq!(joined.len(), 64 << 10);

    // A user's Vec, registered where it is, sent, and given back.
    let mut data = vec![0u8; 3000];
    support::fill(&mut data, 12);
    let owned = pair
        .pd
        .register(data, Access::LOCAL)
        .expect("register a Vec");
    let recv = pair.b.recv(pair.pd.alloc(3000, Access::LOCAL).unwrap());
    let (sent, owned) = within(20, "send a Vec", pair.a.send(owned)).await;
    sent.expect("send");
    let (got, buf) = within(20, "recv", recv).await;
    assert_eq!(got.unwrap().len, 3000);
    assert!(holds_pattern(&buf, 12));
    let data = owned.into_vec().expect("sole owner gets the Vec back");
    assert!(holds_pattern(&data, 12));
}

/// Receives posted on one shared receive queue serve every queue pair attached to it.
async fn shared_receive_queue_serves_many_pairs(rt: Rt) {
    if !support::device_present("shared_receive_queue_serves_many_pairs") {
        return;
    }
    use anyrdma::core::{CompletionQueue, QueuePair, SharedReceiveQueue};
    let pair = Pair::new();
    let ctx = &pair.ctx;
    let pd = &pair.pd;
    let recv_cq = CompletionQueue::new(ctx, anyrdma::CqOptions::default()).unwrap();
    let srq = SharedReceiveQueue::new(pd, &recv_cq, anyrdma::SrqOptions::default()).unwrap();
    let senders: Vec<_> = (0..3)
        .map(|_| QueuePair::new(pd, &pair.cq_a, &pair.cq_a, anyrdma::QpOptions::default()).unwrap())
        .collect();
    let receivers: Vec<_> = (0..3)
        .map(|_| QueuePair::with_srq(pd, &pair.cq_b, &srq, anyrdma::QpOptions::default()).unwrap())
        .collect();
    for (s, r) in senders.iter().zip(&receivers) {
        s.connect(&r.endpoint(), anyrdma::ConnectOptions::default())
            .unwrap();
        r.connect(&s.endpoint(), anyrdma::ConnectOptions::default())
            .unwrap();
    }
    // A queue pair on an SRQ takes no receives of its own.
    let (own, _) = receivers[0].recv(pd.alloc(8, Access::LOCAL).unwrap()).await;
    assert!(
        matches!(&own, Err(anyrdma::Error::InvalidArgument(why)) if why.contains("nothing was posted")),
        "{own:?}"
    );

    let inboxes: Vec<_> = (0..6)
        .map(|_| srq.recv(pd.alloc(256, Access::LOCAL).unwrap()))
        .collect();
    assert_eq!(srq.posted(), 6);
    for (i, s) in senders.iter().enumerate() {
        for j in 0..2u32 {
            let (sent, _) = within(
                20,
                "send to an SRQ",
                s.send_with_imm(pair.patterned(100, i as u8), i as u32 * 10 + j),
            )
            .await;
            sent.unwrap_or_else(|e| panic!("{}: {e}", rt.name()));
        }
    }
    let mut imms = Vec::new();
    for inbox in inboxes {
        let (got, buf) = within(20, "SRQ receive", inbox).await;
        let got = got.unwrap();
        assert_eq!(got.len, 100);
        let imm = got.imm.expect("immediate");
        assert!(
            holds_pattern(&buf[..100], (imm / 10) as u8),
            "{}: SRQ data corrupted",
            rt.name()
        );
        imms.push(imm);
    }
    imms.sort_unstable();
    assert_eq!(
        imms,
        vec![0, 1, 10, 11, 20, 21],
        "every message arrived once"
    );
    assert_eq!(srq.posted(), 0);

    // A message too long for the SRQ's buffer fails the queue pair that consumed it, not the
    // SRQ nor the other queue pairs.
    let small = srq.recv(pd.alloc(16, Access::LOCAL).unwrap());
    let (sent, _) = within(
        20,
        "oversized send",
        senders[1].send(pair.patterned(100, 1)),
    )
    .await;
    assert!(
        sent.is_err(),
        "{}: the peer cannot take 100 bytes into 16",
        rt.name()
    );
    let (got, _) = within(20, "oversized SRQ receive", small).await;
    let err = got.expect_err("message too long");
    // The status depends on the device (LOC_LEN_ERR, or LOC_QP_OP_ERR on rxe); the queue
    // pair is the consumer's.
    let consumer = receivers[1].qpn();
    assert!(
        matches!(&err, anyrdma::Error::WorkCompletion { qpn, .. } if *qpn == consumer),
        "{}: {err:?}",
        rt.name()
    );
    assert!(
        receivers[1].failure().is_some(),
        "{}: the consuming queue pair failed",
        rt.name()
    );
    assert!(receivers[0].failure().is_none() && receivers[2].failure().is_none());
    let (result, _) = receivers[1].send(pair.patterned(8, 1)).await;
    assert!(
        matches!(result, Err(anyrdma::Error::QpInError { .. })),
        "{result:?}"
    );
    let inbox = srq.recv(pd.alloc(256, Access::LOCAL).unwrap());
    let (sent, _) = within(20, "send after", senders[0].send(pair.patterned(50, 3))).await;
    sent.expect("the SRQ still serves the other queue pairs");
    let (got, buf) = within(20, "SRQ receive after", inbox).await;
    assert_eq!(got.expect("receive").len, 50);
    assert!(holds_pattern(&buf[..50], 3));

    // Dropping the SRQ (after its queue pairs) with receives still posted releases them.
    let baseline = anyrdma::registered_regions();
    for _ in 0..4 {
        drop(srq.recv(pd.alloc(64, Access::LOCAL).unwrap()));
    }
    drop(receivers);
    drop(srq);
    assert_eq!(
        recv_cq.in_flight(),
        0,
        "{}: the destroyed SRQ's receives are released",
        rt.name()
    );
    assert!(anyrdma::registered_regions() <= baseline + 4);
}

runtime_tests!(
    shared_receive_queue_serves_many_pairs,
    pieces_of_one_region_fly_together,
    poll_modes_move_bytes,
    send_recv_moves_every_size,
    immediates_arrive,
    write_and_read_move_every_size,
    scatter_gather_lists,
    inline_and_batched_sends,
    atomics_count_exactly,
    remote_regions_are_checked_before_posting,
);
