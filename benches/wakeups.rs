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
use std::sync::Arc;

use anyrdma::{
    CompletionQueue, ConnectOptions, Context, CqOptions, PollMode, QpOptions, QueuePair,
};

#[path = "common/wakeup_count.rs"]
mod wakeup_count;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

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

/// One run: `tasks` tasks waiting on receives of one CQ (event mode) shared with the sender.
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
    Ok(
        wakeup_count::wakeups_per_completion(&pd, &sender, receiver, tasks, messages, |task| {
            rt.spawn(task)
        })
        .await?,
    )
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
