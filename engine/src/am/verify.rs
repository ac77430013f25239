//! The verifier threads: batch Ed25519 verification across connections.
//!
//! Each thread blocks for one message, then takes whatever else is queued up
//! to `batch_max`, so batches grow with load (1 when idle, `batch_max` under
//! pressure) and no message waits for a batch to fill. A bad signature is
//! answered at once; the good ones of its batch go on to the committer.

use std::sync::atomic::Ordering;

use crossbeam_channel::Sender;
use wire::{AckEntry, AckStatus};

use super::pipeline::{CommitCommand, Pending, Verified};

/// Run one verifier until its input closes and is drained.
pub fn run(input: async_channel::Receiver<Pending>, output: Sender<CommitCommand>, batch_max: usize) {
    let batch_max = batch_max.max(1);
    let mut batch: Vec<Pending> = Vec::with_capacity(batch_max);
    while let Ok(first) = input.recv_blocking() {
        batch.push(first);
        while batch.len() < batch_max {
            match input.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        metrics::histogram!("acct_verify_batch_messages").record(batch.len() as f64);
        // The coefficients also hash the whole batch, so even a failed
        // random source leaves them unpredictable to a sender.
        let mut seed = [0u8; 32];
        if getrandom::fill(&mut seed).is_err() {
            metrics::counter!("acct_random_failures_total").increment(1);
        }
        let verdicts = {
            let items: Vec<_> = batch
                .iter()
                .map(|pending| pending.message.batch_item(&pending.connection.key))
                .collect();
            wire::verify_batch(&items, &seed)
        };
        let mut bad = 0u64;
        for (pending, valid) in batch.drain(..).zip(verdicts) {
            if valid {
                pending.connection.good_signatures.fetch_add(1, Ordering::Relaxed);
                // Blocks when the committer is behind: backpressure flows to
                // the verify queue and from there to the QUIC streams.
                if output.send(CommitCommand::Record(Verified::new(pending))).is_err() {
                    return;
                }
            } else {
                bad += 1;
                pending.connection.bad_signatures.fetch_add(1, Ordering::Relaxed);
                let _ = pending.reply.try_send(AckEntry {
                    message_id: pending.message.value().message_id(),
                    status: AckStatus::BAD_SIGNATURE,
                });
            }
        }
        if bad > 0 {
            metrics::counter!("acct_messages_total", "outcome" => "bad_signature").increment(bad);
        }
    }
}
