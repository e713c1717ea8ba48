//! Byte streams (`anyrdma::stream`), with what they are compared with measured the same way:
//!
//! * `stream_bw`: the client writes `iters` writes of `size` bytes (1 MiB) and reads one
//!   byte back; the server reads until it has every byte, then writes that byte. MB/s from
//!   the first write to the byte back.
//! * `stream_owned_bw`: `stream_bw` with `write_owned` of one 1 MiB `Vec` (by default, the
//!   same size) instead of `write_all`: no copy, the server's stream reads the client's own
//!   buffer, which comes back once read, so one write is in flight at a time.
//! * `stream_lat`: the client writes `size` bytes (64 B) and reads as many back; the server
//!   reads them and writes them back. Half the round trip, as `msg_lat`.
//! * `cm_msg_bw`, `cm_msg_lat`: `msg_rate` (1 sender) and `msg_lat` of a `Messenger` on a
//!   connection made by rdma_cm, which is what a stream is built on. The stream's goals are
//!   ratios to these rows: same device, same connection set-up, same messenger options.
//! * `tcp_bw`, `tcp_lat`: the stream's loops over the runtime's own TCP, to the server's
//!   address of the control channel, for orientation only (on one machine, the kernel's
//!   loopback against an emulated NIC says nothing about RDMA hardware against TCP). Poll
//!   modes do not apply; they run in the event pass.
//!
//! Streams and messengers connect through rdma_cm to the server's `--cm-addr` (the address
//! of its interface with an RDMA device: rdma_cm cannot route 127.0.0.1, so in the test VM it
//! is rxe0's 169.254.77.1), on a port the server picks and sends over the control channel. The same
//! loops run on every runtime through `futures-io`: on Tokio the stream's Tokio traits are
//! the same poll functions, and Tokio's TCP goes through a small adapter (`TokioTcp`).

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyrdma::cm::{ConnectionOptions, Listener, ListenerOptions};
use anyrdma::msg::Messenger;
use anyrdma::stream::{RdmaStream, StreamListener, StreamOptions};
use anyrdma::Context;
use futures_util::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};

use crate::catalog::{Mode, Rt, Test};
use crate::messaging;
use crate::rc::step;
use crate::stats::{latency, rate, Outcome};
use crate::wire::{barrier, recv_exact, send_all, Spec};
use crate::Res;

/// The byte every written byte of the bandwidth rows has, checked on arrival.
const FILL: u8 = 0xa5;

/// TCP's read buffer: as large as the stream's largest message chunk that a read sees, so
/// that the copy out of the kernel is not split finer than the stream's.
const TCP_BUFFER: usize = 256 << 10;

/// The connection options of both sides: the measurement's poll mode, on its runtime (the
/// process default would pick one of the several that are built in).
fn connection(ctx: &Context, mode: Mode) -> ConnectionOptions {
    ConnectionOptions {
        poll_mode: mode.poll_mode(),
        runtime: ctx.runtime().cloned(),
        ..ConnectionOptions::default()
    }
}

fn stream_options(ctx: &Context, mode: Mode) -> StreamOptions {
    StreamOptions {
        connection: connection(ctx, mode),
        messenger: messaging::options(),
    }
}

/// The server's listening port, sent over the control channel.
fn send_port(ctl: &mut TcpStream, port: u16) -> Res<()> {
    send_all(ctl, &port.to_le_bytes())
}

fn recv_port(ctl: &mut TcpStream) -> Res<u16> {
    Ok(u16::from_le_bytes(recv_exact::<2>(ctl)?))
}

fn cm_ip(cm: Option<IpAddr>) -> Res<IpAddr> {
    cm.ok_or_else(|| {
        "the stream and cm_msg rows need --cm-addr (the server's RDMA interface's IP)".into()
    })
}

/// One measurement of a stream test; the client returns the result. Both sides keep the
/// connection until both are done (a barrier, then the drop), as the other rows keep their
/// queue pairs: a client that disconnects as soon as it has its answer races the server's
/// last flush, which then fails now and then with the queue pair's error ("the peer
/// disconnected") though the answer arrived.
pub async fn measure(
    ctx: &Context,
    spec: &Spec,
    client: bool,
    ctl: &mut TcpStream,
    cm: Option<IpAddr>,
) -> Res<Outcome> {
    let mode = spec.mode;
    match spec.test {
        Test::StreamBw | Test::StreamOwnedBw | Test::StreamLat => {
            let ip = cm_ip(cm)?;
            let options = stream_options(ctx, mode);
            let stream = if client {
                let port = recv_port(ctl)?;
                RdmaStream::connect_with(SocketAddr::new(ip, port), options).await?
            } else {
                let listener = StreamListener::bind_with(SocketAddr::new(ip, 0), options)?;
                send_port(ctl, listener.local_addr().port())?;
                listener.accept().await?
            };
            if spec.test == Test::StreamOwnedBw {
                return owned_run(stream, spec, client, ctl).await;
            }
            io_run(stream, spec, client, ctl).await
        }
        Test::CmMsgBw | Test::CmMsgLat => {
            let ip = cm_ip(cm)?;
            let options = connection(ctx, mode);
            let messenger = if client {
                let port = recv_port(ctl)?;
                Messenger::connect(SocketAddr::new(ip, port), options, messaging::options()).await?
            } else {
                let listener = Listener::bind_with(
                    SocketAddr::new(ip, 0),
                    ListenerOptions {
                        connection: options.clone(),
                        ..ListenerOptions::default()
                    },
                )?;
                send_port(ctl, listener.local_addr().port())?;
                let incoming = listener.incoming().await?;
                Messenger::accept(incoming, options, messaging::options()).await?
            };
            let outcome = if spec.test == Test::CmMsgLat {
                let stamps = messaging::ping_pong(&messenger, spec, client, ctl).await?;
                latency(&stamps, true)
            } else {
                match messaging::one_way(&messenger, spec, client, ctl).await? {
                    Some(elapsed) => rate(spec.iters, spec.size, elapsed),
                    None => Outcome::default(),
                }
            };
            barrier(ctl)?;
            drop(messenger);
            Ok(outcome)
        }
        Test::TcpBw | Test::TcpLat => tcp(spec, client, ctl).await,
        _ => unreachable!("not a stream test"),
    }
}

/// The TCP rows on the runtime's own TCP, between the addresses of the control channel: the
/// server listens on the one the client reached it at.
async fn tcp(spec: &Spec, client: bool, ctl: &mut TcpStream) -> Res<Outcome> {
    let local = SocketAddr::new(ctl.local_addr()?.ip(), 0);
    let server_ip = ctl.peer_addr()?.ip();
    // The same steps on each runtime's `net` module: the server listens on a free port and
    // tells the client, which connects.
    macro_rules! connect {
        ($net:path) => {{
            use $net as net;
            let stream = if client {
                let port = recv_port(ctl)?;
                net::TcpStream::connect(SocketAddr::new(server_ip, port)).await?
            } else {
                let listener = net::TcpListener::bind(local).await?;
                send_port(ctl, listener.local_addr()?.port())?;
                listener.accept().await?.0
            };
            stream.set_nodelay(true)?;
            stream
        }};
    }
    match spec.rt {
        Rt::TokioCt | Rt::TokioMt => {
            let stream = connect!(tokio::net);
            io_run(buffered(TokioTcp(stream)), spec, client, ctl).await
        }
        // async-io's streams are futures-io streams as they are.
        Rt::AsyncStd => io_run(buffered(connect!(async_std::net)), spec, client, ctl).await,
        Rt::Smol => io_run(buffered(connect!(smol::net)), spec, client, ctl).await,
        Rt::Raw => Err("raw verbs have no TCP row".into()),
    }
}

/// A TCP stream read through a buffer of [`TCP_BUFFER`] bytes.
fn buffered<S: futures_util::AsyncRead>(stream: S) -> BufReader<S> {
    BufReader::with_capacity(TCP_BUFFER, stream)
}

/// The bandwidth or latency loop on any byte stream.
async fn io_run<S>(mut s: S, spec: &Spec, client: bool, ctl: &mut TcpStream) -> Res<Outcome>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    let outcome = if spec.test.is_stream_bw() {
        match bandwidth(&mut s, spec, client, ctl).await? {
            Some(elapsed) => rate(spec.iters, spec.size, elapsed),
            None => Outcome::default(),
        }
    } else {
        latency(&round_trips(&mut s, spec, client, ctl).await?, true)
    };
    barrier(ctl)?;
    drop(s);
    Ok(outcome)
}

async fn bandwidth<S>(
    s: &mut S,
    spec: &Spec,
    client: bool,
    ctl: &mut TcpStream,
) -> Res<Option<Duration>>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    let total = spec.iters * spec.size;
    barrier(ctl)?;
    if !client {
        // Read where the bytes arrived (`fill_buf`: for the stream, the registered memory
        // of the receive), as a reader that parses in place does; each piece is checked.
        let mut got = 0;
        while got < total {
            let piece = s.fill_buf().await.map_err(step("reading"))?;
            if piece.is_empty() {
                return Err(format!("the stream ended after {got} of {total} bytes").into());
            }
            if piece[0] != FILL || piece[piece.len() - 1] != FILL {
                return Err(format!("a byte other than {FILL:#x} at {got}").into());
            }
            let n = piece.len();
            s.consume_unpin(n);
            got += n;
        }
        s.write_all(b"!")
            .await
            .map_err(step("writing the answer"))?;
        s.flush().await.map_err(step("flushing the answer"))?;
        return Ok(None);
    }
    let data = vec![FILL; spec.size];
    let start = Instant::now();
    for _ in 0..spec.iters {
        s.write_all(&data).await.map_err(step("writing"))?;
    }
    Ok(Some(until_the_peer_has_it(s, start).await?))
}

/// The end of a client's bandwidth loop: flushes (nothing stays gathered on this side) and
/// waits for the peer's answer, which says it has every byte; the time since `start`.
async fn until_the_peer_has_it<S>(s: &mut S, start: Instant) -> Res<Duration>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    s.flush().await.map_err(step("flushing the writes"))?;
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer)
        .await
        .map_err(step("reading the answer"))?;
    let elapsed = start.elapsed();
    if answer != *b"!" {
        return Err(format!("answer {answer:?}, not \"!\"").into());
    }
    Ok(elapsed)
}

/// `stream_owned_bw`: the server reads as in [`bandwidth`]; the client writes one buffer of
/// its own again and again with `write_owned`, which gives it back once the server's stream
/// has read it.
async fn owned_run(
    mut s: RdmaStream,
    spec: &Spec,
    client: bool,
    ctl: &mut TcpStream,
) -> Res<Outcome> {
    let outcome = if !client {
        bandwidth(&mut s, spec, client, ctl).await?;
        Outcome::default()
    } else {
        barrier(ctl)?;
        let mut data = vec![FILL; spec.size];
        let start = Instant::now();
        for _ in 0..spec.iters {
            data = s
                .write_owned(data)
                .await
                .map_err(step("writing an owned buffer"))?;
        }
        let elapsed = until_the_peer_has_it(&mut s, start).await?;
        rate(spec.iters, spec.size, elapsed)
    };
    barrier(ctl)?;
    drop(s);
    Ok(outcome)
}

/// Request and response of `size` bytes: no flush between, as a socket program writes and
/// then reads (a stream posts a write at once while the peer has a receive free; its flush
/// would wait for the device's acknowledgement, which a TCP flush does not).
async fn round_trips<S>(
    s: &mut S,
    spec: &Spec,
    client: bool,
    ctl: &mut TcpStream,
) -> Res<Vec<Instant>>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    let request = vec![0x5a; spec.size];
    let mut buf = vec![0u8; spec.size];
    let mut stamps = Vec::with_capacity(spec.iters + 1);
    barrier(ctl)?;
    for _ in 0..spec.iters {
        if client {
            stamps.push(Instant::now());
            s.write_all(&request)
                .await
                .map_err(step("writing the request"))?;
            s.read_exact(&mut buf)
                .await
                .map_err(step("reading the response"))?;
            if buf != request {
                return Err("the response differs from the request".into());
            }
        } else {
            s.read_exact(&mut buf)
                .await
                .map_err(step("reading the request"))?;
            s.write_all(&buf)
                .await
                .map_err(step("writing the response"))?;
        }
    }
    stamps.push(Instant::now());
    s.flush().await.map_err(step("flushing"))?;
    Ok(stamps)
}

/// Tokio's TCP stream with `futures-io`'s traits, so that one loop serves every runtime.
struct TokioTcp(tokio::net::TcpStream);

impl AsyncRead for TokioTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut buf = tokio::io::ReadBuf::new(buf);
        match tokio::io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().len())),
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for TokioTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx)
    }
}
