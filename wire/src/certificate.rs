//! X.509 checks: a certificate chains to the operator's CA, is valid at a
//! given time, names its holder, and carries the Ed25519 key that signs.
//!
//! Identity lives in one URI subject alternative name,
//! `urn:acct:<role>:<name>`, with role `user`, `provider`, `am` or `storage`
//! and a [`Name`]. `acct init` issues certificates of that shape.

use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use crate::credential::ServiceCredentialRequest;
use crate::ed25519::PublicKey;
use crate::error::SignatureError;
use crate::signed::Signed;
use crate::text::Name;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the key.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// id-kp-clientAuth, 1.3.6.1.5.5.7.3.2, DER value bytes.
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
/// id-kp-serverAuth, 1.3.6.1.5.5.7.3.1, DER value bytes.
const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];

/// What a certificate is for.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Role {
    /// A User (client authentication; signs credential requests).
    User,
    /// A Service Provider (client authentication; signs accounting).
    Provider,
    /// The Accounting Manager (server authentication; signs credentials and records).
    AccountingManager,
    /// The Accounting Storage (server authentication).
    AccountingStorage,
}

impl Role {
    /// The role's word in `urn:acct:<role>:<name>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Provider => "provider",
            Self::AccountingManager => "am",
            Self::AccountingStorage => "storage",
        }
    }

    /// The identity URI for `name` in this role.
    pub fn uri(self, name: &Name) -> String {
        format!("urn:acct:{}:{}", self.as_str(), name)
    }
}

/// Who a verified certificate belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertifiedIdentity {
    /// The role from the identity URI.
    pub role: Role,
    /// The holder's name from the identity URI.
    pub name: Name,
    /// The certified Ed25519 key.
    pub public_key: PublicKey,
}

/// Why a certificate or a credential request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// The CA certificate itself cannot serve as a trust anchor.
    #[error("the CA certificate is not usable as a trust anchor: {0}")]
    BadAnchor(String),
    /// The certificate is malformed, does not chain to the CA, is expired or
    /// not yet valid, or lacks the extended key usage of its role.
    #[error("certificate not valid: {0}")]
    Invalid(String),
    /// The certificate's key is not Ed25519.
    #[error("certificate key is not Ed25519")]
    NotEd25519,
    /// The certificate's Ed25519 key is of small order or not canonically
    /// encoded ([`PublicKey::from_identity_bytes`]).
    #[error("certificate key refused: {0}")]
    WeakKey(SignatureError),
    /// The certificate has no `urn:acct:<role>:<name>` URI, or more than one.
    #[error("certificate carries no single urn:acct identity")]
    NoIdentity,
    /// The identity's role is not the one required.
    #[error("certificate is for role {found}, expected {expected}")]
    WrongRole {
        /// The role required.
        expected: &'static str,
        /// The role found.
        found: String,
    },
    /// The signature (a4) does not verify with the certificate's key.
    #[error("signature does not verify with the certificate's key: {0}")]
    BadSignature(SignatureError),
}

/// The operator's CA, as a trust anchor.
#[derive(Clone, Debug)]
pub struct TrustedCa {
    der: CertificateDer<'static>,
}

impl TrustedCa {
    /// Trust the CA certificate `der`.
    /// An Ed25519 CA key must pass [`PublicKey::from_identity_bytes`].
    pub fn from_der(der: Vec<u8>) -> Result<Self, CertificateError> {
        let der = CertificateDer::from(der);
        let anchor =
            webpki::anchor_from_trusted_cert(&der).map_err(|error| CertificateError::BadAnchor(error.to_string()))?;
        // The anchor's SubjectPublicKeyInfo comes without its outer SEQUENCE
        // header (the first two bytes of the prefix).
        let ed25519_key = ED25519_SPKI_PREFIX
            .get(2..)
            .and_then(|prefix| anchor.subject_public_key_info.as_ref().strip_prefix(prefix))
            .and_then(|key| <[u8; 32]>::try_from(key).ok());
        if let Some(key) = ed25519_key {
            PublicKey::from_identity_bytes(key)
                .map_err(|error| CertificateError::BadAnchor(format!("the CA's key: {error}")))?;
        }
        Ok(Self { der })
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Verify an end-entity certificate for `role` at `now_unix_s`.
    pub fn verify(
        &self,
        certificate_der: &[u8],
        role: Role,
        now_unix_s: u64,
    ) -> Result<CertifiedIdentity, CertificateError> {
        let anchor = webpki::anchor_from_trusted_cert(&self.der)
            .map_err(|error| CertificateError::BadAnchor(error.to_string()))?;
        let der = CertificateDer::from(certificate_der);
        let certificate =
            EndEntityCert::try_from(&der).map_err(|error| CertificateError::Invalid(error.to_string()))?;
        // The extended key usage is required, not merely checked if present:
        // a certificate without it serves no role.
        let usage = match role {
            Role::User | Role::Provider => KeyUsage::required(EKU_CLIENT_AUTH),
            Role::AccountingManager | Role::AccountingStorage => KeyUsage::required(EKU_SERVER_AUTH),
        };
        certificate
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &[anchor],
                &[],
                UnixTime::since_unix_epoch(Duration::from_secs(now_unix_s)),
                usage,
                None,
                None,
            )
            .map_err(|error| CertificateError::Invalid(error.to_string()))?;
        let spki = certificate.subject_public_key_info();
        let key_bytes: [u8; 32] = spki
            .as_ref()
            .strip_prefix(ED25519_SPKI_PREFIX.as_slice())
            .and_then(|key| <[u8; 32]>::try_from(key).ok())
            .ok_or(CertificateError::NotEd25519)?;
        let public_key = PublicKey::from_identity_bytes(key_bytes).map_err(|error| match error {
            SignatureError::InvalidPublicKey => CertificateError::NotEd25519,
            weak => CertificateError::WeakKey(weak),
        })?;
        let mut identities = certificate
            .valid_uri_names()
            .filter_map(|uri| uri.strip_prefix("urn:acct:"));
        let identity = identities.next().ok_or(CertificateError::NoIdentity)?;
        if identities.next().is_some() {
            return Err(CertificateError::NoIdentity);
        }
        let (found_role, name) = identity.split_once(':').ok_or(CertificateError::NoIdentity)?;
        if found_role != role.as_str() {
            return Err(CertificateError::WrongRole {
                expected: role.as_str(),
                found: found_role.to_owned(),
            });
        }
        let name = Name::new(name).map_err(|_| CertificateError::NoIdentity)?;
        Ok(CertifiedIdentity { role, name, public_key })
    }

    /// Verify an end-entity certificate whose role is read from its identity
    /// URI; the role's extended key usage is then required as in [`Self::verify`].
    pub fn identify(&self, certificate_der: &[u8], now_unix_s: u64) -> Result<CertifiedIdentity, CertificateError> {
        let der = CertificateDer::from(certificate_der);
        let certificate =
            EndEntityCert::try_from(&der).map_err(|error| CertificateError::Invalid(error.to_string()))?;
        let role = certificate
            .valid_uri_names()
            .filter_map(|uri| uri.strip_prefix("urn:acct:"))
            .find_map(|identity| identity.split_once(':').map(|(role, _)| role))
            .and_then(|role| {
                [
                    Role::User,
                    Role::Provider,
                    Role::AccountingManager,
                    Role::AccountingStorage,
                ]
                .into_iter()
                .find(|candidate| candidate.as_str() == role)
            })
            .ok_or(CertificateError::NoIdentity)?;
        self.verify(certificate_der, role, now_unix_s)
    }

    /// Check a Service Credential Request's a5 and a4: the certificate is a
    /// valid user certificate and its key made the signature.
    pub fn verify_credential_request(
        &self,
        request: &Signed<ServiceCredentialRequest>,
        now_unix_s: u64,
    ) -> Result<CertifiedIdentity, CertificateError> {
        let identity = self.verify(&request.value().certificate, Role::User, now_unix_s)?;
        request
            .verify(&identity.public_key)
            .map_err(CertificateError::BadSignature)?;
        Ok(identity)
    }
}
