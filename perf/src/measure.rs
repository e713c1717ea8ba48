//! One measurement on both sides: the runtime the client asked for gets a fresh executor,
//! the context is bound to it, and the test's module runs the timed loop.

use std::net::{IpAddr, TcpStream};

use anyrdma::Context;

use crate::catalog::{Rt, Test};
use crate::stats::{latency, rate, Outcome};
use crate::wire::{barrier, Spec};
use crate::{abort, datagrams, messaging, raw, rc, streaming, Res};

/// Runs `spec` on a fresh executor of its runtime (raw verbs: on this thread); the client
/// gets the figures. The control channel goes in and comes back, as the measurement may run
/// on another thread (Tokio's workers). `cm` is the server's address for rdma_cm.
pub fn run(
    ctx: Context,
    spec: Spec,
    client: bool,
    ctl: TcpStream,
    cm: Option<IpAddr>,
) -> Res<(Outcome, TcpStream)> {
    let ctx = match spec.rt {
        Rt::TokioCt | Rt::TokioMt => ctx.with_runtime(anyrdma::runtime::Tokio),
        Rt::AsyncStd => ctx.with_runtime(anyrdma::runtime::AsyncStd),
        Rt::Smol => ctx.with_runtime(anyrdma::runtime::Smol),
        Rt::Raw => return raw::measure(&ctx, spec, client, ctl),
    };
    // The server's measurement ends when its client goes away (`abort.rs`); the client's is
    // not wrapped, so what the benchmark measures on it is unchanged.
    let measurement = async move {
        let measurement = on_runtime(ctx, spec, client, ctl, cm);
        if client {
            measurement.await
        } else {
            abort::abortable(measurement).await
        }
    };
    match spec.rt {
        Rt::TokioCt => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(measurement),
        Rt::TokioMt => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move { tokio::spawn(measurement).await? })
        }
        Rt::AsyncStd => async_std::task::block_on(measurement),
        Rt::Smol => smol::block_on(measurement),
        Rt::Raw => unreachable!("raw verbs were measured above"),
    }
}

/// One measurement with anyrdma on the runtime `ctx` is bound to.
async fn on_runtime(
    ctx: Context,
    spec: Spec,
    client: bool,
    mut ctl: TcpStream,
    cm: Option<IpAddr>,
) -> Res<(Outcome, TcpStream)> {
    if spec.test.is_ud() {
        let outcome = datagrams::measure(&ctx, &spec, client, &mut ctl).await?;
        return Ok((outcome, ctl));
    }
    if spec.test.is_stream() {
        // It keeps the connection until both sides are done.
        let outcome = streaming::measure(&ctx, &spec, client, &mut ctl, cm).await?;
        return Ok((outcome, ctl));
    }
    let side = rc::setup(&ctx, &spec, &mut ctl)?;
    let outcome = match spec.test {
        Test::WriteLat => latency(&rc::lat_write(&side, &spec, client, &mut ctl).await?, true),
        Test::WriteImmLat => latency(
            &rc::lat_msg(&side, &spec, client, true, &mut ctl).await?,
            true,
        ),
        Test::SendLat => latency(
            &rc::lat_msg(&side, &spec, client, false, &mut ctl).await?,
            true,
        ),
        Test::ReadLat => latency(&rc::lat_read(&side, &spec, client, &mut ctl).await?, false),
        Test::WriteRate | Test::SendRate => {
            match rc::rate_run(&side, &spec, client, &mut ctl).await? {
                Some(elapsed) => rate(spec.iters * spec.qps, spec.size, elapsed),
                None => Outcome::default(),
            }
        }
        Test::MsgLat => latency(
            &messaging::msg_lat(&side, &spec, client, &mut ctl).await?,
            true,
        ),
        Test::MsgRate => match messaging::msg_rate(&side, &spec, client, &mut ctl).await? {
            Some(elapsed) => rate(spec.iters, spec.size, elapsed),
            None => Outcome::default(),
        },
        _ => unreachable!("datagram and stream rows are measured above"),
    };
    // The peer keeps its queue pairs until both sides are done.
    barrier(&mut ctl)?;
    drop(side);
    Ok((outcome, ctl))
}
