//! Every input in the fuzz corpus (seeds and anything the fuzzer kept or
//! found) decodes without panicking, and what decodes re-encodes unchanged.

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use wire::{Frame, FrameDecoder, Message};

#[test]
fn fuzz_corpus_is_a_regression_suite() {
    let folder = manifest_dir().join("../fuzz/corpus/decode");
    let mut decoded = 0usize;
    let mut files = 0usize;
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        files += 1;
        if let Ok(message) = Message::decode(Bytes::from(bytes.clone())) {
            assert_eq!(message.to_frame().as_ref(), bytes.as_slice(), "{}", path.display());
            decoded += 1;
        }
    }
    // The committed seeds include one valid frame of every message type.
    assert!(files >= 12 && decoded >= 12, "{files} files, {decoded} decoded");
}

/// The frames target's corpus: each stream (after its two seed bytes)
/// decodes the same read at once and read one byte at a time.
#[test]
fn frames_corpus_decodes_the_same_in_any_pieces() {
    let folder = manifest_dir().join("../fuzz/corpus/frames");
    let mut files = 0usize;
    let mut frames = 0usize;
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let Some(stream) = bytes.get(2..) else { continue };
        files += 1;
        let whole = read_all(stream, usize::MAX);
        assert_eq!(whole, read_all(stream, 1), "{}", path.display());
        frames += whole.0.len();
    }
    assert!(files >= 100 && frames >= 100, "{files} files, {frames} frames");
}

/// The frames of `stream` fed `piece` bytes at a time, and whether it
/// ended in an error.
fn read_all(stream: &[u8], piece: usize) -> (Vec<Frame>, bool) {
    let decoder = FrameDecoder::new(wire::limits::SMALL_FRAME_BODY_BYTES_MAX);
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    let mut offset = 0;
    loop {
        loop {
            match decoder.next_frame(&mut buffer) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
        if offset == stream.len() {
            return (frames, false);
        }
        let take = piece.min(stream.len() - offset);
        buffer.extend_from_slice(&stream[offset..offset + take]);
        offset += take;
    }
}

/// This crate's folder, read when the test runs (cargo sets it for the test
/// process): a binary reused from a clone at another path still finds the
/// files of the checkout it runs in.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}
