//! Content lanes: chunk bytes between two peers over a plain TCP connection beside their
//! libp2p connection, so bulk content skips noise's encryption and yamux's framing.
//!
//! Why this is safe, and what it gives up:
//! - **Integrity does not come from the channel.** Every chunk is checked against the
//!   vendor-signed manifest's digest before a byte is written, whichever way it came, as
//!   apt does over plain HTTP and BitTorrent over its wire.
//! - **Who may use a lane is decided over libp2p.** A lane opens only with a single-use
//!   ticket the server handed out over the authenticated, encrypted libp2p connection,
//!   and the connection goes to the IP of that libp2p connection. The server thus knows
//!   which libp2p peer it serves, and the client which peer it asked.
//! - **Confidentiality is given up for content bytes only.** An observer of the link
//!   sees which artifact's chunks flow. Which peers hold which artifact is public in the
//!   DHT anyway (holders provide the content hash there); requests, manifests, reports
//!   and gossip stay on libp2p. A node that wants none of it runs with lanes off.
//! - **Attribution is as strong as TCP.** A chunk that fails verification is blamed on
//!   the lane's peer and bans it from that download, as on libp2p. Only an attacker on
//!   the path who rewrites TCP could frame an honest peer that way, and one who can do
//!   that can cut the two apart anyway.
//!
//! On loopback with 16 receivers of 256 MiB, noise's ChaCha20-Poly1305 alone was a
//! quarter of all CPU time (`perf`, `mirage bench swarm`): see testnet/bench/README.md.
//!
//! The lane only carries bytes: what to serve and what to do with an answer stay the
//! node's decisions, taken on its event loop from [`LaneEvent`]s.

mod client;
mod server;
/// The lane's frames (in the protocol crate, where the fuzzer reaches them).
pub use mirage_protocol::exchange::lane as wire;

pub use server::ServeTimeouts;

use libp2p::PeerId;
use mirage_protocol::Digest;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, Semaphore};
use wire::Ticket;

#[derive(Debug, Error)]
pub enum LaneError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] wire::FrameError),
    #[error("no answer in time")]
    Timeout,
    #[error("a ticket this node did not issue (or issued and saw used)")]
    UnknownTicket,
    #[error("an answer to no request")]
    Unsolicited,
    #[error("the node stopped")]
    NodeGone,
    #[error("lane of peer {peer}: {source}")]
    Peer { peer: PeerId, source: Box<LaneError> },
}

/// A chunk as a server answers it: the bytes and its have-bitmap for the artifact.
#[derive(Debug)]
pub struct Served {
    pub data: bytes::Bytes,
    pub have: Vec<u8>,
}

/// What lanes tell the node's event loop.
#[derive(Debug)]
pub enum LaneEvent {
    /// `peer` asks over its lane for a chunk; `reply` with it, or `None` for not found.
    Request { peer: PeerId, content: Digest, index: u32, reply: oneshot::Sender<Option<Served>> },
    /// The answer to a chunk request sent over the lane to `peer` at `sent`.
    Answer { peer: PeerId, content: Digest, index: u32, sent: Instant, chunk: Option<Served> },
    /// The lane to `peer` is gone (`error` is `None` when the node closed it); `lost`
    /// are the requests it took that got no answer.
    Closed { peer: PeerId, error: Option<LaneError>, lost: Vec<(Digest, u32)> },
}

/// Where the node sends a chunk request to a peer.
pub enum Route {
    /// Taken by the lane: sent over it, or held until the peer answers our ask for one.
    Taken,
    /// Over libp2p.
    Libp2p,
}

enum Outbound {
    /// Asked the peer for a ticket; chunk requests wait for its answer (one round trip)
    /// rather than cross libp2p's encryption.
    Asked(Vec<client::LaneRequest>),
    Open(mpsc::UnboundedSender<client::LaneRequest>),
    /// The peer has no lane for us, or ours to it broke: libp2p only, until it reconnects.
    Unavailable,
}

/// This node's lanes: its listener's tickets and its lanes to other peers.
pub struct Lanes {
    /// The listener's port; `None` when this node runs without lanes.
    port: Option<u16>,
    tickets: Arc<Mutex<HashMap<Ticket, PeerId>>>,
    outbound: HashMap<PeerId, Outbound>,
    /// The IP each connected peer's libp2p connection runs over: where its lane is.
    addrs: HashMap<PeerId, IpAddr>,
    events: mpsc::UnboundedSender<LaneEvent>,
    answer_timeout: Duration,
    /// Lanes this node serves, by peer.
    serving: server::Serving,
}

impl Lanes {
    /// Lanes off: no listener, and no asking others for lanes.
    pub fn off() -> (Lanes, mpsc::UnboundedReceiver<LaneEvent>) {
        // Without a port this node asks nobody for a lane, so it never waits on an answer.
        Lanes::with(None, Duration::ZERO)
    }

    fn with(port: Option<u16>, answer_timeout: Duration) -> (Lanes, mpsc::UnboundedReceiver<LaneEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let lanes = Lanes {
            port,
            tickets: Arc::default(),
            outbound: HashMap::new(),
            addrs: HashMap::new(),
            events,
            answer_timeout,
            serving: Arc::default(),
        };
        (lanes, rx)
    }

    /// Listens for lanes on `addr` (port 0: an ephemeral one), serving at most `max_open`
    /// at once.
    pub async fn listen(
        addr: SocketAddr,
        max_open: usize,
        answer_timeout: Duration,
    ) -> std::io::Result<(Lanes, mpsc::UnboundedReceiver<LaneEvent>)> {
        Lanes::listen_with(addr, max_open, answer_timeout, server::ServeTimeouts::default()).await
    }

    /// [`Lanes::listen`] with other serving timeouts.
    pub async fn listen_with(
        addr: SocketAddr,
        max_open: usize,
        answer_timeout: Duration,
        timeouts: server::ServeTimeouts,
    ) -> std::io::Result<(Lanes, mpsc::UnboundedReceiver<LaneEvent>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let (lanes, rx) = Lanes::with(Some(listener.local_addr()?.port()), answer_timeout);
        tokio::spawn(server::accept_loop(
            listener,
            lanes.tickets.clone(),
            lanes.events.clone(),
            Arc::new(Semaphore::new(max_open)),
            lanes.serving.clone(),
            timeouts,
        ));
        Ok((lanes, rx))
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// A ticket for `peer` to open a lane with, and the port to open it on.
    pub fn issue_ticket(&mut self, peer: PeerId) -> Option<(u16, Ticket)> {
        let port = self.port?;
        let ticket: Ticket = rand::random();
        let mut tickets = self.tickets.lock().expect("ticket lock");
        // One unused ticket per peer at most: a peer asking again replaces its old one.
        tickets.retain(|_, p| *p != peer);
        tickets.insert(ticket, peer);
        Some((port, ticket))
    }

    pub fn peer_connected(&mut self, peer: PeerId, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            self.addrs.insert(peer, ip);
        }
    }

    /// The peer's last libp2p connection closed: its tickets lapse and our lane to it
    /// closes (dropping the sender ends the lane task).
    pub fn peer_gone(&mut self, peer: &PeerId) {
        self.tickets.lock().expect("ticket lock").retain(|_, p| p != peer);
        self.outbound.remove(peer);
        self.addrs.remove(peer);
        // And the lanes we serve it: dropping their senders closes them.
        self.serving.lock().expect("serving lock").remove(peer);
    }

    /// Whether to ask `peer` for a lane now; if so, it counts as asked from here on.
    /// The node asks as soon as it learns a peer holds content it wants, so the lane is
    /// usually open before the first chunk request.
    pub fn should_ask(&mut self, peer: PeerId) -> bool {
        if self.port.is_none() || self.outbound.contains_key(&peer) || !self.addrs.contains_key(&peer) {
            return false;
        }
        self.outbound.insert(peer, Outbound::Asked(Vec::new()));
        true
    }

    /// Takes a chunk request for `peer` if it has (or is being asked for) a lane.
    pub fn route(&mut self, peer: PeerId, content: Digest, index: u32) -> Route {
        let request = client::LaneRequest { content, index };
        match self.outbound.get_mut(&peer) {
            Some(Outbound::Open(tx)) => {
                if tx.send(request).is_ok() {
                    return Route::Taken;
                }
                // The task ended; its Closed event is on its way and says why.
                self.outbound.insert(peer, Outbound::Unavailable);
                Route::Libp2p
            }
            Some(Outbound::Asked(held)) => {
                held.push(request);
                Route::Taken
            }
            Some(Outbound::Unavailable) | None => Route::Libp2p,
        }
    }

    /// The peer gave us a ticket: open the lane and send what waited for it. Returns
    /// the requests to send over libp2p instead (when the peer's address is gone).
    pub fn on_offer(&mut self, peer: PeerId, port: u16, ticket: Ticket) -> Vec<(Digest, u32)> {
        let Some(ip) = self.addrs.get(&peer).copied() else { return self.on_refused(peer) };
        // Only an offer we asked for and still wait on opens a lane.
        let Some(Outbound::Asked(held)) = self.outbound.get_mut(&peer) else { return Vec::new() };
        let held = std::mem::take(held);
        let (tx, rx) = mpsc::unbounded_channel();
        for request in held {
            tx.send(request).expect("the receiver is right here");
        }
        tokio::spawn(client::run(
            peer,
            SocketAddr::new(ip, port),
            ticket,
            rx,
            self.events.clone(),
            self.answer_timeout,
        ));
        self.outbound.insert(peer, Outbound::Open(tx));
        Vec::new()
    }

    /// The peer has no lane for us (or did not understand the question): the requests
    /// that waited for one, for the node to send over libp2p.
    pub fn on_refused(&mut self, peer: PeerId) -> Vec<(Digest, u32)> {
        match self.outbound.get_mut(&peer) {
            Some(Outbound::Asked(held)) => {
                let held = std::mem::take(held).into_iter().map(|r| (r.content, r.index)).collect();
                self.outbound.insert(peer, Outbound::Unavailable);
                held
            }
            _ => Vec::new(),
        }
    }

    /// Our lane to `peer` ended. One the peer closed (it went quiet past the peer's
    /// idle limit, say) may be asked for again; one that broke its protocol may not.
    pub fn on_closed(&mut self, peer: PeerId, error: Option<&LaneError>) {
        if matches!(self.outbound.get(&peer), Some(Outbound::Open(tx)) if tx.is_closed()) {
            let broke = matches!(error, Some(LaneError::Frame(_) | LaneError::Unsolicited))
                || matches!(error, Some(LaneError::Peer { source, .. }) if matches!(**source, LaneError::Frame(_) | LaneError::Unsolicited));
            if broke {
                self.outbound.insert(peer, Outbound::Unavailable);
            } else {
                self.outbound.remove(&peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::net::Ipv4Addr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const PATIENCE: Duration = Duration::from_secs(10);

    async fn next(events: &mut mpsc::UnboundedReceiver<LaneEvent>) -> LaneEvent {
        tokio::time::timeout(PATIENCE, events.recv()).await.expect("an event in time").expect("lanes running")
    }

    /// Whether the server closes a connection that opened with `hello`.
    async fn refused(port: u16, hello: &[u8]) -> bool {
        let mut stream = tokio::net::TcpStream::connect((LOOPBACK, port)).await.unwrap();
        stream.write_all(hello).await.unwrap();
        stream.write_all(&wire::encode_request(&Digest([1; 32]), 0)).await.unwrap();
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn a_ticket_opens_a_lane_whose_answers_come_back_in_order() {
        let (mut server, mut served) = Lanes::listen(SocketAddr::new(LOOPBACK, 0), 4, PATIENCE).await.unwrap();
        let (mut client, mut answers) = Lanes::listen(SocketAddr::new(LOOPBACK, 0), 4, PATIENCE).await.unwrap();
        let (server_peer, client_peer) = (PeerId::random(), PeerId::random());
        let content = Digest([1; 32]);

        client.peer_connected(server_peer, Some(LOOPBACK));
        assert!(client.should_ask(server_peer));
        assert!(!client.should_ask(server_peer), "asked once");
        // Requests made while the ticket is on its way wait for the lane.
        assert!(matches!(client.route(server_peer, content, 0), Route::Taken));
        let (port, ticket) = server.issue_ticket(client_peer).unwrap();
        assert!(client.on_offer(server_peer, port, ticket).is_empty());
        // An offer nobody waits for (a late duplicate) changes nothing.
        assert!(client.on_offer(server_peer, port, [0; 16]).is_empty());
        assert!(matches!(client.route(server_peer, content, 1), Route::Taken));

        let chunk = Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        for expected in [0, 1] {
            let LaneEvent::Request { peer, content: asked, index, reply } = next(&mut served).await else {
                panic!("a request")
            };
            assert_eq!((peer, asked, index), (client_peer, content, expected));
            let answer = (index == 0).then(|| Served { data: chunk.clone(), have: vec![0b11] });
            reply.send(answer).unwrap();
        }
        let LaneEvent::Answer { peer, index: 0, chunk: Some(got), .. } = next(&mut answers).await else {
            panic!("chunk 0 first")
        };
        assert_eq!((peer, &got.data, got.have.as_slice()), (server_peer, &chunk, &[0b11u8][..]));
        assert_eq!(got.data.as_ptr().align_offset(crate::direct_io::ALIGN), 0, "ready for a direct write");
        assert!(matches!(next(&mut answers).await, LaneEvent::Answer { index: 1, chunk: None, .. }));

        // A ticket opens one lane only; a made-up one or a bad hello none.
        assert!(refused(port, &wire::encode_hello(&ticket)).await);
        assert!(refused(port, &wire::encode_hello(&[9; 16])).await);
        assert!(refused(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await);

        // The server's peer went away: the lane closes and nothing was left unanswered.
        client.peer_gone(&server_peer);
        let LaneEvent::Closed { peer, error: None, lost } = next(&mut answers).await else { panic!("closed") };
        assert_eq!((peer, lost.len()), (server_peer, 0));
        assert!(matches!(client.route(server_peer, content, 2), Route::Libp2p));
    }

    /// A lane opened by hand with `ticket`, as a client would.
    async fn open_raw(port: u16, ticket: &Ticket) -> tokio::net::TcpStream {
        let mut stream = tokio::net::TcpStream::connect((LOOPBACK, port)).await.unwrap();
        stream.write_all(&wire::encode_hello(ticket)).await.unwrap();
        stream
    }

    /// Whether the server closes the lane within `within`.
    async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(within, stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn a_lane_that_goes_quiet_is_closed_and_its_slot_given_back() {
        let timeouts = ServeTimeouts { idle: Duration::from_millis(300), write: Duration::from_millis(300) };
        let (mut server, _served) =
            Lanes::listen_with(SocketAddr::new(LOOPBACK, 0), 1, PATIENCE, timeouts).await.unwrap();
        let client = PeerId::random();
        let (port, ticket) = server.issue_ticket(client).unwrap();
        let mut quiet = open_raw(port, &ticket).await;
        assert!(closed_within(&mut quiet, Duration::from_secs(5)).await, "a silent lane stayed open");
        // Its one slot is free again: a new ticket opens a lane that stays up meanwhile.
        let (_, ticket) = server.issue_ticket(client).unwrap();
        let mut next = open_raw(port, &ticket).await;
        assert!(!closed_within(&mut next, Duration::from_millis(100)).await);
    }

    #[tokio::test]
    async fn lanes_served_to_a_peer_close_with_its_libp2p_connection() {
        let (mut server, _served) = Lanes::listen(SocketAddr::new(LOOPBACK, 0), 4, PATIENCE).await.unwrap();
        let (gone, staying) = (PeerId::random(), PeerId::random());
        let (port, ticket) = server.issue_ticket(gone).unwrap();
        let mut lane = open_raw(port, &ticket).await;
        let (_, other_ticket) = server.issue_ticket(staying).unwrap();
        let mut other = open_raw(port, &other_ticket).await;
        assert!(!closed_within(&mut lane, Duration::from_millis(200)).await, "open while the peer is connected");
        server.peer_gone(&gone);
        assert!(closed_within(&mut lane, Duration::from_secs(5)).await, "the lane outlived its libp2p connection");
        assert!(!closed_within(&mut other, Duration::from_millis(200)).await, "another peer's lane was closed");
    }

    #[tokio::test]
    async fn requests_waiting_for_a_lane_that_never_opens_are_handed_back() {
        // A port nobody listens on: bind one, note it, let it go.
        let port = std::net::TcpListener::bind((LOOPBACK, 0)).unwrap().local_addr().unwrap().port();
        let (mut client, mut events) = Lanes::listen(SocketAddr::new(LOOPBACK, 0), 4, PATIENCE).await.unwrap();
        let server_peer = PeerId::random();
        client.peer_connected(server_peer, Some(LOOPBACK));
        assert!(client.should_ask(server_peer));
        assert!(matches!(client.route(server_peer, Digest([4; 32]), 1), Route::Taken));
        assert!(matches!(client.route(server_peer, Digest([4; 32]), 2), Route::Taken));
        client.on_offer(server_peer, port, [3; 16]);
        let LaneEvent::Closed { error: Some(_), lost, .. } = next(&mut events).await else { panic!("no lane") };
        assert_eq!(lost, vec![(Digest([4; 32]), 1), (Digest([4; 32]), 2)]);
    }

    #[tokio::test]
    async fn requests_a_broken_lane_took_are_handed_back() {
        // A "server" that takes the hello and a request, then hangs up.
        let listener = tokio::net::TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; wire::HELLO_LEN + wire::REQUEST_LEN];
            stream.read_exact(&mut buf).await.unwrap();
        });
        let (mut client, mut events) = Lanes::listen(SocketAddr::new(LOOPBACK, 0), 4, PATIENCE).await.unwrap();
        let server_peer = PeerId::random();
        client.peer_connected(server_peer, Some(LOOPBACK));
        assert!(client.should_ask(server_peer));
        client.on_offer(server_peer, port, [3; 16]);
        assert!(matches!(client.route(server_peer, Digest([2; 32]), 7), Route::Taken));
        let LaneEvent::Closed { error: Some(error), lost, .. } = next(&mut events).await else {
            panic!("a broken lane")
        };
        assert_eq!(lost, vec![(Digest([2; 32]), 7)]);
        client.on_closed(server_peer, Some(&error));
        assert!(matches!(client.route(server_peer, Digest([2; 32]), 8), Route::Libp2p), "libp2p meanwhile");
        // A hang-up is no breach of the protocol: a new lane may be asked for later.
        assert!(client.should_ask(server_peer));
    }

    #[test]
    fn a_peer_without_lanes_gets_its_waiting_requests_sent_over_libp2p() {
        let (mut lanes, _events) = Lanes::off();
        let peer = PeerId::random();
        lanes.peer_connected(peer, Some(LOOPBACK));
        assert!(!lanes.should_ask(peer), "a node without lanes asks nobody");
        assert!(matches!(lanes.route(peer, Digest([0; 32]), 1), Route::Libp2p));
        assert!(lanes.issue_ticket(peer).is_none());
    }
}
