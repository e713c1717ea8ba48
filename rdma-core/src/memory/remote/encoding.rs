//! The encoding of a [`RemoteRegion`] that peers exchange: a kind byte (`R`), the format
//! version, then address, length and remote key, little-endian.

use super::RemoteRegion;
use crate::error::{Error, Result, WireProblem};
use crate::wire::{Format, HEADER_LEN};

impl RemoteRegion {
    /// Size of [`RemoteRegion::to_bytes`].
    pub const ENCODED_LEN: usize = FORMAT.len;

    /// The encoding a peer decodes with [`RemoteRegion::from_bytes`]: a kind byte (`R`),
    /// the format version, then address, length and remote key, little-endian.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        FORMAT
            .writer()
            .u64(self.addr)
            .u64(self.len)
            .u32(self.rkey)
            .finish()
    }

    /// Decodes and checks the bytes of a peer's [`RemoteRegion::to_bytes`]: any slice is
    /// accepted as input.
    ///
    /// # Errors
    /// [`Error::BadWireFormat`] when the bytes are not a whole region of this format and
    /// version, or when the region runs past the end of the address space
    /// ([`WireProblem`] says which).
    pub fn from_bytes(bytes: &[u8]) -> Result<RemoteRegion> {
        let mut fields = FORMAT.open(bytes)?;
        let region = RemoteRegion {
            addr: fields.u64()?,
            len: fields.u64()?,
            rkey: fields.u32()?,
        };
        if region.addr.checked_add(region.len).is_none() {
            return Err(FORMAT.error(WireProblem::AddressWraps {
                addr: region.addr,
                len: region.len,
            }));
        }
        Ok(region)
    }
}

impl TryFrom<&[u8]> for RemoteRegion {
    type Error = Error;

    /// As [`RemoteRegion::from_bytes`].
    fn try_from(bytes: &[u8]) -> Result<RemoteRegion> {
        RemoteRegion::from_bytes(bytes)
    }
}

/// kind, version, addr, len, rkey.
const FORMAT: Format = Format {
    what: "remote region",
    kind: b'R',
    len: HEADER_LEN + 8 + 8 + 4,
};
