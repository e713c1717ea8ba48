//! Pauses that make a ping-pong's instruction count independent of timing, for callgrind
//! (`scripts/bench` counts instructions per round trip with it): both processes read
//! `ANYRDMA_BENCH_PACE`; unset, nothing pauses.

/// Fixed pauses that make the instruction count of a ping-pong independent of timing, for
/// callgrind (`ANYRDMA_BENCH_PACE=server|client`, 2 ms): `server` delays every reply, so the
/// client always finds nothing and sleeps (the event-mode path through the runtime); `client`
/// pauses after each post, so the reply is there at the first poll (no empty polls).
#[derive(Clone, Copy)]
pub enum Pacing {
    /// No pauses (a measurement).
    None,
    /// The server pauses before each reply.
    Server,
    /// The client pauses after each post.
    Client,
}

impl Pacing {
    const PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

    /// The pacing `ANYRDMA_BENCH_PACE` asks for.
    pub fn from_env() -> Pacing {
        match std::env::var("ANYRDMA_BENCH_PACE").as_deref() {
            Ok("server") => Pacing::Server,
            Ok("client") => Pacing::Client,
            _ => Pacing::None,
        }
    }

    /// Called by the client after it posted a request.
    pub fn after_client_post(self) {
        if let Pacing::Client = self {
            std::thread::sleep(Self::PAUSE);
        }
    }

    /// Called by the server before it posts a reply.
    pub fn before_server_reply(self) {
        if let Pacing::Server = self {
            std::thread::sleep(Self::PAUSE);
        }
    }
}
