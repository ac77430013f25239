//! Decode arbitrary bytes as a frame and as a stream of frames. Must never
//! panic; a frame that decodes must re-encode to the same bytes.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use wire::{FrameDecoder, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(Bytes::copy_from_slice(data)) {
        assert_eq!(
            message.to_frame().as_ref(),
            data,
            "decode then encode changed the bytes"
        );
    }
    let decoder = FrameDecoder::new(wire::limits::SMALL_FRAME_BODY_BYTES_MAX);
    let mut buffer = BytesMut::from(data);
    // At most one frame per 6 header bytes: the loop is bounded by the input.
    for _ in 0..=data.len() / 6 {
        match decoder.next_frame(&mut buffer) {
            Ok(Some(frame)) => {
                let _ = frame.decode();
            }
            Ok(None) | Err(_) => break,
        }
    }
});
