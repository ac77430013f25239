//! The credential checks: a user's a5 certificate against the operator's CA
//! (for every role, and with the role read from the certificate), and a
//! Service Credential Request carrying it. Must never panic, and nothing but
//! an untouched valid certificate may pass.
//!
//! Input: a mode byte, then either a raw DER certificate (mode 0) or edits
//! `(offset u16, value u8)` applied to one of four valid certificates, one per
//! role (modes 1-4), so the fuzzer explores near-valid certificates that a
//! random DER would never reach.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use wire::{Address, Nonce, RequestId, Role, ServiceCredentialRequest, ServiceId, Signed, SigningKey, TrustedCa};

/// 2026-11-26T00:00:00Z: inside the fixtures' validity.
const NOW_S: u64 = 1_795_651_200;
const ROLES: [Role; 4] = [
    Role::User,
    Role::Provider,
    Role::AccountingManager,
    Role::AccountingStorage,
];

struct Fixture {
    ca: TrustedCa,
    /// One valid certificate per role in `ROLES`, and its key.
    certificates: Vec<(Vec<u8>, SigningKey)>,
}

fn rcgen_key(key: &SigningKey) -> KeyPair {
    let der = key.to_pkcs8_der().expect("pkcs8");
    KeyPair::from_pkcs8_der_and_sign_algo(&rustls_pki_types::PrivatePkcs8KeyDer::from(der), &rcgen::PKCS_ED25519)
        .expect("ed25519 key")
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let not_before = rcgen::date_time_ymd(2026, 1, 1);
        let not_after = rcgen::date_time_ymd(2030, 1, 1);
        let ca_key = rcgen_key(&SigningKey::from_seed(&[0xca; 32]));
        let mut ca_params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, "fuzz CA");
        ca_params.distinguished_name = subject;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        ca_params.not_before = not_before;
        ca_params.not_after = not_after;
        let ca_der = ca_params.self_signed(&ca_key).expect("CA").der().to_vec();
        let issuer = Issuer::new(ca_params, &ca_key);
        let certificates = ROLES
            .iter()
            .enumerate()
            .map(|(index, role)| {
                let key = SigningKey::from_seed(&[index as u8 + 1; 32]);
                let mut params = CertificateParams::default();
                let name = wire::Name::new(&format!("fuzz-{index}")).expect("name");
                params.subject_alt_names = vec![SanType::URI(role.uri(&name).as_str().try_into().expect("uri"))];
                params.extended_key_usages = match role {
                    Role::User | Role::Provider => vec![ExtendedKeyUsagePurpose::ClientAuth],
                    _ => vec![ExtendedKeyUsagePurpose::ServerAuth],
                };
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                params.not_before = not_before;
                params.not_after = not_after;
                let der = params
                    .signed_by(&rcgen_key(&key), &issuer)
                    .expect("leaf")
                    .der()
                    .to_vec();
                (der, key)
            })
            .collect();
        let fixture = Fixture {
            ca: TrustedCa::from_der(ca_der).expect("anchor"),
            certificates,
        };
        // The fixtures must pass, or the fuzzer explores nothing useful.
        for (role, (der, _)) in ROLES.iter().zip(&fixture.certificates) {
            fixture
                .ca
                .verify(der, *role, NOW_S)
                .expect("fixture certificate verifies");
        }
        fixture
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let (certificate, key, untouched_role) = match mode % 5 {
        0 => (rest.to_vec(), SigningKey::from_seed(&[0x55; 32]), None),
        pick => {
            let index = usize::from(pick - 1);
            let (der, key) = &fixture.certificates[index];
            let original = der;
            let mut der = der.clone();
            for edit in rest.chunks_exact(3) {
                let offset = usize::from(u16::from_le_bytes([edit[0], edit[1]]));
                if offset == 0xffff {
                    // Truncate at the value byte's position.
                    der.truncate(usize::from(edit[2]) * 4);
                } else if !der.is_empty() {
                    let length = der.len();
                    let byte = &mut der[offset % length];
                    *byte = edit[2];
                }
            }
            let untouched = der == *original;
            (der, key.clone(), untouched.then_some(ROLES[index]))
        }
    };
    for role in ROLES {
        let result = fixture.ca.verify(&certificate, role, NOW_S);
        if result.is_ok() {
            // A certificate the CA did not sign as is must never pass: any
            // change to the signed part breaks the CA's signature.
            assert_eq!(untouched_role, Some(role), "an edited or foreign certificate verified");
        }
    }
    let identified = fixture.ca.identify(&certificate, NOW_S);
    if let Ok(identity) = &identified {
        assert_eq!(untouched_role, Some(identity.role));
    }
    let Ok(user_address) = Address::new("127.0.0.1:5000") else {
        return;
    };
    let request = Signed::sign(
        ServiceCredentialRequest {
            service_id: ServiceId(1),
            request_id: RequestId([7; 16]),
            nonce: Nonce([9; 16]),
            timestamp_ms: NOW_S * 1000,
            user_address,
            certificate: Bytes::from(certificate),
        },
        &key,
    );
    if let Ok(request) = request {
        let checked = fixture.ca.verify_credential_request(&request, NOW_S);
        if checked.is_ok() {
            assert_eq!(
                untouched_role,
                Some(Role::User),
                "a non-user certificate passed a credential request"
            );
        }
    }
});
