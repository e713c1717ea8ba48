//! An opened RDMA device, bound to one port and GID.

use std::ffi::CStr;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys::*;

use crate::device::{self, PortSelection};
use crate::error::{Error, Result};
use crate::pd::ProtectionDomain;

/// An opened RDMA device, bound to the port and GID its queue pairs use.
///
/// Cheap to clone; the device is closed when the last clone and every object made from it
/// (protection domains, completion queues, queue pairs, memory) are gone.
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
}

pub(crate) struct ContextInner {
    pub(crate) raw: NonNull<ibv_context>,
    pub(crate) name: String,
    pub(crate) port: u8,
    pub(crate) gid_index: u8,
    pub(crate) gid: [u8; 16],
    pub(crate) lid: u16,
    pub(crate) active_mtu: ibv_mtu::Type,
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

// SAFETY: libibverbs contexts are thread-safe; the pointer is only used through verbs calls
// and is valid until ContextInner is dropped.
unsafe impl Send for ContextInner {}
// SAFETY: as above.
unsafe impl Sync for ContextInner {}

impl Context {
    /// Opens the device, port and GID anyrdma picks by default (see
    /// [`device::default_port`]: the `ANYRDMA_DEVICE` variable, else the first active port).
    ///
    /// # Errors
    /// [`Error::NoDevice`] with advice when there is no RDMA device.
    pub fn open_default() -> Result<Context> {
        Self::open_port(&device::default_port()?)
    }

    /// Opens device `name` on its default port and GID.
    ///
    /// # Errors
    /// [`Error::NoDevice`] when no device has that name.
    pub fn open(name: &str) -> Result<Context> {
        Self::open_port(&PortSelection::for_device(name)?)
    }

    /// Opens the device, port and GID of `selection`.
    ///
    /// # Errors
    /// [`Error::NoDevice`] when the device is gone; [`Error::Verbs`] when a query fails.
    pub fn open_port(selection: &PortSelection) -> Result<Context> {
        let raw = open_device(&selection.device)?;
        let ctx = ContextInner {
            raw,
            name: selection.device.clone(),
            port: selection.port,
            gid_index: u8::try_from(selection.gid_index).map_err(|_| {
                Error::InvalidArgument(format!("GID index {} is above 255", selection.gid_index))
            })?,
            gid: [0; 16],
            lid: 0,
            active_mtu: ibv_mtu::IBV_MTU_1024,
            limits: DeviceLimits {
                max_qp_wr: 0,
                max_sge: 0,
                max_cqe: 0,
                max_qp_rd_atom: 0,
                max_qp_init_rd_atom: 0,
                atomics: false,
            },
        };
        // From here on, dropping `ctx` closes the device on every error path.
        let mut ctx = ctx;
        ctx.query()?;
        Ok(Context {
            inner: Arc::new(ctx),
        })
    }

    /// Allocates a protection domain on this device.
    ///
    /// # Errors
    /// [`Error::Verbs`] when `ibv_alloc_pd` fails.
    pub fn alloc_pd(&self) -> Result<ProtectionDomain> {
        ProtectionDomain::new(self)
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
        mtu_bytes(self.inner.active_mtu)
    }

    /// The device's limits.
    pub fn limits(&self) -> DeviceLimits {
        self.inner.limits
    }

    pub(crate) fn raw(&self) -> *mut ibv_context {
        self.inner.raw.as_ptr()
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("device", &self.inner.name)
            .field("port", &self.inner.port)
            .field("gid_index", &self.inner.gid_index)
            .finish()
    }
}

impl ContextInner {
    fn query(&mut self) -> Result<()> {
        let raw = self.raw.as_ptr();
        // SAFETY: ibv_device_attr is plain C data; all-zero is a valid value.
        let mut attr: ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: `raw` is an open context; `attr` is a valid out pointer.
        let rc = unsafe { ibv_query_device(raw, &mut attr) };
        if rc != 0 {
            return Err(Error::from_code("ibv_query_device", rc));
        }
        self.limits = DeviceLimits {
            max_qp_wr: attr.max_qp_wr.max(0) as u32,
            max_sge: attr.max_sge.max(0) as u32,
            max_cqe: attr.max_cqe.max(0) as u32,
            max_qp_rd_atom: attr.max_qp_rd_atom.max(0) as u32,
            max_qp_init_rd_atom: attr.max_qp_init_rd_atom.max(0) as u32,
            atomics: attr.atomic_cap != ibv_atomic_cap::IBV_ATOMIC_NONE,
        };
        // SAFETY: ibv_port_attr is plain C data; all-zero is a valid value.
        let mut port: ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: `raw` is open; `port` is a valid out pointer of the size the call expects.
        let rc = unsafe { ___ibv_query_port(raw, self.port, &mut port) };
        if rc != 0 {
            return Err(Error::from_code("ibv_query_port", rc));
        }
        if port.state != ibv_port_state::IBV_PORT_ACTIVE {
            return Err(Error::InvalidArgument(format!(
                "port {} of {} is not active (state {}); check the link (`ibv_devinfo`)",
                self.port, self.name, port.state
            )));
        }
        self.lid = port.lid;
        self.active_mtu = port.active_mtu;
        // SAFETY: ibv_gid is a plain union of bytes; all-zero is valid.
        let mut gid: ibv_gid = unsafe { std::mem::zeroed() };
        // SAFETY: `raw` is open; `gid` is a valid out pointer.
        let rc = unsafe { ibv_query_gid(raw, self.port, i32::from(self.gid_index), &mut gid) };
        if rc != 0 {
            return Err(Error::last_os("ibv_query_gid"));
        }
        // SAFETY: every bit pattern of the union is a valid byte array.
        self.gid = unsafe { gid.raw };
        Ok(())
    }
}

impl Drop for ContextInner {
    fn drop(&mut self) {
        // SAFETY: every object made from this context holds an Arc to it, so none is left;
        // the context is closed exactly once.
        unsafe { ibv_close_device(self.raw.as_ptr()) };
    }
}

/// Opens the device called `name`.
fn open_device(name: &str) -> Result<NonNull<ibv_context>> {
    let mut count = 0;
    // SAFETY: `count` is a valid out pointer; the list is freed below on every path.
    let list = unsafe { ibv_get_device_list(&mut count) };
    if list.is_null() {
        return Err(Error::last_os("ibv_get_device_list"));
    }
    let mut opened = Err(Error::NoDevice {
        wanted: Some(name.to_owned()),
    });
    for i in 0..count.max(0) as usize {
        // SAFETY: the list holds `count` valid device pointers.
        let dev = unsafe { *list.add(i) };
        // SAFETY: `dev` is valid while the list is; the name is a NUL-terminated string.
        let dev_name = unsafe { CStr::from_ptr(ibv_get_device_name(dev)) };
        if dev_name.to_bytes() == name.as_bytes() {
            // SAFETY: `dev` is a valid device from the list, which is still alive.
            let ctx = unsafe { ibv_open_device(dev) };
            opened = NonNull::new(ctx).ok_or_else(|| {
                Error::last_os("ibv_open_device")
                    .with_hint("check permissions on /dev/infiniband/uverbs*")
            });
            break;
        }
    }
    // SAFETY: `list` came from ibv_get_device_list; opened contexts stay valid after this.
    unsafe { ibv_free_device_list(list) };
    opened
}

/// Bytes of an `ibv_mtu` value.
pub(crate) fn mtu_bytes(mtu: ibv_mtu::Type) -> u32 {
    128 << mtu.clamp(1, 5)
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
            assert_eq!(mtu_bytes(mtu_enum(bytes)), bytes);
        }
        assert_eq!(mtu_bytes(mtu_enum(1500)), 1024);
        assert_eq!(mtu_bytes(mtu_enum(9000)), 4096);
    }
}
