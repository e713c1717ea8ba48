//! Wake-up plumbing of the completion engine.

use std::any::Any;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Wake, Waker};

/// How many work completions one `ibv_poll_cq` call takes (one poll can have more tasks
/// than that to wake: see [`WakeList`]).
pub(crate) const POLL_BATCH: usize = 32;

/// Locks `mutex`. Nothing done under these locks panics on any input; should something
/// panic anyway, the other tasks carry on rather than all panic in turn.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Who drives a completion queue's channel, and whether the reactor watches it: the state
/// of the CQ's own driver (see the `cq` module), in one atomic word.
///
/// One caller at a time drives (takes channel events, polls, re-arms, watches); a caller that
/// finds another at work asks it for one more round instead of waiting or running beside it,
/// so the driver is never re-entered (a wake-up from inside a round only asks for another).
#[derive(Default)]
pub(crate) struct DriveState(AtomicU8);

/// A caller drives now.
const DRIVING: u8 = 1;
/// Another round was asked for while one ran: whatever the running round saw may be stale.
const AGAIN: u8 = 2;
/// The last round ended with the CQ armed and its channel registered with the reactor (or a
/// wake-up of the driver on its way): a completion wakes the driver.
const WATCHED: u8 = 4;

impl DriveState {
    /// Whether the caller is to drive now: false when another caller drives, which is then
    /// asked for one more round (which covers what this caller wanted).
    pub(crate) fn begin(&self) -> bool {
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            let next = if current & DRIVING == 0 {
                current | DRIVING
            } else {
                current | AGAIN
            };
            match self
                .0
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return current & DRIVING == 0,
                Err(actual) => current = actual,
            }
        }
    }

    /// The driver finished a round: true when it may stop, false when another round was
    /// asked for meanwhile (it then runs it).
    pub(crate) fn finish(&self) -> bool {
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            let (next, done) = if current & AGAIN != 0 {
                (current & !AGAIN, false)
            } else {
                (current & !DRIVING, true)
            };
            match self
                .0
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return done,
                Err(actual) => current = actual,
            }
        }
    }

    /// The round ends with the channel watched (set by the driver only).
    pub(crate) fn set_watched(&self) {
        self.0.fetch_or(WATCHED, Ordering::AcqRel);
    }

    /// The reactor's wake-up came, or the channel failed: nobody watches until a round ends.
    pub(crate) fn clear_watched(&self) {
        self.0.fetch_and(!WATCHED, Ordering::AcqRel);
    }

    /// Whether a completion is sure to wake the driver.
    #[inline]
    pub(crate) fn is_watched(&self) -> bool {
        self.0.load(Ordering::Acquire) & WATCHED != 0
    }
}

/// A set of wakers that one wake-up empties and wakes all: for rare events that concern
/// every waiter (the device's asynchronous events). Each wake-up also advances a generation,
/// so a waiter that registered at one generation knows nothing happened while it is still
/// the current one.
#[derive(Default)]
pub(crate) struct WakerSet {
    wakers: Mutex<Vec<Waker>>,
    generation: std::sync::atomic::AtomicU64,
}

impl WakerSet {
    pub(crate) fn add(&self, waker: &Waker) {
        let mut set = lock(&self.wakers);
        if !set.iter().any(|w| w.will_wake(waker)) {
            set.push(waker.clone());
        }
    }

    /// How many wake-ups there have been.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Wake for WakerSet {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let wakers = std::mem::take(&mut *lock(&self.wakers));
        for waker in wakers {
            waker.wake();
        }
    }
}

/// Wakers gathered under the lock and woken after it is released. Built on every poll, so
/// it costs nothing until used: no initialised array, and no allocation for the first
/// `POLL_BATCH` wakers. One signaled completion can complete many unsignaled requests (up
/// to `signal_every - 1` before it), each with a task to wake, so a poll may gather more:
/// those spill, with the buffers of dropped operations, into one boxed overflow that a poll
/// without either never allocates (and its drop checks one pointer).
pub(crate) struct WakeList {
    wakers: [MaybeUninit<Waker>; POLL_BATCH],
    len: usize,
    /// Taken by every [`WakeList::run`], the drop's included, so it needs no drop glue of
    /// its own (which would not be inlined: a call on every poll).
    overflow: ManuallyDrop<Option<Box<Overflow>>>,
}

/// What a [`WakeList`] seldom holds.
#[derive(Default)]
struct Overflow {
    /// Wakers past the first `POLL_BATCH`.
    spilled: Vec<Waker>,
    /// Buffers of dropped operations, freed outside the lock.
    released: Vec<Box<dyn Any + Send>>,
}

impl WakeList {
    #[inline]
    pub(crate) fn new() -> Self {
        WakeList {
            wakers: [const { MaybeUninit::uninit() }; POLL_BATCH],
            len: 0,
            overflow: ManuallyDrop::new(None),
        }
    }

    /// Adds a waker, to be woken by the next [`WakeList::run`].
    #[inline]
    pub(crate) fn push(&mut self, waker: Waker) {
        if self.len < POLL_BATCH {
            self.wakers[self.len].write(waker);
            self.len += 1;
        } else {
            self.overflow().spilled.push(waker);
        }
    }

    /// Adds the buffers of a dropped operation, to be freed by the next [`WakeList::run`]
    /// (before any task is woken).
    pub(crate) fn release(&mut self, buffers: Box<dyn Any + Send>) {
        self.overflow().released.push(buffers);
    }

    fn overflow(&mut self) -> &mut Overflow {
        self.overflow.get_or_insert_with(Box::default)
    }

    #[inline]
    pub(crate) fn run(&mut self) {
        if self.len != 0 || self.overflow.is_some() {
            self.wake_and_release();
        }
    }

    #[inline(never)]
    fn wake_and_release(&mut self) {
        // The buffers of dropped operations go first: a task woken by a completion of the
        // same batch then finds them unregistered already (a count of registrations taken
        // right after its operation returned sees them gone).
        let spilled = match self.overflow.take() {
            Some(overflow) => {
                let Overflow { spilled, released } = *overflow;
                drop(released);
                spilled
            }
            None => Vec::new(),
        };
        let len = std::mem::take(&mut self.len);
        for waker in &self.wakers[..len] {
            // SAFETY: the first `len` entries were written by push and are read once: `len`
            // is reset first, so neither run nor drop reads them again.
            unsafe { waker.assume_init_read() }.wake();
        }
        if !spilled.is_empty() {
            for waker in spilled {
                waker.wake();
            }
        }
    }
}

impl Drop for WakeList {
    #[inline]
    fn drop(&mut self) {
        // Leaves `overflow` empty: nothing is left for its `ManuallyDrop` to leak.
        self.run();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
    use std::time::{Duration, Instant};

    /// In each of 1,000 episodes, four threads at once make a change and ask for a round of
    /// the driver, then wait (as a task sleeps until its completion is dispatched, with
    /// nobody else bound to drive) until a round has seen their change. A caller refused
    /// because another drives must be covered by a round that starts after its change (the
    /// running driver's extra round): otherwise it waits for ever. The flag that the
    /// channel is watched is left alone by the rounds.
    #[test]
    fn a_caller_refused_while_another_drives_is_covered_by_a_later_round() {
        const THREADS: usize = 4;
        let state = DriveState::default();
        state.set_watched();
        let changes = AtomicU64::new(0);
        let seen = AtomicU64::new(0);
        let arrived = AtomicUsize::new(0);
        let lost = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                scope.spawn(|| {
                    for episode in 0..1_000 {
                        // All threads start the episode together (or stop, once one failed).
                        arrived.fetch_add(1, Ordering::SeqCst);
                        while arrived.load(Ordering::SeqCst) < THREADS * (episode + 1) {
                            if lost.load(Ordering::SeqCst) {
                                return;
                            }
                            std::thread::yield_now();
                        }
                        let change = changes.fetch_add(1, Ordering::SeqCst) + 1;
                        if state.begin() {
                            loop {
                                seen.fetch_max(changes.load(Ordering::SeqCst), Ordering::SeqCst);
                                // A round takes a while: others come and are refused meanwhile.
                                std::thread::yield_now();
                                if state.finish() {
                                    break;
                                }
                            }
                        }
                        let waiting = Instant::now();
                        while seen.load(Ordering::SeqCst) < change {
                            if waiting.elapsed() > Duration::from_secs(10) {
                                lost.store(true, Ordering::SeqCst);
                                return;
                            }
                            std::thread::yield_now();
                        }
                    }
                });
            }
        });
        assert!(
            !lost.load(Ordering::SeqCst),
            "a change made while another caller drove was never seen by a round"
        );
        assert!(state.is_watched());
        assert!(state.begin(), "nobody drives at the end");
        assert!(state.finish());
    }

    /// A task woken by a batch finds the buffers its dropped operations left already
    /// released: what a count of registrations right after its own operation relies on.
    #[test]
    fn released_buffers_go_before_any_task_is_woken() {
        struct Buffer(Arc<AtomicBool>);
        impl Drop for Buffer {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        struct Task {
            released: Arc<AtomicBool>,
            saw_released: AtomicBool,
        }
        impl std::task::Wake for Task {
            fn wake(self: Arc<Self>) {
                self.wake_by_ref();
            }
            fn wake_by_ref(self: &Arc<Self>) {
                let released = self.released.load(Ordering::SeqCst);
                self.saw_released.store(released, Ordering::SeqCst);
            }
        }
        let released = Arc::new(AtomicBool::new(false));
        let task = Arc::new(Task {
            released: released.clone(),
            saw_released: AtomicBool::new(false),
        });
        let mut wake = WakeList::new();
        wake.release(Box::new(Buffer(released)));
        wake.push(Waker::from(task.clone()));
        wake.run();
        assert!(
            task.saw_released.load(Ordering::SeqCst),
            "the task was woken before the dropped operation's buffer was released"
        );
    }
}
