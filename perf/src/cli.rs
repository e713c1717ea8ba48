//! The command line: `anyrdma-perf server` and `anyrdma-perf client HOST`.

use std::net::IpAddr;

use anyrdma::DeviceSpec;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::catalog::{Mode, Rt, Test};

/// The control channel's TCP port when none is given (perftest's).
pub const DEFAULT_PORT: u16 = 18515;

/// Latency, message rate and bandwidth of anyrdma between two hosts, measured as perftest
/// measures, on every runtime anyrdma supports and against raw verbs.
#[derive(Debug, Parser)]
#[command(name = "anyrdma-perf", version, about, long_about = LONG_ABOUT)]
pub struct Cli {
    /// The side this process plays.
    #[command(subcommand)]
    pub command: Command,
}

const LONG_ABOUT: &str = "\
Latency, message rate and bandwidth of anyrdma between two hosts, measured as perftest measures \
(median and 99th percentile of the per-iteration times; messages and bytes per second from the \
first post to the last completion), on Tokio, async-std and smol and against raw verbs.

Start `anyrdma-perf server` on one host, then `anyrdma-perf client HOST` on the other, e.g.
    anyrdma-perf client 192.168.1.10 --test write_lat --runtime tokio
The client asks the server for each measurement in turn over a TCP control channel (port 18515) \
and prints the results; the server follows the client's choice of test, runtime and poll mode.";

/// The two sides.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Wait for clients and run each measurement they ask for (start it first).
    Server(ServerArgs),
    /// Connect to a server and measure; prints a table, or JSON rows with --json.
    Client(Box<ClientArgs>),
}

/// `anyrdma-perf server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// TCP port of the control channel.
    #[arg(long, short, default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Address to listen on (`::` for IPv6).
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,

    /// RDMA device: `name`, `name:port` or `name:port:gid_index` (default: $ANYRDMA_DEVICE,
    /// else the first active port).
    #[arg(long, short)]
    pub device: Option<DeviceSpec>,

    /// Serve one client, then exit (with status 1 if its session failed).
    #[arg(long)]
    pub once: bool,
}

/// When the client shows its progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    /// When standard error is a terminal.
    Auto,
    /// Always (a line per measurement when standard error is not a terminal).
    Always,
    /// Never.
    Never,
}

/// A `--test` value: one test, or a group of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestSet(pub Vec<Test>);

impl TestSet {
    /// A test's name, or a group: `lat` (write_lat, write_imm_lat, send_lat, read_lat),
    /// `rate` (write_rate, send_rate), `msg`, `stream`, `ud` or `all`.
    pub fn parse(text: &str) -> Result<TestSet, String> {
        let pick = |keep: fn(Test) -> bool| Test::ALL.into_iter().filter(|t| keep(*t)).collect();
        Ok(TestSet(match text {
            "all" => Test::ALL.to_vec(),
            "lat" => pick(Test::is_verbs_lat),
            "rate" => pick(Test::is_rate),
            "msg" => pick(Test::is_msg),
            "stream" => pick(Test::is_stream),
            "ud" => pick(Test::is_ud),
            name => vec![Test::from_name(name).ok_or_else(|| {
                let names: Vec<&str> = Test::ALL.iter().map(|t| t.name()).collect();
                format!(
                    "no test {name:?}: one of {}, or a group: lat, rate, msg, stream, ud, all",
                    names.join(", ")
                )
            })?],
        }))
    }
}

/// `anyrdma-perf client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The server's host name or address.
    pub host: String,

    /// TCP port of the server's control channel.
    #[arg(long, short, default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// RDMA device: `name`, `name:port` or `name:port:gid_index` (default: $ANYRDMA_DEVICE,
    /// else the first active port).
    #[arg(long, short)]
    pub device: Option<DeviceSpec>,

    /// Tests, comma separated: write_lat, write_imm_lat, send_lat, read_lat, write_rate,
    /// send_rate, msg_lat, msg_rate, stream_bw, stream_lat, cm_msg_bw, cm_msg_lat, tcp_bw,
    /// tcp_lat, stream_owned_bw, ud_send_lat, ud_send_rate, or the groups lat, rate, msg,
    /// stream, ud, all.
    #[arg(
        long = "test",
        short,
        visible_alias = "tests",
        value_delimiter = ',',
        default_value = "all",
        value_parser = TestSet::parse
    )]
    pub test: Vec<TestSet>,

    /// Runtimes, comma separated (`tokio` is tokio-mt; `raw`: rdma-sys directly, latency
    /// tests only).
    #[arg(
        long = "runtime",
        short,
        visible_alias = "runtimes",
        value_enum,
        value_delimiter = ',',
        default_values = ["tokio-ct", "tokio-mt", "async-std", "smol", "raw"]
    )]
    pub runtime: Vec<Rt>,

    /// Poll modes, comma separated (busy: perftest's default; event: perftest's -e).
    #[arg(long, short, value_enum, value_delimiter = ',', default_values = ["busy", "event"])]
    pub mode: Vec<Mode>,

    /// Message sizes of the latency tests (bytes).
    #[arg(long, short, value_delimiter = ',', default_values_t = [8, 64, 512, 4096, 65536])]
    pub sizes: Vec<usize>,

    /// Round trips per latency measurement [default: 1000; 200 with --smoke].
    #[arg(long, short = 'n')]
    pub iters: Option<usize>,

    /// Messages per queue pair of the rate tests [default: 20000; 1000 with --smoke].
    #[arg(long)]
    pub rate_iters: Option<usize>,

    /// Message sizes of write_rate and send_rate (above 4 KiB: one queue pair, unbatched).
    #[arg(long, value_delimiter = ',', default_values_t = [64, 65536])]
    pub rate_sizes: Vec<usize>,

    /// Queue pairs of the rate tests.
    #[arg(long, short, value_delimiter = ',', default_values_t = [1, 4, 16])]
    pub qps: Vec<usize>,

    /// Work requests per doorbell of the rate tests, only the last signaled (on one queue pair).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16])]
    pub batch: Vec<usize>,

    /// Work requests in flight per queue pair (perftest's tx_depth).
    #[arg(long, default_value_t = 128)]
    pub window: usize,

    /// Largest inline send or write in bytes (0: none; Soft-RoCE has none).
    #[arg(long, default_value_t = 64)]
    pub inline: u32,

    /// Message sizes of msg_lat (above 64 KiB: a tenth of the round trips).
    #[arg(long, value_delimiter = ',', default_values_t = [64, 1 << 20])]
    pub msg_lat_sizes: Vec<usize>,

    /// Message sizes of msg_rate.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 1 << 20, 16 << 20])]
    pub msg_rate_sizes: Vec<usize>,

    /// Concurrent senders of msg_rate (for sizes up to 4 KiB).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16])]
    pub senders: Vec<usize>,

    /// The server's address for rdma_cm (the stream and cm_msg tests) [default: HOST's
    /// address, unless it is a loopback one, which rdma_cm cannot route: then those tests
    /// are left out].
    #[arg(long)]
    pub cm_addr: Option<IpAddr>,

    /// Bytes per write of the stream and TCP bandwidth tests.
    #[arg(long, default_value_t = 1 << 20)]
    pub stream_bw_size: usize,

    /// Writes per stream bandwidth test [default: as many bytes as msg_rate sends at that size].
    #[arg(long)]
    pub stream_bw_iters: Option<usize>,

    /// Bytes per request and response of the stream and TCP round trips.
    #[arg(long, default_value_t = 64)]
    pub stream_lat_size: usize,

    /// Datagram sizes of ud_send_lat (at most the port's MTU).
    #[arg(long, value_delimiter = ',', default_values_t = [8, 64, 512, 4096])]
    pub ud_sizes: Vec<usize>,

    /// Datagram size of ud_send_rate.
    #[arg(long, default_value_t = 64)]
    pub ud_rate_size: usize,

    /// Queue pairs of ud_send_rate.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4])]
    pub ud_qps: Vec<usize>,

    /// Few iterations (a quick check that everything runs).
    #[arg(long)]
    pub smoke: bool,

    /// Print one JSON object per measurement (a line each) instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Show which measurement runs, on standard error.
    #[arg(long, value_enum, default_value_t = Progress::Auto)]
    pub progress: Progress,

    /// Seconds to keep trying to reach the server (it may still be starting).
    #[arg(long, default_value_t = 20)]
    pub connect_timeout: u64,
}

impl ClientArgs {
    /// The tests asked for, each once, in the order given.
    pub fn tests(&self) -> Vec<Test> {
        let mut out: Vec<Test> = Vec::new();
        for test in self.test.iter().flat_map(|set| set.0.iter()) {
            if !out.contains(test) {
                out.push(*test);
            }
        }
        out
    }

    /// Round trips per latency measurement.
    pub fn lat_iters(&self) -> usize {
        self.iters.unwrap_or(if self.smoke { 200 } else { 1000 })
    }

    /// Messages per queue pair of the rate tests.
    pub fn rate_iters(&self) -> usize {
        self.rate_iters
            .unwrap_or(if self.smoke { 1000 } else { 20000 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn client(args: &[&str]) -> ClientArgs {
        let cli = Cli::try_parse_from(
            ["anyrdma-perf", "client"]
                .iter()
                .chain(args)
                .collect::<Vec<_>>(),
        )
        .expect("parses");
        match cli.command {
            Command::Client(c) => *c,
            Command::Server(_) => panic!("a client command line"),
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_readme_invocation_parses() {
        let c = client(&["192.168.1.10", "--test", "write_lat", "--runtime", "tokio"]);
        assert_eq!(c.host, "192.168.1.10");
        assert_eq!(c.tests(), vec![Test::WriteLat]);
        assert_eq!(c.runtime, vec![Rt::TokioMt]);
        assert_eq!(c.mode, vec![Mode::Busy, Mode::Event]);
        assert_eq!(c.port, DEFAULT_PORT);
    }

    #[test]
    fn groups_expand_and_lists_split() {
        let c = client(&[
            "h",
            "--tests",
            "lat,write_lat,ud",
            "-r",
            "tokio-ct,smol,raw",
            "--mode",
            "event",
            "--sizes",
            "8,4096",
        ]);
        assert_eq!(
            c.tests(),
            vec![
                Test::WriteLat,
                Test::WriteImmLat,
                Test::SendLat,
                Test::ReadLat,
                Test::UdSendLat,
                Test::UdSendRate
            ]
        );
        assert_eq!(c.runtime, vec![Rt::TokioCt, Rt::Smol, Rt::Raw]);
        assert_eq!(c.mode, vec![Mode::Event]);
        assert_eq!(c.sizes, vec![8, 4096]);
    }

    #[test]
    fn defaults_run_everything_and_smoke_shortens() {
        let c = client(&["h"]);
        assert_eq!(c.tests(), Test::ALL.to_vec());
        assert_eq!(c.runtime, Rt::ALL.to_vec());
        assert_eq!((c.lat_iters(), c.rate_iters()), (1000, 20000));
        let s = client(&["h", "--smoke"]);
        assert_eq!((s.lat_iters(), s.rate_iters()), (200, 1000));
        let given = client(&["h", "--smoke", "-n", "50"]);
        assert_eq!(given.lat_iters(), 50);
    }

    #[test]
    fn unknown_names_are_refused() {
        for bad in [
            ["--test", "write_latency"],
            ["--runtime", "glommio"],
            ["--mode", "spin"],
        ] {
            let args = ["anyrdma-perf", "client", "h", bad[0], bad[1]];
            assert!(Cli::try_parse_from(args).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn the_server_takes_a_device_selection() {
        let cli = Cli::try_parse_from(["anyrdma-perf", "server", "--device", "rxe0:1:1", "--once"])
            .expect("parses");
        match cli.command {
            Command::Server(s) => {
                assert_eq!(s.device.expect("a device").to_string(), "rxe0:1:1");
                assert!(s.once);
                assert_eq!(s.port, DEFAULT_PORT);
            }
            Command::Client(_) => panic!("a server command line"),
        }
    }
}
