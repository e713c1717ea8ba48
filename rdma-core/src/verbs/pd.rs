//! Protection domains: the scope in which memory and queue pairs meet.

use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys::*;

use crate::context::Context;
use crate::error::{Error, Result};

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
