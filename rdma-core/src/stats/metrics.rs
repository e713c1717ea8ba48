//! The counters exported through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): to Prometheus, StatsD, OpenTelemetry or any other recorder an application
//! installs.
//!
//! # Without a cost per operation
//!
//! Operations never touch the recorder: they only count, as they do without the feature
//! (see [`stats`](crate::stats)). Every queue pair, completion queue, messenger, memory pool
//! and memory session is entered, when it is made, in a list of the live objects that holds each
//! weakly (it keeps none alive, and the entries of dropped objects are dropped on the way).
//! [`record`] reads a snapshot of each and hands its numbers to the installed recorder, as
//! counters (absolute values: a counter only grows) and gauges (the levels). An application
//! calls it where it suits it: before each scrape, or every few seconds from a task or a
//! thread of its own. A call locks each completion queue, messenger and session for a moment,
//! as their `stats()` does, and costs about a microsecond per object.
//!
//! ```no_run
//! # async fn demo() {
//! // Once, at start-up: a recorder (here Prometheus's, serving its own HTTP endpoint).
//! // metrics_exporter_prometheus::PrometheusBuilder::new().install().unwrap();
//! loop {
//!     anyrdma_core::metrics::record();
//!     anyrdma_core::sleep(std::time::Duration::from_secs(5)).await;
//! }
//! # }
//! ```
//!
//! # Names
//!
//! Every object has the label `device` (the device's name); queue pairs, messengers and
//! sessions have `qpn` (their queue pair's number), completion queues `cq` (the device's
//! handle of the queue, unique on the device while the queue lives). Counters end in
//! `_total`, as Prometheus names them:
//!
//! | metric | kind | from |
//! |---|---|---|
//! | `anyrdma_qp_sends_posted_total`, `_sends_completed_total`, `_receives_posted_total`, `_receives_completed_total`, `_failed_total`, `_flushed_total`, `_fences_total`, `_room_waits_total` | counter | [`QpStats`] |
//! | `anyrdma_qp_sent_bytes_total`, `_written_bytes_total`, `_read_bytes_total` | counter | [`QpStats`] |
//! | `anyrdma_qp_in_flight` | gauge | [`QpStats::in_flight`] |
//! | `anyrdma_cq_polls_total`, `_empty_polls_total`, `_completions_total`, `_sleeps_total`, `_wakeups_total`, `_tasks_woken_total` | counter | [`CqStats`] |
//! | `anyrdma_messenger_sent_messages_total`, `_sent_bytes_total`, `_received_messages_total`, `_received_bytes_total`, `_rendezvous_sent_total`, `_rendezvous_received_total`, `_credit_waits_total` | counter | [`MessengerStats`] |
//! | `anyrdma_messenger_credit_wait_seconds_total` | gauge (it only grows, but in seconds, which a counter's integer cannot carry) | [`MessengerStats::credit_wait`] |
//! | `anyrdma_pool_chunks`, `_registered_bytes`, `_in_use_bytes` (label `pool`: the pool's number in the process, instead of `qpn`) | gauge | `PoolStats` (every `MemoryPool`, a messenger's own included) |
//! | `anyrdma_session_grants_made_total`, `_granted_bytes_total` | counter | [`SessionStats`] |
//! | `anyrdma_session_grants_live`, `_live_bytes`, `_grants_held` | gauge | [`SessionStats`] |
//! | `anyrdma_session_refusals_total` with `side` (`sent`: this side refused; `received`: the peer refused) and `reason` | counter | [`SessionStats::refused`], [`SessionStats::refused_by_peer`] |
//!
//! A `reason` is the [`RefuseReason`](crate::remote_memory::RefuseReason)'s name in snake
//! case: `too_many_bytes`, `too_many_regions`, `access_not_allowed`, `lease_too_long`,
//! `declined`, `out_of_memory`, `unknown_grant`.
//!
//! # Objects that come and go
//!
//! A dropped object is no longer recorded; the recorder keeps its series at their last values
//! until it forgets them (Prometheus's exporter does after its `idle_timeout`, when one is
//! set). The device gives the number of a destroyed queue pair (or completion queue) to a
//! later one: the later one's series then take the same labels and its counters start again
//! from zero, which Prometheus reads as a counter reset, as after a restart (`rate()` and
//! `increase()` count across it). Sum over `qpn` for a connection-independent view.

use std::sync::{Arc, Mutex, Weak};

use ::metrics::{counter, gauge, Label};

use super::{CqStats, MessengerStats, QpStats, Refusals, SessionStats};

/// An object whose counters are exported: it hands a snapshot of them to the `record_*`
/// function of its kind, with the labels that name it. Implemented beside each object.
pub(crate) trait Exported: Send + Sync {
    /// Records its counters with the installed recorder.
    fn export(&self);
}

/// The live objects, held weakly, and the size the list had when it was last pruned.
struct Live {
    objects: Vec<Weak<dyn Exported>>,
    pruned_at: usize,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    objects: Vec::new(),
    pruned_at: 0,
});

fn live() -> std::sync::MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Enters `object` in the list that [`record`] reads (when it is made: never per operation).
/// Entries of dropped objects are pruned here too, once the list doubled since the last
/// pruning, so that a program that never records does not grow it without end.
pub(crate) fn track<T: Exported + 'static>(object: &Arc<T>) {
    let weak: Weak<T> = Arc::downgrade(object);
    let mut live = live();
    live.objects.push(weak);
    if live.objects.len() >= 2 * live.pruned_at.max(64) {
        live.objects.retain(|object| object.strong_count() > 0);
        live.pruned_at = live.objects.len();
    }
}

/// Hands the counters of every live queue pair, completion queue, messenger and memory
/// session to the installed [`metrics`](https://docs.rs/metrics) recorder (see the [module
/// documentation](self) for the names). Call it before each scrape, or periodically; without
/// a recorder installed it does nothing but read the counters.
pub fn record() {
    let objects: Vec<Arc<dyn Exported>> = {
        let mut live = live();
        live.objects.retain(|object| object.strong_count() > 0);
        live.pruned_at = live.objects.len();
        live.objects.iter().filter_map(Weak::upgrade).collect()
    };
    // Outside the list's lock: an object dropped here (its last other handle went meanwhile)
    // tears itself down, which may take the locks of its own objects.
    for object in objects {
        object.export();
    }
}

/// The labels of an object on `device` with queue pair number `qpn`.
pub(crate) fn qp_labels(device: &str, qpn: u32) -> Vec<Label> {
    vec![
        Label::new("device", device.to_owned()),
        Label::new("qpn", qpn.to_string()),
    ]
}

/// Records a queue pair's snapshot.
pub(crate) fn record_qp(stats: &QpStats, labels: &[Label]) {
    let counters = [
        ("anyrdma_qp_sends_posted_total", stats.sends_posted),
        ("anyrdma_qp_sends_completed_total", stats.sends_completed),
        ("anyrdma_qp_receives_posted_total", stats.receives_posted),
        (
            "anyrdma_qp_receives_completed_total",
            stats.receives_completed,
        ),
        ("anyrdma_qp_failed_total", stats.failed),
        ("anyrdma_qp_flushed_total", stats.flushed),
        ("anyrdma_qp_fences_total", stats.fences),
        ("anyrdma_qp_room_waits_total", stats.room_waits),
        ("anyrdma_qp_sent_bytes_total", stats.bytes_sent),
        ("anyrdma_qp_written_bytes_total", stats.bytes_written),
        ("anyrdma_qp_read_bytes_total", stats.bytes_read),
    ];
    for (name, value) in counters {
        counter!(name, labels.iter()).absolute(value);
    }
    gauge!("anyrdma_qp_in_flight", labels.iter()).set(stats.in_flight() as f64);
}

/// Records a completion queue's snapshot; `handle` is the device's handle of the queue.
pub(crate) fn record_cq(stats: &CqStats, device: &str, handle: u32) {
    let labels = [
        Label::new("device", device.to_owned()),
        Label::new("cq", handle.to_string()),
    ];
    let counters = [
        ("anyrdma_cq_polls_total", stats.polls),
        ("anyrdma_cq_empty_polls_total", stats.empty_polls),
        ("anyrdma_cq_completions_total", stats.completions),
        ("anyrdma_cq_sleeps_total", stats.sleeps),
        ("anyrdma_cq_wakeups_total", stats.wakeups),
        ("anyrdma_cq_tasks_woken_total", stats.tasks_woken),
    ];
    for (name, value) in counters {
        counter!(name, labels.iter()).absolute(value);
    }
}

/// Records a messenger's snapshot.
pub(crate) fn record_messenger(stats: &MessengerStats, labels: &[Label]) {
    let counters = [
        ("anyrdma_messenger_sent_messages_total", stats.messages_sent),
        ("anyrdma_messenger_sent_bytes_total", stats.bytes_sent),
        (
            "anyrdma_messenger_received_messages_total",
            stats.messages_received,
        ),
        (
            "anyrdma_messenger_received_bytes_total",
            stats.bytes_received,
        ),
        (
            "anyrdma_messenger_rendezvous_sent_total",
            stats.rendezvous_sent,
        ),
        (
            "anyrdma_messenger_rendezvous_received_total",
            stats.rendezvous_received,
        ),
        ("anyrdma_messenger_credit_waits_total", stats.credit_waits),
    ];
    for (name, value) in counters {
        counter!(name, labels.iter()).absolute(value);
    }
    // Only grows, but in seconds, which a counter's integer cannot carry: a gauge.
    gauge!("anyrdma_messenger_credit_wait_seconds_total", labels.iter())
        .set(stats.credit_wait.as_secs_f64());
}

/// Records a memory pool's usage (`MemoryPool::stats`: chunks, bytes registered, bytes of the
/// blocks in use); `id` is its number in the process.
pub(crate) fn record_pool(
    chunks: usize,
    bytes_registered: usize,
    bytes_in_use: usize,
    device: &str,
    id: u64,
) {
    let labels = [
        Label::new("device", device.to_owned()),
        Label::new("pool", id.to_string()),
    ];
    gauge!("anyrdma_pool_chunks", labels.iter()).set(chunks as f64);
    gauge!("anyrdma_pool_registered_bytes", labels.iter()).set(bytes_registered as f64);
    gauge!("anyrdma_pool_in_use_bytes", labels.iter()).set(bytes_in_use as f64);
}

/// Records a memory session's snapshot.
pub(crate) fn record_session(stats: &SessionStats, labels: &[Label]) {
    counter!("anyrdma_session_grants_made_total", labels.iter()).absolute(stats.grants_made);
    counter!("anyrdma_session_granted_bytes_total", labels.iter()).absolute(stats.bytes_granted);
    gauge!("anyrdma_session_grants_live", labels.iter()).set(stats.grants_live as f64);
    gauge!("anyrdma_session_live_bytes", labels.iter()).set(stats.bytes_live as f64);
    gauge!("anyrdma_session_grants_held", labels.iter()).set(stats.grants_held as f64);
    record_refusals(&stats.refused, "sent", labels);
    record_refusals(&stats.refused_by_peer, "received", labels);
}

fn record_refusals(refusals: &Refusals, side: &'static str, labels: &[Label]) {
    for (reason, count) in refusals.by_reason() {
        let mut labels = labels.to_vec();
        labels.push(Label::new("side", side));
        labels.push(Label::new("reason", reason_name(reason)));
        counter!("anyrdma_session_refusals_total", labels).absolute(count);
    }
}

/// A refusal's reason as a label value.
fn reason_name(reason: crate::remote_memory::RefuseReason) -> &'static str {
    use crate::remote_memory::RefuseReason as R;
    match reason {
        R::TooManyBytes => "too_many_bytes",
        R::TooManyRegions => "too_many_regions",
        R::AccessNotAllowed => "access_not_allowed",
        R::LeaseTooLong => "lease_too_long",
        R::Declined => "declined",
        R::OutOfMemory => "out_of_memory",
        R::UnknownGrant => "unknown_grant",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its exports.
    #[derive(Default)]
    struct Probe(AtomicUsize);

    impl Exported for Probe {
        fn export(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `record` exports every live object once per call, and forgets the dropped ones; the
    /// list never keeps an object alive; a program that tracks objects and never records
    /// keeps its list bounded. (One test: the list is the process's.)
    #[test]
    fn record_exports_the_live_objects_and_forgets_the_dropped() {
        let kept: Vec<Arc<Probe>> = (0..3).map(|_| Arc::new(Probe::default())).collect();
        let dropped = Arc::new(Probe::default());
        for probe in kept.iter().chain([&dropped]) {
            track(probe);
        }
        assert_eq!(Arc::strong_count(&dropped), 1, "tracked weakly");
        let gone = Arc::downgrade(&dropped);
        drop(dropped);
        assert!(gone.upgrade().is_none(), "the list did not keep it alive");
        record();
        record();
        for probe in &kept {
            assert_eq!(probe.0.load(Ordering::Relaxed), 2);
        }
        assert!(
            live()
                .objects
                .iter()
                .all(|object| object.strong_count() > 0),
            "dropped objects are pruned"
        );

        for _ in 0..10_000 {
            track(&Arc::new(Probe::default()));
        }
        assert!(live().objects.len() < 1_000, "{}", live().objects.len());
    }
}
