//! Shared test harness: run one test body on each runtime.
//!
//! A behavioural test is written once as `async fn name(rt: Rt)` and instantiated for every
//! runtime whose feature is enabled with [`runtime_tests!`]: the runtime is a value passed to
//! the body, which it uses to spawn tasks and to name itself in messages. The anyrdma objects
//! the body creates use the default runtime of the build's one feature: the same runtime.

#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;

mod device;
#[allow(unused_imports)] // each test file uses part of it
pub use device::{cm_ip, device_present};

/// A runtime the tests can drive: block on a future and spawn tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rt {
    /// Tokio, multi-thread scheduler with two workers.
    Tokio,
    /// Tokio, current-thread scheduler.
    TokioCurrentThread,
    /// async-std.
    AsyncStd,
    /// smol.
    Smol,
}

impl Rt {
    /// Printed in test output.
    pub fn name(self) -> &'static str {
        match self {
            Rt::Tokio => "tokio",
            Rt::TokioCurrentThread => "tokio-current-thread",
            Rt::AsyncStd => "async-std",
            Rt::Smol => "smol",
        }
    }

    /// The name of the anyrdma runtime adapter behind it (`RuntimeHandle::name`).
    pub fn adapter(self) -> &'static str {
        match self {
            Rt::Tokio | Rt::TokioCurrentThread => "tokio",
            Rt::AsyncStd => "async-std",
            Rt::Smol => "smol",
        }
    }

    /// The module [`runtime_tests!`] puts this runtime's tests in: a test's full name is
    /// `"{module}::{test}"`, which a test needs to run itself again in a child process.
    pub fn module(self) -> &'static str {
        match self {
            Rt::Tokio => "tokio",
            Rt::TokioCurrentThread => "tokio_ct",
            Rt::AsyncStd => "async_std",
            Rt::Smol => "smol",
        }
    }

    /// The anyrdma runtime behind it.
    pub fn handle(self) -> anyrdma::RuntimeHandle {
        match self {
            Rt::Tokio | Rt::TokioCurrentThread => anyrdma_tokio::Tokio.into(),
            Rt::AsyncStd => anyrdma_async_std::AsyncStd.into(),
            Rt::Smol => anyrdma_smol::Smol.into(),
        }
    }

    /// Runs `future` to completion on a fresh instance of the runtime.
    pub fn block_on<F: Future>(self, future: F) -> F::Output {
        match self {
            Rt::Tokio => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("build a Tokio runtime")
                .block_on(future),
            Rt::TokioCurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a Tokio runtime")
                .block_on(future),
            Rt::AsyncStd => async_std::task::block_on(future),
            Rt::Smol => smol::block_on(future),
        }
    }

    /// Spawns `future` as a task of the running runtime and returns its output's future.
    pub fn spawn<T: Send + 'static>(
        self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Pin<Box<dyn Future<Output = T> + Send>> {
        match self {
            Rt::Tokio | Rt::TokioCurrentThread => {
                let handle = tokio::spawn(future);
                Box::pin(async move { handle.await.expect("spawned task panicked") })
            }
            Rt::AsyncStd => Box::pin(async_std::task::spawn(future)),
            Rt::Smol => Box::pin(smol::spawn(future)),
        }
    }
}
/// Tests of one binary that must not share the process with the others (they compare
/// process-wide counts such as `registered_regions()` or the device's packet counters, or are
/// heavy enough to push the others past their time limits) take this lock for writing
/// ([`alone`]); every other test of such a binary takes it for reading ([`beside_others`]),
/// so those still run side by side.
static ALONE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Runs the calling test with the others of its binary (see [`ALONE`]).
pub fn beside_others() -> std::sync::RwLockReadGuard<'static, ()> {
    ALONE.read().unwrap_or_else(|p| p.into_inner())
}

/// Runs the calling test with no other test of its binary (see [`ALONE`]).
pub fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    ALONE.write().unwrap_or_else(|p| p.into_inner())
}

/// splitmix64's output function of `z`: a well-mixed 64-bit value per index, for contents
/// and sizes that a test can recompute at the other end.
pub fn mix(z: u64) -> u64 {
    let z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A child process that is killed (and reaped) when this is dropped, so that a failing test
/// leaves no peer behind.
pub struct PeerProcess(pub std::process::Child);

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs this test binary again as its test `child` of runtime `rt` (a body that calls
/// [`silent_stream_peer`] with `env` and `hello`), with `env` set to `listener`'s address;
/// returns the child and the stream it connected, its `hello` read.
pub async fn start_silent_stream_peer(
    rt: Rt,
    child: &str,
    env: &str,
    hello: &[u8],
    listener: &anyrdma::stream::StreamListener,
) -> (PeerProcess, anyrdma::stream::RdmaStream) {
    use futures_util::AsyncReadExt;
    let test = format!("{}::{child}", rt.module());
    let process = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(env, listener.local_addr().to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start the peer process");
    let peer = PeerProcess(process);
    let mut stream = within(30, "the peer process connects", listener.accept())
        .await
        .expect("accept the peer process");
    let mut got = vec![0; hello.len()];
    within(10, "the peer's hello", stream.read_exact(&mut got))
        .await
        .expect("read the peer's hello");
    assert_eq!(got, hello, "the peer's hello");
    (peer, stream)
}

/// The body of a child process that plays a stream peer which stops reading (for tests that
/// kill it): when `env` names an address, connects a stream to it, writes and flushes
/// `hello`, then reads nothing for a minute (the test kills it long before); in a normal
/// run (`env` unset) it does nothing.
pub async fn silent_stream_peer(env: &str, hello: &[u8]) {
    use futures_util::AsyncWriteExt;
    let Ok(addr) = std::env::var(env) else {
        return;
    };
    let addr: std::net::SocketAddr = addr.parse().expect("the address");
    let mut stream = anyrdma::stream::RdmaStream::connect(addr)
        .await
        .expect("the peer connects");
    stream.write_all(hello).await.expect("the peer writes");
    stream.flush().await.expect("the peer flushes");
    anyrdma::sleep(std::time::Duration::from_secs(60)).await;
}

/// Instantiates test bodies `async fn name(rt: Rt)` once per runtime whose feature is
/// enabled: `runtime_tests!(name_a, name_b);` makes `tokio::name_a`, `tokio_ct::name_a`,
/// `async_std::name_a`, `smol::name_a`, ...
#[macro_export]
macro_rules! runtime_tests {
    ($($name:ident),* $(,)?) => {
        #[cfg(feature = "tokio")]
        mod tokio {
            $(#[test]
            fn $name() {
                $crate::support::Rt::Tokio.block_on(super::$name($crate::support::Rt::Tokio))
            })*
        }
        #[cfg(feature = "tokio")]
        mod tokio_ct {
            $(#[test]
            fn $name() {
                let rt = $crate::support::Rt::TokioCurrentThread;
                rt.block_on(super::$name(rt))
            })*
        }
        #[cfg(feature = "async-std")]
        mod async_std {
            $(#[test]
            fn $name() {
                $crate::support::Rt::AsyncStd.block_on(super::$name($crate::support::Rt::AsyncStd))
            })*
        }
        #[cfg(feature = "smol")]
        mod smol {
            $(#[test]
            fn $name() {
                $crate::support::Rt::Smol.block_on(super::$name($crate::support::Rt::Smol))
            })*
        }
    };
}

/// Two reliable connected queue pairs on one device, each with its own CQ, connected to
/// each other: the out-of-band loopback every device test starts from.
pub struct Pair {
    pub ctx: anyrdma::Context,
    pub pd: anyrdma::ProtectionDomain,
    pub a: anyrdma::QueuePair,
    pub b: anyrdma::QueuePair,
    pub cq_a: anyrdma::CompletionQueue,
    pub cq_b: anyrdma::CompletionQueue,
}

impl Pair {
    pub fn new() -> Pair {
        Self::with(
            anyrdma::CqOptions::default(),
            anyrdma::QpOptions::default(),
            anyrdma::ConnectOptions::default(),
        )
    }

    pub fn with(
        cq: anyrdma::CqOptions,
        qp: anyrdma::QpOptions,
        connect: anyrdma::ConnectOptions,
    ) -> Pair {
        let ctx = anyrdma::Context::open_default().expect("open the default RDMA device");
        Self::on(ctx, cq, qp, connect)
    }

    /// A pair on `ctx` (and so on its runtime).
    pub fn on(
        ctx: anyrdma::Context,
        cq: anyrdma::CqOptions,
        qp: anyrdma::QpOptions,
        connect: anyrdma::ConnectOptions,
    ) -> Pair {
        let pd = ctx.alloc_pd().expect("alloc PD");
        let cq_a = anyrdma::CompletionQueue::new(&ctx, cq).expect("create CQ a");
        let cq_b = anyrdma::CompletionQueue::new(&ctx, cq).expect("create CQ b");
        let a = anyrdma::QueuePair::new(&pd, &cq_a, &cq_a, qp).expect("create QP a");
        let b = anyrdma::QueuePair::new(&pd, &cq_b, &cq_b, qp).expect("create QP b");
        a.connect(&b.endpoint(), connect).expect("connect a to b");
        b.connect(&a.endpoint(), connect).expect("connect b to a");
        Pair {
            ctx,
            pd,
            a,
            b,
            cq_a,
            cq_b,
        }
    }

    /// A local buffer of `len` bytes filled with a pattern seeded by `seed`.
    pub fn patterned(&self, len: usize, seed: u8) -> anyrdma::LocalBuf {
        let mut buf = self.pd.alloc(len, anyrdma::Access::LOCAL).expect("alloc");
        fill(&mut buf, seed);
        buf
    }
}

/// Fills `bytes` with a pattern that differs per position and per `seed`.
pub fn fill(bytes: &mut [u8], seed: u8) {
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8);
    }
}

/// Whether `bytes` hold the pattern of `fill(.., seed)`.
pub fn holds_pattern(bytes: &[u8], seed: u8) -> bool {
    bytes
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8))
}

/// Runs `future`, failing the test if it takes longer than `secs`: a device test must
/// never hang.
pub async fn within<F: Future>(secs: u64, what: &str, future: F) -> F::Output {
    match anyrdma::timeout(std::time::Duration::from_secs(secs), future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: no result within {secs} s"),
    }
}

/// Ends the whole test process if the guard lives longer than `secs`: for tests whose failure
/// is a hang that no timer inside the runtime can break (a task that never yields).
pub fn watchdog(secs: u64, what: &'static str) -> Watchdog {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            wait.recv_timeout(std::time::Duration::from_secs(secs))
        {
            // Straight to the process's stderr: the test harness captures eprintln! of the
            // test's threads, and would drop it at exit.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "{what}: still running after {secs} s: a task never yields (aborting)"
            );
            std::process::exit(101);
        }
    });
    Watchdog(done)
}

/// See [`watchdog`]: dropping it disarms the watchdog.
pub struct Watchdog(std::sync::mpsc::Sender<()>);

#[allow(unused_imports)] // not every test binary yields
pub use anyrdma::runtime::budget::yield_now;

/// Polls `cq` until nothing is in flight (the completions of dropped operations arrive), for
/// up to 20 s; `what` names the operations in the failure message.
pub async fn drain(cq: &anyrdma::CompletionQueue, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cq.in_flight() > 0 {
        cq.poll_now();
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {} operations never completed",
            cq.in_flight()
        );
        anyrdma::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Two connected pairs of queue pairs: `a[0]` and `a[1]` share one completion queue (event
/// mode), and their peers `b[0]`, `b[1]` share another.
pub struct SharedCqPairs {
    pub ctx: anyrdma::Context,
    pub pd: anyrdma::ProtectionDomain,
    pub shared: anyrdma::CompletionQueue,
    pub peers: anyrdma::CompletionQueue,
    pub a: [anyrdma::QueuePair; 2],
    pub b: [anyrdma::QueuePair; 2],
}

impl SharedCqPairs {
    pub fn new() -> SharedCqPairs {
        let ctx = anyrdma::Context::open_default().expect("open the default RDMA device");
        let pd = ctx.alloc_pd().expect("alloc PD");
        let cq = || anyrdma::CompletionQueue::new(&ctx, anyrdma::CqOptions::default()).expect("CQ");
        let (shared, peers) = (cq(), cq());
        let qp = |cq: &anyrdma::CompletionQueue| {
            anyrdma::QueuePair::new(&pd, cq, cq, anyrdma::QpOptions::default()).expect("QP")
        };
        let a = [qp(&shared), qp(&shared)];
        let b = [qp(&peers), qp(&peers)];
        for (one, other) in a.iter().zip(&b) {
            one.connect(&other.endpoint(), anyrdma::ConnectOptions::default())
                .expect("connect");
            other
                .connect(&one.endpoint(), anyrdma::ConnectOptions::default())
                .expect("connect");
        }
        SharedCqPairs {
            ctx,
            pd,
            shared,
            peers,
            a,
            b,
        }
    }
}

/// Counts wake-ups, and wakes nothing else.
pub struct WakeCount(std::sync::atomic::AtomicUsize);

impl std::task::Wake for WakeCount {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A future polled by hand with a waker of its own that counts its wake-ups: stands for a
/// task, to see whether the library wakes it. Poll it from a task of the runtime.
pub struct HandPolled<F: Future> {
    /// `None` once dropped: the count stays readable.
    future: Option<Pin<Box<F>>>,
    count: std::sync::Arc<WakeCount>,
    waker: std::task::Waker,
}

impl<F: Future> HandPolled<F> {
    pub fn new(future: F) -> Self {
        let count = std::sync::Arc::new(WakeCount(std::sync::atomic::AtomicUsize::new(0)));
        HandPolled {
            future: Some(Box::pin(future)),
            waker: count.clone().into(),
            count,
        }
    }

    pub fn poll(&mut self) -> std::task::Poll<F::Output> {
        let mut cx = std::task::Context::from_waker(&self.waker);
        let future = self.future.as_mut().expect("polled after it was dropped");
        future.as_mut().poll(&mut cx)
    }

    /// Drops the future (as a task that gives it up), keeping the count.
    pub fn drop_future(&mut self) {
        self.future = None;
    }

    /// How often it was woken.
    pub fn woken(&self) -> usize {
        self.count.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits up to 10 s (on the runtime's clock) for its first wake-up; else panics with
    /// `never` (called then, so that it can say what happened instead).
    pub async fn until_woken(&self, never: impl Fn() -> String) {
        let step = std::time::Duration::from_millis(20);
        let mut waited = std::time::Duration::ZERO;
        while self.woken() == 0 {
            assert!(waited < std::time::Duration::from_secs(10), "{}", never());
            anyrdma::sleep(step).await;
            waited += step;
        }
    }
}
