//! The work of answering a peer's request for memory, off the executors' threads: the
//! owner's policy callback ([`GrantPolicy::decide`](super::GrantPolicy::decide)), a zeroed
//! allocation and two registrations (`ibv_reg_mr` pins every page: its cost grows with
//! the size, up to the policy's byte limit, from microseconds for a page to hundreds of
//! milliseconds for gigabytes).
//!
//! Run inline, that work would stop the task that serves the session (and, on a
//! current-thread executor, every task). The core names no runtime and so has no
//! `spawn_blocking`: a hook in the [`Runtime`](crate::runtime::Runtime) trait would be
//! needed, and every adapter would have to provide it. One `std` thread of the process
//! does it instead, for every session, one request at a time, in the order they arrived;
//! it is started by the first request and then lives as long as the process, asleep when
//! there is nothing to do. The number of requests waiting for it is bounded by the
//! policies (each is admitted, and its bytes reserved, before it is queued).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::wake::lock;

type Job = Box<dyn FnOnce() + Send>;

struct Jobs {
    queue: VecDeque<Job>,
    running: bool,
}

static JOBS: Mutex<Jobs> = Mutex::new(Jobs {
    queue: VecDeque::new(),
    running: false,
});
static QUEUED: Condvar = Condvar::new();

/// Runs `job` on the lending thread, after the jobs queued before it.
///
/// # Errors
/// [`Error::Runtime`] when the thread cannot be started (the job was not queued).
pub(crate) fn run(job: Job) -> Result<()> {
    let mut jobs = lock(&JOBS);
    if !jobs.running {
        std::thread::Builder::new()
            .name("anyrdma-lender".into())
            .spawn(work)
            .map_err(|source| Error::Runtime {
                runtime: "std",
                what: "the thread that lends memory to peers",
                source,
            })?;
        jobs.running = true;
    }
    jobs.queue.push_back(job);
    drop(jobs);
    QUEUED.notify_one();
    Ok(())
}

fn work() {
    let mut jobs = lock(&JOBS);
    loop {
        match jobs.queue.pop_front() {
            Some(job) => {
                drop(jobs);
                job();
                jobs = lock(&JOBS);
            }
            None => jobs = QUEUED.wait(jobs).unwrap_or_else(|p| p.into_inner()),
        }
    }
}
