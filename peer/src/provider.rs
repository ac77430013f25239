//! The Service Provider's side: accept User Credentials, validate Service
//! Requests against their policies, and keep each session's accounting
//! numbered, signed and tracked until the AM acks it.

use std::collections::{BTreeMap, VecDeque};

use wire::{
    Accounting, AccountingKind, AckEntry, AckStatus, EncodeError, Maced, Nonce, ProofStatus, PublicKey, ServiceProof,
    ServiceRequest, SessionId, Signed, SigningKey, Usage, UserCredential, credential_digest,
};

/// How far a Service Request's timestamp may be from the provider's clock.
pub const REQUEST_CLOCK_SKEW_MS_MAX: u64 = 5 * 60 * 1000;

/// Nonces remembered per session to refuse a replayed Service Request within
/// the clock-skew window. A session with more requests than this in one
/// window forgets the oldest; the timestamp check still bounds replays.
pub const REMEMBERED_NONCES_MAX: usize = 256;

/// Accounting messages of one session sent but not yet acked. When full,
/// [`ProviderSession::account`] refuses until acks arrive: the SP's memory
/// stays bounded while the AM is away.
pub const UNACKED_MESSAGES_MAX: usize = 4096;

/// Why the provider cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The User Credential is not signed by the AM.
    #[error("the user credential's signature (c4) does not verify with the AM's key")]
    CredentialSignature,
    /// The Service Request names another session.
    #[error("the service request names session {0}, not this one")]
    WrongSession(SessionId),
    /// The Service Request's MAC (d3) does not verify: the sender does not
    /// hold the session key. No proof can be sent.
    #[error("the service request's MAC (d3) does not verify")]
    RequestMac,
    /// A Final Accounting was already made for this session.
    #[error("the session is closed by its final accounting")]
    Closed,
    /// Too many messages await an ack.
    #[error("{UNACKED_MESSAGES_MAX} accounting messages await an ack; wait for the AM")]
    Backlog,
    /// The message could not be built.
    #[error("cannot build the message: {0}")]
    Encode(#[from] EncodeError),
}

/// What became of an acked message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// Stored (now or before): forgotten here.
    Stored,
    /// Refused for good: forgotten here; the status says why.
    Refused(AckStatus),
    /// Not stored, retry later: kept for retransmission.
    Retry(AckStatus),
    /// The ack names a message this session does not hold.
    Unknown,
}

/// One accounting session as the provider holds it.
pub struct ProviderSession {
    credential: Signed<UserCredential>,
    digest: [u8; 16],
    signing_key: SigningKey,
    requests_accepted: u32,
    nonces: VecDeque<Nonce>,
    next_sequence: u64,
    closed: bool,
    unacked: BTreeMap<u64, Signed<Accounting>>,
}

impl ProviderSession {
    /// Accept a User Credential (208) after checking the AM's signature.
    /// `signing_key` is the provider's own certified key (signs e7).
    pub fn accept(
        credential: Signed<UserCredential>,
        am_key: &PublicKey,
        signing_key: SigningKey,
    ) -> Result<Self, ProviderError> {
        credential
            .verify(am_key)
            .map_err(|_| ProviderError::CredentialSignature)?;
        Ok(Self::resume(credential, signing_key, 1))
    }

    /// Rebuild a session whose credential was accepted before (from the
    /// provider's own storage), continuing at `next_sequence`.
    pub fn resume(credential: Signed<UserCredential>, signing_key: SigningKey, next_sequence: u64) -> Self {
        let digest = credential_digest(&credential);
        Self {
            credential,
            digest,
            signing_key,
            requests_accepted: 0,
            nonces: VecDeque::new(),
            next_sequence: next_sequence.max(1),
            closed: false,
            unacked: BTreeMap::new(),
        }
    }

    /// The session id.
    pub fn session_id(&self) -> SessionId {
        self.credential.value().session_id
    }

    /// The User Credential.
    pub fn credential(&self) -> &Signed<UserCredential> {
        &self.credential
    }

    /// Validate a Service Request (211) and make the proof to send back.
    /// An error means no proof can be made (wrong session or bad MAC); the
    /// provider answers with an Error message instead.
    pub fn validate(
        &mut self,
        request: &Maced<ServiceRequest>,
        now_ms: u64,
    ) -> Result<Maced<ServiceProof>, ProviderError> {
        let credential = self.credential.value();
        let value = request.value();
        if value.session_id != credential.session_id {
            return Err(ProviderError::WrongSession(value.session_id));
        }
        request
            .verify(&credential.session_key)
            .map_err(|_| ProviderError::RequestMac)?;
        let status = self.decide(value, now_ms);
        if status == ProofStatus::ACCEPTED {
            self.requests_accepted = self.requests_accepted.saturating_add(1);
            if self.nonces.len() == REMEMBERED_NONCES_MAX {
                self.nonces.pop_front();
            }
            self.nonces.push_back(value.nonce);
        }
        Ok(Maced::seal(
            ServiceProof {
                session_id: value.session_id,
                nonce: value.nonce,
                status,
            },
            &credential.session_key,
        )?)
    }

    fn decide(&self, request: &ServiceRequest, now_ms: u64) -> ProofStatus {
        let credential = self.credential.value();
        let policy = credential.policy;
        if now_ms < policy.valid_from_ms || now_ms >= policy.valid_until_ms {
            return ProofStatus::EXPIRED;
        }
        let minute_of_day = u16::try_from((now_ms / 60_000) % 1440).unwrap_or(0);
        if !policy.time_of_day.allows(minute_of_day) {
            return ProofStatus::OUTSIDE_TIME_WINDOW;
        }
        if policy.requests_max != 0 && self.requests_accepted >= policy.requests_max {
            return ProofStatus::REQUESTS_EXCEEDED;
        }
        if !policy.address_change_allowed && request.user_address != credential.user_address {
            return ProofStatus::ADDRESS_CHANGED;
        }
        if now_ms.abs_diff(request.timestamp_ms) > REQUEST_CLOCK_SKEW_MS_MAX || self.nonces.contains(&request.nonce) {
            return ProofStatus::STALE;
        }
        ProofStatus::ACCEPTED
    }

    /// Make the next accounting message (214, or 220 for `AccountingKind::FINAL`)
    /// and keep it until acked.
    pub fn account(&mut self, kind: AccountingKind, usage: Usage) -> Result<Signed<Accounting>, ProviderError> {
        if self.closed {
            return Err(ProviderError::Closed);
        }
        if self.unacked.len() >= UNACKED_MESSAGES_MAX {
            return Err(ProviderError::Backlog);
        }
        let credential = self.credential.value();
        let message = Signed::sign(
            Accounting {
                service_id: credential.service_id,
                kind,
                session_id: credential.session_id,
                sequence: self.next_sequence,
                credential_digest: self.digest,
                usage,
            },
            &self.signing_key,
        )?;
        self.unacked.insert(self.next_sequence, message.clone());
        self.next_sequence += 1;
        if kind == AccountingKind::FINAL {
            self.closed = true;
        }
        Ok(message)
    }

    /// Apply one ack entry for this session.
    pub fn on_ack(&mut self, entry: &AckEntry) -> AckOutcome {
        if entry.message_id.session_id != self.session_id() || !self.unacked.contains_key(&entry.message_id.sequence) {
            return AckOutcome::Unknown;
        }
        let status = entry.status;
        if status.is_retryable() {
            return AckOutcome::Retry(status);
        }
        self.unacked.remove(&entry.message_id.sequence);
        if status.is_stored() {
            AckOutcome::Stored
        } else {
            AckOutcome::Refused(status)
        }
    }

    /// Messages sent and not yet acked, oldest first: what to send again
    /// after a reconnect (same bytes, same ids, so the AM stores each once).
    pub fn unacked(&self) -> impl Iterator<Item = &Signed<Accounting>> {
        self.unacked.values()
    }

    /// How many messages await an ack.
    pub fn unacked_count(&self) -> usize {
        self.unacked.len()
    }

    /// Whether the Final Accounting was made.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether the session is closed and every message was answered.
    pub fn is_finished(&self) -> bool {
        self.closed && self.unacked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user;
    use wire::{Address, DataFields, MessageId, Policy, ServiceCredential, ServiceId, SessionKey, TimeOfDay};

    const NOW_MS: u64 = 1_795_651_200_000 + 10 * 3_600_000; // 10:00 UTC

    fn am() -> SigningKey {
        SigningKey::from_seed(&[2; 32])
    }

    fn policy() -> Policy {
        Policy {
            valid_from_ms: NOW_MS - 1000,
            valid_until_ms: NOW_MS + 3_600_000,
            time_of_day: TimeOfDay {
                start_minute: 8 * 60,
                end_minute: 20 * 60,
            },
            requests_max: 2,
            address_change_allowed: false,
            required_data: DataFields::UNITS,
            interim_interval_max_s: 60,
        }
    }

    fn credentials(policy: Policy) -> (Signed<ServiceCredential>, Signed<UserCredential>) {
        let key = SessionKey([9; 32]);
        let service = Signed::sign(
            ServiceCredential {
                request_id: wire::RequestId([1; 16]),
                session_id: SessionId([5; 16]),
                service_id: ServiceId(3),
                provider_address: Address::new("127.0.0.1:7000").unwrap(),
                session_key: key.clone(),
                policy,
            },
            &am(),
        )
        .unwrap();
        let user = Signed::sign(
            UserCredential {
                session_id: SessionId([5; 16]),
                service_id: ServiceId(3),
                user_id: wire::Name::new("alice").unwrap(),
                user_address: Address::new("10.0.0.1:5000").unwrap(),
                session_key: key,
                policy,
            },
            &am(),
        )
        .unwrap();
        (service, user)
    }

    fn session(policy: Policy) -> (Signed<ServiceCredential>, ProviderSession) {
        let (service, user) = credentials(policy);
        let provider = ProviderSession::accept(user, &am().public_key(), SigningKey::from_seed(&[3; 32])).unwrap();
        (service, provider)
    }

    fn request(service: &ServiceCredential, address: &str, nonce: u8, at_ms: u64) -> Maced<ServiceRequest> {
        user::service_request(service, Address::new(address).unwrap(), Nonce([nonce; 16]), at_ms).unwrap()
    }

    #[test]
    fn mutual_authentication_and_policies() {
        let (service, mut provider) = session(policy());
        let service = service.value();
        let first = request(service, "10.0.0.1:5000", 1, NOW_MS);
        let proof = provider.validate(&first, NOW_MS).unwrap();
        assert!(user::check_proof(&proof, first.value(), service).is_ok());
        // Replayed nonce.
        let proof = provider.validate(&first, NOW_MS).unwrap();
        assert_eq!(proof.value().status, ProofStatus::STALE);
        // Another address is refused when the policy forbids a change.
        let moved = request(service, "10.0.0.2:5000", 2, NOW_MS);
        assert_eq!(
            provider.validate(&moved, NOW_MS).unwrap().value().status,
            ProofStatus::ADDRESS_CHANGED
        );
        // A stale timestamp.
        let old = request(service, "10.0.0.1:5000", 3, NOW_MS - REQUEST_CLOCK_SKEW_MS_MAX - 1);
        assert_eq!(
            provider.validate(&old, NOW_MS).unwrap().value().status,
            ProofStatus::STALE
        );
        // Second accepted request, then the maximum is reached.
        let second = request(service, "10.0.0.1:5000", 4, NOW_MS);
        assert_eq!(
            provider.validate(&second, NOW_MS).unwrap().value().status,
            ProofStatus::ACCEPTED
        );
        let third = request(service, "10.0.0.1:5000", 5, NOW_MS);
        let refused = provider.validate(&third, NOW_MS).unwrap();
        assert_eq!(refused.value().status, ProofStatus::REQUESTS_EXCEEDED);
        assert_eq!(
            user::check_proof(&refused, third.value(), service),
            Err(user::UserError::Refused(ProofStatus::REQUESTS_EXCEEDED.0))
        );
        // Expired and outside the time window.
        let later = request(service, "10.0.0.1:5000", 6, NOW_MS + 3_600_000);
        assert_eq!(
            provider.validate(&later, NOW_MS + 3_600_000).unwrap().value().status,
            ProofStatus::EXPIRED
        );
        let (service, mut provider) = session(Policy {
            valid_until_ms: NOW_MS + 86_400_000,
            ..policy()
        });
        let night = NOW_MS + 12 * 3_600_000; // 22:00 UTC
        let late = request(service.value(), "10.0.0.1:5000", 7, night);
        assert_eq!(
            provider.validate(&late, night).unwrap().value().status,
            ProofStatus::OUTSIDE_TIME_WINDOW
        );
    }

    #[test]
    fn a_forged_request_or_proof_is_refused() {
        let (service, mut provider) = session(policy());
        let mut forged_credential = service.value().clone();
        forged_credential.session_key = SessionKey([8; 32]);
        let forged = request(&forged_credential, "10.0.0.1:5000", 1, NOW_MS);
        assert_eq!(provider.validate(&forged, NOW_MS), Err(ProviderError::RequestMac));
        // A proof made with another key does not convince the user.
        let genuine = request(service.value(), "10.0.0.1:5000", 2, NOW_MS);
        let fake_proof = Maced::seal(
            ServiceProof {
                session_id: genuine.value().session_id,
                nonce: genuine.value().nonce,
                status: ProofStatus::ACCEPTED,
            },
            &SessionKey([8; 32]),
        )
        .unwrap();
        assert_eq!(
            user::check_proof(&fake_proof, genuine.value(), service.value()),
            Err(user::UserError::ProofMac)
        );
        // A credential not signed by the AM is refused.
        let (_, user_credential) = credentials(policy());
        let other_am = SigningKey::from_seed(&[77; 32]).public_key();
        assert!(matches!(
            ProviderSession::accept(user_credential, &other_am, SigningKey::from_seed(&[3; 32])),
            Err(ProviderError::CredentialSignature)
        ));
    }

    #[test]
    fn accounting_is_numbered_tracked_and_closed() {
        let (_, mut provider) = session(policy());
        let usage = Usage {
            units: Some(1),
            ..Usage::default()
        };
        let first = provider.account(AccountingKind::INTERIM, usage.clone()).unwrap();
        let second = provider.account(AccountingKind::INTERIM, usage.clone()).unwrap();
        assert_eq!((first.value().sequence, second.value().sequence), (1, 2));
        assert!(first.verify(&SigningKey::from_seed(&[3; 32]).public_key()).is_ok());
        assert_eq!(
            first.value().credential_digest,
            credential_digest(provider.credential())
        );
        let session_id = provider.session_id();
        let ack = |sequence, status| AckEntry {
            message_id: MessageId { session_id, sequence },
            status,
        };
        assert_eq!(
            provider.on_ack(&ack(1, AckStatus::BUSY)),
            AckOutcome::Retry(AckStatus::BUSY)
        );
        assert_eq!(provider.unacked().count(), 2);
        assert_eq!(provider.on_ack(&ack(1, AckStatus::DUPLICATE)), AckOutcome::Stored);
        assert_eq!(provider.on_ack(&ack(1, AckStatus::STORED)), AckOutcome::Unknown);
        let last = provider.account(AccountingKind::FINAL, usage.clone()).unwrap();
        assert_eq!(last.value().sequence, 3);
        assert_eq!(
            provider.account(AccountingKind::INTERIM, usage),
            Err(ProviderError::Closed)
        );
        assert!(!provider.is_finished());
        let retransmit: Vec<u64> = provider.unacked().map(|message| message.value().sequence).collect();
        assert_eq!(retransmit, vec![2, 3]);
        provider.on_ack(&ack(2, AckStatus::STORED));
        assert_eq!(
            provider.on_ack(&ack(3, AckStatus::BAD_SIGNATURE)),
            AckOutcome::Refused(AckStatus::BAD_SIGNATURE)
        );
        assert!(provider.is_finished());
    }

    #[test]
    fn backlog_is_bounded() {
        let (_, mut provider) = session(policy());
        for _ in 0..UNACKED_MESSAGES_MAX {
            provider.account(AccountingKind::INTERIM, Usage::default()).unwrap();
        }
        assert_eq!(
            provider.account(AccountingKind::INTERIM, Usage::default()),
            Err(ProviderError::Backlog)
        );
    }
}
