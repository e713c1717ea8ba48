//! `anyrdma-perf server`: waits for clients and runs, one client at a time, each measurement
//! a client asks for, on the runtime and poll mode it names.

use std::net::{TcpListener, TcpStream};

use anyrdma::Context;

use crate::cli::ServerArgs;
use crate::watchdog::Watchdog;
use crate::wire::{greet_client, recv_exact, ServerHello, Spec, END, MEASURE};
use crate::{measure, open_device, Res};

/// Serves clients until stopped (with `--once`, one client).
pub fn serve(args: &ServerArgs) -> Res<()> {
    let (ctx, device) = open_device(args.device.as_ref())?;
    let listener = TcpListener::bind((args.bind, args.port))
        .map_err(|e| format!("listening on {}:{}: {e}", args.bind, args.port))?;
    eprintln!(
        "anyrdma-perf server: listening on {}, device {device}",
        listener.local_addr()?
    );
    loop {
        let (ctl, peer) = listener.accept()?;
        let result = session(&ctx, &device, ctl);
        match &result {
            Ok(count) => eprintln!("anyrdma-perf server: {peer}: {count} measurements"),
            Err(err) => eprintln!("anyrdma-perf server: {peer}: {err}"),
        }
        if args.once {
            return result.map(|_| ());
        }
    }
}

/// One client's session: the greeting, then its measurements until it says it is done; the
/// number of measurements.
fn session(ctx: &Context, device: &str, mut ctl: TcpStream) -> Res<usize> {
    ctl.set_nodelay(true)?;
    let hello = greet_client(
        &mut ctl,
        &ServerHello {
            device: device.to_owned(),
        },
    )?;
    let mut count = 0;
    loop {
        let [command] = recv_exact::<1>(&mut ctl)?;
        match command {
            END => return Ok(count),
            MEASURE => {
                let spec = Spec::decode(&recv_exact::<{ Spec::LEN }>(&mut ctl)?)?;
                // A client that dies mid-run would leave the measurement waiting for ever.
                let watchdog = Watchdog::start(&ctl)?;
                let measured = measure::run(ctx.clone(), spec, false, ctl, hello.cm);
                watchdog.done();
                let (_, back) = measured
                    .map_err(|e| format!("{} on {}: {e}", spec.test.name(), spec.rt.name()))?;
                ctl = back;
                count += 1;
            }
            other => return Err(format!("unknown command {other} from the client").into()),
        }
    }
}
