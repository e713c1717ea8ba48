//! An owned piece of a registration: what [`LocalBuf`](crate::LocalBuf) and
//! [`SharedRegion`](crate::SharedRegion) both are, and how pieces split and join.
//!
//! Pieces of one registration are disjoint: splitting hands out the two halves, joining
//! takes back a neighbour, and the registration changes (shared, revoked, given back) only
//! through the one piece that covers all of it when no other is alive.

use std::mem::ManuallyDrop;
use std::sync::Arc;

use crate::buffers::sealed::Piece;
use crate::error::Result;
use crate::mr::MrInner;
use crate::remote::RemoteRegion;

pub(crate) struct Span {
    /// Dropped by hand in `Drop`, so that a pool block's registration view can go back to
    /// its pool whole (see [`crate::pool::recycle`]).
    pub(crate) mr: ManuallyDrop<Arc<MrInner>>,
    pub(crate) offset: usize,
    pub(crate) len: usize,
}

impl Span {
    /// All of `mr` as one piece.
    pub(crate) fn whole(mr: Arc<MrInner>) -> Span {
        let len = mr.len();
        Span {
            mr: ManuallyDrop::new(mr),
            offset: 0,
            len,
        }
    }

    /// The device address of the first byte.
    #[inline]
    pub(crate) fn addr(&self) -> u64 {
        self.mr.byte(self.offset) as u64
    }

    /// The piece as operations see it.
    #[inline]
    pub(crate) fn piece(&self) -> Piece<'_> {
        Piece {
            mr: &self.mr,
            offset: self.offset,
            len: self.len,
        }
    }

    /// This piece as a peer needs it: exactly its range, under the registration's key.
    pub(crate) fn remote(&self) -> Result<RemoteRegion> {
        self.mr.remote(self.offset, self.len)
    }

    /// Splits off `[at, len)`; `self` keeps `[0, at)`.
    ///
    /// # Panics
    /// If `at > len`.
    pub(crate) fn split_off(&mut self, at: usize) -> Span {
        assert!(
            at <= self.len,
            "split_off at {at} beyond length {}",
            self.len
        );
        let tail = Span {
            mr: self.mr.clone(),
            offset: self.offset + at,
            len: self.len - at,
        };
        self.len = at;
        tail
    }

    /// Splits off `[0, at)`; `self` keeps `[at, len)`.
    ///
    /// # Panics
    /// If `at > len`.
    pub(crate) fn split_to(&mut self, at: usize) -> Span {
        assert!(
            at <= self.len,
            "split_to at {at} beyond length {}",
            self.len
        );
        let head = Span {
            mr: self.mr.clone(),
            offset: self.offset,
            len: at,
        };
        self.offset += at;
        self.len -= at;
        head
    }

    /// Joins `other` if it directly follows `self` in the same registration; else gives it
    /// back.
    pub(crate) fn unsplit(&mut self, other: Span) -> std::result::Result<(), Span> {
        if Arc::ptr_eq(&self.mr, &other.mr) && self.offset + self.len == other.offset {
            self.len += other.len;
            Ok(())
        } else {
            Err(other)
        }
    }

    /// The registration, when this piece is all of it and nothing else holds it; else the
    /// piece back.
    pub(crate) fn into_whole(self) -> std::result::Result<MrInner, Span> {
        if self.offset != 0 || self.len != self.mr.len() {
            return Err(self);
        }
        let (offset, len) = (self.offset, self.len);
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so its `mr` is taken once, here.
        let mr = unsafe { ManuallyDrop::take(&mut this.mr) };
        Arc::try_unwrap(mr).map_err(|mr| Span {
            mr: ManuallyDrop::new(mr),
            offset,
            len,
        })
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        // SAFETY: the span is being dropped: `mr` is taken once and never used again.
        let mr = unsafe { ManuallyDrop::take(&mut self.mr) };
        if mr.is_pool_block() {
            crate::pool::recycle(mr);
        }
    }
}
