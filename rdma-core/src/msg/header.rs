//! The header every message of a [`Messenger`](super::Messenger) starts with: what the
//! message is, the credits it returns, and the sender's immediate data.
//!
//! ```text
//! byte 0     version (high 4 bits, 1) and kind (low 4 bits)
//! byte 1     flags: bit 0 = an immediate is present; the other bits are 0
//! bytes 2-3  credits returned to the reader (receives its peer posted again), little endian
//! bytes 4-7  the immediate (0 when absent), little endian
//! ```
//! What follows depends on the kind:
//!
//! - data: the message's bytes;
//! - credit: nothing;
//! - rendezvous request (a message too large for a receive): the sender's exposed buffer,
//!   `addr` (u64), `len` (u64), `rkey` (u32), and the transfer's `token` (u32), 24 bytes;
//! - rendezvous done (the receiver has read it): the `token` (u32), 4 bytes.
//!
//! Everything is checked before use: a message from a buggy or hostile peer is refused with
//! [`HeaderProblem`], never trusted.

use std::fmt;

/// Bytes of the header.
pub(crate) const HEADER_LEN: usize = 8;
const VERSION: u8 = 1;
const FLAG_IMM: u8 = 1;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Application bytes (the payload), with the credits it returns.
    Data,
    /// Credits only: no payload.
    Credit,
    /// A large message to read from the sender: [`Rendezvous`] follows.
    Request,
    /// A large message was read: its token follows.
    Done,
}

/// Bytes after the header of a rendezvous request, and of a rendezvous done.
pub(crate) const REQUEST_LEN: usize = 24;
pub(crate) const DONE_LEN: usize = 4;

/// A rendezvous request's payload: where to read the message, and its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rendezvous {
    pub(crate) addr: u64,
    pub(crate) len: u64,
    pub(crate) rkey: u32,
    pub(crate) token: u32,
}

impl Rendezvous {
    pub(crate) fn write(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.addr.to_le_bytes());
        out[8..16].copy_from_slice(&self.len.to_le_bytes());
        out[16..20].copy_from_slice(&self.rkey.to_le_bytes());
        out[20..24].copy_from_slice(&self.token.to_le_bytes());
    }

    /// Reads the payload (exactly [`REQUEST_LEN`] bytes, checked by [`Header::read`]).
    pub(crate) fn read(payload: &[u8]) -> Rendezvous {
        let word =
            |at: usize| u64::from_le_bytes(payload[at..at + 8].try_into().unwrap_or_default());
        let half =
            |at: usize| u32::from_le_bytes(payload[at..at + 4].try_into().unwrap_or_default());
        Rendezvous {
            addr: word(0),
            len: word(8),
            rkey: half(16),
            token: half(20),
        }
    }
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Data => 0,
            Kind::Credit => 1,
            Kind::Request => 2,
            Kind::Done => 3,
        }
    }
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) credits: u16,
    pub(crate) imm: Option<u32>,
}

/// Why a message from the peer was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderProblem {
    /// Shorter than the header.
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// A version this build does not speak.
    Version(u8),
    /// A kind this build does not know.
    Kind(u8),
    /// Flag bits that are not defined.
    Flags(u8),
    /// Immediate bytes that are not zero while the flag says there is none.
    StrayImmediate,
    /// A credit message that carries a payload or an immediate.
    CreditWithPayload {
        /// Bytes received.
        len: usize,
    },
    /// A rendezvous request or done of the wrong length.
    RendezvousLength {
        /// Bytes received.
        len: usize,
    },
    /// A rendezvous request for a message above this side's largest.
    RendezvousTooLarge {
        /// The length the peer announced.
        len: u64,
        /// This side's largest message.
        max: usize,
    },
    /// A rendezvous done for a transfer this side never started or already finished.
    UnknownToken(u32),
    /// A connect request or accept without a messenger's handshake (the peer is not a
    /// messenger, or another version of one).
    Handshake,
    /// More credits returned than this side has receives outstanding at the peer.
    TooManyCredits {
        /// Credits the message returned.
        returned: u16,
        /// The most it could return.
        max: usize,
    },
}

impl fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderProblem::Truncated { len } => {
                write!(f, "{len} bytes, shorter than the {HEADER_LEN}-byte header")
            }
            HeaderProblem::Version(v) => write!(f, "version {v}, this build speaks {VERSION}"),
            HeaderProblem::Kind(k) => write!(f, "unknown message kind {k}"),
            HeaderProblem::Flags(bits) => write!(f, "undefined flag bits {bits:#04x}"),
            HeaderProblem::StrayImmediate => {
                write!(
                    f,
                    "immediate bytes that are not zero, without the immediate flag"
                )
            }
            HeaderProblem::CreditWithPayload { len } => {
                write!(f, "a credit message of {len} bytes (it has no payload)")
            }
            HeaderProblem::RendezvousLength { len } => {
                write!(f, "a rendezvous message of {len} bytes, the wrong length")
            }
            HeaderProblem::RendezvousTooLarge { len, max } => write!(
                f,
                "a rendezvous request for {len} bytes, above this side's largest message ({max})"
            ),
            HeaderProblem::UnknownToken(token) => {
                write!(
                    f,
                    "a rendezvous done for transfer {token}, which is not in progress"
                )
            }
            HeaderProblem::Handshake => {
                write!(f, "no messenger handshake in the connection's private data")
            }
            HeaderProblem::TooManyCredits { returned, max } => write!(
                f,
                "{returned} credits returned, but at most {max} sends were outstanding"
            ),
        }
    }
}

impl Kind {
    /// Whether a message of this kind carries what the application sent (a data message, or
    /// the request to read a large one), not the protocol's own words.
    pub(crate) fn carries_data(self) -> bool {
        matches!(self, Kind::Data | Kind::Request)
    }
}

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    pub(crate) fn write(&self, out: &mut [u8]) {
        out[0] = (VERSION << 4) | self.kind.code();
        out[1] = if self.imm.is_some() { FLAG_IMM } else { 0 };
        out[2..4].copy_from_slice(&self.credits.to_le_bytes());
        out[4..8].copy_from_slice(&self.imm.unwrap_or(0).to_le_bytes());
    }

    /// Reads the header of a message of `bytes` (the whole message as received).
    pub(crate) fn read(bytes: &[u8]) -> Result<Header, HeaderProblem> {
        if bytes.len() < HEADER_LEN {
            return Err(HeaderProblem::Truncated { len: bytes.len() });
        }
        let version = bytes[0] >> 4;
        if version != VERSION {
            return Err(HeaderProblem::Version(version));
        }
        let kind = match bytes[0] & 0x0f {
            0 => Kind::Data,
            1 => Kind::Credit,
            2 => Kind::Request,
            3 => Kind::Done,
            other => return Err(HeaderProblem::Kind(other)),
        };
        let flags = bytes[1];
        if flags & !FLAG_IMM != 0 {
            return Err(HeaderProblem::Flags(flags));
        }
        let credits = u16::from_le_bytes([bytes[2], bytes[3]]);
        let imm_value = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let imm = (flags & FLAG_IMM != 0).then_some(imm_value);
        if imm.is_none() && imm_value != 0 {
            return Err(HeaderProblem::StrayImmediate);
        }
        if kind == Kind::Credit && (bytes.len() != HEADER_LEN || imm.is_some()) {
            return Err(HeaderProblem::CreditWithPayload { len: bytes.len() });
        }
        let payload = match kind {
            Kind::Request => Some(REQUEST_LEN),
            Kind::Done => Some(DONE_LEN),
            _ => None,
        };
        if payload.is_some_and(|want| bytes.len() != HEADER_LEN + want) {
            return Err(HeaderProblem::RendezvousLength { len: bytes.len() });
        }
        Ok(Header { kind, credits, imm })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        for header in [
            Header {
                kind: Kind::Data,
                credits: 0,
                imm: None,
            },
            Header {
                kind: Kind::Data,
                credits: 65535,
                imm: Some(u32::MAX),
            },
            Header {
                kind: Kind::Credit,
                credits: 17,
                imm: None,
            },
        ] {
            let mut bytes = [0u8; HEADER_LEN];
            header.write(&mut bytes);
            assert_eq!(Header::read(&bytes), Ok(header));
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        assert_eq!(
            Header::read(&[0x10, 0, 0]),
            Err(HeaderProblem::Truncated { len: 3 })
        );
        assert_eq!(
            Header::read(&[0x20, 0, 0, 0, 0, 0, 0, 0]),
            Err(HeaderProblem::Version(2))
        );
        assert_eq!(
            Header::read(&[0x17, 0, 0, 0, 0, 0, 0, 0]),
            Err(HeaderProblem::Kind(7))
        );
        assert_eq!(
            Header::read(&[0x10, 0x80, 0, 0, 0, 0, 0, 0]),
            Err(HeaderProblem::Flags(0x80))
        );
        assert_eq!(
            Header::read(&[0x11, 0, 1, 0, 0, 0, 0, 0, 9]),
            Err(HeaderProblem::CreditWithPayload { len: 9 })
        );
    }

    /// Random and mutated messages: every one is either refused or decodes to a header that
    /// encodes back to the same first eight bytes; none panics.
    #[test]
    fn random_messages_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200_000 {
            let len = (next() % 24) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len > 0 && next() % 2 == 0 {
                bytes[0] = 0x10 | (bytes[0] & 0x03); // mostly valid: version 1, kind 0-3
            }
            if let Ok(header) = Header::read(&bytes) {
                let mut again = [0u8; HEADER_LEN];
                header.write(&mut again);
                assert_eq!(again[..], bytes[..HEADER_LEN]);
            }
        }
    }
}
