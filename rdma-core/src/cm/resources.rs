//! The protection domain and completion queues that the connections of one device share.
//!
//! A process keeps one set per device port, runtime instance and completion-queue setting,
//! made by the first connection that needs it and freed with the last connection that holds
//! it, so that a thousand connections do not mean a thousand completion queues and channels.
//!
//! # Admission
//! A completion queue is never promised more entries than it has: each connection's queue
//! pair is admitted against a shared completion queue whose entries still cover the pair's
//! send and receive queue depths (as the device created them), and a new completion queue
//! is made when none has room. So every request a queue pair can have outstanding has its
//! place in its completion queue, and an operation never finds the queue full because other
//! connections filled it. A queue pair too deep for any completion queue the device can
//! make is refused when the connection is made, with a reason.

use std::sync::{Arc, Mutex, Weak};

use super::options::{ConnectionOptions, ConnectionResources};
use crate::context::Context;
use crate::cq::{CompletionQueue, CqOptions, PollMode};
use crate::device::PortSelection;
use crate::error::{Error, Result};
use crate::pd::ProtectionDomain;
use crate::qp::{QpOptions, QpShared, QueuePair};
use crate::runtime::RuntimeHandle;
use crate::wake::lock;

/// What the connections of one device port share: a protection domain and the completion
/// queues their queue pairs are admitted to.
pub(crate) struct DeviceShare {
    pd: ProtectionDomain,
    cq_options: CqOptions,
    cqs: Mutex<Vec<SharedCq>>,
}

/// A shared completion queue and the queue pairs admitted to it.
struct SharedCq {
    cq: CompletionQueue,
    /// Each admitted queue pair with the entries it may fill (send + receive depth), while
    /// it lives.
    admitted: Vec<(Weak<QpShared>, u32)>,
}

impl SharedCq {
    /// Entries not promised to a living queue pair.
    fn room(&mut self) -> u32 {
        self.admitted.retain(|(qp, _)| qp.strong_count() > 0);
        let promised: u64 = self.admitted.iter().map(|(_, n)| u64::from(*n)).sum();
        u64::from(self.cq.entries()).saturating_sub(promised) as u32
    }
}

#[derive(PartialEq)]
struct Key {
    device: String,
    port: u8,
    runtime: &'static str,
    /// The runtime instance (see [`Runtime::current_instance`](crate::Runtime::current_instance)):
    /// two Tokio runtimes do not share a completion queue, whose channel is registered with
    /// one of them.
    instance: Option<u64>,
    poll_mode: PollMode,
    cq_entries: u32,
}

static SHARED: Mutex<Vec<(Key, Weak<DeviceShare>)>> = Mutex::new(Vec::new());

/// A queue pair for a connection through `device` port `port`: on the options' own
/// resources (checked to be of that device), or on the shared ones (made on first use),
/// admitted to a completion queue with room for it. The second value keeps shared ones
/// alive.
pub(crate) fn queue_pair(
    device: &str,
    port: u8,
    runtime: &RuntimeHandle,
    options: &ConnectionOptions,
) -> Result<(QueuePair, Option<Arc<DeviceShare>>)> {
    if let Some(own) = &options.resources {
        let has = own.pd.context().device_name();
        if has != device {
            return Err(Error::InvalidArgument(format!(
                "the connection's route goes through device {device}, but the protection \
                 domain in ConnectionOptions::resources is of {has}: give resources of \
                 {device}, or none to use the shared ones"
            )));
        }
        let ConnectionResources {
            pd,
            send_cq,
            recv_cq,
        } = own;
        return Ok((QueuePair::new(pd, send_cq, recv_cq, options.qp)?, None));
    }
    let share = shared(device, port, runtime, options)?;
    let qp = share.admit(options.qp)?;
    Ok((qp, Some(share)))
}

/// The shared resources of `device` port `port` for `runtime` and the options' CQ setting.
fn shared(
    device: &str,
    port: u8,
    runtime: &RuntimeHandle,
    options: &ConnectionOptions,
) -> Result<Arc<DeviceShare>> {
    let key = Key {
        device: device.to_owned(),
        port,
        runtime: runtime.name(),
        instance: runtime.current_instance(),
        poll_mode: options.poll_mode,
        cq_entries: options.cq_entries,
    };
    let mut shared = lock(&SHARED);
    shared.retain(|(_, share)| share.strong_count() > 0);
    if let Some(share) = shared
        .iter()
        .find(|(known, _)| *known == key)
        .and_then(|(_, share)| share.upgrade())
    {
        return Ok(share);
    }
    let selection = PortSelection::for_port(device, port)?;
    let ctx = Context::open_port(&selection)?.with_runtime(runtime.clone());
    let share = Arc::new(DeviceShare {
        pd: ctx.alloc_pd()?,
        cq_options: CqOptions {
            entries: options.cq_entries,
            poll_mode: options.poll_mode,
        },
        cqs: Mutex::new(Vec::new()),
    });
    shared.push((key, Arc::downgrade(&share)));
    Ok(share)
}

impl DeviceShare {
    /// A queue pair with `options`, admitted to a completion queue with room for its
    /// depths; a new completion queue when none has room.
    fn admit(&self, options: QpOptions) -> Result<QueuePair> {
        let limits = self.pd.context().limits();
        // The depths the device is asked for (as QueuePair::new caps them); it may round
        // them up, which is checked once the pair exists.
        let mut need = options.max_send_wr.clamp(1, limits.max_qp_wr.max(1))
            + options.max_recv_wr.clamp(1, limits.max_qp_wr.max(1));
        let mut cqs = lock(&self.cqs);
        // Completion queues that no living queue pair uses are let go (the first is kept for
        // the next connection): a peak of connections does not keep its queues for ever.
        let mut index = 0;
        cqs.retain_mut(|shared| {
            index += 1;
            index == 1 || shared.room() < shared.cq.entries()
        });
        loop {
            let found = cqs.iter_mut().position(|shared| shared.room() >= need);
            let index = match found {
                Some(index) => index,
                None => {
                    cqs.push(self.new_cq(need)?);
                    cqs.len() - 1
                }
            };
            let cq = cqs[index].cq.clone();
            let qp = QueuePair::new(&self.pd, &cq, &cq, options)?;
            let caps = qp.caps();
            let fills = caps.max_send_wr + caps.max_recv_wr;
            let entry = &mut cqs[index];
            if fills <= entry.room() {
                entry.admitted.push((Arc::downgrade(&qp.shared), fills));
                return Ok(qp);
            }
            // The device made deeper queues than asked: find room for what it made.
            need = fills;
        }
    }

    /// A new shared completion queue, with the options' entries or, for a deeper queue
    /// pair, `need`.
    fn new_cq(&self, need: u32) -> Result<SharedCq> {
        let ctx = self.pd.context();
        let max_cqe = ctx.limits().max_cqe;
        if need > max_cqe {
            return Err(Error::InvalidArgument(format!(
                "a queue pair with send and receive queues of {need} entries in all does not \
                 fit a completion queue of this device (at most {max_cqe} entries): lower \
                 ConnectionOptions::qp's max_send_wr and max_recv_wr"
            )));
        }
        let options = CqOptions {
            entries: self.cq_options.entries.max(need),
            ..self.cq_options
        };
        let cq = CompletionQueue::new(ctx, options)?;
        if cq.entries() < need {
            return Err(Error::InvalidArgument(format!(
                "the device made a completion queue of {} entries where {need} were asked: \
                 lower ConnectionOptions::qp's max_send_wr and max_recv_wr",
                cq.entries()
            )));
        }
        Ok(SharedCq {
            cq,
            admitted: Vec::new(),
        })
    }
}
