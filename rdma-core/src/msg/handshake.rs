//! What a messenger says in its connect request or accept, so that both sides know each
//! other's sizes: `AMSG`, the protocol's version, then its depth, its eager limit and its
//! largest message (each 32 bits, little endian). The transport may pad private data with
//! zeroes.
//!
//! Version 2: control messages (credits, rendezvous dones) take no credit; each side posts
//! receives of its own for them (see [`super::protocol::CONTROL_RECEIVES`]). Version 1 spent
//! credits on them, and its peers could deadlock; the two do not talk.

use super::header::HeaderProblem;
use super::MessengerOptions;
use crate::error::{Error, Result};

const LEN: usize = 17;
const MAGIC: &[u8; 4] = b"AMSG";
const VERSION: u8 = 2;

/// What the peer said: the sizes its receives and messages have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerSizes {
    /// Receives it keeps posted: this side's credits.
    pub(crate) depth: usize,
    /// The largest message that fits one of its receives.
    pub(crate) eager_limit: usize,
    /// The largest message it takes at all.
    pub(crate) max_message: usize,
}

impl PeerSizes {
    /// The sizes of a peer that runs with `options` (the same as this side's).
    pub(crate) fn same_as(options: MessengerOptions) -> PeerSizes {
        PeerSizes {
            depth: options.depth,
            eager_limit: options.eager_limit,
            max_message: options.max_message,
        }
    }
}

pub(crate) fn write(options: MessengerOptions) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(LEN);
    bytes.extend_from_slice(MAGIC);
    bytes.push(VERSION);
    for value in [options.depth, options.eager_limit, options.max_message] {
        bytes.extend_from_slice(&(value.min(u32::MAX as usize) as u32).to_le_bytes());
    }
    bytes
}

/// The peer's sizes from its private data.
///
/// # Errors
/// [`Error::BadMessage`] with [`HeaderProblem::Handshake`] when it is not a messenger's.
pub(crate) fn read(bytes: &[u8]) -> Result<PeerSizes> {
    let bad = || Error::BadMessage {
        problem: HeaderProblem::Handshake,
    };
    if bytes.len() < LEN || &bytes[..4] != MAGIC || bytes[4] != VERSION {
        return Err(bad());
    }
    let field = |at: usize| {
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
    };
    let sizes = PeerSizes {
        depth: field(5),
        eager_limit: field(9),
        max_message: field(13),
    };
    if sizes.depth < 2 {
        return Err(bad());
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_round_trip_and_refuse_strangers() {
        let options = MessengerOptions {
            depth: 64,
            eager_limit: 4096,
            max_message: 1 << 24,
        };
        let mut padded = write(options);
        padded.resize(56, 0);
        assert_eq!(read(&padded).unwrap(), PeerSizes::same_as(options));
        assert!(read(b"").is_err());
        assert!(read(&[0; 56]).is_err());
        let mut other_version = write(options);
        other_version[4] = 1;
        assert!(read(&other_version).is_err());
    }
}
