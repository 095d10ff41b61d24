//! The serving side of content lanes: accepts connections, binds each to the libp2p peer
//! its ticket was issued to, and answers its requests in order. What to answer is the
//! node's decision (its event loop), exactly as for requests over libp2p.

use super::wire::{self, AnswerHead, Ticket};
use super::{LaneError, LaneEvent, Served};
use libp2p::PeerId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

/// How long a new connection has to present its ticket.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests one lane may have waiting for answers: what a client pipelines, with room.
/// Past it the server stops reading requests until an answer is out.
const PIPELINE: usize = 4;

/// How long a served lane may stay silent, and how long one answer may take to leave:
/// a client that stops asking or stops reading gives its slot back.
#[derive(Clone, Copy, Debug)]
pub struct ServeTimeouts {
    pub idle: Duration,
    pub write: Duration,
}

impl Default for ServeTimeouts {
    fn default() -> Self {
        ServeTimeouts { idle: Duration::from_secs(60), write: Duration::from_secs(30) }
    }
}

/// The lanes served to each peer, closed when its libp2p connection closes: dropping
/// a sender ends its lane.
pub(super) type Serving = Arc<Mutex<HashMap<PeerId, Vec<oneshot::Sender<()>>>>>;

pub(super) async fn accept_loop(
    listener: TcpListener,
    tickets: Arc<Mutex<HashMap<Ticket, PeerId>>>,
    events: mpsc::UnboundedSender<LaneEvent>,
    limit: Arc<Semaphore>,
    serving: Serving,
    timeouts: ServeTimeouts,
) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: back off rather than spin.
                warn!(error = %e, "content lane: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            debug!(%from, "content lane refused: too many open");
            continue;
        };
        let (tickets, events, serving) = (tickets.clone(), events.clone(), serving.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, tickets, events, permit, serving, timeouts).await {
                debug!(%from, error = %e, "content lane closed");
            }
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    tickets: Arc<Mutex<HashMap<Ticket, PeerId>>>,
    events: mpsc::UnboundedSender<LaneEvent>,
    _permit: OwnedSemaphorePermit,
    serving: Serving,
    timeouts: ServeTimeouts,
) -> Result<(), LaneError> {
    stream.set_nodelay(true)?;
    let mut hello = [0u8; wire::HELLO_LEN];
    tokio::time::timeout(HELLO_TIMEOUT, stream.read_exact(&mut hello)).await.map_err(|_| LaneError::Timeout)??;
    let ticket = wire::decode_hello(&hello)?;
    // Tickets are single-use: a client that reconnects asks for a new one over libp2p.
    let peer = tickets.lock().expect("ticket lock").remove(&ticket).ok_or(LaneError::UnknownTicket)?;
    let (close_tx, closed) = oneshot::channel();
    {
        let mut serving = serving.lock().expect("serving lock");
        let lanes = serving.entry(peer).or_default();
        lanes.retain(|l| !l.is_closed());
        lanes.push(close_tx);
    }
    let (mut rd, mut wr) = stream.into_split();
    let (queue_tx, mut queue_rx) = mpsc::channel::<(u32, oneshot::Receiver<Option<Served>>)>(PIPELINE);
    let reader = async {
        loop {
            let mut request = [0u8; wire::REQUEST_LEN];
            match tokio::time::timeout(timeouts.idle, rd.read_exact(&mut request)).await {
                Ok(Ok(_)) => {}
                // The client closed its lane, or went quiet: done (it asks for a new
                // ticket when it wants chunks again).
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(_) => return Ok(()),
                Ok(Err(e)) => return Err(LaneError::Io(e)),
            }
            let (content, index) = wire::decode_request(&request);
            let (reply, answer) = oneshot::channel();
            events.send(LaneEvent::Request { peer, content, index, reply }).map_err(|_| LaneError::NodeGone)?;
            queue_tx.send((index, answer)).await.map_err(|_| LaneError::NodeGone)?;
        }
    };
    let writer = async {
        while let Some((index, answer)) = queue_rx.recv().await {
            let write = async {
                match answer.await.ok().flatten() {
                    None => wr.write_all(&AnswerHead::NotFound { index }.encode()).await,
                    Some(served) => {
                        let head =
                            AnswerHead::Chunk { index, bitmap_len: served.have.len(), data_len: served.data.len() };
                        let mut first = head.encode().to_vec();
                        first.extend_from_slice(&served.have);
                        wr.write_all(&first).await?;
                        wr.write_all(&served.data).await
                    }
                }
            };
            // A client that stops reading holds a slot no longer than this.
            tokio::time::timeout(timeouts.write, write).await.map_err(|_| LaneError::Timeout)??;
        }
        Ok(())
    };
    let ended = tokio::select! {
        r = reader => r,
        r = writer => r,
        // The peer's libp2p connection closed: what the lane serves was decided there.
        _ = closed => Ok(()),
    };
    ended.map_err(|e| LaneError::Peer { peer, source: Box::new(e) })
}
