//! Multicast groups joined through the connection manager (`rdma_join_multicast`).
//!
//! [`UdQueuePair::join`] asks the connection manager to join the group at an IP address
//! (on RoCE the kernel maps it to a multicast GID and joins the IP group on the network
//! interface; on InfiniBand it joins at the subnet administrator), waits for its answer,
//! and attaches the queue pair to the group's multicast GID and LID (`ibv_attach_mcast`):
//! from then on, every datagram sent to the group is delivered to each attached queue pair
//! that has a receive posted. The [`Membership`] it returns names the group as a
//! [`UdPeer`] (its address handle, QPN `0xFFFFFF` and the group's Q_Key) to send to.
//! Dropping it detaches the queue pair and leaves the group.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rdma_sys::*;

use super::ah::AddressHandle;
use super::qp::{UdPeer, UdQueuePair};
use crate::cm::channel::EventChannel;
use crate::cm::id::CmId;
use crate::cm::sockaddr;
use crate::device::Gid;
use crate::error::{Error, Result};
use crate::runtime::{default_runtime, RuntimeHandle};
use crate::wake::lock;

/// The queue pair number that addresses a multicast group rather than one queue pair.
pub const MULTICAST_QPN: u32 = 0x00ff_ffff;

/// Options of [`UdQueuePair::join_with`].
#[derive(Debug, Clone)]
pub struct MulticastOptions {
    /// The local address to join from: an IP address of the queue pair's device, of the
    /// group's address family. `None`: the address of the queue pair's GID when it is an
    /// IPv4-mapped one (RoCE v2 over IPv4); on other ports it must be given. An IPv6
    /// link-local address cannot be bound without its interface, which `IpAddr` does not
    /// carry: join IPv6 groups from a global address.
    pub bind: Option<IpAddr>,
    /// How long the connection manager may take to answer. Default 5 s.
    pub timeout: Duration,
    /// The runtime to wait with; `None`: the queue pair's context's, else the process
    /// default.
    pub runtime: Option<RuntimeHandle>,
}

impl Default for MulticastOptions {
    fn default() -> Self {
        MulticastOptions {
            bind: None,
            timeout: Duration::from_secs(5),
            runtime: None,
        }
    }
}

/// A queue pair's membership of a multicast group: while it lives, the queue pair receives
/// the group's datagrams. Dropping it detaches the queue pair and leaves the group, without
/// waiting for the network.
///
/// Multicast datagrams are datagrams: each member gets one only if it has a receive posted
/// when it arrives (see the [module documentation](crate::ud)), and a datagram sent right
/// after a join may reach the network before the switches know of the group.
///
/// A member may receive its own sends: whether a datagram sent to a group comes back to
/// the sending queue pair when that queue pair is attached is the device's choice
/// (Soft-RoCE delivers it; ConnectX adapters do unless the queue pair was created to
/// block it). Compare
/// [`Datagram::src_qpn`](super::Datagram::src_qpn) with your own queue pair number to skip
/// them. Errors the connection manager reports after the join (a network interface going
/// away) are not watched: the group then simply stops delivering.
pub struct Membership {
    qp: UdQueuePair,
    peer: UdPeer,
    group: IpAddr,
    mgid: Gid,
    mlid: u16,
    /// The connection manager's id that holds the join; leaving is destroying it.
    id: CmId,
}

impl UdQueuePair {
    /// Joins the multicast group at `group` (an IPv4 or IPv6 multicast address) with the
    /// default options and attaches this queue pair to it.
    ///
    /// ```no_run
    /// # async fn demo(qp: anyrdma_core::ud::UdQueuePair) -> anyrdma_core::Result<()> {
    /// use anyrdma_core::Access;
    /// let group = qp.join("239.1.2.3".parse().unwrap()).await?;
    /// let inbox = qp.recv(qp.pd().alloc(qp.max_datagram(), Access::LOCAL)?);
    /// let hello = qp.pd().register(b"hello, group".to_vec(), Access::LOCAL)?;
    /// let (sent, _) = qp.send_to(hello, group.peer()).await;
    /// sent?;
    /// let (got, _buf) = inbox.await;
    /// println!("from queue pair {}", got?.src_qpn);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`join_with`](UdQueuePair::join_with).
    pub async fn join(&self, group: IpAddr) -> Result<Membership> {
        self.join_with(group, MulticastOptions::default()).await
    }

    /// Joins the multicast group at `group` with `options` and attaches this queue pair to
    /// it. The queue pair must use the group's Q_Key: groups joined through the connection
    /// manager use [`DEFAULT_QKEY`](super::DEFAULT_QKEY).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `group` is not a multicast address, when no local
    /// address is given and the queue pair's GID is not an IPv4 address, or when the local
    /// address belongs to another device or port than the queue pair's;
    /// [`Error::MulticastJoin`] when the local address cannot be bound, the connection
    /// manager refuses the join or answers with `RDMA_CM_EVENT_MULTICAST_ERROR`, the
    /// group's Q_Key is not the queue pair's, or the queue pair cannot be attached;
    /// [`Error::MulticastTimeout`] when no answer comes within
    /// [`MulticastOptions::timeout`].
    pub async fn join_with(&self, group: IpAddr, options: MulticastOptions) -> Result<Membership> {
        if !group.is_multicast() {
            return Err(Error::InvalidArgument(format!(
                "{group} is not a multicast address (IPv4 224.0.0.0/4, IPv6 ff00::/8)"
            )));
        }
        let ctx = self.pd().context();
        let runtime = match options.runtime.clone() {
            Some(runtime) => runtime,
            None => match ctx.runtime() {
                Some(runtime) => runtime.clone(),
                None => default_runtime()?,
            },
        };
        let local = match options.bind {
            Some(local) => local,
            None => match self.address().gid.to_ipv4() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "the GID of queue pair {} is not an IPv4 address: give the local \
                         address to join from (MulticastOptions::bind)",
                        self.qpn()
                    )))
                }
            },
        };
        if local.is_ipv4() != group.is_ipv4() {
            // The kernel refuses it too (on RoCE with ENOTSUPP), less legibly.
            return Err(Error::InvalidArgument(format!(
                "multicast group {group} and local address {local} are of different address \
                 families: join an IPv6 group from an IPv6 address of the device"
            )));
        }
        let failed = |stage, source| Error::MulticastJoin {
            group,
            stage,
            source,
        };
        let channel = EventChannel::new()?;
        let id = CmId::in_port_space(&channel, rdma_port_space::RDMA_PS_UDP)?;
        let mut bound = sockaddr::to_storage(SocketAddr::new(local, 0));
        // SAFETY: the id is valid; the address is read during the call.
        if unsafe { rdma_bind_addr(id.raw(), std::ptr::addr_of_mut!(bound).cast()) } != 0 {
            return Err(failed(
                "binding the local address",
                std::io::Error::last_os_error(),
            ));
        }
        let (mine, port) = (ctx.device_name(), ctx.port());
        match id.device() {
            Some((device, at)) if device == mine && at == port => {}
            found => {
                let found = match found {
                    Some((device, at)) => format!("port {at} of {device}"),
                    None => "no RDMA device".to_owned(),
                };
                return Err(Error::InvalidArgument(format!(
                    "{local} belongs to {found}, but queue pair {} is on port {port} of \
                     {mine}: join from an address of its device",
                    self.qpn()
                )));
            }
        }
        let mut joined = sockaddr::to_storage(SocketAddr::new(group, 0));
        // SAFETY: the id is bound to a device; the address is read during the call (the
        // library copies it); the context pointer is only echoed back in the event.
        let rc = unsafe {
            rdma_join_multicast(
                id.raw(),
                std::ptr::addr_of_mut!(joined).cast(),
                std::ptr::null_mut(),
            )
        };
        if rc != 0 {
            return Err(failed(
                "asking to join (rdma_join_multicast)",
                std::io::Error::last_os_error(),
            ));
        }
        // From here, an early return drops the id, and destroying it leaves the group.
        let event = id
            .next_event_within(&runtime, options.timeout, || Error::MulticastTimeout {
                group,
                after: options.timeout,
            })
            .await?;
        if event.kind != rdma_cm_event_type::RDMA_CM_EVENT_MULTICAST_JOIN {
            let source = if event.status < 0 {
                std::io::Error::from_raw_os_error(-event.status)
            } else {
                std::io::Error::other(format!("{} (status {})", event.name(), event.status))
            };
            return Err(failed("the connection manager's answer", source));
        }
        let Some(ud) = event.ud else {
            return Err(failed(
                "the connection manager's answer",
                std::io::Error::other("the join event carried no group address"),
            ));
        };
        if ud.qkey != self.qkey() {
            return Err(failed(
                "matching the group's Q_Key",
                std::io::Error::other(format!(
                    "the group's Q_Key is {:#x} but queue pair {}'s is {:#x}: create it with \
                     UdOptions::qkey = {:#x}",
                    ud.qkey,
                    self.qpn(),
                    self.qkey(),
                    ud.qkey
                )),
            ));
        }
        let mgid = Gid::from_raw(&ud.ah_attr.grh.dgid);
        let mlid = ud.ah_attr.dlid;
        let ah = AddressHandle::from_attr(self.pd(), &ud.ah_attr)?;
        let peer = UdPeer::new(ah, MULTICAST_QPN, ud.qkey)?;
        attach(self, mgid, mlid)
            .map_err(|source| failed("attaching the queue pair (ibv_attach_mcast)", source))?;
        Ok(Membership {
            qp: self.clone(),
            peer,
            group,
            mgid,
            mlid,
            id,
        })
    }
}

/// Attaches `qp` to the group `(mgid, mlid)` unless a membership already did.
fn attach(qp: &UdQueuePair, mgid: Gid, mlid: u16) -> std::io::Result<()> {
    let mut attached = lock(qp.attached());
    let holders = attached.entry((mgid, mlid)).or_insert(0);
    if *holders == 0 {
        let raw = mgid.to_raw();
        // SAFETY: the queue pair is valid (held by `qp`); `raw` is read during the call.
        let rc = unsafe { ibv_attach_mcast(qp.shared().raw(), &raw, mlid) };
        if rc != 0 {
            attached.remove(&(mgid, mlid));
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    *holders += 1;
    Ok(())
}

impl Membership {
    /// The group as a destination of [`UdQueuePair::send_to`]: its address handle, QPN
    /// [`MULTICAST_QPN`] and the group's Q_Key. Any datagram queue pair of the same
    /// protection domain may send to it, member or not.
    pub fn peer(&self) -> &UdPeer {
        &self.peer
    }

    /// The group's IP address.
    pub fn group(&self) -> IpAddr {
        self.group
    }

    /// The group's multicast GID (on RoCE, derived from its IP address).
    pub fn mgid(&self) -> Gid {
        self.mgid
    }

    /// The group's multicast LID (InfiniBand; on RoCE what the connection manager reports,
    /// unused by the device).
    pub fn mlid(&self) -> u16 {
        self.mlid
    }

    /// The queue pair that receives the group's datagrams.
    pub fn queue_pair(&self) -> &UdQueuePair {
        &self.qp
    }
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("group", &self.group)
            .field("mgid", &self.mgid)
            .field("mlid", &self.mlid)
            .field("qpn", &self.qp.qpn())
            .finish()
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let key = (self.mgid, self.mlid);
        let mut attached = lock(self.qp.attached());
        let last = match attached.get_mut(&key) {
            Some(holders) if *holders > 1 => {
                *holders -= 1;
                false
            }
            _ => true,
        };
        if last {
            attached.remove(&key);
            let raw = self.mgid.to_raw();
            // SAFETY: the queue pair is valid (held by `self.qp`) and was attached to the
            // group by the first of its memberships; this is the last. A system call that
            // does not wait for the network.
            let rc = unsafe { ibv_detach_mcast(self.qp.shared().raw(), &raw, self.mlid) };
            if rc != 0 {
                // The queue pair stays attached (it is detached when it is destroyed): it may
                // go on receiving the group's datagrams, which is safe.
                crate::trace::event!(
                    warn,
                    errno = rc,
                    "ibv_detach_mcast failed: the queue pair stays attached to the group"
                );
            }
        }
        drop(attached);
        let mut addr = sockaddr::to_storage(SocketAddr::new(self.group, 0));
        // SAFETY: the id is valid and joined `group`. librdmacm waits here only for the
        // acknowledgement of the group's events that were read, and the channel
        // acknowledges each as it reads it, so this does not wait. The id (a field) is
        // destroyed after this; destroying it would leave the group too, but leaving
        // first frees librdmacm's record of the join.
        let rc =
            unsafe { rdma_leave_multicast(self.id.raw(), std::ptr::addr_of_mut!(addr).cast()) };
        if rc != 0 {
            crate::trace::event!(
                warn,
                error = %std::io::Error::last_os_error(),
                "rdma_leave_multicast failed; destroying the id leaves the group"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send<T: Send>(_: &T) {}

    /// A join moves between threads with its task (a multi-threaded runtime's), and a
    /// membership with its owner: both must be `Send`. Creating the future does nothing.
    #[test]
    fn joins_and_memberships_are_send() {
        fn joining(qp: &UdQueuePair, membership: &Membership) {
            is_send(&qp.join(IpAddr::from([239, 0, 0, 1])));
            is_send(membership);
        }
        let _ = joining;
    }
}
