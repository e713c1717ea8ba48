//! The control messages of remote memory: their layouts, their encoding, and the checks
//! every message from a peer passes before anything of it is used.
//!
//! Decoding goes from the outside in: the tag (kind, then version), so that a message of
//! another kind or version is named as such whatever its length; then the exact length of
//! that kind; then the fields in layout order, each code and reserved byte as it is read;
//! then the values ([`Control::check`]). The first problem found is the one reported.

use std::fmt;

use crate::wire::{Fields, Format, HEADER_LEN, VERSION};

/// The longest lease a message may carry, in milliseconds: 30 days.
///
/// A deadline is computed as `Instant::now() + lease`; bounding the lease keeps that sum
/// far from overflowing on any platform. A longer lease is refused with
/// [`ControlProblem::LeaseTooLong`]; a grant that should last until it is revoked or
/// released carries a lease of 0 instead.
pub const MAX_LEASE_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// The kind byte of each message (ASCII `A` to `G`).
mod kind {
    pub(super) const GRANT: u8 = 0x41;
    pub(super) const REQUEST: u8 = 0x42;
    pub(super) const REFUSE: u8 = 0x43;
    pub(super) const RELEASE: u8 = 0x44;
    pub(super) const REVOKE: u8 = 0x45;
    pub(super) const RENEW: u8 = 0x46;
    pub(super) const RENEWED: u8 = 0x47;
}

/// Bytes of the fields: ids, addresses, lengths and leases are 8 bytes, the rkey 4, a code
/// (rights or reason) 1, followed by reserved zeros up to the next 4- or 8-byte field.
const GRANT: Format = Format {
    what: "grant",
    kind: kind::GRANT,
    len: HEADER_LEN + 8 + 8 + 8 + 8 + 4 + 1 + 3 + 8,
};
const REQUEST: Format = Format {
    what: "request",
    kind: kind::REQUEST,
    len: HEADER_LEN + 8 + 8 + 1 + 3 + 8,
};
const REFUSE: Format = Format {
    what: "refuse",
    kind: kind::REFUSE,
    len: HEADER_LEN + 8 + 1 + 7,
};
const RELEASE: Format = Format {
    what: "release",
    kind: kind::RELEASE,
    len: HEADER_LEN + 8,
};
const REVOKE: Format = Format {
    what: "revoke",
    kind: kind::REVOKE,
    len: HEADER_LEN + 8 + 1 + 7,
};
const RENEW: Format = Format {
    what: "renew",
    kind: kind::RENEW,
    len: HEADER_LEN + 8 + 8 + 8,
};
const RENEWED: Format = Format {
    what: "renewed",
    kind: kind::RENEWED,
    len: HEADER_LEN + 8 + 8 + 8,
};

/// The format of a kind byte, if it is a control message's.
fn format_of(kind: u8) -> Option<Format> {
    [GRANT, REQUEST, REFUSE, RELEASE, REVOKE, RENEW, RENEWED]
        .into_iter()
        .find(|format| format.kind == kind)
}

/// One control message of remote memory. Each travels alone in one message of the
/// messaging layer; [`encode`](Control::encode) and [`decode`](Control::decode) convert it
/// to and from those bytes (the [module documentation](super) gives the layouts).
///
/// "Owner" is the side whose memory a grant exposes, "holder" the side it is granted to;
/// both sides of a connection can be both at once. Grant ids are chosen by the owner,
/// request ids by the side that asks: each is unique among those its side has sent on the
/// connection, and never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Control {
    /// Owner → holder: this range of the owner's memory may be accessed with this key and
    /// these rights until the lease ends, the grant is revoked or it is released.
    Grant {
        /// The grant's id (not 0).
        grant: u64,
        /// The [`Request`](Control::Request) this grant answers, or 0 for a grant nobody
        /// asked for.
        request: u64,
        /// The first byte's address in the owner's memory.
        addr: u64,
        /// Bytes granted (not 0; `addr + len` does not overflow).
        len: u64,
        /// The remote key that reaches exactly this range.
        rkey: u32,
        /// What the holder may do with it.
        access: Rights,
        /// Milliseconds until the grant ends unless renewed, at most [`MAX_LEASE_MS`];
        /// 0 for no expiry.
        lease_ms: u64,
    },
    /// Holder → owner: please allocate `len` bytes, register them and grant them to me.
    /// Answered by a [`Grant`](Control::Grant) naming this request, or a
    /// [`Refuse`](Control::Refuse).
    Request {
        /// The request's id (not 0).
        request: u64,
        /// Bytes asked for (not 0; how many is too many is the owner's policy).
        len: u64,
        /// The rights asked for.
        access: Rights,
        /// The lease asked for, in milliseconds (at most [`MAX_LEASE_MS`]; 0 for no
        /// expiry). The grant says which lease was given.
        lease_ms: u64,
    },
    /// Owner → holder: the [`Request`](Control::Request) or [`Renew`](Control::Renew) with
    /// this id is refused.
    Refuse {
        /// The id of the request or renewal refused (not 0).
        request: u64,
        /// Why.
        reason: RefuseReason,
    },
    /// Holder → owner: I am done with this grant; its key will not be used again.
    Release {
        /// The grant released (not 0).
        grant: u64,
    },
    /// Owner → holder: this grant has ended; its key no longer works.
    Revoke {
        /// The grant revoked (not 0).
        grant: u64,
        /// Why.
        reason: RevokeReason,
    },
    /// Holder → owner: please extend this grant's lease. Answered by a
    /// [`Renewed`](Control::Renewed) naming this request, or a [`Refuse`](Control::Refuse).
    Renew {
        /// The renewal's id (not 0), from the same numbering as the holder's requests.
        request: u64,
        /// The grant to extend (not 0).
        grant: u64,
        /// The lease asked for from now, in milliseconds (at most [`MAX_LEASE_MS`]; 0 for
        /// no expiry).
        lease_ms: u64,
    },
    /// Owner → holder: this grant's lease now ends `lease_ms` from now.
    Renewed {
        /// The [`Renew`](Control::Renew) this answers, or 0 when the owner extends the
        /// lease on its own.
        request: u64,
        /// The grant extended (not 0).
        grant: u64,
        /// The new lease, from now, in milliseconds (at most [`MAX_LEASE_MS`]; 0 for no
        /// expiry).
        lease_ms: u64,
    },
}

impl Control {
    /// The message's kind, as the errors name it: `grant`, `request`, `refuse`, `release`,
    /// `revoke`, `renew` or `renewed`.
    pub fn kind_name(&self) -> &'static str {
        self.format().what
    }

    fn format(&self) -> Format {
        match self {
            Control::Grant { .. } => GRANT,
            Control::Request { .. } => REQUEST,
            Control::Refuse { .. } => REFUSE,
            Control::Release { .. } => RELEASE,
            Control::Revoke { .. } => REVOKE,
            Control::Renew { .. } => RENEW,
            Control::Renewed { .. } => RENEWED,
        }
    }

    /// The message's bytes: `[kind][version 1]`, then its fields, little endian, with
    /// reserved bytes zero.
    ///
    /// Any value is encoded as it is, valid or not ([`check`](Control::check) says whether
    /// the peer will accept it): a session checks what it sends.
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Control::Grant {
                grant,
                request,
                addr,
                len,
                rkey,
                access,
                lease_ms,
            } => GRANT
                .writer::<{ GRANT.len }>()
                .u64(grant)
                .u64(request)
                .u64(addr)
                .u64(len)
                .u32(rkey)
                .u8(access.bits())
                .bytes(&[0; 3])
                .u64(lease_ms)
                .finish()
                .to_vec(),
            Control::Request {
                request,
                len,
                access,
                lease_ms,
            } => REQUEST
                .writer::<{ REQUEST.len }>()
                .u64(request)
                .u64(len)
                .u8(access.bits())
                .bytes(&[0; 3])
                .u64(lease_ms)
                .finish()
                .to_vec(),
            Control::Refuse { request, reason } => REFUSE
                .writer::<{ REFUSE.len }>()
                .u64(request)
                .u8(reason.code())
                .bytes(&[0; 7])
                .finish()
                .to_vec(),
            Control::Release { grant } => RELEASE
                .writer::<{ RELEASE.len }>()
                .u64(grant)
                .finish()
                .to_vec(),
            Control::Revoke { grant, reason } => REVOKE
                .writer::<{ REVOKE.len }>()
                .u64(grant)
                .u8(reason.code())
                .bytes(&[0; 7])
                .finish()
                .to_vec(),
            Control::Renew {
                request,
                grant,
                lease_ms,
            } => RENEW
                .writer::<{ RENEW.len }>()
                .u64(request)
                .u64(grant)
                .u64(lease_ms)
                .finish()
                .to_vec(),
            Control::Renewed {
                request,
                grant,
                lease_ms,
            } => RENEWED
                .writer::<{ RENEWED.len }>()
                .u64(request)
                .u64(grant)
                .u64(lease_ms)
                .finish()
                .to_vec(),
        }
    }

    /// Decodes one message from the peer, trusting nothing: the kind and version, the exact
    /// length of that kind, every code and reserved byte, then the values
    /// ([`check`](Control::check)). Whatever the bytes, it returns, without panicking and
    /// without allocating.
    ///
    /// Whether the message makes sense now (answers a request this side made, names a grant
    /// that exists) is for the session to judge, not the decoder.
    ///
    /// ```
    /// use anyrdma_core::remote_memory::{Control, ControlProblem, Rights};
    ///
    /// let request = Control::Request {
    ///     request: 1,
    ///     len: 4096,
    ///     access: Rights::READ | Rights::WRITE,
    ///     lease_ms: 60_000,
    /// };
    /// assert_eq!(Control::decode(&request.encode()), Ok(request));
    ///
    /// // A release of grant 0: well framed, but no grant has id 0.
    /// let bytes = [0x44, 1, 0, 0, 0, 0, 0, 0, 0, 0];
    /// assert_eq!(
    ///     Control::decode(&bytes),
    ///     Err(ControlProblem::ZeroId { kind: "release", field: "grant" })
    /// );
    /// ```
    pub fn decode(bytes: &[u8]) -> Result<Control, ControlProblem> {
        let Some((&[kind, version], fields)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(ControlProblem::Truncated { len: bytes.len() });
        };
        let format = format_of(kind).ok_or(ControlProblem::Kind(kind))?;
        if version != VERSION {
            return Err(ControlProblem::Version(version));
        }
        if bytes.len() != format.len {
            return Err(ControlProblem::Length {
                kind: format.what,
                expected: format.len,
                actual: bytes.len(),
            });
        }
        let mut body = Body {
            format,
            fields: Fields::new(fields),
        };
        let control = body.read()?;
        control.check()?;
        Ok(control)
    }

    /// Checks the values a peer would refuse: ids that must name something are not 0,
    /// lengths are not 0, a grant's range does not wrap the address space, leases are at
    /// most [`MAX_LEASE_MS`]. [`decode`](Control::decode) runs it on every message; a
    /// session runs it on what it is about to send.
    pub fn check(&self) -> Result<(), ControlProblem> {
        let kind = self.kind_name();
        let nonzero_id = |field: &'static str, id: u64| match id {
            0 => Err(ControlProblem::ZeroId { kind, field }),
            _ => Ok(()),
        };
        let nonzero_len = |len: u64| match len {
            0 => Err(ControlProblem::ZeroLength { kind }),
            _ => Ok(()),
        };
        let lease = |lease_ms: u64| match lease_ms {
            0..=MAX_LEASE_MS => Ok(()),
            _ => Err(ControlProblem::LeaseTooLong { kind, lease_ms }),
        };
        match *self {
            Control::Grant {
                grant,
                addr,
                len,
                lease_ms,
                ..
            } => {
                nonzero_id("grant", grant)?;
                nonzero_len(len)?;
                if addr.checked_add(len).is_none() {
                    return Err(ControlProblem::Overflow { addr, len });
                }
                lease(lease_ms)
            }
            Control::Request {
                request,
                len,
                lease_ms,
                ..
            } => {
                nonzero_id("request", request)?;
                nonzero_len(len)?;
                lease(lease_ms)
            }
            Control::Refuse { request, .. } => nonzero_id("request", request),
            Control::Release { grant } | Control::Revoke { grant, .. } => {
                nonzero_id("grant", grant)
            }
            Control::Renew {
                request,
                grant,
                lease_ms,
            } => {
                nonzero_id("request", request)?;
                nonzero_id("grant", grant)?;
                lease(lease_ms)
            }
            Control::Renewed {
                grant, lease_ms, ..
            } => {
                nonzero_id("grant", grant)?;
                lease(lease_ms)
            }
        }
    }
}

/// The fields of a message whose tag and length were checked.
struct Body<'a> {
    format: Format,
    fields: Fields<'a>,
}

impl Body<'_> {
    /// Reads the message's fields in layout order.
    fn read(&mut self) -> Result<Control, ControlProblem> {
        Ok(match self.format.kind {
            kind::GRANT => {
                let grant = self.u64()?;
                let request = self.u64()?;
                let addr = self.u64()?;
                let len = self.u64()?;
                let rkey = self.u32()?;
                let access = self.rights()?;
                self.reserved::<3>()?;
                let lease_ms = self.u64()?;
                Control::Grant {
                    grant,
                    request,
                    addr,
                    len,
                    rkey,
                    access,
                    lease_ms,
                }
            }
            kind::REQUEST => {
                let request = self.u64()?;
                let len = self.u64()?;
                let access = self.rights()?;
                self.reserved::<3>()?;
                let lease_ms = self.u64()?;
                Control::Request {
                    request,
                    len,
                    access,
                    lease_ms,
                }
            }
            kind::REFUSE => {
                let request = self.u64()?;
                let code = self.u8()?;
                let reason = RefuseReason::from_code(code).ok_or(self.reason(code))?;
                self.reserved::<7>()?;
                Control::Refuse { request, reason }
            }
            kind::RELEASE => Control::Release { grant: self.u64()? },
            kind::REVOKE => {
                let grant = self.u64()?;
                let code = self.u8()?;
                let reason = RevokeReason::from_code(code).ok_or(self.reason(code))?;
                self.reserved::<7>()?;
                Control::Revoke { grant, reason }
            }
            kind::RENEW => Control::Renew {
                request: self.u64()?,
                grant: self.u64()?,
                lease_ms: self.u64()?,
            },
            kind::RENEWED => Control::Renewed {
                request: self.u64()?,
                grant: self.u64()?,
                lease_ms: self.u64()?,
            },
            other => return Err(ControlProblem::Kind(other)),
        })
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], ControlProblem> {
        // `decode` checked the length against the format, so this cannot run short; if a
        // layout and its length ever disagree, the input is refused, not indexed past.
        let unread = self.fields.remaining();
        self.fields.take().ok_or(ControlProblem::Length {
            kind: self.format.what,
            expected: self.format.len - unread + N,
            actual: self.format.len,
        })
    }

    fn u8(&mut self) -> Result<u8, ControlProblem> {
        self.take().map(u8::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, ControlProblem> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, ControlProblem> {
        self.take().map(u64::from_le_bytes)
    }

    /// Reserved bytes: zero in this version, so that a later one can give them a meaning
    /// that this build refuses instead of ignoring.
    fn reserved<const N: usize>(&mut self) -> Result<(), ControlProblem> {
        match self.take::<N>()? {
            bytes if bytes == [0; N] => Ok(()),
            _ => Err(ControlProblem::Reserved {
                kind: self.format.what,
            }),
        }
    }

    fn rights(&mut self) -> Result<Rights, ControlProblem> {
        let bits = self.u8()?;
        Rights::from_bits(bits).ok_or(ControlProblem::Access {
            kind: self.format.what,
            bits,
        })
    }

    fn reason(&self, code: u8) -> ControlProblem {
        ControlProblem::Reason {
            kind: self.format.what,
            code,
        }
    }
}

// Rights, the reasons and ControlProblem are defined in `terms`, which imports nothing from
// the crate, so that the error module can name them; ControlProblem's Display stays here,
// beside the formats and kinds it names.
pub use super::terms::{ControlProblem, RefuseReason, RevokeReason, Rights};

impl fmt::Display for ControlProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlProblem::Truncated { len } => write!(
                f,
                "{len} bytes, shorter than the {HEADER_LEN} bytes (kind and version) every \
                 control message starts with"
            ),
            ControlProblem::Kind(kind) => write!(
                f,
                "unknown control message kind {kind:#04x} (this build knows {:#04x} to \
                 {:#04x}): the peer runs an incompatible version of anyrdma, or sent something \
                 that is not a control message",
                kind::GRANT,
                kind::RENEWED
            ),
            ControlProblem::Version(version) => write!(
                f,
                "control protocol version {version}, but this build speaks version {VERSION}; \
                 both peers must run compatible versions of anyrdma"
            ),
            ControlProblem::Length {
                kind,
                expected,
                actual,
            } => write!(
                f,
                "a {kind} message of {actual} bytes, but a {kind} message is exactly \
                 {expected}: it was cut short or padded"
            ),
            ControlProblem::Reserved { kind } => write!(
                f,
                "a {kind} message whose reserved bytes are not zero (this protocol version \
                 writes zeros there)"
            ),
            ControlProblem::Access { kind, bits } => write!(
                f,
                "a {kind} message with rights {bits:#04x}: rights are one or more of read (1), \
                 write (2) and atomic (4)"
            ),
            ControlProblem::Reason { kind, code } => {
                write!(f, "a {kind} message with the unknown reason code {code}")
            }
            ControlProblem::ZeroId { kind, field } => write!(
                f,
                "a {kind} message whose {field} id is 0; ids that name something start at 1"
            ),
            ControlProblem::ZeroLength { kind } => write!(
                f,
                "a {kind} message for 0 bytes; a region has at least one byte"
            ),
            ControlProblem::Overflow { addr, len } => write!(
                f,
                "a grant of {len} bytes at {addr:#x}, which runs past the end of the 64-bit \
                 address space"
            ),
            ControlProblem::LeaseTooLong { kind, lease_ms } => write!(
                f,
                "a {kind} message with a lease of {lease_ms} ms, above the longest, \
                 {MAX_LEASE_MS} ms (30 days); a lease of 0 means no expiry"
            ),
            ControlProblem::UnexpectedGrant { request } => write!(
                f,
                "a grant that answers request {request}, which this side never made or which \
                 was already answered"
            ),
            ControlProblem::UnknownGrant { grant } => write!(
                f,
                "a message about grant {grant}, an id that was never issued on this connection"
            ),
            ControlProblem::DuplicateGrant { grant } => write!(
                f,
                "a second grant with id {grant}; every grant of a connection has an id of its \
                 own"
            ),
            ControlProblem::UnknownRequest { request } => write!(
                f,
                "an answer to request {request}, an id this side never issued"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each kind, with ordinary values.
    fn examples() -> [Control; 7] {
        [
            Control::Grant {
                grant: 7,
                request: 3,
                addr: 0x7f00_0000_1000,
                len: 4096,
                rkey: 0x1234,
                access: Rights::READ | Rights::ATOMIC,
                lease_ms: 60_000,
            },
            Control::Request {
                request: 3,
                len: 4096,
                access: Rights::WRITE,
                lease_ms: 0,
            },
            Control::Refuse {
                request: 3,
                reason: RefuseReason::Declined,
            },
            Control::Release { grant: 7 },
            Control::Revoke {
                grant: 7,
                reason: RevokeReason::LeaseExpired,
            },
            Control::Renew {
                request: 4,
                grant: 7,
                lease_ms: 1,
            },
            Control::Renewed {
                request: 4,
                grant: 7,
                lease_ms: 120_000,
            },
        ]
    }

    fn round_trip(control: Control) {
        let bytes = control.encode();
        assert_eq!(bytes.len(), control.format().len, "{control:?}");
        assert_eq!((bytes[0], bytes[1]), (control.format().kind, VERSION));
        assert_eq!(Control::decode(&bytes), Ok(control), "{bytes:02x?}");
    }

    #[test]
    fn every_kind_round_trips() {
        for control in examples() {
            round_trip(control);
        }
    }

    #[test]
    fn every_kind_round_trips_at_its_limits() {
        let ids = [1, 2, u64::MAX];
        let leases = [0, 1, MAX_LEASE_MS];
        let all = Rights::READ | Rights::WRITE | Rights::ATOMIC;
        for id in ids {
            for lease_ms in leases {
                for (addr, len) in [(0, 1), (0, u64::MAX), (u64::MAX - 1, 1), (1, u64::MAX - 1)] {
                    for request in [0, id] {
                        round_trip(Control::Grant {
                            grant: id,
                            request,
                            addr,
                            len,
                            rkey: u32::MAX,
                            access: all,
                            lease_ms,
                        });
                    }
                }
                for len in [1, u64::MAX] {
                    round_trip(Control::Request {
                        request: id,
                        len,
                        access: Rights::READ,
                        lease_ms,
                    });
                }
                for request in [0, id] {
                    round_trip(Control::Renewed {
                        request,
                        grant: id,
                        lease_ms,
                    });
                }
                round_trip(Control::Renew {
                    request: id,
                    grant: id,
                    lease_ms,
                });
            }
            for &reason in RefuseReason::ALL {
                round_trip(Control::Refuse {
                    request: id,
                    reason,
                });
            }
            for &reason in RevokeReason::ALL {
                round_trip(Control::Revoke { grant: id, reason });
            }
            round_trip(Control::Release { grant: id });
        }
    }

    #[test]
    fn layouts_are_little_endian_with_zero_reserved_bytes() {
        let grant = Control::Grant {
            grant: 0x0102,
            request: 0x0304,
            addr: 0x0506,
            len: 0x0708,
            rkey: 0x090a,
            access: Rights::READ | Rights::WRITE,
            lease_ms: 0x0b0c,
        };
        let mut expected = vec![0x41, 1];
        for field in [0x0102u64, 0x0304, 0x0506, 0x0708] {
            expected.extend(field.to_le_bytes());
        }
        expected.extend(0x090au32.to_le_bytes());
        expected.extend([3, 0, 0, 0]);
        expected.extend(0x0b0cu64.to_le_bytes());
        assert_eq!(grant.encode(), expected);

        let refuse = Control::Refuse {
            request: 9,
            reason: RefuseReason::UnknownGrant,
        };
        assert_eq!(
            refuse.encode(),
            [0x43, 1, 9, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Control::Release { grant: 0x1122 }.encode(),
            [0x44, 1, 0x22, 0x11, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn kind_names() {
        let names: Vec<_> = examples().iter().map(Control::kind_name).collect();
        assert_eq!(
            names,
            ["grant", "request", "refuse", "release", "revoke", "renew", "renewed"]
        );
    }

    fn refused(bytes: &[u8]) -> ControlProblem {
        match Control::decode(bytes) {
            Err(problem) => {
                assert!(!problem.to_string().is_empty());
                problem
            }
            Ok(control) => panic!("{bytes:02x?} should be refused, got {control:?}"),
        }
    }

    /// The encoding of `control` with its byte at `at` set to `value`.
    fn with_byte(control: Control, at: usize, value: u8) -> Vec<u8> {
        let mut bytes = control.encode();
        bytes[at] = value;
        bytes
    }

    #[test]
    fn shorter_than_the_tag_is_truncated() {
        assert_eq!(refused(&[]), ControlProblem::Truncated { len: 0 });
        assert_eq!(refused(&[0x41]), ControlProblem::Truncated { len: 1 });
    }

    #[test]
    fn unknown_kinds_are_named_whatever_the_length() {
        for kind in [0, 0x40, 0x48, b'R', 0xff] {
            assert_eq!(refused(&[kind, VERSION]), ControlProblem::Kind(kind));
            let mut long = examples()[0].encode();
            long[0] = kind;
            assert_eq!(refused(&long), ControlProblem::Kind(kind));
        }
    }

    #[test]
    fn other_versions_are_named_before_the_length() {
        for version in [0, 2, 0xff] {
            for control in examples() {
                let mut bytes = with_byte(control, 1, version);
                assert_eq!(refused(&bytes), ControlProblem::Version(version));
                bytes.push(0); // a later version may be longer
                assert_eq!(refused(&bytes), ControlProblem::Version(version));
            }
        }
    }

    #[test]
    fn wrong_lengths_are_refused() {
        for control in examples() {
            let bytes = control.encode();
            let expected = bytes.len();
            let kind = control.kind_name();
            for actual in [HEADER_LEN, expected - 1] {
                assert_eq!(
                    refused(&bytes[..actual]),
                    ControlProblem::Length {
                        kind,
                        expected,
                        actual
                    }
                );
            }
            let mut padded = bytes.clone();
            padded.extend([0; 8]);
            assert_eq!(
                refused(&padded),
                ControlProblem::Length {
                    kind,
                    expected,
                    actual: expected + 8
                }
            );
        }
    }

    #[test]
    fn nonzero_reserved_bytes_are_refused() {
        let [grant, request, refuse, _, revoke, ..] = examples();
        // The reserved bytes follow the rights byte (grant: offset 38, request: 18) or the
        // reason byte (refuse and revoke: offset 10).
        for (control, reserved) in [
            (grant, 39..42),
            (request, 19..22),
            (refuse, 11..18),
            (revoke, 11..18),
        ] {
            for at in reserved {
                assert_eq!(
                    refused(&with_byte(control, at, 0x80)),
                    ControlProblem::Reserved {
                        kind: control.kind_name()
                    },
                    "byte {at}"
                );
            }
        }
    }

    #[test]
    fn rights_that_are_none_or_undefined_are_refused() {
        let [grant, request, ..] = examples();
        for (control, at) in [(grant, 38), (request, 18)] {
            for bits in [0, 8, 0x10, 0x80, 0x0f, 0xff] {
                assert_eq!(
                    refused(&with_byte(control, at, bits)),
                    ControlProblem::Access {
                        kind: control.kind_name(),
                        bits
                    }
                );
            }
            for bits in 1..=7 {
                assert!(Control::decode(&with_byte(control, at, bits)).is_ok());
            }
        }
    }

    #[test]
    fn unknown_reasons_are_refused() {
        let [_, _, refuse, _, revoke, ..] = examples();
        for (control, unknown) in [(refuse, [0, 8, 0xff]), (revoke, [0, 4, 0xff])] {
            for code in unknown {
                assert_eq!(
                    refused(&with_byte(control, 10, code)),
                    ControlProblem::Reason {
                        kind: control.kind_name(),
                        code
                    }
                );
            }
        }
    }

    #[test]
    fn ids_of_zero_are_refused_where_they_name_something() {
        let [grant, request, refuse, release, revoke, renew, renewed] = examples();
        let zeroed = |control: Control, at: usize| {
            let mut bytes = control.encode();
            bytes[at..at + 8].fill(0);
            bytes
        };
        for (control, at, field) in [
            (grant, 2, "grant"),
            (request, 2, "request"),
            (refuse, 2, "request"),
            (release, 2, "grant"),
            (revoke, 2, "grant"),
            (renew, 2, "request"),
            (renew, 10, "grant"),
            (renewed, 10, "grant"),
        ] {
            assert_eq!(
                refused(&zeroed(control, at)),
                ControlProblem::ZeroId {
                    kind: control.kind_name(),
                    field
                }
            );
        }
        // A grant nobody asked for, and a renewal nobody asked for, name request 0.
        assert!(Control::decode(&zeroed(grant, 10)).is_ok());
        assert!(Control::decode(&zeroed(renewed, 2)).is_ok());
    }

    #[test]
    fn zero_lengths_are_refused() {
        let grant = Control::Grant {
            grant: 1,
            request: 0,
            addr: 0x1000,
            len: 0,
            rkey: 1,
            access: Rights::READ,
            lease_ms: 0,
        };
        assert_eq!(
            refused(&grant.encode()),
            ControlProblem::ZeroLength { kind: "grant" }
        );
        let request = Control::Request {
            request: 1,
            len: 0,
            access: Rights::WRITE,
            lease_ms: 0,
        };
        assert_eq!(
            refused(&request.encode()),
            ControlProblem::ZeroLength { kind: "request" }
        );
    }

    #[test]
    fn grants_past_the_end_of_the_address_space_are_refused() {
        for (addr, len) in [(u64::MAX, 1), (1, u64::MAX), (1 << 63, 1 << 63)] {
            let grant = Control::Grant {
                grant: 1,
                request: 0,
                addr,
                len,
                rkey: 1,
                access: Rights::READ,
                lease_ms: 0,
            };
            assert_eq!(
                refused(&grant.encode()),
                ControlProblem::Overflow { addr, len }
            );
        }
    }

    #[test]
    fn leases_above_the_maximum_are_refused() {
        let [grant, request, _, _, _, renew, renewed] = examples();
        let lease_at = |control: Control| control.format().len - 8;
        for control in [grant, request, renew, renewed] {
            for lease_ms in [MAX_LEASE_MS + 1, u64::MAX] {
                let mut bytes = control.encode();
                let at = lease_at(control);
                bytes[at..].copy_from_slice(&lease_ms.to_le_bytes());
                assert_eq!(
                    refused(&bytes),
                    ControlProblem::LeaseTooLong {
                        kind: control.kind_name(),
                        lease_ms
                    }
                );
            }
        }
    }

    #[test]
    fn check_refuses_what_decode_refuses() {
        let bad = Control::Renew {
            request: 1,
            grant: 0,
            lease_ms: 0,
        };
        assert_eq!(
            bad.check(),
            Err(ControlProblem::ZeroId {
                kind: "renew",
                field: "grant"
            })
        );
        assert_eq!(Control::decode(&bad.encode()), bad.check().map(|()| bad));
        for control in examples() {
            assert_eq!(control.check(), Ok(()));
        }
    }

    #[test]
    fn a_layout_longer_than_its_format_is_refused_not_indexed_past() {
        let short = Format {
            len: HEADER_LEN + 4,
            ..RELEASE
        };
        let mut body = Body {
            format: short,
            fields: Fields::new(&[1, 2, 3, 4]),
        };
        assert_eq!(
            body.read(),
            Err(ControlProblem::Length {
                kind: "release",
                expected: HEADER_LEN + 8,
                actual: HEADER_LEN + 4
            })
        );
    }

    #[test]
    fn rights_are_nonempty_defined_bits() {
        assert_eq!(Rights::from_bits(0), None);
        assert_eq!(Rights::from_bits(8), None);
        assert_eq!(Rights::from_bits(7).map(Rights::bits), Some(7));
        let mut rights = Rights::READ;
        rights |= Rights::ATOMIC;
        assert!(rights.contains(Rights::READ) && rights.contains(Rights::ATOMIC));
        assert!(!rights.contains(Rights::WRITE));
        assert!(rights.contains(rights) && !rights.contains(rights | Rights::WRITE));
        assert_eq!(rights.to_string(), "read+atomic");
        assert_eq!(
            (Rights::READ | Rights::WRITE | Rights::ATOMIC).to_string(),
            "read+write+atomic"
        );
        assert_eq!(format!("{:?}", Rights::WRITE), "Rights(write)");
    }

    #[test]
    fn reason_codes_are_the_documented_ones() {
        let refuse: Vec<u8> = RefuseReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(refuse, [1, 2, 3, 4, 5, 6, 7]);
        let revoke: Vec<u8> = RevokeReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(revoke, [1, 2, 3]);
        assert_eq!(RefuseReason::from_code(0), None);
        assert_eq!(RevokeReason::from_code(4), None);
    }

    #[test]
    fn max_lease_is_thirty_days() {
        let thirty_days = std::time::Duration::from_secs(30 * 24 * 60 * 60);
        assert_eq!(u128::from(MAX_LEASE_MS), thirty_days.as_millis());
    }

    /// The problems the session raises have messages too.
    #[test]
    fn session_problems_explain_themselves() {
        for (problem, words) in [
            (ControlProblem::UnexpectedGrant { request: 5 }, "request 5"),
            (ControlProblem::UnknownGrant { grant: 6 }, "grant 6"),
            (ControlProblem::DuplicateGrant { grant: 7 }, "id 7"),
            (ControlProblem::UnknownRequest { request: 9 }, "request 9"),
        ] {
            let text = problem.to_string();
            assert!(text.contains(words), "{text}");
        }
    }
}
