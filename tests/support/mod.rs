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
