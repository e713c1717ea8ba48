//! HTTP/1.1 requests per second with hyper over `anyrdma::stream` (issue 23), and over TCP on
//! 127.0.0.1 for orientation, for scripts/bench (BENCHMARKS.md).
//!
//! ```text
//! cargo bench -p anyrdma-ecosystem --bench http -- [OPTIONS]
//! ```
//!
//! Without `--role`, the program starts its own server (a child process, the same program with
//! `--role server`) for each runtime, poll mode and transport, runs the client against it and
//! stops it. Options (lists are comma separated):
//!
//! * `--addr IP`: the address of an interface with an RDMA device, for rdma_cm (default
//!   169.254.77.1, rxe0 in scripts/rxe-vm's guest; rdma_cm cannot route 127.0.0.1)
//! * `--runtime tokio-ct,tokio-mt` (hyper runs on Tokio), `--mode busy,event`
//! * `--transport rdma,tcp`: `tcp` is the same server and client over Tokio's TCP on
//!   127.0.0.1, once per runtime (poll modes do not apply): the kernel's loopback against an
//!   emulated NIC, which says nothing about RDMA hardware against TCP
//! * `--requests N` (default 2000), `--concurrency 1,8` (connections, one request in flight on
//!   each, as HTTP/1.1 carries one at a time), `--size 64` (bytes of each request body, which
//!   `POST /echo` sends back), `--json FILE` (appends one JSON object per row)
//!
//! Each client connection makes one request before the clock starts. The rate counts every
//! request from the first to the last response; the median is that of single requests, from
//! sending to the last byte of the response, checked byte for byte.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyrdma::cm::ConnectionOptions;
use anyrdma::stream::{RdmaStream, StreamListener, StreamOptions};
use anyrdma::PollMode;
use anyrdma_ecosystem::http::{self, Client, Protocol};
use anyrdma_ecosystem::{error_chain, BoxError};

type Res<T> = Result<T, BoxError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rt {
    TokioCt,
    TokioMt,
}

impl Rt {
    fn name(self) -> &'static str {
        match self {
            Rt::TokioCt => "tokio-ct",
            Rt::TokioMt => "tokio-mt",
        }
    }

    fn parse(s: &str) -> Res<Rt> {
        match s {
            "tokio-ct" => Ok(Rt::TokioCt),
            "tokio-mt" => Ok(Rt::TokioMt),
            _ => Err(format!("unknown runtime {s} (hyper runs on tokio-ct or tokio-mt)").into()),
        }
    }

    fn block_on<F: std::future::Future>(self, future: F) -> Res<F::Output> {
        let runtime = match self {
            Rt::TokioCt => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            // Two workers, as the rdma bench's multi-thread rows: the guest has two vCPUs.
            Rt::TokioMt => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?,
        };
        Ok(runtime.block_on(future))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Rdma(PollMode),
    Tcp,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Rdma(_) => "rdma",
            Transport::Tcp => "tcp",
        }
    }

    fn mode(self) -> &'static str {
        match self {
            Transport::Rdma(PollMode::Busy) => "busy",
            Transport::Rdma(_) => "event",
            Transport::Tcp => "-",
        }
    }

    fn parse(transport: &str, mode: &str) -> Res<Transport> {
        match (transport, mode) {
            ("rdma", "busy") => Ok(Transport::Rdma(PollMode::Busy)),
            ("rdma", "event") => Ok(Transport::Rdma(PollMode::Event { spin: 0 })),
            ("tcp", _) => Ok(Transport::Tcp),
            _ => Err(format!("unknown transport {transport} or mode {mode}").into()),
        }
    }
}

struct Opts {
    role: Option<String>,
    addr: IpAddr,
    runtimes: Vec<Rt>,
    modes: Vec<String>,
    transports: Vec<String>,
    requests: u64,
    concurrency: Vec<usize>,
    size: u64,
    json: Option<String>,
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

fn parse_opts() -> Res<Opts> {
    let mut o = Opts {
        role: None,
        addr: IpAddr::from([169, 254, 77, 1]),
        runtimes: vec![Rt::TokioCt, Rt::TokioMt],
        modes: list("busy,event"),
        transports: list("rdma,tcp"),
        requests: 2000,
        concurrency: vec![1, 8],
        size: 64,
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--bench" => {}
            "--role" => o.role = Some(val()?),
            "--addr" => o.addr = val()?.parse()?,
            "--runtime" => {
                o.runtimes = list(&val()?)
                    .iter()
                    .map(|r| Rt::parse(r))
                    .collect::<Res<_>>()?
            }
            "--mode" => o.modes = list(&val()?),
            "--transport" => o.transports = list(&val()?),
            "--requests" => o.requests = val()?.parse()?,
            "--concurrency" => {
                o.concurrency = list(&val()?)
                    .iter()
                    .map(|c| c.parse::<usize>().map(|c| c.max(1)))
                    .collect::<Result<_, _>>()?
            }
            "--size" => o.size = val()?.parse()?,
            "--json" => o.json = Some(val()?),
            "-h" | "--help" => {
                println!("see the documentation at the top of ecosystem/benches/http.rs");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown option {a}").into()),
        }
    }
    Ok(o)
}

fn stream_options(poll_mode: PollMode) -> StreamOptions {
    StreamOptions {
        connection: ConnectionOptions {
            poll_mode,
            runtime: Some(anyrdma::runtime::Tokio.into()),
            ..ConnectionOptions::default()
        },
        ..StreamOptions::default()
    }
}

/// The server: listens on a port of its choosing, says which on stdout, serves until killed.
fn server(addr: IpAddr, rt: Rt, transport: Transport) -> Res<()> {
    rt.block_on(async move {
        match transport {
            Transport::Rdma(poll_mode) => {
                let listener =
                    StreamListener::bind_with(SocketAddr::new(addr, 0), stream_options(poll_mode))?;
                announce(listener.local_addr().port())?;
                http::serve(listener).await?;
            }
            Transport::Tcp => {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
                announce(listener.local_addr()?.port())?;
                loop {
                    let (stream, _) = listener.accept().await?;
                    stream.set_nodelay(true)?;
                    tokio::spawn(async move {
                        if let Err(err) = http::serve_connection(stream).await {
                            eprintln!("http bench: TCP connection: {}", error_chain(&*err));
                        }
                    });
                }
            }
        }
        Ok(())
    })?
}

fn announce(port: u16) -> Res<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "port {port}")?;
    out.flush()?;
    Ok(())
}

/// Runs `requests` checked echo requests over `clients`, one in flight on each; returns the
/// elapsed seconds and every request's time in µs.
async fn requests(clients: Vec<Client>, requests: u64, size: u64) -> Res<(f64, Vec<f64>)> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let next = next.clone();
            tokio::spawn(async move {
                let mut times = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return Ok::<_, BoxError>(times);
                    }
                    let t = Instant::now();
                    client
                        .echo(i, size)
                        .await
                        .map_err(|err| format!("request {i}: {}", error_chain(&*err)))?;
                    times.push(t.elapsed().as_secs_f64() * 1e6);
                }
            })
        })
        .collect();
    let mut times = Vec::new();
    for worker in workers {
        times.extend(worker.await??);
    }
    Ok((started.elapsed().as_secs_f64(), times))
}

/// One row: `concurrency` connections to the server at `port`.
async fn client(
    o: &Opts,
    transport: Transport,
    port: u16,
    concurrency: usize,
) -> Res<(f64, Vec<f64>)> {
    let mut clients = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let client = match transport {
            Transport::Rdma(poll_mode) => {
                let stream = RdmaStream::connect_with(
                    SocketAddr::new(o.addr, port),
                    stream_options(poll_mode),
                )
                .await?;
                Client::handshake(stream, Protocol::Http1).await?
            }
            Transport::Tcp => {
                let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                stream.set_nodelay(true)?;
                Client::handshake(stream, Protocol::Http1).await?
            }
        };
        clients.push(client);
    }
    // Warm-up: each connection's first request (hyper's buffers, the peer's first receives).
    let mut warm = Vec::with_capacity(concurrency);
    for mut client in clients {
        client.echo(u64::MAX, o.size).await?;
        warm.push(client);
    }
    requests(warm, o.requests, o.size).await
}

fn median(mut times: Vec<f64>) -> Option<f64> {
    times.sort_by(|a, b| a.total_cmp(b));
    times.get(times.len() / 2).copied()
}

/// Starts the server for `rt` and `transport` and reads its port.
fn start_server(o: &Opts, rt: Rt, transport: Transport) -> Res<(Child, u16)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--role",
            "server",
            "--addr",
            &o.addr.to_string(),
            "--runtime",
            rt.name(),
            "--transport",
            transport.name(),
            "--mode",
            if transport.mode() == "-" {
                "event"
            } else {
                transport.mode()
            },
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    match line.trim().strip_prefix("port ").map(str::parse) {
        Some(Ok(port)) => Ok((child, port)),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "the server ({} {}) did not start",
                rt.name(),
                transport.name()
            )
            .into())
        }
    }
}

fn run_all(o: &Opts) -> Res<()> {
    let mut json = match &o.json {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        None => None,
    };
    println!(
        "{:<9} {:<5} {:<9} {:>5} {:>6} {:>6} | {:>10} {:>10}",
        "runtime", "mode", "transport", "size", "conns", "reqs", "req/s", "median_us"
    );
    for &rt in &o.runtimes {
        let mut transports = Vec::new();
        for t in &o.transports {
            if t == "tcp" {
                transports.push(Transport::Tcp);
            } else {
                for m in &o.modes {
                    transports.push(Transport::parse(t, m)?);
                }
            }
        }
        for transport in transports {
            let (mut child, port) = start_server(o, rt, transport)?;
            let mut result = Ok(());
            for &concurrency in &o.concurrency {
                match rt.block_on(client(o, transport, port, concurrency)) {
                    Ok(Ok((secs, times))) => {
                        let rps = o.requests as f64 / secs;
                        let med = median(times);
                        println!(
                            "{:<9} {:<5} {:<9} {:>5} {:>6} {:>6} | {:>10.0} {:>10.1}",
                            rt.name(),
                            transport.mode(),
                            transport.name(),
                            o.size,
                            concurrency,
                            o.requests,
                            rps,
                            med.unwrap_or(f64::NAN)
                        );
                        if let Some(f) = &mut json {
                            writeln!(
                                f,
                                "{{\"impl\":\"hyper\",\"runtime\":\"{}\",\"mode\":\"{}\",\"test\":\"http1_rps\",\"transport\":\"{}\",\"size\":{},\"concurrency\":{},\"iters\":{},\"rps\":{:.1},\"median_us\":{}}}",
                                rt.name(),
                                transport.mode(),
                                transport.name(),
                                o.size,
                                concurrency,
                                o.requests,
                                rps,
                                med.map_or_else(|| "null".into(), |m| format!("{m:.2}")),
                            )?;
                        }
                    }
                    Ok(Err(err)) | Err(err) => {
                        result = Err(format!(
                            "{} {} {} x{concurrency}: {}",
                            rt.name(),
                            transport.name(),
                            transport.mode(),
                            error_chain(&*err)
                        ));
                        break;
                    }
                }
            }
            // The server serves until it is stopped.
            let _ = child.kill();
            let _ = child.wait();
            result?;
        }
    }
    Ok(())
}

fn main() {
    let result = parse_opts().and_then(|o| match o.role.as_deref() {
        Some("server") => server(
            o.addr,
            o.runtimes[0],
            Transport::parse(&o.transports[0], &o.modes[0])?,
        ),
        Some(role) => Err(format!("unknown role {role}").into()),
        None => run_all(&o),
    });
    if let Err(err) = result {
        eprintln!("http bench: {}", error_chain(&*err));
        std::process::exit(1);
    }
}
