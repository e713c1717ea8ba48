//! Registered memory, local and remote: registrations and `LocalBuf`, bounded views of them,
//! the memory pool, memory a peer may write (`SharedRegion`), user-owned containers registered
//! in place, scatter-gather lists, and descriptions of remote regions.

pub(crate) mod access;
pub(crate) mod buffers;
pub(crate) mod hot_slots;
pub(crate) mod mr;
pub(crate) mod owned;
pub(crate) mod pool;
pub(crate) mod remote;
pub(crate) mod shared;
pub(crate) mod span;
