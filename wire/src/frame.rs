//! Framing: `version(1) | type(1) | body length(4, big-endian) | body`.
//!
//! [`Message::decode`] decodes one complete frame. [`FrameDecoder`] cuts frames
//! out of a stream buffer, checking the declared length against the type's
//! maximum and the receiver's limit *before* waiting for (or buffering) the body.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::accounting::{Accounting, AccountingAck};
use crate::admin::{AdminAuditReport, AdminAuditRequest, AdminOpenSession};
use crate::cluster::Redirect;
use crate::codec::Reader;
use crate::credential::{ServiceCredential, ServiceCredentialRequest, UserCredential};
use crate::directory::{ServiceList, ServiceListRequest, UserCredentialReceipt};
use crate::error::DecodeError;
use crate::error_message::ErrorMessage;
use crate::limits::{FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES, PROTOCOL_VERSION, SMALL_FRAME_BODY_BYTES_MAX};
use crate::receipt::{ReceiptRequest, SessionReceipt};
use crate::record::{RecordAccounting, RecordAck};
use crate::service::{ServiceProof, ServiceRequest};
use crate::signed::{Maced, Signed};

/// A frame's message type. A newtype, so unknown codes stay representable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MessageType(pub u8);

impl MessageType {
    /// 202: User → AM.
    pub const SERVICE_CREDENTIAL_REQUEST: Self = Self(0x01);
    /// 206: AM → User.
    pub const SERVICE_CREDENTIAL: Self = Self(0x02);
    /// 208: AM → SP.
    pub const USER_CREDENTIAL: Self = Self(0x03);
    /// 210: User → SP.
    pub const SERVICE_REQUEST: Self = Self(0x04);
    /// 211: SP → User, proof that the SP holds the same session key.
    pub const SERVICE_PROOF: Self = Self(0x05);
    /// 214/220: SP → AM, Interim or Final Accounting.
    pub const ACCOUNTING: Self = Self(0x06);
    /// 216/221: AM → SP.
    pub const ACCOUNTING_ACK: Self = Self(0x07);
    /// 222: AM → AS.
    pub const RECORD_ACCOUNTING: Self = Self(0x08);
    /// 224: AS → AM.
    pub const RECORD_ACK: Self = Self(0x09);
    /// Operator → AM: open a session without a user's request (admin role only).
    pub const ADMIN_OPEN_SESSION: Self = Self(0x0a);
    /// Operator → AM: which messages the hot store holds (admin role only).
    pub const ADMIN_AUDIT_REQUEST: Self = Self(0x0b);
    /// AM → operator: one part of the answer to an audit request.
    pub const ADMIN_AUDIT_REPORT: Self = Self(0x0c);
    /// User → AM: ask for the service list (201).
    pub const SERVICE_LIST_REQUEST: Self = Self(0x0d);
    /// AM → User: one part of the service list.
    pub const SERVICE_LIST: Self = Self(0x0e);
    /// Any direction: a typed error.
    pub const ERROR: Self = Self(0x0f);
    /// SP → AM: the provider holds a pushed User Credential (or refuses it).
    pub const USER_CREDENTIAL_RECEIPT: Self = Self(0x10);
    /// AM → client: the request belongs to another partition
    /// ([`crate::cluster::Redirect`]).
    pub const REDIRECT: Self = Self(0x11);
    /// AM → SP or User: what the AM holds for a session
    /// ([`crate::receipt::SessionReceipt`]).
    pub const SESSION_RECEIPT: Self = Self(0x12);
    /// User or SP → AM: a session's receipt, please
    /// ([`crate::receipt::ReceiptRequest`]).
    pub const RECEIPT_REQUEST: Self = Self(0x13);

    /// The largest body this type may carry.
    pub fn body_bytes_max(self) -> Option<usize> {
        match self {
            Self::RECORD_ACCOUNTING => Some(FRAME_BODY_BYTES_MAX),
            Self::SERVICE_CREDENTIAL_REQUEST
            | Self::SERVICE_CREDENTIAL
            | Self::USER_CREDENTIAL
            | Self::SERVICE_REQUEST
            | Self::SERVICE_PROOF
            | Self::ACCOUNTING
            | Self::ACCOUNTING_ACK
            | Self::RECORD_ACK
            | Self::ADMIN_OPEN_SESSION
            | Self::ADMIN_AUDIT_REQUEST
            | Self::ADMIN_AUDIT_REPORT
            | Self::SERVICE_LIST_REQUEST
            | Self::SERVICE_LIST
            | Self::USER_CREDENTIAL_RECEIPT
            | Self::REDIRECT
            | Self::SESSION_RECEIPT
            | Self::RECEIPT_REQUEST
            | Self::ERROR => Some(SMALL_FRAME_BODY_BYTES_MAX),
            _ => None,
        }
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FrameHeader {
    /// The message type.
    pub message_type: MessageType,
    /// The declared body length, already checked against the limits.
    pub body_bytes: usize,
}

impl FrameHeader {
    /// Parse and check a header. `body_bytes_max` is the receiver's own limit
    /// (for example an ingest stream allows only small frames).
    pub fn parse(header: &[u8; FRAME_HEADER_BYTES], body_bytes_max: usize) -> Result<Self, DecodeError> {
        let [version, type_code, l0, l1, l2, l3] = *header;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let message_type = MessageType(type_code);
        let type_max = message_type
            .body_bytes_max()
            .ok_or(DecodeError::UnknownMessageType(type_code))?;
        let max = type_max.min(body_bytes_max);
        let declared = u32::from_be_bytes([l0, l1, l2, l3]);
        let body_bytes = usize::try_from(declared).unwrap_or(usize::MAX);
        if body_bytes > max {
            return Err(DecodeError::FrameTooLarge {
                message_type: type_code,
                length: body_bytes,
                max,
            });
        }
        Ok(Self {
            message_type,
            body_bytes,
        })
    }
}

/// Append a frame with `body` to `out`.
pub fn put_frame(out: &mut BytesMut, message_type: MessageType, body: &[u8]) {
    debug_assert!(body.len() <= message_type.body_bytes_max().unwrap_or(0));
    out.reserve(FRAME_HEADER_BYTES + body.len());
    out.put_u8(PROTOCOL_VERSION);
    out.put_u8(message_type.0);
    out.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
    out.put_slice(body);
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// 202, a1–a5.
    ServiceCredentialRequest(Signed<ServiceCredentialRequest>),
    /// 206, b1–b7.
    ServiceCredential(Signed<ServiceCredential>),
    /// 208, c1–c5.
    UserCredential(Signed<UserCredential>),
    /// 210, d1–d3.
    ServiceRequest(Maced<ServiceRequest>),
    /// 211, the SP's proof of the session key.
    ServiceProof(Maced<ServiceProof>),
    /// 214/220, e1–e7.
    Accounting(Signed<Accounting>),
    /// 216/221.
    AccountingAck(AccountingAck),
    /// 222.
    RecordAccounting(Signed<RecordAccounting>),
    /// 224.
    RecordAck(RecordAck),
    /// User → AM: the service list, please (201).
    ServiceListRequest(ServiceListRequest),
    /// AM → User: a part of the service list.
    ServiceList(ServiceList),
    /// SP → AM: receipt for a pushed User Credential.
    UserCredentialReceipt(UserCredentialReceipt),
    /// Operator → AM: open a session (admin role only).
    AdminOpenSession(AdminOpenSession),
    /// Operator → AM: audit the hot store (admin role only).
    AdminAuditRequest(AdminAuditRequest),
    /// AM → operator: part of an audit answer.
    AdminAuditReport(AdminAuditReport),
    /// AM → client: ask another partition.
    Redirect(Redirect),
    /// AM → SP or User: what the AM holds for a session.
    SessionReceipt(Signed<SessionReceipt>),
    /// User or SP → AM: a session's receipt, please.
    ReceiptRequest(Maced<ReceiptRequest>),
    /// A typed error.
    Error(ErrorMessage),
}

impl Message {
    /// Decode exactly one frame; trailing bytes are an error.
    pub fn decode(frame: Bytes) -> Result<Self, DecodeError> {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        let present = frame.get(..FRAME_HEADER_BYTES).ok_or(DecodeError::Truncated {
            field: "frame header",
            needed: FRAME_HEADER_BYTES,
            remaining: frame.len(),
        })?;
        header.copy_from_slice(present);
        let parsed = FrameHeader::parse(&header, FRAME_BODY_BYTES_MAX)?;
        let body_available = frame.len() - FRAME_HEADER_BYTES;
        if body_available < parsed.body_bytes {
            return Err(DecodeError::Truncated {
                field: "frame body",
                needed: parsed.body_bytes,
                remaining: body_available,
            });
        }
        if body_available > parsed.body_bytes {
            return Err(DecodeError::TrailingBytes {
                count: body_available - parsed.body_bytes,
            });
        }
        Self::decode_body(parsed.message_type, frame.slice(FRAME_HEADER_BYTES..))
    }

    /// Decode a body whose header was already parsed.
    pub fn decode_body(message_type: MessageType, body: Bytes) -> Result<Self, DecodeError> {
        Ok(match message_type {
            MessageType::SERVICE_CREDENTIAL_REQUEST => Self::ServiceCredentialRequest(Signed::decode_body(body)?),
            MessageType::SERVICE_CREDENTIAL => Self::ServiceCredential(Signed::decode_body(body)?),
            MessageType::USER_CREDENTIAL => Self::UserCredential(Signed::decode_body(body)?),
            MessageType::SERVICE_REQUEST => Self::ServiceRequest(Maced::decode_body(body)?),
            MessageType::SERVICE_PROOF => Self::ServiceProof(Maced::decode_body(body)?),
            MessageType::ACCOUNTING => Self::Accounting(Signed::decode_body(body)?),
            MessageType::ACCOUNTING_ACK => Self::AccountingAck(decode_plain(&body, AccountingAck::decode_fields)?),
            MessageType::RECORD_ACCOUNTING => Self::RecordAccounting(Signed::decode_body(body)?),
            MessageType::RECORD_ACK => Self::RecordAck(decode_plain(&body, RecordAck::decode_fields)?),
            MessageType::ADMIN_OPEN_SESSION => {
                Self::AdminOpenSession(decode_plain(&body, AdminOpenSession::decode_fields)?)
            }
            MessageType::ADMIN_AUDIT_REQUEST => {
                Self::AdminAuditRequest(decode_plain(&body, AdminAuditRequest::decode_fields)?)
            }
            MessageType::ADMIN_AUDIT_REPORT => {
                Self::AdminAuditReport(decode_plain(&body, AdminAuditReport::decode_fields)?)
            }
            MessageType::SERVICE_LIST_REQUEST => {
                Self::ServiceListRequest(decode_plain(&body, ServiceListRequest::decode_fields)?)
            }
            MessageType::SERVICE_LIST => Self::ServiceList(decode_plain(&body, ServiceList::decode_fields)?),
            MessageType::USER_CREDENTIAL_RECEIPT => {
                Self::UserCredentialReceipt(decode_plain(&body, UserCredentialReceipt::decode_fields)?)
            }
            MessageType::REDIRECT => Self::Redirect(decode_plain(&body, Redirect::decode_fields)?),
            MessageType::SESSION_RECEIPT => Self::SessionReceipt(Signed::decode_body(body)?),
            MessageType::RECEIPT_REQUEST => Self::ReceiptRequest(Maced::decode_body(body)?),
            MessageType::ERROR => Self::Error(decode_plain(&body, ErrorMessage::decode_fields)?),
            MessageType(other) => return Err(DecodeError::UnknownMessageType(other)),
        })
    }

    /// Append this message as a frame. (An Accounting Ack with more than
    /// `ACK_ENTRIES_MAX` entries becomes several frames; one with none, none.)
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Self::ServiceCredentialRequest(message) => message.encode_frame(out),
            Self::ServiceCredential(message) => message.encode_frame(out),
            Self::UserCredential(message) => message.encode_frame(out),
            Self::ServiceRequest(message) => message.encode_frame(out),
            Self::ServiceProof(message) => message.encode_frame(out),
            Self::Accounting(message) => message.encode_frame(out),
            Self::AccountingAck(message) => message.encode_frames(out),
            Self::RecordAccounting(message) => message.encode_frame(out),
            Self::RecordAck(message) => message.encode_frame(out),
            Self::AdminOpenSession(message) => message.encode_frame(out),
            Self::AdminAuditRequest(message) => message.encode_frame(out),
            Self::AdminAuditReport(message) => message.encode_frame(out),
            Self::ServiceListRequest(message) => message.encode_frame(out),
            Self::ServiceList(message) => message.encode_frame(out),
            Self::UserCredentialReceipt(message) => message.encode_frame(out),
            Self::Redirect(message) => message.encode_frame(out),
            Self::SessionReceipt(message) => message.encode_frame(out),
            Self::ReceiptRequest(message) => message.encode_frame(out),
            Self::Error(message) => message.encode_frame(out),
        }
    }

    /// The frame type of this message.
    pub fn message_type(&self) -> MessageType {
        match self {
            Self::ServiceCredentialRequest(_) => MessageType::SERVICE_CREDENTIAL_REQUEST,
            Self::ServiceCredential(_) => MessageType::SERVICE_CREDENTIAL,
            Self::UserCredential(_) => MessageType::USER_CREDENTIAL,
            Self::ServiceRequest(_) => MessageType::SERVICE_REQUEST,
            Self::ServiceProof(_) => MessageType::SERVICE_PROOF,
            Self::Accounting(_) => MessageType::ACCOUNTING,
            Self::AccountingAck(_) => MessageType::ACCOUNTING_ACK,
            Self::RecordAccounting(_) => MessageType::RECORD_ACCOUNTING,
            Self::RecordAck(_) => MessageType::RECORD_ACK,
            Self::AdminOpenSession(_) => MessageType::ADMIN_OPEN_SESSION,
            Self::AdminAuditRequest(_) => MessageType::ADMIN_AUDIT_REQUEST,
            Self::AdminAuditReport(_) => MessageType::ADMIN_AUDIT_REPORT,
            Self::ServiceListRequest(_) => MessageType::SERVICE_LIST_REQUEST,
            Self::ServiceList(_) => MessageType::SERVICE_LIST,
            Self::UserCredentialReceipt(_) => MessageType::USER_CREDENTIAL_RECEIPT,
            Self::Redirect(_) => MessageType::REDIRECT,
            Self::SessionReceipt(_) => MessageType::SESSION_RECEIPT,
            Self::ReceiptRequest(_) => MessageType::RECEIPT_REQUEST,
            Self::Error(_) => MessageType::ERROR,
        }
    }

    /// This message as one frame.
    pub fn to_frame(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

fn decode_plain<T>(
    body: &Bytes,
    decode: impl FnOnce(&mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    let mut reader = Reader::new(body);
    let value = decode(&mut reader)?;
    reader.finish()?;
    Ok(value)
}

/// Cuts frames from a byte stream.
///
/// Bound: the decoder never asks its caller to buffer more than
/// `FRAME_HEADER_BYTES + body_bytes_max` bytes for one frame; a header that
/// declares more is an error as soon as its 6 bytes have arrived.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    body_bytes_max: usize,
}

/// One frame cut from a stream, body not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message type from the header.
    pub message_type: MessageType,
    /// The body, a zero-copy slice of the stream buffer.
    pub body: Bytes,
}

impl Frame {
    /// Decode the body into a message.
    pub fn decode(self) -> Result<Message, DecodeError> {
        Message::decode_body(self.message_type, self.body)
    }
}

impl FrameDecoder {
    /// A decoder that refuses bodies over `body_bytes_max` (and over each
    /// type's own maximum).
    pub fn new(body_bytes_max: usize) -> Self {
        Self { body_bytes_max }
    }

    /// Take the next complete frame from the front of `buffer`, if one is
    /// there. `Ok(None)` means more bytes are needed; an error means the
    /// stream is unusable from here on (the header is not consumed).
    pub fn next_frame(&self, buffer: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let Some(header_bytes) = buffer.get(..FRAME_HEADER_BYTES) else {
            return Ok(None);
        };
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header.copy_from_slice(header_bytes);
        let parsed = FrameHeader::parse(&header, self.body_bytes_max)?;
        let frame_bytes = FRAME_HEADER_BYTES + parsed.body_bytes;
        if buffer.len() < frame_bytes {
            buffer.reserve(frame_bytes - buffer.len());
            return Ok(None);
        }
        buffer.advance(FRAME_HEADER_BYTES);
        let body = buffer.split_to(parsed.body_bytes).freeze();
        Ok(Some(Frame {
            message_type: parsed.message_type,
            body,
        }))
    }
}
