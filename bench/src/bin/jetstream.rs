//! The JetStream side of the comparison harness: publish accounting-sized
//! messages to a file-backed stream with `Nats-Msg-Id` (the server's
//! duplicate window deduplicates by it), many in flight, and report the
//! acked publishes per second and the ack latency as one JSON line.
//!
//! `jetstream --server nats://127.0.0.1:PORT --seconds 10`
//!
//! JetStream verifies no signature; the payload stands for a signed message.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use clap::Parser;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

#[derive(Parser, Debug)]
struct Args {
    /// The NATS server.
    #[arg(long)]
    server: String,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Publishing tasks (each its own connection, like a provider).
    #[arg(long, default_value_t = 16)]
    tasks: usize,
    /// Publishes in flight per task.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Payload bytes (acct's stored record is about this size).
    #[arg(long, default_value_t = 192)]
    payload: usize,
}

async fn publisher(args: &Args, task: usize, until: Instant) -> anyhow::Result<Vec<f64>> {
    let client = async_nats::connect(&args.server).await?;
    let js = jetstream::new(client);
    let payload = bytes::Bytes::from(vec![0x5a; args.payload]);
    let mut latencies = Vec::new();
    let mut inflight = FuturesUnordered::new();
    let mut sequence = 0u64;
    loop {
        while inflight.len() < args.window && Instant::now() < until {
            sequence += 1;
            let publish = jetstream::context::Publish::build()
                .payload(payload.clone())
                .message_id(format!("{task}-{sequence}"));
            let started = Instant::now();
            let ack = js.send_publish(format!("acct.{task}"), publish).await?;
            inflight.push(async move { (ack.await, started) });
        }
        match inflight.next().await {
            Some((Ok(ack), started)) => {
                anyhow::ensure!(!ack.duplicate, "a fresh message id was called a duplicate");
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            Some((Err(error), _)) => return Err(error.into()),
            None => return Ok(latencies),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
        let started = Instant::now();
        let until = started + Duration::from_secs(args.seconds);
        let args = std::sync::Arc::new(args);
        let tasks: Vec<_> = (0..args.tasks)
            .map(|task| {
                let args = args.clone();
                tokio::spawn(async move { publisher(&args, task, until).await })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await??);
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        };
        anyhow::Ok(serde_json::json!({
            "acked": latencies.len(),
            "msgs_per_s": latencies.len() as f64 / elapsed,
            "p50_ms": pick(0.5),
            "p99_ms": pick(0.99),
        }))
    })?;
    println!("{report}");
    Ok(())
}
