//! The framing of the formats peers exchange ([`Endpoint`](crate::Endpoint),
//! [`RemoteRegion`](crate::RemoteRegion), the [control messages](crate::remote_memory::Control)
//! of remote memory): a kind byte, a version byte, then fixed-size little-endian fields.
//!
//! The bytes come from another process, often over the network, so decoding trusts nothing:
//! the tag and the exact length are checked before any field is read, and a field is read
//! only through [`Reader`] (or [`Fields`], for formats with errors of their own), which
//! cannot index out of bounds.

use crate::error::{Error, Result, WireProblem};

/// The version of every format this build writes and reads. A change to a format's layout
/// takes a new version, so that peers built before and after it refuse each other's bytes
/// with [`WireProblem::Version`] instead of misreading them.
pub(crate) const VERSION: u8 = 1;

/// Bytes before the fields: kind and version.
pub(crate) const HEADER_LEN: usize = 2;

/// One format: its name (for errors), its kind byte and its encoded length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Format {
    pub(crate) what: &'static str,
    pub(crate) kind: u8,
    pub(crate) len: usize,
}

impl Format {
    pub(crate) fn error(&self, problem: WireProblem) -> Error {
        Error::BadWireFormat {
            what: self.what,
            problem,
        }
    }

    /// Checks the tag and the length of `bytes` and returns a reader of the fields.
    ///
    /// The tag comes first, so that bytes of another format or version are named as such
    /// whatever their length; the length is exact, so that nothing is ignored.
    pub(crate) fn open<'a>(&self, bytes: &'a [u8]) -> Result<Reader<'a>> {
        let wrong_length = WireProblem::Length {
            expected: self.len,
            actual: bytes.len(),
        };
        let Some((&[kind, version], fields)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(self.error(wrong_length));
        };
        if kind != self.kind {
            return Err(self.error(WireProblem::Kind {
                expected: self.kind,
                actual: kind,
            }));
        }
        if version != VERSION {
            return Err(self.error(WireProblem::Version {
                expected: VERSION,
                actual: version,
            }));
        }
        if bytes.len() != self.len {
            return Err(self.error(wrong_length));
        }
        Ok(Reader {
            format: *self,
            fields: Fields::new(fields),
        })
    }

    /// A writer of `N` bytes (this format's length) that starts with the tag.
    pub(crate) fn writer<const N: usize>(&self) -> Writer<N> {
        debug_assert_eq!(
            N, self.len,
            "{}: buffer and format lengths differ",
            self.what
        );
        let mut out = [0; N];
        out[0] = self.kind;
        out[1] = VERSION;
        Writer {
            out,
            at: HEADER_LEN,
        }
    }
}

/// Reads the fields of a checked encoding, in order.
pub(crate) struct Reader<'a> {
    format: Format,
    fields: Fields<'a>,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        // `Format::open` checked the length against the layout, so this cannot run short;
        // if a layout and its length ever disagree, the input is refused, not indexed past.
        let unread = self.fields.remaining();
        self.fields.take().ok_or_else(|| {
            self.format.error(WireProblem::Length {
                expected: self.format.len - unread + N,
                actual: self.format.len,
            })
        })
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        self.take().map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        self.take().map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        self.take().map(u64::from_le_bytes)
    }

    pub(crate) fn bytes16(&mut self) -> Result<[u8; 16]> {
        self.take()
    }
}

/// Fixed-size fields taken off the front of bytes, in order. A field that runs past the end
/// is `None`, never a panic or an index out of bounds: the caller names the problem in its
/// own error type.
pub(crate) struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Fields { rest: bytes }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// The next `N` bytes, or `None` when fewer are left (then nothing is taken).
    pub(crate) fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (field, rest) = self.rest.split_first_chunk::<N>()?;
        self.rest = rest;
        Some(*field)
    }
}

/// Writes the fields of an encoding, in order, after the tag.
pub(crate) struct Writer<const N: usize> {
    out: [u8; N],
    at: usize,
}

impl<const N: usize> Writer<N> {
    fn put(mut self, field: &[u8]) -> Self {
        self.out[self.at..self.at + field.len()].copy_from_slice(field);
        self.at += field.len();
        self
    }

    pub(crate) fn u8(self, value: u8) -> Self {
        self.put(&[value])
    }

    pub(crate) fn u16(self, value: u16) -> Self {
        self.put(&value.to_le_bytes())
    }

    pub(crate) fn u32(self, value: u32) -> Self {
        self.put(&value.to_le_bytes())
    }

    pub(crate) fn u64(self, value: u64) -> Self {
        self.put(&value.to_le_bytes())
    }

    pub(crate) fn bytes(self, value: &[u8]) -> Self {
        self.put(value)
    }

    pub(crate) fn finish(self) -> [u8; N] {
        debug_assert_eq!(self.at, N, "every byte of the encoding is written");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: Format = Format {
        what: "test format",
        kind: 0x7e,
        len: HEADER_LEN + 4,
    };

    fn problem(bytes: &[u8]) -> WireProblem {
        match TEST.open(bytes).map(|mut r| r.u32()) {
            Err(Error::BadWireFormat {
                what: "test format",
                problem,
            }) => problem,
            other => panic!("{bytes:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn tag_then_exact_length() {
        let good = TEST.writer::<6>().u32(0xdead_beef).finish();
        assert_eq!(good, [0x7e, VERSION, 0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(TEST.open(&good).unwrap().u32().unwrap(), 0xdead_beef);

        for short in [&[][..], &[0x7e]] {
            assert_eq!(
                problem(short),
                WireProblem::Length {
                    expected: 6,
                    actual: short.len()
                }
            );
        }
        assert_eq!(
            problem(&[0x45, VERSION, 0, 0, 0, 0]),
            WireProblem::Kind {
                expected: 0x7e,
                actual: 0x45
            }
        );
        // Another version is named as such even when its length differs too.
        assert_eq!(
            problem(&[0x7e, VERSION + 1, 0]),
            WireProblem::Version {
                expected: VERSION,
                actual: VERSION + 1
            }
        );
        assert_eq!(
            problem(&good[..5]),
            WireProblem::Length {
                expected: 6,
                actual: 5
            }
        );
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(
            problem(&long),
            WireProblem::Length {
                expected: 6,
                actual: 7
            }
        );
    }

    #[test]
    fn a_reader_past_the_layout_refuses_instead_of_panicking() {
        let mut reader = TEST.open(&[0x7e, VERSION, 1, 2, 3, 4]).unwrap();
        assert_eq!(reader.u16().unwrap(), 0x0201);
        assert!(matches!(
            reader.u32(),
            Err(Error::BadWireFormat {
                problem: WireProblem::Length { .. },
                ..
            })
        ));
    }
}
