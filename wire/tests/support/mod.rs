//! Deterministic example messages shared by the codec tests, the protocol
//! document's worked examples and the fuzz corpus.
#![allow(dead_code)]

use bytes::Bytes;
use wire::{
    Accounting, AccountingAck, AccountingKind, AckEntry, AckStatus, Address, BatchId, CounterName, CustomCounter,
    DataFields, ErrorCode, ErrorMessage, Maced, Message, MessageId, Name, Nonce, Policy, ProofStatus, RecordAccounting,
    RecordAck, RecordStatus, RequestId, ServiceCredential, ServiceCredentialRequest, ServiceId, ServiceProof,
    ServiceRequest, SessionId, SessionKey, Signed, SigningKey, TimeOfDay, UserCredential, credential_digest,
};

/// The example keys: user, AM, provider.
pub fn user_key() -> SigningKey {
    SigningKey::from_seed(&[0x01; 32])
}
pub fn am_key() -> SigningKey {
    SigningKey::from_seed(&[0x02; 32])
}
pub fn provider_key() -> SigningKey {
    SigningKey::from_seed(&[0x03; 32])
}

pub const SESSION_ID: SessionId = SessionId([0x11; 16]);
pub const REQUEST_ID: RequestId = RequestId([0x22; 16]);
pub const NONCE: Nonce = Nonce([0x33; 16]);
pub const SESSION_KEY_BYTES: [u8; 32] = [0x44; 32];
/// 2026-11-26T00:00:00Z.
pub const NOW_MS: u64 = 1_795_651_200_000;

pub fn session_key() -> SessionKey {
    SessionKey(SESSION_KEY_BYTES)
}

pub fn policy() -> Policy {
    Policy {
        valid_from_ms: NOW_MS,
        valid_until_ms: NOW_MS + 3_600_000,
        time_of_day: TimeOfDay {
            start_minute: 8 * 60,
            end_minute: 20 * 60,
        },
        requests_max: 100,
        address_change_allowed: false,
        required_data: DataFields::UNITS.union(DataFields::INTERVAL),
        interim_interval_max_s: 60,
    }
}

/// A stand-in for the user's DER certificate: the codec treats a5 as opaque
/// bytes (the certificate tests use real ones from rcgen).
pub fn certificate_bytes() -> Bytes {
    Bytes::from_static(&[0x30, 0x82, 0x01, 0x00, 0xaa, 0xbb, 0xcc, 0xdd])
}

pub fn service_credential_request() -> Signed<ServiceCredentialRequest> {
    Signed::sign(
        ServiceCredentialRequest {
            service_id: ServiceId(7),
            request_id: REQUEST_ID,
            nonce: NONCE,
            timestamp_ms: NOW_MS,
            user_address: Address::new("198.51.100.7:5000").unwrap(),
            certificate: certificate_bytes(),
        },
        &user_key(),
    )
    .unwrap()
}

pub fn service_credential() -> Signed<ServiceCredential> {
    Signed::sign(
        ServiceCredential {
            request_id: REQUEST_ID,
            session_id: SESSION_ID,
            service_id: ServiceId(7),
            provider_address: Address::new("203.0.113.5:7000").unwrap(),
            session_key: session_key(),
            policy: policy(),
        },
        &am_key(),
    )
    .unwrap()
}

pub fn user_credential() -> Signed<UserCredential> {
    Signed::sign(
        UserCredential {
            session_id: SESSION_ID,
            service_id: ServiceId(7),
            user_id: Name::new("user-0001").unwrap(),
            user_address: Address::new("198.51.100.7:5000").unwrap(),
            session_key: session_key(),
            policy: policy(),
        },
        &am_key(),
    )
    .unwrap()
}

pub fn service_request() -> Maced<ServiceRequest> {
    Maced::seal(
        ServiceRequest {
            session_id: SESSION_ID,
            user_address: Address::new("198.51.100.7:5000").unwrap(),
            nonce: NONCE,
            timestamp_ms: NOW_MS + 1_000,
        },
        &session_key(),
    )
    .unwrap()
}

pub fn service_proof() -> Maced<ServiceProof> {
    Maced::seal(
        ServiceProof {
            session_id: SESSION_ID,
            nonce: NONCE,
            status: ProofStatus::ACCEPTED,
        },
        &session_key(),
    )
    .unwrap()
}

pub fn accounting(kind: AccountingKind, sequence: u64) -> Signed<Accounting> {
    let custom = if kind == AccountingKind::FINAL {
        vec![CustomCounter {
            name: CounterName::new("gpu_seconds").unwrap(),
            value: 42,
        }]
    } else {
        Vec::new()
    };
    Signed::sign(
        Accounting {
            service_id: ServiceId(7),
            kind,
            session_id: SESSION_ID,
            sequence,
            credential_digest: credential_digest(&user_credential()),
            usage: wire::Usage {
                units: Some(5),
                bytes_up: Some(1_000),
                bytes_down: Some(250_000),
                duration_ms: None,
                interval_ms: Some((NOW_MS + 60_000 * (sequence - 1), NOW_MS + 60_000 * sequence)),
                custom,
            },
        },
        &provider_key(),
    )
    .unwrap()
}

pub fn accounting_ack() -> AccountingAck {
    AccountingAck {
        entries: vec![
            AckEntry {
                message_id: MessageId {
                    session_id: SESSION_ID,
                    sequence: 1,
                },
                status: AckStatus::STORED,
            },
            AckEntry {
                message_id: MessageId {
                    session_id: SESSION_ID,
                    sequence: 2,
                },
                status: AckStatus::DUPLICATE,
            },
            AckEntry {
                message_id: MessageId {
                    session_id: SessionId([0x55; 16]),
                    sequence: 9,
                },
                status: AckStatus::UNKNOWN_SESSION,
            },
        ],
    }
}

pub fn record_accounting() -> Signed<RecordAccounting> {
    // The first and last bytes of every Parquet file; a real batch carries a
    // whole file.
    let payload = Bytes::from_static(b"PAR1....PAR1");
    let node = Name::new("am-1").unwrap();
    let created_ms = NOW_MS + 300_000;
    let digest = RecordAccounting::digest_of(&payload);
    // The node's second batch, holding commit sequences 3 and 4.
    let (header, head) = wire::chain::sign_chain(
        wire::BatchHeader {
            node: node.clone(),
            batch_id: BatchId([0x66; 16]),
            number: 2,
            first_commit_sequence: 3,
            last_commit_sequence: 4,
            record_count: 2,
            created_ms,
            file_digest: digest,
            previous: [0x77; 32],
        },
        &am_key(),
    )
    .unwrap();
    Signed::sign(
        RecordAccounting {
            batch_id: BatchId([0x66; 16]),
            node,
            created_ms,
            record_count: 2,
            digest,
            header: Box::new(header),
            head: Box::new(head),
            payload,
        },
        &am_key(),
    )
    .unwrap()
}

pub fn record_ack() -> RecordAck {
    RecordAck {
        batch_id: BatchId([0x66; 16]),
        digest: RecordAccounting::digest_of(b"PAR1....PAR1"),
        status: RecordStatus::STORED,
    }
}

pub fn admin_open_session() -> wire::AdminOpenSession {
    wire::AdminOpenSession {
        provider: Name::new("provider-0001").unwrap(),
        service_id: ServiceId(7),
        user_id: Name::new("user-0001").unwrap(),
        user_address: Address::new("198.51.100.7:5000").unwrap(),
        policy: policy(),
    }
}

pub fn error_message() -> ErrorMessage {
    ErrorMessage::new(ErrorCode::PROVIDER_UNAVAILABLE, "provider-0001 is not connected")
}

/// A redirect to partition 2, `am-2` at 10.0.0.2:4433.
pub fn redirect() -> wire::Redirect {
    wire::Redirect {
        partition: wire::PartitionId(2),
        node: wire::Name::new("am-2").unwrap(),
        address: wire::Address::new("10.0.0.2:4433").unwrap(),
    }
}

/// The receipt of the example session after its two messages (the
/// interim and the final of 10.6 and 10.7), signed by the example AM.
pub fn session_receipt() -> Signed<wire::SessionReceipt> {
    let digest = [
        accounting(AccountingKind::INTERIM, 1),
        accounting(AccountingKind::FINAL, 2),
    ]
    .iter()
    .fold(wire::ReceiptDigest::default(), |digest, message| {
        digest.then(message.value().sequence, message.signed_bytes())
    });
    let mut sums = wire::UsageSums::default();
    for message in [
        accounting(AccountingKind::INTERIM, 1),
        accounting(AccountingKind::FINAL, 2),
    ] {
        let usage = &message.value().usage;
        sums.units += usage.units.unwrap_or(0);
        sums.bytes_up += usage.bytes_up.unwrap_or(0);
        sums.bytes_down += usage.bytes_down.unwrap_or(0);
        sums.duration_ms += usage.duration_ms.unwrap_or(0);
        sums.requests += usage
            .custom
            .iter()
            .filter(|counter| counter.name.as_str() == "requests")
            .map(|counter| counter.value)
            .sum::<u64>();
    }
    Signed::sign(
        wire::SessionReceipt {
            node: Name::new("am-1").unwrap(),
            session_id: SESSION_ID,
            provider: Name::new("provider-0001").unwrap(),
            user_id: Name::new("user-0001").unwrap(),
            service_id: ServiceId(7),
            issued_ms: NOW_MS + 600_000,
            message_count: 2,
            highest_sequence: 2,
            final_stored: true,
            sums,
            digest,
        },
        &am_key(),
    )
    .unwrap()
}

/// The example session's Receipt Request, MAC'd with its session key.
pub fn receipt_request() -> Maced<wire::ReceiptRequest> {
    Maced::seal(wire::ReceiptRequest { session_id: SESSION_ID }, &session_key()).unwrap()
}

/// Every worked example, by the name used in docs/protocol.md.
pub fn examples() -> Vec<(&'static str, Message)> {
    vec![
        (
            "service_credential_request",
            Message::ServiceCredentialRequest(service_credential_request()),
        ),
        ("service_credential", Message::ServiceCredential(service_credential())),
        ("user_credential", Message::UserCredential(user_credential())),
        ("service_request", Message::ServiceRequest(service_request())),
        ("service_proof", Message::ServiceProof(service_proof())),
        (
            "accounting_interim",
            Message::Accounting(accounting(AccountingKind::INTERIM, 1)),
        ),
        (
            "accounting_final",
            Message::Accounting(accounting(AccountingKind::FINAL, 2)),
        ),
        ("accounting_ack", Message::AccountingAck(accounting_ack())),
        ("record_accounting", Message::RecordAccounting(record_accounting())),
        ("record_ack", Message::RecordAck(record_ack())),
        ("admin_open_session", Message::AdminOpenSession(admin_open_session())),
        ("error", Message::Error(error_message())),
        ("redirect", Message::Redirect(redirect())),
        ("session_receipt", Message::SessionReceipt(session_receipt())),
        ("receipt_request", Message::ReceiptRequest(receipt_request())),
    ]
}
