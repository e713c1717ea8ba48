//! Unreliable datagrams (UD): one queue pair talks to any number of peers.
//!
//! A [`UdQueuePair`] sends each message as one datagram to a [`UdPeer`] (an
//! [`AddressHandle`], a queue pair number and its Q_Key) and receives datagrams from anyone
//! who knows its [`UdAddress`] and Q_Key. It keeps no state per peer, so a server answers
//! thousands of clients from one queue pair. Its operations are the futures of a reliable
//! [`QueuePair`](crate::QueuePair), with the same completion queues, buffer ownership,
//! cancellation (a dropped future gives up its result, never its buffers early) and
//! selective signaling (a send queue's requests complete in order on UD too).
//!
//! # What the transport promises, and what it loses
//! A completed send means the device sent the datagram, not that it arrived: nothing is
//! acknowledged or retried. A datagram is lost, with no error on either side, when
//! - the receiving queue pair has no receive posted when it arrives (a full receive queue
//!   is the same thing: datagrams beyond the posted receives are dropped); keep receives
//!   posted ahead of the traffic. Devices that count these drops show them in
//!   [`Context::port_counters`](crate::Context::port_counters)'s
//!   [`receive_queue_drops`](crate::PortCounters::receive_queue_drops) (mlx5's
//!   `out_of_buffer`, for the whole port); Soft-RoCE does not count them;
//! - it carries a Q_Key other than the receiving queue pair's: the device drops it silently
//!   (ports count these as Q_Key violations where they count them);
//! - the network drops it (congestion, a peer that is gone, a wrong address): a send to a
//!   destination that does not exist completes successfully;
//! - its receive's buffers are too short: that receive fails with
//!   [`Error::DatagramTruncated`](crate::Error::DatagramTruncated), and the queue pair and
//!   its other receives go on, on every device (anyrdma posts room for the rest of the MTU
//!   behind short buffers, so the device itself never sees a length error, which Soft-RoCE
//!   would answer by failing the whole queue pair);
//! - it is longer than this port's MTU (a peer whose port has a larger one): the device
//!   drops it.
//!
//! Datagrams from one sender to one receiver arrive in order or not at all on a single
//! path, but nothing reorders or deduplicates for you.
//!
//! # Multicast
//! [`UdQueuePair::join`] joins a multicast group by IP address through the connection
//! manager and attaches the queue pair to it; the [`Membership`] it returns names the group
//! as a [`UdPeer`] to send to, and leaves the group when dropped. See
//! [`Membership`] for what a member receives.
//!
//! # Sizes
//! A datagram is at most the path MTU (the port's active MTU,
//! [`UdQueuePair::max_datagram`]); a longer send is refused before posting with
//! [`Error::DatagramTooLarge`](crate::Error::DatagramTooLarge), which names the MTU. The
//! device writes 40 bytes (a Global Route Header, or for RoCE v2 over IPv4 the IPv4 header)
//! in front of every datagram it delivers: anyrdma posts them to a block of its own, so the
//! payload lands at offset 0 of the buffers you pass, and [`Datagram`] reports the sender's
//! GID read from them. The GRH bytes themselves never reach you.
//!
//! # Selective signaling on datagrams
//! A send that is not signaled completes with the next signaled one of its queue, as on a
//! reliable queue pair. When the last send of a burst is unsignaled and awaited, a *fence*
//! is posted: on UD a signaled zero-length send to the queue pair itself under a Q_Key
//! that is not its own, which the device loops back and drops without taking a receive.

mod ah;
mod batch;
mod grh;
mod multicast;
mod qp;
mod session;
mod srq;

pub use ah::{live_address_handles, AddressHandle};
pub use batch::UdBatch;
pub use grh::GRH_LEN;
pub use multicast::{Membership, MulticastOptions, MULTICAST_QPN};
pub use qp::{Datagram, UdAddress, UdOptions, UdPeer, UdQueuePair, UdRecv, UdSend, DEFAULT_QKEY};
pub use session::{connect, UdListener, UdSessionOptions};
pub use srq::UdSharedReceiveQueue;

/// What a datagram queue pair's `QpShared` keeps: its Q_Key, and the address handle of its
/// own port that its fences go to.
pub(crate) struct DatagramQp {
    pub(crate) qkey: u32,
    pub(crate) fence: AddressHandle,
}
