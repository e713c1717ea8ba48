//! Device failures caused for real in the guest end every pending operation with a typed
//! error, and the device's asynchronous events reach `Context::next_event`.
//!
//! - The network device under rxe0 goes down: the port reports an error, every operation
//!   that needs the wire fails (rxe at once, with a local error, as it cannot transmit; a NIC
//!   once its retries run out, within 2 s with the default options), and the queue pair's
//!   receives are flushed. It comes back up: the port is
//!   active again.
//! - The network device under rxe0 is deleted: rxe sends only a GID change, after which the
//!   port can no longer be queried; anyrdma reports the device as going away and fails every
//!   queue pair, whose pending operations all end within 2 s. Once the objects are dropped,
//!   the deletion (which waits for every process to close the device) completes. The device
//!   is then created again for the tests that follow.
//!
//! (`rdma link delete rxe0` cannot be used: rxe sends no event at all for it.)
//!
//! These tests change the guest's network, so they take a lock and run one at a time.

mod support;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyrdma::{
    registered_regions, timeout, Access, ConnectOptions, Context, CqOptions, DeviceEventKind,
    Error, PortState, QpOptions,
};
use support::{within, Pair, Rt};

/// The device and network device of the guest these tests fail.
const DEVICE: &str = "rxe0";
const NETDEV: &str = "dummy0";
/// How long every pending operation may take to end after the failure.
const DEADLINE: Duration = Duration::from_secs(2);

/// Held for the whole of each test (each runs on its own runtime, in its own thread): it
/// orders tests, not tasks, so holding it across awaits blocks no task of the test.
static NETWORK: Mutex<()> = Mutex::new(());

fn run(command: &str) {
    let status = Command::new("sh")
        .args(["-c", command])
        .status()
        .unwrap_or_else(|e| panic!("cannot run `{command}`: {e}"));
    assert!(status.success(), "`{command}` failed: {status}");
}

/// Whether the guest's rxe0 is here to be failed.
fn rxe0_present(test: &str) -> bool {
    if !support::device_present(test) {
        return false;
    }
    let present = anyrdma::devices()
        .map(|devices| devices.iter().any(|d| d.name == DEVICE))
        .unwrap_or(false);
    if !present && std::env::var_os("ANYRDMA_REQUIRE_DEVICE").is_some() {
        panic!("{test}: the guest has no {DEVICE} to fail");
    }
    present
}

/// A connected pair on `ctx`, bound to `rt`, and the context.
fn pair_on(ctx: Context, rt: Rt) -> (Context, Pair) {
    let ctx = ctx.with_runtime(rt.handle());
    let pair = Pair::on(
        ctx.clone(),
        CqOptions::default(),
        QpOptions::default(),
        ConnectOptions::default(),
    );
    (ctx, pair)
}

/// Waits for the next event of `ctx` that `wanted` accepts, skipping others.
async fn event_where(ctx: &Context, wanted: impl Fn(DeviceEventKind) -> bool) -> DeviceEventKind {
    loop {
        let event = ctx.next_event().await.expect("next_event");
        assert_eq!(event.device, DEVICE);
        if wanted(event.kind) {
            return event.kind;
        }
    }
}

/// The operations of every kind `pair.a` can have pending, each resolved to its error (or
/// to a panic if one succeeds), with how long each took from `since`.
async fn fail_everything_pending(rt: Rt, pair: &Pair, what: &str) -> Vec<(String, Error)> {
    let target = pair
        .pd
        .alloc_shared(
            4096,
            Access::LOCAL | Access::REMOTE_READ | Access::REMOTE_WRITE | Access::REMOTE_ATOMIC,
        )
        .unwrap();
    let remote = target.remote().unwrap();
    let word = remote.slice(0..8).unwrap();
    let recv = pair.a.recv(pair.pd.alloc(64, Access::LOCAL).unwrap());
    let send = pair.a.send(pair.patterned(64, 1));
    let write = pair
        .a
        .write(pair.patterned(512, 2), remote.slice(8..520).unwrap());
    let read = pair.a.read(
        pair.pd.alloc(512, Access::LOCAL).unwrap(),
        remote.slice(0..512).unwrap(),
    );
    let atomic = pair
        .a
        .fetch_and_add(pair.pd.alloc(8, Access::LOCAL).unwrap(), word, 1);
    let started = Instant::now();
    let outcome = |name: &str, result: anyrdma::Result<()>| {
        let err = result.expect_err(&format!("{}: {what}: the {name} succeeded", rt.name()));
        (name.to_string(), err)
    };
    let (r, s, w, rd, a) = within(5, what, async {
        let (r, _) = recv.await;
        let (s, _) = send.await;
        let (w, _) = write.await;
        let (rd, _) = read.await;
        let (a, _) = atomic.await;
        (r.map(drop), s, w, rd, a.map(drop))
    })
    .await;
    let took = started.elapsed();
    assert!(
        took <= DEADLINE,
        "{}: {what}: the last pending operation ended after {took:?}",
        rt.name()
    );
    drop(target);
    vec![
        outcome("receive", r),
        outcome("send", s),
        outcome("write", w),
        outcome("read", rd),
        outcome("atomic", a),
    ]
}

#[allow(clippy::await_holding_lock)] // NETWORK orders tests, not tasks
async fn port_down_fails_pending_operations(rt: Rt) {
    // Locked before rxe0 is looked for: the other tests of the network take it away and
    // bring it back while they hold the lock.
    let _network = NETWORK.lock().unwrap_or_else(|p| p.into_inner());
    if !rxe0_present("port_down_fails_pending_operations") {
        return;
    }
    let baseline = registered_regions();
    let (ctx, pair) = pair_on(Context::open(DEVICE).unwrap(), rt);
    // A write first: the pair works before the failure.
    let landing = pair.pd.alloc_shared(8, Access::REMOTE_WRITE).unwrap();
    let (written, _) = pair
        .a
        .write(pair.patterned(8, 3), landing.remote().unwrap())
        .await;
    written.expect("a write before the failure");

    run(&format!("ip link set {NETDEV} down"));
    let restore = Restore(format!("ip link set {NETDEV} up"));
    let errors = fail_everything_pending(rt, &pair, "port down").await;
    for (name, err) in &errors {
        let typed = matches!(err, Error::WorkCompletion { .. } | Error::Flushed { .. });
        assert!(
            typed,
            "{}: port down: the {name} ended with {err:?}",
            rt.name()
        );
    }
    // The first request on the wire reports how it failed (rxe: a local QP operation error,
    // as it cannot transmit; a NIC: retries exceeded); the queue pair is then in error and
    // everything else on it is flushed with that as the cause.
    assert!(
        errors
            .iter()
            .any(|(_, err)| matches!(err, Error::WorkCompletion { .. })),
        "{}: port down: no operation reported its own failure: {errors:?}",
        rt.name()
    );
    assert!(
        errors.iter().all(|(_, err)| match err {
            Error::Flushed { cause, .. } => cause.is_some(),
            _ => true,
        }),
        "{}: port down: a flushed operation does not say why: {errors:?}",
        rt.name()
    );
    let kind = within(
        2,
        "the port error event",
        event_where(&ctx, |k| matches!(k, DeviceEventKind::PortError { .. })),
    )
    .await;
    assert_eq!(kind, DeviceEventKind::PortError { port: ctx.port() });
    assert_eq!(ctx.port_state().unwrap(), PortState::Down);

    drop(restore);
    within(
        5,
        "the port active event",
        event_where(&ctx, |k| matches!(k, DeviceEventKind::PortActive { .. })),
    )
    .await;
    assert_eq!(ctx.port_state().unwrap(), PortState::Active);
    drop((pair, landing));
    drop(ctx);
    assert_eq!(
        registered_regions(),
        baseline,
        "{}: memory regions left registered",
        rt.name()
    );
}

#[allow(clippy::await_holding_lock)] // NETWORK orders tests, not tasks
async fn deleted_netdev_fails_everything(rt: Rt) {
    // Locked before rxe0 is looked for: the other tests of the network take it away and
    // bring it back while they hold the lock.
    let _network = NETWORK.lock().unwrap_or_else(|p| p.into_inner());
    if !rxe0_present("deleted_netdev_fails_everything") {
        return;
    }
    let baseline = registered_regions();
    let (ctx, pair) = pair_on(Context::open(DEVICE).unwrap(), rt);
    let b_recv = pair.b.recv(pair.pd.alloc(64, Access::LOCAL).unwrap());

    // The deletion waits until every process has closed the device: run it aside.
    let mut recreate = Recreate(Some(
        Command::new("ip")
            .args(["link", "del", NETDEV])
            .spawn()
            .expect("run ip link del"),
    ));
    // Nobody reads the device's events but the receive's own wait: its CQ poller must see
    // the removal and fail the queue pair, within 2 s.
    let (b_result, _) = within(2, "b's receive", b_recv).await;
    assert!(
        matches!(&b_result, Err(Error::Flushed { cause: Some(cause), .. })
            if matches!(**cause, Error::DeviceEvent { event: DeviceEventKind::DeviceRemoved, .. })),
        "{}: b's pending receive ended with {b_result:?}",
        rt.name()
    );
    // The events were queued for the application too.
    let removed = within(
        2,
        "the device-removed event",
        event_where(&ctx, |k| k == DeviceEventKind::DeviceRemoved),
    )
    .await;
    assert_eq!(removed, DeviceEventKind::DeviceRemoved);
    assert!(
        ctx.failure().is_some(),
        "{}: the context is not failed",
        rt.name()
    );

    let errors = fail_everything_pending(rt, &pair, "device removed").await;
    for (name, err) in &errors {
        let caused_by_removal = match err {
            Error::Flushed {
                cause: Some(cause), ..
            }
            | Error::QpInError { cause, .. } => {
                matches!(
                    **cause,
                    Error::DeviceEvent {
                        event: DeviceEventKind::DeviceRemoved,
                        ..
                    }
                )
            }
            _ => false,
        };
        assert!(
            caused_by_removal,
            "{}: device removed: the {name} ended with {err:?}",
            rt.name()
        );
    }

    drop(pair);
    drop(ctx);
    assert_eq!(
        registered_regions(),
        baseline,
        "{}: memory regions left registered",
        rt.name()
    );
    // Every object is gone, so the device closes and the deletion can finish.
    let status = recreate.wait_for_deletion();
    assert!(
        matches!(status, Some(status) if status.success()),
        "{}: `ip link del {NETDEV}` did not finish ({status:?}): the device was not closed",
        rt.name()
    );
}

/// The running `ip link del` of the network device under rxe0; dropped (also on a panic), it
/// waits for the deletion to finish and creates both again for the tests that follow.
struct Recreate(Option<std::process::Child>);

impl Recreate {
    /// Waits up to 10 s for the deletion; its exit status, or None if it still waits.
    fn wait_for_deletion(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.0.as_mut()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().ok().flatten() {
                self.0 = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Recreate {
    fn drop(&mut self) {
        if self.0.is_some() && self.wait_for_deletion().is_none() {
            return; // still blocked: nothing can be created again
        }
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ip link add {NETDEV} type dummy && ip link set {NETDEV} up && \
                     ip addr add 169.254.77.1/16 dev {NETDEV} && \
                     rdma link add {DEVICE} type rxe netdev {NETDEV}"
                ),
            ])
            .status();
    }
}

/// Runs a command that puts the guest's network back, when dropped (also on a panic).
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = Command::new("sh").args(["-c", &self.0]).status();
    }
}

/// A peer's write into memory it may only read breaks the responder's access rights: the
/// requester's write fails with a remote access error, and the responder's queue pair goes to
/// the error state, so its pending receive ends (flushed) instead of waiting forever. A device
/// that reports the violation with an access-error event (the specification's "local access
/// violation" event; mlx5 sends it, Soft-RoCE does not) makes that event the cause.
#[allow(clippy::await_holding_lock)] // NETWORK orders tests, not tasks
async fn access_violation_fails_the_responder(rt: Rt) {
    // Not to see the port and GID events the other tests cause, nor look for the device
    // while one of them takes it away.
    let _network = NETWORK.lock().unwrap_or_else(|p| p.into_inner());
    if !support::device_present("access_violation_fails_the_responder") {
        return;
    }
    let (ctx, pair) = pair_on(Context::open_default().unwrap(), rt);
    let inbox = pair.b.recv(pair.pd.alloc(64, Access::LOCAL).unwrap());
    let read_only = pair.pd.alloc(64, Access::REMOTE_READ).unwrap();
    let forbidden = pair
        .a
        .write(pair.patterned(64, 4), read_only.remote().unwrap());
    let (written, _) = within(5, "the forbidden write", forbidden).await;
    assert!(
        matches!(written, Err(Error::WorkCompletion { status, .. })
            if status == anyrdma::WcStatus::REM_ACCESS_ERR),
        "{}: the forbidden write ended with {written:?}",
        rt.name()
    );
    let (received, _) = within(DEADLINE.as_secs(), "b's receive", inbox).await;
    let Err(Error::Flushed { cause, qpn, .. }) = received else {
        panic!("{}: b's pending receive ended with {received:?}", rt.name());
    };
    assert_eq!(qpn, pair.b.qpn());
    let qp_event = event_where(&ctx, |kind| {
        matches!(
            kind,
            DeviceEventKind::QpFatal { .. }
                | DeviceEventKind::QpRequestError { .. }
                | DeviceEventKind::QpAccessError { .. }
        )
    });
    if let Ok(kind) = timeout(Duration::from_millis(500), qp_event).await {
        assert_eq!(
            kind,
            DeviceEventKind::QpAccessError { qpn: pair.b.qpn() },
            "{}",
            rt.name()
        );
        let failure = pair.b.failure().expect("the event fails b");
        assert!(matches!(*failure, Error::DeviceEvent { .. }), "{failure:?}");
        assert!(cause.is_some(), "{}: the flush does not say why", rt.name());
    }
}

runtime_tests!(
    port_down_fails_pending_operations,
    deleted_netdev_fails_everything,
    access_violation_fails_the_responder
);
