//! `loadgen`: thousands of providers against a real Accounting Manager.
//! `loadgen --help` lists the flags; docs/performance.md shows the runs.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use loadgen::drive::{self, Shared};
use loadgen::plan;
use loadgen::report::{self, Report, Setup};
use loadgen::settings::Settings;

// mimalloc, as the AM uses: loadgen shares the machine with the AM under
// test, and glibc's malloc and free were about 7% of loadgen's CPU at 1,000
// providers (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let mut settings = Settings::parse();
    if let Err(problem) = settings.check() {
        eprintln!("loadgen: {problem}");
        return std::process::ExitCode::from(2);
    }
    settings.apply_steps();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loadgen: starting the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(3),
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Run; Ok(false) when the audit found lost or doubled messages.
async fn run(settings: Settings) -> anyhow::Result<bool> {
    let say = |line: String| {
        if !settings.quiet {
            eprintln!("{line}");
        }
    };
    let identities = plan::identities(&settings.pki, &settings.am_name, settings.providers, settings.users)?;
    let topology = loadgen::cluster::Topology::load(&settings, &identities)?;
    let addresses = topology.addresses();
    say(format!(
        "loadgen: {} providers and {} users ({} certificates minted); connecting the providers to {}",
        settings.providers,
        settings.users,
        identities.minted,
        topology.describe()
    ));
    let configs = identities
        .providers
        .iter()
        .map(|(_, identity)| peer::quic::client_config(identity))
        .collect::<Result<Vec<_>, _>>()?;
    let endpoints = (0..settings.sockets.min(settings.providers))
        .map(|_| {
            let bind = if topology.nodes[0].address.is_ipv6() {
                std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
            } else {
                std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
            };
            peer::quic::shared_endpoint(bind).context("opening a UDP socket")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    // Every provider connects before sessions are issued (the AM pushes
    // each User Credential to its provider's connection) and before the
    // clock starts (the timed phase measures accounting, not handshakes).
    let connecting_at = Instant::now();
    let connected = Arc::new(AtomicUsize::new(0));
    let connect_progress = progress_line(&settings, "connecting", connected.clone(), None);
    let (clients, connect_failures) =
        drive::connect_all(&settings, &configs, &endpoints, &addresses, connected.clone()).await;
    connect_progress.abort();
    let connect_s = connecting_at.elapsed().as_secs_f64();
    let providers_connected = clients.iter().filter(|client| client.is_some()).count();
    let pushed: plan::Pushed = Arc::default();
    for client in clients.iter().flatten() {
        let pushed = pushed.clone();
        client.serve_pushes(move |credential| {
            if let Ok(mut pushed) = pushed.lock() {
                pushed.insert(credential.value().session_id, credential);
                wire::ReceiptStatus::ACCEPTED
            } else {
                wire::ReceiptStatus::BUSY
            }
        });
    }
    for client in clients.iter().flatten() {
        client
            .confirm_served(Duration::from_secs(30))
            .await
            .context("waiting for the AM to serve a provider")?;
    }
    say(format!(
        "loadgen: {providers_connected} of {} providers connected in {connect_s:.1} s ({connect_failures} failed attempts); opening {} sessions",
        settings.providers,
        settings.session_count()
    ));
    let opened_at = Instant::now();
    let sessions = if settings.admin_sessions {
        plan::open_sessions(&settings, &identities, &topology).await?
    } else {
        plan::issue_credentials(&settings, &identities, &topology, &pushed).await?
    };
    let sessions_open_s = opened_at.elapsed().as_secs_f64();
    let session_ids: Vec<wire::SessionId> = sessions
        .iter()
        .map(|(_, credential)| credential.value().session_id)
        .collect();
    say(format!(
        "loadgen: {} sessions opened in {sessions_open_s:.1} s ({}); signing {} messages ahead",
        sessions.len(),
        if settings.admin_sessions {
            "admin path"
        } else {
            "credential requests by users"
        },
        settings.interims_planned() + sessions.len() as u64
    ));
    let signing_at = Instant::now();
    let am_keys: Vec<wire::PublicKey> = (0..settings.providers)
        .map(|provider| topology.home(provider).am_key)
        .collect();
    let homes: Vec<usize> = (0..settings.providers)
        .map(|provider| topology.home_index(provider))
        .collect();
    let plans = {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || {
            plan::sign_ahead(&settings, &identities, &am_keys, &homes, &sessions).map(|plans| (plans, identities))
        })
        .await
        .context("signing task")??
    };
    let (plans, identities) = plans;
    let signing_s = signing_at.elapsed().as_secs_f64();
    let messages_presigned: u64 = plans
        .iter()
        .map(|plan| (plan.interims.len() + plan.finals.len()) as u64)
        .sum();
    say(format!(
        "loadgen: {messages_presigned} messages signed in {signing_s:.1} s; sending for {} s",
        settings.duration
    ));
    if let Some(path) = &settings.records {
        let keys: Vec<wire::PublicKey> = identities
            .providers
            .iter()
            .map(|(_, identity)| identity.signing_key.public_key())
            .collect();
        let written = loadgen::records::write(path, &keys, &plans, settings.records_max)?;
        say(format!("loadgen: {written} records written to {}", path.display()));
    }
    let shared = Shared::new();
    shared.add_connect_failures(connect_failures);
    let progress = progress_line(&settings, "running", connected.clone(), Some(shared.clone()));
    drive::run(
        &settings,
        plans,
        configs,
        endpoints.clone(),
        &addresses,
        clients,
        shared.clone(),
    )
    .await;
    progress.abort();
    let sent = shared.sent.load(Ordering::Relaxed);
    let start = shared.start;
    let stats = shared.into_stats();
    let elapsed_s = stats
        .last_answer
        .map_or(0.0, |last| last.saturating_duration_since(start).as_secs_f64());
    let setup = Setup {
        messages_presigned,
        signing_s,
        credentials_issued: session_ids.len() as u64,
        sessions_open_s,
        credentials_per_s: session_ids.len() as f64 / sessions_open_s.max(1e-9),
        sessions_via: if settings.admin_sessions {
            "admin"
        } else {
            "credentials"
        }
        .to_owned(),
        certificates_minted: identities.minted as u64,
        providers_connected: providers_connected as u64,
        connect_s,
    };
    let mut report = Report::new(&settings, &setup, &stats, sent, elapsed_s);
    if topology.clustered {
        report.set_partitions(report::partitions(&topology, &stats, &session_ids));
    }
    let mut clean = true;
    if settings.audit {
        // Files listed before the hot stores are read: a message found both
        // in a hot store and in a file written after that listing was moved
        // by an export running during the audit, not stored twice.
        let cold_before = match &settings.cold {
            Some(folder) => Some(archive::parquet_files(folder)?),
            None => None,
        };
        // Every partition's hot store (one AM: its own).
        let mut records = 0;
        let mut runs = Vec::new();
        for node in &topology.nodes {
            let client = peer::quic::AmClient::connect(node.address, &node.admin)
                .await
                .with_context(|| format!("connecting to {} for the audit", node.name))?;
            let (node_records, node_runs) = tokio::time::timeout(Duration::from_secs(600), client.audit(20_000_000))
                .await
                .with_context(|| format!("{} did not finish the audit within 600 s", node.name))??;
            client.close().await;
            // A partition holds only the sessions it minted (their ids'
            // first two bytes): anything else was stored on the wrong node.
            let misplaced = node_runs
                .iter()
                .filter(|run| topology.clustered && run.session_id.partition() != node.id)
                .count();
            anyhow::ensure!(
                misplaced == 0,
                "{} holds {misplaced} runs of sessions minted by other partitions",
                node.name
            );
            records += node_records;
            runs.extend(node_runs);
        }
        let (records, runs, scope) = match (&settings.cold, cold_before) {
            (Some(folder), Some(before)) => {
                // The files are the evidence for exported records: the AM's
                // markers of them are left out, and its hot records joined
                // with the files' rows.
                let runs: Vec<wire::AuditRun> = runs.into_iter().filter(|run| !run.exported).collect();
                let folder = folder.clone();
                let (records, runs) =
                    tokio::task::spawn_blocking(move || report::join_cold(&folder, &before, records, &runs))
                        .await
                        .context("joining the cold storage")??;
                (
                    records,
                    runs,
                    format!(
                        "the hot store of {} and the cold storage {}",
                        topology.describe(),
                        settings
                            .cold
                            .as_ref()
                            .map(|folder| folder.display().to_string())
                            .unwrap_or_default()
                    ),
                )
            }
            _ => (
                records,
                runs,
                format!(
                    "the hot store of {}, and the dedup markers of exported records",
                    topology.describe()
                ),
            ),
        };
        let mut audit = report::audit(&stats, &session_ids, records, &runs);
        audit.scope = scope;
        clean = audit.lost == 0 && audit.double_stored == 0;
        report.set_audit(audit);
    }
    for endpoint in endpoints {
        endpoint.close(0u32.into(), b"done");
    }
    print!("{}", report.summary());
    if let Some(path) = &settings.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &settings.html {
        std::fs::write(path, report.html(&stats.latency)).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(clean)
}

/// The live progress line on a terminal (unless --quiet): connections
/// while connecting, then rates and counts while running.
fn progress_line(
    settings: &Settings,
    phase: &'static str,
    connected: Arc<AtomicUsize>,
    shared: Option<Arc<Shared>>,
) -> tokio::task::JoinHandle<()> {
    let visible = !settings.quiet && std::io::stderr().is_terminal();
    let providers = settings.providers;
    tokio::spawn(async move {
        let bar = if visible {
            indicatif::ProgressBar::new_spinner()
        } else {
            indicatif::ProgressBar::hidden()
        };
        let began = Instant::now();
        let mut last = (Instant::now(), 0u64);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = Instant::now();
            let up = connected.load(Ordering::Relaxed);
            let message = match &shared {
                None => format!(
                    "{phase}: {:>6.1} s  connected {up}/{providers}",
                    now.saturating_duration_since(began).as_secs_f64()
                ),
                Some(shared) => {
                    let stored = shared.stored.load(Ordering::Relaxed);
                    let rate = (stored - last.1) as f64 / now.saturating_duration_since(last.0).as_secs_f64().max(1e-3);
                    last = (now, stored);
                    format!(
                        "{phase}: {:>6.1} s  {:>9.0} acks/s  stored {:>10}  sent {:>10}  errors {:>6}",
                        now.saturating_duration_since(shared.start).as_secs_f64(),
                        rate,
                        stored,
                        shared.sent.load(Ordering::Relaxed),
                        shared.errors.load(Ordering::Relaxed),
                    )
                }
            };
            bar.set_message(message);
            bar.tick();
        }
    })
}
