//! The content protocol: how peers ask each other for a release's signed manifest,
//! which chunks of an artifact they hold, and the chunks themselves.
//!
//! Each message is a 4-byte big-endian length, a 1-byte tag and a body. Control bodies
//! are [`mirage_protocol::wire`] encodings (1 MiB limit); a chunk body is the raw chunk,
//! up to the largest chunk size a manifest may declare. Lengths are checked before
//! anything is allocated, so a peer streaming endless data is cut off at the limit and
//! the request fails; what arrives within the limit is still checked against the
//! manifest by the download before a byte of it is written.

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use mirage_protocol::manifest::{MAX_CHUNKS, MAX_CHUNK_SIZE};
use mirage_protocol::wire::{self, MAX_MESSAGE_BYTES};
use mirage_protocol::Digest;
use serde::{Deserialize, Serialize};
use std::io;

pub const CONTENT_PROTOCOL: StreamProtocol = StreamProtocol::new("/mirage/content/1.0.0");
const MAX_REQUEST_BYTES: usize = 4 * 1024;
/// The largest have-bitmap: one bit per chunk of the largest artifact.
const MAX_BITMAP_BYTES: usize = MAX_CHUNKS.div_ceil(8);
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
    /// A ticket for a content lane to the peer ([`crate::lane`]).
    Lane,
    /// The test reports for `manifest` that count in `cluster`'s gate at the peer: how
    /// a node that was away learns its cluster's verdict, which was gossiped while it
    /// was off. Answered as [`ContentResponse::Reports`], each checked as if gossiped.
    Verdicts { app: String, manifest: Digest, cluster: mirage_protocol::ClusterKey },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContentResponse {
    /// A signed manifest envelope, checked by the receiver like any other.
    Manifest(Vec<u8>),
    /// One bit per chunk, least significant bit first ([`pack_bitmap`]).
    Have(Vec<u8>),
    /// A chunk (shared, so a served chunk is never copied on its way out) and the
    /// sender's have-bitmap for the artifact: a downloader learns what its peers gained
    /// from the chunks it receives anyway, instead of asking again and again.
    Chunk { data: Bytes, have: Vec<u8> },
    /// Signed problem report envelopes.
    Reports(Vec<Vec<u8>>),
    /// The peer has nothing for that request.
    NotFound,
    /// Where to open a content lane to the peer (the IP of this connection, this port),
    /// and the ticket to open it with.
    Lane { port: u16, ticket: crate::lane::wire::Ticket },
}

impl ContentResponse {
    /// The answer to a lane request: the ticket [`crate::lane::Lanes::issue_ticket`] gave,
    /// or not found when this node runs without lanes.
    pub fn lane_offer(offer: Option<(u16, crate::lane::wire::Ticket)>) -> Self {
        match offer {
            Some((port, ticket)) => ContentResponse::Lane { port, ticket },
            None => ContentResponse::NotFound,
        }
    }

    /// The chunk this answer carries, in the form a lane carries it; `None` for any other
    /// answer.
    pub fn into_chunk(self) -> Option<crate::lane::Served> {
        match self {
            ContentResponse::Chunk { data, have } => Some(crate::lane::Served { data, have }),
            _ => None,
        }
    }
}

const TAG_MANIFEST: u8 = 1;
const TAG_HAVE: u8 = 2;
const TAG_CHUNK: u8 = 3;
const TAG_NOT_FOUND: u8 = 4;
const TAG_REPORTS: u8 = 5;
const TAG_LANE: u8 = 6;

/// Packs a have-list into bits.
pub fn pack_bitmap(have: &[bool]) -> Vec<u8> {
    let mut bits = vec![0u8; have.len().div_ceil(8)];
    for (i, _) in have.iter().enumerate().filter(|(_, h)| **h) {
        bits[i / 8] |= 1 << (i % 8);
    }
    bits
}

/// The chunk indices a bitmap marks, for an artifact of `chunks` chunks; `None` if the
/// bitmap has the wrong length for it.
pub fn unpack_bitmap(bits: &[u8], chunks: usize) -> Option<Vec<usize>> {
    if bits.len() != chunks.div_ceil(8) {
        return None;
    }
    Some((0..chunks).filter(|i| bits[i / 8] & (1 << (i % 8)) != 0).collect())
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ContentCodec;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

async fn read_u32<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<usize> {
    let mut n = [0u8; 4];
    io.read_exact(&mut n).await?;
    Ok(u32::from_be_bytes(n) as usize)
}

async fn read_bytes<T: AsyncRead + Unpin + Send>(io: &mut T, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Reads a frame's length and tag; the body (`len - 1` bytes) is the caller's to read.
async fn read_head<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<(u8, usize)> {
    let len = read_u32(io).await?;
    if len == 0 || len > limit {
        return Err(invalid(format!("frame of {len} bytes outside 1..={limit}")));
    }
    let mut tag = [0u8; 1];
    io.read_exact(&mut tag).await?;
    Ok((tag[0], len - 1))
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<(u8, Vec<u8>)> {
    let (tag, len) = read_head(io, limit).await?;
    Ok((tag, read_bytes(io, len).await?))
}

/// Writes one frame whose body is `parts` back to back (no copy into one buffer).
async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    tag: u8,
    parts: &[&[u8]],
    limit: usize,
) -> io::Result<()> {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    if len > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("frame of {len} bytes over {limit}")));
    }
    io.write_all(&(len as u32).to_be_bytes()).await?;
    io.write_all(&[tag]).await?;
    for part in parts {
        io.write_all(part).await?;
    }
    io.close().await
}

impl libp2p::request_response::Codec for ContentCodec {
    type Protocol = StreamProtocol;
    type Request = ContentRequest;
    type Response = ContentResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ContentRequest> {
        let (_, body) = read_frame(io, MAX_REQUEST_BYTES).await?;
        wire::decode(&body).map_err(|e| invalid(e.to_string()))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ContentResponse> {
        let (tag, len) = read_head(io, MAX_RESPONSE_BYTES).await?;
        if tag == TAG_CHUNK {
            // [bitmap length][bitmap][chunk], the chunk read straight into its own buffer.
            let bits = read_u32(io).await?;
            if bits > MAX_BITMAP_BYTES || 4 + bits > len {
                return Err(invalid(format!("chunk frame with a {bits}-byte bitmap in {len} bytes")));
            }
            let have = read_bytes(io, bits).await?;
            let data = read_bytes(io, len - 4 - bits).await?;
            return Ok(ContentResponse::Chunk { data: Bytes::from(data), have });
        }
        let body = read_bytes(io, len).await?;
        match tag {
            TAG_MANIFEST if body.len() <= MAX_MESSAGE_BYTES => Ok(ContentResponse::Manifest(body)),
            TAG_HAVE if body.len() <= MAX_MESSAGE_BYTES => Ok(ContentResponse::Have(body)),
            TAG_NOT_FOUND if body.is_empty() => Ok(ContentResponse::NotFound),
            TAG_REPORTS => wire::decode(&body).map(ContentResponse::Reports).map_err(|e| invalid(e.to_string())),
            TAG_LANE if body.len() == 18 => Ok(ContentResponse::Lane {
                port: u16::from_be_bytes([body[0], body[1]]),
                ticket: body[2..].try_into().expect("16 bytes"),
            }),
            _ => Err(invalid(format!("bad response (tag {tag}, {} bytes)", body.len()))),
        }
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: ContentRequest,
    ) -> io::Result<()> {
        let body = wire::encode(&req).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        write_frame(io, 0, &[&body], MAX_REQUEST_BYTES).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: ContentResponse,
    ) -> io::Result<()> {
        match res {
            ContentResponse::Manifest(b) => write_frame(io, TAG_MANIFEST, &[&b], MAX_RESPONSE_BYTES).await,
            ContentResponse::Have(b) => write_frame(io, TAG_HAVE, &[&b], MAX_RESPONSE_BYTES).await,
            ContentResponse::Chunk { data, have } => {
                if have.len() > MAX_BITMAP_BYTES {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, "bitmap over the limit"));
                }
                let bits = (have.len() as u32).to_be_bytes();
                write_frame(io, TAG_CHUNK, &[&bits, &have, &data], MAX_RESPONSE_BYTES).await
            }
            ContentResponse::NotFound => write_frame(io, TAG_NOT_FOUND, &[], MAX_RESPONSE_BYTES).await,
            ContentResponse::Lane { port, ticket } => {
                write_frame(io, TAG_LANE, &[&port.to_be_bytes(), &ticket], MAX_RESPONSE_BYTES).await
            }
            ContentResponse::Reports(reports) => {
                let body = wire::encode(&reports).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                write_frame(io, TAG_REPORTS, &[&body], MAX_RESPONSE_BYTES).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    fn roundtrip_response(res: ContentResponse) -> io::Result<ContentResponse> {
        futures::executor::block_on(async {
            let mut buf = Vec::new();
            ContentCodec.write_response(&CONTENT_PROTOCOL, &mut Cursor::new(&mut buf), res).await?;
            ContentCodec.read_response(&CONTENT_PROTOCOL, &mut Cursor::new(&buf)).await
        })
    }

    #[test]
    fn messages_roundtrip() {
        futures::executor::block_on(async {
            for req in [
                ContentRequest::Manifest { app: "mysql".into() },
                ContentRequest::Have { content: Digest([3; 32]) },
                ContentRequest::Chunk { content: Digest([4; 32]), index: 7 },
                ContentRequest::Reports { app: "mysql".into() },
                ContentRequest::Lane,
                ContentRequest::Verdicts {
                    app: "mysql".into(),
                    manifest: Digest([5; 32]),
                    cluster: mirage_protocol::ClusterKey(Digest([6; 32])),
                },
            ] {
                let mut buf = Vec::new();
                ContentCodec.write_request(&CONTENT_PROTOCOL, &mut Cursor::new(&mut buf), req.clone()).await.unwrap();
                assert_eq!(ContentCodec.read_request(&CONTENT_PROTOCOL, &mut Cursor::new(&buf)).await.unwrap(), req);
            }
        });
        for res in [
            ContentResponse::Manifest(vec![1, 2]),
            ContentResponse::Have(vec![0xff]),
            ContentResponse::Chunk { data: Bytes::from(vec![9; 100_000]), have: vec![0b101] },
            ContentResponse::Chunk { data: Bytes::new(), have: vec![] },
            ContentResponse::NotFound,
            ContentResponse::Reports(vec![vec![1, 2, 3], vec![]]),
            ContentResponse::Lane { port: 40123, ticket: [5; 16] },
        ] {
            assert_eq!(roundtrip_response(res.clone()).unwrap(), res);
        }
    }

    #[test]
    fn endless_and_malformed_responses_fail_without_allocating() {
        futures::executor::block_on(async {
            let mut huge = u32::MAX.to_be_bytes().to_vec();
            huge.extend_from_slice(&[TAG_CHUNK; 16]);
            assert!(ContentCodec.read_response(&CONTENT_PROTOCOL, &mut Cursor::new(&huge)).await.is_err());
            let mut bad_tag = 3u32.to_be_bytes().to_vec();
            bad_tag.extend_from_slice(&[99, 1, 2]);
            assert!(ContentCodec.read_response(&CONTENT_PROTOCOL, &mut Cursor::new(&bad_tag)).await.is_err());
            let mut junk = 4u32.to_be_bytes().to_vec();
            junk.extend_from_slice(&[0, 0xff, 0xff, 0xff]);
            assert!(ContentCodec.read_request(&CONTENT_PROTOCOL, &mut Cursor::new(&junk)).await.is_err());
        });
        // Larger than any chunk may be: refused on the sending side too.
        let huge = ContentResponse::Chunk { data: Bytes::from(vec![0; MAX_RESPONSE_BYTES]), have: vec![] };
        assert!(roundtrip_response(huge).is_err());
        // A bitmap length that claims more than the frame holds.
        futures::executor::block_on(async {
            let mut lying = 10u32.to_be_bytes().to_vec();
            lying.push(TAG_CHUNK);
            lying.extend_from_slice(&1000u32.to_be_bytes());
            lying.extend_from_slice(&[0; 5]);
            assert!(ContentCodec.read_response(&CONTENT_PROTOCOL, &mut Cursor::new(&lying)).await.is_err());
        });
    }

    #[test]
    fn bitmaps() {
        let have = [true, false, true, true, false, false, false, false, true];
        let bits = pack_bitmap(&have);
        assert_eq!(bits.len(), 2);
        assert_eq!(unpack_bitmap(&bits, 9), Some(vec![0, 2, 3, 8]));
        assert_eq!(unpack_bitmap(&bits, 17), None);
        assert_eq!(unpack_bitmap(&[], 0), Some(vec![]));
    }
}
