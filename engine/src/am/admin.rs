//! Admin streams: the operator's requests on a connection whose certificate
//! has the `am` role (`acct` tooling, loadgen): open a session on a
//! provider's behalf (answered by `issue`) and audit the hot store.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::sync::watch;
use wire::limits::SMALL_FRAME_BODY_BYTES_MAX;
use wire::{ErrorCode, ErrorMessage, Message};

use super::codes::body_error;
use super::context::Context;
use super::frames::FrameReader;
use super::issue::open_session;

/// Most bytes an admin stream reads at once.
const ADMIN_READ_BYTES: usize = 16 * 1024;

/// One admin stream: requests in, one answer each (an audit's answer comes
/// in parts). A frame that does not decode ends the stream with its Error.
pub(super) async fn admin_stream(
    mut send: quinn::SendStream,
    receive: quinn::RecvStream,
    context: Arc<Context>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reader = FrameReader::new(receive, SMALL_FRAME_BODY_BYTES_MAX, ADMIN_READ_BYTES);
    let mut out = BytesMut::new();
    while let Some(frame) = reader.next_request_or_answer_error(&mut stop, &mut send).await {
        out.clear();
        match frame.decode() {
            Ok(Message::AdminOpenSession(request)) => match open_session(&context, request).await {
                Ok(credential) => credential.encode_frame(&mut out),
                Err(error) => error.encode_frame(&mut out),
            },
            Ok(Message::AdminAuditRequest(_)) => {
                if !audit(&context, &mut send).await {
                    return;
                }
                continue;
            }
            Ok(other) => ErrorMessage::new(
                ErrorCode::UNEXPECTED_MESSAGE,
                &format!(
                    "an admin stream carries admin requests only, not type 0x{:02x}",
                    other.message_type().0
                ),
            )
            .encode_frame(&mut out),
            Err(error) => body_error(&error).encode_frame(&mut out),
        }
        if send.write_all(&out).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// Answer an audit request on `send`: read the hot store on a blocking
/// thread, then send the runs in parts. False if the stream is gone.
async fn audit(context: &Context, send: &mut quinn::SendStream) -> bool {
    let store = context.store.clone();
    let mut out = BytesMut::new();
    match tokio::task::spawn_blocking(move || store.audit_runs()).await {
        Ok(Ok((records, runs))) => {
            let mut parts = runs.chunks(wire::limits::AUDIT_RUNS_PER_FRAME_MAX).peekable();
            if parts.peek().is_none() {
                wire::AdminAuditReport {
                    done: true,
                    records,
                    runs: Vec::new(),
                }
                .encode_frame(&mut out);
            }
            while let Some(part) = parts.next() {
                let done = parts.peek().is_none();
                wire::AdminAuditReport {
                    done,
                    records: if done { records } else { 0 },
                    runs: part.to_vec(),
                }
                .encode_frame(&mut out);
                if out.len() >= 256 * 1024 {
                    if send.write_all(&out).await.is_err() {
                        return false;
                    }
                    out.clear();
                }
            }
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "audit: reading the store failed");
            ErrorMessage::new(ErrorCode::INTERNAL, &format!("reading the store: {error}")).encode_frame(&mut out);
        }
        Err(_) => ErrorMessage::new(ErrorCode::INTERNAL, "the audit task failed").encode_frame(&mut out),
    }
    send.write_all(&out).await.is_ok()
}
