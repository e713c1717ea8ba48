//! `anyrdma-perf client HOST`: asks the server for each measurement in turn and reports the
//! results.

use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::cli::ClientArgs;
use crate::output::Report;
use crate::progress::ProgressLine;
use crate::wire::{greet_server, send_all, ClientHello, END, MEASURE};
use crate::{measure, open_device, plan, Res};

/// Runs every measurement `args` asks for against the server.
pub fn run(args: &ClientArgs) -> Res<()> {
    // Every measurement the options ask for must be possible before anything starts.
    for spec in plan::measurements(args, true) {
        spec.check()?;
    }
    let (ctx, device) = open_device(args.device.as_ref())?;
    let mut ctl = connect(args)?;
    let server_ip = ctl.peer_addr()?.ip();
    let cm = args.cm_addr.or_else(|| routable(server_ip));
    let measurements = plan::measurements(args, cm.is_some());
    if cm.is_none() && args.tests().iter().any(|t| t.needs_cm()) {
        eprintln!(
            "anyrdma-perf: the stream and cm_msg tests are left out: they connect through \
             rdma_cm, which cannot route {server_ip}; give --cm-addr (the server's RDMA \
             interface's address)"
        );
    }
    if measurements.is_empty() {
        return Err("nothing to measure with these tests, runtimes and modes".into());
    }
    let server = greet_server(&mut ctl, &ClientHello { cm })?;
    let mut report = Report::new(std::io::stdout().lock(), args.json);
    report.preamble(&device, &server.device)?;
    let mut progress = ProgressLine::new(args.progress);
    let total = measurements.len();
    for (index, spec) in measurements.into_iter().enumerate() {
        progress.starting(index, total, &spec);
        send_all(&mut ctl, &[MEASURE])?;
        send_all(&mut ctl, &spec.encode())?;
        let measured = measure::run(ctx.clone(), spec, true, ctl, cm);
        progress.clear();
        let (outcome, back) = measured.map_err(|e| {
            format!(
                "{} of {} B on {}, {} mode: {e}",
                spec.test.name(),
                spec.size,
                spec.rt.name(),
                spec.mode.name()
            )
        })?;
        ctl = back;
        report.row(&spec, &outcome)?;
    }
    report.finish()?;
    send_all(&mut ctl, &[END])?;
    Ok(())
}

/// The control connection, tried again while the server is not listening yet (for
/// `--connect-timeout` seconds).
fn connect(args: &ClientArgs) -> Res<TcpStream> {
    let addrs: Vec<SocketAddr> = (args.host.as_str(), args.port)
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", args.host))?
        .collect();
    let deadline = Instant::now() + Duration::from_secs(args.connect_timeout);
    loop {
        let mut last = None;
        for addr in &addrs {
            match TcpStream::connect(addr) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        if Instant::now() > deadline {
            let why = last.map_or_else(|| "no address".to_owned(), |e| e.to_string());
            return Err(format!(
                "no anyrdma-perf server at {}:{} ({why}); start `anyrdma-perf server` there",
                args.host, args.port
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ip` as the rdma_cm address of the server, unless rdma_cm cannot route it.
fn routable(ip: IpAddr) -> Option<IpAddr> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}
