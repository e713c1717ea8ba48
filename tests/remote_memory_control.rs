//! The control messages of remote memory take any bytes: valid, mutated, truncated, padded
//! and random inputs never panic, every input accepted re-encodes to the same bytes and
//! passes the value checks, and every problem the decoder can name is reached.
//!
//! The inputs come from a seeded xorshift generator, so a failure names the seed and the
//! input's index and reproduces exactly. No device is needed.

mod seeded;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use anyrdma::remote_memory::{
    Control, ControlProblem, RefuseReason, RevokeReason, Rights, MAX_LEASE_MS,
};
use anyrdma::Error;
use seeded::Rng;

/// Inputs in all.
const INPUTS: usize = 200_000;

/// The generator's seed; change it to explore, keep it to reproduce.
const SEED: u64 = 0x2545_f491_4f6c_dd1d;

/// Each kind byte and its message's length: the layouts of the module documentation.
const KINDS: [(u8, usize); 7] = [
    (0x41, 50),
    (0x42, 30),
    (0x43, 18),
    (0x44, 10),
    (0x45, 18),
    (0x46, 26),
    (0x47, 26),
];

/// The longest message.
const MAX_LEN: usize = 50;

/// Every problem the decoder names; the session's problems are never the decoder's.
const DECODER_PROBLEMS: [&str; 11] = [
    "Access",
    "Kind",
    "LeaseTooLong",
    "Length",
    "Overflow",
    "Reason",
    "Reserved",
    "Truncated",
    "Version",
    "ZeroId",
    "ZeroLength",
];

/// Field values for control messages.
trait Fields {
    /// A value at or next to one of the edges of a field, or anywhere.
    fn edgy(&mut self, edges: &[u64]) -> u64;
    /// An id: mostly valid, sometimes 0.
    fn id(&mut self) -> u64;
    fn lease(&mut self) -> u64;
    fn rights(&mut self) -> Rights;
}

impl Fields for Rng {
    fn edgy(&mut self, edges: &[u64]) -> u64 {
        match self.below(4) {
            0 => self.next(),
            1 => self
                .pick(edges)
                .wrapping_add(self.below(3) as u64)
                .wrapping_sub(1),
            _ => self.pick(edges),
        }
    }

    fn id(&mut self) -> u64 {
        self.edgy(&[1, 2, 1 << 32, u64::MAX])
    }

    fn lease(&mut self) -> u64 {
        self.edgy(&[0, 1, 60_000, MAX_LEASE_MS, MAX_LEASE_MS + 1, u64::MAX])
    }

    fn rights(&mut self) -> Rights {
        Rights::from_bits(1 + self.below(7) as u8).expect("1 to 7 are rights")
    }
}

/// A message with fields anywhere, valid or not (`encode` writes whatever it is given), so
/// that the value checks are reached as well as the framing ones.
fn arbitrary(rng: &mut Rng) -> Control {
    let lengths = [1, 4096, 1 << 32, u64::MAX / 2, u64::MAX];
    let addresses = [0, 0x1000, 1 << 47, u64::MAX / 2, u64::MAX];
    match rng.below(7) {
        0 => {
            let len = rng.edgy(&lengths);
            // Often a range that ends exactly at, or just past, the end of the address space.
            let addr = match rng.below(3) {
                0 => (u64::MAX - len).wrapping_add(rng.below(2) as u64),
                _ => rng.edgy(&addresses),
            };
            Control::Grant {
                grant: rng.id(),
                request: rng.pick(&[0, 1, u64::MAX]),
                addr,
                len,
                rkey: rng.next() as u32,
                access: rng.rights(),
                lease_ms: rng.lease(),
            }
        }
        1 => Control::Request {
            request: rng.id(),
            len: rng.edgy(&lengths),
            access: rng.rights(),
            lease_ms: rng.lease(),
        },
        2 => Control::Refuse {
            request: rng.id(),
            reason: rng.pick(&[
                RefuseReason::TooManyBytes,
                RefuseReason::TooManyRegions,
                RefuseReason::AccessNotAllowed,
                RefuseReason::LeaseTooLong,
                RefuseReason::Declined,
                RefuseReason::OutOfMemory,
                RefuseReason::UnknownGrant,
            ]),
        },
        3 => Control::Release { grant: rng.id() },
        4 => Control::Revoke {
            grant: rng.id(),
            reason: rng.pick(&[
                RevokeReason::Revoked,
                RevokeReason::LeaseExpired,
                RevokeReason::Closing,
            ]),
        },
        5 => Control::Renew {
            request: rng.id(),
            grant: rng.id(),
            lease_ms: rng.lease(),
        },
        _ => Control::Renewed {
            request: rng.pick(&[0, 1, u64::MAX]),
            grant: rng.id(),
            lease_ms: rng.lease(),
        },
    }
}

/// One input: an encoding as it is, with 1 to 4 bytes changed, truncated or padded; a valid
/// tag before random bytes of about its kind's length; or random bytes.
fn input(rng: &mut Rng) -> Vec<u8> {
    let encoded = arbitrary(rng).encode();
    match rng.below(8) {
        0 => {
            let len = rng.below(MAX_LEN + 8);
            rng.bytes(len)
        }
        1 => {
            // A tag that is mostly valid (or next to the range of kinds), then random bytes.
            let (kind, len) = rng.pick(&KINDS);
            let kind = match rng.below(8) {
                0 => rng.pick(&[0x40, 0x48]),
                _ => kind,
            };
            let len = (len + rng.below(7)).saturating_sub(3);
            let mut bytes = rng.bytes(len);
            bytes[0] = kind;
            bytes[1] = if rng.below(8) == 0 {
                rng.next() as u8
            } else {
                1
            };
            bytes
        }
        2 => encoded[..rng.below(encoded.len())].to_vec(),
        3 => {
            let mut bytes = encoded;
            let extra = 1 + rng.below(8);
            bytes.extend(rng.bytes(extra));
            bytes
        }
        4 | 5 => {
            let mut bytes = encoded;
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len());
                bytes[at] = match rng.below(2) {
                    0 => bytes[at] ^ (1 << rng.below(8)),
                    _ => rng.next() as u8,
                };
            }
            bytes
        }
        _ => encoded,
    }
}

/// The name of a problem's variant, for the coverage check.
fn name(problem: &ControlProblem) -> &'static str {
    match problem {
        ControlProblem::Truncated { .. } => "Truncated",
        ControlProblem::Kind(_) => "Kind",
        ControlProblem::Version(_) => "Version",
        ControlProblem::Length { .. } => "Length",
        ControlProblem::Reserved { .. } => "Reserved",
        ControlProblem::Access { .. } => "Access",
        ControlProblem::Reason { .. } => "Reason",
        ControlProblem::ZeroId { .. } => "ZeroId",
        ControlProblem::ZeroLength { .. } => "ZeroLength",
        ControlProblem::Overflow { .. } => "Overflow",
        ControlProblem::LeaseTooLong { .. } => "LeaseTooLong",
        other => panic!("the decoder named a problem that is the session's: {other:?}"),
    }
}

#[test]
fn control_messages_from_any_bytes() {
    let started = std::time::Instant::now();
    let mut rng = Rng::new(SEED);
    let mut accepted: BTreeMap<&str, usize> = BTreeMap::new();
    let mut refused: BTreeMap<&str, usize> = BTreeMap::new();
    for index in 0..INPUTS {
        let bytes = input(&mut rng);
        let context = || format!("input {index} of seed {SEED:#x}: {bytes:02x?}");
        let outcome = catch_unwind(AssertUnwindSafe(|| Control::decode(&bytes)))
            .unwrap_or_else(|_| panic!("decoding panicked on {}", context()));
        match outcome {
            Ok(control) => {
                assert_eq!(
                    control.encode(),
                    bytes,
                    "re-encoding differs: {}",
                    context()
                );
                assert_eq!(control.check(), Ok(()), "{control:?}: {}", context());
                let (kind, len) = KINDS[usize::from(bytes[0] - 0x41)];
                assert_eq!((bytes[0], bytes.len()), (kind, len), "{}", context());
                *accepted.entry(control.kind_name()).or_default() += 1;
            }
            Err(problem) => {
                let text = Error::BadControlMessage {
                    problem: problem.clone(),
                }
                .to_string();
                assert!(text.contains(&problem.to_string()), "{text}: {}", context());
                *refused.entry(name(&problem)).or_default() += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    println!("{INPUTS} inputs in {elapsed:.2?}");
    println!("accepted: {accepted:?}");
    println!("refused: {refused:?}");

    // The inputs reach both sides of every check, or the fuzzing proves little.
    let total_accepted: usize = accepted.values().sum();
    assert!(
        total_accepted > INPUTS / 10,
        "only {total_accepted} accepted"
    );
    assert_eq!(accepted.len(), KINDS.len(), "kinds accepted: {accepted:?}");
    let seen: Vec<&str> = refused.keys().copied().collect();
    assert_eq!(seen, DECODER_PROBLEMS, "problems seen");
}
