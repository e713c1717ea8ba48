//! A queue pair's address as its peer needs it, and the bytes it travels as.

use crate::device::Gid;
use crate::error::{Error, Result, WireProblem};
use crate::wire::{Format, HEADER_LEN};

/// What a peer needs to connect to a queue pair: exchange it out of band (TCP, a file...),
/// e.g. with [`Endpoint::to_bytes`] and [`Endpoint::from_bytes`], which checks what it is
/// given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Queue pair number.
    pub qpn: u32,
    /// Initial packet sequence number (random, 24 bits).
    pub psn: u32,
    /// Port GID (RoCE and routed InfiniBand).
    pub gid: Gid,
    /// Port LID (InfiniBand).
    pub lid: u16,
    /// Active MTU of the port, in bytes.
    pub mtu: u32,
}

impl Endpoint {
    /// Size of [`Endpoint::to_bytes`].
    pub const ENCODED_LEN: usize = FORMAT.len;

    /// The encoding a peer decodes with [`Endpoint::from_bytes`]: a kind byte (`E`), the
    /// format version, then QP number, PSN, GID, LID and MTU, little-endian.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        FORMAT
            .writer()
            .u32(self.qpn)
            .u32(self.psn)
            .bytes(self.gid.as_bytes())
            .u16(self.lid)
            .u32(self.mtu)
            .finish()
    }

    /// Decodes and checks the bytes of a peer's [`Endpoint::to_bytes`]: any slice is
    /// accepted as input.
    ///
    /// ```
    /// use anyrdma_core::{Endpoint, Error, Gid};
    /// let mine = Endpoint { qpn: 0x11, psn: 0xabcdef, gid: Gid([0; 16]), lid: 3, mtu: 1024 };
    /// assert_eq!(Endpoint::from_bytes(&mine.to_bytes())?, mine);
    /// assert!(Endpoint::from_bytes(&mine.to_bytes()[..20]).is_err()); // truncated
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::BadWireFormat`] when the bytes are not a whole endpoint of this format and
    /// version, or when the QP number or PSN does not fit in 24 bits, or the MTU is not a
    /// valid one ([`WireProblem`] says which).
    pub fn from_bytes(bytes: &[u8]) -> Result<Endpoint> {
        let mut fields = FORMAT.open(bytes)?;
        let endpoint = Endpoint {
            qpn: fields.u32()?,
            psn: fields.u32()?,
            gid: Gid(fields.bytes16()?),
            lid: fields.u16()?,
            mtu: fields.u32()?,
        };
        for (field, value) in [("QP number", endpoint.qpn), ("PSN", endpoint.psn)] {
            if value >= 1 << 24 {
                return Err(FORMAT.error(WireProblem::Above24Bits { field, value }));
            }
        }
        if !VALID_MTUS.contains(&endpoint.mtu) {
            return Err(FORMAT.error(WireProblem::Mtu(endpoint.mtu)));
        }
        Ok(endpoint)
    }
}

impl TryFrom<&[u8]> for Endpoint {
    type Error = Error;

    /// As [`Endpoint::from_bytes`].
    fn try_from(bytes: &[u8]) -> Result<Endpoint> {
        Endpoint::from_bytes(bytes)
    }
}

/// The path MTUs of InfiniBand and RoCE, in bytes.
const VALID_MTUS: [u32; 5] = [256, 512, 1024, 2048, 4096];

/// kind, version, qpn, psn, gid, lid, mtu.
const FORMAT: Format = Format {
    what: "endpoint",
    kind: b'E',
    len: HEADER_LEN + 4 + 4 + 16 + 2 + 4,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_round_trips() {
        let e = Endpoint {
            qpn: 0x11,
            psn: 0xabcdef,
            gid: Gid([7; 16]),
            lid: 3,
            mtu: 4096,
        };
        assert_eq!(Endpoint::from_bytes(&e.to_bytes()).unwrap(), e);
        assert_eq!(Endpoint::try_from(&e.to_bytes()[..]).unwrap(), e);
    }
}
