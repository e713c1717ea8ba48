//! A queue pair's address as its peer needs it, and the bytes it travels as.

use crate::device::Gid;

/// What a peer needs to connect to a queue pair: exchange it out of band (TCP, a file...),
/// e.g. with [`Endpoint::to_bytes`].
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
    pub const ENCODED_LEN: usize = 30;

    /// Fixed-size little-endian encoding.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0; Self::ENCODED_LEN];
        out[..4].copy_from_slice(&self.qpn.to_le_bytes());
        out[4..8].copy_from_slice(&self.psn.to_le_bytes());
        out[8..24].copy_from_slice(self.gid.as_bytes());
        out[24..26].copy_from_slice(&self.lid.to_le_bytes());
        out[26..30].copy_from_slice(&self.mtu.to_le_bytes());
        out
    }

    /// Decodes [`Endpoint::to_bytes`].
    pub fn from_bytes(bytes: &[u8; Self::ENCODED_LEN]) -> Endpoint {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let mut gid = [0; 16];
        gid.copy_from_slice(&bytes[8..24]);
        Endpoint {
            qpn: u32_at(0),
            psn: u32_at(4),
            gid: Gid(gid),
            lid: u16::from_le_bytes([bytes[24], bytes[25]]),
            mtu: u32_at(26),
        }
    }
}

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
        assert_eq!(Endpoint::from_bytes(&e.to_bytes()), e);
    }
}
