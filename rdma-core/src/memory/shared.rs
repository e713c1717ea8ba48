//! Memory a peer can write: reached only through methods that are sound while it does.
//!
//! A peer with remote write or atomic rights may change these bytes at any moment, outside
//! Rust's knowledge. A `&[u8]` into them would be a data race: the compiler may assume the
//! bytes do not change while the reference lives (a loop waiting for a flag may never see it;
//! a header checked and then read again may differ). So a [`SharedRegion`] never hands out a
//! reference into its bytes: it copies in and out with atomic accesses, loads and stores
//! aligned `u64` words atomically, and waits for a word to change by loading it again each
//! time.
//!
//! It is `Sync`, so two threads may copy and run word operations on the same bytes at once.
//! Atomics of different sizes racing on the same bytes are undefined in Rust's memory model,
//! so each byte is only ever reached at one size: the [`copy`] module's rule (the aligned
//! words inside a piece as whole words, the few bytes at its ends as bytes).

mod copy;

use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::buffers::sealed::Piece;
use crate::error::{Error, Result};
use crate::mr::{alloc_pages, page_size, Access, LocalBuf, MrInner, Storage};
use crate::pd::ProtectionDomain;
use crate::remote::RemoteRegion;
use crate::runtime::budget::yield_now;
use crate::runtime::{default_runtime, RuntimeHandle};
use crate::span::Span;

/// Registered memory that peers may write (remote write or atomic rights): an owned piece of
/// a registration, like [`LocalBuf`], whose bytes Rust code reaches only through methods that
/// are sound while a peer writes them.
///
/// - Copy in and out at an offset: [`read_at`](SharedRegion::read_at),
///   [`write_at`](SharedRegion::write_at), [`to_vec`](SharedRegion::to_vec).
/// - Aligned 64-bit words, atomically: [`load_u64`](SharedRegion::load_u64) (acquire),
///   [`store_u64`](SharedRegion::store_u64) (release); the same words a peer's RDMA atomics
///   work on.
/// - Wait for a word to change: [`wait_u64`](SharedRegion::wait_u64).
///
/// It is also the local side of operations, taken by value and given back like a
/// `LocalBuf`: send from it, write from it, read or receive into it. [`remote`](SharedRegion::remote)
/// describes exactly this piece to a peer. [`revoke`](SharedRegion::revoke) takes the peer's
/// access away (its key stops working) and gives the memory back as a plain `LocalBuf`.
///
/// There is no `Deref` to `[u8]`, by design:
///
/// ```compile_fail
/// fn peek(shared: &anyrdma_core::SharedRegion) -> u8 {
///     shared[0] // error: a SharedRegion cannot be indexed: a peer may write it meanwhile
/// }
/// ```
///
/// ```no_run
/// # async fn demo() -> anyrdma_core::Result<()> {
/// use anyrdma_core::{Access, Context};
/// let pd = Context::open_default()?.alloc_pd()?;
/// let mailbox = pd.alloc_shared(4096, Access::REMOTE_WRITE)?;
/// let for_the_peer = mailbox.remote()?; // send this to the peer
/// // The peer writes its message, then sets the word at offset 0 to its length.
/// let len = mailbox.wait_u64(0, 0).await?;
/// let mut message = vec![0; len as usize];
/// mailbox.read_at(8, &mut message)?;
/// # Ok(()) }
/// ```
pub struct SharedRegion {
    span: Span,
}

// Defined here, beside what it makes (see the protection domain's other allocations, in
// mr.rs).
impl ProtectionDomain {
    /// Allocates `len` bytes of zeroed, page-aligned memory and registers it with `access`
    /// for peers to use, typically with remote write or atomic rights: a [`SharedRegion`],
    /// whose bytes are reached only through methods that are sound while a peer writes them.
    ///
    /// # Errors
    /// As [`alloc`](ProtectionDomain::alloc).
    pub fn alloc_shared(&self, len: usize, access: Access) -> Result<SharedRegion> {
        SharedRegion::alloc(self, len, access)
    }
}

impl SharedRegion {
    /// `len` bytes of zeroed, page-aligned memory registered with `access`.
    pub(crate) fn alloc(pd: &ProtectionDomain, len: usize, access: Access) -> Result<Self> {
        let (ptr, layout) = alloc_pages(len, page_size())?;
        let mr = MrInner::register(pd, ptr, len, Storage::Aligned(layout), access)?;
        Ok(SharedRegion::whole(Arc::new(mr)))
    }

    /// The whole registration `mr` as one piece.
    pub(crate) fn whole(mr: Arc<MrInner>) -> SharedRegion {
        SharedRegion {
            span: Span::whole(mr),
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

    /// The rights the registration grants.
    pub fn access(&self) -> Access {
        self.span.mr.access()
    }

    /// The device address of the first byte.
    pub fn addr(&self) -> u64 {
        self.span.addr()
    }

    /// This piece as a peer needs it for RDMA: its address and length (exactly this piece)
    /// and the registration's remote key, with the rights it was registered with.
    ///
    /// The key is the registration's: other pieces split from the same allocation answer to
    /// it too. To give peers memory that is isolated from the rest, allocate it on its own.
    ///
    /// # Errors
    /// [`Error::LocalOnly`] when the registration has no remote right.
    pub fn remote(&self) -> Result<RemoteRegion> {
        self.span.remote()
    }

    /// Copies `into.len()` bytes starting at `offset` out of the region.
    ///
    /// Each aligned 8-byte word is read atomically as a whole (the bytes at the piece's
    /// ends, outside whole words, one by one); a peer or another thread writing meanwhile
    /// may leave some words old and some new, as with any memory shared without a lock: the
    /// protocol says when a range is complete (for example, a flag word set after the data,
    /// read with [`load_u64`](SharedRegion::load_u64) first).
    ///
    /// # Errors
    /// [`Error::SharedOutOfRange`] when the range does not fit; nothing was read.
    pub fn read_at(&self, offset: usize, into: &mut [u8]) -> Result<()> {
        self.check_range(offset, into.len())?;
        // SAFETY: the range lies inside this piece (checked above), whose bytes the span's
        // registration keeps allocated while `self` is borrowed; Rust code reaches them
        // only through `copy`'s rule (this type has no other access), and the device's
        // accesses are outside the Rust memory model, as another process's would be.
        unsafe { copy::copy_out(&copy::Direct, self.start(), self.span.len, offset, into) };
        // Whatever the peer wrote before a flag that an acquire load saw is visible now.
        fence(Ordering::Acquire);
        Ok(())
    }

    /// Copies `bytes` into the region at `offset`.
    ///
    /// Aligned 8-byte words that `bytes` covers whole are stored whole; a word it covers in
    /// part is changed with a compare-and-swap loop, so another thread's concurrent change
    /// of the word's other bytes is kept.
    ///
    /// # Errors
    /// [`Error::SharedOutOfRange`] when the range does not fit; nothing was written.
    pub fn write_at(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        self.check_range(offset, bytes.len())?;
        fence(Ordering::Release);
        // SAFETY: as in `read_at`.
        unsafe { copy::copy_in(&copy::Direct, self.start(), self.span.len, offset, bytes) };
        Ok(())
    }

    /// A copy of a range of the region (`..` for all of it).
    ///
    /// # Errors
    /// [`Error::SharedOutOfRange`] when the range does not fit, [`Error::ReversedRange`]
    /// when it starts after it ends.
    pub fn to_vec(&self, range: impl RangeBounds<usize>) -> Result<Vec<u8>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => self.span.len,
        };
        if end < start {
            return Err(Error::ReversedRange {
                start: start as u64,
                end: end as u64,
            });
        }
        let mut bytes = vec![0; end - start];
        self.read_at(start, &mut bytes)?;
        Ok(bytes)
    }

    /// Loads the 64-bit word at `offset` (acquire): what a peer wrote before it stored this
    /// word is visible afterwards.
    ///
    /// # Errors
    /// [`Error::SharedOutOfRange`] when the word does not fit, [`Error::SharedMisaligned`]
    /// when its address is not a multiple of 8.
    pub fn load_u64(&self, offset: usize) -> Result<u64> {
        Ok(self.word(offset)?.load(Ordering::Acquire))
    }

    /// Stores `value` into the 64-bit word at `offset` (release).
    ///
    /// # Errors
    /// As [`load_u64`](SharedRegion::load_u64); nothing was stored.
    pub fn store_u64(&self, offset: usize, value: u64) -> Result<()> {
        self.word(offset)?.store(value, Ordering::Release);
        Ok(())
    }

    /// Waits until the 64-bit word at `offset` differs from `current`, and returns its new
    /// value (loaded with acquire, as [`load_u64`](SharedRegion::load_u64)).
    ///
    /// Every check loads the word from memory again. It spins briefly, then yields to the
    /// executor, then sleeps with a growing pause (up to 1 ms) on the runtime of the
    /// region's context (or the process default), so a long wait costs little CPU: a peer's
    /// write is seen within about a millisecond. For lower latency, have the peer send a
    /// message (a write with immediate) instead of polling memory.
    ///
    /// # Errors
    /// As [`load_u64`](SharedRegion::load_u64), and [`Error::NoRuntime`] when a wait has to
    /// sleep and no runtime is known; [`Error::Runtime`] when the context's runtime cannot
    /// make a timer on the waiting thread (a context bound to Tokio, awaited elsewhere).
    pub async fn wait_u64(&self, offset: usize, current: u64) -> Result<u64> {
        const SPINS: u32 = 64;
        const YIELDS: u32 = 256;
        const MAX_PAUSE: Duration = Duration::from_millis(1);
        let word = self.word(offset)?;
        let mut runtime: Option<RuntimeHandle> = None;
        let mut pause = Duration::from_micros(1);
        let mut tries = 0u32;
        loop {
            let value = word.load(Ordering::Acquire);
            if value != current {
                return Ok(value);
            }
            tries = tries.saturating_add(1);
            if tries < SPINS {
                std::hint::spin_loop();
            } else if tries < SPINS + YIELDS {
                yield_now().await;
            } else {
                let runtime = match &runtime {
                    Some(runtime) => runtime,
                    None => runtime.insert(self.runtime()?),
                };
                runtime.try_sleep(pause)?.await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }

    /// Splits off `[at, len)` and returns it; `self` keeps `[0, at)`.
    ///
    /// # Panics
    /// If `at > len`, like [`Vec::split_off`].
    #[must_use = "the split-off piece is dropped otherwise"]
    pub fn split_off(&mut self, at: usize) -> SharedRegion {
        SharedRegion {
            span: self.span.split_off(at),
        }
    }

    /// Joins `other`, which must directly follow `self` in the same registration.
    ///
    /// # Errors
    /// Gives `other` back when it is not the next piece.
    pub fn unsplit(&mut self, other: SharedRegion) -> std::result::Result<(), SharedRegion> {
        self.span
            .unsplit(other.span)
            .map_err(|span| SharedRegion { span })
    }

    /// Takes the peers' access away and gives the memory back as a plain [`LocalBuf`] (with
    /// its bytes as they are): the memory is registered again for local use and the old
    /// registration deregistered, so its remote key stops working (a peer's access with it
    /// fails with a remote access error), before any `&[u8]` to the bytes can exist.
    ///
    /// # Errors
    /// Gives `self` back with [`Error::NotWholeRegion`] when this piece is not the whole
    /// allocation or other pieces of it are alive (held by operations in flight, or split
    /// off), or with the error of the new registration or of the deregistration (the old
    /// registration then still stands).
    pub fn revoke(self) -> std::result::Result<LocalBuf, (SharedRegion, Error)> {
        match self.span.into_whole() {
            Ok(inner) => match inner.reregister(Access::LOCAL) {
                Ok(inner) => Ok(LocalBuf::whole(Arc::new(inner))),
                Err((inner, err)) => Err((SharedRegion::whole(Arc::new(inner)), err)),
            },
            Err(span) => Err((SharedRegion { span }, Error::NotWholeRegion)),
        }
    }

    /// The piece as operations see it.
    #[inline]
    pub(crate) fn piece(&self) -> Piece<'_> {
        self.span.piece()
    }

    /// The registration and this piece's place in it.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.span.len => Ok(()),
            _ => Err(Error::SharedOutOfRange {
                offset,
                len,
                region_len: self.span.len,
            }),
        }
    }

    /// The first byte of this piece.
    fn start(&self) -> *mut u8 {
        self.span.mr.byte(self.span.offset)
    }

    /// The aligned 64-bit word at `offset`, as an atomic: a word inside this piece, which
    /// `copy`'s rule reaches as a whole word too.
    fn word(&self, offset: usize) -> Result<&AtomicU64> {
        self.check_range(offset, 8)?;
        let ptr = self.span.mr.byte(self.span.offset + offset);
        if ptr as usize % 8 != 0 {
            return Err(Error::SharedMisaligned { offset });
        }
        // SAFETY: the 8 bytes lie inside the allocation (checked above), which the span's
        // registration keeps alive as long as the borrow of `self`, at an 8-aligned address
        // (checked above); Rust code reaches them only atomically, and as this one word
        // (`copy`'s rule: an aligned word inside the piece), never byte by byte.
        Ok(unsafe { AtomicU64::from_ptr(ptr.cast()) })
    }

    fn runtime(&self) -> Result<RuntimeHandle> {
        match self.span.mr.pd.context().runtime() {
            Some(runtime) => Ok(runtime.clone()),
            None => default_runtime(),
        }
    }
}

impl std::fmt::Debug for SharedRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRegion")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.span.len)
            .field("access", &self.access())
            .finish()
    }
}
