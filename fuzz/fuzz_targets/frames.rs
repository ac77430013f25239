//! A stream of frames read in arbitrary pieces decodes exactly as the same
//! bytes read at once: what a QUIC stream delivers at any byte boundary must
//! never change what the AM sees, and nothing may panic.
//!
//! Input: two bytes of seed for the piece sizes, then the stream.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wire::{Frame, FrameDecoder};

/// What a decoder made of a stream: the frames and whether it
/// stopped on an error.
fn read_all(stream: &[u8], pieces: &mut dyn FnMut() -> usize) -> (Vec<Frame>, bool) {
    let decoder = FrameDecoder::new(wire::limits::SMALL_FRAME_BODY_BYTES_MAX);
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    let mut offset = 0;
    // Each round appends at least one byte or ends: bounded by the input.
    loop {
        loop {
            match decoder.next_frame(&mut buffer) {
                Ok(Some(frame)) => {
                    // Decoding the body must not panic either.
                    let _ = frame.clone().decode();
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
        if offset == stream.len() {
            return (frames, false);
        }
        let take = pieces().clamp(1, stream.len() - offset);
        buffer.extend_from_slice(&stream[offset..offset + take]);
        offset += take;
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let mut state = u16::from_le_bytes([data[0], data[1]]) as u32 | 1;
    let stream = &data[2..];
    let whole = read_all(stream, &mut || usize::MAX);
    let mut split = || {
        // xorshift: piece sizes 1..=16, often a single byte.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 16) as usize + 1
    };
    let pieces = read_all(stream, &mut split);
    assert_eq!(whole, pieces, "the piece sizes changed what was decoded");
    let bytes = read_all(stream, &mut || 1);
    assert_eq!(whole, bytes, "byte-by-byte reading changed what was decoded");
});
