//! The items that travel between the ingest stages, and the shared session
//! table. Stage order: QUIC stream task (decode, admit) → verifier threads
//! (batch Ed25519) → committer thread (dedup, policy, RocksDB group commit)
//! → the stream's ack writer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;
use wire::{Accounting, AckEntry, AckStatus, Name, PublicKey, SessionId, Signed};

use super::abuse::Conduct;
use super::session::SessionInfo;

/// Most messages a stream hands to the verify queue at once: the messages
/// decoded from one read (a read batch).
pub const READ_BATCH_MESSAGES_MAX: usize = 256;

/// Where a stream's acks go. Bounded: a stream admits at most
/// `stream_inflight_max` unanswered messages, and the channel holds as many
/// sends (each carries at least one answer), so the committer's `try_send`
/// never finds it full while the stream lives.
pub type AckSender = mpsc::Sender<Answers>;

/// Answers for one stream: one, or a run of them decided together (the
/// committer sends a stream's consecutive answers in a group as one, so a
/// busy stream costs one channel send and one wakeup per group, not one per
/// message).
#[derive(Debug)]
pub enum Answers {
    /// A single answer (no allocation).
    One(AckEntry),
    /// Several, in the order decided.
    Many(Vec<AckEntry>),
}

impl Answers {
    /// How many answers.
    pub fn len(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Many(entries) => entries.len(),
        }
    }

    /// Never true for what the pipeline sends; for completeness.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Move the answers to the end of `out`.
    pub fn append_to(self, out: &mut Vec<AckEntry>) {
        match self {
            Self::One(entry) => out.push(entry),
            Self::Many(mut entries) => out.append(&mut entries),
        }
    }
}

/// Hand `answers` to a stream's ack writer. The channel has room for
/// every answer by construction: each admitted message holds one of the
/// stream's `stream_inflight_messages_max` permits until its answer is
/// written, each send carries at least one answer, and the channel holds
/// that many sends. A full channel is therefore a broken invariant: it
/// fails debug builds and is counted in release
/// (`acct_answers_dropped_total`, which must stay 0). A closed channel is a
/// stream that is gone; its messages' fate stands (a stored one is answered
/// DUPLICATE when the provider sends it again).
pub fn deliver(reply: &AckSender, answers: Answers) {
    match reply.try_send(answers) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(answers)) => {
            metrics::counter!("acct_answers_dropped_total").increment(answers.len() as u64);
            tracing::error!(
                answers = answers.len(),
                "a stream's ack channel was full: answers dropped"
            );
            debug_assert!(
                false,
                "a stream's ack channel was full: {} answers dropped",
                answers.len()
            );
        }
    }
}

/// A provider connection as the pipeline sees it.
#[derive(Debug)]
pub struct ProviderConnection {
    /// The provider's name from its certificate.
    pub name: Name,
    /// Its parsed key (parsed once per connection, not per message).
    pub key: PublicKey,
    /// What the connection did, as the abuse rules judge it.
    pub conduct: Conduct,
}

impl ProviderConnection {
    /// A connection's state.
    pub fn new(name: Name, key: PublicKey) -> Arc<Self> {
        Arc::new(Self {
            name,
            key,
            conduct: Conduct::default(),
        })
    }
}

/// An accounting message admitted for verification.
#[derive(Debug)]
pub struct Admitted {
    /// The message as received. Its session was admitted when it was read
    /// (`SessionTable::admit`); the committer checks it again in its own
    /// map, so no reference to the session travels with the message (one
    /// reference count per message, taken by the I/O thread and released
    /// by the committer, was the largest cost of the AM's own code in the
    /// I/O thread: 1.2% of the AM's samples).
    pub message: Signed<Accounting>,
    /// The provider connection it came on.
    pub connection: Arc<ProviderConnection>,
    /// When the AM received it, Unix ms.
    pub received_ms: u64,
    /// Where its ack goes.
    pub reply: AckSender,
}

/// A message whose signature verified, with the SHA-256 of its signed
/// fields (its receipt digest's leaf, hashed on the verifier's thread, not
/// on the committer's). Only the verifier makes these.
#[derive(Debug)]
pub struct Verified(Admitted, [u8; 32]);

impl Verified {
    /// Only the verifier calls this, after the signature checked out.
    pub(super) fn new(admitted: Admitted) -> Self {
        use sha2::Digest;
        let leaf = sha2::Sha256::digest(admitted.message.signed_bytes()).into();
        Self(admitted, leaf)
    }

    /// The verified message and its context.
    pub fn admitted(&self) -> &Admitted {
        &self.0
    }

    /// SHA-256 of the message's signed fields.
    pub fn leaf(&self) -> &[u8; 32] {
        &self.1
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
        reply: tokio::sync::oneshot::Sender<Result<(), super::codes::SessionNotStored>>,
    },
    /// A session's committed state, for its receipt (`None`: not held).
    SessionState {
        /// The session.
        session_id: wire::SessionId,
        /// Where the state goes.
        reply: tokio::sync::oneshot::Sender<Option<super::receipts::ClosedSession>>,
    },
}

impl CommitCommand {
    /// Messages carried (0 for a session to open).
    pub fn messages(&self) -> usize {
        match self {
            Self::Records(records) => records.len(),
            Self::OpenSession { .. } | Self::SessionState { .. } => 0,
        }
    }
}

/// The sessions the AM knows, shared for admission (reads on every message,
/// writes when a session is opened or pruned). Hashed with foldhash, seeded
/// per process, like the committer's maps: SipHash made this lookup the
/// I/O thread's largest single cost.
#[derive(Debug, Default)]
pub struct SessionTable {
    sessions: RwLock<HashMap<SessionId, Arc<SessionInfo>, foldhash::fast::RandomState>>,
    /// Live sessions per user (no Final stored, within their validity):
    /// kept by the committer, read by credential issuance. Users with none
    /// have no entry.
    live_per_user: Mutex<HashMap<Name, usize>>,
}

impl SessionTable {
    /// Look a session up (receipt requests, tests; the ingest path uses
    /// [`Self::admit`]).
    pub fn get(&self, session_id: &SessionId) -> Option<Arc<SessionInfo>> {
        self.sessions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(session_id)
            .cloned()
    }

    /// Admission of a message for `session_id` on `provider`'s connection
    /// ([`super::session::admit`]), under the read lock, without taking a
    /// reference to the session.
    pub fn admit(&self, session_id: &SessionId, provider: &Name) -> Result<(), AckStatus> {
        let sessions = self.sessions.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        super::session::admit(sessions.get(session_id).map(Arc::as_ref), provider)
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

    /// Live sessions of `user`.
    pub fn live_sessions(&self, user: &Name) -> usize {
        self.live_per_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(user)
            .copied()
            .unwrap_or(0)
    }

    /// One more live session of `user` (the committer, when it opens or
    /// recovers one).
    pub fn count_live(&self, user: &Name) {
        *self
            .live_per_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(user.clone())
            .or_default() += 1;
    }

    /// One live session of `user` fewer (the committer, when its Final is
    /// stored or its validity ends).
    pub fn uncount_live(&self, user: &Name) {
        let mut live = self
            .live_per_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match live.get_mut(user) {
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                live.remove(user);
            }
            None => debug_assert!(false, "a live session uncounted twice"),
        }
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
