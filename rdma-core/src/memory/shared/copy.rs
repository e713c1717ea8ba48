//! Copies in and out of memory that Rust code reaches only atomically, with one access size
//! per byte.
//!
//! Rust's memory model leaves undefined a race between atomic accesses of different sizes
//! to the same bytes (an `AtomicU8` store racing an `AtomicU64` load of the word around it).
//! A [`SharedRegion`](super::SharedRegion) is `Sync` and offers both copies and word
//! operations, so the two must never reach one byte at two sizes. The rule, for a piece of
//! a registration (a span: only its owner reaches its bytes, and only `&mut` changes its
//! bounds):
//!
//! - an 8-byte aligned word that lies entirely inside the span is only ever reached as one
//!   `AtomicU64`: by the word operations, and by copies, which load it whole, store it
//!   whole when they cover all of it, and otherwise change their bytes of it with a
//!   compare-and-swap loop (so a concurrent change of the word's other bytes is never
//!   lost);
//! - the other bytes of the span (at most 7 at each end, in words that reach outside it)
//!   are only ever reached as `AtomicU8`: no word operation can name them, since a word must
//!   lie inside the span.
//!
//! Neighbouring pieces of one registration never reach each other's bytes: a word shared by
//! two pieces lies inside neither.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Atomic accesses to the bytes of a span. The copies are written against this, so a test
/// can record the size of every access.
pub(super) trait Atomics {
    /// Loads the byte at `at`.
    ///
    /// # Safety
    /// `at` is a byte of a live span, reached only atomically.
    unsafe fn load_u8(&self, at: *mut u8) -> u8;
    /// Stores the byte at `at`.
    ///
    /// # Safety
    /// As [`load_u8`](Atomics::load_u8).
    unsafe fn store_u8(&self, at: *mut u8, value: u8);
    /// Loads the word at `at`.
    ///
    /// # Safety
    /// `at` is 8-aligned and its 8 bytes lie inside a live span, reached only atomically.
    unsafe fn load_u64(&self, at: *mut u8) -> u64;
    /// Stores the word at `at`.
    ///
    /// # Safety
    /// As [`load_u64`](Atomics::load_u64).
    unsafe fn store_u64(&self, at: *mut u8, value: u64);
    /// Replaces the word at `at` with `change(word)`, atomically (a compare-and-swap loop).
    ///
    /// # Safety
    /// As [`load_u64`](Atomics::load_u64).
    unsafe fn update_u64(&self, at: *mut u8, change: &dyn Fn(u64) -> u64);
}

/// The accesses themselves: relaxed (the callers fence).
pub(super) struct Direct;

impl Atomics for Direct {
    unsafe fn load_u8(&self, at: *mut u8) -> u8 {
        // SAFETY: the caller's contract: a byte of a live span, reached only atomically, and
        // only at this size (the module's rule).
        unsafe { AtomicU8::from_ptr(at) }.load(Ordering::Relaxed)
    }

    unsafe fn store_u8(&self, at: *mut u8, value: u8) {
        // SAFETY: as in `load_u8`.
        unsafe { AtomicU8::from_ptr(at) }.store(value, Ordering::Relaxed)
    }

    unsafe fn load_u64(&self, at: *mut u8) -> u64 {
        // SAFETY: the caller's contract: an aligned word inside a live span, reached only
        // atomically, and only at this size (the module's rule).
        unsafe { AtomicU64::from_ptr(at.cast()) }.load(Ordering::Relaxed)
    }

    unsafe fn store_u64(&self, at: *mut u8, value: u64) {
        // SAFETY: as in `load_u64`.
        unsafe { AtomicU64::from_ptr(at.cast()) }.store(value, Ordering::Relaxed)
    }

    unsafe fn update_u64(&self, at: *mut u8, change: &dyn Fn(u64) -> u64) {
        // SAFETY: as in `load_u64`.
        let word = unsafe { AtomicU64::from_ptr(at.cast()) };
        let mut old = word.load(Ordering::Relaxed);
        while let Err(now) =
            word.compare_exchange_weak(old, change(old), Ordering::Relaxed, Ordering::Relaxed)
        {
            old = now;
        }
    }
}

/// Where the part of a copy that falls in one aligned word lies: `[from, to)` of the span,
/// and whether the whole word lies inside the span (then it is reached as a word, at
/// `word`, the span offset of its first byte).
struct Piece {
    from: usize,
    to: usize,
    word: Option<usize>,
}

/// The pieces of `[offset, offset + len)` of the span `start..start + span_len`, word by word.
fn pieces(
    start: *mut u8,
    span_len: usize,
    offset: usize,
    len: usize,
) -> impl Iterator<Item = Piece> {
    let base = start as usize;
    let end = offset + len;
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        // The bytes of this word before `at`, and where the next word begins.
        let into_word = base.wrapping_add(at) % 8;
        let to = (at + (8 - into_word)).min(end);
        let word = at
            .checked_sub(into_word)
            .filter(|&word| word + 8 <= span_len);
        let piece = Piece { from: at, to, word };
        at = to;
        Some(piece)
    })
}

/// Copies `into.len()` bytes at `offset` of the span at `start` of `span_len` bytes out.
///
/// # Safety
/// `start..start + span_len` is a live span whose bytes Rust code reaches only through this
/// module's rule; `offset + into.len() <= span_len`.
pub(super) unsafe fn copy_out(
    mem: &impl Atomics,
    start: *mut u8,
    span_len: usize,
    offset: usize,
    into: &mut [u8],
) {
    for piece in pieces(start, span_len, offset, into.len()) {
        let out = &mut into[piece.from - offset..piece.to - offset];
        match piece.word {
            Some(word) => {
                // SAFETY: the word lies inside the span (`pieces`), 8-aligned.
                let bytes = unsafe { mem.load_u64(start.wrapping_add(word)) }.to_ne_bytes();
                out.copy_from_slice(&bytes[piece.from - word..piece.to - word]);
            }
            None => {
                for (i, byte) in out.iter_mut().enumerate() {
                    // SAFETY: a byte of the span (the caller's range).
                    *byte = unsafe { mem.load_u8(start.wrapping_add(piece.from + i)) };
                }
            }
        }
    }
}

/// Copies `bytes` into the span at `start` of `span_len` bytes, at `offset`.
///
/// # Safety
/// As [`copy_out`], with `offset + bytes.len() <= span_len`.
pub(super) unsafe fn copy_in(
    mem: &impl Atomics,
    start: *mut u8,
    span_len: usize,
    offset: usize,
    bytes: &[u8],
) {
    for piece in pieces(start, span_len, offset, bytes.len()) {
        let part = &bytes[piece.from - offset..piece.to - offset];
        match piece.word {
            Some(word) => {
                let at = start.wrapping_add(word);
                if part.len() == 8 {
                    let value = u64::from_ne_bytes(part.try_into().expect("8 bytes"));
                    // SAFETY: the word lies inside the span (`pieces`), 8-aligned.
                    unsafe { mem.store_u64(at, value) };
                } else {
                    let within = piece.from - word..piece.to - word;
                    let change = |old: u64| {
                        let mut word = old.to_ne_bytes();
                        word[within.clone()].copy_from_slice(part);
                        u64::from_ne_bytes(word)
                    };
                    // SAFETY: as above.
                    unsafe { mem.update_u64(at, &change) };
                }
            }
            None => {
                for (i, &byte) in part.iter().enumerate() {
                    // SAFETY: a byte of the span (the caller's range).
                    unsafe { mem.store_u8(start.wrapping_add(piece.from + i), byte) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::AtomicU64;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records the size of every access to each byte, and the bytes reached at two sizes
    /// (what Rust's memory model leaves undefined when it races).
    #[derive(Default)]
    struct Recorder {
        sizes: Mutex<HashMap<usize, usize>>,
        mixed: Mutex<Vec<usize>>,
    }

    impl Recorder {
        fn note(&self, at: *mut u8, size: usize) {
            let mut sizes = self.sizes.lock().unwrap();
            for byte in at as usize..at as usize + size {
                let seen = *sizes.entry(byte).or_insert(size);
                if seen != size {
                    self.mixed.lock().unwrap().push(byte);
                }
            }
        }
        fn mixed(&self) -> Vec<usize> {
            self.mixed.lock().unwrap().clone()
        }
    }

    impl Atomics for Recorder {
        unsafe fn load_u8(&self, at: *mut u8) -> u8 {
            self.note(at, 1);
            // SAFETY: the caller's contract, passed on.
            unsafe { Direct.load_u8(at) }
        }
        unsafe fn store_u8(&self, at: *mut u8, value: u8) {
            self.note(at, 1);
            // SAFETY: the caller's contract, passed on.
            unsafe { Direct.store_u8(at, value) }
        }
        unsafe fn load_u64(&self, at: *mut u8) -> u64 {
            self.note(at, 8);
            // SAFETY: the caller's contract, passed on.
            unsafe { Direct.load_u64(at) }
        }
        unsafe fn store_u64(&self, at: *mut u8, value: u64) {
            self.note(at, 8);
            // SAFETY: the caller's contract, passed on.
            unsafe { Direct.store_u64(at, value) }
        }
        unsafe fn update_u64(&self, at: *mut u8, change: &dyn Fn(u64) -> u64) {
            self.note(at, 8);
            // SAFETY: the caller's contract, passed on.
            unsafe { Direct.update_u64(at, change) }
        }
    }

    /// Memory that is only reached atomically, 8-aligned: 64 bytes.
    fn memory() -> Arc<[AtomicU64]> {
        (0..8).map(|_| AtomicU64::new(0)).collect()
    }

    fn base(memory: &[AtomicU64]) -> *mut u8 {
        memory.as_ptr().cast::<u8>().cast_mut()
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// The word operations of a `SharedRegion` on the span: every 8-aligned word inside it.
    fn words(start: *mut u8, len: usize) -> Vec<usize> {
        (0..len)
            .filter(|&at| (start as usize + at) % 8 == 0 && at + 8 <= len)
            .collect()
    }

    /// Spans at every alignment and of many lengths, copied in and out at random ranges and
    /// reached by word operations: the bytes are right (against a plain copy), and no byte
    /// is ever reached at two sizes.
    #[test]
    fn copies_and_word_operations_reach_each_byte_at_one_size() {
        let mut rng = Rng(0x5EED);
        for shift in 0..8 {
            for len in 1..=48 {
                let memory = memory();
                let start = base(&memory).wrapping_add(shift);
                let recorder = Recorder::default();
                let mut model = vec![0u8; len];
                for round in 0..40 {
                    let offset = rng.below(len);
                    let n = rng.below(len - offset + 1);
                    if round % 2 == 0 {
                        let bytes: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
                        // SAFETY: the span lies inside `memory`, reached only atomically.
                        unsafe { copy_in(&recorder, start, len, offset, &bytes) };
                        model[offset..offset + n].copy_from_slice(&bytes);
                    } else {
                        let mut out = vec![0; n];
                        // SAFETY: as above.
                        unsafe { copy_out(&recorder, start, len, offset, &mut out) };
                        assert_eq!(out, model[offset..offset + n], "shift {shift} len {len}");
                    }
                    for word in words(start, len) {
                        let at = start.wrapping_add(word);
                        // SAFETY: an aligned word inside the span.
                        let value = unsafe { recorder.load_u64(at) };
                        assert_eq!(value.to_ne_bytes(), model[word..word + 8]);
                        // SAFETY: as above.
                        unsafe { recorder.store_u64(at, value) };
                    }
                }
                assert_eq!(recorder.mixed(), [], "shift {shift} len {len}");
            }
        }
    }

    /// The check above can fail: a copy byte by byte, as `SharedRegion` did before, next to
    /// a word operation reaches the same bytes at two sizes.
    #[test]
    fn a_byte_by_byte_copy_next_to_word_operations_is_caught() {
        let memory = memory();
        let start = base(&memory);
        let recorder = Recorder::default();
        for at in 0..16 {
            // SAFETY: a byte inside `memory`.
            unsafe { recorder.store_u8(start.wrapping_add(at), 1) };
        }
        // SAFETY: an aligned word inside `memory`.
        unsafe { recorder.load_u64(start.wrapping_add(8)) };
        assert_eq!(
            recorder.mixed(),
            (8..16).map(|b| start as usize + b).collect::<Vec<_>>()
        );
    }

    /// Three threads on one word: two copy into different bytes of it (each a partial word,
    /// so a read-modify-write), the third copies into its first byte and loads it whole.
    /// Each thread reads its own bytes back after every write: a change of the word's other
    /// bytes lost by a read-modify-write would show as one thread's bytes going back.
    #[test]
    fn concurrent_partial_copies_and_word_loads_keep_each_others_bytes() {
        const ROUNDS: u32 = 200_000;
        let memory = memory();
        let start_line = Arc::new(std::sync::Barrier::new(3));
        let threads: Vec<_> = [(9usize, 3usize), (13, 3), (8, 1)]
            .into_iter()
            .map(|(offset, n)| {
                let memory = memory.clone();
                let start_line = start_line.clone();
                std::thread::spawn(move || {
                    let start = base(&memory);
                    let mut loaded = 0u64;
                    let mut lost = 0u32;
                    start_line.wait();
                    for round in 0..ROUNDS {
                        let bytes = [(round % 251) as u8 + 1; 3];
                        // SAFETY: the span is `memory`, reached only atomically.
                        unsafe { copy_in(&Direct, start, 64, offset, &bytes[..n]) };
                        let mut back = [0; 3];
                        // SAFETY: as above.
                        unsafe { copy_out(&Direct, start, 64, offset, &mut back[..n]) };
                        if back[..n] != bytes[..n] {
                            lost += 1;
                        }
                        if offset == 8 {
                            // SAFETY: the aligned word at 8, inside the span.
                            loaded ^= unsafe { Direct.load_u64(start.wrapping_add(8)) };
                        }
                    }
                    (offset, lost, loaded)
                })
            })
            .collect();
        for thread in threads {
            let (offset, lost, _) = thread.join().expect("the thread");
            assert_eq!(
                lost, 0,
                "bytes {offset}.. were overwritten by another thread"
            );
        }
    }
}
