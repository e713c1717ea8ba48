//! The 40 bytes in front of every datagram receive, kept out of the user's buffer, and the
//! room behind it that keeps a long datagram from failing the queue pair.
//!
//! The device writes a datagram's Global Route Header (or, for RoCE v2 over IPv4, the IPv4
//! header in its last 20 bytes) into the first 40 bytes of the receive's scatter list, then
//! the payload. A receive here is posted as up to three pieces: a 40-byte block of the queue
//! pair's own pool, the user's buffers (so the payload lands at offset 0 of those), and,
//! when they are shorter than the MTU, a block of the pool for the rest of the MTU.
//!
//! That last block is there because devices disagree on a datagram longer than its receive:
//! the specification makes it an error of that receive alone, but Soft-RoCE (Linux 6.1)
//! completes the receive with `IBV_WC_LOC_QP_OP_ERR` and puts the whole queue pair in the
//! error state, and a more recent rxe drops the datagram but leaves the receive half
//! consumed. With room for any datagram of the MTU, the device never sees a length error: a
//! datagram longer than the user's buffers completes normally, and anyrdma fails that
//! receive alone with [`Error::DatagramTruncated`](crate::Error::DatagramTruncated).

use crate::buffers::{sealed, Buffers};
use crate::device::Gid;
use crate::mr::LocalBuf;

/// Bytes the device puts in front of every datagram it delivers.
pub const GRH_LEN: usize = 40;

/// Where the IPv4 header of a RoCE v2 datagram over IPv4 starts in the 40 bytes.
const IPV4_AT: usize = 20;

/// A receive's pieces: the GRH block, the user's buffers, the rest of the MTU.
pub(crate) struct WithGrh<B> {
    /// `None` only when the block could not be allocated: nothing was posted then.
    pub(crate) grh: Option<LocalBuf>,
    pub(crate) user: B,
    /// Room for the part of a datagram that does not fit the user's buffers; never read.
    pub(crate) overflow: Option<LocalBuf>,
}

impl<B: Buffers> sealed::Sealed for WithGrh<B> {}
impl<B: Buffers> Buffers for WithGrh<B> {
    fn for_each_piece(&self, f: &mut dyn FnMut(sealed::Piece<'_>)) {
        if let Some(grh) = &self.grh {
            grh.for_each_piece(f);
        }
        self.user.for_each_piece(f);
        if let Some(overflow) = &self.overflow {
            overflow.for_each_piece(f);
        }
    }
}

/// The sender's GID as the 40 bytes in front of a datagram give it, or `None` when they
/// hold no GRH (`present`: the completion's `IBV_WC_GRH`) or nothing recognisable.
///
/// RoCE v2 over IPv4 puts the IPv4 header in the last 20 bytes (the first 20 are
/// undefined): its source address is the sender's IPv4-mapped GID. Otherwise the 40 bytes
/// are an IPv6 header or an InfiniBand GRH, whose source GID sits at bytes 8 to 24. The two
/// are told apart as libibverbs' `ibv_init_ah_from_wc` does: a valid IPv4 header (version 4,
/// five words, a correct checksum) at byte 20 makes it IPv4.
pub(crate) fn sender_gid(grh: &[u8; GRH_LEN], present: bool) -> Option<Gid> {
    if !present {
        return None;
    }
    let ipv6 = grh[0] >> 4 == 6;
    let ip4 = &grh[IPV4_AT..];
    let ipv4 = ip4[0] == 0x45 && (!ipv6 || ipv4_checksum_ok(ip4));
    if ipv4 {
        let mut gid = [0u8; 16];
        gid[10] = 0xff;
        gid[11] = 0xff;
        gid[12..].copy_from_slice(&ip4[12..16]);
        return Some(Gid(gid));
    }
    if ipv6 {
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&grh[8..24]);
        return Some(Gid(gid));
    }
    None
}

/// Whether the 20-byte IPv4 header `header` carries a correct checksum (the one's
/// complement sum of its 16-bit words is all ones).
fn ipv4_checksum_ok(header: &[u8]) -> bool {
    let mut sum: u32 = header[..20]
        .chunks_exact(2)
        .map(|word| u32::from(u16::from_be_bytes([word[0], word[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 header from 10.0.0.1 to 10.0.0.2, UDP, with its checksum.
    fn ipv4_header() -> [u8; 20] {
        let mut h = [
            0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let mut sum: u32 = h
            .chunks_exact(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        h
    }

    #[test]
    fn roce_v2_ipv4_sender_is_the_mapped_source_address() {
        let mut grh = [0u8; GRH_LEN];
        grh[IPV4_AT..].copy_from_slice(&ipv4_header());
        let gid = sender_gid(&grh, true).expect("an IPv4 header");
        assert_eq!(gid.to_ipv4(), Some(std::net::Ipv4Addr::new(10, 0, 0, 1)));
        // Undefined bytes in front that look like IPv6 change nothing while the checksum
        // holds.
        grh[0] = 0x60;
        assert_eq!(sender_gid(&grh, true), Some(gid));
    }

    #[test]
    fn ipv6_or_infiniband_sender_is_the_source_gid() {
        let mut grh = [0u8; GRH_LEN];
        grh[0] = 0x60;
        for (i, byte) in grh[8..24].iter_mut().enumerate() {
            *byte = 0xf0 + i as u8;
        }
        // Bytes 20.. are then part of the GIDs: a 0x45 there without a valid checksum is
        // not an IPv4 header.
        grh[IPV4_AT] = 0x45;
        let gid = sender_gid(&grh, true).expect("a GRH");
        assert_eq!(&gid.0[..], &grh[8..24]);
    }

    #[test]
    fn no_grh_no_sender_gid() {
        let mut grh = [0u8; GRH_LEN];
        grh[IPV4_AT..].copy_from_slice(&ipv4_header());
        assert_eq!(sender_gid(&grh, false), None);
        assert_eq!(sender_gid(&[0u8; GRH_LEN], true), None);
    }
}
