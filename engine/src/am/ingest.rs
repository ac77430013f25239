//! The ingest pipeline without its network front: the verifier threads and
//! the committer thread with their bounded queues. `provider_stream` feeds
//! it from QUIC streams; the in-process benchmark feeds it directly.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;

use tokio::sync::Semaphore;
use wire::AckStatus;

use super::codes::SessionNotStored;
use super::commit::{CommitSettings, Committer};
use super::pipeline::{Admitted, CommitCommand, READ_BATCH_MESSAGES_MAX, SessionTable};
use super::receipts::{CLOSED_QUEUE_MAX, ClosedSession};
use super::session::{SessionInfo, TimeBounds};
use super::shed::{ShedReason, Shedder};
use super::store::Store;
use crate::config::IngestConfig;

/// The verify queue: batches of admitted messages (one per stream read),
/// bounded in messages by a semaphore with one permit per queued message.
/// Handing over a batch costs one channel operation, not one per message.
#[derive(Clone)]
pub struct VerifyQueue {
    batches: async_channel::Sender<super::verify::QueuedBatch>,
    permits: Arc<Semaphore>,
    /// The queue's bound in messages (its permits when empty).
    capacity: usize,
    /// Overload control: sheds reads while the queue's delay is above
    /// its target.
    shedder: Arc<Shedder>,
}

impl VerifyQueue {
    /// Queue `batch` (at most [`READ_BATCH_MESSAGES_MAX`] messages),
    /// unless overload control sheds it, waiting at most `wait` for room.
    /// On failure the batch comes back with the answer its messages get:
    /// BUSY (shed, or no room in time; counted in
    /// `acct_shed_messages_total` by reason) or SHUTTING_DOWN.
    pub async fn submit(&self, batch: Vec<Admitted>, wait: Duration) -> Result<(), (Vec<Admitted>, AckStatus)> {
        if batch.is_empty() {
            return Ok(());
        }
        let queued = self.capacity.saturating_sub(self.permits.available_permits());
        if self.shedder.shed(queued, std::time::Instant::now()) {
            return Err(shed(batch, ShedReason::QueueDelay));
        }
        let count = u32::try_from(batch.len()).unwrap_or(u32::MAX);
        let permits = match self.permits.try_acquire_many(count) {
            Ok(permits) => permits,
            Err(tokio::sync::TryAcquireError::Closed) => return Err((batch, AckStatus::SHUTTING_DOWN)),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                match tokio::time::timeout(wait, self.permits.acquire_many(count)).await {
                    Ok(Ok(permits)) => permits,
                    Ok(Err(_closed)) => return Err((batch, AckStatus::SHUTTING_DOWN)),
                    Err(_elapsed) => return Err(shed(batch, ShedReason::QueueFull)),
                }
            }
        };
        // The verifier returns the permits when it takes the batch.
        permits.forget();
        match self.batches.try_send((std::time::Instant::now(), batch)) {
            Ok(()) => Ok(()),
            Err(error) => {
                self.permits.add_permits(count as usize);
                Err((error.into_inner().1, AckStatus::SHUTTING_DOWN))
            }
        }
    }
}

/// A batch answered BUSY at admission, counted by why.
fn shed(batch: Vec<Admitted>, reason: ShedReason) -> (Vec<Admitted>, AckStatus) {
    metrics::counter!("acct_shed_messages_total", "reason" => reason.label()).increment(batch.len() as u64);
    (batch, AckStatus::BUSY)
}

/// The committer's queue is full, or it did not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// Longest wait for the committer to answer a session's state.
pub const SESSION_STATE_TIMEOUT: Duration = Duration::from_secs(5);

/// A running pipeline.
pub struct Ingest {
    /// The sessions, for admission.
    pub table: Arc<SessionTable>,
    verify_queue: VerifyQueue,
    commit_queue: crossbeam_channel::Sender<CommitCommand>,
    threads: Vec<JoinHandle<()>>,
    /// Sessions whose Final was just stored, until taken.
    closed: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<ClosedSession>>>,
}

impl Ingest {
    /// Recover the sessions from `store` and start the threads.
    pub fn start(store: Arc<Store>, settings: &IngestConfig) -> anyhow::Result<Self> {
        let table = Arc::new(SessionTable::default());
        let mut committer = Committer::new(
            store,
            table.clone(),
            CommitSettings {
                group_messages_max: settings.commit_group_messages_max.max(1),
                bounds: TimeBounds {
                    future_skew_ms_max: settings.future_skew_s.saturating_mul(1000),
                    lateness_ms_max: settings.lateness_s.saturating_mul(1000),
                },
                dedup_window_ms: settings.dedup_window_s.saturating_mul(1000),
                tick: Duration::from_secs(1),
            },
        )
        .context("recovering sessions from the store")?;
        let (closed_sender, closed) = tokio::sync::mpsc::channel(CLOSED_QUEUE_MAX);
        committer.notify_closed(closed_sender);
        // Verifiers hand the committer one command per verified batch: the
        // queue's bound in messages is its capacity times the batch size.
        let verify_batch = settings.verify_batch_messages_max.max(1);
        let commit_capacity = settings.commit_queue_messages_max.div_ceil(verify_batch).max(2);
        let (commit_queue, commit_input) = crossbeam_channel::bounded(commit_capacity);
        let mut threads = vec![
            std::thread::Builder::new()
                .name("acct-commit".into())
                .spawn(move || committer.run(commit_input))
                .context("starting the committer")?,
        ];
        let capacity = settings
            .verify_queue_messages_max
            .clamp(READ_BATCH_MESSAGES_MAX, Semaphore::MAX_PERMITS);
        let permits = Arc::new(Semaphore::new(capacity));
        // Unbounded channel, bounded in messages by the permits.
        let (batches, verify_input) = async_channel::unbounded();
        let shedder = Arc::new(Shedder::new(Duration::from_millis(settings.queue_delay_target_ms)));
        let verify_queue = VerifyQueue {
            batches,
            permits: permits.clone(),
            capacity,
            shedder: shedder.clone(),
        };
        let verifier_count = if settings.verify_threads == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            settings.verify_threads
        };
        for index in 0..verifier_count {
            let input = verify_input.clone();
            let output = commit_queue.clone();
            let permits = permits.clone();
            let shedder = shedder.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("acct-verify-{index}"))
                    .spawn(move || super::verify::run(input, &permits, &shedder, output, verify_batch))
                    .context("starting a verifier")?,
            );
        }
        Ok(Self {
            table,
            verify_queue,
            commit_queue,
            threads,
            closed: std::sync::Mutex::new(Some(closed)),
        })
    }

    /// The sessions whose Final Accounting was just stored, with their
    /// state then (once: the first caller takes the queue).
    pub fn closed_sessions(&self) -> Option<tokio::sync::mpsc::Receiver<ClosedSession>> {
        self.closed.lock().ok().and_then(|mut closed| closed.take())
    }

    /// A session's committed state (`Ok(None)`: this node holds no such
    /// session). Never waits for room in the committer's queue, and waits
    /// at most [`SESSION_STATE_TIMEOUT`] for the answer: `Err(Busy)` then,
    /// or when the queue is full (ingest comes first).
    pub async fn session_state(&self, session_id: wire::SessionId) -> Result<Option<ClosedSession>, Busy> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        match self
            .commit_queue
            .try_send(CommitCommand::SessionState { session_id, reply })
        {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(_)) => return Err(Busy),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Ok(None),
        }
        match tokio::time::timeout(SESSION_STATE_TIMEOUT, answer).await {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(_)) => Ok(None),
            Err(_) => Err(Busy),
        }
    }

    /// The verify queue's sending side.
    pub fn verify_queue(&self) -> &VerifyQueue {
        &self.verify_queue
    }

    /// Store a new session durably (through the committer, so it is ordered
    /// with the records), then make it visible to admission.
    pub async fn open_session(&self, session: Arc<SessionInfo>) -> Result<(), SessionNotStored> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queue = self.commit_queue.clone();
        let command = CommitCommand::OpenSession { session, reply };
        let sent = tokio::task::spawn_blocking(move || queue.send(command).is_ok())
            .await
            .unwrap_or(false);
        if !sent {
            return Err(SessionNotStored::Stopping);
        }
        answer.await.unwrap_or(Err(SessionNotStored::Stopping))
    }

    /// Close the queues and wait until everything queued is verified,
    /// committed and acked.
    pub fn shutdown(self) {
        let Self {
            verify_queue,
            commit_queue,
            threads,
            ..
        } = self;
        verify_queue.permits.close();
        drop(verify_queue);
        drop(commit_queue);
        for thread in threads {
            let _ = thread.join();
        }
    }
}
