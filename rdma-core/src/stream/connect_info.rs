//! [`ConnectInfo`]: the addresses of a stream's connection, and tonic's `Connected` (feature
//! `tonic`), which asks each accepted connection for them.

use std::net::SocketAddr;

use super::RdmaStream;

/// The addresses of both ends of an [`RdmaStream`] (from [`RdmaStream::connect_info`]).
///
/// With the `tonic` feature, `RdmaStream` implements tonic's
/// `transport::server::Connected` with this as its `ConnectInfo`: tonic's server takes a
/// [`StreamListener::incoming`](super::StreamListener::incoming) as it is, and a handler
/// finds the client's address in `request.extensions().get::<ConnectInfo>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectInfo {
    /// This side's address.
    pub local: SocketAddr,
    /// The peer's address.
    pub peer: SocketAddr,
}

impl RdmaStream {
    /// The addresses of both ends.
    pub fn connect_info(&self) -> ConnectInfo {
        ConnectInfo {
            local: self.local_addr(),
            peer: self.peer_addr(),
        }
    }
}

#[cfg(feature = "tonic")]
impl tonic::transport::server::Connected for RdmaStream {
    type ConnectInfo = ConnectInfo;

    fn connect_info(&self) -> ConnectInfo {
        RdmaStream::connect_info(self)
    }
}
