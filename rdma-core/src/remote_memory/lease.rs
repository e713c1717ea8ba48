//! The leases of the grants an owner made: when each ends, and whether a holder's renewal
//! may extend it. No I/O and no clock: every call is given the time, so the rules are
//! tested with a simulated clock (see the tests below), and the session does the verbs
//! (deregistering a key, sending the answer) that the results call for.
//!
//! The rules:
//!
//! - A grant's *term* is the lease it was made with (`None`: no lease, it lasts until it is
//!   released or revoked: the owner's explicit choice, [`MemorySession::grant`] with `None`,
//!   or a policy whose `max_lease` is `None`, which lets a holder ask for that).
//! - A holder's renewal asks for a lease from now. It is refused when the grant has ended
//!   (released, revoked, or its lease has run out, even if the expiry was not acted on yet:
//!   late is late), when the lease asked for is longer than the grant's term or the
//!   policy's longest (asking for no lease at all is longer than any finite one), and
//!   otherwise the owner's policy decides ([`GrantPolicy::renew`]: by default it refuses).
//!   So a grant never outlives what its owner agreed to, one renewal at a time.
//! - The owner may extend its own grants to any lease (`Grant::renew`); that becomes the
//!   grant's new term.
//! - At its deadline a grant ends: [`Leases::expire`] names the grants to revoke, and from
//!   the deadline on a renewal is late, whether or not `expire` ran.
//!
//! [`MemorySession::grant`]: super::MemorySession::grant
//! [`GrantPolicy::renew`]: super::GrantPolicy::renew

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::control::{RefuseReason, Rights};
use super::policy::RenewalRequest;

/// The lease of one grant.
#[derive(Debug, Clone, Copy)]
struct Lease {
    len: u64,
    rights: Rights,
    granted_at: Instant,
    /// The longest lease a renewal may ask for (`None`: any, including none).
    term: Option<Duration>,
    /// When the grant ends (`None`: when released or revoked).
    deadline: Option<Instant>,
    renewals: u32,
}

/// The leases of the grants an owner made, by grant id.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    leases: HashMap<u64, Lease>,
}

impl Leases {
    /// Grant `id` of `len` bytes with `rights` was made at `now` for `lease`; its deadline.
    pub(crate) fn grant(
        &mut self,
        id: u64,
        len: u64,
        rights: Rights,
        lease: Option<Duration>,
        now: Instant,
    ) -> Option<Instant> {
        let deadline = lease.map(|lease| now + lease);
        self.leases.insert(
            id,
            Lease {
                len,
                rights,
                granted_at: now,
                term: lease,
                deadline,
                renewals: 0,
            },
        );
        deadline
    }

    /// Grant `id` ended (released or revoked): false if it had ended already.
    pub(crate) fn end(&mut self, id: u64) -> bool {
        self.leases.remove(&id).is_some()
    }

    /// Whether grant `id` may be used at `now`: made, not ended, its deadline not reached.
    /// (The session answers `is_live` by whether the key is still registered, which the
    /// expiry thread ends at the deadline.)
    #[cfg(test)]
    pub(crate) fn is_live(&self, id: u64, now: Instant) -> bool {
        self.leases
            .get(&id)
            .is_some_and(|lease| lease.deadline.map_or(true, |at| now < at))
    }

    /// Grants whose deadline has come by `now`, in id order: they end here (the caller
    /// revokes them: deregisters their keys and tells the holder).
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<u64> {
        let mut ended: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline.is_some_and(|at| at <= now))
            .map(|(&id, _)| id)
            .collect();
        ended.sort_unstable();
        for id in &ended {
            self.leases.remove(id);
        }
        ended
    }

    /// The earliest deadline of a grant not yet expired.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.leases
            .values()
            .filter_map(|lease| lease.deadline)
            .min()
    }

    /// The first half of a holder's renewal of grant `id` for `asked` (`None`: no lease),
    /// arriving at `now`: `Err` refuses it at once; `Ok` is what the owner's policy is then
    /// asked (outside the session's lock), before [`renew`](Leases::renew).
    pub(crate) fn renewal(
        &self,
        id: u64,
        asked: Option<Duration>,
        max_lease: Option<Duration>,
        now: Instant,
    ) -> Result<RenewalRequest, RefuseReason> {
        let lease = match self.leases.get(&id) {
            Some(lease) if lease.deadline.map_or(true, |at| now < at) => lease,
            _ => return Err(RefuseReason::UnknownGrant),
        };
        if !within(asked, lease.term) || !within(asked, max_lease) {
            return Err(RefuseReason::LeaseTooLong);
        }
        Ok(RenewalRequest {
            grant: id,
            len: lease.len,
            rights: lease.rights,
            lease: asked,
            term: lease.term,
            age: now.saturating_duration_since(lease.granted_at),
            renewals: lease.renewals,
        })
    }

    /// The second half of a renewal the policy agreed to: the grant now ends `asked` after
    /// `now` (its new deadline), unless it ended while the policy was asked.
    pub(crate) fn renew(
        &mut self,
        id: u64,
        asked: Option<Duration>,
        now: Instant,
    ) -> Result<Option<Instant>, RefuseReason> {
        match self.leases.get_mut(&id) {
            Some(lease) if lease.deadline.map_or(true, |at| now < at) => {
                lease.deadline = asked.map(|asked| now + asked);
                lease.renewals = lease.renewals.saturating_add(1);
                Ok(lease.deadline)
            }
            _ => Err(RefuseReason::UnknownGrant),
        }
    }

    /// The owner extends its own grant `id` to `lease` from `now`, which becomes its term;
    /// the new deadline, or `None` when the grant has ended.
    pub(crate) fn extend(
        &mut self,
        id: u64,
        lease: Option<Duration>,
        now: Instant,
    ) -> Option<Option<Instant>> {
        match self.leases.get_mut(&id) {
            Some(granted) if granted.deadline.map_or(true, |at| now < at) => {
                granted.term = lease;
                granted.deadline = lease.map(|lease| now + lease);
                Some(granted.deadline)
            }
            _ => None,
        }
    }
}

/// Whether a lease of `asked` is no longer than `limit` (`None` is no limit as a limit, and
/// longer than any finite lease as a lease asked for).
fn within(asked: Option<Duration>, limit: Option<Duration>) -> bool {
    match (asked, limit) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(asked), Some(limit)) => asked <= limit,
    }
}

#[cfg(test)]
mod tests {
    //! Leases driven through seeded random schedules with a simulated clock: an owner's
    //! table, and a hostile holder whose renewals arrive early, late, too long, too often,
    //! over a link with random delays. A model of what was agreed says when each grant
    //! must end; the table must agree at every step.

    use super::*;

    /// A small deterministic generator (xorshift64*), so that a failing seed replays.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn ms(&mut self, max: u64) -> Duration {
            Duration::from_millis(self.below(max + 1))
        }
    }

    /// What the owner agreed to, by grant: its term and its end (`None`: no end).
    #[derive(Debug, Clone, Copy)]
    struct Agreed {
        term: Option<Duration>,
        end: Option<Instant>,
        ended: bool,
    }

    /// One schedule: grants made, renewals sent by the holder (arriving after a random
    /// delay), the owner's own extensions and revocations, and time passing in random
    /// steps; the table's answers are checked against the model at each step.
    fn run(seed: u64) {
        let mut rng = Rng::new(seed);
        let t0 = Instant::now();
        let mut now = t0;
        let max_lease = match rng.below(3) {
            0 => None,
            _ => Some(rng.ms(2_000).max(Duration::from_millis(1))),
        };
        let policy_says_yes = rng.below(4) != 0; // a policy that renews mostly, or never
        let policy_cap = rng.below(6) as u32; // and at most this many renewals per grant
        let mut leases = Leases::default();
        let mut agreed: HashMap<u64, Agreed> = HashMap::new();
        let mut next_id = 1;
        // Renewals in flight: (arrival, grant, lease asked).
        let mut in_flight: Vec<(Instant, u64, Option<Duration>)> = Vec::new();
        let steps = 20 + rng.below(60);
        for _ in 0..steps {
            match rng.below(10) {
                0 | 1 => {
                    let lease = match rng.below(5) {
                        0 => None,
                        _ => Some(rng.ms(1_000).max(Duration::from_millis(1))),
                    };
                    let id = next_id;
                    next_id += 1;
                    let deadline = leases.grant(id, 4096, Rights::WRITE, lease, now);
                    assert_eq!(deadline, lease.map(|l| now + l), "seed {seed}");
                    let end = deadline;
                    agreed.insert(
                        id,
                        Agreed {
                            term: lease,
                            end,
                            ended: false,
                        },
                    );
                }
                2..=4 if next_id > 1 => {
                    // The holder renews any grant it ever had, asking for anything.
                    let id = 1 + rng.below(next_id - 1);
                    let asked = match rng.below(6) {
                        0 => None,
                        _ => Some(rng.ms(3_000)),
                    };
                    in_flight.push((now + rng.ms(300), id, asked));
                }
                5 if next_id > 1 => {
                    // The owner extends or revokes one of its grants.
                    let id = 1 + rng.below(next_id - 1);
                    if rng.below(2) == 0 {
                        let lease = Some(rng.ms(1_000).max(Duration::from_millis(1)));
                        let model = agreed.get_mut(&id).expect("made");
                        let live = !model.ended && model.end.map_or(true, |end| now < end);
                        let extended = leases.extend(id, lease, now);
                        assert_eq!(extended.is_some(), live, "seed {seed}: extend {id}");
                        if live {
                            model.term = lease;
                            model.end = lease.map(|l| now + l);
                        }
                    } else {
                        let model = agreed.get_mut(&id).expect("made");
                        // Ended once: a grant past its deadline that nothing expired yet
                        // is still in the table, and ends here.
                        assert_eq!(leases.end(id), !model.ended, "seed {seed}: revoke {id}");
                        model.ended = true;
                    }
                }
                _ => {
                    // Time passes; the renewals that arrive by then are decided in order.
                    let step = rng.ms(400);
                    let until = now + step;
                    in_flight.sort_by_key(|(at, ..)| *at);
                    while let Some(&(at, id, asked)) = in_flight.first() {
                        if at > until {
                            break;
                        }
                        in_flight.remove(0);
                        // A lazy expiry (the session may act a little late): the table
                        // must refuse a renewal past the deadline all the same.
                        if rng.below(2) == 0 {
                            check_expiry(&mut leases, &mut agreed, at, seed);
                        }
                        now = at;
                        decide(
                            &mut leases,
                            &mut agreed,
                            (id, asked),
                            max_lease,
                            (policy_says_yes, policy_cap),
                            now,
                            seed,
                        );
                    }
                    now = until;
                    check_expiry(&mut leases, &mut agreed, now, seed);
                }
            }
            // At every step: live exactly while the model says so.
            for (&id, model) in &agreed {
                let live = !model.ended && model.end.map_or(true, |end| now < end);
                assert_eq!(leases.is_live(id, now), live, "seed {seed}: grant {id}");
                if let (Some(end), Some(term)) = (model.end, model.term) {
                    assert!(
                        model.ended || end <= now + term,
                        "seed {seed}: grant {id} ends beyond its term"
                    );
                }
            }
        }
        // Long after: every grant with a lease has ended, and is named once.
        let later = now + Duration::from_secs(3_600);
        check_expiry(&mut leases, &mut agreed, later, seed);
        for (&id, model) in &agreed {
            if model.term.is_some() {
                assert!(!leases.is_live(id, later), "seed {seed}: {id} outlived");
            }
        }
    }

    /// A renewal arrives at `now`: the table's verdict against the rules.
    fn decide(
        leases: &mut Leases,
        agreed: &mut HashMap<u64, Agreed>,
        (id, asked): (u64, Option<Duration>),
        max_lease: Option<Duration>,
        (says_yes, cap): (bool, u32),
        now: Instant,
        seed: u64,
    ) {
        let model = agreed.get_mut(&id).expect("made");
        let live = !model.ended && model.end.map_or(true, |end| now < end);
        let verdict = leases.renewal(id, asked, max_lease, now);
        let expected = if !live {
            Err(RefuseReason::UnknownGrant)
        } else if !within(asked, model.term) || !within(asked, max_lease) {
            Err(RefuseReason::LeaseTooLong)
        } else {
            Ok(())
        };
        assert_eq!(
            verdict.map(|_| ()),
            expected,
            "seed {seed}: renewal of {id}"
        );
        let Ok(request) = verdict else {
            return;
        };
        assert_eq!(request.term, model.term, "seed {seed}");
        assert_eq!(request.lease, asked, "seed {seed}");
        if !says_yes || request.renewals >= cap {
            return; // declined: nothing changes
        }
        let deadline = leases.renew(id, asked, now).expect("live, just checked");
        assert_eq!(deadline, asked.map(|a| now + a), "seed {seed}");
        model.end = deadline;
    }

    /// Time is `now`: the grants the table ends are exactly those the model says ended.
    fn check_expiry(
        leases: &mut Leases,
        agreed: &mut HashMap<u64, Agreed>,
        now: Instant,
        seed: u64,
    ) {
        let ended = leases.expire(now);
        for id in &ended {
            let model = agreed.get_mut(id).expect("made");
            assert!(!model.ended, "seed {seed}: {id} ended twice");
            assert!(
                model.end.is_some_and(|end| end <= now),
                "seed {seed}: {id} ended before its time"
            );
            model.ended = true;
        }
        for (&id, model) in agreed.iter() {
            assert!(
                model.ended || model.end.map_or(true, |end| now < end),
                "seed {seed}: {id} outlived its lease"
            );
            let _ = id;
        }
        assert_eq!(
            leases.next_deadline(),
            agreed
                .values()
                .filter(|m| !m.ended)
                .filter_map(|m| m.end)
                .min(),
            "seed {seed}: the next deadline"
        );
    }

    #[test]
    fn leases_end_on_time_and_renew_within_terms_over_seeded_schedules() {
        let runs: u64 = std::env::var("ANYRDMA_LEASE_SCHEDULES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(20_000);
        for seed in 0..runs {
            run(seed);
        }
    }

    #[test]
    fn a_renewal_never_goes_beyond_the_grant_or_turns_it_permanent() {
        let t0 = Instant::now();
        let mut leases = Leases::default();
        let five = Some(Duration::from_secs(5));
        leases.grant(1, 64, Rights::READ, five, t0);
        let at = t0 + Duration::from_secs(4);
        // Longer than the grant's own term, even with no limit in the policy.
        assert_eq!(
            leases
                .renewal(1, Some(Duration::from_secs(6)), None, at)
                .err(),
            Some(RefuseReason::LeaseTooLong)
        );
        // No lease at all (a raw lease_ms of 0) is longer than any finite term.
        assert_eq!(
            leases.renewal(1, None, None, at).err(),
            Some(RefuseReason::LeaseTooLong)
        );
        // Within its term: the policy is asked, with what it needs to bound a grant's life.
        let request = leases.renewal(1, five, None, at).expect("within the terms");
        assert_eq!(request.age, Duration::from_secs(4));
        assert_eq!(request.renewals, 0);
        // Late: at the deadline, even before anything expired the grant.
        let late = t0 + Duration::from_secs(5);
        assert!(!leases.is_live(1, late));
        assert_eq!(
            leases.renewal(1, five, None, late).err(),
            Some(RefuseReason::UnknownGrant)
        );
        assert_eq!(leases.renew(1, five, late), Err(RefuseReason::UnknownGrant));
        assert_eq!(leases.expire(late), vec![1]);
    }
}
