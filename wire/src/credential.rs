//! Credential issuance: the Service Credential Request (202, a1–a5), the
//! Service Credential (206, b1–b7), the User Credential (208, c1–c5) and the
//! policies they carry.

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::codec::{Reader, put_bytes_u16};
use crate::error::DecodeError;
use crate::frame::MessageType;
use crate::ids::{Nonce, RequestId, ServiceId, SessionId, SessionKey};
use crate::limits::{CERTIFICATE_BYTES_MAX, CREDENTIAL_DIGEST_BYTES, MINUTES_PER_DAY};
use crate::signed::{Signed, SignedFields};
use crate::text::{Address, Name};

/// Accounting data a policy can require, and that an accounting message
/// marks as present. Unknown bits are refused on decode.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct DataFields(pub u8);

impl DataFields {
    /// No field.
    pub const NONE: Self = Self(0);
    /// Units of the service's charge unit.
    pub const UNITS: Self = Self(1 << 0);
    /// Bytes from user to provider.
    pub const BYTES_UP: Self = Self(1 << 1);
    /// Bytes from provider to user.
    pub const BYTES_DOWN: Self = Self(1 << 2);
    /// Service time in milliseconds.
    pub const DURATION: Self = Self(1 << 3);
    /// The interval (start and end, Unix ms) the message accounts for.
    pub const INTERVAL: Self = Self(1 << 4);
    /// Every defined bit.
    pub const ALL: Self = Self(0b1_1111);

    /// Whether every bit of `other` is set in `self`.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union.
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub(crate) fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        let bits = reader.u8(field)?;
        if bits & !Self::ALL.0 != 0 {
            return Err(DecodeError::InvalidValue {
                field,
                reason: "unknown data field bits",
            });
        }
        Ok(Self(bits))
    }
}

/// The time-of-day window (UTC minutes since midnight) in which the service
/// may be used. `start == end` means any time; `start > end` wraps midnight.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct TimeOfDay {
    /// First minute allowed, 0..1440.
    pub start_minute: u16,
    /// First minute no longer allowed, 0..1440.
    pub end_minute: u16,
}

impl TimeOfDay {
    /// No restriction.
    pub const ANY: Self = Self {
        start_minute: 0,
        end_minute: 0,
    };

    /// Whether `minute_of_day` (0..1440, UTC) is inside the window.
    pub fn allows(self, minute_of_day: u16) -> bool {
        let (start, end) = (self.start_minute, self.end_minute);
        if start == end {
            true
        } else if start < end {
            (start..end).contains(&minute_of_day)
        } else {
            minute_of_day >= start || minute_of_day < end
        }
    }
}

/// Policies (c5; b6 and b7 in the Service Credential).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Policy {
    /// Start of the credential's lifetime, Unix ms (b6).
    pub valid_from_ms: u64,
    /// End of the credential's lifetime, Unix ms, exclusive (b6).
    pub valid_until_ms: u64,
    /// When in the day the service may be used.
    pub time_of_day: TimeOfDay,
    /// Service Requests allowed in the session; 0 means no limit.
    pub requests_max: u32,
    /// Whether the user may use the session from another address than c1.
    pub address_change_allowed: bool,
    /// Accounting policy: fields every accounting message must carry.
    pub required_data: DataFields,
    /// Accounting policy: longest gap between accounting messages, seconds;
    /// 0 means no limit.
    pub interim_interval_max_s: u32,
}

impl Policy {
    /// Encoded size in bytes.
    pub const BYTES: usize = 8 + 8 + 2 + 2 + 4 + 1 + 1 + 4;

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.valid_from_ms);
        out.put_u64(self.valid_until_ms);
        out.put_u16(self.time_of_day.start_minute);
        out.put_u16(self.time_of_day.end_minute);
        out.put_u32(self.requests_max);
        out.put_u8(u8::from(self.address_change_allowed));
        out.put_u8(self.required_data.0);
        out.put_u32(self.interim_interval_max_s);
    }

    pub(crate) fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let valid_from_ms = reader.u64("policy valid_from_ms")?;
        let valid_until_ms = reader.u64("policy valid_until_ms")?;
        if valid_until_ms < valid_from_ms {
            return Err(DecodeError::InvalidValue {
                field: "policy lifetime",
                reason: "valid_until_ms before valid_from_ms",
            });
        }
        let start_minute = reader.u16("policy time_of_day start")?;
        let end_minute = reader.u16("policy time_of_day end")?;
        if start_minute >= MINUTES_PER_DAY || end_minute >= MINUTES_PER_DAY {
            return Err(DecodeError::InvalidValue {
                field: "policy time_of_day",
                reason: "minute of day must be below 1440",
            });
        }
        Ok(Self {
            valid_from_ms,
            valid_until_ms,
            time_of_day: TimeOfDay {
                start_minute,
                end_minute,
            },
            requests_max: reader.u32("policy requests_max")?,
            address_change_allowed: reader.bool("policy address_change_allowed")?,
            required_data: DataFields::decode(reader, "policy required_data")?,
            interim_interval_max_s: reader.u32("policy interim_interval_max_s")?,
        })
    }
}

/// 202: a User asks the AM for a credential for one service. Signed by the
/// user's certified key (a4); the certificate (a5) travels inside.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ServiceCredentialRequest {
    /// a1: the requested service.
    pub service_id: ServiceId,
    /// a2: unique request id, echoed in b1.
    pub request_id: RequestId,
    /// a3: random nonce.
    pub nonce: Nonce,
    /// When the user made the request, Unix ms (bounds the AM's replay cache).
    pub timestamp_ms: u64,
    /// The address from which the user will use the service (becomes c1).
    pub user_address: Address,
    /// a5: the user's X.509 certificate, DER, 1..=4096 bytes.
    pub certificate: Bytes,
}

impl SignedFields for ServiceCredentialRequest {
    const MESSAGE_TYPE: MessageType = MessageType::SERVICE_CREDENTIAL_REQUEST;
    const DOMAIN: &'static [u8] = b"acct/1 service-credential-request\0";

    fn encode_fields(&self, out: &mut BytesMut) {
        out.put_u32(self.service_id.0);
        out.put_slice(&self.request_id.0);
        out.put_slice(&self.nonce.0);
        out.put_u64(self.timestamp_ms);
        self.user_address.encode(out);
        put_bytes_u16(out, &self.certificate);
    }

    fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let service_id = ServiceId(reader.u32("service_id")?);
        let request_id = RequestId(reader.array("request_id")?);
        let nonce = Nonce(reader.array("nonce")?);
        let timestamp_ms = reader.u64("timestamp_ms")?;
        let user_address = Address::decode(reader)?;
        let certificate = reader.bytes_u16(CERTIFICATE_BYTES_MAX, "certificate")?;
        if certificate.is_empty() {
            return Err(DecodeError::InvalidValue {
                field: "certificate",
                reason: "empty",
            });
        }
        Ok(Self {
            service_id,
            request_id,
            nonce,
            timestamp_ms,
            user_address,
            certificate,
        })
    }
}

/// 206: the AM's answer to the User. Signed by the AM (b5).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ServiceCredential {
    /// b1: the request id from a2.
    pub request_id: RequestId,
    /// b4: the accounting session id.
    pub session_id: SessionId,
    /// The service the credential is for.
    pub service_id: ServiceId,
    /// b2: where the provider serves.
    pub provider_address: Address,
    /// b3: the session key shared with the provider.
    pub session_key: SessionKey,
    /// b6 (lifetime) and b7 (conditions).
    pub policy: Policy,
}

impl SignedFields for ServiceCredential {
    const MESSAGE_TYPE: MessageType = MessageType::SERVICE_CREDENTIAL;
    const DOMAIN: &'static [u8] = b"acct/1 service-credential\0";

    fn encode_fields(&self, out: &mut BytesMut) {
        out.put_slice(&self.request_id.0);
        out.put_slice(&self.session_id.0);
        out.put_u32(self.service_id.0);
        self.provider_address.encode(out);
        out.put_slice(&self.session_key.0);
        self.policy.encode(out);
    }

    fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            request_id: RequestId(reader.array("request_id")?),
            session_id: SessionId(reader.array("session_id")?),
            service_id: ServiceId(reader.u32("service_id")?),
            provider_address: Address::decode(reader)?,
            session_key: SessionKey(reader.array("session_key")?),
            policy: Policy::decode(reader)?,
        })
    }
}

/// 208: the AM tells the provider about the user's session. Signed by the AM (c4).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct UserCredential {
    /// c2: the accounting session id.
    pub session_id: SessionId,
    /// The service the session is for.
    pub service_id: ServiceId,
    /// The user's name from its certificate.
    pub user_id: Name,
    /// c1: the user's address.
    pub user_address: Address,
    /// c3: the session key shared with the user.
    pub session_key: SessionKey,
    /// c5: the policies.
    pub policy: Policy,
}

impl SignedFields for UserCredential {
    const MESSAGE_TYPE: MessageType = MessageType::USER_CREDENTIAL;
    const DOMAIN: &'static [u8] = b"acct/1 user-credential\0";

    fn encode_fields(&self, out: &mut BytesMut) {
        out.put_slice(&self.session_id.0);
        out.put_u32(self.service_id.0);
        self.user_id.encode(out);
        self.user_address.encode(out);
        out.put_slice(&self.session_key.0);
        self.policy.encode(out);
    }

    fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            session_id: SessionId(reader.array("session_id")?),
            service_id: ServiceId(reader.u32("service_id")?),
            user_id: Name::decode(reader)?,
            user_address: Address::decode(reader)?,
            session_key: SessionKey(reader.array("session_key")?),
            policy: Policy::decode(reader)?,
        })
    }
}

/// e3: the verifiable reference to a User Credential carried in accounting
/// messages: the first 16 bytes of SHA-256 over the credential's whole body
/// (fields and the AM's signature).
pub fn credential_digest(credential: &Signed<UserCredential>) -> [u8; CREDENTIAL_DIGEST_BYTES] {
    let digest = Sha256::digest(credential.body());
    let mut out = [0u8; CREDENTIAL_DIGEST_BYTES];
    out.copy_from_slice(&digest[..CREDENTIAL_DIGEST_BYTES]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_of_day_window() {
        assert!(TimeOfDay::ANY.allows(0));
        assert!(TimeOfDay::ANY.allows(1439));
        let office = TimeOfDay {
            start_minute: 9 * 60,
            end_minute: 17 * 60,
        };
        assert!(office.allows(9 * 60));
        assert!(!office.allows(17 * 60));
        assert!(!office.allows(3));
        let night = TimeOfDay {
            start_minute: 22 * 60,
            end_minute: 6 * 60,
        };
        assert!(night.allows(23 * 60));
        assert!(night.allows(60));
        assert!(!night.allows(12 * 60));
    }

    #[test]
    fn data_fields_contains() {
        let have = DataFields::UNITS.union(DataFields::INTERVAL);
        assert!(have.contains(DataFields::UNITS));
        assert!(!have.contains(DataFields::UNITS.union(DataFields::BYTES_UP)));
        assert!(have.contains(DataFields::NONE));
    }
}
