//! Accounting sessions as the AM keeps them, and the protocol decisions on
//! an accounting message: admission, policy, deduplication. Pure: no I/O,
//! time is an argument; the drivers (`ingest`, `commit`) call these.

use std::sync::Arc;

use wire::{
    Accounting, AccountingKind, AckStatus, Name, Nonce, Policy, ReceiptDigest, RequestId, SessionId, Signed,
    UserCredential, credential_digest,
};

/// The name of the custom counter (e5) in which a provider reports how many
/// Service Requests it served in the interval. The AM sums it per session
/// and enforces the policy's `requests_max` on the total.
pub const REQUESTS_COUNTER_NAME: &str = "requests";

/// Width of the in-memory window of recently seen sequence numbers below a
/// session's highest one. Older sequences are looked up in RocksDB.
pub const SEQUENCE_WINDOW: u64 = 64;

/// What never changes about a session once minted.
#[derive(Debug)]
pub struct SessionInfo {
    /// The provider the session was issued to.
    pub provider: Name,
    /// The User Credential (208) as the AM signed it.
    pub credential: Signed<UserCredential>,
    /// e3 that every accounting message must carry.
    pub credential_digest: [u8; 16],
    /// When the AM minted the session, Unix ms.
    pub created_ms: u64,
    /// The user's request (a2, a3) the session was issued for; none for
    /// sessions opened on the admin path. Stored with the session, so that
    /// the replay cache survives a restart.
    pub request: Option<(RequestId, Nonce)>,
}

impl SessionInfo {
    /// Info for a freshly minted or recovered credential.
    pub fn new(provider: Name, credential: Signed<UserCredential>, created_ms: u64) -> Arc<Self> {
        Self::for_request(provider, credential, created_ms, None)
    }

    /// Info for a session issued for a user's request (`request`: its a2
    /// and a3), or recovered with it.
    pub fn for_request(
        provider: Name,
        credential: Signed<UserCredential>,
        created_ms: u64,
        request: Option<(RequestId, Nonce)>,
    ) -> Arc<Self> {
        let credential_digest = credential_digest(&credential);
        Arc::new(Self {
            provider,
            credential,
            credential_digest,
            created_ms,
            request,
        })
    }

    /// The session id.
    pub fn session_id(&self) -> SessionId {
        self.credential.value().session_id
    }

    /// The session's policy.
    pub fn policy(&self) -> &Policy {
        &self.credential.value().policy
    }
}

/// Flags stored with a session and copied into each of its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionFlags(pub u8);

impl SessionFlags {
    /// The provider missed the policy's maximum interval between accounting
    /// messages at least once.
    pub const MISSED_INTERIM: u8 = 1 << 0;

    /// Whether the flag is set.
    pub fn missed_interim(self) -> bool {
        self.0 & Self::MISSED_INTERIM != 0
    }
}

/// What changes as accounting arrives: the dedup state and the counters.
/// Owned by the committer; persisted with every record of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionProgress {
    /// Highest sequence stored (0: none yet).
    pub sequence_max: u64,
    /// Bit i set: sequence `sequence_max - i` is stored (i < 64).
    pub window: u64,
    /// Messages stored.
    pub message_count: u64,
    /// Sum of the `requests` custom counter over stored messages.
    pub requests_total: u64,
    /// When the last message was stored (or the session created), Unix ms.
    pub last_message_ms: u64,
    /// Set when the Final Accounting is stored: the sequence it carried.
    pub final_sequence: Option<u64>,
    /// When the Final Accounting was stored, Unix ms.
    pub closed_ms: Option<u64>,
    /// Flags copied into the session's records.
    pub flags: SessionFlags,
    /// What a receipt states beyond the counters above. `None` for a
    /// session that stored messages before this AM kept receipts: no
    /// receipt can state all of its messages.
    pub receipt: Option<ReceiptState>,
}

/// A session's usage sums and the digest of its stored messages, kept up to
/// date with every stored message (wire::receipt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReceiptState {
    /// Sum of e5 `units` (saturating).
    pub units: u64,
    /// Sum of e5 `bytes_up` (saturating).
    pub bytes_up: u64,
    /// Sum of e5 `bytes_down` (saturating).
    pub bytes_down: u64,
    /// Sum of e5 `duration_ms` (saturating).
    pub duration_ms: u64,
    /// The digest of the stored messages in the order they were stored.
    pub digest: ReceiptDigest,
}

impl ReceiptState {
    /// The state once `message` (`leaf`: the SHA-256 of its signed fields)
    /// is stored.
    pub fn then(&self, message: &Accounting, leaf: &[u8; 32]) -> Self {
        let usage = &message.usage;
        let add = |sum: u64, value: Option<u64>| sum.saturating_add(value.unwrap_or(0));
        Self {
            units: add(self.units, usage.units),
            bytes_up: add(self.bytes_up, usage.bytes_up),
            bytes_down: add(self.bytes_down, usage.bytes_down),
            duration_ms: add(self.duration_ms, usage.duration_ms),
            digest: self.digest.then_leaf(message.sequence, leaf),
        }
    }
}

/// Where a sequence number stands in a session's dedup state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceState {
    /// Certainly never stored.
    New,
    /// Certainly stored: compare content with the stored fingerprint.
    Stored,
    /// Older than the in-memory window: ask the fingerprint index.
    Unknown,
}

impl SessionProgress {
    /// A new session's progress.
    pub fn new(created_ms: u64) -> Self {
        Self {
            last_message_ms: created_ms,
            receipt: Some(ReceiptState::default()),
            ..Self::default()
        }
    }

    /// Whether `sequence` was stored, as far as memory knows.
    pub fn sequence_state(&self, sequence: u64) -> SequenceState {
        if sequence > self.sequence_max {
            return SequenceState::New;
        }
        let distance = self.sequence_max - sequence;
        if distance < SEQUENCE_WINDOW {
            if self.window & (1u64 << distance) != 0 {
                SequenceState::Stored
            } else {
                SequenceState::New
            }
        } else {
            SequenceState::Unknown
        }
    }

    /// Record that `message` (`leaf`: the SHA-256 of its signed fields) is
    /// stored at `now_ms`.
    pub fn record(&mut self, message: &Accounting, leaf: &[u8; 32], now_ms: u64) {
        self.receipt = self.receipt.map(|state| state.then(message, leaf));
        let sequence = message.sequence;
        if sequence > self.sequence_max {
            let shift = sequence - self.sequence_max;
            self.window = if shift >= SEQUENCE_WINDOW {
                0
            } else {
                self.window << shift
            };
            self.window |= 1;
            self.sequence_max = sequence;
        } else {
            let distance = self.sequence_max - sequence;
            if distance < SEQUENCE_WINDOW {
                self.window |= 1u64 << distance;
            }
        }
        self.message_count += 1;
        self.requests_total = self.requests_total.saturating_add(requests_reported(message));
        self.last_message_ms = self.last_message_ms.max(now_ms);
        if message.kind == AccountingKind::FINAL {
            self.final_sequence = Some(sequence);
            self.closed_ms = Some(now_ms);
        }
    }

    /// Whether the session is closed by its Final Accounting.
    pub fn is_closed(&self) -> bool {
        self.final_sequence.is_some()
    }
}

/// The `requests` counter of a message (0 if absent).
pub fn requests_reported(message: &Accounting) -> u64 {
    message
        .usage
        .custom
        .iter()
        .find(|counter| counter.name.as_str() == REQUESTS_COUNTER_NAME)
        .map_or(0, |counter| counter.value)
}

/// Time bounds the AM applies to accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBounds {
    /// How far in the future an accounted interval may end.
    pub future_skew_ms_max: u64,
    /// How old an accounted interval may be when it arrives.
    pub lateness_ms_max: u64,
}

/// Checks that need no state but the session's fixed info, done before the
/// signature is verified so that garbage costs no verification: the session
/// exists and was issued to the provider on this connection.
pub fn admit(info: Option<&SessionInfo>, provider: &Name) -> Result<(), AckStatus> {
    let info = info.ok_or(AckStatus::UNKNOWN_SESSION)?;
    if &info.provider != provider {
        return Err(AckStatus::WRONG_PROVIDER);
    }
    Ok(())
}

/// The policy checks on a message that is new to its session, in the
/// committer, in order. `progress` is the session's state before the message.
pub fn check_policy(
    info: &SessionInfo,
    progress: &SessionProgress,
    message: &Accounting,
    now_ms: u64,
    bounds: TimeBounds,
) -> Result<(), AckStatus> {
    let credential = info.credential.value();
    let policy = &credential.policy;
    // Verification runs on several threads, so a Final Accounting can reach
    // the committer before an interim sent ahead of it: sequences below the
    // final one still belong to the session; later ones, or a second final,
    // do not.
    if let Some(final_sequence) = progress.final_sequence
        && (message.sequence > final_sequence || message.kind == AccountingKind::FINAL)
    {
        return Err(AckStatus::SESSION_CLOSED);
    }
    if message.service_id != credential.service_id {
        return Err(AckStatus::SERVICE_MISMATCH);
    }
    if message.credential_digest != info.credential_digest {
        return Err(AckStatus::CREDENTIAL_MISMATCH);
    }
    if !message.usage.present().contains(policy.required_data) {
        return Err(AckStatus::MISSING_ACCOUNTING_DATA);
    }
    let (start_ms, end_ms) = message.usage.interval_ms.unwrap_or((now_ms, now_ms));
    if end_ms > now_ms.saturating_add(bounds.future_skew_ms_max) {
        return Err(AckStatus::TIMESTAMP_IN_FUTURE);
    }
    if end_ms.saturating_add(bounds.lateness_ms_max) < now_ms {
        return Err(AckStatus::TIMESTAMP_TOO_OLD);
    }
    // Lifetime: usage may only be accounted for time inside the credential's
    // validity, and must arrive within the lateness bound after it ends.
    if start_ms >= policy.valid_until_ms
        || end_ms < policy.valid_from_ms
        || now_ms > policy.valid_until_ms.saturating_add(bounds.lateness_ms_max)
    {
        return Err(AckStatus::SESSION_EXPIRED);
    }
    if policy.requests_max != 0 {
        let total = progress.requests_total.saturating_add(requests_reported(message));
        if total > u64::from(policy.requests_max) {
            return Err(AckStatus::REQUESTS_EXCEEDED);
        }
    }
    Ok(())
}

/// Whether a session missed its maximum interval between messages at `now_ms`.
pub fn missed_interim(info: &SessionInfo, progress: &SessionProgress, now_ms: u64) -> bool {
    let interval_s = info.policy().interim_interval_max_s;
    interval_s != 0
        && !progress.is_closed()
        && now_ms <= info.policy().valid_until_ms
        && now_ms.saturating_sub(progress.last_message_ms) > u64::from(interval_s) * 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{Address, CounterName, CustomCounter, DataFields, ServiceId, SigningKey, TimeOfDay, Usage};

    const NOW_MS: u64 = 1_795_651_200_000;
    const BOUNDS: TimeBounds = TimeBounds {
        future_skew_ms_max: 300_000,
        lateness_ms_max: 86_400_000,
    };

    fn info(policy: Policy) -> Arc<SessionInfo> {
        let credential = Signed::sign(
            UserCredential {
                session_id: SessionId([1; 16]),
                service_id: ServiceId(4),
                user_id: Name::new("alice").unwrap(),
                user_address: Address::new("10.0.0.1:1").unwrap(),
                session_key: wire::SessionKey([0; 32]),
                policy,
            },
            &SigningKey::from_seed(&[1; 32]),
        )
        .unwrap();
        SessionInfo::new(Name::new("p1").unwrap(), credential, NOW_MS)
    }

    fn policy() -> Policy {
        Policy {
            valid_from_ms: NOW_MS - 3_600_000,
            valid_until_ms: NOW_MS + 3_600_000,
            time_of_day: TimeOfDay::ANY,
            requests_max: 10,
            address_change_allowed: false,
            required_data: DataFields::UNITS,
            interim_interval_max_s: 60,
        }
    }

    fn message(info: &SessionInfo, sequence: u64) -> Accounting {
        Accounting {
            service_id: ServiceId(4),
            kind: AccountingKind::INTERIM,
            session_id: SessionId([1; 16]),
            sequence,
            credential_digest: info.credential_digest,
            usage: Usage {
                units: Some(1),
                interval_ms: Some((NOW_MS - 60_000, NOW_MS)),
                ..Usage::default()
            },
        }
    }

    #[test]
    fn sequence_window_is_exact() {
        let info = info(policy());
        let mut progress = SessionProgress::new(NOW_MS);
        assert_eq!(progress.sequence_state(1), SequenceState::New);
        for sequence in [1, 2, 5, 3] {
            progress.record(&message(&info, sequence), &[0; 32], NOW_MS);
        }
        assert_eq!(progress.sequence_max, 5);
        for (sequence, state) in [
            (1, SequenceState::Stored),
            (2, SequenceState::Stored),
            (3, SequenceState::Stored),
            (4, SequenceState::New),
            (5, SequenceState::Stored),
            (6, SequenceState::New),
        ] {
            assert_eq!(progress.sequence_state(sequence), state, "{sequence}");
        }
        progress.record(&message(&info, 5 + SEQUENCE_WINDOW + 10), &[0; 32], NOW_MS);
        assert_eq!(progress.sequence_state(5), SequenceState::Unknown);
        assert_eq!(progress.sequence_state(5 + SEQUENCE_WINDOW + 10), SequenceState::Stored);
        assert_eq!(progress.sequence_state(5 + SEQUENCE_WINDOW + 9), SequenceState::New);
        assert_eq!(progress.message_count, 5);
    }

    #[test]
    fn admission() {
        let info = info(policy());
        assert_eq!(admit(None, &Name::new("p1").unwrap()), Err(AckStatus::UNKNOWN_SESSION));
        assert_eq!(
            admit(Some(&info), &Name::new("p2").unwrap()),
            Err(AckStatus::WRONG_PROVIDER)
        );
        assert_eq!(admit(Some(&info), &Name::new("p1").unwrap()), Ok(()));
    }

    #[test]
    fn policy_checks_in_order() {
        let info = info(policy());
        let progress = SessionProgress::new(NOW_MS);
        let check =
            |message: &Accounting, progress: &SessionProgress, now| check_policy(&info, progress, message, now, BOUNDS);
        assert_eq!(check(&message(&info, 1), &progress, NOW_MS), Ok(()));
        let mut wrong_service = message(&info, 1);
        wrong_service.service_id = ServiceId(5);
        assert_eq!(
            check(&wrong_service, &progress, NOW_MS),
            Err(AckStatus::SERVICE_MISMATCH)
        );
        let mut wrong_digest = message(&info, 1);
        wrong_digest.credential_digest = [0; 16];
        assert_eq!(
            check(&wrong_digest, &progress, NOW_MS),
            Err(AckStatus::CREDENTIAL_MISMATCH)
        );
        let mut missing = message(&info, 1);
        missing.usage.units = None;
        assert_eq!(
            check(&missing, &progress, NOW_MS),
            Err(AckStatus::MISSING_ACCOUNTING_DATA)
        );
        let mut future = message(&info, 1);
        future.usage.interval_ms = Some((NOW_MS, NOW_MS + 600_000));
        assert_eq!(check(&future, &progress, NOW_MS), Err(AckStatus::TIMESTAMP_IN_FUTURE));
        assert_eq!(
            check(&message(&info, 1), &progress, NOW_MS + 86_400_001),
            Err(AckStatus::TIMESTAMP_TOO_OLD)
        );
        let mut after_expiry = message(&info, 1);
        after_expiry.usage.interval_ms = Some((NOW_MS + 3_600_000, NOW_MS + 3_600_000));
        assert_eq!(
            check(&after_expiry, &progress, NOW_MS + 3_600_000),
            Err(AckStatus::SESSION_EXPIRED)
        );
        let mut requests = message(&info, 1);
        requests.usage.custom = vec![CustomCounter {
            name: CounterName::new(REQUESTS_COUNTER_NAME).unwrap(),
            value: 11,
        }];
        assert_eq!(check(&requests, &progress, NOW_MS), Err(AckStatus::REQUESTS_EXCEEDED));
        let mut closed = progress;
        let mut last = message(&info, 2);
        last.kind = AccountingKind::FINAL;
        closed.record(&last, &[0; 32], NOW_MS);
        assert_eq!(
            check(&message(&info, 3), &closed, NOW_MS),
            Err(AckStatus::SESSION_CLOSED)
        );
        // An interim numbered before the final, arriving after it, still counts.
        assert_eq!(check(&message(&info, 1), &closed, NOW_MS), Ok(()));
        let mut second_final = message(&info, 1);
        second_final.kind = AccountingKind::FINAL;
        assert_eq!(check(&second_final, &closed, NOW_MS), Err(AckStatus::SESSION_CLOSED));
    }

    #[test]
    fn watchdog() {
        let info = info(policy());
        let mut progress = SessionProgress::new(NOW_MS);
        assert!(!missed_interim(&info, &progress, NOW_MS + 60_000));
        assert!(missed_interim(&info, &progress, NOW_MS + 60_001));
        progress.record(&message(&info, 1), &[0; 32], NOW_MS + 60_000);
        assert!(!missed_interim(&info, &progress, NOW_MS + 100_000));
    }
}
