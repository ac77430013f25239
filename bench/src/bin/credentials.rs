//! Credentials issued per second by a running AM, through the whole
//! issuance path: user request (202) → checks → push to the provider and
//! its receipt (208) → synced store → Service Credential (206).
//!
//! Starts one provider (`peer::node::ProviderNode` as provider-0001,
//! serving users where the AM's service 1 says) and `--concurrency` users,
//! each on its own QUIC connection, with every request signed before the
//! clock starts. Prints one JSON line.
//!
//! `credentials --am 127.0.0.1:4433 --pki acct-data/pki --requests 5000 --concurrency 64`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use peer::net::UserClient;
use peer::node::ProviderNode;
use peer::quic::ClientIdentity;
use wire::{Address, Name, Nonce, RequestId, Role, ServiceId};

#[derive(Parser)]
struct Args {
    /// The AM's address.
    #[arg(long)]
    am: SocketAddr,
    /// The PKI folder (from `acct init` or the embedded default's DIR/pki).
    #[arg(long)]
    pki: PathBuf,
    /// Credentials to request.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    requests: u64,
    /// Users requesting at once, each on its own connection (the AM takes
    /// at most 64 user connections from one address).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=64))]
    concurrency: u64,
    /// User identities to sign with (user-0001 …), from the PKI folder;
    /// those it lacks are minted in memory with its CA key. Each holds at
    /// most the AM's `sessions_per_user_max` (1,000) live sessions: keep
    /// requests / users below it.
    #[arg(long, default_value_t = 64)]
    users: usize,
    /// Where provider-0001 serves users: the AM's service 1 must say so
    /// (the embedded default's service 1 is at 127.0.0.1:7001).
    #[arg(long, default_value = "127.0.0.1:7001")]
    provider_listen: SocketAddr,
}

fn identity(pki: &std::path::Path, role: Role, name: &str) -> anyhow::Result<ClientIdentity> {
    let (certificate, key) = pki::identity_paths(role, &Name::new(name)?);
    Ok(ClientIdentity {
        ca_der: pki::read_certificate_der(&pki.join(pki::CA_CERTIFICATE_FILE))?,
        certificate_der: pki::read_certificate_der(&pki.join(certificate))?,
        signing_key: pki::read_signing_key(&pki.join(key))?,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let am_key = identity(&args.pki, Role::AccountingManager, "am-1")?
        .signing_key
        .public_key();
    let provider = ProviderNode::start(
        args.am,
        identity(&args.pki, Role::Provider, "provider-0001")?,
        am_key,
        args.provider_listen,
    )
    .await
    .context("starting provider-0001")?;
    let mut authority = None;
    let mut users: Vec<ClientIdentity> = Vec::with_capacity(args.users.max(1));
    for index in 1..=args.users.max(1) {
        let name = pki::user_name(index);
        let user = match identity(&args.pki, Role::User, &name) {
            Ok(user) => user,
            Err(_) => {
                if authority.is_none() {
                    authority =
                        Some(pki::CertificateAuthority::load(&args.pki).with_context(|| {
                            format!("{name} is not in the PKI folder, and its CA key is not either")
                        })?);
                }
                let Some(ca) = authority.as_ref() else {
                    anyhow::bail!("no CA to mint {name}");
                };
                let issued = ca.issue(Role::User, &name)?;
                ClientIdentity {
                    ca_der: pki::read_certificate_der(&args.pki.join(pki::CA_CERTIFICATE_FILE))?,
                    certificate_der: issued.certificate_der,
                    signing_key: issued.signing_key,
                }
            }
        };
        users.push(user);
    }
    let now = acct::clock::now_ms();
    let mut requests = Vec::with_capacity(args.requests as usize);
    for index in 0..args.requests {
        let user = &users[index as usize % users.len()];
        let mut id = [0u8; 16];
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut id).map_err(|error| anyhow::anyhow!("{error}"))?;
        getrandom::fill(&mut nonce).map_err(|error| anyhow::anyhow!("{error}"))?;
        requests.push(peer::user::credential_request(
            ServiceId(1),
            RequestId(id),
            Nonce(nonce),
            now,
            Address::new("127.0.0.1:5000")?,
            bytes::Bytes::from(user.certificate_der.clone()),
            &user.signing_key,
        )?);
    }
    let requests = Arc::new(requests);
    let ca_der = users[0].ca_der.clone();
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        clients.push(
            UserClient::connect(args.am, &ca_der)
                .await
                .context("a user connecting")?,
        );
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        let (requests, next) = (requests.clone(), next.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut refused = 0u64;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(request) = requests.get(index) else { break };
                let sent = Instant::now();
                match client.request_credential(request).await {
                    Ok(_) => latencies.push(sent.elapsed()),
                    Err(_) => refused += 1,
                }
            }
            client.close().await;
            (latencies, refused)
        });
    }
    let mut latencies: Vec<Duration> = Vec::new();
    let mut refused = 0;
    while let Some(result) = tasks.join_next().await {
        let (mut part, failed) = result?;
        latencies.append(&mut part);
        refused += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let quantile = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |latency| latency.as_secs_f64() * 1000.0)
    };
    let pushed = provider.session_count();
    provider.stop().await;
    println!(
        "{{\"requests\": {}, \"concurrency\": {}, \"issued\": {}, \"refused\": {refused}, \"pushed_to_provider\": {pushed}, \"seconds\": {elapsed:.2}, \"issued_per_s\": {:.0}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}, \"max_ms\": {:.2}}}",
        args.requests,
        args.concurrency,
        latencies.len(),
        latencies.len() as f64 / elapsed,
        quantile(0.5),
        quantile(0.99),
        quantile(1.0)
    );
    anyhow::ensure!(refused == 0, "{refused} requests were refused");
    Ok(())
}
