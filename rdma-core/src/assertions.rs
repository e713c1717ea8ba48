//! Compile-time guarantees: the objects users share across tasks and threads, and the
//! futures they spawn, are `Send` and `Sync`, whatever the runtime.

use std::io;
use std::os::fd::RawFd;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use static_assertions::assert_impl_all;

use crate::*;

/// A stand-in runtime, only to name the generic types here.
struct AnyRuntime;

struct AnyFd;

impl ReadinessFd for AnyFd {
    fn poll_read_with<T>(
        &self,
        _: &mut TaskContext<'_>,
        _: impl FnMut() -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        Poll::Pending
    }
}

impl Runtime for AnyRuntime {
    type Fd = AnyFd;
    type Sleep = std::future::Ready<()>;

    unsafe fn register_fd(_: RawFd) -> io::Result<AnyFd> {
        Ok(AnyFd)
    }

    fn sleep(_: Duration) -> Self::Sleep {
        std::future::ready(())
    }
}

assert_impl_all!(Context: Send, Sync, Clone);
assert_impl_all!(ProtectionDomain: Send, Sync, Clone);
assert_impl_all!(MemoryRegion: Send, Sync, Clone);
assert_impl_all!(LocalBuf: Send, Sync);
assert_impl_all!(RemoteRegion: Send, Sync, Copy);
assert_impl_all!(Endpoint: Send, Sync, Copy);
assert_impl_all!(Error: Send, Sync, std::error::Error);
assert_impl_all!(CompletionQueue<AnyRuntime>: Send, Sync, Clone);
assert_impl_all!(QueuePair<AnyRuntime>: Send, Sync, Clone);
assert_impl_all!(SharedReceiveQueue<AnyRuntime>: Send, Sync, Clone);
// Operations can be spawned on multi-threaded executors and moved between polls.
assert_impl_all!(Op<AnyRuntime, LocalBuf, Done>: Send, Unpin);
assert_impl_all!(Op<AnyRuntime, Vec<LocalBuf>, Recv>: Send, Unpin);
assert_impl_all!(Op<AnyRuntime, LocalBuf, Atomic>: Send, Unpin);
assert_impl_all!(Batch<AnyRuntime>: Send);
