//! anyrdma-perf as its README runs it: `anyrdma-perf server` and `anyrdma-perf client HOST`
//! as two processes on a machine with an RDMA device (the scripts/rxe-vm guest, where HOST is
//! rxe0's 169.254.77.1), with few iterations; the client's `--json` rows must be the
//! measurements asked for, each with figures that make sense.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One pair of processes at a time: the guest has two CPUs and the runs poll.
static ALONE: Mutex<()> = Mutex::new(());

/// How long a pair may take (the emulated guest is slow; a hang must still end the test).
const PATIENCE: Duration = Duration::from_secs(300);

const PROGRAM: &str = env!("CARGO_BIN_EXE_anyrdma-perf");

#[path = "../../tests/support/device.rs"]
mod device;
use device::{cm_ip, device_present};

/// The server's address: rxe0's in the VM (`ANYRDMA_TEST_CM_ADDR` sets another).
fn host() -> String {
    cm_ip().to_string()
}

/// A child process that is killed if the test ends before it does.
struct Running(Child);

impl Running {
    fn start(args: &[&str], stdout: Stdio) -> Running {
        let child = Command::new(PROGRAM)
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("anyrdma-perf starts");
        Running(child)
    }

    /// Its exit status, or a failure after `PATIENCE` since `start`.
    fn wait(&mut self, start: Instant, what: &str) -> ExitStatus {
        loop {
            if let Some(status) = self.0.try_wait().expect("waiting") {
                return status;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "{what} still runs after {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `anyrdma-perf server --port PORT --once` and `anyrdma-perf client HOST --port PORT
/// ARGS... --json`; both must succeed. The client's rows.
fn pair(port: u16, client_args: &[&str]) -> Vec<Value> {
    let start = Instant::now();
    let mut server = Running::start(
        &["server", "--port", &port.to_string(), "--once"],
        Stdio::null(),
    );
    let rows = client_rows(port, client_args, start, PATIENCE);
    let status = server.wait(start, "the server");
    assert!(status.success(), "the server failed ({status})");
    rows
}

/// The arguments of a client of the server on `port` that prints JSON rows, then `args`.
fn client_args<'a>(port: &'a str, host: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![
        "client",
        host,
        "--port",
        port,
        "--json",
        "--progress",
        "never",
    ];
    all.extend_from_slice(args);
    all
}

/// Runs `anyrdma-perf client HOST --port PORT --json ARGS...`, which must succeed within
/// `limit` of `start`. Its rows.
fn client_rows(port: u16, args: &[&str], start: Instant, limit: Duration) -> Vec<Value> {
    let (port, host) = (port.to_string(), host());
    let mut client = Running::start(&client_args(&port, &host, args), Stdio::piped());
    let mut out = String::new();
    client
        .0
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)
        .expect("the client's output");
    let status = client.wait(start, "the client");
    assert!(
        start.elapsed() < limit,
        "the client took {:?}, more than {limit:?}",
        start.elapsed()
    );
    assert!(
        status.success(),
        "the client failed ({status}); it printed:\n{out}"
    );
    out.lines()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("not a JSON row ({e}): {line:?}"))
        })
        .collect()
}

/// A number field of `row`.
fn num(row: &Value, key: &str) -> f64 {
    row[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {row}"))
}

/// Checks that `row` is a sane result of the measurement it names.
fn check_row(row: &Value, iters: f64) {
    let test = row["test"].as_str().expect("a test name");
    let runtime = row["runtime"].as_str().expect("a runtime");
    let expected_impl = if runtime == "raw" { "raw" } else { "anyrdma" };
    assert_eq!(row["impl"], expected_impl, "{row}");
    assert!(
        matches!(row["mode"].as_str(), Some("busy" | "event")),
        "{row}"
    );
    let size = num(row, "size");
    assert!(size > 0.0);
    if test.ends_with("_rate") {
        let (mmsg, mb) = (num(row, "mmsg_s"), num(row, "mb_s"));
        assert!(mmsg > 0.0 && mmsg < 1e4, "message rate of {row}");
        assert!((mb - mmsg * size).abs() <= 1e-6 * mb, "bandwidth of {row}");
        assert!(
            row["median_us"].is_null() && row["p99_us"].is_null(),
            "{row}"
        );
    } else {
        assert_eq!(num(row, "iters"), iters, "{row}");
        let figures = ["min_us", "median_us", "p99_us", "p999_us", "max_us"].map(|k| num(row, k));
        assert!(figures[0] > 0.0, "a latency of 0 in {row}");
        assert!(figures[4] < 1e6, "a latency above a second in {row}");
        assert!(
            figures.windows(2).all(|w| w[0] <= w[1]),
            "min <= median <= p99 <= p99.9 <= max does not hold in {row}"
        );
        let avg = num(row, "avg_us");
        assert!(figures[0] <= avg && avg <= figures[4], "average of {row}");
        assert!(num(row, "stdev_us") >= 0.0);
        assert!(row["mmsg_s"].is_null() && row["mb_s"].is_null(), "{row}");
    }
}

/// The rows' (runtime, mode, test, size, qps) in order.
fn shapes(rows: &[Value]) -> Vec<(String, String, String, u64, u64)> {
    rows.iter()
        .map(|r| {
            (
                r["runtime"].as_str().expect("runtime").to_owned(),
                r["mode"].as_str().expect("mode").to_owned(),
                r["test"].as_str().expect("test").to_owned(),
                r["size"].as_u64().expect("size"),
                r["qps"].as_u64().expect("qps"),
            )
        })
        .collect()
}

fn shape(
    rt: &str,
    mode: &str,
    test: &str,
    size: u64,
    qps: u64,
) -> (String, String, String, u64, u64) {
    (rt.into(), mode.into(), test.into(), size, qps)
}

/// The README's invocation on Tokio, with a little of every kind of test: verbs latency and
/// rate, messaging, the byte stream over rdma_cm and datagrams, busy and event.
#[test]
fn client_and_server_measure_on_tokio() {
    if !device_present("client_and_server_measure_on_tokio") {
        return;
    }
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let rows = pair(
        18611,
        &[
            "--test",
            "write_lat,send_lat,send_rate,msg_lat,stream_lat,ud_send_lat",
            "--runtime",
            "tokio",
            "--iters",
            "40",
            "--rate-iters",
            "400",
            "--sizes",
            "8,4096",
            "--rate-sizes",
            "64",
            "--qps",
            "1,2",
            "--batch",
            "1",
            "--msg-lat-sizes",
            "64",
            "--ud-sizes",
            "64",
        ],
    );
    let mut expected = Vec::new();
    for mode in ["busy", "event"] {
        if mode == "busy" {
            expected.extend([8, 4096].map(|s| shape("tokio-mt", mode, "write_lat", s, 1)));
        }
        expected.extend([8, 4096].map(|s| shape("tokio-mt", mode, "send_lat", s, 1)));
        expected.extend([1, 2].map(|q| shape("tokio-mt", mode, "send_rate", 64, q)));
        expected.push(shape("tokio-mt", mode, "msg_lat", 64, 1));
        expected.push(shape("tokio-mt", mode, "stream_lat", 64, 1));
        expected.push(shape("tokio-mt", mode, "ud_send_lat", 64, 1));
    }
    assert_eq!(shapes(&rows), expected);
    for row in &rows {
        check_row(row, 40.0);
    }
}

/// The server follows the runtime each measurement names: every runtime and raw verbs
/// against one server process.
#[test]
fn one_server_serves_every_runtime() {
    if !device_present("one_server_serves_every_runtime") {
        return;
    }
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let rows = pair(
        18612,
        &[
            "--test",
            "send_lat",
            "--runtime",
            "tokio-ct,tokio-mt,async-std,smol,raw",
            "--mode",
            "busy",
            "--iters",
            "30",
            "--sizes",
            "64",
        ],
    );
    let expected: Vec<_> = ["tokio-ct", "tokio-mt", "async-std", "smol", "raw"]
        .map(|rt| shape(rt, "busy", "send_lat", 64, 1))
        .into();
    assert_eq!(shapes(&rows), expected);
    for row in &rows {
        check_row(row, 30.0);
    }
}

/// Clients killed in the middle of a measurement, each way a server's measurement waits:
/// anyrdma's receive futures, busy and asleep, on every runtime; a spin on memory
/// (`write_lat`); raw verbs' busy polls and their sleep on the completion channel. The
/// server's queue pairs wait on receives that never come; it must end the measurement and
/// serve the next client, the same measurement with few iterations, on the same process.
#[test]
fn a_server_whose_client_dies_mid_measurement_serves_the_next() {
    if !device_present("a_server_whose_client_dies_mid_measurement_serves_the_next") {
        return;
    }
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let port = 18613;
    let mut server = Running::start(&["server", "--port", &port.to_string()], Stdio::null());
    let cases = [
        ("tokio-ct", "busy", "send_lat"),
        ("tokio-mt", "busy", "write_lat"),
        ("async-std", "event", "msg_lat"),
        ("smol", "event", "send_lat"),
        ("raw", "busy", "send_lat"),
        ("raw", "event", "send_lat"),
    ];
    for (runtime, mode, test) in cases {
        let case = [
            "--test",
            test,
            "--runtime",
            runtime,
            "--mode",
            mode,
            "--sizes",
            "8",
        ];
        let (port_text, host) = (port.to_string(), host());
        // Long enough to be under way when it is killed (a million round trips).
        let long = [&case[..], &["--iters", "1000000", "--msg-lat-sizes", "8"]].concat();
        let mut doomed = Running::start(&client_args(&port_text, &host, &long), Stdio::null());
        std::thread::sleep(Duration::from_secs(4));
        assert!(
            matches!(doomed.0.try_wait(), Ok(None)),
            "{runtime} {mode} {test}: the client ended before it could be killed mid-measurement"
        );
        doomed.0.kill().expect("killing the client");
        let _ = doomed.0.wait();
        let killed = Instant::now();
        let short = [&case[..], &["--iters", "20", "--msg-lat-sizes", "8"]].concat();
        let rows = client_rows(port, &short, killed, Duration::from_secs(60));
        assert_eq!(
            shapes(&rows),
            [shape(runtime, mode, test, 8, 1)],
            "{runtime} {mode} {test}: the next client's rows"
        );
        check_row(&rows[0], 20.0);
        assert!(
            matches!(server.0.try_wait(), Ok(None)),
            "{runtime} {mode} {test}: the server exited"
        );
    }
}
