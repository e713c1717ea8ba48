//! A remote key over exactly one byte range: what a grant hands to the peer.
//!
//! Each grant gets a registration of its own over its range, so its key reaches those bytes
//! and nothing around them (a key of the region's own registration would reach all of it),
//! with exactly the rights granted. Dropping the key deregisters it: from then on the peer's
//! accesses with it fail with a remote access error. The bytes stay allocated while the key
//! exists (it holds the region's registration), and for ever if the deregistration fails.

use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys::ibv_mr;

use crate::error::Result;
use crate::mr::{dereg_mr, reg_mr, Access, MrInner};
use crate::remote::RemoteRegion;
use crate::shared::SharedRegion;

use super::control::Rights;

/// A registration of `remote`'s bytes with the rights of one grant.
pub(crate) struct RangeKey {
    raw: NonNull<ibv_mr>,
    remote: RemoteRegion,
    /// The region's registration: keeps the bytes allocated while the key can reach them.
    memory: Arc<MrInner>,
}

// SAFETY: the ibv_mr handle may be used and deregistered from any thread; the rest is
// immutable or thread-safe.
unsafe impl Send for RangeKey {}
// SAFETY: as above; shared references read immutable fields only.
unsafe impl Sync for RangeKey {}

/// The verbs access flags for `rights` (remote write and atomics need local write too).
pub(crate) fn access(rights: Rights) -> Access {
    let mut access = Access::LOCAL;
    if rights.contains(Rights::READ) {
        access = access | Access::REMOTE_READ;
    }
    if rights.contains(Rights::WRITE) {
        access = access | Access::REMOTE_WRITE;
    }
    if rights.contains(Rights::ATOMIC) {
        access = access | Access::REMOTE_ATOMIC;
    }
    access
}

impl RangeKey {
    /// Registers bytes `offset..offset + len` of `region` (checked by the caller: inside it,
    /// `len > 0`) with `rights`.
    pub(crate) fn register(
        region: &SharedRegion,
        offset: usize,
        len: usize,
        rights: Rights,
    ) -> Result<RangeKey> {
        let span = region.span();
        debug_assert!(len > 0 && offset + len <= span.len);
        let memory: Arc<MrInner> = Arc::clone(&span.mr);
        let start = memory.byte(span.offset + offset);
        let ptr = NonNull::new(start).expect("a registration's bytes are not at address 0");
        // SAFETY: `ptr..ptr+len` lies inside the region's allocation (checked by the caller),
        // which `memory` keeps allocated until this key is deregistered (Drop), or for ever.
        let (raw, _lkey, rkey) = unsafe { reg_mr(&memory.pd, ptr, len, access(rights)) }?;
        Ok(RangeKey {
            raw,
            remote: RemoteRegion {
                addr: start as u64,
                len: len as u64,
                rkey,
            },
            memory,
        })
    }

    /// The range and key as the peer uses them.
    pub(crate) fn remote(&self) -> RemoteRegion {
        self.remote
    }
}

impl Drop for RangeKey {
    fn drop(&mut self) {
        // SAFETY: the key is only ever used by the peer's requests, never by a local work
        // request; it is deregistered once, here.
        if !unsafe { dereg_mr(self.raw) } {
            // Still registered: the peer may still reach the bytes, so they are never freed.
            std::mem::forget(Arc::clone(&self.memory));
        }
    }
}
