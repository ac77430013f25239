//! User connections: no client certificate (a user's requests carry its
//! certificate and are signed with its key), their own bounds apart from
//! the providers' ([`USER_CONNECTIONS_MAX`], per address
//! [`USER_CONNECTIONS_PER_ADDRESS_MAX`], [`USER_IDLE`]), and streams of
//! requests: the Service List (201) and Service Credential Requests (202,
//! answered by `issue`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::sync::watch;
use tokio::task::JoinSet;
use wire::limits::SMALL_FRAME_BODY_BYTES_MAX;
use wire::{ErrorCode, ErrorMessage, Message};

use super::abuse::close_code;
use super::codes::body_error;
use super::context::Context;
use super::credentials::ServiceDirectory;
use super::frames::FrameReader;
use super::issue::issue;

/// Connections without a client certificate (users) at once; they do not
/// count against `connections_max`, which stays for providers.
pub const USER_CONNECTIONS_MAX: usize = 4_096;
/// User connections from one IPv4 address or one IPv6 /64 at once: one
/// address cannot hold every user slot (a portal relaying many users'
/// requests needs only a few connections; requests are per stream).
pub const USER_CONNECTIONS_PER_ADDRESS_MAX: usize = 64;
/// A user connection is closed when this long passes without a complete
/// request (counted from the handshake and from each request answered),
/// whatever its streams hold: a stream sitting on part of a frame, or the
/// AM's own keep-alives, do not keep it open.
pub const USER_IDLE: Duration = Duration::from_secs(30);
/// Service Lists one user connection may ask for: the list is the AM's
/// largest answer (about 800 KB for the development default) to a 6-byte
/// request, so a connection gets it this often at most; more are answered
/// Error 7 BUSY. With [`USER_CONNECTIONS_PER_ADDRESS_MAX`] and a handshake
/// per connection, that bounds what one address can make the AM send.
pub const SERVICE_LISTS_PER_CONNECTION_MAX: u32 = 2;
/// Most bytes a request stream reads at once (requests are small frames).
const REQUEST_READ_BYTES: usize = 16 * 1024;

/// The service list's frames (201), encoded once at start.
pub(super) fn encode_service_list(directory: &ServiceDirectory) -> bytes::Bytes {
    let mut out = BytesMut::new();
    let mut parts = directory
        .entries()
        .chunks(wire::limits::SERVICE_LIST_ENTRIES_PER_FRAME_MAX)
        .peekable();
    if parts.peek().is_none() {
        wire::ServiceList {
            done: true,
            entries: Vec::new(),
        }
        .encode_frame(&mut out);
    }
    while let Some(part) = parts.next() {
        wire::ServiceList {
            done: parts.peek().is_none(),
            entries: part.to_vec(),
        }
        .encode_frame(&mut out);
    }
    out.freeze()
}

/// A user's connection: streams carrying Service List Requests and
/// Service Credential Requests, one answer each. It closes [`USER_IDLE`]
/// after its handshake or its last answered request, whatever its streams
/// hold.
pub(super) async fn serve_user_connection(
    connection: quinn::Connection,
    context: &Arc<Context>,
    stop: watch::Receiver<bool>,
) {
    metrics::gauge!("acct_user_connections").increment(1.0);
    let activity = Arc::new(UserActivity::new());
    let mut streams = JoinSet::new();
    let mut stop_watch = stop.clone();
    loop {
        let idle_until = activity.last_request() + USER_IDLE;
        tokio::select! {
            changed = stop_watch.changed() => {
                if changed.is_err() || *stop_watch.borrow() { break; }
            }
            () = tokio::time::sleep_until(idle_until.into()) => {
                if activity.last_request() + USER_IDLE <= Instant::now() {
                    metrics::counter!("acct_user_connections_idle_total").increment(1);
                    break;
                }
            }
            accepted = connection.accept_bi() => {
                let Ok((send, receive)) = accepted else { break };
                streams.spawn(user_stream(send, receive, context.clone(), activity.clone(), stop.clone()));
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    // Streams waiting for bytes end with the connection (their reads fail);
    // one inside an issuance finishes it (bounded by the push's 5 s and the
    // store) and its answer is lost with the connection.
    connection.close(close_code::DONE.into(), b"");
    while streams.join_next().await.is_some() {}
    metrics::gauge!("acct_user_connections").decrement(1.0);
}

/// What a user connection's streams report to it: when a complete request
/// last arrived or was answered, and how many Service Lists it was sent.
struct UserActivity {
    last_request: std::sync::Mutex<Instant>,
    service_lists: std::sync::atomic::AtomicU32,
}

impl UserActivity {
    fn new() -> Self {
        Self {
            last_request: std::sync::Mutex::new(Instant::now()),
            service_lists: std::sync::atomic::AtomicU32::new(0),
        }
    }

    fn last_request(&self) -> Instant {
        *self
            .last_request
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A complete request arrived or was answered.
    fn touch(&self) {
        *self
            .last_request
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    /// Whether this connection may be sent one more Service List.
    fn take_service_list(&self) -> bool {
        self.service_lists
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |sent| {
                (sent < SERVICE_LISTS_PER_CONNECTION_MAX).then_some(sent + 1)
            })
            .is_ok()
    }
}

/// One stream of a user connection: requests in, one answer each. A frame
/// that does not decode ends the stream with its Error.
async fn user_stream(
    mut send: quinn::SendStream,
    receive: quinn::RecvStream,
    context: Arc<Context>,
    activity: Arc<UserActivity>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reader = FrameReader::new(receive, SMALL_FRAME_BODY_BYTES_MAX, REQUEST_READ_BYTES);
    let mut out = BytesMut::new();
    while let Some(frame) = reader.next_request_or_answer_error(&mut stop, &mut send).await {
        out.clear();
        // A complete request: the idle clock starts again now (an
        // issuance in progress is not idle) and again once answered.
        activity.touch();
        match frame.decode() {
            Ok(Message::ServiceListRequest(_)) if activity.take_service_list() => {
                // Shared bytes, encoded once: a request costs no copy.
                if send.write_chunk(context.service_list.clone()).await.is_err() {
                    return;
                }
                activity.touch();
                continue;
            }
            Ok(Message::ServiceListRequest(_)) => ErrorMessage::new(
                ErrorCode::BUSY,
                &format!(
                    "a connection is sent the service list {SERVICE_LISTS_PER_CONNECTION_MAX} times at most; reconnect"
                ),
            )
            .encode_frame(&mut out),
            Ok(Message::ServiceCredentialRequest(request)) => match issue(&context, &request).await {
                Ok(credential) => credential.encode_frame(&mut out),
                Err(error) => error.encode_frame(&mut out),
            },
            Ok(Message::ReceiptRequest(request)) => super::receipts::answer(&context, &request, &mut out).await,
            Ok(other) => ErrorMessage::new(
                ErrorCode::UNEXPECTED_MESSAGE,
                &format!(
                    "a user stream carries service list, credential and receipt requests only, not type 0x{:02x}",
                    other.message_type().0
                ),
            )
            .encode_frame(&mut out),
            Err(error) => body_error(&error).encode_frame(&mut out),
        }
        if send.write_all(&out).await.is_err() {
            return;
        }
        activity.touch();
    }
    let _ = send.finish();
}
