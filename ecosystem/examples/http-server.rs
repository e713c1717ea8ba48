//! HTTP server over RDMA byte streams: hyper 1.x on an `anyrdma::stream::StreamListener`,
//! speaking HTTP/1.1 and HTTP/2 (prior knowledge) on the same address.
//!
//!     cargo run -p anyrdma-ecosystem --example http-server -- --listen 169.254.77.1
//!
//! Options: `--listen ADDR[:PORT]` (default port 8080).
//! It answers `POST /echo` (the request body comes back) and `GET /pattern?seed=S&len=N` (N
//! bytes made from a seed); `http-client` sends both and checks every byte.

#[path = "common/mod.rs"]
mod common;

use anyrdma::stream::StreamListener;
use anyrdma_ecosystem::http;

const USAGE: &str = "usage: http-server --listen ADDR[:PORT]";
const DEFAULT_PORT: u16 = 8080;

fn main() {
    let args = common::Args::parse("http-server", USAGE, &[]);
    let addr = args.addr("--listen", DEFAULT_PORT, USAGE);
    let result = common::block_on(async {
        let listener = StreamListener::bind(addr)?;
        println!(
            "http-server: listening on {} (HTTP/1.1 and HTTP/2)",
            listener.local_addr()
        );
        // Each connection is served by a task of its own; this returns only if accepting fails.
        http::serve(listener).await
    });
    if let Err(err) = result {
        common::fail("http-server", &err.to_string());
    }
}
