//! Reading frames from a QUIC stream: the one reader behind every stream the
//! AM serves (provider, user and admin). It owns the stream's receive side,
//! its frame decoder and its buffer, which grows only to what the peer
//! sends: at most one frame of `body_bytes_max` plus one read.

use bytes::BytesMut;
use tokio::sync::watch;
use wire::{DecodeError, Frame, FrameDecoder};

use super::codes::frame_error;

/// A stream's receive side, cut into frames.
pub(super) struct FrameReader {
    receive: quinn::RecvStream,
    decoder: FrameDecoder,
    buffer: BytesMut,
    read_bytes_max: usize,
}

impl FrameReader {
    /// Frames of at most `body_bytes_max` body bytes, read at most
    /// `read_bytes_max` at a time. The buffer starts empty: an idle stream
    /// (of thousands) holds no memory.
    pub(super) fn new(receive: quinn::RecvStream, body_bytes_max: usize, read_bytes_max: usize) -> Self {
        Self {
            receive,
            decoder: FrameDecoder::new(body_bytes_max),
            buffer: BytesMut::new(),
            read_bytes_max,
        }
    }

    /// The next complete frame among the bytes already read; `Ok(None)`
    /// when more must be read. An error leaves the stream unusable.
    pub(super) fn buffered(&mut self) -> Result<Option<Frame>, DecodeError> {
        self.decoder.next_frame(&mut self.buffer)
    }

    /// Bytes read and not yet cut into a frame.
    pub(super) fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Read once from the stream: the number of bytes read, or `None` at
    /// its end or when it failed.
    pub(super) async fn read(&mut self) -> Option<usize> {
        match self.receive.read_chunk(self.read_bytes_max, true).await {
            Ok(Some(chunk)) => {
                self.buffer.extend_from_slice(&chunk.bytes);
                Some(chunk.bytes.len())
            }
            Ok(None) | Err(_) => None,
        }
    }

    /// For streams of requests, one answer each (user, admin): the next
    /// frame, reading as needed. `None` at the stream's end, when it failed,
    /// or when `stop` changes (shutdown).
    pub(super) async fn next_request(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Result<Frame, DecodeError>> {
        loop {
            match self.buffered() {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Ok(None) => {}
                Err(error) => return Some(Err(error)),
            }
            tokio::select! {
                read = self.read() => read?,
                _ = stop.changed() => return None,
            };
        }
    }

    /// [`Self::next_request`] for a stream that answers: a frame that does
    /// not decode is answered on `send` with its Error and ends the stream
    /// (`None`, as at its end or on shutdown).
    pub(super) async fn next_request_or_answer_error(
        &mut self,
        stop: &mut watch::Receiver<bool>,
        send: &mut quinn::SendStream,
    ) -> Option<Frame> {
        match self.next_request(stop).await? {
            Ok(frame) => Some(frame),
            Err(error) => {
                let mut out = bytes::BytesMut::new();
                frame_error(&error).encode_frame(&mut out);
                let _ = send.write_all(&out).await;
                None
            }
        }
    }

    /// Tell the peer to stop sending (after a protocol error).
    pub(super) fn stop(&mut self) {
        let _ = self.receive.stop(0u32.into());
    }
}
