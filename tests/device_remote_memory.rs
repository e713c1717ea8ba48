//! Memory across machines (`anyrdma::remote_memory`): grants used with one-sided operations,
//! keys that reach exactly the granted range, requests under the owner's policy, revocation,
//! leases and their renewal, and a peer that goes away: checked on the device, with the
//! process's registrations counted before and after.

// The lock below orders the tests of this binary (each holds it across its awaits), not
// tasks.
#![allow(clippy::await_holding_lock)]

mod support;

use std::sync::Mutex;
use std::time::Duration;

use anyrdma::msg::{Messenger, MessengerOptions};
use anyrdma::remote_memory::{
    Control, ControlProblem, GrantPolicy, GrantProblem, MemorySession, RefuseReason, RevokeReason,
    Rights, SessionOptions,
};
use anyrdma::{registered_regions, Access, Error, LocalBuf, WcStatus};
use support::{within, HandPolled, Pair, Rt, SharedCqPairs};

/// The registration count is the process's: the tests of this binary run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// A session's serve loop, running in a task of its own.
type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = anyrdma::Result<()>> + Send>>;

fn serve(rt: Rt, session: &MemorySession) -> Serving {
    let session = session.clone();
    rt.spawn(async move { session.serve().await })
}

/// A messenger on each queue pair of `pair`.
fn messengers(pair: &Pair) -> (Messenger, Messenger) {
    let options = MessengerOptions {
        depth: 16,
        ..MessengerOptions::default()
    };
    let a = Messenger::new(&pair.a, options).expect("messenger a");
    let b = Messenger::new(&pair.b, options).expect("messenger b");
    (a, b)
}

/// A session on each side of a loopback pair, each serving in a task of its own.
struct Sessions {
    pair: Pair,
    owner: MemorySession,
    holder: MemorySession,
    owner_serve: Serving,
    holder_serve: Serving,
}

fn sessions(rt: Rt, policy: GrantPolicy) -> Sessions {
    let pair = Pair::new();
    let (a, b) = messengers(&pair);
    let owner = MemorySession::new(
        a,
        SessionOptions {
            policy,
            answer_timeout: Duration::from_secs(10),
        },
    );
    let holder = MemorySession::new(b, SessionOptions::default());
    Sessions {
        owner_serve: serve(rt, &owner),
        holder_serve: serve(rt, &holder),
        pair,
        owner,
        holder,
    }
}

impl Sessions {
    /// Closes both sides and waits for their serve loops, which end cleanly unless the
    /// connection failed first; then nothing they registered may be left.
    async fn close(self, before: usize) {
        self.owner.close();
        self.holder.close();
        let owner = within(10, "the owner's serve", self.owner_serve).await;
        let holder = within(10, "the holder's serve", self.holder_serve).await;
        for (side, end) in [("owner", owner), ("holder", holder)] {
            if let Err(err) = end {
                assert!(
                    matches!(err, Error::SessionEnded { cause: Some(_) }),
                    "{side}: {err}"
                );
            }
        }
        assert_eq!(self.owner.granted(), 0, "the owner's grants end with it");
        drop((self.owner, self.holder, self.pair));
        // Buffers that a completion queue's driver found for dropped operations are released
        // on the driver's thread, a moment after the queue pair is gone: wait for them.
        until("registrations left behind are released", || {
            registered_regions() == before
        })
        .await;
    }
}

fn buf(pair: &Pair, bytes: &[u8]) -> LocalBuf {
    let mut buf = pair.pd.alloc(bytes.len(), Access::LOCAL).expect("alloc");
    buf.copy_from_slice(bytes);
    buf
}

/// Waits until `done` holds (state that the serve loops update), for up to 10 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        anyrdma::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 10 s: {what}");
}

fn check_problem(err: &Error, expected: GrantProblem) {
    match err {
        Error::GrantCheck { problem, .. } => assert_eq!(*problem, expected, "{err}"),
        other => panic!("expected a grant check ({expected:?}), got {other}"),
    }
}

/// A grant of a range in the middle of a region: the holder writes, reads and runs both
/// atomics on it, and the owner sees the bytes; local checks refuse what falls outside
/// before posting; the key does not reach the bytes next to the range; releasing it
/// deregisters its key.
async fn grant_read_write_atomics_release(rt: Rt) {
    if !support::device_present("grant_read_write_atomics_release") {
        return;
    }
    let _serial = one_at_a_time();
    let before = registered_regions();
    let s = sessions(rt, GrantPolicy::default());
    let region = s.pair.pd.alloc_shared(8192, Access::LOCAL).expect("region");
    let grant = s
        .owner
        .grant(
            &region,
            4096..4096 + 256,
            Rights::READ | Rights::WRITE | Rights::ATOMIC,
            Some(Duration::from_secs(60)),
        )
        .expect("grant");
    assert_eq!(grant.region().len, 256);
    let exposed = s
        .pair
        .pd
        .alloc_shared(4096, Access::LOCAL | Access::REMOTE_WRITE)
        .expect("a region with a key of its own");
    let refused = s.owner.grant(&exposed, .., Rights::READ, None);
    assert!(
        matches!(refused, Err(Error::InvalidArgument(_))),
        "a region whose own key reaches all of it is not granted: {refused:?}"
    );
    drop(exposed);
    let held = within(10, "the grant to arrive", s.holder.next_grant())
        .await
        .expect("next grant");
    assert_eq!(held.region(), grant.region());
    assert_eq!(held.rights(), Rights::READ | Rights::WRITE | Rights::ATOMIC);
    assert!(held.expires().is_some());

    let data: Vec<u8> = (0..128u8).map(|i| i.wrapping_mul(7) ^ 0x5a).collect();
    let (result, _) = held.write(buf(&s.pair, &data), 0).await;
    result.expect("write into the grant");
    let mut seen = vec![0; 128];
    region.read_at(4096, &mut seen).expect("owner reads");
    assert_eq!(seen, data, "the owner sees the holder's write");
    let mut outside = vec![0xffu8; 64];
    region
        .read_at(4096 - 64, &mut outside)
        .expect("owner reads");
    assert!(
        outside.iter().all(|&b| b == 0),
        "nothing before the range was written"
    );

    let (result, back) = held
        .read(s.pair.pd.alloc(128, Access::LOCAL).unwrap(), 0)
        .await;
    result.expect("read from the grant");
    assert_eq!(&back[..], &data[..]);
    drop(back);

    region.store_u64(4096 + 128, 41).expect("store");
    let (previous, _) = held
        .fetch_and_add(s.pair.pd.alloc(8, Access::LOCAL).unwrap(), 128, 1)
        .await;
    assert_eq!(previous.expect("fetch and add"), 41);
    let (previous, _) = held
        .compare_and_swap(s.pair.pd.alloc(8, Access::LOCAL).unwrap(), 128, 42, 7)
        .await;
    assert_eq!(previous.expect("compare and swap"), 42);
    assert_eq!(region.load_u64(4096 + 128).unwrap(), 7);

    // Local checks: nothing is posted, the error names the problem.
    let (result, _) = held.write(buf(&s.pair, &[1; 2]), 255).await;
    check_problem(&result.unwrap_err(), GrantProblem::OutOfRange);
    let (result, _) = held
        .fetch_and_add(s.pair.pd.alloc(8, Access::LOCAL).unwrap(), 132, 1)
        .await;
    check_problem(&result.unwrap_err(), GrantProblem::Misaligned);
    let whole = held
        .check(0, 256, Rights::READ)
        .expect("all of the grant, read");
    assert_eq!(whole, held.region());
    let err = held.check(0, 8, Rights::READ | Rights::ATOMIC);
    assert!(err.is_ok(), "{err:?}");

    // The key reaches the granted range only: a write just before it, posted directly,
    // fails at the owner's device.
    let mut before_range = held.region();
    before_range.addr -= 64;
    let (result, _) = s
        .holder
        .queue_pair()
        .write(buf(&s.pair, &[9; 64]), before_range)
        .await;
    let err = result.expect_err("a write outside the granted range");
    assert_eq!(err.wc_status(), Some(WcStatus::REM_ACCESS_ERR), "{err}");
    region
        .read_at(4096 - 64, &mut outside)
        .expect("owner reads");
    assert!(
        outside.iter().all(|&b| b == 0),
        "the neighbouring bytes are untouched"
    );

    // That error failed the holder's queue pair; the sessions end, and what they
    // registered goes with them.
    drop((held, grant, region));
    s.close(before).await;
}

/// A grant released by the holder is forgotten by the owner (its key deregistered), and a
/// grant of the session's memory whose handle is dropped by the owner ends at the holder.
async fn release_and_revoke(rt: Rt) {
    if !support::device_present("release_and_revoke") {
        return;
    }
    let _serial = one_at_a_time();
    let before = registered_regions();
    let s = sessions(rt, GrantPolicy::default());
    let region = s.pair.pd.alloc_shared(4096, Access::LOCAL).expect("region");

    // A first grant and release, so that both messengers have sent (their pools register
    // memory on first use) before registrations are counted.
    let warm_up = s
        .owner
        .grant(&region, ..1024, Rights::READ, None)
        .expect("grant 0");
    s.holder
        .next_grant()
        .await
        .expect("grant 0 arrives")
        .release();
    until("the owner takes in the release", || !warm_up.is_live()).await;
    let base = registered_regions();

    // Released by the holder.
    let kept = s
        .owner
        .grant(&region, ..1024, Rights::READ, None)
        .expect("grant 1");
    let held = s.holder.next_grant().await.expect("grant 1 arrives");
    assert_eq!(registered_regions(), base + 1, "one key per grant");
    held.release();
    until("the owner takes in the release", || !kept.is_live()).await;
    assert_eq!(
        registered_regions(),
        base,
        "the released key is deregistered"
    );
    drop(kept);

    // Revoked by the owner: the key stops working at once, then the holder is told.
    let grant = s
        .owner
        .grant(&region, 1024..2048, Rights::WRITE, None)
        .expect("grant 2");
    let held = s.holder.next_grant().await.expect("grant 2 arrives");
    assert_eq!(registered_regions(), base + 1, "one key per grant");
    let (result, _) = held.write(buf(&s.pair, &[3; 16]), 0).await;
    result.expect("write before the revocation");
    grant.revoke();
    assert_eq!(
        registered_regions(),
        base,
        "revoked: deregistered before revoke returns"
    );
    until("the holder hears of the revocation", || {
        held.ended().is_some()
    })
    .await;
    assert_eq!(
        held.ended(),
        Some(GrantProblem::Revoked(RevokeReason::Revoked))
    );
    let (result, _) = held.write(buf(&s.pair, &[4; 16]), 0).await;
    check_problem(
        &result.unwrap_err(),
        GrantProblem::Revoked(RevokeReason::Revoked),
    );
    // Posted anyway, with the old key: the owner's device refuses it.
    let (result, _) = s
        .holder
        .queue_pair()
        .write(buf(&s.pair, &[4; 16]), held.region())
        .await;
    let err = result.expect_err("a write with a revoked key");
    assert_eq!(err.wc_status(), Some(WcStatus::REM_ACCESS_ERR), "{err}");
    let mut seen = [0u8; 16];
    region.read_at(1024, &mut seen).unwrap();
    assert_eq!(seen, [3; 16], "the write after the revocation did not land");
    drop((held, region));
    s.close(before).await;
}

/// Requests within the owner's policy are granted, the others refused with the reason that
/// names the limit; the memory of a granted request is usable and goes when released.
async fn requests_accepted_and_refused(rt: Rt) {
    if !support::device_present("requests_accepted_and_refused") {
        return;
    }
    let _serial = one_at_a_time();
    let before = registered_regions();
    let policy = GrantPolicy {
        max_bytes: 64 * 1024,
        max_regions: 2,
        rights: Rights::READ | Rights::WRITE,
        max_lease: Some(Duration::from_secs(60)),
        decide: Some(std::sync::Arc::new(|request| request.len != 777)),
        renew: None,
    };
    let s = sessions(rt, policy);
    let lease = Some(Duration::from_secs(30));
    let first = s
        .holder
        .request_region(4096, Rights::READ | Rights::WRITE, lease)
        .await
        .expect("a request within the policy");
    assert_eq!(first.len(), 4096);
    // The owner's serve answered: it runs, and a second one is refused.
    let second_serve = within(10, "a second serve", s.owner.serve()).await;
    assert!(
        matches!(second_serve, Err(Error::InvalidArgument(_))),
        "one serve loop at a time: {second_serve:?}"
    );
    let (result, _) = first.write(buf(&s.pair, &[0xab; 4096]), 0).await;
    result.expect("write into requested memory");
    let (result, back) = first
        .read(s.pair.pd.alloc(4096, Access::LOCAL).unwrap(), 0)
        .await;
    result.expect("read it back");
    assert!(back.iter().all(|&b| b == 0xab));
    drop(back);

    let refused = |result: anyrdma::Result<anyrdma::remote_memory::RemoteGrant>| match result {
        Err(Error::RegionRefused { reason }) => reason,
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(grant) => panic!("expected a refusal, got {grant:?}"),
    };
    let r = s.holder.request_region(4096, Rights::ATOMIC, lease).await;
    assert_eq!(refused(r), RefuseReason::AccessNotAllowed);
    let r = s.holder.request_region(1 << 20, Rights::READ, lease).await;
    assert_eq!(refused(r), RefuseReason::TooManyBytes);
    let r = s
        .holder
        .request_region(4096, Rights::READ, Some(Duration::from_secs(3600)))
        .await;
    assert_eq!(refused(r), RefuseReason::LeaseTooLong);
    let r = s.holder.request_region(4096, Rights::READ, None).await;
    assert_eq!(
        refused(r),
        RefuseReason::LeaseTooLong,
        "no lease is longer than 60 s"
    );
    let r = s.holder.request_region(777, Rights::READ, lease).await;
    assert_eq!(refused(r), RefuseReason::Declined);
    let second = s
        .holder
        .request_region(8192, Rights::READ, lease)
        .await
        .expect("a second region");
    let r = s.holder.request_region(16, Rights::READ, lease).await;
    assert_eq!(refused(r), RefuseReason::TooManyRegions);
    assert_eq!(s.owner.granted(), 2);

    // Released: the owner frees the memory, and the room is there again.
    drop(first);
    until("the owner takes in the release", || s.owner.granted() == 1).await;
    let third = s
        .holder
        .request_region(16, Rights::READ, lease)
        .await
        .expect("room again after a release");
    drop((second, third));
    until("both released", || s.owner.granted() == 0).await;
    s.close(before).await;
}

/// A lease ends: the holder's checks refuse the grant, the owner revokes it (the key stops
/// working); a lease renewed before its end goes on. The owner decides each renewal: one
/// longer than the grant's own lease or the policy's is refused, and the policy's callback
/// sees the others.
async fn leases_expire_and_renew(rt: Rt) {
    if !support::device_present("leases_expire_and_renew") {
        return;
    }
    let _serial = one_at_a_time();
    let before = registered_regions();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = asked.clone();
    let policy = GrantPolicy {
        max_lease: Some(Duration::from_secs(10)),
        // One renewal per grant.
        renew: Some(std::sync::Arc::new(move |request| {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            request.renewals == 0
        })),
        ..GrantPolicy::default()
    };
    let s = sessions(rt, policy);
    let region = s.pair.pd.alloc_shared(4096, Access::LOCAL).expect("region");
    let short = s
        .owner
        .grant(
            &region,
            ..512,
            Rights::WRITE,
            Some(Duration::from_millis(300)),
        )
        .expect("short grant");
    let renewed = s
        .owner
        .grant(
            &region,
            512..1024,
            Rights::WRITE,
            Some(Duration::from_secs(5)),
        )
        .expect("grant to renew");
    let held_short = s.holder.next_grant().await.expect("short arrives");
    let held_renewed = s.holder.next_grant().await.expect("second arrives");
    // Longer than the policy allows, or than the grant's own lease: refused unasked.
    for (lease, what) in [(20, "the policy's"), (6, "the grant's")] {
        let too_long = held_renewed.renew(Duration::from_secs(lease)).await;
        assert!(
            matches!(
                too_long,
                Err(Error::RegionRefused {
                    reason: RefuseReason::LeaseTooLong
                })
            ),
            "a renewal beyond {what} longest lease: {too_long:?}"
        );
    }
    assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 0);
    let until_end = held_renewed
        .renew(Duration::from_secs(5))
        .await
        .expect("renewal within the terms");
    assert!(until_end.is_some());
    // The policy's say: no second renewal.
    let again = held_renewed.renew(Duration::from_secs(5)).await;
    assert!(
        matches!(
            again,
            Err(Error::RegionRefused {
                reason: RefuseReason::Declined
            })
        ),
        "{again:?}"
    );
    assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 2);

    anyrdma::sleep(Duration::from_millis(600)).await;
    let (result, _) = held_short.write(buf(&s.pair, &[1; 8]), 0).await;
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            Error::GrantCheck {
                problem: GrantProblem::Expired | GrantProblem::Revoked(RevokeReason::LeaseExpired),
                ..
            }
        ),
        "{err}"
    );
    until("the owner revokes the expired grant", || !short.is_live()).await;
    until("the holder hears of it", || {
        held_short.ended() == Some(GrantProblem::Revoked(RevokeReason::LeaseExpired))
            || held_short.ended() == Some(GrantProblem::Expired)
    })
    .await;
    assert!(renewed.is_live(), "the renewed grant goes on");
    let (result, _) = held_renewed.write(buf(&s.pair, &[2; 8]), 0).await;
    result.expect("write to the renewed grant");
    // The expired key no longer works at the device either.
    let (result, _) = s
        .holder
        .queue_pair()
        .write(buf(&s.pair, &[1; 8]), held_short.region())
        .await;
    let err = result.expect_err("a write with an expired key");
    assert_eq!(err.wc_status(), Some(WcStatus::REM_ACCESS_ERR), "{err}");
    drop((held_short, held_renewed, short, renewed, region));
    s.close(before).await;
}

/// A hostile holder keeps writing through a grant's key after its lease ended, with no
/// control traffic at all (nobody renews, nobody sends): at the lease's end the owner no
/// longer counts the grant live, the key stops working at the device (the writes fail with
/// a remote access error) and the owner's bytes stay as they were.
async fn an_expired_lease_stops_a_hostile_holder(rt: Rt) {
    if !support::device_present("an_expired_lease_stops_a_hostile_holder") {
        return;
    }
    let _serial = one_at_a_time();
    let before = registered_regions();
    let s = sessions(rt, GrantPolicy::default());
    let region = s.pair.pd.alloc_shared(4096, Access::LOCAL).expect("region");
    // Long enough for the first write to land within it in a loaded, emulated guest.
    let lease = Duration::from_secs(1);
    // Both serve loops are running and idle when the grant is made.
    anyrdma::sleep(Duration::from_millis(200)).await;
    let grant = s
        .owner
        .grant(&region, 1024..2048, Rights::WRITE, Some(lease))
        .expect("grant");
    let granted_at = std::time::Instant::now();
    let held = s.holder.next_grant().await.expect("the grant arrives");
    // Within the lease the key works.
    let (result, _) = s
        .holder
        .queue_pair()
        .write(buf(&s.pair, &[0xAA; 8]), held.region())
        .await;
    if let Err(err) = result {
        panic!(
            "a write {:?} after the grant was made: {err}",
            granted_at.elapsed()
        );
    }
    assert_eq!(region.to_vec(1024..1032).unwrap(), [0xAA; 8]);

    // No control message from here on: the holder neither renews nor releases.
    anyrdma::sleep(lease + Duration::from_millis(1200)).await;
    let mut failures = Vec::new();
    for _ in 0..5 {
        // Straight on the queue pair, past the holder's own checks, as a hostile peer would.
        let (result, _) = s
            .holder
            .queue_pair()
            .write(buf(&s.pair, &[0xBB; 8]), held.region())
            .await;
        match result {
            Ok(()) => failures.push(format!(
                "a write through the key {:?} after the grant was made (a lease of 1 s) was accepted",
                granted_at.elapsed()
            )),
            Err(err) => {
                if failures.is_empty() {
                    assert_eq!(err.wc_status(), Some(WcStatus::REM_ACCESS_ERR), "{err}");
                }
                break;
            }
        }
        anyrdma::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        region.to_vec(1024..1032).unwrap(),
        [0xAA; 8],
        "the owner's bytes changed after the lease ended: {failures:?}"
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        !grant.is_live(),
        "the owner counts the grant live 1.2 s after its lease ended"
    );
    assert_eq!(s.owner.granted(), 0, "the expired grant is still counted");
    drop((held, grant, region));
    // The failed write broke the connection: the sessions end with it.
    s.close(before).await;
}

/// A lease ends on time with no task serving the session and no traffic at all: the grant
/// is no longer live and its key is deregistered; so does one the owner extended, at its
/// new end.
async fn a_lease_ends_without_serve(rt: Rt) {
    if !support::device_present("a_lease_ends_without_serve") {
        return;
    }
    let _serial = one_at_a_time();
    let _ = rt;
    let pair = Pair::new();
    let (a, _b) = messengers(&pair);
    let owner = MemorySession::new(a, SessionOptions::default());
    let region = pair.pd.alloc_shared(4096, Access::LOCAL).expect("region");
    let before = registered_regions();
    let made = std::time::Instant::now();
    let grant = owner
        .grant(&region, .., Rights::READ, Some(Duration::from_secs(1)))
        .expect("grant");
    let extended = owner
        .grant(&region, .., Rights::READ, Some(Duration::from_secs(1)))
        .expect("grant");
    extended
        .renew(Some(Duration::from_secs(2)))
        .expect("the owner extends its grant");
    // (Checked only while the lease surely runs: the guest is emulated and may be slow.)
    if made.elapsed() < Duration::from_millis(900) {
        assert!(grant.is_live());
    }
    assert_eq!(registered_regions(), before + 2, "the grants' keys");
    anyrdma::sleep(Duration::from_millis(1500).saturating_sub(made.elapsed())).await;
    let at = made.elapsed();
    assert!(
        !grant.is_live(),
        "the grant is live {:?} after its 1 s lease ended",
        at - Duration::from_secs(1)
    );
    if made.elapsed() < Duration::from_millis(1900) {
        assert!(extended.is_live(), "the extended grant goes on past 1 s");
    }
    anyrdma::sleep(Duration::from_millis(3200).saturating_sub(made.elapsed())).await;
    assert!(
        !extended.is_live(),
        "the extended grant is live {:?} after its lease ended",
        made.elapsed() - Duration::from_secs(2)
    );
    assert_eq!(owner.granted(), 0);
    assert_eq!(
        registered_regions(),
        before,
        "the expired grants' keys are still registered"
    );
    drop((grant, extended, owner, region, pair));
}

/// The owner's policy takes its time over a request (its callback blocks, as allocating
/// and registering a large region does): meanwhile the owner's session goes on (it takes
/// in a release) and its executor runs other tasks; then the request is granted.
async fn a_slow_policy_does_not_stop_the_session(rt: Rt) {
    if !support::device_present("a_slow_policy_does_not_stop_the_session") {
        return;
    }
    let _serial = one_at_a_time();
    let before = registered_regions();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let wait = std::sync::Mutex::new(wait);
    let entered = std::sync::Arc::new(std::sync::Mutex::new(None));
    let entered_at = entered.clone();
    let policy = GrantPolicy {
        max_bytes: 1 << 20,
        max_regions: 4,
        rights: Rights::READ | Rights::WRITE,
        decide: Some(std::sync::Arc::new(move |_| {
            *entered_at.lock().unwrap() = Some(std::time::Instant::now());
            // Blocks until the test lets it go, or 5 s.
            let _ = wait.lock().unwrap().recv_timeout(Duration::from_secs(5));
            true
        })),
        ..GrantPolicy::default()
    };
    let s = sessions(rt, policy);
    let region = s.pair.pd.alloc_shared(4096, Access::LOCAL).expect("region");
    let grant = s
        .owner
        .grant(&region, ..64, Rights::READ, None)
        .expect("grant");
    let held = s.holder.next_grant().await.expect("the grant arrives");
    let holder = s.holder.clone();
    let requesting = rt.spawn(async move {
        holder
            .request_region(
                4096,
                Rights::READ | Rights::WRITE,
                Some(Duration::from_secs(30)),
            )
            .await
    });
    until("the owner's policy is asked", || {
        entered.lock().unwrap().is_some()
    })
    .await;
    let asked_at = entered.lock().unwrap().expect("entered");
    drop(held); // released while the owner's policy decides
    until("the owner takes in the release", || !grant.is_live()).await;
    let took = asked_at.elapsed();
    go.send(()).expect("the policy waits");
    assert!(
        took < Duration::from_secs(3),
        "the owner's session stood still for {took:?} while its policy decided a request"
    );
    let lent = within(10, "the request", requesting)
        .await
        .expect("granted once the policy says yes");
    let (result, _) = lent.write(buf(&s.pair, &[7; 16]), 0).await;
    result.expect("a write to the lent region");
    drop((lent, grant, region));
    until("the owner takes in the release", || s.owner.granted() == 0).await;
    s.close(before).await;
}

/// The holder's connection goes away (its queue pair is shut down) while it holds requested
/// regions and a grant: the owner's serve ends with the failure, and everything the owner
/// registered for the peer is deregistered.
async fn peer_gone_releases_everything(rt: Rt) {
    if !support::device_present("peer_gone_releases_everything") {
        return;
    }
    let _serial = one_at_a_time();
    let before = registered_regions();
    let policy = GrantPolicy {
        max_bytes: 1 << 20,
        max_regions: 8,
        rights: Rights::READ | Rights::WRITE,
        ..GrantPolicy::default()
    };
    let s = sessions(rt, policy);
    let region = s.pair.pd.alloc_shared(4096, Access::LOCAL).expect("region");
    let lease = Some(Duration::from_secs(30));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            s.holder
                .request_region(4096, Rights::READ | Rights::WRITE, lease)
                .await
                .expect("request"),
        );
    }
    let grant = s
        .owner
        .grant(&region, .., Rights::READ, None)
        .expect("grant");
    held.push(s.holder.next_grant().await.expect("grant arrives"));
    assert_eq!(s.owner.granted(), 4);
    // The holder goes away without a word: its queue pair fails, the owner's messages to it
    // fail in turn.
    s.pair
        .b
        .shutdown()
        .expect("shut the holder's queue pair down");
    // The owner notices on its next message to the peer.
    let _ = s.owner.grant(&region, ..16, Rights::READ, None);
    let end = within(30, "the owner's serve to end", s.owner_serve).await;
    let err = end.expect_err("the owner's serve ends with the failure");
    assert!(
        matches!(err, Error::SessionEnded { cause: Some(_) }),
        "{err}"
    );
    assert_eq!(s.owner.granted(), 0, "every grant revoked");
    assert!(!grant.is_live());
    let _ = within(10, "the holder's serve", s.holder_serve).await;
    for held in &held {
        assert!(held.ended().is_some());
    }
    drop((held, grant, s.owner, s.holder, s.pair, region));
    // Buffers that a completion queue's driver found for dropped operations are released
    // on the driver's thread, a moment after the queue pair is gone: wait for them.
    until("registrations left behind are released", || {
        registered_regions() == before
    })
    .await;
}

/// A peer that breaks the protocol: every kind of bad control message ends the owner's
/// session with the matching problem, its grants are revoked and nothing stays registered;
/// a flood of requests beyond the policy is refused one by one, allocating nothing.
async fn hostile_peer_is_cut_off(rt: Rt) {
    if !support::device_present("hostile_peer_is_cut_off") {
        return;
    }
    let _serial = one_at_a_time();
    let before = registered_regions();
    let grant_for = |request| Control::Grant {
        grant: 1,
        request,
        addr: 4096,
        len: 64,
        rkey: 1,
        access: Rights::READ,
        lease_ms: 0,
    };
    type Case = (&'static str, Vec<Vec<u8>>, fn(&ControlProblem) -> bool);
    let cases: Vec<Case> = vec![
        ("truncated", vec![vec![0x41]], |p| {
            matches!(p, ControlProblem::Truncated { .. })
        }),
        ("not a control message", vec![b"hello".to_vec()], |p| {
            matches!(p, ControlProblem::Kind(_))
        }),
        (
            "another version",
            vec![{
                let mut bytes = Control::Release { grant: 1 }.encode();
                bytes[1] = 9;
                bytes
            }],
            |p| matches!(p, ControlProblem::Version(9)),
        ),
        (
            "padded",
            vec![{
                let mut bytes = Control::Release { grant: 1 }.encode();
                bytes.push(0);
                bytes
            }],
            |p| matches!(p, ControlProblem::Length { .. }),
        ),
        (
            "a grant for a request never made",
            vec![grant_for(5).encode()],
            |p| matches!(p, ControlProblem::UnexpectedGrant { request: 5 }),
        ),
        (
            "the same grant twice",
            vec![grant_for(0).encode(), grant_for(0).encode()],
            |p| matches!(p, ControlProblem::DuplicateGrant { grant: 1 }),
        ),
        (
            "a release of a grant never made",
            vec![Control::Release { grant: 99 }.encode()],
            |p| matches!(p, ControlProblem::UnknownGrant { grant: 99 }),
        ),
        (
            "a revocation of a grant never received",
            vec![Control::Revoke {
                grant: 3,
                reason: RevokeReason::Revoked,
            }
            .encode()],
            |p| matches!(p, ControlProblem::UnknownGrant { grant: 3 }),
        ),
        (
            "an answer to a request never made",
            vec![Control::Refuse {
                request: 4,
                reason: RefuseReason::Declined,
            }
            .encode()],
            |p| matches!(p, ControlProblem::UnknownRequest { request: 4 }),
        ),
    ];
    for (what, messages, expected) in cases {
        let pair = Pair::new();
        let (a, peer) = messengers(&pair);
        let owner = MemorySession::new(a, SessionOptions::default());
        let serving = serve(rt, &owner);
        let region = pair.pd.alloc_shared(4096, Access::LOCAL).expect("region");
        let grant = owner
            .grant(&region, ..64, Rights::READ, None)
            .expect("a grant made before the peer turns hostile");
        let granted = within(10, "the grant", peer.recv()).await.expect("grant");
        assert!(matches!(
            Control::decode(&granted.data),
            Ok(Control::Grant { grant: 1, .. })
        ));
        drop(granted);
        for message in &messages {
            peer.send(message).await.expect("the peer sends");
        }
        let end = within(10, what, serving).await;
        match end {
            Err(Error::SessionEnded { cause: Some(cause) }) => match &*cause {
                Error::BadControlMessage { problem } => {
                    assert!(expected(problem), "{what}: {problem:?}")
                }
                other => panic!("{what}: ended by {other}"),
            },
            other => panic!("{what}: serve ended with {other:?}"),
        }
        assert!(!grant.is_live(), "{what}: the grant made before is revoked");
        assert_eq!(owner.granted(), 0);
        // Its queue pair was shut down, so the peer's next message fails (over a connection
        // made by address, the peer is also told at once).
        assert!(
            pair.a.failure().is_some(),
            "{what}: the queue pair is shut down"
        );
        drop((grant, region, owner, peer, pair));
    }
    // Buffers that a completion queue's driver found for dropped operations are released
    // on the driver's thread, a moment after the queue pair is gone: wait for them.
    until("registrations left behind are released", || {
        registered_regions() == before
    })
    .await;

    // An answer of the wrong kind: a renewal in answer to a request for memory (whose caller
    // would otherwise be handed something it did not ask for).
    let renewal = Control::Renewed {
        request: 1,
        grant: 1,
        lease_ms: 1000,
    };
    answer_cut_off(rt, renewal, |p| {
        matches!(p, ControlProblem::UnknownRequest { request: 1 })
    })
    .await;
    // A grant that answers a request with less than was asked: refused as a grant for a
    // range never asked about.
    let short = Control::Grant {
        grant: 2,
        request: 1,
        addr: 4096,
        len: 1,
        rkey: 1,
        access: Rights::READ,
        lease_ms: 0,
    };
    answer_cut_off(rt, short, |p| {
        matches!(p, ControlProblem::UnexpectedGrant { request: 1 })
    })
    .await;
    // ... or with more rights than were asked (write, to a request for reading).
    let wider = Control::Grant {
        grant: 2,
        request: 1,
        addr: 4096,
        len: 4096,
        rkey: 1,
        access: Rights::READ | Rights::WRITE,
        lease_ms: 0,
    };
    answer_cut_off(rt, wider, |p| {
        matches!(p, ControlProblem::UnexpectedGrant { request: 1 })
    })
    .await;
    // Buffers that a completion queue's driver found for dropped operations are released
    // on the driver's thread, a moment after the queue pair is gone: wait for them.
    until("registrations left behind are released", || {
        registered_regions() == before
    })
    .await;

    // A peer that sends and never reads: this side's answers cannot go out, yet it still
    // revokes what expires and closes in bounded time.
    let pair = Pair::new();
    let (a, peer) = messengers(&pair);
    let owner = MemorySession::new(
        a,
        SessionOptions {
            answer_timeout: Duration::from_secs(2),
            ..SessionOptions::default()
        },
    );
    let serving = serve(rt, &owner);
    let region = pair.pd.alloc_shared(4096, Access::LOCAL).expect("region");
    let short = owner
        .grant(&region, .., Rights::READ, Some(Duration::from_millis(300)))
        .expect("grant");
    let flooding = {
        let peer = peer.clone();
        rt.spawn(async move {
            for request in 1..=200 {
                let asked = Control::Request {
                    request,
                    len: 4096,
                    access: Rights::READ,
                    lease_ms: 1000,
                };
                if peer.send(&asked.encode()).await.is_err() {
                    return;
                }
            }
        })
    };
    anyrdma::sleep(Duration::from_millis(1500)).await;
    assert!(
        !short.is_live(),
        "the lease ended while the peer took nothing in: revoked all the same"
    );
    owner.close();
    within(10, "serve to end after close", serving)
        .await
        .expect("closed cleanly");
    drop((short, region, owner));
    pair.b.shutdown().expect("stop the peer");
    within(30, "the flood to stop", flooding).await;
    drop((peer, pair));
    // Buffers that a completion queue's driver found for dropped operations are released
    // on the driver's thread, a moment after the queue pair is gone: wait for them.
    until("registrations left behind are released", || {
        registered_regions() == before
    })
    .await;

    // A flood of requests the policy refuses: each gets its refusal, nothing is allocated,
    // and the session goes on.
    let pair = Pair::new();
    let (a, peer) = messengers(&pair);
    let owner = MemorySession::new(a, SessionOptions::default());
    let serving = serve(rt, &owner);
    const FLOOD: u64 = 2_000;
    let sender = {
        let peer = peer.clone();
        rt.spawn(async move {
            for request in 1..=FLOOD {
                let asked = Control::Request {
                    request,
                    len: 1 << 30,
                    access: Rights::READ,
                    lease_ms: 1000,
                };
                peer.send(&asked.encode()).await.expect("the peer sends");
            }
        })
    };
    for request in 1..=FLOOD {
        let answer = within(30, "a refusal", peer.recv()).await.expect("answer");
        match Control::decode(&answer.data) {
            Ok(Control::Refuse {
                request: answered,
                reason: RefuseReason::TooManyRegions,
            }) => assert_eq!(answered, request),
            other => panic!("request {request}: {other:?}"),
        }
    }
    within(30, "the flood", sender).await;
    assert_eq!(owner.granted(), 0);
    owner.close();
    within(10, "serve", serving).await.expect("closed cleanly");
    drop((owner, peer, pair));
    // Buffers that a completion queue's driver found for dropped operations are released
    // on the driver's thread, a moment after the queue pair is gone: wait for them.
    until("registrations left behind are released", || {
        registered_regions() == before
    })
    .await;
}

/// A holder that took a grant asks for memory, and the peer answers with `answer`: the
/// holder's session ends with the problem `expected` accepts, the request ends with it, and
/// the grant held ends.
async fn answer_cut_off(rt: Rt, answer: Control, expected: fn(&ControlProblem) -> bool) {
    let pair = Pair::new();
    let (a, peer) = messengers(&pair);
    let holder = MemorySession::new(a, SessionOptions::default());
    let serving = serve(rt, &holder);
    let granted = Control::Grant {
        grant: 1,
        request: 0,
        addr: 4096,
        len: 64,
        rkey: 1,
        access: Rights::READ,
        lease_ms: 0,
    };
    peer.send(&granted.encode())
        .await
        .expect("an unsolicited grant");
    let held = within(10, "the grant", holder.next_grant())
        .await
        .expect("grant");
    let asking = {
        let holder = holder.clone();
        rt.spawn(async move { holder.request_region(4096, Rights::READ, None).await })
    };
    let request = within(10, "the request", peer.recv())
        .await
        .expect("request");
    assert!(matches!(
        Control::decode(&request.data),
        Ok(Control::Request { request: 1, .. })
    ));
    drop(request);
    peer.send(&answer.encode()).await.expect("the peer sends");
    match within(10, "serve", serving).await {
        Err(Error::SessionEnded { cause: Some(cause) }) => match &*cause {
            Error::BadControlMessage { problem } => assert!(expected(problem), "{problem:?}"),
            other => panic!("ended by {other}"),
        },
        other => panic!("serve ended with {other:?}"),
    }
    let asked = within(10, "the request's end", asking).await;
    assert!(
        matches!(asked, Err(Error::SessionEnded { .. })),
        "{asked:?}"
    );
    assert_eq!(held.ended(), Some(GrantProblem::SessionEnded));
}

/// The environment variable that makes this test binary the holder process of
/// `killed_holder_leaves_nothing_registered`, and the address it connects to.
const HOLDER_ENV: &str = "ANYRDMA_TEST_RMEM_HOLDER";

/// The holder, a process of its own connected by address, asks for three regions and takes
/// a grant, then is killed (SIGKILL): the owner's serve ends with the disconnect, and every
/// registration the owner made for it is gone.
async fn killed_holder_leaves_nothing_registered(rt: Rt) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    if !support::device_present("killed_holder_leaves_nothing_registered") {
        return;
    }
    let _serial = one_at_a_time();
    let before = registered_regions();
    let listener = anyrdma::cm::Listener::bind(std::net::SocketAddr::new(support::cm_ip(), 0))
        .expect("listen");
    let test = format!("{}::holder_process", rt.module());
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(HOLDER_ENV, listener.local_addr().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the holder process");
    let incoming = within(30, "the holder's connect request", listener.incoming())
        .await
        .expect("incoming");
    let messenger = Messenger::accept(
        incoming,
        anyrdma::cm::ConnectionOptions::default(),
        MessengerOptions::default(),
    )
    .await
    .expect("accept");
    let policy = GrantPolicy {
        max_bytes: 1 << 20,
        max_regions: 3,
        rights: Rights::READ | Rights::WRITE,
        ..GrantPolicy::default()
    };
    let owner = MemorySession::new(
        messenger,
        SessionOptions {
            policy,
            ..SessionOptions::default()
        },
    );
    let serving = serve(rt, &owner);
    let region = owner
        .queue_pair()
        .pd()
        .alloc_shared(4096, Access::LOCAL)
        .expect("region");
    let grant = owner
        .grant(&region, .., Rights::READ | Rights::WRITE, None)
        .expect("grant");
    let stdout = child.stdout.take().expect("the holder's stdout");
    let holding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let holding = holding.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("HOLDING") {
                    holding.store(true, std::sync::atomic::Ordering::Release);
                }
            }
        })
    };
    until("the holder says it holds four grants", || {
        holding.load(std::sync::atomic::Ordering::Acquire)
    })
    .await;
    assert_eq!(owner.granted(), 4);
    let with_grants = registered_regions();
    child.kill().expect("kill the holder");
    let _ = child.wait();
    let _ = reader.join();
    let end = within(30, "the owner's serve to end", serving).await;
    let err = end.expect_err("the owner's serve ends with the disconnect");
    assert!(err.is_disconnect(), "{err}");
    assert_eq!(owner.granted(), 0, "every grant revoked");
    assert!(!grant.is_live());
    assert!(
        registered_regions() <= with_grants - 4,
        "the four keys and the three requested regions go at once"
    );
    drop((grant, region, owner, listener));
    // Buffers that a completion queue's driver found for dropped operations are released
    // on the driver's thread, a moment after the queue pair is gone: wait for them.
    until("registrations left behind are released", || {
        registered_regions() == before
    })
    .await;
}

/// The holder process of `killed_holder_leaves_nothing_registered` (does nothing in a normal
/// run).
async fn holder_process(rt: Rt) {
    let Ok(addr) = std::env::var(HOLDER_ENV) else {
        return;
    };
    let addr = addr.parse().expect("the owner's address");
    let messenger = Messenger::connect(
        addr,
        anyrdma::cm::ConnectionOptions::default(),
        MessengerOptions::default(),
    )
    .await
    .expect("connect");
    let holder = MemorySession::new(messenger, SessionOptions::default());
    let serving = serve(rt, &holder);
    let mut held = vec![holder.next_grant().await.expect("the owner's grant")];
    for _ in 0..3 {
        let lease = Some(Duration::from_secs(30));
        held.push(
            holder
                .request_region(4096, Rights::READ | Rights::WRITE, lease)
                .await
                .expect("request"),
        );
    }
    println!("HOLDING {}", held.len());
    let _ = within(60, "being killed", serving).await;
}

/// Closing tells the peer: a holder that drops a grant and closes at once still sends the
/// release, and an owner that closes revokes each of its grants at the peer.
async fn close_tells_the_peer(rt: Rt) {
    if !support::device_present("close_tells_the_peer") {
        return;
    }
    let _serial = one_at_a_time();
    let before = registered_regions();
    let s = sessions(rt, GrantPolicy::default());
    let region = s.pair.pd.alloc_shared(4096, Access::LOCAL).expect("region");
    let first = s
        .owner
        .grant(&region, ..64, Rights::READ, None)
        .expect("grant 1");
    let second = s
        .owner
        .grant(&region, 64..128, Rights::READ, None)
        .expect("grant 2");
    let first_held = s.holder.next_grant().await.expect("grant 1 arrives");
    let second_held = s.holder.next_grant().await.expect("grant 2 arrives");

    // The owner closes: the holder hears of every grant it still holds.
    drop(second_held);
    until("the owner takes in the release", || !second.is_live()).await;
    s.owner.close();
    assert!(!first.is_live(), "closed: the key stopped working");
    within(10, "the owner's serve", s.owner_serve)
        .await
        .expect("a closed session's serve ends cleanly");
    until("the holder hears of the revocation", || {
        first_held.ended() == Some(GrantProblem::Revoked(RevokeReason::Closing))
    })
    .await;
    drop((first, second, first_held, region));
    s.holder.close();
    within(10, "the holder's serve", s.holder_serve)
        .await
        .expect("closed cleanly");
    drop((s.owner, s.holder, s.pair));
    // Buffers that a completion queue's driver found for dropped operations are released
    // on the driver's thread, a moment after the queue pair is gone: wait for them.
    until("registrations left behind are released", || {
        registered_regions() == before
    })
    .await;

    // The other way: the holder drops its grant and closes at once; the release still goes.
    let before = registered_regions();
    let s = sessions(rt, GrantPolicy::default());
    let region = s.pair.pd.alloc_shared(4096, Access::LOCAL).expect("region");
    let grant = s
        .owner
        .grant(&region, .., Rights::READ, None)
        .expect("grant");
    let held = s.holder.next_grant().await.expect("grant arrives");
    drop(held);
    s.holder.close();
    within(10, "the holder's serve", s.holder_serve)
        .await
        .expect("closed cleanly");
    until("the owner takes in the release", || !grant.is_live()).await;
    drop((grant, region));
    s.owner.close();
    within(10, "the owner's serve", s.owner_serve)
        .await
        .expect("closed cleanly");
    drop((s.owner, s.holder, s.pair));
    // Buffers that a completion queue's driver found for dropped operations are released
    // on the driver's thread, a moment after the queue pair is gone: wait for them.
    until("registrations left behind are released", || {
        registered_regions() == before
    })
    .await;
}

/// A session served on a messenger that shares its completion queue (event mode) with
/// another messenger. Once the session is closed and `serve` has returned, the other
/// messenger's receive must still be woken by its message: the task that served no longer
/// holds the queue's turn. (Before, its last poll of the session's messenger left its waker
/// there, and the arrival woke only that finished task.)
async fn a_finished_serve_hands_its_turn_on(rt: Rt) {
    if !support::device_present("a_finished_serve_hands_its_turn_on") {
        return;
    }
    let _one = one_at_a_time();
    let options = MessengerOptions {
        depth: 16,
        ..MessengerOptions::default()
    };
    let pairs = SharedCqPairs::new();
    let session = MemorySession::new(
        Messenger::new(&pairs.a[0], options).expect("messenger"),
        SessionOptions::default(),
    );
    let _session_peer = Messenger::new(&pairs.b[0], options).expect("messenger");
    let other = Messenger::new(&pairs.a[1], options).expect("messenger");
    let other_peer = Messenger::new(&pairs.b[1], options).expect("messenger");

    let serving = serve(rt, &session);
    anyrdma::sleep(Duration::from_millis(200)).await; // serve now waits for the peer
    session.close();
    within(10, "serve after close", serving)
        .await
        .expect("serve ends cleanly");

    let mut receive = HandPolled::new(other.recv());
    assert!(receive.poll().is_pending());
    other_peer.send(b"hello").await.expect("the peer sends");
    receive
        .until_woken(|| {
            "the receive was never woken: the finished serve still held the queue's turn".into()
        })
        .await;
    match receive.poll() {
        std::task::Poll::Ready(message) => {
            assert_eq!(&message.expect("the message").data[..], b"hello")
        }
        std::task::Poll::Pending => panic!("woken, but the message is not there"),
    }
}

runtime_tests!(
    a_finished_serve_hands_its_turn_on,
    close_tells_the_peer,
    hostile_peer_is_cut_off,
    killed_holder_leaves_nothing_registered,
    holder_process,
    grant_read_write_atomics_release,
    release_and_revoke,
    requests_accepted_and_refused,
    leases_expire_and_renew,
    an_expired_lease_stops_a_hostile_holder,
    a_lease_ends_without_serve,
    a_slow_policy_does_not_stop_the_session,
    peer_gone_releases_everything,
);
