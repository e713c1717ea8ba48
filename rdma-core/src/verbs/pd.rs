//! Protection domains: the scope in which memory and queue pairs meet.

use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys::*;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::mr::{Access, LocalBuf};
use crate::owned::StableBytes;
use crate::shared::SharedRegion;

/// A protection domain. Memory registered in it can be used only by queue pairs of the same
/// domain. Cheap to clone; deallocated when the last clone and everything made in it are gone.
#[derive(Clone)]
pub struct ProtectionDomain {
    pub(crate) inner: Arc<PdInner>,
}

pub(crate) struct PdInner {
    pub(crate) raw: NonNull<ibv_pd>,
    pub(crate) ctx: Context,
}

// SAFETY: libibverbs objects are thread-safe; the pointer stays valid until PdInner drops.
unsafe impl Send for PdInner {}
// SAFETY: as above.
unsafe impl Sync for PdInner {}

// Defined here rather than in context.rs: the context is below the protection domains made
// from it, and does not name them.
impl Context {
    /// Allocates a protection domain on this device.
    ///
    /// # Errors
    /// [`Error::Verbs`] when `ibv_alloc_pd` fails.
    pub fn alloc_pd(&self) -> Result<ProtectionDomain> {
        ProtectionDomain::new(self)
    }
}

impl ProtectionDomain {
    pub(crate) fn new(ctx: &Context) -> Result<ProtectionDomain> {
        // SAFETY: the context is open for as long as `ctx` lives, which PdInner keeps.
        let raw = unsafe { ibv_alloc_pd(ctx.raw()) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last_os("ibv_alloc_pd"))?;
        Ok(ProtectionDomain {
            inner: Arc::new(PdInner {
                raw,
                ctx: ctx.clone(),
            }),
        })
    }

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

    /// Allocates `len` bytes of zeroed, page-aligned memory and registers it with `access`
    /// for peers to use, typically with remote write or atomic rights: a [`SharedRegion`],
    /// whose bytes are reached only through methods that are sound while a peer writes them.
    ///
    /// # Errors
    /// As [`alloc`](ProtectionDomain::alloc).
    pub fn alloc_shared(&self, len: usize, access: Access) -> Result<SharedRegion> {
        SharedRegion::alloc(self, len, access)
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

    /// The device context.
    pub fn context(&self) -> &Context {
        &self.inner.ctx
    }

    #[inline]
    pub(crate) fn raw(&self) -> *mut ibv_pd {
        self.inner.raw.as_ptr()
    }
}

impl Drop for PdInner {
    fn drop(&mut self) {
        // SAFETY: every MR and QP of this domain holds an Arc to it, so none is left.
        unsafe { ibv_dealloc_pd(self.raw.as_ptr()) };
    }
}

impl std::fmt::Debug for ProtectionDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtectionDomain")
            .field("context", &self.inner.ctx)
            .finish()
    }
}
