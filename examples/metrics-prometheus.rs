//! The counters of every queue pair, completion queue and messenger served to Prometheus over
//! HTTP: two messengers on one device exchange a known number of messages, small and large,
//! and the program then serves what they did at `http://ADDR/metrics` until it is stopped.
//!
//!     cargo run --example metrics-prometheus --features tokio,metrics -- --listen 127.0.0.1:9464
//!     curl -s http://127.0.0.1:9464/metrics | grep anyrdma_messenger
//!
//! (any runtime feature with `metrics`). Without an RDMA NIC, run it inside the Soft-RoCE VM.
//! `scripts/check-metrics-example` runs it and checks what it serves.
//!
//! Prometheus's recorder (`metrics-exporter-prometheus`) is installed once, with its HTTP
//! endpoint on a thread of its own; `anyrdma::metrics::record()` hands it the counters of
//! every live object, here once a second (nothing is recorded per operation).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyrdma::msg::{Messenger, MessengerOptions};
use anyrdma::{CompletionQueue, ConnectOptions, Context, CqOptions, QpOptions, QueuePair, Result};
use clap::Parser;
use metrics_exporter_prometheus::PrometheusBuilder;

/// Two messengers on the default RDMA device (ANYRDMA_DEVICE picks another): a sends
/// --messages messages of --size bytes and two of --large bytes (by rendezvous) to b, b answers
/// each small one with 10 bytes. Then the counters are served at http://ADDR/metrics, recorded
/// once a second. Once the traffic is done it prints one line:
/// `ready url=http://ADDR/metrics qp_a=QPN qp_b=QPN messages=N size=BYTES large=BYTES reply=10`.
#[derive(Parser)]
#[command(name = "metrics-prometheus", version, args_override_self = true)]
struct Args {
    /// Serve the counters over HTTP at this address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    listen: SocketAddr,
    /// Small messages a sends (each answered).
    #[arg(long, value_name = "N", default_value_t = 100)]
    messages: usize,
    /// Bytes of each small message.
    #[arg(long, value_name = "BYTES", default_value_t = 1000)]
    size: usize,
    /// Bytes of each of the two large messages.
    #[arg(long, value_name = "BYTES", default_value_t = 100_000)]
    large: usize,
    /// Seconds to serve the counters for (0: until stopped).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    serve_for: u64,
}

/// The bytes of each answer.
const REPLY: usize = 10;

struct Traffic {
    messages: usize,
    size: usize,
    large: usize,
}

/// The two messengers and their queue pairs, kept alive while their counters are served.
struct Endpoints {
    a: Messenger,
    b: Messenger,
}

async fn exchange(traffic: &Traffic) -> Result<Endpoints> {
    let ctx = Context::open_default()?;
    let pd = ctx.alloc_pd()?;
    let cq_a = CompletionQueue::new(&ctx, CqOptions::default())?;
    let cq_b = CompletionQueue::new(&ctx, CqOptions::default())?;
    let qp_a = QueuePair::new(&pd, &cq_a, &cq_a, QpOptions::default())?;
    let qp_b = QueuePair::new(&pd, &cq_b, &cq_b, QpOptions::default())?;
    // Out of band, the two endpoints would travel over TCP; here they are at hand.
    qp_a.connect(&qp_b.endpoint(), ConnectOptions::default())?;
    qp_b.connect(&qp_a.endpoint(), ConnectOptions::default())?;
    let options = MessengerOptions::default();
    let a = Messenger::new(&qp_a, options)?;
    let b = Messenger::new(&qp_b, options)?;

    let answering = {
        let b = b.clone();
        let (messages, size, large) = (traffic.messages, traffic.size, traffic.large);
        common::spawn_join(async move {
            for _ in 0..messages {
                let message = b.recv().await?;
                assert_eq!(message.data.len(), size, "a small message's length");
                b.send(&[1; REPLY]).await?;
            }
            for _ in 0..2 {
                let message = b.recv().await?;
                assert_eq!(message.data.len(), large, "a large message's length");
            }
            b.flush().await
        })
    };
    let small = vec![7u8; traffic.size];
    for _ in 0..traffic.messages {
        a.send(&small).await?;
    }
    let large = vec![8u8; traffic.large];
    for _ in 0..2 {
        a.send(&large).await?;
    }
    for _ in 0..traffic.messages {
        let reply = a.recv().await?;
        assert_eq!(reply.data.len(), REPLY, "a reply's length");
    }
    a.flush().await?;
    answering.await?;
    Ok(Endpoints { a, b })
}

fn main() {
    let args = Args::parse();
    let listen = args.listen;
    let traffic = Traffic {
        messages: args.messages,
        size: args.size,
        large: args.large,
    };
    let serve_for = args.serve_for;

    // Prometheus's recorder, its HTTP endpoint on a thread of its own (outside any runtime
    // here, so whatever the runtime feature).
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .install()
        .unwrap_or_else(|e| common::fail("metrics-prometheus", &format!("{listen}: {e}")));

    let result = common::block_on(async {
        let endpoints = exchange(&traffic).await?;
        anyrdma::metrics::record();
        println!(
            "ready url=http://{listen}/metrics qp_a={} qp_b={} messages={} size={} large={} reply={REPLY}",
            endpoints.a.queue_pair().qpn(),
            endpoints.b.queue_pair().qpn(),
            traffic.messages,
            traffic.size,
            traffic.large,
        );
        let start = Instant::now();
        while serve_for == 0 || start.elapsed() < Duration::from_secs(serve_for) {
            anyrdma::sleep(Duration::from_secs(1)).await;
            anyrdma::metrics::record();
        }
        drop(endpoints);
        Ok::<(), anyrdma::Error>(())
    });
    if let Err(err) = result {
        common::fail("metrics-prometheus", &err.to_string());
    }
}
