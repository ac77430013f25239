//! The ingest pipeline without its network front: the verifier threads and
//! the committer thread with their bounded queues. `server` feeds it from
//! QUIC streams; the in-process benchmark feeds it directly.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;

use super::commit::{CommitSettings, Committer};
use super::pipeline::{CommitCommand, Pending, SessionTable};
use super::session::{SessionInfo, TimeBounds};
use super::store::Store;
use crate::config::IngestConfig;

/// A running pipeline.
pub struct Ingest {
    /// The sessions, for admission.
    pub table: Arc<SessionTable>,
    verify_queue: async_channel::Sender<Pending>,
    commit_queue: crossbeam_channel::Sender<CommitCommand>,
    threads: Vec<JoinHandle<()>>,
}

impl Ingest {
    /// Recover the sessions from `store` and start the threads.
    pub fn start(store: Arc<Store>, settings: &IngestConfig) -> anyhow::Result<Self> {
        let table = Arc::new(SessionTable::default());
        let committer = Committer::new(
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
        let (commit_queue, commit_input) = crossbeam_channel::bounded(settings.commit_queue_messages_max.max(1));
        let mut threads = vec![
            std::thread::Builder::new()
                .name("acct-commit".into())
                .spawn(move || committer.run(commit_input))
                .context("starting the committer")?,
        ];
        let (verify_queue, verify_input) = async_channel::bounded(settings.verify_queue_messages_max.max(1));
        let verifier_count = if settings.verify_threads == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            settings.verify_threads
        };
        for index in 0..verifier_count {
            let input = verify_input.clone();
            let output = commit_queue.clone();
            let batch_max = settings.verify_batch_messages_max;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("acct-verify-{index}"))
                    .spawn(move || super::verify::run(input, output, batch_max))
                    .context("starting a verifier")?,
            );
        }
        Ok(Self {
            table,
            verify_queue,
            commit_queue,
            threads,
        })
    }

    /// The verify queue's sending side.
    pub fn verify_queue(&self) -> &async_channel::Sender<Pending> {
        &self.verify_queue
    }

    /// Store a new session durably (through the committer, so it is ordered
    /// with the records), then make it visible to admission.
    pub async fn open_session(&self, session: Arc<SessionInfo>) -> Result<(), String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queue = self.commit_queue.clone();
        let command = CommitCommand::OpenSession { session, reply };
        let sent = tokio::task::spawn_blocking(move || queue.send(command).is_ok())
            .await
            .unwrap_or(false);
        if !sent {
            return Err("the AM is stopping".into());
        }
        answer.await.unwrap_or_else(|_| Err("the AM is stopping".into()))
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
        drop(verify_queue);
        drop(commit_queue);
        for thread in threads {
            let _ = thread.join();
        }
    }
}
