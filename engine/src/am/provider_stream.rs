//! Provider streams: accounting in, acks out. Each stream has a reader
//! (this task: read, decode, admit, hand batches to the verify queue) and
//! an ack writer (its own task: answers from the verifiers and the
//! committer, coalesced into Accounting Ack frames). Between them, the
//! stream's in-flight bound: a message takes a permit when it is admitted
//! and gives it back when its answer is written, so at the bound the reader
//! stops reading and QUIC flow control holds the provider.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use wire::limits::SMALL_FRAME_BODY_BYTES_MAX;
use wire::{Accounting, AccountingAck, AckEntry, AckStatus, ErrorCode, ErrorMessage, Message, Signed};

use super::codes::{body_error, frame_error, queue_refusal_outcome};
use super::context::Context;
use super::frames::FrameReader;
use super::pipeline::{AckSender, Admitted, Answers, ProviderConnection, READ_BATCH_MESSAGES_MAX, deliver};
use crate::clock::now_ms;

/// Most bytes a provider stream reads at once.
const PROVIDER_READ_BYTES: usize = 64 * 1024;

/// Completes when the provider has acknowledged every byte written on a
/// finished stream (or stopped it, or the connection is gone).
pub(super) type Delivered = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// One provider stream: read frames, admit, queue for verification, while
/// the ack writer answers. Returns when the stream ends, fails, the
/// provider is found abusive, or shutdown asks it to stop, with the ack
/// writer's task: it ends once every admitted message is answered, with
/// what tells when the provider has the answers (`None` if it is gone).
pub(super) async fn provider_stream(
    send: quinn::SendStream,
    receive: quinn::RecvStream,
    connection: &quinn::Connection,
    context: &Arc<Context>,
    provider: &Arc<ProviderConnection>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Option<Delivered>> {
    let inflight_max = context.config.stream_inflight_messages_max.max(1);
    let inflight = Arc::new(Semaphore::new(inflight_max));
    // Every send carries at least one answer and every answer holds a
    // permit: the channel never fills (see `pipeline::deliver`).
    let (ack_sender, ack_input) = mpsc::channel::<Answers>(inflight_max);
    let (error_sender, error_input) = oneshot::channel::<ErrorMessage>();
    let writer = tokio::spawn(write_acks(send, ack_input, error_input, inflight.clone()));

    let mut reader = FrameReader::new(receive, SMALL_FRAME_BODY_BYTES_MAX, PROVIDER_READ_BYTES);
    let mut admission = Admission {
        context,
        provider,
        inflight,
        ack_sender,
        batch: Vec::new(),
    };
    let fatal = read_accounting(&mut reader, connection, &mut admission, &mut stop).await;
    // Messages admitted before the stream ended are still verified and
    // answered (unless the AM is shutting down, which answers them so).
    let _ = admission.submit().await;
    match fatal {
        Some(error) => {
            provider.conduct.malformed_streams.fetch_add(1, Ordering::Relaxed);
            let _ = error_sender.send(error);
            reader.stop();
        }
        // The writer waits for this channel to close after the last ack.
        None => drop(error_sender),
    }
    // Every admitted message holds a clone of the ack sender until
    // answered: the writer ends once all are answered and written.
    drop(admission);
    writer
}

/// Read, decode and admit until the stream ends, fails, the provider is
/// found abusive, or shutdown. The Error to end the stream with when it
/// broke the protocol.
async fn read_accounting(
    reader: &mut FrameReader,
    connection: &quinn::Connection,
    admission: &mut Admission<'_>,
    stop: &mut watch::Receiver<bool>,
) -> Option<ErrorMessage> {
    let provider = admission.provider;
    loop {
        // One clock reading per read: the messages of a read arrived together.
        let received_ms = now_ms();
        loop {
            let frame = match reader.buffered() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    metrics::counter!("acct_frames_malformed_total").increment(1);
                    return Some(frame_error(&error));
                }
            };
            let message = match frame.decode() {
                Ok(Message::Accounting(message)) => message,
                Ok(other) => {
                    return Some(ErrorMessage::new(
                        ErrorCode::UNEXPECTED_MESSAGE,
                        &format!(
                            "a provider stream carries accounting only, not type 0x{:02x}",
                            other.message_type().0
                        ),
                    ));
                }
                Err(error) => {
                    metrics::counter!("acct_frames_malformed_total").increment(1);
                    return Some(body_error(&error));
                }
            };
            if !admission
                .admit(message, received_ms, reader.buffered_bytes(), stop)
                .await
            {
                return None;
            }
        }
        // Everything decoded from this read goes to verification at once.
        if !admission.submit().await || *stop.borrow() {
            return None;
        }
        // Verdicts arrive after admission: the verifiers signal when this
        // connection crosses the abuse line (registered before the check, so
        // that a signal in between is not lost). No timer: thousands of idle
        // streams cost no wakeups.
        let abuse = provider.conduct.abuse_found.notified();
        tokio::pin!(abuse);
        abuse.as_mut().enable();
        if provider.conduct.stops_reading() {
            return None;
        }
        tokio::select! {
            read = reader.read() => match read {
                Some(bytes) => {
                    if provider.conduct.read_and_check(bytes, || connection.stats().udp_rx.datagrams) {
                        return None;
                    }
                }
                None => return None,
            },
            _ = stop.changed() => return None,
            () = &mut abuse => return None,
        }
    }
}

/// A stream's admission: its in-flight permits, the batch it is filling
/// for the verify queue, and where its answers go.
struct Admission<'a> {
    context: &'a Context,
    provider: &'a Arc<ProviderConnection>,
    inflight: Arc<Semaphore>,
    ack_sender: AckSender,
    /// Admitted, not yet handed to the verify queue.
    batch: Vec<Admitted>,
}

impl Admission<'_> {
    /// Admit one message: take its in-flight permit (waiting at the bound),
    /// check its session, add it to the batch. False when the stream must
    /// stop reading (abuse, shutdown).
    async fn admit(
        &mut self,
        message: Signed<Accounting>,
        received_ms: u64,
        buffered_bytes: usize,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        if !self.take_permit(stop).await {
            return false;
        }
        let provider = self.provider;
        let message_id = message.value().message_id();
        let admitted = self
            .context
            .pipeline
            .table
            .admit(&message.value().session_id, &provider.name);
        if let Err(status) = admitted {
            metrics::counter!("acct_messages_total", "outcome" => "rejected").increment(1);
            // A session of another partition: the provider sent it to the
            // wrong node (its map is old) and is told to send it there;
            // nothing is stored here. Anyone can write another partition's
            // id into a made-up session id, so these count toward the
            // foreign-session rule like unknown sessions (a correct provider
            // never sends them in bulk).
            let status = if status == AckStatus::UNKNOWN_SESSION
                && self.context.placement.is_elsewhere(&message_id.session_id)
            {
                metrics::counter!("acct_wrong_partition_total").increment(1);
                AckStatus::WRONG_PARTITION
            } else {
                status
            };
            deliver(&self.ack_sender, Answers::One(AckEntry { message_id, status }));
            provider.conduct.foreign_sessions.fetch_add(1, Ordering::Relaxed);
            return !provider.conduct.bills_foreign_sessions();
        }
        if self.context.echo_floor {
            // The harness's floor: answered as if stored, nothing verified
            // or stored (see `AmSettings::echo_floor`).
            let status = AckStatus::STORED;
            deliver(&self.ack_sender, Answers::One(AckEntry { message_id, status }));
            return !provider.conduct.stops_reading();
        }
        if self.batch.capacity() == 0 {
            // Room for the rest of this read at once, sized by this
            // message (a stream's messages are alike): one allocation per
            // read instead of a Vec that doubles its way up.
            let frame_bytes = message.signed_bytes().len() + wire::limits::FRAME_HEADER_BYTES;
            self.batch
                .reserve((1 + buffered_bytes / frame_bytes).min(READ_BATCH_MESSAGES_MAX));
        }
        self.batch.push(Admitted {
            message,
            connection: provider.clone(),
            received_ms,
            reply: self.ack_sender.clone(),
        });
        if self.batch.len() >= READ_BATCH_MESSAGES_MAX && !self.submit().await {
            return false;
        }
        !provider.conduct.stops_reading()
    }

    /// One in-flight permit, held until the message's answer is written.
    /// At the bound, hand over the batch first (so that the answers that
    /// free permits can come), then wait. False when the stream must stop.
    async fn take_permit(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        if let Ok(permit) = self.inflight.try_acquire() {
            permit.forget();
            return true;
        }
        if !self.submit().await {
            return false;
        }
        // A provider that stops reading its answers waits here: an abuse
        // verdict must still reach it.
        let abuse = self.provider.conduct.abuse_found.notified();
        tokio::pin!(abuse);
        abuse.as_mut().enable();
        if self.provider.conduct.stops_reading() {
            return false;
        }
        tokio::select! {
            permit = self.inflight.acquire() => match permit {
                Ok(permit) => {
                    permit.forget();
                    true
                }
                Err(_closed) => false,
            },
            _ = stop.changed() => false,
            () = &mut abuse => false,
        }
    }

    /// Hand the batch to the verify queue, waiting at most
    /// `admission_wait_ms` for room; if there is none, each message is
    /// answered BUSY (or SHUTTING_DOWN). False when the AM is shutting down.
    async fn submit(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let wait = Duration::from_millis(self.context.config.admission_wait_ms);
        // The batch moves into the queue; the next one grows only as far
        // as its read needs (most reads carry a few messages).
        let taken = std::mem::take(&mut self.batch);
        match self.context.pipeline.verify_queue().submit(taken, wait).await {
            Ok(()) => true,
            Err((refused, status)) => {
                metrics::counter!("acct_messages_total", "outcome" => queue_refusal_outcome(status))
                    .increment(refused.len() as u64);
                for pending in refused {
                    let message_id = pending.message.value().message_id();
                    deliver(&self.ack_sender, Answers::One(AckEntry { message_id, status }));
                }
                status != AckStatus::SHUTTING_DOWN
            }
        }
    }
}

/// The ack writer: answers in arrival order, as many as are ready per
/// frame (up to `ACK_ENTRIES_MAX`), each written answer's permit given
/// back. After the last answer (the reader dropped its sender and every
/// admitted message was answered) it writes the stream's Error if there is
/// one, finishes, and returns what completes once the provider has it all.
/// `None` when the provider is gone: what was stored stays stored, and is
/// answered DUPLICATE when sent again.
async fn write_acks(
    mut send: quinn::SendStream,
    mut ack_input: mpsc::Receiver<Answers>,
    error_input: oneshot::Receiver<ErrorMessage>,
    inflight: Arc<Semaphore>,
) -> Option<Delivered> {
    // Grown on first use to what the stream's acks need, then reused: an
    // idle stream (of thousands) holds no 16 KiB up front.
    let mut frame = BytesMut::new();
    let mut entries = Vec::new();
    while let Some(first) = ack_input.recv().await {
        first.append_to(&mut entries);
        // Bounded by the stream's in-flight bound: every answer holds a permit.
        while entries.len() < wire::limits::ACK_ENTRIES_MAX {
            match ack_input.try_recv() {
                Ok(answers) => answers.append_to(&mut entries),
                Err(_) => break,
            }
        }
        let count = entries.len();
        frame.clear();
        AccountingAck {
            entries: std::mem::take(&mut entries),
        }
        .encode_frames(&mut frame);
        let written = send.write_all(&frame).await.is_ok();
        inflight.add_permits(count);
        if !written {
            // The provider is gone: give back the permits of what is
            // still to be answered, so that the reader is not held.
            while let Some(answers) = ack_input.recv().await {
                inflight.add_permits(answers.len());
            }
            return None;
        }
    }
    if let Ok(error) = error_input.await {
        frame.clear();
        error.encode_frame(&mut frame);
        let _ = send.write_all(&frame).await;
    }
    let _ = send.finish();
    let stopped = send.stopped();
    Some(Box::pin(async move {
        let _ = stopped.await;
    }))
}
