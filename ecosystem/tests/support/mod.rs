//! What the ecosystem tests share: the device check and address of the `anyrdma` package's
//! tests (its tests/support/device.rs, included by path: hyper and tonic must not enter that
//! package's build), the two Tokio schedulers, time limits, and a stream that breaks bytes
//! on purpose.

#![allow(dead_code)] // each test file uses part of it

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[path = "../../../tests/support/device.rs"]
mod device;
#[allow(unused_imports)] // each test file uses part of it
pub use device::{cm_ip, device_present};

/// Where the servers listen: rxe0's address in the guest, 169.254.77.1 (`ANYRDMA_TEST_CM_ADDR`
/// overrides it), on a port the system picks (rdma_cm cannot route 127.0.0.1).
pub fn listen_addr() -> SocketAddr {
    SocketAddr::new(cm_ip(), 0)
}

/// The Tokio schedulers every test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Multi-thread scheduler with two workers (the guest has two CPUs).
    MultiThread,
    /// Current-thread scheduler: server and client tasks share one thread.
    CurrentThread,
}

impl Flavor {
    /// Runs `future` on a fresh runtime of this flavor; the whole test ends with a failure
    /// after `secs` seconds (by the runtime's timer, and by a thread of its own should a task
    /// never yield to that timer).
    pub fn run<F: Future>(self, what: &'static str, secs: u64, future: F) -> F::Output {
        let runtime = match self {
            Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
        }
        .expect("build a Tokio runtime");
        let _watchdog = watchdog(secs + 15, what);
        let started = std::time::Instant::now();
        let output = runtime.block_on(async {
            match tokio::time::timeout(Duration::from_secs(secs), future).await {
                Ok(output) => output,
                Err(_) => panic!("{what} ({self:?}): no result within {secs} s"),
            }
        });
        eprintln!(
            "{what} ({self:?}): {:.2} s",
            started.elapsed().as_secs_f64()
        );
        output
    }
}

/// Ends the whole test process if the guard lives longer than `secs`: for a hang that no
/// timer inside the runtime can break.
pub fn watchdog(secs: u64, what: &'static str) -> Watchdog {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            wait.recv_timeout(Duration::from_secs(secs))
        {
            // Straight to the process's stderr: the harness captures the test's own output
            // and would drop it at exit.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "{what}: still running after {secs} s (aborting)"
            );
            std::process::exit(101);
        }
    });
    Watchdog(done)
}

/// See [`watchdog`]: dropping it disarms the watchdog.
pub struct Watchdog(std::sync::mpsc::Sender<()>);

/// A fault a [`Tamper`] makes in the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The byte is skipped.
    Lose,
    /// The byte is read twice.
    Duplicate,
    /// The byte and the next change places.
    Reorder,
}

/// A stream that passes its writes through and breaks one byte of what it reads, once armed
/// ([`Trigger::arm`]): a stand-in for a transport that loses, duplicates or reorders a byte,
/// to show that the tests' checks catch each.
pub struct Tamper<T> {
    inner: T,
    fault: Fault,
    /// Bytes read from `inner` so far.
    read: Arc<AtomicU64>,
    /// The position (in bytes read from `inner`) of the byte to break; `u64::MAX`: none.
    at: Arc<AtomicU64>,
    /// A byte held back to go after the next one (a reorder at the end of a read).
    held: Option<u8>,
    /// Bytes read and broken, not yet handed out.
    out: Vec<u8>,
}

/// Arms a [`Tamper`] from outside (the stream itself is moved into hyper).
#[derive(Clone)]
pub struct Trigger {
    read: Arc<AtomicU64>,
    at: Arc<AtomicU64>,
}

impl Trigger {
    /// Breaks the byte `after` bytes past what the stream has read so far.
    pub fn arm(&self, after: u64) {
        let at = self.read.load(Ordering::SeqCst) + after;
        self.at.store(at, Ordering::SeqCst);
    }
}

impl<T> Tamper<T> {
    /// `inner`, to be broken by `fault` once armed through the trigger.
    pub fn new(inner: T, fault: Fault) -> (Tamper<T>, Trigger) {
        let read = Arc::new(AtomicU64::new(0));
        let at = Arc::new(AtomicU64::new(u64::MAX));
        let trigger = Trigger {
            read: read.clone(),
            at: at.clone(),
        };
        let tamper = Tamper {
            inner,
            fault,
            read,
            at,
            held: None,
            out: Vec::new(),
        };
        (tamper, trigger)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tamper<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let mut scratch = vec![0; buf.remaining().max(1)];
            let mut from_inner = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut from_inner) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            let mut got = from_inner.filled().to_vec();
            if got.is_empty() {
                // The end of the stream: a held byte has no next one to swap with.
                if let Some(byte) = this.held.take() {
                    this.out.push(byte);
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            let start = this.read.fetch_add(got.len() as u64, Ordering::SeqCst);
            let at = this.at.load(Ordering::SeqCst);
            if let Some(byte) = this.held.take() {
                got.insert(1, byte);
            } else if (start..start + got.len() as u64).contains(&at) {
                this.at.store(u64::MAX, Ordering::SeqCst);
                let i = (at - start) as usize;
                match this.fault {
                    Fault::Lose => {
                        got.remove(i);
                    }
                    Fault::Duplicate => got.insert(i, got[i]),
                    Fault::Reorder if i + 1 < got.len() => got.swap(i, i + 1),
                    Fault::Reorder => this.held = got.pop(),
                }
            }
            // Nothing to hand out yet (the one byte read was lost or held): read again, so
            // that the reader does not take an empty read for the end of the stream.
            this.out = got;
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tamper<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
