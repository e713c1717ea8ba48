//! The server's guard against a client that goes away in the middle of a measurement.
//!
//! A measurement's queue pairs are connected out of band (over the control channel), so a
//! client that dies mid-run leaves the server waiting on receives that never come: no
//! completion, no error, no event. The control connection shows it: the client's kernel
//! closes it. While a measurement runs, a thread watches that socket for the peer's close
//! (`POLLRDHUP`; nothing is read, so the measurement's own barriers are untouched). If the
//! peer closed and the measurement still runs after [`GRACE`], the server exits with an error
//! rather than hang: the measurement's queue pairs and buffers belong to a runtime blocked in
//! its loop and cannot be taken back from outside it.

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a measurement may go on after its client closed the control connection. One
/// that ends by itself (an error at its next barrier, or its last teardown) takes far less.
const GRACE: Duration = Duration::from_secs(10);

/// How often the watcher looks whether the measurement ended.
const TICK: Duration = Duration::from_millis(200);

/// Watches one measurement's control connection until [`Watchdog::done`].
pub struct Watchdog {
    done: Arc<AtomicBool>,
}

impl Watchdog {
    /// Starts watching `ctl` (a clone of it: the measurement keeps the original).
    pub fn start(ctl: &TcpStream) -> std::io::Result<Watchdog> {
        let ctl = ctl.try_clone()?;
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        std::thread::Builder::new()
            .name("client-watch".into())
            .spawn(move || watch(&ctl, &flag))?;
        Ok(Watchdog { done })
    }

    /// The measurement ended: the watcher stops within a tick (it is not waited for).
    pub fn done(self) {
        self.done.store(true, Ordering::Release);
    }
}

fn watch(ctl: &TcpStream, done: &AtomicBool) {
    let mut closed_at: Option<Instant> = None;
    while !done.load(Ordering::Acquire) {
        match closed_at {
            Some(closed) if closed.elapsed() >= GRACE => {
                eprintln!(
                    "anyrdma-perf server: the client closed the control connection {GRACE:?} \
                     ago and the measurement still waits for it; exiting (its queue pairs \
                     cannot be taken back from a measurement that runs)"
                );
                std::process::exit(3);
            }
            Some(_) => std::thread::sleep(TICK),
            None => {
                let mut poll = libc::pollfd {
                    fd: ctl.as_raw_fd(),
                    events: libc::POLLRDHUP,
                    revents: 0,
                };
                // SAFETY: `poll` is one valid pollfd for the call's duration, and its fd is
                // open: `ctl` is owned by this thread until it returns.
                let ready = unsafe { libc::poll(&mut poll, 1, TICK.as_millis() as i32) };
                let closed = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR;
                if ready > 0 && poll.revents & closed != 0 {
                    closed_at = Some(Instant::now());
                }
            }
        }
    }
}
