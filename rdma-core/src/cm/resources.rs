//! The protection domain and completion queue that the connections of one device share.
//!
//! A process keeps one set per device port, runtime and completion-queue setting, made by
//! the first connection that needs it and freed with the last connection that holds it, so
//! that a thousand connections do not mean a thousand completion queues and channels.

use std::sync::{Arc, Mutex, Weak};

use super::options::{ConnectionOptions, ConnectionResources};
use crate::context::Context;
use crate::cq::{CompletionQueue, CqOptions, PollMode};
use crate::device::{DeviceSpec, PortSelection};
use crate::error::{Error, Result};
use crate::runtime::RuntimeHandle;
use crate::wake::lock;

/// What the connections of one device port share.
pub(crate) struct DeviceShare {
    pub(crate) resources: ConnectionResources,
}

#[derive(PartialEq)]
struct Key {
    device: String,
    port: u8,
    runtime: &'static str,
    poll_mode: PollMode,
    cq_entries: u32,
}

static SHARED: Mutex<Vec<(Key, Weak<DeviceShare>)>> = Mutex::new(Vec::new());

/// The resources a connection through `device` port `port` uses: the options' own (checked
/// to be of that device), or the shared ones (made on first use). The second value keeps
/// shared ones alive.
pub(crate) fn for_connection(
    device: &str,
    port: u8,
    runtime: &RuntimeHandle,
    options: &ConnectionOptions,
) -> Result<(ConnectionResources, Option<Arc<DeviceShare>>)> {
    if let Some(own) = &options.resources {
        let has = own.pd.context().device_name();
        if has != device {
            return Err(Error::InvalidArgument(format!(
                "the connection's route goes through device {device}, but the protection \
                 domain in ConnectionOptions::resources is of {has}: give resources of \
                 {device}, or none to use the shared ones"
            )));
        }
        return Ok((own.clone(), None));
    }
    let key = Key {
        device: device.to_owned(),
        port,
        runtime: runtime.name(),
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
        return Ok((share.resources.clone(), Some(share)));
    }
    let selection = PortSelection::for_spec(&DeviceSpec {
        name: device.to_owned(),
        port: Some(port),
        gid_index: None,
    })?;
    let ctx = Context::open_port(&selection)?.with_runtime(runtime.clone());
    let pd = ctx.alloc_pd()?;
    let cq = CompletionQueue::new(
        &ctx,
        CqOptions {
            entries: options.cq_entries,
            poll_mode: options.poll_mode,
        },
    )?;
    let share = Arc::new(DeviceShare {
        resources: ConnectionResources {
            pd,
            send_cq: cq.clone(),
            recv_cq: cq,
        },
    });
    shared.push((key, Arc::downgrade(&share)));
    Ok((share.resources.clone(), Some(share)))
}
