//! The client's results: perftest's tables (a heading per test, runtime and mode, then a row
//! per size), or with `--json` one JSON object per measurement and line.
//!
//! A JSON row has the fields `scripts/bench`'s report reads (`impl`, `runtime`, `mode`,
//! `test`, `size`, `qps`, `batch`, `senders`, `iters`, `median_us`, `p99_us`, `mmsg_s`,
//! `mb_s`), then perftest's other latency figures (`min_us`, `max_us`, `avg_us`, `stdev_us`,
//! `p999_us`). Figures a test does not give are `null`.

use std::io::{self, Write};

use serde::Serialize;

use crate::catalog::{Mode, Rt, Test};
use crate::stats::{Latency, Outcome, Rate};
use crate::wire::Spec;

/// perftest's separator line.
const RULE: &str =
    "---------------------------------------------------------------------------------------";

/// One measurement as a JSON row.
#[derive(Debug, Serialize)]
pub struct Row {
    /// `anyrdma`, or `raw` for the raw verbs loop.
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    /// The runtime's name.
    pub runtime: &'static str,
    /// `busy` or `event`.
    pub mode: &'static str,
    /// The test's name.
    pub test: &'static str,
    /// Bytes per message.
    pub size: usize,
    /// Queue pairs.
    pub qps: usize,
    /// Work requests per doorbell.
    pub batch: usize,
    /// Concurrent senders.
    pub senders: usize,
    /// Iterations (round trips, or messages per queue pair).
    pub iters: usize,
    /// perftest's `t_typical`, µs.
    pub median_us: Option<f64>,
    /// perftest's `99% percentile`, µs.
    pub p99_us: Option<f64>,
    /// Millions of messages per second.
    pub mmsg_s: Option<f64>,
    /// MB (10^6 bytes) per second.
    pub mb_s: Option<f64>,
    /// perftest's `t_min`, µs.
    pub min_us: Option<f64>,
    /// perftest's `t_max`, µs.
    pub max_us: Option<f64>,
    /// perftest's `t_avg`, µs.
    pub avg_us: Option<f64>,
    /// perftest's `t_stdev`, µs.
    pub stdev_us: Option<f64>,
    /// perftest's `99.9% percentile`, µs.
    pub p999_us: Option<f64>,
}

impl Row {
    /// The row of measurement `spec` with figures `outcome`.
    pub fn new(spec: &Spec, outcome: &Outcome) -> Row {
        let lat = outcome.latency;
        let pick = |f: fn(&Latency) -> f64| lat.as_ref().map(f);
        let rate = |f: fn(&Rate) -> f64| outcome.rate.as_ref().map(f);
        Row {
            implementation: if spec.rt == Rt::Raw { "raw" } else { "anyrdma" },
            runtime: spec.rt.name(),
            mode: spec.mode.name(),
            test: spec.test.name(),
            size: spec.size,
            qps: spec.qps,
            batch: spec.batch,
            senders: spec.senders,
            iters: spec.iters,
            median_us: pick(|l| l.median_us),
            p99_us: pick(|l| l.p99_us),
            mmsg_s: rate(|r| r.mmsg_s),
            mb_s: rate(|r| r.mb_s),
            min_us: pick(|l| l.min_us),
            max_us: pick(|l| l.max_us),
            avg_us: pick(|l| l.avg_us),
            stdev_us: pick(|l| l.stdev_us),
            p999_us: pick(|l| l.p999_us),
        }
    }
}

/// Where the results go: a table or JSON rows, on `out`.
pub struct Report<W: Write> {
    out: W,
    json: bool,
    /// The test, runtime and mode of the table's current heading.
    heading: Option<(Test, Rt, Mode)>,
}

impl<W: Write> Report<W> {
    /// Results on `out`, as JSON rows when `json`.
    pub fn new(out: W, json: bool) -> Report<W> {
        Report {
            out,
            json,
            heading: None,
        }
    }

    /// The run's first lines (tables only): who measures with what.
    pub fn preamble(&mut self, local: &str, server: &str) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        writeln!(self.out, "{RULE}")?;
        writeln!(self.out, " anyrdma-perf {}", env!("CARGO_PKG_VERSION"))?;
        writeln!(self.out, " client device : {local}")?;
        writeln!(self.out, " server device : {server}")?;
        self.out.flush()
    }

    /// One measurement's results.
    pub fn row(&mut self, spec: &Spec, outcome: &Outcome) -> io::Result<()> {
        if self.json {
            let row = serde_json::to_string(&Row::new(spec, outcome))?;
            writeln!(self.out, "{row}")?;
            return self.out.flush();
        }
        let key = (spec.test, spec.rt, spec.mode);
        if self.heading != Some(key) {
            self.heading = Some(key);
            self.head(spec)?;
        }
        if spec.test.is_throughput() {
            let (mb_s, mmsg_s) = outcome
                .rate
                .map_or((None, None), |r| (Some(r.mb_s), Some(r.mmsg_s)));
            writeln!(
                self.out,
                " {:<10} {:<6} {:<8} {:<14} {:<20} {}",
                spec.size,
                spec.qps,
                if spec.test.is_msg() {
                    spec.senders
                } else {
                    spec.batch
                },
                spec.iters,
                figure(mb_s, 2),
                figure(mmsg_s, 6),
            )?;
        } else {
            let l = outcome.latency;
            let f = |g: fn(&Latency) -> f64| figure(l.as_ref().map(g), 2);
            writeln!(
                self.out,
                " {:<7} {:<12} {:<14} {:<12} {:<16} {:<14} {:<15} {:<22} {}",
                spec.size,
                spec.iters,
                f(|l| l.min_us),
                f(|l| l.max_us),
                f(|l| l.median_us),
                f(|l| l.avg_us),
                f(|l| l.stdev_us),
                f(|l| l.p99_us),
                f(|l| l.p999_us),
            )?;
        }
        self.out.flush()
    }

    /// A table's heading: the test, where it runs, and its columns.
    fn head(&mut self, spec: &Spec) -> io::Result<()> {
        let t = spec.test;
        writeln!(self.out, "{RULE}")?;
        writeln!(
            self.out,
            " {} on {}, {} mode: {}",
            t.name(),
            if spec.rt == Rt::Raw {
                "raw verbs"
            } else {
                spec.rt.name()
            },
            spec.mode.name(),
            t.describe()
        )?;
        writeln!(self.out, "{RULE}")?;
        if t.is_throughput() {
            writeln!(
                self.out,
                " {:<10} {:<6} {:<8} {:<14} {:<20} MsgRate[Mpps]",
                "#bytes",
                "#qps",
                if t.is_msg() { "#senders" } else { "#batch" },
                "#iterations",
                "BW average[MB/s]",
            )
        } else {
            writeln!(
                self.out,
                " #bytes  #iterations  t_min[usec]    t_max[usec]  t_typical[usec]  t_avg[usec]    \
                 t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec]"
            )
        }
    }

    /// The end of the run (tables only).
    pub fn finish(&mut self) -> io::Result<()> {
        if !self.json && self.heading.is_some() {
            writeln!(self.out, "{RULE}")?;
        }
        self.out.flush()
    }
}

/// A figure with `prec` decimals, `-` when missing.
fn figure(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.prec$}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn spec(test: Test) -> Spec {
        Spec {
            test,
            rt: Rt::TokioCt,
            mode: Mode::Busy,
            size: 64,
            iters: 10,
            qps: 1,
            batch: 1,
            window: 128,
            inline: 0,
            senders: 1,
        }
    }

    fn lat() -> Outcome {
        let t0 = Instant::now();
        let stamps: Vec<Instant> = (0..11).map(|i| t0 + Duration::from_micros(4 * i)).collect();
        crate::stats::latency(&stamps, true)
    }

    #[test]
    fn json_rows_keep_the_report_fields() {
        let mut out = Vec::new();
        let mut report = Report::new(&mut out, true);
        report.row(&spec(Test::SendLat), &lat()).expect("written");
        let rate = crate::stats::rate(1000, 64, Duration::from_millis(1));
        report
            .row(
                &Spec {
                    rt: Rt::Raw,
                    ..spec(Test::SendRate)
                },
                &rate,
            )
            .expect("written");
        let text = String::from_utf8(out).expect("utf-8");
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["impl"], "anyrdma");
        assert_eq!(rows[0]["runtime"], "tokio-ct");
        assert_eq!(rows[0]["test"], "send_lat");
        assert!((rows[0]["median_us"].as_f64().expect("median") - 2.0).abs() < 1e-6);
        assert!(rows[0]["mmsg_s"].is_null());
        assert_eq!(rows[1]["impl"], "raw");
        assert!(rows[1]["median_us"].is_null());
        assert!((rows[1]["mmsg_s"].as_f64().expect("rate") - 1.0).abs() < 1e-9);
        for key in ["size", "qps", "batch", "senders", "iters", "p99_us", "mb_s"] {
            assert!(rows[1].get(key).is_some(), "no {key}");
        }
    }

    #[test]
    fn tables_head_each_test_once() {
        let mut out = Vec::new();
        let mut report = Report::new(&mut out, false);
        report.row(&spec(Test::SendLat), &lat()).expect("written");
        report
            .row(
                &Spec {
                    size: 4096,
                    ..spec(Test::SendLat)
                },
                &lat(),
            )
            .expect("written");
        report.finish().expect("written");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.matches("send_lat on tokio-ct, busy mode").count(), 1);
        assert_eq!(text.matches("t_typical[usec]").count(), 1);
        assert!(text.contains("\n 4096    10"));
    }
}
