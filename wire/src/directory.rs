//! The AM's service list (the patent's lists 27 and 27'': what the AM
//! accounts for, step 201) and the provider's receipt for a pushed User
//! Credential (so the AM answers the user only once the provider holds it).

use bytes::{BufMut, BytesMut};

use crate::codec::Reader;
use crate::credential::Policy;
use crate::error::DecodeError;
use crate::frame::{MessageType, put_frame};
use crate::ids::{ServiceId, SessionId};
use crate::limits::SERVICE_LIST_ENTRIES_PER_FRAME_MAX;
use crate::text::{Address, Name};

/// User → AM: which services do you account for? (Empty body.)
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ServiceListRequest;

impl ServiceListRequest {
    /// Append as a frame.
    pub fn encode_frame(&self, out: &mut BytesMut) {
        put_frame(out, MessageType::SERVICE_LIST_REQUEST, &[]);
    }

    /// Read the body (empty).
    pub fn decode_fields(_reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self)
    }
}

/// One service the AM accounts for.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ServiceEntry {
    /// The service id (a1 in a request for it).
    pub service_id: ServiceId,
    /// Its name, for people.
    pub name: Name,
    /// The provider that offers it (its certificate name).
    pub provider: Name,
    /// Where users reach the provider (b4 in the Service Credential).
    pub provider_address: Address,
    /// The unit the service charges in (what `units` in accounting counts).
    pub unit: Name,
    /// The policies a session of this service gets. The lifetime is
    /// relative: a session issued at time t is valid from t to
    /// t + (`valid_until_ms` − `valid_from_ms`).
    pub policy: Policy,
}

impl ServiceEntry {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.service_id.0);
        self.name.encode(out);
        self.provider.encode(out);
        self.provider_address.encode(out);
        self.unit.encode(out);
        self.policy.encode(out);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            service_id: ServiceId(reader.u32("service_id")?),
            name: Name::decode(reader)?,
            provider: Name::decode(reader)?,
            provider_address: Address::decode(reader)?,
            unit: Name::decode(reader)?,
            policy: Policy::decode(reader)?,
        })
    }

    /// Encoded size at most: id, three names, an address, the policy.
    pub const BYTES_MAX: usize =
        4 + 3 * (1 + crate::limits::NAME_BYTES_MAX) + 1 + crate::limits::ADDRESS_BYTES_MAX + Policy::BYTES;
}

/// AM → User: one part of the service list; the last part has `done`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ServiceList {
    /// Whether this is the last part.
    pub done: bool,
    /// At most [`SERVICE_LIST_ENTRIES_PER_FRAME_MAX`] entries.
    pub entries: Vec<ServiceEntry>,
}

impl ServiceList {
    /// Append as a frame. Entries beyond the per-frame maximum are not
    /// written: split the list into parts first.
    pub fn encode_frame(&self, out: &mut BytesMut) {
        let entries = &self.entries[..self.entries.len().min(SERVICE_LIST_ENTRIES_PER_FRAME_MAX)];
        let mut body = BytesMut::with_capacity(3 + entries.len() * 200);
        body.put_u8(u8::from(self.done));
        // At most SERVICE_LIST_ENTRIES_PER_FRAME_MAX (< u16::MAX) entries.
        body.put_u16(u16::try_from(entries.len()).unwrap_or(u16::MAX));
        for entry in entries {
            entry.encode(&mut body);
        }
        put_frame(out, MessageType::SERVICE_LIST, &body);
    }

    /// Read the body.
    pub fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let done = reader.bool("done")?;
        let count = usize::from(reader.u16("service count")?);
        if count > SERVICE_LIST_ENTRIES_PER_FRAME_MAX {
            return Err(DecodeError::BadCount {
                field: "services",
                count,
                min: 0,
                max: SERVICE_LIST_ENTRIES_PER_FRAME_MAX,
            });
        }
        // Each entry takes at least 4 + 4 × 2 + 30 bytes: check before allocating.
        let least = count * (4 + 8 + Policy::BYTES);
        if least > reader.remaining() {
            return Err(DecodeError::Truncated {
                field: "services",
                needed: least,
                remaining: reader.remaining(),
            });
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(ServiceEntry::decode(reader)?);
        }
        Ok(Self { done, entries })
    }
}

/// What a provider did with a pushed User Credential. A newtype so unknown
/// codes stay representable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ReceiptStatus(pub u8);

impl ReceiptStatus {
    /// The provider holds the credential and will serve the session.
    pub const ACCEPTED: Self = Self(0x00);
    /// The provider cannot take sessions now.
    pub const BUSY: Self = Self(0x10);
    /// The credential's signature (c6) does not verify with the AM's key.
    pub const BAD_SIGNATURE: Self = Self(0x20);
}

/// SP → AM: the answer to a pushed User Credential (208), on its stream.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct UserCredentialReceipt {
    /// The session of the credential answered.
    pub session_id: SessionId,
    /// What the provider did with it.
    pub status: ReceiptStatus,
}

impl UserCredentialReceipt {
    /// Append as a frame.
    pub fn encode_frame(&self, out: &mut BytesMut) {
        let mut body = [0u8; 17];
        body[..16].copy_from_slice(&self.session_id.0);
        body[16] = self.status.0;
        put_frame(out, MessageType::USER_CREDENTIAL_RECEIPT, &body);
    }

    /// Read the body.
    pub fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            session_id: SessionId(reader.array("session_id")?),
            status: ReceiptStatus(reader.u8("receipt status")?),
        })
    }
}
