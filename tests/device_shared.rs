//! Memory a peer can write is a `SharedRegion`: reached only through sound accessors, given
//! to peers and taken back (revoked) so that the old key stops working.

mod support;

use std::sync::{Arc, Mutex};

use anyrdma::{registered_regions, Access, Error, SharedRegion, WcStatus};
use support::{fill, holds_pattern, within, Pair, Rt};

const PAYLOAD: usize = 1000;

/// `registered_regions()` counts the whole process: the tests that compare it run one at a
/// time (each on its own runtime and thread, so the lock orders tests, not tasks).
static REGIONS: Mutex<()> = Mutex::new(());

/// A peer writes a message, then a flag word after it; a task waiting on the word with
/// `wait_u64` wakes and copies out exactly the peer's bytes.
#[allow(clippy::await_holding_lock)] // REGIONS orders tests, not tasks
async fn waiting_task_sees_the_peers_flag_and_bytes(rt: Rt) {
    if !support::device_present("waiting_task_sees_the_peers_flag_and_bytes") {
        return;
    }
    let _regions = REGIONS.lock().unwrap_or_else(|p| p.into_inner());
    let pair = Pair::new();
    let mailbox = Arc::new(pair.pd.alloc_shared(4096, Access::REMOTE_WRITE).unwrap());
    let remote = mailbox.remote().unwrap();
    let waiter = {
        let mailbox = mailbox.clone();
        rt.spawn(async move {
            let len = mailbox.wait_u64(0, 0).await.expect("wait for the flag");
            let mut message = vec![0; len as usize];
            mailbox
                .read_at(8, &mut message)
                .expect("copy the message out");
            message
        })
    };
    // The message first, then (once it is placed: the write completed) the flag.
    let (written, _) = pair
        .a
        .write(pair.patterned(PAYLOAD, 42), remote.slice(8..).unwrap())
        .await;
    written.expect("write the message");
    let mut flag = pair.pd.alloc(8, Access::LOCAL).unwrap();
    flag.copy_from_slice(&(PAYLOAD as u64).to_ne_bytes());
    let (written, _) = pair.a.write(flag, remote.slice(0..8).unwrap()).await;
    written.expect("write the flag");

    let message = within(10, "the waiting task", waiter).await;
    assert_eq!(message.len(), PAYLOAD);
    assert!(
        holds_pattern(&message, 42),
        "{}: message corrupted",
        rt.name()
    );
    assert_eq!(mailbox.load_u64(0).unwrap(), PAYLOAD as u64);
}

/// Revoking a shared region: the peer's next write with the old key fails with a remote
/// access error, and the `LocalBuf` handed back holds the bytes written before.
#[allow(clippy::await_holding_lock)] // REGIONS orders tests, not tasks
async fn revoked_key_stops_working(rt: Rt) {
    if !support::device_present("revoked_key_stops_working") {
        return;
    }
    let _regions = REGIONS.lock().unwrap_or_else(|p| p.into_inner());
    let pair = Pair::new();
    let baseline = registered_regions();
    let region = pair.pd.alloc_shared(256, Access::REMOTE_WRITE).unwrap();
    let old_key = region.remote().unwrap();
    let (written, _) = pair.a.write(pair.patterned(256, 7), old_key).await;
    written.expect("write before the revocation");

    // A piece held elsewhere keeps the registration: refused, and the region comes back.
    let mut region = region;
    let tail = region.split_off(128);
    let (mut region, err) = region.revoke().expect_err("a piece is split off");
    assert!(matches!(err, Error::NotWholeRegion), "{err:?}");
    region.unsplit(tail).expect("neighbours join");

    let local = region.revoke().expect("revoke");
    assert_eq!(
        registered_regions(),
        baseline + 1,
        "one registration replaced another"
    );
    assert!(
        holds_pattern(&local, 7),
        "{}: bytes lost in the revocation",
        rt.name()
    );

    let (written, _) = pair.a.write(pair.patterned(256, 8), old_key).await;
    match written {
        Err(Error::WorkCompletion { status, .. }) => {
            assert_eq!(status, WcStatus::REM_ACCESS_ERR, "{}", rt.name())
        }
        other => panic!(
            "{}: a write with the revoked key ended with {other:?}",
            rt.name()
        ),
    }
    assert!(
        holds_pattern(&local, 7),
        "{}: the revoked region changed",
        rt.name()
    );
    drop(local);
    drop(pair);
    assert_eq!(
        registered_regions(),
        baseline,
        "{}: a registration leaked",
        rt.name()
    );
}

/// The other direction: a `LocalBuf` shared with peers keeps its bytes, takes the peer's
/// write, and comes back through `revoke` with them.
#[allow(clippy::await_holding_lock)] // REGIONS orders tests, not tasks
async fn local_buffer_shared_and_taken_back(rt: Rt) {
    if !support::device_present("local_buffer_shared_and_taken_back") {
        return;
    }
    let _regions = REGIONS.lock().unwrap_or_else(|p| p.into_inner());
    let pair = Pair::new();
    // Memory a peer can write is never a LocalBuf.
    let refused = pair.pd.alloc(64, Access::REMOTE_WRITE).unwrap_err();
    assert!(matches!(refused, Error::PeerWritable { .. }), "{refused:?}");
    assert!(refused.to_string().contains("alloc_shared"), "{refused}");

    let mut buf = pair.pd.alloc(512, Access::LOCAL).unwrap();
    fill(&mut buf, 3);
    assert!(matches!(buf.remote(), Err(Error::LocalOnly)));
    let shared: SharedRegion = buf
        .share(Access::REMOTE_WRITE | Access::REMOTE_READ)
        .map_err(|(_, err)| err)
        .expect("share");
    assert!(holds_pattern(&shared.to_vec(..).unwrap(), 3), "bytes kept");
    let (written, _) = pair
        .a
        .write(
            pair.patterned(256, 4),
            shared.remote().unwrap().slice(256..).unwrap(),
        )
        .await;
    written.expect("the peer writes the shared buffer");
    let back = shared.revoke().map_err(|(_, err)| err).expect("revoke");
    assert!(holds_pattern(&back[..256], 3), "{}: first half", rt.name());
    assert!(holds_pattern(&back[256..], 4), "{}: peer's half", rt.name());
}

runtime_tests!(
    waiting_task_sees_the_peers_flag_and_bytes,
    revoked_key_stops_working,
    local_buffer_shared_and_taken_back
);
