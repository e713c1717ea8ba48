//! HTTP and gRPC over anyrdma: hyper 1.x and tonic running on [`anyrdma::stream`] byte
//! streams, with no glue but hyper-util's `TokioIo` (tonic's server takes a listener's
//! `incoming()` as it is, with anyrdma's `tonic` feature).
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
/// level and keep the transport's reason (an anyrdma error, say) in their sources. A source
/// whose text is already said is left out: anyrdma's errors name their cause in their own
/// text and give it as their source too.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        let said = err.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    /// An anyrdma error and its cause, as hyper's error carries them: each said once.
    #[test]
    fn error_chain_says_each_cause_once() {
        let cause = Arc::new(anyrdma::Error::Disconnected {
            qpn: 7,
            why: "the peer disconnected",
        });
        let err = anyrdma::Error::QpInError { qpn: 7, cause };
        let io = std::io::Error::other(err);
        let text = super::error_chain(&io);
        assert_eq!(text.matches("the peer disconnected").count(), 1, "{text}");
        assert_eq!(text.matches("is in the error state").count(), 1, "{text}");
    }
}
