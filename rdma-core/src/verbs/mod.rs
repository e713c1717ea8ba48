//! The verbs objects a user holds and the operations posted on them: device discovery and the
//! opened context, protection domains, queue pairs (connected out of band through their
//! endpoints), shared receive queues, and the send-side operations and batches.

pub(crate) mod batch;
pub(crate) mod context;
pub mod device;
pub(crate) mod device_env;
pub(crate) mod endpoint;
pub(crate) mod pd;
pub(crate) mod port_counters;
pub(crate) mod qp;
pub(crate) mod send;
pub(crate) mod srq;
