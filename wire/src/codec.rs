//! The one reader and the writer helpers every message uses.
//!
//! All integers are big-endian and fixed-width. Variable-length fields carry a
//! length prefix (u8, u16 or u32 as the field's maximum needs) that is checked
//! against the field's maximum and against the bytes present before anything
//! is copied or allocated.

use bytes::{BufMut, Bytes};

use crate::error::DecodeError;

/// A cursor over untrusted bytes with only checked reads.
pub struct Reader<'a> {
    input: &'a Bytes,
    position: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `input`.
    pub fn new(input: &'a Bytes) -> Self {
        Self { input, position: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.input.len().saturating_sub(self.position)
    }

    /// The read position, in bytes from the start.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Take exactly `count` bytes as a zero-copy slice of the input.
    pub fn take(&mut self, count: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let end = self.end_of(count, field)?;
        let slice = self.input.slice(self.position..end);
        self.position = end;
        Ok(slice)
    }

    /// Read a fixed-size array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let end = self.end_of(N, field)?;
        let mut out = [0u8; N];
        if let Some(source) = self.input.get(self.position..end) {
            out.copy_from_slice(source);
        }
        self.position = end;
        Ok(out)
    }

    /// Read one byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array::<1>(field)?))
    }

    /// Read a big-endian u16.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array::<2>(field)?))
    }

    /// Read a big-endian u32.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array::<4>(field)?))
    }

    /// Read a big-endian u64.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array::<8>(field)?))
    }

    /// Read a boolean encoded as 0 or 1; any other value is an error.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::InvalidValue {
                field,
                reason: "boolean must be 0 or 1",
            }),
        }
    }

    /// Read bytes with a u8 length prefix, at most `max` long.
    pub fn bytes_u8(&mut self, max: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let length = usize::from(self.u8(field)?);
        self.bounded(length, max, field)
    }

    /// Read bytes with a u16 length prefix, at most `max` long.
    pub fn bytes_u16(&mut self, max: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let length = usize::from(self.u16(field)?);
        self.bounded(length, max, field)
    }

    /// Read bytes with a u32 length prefix, at most `max` long.
    pub fn bytes_u32(&mut self, max: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let length = usize::try_from(self.u32(field)?).unwrap_or(usize::MAX);
        self.bounded(length, max, field)
    }

    /// Read UTF-8 text with a u8 length prefix, at most `max` bytes.
    pub fn text_u8(&mut self, max: usize, field: &'static str) -> Result<String, DecodeError> {
        let raw = self.bytes_u8(max, field)?;
        utf8(&raw, field)
    }

    /// Read UTF-8 text with a u16 length prefix, at most `max` bytes.
    pub fn text_u16(&mut self, max: usize, field: &'static str) -> Result<String, DecodeError> {
        let raw = self.bytes_u16(max, field)?;
        utf8(&raw, field)
    }

    /// Succeed only if every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { count }),
        }
    }

    fn bounded(&mut self, length: usize, max: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if length > max {
            return Err(DecodeError::FieldTooLong { field, length, max });
        }
        self.take(length, field)
    }

    fn end_of(&self, count: usize, field: &'static str) -> Result<usize, DecodeError> {
        let remaining = self.remaining();
        if count > remaining {
            return Err(DecodeError::Truncated {
                field,
                needed: count,
                remaining,
            });
        }
        Ok(self.position + count)
    }
}

fn utf8(raw: &[u8], field: &'static str) -> Result<String, DecodeError> {
    std::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|_| DecodeError::InvalidText { field })
}

/// Write bytes with a u8 length prefix. A value over the prefix's range
/// writes a wrong length that the decode-back check in `Signed::sign` (and
/// the peer) refuses; bounded types never produce one.
pub fn put_bytes_u8(out: &mut impl BufMut, value: &[u8]) {
    out.put_u8(u8::try_from(value.len()).unwrap_or(u8::MAX));
    out.put_slice(value);
}

/// Write bytes with a u16 length prefix.
pub fn put_bytes_u16(out: &mut impl BufMut, value: &[u8]) {
    out.put_u16(u16::try_from(value.len()).unwrap_or(u16::MAX));
    out.put_slice(value);
}

/// Write bytes with a u32 length prefix.
pub fn put_bytes_u32(out: &mut impl BufMut, value: &[u8]) {
    out.put_u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
    out.put_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_checked() {
        let input = Bytes::from_static(&[0, 1, 2]);
        let mut reader = Reader::new(&input);
        assert_eq!(reader.u16("a").unwrap(), 1);
        assert_eq!(
            reader.u16("b"),
            Err(DecodeError::Truncated {
                field: "b",
                needed: 2,
                remaining: 1
            })
        );
        assert_eq!(reader.u8("c").unwrap(), 2);
        assert!(reader.finish().is_ok());
    }

    #[test]
    fn declared_length_is_checked_before_reading() {
        let input = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]);
        let mut reader = Reader::new(&input);
        assert_eq!(
            reader.bytes_u32(100, "payload"),
            Err(DecodeError::FieldTooLong {
                field: "payload",
                length: 0xffff_ffff,
                max: 100
            })
        );
        let input = Bytes::from_static(&[5, 1, 2]);
        let mut reader = Reader::new(&input);
        assert!(matches!(
            reader.bytes_u8(10, "x"),
            Err(DecodeError::Truncated {
                needed: 5,
                remaining: 2,
                ..
            })
        ));
    }

    #[test]
    fn trailing_bytes_and_bad_bool_are_errors() {
        let input = Bytes::from_static(&[2, 9]);
        let mut reader = Reader::new(&input);
        assert!(matches!(reader.bool("flag"), Err(DecodeError::InvalidValue { .. })));
        assert_eq!(reader.finish(), Err(DecodeError::TrailingBytes { count: 1 }));
    }
}
