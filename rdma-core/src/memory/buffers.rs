//! Owned buffers an operation takes, and their scatter-gather entries.

use std::mem::MaybeUninit;

use rdma_sys::{ibv_pd, ibv_sge};

use crate::error::{Error, Result};
use crate::mr::LocalBuf;
use crate::shared::SharedRegion;

/// Most scatter-gather entries anyrdma puts in one work request.
pub const MAX_SGE: usize = 32;

pub(crate) mod sealed {
    pub trait Sealed {}

    // Defined beside the registration it is a piece of.
    pub use crate::mr::Piece;
}

/// Owned registered memory an operation can take: one [`LocalBuf`] or [`SharedRegion`], or
/// several as a scatter-gather list (`Vec<LocalBuf>`, `[LocalBuf; N]`, `Vec<SharedRegion>`).
pub trait Buffers: sealed::Sealed + Send + Unpin + 'static {
    /// Calls `f` on each piece, in order (for the crate: a [`sealed::Piece`] exposes nothing
    /// outside it).
    #[doc(hidden)]
    fn for_each_piece(&self, f: &mut dyn FnMut(sealed::Piece<'_>));

    /// The one piece, for buffers that are a single piece (the common case, collected
    /// without a callback per piece).
    #[doc(hidden)]
    fn single_piece(&self) -> Option<sealed::Piece<'_>> {
        None
    }

    /// Total length in bytes.
    fn total_len(&self) -> usize {
        let mut total = 0;
        self.for_each_piece(&mut |piece| total += piece.len);
        total
    }
}

impl sealed::Sealed for LocalBuf {}
impl Buffers for LocalBuf {
    #[inline]
    fn for_each_piece(&self, f: &mut dyn FnMut(sealed::Piece<'_>)) {
        f(self.piece());
    }

    #[inline]
    fn single_piece(&self) -> Option<sealed::Piece<'_>> {
        Some(self.piece())
    }
}

impl sealed::Sealed for SharedRegion {}
impl Buffers for SharedRegion {
    #[inline]
    fn for_each_piece(&self, f: &mut dyn FnMut(sealed::Piece<'_>)) {
        f(self.piece());
    }

    #[inline]
    fn single_piece(&self) -> Option<sealed::Piece<'_>> {
        Some(self.piece())
    }
}

impl<T: Buffers> sealed::Sealed for Vec<T> {}
impl<T: Buffers> Buffers for Vec<T> {
    fn for_each_piece(&self, f: &mut dyn FnMut(sealed::Piece<'_>)) {
        self.iter().for_each(|b| b.for_each_piece(f));
    }
}

impl<T: Buffers, const N: usize> sealed::Sealed for [T; N] {}
impl<T: Buffers, const N: usize> Buffers for [T; N] {
    fn for_each_piece(&self, f: &mut dyn FnMut(sealed::Piece<'_>)) {
        self.iter().for_each(|b| b.for_each_piece(f));
    }
}

/// Checks that `buf` is registered in protection domain `pd`, as work requests require.
pub(crate) fn check_pd(buf: &LocalBuf, pd: *mut ibv_pd) -> Result<()> {
    if buf.piece().pd_raw() == pd {
        Ok(())
    } else {
        Err(foreign_pd())
    }
}

fn foreign_pd() -> Error {
    Error::InvalidArgument(
        "a buffer is registered in another protection domain than the queue pair's; nothing \
         was posted"
            .into(),
    )
}

/// Scatter-gather entries kept inline; longer lists spill to the heap.
const INLINE_SGES: usize = 4;

/// Scatter-gather entries of one work request: on the stack for the common short lists, so
/// building one costs a few stores (the inline entries are written only as they are used).
pub(crate) struct SgeList {
    inline: [MaybeUninit<ibv_sge>; INLINE_SGES],
    spill: Vec<ibv_sge>,
    pub(crate) len: usize,
    pub(crate) total: usize,
}

impl SgeList {
    /// An empty list, to be filled in place by [`SgeList::collect`].
    #[inline]
    pub(crate) fn new() -> SgeList {
        SgeList {
            inline: [const { MaybeUninit::uninit() }; INLINE_SGES],
            spill: Vec::new(),
            len: 0,
            total: 0,
        }
    }

    /// Collects the entries of `buffers` into this empty list, checking their count,
    /// protection domain and lengths. In place, not returned: the list (over 100 bytes) would
    /// otherwise be copied out of a `Result` on every post.
    #[inline]
    pub(crate) fn collect<B: Buffers>(
        &mut self,
        buffers: &B,
        max: u32,
        pd: *mut ibv_pd,
    ) -> Result<()> {
        debug_assert_eq!(self.len, 0, "collect fills an empty list");
        if let Some(piece) = buffers.single_piece() {
            // One entry always fits (a queue pair takes at least one).
            if piece.pd_raw() != pd {
                return Err(foreign_pd());
            }
            if piece.len() > 0 {
                self.inline[0].write(piece.sge()?);
                self.len = 1;
                self.total = piece.len();
            }
            return Ok(());
        }
        self.collect_pieces(buffers, max, pd)
    }

    fn collect_pieces<B: Buffers>(&mut self, buffers: &B, max: u32, pd: *mut ibv_pd) -> Result<()> {
        let mut count = 0usize;
        let mut foreign = false;
        let mut too_large = None;
        buffers.for_each_piece(&mut |piece| {
            count += 1;
            foreign |= piece.pd_raw() != pd;
            if piece.len() > 0 {
                match piece.sge() {
                    Ok(sge) => self.push(sge),
                    Err(err) => {
                        too_large.get_or_insert(err);
                    }
                }
                self.total += piece.len();
            }
        });
        if foreign {
            return Err(foreign_pd());
        }
        if let Some(err) = too_large {
            return Err(err);
        }
        let limit = (max as usize).min(MAX_SGE);
        if count > limit {
            return Err(Error::InvalidArgument(format!(
                "{count} scatter-gather entries, but the queue pair takes at most {limit}; \
                 nothing was posted"
            )));
        }
        Ok(())
    }

    fn push(&mut self, sge: ibv_sge) {
        if self.len < INLINE_SGES {
            self.inline[self.len].write(sge);
        } else {
            if self.spill.is_empty() {
                self.spill.reserve(2 * INLINE_SGES);
                // SAFETY: all INLINE_SGES inline entries were written (len reached it).
                self.spill
                    .extend(self.inline.iter().map(|sge| unsafe { sge.assume_init() }));
            }
            self.spill.push(sge);
        }
        self.len += 1;
    }

    /// The list as `ibv_*_wr` takes it: pointer and count (null and 0 when empty).
    pub(crate) fn entries(&mut self) -> (*mut ibv_sge, i32) {
        match self.len {
            0 => (std::ptr::null_mut(), 0),
            // The first `n` inline entries were written; MaybeUninit<T> has T's layout.
            n if n <= INLINE_SGES => (self.inline.as_mut_ptr().cast(), n as i32),
            n => (self.spill.as_mut_ptr(), n as i32),
        }
    }
}
