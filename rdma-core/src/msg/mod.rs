//! Messaging on a connected queue pair: receives kept posted, messages taken in order, and
//! credit-based flow control, so that a sender never meets a receiver that is not ready.
//!
//! With raw verbs, a receiver must keep receives posted or the sender's messages fail
//! ("receiver not ready"), and a receive future dropped while posted leaves a buffer that
//! silently takes the next message. A [`Messenger`] does this once, right:
//!
//! - **Receives**: it keeps [`MessengerOptions::depth`] receives posted, from a
//!   registered-memory pool of its own. [`Messenger::recv`] (or the
//!   [`Stream`](futures_core::Stream) of [`Messenger::messages`]) yields messages in arrival
//!   order; the receives are owned by the messenger, not by the future, so dropping a
//!   `recv` future (a timeout, a `select!`) never loses a message. A message is an owned
//!   buffer that goes back to the pool when dropped.
//! - **Credits**: a sender sends only while the peer has a receive posted for it. Each side
//!   starts with the peer's depth as its credits; every message tells the peer how many
//!   receives this side posted again since it last said (the credits it returns), and when
//!   a quarter of the depth is owed and this side sends nothing, a small credit message
//!   carries them, so that a receiver that only receives keeps its sender going. A message
//!   taken off the wire is credited back only when the application takes it with `recv`: a
//!   slow receiver holds its sender back ([`Messenger::send`] waits: backpressure, not an
//!   error). Control messages (credits, and "read it" for large messages) take no credit:
//!   each side posts 7 receives beyond its depth for them, and data always leaves one more
//!   free, enough for every control message the protocol can have in flight. So a side at
//!   zero credits can still return credits (two sides cannot end owing each other with
//!   nothing left to say it), and a credit message, which returns only receives that took
//!   data, is never answered by another (two idle sides stay quiet). The protocol is an
//!   I/O-free state machine, checked by a deterministic simulation of two peers over many
//!   random schedules (`msg::simulation`).
//! - **Any size**: one [`Messenger::send`] takes a message of any size up to
//!   [`MessengerOptions::max_message`]. Up to [`MessengerOptions::eager_limit`] it is copied
//!   into one send; above, it goes by rendezvous: it is copied into memory registered for it
//!   alone, with remote read rights only, and the peer is sent where it is; the peer reads it
//!   into memory of its own and says it is done, and the registration goes then (its key stops
//!   working). `send` returns once the message (or its request) is posted, as a socket's
//!   write returns once the bytes are buffered, so a task may send a large message and then
//!   receive; [`Messenger::flush`] waits until the peer has everything.
//!   [`Messenger::send_owned`] sends memory the caller owns without the copy: it is
//!   registered where it is and exposed as it is, and given back once the peer has read it
//!   and the registration is gone.
//! - **Bounds**: messages in flight are bounded by the peer's depth (credits), the send
//!   queue's room, and large messages exposed at once by 4. What a peer can
//!   make this side hold is bounded too: its large messages are read two at a time, and at
//!   most 4 are in memory at once (being read, or read and not yet taken by `recv`: a slow
//!   application holds the next reads back, the others wait their turn exposed at the
//!   sender), into a pool of the messenger's (up to 128 MiB, registered once and kept for the
//!   next ones; beyond it, a registration each). So a peer makes this side register at most
//!   4 of its largest messages beyond the pool.
//! - **Failures**: a peer that disconnects, a queue pair that fails, a malformed message
//!   from the peer ([`Error::BadMessage`](crate::Error::BadMessage): the peer is then not
//!   talked to any more): `send` and `recv` end with the failure as the cause, after the
//!   messages that arrived before it were taken.
//!
//! [`Messenger::connect`] and [`Messenger::accept`] make the connection and tell each other
//! their sizes in its private data (and post their receives before the peer can send);
//! over a queue pair connected otherwise ([`Messenger::new`]) both sides use the same
//! options. Each message starts with an 8-byte header, checked before use.
//!
//! ```no_run
//! # async fn demo(qp: anyrdma_core::QueuePair) -> anyrdma_core::Result<()> {
//! use anyrdma_core::msg::{Messenger, MessengerOptions};
//! let messenger = Messenger::new(&qp, MessengerOptions::default())?;
//! messenger.send(b"hello").await?;
//! let reply = messenger.recv().await?;
//! println!("{} bytes back", reply.data.len());
//! # Ok(()) }
//! ```

mod engine;
mod exposed;
mod handshake;
mod header;
mod message;
mod messenger;
mod owned;
mod protocol;
#[cfg(test)]
mod simulation;
mod waiting;

pub use header::HeaderProblem;
pub(crate) use messenger::Outgoing;
// The wire format, for the stream framing's fuzz test (messages decoded as they arrive).
pub use crate::stats::MessengerStats;
#[cfg(test)]
pub(crate) use header::{Header, Kind, HEADER_LEN};
pub use message::Message;
pub use messenger::{Messages, Messenger};
pub use owned::{OwnedResult, SendOwnedError};
pub(crate) use waiting::Place;

/// Sizes of a [`Messenger`]. Messengers made by [`Messenger::connect`] and
/// [`Messenger::accept`] tell each other theirs; over a queue pair connected otherwise
/// ([`Messenger::new`]) both sides must use the same.
#[derive(Debug, Clone, Copy)]
pub struct MessengerOptions {
    /// Receives kept posted for data (and so messages that may be in flight toward this
    /// side); 7 more are posted for control messages. At most the queue pair's receive
    /// depth less 7. Default 64.
    pub depth: usize,
    /// Messages up to this many bytes travel in one send into a posted receive (each
    /// receive is this large); larger ones by rendezvous, read by the receiver from the
    /// sender's memory. Default 8192.
    pub eager_limit: usize,
    /// The largest message this side takes (a larger rendezvous request from the peer is a
    /// protocol error). Default 64 MiB.
    pub max_message: usize,
}

impl Default for MessengerOptions {
    fn default() -> Self {
        MessengerOptions {
            depth: 64,
            eager_limit: 8192,
            max_message: 64 << 20,
        }
    }
}

impl MessengerOptions {
    /// The receive queue depth (`max_recv_wr`) a queue pair needs for a messenger with
    /// these options: [`depth`](Self::depth) receives for data and 7 for control messages.
    ///
    /// ```
    /// use anyrdma_core::msg::MessengerOptions;
    /// use anyrdma_core::QpOptions;
    ///
    /// let messenger = MessengerOptions::default();
    /// let qp = QpOptions {
    ///     max_recv_wr: messenger.receive_queue_depth() as u32,
    ///     ..QpOptions::default()
    /// };
    /// assert_eq!(qp.max_recv_wr, 71);
    /// ```
    pub fn receive_queue_depth(&self) -> usize {
        self.depth.saturating_add(protocol::CONTROL_RECEIVES)
    }
}
