//! A hostile provider (or peer) for `bench/scripts/hostile.sh`: one attack,
//! as hard as it can, for `--duration` seconds, while honest providers
//! (loadgen) keep sending. It reports what the AM answered on stdout as
//! one JSON line.
//!
//! `attacker --am ADDR --pki DIR --attack KIND --duration S`
//!
//! The attacker is `provider-9999` (minted with the CA key in DIR if it is
//! missing); sessions it needs are opened through the admin path with DIR's
//! `am-1` identity.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use peer::quic::{AmClient, ClientIdentity, Received};
use wire::{
    AccountingKind, Address, AdminOpenSession, DataFields, Name, Policy, Role, ServiceId, Signed, TimeOfDay, Usage,
};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Attack {
    /// Accounting messages with corrupted signatures, as fast as acks allow.
    BadSignatures,
    /// Valid accounting written one byte per write.
    SplitFrames,
    /// Random bytes on fresh streams.
    RandomBytes,
    /// Frame headers declaring bodies far over the limit.
    Oversized,
    /// Thousands of streams opened and left idle, on several connections.
    IdleStreams,
    /// Handshakes started and abandoned after their first flight.
    HalfOpen,
    /// Accounting for another provider's sessions (signed with our key).
    OtherSessions,
    /// Stored messages replayed with changed content.
    ReplayChanged,
    /// Reconnecting again and again with a revoked (denied) certificate.
    Revoked,
}

#[derive(Parser, Debug)]
struct Args {
    /// The AM's address.
    #[arg(long)]
    am: SocketAddr,
    /// The operator's PKI folder (CA key, am-1 identity).
    #[arg(long)]
    pki: PathBuf,
    #[arg(long, value_enum)]
    attack: Attack,
    /// Seconds of attack.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// The honest provider whose sessions `other-sessions` bills.
    #[arg(long, default_value = "provider-0001")]
    victim: String,
    /// The local address every attack comes from: another loopback address
    /// than the honest providers', as an attacker's own machine would be.
    #[arg(long, default_value = "127.0.0.2")]
    bind: std::net::IpAddr,
    /// Initials per second for `half-open` (the earlier attacker, which made
    /// each one on the fly, reached about 23,000 a second).
    #[arg(long, default_value_t = 25_000)]
    rate: u64,
}

/// Connect to the AM as `me` from the attacker's own address (`--bind`).
async fn connect(args: &Args, me: &ClientIdentity) -> anyhow::Result<AmClient> {
    let endpoint = peer::quic::shared_endpoint(SocketAddr::new(args.bind, 0))?;
    Ok(AmClient::connect_with(&endpoint, peer::quic::client_config(me)?, args.am).await?)
}

/// Counters reported at the end.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    answers: std::sync::Mutex<BTreeMap<String, u64>>,
    connections: AtomicU64,
    disconnects: AtomicU64,
}

impl Counts {
    fn answer(&self, what: String, count: u64) {
        *self.answers.lock().expect("counts").entry(what).or_default() += count;
    }
}

const ATTACKER: &str = "provider-9999";

fn identity(folder: &std::path::Path, role: Role, name: &str) -> anyhow::Result<ClientIdentity> {
    let name = Name::new(name)?;
    let ca_der = pki::read_certificate_der(&folder.join(pki::CA_CERTIFICATE_FILE))?;
    let (certificate, key) = pki::identity_paths(role, &name);
    if folder.join(&certificate).exists() {
        return Ok(ClientIdentity {
            ca_der,
            certificate_der: pki::read_certificate_der(&folder.join(certificate))?,
            signing_key: pki::read_signing_key(&folder.join(key))?,
        });
    }
    let issued = pki::CertificateAuthority::load(folder)?.issue(role, name.as_str())?;
    Ok(ClientIdentity {
        ca_der,
        certificate_der: issued.certificate_der,
        signing_key: issued.signing_key,
    })
}

fn policy(now_ms: u64) -> Policy {
    Policy {
        valid_from_ms: now_ms.saturating_sub(3_600_000),
        valid_until_ms: now_ms + 24 * 3_600_000,
        time_of_day: TimeOfDay::ANY,
        requests_max: 0,
        address_change_allowed: true,
        required_data: DataFields::UNITS,
        interim_interval_max_s: 0,
    }
}

/// Open `count` sessions for `provider` through the admin path.
async fn sessions(args: &Args, provider: &str, count: usize) -> anyhow::Result<Vec<Signed<wire::UserCredential>>> {
    let admin = AmClient::connect(args.am, &identity(&args.pki, Role::AccountingManager, "am-1")?).await?;
    let mut out = Vec::with_capacity(count);
    for index in 0..count {
        out.push(
            admin
                .open_session(&AdminOpenSession {
                    provider: Name::new(provider)?,
                    service_id: ServiceId(7),
                    user_id: Name::new(format!("victim-{index}"))?,
                    user_address: Address::new("127.0.0.1:9")?,
                    policy: policy(acct::clock::now_ms()),
                })
                .await?,
        );
    }
    admin.close().await;
    Ok(out)
}

fn accounting(
    credential: &Signed<wire::UserCredential>,
    sequence: u64,
    units: u64,
    key: &wire::SigningKey,
) -> anyhow::Result<Signed<wire::Accounting>> {
    let value = credential.value();
    Ok(Signed::sign(
        wire::Accounting {
            service_id: value.service_id,
            kind: AccountingKind::INTERIM,
            session_id: value.session_id,
            sequence,
            credential_digest: wire::credential_digest(credential),
            usage: Usage {
                units: Some(units),
                ..Usage::default()
            },
        },
        key,
    )?)
}

/// Send batches from `make` on one accounting stream per connection, as
/// fast as the AM's acks come back (64 in flight), until `until`;
/// reconnect when the AM closes the connection.
async fn flood(
    args: &Args,
    me: &ClientIdentity,
    counts: &Counts,
    until: Instant,
    make: &(dyn Fn(u64) -> Vec<Signed<wire::Accounting>> + Sync),
) {
    let mut round = 0u64;
    while Instant::now() < until {
        let Ok(client) = connect(args, me).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        counts.connections.fetch_add(1, Ordering::Relaxed);
        let Ok(stream) = client.open_accounting().await else {
            continue;
        };
        let (mut sender, mut receiver) = (stream.sender, stream.receiver);
        loop {
            if Instant::now() >= until {
                break;
            }
            let batch = make(round);
            round += 1;
            if let Err(error) = sender.send(&batch).await {
                counts.disconnects.fetch_add(1, Ordering::Relaxed);
                counts.answer(format!("send failed: {error}"), 1);
                closed_because(&client, counts).await;
                break;
            }
            counts.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
            let mut answered = 0;
            let mut broken = false;
            while answered < batch.len() {
                match tokio::time::timeout(Duration::from_secs(5), receiver.next()).await {
                    Ok(Ok(Some(Received::Acks(entries)))) => {
                        answered += entries.len();
                        for entry in entries {
                            counts.answer(format!("{:?}", entry.status), 1);
                        }
                    }
                    Ok(Ok(Some(Received::Error(error)))) => {
                        counts.answer(format!("error {:?}", error.code), 1);
                        broken = true;
                        break;
                    }
                    _ => {
                        broken = true;
                        break;
                    }
                }
            }
            if broken {
                counts.disconnects.fetch_add(1, Ordering::Relaxed);
                closed_because(&client, counts).await;
                break;
            }
        }
        client.close().await;
    }
}

/// Count why the AM closed `client`'s connection, waiting for the close a
/// little: the AM flushes its answers first (within 5 s).
async fn closed_because(client: &AmClient, counts: &Counts) {
    let connection = client.connection_handle();
    match tokio::time::timeout(Duration::from_secs(6), connection.closed()).await {
        Ok(reason) => counts.answer(format!("closed: {reason}"), 1),
        Err(_) => counts.answer("not closed within 6 s".to_owned(), 1),
    }
}

/// Open raw streams and write `bytes` on each, reading whatever comes back,
/// until `until`.
async fn raw_streams(
    args: &Args,
    me: &ClientIdentity,
    counts: &Counts,
    until: Instant,
    bytes: &(dyn Fn() -> Vec<u8> + Sync),
) {
    while Instant::now() < until {
        let Ok(client) = connect(args, me).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        counts.connections.fetch_add(1, Ordering::Relaxed);
        let connection = client.connection_handle();
        while Instant::now() < until {
            let Ok((mut send, mut receive)) = connection.open_bi().await else {
                counts.disconnects.fetch_add(1, Ordering::Relaxed);
                break;
            };
            let payload = bytes();
            if send.write_all(&payload).await.is_err() {
                counts.disconnects.fetch_add(1, Ordering::Relaxed);
                break;
            }
            counts.sent.fetch_add(1, Ordering::Relaxed);
            let _ = send.finish();
            match tokio::time::timeout(Duration::from_secs(2), receive.read_to_end(64 * 1024)).await {
                Ok(Ok(answer)) => counts.answer(
                    match wire::Message::decode(bytes::Bytes::from(answer)) {
                        Ok(wire::Message::Error(error)) => format!("error {:?}", error.code),
                        Ok(other) => format!("message {:?}", other.message_type()),
                        Err(_) => "stream closed".to_owned(),
                    },
                    1,
                ),
                Ok(Err(_)) => counts.answer("stream reset".to_owned(), 1),
                Err(_) => counts.answer("no answer in 2 s".to_owned(), 1),
            }
        }
        client.close().await;
    }
}

fn random_bytes(length: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; length];
    getrandom::fill(&mut bytes).expect("random bytes");
    bytes
}

async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let counts = Arc::new(Counts::default());
    let me = identity(&args.pki, Role::Provider, ATTACKER)?;
    // Half-open's Initials are made ahead, as loadgen signs its messages
    // ahead: what the attack measures is what the AM pays per Initial, not
    // the attacker's own TLS work on the AM's cores (a real attacker spends
    // its own machine).
    let initials = if args.attack == Attack::HalfOpen {
        initials(&args, &me, HALF_OPEN_INITIALS)?
    } else {
        Vec::new()
    };
    let started = Instant::now();
    let until = started + Duration::from_secs(args.duration);
    let attack = async {
        match args.attack {
            Attack::BadSignatures => {
                let credentials = sessions(&args, ATTACKER, 4).await?;
                let template: Vec<_> = (0..64u64)
                    .map(|index| accounting(&credentials[index as usize % 4], 1_000_000 + index, 1, &me.signing_key))
                    .collect::<Result<_, _>>()?;
                let corrupted: Vec<Signed<wire::Accounting>> = template
                    .into_iter()
                    .map(|message| {
                        let mut frame = bytes::BytesMut::new();
                        message.encode_frame(&mut frame);
                        let last = frame.len() - 1;
                        frame[last] ^= 0x01;
                        match wire::Message::decode(frame.freeze()) {
                            Ok(wire::Message::Accounting(signed)) => signed,
                            _ => unreachable!("a flipped signature bit still decodes"),
                        }
                    })
                    .collect();
                let tasks: Vec<_> = (0..4)
                    .map(|_| {
                        let (args, me, counts, corrupted) =
                            (clone_args(&args), me.clone(), counts.clone(), corrupted.clone());
                        tokio::spawn(async move { flood(&args, &me, &counts, until, &|_| corrupted.clone()).await })
                    })
                    .collect();
                for task in tasks {
                    task.await?;
                }
            }
            Attack::SplitFrames => {
                let credentials = sessions(&args, ATTACKER, SPLIT_CONNECTIONS).await?;
                let tasks: Vec<_> = credentials
                    .into_iter()
                    .enumerate()
                    .map(|(index, credential)| {
                        let (args, me, counts) = (clone_args(&args), me.clone(), counts.clone());
                        tokio::spawn(async move { split_frames(&args, &me, &counts, until, &credential, index).await })
                    })
                    .collect();
                for task in tasks {
                    task.await??;
                }
            }
            Attack::RandomBytes => {
                let tasks: Vec<_> = (0..4)
                    .map(|_| {
                        let (args, me, counts) = (clone_args(&args), me.clone(), counts.clone());
                        tokio::spawn(
                            async move { raw_streams(&args, &me, &counts, until, &|| random_bytes(4096)).await },
                        )
                    })
                    .collect();
                for task in tasks {
                    task.await?;
                }
            }
            Attack::Oversized => {
                let tasks: Vec<_> = (0..4)
                    .map(|_| {
                        let (args, me, counts) = (clone_args(&args), me.clone(), counts.clone());
                        tokio::spawn(async move {
                            raw_streams(&args, &me, &counts, until, &|| {
                                // An accounting frame header declaring a body of
                                // 2 GiB, then some of it.
                                let mut bytes = vec![0u8; 4096];
                                bytes[0] = wire::limits::PROTOCOL_VERSION;
                                bytes[1] = wire::MessageType::ACCOUNTING.0;
                                bytes[2..6].copy_from_slice(&0x8000_0000u32.to_be_bytes());
                                bytes
                            })
                            .await
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await?;
                }
            }
            Attack::IdleStreams => {
                let mut held = Vec::new();
                let mut clients = Vec::new();
                for _ in 0..8 {
                    let client = connect(&args, &me).await?;
                    counts.connections.fetch_add(1, Ordering::Relaxed);
                    let connection = client.connection_handle();
                    for _ in 0..2_000 {
                        if Instant::now() >= until {
                            break;
                        }
                        match tokio::time::timeout(Duration::from_millis(200), connection.open_bi()).await {
                            Ok(Ok((mut send, receive))) => {
                                // One byte makes the stream real for the AM.
                                if send.write_all(&[0x07]).await.is_err() {
                                    break;
                                }
                                counts.sent.fetch_add(1, Ordering::Relaxed);
                                held.push((send, receive));
                            }
                            // The AM's stream limit: it allows no more.
                            _ => {
                                counts.answer("stream refused (limit)".to_owned(), 1);
                                break;
                            }
                        }
                    }
                    clients.push(client);
                }
                tokio::time::sleep_until(until.into()).await;
                counts.answer("streams held".to_owned(), held.len() as u64);
                drop(held);
                for client in clients {
                    client.close().await;
                }
            }
            Attack::HalfOpen => {
                // Initials made before the attack (below), sent at `--rate`
                // from 16 plain UDP sockets that never answer: the AM
                // decrypts each and either starts its half of the handshake
                // (holding it until it gives up) or drops it.
                let sockets: Vec<std::net::UdpSocket> = (0..16)
                    .map(|_| std::net::UdpSocket::bind(SocketAddr::new(args.bind, 0)))
                    .collect::<Result<_, _>>()?;
                let mut index = 0usize;
                let mut sent = 0u64;
                while Instant::now() < until {
                    let due = (started.elapsed().as_secs_f64() * args.rate as f64) as u64;
                    while sent < due {
                        let packet = &initials[index % initials.len()];
                        let _ = sockets[index % sockets.len()].send_to(packet, args.am);
                        index += 1;
                        sent += 1;
                    }
                    counts.sent.store(sent, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Attack::OtherSessions => {
                let credentials = sessions(&args, &args.victim, 4).await?;
                let messages: Vec<_> = (0..64u64)
                    .map(|index| accounting(&credentials[index as usize % 4], 1 + index, 1, &me.signing_key))
                    .collect::<Result<_, _>>()?;
                flood(&args, &me, &counts, until, &|_| messages.clone()).await;
            }
            Attack::ReplayChanged => {
                let credentials = sessions(&args, ATTACKER, 1).await?;
                let originals: Vec<_> = (1..=64u64)
                    .map(|sequence| accounting(&credentials[0], sequence, 1, &me.signing_key))
                    .collect::<Result<_, _>>()?;
                // Store the originals first.
                let client = connect(&args, &me).await?;
                let stream = client.open_accounting().await?;
                let (mut sender, mut receiver) = (stream.sender, stream.receiver);
                sender.send(&originals).await?;
                let mut answered = 0;
                while answered < originals.len() {
                    if let Some(Received::Acks(entries)) = receiver.next().await? {
                        answered += entries.len();
                    }
                }
                client.close().await;
                let key = me.signing_key.clone();
                let credential = credentials[0].clone();
                flood(&args, &me, &counts, until, &move |round| {
                    (1..=64u64)
                        .map(|sequence| accounting(&credential, sequence, 2 + round, &key).expect("sign"))
                        .collect()
                })
                .await;
            }
            Attack::Revoked => {
                while Instant::now() < until {
                    // An address in its backoff gets no answer: stop waiting at the end.
                    let Ok(attempt) = tokio::time::timeout_at(until.into(), connect(&args, &me)).await else {
                        counts.answer("no answer before the end".to_owned(), 1);
                        break;
                    };
                    match attempt {
                        Ok(client) => {
                            counts.connections.fetch_add(1, Ordering::Relaxed);
                            let connection = client.connection_handle();
                            let reason = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
                            counts.answer(
                                match reason {
                                    Ok(reason) => format!("closed: {reason}"),
                                    Err(_) => "still open after 2 s".to_owned(),
                                },
                                1,
                            );
                        }
                        Err(error) => counts.answer(format!("refused: {error}"), 1),
                    }
                    counts.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok::<(), anyhow::Error>(())
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // SIGTERM ends the attack early; the report covers what was done.
    tokio::select! {
        result = attack => result?,
        _ = terminate.recv() => {}
    }
    let answers = counts.answers.lock().expect("counts").clone();
    Ok(serde_json::json!({
        "attack": format!("{:?}", args.attack),
        "seconds": started.elapsed().as_secs_f64(),
        "sent": counts.sent.load(Ordering::Relaxed),
        "connections": counts.connections.load(Ordering::Relaxed),
        "disconnects": counts.disconnects.load(Ordering::Relaxed),
        "answers": answers,
    }))
}

/// Connections `split-frames` writes on at once, one stream each.
const SPLIT_CONNECTIONS: usize = 16;

/// One connection of `split-frames`, reconnecting when cut off: valid
/// accounting written one byte at a time, each byte in a packet of its own
/// (a pause of about a millisecond after each lets QUIC send it before the
/// next; without it quinn packs the bytes of a message into one packet).
async fn split_frames(
    args: &Args,
    me: &ClientIdentity,
    counts: &Arc<Counts>,
    until: Instant,
    credential: &Signed<wire::UserCredential>,
    index: usize,
) -> anyhow::Result<()> {
    // Sequences of different connections never meet.
    let mut sequence = 1 + index as u64 * 1_000_000_000;
    while Instant::now() < until {
        // Cut off for its tiny packets, it reconnects: closed after the
        // handshake (backoff), then not answered at all.
        let Ok(attempt) = tokio::time::timeout_at(until.into(), connect(args, me)).await else {
            counts.answer("no answer before the end".to_owned(), 1);
            break;
        };
        let client = match attempt {
            Ok(client) => client,
            Err(error) => {
                counts.answer(format!("refused: {error}"), 1);
                continue;
            }
        };
        counts.connections.fetch_add(1, Ordering::Relaxed);
        let connection = client.connection_handle();
        let Ok((mut send, mut receive)) = connection.open_bi().await else {
            counts.disconnects.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let reader = {
            let counts = counts.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(Some(read)) = receive.read(&mut buffer).await {
                    counts.answer("ack bytes".to_owned(), read as u64);
                }
            })
        };
        let mut stats_before = connection.stats();
        'stream: while Instant::now() < until {
            let message = accounting(credential, sequence, 1, &me.signing_key)?;
            sequence += 1;
            let mut frame = bytes::BytesMut::new();
            message.encode_frame(&mut frame);
            for byte in frame.iter() {
                if send.write_all(&[*byte]).await.is_err() {
                    break 'stream;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            counts.sent.fetch_add(1, Ordering::Relaxed);
            let stats = connection.stats();
            counts.answer(
                "datagrams sent".to_owned(),
                stats.udp_tx.datagrams - stats_before.udp_tx.datagrams,
            );
            counts.answer("bytes written".to_owned(), frame.len() as u64);
            stats_before = stats;
        }
        if let Some(reason) = connection.close_reason() {
            counts.disconnects.fetch_add(1, Ordering::Relaxed);
            counts.answer(format!("closed: {reason}"), 1);
        }
        reader.abort();
        client.close().await;
    }
    Ok(())
}

/// Distinct Initials half-open cycles through (each a fresh connection ID
/// and ClientHello; one pass takes under a second at the default rate).
const HALF_OPEN_INITIALS: usize = 16_384;

/// `count` real client Initials (valid QUIC and TLS ClientHellos, made by
/// quinn-proto), each from a fresh connection attempt.
fn initials(args: &Args, me: &ClientIdentity, count: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let config = peer::quic::client_config_for(&me.ca_der, None, wire::Role::AccountingManager)?;
    let mut packets = Vec::with_capacity(count);
    while packets.len() < count {
        // A fresh state machine per batch keeps the attacker's memory flat.
        let mut endpoint =
            quinn_proto::Endpoint::new(Arc::new(quinn_proto::EndpointConfig::default()), None, false, None);
        for _ in 0..256 {
            let now = Instant::now();
            let (_, mut connection) = endpoint.connect(now, config.clone(), args.am, peer::quic::AM_SERVER_NAME)?;
            let mut buffer = Vec::with_capacity(2048);
            let transmit = connection
                .poll_transmit(now, 1, &mut buffer)
                .context("a new connection has an Initial to send")?;
            buffer.truncate(transmit.size);
            packets.push(buffer);
        }
    }
    packets.truncate(count);
    Ok(packets)
}

fn clone_args(args: &Args) -> Args {
    Args {
        am: args.am,
        pki: args.pki.clone(),
        attack: args.attack,
        duration: args.duration,
        victim: args.victim.clone(),
        bind: args.bind,
        rate: args.rate,
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let report = runtime.block_on(run(args))?;
    println!("{report}");
    // Held connections and streams die with the process.
    std::process::exit(0);
}
