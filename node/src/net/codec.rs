//! The fingerprint fetch protocol: "send me your signed fingerprint for app X".
//!
//! Each message is a 4-byte big-endian length and a [`mirage_protocol::wire`] encoding.
//! Lengths are checked against the limits before anything is allocated.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use mirage_protocol::roster::{CatchUp, CatchUpRequest};
use mirage_protocol::wire::{self, MAX_MESSAGE_BYTES};
use serde::{Deserialize, Serialize};
use std::io;

pub const FETCH_PROTOCOL: StreamProtocol = StreamProtocol::new("/mirage/fingerprint/1.0.0");
/// Requests carry an app name and possibly the requester's own announcement.
pub const MAX_REQUEST_BYTES: usize = MAX_MESSAGE_BYTES + 1024;
pub const MAX_RESPONSE_BYTES: usize = MAX_MESSAGE_BYTES + 64;

/// "Send me your signed fingerprint for `app`", optionally with ours, so that two
/// members who found each other learn about each other in one round trip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    pub app: String,
    pub announcement: Option<Vec<u8>>,
}

/// The peer's newest signed fingerprint envelope for the app, if it has one. Checked by
/// the receiver like any announcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    pub announcement: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct FetchCodec;

async fn read_frame<T: AsyncRead + Unpin + Send, M: serde::de::DeserializeOwned>(
    io: &mut T,
    limit: usize,
) -> io::Result<M> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes over the {limit}-byte limit"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    wire::decode(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_frame<T: AsyncWrite + Unpin + Send, M: Serialize>(io: &mut T, msg: &M, limit: usize) -> io::Result<()> {
    let bytes = wire::encode(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if bytes.len() > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "frame over the limit"));
    }
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.close().await
}

impl libp2p::request_response::Codec for FetchCodec {
    type Protocol = StreamProtocol;
    type Request = FetchRequest;
    type Response = FetchResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<FetchRequest> {
        read_frame(io, MAX_REQUEST_BYTES).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<FetchResponse> {
        read_frame(io, MAX_RESPONSE_BYTES).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: FetchRequest,
    ) -> io::Result<()> {
        write_frame(io, &req, MAX_REQUEST_BYTES).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: FetchResponse,
    ) -> io::Result<()> {
        write_frame(io, &res, MAX_RESPONSE_BYTES).await
    }
}

/// The roster catch-up protocol: a member back from a restart asks a cluster-mate for
/// the heartbeats it kept (see [`mirage_protocol::roster`]).
pub const ROSTER_PROTOCOL: StreamProtocol = StreamProtocol::new("/mirage/roster/1.0.0");
/// A request is an app name, a cluster key and a time.
pub const MAX_ROSTER_REQUEST_BYTES: usize = 1024;
/// At most [`MAX_CATCH_UP`](mirage_protocol::roster::MAX_CATCH_UP) heartbeats of a few
/// hundred bytes each.
pub const MAX_ROSTER_RESPONSE_BYTES: usize = mirage_protocol::roster::MAX_CATCH_UP * 400 + 1024;

#[derive(Clone, Copy, Debug, Default)]
pub struct RosterCodec;

impl libp2p::request_response::Codec for RosterCodec {
    type Protocol = StreamProtocol;
    type Request = CatchUpRequest;
    type Response = Option<CatchUp>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<CatchUpRequest> {
        read_frame(io, MAX_ROSTER_REQUEST_BYTES).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Option<CatchUp>> {
        read_frame(io, MAX_ROSTER_RESPONSE_BYTES).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: CatchUpRequest,
    ) -> io::Result<()> {
        write_frame(io, &req, MAX_ROSTER_REQUEST_BYTES).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Option<CatchUp>,
    ) -> io::Result<()> {
        write_frame(io, &res, MAX_ROSTER_RESPONSE_BYTES).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    #[test]
    fn roundtrip_and_limits() {
        futures::executor::block_on(async {
            let mut c = FetchCodec;
            let mut buf = Vec::new();
            let req = FetchRequest { app: "web".into(), announcement: Some(vec![7; 100]) };
            c.write_request(&FETCH_PROTOCOL, &mut Cursor::new(&mut buf), req.clone()).await.unwrap();
            assert_eq!(c.read_request(&FETCH_PROTOCOL, &mut Cursor::new(&buf)).await.unwrap(), req);
            let res = FetchResponse { announcement: Some(vec![1, 2, 3]) };
            let mut buf = Vec::new();
            c.write_response(&FETCH_PROTOCOL, &mut Cursor::new(&mut buf), res.clone()).await.unwrap();
            assert_eq!(c.read_response(&FETCH_PROTOCOL, &mut Cursor::new(&buf)).await.unwrap(), res);
            // A length prefix over the limit fails before allocating.
            let mut huge = (u32::MAX).to_be_bytes().to_vec();
            huge.extend_from_slice(&[0; 16]);
            assert!(c.read_request(&FETCH_PROTOCOL, &mut Cursor::new(&huge)).await.is_err());
            // Garbage of a legal length is an error, not a panic.
            let mut junk = 5u32.to_be_bytes().to_vec();
            junk.extend_from_slice(&[9, 9, 9, 9, 9]);
            assert!(c.read_response(&FETCH_PROTOCOL, &mut Cursor::new(&junk)).await.is_err());
            // Too big to send.
            let big = FetchRequest { app: "x".repeat(MAX_REQUEST_BYTES), announcement: None };
            assert!(c.write_request(&FETCH_PROTOCOL, &mut Cursor::new(&mut Vec::new()), big).await.is_err());
        });
    }
}
