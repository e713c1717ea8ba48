//! The completion engine: each operation's slot in its completion queue, the queue's polling
//! and waking (its channel drives the queue, never a task), selective signaling, the futures
//! of operations, and work completion statuses.

pub(crate) mod cq;
pub(crate) mod credits;
pub(crate) mod op;
pub(crate) mod queue;
pub mod signaling;
pub(crate) mod slots;
pub(crate) mod wake;
pub(crate) mod wc;
