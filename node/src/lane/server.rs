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

pub(super) async fn accept_loop(
    listener: TcpListener,
    tickets: Arc<Mutex<HashMap<Ticket, PeerId>>>,
    events: mpsc::UnboundedSender<LaneEvent>,
    limit: Arc<Semaphore>,
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
        let (tickets, events) = (tickets.clone(), events.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, tickets, events, permit).await {
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
) -> Result<(), LaneError> {
    stream.set_nodelay(true)?;
    let mut hello = [0u8; wire::HELLO_LEN];
    tokio::time::timeout(HELLO_TIMEOUT, stream.read_exact(&mut hello)).await.map_err(|_| LaneError::Timeout)??;
    let ticket = wire::decode_hello(&hello)?;
    // Tickets are single-use: a client that reconnects asks for a new one over libp2p.
    let peer = tickets.lock().expect("ticket lock").remove(&ticket).ok_or(LaneError::UnknownTicket)?;
    let (mut rd, mut wr) = stream.into_split();
    let (queue_tx, mut queue_rx) = mpsc::channel::<(u32, oneshot::Receiver<Option<Served>>)>(PIPELINE);
    let reader = async {
        loop {
            let mut request = [0u8; wire::REQUEST_LEN];
            match rd.read_exact(&mut request).await {
                Ok(_) => {}
                // The client closed its lane: done.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(LaneError::Io(e)),
            }
            let (content, index) = wire::decode_request(&request);
            let (reply, answer) = oneshot::channel();
            events.send(LaneEvent::Request { peer, content, index, reply }).map_err(|_| LaneError::NodeGone)?;
            queue_tx.send((index, answer)).await.map_err(|_| LaneError::NodeGone)?;
        }
    };
    let writer = async {
        while let Some((index, answer)) = queue_rx.recv().await {
            match answer.await.ok().flatten() {
                None => wr.write_all(&AnswerHead::NotFound { index }.encode()).await?,
                Some(served) => {
                    let head = AnswerHead::Chunk { index, bitmap_len: served.have.len(), data_len: served.data.len() };
                    let mut first = head.encode().to_vec();
                    first.extend_from_slice(&served.have);
                    wr.write_all(&first).await?;
                    wr.write_all(&served.data).await?;
                }
            }
        }
        Ok(())
    };
    let ended = tokio::select! {
        r = reader => r,
        r = writer => r,
    };
    ended.map_err(|e| LaneError::Peer { peer, source: Box::new(e) })
}
