//! Bounded text fields. Each type can only hold a value that encodes within
//! its limit and alphabet, so encoding never truncates.

use std::fmt;

use bytes::BytesMut;

use crate::codec::{Reader, put_bytes_u8};
use crate::error::DecodeError;
use crate::limits::{ADDRESS_BYTES_MAX, COUNTER_NAME_BYTES_MAX, NAME_BYTES_MAX};

macro_rules! bounded_text {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Check and wrap a value.
            pub fn new(value: impl Into<String>) -> Result<Self, DecodeError> {
                let value = value.into();
                if value.is_empty() || value.len() > $max {
                    return Err(DecodeError::FieldTooLong {
                        field: $field,
                        length: value.len(),
                        max: $max,
                    });
                }
                let allowed: fn(u8) -> bool = $allowed;
                if !value.bytes().all(allowed) {
                    return Err(DecodeError::InvalidText { field: $field });
                }
                Ok(Self(value))
            }

            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub(crate) fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
                let raw = reader.bytes_u8($max, $field)?;
                let text = std::str::from_utf8(&raw).map_err(|_| DecodeError::InvalidText { field: $field })?;
                Self::new(text)
            }

            pub(crate) fn encode(&self, out: &mut BytesMut) {
                put_bytes_u8(out, self.0.as_bytes());
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

bounded_text!(
    /// A network address (b2, c1, d1): 1..=253 bytes of printable ASCII.
    Address,
    "address",
    ADDRESS_BYTES_MAX,
    |byte| (0x21..=0x7e).contains(&byte)
);

bounded_text!(
    /// A user, provider or node name: 1..=64 bytes of `[A-Za-z0-9._-]`.
    Name,
    "name",
    NAME_BYTES_MAX,
    |byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-')
);

bounded_text!(
    /// A custom counter name (e5): 1..=32 bytes of `[a-z0-9._-]`.
    CounterName,
    "counter name",
    COUNTER_NAME_BYTES_MAX,
    |byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'.' | b'_' | b'-')
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_alphabets() {
        assert!(Address::new("127.0.0.1:4433").is_ok());
        assert!(Address::new("").is_err());
        assert!(Address::new("a b").is_err());
        assert!(Address::new("x".repeat(253)).is_ok());
        assert!(Address::new("x".repeat(254)).is_err());
        assert!(Name::new("provider-0001").is_ok());
        assert!(Name::new("provider/1").is_err());
        assert!(CounterName::new("gpu_seconds").is_ok());
        assert!(CounterName::new("GPU").is_err());
        assert!(CounterName::new("x".repeat(33)).is_err());
    }
}
