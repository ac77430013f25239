//! One accepted connection, from its handshake to its close: the handshake
//! under its bounds (`handshakes`), the peer's identity and what it may do
//! (provider, admin or user; denied or backed-off names are refused), then
//! the connection's streams until it ends, is revoked, is closed for abuse
//! (the verdict and its code come from `abuse`), or the AM shuts down.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;
use wire::Role;

use super::abuse::{ABUSE_CLOSE_LINGER, Verdict, close_code};
use super::admin::admin_stream;
use super::context::Context;
use super::gate::{self, HANDSHAKE_TIMEOUT};
use super::pipeline::ProviderConnection;
use super::provider_stream::{Delivered, provider_stream};
use super::user::serve_user_connection;
use crate::clock::now_s;
use serving::tls;

/// Complete the handshake of `incoming` (its slot in `handshakes` was
/// taken by the accept loop and is given back here), then serve the
/// connection by its peer's role.
pub(super) async fn handle_connection(incoming: quinn::Incoming, context: &Arc<Context>, stop: watch::Receiver<bool>) {
    let address = incoming.remote_address().ip();
    // Dropping an unfinished handshake closes it and frees its slots.
    // The connection's first ID is made here: the gate lets the client's
    // later Initials, which carry it, through.
    let handshake = match gate::accepting(address, || incoming.accept()) {
        Ok(connecting) => tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await,
        Err(error) => Ok(Err(error)),
    };
    context.handshakes.leave(address);
    let connection = match handshake {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            metrics::counter!("acct_handshakes_failed_total").increment(1);
            tracing::debug!(%error, "handshake failed");
            return;
        }
        Err(_) => {
            metrics::counter!("acct_handshakes_failed_total").increment(1);
            tracing::debug!("handshake timed out");
            return;
        }
    };
    let identity = match tls::peer_identity(&connection, &context.ca, now_s()) {
        Some(Ok(identity)) if matches!(identity.role, Role::Provider | Role::AccountingManager) => identity,
        // Users need no certificate here: their requests carry it (a5) and
        // are signed with its key (a4).
        None | Some(Ok(wire::CertifiedIdentity { role: Role::User, .. })) => {
            serve_user(connection, context, stop).await;
            return;
        }
        other => {
            tracing::info!(remote = %connection.remote_address(), reason = ?other.map(|result| result.map(|identity| identity.role)), "connection refused: no provider or admin identity");
            connection.close(close_code::ROLE_REFUSED.into(), b"certificate role may not connect");
            return;
        }
    };
    let certificate = tls::peer_certificate(&connection).unwrap_or_default();
    let deny_watch = context.deny.subscribe();
    if context.deny.is_denied(identity.name.as_str(), &certificate) {
        metrics::counter!("acct_connections_denied_total").increment(1);
        tracing::warn!(peer = %identity.name, remote = %connection.remote_address(), "connection refused: certificate denied");
        connection.close(close_code::DENIED.into(), b"certificate revoked");
        context.strike_address(address);
        return;
    }
    if let Some(left) = context.penalties.remaining(identity.name.as_str(), Instant::now()) {
        metrics::counter!("acct_connections_backoff_total").increment(1);
        let reason = format!("disconnected for abuse; retry in {} ms", left.as_millis());
        connection.close(close_code::BACKOFF.into(), reason.as_bytes());
        context.strike_address(address);
        return;
    }
    let span = tracing::info_span!("connection", peer = %identity.name, role = identity.role.as_str(), remote = %connection.remote_address());
    serve_connection(connection, identity, certificate, deny_watch, context, stop)
        .instrument(span)
        .await;
}

/// A user connection: it leaves the providers' count for the users' own
/// bounds (anonymous connections cannot take the providers' slots).
async fn serve_user(connection: quinn::Connection, context: &Arc<Context>, stop: watch::Receiver<bool>) {
    context.connections.fetch_sub(1, Ordering::Relaxed);
    match context.user_slots.take(connection.remote_address().ip()) {
        Ok(_slot) => {
            let span = tracing::info_span!("user connection", remote = %connection.remote_address());
            serve_user_connection(connection, context, stop).instrument(span).await;
        }
        Err(reason) => {
            metrics::counter!("acct_user_connections_refused_total", "reason" => reason).increment(1);
            connection.close(close_code::SHUTTING_DOWN.into(), b"too many user connections");
        }
    }
    context.connections.fetch_add(1, Ordering::Relaxed);
}

/// A provider's or the operator's connection: its streams until the
/// connection ends, its certificate is revoked, or shutdown.
async fn serve_connection(
    connection: quinn::Connection,
    identity: wire::CertifiedIdentity,
    certificate: Vec<u8>,
    mut deny_watch: watch::Receiver<u64>,
    context: &Arc<Context>,
    stop: watch::Receiver<bool>,
) {
    let registration = if identity.role == Role::Provider {
        let max = context.config.connections_per_provider_max.max(1);
        let Some(token) = context.providers.register(&identity.name, &connection, max) else {
            metrics::counter!("acct_connections_refused_total", "reason" => "per_provider").increment(1);
            tracing::warn!(
                max,
                "connection refused: the provider holds connections_per_provider_max already"
            );
            connection.close(
                close_code::TOO_MANY_CONNECTIONS.into(),
                b"too many connections for this provider",
            );
            context.strike_address(connection.remote_address().ip());
            return;
        };
        Some(token)
    } else {
        None
    };
    metrics::gauge!("acct_connections").increment(1.0);
    tracing::debug!("connected");
    let provider = ProviderConnection::new(identity.name.clone(), identity.public_key);
    let mut streams = JoinSet::new();
    let mut stop_watch = stop.clone();
    loop {
        tokio::select! {
            changed = stop_watch.changed() => {
                if changed.is_err() || *stop_watch.borrow() { break; }
            }
            Ok(()) = deny_watch.changed() => {
                if context.deny.is_denied(identity.name.as_str(), &certificate) {
                    metrics::counter!("acct_connections_denied_total").increment(1);
                    tracing::warn!("disconnecting: certificate denied");
                    connection.close(close_code::DENIED.into(), b"certificate revoked");
                    break;
                }
            }
            accepted = connection.accept_bi() => {
                let Ok((send, receive)) = accepted else { break };
                let context = context.clone();
                let stop = stop.clone();
                if identity.role == Role::AccountingManager {
                    streams.spawn(admin_stream(send, receive, context, stop));
                } else {
                    let provider = provider.clone();
                    let connection = connection.clone();
                    streams.spawn(async move {
                        let writer = provider_stream(send, receive, &connection, &context, &provider, stop).await;
                        close_if_abusive(&context, &provider, &connection, writer).await;
                    });
                }
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    while streams.join_next().await.is_some() {}
    if let Some(token) = registration {
        context.providers.unregister(&identity.name, token);
    }
    metrics::gauge!("acct_connections").decrement(1.0);
    connection.close(close_code::DONE.into(), b"");
}

/// After a provider stream ended: if the connection broke an abuse rule,
/// close it, once, whichever stream notices first. Its streams stop reading,
/// this stream's answers go out first (for at most
/// [`ABUSE_CLOSE_LINGER`]), the provider's name is backed off, and the close
/// carries the verdict's code. Otherwise wait for the stream's ack writer.
async fn close_if_abusive(
    context: &Context,
    provider: &ProviderConnection,
    connection: &quinn::Connection,
    writer: tokio::task::JoinHandle<Option<Delivered>>,
) {
    let verdict = Verdict::of(&provider.conduct);
    let Some(verdict) = verdict.filter(|_| !provider.conduct.closed_for_abuse.swap(true, Ordering::Relaxed)) else {
        let _ = writer.await;
        return;
    };
    let backoff = context.penalties.strike(provider.name.as_str(), Instant::now());
    tracing::warn!(
        reason = verdict.reason(),
        backoff_ms = backoff.as_millis() as u64,
        "disconnecting an abusive provider"
    );
    metrics::counter!("acct_connections_abusive_total", "reason" => verdict.label()).increment(1);
    // The other streams stop reading while this one's answers go out.
    provider.conduct.abuse_found.notify_waiters();
    let answered = async {
        if let Ok(Some(delivered)) = writer.await {
            delivered.await;
        }
    };
    let _ = tokio::time::timeout(ABUSE_CLOSE_LINGER, answered).await;
    connection.close(verdict.close_code().into(), verdict.reason().as_bytes());
}
