//! Asynchronous events of a device: errors of queue pairs, completion queues and shared
//! receive queues, port changes, and a device that fails or goes away.
//!
//! libibverbs reports them on the context's async-event descriptor. Nothing reads it in the
//! background: whoever waits on the device reads it. A completion queue's poller watches it
//! before it sleeps (so an event wakes the sleepers of every completion queue of the device),
//! a busy poller looks at it when it yields, and [`Context::next_event`] reads it for the
//! application. Each event is acknowledged as soon as it is read, then applied to the objects
//! it concerns (see [`DeviceEventKind`] for what each does), then queued for
//! [`Context::next_event`].
//!
//! [`Context::next_event`]: crate::Context::next_event

mod watch;

pub use watch::NextEvent;
pub(crate) use watch::{DeviceEvents, EventQp, EventSource, EventSrq};

use std::fmt;

/// An asynchronous event of a device, as [`Context::next_event`](crate::Context::next_event)
/// yields it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEvent {
    /// The device's name, e.g. `rxe0`.
    pub device: String,
    /// What happened, and to which object.
    pub kind: DeviceEventKind,
}

impl fmt::Display for DeviceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.device, self.kind)
    }
}

/// What a device reported, and what anyrdma did about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeviceEventKind {
    /// A completion queue failed (it overran, or the device could not write to it). Every
    /// queue pair that uses it is failed: its pending operations end with
    /// [`Error::Flushed`](crate::Error::Flushed) carrying this event as the cause.
    CqError,
    /// A queue pair hit an error that no completion can report and is in the error state:
    /// its pending operations are flushed, and new ones fail with this event as the cause.
    QpFatal {
        /// The queue pair number.
        qpn: u32,
    },
    /// A queue pair received a request that broke the transport protocol, and is in the
    /// error state (handled as [`QpFatal`](DeviceEventKind::QpFatal)).
    QpRequestError {
        /// The queue pair number.
        qpn: u32,
    },
    /// A peer's request violated this queue pair's access rights, and the queue pair is in
    /// the error state (handled as [`QpFatal`](DeviceEventKind::QpFatal)).
    QpAccessError {
        /// The queue pair number.
        qpn: u32,
    },
    /// The first packet arrived on a queue pair still in RTR.
    CommunicationEstablished {
        /// The queue pair number.
        qpn: u32,
    },
    /// A queue pair's send queue drained (after a move to SQD).
    SendQueueDrained {
        /// The queue pair number.
        qpn: u32,
    },
    /// A queue pair migrated to its alternate path.
    PathMigrated {
        /// The queue pair number.
        qpn: u32,
    },
    /// A queue pair could not migrate to its alternate path.
    PathMigrationError {
        /// The queue pair number.
        qpn: u32,
    },
    /// A queue pair attached to a shared receive queue is in the error state and will take
    /// no more receives from it: its receive completions still in the completion queue are
    /// the last.
    LastWqeReached {
        /// The queue pair number.
        qpn: u32,
    },
    /// A shared receive queue failed. Its queue pairs are failed as for
    /// [`CqError`](DeviceEventKind::CqError).
    SrqError,
    /// A shared receive queue's receive count fell below the limit set on it.
    SrqLimitReached,
    /// A port became active.
    PortActive {
        /// The port number.
        port: u8,
    },
    /// A port went down. Queue pairs stay connected: operations that need the wire fail once
    /// their retries run out (see [`ConnectOptions`](crate::ConnectOptions)), and resume if
    /// the port comes back first.
    PortError {
        /// The port number.
        port: u8,
    },
    /// A port's LID changed.
    LidChange {
        /// The port number.
        port: u8,
    },
    /// A port's partition key table changed.
    PkeyChange {
        /// The port number.
        port: u8,
    },
    /// The subnet manager of a port changed.
    SmChange {
        /// The port number.
        port: u8,
    },
    /// The subnet manager asks clients of a port to register again.
    ClientReregister {
        /// The port number.
        port: u8,
    },
    /// A port's GID table changed (on RoCE: an address of the network device changed, or
    /// the network device went away).
    GidChange {
        /// The port number.
        port: u8,
    },
    /// The device failed. Everything of the context is failed: every queue pair, as for
    /// [`DeviceRemoved`](DeviceEventKind::DeviceRemoved).
    DeviceFatal,
    /// The device is going away: a port event came and the port could no longer be queried
    /// (the device was unregistered, e.g. its network device was deleted). anyrdma reports
    /// this itself, as the device sends no event of its own for it. Every queue pair of the
    /// context is failed: its pending operations end with [`Error::Flushed`](crate::Error::Flushed)
    /// carrying this event as the cause, and new ones fail at once. Drop every object of the
    /// context so that the device can finish going away.
    DeviceRemoved,
    /// An event this version does not know, by its `ibv_event_type` number.
    Unknown {
        /// The `ibv_event_type` value.
        code: u32,
    },
}

impl fmt::Display for DeviceEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DeviceEventKind as K;
        match *self {
            K::CqError => write!(f, "a completion queue failed (overrun or access error)"),
            K::QpFatal { qpn } => write!(f, "queue pair {qpn} hit a fatal error"),
            K::QpRequestError { qpn } => {
                write!(f, "queue pair {qpn} received a request that broke the transport")
            }
            K::QpAccessError { qpn } => write!(
                f,
                "queue pair {qpn} received a request that violated its access rights"
            ),
            K::CommunicationEstablished { qpn } => {
                write!(f, "queue pair {qpn} received its first packet")
            }
            K::SendQueueDrained { qpn } => write!(f, "queue pair {qpn} drained its send queue"),
            K::PathMigrated { qpn } => write!(f, "queue pair {qpn} migrated to its other path"),
            K::PathMigrationError { qpn } => {
                write!(f, "queue pair {qpn} could not migrate to its other path")
            }
            K::LastWqeReached { qpn } => write!(
                f,
                "queue pair {qpn} is in error and takes no more receives from its shared receive queue"
            ),
            K::SrqError => write!(f, "a shared receive queue failed"),
            K::SrqLimitReached => {
                write!(f, "a shared receive queue fell below its receive limit")
            }
            K::PortActive { port } => write!(f, "port {port} is active"),
            K::PortError { port } => write!(f, "port {port} went down"),
            K::LidChange { port } => write!(f, "the LID of port {port} changed"),
            K::PkeyChange { port } => write!(f, "the partition keys of port {port} changed"),
            K::SmChange { port } => write!(f, "the subnet manager of port {port} changed"),
            K::ClientReregister { port } => {
                write!(f, "the subnet manager asks port {port} to register again")
            }
            K::GidChange { port } => write!(f, "the GID table of port {port} changed"),
            K::DeviceFatal => write!(f, "the device failed"),
            K::DeviceRemoved => write!(
                f,
                "the device is going away (its port can no longer be queried); drop every object \
                 of its context"
            ),
            K::Unknown { code } => write!(f, "an event of unknown type {code}"),
        }
    }
}

impl DeviceEventKind {
    /// The kind of `ibv_event_type` `code`, given the queue pair number or port the event
    /// names (whichever applies).
    pub(crate) fn from_raw(code: u32, qpn: u32, port: u8) -> DeviceEventKind {
        use DeviceEventKind as K;
        match code {
            0 => K::CqError,
            1 => K::QpFatal { qpn },
            2 => K::QpRequestError { qpn },
            3 => K::QpAccessError { qpn },
            4 => K::CommunicationEstablished { qpn },
            5 => K::SendQueueDrained { qpn },
            6 => K::PathMigrated { qpn },
            7 => K::PathMigrationError { qpn },
            8 => K::DeviceFatal,
            9 => K::PortActive { port },
            10 => K::PortError { port },
            11 => K::LidChange { port },
            12 => K::PkeyChange { port },
            13 => K::SmChange { port },
            14 => K::SrqError,
            15 => K::SrqLimitReached,
            16 => K::LastWqeReached { qpn },
            17 => K::ClientReregister { port },
            18 => K::GidChange { port },
            code => K::Unknown { code },
        }
    }

    /// Which object the `ibv_async_event` element of `code` points to.
    pub(crate) fn element_of(code: u32) -> Element {
        match code {
            0 => Element::Cq,
            1..=7 | 16 => Element::Qp,
            14 | 15 => Element::Srq,
            9..=13 | 17 | 18 => Element::Port,
            _ => Element::None,
        }
    }
}

/// The object an event's element names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Element {
    Cq,
    Qp,
    Srq,
    Port,
    None,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_maps_to_its_kind_and_element() {
        // The values of enum ibv_event_type in rdma-core's verbs.h.
        let expected = [
            (0, DeviceEventKind::CqError, Element::Cq),
            (1, DeviceEventKind::QpFatal { qpn: 7 }, Element::Qp),
            (3, DeviceEventKind::QpAccessError { qpn: 7 }, Element::Qp),
            (8, DeviceEventKind::DeviceFatal, Element::None),
            (9, DeviceEventKind::PortActive { port: 2 }, Element::Port),
            (10, DeviceEventKind::PortError { port: 2 }, Element::Port),
            (15, DeviceEventKind::SrqLimitReached, Element::Srq),
            (16, DeviceEventKind::LastWqeReached { qpn: 7 }, Element::Qp),
            (18, DeviceEventKind::GidChange { port: 2 }, Element::Port),
            (19, DeviceEventKind::Unknown { code: 19 }, Element::None),
            (4711, DeviceEventKind::Unknown { code: 4711 }, Element::None),
        ];
        for (code, kind, element) in expected {
            assert_eq!(DeviceEventKind::from_raw(code, 7, 2), kind, "code {code}");
            assert_eq!(DeviceEventKind::element_of(code), element, "code {code}");
        }
        let event = DeviceEvent {
            device: "rxe0".into(),
            kind: DeviceEventKind::PortError { port: 1 },
        };
        assert_eq!(event.to_string(), "rxe0: port 1 went down");
    }
}
