//! The items that travel between the ingest stages, and the shared session
//! table. Stage order: QUIC stream task (decode, admit) → verifier threads
//! (batch Ed25519) → committer thread (dedup, policy, RocksDB group commit)
//! → the stream's ack writer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use wire::{Accounting, AckEntry, Name, PublicKey, SessionId, Signed};

use super::session::SessionInfo;

/// Where a stream's acks go. Bounded: a stream admits at most
/// `stream_inflight_max` unanswered messages, and the channel holds as many,
/// so the committer's `try_send` never finds it full while the stream lives.
pub type AckSender = mpsc::Sender<AckEntry>;

/// A provider connection as the pipeline sees it.
#[derive(Debug)]
pub struct ProviderConnection {
    /// The provider's name from its certificate.
    pub name: Name,
    /// Its parsed key (parsed once per connection, not per message).
    pub key: PublicKey,
    /// Signatures that verified on this connection.
    pub good_signatures: AtomicU64,
    /// Signatures that did not.
    pub bad_signatures: AtomicU64,
    /// Streams the AM closed for a protocol error (malformed or oversized
    /// frame, a message type that has no place on the stream).
    pub malformed_streams: AtomicU64,
    /// Set once the AM closed this connection for abuse.
    pub closed_for_abuse: AtomicBool,
    /// Signalled (to every stream waiting on it) when a verifier finds the
    /// connection [abusive](Self::is_abusive).
    pub abuse: tokio::sync::Notify,
}

impl ProviderConnection {
    /// A connection's state.
    pub fn new(name: Name, key: PublicKey) -> Arc<Self> {
        Arc::new(Self {
            name,
            key,
            good_signatures: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            malformed_streams: AtomicU64::new(0),
            closed_for_abuse: AtomicBool::new(false),
            abuse: tokio::sync::Notify::new(),
        })
    }

    /// Whether the connection sends mostly bad signatures: more than
    /// `BAD_SIGNATURES_MIN` bad ones and more bad than good. Such a provider
    /// is disconnected so that its verification cost cannot slow the others.
    pub fn is_abusive(&self) -> bool {
        let bad = self.bad_signatures.load(Ordering::Relaxed);
        let good = self.good_signatures.load(Ordering::Relaxed);
        bad > BAD_SIGNATURES_MIN && bad > good
    }

    /// Whether the connection keeps breaking the protocol: more than
    /// `MALFORMED_STREAMS_MAX` streams closed for a protocol error. The
    /// provider library never sends a malformed frame, so this is a broken
    /// or hostile peer opening stream after stream of garbage; it is
    /// disconnected, and a reconnect costs it a full handshake.
    pub fn breaks_protocol(&self) -> bool {
        self.malformed_streams.load(Ordering::Relaxed) > MALFORMED_STREAMS_MAX
    }
}

/// Bad signatures a connection may send before the abuse rule applies.
pub const BAD_SIGNATURES_MIN: u64 = 256;

/// Streams a connection may have closed for protocol errors before it is
/// disconnected.
pub const MALFORMED_STREAMS_MAX: u64 = 16;

/// An accounting message admitted for verification.
#[derive(Debug)]
pub struct Pending {
    /// The message as received.
    pub message: Signed<Accounting>,
    /// The session it accounts for.
    pub session: Arc<SessionInfo>,
    /// The provider connection it came on.
    pub connection: Arc<ProviderConnection>,
    /// When the AM received it, Unix ms.
    pub received_ms: u64,
    /// Where its ack goes.
    pub reply: AckSender,
}

/// A message whose signature verified. Only the verifier makes these.
#[derive(Debug)]
pub struct Verified(Pending);

impl Verified {
    /// Only the verifier calls this, after the signature checked out.
    pub(super) fn new(pending: Pending) -> Self {
        Self(pending)
    }

    /// The verified message and its context.
    pub fn pending(&self) -> &Pending {
        &self.0
    }
}

/// Work for the committer.
#[derive(Debug)]
pub enum CommitCommand {
    /// Store verified messages (or answer why not), in order.
    Records(Vec<Verified>),
    /// Store a new session durably, then answer.
    OpenSession {
        /// The minted session.
        session: Arc<SessionInfo>,
        /// Ok once durable.
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

impl CommitCommand {
    /// Messages carried (0 for a session to open).
    pub fn messages(&self) -> usize {
        match self {
            Self::Records(records) => records.len(),
            Self::OpenSession { .. } => 0,
        }
    }
}

/// The sessions the AM knows, shared for admission (reads on every message,
/// writes when a session is opened or pruned).
#[derive(Debug, Default)]
pub struct SessionTable {
    sessions: RwLock<HashMap<SessionId, Arc<SessionInfo>>>,
}

impl SessionTable {
    /// Look a session up.
    pub fn get(&self, session_id: &SessionId) -> Option<Arc<SessionInfo>> {
        self.sessions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(session_id)
            .cloned()
    }

    /// Add a session.
    pub fn insert(&self, session: Arc<SessionInfo>) {
        self.sessions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(session.session_id(), session);
    }

    /// Remove a session.
    pub fn remove(&self, session_id: &SessionId) {
        self.sessions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(session_id);
    }

    /// Sessions known.
    pub fn len(&self) -> usize {
        self.sessions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether no session is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
