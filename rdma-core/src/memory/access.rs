//! Access rights of registered memory. A file of its own that imports nothing from the crate,
//! so that the error module can describe a refused access without importing registrations.

use std::ops::BitOr;

use rdma_sys::ibv_access_flags;

/// Access rights of registered memory. Local access is always granted; remote rights are
/// opt-in and should be as narrow as the protocol allows.
///
/// ```
/// use anyrdma_core::Access;
/// let rights = Access::REMOTE_READ | Access::REMOTE_WRITE;
/// assert!(rights.contains(Access::REMOTE_WRITE));
/// assert!(!rights.contains(Access::REMOTE_ATOMIC));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Access(u32);

impl Access {
    /// Local use only: sends, receives, and the local side of RDMA reads, writes and atomics.
    pub const LOCAL: Access = Access(ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0);
    /// Peers may RDMA-read the region.
    pub const REMOTE_READ: Access = Access(ibv_access_flags::IBV_ACCESS_REMOTE_READ.0);
    /// Peers may RDMA-write the region.
    pub const REMOTE_WRITE: Access = Access(ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0);
    /// Peers may run atomics on the region.
    pub const REMOTE_ATOMIC: Access = Access(ibv_access_flags::IBV_ACCESS_REMOTE_ATOMIC.0);

    /// Whether every right in `other` is in `self`.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any remote right is granted.
    pub fn is_remote(self) -> bool {
        self.0 & (Self::REMOTE_READ.0 | Self::REMOTE_WRITE.0 | Self::REMOTE_ATOMIC.0) != 0
    }

    /// Whether a peer may change the memory (remote write or atomic rights): such memory is a
    /// [`SharedRegion`](crate::SharedRegion), never a [`LocalBuf`](crate::LocalBuf).
    pub fn is_peer_writable(self) -> bool {
        self.0 & (Self::REMOTE_WRITE.0 | Self::REMOTE_ATOMIC.0) != 0
    }

    pub(crate) fn verbs_flags(self) -> i32 {
        // Receives, read results and atomic results are local writes: always allowed.
        (self.0 | Self::LOCAL.0) as i32
    }
}

impl BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}
