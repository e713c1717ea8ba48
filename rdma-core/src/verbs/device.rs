//! Device discovery: which RDMA devices, ports and GIDs this machine has, and which one
//! anyrdma uses by default.
//!
//! [`devices()`] lists everything (what `ibv_devinfo -v` shows, reduced to what an
//! application needs); [`default_port()`] picks the device, port and GID index to use,
//! honouring the `ANYRDMA_DEVICE` environment variable ([`DEVICE_ENV`]).

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::raw::c_int;
use std::path::Path;
use std::ptr::NonNull;
use std::str::FromStr;

use rdma_sys::{ibv_context, ibv_device, ibv_device_attr, ibv_gid, ibv_port_attr};

use crate::error::{Error, Result};

// Defined in a file of its own, which imports nothing, so that the error module can name it.
pub use super::device_env::DEVICE_ENV;

/// Where the kernel publishes GID attributes (type, network device).
pub(crate) const SYSFS_INFINIBAND: &str = "/sys/class/infiniband";

// `enum ibv_link_layer` values (the header defines them as macros bindgen does not keep).
const IBV_LINK_LAYER_UNSPECIFIED: u8 = 0;
const IBV_LINK_LAYER_INFINIBAND: u8 = 1;
const IBV_LINK_LAYER_ETHERNET: u8 = 2;

// ---------------------------------------------------------------------------------------
// GIDs
// ---------------------------------------------------------------------------------------

/// A 128-bit Global Identifier: a port's address in an InfiniBand subnet or, on RoCE, an
/// IPv6 address (IPv4 addresses appear as IPv4-mapped `::ffff:a.b.c.d`).
///
/// `Display` prints it the way `ibv_devinfo` and `inet_ntop` do, e.g.
/// `fe80::80fe:acff:fe53:a0c6` or `::ffff:169.254.77.1`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    /// The raw 16 bytes, in network order.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// True for the all-zero GID, which marks an unused GID table entry.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// The IPv4 address of an IPv4-mapped GID (`::ffff:a.b.c.d`, what RoCE v2 uses for
    /// IPv4), or `None`.
    pub fn to_ipv4(&self) -> Option<Ipv4Addr> {
        Ipv6Addr::from(self.0).to_ipv4_mapped()
    }

    /// The GID as an IPv6 address.
    pub fn to_ipv6(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.0)
    }

    pub(crate) fn from_raw(gid: &ibv_gid) -> Gid {
        // SAFETY: both members of the `ibv_gid` union are plain 16-byte integer data, so
        // every bit pattern is a valid `raw` array.
        Gid(unsafe { gid.raw })
    }

    /// The GID as the verbs union, e.g. for an address handle's `dgid`.
    pub fn to_raw(self) -> ibv_gid {
        ibv_gid { raw: self.0 }
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_ipv6(), f)
    }
}

impl fmt::Debug for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gid({self})")
    }
}

impl From<[u8; 16]> for Gid {
    fn from(bytes: [u8; 16]) -> Gid {
        Gid(bytes)
    }
}

impl From<Ipv6Addr> for Gid {
    fn from(addr: Ipv6Addr) -> Gid {
        Gid(addr.octets())
    }
}

impl From<Ipv4Addr> for Gid {
    /// The IPv4-mapped GID `::ffff:a.b.c.d`, as RoCE v2 uses for an IPv4 address.
    fn from(addr: Ipv4Addr) -> Gid {
        Gid(addr.to_ipv6_mapped().octets())
    }
}

impl From<Gid> for Ipv6Addr {
    fn from(gid: Gid) -> Ipv6Addr {
        gid.to_ipv6()
    }
}

impl FromStr for Gid {
    type Err = Error;

    /// Parses the IPv6 notation that `Display` prints.
    fn from_str(s: &str) -> Result<Gid> {
        s.trim()
            .parse::<Ipv6Addr>()
            .map(Gid::from)
            .map_err(|_| Error::InvalidArgument(format!("{s:?} is not a GID (IPv6 notation)")))
    }
}

/// What a GID table entry is for: InfiniBand, or which RoCE version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GidType {
    /// An InfiniBand GID (port on an InfiniBand link layer).
    Ib,
    /// RoCE v1: RDMA over raw Ethernet frames, not routable.
    RoceV1,
    /// RoCE v2: RDMA over UDP/IP (port 4791), routable; what Soft-RoCE (`rdma_rxe`) uses.
    RoceV2,
}

impl fmt::Display for GidType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GidType::Ib => "IB",
            GidType::RoceV1 => "RoCE v1",
            GidType::RoceV2 => "RoCE v2",
        })
    }
}

/// One used entry of a port's GID table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GidEntry {
    /// Index in the port's GID table (`sgid_index` when addressing with it).
    pub index: u32,
    /// The GID itself.
    pub gid: Gid,
    /// InfiniBand, RoCE v1 or RoCE v2.
    pub kind: GidType,
    /// The network device the GID belongs to (RoCE), e.g. `eth0`; `None` for InfiniBand
    /// or when the kernel does not say.
    pub netdev: Option<String>,
}

impl fmt::Display for GidEntry {
    /// `GID 1: RoCE v2 ::ffff:169.254.77.1 (169.254.77.1) on dummy0`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GID {}: {} {}", self.index, self.kind, self.gid)?;
        if let Some(v4) = self.gid.to_ipv4() {
            write!(f, " ({v4})")?;
        }
        if let Some(netdev) = &self.netdev {
            write!(f, " on {netdev}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Ports and devices
// ---------------------------------------------------------------------------------------

/// The logical state of a port. Only an [`Active`](PortState::Active) port carries traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortState {
    /// The link is down (cable, peer, or the netdev under a RoCE device is down).
    Down,
    /// Link up, waiting for the subnet manager (InfiniBand).
    Init,
    /// Configured by the subnet manager, not yet active.
    Armed,
    /// Ready for traffic.
    Active,
    /// Active, but deferring (rare).
    ActiveDefer,
    /// A value this version does not know (`IBV_PORT_NOP` is 0).
    Other(u32),
}

impl PortState {
    pub(crate) fn from_raw(state: u32) -> PortState {
        use rdma_sys::ibv_port_state::*;
        match state {
            IBV_PORT_DOWN => PortState::Down,
            IBV_PORT_INIT => PortState::Init,
            IBV_PORT_ARMED => PortState::Armed,
            IBV_PORT_ACTIVE => PortState::Active,
            IBV_PORT_ACTIVE_DEFER => PortState::ActiveDefer,
            other => PortState::Other(other),
        }
    }
}

impl fmt::Display for PortState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortState::Down => f.write_str("DOWN"),
            PortState::Init => f.write_str("INIT"),
            PortState::Armed => f.write_str("ARMED"),
            PortState::Active => f.write_str("ACTIVE"),
            PortState::ActiveDefer => f.write_str("ACTIVE_DEFER"),
            PortState::Other(n) => write!(f, "state {n}"),
        }
    }
}

/// The link layer of a port: InfiniBand, or Ethernet (RoCE, including Soft-RoCE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkLayer {
    /// InfiniBand (also what "unspecified" means, as in `ibv_devinfo`).
    InfiniBand,
    /// Ethernet: RoCE; addressing goes through GIDs, LIDs are 0.
    Ethernet,
    /// A value this version does not know.
    Other(u8),
}

impl LinkLayer {
    fn from_raw(link_layer: u8) -> LinkLayer {
        match link_layer {
            IBV_LINK_LAYER_UNSPECIFIED | IBV_LINK_LAYER_INFINIBAND => LinkLayer::InfiniBand,
            IBV_LINK_LAYER_ETHERNET => LinkLayer::Ethernet,
            other => LinkLayer::Other(other),
        }
    }
}

impl fmt::Display for LinkLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkLayer::InfiniBand => f.write_str("InfiniBand"),
            LinkLayer::Ethernet => f.write_str("Ethernet"),
            LinkLayer::Other(n) => write!(f, "link layer {n}"),
        }
    }
}

/// One port of a device (ports are numbered from 1).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PortInfo {
    /// Port number, from 1.
    pub number: u8,
    /// Logical state; only [`PortState::Active`] ports carry traffic.
    pub state: PortState,
    /// InfiniBand or Ethernet (RoCE).
    pub link_layer: LinkLayer,
    /// The path MTU in use, in bytes (256, 512, 1024, 2048 or 4096; 0 if unknown).
    pub active_mtu: u32,
    /// The largest MTU the port supports, in bytes.
    pub max_mtu: u32,
    /// Link speed in Gb/s: lanes (`active_width`) times the per-lane rate (`active_speed`);
    /// 0.0 if the port reports values this version does not know.
    pub speed_gbps: f64,
    /// Local identifier (InfiniBand); 0 on RoCE.
    pub lid: u16,
    /// Number of entries of the GID table, used or not.
    pub gid_table_len: u32,
    /// The used (non-zero) GID table entries, by index.
    pub gids: Vec<GidEntry>,
}

impl PortInfo {
    /// True when the port is [`PortState::Active`].
    pub fn is_active(&self) -> bool {
        self.state == PortState::Active
    }

    /// The GID table entry at `index`, if it is used.
    pub fn gid(&self, index: u32) -> Option<&GidEntry> {
        self.gids.iter().find(|entry| entry.index == index)
    }

    /// The GID anyrdma picks on this port when none is asked for: on InfiniBand index 0;
    /// on RoCE the RoCE v2 GID holding an IPv4 address, else any RoCE v2 GID, else the
    /// first used entry.
    pub fn preferred_gid(&self) -> Option<&GidEntry> {
        if self.link_layer == LinkLayer::InfiniBand {
            return self.gid(0).or_else(|| self.gids.first());
        }
        let v2 = |e: &&GidEntry| e.kind == GidType::RoceV2;
        self.gids
            .iter()
            .filter(v2)
            .find(|e| e.gid.to_ipv4().is_some())
            .or_else(|| self.gids.iter().find(v2))
            .or_else(|| self.gids.first())
    }
}

impl fmt::Display for PortInfo {
    /// The port line followed by one indented line per GID.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "port {}: {}, {}, MTU {} (max {}), {} Gb/s",
            self.number,
            self.state,
            self.link_layer,
            self.active_mtu,
            self.max_mtu,
            self.speed_gbps
        )?;
        if self.link_layer == LinkLayer::InfiniBand {
            write!(f, ", LID {}", self.lid)?;
        }
        if self.gids.is_empty() {
            write!(f, "\n    (no GIDs)")?;
        }
        for gid in &self.gids {
            write!(f, "\n    {gid}")?;
        }
        Ok(())
    }
}

/// An RDMA device (an HCA, a RoCE NIC, or a Soft-RoCE `rxe` device) and its ports.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DeviceInfo {
    /// The device name, e.g. `mlx5_0` or `rxe0` (what `ANYRDMA_DEVICE` names).
    pub name: String,
    /// Node GUID in host order; [`DeviceInfo::node_guid_string`] formats it like
    /// `ibv_devinfo` does.
    pub node_guid: u64,
    /// Firmware version string (`0.0.0` for Soft-RoCE).
    pub fw_ver: String,
    /// IEEE OUI of the vendor (`0xffffff` for Soft-RoCE).
    pub vendor_id: u32,
    /// Vendor's part number.
    pub vendor_part_id: u32,
    /// Hardware revision.
    pub hw_ver: u32,
    /// Maximum number of queue pairs.
    pub max_qp: u32,
    /// Maximum outstanding work requests per queue (send or receive queue depth).
    pub max_qp_wr: u32,
    /// Maximum scatter/gather entries per work request.
    pub max_sge: u32,
    /// Maximum number of completion queues.
    pub max_cq: u32,
    /// Maximum entries of one completion queue.
    pub max_cqe: u32,
    /// Maximum number of memory regions.
    pub max_mr: u32,
    /// Largest memory region, in bytes.
    pub max_mr_size: u64,
    /// Maximum outstanding RDMA reads and atomics a queue pair can be the target of.
    pub max_qp_rd_atom: u32,
    /// Whether the device supports atomic operations (compare-and-swap, fetch-and-add).
    pub atomics: bool,
    /// The ports, in order (port 1 first).
    pub ports: Vec<PortInfo>,
}

impl DeviceInfo {
    /// The node GUID as `ibv_devinfo` prints it: `xxxx:xxxx:xxxx:xxxx`.
    pub fn node_guid_string(&self) -> String {
        format_guid(self.node_guid)
    }

    /// Port `number` (from 1), if the device has it.
    pub fn port(&self, number: u8) -> Option<&PortInfo> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// The ports that are [`PortState::Active`].
    pub fn active_ports(&self) -> impl Iterator<Item = &PortInfo> {
        self.ports.iter().filter(|p| p.is_active())
    }
}

impl fmt::Display for DeviceInfo {
    /// A multi-line listing: the device, its limits, then each port and its GIDs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: node GUID {}, vendor {:#x} part {}, firmware {}",
            self.name,
            self.node_guid_string(),
            self.vendor_id,
            self.vendor_part_id,
            self.fw_ver
        )?;
        writeln!(
            f,
            "  QPs: {} of up to {} WRs and {} SGEs, {} RDMA reads/atomics in flight; atomics: {}",
            self.max_qp,
            self.max_qp_wr,
            self.max_sge,
            self.max_qp_rd_atom,
            if self.atomics { "yes" } else { "no" }
        )?;
        write!(
            f,
            "  CQs: {} of up to {} CQEs; MRs: {} of {}",
            self.max_cq,
            self.max_cqe,
            self.max_mr,
            format_bytes(self.max_mr_size)
        )?;
        for port in &self.ports {
            write!(f, "\n  {port}")?;
        }
        Ok(())
    }
}

/// `xxxx:xxxx:xxxx:xxxx`, as `ibv_devinfo` prints GUIDs.
fn format_guid(guid: u64) -> String {
    format!(
        "{:04x}:{:04x}:{:04x}:{:04x}",
        (guid >> 48) & 0xffff,
        (guid >> 32) & 0xffff,
        (guid >> 16) & 0xffff,
        guid & 0xffff
    )
}

/// A byte count in the largest binary unit that divides it ("any size" for `u64::MAX`).
fn format_bytes(bytes: u64) -> String {
    if bytes == u64::MAX {
        return "any size".to_owned();
    }
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024 && value % 1024 == 0 && unit + 1 < UNITS.len() {
        value /= 1024;
        unit += 1;
    }
    format!("{value} {}", UNITS[unit])
}

/// Bytes of an `enum ibv_mtu` value (1 = 256 ... 5 = 4096); 0 if unknown.
pub(crate) fn mtu_bytes(mtu: u32) -> u32 {
    match mtu {
        1..=5 => 128 << mtu,
        _ => 0,
    }
}

/// Link speed in Gb/s from `ibv_port_attr::active_width` (lane-count bit mask) and
/// `active_speed` (per-lane rate code), with the rates `ibv_devinfo` prints; 0.0 if either
/// is unknown.
fn link_speed_gbps(active_width: u8, active_speed: u8) -> f64 {
    let lanes = match active_width {
        1 => 1.0,
        2 => 4.0,
        4 => 8.0,
        8 => 12.0,
        16 => 2.0,
        _ => return 0.0,
    };
    let lane_rate = match active_speed {
        1 => 2.5,     // SDR
        2 => 5.0,     // DDR
        4 => 10.0,    // QDR
        8 => 10.0,    // FDR10
        16 => 14.0,   // FDR
        32 => 25.0,   // EDR
        64 => 50.0,   // HDR
        128 => 100.0, // NDR
        _ => return 0.0,
    };
    lanes * lane_rate
}

// ---------------------------------------------------------------------------------------
// Discovery through libibverbs
// ---------------------------------------------------------------------------------------

/// The list from `ibv_get_device_list`, freed on drop.
struct DeviceList {
    list: *mut *mut ibv_device,
    len: usize,
}

impl DeviceList {
    fn get() -> Result<DeviceList> {
        let mut len: c_int = 0;
        // SAFETY: `len` is a valid place for the count; the returned array is owned by the
        // `DeviceList` and freed exactly once in its `Drop`.
        let list = unsafe { rdma_sys::ibv_get_device_list(&mut len) };
        if list.is_null() {
            let err = io::Error::last_os_error();
            // ENOSYS: the kernel has no RDMA stack (no /sys/class/infiniband_verbs), which
            // simply means there are no devices.
            if err.raw_os_error() == Some(libc::ENOSYS) {
                return Ok(DeviceList { list, len: 0 });
            }
            return Err(Error::verbs("ibv_get_device_list", err));
        }
        Ok(DeviceList {
            list,
            len: usize::try_from(len).unwrap_or(0),
        })
    }

    fn as_slice(&self) -> &[*mut ibv_device] {
        if self.list.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: `ibv_get_device_list` returned an array of `len` valid device pointers
        // (plus a NULL terminator) that stays alive until `ibv_free_device_list` in `Drop`,
        // which cannot run while this borrow of `self` lives.
        unsafe { std::slice::from_raw_parts(self.list, self.len) }
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        if !self.list.is_null() {
            // SAFETY: `list` came from `ibv_get_device_list` and is freed only here, once.
            unsafe { rdma_sys::ibv_free_device_list(self.list) };
        }
    }
}

/// A device context from `ibv_open_device`, closed on drop. Discovery opens one per device
/// for a moment; [`crate::Context`] keeps one for as long as its objects live.
pub(crate) struct DeviceHandle(NonNull<ibv_context>);

// SAFETY: libibverbs contexts are thread-safe; the pointer is only used through verbs calls
// and stays valid until the handle is dropped.
unsafe impl Send for DeviceHandle {}
// SAFETY: as above.
unsafe impl Sync for DeviceHandle {}

impl DeviceHandle {
    /// Opens the device called `name`.
    ///
    /// # Errors
    /// [`Error::NoDevice`] naming it when there is no such device.
    pub(crate) fn open_by_name(name: &str) -> Result<DeviceHandle> {
        let list = DeviceList::get()?;
        let mut available = Vec::new();
        for &device in list.as_slice() {
            // SAFETY: `device` is an entry of `list`, alive until the end of this function;
            // its name is a NUL-terminated string it owns.
            let device_name = unsafe { CStr::from_ptr(rdma_sys::ibv_get_device_name(device)) };
            if device_name.to_bytes() == name.as_bytes() {
                // SAFETY: as above; an opened context stays valid after the list is freed.
                return unsafe { DeviceHandle::open(device) };
            }
            available.push(device_name.to_string_lossy().into_owned());
        }
        Err(Error::NoDevice {
            wanted: Some(name.to_owned()),
            available,
        })
    }

    pub(crate) fn raw(&self) -> *mut ibv_context {
        self.0.as_ptr()
    }

    /// # Safety
    /// `device` must be an entry of a live device list.
    unsafe fn open(device: *mut ibv_device) -> Result<DeviceHandle> {
        // SAFETY: the caller guarantees `device` is valid; the context is closed in `Drop`.
        let context = unsafe { rdma_sys::ibv_open_device(device) };
        NonNull::new(context)
            .map(DeviceHandle)
            .ok_or_else(|| Error::Verbs {
                call: "ibv_open_device",
                source: io::Error::last_os_error(),
                hint: Some(
                    "check that /dev/infiniband/uverbs* is readable and writable by this user",
                ),
            })
    }

    pub(crate) fn query_device(&self) -> Result<ibv_device_attr> {
        // SAFETY: `ibv_device_attr` is plain integers and byte arrays; all-zero is valid.
        let mut attr: ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open and `attr` is a valid, writable `ibv_device_attr`.
        let rc = unsafe { rdma_sys::ibv_query_device(self.0.as_ptr(), &mut attr) };
        if rc != 0 {
            return Err(rc_error("ibv_query_device", rc));
        }
        Ok(attr)
    }

    pub(crate) fn query_port(&self, port: u8) -> Result<ibv_port_attr> {
        // SAFETY: `ibv_port_attr` is plain integers; all-zero is valid.
        let mut attr: ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open and `attr` is a valid, writable `ibv_port_attr` whose
        // size `___ibv_query_port` passes to the provider.
        let rc = unsafe { rdma_sys::___ibv_query_port(self.0.as_ptr(), port, &mut attr) };
        if rc != 0 {
            return Err(rc_error("ibv_query_port", rc));
        }
        Ok(attr)
    }

    pub(crate) fn query_gid(&self, port: u8, index: u32) -> Result<Gid> {
        let index = c_int::try_from(index)
            .map_err(|_| Error::InvalidArgument(format!("GID index {index} is too large")))?;
        let mut gid = ibv_gid { raw: [0; 16] };
        // SAFETY: the context is open and `gid` is a valid, writable `ibv_gid`.
        let rc = unsafe { rdma_sys::ibv_query_gid(self.0.as_ptr(), port, index, &mut gid) };
        if rc != 0 {
            return Err(rc_error("ibv_query_gid", rc));
        }
        Ok(Gid::from_raw(&gid))
    }
}

/// The error of a verbs call that returned `rc != 0`: either the errno itself, or -1 with
/// the errno set (libibverbs versions differ).
fn rc_error(call: &'static str, rc: c_int) -> Error {
    if rc < 0 {
        Error::last_os(call)
    } else {
        Error::from_code(call, rc)
    }
}

impl Drop for DeviceHandle {
    fn drop(&mut self) {
        // SAFETY: the context came from `ibv_open_device` and is closed only here, once;
        // every object created from it holds (through crate::Context) the Arc that owns
        // this handle, so none is left.
        unsafe { rdma_sys::ibv_close_device(self.0.as_ptr()) };
    }
}

/// Lists every RDMA device with its ports and used GIDs.
///
/// No device is not an error: the list is empty (a machine without an RDMA stack gives an
/// empty list too). Each device is opened and closed again; nothing stays allocated.
///
/// # Errors
/// [`Error::Verbs`] when libibverbs fails to list, open or query a device.
///
/// # Example
/// ```no_run
/// for device in anyrdma_core::devices()? {
///     println!("{device}");
///     for port in device.active_ports() {
///         for gid in &port.gids {
///             println!("{} port {}: {gid}", device.name, port.number);
///         }
///     }
/// }
/// # Ok::<(), anyrdma_core::Error>(())
/// ```
pub fn devices() -> Result<Vec<DeviceInfo>> {
    let list = DeviceList::get()?;
    list.as_slice()
        .iter()
        .map(|&device| {
            // SAFETY: `device` is an entry of `list`, which lives until the end of this
            // function.
            unsafe { query_device(device) }
        })
        .collect()
}

/// Opens `device`, reads everything [`DeviceInfo`] holds, and closes it again.
///
/// # Safety
/// `device` must be an entry of a live device list.
unsafe fn query_device(device: *mut ibv_device) -> Result<DeviceInfo> {
    // SAFETY: `device` is valid (caller); the returned name is a NUL-terminated string
    // owned by the device, copied out before the list is freed.
    let name = unsafe { CStr::from_ptr(rdma_sys::ibv_get_device_name(device)) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: `device` is valid (caller).
    let context = unsafe { DeviceHandle::open(device) }?;
    let attr = context.query_device()?;

    let mut ports = Vec::with_capacity(usize::from(attr.phys_port_cnt));
    for number in 1..=attr.phys_port_cnt {
        ports.push(query_port(&context, &name, number)?);
    }

    let count = |n: c_int| u32::try_from(n).unwrap_or(0);
    Ok(DeviceInfo {
        node_guid: u64::from_be(attr.node_guid),
        fw_ver: c_chars_to_string(&attr.fw_ver),
        vendor_id: attr.vendor_id,
        vendor_part_id: attr.vendor_part_id,
        hw_ver: attr.hw_ver,
        max_qp: count(attr.max_qp),
        max_qp_wr: count(attr.max_qp_wr),
        max_sge: count(attr.max_sge),
        max_cq: count(attr.max_cq),
        max_cqe: count(attr.max_cqe),
        max_mr: count(attr.max_mr),
        max_mr_size: attr.max_mr_size,
        max_qp_rd_atom: count(attr.max_qp_rd_atom),
        atomics: attr.atomic_cap != rdma_sys::ibv_atomic_cap::IBV_ATOMIC_NONE,
        ports,
        name,
    })
}

/// A NUL-terminated (or full) fixed-size C string field as a `String`.
fn c_chars_to_string(chars: &[std::os::raw::c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn query_port(context: &DeviceHandle, device: &str, number: u8) -> Result<PortInfo> {
    let attr = context.query_port(number)?;
    let link_layer = LinkLayer::from_raw(attr.link_layer);
    let gid_table_len = u32::try_from(attr.gid_tbl_len).unwrap_or(0);
    let mut gids = Vec::new();
    for index in 0..gid_table_len {
        let gid = context.query_gid(number, index)?;
        if gid.is_zero() {
            continue;
        }
        let (kind, netdev) = gid_attrs(
            Path::new(SYSFS_INFINIBAND),
            device,
            number,
            index,
            link_layer,
        );
        gids.push(GidEntry {
            index,
            gid,
            kind,
            netdev,
        });
    }
    Ok(PortInfo {
        number,
        state: PortState::from_raw(attr.state),
        link_layer,
        active_mtu: mtu_bytes(attr.active_mtu),
        max_mtu: mtu_bytes(attr.max_mtu),
        speed_gbps: link_speed_gbps(attr.active_width, attr.active_speed),
        lid: attr.lid,
        gid_table_len,
        gids,
    })
}

/// GID type and network device of one GID table entry, from
/// `<root>/<device>/ports/<port>/gid_attrs/{types,ndevs}/<index>`. Missing or unreadable
/// files are not errors: the type falls back to IB on an InfiniBand link layer and to
/// RoCE v1 otherwise, the netdev to `None`.
fn gid_attrs(
    root: &Path,
    device: &str,
    port: u8,
    index: u32,
    link_layer: LinkLayer,
) -> (GidType, Option<String>) {
    let dir = root
        .join(device)
        .join("ports")
        .join(port.to_string())
        .join("gid_attrs");
    let read = |what: &str| {
        std::fs::read_to_string(dir.join(what).join(index.to_string()))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let kind = if link_layer == LinkLayer::InfiniBand {
        GidType::Ib
    } else {
        match read("types").as_deref() {
            Some(t) if t.eq_ignore_ascii_case("RoCE v2") => GidType::RoceV2,
            _ => GidType::RoceV1,
        }
    };
    (kind, read("ndevs"))
}

// ---------------------------------------------------------------------------------------
// Choosing a port
// ---------------------------------------------------------------------------------------

/// A device choice as `ANYRDMA_DEVICE` spells it: `name`, `name:port` or
/// `name:port:gid_index`. Parse one with [`str::parse`] or [`DeviceSpec::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Device name, e.g. `rxe0`.
    pub name: String,
    /// Port number (from 1); `None` means the first active port.
    pub port: Option<u8>,
    /// GID index; `None` means the preferred GID (see [`PortInfo::preferred_gid`]).
    pub gid_index: Option<u32>,
}

impl DeviceSpec {
    /// Parses `name`, `name:port` or `name:port:gid_index` (surrounding blanks ignored).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty name, a port that is not 1-255, a GID index
    /// that is not a number, or more than three fields.
    pub fn parse(spec: &str) -> Result<DeviceSpec> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "device selection {spec:?}: {why}; expected `name`, `name:port` or \
                 `name:port:gid_index`, e.g. `rxe0:1:1`"
            ))
        };
        let mut fields = spec.trim().split(':').map(str::trim);
        let name = fields.next().unwrap_or_default();
        if name.is_empty() {
            return Err(bad("the device name is empty"));
        }
        let port = fields
            .next()
            .map(|p| {
                p.parse::<u8>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| bad("the port must be 1-255"))
            })
            .transpose()?;
        let gid_index = fields
            .next()
            .map(|g| {
                g.parse::<u32>()
                    .map_err(|_| bad("the GID index must be a number"))
            })
            .transpose()?;
        if fields.next().is_some() {
            return Err(bad("too many fields"));
        }
        Ok(DeviceSpec {
            name: name.to_owned(),
            port,
            gid_index,
        })
    }
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<DeviceSpec> {
        DeviceSpec::parse(s)
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
            if let Some(gid_index) = self.gid_index {
                write!(f, ":{gid_index}")?;
            }
        }
        Ok(())
    }
}

/// The device, port and GID an endpoint uses: what [`default_port()`] picks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSelection {
    /// Device name, e.g. `rxe0`.
    pub device: String,
    /// Port number, from 1.
    pub port: u8,
    /// GID table index (the `sgid_index` of address handles and RoCE connections).
    pub gid_index: u32,
    /// The GID at that index.
    pub gid: Gid,
    /// Type of that GID.
    pub gid_type: GidType,
    /// The port's active MTU in bytes (use it as the path MTU).
    pub mtu: u32,
    /// InfiniBand or Ethernet (RoCE).
    pub link_layer: LinkLayer,
    /// The port's LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
}

impl PortSelection {
    /// The default choice restricted to device `name`: its first active port and that
    /// port's preferred GID (see [`PortInfo::preferred_gid`]).
    ///
    /// # Errors
    /// [`Error::NoDevice`] naming `name` when there is no such device,
    /// [`Error::InvalidArgument`] when it has no active port with a GID, [`Error::Verbs`]
    /// when discovery fails.
    pub fn for_device(name: &str) -> Result<PortSelection> {
        PortSelection::for_spec(&DeviceSpec {
            name: name.to_owned(),
            port: None,
            gid_index: None,
        })
    }

    /// Port `port` of device `name`, with that port's preferred GID: the port the
    /// connection manager routed to.
    pub(crate) fn for_port(name: &str, port: u8) -> Result<PortSelection> {
        PortSelection::for_spec(&DeviceSpec {
            name: name.to_owned(),
            port: Some(port),
            gid_index: None,
        })
    }

    /// The choice a [`DeviceSpec`] describes (as from `ANYRDMA_DEVICE`): a given port must
    /// be active and a given GID index must be a used entry.
    ///
    /// # Errors
    /// As [`PortSelection::for_device`], and [`Error::InvalidArgument`] for a port or GID
    /// index the device does not have.
    pub fn for_spec(spec: &DeviceSpec) -> Result<PortSelection> {
        select(&devices()?, Some(spec))
    }
}

impl fmt::Display for PortSelection {
    /// `rxe0 port 1, GID index 1 (RoCE v2, 169.254.77.1), MTU 1024`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} port {}, GID index {} ({}, ",
            self.device, self.port, self.gid_index, self.gid_type
        )?;
        match self.gid.to_ipv4() {
            Some(v4) => write!(f, "{v4}")?,
            None => write!(f, "{}", self.gid)?,
        }
        write!(f, "), MTU {}", self.mtu)?;
        if self.link_layer == LinkLayer::InfiniBand {
            write!(f, ", LID {}", self.lid)?;
        }
        Ok(())
    }
}

/// The device, port and GID anyrdma uses when the application names none.
///
/// With `ANYRDMA_DEVICE` set (`name`, `name:port` or `name:port:gid_index`) that choice;
/// otherwise the first device with an active port. On the chosen port the GID is, for RoCE,
/// the RoCE v2 GID holding an IPv4 address, else any RoCE v2 GID, else any; for
/// InfiniBand index 0.
///
/// # Errors
/// [`Error::NoDevice`] when there is no device; [`Error::BadDeviceEnv`] when
/// `ANYRDMA_DEVICE` is malformed or names a device, port or GID the machine lacks;
/// [`Error::InvalidArgument`] when no port is active; [`Error::Verbs`] when discovery fails.
pub fn default_port() -> Result<PortSelection> {
    select_default(std::env::var(DEVICE_ENV), &devices()?)
}

/// The pure part of [`default_port()`]: picks from a device list as the variable's value
/// `var` asks.
fn select_default(
    var: std::result::Result<String, std::env::VarError>,
    devices: &[DeviceInfo],
) -> Result<PortSelection> {
    let bad = |value: String, problem: String| Error::BadDeviceEnv {
        value,
        problem,
        available: devices.iter().map(|d| d.name.clone()).collect(),
    };
    let value = match var {
        Ok(value) if !value.trim().is_empty() => value,
        Ok(_) | Err(std::env::VarError::NotPresent) => return select(devices, None),
        Err(std::env::VarError::NotUnicode(value)) => {
            return Err(bad(
                value.to_string_lossy().into_owned(),
                "it is not UTF-8".into(),
            ))
        }
    };
    DeviceSpec::parse(&value)
        .and_then(|spec| select(devices, Some(&spec)))
        .map_err(|err| match err {
            Error::InvalidArgument(problem) => bad(value.clone(), problem),
            Error::NoDevice {
                wanted: Some(name), ..
            } => bad(value.clone(), format!("there is no device named {name:?}")),
            other => other,
        })
}

/// The pure part of [`default_port()`] and [`PortSelection::for_spec`]: picks from a
/// device list.
fn select(devices: &[DeviceInfo], spec: Option<&DeviceSpec>) -> Result<PortSelection> {
    let Some(spec) = spec else {
        if devices.is_empty() {
            return Err(Error::NoDevice {
                wanted: None,
                available: Vec::new(),
            });
        }
        return devices
            .iter()
            .flat_map(|d| d.active_ports().map(move |p| (d, p)))
            .find_map(|(d, p)| p.preferred_gid().map(|g| selection(d, p, g)))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "no RDMA port is ACTIVE with a GID ({}); check the links with `ibv_devinfo`",
                    port_summary(devices)
                ))
            });
    };

    let device = devices
        .iter()
        .find(|d| d.name == spec.name)
        .ok_or_else(|| Error::NoDevice {
            wanted: Some(spec.name.clone()),
            available: devices.iter().map(|d| d.name.clone()).collect(),
        })?;
    let port = match spec.port {
        Some(number) => {
            let port = device.port(number).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{spec}: device {} has no port {number} (it has {})",
                    device.name,
                    device.ports.len()
                ))
            })?;
            if !port.is_active() {
                return Err(Error::InvalidArgument(format!(
                    "{spec}: port {number} of {} is {}, not ACTIVE",
                    device.name, port.state
                )));
            }
            port
        }
        None => device.active_ports().find(|p| !p.gids.is_empty()).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{spec}: device {} has no ACTIVE port with a GID ({}); check it with `ibv_devinfo -d {}`",
                device.name,
                port_summary(std::slice::from_ref(device)),
                device.name
            ))
        })?,
    };
    let gid = match spec.gid_index {
        Some(index) => port.gid(index).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{spec}: GID index {index} of {} port {} is unused (used: {:?})",
                device.name,
                port.number,
                port.gids.iter().map(|g| g.index).collect::<Vec<_>>()
            ))
        })?,
        None => port.preferred_gid().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{spec}: {} port {} has no GID",
                device.name, port.number
            ))
        })?,
    };
    Ok(selection(device, port, gid))
}

fn selection(device: &DeviceInfo, port: &PortInfo, gid: &GidEntry) -> PortSelection {
    PortSelection {
        device: device.name.clone(),
        port: port.number,
        gid_index: gid.index,
        gid: gid.gid,
        gid_type: gid.kind,
        mtu: port.active_mtu,
        link_layer: port.link_layer,
        lid: port.lid,
    }
}

/// `rxe0 port 1 DOWN, mlx5_0 port 1 INIT` for error messages.
fn port_summary(devices: &[DeviceInfo]) -> String {
    let parts: Vec<String> = devices
        .iter()
        .flat_map(|d| {
            d.ports
                .iter()
                .map(move |p| format!("{} port {} {}", d.name, p.number, p.state))
        })
        .collect();
    if parts.is_empty() {
        "no ports".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;

    use super::*;

    fn gid(s: &str) -> Gid {
        s.parse().unwrap()
    }

    fn entry(index: u32, addr: &str, kind: GidType) -> GidEntry {
        GidEntry {
            index,
            gid: gid(addr),
            kind,
            netdev: Some("eth0".into()),
        }
    }

    fn port(number: u8, state: PortState, link_layer: LinkLayer, gids: Vec<GidEntry>) -> PortInfo {
        PortInfo {
            number,
            state,
            link_layer,
            active_mtu: 1024,
            max_mtu: 4096,
            speed_gbps: 2.5,
            lid: if link_layer == LinkLayer::InfiniBand {
                7
            } else {
                0
            },
            gid_table_len: 16,
            gids,
        }
    }

    fn device(name: &str, ports: Vec<PortInfo>) -> DeviceInfo {
        DeviceInfo {
            name: name.into(),
            node_guid: 0x80fe_acff_fe53_a0c6,
            fw_ver: "0.0.0".into(),
            vendor_id: 0xffffff,
            vendor_part_id: 0,
            hw_ver: 0,
            max_qp: 1,
            max_qp_wr: 1,
            max_sge: 1,
            max_cq: 1,
            max_cqe: 1,
            max_mr: 1,
            max_mr_size: u64::MAX,
            max_qp_rd_atom: 1,
            atomics: true,
            ports,
        }
    }

    fn roce_gids() -> Vec<GidEntry> {
        vec![
            entry(0, "fe80::80fe:acff:fe53:a0c6", GidType::RoceV1),
            entry(1, "fe80::80fe:acff:fe53:a0c6", GidType::RoceV2),
            entry(2, "::ffff:10.0.0.1", GidType::RoceV1),
            entry(3, "::ffff:10.0.0.1", GidType::RoceV2),
        ]
    }

    #[test]
    fn gid_display_and_ipv4() {
        let mapped = Gid::from(Ipv4Addr::new(169, 254, 77, 1));
        assert_eq!(mapped.to_string(), "::ffff:169.254.77.1");
        assert_eq!(mapped.to_ipv4(), Some(Ipv4Addr::new(169, 254, 77, 1)));
        assert_eq!(gid("::ffff:169.254.77.1"), mapped);

        let link_local = gid("fe80::80fe:acff:fe53:a0c6");
        assert_eq!(link_local.to_string(), "fe80::80fe:acff:fe53:a0c6");
        assert_eq!(link_local.to_ipv4(), None);
        assert_eq!(gid("::1").to_ipv4(), None);
        assert_eq!(format!("{link_local:?}"), "Gid(fe80::80fe:acff:fe53:a0c6)");

        assert!(Gid::default().is_zero());
        assert!(!mapped.is_zero());
        assert!("not a gid".parse::<Gid>().is_err());

        let raw = mapped.to_raw();
        assert_eq!(Gid::from_raw(&raw), mapped);
    }

    #[test]
    fn speed_and_mtu() {
        assert_eq!(link_speed_gbps(1, 1), 2.5); // 1x SDR (Soft-RoCE)
        assert_eq!(link_speed_gbps(2, 4), 40.0); // 4x QDR
        assert_eq!(link_speed_gbps(2, 16), 56.0); // 4x FDR
        assert_eq!(link_speed_gbps(2, 32), 100.0); // 4x EDR
        assert_eq!(link_speed_gbps(2, 64), 200.0); // 4x HDR
        assert_eq!(link_speed_gbps(16, 128), 200.0); // 2x NDR
        assert_eq!(link_speed_gbps(8, 2), 60.0); // 12x DDR
        assert_eq!(link_speed_gbps(3, 1), 0.0);
        assert_eq!(link_speed_gbps(1, 0), 0.0);

        assert_eq!([1, 2, 3, 4, 5].map(mtu_bytes), [256, 512, 1024, 2048, 4096]);
        assert_eq!(mtu_bytes(0), 0);
        assert_eq!(mtu_bytes(6), 0);
    }

    #[test]
    fn guid_and_bytes_format() {
        assert_eq!(format_guid(0x80fe_acff_fe53_a0c6), "80fe:acff:fe53:a0c6");
        assert_eq!(format_guid(0x0200_00ff_fe00_0000), "0200:00ff:fe00:0000");
        assert_eq!(format_bytes(u64::MAX), "any size");
        assert_eq!(format_bytes(1 << 30), "1 GiB");
        assert_eq!(format_bytes(1000), "1000 B");
    }

    #[test]
    fn raw_enums() {
        assert_eq!(PortState::from_raw(4), PortState::Active);
        assert_eq!(PortState::from_raw(1), PortState::Down);
        assert_eq!(PortState::from_raw(0), PortState::Other(0));
        assert_eq!(LinkLayer::from_raw(0), LinkLayer::InfiniBand);
        assert_eq!(LinkLayer::from_raw(2), LinkLayer::Ethernet);
        assert_eq!(LinkLayer::from_raw(9), LinkLayer::Other(9));
    }

    #[test]
    fn spec_parsing() {
        let spec = |name: &str, port, gid_index| DeviceSpec {
            name: name.into(),
            port,
            gid_index,
        };
        assert_eq!(
            DeviceSpec::parse("rxe_lo").unwrap(),
            spec("rxe_lo", None, None)
        );
        assert_eq!(
            DeviceSpec::parse(" mlx5_0:2 ").unwrap(),
            spec("mlx5_0", Some(2), None)
        );
        assert_eq!(
            "rxe0:1:3".parse::<DeviceSpec>().unwrap(),
            spec("rxe0", Some(1), Some(3))
        );
        assert_eq!(
            DeviceSpec::parse("rxe0:1:3").unwrap().to_string(),
            "rxe0:1:3"
        );
        for bad in [
            "",
            ":1",
            "rxe0:0",
            "rxe0:256",
            "rxe0:x",
            "rxe0:1:-1",
            "rxe0:1:1:1",
            "rxe0:",
        ] {
            assert!(
                matches!(DeviceSpec::parse(bad), Err(Error::InvalidArgument(_))),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn preferred_gid_order() {
        let p = port(1, PortState::Active, LinkLayer::Ethernet, roce_gids());
        assert_eq!(p.preferred_gid().unwrap().index, 3);

        let no_v4: Vec<_> = roce_gids()
            .into_iter()
            .filter(|g| g.gid.to_ipv4().is_none())
            .collect();
        let p = port(1, PortState::Active, LinkLayer::Ethernet, no_v4);
        assert_eq!(p.preferred_gid().unwrap().index, 1);

        let v1_only: Vec<_> = roce_gids()
            .into_iter()
            .filter(|g| g.kind == GidType::RoceV1)
            .collect();
        let p = port(1, PortState::Active, LinkLayer::Ethernet, v1_only);
        assert_eq!(p.preferred_gid().unwrap().index, 0);

        let ib = vec![
            entry(0, "fe80::2", GidType::Ib),
            entry(1, "fe80::3", GidType::Ib),
        ];
        let p = port(1, PortState::Active, LinkLayer::InfiniBand, ib);
        assert_eq!(p.preferred_gid().unwrap().index, 0);

        assert!(port(1, PortState::Active, LinkLayer::Ethernet, vec![])
            .preferred_gid()
            .is_none());
    }

    #[test]
    fn selection_rules() {
        let list = vec![
            device(
                "down0",
                vec![port(1, PortState::Down, LinkLayer::Ethernet, roce_gids())],
            ),
            device(
                "roce0",
                vec![
                    port(1, PortState::Init, LinkLayer::Ethernet, roce_gids()),
                    port(2, PortState::Active, LinkLayer::Ethernet, roce_gids()),
                ],
            ),
            device(
                "ib0",
                vec![port(
                    1,
                    PortState::Active,
                    LinkLayer::InfiniBand,
                    vec![entry(0, "fe80::1", GidType::Ib)],
                )],
            ),
        ];

        let chosen = select(&list, None).unwrap();
        assert_eq!(
            (chosen.device.as_str(), chosen.port, chosen.gid_index),
            ("roce0", 2, 3)
        );
        assert_eq!(chosen.gid_type, GidType::RoceV2);
        assert_eq!(
            chosen.to_string(),
            "roce0 port 2, GID index 3 (RoCE v2, 10.0.0.1), MTU 1024"
        );

        let by = |s: &str| select(&list, Some(&DeviceSpec::parse(s).unwrap()));
        let ib = by("ib0").unwrap();
        assert_eq!(
            (ib.gid_index, ib.lid, ib.link_layer),
            (0, 7, LinkLayer::InfiniBand)
        );
        assert_eq!(
            ib.to_string(),
            "ib0 port 1, GID index 0 (IB, fe80::1), MTU 1024, LID 7"
        );
        assert_eq!(by("roce0:2:1").unwrap().gid_index, 1);
        assert!(
            matches!(by("nope"), Err(Error::NoDevice { wanted: Some(n), available })
                if n == "nope" && available == ["down0", "roce0", "ib0"])
        );
        assert!(matches!(by("roce0:1"), Err(Error::InvalidArgument(_)))); // not active
        assert!(matches!(by("roce0:3"), Err(Error::InvalidArgument(_)))); // no such port
        assert!(matches!(by("roce0:2:9"), Err(Error::InvalidArgument(_)))); // unused GID
        assert!(matches!(by("down0"), Err(Error::InvalidArgument(_))));

        assert!(matches!(
            select(&[], None),
            Err(Error::NoDevice { wanted: None, available }) if available.is_empty()
        ));
        assert!(matches!(
            select(&list[..1], None),
            Err(Error::InvalidArgument(_))
        ));
    }

    fn two_devices() -> Vec<DeviceInfo> {
        vec![
            device(
                "rxe0",
                vec![port(1, PortState::Active, LinkLayer::Ethernet, roce_gids())],
            ),
            device(
                "rxe_lo",
                vec![port(1, PortState::Active, LinkLayer::Ethernet, roce_gids())],
            ),
        ]
    }

    #[test]
    fn a_missing_device_lists_the_present_ones() {
        let err = select(&two_devices(), Some(&DeviceSpec::parse("nope").unwrap())).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("\"nope\"") && text.contains("rxe0, rxe_lo") && text.contains(DEVICE_ENV),
            "{text}"
        );
        let none = select(&[], Some(&DeviceSpec::parse("nope").unwrap()))
            .unwrap_err()
            .to_string();
        assert!(none.contains("no RDMA device is present"), "{none}");
        let none = select(&[], None).unwrap_err().to_string();
        assert!(
            none.contains("no RDMA device found") && none.contains(DEVICE_ENV),
            "{none}"
        );
    }

    #[test]
    fn a_bad_device_variable_is_named_with_the_devices_present() {
        let list = two_devices();
        for (value, problem) in [
            ("nope", "no device named \"nope\""),
            ("rxe0:9", "has no port 9"),
            ("rxe0:1:77", "GID index 77"),
            ("rxe0:0", "the port must be 1-255"),
            ("rxe0:1:1:1", "too many fields"),
            (":1", "the device name is empty"),
        ] {
            let err = select_default(Ok(value.into()), &list).unwrap_err();
            match &err {
                Error::BadDeviceEnv {
                    value: v,
                    problem: p,
                    available,
                } => {
                    assert_eq!(v, value);
                    assert!(p.contains(problem), "{value}: {p}");
                    assert_eq!(available, &["rxe0", "rxe_lo"]);
                }
                other => panic!("{value}: {other:?}"),
            }
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("{DEVICE_ENV}={value:?} cannot be used"))
                    && text.contains("rxe0, rxe_lo"),
                "{text}"
            );
        }
        let not_utf8 = std::ffi::OsString::from_vec(vec![b'r', 0xff]);
        let err = select_default(Err(std::env::VarError::NotUnicode(not_utf8)), &list);
        assert!(
            matches!(&err, Err(Error::BadDeviceEnv { problem, .. }) if problem.contains("UTF-8")),
            "{err:?}"
        );
        let err = select_default(Ok("rxe0".into()), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no RDMA device is present"), "{err}");
        // Unset or blank: the first active port, as without the variable.
        for var in [Err(std::env::VarError::NotPresent), Ok(" ".into())] {
            assert_eq!(select_default(var, &list).unwrap().device, "rxe0");
        }
        assert_eq!(
            select_default(Ok("rxe_lo:1:1".into()), &list)
                .unwrap()
                .device,
            "rxe_lo"
        );
    }

    #[test]
    fn setup_errors_claim_nothing_about_posting() {
        let mut errors = vec![
            "not a gid".parse::<Gid>().unwrap_err(),
            DeviceSpec::parse("rxe0:0").unwrap_err(),
        ];
        let down = device(
            "down0",
            vec![port(1, PortState::Down, LinkLayer::Ethernet, roce_gids())],
        );
        errors.push(select(std::slice::from_ref(&down), None).unwrap_err());
        errors.push(select(&[down], Some(&"down0:1".parse().unwrap())).unwrap_err());
        for err in errors {
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
            let text = err.to_string();
            assert!(!text.contains("posted"), "{text}");
        }
    }

    #[test]
    fn display_listing() {
        let d = device(
            "rxe0",
            vec![port(1, PortState::Active, LinkLayer::Ethernet, roce_gids())],
        );
        let text = d.to_string();
        assert!(
            text.starts_with("rxe0: node GUID 80fe:acff:fe53:a0c6"),
            "{text}"
        );
        assert!(
            text.contains("port 1: ACTIVE, Ethernet, MTU 1024 (max 4096), 2.5 Gb/s"),
            "{text}"
        );
        assert!(
            text.contains("GID 3: RoCE v2 ::ffff:10.0.0.1 (10.0.0.1) on eth0"),
            "{text}"
        );
        assert!(text.contains("atomics: yes"), "{text}");
    }

    #[test]
    fn sysfs_gid_attrs() {
        let root = std::env::temp_dir().join(format!("anyrdma-sysfs-{}", std::process::id()));
        let dir = root.join("rxe0/ports/1/gid_attrs");
        std::fs::create_dir_all(dir.join("types")).unwrap();
        std::fs::create_dir_all(dir.join("ndevs")).unwrap();
        std::fs::write(dir.join("types/0"), "IB/RoCE v1\n").unwrap();
        std::fs::write(dir.join("types/1"), "RoCE v2\n").unwrap();
        std::fs::write(dir.join("ndevs/1"), "dummy0\n").unwrap();

        let eth = LinkLayer::Ethernet;
        assert_eq!(gid_attrs(&root, "rxe0", 1, 0, eth), (GidType::RoceV1, None));
        assert_eq!(
            gid_attrs(&root, "rxe0", 1, 1, eth),
            (GidType::RoceV2, Some("dummy0".into()))
        );
        assert_eq!(gid_attrs(&root, "rxe0", 1, 5, eth), (GidType::RoceV1, None)); // missing
        assert_eq!(
            gid_attrs(&root, "rxe0", 1, 1, LinkLayer::InfiniBand).0,
            GidType::Ib
        );
        assert_eq!(
            gid_attrs(&root, "nodev", 1, 0, LinkLayer::InfiniBand),
            (GidType::Ib, None)
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
