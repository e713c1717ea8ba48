//! The registered-memory pool: cheap buffers that go back to the pool when dropped, never
//! handed to two owners at once, bounded by a cap, counted by chunks, and local only.

mod support;

use std::sync::Mutex;

use anyrdma::{registered_regions, Access, Error, MemoryPool, PoolOptions};
use support::{fill, holds_pattern, within, Pair, Rt};

/// `registered_regions()` counts the whole process: the tests that compare it run one at a
/// time (each on its own runtime and thread, so the lock orders tests, not tasks).
static REGIONS: Mutex<()> = Mutex::new(());

const TASKS: usize = 8;
const ALLOCATIONS: usize = 1_000_000;
const SIZES: [usize; 6] = [1, 64, 200, 1000, 4096, 60_000];

/// Eight tasks allocate and drop a million buffers of mixed sizes. Each stamps its buffer's
/// first and last bytes with a tag of its own, yields, and checks the tag: a block handed to
/// two owners at once would show. At the end nothing is in use, and the process holds one registration per chunk.
#[allow(clippy::await_holding_lock)] // REGIONS orders tests, not tasks
async fn many_tasks_share_one_pool(rt: Rt) {
    if !support::device_present("many_tasks_share_one_pool") {
        return;
    }
    let _regions = REGIONS.lock().unwrap_or_else(|p| p.into_inner());
    let pair = Pair::new();
    let baseline = registered_regions();
    let pool = MemoryPool::new(&pair.pd, PoolOptions::default());
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let pool = pool.clone();
        tasks.push(rt.spawn(async move {
            let mut held = Vec::new();
            for i in 0..ALLOCATIONS / TASKS {
                let len = SIZES[(i + task) % SIZES.len()];
                let mut buf = pool.alloc(len).expect("pool alloc");
                assert_eq!(buf.len(), len);
                let tag = (task * ALLOCATIONS + i) as u64;
                stamp(&mut buf, tag);
                held.push((buf, tag));
                if held.len() == 16 {
                    support::yield_now().await;
                    for (buf, tag) in held.drain(..) {
                        assert!(stamped(&buf, tag), "task {task}: a block was shared");
                    }
                }
            }
        }));
    }
    for task in tasks {
        within(300, "an allocating task", task).await;
    }
    let stats = pool.stats();
    assert_eq!(stats.bytes_in_use, 0, "{}: {stats:?}", rt.name());
    assert!(stats.classes.iter().all(|c| c.in_use == 0), "{stats:?}");
    assert!(
        stats.chunks > 0 && stats.chunks < 64,
        "{}: {stats:?}",
        rt.name()
    );
    assert_eq!(
        registered_regions(),
        baseline + stats.chunks,
        "{}: registrations are chunks, not buffers",
        rt.name()
    );
    let released = pool.trim();
    assert_eq!(released, stats.bytes_registered);
    assert_eq!(pool.stats().chunks, 0);
    assert_eq!(
        registered_regions(),
        baseline,
        "{}: trim gave back every chunk",
        rt.name()
    );
}

/// Writes `tag` at both ends of `buf` (as much of it as fits).
fn stamp(buf: &mut [u8], tag: u64) {
    let bytes = tag.to_le_bytes();
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    let len = buf.len();
    buf[len - n..].copy_from_slice(&bytes[..n]);
}

fn stamped(buf: &[u8], tag: u64) -> bool {
    let bytes = tag.to_le_bytes();
    let n = buf.len().min(8);
    buf[..n] == bytes[..n] && buf[buf.len() - n..] == bytes[..n]
}

/// Pool buffers carry real traffic: a send from one, received into another.
#[allow(clippy::await_holding_lock)] // REGIONS orders tests, not tasks
async fn pool_buffers_move_data(rt: Rt) {
    if !support::device_present("pool_buffers_move_data") {
        return;
    }
    // It registers: the tests that count the process's registrations must not see it.
    let _regions = REGIONS.lock().unwrap_or_else(|p| p.into_inner());
    let pair = Pair::new();
    let pool = MemoryPool::new(&pair.pd, PoolOptions::default());
    for (round, len) in [8usize, 300, 4096, 65_536].into_iter().enumerate() {
        let seed = round as u8 + 1;
        let inbox = pair.b.recv(pool.alloc(len).unwrap());
        let mut message = pool.alloc(len).unwrap();
        fill(&mut message, seed);
        let (sent, message) = within(10, "send", pair.a.send(message)).await;
        sent.expect("send from a pool buffer");
        let (received, inbox) = within(10, "receive", inbox).await;
        assert_eq!(received.expect("receive into a pool buffer").len, len);
        assert!(
            holds_pattern(&inbox, seed),
            "{}: {len} bytes corrupted",
            rt.name()
        );
        drop((message, inbox));
    }
    assert_eq!(pool.stats().bytes_in_use, 0);
}

/// The cap holds with a clear error, a freed block is reused, and pool memory never
/// reaches a peer.
#[allow(clippy::await_holding_lock)] // REGIONS orders tests, not tasks
async fn pool_is_bounded_and_local(rt: Rt) {
    if !support::device_present("pool_is_bounded_and_local") {
        return;
    }
    // It registers: the tests that count the process's registrations must not see it.
    let _regions = REGIONS.lock().unwrap_or_else(|p| p.into_inner());
    let pair = Pair::new();
    let options = PoolOptions {
        chunk_size: 1 << 20,
        max_bytes: 1 << 20,
        ..PoolOptions::default()
    };
    let pool = MemoryPool::new(&pair.pd, options);
    let mut held: Vec<_> = (0..16).map(|_| pool.alloc(64 << 10).unwrap()).collect();
    match pool.alloc(64 << 10) {
        Err(Error::PoolExhausted { max_bytes, .. }) => assert_eq!(max_bytes, 1 << 20),
        other => panic!("{}: past the cap: {other:?}", rt.name()),
    }
    assert!(matches!(pool.alloc(1 << 20), Err(Error::TooLarge { .. })));
    held.pop();
    let again = pool.alloc(60_000).expect("the freed block is reused");
    assert_eq!(pool.stats().chunks, 1);

    assert!(matches!(again.remote(), Err(Error::LocalOnly)));
    let (again, err) = again.share(Access::REMOTE_WRITE).expect_err("pool memory");
    assert!(matches!(err, Error::PoolMemoryIsLocal), "{err:?}");
    drop((again, held));
    assert_eq!(pool.stats().bytes_in_use, 0);
}

/// Nothing of the pool outlives it: with its handles gone and its buffers dropped last
/// (some blocks parked whole for reuse, a buffer's pieces dropped by two tasks), every
/// chunk is deregistered.
#[allow(clippy::await_holding_lock)] // REGIONS orders tests, not tasks
async fn pool_is_freed_after_its_last_buffer(rt: Rt) {
    if !support::device_present("pool_is_freed_after_its_last_buffer") {
        return;
    }
    let _regions = REGIONS.lock().unwrap_or_else(|p| p.into_inner());
    let pair = Pair::new();
    let baseline = registered_regions();
    let pool = MemoryPool::new(&pair.pd, PoolOptions::default());
    let kept: Vec<_> = (0..4).map(|_| pool.alloc(100).unwrap()).collect();
    for size in SIZES {
        // Dropped at once: parked whole for the next allocation of its class.
        drop(pool.alloc(size).unwrap());
    }
    let mut head = pool.alloc(4096).unwrap();
    let tail = head.split_off(2048);
    let dropping = [
        rt.spawn(async move { drop(head) }),
        rt.spawn(async move { drop(tail) }),
    ];
    for task in dropping {
        within(10, "a task dropping a piece", task).await;
    }
    let stats = pool.stats();
    assert_eq!(stats.bytes_in_use, 4 * 128, "{}: {stats:?}", rt.name());
    let handle = pool.clone();
    drop(pool);
    drop(handle.alloc(4096).expect("a remaining handle allocates"));
    drop(handle);
    assert!(
        registered_regions() > baseline,
        "the kept buffers still hold their chunk"
    );
    assert!(kept.iter().all(|buf| buf.len() == 100));
    drop(kept);
    assert_eq!(
        registered_regions(),
        baseline,
        "{}: with the pool's handles and buffers gone, every chunk is deregistered",
        rt.name()
    );
}

/// A size class used a little registers little: its first chunk holds 16 blocks (at least
/// 64 KiB), and only a class that outgrows it gets whole chunks. A messenger touches several
/// classes (its receives, its control messages, odd sizes); a full chunk for each made a
/// hundred idle connections pin hundreds of MiB.
#[allow(clippy::await_holding_lock)] // REGIONS orders tests, not tasks
async fn a_class_used_a_little_registers_little(rt: Rt) {
    if !support::device_present("a_class_used_a_little_registers_little") {
        return;
    }
    // Its chunks come and go: the tests that count the process's registrations must not see
    // them.
    let _regions = REGIONS.lock().unwrap_or_else(|p| p.into_inner());
    let pair = Pair::new();
    let pool = MemoryPool::new(&pair.pd, PoolOptions::default());
    let small = pool.alloc(40).expect("alloc");
    let stats = pool.stats();
    assert_eq!(
        (stats.chunks, stats.bytes_registered),
        (1, 64 << 10),
        "{}: one small buffer: {stats:?}",
        rt.name()
    );
    // 16 KiB blocks: 16 fit the first chunk (256 KiB); the 17th takes a whole chunk (1 MiB).
    let mut held: Vec<_> = (0..16).map(|_| pool.alloc(16 << 10).unwrap()).collect();
    assert_eq!(pool.stats().bytes_registered, (64 << 10) + (256 << 10));
    held.push(pool.alloc(16 << 10).unwrap());
    let stats = pool.stats();
    assert_eq!(
        (stats.chunks, stats.bytes_registered),
        (3, (64 << 10) + (256 << 10) + (1 << 20)),
        "{}: {stats:?}",
        rt.name()
    );
    for (i, buf) in held.iter_mut().enumerate() {
        fill(buf, i as u8);
    }
    for (i, buf) in held.iter().enumerate() {
        assert!(holds_pattern(buf, i as u8), "block {i} shared");
    }
    drop((small, held));
    assert_eq!(pool.trim(), (64 << 10) + (256 << 10) + (1 << 20));
}

runtime_tests!(
    a_class_used_a_little_registers_little,
    many_tasks_share_one_pool,
    pool_is_freed_after_its_last_buffer,
    pool_buffers_move_data,
    pool_is_bounded_and_local
);
