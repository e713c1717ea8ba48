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

/// Scatter-gather entries of one work request, on the stack.
pub(crate) struct SgeList {
    sges: [ibv_sge; MAX_SGE],
    pub(crate) len: usize,
    pub(crate) total: usize,
}

impl SgeList {
    /// Collects the entries of `buffers`, checking their count and protection domain.
    pub(crate) fn collect<B: Buffers>(buffers: &B, max: u32, pd: *mut ibv_pd) -> Result<SgeList> {
        let mut list = SgeList {
            sges: [ibv_sge {
                addr: 0,
                length: 0,
                lkey: 0,
            }; MAX_SGE],
            len: 0,
            total: 0,
        };
        let mut count = 0usize;
        let mut foreign = false;
        buffers.for_each_buf(&mut |buf| {
            count += 1;
            foreign |= buf.pd_raw() != pd;
            if buf.is_empty() || list.len == MAX_SGE {
                return;
            }
            list.sges[list.len] = buf.sge();
            list.len += 1;
            list.total += buf.len();
        });
        if foreign {
            return Err(Error::InvalidArgument(
                "a buffer is registered in another protection domain than the queue pair's".into(),
            ));
        }
        if count > (max as usize).min(MAX_SGE) {
            return Err(Error::InvalidArgument(format!(
                "{count} scatter-gather entries, but the queue pair takes at most {}",
                (max as usize).min(MAX_SGE)
            )));
        }
        Ok(list)
    }

    pub(crate) fn entries(&mut self) -> (*mut ibv_sge, i32) {
        if self.len == 0 {
            (std::ptr::null_mut(), 0)
        } else {
            (self.sges.as_mut_ptr(), self.len as i32)
        }
    }
}
