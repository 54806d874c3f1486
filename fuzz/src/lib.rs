//! Shared code of the pigeon fuzz targets: input layouts (and their
//! encoders, so the seed corpus can be written from real values) and the
//! request-sequence harness of the `session` target.
//!
//! The targets live in `fuzz_targets/`; `examples/seeds.rs` writes the seed
//! corpus in `corpus/<target>/`.

pub mod ops;
pub mod session;

/// Largest frame maximum the frame_codec target picks (kept small so that
/// FRAME_TOO_LARGE is common).
pub const MAX_FRAME_LIMIT: usize = 4096;

/// Splits a frame_codec input into (max_frame, chunk sizes, stream): 2 bytes
/// of max_frame (big-endian, mod 4097), 1 byte k (mod 16), k chunk sizes,
/// then the stream. `None` if the header is incomplete. All-zero chunk sizes
/// become "one chunk" so the decoder always makes progress.
pub fn split_frame_codec_input(input: &[u8]) -> Option<(usize, Vec<usize>, &[u8])> {
    let (header, rest) = input.split_first_chunk::<3>()?;
    let max_frame = u16::from_be_bytes([header[0], header[1]]) as usize % (MAX_FRAME_LIMIT + 1);
    let k = (header[2] % 16) as usize;
    if rest.len() < k {
        return None;
    }
    let (sizes, data) = rest.split_at(k);
    let mut chunks: Vec<usize> = sizes.iter().map(|&s| s as usize).collect();
    if chunks.iter().all(|&s| s == 0) {
        chunks.clear();
    }
    Some((max_frame, chunks, data))
}

/// The inverse of [`split_frame_codec_input`], for writing seeds.
pub fn frame_codec_input(max_frame: u16, chunks: &[u8], stream: &[u8]) -> Vec<u8> {
    assert!(chunks.len() < 16 && max_frame as usize <= MAX_FRAME_LIMIT);
    let mut out = max_frame.to_be_bytes().to_vec();
    out.push(chunks.len() as u8);
    out.extend_from_slice(chunks);
    out.extend_from_slice(stream);
    out
}
