//! The User's side: credential request, Service Request, proof check.

use bytes::Bytes;
use wire::{
    Address, EncodeError, Maced, Nonce, ProofStatus, PublicKey, RequestId, ServiceCredential, ServiceCredentialRequest,
    ServiceId, ServiceProof, ServiceRequest, Signed, SigningKey,
};

/// Why the user refuses what it received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// The message could not be built (a field out of bounds).
    #[error("cannot build the message: {0}")]
    Encode(#[from] EncodeError),
    /// The Service Credential is not signed by the AM.
    #[error("the service credential's signature (b5) does not verify with the AM's key")]
    CredentialSignature,
    /// The Service Credential answers another request.
    #[error("the service credential answers another request (b1)")]
    WrongRequest,
    /// The provider's proof MAC does not verify: it does not hold the key.
    #[error("the provider's proof does not verify: it does not hold the session key")]
    ProofMac,
    /// The proof answers another request or session.
    #[error("the provider's proof answers another request")]
    ProofMismatch,
    /// The provider refused the Service Request.
    #[error("the provider refused the request with status 0x{0:02x}")]
    Refused(u8),
}

/// Build a Service Credential Request (202): `certificate` is the user's
/// DER certificate (a5); `signing_key` is its key (a4). Request id and nonce
/// must be fresh random bytes.
pub fn credential_request(
    service_id: ServiceId,
    request_id: RequestId,
    nonce: Nonce,
    now_ms: u64,
    user_address: Address,
    certificate: Bytes,
    signing_key: &SigningKey,
) -> Result<Signed<ServiceCredentialRequest>, UserError> {
    Ok(Signed::sign(
        ServiceCredentialRequest {
            service_id,
            request_id,
            nonce,
            timestamp_ms: now_ms,
            user_address,
            certificate,
        },
        signing_key,
    )?)
}

/// Check a Service Credential (206): the AM signed it and it answers `request_id`.
pub fn check_credential(
    credential: &Signed<ServiceCredential>,
    request_id: RequestId,
    am_key: &PublicKey,
) -> Result<(), UserError> {
    credential.verify(am_key).map_err(|_| UserError::CredentialSignature)?;
    if credential.value().request_id != request_id {
        return Err(UserError::WrongRequest);
    }
    Ok(())
}

/// Build the Service Request (210) from a checked Service Credential.
pub fn service_request(
    credential: &ServiceCredential,
    user_address: Address,
    nonce: Nonce,
    now_ms: u64,
) -> Result<Maced<ServiceRequest>, UserError> {
    Ok(Maced::seal(
        ServiceRequest {
            session_id: credential.session_id,
            user_address,
            nonce,
            timestamp_ms: now_ms,
        },
        &credential.session_key,
    )?)
}

/// Check the provider's proof (211): it holds the session key, answers this
/// request, and accepted it.
pub fn check_proof(
    proof: &Maced<ServiceProof>,
    request: &ServiceRequest,
    credential: &ServiceCredential,
) -> Result<(), UserError> {
    proof.verify(&credential.session_key).map_err(|_| UserError::ProofMac)?;
    let value = proof.value();
    if value.session_id != request.session_id || value.nonce != request.nonce {
        return Err(UserError::ProofMismatch);
    }
    if value.status != ProofStatus::ACCEPTED {
        return Err(UserError::Refused(value.status.0));
    }
    Ok(())
}
