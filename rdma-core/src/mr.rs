//! Registered memory, owned by the library: a buffer handed to the NIC is out of Rust's
//! reach until the NIC is done with it.
//!
//! A registration ([`MemoryRegion`]) is split into disjoint, owned pieces ([`LocalBuf`]),
//! `BytesMut`-style. An operation takes a piece by value and hands it back with its result,
//! so no Rust code can read, write, move or free the bytes while the NIC may touch them,
//! and several pieces of one region can be in flight at once without any lock.

use std::alloc::{self, Layout};
use std::ops::{BitOr, Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rdma_sys::*;

use crate::error::{Error, Result};
use crate::pd::ProtectionDomain;
use crate::remote::RemoteRegion;

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

    fn verbs_flags(self) -> i32 {
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
enum Storage {
    Aligned(Layout),
    Vec { capacity: usize },
}

// SAFETY: MrInner owns its bytes (nothing else holds the allocation) and the ibv_mr handle,
// which libibverbs allows to be used and deregistered from any thread. Access to the bytes
// goes through LocalBuf, whose pieces are disjoint.
unsafe impl Send for MrInner {}
// SAFETY: shared references to MrInner expose only immutable metadata.
unsafe impl Sync for MrInner {}

impl MemoryRegion {
    /// The whole region as the peer needs it for RDMA: address, length and remote key.
    ///
    /// The key grants access to exactly this region, with the rights it was registered with.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the region was registered without remote access.
    pub fn remote(&self) -> Result<RemoteRegion> {
        if !self.inner.access.is_remote() {
            return Err(Error::InvalidArgument(
                "this memory was registered for local use only; register it with \
                 Access::REMOTE_READ, REMOTE_WRITE or REMOTE_ATOMIC to hand it to a peer"
                    .into(),
            ));
        }
        Ok(RemoteRegion {
            addr: self.addr(),
            len: self.inner.len as u64,
            rkey: self.inner.rkey,
        })
    }

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

/// Registrations alive in this process.
static LIVE_REGIONS: AtomicUsize = AtomicUsize::new(0);

/// How many memory registrations made by anyrdma are alive in this process: a leak check
/// (a registration lives until its last [`LocalBuf`] is dropped and the NIC is done with it).
pub fn registered_regions() -> usize {
    LIVE_REGIONS.load(Ordering::Acquire)
}

impl MrInner {
    /// Registers `len` bytes at `ptr`, taking ownership of their `storage`. On failure the
    /// storage is freed.
    fn register(
        pd: &ProtectionDomain,
        ptr: NonNull<u8>,
        len: usize,
        storage: Storage,
        access: Access,
    ) -> Result<MrInner> {
        // ibv_reg_mr refuses zero-length regions; register one byte (the allocation has it).
        let reg_len = len.max(1);
        // SAFETY: `ptr..ptr+reg_len` is memory we own (see `storage`) and keep until dereg.
        let raw =
            unsafe { ibv_reg_mr(pd.raw(), ptr.as_ptr().cast(), reg_len, access.verbs_flags()) };
        let Some(raw) = NonNull::new(raw) else {
            let err = registration_error(reg_len);
            free_storage(ptr, len, &storage);
            return Err(err);
        };
        // SAFETY: `raw` is a valid registration returned just now.
        let (lkey, rkey) = unsafe { ((*raw.as_ptr()).lkey, (*raw.as_ptr()).rkey) };
        LIVE_REGIONS.fetch_add(1, Ordering::AcqRel);
        Ok(MrInner {
            raw,
            ptr,
            len,
            lkey,
            rkey,
            access,
            storage,
            pd: pd.clone(),
        })
    }
}

impl Drop for MrInner {
    fn drop(&mut self) {
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
            return;
        }
        free_storage(self.ptr, self.len, &self.storage);
        LIVE_REGIONS.fetch_sub(1, Ordering::AcqRel);
    }
}

fn free_storage(ptr: NonNull<u8>, len: usize, storage: &Storage) {
    match *storage {
        // SAFETY: allocated by alloc_zeroed with this layout and freed once, here.
        Storage::Aligned(layout) => unsafe { alloc::dealloc(ptr.as_ptr(), layout) },
        // SAFETY: these are the raw parts of the Vec taken in register_vec; rebuilt once.
        Storage::Vec { capacity } => {
            drop(unsafe { Vec::from_raw_parts(ptr.as_ptr(), len, capacity) })
        }
    }
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

/// An owned piece of registered memory: the unit operations take and give back.
///
/// It dereferences to `[u8]` for Rust code while it is not in flight. Split it with
/// [`split_off`](LocalBuf::split_off) / [`split_to`](LocalBuf::split_to) to have several
/// disjoint pieces in flight at once, and join neighbours back with
/// [`unsplit`](LocalBuf::unsplit).
///
/// If the region grants remote write or atomic rights, a peer may change its bytes at any
/// time: read them when the protocol says the peer is done (for example after a write with
/// immediate arrives).
///
/// ```no_run
/// # fn main() -> anyrdma_core::Result<()> {
/// use anyrdma_core::{Access, Context};
/// let pd = Context::open_default()?.alloc_pd()?;
/// let mut head = pd.alloc(8192, Access::LOCAL)?;
/// let tail = head.split_off(4096); // two disjoint 4 KiB pieces of one registration
/// assert_eq!((head.len(), tail.len()), (4096, 4096));
/// head.unsplit(tail).expect("neighbours join");
/// # Ok(()) }
/// ```
pub struct LocalBuf {
    mr: Arc<MrInner>,
    offset: usize,
    len: usize,
}

impl LocalBuf {
    pub(crate) fn alloc(pd: &ProtectionDomain, len: usize, access: Access) -> Result<LocalBuf> {
        let (ptr, layout) = alloc_pages(len, page_size())?;
        let mr = MrInner::register(pd, ptr, len, Storage::Aligned(layout), access)?;
        Ok(LocalBuf {
            mr: Arc::new(mr),
            offset: 0,
            len,
        })
    }

    pub(crate) fn register_vec(
        pd: &ProtectionDomain,
        data: Vec<u8>,
        access: Access,
    ) -> Result<LocalBuf> {
        let mut data = std::mem::ManuallyDrop::new(data);
        if data.capacity() == 0 {
            // An empty Vec owns no allocation to register; give it one byte.
            data.reserve_exact(1);
        }
        let (ptr, len, capacity) = (data.as_mut_ptr(), data.len(), data.capacity());
        // SAFETY: a Vec with capacity > 0 has a non-null heap pointer.
        let ptr = unsafe { NonNull::new_unchecked(ptr) };
        let mr = MrInner::register(pd, ptr, len, Storage::Vec { capacity }, access)?;
        Ok(LocalBuf {
            mr: Arc::new(mr),
            offset: 0,
            len,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the piece is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address of the first byte (for scatter-gather entries).
    pub fn addr(&self) -> u64 {
        self.mr.ptr.as_ptr() as u64 + self.offset as u64
    }

    /// The local key of the registration.
    pub fn lkey(&self) -> u32 {
        self.mr.lkey
    }

    /// The registration this piece belongs to.
    pub fn region(&self) -> MemoryRegion {
        MemoryRegion {
            inner: self.mr.clone(),
        }
    }

    /// Splits off `[at, len)` and returns it; `self` keeps `[0, at)`.
    ///
    /// # Panics
    /// If `at > len`, like [`Vec::split_off`].
    #[must_use = "the split-off piece is dropped otherwise"]
    pub fn split_off(&mut self, at: usize) -> LocalBuf {
        assert!(
            at <= self.len,
            "split_off at {at} beyond length {}",
            self.len
        );
        let tail = LocalBuf {
            mr: self.mr.clone(),
            offset: self.offset + at,
            len: self.len - at,
        };
        self.len = at;
        tail
    }

    /// Splits off `[0, at)` and returns it; `self` keeps `[at, len)`.
    ///
    /// # Panics
    /// If `at > len`.
    #[must_use = "the split-off piece is dropped otherwise"]
    pub fn split_to(&mut self, at: usize) -> LocalBuf {
        assert!(
            at <= self.len,
            "split_to at {at} beyond length {}",
            self.len
        );
        let head = LocalBuf {
            mr: self.mr.clone(),
            offset: self.offset,
            len: at,
        };
        self.offset += at;
        self.len -= at;
        head
    }

    /// Joins `other`, which must directly follow `self` in the same registration.
    ///
    /// # Errors
    /// Gives `other` back when it is not the next piece.
    pub fn unsplit(&mut self, other: LocalBuf) -> std::result::Result<(), LocalBuf> {
        if Arc::ptr_eq(&self.mr, &other.mr) && self.offset + self.len == other.offset {
            self.len += other.len;
            Ok(())
        } else {
            Err(other)
        }
    }

    /// Deregisters and returns the bytes as a `Vec`, when this piece is the whole region and
    /// no other piece is alive.
    ///
    /// # Errors
    /// Gives `self` back otherwise.
    pub fn into_vec(self) -> std::result::Result<Vec<u8>, LocalBuf> {
        if self.offset != 0 || self.len != self.mr.len {
            return Err(self);
        }
        match Arc::try_unwrap(self.mr) {
            Ok(inner) => Ok(inner[..].to_vec()),
            Err(mr) => Err(LocalBuf {
                mr,
                offset: self.offset,
                len: self.len,
            }),
        }
    }

    pub(crate) fn pd_raw(&self) -> *mut ibv_pd {
        self.mr.pd.raw()
    }

    /// The scatter-gather entry of this piece.
    ///
    /// # Errors
    /// [`Error::TooLarge`] for a piece of 4 GiB or more: an entry's length has 32 bits.
    pub(crate) fn sge(&self) -> Result<ibv_sge> {
        Ok(ibv_sge {
            addr: self.addr(),
            length: sge_length(self.len)?,
            lkey: self.mr.lkey,
        })
    }
}

impl Deref for MrInner {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: only called in into_vec, when this MrInner is uniquely owned.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Deref for LocalBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `offset..offset+len` lies inside the allocation, which lives as long as
        // `self.mr`; pieces are disjoint, and a piece in flight is owned by the operation, so
        // no work request of ours touches these bytes while this borrow lives.
        unsafe { std::slice::from_raw_parts(self.mr.ptr.as_ptr().add(self.offset), self.len) }
    }
}

impl DerefMut for LocalBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only borrow of the piece.
        unsafe { std::slice::from_raw_parts_mut(self.mr.ptr.as_ptr().add(self.offset), self.len) }
    }
}

impl std::fmt::Debug for LocalBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBuf")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len)
            .finish()
    }
}

/// Allocates `len` zeroed bytes (at least one page, whole pages, page-aligned) for
/// registration; `free_storage` frees them with the layout returned.
fn alloc_pages(len: usize, page: usize) -> Result<(NonNull<u8>, Layout)> {
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

fn page_size() -> usize {
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
