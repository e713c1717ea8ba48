//! Accepting streams: [`StreamListener`], and its connections as a `Stream` ([`Incoming`]).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use super::{RdmaStream, StreamOptions};
use crate::cm::{Handshakes, Listener, ListenerOptions};
use crate::error::Result;
use crate::msg::Messenger;

/// Listens for [`RdmaStream`] connections at an address.
///
/// Requests are answered as they come, up to 64 at once, and streams are returned as their
/// peers confirm, so a silent client does not hold up the others (as
/// [`Listener::accept`]). [`incoming`](StreamListener::incoming) gives them as a
/// [`Stream`](futures_core::Stream), for servers that take one (tonic's
/// `serve_with_incoming`, say).
///
/// ```no_run
/// # async fn demo() -> anyrdma_core::Result<()> {
/// use anyrdma_core::stream::StreamListener;
/// let listener = StreamListener::bind("0.0.0.0:7471".parse().unwrap())?;
/// loop {
///     let stream = listener.accept().await?;
///     println!("{} connected", stream.peer_addr());
///     // serve `stream` in a task of its own
/// }
/// # }
/// ```
pub struct StreamListener {
    inner: Arc<Accepting>,
}

/// Declared in this order: handshakes in progress end before the listener does.
struct Accepting {
    handshakes: Mutex<Handshakes<Messenger>>,
    listener: Listener,
    options: StreamOptions,
}

impl StreamListener {
    /// Listens at `addr` with the default options (see [`Listener::bind`] for the address).
    ///
    /// # Errors
    /// As [`Listener::bind_with`].
    pub fn bind(addr: SocketAddr) -> Result<StreamListener> {
        Self::bind_with(addr, StreamOptions::default())
    }

    /// Listens at `addr`; accepted streams have `options`.
    ///
    /// # Errors
    /// As [`Listener::bind_with`].
    pub fn bind_with(addr: SocketAddr, options: StreamOptions) -> Result<StreamListener> {
        let listener = Listener::bind_with(
            addr,
            ListenerOptions {
                connection: options.connection.clone(),
                ..ListenerOptions::default()
            },
        )?;
        Ok(StreamListener {
            inner: Arc::new(Accepting {
                handshakes: Mutex::new(Handshakes::default()),
                listener,
                options,
            }),
        })
    }

    /// The address listened at, with the port chosen when 0 was asked.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.listener.local_addr()
    }

    /// The next stream. Any number of tasks may wait here; dropping the future loses no
    /// stream (the next call returns it).
    ///
    /// # Errors
    /// Errors of the listener itself ([`Error::NoRuntime`](crate::Error::NoRuntime), say);
    /// a request whose handshake fails is skipped.
    pub async fn accept(&self) -> Result<RdmaStream> {
        poll_fn(|cx| self.inner.poll_accept(cx)).await
    }

    /// The streams as a [`Stream`](futures_core::Stream), which ends only with the
    /// listener's own errors.
    pub fn incoming(self) -> Incoming {
        Incoming { inner: self.inner }
    }
}

impl Accepting {
    fn poll_accept(&self, cx: &mut TaskContext<'_>) -> Poll<Result<RdmaStream>> {
        let runtime = self.listener.runtime()?;
        let (connection, messenger) = (self.options.connection.clone(), self.options.messenger);
        self.listener
            .poll_accept_with(&runtime, cx, &self.handshakes, |incoming| {
                Box::pin(Messenger::accept(incoming, connection.clone(), messenger))
            })
            .map(|accepted| accepted.map(RdmaStream::from_messenger))
    }
}

impl std::fmt::Debug for StreamListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamListener")
            .field("local", &self.local_addr())
            .finish()
    }
}

/// The streams of a [`StreamListener`], from [`StreamListener::incoming`]: a
/// [`Stream`](futures_core::Stream) of `Result<RdmaStream>`.
pub struct Incoming {
    inner: Arc<Accepting>,
}

impl Incoming {
    /// The address listened at.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.listener.local_addr()
    }
}

impl futures_core::Stream for Incoming {
    type Item = Result<RdmaStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_accept(cx).map(Some)
    }
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("local", &self.local_addr())
            .finish()
    }
}
