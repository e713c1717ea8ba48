//! The two ends of a grant: [`Grant`] on the owner's side, [`RemoteGrant`] on the holder's.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::buffers::Buffers;
use crate::error::{Error, Result};
use crate::mr::LocalBuf;
use crate::op::{Atomic, Done, Op, Owner};
use crate::qp::QueuePair;
use crate::remote::RemoteRegion;
use crate::wake::lock;

use super::control::{RevokeReason, Rights};
use super::session::Inner;

// Defined in `terms`, which imports nothing from the crate, so that the error module can name it.
pub use super::terms::GrantProblem;

/// The state of a grant as the holder sees it, shared by the session and the handle.
#[derive(Debug)]
pub(crate) struct HeldState {
    pub(crate) expires: Option<Instant>,
    pub(crate) ended: Option<GrantProblem>,
}

/// Memory a peer granted to this side: a range of the peer's memory, its key and rights,
/// and a lease. Reach it with the one-sided operations below, on the session's queue pair;
/// each is checked before anything is posted (range, rights, atomic alignment, lease), and
/// refused with [`Error::GrantCheck`] naming the grant and the range.
///
/// Dropping it releases it (the owner is told, and may free the memory): do so once the
/// operations on it have completed. An operation still in flight then fails with a remote
/// access error, never reaches memory the owner reused.
///
/// ```no_run
/// # async fn demo(session: anyrdma_core::remote_memory::MemorySession, buf: anyrdma_core::LocalBuf) -> anyrdma_core::Result<()> {
/// let grant = session.next_grant().await?;
/// let (result, buf) = grant.read(buf, 0).await; // the first bytes of the grant
/// result?;
/// # Ok(()) }
/// ```
pub struct RemoteGrant {
    pub(crate) id: u64,
    pub(crate) region: RemoteRegion,
    pub(crate) rights: Rights,
    pub(crate) state: Arc<Mutex<HeldState>>,
    pub(crate) qp: QueuePair,
    /// Weak: the session keeps grants that wait to be taken, and must not keep itself.
    pub(crate) session: Weak<Inner>,
}

impl RemoteGrant {
    /// The grant's id on its connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The granted range and its key.
    pub fn region(&self) -> RemoteRegion {
        self.region
    }

    /// Length of the granted range in bytes.
    pub fn len(&self) -> u64 {
        self.region.len
    }

    /// Whether the granted range is empty (never: grants have at least one byte).
    pub fn is_empty(&self) -> bool {
        self.region.len == 0
    }

    /// The rights granted.
    pub fn rights(&self) -> Rights {
        self.rights
    }

    /// When the lease ends, as this side counts it (`None`: until revoked or released).
    pub fn expires(&self) -> Option<Instant> {
        lock(&self.state).expires
    }

    /// Why the grant can no longer be used, if it cannot.
    pub fn ended(&self) -> Option<GrantProblem> {
        let state = lock(&self.state);
        state
            .ended
            .or_else(|| expired(&state).then_some(GrantProblem::Expired))
    }

    /// The part of the grant an access of `len` bytes at `offset` reaches, once every local
    /// check passed.
    ///
    /// # Errors
    /// [`Error::GrantCheck`] naming what is wrong.
    pub fn check(&self, offset: u64, len: u64, needed: Rights) -> Result<RemoteRegion> {
        let refuse = |problem| Error::GrantCheck {
            grant: self.id,
            region: self.region,
            offset,
            len,
            problem,
        };
        if let Some(problem) = self.ended() {
            return Err(refuse(problem));
        }
        if !self.rights.contains(needed) {
            return Err(refuse(GrantProblem::NotGranted {
                needed,
                granted: self.rights,
            }));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.region.len => {}
            _ => return Err(refuse(GrantProblem::OutOfRange)),
        }
        let part = self
            .region
            .slice(offset..offset + len)
            .map_err(|_| refuse(GrantProblem::OutOfRange))?;
        if needed.contains(Rights::ATOMIC) && (len != 8 || part.addr % 8 != 0) {
            return Err(refuse(GrantProblem::Misaligned));
        }
        Ok(part)
    }

    /// Reads `buffers.len()` bytes at `offset` of the grant into `buffers`.
    pub fn read<B: Buffers>(&self, buffers: B, offset: u64) -> Op<B, Done> {
        match self.check(offset, buffers.total_len() as u64, Rights::READ) {
            Ok(part) => self.qp.read(buffers, part),
            Err(err) => self.refused(err, buffers),
        }
    }

    /// Writes `buffers` at `offset` of the grant.
    pub fn write<B: Buffers>(&self, buffers: B, offset: u64) -> Op<B, Done> {
        match self.check(offset, buffers.total_len() as u64, Rights::WRITE) {
            Ok(part) => self.qp.write(buffers, part),
            Err(err) => self.refused(err, buffers),
        }
    }

    /// Atomically: if the 8-byte word at `offset` equals `compare`, replace it with `swap`.
    /// Resolves to the previous value (`buf` must be 8 bytes).
    pub fn compare_and_swap(
        &self,
        buf: LocalBuf,
        offset: u64,
        compare: u64,
        swap: u64,
    ) -> Op<LocalBuf, Atomic> {
        match self.check(offset, 8, Rights::ATOMIC) {
            Ok(part) => self.qp.compare_and_swap(buf, part, compare, swap),
            Err(err) => self.refused(err, buf),
        }
    }

    /// Atomically adds `add` to the 8-byte word at `offset`; resolves to the previous value
    /// (`buf` must be 8 bytes).
    pub fn fetch_and_add(&self, buf: LocalBuf, offset: u64, add: u64) -> Op<LocalBuf, Atomic> {
        match self.check(offset, 8, Rights::ATOMIC) {
            Ok(part) => self.qp.fetch_and_add(buf, part, add),
            Err(err) => self.refused(err, buf),
        }
    }

    /// Asks the owner to extend the lease to `lease` from now; resolves to the new end.
    /// The owner renews only within the grant's terms (no longer than the lease the grant
    /// was made with) and when its policy agrees.
    ///
    /// # Errors
    /// [`Error::RegionRefused`] when the owner refuses: [`LeaseTooLong`] beyond the grant's
    /// own lease or the policy's longest, [`Declined`] by the owner's policy,
    /// [`UnknownGrant`] when the grant already ended there; [`Error::NoAnswer`],
    /// [`Error::SessionEnded`].
    ///
    /// [`LeaseTooLong`]: super::RefuseReason::LeaseTooLong
    /// [`Declined`]: super::RefuseReason::Declined
    /// [`UnknownGrant`]: super::RefuseReason::UnknownGrant
    pub async fn renew(&self, lease: Duration) -> Result<Option<Instant>> {
        if let Some(problem) = self.ended() {
            return Err(Error::GrantCheck {
                grant: self.id,
                region: self.region,
                offset: 0,
                len: 0,
                problem,
            });
        }
        match self.session.upgrade() {
            Some(session) => session.renew(self.id, lease).await,
            None => Err(Error::SessionEnded { cause: None }),
        }
    }

    /// Tells the owner this side is done with the grant (what dropping it does).
    pub fn release(self) {}

    fn refused<B: Buffers, O: crate::op::Outcome>(&self, err: Error, buffers: B) -> Op<B, O> {
        Op::new(Owner::Send(self.qp.shared.clone()), Err(err), buffers)
    }
}

fn expired(state: &HeldState) -> bool {
    state.expires.is_some_and(|end| Instant::now() >= end)
}

impl Drop for RemoteGrant {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        if state.ended.is_none() {
            state.ended = Some(GrantProblem::Released);
            drop(state);
            if let Some(session) = self.session.upgrade() {
                session.released(self.id);
            }
        }
    }
}

impl fmt::Debug for RemoteGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteGrant")
            .field("id", &self.id)
            .field("region", &self.region)
            .field("rights", &self.rights)
            .finish()
    }
}

/// Memory this side granted to its peer ([`MemorySession::grant`](super::MemorySession::grant)):
/// the handle that renews and revokes it. Dropping it revokes the grant.
pub struct Grant {
    pub(crate) id: u64,
    pub(crate) region: RemoteRegion,
    pub(crate) rights: Rights,
    /// Weak: a grant outliving its session must not keep the session's memory.
    pub(crate) session: Weak<Inner>,
}

impl Grant {
    /// The grant's id on its connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The range and key the peer was given.
    pub fn region(&self) -> RemoteRegion {
        self.region
    }

    /// The rights the peer was given.
    pub fn rights(&self) -> Rights {
        self.rights
    }

    /// Whether the peer can still use it: not released, revoked or expired, and the session
    /// has not ended. Once it is false, the key no longer works. At the lease's end it
    /// turns false whether or not the session is served: the thread that ends leases
    /// deregisters the key at the deadline (within its wake-up latency, typically well
    /// under a millisecond, plus the deregistration's own time).
    pub fn is_live(&self) -> bool {
        self.session
            .upgrade()
            .is_some_and(|session| session.is_granted(self.id))
    }

    /// Extends the lease to `lease` from now (`None`: no expiry); the peer is told by the
    /// session's [`serve`](super::MemorySession::serve). This becomes the grant's term: the
    /// longest lease a renewal by the holder may ask for from then on.
    ///
    /// # Errors
    /// [`Error::SessionEnded`] when the grant ended already, [`Error::InvalidArgument`] for
    /// a lease over 30 days.
    pub fn renew(&self, lease: Option<Duration>) -> Result<()> {
        match self.session.upgrade() {
            Some(session) => session.extend(self.id, lease),
            None => Err(Error::SessionEnded { cause: None }),
        }
    }

    /// Revokes the grant: the key stops working at once (before this returns), then the peer
    /// is told. The memory is the owner's to reuse from then on.
    pub fn revoke(self) {}
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Some(session) = self.session.upgrade() {
            session.revoke(self.id, RevokeReason::Revoked);
        }
    }
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("id", &self.id)
            .field("region", &self.region)
            .field("rights", &self.rights)
            .finish()
    }
}
