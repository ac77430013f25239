//! Interim and Final Accounting (214/220, e1–e7) and the Accounting Ack
//! (216/221).

use bytes::{BufMut, BytesMut};

use crate::codec::Reader;
use crate::credential::DataFields;
use crate::error::DecodeError;
use crate::frame::{MessageType, put_frame};
use crate::ids::{MessageId, ServiceId, SessionId};
use crate::limits::{ACK_ENTRIES_MAX, CREDENTIAL_DIGEST_BYTES, CUSTOM_COUNTERS_MAX};
use crate::signed::SignedFields;
use crate::text::CounterName;

/// e2: interim or final. Unknown values are refused on decode.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AccountingKind(pub u8);

impl AccountingKind {
    /// 214: more messages follow.
    pub const INTERIM: Self = Self(1);
    /// 220: the last message; closes the session.
    pub const FINAL: Self = Self(2);
}

/// A named custom counter (e5).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct CustomCounter {
    /// The counter's name.
    pub name: CounterName,
    /// Its value for the interval.
    pub value: u64,
}

/// e5: the accounting data. Every figure is for the interval this message
/// covers (a delta since the session's previous message), so the bill of a
/// session is the sum of its messages. Typed fields are optional; `present`
/// on the wire marks which ones follow.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct Usage {
    /// Units of the service's charge unit.
    pub units: Option<u64>,
    /// Bytes from user to provider.
    pub bytes_up: Option<u64>,
    /// Bytes from provider to user.
    pub bytes_down: Option<u64>,
    /// Service time, milliseconds.
    pub duration_ms: Option<u64>,
    /// The interval covered: (start, end) in Unix ms, start <= end.
    pub interval_ms: Option<(u64, u64)>,
    /// At most 16 named counters with distinct names.
    pub custom: Vec<CustomCounter>,
}

impl Usage {
    /// Which typed fields are present.
    pub fn present(&self) -> DataFields {
        let mut bits = 0u8;
        if self.units.is_some() {
            bits |= DataFields::UNITS.0;
        }
        if self.bytes_up.is_some() {
            bits |= DataFields::BYTES_UP.0;
        }
        if self.bytes_down.is_some() {
            bits |= DataFields::BYTES_DOWN.0;
        }
        if self.duration_ms.is_some() {
            bits |= DataFields::DURATION.0;
        }
        if self.interval_ms.is_some() {
            bits |= DataFields::INTERVAL.0;
        }
        DataFields(bits)
    }

    fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.present().0);
        for value in [self.units, self.bytes_up, self.bytes_down, self.duration_ms]
            .into_iter()
            .flatten()
        {
            out.put_u64(value);
        }
        if let Some((start, end)) = self.interval_ms {
            out.put_u64(start);
            out.put_u64(end);
        }
        out.put_u8(u8::try_from(self.custom.len()).unwrap_or(u8::MAX));
        for counter in &self.custom {
            counter.name.encode(out);
            out.put_u64(counter.value);
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let present = DataFields::decode(reader, "usage present")?;
        let mut optional = |bit: DataFields, field| -> Result<Option<u64>, DecodeError> {
            if present.contains(bit) {
                reader.u64(field).map(Some)
            } else {
                Ok(None)
            }
        };
        let units = optional(DataFields::UNITS, "usage units")?;
        let bytes_up = optional(DataFields::BYTES_UP, "usage bytes_up")?;
        let bytes_down = optional(DataFields::BYTES_DOWN, "usage bytes_down")?;
        let duration_ms = optional(DataFields::DURATION, "usage duration_ms")?;
        let interval_ms = if present.contains(DataFields::INTERVAL) {
            let start = reader.u64("usage interval start")?;
            let end = reader.u64("usage interval end")?;
            if end < start {
                return Err(DecodeError::InvalidValue {
                    field: "usage interval",
                    reason: "end before start",
                });
            }
            Some((start, end))
        } else {
            None
        };
        let count = usize::from(reader.u8("custom counter count")?);
        if count > CUSTOM_COUNTERS_MAX {
            return Err(DecodeError::BadCount {
                field: "custom counters",
                count,
                min: 0,
                max: CUSTOM_COUNTERS_MAX,
            });
        }
        // Each counter takes at least 10 bytes: check before allocating.
        if count * 10 > reader.remaining() {
            return Err(DecodeError::Truncated {
                field: "custom counters",
                needed: count * 10,
                remaining: reader.remaining(),
            });
        }
        let mut custom: Vec<CustomCounter> = Vec::with_capacity(count);
        for _ in 0..count {
            let name = CounterName::decode(reader)?;
            let value = reader.u64("custom counter value")?;
            if custom.iter().any(|existing| existing.name == name) {
                return Err(DecodeError::InvalidValue {
                    field: "custom counters",
                    reason: "duplicate counter name",
                });
            }
            custom.push(CustomCounter { name, value });
        }
        Ok(Self {
            units,
            bytes_up,
            bytes_down,
            duration_ms,
            interval_ms,
            custom,
        })
    }
}

/// 214/220: the provider's accounting for a session, signed by the provider
/// (e7) with the key of its certificate.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Accounting {
    /// e1: the service.
    pub service_id: ServiceId,
    /// e2: interim or final.
    pub kind: AccountingKind,
    /// e6: the accounting session.
    pub session_id: SessionId,
    /// e4: the message's sequence number in its session, from 1.
    pub sequence: u64,
    /// e3: digest of the User Credential (`credential_digest`).
    pub credential_digest: [u8; CREDENTIAL_DIGEST_BYTES],
    /// e5: the accounting data.
    pub usage: Usage,
}

impl Accounting {
    /// e4 with e6: the message's unique id.
    pub fn message_id(&self) -> MessageId {
        MessageId {
            session_id: self.session_id,
            sequence: self.sequence,
        }
    }
}

impl SignedFields for Accounting {
    const MESSAGE_TYPE: MessageType = MessageType::ACCOUNTING;
    const DOMAIN: &'static [u8] = b"acct/1 accounting\0";

    fn encode_fields(&self, out: &mut BytesMut) {
        out.put_u32(self.service_id.0);
        out.put_u8(self.kind.0);
        out.put_slice(&self.session_id.0);
        out.put_u64(self.sequence);
        out.put_slice(&self.credential_digest);
        self.usage.encode(out);
    }

    fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let service_id = ServiceId(reader.u32("service_id")?);
        let kind = AccountingKind(reader.u8("kind")?);
        if kind != AccountingKind::INTERIM && kind != AccountingKind::FINAL {
            return Err(DecodeError::InvalidValue {
                field: "kind",
                reason: "must be 1 (interim) or 2 (final)",
            });
        }
        let session_id = SessionId(reader.array("session_id")?);
        let sequence = reader.u64("sequence")?;
        if sequence == 0 {
            return Err(DecodeError::InvalidValue {
                field: "sequence",
                reason: "sequence numbers start at 1",
            });
        }
        Ok(Self {
            service_id,
            kind,
            session_id,
            sequence,
            credential_digest: reader.array("credential_digest")?,
            usage: Usage::decode(reader)?,
        })
    }
}

/// The AM's answer for one accounting message. A newtype so codes added
/// later stay representable by older peers.
///
/// Classes: `0x00..=0x0f` the message is stored (now or before);
/// `0x10..=0x1f` not stored, retry later with the same message;
/// `0x20..=0xff` refused for good, retrying the same bytes gets the same answer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AckStatus(pub u8);

impl AckStatus {
    /// Durably stored now.
    pub const STORED: Self = Self(0x00);
    /// Stored before (same id, same content): stored once, acked again.
    pub const DUPLICATE: Self = Self(0x01);
    /// The AM is overloaded; retry after a pause.
    pub const BUSY: Self = Self(0x10);
    /// The AM's disk is full; retry later.
    pub const OUT_OF_SPACE: Self = Self(0x11);
    /// The AM is shutting down; retry on the next connection.
    pub const SHUTTING_DOWN: Self = Self(0x12);
    /// The session lives on another partition (its id's first two bytes
    /// name it; the cluster map gives its address): nothing was stored
    /// here; send the same bytes there. In the retry class: a provider
    /// keeps the message until a partition stores it.
    pub const WRONG_PARTITION: Self = Self(0x13);
    /// The signature (e7) does not verify under the provider's key.
    pub const BAD_SIGNATURE: Self = Self(0x20);
    /// No such accounting session.
    pub const UNKNOWN_SESSION: Self = Self(0x21);
    /// The session was issued to another provider.
    pub const WRONG_PROVIDER: Self = Self(0x22);
    /// The session was closed by a Final Accounting.
    pub const SESSION_CLOSED: Self = Self(0x23);
    /// Same message id as a stored message but different content.
    pub const CONFLICTING_DUPLICATE: Self = Self(0x24);
    /// A field the session's policy requires is missing.
    pub const MISSING_ACCOUNTING_DATA: Self = Self(0x25);
    /// The session's lifetime is over.
    pub const SESSION_EXPIRED: Self = Self(0x26);
    /// The `requests` custom counters of the session's stored messages and
    /// this one add up to more than the policy's `requests_max` (a message
    /// without the counter adds 0; no check when `requests_max` is 0).
    pub const REQUESTS_EXCEEDED: Self = Self(0x27);
    /// The accounted interval ends too far in the future.
    pub const TIMESTAMP_IN_FUTURE: Self = Self(0x28);
    /// The accounted interval is older than the AM's lateness bound.
    pub const TIMESTAMP_TOO_OLD: Self = Self(0x29);
    /// e3 does not match the session's User Credential.
    pub const CREDENTIAL_MISMATCH: Self = Self(0x2a);
    /// e1 does not match the session's service.
    pub const SERVICE_MISMATCH: Self = Self(0x2b);
    /// Reserved; the AM never sends it. It keeps a dedup marker for every
    /// stored sequence of a session until the session is pruned, and looks
    /// up the marker of a sequence below its in-memory window, so it can
    /// always tell a retransmission from a new message.
    pub const SEQUENCE_OUT_OF_WINDOW: Self = Self(0x2c);

    /// Whether the message is stored (now or before).
    pub fn is_stored(self) -> bool {
        self.0 <= 0x0f
    }

    /// Whether the provider should retry the same message later.
    pub fn is_retryable(self) -> bool {
        (0x10..=0x1f).contains(&self.0)
    }
}

/// One entry of an Accounting Ack.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AckEntry {
    /// The message answered (e6 + e4).
    pub message_id: MessageId,
    /// What became of it.
    pub status: AckStatus,
}

/// 216/221: the AM's answers for 1..=512 accounting messages.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct AccountingAck {
    /// The answers, in any order.
    pub entries: Vec<AckEntry>,
}

impl AccountingAck {
    /// Append this ack as frames of at most `ACK_ENTRIES_MAX` entries each
    /// (none if there are no entries).
    pub fn encode_frames(&self, out: &mut BytesMut) {
        for chunk in self.entries.chunks(ACK_ENTRIES_MAX) {
            let mut body = BytesMut::with_capacity(2 + chunk.len() * crate::limits::ACK_ENTRY_BYTES);
            // A chunk holds at most ACK_ENTRIES_MAX (< u16::MAX) entries.
            body.put_u16(u16::try_from(chunk.len()).unwrap_or(u16::MAX));
            for entry in chunk {
                body.put_slice(&entry.message_id.session_id.0);
                body.put_u64(entry.message_id.sequence);
                body.put_u8(entry.status.0);
            }
            put_frame(out, MessageType::ACCOUNTING_ACK, &body);
        }
    }

    /// Read the body.
    pub fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let count = usize::from(reader.u16("ack entry count")?);
        if count == 0 || count > ACK_ENTRIES_MAX {
            return Err(DecodeError::BadCount {
                field: "ack entries",
                count,
                min: 1,
                max: ACK_ENTRIES_MAX,
            });
        }
        let needed = count * crate::limits::ACK_ENTRY_BYTES;
        if needed > reader.remaining() {
            return Err(DecodeError::Truncated {
                field: "ack entries",
                needed,
                remaining: reader.remaining(),
            });
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let session_id = SessionId(reader.array("ack session_id")?);
            let sequence = reader.u64("ack sequence")?;
            let status = AckStatus(reader.u8("ack status")?);
            entries.push(AckEntry {
                message_id: MessageId { session_id, sequence },
                status,
            });
        }
        Ok(Self { entries })
    }
}
