//! The verification ceiling of the benchmark harness: Ed25519 batch
//! verification alone (the AM's own function and batch size) of the records
//! loadgen wrote with `--records`, on all cores, and nothing else. Prints
//! one JSON line with the median of `--rounds` rounds.
//!
//! `ceiling --records FILE`

use std::time::Instant;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The records file (`loadgen --records`).
    #[arg(long)]
    records: std::path::PathBuf,
    /// Most records to read.
    #[arg(long, default_value_t = 2_000_000)]
    records_max: usize,
    /// Rounds over all the records; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Signatures per batch (the AM's default `verify_batch_messages_max`).
    #[arg(long, default_value_t = acct::config::IngestConfig::default().verify_batch_messages_max)]
    batch: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.batch > 0 && args.rounds > 0,
        "--batch and --rounds must be at least 1"
    );
    let loadgen::records::Records { keys, records } = loadgen::records::read(&args.records, args.records_max)?;
    anyhow::ensure!(!records.is_empty(), "no records in {}", args.records.display());
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut rates = Vec::with_capacity(args.rounds);
    for _ in 0..args.rounds {
        let started = Instant::now();
        let valid = std::thread::scope(|scope| {
            let workers: Vec<_> = records
                .chunks(records.len().div_ceil(threads))
                .map(|part| {
                    let keys = &keys;
                    scope.spawn(move || {
                        let mut items = Vec::with_capacity(args.batch);
                        let mut valid = 0usize;
                        for chunk in part.chunks(args.batch) {
                            items.clear();
                            items.extend(
                                chunk
                                    .iter()
                                    .map(|record| record.message.batch_item(&keys[record.provider as usize])),
                            );
                            valid += wire::verify_batch(&items, &[5; 32]).iter().filter(|ok| **ok).count();
                        }
                        valid
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().unwrap_or(0))
                .sum::<usize>()
        });
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            valid == records.len(),
            "{} of {} signatures failed",
            records.len() - valid,
            records.len()
        );
        rates.push(records.len() as f64 / seconds);
    }
    rates.sort_by(f64::total_cmp);
    let bytes: usize = records.iter().map(|record| record.message.body().len()).sum();
    println!(
        "{}",
        serde_json::json!({
            "records": records.len(),
            "threads": threads,
            "batch": args.batch,
            "rounds": rates,
            "msgs_per_s": rates[rates.len() / 2],
            "signed_bytes_mean": bytes as f64 / records.len() as f64,
        })
    );
    Ok(())
}
