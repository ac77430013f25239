//! Ed25519 signing and verification with one acceptance rule: ZIP-215.
//!
//! # The rule
//!
//! A signature `(R, S)` on message `M` under public key `A` is valid iff
//!
//! 1. `S` (bytes 32..64) is a canonical scalar: `S < L`;
//! 2. `A` and `R` each decode to a curve point. Non-canonical encodings
//!    (y >= p, or x = 0 with the sign bit set) are accepted, exactly as
//!    ZIP-215 specifies; the hash below uses the bytes as received;
//! 3. with `k = SHA-512(R_bytes || A_bytes || M) mod L`, the *cofactored*
//!    equation holds: `[8]([S]B - [k]A - R) = identity`.
//!
//! Here `M` is the message type's domain-separation prefix followed by the
//! exact signed bytes (see `signed.rs`); nothing is re-encoded to verify.
//!
//! This is the rule of ZIP-215, implemented by `ed25519-zebra` and
//! `ed25519-consensus` in Rust and `ed25519consensus` in Go, so an outside
//! auditor can re-verify stored records with an off-the-shelf library. It is
//! chosen over strict RFC 8032 because single and batch verification agree
//! under it: the batch equation is the cofactored sum of the single equations.
//!
//! # Batch and single agree
//!
//! [`verify_batch`] checks `[8](Σ zᵢ([Sᵢ]B - [kᵢ]Aᵢ - Rᵢ)) = identity` with
//! 128-bit coefficients `zᵢ` derived from a caller-supplied secret seed and a
//! hash of the whole batch. If every signature is valid under the rule the
//! batch equation holds for every choice of `zᵢ`, so a valid signature is
//! never rejected, whatever else is in its batch. If the equation fails, the
//! batch is split in halves until single signatures are left, and each of those
//! is decided by [`verify`]. An invalid signature passes a batch only if the
//! random combination cancels, with probability below 2⁻¹²⁰.
//! The per-signature work (decoding R, checking S, hashing k) is done once and
//! reused by every sub-batch; terms with the same public key are merged.

use std::collections::HashMap;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use sha2::{Digest, Sha512};

use crate::error::SignatureError;
use crate::limits::{PUBLIC_KEY_BYTES, SIGNATURE_BYTES};

/// A parsed Ed25519 public key. Parsing costs a point decompression (~4 µs),
/// so verifiers keep one per provider rather than parsing per message.
#[derive(Clone, Copy)]
pub struct PublicKey {
    bytes: [u8; PUBLIC_KEY_BYTES],
    point: EdwardsPoint,
}

impl PublicKey {
    /// Parse a public key: any encoding of a curve point is accepted (ZIP-215).
    pub fn from_bytes(bytes: [u8; PUBLIC_KEY_BYTES]) -> Result<Self, SignatureError> {
        let point = CompressedEdwardsY(bytes)
            .decompress()
            .ok_or(SignatureError::InvalidPublicKey)?;
        Ok(Self { bytes, point })
    }

    /// Parse the key of a party (a certificate's key, as it enters at
    /// connect, in a credential request's a5, or when a CA is loaded): a
    /// point as [`Self::from_bytes`] accepts, but neither of small order nor
    /// encoded non-canonically. Under ZIP-215 a small-order key verifies
    /// forged signatures on any message, so its holder could deny its own
    /// records; an honest key generator never makes one. A non-canonical
    /// encoding would give one key two byte strings.
    pub fn from_identity_bytes(bytes: [u8; PUBLIC_KEY_BYTES]) -> Result<Self, SignatureError> {
        let key = Self::from_bytes(bytes)?;
        if key.point.is_small_order() {
            return Err(SignatureError::SmallOrderPublicKey);
        }
        if key.point.compress().0 != bytes {
            return Err(SignatureError::NonCanonicalPublicKey);
        }
        Ok(key)
    }

    /// The key's bytes as encoded.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_BYTES] {
        &self.bytes
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey(")?;
        for byte in self.bytes {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl Eq for PublicKey {}

/// An Ed25519 signing key (RFC 8032 signing; signatures have canonical R and S).
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// A signing key from its 32-byte secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// A signing key from a PKCS#8 PEM document: version 1 (RFC 8410, as
    /// `acct init` and OpenSSL write it) or version 2 (with the public key,
    /// as earlier `acct init`s wrote it).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(Self)
            .map_err(|_| KeyError::Pkcs8)
    }

    /// This key as a PKCS#8 version 1 PEM document (RFC 8410: the seed
    /// only), the form OpenSSL (`openssl pkey`) and Python's `cryptography`
    /// read; they refuse version 2, which adds the public key.
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes};
        let seed_only = KeypairBytes {
            secret_key: self.0.to_bytes(),
            public_key: None,
        };
        seed_only
            .to_pkcs8_pem(Default::default())
            .map(|pem| pem.to_string())
            .map_err(|_| KeyError::Pkcs8)
    }

    /// This key as PKCS#8 DER.
    pub fn to_pkcs8_der(&self) -> Result<Vec<u8>, KeyError> {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        self.0
            .to_pkcs8_der()
            .map(|der| der.as_bytes().to_vec())
            .map_err(|_| KeyError::Pkcs8)
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        let bytes = self.0.verifying_key().to_bytes();
        // A key derived from a secret is always a valid point.
        PublicKey {
            bytes,
            point: CompressedEdwardsY(bytes)
                .decompress()
                .unwrap_or(ED25519_BASEPOINT_POINT),
        }
    }

    /// Sign `domain || message`.
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> [u8; SIGNATURE_BYTES] {
        use ed25519_dalek::Signer;
        // ed25519-dalek signs one contiguous message; the copy happens on the
        // signing side only (SPs and the AM's own messages), never on ingest.
        let mut input = Vec::with_capacity(domain.len() + message.len());
        input.extend_from_slice(domain);
        input.extend_from_slice(message);
        self.0.sign(&input).to_bytes()
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(<redacted>, public {:?})", self.public_key())
    }
}

/// Why a key could not be read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The PKCS#8 document is not an Ed25519 private key.
    #[error("not a PKCS#8 Ed25519 private key")]
    Pkcs8,
}

/// Verify one signature under the ZIP-215 rule (see the module docs).
pub fn verify(
    key: &PublicKey,
    domain: &[u8],
    message: &[u8],
    signature: &[u8; SIGNATURE_BYTES],
) -> Result<(), SignatureError> {
    let prepared = Prepared::new(key, domain, message, signature)?;
    if prepared.holds() {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// One signature to check in a batch.
#[derive(Clone, Copy, Debug)]
pub struct BatchItem<'a> {
    /// The signer's parsed key.
    pub key: &'a PublicKey,
    /// The message type's domain-separation prefix.
    pub domain: &'static [u8],
    /// The exact signed bytes.
    pub message: &'a [u8],
    /// The signature as received.
    pub signature: &'a [u8; SIGNATURE_BYTES],
}

/// Verify many signatures; `valid[i]` tells whether `items[i]` is valid under
/// the same rule as [`verify`]. `seed` must be secret and fresh per call (the
/// caller draws it from a CSPRNG); it keys the random coefficients.
pub fn verify_batch(items: &[BatchItem<'_>], seed: &[u8; 32]) -> Vec<bool> {
    let mut valid = vec![false; items.len()];
    // Items whose S or R cannot even be decoded stay false.
    let prepared = prepare(items);
    let mut batch = terms(seed, &prepared);
    check_or_split(&mut batch, &mut valid, false);
    valid
}

/// Whether every signature in `items` is valid, by one batch equation (no
/// splitting). `true` implies each item is valid under [`verify`] (except
/// with probability below 2⁻¹²⁰); `false` says at least one is not.
pub fn verify_batch_all(items: &[BatchItem<'_>], seed: &[u8; 32]) -> bool {
    let prepared = prepare(items);
    if prepared.len() != items.len() {
        return false;
    }
    let batch = terms(seed, &prepared);
    batch.is_empty() || batch_equation_holds(&batch)
}

/// The per-signature work for every item that decodes, with its index.
fn prepare<'a>(items: &[BatchItem<'a>]) -> Vec<(usize, Prepared<'a>)> {
    // Sized up front: `filter_map` gives no lower bound, and growing by
    // doubling would copy the entries (R alone is 160 bytes) again and again.
    let mut prepared = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        if let Ok(entry) = Prepared::new(item.key, item.domain, item.message, item.signature) {
            prepared.push((index, entry));
        }
    }
    prepared
}

/// The batch terms: each prepared signature with its random coefficient.
fn terms<'a, 'k>(seed: &[u8; 32], prepared: &'a [(usize, Prepared<'k>)]) -> Vec<Term<'a, 'k>> {
    prepared
        .iter()
        .zip(coefficients(seed, prepared))
        .map(|((index, entry), z)| Term {
            index: *index,
            entry,
            z,
        })
        .collect()
}

/// Per-signature work done once: decoded R, canonical S, the hash scalar k.
/// The key and the signature are borrowed, not copied: a batch moves these
/// entries around, and a copied key point alone would be 160 bytes each.
struct Prepared<'k> {
    key: &'k PublicKey,
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
    signature: &'k [u8; SIGNATURE_BYTES],
}

impl<'k> Prepared<'k> {
    fn new(
        key: &'k PublicKey,
        domain: &[u8],
        message: &[u8],
        signature: &'k [u8; SIGNATURE_BYTES],
    ) -> Result<Self, SignatureError> {
        let (r_bytes, s_bytes) = signature.split_at(32);
        let mut s_array = [0u8; 32];
        s_array.copy_from_slice(s_bytes);
        let s =
            Option::<Scalar>::from(Scalar::from_canonical_bytes(s_array)).ok_or(SignatureError::NonCanonicalScalar)?;
        let mut r_array = [0u8; 32];
        r_array.copy_from_slice(r_bytes);
        let r = CompressedEdwardsY(r_array)
            .decompress()
            .ok_or(SignatureError::InvalidR)?;
        let digest = Sha512::new()
            .chain_update(r_array)
            .chain_update(key.bytes)
            .chain_update(domain)
            .chain_update(message)
            .finalize();
        let mut wide = [0u8; 64];
        wide.copy_from_slice(&digest);
        let k = Scalar::from_bytes_mod_order_wide(&wide);
        Ok(Self {
            key,
            r,
            s,
            k,
            signature,
        })
    }

    /// The single cofactored equation: [8]([S]B - [k]A - R) = identity.
    fn holds(&self) -> bool {
        let sb_minus_ka = EdwardsPoint::vartime_double_scalar_mul_basepoint(&self.k, &(-self.key.point), &self.s);
        (sb_minus_ka - self.r).mul_by_cofactor().is_identity()
    }
}

struct Term<'a, 'k> {
    index: usize,
    entry: &'a Prepared<'k>,
    z: Scalar,
}

/// Below this size a failed batch is decided signature by signature: a batch
/// of two costs about as much as two single checks.
const SPLIT_TO_SINGLE_ITEMS_MAX: usize = 2;

/// Decide every term of `batch`. `known_to_fail` says the batch equation is
/// already known not to hold (its sibling passed while their parent failed),
/// which saves one multiscalar multiplication per level of the search.
fn check_or_split(batch: &mut [Term<'_, '_>], valid: &mut [bool], known_to_fail: bool) {
    if batch.is_empty() {
        return;
    }
    if batch.len() <= SPLIT_TO_SINGLE_ITEMS_MAX {
        for term in batch.iter() {
            if let Some(slot) = valid.get_mut(term.index) {
                *slot = term.entry.holds();
            }
        }
        return;
    }
    if !known_to_fail && batch_equation_holds(batch) {
        for term in batch.iter() {
            if let Some(slot) = valid.get_mut(term.index) {
                *slot = true;
            }
        }
        return;
    }
    // Recursion depth is log2(batch length): bounded by the caller's batch size.
    let middle = batch.len() / 2;
    let (left, right) = batch.split_at_mut(middle);
    let left_passes = left.len() > SPLIT_TO_SINGLE_ITEMS_MAX && batch_equation_holds(left);
    if left_passes {
        for term in left.iter() {
            if let Some(slot) = valid.get_mut(term.index) {
                *slot = true;
            }
        }
        // The whole failed and the left half holds: the right half fails.
        check_or_split(right, valid, true);
    } else {
        check_or_split(left, valid, left.len() > SPLIT_TO_SINGLE_ITEMS_MAX);
        check_or_split(right, valid, false);
    }
}

/// [8]( [-Σ zS]B + Σ z R + Σ_A (Σ z k) A ) = identity, keys merged: the sum
/// of z·(R + kA - SB), which is the identity when every single equation holds.
fn batch_equation_holds(batch: &[Term<'_, '_>]) -> bool {
    let mut scalars: Vec<Scalar> = Vec::with_capacity(2 * batch.len() + 1);
    let mut points: Vec<EdwardsPoint> = Vec::with_capacity(2 * batch.len() + 1);
    let mut b_coefficient = Scalar::ZERO;
    for term in batch {
        b_coefficient -= term.z * term.entry.s;
        scalars.push(term.z);
        points.push(term.entry.r);
    }
    scalars.push(b_coefficient);
    points.push(ED25519_BASEPOINT_POINT);
    // Merge the A terms of signatures by the same key: a batch from a few
    // hundred providers needs a few hundred A terms, not one per signature.
    // A stream's messages sit together in a batch and share one parsed key,
    // so a run of the same key is merged without hashing; the map catches
    // the rest (the same key from another stream or connection).
    let mut key_slots: HashMap<[u8; PUBLIC_KEY_BYTES], usize> = HashMap::with_capacity(batch.len());
    let mut last: Option<(&PublicKey, usize)> = None;
    for term in batch {
        let zk = term.z * term.entry.k;
        let key = term.entry.key;
        let slot = match last {
            Some((last_key, slot)) if std::ptr::eq(last_key, key) => slot,
            _ => *key_slots.entry(key.bytes).or_insert_with(|| {
                scalars.push(Scalar::ZERO);
                points.push(key.point);
                scalars.len() - 1
            }),
        };
        if let Some(scalar) = scalars.get_mut(slot) {
            *scalar += zk;
        }
        last = Some((key, slot));
    }
    EdwardsPoint::vartime_multiscalar_mul(scalars.iter(), points.iter())
        .mul_by_cofactor()
        .is_identity()
}

/// 128-bit coefficients from the secret seed and a hash of the whole batch,
/// so they are unpredictable to a sender even if the seed were weak.
fn coefficients(seed: &[u8; 32], prepared: &[(usize, Prepared<'_>)]) -> Vec<Scalar> {
    let mut transcript = Sha512::new();
    transcript.update(b"acct/1 ed25519 batch coefficients\0");
    transcript.update(seed);
    for (_, entry) in prepared {
        transcript.update(entry.key.bytes);
        transcript.update(entry.signature);
        transcript.update(entry.k.as_bytes());
    }
    let batch_digest = transcript.finalize();
    let mut out = Vec::with_capacity(prepared.len());
    let mut counter: u64 = 0;
    while out.len() < prepared.len() {
        let block = Sha512::new()
            .chain_update(batch_digest)
            .chain_update(counter.to_be_bytes())
            .finalize();
        for chunk in block.chunks_exact(16) {
            if out.len() == prepared.len() {
                break;
            }
            let mut bytes = [0u8; 32];
            bytes[..16].copy_from_slice(chunk);
            out.push(Scalar::from_bytes_mod_order(bytes));
        }
        counter += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_pkcs8_version_1_and_both_versions_are_read() {
        let key = SigningKey::from_seed(&[7; 32]);
        let pem = key.to_pkcs8_pem().unwrap();
        // RFC 8410's OneAsymmetricKey, version 1: SEQUENCE { INTEGER 0,
        // AlgorithmIdentifier { 1.3.101.112 }, OCTET STRING { OCTET STRING
        // seed } }: 48 bytes, no public key.
        let der = {
            use ed25519_dalek::pkcs8::{DecodePrivateKey, Document};
            let (_, document) = Document::from_pem(&pem).unwrap();
            assert!(ed25519_dalek::pkcs8::KeypairBytes::from_pkcs8_der(document.as_bytes()).is_ok());
            document.as_bytes().to_vec()
        };
        assert_eq!(der.len(), 48, "{der:02x?}");
        assert_eq!(&der[..5], &[0x30, 0x2e, 0x02, 0x01, 0x00], "version 1 (INTEGER 0)");
        assert_eq!(SigningKey::from_pkcs8_pem(&pem).unwrap().public_key(), key.public_key());
        // Version 2 (with the public key), as earlier releases wrote it.
        let version_2 = {
            use ed25519_dalek::pkcs8::EncodePrivateKey;
            key.0.to_pkcs8_pem(Default::default()).unwrap().to_string()
        };
        assert_ne!(version_2, pem);
        assert_eq!(
            SigningKey::from_pkcs8_pem(&version_2).unwrap().public_key(),
            key.public_key()
        );
        assert!(SigningKey::from_pkcs8_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
    }

    /// y as 32 little-endian bytes, the sign bit clear.
    fn y_bytes(y_low: u8, rest: u8, top: u8) -> [u8; 32] {
        let mut bytes = [rest; 32];
        bytes[0] = y_low;
        bytes[31] = top;
        bytes
    }

    #[test]
    fn identity_keys_refuse_small_order_and_non_canonical_encodings() {
        // The eight small-order points, from their canonical encodings: the
        // identity (y = 1), y = -1, the two of order 4 (y = 0, x = ±sqrt(-1))
        // and the four of order 8 (via the point of order 8 and its multiples).
        let order_8 = curve25519_dalek::constants::EIGHT_TORSION;
        let mut small = 0;
        for point in order_8 {
            let bytes = point.compress().0;
            assert_eq!(
                PublicKey::from_identity_bytes(bytes).err(),
                Some(SignatureError::SmallOrderPublicKey)
            );
            // Still a point to the ZIP-215 equation (section 5.4 of the
            // protocol); it is refused where a party's key enters.
            assert!(PublicKey::from_bytes(bytes).is_ok());
            small += 1;
        }
        assert_eq!(small, 8);
        // Non-canonical: y = p + k for small k (p = 2^255 - 19) decodes to
        // the point with y = k. Those of large order are refused as
        // non-canonical; at least one such k exists below 19.
        let mut non_canonical = 0;
        for k in 0..19u8 {
            let bytes = y_bytes(0xed + k, 0xff, 0x7f);
            let Ok(parsed) = PublicKey::from_bytes(bytes) else {
                continue;
            };
            let refused = PublicKey::from_identity_bytes(bytes).err();
            if parsed.point.is_small_order() {
                assert_eq!(refused, Some(SignatureError::SmallOrderPublicKey), "k = {k}");
            } else {
                assert_eq!(refused, Some(SignatureError::NonCanonicalPublicKey), "k = {k}");
                non_canonical += 1;
            }
        }
        assert!(non_canonical > 0);
        // A real key passes.
        let key = SigningKey::from_seed(&[3; 32]).public_key();
        assert_eq!(PublicKey::from_identity_bytes(*key.as_bytes()).unwrap(), key);
    }
}
