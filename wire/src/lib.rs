//! `wire`: acct's protocol. Message types for every step of the flow, a
//! compact versioned binary codec on [`bytes`], Ed25519 signatures with one
//! acceptance rule (ZIP-215) for single and batch verification, HMAC-SHA256
//! for the Service Request, and X.509 checks against the operator's CA.
//!
//! No I/O, no clock, no randomness, no globals: time and seeds are arguments.
//! Decoding untrusted bytes is total: a value or a [`DecodeError`], never a
//! panic, never an allocation beyond the declared, checked bounds
//! ([`limits`]). `docs/protocol.md` is the normative description.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![warn(missing_docs)]

pub mod accounting;
pub mod admin;
pub mod certificate;
pub mod chain;
pub mod cluster;
pub mod codec;
pub mod credential;
pub mod directory;
pub mod ed25519;
pub mod error;
pub mod error_message;
pub mod frame;
pub mod ids;
pub mod limits;
pub mod receipt;
pub mod record;
pub mod service;
pub mod signed;
pub mod text;

pub use accounting::{Accounting, AccountingAck, AccountingKind, AckEntry, AckStatus, CustomCounter, Usage};
pub use admin::{AUDIT_RUN_BYTES, AdminAuditReport, AdminAuditRequest, AdminOpenSession, AuditRun};
pub use certificate::{CertificateError, CertifiedIdentity, Role, TrustedCa};
pub use chain::{ArchiveHead, BatchHeader};
pub use cluster::{ClusterError, ClusterMap, Partition, PartitionId, Redirect};
pub use credential::{
    DataFields, Policy, ServiceCredential, ServiceCredentialRequest, TimeOfDay, UserCredential, credential_digest,
};
pub use directory::{ReceiptStatus, ServiceEntry, ServiceList, ServiceListRequest, UserCredentialReceipt};
pub use ed25519::{BatchItem, PublicKey, SigningKey, verify_batch};
pub use error::{DecodeError, EncodeError, SignatureError};
pub use error_message::{ErrorCode, ErrorMessage};
pub use frame::{Frame, FrameDecoder, FrameHeader, Message, MessageType};
pub use ids::{BatchId, MessageId, Nonce, RequestId, ServiceId, SessionId, SessionKey};
pub use receipt::{ReceiptDigest, ReceiptRequest, SessionReceipt, UsageSums};
pub use record::{BatchToSign, RecordAccounting, RecordAck, RecordStatus};
pub use service::{ProofStatus, ServiceProof, ServiceRequest};
pub use signed::{Maced, MacedFields, Signed, SignedFields};
pub use text::{Address, CounterName, Name};
