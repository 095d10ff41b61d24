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
use mirage_protocol::exchange::content::{
    chunk_bitmap_len, decode_answer, decode_request, frame_body_len, Answer, ContentError, Tag, MAX_BITMAP_BYTES,
    MAX_REQUEST_BYTES,
};
use mirage_protocol::wire;
use std::io;

pub use mirage_protocol::exchange::content::{pack_bitmap, unpack_bitmap, ContentRequest, MAX_RESPONSE_BYTES};

pub const CONTENT_PROTOCOL: StreamProtocol = StreamProtocol::new("/mirage/content/1.0.0");

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

#[derive(Clone, Copy, Debug, Default)]
pub struct ContentCodec;

fn invalid(e: ContentError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
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
    let len = frame_body_len(read_u32(io).await?, limit).map_err(invalid)?;
    let mut tag = [0u8; 1];
    io.read_exact(&mut tag).await?;
    Ok((tag[0], len))
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
        decode_request(&body).map_err(invalid)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ContentResponse> {
        let (tag, len) = read_head(io, MAX_RESPONSE_BYTES).await?;
        if tag == Tag::Chunk as u8 {
            // [bitmap length][bitmap][chunk], the chunk read straight into its own buffer.
            let bits = chunk_bitmap_len(read_u32(io).await?, len).map_err(invalid)?;
            let have = read_bytes(io, bits).await?;
            let data = read_bytes(io, len - 4 - bits).await?;
            return Ok(ContentResponse::Chunk { data: Bytes::from(data), have });
        }
        let body = read_bytes(io, len).await?;
        Ok(match decode_answer(tag, body).map_err(invalid)? {
            Answer::Manifest(b) => ContentResponse::Manifest(b),
            Answer::Have(b) => ContentResponse::Have(b),
            Answer::Reports(r) => ContentResponse::Reports(r),
            Answer::NotFound => ContentResponse::NotFound,
            Answer::Lane { port, ticket } => ContentResponse::Lane { port, ticket },
        })
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
            ContentResponse::Manifest(b) => write_frame(io, Tag::Manifest as u8, &[&b], MAX_RESPONSE_BYTES).await,
            ContentResponse::Have(b) => write_frame(io, Tag::Have as u8, &[&b], MAX_RESPONSE_BYTES).await,
            ContentResponse::Chunk { data, have } => {
                if have.len() > MAX_BITMAP_BYTES {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, "bitmap over the limit"));
                }
                let bits = (have.len() as u32).to_be_bytes();
                write_frame(io, Tag::Chunk as u8, &[&bits, &have, &data], MAX_RESPONSE_BYTES).await
            }
            ContentResponse::NotFound => write_frame(io, Tag::NotFound as u8, &[], MAX_RESPONSE_BYTES).await,
            ContentResponse::Lane { port, ticket } => {
                write_frame(io, Tag::Lane as u8, &[&port.to_be_bytes(), &ticket], MAX_RESPONSE_BYTES).await
            }
            ContentResponse::Reports(reports) => {
                let body = wire::encode(&reports).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                write_frame(io, Tag::Reports as u8, &[&body], MAX_RESPONSE_BYTES).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use libp2p::request_response::Codec;
    use mirage_protocol::Digest;

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
            huge.extend_from_slice(&[Tag::Chunk as u8; 16]);
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
            lying.push(Tag::Chunk as u8);
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
