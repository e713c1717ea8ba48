//! Bodies that check themselves: the bytes of a body are a pattern derived from a seed and
//! the position of each byte, so a receiver checks every byte without a copy of what was sent.
//!
//! The pattern has no period: a lost, duplicated or reordered byte (or a chunk of another
//! body) shifts or changes what follows, and [`Checker`] reports the first byte that differs.
//! A different seed per request makes bodies of concurrent requests differ too, so bytes that
//! reach the wrong request are caught as well.

use std::fmt;

/// The byte of the pattern of `seed` at `offset`.
pub fn byte_at(seed: u64, offset: u64) -> u8 {
    word(seed, offset / 8).to_le_bytes()[(offset % 8) as usize]
}

/// Word `index` of the pattern of `seed` (bytes `8 * index ..`, little-endian): splitmix64 of
/// the seed and the index, so neighbouring words share nothing.
fn word(seed: u64, index: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(index.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(0x94d0_49bb_1331_11eb);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the pattern of `seed` from `offset` on.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    // Up to the next word boundary byte by byte, then whole words: the checks of large bodies
    // run in debug builds inside an emulated guest, where a byte-wise loop would dominate.
    let head = (offset.wrapping_neg() % 8).min(buf.len() as u64) as usize;
    let (head_bytes, rest) = buf.split_at_mut(head);
    for (i, b) in head_bytes.iter_mut().enumerate() {
        *b = byte_at(seed, offset + i as u64);
    }
    let first_word = (offset + head as u64) / 8;
    let mut words = rest.chunks_exact_mut(8);
    let mut index = first_word;
    for chunk in &mut words {
        chunk.copy_from_slice(&word(seed, index).to_le_bytes());
        index += 1;
    }
    let tail = words.into_remainder();
    let last = word(seed, index).to_le_bytes();
    tail.copy_from_slice(&last[..tail.len()]);
}

/// `len` bytes of the pattern of `seed` from `offset` on.
pub fn bytes(seed: u64, offset: u64, len: usize) -> bytes::Bytes {
    let mut buf = vec![0; len];
    fill(seed, offset, &mut buf);
    buf.into()
}

/// The first difference between a body and the pattern it should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The byte at `offset` differs.
    Byte {
        /// The position in the body.
        offset: u64,
        /// What the pattern has there.
        expected: u8,
        /// What arrived.
        got: u8,
    },
    /// The body ended early or went on too long (every byte before was right).
    Length {
        /// The length the body should have.
        expected: u64,
        /// The length that arrived (at least this many bytes, when too long).
        got: u64,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Byte {
                offset,
                expected,
                got,
            } => write!(
                f,
                "byte {offset} differs from the pattern: expected {expected:#04x}, got {got:#04x}"
            ),
            Mismatch::Length { expected, got } => {
                write!(f, "body of {got} bytes where {expected} were sent")
            }
        }
    }
}

impl std::error::Error for Mismatch {}

/// Checks a body that arrives in pieces against the pattern of a seed, byte for byte.
#[derive(Debug, Clone)]
pub struct Checker {
    seed: u64,
    expected: u64,
    offset: u64,
    scratch: Vec<u8>,
}

impl Checker {
    /// A checker for a body of `expected` bytes of the pattern of `seed`.
    pub fn new(seed: u64, expected: u64) -> Checker {
        Checker {
            seed,
            expected,
            offset: 0,
            scratch: Vec::new(),
        }
    }

    /// Checks the next piece of the body.
    pub fn feed(&mut self, piece: &[u8]) -> Result<(), Mismatch> {
        // The bytes up to the expected end first: a duplicated byte shows where it was made,
        // not only as a body one byte too long.
        let room = (self.expected - self.offset).min(piece.len() as u64) as usize;
        let (inside, beyond) = piece.split_at(room);
        self.scratch.resize(inside.len(), 0);
        fill(self.seed, self.offset, &mut self.scratch);
        if self.scratch != inside {
            let at = inside
                .iter()
                .zip(&self.scratch)
                .position(|(got, expected)| got != expected)
                .expect("the slices differ");
            return Err(Mismatch::Byte {
                offset: self.offset + at as u64,
                expected: self.scratch[at],
                got: inside[at],
            });
        }
        self.offset += inside.len() as u64;
        if !beyond.is_empty() {
            return Err(Mismatch::Length {
                expected: self.expected,
                got: self.offset + beyond.len() as u64,
            });
        }
        Ok(())
    }

    /// The bytes checked so far.
    pub fn checked(&self) -> u64 {
        self.offset
    }

    /// Ends the body: all of it must have arrived. Returns its length.
    pub fn finish(self) -> Result<u64, Mismatch> {
        if self.offset == self.expected {
            Ok(self.offset)
        } else {
            Err(Mismatch::Length {
                expected: self.expected,
                got: self.offset,
            })
        }
    }
}

/// Checks a whole body at once.
pub fn check(seed: u64, expected: u64, body: &[u8]) -> Result<u64, Mismatch> {
    let mut checker = Checker::new(seed, expected);
    checker.feed(body)?;
    checker.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_from_any_offset_agrees_with_byte_at() {
        for offset in 0..20u64 {
            for len in 0..40usize {
                let mut buf = vec![0; len];
                fill(7, offset, &mut buf);
                for (i, &b) in buf.iter().enumerate() {
                    assert_eq!(
                        b,
                        byte_at(7, offset + i as u64),
                        "offset {offset} len {len} at {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn pieces_of_any_size_check_out() {
        let body = bytes(3, 0, 100_000);
        for piece in [1, 7, 8, 4096, 65536, 100_000] {
            let mut checker = Checker::new(3, body.len() as u64);
            for chunk in body.chunks(piece) {
                checker.feed(chunk).unwrap();
            }
            assert_eq!(checker.finish(), Ok(100_000));
        }
    }

    /// The faults a byte stream could make, each caught with the offset where it happened.
    #[test]
    fn a_lost_duplicated_or_reordered_byte_is_caught() {
        let body = bytes(11, 0, 70_000).to_vec();
        let at = 65_537;
        let mut lost = body.clone();
        lost.remove(at);
        let mut duplicated = body.clone();
        duplicated.insert(at, body[at]);
        let mut reordered = body.clone();
        reordered.swap(at, at + 1);
        let mut other_seed = body.clone();
        other_seed[at..at + 8].copy_from_slice(&bytes(12, at as u64, 8));
        for (name, faulty) in [
            ("lost", lost),
            ("duplicated", duplicated),
            ("reordered", reordered),
            ("another body's bytes", other_seed),
        ] {
            match check(11, body.len() as u64, &faulty) {
                Err(Mismatch::Byte { offset, .. }) => {
                    assert!(
                        (at as u64..at as u64 + 8).contains(&offset),
                        "{name}: caught at {offset}"
                    )
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(matches!(
            check(11, body.len() as u64, &body[..body.len() - 1]),
            Err(Mismatch::Length { .. })
        ));
        assert!(matches!(
            check(11, body.len() as u64 - 1, &body),
            Err(Mismatch::Length { .. })
        ));
    }
}
