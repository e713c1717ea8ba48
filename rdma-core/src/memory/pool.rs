//! A pool of registered memory: buffers without a registration (a system call) each.
//!
//! The pool registers large chunks, grown on demand up to a cap, and carves each into blocks
//! of one size class (powers of two). Each class keeps its free blocks in two places:
//!
//! - **hot slots**: a few atomic pointers, each holding a block still wrapped in its
//!   registration view (the `Arc<MrInner>` a [`LocalBuf`](crate::LocalBuf) holds). A
//!   dropped buffer is put back here whole, and `alloc` takes it from here first: no heap allocation, two atomic
//!   exchanges per allocation and drop, and the most recently used blocks come back first,
//!   so a program that allocates a buffer per message keeps touching the same few cache
//!   lines and pages.
//! - **the free queue**: a lock-free queue of bare blocks, for everything the hot slots do
//!   not hold. A block taken from here gets a new registration view (one small heap
//!   allocation).
//!
//! A view holds its pool (an `Arc`), so views parked in hot slots would keep the pool alive
//! for ever: when the last [`MemoryPool`] handle goes, the hot slots are closed (each set to
//! a sentinel that no later put can replace) and the views in them dropped, which puts
//! their bare blocks into the queue. Only growing and trimming take a lock (they register
//! and deregister memory: system calls anyway).

use std::ptr::NonNull;
#[cfg(feature = "metrics")]
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use concurrent_queue::ConcurrentQueue;

use crate::error::{Error, Result};
use crate::hot_slots::HotSlots;
use crate::mr::{alloc_pages, page_size, Access, MrInner, Storage};
use crate::pd::ProtectionDomain;
use crate::wake::lock;

/// Sizes and limits of a [`MemoryPool`].
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// Bytes registered at a time for one size class (a class larger than this gets chunks
    /// of its own size). A class's first chunk is smaller: room for 16 blocks, at least
    /// 64 KiB (and at most this), so that a class a program touches a little (a messenger's
    /// control messages, a few odd sizes) does not pin a whole chunk. Default 1 MiB.
    pub chunk_size: usize,
    /// The most bytes the pool registers in all; an allocation that would need more fails
    /// with [`Error::PoolExhausted`]. Default 256 MiB.
    pub max_bytes: usize,
    /// The smallest block; smaller requests get one of these. Default 64 bytes.
    pub smallest: usize,
    /// The largest block; larger requests fail with [`Error::TooLarge`] (allocate those with
    /// [`ProtectionDomain::alloc`]). Default 64 KiB.
    pub largest: usize,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            chunk_size: 1 << 20,
            max_bytes: 256 << 20,
            smallest: 64,
            largest: 64 << 10,
        }
    }
}

/// A pool of registered, local-only memory: buffers without a registration each.
///
/// The pool registers chunks ([`PoolOptions::chunk_size`]) as they are needed and carves
/// each into blocks of one size class (powers of two from [`PoolOptions::smallest`] to
/// [`PoolOptions::largest`]). `alloc` takes a free block of the smallest class that fits
/// and hands it out as a [`LocalBuf`](crate::LocalBuf), with no system call once the pool
/// has grown to the working set; the block comes back when the buffer's last piece is dropped. Recently
/// freed blocks are kept ready in a few lock-free slots per class and are handed out first
/// (no heap allocation, and the same cache lines and pages reused); the rest wait in a
/// lock-free queue. Only growing and trimming take a lock. Safe to share between threads
/// and tasks (cheap to clone).
///
/// - **Local only**: pool memory cannot be [shared](crate::LocalBuf::share) with peers or
///   described to them ([`LocalBuf::remote`](crate::LocalBuf::remote) fails): the key of a
///   block is its chunk's, and would expose the neighbouring blocks. Memory for peers gets its own registration
///   ([`ProtectionDomain::alloc_shared`]).
/// - **Not zeroed**: a block holds what its previous user left (memory of this process).
/// - **Bounded and observable**: at most [`PoolOptions::max_bytes`] are registered;
///   [`stats`](MemoryPool::stats) tells chunks, bytes registered and in use, per class.
/// - **Giving memory back**: chunks stay registered while the pool lives, so that a burst
///   followed by another costs nothing; [`trim`](MemoryPool::trim) deregisters and frees
///   every chunk none of whose blocks is in use (call it when load drops). Everything is
///   given back when the pool and all its buffers are gone.
///
/// ```no_run
/// # fn demo() -> anyrdma_core::Result<()> {
/// use anyrdma_core::{Context, MemoryPool, PoolOptions};
/// let pd = Context::open_default()?.alloc_pd()?;
/// let pool = MemoryPool::new(&pd, PoolOptions::default());
/// let mut message = pool.alloc(200)?; // a 256-byte block, no system call once warm
/// message[..5].copy_from_slice(b"hello");
/// drop(message); // back to the pool
/// assert_eq!(pool.stats().bytes_in_use, 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryPool {
    handle: Arc<PoolHandle>,
}

/// The pool as its handles hold it: when the last handle goes, the hot slots close.
struct PoolHandle {
    shared: Arc<PoolShared>,
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        // No allocation can follow (that takes a handle). Close the hot slots, so that no
        // view parks there any more, and drop the views they held: their blocks go to the
        // free queues, and their references to the pool go, so that the pool is freed with
        // its last buffer.
        for class in &self.shared.classes {
            drop(class.hot.close());
        }
    }
}

pub(crate) struct PoolShared {
    pd: ProtectionDomain,
    options: PoolOptions,
    classes: Vec<Class>,
    /// Serialises growing (and trimming), which registers (or deregisters) memory.
    grow: Mutex<()>,
    chunks: AtomicUsize,
    bytes_registered: AtomicUsize,
    /// The pool's number in this process, its `pool` label among the exported metrics.
    #[cfg(feature = "metrics")]
    id: u64,
}

/// A class's first chunk holds this many blocks (see [`PoolOptions::chunk_size`])...
const FIRST_CHUNK_BLOCKS: usize = 16;
/// ...and is at least this large, so that small classes do not grow by tiny registrations.
const FIRST_CHUNK_MIN: usize = 64 << 10;

/// How many free blocks of a class are kept whole in hot slots: one cache line of pointers.
const HOT_SLOTS: usize = 8;

/// One size class: its free blocks and counts.
struct Class {
    size: usize,
    /// Free blocks kept whole (their views); closed when the pool has no handle left.
    hot: HotSlots<Arc<MrInner>, HOT_SLOTS>,
    /// The other free blocks, bare.
    free: ConcurrentQueue<FreeBlock>,
    /// Blocks carved from this class's chunks (changed only under the grow lock).
    blocks: AtomicUsize,
}

impl Class {
    /// Blocks held by live buffers: all blocks less the free ones. A snapshot: blocks moving
    /// between a buffer and the free lists may be counted on either side.
    fn in_use(&self) -> usize {
        let hot = self.hot.len();
        self.blocks
            .load(Ordering::Relaxed)
            .saturating_sub(self.free.len() + hot)
    }
}

/// A free block: where it is, and the chunk whose registration covers it.
struct FreeBlock {
    chunk: Arc<MrInner>,
    ptr: NonNull<u8>,
}

// SAFETY: a free block is owned by the pool's queue alone: no LocalBuf refers to its bytes
// until it is popped, and its chunk (an Arc<MrInner>) is Send.
unsafe impl Send for FreeBlock {}

/// What a pool block's registration view holds to go back to the pool.
pub(crate) struct PoolBlock {
    chunk: Arc<MrInner>,
    pool: Arc<PoolShared>,
    class: usize,
}

impl PoolBlock {
    /// The registration view of the block at `ptr` is being dropped (not kept whole in a
    /// hot slot): the bare block goes back to the free queue.
    pub(crate) fn give_back(&mut self, ptr: NonNull<u8>) {
        self.pool.push_free(self.class, self.chunk.clone(), ptr);
    }
}

/// The last piece of a pool buffer is being dropped, and `mr` is its block's registration
/// view: park the view whole in a hot slot of its class, or else drop it (which puts the
/// bare block into the free queue). While other pieces or views hold `mr`, it is only
/// dropped: the last of them gives the block back.
#[inline]
pub(crate) fn recycle(mr: Arc<MrInner>) {
    // With no weak references, a count of one is this reference alone, and no other can
    // appear: nothing else can clone it.
    if Arc::strong_count(&mr) != 1 {
        return;
    }
    // Order the other holders' last uses of the block (released by their drops) before its
    // next user's, as `Arc`'s own drop does before freeing.
    fence(Ordering::Acquire);
    let raw = Arc::into_raw(mr).cast_mut();
    // SAFETY: `raw` is the only reference to the view, alive until it is given away below.
    let view = unsafe { &*raw };
    let Some(block) = view.pool_block() else {
        // SAFETY: `raw` came from `Arc::into_raw` above and was stored nowhere.
        drop(unsafe { Arc::from_raw(raw) });
        return;
    };
    // SAFETY: `raw` came from `Arc::into_raw` above and was stored nowhere. After a
    // successful put nothing here touches the view or the pool again (the hot slot owns the
    // view, which owns the reference to the pool); a refused view is dropped.
    let mr = unsafe { Arc::from_raw(raw) };
    if let Err(mr) = block.pool.classes[block.class].hot.put(mr) {
        drop(mr);
    }
}

/// Usage of a [`MemoryPool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    /// Chunks registered.
    pub chunks: usize,
    /// Bytes registered (the chunks' sizes).
    pub bytes_registered: usize,
    /// Bytes of the blocks held by live buffers (whole blocks, not the lengths asked for).
    pub bytes_in_use: usize,
    /// Each size class, smallest first.
    pub classes: Vec<ClassStats>,
}

/// Usage of one size class of a [`MemoryPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassStats {
    /// The block size.
    pub size: usize,
    /// Blocks held by live buffers.
    pub in_use: usize,
    /// Blocks free in the pool.
    pub free: usize,
}

impl MemoryPool {
    /// A pool that registers memory in `pd`. Nothing is registered before the first
    /// allocation. Options out of range are brought in: `smallest` and `largest` are rounded
    /// up to powers of two (`smallest` at least 8), `largest` is at least `smallest`.
    pub fn new(pd: &ProtectionDomain, options: PoolOptions) -> MemoryPool {
        let smallest = options.smallest.max(8).next_power_of_two();
        let largest = options.largest.max(smallest).next_power_of_two();
        let mut classes = Vec::new();
        let mut size = smallest;
        while size <= largest {
            classes.push(Class {
                size,
                hot: HotSlots::new(),
                free: ConcurrentQueue::unbounded(),
                blocks: AtomicUsize::new(0),
            });
            size *= 2;
        }
        let pool = MemoryPool {
            handle: Arc::new(PoolHandle {
                shared: Arc::new(PoolShared {
                    pd: pd.clone(),
                    options: PoolOptions {
                        smallest,
                        largest,
                        ..options
                    },
                    classes,
                    grow: Mutex::new(()),
                    chunks: AtomicUsize::new(0),
                    bytes_registered: AtomicUsize::new(0),
                    #[cfg(feature = "metrics")]
                    id: {
                        static NEXT_POOL: AtomicU64 = AtomicU64::new(1);
                        NEXT_POOL.fetch_add(1, Ordering::Relaxed)
                    },
                }),
            }),
        };
        #[cfg(feature = "metrics")]
        crate::stats::metrics::track(&pool.handle.shared);
        pool
    }

    /// The registration view of a block of `len` bytes from the pool, as
    /// [`alloc`](MemoryPool::alloc) hands it out (made a `LocalBuf` in mr/local.rs, which
    /// is above the pool: this file does not name `LocalBuf`).
    ///
    /// # Errors
    /// As [`alloc`](MemoryPool::alloc).
    #[inline]
    pub(crate) fn alloc_block(&self, len: usize) -> Result<Arc<MrInner>> {
        let pool = &self.handle.shared;
        let index = pool.class_of(len)?;
        let class = &pool.classes[index];
        if let Some(mut mr) = class.hot.take() {
            // A parked view is held by its slot alone, so this succeeds; were it shared, it
            // is dropped (its block goes to the queue) and a new view is made below.
            if let Some(view_len) = Arc::get_mut(&mut mr).and_then(MrInner::pool_block_len) {
                *view_len = len;
                return Ok(mr);
            }
        }
        let block = match class.free.pop() {
            Ok(block) => block,
            Err(_) => pool.grow(index)?,
        };
        Ok(Arc::new(PoolShared::view(pool, index, block, len)))
    }

    /// Current usage.
    pub fn stats(&self) -> PoolStats {
        self.handle.shared.stats()
    }

    /// Deregisters and frees every chunk none of whose blocks is in use; returns how many
    /// bytes it gave back.
    pub fn trim(&self) -> usize {
        let pool = &self.handle.shared;
        let _growing = lock(&pool.grow);
        let mut released = 0;
        for class in &pool.classes {
            // Dropping the parked views puts their blocks into the queue.
            drop(class.hot.drain());
            let mut free = Vec::new();
            while let Ok(block) = class.free.pop() {
                free.push(block);
            }
            // Group the free blocks by chunk: a chunk all of whose blocks are here is idle.
            free.sort_by_key(|block| Arc::as_ptr(&block.chunk) as usize);
            let mut kept = Vec::new();
            for group in free.chunk_by(|a, b| Arc::ptr_eq(&a.chunk, &b.chunk)) {
                let chunk_len = group[0].chunk.len();
                if group.len() == chunk_len / class.size {
                    released += chunk_len;
                    class.blocks.fetch_sub(group.len(), Ordering::Relaxed);
                    pool.chunks.fetch_sub(1, Ordering::Relaxed);
                    pool.bytes_registered
                        .fetch_sub(chunk_len, Ordering::Relaxed);
                } else {
                    kept.extend(group.iter().map(|block| (block.chunk.clone(), block.ptr)));
                }
            }
            // Dropping `free` drops the last references to idle chunks: deregistered, freed.
            drop(free);
            for (chunk, ptr) in kept {
                let _ = class.free.push(FreeBlock { chunk, ptr });
            }
        }
        released
    }
}

impl PoolShared {
    /// Current usage (see [`MemoryPool::stats`]).
    fn stats(&self) -> PoolStats {
        let classes: Vec<ClassStats> = self
            .classes
            .iter()
            .map(|class| {
                let in_use = class.in_use();
                ClassStats {
                    size: class.size,
                    in_use,
                    free: class.blocks.load(Ordering::Relaxed).saturating_sub(in_use),
                }
            })
            .collect();
        PoolStats {
            chunks: self.chunks.load(Ordering::Relaxed),
            bytes_registered: self.bytes_registered.load(Ordering::Relaxed),
            bytes_in_use: classes.iter().map(|c| c.in_use * c.size).sum(),
            classes,
        }
    }

    /// The index of the smallest class that holds `len` bytes.
    fn class_of(&self, len: usize) -> Result<usize> {
        if len > self.options.largest {
            return Err(Error::TooLarge {
                what: "pool allocation (allocate it with ProtectionDomain::alloc)",
                len,
                max: self.options.largest,
            });
        }
        let size = len.max(self.options.smallest).next_power_of_two();
        Ok((size.trailing_zeros() - self.options.smallest.trailing_zeros()) as usize)
    }

    /// Registers a chunk for class `index` and returns one of its blocks; the others go to
    /// the class's free queue.
    fn grow(&self, index: usize) -> Result<FreeBlock> {
        let class = &self.classes[index];
        let _growing = lock(&self.grow);
        // Another task may have grown this class while this one waited for the lock.
        if let Ok(block) = class.free.pop() {
            return Ok(block);
        }
        let chunk_len = if class.blocks.load(Ordering::Relaxed) == 0 {
            (class.size * FIRST_CHUNK_BLOCKS)
                .max(FIRST_CHUNK_MIN)
                .min(self.options.chunk_size)
        } else {
            self.options.chunk_size
        }
        .max(class.size);
        let registered = self.bytes_registered.load(Ordering::Relaxed);
        if registered + chunk_len > self.options.max_bytes {
            return Err(Error::PoolExhausted {
                requested: class.size,
                registered,
                max_bytes: self.options.max_bytes,
            });
        }
        let (ptr, layout) = alloc_pages(chunk_len, page_size())?;
        let chunk = Arc::new(MrInner::register(
            &self.pd,
            ptr,
            chunk_len,
            Storage::Aligned(layout),
            Access::LOCAL,
        )?);
        self.chunks.fetch_add(1, Ordering::Relaxed);
        self.bytes_registered
            .fetch_add(chunk_len, Ordering::Relaxed);
        let blocks = chunk_len / class.size;
        class.blocks.fetch_add(blocks, Ordering::Relaxed);
        for i in 1..blocks {
            let _ = class.free.push(FreeBlock {
                chunk: chunk.clone(),
                ptr: chunk.block(i * class.size),
            });
        }
        Ok(FreeBlock {
            ptr: chunk.block(0),
            chunk,
        })
    }
}

#[cfg(feature = "metrics")]
impl crate::stats::metrics::Exported for PoolShared {
    fn export(&self) {
        let stats = self.stats();
        crate::stats::metrics::record_pool(
            stats.chunks,
            stats.bytes_registered,
            stats.bytes_in_use,
            self.pd.context().device_name(),
            self.id,
        );
    }
}

impl PoolShared {
    /// A registration view of `len` bytes of a free block of class `index`: the chunk's
    /// registration covers it; local only, like the chunk.
    fn view(pool: &Arc<PoolShared>, index: usize, block: FreeBlock, len: usize) -> MrInner {
        let (lkey, rkey) = block.chunk.keys();
        let registration = (block.chunk.raw_mr(), lkey, rkey);
        let storage = Storage::Pool(PoolBlock {
            chunk: block.chunk,
            pool: pool.clone(),
            class: index,
        });
        MrInner::new(
            registration,
            block.ptr,
            len,
            Access::LOCAL,
            storage,
            pool.pd.clone(),
        )
    }

    /// Puts a bare free block into class `index`'s queue.
    fn push_free(&self, index: usize, chunk: Arc<MrInner>, ptr: NonNull<u8>) {
        // An unbounded queue refuses only when closed, and it is never closed.
        let _ = self.classes[index].free.push(FreeBlock { chunk, ptr });
    }
}

impl std::fmt::Debug for MemoryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPool")
            .field("options", &self.handle.shared.options)
            .field("stats", &self.stats())
            .finish()
    }
}
