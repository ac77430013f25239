//! Reproducible accounting workloads: the same spec and seed give the same
//! keys, sessions, messages and signatures on every machine and version.

use wire::{Accounting, AccountingKind, BatchItem, PublicKey, ServiceId, SessionId, Signed, SigningKey, Usage};

/// Unix ms of the workload's first interval (2026-11-26T00:00:00Z).
pub const WORKLOAD_EPOCH_MS: u64 = 1_795_651_200_000;

/// Upper bound on messages in one workload: ~200 B each in memory, so the
/// largest workload stays near 2 GiB.
pub const WORKLOAD_MESSAGES_MAX: u64 = 10_000_000;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkloadSpec {
    /// Providers, each with its own key.
    pub providers: usize,
    /// Accounting sessions per provider.
    pub sessions_per_provider: usize,
    /// Messages per session; the last one is the Final Accounting.
    pub messages_per_session: u64,
    /// Chance that a message is followed by a retransmission of an earlier
    /// message of the same session (same bytes): must be acked as duplicate.
    pub duplicate_ratio: f64,
    /// Chance that a message is followed by a copy with a corrupted
    /// signature: must be refused as a bad signature.
    pub bad_signature_ratio: f64,
    /// The seed.
    pub seed: u64,
}

/// Why a message is in the workload, and so how the AM must answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// A new message: stored.
    Fresh,
    /// The same bytes as an earlier message: duplicate.
    Duplicate,
    /// A corrupted signature: refused.
    BadSignature,
}

/// One message to send.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Index of the sending provider.
    pub provider: usize,
    /// The signed message.
    pub message: Signed<Accounting>,
    /// What the answer must be.
    pub intent: Intent,
}

/// A generated workload.
pub struct Workload {
    /// Each provider's signing key.
    pub signing_keys: Vec<SigningKey>,
    /// Each provider's parsed public key.
    pub keys: Vec<PublicKey>,
    /// Messages in sending order (sessions interleaved round-robin).
    pub planned: Vec<Planned>,
}

/// Why a spec cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Zero providers, sessions or messages, or a ratio outside 0..=1.
    #[error("invalid workload: {0}")]
    Invalid(&'static str),
    /// More than [`WORKLOAD_MESSAGES_MAX`] fresh messages.
    #[error("{0} messages exceed the maximum of {WORKLOAD_MESSAGES_MAX}")]
    TooLarge(u64),
}

impl Workload {
    /// Generate the workload for `spec`.
    pub fn generate(spec: &WorkloadSpec) -> Result<Self, SpecError> {
        if spec.providers == 0 || spec.sessions_per_provider == 0 || spec.messages_per_session == 0 {
            return Err(SpecError::Invalid(
                "providers, sessions and messages must be at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&spec.duplicate_ratio) || !(0.0..=1.0).contains(&spec.bad_signature_ratio) {
            return Err(SpecError::Invalid("ratios must be within 0..=1"));
        }
        let sessions = (spec.providers as u64).saturating_mul(spec.sessions_per_provider as u64);
        let fresh = sessions.saturating_mul(spec.messages_per_session);
        if fresh > WORKLOAD_MESSAGES_MAX {
            return Err(SpecError::TooLarge(fresh));
        }
        let mut random = SplitMix64(spec.seed);
        let signing_keys: Vec<SigningKey> = (0..spec.providers)
            .map(|_| SigningKey::from_seed(&random.bytes32()))
            .collect();
        let keys = signing_keys.iter().map(SigningKey::public_key).collect();
        let session_ids: Vec<(usize, SessionId)> = (0..spec.providers)
            .flat_map(|provider| (0..spec.sessions_per_provider).map(move |_| provider))
            .map(|provider| {
                let bytes = random.bytes32();
                let mut id = [0u8; 16];
                id.copy_from_slice(&bytes[..16]);
                (provider, SessionId(id))
            })
            .collect();
        let mut planned = Vec::with_capacity(usize::try_from(fresh).unwrap_or(0));
        for sequence in 1..=spec.messages_per_session {
            for (session_index, (provider, session_id)) in session_ids.iter().enumerate() {
                let kind = if sequence == spec.messages_per_session {
                    AccountingKind::FINAL
                } else {
                    AccountingKind::INTERIM
                };
                let start_ms = WORKLOAD_EPOCH_MS + (sequence - 1) * 60_000;
                let accounting = Accounting {
                    service_id: ServiceId(1 + (session_index % 8) as u32),
                    kind,
                    session_id: *session_id,
                    sequence,
                    credential_digest: [0x5a; 16],
                    usage: Usage {
                        units: Some(1 + random.next_u64() % 100),
                        bytes_up: Some(random.next_u64() % 1_000_000),
                        bytes_down: Some(random.next_u64() % 10_000_000),
                        duration_ms: Some(60_000),
                        interval_ms: Some((start_ms, start_ms + 60_000)),
                        custom: Vec::new(),
                    },
                };
                // Values above are within every bound: signing cannot fail.
                let message = Signed::sign(accounting, &signing_keys[*provider])
                    .unwrap_or_else(|error| unreachable!("workload message out of bounds: {error}"));
                planned.push(Planned {
                    provider: *provider,
                    message: message.clone(),
                    intent: Intent::Fresh,
                });
                if random.chance(spec.duplicate_ratio) {
                    planned.push(Planned {
                        provider: *provider,
                        message: message.clone(),
                        intent: Intent::Duplicate,
                    });
                }
                if random.chance(spec.bad_signature_ratio) {
                    let (value, _) = message.into_parts();
                    let mut forged = Signed::sign(value, &signing_keys[*provider])
                        .unwrap_or_else(|error| unreachable!("workload message out of bounds: {error}"));
                    forged = corrupt(forged);
                    planned.push(Planned {
                        provider: *provider,
                        message: forged,
                        intent: Intent::BadSignature,
                    });
                }
            }
        }
        Ok(Self {
            signing_keys,
            keys,
            planned,
        })
    }

    /// Batch items for the planned messages in `range`.
    pub fn batch_items(&self, range: std::ops::Range<usize>) -> Vec<BatchItem<'_>> {
        self.planned
            .get(range)
            .unwrap_or_default()
            .iter()
            .filter_map(|planned| Some(planned.message.batch_item(self.keys.get(planned.provider)?)))
            .collect()
    }
}

/// The same message with one bit of S flipped (S stays canonical: the top
/// byte is left alone), so it decodes and fails verification.
pub fn corrupt(message: Signed<Accounting>) -> Signed<Accounting> {
    let mut body = message.body().to_vec();
    let index = body.len() - 20;
    body[index] ^= 0x01;
    Signed::decode_body(body.into()).unwrap_or(message)
}

/// SplitMix64: tiny, deterministic and stable forever, so a seed names the
/// same workload on every machine and every version (general-purpose RNG
/// crates change their streams between releases). Not for secrets.
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_exact_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        out
    }

    /// True with probability `ratio`.
    pub fn chance(&mut self, ratio: f64) -> bool {
        ratio > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= ratio
    }

    /// A number in `0..bound` (`bound` > 0; 0 when it is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 { 0 } else { self.next_u64() % bound }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            providers: 3,
            sessions_per_provider: 2,
            messages_per_session: 4,
            duplicate_ratio: 0.3,
            bad_signature_ratio: 0.2,
            seed: 42,
        }
    }

    #[test]
    fn workload_is_reproducible_and_answers_are_known() {
        let first = Workload::generate(&spec()).unwrap();
        let second = Workload::generate(&spec()).unwrap();
        assert_eq!(first.planned.len(), second.planned.len());
        for (a, b) in first.planned.iter().zip(&second.planned) {
            assert_eq!(a.message.body(), b.message.body());
        }
        let fresh = first.planned.iter().filter(|p| p.intent == Intent::Fresh).count();
        assert_eq!(fresh, 3 * 2 * 4);
        assert!(first.planned.iter().any(|p| p.intent == Intent::Duplicate));
        assert!(first.planned.iter().any(|p| p.intent == Intent::BadSignature));
        for planned in &first.planned {
            let valid = planned.message.verify(&first.keys[planned.provider]).is_ok();
            assert_eq!(valid, planned.intent != Intent::BadSignature);
        }
        let finals = first
            .planned
            .iter()
            .filter(|p| p.intent == Intent::Fresh && p.message.value().kind == AccountingKind::FINAL)
            .count();
        assert_eq!(finals, 6);
        let other_seed = Workload::generate(&WorkloadSpec { seed: 43, ..spec() }).unwrap();
        assert_ne!(other_seed.planned[0].message.body(), first.planned[0].message.body());
    }

    #[test]
    fn invalid_specs_are_refused() {
        assert!(Workload::generate(&WorkloadSpec { providers: 0, ..spec() }).is_err());
        assert!(
            Workload::generate(&WorkloadSpec {
                duplicate_ratio: 1.5,
                ..spec()
            })
            .is_err()
        );
        assert!(matches!(
            Workload::generate(&WorkloadSpec {
                providers: 100_000,
                sessions_per_provider: 1000,
                ..spec()
            }),
            Err(SpecError::TooLarge(_))
        ));
    }
}
