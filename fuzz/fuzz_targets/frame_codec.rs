//! Fuzz the frame codec: arbitrary bytes, cut into arbitrary chunks, fed to
//! `Codec::decode` the way a socket delivers them.
//!
//! Input layout (see `pigeon_fuzz::split_frame_codec_input`): 2 bytes of
//! maximum frame length (mod 4097), 1 byte k (mod 16), k chunk sizes (0 is
//! an empty read), then the stream.
//!
//! Checked: no panic; the frames and the error are the same however the
//! stream is chunked; no buffer grows from an announced length (only from
//! bytes that arrived); every decoded frame re-encodes to a frame of exactly
//! 4 + `encoded_len` bytes that decodes to the same envelope.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pigeon_fuzz::split_frame_codec_input;
use pigeon_protocol::{Codec, CodecError, Envelope, LENGTH_PREFIX};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

/// What decoding a stream gave: the frames, the error that stopped it (as a
/// comparable summary), and the bytes left over in the buffer (without an
/// error: a frame still incomplete).
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Envelope>,
    error: Option<String>,
    leftover: usize,
}

fn decode(max_frame: usize, data: &[u8], chunks: &[usize]) -> Outcome {
    let mut codec = Codec::new(max_frame);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = data;
    let mut sizes = chunks.iter().cycle();
    // Every allocation must be explained by bytes that arrived or by a frame
    // up to the maximum, never by the announced length of a refused frame.
    let cap_bound = 4 * (data.len() + LENGTH_PREFIX + max_frame) + 64;
    while !rest.is_empty() {
        let size = sizes.next().copied().unwrap_or(rest.len()).min(rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    assert!(buf.capacity() <= cap_bound, "capacity {}", buf.capacity());
                    let error = match e {
                        CodecError::FrameTooLarge { len, max } => {
                            assert!(len > max && max == max_frame);
                            format!("too large: {len}")
                        }
                        CodecError::Decode(e) => format!("decode: {e}"),
                        CodecError::Io(e) => panic!("the codec does no i/o: {e}"),
                    };
                    // The connection closes here; what else had arrived
                    // depends on the chunking and does not matter.
                    return Outcome {
                        frames,
                        error: Some(error),
                        leftover: 0,
                    };
                }
            }
            assert!(buf.capacity() <= cap_bound, "capacity {}", buf.capacity());
        }
    }
    Outcome {
        frames,
        error: None,
        leftover: buf.len(),
    }
}

fn check_reencodes(max_frame: usize, frame: &Envelope) {
    let mut codec = Codec::new(max_frame);
    let mut out = BytesMut::new();
    let len = frame.encoded_len();
    match codec.encode(frame, &mut out) {
        Ok(()) => {
            assert!(len <= max_frame);
            assert_eq!(out.len(), LENGTH_PREFIX + len);
            assert_eq!(out[..LENGTH_PREFIX], (len as u32).to_be_bytes());
            let again = codec.decode(&mut out).expect("a re-encoded frame decodes");
            assert_eq!(again.as_ref(), Some(frame));
            assert!(out.is_empty(), "the frame was consumed exactly");
        }
        // Re-encoding can be longer than what was read (a negative enum
        // sent as a 5-byte varint is written back as 10 bytes), so it may
        // exceed the maximum; then nothing may be written.
        Err(CodecError::FrameTooLarge { len: l, .. }) => {
            assert!(l == len && len > max_frame && out.is_empty());
        }
        Err(e) => panic!("encoding failed: {e}"),
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((max_frame, chunks, data)) = split_frame_codec_input(input) else {
        return;
    };
    let chunked = decode(max_frame, data, &chunks);
    let whole = decode(max_frame, data, &[]);
    assert_eq!(chunked, whole, "chunking changed the result");
    for frame in &chunked.frames {
        check_reencodes(max_frame, frame);
    }
});
