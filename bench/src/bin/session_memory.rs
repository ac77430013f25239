//! Memory the AM spends per session: open N sessions in an in-process
//! pipeline (the real committer and RocksDB) and compare the resident set
//! size before and after. `session_memory --sessions 100000`

use std::sync::Arc;

use acct::am::ingest::Ingest;
use acct::am::session::SessionInfo;
use acct::am::store::Store;
use acct::config::IngestConfig;
use clap::Parser;
use wire::{
    Address, DataFields, Name, Policy, ServiceId, SessionId, SessionKey, Signed, SigningKey, TimeOfDay, UserCredential,
};

#[derive(Parser)]
struct Args {
    /// Sessions to open.
    #[arg(long, default_value_t = 100_000)]
    sessions: usize,
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.sessions <= 10_000_000, "at most 10 million sessions");
    let folder = tempfile::tempdir()?;
    let store = Arc::new(Store::open(folder.path())?);
    let ingest = Ingest::start(store, &IngestConfig::default())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let am = SigningKey::from_seed(&[9; 32]);
    let now = acct::clock::now_ms();
    let policy = Policy {
        valid_from_ms: now,
        valid_until_ms: now + 3_600_000,
        time_of_day: TimeOfDay::ANY,
        requests_max: 0,
        address_change_allowed: false,
        required_data: DataFields::UNITS,
        interim_interval_max_s: 60,
    };
    let make = |index: usize| -> anyhow::Result<Arc<SessionInfo>> {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(index as u64).to_be_bytes());
        let credential = Signed::sign(
            UserCredential {
                session_id: SessionId(id),
                service_id: ServiceId(1),
                user_id: Name::new(format!("user-{index:08}"))?,
                user_address: Address::new("192.0.2.10:40000")?,
                session_key: SessionKey([1; 32]),
                policy,
            },
            &am,
        )
        .map_err(|error| anyhow::anyhow!("{error}"))?;
        Ok(SessionInfo::new(
            Name::new(format!("provider-{:04}", index % 1000))?,
            credential,
            now,
        ))
    };
    // Warm up allocator and RocksDB with a first slice, then measure.
    let warm = args.sessions / 10;
    for index in 0..warm {
        runtime
            .block_on(ingest.open_session(make(index)?))
            .map_err(anyhow::Error::msg)?;
    }
    let before = resident_bytes();
    for index in warm..args.sessions {
        runtime
            .block_on(ingest.open_session(make(index)?))
            .map_err(anyhow::Error::msg)?;
    }
    let after = resident_bytes();
    let measured = args.sessions - warm;
    println!(
        "{{\"sessions\": {measured}, \"rss_before_bytes\": {before}, \"rss_after_bytes\": {after}, \"bytes_per_session\": {:.0}}}",
        after.saturating_sub(before) as f64 / measured.max(1) as f64
    );
    ingest.shutdown();
    Ok(())
}
