//! An owned rdma_cm id: created or adopted, its events awaited, destroyed once.

use std::ffi::CStr;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::ptr::NonNull;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use rdma_sys::*;

use super::channel::{CmEvent, EventChannel, IdMailbox};
use super::sockaddr;
use crate::error::{Error, Result};
use crate::runtime::{with_sleep, RuntimeHandle};

/// The largest private data each message of the connection protocol carries (rdma_cm over
/// InfiniBand CM: a request 56 bytes, an accept 196, a rejection 148).
pub(crate) const MAX_CONNECT_DATA: usize = 56;
pub(crate) const MAX_ACCEPT_DATA: usize = 196;
pub(crate) const MAX_REJECT_DATA: usize = 148;

pub(crate) struct CmId {
    raw: NonNull<rdma_cm_id>,
    token: usize,
    pub(crate) mailbox: Arc<IdMailbox>,
    /// Declared last: the channel outlives the id (it is destroyed after its last id).
    pub(crate) channel: Arc<EventChannel>,
}

// SAFETY: librdmacm ids may be used from any thread; the id is destroyed once, in Drop.
unsafe impl Send for CmId {}
// SAFETY: the methods taking `&self` call librdmacm functions that are safe to call
// concurrently on one id (they are system calls on the kernel's id).
unsafe impl Sync for CmId {}

impl CmId {
    /// A new id on `channel` (reliable connected: `RDMA_PS_TCP`).
    pub(crate) fn new(channel: &Arc<EventChannel>) -> Result<CmId> {
        Self::in_port_space(channel, rdma_port_space::RDMA_PS_TCP)
    }

    /// A new id on `channel` in port space `ps` (`RDMA_PS_UDP` for datagrams).
    pub(crate) fn in_port_space(
        channel: &Arc<EventChannel>,
        ps: rdma_port_space::Type,
    ) -> Result<CmId> {
        let (token, mailbox) = channel.register();
        let mut raw = std::ptr::null_mut();
        // SAFETY: the channel is valid; `raw` is an out pointer; the context is the token.
        let rc =
            unsafe { rdma_create_id(channel.raw(), &mut raw, token as *mut std::ffi::c_void, ps) };
        let Some(raw) = NonNull::new(raw).filter(|_| rc == 0) else {
            channel.unregister(token);
            return Err(Error::last_os("rdma_create_id"));
        };
        Ok(CmId {
            raw,
            token,
            mailbox,
            channel: channel.clone(),
        })
    }

    /// Takes ownership of `raw`, a connect request's new id reported on `channel`, and gives
    /// it a mailbox of its own.
    ///
    /// # Safety
    /// `raw` is a valid id that nothing else owns.
    pub(crate) unsafe fn adopt(raw: NonNull<rdma_cm_id>, channel: Arc<EventChannel>) -> CmId {
        let (token, mailbox) = channel.register();
        // SAFETY: the caller owns the id; its context is ours to set.
        unsafe { (*raw.as_ptr()).context = token as *mut std::ffi::c_void };
        CmId {
            raw,
            token,
            mailbox,
            channel,
        }
    }

    pub(crate) fn raw(&self) -> *mut rdma_cm_id {
        self.raw.as_ptr()
    }

    /// The next event of this id, reading the channel with `runtime`.
    pub(crate) async fn next_event(&self, runtime: &RuntimeHandle) -> Result<CmEvent> {
        poll_fn(|cx| self.poll_event(runtime, cx)).await
    }

    /// This id's next event if one is there (reading the channel with `runtime`); else
    /// `Pending`, with the task of `cx` woken when the channel has news.
    pub(crate) fn poll_event(
        &self,
        runtime: &RuntimeHandle,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<CmEvent>> {
        if let Some(event) = self.mailbox.pop() {
            return Poll::Ready(Ok(event));
        }
        if let Err(err) = self.channel.poll(runtime, Some(cx.waker())) {
            return Poll::Ready(Err(err));
        }
        match self.mailbox.pop() {
            Some(event) => Poll::Ready(Ok(event)),
            None => Poll::Pending,
        }
    }

    /// [`next_event`](CmId::next_event), failing with `on_timeout` after `timeout`.
    pub(crate) async fn next_event_within(
        &self,
        runtime: &RuntimeHandle,
        timeout: Duration,
        on_timeout: impl FnOnce() -> Error,
    ) -> Result<CmEvent> {
        // A runtime that cannot make a timer on this thread is an error, not a panic.
        let sleep = runtime.try_sleep(timeout)?;
        match with_sleep(timeout, self.next_event(runtime), sleep).await {
            Ok(result) => result,
            Err(_elapsed) => Err(on_timeout()),
        }
    }

    /// The local address (after binding or resolving).
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: `route.addr` starts with the source address union (a sockaddr_storage),
        // valid for the life of the id.
        unsafe {
            let addr = std::ptr::addr_of!((*self.raw()).route.addr);
            sockaddr::from_raw(addr.cast())
        }
    }

    /// The peer's address (after resolving, or on a connect request's id).
    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: the destination address union follows the source one (each a
        // sockaddr_storage) in `route.addr`, valid for the life of the id.
        unsafe {
            let addr = std::ptr::addr_of!((*self.raw()).route.addr)
                .cast::<libc::sockaddr_storage>()
                .add(1);
            sockaddr::from_raw(addr)
        }
    }

    /// The device the route uses (its name) and the port, once the address is resolved
    /// (or on a connect request's id).
    pub(crate) fn device(&self) -> Option<(String, u8)> {
        // SAFETY: `verbs` is null or librdmacm's open context of the id's device, valid
        // for the life of the id; its device name is a NUL-terminated array.
        unsafe {
            let verbs = (*self.raw()).verbs;
            if verbs.is_null() {
                return None;
            }
            let name = ibv_get_device_name((*verbs).device);
            if name.is_null() {
                return None;
            }
            let name = CStr::from_ptr(name).to_string_lossy().into_owned();
            Some((name, (*self.raw()).port_num))
        }
    }

    /// Rejects the connect request this id came from with `reason` (cut to what the
    /// protocol carries) and destroys the id.
    pub(crate) fn reject(self, reason: &[u8]) {
        let len = reason.len().min(MAX_REJECT_DATA);
        // SAFETY: the id is a connect request's; `reason` is readable for `len` bytes.
        let rc = unsafe { rdma_reject(self.raw(), reason.as_ptr().cast(), len as u8) };
        if rc != 0 {
            crate::trace::event!(
                warn,
                error = %std::io::Error::last_os_error(),
                "rdma_reject failed; the peer sees a timeout instead"
            );
        }
    }

    /// Sends a disconnect request (or answers the peer's). Harmless when not connected.
    pub(crate) fn disconnect(&self) {
        // SAFETY: the id is valid; rdma_disconnect only sends a message.
        unsafe { rdma_disconnect(self.raw()) };
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // The mailbox goes first (its undelivered events and the ids they own with it), so
        // that no event is filed for an id that is being destroyed.
        let mailbox = self.channel.unregister(self.token);
        drop(mailbox);
        // SAFETY: created or adopted by this value and destroyed once, here. Every event of
        // the id that was read has been acknowledged (the channel acknowledges as it reads),
        // so this does not wait for one.
        let rc = unsafe { rdma_destroy_id(self.raw.as_ptr()) };
        if rc != 0 {
            crate::trace::event!(
                error,
                error = %std::io::Error::last_os_error(),
                "rdma_destroy_id failed: the id is leaked"
            );
        }
    }
}
