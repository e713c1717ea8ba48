//! What an owner agrees to when its peer asks for memory.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::control::{RefuseReason, Rights};

/// A peer's request for memory, as the owner's policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionRequest {
    /// Bytes asked for.
    pub len: u64,
    /// Rights asked for.
    pub rights: Rights,
    /// The lease asked for (`None`: until released or revoked).
    pub lease: Option<Duration>,
}

/// The application's own say on a request that is within the limits: `true` to grant it.
pub type Decide = Arc<dyn Fn(&RegionRequest) -> bool + Send + Sync>;

/// A holder's request to extend the lease of a grant this side made, as the owner's policy
/// sees it ([`GrantPolicy::renew`]). It is asked only for a renewal within the grant's
/// terms: the grant is live, and the lease asked for is no longer than the grant's own
/// lease ([`term`](RenewalRequest::term)) nor the policy's
/// [`max_lease`](GrantPolicy::max_lease); the others are refused without asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RenewalRequest {
    /// The grant's id on its connection.
    pub grant: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Its rights.
    pub rights: Rights,
    /// The lease asked for, from now (`None`: no lease; only for a grant made without one,
    /// under a policy without a longest lease).
    pub lease: Option<Duration>,
    /// The lease the grant was made with (or the owner last extended it to): no renewal is
    /// longer.
    pub term: Option<Duration>,
    /// How long ago the grant was made: a policy that bounds a grant's whole life refuses
    /// past it.
    pub age: Duration,
    /// Renewals of this grant the owner agreed to so far.
    pub renewals: u32,
}

/// The application's say on a holder's renewal within the grant's terms: `true` to renew.
pub type DecideRenewal = Arc<dyn Fn(&RenewalRequest) -> bool + Send + Sync>;

/// Limits on what a peer may obtain from this side with
/// [`MemorySession::request_region`](super::MemorySession::request_region). Requests beyond
/// them are refused with the [`RefuseReason`] that names the limit, and nothing is
/// allocated for them.
///
/// The default refuses every request: an owner opts in to lending memory.
///
/// ```
/// use std::time::Duration;
/// use anyrdma_core::remote_memory::{GrantPolicy, Rights};
/// let policy = GrantPolicy {
///     max_bytes: 64 << 20,
///     max_regions: 16,
///     rights: Rights::READ | Rights::WRITE,
///     max_lease: Some(Duration::from_secs(60)),
///     ..GrantPolicy::default()
/// };
/// ```
#[derive(Clone)]
pub struct GrantPolicy {
    /// Bytes of requested regions the peer may hold at once, in all.
    pub max_bytes: u64,
    /// Requested regions the peer may hold at once.
    pub max_regions: usize,
    /// Rights a requested region may carry.
    pub rights: Rights,
    /// The longest lease granted for a request or a renewal. `None` is the owner's explicit
    /// choice of no limit: a request for no lease at all (`lease_ms` 0 on the wire) is then
    /// granted as such, a grant that lasts until it is released or revoked. A renewal never
    /// turns a grant with a lease into one without.
    pub max_lease: Option<Duration>,
    /// Asked last, for requests within the limits (`None`: grant them). It runs on the
    /// process's lending thread (with the allocation and registration that follow), not on
    /// the task that serves the session, so it may take its time; requests are decided one
    /// at a time, so a slow callback delays the next. A callback that panics declines.
    pub decide: Option<Decide>,
    /// Asked for each renewal a holder sends, of any grant this side made (those of
    /// [`MemorySession::grant`](super::MemorySession::grant) too), once it is within the
    /// grant's terms ([`RenewalRequest`]). `None`, the default: every renewal is refused
    /// ([`RefuseReason::Declined`]), so a grant ends when its lease says, unless the owner
    /// opts in. It runs on the task that serves the session, without its lock: keep it
    /// short (no blocking calls), as the session takes nothing else in meanwhile.
    pub renew: Option<DecideRenewal>,
}

impl Default for GrantPolicy {
    fn default() -> Self {
        GrantPolicy {
            max_bytes: 0,
            max_regions: 0,
            rights: Rights::READ,
            max_lease: Some(Duration::from_secs(60)),
            decide: None,
            renew: None,
        }
    }
}

impl fmt::Debug for GrantPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantPolicy")
            .field("max_bytes", &self.max_bytes)
            .field("max_regions", &self.max_regions)
            .field("rights", &self.rights)
            .field("max_lease", &self.max_lease)
            .field("decide", &self.decide.as_ref().map(|_| "..."))
            .field("renew", &self.renew.as_ref().map(|_| "..."))
            .finish()
    }
}

impl GrantPolicy {
    /// Whether a request fits the limits, given what the peer already holds: `Err` names
    /// the limit. ([`decide`](GrantPolicy::decide) is asked separately, without the
    /// session's lock, since it may call the session.)
    pub(crate) fn admit(
        &self,
        request: &RegionRequest,
        held_bytes: u64,
        held_regions: usize,
    ) -> Result<(), RefuseReason> {
        if !self.rights.contains(request.rights) {
            return Err(RefuseReason::AccessNotAllowed);
        }
        if held_regions >= self.max_regions {
            return Err(RefuseReason::TooManyRegions);
        }
        if held_bytes.saturating_add(request.len) > self.max_bytes {
            return Err(RefuseReason::TooManyBytes);
        }
        self.lease(request.lease)
    }

    /// The application's say on a request within the limits.
    pub(crate) fn decide_request(&self, request: &RegionRequest) -> Result<(), RefuseReason> {
        match &self.decide {
            Some(decide) if !decide(request) => Err(RefuseReason::Declined),
            _ => Ok(()),
        }
    }

    /// The application's say on a renewal within the grant's terms (none: refused).
    pub(crate) fn decide_renewal(&self, request: &RenewalRequest) -> Result<(), RefuseReason> {
        match &self.renew {
            Some(renew) if renew(request) => Ok(()),
            _ => Err(RefuseReason::Declined),
        }
    }

    /// Whether a lease of `asked` may be granted for a request.
    pub(crate) fn lease(&self, asked: Option<Duration>) -> Result<(), RefuseReason> {
        match (self.max_lease, asked) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(RefuseReason::LeaseTooLong),
            (Some(max), Some(asked)) if asked > max => Err(RefuseReason::LeaseTooLong),
            _ => Ok(()),
        }
    }
}
