//! Diagnostics through `tracing`, with the `tracing` feature (off by default).
//!
//! Events: queue pair state changes (`debug`), the device's asynchronous events (`warn` for
//! failures, `info` otherwise), failed work completions (`debug`; flushes at `trace`),
//! queue pairs failed by anyrdma (`warn`), a completion channel given up for polling
//! (`warn`), and memory leaked on purpose because a teardown call failed (`error`). Spans:
//! `connect` around [`QueuePair::connect`](crate::QueuePair::connect). Nothing is recorded per
//! operation on the success path. Without the feature, every call compiles to nothing.

/// `tracing::$level!(...)` with the `tracing` feature; nothing without it (the arguments
/// are not evaluated).
macro_rules! event {
    ($level:ident, $($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        ::tracing::$level!($($arg)+);
    }};
}

pub(crate) use event;
