//! Which tasks wait on a messenger, and which one its operations will wake.
//!
//! Every task of a messenger polls the same operations (the oldest receive, the oldest read,
//! the oldest send), and a completion queue keeps one waker per operation: that of the task
//! that polled it last. When that task stops waiting while others still wait, nothing would
//! wake them; and in event mode one of those operations may hold its completion queue's
//! polling role, on which the other connections sharing the queue depend. So a call counts
//! as pending from its first pending poll until it returns or its future is dropped, and the
//! last task to poll the operations, when it leaves, either wakes the tasks still waiting (to
//! poll in its stead) or, with none left, has the operations forget it, which hands the
//! polling role on ([`Engine::forget`](super::engine::Engine::forget)).

use std::future::poll_fn;
use std::task::{Context as TaskContext, Poll, Waker};

use super::engine::{Engine, State};
use crate::wake::lock;

/// The tasks waiting on a messenger (kept in its state, under its lock).
#[derive(Default)]
pub(crate) struct Waiters {
    /// Tasks to wake when the messenger makes progress; each wake-up empties it.
    to_wake: Vec<Waker>,
    /// Calls pending, by task: a task with two calls pending (a `join`) still waits when one
    /// of them ends.
    pending: Vec<(Waker, usize)>,
    /// The task the operations polled last will wake.
    registered: Option<Waker>,
}

impl Waiters {
    /// Wakes the task of `waker` at the messenger's next progress.
    pub(crate) fn wait(&mut self, waker: &Waker) {
        if !self.to_wake.iter().any(|w| w.will_wake(waker)) {
            self.to_wake.push(waker.clone());
        }
    }

    pub(crate) fn wake_all(&mut self) {
        for waker in self.to_wake.drain(..) {
            waker.wake();
        }
    }

    /// The operations about to be polled will wake the task of `waker`.
    pub(crate) fn register(&mut self, waker: &Waker) {
        match &self.registered {
            Some(registered) if registered.will_wake(waker) => {}
            _ => self.registered = Some(waker.clone()),
        }
    }

    /// Tasks to wake at the next progress (for Debug).
    pub(crate) fn len(&self) -> usize {
        self.to_wake.len()
    }

    fn pend(&mut self, waker: &Waker) {
        match self.pending.iter_mut().find(|(w, _)| w.will_wake(waker)) {
            Some((_, calls)) => *calls += 1,
            None => self.pending.push((waker.clone(), 1)),
        }
    }

    fn unpend(&mut self, waker: &Waker) {
        if let Some(at) = self.pending.iter().position(|(w, _)| w.will_wake(waker)) {
            self.pending[at].1 -= 1;
            if self.pending[at].1 == 0 {
                self.pending.swap_remove(at);
            }
        }
    }

    /// The task of `waker` has no call pending any more (unless it still has another).
    /// Returns true when the operations must forget its waker: it was the one they would
    /// wake, and no other task waits to poll them.
    pub(crate) fn leave(&mut self, waker: &Waker) -> bool {
        if self.pending.iter().any(|(w, _)| w.will_wake(waker)) {
            return false; // another of its calls still polls the operations
        }
        self.to_wake.retain(|w| !w.will_wake(waker));
        if !self.registered.as_ref().is_some_and(|r| r.will_wake(waker)) {
            return false;
        }
        self.registered = None;
        if self.to_wake.is_empty() && self.pending.is_empty() {
            return true;
        }
        // Each waiting task once: those woken at progress, and those pending in a call whose
        // progress wake-up was used up already.
        let to_wake = std::mem::take(&mut self.to_wake);
        for (pending, _) in &self.pending {
            if !to_wake.iter().any(|waker| waker.will_wake(pending)) {
                pending.wake_by_ref();
            }
        }
        for waker in to_wake {
            waker.wake();
        }
        false
    }
}

/// A call's place among the waiters: the waker it is pending under, if it is.
#[derive(Default)]
pub(crate) struct Place(Option<Waker>);

impl Place {
    /// Ends a poll of the call (the messenger's state locked, its waiters `waiters`): a ready
    /// call leaves now (returns whether the operations must forget the task: see
    /// [`Waiters::leave`]); a pending one counts as waiting until it ends.
    pub(crate) fn after<T>(
        &mut self,
        waiters: &mut Waiters,
        cx: &TaskContext<'_>,
        poll: &Poll<T>,
    ) -> Option<Waker> {
        let waker = cx.waker();
        if poll.is_ready() {
            if let Some(pending) = self.0.take() {
                waiters.unpend(&pending);
            }
            return waiters.leave(waker).then(|| waker.clone());
        }
        match &self.0 {
            Some(pending) if pending.will_wake(waker) => None,
            _ => {
                // Pending under the new waker first: `will_wake` may tell a waker from its own
                // clone apart (Tokio's current-thread `block_on` waker and its clones can
                // differ in vtable), and the old one, leaving, must then find its task still
                // pending instead of having the operations forget the waker this very poll
                // registered (the task would sleep with nothing to wake it).
                waiters.pend(waker);
                let left = self.0.take().and_then(|old| {
                    waiters.unpend(&old);
                    waiters.leave(&old).then_some(old)
                });
                self.0 = Some(waker.clone());
                left
            }
        }
    }

    /// The call ended without returning (its future was dropped).
    pub(crate) fn abandon(&mut self, engine: &Engine) {
        if let Some(pending) = self.0.take() {
            let mut state = lock(&engine.state);
            state.waiters.unpend(&pending);
            if state.waiters.leave(&pending) {
                engine.forget(&state, &pending);
            }
        }
    }
}

/// Runs one messenger call: `step` polls it, with the state locked, until it is ready. The
/// call counts among the waiters while it is pending, and leaves them when it ends,
/// returning or dropped.
pub(crate) async fn call<T>(
    engine: &Engine,
    mut step: impl FnMut(&mut State, &mut TaskContext<'_>) -> Poll<T>,
) -> T {
    let mut waiting = Waiting::new(engine);
    poll_fn(|cx| {
        let mut state = lock(&engine.state);
        let poll = step(&mut state, cx);
        waiting.after(&mut state, cx, poll)
    })
    .await
}

/// A [`Place`] that leaves when dropped: what a messenger call holds.
struct Waiting<'a> {
    engine: &'a Engine,
    place: Place,
}

impl<'a> Waiting<'a> {
    fn new(engine: &'a Engine) -> Self {
        Waiting {
            engine,
            place: Place::default(),
        }
    }

    /// Ends a poll of the call, with the state locked: see [`Place::after`].
    fn after<T>(&mut self, state: &mut State, cx: &TaskContext<'_>, poll: Poll<T>) -> Poll<T> {
        if let Some(left) = self.place.after(&mut state.waiters, cx, &poll) {
            self.engine.forget(state, &left);
        }
        poll
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.place.abandon(self.engine);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn task() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    fn woken(count: &Count) -> usize {
        count.0.load(Ordering::SeqCst)
    }

    #[test]
    fn the_last_poller_leaving_alone_lets_the_operations_go() {
        let (_, a) = task();
        let mut waiters = Waiters::default();
        waiters.register(&a);
        assert!(
            waiters.leave(&a),
            "nobody else waits: the operations must forget it"
        );
        assert!(waiters.registered.is_none());
    }

    #[test]
    fn the_last_poller_leaving_wakes_every_task_still_waiting() {
        let (_, a) = task();
        let (b_count, b) = task();
        let (c_count, c) = task();
        let mut waiters = Waiters::default();
        // B waits for progress; C is pending in a call but was already woken once (its
        // progress wake-up was used up): both must poll in A's stead.
        waiters.pend(&b);
        waiters.wait(&b);
        waiters.pend(&c);
        waiters.register(&a);
        assert!(
            !waiters.leave(&a),
            "others wait: they poll the operations instead"
        );
        assert_eq!(
            woken(&b_count),
            1,
            "woken once, though waiting for progress and pending"
        );
        assert_eq!(woken(&c_count), 1);
        assert!(waiters.registered.is_none());
    }

    #[test]
    fn a_task_with_another_call_pending_keeps_its_place() {
        let (a_count, a) = task();
        let mut waiters = Waiters::default();
        waiters.pend(&a);
        waiters.pend(&a);
        waiters.wait(&a);
        waiters.register(&a);
        waiters.unpend(&a);
        assert!(
            !waiters.leave(&a),
            "its other call still polls the operations"
        );
        assert_eq!(waiters.len(), 1, "still woken at the next progress");
        assert_eq!(woken(&a_count), 0);
        waiters.unpend(&a);
        assert!(waiters.leave(&a), "its last call ended");
        assert_eq!(waiters.len(), 0);
    }

    #[test]
    fn a_task_the_operations_would_not_wake_just_leaves() {
        let (_, a) = task();
        let (b_count, b) = task();
        let mut waiters = Waiters::default();
        waiters.wait(&a);
        waiters.register(&b);
        waiters.pend(&b);
        assert!(!waiters.leave(&a));
        assert_eq!(waiters.len(), 0, "it no longer waits");
        assert_eq!(woken(&b_count), 0, "B still polls the operations itself");
        assert!(waiters.registered.is_some());
    }

    #[test]
    fn a_place_counts_one_pending_call_until_it_ends() {
        let (_, a) = task();
        let cx = TaskContext::from_waker(&a);
        let mut waiters = Waiters::default();
        let mut place = Place::default();
        waiters.register(&a);
        assert!(place
            .after(&mut waiters, &cx, &Poll::<()>::Pending)
            .is_none());
        assert!(place
            .after(&mut waiters, &cx, &Poll::<()>::Pending)
            .is_none());
        assert_eq!(waiters.pending.len(), 1);
        assert_eq!(waiters.pending[0].1, 1, "polled twice, pending once");
        let left = place.after(&mut waiters, &cx, &Poll::Ready(()));
        assert!(left.is_some_and(|left| left.will_wake(&a)));
        assert!(waiters.pending.is_empty());
    }
    /// A waker whose clones carry another vtable than itself, as Tokio's current-thread
    /// `block_on` waker and its clones can: `will_wake` tells them apart, though they wake
    /// the same task.
    mod two_faced {
        use std::task::{RawWaker, RawWakerVTable, Waker};

        static TASK: u8 = 0;
        // Two statics: two addresses, so `will_wake` sees two different vtables.
        static ORIGINAL: RawWakerVTable = RawWakerVTable::new(clone, ignore, ignore, ignore);
        static CLONE: RawWakerVTable = RawWakerVTable::new(clone, ignore, ignore, ignore);

        fn clone(data: *const ()) -> RawWaker {
            RawWaker::new(data, &CLONE)
        }
        fn ignore(_: *const ()) {}

        pub(super) fn waker() -> Waker {
            // SAFETY: the vtables' functions ignore the data pointer, a static's address.
            unsafe { Waker::from_raw(RawWaker::new(std::ptr::addr_of!(TASK).cast(), &ORIGINAL)) }
        }
    }

    #[test]
    fn a_task_polled_again_keeps_its_operations_though_its_waker_looks_new() {
        let original = two_faced::waker();
        assert!(
            !original.clone().will_wake(&original),
            "the premise: a clone that does not look like its original"
        );
        let cx = TaskContext::from_waker(&original);
        let mut waiters = Waiters::default();
        let mut place = Place::default();
        for poll in 0..3 {
            // What a poll does: the operations are registered with the task, then the call
            // counts as pending.
            waiters.register(&original);
            assert!(
                place
                    .after(&mut waiters, &cx, &Poll::<()>::Pending)
                    .is_none(),
                "poll {poll} of the same pending call: the operations must keep its waker"
            );
        }
    }
}
