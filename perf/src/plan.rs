//! The measurements a client run makes, in order: for each runtime and poll mode, each test
//! at each of its sizes (and queue pair counts, batches, senders).

use crate::catalog::{Mode, Rt, Test};
use crate::cli::ClientArgs;
use crate::wire::Spec;

/// Every measurement `args` asks for; the stream and `cm_msg` tests only `with_cm` (an
/// address of the server for rdma_cm).
pub fn measurements(args: &ClientArgs, with_cm: bool) -> Vec<Spec> {
    let tests = args.tests();
    let mut out = Vec::new();
    for &rt in &args.runtime {
        for &mode in &args.mode {
            for &test in &tests {
                if rt.runs(test) && mode.runs(test) && (with_cm || !test.needs_cm()) {
                    of_test(args, rt, mode, test, &mut out);
                }
            }
        }
    }
    out
}

/// The measurements of one test on one runtime and mode.
fn of_test(o: &ClientArgs, rt: Rt, mode: Mode, test: Test, out: &mut Vec<Spec>) {
    let (iters, rate_iters) = (o.lat_iters(), o.rate_iters());
    let base = Spec {
        test,
        rt,
        mode,
        size: 0,
        iters,
        qps: 1,
        batch: 1,
        window: o.window,
        inline: o.inline,
        senders: 1,
    };
    if test == Test::UdSendLat {
        for &size in &o.ud_sizes {
            out.push(Spec { size, ..base });
        }
        return;
    }
    if test == Test::UdSendRate {
        for &qps in &o.ud_qps {
            out.push(Spec {
                size: o.ud_rate_size,
                iters: rate_iters,
                qps,
                ..base
            });
        }
        return;
    }
    if test == Test::MsgLat {
        for &size in &o.msg_lat_sizes {
            // Large messages go by rendezvous: a registration each, far slower.
            let iters = if size > 65536 {
                (iters / 10).max(20)
            } else {
                iters
            };
            out.push(Spec {
                size,
                iters,
                ..base
            });
        }
        return;
    }
    if test.is_stream() {
        out.push(if test.is_stream_bw() {
            // By default as many bytes as msg_rate sends at that size, so that the rows
            // compare; the stream and messenger rows always move the same.
            let size = o.stream_bw_size;
            Spec {
                size,
                iters: o
                    .stream_bw_iters
                    .unwrap_or_else(|| (rate_iters / 10).min((256 << 20) / size.max(1)).max(8)),
                ..base
            }
        } else {
            Spec {
                size: o.stream_lat_size,
                ..base
            }
        });
        return;
    }
    if test == Test::MsgRate {
        for &size in &o.msg_rate_sizes {
            // About 256 MiB per large size at most.
            let iters = if size > 4096 {
                (rate_iters / 10).min((256 << 20) / size).max(8)
            } else {
                rate_iters
            };
            for &senders in &o.senders {
                if senders > 1 && size > 4096 {
                    continue;
                }
                out.push(Spec {
                    size,
                    iters,
                    senders,
                    ..base
                });
            }
        }
        return;
    }
    if !test.is_rate() {
        for &size in &o.sizes {
            out.push(Spec { size, ..base });
        }
        return;
    }
    for &size in &o.rate_sizes {
        let iters = if size > 4096 {
            (rate_iters / 10).max(100)
        } else {
            rate_iters
        };
        for &qps in &o.qps {
            for &batch in &o.batch {
                // Batching is measured on one QP; bandwidth (large sizes) on one QP, unbatched.
                if (batch > 1 && qps > 1) || (size > 4096 && (qps > 1 || batch > 1)) {
                    continue;
                }
                out.push(Spec {
                    size,
                    // Whole batches only, so both sides agree on the message count.
                    iters: (iters / batch).max(1) * batch,
                    qps,
                    batch,
                    ..base
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn plan(args: &[&str], with_cm: bool) -> Vec<Spec> {
        let all = ["anyrdma-perf", "client", "h"].iter().chain(args);
        match Cli::try_parse_from(all).expect("parses").command {
            Command::Client(c) => measurements(&c, with_cm),
            Command::Server(_) => panic!("a client command line"),
        }
    }

    #[test]
    fn modes_and_runtimes_leave_out_what_they_cannot_run() {
        let specs = plan(&["-t", "lat,rate", "-r", "raw", "-s", "8"], true);
        let names: Vec<_> = specs.iter().map(|s| (s.test, s.mode)).collect();
        // Raw verbs: latency only; write_lat polls memory, so it has no event run.
        assert_eq!(
            names,
            vec![
                (Test::WriteLat, Mode::Busy),
                (Test::WriteImmLat, Mode::Busy),
                (Test::SendLat, Mode::Busy),
                (Test::ReadLat, Mode::Busy),
                (Test::WriteImmLat, Mode::Event),
                (Test::SendLat, Mode::Event),
                (Test::ReadLat, Mode::Event),
            ]
        );
        let tcp = plan(&["-t", "tcp_lat", "-r", "smol"], false);
        assert_eq!(tcp.len(), 1, "TCP runs once, in the event pass");
        assert_eq!(tcp[0].mode, Mode::Event);
        assert!(plan(&["-t", "stream_bw", "-r", "smol"], false).is_empty());
        assert_eq!(plan(&["-t", "stream_bw", "-r", "smol"], true).len(), 2);
    }

    #[test]
    fn rates_batch_on_one_queue_pair_and_bandwidth_unbatched() {
        let specs = plan(&["-t", "write_rate", "-r", "smol", "-m", "busy"], false);
        let shapes: Vec<_> = specs.iter().map(|s| (s.size, s.qps, s.batch)).collect();
        assert_eq!(
            shapes,
            vec![
                (64, 1, 1),
                (64, 1, 16),
                (64, 4, 1),
                (64, 16, 1),
                (65536, 1, 1)
            ]
        );
        assert!(specs.iter().all(|s| s.iters % s.batch == 0));
        assert!(specs.iter().all(|s| s.check().is_ok()));
    }
}
