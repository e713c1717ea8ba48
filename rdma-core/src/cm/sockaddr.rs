//! Socket addresses between Rust's `SocketAddr` and the C `sockaddr` librdmacm takes.

use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// A `sockaddr_storage` holding `addr`, to pass as a `sockaddr*`.
pub(crate) fn to_storage(addr: SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain C data; all zeroes is a valid (unspecified) address.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe {
                std::ptr::write(
                    std::ptr::addr_of_mut!(storage).cast::<libc::sockaddr_in>(),
                    sin,
                )
            };
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe {
                std::ptr::write(
                    std::ptr::addr_of_mut!(storage).cast::<libc::sockaddr_in6>(),
                    sin6,
                )
            };
        }
    }
    storage
}

/// The address at `addr`, when it is IPv4 or IPv6.
///
/// # Safety
/// `addr` points to readable memory of at least `size_of::<sockaddr_storage>()` bytes (as
/// the address fields of an `rdma_cm_id` are).
pub(crate) unsafe fn from_raw(addr: *const libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the caller guarantees a readable sockaddr_storage.
    let storage = unsafe { addr.read_unaligned() };
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            const _: () =
                assert!(size_of::<libc::sockaddr_in>() <= size_of::<libc::sockaddr_storage>());
            // SAFETY: the family says it is a sockaddr_in, which fits in the storage.
            let sin = unsafe {
                std::ptr::addr_of!(storage)
                    .cast::<libc::sockaddr_in>()
                    .read_unaligned()
            };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6, which fits in the storage.
            let sin6 = unsafe {
                std::ptr::addr_of!(storage)
                    .cast::<libc::sockaddr_in6>()
                    .read_unaligned()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for text in [
            "169.254.77.1:7471",
            "[fe80::1%2]:9",
            "[::1]:0",
            "0.0.0.0:65535",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            let storage = to_storage(addr);
            // SAFETY: a sockaddr_storage on the stack.
            assert_eq!(unsafe { from_raw(&storage) }, Some(addr), "{text}");
        }
        // SAFETY: all zeroes is a valid sockaddr_storage (family 0: unspecified).
        let empty: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { from_raw(&empty) }, None);
    }
}
