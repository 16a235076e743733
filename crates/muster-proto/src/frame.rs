//! Binary output frames.
//!
//! Layout of one WebSocket binary message:
//!
//! ```text
//! +----------------------+----------------------------+-------------------+
//! | header length: u32be | header: JSON, UTF-8        | payload: raw bytes|
//! +----------------------+----------------------------+-------------------+
//! ```
//!
//! The header is `{"type":"run.output","data":{"run":…,"stream":…,"seq":…,"offset":…}}`.
//! The payload is the process output exactly as read, so any byte sequence —
//! including invalid UTF-8 — survives. An agent sends the frame to the hub; the
//! hub stores the payload and forwards the very same bytes to subscribers.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::ids::RunId;
use crate::limits::{MAX_OUTPUT_CHUNK_BYTES, MAX_OUTPUT_HEADER_BYTES};
use crate::types::OutputStream;

/// The `type` of an output frame header.
pub const OUTPUT_FRAME_TYPE: &str = "run.output";

/// The header of an output frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputHeader {
    /// The run the output belongs to.
    pub run: RunId,
    /// Which stream it came from.
    pub stream: OutputStream,
    /// Chunk number within the run, over both streams, starting at 0, no gaps.
    pub seq: u64,
    /// Byte offset of the payload's first byte within its stream.
    pub offset: u64,
    /// Sessions only: when the agent read the chunk (for playback timing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<crate::UnixMillis>,
}

#[derive(Serialize, Deserialize)]
struct HeaderWire<T> {
    #[serde(rename = "type")]
    kind: String,
    data: T,
}

/// A decoded output frame: header plus payload, the payload sharing the frame's buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputFrame {
    /// Header fields.
    pub header: OutputHeader,
    /// Output bytes.
    pub payload: Bytes,
}

impl OutputFrame {
    /// Encodes header and payload into one binary message.
    pub fn encode(header: &OutputHeader, payload: &[u8]) -> Bytes {
        let json = serde_json::to_vec(&HeaderWire {
            kind: OUTPUT_FRAME_TYPE.to_owned(),
            data: header,
        })
        .expect("output header always serializes");
        let mut buf = BytesMut::with_capacity(4 + json.len() + payload.len());
        buf.put_u32(json.len() as u32);
        buf.put_slice(&json);
        buf.put_slice(payload);
        buf.freeze()
    }

    /// Decodes a binary message, checking the header and the chunk size.
    pub fn decode(frame: Bytes) -> Result<Self, FrameError> {
        if frame.len() < 4 {
            return Err(FrameError::Short);
        }
        let header_len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        if header_len > MAX_OUTPUT_HEADER_BYTES || 4 + header_len > frame.len() {
            return Err(FrameError::HeaderLength(header_len));
        }
        let wire: HeaderWire<OutputHeader> = serde_json::from_slice(&frame[4..4 + header_len])
            .map_err(|e| FrameError::Header(e.to_string()))?;
        if wire.kind != OUTPUT_FRAME_TYPE {
            return Err(FrameError::Type(wire.kind));
        }
        let payload = frame.slice(4 + header_len..);
        if payload.len() > MAX_OUTPUT_CHUNK_BYTES {
            return Err(FrameError::ChunkTooBig(payload.len()));
        }
        Ok(Self {
            header: wire.data,
            payload,
        })
    }
}

/// Why a binary frame was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer than four bytes.
    #[error("binary frame shorter than its length prefix")]
    Short,
    /// The length prefix is too large or points past the end.
    #[error("binary frame header length {0} is out of bounds")]
    HeaderLength(usize),
    /// The header is not a valid output header.
    #[error("invalid binary frame header: {0}")]
    Header(String),
    /// The header's type is not `run.output`.
    #[error("unknown binary frame type {0:?}")]
    Type(String),
    /// The payload exceeds the chunk limit.
    #[error("output chunk of {0} bytes exceeds the 10 KiB limit")]
    ChunkTooBig(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arbitrary_bytes_round_trip() {
        let header = OutputHeader {
            run: RunId::generate(),
            stream: OutputStream::Stderr,
            seq: 42,
            offset: 1 << 33,
            at: None,
        };
        let payload: Vec<u8> = (0..=255u8).rev().collect();
        let frame = OutputFrame::encode(&header, &payload);
        let back = OutputFrame::decode(frame).unwrap();
        assert_eq!(back.header, header);
        assert_eq!(&back.payload[..], &payload[..]);
    }

    #[test]
    fn truncated_frames_are_rejected() {
        assert_eq!(
            OutputFrame::decode(Bytes::from_static(b"\0\0")),
            Err(FrameError::Short)
        );
        let err = OutputFrame::decode(Bytes::from_static(b"\0\0\0\x20{}")).unwrap_err();
        assert_eq!(err, FrameError::HeaderLength(32));
    }

    #[test]
    fn oversized_chunk_is_rejected() {
        let header = OutputHeader {
            run: RunId::generate(),
            stream: OutputStream::Stdout,
            seq: 0,
            offset: 0,
            at: None,
        };
        let frame = OutputFrame::encode(&header, &vec![0; MAX_OUTPUT_CHUNK_BYTES + 1]);
        assert!(matches!(
            OutputFrame::decode(frame),
            Err(FrameError::ChunkTooBig(_))
        ));
    }
}
