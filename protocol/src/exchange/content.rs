//! The content protocol's messages: how peers ask each other for a release's signed
//! manifest, which chunks of an artifact they hold, the chunks themselves, problem
//! reports, verdicts and lane tickets.
//!
//! Each message is a 4-byte big-endian length, a 1-byte tag and a body. Control bodies
//! are [`crate::wire`] encodings (1 MiB limit); a chunk body is the sender's bitmap
//! (length-prefixed) and the raw chunk, up to the largest chunk size a manifest may
//! declare. Lengths are checked here before anything is allocated; what arrives within
//! the limit is still checked against the manifest by the download before a byte of it
//! is written.

use crate::exchange::lane::Ticket;
use crate::manifest::{MAX_CHUNKS, MAX_CHUNK_SIZE};
use crate::wire::{self, MAX_MESSAGE_BYTES};
use crate::{ClusterKey, Digest};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const MAX_REQUEST_BYTES: usize = 4 * 1024;
/// The largest have-bitmap: one bit per chunk of the largest artifact.
pub const MAX_BITMAP_BYTES: usize = MAX_CHUNKS.div_ceil(8);
/// A full-size chunk plus the sender's bitmap and room for the tag.
pub const MAX_RESPONSE_BYTES: usize = MAX_CHUNK_SIZE as usize + MAX_BITMAP_BYTES + 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContentRequest {
    /// The newest signed manifest the peer accepted for `app`.
    Manifest { app: String },
    /// Which chunks of the artifact with this content hash the peer holds.
    Have { content: Digest },
    /// One chunk of that artifact.
    Chunk { content: Digest, index: u32 },
    /// The signed problem reports the peer holds for `app` (what a vendor collects).
    Reports { app: String },
    /// A ticket for a content lane to the peer ([`super::lane`]).
    Lane,
    /// The test reports for `manifest` that count in `cluster`'s gate at the peer: how
    /// a node that was away learns its cluster's verdict, which was gossiped while it
    /// was off. Answered with reports, each checked as if gossiped.
    Verdicts { app: String, manifest: Digest, cluster: ClusterKey },
}

/// The tag before a response's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    Manifest = 1,
    Have = 2,
    Chunk = 3,
    NotFound = 4,
    Reports = 5,
    Lane = 6,
}

/// A response other than a chunk, decoded from its tag and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A signed manifest envelope, checked by the receiver like any other.
    Manifest(Vec<u8>),
    /// One bit per chunk, least significant bit first ([`pack_bitmap`]).
    Have(Vec<u8>),
    /// Signed report envelopes.
    Reports(Vec<Vec<u8>>),
    /// The peer has nothing for that request.
    NotFound,
    /// Where to open a content lane to the peer (this port, at the connection's IP),
    /// and the ticket to open it with.
    Lane { port: u16, ticket: Ticket },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ContentError {
    #[error("frame of {len} bytes outside 1..={limit}")]
    FrameLength { len: usize, limit: usize },
    #[error("chunk frame with a {bitmap}-byte bitmap in {len} bytes")]
    ChunkBitmap { bitmap: usize, len: usize },
    #[error("bad response (tag {tag}, {len} bytes)")]
    BadAnswer { tag: u8, len: usize },
    #[error("undecodable body: {0}")]
    Body(#[from] wire::WireError),
}

/// A frame's length prefix (tag included), checked against `limit`: the body's length.
pub fn frame_body_len(len: usize, limit: usize) -> Result<usize, ContentError> {
    if len == 0 || len > limit {
        return Err(ContentError::FrameLength { len, limit });
    }
    Ok(len - 1)
}

/// In a chunk frame of `body_len` bytes, the bitmap's declared length, checked; the
/// chunk is the rest.
pub fn chunk_bitmap_len(bitmap: usize, body_len: usize) -> Result<usize, ContentError> {
    if bitmap > MAX_BITMAP_BYTES || 4 + bitmap > body_len {
        return Err(ContentError::ChunkBitmap { bitmap, len: body_len });
    }
    Ok(bitmap)
}

/// Decodes a request body.
pub fn decode_request(body: &[u8]) -> Result<ContentRequest, ContentError> {
    Ok(wire::decode(body)?)
}

/// Decodes a response that is not a chunk ([`Tag::Chunk`] frames are read in parts:
/// [`chunk_bitmap_len`]).
pub fn decode_answer(tag: u8, body: Vec<u8>) -> Result<Answer, ContentError> {
    let bad = |body: &[u8]| ContentError::BadAnswer { tag, len: body.len() };
    Ok(match tag {
        t if t == Tag::Manifest as u8 && body.len() <= MAX_MESSAGE_BYTES => Answer::Manifest(body),
        t if t == Tag::Have as u8 && body.len() <= MAX_MESSAGE_BYTES => Answer::Have(body),
        t if t == Tag::NotFound as u8 && body.is_empty() => Answer::NotFound,
        t if t == Tag::Reports as u8 => Answer::Reports(wire::decode(&body)?),
        t if t == Tag::Lane as u8 && body.len() == 18 => Answer::Lane {
            port: u16::from_be_bytes([body[0], body[1]]),
            ticket: body[2..].try_into().map_err(|_| bad(&body))?,
        },
        _ => return Err(bad(&body)),
    })
}

/// Packs a have-list into bits.
pub fn pack_bitmap(have: &[bool]) -> Vec<u8> {
    let mut bits = vec![0u8; have.len().div_ceil(8)];
    for (i, _) in have.iter().enumerate().filter(|(_, h)| **h) {
        bits[i / 8] |= 1 << (i % 8);
    }
    bits
}

/// The chunk indices a bitmap marks, for an artifact of `chunks` chunks; `None` if the
/// bitmap has the wrong length for it. Bits past the last chunk are ignored.
pub fn unpack_bitmap(bits: &[u8], chunks: usize) -> Option<Vec<usize>> {
    if bits.len() != chunks.div_ceil(8) {
        return None;
    }
    Some((0..chunks).filter(|i| bits[i / 8] & (1 << (i % 8)) != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn answers_decode_only_with_their_tags_shape() {
        assert_eq!(decode_answer(Tag::NotFound as u8, vec![]), Ok(Answer::NotFound));
        assert!(decode_answer(Tag::NotFound as u8, vec![0]).is_err());
        let mut lane = vec![0x12, 0x34];
        lane.extend_from_slice(&[7; 16]);
        assert_eq!(decode_answer(Tag::Lane as u8, lane), Ok(Answer::Lane { port: 0x1234, ticket: [7; 16] }));
        assert!(decode_answer(Tag::Lane as u8, vec![1; 17]).is_err());
        assert!(decode_answer(Tag::Chunk as u8, vec![]).is_err(), "chunks are read in parts");
        assert!(decode_answer(99, vec![]).is_err());
        assert!(decode_answer(Tag::Reports as u8, vec![0xff; 9]).is_err());
        assert_eq!(frame_body_len(0, 10), Err(ContentError::FrameLength { len: 0, limit: 10 }));
        assert_eq!(frame_body_len(10, 10), Ok(9));
        assert!(chunk_bitmap_len(MAX_BITMAP_BYTES + 1, usize::MAX).is_err());
        assert!(chunk_bitmap_len(8, 11).is_err());
        assert_eq!(chunk_bitmap_len(8, 12), Ok(8));
    }

    proptest! {
        #[test]
        fn bitmaps_round_trip(have in proptest::collection::vec(any::<bool>(), 0..300)) {
            let bits = pack_bitmap(&have);
            let held: Vec<usize> = have.iter().enumerate().filter(|(_, h)| **h).map(|(i, _)| i).collect();
            prop_assert_eq!(unpack_bitmap(&bits, have.len()), Some(held));
            prop_assert_eq!(unpack_bitmap(&bits, have.len() + 8), None);
        }
    }
}
