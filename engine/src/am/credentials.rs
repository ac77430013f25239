//! Credential issuance (201 → 202 → 204 → 206 and 208): the service list,
//! the checks on a Service Credential Request, the replay cache, and the
//! push of the User Credential to the provider's own connection.
//!
//! Order: validate → mint → push to the provider and wait for its receipt
//! → store the session durably → answer the user. A session the provider
//! did not confirm is never stored, so no half-made session is usable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use wire::{
    Address, DataFields, ErrorCode, ErrorMessage, Message, Name, Nonce, Policy, ReceiptStatus, RequestId,
    ServiceCredential, ServiceCredentialRequest, ServiceEntry, ServiceId, SessionId, SessionKey, Signed, SigningKey,
    TimeOfDay, TrustedCa, UserCredential,
};

use crate::config::ServiceConfig;

/// How far a request's timestamp may be from the AM's clock.
pub const REQUEST_SKEW_MS_MAX: u64 = 5 * 60 * 1000;
/// How long request ids and nonces are remembered (covers the skew both ways).
pub const REPLAY_WINDOW_MS: u64 = 2 * REQUEST_SKEW_MS_MAX;
/// Requests remembered before the cache counts as full (about 170 bytes
/// each with its indexes: 17 MB). When full, a user that holds
/// [`REPLAY_ENTRIES_FAIR_SHARE`] entries or more is answered BUSY; one
/// that holds fewer still gets in, up to [`REPLAY_ENTRIES_HARD_MAX`].
pub const REPLAY_ENTRIES_MAX: usize = 100_000;
/// What a user may still add when the cache is full: the heavy users who
/// filled it wait, the others do not (ten users at their own bound cannot
/// lock everyone out).
pub const REPLAY_ENTRIES_FAIR_SHARE: usize = 100;
/// The cache's hard bound, full and fair shares together (34 MB).
pub const REPLAY_ENTRIES_HARD_MAX: usize = 2 * REPLAY_ENTRIES_MAX;
/// Services in the development default: one per development provider, as
/// many as loadgen can run (10,000 providers).
pub const DEFAULT_SERVICES: u32 = 10_000;
/// How long the AM waits for a provider's receipt.
pub const RECEIPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The services the AM accounts for, by id.
#[derive(Debug, Clone)]
pub struct ServiceDirectory {
    entries: Vec<ServiceEntry>,
}

impl ServiceDirectory {
    /// From the config's `[[services]]`, or the development default: service
    /// N offered by `provider-N` (the development PKI's names, 4 digits) at
    /// 127.0.0.1:(7000 + N), for N = 1..=[`DEFAULT_SERVICES`].
    pub fn from_config(services: &[ServiceConfig]) -> anyhow::Result<Self> {
        let mut entries = Vec::new();
        if services.is_empty() {
            for index in 1..=DEFAULT_SERVICES {
                entries.push(ServiceEntry {
                    service_id: ServiceId(index),
                    name: Name::new(format!("service-{index}"))?,
                    provider: Name::new(pki::provider_name(index as usize))?,
                    provider_address: Address::new(format!("127.0.0.1:{}", 7000 + index))?,
                    unit: Name::new("units")?,
                    policy: relative_policy(24 * 3600, 0, TimeOfDay::ANY, false, DataFields::NONE, 0),
                });
            }
        }
        for service in services {
            let mut required = DataFields::NONE;
            for field in &service.required_data {
                required = required.union(match field.as_str() {
                    "units" => DataFields::UNITS,
                    "bytes_up" => DataFields::BYTES_UP,
                    "bytes_down" => DataFields::BYTES_DOWN,
                    "duration" => DataFields::DURATION,
                    "interval" => DataFields::INTERVAL,
                    other => anyhow::bail!("service {}: unknown required_data {other:?}", service.id),
                });
            }
            let [start_minute, end_minute] = service.time_of_day;
            anyhow::ensure!(
                start_minute < 1440 && end_minute < 1440,
                "service {}: time_of_day minutes must be below 1440",
                service.id
            );
            anyhow::ensure!(
                entries
                    .iter()
                    .all(|entry: &ServiceEntry| entry.service_id.0 != service.id),
                "service id {} listed twice",
                service.id
            );
            entries.push(ServiceEntry {
                service_id: ServiceId(service.id),
                name: Name::new(service.name.as_str())
                    .map_err(|error| anyhow::anyhow!("service {} name: {error}", service.id))?,
                provider: Name::new(service.provider.as_str())
                    .map_err(|error| anyhow::anyhow!("service {} provider: {error}", service.id))?,
                provider_address: Address::new(service.provider_address.as_str())
                    .map_err(|error| anyhow::anyhow!("service {} provider_address: {error}", service.id))?,
                unit: Name::new(service.unit.as_str())
                    .map_err(|error| anyhow::anyhow!("service {} unit: {error}", service.id))?,
                policy: relative_policy(
                    service.lifetime_s,
                    service.requests_max,
                    TimeOfDay {
                        start_minute,
                        end_minute,
                    },
                    service.address_change_allowed,
                    required,
                    service.interim_interval_max_s,
                ),
            });
        }
        entries.sort_by_key(|entry| entry.service_id.0);
        Ok(Self { entries })
    }

    /// A directory of exactly these entries.
    pub fn from_entries(mut entries: Vec<ServiceEntry>) -> Self {
        entries.sort_by_key(|entry| entry.service_id.0);
        entries.dedup_by_key(|entry| entry.service_id.0);
        Self { entries }
    }

    /// Every entry, by id.
    pub fn entries(&self) -> &[ServiceEntry] {
        &self.entries
    }

    /// The entry of `service_id`.
    pub fn get(&self, service_id: ServiceId) -> Option<&ServiceEntry> {
        self.entries
            .binary_search_by_key(&service_id.0, |entry| entry.service_id.0)
            .ok()
            .and_then(|index| self.entries.get(index))
    }
}

fn relative_policy(
    lifetime_s: u64,
    requests_max: u32,
    time_of_day: TimeOfDay,
    address_change_allowed: bool,
    required_data: DataFields,
    interim_interval_max_s: u32,
) -> Policy {
    Policy {
        valid_from_ms: 0,
        valid_until_ms: lifetime_s.saturating_mul(1000),
        time_of_day,
        requests_max,
        address_change_allowed,
        required_data,
        interim_interval_max_s,
    }
}

/// Request ids and nonces of requests that were issued a session within
/// the replay window, and of requests being decided now. Bounded by
/// [`REPLAY_ENTRIES_PER_USER_MAX`] per user and [`REPLAY_ENTRIES_MAX`] in
/// all, past which only users holding less than
/// [`REPLAY_ENTRIES_FAIR_SHARE`] get in (up to [`REPLAY_ENTRIES_HARD_MAX`]),
/// so that a few users cannot fill it for everyone.
///
/// A request is *reserved* when its checks begin (so two copies racing
/// each other cannot both be issued) and *released* if it is refused: only
/// a request that was issued a session is remembered, and one refused as
/// "retry later" (PROVIDER_UNAVAILABLE, BUSY, OUT_OF_SPACE) can be sent
/// again with the same bytes. What is remembered also survives a restart:
/// the request id and nonce are stored with the session
/// ([`ReplayCache::remember`] at start).
#[derive(Default)]
pub struct ReplayCache {
    /// The live entries' request ids and nonces.
    ids: HashSet<RequestId>,
    nonces: HashSet<Nonce>,
    per_user: HashMap<Name, usize>,
    /// The live entries by (expires, serial): expiry order, and a released
    /// entry leaves at once.
    order: BTreeMap<(u64, u64), (RequestId, Nonce, Name)>,
    next_serial: u64,
}

/// Requests one user may have in the replay window.
pub const REPLAY_ENTRIES_PER_USER_MAX: usize = 10_000;

/// Why the replay cache refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The request id was seen.
    RequestId,
    /// The nonce was seen.
    Nonce,
    /// The cache is full of unexpired entries.
    Full,
}

/// A request reserved in the cache while it is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    expires: u64,
    serial: u64,
}

impl ReplayCache {
    /// Reserve (id, nonce) of `user` at `now_ms`, unless either was
    /// issued, or is being decided, within the window.
    pub fn reserve(&mut self, user: &Name, id: RequestId, nonce: Nonce, now_ms: u64) -> Result<Reservation, Replay> {
        self.expire(now_ms);
        if self.ids.contains(&id) {
            return Err(Replay::RequestId);
        }
        if self.nonces.contains(&nonce) {
            return Err(Replay::Nonce);
        }
        let held = self.per_user.get(user).copied().unwrap_or(0);
        let full = self.ids.len() >= REPLAY_ENTRIES_MAX && held >= REPLAY_ENTRIES_FAIR_SHARE;
        if full || held >= REPLAY_ENTRIES_PER_USER_MAX || self.ids.len() >= REPLAY_ENTRIES_HARD_MAX {
            return Err(Replay::Full);
        }
        // Kept one millisecond beyond the window: a request stamped at the
        // edge of the skew is refused for its whole lifetime.
        Ok(self.insert(user, id, nonce, now_ms + REPLAY_WINDOW_MS + 1))
    }

    /// Forget a reserved request that was refused: the same bytes may come
    /// again.
    pub fn release(&mut self, user: &Name, reservation: Reservation) {
        let Some((id, nonce, _)) = self.order.remove(&(reservation.expires, reservation.serial)) else {
            return;
        };
        self.ids.remove(&id);
        self.nonces.remove(&nonce);
        self.uncount(user);
    }

    /// Remember requests (user, a2, a3, issuance time) of sessions found in
    /// the store at start, those whose window has not passed at `now_ms`.
    pub fn remember(&mut self, requests: impl IntoIterator<Item = (Name, RequestId, Nonce, u64)>, now_ms: u64) {
        for (user, id, nonce, issued_ms) in requests {
            let expires = issued_ms.saturating_add(REPLAY_WINDOW_MS + 1);
            if expires <= now_ms || self.ids.contains(&id) || self.nonces.contains(&nonce) {
                continue;
            }
            self.insert(&user, id, nonce, expires);
        }
    }

    /// Entries live (reserved or issued, unexpired).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn insert(&mut self, user: &Name, id: RequestId, nonce: Nonce, expires: u64) -> Reservation {
        let serial = self.next_serial;
        self.next_serial += 1;
        self.ids.insert(id);
        self.nonces.insert(nonce);
        *self.per_user.entry(user.clone()).or_default() += 1;
        self.order.insert((expires, serial), (id, nonce, user.clone()));
        Reservation { expires, serial }
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(entry) = self.order.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let (id, nonce, user) = entry.remove();
            self.ids.remove(&id);
            self.nonces.remove(&nonce);
            self.uncount(&user);
        }
    }

    fn uncount(&mut self, user: &Name) {
        if let Some(count) = self.per_user.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                self.per_user.remove(user);
            }
        }
    }
}

/// The providers connected now, by name: where User Credentials are pushed.
#[derive(Default)]
pub struct ProviderRegistry {
    next_id: AtomicU64,
    connections: Mutex<HashMap<Name, Vec<(u64, quinn::Connection)>>>,
}

impl ProviderRegistry {
    /// Register a provider's connection (pushes go to its newest live
    /// one); returns a token for [`ProviderRegistry::unregister`], or None
    /// when the provider already has `max` connections.
    pub fn register(&self, name: &Name, connection: &quinn::Connection, max: usize) -> Option<u64> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = connections.entry(name.clone()).or_default();
        if list.len() >= max {
            return None;
        }
        list.push((id, connection.clone()));
        Some(id)
    }

    /// Forget the connection registered with `token`.
    pub fn unregister(&self, name: &Name, token: u64) {
        if let Ok(mut connections) = self.connections.lock()
            && let Some(list) = connections.get_mut(name)
        {
            list.retain(|(id, _)| *id != token);
            if list.is_empty() {
                connections.remove(name);
            }
        }
    }

    /// The provider's newest connection that is still open.
    pub(super) fn newest(&self, name: &Name) -> Option<quinn::Connection> {
        self.connections.lock().ok().and_then(|connections| {
            connections.get(name).and_then(|list| {
                list.iter()
                    .rev()
                    .find(|(_, connection)| connection.close_reason().is_none())
                    .map(|(_, connection)| connection.clone())
            })
        })
    }
}

/// A new session's User Credential: a fresh random session id and session
/// key, signed by the AM. The one way a session is minted, for a user's
/// request (after its checks) and for the operator's admin path.
pub fn mint_user_credential(
    signing_key: &SigningKey,
    partition: wire::PartitionId,
    service_id: ServiceId,
    user_id: Name,
    user_address: Address,
    policy: Policy,
) -> Result<Signed<UserCredential>, ErrorMessage> {
    // The session id: this partition's id, then 14 random bytes.
    let mut random = [0u8; wire::cluster::SESSION_RANDOM_BYTES];
    let mut session_key = [0u8; 32];
    getrandom::fill(&mut random)
        .and_then(|()| getrandom::fill(&mut session_key))
        .map_err(|_| ErrorMessage::new(ErrorCode::INTERNAL, "no randomness"))?;
    Signed::sign(
        UserCredential {
            session_id: SessionId::for_partition(partition, random),
            service_id,
            user_id,
            user_address,
            session_key: SessionKey(session_key),
            policy,
        },
        signing_key,
    )
    .map_err(|error| ErrorMessage::new(ErrorCode::INTERNAL, &format!("signing the User Credential: {error}")))
}

/// What issuance needs from the AM.
pub struct Issuer<'a> {
    /// The operator's CA.
    pub ca: &'a TrustedCa,
    /// The service list.
    pub directory: &'a ServiceDirectory,
    /// Seen requests.
    pub replay: &'a Mutex<ReplayCache>,
    /// Connected providers.
    pub providers: &'a ProviderRegistry,
    /// The AM's key (signs both credentials).
    pub signing_key: &'a SigningKey,
    /// This partition (the first bytes of the session ids it mints).
    pub partition: wire::PartitionId,
    /// Revoked certificates.
    pub deny: &'a serving::deny::DenyList,
}

/// A session minted and confirmed by its provider, ready to be stored.
pub struct Minted {
    /// The provider's name.
    pub provider: Name,
    /// The User Credential the provider holds.
    pub user_credential: Signed<UserCredential>,
    /// The answer for the user, once the session is stored.
    pub service_credential: Signed<ServiceCredential>,
}

fn refuse(code: ErrorCode, detail: &str) -> ErrorMessage {
    metrics::counter!("acct_credentials_refused_total", "code" => code.0.to_string()).increment(1);
    ErrorMessage::new(code, detail)
}

/// A request that passed the checks and holds its place in the replay
/// cache. Dropped while armed (a refusal, or an issuance cancelled before
/// its session went to the store), it gives the place back: the same bytes
/// may come again. [`Reserved::hold`] once the session may be stored.
pub struct Reserved<'a> {
    cache: &'a Mutex<ReplayCache>,
    /// The user (a5's name).
    pub user: Name,
    reservation: Reservation,
    armed: bool,
}

impl Reserved<'_> {
    /// Keep the place whatever happens to this value from now on: the
    /// session is on its way to the store.
    pub fn hold(&mut self) {
        self.armed = false;
    }

    /// Give the place back now (the session could not be stored).
    pub fn release(mut self) {
        self.armed = true;
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .release(&self.user, self.reservation);
        }
    }
}

impl<'a> Issuer<'a> {
    /// The checks before anything is minted (a4/a5, revocation, freshness)
    /// and the request's reservation in the replay cache.
    pub fn check(&self, request: &Signed<ServiceCredentialRequest>, now_ms: u64) -> Result<Reserved<'a>, ErrorMessage> {
        let identity = self
            .ca
            .verify_credential_request(request, now_ms / 1000)
            .map_err(|error| refuse(ErrorCode::CREDENTIAL_REFUSED, &error.to_string()))?;
        let value = request.value();
        if self.deny.is_denied(identity.name.as_str(), &value.certificate) {
            return Err(refuse(ErrorCode::CREDENTIAL_REFUSED, "certificate revoked"));
        }
        if value.timestamp_ms.abs_diff(now_ms) > REQUEST_SKEW_MS_MAX {
            return Err(refuse(
                ErrorCode::REPLAYED_REQUEST,
                "the request's timestamp is more than 5 minutes from the AM's clock",
            ));
        }
        let reservation = self
            .replay
            .lock()
            .map_err(|_| refuse(ErrorCode::INTERNAL, "replay cache poisoned"))?
            .reserve(&identity.name, value.request_id, value.nonce, now_ms);
        let reservation = match reservation {
            Ok(reservation) => reservation,
            Err(Replay::RequestId) => return Err(refuse(ErrorCode::REPLAYED_REQUEST, "request id seen before")),
            Err(Replay::Nonce) => return Err(refuse(ErrorCode::REPLAYED_REQUEST, "nonce seen before")),
            Err(Replay::Full) => {
                return Err(refuse(
                    ErrorCode::BUSY,
                    "too many requests in the replay window (from this user, or in all)",
                ));
            }
        };
        Ok(Reserved {
            cache: self.replay,
            user: identity.name,
            reservation,
            armed: true,
        })
    }

    /// Mint the session of a checked request ([`Self::check`]) and push
    /// its User Credential to the provider; the caller stores the session,
    /// then answers.
    pub async fn mint(
        &self,
        request: &Signed<ServiceCredentialRequest>,
        reserved: &Reserved<'_>,
        now_ms: u64,
    ) -> Result<Minted, ErrorMessage> {
        let value = request.value();
        let identity_name = &reserved.user;
        let Some(service) = self.directory.get(value.service_id) else {
            return Err(refuse(
                ErrorCode::UNKNOWN_SERVICE,
                &format!("service {} is not in the AM's service list", value.service_id.0),
            ));
        };
        let Some(connection) = self.providers.newest(&service.provider) else {
            return Err(refuse(
                ErrorCode::PROVIDER_UNAVAILABLE,
                &format!("provider {} is not connected", service.provider),
            ));
        };
        let lifetime = service.policy.valid_until_ms - service.policy.valid_from_ms;
        let policy = Policy {
            valid_from_ms: now_ms,
            valid_until_ms: now_ms.saturating_add(lifetime),
            ..service.policy
        };
        let user_credential = mint_user_credential(
            self.signing_key,
            self.partition,
            service.service_id,
            identity_name.clone(),
            value.user_address.clone(),
            policy,
        )
        .map_err(|error| refuse(error.code, &error.detail))?;
        let minted = user_credential.value();
        let service_credential = Signed::sign(
            ServiceCredential {
                request_id: value.request_id,
                session_id: minted.session_id,
                service_id: service.service_id,
                provider_address: service.provider_address.clone(),
                session_key: minted.session_key.clone(),
                policy,
            },
            self.signing_key,
        )
        .map_err(|error| refuse(ErrorCode::INTERNAL, &format!("signing the Service Credential: {error}")))?;
        push(&connection, &user_credential).await.map_err(|detail| {
            refuse(
                ErrorCode::PROVIDER_UNAVAILABLE,
                &format!("provider {}: {detail}", service.provider),
            )
        })?;
        Ok(Minted {
            provider: service.provider.clone(),
            user_credential,
            service_credential,
        })
    }
}

/// Push a User Credential on the provider's connection and wait (bounded)
/// for its receipt.
async fn push(connection: &quinn::Connection, credential: &Signed<UserCredential>) -> Result<(), String> {
    let exchange = async {
        let (mut send, mut receive) = connection.open_bi().await.map_err(|error| error.to_string())?;
        let mut frame = BytesMut::new();
        credential.encode_frame(&mut frame);
        send.write_all(&frame).await.map_err(|error| error.to_string())?;
        send.finish().map_err(|error| error.to_string())?;
        let answer = receive.read_to_end(1024).await.map_err(|error| error.to_string())?;
        match Message::decode(bytes::Bytes::from(answer)) {
            Ok(Message::UserCredentialReceipt(receipt)) if receipt.session_id == credential.value().session_id => {
                if receipt.status == ReceiptStatus::ACCEPTED {
                    Ok(())
                } else {
                    Err(format!("refused the credential (status 0x{:02x})", receipt.status.0))
                }
            }
            other => Err(format!("answered the push with {other:?}")),
        }
    };
    tokio::time::timeout(RECEIPT_TIMEOUT, exchange)
        .await
        .map_err(|_| "no receipt within 5 s".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_refused_within_the_window_and_forgotten_after() {
        let mut cache = ReplayCache::default();
        let user = Name::new("user-0001").unwrap();
        let (a, b) = (RequestId([1; 16]), RequestId([2; 16]));
        let (x, y) = (Nonce([1; 16]), Nonce([2; 16]));
        assert!(cache.reserve(&user, a, x, 1_000).is_ok());
        assert_eq!(cache.reserve(&user, a, y, 2_000), Err(Replay::RequestId));
        assert_eq!(cache.reserve(&user, b, x, 2_000), Err(Replay::Nonce));
        assert_eq!(
            cache.reserve(&user, a, x, 1_000 + REPLAY_WINDOW_MS),
            Err(Replay::RequestId)
        );
        assert!(cache.reserve(&user, a, x, 1_001 + REPLAY_WINDOW_MS).is_ok());
    }

    #[test]
    fn a_released_request_can_be_sent_again_and_expires_once() {
        let mut cache = ReplayCache::default();
        let user = Name::new("user-0001").unwrap();
        let (id, nonce) = (RequestId([1; 16]), Nonce([1; 16]));
        // Refused as "retry later": released, the same bytes pass again.
        let first = cache.reserve(&user, id, nonce, 1_000).unwrap();
        assert_eq!(
            cache.reserve(&user, id, nonce, 1_500),
            Err(Replay::RequestId),
            "racing copy"
        );
        cache.release(&user, first);
        assert!(cache.is_empty());
        let second = cache.reserve(&user, id, nonce, 2_000).unwrap();
        // The released entry's expiry does not forget the second one.
        assert_eq!(
            cache.reserve(&user, id, nonce, 1_001 + REPLAY_WINDOW_MS),
            Err(Replay::RequestId)
        );
        assert_eq!(cache.len(), 1);
        // Releasing twice, or a stale reservation, changes nothing.
        cache.release(&user, first);
        assert_eq!(cache.len(), 1);
        cache.release(&user, second);
        cache.release(&user, second);
        assert!(cache.is_empty());
    }

    #[test]
    fn remembered_requests_are_refused_until_their_window_passes() {
        let mut cache = ReplayCache::default();
        let user = Name::new("user-0001").unwrap();
        let now = 10 * REPLAY_WINDOW_MS;
        let recent = (RequestId([1; 16]), Nonce([1; 16]));
        let old = (RequestId([2; 16]), Nonce([2; 16]));
        cache.remember(
            [
                (user.clone(), recent.0, recent.1, now - 1_000),
                (user.clone(), old.0, old.1, now - REPLAY_WINDOW_MS - 1),
            ],
            now,
        );
        assert_eq!(cache.reserve(&user, recent.0, recent.1, now), Err(Replay::RequestId));
        assert!(cache.reserve(&user, old.0, old.1, now).is_ok());
        assert!(
            cache
                .reserve(&user, recent.0, recent.1, now - 1_000 + REPLAY_WINDOW_MS + 1)
                .is_ok()
        );
    }

    #[test]
    fn one_user_cannot_fill_the_replay_cache() {
        let mut cache = ReplayCache::default();
        let greedy = Name::new("user-0001").unwrap();
        let other = Name::new("user-0002").unwrap();
        for index in 0..REPLAY_ENTRIES_PER_USER_MAX as u64 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&index.to_be_bytes());
            assert!(cache.reserve(&greedy, RequestId(id), Nonce(id), 1).is_ok());
        }
        assert_eq!(
            cache.reserve(&greedy, RequestId([0xff; 16]), Nonce([0xff; 16]), 1),
            Err(Replay::Full)
        );
        assert!(
            cache
                .reserve(&other, RequestId([0xfe; 16]), Nonce([0xfe; 16]), 1)
                .is_ok()
        );
    }

    #[test]
    fn users_who_filled_the_cache_wait_and_the_others_get_in() {
        let mut cache = ReplayCache::default();
        let entry = |user: u64, index: u64| {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&user.to_be_bytes());
            bytes[8..].copy_from_slice(&index.to_be_bytes());
            (RequestId(bytes), Nonce(bytes))
        };
        // Ten users at their own bound fill the cache.
        let heavy = REPLAY_ENTRIES_MAX / REPLAY_ENTRIES_PER_USER_MAX;
        for user in 0..heavy as u64 {
            let name = Name::new(format!("user-{user}")).unwrap();
            for index in 0..REPLAY_ENTRIES_PER_USER_MAX as u64 {
                let (id, nonce) = entry(user, index);
                assert!(cache.reserve(&name, id, nonce, 1).is_ok());
            }
        }
        assert_eq!(cache.len(), REPLAY_ENTRIES_MAX);
        // A light user still gets its fair share, then waits too.
        let light = Name::new("user-light").unwrap();
        for index in 0..REPLAY_ENTRIES_FAIR_SHARE as u64 {
            let (id, nonce) = entry(1_000, index);
            assert!(cache.reserve(&light, id, nonce, 1).is_ok(), "fair share {index}");
        }
        let (id, nonce) = entry(1_000, u64::MAX);
        assert_eq!(cache.reserve(&light, id, nonce, 1), Err(Replay::Full));
        // A user holding 100 or more when the cache is full waits.
        let mut medium_cache = ReplayCache::default();
        let medium = Name::new("user-medium").unwrap();
        for index in 0..REPLAY_ENTRIES_FAIR_SHARE as u64 {
            let (id, nonce) = entry(2_000, index);
            assert!(medium_cache.reserve(&medium, id, nonce, 1).is_ok());
        }
        assert!(medium_cache.len() < REPLAY_ENTRIES_MAX, "not full: more may come");
        let (id, nonce) = entry(2_000, u64::MAX);
        assert!(medium_cache.reserve(&medium, id, nonce, 1).is_ok());
    }

    #[test]
    fn the_default_directory_lists_the_development_providers() {
        let directory = ServiceDirectory::from_config(&[]).unwrap();
        assert_eq!(directory.entries().len(), DEFAULT_SERVICES as usize);
        let entry = directory.get(ServiceId(2)).unwrap();
        assert_eq!(entry.provider.as_str(), "provider-0002");
        assert_eq!(entry.policy.valid_until_ms, 24 * 3600 * 1000);
        assert!(directory.get(ServiceId(DEFAULT_SERVICES + 1)).is_none());
    }
}
