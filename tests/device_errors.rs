//! Bad input and failures give the right typed error, promptly, and lose nothing.

mod support;

use std::time::{Duration, Instant};

use anyrdma::{Access, ConnectOptions, CqOptions, Error, QpOptions, RemoteRegion, WcStatus};
use support::{within, Pair, Rt};

async fn wrong_rkey_is_a_remote_access_error(rt: Rt) {
    if !support::device_present("wrong_rkey_is_a_remote_access_error") {
        return;
    }
    let pair = Pair::new();
    let region = pair.pd.alloc_shared(4096, Access::REMOTE_WRITE).unwrap();
    let good = region.remote().unwrap();
    let forged = RemoteRegion {
        rkey: good.rkey ^ 0x5a5a_0000,
        ..good
    };
    let (result, buf) = within(
        20,
        "write with a wrong rkey",
        pair.a.write(pair.patterned(64, 1), forged),
    )
    .await;
    let err = result.expect_err("a wrong rkey must fail");
    assert_eq!(
        err.wc_status(),
        Some(WcStatus::REM_ACCESS_ERR),
        "{}: {err}",
        rt.name()
    );
    assert!(
        matches!(&err, Error::WorkCompletion { remote: Some(r), .. } if *r == forged),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("remote access") && text.contains(&format!("{:#x}", forged.rkey)),
        "message: {text}"
    );
    assert_eq!(buf.len(), 64, "the buffer comes back");
    assert!(pair.a.failure().is_some(), "the queue pair is now in error");
}

async fn queue_pair_error_fails_everything_fast(rt: Rt) {
    if !support::device_present("queue_pair_error_fails_everything_fast") {
        return;
    }
    let pair = Pair::new();
    // Receives pending on a when a fails.
    let pending: Vec<_> = (0..16)
        .map(|_| pair.a.recv(pair.pd.alloc(256, Access::LOCAL).unwrap()))
        .collect();
    let forged = RemoteRegion {
        addr: 4096,
        len: 4096,
        rkey: 0xdead,
    };
    let (result, _) = within(
        20,
        "failing write",
        pair.a.write(pair.patterned(8, 1), forged),
    )
    .await;
    assert_eq!(
        result.unwrap_err().wc_status(),
        Some(WcStatus::REM_ACCESS_ERR)
    );
    let started = Instant::now();
    for op in pending {
        let (result, buf) = within(10, "flushed receive", op).await;
        let err = result.expect_err("a receive of a failed queue pair is flushed");
        assert!(
            matches!(&err, Error::Flushed { cause: Some(_), .. }),
            "{}: {err:?}",
            rt.name()
        );
        assert_eq!(
            err.root_cause().wc_status(),
            Some(WcStatus::REM_ACCESS_ERR),
            "the flush names the original failure"
        );
        assert_eq!(buf.len(), 256);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "flushes took {:?}",
        started.elapsed()
    );
    // New work fails at once, with the cause, and nothing is posted.
    let (result, _) = pair.a.send(pair.patterned(8, 2)).await;
    let err = result.expect_err("posting on a failed queue pair");
    assert!(matches!(&err, Error::QpInError { .. }), "{err:?}");
    assert_eq!(err.root_cause().wc_status(), Some(WcStatus::REM_ACCESS_ERR));
    assert_eq!(pair.cq_a.in_flight(), 0, "nothing left in flight");
}

async fn send_without_receive_is_rnr_error(rt: Rt) {
    if !support::device_present("send_without_receive_is_rnr_error") {
        return;
    }
    // rnr_retry 2 with a 1.28 ms timer: the error must come within a few ms of device time.
    let connect = ConnectOptions {
        rnr_retry: 2,
        min_rnr_timer: 14,
        ..ConnectOptions::default()
    };
    let pair = Pair::with(CqOptions::default(), QpOptions::default(), connect);
    let started = Instant::now();
    let (result, _) = within(
        20,
        "send to a peer with no receive",
        pair.a.send(pair.patterned(32, 1)),
    )
    .await;
    let err = result.expect_err("no receive posted");
    assert_eq!(
        err.wc_status(),
        Some(WcStatus::RNR_RETRY_EXC_ERR),
        "{}: {err}",
        rt.name()
    );
    assert!(
        err.to_string().contains("no receive posted"),
        "message: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "RNR error took {:?}",
        started.elapsed()
    );
}

async fn full_queues_and_unconnected_pairs_are_typed_errors(rt: Rt) {
    if !support::device_present("full_queues_and_unconnected_pairs_are_typed_errors") {
        return;
    }
    let options = QpOptions {
        max_recv_wr: 4,
        ..QpOptions::default()
    };
    let pair = Pair::with(CqOptions::default(), options, ConnectOptions::default());
    let depth = pair.b.caps().max_recv_wr as usize;
    let mut posted: Vec<_> = (0..depth)
        .map(|_| pair.b.recv(pair.pd.alloc(64, Access::LOCAL).unwrap()))
        .collect();
    let (result, buf) = pair.b.recv(pair.pd.alloc(64, Access::LOCAL).unwrap()).await;
    assert!(
        matches!(
            result,
            Err(Error::QueueFull {
                queue: "receive queue",
                ..
            })
        ),
        "{}: {result:?}",
        rt.name()
    );
    assert_eq!(buf.len(), 64, "the rejected buffer comes back");
    // Room comes back once a receive completes.
    let (sent, _) = within(20, "send", pair.a.send(pair.patterned(8, 1))).await;
    sent.unwrap();
    let (got, _) = within(20, "recv", posted.remove(0)).await;
    got.unwrap();
    let again = pair.b.recv(pair.pd.alloc(64, Access::LOCAL).unwrap());
    drop(again);

    // A queue pair that was never connected refuses to send, and posts nothing.
    let lonely =
        anyrdma::core::QueuePair::new(&pair.pd, &pair.cq_a, &pair.cq_a, QpOptions::default())
            .unwrap();
    let (result, _) = lonely.send(pair.patterned(8, 1)).await;
    assert!(
        matches!(result, Err(Error::NotConnected { .. })),
        "{result:?}"
    );
}

/// An application shutdown flushes what is pending and refuses new work, saying why.
async fn shutdown_flushes_pending_work(rt: Rt) {
    if !support::device_present("shutdown_flushes_pending_work") {
        return;
    }
    let pair = Pair::new();
    let pending: Vec<_> = (0..4)
        .map(|_| pair.b.recv(pair.pd.alloc(64, Access::LOCAL).unwrap()))
        .collect();
    pair.b.shutdown().expect("shutdown");
    for op in pending {
        let (result, _) = within(10, "flushed by shutdown", op).await;
        let err = result.expect_err("flushed");
        assert!(
            matches!(
                err.root_cause(),
                Error::Shutdown {
                    reason: anyrdma::QpShutdownReason::Application,
                    ..
                }
            ),
            "{}: {err:?}",
            rt.name()
        );
    }
    let (result, _) = pair.b.recv(pair.pd.alloc(64, Access::LOCAL).unwrap()).await;
    assert!(matches!(result, Err(Error::QpInError { .. })), "{result:?}");
    assert_eq!(pair.cq_b.in_flight(), 0);
}

/// An atomic whose local buffer is not 8 bytes is refused as such (not as a misaligned
/// address), alone or in a batch, and nothing is posted.
async fn atomic_with_a_wrong_local_length_is_its_own_error(rt: Rt) {
    if !support::device_present("atomic_with_a_wrong_local_length_is_its_own_error") {
        return;
    }
    let pair = Pair::new();
    assert!(pair.ctx.limits().atomics, "the device has atomics");
    let word = pair.pd.alloc_shared(8, Access::REMOTE_ATOMIC).unwrap();
    let remote = word.remote().unwrap();
    let (result, buf) = pair
        .a
        .compare_and_swap(pair.pd.alloc(16, Access::LOCAL).unwrap(), remote, 0, 1)
        .await;
    assert!(
        matches!(result, Err(Error::AtomicBufferLen { len: 16 })),
        "{}: {result:?}",
        rt.name()
    );
    assert_eq!(buf.len(), 16, "the buffer comes back");
    let (result, bufs) = pair
        .a
        .batch()
        .write(pair.patterned(8, 1), remote)
        .fetch_and_add(pair.pd.alloc(4, Access::LOCAL).unwrap(), remote, 1)
        .submit()
        .await;
    assert!(
        matches!(result, Err(Error::AtomicBufferLen { len: 4 })),
        "{result:?}"
    );
    assert_eq!(bufs.len(), 2, "the batch's buffers come back");
    assert_eq!(pair.cq_a.in_flight(), 0, "nothing was posted");
    assert!(pair.a.failure().is_none(), "the queue pair is healthy");
    let (result, old) = within(
        20,
        "a correct atomic",
        pair.a
            .fetch_and_add(pair.pd.alloc(8, Access::LOCAL).unwrap(), remote, 5),
    )
    .await;
    assert_eq!(result.unwrap(), 0);
    assert_eq!(old.len(), 8);
}

runtime_tests!(
    atomic_with_a_wrong_local_length_is_its_own_error,
    shutdown_flushes_pending_work,
    wrong_rkey_is_a_remote_access_error,
    queue_pair_error_fails_everything_fast,
    send_without_receive_is_rnr_error,
    full_queues_and_unconnected_pairs_are_typed_errors,
);

/// An allocation whose length cannot be laid out, or that the system cannot provide, is a
/// typed error, never a wrapped size.
#[test]
fn huge_allocations_are_typed_errors() {
    if !support::device_present("huge_allocations_are_typed_errors") {
        return;
    }
    let pd = anyrdma::Context::open_default()
        .expect("open device")
        .alloc_pd()
        .expect("alloc pd");
    for len in [usize::MAX, isize::MAX as usize + 1] {
        let result = pd.alloc(len, Access::LOCAL);
        assert!(
            matches!(&result, Err(Error::TooLarge { len: l, .. }) if *l == len),
            "{len}: {result:?}"
        );
    }
    // 2^60 bytes: a valid layout, but beyond any process's address space.
    let result = pd.alloc(1 << 60, Access::LOCAL);
    assert!(
        matches!(result, Err(Error::OutOfMemory { requested }) if requested == 1 << 60),
        "{result:?}"
    );
    // The domain still works.
    assert_eq!(pd.alloc(4096, Access::LOCAL).unwrap().len(), 4096);
}

/// Opening a device that does not exist lists the ones that do.
#[test]
fn a_missing_device_lists_the_present_ones() {
    if !support::device_present("a_missing_device_lists_the_present_ones") {
        return;
    }
    let err = anyrdma::Context::open("mlx5_nonexistent").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("mlx5_nonexistent") && text.contains("rxe0") && text.contains("rxe_lo"),
        "{text}"
    );
    assert!(
        matches!(&err, Error::NoDevice { wanted: Some(name), available }
            if name == "mlx5_nonexistent" && available.len() >= 2),
        "{err:?}"
    );
}

/// A bad `ANYRDMA_DEVICE` names the variable and lists the devices present, whatever is
/// wrong with it. The variable is set in a child process: the environment is process-wide.
#[test]
fn a_bad_device_variable_is_named_with_the_devices_present() {
    if std::env::var_os("ANYRDMA_DEVICE_CHILD").is_some() {
        match anyrdma::default_port() {
            Ok(chosen) => println!("CHOSEN: {chosen}"),
            Err(err @ Error::BadDeviceEnv { .. }) => println!("DEVICE-ERROR: {err}"),
            Err(other) => println!("OTHER-ERROR: {other:?}"),
        }
        return;
    }
    if !support::device_present("a_bad_device_variable_is_named_with_the_devices_present") {
        return;
    }
    for value in [
        "mlx5_nonexistent",
        "rxe0:9",
        "rxe0:1:77",
        "rxe0:0",
        "rxe0:1:1:1",
    ] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_bad_device_variable_is_named_with_the_devices_present",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ANYRDMA_DEVICE_CHILD", "1")
            .env(anyrdma::DEVICE_ENV, value)
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("DEVICE-ERROR: ").map(|(_, error)| error))
            .unwrap_or_else(|| panic!("{value}: no device error from the child:\n{stdout}"));
        assert!(
            line.contains(&format!("{}={value:?}", anyrdma::DEVICE_ENV)),
            "{value}: the message does not name the variable and its value: {line}"
        );
        assert!(
            line.contains("rxe0") && line.contains("rxe_lo"),
            "{value}: the message does not list the devices: {line}"
        );
    }
}

/// A process whose locked-memory limit is tiny, and which cannot bypass it, gets the
/// memlock error with the limit and the fix, not a panic or an obscure errno.
#[test]
fn memlock_limit_is_reported() {
    if std::env::var_os("ANYRDMA_MEMLOCK_CHILD").is_some() {
        return memlock_child();
    }
    if !support::device_present("memlock_limit_is_reported") {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "memlock_limit_is_reported",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ANYRDMA_MEMLOCK_CHILD", "1")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("MEMLOCK-ERROR:"),
        "child output:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("RLIMIT_MEMLOCK") && stdout.contains("65536"),
        "message lacks the limit:\n{stdout}"
    );
}

fn memlock_child() {
    let limit = libc::rlimit {
        rlim_cur: 65536,
        rlim_max: 65536,
    };
    // SAFETY: `limit` is a valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) }, 0);
    drop_ipc_lock_capability();
    let ctx = anyrdma::Context::open_default().expect("open device");
    let pd = ctx.alloc_pd().expect("alloc pd");
    match pd.alloc(4 << 20, Access::LOCAL) {
        Err(err @ Error::MemlockLimit { limit: 65536, .. }) => println!("MEMLOCK-ERROR: {err}"),
        other => panic!("expected the memlock error, got {other:?}"),
    }
}

/// Root (as in the test VM) bypasses RLIMIT_MEMLOCK through CAP_IPC_LOCK: drop it.
fn drop_ipc_lock_capability() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_IPC_LOCK: u32 = 14;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header take two Data entries.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << CAP_IPC_LOCK);
        data[0].permitted &= !(1 << CAP_IPC_LOCK);
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            0,
            "capset"
        );
    }
}
