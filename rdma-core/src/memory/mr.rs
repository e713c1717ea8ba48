//! Registered memory, owned by the library: a buffer handed to the NIC is out of Rust's
//! reach until the NIC is done with it.
//!
//! A registration ([`MemoryRegion`]) is split into disjoint, owned pieces ([`LocalBuf`]),
//! `BytesMut`-style. An operation takes a piece by value and hands it back with its result,
//! so no Rust code can read, write, move or free the bytes while the NIC may touch them,
//! and several pieces of one region can be in flight at once without any lock.

use std::alloc::{self, Layout};
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rdma_sys::*;

// Defined in a file of its own, which imports nothing, so that the error module can name it.
use crate::error::{Error, Result};
pub use crate::memory::access::Access;
use crate::owned::OwnedContainer;
use crate::pd::ProtectionDomain;
use crate::pool::PoolBlock;
use crate::remote::RemoteRegion;

mod local;

pub use local::LocalBuf;

/// A registration: memory pinned and known to the device. Obtained from
/// [`LocalBuf::region`]; it lives until its last [`LocalBuf`] is dropped.
#[derive(Clone)]
pub struct MemoryRegion {
    pub(crate) inner: Arc<MrInner>,
}

pub(crate) struct MrInner {
    raw: NonNull<ibv_mr>,
    ptr: NonNull<u8>,
    len: usize,
    lkey: u32,
    rkey: u32,
    access: Access,
    storage: Storage,
    pub(crate) pd: ProtectionDomain,
}

/// Who allocated the bytes, so they are freed the same way.
pub(crate) enum Storage {
    Aligned(Layout),
    Vec {
        capacity: usize,
    },
    /// A block of a [`MemoryPool`](crate::MemoryPool) chunk, under the chunk's registration:
    /// given back to the pool, never deregistered or freed on its own.
    Pool(PoolBlock),
    /// A container the user handed over ([`StableBytes`]): dropped (so freed) once
    /// deregistered, or given back by [`LocalBuf::into_owned`].
    Owned(OwnedContainer),
}

// SAFETY: MrInner owns its bytes (nothing else holds the allocation) and the ibv_mr handle,
// which libibverbs allows to be used and deregistered from any thread. Access to the bytes
// goes through LocalBuf, whose pieces are disjoint.
unsafe impl Send for MrInner {}
// SAFETY: shared references to MrInner expose only immutable metadata.
unsafe impl Sync for MrInner {}

impl MemoryRegion {
    /// Address of the first byte.
    pub fn addr(&self) -> u64 {
        self.inner.ptr.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.inner.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// The local key.
    pub fn lkey(&self) -> u32 {
        self.inner.lkey
    }

    /// The remote key.
    pub fn rkey(&self) -> u32 {
        self.inner.rkey
    }

    /// The rights it was registered with.
    pub fn access(&self) -> Access {
        self.inner.access
    }
}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len())
            .field("lkey", &format_args!("{:#x}", self.lkey()))
            .field("access", &self.access())
            .finish()
    }
}

impl MrInner {
    /// The address of byte `offset` of the registration.
    pub(crate) fn byte(&self, offset: usize) -> *mut u8 {
        // SAFETY (of the arithmetic): callers pass offsets within `len`.
        self.ptr.as_ptr().wrapping_add(offset)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The registration handle.
    pub(crate) fn raw_mr(&self) -> NonNull<ibv_mr> {
        self.raw
    }

    /// The local and remote keys.
    pub(crate) fn keys(&self) -> (u32, u32) {
        (self.lkey, self.rkey)
    }

    /// The address of byte `offset` (within the registration), as a block of a pool chunk.
    pub(crate) fn block(&self, offset: usize) -> NonNull<u8> {
        debug_assert!(offset < self.len);
        // SAFETY: `ptr` is non-null and `offset` lies inside the allocation, so the sum is
        // non-null and in bounds.
        unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(offset)) }
    }

    pub(crate) fn access(&self) -> Access {
        self.access
    }

    /// A pool block's link to its chunk and pool; `None` for any other registration.
    pub(crate) fn pool_block(&self) -> Option<&PoolBlock> {
        match &self.storage {
            Storage::Pool(block) => Some(block),
            _ => None,
        }
    }

    /// Whether this is a block of a [`MemoryPool`](crate::MemoryPool) chunk.
    #[inline]
    pub(crate) fn is_pool_block(&self) -> bool {
        matches!(self.storage, Storage::Pool(_))
    }

    /// A pool block view's length (the length its buffer was asked for), to hand the block
    /// out again; `None` for any other registration.
    #[inline]
    pub(crate) fn pool_block_len(&mut self) -> Option<&mut usize> {
        match self.storage {
            Storage::Pool(_) => Some(&mut self.len),
            _ => None,
        }
    }

    /// The peer's description of `len` bytes at `offset`: exactly that range, under the
    /// registration's key.
    ///
    /// # Errors
    /// [`Error::LocalOnly`] when the registration has no remote right.
    pub(crate) fn remote(&self, offset: usize, len: usize) -> Result<RemoteRegion> {
        if !self.access.is_remote() {
            return Err(Error::LocalOnly);
        }
        Ok(RemoteRegion {
            addr: self.ptr.as_ptr() as u64 + offset as u64,
            len: len as u64,
            rkey: self.rkey,
        })
    }

    /// The same memory under a new registration with `access`, the old one deregistered:
    /// the old keys stop working. The new registration is made first, so that on any
    /// failure the old one still stands and is given back.
    #[allow(clippy::result_large_err)] // once per share or revocation, not per operation
    pub(crate) fn reregister(
        self,
        access: Access,
    ) -> std::result::Result<MrInner, (MrInner, Error)> {
        if matches!(self.storage, Storage::Pool(_)) {
            // Its key is the chunk's: exposing it would expose the neighbouring blocks.
            return Err((self, Error::PoolMemoryIsLocal));
        }
        // SAFETY: the bytes are owned by `self` and stay allocated until the new registration,
        // which takes them over, is deregistered; a second registration of the same pages is
        // allowed.
        let registration = match unsafe { reg_mr(&self.pd, self.ptr, self.len, access) } {
            Ok(registration) => registration,
            Err(err) => return Err((self, err)),
        };
        // SAFETY: the old registration is valid and no work request uses it: the caller owns
        // the only reference to it.
        let rc = unsafe { ibv_dereg_mr(self.raw.as_ptr()) };
        if rc != 0 {
            // SAFETY: the registration made above, unused.
            unsafe { ibv_dereg_mr(registration.0.as_ptr()) };
            LIVE_REGIONS.fetch_sub(1, Ordering::AcqRel);
            return Err((self, Error::from_code("ibv_dereg_mr", rc)));
        }
        LIVE_REGIONS.fetch_sub(1, Ordering::AcqRel);
        let old = std::mem::ManuallyDrop::new(self);
        // SAFETY: `old` is never dropped; its storage and PD move to the new value, once.
        let (storage, pd) = unsafe { (std::ptr::read(&old.storage), std::ptr::read(&old.pd)) };
        Ok(MrInner::new(
            registration,
            old.ptr,
            old.len,
            access,
            storage,
            pd,
        ))
    }
}

/// Registrations alive in this process.
static LIVE_REGIONS: AtomicUsize = AtomicUsize::new(0);

/// How many memory registrations made by anyrdma are alive in this process: a leak check
/// (a registration lives until its last [`LocalBuf`] is dropped and the NIC is done with it).
pub fn registered_regions() -> usize {
    LIVE_REGIONS.load(Ordering::Acquire)
}

/// A registration handle and its local and remote keys, as `reg_mr` returns them.
pub(crate) type Registration = (NonNull<ibv_mr>, u32, u32);

impl MrInner {
    /// `len` bytes at `ptr` under `registration`, kept alive by `storage`.
    pub(crate) fn new(
        (raw, lkey, rkey): Registration,
        ptr: NonNull<u8>,
        len: usize,
        access: Access,
        storage: Storage,
        pd: ProtectionDomain,
    ) -> MrInner {
        MrInner {
            raw,
            ptr,
            len,
            lkey,
            rkey,
            access,
            storage,
            pd,
        }
    }

    /// Registers `len` bytes at `ptr`, taking ownership of their `storage`. On failure the
    /// storage is freed.
    pub(crate) fn register(
        pd: &ProtectionDomain,
        ptr: NonNull<u8>,
        len: usize,
        storage: Storage,
        access: Access,
    ) -> Result<MrInner> {
        // SAFETY: `ptr..ptr+len` (at least one byte: the allocation has it) is memory we own
        // (see `storage`) and keep until the deregistration in Drop.
        match unsafe { reg_mr(pd, ptr, len, access) } {
            Ok(registration) => Ok(MrInner::new(
                registration,
                ptr,
                len,
                access,
                storage,
                pd.clone(),
            )),
            Err(err) => {
                free_storage(ptr, len, &storage);
                Err(err)
            }
        }
    }
}

impl Drop for MrInner {
    fn drop(&mut self) {
        if let Storage::Pool(block) = &mut self.storage {
            block.give_back(self.ptr);
            return;
        }
        // SAFETY: no LocalBuf (and so no posted work request) refers to the region any more:
        // each holds an Arc<MrInner>. Deregister first, then free the bytes.
        let rc = unsafe { ibv_dereg_mr(self.raw.as_ptr()) };
        if rc != 0 {
            crate::trace::event!(
                error,
                errno = rc,
                len = self.len,
                "ibv_dereg_mr failed: the region's bytes are leaked"
            );
            // Still registered (for example, a memory window is bound to it): the device may
            // still access the bytes, so they are leaked, never freed, and the region stays
            // counted by registered_regions().
            if let Storage::Owned(_) = self.storage {
                let owned = std::mem::replace(&mut self.storage, Storage::Vec { capacity: 0 });
                std::mem::forget(owned);
            }
            return;
        }
        free_storage(self.ptr, self.len, &self.storage);
        LIVE_REGIONS.fetch_sub(1, Ordering::AcqRel);
    }
}

fn free_storage(ptr: NonNull<u8>, len: usize, storage: &Storage) {
    match storage {
        // A pool block is the pool's: MrInner's Drop gives it back instead. A user's
        // container frees its bytes when it is dropped, with the MrInner.
        Storage::Pool(_) | Storage::Owned(_) => {}
        // SAFETY: allocated by alloc_zeroed with this layout and freed once, here.
        Storage::Aligned(layout) => unsafe { alloc::dealloc(ptr.as_ptr(), *layout) },
        // SAFETY: these are the raw parts of the Vec taken in register_vec; rebuilt once.
        Storage::Vec { capacity } => {
            drop(unsafe { Vec::from_raw_parts(ptr.as_ptr(), len, *capacity) })
        }
    }
}

/// Registers `len` bytes at `ptr` (at least one: `ibv_reg_mr` refuses empty regions) in
/// `pd` with `access`: the handle and its local and remote keys. Counted by
/// [`registered_regions`] until deregistered.
///
/// # Safety
/// `ptr..ptr+max(len, 1)` must be memory the caller owns and keeps allocated until the
/// registration is deregistered.
pub(crate) unsafe fn reg_mr(
    pd: &ProtectionDomain,
    ptr: NonNull<u8>,
    len: usize,
    access: Access,
) -> Result<Registration> {
    let reg_len = len.max(1);
    // SAFETY: the caller guarantees the memory; the PD is valid while `pd` lives.
    let raw = unsafe { ibv_reg_mr(pd.raw(), ptr.as_ptr().cast(), reg_len, access.verbs_flags()) };
    let raw = NonNull::new(raw).ok_or_else(|| registration_error(reg_len))?;
    LIVE_REGIONS.fetch_add(1, Ordering::AcqRel);
    // SAFETY: `raw` is a valid registration returned just now.
    let (lkey, rkey) = unsafe { ((*raw.as_ptr()).lkey, (*raw.as_ptr()).rkey) };
    Ok((raw, lkey, rkey))
}

/// Deregisters `raw` (from [`reg_mr`]); false when the device refused, and the memory must
/// then stay allocated (the registration still stands).
///
/// # Safety
/// `raw` is a registration from [`reg_mr`] that no posted work request uses any more, and
/// it is not used after a successful call.
pub(crate) unsafe fn dereg_mr(raw: NonNull<ibv_mr>) -> bool {
    // SAFETY: as the caller guarantees.
    let rc = unsafe { ibv_dereg_mr(raw.as_ptr()) };
    if rc != 0 {
        crate::trace::event!(
            error,
            errno = rc,
            "ibv_dereg_mr failed: the memory is leaked"
        );
        return false;
    }
    LIVE_REGIONS.fetch_sub(1, Ordering::AcqRel);
    true
}

/// Explains a failed ibv_reg_mr, recognising the locked-memory limit.
fn registration_error(len: usize) -> Error {
    let err = std::io::Error::last_os_error();
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out pointer.
    let have_limit = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    let memlock_errno = matches!(
        err.raw_os_error(),
        Some(libc::ENOMEM | libc::EAGAIN | libc::EPERM)
    );
    if have_limit && memlock_errno && limit.rlim_cur != libc::RLIM_INFINITY {
        return Error::MemlockLimit {
            requested: len,
            limit: limit.rlim_cur,
        };
    }
    Error::verbs("ibv_reg_mr", err)
}

/// A piece of registered memory as an operation sees it: where it is and under which
/// key. Nothing outside the crate can read its bytes through it (its fields and methods
/// are the crate's), so memory a peer can write is never reachable as `&[u8]` this way.
pub struct Piece<'a> {
    pub(crate) mr: &'a Arc<MrInner>,
    pub(crate) offset: usize,
    pub(crate) len: usize,
}

impl Piece<'_> {
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub(crate) fn pd_raw(&self) -> *mut ibv_pd {
        self.mr.pd.raw()
    }

    /// The scatter-gather entry of this piece.
    ///
    /// # Errors
    /// [`Error::TooLarge`] for a piece of 4 GiB or more: an entry's length has 32 bits.
    #[inline]
    pub(crate) fn sge(&self) -> Result<ibv_sge> {
        Ok(ibv_sge {
            addr: self.mr.byte(self.offset) as u64,
            length: sge_length(self.len)?,
            lkey: self.mr.lkey,
        })
    }

    /// The bytes of the piece, copied with atomic byte loads: sound even where a peer may
    /// write them at the same time.
    pub(crate) fn copy_out(&self, into: &mut [u8]) {
        for (i, byte) in into.iter_mut().enumerate().take(self.len) {
            // SAFETY: `offset + i` is inside the allocation, which `mr` keeps alive; u8 has
            // the size and alignment of AtomicU8. No non-atomic access races with this one:
            // a LocalBuf's bytes are reached only through its owner (the caller), a
            // SharedRegion's only atomically (and by the device).
            let atomic =
                unsafe { std::sync::atomic::AtomicU8::from_ptr(self.mr.byte(self.offset + i)) };
            *byte = atomic.load(Ordering::Relaxed);
        }
        std::sync::atomic::fence(Ordering::Acquire);
    }
}

impl Deref for MrInner {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: only called in into_vec, when this MrInner is uniquely owned.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

/// Allocates `len` zeroed bytes (at least one page, whole pages, page-aligned) for
/// registration; `free_storage` frees them with the layout returned.
pub(crate) fn alloc_pages(len: usize, page: usize) -> Result<(NonNull<u8>, Layout)> {
    let layout = page_layout(len, page)?;
    // SAFETY: `layout` has a non-zero size: at least one page.
    let ptr = unsafe { alloc::alloc_zeroed(layout) };
    let ptr = NonNull::new(ptr).ok_or(Error::OutOfMemory {
        requested: layout.size(),
    })?;
    Ok((ptr, layout))
}

/// The layout of `len` bytes rounded up to whole pages (at least one), page-aligned.
///
/// The rounding is checked: unchecked, a length near `usize::MAX` wraps to a zero-size
/// layout, and allocating that is undefined behaviour.
fn page_layout(len: usize, page: usize) -> Result<Layout> {
    let too_large = || Error::TooLarge {
        what: "memory allocation",
        len,
        // The largest size a layout with this alignment can have, in whole pages.
        max: isize::MAX as usize / page * page,
    };
    let size = len
        .max(1)
        .checked_next_multiple_of(page)
        .ok_or_else(too_large)?;
    Layout::from_size_align(size, page).map_err(|_| too_large())
}

/// The length of a scatter-gather entry, which verbs carry in 32 bits.
fn sge_length(len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| Error::TooLarge {
        what: "scatter-gather entry (one piece of a work request)",
        len,
        max: u32::MAX as usize,
    })
}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_that_cannot_be_laid_out_are_too_large() {
        let page = 4096;
        let max = isize::MAX as usize / page * page;
        for len in [
            usize::MAX,
            usize::MAX - page,
            isize::MAX as usize + 1,
            max + 1,
        ] {
            match page_layout(len, page) {
                Err(Error::TooLarge {
                    len: reported,
                    max: limit,
                    ..
                }) => assert_eq!((reported, limit), (len, max)),
                other => panic!("{len}: {other:?}"),
            }
        }
        assert_eq!(page_layout(max, page).unwrap().size(), max);
        assert_eq!(page_layout(0, page).unwrap().size(), page);
        assert_eq!(page_layout(page + 1, page).unwrap().size(), 2 * page);
        let text = page_layout(usize::MAX, page).unwrap_err().to_string();
        assert!(text.contains(&usize::MAX.to_string()), "{text}");
    }

    #[test]
    fn an_allocation_the_system_cannot_satisfy_is_out_of_memory() {
        // 2^60 bytes: far beyond any address space a process has on Linux (47 or 56 bits).
        let len = 1 << 60;
        match alloc_pages(len, 4096) {
            Err(Error::OutOfMemory { requested }) => assert_eq!(requested, len),
            Ok(_) => panic!("allocated 2^60 bytes"),
            Err(other) => panic!("{other:?}"),
        }
        let (ptr, layout) = alloc_pages(10, 4096).expect("a page");
        // SAFETY: allocated just now with this layout, freed once.
        unsafe { alloc::dealloc(ptr.as_ptr(), layout) };
    }

    #[test]
    fn pieces_of_4_gib_or_more_do_not_fit_a_scatter_gather_entry() {
        assert_eq!(sge_length(u32::MAX as usize).unwrap(), u32::MAX);
        assert_eq!(sge_length(0).unwrap(), 0);
        for len in [1 << 32, (1 << 32) + 1, usize::MAX] {
            assert!(
                matches!(sge_length(len), Err(Error::TooLarge { len: l, max, .. }) if l == len && max == u32::MAX as usize),
                "{len}"
            );
        }
    }
}
