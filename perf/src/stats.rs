//! The figures of one measurement, computed the way perftest 4.5 computes them.
//!
//! Latency (`print_report_lat`): the client stamps the start of every iteration and the end
//! of the last; each iteration's time is the difference of consecutive stamps, halved for
//! ping-pongs (one way) and whole for reads. The times are sorted and the 2 largest dropped
//! (perftest's `LAT_MEASURE_TAIL`); of the rest: `t_min` the smallest, `t_max` the first
//! dropped, `t_typical` the median (the mean of the two middle ones for an even count), the
//! mean and its standard deviation, and the 99% and 99.9% percentiles at index
//! `ceil(count * p)`. Rates (`print_report_bw`): messages and bytes from the first post to
//! the last completion. Bandwidth is in MB/s of 10^6 bytes (perftest's `MB/sec` column is
//! 2^20 bytes per second).

use std::time::{Duration, Instant};

use serde::Serialize;

/// Sorted samples perftest leaves out of its latency figures (the largest ones).
const LAT_MEASURE_TAIL: usize = 2;

/// The figures of a latency measurement, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// perftest's `t_min`.
    pub min_us: f64,
    /// perftest's `t_max` (the largest sample kept).
    pub max_us: f64,
    /// perftest's `t_typical`: the median.
    pub median_us: f64,
    /// perftest's `t_avg`.
    pub avg_us: f64,
    /// perftest's `t_stdev`.
    pub stdev_us: f64,
    /// perftest's `99% percentile`.
    pub p99_us: f64,
    /// perftest's `99.9% percentile`.
    pub p999_us: f64,
}

/// The figures of a rate measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate {
    /// Millions of messages per second (perftest's `MsgRate[Mpps]`).
    pub mmsg_s: f64,
    /// Megabytes (10^6) per second.
    pub mb_s: f64,
}

/// What one measurement gives the client (the server's side has no figures).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Outcome {
    /// Set by the latency tests.
    pub latency: Option<Latency>,
    /// Set by the rate and bandwidth tests.
    pub rate: Option<Rate>,
}

/// The latency figures of the iteration stamps `stamps` (the start of each iteration and the
/// end of the last), one way (`halve`) or whole round trips; none without an iteration.
pub fn latency(stamps: &[Instant], halve: bool) -> Outcome {
    let div = if halve { 2.0 } else { 1.0 };
    let samples: Vec<f64> = stamps
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e6 / div)
        .collect();
    Outcome {
        latency: latency_of(samples),
        rate: None,
    }
}

/// perftest's latency figures of `samples` (µs, in any order).
fn latency_of(mut samples: Vec<f64>) -> Option<Latency> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    // perftest keeps at least one sample (it needs 5 iterations or more anyway).
    let count = if samples.len() > LAT_MEASURE_TAIL {
        samples.len() - LAT_MEASURE_TAIL
    } else {
        1
    };
    let kept = &samples[..count];
    let median = if count % 2 == 0 {
        (kept[count / 2] + kept[count / 2 - 1]) / 2.0
    } else {
        kept[count / 2]
    };
    let avg = kept.iter().sum::<f64>() / count as f64;
    let variance = kept.iter().map(|x| (x - avg) * (x - avg)).sum::<f64>() / count as f64;
    let at = |p: f64| samples[((count as f64 * p).ceil() as usize).min(samples.len() - 1)];
    Some(Latency {
        min_us: samples[0],
        max_us: samples[count.min(samples.len() - 1)],
        median_us: median,
        avg_us: avg,
        stdev_us: variance.sqrt(),
        p99_us: at(0.99),
        p999_us: at(0.999),
    })
}

/// The rate of `msgs` messages of `size` bytes in `elapsed`.
pub fn rate(msgs: usize, size: usize, elapsed: Duration) -> Outcome {
    let s = elapsed.as_secs_f64();
    Outcome {
        latency: None,
        rate: Some(Rate {
            mmsg_s: msgs as f64 / s / 1e6,
            mb_s: (msgs * size) as f64 / s / 1e6,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_follow_perftest() {
        // 1..=1000 µs shuffled: the 2 largest (999, 1000) are dropped, 998 samples remain.
        let samples: Vec<f64> = (1..=1000).map(|i| ((i * 7919) % 1000 + 1) as f64).collect();
        let l = latency_of(samples).expect("figures");
        assert_eq!(l.min_us, 1.0);
        // t_max is the first sample dropped: index 998 of the sorted samples.
        assert_eq!(l.max_us, 999.0);
        // Even count: the mean of the two middle ones (499 and 500).
        assert_eq!(l.median_us, 499.5);
        assert_eq!(l.avg_us, 499.5);
        // ceil(998 * 0.99) = 989 -> 990 µs; ceil(998 * 0.999) = 998 -> 999 µs.
        assert_eq!(l.p99_us, 990.0);
        assert_eq!(l.p999_us, 999.0);
        let expected_stdev = ((998.0f64 * 998.0 - 1.0) / 12.0).sqrt();
        assert!((l.stdev_us - expected_stdev).abs() < 1e-9);
    }

    #[test]
    fn odd_counts_take_the_middle_sample() {
        let l = latency_of(vec![5.0, 1.0, 3.0, 2.0, 4.0]).expect("figures");
        // 1, 2, 3 kept: median 2.
        assert_eq!(l.median_us, 2.0);
        assert_eq!(l.max_us, 4.0);
    }

    #[test]
    fn ping_pongs_are_halved_and_few_stamps_give_nothing() {
        let t0 = Instant::now();
        let stamps: Vec<Instant> = (0..8).map(|i| t0 + Duration::from_micros(10 * i)).collect();
        let one_way = latency(&stamps, true).latency.expect("figures");
        assert!((one_way.median_us - 5.0).abs() < 1e-6);
        let whole = latency(&stamps, false).latency.expect("figures");
        assert!((whole.median_us - 10.0).abs() < 1e-6);
        assert_eq!(latency(&stamps[..1], true).latency, None);
    }

    #[test]
    fn rates_are_per_second() {
        let r = rate(2_000_000, 64, Duration::from_secs(2))
            .rate
            .expect("rate");
        assert_eq!(r.mmsg_s, 1.0);
        assert_eq!(r.mb_s, 64.0);
    }
}
