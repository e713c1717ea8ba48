//! [`LocalBuf`]: an owned piece of a registration, the unit operations take and give back,
//! and the ways to make one. Above the registration itself (its parent module), which it
//! is made of.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rdma_sys::ibv_dereg_mr;

use super::{alloc_pages, page_size, reg_mr, MemoryRegion, MrInner, Storage, LIVE_REGIONS};
use crate::buffers::sealed::Piece;
use crate::error::{Error, Result};
use crate::memory::access::Access;
use crate::owned::StableBytes;
use crate::pd::ProtectionDomain;
use crate::pool::MemoryPool;
use crate::remote::RemoteRegion;
use crate::shared::SharedRegion;
use crate::span::Span;

/// An owned piece of registered memory: the unit operations take and give back.
///
/// It dereferences to `[u8]` for Rust code while it is not in flight. Split it with
/// [`split_off`](LocalBuf::split_off) / [`split_to`](LocalBuf::split_to) to have several
/// disjoint pieces in flight at once, and join neighbours back with
/// [`unsplit`](LocalBuf::unsplit).
///
/// Its registration never grants remote write or atomic rights: memory a peer can change is
/// a [`SharedRegion`], whose bytes Rust code reaches only through
/// methods that are sound while the peer writes. A `LocalBuf` may grant remote *read*
/// rights ([`remote`](LocalBuf::remote)): a peer may then read its bytes at any time, also
/// while local code writes them, and may see some bytes old and some new; say in the
/// protocol when the bytes are ready (for example with a send after the writes).
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
    span: Span,
}

// The protection domain's ways to register memory are defined here, beside what they make:
// registrations hold their protection domain, which does not name them.
impl ProtectionDomain {
    /// Allocates `len` bytes of zeroed, page-aligned memory and registers it with `access`.
    ///
    /// ```no_run
    /// # fn main() -> anyrdma_core::Result<()> {
    /// use anyrdma_core::{Access, Context};
    /// let pd = Context::open_default()?.alloc_pd()?;
    /// let mut buf = pd.alloc(4096, Access::LOCAL)?;
    /// buf[..5].copy_from_slice(b"hello");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::TooLarge`] when no allocation can have `len` bytes (near `isize::MAX`);
    /// [`Error::OutOfMemory`] when the system cannot provide them;
    /// [`Error::MemlockLimit`] when the locked-memory limit is too low;
    /// [`Error::Verbs`] for other registration failures;
    /// [`Error::PeerWritable`] for remote write or atomic rights (use
    /// [`alloc_shared`](ProtectionDomain::alloc_shared)).
    pub fn alloc(&self, len: usize, access: Access) -> Result<LocalBuf> {
        LocalBuf::alloc(self, len, access)
    }

    /// Takes ownership of `data`, any owned container of bytes at a stable address
    /// ([`StableBytes`]: `Vec<u8>`, `Box<[u8]>`, and with features `bytes::BytesMut` and
    /// `memmap2::MmapMut`), and registers its bytes where they are, with `access` (local or
    /// remote read). Get it back with [`LocalBuf::into_owned`] once every piece is home.
    ///
    /// # Errors
    /// Gives `data` back with [`Error::PeerWritable`] for remote write or atomic rights,
    /// [`Error::EmptyRegistration`] when it is empty, or the registration's error
    /// ([`Error::MemlockLimit`], [`Error::Verbs`]).
    pub fn register_owned<T: StableBytes>(
        &self,
        data: T,
        access: Access,
    ) -> std::result::Result<LocalBuf, (T, Error)> {
        LocalBuf::register_owned(self, data, access)
    }

    /// Takes ownership of `data` and registers it with `access`. The bytes stay where they
    /// are; get them back with [`LocalBuf::into_vec`] once every piece is home.
    ///
    /// # Errors
    /// [`Error::MemlockLimit`] when the locked-memory limit is too low;
    /// [`Error::Verbs`] for other registration failures.
    pub fn register(&self, data: impl Into<Vec<u8>>, access: Access) -> Result<LocalBuf> {
        LocalBuf::register_vec(self, data.into(), access)
    }
}

// Defined here, beside what it makes: the pool is below LocalBuf (its blocks are
// registrations) and does not name it.
impl MemoryPool {
    /// A buffer of `len` bytes from the pool: a block of the smallest class that fits. No
    /// system call unless the class has no free block and the pool grows by a chunk.
    ///
    /// # Errors
    /// [`Error::TooLarge`] when `len` is above the largest class;
    /// [`Error::PoolExhausted`] when growing would pass
    /// [`PoolOptions::max_bytes`](crate::PoolOptions::max_bytes);
    /// the registration's errors when growing fails.
    pub fn alloc(&self, len: usize) -> Result<LocalBuf> {
        self.alloc_block(len).map(LocalBuf::whole)
    }
}

impl LocalBuf {
    pub(crate) fn alloc(pd: &ProtectionDomain, len: usize, access: Access) -> Result<LocalBuf> {
        refuse_peer_writable(access)?;
        let (ptr, layout) = alloc_pages(len, page_size())?;
        let mr = MrInner::register(pd, ptr, len, Storage::Aligned(layout), access)?;
        Ok(LocalBuf::whole(Arc::new(mr)))
    }

    pub(crate) fn register_vec(
        pd: &ProtectionDomain,
        data: Vec<u8>,
        access: Access,
    ) -> Result<LocalBuf> {
        refuse_peer_writable(access)?;
        let mut data = std::mem::ManuallyDrop::new(data);
        if data.capacity() == 0 {
            // An empty Vec owns no allocation to register; give it one byte.
            data.reserve_exact(1);
        }
        let (ptr, len, capacity) = (data.as_mut_ptr(), data.len(), data.capacity());
        // SAFETY: a Vec with capacity > 0 has a non-null heap pointer.
        let ptr = unsafe { NonNull::new_unchecked(ptr) };
        let mr = MrInner::register(pd, ptr, len, Storage::Vec { capacity }, access)?;
        Ok(LocalBuf::whole(Arc::new(mr)))
    }

    pub(crate) fn register_owned<T: StableBytes>(
        pd: &ProtectionDomain,
        mut data: T,
        access: Access,
    ) -> std::result::Result<LocalBuf, (T, Error)> {
        if let Err(err) = refuse_peer_writable(access) {
            return Err((data, err));
        }
        let len = data.len();
        let Some(ptr) = NonNull::new(data.as_mut_ptr()).filter(|_| len > 0) else {
            return Err((data, Error::EmptyRegistration));
        };
        // SAFETY: by StableBytes, `ptr..ptr+len` is owned by `data`, stays put while it lives,
        // and nothing else reaches it; `data` moves into the registration's storage below and
        // is dropped only after the deregistration.
        let registration = match unsafe { reg_mr(pd, ptr, len, access) } {
            Ok(registration) => registration,
            Err(err) => return Err((data, err)),
        };
        let storage = Storage::Owned(Box::new(data));
        let inner = MrInner::new(registration, ptr, len, access, storage, pd.clone());
        Ok(LocalBuf::whole(Arc::new(inner)))
    }

    /// Deregisters and gives back the container registered with
    /// [`ProtectionDomain::register_owned`](crate::ProtectionDomain::register_owned), with the
    /// bytes as they are, when this piece is all of it, no other piece is alive, and `T` is
    /// its type.
    ///
    /// # Errors
    /// Gives `self` back otherwise, or when the deregistration fails (the bytes stay
    /// registered).
    pub fn into_owned<T: StableBytes>(self) -> std::result::Result<T, LocalBuf> {
        let inner = self.into_whole()?;
        if !matches!(&inner.storage, Storage::Owned(container) if container.is::<T>()) {
            return Err(LocalBuf::whole(Arc::new(inner)));
        }
        // SAFETY: this is the only reference to the registration, and no work request uses
        // it (an operation in flight would hold a piece).
        let rc = unsafe { ibv_dereg_mr(inner.raw.as_ptr()) };
        if rc != 0 {
            return Err(LocalBuf::whole(Arc::new(inner)));
        }
        LIVE_REGIONS.fetch_sub(1, Ordering::AcqRel);
        let inner = std::mem::ManuallyDrop::new(inner);
        // SAFETY: `inner` is never dropped; its storage and PD are moved out once, here.
        let (storage, pd) = unsafe { (std::ptr::read(&inner.storage), std::ptr::read(&inner.pd)) };
        drop(pd);
        let Storage::Owned(container) = storage else {
            unreachable!("the storage kind was checked above");
        };
        match container.downcast::<T>() {
            Ok(data) => Ok(*data),
            Err(_) => unreachable!("the container's type was checked above"),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.span.len
    }

    /// Whether the piece is empty.
    pub fn is_empty(&self) -> bool {
        self.span.len == 0
    }

    /// The device address of the first byte (for scatter-gather entries).
    pub fn addr(&self) -> u64 {
        self.span.addr()
    }

    /// The local key of the registration.
    pub fn lkey(&self) -> u32 {
        self.span.mr.lkey
    }

    /// The registration this piece belongs to.
    pub fn region(&self) -> MemoryRegion {
        MemoryRegion {
            inner: Arc::clone(&self.span.mr),
        }
    }

    /// This piece as a peer needs it to RDMA-read it: its address and length (exactly this
    /// piece) and the registration's remote key.
    ///
    /// The key is the registration's: other pieces split from the same allocation answer to
    /// it too. To expose memory to a peer on its own, allocate it on its own.
    ///
    /// # Errors
    /// [`Error::LocalOnly`] when the registration grants no remote read.
    pub fn remote(&self) -> Result<RemoteRegion> {
        self.span.remote()
    }

    /// Hands this memory to peers with `access` (which may include remote write and
    /// atomics): the same bytes, registered again, as a [`SharedRegion`]. The old
    /// registration is deregistered.
    ///
    /// # Errors
    /// Gives `self` back with [`Error::NotWholeRegion`] when this piece is not the whole
    /// allocation or other pieces of it are alive, or with the registration's error.
    pub fn share(self, access: Access) -> std::result::Result<SharedRegion, (LocalBuf, Error)> {
        match self.into_whole() {
            Ok(inner) => match inner.reregister(access) {
                Ok(inner) => Ok(SharedRegion::whole(Arc::new(inner))),
                Err((inner, err)) => Err((LocalBuf::whole(Arc::new(inner)), err)),
            },
            Err(buf) => Err((buf, Error::NotWholeRegion)),
        }
    }

    /// The whole allocation `mr` as one piece.
    pub(crate) fn whole(mr: Arc<MrInner>) -> LocalBuf {
        LocalBuf {
            span: Span::whole(mr),
        }
    }

    /// The registration, when this piece is all of it and nothing else holds it.
    fn into_whole(self) -> std::result::Result<MrInner, LocalBuf> {
        self.span.into_whole().map_err(|span| LocalBuf { span })
    }

    /// The piece as operations see it.
    #[inline]
    pub(crate) fn piece(&self) -> Piece<'_> {
        self.span.piece()
    }

    /// Splits off `[at, len)` and returns it; `self` keeps `[0, at)`.
    ///
    /// # Panics
    /// If `at > len`, like [`Vec::split_off`].
    #[must_use = "the split-off piece is dropped otherwise"]
    pub fn split_off(&mut self, at: usize) -> LocalBuf {
        LocalBuf {
            span: self.span.split_off(at),
        }
    }

    /// Splits off `[0, at)` and returns it; `self` keeps `[at, len)`.
    ///
    /// # Panics
    /// If `at > len`.
    #[must_use = "the split-off piece is dropped otherwise"]
    pub fn split_to(&mut self, at: usize) -> LocalBuf {
        LocalBuf {
            span: self.span.split_to(at),
        }
    }

    /// Joins `other`, which must directly follow `self` in the same registration.
    ///
    /// # Errors
    /// Gives `other` back when it is not the next piece.
    pub fn unsplit(&mut self, other: LocalBuf) -> std::result::Result<(), LocalBuf> {
        self.span
            .unsplit(other.span)
            .map_err(|span| LocalBuf { span })
    }

    /// Deregisters and returns the bytes as a `Vec`, when this piece is the whole region and
    /// no other piece is alive.
    ///
    /// # Errors
    /// Gives `self` back otherwise.
    pub fn into_vec(self) -> std::result::Result<Vec<u8>, LocalBuf> {
        self.into_whole().map(|inner| inner[..].to_vec())
    }
}

impl Deref for LocalBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let Span { mr, offset, len } = &self.span;
        // SAFETY: `offset..offset+len` lies inside the allocation, which lives as long as
        // `mr`; pieces are disjoint, and a piece in flight is owned by the operation, so no
        // work request of ours touches these bytes while this borrow lives.
        unsafe { std::slice::from_raw_parts(mr.byte(*offset), *len) }
    }
}

impl DerefMut for LocalBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let Span { mr, offset, len } = &self.span;
        // SAFETY: as in `deref`, and `&mut self` makes this the only borrow of the piece.
        unsafe { std::slice::from_raw_parts_mut(mr.byte(*offset), *len) }
    }
}

impl std::fmt::Debug for LocalBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBuf")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.span.len)
            .finish()
    }
}

/// Memory a peer can write is a [`SharedRegion`], never a [`LocalBuf`].
fn refuse_peer_writable(access: Access) -> Result<()> {
    if access.is_peer_writable() {
        return Err(Error::PeerWritable { access });
    }
    Ok(())
}
