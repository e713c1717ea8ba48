//! What can be measured: the tests, the runtimes they run on and the completion queue's poll
//! modes, with the names the command line, the table and the JSON rows use.

use anyrdma::PollMode;
use clap::ValueEnum;

/// One kind of measurement (a row family of the results).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    /// RDMA write ping-pong, each side spinning on its buffer's last byte (`ib_write_lat`).
    WriteLat,
    /// Ping-pong of writes with immediate data, each side waiting on its receive completion.
    WriteImmLat,
    /// Ping-pong of sends (`ib_send_lat`).
    SendLat,
    /// RDMA read, the whole round trip (`ib_read_lat`).
    ReadLat,
    /// Writes kept in flight on one or more queue pairs (`ib_write_bw`).
    WriteRate,
    /// Sends kept in flight on one or more queue pairs (`ib_send_bw`).
    SendRate,
    /// `Messenger` send/recv ping-pong.
    MsgLat,
    /// `Messenger` one-way message rate and bandwidth.
    MsgRate,
    /// `RdmaStream` bandwidth (`write_all`).
    StreamBw,
    /// `RdmaStream` request/response round trip.
    StreamLat,
    /// `Messenger` bandwidth on an rdma_cm connection (the stream's reference).
    CmMsgBw,
    /// `Messenger` round trip on an rdma_cm connection (the stream's reference).
    CmMsgLat,
    /// The stream's bandwidth loop over the runtime's TCP.
    TcpBw,
    /// The stream's round trip over the runtime's TCP.
    TcpLat,
    /// `RdmaStream` bandwidth with `write_owned` (no copy).
    StreamOwnedBw,
    /// Datagram send ping-pong (`ib_send_lat -c UD`).
    UdSendLat,
    /// Datagram send rate (`ib_send_bw -c UD`).
    UdSendRate,
}

impl Test {
    /// Every test, in the order a run measures them.
    pub const ALL: [Test; 17] = [
        Test::WriteLat,
        Test::WriteImmLat,
        Test::SendLat,
        Test::ReadLat,
        Test::WriteRate,
        Test::SendRate,
        Test::MsgLat,
        Test::MsgRate,
        Test::StreamBw,
        Test::StreamLat,
        Test::CmMsgBw,
        Test::CmMsgLat,
        Test::TcpBw,
        Test::TcpLat,
        Test::StreamOwnedBw,
        Test::UdSendLat,
        Test::UdSendRate,
    ];

    /// The name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Test::WriteLat => "write_lat",
            Test::WriteImmLat => "write_imm_lat",
            Test::SendLat => "send_lat",
            Test::ReadLat => "read_lat",
            Test::WriteRate => "write_rate",
            Test::SendRate => "send_rate",
            Test::MsgLat => "msg_lat",
            Test::MsgRate => "msg_rate",
            Test::StreamBw => "stream_bw",
            Test::StreamLat => "stream_lat",
            Test::CmMsgBw => "cm_msg_bw",
            Test::CmMsgLat => "cm_msg_lat",
            Test::TcpBw => "tcp_bw",
            Test::TcpLat => "tcp_lat",
            Test::StreamOwnedBw => "stream_owned_bw",
            Test::UdSendLat => "ud_send_lat",
            Test::UdSendRate => "ud_send_rate",
        }
    }

    /// One line on what the test measures, for the table's headings.
    pub fn describe(self) -> &'static str {
        match self {
            Test::WriteLat => "RDMA write ping-pong, polling memory (as ib_write_lat)",
            Test::WriteImmLat => "write-with-immediate ping-pong, waiting on receives",
            Test::SendLat => "send/recv ping-pong (as ib_send_lat)",
            Test::ReadLat => "RDMA read, whole round trip (as ib_read_lat)",
            Test::WriteRate => "RDMA writes in flight (as ib_write_bw)",
            Test::SendRate => "sends in flight (as ib_send_bw)",
            Test::MsgLat => "Messenger send/recv ping-pong",
            Test::MsgRate => "Messenger messages one way",
            Test::StreamBw => "RdmaStream write_all, rdma_cm",
            Test::StreamLat => "RdmaStream request/response, rdma_cm",
            Test::CmMsgBw => "Messenger one way, rdma_cm",
            Test::CmMsgLat => "Messenger ping-pong, rdma_cm",
            Test::TcpBw => "the stream's loop over the runtime's TCP",
            Test::TcpLat => "the stream's round trip over the runtime's TCP",
            Test::StreamOwnedBw => "RdmaStream write_owned (no copy), rdma_cm",
            Test::UdSendLat => "datagram send ping-pong (as ib_send_lat -c UD)",
            Test::UdSendRate => "datagram sends in flight (as ib_send_bw -c UD)",
        }
    }

    /// The test named `name`, if any.
    pub fn from_name(name: &str) -> Option<Test> {
        Test::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Single operations kept in flight (`write_rate`, `send_rate`).
    pub fn is_rate(self) -> bool {
        matches!(self, Test::WriteRate | Test::SendRate)
    }

    /// Over the messaging layer rather than single operations.
    pub fn is_msg(self) -> bool {
        matches!(self, Test::MsgLat | Test::MsgRate)
    }

    /// A row of the byte stream's comparison (`streaming.rs`): connected by rdma_cm or TCP,
    /// not by the endpoint exchange.
    pub fn is_stream(self) -> bool {
        matches!(
            self,
            Test::StreamBw
                | Test::StreamOwnedBw
                | Test::StreamLat
                | Test::CmMsgBw
                | Test::CmMsgLat
                | Test::TcpBw
                | Test::TcpLat
        )
    }

    /// Over unreliable datagrams (`datagrams.rs`).
    pub fn is_ud(self) -> bool {
        matches!(self, Test::UdSendLat | Test::UdSendRate)
    }

    /// A round trip on one queue pair's single operations (the `lat` group).
    pub fn is_verbs_lat(self) -> bool {
        matches!(
            self,
            Test::WriteLat | Test::WriteImmLat | Test::SendLat | Test::ReadLat
        )
    }

    /// Over rdma_cm, so only with an address of the server's RDMA interface.
    pub fn needs_cm(self) -> bool {
        self.is_stream() && !matches!(self, Test::TcpBw | Test::TcpLat)
    }

    /// Reported as a rate (messages and bytes per second), not as latencies.
    pub fn is_throughput(self) -> bool {
        matches!(
            self,
            Test::WriteRate
                | Test::SendRate
                | Test::MsgRate
                | Test::StreamBw
                | Test::StreamOwnedBw
                | Test::CmMsgBw
                | Test::TcpBw
                | Test::UdSendRate
        )
    }

    /// A stream row measured in MB/s (the other stream rows are round trips).
    pub fn is_stream_bw(self) -> bool {
        matches!(
            self,
            Test::StreamBw | Test::StreamOwnedBw | Test::CmMsgBw | Test::TcpBw
        )
    }

    /// Its number on the control channel.
    pub fn code(self) -> u8 {
        Test::ALL
            .iter()
            .position(|t| *t == self)
            .expect("every test is listed") as u8
    }

    /// The test of control channel number `code`, if any.
    pub fn from_code(code: u8) -> Option<Test> {
        Test::ALL.get(usize::from(code)).copied()
    }
}

/// What the runtime is: one of anyrdma's, or the raw verbs loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Rt {
    /// Tokio's current-thread runtime.
    TokioCt,
    /// Tokio's multi-thread runtime with 2 workers (`tokio` names it too: what
    /// `#[tokio::main]` builds).
    #[value(alias = "tokio")]
    TokioMt,
    /// async-std.
    AsyncStd,
    /// smol.
    Smol,
    /// rdma-sys directly, a plain loop: the device's cost without anyrdma (latency tests only).
    Raw,
}

impl Rt {
    /// Every runtime, in the order a run measures them.
    pub const ALL: [Rt; 5] = [Rt::TokioCt, Rt::TokioMt, Rt::AsyncStd, Rt::Smol, Rt::Raw];

    /// The name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Rt::TokioCt => "tokio-ct",
            Rt::TokioMt => "tokio-mt",
            Rt::AsyncStd => "async-std",
            Rt::Smol => "smol",
            Rt::Raw => "raw",
        }
    }

    /// Its number on the control channel.
    pub fn code(self) -> u8 {
        Rt::ALL
            .iter()
            .position(|r| *r == self)
            .expect("every runtime is listed") as u8
    }

    /// The runtime of control channel number `code`, if any.
    pub fn from_code(code: u8) -> Option<Rt> {
        Rt::ALL.get(usize::from(code)).copied()
    }

    /// Whether `test` runs on this runtime: raw verbs measure the single-operation
    /// latencies only.
    pub fn runs(self, test: Test) -> bool {
        self != Rt::Raw || test.is_verbs_lat()
    }
}

/// How completion queues wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// `PollMode::Busy`: the completion queue is polled without sleeping (perftest's default).
    Busy,
    /// `PollMode::Event { spin: 0 }`: sleeping on the completion channel (perftest's `-e`).
    Event,
}

impl Mode {
    /// Both modes, in the order a run measures them.
    pub const ALL: [Mode; 2] = [Mode::Busy, Mode::Event];

    /// The name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Busy => "busy",
            Mode::Event => "event",
        }
    }

    /// anyrdma's poll mode for it.
    pub fn poll_mode(self) -> PollMode {
        match self {
            Mode::Busy => PollMode::Busy,
            Mode::Event => PollMode::Event { spin: 0 },
        }
    }

    /// Its number on the control channel.
    pub fn code(self) -> u8 {
        match self {
            Mode::Busy => 0,
            Mode::Event => 1,
        }
    }

    /// The mode of control channel number `code`, if any.
    pub fn from_code(code: u8) -> Option<Mode> {
        Mode::ALL.get(usize::from(code)).copied()
    }

    /// Whether `test` has a run in this mode: memory polling (`write_lat`) has no event, and
    /// TCP has no poll mode, so it runs once, in the event pass.
    pub fn runs(self, test: Test) -> bool {
        !(test == Test::WriteLat && self == Mode::Event
            || matches!(test, Test::TcpBw | Test::TcpLat) && self == Mode::Busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_go_both_ways() {
        for t in Test::ALL {
            assert_eq!(Test::from_code(t.code()), Some(t));
            assert_eq!(Test::from_name(t.name()), Some(t));
        }
        for r in Rt::ALL {
            assert_eq!(Rt::from_code(r.code()), Some(r));
        }
        for m in Mode::ALL {
            assert_eq!(Mode::from_code(m.code()), Some(m));
        }
        assert_eq!(Test::from_code(Test::ALL.len() as u8), None);
        assert_eq!(Rt::from_code(200), None);
        assert_eq!(Mode::from_code(2), None);
    }

    #[test]
    fn runtime_names_parse_with_the_tokio_alias() {
        for r in Rt::ALL {
            assert_eq!(Rt::from_str(r.name(), false), Ok(r));
        }
        assert_eq!(Rt::from_str("tokio", false), Ok(Rt::TokioMt));
    }
}
