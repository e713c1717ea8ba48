//! A memory session's counters, [`SessionStats`] and [`Refusals`].

use crate::remote_memory::RefuseReason;

/// What a memory session did since it was made: a snapshot, from
/// [`MemorySession::stats`](crate::remote_memory::MemorySession::stats). This side is the
/// *owner* of the grants it made and the *holder* of those the peer made (see
/// [`remote_memory`](crate::remote_memory)). Every count is kept under the session's own lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Grants this side made that are live: not released, revoked or expired (a grant whose
    /// key is being deregistered is live until its key is gone).
    pub grants_live: u64,
    /// Bytes those grants reach.
    pub bytes_live: u64,
    /// Grants this side made, on its own or for the peer's requests.
    pub grants_made: u64,
    /// Bytes of the grants it made.
    pub bytes_granted: u64,
    /// Grants of the peer's this side holds now.
    pub grants_held: u64,
    /// Requests and renewals of the peer's that this side refused, by reason.
    pub refused: Refusals,
    /// Requests and renewals of this side's that the peer refused, by reason.
    pub refused_by_peer: Refusals,
}

/// Refusals counted by their [`RefuseReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    /// [`RefuseReason::TooManyBytes`].
    pub too_many_bytes: u64,
    /// [`RefuseReason::TooManyRegions`].
    pub too_many_regions: u64,
    /// [`RefuseReason::AccessNotAllowed`].
    pub access_not_allowed: u64,
    /// [`RefuseReason::LeaseTooLong`].
    pub lease_too_long: u64,
    /// [`RefuseReason::Declined`].
    pub declined: u64,
    /// [`RefuseReason::OutOfMemory`].
    pub out_of_memory: u64,
    /// [`RefuseReason::UnknownGrant`].
    pub unknown_grant: u64,
}

impl Refusals {
    /// Counts one refusal for `reason`.
    pub(crate) fn count(&mut self, reason: RefuseReason) {
        *self.of_mut(reason) += 1;
    }

    /// The refusals for `reason`.
    pub fn of(&self, reason: RefuseReason) -> u64 {
        let mut copy = *self;
        *copy.of_mut(reason)
    }

    fn of_mut(&mut self, reason: RefuseReason) -> &mut u64 {
        match reason {
            RefuseReason::TooManyBytes => &mut self.too_many_bytes,
            RefuseReason::TooManyRegions => &mut self.too_many_regions,
            RefuseReason::AccessNotAllowed => &mut self.access_not_allowed,
            RefuseReason::LeaseTooLong => &mut self.lease_too_long,
            RefuseReason::Declined => &mut self.declined,
            RefuseReason::OutOfMemory => &mut self.out_of_memory,
            RefuseReason::UnknownGrant => &mut self.unknown_grant,
        }
    }

    /// Every refusal, whatever its reason.
    pub fn total(&self) -> u64 {
        self.too_many_bytes
            + self.too_many_regions
            + self.access_not_allowed
            + self.lease_too_long
            + self.declined
            + self.out_of_memory
            + self.unknown_grant
    }

    /// Each reason with its count, in the order the reasons are declared.
    pub fn by_reason(&self) -> [(RefuseReason, u64); 7] {
        [
            (RefuseReason::TooManyBytes, self.too_many_bytes),
            (RefuseReason::TooManyRegions, self.too_many_regions),
            (RefuseReason::AccessNotAllowed, self.access_not_allowed),
            (RefuseReason::LeaseTooLong, self.lease_too_long),
            (RefuseReason::Declined, self.declined),
            (RefuseReason::OutOfMemory, self.out_of_memory),
            (RefuseReason::UnknownGrant, self.unknown_grant),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reason has a count of its own, and `of`, `total` and `by_reason` agree.
    #[test]
    fn every_reason_counts_apart() {
        let mut refusals = Refusals::default();
        for (n, reason) in RefuseReason::ALL.iter().enumerate() {
            for _ in 0..=n {
                refusals.count(*reason);
            }
        }
        for (n, reason) in RefuseReason::ALL.iter().enumerate() {
            assert_eq!(refusals.of(*reason), n as u64 + 1, "{reason:?}");
        }
        let listed: Vec<_> = refusals.by_reason().iter().map(|(r, _)| *r).collect();
        assert_eq!(
            listed,
            RefuseReason::ALL,
            "by_reason lists every reason, in order"
        );
        assert!(refusals
            .by_reason()
            .iter()
            .all(|(r, n)| refusals.of(*r) == *n));
        assert_eq!(refusals.total(), (1..=7).sum::<u64>());
    }
}
