//! A few lock-free slots that each hold one owned pointer (an `Arc`): the memory pool's hot
//! slots, where a dropped buffer parks its block's registration view whole and the next
//! allocation of its size class takes it back (see `pool.rs`).
//!
//! A slot holds null (empty), `Arc::into_raw` of one entry, or the CLOSED sentinel. A put
//! fills only an empty slot and a take empties only a full one, each with one
//! compare-exchange, so an entry is owned by exactly one of the slot and one thread. The
//! put's release pairs with the take's acquire: what the putter wrote into the entry is
//! visible to whoever takes it. Closing swaps CLOSED into every slot and returns what they
//! held; a put never replaces CLOSED, so nothing parks in a closed set of slots (the pool
//! closes its slots when its last handle goes, so that parked views, which hold the pool,
//! do not keep it alive for ever).
//!
//! The atomics come from `crate::sync`: loom's under `--cfg anyrdma_loom`, where the model
//! tests at the end of this file check these guarantees over every interleaving of a few
//! threads putting, taking, draining and closing.

use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::sync::AtomicPtr;

/// An owning pointer that a slot can hold as a raw pointer.
///
/// # Safety
/// `into_raw` gives a pointer that is neither null nor `NonNull::<Target>::dangling()` (the
/// CLOSED sentinel), and `from_raw` of it gives back the owner `into_raw` consumed.
pub(crate) unsafe trait SlotPointer: Sized {
    /// What the pointer points to.
    type Target;
    /// Gives up the owner for a raw pointer (ownership moves with the pointer).
    fn into_raw(self) -> *mut Self::Target;
    /// Takes back ownership of a pointer `into_raw` gave.
    ///
    /// # Safety
    /// `raw` came from `into_raw` and is taken back once.
    unsafe fn from_raw(raw: *mut Self::Target) -> Self;
}

// SAFETY: `Arc::into_raw` points into a live heap allocation, past the counts: never null,
// never the type's alignment (the address of `dangling`).
unsafe impl<T> SlotPointer for Arc<T> {
    type Target = T;
    #[inline]
    fn into_raw(self) -> *mut T {
        Arc::into_raw(self).cast_mut()
    }
    #[inline]
    unsafe fn from_raw(raw: *mut T) -> Self {
        // SAFETY: the caller's contract: `raw` came from `Arc::into_raw`, taken back once.
        unsafe { Arc::from_raw(raw) }
    }
}

/// `N` slots, each empty, holding one `P`, or closed.
pub(crate) struct HotSlots<P: SlotPointer, const N: usize> {
    slots: [AtomicPtr<P::Target>; N],
    /// The slots own the entries they hold.
    _owns: PhantomData<P>,
}

/// What a closed slot holds: never an entry, never replaced by one, never dereferenced.
#[inline]
fn closed<T>() -> *mut T {
    NonNull::dangling().as_ptr()
}

impl<P: SlotPointer, const N: usize> HotSlots<P, N> {
    /// `N` empty slots.
    pub(crate) fn new() -> Self {
        HotSlots {
            slots: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            _owns: PhantomData,
        }
    }

    /// Takes an entry from a slot, if one holds any.
    #[inline]
    pub(crate) fn take(&self) -> Option<P> {
        for slot in &self.slots {
            let raw = slot.load(Ordering::Relaxed);
            if raw.is_null() || raw == closed() {
                continue;
            }
            // Whoever empties the slot gets its entry. (The same entry put back in between
            // is still one entry in the slot: taking it is right.) Acquire: see the putter's
            // writes to the entry.
            if slot
                .compare_exchange(raw, ptr::null_mut(), Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                // SAFETY: the slot held one `into_raw` entry, which the exchange moved to
                // this thread alone.
                return Some(unsafe { P::from_raw(raw) });
            }
        }
        None
    }

    /// Puts `entry` into an empty slot; gives it back when none is empty (or the slots are
    /// closed).
    ///
    /// After `Ok`, another thread may take the entry and drop it at once: a caller that
    /// reached these slots through the entry (the pool's views hold their pool) must not
    /// touch them again, and this function does not either once the exchange succeeded.
    #[inline]
    pub(crate) fn put(&self, entry: P) -> Result<(), P> {
        let raw = entry.into_raw();
        for slot in &self.slots {
            // Only an empty slot is filled: a full one is someone's, a closed one stays so.
            // Release: publish the entry's contents to its taker.
            if slot.load(Ordering::Relaxed).is_null()
                && slot
                    .compare_exchange(ptr::null_mut(), raw, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
            {
                return Ok(());
            }
        }
        // SAFETY: `raw` came from `into_raw` above and was stored nowhere.
        Err(unsafe { P::from_raw(raw) })
    }

    /// Empties every slot and returns the entries they held; the slots stay open.
    pub(crate) fn drain(&self) -> Vec<P> {
        self.replace_all(ptr::null_mut())
    }

    /// Closes every slot and returns the entries they held: no later put succeeds, no later
    /// take finds anything.
    pub(crate) fn close(&self) -> Vec<P> {
        self.replace_all(closed())
    }

    fn replace_all(&self, with: *mut P::Target) -> Vec<P> {
        self.slots
            .iter()
            .filter_map(|slot| {
                // Acquire: as in `take`.
                let raw = slot.swap(with, Ordering::Acquire);
                // SAFETY: as in `take`.
                (!raw.is_null() && raw != closed()).then(|| unsafe { P::from_raw(raw) })
            })
            .collect()
    }

    /// How many slots hold an entry: a snapshot.
    pub(crate) fn len(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| {
                let raw = slot.load(Ordering::Relaxed);
                !raw.is_null() && raw != closed()
            })
            .count()
    }
}

impl<P: SlotPointer, const N: usize> Drop for HotSlots<P, N> {
    fn drop(&mut self) {
        // Entries still parked are dropped with the slots rather than leaked. (The pool
        // never gets here with one: its views hold the pool, and it closes its slots first.)
        drop(self.close());
    }
}

/// Model tests: every interleaving (and every outcome the memory orderings allow) of a few
/// threads putting, taking, draining (the pool's `trim`) and closing (the pool's last handle
/// dropped). Run with
/// `RUSTFLAGS="--cfg anyrdma_loom" CARGO_TARGET_DIR=target/loom cargo test -p anyrdma-core --lib hot_slots::model`
/// (its own target directory: the cfg rebuilds every dependency; about 20 s of checking in a
/// debug build, 2 s with `--release`).
///
/// The entries are tickets (numbers, not memory), so that an entry handed to two owners is a
/// failed assertion rather than a double free; each ticket's payload is a loom `UnsafeCell`
/// that every owner writes, so that an owner that does not see its predecessor's writes (a
/// missing release or acquire) is a causality violation that loom reports.
#[cfg(all(test, anyrdma_loom))]
mod model {
    use super::{HotSlots, SlotPointer};
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::thread;

    /// Explores the model with at most three preemptions per execution (loom's advice: most
    /// bugs need two or three), unless `LOOM_MAX_PREEMPTIONS` says otherwise; unbounded,
    /// the larger models take minutes.
    fn check(model: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(3);
        }
        builder.check(model);
    }

    /// Entry number `0` is the raw pointer 16, and so on: never null, never the CLOSED
    /// sentinel (8, the alignment of `u64`).
    #[derive(Debug)]
    struct Ticket(usize);

    // SAFETY: `into_raw` gives multiples of 8 from 16 up: not null, not `dangling::<u64>()`;
    // `from_raw` inverts it.
    unsafe impl SlotPointer for Ticket {
        type Target = u64;
        fn into_raw(self) -> *mut u64 {
            ((self.0 + 2) * 8) as *mut u64
        }
        unsafe fn from_raw(raw: *mut u64) -> Self {
            Ticket(raw as usize / 8 - 2)
        }
    }

    /// Each ticket's payload: what its owners write (a buffer's bytes and length, in the pool).
    struct Payloads(Vec<UnsafeCell<usize>>);

    impl Payloads {
        fn new(n: usize) -> Arc<Self> {
            Arc::new(Payloads((0..n).map(|_| UnsafeCell::new(0)).collect()))
        }
        /// The owner of `ticket` writes its payload.
        fn write(&self, ticket: &Ticket) {
            // SAFETY: a raw pointer access; loom checks that it happens after every other
            // owner's (it reports a causality violation otherwise).
            self.0[ticket.0].with_mut(|value| unsafe { *value += 1 });
        }
    }

    type Slots = HotSlots<Ticket, 2>;

    /// Puts `ticket`; keeps it in `kept` when refused.
    fn put_or_keep(slots: &Slots, ticket: Ticket, kept: &mut Vec<Ticket>) {
        if let Err(ticket) = slots.put(ticket) {
            kept.push(ticket);
        }
    }

    /// Takes an entry, writes it as its new owner, keeps it.
    fn take_and_keep(slots: &Slots, payloads: &Payloads, kept: &mut Vec<Ticket>) {
        if let Some(ticket) = slots.take() {
            payloads.write(&ticket);
            kept.push(ticket);
        }
    }

    /// Every ticket `0..n` is owned exactly once among `owners`: none lost, none duplicated.
    fn assert_each_owned_once(n: usize, owners: &[Vec<Ticket>]) {
        let mut ids: Vec<usize> = owners.iter().flatten().map(|ticket| ticket.0).collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            (0..n).collect::<Vec<_>>(),
            "each entry must have exactly one owner (owners: {owners:?})"
        );
    }

    /// A thread that owns (writes) one entry, puts it, then takes one.
    fn put_then_take(slots: &Arc<Slots>, payloads: &Arc<Payloads>, id: usize) -> Vec<Ticket> {
        let mut kept = Vec::new();
        let ticket = Ticket(id);
        payloads.write(&ticket);
        put_or_keep(slots, ticket, &mut kept);
        take_and_keep(slots, payloads, &mut kept);
        kept
    }

    #[test]
    fn puts_and_takes_hand_each_entry_to_one_owner() {
        check(|| {
            let slots = Arc::new(Slots::new());
            let payloads = Payloads::new(3);
            let others: Vec<_> = (0..2)
                .map(|id| {
                    let (slots, payloads) = (slots.clone(), payloads.clone());
                    thread::spawn(move || put_then_take(&slots, &payloads, id))
                })
                .collect();
            let mut owners = vec![put_then_take(&slots, &payloads, 2)];
            owners.extend(others.into_iter().map(|t| t.join().unwrap()));
            let parked = slots.drain();
            for ticket in &parked {
                payloads.write(ticket);
            }
            owners.push(parked);
            assert_each_owned_once(3, &owners);
        });
    }

    #[test]
    fn closing_while_others_put_and_take_leaves_nothing_parked() {
        check(|| {
            let slots = Arc::new(Slots::new());
            let payloads = Payloads::new(4);
            let taker = {
                let (slots, payloads) = (slots.clone(), payloads.clone());
                thread::spawn(move || put_then_take(&slots, &payloads, 0))
            };
            let putter = {
                let (slots, payloads) = (slots.clone(), payloads.clone());
                thread::spawn(move || {
                    // Two buffers dropped one after the other: both go back to the slots
                    // unless they are full or closed.
                    let mut kept = Vec::new();
                    for id in [1, 2] {
                        let ticket = Ticket(id);
                        payloads.write(&ticket);
                        put_or_keep(&slots, ticket, &mut kept);
                    }
                    kept
                })
            };
            // The pool's last handle goes: close, and drop what was parked.
            let closed = slots.close();
            for ticket in &closed {
                payloads.write(ticket);
            }
            let mut owners = vec![closed, taker.join().unwrap(), putter.join().unwrap()];

            assert_eq!(slots.len(), 0, "an entry was parked after close: leaked");
            assert!(slots.take().is_none(), "an entry was taken after close");
            let mut refused = Vec::new();
            put_or_keep(&slots, Ticket(3), &mut refused);
            assert_eq!(refused.len(), 1, "a put succeeded after close");
            owners.push(refused);
            assert_each_owned_once(4, &owners);
        });
    }

    #[test]
    fn trim_while_others_put_and_take_then_close() {
        check(|| {
            let slots = Arc::new(Slots::new());
            let payloads = Payloads::new(2);
            let others: Vec<_> = (0..2)
                .map(|id| {
                    let (slots, payloads) = (slots.clone(), payloads.clone());
                    thread::spawn(move || put_then_take(&slots, &payloads, id))
                })
                .collect();
            // `trim` empties the slots (they stay open) while buffers come and go.
            let trimmed = slots.drain();
            for ticket in &trimmed {
                payloads.write(ticket);
            }
            let mut owners = vec![trimmed];
            owners.extend(others.into_iter().map(|t| t.join().unwrap()));
            let closed = slots.close();
            for ticket in &closed {
                payloads.write(ticket);
            }
            owners.push(closed);
            assert_each_owned_once(2, &owners);
        });
    }
}
