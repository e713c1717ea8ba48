//! gRPC server over RDMA byte streams: tonic's server on an
//! `anyrdma::stream::StreamListener`, serving the `Patterns` service of
//! `ecosystem/proto/patterns.proto` (a unary call and a server-streaming call).
//!
//!     cargo run -p anyrdma-ecosystem --example grpc-server -- --listen 169.254.77.1
//!
//! Options: `--listen ADDR[:PORT]` (default port 50051).

#[path = "common/mod.rs"]
mod common;

use anyrdma::stream::StreamListener;
use anyrdma_ecosystem::{error_chain, grpc};

const USAGE: &str = "usage: grpc-server --listen ADDR[:PORT]";
const DEFAULT_PORT: u16 = 50051;

fn main() {
    let args = common::Args::parse("grpc-server", USAGE, &[]);
    let addr = args.addr("--listen", DEFAULT_PORT, USAGE);
    let result = common::block_on(async {
        let listener = StreamListener::bind(addr)?;
        println!("grpc-server: listening on {}", listener.local_addr());
        // tonic's own server, given the listener's stream of accepted connections.
        grpc::serve(listener).await?;
        Ok::<(), anyrdma_ecosystem::BoxError>(())
    });
    if let Err(err) = result {
        common::fail("grpc-server", &error_chain(&*err));
    }
}
