//! Authenticated messages: the exact received bytes are what is verified.
//!
//! A signed message's body is `fields || signature(64)`; a MAC'd message's
//! body is `fields || mac(32)`. The signature covers `DOMAIN || fields` where
//! `DOMAIN` is the message type's domain-separation prefix (ASCII, ending in
//! a NUL byte, listed in `docs/protocol.md`). Decoding keeps the received body
//! as a zero-copy [`Bytes`], so verification hashes the bytes that arrived and
//! re-encoding is never needed; encoding a decoded message writes them back
//! unchanged.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::codec::Reader;
use crate::ed25519::{self, BatchItem, PublicKey, SigningKey};
use crate::error::{DecodeError, EncodeError, SignatureError};
use crate::frame::{MessageType, put_frame};
use crate::ids::SessionKey;
use crate::limits::{MAC_BYTES, SIGNATURE_BYTES};

/// The fields of a message signed with Ed25519.
pub trait SignedFields: Sized {
    /// Frame type of the message.
    const MESSAGE_TYPE: MessageType;
    /// Domain-separation prefix hashed before the fields.
    const DOMAIN: &'static [u8];
    /// Append the fields (everything but the signature).
    fn encode_fields(&self, out: &mut BytesMut);
    /// Read the fields; the reader is checked for trailing bytes afterwards.
    fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

/// The fields of a message authenticated with HMAC-SHA256 under a session key.
pub trait MacedFields: Sized {
    /// Frame type of the message.
    const MESSAGE_TYPE: MessageType;
    /// Domain-separation prefix hashed before the fields.
    const DOMAIN: &'static [u8];
    /// Append the fields (everything but the MAC).
    fn encode_fields(&self, out: &mut BytesMut);
    /// Read the fields; the reader is checked for trailing bytes afterwards.
    fn decode_fields(reader: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

/// A message with its Ed25519 signature and the exact bytes it was made of.
#[derive(Clone, PartialEq, Eq)]
pub struct Signed<T> {
    value: T,
    body: Bytes,
    signature: [u8; SIGNATURE_BYTES],
}

impl<T: SignedFields> Signed<T> {
    /// Encode `value` and sign it. The encoded fields are decoded back first,
    /// so a value the peer would refuse (a bound exceeded, a duplicate
    /// counter name) is an error here instead of a signed, unusable frame.
    pub fn sign(value: T, key: &SigningKey) -> Result<Self, EncodeError> {
        let body = encode_checked(
            &value,
            T::encode_fields,
            T::decode_fields,
            SIGNATURE_BYTES,
            T::MESSAGE_TYPE,
        )?;
        let signature = key.sign(T::DOMAIN, &body);
        Ok(Self {
            value,
            body: append(body, &signature),
            signature,
        })
    }

    /// Decode a frame body: fields, then the 64-byte signature. Verifies nothing.
    pub fn decode_body(body: Bytes) -> Result<Self, DecodeError> {
        let (fields, signature) = split_tail::<SIGNATURE_BYTES>(&body, "signature")?;
        let mut reader = Reader::new(&fields);
        let value = T::decode_fields(&mut reader)?;
        reader.finish()?;
        Ok(Self { value, body, signature })
    }

    /// The decoded fields.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The whole body: signed bytes then signature.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The bytes the signature covers (after the domain prefix).
    pub fn signed_bytes(&self) -> &[u8] {
        // Invariant: body = fields || signature, so the subtraction holds.
        self.body.get(..self.body.len() - SIGNATURE_BYTES).unwrap_or_default()
    }

    /// The signature as received.
    pub fn signature(&self) -> &[u8; SIGNATURE_BYTES] {
        &self.signature
    }

    /// Verify the signature under `key` with the ZIP-215 rule.
    pub fn verify(&self, key: &PublicKey) -> Result<(), SignatureError> {
        ed25519::verify(key, T::DOMAIN, self.signed_bytes(), &self.signature)
    }

    /// This message as an item for [`ed25519::verify_batch`].
    pub fn batch_item<'a>(&'a self, key: &'a PublicKey) -> BatchItem<'a> {
        BatchItem {
            key,
            domain: T::DOMAIN,
            message: self.signed_bytes(),
            signature: &self.signature,
        }
    }

    /// Append this message as a frame.
    pub fn encode_frame(&self, out: &mut BytesMut) {
        put_frame(out, T::MESSAGE_TYPE, &self.body);
    }

    /// Give up the parts.
    pub fn into_parts(self) -> (T, Bytes) {
        (self.value, self.body)
    }
}

/// A message with its HMAC-SHA256 tag and the exact bytes it was made of.
#[derive(Clone, PartialEq, Eq)]
pub struct Maced<T> {
    value: T,
    body: Bytes,
    mac: [u8; MAC_BYTES],
}

impl<T: MacedFields> Maced<T> {
    /// Encode `value` and authenticate it with the session key; like
    /// [`Signed::sign`], the fields are decoded back first.
    pub fn seal(value: T, key: &SessionKey) -> Result<Self, EncodeError> {
        let body = encode_checked(&value, T::encode_fields, T::decode_fields, MAC_BYTES, T::MESSAGE_TYPE)?;
        let mac = compute_mac(key, T::DOMAIN, &body);
        Ok(Self {
            value,
            body: append(body, &mac),
            mac,
        })
    }

    /// Decode a frame body: fields, then the 32-byte MAC. Verifies nothing.
    pub fn decode_body(body: Bytes) -> Result<Self, DecodeError> {
        let (fields, mac) = split_tail::<MAC_BYTES>(&body, "mac")?;
        let mut reader = Reader::new(&fields);
        let value = T::decode_fields(&mut reader)?;
        reader.finish()?;
        Ok(Self { value, body, mac })
    }

    /// The decoded fields.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The whole body: authenticated bytes then MAC.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The MAC as received.
    pub fn mac(&self) -> &[u8; MAC_BYTES] {
        &self.mac
    }

    /// Check the MAC in constant time.
    pub fn verify(&self, key: &SessionKey) -> Result<(), SignatureError> {
        let fields = self.body.get(..self.body.len() - MAC_BYTES).unwrap_or_default();
        let mut mac = new_mac(key);
        mac.update(T::DOMAIN);
        mac.update(fields);
        mac.verify_slice(&self.mac).map_err(|_| SignatureError::MacMismatch)
    }

    /// Append this message as a frame.
    pub fn encode_frame(&self, out: &mut BytesMut) {
        put_frame(out, T::MESSAGE_TYPE, &self.body);
    }
}

/// HMAC-SHA256(key, domain || message).
pub fn compute_mac(key: &SessionKey, domain: &[u8], message: &[u8]) -> [u8; MAC_BYTES] {
    let mut mac = new_mac(key);
    mac.update(domain);
    mac.update(message);
    let tag = mac.finalize().into_bytes();
    let mut out = [0u8; MAC_BYTES];
    out.copy_from_slice(&tag);
    out
}

/// The decoded fields (whose own `Debug` redacts keys) and the length of
/// the body, never its bytes: a credential's body carries the session key
/// (b3, c3) in the clear, and a log line must not.
impl<T: fmt::Debug> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("value", &self.value)
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// As for [`Signed`]: the fields and the body's length only.
impl<T: fmt::Debug> fmt::Debug for Maced<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maced")
            .field("value", &self.value)
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

fn new_mac(key: &SessionKey) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; a 32-byte key cannot fail.
    <Hmac<Sha256> as KeyInit>::new_from_slice(&key.0).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// Encode fields, check that they decode and that the whole body will fit
/// its frame.
fn encode_checked<T>(
    value: &T,
    encode: fn(&T, &mut BytesMut),
    decode: fn(&mut Reader<'_>) -> Result<T, DecodeError>,
    tail_bytes: usize,
    message_type: MessageType,
) -> Result<Bytes, DecodeError> {
    let mut fields = BytesMut::with_capacity(256);
    encode(value, &mut fields);
    let fields = fields.freeze();
    let max = message_type.body_bytes_max().unwrap_or(0);
    if fields.len() + tail_bytes > max {
        return Err(DecodeError::FrameTooLarge {
            message_type: message_type.0,
            length: fields.len() + tail_bytes,
            max,
        });
    }
    let mut reader = Reader::new(&fields);
    decode(&mut reader)?;
    reader.finish()?;
    Ok(fields)
}

fn append(fields: Bytes, tail: &[u8]) -> Bytes {
    let mut body = BytesMut::with_capacity(fields.len() + tail.len());
    body.put_slice(&fields);
    body.put_slice(tail);
    body.freeze()
}

fn split_tail<const N: usize>(body: &Bytes, field: &'static str) -> Result<(Bytes, [u8; N]), DecodeError> {
    let fields_len = body.len().checked_sub(N).ok_or(DecodeError::Truncated {
        field,
        needed: N,
        remaining: body.len(),
    })?;
    let fields = body.slice(..fields_len);
    let mut tail = [0u8; N];
    if let Some(source) = body.get(fields_len..) {
        tail.copy_from_slice(source);
    }
    Ok((fields, tail))
}
