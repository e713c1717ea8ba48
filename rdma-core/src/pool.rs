//! A pool of registered memory: buffers without a registration (a system call) each.
//!
//! The pool registers large chunks, grown on demand up to a cap, and carves each into blocks
//! of one size class (powers of two). `alloc` pops a free block of the smallest class that
//! fits from a lock-free queue and wraps it as a [`LocalBuf`]; when the last piece of that
//! buffer is dropped, the block goes back to its queue. Only growing takes a lock (it
//! registers memory: a system call anyway).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use concurrent_queue::ConcurrentQueue;

use crate::error::{Error, Result};
use crate::mr::{alloc_pages, page_size, Access, LocalBuf, MrInner, Storage};
use crate::pd::ProtectionDomain;
use crate::wake::lock;

/// Sizes and limits of a [`MemoryPool`].
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// Bytes registered at a time for one size class (a class larger than this gets chunks
    /// of its own size). Default 1 MiB.
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
/// from a lock-free queue and wraps it as a [`LocalBuf`], with no system call once the pool
/// has grown to the working set; the block goes back to its queue when the buffer's last
/// piece is dropped. Only growing takes a lock. Safe to share between threads and tasks
/// (cheap to clone).
///
/// - **Local only**: pool memory cannot be [shared](LocalBuf::share) with peers or described
///   to them ([`LocalBuf::remote`] fails): the key of a block is its chunk's, and would
///   expose the neighbouring blocks. Memory for peers gets its own registration
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
    shared: Arc<PoolShared>,
}

pub(crate) struct PoolShared {
    pd: ProtectionDomain,
    options: PoolOptions,
    classes: Vec<Class>,
    /// Serialises growing (and trimming), which registers (or deregisters) memory.
    grow: Mutex<()>,
    chunks: AtomicUsize,
    bytes_registered: AtomicUsize,
}

/// One size class: its free blocks and counts.
struct Class {
    size: usize,
    free: ConcurrentQueue<FreeBlock>,
    in_use: AtomicUsize,
}

/// A free block: where it is, and the chunk whose registration covers it.
struct FreeBlock {
    chunk: Arc<MrInner>,
    ptr: NonNull<u8>,
}

// SAFETY: a free block is owned by the pool's queue alone: no LocalBuf refers to its bytes
// until it is popped, and its chunk (an Arc<MrInner>) is Send.
unsafe impl Send for FreeBlock {}

/// What a pool buffer's registration view holds to go back to the pool.
pub(crate) struct PoolBlock {
    chunk: Option<Arc<MrInner>>,
    pool: Arc<PoolShared>,
    class: usize,
}

impl PoolBlock {
    /// The buffer at `ptr` is gone: its block goes back to the free queue.
    pub(crate) fn give_back(&mut self, ptr: NonNull<u8>) {
        let Some(chunk) = self.chunk.take() else {
            return;
        };
        let class = &self.pool.classes[self.class];
        class.in_use.fetch_sub(1, Ordering::Relaxed);
        // An unbounded queue refuses only when closed, and it is never closed.
        let _ = class.free.push(FreeBlock { chunk, ptr });
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
                free: ConcurrentQueue::unbounded(),
                in_use: AtomicUsize::new(0),
            });
            size *= 2;
        }
        MemoryPool {
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
            }),
        }
    }

    /// A buffer of `len` bytes from the pool: a block of the smallest class that fits. No
    /// system call unless the class has no free block and the pool grows by a chunk.
    ///
    /// # Errors
    /// [`Error::TooLarge`] when `len` is above the largest class;
    /// [`Error::PoolExhausted`] when growing would pass [`PoolOptions::max_bytes`];
    /// the registration's errors when growing fails.
    pub fn alloc(&self, len: usize) -> Result<LocalBuf> {
        let pool = &self.shared;
        let index = pool.class_of(len)?;
        let class = &pool.classes[index];
        let block = match class.free.pop() {
            Ok(block) => block,
            Err(_) => pool.grow(index)?,
        };
        class.in_use.fetch_add(1, Ordering::Relaxed);
        let (lkey, rkey) = block.chunk.keys();
        let registration = (block.chunk.raw_mr(), lkey, rkey);
        let storage = Storage::Pool(PoolBlock {
            pool: pool.clone(),
            class: index,
            chunk: Some(block.chunk),
        });
        // The chunk's registration covers the block; local only, like the chunk.
        let inner = MrInner::new(
            registration,
            block.ptr,
            len,
            Access::LOCAL,
            storage,
            pool.pd.clone(),
        );
        Ok(LocalBuf::whole(Arc::new(inner)))
    }

    /// Current usage.
    pub fn stats(&self) -> PoolStats {
        let pool = &self.shared;
        let classes: Vec<ClassStats> = pool
            .classes
            .iter()
            .map(|class| ClassStats {
                size: class.size,
                in_use: class.in_use.load(Ordering::Relaxed),
                free: class.free.len(),
            })
            .collect();
        PoolStats {
            chunks: pool.chunks.load(Ordering::Relaxed),
            bytes_registered: pool.bytes_registered.load(Ordering::Relaxed),
            bytes_in_use: classes.iter().map(|c| c.in_use * c.size).sum(),
            classes,
        }
    }

    /// Deregisters and frees every chunk none of whose blocks is in use; returns how many
    /// bytes it gave back.
    pub fn trim(&self) -> usize {
        let pool = &self.shared;
        let _growing = lock(&pool.grow);
        let mut released = 0;
        for class in &pool.classes {
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
        let chunk_len = self.options.chunk_size.max(class.size);
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

impl std::fmt::Debug for MemoryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPool")
            .field("options", &self.shared.options)
            .field("stats", &self.stats())
            .finish()
    }
}
