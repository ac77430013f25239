//! Codec properties: every message round-trips byte for byte; random and
//! mutated bytes never panic; every malformed input has its typed error.

mod support;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use wire::limits::{ACK_ENTRIES_MAX, SMALL_FRAME_BODY_BYTES_MAX};
use wire::{
    Accounting, AccountingAck, AccountingKind, AckEntry, AckStatus, Address, CounterName, CustomCounter, DataFields,
    DecodeError, EncodeError, ErrorCode, ErrorMessage, FrameDecoder, Maced, Message, MessageId, Name, Nonce, Policy,
    ProofStatus, RequestId, ServiceCredential, ServiceCredentialRequest, ServiceId, ServiceProof, ServiceRequest,
    SessionId, SessionKey, Signed, TimeOfDay, Usage, UserCredential,
};

fn address() -> impl Strategy<Value = Address> {
    "[a-z0-9.:\\[\\]-]{1,60}".prop_map(|text| Address::new(text).unwrap())
}

fn name() -> impl Strategy<Value = Name> {
    "[A-Za-z0-9._-]{1,64}".prop_map(|text| Name::new(text).unwrap())
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        any::<u64>(),
        any::<u64>(),
        0u16..1440,
        0u16..1440,
        any::<u32>(),
        any::<bool>(),
        0u8..32,
        any::<u32>(),
    )
        .prop_map(|(a, b, start, end, requests_max, change, required, interval)| Policy {
            valid_from_ms: a.min(b),
            valid_until_ms: a.max(b),
            time_of_day: TimeOfDay {
                start_minute: start,
                end_minute: end,
            },
            requests_max,
            address_change_allowed: change,
            required_data: DataFields(required),
            interim_interval_max_s: interval,
        })
}

fn usage() -> impl Strategy<Value = Usage> {
    (
        any::<Option<u64>>(),
        any::<Option<u64>>(),
        any::<Option<u64>>(),
        any::<Option<u64>>(),
        any::<Option<(u64, u64)>>(),
        prop::collection::btree_map("[a-z0-9._-]{1,32}", any::<u64>(), 0..=16),
    )
        .prop_map(|(units, bytes_up, bytes_down, duration_ms, interval, custom)| Usage {
            units,
            bytes_up,
            bytes_down,
            duration_ms,
            interval_ms: interval.map(|(a, b)| (a.min(b), a.max(b))),
            custom: custom
                .into_iter()
                .map(|(name, value)| CustomCounter {
                    name: CounterName::new(name).unwrap(),
                    value,
                })
                .collect(),
        })
}

fn message() -> impl Strategy<Value = Message> {
    let user = support::user_key();
    let am = support::am_key();
    let provider = support::provider_key();
    let am_for_user = am.clone();
    let am_for_record = am.clone();
    prop_oneof![
        (
            any::<u32>(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u64>(),
            address(),
            prop::collection::vec(any::<u8>(), 1..4096)
        )
            .prop_map(
                move |(service, request, nonce, timestamp_ms, user_address, certificate)| {
                    Message::ServiceCredentialRequest(
                        Signed::sign(
                            ServiceCredentialRequest {
                                service_id: ServiceId(service),
                                request_id: RequestId(request),
                                nonce: Nonce(nonce),
                                timestamp_ms,
                                user_address,
                                certificate: Bytes::from(certificate),
                            },
                            &user,
                        )
                        .unwrap(),
                    )
                }
            ),
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u32>(),
            address(),
            any::<[u8; 32]>(),
            policy()
        )
            .prop_map(move |(request, session, service, provider_address, key, policy)| {
                Message::ServiceCredential(
                    Signed::sign(
                        ServiceCredential {
                            request_id: RequestId(request),
                            session_id: SessionId(session),
                            service_id: ServiceId(service),
                            provider_address,
                            session_key: SessionKey(key),
                            policy,
                        },
                        &am,
                    )
                    .unwrap(),
                )
            }),
        (
            any::<[u8; 16]>(),
            any::<u32>(),
            name(),
            address(),
            any::<[u8; 32]>(),
            policy()
        )
            .prop_map(move |(session, service, user_id, user_address, key, policy)| {
                Message::UserCredential(
                    Signed::sign(
                        UserCredential {
                            session_id: SessionId(session),
                            service_id: ServiceId(service),
                            user_id,
                            user_address,
                            session_key: SessionKey(key),
                            policy,
                        },
                        &am_for_user,
                    )
                    .unwrap(),
                )
            }),
        (
            any::<[u8; 16]>(),
            address(),
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<[u8; 32]>()
        )
            .prop_map(|(session, user_address, nonce, timestamp_ms, key)| {
                Message::ServiceRequest(
                    Maced::seal(
                        ServiceRequest {
                            session_id: SessionId(session),
                            user_address,
                            nonce: Nonce(nonce),
                            timestamp_ms,
                        },
                        &SessionKey(key),
                    )
                    .unwrap(),
                )
            }),
        (any::<[u8; 16]>(), any::<[u8; 16]>(), any::<u8>(), any::<[u8; 32]>()).prop_map(
            |(session, nonce, status, key)| {
                Message::ServiceProof(
                    Maced::seal(
                        ServiceProof {
                            session_id: SessionId(session),
                            nonce: Nonce(nonce),
                            status: ProofStatus(status),
                        },
                        &SessionKey(key),
                    )
                    .unwrap(),
                )
            }
        ),
        (
            any::<u32>(),
            any::<bool>(),
            any::<[u8; 16]>(),
            1u64..,
            any::<[u8; 16]>(),
            usage()
        )
            .prop_map(move |(service, is_final, session, sequence, digest, usage)| {
                Message::Accounting(
                    Signed::sign(
                        Accounting {
                            service_id: ServiceId(service),
                            kind: if is_final {
                                AccountingKind::FINAL
                            } else {
                                AccountingKind::INTERIM
                            },
                            session_id: SessionId(session),
                            sequence,
                            credential_digest: digest,
                            usage,
                        },
                        &provider,
                    )
                    .unwrap(),
                )
            }),
        prop::collection::vec((any::<[u8; 16]>(), any::<u64>(), any::<u8>()), 1..=ACK_ENTRIES_MAX).prop_map(
            |entries| {
                Message::AccountingAck(AccountingAck {
                    entries: entries
                        .into_iter()
                        .map(|(session, sequence, status)| AckEntry {
                            message_id: MessageId {
                                session_id: SessionId(session),
                                sequence,
                            },
                            status: AckStatus(status),
                        })
                        .collect(),
                })
            }
        ),
        (
            any::<[u8; 16]>(),
            name(),
            any::<u64>(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..2048)
        )
            .prop_map(move |(batch, node, created_ms, record_count, payload)| {
                let payload = Bytes::from(payload);
                let record_count = record_count.max(1);
                let digest = wire::RecordAccounting::digest_of(&payload);
                let (header, head) = wire::chain::sign_chain(
                    wire::BatchHeader {
                        node: node.clone(),
                        batch_id: wire::BatchId(batch),
                        number: 1,
                        first_commit_sequence: 1,
                        last_commit_sequence: u64::from(record_count),
                        record_count,
                        created_ms,
                        file_digest: digest,
                        previous: wire::chain::CHAIN_START,
                    },
                    &am_for_record,
                )
                .unwrap();
                Message::RecordAccounting(
                    Signed::sign(
                        wire::RecordAccounting {
                            batch_id: wire::BatchId(batch),
                            node,
                            created_ms,
                            record_count,
                            digest,
                            header: Box::new(header),
                            head: Box::new(head),
                            payload,
                        },
                        &am_for_record,
                    )
                    .unwrap(),
                )
            }),
        (any::<[u8; 16]>(), any::<[u8; 32]>(), any::<u8>()).prop_map(|(batch, digest, status)| {
            Message::RecordAck(wire::RecordAck {
                batch_id: wire::BatchId(batch),
                digest,
                status: wire::RecordStatus(status),
            })
        }),
        (any::<u16>(), ".{0,300}")
            .prop_map(|(code, detail)| Message::Error(ErrorMessage::new(ErrorCode(code), &detail))),
        (name(), any::<u32>(), name(), address(), policy()).prop_map(
            |(provider, service, user_id, user_address, policy)| {
                Message::AdminOpenSession(wire::AdminOpenSession {
                    provider,
                    service_id: ServiceId(service),
                    user_id,
                    user_address,
                    policy,
                })
            }
        ),
        Just(Message::ServiceListRequest(wire::ServiceListRequest)),
        (
            any::<bool>(),
            proptest::collection::vec(
                (any::<u32>(), name(), name(), address(), name(), policy()),
                0..=wire::limits::SERVICE_LIST_ENTRIES_PER_FRAME_MAX
            )
        )
            .prop_map(|(done, entries)| {
                Message::ServiceList(wire::ServiceList {
                    done,
                    entries: entries
                        .into_iter()
                        .map(
                            |(id, name, provider, provider_address, unit, policy)| wire::ServiceEntry {
                                service_id: ServiceId(id),
                                name,
                                provider,
                                provider_address,
                                unit,
                                policy,
                            },
                        )
                        .collect(),
                })
            }),
        (any::<[u8; 16]>(), any::<u8>()).prop_map(|(session, status)| {
            Message::UserCredentialReceipt(wire::UserCredentialReceipt {
                session_id: SessionId(session),
                status: wire::ReceiptStatus(status),
            })
        }),
    ]
}

/// Whether the message's signature or MAC verifies under the test keys.
fn authentic(message: &Message) -> Option<bool> {
    let user = support::user_key().public_key();
    let am = support::am_key().public_key();
    let provider = support::provider_key().public_key();
    match message {
        Message::ServiceCredentialRequest(signed) => Some(signed.verify(&user).is_ok()),
        Message::ServiceCredential(signed) => Some(signed.verify(&am).is_ok()),
        Message::UserCredential(signed) => Some(signed.verify(&am).is_ok()),
        Message::Accounting(signed) => Some(signed.verify(&provider).is_ok()),
        Message::RecordAccounting(signed) => Some(signed.verify(&am).is_ok()),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips(message in message()) {
        let frame = message.to_frame();
        let decoded = Message::decode(frame.clone()).unwrap();
        prop_assert_eq!(&decoded, &message);
        prop_assert_eq!(decoded.to_frame(), frame.clone());
        if let Some(valid) = authentic(&decoded) {
            prop_assert!(valid);
        }
        // The stream decoder cuts the same frame from a buffer that holds it
        // and more.
        let mut buffer = BytesMut::from(&frame[..]);
        buffer.extend_from_slice(&frame);
        let decoder = FrameDecoder::new(wire::limits::FRAME_BODY_BYTES_MAX);
        for _ in 0..2 {
            let cut = decoder.next_frame(&mut buffer).unwrap().unwrap();
            prop_assert_eq!(cut.decode().unwrap(), message.clone());
        }
        prop_assert!(decoder.next_frame(&mut buffer).unwrap().is_none());
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(Bytes::from(bytes.clone()));
        let mut buffer = BytesMut::from(&bytes[..]);
        let decoder = FrameDecoder::new(SMALL_FRAME_BODY_BYTES_MAX);
        for _ in 0..64 {
            match decoder.next_frame(&mut buffer) {
                Ok(Some(frame)) => { let _ = frame.decode(); }
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// A valid frame with a byte changed, inserted or removed never panics,
    /// and a signed message whose bytes changed never verifies.
    #[test]
    fn mutated_frames_never_panic_or_verify(
        message in message(),
        position in any::<prop::sample::Index>(),
        value in any::<u8>(),
        operation in 0u8..3,
    ) {
        let mut bytes = message.to_frame().to_vec();
        let index = position.index(bytes.len());
        match operation {
            0 => bytes[index] ^= value.max(1),
            1 => bytes.insert(index, value),
            _ => { bytes.remove(index); }
        }
        if let Ok(decoded) = Message::decode(Bytes::from(bytes.clone()))
            && decoded.to_frame() != message.to_frame()
            && let Some(valid) = authentic(&decoded)
        {
            prop_assert!(!valid, "a changed signed message verified");
        }
    }
}

/// Frames split at every byte boundary decode the same.
#[test]
fn stream_decoder_handles_every_split() {
    let decoder = FrameDecoder::new(SMALL_FRAME_BODY_BYTES_MAX);
    for (name, message) in support::examples() {
        if message.message_type() == wire::MessageType::RECORD_ACCOUNTING {
            continue;
        }
        let frame = message.to_frame();
        for split in 0..=frame.len() {
            let mut buffer = BytesMut::from(&frame[..split]);
            let first = decoder.next_frame(&mut buffer).unwrap();
            if split < frame.len() {
                assert!(first.is_none(), "{name} split {split}");
                buffer.extend_from_slice(&frame[split..]);
                let second = decoder.next_frame(&mut buffer).unwrap().unwrap();
                assert_eq!(second.decode().unwrap(), message, "{name} split {split}");
            } else {
                assert_eq!(first.unwrap().decode().unwrap(), message);
            }
        }
    }
}

fn frame(message_type: u8, body: &[u8]) -> Bytes {
    let mut out = vec![1, message_type];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// Replace the signed fields of the example accounting message and re-sign,
/// so the error found is the field's, not the signature's.
fn accounting_body(edit: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let example = support::accounting(AccountingKind::FINAL, 2);
    let mut fields = example.signed_bytes().to_vec();
    edit(&mut fields);
    let signature = support::provider_key().sign(b"acct/1 accounting\0", &fields);
    fields.extend_from_slice(&signature);
    frame(0x06, &fields)
}

#[test]
fn malformed_inputs_have_typed_errors() {
    // Offsets in the example Final Accounting's fields: service 0..4, kind 4,
    // session 5..21, sequence 21..29, digest 29..45, usage from 45:
    // present 45, units 46..54, up 54..62, down 62..70, interval 70..86,
    // custom count 86, name length 87.
    let cases: Vec<(&str, Bytes, DecodeError)> = vec![
        (
            "empty",
            Bytes::new(),
            DecodeError::Truncated {
                field: "frame header",
                needed: 6,
                remaining: 0,
            },
        ),
        (
            "short header",
            Bytes::from_static(&[1, 6, 0]),
            DecodeError::Truncated {
                field: "frame header",
                needed: 6,
                remaining: 3,
            },
        ),
        (
            "version 2",
            Bytes::from_static(&[2, 6, 0, 0, 0, 0]),
            DecodeError::UnsupportedVersion(2),
        ),
        (
            "unknown type",
            Bytes::from_static(&[1, 0x14, 0, 0, 0, 0]),
            DecodeError::UnknownMessageType(0x14),
        ),
        (
            "oversized accounting",
            Bytes::from_static(&[1, 6, 0, 0, 0x40, 1]),
            DecodeError::FrameTooLarge {
                message_type: 6,
                length: 0x4001,
                max: SMALL_FRAME_BODY_BYTES_MAX,
            },
        ),
        (
            "oversized record",
            Bytes::from_static(&[1, 8, 0xff, 0xff, 0xff, 0xff]),
            DecodeError::FrameTooLarge {
                message_type: 8,
                length: 0xffff_ffff,
                max: wire::limits::FRAME_BODY_BYTES_MAX,
            },
        ),
        (
            "body shorter than declared",
            Bytes::from_static(&[1, 7, 0, 0, 0, 9, 0]),
            DecodeError::Truncated {
                field: "frame body",
                needed: 9,
                remaining: 1,
            },
        ),
        (
            "body longer than declared",
            Bytes::from_static(&[1, 7, 0, 0, 0, 0, 0]),
            DecodeError::TrailingBytes { count: 1 },
        ),
        (
            "no room for signature",
            frame(0x06, &[0; 10]),
            DecodeError::Truncated {
                field: "signature",
                needed: 64,
                remaining: 10,
            },
        ),
        (
            "kind 3",
            accounting_body(|f| f[4] = 3),
            DecodeError::InvalidValue {
                field: "kind",
                reason: "must be 1 (interim) or 2 (final)",
            },
        ),
        (
            "sequence 0",
            accounting_body(|f| f[21..29].fill(0)),
            DecodeError::InvalidValue {
                field: "sequence",
                reason: "sequence numbers start at 1",
            },
        ),
        (
            "unknown usage bits",
            accounting_body(|f| f[45] |= 0x80),
            DecodeError::InvalidValue {
                field: "usage present",
                reason: "unknown data field bits",
            },
        ),
        (
            "interval end before start",
            accounting_body(|f| f[78..86].fill(0)),
            DecodeError::InvalidValue {
                field: "usage interval",
                reason: "end before start",
            },
        ),
        (
            "17 custom counters",
            accounting_body(|f| f[86] = 17),
            DecodeError::BadCount {
                field: "custom counters",
                count: 17,
                min: 0,
                max: 16,
            },
        ),
        (
            "counter name upper case",
            accounting_body(|f| f[88] = b'G'),
            DecodeError::InvalidText { field: "counter name" },
        ),
        (
            "counter name too long",
            accounting_body(|f| f[87] = 33),
            DecodeError::FieldTooLong {
                field: "counter name",
                length: 33,
                max: 32,
            },
        ),
        (
            "trailing field byte",
            accounting_body(|f| f.push(0)),
            DecodeError::TrailingBytes { count: 1 },
        ),
        (
            "duplicate counter name",
            accounting_body(|f| {
                f[86] = 2;
                let counter = f[87..].to_vec();
                f.extend_from_slice(&counter);
            }),
            DecodeError::InvalidValue {
                field: "custom counters",
                reason: "duplicate counter name",
            },
        ),
        (
            "ack with no entries",
            frame(0x07, &[0, 0]),
            DecodeError::BadCount {
                field: "ack entries",
                count: 0,
                min: 1,
                max: ACK_ENTRIES_MAX,
            },
        ),
        (
            "ack with 513 entries",
            frame(0x07, &[2, 1]),
            DecodeError::BadCount {
                field: "ack entries",
                count: 513,
                min: 1,
                max: ACK_ENTRIES_MAX,
            },
        ),
        (
            "ack count beyond bytes",
            frame(0x07, &[0, 3, 0]),
            DecodeError::Truncated {
                field: "ack entries",
                needed: 75,
                remaining: 1,
            },
        ),
        (
            "error detail not utf-8",
            frame(0x0f, &[0, 1, 0, 2, 0xff, 0xfe]),
            DecodeError::InvalidText { field: "error detail" },
        ),
        (
            "error detail too long",
            frame(0x0f, &[0, 1, 1, 1]),
            DecodeError::FieldTooLong {
                field: "error detail",
                length: 257,
                max: 256,
            },
        ),
        (
            "record ack truncated",
            frame(0x09, &[0; 20]),
            DecodeError::Truncated {
                field: "digest",
                needed: 32,
                remaining: 4,
            },
        ),
    ];
    for (label, input, expected) in cases {
        assert_eq!(Message::decode(input), Err(expected), "{label}");
    }
}

#[test]
fn malformed_credentials_have_typed_errors() {
    let example = support::user_credential();
    let resign = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut fields = example.signed_bytes().to_vec();
        edit(&mut fields);
        let signature = support::am_key().sign(b"acct/1 user-credential\0", &fields);
        fields.extend_from_slice(&signature);
        Message::decode(frame(0x03, &fields))
    };
    // Fields: session 0..16, service 16..20, user id (len 20, 9 bytes)
    // 21..30, address (len 30, 17 bytes) 31..48, key 48..80, policy from 80:
    // from 80..88, until 88..96, start 96..98, end 98..100, max 100..104,
    // change 104, required 105, interval 106..110.
    assert_eq!(
        resign(&|f| f[88..96].fill(0)),
        Err(DecodeError::InvalidValue {
            field: "policy lifetime",
            reason: "valid_until_ms before valid_from_ms"
        })
    );
    assert_eq!(
        resign(&|f| f[96..98].copy_from_slice(&1440u16.to_be_bytes())),
        Err(DecodeError::InvalidValue {
            field: "policy time_of_day",
            reason: "minute of day must be below 1440"
        })
    );
    assert_eq!(
        resign(&|f| f[104] = 2),
        Err(DecodeError::InvalidValue {
            field: "policy address_change_allowed",
            reason: "boolean must be 0 or 1"
        })
    );
    assert_eq!(
        resign(&|f| f[105] = 0x20),
        Err(DecodeError::InvalidValue {
            field: "policy required_data",
            reason: "unknown data field bits"
        })
    );
    assert_eq!(
        resign(&|f| f[21] = b'/'),
        Err(DecodeError::InvalidText { field: "name" })
    );
    assert_eq!(
        resign(&|f| f[20] = 0),
        Err(DecodeError::FieldTooLong {
            field: "name",
            length: 0,
            max: 64
        })
    );
    // An empty certificate in a credential request.
    let request = support::service_credential_request();
    let mut fields = request.signed_bytes().to_vec();
    let certificate_length_at = fields.len() - 2 - support::certificate_bytes().len();
    fields.truncate(certificate_length_at);
    fields.extend_from_slice(&[0, 0]);
    fields.extend_from_slice(&[0; 64]);
    assert_eq!(
        Message::decode(frame(0x01, &fields)),
        Err(DecodeError::InvalidValue {
            field: "certificate",
            reason: "empty"
        })
    );
}

#[test]
fn stream_decoder_refuses_oversized_header_before_body_arrives() {
    let decoder = FrameDecoder::new(1024);
    let mut buffer = BytesMut::from(&[1u8, 6, 0, 0, 4, 1][..]);
    assert_eq!(
        decoder.next_frame(&mut buffer),
        Err(DecodeError::FrameTooLarge {
            message_type: 6,
            length: 1025,
            max: 1024
        })
    );
}

#[test]
fn macs_and_signatures_bind_their_keys() {
    let request = support::service_request();
    assert!(request.verify(&support::session_key()).is_ok());
    assert_eq!(
        request.verify(&SessionKey([0x45; 32])),
        Err(wire::SignatureError::MacMismatch)
    );
    let proof = support::service_proof();
    assert!(proof.verify(&support::session_key()).is_ok());
    let accounting = support::accounting(AccountingKind::INTERIM, 1);
    assert!(accounting.verify(&support::provider_key().public_key()).is_ok());
    assert_eq!(
        accounting.verify(&support::am_key().public_key()),
        Err(wire::SignatureError::Mismatch)
    );
    // A signature made for one message type does not verify as another: the
    // domain differs even when the bytes are the same.
    let credential = support::user_credential();
    let as_request = wire::ed25519::verify(
        &support::am_key().public_key(),
        b"acct/1 service-credential\0",
        credential.signed_bytes(),
        credential.signature(),
    );
    assert!(as_request.is_err());
}

#[test]
fn error_detail_is_cut_at_a_character_boundary() {
    let message = ErrorMessage::new(ErrorCode::INTERNAL, &"é".repeat(200));
    assert!(message.detail.len() <= 256);
    assert!(Message::decode(Message::Error(message).to_frame()).is_ok());
}

#[test]
fn ack_status_classes() {
    assert!(AckStatus::STORED.is_stored() && AckStatus::DUPLICATE.is_stored());
    assert!(AckStatus::BUSY.is_retryable() && AckStatus::OUT_OF_SPACE.is_retryable());
    assert!(!AckStatus::BAD_SIGNATURE.is_stored() && !AckStatus::BAD_SIGNATURE.is_retryable());
}

#[test]
fn encoders_refuse_what_decoders_refuse() {
    let mut accounting = support::accounting(AccountingKind::FINAL, 2).value().clone();
    accounting.usage.custom.push(accounting.usage.custom[0].clone());
    assert_eq!(
        Signed::sign(accounting.clone(), &support::provider_key()),
        Err(EncodeError(DecodeError::InvalidValue {
            field: "custom counters",
            reason: "duplicate counter name"
        }))
    );
    accounting.usage.custom = (0..17)
        .map(|index| CustomCounter {
            name: CounterName::new(format!("c{index}")).unwrap(),
            value: 1,
        })
        .collect();
    assert!(matches!(
        Signed::sign(accounting.clone(), &support::provider_key()),
        Err(EncodeError(DecodeError::BadCount { count: 17, .. }))
    ));
    accounting.usage.custom.clear();
    accounting.sequence = 0;
    assert!(Signed::sign(accounting, &support::provider_key()).is_err());
}

#[test]
fn large_acks_split_into_frames() {
    let entry = support::accounting_ack().entries[0];
    let ack = AccountingAck {
        entries: vec![entry; ACK_ENTRIES_MAX * 2 + 1],
    };
    let mut out = BytesMut::new();
    Message::AccountingAck(ack).encode(&mut out);
    let decoder = FrameDecoder::new(SMALL_FRAME_BODY_BYTES_MAX);
    let mut sizes = Vec::new();
    while let Some(frame) = decoder.next_frame(&mut out).unwrap() {
        let Message::AccountingAck(ack) = frame.decode().unwrap() else {
            panic!("not an ack")
        };
        sizes.push(ack.entries.len());
    }
    assert_eq!(sizes, vec![ACK_ENTRIES_MAX, ACK_ENTRIES_MAX, 1]);
    let mut out = BytesMut::new();
    Message::AccountingAck(AccountingAck { entries: Vec::new() }).encode(&mut out);
    assert!(out.is_empty());
}

/// A credential's body carries the session key in the clear (b3, c3): no
/// `Debug` of a signed or MACed message may print it, in any form.
#[test]
fn debug_output_never_prints_a_session_key() {
    let key_hex = hex::encode(support::SESSION_KEY_BYTES);
    let key_decimal = format!("{:?}", support::SESSION_KEY_BYTES);
    let key_escaped = "\\x44\\x44\\x44\\x44";
    let key_ascii = "DDDDDDDD";
    let printed = [
        format!("{:?}", support::service_credential()),
        format!("{:#?}", support::user_credential()),
        format!("{:?}", support::service_request()),
        format!("{:?}", support::service_proof()),
    ];
    for text in printed {
        for form in [key_hex.as_str(), key_decimal.as_str(), key_escaped, key_ascii] {
            assert!(!text.contains(form), "{form} in {text}");
        }
        assert!(text.contains("body_bytes"), "{text}");
    }
}
