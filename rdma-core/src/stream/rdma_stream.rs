//! [`RdmaStream`]: a connected byte stream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::read_half::ReadHalf;
use super::write_half::{Shared, WriteHalf, Writer};
use super::StreamOptions;
use crate::error::Result;
use crate::msg::{Messenger, OwnedResult};
use crate::owned::StableBytes;

/// A connected byte stream over RDMA, with the semantics of a TCP socket: see the
/// [module documentation](super).
///
/// ```no_run
/// # async fn demo() -> anyrdma_core::Result<()> {
/// use anyrdma_core::stream::RdmaStream;
/// let stream = RdmaStream::connect("169.254.77.1:7471".parse().unwrap()).await?;
/// println!("{} -> {}", stream.local_addr(), stream.peer_addr());
/// let (read, write) = stream.split(); // one task reads, another writes
/// # let _ = (read, write);
/// # Ok(()) }
/// ```
pub struct RdmaStream {
    pub(super) read: ReadHalf,
    pub(super) write: WriteHalf,
}

impl RdmaStream {
    /// Connects to a [`StreamListener`](super::StreamListener) at `addr`.
    ///
    /// # Errors
    /// As [`Messenger::connect`]: the connection's errors (refused, unreachable, timed out).
    pub async fn connect(addr: SocketAddr) -> Result<RdmaStream> {
        Self::connect_with(addr, StreamOptions::default()).await
    }

    /// Connects to a [`StreamListener`](super::StreamListener) at `addr` with `options`.
    ///
    /// # Errors
    /// As [`Messenger::connect`].
    pub async fn connect_with(addr: SocketAddr, options: StreamOptions) -> Result<RdmaStream> {
        let messenger = Messenger::connect(addr, options.connection, options.messenger).await?;
        Ok(Self::from_messenger(messenger))
    }

    /// A stream over a messenger that owns its connection (from `connect` or `accept`).
    pub(super) fn from_messenger(messenger: Messenger) -> RdmaStream {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let (local, peer) = messenger
            .connection()
            .map_or((unspecified, unspecified), |c| {
                (c.local_addr(), c.peer_addr())
            });
        let shared = Arc::new(Shared {
            messenger,
            writer: Mutex::new(Writer::default()),
            local,
            peer,
        });
        RdmaStream {
            read: ReadHalf::new(shared.clone()),
            write: WriteHalf { shared },
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.read.shared.peer
    }

    /// This side's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.read.shared.local
    }

    /// The messenger underneath (its queue pair, credits and state, for diagnostics).
    pub fn messenger(&self) -> &Messenger {
        &self.read.shared.messenger
    }

    /// Writes all of `data`, memory the caller owns, without copying it when it is large,
    /// and gives it back once the peer has read it and its registration is gone: see
    /// [`WriteHalf::write_owned`].
    ///
    /// ```no_run
    /// # async fn demo(mut stream: anyrdma_core::stream::RdmaStream) -> anyrdma_core::Result<()> {
    /// let mut block = vec![0u8; 16 << 20];
    /// for round in 0..4u8 {
    ///     block.fill(round);
    ///     block = stream.write_owned(block).await?; // the same allocation, read by the peer
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`WriteHalf::write_owned`].
    pub async fn write_owned<T: StableBytes>(&mut self, data: T) -> OwnedResult<T> {
        self.write.write_owned(data).await
    }

    /// Splits the stream into halves that two tasks own: one reads, the other writes.
    /// [`ReadHalf::reunite`] joins them again.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        (self.read, self.write)
    }
}

super::io::impl_read!(RdmaStream, |stream| &mut stream.read);
super::io::impl_write!(RdmaStream, |stream| &stream.write);

impl ReadHalf {
    /// Joins the halves of one stream again.
    ///
    /// # Errors
    /// Gives both back when they are halves of different streams.
    pub fn reunite(self, write: WriteHalf) -> Result<RdmaStream, ReuniteError> {
        if Arc::ptr_eq(&self.shared, &write.shared) {
            Ok(RdmaStream { read: self, write })
        } else {
            Err(ReuniteError { read: self, write })
        }
    }
}

impl std::fmt::Debug for RdmaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaStream")
            .field("read", &self.read)
            .field("write", &self.write)
            .field("messenger", &self.read.shared.messenger)
            .finish()
    }
}

/// Two halves of different streams, given back by [`ReadHalf::reunite`].
#[derive(Debug)]
pub struct ReuniteError {
    /// The read half.
    pub read: ReadHalf,
    /// The write half.
    pub write: WriteHalf,
}

impl std::fmt::Display for ReuniteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the halves belong to different streams")
    }
}

impl std::error::Error for ReuniteError {}
