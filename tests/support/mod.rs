//! Shared test harness: run one generic test body on each runtime.
//!
//! A behavioural test is written once as `async fn name<R: TestRuntime>()` and instantiated
//! for every runtime whose feature is enabled with [`runtime_tests!`].

#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;

use anyrdma::Runtime;

/// A runtime the tests can drive: block on a future and spawn tasks.
pub trait TestRuntime: Runtime {
    /// Printed in test output.
    const NAME: &'static str;

    /// Runs `future` to completion on a fresh instance of the runtime.
    fn block_on<F: Future>(future: F) -> F::Output;

    /// Spawns `future` as a task of the running runtime and returns its output's future.
    fn spawn<T: Send + 'static>(
        future: impl Future<Output = T> + Send + 'static,
    ) -> Pin<Box<dyn Future<Output = T> + Send>>;
}

impl TestRuntime for anyrdma_tokio::TokioRuntime {
    const NAME: &'static str = "tokio";

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("build a Tokio runtime")
            .block_on(future)
    }

    fn spawn<T: Send + 'static>(
        future: impl Future<Output = T> + Send + 'static,
    ) -> Pin<Box<dyn Future<Output = T> + Send>> {
        let handle = tokio::spawn(future);
        Box::pin(async move { handle.await.expect("spawned task panicked") })
    }
}

impl TestRuntime for anyrdma_async_std::AsyncStdRuntime {
    const NAME: &'static str = "async-std";

    fn block_on<F: Future>(future: F) -> F::Output {
        async_std::task::block_on(future)
    }

    fn spawn<T: Send + 'static>(
        future: impl Future<Output = T> + Send + 'static,
    ) -> Pin<Box<dyn Future<Output = T> + Send>> {
        Box::pin(async_std::task::spawn(future))
    }
}

impl TestRuntime for anyrdma_smol::SmolRuntime {
    const NAME: &'static str = "smol";

    fn block_on<F: Future>(future: F) -> F::Output {
        smol::block_on(future)
    }

    fn spawn<T: Send + 'static>(
        future: impl Future<Output = T> + Send + 'static,
    ) -> Pin<Box<dyn Future<Output = T> + Send>> {
        Box::pin(smol::spawn(future))
    }
}

/// True when an RDMA device is present. With none: when `ANYRDMA_REQUIRE_DEVICE=1` (as CI
/// and `scripts/test` set it inside the VM) the test fails; otherwise it says loudly that it
/// is skipped and returns false.
pub fn device_present(test: &str) -> bool {
    let found = matches!(anyrdma::devices(), Ok(list) if !list.is_empty());
    if !found {
        if std::env::var("ANYRDMA_REQUIRE_DEVICE").as_deref() == Ok("1") {
            panic!("{test}: no RDMA device, and ANYRDMA_REQUIRE_DEVICE=1 requires one");
        }
        eprintln!("SKIPPED {test}: no RDMA device here (run scripts/test, which uses the VM)");
    }
    found
}

/// Instantiates generic test bodies `async fn name<R: TestRuntime>()` once per runtime
/// whose feature is enabled: `runtime_tests!(name_a, name_b);` makes `tokio::name_a`,
/// `async_std::name_a`, `smol::name_a`, ...
#[macro_export]
macro_rules! runtime_tests {
    ($($name:ident),* $(,)?) => {
        #[cfg(feature = "tokio")]
        mod tokio {
            $(#[test]
            fn $name() {
                <anyrdma_tokio::TokioRuntime as $crate::support::TestRuntime>::block_on(
                    super::$name::<anyrdma_tokio::TokioRuntime>(),
                )
            })*
        }
        #[cfg(feature = "async-std")]
        mod async_std {
            $(#[test]
            fn $name() {
                <anyrdma_async_std::AsyncStdRuntime as $crate::support::TestRuntime>::block_on(
                    super::$name::<anyrdma_async_std::AsyncStdRuntime>(),
                )
            })*
        }
        #[cfg(feature = "smol")]
        mod smol {
            $(#[test]
            fn $name() {
                <anyrdma_smol::SmolRuntime as $crate::support::TestRuntime>::block_on(
                    super::$name::<anyrdma_smol::SmolRuntime>(),
                )
            })*
        }
    };
}

/// Two reliable connected queue pairs on one device, each with its own CQ, connected to
/// each other: the out-of-band loopback every device test starts from.
pub struct Pair<R: anyrdma::Runtime> {
    pub ctx: anyrdma::Context,
    pub pd: anyrdma::ProtectionDomain,
    pub a: anyrdma::core::QueuePair<R>,
    pub b: anyrdma::core::QueuePair<R>,
    pub cq_a: anyrdma::core::CompletionQueue<R>,
    pub cq_b: anyrdma::core::CompletionQueue<R>,
}

impl<R: anyrdma::Runtime> Pair<R> {
    pub fn new() -> Pair<R> {
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
    ) -> Pair<R> {
        let ctx = anyrdma::Context::open_default().expect("open the default RDMA device");
        let pd = ctx.alloc_pd().expect("alloc PD");
        let cq_a = anyrdma::core::CompletionQueue::<R>::new(&ctx, cq).expect("create CQ a");
        let cq_b = anyrdma::core::CompletionQueue::<R>::new(&ctx, cq).expect("create CQ b");
        let a = anyrdma::core::QueuePair::new(&pd, &cq_a, &cq_a, qp).expect("create QP a");
        let b = anyrdma::core::QueuePair::new(&pd, &cq_b, &cq_b, qp).expect("create QP b");
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
pub async fn within<R: anyrdma::Runtime, F: Future>(secs: u64, what: &str, future: F) -> F::Output {
    match anyrdma::core::timeout::<R, _>(std::time::Duration::from_secs(secs), future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: no result within {secs} s"),
    }
}
