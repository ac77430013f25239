//! The operator's admin messages, accepted only on connections whose client
//! certificate has the `am` role (the operator's own). Not part of the
//! patent's flow: tests and loadgen open sessions this way until users
//! request credentials themselves.

use bytes::{BufMut, BytesMut};

use crate::codec::Reader;
use crate::credential::Policy;
use crate::error::DecodeError;
use crate::frame::{MessageType, put_frame};
use crate::ids::{ServiceId, SessionId};
use crate::limits::AUDIT_RUNS_PER_FRAME_MAX;
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

/// Ask the AM which accounting messages its hot store holds (admin role
/// only): it answers with [`AdminAuditReport`] frames, the last one with
/// `done` set. Used by `loadgen --audit` to count lost and doubled messages.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct AdminAuditRequest;

impl AdminAuditRequest {
    /// Append as a frame (an empty body).
    pub fn encode_frame(&self, out: &mut BytesMut) {
        put_frame(out, MessageType::ADMIN_AUDIT_REQUEST, &[]);
    }

    /// Read the body (empty).
    pub fn decode_fields(_reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self)
    }
}

/// Consecutive sequences `first..=last` of one session, each stored
/// `copies` times in the AM's hot store (`copies` > 1 means doubled); or,
/// with `exported`, messages whose records left the hot store for the
/// Accounting Storage and whose dedup markers the AM still holds (stored
/// once, as far as the AM can tell; the cold files say the rest).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AuditRun {
    /// The accounting session.
    pub session_id: SessionId,
    /// First sequence of the run.
    pub first: u64,
    /// Last sequence of the run (>= `first`).
    pub last: u64,
    /// How many records each sequence of the run has (1 when `exported`).
    pub copies: u32,
    /// The records were exported: only their dedup markers are hot.
    pub exported: bool,
}

impl AuditRun {
    /// Add `sequence` of `session_id`, held `copies` times in the hot store,
    /// to `runs` built in (session, sequence) order: it extends the last run
    /// when it continues it, else starts a new one.
    pub fn append(runs: &mut Vec<Self>, session_id: SessionId, sequence: u64, copies: u32) {
        Self::append_as(runs, session_id, sequence, copies, false);
    }

    /// As [`Self::append`], for a message whose record was exported.
    pub fn append_exported(runs: &mut Vec<Self>, session_id: SessionId, sequence: u64) {
        Self::append_as(runs, session_id, sequence, 1, true);
    }

    fn append_as(runs: &mut Vec<Self>, session_id: SessionId, sequence: u64, copies: u32, exported: bool) {
        match runs.last_mut() {
            Some(run)
                if run.session_id == session_id
                    && run.last.checked_add(1) == Some(sequence)
                    && run.copies == copies
                    && run.exported == exported =>
            {
                run.last = sequence;
            }
            _ => runs.push(Self {
                session_id,
                first: sequence,
                last: sequence,
                copies,
                exported,
            }),
        }
    }
}

/// Bytes of one [`AuditRun`] on the wire.
pub const AUDIT_RUN_BYTES: usize = 16 + 8 + 8 + 4 + 1;

/// One part of the AM's answer to [`AdminAuditRequest`]. A session's runs
/// may be spread over several parts; the last part has `done` set and the
/// number of records read.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct AdminAuditReport {
    /// Whether this is the last part.
    pub done: bool,
    /// Records read from the hot store (in the last part; 0 before).
    pub records: u64,
    /// Runs, at most [`AUDIT_RUNS_PER_FRAME_MAX`].
    pub runs: Vec<AuditRun>,
}

impl AdminAuditReport {
    /// Append as a frame; `runs` must hold at most [`AUDIT_RUNS_PER_FRAME_MAX`].
    pub fn encode_frame(&self, out: &mut BytesMut) {
        let runs = &self.runs[..self.runs.len().min(AUDIT_RUNS_PER_FRAME_MAX)];
        let mut body = BytesMut::with_capacity(1 + 8 + 2 + runs.len() * AUDIT_RUN_BYTES);
        body.put_u8(u8::from(self.done));
        body.put_u64(self.records);
        // At most AUDIT_RUNS_PER_FRAME_MAX, checked at compile time to fit a u16.
        body.put_u16(runs.len() as u16);
        for run in runs {
            body.put_slice(&run.session_id.0);
            body.put_u64(run.first);
            body.put_u64(run.last);
            body.put_u32(run.copies);
            body.put_u8(u8::from(run.exported));
        }
        put_frame(out, MessageType::ADMIN_AUDIT_REPORT, &body);
    }

    /// Read the body.
    pub fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let done = reader.bool("done")?;
        let records = reader.u64("records")?;
        let count = usize::from(reader.u16("run count")?);
        if count > AUDIT_RUNS_PER_FRAME_MAX {
            return Err(DecodeError::InvalidValue {
                field: "run count",
                reason: "more runs than a frame may carry",
            });
        }
        let mut runs = Vec::with_capacity(count);
        for _ in 0..count {
            let session_id = SessionId(reader.array("session_id")?);
            let first = reader.u64("first")?;
            let last = reader.u64("last")?;
            let copies = reader.u32("copies")?;
            let exported = reader.bool("exported")?;
            if last < first || copies == 0 {
                return Err(DecodeError::InvalidValue {
                    field: "audit run",
                    reason: "last is before first, or no copies",
                });
            }
            runs.push(AuditRun {
                session_id,
                first,
                last,
                copies,
                exported,
            });
        }
        Ok(Self { done, records, runs })
    }
}
