//! Reading the async-event descriptor of a context, and applying each event to the objects
//! it concerns.

use std::collections::VecDeque;
use std::future::Future;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use rdma_sys::*;

use super::{DeviceEvent, DeviceEventKind, Element};
use crate::context::{Context, ContextInner};
use crate::error::{Error, Result};
use crate::runtime::{default_runtime, LazyWatch, RuntimeHandle};
use crate::wake::{lock, WakerSet};

/// Events kept for [`Context::next_event`] before the oldest are dropped.
const QUEUED_EVENTS: usize = 1024;
/// How long a dropped queue pair on a shared receive queue waits for its last-receive event
/// before it is destroyed anyway. The specification requires the event, and mlx5 sends it
/// as soon as the queue pair is in error; Soft-RoCE never sends it (and its destroy loses
/// nothing, as it leaves completions in the CQ), so there the wait ends with this.
const RETIRE_PATIENCE: Duration = Duration::from_secs(1);

/// The async-event machinery of one opened device (one per [`ContextInner`]).
pub(crate) struct DeviceEvents {
    /// The descriptor registered with the runtime of the first task that watched it, or why
    /// it could not be. Dropped before the device is closed (it is a field of the context
    /// declared before the device).
    watch: LazyWatch,
    /// Who is woken when the descriptor becomes readable: the channel wakers of sleeping
    /// completion-queue pollers and the tasks in [`Context::next_event`].
    watchers: Arc<WakerSet>,
    watchers_waker: Waker,
    /// Events read and not yet taken by [`Context::next_event`].
    queue: Mutex<VecDeque<DeviceEvent>>,
    /// The queue pairs of this context, by their `ibv_qp` address, to map events to them.
    qps: Mutex<Vec<(usize, Weak<dyn EventQp>)>>,
    /// Queue pairs (by address) dropped while attached to a shared receive queue, which
    /// keeps them until the device reports their last receive.
    retiring: Mutex<Vec<Retiring>>,
    /// How many entries `retiring` has: read by every poll, so that none locks it for
    /// nothing.
    retiring_count: AtomicUsize,
    /// Addresses of queue pairs whose last-receive event came while their last handle was
    /// being dropped (the handle cannot be reached then).
    last_wqe: Mutex<Vec<usize>>,
    /// Why the whole device failed, once it did: fatal error or removal.
    pub(crate) failure: OnceLock<Arc<Error>>,
    /// Other descriptors whose events concern this device's queue pairs (the rdma_cm event
    /// channels of connections): read with the device's own events.
    sources: Mutex<Vec<Weak<dyn EventSource>>>,
}

/// A queue pair dropped while attached to a shared receive queue: its address, the queue
/// that keeps it, and since when.
type Retiring = (usize, Weak<dyn EventSrq>, Instant);

/// A source of events that concern a device's queue pairs, read by whoever reads the
/// device's events (the completion-queue pollers, so that an operation waiting for a
/// completion also sees its connection end).
pub(crate) trait EventSource: Send + Sync {
    /// Reads and applies what is waiting, registering `waiter` to be woken by the next
    /// event. Returns how many events it applied.
    fn poll_source(&self, runtime: &RuntimeHandle, waiter: &Waker) -> usize;
}

/// What the device's events do to a queue pair. The queue pair (`QpShared`) implements it:
/// it is made from a context, so the context's events reach it through this trait rather
/// than by naming its type. Called only when an event arrives, never by an operation.
pub(crate) trait EventQp: Send + Sync {
    /// The device moved the queue pair to error (fatal, request or access error): `cause`
    /// becomes what new posts report, unless a cause is already known.
    fn note_failure(&self, cause: Arc<Error>);
    /// The device reported the queue pair's last receive from its shared receive queue.
    fn last_wqe_reached(&self);
    /// Fails the queue pair now with `cause` (its CQ, SRQ or device failed).
    fn fail_now(&self, cause: &Arc<Error>);
    /// Whether it uses the completion queue whose `ibv_cq` is at `cq`.
    fn uses_cq(&self, cq: usize) -> bool;
    /// Whether it is attached to the shared receive queue whose `ibv_srq` is at `srq`.
    fn uses_srq(&self, srq: usize) -> bool;
}

/// What the device's events do to a shared receive queue (`SrqShared` implements it, for the
/// reason given on [`EventQp`]).
pub(crate) trait EventSrq: Send + Sync {
    /// Destroys queue pair `address`, dropped while attached to this queue, now that its
    /// last receive is known to be taken (or it waited long enough).
    fn finish_retiring(&self, address: usize);
}

/// An event as read, before it is applied: the queue pair it names is held, so that it can
/// be acted on after the event is acknowledged (destroying a queue pair waits for the
/// acknowledgement of its events).
struct RawEvent {
    code: u32,
    kind: DeviceEventKind,
    qp: Option<Arc<dyn EventQp>>,
    /// The `ibv_qp` the event names, if any (also when `qp` is gone).
    qp_address: usize,
    cq: usize,
    srq: usize,
    port: u8,
}

impl DeviceEvents {
    pub(crate) fn new(fd: RawFd) -> DeviceEvents {
        let watchers = Arc::new(WakerSet::default());
        DeviceEvents {
            // SAFETY: the context made the descriptor non-blocking, and closes it only after
            // its events (this value) are dropped.
            watch: unsafe { LazyWatch::new(fd, "the device's async-event descriptor") },
            sources: Mutex::new(Vec::new()),
            watchers_waker: Waker::from(watchers.clone()),
            watchers,
            queue: Mutex::new(VecDeque::new()),
            qps: Mutex::new(Vec::new()),
            retiring: Mutex::new(Vec::new()),
            retiring_count: AtomicUsize::new(0),
            last_wqe: Mutex::new(Vec::new()),
            failure: OnceLock::new(),
        }
    }

    /// Records queue pair `qp` (whose `ibv_qp` is `raw`) so that events naming it reach it.
    pub(crate) fn register_qp<Q: EventQp + 'static>(&self, raw: *mut ibv_qp, qp: Weak<Q>) {
        let qp: Weak<dyn EventQp> = qp;
        let mut qps = lock(&self.qps);
        if qps.len() >= 16 && qps.len() == qps.capacity() {
            qps.retain(|(_, weak)| weak.strong_count() > 0);
        }
        qps.push((raw as usize, qp));
    }

    /// Forgets queue pair `raw`, before it is destroyed.
    pub(crate) fn unregister_qp(&self, raw: *mut ibv_qp) {
        lock(&self.qps).retain(|(address, _)| *address != raw as usize);
    }

    /// Queue pair `address` was dropped while attached to `srq`, which keeps it until its
    /// last-receive event.
    pub(crate) fn note_retiring<S: EventSrq + 'static>(&self, address: *mut ibv_qp, srq: &Arc<S>) {
        let srq: Weak<S> = Arc::downgrade(srq);
        let srq: Weak<dyn EventSrq> = srq;
        let mut retiring = lock(&self.retiring);
        retiring.retain(|(_, srq, _)| srq.strong_count() > 0);
        retiring.push((address as usize, srq, Instant::now()));
        self.retiring_count.store(retiring.len(), Ordering::Release);
    }

    /// Destroys the retiring queue pairs that waited longer than [`RETIRE_PATIENCE`].
    pub(crate) fn retire_overdue(&self) {
        if self.retiring_count.load(Ordering::Acquire) == 0 {
            return;
        }
        let overdue: Vec<_> = {
            let mut retiring = lock(&self.retiring);
            let now = Instant::now();
            let (overdue, waiting) = std::mem::take(&mut *retiring)
                .into_iter()
                .partition(|(_, _, since)| now.duration_since(*since) >= RETIRE_PATIENCE);
            *retiring = waiting;
            self.retiring_count.store(retiring.len(), Ordering::Release);
            overdue
        };
        for (address, srq, _) in overdue {
            if let Some(srq) = srq.upgrade() {
                srq.finish_retiring(address);
            }
        }
    }

    /// Whether the last-receive event of queue pair `address` came while it was being
    /// dropped; forgets it.
    pub(crate) fn take_last_wqe(&self, address: *mut ibv_qp) -> bool {
        let mut seen = lock(&self.last_wqe);
        let found = seen.iter().position(|&a| a == address as usize);
        found.map(|at| seen.swap_remove(at)).is_some()
    }

    /// The last-receive event of a queue pair whose handle is gone: a retiring one is
    /// destroyed now; one being dropped finds the event noted.
    pub(crate) fn last_wqe_of_dropped(&self, address: usize) {
        let srq = {
            let mut retiring = lock(&self.retiring);
            let at = retiring.iter().position(|(a, _, _)| *a == address);
            let srq = at.map(|at| retiring.swap_remove(at).1);
            self.retiring_count.store(retiring.len(), Ordering::Release);
            srq
        };
        match srq.and_then(|srq| srq.upgrade()) {
            Some(srq) => srq.finish_retiring(address),
            None => lock(&self.last_wqe).push(address),
        }
    }

    /// The live queue pairs for which `select` holds.
    fn qps_where(
        &self,
        select: impl Fn(&(dyn EventQp + 'static)) -> bool,
    ) -> Vec<Arc<dyn EventQp>> {
        live_where(&self.qps, select)
    }

    /// How many times the descriptor has signalled readiness: while it stays the same, no
    /// event has arrived since a poll that saw it.
    pub(crate) fn generation(&self) -> u64 {
        self.watchers.generation()
    }

    /// Reads and applies every event waiting on the descriptor, and arms its readiness so
    /// that the next one wakes `waiter` (if given) and the other watchers. Returns how many
    /// events were applied.
    ///
    /// The descriptor is watched with the runtime of the first caller; a caller on another
    /// runtime still reads what is there, and is woken through that first runtime.
    ///
    /// When `runtime` cannot watch it (it does not run on this thread, or its reactor refused),
    /// what is there is read all the same, so that events still act (a queue pair's error, a
    /// connection's end) for a caller that polls instead of sleeping; nothing wakes `waiter`
    /// then, and the generation is moved on so that the next poll reads again.
    pub(crate) fn poll(
        &self,
        ctx: &ContextInner,
        runtime: &RuntimeHandle,
        waiter: Option<&Waker>,
    ) -> usize {
        let watch = match self.watch.get(runtime) {
            Ok(watch) => watch,
            Err(_) => {
                let applied = self.read_now(ctx) + self.poll_sources(runtime);
                self.watchers_waker.wake_by_ref();
                return applied;
            }
        };
        if let Some(waiter) = waiter {
            self.watchers.add(waiter);
        }
        let mut read = Vec::new();
        let mut watch_cx = TaskContext::from_waker(&self.watchers_waker);
        // Read until the descriptor is drained; a read error other than "nothing to read" ends
        // the round (it is retried on the next poll).
        while let Poll::Ready(Ok(())) =
            watch.poll_read_with(&mut watch_cx, &mut || self.read_one(ctx, &mut read))
        {}
        self.apply_all(ctx, read) + self.poll_sources(runtime)
    }

    /// Adds `source`, read from now on with the device's events; every poller is woken to
    /// read it once, which arms its wake-ups.
    pub(crate) fn add_source(&self, source: Weak<dyn EventSource>) {
        let mut sources = lock(&self.sources);
        sources.retain(|known| known.strong_count() > 0);
        if sources.iter().any(|known| known.ptr_eq(&source)) {
            return;
        }
        sources.push(source);
        drop(sources);
        self.watchers_waker.wake_by_ref();
    }

    /// Reads the other sources; their next events wake this device's watchers.
    fn poll_sources(&self, runtime: &RuntimeHandle) -> usize {
        let live: Vec<Arc<dyn EventSource>> = {
            let sources = lock(&self.sources);
            if sources.is_empty() {
                return 0;
            }
            sources.iter().filter_map(Weak::upgrade).collect()
        };
        live.iter()
            .map(|source| source.poll_source(runtime, &self.watchers_waker))
            .sum()
    }

    /// Reads and applies the events waiting on the descriptor now, without a runtime (the
    /// descriptor is non-blocking).
    pub(crate) fn read_now(&self, ctx: &ContextInner) -> usize {
        let mut read = Vec::new();
        while self.read_one(ctx, &mut read).is_ok() {}
        self.apply_all(ctx, read)
    }

    fn apply_all(&self, ctx: &ContextInner, read: Vec<RawEvent>) -> usize {
        self.retire_overdue();
        let applied = read.len();
        for event in read {
            self.apply(ctx, event);
        }
        if applied > 0 {
            self.watchers_waker.wake_by_ref();
        }
        applied
    }

    /// Reads one event, notes what it names, and acknowledges it.
    fn read_one(&self, ctx: &ContextInner, read: &mut Vec<RawEvent>) -> std::io::Result<()> {
        let mut event = MaybeUninit::<ibv_async_event>::uninit();
        // SAFETY: the context is open; the descriptor is non-blocking; `event` is writable.
        let rc = unsafe { ibv_get_async_event(ctx.device.raw(), event.as_mut_ptr()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let event_ptr = event.as_mut_ptr();
        // SAFETY: ibv_get_async_event filled `event`. The type is read as a plain u32: a
        // newer library may report a value outside rdma-sys's Rust enum, which would be
        // undefined behaviour to read as that enum (the field is a C enum, 32 bits).
        let code = unsafe {
            std::ptr::addr_of!((*event_ptr).event_type)
                .cast::<u32>()
                .read()
        };
        // SAFETY: the element union was filled for this event type; which member is valid
        // depends on `code`, and only that member is read below.
        let element = unsafe { std::ptr::addr_of!((*event_ptr).element).read() };
        let mut raw = RawEvent {
            code,
            kind: DeviceEventKind::Unknown { code },
            qp: None,
            qp_address: 0,
            cq: 0,
            srq: 0,
            port: 0,
        };
        let mut qpn = 0;
        match DeviceEventKind::element_of(code) {
            Element::Qp => {
                // SAFETY: a QP event names a QP that cannot be destroyed before the event is
                // acknowledged (below): reading its number is valid.
                let qp = unsafe { element.qp };
                qpn = unsafe { (*qp).qp_num };
                raw.qp_address = qp as usize;
                raw.qp = lock(&self.qps)
                    .iter()
                    .find(|(address, _)| *address == qp as usize)
                    .and_then(|(_, weak)| weak.upgrade());
            }
            // SAFETY (both): the member for this event type.
            Element::Cq => raw.cq = unsafe { element.cq } as usize,
            Element::Srq => raw.srq = unsafe { element.srq } as usize,
            Element::Port => raw.port = u8::try_from(unsafe { element.port_num }).unwrap_or(0),
            Element::None => {}
        }
        raw.kind = DeviceEventKind::from_raw(code, qpn, raw.port);
        // SAFETY: `event` came from ibv_get_async_event and is acknowledged once.
        unsafe { ibv_ack_async_event(event_ptr) };
        read.push(raw);
        Ok(())
    }

    /// Applies `event` to the objects it concerns, then queues it for the application.
    fn apply(&self, ctx: &ContextInner, event: RawEvent) {
        match event.code {
            0..=3 | 7 | 8 | 10 | 14 | 18 => {
                crate::trace::event!(warn, device = %ctx.name, event = %event.kind, "device event")
            }
            _ => {
                crate::trace::event!(info, device = %ctx.name, event = %event.kind, "device event")
            }
        }
        let cause = |kind| {
            Arc::new(Error::DeviceEvent {
                device: ctx.name.clone(),
                event: kind,
            })
        };
        match event.code {
            // QP fatal, request error, access error: the device already moved it to error
            // and flushes its work; the event becomes the cause new posts report.
            1..=3 => {
                if let Some(qp) = &event.qp {
                    qp.note_failure(cause(event.kind));
                }
            }
            16 => match &event.qp {
                Some(qp) => qp.last_wqe_reached(),
                None => self.last_wqe_of_dropped(event.qp_address),
            },
            0 => self.fail_cq(event.cq, &cause(event.kind)),
            14 => {
                let failure = cause(event.kind);
                for qp in self.qps_where(|qp| qp.uses_srq(event.srq)) {
                    qp.fail_now(&failure);
                }
            }
            8 => self.fail_device(cause(event.kind)),
            // A port that went down or whose addresses changed: if it can no longer be
            // queried, the device is being unregistered (rxe, whose network device was
            // deleted, reports only this).
            10 | 18 if ctx.device.query_port(event.port).is_err() => {
                self.queue(ctx, event.kind);
                self.queue(ctx, DeviceEventKind::DeviceRemoved);
                self.fail_device(cause(DeviceEventKind::DeviceRemoved));
                return;
            }
            _ => {}
        }
        self.queue(ctx, event.kind);
    }

    /// Fails every queue pair that uses completion queue `cq` (its address): the CQ failed.
    pub(crate) fn fail_cq(&self, cq: usize, cause: &Arc<Error>) {
        for qp in self.qps_where(|qp| qp.uses_cq(cq)) {
            qp.fail_now(cause);
        }
    }

    /// Fails every queue pair of the context, for good.
    fn fail_device(&self, cause: Arc<Error>) {
        let _ = self.failure.set(cause.clone());
        for qp in self.qps_where(|_| true) {
            qp.fail_now(&cause);
        }
    }

    fn queue(&self, ctx: &ContextInner, kind: DeviceEventKind) {
        let mut queue = lock(&self.queue);
        if queue.len() == QUEUED_EVENTS {
            queue.pop_front();
        }
        queue.push_back(DeviceEvent {
            device: ctx.name.clone(),
            kind,
        });
    }
}

/// The live entries of `list` for which `select` holds.
///
/// Every live entry is taken out under the lock, and the selection runs after it: a handle
/// taken here may be the last one (its owner dropped the others meanwhile), and dropping a
/// queue pair's last handle unregisters it, which locks `list` again.
fn live_where<T: ?Sized>(
    list: &Mutex<Vec<(usize, Weak<T>)>>,
    select: impl Fn(&T) -> bool,
) -> Vec<Arc<T>> {
    let live: Vec<Arc<T>> = lock(list)
        .iter()
        .filter_map(|(_, weak)| weak.upgrade())
        .collect();
    live.into_iter().filter(|item| select(item)).collect()
}

/// The future of [`Context::next_event`].
#[must_use = "futures do nothing unless awaited"]
pub struct NextEvent<'a> {
    pub(crate) ctx: &'a Context,
}

impl Future for NextEvent<'_> {
    type Output = Result<DeviceEvent>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let inner = &*self.ctx.inner;
        let runtime = match self.ctx.runtime() {
            Some(runtime) => runtime.clone(),
            None => match default_runtime() {
                Ok(runtime) => runtime,
                Err(err) => return Poll::Ready(Err(err)),
            },
        };
        inner.events.poll(inner, &runtime, Some(cx.waker()));
        if let Some(event) = lock(&inner.events.queue).pop_front() {
            return Poll::Ready(Ok(event));
        }
        if let Some(err) = inner.events.watch.error(&runtime) {
            return Poll::Ready(Err(err));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list of queue pairs, as `DeviceEvents::qps` keeps it.
    type Registry = Mutex<Vec<(usize, Weak<Registered>)>>;

    /// Stands for a queue pair: dropping its last handle takes it out of the list, as
    /// `QpShared`'s Drop unregisters it.
    struct Registered {
        address: usize,
        list: Arc<Registry>,
    }

    impl Drop for Registered {
        fn drop(&mut self) {
            lock(&self.list).retain(|(address, _)| *address != self.address);
        }
    }

    /// The application drops its last handle of a queue pair while an event (a CQ or SRQ
    /// error) looks for the queue pairs it concerns: the handle the search took is then the
    /// last, and dropping it must not happen with the list locked (its Drop locks it).
    #[test]
    fn a_queue_pair_dropped_during_a_search_does_not_deadlock_it() {
        let list: Arc<Registry> = Arc::new(Mutex::new(Vec::new()));
        let (done, finished) = std::sync::mpsc::channel();
        let search = {
            let list = list.clone();
            std::thread::spawn(move || {
                let users: Vec<_> = (0..3)
                    .map(|address| {
                        let qp = Arc::new(Registered {
                            address,
                            list: list.clone(),
                        });
                        lock(&list).push((address, Arc::downgrade(&qp)));
                        Mutex::new(Some(qp))
                    })
                    .collect();
                // The selection runs while the search holds the queue pair; the application's
                // handle goes then (on its own thread in real life: the same moment).
                let found = live_where(&list, |qp| {
                    drop(users[qp.address].lock().unwrap().take());
                    qp.address == 1
                });
                let addresses: Vec<_> = found.iter().map(|qp| qp.address).collect();
                drop(found);
                let _ = done.send((addresses, lock(&list).len()));
            })
        };
        match finished.recv_timeout(Duration::from_secs(10)) {
            Ok((addresses, left)) => {
                assert_eq!(addresses, [1], "the queue pair the event concerns");
                assert_eq!(left, 0, "every dropped queue pair left the list");
                search.join().unwrap();
            }
            Err(_) => panic!(
                "the search deadlocked: a queue pair's last handle was dropped with the list \
                 locked, and its Drop locked the list again"
            ),
        }
    }
}
