//! The committer thread: the single writer. It owns every session's dedup
//! state, decides each verified message (new, duplicate, conflicting,
//! refused by policy), writes a commit group (many messages from many
//! connections, one WriteBatch, one WAL sync) and only then sends the acks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use wire::{AckEntry, AckStatus, MessageId, SessionId};

use super::codes::{SessionNotStored, commit_failure};
use super::pipeline::{AckSender, Admitted, Answers, CommitCommand, SessionTable, Verified, deliver};
use super::receipts::ClosedSession;
use super::session::{self, SequenceState, SessionFlags, SessionInfo, SessionProgress, TimeBounds};
use super::store::{GroupWrite, RecordRef, Store, StoreError};
use crate::clock::now_ms;

/// The committer's maps, hashed with foldhash (seeded per process): their
/// keys are session ids, message ids and provider keys, several lookups per
/// message on the single writer's thread, where SipHash cost ~7% of its CPU.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The committer's settings.
#[derive(Debug, Clone, Copy)]
pub struct CommitSettings {
    /// Most messages in one commit group (one WAL sync).
    pub group_messages_max: usize,
    /// Time bounds on accounted intervals.
    pub bounds: TimeBounds,
    /// How long a closed or expired session's dedup state is kept.
    pub dedup_window_ms: u64,
    /// How often the watchdog and the pruning run.
    pub tick: Duration,
}

/// The committer's state.
pub struct Committer {
    store: Arc<Store>,
    table: Arc<SessionTable>,
    sessions: Map<SessionId, (Arc<SessionInfo>, SessionProgress)>,
    next_commit_sequence: u64,
    settings: CommitSettings,
    /// Provider keys by their id in the `keys` family (one per distinct key).
    key_ids: Map<[u8; 32], u32>,
    /// Failed commit groups since the last success, logged at most every
    /// [`FAILURE_LOG_INTERVAL`] (a full disk fails every group).
    failures: FailureLog,
    /// The sessions counted in the table's live sessions per user
    /// ([`SessionTable::count_live`]): open, no Final stored, and within
    /// their validity when last looked at.
    live: std::collections::HashSet<SessionId, foldhash::fast::RandomState>,
    /// Where sessions whose Final was just stored go, for their receipt's
    /// push (bounded; a full queue drops the push, never waits).
    closed: Option<tokio::sync::mpsc::Sender<ClosedSession>>,
}

/// How often a run of failing commit groups is logged.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A run of failed commit groups: logged when it starts, every
/// [`FAILURE_LOG_INTERVAL`] while it lasts, and when it ends.
#[derive(Default)]
struct FailureLog {
    /// When the run started, and when it was last logged.
    since: Option<(Instant, Instant)>,
    groups: u64,
    messages: u64,
}

impl FailureLog {
    fn failed(&mut self, error: &StoreError, messages: usize) {
        let now = Instant::now();
        self.groups += 1;
        self.messages += messages as u64;
        let log = match &mut self.since {
            None => {
                self.since = Some((now, now));
                true
            }
            Some((_, logged)) if now.duration_since(*logged) >= FAILURE_LOG_INTERVAL => {
                *logged = now;
                true
            }
            Some(_) => false,
        };
        if log {
            tracing::error!(
                %error,
                groups = self.groups,
                messages = self.messages,
                "commit groups failing: nothing of them is stored, providers are answered to retry"
            );
        }
    }

    fn succeeded(&mut self) {
        if let Some((since, _)) = self.since.take() {
            tracing::warn!(
                groups = self.groups,
                messages = self.messages,
                seconds = since.elapsed().as_secs_f64(),
                "commits succeed again after a run of failed groups"
            );
            self.groups = 0;
            self.messages = 0;
        }
    }
}

/// Where the committer answers a session opening.
type SessionReply = tokio::sync::oneshot::Sender<Result<(), SessionNotStored>>;

/// An ack decided in a group, sent after the group's write.
struct Answer {
    message_id: MessageId,
    outcome: Outcome,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Stored by this group: STORED if the write succeeds.
    StoredNow,
    /// Duplicate of a message stored by this group: DUPLICATE if the write succeeds.
    DuplicateInGroup,
    /// Decided regardless of the write.
    Final(AckStatus),
}

/// A commit group being built.
struct Group {
    /// The records, markers, keys and progress to write, in one synced batch.
    write: GroupWrite,
    /// Each touched session's progress after the group, and whether its
    /// `progress` entry must be written (its progress did not all ride in
    /// markers: a message out of sequence order, or a Final).
    staged: Map<SessionId, (SessionProgress, bool)>,
    /// The messages this group stores, with their fingerprints: a copy
    /// later in the same group is decided against them.
    in_group: Map<MessageId, [u8; 8]>,
    /// One per message decided so far, in order.
    answers: Vec<Answer>,
    /// Keys first seen in this group: forgotten again if the write fails.
    new_keys: Vec<[u8; 32]>,
    /// When the group's oldest message was read from its stream.
    oldest_received_ms: u64,
    /// The commit sequence of the group's first record.
    first_commit_sequence: u64,
}

impl Group {
    fn new(messages: usize, first_commit_sequence: u64) -> Self {
        Self {
            write: GroupWrite::with_capacity(messages),
            staged: Map::with_capacity_and_hasher(messages, Default::default()),
            in_group: Map::with_capacity_and_hasher(messages, Default::default()),
            answers: Vec::with_capacity(messages),
            new_keys: Vec::new(),
            oldest_received_ms: u64::MAX,
            first_commit_sequence,
        }
    }
}

/// The id records name a provider's key by; a key seen for the first time
/// gets the next id, written with the group (and forgotten if it fails).
fn key_id(key_ids: &mut Map<[u8; 32], u32>, store: &Store, group: &mut Group, key: &[u8; 32]) -> u32 {
    if let Some(id) = key_ids.get(key) {
        return *id;
    }
    let id = key_ids.len() as u32;
    key_ids.insert(*key, id);
    store.add_key(&mut group.write, id, key);
    group.new_keys.push(*key);
    id
}

/// Answer every message of a group, once its write is done (`failure`:
/// the status of what it would have stored, if the write failed). A
/// stream's consecutive answers go as one send: they arrived together, in
/// one read and one verify batch.
fn answer_group(batches: &[Vec<Verified>], answers: Vec<Answer>, failure: Option<AckStatus>) {
    let mut counts = [0u64; 4];
    let mut run: Vec<AckEntry> = Vec::new();
    let mut run_reply: Option<&AckSender> = None;
    for (answer, verified) in answers.into_iter().zip(batches.iter().flatten()) {
        let status = match (answer.outcome, failure) {
            (Outcome::StoredNow, None) => AckStatus::STORED,
            (Outcome::DuplicateInGroup, None) => AckStatus::DUPLICATE,
            (Outcome::StoredNow | Outcome::DuplicateInGroup, Some(status)) => status,
            (Outcome::Final(status), _) => status,
        };
        let class = if status == AckStatus::STORED {
            0
        } else if status.is_stored() {
            1
        } else if status.is_retryable() {
            2
        } else {
            3
        };
        counts[class] += 1;
        let reply = &verified.admitted().reply;
        if !run_reply.is_some_and(|current| current.same_channel(reply)) {
            send_run(run_reply, &mut run);
            run_reply = Some(reply);
        }
        run.push(AckEntry {
            message_id: answer.message_id,
            status,
        });
    }
    send_run(run_reply, &mut run);
    for (class, outcome) in ["stored", "duplicate", "retry", "rejected"].into_iter().enumerate() {
        if counts[class] > 0 {
            metrics::counter!("acct_messages_total", "outcome" => outcome).increment(counts[class]);
        }
    }
}

impl Committer {
    /// A committer over a recovered store.
    pub fn new(store: Arc<Store>, table: Arc<SessionTable>, settings: CommitSettings) -> Result<Self, StoreError> {
        let mut sessions = Map::default();
        let mut live = std::collections::HashSet::default();
        let now = now_ms();
        for stored in store.load_sessions()? {
            table.insert(stored.info.clone());
            if is_live(&stored.info, &stored.progress, now) {
                table.count_live(&stored.info.credential.value().user_id);
                live.insert(stored.info.session_id());
            }
            sessions.insert(stored.info.session_id(), (stored.info, stored.progress));
        }
        let next_commit_sequence = store.next_commit_sequence()?;
        let key_ids = store
            .keys()?
            .into_iter()
            .enumerate()
            .map(|(id, key)| (key, id as u32))
            .collect();
        metrics::gauge!("acct_sessions").set(sessions.len() as f64);
        Ok(Self {
            store,
            table,
            sessions,
            next_commit_sequence,
            settings,
            key_ids,
            failures: FailureLog::default(),
            live,
            closed: None,
        })
    }

    /// Send each session whose Final is stored to `closed`, after its write.
    pub fn notify_closed(&mut self, closed: tokio::sync::mpsc::Sender<ClosedSession>) {
        self.closed = Some(closed);
    }

    /// Stop counting `session_id` as live (its Final is stored, its
    /// validity ended, or it is pruned); nothing if it was not counted.
    fn uncount_live(&mut self, session_id: SessionId) {
        if self.live.remove(&session_id)
            && let Some((info, _)) = self.sessions.get(&session_id)
        {
            self.table.uncount_live(&info.credential.value().user_id);
        }
    }

    /// A session's progress as the committer holds it (for tests).
    #[cfg(test)]
    pub(crate) fn progress_of(&self, session_id: SessionId) -> Option<SessionProgress> {
        self.sessions.get(&session_id).map(|entry| entry.1)
    }

    /// Run until every sender of `input` is gone and the queue is drained.
    pub fn run(mut self, input: Receiver<CommitCommand>) {
        let mut next_tick = Instant::now() + self.settings.tick;
        let mut group: Vec<CommitCommand> = Vec::with_capacity(self.settings.group_messages_max);
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match input.recv_timeout(wait) {
                Ok(first) => {
                    let mut messages = first.messages();
                    group.push(first);
                    while messages < self.settings.group_messages_max {
                        match input.try_recv() {
                            Ok(next) => {
                                messages += next.messages();
                                group.push(next);
                            }
                            Err(_) => break,
                        }
                    }
                    metrics::gauge!("acct_commit_queue_messages").set(input.len() as f64);
                    self.process(&mut group);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_tick {
                self.tick(now_ms());
                next_tick = Instant::now() + self.settings.tick;
            }
        }
    }

    fn process(&mut self, group: &mut Vec<CommitCommand>) {
        let now = now_ms();
        // The verifiers' batches as they came: not copied into one vector.
        let mut records: Vec<Vec<Verified>> = Vec::with_capacity(group.len());
        let mut opens = Vec::new();
        for command in group.drain(..) {
            match command {
                CommitCommand::Records(verified) => records.push(verified),
                CommitCommand::OpenSession { session, reply } => opens.push((session, reply)),
                CommitCommand::SessionState { session_id, reply } => {
                    // Committed state only: the group being built is not.
                    let _ = reply.send(self.sessions.get(&session_id).cloned());
                }
            }
        }
        if !opens.is_empty() {
            self.open_sessions(opens, now);
        }
        if records.iter().any(|batch| !batch.is_empty()) {
            self.commit_records(records, now);
        }
    }

    /// Store new sessions, all in one synced write (credential issuance
    /// under load: one fsync for many sessions), then answer each.
    fn open_sessions(&mut self, opens: Vec<(Arc<SessionInfo>, SessionReply)>, now: u64) {
        let progress = SessionProgress::new(now);
        let sessions: Vec<&SessionInfo> = opens.iter().map(|(session, _)| session.as_ref()).collect();
        match self.store.insert_sessions(&sessions, &progress) {
            Ok(()) => {
                for (session, reply) in opens {
                    self.table.insert(session.clone());
                    if is_live(&session, &progress, now) {
                        self.table.count_live(&session.credential.value().user_id);
                        self.live.insert(session.session_id());
                    }
                    self.sessions.insert(session.session_id(), (session, progress));
                    let _ = reply.send(Ok(()));
                }
            }
            Err(error) => {
                let refusal = SessionNotStored::from(&error);
                for (_, reply) in opens {
                    // The requester may be gone (its task dropped): nothing to answer.
                    let _ = reply.send(Err(refusal.clone()));
                }
            }
        }
        metrics::gauge!("acct_sessions").set(self.sessions.len() as f64);
    }

    /// One commit group: decide every message (dedup, policy), build one
    /// synced write of what is new, write it, then answer every message.
    fn commit_records(&mut self, batches: Vec<Vec<Verified>>, now: u64) {
        let count = batches.iter().map(Vec::len).sum();
        let started = Instant::now();
        let mut group = Group::new(count, self.next_commit_sequence);
        for verified in batches.iter().flatten() {
            let item = verified.admitted();
            let outcome = self.stage(&mut group, item, verified.leaf(), now);
            group.answers.push(Answer {
                message_id: item.message.value().message_id(),
                outcome,
            });
        }
        let stored_count = group.write.record_count();
        let oldest_received_ms = group.oldest_received_ms;
        let answers = std::mem::take(&mut group.answers);
        let failure = self.write_group(group);
        metrics::histogram!("acct_commit_group_messages").record(stored_count as f64);
        metrics::histogram!("acct_commit_seconds").record(started.elapsed().as_secs_f64());
        if stored_count > 0 && failure.is_none() {
            // The whole wait of the group's oldest stored-or-answered message:
            // read from its stream, admitted, verified, queued, committed.
            // Wall clock in ms (the stream stamps messages with it), so a
            // clock step can make one figure wrong, never negative.
            let waited_ms = now_ms().saturating_sub(oldest_received_ms);
            metrics::histogram!("acct_ingest_wait_seconds").record(waited_ms as f64 / 1000.0);
        }
        // One answer per message, or a message would go unanswered.
        assert_eq!(answers.len(), count, "one answer per message of the group");
        answer_group(&batches, answers, failure);
    }

    /// Decide one message of the group being built and, if it is new, add
    /// its record to the group's write.
    fn stage(&mut self, group: &mut Group, item: &Admitted, leaf: &[u8; 32], now: u64) -> Outcome {
        group.oldest_received_ms = group.oldest_received_ms.min(item.received_ms);
        let fingerprint = fingerprint(item.message.signature());
        match self.decide(&group.staged, &group.in_group, item, fingerprint, now) {
            Ok(Decision::New(progress)) => self.stage_new(group, item, leaf, fingerprint, progress, now),
            Ok(Decision::DuplicateInGroup) => Outcome::DuplicateInGroup,
            Ok(Decision::Answered(status)) => {
                if status == AckStatus::CONFLICTING_DUPLICATE {
                    item.connection.conduct.conflicting_duplicate();
                }
                Outcome::Final(status)
            }
            Err(error) => {
                tracing::error!(%error, "fingerprint lookup failed; answering busy");
                Outcome::Final(AckStatus::BUSY)
            }
        }
    }

    /// Add a new message's record, dedup marker and its session's progress
    /// to the group, under the next commit sequence.
    fn stage_new(
        &mut self,
        group: &mut Group,
        item: &Admitted,
        leaf: &[u8; 32],
        fingerprint: [u8; 8],
        mut progress: SessionProgress,
        now: u64,
    ) -> Outcome {
        let message = item.message.value();
        // decide() has just found the session in this map; the record takes
        // its user id from there (no reference to the session travels with
        // the message).
        let Some((info, _)) = self.sessions.get(&message.session_id) else {
            return Outcome::Final(AckStatus::UNKNOWN_SESSION);
        };
        let flags = progress.flags;
        let in_order = message.sequence > progress.sequence_max;
        progress.record(message, leaf, now);
        let write_progress = !in_order
            || message.kind == wire::AccountingKind::FINAL
            || group.staged.get(&message.session_id).is_some_and(|staged| staged.1);
        let provider_key_id = key_id(&mut self.key_ids, &self.store, group, item.connection.key.as_bytes());
        // Borrowed: no copy of the names or the body per record.
        let record = RecordRef {
            received_ms: item.received_ms,
            flags,
            provider: item.connection.name.as_str(),
            provider_key_id,
            user_id: info.credential.value().user_id.as_str(),
            body: item.message.body(),
        };
        self.store.add_record(
            &mut group.write,
            self.next_commit_sequence,
            record,
            message.session_id,
            message.sequence,
            fingerprint,
            (!write_progress).then_some(&progress),
        );
        self.next_commit_sequence += 1;
        group.staged.insert(message.session_id, (progress, write_progress));
        group.in_group.insert(message.message_id(), fingerprint);
        Outcome::StoredNow
    }

    /// Write the group (one synced write, if it stores anything). On
    /// success the sessions' progress moves on; on failure nothing of the
    /// group is kept (its commit sequences and new key ids are given back)
    /// and the answer is the status every message it would have stored gets.
    fn write_group(&mut self, mut group: Group) -> Option<AckStatus> {
        for (session_id, (progress, write_progress)) in &group.staged {
            if *write_progress {
                self.store.add_progress(&mut group.write, *session_id, progress);
            }
        }
        let stored_count = group.write.record_count();
        if stored_count == 0 {
            return None;
        }
        match self.store.commit(group.write) {
            Ok(()) => {
                self.failures.succeeded();
                for (session_id, (progress, _)) in group.staged {
                    if let Some(entry) = self.sessions.get_mut(&session_id) {
                        // The Final stored now, or a late interim (numbered
                        // below it) after it: the provider gets the receipt
                        // as it stands.
                        let receipt_due = progress.is_closed() && progress.message_count != entry.1.message_count;
                        entry.1 = progress;
                        if receipt_due && let Some(closed) = &self.closed {
                            let outcome = match closed.try_send((entry.0.clone(), progress)) {
                                Ok(()) => None,
                                Err(_) => Some("dropped"),
                            };
                            if let Some(outcome) = outcome {
                                metrics::counter!("acct_receipts_total", "path" => "push", "outcome" => outcome)
                                    .increment(1);
                            }
                        }
                    }
                    if progress.is_closed() {
                        self.uncount_live(session_id);
                    }
                }
                None
            }
            Err(error) => {
                // The refused group's sequences are given again. Its bytes
                // may be in the WAL file (a failed sync), but RocksDB accepts
                // no write until its recovery has flushed every family and
                // retired that WAL in one step (atomic flush, store.rs); a
                // crash before that replays the group whole, with its own
                // next sequence. Either way no sequence is stored twice.
                self.next_commit_sequence = group.first_commit_sequence;
                for key in &group.new_keys {
                    self.key_ids.remove(key);
                }
                let (status, kind) = commit_failure(&error);
                metrics::counter!("acct_commit_failures_total", "kind" => kind).increment(1);
                self.failures.failed(&error, stored_count);
                Some(status)
            }
        }
    }

    fn decide(
        &self,
        staged: &Map<SessionId, (SessionProgress, bool)>,
        in_group: &Map<MessageId, [u8; 8]>,
        item: &Admitted,
        fingerprint: [u8; 8],
        now: u64,
    ) -> Result<Decision, StoreError> {
        let message = item.message.value();
        let session_id = message.session_id;
        let Some((info, committed)) = self.sessions.get(&session_id) else {
            return Ok(Decision::Answered(AckStatus::UNKNOWN_SESSION));
        };
        if let Some(stored) = in_group.get(&message.message_id()) {
            return Ok(Decision::from_match(*stored == fingerprint, true));
        }
        let progress = staged.get(&session_id).map_or(*committed, |staged| staged.0);
        let stored = match progress.sequence_state(message.sequence) {
            SequenceState::New => None,
            SequenceState::Stored | SequenceState::Unknown => self.store.fingerprint(session_id, message.sequence)?,
        };
        if let Some(stored) = stored {
            return Ok(Decision::from_match(stored == fingerprint, false));
        }
        match session::check_policy(info, &progress, message, now, self.settings.bounds) {
            Ok(()) => Ok(Decision::New(progress)),
            Err(status) => Ok(Decision::Answered(status)),
        }
    }

    /// The watchdog and the pruning, in one synced write.
    fn tick(&mut self, now: u64) {
        let mut write = GroupWrite::default();
        let mut flagged: Vec<(SessionId, SessionProgress)> = Vec::new();
        let mut pruned: Vec<SessionId> = Vec::new();
        // Sessions whose validity ended stop counting against their user.
        let mut ended: Vec<SessionId> = Vec::new();
        for (session_id, (info, progress)) in &self.sessions {
            if self.live.contains(session_id) && !is_live(info, progress, now) {
                ended.push(*session_id);
            }
            if !progress.flags.missed_interim() && session::missed_interim(info, progress, now) {
                let mut next = *progress;
                next.flags = SessionFlags(next.flags.0 | SessionFlags::MISSED_INTERIM);
                self.store.add_progress(&mut write, *session_id, &next);
                flagged.push((*session_id, next));
            }
            let ended_ms = progress.closed_ms.unwrap_or_else(|| {
                info.policy()
                    .valid_until_ms
                    .saturating_add(self.settings.bounds.lateness_ms_max)
            });
            if ended_ms.saturating_add(self.settings.dedup_window_ms) < now {
                self.store.add_prune(&mut write, *session_id);
                pruned.push(*session_id);
            }
        }
        for session_id in ended {
            self.uncount_live(session_id);
        }
        if flagged.is_empty() && pruned.is_empty() {
            return;
        }
        let flagged_count = flagged.len() as u64;
        match self.store.commit(write) {
            Ok(()) => {
                metrics::counter!("acct_sessions_missed_interim_total").increment(flagged_count);
                for (session_id, progress) in flagged {
                    if let Some(entry) = self.sessions.get_mut(&session_id) {
                        entry.1 = progress;
                    }
                }
                for session_id in &pruned {
                    self.uncount_live(*session_id);
                    self.sessions.remove(session_id);
                    self.table.remove(session_id);
                }
                metrics::gauge!("acct_sessions").set(self.sessions.len() as f64);
            }
            Err(error) => tracing::error!(%error, "watchdog write failed; will retry next tick"),
        }
    }
}

/// Whether a session counts against its user's live sessions: no Final
/// stored, and within its validity.
fn is_live(info: &SessionInfo, progress: &SessionProgress, now: u64) -> bool {
    !progress.is_closed() && now < info.policy().valid_until_ms
}

/// Send a stream's run of answers, leaving `run` empty. The stream may be
/// gone (provider disconnected): its messages are stored anyway and a
/// retransmission is acked as duplicate.
fn send_run(reply: Option<&AckSender>, run: &mut Vec<AckEntry>) {
    let Some(reply) = reply else { return };
    let answers = match run.len() {
        0 => return,
        1 => run.pop().map(Answers::One),
        _ => Some(Answers::Many(std::mem::take(run))),
    };
    if let Some(answers) = answers {
        deliver(reply, answers);
    }
}

enum Decision {
    New(SessionProgress),
    DuplicateInGroup,
    Answered(AckStatus),
}

impl Decision {
    fn from_match(same_content: bool, in_group: bool) -> Self {
        match (same_content, in_group) {
            (true, true) => Self::DuplicateInGroup,
            (true, false) => Self::Answered(AckStatus::DUPLICATE),
            (false, _) => Self::Answered(AckStatus::CONFLICTING_DUPLICATE),
        }
    }
}

/// The dedup fingerprint of a verified message: the first 8 bytes of its
/// signature (the encoding of R). RFC 8032 signing is deterministic, so the
/// same message from the same key has the same signature, and R depends on
/// a hash of the content, so different content has a different R: no hash
/// to compute. A provider that signs the same content twice with random
/// nonces gets CONFLICTING_DUPLICATE, which is still refused, never stored
/// twice; the protocol requires retransmitting the same bytes.
pub fn fingerprint(signature: &[u8; 64]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&signature[..8]);
    out
}

/// The commit settings of the unit tests and the model test.
#[cfg(test)]
const TEST_SETTINGS: CommitSettings = CommitSettings {
    group_messages_max: 64,
    bounds: TimeBounds {
        future_skew_ms_max: 300_000,
        lateness_ms_max: 86_400_000,
    },
    dedup_window_ms: 86_400_000,
    tick: Duration::from_secs(1),
};

#[cfg(test)]
#[path = "model_test.rs"]
mod model_test;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::am::pipeline::{Admitted, ProviderConnection};
    use wire::{
        Accounting, AccountingKind, Address, DataFields, Name, Policy, ServiceId, SessionKey, Signed, SigningKey,
        TimeOfDay, Usage, UserCredential,
    };

    struct Harness {
        _folder: tempfile::TempDir,
        committer: Committer,
        session: Arc<SessionInfo>,
        connection: Arc<ProviderConnection>,
        provider_key: SigningKey,
        acks: tokio::sync::mpsc::Receiver<Answers>,
        reply: AckSender,
    }

    fn harness(interim_interval_max_s: u32) -> Harness {
        let folder = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(folder.path()).unwrap());
        let table = Arc::new(SessionTable::default());
        let mut committer = Committer::new(store, table, TEST_SETTINGS).unwrap();
        let now = now_ms();
        let credential = Signed::sign(
            UserCredential {
                session_id: SessionId([3; 16]),
                service_id: ServiceId(1),
                user_id: Name::new("alice").unwrap(),
                user_address: Address::new("10.0.0.1:1").unwrap(),
                session_key: SessionKey([0; 32]),
                policy: Policy {
                    valid_from_ms: now - 3_600_000,
                    valid_until_ms: now + 3_600_000,
                    time_of_day: TimeOfDay::ANY,
                    requests_max: 0,
                    address_change_allowed: false,
                    required_data: DataFields::NONE,
                    interim_interval_max_s,
                },
            },
            &SigningKey::from_seed(&[1; 32]),
        )
        .unwrap();
        let session = SessionInfo::new(Name::new("p1").unwrap(), credential, now);
        let (opened, result) = tokio::sync::oneshot::channel();
        committer.open_sessions(vec![(session.clone(), opened)], now);
        result.blocking_recv().unwrap().unwrap();
        let provider_key = SigningKey::from_seed(&[2; 32]);
        let (reply, acks) = tokio::sync::mpsc::channel(1024);
        Harness {
            _folder: folder,
            committer,
            connection: ProviderConnection::new(Name::new("p1").unwrap(), provider_key.public_key()),
            session,
            provider_key,
            acks,
            reply,
        }
    }

    impl Harness {
        fn message(&self, sequence: u64, units: u64) -> Signed<Accounting> {
            Signed::sign(
                Accounting {
                    service_id: ServiceId(1),
                    kind: AccountingKind::INTERIM,
                    session_id: SessionId([3; 16]),
                    sequence,
                    credential_digest: self.session.credential_digest,
                    usage: Usage {
                        units: Some(units),
                        ..Usage::default()
                    },
                },
                &self.provider_key,
            )
            .unwrap()
        }

        fn commit(&mut self, messages: &[Signed<Accounting>]) -> Vec<AckStatus> {
            let records = messages
                .iter()
                .map(|message| {
                    Verified::new(Admitted {
                        message: message.clone(),
                        connection: self.connection.clone(),
                        received_ms: now_ms(),
                        reply: self.reply.clone(),
                    })
                })
                .collect();
            self.committer.commit_records(vec![records], now_ms());
            let mut answers = Vec::new();
            while let Ok(sent) = self.acks.try_recv() {
                sent.append_to(&mut answers);
            }
            assert_eq!(answers.len(), messages.len(), "one answer per message");
            answers.into_iter().map(|answer| answer.status).collect()
        }
    }

    #[test]
    fn group_dedup_and_conflicts() {
        let mut harness = harness(0);
        let first = harness.message(1, 5);
        let conflicting = harness.message(1, 6);
        let statuses = harness.commit(&[first.clone(), first.clone(), conflicting.clone(), harness.message(2, 1)]);
        assert_eq!(
            statuses,
            vec![
                AckStatus::STORED,
                AckStatus::DUPLICATE,
                AckStatus::CONFLICTING_DUPLICATE,
                AckStatus::STORED
            ]
        );
        assert_eq!(
            harness.commit(&[first, conflicting]),
            vec![AckStatus::DUPLICATE, AckStatus::CONFLICTING_DUPLICATE]
        );
        // Far beyond the in-memory window, then back: the fingerprint index answers.
        let far = harness.message(1_000, 1);
        assert_eq!(harness.commit(&[far]), vec![AckStatus::STORED]);
        assert_eq!(harness.commit(&[harness.message(2, 1)]), vec![AckStatus::DUPLICATE]);
        assert_eq!(harness.commit(&[harness.message(3, 1)]), vec![AckStatus::STORED]);
        assert_eq!(harness.committer.store.record_count().unwrap(), 4);
    }

    #[test]
    fn dedup_state_survives_a_restart() {
        let mut harness = harness(0);
        let message = harness.message(1, 5);
        assert_eq!(harness.commit(std::slice::from_ref(&message)), vec![AckStatus::STORED]);
        let store = harness.committer.store.clone();
        let table = Arc::new(SessionTable::default());
        harness.committer = Committer::new(store, table.clone(), TEST_SETTINGS).unwrap();
        assert!(table.get(&SessionId([3; 16])).is_some());
        assert_eq!(harness.commit(&[message]), vec![AckStatus::DUPLICATE]);
        assert_eq!(harness.commit(&[harness.message(2, 1)]), vec![AckStatus::STORED]);
    }

    /// A user's live sessions: counted when opened and at a restart, no
    /// longer once the Final is stored or the validity ends.
    #[test]
    fn live_sessions_per_user_follow_finals_expiry_and_restarts() {
        let alice = Name::new("alice").unwrap();
        let mut harness = harness(0);
        assert_eq!(harness.committer.table.live_sessions(&alice), 1);
        harness.restart();
        assert_eq!(harness.committer.table.live_sessions(&alice), 1, "recounted at start");
        // The validity ends (an hour from now): the watchdog uncounts it.
        harness.committer.tick(now_ms() + 2 * 3_600_000);
        assert_eq!(harness.committer.table.live_sessions(&alice), 0, "expired");
        // A new harness: a Final closes the session.
        let mut harness = self::harness(0);
        let mut last = harness.message(1, 1);
        let mut fields = last.value().clone();
        fields.kind = AccountingKind::FINAL;
        last = Signed::sign(fields, &harness.provider_key).unwrap();
        assert_eq!(harness.commit(&[last]), vec![AckStatus::STORED]);
        assert_eq!(harness.committer.table.live_sessions(&alice), 0, "closed by its Final");
        harness.restart();
        assert_eq!(
            harness.committer.table.live_sessions(&alice),
            0,
            "closed, not recounted"
        );
    }

    /// A session issued for a user's request keeps its request id and nonce
    /// in the store: the replay cache's memory after a restart.
    #[test]
    fn a_sessions_request_survives_in_the_store() {
        let harness = harness(0);
        let store = harness.committer.store.clone();
        let request = (wire::RequestId([5; 16]), wire::Nonce([6; 16]));
        let mut fields = harness.session.credential.value().clone();
        fields.session_id = SessionId([4; 16]);
        let credential = Signed::sign(fields, &SigningKey::from_seed(&[1; 32])).unwrap();
        let created_ms = now_ms();
        let session = SessionInfo::for_request(Name::new("p1").unwrap(), credential, created_ms, Some(request));
        store
            .insert_session(&session, &SessionProgress::new(created_ms))
            .unwrap();
        let requests = store.requests_since(created_ms - 1).unwrap();
        assert_eq!(
            requests,
            vec![(Name::new("alice").unwrap(), request.0, request.1, created_ms)],
            "only the session issued for a request, with it"
        );
        assert!(store.requests_since(created_ms + 1).unwrap().is_empty());
        let loaded = store.load_sessions().unwrap();
        let reloaded = loaded
            .iter()
            .find(|stored| stored.info.session_id() == SessionId([4; 16]))
            .unwrap();
        assert_eq!(reloaded.info.request, Some(request));
        let plain = loaded
            .iter()
            .find(|stored| stored.info.session_id() == SessionId([3; 16]))
            .unwrap();
        assert_eq!(plain.info.request, None);
    }

    impl Harness {
        /// The committer's progress of the test session.
        fn progress(&self) -> SessionProgress {
            self.committer.sessions[&SessionId([3; 16])].1
        }

        /// A crash and a start: a new committer over the same store.
        fn restart(&mut self) {
            let store = self.committer.store.clone();
            self.committer = Committer::new(store, Arc::new(SessionTable::default()), TEST_SETTINGS).unwrap();
        }
    }

    /// Progress rides in markers for in-order messages and in `progress`
    /// otherwise: whichever way it was written, a restart recovers exactly
    /// the progress the committer had.
    #[test]
    fn progress_survives_restarts_in_and_out_of_order() {
        let mut harness = harness(0);
        let steps: Vec<Vec<u64>> = vec![
            vec![1, 2, 3], // in order: progress rides in the markers
            vec![10],      // a gap
            vec![5],       // out of order: `progress` is written
            vec![11, 12],  // in order again: markers newer than `progress`
            vec![7, 13],   // out of order then in order, one group
            vec![14, 9],   // in order then out of order, one group
            vec![200],     // beyond the in-memory window
            vec![100],     // far below it
            vec![201, 202, 203],
        ];
        for step in steps {
            let messages: Vec<_> = step
                .iter()
                .map(|sequence| harness.message(*sequence, *sequence))
                .collect();
            assert!(
                harness
                    .commit(&messages)
                    .iter()
                    .all(|status| *status == AckStatus::STORED)
            );
            let before = harness.progress();
            harness.restart();
            assert_eq!(harness.progress(), before, "after storing {step:?}");
            // Every stored sequence is still a duplicate, every gap still new.
            assert_eq!(harness.commit(&messages[..1]), vec![AckStatus::DUPLICATE]);
        }
        let mut last = harness.message(204, 1).value().clone();
        last.kind = AccountingKind::FINAL;
        let last = Signed::sign(last, &harness.provider_key).unwrap();
        assert_eq!(harness.commit(std::slice::from_ref(&last)), vec![AckStatus::STORED]);
        let before = harness.progress();
        harness.restart();
        assert_eq!(harness.progress(), before);
        assert_eq!(before.final_sequence, Some(204));
        assert_eq!(
            harness.commit(&[harness.message(205, 1)]),
            vec![AckStatus::SESSION_CLOSED]
        );
        assert_eq!(harness.commit(&[harness.message(8, 1)]), vec![AckStatus::STORED]);
        let before = harness.progress();
        harness.restart();
        assert_eq!(harness.progress(), before);
        assert_eq!(before.message_count, 18);
    }

    #[test]
    fn the_watchdog_flag_reaches_the_records() {
        let mut harness = harness(1);
        assert_eq!(harness.commit(&[harness.message(1, 1)]), vec![AckStatus::STORED]);
        harness.committer.tick(now_ms() + 5_000);
        assert_eq!(harness.commit(&[harness.message(2, 1)]), vec![AckStatus::STORED]);
        let records = harness.committer.store.records(0, 10).unwrap();
        assert!(!records[0].1.flags.missed_interim());
        assert!(records[1].1.flags.missed_interim());
    }

    #[test]
    fn closed_sessions_are_pruned_after_the_dedup_window() {
        let mut harness = harness(0);
        let mut last = harness.message(1, 1).value().clone();
        last.kind = AccountingKind::FINAL;
        let last = Signed::sign(last, &harness.provider_key).unwrap();
        assert_eq!(harness.commit(std::slice::from_ref(&last)), vec![AckStatus::STORED]);
        harness.committer.tick(now_ms() + TEST_SETTINGS.dedup_window_ms / 2);
        assert_eq!(harness.commit(std::slice::from_ref(&last)), vec![AckStatus::DUPLICATE]);
        harness
            .committer
            .tick(now_ms() + TEST_SETTINGS.dedup_window_ms + 60_000);
        assert_eq!(harness.commit(&[last]), vec![AckStatus::UNKNOWN_SESSION]);
        assert!(
            harness
                .committer
                .store
                .fingerprint(SessionId([3; 16]), 1)
                .unwrap()
                .is_none()
        );
    }
}
