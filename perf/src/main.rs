//! `anyrdma-perf`: anyrdma's benchmark between two hosts, measured the way perftest measures.
//!
//! ```text
//! anyrdma-perf server                                          # on host A
//! anyrdma-perf client HOST_A --test write_lat --runtime tokio  # on host B
//! ```
//!
//! The client connects a TCP control channel to the server (port 18515) and, for every
//! runtime, poll mode and test it was given, asks the server to run one measurement with it:
//! both sides set up their queue pairs (endpoints exchanged over the control channel, or a
//! connection by rdma_cm for the stream rows), meet at a barrier, and run the timed loop; the
//! client prints the figures. `anyrdma-perf client --help` lists the tests and options.
//!
//! Tests (`catalog.rs`), each as perftest's counterpart measures it:
//! * `write_lat`: `ib_write_lat`: each side RDMA-writes `size` bytes to the other and spins on
//!   the last byte of its own buffer until the peer's write lands. Busy only (memory polling
//!   has no event).
//! * `write_imm_lat`: ping-pong of `write_with_imm`, each side waiting on its receive
//!   completion: the write latency as an event-driven program sees it.
//! * `send_lat`: ping-pong of send / recv (`ib_send_lat`).
//! * `read_lat`: the client reads `size` bytes and waits for the completion (`ib_read_lat`;
//!   the figure is the whole round trip, as perftest reports it).
//! * `write_rate`, `send_rate`: the client keeps `window` work requests in flight on each of
//!   `qps` queue pairs (one CQ, one task), `batch` per doorbell; messages per second and MB/s
//!   (`ib_write_bw`, `ib_send_bw`; 64 KiB writes give the bandwidth). (`rc.rs`)
//! * `msg_lat`, `msg_rate`: the same over `anyrdma::msg::Messenger` (`messaging.rs`).
//! * `stream_bw`, `stream_owned_bw`, `stream_lat`: `anyrdma::stream::RdmaStream`;
//!   `cm_msg_bw`, `cm_msg_lat`: the messenger the stream is built on, over the same rdma_cm
//!   connection; `tcp_bw`, `tcp_lat`: the same loops over the runtime's TCP (`streaming.rs`).
//! * `ud_send_lat`, `ud_send_rate`: unreliable datagrams, as `ib_send_lat -c UD` and
//!   `ib_send_bw -c UD` (`datagrams.rs`).
//!
//! Runtimes: Tokio current-thread and multi-thread, async-std, smol, and `raw`: rdma-sys
//! driven directly (`raw.rs`), for anyrdma's overhead. Latency is half the round trip (except
//! reads); the figures are perftest's (`stats.rs`).

mod abort;
mod catalog;
mod cli;
mod client;
mod datagrams;
mod measure;
mod messaging;
mod output;
mod pacing;
mod plan;
mod progress;
mod raw;
mod rc;
mod server;
mod stats;
mod streaming;
mod watchdog;
mod wire;

use std::process::ExitCode;

use anyrdma::{Context, DeviceSpec, PortSelection};
use clap::Parser;

use cli::{Cli, Command};

/// Any error, as the measurements report them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A result with any error.
pub type Res<T> = Result<T, BoxError>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Server(args) => server::serve(args),
        Command::Client(args) => client::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("anyrdma-perf: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the device `spec` names (by default `ANYRDMA_DEVICE`'s, else the first active
/// port); with it, a description of the port and GID it uses.
pub fn open_device(spec: Option<&DeviceSpec>) -> Res<(Context, String)> {
    let selection = match spec {
        Some(spec) => PortSelection::for_spec(spec)?,
        None => anyrdma::default_port()?,
    };
    let ctx = Context::open_port(&selection)?;
    Ok((ctx, selection.to_string()))
}
