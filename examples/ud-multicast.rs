//! Datagram multicast: queue pairs join a group by its IP address, one sends, every member
//! receives.
//!
//!     cargo run --example ud-multicast --features tokio -- \
//!         --join 239.1.2.3 --bind 169.254.77.1 --members 4 --count 1000 --size 64
//!     cargo run --example ud-multicast --features smol -- --join 239.1.2.3 --receive
//!     cargo run --example ud-multicast --features smol -- --join 239.1.2.3 --send --count 100
//!
//! `--bind` is a local address of the RDMA device to join from (on RoCE it may be left out:
//! the device's IPv4 address is used). By default the program makes `--members N` queue
//! pairs that join the group and one queue pair that is no member, which sends `--count`
//! datagrams of `--size` bytes (at most the path MTU) to the group in rounds of 32; it checks
//! that every member got every datagram of each round, every byte of it, from the sender's
//! queue pair, and prints what arrived. With `--receive` it is one member that prints each
//! datagram as it comes (until `--count` of them, default: forever); with `--send` one member
//! that sends `--count` datagrams, `--interval-ms` apart, to members elsewhere. Leaving the
//! group is dropping the membership. `--help` lists the options.

#[path = "common/mod.rs"]
mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyrdma::ud::{Membership, MulticastOptions, UdOptions, UdQueuePair};
use anyrdma::{Access, CompletionQueue, Context, CqOptions, Error, ProtectionDomain, Result};
use clap::Parser;

/// Datagram multicast: queue pairs join a group by its IP address, one sends, every member
/// receives and checks every datagram (or, with --receive or --send, this program is one
/// member that only receives or only sends).
#[derive(Parser)]
#[command(name = "ud-multicast", version, args_override_self = true)]
struct Args {
    /// The multicast group's IP address.
    #[arg(long, value_name = "GROUP")]
    join: String,
    /// A local address of the RDMA device to join from [default: the device's IPv4 address].
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
    /// Members that join the group (without --receive and --send).
    #[arg(long, default_value_t = 4)]
    members: usize,
    /// Datagrams to send [default: 1000; with --send 100; with --receive 0, forever].
    #[arg(long)]
    count: Option<u64>,
    /// Bytes per datagram (at most the path MTU).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Be one member that prints each datagram as it comes.
    #[arg(long, conflicts_with = "send")]
    receive: bool,
    /// Be one member that sends to members elsewhere.
    #[arg(long)]
    send: bool,
    /// With --send: milliseconds between datagrams.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
}

/// Datagrams sent before the members' receives are awaited (and posted again).
const ROUND: usize = 32;

/// How long a member waits for a datagram of its round before counting it lost.
const PATIENCE: Duration = Duration::from_secs(1);

/// What datagram `seq` holds: the sequence number, then bytes that depend on it.
fn fill(message: &mut [u8], seq: u64) {
    for (at, byte) in message.iter_mut().enumerate() {
        *byte = (seq as usize).wrapping_mul(131).wrapping_add(at) as u8;
    }
    let tag = seq.to_le_bytes();
    let n = message.len().min(tag.len());
    message[..n].copy_from_slice(&tag[..n]);
}

struct Setup {
    group: IpAddr,
    options: MulticastOptions,
    pd: ProtectionDomain,
    cq: CompletionQueue,
}

impl Setup {
    /// Opens the device behind `--bind` (the default device without one).
    fn new(group: &str, bind: Option<&str>) -> Result<Setup> {
        let group: IpAddr = group
            .parse()
            .map_err(|_| Error::InvalidArgument(format!("{group:?} is not an IP address")))?;
        let bind = bind
            .map(|text| anyrdma::cm::parse_addr(text, 0).map(|addr| addr.ip()))
            .transpose()?;
        let ctx = match bind {
            Some(ip) => open_device_of(ip)?,
            None => Context::open_default()?,
        };
        let pd = ctx.alloc_pd()?;
        let cq = CompletionQueue::new(&ctx, CqOptions::default())?;
        let options = MulticastOptions {
            bind,
            ..MulticastOptions::default()
        };
        Ok(Setup {
            group,
            options,
            pd,
            cq,
        })
    }

    fn qp(&self) -> Result<UdQueuePair> {
        UdQueuePair::new(&self.pd, &self.cq, &self.cq, UdOptions::default())
    }

    async fn member(&self) -> Result<(UdQueuePair, Membership)> {
        let qp = self.qp()?;
        let membership = qp.join_with(self.group, self.options.clone()).await?;
        Ok((qp, membership))
    }
}

/// Opens the device and port whose GID table holds `ip` (RoCE: the interface's addresses).
fn open_device_of(ip: IpAddr) -> Result<Context> {
    let holds = |gid: &anyrdma::device::Gid| match ip {
        IpAddr::V4(v4) => gid.to_ipv4() == Some(v4),
        IpAddr::V6(v6) => gid.to_ipv6() == v6,
    };
    for device in anyrdma::devices()? {
        for port in device.active_ports() {
            if port.gids.iter().any(|entry| holds(&entry.gid)) {
                let spec = anyrdma::device::DeviceSpec {
                    name: device.name.clone(),
                    port: Some(port.number),
                    gid_index: None,
                };
                return Context::open_port(&anyrdma::device::PortSelection::for_spec(&spec)?);
            }
        }
    }
    Err(Error::InvalidArgument(format!(
        "no active RDMA port has the address {ip} (`rdma link` lists the devices and their \
         interfaces)"
    )))
}

/// Members and a sender in this process: every member must get every datagram.
async fn members_and_sender(setup: Setup, members: usize, count: u64, size: usize) -> Result<()> {
    let mut joined = Vec::new();
    for _ in 0..members {
        joined.push(setup.member().await?);
    }
    let sender = setup.qp()?;
    let mtu = sender.max_datagram();
    if size > mtu {
        return Err(Error::DatagramTooLarge {
            len: size,
            mtu: mtu as u32,
            device: setup.pd.context().device_name().to_owned(),
        });
    }
    let to_group = joined[0].1.peer().clone();
    println!(
        "ud-multicast: {members} members of {} (MGID {}), sender queue pair {}",
        setup.group,
        joined[0].1.mgid(),
        sender.qpn()
    );
    let started = Instant::now();
    let (mut received, mut lost) = (0u64, 0u64);
    let mut expected = vec![0; size];
    let mut message = setup.pd.alloc(size.max(1), Access::LOCAL)?;
    let mut seq = 0;
    while seq < count {
        let round = (count - seq).min(ROUND as u64);
        // Receives first: a datagram that finds none is lost.
        let mut inboxes = Vec::new();
        for (qp, _) in &joined {
            let mut posted = Vec::new();
            for _ in 0..round {
                posted.push(qp.recv(setup.pd.alloc(mtu, Access::LOCAL)?));
            }
            inboxes.push(posted);
        }
        for n in seq..seq + round {
            fill(&mut expected, n);
            message[..size].copy_from_slice(&expected);
            let tail = message.split_off(size);
            let (sent, mut back) = sender.send_to(message, &to_group).await;
            back.unsplit(tail).expect("the tail follows its head");
            message = back;
            sent?;
        }
        for (m, posted) in inboxes.into_iter().enumerate() {
            for (i, recv) in posted.into_iter().enumerate() {
                let n = seq + i as u64;
                let Ok((got, buf)) = anyrdma::timeout(PATIENCE, recv).await else {
                    lost += 1;
                    continue;
                };
                let got = got?;
                fill(&mut expected, n);
                if got.len != size || buf[..size] != *expected || got.src_qpn != sender.qpn() {
                    return Err(Error::InvalidArgument(format!(
                        "member {m}: datagram {n} is not the one sent ({} bytes from queue \
                         pair {})",
                        got.len, got.src_qpn
                    )));
                }
                received += 1;
            }
        }
        seq += round;
    }
    let elapsed = started.elapsed();
    println!(
        "ud-multicast: {count} datagrams of {size} bytes to {members} members: {received} \
         received (every byte checked), {lost} lost, in {:.1} ms",
        elapsed.as_secs_f64() * 1e3
    );
    if received != count * members as u64 {
        return Err(Error::InvalidArgument(format!(
            "{lost} datagrams were lost on the way to the members"
        )));
    }
    // Leaving is dropping the memberships.
    drop(joined);
    Ok(())
}

/// One member, printing what arrives.
async fn receive(setup: Setup, count: u64) -> Result<()> {
    let (qp, membership) = setup.member().await?;
    println!(
        "ud-multicast: queue pair {} joined {} (MGID {})",
        qp.qpn(),
        membership.group(),
        membership.mgid()
    );
    let mut got_so_far = 0u64;
    let mut next = qp.recv(setup.pd.alloc(qp.max_datagram(), Access::LOCAL)?);
    while count == 0 || got_so_far < count {
        let (got, buf) = next.await;
        match got {
            Ok(got) if got.src_qpn == qp.qpn() => {}
            Ok(got) => {
                got_so_far += 1;
                let seq = (got.len >= 8).then(|| u64::from_le_bytes(buf[..8].try_into().unwrap()));
                println!(
                    "ud-multicast: {} bytes from queue pair {} at {}{}",
                    got.len,
                    got.src_qpn,
                    got.src_gid.map(|gid| gid.to_string()).unwrap_or_default(),
                    seq.map(|seq| format!(", number {seq}")).unwrap_or_default()
                );
            }
            Err(err @ Error::DatagramTruncated { .. }) => eprintln!("ud-multicast: {err}"),
            Err(err) => return Err(err),
        }
        next = qp.recv(buf);
    }
    Ok(())
}

/// One member, sending to the others.
async fn send(setup: Setup, count: u64, size: usize, interval: Duration) -> Result<()> {
    let (qp, membership) = setup.member().await?;
    let mut message = setup.pd.alloc(size.max(1), Access::LOCAL)?;
    for seq in 0..count {
        fill(&mut message[..size], seq);
        let tail = message.split_off(size);
        let (sent, mut back) = qp.send_to(message, membership.peer()).await;
        back.unsplit(tail).expect("the tail follows its head");
        message = back;
        sent?;
        anyrdma::sleep(interval).await;
    }
    println!(
        "ud-multicast: sent {count} datagrams of {size} bytes to {} from queue pair {}",
        membership.group(),
        qp.qpn()
    );
    Ok(())
}

fn main() {
    let args = Args::parse();
    let setup = match Setup::new(&args.join, args.bind.as_deref()) {
        Ok(setup) => setup,
        Err(err) => common::fail("ud-multicast", &err.to_string()),
    };
    let size = args.size;
    let result = if args.receive {
        common::block_on(receive(setup, args.count.unwrap_or(0)))
    } else if args.send {
        let interval = Duration::from_millis(args.interval_ms);
        common::block_on(send(setup, args.count.unwrap_or(100), size, interval))
    } else {
        let members = args.members.max(1);
        let count = args.count.unwrap_or(1000);
        common::block_on(members_and_sender(setup, members, count, size))
    };
    if let Err(err) = result {
        common::fail("ud-multicast", &err.to_string());
    }
}
