//! An opened RDMA device, bound to one port and GID.

use std::sync::Arc;

use rdma_sys::*;

use crate::device::{self, DeviceHandle, Gid, PortSelection, PortState, SYSFS_INFINIBAND};
use crate::error::{Error, Result};
use crate::events::{DeviceEvents, NextEvent};
use crate::port_counters::PortCounters;
use crate::runtime::{set_nonblocking, RuntimeHandle};

/// An opened RDMA device, bound to the port and GID its queue pairs use, and to the async
/// runtime its completion queues wait with.
///
/// Cheap to clone; the device is closed when the last clone and every object made from it
/// (protection domains, completion queues, queue pairs, memory) are gone.
///
/// The runtime: a context opened with no runtime uses the process default
/// ([`runtime::default_runtime`](crate::runtime::default_runtime): with the `anyrdma` crate,
/// the one its runtime features pick), looked up when one of its completion queues first
/// waits. [`Context::with_runtime`] binds one explicitly, so that one process can drive one
/// device with Tokio and another with smol.
///
/// ```no_run
/// # fn main() -> anyrdma_core::Result<()> {
/// let ctx = anyrdma_core::Context::open_default()?;
/// println!("using {} port {} (MTU {})", ctx.device_name(), ctx.port(), ctx.mtu());
/// let pd = ctx.alloc_pd()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Arc<ContextInner>,
    /// `None`: the process default, looked up at the first wait.
    runtime: Option<RuntimeHandle>,
}

pub(crate) struct ContextInner {
    /// Declared before `device`: its registration of the device's descriptor is dropped
    /// before the device is closed.
    pub(crate) events: DeviceEvents,
    pub(crate) device: DeviceHandle,
    pub(crate) name: String,
    pub(crate) port: u8,
    pub(crate) gid_index: u8,
    pub(crate) gid: Gid,
    pub(crate) lid: u16,
    /// Active MTU of the port, in bytes.
    pub(crate) mtu: u32,
    pub(crate) limits: DeviceLimits,
}

/// Limits of the device that shape queue pairs and operations.
#[derive(Debug, Clone, Copy)]
pub struct DeviceLimits {
    /// Largest work queue depth.
    pub max_qp_wr: u32,
    /// Most scatter-gather entries per work request.
    pub max_sge: u32,
    /// Largest completion queue.
    pub max_cqe: u32,
    /// Most outstanding RDMA reads and atomics a queue pair may receive.
    pub max_qp_rd_atom: u32,
    /// Most outstanding RDMA reads and atomics a queue pair may issue.
    pub max_qp_init_rd_atom: u32,
    /// Whether atomic operations are supported.
    pub atomics: bool,
}

impl Context {
    /// Opens the device, port and GID anyrdma picks by default (see
    /// [`device::default_port`]: the `ANYRDMA_DEVICE` variable, else the first active port).
    ///
    /// # Errors
    /// [`Error::NoDevice`] with advice when there is no RDMA device;
    /// [`Error::BadDeviceEnv`] when `ANYRDMA_DEVICE` names one that cannot be used.
    pub fn open_default() -> Result<Context> {
        Self::open_port(&device::default_port()?)
    }

    /// Opens device `name` on its default port and GID.
    ///
    /// # Errors
    /// [`Error::NoDevice`], listing the devices present, when no device has that name.
    pub fn open(name: &str) -> Result<Context> {
        Self::open_port(&PortSelection::for_device(name)?)
    }

    /// Opens the device, port and GID of `selection`.
    ///
    /// # Errors
    /// [`Error::NoDevice`] when the device is gone; [`Error::Verbs`] when a query fails.
    pub fn open_port(selection: &PortSelection) -> Result<Context> {
        let device = DeviceHandle::open_by_name(&selection.device)?;
        let gid_index = u8::try_from(selection.gid_index).map_err(|_| {
            Error::InvalidArgument(format!("GID index {} is above 255", selection.gid_index))
        })?;
        let attr = device.query_device()?;
        let port = device.query_port(selection.port)?;
        if port.state != ibv_port_state::IBV_PORT_ACTIVE {
            return Err(Error::InvalidArgument(format!(
                "port {} of {} is not active (state {}); check the link (`ibv_devinfo`)",
                selection.port, selection.device, port.state
            )));
        }
        let gid = device.query_gid(selection.port, u32::from(gid_index))?;
        let limits = DeviceLimits {
            max_qp_wr: attr.max_qp_wr.max(0) as u32,
            max_sge: attr.max_sge.max(0) as u32,
            max_cqe: attr.max_cqe.max(0) as u32,
            max_qp_rd_atom: attr.max_qp_rd_atom.max(0) as u32,
            max_qp_init_rd_atom: attr.max_qp_init_rd_atom.max(0) as u32,
            atomics: attr.atomic_cap != ibv_atomic_cap::IBV_ATOMIC_NONE,
        };
        // SAFETY: the context is open; reading its async-event descriptor.
        let async_fd = unsafe { (*device.raw()).async_fd };
        set_nonblocking(async_fd).map_err(|e| Error::verbs("fcntl(O_NONBLOCK)", e))?;
        Ok(Context {
            runtime: None,
            inner: Arc::new(ContextInner {
                events: DeviceEvents::new(async_fd),
                device,
                name: selection.device.clone(),
                port: selection.port,
                gid_index,
                gid,
                lid: port.lid,
                mtu: device::mtu_bytes(port.active_mtu),
                limits,
            }),
        })
    }

    /// This context (the same opened device) bound to `runtime`: completion queues created
    /// from the result wait with it. Objects created before keep the runtime they had.
    ///
    /// ```no_run
    /// # fn demo(smol: impl anyrdma_core::Runtime) -> anyrdma_core::Result<()> {
    /// use anyrdma_core::{CompletionQueue, Context, CqOptions};
    /// let ctx = Context::open_default()?.with_runtime(smol);
    /// let cq = CompletionQueue::new(&ctx, CqOptions::default())?; // waits with smol
    /// # Ok(()) }
    /// ```
    pub fn with_runtime(&self, runtime: impl Into<RuntimeHandle>) -> Context {
        Context {
            inner: self.inner.clone(),
            runtime: Some(runtime.into()),
        }
    }

    /// The runtime bound with [`Context::with_runtime`]; `None` means the process default.
    pub fn runtime(&self) -> Option<&RuntimeHandle> {
        self.runtime.as_ref()
    }

    /// The device name, e.g. `mlx5_0` or `rxe0`.
    pub fn device_name(&self) -> &str {
        &self.inner.name
    }

    /// The port queue pairs use.
    pub fn port(&self) -> u8 {
        self.inner.port
    }

    /// The GID index queue pairs use as source address.
    pub fn gid_index(&self) -> u8 {
        self.inner.gid_index
    }

    /// The port's active MTU in bytes.
    pub fn mtu(&self) -> u32 {
        self.inner.mtu
    }

    /// The device's limits.
    pub fn limits(&self) -> DeviceLimits {
        self.inner.limits
    }

    /// The state of the port queue pairs use, as the device reports it now.
    ///
    /// # Errors
    /// [`Error::Verbs`] when the port cannot be queried (for example, the device is going
    /// away).
    pub fn port_state(&self) -> Result<PortState> {
        let attr = self.inner.device.query_port(self.inner.port)?;
        Ok(PortState::from_raw(attr.state))
    }

    /// The counters the device keeps for the port queue pairs use, read now: traffic,
    /// errors, and the drops no completion reports (a datagram that found no receive posted:
    /// [`PortCounters::receive_queue_drops`]). Reads sysfs; a few dozen small files, not for
    /// a hot path.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) when sysfs has no such port
    /// (the device went away).
    pub fn port_counters(&self) -> Result<PortCounters> {
        PortCounters::read(
            std::path::Path::new(SYSFS_INFINIBAND),
            &self.inner.name,
            self.inner.port,
        )
    }

    /// Waits for the device's next asynchronous event: a queue pair or completion queue
    /// that failed, a port that went down or came back, a device that failed or is going
    /// away (see [`DeviceEventKind`](crate::DeviceEventKind) for each and what anyrdma does
    /// about it).
    ///
    /// Events are applied to the objects they concern whether or not anyone calls this:
    /// pollers of the context's completion queues read them too. Up to 1,024 events wait
    /// here for a caller; older ones are dropped. Every caller takes the next event: with
    /// several, each event goes to one of them.
    ///
    /// ```no_run
    /// # async fn demo(ctx: anyrdma_core::Context) -> anyrdma_core::Result<()> {
    /// loop {
    ///     let event = ctx.next_event().await?;
    ///     eprintln!("{event}"); // e.g. "rxe0: port 1 went down"
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::NoRuntime`] without a runtime; [`Error::Runtime`] when the runtime cannot
    /// watch the device's event descriptor.
    pub fn next_event(&self) -> NextEvent<'_> {
        NextEvent { ctx: self }
    }

    /// Why the whole device failed (a fatal error, or it is going away), once it did.
    pub fn failure(&self) -> Option<Arc<Error>> {
        self.inner.events.failure.get().cloned()
    }

    pub(crate) fn raw(&self) -> *mut ibv_context {
        self.inner.device.raw()
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("device", &self.inner.name)
            .field("port", &self.inner.port)
            .field("gid_index", &self.inner.gid_index)
            .field("runtime", &self.runtime.as_ref().map(RuntimeHandle::name))
            .finish()
    }
}

/// The `ibv_mtu` value of a byte count (rounded down to a valid MTU).
pub(crate) fn mtu_enum(bytes: u32) -> ibv_mtu::Type {
    match bytes {
        4096.. => ibv_mtu::IBV_MTU_4096,
        2048.. => ibv_mtu::IBV_MTU_2048,
        1024.. => ibv_mtu::IBV_MTU_1024,
        512.. => ibv_mtu::IBV_MTU_512,
        _ => ibv_mtu::IBV_MTU_256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_conversions_round_trip() {
        for bytes in [256, 512, 1024, 2048, 4096] {
            assert_eq!(device::mtu_bytes(mtu_enum(bytes)), bytes);
        }
        assert_eq!(device::mtu_bytes(mtu_enum(1500)), 1024);
        assert_eq!(device::mtu_bytes(mtu_enum(9000)), 4096);
    }
}
