//! Where the CPU goes in the in-process pipeline: sign N messages ahead, push
//! them through the verifiers and the committer to durable acks, and report
//! throughput and the CPU time of each thread. `pipeline_profile --messages 400000`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use acct::am::ingest::Ingest;
use acct::am::pipeline::{Pending, ProviderConnection};
use acct::am::session::SessionInfo;
use acct::am::store::Store;
use acct::config::IngestConfig;
use clap::Parser;
use peer::provider::ProviderSession;
use wire::{
    AccountingKind, Address, DataFields, Name, Policy, ServiceId, SessionId, SessionKey, Signed, SigningKey, TimeOfDay,
    Usage, UserCredential,
};

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
    let folder = tempfile::tempdir()?;
    let store = Arc::new(Store::open(folder.path())?);
    let settings = IngestConfig {
        verify_batch_messages_max: args.verify_batch,
        ..IngestConfig::default()
    };
    let ingest = Ingest::start(store, &settings)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let am = SigningKey::from_seed(&[0xa1; 32]);
    let now = acct::clock::now_ms();
    let policy = Policy {
        valid_from_ms: now - 3_600_000,
        valid_until_ms: now + 24 * 3_600_000,
        time_of_day: TimeOfDay::ANY,
        requests_max: 0,
        address_change_allowed: true,
        required_data: DataFields::UNITS,
        interim_interval_max_s: 0,
    };
    let mut connections = Vec::new();
    let mut sessions = Vec::new();
    for provider in 0..args.providers {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(provider as u64 + 1).to_le_bytes());
        let key = SigningKey::from_seed(&seed);
        let name = Name::new(format!("provider-{provider:04}"))?;
        connections.push(ProviderConnection::new(name.clone(), key.public_key()));
        for index in 0..16u8 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(provider as u64).to_be_bytes());
            id[8] = index;
            let credential = Signed::sign(
                UserCredential {
                    session_id: SessionId(id),
                    service_id: ServiceId(1),
                    user_id: Name::new(format!("user-{index}"))?,
                    user_address: Address::new("127.0.0.1:1")?,
                    session_key: SessionKey([7; 32]),
                    policy,
                },
                &am,
            )
            .map_err(|error| anyhow::anyhow!("{error}"))?;
            let info = SessionInfo::new(name.clone(), credential.clone(), now);
            runtime
                .block_on(ingest.open_session(info.clone()))
                .map_err(anyhow::Error::msg)?;
            sessions.push((
                provider,
                info,
                ProviderSession::accept(credential, &am.public_key(), key.clone())?,
            ));
        }
    }
    let count = sessions.len();
    let mut work = Vec::with_capacity(args.messages);
    for index in 0..args.messages {
        let (provider, info, session) = &mut sessions[index % count];
        let usage = Usage {
            units: Some(1),
            bytes_up: Some(1200),
            bytes_down: Some(48_000),
            duration_ms: Some(60_000),
            interval_ms: Some((now - 60_000, now)),
            custom: Vec::new(),
        };
        let message = session.account(AccountingKind::INTERIM, usage)?;
        let _ = session.on_ack(&wire::AckEntry {
            message_id: message.value().message_id(),
            status: wire::AckStatus::STORED,
        });
        work.push((*provider, info.clone(), message));
    }
    let (ack_sender, mut acks) = tokio::sync::mpsc::channel(args.messages.max(1));
    let queue = ingest.verify_queue().clone();
    let before = thread_cpu_seconds();
    let started = Instant::now();
    let feeder = std::thread::Builder::new().name("feeder".into()).spawn(move || {
        for (provider, session, message) in work {
            let pending = Pending {
                message,
                session,
                connection: connections[provider].clone(),
                received_ms: acct::clock::now_ms(),
                reply: ack_sender.clone(),
            };
            if queue.send_blocking(pending).is_err() {
                break;
            }
        }
    })?;
    let stored = runtime.block_on(async {
        let mut stored = 0usize;
        while stored < args.messages {
            match acks.recv().await {
                Some(entry) if entry.status == wire::AckStatus::STORED => stored += 1,
                Some(entry) => anyhow::bail!("unexpected answer {:?}", entry.status),
                None => break,
            }
        }
        Ok(stored)
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let _ = feeder.join();
    let after = thread_cpu_seconds();
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
    ingest.shutdown();
    Ok(())
}
