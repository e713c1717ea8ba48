//! HTTP/1.1 and HTTP/2 with hyper 1.x over any Tokio byte stream, such as
//! [`anyrdma::stream::RdmaStream`].
//!
//! The server ([`serve_connection`], [`serve`]) answers two requests:
//!
//! - `POST /echo`: the request body comes back as the response body, streamed (a byte of the
//!   response leaves before the last byte of the request has arrived);
//! - `GET /pattern?seed=S&len=N`: `N` bytes of the pattern of seed `S` ([`crate::pattern`]).
//!
//! It speaks HTTP/1.1 and HTTP/2 (with prior knowledge) on the same listener: hyper-util's
//! `auto` builder tells them apart by the HTTP/2 preface. The [`Client`] sends its request
//! bodies as patterns and checks every byte of every response.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::pattern::{self, Checker};
use crate::BoxError;

/// The size of the frames a [`PatternBody`] yields.
pub const CHUNK: usize = 64 << 10;

/// The HTTP version a [`Client`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1: one request at a time per connection, bodies with a `content-length`.
    Http1,
    /// HTTP/2 with prior knowledge: any number of concurrent requests on one connection.
    Http2,
}

impl Protocol {
    /// `"HTTP/1.1"` or `"HTTP/2"`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        }
    }
}

/// A body of `len` bytes of the pattern of a seed, made as it is sent (never all in memory),
/// in frames of [`CHUNK`] bytes. Its exact size is known up front, so HTTP/1.1 sends it with
/// a `content-length`.
#[derive(Debug, Clone)]
pub struct PatternBody {
    seed: u64,
    offset: u64,
    len: u64,
}

impl PatternBody {
    /// `len` bytes of the pattern of `seed`.
    pub fn new(seed: u64, len: u64) -> PatternBody {
        PatternBody {
            seed,
            offset: 0,
            len,
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let left = self.len - self.offset;
        if left == 0 {
            return Poll::Ready(None);
        }
        let n = left.min(CHUNK as u64) as usize;
        let data = pattern::bytes(self.seed, self.offset, n);
        self.offset += n as u64;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset == self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.offset)
    }
}

/// The response body type of the server.
pub type ServerBody = BoxBody<Bytes, hyper::Error>;

/// Answers one request (see the module's documentation).
pub async fn handle(request: Request<Incoming>) -> Result<Response<ServerBody>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        // hyper answers HTTP/1.1 with the request's content-length (the body's exact size).
        (&Method::POST, "/echo") => Response::new(request.into_body().boxed()),
        (&Method::GET, "/pattern") => match pattern_query(request.uri().query().unwrap_or("")) {
            Some((seed, len)) => {
                Response::new(PatternBody::new(seed, len).map_err(|n| match n {}).boxed())
            }
            None => text(StatusCode::BAD_REQUEST, "GET /pattern?seed=S&len=N\n"),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "POST /echo, or GET /pattern?seed=S&len=N\n",
        ),
    };
    Ok(response)
}

/// `seed` and `len` of a query `seed=S&len=N`.
fn pattern_query(query: &str) -> Option<(u64, u64)> {
    let (mut seed, mut len) = (None, None);
    for pair in query.split('&') {
        match pair.split_once('=')? {
            ("seed", value) => seed = Some(value.parse().ok()?),
            ("len", value) => len = Some(value.parse().ok()?),
            _ => return None,
        }
    }
    Some((seed?, len?))
}

fn text(status: StatusCode, body: &'static str) -> Response<ServerBody> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|n| match n {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

/// Serves HTTP/1.1 or HTTP/2 (whichever the client speaks) on one connection until the
/// client closes it. Spawns HTTP/2's tasks on the Tokio runtime it runs on.
pub async fn serve_connection<IO>(io: IO) -> Result<(), BoxError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), hyper::service::service_fn(handle))
        .await
}

/// Accepts connections from `listener` for ever, each served in a task of its own
/// ([`serve_connection`]); a connection's error is printed, and ends only that connection.
/// Returns only when accepting fails.
pub async fn serve(listener: anyrdma::stream::StreamListener) -> anyrdma::Result<()> {
    loop {
        let stream = listener.accept().await?;
        let peer = stream.peer_addr();
        tokio::spawn(async move {
            if let Err(err) = serve_connection(stream).await {
                eprintln!(
                    "http: connection from {peer}: {}",
                    crate::error_chain(&*err)
                );
            }
        });
    }
}

/// What a checked request moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    /// Request body bytes sent.
    pub sent: u64,
    /// Response body bytes received, every one checked.
    pub received: u64,
}

/// An HTTP client on one connection: sends pattern bodies, checks every byte of the
/// responses.
pub struct Client {
    sender: Sender,
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<PatternBody>),
    Http2(hyper::client::conn::http2::SendRequest<PatternBody>),
}

impl Client {
    /// Starts `protocol` on `io` (a connected stream); the connection is driven by a task
    /// spawned on the current Tokio runtime, which ends when every handle on the client is
    /// dropped.
    pub async fn handshake<IO>(io: IO, protocol: Protocol) -> Result<Client, BoxError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let sender = match protocol {
            Protocol::Http1 => {
                let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        eprintln!(
                            "http: HTTP/1.1 client connection: {}",
                            crate::error_chain(&err)
                        );
                    }
                });
                Sender::Http1(sender)
            }
            Protocol::Http2 => {
                let (sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        eprintln!(
                            "http: HTTP/2 client connection: {}",
                            crate::error_chain(&err)
                        );
                    }
                });
                Sender::Http2(sender)
            }
        };
        Ok(Client { sender })
    }

    /// Connects to an anyrdma stream server at `addr` and starts `protocol` on it.
    pub async fn connect(
        addr: std::net::SocketAddr,
        protocol: Protocol,
    ) -> Result<Client, BoxError> {
        let stream = anyrdma::stream::RdmaStream::connect(addr).await?;
        Client::handshake(stream, protocol).await
    }

    /// The protocol it speaks.
    pub fn protocol(&self) -> Protocol {
        match self.sender {
            Sender::Http1(_) => Protocol::Http1,
            Sender::Http2(_) => Protocol::Http2,
        }
    }

    /// Another handle on the same HTTP/2 connection, whose requests run concurrently with this
    /// one's; `None` for HTTP/1.1, which carries one request at a time.
    pub fn share(&self) -> Option<Client> {
        match &self.sender {
            Sender::Http1(_) => None,
            Sender::Http2(sender) => Some(Client {
                sender: Sender::Http2(sender.clone()),
            }),
        }
    }

    /// `POST /echo` with `len` bytes of the pattern of `seed`; checks that exactly those bytes
    /// come back.
    pub async fn echo(&mut self, seed: u64, len: u64) -> Result<Exchange, BoxError> {
        let request = Request::post("/echo").body(PatternBody::new(seed, len))?;
        let received = self.checked(request, seed, len).await?;
        Ok(Exchange {
            sent: len,
            received,
        })
    }

    /// `GET /pattern?seed=..&len=..`; checks that exactly those bytes arrive.
    pub async fn pattern(&mut self, seed: u64, len: u64) -> Result<Exchange, BoxError> {
        let request = Request::get(format!("/pattern?seed={seed}&len={len}"))
            .body(PatternBody::new(seed, 0))?;
        let received = self.checked(request, seed, len).await?;
        Ok(Exchange { sent: 0, received })
    }

    /// Sends `request` and checks its response's body against `len` bytes of the pattern of
    /// `seed`, piece by piece as it arrives.
    async fn checked(
        &mut self,
        mut request: Request<PatternBody>,
        seed: u64,
        len: u64,
    ) -> Result<u64, BoxError> {
        let response = match &mut self.sender {
            Sender::Http1(sender) => {
                // HTTP/1.1 requests name their host; HTTP/2 carries the authority in the URI.
                request.headers_mut().insert(
                    http::header::HOST,
                    http::HeaderValue::from_static("anyrdma"),
                );
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Sender::Http2(sender) => {
                *request.uri_mut() = format!("http://anyrdma{}", request.uri()).parse()?;
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        if response.status() != StatusCode::OK {
            return Err(format!("status {}", response.status()).into());
        }
        let mut checker = Checker::new(seed, len);
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                checker.feed(&data)?;
            }
        }
        Ok(checker.finish()?)
    }
}
