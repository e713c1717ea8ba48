//! The control channel between client and server: a TCP connection that carries the
//! greeting, what to measure next, the queue pairs' endpoints and regions, and the barriers
//! around each timed loop. It is blocking and used only between timed sections, as perftest
//! uses its own TCP exchange.
//!
//! A session: the client sends its greeting (protocol version, the address the server's
//! rdma_cm listeners bind), the server answers with its own (version, device); then, per
//! measurement, `S` and a [`Spec`], both sides run it, and `E` ends the session.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};

use anyrdma::{Endpoint, RemoteRegion};

use crate::catalog::{Mode, Rt, Test};
use crate::Res;

/// The greeting's first bytes, so that a stray connection is refused at once.
const MAGIC: &[u8; 8] = b"anyrdmaP";
/// Changes whenever the messages change: client and server must agree.
pub const PROTOCOL: u16 = 1;
/// The next message is a [`Spec`].
pub const MEASURE: u8 = b'S';
/// The session is over.
pub const END: u8 = b'E';

/// The largest message size a measurement may ask for (buffers are registered per test).
pub const MAX_SIZE: usize = 1 << 30;
/// The most registered memory one measurement may ask a side for.
const MAX_MEMORY: usize = 4 << 30;
/// The most iterations of one measurement (a latency test keeps a time stamp for each).
pub const MAX_ITERS: usize = 100_000_000;
/// The most queue pairs of one measurement.
pub const MAX_QPS: usize = 1024;
/// The most work requests in flight per queue pair.
pub const MAX_WINDOW: usize = 8192;
/// The most concurrent senders of `msg_rate`.
pub const MAX_SENDERS: usize = 4096;

/// One measurement, as the client asks the server for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// What is measured.
    pub test: Test,
    /// On which runtime (both sides run the same).
    pub rt: Rt,
    /// With which poll mode.
    pub mode: Mode,
    /// Bytes per message.
    pub size: usize,
    /// Round trips (latency) or messages per queue pair (rates).
    pub iters: usize,
    /// Queue pairs.
    pub qps: usize,
    /// Work requests per doorbell (rates).
    pub batch: usize,
    /// Work requests in flight per queue pair (rates).
    pub window: usize,
    /// Largest inline send or write.
    pub inline: u32,
    /// Concurrent senders (`msg_rate`).
    pub senders: usize,
}

impl Spec {
    /// Its length on the wire.
    pub const LEN: usize = 3 + 4 * 7;

    /// The bytes the client sends.
    pub fn encode(&self) -> [u8; Spec::LEN] {
        let mut b = [0u8; Spec::LEN];
        b[0] = self.test.code();
        b[1] = self.rt.code();
        b[2] = self.mode.code();
        let words = [
            self.size,
            self.iters,
            self.qps,
            self.batch,
            self.window,
            self.inline as usize,
            self.senders,
        ];
        for (i, v) in words.iter().enumerate() {
            // Checked by `check` before it is sent: every field fits.
            let v = u32::try_from(*v).unwrap_or(u32::MAX);
            b[3 + 4 * i..7 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// The measurement in `b`, as the server receives it; an unknown test, runtime or mode,
    /// or values out of range, are refused.
    pub fn decode(b: &[u8; Spec::LEN]) -> Res<Spec> {
        let word = |i: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&b[3 + 4 * i..7 + 4 * i]);
            u32::from_le_bytes(w) as usize
        };
        let spec = Spec {
            test: Test::from_code(b[0]).ok_or_else(|| format!("unknown test number {}", b[0]))?,
            rt: Rt::from_code(b[1]).ok_or_else(|| format!("unknown runtime number {}", b[1]))?,
            mode: Mode::from_code(b[2]).ok_or_else(|| format!("unknown mode number {}", b[2]))?,
            size: word(0),
            iters: word(1),
            qps: word(2),
            batch: word(3),
            window: word(4),
            inline: word(5) as u32,
            senders: word(6),
        };
        spec.check()?;
        Ok(spec)
    }

    /// Whether both sides can run it: the sizes and counts its buffers and queues are made
    /// of stay within bounds (the client checks before it asks, the server before it runs).
    pub fn check(&self) -> Res<()> {
        let name = self.test.name();
        let within = |what: &str, v: usize, lo: usize, hi: usize| -> Res<()> {
            if v < lo || v > hi {
                return Err(format!("{name}: {what} {v} is outside {lo}..={hi}").into());
            }
            Ok(())
        };
        within("size", self.size, 1, MAX_SIZE)?;
        within("iterations", self.iters, 1, MAX_ITERS)?;
        within("queue pairs", self.qps, 1, MAX_QPS)?;
        within("window", self.window, 1, MAX_WINDOW)?;
        within("batch", self.batch, 1, self.window)?;
        within("senders", self.senders, 1, MAX_SENDERS)?;
        // The receive side of send_rate keeps 2 windows (at least 512) of buffers per queue pair.
        let buffers = self.qps * (2 * self.window).max(512);
        if self.test.is_rate() && self.size.saturating_mul(buffers) > MAX_MEMORY {
            return Err(format!(
                "{name}: {} queue pairs of {} buffers of {} bytes is more memory than {} GiB",
                self.qps,
                buffers / self.qps,
                self.size,
                MAX_MEMORY >> 30
            )
            .into());
        }
        if !self.rt.runs(self.test) || self.qps > 1 && self.rt == Rt::Raw {
            return Err(format!(
                "{name}: raw verbs measure the latency of single operations on one queue pair \
                 only (perftest gives the raw rates)"
            )
            .into());
        }
        Ok(())
    }
}

/// What the client says first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The server's address its rdma_cm listeners bind (the stream and `cm_msg` rows).
    pub cm: Option<IpAddr>,
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// The device, port and GID the server measures with.
    pub device: String,
}

/// Sends the client's greeting and reads the server's answer.
pub fn greet_server(ctl: &mut TcpStream, hello: &ClientHello) -> Res<ServerHello> {
    let mut out = Vec::with_capacity(27);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&PROTOCOL.to_le_bytes());
    out.extend_from_slice(&encode_ip(hello.cm));
    send_all(ctl, &out)?;
    let version = read_greeting(ctl, "the server")?;
    if version != PROTOCOL {
        return Err(format!(
            "the server speaks protocol {version}, this client {PROTOCOL}: run the same \
             anyrdma-perf version on both hosts"
        )
        .into());
    }
    let [len] = recv_exact::<1>(ctl)?;
    let mut name = vec![0u8; usize::from(len)];
    ctl.read_exact(&mut name)?;
    Ok(ServerHello {
        device: String::from_utf8_lossy(&name).into_owned(),
    })
}

/// Reads the client's greeting and answers it with the server's (also to a client of
/// another version, which then says so).
pub fn greet_client(ctl: &mut TcpStream, hello: &ServerHello) -> Res<ClientHello> {
    let version = read_greeting(ctl, "the client")?;
    let cm = decode_ip(&recv_exact::<17>(ctl)?)?;
    let mut out = Vec::with_capacity(11 + hello.device.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&PROTOCOL.to_le_bytes());
    let device = &hello.device.as_bytes()[..hello.device.len().min(255)];
    out.push(device.len() as u8);
    out.extend_from_slice(device);
    send_all(ctl, &out)?;
    if version != PROTOCOL {
        return Err(format!("a client of protocol {version} (this server's is {PROTOCOL})").into());
    }
    Ok(ClientHello { cm })
}

/// Reads the magic bytes and the protocol version of `who`'s greeting.
fn read_greeting(ctl: &mut TcpStream, who: &str) -> Res<u16> {
    let magic = recv_exact::<8>(ctl)?;
    if &magic != MAGIC {
        return Err(format!("{who} is not anyrdma-perf (it sent {magic:?})").into());
    }
    Ok(u16::from_le_bytes(recv_exact::<2>(ctl)?))
}

/// An optional IP address in 17 bytes: 0, 4 or 6, then the address.
fn encode_ip(ip: Option<IpAddr>) -> [u8; 17] {
    let mut b = [0u8; 17];
    match ip {
        None => {}
        Some(IpAddr::V4(v4)) => {
            b[0] = 4;
            b[1..5].copy_from_slice(&v4.octets());
        }
        Some(IpAddr::V6(v6)) => {
            b[0] = 6;
            b[1..].copy_from_slice(&v6.octets());
        }
    }
    b
}

fn decode_ip(b: &[u8; 17]) -> Res<Option<IpAddr>> {
    Ok(match b[0] {
        0 => None,
        4 => Some(IpAddr::from([b[1], b[2], b[3], b[4]])),
        6 => {
            let mut v6 = [0u8; 16];
            v6.copy_from_slice(&b[1..]);
            Some(IpAddr::from(v6))
        }
        kind => return Err(format!("an address of kind {kind}").into()),
    })
}

/// Writes all of `b`.
pub fn send_all(ctl: &mut TcpStream, b: &[u8]) -> Res<()> {
    ctl.write_all(b)?;
    Ok(())
}

/// Reads exactly `N` bytes.
pub fn recv_exact<const N: usize>(ctl: &mut TcpStream) -> Res<[u8; N]> {
    let mut b = [0u8; N];
    ctl.read_exact(&mut b)?;
    Ok(b)
}

/// Both sides call it: returns once the other side called it too.
pub fn barrier(ctl: &mut TcpStream) -> Res<()> {
    send_all(ctl, b"B")?;
    let [b] = recv_exact::<1>(ctl)?;
    if b != b'B' {
        return Err(format!("control channel out of step (got {b})").into());
    }
    Ok(())
}

/// Sends this side's endpoints and target region, returns the peer's.
pub fn exchange(
    ctl: &mut TcpStream,
    mine: &[Endpoint],
    target: RemoteRegion,
) -> Res<(Vec<Endpoint>, RemoteRegion)> {
    let mut out = Vec::new();
    for e in mine {
        out.extend_from_slice(&e.to_bytes());
    }
    out.extend_from_slice(&target.to_bytes());
    send_all(ctl, &out)?;
    let mut peers = Vec::new();
    for _ in mine {
        let bytes = recv_exact::<{ Endpoint::ENCODED_LEN }>(ctl)?;
        peers.push(Endpoint::from_bytes(&bytes)?);
    }
    let bytes = recv_exact::<{ RemoteRegion::ENCODED_LEN }>(ctl)?;
    let region = RemoteRegion::from_bytes(&bytes)?;
    Ok((peers, region))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            test: Test::SendRate,
            rt: Rt::Smol,
            mode: Mode::Event,
            size: 64,
            iters: 5000,
            qps: 4,
            batch: 16,
            window: 128,
            inline: 0,
            senders: 1,
        }
    }

    #[test]
    fn a_spec_goes_over_the_wire_unchanged() {
        let s = spec();
        assert_eq!(Spec::decode(&s.encode()).expect("valid"), s);
    }

    #[test]
    fn the_server_refuses_what_it_cannot_run() {
        let mut bad = spec().encode();
        bad[0] = 99;
        assert!(Spec::decode(&bad).is_err(), "unknown test");
        let mut bad = spec().encode();
        bad[1] = 9;
        assert!(Spec::decode(&bad).is_err(), "unknown runtime");
        for broken in [
            Spec { size: 0, ..spec() },
            Spec { qps: 0, ..spec() },
            Spec { batch: 0, ..spec() },
            Spec {
                batch: 256,
                ..spec()
            },
            Spec {
                window: 0,
                ..spec()
            },
            Spec { iters: 0, ..spec() },
            Spec {
                size: MAX_SIZE,
                ..spec()
            },
            Spec {
                rt: Rt::Raw,
                ..spec()
            },
            Spec {
                test: Test::SendLat,
                rt: Rt::Raw,
                qps: 2,
                batch: 1,
                ..spec()
            },
        ] {
            assert!(
                Spec::decode(&broken.encode()).is_err(),
                "accepted {broken:?}"
            );
        }
    }

    #[test]
    fn addresses_go_over_the_wire_unchanged() {
        for ip in [
            None,
            Some(IpAddr::from([169, 254, 77, 1])),
            Some("fe80::1".parse().expect("ip")),
        ] {
            assert_eq!(decode_ip(&encode_ip(ip)).expect("valid"), ip);
        }
        let mut bad = encode_ip(None);
        bad[0] = 5;
        assert!(decode_ip(&bad).is_err());
    }
}
