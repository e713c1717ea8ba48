//! A large message of this side that the peer may read (a rendezvous): the registration the
//! messenger keeps until the peer says it has read it, and where it goes then. Below the
//! engine, which holds these by token, and the sends that make them.

use std::sync::Arc;

use crate::mr::LocalBuf;

/// A large message of this side the peer may read: its registration, and, for the caller's
/// own memory ([`Messenger::send_owned`](super::Messenger::send_owned)), where it goes once
/// taken down.
pub(crate) struct Exposed {
    buf: LocalBuf,
    home: Option<Arc<dyn Home>>,
}

impl Exposed {
    /// Memory the messenger copied the message into: freed once taken down.
    pub(crate) fn copy(buf: LocalBuf) -> Exposed {
        Exposed { buf, home: None }
    }

    /// The caller's own memory, registered in `buf`: it goes to `home` once taken down.
    pub(crate) fn homed(buf: LocalBuf, home: Arc<dyn Home>) -> Exposed {
        Exposed {
            buf,
            home: Some(home),
        }
    }

    /// The registration, for a message that was never posted (so never exposed).
    pub(crate) fn into_buf(self) -> LocalBuf {
        self.buf
    }

    /// The peer has read it (`read`), or the messenger failed: the registration goes now (its
    /// key stops working), and the caller's memory goes home. Dropped without this (the
    /// messenger dropped, or the message never posted), the registration goes all the same.
    pub(crate) fn take_down(self, read: bool) {
        match self.home {
            None => drop(self.buf),
            Some(home) => home.come_home(self.buf, read),
        }
    }
}

/// Where an exposed registration of the caller's memory goes when it is taken down.
pub(crate) trait Home: Send + Sync {
    /// Deregisters `buf` and keeps what it held for the caller; `read` says whether the peer
    /// read it (else the messenger failed first).
    fn come_home(&self, buf: LocalBuf, read: bool);
}
