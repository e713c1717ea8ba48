//! Lists the RDMA devices of this machine and the port anyrdma would use by default.
//!
//! Run: `cargo run --example devices --features tokio`
//! Choose another device with `ANYRDMA_DEVICE=name[:port[:gid_index]]`.

use std::process::ExitCode;

use clap::Parser;

/// Lists the RDMA devices of this machine and the port anyrdma would use by default
/// (ANYRDMA_DEVICE=name[:port[:gid_index]] chooses another).
#[derive(Parser)]
#[command(name = "devices", version)]
struct Args {}

fn main() -> ExitCode {
    Args::parse();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Error::NoDevice says how to get a device (Soft-RoCE, or the project's VM).
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyrdma::Result<()> {
    for device in anyrdma::devices()? {
        println!("{device}\n");
    }
    let selection = anyrdma::default_port()?;
    println!("anyrdma would use {selection}");
    Ok(())
}
