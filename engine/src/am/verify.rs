//! The verifier threads: batch Ed25519 verification across connections.
//!
//! Each thread blocks for one submitted batch (the messages of one stream
//! read), then takes whatever else is queued until it holds `batch_max`
//! messages, so batches grow with load and no message waits for a batch to
//! fill. A bad signature is answered at once; the good ones of its batch go
//! on to the committer together, as one command.

use std::sync::atomic::Ordering;

use crossbeam_channel::Sender;
use wire::{AckEntry, AckStatus};

use super::pipeline::{
    Admitted, Answers, CommitCommand, ProviderConnection, READ_BATCH_MESSAGES_MAX, Verified, deliver,
};
use super::shed::Shedder;

/// A read batch in the verify queue, with when it was queued.
pub type QueuedBatch = (std::time::Instant, Vec<Admitted>);

/// Run one verifier until its input closes and is drained. `permits` bound
/// the verify queue in messages: a batch's permits go back when it is taken.
pub fn run(
    input: async_channel::Receiver<QueuedBatch>,
    permits: &tokio::sync::Semaphore,
    shedder: &Shedder,
    output: Sender<CommitCommand>,
    batch_max: usize,
) {
    let batch_max = batch_max.max(1);
    let mut batch: Vec<Admitted> = Vec::with_capacity(batch_max + READ_BATCH_MESSAGES_MAX);
    while let Ok(first) = input.recv_blocking() {
        take(&mut batch, first, permits, shedder);
        while batch.len() < batch_max {
            match input.try_recv() {
                Ok(next) => take(&mut batch, next, permits, shedder),
                Err(_) => break,
            }
        }
        metrics::histogram!("acct_verify_batch_messages").record(batch.len() as f64);
        let verdicts = verify(&batch);
        count_good_signatures(&batch, &verdicts);
        let verified = sort_out(&mut batch, verdicts);
        // Blocks when the committer is behind: backpressure flows to the
        // verify queue and from there to the QUIC streams.
        if !verified.is_empty() && output.send(CommitCommand::Records(verified)).is_err() {
            return;
        }
    }
}

/// Add a read batch to the verify batch; its queue permits go back, and
/// how long it waited in the verify queue is recorded
/// (`acct_verify_queue_seconds`: the queue's sojourn time, what overload
/// control judges by).
fn take(batch: &mut Vec<Admitted>, (queued, read): QueuedBatch, permits: &tokio::sync::Semaphore, shedder: &Shedder) {
    let now = std::time::Instant::now();
    let sojourn = now.saturating_duration_since(queued);
    metrics::histogram!("acct_verify_queue_seconds").record(sojourn.as_secs_f64());
    shedder.taken(sojourn, now);
    permits.add_permits(read.len());
    batch.extend(read);
}

/// One verdict per message: ZIP-215 batch verification, a failed batch
/// searched by halves (`wire::verify_batch`).
fn verify(batch: &[Admitted]) -> Vec<bool> {
    // The coefficients also hash the whole batch, so even a failed random
    // source leaves them unpredictable to a sender.
    let mut seed = [0u8; 32];
    if getrandom::fill(&mut seed).is_err() {
        metrics::counter!("acct_random_failures_total").increment(1);
    }
    let items: Vec<_> = batch
        .iter()
        .map(|admitted| admitted.message.batch_item(&admitted.connection.key))
        .collect();
    let verdicts = wire::verify_batch(&items, &seed);
    // One verdict per message, or messages would go unanswered.
    assert_eq!(verdicts.len(), batch.len(), "verify_batch answers every item");
    verdicts
}

/// Count good signatures per run of one connection's messages (a stream
/// hands over a read's messages together): one atomic add per run on the
/// connection's shared counter, not one per message.
fn count_good_signatures(batch: &[Admitted], verdicts: &[bool]) {
    let mut run: Option<(&ProviderConnection, u64)> = None;
    for (admitted, valid) in batch.iter().zip(verdicts) {
        if !*valid {
            continue;
        }
        match &mut run {
            Some((connection, count)) if std::ptr::eq(*connection, admitted.connection.as_ref()) => *count += 1,
            _ => {
                if let Some((connection, count)) = run.replace((admitted.connection.as_ref(), 1)) {
                    connection.conduct.good_signatures.fetch_add(count, Ordering::Relaxed);
                }
            }
        }
    }
    if let Some((connection, count)) = run {
        connection.conduct.good_signatures.fetch_add(count, Ordering::Relaxed);
    }
}

/// Empty the batch: the messages whose signature held, for the committer;
/// each of the others answered BAD_SIGNATURE at once and counted against
/// its connection (which may wake its streams with an abuse verdict).
fn sort_out(batch: &mut Vec<Admitted>, verdicts: Vec<bool>) -> Vec<Verified> {
    let mut bad = 0u64;
    let mut verified = Vec::with_capacity(batch.len());
    for (admitted, valid) in batch.drain(..).zip(verdicts) {
        if valid {
            verified.push(Verified::new(admitted));
            continue;
        }
        bad += 1;
        let conduct = &admitted.connection.conduct;
        conduct.bad_signatures.fetch_add(1, Ordering::Relaxed);
        if conduct.is_abusive() {
            conduct.abuse_found.notify_waiters();
        }
        let message_id = admitted.message.value().message_id();
        let status = AckStatus::BAD_SIGNATURE;
        deliver(&admitted.reply, Answers::One(AckEntry { message_id, status }));
    }
    if bad > 0 {
        metrics::counter!("acct_messages_total", "outcome" => "bad_signature").increment(bad);
    }
    verified
}
