//! Descriptions of memory on a peer.

use std::fmt;
use std::ops::{Bound, RangeBounds};

use crate::error::{Error, Result};

// The encoding peers exchange lives in a child module: it uses the wire framing, which uses
// the error module, which names RemoteRegion; kept apart, this file and the error module name
// each other and nothing else.
mod encoding;

/// Memory on a peer that this side may access with RDMA read, write or atomics.
///
/// It is plain data: the peer makes it from registered memory ([`crate::SharedRegion::remote`],
/// or [`crate::LocalBuf::remote`] for read-only access) and sends it over any channel (see
/// [`RemoteRegion::to_bytes`]; [`RemoteRegion::from_bytes`] checks what arrives). Every
/// operation checks the access against `len` before posting, so an out-of-bounds access is
/// a local [`Error::OutOfBounds`] and never reaches the wire.
///
/// ```
/// use anyrdma_core::RemoteRegion;
/// let region = RemoteRegion { addr: 0x1000, len: 4096, rkey: 7 };
/// let tail = region.slice(4000..).unwrap();
/// assert_eq!((tail.addr, tail.len), (0x1000 + 4000, 96));
/// assert!(region.slice(4000..4100).is_err());
/// assert_eq!(RemoteRegion::from_bytes(&region.to_bytes())?, region);
/// # Ok::<(), anyrdma_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteRegion {
    /// The peer's virtual address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// The remote key that grants access.
    pub rkey: u32,
}

impl RemoteRegion {
    /// The sub-region `range` (offsets relative to `addr`).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] when the range does not lie inside this region,
    /// [`Error::ReversedRange`] when it starts after it ends, [`Error::RegionWraps`] when
    /// this region runs past the end of the address space.
    pub fn slice(&self, range: impl RangeBounds<u64>) -> Result<RemoteRegion> {
        self.check_wrap()?;
        // In u128: `..=u64::MAX` ends at 2^64, which no u64 holds.
        let start = match range.start_bound() {
            Bound::Included(&s) => u128::from(s),
            Bound::Excluded(&s) => u128::from(s) + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => u128::from(e) + 1,
            Bound::Excluded(&e) => u128::from(e),
            Bound::Unbounded => u128::from(self.len),
        };
        let len = u128::from(self.len);
        if start > len || end > len {
            return Err(Error::OutOfBounds {
                region: *self,
                offset: saturate(start),
                len: saturate(end.saturating_sub(start)),
            });
        }
        if start > end {
            return Err(Error::ReversedRange {
                start: saturate(start),
                end: saturate(end),
            });
        }
        // Both bounds are at most `self.len`, so they fit in u64, and `addr + start` does
        // not wrap because `addr + len` does not.
        let (start, end) = (saturate(start), saturate(end));
        Ok(RemoteRegion {
            addr: self.addr + start,
            len: end - start,
            rkey: self.rkey,
        })
    }

    /// Checks that `len` bytes at `offset` lie inside the region.
    pub(crate) fn check(&self, offset: u64, len: u64) -> Result<()> {
        self.check_wrap()?;
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::OutOfBounds {
                region: *self,
                offset,
                len,
            }),
        }
    }

    /// Checks that the region ends inside the address space. No registration can be a
    /// region that does not, and offsets into it would overflow.
    fn check_wrap(&self) -> Result<()> {
        match self.addr.checked_add(self.len) {
            Some(_) => Ok(()),
            None => Err(Error::RegionWraps { region: *self }),
        }
    }

    /// Checks the region is a valid target of an 8-byte atomic.
    pub(crate) fn check_atomic(&self) -> Result<()> {
        self.check(0, 8)?;
        if self.addr % 8 != 0 {
            return Err(Error::Misaligned { addr: self.addr });
        }
        Ok(())
    }
}

/// A range bound as u64 (bounds beyond it only appear in errors).
fn saturate(bound: u128) -> u64 {
    u64::try_from(bound).unwrap_or(u64::MAX)
}

impl fmt::Display for RemoteRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rkey {:#x}, {} bytes at {:#x}",
            self.rkey, self.len, self.addr
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_bounds_checked() {
        let r = RemoteRegion {
            addr: 4096,
            len: 100,
            rkey: 1,
        };
        assert_eq!(r.slice(..).unwrap(), r);
        assert_eq!(
            r.slice(10..20).unwrap(),
            RemoteRegion {
                addr: 4106,
                len: 10,
                rkey: 1
            }
        );
        assert_eq!(r.slice(100..).unwrap().len, 0);
        assert!(matches!(
            r.slice(90..101),
            Err(Error::OutOfBounds {
                offset: 90,
                len: 11,
                ..
            })
        ));
        assert!(matches!(
            r.slice(u64::MAX..),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(
            r.check(u64::MAX, 2).is_err(),
            "overflow must not wrap into bounds"
        );
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges)] // reversed on purpose: the case under test
    fn reversed_ranges_are_refused() {
        let r = RemoteRegion {
            addr: 4096,
            len: 100,
            rkey: 1,
        };
        assert!(matches!(
            r.slice(20..10),
            Err(Error::ReversedRange { start: 20, end: 10 })
        ));
        assert!(matches!(
            r.slice((Bound::Excluded(20), Bound::Included(19))),
            Err(Error::ReversedRange { start: 21, end: 20 })
        ));
        // Empty ranges are not reversed.
        assert_eq!(r.slice(20..20).unwrap().len, 0);
        assert_eq!(
            r.slice((Bound::Excluded(19), Bound::Excluded(20)))
                .unwrap()
                .len,
            0
        );
    }

    #[test]
    fn slices_never_wrap_the_address() {
        let wraps = RemoteRegion {
            addr: u64::MAX - 4,
            len: 100,
            rkey: 1,
        };
        for result in [wraps.slice(10..20), wraps.slice(..), wraps.slice(0..0)] {
            assert!(
                matches!(result, Err(Error::RegionWraps { region }) if region == wraps),
                "{result:?}"
            );
        }
        assert!(matches!(wraps.check(0, 1), Err(Error::RegionWraps { .. })));
        let all = RemoteRegion {
            addr: 0,
            len: u64::MAX,
            rkey: 1,
        };
        assert!(
            matches!(all.slice(..=u64::MAX), Err(Error::OutOfBounds { .. })),
            "2^64 bytes do not fit"
        );
        assert_eq!(all.slice(..u64::MAX).unwrap(), all);
        let top = all.slice(u64::MAX - 1..).unwrap();
        assert_eq!((top.addr, top.len), (u64::MAX - 1, 1));
        let last = RemoteRegion {
            addr: u64::MAX - 8,
            len: 8,
            rkey: 1,
        };
        assert_eq!(last.slice(4..=7).unwrap().addr, u64::MAX - 4);
    }

    #[test]
    fn a_slice_that_does_not_fit_claims_nothing_about_posting() {
        let r = RemoteRegion {
            addr: 4096,
            len: 100,
            rkey: 1,
        };
        let text = r.slice(90..101).unwrap_err().to_string();
        assert!(
            !text.contains("nothing was posted") && text.contains("11 bytes at offset 90"),
            "{text}"
        );
    }

    #[test]
    fn atomics_need_alignment_and_room() {
        assert!(RemoteRegion {
            addr: 8,
            len: 8,
            rkey: 1
        }
        .check_atomic()
        .is_ok());
        assert!(matches!(
            RemoteRegion {
                addr: 12,
                len: 8,
                rkey: 1
            }
            .check_atomic(),
            Err(Error::Misaligned { addr: 12 })
        ));
        assert!(matches!(
            RemoteRegion {
                addr: 8,
                len: 4,
                rkey: 1
            }
            .check_atomic(),
            Err(Error::OutOfBounds { .. })
        ));
    }
}
