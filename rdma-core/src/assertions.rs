//! Compile-time guarantees: the objects users share across tasks and threads, and the
//! futures they spawn, are `Send` and `Sync`.

use static_assertions::assert_impl_all;

use crate::runtime::RuntimeHandle;
use crate::*;

assert_impl_all!(Context: Send, Sync, Clone);
assert_impl_all!(RuntimeHandle: Send, Sync, Clone);
assert_impl_all!(ProtectionDomain: Send, Sync, Clone);
assert_impl_all!(MemoryRegion: Send, Sync, Clone);
assert_impl_all!(LocalBuf: Send, Sync);
assert_impl_all!(SharedRegion: Send, Sync);
assert_impl_all!(MemoryPool: Send, Sync, Clone);
assert_impl_all!(DeviceEvent: Send, Sync, Clone);
assert_impl_all!(RemoteRegion: Send, Sync, Copy);
assert_impl_all!(Endpoint: Send, Sync, Copy);
assert_impl_all!(Error: Send, Sync, std::error::Error);
assert_impl_all!(CompletionQueue: Send, Sync, Clone);
assert_impl_all!(QueuePair: Send, Sync, Clone);
assert_impl_all!(SharedReceiveQueue: Send, Sync, Clone);
// Operations can be spawned on multi-threaded executors and moved between polls.
assert_impl_all!(Op<LocalBuf, Done>: Send, Unpin);
assert_impl_all!(Op<Vec<LocalBuf>, Recv>: Send, Unpin);
assert_impl_all!(Op<LocalBuf, Atomic>: Send, Unpin);
assert_impl_all!(Op<SharedRegion, Recv>: Send, Unpin);
assert_impl_all!(Batch: Send);
