//! The fingerprint fetch protocol: "send me your signed fingerprint for app X".
//!
//! Each message is a 4-byte big-endian length and a [`mirage_protocol::wire`] encoding.
//! Lengths are checked against the limits before anything is allocated.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{Multiaddr, StreamProtocol};
use mirage_protocol::exchange::fetch::check_frame_len;
use mirage_protocol::roster::{CatchUp, CatchUpRequest};
use mirage_protocol::wire;
use mirage_protocol::PublicKey;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use mirage_protocol::exchange::fetch::{
    FetchRequest, FetchResponse, Introduction, INTRODUCTIONS_ROOM, MAX_ADDR_BYTES, MAX_INTRODUCED_ADDRS,
    MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES,
};
use std::io;
use std::marker::PhantomData;

/// 1.1: answers name a few cluster-mates ([`Introduction`]).
pub const FETCH_PROTOCOL: StreamProtocol = StreamProtocol::new("/mirage/fingerprint/1.1.0");

/// Names `peer` with a few of its listen addresses.
pub fn introduce(peer: PublicKey, addrs: &[Multiaddr]) -> Introduction {
    Introduction::new(peer, addrs.iter().map(|a| a.to_vec()))
}

/// The addresses an introduction names that parse, at most [`MAX_INTRODUCED_ADDRS`].
pub fn introduced_addrs(introduction: &Introduction) -> Vec<Multiaddr> {
    introduction.addr_bytes().filter_map(|a| Multiaddr::try_from(a.to_vec()).ok()).collect()
}

/// A request-response codec of length-prefixed [`wire`] frames, each side checked
/// against its limit before anything is allocated.
pub struct FrameCodec<Req, Resp, const REQUEST_LIMIT: usize, const RESPONSE_LIMIT: usize> {
    _messages: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp, const Q: usize, const R: usize> Default for FrameCodec<Req, Resp, Q, R> {
    fn default() -> Self {
        FrameCodec { _messages: PhantomData }
    }
}

impl<Req, Resp, const Q: usize, const R: usize> Clone for FrameCodec<Req, Resp, Q, R> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// The fingerprint fetch protocol's codec.
pub type FetchCodec = FrameCodec<FetchRequest, FetchResponse, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES>;

async fn read_frame<T: AsyncRead + Unpin + Send, M: DeserializeOwned>(io: &mut T, limit: usize) -> io::Result<M> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = check_frame_len(u32::from_be_bytes(len) as usize, limit)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
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

/// The roster catch-up protocol: a member back from a restart asks a cluster-mate for
/// the heartbeats it kept (see [`mirage_protocol::roster`]).
pub const ROSTER_PROTOCOL: StreamProtocol = StreamProtocol::new("/mirage/roster/1.0.0");
/// A request is an app name, a cluster key and a time.
pub const MAX_ROSTER_REQUEST_BYTES: usize = 1024;
/// At most [`MAX_CATCH_UP`](mirage_protocol::roster::MAX_CATCH_UP) heartbeats of a few
/// hundred bytes each.
pub const MAX_ROSTER_RESPONSE_BYTES: usize = mirage_protocol::roster::MAX_CATCH_UP * 400 + 1024;

/// The roster catch-up protocol's codec: no answer when the peer is not in that cluster.
pub type RosterCodec = FrameCodec<CatchUpRequest, Option<CatchUp>, MAX_ROSTER_REQUEST_BYTES, MAX_ROSTER_RESPONSE_BYTES>;

impl<Req, Resp, const Q: usize, const R: usize> libp2p::request_response::Codec for FrameCodec<Req, Resp, Q, R>
where
    Req: Serialize + DeserializeOwned + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req> {
        read_frame(io, Q).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp> {
        read_frame(io, R).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Req,
    ) -> io::Result<()> {
        write_frame(io, &req, Q).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()> {
        write_frame(io, &res, R).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use libp2p::request_response::Codec;
    use mirage_protocol::membership::MAX_INTRODUCTIONS;
    use mirage_protocol::wire::MAX_MESSAGE_BYTES;

    #[test]
    fn roundtrip_and_limits() {
        futures::executor::block_on(async {
            let mut c = FetchCodec::default();
            let mut buf = Vec::new();
            let req = FetchRequest { app: "web".into(), announcement: Some(vec![7; 100]) };
            c.write_request(&FETCH_PROTOCOL, &mut Cursor::new(&mut buf), req.clone()).await.unwrap();
            assert_eq!(c.read_request(&FETCH_PROTOCOL, &mut Cursor::new(&buf)).await.unwrap(), req);
            let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4701".parse().unwrap();
            let named = (0..MAX_INTRODUCTIONS as u8)
                .map(|i| {
                    let key = mirage_protocol::Keypair::from_secret_bytes(&[i; 32]).public();
                    introduce(key, &vec![addr.clone(); 9])
                })
                .collect();
            let room = MAX_MESSAGE_BYTES - INTRODUCTIONS_ROOM;
            let res = FetchResponse { announcement: Some(vec![7; room]), introductions: named };
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

    #[test]
    fn an_introduction_keeps_a_few_short_addresses_and_reads_only_those_that_parse() {
        let key = mirage_protocol::Keypair::from_secret_bytes(&[1; 32]).public();
        let good: Multiaddr = "/ip4/127.0.0.1/tcp/4701".parse().unwrap();
        let long: Multiaddr = format!("/dns4/{}/tcp/1", "a".repeat(80)).parse().unwrap();
        let i = introduce(key, &[long, good.clone(), good.clone(), good.clone(), good.clone(), good.clone()]);
        assert_eq!(i.addrs.len(), MAX_INTRODUCED_ADDRS, "the long one is left out, then four kept");
        let forged = Introduction { peer: key, addrs: vec![vec![0xff; 8], good.to_vec(), vec![0; MAX_ADDR_BYTES + 1]] };
        assert_eq!(introduced_addrs(&forged), vec![good], "garbage and oversized addresses are skipped");
    }

    #[test]
    fn a_catch_up_request_over_its_small_limit_is_refused_before_reading() {
        futures::executor::block_on(async {
            let mut c = RosterCodec::default();
            let req = CatchUpRequest {
                app: "web".into(),
                cluster_key: mirage_protocol::ClusterKey(mirage_protocol::Digest([3; 32])),
                since: mirage_protocol::UnixMillis(5),
            };
            let mut buf = Vec::new();
            c.write_request(&ROSTER_PROTOCOL, &mut Cursor::new(&mut buf), req.clone()).await.unwrap();
            assert_eq!(c.read_request(&ROSTER_PROTOCOL, &mut Cursor::new(&buf)).await.unwrap(), req);
            let mut big = ((MAX_ROSTER_REQUEST_BYTES + 1) as u32).to_be_bytes().to_vec();
            big.extend_from_slice(&vec![0; MAX_ROSTER_REQUEST_BYTES + 1]);
            assert!(c.read_request(&ROSTER_PROTOCOL, &mut Cursor::new(&big)).await.is_err());
            let mut buf = Vec::new();
            c.write_response(&ROSTER_PROTOCOL, &mut Cursor::new(&mut buf), None).await.unwrap();
            assert_eq!(c.read_response(&ROSTER_PROTOCOL, &mut Cursor::new(&buf)).await.unwrap(), None);
        });
    }
}
