//! The writing side of a stream: bytes copied into registered memory and posted, gathered
//! into one message while the peer has no receive free; and what the two halves share (the
//! messenger and the writer, since reads push gathered bytes too).

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Wake, Waker};

use super::frame::END_OF_STREAM;
use crate::error::{Error, Result};
use crate::msg::{Messenger, Outgoing, OwnedResult, Place, SendOwnedError};
use crate::owned::StableBytes;
use crate::wake::lock;

/// What the two halves of a stream share.
pub(super) struct Shared {
    pub(super) messenger: Messenger,
    pub(super) writer: Mutex<Writer>,
    pub(super) local: SocketAddr,
    pub(super) peer: SocketAddr,
}

impl Shared {
    /// Posts bytes the writer gathered if the peer has room now: any poll of the stream
    /// does, so that they do not wait for the writer's next call.
    pub(super) fn push_gathered(&self, cx: &mut TaskContext<'_>) {
        // A writer busy in another task pushes them itself.
        if let Ok(mut writer) = self.writer.try_lock() {
            // A failure shows in the next call of either half.
            let _ = writer.try_push(&self.messenger, cx);
        }
    }
}

/// The most bytes of one write sent as one message (by rendezvous): a larger write takes
/// this much, and what is accepted at once stays bounded.
const LARGEST_WRITE: usize = 4 << 20;

/// Writes from this size on go as one message each, read by the peer from a registration of
/// their own (rendezvous); smaller ones above the eager limit take an eager message's worth
/// (a registration costs more than a few sends of a few kilobytes).
const RENDEZVOUS_FROM: usize = 64 << 10;

/// The write half of an [`RdmaStream`](super::RdmaStream) (from
/// [`RdmaStream::split`](super::RdmaStream::split)): `AsyncWrite`, for a task of its own.
/// Dropping it ends this direction as [`close`](futures_io::AsyncWrite::poll_close) would,
/// without waiting (see the [module documentation](super)).
pub struct WriteHalf {
    pub(super) shared: Arc<Shared>,
}

/// The writer's state, shared with the read half (a read pushes gathered bytes out).
#[derive(Default)]
pub(super) struct Writer {
    /// Bytes accepted and not posted yet: one message.
    pending: Option<Outgoing>,
    /// `pending` is an eager message that takes more bytes, up to its capacity.
    gathering: bool,
    /// `close` began (or the half was dropped): no more writes.
    closed: bool,
    /// The end of stream is in `pending` or was posted.
    end_queued: bool,
    /// `close` is waiting for the peer to have every byte before it sends the end of
    /// stream (which a push must not send meanwhile).
    ending: bool,
    /// Every byte written was known delivered before the end of stream was sent: a peer that
    /// leaves without it (it read what it wanted and went) fails neither `close` nor `flush`.
    delivered_before_end: bool,
    /// Its place among the messenger's waiters while a call waits.
    place: Place,
}

impl Writer {
    /// Posts what is pending if the peer has room for it now, without waiting; once the
    /// writing side is closed, the end of stream follows the last bytes (so a half dropped
    /// while the peer had no room still ends its direction when a read later pushes).
    pub(super) fn try_push(
        &mut self,
        messenger: &Messenger,
        cx: &mut TaskContext<'_>,
    ) -> Result<()> {
        loop {
            let sendable = self
                .pending
                .as_ref()
                .is_some_and(|p| p.len() > 0 || self.end_queued);
            if !sendable {
                // Nothing, or an empty gathering buffer: nothing to send.
                self.pending = None;
            } else if !messenger.try_post(cx, &mut self.pending)? {
                return Ok(()); // the peer has no room yet
            }
            if !self.closed || self.end_queued || self.ending {
                return Ok(());
            }
            self.pending = Some(messenger.eager_outgoing(0, Some(END_OF_STREAM))?);
            self.gathering = false;
            self.end_queued = true;
        }
    }

    /// Posts what is pending, waiting for the peer's room.
    fn poll_post_pending(
        &mut self,
        messenger: &Messenger,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<()>> {
        let mut place = std::mem::take(&mut self.place);
        let poll = self.poll_post_pending_at(messenger, cx, &mut place);
        self.place = place;
        poll
    }

    /// Posts what is pending, waiting for the peer's room at `place` among the waiters.
    fn poll_post_pending_at(
        &mut self,
        messenger: &Messenger,
        cx: &mut TaskContext<'_>,
        place: &mut Place,
    ) -> Poll<Result<()>> {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.len() == 0 && !self.end_queued)
        {
            // An empty gathering buffer (a write that could not be posted was moved into
            // another): nothing to send.
            self.pending = None;
        }
        if self.pending.is_none() {
            return Poll::Ready(Ok(()));
        }
        messenger.poll_post_at(cx, place, &mut self.pending)
    }

    /// Accepts bytes from the front of `bufs`, as many as one message takes: into the
    /// message being gathered while there is one, else into a new message of their own,
    /// sent now if the peer has room. The slices are taken as if they were one buffer (a
    /// frame's header and payload travel together).
    fn poll_write(
        &mut self,
        messenger: &Messenger,
        cx: &mut TaskContext<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<Result<usize>> {
        let total = bufs
            .iter()
            .fold(0usize, |n, buf| n.saturating_add(buf.len()));
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        loop {
            let room = match &self.pending {
                Some(pending) if self.gathering => pending.capacity() - pending.len(),
                Some(_) => 0,
                None => break,
            };
            if room > 0 {
                let pending = self.pending.as_mut().expect("checked");
                let (at, n) = (pending.len(), room.min(total));
                pending.set_len(at + n);
                gather(bufs, &mut pending.payload_mut()[at..at + n]);
                self.try_push(messenger, cx)?;
                return Poll::Ready(Ok(n));
            }
            // A full message must go before more bytes are accepted: backpressure.
            match self.poll_post_pending(messenger, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Nothing pending: the write becomes a message of its own, sent now if it can go.
        // The slices are taken as one buffer would be: a large write by rendezvous (what
        // hyper hands over as a head and a 64 KiB chunk goes as one message, not eight).
        let limit = messenger.eager_limit();
        let n = if total >= RENDEZVOUS_FROM.max(limit + 1) {
            total.min(LARGEST_WRITE).min(messenger.max_message())
        } else {
            total.min(limit)
        };
        self.pending = Some(messenger.outgoing_filled(n, None, |out| gather(bufs, out))?);
        self.gathering = false;
        self.try_push(messenger, cx)?;
        if n < limit {
            if let Some(unsent) = &mut self.pending {
                // The peer has no receive free: later writes gather with this one, into
                // one message as large as a receive.
                let mut gathering = messenger.eager_outgoing(limit, None)?;
                gathering.payload_mut()[..n].copy_from_slice(unsent.payload_mut());
                gathering.set_len(n);
                self.pending = Some(gathering);
                self.gathering = true;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(&mut self, messenger: &Messenger, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        match self.poll_post_pending(messenger, cx) {
            Poll::Ready(Ok(())) => self.poll_delivered(messenger, cx),
            other => other,
        }
    }

    /// Waits until the peer has everything posted. A disconnect after every byte written
    /// was known delivered is no failure: only the end of stream may be missing, and a peer
    /// that left does not need it.
    fn poll_delivered(
        &mut self,
        messenger: &Messenger,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<()>> {
        match messenger.poll_flush_at(cx, &mut self.place) {
            Poll::Ready(Err(err)) if err.is_disconnect() && self.delivered_before_end => {
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    /// Sends what is pending, waits until the peer has every byte, then sends the end of
    /// stream and waits for it: the end goes only once the bytes before it are known
    /// delivered, so that a peer that reads them all and leaves at once (hyper's client
    /// does) makes no error of the end it never needed.
    fn poll_close(&mut self, messenger: &Messenger, cx: &mut TaskContext<'_>) -> Poll<Result<()>> {
        self.closed = true;
        if !self.end_queued {
            self.ending = true;
            std::task::ready!(self.poll_flush(messenger, cx))?;
            self.ending = false;
            self.delivered_before_end = true;
            self.pending = Some(messenger.eager_outgoing(0, Some(END_OF_STREAM))?);
            self.gathering = false;
            self.end_queued = true;
        }
        match self.poll_post_pending(messenger, cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(err)) if err.is_disconnect() => {
                // The peer is gone (it read to the end and left, say): the end of stream
                // can no longer reach it, nor does it need to. The close is good if the
                // peer had every byte before it, which the flush below tells.
                self.pending = None;
            }
            other => return other,
        }
        self.poll_delivered(messenger, cx)
    }
}

impl WriteHalf {
    /// The peer's address.
    pub fn peer_addr(&self) -> std::net::SocketAddr {
        self.shared.peer
    }

    /// Writes from the front of `bufs` (one slice for a plain write), as
    /// [`Writer::poll_write`].
    pub(super) fn poll_write_slices(
        &self,
        cx: &mut TaskContext<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut writer = lock(&self.shared.writer);
        if writer.closed {
            return Poll::Ready(Err(Error::StreamClosed.into()));
        }
        writer
            .poll_write(&self.shared.messenger, cx, bufs)
            .map_err(io::Error::from)
    }

    pub(super) fn poll_flush_bytes(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let mut writer = lock(&self.shared.writer);
        writer
            .poll_flush(&self.shared.messenger, cx)
            .map_err(io::Error::from)
    }

    pub(super) fn poll_close_bytes(&self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let mut writer = lock(&self.shared.writer);
        writer
            .poll_close(&self.shared.messenger, cx)
            .map_err(io::Error::from)
    }
}

impl WriteHalf {
    /// Writes all of `data`, memory the caller owns ([`StableBytes`]: `Vec<u8>`,
    /// `Box<[u8]>`, and with features `bytes::BytesMut` and memory mappings), without copying
    /// it when it is large, and gives it back once the peer has read it.
    ///
    /// Bytes written before and still gathered in the stream go first; then `data` goes as
    /// one message, by [`Messenger::send_owned`]: above the eager limit its bytes are
    /// registered where they are, for this write alone, with remote read rights only, and
    /// the peer reads them straight from `data`. The future resolves once the peer has read
    /// them **and the registration is gone** (its key no longer works), giving `data` back,
    /// the same allocation, for the next write. Up to the eager limit the bytes are copied as
    /// a write's are and `data` comes back at once. Order is kept: what is written after
    /// comes after.
    ///
    /// Dropping the future before `data` was posted (while earlier bytes or the peer's room
    /// are waited for) sends none of it and leaves nothing exposed; dropping it after, the
    /// bytes still arrive and `data` is dropped once the peer has read them (see
    /// [`Messenger::send_owned`]). Takes at most the messenger's
    /// [`max_message`](Messenger::max_message) bytes (64 MiB by default) at once.
    ///
    /// ```no_run
    /// # async fn demo(stream: anyrdma_core::stream::RdmaStream) -> anyrdma_core::Result<()> {
    /// let (_read, mut write) = stream.split();
    /// let mut block = vec![0u8; 16 << 20];
    /// for round in 0..4u8 {
    ///     block.fill(round); // the peer's old key is dead: it cannot see this
    ///     block = write.write_owned(block).await?; // not copied; back once the peer read it
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A [`SendOwnedError`] giving `data` back (see [`Messenger::send_owned`]):
    /// [`Error::StreamClosed`] after `close`, [`Error::TooLarge`] above `max_message`, the
    /// registration's errors, and the stream's failure (a killed peer, say), as a write's.
    /// It converts into an [`io::Error`] as a write's error would be.
    pub async fn write_owned<T: StableBytes>(&mut self, data: T) -> OwnedResult<T> {
        let shared = &*self.shared;
        let messenger = &shared.messenger;
        // The bytes gathered before go first, from a place among the waiters that this future
        // gives up if it is dropped.
        let mut waiting = Waiting {
            messenger,
            place: Place::default(),
        };
        let earlier = poll_fn(|cx| {
            let mut writer = lock(&shared.writer);
            if writer.closed {
                return Poll::Ready(Err(Error::StreamClosed));
            }
            writer.poll_post_pending_at(messenger, cx, &mut waiting.place)
        })
        .await;
        drop(waiting);
        if let Err(error) = earlier {
            return Err(SendOwnedError {
                error,
                data: Some(data),
            });
        }
        if data.is_empty() {
            // An empty message would break the framing; nothing to send.
            return Ok(data);
        }
        // Nothing is gathered now, and nothing else writes while this borrows the half.
        messenger.send_owned_message(data, None).await
    }
}

/// A place among the messenger's waiters, given up when dropped.
struct Waiting<'a> {
    messenger: &'a Messenger,
    place: Place,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.messenger.abandon(&mut self.place);
    }
}

super::io::impl_write!(WriteHalf, |half| half);

/// Copies the front of `bufs` into `out`, as many bytes as `out` holds (at most what
/// `bufs` has).
fn gather(bufs: &[IoSlice<'_>], out: &mut [u8]) {
    let mut at = 0;
    for buf in bufs {
        if at == out.len() {
            break;
        }
        let n = buf.len().min(out.len() - at);
        out[at..at + n].copy_from_slice(&buf[..n]);
        at += n;
    }
}

/// Wakes nothing: the drop of a write half posts what it can without waiting for anything.
struct NoWake;

impl Wake for NoWake {
    fn wake(self: Arc<Self>) {}
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        let messenger = &self.shared.messenger;
        let mut writer = lock(&self.shared.writer);
        // This direction ends here: what was accepted, then the end of stream, if the peer
        // has room for them now (a drop waits for nothing).
        let waker = Waker::from(Arc::new(NoWake));
        let mut cx = TaskContext::from_waker(&waker);
        writer.closed = true;
        // A close that was waiting for delivery is not waited for any more.
        writer.ending = false;
        let _ = writer.try_push(messenger, &mut cx);
        messenger.abandon(&mut writer.place);
    }
}

impl std::fmt::Debug for WriteHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let writer = lock(&self.shared.writer);
        f.debug_struct("WriteHalf")
            .field("peer", &self.shared.peer)
            .field("pending", &writer.pending.as_ref().map_or(0, Outgoing::len))
            .field("closed", &writer.closed)
            .finish()
    }
}
