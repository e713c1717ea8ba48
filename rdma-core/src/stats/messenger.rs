//! A messenger's counters, [`MessengerStats`].

use std::time::Duration;

/// What a messenger did since it was made: a snapshot, from
/// [`Messenger::stats`](crate::msg::Messenger::stats), shared by its clones (and by the
/// [byte stream](crate::stream) or [memory session](crate::remote_memory) over it, whose
/// writes and control messages are its messages).
///
/// Messages are those of the application: the protocol's own control messages (credits
/// returned, "read it" words) are not counted. Bytes are payload bytes, without the headers.
/// Every count is kept under the messenger's own lock, which each of these steps holds
/// anyway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessengerStats {
    /// Messages posted to the peer (eager and by rendezvous).
    pub messages_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Messages taken by the application ([`recv`](crate::msg::Messenger::recv) and the
    /// others that take a message).
    pub messages_received: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Messages sent by rendezvous: above the eager limit, read by the peer from this side's
    /// memory (counted in `messages_sent` too).
    pub rendezvous_sent: u64,
    /// The peer's large messages read from its memory (counted in `messages_received` once
    /// the application takes them).
    pub rendezvous_received: u64,
    /// Sends that found no credit (no receive free at the peer) and waited before they were
    /// posted.
    pub credit_waits: u64,
    /// How long those sends waited, from the first time each found no credit to its post
    /// (a send dropped while it waits is not counted).
    pub credit_wait: Duration,
}

impl MessengerStats {
    /// A message of `bytes` was posted (`rendezvous`: as a rendezvous request), after waiting
    /// for credits for `waited`, if it waited.
    #[inline]
    pub(crate) fn sent(&mut self, bytes: u64, rendezvous: bool, waited: Option<Duration>) {
        self.messages_sent += 1;
        self.bytes_sent += bytes;
        self.rendezvous_sent += u64::from(rendezvous);
        if let Some(waited) = waited {
            self.credit_waits += 1;
            self.credit_wait += waited;
        }
    }

    /// The application took a message of `bytes`.
    #[inline]
    pub(crate) fn received(&mut self, bytes: usize) {
        self.messages_received += 1;
        self.bytes_received += bytes as u64;
    }
}
