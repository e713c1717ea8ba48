//! Descriptions of memory on a peer.

use std::fmt;
use std::ops::{Bound, RangeBounds};

use crate::error::{Error, Result};

/// Memory on a peer that this side may access with RDMA read, write or atomics.
///
/// It is plain data: the peer makes it from a registered region
/// ([`crate::MemoryRegion::remote`]) and sends it over any channel (see
/// [`RemoteRegion::to_bytes`]). Every operation checks the access against `len` before
/// posting, so an out-of-bounds access is a local [`Error::OutOfBounds`] and never reaches
/// the wire.
///
/// ```
/// use anyrdma_core::RemoteRegion;
/// let region = RemoteRegion { addr: 0x1000, len: 4096, rkey: 7 };
/// let tail = region.slice(4000..).unwrap();
/// assert_eq!((tail.addr, tail.len), (0x1000 + 4000, 96));
/// assert!(region.slice(4000..4100).is_err());
/// assert_eq!(RemoteRegion::from_bytes(&region.to_bytes()), region);
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
    /// Size of [`RemoteRegion::to_bytes`].
    pub const ENCODED_LEN: usize = 20;

    /// The sub-region `range` (offsets relative to `addr`).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] when the range does not lie inside this region.
    pub fn slice(&self, range: impl RangeBounds<u64>) -> Result<RemoteRegion> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => self.len,
        };
        let len = end.saturating_sub(start);
        self.check(start, len)?;
        Ok(RemoteRegion {
            addr: self.addr + start,
            len,
            rkey: self.rkey,
        })
    }

    /// Checks that `len` bytes at `offset` lie inside the region.
    pub(crate) fn check(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::OutOfBounds {
                region: *self,
                offset,
                len,
            }),
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

    /// Fixed-size little-endian encoding: addr, len, rkey.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.addr.to_le_bytes());
        out[8..16].copy_from_slice(&self.len.to_le_bytes());
        out[16..].copy_from_slice(&self.rkey.to_le_bytes());
        out
    }

    /// Decodes [`RemoteRegion::to_bytes`].
    pub fn from_bytes(bytes: &[u8; Self::ENCODED_LEN]) -> RemoteRegion {
        let word = |range: std::ops::Range<usize>| {
            let mut buf = [0u8; 8];
            buf[..range.len()].copy_from_slice(&bytes[range]);
            u64::from_le_bytes(buf)
        };
        RemoteRegion {
            addr: word(0..8),
            len: word(8..16),
            rkey: word(16..20) as u32,
        }
    }
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
