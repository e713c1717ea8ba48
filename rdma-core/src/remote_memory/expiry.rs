//! Leases end on time whatever the sessions are doing: one thread of the process sleeps
//! until the next deadline of any session's grants and ends what is due there (the key is
//! deregistered, so the peer's accesses with it fail, and the revocation is queued for the
//! session's `serve` to send).
//!
//! Why a thread of its own, and not a timer of the serve loop: a grant's end is a security
//! property. It must hold when no task serves the session, when the serve loop sleeps on a
//! busy executor, and when the peer sends nothing that would wake it. The core names no
//! runtime, and a `std` thread needs none; it also keeps `ibv_dereg_mr` (a system call
//! that unpins the pages, longer for larger grants) off the executors' threads. It is
//! started by the first grant with a lease and then lives as long as the process, asleep
//! when there is nothing to end.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, Weak};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::wake::lock;

/// What the thread calls at a deadline: implemented by a session (its `Inner`), which is above
/// this module and not named by it. Called once per deadline, on the thread, never per
/// operation.
pub(crate) trait Expire: Send + Sync {
    /// Ends what is due at `now`.
    fn expire(&self, now: Instant);
}

/// A deadline of some grant of `session` (the session knows which: it ends all that is due).
struct Due {
    at: Instant,
    session: Weak<dyn Expire>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at.cmp(&other.at)
    }
}

struct Queue {
    /// Earliest first. A deadline that a renewal moved stays here and finds nothing due.
    due: BinaryHeap<Reverse<Due>>,
    running: bool,
}

static QUEUE: Mutex<Queue> = Mutex::new(Queue {
    due: BinaryHeap::new(),
    running: false,
});
static CHANGED: Condvar = Condvar::new();

/// Starts the expiry thread if it is not running yet.
///
/// # Errors
/// [`Error::Runtime`] when the thread cannot be started (nothing was scheduled).
pub(crate) fn start() -> Result<()> {
    let mut queue = lock(&QUEUE);
    if queue.running {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("anyrdma-leases".into())
        .spawn(run)
        .map_err(|source| Error::Runtime {
            runtime: "std",
            what: "the thread that ends leases",
            source,
        })?;
    queue.running = true;
    Ok(())
}

/// `session` has a grant whose lease ends `at`: [`Expire::expire`] is called then (or
/// soon after: the thread's wake-up latency). Call [`start`] first (a grant with a lease
/// cannot be made otherwise).
pub(crate) fn schedule(at: Instant, session: Weak<dyn Expire>) {
    let mut queue = lock(&QUEUE);
    let earliest = queue
        .due
        .peek()
        .map_or(true, |Reverse(first)| at < first.at);
    queue.due.push(Reverse(Due { at, session }));
    drop(queue);
    if earliest {
        // The thread may sleep until a later deadline.
        CHANGED.notify_one();
    }
}

fn run() {
    let mut queue = lock(&QUEUE);
    loop {
        let now = Instant::now();
        let next = queue.due.peek().map(|Reverse(due)| due.at);
        match next {
            None => {
                queue = CHANGED.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
            Some(at) if at > now => {
                queue = CHANGED
                    .wait_timeout(queue, at - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            Some(_) => {
                let Some(Reverse(due)) = queue.due.pop() else {
                    continue;
                };
                // Outside the queue's lock: ending grants takes the session's lock and
                // deregisters keys.
                drop(queue);
                if let Some(session) = due.session.upgrade() {
                    session.expire(Instant::now());
                }
                queue = lock(&QUEUE);
            }
        }
    }
}
