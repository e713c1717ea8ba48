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
    /// The longest lease granted for a request or a renewal; `None`: no limit (a request for
    /// no lease at all is then granted as such).
    pub max_lease: Option<Duration>,
    /// Asked last, for requests within the limits (`None`: grant them).
    pub decide: Option<Decide>,
}

impl Default for GrantPolicy {
    fn default() -> Self {
        GrantPolicy {
            max_bytes: 0,
            max_regions: 0,
            rights: Rights::READ,
            max_lease: Some(Duration::from_secs(60)),
            decide: None,
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
    pub(crate) fn decide(&self, request: &RegionRequest) -> Result<(), RefuseReason> {
        match &self.decide {
            Some(decide) if !decide(request) => Err(RefuseReason::Declined),
            _ => Ok(()),
        }
    }

    /// Whether a lease of `asked` may be granted (a request, or a renewal).
    pub(crate) fn lease(&self, asked: Option<Duration>) -> Result<(), RefuseReason> {
        match (self.max_lease, asked) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(RefuseReason::LeaseTooLong),
            (Some(max), Some(asked)) if asked > max => Err(RefuseReason::LeaseTooLong),
            _ => Ok(()),
        }
    }
}
