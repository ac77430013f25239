//! Before the timed phase: the providers' identities, the sessions (opened
//! by users' credential requests, 202 → 206, with the AM pushing each User
//! Credential to its provider, 208; through the AM's admin path instead with
//! `--admin-sessions`) and every message, signed ahead so that the client's
//! CPU measures the server, not itself.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use peer::provider::ProviderSession;
use peer::quic::{AmClient, ClientIdentity};
use wire::{
    AccountingKind, Address, AdminOpenSession, DataFields, Name, Policy, PublicKey, Role, ServiceId, SessionId, Signed,
    SigningKey, TimeOfDay, Usage, UserCredential,
};

use crate::cluster::Topology;
use crate::settings::Settings;
use crate::workload::{SplitMix64, corrupt};

/// The service every loadgen session is for.
pub const LOADGEN_SERVICE: ServiceId = ServiceId(1);

/// Admin connections used to open sessions with `--admin-sessions`, each
/// with up to 8 requests in flight (the AM's default streams per
/// connection).
const ADMIN_CONNECTIONS: usize = 4;
const ADMIN_REQUESTS_PER_CONNECTION: usize = 6;

/// The operator's PKI as loadgen uses it.
pub struct Identities {
    /// The admin (the AM's own, `--am-name`) identity: its key is the AM's key, it runs the
    /// audit and, with `--admin-sessions`, opens the sessions.
    pub admin: ClientIdentity,
    /// The AM's public key (checks User Credentials).
    pub am_key: PublicKey,
    /// Each provider's identity, in order.
    pub providers: Vec<(Name, ClientIdentity)>,
    /// Each user's identity (`user-000N`), in order: they request the
    /// credentials.
    pub users: Vec<ClientIdentity>,
    /// Provider and user certificates loadgen minted with the CA key.
    pub minted: usize,
}

/// The identity `name` of `role` in the PKI folder, if both its files are
/// there.
pub fn read_identity(folder: &Path, ca_der: &[u8], role: Role, name: &Name) -> anyhow::Result<Option<ClientIdentity>> {
    let (certificate, key) = pki::identity_paths(role, name);
    let (certificate, key) = (folder.join(certificate), folder.join(key));
    if !certificate.exists() || !key.exists() {
        return Ok(None);
    }
    Ok(Some(ClientIdentity {
        ca_der: ca_der.to_vec(),
        certificate_der: pki::read_certificate_der(&certificate)?,
        signing_key: pki::read_signing_key(&key)?,
    }))
}

/// Load the PKI folder: provider `i` is `provider-000i` as `acct init`
/// names it, read from the folder when there, minted otherwise.
pub fn identities(folder: &Path, am_name: &str, providers: usize, users: usize) -> anyhow::Result<Identities> {
    let ca_der = pki::read_certificate_der(&folder.join(pki::CA_CERTIFICATE_FILE))
        .with_context(|| format!("reading the CA certificate in {}", folder.display()))?;
    let read = |role: Role, name: &Name| read_identity(folder, &ca_der, role, name);
    let admin_name = Name::new(am_name)?;
    let admin = read(Role::AccountingManager, &admin_name)?.with_context(|| {
        format!(
            "no {admin_name} identity in {}: loadgen opens sessions with it",
            folder.display()
        )
    })?;
    let am_key = admin.signing_key.public_key();
    let mut authority = None;
    let mut minted = 0;
    let mut identity_of = |role: Role, name: &Name| -> anyhow::Result<ClientIdentity> {
        if let Some(identity) = read(role, name)? {
            return Ok(identity);
        }
        if authority.is_none() {
            authority = Some(pki::CertificateAuthority::load(folder).with_context(|| {
                format!(
                    "{} lacks the certificate of {name} and has no CA key to mint it",
                    folder.display()
                )
            })?);
        }
        let Some(ca) = authority.as_ref() else {
            anyhow::bail!("no CA to mint certificates");
        };
        let issued = ca.issue(role, name.as_str())?;
        minted += 1;
        Ok(ClientIdentity {
            ca_der: ca_der.clone(),
            certificate_der: issued.certificate_der,
            signing_key: issued.signing_key,
        })
    };
    let mut out = Vec::with_capacity(providers);
    for index in 1..=providers {
        let name = Name::new(pki::provider_name(index))?;
        out.push((name.clone(), identity_of(Role::Provider, &name)?));
    }
    let mut user_identities = Vec::with_capacity(users);
    for index in 1..=users {
        let name = Name::new(pki::user_name(index))?;
        user_identities.push(identity_of(Role::User, &name)?);
    }
    Ok(Identities {
        admin,
        am_key,
        providers: out,
        users: user_identities,
        minted,
    })
}

/// User Credentials the AM pushed to loadgen's providers, by session.
pub type Pushed = Arc<std::sync::Mutex<std::collections::HashMap<SessionId, Signed<UserCredential>>>>;

/// User connections requesting credentials at once.
const USER_CONNECTIONS: usize = 16;
/// Requests in flight per user connection.
const REQUESTS_PER_USER_CONNECTION: usize = 4;

/// Sessions of the run, through the patent's flow: users request
/// credentials for service N+1 (the AM's development service of provider
/// N+1), the AM pushes each User Credential to the provider's connection
/// (where `pushed` collects it) before answering. Returns each session's
/// provider index and the User Credential the provider received.
pub async fn issue_credentials(
    settings: &Settings,
    identities: &Identities,
    topology: &Topology,
    pushed: &Pushed,
) -> anyhow::Result<Vec<(usize, Signed<UserCredential>)>> {
    let count = settings.session_count();
    let now = peer::clock::now_ms();
    let mut requests = Vec::with_capacity(count);
    for index in 0..count {
        let provider = index % settings.providers;
        let user = &identities.users[index % identities.users.len()];
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(|error| anyhow::anyhow!("randomness: {error}"))?;
        let (id, nonce) = random.split_at(16);
        let request = peer::user::credential_request(
            ServiceId(u32::try_from(provider + 1)?),
            wire::RequestId(id.try_into()?),
            wire::Nonce(nonce.try_into()?),
            now,
            Address::new(format!("127.0.0.{}:{}", 1 + index % 250, 10_000 + index % 50_000))?,
            Bytes::from(user.certificate_der.clone()),
            &user.signing_key,
        )?;
        requests.push((provider, request));
    }
    let ca_der = identities.admin.ca_der.clone();
    let mut tasks = tokio::task::JoinSet::new();
    // Each request goes to its provider's home partition (one AM: all).
    for (home, node) in topology.nodes.iter().enumerate() {
        let requests = homed_at(&requests, topology, home);
        if requests.is_empty() {
            continue;
        }
        let requests = Arc::new(requests);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..USER_CONNECTIONS.min(requests.len()) {
            let client = Arc::new(
                peer::net::UserClient::connect(node.address, &ca_der)
                    .await
                    .with_context(|| format!("connecting to {} as a user", node.name))?,
            );
            for _ in 0..REQUESTS_PER_USER_CONNECTION {
                let (client, requests, next, pushed, am_key) = (
                    client.clone(),
                    requests.clone(),
                    next.clone(),
                    pushed.clone(),
                    node.am_key,
                );
                tasks.spawn(async move {
                    let mut issued = Vec::new();
                    loop {
                        let next = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((index, provider, request)) = requests.get(next) else {
                            return Ok::<_, anyhow::Error>(issued);
                        };
                        let credential = client
                            .request_credential(request)
                            .await
                            .with_context(|| format!("requesting a credential for service {}", provider + 1))?;
                        peer::user::check_credential(&credential, request.value().request_id, &am_key)?;
                        let session_id = credential.value().session_id;
                        let user_credential = pushed
                            .lock()
                            .map_err(|_| anyhow::anyhow!("pushed credentials poisoned"))?
                            .remove(&session_id)
                            .context("the AM answered before the provider held the User Credential")?;
                        issued.push((*index, *provider, user_credential));
                    }
                });
            }
        }
    }
    let mut sessions = Vec::with_capacity(count);
    while let Some(result) = tasks.join_next().await {
        sessions.extend(result.context("credential task")??);
    }
    sessions.sort_unstable_by_key(|(index, _, _)| *index);
    Ok(sessions
        .into_iter()
        .map(|(_, provider, credential)| (provider, credential))
        .collect())
}

/// The requests (provider index, request) whose provider's home is node
/// `home`, each with its place in `requests`.
fn homed_at<T: Clone>(requests: &[(usize, T)], topology: &Topology, home: usize) -> Vec<(usize, usize, T)> {
    requests
        .iter()
        .enumerate()
        .filter(|(_, (provider, _))| topology.home_index(*provider) == home)
        .map(|(index, (provider, request))| (index, *provider, request.clone()))
        .collect()
}

/// Sessions of the run, opened through the AM's admin path: provider index
/// and the User Credential the AM minted.
pub async fn open_sessions(
    settings: &Settings,
    identities: &Identities,
    topology: &Topology,
) -> anyhow::Result<Vec<(usize, Signed<UserCredential>)>> {
    let now = peer::clock::now_ms();
    let policy = Policy {
        valid_from_ms: now.saturating_sub(3_600_000),
        valid_until_ms: now + (settings.duration + settings.drain) * 1000 + 3_600_000,
        time_of_day: TimeOfDay::ANY,
        requests_max: 0,
        address_change_allowed: true,
        required_data: DataFields::UNITS,
        interim_interval_max_s: 0,
    };
    let count = settings.session_count();
    let requests: Vec<(usize, AdminOpenSession)> = (0..count)
        .map(|index| {
            let provider = index % settings.providers;
            let user = index % settings.users;
            Ok((
                provider,
                AdminOpenSession {
                    provider: identities.providers[provider].0.clone(),
                    service_id: LOADGEN_SERVICE,
                    user_id: Name::new(format!("loadgen-user-{:06}", user + 1))?,
                    user_address: Address::new(format!("127.0.0.{}:{}", 1 + user % 250, 10_000 + user % 50_000))?,
                    policy,
                },
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut tasks = tokio::task::JoinSet::new();
    // Each session is opened on its provider's home partition.
    for (home, node) in topology.nodes.iter().enumerate() {
        let requests = homed_at(&requests, topology, home);
        if requests.is_empty() {
            continue;
        }
        let requests = Arc::new(requests);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..ADMIN_CONNECTIONS.min(requests.len()) {
            let client = Arc::new(
                AmClient::connect(node.address, &node.admin)
                    .await
                    .with_context(|| format!("connecting to {} as the operator (its own identity)", node.name))?,
            );
            for _ in 0..ADMIN_REQUESTS_PER_CONNECTION {
                let (client, requests, next) = (client.clone(), requests.clone(), next.clone());
                tasks.spawn(async move {
                    let mut opened = Vec::new();
                    loop {
                        let next = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((index, provider, request)) = requests.get(next) else {
                            return Ok::<_, anyhow::Error>(opened);
                        };
                        let credential = tokio::time::timeout(Duration::from_secs(30), client.open_session(request))
                            .await
                            .context("the AM did not answer a session request within 30 s")?
                            .context("opening a session")?;
                        opened.push((*index, *provider, credential));
                    }
                });
            }
        }
    }
    let mut sessions = Vec::with_capacity(count);
    while let Some(result) = tasks.join_next().await {
        sessions.extend(result.context("session task")??);
    }
    sessions.sort_unstable_by_key(|(index, _, _)| *index);
    Ok(sessions
        .into_iter()
        .map(|(_, provider, credential)| (provider, credential))
        .collect())
}

/// A fault injected after a message, on a stream of its own.
#[derive(Clone, Debug)]
pub enum Fault {
    /// A copy with a corrupted signature.
    BadSignature(Signed<wire::Accounting>),
    /// A message for another provider's session, signed by this provider.
    Foreign(Signed<wire::Accounting>),
    /// Bytes that are not a valid frame.
    Malformed(Bytes),
}

/// One provider's pre-signed traffic.
pub struct ProviderPlan {
    /// The provider's index.
    pub index: usize,
    /// Its sessions.
    pub sessions: Vec<SessionId>,
    /// Interim Accounting in sending order (round-robin over its sessions).
    pub interims: Vec<Signed<wire::Accounting>>,
    /// For each interim: whether to retransmit it after its ack.
    pub duplicate: Vec<bool>,
    /// Faults to inject after the interim at the given index.
    pub faults: Vec<(usize, Fault)>,
    /// One Final Accounting per session (sequence after every interim).
    pub finals: Vec<Signed<wire::Accounting>>,
}

/// Sign every provider's messages ahead, on all cores.
pub fn sign_ahead(
    settings: &Settings,
    identities: &Identities,
    am_keys: &[PublicKey],
    homes: &[usize],
    sessions: &[(usize, Signed<UserCredential>)],
) -> anyhow::Result<Vec<ProviderPlan>> {
    let providers = settings.providers;
    let mut by_provider: Vec<Vec<Signed<UserCredential>>> = vec![Vec::new(); providers];
    for (provider, credential) in sessions {
        by_provider[*provider].push(credential.clone());
    }
    let total = settings.interims_planned();
    // With --rate-steps, each phase's share as its schedule has slots
    // (crate::settings::slots), so that no provider has interims left over
    // past the last phase.
    let stepped = settings.rate_steps.is_some() && !settings.max;
    let share = |index: usize| -> usize {
        if stepped {
            return settings
                .steps()
                .iter()
                .map(|(rate, seconds)| crate::settings::slots(rate.saturating_mul(*seconds), providers, index))
                .sum();
        }
        let base = total / providers as u64;
        let extra = u64::from((index as u64) < total % providers as u64);
        (base + extra) as usize
    };
    // A foreign target per provider: a session of the next provider with
    // the same home partition (another partition would answer
    // WRONG_PARTITION, not exercise the AM's foreign-session rule).
    let home = |index: usize| homes.get(index).copied().unwrap_or(0);
    let foreign_target: Vec<Option<Signed<UserCredential>>> = (0..providers)
        .map(|index| {
            (1..providers)
                .map(|step| (index + step) % providers)
                .find(|other| home(*other) == home(index))
                .and_then(|other| by_provider[other].first().cloned())
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let work: Vec<usize> = (0..providers).collect();
    let chunk = providers.div_ceil(threads).max(1);
    let mut plans: Vec<ProviderPlan> = Vec::with_capacity(providers);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = work
            .chunks(chunk)
            .map(|indices| {
                let by_provider = &by_provider;
                let foreign_target = &foreign_target;
                scope.spawn(move || -> anyhow::Result<Vec<ProviderPlan>> {
                    indices
                        .iter()
                        .map(|&index| {
                            plan_provider(
                                settings,
                                index,
                                &identities.providers[index].1.signing_key,
                                &am_keys[index],
                                &by_provider[index],
                                foreign_target[index].as_ref(),
                                share(index),
                            )
                        })
                        .collect()
                })
            })
            .collect();
        for handle in handles {
            let part = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a signing thread panicked"))??;
            plans.extend(part);
        }
        Ok(())
    })?;
    Ok(plans)
}

fn plan_provider(
    settings: &Settings,
    index: usize,
    key: &SigningKey,
    am_key: &PublicKey,
    credentials: &[Signed<UserCredential>],
    foreign: Option<&Signed<UserCredential>>,
    interims: usize,
) -> anyhow::Result<ProviderPlan> {
    let mut random = SplitMix64::new(settings.seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut sessions: Vec<ProviderSession> = credentials
        .iter()
        .map(|credential| ProviderSession::accept(credential.clone(), am_key, key.clone()))
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(!sessions.is_empty(), "provider {index} has no session");
    let mut foreign = foreign.map(|credential| ProviderSession::resume(credential.clone(), key.clone(), 1 << 40));
    let now = peer::clock::now_ms();
    let mut plan = ProviderPlan {
        index,
        sessions: sessions.iter().map(ProviderSession::session_id).collect(),
        interims: Vec::with_capacity(interims),
        duplicate: Vec::with_capacity(interims),
        faults: Vec::new(),
        finals: Vec::with_capacity(sessions.len()),
    };
    let session_count = sessions.len();
    for position in 0..interims {
        let session = &mut sessions[position % session_count];
        let message = session.account(AccountingKind::INTERIM, usage(&mut random, now))?;
        forget(session, &message);
        plan.duplicate.push(random.chance(settings.duplicates));
        if random.chance(settings.bad_signatures) {
            plan.faults
                .push((position, Fault::BadSignature(corrupt(message.clone()))));
        }
        if let Some(target) = foreign.as_mut()
            && random.chance(settings.foreign_sessions)
        {
            let forged = target.account(AccountingKind::INTERIM, usage(&mut random, now))?;
            forget(target, &forged);
            plan.faults.push((position, Fault::Foreign(forged)));
        }
        if random.chance(settings.malformed) {
            plan.faults.push((position, Fault::Malformed(malformed(&mut random))));
        }
        plan.interims.push(message);
    }
    for session in &mut sessions {
        let message = session.account(AccountingKind::FINAL, usage(&mut random, now))?;
        forget(session, &message);
        plan.finals.push(message);
    }
    Ok(plan)
}

/// The plan keeps its own copies and retransmits them itself: drop the
/// message from the session's unacked backlog so that it never fills.
fn forget(session: &mut ProviderSession, message: &Signed<wire::Accounting>) {
    let _ = session.on_ack(&wire::AckEntry {
        message_id: message.value().message_id(),
        status: wire::AckStatus::STORED,
    });
}

fn usage(random: &mut SplitMix64, now: u64) -> Usage {
    let interval_ms = 1000;
    Usage {
        units: Some(1 + random.below(10)),
        bytes_up: Some(random.below(1 << 20)),
        bytes_down: Some(random.below(1 << 24)),
        duration_ms: Some(interval_ms),
        interval_ms: Some((now - interval_ms, now)),
        custom: Vec::new(),
    }
}

/// A frame the AM must refuse: an unknown type, a truncated Accounting
/// body, or a length prefix over every limit.
fn malformed(random: &mut SplitMix64) -> Bytes {
    let version = wire::limits::PROTOCOL_VERSION;
    match random.below(3) {
        0 => Bytes::from(vec![version, 0x7e, 0, 0, 0, 1, 0]),
        1 => Bytes::from(vec![version, 0x06, 0, 0, 0, 3, 1, 2, 3]),
        _ => Bytes::from(vec![version, 0x06, 0xff, 0xff, 0xff, 0xff]),
    }
}
