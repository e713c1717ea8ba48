//! The words of the remote-memory protocol that errors use: the rights a grant gives, why an
//! owner refuses or revokes, and what was wrong with a control message or an access to a grant.
//! A file that imports nothing from the crate, so that the error module can name these types
//! without importing the protocol (which uses the error module).

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// What a holder may do with granted memory: RDMA read, write, atomics, or a combination.
/// Never empty.
///
/// ```
/// use anyrdma_core::remote_memory::Rights;
///
/// let rights = Rights::READ | Rights::WRITE;
/// assert!(rights.contains(Rights::WRITE) && !rights.contains(Rights::ATOMIC));
/// assert_eq!(rights.to_string(), "read+write");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rights(u8);

impl Rights {
    /// RDMA reads of the memory.
    pub const READ: Rights = Rights(1);
    /// RDMA writes to the memory.
    pub const WRITE: Rights = Rights(2);
    /// Atomic compare-and-swap and fetch-and-add on the memory's 8-byte words.
    pub const ATOMIC: Rights = Rights(4);

    const DEFINED: u8 = Self::READ.0 | Self::WRITE.0 | Self::ATOMIC.0;

    /// Whether every right of `other` is in `self`.
    pub fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    /// The rights as they travel: read 1, write 2, atomic 4, or'ed together.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The rights of `bits`, or `None` when `bits` is 0 or has a bit that is not a right.
    pub fn from_bits(bits: u8) -> Option<Rights> {
        (bits != 0 && bits & !Self::DEFINED == 0).then_some(Rights(bits))
    }
}

impl BitOr for Rights {
    type Output = Rights;

    fn bitor(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }
}

impl BitOrAssign for Rights {
    fn bitor_assign(&mut self, other: Rights) {
        self.0 |= other.0;
    }
}

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Rights::READ, "read"),
            (Rights::WRITE, "write"),
            (Rights::ATOMIC, "atomic"),
        ];
        let mut first = true;
        for (right, name) in names {
            if self.contains(right) {
                if !first {
                    f.write_str("+")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rights({self})")
    }
}

/// Defines a reason carried on the wire as one byte: the enum, its codes (from 1: 0 is
/// never valid), the table of all of them and their Display texts, from one list.
macro_rules! wire_reason {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident = $code:literal => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        $vis enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            #[cfg(test)]
            pub(crate) const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The reason's code on the wire.
            pub(crate) fn code(self) -> u8 {
                match self {
                    $($name::$variant => $code,)+
                }
            }

            pub(crate) fn from_code(code: u8) -> Option<$name> {
                match code {
                    $($code => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self {
                    $($name::$variant => $text,)+
                })
            }
        }
    };
}

wire_reason! {
    /// Why an owner refused a [`Request`](super::Control::Request) or a [`Renew`](super::Control::Renew).
    pub enum RefuseReason {
        /// Granting it would put the connection above the owner's limit of bytes granted.
        TooManyBytes = 1 => "it would exceed the bytes the owner grants a peer",
        /// Granting it would put the connection above the owner's limit of regions granted.
        TooManyRegions = 2 => "it would exceed the regions the owner grants a peer",
        /// The owner's policy does not give these rights.
        AccessNotAllowed = 3 => "the owner does not grant these rights",
        /// The lease asked for is longer than the owner's policy gives.
        LeaseTooLong = 4 => "the owner does not grant a lease this long",
        /// The owner's application declined it.
        Declined = 5 => "the owner's application declined it",
        /// The owner could not allocate or register the memory.
        OutOfMemory = 6 => "the owner could not allocate or register the memory",
        /// A renewal of a grant that does not exist (any more) on the owner's side.
        UnknownGrant = 7 => "the owner has no such grant (any more)",
    }
}

wire_reason! {
    /// Why an owner revoked a grant ([`Revoke`](super::Control::Revoke)).
    pub enum RevokeReason {
        /// The owner's application revoked it.
        Revoked = 1 => "the owner revoked it",
        /// Its lease ended without a renewal.
        LeaseExpired = 2 => "its lease expired",
        /// The owner is closing the connection.
        Closing = 3 => "the owner is closing the connection",
    }
}

/// Why a control message from the peer was refused
/// ([`Error::BadControlMessage`](crate::Error::BadControlMessage)).
///
/// The decoder ([`Control::decode`](super::Control::decode)) finds the problems with the bytes, from
/// [`Truncated`](ControlProblem::Truncated) to [`LeaseTooLong`](ControlProblem::LeaseTooLong);
/// the session finds the others, in well-formed messages that make no sense at the time
/// they arrive. A message's kind is named as [`Control::kind_name`](super::Control::kind_name) names it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlProblem {
    /// Shorter than the two bytes (kind and version) every message starts with.
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// A kind byte that is not a control message's.
    Kind(u8),
    /// A version of the protocol this build does not speak.
    Version(u8),
    /// Not the length of its kind: cut short or padded.
    Length {
        /// The message's kind.
        kind: &'static str,
        /// Its kind's length in bytes.
        expected: usize,
        /// Bytes received.
        actual: usize,
    },
    /// Reserved bytes that are not zero.
    Reserved {
        /// The message's kind.
        kind: &'static str,
    },
    /// Rights that are none, or include a bit that is not a right.
    Access {
        /// The message's kind.
        kind: &'static str,
        /// The rights byte received.
        bits: u8,
    },
    /// A refuse or revoke reason this build does not know.
    Reason {
        /// The message's kind.
        kind: &'static str,
        /// The code received.
        code: u8,
    },
    /// An id of 0 where an id names a grant or a request.
    ZeroId {
        /// The message's kind.
        kind: &'static str,
        /// The field: `grant` or `request`.
        field: &'static str,
    },
    /// A grant or request of 0 bytes.
    ZeroLength {
        /// The message's kind.
        kind: &'static str,
    },
    /// A grant whose range runs past the end of the 64-bit address space.
    Overflow {
        /// The address received.
        addr: u64,
        /// The length received.
        len: u64,
    },
    /// A lease above [`MAX_LEASE_MS`](super::MAX_LEASE_MS).
    LeaseTooLong {
        /// The message's kind.
        kind: &'static str,
        /// The lease received, in milliseconds.
        lease_ms: u64,
    },
    /// A grant that answers a request this side never made, or one already answered.
    UnexpectedGrant {
        /// The request id the grant names.
        request: u64,
    },
    /// A release, revoke or renewal that names a grant id its owner never issued (a grant
    /// that has ended is not unknown: a message about it may have crossed its end).
    UnknownGrant {
        /// The grant id named.
        grant: u64,
    },
    /// A grant with an id the peer already used.
    DuplicateGrant {
        /// The grant id.
        grant: u64,
    },
    /// A refusal or renewal that answers a request id this side never issued.
    UnknownRequest {
        /// The request id named.
        request: u64,
    },
}

/// Why an access to a [`RemoteGrant`](super::RemoteGrant) was refused before anything was posted
/// ([`Error::GrantCheck`](crate::Error::GrantCheck)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrantProblem {
    /// The range does not lie inside the granted range.
    OutOfRange,
    /// An atomic's word is not 8 bytes at an 8-byte aligned address.
    Misaligned,
    /// The grant does not carry the rights the operation needs.
    NotGranted {
        /// The rights the operation needs.
        needed: Rights,
        /// The rights granted.
        granted: Rights,
    },
    /// The lease ended (as this side counts it: from when the grant or renewal arrived).
    Expired,
    /// The owner revoked the grant.
    Revoked(RevokeReason),
    /// This side released the grant.
    Released,
    /// The memory session ended (its connection failed or was closed).
    SessionEnded,
}

impl fmt::Display for GrantProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantProblem::OutOfRange => write!(f, "the range is not inside the granted range"),
            GrantProblem::Misaligned => write!(
                f,
                "an atomic works on 8 bytes at an 8-byte aligned address of the grant"
            ),
            GrantProblem::NotGranted { needed, granted } => write!(
                f,
                "the operation needs {needed} rights, the grant gives {granted}"
            ),
            GrantProblem::Expired => write!(f, "the lease has ended (renew before it ends)"),
            GrantProblem::Revoked(reason) => write!(f, "the owner revoked the grant: {reason}"),
            GrantProblem::Released => write!(f, "the grant was released"),
            GrantProblem::SessionEnded => write!(f, "the memory session has ended"),
        }
    }
}
