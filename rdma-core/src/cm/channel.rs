//! The rdma_cm event channel as an async event source.
//!
//! One channel serves a listener and every connection it accepts, or one outgoing
//! connection. Its descriptor is non-blocking and registered with the runtime of the first
//! task that waits on it. Whoever waits (a task in `connect`, `accept` or `close`, or a
//! completion-queue poller of a connection's device: see [`EventSource`]) reads every event
//! waiting, copies what it carries, acknowledges it at once (so that destroying an id never
//! waits for an acknowledgement), and files it in the mailbox of the id it names. There is
//! no thread and no timer.
//!
//! Events that end a connection act at once, whoever reads them: a disconnect moves the
//! connection's queue pair to the error state, so that its pending operations end, flushed,
//! with [`Error::Disconnected`] as the cause, after everything that completed before (a
//! message that arrived before the disconnect is still delivered); a device removal fails it
//! at once, as its completions may never come.

use std::collections::{HashMap, VecDeque};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context as TaskContext, Poll, Waker};

use rdma_sys::*;

use super::id::CmId;
use crate::error::{Error, Result};
use crate::events::EventSource;
use crate::qp::QpShared;
use crate::runtime::{set_nonblocking, LazyWatch, RuntimeHandle};
use crate::wake::{lock, WakerSet};

/// An event as copied from librdmacm before it was acknowledged.
pub(crate) struct CmEvent {
    /// `rdma_cm_event_type` (read as a plain number: a newer library may add kinds).
    pub(crate) kind: u32,
    /// The event's status: 0, a negative errno, or (for a rejection) the transport's reason
    /// code.
    pub(crate) status: i32,
    /// The private data that came with it (connect request, response or rejection).
    pub(crate) private_data: Vec<u8>,
    /// The peer's responder resources and initiator depth (connect request and response).
    pub(crate) responder_resources: u8,
    pub(crate) initiator_depth: u8,
    /// A connect request's new id, owned from here on.
    pub(crate) child: Option<CmId>,
    /// What a datagram id's `RDMA_CM_EVENT_ESTABLISHED` carries: the peer's queue pair,
    /// Q_Key and the address handle attributes of the path to it; for
    /// `RDMA_CM_EVENT_MULTICAST_JOIN`, the group's.
    pub(crate) ud: Option<UdParam>,
}

/// The peer a datagram resolution found (`rdma_ud_param` without its private data).
#[derive(Clone, Copy)]
pub(crate) struct UdParam {
    pub(crate) ah_attr: ibv_ah_attr,
    pub(crate) qp_num: u32,
    pub(crate) qkey: u32,
}

impl CmEvent {
    /// The event's name as librdmacm spells it, e.g. `RDMA_CM_EVENT_REJECTED`.
    pub(crate) fn name(&self) -> String {
        if self.kind > rdma_cm_event_type::RDMA_CM_EVENT_TIMEWAIT_EXIT {
            return format!("rdma_cm event {}", self.kind);
        }
        // SAFETY: rdma_event_str returns a static string for every known kind (checked above).
        let name = unsafe { rdma_event_str(self.kind) };
        if name.is_null() {
            return format!("rdma_cm event {}", self.kind);
        }
        // SAFETY: a NUL-terminated static string.
        unsafe { std::ffi::CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    }
}

impl std::fmt::Debug for CmEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmEvent")
            .field("kind", &self.name())
            .field("status", &self.status)
            .field("private_data", &self.private_data.len())
            .finish()
    }
}

/// What the channel knows of one id: its undelivered events, and the queue pair to fail
/// when the connection ends.
#[derive(Default)]
pub(crate) struct IdMailbox {
    events: Mutex<VecDeque<CmEvent>>,
    /// The connection's queue pair, once it has one.
    pub(crate) qp: Mutex<Option<Weak<QpShared>>>,
    /// Set when the connection ended (disconnect or device removal).
    pub(crate) ended: AtomicBool,
    /// For a listener: how many connect requests may wait in `events` (the backlog); more
    /// are rejected at once. 0 for other ids.
    pub(crate) backlog: AtomicUsize,
}

impl IdMailbox {
    pub(crate) fn pop(&self) -> Option<CmEvent> {
        lock(&self.events).pop_front()
    }
}

pub(crate) struct EventChannel {
    raw: NonNull<rdma_event_channel>,
    /// This channel, for the ids it adopts (each holds its channel).
    me: Weak<EventChannel>,
    /// The descriptor, registered with the first waiting task's runtime (dropped in Drop
    /// before the channel is destroyed).
    watch: Option<LazyWatch>,
    /// Who is woken when the descriptor becomes readable.
    watchers: Arc<WakerSet>,
    watchers_waker: Waker,
    /// The ids whose events this channel files, by the token in their `context`.
    ids: Mutex<HashMap<usize, Arc<IdMailbox>>>,
    next_token: AtomicUsize,
    /// One reader at a time, so that events are filed in the order they were read.
    reading: Mutex<()>,
}

// SAFETY: librdmacm's channel and ids may be used from any thread; everything else is
// behind locks or atomics.
unsafe impl Send for EventChannel {}
// SAFETY: as above.
unsafe impl Sync for EventChannel {}

impl EventChannel {
    pub(crate) fn new() -> Result<Arc<EventChannel>> {
        // SAFETY: plain constructor; null on failure.
        let raw = unsafe { rdma_create_event_channel() };
        let raw = NonNull::new(raw).ok_or_else(|| {
            Error::last_os("rdma_create_event_channel")
                .with_hint("is librdmacm's kernel module (rdma_ucm) loaded? `modprobe rdma_ucm`")
        })?;
        // SAFETY: the channel was just created.
        let fd = unsafe { (*raw.as_ptr()).fd };
        if let Err(err) = set_nonblocking(fd) {
            // SAFETY: created above, no id on it.
            unsafe { rdma_destroy_event_channel(raw.as_ptr()) };
            return Err(Error::verbs("fcntl(O_NONBLOCK)", err));
        }
        let watchers = Arc::new(WakerSet::default());
        // SAFETY: the descriptor is non-blocking (above) and stays open until Drop, which
        // drops the watch first.
        let watch = unsafe { LazyWatch::new(fd, "the rdma_cm event channel") };
        Ok(Arc::new_cyclic(|me| EventChannel {
            raw,
            me: me.clone(),
            watch: Some(watch),
            watchers_waker: Waker::from(watchers.clone()),
            watchers,
            ids: Mutex::new(HashMap::new()),
            next_token: AtomicUsize::new(1),
            reading: Mutex::new(()),
        }))
    }

    pub(crate) fn raw(&self) -> *mut rdma_event_channel {
        self.raw.as_ptr()
    }

    /// A new mailbox and the token that names it in an id's `context`.
    pub(crate) fn register(&self) -> (usize, Arc<IdMailbox>) {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mailbox = Arc::new(IdMailbox::default());
        lock(&self.ids).insert(token, mailbox.clone());
        (token, mailbox)
    }

    /// Forgets the mailbox of `token` (its id is being destroyed). Returns the events it
    /// still held, so that the caller drops them (and the ids they own) outside the lock.
    pub(crate) fn unregister(&self, token: usize) -> Option<Arc<IdMailbox>> {
        lock(&self.ids).remove(&token)
    }

    /// Reads and files every event waiting, registering `waiter` to be woken by the next
    /// one. Returns how many it filed.
    pub(crate) fn poll(&self, runtime: &RuntimeHandle, waiter: Option<&Waker>) -> Result<usize> {
        let Some(lazy) = &self.watch else {
            return Ok(0);
        };
        let watch = match lazy.get(runtime) {
            Ok(watch) => watch,
            Err(_) => {
                // No way to sleep on it here: still read and file what is there, so that a
                // connection's end acts for whoever polls.
                let _reading = lock(&self.reading);
                let mut read = Vec::new();
                while self.read_one(&mut read).is_ok() {}
                self.file_all(read);
                return Err(lazy.error(runtime).unwrap_or(Error::NoRuntime));
            }
        };
        if let Some(waiter) = waiter {
            self.watchers.add(waiter);
        }
        let mut filed = 0;
        let mut watch_cx = TaskContext::from_waker(&self.watchers_waker);
        let _reading = lock(&self.reading);
        loop {
            let mut read = Vec::new();
            let result = watch.poll_read_with(&mut watch_cx, &mut || self.read_one(&mut read));
            filed += read.len();
            self.file_all(read);
            match result {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(source)) => {
                    return Err(Error::Runtime {
                        runtime: runtime.name(),
                        what: "the rdma_cm event channel",
                        source,
                    })
                }
                Poll::Pending => break,
            }
        }
        drop(_reading);
        if filed > 0 {
            self.watchers_waker.wake_by_ref();
        }
        Ok(filed)
    }

    /// Reads one event, copies it, and acknowledges it; a connect request's new id gets a
    /// mailbox of its own before the next event is read, so that its later events find it.
    fn read_one(&self, read: &mut Vec<(usize, CmEvent)>) -> std::io::Result<()> {
        let mut event: *mut rdma_cm_event = std::ptr::null_mut();
        // SAFETY: the channel is valid and non-blocking; `event` is an out pointer.
        if unsafe { rdma_get_cm_event(self.raw(), &mut event) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: rdma_get_cm_event succeeded: `event` is valid until acknowledged. The kind
        // is read as a plain number (see CmEvent::kind).
        let (kind, status, id, listen_id) = unsafe {
            (
                std::ptr::addr_of!((*event).event).cast::<u32>().read(),
                (*event).status,
                (*event).id,
                (*event).listen_id,
            )
        };
        let is_request = kind == rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_REQUEST;
        // SAFETY: the event's id is valid while it is unacknowledged (`ps` is set when it
        // is created).
        let datagram = !id.is_null() && unsafe { (*id).ps } == rdma_port_space::RDMA_PS_UDP;
        let mut ud = None;
        let joined = kind == rdma_cm_event_type::RDMA_CM_EVENT_MULTICAST_JOIN;
        if (datagram && kind == rdma_cm_event_type::RDMA_CM_EVENT_ESTABLISHED) || joined {
            // SAFETY: on a datagram id, an established event's `param.ud` is the valid
            // member (rdma_cm fills it from the service ID resolution reply); a multicast
            // join's is too (the group's address attributes, QPN 0xFFFFFF and Q_Key).
            let param = unsafe { &(*event).param.ud };
            ud = Some(UdParam {
                ah_attr: param.ah_attr,
                qp_num: param.qp_num,
                qkey: param.qkey,
            });
        }
        let (mut private_data, mut responder_resources, mut initiator_depth) = (Vec::new(), 0, 0);
        if matches!(
            kind,
            rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_REQUEST
                | rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_RESPONSE
                | rdma_cm_event_type::RDMA_CM_EVENT_REJECTED
                | rdma_cm_event_type::RDMA_CM_EVENT_ESTABLISHED
        ) {
            // SAFETY: for these connected-mode events `param.conn` is the valid member (for a
            // datagram id `param.ud`, whose private data pointer and length sit at the same
            // places; the other fields read are then plain bytes of its address
            // attributes, unused); its private data (when not null) has `private_data_len`
            // readable bytes until the acknowledgement.
            unsafe {
                let conn = &(*event).param.conn;
                if !conn.private_data.is_null() && conn.private_data_len > 0 {
                    private_data = std::slice::from_raw_parts(
                        conn.private_data.cast::<u8>(),
                        usize::from(conn.private_data_len),
                    )
                    .to_vec();
                }
                responder_resources = conn.responder_resources;
                initiator_depth = conn.initiator_depth;
            }
        }
        // The id whose mailbox gets the event: for a request, the listener's.
        let target = if is_request { listen_id } else { id };
        // SAFETY: ids named by an event are valid while it is unacknowledged; `context`
        // holds the token set when the id was made (a request's new id inherits the
        // listener's).
        let token = if target.is_null() {
            0
        } else {
            unsafe { (*target).context as usize }
        };
        // SAFETY: acknowledged once, after everything needed was copied out of it.
        unsafe { rdma_ack_cm_event(event) };
        let child = match NonNull::new(id) {
            // The new id is ours now: give it its own mailbox before reading on.
            Some(child) if is_request => self.adopt(child),
            _ => None,
        };
        read.push((
            token,
            CmEvent {
                kind,
                status,
                private_data,
                responder_resources,
                initiator_depth,
                child,
                ud,
            },
        ));
        Ok(())
    }

    /// Takes ownership of a connect request's new id (on this channel).
    fn adopt(&self, raw: NonNull<rdma_cm_id>) -> Option<CmId> {
        // Reading means someone holds the channel, so `me` is alive.
        let channel = self.me.upgrade()?;
        // SAFETY: an id this channel reported, owned by nobody else yet.
        Some(unsafe { CmId::adopt(raw, channel) })
    }

    /// Files read events in their mailboxes, and acts on those that end a connection.
    fn file_all(&self, read: Vec<(usize, CmEvent)>) {
        for (token, event) in read {
            let mailbox = lock(&self.ids).get(&token).cloned();
            let Some(mailbox) = mailbox else {
                // The id is gone (its owner dropped it): nothing waits for the event. A
                // request for a listener that is gone is rejected.
                if let Some(child) = event.child {
                    child.reject(b"anyrdma: the listener is closed");
                }
                continue;
            };
            match event.kind {
                rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_REQUEST => {
                    let mut events = lock(&mailbox.events);
                    if events.len() >= mailbox.backlog.load(Ordering::Relaxed) {
                        drop(events);
                        // The backlog is full: the request's id is rejected and destroyed.
                        if let Some(child) = event.child {
                            child.reject(b"anyrdma: the listener's backlog is full");
                        }
                        continue;
                    }
                    events.push_back(event);
                    continue;
                }
                rdma_cm_event_type::RDMA_CM_EVENT_DISCONNECTED
                | rdma_cm_event_type::RDMA_CM_EVENT_DEVICE_REMOVAL => {
                    mailbox.end(&event);
                }
                _ => {}
            }
            lock(&mailbox.events).push_back(event);
        }
    }
}

impl IdMailbox {
    /// The connection ended (`event`): its queue pair fails, so that every pending operation
    /// ends with the reason.
    fn end(&self, event: &CmEvent) {
        self.ended.store(true, Ordering::Release);
        let qp = lock(&self.qp).as_ref().and_then(Weak::upgrade);
        if let Some(qp) = qp {
            let qpn = qp.status.qpn;
            if event.kind == rdma_cm_event_type::RDMA_CM_EVENT_DEVICE_REMOVAL {
                let why = "the RDMA device was removed";
                qp.fail_now(&Arc::new(Error::Disconnected { qpn, why }));
            } else {
                let why = "the peer disconnected";
                qp.connection_ended(&Arc::new(Error::Disconnected { qpn, why }));
            }
        }
    }
}

impl EventSource for EventChannel {
    fn poll_source(&self, runtime: &RuntimeHandle, waiter: &Waker) -> usize {
        self.poll(runtime, Some(waiter)).unwrap_or(0)
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // The registration goes before the descriptor is closed.
        self.watch = None;
        // Every id of this channel is gone (each holds the channel), so destroying it
        // waits for nothing.
        // SAFETY: created in `new`, destroyed once, here.
        unsafe { rdma_destroy_event_channel(self.raw.as_ptr()) };
    }
}
