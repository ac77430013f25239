//! Hold many provider connections to a running AM, each with one stream
//! that sent one message and got its ack, for a while; then report. Used to
//! measure the AM's memory per connection (`docs/performance.md`).
//!
//! `hold_connections --am 127.0.0.1:4433 --pki acct-data/pki --connections 10000 --hold-seconds 20`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use peer::quic::{AmClient, ClientIdentity, Received, client_endpoint};
use wire::{AccountingKind, Name, Role, ServiceId, SessionId, Signed, Usage};

#[derive(Parser)]
struct Args {
    /// The AM's address.
    #[arg(long)]
    am: SocketAddr,
    /// The PKI folder (from `acct init` or the embedded default's DIR/pki).
    #[arg(long)]
    pki: PathBuf,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Provider identities to spread them over (provider-0001 …); the AM
    /// takes at most `connections_per_provider_max` (64) from each.
    #[arg(long, default_value_t = 16)]
    providers: usize,
    /// How long to hold them once all are open.
    #[arg(long, default_value_t = 10)]
    hold_seconds: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.connections <= 100_000, "at most 100000 connections");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let ca_der = pki::read_certificate_der(&args.pki.join(pki::CA_CERTIFICATE_FILE))?;
    let mut endpoints = Vec::new();
    let mut keys = Vec::new();
    for index in 1..=args.providers.max(1) {
        let name = Name::new(pki::provider_name(index))?;
        let (certificate, key) = pki::identity_paths(Role::Provider, &name);
        let identity = ClientIdentity {
            ca_der: ca_der.clone(),
            certificate_der: pki::read_certificate_der(&args.pki.join(certificate))?,
            signing_key: pki::read_signing_key(&args.pki.join(key))?,
        };
        endpoints.push(client_endpoint(&identity, args.am.is_ipv6())?);
        keys.push(identity.signing_key);
    }
    let started = Instant::now();
    let mut held = Vec::with_capacity(args.connections);
    // Open in waves so the handshakes do not all time out at once.
    // At most 200 at once: the AM takes 256 handshakes from one address at a time.
    for wave in (0..args.connections).collect::<Vec<_>>().chunks(200) {
        let mut tasks = tokio::task::JoinSet::new();
        for &index in wave {
            let endpoint = endpoints[index % endpoints.len()].clone();
            let key = keys[index % keys.len()].clone();
            let address = args.am;
            tasks.spawn(async move {
                let client = AmClient::connect_on(&endpoint, address).await?;
                let mut stream = client.open_accounting().await?;
                // A message for a session that does not exist: the AM answers
                // UNKNOWN_SESSION, which exercises the whole stream path.
                let message = Signed::sign(
                    wire::Accounting {
                        service_id: ServiceId(1),
                        kind: AccountingKind::INTERIM,
                        session_id: SessionId([index as u8; 16]),
                        sequence: 1,
                        credential_digest: [0; 16],
                        usage: Usage::default(),
                    },
                    &key,
                )
                .map_err(|error| anyhow::anyhow!("{error}"))?;
                stream.sender.send(&[message]).await?;
                match tokio::time::timeout(Duration::from_secs(30), stream.receiver.next()).await {
                    Ok(Ok(Some(Received::Acks(_)))) => Ok::<_, anyhow::Error>((client, stream)),
                    other => Err(anyhow::anyhow!("no ack: {other:?}")),
                }
            });
        }
        while let Some(result) = tasks.join_next().await {
            held.push(result.context("connection task")??);
        }
    }
    println!(
        "{{\"connections\": {}, \"open_seconds\": {:.1}}}",
        held.len(),
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(args.hold_seconds)).await;
    for (client, _stream) in held {
        client.close().await;
    }
    Ok(())
}
