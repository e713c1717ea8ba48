//! Memory across machines: the control protocol by which one side of a connection lets the
//! other read, write and run atomics on its memory, for a lease.
//!
//! The side whose memory is exposed is the *owner*; the side it is exposed to is the
//! *holder*. Both sides of a connection may be both at once: each direction is independent.
//!
//! # Use
//!
//! A [`MemorySession`] takes over a [`Messenger`](crate::msg::Messenger) of the connection,
//! and each side runs [`MemorySession::serve`] while it uses the session.
//!
//! - **Grant** ([`MemorySession::grant`]): exactly a byte range of a
//!   [`SharedRegion`](crate::SharedRegion) (memory the owner itself reaches only atomically),
//!   with exactly the rights given, for a lease. Each grant is a registration of its own over
//!   its range, so its key reaches nothing around it. The [`Grant`] handle renews it; dropping
//!   it revokes it.
//! - **Use** ([`MemorySession::next_grant`]): the holder gets a [`RemoteGrant`], whose
//!   one-sided operations are checked before anything is posted ([`GrantProblem`]). Dropping it
//!   releases the grant; [`RemoteGrant::renew`] asks for a longer lease.
//! - **Request** ([`MemorySession::request_region`]): the holder asks the owner to allocate
//!   memory for it; the owner's [`GrantPolicy`] grants it or refuses with a [`RefuseReason`].
//! - **End**: a grant ends when it is released, revoked, or its lease runs out (the owner
//!   revokes it then). When the session ends (its connection failed, the peer broke the
//!   protocol, or [`MemorySession::close`]), every grant ends with it and everything
//!   registered for the peer is deregistered.
//!
//! # What blocks, and where
//!
//! Registering memory (`ibv_reg_mr`) pins its pages and deregistering unpins them: system
//! calls whose cost grows with the size, from microseconds for a page to hundreds of
//! milliseconds for gigabytes. The session keeps them off its lock (no other call waits
//! for them) and, where it can, off the executor's threads:
//!
//! - [`MemorySession::grant`] registers the range on the calling thread, and dropping or
//!   revoking a [`Grant`] deregisters it there (the key must stop working before the call
//!   returns). For large ranges, call them where blocking is fine.
//! - A peer's request ([`MemorySession::request_region`]) is decided by the policy's
//!   [`decide`](GrantPolicy::decide), then zeroed, allocated and registered (up to the
//!   policy's [`max_bytes`](GrantPolicy::max_bytes)) on one thread of the process that
//!   lends for every session, one request at a time; `serve` goes on meanwhile. The core
//!   names no runtime and so has no `spawn_blocking` to use: a `std` thread works under
//!   every executor, without a hook in the [`Runtime`](crate::runtime::Runtime) trait.
//! - A lease's end deregisters the key on the thread that ends leases (see above).
//! - Releases from the peer, and the end of the session, deregister on the task that
//!   serves (or closes) it, after the lock, for the grants they end.
//! - The policy's [`renew`](GrantPolicy::renew) runs on the serving task: keep it short.
//!
//! # Messages
//!
//! Each control message travels alone, as one message of the messaging layer
//! ([`msg`](crate::msg)), and is a [`Control`]:
//!
//! | kind | message   | from → to      | meaning                                                       |
//! |------|-----------|----------------|---------------------------------------------------------------|
//! | 0x41 | `Grant`   | owner → holder | this range, with this key and these rights, for this lease     |
//! | 0x42 | `Request` | holder → owner | allocate this many bytes for me and grant them                 |
//! | 0x43 | `Refuse`  | owner → holder | no to a `Request` or a `Renew`, and why                        |
//! | 0x44 | `Release` | holder → owner | done with this grant: its key will not be used again           |
//! | 0x45 | `Revoke`  | owner → holder | this grant has ended: its key no longer works                  |
//! | 0x46 | `Renew`   | holder → owner | extend this grant's lease                                      |
//! | 0x47 | `Renewed` | owner → holder | this grant's lease now ends this long from now                 |
//!
//! A `Request` is answered by a `Grant` that names it, or by a `Refuse`; a `Renew` by a
//! `Renewed` that names it, or by a `Refuse`. The owner may also grant and renew on its own
//! (request 0), and revoke at any time.
//!
//! **Ids.** The owner numbers its grants 1, 2, 3… in the order it sends them; the holder
//! numbers its requests and renewals, together, the same way. An id is never reused on a
//! connection and never 0, so a message that names an id its sender never issued is an
//! error, while one that names a grant that has ended is only late: a `Release` may cross a
//! `Revoke`, a `Renew` may cross the lease's expiry (the owner refuses it with
//! [`RefuseReason::UnknownGrant`]).
//!
//! **Leases.** A lease is a number of milliseconds from when the owner sends the grant or the
//! renewal, at most [`MAX_LEASE_MS`] (30 days); 0 means that the grant lasts until it is
//! revoked or released, which only the owner chooses: a grant made without a lease, or a
//! request for none under a policy whose [`max_lease`](GrantPolicy::max_lease) is `None`.
//! The holder counts from when its question was sent, earlier, so it never believes in a
//! lease longer than the owner's, and renews with time to spare.
//!
//! The owner decides each renewal: one that arrives after the lease ended, or asks for more
//! than the grant's own lease (the lease it was made with, or last extended to by the
//! owner) or the policy's longest, is refused; the others go to the policy's
//! [`renew`](GrantPolicy::renew) callback, which refuses all by default. No lease (0)
//! counts as longer than any finite one: a renewal never makes a grant permanent.
//!
//! A lease ends on time whether or not a task serves the session or the peer sends
//! anything: a thread of the process ends grants at their deadlines (their keys are
//! deregistered, so the peer's accesses fail with a remote access error), and
//! [`Grant::is_live`] is false from the deadline on. The revocation
//! ([`RevokeReason::LeaseExpired`]) is sent by the next run of `serve`.
//!
//! **Who can use a key.** A grant's key reaches exactly its range, but, as every memory
//! registration's key, from any queue pair of the protection domain it was made in, not only
//! from this connection's. Connections that share a protection domain (those a listener
//! accepts do by default) can reach each other's grants if one learns the other's key and
//! address. Give peers that do not trust each other a protection domain each
//! ([`ConnectionOptions::resources`](crate::cm::ConnectionOptions::resources)).
//!
//! **Order of teardown.** The owner makes the key stop working before it sends `Revoke`, and
//! frees or reuses the memory only after that, so memory is never reachable by a peer once
//! it may hold something else. The holder sends `Release` once its last access has
//! completed.
//!
//! # Layouts
//!
//! Every message is `[kind u8][version u8 = 1]` followed by fixed fields, little endian;
//! each kind has one exact length. Reserved bytes are zero.
//!
//! ```text
//! kind  bytes  fields after kind and version
//! 0x41  50     grant u64, request u64, addr u64, len u64, rkey u32, access u8, 3 reserved,
//!              lease_ms u64
//! 0x42  30     request u64, len u64, access u8, 3 reserved, lease_ms u64
//! 0x43  18     request u64, reason u8, 7 reserved
//! 0x44  10     grant u64
//! 0x45  18     grant u64, reason u8, 7 reserved
//! 0x46  26     request u64, grant u64, lease_ms u64
//! 0x47  26     request u64, grant u64, lease_ms u64
//! ```
//!
//! `access` is [`Rights`]: read 1, write 2, atomic 4, at least one. The reasons are
//! [`RefuseReason`] (1 to 7) and [`RevokeReason`] (1 to 3), in the order they are declared.
//!
//! # Bad input
//!
//! The peer may be buggy or hostile. [`Control::decode`] checks the tag, then the exact
//! length, then every field: codes that are not defined, reserved bytes that are not zero,
//! ids of 0 where they name something, lengths of 0, a range past the end of the address
//! space, a lease above the maximum. Each is a [`ControlProblem`]; so is a well-formed
//! message that makes no sense when it arrives (a grant nobody asked for, an id never
//! issued, more requests than the owner's policy allows). Such a message is refused with
//! [`Error::BadControlMessage`](crate::Error::BadControlMessage) and nothing of it is used.

mod control;
mod expiry;
mod grant;
mod key;
mod lease;
mod lender;
mod policy;
mod session;
mod terms;

pub use crate::stats::{Refusals, SessionStats};
pub use control::{Control, ControlProblem, RefuseReason, RevokeReason, Rights, MAX_LEASE_MS};
pub use grant::{Grant, GrantProblem, RemoteGrant};
pub use policy::{Decide, DecideRenewal, GrantPolicy, RegionRequest, RenewalRequest};
pub use session::{MemorySession, SessionOptions};
