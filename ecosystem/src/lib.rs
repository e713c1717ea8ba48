//! HTTP and gRPC over anyrdma: hyper 1.x and tonic running on [`anyrdma::stream`] byte
//! streams, with no glue but hyper-util's `TokioIo` (and, for tonic's server, a wrapper that
//! says where a connection comes from).
//!
//! This package holds the examples `http-server`, `http-client`, `grpc-server` and
//! `grpc-client`, and the device tests `device_http` and `device_grpc`; what they share is
//! here:
//!
//! - [`pattern`]: bodies made from a seed, checked byte for byte as they arrive;
//! - [`http`]: a hyper server (HTTP/1.1 and HTTP/2 on one listener) and a checking client;
//! - [`grpc`]: a tonic service with a unary and a server-streaming call, its server on a
//!   [`anyrdma::stream::StreamListener`] and its client on a channel of RDMA streams.
//!
//! It is a package of its own so that hyper and tonic stay out of the build of the `anyrdma`
//! crate and its tests.

#![warn(missing_docs)]

pub mod grpc;
pub mod http;
pub mod pattern;

/// The error type of the helpers: whatever hyper, tonic, anyrdma or a check reported.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `err` and its sources, `: `-separated: hyper's and tonic's errors say what failed at their
/// level and keep the transport's reason (an anyrdma error, say) in their sources.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}
