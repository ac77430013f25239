//! The acceptance rule: RFC 8032 vectors, crafted edge cases, agreement of
//! single and batch verification in every batch, and agreement with an
//! independent ZIP-215 implementation (ed25519-zebra).

use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use proptest::prelude::*;
use sha2::{Digest, Sha512};
use wire::ed25519::{self, BatchItem, PublicKey, SigningKey};

const DOMAIN: &[u8] = b"acct/1 accounting\0";

/// RFC 8032 section 7.1, tests 1-3 (Ed25519, no domain prefix).
const RFC8032: [(&str, &str, &str, &str); 3] = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
];

fn hex32(text: &str) -> [u8; 32] {
    hex::decode(text).unwrap().try_into().unwrap()
}

fn hex64(text: &str) -> [u8; 64] {
    hex::decode(text).unwrap().try_into().unwrap()
}

/// The independent reference: ed25519-zebra implements ZIP-215.
fn zebra_accepts(key: &[u8; 32], domain: &[u8], message: &[u8], signature: &[u8; 64]) -> bool {
    let Ok(key) = ed25519_zebra::VerificationKey::try_from(*key) else {
        return false;
    };
    let signature = ed25519_zebra::Signature::from_bytes(signature);
    let mut full = domain.to_vec();
    full.extend_from_slice(message);
    key.verify(&signature, &full).is_ok()
}

fn ours_accepts(key: &[u8; 32], domain: &[u8], message: &[u8], signature: &[u8; 64]) -> bool {
    match PublicKey::from_bytes(*key) {
        Ok(key) => ed25519::verify(&key, domain, message, signature).is_ok(),
        Err(_) => false,
    }
}

#[test]
fn rfc8032_vectors_sign_and_verify() {
    for (secret, public, message, signature) in RFC8032 {
        let key = SigningKey::from_seed(&hex32(secret));
        let message = hex::decode(message).unwrap();
        assert_eq!(key.public_key().as_bytes(), &hex32(public));
        assert_eq!(key.sign(b"", &message), hex64(signature));
        let public = PublicKey::from_bytes(hex32(public)).unwrap();
        assert!(ed25519::verify(&public, b"", &message, &hex64(signature)).is_ok());
        // The domain prefix is part of the message: without it, no match.
        assert!(ed25519::verify(&public, DOMAIN, &message, &hex64(signature)).is_err());
    }
}

/// A crafted signature: key A = aB + t_a, R = rB + t_r, S = r + k·a (+ extra).
struct Crafted {
    key: [u8; 32],
    message: Vec<u8>,
    signature: [u8; 64],
    label: String,
}

fn scalar(seed: u8) -> Scalar {
    let wide: [u8; 64] = Sha512::digest([seed; 7]).into();
    Scalar::from_bytes_mod_order_wide(&wide)
}

fn hash_k(r: &[u8; 32], a: &[u8; 32], message: &[u8]) -> Scalar {
    let wide: [u8; 64] = Sha512::new()
        .chain_update(r)
        .chain_update(a)
        .chain_update(DOMAIN)
        .chain_update(message)
        .finalize()
        .into();
    Scalar::from_bytes_mod_order_wide(&wide)
}

/// Encodings of every small-order point, canonical and not: y and y + p for
/// each small y (where y + p < 2^255), with both sign bits.
fn small_order_encodings() -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    for point in EIGHT_TORSION {
        let canonical = point.compress().to_bytes();
        for sign in [0u8, 0x80] {
            let mut encoding = canonical;
            encoding[31] = (encoding[31] & 0x7f) | sign;
            out.push(encoding);
        }
    }
    // y + p for y in 0..19: p = 2^255 - 19, so y + p = 2^255 - 19 + y < 2^255.
    for y in 0u8..19 {
        let mut encoding = [0xffu8; 32];
        encoding[0] = 0xed + y; // low byte of p is 0xed; no carry for y < 19
        encoding[31] = 0x7f;
        for sign in [0u8, 0x80] {
            let mut signed = encoding;
            signed[31] |= sign;
            if let Some(point) = CompressedEdwardsY(signed).decompress()
                && point.is_small_order()
            {
                out.push(signed);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn crafted_cases() -> Vec<Crafted> {
    let mut cases = Vec::new();
    let message = b"crafted message".to_vec();
    let torsion: Vec<EdwardsPoint> = EIGHT_TORSION.to_vec();
    // Honest, torsion in R, torsion in A, torsion in both.
    for (t_r_index, t_a_index) in [(0usize, 0usize), (1, 0), (4, 0), (0, 1), (0, 2), (3, 5), (6, 7)] {
        let a = scalar(1);
        let r = scalar(2 + t_r_index as u8);
        let a_point = ED25519_BASEPOINT_POINT * a + torsion[t_a_index];
        let r_point = ED25519_BASEPOINT_POINT * r + torsion[t_r_index];
        let a_bytes = a_point.compress().to_bytes();
        let r_bytes = r_point.compress().to_bytes();
        let k = hash_k(&r_bytes, &a_bytes, &message);
        let s = r + k * a;
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&r_bytes);
        signature[32..].copy_from_slice(s.as_bytes());
        cases.push(Crafted {
            key: a_bytes,
            message: message.clone(),
            signature,
            label: format!("torsion R{t_r_index} A{t_a_index}"),
        });
        // The same with S + L: not canonical, must be refused.
        let mut non_canonical = signature;
        add_l(&mut non_canonical[32..]);
        cases.push(Crafted {
            key: a_bytes,
            message: message.clone(),
            signature: non_canonical,
            label: format!("S+L torsion R{t_r_index} A{t_a_index}"),
        });
        // The wrong message: must be refused.
        cases.push(Crafted {
            key: a_bytes,
            message: b"another message".to_vec(),
            signature,
            label: format!("wrong message R{t_r_index} A{t_a_index}"),
        });
    }
    // Small-order keys and small-order R, every encoding, canonical or not:
    // with A and R of small order, S = 0 satisfies the cofactored equation.
    let encodings = small_order_encodings();
    for a_bytes in &encodings {
        for r_bytes in &encodings {
            for s in [Scalar::ZERO, Scalar::ONE] {
                let mut signature = [0u8; 64];
                signature[..32].copy_from_slice(r_bytes);
                signature[32..].copy_from_slice(s.as_bytes());
                cases.push(Crafted {
                    key: *a_bytes,
                    message: message.clone(),
                    signature,
                    label: format!(
                        "small order A {} R {} S {}",
                        hex::encode(a_bytes),
                        hex::encode(r_bytes),
                        s.as_bytes()[0]
                    ),
                });
            }
        }
    }
    // Non-canonical R encoding of a full-order point is impossible (y + p
    // only exists for y < 19); a non-canonical encoding of the identity as R
    // with a real key: R = identity, S = k·a.
    for r_bytes in encodings.iter().filter(|encoding| {
        CompressedEdwardsY(**encoding)
            .decompress()
            .is_some_and(|point| point == EdwardsPoint::default())
    }) {
        let a = scalar(9);
        let a_bytes = (ED25519_BASEPOINT_POINT * a).compress().to_bytes();
        let k = hash_k(r_bytes, &a_bytes, &message);
        let s = k * a;
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(r_bytes);
        signature[32..].copy_from_slice(s.as_bytes());
        cases.push(Crafted {
            key: a_bytes,
            message: message.clone(),
            signature,
            label: format!("identity R encoded as {}", hex::encode(r_bytes)),
        });
    }
    // Invalid point encodings for R and A.
    let not_a_point = {
        let mut candidate = [0u8; 32];
        candidate[0] = 2;
        while CompressedEdwardsY(candidate).decompress().is_some() {
            candidate[0] += 1;
        }
        candidate
    };
    let honest = SigningKey::from_seed(&[7; 32]);
    let signature = honest.sign(DOMAIN, &message);
    let mut bad_r = signature;
    bad_r[..32].copy_from_slice(&not_a_point);
    cases.push(Crafted {
        key: *honest.public_key().as_bytes(),
        message: message.clone(),
        signature: bad_r,
        label: "R not a point".into(),
    });
    cases.push(Crafted {
        key: not_a_point,
        message: message.clone(),
        signature,
        label: "A not a point".into(),
    });
    cases
}

/// Add the group order L to a little-endian 256-bit scalar in place.
fn add_l(bytes: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (byte, l) in bytes.iter_mut().zip(L) {
        let sum = u16::from(*byte) + u16::from(l) + carry;
        *byte = (sum & 0xff) as u8;
        carry = sum >> 8;
    }
}

#[test]
fn crafted_cases_match_zip215_reference() {
    let cases = crafted_cases();
    assert!(cases.len() > 400, "{} cases", cases.len());
    let mut accepted = 0;
    for case in &cases {
        let ours = ours_accepts(&case.key, DOMAIN, &case.message, &case.signature);
        let reference = zebra_accepts(&case.key, DOMAIN, &case.message, &case.signature);
        assert_eq!(ours, reference, "{}", case.label);
        accepted += usize::from(ours);
    }
    // Both outcomes occur: the table is not trivially all-accept or all-reject.
    assert!(accepted > 0 && accepted < cases.len());
}

#[test]
fn specific_rule_decisions() {
    let cases = crafted_cases();
    let find = |label: &str| cases.iter().find(|case| case.label == label).unwrap();
    let decide = |case: &Crafted| ours_accepts(&case.key, DOMAIN, &case.message, &case.signature);
    assert!(decide(find("torsion R0 A0")), "honest signature");
    assert!(
        decide(find("torsion R1 A0")),
        "R with a small-order component: cofactored equation holds"
    );
    assert!(decide(find("torsion R0 A1")), "A with a small-order component");
    assert!(!decide(find("S+L torsion R0 A0")), "non-canonical S");
    assert!(!decide(find("wrong message R0 A0")));
    assert!(!decide(find("R not a point")));
    assert!(!decide(find("A not a point")));
}

/// Batch decisions equal single decisions for every crafted case, at every
/// position, in batches of several sizes mixed with honest signatures.
#[test]
fn batch_agrees_with_single_on_crafted_cases() {
    let cases = crafted_cases();
    let honest_keys: Vec<SigningKey> = (0..8u8).map(|seed| SigningKey::from_seed(&[seed + 100; 32])).collect();
    let honest: Vec<([u8; 32], Vec<u8>, [u8; 64])> = (0..64usize)
        .map(|index| {
            let key = &honest_keys[index % honest_keys.len()];
            let message = format!("honest {index}").into_bytes();
            let signature = key.sign(DOMAIN, &message);
            (*key.public_key().as_bytes(), message, signature)
        })
        .collect();
    for (case_index, case) in cases.iter().enumerate() {
        let Ok(case_key) = PublicKey::from_bytes(case.key) else {
            continue;
        };
        let single = ed25519::verify(&case_key, DOMAIN, &case.message, &case.signature).is_ok();
        let size = [1usize, 2, 3, 7, 16, 64][case_index % 6];
        let position = case_index % size;
        let honest_parsed: Vec<PublicKey> = honest
            .iter()
            .map(|(key, _, _)| PublicKey::from_bytes(*key).unwrap())
            .collect();
        let mut items = Vec::new();
        for slot in 0..size {
            if slot == position {
                items.push(BatchItem {
                    key: &case_key,
                    domain: DOMAIN,
                    message: &case.message,
                    signature: &case.signature,
                });
            } else {
                let (_, message, signature) = &honest[slot];
                items.push(BatchItem {
                    key: &honest_parsed[slot],
                    domain: DOMAIN,
                    message,
                    signature,
                });
            }
        }
        let seed = [case_index as u8; 32];
        let verdicts = ed25519::verify_batch(&items, &seed);
        for (slot, verdict) in verdicts.iter().enumerate() {
            let expected = if slot == position { single } else { true };
            assert_eq!(*verdict, expected, "{} at {position} of {size}", case.label);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random batches of honest and corrupted signatures: the batch verdict of
    /// each item is its single verdict, whatever the rest of the batch holds.
    #[test]
    fn batch_equals_single(
        corruptions in prop::collection::vec((any::<bool>(), 0usize..64, any::<u8>()), 1..48),
        seed in any::<[u8; 32]>(),
    ) {
        let keys: Vec<SigningKey> = (0..5u8).map(|index| SigningKey::from_seed(&[index; 32])).collect();
        let parsed: Vec<PublicKey> = keys.iter().map(SigningKey::public_key).collect();
        let mut entries = Vec::new();
        for (index, (corrupt, byte_index, flip)) in corruptions.iter().enumerate() {
            let message = format!("message {index}").into_bytes();
            let mut signature = keys[index % keys.len()].sign(DOMAIN, &message);
            if *corrupt && *flip != 0 {
                signature[*byte_index] ^= *flip;
            }
            entries.push((index % keys.len(), message, signature));
        }
        let items: Vec<BatchItem<'_>> = entries
            .iter()
            .map(|(key_index, message, signature)| BatchItem {
                key: &parsed[*key_index],
                domain: DOMAIN,
                message,
                signature,
            })
            .collect();
        let verdicts = ed25519::verify_batch(&items, &seed);
        for (item, verdict) in items.iter().zip(&verdicts) {
            let single = ed25519::verify(item.key, item.domain, item.message, item.signature).is_ok();
            prop_assert_eq!(*verdict, single);
        }
    }
}

#[test]
fn empty_batch() {
    assert!(ed25519::verify_batch(&[], &[0; 32]).is_empty());
}

/// The batch equation itself accepts a batch of valid signatures (a wrong
/// sign in it would only show as slowness in `verify_batch`, which then falls
/// back to single checks) and rejects one with a single bad signature.
#[test]
fn batch_equation_accepts_valid_batches() {
    let keys: Vec<SigningKey> = (0..4u8).map(|index| SigningKey::from_seed(&[index + 40; 32])).collect();
    let parsed: Vec<PublicKey> = keys.iter().map(SigningKey::public_key).collect();
    let messages: Vec<Vec<u8>> = (0..100).map(|index| format!("m{index}").into_bytes()).collect();
    let mut signatures: Vec<[u8; 64]> = messages
        .iter()
        .enumerate()
        .map(|(index, message)| keys[index % 4].sign(DOMAIN, message))
        .collect();
    for size in [1usize, 2, 3, 10, 100] {
        let items: Vec<BatchItem<'_>> = (0..size)
            .map(|index| BatchItem {
                key: &parsed[index % 4],
                domain: DOMAIN,
                message: &messages[index],
                signature: &signatures[index],
            })
            .collect();
        assert!(ed25519::verify_batch_all(&items, &[size as u8; 32]), "size {size}");
    }
    signatures[57][40] ^= 1;
    let items: Vec<BatchItem<'_>> = (0..100)
        .map(|index| BatchItem {
            key: &parsed[index % 4],
            domain: DOMAIN,
            message: &messages[index],
            signature: &signatures[index],
        })
        .collect();
    assert!(!ed25519::verify_batch_all(&items, &[9; 32]));
    let verdicts = ed25519::verify_batch(&items, &[9; 32]);
    assert_eq!(verdicts.iter().filter(|valid| !**valid).count(), 1);
    assert!(!verdicts[57]);
}

/// The batch merges the A terms of one key: by reference for a run of items
/// that share one parsed key (a stream's messages), by bytes otherwise. A
/// wrong merge would only show as `verify_batch_all` rejecting valid batches,
/// so this checks that it accepts runs, interleavings and two separately
/// parsed copies of the same key, and still rejects one bad signature.
#[test]
fn batch_equation_merges_keys_in_runs_and_copies() {
    let keys: Vec<SigningKey> = (0..3u8).map(|index| SigningKey::from_seed(&[index + 80; 32])).collect();
    let parsed: Vec<PublicKey> = keys.iter().map(SigningKey::public_key).collect();
    // A second parse of key 0: equal bytes, another object.
    let copy = PublicKey::from_bytes(*parsed[0].as_bytes()).unwrap();
    // Runs: 0 0 0 1 1 0' 0' 2 0 1 1 1 0' 2 2 (0' is the copy).
    let pattern: [(usize, bool); 15] = [
        (0, false),
        (0, false),
        (0, false),
        (1, false),
        (1, false),
        (0, true),
        (0, true),
        (2, false),
        (0, false),
        (1, false),
        (1, false),
        (1, false),
        (0, true),
        (2, false),
        (2, false),
    ];
    let messages: Vec<Vec<u8>> = (0..pattern.len())
        .map(|index| format!("run {index}").into_bytes())
        .collect();
    let mut signatures: Vec<[u8; 64]> = pattern
        .iter()
        .zip(&messages)
        .map(|((key, _), message)| keys[*key].sign(DOMAIN, message))
        .collect();
    for bad in [None, Some(1usize), Some(6), Some(14)] {
        if let Some(index) = bad {
            signatures[index][50] ^= 4;
        }
        let batch: Vec<BatchItem<'_>> = pattern
            .iter()
            .enumerate()
            .map(|(index, (key, use_copy))| BatchItem {
                key: if *use_copy { &copy } else { &parsed[*key] },
                domain: DOMAIN,
                message: &messages[index],
                signature: &signatures[index],
            })
            .collect();
        assert_eq!(
            ed25519::verify_batch_all(&batch, &[3; 32]),
            bad.is_none(),
            "bad {bad:?}"
        );
        let verdicts = ed25519::verify_batch(&batch, &[3; 32]);
        for (index, verdict) in verdicts.iter().enumerate() {
            assert_eq!(*verdict, Some(index) != bad, "item {index}, bad {bad:?}");
        }
        if let Some(index) = bad {
            signatures[index][50] ^= 4;
        }
    }
}
