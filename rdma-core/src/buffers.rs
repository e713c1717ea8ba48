//! Owned buffers an operation takes, and their scatter-gather entries.

use rdma_sys::{ibv_pd, ibv_sge};

use crate::error::{Error, Result};
use crate::mr::LocalBuf;

/// Most scatter-gather entries anyrdma puts in one work request.
pub const MAX_SGE: usize = 32;

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// Owned registered memory an operation can take: one [`LocalBuf`], or several as a
/// scatter-gather list (`Vec<LocalBuf>`, `[LocalBuf; N]`).
pub trait Buffers: sealed::Sealed + Send + Unpin + 'static {
    /// Calls `f` on each piece, in order.
    fn for_each_buf(&self, f: &mut dyn FnMut(&LocalBuf));

    /// Total length in bytes.
    fn total_len(&self) -> usize {
        let mut total = 0;
        self.for_each_buf(&mut |b| total += b.len());
        total
    }
}

impl sealed::Sealed for LocalBuf {}
impl Buffers for LocalBuf {
    fn for_each_buf(&self, f: &mut dyn FnMut(&LocalBuf)) {
        f(self);
    }
}

impl sealed::Sealed for Vec<LocalBuf> {}
impl Buffers for Vec<LocalBuf> {
    fn for_each_buf(&self, f: &mut dyn FnMut(&LocalBuf)) {
        self.iter().for_each(f);
    }
}

impl<const N: usize> sealed::Sealed for [LocalBuf; N] {}
impl<const N: usize> Buffers for [LocalBuf; N] {
    fn for_each_buf(&self, f: &mut dyn FnMut(&LocalBuf)) {
        self.iter().for_each(f);
    }
}

/// Checks that `buf` is registered in protection domain `pd`, as work requests require.
pub(crate) fn check_pd(buf: &LocalBuf, pd: *mut ibv_pd) -> Result<()> {
    if buf.pd_raw() == pd {
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
/// building one costs a few stores.
pub(crate) struct SgeList {
    inline: [ibv_sge; INLINE_SGES],
    spill: Vec<ibv_sge>,
    pub(crate) len: usize,
    pub(crate) total: usize,
}

impl SgeList {
    /// Collects the entries of `buffers`, checking their count, protection domain and
    /// lengths.
    pub(crate) fn collect<B: Buffers>(buffers: &B, max: u32, pd: *mut ibv_pd) -> Result<SgeList> {
        const EMPTY: ibv_sge = ibv_sge {
            addr: 0,
            length: 0,
            lkey: 0,
        };
        let mut list = SgeList {
            inline: [EMPTY; INLINE_SGES],
            spill: Vec::new(),
            len: 0,
            total: 0,
        };
        let mut count = 0usize;
        let mut foreign = false;
        let mut too_large = None;
        buffers.for_each_buf(&mut |buf| {
            count += 1;
            foreign |= buf.pd_raw() != pd;
            if !buf.is_empty() {
                match buf.sge() {
                    Ok(sge) => list.push(sge),
                    Err(err) => {
                        too_large.get_or_insert(err);
                    }
                }
                list.total += buf.len();
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
        Ok(list)
    }

    fn push(&mut self, sge: ibv_sge) {
        if self.len < INLINE_SGES {
            self.inline[self.len] = sge;
        } else {
            if self.spill.is_empty() {
                self.spill.extend_from_slice(&self.inline);
            }
            self.spill.push(sge);
        }
        self.len += 1;
    }

    /// The list as `ibv_*_wr` takes it: pointer and count (null and 0 when empty).
    pub(crate) fn entries(&mut self) -> (*mut ibv_sge, i32) {
        match self.len {
            0 => (std::ptr::null_mut(), 0),
            n if n <= INLINE_SGES => (self.inline.as_mut_ptr(), n as i32),
            n => (self.spill.as_mut_ptr(), n as i32),
        }
    }
}
