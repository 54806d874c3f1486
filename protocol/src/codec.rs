//! The frame codec: one protobuf [`Envelope`] per length-prefixed frame.
//!
//! ```text
//!  0               1               2               3
//! +---------------+---------------+---------------+---------------+
//! |          body length N (u32, big-endian, excludes itself)     |
//! +---------------+---------------+---------------+---------------+
//! |             N bytes: one protobuf-encoded Envelope            |
//! |                              ...                              |
//! +---------------------------------------------------------------+
//! ```
//!
//! The length is checked against the maximum before any of the body is read
//! or buffered, so a peer announcing a 4 GiB frame costs nothing. A length of
//! 0 is a valid frame: an Envelope with every field at its default (which the
//! server answers with UNKNOWN_REQUEST).

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

use crate::Envelope;

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX: usize = 4;

/// The default maximum frame body length: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

/// What can go wrong reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The length prefix announced a body above the maximum.
    #[error("frame of {len} bytes is above the maximum of {max}")]
    FrameTooLarge {
        /// The announced (or, when encoding, the actual) body length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The frame body was not a valid protobuf Envelope.
    #[error("frame is not a valid envelope: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The underlying transport failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Length-prefixed [`Envelope`] codec for `tokio_util::codec::Framed`.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    max_frame: usize,
}

impl Codec {
    /// A codec refusing frame bodies longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Codec { max_frame }
    }

    /// The largest frame body this codec accepts.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for Codec {
    type Item = Envelope;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Envelope>, CodecError> {
        let Some(prefix) = src.get(..LENGTH_PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix.try_into().expect("slice of 4 bytes")) as usize;
        if len > self.max_frame {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        let total = LENGTH_PREFIX + len;
        if src.len() < total {
            // Reserve only what this frame still needs (bounded by max_frame).
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(LENGTH_PREFIX);
        let body = src.split_to(len).freeze();
        Ok(Some(Envelope::decode(body)?))
    }
}

impl Encoder<Envelope> for Codec {
    type Error = CodecError;

    fn encode(&mut self, item: Envelope, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode(&item, dst)
    }
}

impl Encoder<&Envelope> for Codec {
    type Error = CodecError;

    fn encode(&mut self, item: &Envelope, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = item.encoded_len();
        if len > self.max_frame {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        dst.reserve(LENGTH_PREFIX + len);
        dst.put_u32(len as u32);
        item.encode(dst)
            .expect("buffer reserved for the whole envelope");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{self, Ping, SendRequest};
    use crate::Body;

    fn sample_frames() -> Vec<Envelope> {
        vec![
            Envelope::new(1, Body::Ping(Ping { client_time_ms: 42 })),
            Envelope::new(
                u64::MAX,
                Body::Send(SendRequest {
                    group_id: 0,
                    to_user_id: 7,
                    to_username: String::new(),
                    client_msg_id: "c-1".into(),
                    content_type: "text/plain".into(),
                    content: bytes::Bytes::from(vec![0xAB; 300]),
                }),
            ),
            Envelope::default(),
            Envelope::new(
                0,
                Body::Error(pb::Error::new(crate::ErrorCode::Internal, "x")),
            ),
        ]
    }

    fn encode_all(frames: &[Envelope]) -> BytesMut {
        let mut codec = Codec::default();
        let mut buf = BytesMut::new();
        for frame in frames {
            codec.encode(frame, &mut buf).unwrap();
        }
        buf
    }

    #[test]
    fn frames_round_trip_when_split_at_every_byte() {
        let frames = sample_frames();
        let wire = encode_all(&frames);
        for split in 0..=wire.len() {
            let mut codec = Codec::default();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in [&wire[..split], &wire[split..]] {
                buf.extend_from_slice(chunk);
                while let Some(frame) = codec.decode(&mut buf).unwrap() {
                    out.push(frame);
                }
            }
            assert_eq!(out, frames, "split at byte {split}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn frames_round_trip_when_fed_one_byte_at_a_time() {
        let frames = sample_frames();
        let wire = encode_all(&frames);
        let mut codec = Codec::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(out, frames);
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let mut codec = Codec::new(1024);
        for len in [1025u32, u32::MAX] {
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            let err = codec.decode(&mut buf).unwrap_err();
            assert!(
                matches!(err, CodecError::FrameTooLarge { len: l, max: 1024 } if l == len as usize),
                "{err:?}"
            );
            // Nothing of the announced size was reserved.
            assert!(buf.capacity() < 4096, "capacity {}", buf.capacity());
        }
    }

    #[test]
    fn frame_at_exactly_the_maximum_is_accepted() {
        let probe = Envelope::new(1, Body::Ping(Ping { client_time_ms: 1 }));
        let max = probe.encoded_len();
        let mut codec = Codec::new(max);
        let mut buf = BytesMut::new();
        codec.encode(&probe, &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(probe));
    }

    #[test]
    fn encoding_above_the_maximum_fails_and_writes_nothing() {
        let mut codec = Codec::new(16);
        let big = sample_frames().remove(1);
        let mut buf = BytesMut::new();
        assert!(matches!(
            codec.encode(&big, &mut buf),
            Err(CodecError::FrameTooLarge { max: 16, .. })
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn truncated_frame_waits_for_more_bytes() {
        let wire = encode_all(&sample_frames()[1..2]);
        let mut codec = Codec::default();
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(codec.decode(&mut buf).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn garbage_bodies_give_decode_errors_not_panics() {
        let mut codec = Codec::default();
        let garbage: [&[u8]; 6] = [
            &[0xFF; 16],                     // invalid wire types and varints
            &[0x0A, 0xFF, 0xFF, 0xFF, 0x0F], // length-delimited field far longer than the frame
            &[0x08, 0x80, 0x80, 0x80],       // truncated varint
            &[0x52, 0x02, 0xFF, 0xFE],       // register with invalid nested bytes
            &[0x0B],                         // deprecated group start wire type
            &[0x6A, 0x03, 0x0A, 0x01, 0xC3], // invalid UTF-8 in a string field
        ];
        for body in garbage {
            let mut buf = BytesMut::new();
            buf.put_u32(body.len() as u32);
            buf.extend_from_slice(body);
            let result = codec.decode(&mut buf);
            assert!(
                matches!(result, Err(CodecError::Decode(_))),
                "{body:x?}: {result:?}"
            );
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic xorshift stream; every outcome is fine but a panic.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            let mut buf = BytesMut::new();
            let len = (state % 64) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                buf.put_u8(state as u8);
            }
            let mut codec = Codec::new(128);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }
}
