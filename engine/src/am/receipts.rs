//! Session receipts (docs/protocol.md 4.20, 4.21): the AM's signed
//! statement of what it holds for a session, built from the committer's
//! state and signed with the node's key.
//!
//! - When a session's Final Accounting is stored, the committer hands the
//!   session to [`push_closed`], which signs its receipt and pushes it to
//!   the provider's newest connection (one stream, the AM writes the frame
//!   and finishes; at most [`PUSHES_MAX`] at once and
//!   [`PUSHES_PER_CONNECTION_MAX`] per connection, each bounded by
//!   [`PUSH_TIMEOUT`]). It pushes again when a late interim (numbered
//!   below the Final) is stored after the Final. A provider that is not connected, or a push that
//!   does not fit, gets none: it (or the user) asks with a Receipt Request.
//! - A Receipt Request on a user connection, authenticated with the session
//!   key, is answered with the session's receipt as it stands ([`answer`]).
//!
//! The cost is one Ed25519 signature per receipt (docs/performance.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::Semaphore;
use wire::{ErrorCode, ErrorMessage, Maced, Name, ReceiptRequest, SessionReceipt, Signed, SigningKey, UsageSums};

use super::context::Context;
use super::ingest::Busy;
use super::session::{SessionInfo, SessionProgress};
use crate::clock::now_ms;

/// Receipt pushes in flight at once; more closed sessions wait in the
/// committer's queue of closed sessions.
pub const PUSHES_MAX: usize = 64;
/// Receipt pushes in flight on one provider connection; beyond it a push is
/// dropped (the provider asks for the receipt instead).
pub const PUSHES_PER_CONNECTION_MAX: usize = 4;
/// Receipt Requests answered at once (each asks the committer for the
/// session's state and signs); beyond it, BUSY.
pub const QUERIES_MAX: usize = 64;
/// The whole push of one receipt: open the stream, write, finish, and the
/// provider's side finished.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Closed sessions waiting for their receipt's push; beyond it a closed
/// session gets no push (counted in `acct_receipts_total{outcome="dropped"}`).
pub const CLOSED_QUEUE_MAX: usize = 4096;

/// A session whose Final Accounting was just stored, with its state then.
pub type ClosedSession = (Arc<SessionInfo>, SessionProgress);

/// The receipt of `info`'s session at `progress`, issued by `node` at
/// `now_ms`; `None` when the session stored messages before this AM kept
/// receipts.
pub fn receipt(node: &Name, info: &SessionInfo, progress: &SessionProgress, now_ms: u64) -> Option<SessionReceipt> {
    let state = progress.receipt?;
    let credential = info.credential.value();
    Some(SessionReceipt {
        node: node.clone(),
        session_id: credential.session_id,
        provider: info.provider.clone(),
        user_id: credential.user_id.clone(),
        service_id: credential.service_id,
        issued_ms: now_ms,
        message_count: progress.message_count,
        highest_sequence: progress.sequence_max,
        final_stored: progress.is_closed(),
        sums: UsageSums {
            units: state.units,
            bytes_up: state.bytes_up,
            bytes_down: state.bytes_down,
            duration_ms: state.duration_ms,
            requests: progress.requests_total,
        },
        digest: state.digest,
    })
}

/// Sign `receipt` with the node's key.
fn sign(receipt: SessionReceipt, key: &SigningKey) -> Result<Signed<SessionReceipt>, ErrorMessage> {
    Signed::sign(receipt, key)
        .map_err(|error| ErrorMessage::new(ErrorCode::INTERNAL, &format!("signing the receipt: {error}")))
}

/// Answer a Receipt Request: the receipt, a Redirect to the session's
/// partition, or an Error (SESSION_REFUSED for a session this node does not
/// hold or a MAC that does not verify, without saying which;
/// RECEIPT_UNAVAILABLE for a session begun before receipts; BUSY when
/// [`QUERIES_MAX`] are being answered or the committer is busy). The MAC is
/// checked before the committer is asked: an unauthenticated request costs
/// one table lookup and one HMAC.
pub(super) async fn answer(context: &Context, request: &Maced<ReceiptRequest>, out: &mut BytesMut) {
    let session_id = request.value().session_id;
    if let Some(redirect) = context.placement.redirect_for_session(&session_id) {
        metrics::counter!("acct_redirects_total", "to" => redirect.node.to_string()).increment(1);
        redirect.encode_frame(out);
        return;
    }
    let outcome = state_of(context, request).await.and_then(|(info, progress)| {
        match receipt(&context.node, &info, &progress, now_ms()) {
            None => Err(ErrorMessage::new(
                ErrorCode::RECEIPT_UNAVAILABLE,
                "the session stored messages before this AM kept receipts",
            )),
            Some(receipt) => sign(receipt, &context.signing_key),
        }
    });
    match outcome {
        Ok(receipt) => {
            metrics::counter!("acct_receipts_total", "path" => "request", "outcome" => "sent").increment(1);
            receipt.encode_frame(out);
        }
        Err(error) => {
            metrics::counter!("acct_receipts_total", "path" => "request", "outcome" => "refused").increment(1);
            error.encode_frame(out);
        }
    }
}

/// The session's committed state, once the request's MAC verified.
async fn state_of(context: &Context, request: &Maced<ReceiptRequest>) -> Result<ClosedSession, ErrorMessage> {
    let refused = || ErrorMessage::new(ErrorCode::SESSION_REFUSED, "no such session here, or a bad MAC");
    let busy = || ErrorMessage::new(ErrorCode::BUSY, "too many receipt requests now; retry later");
    let session_id = request.value().session_id;
    let info = context.pipeline.table.get(&session_id).ok_or_else(refused)?;
    request
        .verify(&info.credential.value().session_key)
        .map_err(|_| refused())?;
    let _query = context.receipt_queries.try_acquire().map_err(|_| busy())?;
    match context.pipeline.session_state(session_id).await {
        Ok(Some(state)) => Ok(state),
        Ok(None) => Err(refused()),
        Err(Busy) => Err(busy()),
    }
}

/// Push each closed session's receipt to its provider, until the committer
/// stops (its sender dropped) or the AM's state is gone.
pub(super) async fn push_closed(mut closed: tokio::sync::mpsc::Receiver<ClosedSession>, context: Weak<Context>) {
    let pushes = Arc::new(Semaphore::new(PUSHES_MAX));
    // Signing (18 µs a receipt) runs below the ingest's priority, as export does.
    let signer = serving::background::Background::start("acct-receipts", 1);
    // Pushes in flight per provider connection: one that does not serve
    // its pushes holds at most PUSHES_PER_CONNECTION_MAX of them.
    let per_connection: Arc<Mutex<HashMap<usize, usize>>> = Arc::default();
    while let Some((info, progress)) = closed.recv().await {
        let Some(context) = context.upgrade() else { return };
        let Some(receipt) = receipt(&context.node, &info, &progress, now_ms()) else {
            continue;
        };
        let key = context.signing_key.clone();
        let Ok(Ok(receipt)) = signer.run(move || sign(receipt, &key)).await else {
            continue;
        };
        let Some(connection) = context.providers.newest(&info.provider) else {
            metrics::counter!("acct_receipts_total", "path" => "push", "outcome" => "not_connected").increment(1);
            continue;
        };
        drop(context);
        let id = connection.stable_id();
        let admitted = per_connection.lock().is_ok_and(|mut counts| {
            let count = counts.entry(id).or_insert(0);
            *count += 1;
            *count <= PUSHES_PER_CONNECTION_MAX
        });
        if !admitted {
            release(&per_connection, id);
            metrics::counter!("acct_receipts_total", "path" => "push", "outcome" => "dropped").increment(1);
            continue;
        }
        let Ok(permit) = pushes.clone().acquire_owned().await else {
            return;
        };
        let per_connection = per_connection.clone();
        tokio::spawn(async move {
            let outcome = match tokio::time::timeout(PUSH_TIMEOUT, push(&connection, &receipt)).await {
                Ok(Ok(())) => "sent",
                Ok(Err(())) | Err(_) => "failed",
            };
            metrics::counter!("acct_receipts_total", "path" => "push", "outcome" => outcome).increment(1);
            release(&per_connection, id);
            drop(permit);
        });
    }
}

fn release(per_connection: &Mutex<HashMap<usize, usize>>, id: usize) {
    if let Ok(mut counts) = per_connection.lock()
        && let Some(count) = counts.get_mut(&id)
    {
        *count -= 1;
        if *count == 0 {
            counts.remove(&id);
        }
    }
}

/// One push: a stream the AM opens, the receipt, the AM's finish; done once
/// the provider has read it all (its side is not read: it may answer
/// nothing, or an Error if it does not know the frame).
async fn push(connection: &quinn::Connection, receipt: &Signed<SessionReceipt>) -> Result<(), ()> {
    let (mut send, receive) = connection.open_bi().await.map_err(drop)?;
    drop(receive);
    let mut frame = BytesMut::new();
    receipt.encode_frame(&mut frame);
    send.write_all(&frame).await.map_err(drop)?;
    send.finish().map_err(drop)?;
    send.stopped().await.map_err(drop)?;
    Ok(())
}
