//! Device discovery against the Soft-RoCE devices of the project VM (`scripts/rxe-vm`):
//! `rxe0` on `dummy0` (169.254.77.1) and `rxe_lo` on `lo`, both RoCE v2 at GID index 1.
//! Without a device these tests skip, unless `ANYRDMA_REQUIRE_DEVICE=1`.

mod support;

use std::net::Ipv4Addr;

use anyrdma::{DeviceInfo, DeviceSpec, Error, GidType, PortSelection, PortState};

fn device<'a>(list: &'a [DeviceInfo], name: &str) -> &'a DeviceInfo {
    list.iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("no device {name} in {:?}", names(list)))
}

fn names(list: &[DeviceInfo]) -> Vec<&str> {
    list.iter().map(|d| d.name.as_str()).collect()
}

#[test]
fn lists_both_rxe_devices_with_active_roce_v2_ports() {
    if !support::device_present("lists_both_rxe_devices_with_active_roce_v2_ports") {
        return;
    }
    let list = anyrdma::devices().expect("devices()");
    for name in ["rxe0", "rxe_lo"] {
        let dev = device(&list, name);
        assert_ne!(dev.node_guid, 0, "{dev}");
        assert!(
            dev.max_qp_wr > 0 && dev.max_sge > 0 && dev.max_cqe > 0,
            "{dev}"
        );
        let port = dev
            .active_ports()
            .find(|p| p.gids.iter().any(|g| g.kind == GidType::RoceV2))
            .unwrap_or_else(|| panic!("{name} has no ACTIVE port with a RoCE v2 GID:\n{dev}"));
        assert_eq!(port.state, PortState::Active);
        assert!((256..=4096).contains(&port.active_mtu), "{dev}");
        assert!(port.gids.iter().all(|g| !g.gid.is_zero()), "{dev}");
    }
}

#[test]
fn rxe0_has_the_dummy0_ipv4_gid() {
    if !support::device_present("rxe0_has_the_dummy0_ipv4_gid") {
        return;
    }
    let list = anyrdma::devices().expect("devices()");
    let dev = device(&list, "rxe0");
    let gid = dev
        .ports
        .iter()
        .flat_map(|p| &p.gids)
        .find(|g| {
            g.kind == GidType::RoceV2 && g.gid.to_ipv4() == Some(Ipv4Addr::new(169, 254, 77, 1))
        })
        .unwrap_or_else(|| panic!("rxe0 has no RoCE v2 GID for 169.254.77.1:\n{dev}"));
    assert_eq!(gid.netdev.as_deref(), Some("dummy0"), "{dev}");
    assert_eq!(gid.gid.to_string(), "::ffff:169.254.77.1");
    let text = dev.to_string();
    assert!(
        text.contains("::ffff:169.254.77.1") && text.contains("dummy0"),
        "{text}"
    );
}

#[test]
fn default_port_is_active_roce_v2() {
    if !support::device_present("default_port_is_active_roce_v2") {
        return;
    }
    let chosen = anyrdma::default_port().expect("default_port()");
    assert_eq!(chosen.gid_type, GidType::RoceV2, "{chosen}");
    assert!(
        chosen.gid.to_ipv4().is_some(),
        "prefers the IPv4 GID: {chosen}"
    );
    let list = anyrdma::devices().expect("devices()");
    let port = device(&list, &chosen.device)
        .port(chosen.port)
        .expect("the chosen port exists");
    assert_eq!(port.state, PortState::Active);
    assert_eq!(port.gid(chosen.gid_index).map(|g| g.gid), Some(chosen.gid));
    assert_eq!(chosen.mtu, port.active_mtu);
}

#[test]
fn anyrdma_device_selects_rxe_lo() {
    if !support::device_present("anyrdma_device_selects_rxe_lo") {
        return;
    }
    // What ANYRDMA_DEVICE=rxe_lo means, without mutating the environment of a threaded test.
    let spec: DeviceSpec = "rxe_lo".parse().expect("parse");
    assert_eq!(
        spec,
        DeviceSpec {
            name: "rxe_lo".into(),
            port: None,
            gid_index: None
        }
    );
    let by_spec = PortSelection::for_spec(&spec).expect("for_spec(rxe_lo)");
    let by_name = PortSelection::for_device("rxe_lo").expect("for_device(rxe_lo)");
    assert_eq!(by_spec, by_name);
    assert_eq!(by_name.device, "rxe_lo");
    assert_eq!(by_name.gid_index, 1, "{by_name}");
    assert_eq!(
        by_name.gid.to_ipv4(),
        Some(Ipv4Addr::LOCALHOST),
        "{by_name}"
    );

    let explicit = PortSelection::for_spec(&"rxe0:1:0".parse().unwrap()).expect("rxe0:1:0");
    assert_eq!(
        (explicit.device.as_str(), explicit.port, explicit.gid_index),
        ("rxe0", 1, 0)
    );
}

#[test]
fn unknown_device_is_no_device() {
    if !support::device_present("unknown_device_is_no_device") {
        return;
    }
    match PortSelection::for_device("mlx5_nonexistent") {
        Err(Error::NoDevice {
            wanted: Some(name),
            available,
        }) => {
            assert_eq!(name, "mlx5_nonexistent");
            assert!(
                available.iter().any(|d| d == "rxe0") && available.iter().any(|d| d == "rxe_lo"),
                "{available:?}"
            );
        }
        other => panic!("expected NoDevice(mlx5_nonexistent), got {other:?}"),
    }
    assert!(matches!(
        PortSelection::for_spec(&"rxe0:9".parse().unwrap()),
        Err(Error::InvalidArgument(_))
    ));
}
