//! The operator's admin messages, accepted only on connections whose client
//! certificate has the `am` role (the operator's own). Not part of the
//! patent's flow: tests and loadgen open sessions this way until users
//! request credentials themselves.

use bytes::{BufMut, BytesMut};

use crate::codec::Reader;
use crate::credential::Policy;
use crate::error::DecodeError;
use crate::frame::{MessageType, put_frame};
use crate::ids::ServiceId;
use crate::text::{Address, Name};

/// Ask the AM to mint an accounting session for `provider` as if a user had
/// requested it: the AM chooses the session id and key, stores the session
/// durably, and answers with the User Credential (208) it would push to the
/// provider, or an Error.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AdminOpenSession {
    /// The provider the session is issued to (its certificate name).
    pub provider: Name,
    /// The service.
    pub service_id: ServiceId,
    /// The user the session bills.
    pub user_id: Name,
    /// The user's address (c1).
    pub user_address: Address,
    /// The session's policies (c5).
    pub policy: Policy,
}

impl AdminOpenSession {
    /// Append as a frame.
    pub fn encode_frame(&self, out: &mut BytesMut) {
        let mut body = BytesMut::with_capacity(128);
        self.provider.encode(&mut body);
        body.put_u32(self.service_id.0);
        self.user_id.encode(&mut body);
        self.user_address.encode(&mut body);
        self.policy.encode(&mut body);
        put_frame(out, MessageType::ADMIN_OPEN_SESSION, &body);
    }

    /// Read the body.
    pub fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            provider: Name::decode(reader)?,
            service_id: ServiceId(reader.u32("service_id")?),
            user_id: Name::decode(reader)?,
            user_address: Address::decode(reader)?,
            policy: Policy::decode(reader)?,
        })
    }
}
