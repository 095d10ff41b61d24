//! The content lane's frames. Fixed-size headers, checked before anything is allocated:
//!
//! - hello, client to server, once: [`MAGIC`] and the 16-byte ticket;
//! - request, client to server: the content hash (32 bytes) and the chunk index (u32);
//! - answer, server to client, in request order: status (u8), index (u32), bitmap
//!   length (u32), chunk length (u32), then the sender's have-bitmap and the chunk.
//!
//! Integers are big-endian.

use crate::manifest::{MAX_CHUNKS, MAX_CHUNK_SIZE};
use crate::Digest;
use thiserror::Error;

/// The first bytes a lane client sends: protocol name and version.
pub const MAGIC: [u8; 8] = *b"MRGLANE1";
pub const HELLO_LEN: usize = MAGIC.len() + 16;
pub const REQUEST_LEN: usize = 32 + 4;
pub const ANSWER_HEAD_LEN: usize = 1 + 4 + 4 + 4;
/// The largest have-bitmap: one bit per chunk of the largest artifact.
pub const MAX_BITMAP_BYTES: usize = MAX_CHUNKS.div_ceil(8);

const STATUS_NOT_FOUND: u8 = 0;
const STATUS_CHUNK: u8 = 1;

/// What a server hands out over the authenticated libp2p channel and a client presents
/// when it opens the lane: it binds the plain TCP connection to that libp2p peer.
pub type Ticket = [u8; 16];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("not a Mirage content lane (bad hello)")]
    BadMagic,
    #[error("unknown answer status {0}")]
    BadStatus(u8),
    #[error("answer for chunk {got}, expected chunk {expected}")]
    OutOfOrder { got: u32, expected: u32 },
    #[error("{what} of {len} bytes over the limit of {limit}")]
    TooLong { what: &'static str, len: usize, limit: usize },
    #[error("a not-found answer that carries {0} bytes")]
    NotFoundWithBody(usize),
}

pub fn encode_hello(ticket: &Ticket) -> [u8; HELLO_LEN] {
    let mut out = [0u8; HELLO_LEN];
    out[..MAGIC.len()].copy_from_slice(&MAGIC);
    out[MAGIC.len()..].copy_from_slice(ticket);
    out
}

pub fn decode_hello(bytes: &[u8; HELLO_LEN]) -> Result<Ticket, FrameError> {
    if bytes[..MAGIC.len()] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    Ok(bytes[MAGIC.len()..].try_into().expect("16 bytes"))
}

pub fn encode_request(content: &Digest, index: u32) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    out[..32].copy_from_slice(&content.0);
    out[32..].copy_from_slice(&index.to_be_bytes());
    out
}

pub fn decode_request(bytes: &[u8; REQUEST_LEN]) -> (Digest, u32) {
    let content = Digest(bytes[..32].try_into().expect("32 bytes"));
    (content, u32::from_be_bytes(bytes[32..].try_into().expect("4 bytes")))
}

/// An answer's header: what follows it on the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerHead {
    NotFound { index: u32 },
    Chunk { index: u32, bitmap_len: usize, data_len: usize },
}

impl AnswerHead {
    pub fn encode(&self) -> [u8; ANSWER_HEAD_LEN] {
        let (status, index, bitmap_len, data_len) = match *self {
            AnswerHead::NotFound { index } => (STATUS_NOT_FOUND, index, 0, 0),
            AnswerHead::Chunk { index, bitmap_len, data_len } => (STATUS_CHUNK, index, bitmap_len, data_len),
        };
        let mut out = [0u8; ANSWER_HEAD_LEN];
        out[0] = status;
        out[1..5].copy_from_slice(&index.to_be_bytes());
        out[5..9].copy_from_slice(&(bitmap_len as u32).to_be_bytes());
        out[9..13].copy_from_slice(&(data_len as u32).to_be_bytes());
        out
    }

    /// Reads an answer header for the request for chunk `expected`: lengths over the
    /// limits are refused here, before the client reads (or allocates) a byte of them.
    /// A chunk of the wrong length within the limit is read and refused by the download,
    /// as on the libp2p path, so the sender is judged the same way on both.
    pub fn decode(bytes: &[u8; ANSWER_HEAD_LEN], expected: u32) -> Result<AnswerHead, FrameError> {
        let index = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes"));
        let bitmap_len = u32::from_be_bytes(bytes[5..9].try_into().expect("4 bytes")) as usize;
        let data_len = u32::from_be_bytes(bytes[9..13].try_into().expect("4 bytes")) as usize;
        if index != expected {
            return Err(FrameError::OutOfOrder { got: index, expected });
        }
        match bytes[0] {
            STATUS_NOT_FOUND if bitmap_len == 0 && data_len == 0 => Ok(AnswerHead::NotFound { index }),
            STATUS_NOT_FOUND => Err(FrameError::NotFoundWithBody(bitmap_len + data_len)),
            STATUS_CHUNK if bitmap_len > MAX_BITMAP_BYTES => {
                Err(FrameError::TooLong { what: "bitmap", len: bitmap_len, limit: MAX_BITMAP_BYTES })
            }
            STATUS_CHUNK if data_len > MAX_CHUNK_SIZE as usize => {
                Err(FrameError::TooLong { what: "chunk", len: data_len, limit: MAX_CHUNK_SIZE as usize })
            }
            STATUS_CHUNK => Ok(AnswerHead::Chunk { index, bitmap_len, data_len }),
            other => Err(FrameError::BadStatus(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let ticket = [7u8; 16];
        assert_eq!(decode_hello(&encode_hello(&ticket)), Ok(ticket));
        let content = Digest([3; 32]);
        assert_eq!(decode_request(&encode_request(&content, 41)), (content, 41));
        for head in [
            AnswerHead::NotFound { index: 5 },
            AnswerHead::Chunk { index: 5, bitmap_len: 32, data_len: 1 << 20 },
            AnswerHead::Chunk { index: 5, bitmap_len: 0, data_len: 0 },
        ] {
            assert_eq!(AnswerHead::decode(&head.encode(), 5), Ok(head));
        }
    }

    #[test]
    fn malformed_frames_are_refused() {
        let mut hello = encode_hello(&[1; 16]);
        hello[0] = b'X';
        assert_eq!(decode_hello(&hello), Err(FrameError::BadMagic));

        let chunk = |data_len, bitmap_len| AnswerHead::Chunk { index: 9, bitmap_len, data_len }.encode();
        assert_eq!(AnswerHead::decode(&chunk(10, 1), 8), Err(FrameError::OutOfOrder { got: 9, expected: 8 }));
        assert!(matches!(
            AnswerHead::decode(&chunk(MAX_CHUNK_SIZE as usize + 1, 1), 9),
            Err(FrameError::TooLong { what: "chunk", .. })
        ));
        assert!(matches!(
            AnswerHead::decode(&chunk(10, MAX_BITMAP_BYTES + 1), 9),
            Err(FrameError::TooLong { what: "bitmap", .. })
        ));
        let mut bad_status = chunk(10, 1);
        bad_status[0] = 7;
        assert_eq!(AnswerHead::decode(&bad_status, 9), Err(FrameError::BadStatus(7)));
        let mut not_found_with_body = chunk(10, 1);
        not_found_with_body[0] = STATUS_NOT_FOUND;
        assert_eq!(AnswerHead::decode(&not_found_with_body, 9), Err(FrameError::NotFoundWithBody(11)));
    }
}
