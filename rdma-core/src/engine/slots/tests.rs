//! The slot table and selective signaling fed with synthetic work completions: the bursts,
//! failures and late completions that a real NIC produces and the emulated one does not.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};

use rdma_sys::{ibv_wc, ibv_wc_flags, ibv_wc_opcode};

use super::*;
use crate::signaling::Signal;
use crate::wake::{WakeList, POLL_BATCH};
use crate::wc::WcStatus;

const QPN: u32 = 0x11;

/// A waker that counts its wake-ups.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Buffers of a dropped operation, counting their release.
struct Buffers(Arc<AtomicUsize>);

impl Drop for Buffers {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// One posted single-request operation and the task that waits for it.
struct Posted {
    id: SlotId,
    signaled: bool,
    task: Arc<CountingWaker>,
}

impl Posted {
    fn wakeups(&self) -> usize {
        self.task.0.load(Ordering::SeqCst)
    }
}

/// Posts one RDMA write on the send queue of `qp` as the posting path does (queue credit,
/// selective signaling, slot), and registers a waiting task on its slot.
fn post_write(table: &mut SlotTable, qp: &Arc<QpStatus>) -> Posted {
    assert!(qp.sq.take(1, u32::MAX));
    let (id, placement) = qp
        .signaling
        .post(1, Signal::Selective, false, |placement| {
            let info = SlotInfo {
                qp: qp.clone(),
                kind: WorkKind::Write,
                remote: None,
                queue: WorkQueue::Send,
                wrs: 1,
                placement: Some(placement),
                cq_entries: placement.cq_entries(1),
            };
            table
                .reserve(info)
                .map(|id| (id, placement))
                .map_err(|err| (err, 0))
        })
        .expect("the CQ has room");
    let task = Arc::new(CountingWaker::default());
    table.set_waker(id, &Waker::from(task.clone()));
    Posted {
        id,
        signaled: placement.signaled,
        task,
    }
}

/// The work completion the device writes for the (last) request of `id`.
fn completion(id: SlotId, status: WcStatus, qpn: u32) -> ibv_wc {
    // SAFETY: ibv_wc is a plain C struct (integers and a union of integers): all zeroes is a
    // valid value.
    let mut wc: ibv_wc = unsafe { std::mem::zeroed() };
    wc.wr_id = id.wr_id(true);
    wc.status = status.0;
    wc.opcode = ibv_wc_opcode::IBV_WC_RDMA_WRITE;
    wc.qp_num = qpn;
    wc
}

/// Dispatches `wcs` as one poll of the CQ does (at most `POLL_BATCH` of them), on behalf of
/// the task polling `polling`, and wakes what the poll woke once it is over. Returns the
/// result it handed to `polling`.
fn poll_batch(
    table: &mut SlotTable,
    wcs: &[ibv_wc],
    polling: Option<SlotId>,
) -> Option<SlotResult> {
    assert!(
        wcs.len() <= POLL_BATCH,
        "one ibv_poll_cq returns at most a batch"
    );
    let mut wake = WakeList::new();
    let mut own = None;
    for wc in wcs {
        if let Some(result) = table.dispatch(wc, &mut wake, polling) {
            assert!(own.is_none(), "the polling slot's result came twice");
            own = Some(result);
        }
    }
    wake.run();
    own
}

/// Nothing is left accounted: no slot taken, no CQ room held, no send credit, no
/// unsignaled request listed.
fn assert_nothing_held(table: &SlotTable, qp: &QpStatus) {
    assert_eq!(table.in_use(), 0, "slots still taken");
    assert!(!table.has_waiters(), "a task still counted as waiting");
    assert_eq!(table.outstanding, 0, "CQ entries still reserved");
    assert_eq!(qp.sq.in_flight(), 0, "send credits leaked");
    assert!(
        !qp.signaling.has_unsignaled(),
        "unsignaled requests still listed"
    );
}

/// 32 signaled completions in one poll, each covering `signal_every - 1` waiting writes:
/// 512 tasks to wake from one `ibv_poll_cq` batch (a fast NIC that completed 513 writes of
/// many tasks while no task polled). Every task is woken once and gets its result; the
/// polling task gets its own directly.
#[test]
fn a_burst_of_signaled_completions_wakes_every_covered_task_once() {
    for signal_every in [2, 16, 64] {
        let mut table = SlotTable::new(1 << 16);
        let qp = QpStatus::for_qp(QPN, signal_every);
        let ops: Vec<Posted> = (0..1 + POLL_BATCH as u32 * signal_every)
            .map(|_| post_write(&mut table, &qp))
            .collect();
        // The premise: the first write (an idle queue) and every `signal_every`-th after it
        // are signaled, so each later signaled one covers `signal_every - 1`.
        let signaled: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].signaled).collect();
        let expected: Vec<usize> = (0..=POLL_BATCH)
            .map(|k| k * signal_every as usize)
            .collect();
        assert_eq!(signaled, expected, "signal_every {signal_every}");

        // The lone first completion, then one full batch of the others.
        let first = completion(ops[0].id, WcStatus::SUCCESS, QPN);
        assert!(poll_batch(&mut table, &[first], None).is_none());
        let polling = ops[ops.len() / 2 - 1].id; // a covered write, polled by its own task
        let burst: Vec<ibv_wc> = signaled[1..]
            .iter()
            .map(|&i| completion(ops[i].id, WcStatus::SUCCESS, QPN))
            .collect();
        let own = poll_batch(&mut table, &burst, Some(polling));
        assert!(
            matches!(own, Some(Ok(_))),
            "the polling task's write succeeds"
        );

        for (i, op) in ops.iter().enumerate() {
            if op.id == polling {
                assert_eq!(op.wakeups(), 0, "the polling task needs no wake-up");
                continue;
            }
            assert_eq!(op.wakeups(), 1, "write {i} (signal_every {signal_every})");
            let result = table.take_done(op.id);
            assert!(
                matches!(result, Some(Ok(_))),
                "write {i} (signal_every {signal_every}): {result:?}"
            );
        }
        assert_nothing_held(&table, &qp);
    }
}

/// A write in the middle of an unsignaled run fails: the writes before it are done, it
/// reports its own error, and everything after it (unsignaled or not, each with a flush
/// completion of its own, as on a reliable connection) is flushed with that error as cause.
#[test]
fn an_error_in_an_unsignaled_run_flushes_the_requests_after_it_only() {
    let signal_every = 16;
    let mut table = SlotTable::new(1024);
    let qp = QpStatus::for_qp(QPN, signal_every);
    let ops: Vec<Posted> = (0..2 * signal_every + 1)
        .map(|_| post_write(&mut table, &qp))
        .collect();
    let signaled: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].signaled).collect();
    assert_eq!(signaled, [0, 16, 32]);

    let failed = 5; // unsignaled, between the signaled 0 and 16
    assert!(!ops[failed].signaled);
    let mut wcs = vec![
        completion(ops[0].id, WcStatus::SUCCESS, QPN),
        completion(ops[failed].id, WcStatus::REM_ACCESS_ERR, QPN),
    ];
    wcs.extend(
        ops[failed + 1..]
            .iter()
            .map(|op| completion(op.id, WcStatus::WR_FLUSH_ERR, QPN)),
    );
    assert!(poll_batch(&mut table, &wcs, None).is_none());

    for (i, op) in ops.iter().enumerate() {
        assert_eq!(op.wakeups(), 1, "write {i}");
        let result = table.take_done(op.id).expect("every write is done");
        match (i, result) {
            (i, Ok(_)) if i < failed => {}
            (i, Err(err)) if i == failed => assert!(
                matches!(
                    *err,
                    Error::WorkCompletion {
                        status: WcStatus::REM_ACCESS_ERR,
                        qpn: QPN,
                        ..
                    }
                ),
                "the failed write reports its own error: {err}"
            ),
            (i, Err(err)) if i > failed => match *err {
                Error::Flushed {
                    qpn: QPN,
                    cause: Some(ref cause),
                    ..
                } => assert_eq!(
                    cause.wc_status(),
                    Some(WcStatus::REM_ACCESS_ERR),
                    "write {i} flushed by the failure"
                ),
                ref other => panic!("write {i} after the failure: {other}"),
            },
            (i, result) => panic!("write {i}: {result:?}"),
        }
    }
    assert_nothing_held(&table, &qp);
}

/// The queue pair is reset with writes in flight, some awaited and some dropped: the
/// awaited ones end flushed (woken once), the dropped ones' buffers are released, and the
/// completions found for that queue pair afterwards (a device that keeps them in the CQ,
/// as rxe does) change nothing, neither before the results are taken nor once the slots
/// serve another queue pair.
#[test]
fn completions_found_after_a_reset_change_nothing() {
    let signal_every = 16;
    let mut table = SlotTable::new(1024);
    let qp = QpStatus::for_qp(QPN, signal_every);
    let ops: Vec<Posted> = (0..20).map(|_| post_write(&mut table, &qp)).collect();
    let released = Arc::new(AtomicUsize::new(0));
    let dropped = [3, 16, 18]; // unsignaled, signaled, unsignaled
    for &i in &dropped {
        assert!(
            table
                .abandon(ops[i].id, Box::new(Buffers(released.clone())))
                .is_none(),
            "in flight: the slot keeps the buffers"
        );
    }

    let cause = Arc::new(Error::WorkCompletion {
        kind: WorkKind::Write,
        status: WcStatus::RETRY_EXC_ERR,
        vendor_err: 0,
        qpn: QPN,
        remote: None,
    });
    let mut wake = WakeList::new();
    let mut wakers = Vec::new();
    table.end_owner(&qp, Some(&cause), &mut wake, &mut wakers);
    wake.run();
    wakers.into_iter().for_each(Waker::wake);
    assert_eq!(released.load(Ordering::SeqCst), dropped.len());

    // What the device left in the CQ for the reset queue pair: successes and flushes.
    let stale: Vec<ibv_wc> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| {
            let status = if i < 10 {
                WcStatus::SUCCESS
            } else {
                WcStatus::WR_FLUSH_ERR
            };
            completion(op.id, status, QPN)
        })
        .collect();
    assert!(poll_batch(&mut table, &stale, None).is_none());

    for (i, op) in ops.iter().enumerate() {
        if dropped.contains(&i) {
            assert_eq!(op.wakeups(), 0, "write {i} was dropped");
            continue;
        }
        assert_eq!(op.wakeups(), 1, "write {i}");
        let result = table.take_done(op.id).expect("ended by the reset");
        let err = result.expect_err("a write in flight at the reset is flushed");
        assert!(
            matches!(&*err, Error::Flushed { cause: Some(c), .. } if Arc::ptr_eq(c, &cause)),
            "write {i}: {err}"
        );
    }
    assert_nothing_held(&table, &qp);

    // The slots now serve another queue pair; the old completions come again.
    let other = QpStatus::for_qp(QPN + 1, signal_every);
    let fresh: Vec<Posted> = (0..20).map(|_| post_write(&mut table, &other)).collect();
    assert!(poll_batch(&mut table, &stale, None).is_none());
    for (i, op) in fresh.iter().enumerate() {
        assert_eq!(op.wakeups(), 0, "new write {i} woken by a stale completion");
        assert!(table.take_done(op.id).is_none(), "new write {i} done early");
    }
    assert_eq!(released.load(Ordering::SeqCst), dropped.len());
    let last_signaled = fresh.iter().rev().find(|op| op.signaled).unwrap();
    let rest: Vec<ibv_wc> = fresh
        .iter()
        .filter(|op| op.signaled)
        .map(|op| completion(op.id, WcStatus::SUCCESS, QPN + 1))
        .collect();
    assert!(poll_batch(&mut table, &rest, None).is_none());
    let after_last = fresh
        .iter()
        .position(|op| op.id == last_signaled.id)
        .unwrap();
    for op in &fresh[..=after_last] {
        assert_eq!(op.wakeups(), 1);
        assert!(matches!(table.take_done(op.id), Some(Ok(_))));
    }
    // The unsignaled tail waits for a fence that this test does not post.
    assert!(fresh[after_last + 1..].iter().all(|op| op.wakeups() == 0));
}

/// The CQ's driver leaves the CQ unarmed while no task waits, so the count of waiting tasks
/// must follow every way a wait ends: the completion dispatched to its task, or taken by the
/// polling task itself, the task giving up its wait, the future dropped. A task that
/// registers again counts once. Otherwise a task would sleep on an unarmed CQ (a count too
/// low), or the CQ would stay armed for nobody (too high).
#[test]
fn the_count_of_waiting_tasks_follows_every_way_a_wait_ends() {
    let mut table = SlotTable::new(1024);
    let qp = QpStatus::for_qp(QPN, 1);
    assert!(!table.has_waiters());
    let ops: Vec<Posted> = (0..4).map(|_| post_write(&mut table, &qp)).collect();
    assert!(table.has_waiters());
    // The same task again, then another task of the same operation: still one each.
    table.set_waker(ops[0].id, &Waker::from(ops[0].task.clone()));
    let other = Arc::new(CountingWaker::default());
    table.set_waker(ops[0].id, &Waker::from(other.clone()));
    assert!(table.forget_waker(ops[1].id, &Waker::from(ops[1].task.clone())));
    assert!(table.abandon(ops[2].id, Box::new(())).is_none());
    let wcs: Vec<ibv_wc> = ops
        .iter()
        .map(|op| completion(op.id, WcStatus::SUCCESS, QPN))
        .collect();
    // ops[3] waits until its completion is dispatched, which ops[0]'s own poll finds.
    assert!(table.has_waiters());
    assert!(poll_batch(&mut table, &wcs[..3], Some(ops[0].id)).is_some());
    assert!(table.has_waiters(), "ops[3] still waits");
    assert!(poll_batch(&mut table, &wcs[3..], None).is_none());
    assert!(!table.has_waiters());
    assert_eq!(ops[3].wakeups(), 1);
    table
        .take_done(ops[1].id)
        .expect("done")
        .expect("a success");
    table
        .take_done(ops[3].id)
        .expect("done")
        .expect("a success");
    assert_nothing_held(&table, &qp);
}

/// A receive's completion keeps every field a datagram's sender reports, at their widest
/// (24-bit queue pair number, 4-bit service level), and its immediate data, through the
/// packed `WcInfo`; a send's keeps none of them.
#[test]
fn a_completion_keeps_the_immediate_and_the_datagram_sender() {
    // SAFETY: ibv_wc is a plain C struct (integers and a union of integers): all zeroes is a
    // valid value.
    let mut wc: ibv_wc = unsafe { std::mem::zeroed() };
    wc.opcode = ibv_wc_opcode::IBV_WC_RECV;
    wc.byte_len = 1064;
    wc.wc_flags = ibv_wc_flags::IBV_WC_WITH_IMM.0 | ibv_wc_flags::IBV_WC_GRH.0;
    wc.imm_data_invalidated_rkey_union.imm_data = 0xdead_beef_u32.to_be();
    wc.src_qp = 0x00ff_fffe;
    wc.qp_num = 0x00ab_cdef;
    wc.slid = 0xfffe;
    wc.sl = 15;
    wc.pkey_index = 0xfffd;
    let info = WcInfo::from_wc(&wc, true);
    assert_eq!(info.byte_len, 1064);
    assert_eq!(info.imm(), Some(0xdead_beef));
    assert!(!info.write_with_imm());
    let source = info.datagram();
    assert_eq!(
        (
            source.src_qp,
            source.qp_num,
            source.grh,
            source.slid,
            source.sl,
            source.pkey_index
        ),
        (0x00ff_fffe, 0x00ab_cdef, true, 0xfffe, 15, 0xfffd)
    );

    wc.opcode = ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM;
    wc.wc_flags = ibv_wc_flags::IBV_WC_WITH_IMM.0;
    wc.imm_data_invalidated_rkey_union.imm_data = 0;
    let info = WcInfo::from_wc(&wc, true);
    assert_eq!((info.imm(), info.write_with_imm()), (Some(0), true));
    assert!(!info.datagram().grh);

    wc.wc_flags = 0;
    let sent = WcInfo::from_wc(&wc, false);
    assert_eq!(sent.imm(), None);
    let source = sent.datagram();
    assert_eq!(
        (source.src_qp, source.qp_num, source.sl, source.slid),
        (0, 0, 0, 0)
    );
}

#[test]
fn a_completion_report_stays_small() {
    // It is moved on every completion (see WcInfo): 20 bytes, and its Result no larger than
    // before the datagram fields came.
    assert_eq!(std::mem::size_of::<WcInfo>(), 20);
    assert_eq!(std::mem::size_of::<SlotResult>(), 24);
}
