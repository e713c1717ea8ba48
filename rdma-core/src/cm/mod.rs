//! Connections by address, through the RDMA connection manager (librdmacm), async.
//!
//! A server binds a [`Listener`] to an IP address and port and accepts [`Connection`]s; a
//! client calls [`Connection::connect`] with the server's address. The connection manager
//! resolves the address to a device, port and GID and the path between the two (MTU
//! included): nothing about devices is named or configured. A `Connection` owns a connected
//! [`QueuePair`](crate::QueuePair) and offers every one of its operations.
//!
//! - **Events**: each listener (with the connections it accepts) and each outgoing
//!   connection has an rdma_cm event channel, waited on through the [`Runtime`](crate::Runtime)
//!   by whoever awaits: no thread, no timer. Every event is acknowledged as soon as it is
//!   read.
//! - **Shared resources**: the connections of a device share one protection domain and a
//!   few completion queues (per runtime instance and poll mode), so thousands of connections
//!   do not mean thousands of completion queues and channels. Each connection's queue pair
//!   is admitted to a shared completion queue with room for its send and receive depths (a
//!   new one is made when none has room), so a queue is never promised more entries than it
//!   has ([`ConnectionOptions::cq_entries`]); give a connection its own with
//!   [`ConnectionOptions::resources`].
//! - **Ends**: a peer that disconnects or dies, or a device that goes away, fails the
//!   connection's queue pair: pending operations end with [`Error::Disconnected`] as their
//!   cause ([`Error::is_disconnect`]) instead of waiting.
//! - **C peers**: the protocol is librdmacm's own, so a C program using librdmacm in the
//!   ordinary way (`rdma_connect` or `rdma_accept` with default parameters, then send and
//!   receive) talks to an anyrdma program.
//!
//! [`Error::Disconnected`]: crate::Error::Disconnected
//! [`Error::is_disconnect`]: crate::Error::is_disconnect

pub(crate) mod channel;
pub(crate) mod connection;
pub(crate) mod id;
mod listener;
mod options;
mod resources;
pub(crate) mod sockaddr;

use std::net::{IpAddr, SocketAddr};

pub use connection::Connection;
pub(crate) use listener::Handshakes;
pub use listener::{Incoming, Listener};
pub use options::{ConnectionOptions, ConnectionResources, ListenerOptions};

use crate::error::{Error, Result};

/// Parses `ADDR` or `ADDR:PORT` (IPv6 as `[ADDR]:PORT`, or bare) into a socket address,
/// with `default_port` when none is given.
///
/// ```
/// use anyrdma_core::cm::parse_addr;
/// assert_eq!(parse_addr("169.254.77.1", 7471).unwrap().to_string(), "169.254.77.1:7471");
/// assert_eq!(parse_addr("169.254.77.1:9", 7471).unwrap().port(), 9);
/// assert_eq!(parse_addr("[fe80::1]:9", 7471).unwrap().port(), 9);
/// assert_eq!(parse_addr("::1", 7471).unwrap().port(), 7471);
/// assert!(parse_addr("rxe0", 7471).is_err());
/// ```
///
/// # Errors
/// [`Error::InvalidArgument`] when `text` is neither.
pub fn parse_addr(text: &str, default_port: u16) -> Result<SocketAddr> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
        .map_err(|_| {
            Error::InvalidArgument(format!(
                "{text:?} is not an IP address with an optional port (e.g. 169.254.77.1, \
                 169.254.77.1:{default_port}, [fe80::1]:{default_port})"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send<T: Send>(_: &T) {}

    /// The futures of connecting, listening and accepting move between threads (a
    /// multi-threaded runtime's tasks): they must be `Send`. Creating them does nothing.
    #[test]
    fn futures_are_send() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let connect = Connection::connect(addr, ConnectionOptions::default());
        is_send(&connect);
        fn accepting(listener: &Listener, incoming: Incoming) {
            is_send(&listener.incoming());
            is_send(&listener.accept());
            is_send(&incoming.accept());
        }
        let _ = accepting;
    }
}
