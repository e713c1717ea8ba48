//! What the connection examples share: running on the enabled runtime, spawning a task,
//! message sizes and the latency summary. Each example reads its own command line with clap.
//!
//! The examples' own code names no runtime; these few lines pick the one whose feature is
//! enabled (Tokio first, then async-std, then smol).

#![allow(dead_code)] // each example uses part of it

use std::future::Future;
use std::time::Duration;

/// Runs `future` to completion on the enabled runtime (multi-threaded where it has one).
pub fn block_on<F: Future>(future: F) -> F::Output {
    #[cfg(feature = "tokio")]
    return tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future);
    #[cfg(all(feature = "async-std", not(feature = "tokio")))]
    return async_std::task::block_on(future);
    #[cfg(all(feature = "smol", not(feature = "tokio"), not(feature = "async-std")))]
    return smol::block_on(future);
}

/// Runs `task` beside the caller on the enabled runtime.
pub fn spawn<F: Future<Output = ()> + Send + 'static>(task: F) {
    #[cfg(feature = "tokio")]
    drop(tokio::spawn(task));
    #[cfg(all(feature = "async-std", not(feature = "tokio")))]
    drop(async_std::task::spawn(task));
    #[cfg(all(feature = "smol", not(feature = "tokio"), not(feature = "async-std")))]
    smol::spawn(task).detach();
}

/// Runs `task` beside the caller on the enabled runtime; the returned future gives its
/// output.
pub fn spawn_join<T: Send + 'static>(
    task: impl Future<Output = T> + Send + 'static,
) -> std::pin::Pin<Box<dyn Future<Output = T> + Send>> {
    #[cfg(feature = "tokio")]
    return {
        let handle = tokio::spawn(task);
        Box::pin(async move { handle.await.expect("a spawned task panicked") })
    };
    #[cfg(all(feature = "async-std", not(feature = "tokio")))]
    return Box::pin(async_std::task::spawn(task));
    #[cfg(all(feature = "smol", not(feature = "tokio"), not(feature = "async-std")))]
    return Box::pin(smol::spawn(task));
}

/// The side an example with a server and a client runs: exactly one of `--listen` and
/// `--connect` (each example's help says its default port).
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct Side {
    /// Serve on this address, an RDMA interface's.
    #[arg(long, value_name = "ADDR[:PORT]")]
    listen: Option<String>,
    /// Connect to the server at this address.
    #[arg(long, value_name = "ADDR[:PORT]")]
    connect: Option<String>,
}

/// What [`Side`] asked for.
pub enum Role<'a> {
    Listen(&'a str),
    Connect(&'a str),
}

impl Side {
    pub fn role(&self) -> Role<'_> {
        match (&self.listen, &self.connect) {
            (Some(listen), _) => Role::Listen(listen),
            (None, Some(connect)) => Role::Connect(connect),
            (None, None) => unreachable!("clap requires --listen or --connect"),
        }
    }
}

/// Prints `message` and exits with status 1.
pub fn fail(program: &str, message: &str) -> ! {
    eprintln!("{program}: {message}");
    std::process::exit(1)
}

/// The median and the 99th percentile of `samples`.
pub fn median_p99(samples: &mut [Duration]) -> (Duration, Duration) {
    if samples.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Message sizes: one, or a range that messages spread over.
#[derive(Clone, Copy)]
pub struct Sizes {
    pub min: usize,
    pub max: usize,
}

impl std::str::FromStr for Sizes {
    type Err = String;

    /// `N` or `MIN-MAX`.
    fn from_str(text: &str) -> Result<Sizes, String> {
        let number = |t: &str| t.parse::<usize>().ok();
        let parsed = match text.split_once('-') {
            Some((min, max)) => number(min).zip(number(max)),
            None => number(text).map(|size| (size, size)),
        };
        match parsed {
            Some((min, max)) if min <= max => Ok(Sizes { min, max }),
            _ => Err(format!("takes N or MIN-MAX (MIN <= MAX), not {text:?}")),
        }
    }
}

impl Sizes {
    /// The size of message `i`: spread evenly (a stride prime to any range) over the range.
    pub fn of(self, i: u64) -> usize {
        let span = (self.max - self.min + 1) as u64;
        self.min + (i.wrapping_mul(7919) % span) as usize
    }
}

impl std::fmt::Display for Sizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{} bytes", self.min)
        } else {
            write!(f, "{}-{} bytes", self.min, self.max)
        }
    }
}
