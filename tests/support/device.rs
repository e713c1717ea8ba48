//! The device check and the rdma_cm address of every device test, in the `anyrdma` package
//! and in the `anyrdma-ecosystem` and `anyrdma-perf` packages, which include this file by its
//! path (their dependencies must stay out of the `anyrdma` package's tests).

use std::net::IpAddr;

/// True when an RDMA device is present. With none: when `ANYRDMA_REQUIRE_DEVICE=1` (as CI
/// and `scripts/test` set it inside the VM) the test fails; otherwise it says loudly that it
/// is skipped and returns false.
pub fn device_present(test: &str) -> bool {
    let found = matches!(anyrdma::devices(), Ok(list) if !list.is_empty());
    if !found {
        if std::env::var("ANYRDMA_REQUIRE_DEVICE").as_deref() == Ok("1") {
            panic!("{test}: no RDMA device, and ANYRDMA_REQUIRE_DEVICE=1 requires one");
        }
        eprintln!("SKIPPED {test}: no RDMA device here (run scripts/test, which uses the VM)");
    }
    found
}

/// The address rdma_cm tests connect and listen on: rxe0's in the guest, 169.254.77.1
/// (rdma_cm cannot route 127.0.0.1); `ANYRDMA_TEST_CM_ADDR` overrides it.
pub fn cm_ip() -> IpAddr {
    std::env::var("ANYRDMA_TEST_CM_ADDR")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(IpAddr::from([169, 254, 77, 1]))
}
