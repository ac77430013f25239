//! Opening sessions: the glue between a request (a user's Service
//! Credential Request, or the operator's admin request) and the committer
//! that stores the new session. The checks and the minting are in
//! `credentials`; this module holds the session bounds while a session is
//! being opened (`slots`), stores the session, and answers.

use bytes::BytesMut;
use wire::{AdminOpenSession, ErrorMessage, Redirect, Signed, UserCredential};

use super::context::Context;
use super::credentials::{Issuer, mint_user_credential};
use super::session::SessionInfo;
use crate::clock::now_ms;

/// Why a session was not opened here: refused, or the provider's home is
/// another partition.
pub(super) enum NotOpened {
    /// Refused, with the reason.
    Refused(ErrorMessage),
    /// Ask this partition instead (nothing was stored or consumed here).
    Redirect(Redirect),
}

impl From<ErrorMessage> for NotOpened {
    fn from(error: ErrorMessage) -> Self {
        Self::Refused(error)
    }
}

impl NotOpened {
    /// The answer, as a frame.
    pub(super) fn encode_frame(&self, out: &mut BytesMut) {
        match self {
            Self::Refused(error) => error.encode_frame(out),
            Self::Redirect(redirect) => redirect.encode_frame(out),
        }
    }
}

/// The redirect for a session of `provider`, when its home is another
/// partition.
fn redirect(context: &Context, provider: &wire::Name) -> Result<(), NotOpened> {
    match context.placement.redirect_for(provider) {
        Some(redirect) => {
            metrics::counter!("acct_redirects_total", "to" => redirect.node.to_string()).increment(1);
            Err(NotOpened::Redirect(redirect))
        }
        None => Ok(()),
    }
}

/// 202 → 206: validate, mint, push to the provider, store, answer. A
/// request for a service whose provider lives on another partition is
/// answered with a redirect before anything else (its nonce stays unused).
pub(super) async fn issue(
    context: &Context,
    request: &Signed<wire::ServiceCredentialRequest>,
) -> Result<Signed<wire::ServiceCredential>, NotOpened> {
    let started = std::time::Instant::now();
    if let Some(service) = context.directory.get(request.value().service_id) {
        redirect(context, &service.provider)?;
    }
    let issuer = Issuer {
        ca: &context.ca,
        directory: &context.directory,
        replay: &context.replay,
        providers: &context.providers,
        signing_key: &context.signing_key,
        partition: context.placement.me(),
        deny: &context.deny,
    };
    // Refused from here on (or this task dropped), the request gives its
    // place in the replay cache back: the same bytes may come again.
    let mut reserved = issuer.check(request, now_ms())?;
    // Held until the session is stored (or refused).
    let _slot = context
        .session_slots
        .take(&context.pipeline.table, &context.config, Some(&reserved.user))?;
    let minted = issuer.mint(request, &reserved, now_ms()).await?;
    let value = request.value();
    // The request id and nonce go in the session's own write: a replay
    // after a restart finds them.
    let session = SessionInfo::for_request(
        minted.provider,
        minted.user_credential,
        now_ms(),
        Some((value.request_id, value.nonce)),
    );
    // The committer may store the session even if this task is dropped
    // while it waits: the request keeps its place unless the store refuses.
    reserved.hold();
    if let Err(refusal) = context.pipeline.open_session(session).await {
        reserved.release();
        return Err(refusal.error_message().into());
    }
    metrics::counter!("acct_credentials_issued_total").increment(1);
    metrics::histogram!("acct_credential_issue_seconds").record(started.elapsed().as_secs_f64());
    Ok(minted.service_credential)
}

/// The admin path: mint a session on the operator's behalf (no user
/// request, no push: the operator hands the credential to the provider),
/// stored durably by the committer before it is returned; redirected when
/// the provider's home is another partition.
pub(super) async fn open_session(
    context: &Context,
    request: AdminOpenSession,
) -> Result<Signed<UserCredential>, NotOpened> {
    redirect(context, &request.provider)?;
    let _slot = context
        .session_slots
        .take(&context.pipeline.table, &context.config, None)?;
    let credential = mint_user_credential(
        &context.signing_key,
        context.placement.me(),
        request.service_id,
        request.user_id,
        request.user_address,
        request.policy,
    )?;
    let session = SessionInfo::new(request.provider, credential.clone(), now_ms());
    context
        .pipeline
        .open_session(session)
        .await
        .map(|()| credential)
        .map_err(|refusal| refusal.error_message().into())
}
