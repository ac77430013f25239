//! The JetStream side of the benchmark harness: publish the records loadgen
//! wrote (`loadgen --records`: the same signed messages, retransmissions
//! included) to a file-backed stream, each with `Nats-Msg-Id` set to its
//! message id (session and sequence) so that the server's duplicate window
//! deduplicates them, many in flight per connection. Prints one JSON line:
//! fresh messages acked per second, duplicates recognised, ack latency.
//!
//! `jetstream --server nats://127.0.0.1:PORT --records FILE --seconds 10`
//!
//! JetStream verifies no signature; it stores the signed bytes as they are.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use bench::other::{self, Outcome};
use clap::Parser;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use loadgen::records::Record;

#[derive(Parser, Debug)]
struct Args {
    /// The NATS server.
    #[arg(long)]
    server: String,
    /// The records file (`loadgen --records`).
    #[arg(long)]
    records: std::path::PathBuf,
    /// Most records to read.
    #[arg(long, default_value_t = 2_000_000)]
    records_max: usize,
    /// Seconds of publishing at most (it stops earlier when the records run out).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections (each publishes its providers' records, like a provider).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Publishes in flight per connection.
    #[arg(long, default_value_t = 256)]
    window: usize,
}

async fn publisher(args: &Args, records: Vec<Record>, until: Instant) -> anyhow::Result<Outcome> {
    let client = async_nats::connect(&args.server).await?;
    let js = jetstream::new(client);
    let mut outcome = Outcome::default();
    let mut inflight = FuturesUnordered::new();
    let mut records = records.into_iter();
    loop {
        while inflight.len() < args.window && Instant::now() < until {
            let Some(record) = records.next() else { break };
            let id = record.message.value().message_id();
            let publish = jetstream::context::Publish::build()
                .payload(record.message.body().clone())
                .message_id(format!("{}-{}", id.session_id, id.sequence));
            let started = Instant::now();
            let ack = js.send_publish(format!("acct.{}", record.provider), publish).await?;
            inflight.push(async move { (ack.await, started) });
        }
        match inflight.next().await {
            Some((Ok(ack), started)) => {
                if ack.duplicate {
                    outcome.duplicates += 1;
                } else {
                    outcome.latencies_ms.push(started.elapsed().as_secs_f64() * 1000.0);
                }
            }
            Some((Err(error), _)) => return Err(error.into()),
            None => return Ok(outcome),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.connections > 0 && args.window > 0,
        "--connections and --window must be at least 1"
    );
    let records = loadgen::records::read(&args.records, args.records_max)?.records;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let report = runtime.block_on(async {
        let client = async_nats::connect(&args.server).await?;
        let js = jetstream::new(client);
        js.get_or_create_stream(jetstream::stream::Config {
            name: "ACCT".to_owned(),
            subjects: vec!["acct.>".to_owned()],
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|error| anyhow::anyhow!("creating the stream: {error}"))?;
        let extra = serde_json::json!({"connections": args.connections, "window": args.window});
        let (connections, seconds) = (args.connections, args.seconds);
        other::drive(
            std::sync::Arc::new(args),
            records,
            connections,
            seconds,
            |args, share, until| async move { publisher(&args, share, until).await },
            extra,
        )
        .await
    })?;
    println!("{report}");
    Ok(())
}
