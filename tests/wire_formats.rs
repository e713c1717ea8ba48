//! The formats peers exchange (`Endpoint`, `RemoteRegion`) take any bytes: random, truncated
//! and mutated inputs never panic, every input accepted re-encodes to the same bytes and
//! describes something that can exist, and every kind of bad input gets its own typed error.
//!
//! The inputs come from a seeded xorshift generator, so a failure names the seed and the
//! input's index and reproduces exactly.

mod seeded;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};

use anyrdma::{Endpoint, Error, Gid, RemoteRegion, WireProblem};
use seeded::Rng;

/// Inputs per format.
const INPUTS: usize = 100_000;

/// The generator's seed; change it to explore, keep it to reproduce.
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Values near the edges of a field.
trait Edges {
    /// A value near one of the edges of a field, or anywhere.
    fn edgy(&mut self, edges: &[u64]) -> u64;
}

impl Edges for Rng {
    fn edgy(&mut self, edges: &[u64]) -> u64 {
        match self.below(3) {
            0 => self.next(),
            _ => {
                let edge = edges[self.below(edges.len())];
                edge.wrapping_add(self.below(5) as u64).wrapping_sub(2)
            }
        }
    }
}

/// What the fuzzer needs of a format.
trait Wire: Sized + Debug {
    /// The `what` of its errors.
    const WHAT: &'static str;
    /// Its kind byte.
    const KIND: u8;
    const LEN: usize;
    fn decode(bytes: &[u8]) -> Result<Self, Error>;
    fn encode(&self) -> Vec<u8>;
    /// A value with fields anywhere, valid or not (`to_bytes` encodes whatever it is given).
    fn arbitrary(rng: &mut Rng) -> Self;
    /// Whether a decoded value describes something that can exist.
    fn plausible(&self) -> bool;
}

impl Wire for Endpoint {
    const WHAT: &'static str = "endpoint";
    const KIND: u8 = b'E';
    const LEN: usize = Endpoint::ENCODED_LEN;

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Endpoint::from_bytes(bytes)
    }

    fn encode(&self) -> Vec<u8> {
        self.to_bytes().to_vec()
    }

    fn arbitrary(rng: &mut Rng) -> Self {
        let mut gid = [0; 16];
        gid.copy_from_slice(&rng.bytes(16));
        let mtus = [0, 256, 512, 1024, 2048, 4096, 8192, u32::MAX as u64];
        // Mostly valid, so that mutations and truncations start from something accepted.
        let field24 = |rng: &mut Rng| match rng.below(4) {
            0 => rng.edgy(&[0, 1 << 24, u32::MAX as u64]) as u32,
            _ => rng.next() as u32 & 0xff_ffff,
        };
        Endpoint {
            qpn: field24(rng),
            psn: field24(rng),
            gid: Gid(gid),
            lid: rng.next() as u16,
            mtu: match rng.below(4) {
                0 => rng.next() as u32,
                1 => rng.edgy(&mtus) as u32,
                _ => mtus[1 + rng.below(5)] as u32,
            },
        }
    }

    fn plausible(&self) -> bool {
        self.qpn < 1 << 24 && self.psn < 1 << 24 && [256, 512, 1024, 2048, 4096].contains(&self.mtu)
    }
}

impl Wire for RemoteRegion {
    const WHAT: &'static str = "remote region";
    const KIND: u8 = b'R';
    const LEN: usize = RemoteRegion::ENCODED_LEN;

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        RemoteRegion::from_bytes(bytes)
    }

    fn encode(&self) -> Vec<u8> {
        self.to_bytes().to_vec()
    }

    fn arbitrary(rng: &mut Rng) -> Self {
        let edges = [0, 1 << 32, 1 << 47, u64::MAX / 2, u64::MAX];
        RemoteRegion {
            addr: rng.edgy(&edges),
            len: rng.edgy(&edges),
            rkey: rng.next() as u32,
        }
    }

    fn plausible(&self) -> bool {
        self.addr.checked_add(self.len).is_some()
    }
}

/// One fuzz input: random bytes, a tagged random body, or a (possibly invalid) encoding
/// that is truncated, padded or mutated.
fn input<T: Wire>(rng: &mut Rng) -> Vec<u8> {
    let encoded = T::arbitrary(rng).encode();
    match rng.below(6) {
        0 => {
            let len = rng.below(2 * T::LEN + 1);
            rng.bytes(len)
        }
        1 => {
            let len = T::LEN - 3 + rng.below(7);
            let mut bytes = rng.bytes(len);
            bytes[0] = T::KIND;
            bytes[1] = 1;
            bytes
        }
        2 => encoded[..rng.below(T::LEN)].to_vec(),
        3 => {
            let mut bytes = encoded;
            let extra = 1 + rng.below(8);
            bytes.extend(rng.bytes(extra));
            bytes
        }
        4 => {
            let mut bytes = encoded;
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
            bytes
        }
        _ => encoded,
    }
}

/// The name of a problem's kind, for the coverage check.
fn kind(problem: &WireProblem) -> &'static str {
    match problem {
        WireProblem::Length { .. } => "Length",
        WireProblem::Kind { .. } => "Kind",
        WireProblem::Version { .. } => "Version",
        WireProblem::Above24Bits { .. } => "Above24Bits",
        WireProblem::Mtu(_) => "Mtu",
        WireProblem::AddressWraps { .. } => "AddressWraps",
        other => panic!("a problem this test does not know: {other:?}"),
    }
}

/// Decodes `INPUTS` inputs; returns how many were accepted and which problems were seen.
fn fuzz<T: Wire>(seed: u64) -> (usize, BTreeSet<&'static str>) {
    let mut rng = Rng::new(seed);
    let mut accepted = 0;
    let mut seen = BTreeSet::new();
    for index in 0..INPUTS {
        let bytes = input::<T>(&mut rng);
        let context = || format!("{} input {index} of seed {seed:#x}: {bytes:02x?}", T::WHAT);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            T::decode(&bytes).map_err(|err| (err.to_string(), err))
        }))
        .unwrap_or_else(|_| panic!("decoding panicked on {}", context()));
        match outcome {
            Ok(value) => {
                accepted += 1;
                assert_eq!(value.encode(), bytes, "re-encoding differs: {}", context());
                assert!(value.plausible(), "accepted {value:?}: {}", context());
            }
            Err((text, Error::BadWireFormat { what, problem })) => {
                assert_eq!(what, T::WHAT, "{}", context());
                assert!(text.contains(T::WHAT), "message {text:?}: {}", context());
                seen.insert(kind(&problem));
            }
            Err((_, other)) => panic!("not a wire format error: {other:?}: {}", context()),
        }
    }
    (accepted, seen)
}

#[test]
fn endpoints_from_any_bytes() {
    let (accepted, seen) = fuzz::<Endpoint>(SEED);
    // The inputs reach both sides of every check, or the fuzzing proves little.
    assert!(accepted > INPUTS / 20, "only {accepted} accepted");
    let all = ["Above24Bits", "Kind", "Length", "Mtu", "Version"];
    assert_eq!(seen, all.into_iter().collect(), "problems seen");
}

#[test]
fn remote_regions_from_any_bytes() {
    let (accepted, seen) = fuzz::<RemoteRegion>(SEED ^ 0x5555);
    assert!(accepted > INPUTS / 20, "only {accepted} accepted");
    let all = ["AddressWraps", "Kind", "Length", "Version"];
    assert_eq!(seen, all.into_iter().collect(), "problems seen");
}

fn endpoint() -> Endpoint {
    Endpoint {
        qpn: 0x11,
        psn: 0xab_cdef,
        gid: "::ffff:169.254.77.1".parse().unwrap(),
        lid: 3,
        mtu: 1024,
    }
}

fn region() -> RemoteRegion {
    RemoteRegion {
        addr: 0x7f00_0000_1000,
        len: 4096,
        rkey: 0x1234,
    }
}

/// The problem of refused bytes, after checking the error names the format.
fn refused<T: Wire>(bytes: &[u8]) -> WireProblem {
    let err = T::decode(bytes).expect_err("these bytes must be refused");
    let text = err.to_string();
    match err {
        Error::BadWireFormat { what, problem } => {
            assert_eq!(what, T::WHAT);
            assert!(text.contains(T::WHAT), "{text}");
            problem
        }
        other => panic!(
            "{} {bytes:02x?}: not a wire format error: {other:?}",
            T::WHAT
        ),
    }
}

#[test]
fn valid_values_round_trip_at_their_limits() {
    for value in [
        endpoint(),
        Endpoint {
            qpn: (1 << 24) - 1,
            psn: 0,
            gid: Gid([0xff; 16]),
            lid: u16::MAX,
            mtu: 4096,
        },
        Endpoint {
            qpn: 0,
            psn: (1 << 24) - 1,
            gid: Gid::default(),
            lid: 0,
            mtu: 256,
        },
    ] {
        let bytes = value.to_bytes();
        assert_eq!(bytes.len(), Endpoint::ENCODED_LEN);
        assert_eq!((bytes[0], bytes[1]), (b'E', 1), "tagged");
        assert_eq!(Endpoint::from_bytes(&bytes).unwrap(), value);
        assert_eq!(Endpoint::try_from(&bytes[..]).unwrap(), value);
    }
    for value in [
        region(),
        RemoteRegion {
            addr: u64::MAX,
            len: 0,
            rkey: u32::MAX,
        },
        RemoteRegion {
            addr: 0,
            len: u64::MAX,
            rkey: 0,
        },
    ] {
        let bytes = value.to_bytes();
        assert_eq!(bytes.len(), RemoteRegion::ENCODED_LEN);
        assert_eq!((bytes[0], bytes[1]), (b'R', 1), "tagged");
        assert_eq!(RemoteRegion::from_bytes(&bytes).unwrap(), value);
        assert_eq!(RemoteRegion::try_from(&bytes[..]).unwrap(), value);
    }
}

#[test]
fn wrong_lengths_are_refused() {
    let bytes = endpoint().to_bytes();
    for len in [0, 1, 2, Endpoint::ENCODED_LEN - 1] {
        assert_eq!(
            refused::<Endpoint>(&bytes[..len]),
            WireProblem::Length {
                expected: Endpoint::ENCODED_LEN,
                actual: len
            }
        );
    }
    let mut padded = bytes.to_vec();
    padded.push(0);
    assert_eq!(
        refused::<Endpoint>(&padded),
        WireProblem::Length {
            expected: Endpoint::ENCODED_LEN,
            actual: Endpoint::ENCODED_LEN + 1
        }
    );
    let bytes = region().to_bytes();
    assert_eq!(
        refused::<RemoteRegion>(&bytes[..RemoteRegion::ENCODED_LEN - 1]),
        WireProblem::Length {
            expected: RemoteRegion::ENCODED_LEN,
            actual: RemoteRegion::ENCODED_LEN - 1
        }
    );
}

#[test]
fn foreign_and_untagged_bytes_are_refused() {
    // Each format refuses the other's bytes.
    assert_eq!(
        refused::<Endpoint>(&region().to_bytes()),
        WireProblem::Kind {
            expected: b'E',
            actual: b'R'
        }
    );
    assert_eq!(
        refused::<RemoteRegion>(&endpoint().to_bytes()),
        WireProblem::Kind {
            expected: b'R',
            actual: b'E'
        }
    );
    // The untagged layouts of earlier releases (qpn, psn, gid, lid, mtu and addr, len,
    // rkey, little-endian, no tag) start with the QP number or the address.
    let mut untagged_endpoint = vec![0x11, 0, 0, 0, 0xef, 0xcd, 0xab, 0];
    untagged_endpoint.extend([0; 16]);
    untagged_endpoint.extend([3, 0, 0, 4, 0, 0]);
    assert_eq!(
        refused::<Endpoint>(&untagged_endpoint),
        WireProblem::Kind {
            expected: b'E',
            actual: 0x11
        }
    );
    let mut untagged_region = 0x7f00_0000_1000u64.to_le_bytes().to_vec();
    untagged_region.extend(4096u64.to_le_bytes());
    untagged_region.extend(0x1234u32.to_le_bytes());
    assert_eq!(
        refused::<RemoteRegion>(&untagged_region),
        WireProblem::Kind {
            expected: b'R',
            actual: 0x00
        }
    );
}

#[test]
fn other_versions_are_refused() {
    for version in [0, 2, 0xff] {
        let mut bytes = endpoint().to_bytes();
        bytes[1] = version;
        assert_eq!(
            refused::<Endpoint>(&bytes),
            WireProblem::Version {
                expected: 1,
                actual: version
            }
        );
        let mut bytes = region().to_bytes().to_vec();
        bytes[1] = version;
        bytes.push(0); // a later version may be longer: the version is named first
        assert_eq!(
            refused::<RemoteRegion>(&bytes),
            WireProblem::Version {
                expected: 1,
                actual: version
            }
        );
    }
}

#[test]
fn queue_pair_numbers_and_psns_beyond_24_bits_are_refused() {
    for value in [1 << 24, u32::MAX] {
        let qpn = Endpoint {
            qpn: value,
            ..endpoint()
        };
        assert_eq!(
            refused::<Endpoint>(&qpn.to_bytes()),
            WireProblem::Above24Bits {
                field: "QP number",
                value
            }
        );
        let psn = Endpoint {
            psn: value,
            ..endpoint()
        };
        assert_eq!(
            refused::<Endpoint>(&psn.to_bytes()),
            WireProblem::Above24Bits {
                field: "PSN",
                value
            }
        );
    }
}

#[test]
fn invalid_mtus_are_refused() {
    for mtu in [0, 1, 255, 257, 1500, 3000, 8192, 9000, u32::MAX] {
        let bytes = Endpoint { mtu, ..endpoint() }.to_bytes();
        assert_eq!(refused::<Endpoint>(&bytes), WireProblem::Mtu(mtu));
    }
    let text = Endpoint::from_bytes(
        &Endpoint {
            mtu: 0,
            ..endpoint()
        }
        .to_bytes(),
    )
    .unwrap_err()
    .to_string();
    assert!(text.contains("MTU 0") && text.contains("4096"), "{text}");
}

#[test]
fn regions_that_wrap_the_address_space_are_refused() {
    for (addr, len) in [
        (u64::MAX, 1),
        (1, u64::MAX),
        (u64::MAX / 2 + 1, u64::MAX / 2 + 1),
    ] {
        let bytes = RemoteRegion { addr, len, rkey: 7 }.to_bytes();
        assert_eq!(
            refused::<RemoteRegion>(&bytes),
            WireProblem::AddressWraps { addr, len }
        );
    }
}
