//! The reading side of a stream: messages from the peer, taken in order, lent out of the
//! registered memory they arrived in.

use std::io;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use super::frame::{Frame, Frames};
use super::write_half::Shared;
use crate::error::Error;
use crate::mr::LocalBuf;
use crate::msg::Place;

/// The read half of an [`RdmaStream`](super::RdmaStream) (from [`RdmaStream::split`](super::RdmaStream::split)): `AsyncRead` and
/// `AsyncBufRead`, for a task of its own.
pub struct ReadHalf {
    pub(super) shared: Arc<Shared>,
    reader: Reader,
}

/// What a read half holds between reads.
#[derive(Default)]
struct Reader {
    /// The message being read, and how much of it was read.
    current: Option<(LocalBuf, usize)>,
    frames: Frames,
    /// The peer's end of stream was taken: every read returns 0 bytes.
    ended: bool,
    /// Its place among the messenger's waiters while a read waits.
    place: Place,
}

impl ReadHalf {
    pub(super) fn new(shared: Arc<Shared>) -> ReadHalf {
        ReadHalf {
            shared,
            reader: Reader::default(),
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> std::net::SocketAddr {
        self.shared.peer
    }

    /// Polls for bytes to read: a slice of the message being read (empty at the end of the
    /// stream). What `AsyncBufRead::poll_fill_buf` does.
    pub(super) fn poll_fill(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<&[u8]>> {
        // Bytes gathered by the writer go out whenever the stream is polled.
        self.shared.push_gathered(cx);
        let reader = &mut self.reader;
        loop {
            if let Some((buf, at)) = &reader.current {
                if *at < buf.len() {
                    break;
                }
                // Read whole: its memory goes back to the pool now, not at the next message.
                reader.current = None;
            }
            if reader.ended {
                return Poll::Ready(Ok(&[]));
            }
            let messenger = &self.shared.messenger;
            let message = match messenger.poll_recv_at(cx, &mut reader.place) {
                Poll::Ready(Ok(message)) => message,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err.into())),
                Poll::Pending => return Poll::Pending,
            };
            match reader.frames.next(message.imm, message.data.len()) {
                Ok(Frame::Data) => reader.current = Some((message.data, 0)),
                Ok(Frame::End) => reader.ended = true,
                Err(problem) => {
                    let err = messenger.fail_with(Error::BadStreamFrame { problem });
                    return Poll::Ready(Err(err.into()));
                }
            }
        }
        match &reader.current {
            Some((buf, at)) => Poll::Ready(Ok(&buf[*at..])),
            None => Poll::Ready(Ok(&[])),
        }
    }

    /// Marks `amt` bytes of the last [`poll_fill`](ReadHalf::poll_fill) read.
    pub(super) fn consume(&mut self, amt: usize) {
        if let Some((buf, at)) = &mut self.reader.current {
            *at = (*at + amt).min(buf.len());
        }
    }

    /// Copies what there is to read into `into`.
    pub(super) fn poll_read_into(
        &mut self,
        cx: &mut TaskContext<'_>,
        into: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if into.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.poll_copy(cx, into.len(), |bytes| {
            into[..bytes.len()].copy_from_slice(bytes)
        })
    }

    /// Copies what there is to read into the unfilled part of `buf` (Tokio's `poll_read`).
    #[cfg(feature = "tokio-io")]
    pub(super) fn poll_read_buf(
        &mut self,
        cx: &mut TaskContext<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_copy(cx, buf.remaining(), |bytes| buf.put_slice(bytes))
            .map_ok(drop)
    }

    /// Hands up to `room` bytes of what there is to read to `put` and marks them read;
    /// returns how many.
    fn poll_copy(
        &mut self,
        cx: &mut TaskContext<'_>,
        room: usize,
        put: impl FnOnce(&[u8]),
    ) -> Poll<io::Result<usize>> {
        let available = std::task::ready!(self.poll_fill(cx))?;
        let n = available.len().min(room);
        put(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(n))
    }
}

super::io::impl_read!(ReadHalf, |half| half);

impl Drop for ReadHalf {
    fn drop(&mut self) {
        // A read that was waiting hands its turn on (see `msg::waiting`).
        self.shared.messenger.abandon(&mut self.reader.place);
    }
}

impl std::fmt::Debug for ReadHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadHalf")
            .field("peer", &self.shared.peer)
            .field(
                "buffered",
                &self
                    .reader
                    .current
                    .as_ref()
                    .map_or(0, |(buf, at)| buf.len() - at),
            )
            .field("ended", &self.reader.ended)
            .finish()
    }
}
