//! What a messenger hands out: a message's bytes and immediate data. In a file of its own,
//! which the messenger's engine and the messenger both use, so that neither imports the
//! other for it.

use crate::mr::LocalBuf;

/// A message taken from a [`Messenger`](super::Messenger): its bytes (an owned buffer of the messenger's pool,
/// given back to it when dropped) and the sender's immediate data.
#[derive(Debug)]
pub struct Message {
    /// The bytes, exactly as sent.
    pub data: LocalBuf,
    /// The immediate the sender gave, if any.
    pub imm: Option<u32>,
}
