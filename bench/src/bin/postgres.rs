//! The PostgreSQL side of the benchmark harness: insert the records loadgen
//! wrote (`loadgen --records`: the same signed messages, retransmissions
//! included) into a table keyed by message id (session, sequence) with
//! `INSERT … ON CONFLICT DO NOTHING`, one commit per statement (the server
//! runs with `synchronous_commit = on`, so every commit is durable before it
//! returns), from many connections, `--batch` records per statement. Prints
//! one JSON line: fresh rows committed per second, duplicates, and the commit
//! latency of each row.
//!
//! `postgres --url "host=127.0.0.1 port=PORT user=postgres" --records FILE --batch 64`
//!
//! PostgreSQL verifies no signature; it stores the signed bytes as they are.

use std::time::Instant;

use anyhow::Context as _;
use bench::other::{self, Outcome};
use clap::Parser;
use loadgen::records::Record;

#[derive(Parser, Debug)]
struct Args {
    /// libpq-style connection string.
    #[arg(long)]
    url: String,
    /// The records file (`loadgen --records`).
    #[arg(long)]
    records: std::path::PathBuf,
    /// Most records to read.
    #[arg(long, default_value_t = 2_000_000)]
    records_max: usize,
    /// Seconds of inserting at most (it stops earlier when the records run out).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections, each with one statement in flight (PostgreSQL runs one
    /// statement per connection at a time).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Records per statement, and so per commit.
    #[arg(long, default_value_t = 64)]
    batch: usize,
}

/// The table: acct's record reduced to its key, provider, arrival time and
/// the signed message.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS records (session_id bytea, sequence bigint, provider integer, \
                      received_ms bigint, message bytea, PRIMARY KEY (session_id, sequence))";

const INSERT: &str = "INSERT INTO records SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::integer[], \
                      $4::bigint[], $5::bytea[]) ON CONFLICT DO NOTHING";

async fn inserter(args: &Args, records: Vec<Record>, until: Instant) -> anyhow::Result<Outcome> {
    let (client, connection) = tokio_postgres::connect(&args.url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let statement = client.prepare(INSERT).await?;
    let mut outcome = Outcome::default();
    for chunk in records.chunks(args.batch) {
        if Instant::now() >= until {
            break;
        }
        let now_ms = acct::clock::now_ms() as i64;
        let mut sessions = Vec::with_capacity(chunk.len());
        let mut sequences = Vec::with_capacity(chunk.len());
        let mut providers = Vec::with_capacity(chunk.len());
        let mut received = Vec::with_capacity(chunk.len());
        let mut messages = Vec::with_capacity(chunk.len());
        for record in chunk {
            let id = record.message.value().message_id();
            sessions.push(id.session_id.as_bytes().to_vec());
            sequences.push(i64::try_from(id.sequence)?);
            providers.push(i32::try_from(record.provider)?);
            received.push(now_ms);
            messages.push(record.message.body().to_vec());
        }
        let started = Instant::now();
        let inserted = client
            .execute(&statement, &[&sessions, &sequences, &providers, &received, &messages])
            .await? as usize;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        outcome.latencies_ms.extend(std::iter::repeat_n(latency_ms, inserted));
        outcome.duplicates += (chunk.len() - inserted) as u64;
    }
    Ok(outcome)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.connections > 0 && args.batch > 0,
        "--connections and --batch must be at least 1"
    );
    let records = loadgen::records::read(&args.records, args.records_max)?.records;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let report = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&args.url, tokio_postgres::NoTls)
            .await
            .context("connecting to PostgreSQL")?;
        tokio::spawn(connection);
        client.batch_execute(SCHEMA).await?;
        client.batch_execute("TRUNCATE records").await?;
        let extra = serde_json::json!({"connections": args.connections, "batch": args.batch});
        let (connections, seconds) = (args.connections, args.seconds);
        other::drive(
            std::sync::Arc::new(args),
            records,
            connections,
            seconds,
            |args, share, until| async move { inserter(&args, share, until).await },
            extra,
        )
        .await
    })?;
    println!("{report}");
    Ok(())
}
