//! The asking side of a content lane: one task per peer, which opens the connection with
//! the peer's ticket, sends the node's chunk requests as they come and reads the answers
//! in order, straight from the socket into the chunk's own buffer.

use super::wire::{self, AnswerHead, Ticket};
use super::{LaneError, LaneEvent, Served};
use crate::direct_io::AlignedFill;
use bytes::{BufMut, Bytes};
use libp2p::PeerId;
use mirage_protocol::Digest;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle reader looks at whether an answer is overdue.
const WATCH: Duration = Duration::from_secs(1);

/// A chunk request for the lane task to send.
#[derive(Clone, Copy, Debug)]
pub(super) struct LaneRequest {
    pub content: Digest,
    pub index: u32,
}

/// Runs one peer's lane until the node drops its sender or the lane fails; then reports
/// the requests that got no answer, so the node can ask for them elsewhere.
pub(super) async fn run(
    peer: PeerId,
    addr: SocketAddr,
    ticket: Ticket,
    mut requests: mpsc::UnboundedReceiver<LaneRequest>,
    events: mpsc::UnboundedSender<LaneEvent>,
    answer_timeout: Duration,
) {
    let pending = Mutex::new(VecDeque::new());
    let outcome = talk(peer, addr, ticket, &mut requests, &events, &pending, answer_timeout).await;
    // Lost: what was sent and not answered, and what was never sent (a lane that never
    // connected loses everything that waited for it).
    let mut lost: Vec<(Digest, u32)> =
        pending.into_inner().expect("pending lock").into_iter().map(|(c, i, _)| (c, i)).collect();
    requests.close();
    while let Ok(r) = requests.try_recv() {
        lost.push((r.content, r.index));
    }
    let _ = events.send(LaneEvent::Closed { peer, error: outcome.err(), lost });
}

type Pending = Mutex<VecDeque<(Digest, u32, Instant)>>;

async fn talk(
    peer: PeerId,
    addr: SocketAddr,
    ticket: Ticket,
    requests: &mut mpsc::UnboundedReceiver<LaneRequest>,
    events: &mpsc::UnboundedSender<LaneEvent>,
    pending: &Pending,
    answer_timeout: Duration,
) -> Result<(), LaneError> {
    let stream =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await.map_err(|_| LaneError::Timeout)??;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(&wire::encode_hello(&ticket)).await?;
    let writer = async {
        while let Some(r) = requests.recv().await {
            // Pending before it is sent: if the write fails, the request is reported lost.
            pending.lock().expect("pending lock").push_back((r.content, r.index, Instant::now()));
            wr.write_all(&wire::encode_request(&r.content, r.index)).await?;
        }
        // The node dropped the lane.
        Ok(())
    };
    let reader = async {
        loop {
            let first = match tokio::time::timeout(WATCH, rd.read_u8()).await {
                Ok(byte) => byte?,
                Err(_) => {
                    // Reading one byte is all or nothing, so giving up on it loses no
                    // framing; the lane may idle, but not while an answer is overdue.
                    let oldest = pending.lock().expect("pending lock").front().map(|p| p.2);
                    if oldest.is_some_and(|t| t.elapsed() > answer_timeout) {
                        return Err(LaneError::Timeout);
                    }
                    continue;
                }
            };
            let answer = tokio::time::timeout(answer_timeout, read_answer(first, &mut rd, pending))
                .await
                .map_err(|_| LaneError::Timeout)??;
            let (content, index, sent) = pending.lock().expect("pending lock").pop_front().expect("checked in read");
            events
                .send(LaneEvent::Answer { peer, content, index, sent, chunk: answer })
                .map_err(|_| LaneError::NodeGone)?;
        }
    };
    tokio::select! {
        r = writer => r,
        r = reader => r,
    }
}

/// Reads the rest of the answer whose first byte is `first`, for the oldest pending
/// request (left pending until the whole answer is in).
async fn read_answer<R: AsyncRead + Unpin>(
    first: u8,
    rd: &mut R,
    pending: &Pending,
) -> Result<Option<Served>, LaneError> {
    let mut head = [0u8; wire::ANSWER_HEAD_LEN];
    head[0] = first;
    rd.read_exact(&mut head[1..]).await?;
    let expected = pending.lock().expect("pending lock").front().map(|p| p.1).ok_or(LaneError::Unsolicited)?;
    match AnswerHead::decode(&head, expected)? {
        AnswerHead::NotFound { .. } => Ok(None),
        AnswerHead::Chunk { bitmap_len, data_len, .. } => {
            let mut have = vec![0u8; bitmap_len];
            rd.read_exact(&mut have).await?;
            Ok(Some(Served { data: read_exactly(rd, data_len).await?, have }))
        }
    }
}

/// Reads `len` bytes into a buffer of their own, without zeroing it first, aligned so
/// the chunk store can write it to disk directly ([`crate::direct_io`]).
async fn read_exactly<R: AsyncRead + Unpin>(rd: &mut R, len: usize) -> Result<Bytes, LaneError> {
    let mut fill = AlignedFill::new(len);
    while fill.filled() < len {
        let room = len - fill.filled();
        if rd.read_buf(&mut fill.vec_mut().limit(room)).await? == 0 {
            return Err(LaneError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    Ok(fill.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_are_read_whole_and_short_streams_fail() {
        let mut bytes: &[u8] = &[1, 2, 3, 4, 5];
        assert_eq!(&read_exactly(&mut bytes, 4).await.unwrap()[..], &[1, 2, 3, 4]);
        let mut short: &[u8] = &[1, 2];
        assert!(read_exactly(&mut short, 4).await.is_err());

        let pending = Mutex::new(VecDeque::from([(Digest([0; 32]), 3u32, Instant::now())]));
        let head = AnswerHead::Chunk { index: 3, bitmap_len: 1, data_len: 2 }.encode();
        let mut stream = [&head[1..], &[0b1], &[8, 9]].concat();
        let served = read_answer(head[0], &mut stream.as_slice(), &pending).await.unwrap().unwrap();
        assert_eq!((&served.data[..], served.have.as_slice()), (&[8u8, 9][..], &[0b1u8][..]));
        // An answer for another chunk than the oldest request is a broken lane.
        stream[0..4].copy_from_slice(&4u32.to_be_bytes());
        assert!(matches!(
            read_answer(head[0], &mut stream.as_slice(), &pending).await,
            Err(LaneError::Frame(wire::FrameError::OutOfOrder { got: 4, expected: 3 }))
        ));
        // An answer nobody asked for, too.
        pending.lock().unwrap().clear();
        assert!(matches!(read_answer(head[0], &mut &head[1..], &pending).await, Err(LaneError::Unsolicited)));
    }
}
