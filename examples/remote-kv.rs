//! A key-value table in one machine's memory that other machines read, write and lock
//! themselves, with one-sided RDMA: the server's CPU never runs on the data path.
//!
//! The server allocates the table once and grants it to each client that connects
//! ([`MemorySession::grant`], read, write and atomic rights, for as long as the connection
//! lives). A client then works on it alone: it takes a slot's lock with an RDMA
//! compare-and-swap, reads the slot with an RDMA read, writes it back with an RDMA write and
//! releases the lock with another compare-and-swap. The server's part is the memory
//! session's control messages: it sends the grant, and revokes it when the client leaves.
//!
//!     cargo run --example remote-kv --features tokio -- serve --listen 169.254.77.1
//!     cargo run --example remote-kv --features smol  -- check --connect 169.254.77.1 --clients 4 --ops 1000
//!
//! `serve --listen ADDR[:PORT] [--slots N]` serves a table of N slots (default 1024) on port
//! 7472 by default, until it is killed. `check --connect ADDR[:PORT] [--clients C] [--ops N]`
//! runs C clients at once (default 4), each on a connection of its own, each making N
//! increments (default 1000) of the counters of random slots under their locks; then it
//! reads the whole table and checks that the counters grew by exactly C×N (so no increment
//! was lost: two clients never held a slot at once), prints the increments per second, and
//! exits with status 1 on any mismatch or error. The server and the clients may be built for
//! different runtimes: nothing on the wire depends on the runtime.
//!
//! # The table
//!
//! ```text
//! slot s: bytes 64·s .. 64·s + 64 of the grant
//! offset  bytes  field
//!  0       8     lock word: 0 when free, else the token of the client that holds the slot
//!  8       8     counter: the increments made to the slot, little endian
//! 16      48     value: who made the last increment, as text, padded with zeroes
//! ```
//!
//! The lock word is only ever changed by RDMA compare-and-swap, which works on the server's
//! native 64-bit word: a token is `process id << 32 | client number`, nonzero, and unique
//! among the clients of one machine (it names the holder in error messages).
//!
//! # Locking
//!
//! A client releases a lock with compare-and-swap (token → 0) rather than with a write of 0:
//! RDMA atomics are atomic only with respect to other atomics on the same device, not to
//! plain writes of the same word, and the word it swaps out proves that the client still
//! held the lock. The release is posted after the write of the slot has completed, so the
//! next holder reads the new counter.
//!
//! The counters start at 0 when the server starts; a check reads their sum first and
//! expects that sum plus C×N at the end, so it may run again against the same server (but
//! not two at once). A client killed while it holds a lock leaves that slot locked for good:
//! a later check reports it and the server must be restarted.
//!
//! # Protection domains
//!
//! A grant is a registration in the protection domain of the connection's queue pair. The
//! connections a listener accepts share their device's protection domain only while one of
//! them lives: after the last client leaves, the next one gets a new domain, in which a
//! table allocated earlier is not registered. So the server makes its own protection domain
//! and completion queue on the device that holds the listening address, allocates the
//! table there, and accepts every connection on them ([`ConnectionOptions::resources`]).

#[path = "common/mod.rs"]
mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyrdma::cm::{ConnectionOptions, ConnectionResources, Incoming, Listener};
use anyrdma::msg::{Messenger, MessengerOptions};
use anyrdma::remote_memory::{MemorySession, RemoteGrant, Rights, SessionOptions};
use anyrdma::{Access, CompletionQueue, Context, CqOptions, LocalBuf, PortSelection, SharedRegion};
use clap::builder::RangedU64ValueParser;
use clap::{Parser, Subcommand};

const PROGRAM: &str = "remote-kv";
const DEFAULT_PORT: u16 = 7472;
const DEFAULT_SLOTS: usize = 1024;
/// 64 MiB of table at most: one RDMA read takes it all in.
const MAX_SLOTS: usize = 1 << 20;

/// The layout of a slot (see the module documentation).
const SLOT_BYTES: u64 = 64;
const LOCK_AT: u64 = 0;
const COUNTER_AT: u64 = 8;
/// What a lock holder reads and writes: the counter and the value.
const BODY_BYTES: usize = 56;

/// How long a client waits for the server's grant after connecting.
const GRANT_WAIT: Duration = Duration::from_secs(10);
/// How long a client keeps trying a lock before it concludes its holder is gone.
const LOCK_PATIENCE: Duration = Duration::from_secs(5);

type Outcome<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

// ------------------------------------------------------------------------------------------
// serve
// ------------------------------------------------------------------------------------------

async fn serve(listen: &str, slots: usize) -> Outcome {
    let addr = anyrdma::cm::parse_addr(listen, DEFAULT_PORT)?;
    // Bound first: an address that belongs to no RDMA device fails here, with a hint.
    let listener = Listener::bind(addr)?;
    let (port, resources) = resources_for(&listener)?;
    // Registered for local access only: peers reach it through each grant's own key.
    let table = Arc::new(
        resources
            .pd
            .alloc_shared(slots * SLOT_BYTES as usize, Access::LOCAL)?,
    );
    let connection = ConnectionOptions {
        resources: Some(resources),
        ..ConnectionOptions::default()
    };
    println!(
        "{PROGRAM}: serving a table of {slots} slots ({} bytes) on {}, device {} port {}",
        table.len(),
        listener.local_addr(),
        port.device,
        port.port
    );
    loop {
        let incoming = listener.incoming().await?;
        common::spawn(serve_client(incoming, connection.clone(), table.clone()));
    }
}

/// A protection domain and a completion queue on the device port `listener` is bound to
/// (the default port for an unspecified address), for every connection of the server (see
/// the module documentation), and that port.
fn resources_for(listener: &Listener) -> Outcome<(PortSelection, ConnectionResources)> {
    let port = match listener.port()? {
        Some(port) => port,
        None => anyrdma::default_port()?,
    };
    let ctx = Context::open_port(&port)?;
    let pd = ctx.alloc_pd()?;
    let cq = CompletionQueue::new(
        &ctx,
        CqOptions {
            entries: 4096,
            ..CqOptions::default()
        },
    )?;
    let resources = ConnectionResources {
        pd,
        send_cq: cq.clone(),
        recv_cq: cq,
    };
    Ok((port, resources))
}

/// Accepts one client, grants it the table and answers its memory session until it leaves.
async fn serve_client(incoming: Incoming, connection: ConnectionOptions, table: Arc<SharedRegion>) {
    let peer = incoming.peer_addr();
    let messenger = match Messenger::accept(incoming, connection, MessengerOptions::default()).await
    {
        Ok(messenger) => messenger,
        Err(err) => return eprintln!("{PROGRAM}: {peer}: not accepted: {err}"),
    };
    let session = MemorySession::new(messenger, SessionOptions::default());
    // No lease: the grant lasts as long as the connection, whose end revokes it.
    let rights = Rights::READ | Rights::WRITE | Rights::ATOMIC;
    let grant = match session.grant(&table, .., rights, None) {
        Ok(grant) => grant,
        Err(err) => return eprintln!("{PROGRAM}: {peer}: granting the table failed: {err}"),
    };
    println!("{PROGRAM}: {peer}: connected, table granted");
    match session.serve().await {
        Ok(()) => println!("{PROGRAM}: {peer}: session closed"),
        Err(err) if err.is_disconnect() => println!("{PROGRAM}: {peer}: left"),
        Err(err) => eprintln!("{PROGRAM}: {peer}: ended: {err}"),
    }
    drop(grant);
}

// ------------------------------------------------------------------------------------------
// check
// ------------------------------------------------------------------------------------------

/// One client of the check: a connection of its own, its memory session, and the table the
/// server granted on it.
struct Client {
    number: usize,
    session: MemorySession,
    table: RemoteGrant,
    slots: u64,
    /// What this client writes into the lock words it takes.
    token: u64,
}

/// What the whole table holds at one moment.
struct TableSum {
    counters: u128,
    /// Slots whose lock is taken, and by which token; the first few.
    locked: Vec<(u64, u64)>,
    locked_count: usize,
}

/// An operation's result with its buffer, as one `Result`: after an error the buffer is not
/// needed any more.
async fn finished<T, B>(op: impl Future<Output = (anyrdma::Result<T>, B)>) -> Outcome<(T, B)> {
    let (result, buffer) = op.await;
    Ok((result?, buffer))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The task that runs a client's memory session; it ends with the session.
type Serving = std::pin::Pin<Box<dyn Future<Output = anyrdma::Result<()>> + Send>>;

impl Client {
    async fn connect(addr: SocketAddr, number: usize) -> Outcome<(Client, Serving)> {
        let messenger = Messenger::connect(
            addr,
            ConnectionOptions::default(),
            MessengerOptions::default(),
        )
        .await?;
        let session = MemorySession::new(messenger, SessionOptions::default());
        let serving = {
            let session = session.clone();
            common::spawn_join(async move { session.serve().await })
        };
        let table = match anyrdma::timeout(GRANT_WAIT, session.next_grant()).await {
            Ok(granted) => granted?,
            Err(_) => {
                return Err(format!(
                    "{addr} granted no table within {GRANT_WAIT:?}: is it a {PROGRAM} server?"
                )
                .into())
            }
        };
        let needed = Rights::READ | Rights::WRITE | Rights::ATOMIC;
        if !table.rights().contains(needed) || table.len() % SLOT_BYTES != 0 || table.is_empty() {
            return Err(format!(
                "{addr} granted {} bytes with {} rights, not a table of {SLOT_BYTES}-byte \
                 slots with {needed} rights: is it a {PROGRAM} server?",
                table.len(),
                table.rights()
            )
            .into());
        }
        let client = Client {
            number,
            slots: table.len() / SLOT_BYTES,
            token: (u64::from(std::process::id()) << 32) | (number as u64 + 1),
            session,
            table,
        };
        Ok((client, serving))
    }

    /// `ops` increments of the counters of random slots, each under the slot's lock.
    async fn increments(&self, ops: u64) -> Outcome {
        let pd = self.session.queue_pair().pd();
        let mut word = pd.alloc(8, Access::LOCAL)?;
        let mut body = pd.alloc(BODY_BYTES, Access::LOCAL)?;
        let mut note = [0u8; BODY_BYTES - 8];
        let text = format!("client {} of process {}", self.number, std::process::id());
        let len = text.len().min(note.len());
        note[..len].copy_from_slice(&text.as_bytes()[..len]);
        let mut picker = SlotPicker::new(self.token);
        for _ in 0..ops {
            let slot = picker.below(self.slots);
            word = self.lock(slot, word).await?;
            let at = slot * SLOT_BYTES + COUNTER_AT;
            ((), body) = finished(self.table.read(body, at)).await?;
            let counter = u64_at(&body, 0).wrapping_add(1);
            body[..8].copy_from_slice(&counter.to_le_bytes());
            body[8..].copy_from_slice(&note);
            ((), body) = finished(self.table.write(body, at)).await?;
            word = self.unlock(slot, word).await?;
        }
        Ok(())
    }

    /// Takes the lock of `slot`: compare-and-swap 0 → token until the word was 0.
    async fn lock(&self, slot: u64, mut word: LocalBuf) -> Outcome<LocalBuf> {
        let at = slot * SLOT_BYTES + LOCK_AT;
        let began = Instant::now();
        let mut attempts = 0u32;
        loop {
            let holder;
            (holder, word) = finished(self.table.compare_and_swap(word, at, 0, self.token)).await?;
            if holder == 0 {
                return Ok(word);
            }
            if began.elapsed() > LOCK_PATIENCE {
                return Err(format!(
                    "slot {slot} stayed locked by token {holder:#x} for {LOCK_PATIENCE:?}: a \
                     client was killed while it held it? (restart the server to clear the table)"
                )
                .into());
            }
            // A holder keeps a slot for three round trips: try again at once a few times,
            // then leave it a little longer each time.
            attempts += 1;
            if attempts > 4 {
                anyrdma::sleep(Duration::from_micros(20 << (attempts - 4).min(6))).await;
            }
        }
    }

    /// Releases the lock of `slot`: compare-and-swap token → 0, which must find the token.
    async fn unlock(&self, slot: u64, word: LocalBuf) -> Outcome<LocalBuf> {
        let at = slot * SLOT_BYTES + LOCK_AT;
        let (holder, word) = finished(self.table.compare_and_swap(word, at, self.token, 0)).await?;
        if holder != self.token {
            return Err(format!(
                "the lock word of slot {slot} was {holder:#x} while this client held it \
                 (token {:#x}): something else wrote it",
                self.token
            )
            .into());
        }
        Ok(word)
    }

    /// The whole table in one RDMA read, summed.
    async fn sum_table(&self) -> Outcome<TableSum> {
        let pd = self.session.queue_pair().pd();
        let whole = pd.alloc(self.table.len() as usize, Access::LOCAL)?;
        let ((), whole) = finished(self.table.read(whole, 0)).await?;
        let mut sum = TableSum {
            counters: 0,
            locked: Vec::new(),
            locked_count: 0,
        };
        for (slot, bytes) in whole.chunks_exact(SLOT_BYTES as usize).enumerate() {
            sum.counters += u128::from(u64_at(bytes, COUNTER_AT as usize));
            let holder = u64_at(bytes, LOCK_AT as usize);
            if holder != 0 {
                sum.locked_count += 1;
                if sum.locked.len() < 3 {
                    sum.locked.push((slot as u64, holder));
                }
            }
        }
        Ok(sum)
    }

    /// Ends the session, and with it the connection: the server then revokes the grant.
    async fn close(self, serving: Serving) {
        self.session.close();
        // Ends at once now; how the session ended was reported by the operations already.
        let _ = serving.await;
    }
}

impl TableSum {
    fn describe_locks(&self) -> String {
        let first: Vec<String> = self
            .locked
            .iter()
            .map(|(slot, token)| format!("slot {slot} by token {token:#x}"))
            .collect();
        format!(
            "{} slot(s) locked ({})",
            self.locked_count,
            first.join(", ")
        )
    }
}

/// xorshift64*: spreads the increments over the slots, without a dependency.
struct SlotPicker(u64);

impl SlotPicker {
    fn new(seed: u64) -> SlotPicker {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        SlotPicker((seed ^ time.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }

    fn below(&mut self, bound: u64) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

async fn check(connect: &str, clients: usize, ops: u64) -> Outcome {
    let addr = anyrdma::cm::parse_addr(connect, DEFAULT_PORT)?;
    let mut connected = Vec::with_capacity(clients);
    let mut serving = Vec::with_capacity(clients);
    for number in 0..clients {
        let (client, session_task) = Client::connect(addr, number).await?;
        connected.push(client);
        serving.push(session_task);
    }
    println!(
        "{PROGRAM}: {clients} client(s) connected to {addr}, each granted the table of {} slots",
        connected[0].slots
    );
    let before = connected[0].sum_table().await?;
    if before.locked_count > 0 {
        return Err(format!(
            "before the check: {}: another check is running against this server, or one was \
             killed while it held a lock; the counters could not add up",
            before.describe_locks()
        )
        .into());
    }
    let started = Instant::now();
    let workers: Vec<_> = connected
        .into_iter()
        .map(|client| {
            common::spawn_join(async move {
                let done = client
                    .increments(ops)
                    .await
                    .map_err(|err| format!("client {}: {err}", client.number));
                (client, done)
            })
        })
        .collect();
    let mut connected = Vec::with_capacity(clients);
    let mut failures = Vec::new();
    for worker in workers {
        let (client, done) = worker.await;
        connected.push(client);
        failures.extend(done.err());
    }
    let elapsed = started.elapsed();
    if !failures.is_empty() {
        return Err(failures.join("\n").into());
    }
    let after = connected[0].sum_table().await?;
    for (client, session_task) in connected.into_iter().zip(serving) {
        client.close(session_task).await;
    }
    let made = clients as u128 * u128::from(ops);
    let expected = before.counters + made;
    if after.counters != expected {
        return Err(format!(
            "MISMATCH: the counters sum to {} after {made} increments from {}: expected \
             {expected} ({} increment(s) lost)",
            after.counters,
            before.counters,
            expected as i128 - after.counters as i128
        )
        .into());
    }
    if after.locked_count > 0 {
        return Err(format!("after the check: {}", after.describe_locks()).into());
    }
    println!(
        "{PROGRAM}: {clients} client(s) × {ops} increments in {:.3} s: {:.0} increments/s \
         (each: compare-and-swap, read, write, compare-and-swap); counters sum {} = {} before + \
         {made}: OK, every lock free",
        elapsed.as_secs_f64(),
        made as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
        after.counters,
        before.counters
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------
// command line
// ------------------------------------------------------------------------------------------

/// A key-value table in one machine's memory that clients read, write and lock with
/// one-sided RDMA.
#[derive(Parser)]
#[command(name = "remote-kv", version, args_override_self = true)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Grant a table to every client that connects, until killed.
    Serve {
        /// The address to listen on, an RDMA interface's (default port 7472).
        #[arg(long, value_name = "ADDR[:PORT]")]
        listen: String,
        /// Slots of the table.
        #[arg(long, default_value_t = DEFAULT_SLOTS,
              value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_SLOTS as u64))]
        slots: usize,
    },
    /// Run clients that increment counters under slot locks, then check that the counters
    /// grew by exactly clients x ops.
    Check {
        /// The server's address (default port 7472).
        #[arg(long, value_name = "ADDR[:PORT]")]
        connect: String,
        /// Clients at once, each on a connection of its own.
        #[arg(long, default_value_t = 4,
              value_parser = RangedU64ValueParser::<usize>::new().range(1..=256))]
        clients: usize,
        /// Increments per client.
        #[arg(long, default_value_t = 1000,
              value_parser = clap::value_parser!(u64).range(1..=u64::from(u32::MAX)))]
        ops: u64,
    },
}

fn main() {
    let result = match Args::parse().command {
        Command::Serve { listen, slots } => common::block_on(serve(&listen, slots)),
        Command::Check {
            connect,
            clients,
            ops,
        } => common::block_on(check(&connect, clients, ops)),
    };
    if let Err(err) = result {
        common::fail(PROGRAM, &err.to_string());
    }
}
