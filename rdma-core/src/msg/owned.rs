//! Sending the caller's own memory without a copy ([`Messenger::send_owned`]): a large
//! message's bytes are registered where they are, exposed to the peer by the rendezvous as
//! they are, and handed back once the peer has read them and the registration is gone.

use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};

use super::engine::{Engine, State};
use super::exposed::{Exposed, Home};
use super::header::{HEADER_LEN, REQUEST_LEN};
use super::messenger::Outgoing;
use super::protocol::Route;
use super::waiting;
use super::Messenger;
use crate::error::{Error, Result};
use crate::mr::{Access, LocalBuf};
use crate::owned::{bytes_of, StableBytes};
use crate::remote::RemoteRegion;
use crate::wake::lock;

/// The caller's container on its way back: what a [`Messenger::send_owned`] waits for.
struct Homing<T> {
    state: Mutex<Homecoming<T>>,
}

enum Homecoming<T> {
    /// Exposed (or about to be); the task to wake when it comes home.
    Away(Option<Waker>),
    /// Taken down: the container (`None` when its deregistration failed and it was leaked),
    /// and whether the peer read it.
    Home { data: Option<T>, read: bool },
    /// Given to the caller.
    Taken,
}

impl<T: StableBytes> Home for Homing<T> {
    fn come_home(&self, buf: LocalBuf, read: bool) {
        // The key dies here. A registration the device would not give up stays, and so do its
        // bytes: its drop tries again and leaks them if it fails again.
        let data = take_back(buf);
        let waker = {
            let mut state = lock(&self.state);
            match std::mem::replace(&mut *state, Homecoming::Home { data, read }) {
                Homecoming::Away(waker) => waker,
                _ => None,
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Homing<T> {
    /// The container and whether the peer read it, once home; else this task is woken when
    /// it comes.
    fn poll_home(&self, cx: &TaskContext<'_>) -> Poll<(Option<T>, bool)> {
        let mut state = lock(&self.state);
        match &mut *state {
            Homecoming::Away(waker) => {
                match waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Homecoming::Home { .. } => match std::mem::replace(&mut *state, Homecoming::Taken) {
                Homecoming::Home { data, read } => Poll::Ready((data, read)),
                _ => unreachable!("matched above"),
            },
            Homecoming::Taken => Poll::Ready((None, false)),
        }
    }
}

/// The container registered in `buf` (all of it, with nothing else alive), deregistered; `None`
/// when the device refused to deregister it: then `buf` is dropped, which tries again and
/// leaks the bytes rather than free them while the device may read them.
fn take_back<T: StableBytes>(buf: LocalBuf) -> Option<T> {
    match buf.into_owned::<T>() {
        Ok(data) => Some(data),
        Err(buf) => {
            drop(buf);
            None
        }
    }
}

/// A failed [`Messenger::send_owned`] (or [`write_owned`](crate::stream::RdmaStream::write_owned)
/// of a stream): the error, and the caller's container back, unless its deregistration failed
/// (then its bytes were leaked, never freed while the device might read them).
///
/// It converts into an [`Error`] and an [`io::Error`](std::io::Error) (dropping the container),
/// so `?` works in functions that return either.
pub struct SendOwnedError<T> {
    /// What went wrong.
    pub error: Error,
    /// The container, with its bytes as they were given.
    pub data: Option<T>,
}

impl<T> SendOwnedError<T> {
    fn new(error: Error, data: Option<T>) -> Self {
        SendOwnedError { error, data }
    }

    /// The error, dropping the container.
    pub fn into_error(self) -> Error {
        self.error
    }
}

impl<T> std::fmt::Debug for SendOwnedError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendOwnedError")
            .field("error", &self.error)
            .field("data_given_back", &self.data.is_some())
            .finish()
    }
}

impl<T> std::fmt::Display for SendOwnedError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, f)
    }
}

impl<T> std::error::Error for SendOwnedError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl<T> From<SendOwnedError<T>> for Error {
    fn from(err: SendOwnedError<T>) -> Error {
        err.error
    }
}

impl<T> From<SendOwnedError<T>> for std::io::Error {
    fn from(err: SendOwnedError<T>) -> std::io::Error {
        err.error.into()
    }
}

/// The result of a send of owned memory: the container back, or the error with it.
pub type OwnedResult<T> = std::result::Result<T, SendOwnedError<T>>;

impl Messenger {
    /// Sends `data`, memory the caller owns ([`StableBytes`]: `Vec<u8>`, `Box<[u8]>`, and with
    /// features `bytes::BytesMut` and memory mappings), as one message, without copying it
    /// when it is large, and gives it back once the peer has it.
    ///
    /// Above the [eager limit](Messenger::eager_limit) its bytes are registered where they
    /// are, for this message alone, with remote read rights only, and exposed by the
    /// rendezvous as they are: the peer reads them straight from `data`. The future resolves
    /// once the peer has read them **and the registration is gone** (its key no longer
    /// works), and gives `data` back, the same allocation, for reuse. Up to the eager limit
    /// the bytes are copied into a send as [`send`](Messenger::send) does, and `data` comes
    /// back as soon as the message is posted.
    ///
    /// Messages go in the order they are posted, with those of `send` and of other tasks:
    /// one posted after this one arrives after it. While waiting for the peer, the call takes
    /// in what the peer sends (credits, "read it" words), as [`flush`](Messenger::flush) does.
    ///
    /// Dropping the future before the message was posted leaves nothing exposed and sends
    /// nothing; `data` is dropped. Dropping it after, the message still arrives; the
    /// registration is taken down when the peer's "read it" word is taken in (by whichever
    /// task next receives, flushes or sends a large message) or when the messenger fails,
    /// and `data` is dropped then, never while the device may read it.
    ///
    /// ```no_run
    /// # async fn demo(messenger: anyrdma_core::msg::Messenger) -> anyrdma_core::Result<()> {
    /// let mut frame = vec![7u8; 16 << 20];
    /// for _ in 0..4 {
    ///     // No copy: the peer reads `frame` where it is, and it comes back once read.
    ///     frame = messenger.send_owned(frame).await?;
    ///     frame.fill(8); // the peer's key is dead: writing cannot change what it got
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A [`SendOwnedError`] with `data` given back: [`Error::TooLarge`] above
    /// [`max_message`](Messenger::max_message) (nothing sent); the registration's errors
    /// ([`Error::MemlockLimit`], [`Error::Verbs`]); the messenger's failure
    /// ([`Error::QpInError`] with its cause, e.g. [`Error::Disconnected`]) before the peer
    /// said it had read the bytes, which it may or may not have. `data` is `None` only
    /// when the device refused to deregister it (its bytes are then leaked, never freed).
    pub async fn send_owned<T: StableBytes>(&self, data: T) -> OwnedResult<T> {
        self.send_owned_message(data, None).await
    }

    /// Sends `data` as [`send_owned`](Messenger::send_owned) does, with 32 bits of immediate
    /// data, which the peer reads as [`Message::imm`](super::Message::imm).
    ///
    /// # Errors
    /// As [`Messenger::send_owned`].
    pub async fn send_owned_with_imm<T: StableBytes>(&self, data: T, imm: u32) -> OwnedResult<T> {
        self.send_owned_message(data, Some(imm)).await
    }

    pub(crate) async fn send_owned_message<T: StableBytes>(
        &self,
        mut data: T,
        imm: Option<u32>,
    ) -> OwnedResult<T> {
        let engine = self.engine();
        let len = data.len();
        if len > engine.peer_max_message {
            let error = Error::TooLarge {
                what: "message (Messenger::max_message)",
                len,
                max: engine.peer_max_message,
            };
            return Err(SendOwnedError::new(error, Some(data)));
        }
        if lock(&engine.state).protocol.route(len) == Route::Eager {
            let outgoing = self.eager_outgoing(len, imm).map(|mut outgoing| {
                outgoing.payload_mut().copy_from_slice(bytes_of(&mut data));
                outgoing
            });
            let result = match outgoing {
                Ok(outgoing) => self.post(outgoing).await,
                Err(err) => Err(err),
            };
            return match result {
                Ok(()) => Ok(data),
                Err(error) => Err(SendOwnedError::new(error, Some(data))),
            };
        }
        let homing = Arc::new(Homing {
            state: Mutex::new(Homecoming::Away(None)),
        });
        let outgoing = match self.owned_outgoing(data, imm, homing.clone()) {
            Ok(outgoing) => outgoing,
            Err(err) => return Err(err),
        };
        let mut outgoing = Some(outgoing);
        let posted = waiting::call(engine, |state, cx| {
            Messenger::poll_post(engine, state, cx, &mut outgoing)
        })
        .await;
        if let Err(error) = posted {
            // Not posted: the registration is still in `outgoing`. Posting failed: the
            // messenger failed, which took it down and sent it home.
            let data = match outgoing.take().and_then(Outgoing::into_exposed) {
                Some(exposed) => take_back(exposed.into_buf()),
                None => std::future::poll_fn(|cx| homing.poll_home(cx)).await.0,
            };
            return Err(SendOwnedError::new(error, data));
        }
        let (data, read) = waiting::call(engine, |state, cx| {
            Self::poll_homecoming(engine, state, cx, &homing)
        })
        .await;
        match (data, read) {
            (Some(data), true) => Ok(data),
            (data, true) => Err(SendOwnedError::new(
                Error::verbs(
                    "ibv_dereg_mr",
                    std::io::Error::other("the device kept the registration: its bytes are leaked"),
                ),
                data,
            )),
            (data, false) => {
                engine.learn_disconnect(&mut lock(&engine.state));
                let error = lock(&engine.state)
                    .failure()
                    .map(|failure| engine.failed(failure))
                    .unwrap_or_else(|| {
                        Error::InvalidArgument("the message was taken down unread".into())
                    });
                Err(SendOwnedError::new(error, data))
            }
        }
    }

    /// `data` registered where it is, with remote read only, as a rendezvous request ready
    /// to post, which sends it to `home` once taken down.
    fn owned_outgoing<T: StableBytes>(
        &self,
        data: T,
        imm: Option<u32>,
        home: Arc<Homing<T>>,
    ) -> Result<Outgoing, SendOwnedError<T>> {
        let engine = self.engine();
        let buf = engine
            .qp
            .pd()
            .register_owned(data, Access::REMOTE_READ)
            .map_err(|(data, error)| SendOwnedError::new(error, Some(data)))?;
        let prepared: Result<(RemoteRegion, LocalBuf)> = buf
            .remote()
            .and_then(|remote| Ok((remote, engine.pool.alloc(HEADER_LEN + REQUEST_LEN)?)));
        match prepared {
            Ok((remote, message)) => Ok(Outgoing::request(
                imm,
                message,
                Exposed::homed(buf, home),
                remote,
            )),
            Err(error) => Err(SendOwnedError {
                error,
                data: take_back(buf),
            }),
        }
    }

    /// Posts `outgoing` as [`send`](Messenger::send) does.
    async fn post(&self, outgoing: Outgoing) -> Result<()> {
        let engine = self.engine();
        let mut outgoing = Some(outgoing);
        waiting::call(engine, |state, cx| {
            Messenger::poll_post(engine, state, cx, &mut outgoing)
        })
        .await
    }

    /// A poll of an owned message's wait for the peer's "read it" (or the messenger's failure),
    /// with the state locked: takes in what the peer sent meanwhile.
    fn poll_homecoming<T>(
        engine: &Engine,
        state: &mut State,
        cx: &mut TaskContext<'_>,
        homing: &Homing<T>,
    ) -> Poll<(Option<T>, bool)> {
        loop {
            if let Poll::Ready(home) = homing.poll_home(cx) {
                return Poll::Ready(home);
            }
            // A failed send fails the queue pair, and so the receives `pump` polls.
            if !engine.pump(state, cx) {
                if let Poll::Ready(home) = homing.poll_home(cx) {
                    return Poll::Ready(home);
                }
                state.waiters.wait(cx.waker());
                return Poll::Pending;
            }
        }
    }
}
