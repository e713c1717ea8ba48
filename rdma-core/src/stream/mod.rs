//! Byte streams over RDMA: [`RdmaStream`], a connected stream with the semantics of a TCP
//! socket, for code written against `AsyncRead` and `AsyncWrite` (HTTP with hyper, gRPC with
//! tonic, codecs, `copy`, line readers).
//!
//! It implements `futures_io::{AsyncRead, AsyncBufRead, AsyncWrite}` (smol, async-std and
//! runtime-neutral libraries), and with the `tokio-io` feature of this crate (turned on by
//! the `anyrdma` facade's `tokio` feature) also `tokio::io::{AsyncRead, AsyncBufRead,
//! AsyncWrite}`, on the same types: no compat wrapper. With the `tonic` feature, tonic's
//! server takes a [`StreamListener::incoming`] as it is ([`ConnectInfo`]).
//!
//! A stream is a [`Messenger`](crate::msg::Messenger) underneath, and inherits its flow
//! control and its failures:
//!
//! - **Writes** are copied into registered memory and posted at once when the peer has a
//!   receive free; `write` returns without waiting for the peer, as a socket's does. While
//!   the peer has none free (its reader is behind), small writes are gathered into one
//!   message of up to the eager limit (8 KiB by default), and a further write waits for
//!   the peer: backpressure, with memory bounded by one message. Gathered bytes go out as
//!   soon as the stream is polled again in either direction (a write, a read, `flush` or
//!   `close`) and the peer has room: like a buffered writer, a writer that then waits for
//!   something else must `flush`. A write of 64 KiB or more is sent as one message, read by
//!   the peer straight from a registration of its own (rendezvous); a smaller one above the
//!   eager limit takes one eager message's worth per call. A vectored write
//!   (`poll_write_vectored`: h2, hyper and tonic hand a frame's header and payload over in
//!   one call) is taken as one buffer of all its slices would be, copied once into the
//!   message. [`RdmaStream::write_owned`] writes memory the caller owns without a copy:
//!   the peer reads it where it is, and it comes back once read and deregistered.
//! - **`flush`** returns when the peer has every byte written before it: the device
//!   acknowledged each send, and the peer read each large write. That is one round trip of
//!   the transport (the peer's device acknowledges; its application need not run), and more
//!   than a TCP socket's `flush`, which returns at once. It is kept: code that flushes and
//!   then drops or reports success relies on it, and measured in the emulated guest, h2
//!   (which flushes after every DATA frame it chains) was no faster when `flush` only
//!   posted the bytes, the round trip being small beside the work per frame.
//! - **`close`** (`shutdown` for Tokio) is a half-close: the rest is sent and, once the peer
//!   has every byte, an end of stream; the peer reads every byte, then `Ok(0)`. This side
//!   may still read, and the peer write. A peer that leaves once it has every byte (as
//!   hyper's clients do) fails neither `close` nor a `flush` polled with it, although the
//!   end of stream may not reach it. The connection ends when both halves of both sides are
//!   dropped.
//! - **Reads** take the bytes of one message at a time, straight out of the registered
//!   memory they arrived in (`fill_buf` lends it without a copy). Each message taken frees a
//!   receive for the peer; a reader that stops reading stops the writer.
//! - **Failures**: a peer that disconnects or dies, or a failed queue pair, ends reads (after
//!   the bytes that arrived before) and writes with an error whose
//!   [`get_ref`](std::io::Error::get_ref) is the [`Error`](crate::Error), of kind
//!   `ConnectionReset` for a disconnect. A peer that breaks the framing (see
//!   [`FrameProblem`]) is cut off: [`Error::BadStreamFrame`](crate::Error::BadStreamFrame).
//! - **Dropping** a stream (or its write half) without `close` sends the end of stream if
//!   the peer has a receive free for it, without waiting; bytes written and not yet at the
//!   peer are lost when the connection goes with the last half, as with a socket closed
//!   with `SO_LINGER` 0. `close().await` first when the peer must have everything.
//!
//! ```no_run
//! # async fn demo() -> anyrdma_core::Result<()> {
//! use anyrdma_core::stream::{RdmaStream, StreamListener};
//!
//! let listener = StreamListener::bind("169.254.77.1:7471".parse().unwrap())?;
//! let client = RdmaStream::connect(listener.local_addr());
//! let server = listener.accept();
//! # let _ = (client, server);
//! // Each is an AsyncRead + AsyncWrite: futures::io::copy, hyper, tonic...
//! # Ok(()) }
//! ```

mod connect_info;
mod frame;
mod io;
mod listener;
mod rdma_stream;
mod read_half;
mod write_half;

pub use connect_info::ConnectInfo;
pub use frame::FrameProblem;
pub use listener::{Incoming, StreamListener};
pub use rdma_stream::{RdmaStream, ReuniteError};
pub use read_half::ReadHalf;
pub use write_half::WriteHalf;

use crate::cm::ConnectionOptions;
use crate::msg::MessengerOptions;

/// How a stream connects and the messenger under it.
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    /// The connection's options (device resources, timeouts, transport parameters).
    pub connection: ConnectionOptions,
    /// Receives kept posted, the eager limit (the largest message sent in one send, and so
    /// the most bytes gathered while the peer has no receive free) and the largest message.
    pub messenger: MessengerOptions,
}
