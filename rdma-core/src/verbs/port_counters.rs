//! The counters a device keeps for a port, as the kernel shows them in sysfs: what an operator
//! reads to see traffic, errors and drops that no completion reports (a datagram that found no
//! receive posted is dropped by the device without a word to anyone).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};

/// A snapshot of a port's counters: the standard port counters
/// (`/sys/class/infiniband/DEVICE/ports/PORT/counters`, e.g. `port_rcv_packets`,
/// `port_rcv_errors`) and the driver's own (`.../hw_counters`, e.g. mlx5's `out_of_buffer`,
/// Soft-RoCE's `rcvd_pkts`), by the names the kernel gives them. Which exist depends on the
/// driver: look a name up with [`get`](PortCounters::get), which says `None` for one the
/// device does not keep.
///
/// Counters only grow (until the driver resets them): compare two snapshots.
///
/// ```no_run
/// # fn demo(ctx: &anyrdma_core::Context) -> anyrdma_core::Result<()> {
/// let counters = ctx.port_counters()?;
/// match counters.receive_queue_drops() {
///     Some(dropped) => println!("{dropped} messages found no receive posted"),
///     None => println!("{} does not count drops for want of a receive", ctx.device_name()),
/// }
/// for (name, value) in counters.iter() {
///     println!("{name} {value}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortCounters {
    values: BTreeMap<String, u64>,
}

/// The driver counters that count messages dropped because the receive queue they were for
/// had no receive posted (for datagrams, the only trace such a loss leaves): mlx5's
/// `out_of_buffer` ("drops due to lack of WQE for the associated QPs").
const RECEIVE_QUEUE_DROPS: &[&str] = &["out_of_buffer"];

impl PortCounters {
    /// Reads the counters of `port` of `device` under `root` (sysfs' `/sys/class/infiniband`).
    pub(crate) fn read(root: &Path, device: &str, port: u8) -> Result<PortCounters> {
        let port_dir = root.join(device).join("ports").join(port.to_string());
        if !port_dir.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{device} has no port {port} in {} (is it still there?)",
                root.display()
            )));
        }
        let mut values = BTreeMap::new();
        // The driver's own last: a name in both is the driver's count.
        for dir in ["counters", "hw_counters"] {
            let Ok(entries) = std::fs::read_dir(port_dir.join(dir)) else {
                continue; // a driver without this set
            };
            for entry in entries.flatten() {
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                // Unreadable files (some need privileges) and settings that are not numbers
                // (hw_counters' `lifespan` is one) are left out.
                if let Some(value) = std::fs::read_to_string(entry.path())
                    .ok()
                    .and_then(|text| text.trim().parse::<u64>().ok())
                {
                    values.insert(name, value);
                }
            }
        }
        Ok(PortCounters { values })
    }

    /// The counter `name`, or `None` when the device keeps no counter of that name.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.values.get(name).copied()
    }

    /// Every counter, by name in alphabetical order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.values
            .iter()
            .map(|(name, &value)| (name.as_str(), value))
    }

    /// Messages the device dropped because their receive queue had no receive posted, where
    /// the device counts them (mlx5: `out_of_buffer`); `None` where it does not (Soft-RoCE
    /// drops such datagrams without counting them). The count is the port's, for all its
    /// queue pairs, not one queue pair's.
    pub fn receive_queue_drops(&self) -> Option<u64> {
        RECEIVE_QUEUE_DROPS.iter().find_map(|name| self.get(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_sets_skips_what_is_not_a_number_and_prefers_the_drivers() {
        let root = std::env::temp_dir().join(format!("anyrdma-counters-{}", std::process::id()));
        let port = root.join("mlx5_0/ports/1");
        std::fs::create_dir_all(port.join("counters")).unwrap();
        std::fs::create_dir_all(port.join("hw_counters")).unwrap();
        std::fs::write(port.join("counters/port_rcv_packets"), "1234\n").unwrap();
        std::fs::write(port.join("counters/same"), "1\n").unwrap();
        std::fs::write(port.join("hw_counters/out_of_buffer"), "7\n").unwrap();
        std::fs::write(port.join("hw_counters/same"), "2\n").unwrap();
        std::fs::write(port.join("hw_counters/lifespan"), "10 ms\n").unwrap();

        let counters = PortCounters::read(&root, "mlx5_0", 1).unwrap();
        assert_eq!(counters.get("port_rcv_packets"), Some(1234));
        assert_eq!(counters.get("same"), Some(2), "the driver's count wins");
        assert_eq!(counters.get("lifespan"), None);
        assert_eq!(counters.receive_queue_drops(), Some(7));
        assert_eq!(
            counters.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            ["out_of_buffer", "port_rcv_packets", "same"]
        );
        assert!(matches!(
            PortCounters::read(&root, "mlx5_0", 2),
            Err(Error::InvalidArgument(_))
        ));
        std::fs::remove_file(port.join("hw_counters/out_of_buffer")).unwrap();
        let counters = PortCounters::read(&root, "mlx5_0", 1).unwrap();
        assert_eq!(counters.receive_queue_drops(), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
