//! Where the CPU goes in the in-process pipeline: sign N messages ahead, push
//! them through the verifiers and the committer to durable acks, and report
//! throughput and the CPU time of each thread. `pipeline_profile --messages 400000`

use std::collections::HashMap;
use std::time::Instant;

use acct::config::IngestConfig;
use bench::IngestFixture;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Messages to push through.
    #[arg(long, default_value_t = 400_000)]
    messages: usize,
    /// Providers (each with 16 sessions).
    #[arg(long, default_value_t = 64)]
    providers: usize,
    /// Most signatures per verification batch.
    #[arg(long, default_value_t = 1024)]
    verify_batch: usize,
}

/// (name, CPU seconds) of every thread of this process.
fn thread_cpu_seconds() -> HashMap<String, f64> {
    let ticks = 100.0; // USER_HZ on Linux
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let Some(open) = stat.find('(') else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let cpu = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        *out.entry(name).or_insert(0.0) += cpu / ticks;
    }
    out
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.messages <= 5_000_000, "at most 5 million messages");
    let settings = IngestConfig {
        verify_batch_messages_max: args.verify_batch,
        // The pipeline's own rate: the feeder waits for room, nothing is shed.
        queue_delay_target_ms: 0,
        ..IngestConfig::default()
    };
    let mut fixture = IngestFixture::new(args.providers, &settings)?;
    let work = fixture.messages(args.messages)?;
    let connections = fixture.connections.clone();
    let replies = bench::Replies::new(connections.len(), args.messages);
    let senders = replies.senders.clone();
    let queue = fixture.ingest.verify_queue().clone();
    let before = thread_cpu_seconds();
    let started = Instant::now();
    let feeder = std::thread::Builder::new().name("feeder".into()).spawn(move || {
        let fed = bench::feed(&queue, &connections, work, &senders);
        // This thread's CPU time, read before it exits (a finished
        // thread leaves /proc/self/task).
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
        let cpu = stat.rfind(')').map_or(0.0, |close| {
            let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            let ticks = |index: usize| fields.get(index).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (ticks(11) + ticks(12)) / 100.0
        });
        (fed, cpu)
    })?;
    let stored = fixture.runtime.block_on(replies.stored())?;
    let elapsed = started.elapsed().as_secs_f64();
    let fed = feeder.join();
    let after = thread_cpu_seconds();
    let feeder_cpu = match fed {
        Ok((result, cpu)) => {
            result?;
            cpu
        }
        Err(_) => anyhow::bail!("the feeder panicked"),
    };
    println!(
        "stored {stored} in {elapsed:.2} s: {:.0} messages/s",
        stored as f64 / elapsed
    );
    let mut names: Vec<_> = after.keys().cloned().collect();
    names.sort();
    for name in names {
        let used = after[&name] - before.get(&name).copied().unwrap_or(0.0);
        if used > 0.0 {
            println!(
                "  {name:<20} {used:6.2} s CPU  {:5.2} us/message",
                used * 1e6 / stored as f64
            );
        }
    }
    println!(
        "  {:<20} {feeder_cpu:6.2} s CPU  {:5.2} us/message",
        "feeder",
        feeder_cpu * 1e6 / stored as f64
    );
    fixture.shutdown();
    Ok(())
}
