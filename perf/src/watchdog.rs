//! The server's guard against a client that goes away in the middle of a measurement.
//!
//! While a measurement runs, a thread watches its control connection for the peer's close
//! (`POLLRDHUP`; nothing is read, so the measurement's own barriers are untouched). A client
//! that closed it mid-measurement is gone (it closes it only after its last measurement), and
//! its measurement may wait for ever (`abort.rs` says why): after [`GRACE`], in which the
//! measurement may end by itself at its next barrier, the watchdog ends it with
//! [`abort::trigger`] and the server goes on with its next client. A measurement that still
//! runs [`LAST_RESORT`] later is stuck where nothing reaches it: the server exits rather
//! than hang.

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::abort;

/// How long a measurement may go on after its client closed the control connection before
/// it is ended.
const GRACE: Duration = Duration::from_secs(1);

/// How long an ended measurement may take to return before the server exits.
const LAST_RESORT: Duration = Duration::from_secs(20);

/// How often the watcher looks whether the measurement ended.
const TICK: Duration = Duration::from_millis(100);

/// Watches one measurement's control connection until [`Watchdog::done`].
pub struct Watchdog {
    /// Set by `done`; the watcher triggers the abort only while holding it unset, so no
    /// abort reaches the next measurement.
    done: Arc<Mutex<bool>>,
}

impl Watchdog {
    /// Clears the abort state and starts watching `ctl` (a clone of it: the measurement
    /// keeps the original).
    pub fn start(ctl: &TcpStream) -> std::io::Result<Watchdog> {
        let ctl = ctl.try_clone()?;
        abort::reset();
        let done = Arc::new(Mutex::new(false));
        let flag = done.clone();
        std::thread::Builder::new()
            .name("client-watch".into())
            .spawn(move || watch(&ctl, &flag))?;
        Ok(Watchdog { done })
    }

    /// The measurement returned: once this returns, the watcher triggers nothing (it stops
    /// within a tick and is not waited for).
    pub fn done(self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        abort::clear_hook();
    }
}

fn watch(ctl: &TcpStream, done: &Mutex<bool>) {
    let mut closed_at: Option<Instant> = None;
    let mut triggered_at: Option<Instant> = None;
    loop {
        if closed_at.is_none() && peer_closed(ctl) {
            closed_at = Some(Instant::now());
        }
        let done = done.lock().unwrap_or_else(|e| e.into_inner());
        if *done {
            return;
        }
        match (closed_at, triggered_at) {
            (Some(closed), None) if closed.elapsed() >= GRACE => {
                eprintln!(
                    "anyrdma-perf server: the client closed the control connection in the \
                     middle of a measurement; ending it"
                );
                abort::trigger();
                triggered_at = Some(Instant::now());
            }
            (_, Some(triggered)) if triggered.elapsed() >= LAST_RESORT => {
                eprintln!(
                    "anyrdma-perf server: the measurement of a client that went away still \
                     runs {LAST_RESORT:?} after it was ended; exiting (its queue pairs cannot \
                     be taken back from a measurement that runs)"
                );
                std::process::exit(3);
            }
            _ => {}
        }
        drop(done);
        if closed_at.is_some() {
            std::thread::sleep(TICK);
        }
    }
}

/// Waits up to a tick for the peer's close of `ctl`; true if it closed.
fn peer_closed(ctl: &TcpStream) -> bool {
    let mut poll = libc::pollfd {
        fd: ctl.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: `poll` is one valid pollfd for the call's duration, and its fd is open: `ctl`
    // is owned by the calling thread until it returns.
    let ready = unsafe { libc::poll(&mut poll, 1, TICK.as_millis() as i32) };
    let closed = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR;
    ready > 0 && poll.revents & closed != 0
}
