//! Credential issuance (201 → 202 → 204 → 206 and 208): the service list,
//! the checks on a Service Credential Request, the replay cache, and the
//! push of the User Credential to the provider's own connection.
//!
//! Order: validate → mint → push to the provider and wait for its receipt
//! → store the session durably → answer the user. A session the provider
//! did not confirm is never stored, so no half-made session is usable.

use std::collections::{HashMap, HashSet, VecDeque};
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
/// Requests remembered at most (about 100 bytes each: 10 MB). When full
/// of unexpired entries, new requests are answered BUSY.
pub const REPLAY_ENTRIES_MAX: usize = 100_000;
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
                    provider: Name::new(crate::pki::provider_name(index as usize))?,
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

/// Request ids and nonces seen within the replay window. Bounded by
/// [`REPLAY_ENTRIES_MAX`] in all and [`REPLAY_ENTRIES_PER_USER_MAX`] per
/// user, so that one user cannot fill it for everyone.
#[derive(Default)]
pub struct ReplayCache {
    ids: HashSet<RequestId>,
    nonces: HashSet<Nonce>,
    per_user: HashMap<Name, usize>,
    order: VecDeque<(u64, RequestId, Nonce, Name)>,
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

impl ReplayCache {
    /// Remember (id, nonce) of `user` at `now_ms`, unless either was seen
    /// within the window.
    pub fn check_and_insert(&mut self, user: &Name, id: RequestId, nonce: Nonce, now_ms: u64) -> Result<(), Replay> {
        while let Some((expires, old_id, old_nonce, old_user)) = self.order.front() {
            if *expires > now_ms {
                break;
            }
            self.ids.remove(old_id);
            self.nonces.remove(old_nonce);
            if let Some(count) = self.per_user.get_mut(old_user) {
                *count -= 1;
                if *count == 0 {
                    self.per_user.remove(old_user);
                }
            }
            self.order.pop_front();
        }
        if self.ids.contains(&id) {
            return Err(Replay::RequestId);
        }
        if self.nonces.contains(&nonce) {
            return Err(Replay::Nonce);
        }
        if self.order.len() >= REPLAY_ENTRIES_MAX
            || self
                .per_user
                .get(user)
                .is_some_and(|count| *count >= REPLAY_ENTRIES_PER_USER_MAX)
        {
            return Err(Replay::Full);
        }
        self.ids.insert(id);
        self.nonces.insert(nonce);
        *self.per_user.entry(user.clone()).or_default() += 1;
        // Kept one millisecond beyond the window: a request stamped at the
        // edge of the skew is refused for its whole lifetime.
        self.order
            .push_back((now_ms + REPLAY_WINDOW_MS + 1, id, nonce, user.clone()));
        Ok(())
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

    fn get(&self, name: &Name) -> Option<quinn::Connection> {
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
    /// Revoked certificates.
    pub deny: &'a super::deny::DenyList,
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

impl Issuer<'_> {
    /// Check a request, mint its session and push the User Credential to
    /// the provider; the caller stores the session, then answers.
    pub async fn mint(&self, request: &Signed<ServiceCredentialRequest>, now_ms: u64) -> Result<Minted, ErrorMessage> {
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
        let replay = self
            .replay
            .lock()
            .map_err(|_| refuse(ErrorCode::INTERNAL, "replay cache poisoned"))?
            .check_and_insert(&identity.name, value.request_id, value.nonce, now_ms);
        match replay {
            Ok(()) => {}
            Err(Replay::RequestId) => return Err(refuse(ErrorCode::REPLAYED_REQUEST, "request id seen before")),
            Err(Replay::Nonce) => return Err(refuse(ErrorCode::REPLAYED_REQUEST, "nonce seen before")),
            Err(Replay::Full) => {
                return Err(refuse(
                    ErrorCode::BUSY,
                    "too many requests in the replay window (from this user, or in all)",
                ));
            }
        }
        let Some(service) = self.directory.get(value.service_id) else {
            return Err(refuse(
                ErrorCode::UNKNOWN_SERVICE,
                &format!("service {} is not in the AM's service list", value.service_id.0),
            ));
        };
        let Some(connection) = self.providers.get(&service.provider) else {
            return Err(refuse(
                ErrorCode::PROVIDER_UNAVAILABLE,
                &format!("provider {} is not connected", service.provider),
            ));
        };
        let mut session_id = [0u8; 16];
        let mut session_key = [0u8; 32];
        getrandom::fill(&mut session_id)
            .and_then(|()| getrandom::fill(&mut session_key))
            .map_err(|_| refuse(ErrorCode::INTERNAL, "no randomness"))?;
        let lifetime = service.policy.valid_until_ms - service.policy.valid_from_ms;
        let policy = Policy {
            valid_from_ms: now_ms,
            valid_until_ms: now_ms.saturating_add(lifetime),
            ..service.policy
        };
        let user_credential = Signed::sign(
            UserCredential {
                session_id: SessionId(session_id),
                service_id: service.service_id,
                user_id: identity.name.clone(),
                user_address: value.user_address.clone(),
                session_key: SessionKey(session_key),
                policy,
            },
            self.signing_key,
        )
        .map_err(|error| refuse(ErrorCode::INTERNAL, &error.to_string()))?;
        let service_credential = Signed::sign(
            ServiceCredential {
                request_id: value.request_id,
                session_id: SessionId(session_id),
                service_id: service.service_id,
                provider_address: service.provider_address.clone(),
                session_key: SessionKey(session_key),
                policy,
            },
            self.signing_key,
        )
        .map_err(|error| refuse(ErrorCode::INTERNAL, &error.to_string()))?;
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
        assert_eq!(cache.check_and_insert(&user, a, x, 1_000), Ok(()));
        assert_eq!(cache.check_and_insert(&user, a, y, 2_000), Err(Replay::RequestId));
        assert_eq!(cache.check_and_insert(&user, b, x, 2_000), Err(Replay::Nonce));
        assert_eq!(
            cache.check_and_insert(&user, a, x, 1_000 + REPLAY_WINDOW_MS),
            Err(Replay::RequestId)
        );
        assert_eq!(cache.check_and_insert(&user, a, x, 1_001 + REPLAY_WINDOW_MS), Ok(()));
    }

    #[test]
    fn one_user_cannot_fill_the_replay_cache() {
        let mut cache = ReplayCache::default();
        let greedy = Name::new("user-0001").unwrap();
        let other = Name::new("user-0002").unwrap();
        for index in 0..REPLAY_ENTRIES_PER_USER_MAX as u64 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&index.to_be_bytes());
            assert_eq!(cache.check_and_insert(&greedy, RequestId(id), Nonce(id), 1), Ok(()));
        }
        assert_eq!(
            cache.check_and_insert(&greedy, RequestId([0xff; 16]), Nonce([0xff; 16]), 1),
            Err(Replay::Full)
        );
        assert_eq!(
            cache.check_and_insert(&other, RequestId([0xfe; 16]), Nonce([0xfe; 16]), 1),
            Ok(())
        );
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
