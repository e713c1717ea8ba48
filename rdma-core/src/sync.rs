//! The atomics of the lock-free structures that are model-checked: std's in every normal build,
//! loom's under `RUSTFLAGS="--cfg anyrdma_loom"`, so that loom explores their interleavings and
//! memory orderings (see `memory/hot_slots.rs`). Under that cfg these atomics work only inside a loom
//! model: run only the model tests with it (`scripts/test --help` has the command).

#[cfg(not(anyrdma_loom))]
pub(crate) use std::sync::atomic::AtomicPtr;

#[cfg(anyrdma_loom)]
pub(crate) use loom::sync::atomic::AtomicPtr;
