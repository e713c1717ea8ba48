//! With the `tracing` feature, what happens to queue pairs reaches a `tracing` subscriber:
//! the connect span, each state change, a failed work completion and the flushes after it.
//! (Built in the Tokio run of the device tests, which enables `tracing`.)
#![cfg(feature = "tracing")]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use anyrdma::{Access, Error, WcStatus};
use support::Pair;

/// Everything the subscriber writes, shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[test]
fn queue_pair_life_and_failures_are_traced() {
    if !support::device_present("queue_pair_life_and_failures_are_traced") {
        return;
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // Thread-local: the current-thread runtime below runs everything on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let pair = runtime.block_on(async { Pair::new() });
    let qpn = pair.a.qpn();
    // A receive that the failure below flushes.
    let receive = pair.a.recv(pair.pd.alloc(8, Access::LOCAL).unwrap());
    // A write into a region the peer registered for remote reads only: the peer refuses it.
    let read_only = pair.pd.alloc(64, Access::REMOTE_READ).unwrap();
    let target = read_only.remote().unwrap();
    let (written, _) = runtime.block_on(pair.a.write(pair.patterned(64, 1), target));
    match written {
        Err(Error::WorkCompletion { status, .. }) => assert_eq!(status, WcStatus::REM_ACCESS_ERR),
        other => panic!("the write into a read-only region ended with {other:?}"),
    }
    let (received, _) = runtime.block_on(receive);
    assert!(
        matches!(received, Err(Error::Flushed { .. })),
        "{received:?}"
    );

    let text = captured.text();
    for expected in [
        "connect{",
        &format!("qpn={qpn}"),
        "queue pair state change",
        "to=\"RTS\"",
        "work completion failed",
        "IBV_WC_REM_ACCESS_ERR",
        "work request flushed",
    ] {
        assert!(
            text.contains(expected),
            "no `{expected}` in the trace:\n{text}"
        );
    }
}
