//! The fingerprint fetch protocol's messages: "send me your signed fingerprint for app
//! X". Each travels as a 4-byte big-endian length and a [`crate::wire`] encoding;
//! lengths are checked against the limits here before anything is allocated.

use crate::membership::MAX_INTRODUCTIONS;
use crate::wire::MAX_MESSAGE_BYTES;
use crate::PublicKey;
use serde::{Deserialize, Serialize};

/// Requests carry an app name and possibly the requester's own announcement.
pub const MAX_REQUEST_BYTES: usize = MAX_MESSAGE_BYTES + 1024;
/// A fingerprint and [`MAX_INTRODUCTIONS`] introductions.
pub const MAX_RESPONSE_BYTES: usize = MAX_MESSAGE_BYTES + 64 + INTRODUCTIONS_ROOM;
/// Bytes an answer's introductions may take: a fingerprint bigger than the wire's
/// limit less this is answered without them.
pub const INTRODUCTIONS_ROOM: usize = MAX_INTRODUCTIONS * (48 + MAX_INTRODUCED_ADDRS * 72);
/// Addresses per introduced peer a receiver reads, at most.
pub const MAX_INTRODUCED_ADDRS: usize = 4;
/// Bytes of one introduced address, at most (a DNS name, a port and a peer id fit).
pub const MAX_ADDR_BYTES: usize = 64;

/// "Send me your signed fingerprint for `app`", optionally with ours, so that two
/// members who found each other learn about each other in one round trip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    pub app: String,
    pub announcement: Option<Vec<u8>>,
}

/// The peer's newest signed fingerprint envelope for the app, if it has one. Checked by
/// the receiver like any announcement. To a requester in its cluster, it also names a
/// few cluster-mates it is connected to, with where they listen: gossipsub meshes only
/// connected peers, and a peer heard of only through relayed heartbeats has no
/// address the DHT reliably finds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    pub announcement: Option<Vec<u8>>,
    pub introductions: Vec<Introduction>,
}

/// A cluster-mate named in a fetch's answer: its key and its listen addresses (encoded
/// multiaddrs: the answering peer's word for them; only used to dial, never put in the
/// DHT).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Introduction {
    pub peer: PublicKey,
    pub addrs: Vec<Vec<u8>>,
}

impl Introduction {
    /// Names `peer` with at most [`MAX_INTRODUCED_ADDRS`] of its encoded addresses,
    /// leaving out any over [`MAX_ADDR_BYTES`].
    pub fn new(peer: PublicKey, addrs: impl IntoIterator<Item = Vec<u8>>) -> Self {
        let addrs = addrs.into_iter().filter(|a| a.len() <= MAX_ADDR_BYTES).take(MAX_INTRODUCED_ADDRS).collect();
        Introduction { peer, addrs }
    }

    /// The encoded addresses a receiver considers: at most [`MAX_INTRODUCED_ADDRS`],
    /// none over [`MAX_ADDR_BYTES`], whatever the sender put in.
    pub fn addr_bytes(&self) -> impl Iterator<Item = &[u8]> {
        self.addrs.iter().take(MAX_INTRODUCED_ADDRS).filter(|a| a.len() <= MAX_ADDR_BYTES).map(Vec::as_slice)
    }
}

/// A frame's length prefix, checked against `limit` before its body is read.
pub fn check_frame_len(len: usize, limit: usize) -> Result<usize, FrameTooLong> {
    if len > limit {
        return Err(FrameTooLong { len, limit });
    }
    Ok(len)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("frame of {len} bytes over the {limit}-byte limit")]
pub struct FrameTooLong {
    pub len: usize,
    pub limit: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_introduction_keeps_a_few_short_addresses_and_reads_only_those() {
        let key = crate::Keypair::from_secret_bytes(&[1; 32]).public();
        let mut addrs = vec![vec![1; MAX_ADDR_BYTES + 1]];
        addrs.extend((0..6).map(|i| vec![i; 8]));
        let i = Introduction::new(key, addrs);
        assert_eq!(i.addrs.len(), MAX_INTRODUCED_ADDRS, "the long one is left out, then four kept");
        let forged =
            Introduction { peer: key, addrs: (0..9).map(|i| vec![i; MAX_ADDR_BYTES + (i as usize % 2)]).collect() };
        assert_eq!(forged.addr_bytes().count(), 2, "of the first four, the two short ones");
        assert_eq!(check_frame_len(10, 9), Err(FrameTooLong { len: 10, limit: 9 }));
    }
}
