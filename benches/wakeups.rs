//! Wake-ups per completion when many tasks wait on one completion queue (scripts/bench).
//!
//! ```text
//! cargo bench --bench wakeups --all-features -- [--runtime tokio-ct,tokio-mt,async-std,smol]
//!     [--tasks 1,100,1000] [--messages 10000] [--device NAME] [--json FILE]
//! ```
//!
//! `tasks` tasks each wait on one receive of a shared CQ (event mode); one sender sends
//! `messages` messages to them, never more than the receives posted (so no
//! receiver-not-ready), then one message per task that tells it to stop. Every poll of a
//! receive's future after its first is a wake-up; the figure is wake-ups per completed
//! receive. Printed as one line per run, and appended to FILE as JSON.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyrdma::runtime::budget::yield_now;

use anyrdma::{
    Access, CompletionQueue, ConnectOptions, Context, CqOptions, PollMode, QpOptions, QueuePair,
};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The immediate that tells a receiving task to stop.
const STOP: u32 = u32::MAX;
const LEN: usize = 32;
/// Sends in flight before the sender waits for the oldest.
const SEND_WINDOW: usize = 128;

#[derive(Clone, Copy)]
enum Rt {
    TokioCt,
    TokioMt,
    AsyncStd,
    Smol,
}

impl Rt {
    fn parse(name: &str) -> Res<Rt> {
        Ok(match name {
            "tokio-ct" => Rt::TokioCt,
            "tokio-mt" => Rt::TokioMt,
            "async-std" => Rt::AsyncStd,
            "smol" => Rt::Smol,
            _ => return Err(format!("unknown runtime {name}").into()),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Rt::TokioCt => "tokio-ct",
            Rt::TokioMt => "tokio-mt",
            Rt::AsyncStd => "async-std",
            Rt::Smol => "smol",
        }
    }

    fn handle(self) -> anyrdma::RuntimeHandle {
        match self {
            Rt::TokioCt | Rt::TokioMt => anyrdma::runtime::Tokio.into(),
            Rt::AsyncStd => anyrdma::runtime::AsyncStd.into(),
            Rt::Smol => anyrdma::runtime::Smol.into(),
        }
    }

    /// Runs `main` on this runtime; `main` spawns with [`spawn`].
    fn block_on<F: Future>(self, main: F) -> F::Output {
        match self {
            Rt::TokioCt => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(main),
            Rt::TokioMt => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(main),
            Rt::AsyncStd => async_std::task::block_on(main),
            Rt::Smol => smol::block_on(main),
        }
    }

    fn spawn<T: Send + 'static>(
        self,
        task: impl Future<Output = T> + Send + 'static,
    ) -> Pin<Box<dyn Future<Output = T> + Send>> {
        match self {
            Rt::TokioCt | Rt::TokioMt => {
                let handle = tokio::spawn(task);
                Box::pin(async move { handle.await.expect("task panicked") })
            }
            Rt::AsyncStd => Box::pin(async_std::task::spawn(task)),
            Rt::Smol => Box::pin(smol::spawn(task)),
        }
    }
}

/// Counts the polls of a future after its first: each is a wake-up.
struct Counted<'a, F> {
    future: F,
    polled: bool,
    wakeups: &'a AtomicU64,
}

impl<F: Future + Unpin> Future for Counted<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        if self.polled {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
        }
        self.polled = true;
        Pin::new(&mut self.future).poll(cx)
    }
}

/// One run: wake-ups per completed receive.
async fn measure(rt: Rt, ctx: Context, tasks: u32, messages: u32) -> Res<f64> {
    let pd = ctx.alloc_pd()?;
    let options = CqOptions {
        entries: 4096,
        poll_mode: PollMode::Event { spin: 0 },
    };
    let cq = CompletionQueue::new(&ctx, options)?;
    let qp_options = QpOptions {
        max_send_wr: 256,
        max_recv_wr: tasks.max(16),
        ..QpOptions::default()
    };
    let sender = QueuePair::new(&pd, &cq, &cq, qp_options)?;
    let receiver = Arc::new(QueuePair::new(&pd, &cq, &cq, qp_options)?);
    sender.connect(&receiver.endpoint(), ConnectOptions::default())?;
    receiver.connect(&sender.endpoint(), ConnectOptions::default())?;

    let wakeups = Arc::new(AtomicU64::new(0));
    let credits = Arc::new(AtomicI64::new(0));
    let mut receivers = Vec::new();
    for _ in 0..tasks {
        let (receiver, wakeups, credits) = (receiver.clone(), wakeups.clone(), credits.clone());
        let mut receive = Some(receiver.recv(pd.alloc(LEN, Access::LOCAL)?));
        credits.fetch_add(1, Ordering::AcqRel);
        receivers.push(rt.spawn(async move {
            let mut received = 0u32;
            while let Some(op) = receive.take() {
                let counted = Counted {
                    future: op,
                    polled: false,
                    wakeups: &wakeups,
                };
                let (result, buf) = counted.await;
                match result {
                    Ok(got) if got.imm == Some(STOP) => break,
                    Ok(_) => received += 1,
                    Err(err) => return Err(err.to_string()),
                }
                receive = Some(receiver.recv(buf));
                credits.fetch_add(1, Ordering::AcqRel);
            }
            Ok(received)
        }));
    }
    let mut in_flight = std::collections::VecDeque::new();
    for seq in (0..messages).chain(std::iter::repeat(STOP).take(tasks as usize)) {
        while credits.load(Ordering::Acquire) <= 0 {
            yield_now().await;
        }
        credits.fetch_sub(1, Ordering::AcqRel);
        in_flight.push_back(sender.send_with_imm(pd.alloc(LEN, Access::LOCAL)?, seq));
        if in_flight.len() >= SEND_WINDOW {
            let (sent, _) = in_flight.pop_front().expect("a send in flight").await;
            sent?;
        }
    }
    for op in in_flight {
        op.await.0?;
    }
    let mut received = 0;
    for task in receivers {
        received += task.await?;
    }
    if received != messages {
        return Err(format!("{} of {messages} messages arrived", received).into());
    }
    Ok(wakeups.load(Ordering::Relaxed) as f64 / f64::from(messages + tasks))
}

fn main() -> Res<()> {
    let mut runtimes = vec![Rt::TokioCt, Rt::TokioMt, Rt::AsyncStd, Rt::Smol];
    let mut task_counts = vec![1, 100, 1000];
    let mut messages = 10_000;
    let mut device = None;
    let mut json = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--runtime" => {
                runtimes = value()?.split(',').map(Rt::parse).collect::<Res<_>>()?;
            }
            "--tasks" => {
                task_counts = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--messages" => messages = value()?.parse()?,
            "--device" => device = Some(value()?),
            "--json" => json = Some(value()?),
            // `--bench` from cargo; an empty argument from an empty option list.
            "--bench" | "" => {}
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    for rt in runtimes {
        for &tasks in &task_counts {
            let ctx = match &device {
                Some(name) => Context::open(name)?,
                None => Context::open_default()?,
            }
            .with_runtime(rt.handle());
            let per_completion = rt.block_on(measure(rt, ctx, tasks, messages))?;
            println!(
                "{:>9}: {tasks:>5} waiting tasks, {messages} messages: {per_completion:.3} wake-ups per completion",
                rt.name()
            );
            if let Some(path) = &json {
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                writeln!(
                    file,
                    "{{\"test\":\"wakeups\",\"runtime\":\"{}\",\"tasks\":{tasks},\"messages\":{messages},\"per_completion\":{per_completion:.4}}}",
                    rt.name()
                )?;
            }
        }
    }
    Ok(())
}
