//! Address handles: where a datagram goes, as the device needs it.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rdma_sys::*;

use crate::device::Gid;
use crate::error::{Error, Result};
use crate::pd::ProtectionDomain;
use crate::wake::lock;

/// Hop limit of the GRH (the IP TTL for RoCE v2), as the RC path uses.
const HOP_LIMIT: u8 = 64;

/// Most address handles a queue pair's cache keeps (see [`AhCache`]).
const CACHE_CAPACITY: usize = 4096;

/// Address handles alive in this process.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// How many address handles made by anyrdma are alive in this process: a leak check (a
/// handle lives until its last clone, cache entry and in-flight send are gone).
pub fn live_address_handles() -> usize {
    LIVE.load(Ordering::Acquire)
}

/// An address handle (`ibv_ah`): the route to one destination port, which a datagram send
/// names instead of a connection.
///
/// Cheap to clone. It keeps its protection domain alive, and every send that names it keeps
/// it alive until the device has completed that send (even when the send's future is
/// dropped), so it is destroyed only once nothing in flight refers to it. A
/// [`UdQueuePair`](crate::ud::UdQueuePair) caches one per destination
/// ([`UdQueuePair::peer`](crate::ud::UdQueuePair::peer)); creating one directly is for
/// address handles shared between queue pairs.
///
/// If the device refuses to destroy it, it is leaked (with its protection domain), never
/// freed.
#[derive(Clone)]
pub struct AddressHandle {
    inner: Arc<AhInner>,
}

struct AhInner {
    raw: NonNull<ibv_ah>,
    gid: Gid,
    lid: u16,
    /// Declared last: dropped after the handle is destroyed.
    pd: ProtectionDomain,
}

// SAFETY: an `ibv_ah` is an immutable description once created; libibverbs lets any thread
// name it in a work request or destroy it. It is destroyed only in `Drop`, once.
unsafe impl Send for AhInner {}
// SAFETY: as above: shared references only read it.
unsafe impl Sync for AhInner {}

impl AddressHandle {
    /// An address handle in `pd` for the port with GID `gid` (and, on InfiniBand, LID
    /// `lid`; 0 on RoCE), reached from the port and GID index that `pd`'s context uses (on
    /// RoCE the connection manager's choice, RoCE v2 where the port has it: see
    /// [`device::default_port`](crate::device::default_port)).
    ///
    /// On RoCE the kernel resolves the destination's Ethernet address here, which may wait
    /// for a neighbour lookup.
    ///
    /// # Errors
    /// [`Error::Verbs`] from `ibv_create_ah` when the destination cannot be reached from
    /// the port (no route to the GID's address, or a zero GID on RoCE).
    pub fn new(pd: &ProtectionDomain, gid: Gid, lid: u16) -> Result<AddressHandle> {
        let ctx = pd.context();
        // SAFETY: ibv_ah_attr is plain C data; zero is valid for the fields not set.
        let mut attr: ibv_ah_attr = unsafe { std::mem::zeroed() };
        attr.dlid = lid;
        attr.port_num = ctx.port();
        if !gid.is_zero() {
            attr.is_global = 1;
            attr.grh.dgid = gid.to_raw();
            attr.grh.sgid_index = ctx.gid_index();
            attr.grh.hop_limit = HOP_LIMIT;
        }
        // SAFETY: the PD is valid (held by `pd`) and `attr` lives across the call.
        let raw = unsafe { ibv_create_ah(pd.raw(), &mut attr) };
        let raw = NonNull::new(raw).ok_or_else(|| {
            Error::last_os("ibv_create_ah").with_hint(
                "check that the destination GID is reachable from this port (a route to its \
                 address on the RDMA device's network interface)",
            )
        })?;
        LIVE.fetch_add(1, Ordering::AcqRel);
        Ok(AddressHandle {
            inner: Arc::new(AhInner {
                raw,
                gid,
                lid,
                pd: pd.clone(),
            }),
        })
    }

    /// An address handle in `pd` from attributes the connection manager computed (the
    /// path of a datagram resolution).
    pub(crate) fn from_attr(pd: &ProtectionDomain, attr: &ibv_ah_attr) -> Result<AddressHandle> {
        let mut attr = *attr;
        let gid = if attr.is_global != 0 {
            Gid::from_raw(&attr.grh.dgid)
        } else {
            Gid::default()
        };
        // SAFETY: the PD is valid (held by `pd`) and `attr` lives across the call.
        let raw = unsafe { ibv_create_ah(pd.raw(), &mut attr) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last_os("ibv_create_ah"))?;
        LIVE.fetch_add(1, Ordering::AcqRel);
        Ok(AddressHandle {
            inner: Arc::new(AhInner {
                raw,
                gid,
                lid: attr.dlid,
                pd: pd.clone(),
            }),
        })
    }

    /// The destination GID.
    pub fn gid(&self) -> Gid {
        self.inner.gid
    }

    /// The destination LID (0 on RoCE).
    pub fn lid(&self) -> u16 {
        self.inner.lid
    }

    /// The protection domain the handle belongs to.
    pub fn pd(&self) -> &ProtectionDomain {
        &self.inner.pd
    }

    pub(crate) fn raw(&self) -> *mut ibv_ah {
        self.inner.raw.as_ptr()
    }
}

impl std::fmt::Debug for AddressHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressHandle")
            .field("gid", &self.inner.gid)
            .field("lid", &self.inner.lid)
            .finish()
    }
}

impl Drop for AhInner {
    fn drop(&mut self) {
        // SAFETY: no clone is left, so no work request in flight names the handle (each
        // holds a clone until its completion); destroyed only here, once.
        let rc = unsafe { ibv_destroy_ah(self.raw.as_ptr()) };
        if rc == 0 {
            LIVE.fetch_sub(1, Ordering::AcqRel);
        } else {
            crate::trace::event!(
                error,
                errno = rc,
                "ibv_destroy_ah failed: the address handle and its protection domain are leaked"
            );
            // The device refused: keep the PD it belongs to (a leak is safe; freeing what
            // the device may still use is not).
            let pd = self.pd.clone();
            std::mem::forget(pd);
        }
    }
}

/// A queue pair's address handles, one per destination, so that sending to many peers does
/// not create a handle per send.
///
/// Bounded: when [`CACHE_CAPACITY`] destinations are cached, it starts again from empty
/// (handles that sends or peers still hold stay alive with them).
pub(crate) struct AhCache {
    pd: ProtectionDomain,
    handles: Mutex<HashMap<(Gid, u16), AddressHandle>>,
}

impl AhCache {
    pub(crate) fn new(pd: &ProtectionDomain) -> AhCache {
        AhCache {
            pd: pd.clone(),
            handles: Mutex::new(HashMap::new()),
        }
    }

    /// The handle for `(gid, lid)`, created on first use.
    pub(crate) fn get(&self, gid: Gid, lid: u16) -> Result<AddressHandle> {
        if let Some(found) = lock(&self.handles).get(&(gid, lid)) {
            return Ok(found.clone());
        }
        // Created without the lock held: it may wait for a neighbour lookup. Two callers
        // racing for one destination both create one; the second insert replaces the first,
        // which lives on with its holder.
        let created = AddressHandle::new(&self.pd, gid, lid)?;
        let mut handles = lock(&self.handles);
        if handles.len() >= CACHE_CAPACITY {
            handles.clear();
        }
        handles.insert((gid, lid), created.clone());
        Ok(created)
    }

    /// Destinations cached now.
    pub(crate) fn len(&self) -> usize {
        lock(&self.handles).len()
    }
}
