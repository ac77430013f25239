//! X.509 checks with real certificates from rcgen: chain, validity, role,
//! extended key usage, key type, and the binding of a5's key to a4.

mod support;

use bytes::Bytes;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls_pki_types::PrivatePkcs8KeyDer;
use wire::{CertificateError, Role, ServiceCredentialRequest, Signed, SigningKey, TrustedCa};

/// 2026-11-26T00:00:00Z in seconds.
const NOW_S: u64 = support::NOW_MS / 1000;

fn rcgen_key(key: &SigningKey) -> KeyPair {
    KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(key.to_pkcs8_der().unwrap()),
        &rcgen::PKCS_ED25519,
    )
    .unwrap()
}

struct Ca {
    key: KeyPair,
    params: CertificateParams,
    der: Vec<u8>,
}

fn ca(seed: u8) -> Ca {
    let key = rcgen_key(&SigningKey::from_seed(&[seed; 32]));
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("test CA {seed}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.not_before = rcgen::date_time_ymd(2026, 1, 1);
    params.not_after = rcgen::date_time_ymd(2030, 1, 1);
    let der = params.self_signed(&key).unwrap().der().to_vec();
    Ca { key, params, der }
}

struct Leaf<'a> {
    uris: Vec<&'a str>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    not_after_year: i32,
}

fn leaf(ca: &Ca, key: &impl rcgen::PublicKeyData, leaf: Leaf<'_>) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "leaf");
    params.subject_alt_names = leaf
        .uris
        .iter()
        .map(|uri| SanType::URI((*uri).try_into().unwrap()))
        .collect();
    params.extended_key_usages = leaf.usages;
    params.not_before = rcgen::date_time_ymd(2026, 1, 1);
    params.not_after = rcgen::date_time_ymd(leaf.not_after_year, 1, 1);
    let issuer = Issuer::new(ca.params.clone(), &ca.key);
    params.signed_by(key, &issuer).unwrap().der().to_vec()
}

fn user_leaf(ca: &Ca, user: &SigningKey) -> Vec<u8> {
    leaf(
        ca,
        &rcgen_key(user),
        Leaf {
            uris: vec!["urn:acct:user:alice"],
            usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
            not_after_year: 2027,
        },
    )
}

#[test]
fn valid_user_certificate_names_its_holder_and_key() {
    let ca = ca(1);
    let user = SigningKey::from_seed(&[9; 32]);
    let trusted = TrustedCa::from_der(ca.der.clone()).unwrap();
    let identity = trusted.verify(&user_leaf(&ca, &user), Role::User, NOW_S).unwrap();
    assert_eq!(identity.name.as_str(), "alice");
    assert_eq!(identity.public_key, user.public_key());
}

#[test]
fn refusals() {
    let ca = ca(1);
    let other_ca = ca_other();
    let user = SigningKey::from_seed(&[9; 32]);
    let trusted = TrustedCa::from_der(ca.der.clone()).unwrap();
    let user_key = rcgen_key(&user);
    // Another CA.
    let foreign = user_leaf(&other_ca, &user);
    assert!(matches!(
        trusted.verify(&foreign, Role::User, NOW_S),
        Err(CertificateError::Invalid(_))
    ));
    // Expired.
    let expired = leaf(
        &ca,
        &user_key,
        Leaf {
            uris: vec!["urn:acct:user:alice"],
            usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
            not_after_year: 2026,
        },
    );
    assert!(matches!(
        trusted.verify(&expired, Role::User, NOW_S),
        Err(CertificateError::Invalid(_))
    ));
    // Not yet valid (checked at a time before 2026).
    assert!(matches!(
        trusted.verify(&user_leaf(&ca, &user), Role::User, 1_700_000_000),
        Err(CertificateError::Invalid(_))
    ));
    // A provider certificate used as a user's.
    let provider = leaf(
        &ca,
        &user_key,
        Leaf {
            uris: vec!["urn:acct:provider:p1"],
            usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
            not_after_year: 2027,
        },
    );
    assert!(matches!(
        trusted.verify(&provider, Role::User, NOW_S),
        Err(CertificateError::WrongRole { .. })
    ));
    // No identity, two identities.
    let anonymous = leaf(
        &ca,
        &user_key,
        Leaf {
            uris: vec![],
            usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
            not_after_year: 2027,
        },
    );
    assert!(matches!(
        trusted.verify(&anonymous, Role::User, NOW_S),
        Err(CertificateError::NoIdentity)
    ));
    let twice = leaf(
        &ca,
        &user_key,
        Leaf {
            uris: vec!["urn:acct:user:a", "urn:acct:user:b"],
            usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
            not_after_year: 2027,
        },
    );
    assert!(matches!(
        trusted.verify(&twice, Role::User, NOW_S),
        Err(CertificateError::NoIdentity)
    ));
    // No extended key usage at all: refused, not accepted for every role.
    let no_eku = leaf(
        &ca,
        &user_key,
        Leaf {
            uris: vec!["urn:acct:user:alice"],
            usages: vec![],
            not_after_year: 2027,
        },
    );
    assert!(matches!(
        trusted.verify(&no_eku, Role::User, NOW_S),
        Err(CertificateError::Invalid(_))
    ));
    // Server usage only, presented as a user.
    let server_only = leaf(
        &ca,
        &user_key,
        Leaf {
            uris: vec!["urn:acct:user:alice"],
            usages: vec![ExtendedKeyUsagePurpose::ServerAuth],
            not_after_year: 2027,
        },
    );
    assert!(matches!(
        trusted.verify(&server_only, Role::User, NOW_S),
        Err(CertificateError::Invalid(_))
    ));
    // An ECDSA key.
    let ecdsa = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ecdsa_leaf = leaf(
        &ca,
        &ecdsa,
        Leaf {
            uris: vec!["urn:acct:user:alice"],
            usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
            not_after_year: 2027,
        },
    );
    assert_eq!(
        trusted.verify(&ecdsa_leaf, Role::User, NOW_S),
        Err(CertificateError::NotEd25519)
    );
    // Garbage.
    assert!(matches!(
        trusted.verify(b"not a certificate", Role::User, NOW_S),
        Err(CertificateError::Invalid(_))
    ));
    assert!(matches!(
        TrustedCa::from_der(b"junk".to_vec()),
        Err(CertificateError::BadAnchor(_))
    ));
}

fn ca_other() -> Ca {
    ca(2)
}

#[test]
fn credential_request_signature_is_bound_to_the_certificate_key() {
    let ca = ca(1);
    let user = SigningKey::from_seed(&[9; 32]);
    let trusted = TrustedCa::from_der(ca.der.clone()).unwrap();
    let mut request = support::service_credential_request().value().clone();
    request.certificate = Bytes::from(user_leaf(&ca, &user));
    let signed = Signed::sign(request.clone(), &user).unwrap();
    let identity = trusted.verify_credential_request(&signed, NOW_S).unwrap();
    assert_eq!(identity.name.as_str(), "alice");
    // Signed by someone else, with alice's certificate inside.
    let forged: Signed<ServiceCredentialRequest> = Signed::sign(request, &SigningKey::from_seed(&[10; 32])).unwrap();
    assert!(matches!(
        trusted.verify_credential_request(&forged, NOW_S),
        Err(CertificateError::BadSignature(_))
    ));
}

/// An Ed25519 public key given as raw bytes: lets the CA certify a key that
/// no honest generator makes.
struct RawKey([u8; 32]);

impl rcgen::PublicKeyData for RawKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

/// A small-order key verifies forged signatures under ZIP-215: a provider
/// or user certified with one could deny its own records. Certificates with
/// such keys (or non-canonically encoded ones) are refused for every role,
/// and so are credential requests that carry them (a5).
#[test]
fn certificates_with_small_order_or_non_canonical_keys_are_refused() {
    let ca = ca(1);
    let trusted = TrustedCa::from_der(ca.der.clone()).unwrap();
    // The identity point (y = 1), and y = 1 written as p + 1.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut identity_non_canonical = [0xff; 32];
    identity_non_canonical[0] = 0xee;
    identity_non_canonical[31] = 0x7f;
    // A point of large order written non-canonically (y = p + k).
    let large_non_canonical = (2..19u8)
        .map(|k| {
            let mut bytes = [0xff; 32];
            bytes[0] = 0xed + k;
            bytes[31] = 0x7f;
            bytes
        })
        .find(|bytes| wire::PublicKey::from_identity_bytes(*bytes) == Err(wire::SignatureError::NonCanonicalPublicKey))
        .expect("some y = p + k below p + 19 is a point of large order");
    for (key, uri, role, refusal) in [
        (
            identity,
            "urn:acct:user:mallory",
            Role::User,
            wire::SignatureError::SmallOrderPublicKey,
        ),
        (
            identity,
            "urn:acct:provider:mallory",
            Role::Provider,
            wire::SignatureError::SmallOrderPublicKey,
        ),
        (
            identity_non_canonical,
            "urn:acct:provider:mallory",
            Role::Provider,
            wire::SignatureError::SmallOrderPublicKey,
        ),
        (
            large_non_canonical,
            "urn:acct:provider:mallory",
            Role::Provider,
            wire::SignatureError::NonCanonicalPublicKey,
        ),
    ] {
        let certificate = leaf(
            &ca,
            &RawKey(key),
            Leaf {
                uris: vec![uri],
                usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
                not_after_year: 2027,
            },
        );
        assert_eq!(
            trusted.verify(&certificate, role, NOW_S),
            Err(CertificateError::WeakKey(refusal))
        );
        assert!(matches!(
            trusted.identify(&certificate, NOW_S),
            Err(CertificateError::WeakKey(_))
        ));
    }
    // A credential request whose a5 carries such a certificate is refused
    // at the certificate, before any signature is looked at (with that key,
    // a signature forged without any secret would verify under ZIP-215).
    let certificate = leaf(
        &ca,
        &RawKey(identity),
        Leaf {
            uris: vec!["urn:acct:user:mallory"],
            usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
            not_after_year: 2027,
        },
    );
    let honest = SigningKey::from_seed(&[9; 32]);
    let request = Signed::<ServiceCredentialRequest>::sign(
        ServiceCredentialRequest {
            certificate: Bytes::from(certificate),
            ..support::service_credential_request().value().clone()
        },
        &honest,
    )
    .unwrap();
    assert!(matches!(
        trusted.verify_credential_request(&request, NOW_S),
        Err(CertificateError::WeakKey(_))
    ));
}
