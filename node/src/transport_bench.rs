//! The transport floor: what moving an artifact's bytes between peers costs in the
//! transport alone, with none of Mirage's own work: no hashing, no disk, no download
//! planning, no DHT. Two paths: libp2p (TCP, noise, yamux and the content protocol's
//! framing), which nodes with lanes off take, and content lanes ([`crate::lane`]: the
//! ticket over libp2p, then plain TCP), which chunks take between nodes that have them.
//!
//! `mirage bench transport [--lanes]` starts one seed and N receivers as processes, each
//! running [`run_peer`]. Every peer answers any chunk request from one buffer in memory,
//! and each receiver pulls every chunk once, spread evenly over all the other peers, with
//! the node's two requests in flight per peer. The time until the last receiver has every
//! chunk is the floor a Mirage swarm of that size can reach on the machine.
//!
//! A peer talks to its parent by lines: it prints `listening <addr>` once, `connected <n>`
//! whenever it has n peers, and `done <seconds>` when it received everything; it reads
//! `dial <addr>` and `go` (start pulling), and exits when its input ends.

use crate::lane::{LaneEvent, Lanes, Route, Served};
use crate::net::content::{pack_bitmap, CONTENT_PROTOCOL};
use crate::net::{ContentCodec, ContentRequest, ContentResponse, CHUNK_REQUEST_TIMEOUT};
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{request_response, Multiaddr, PeerId};
use mirage_protocol::Digest;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Requests in flight per peer, as the node keeps them.
const PER_PEER_IN_FLIGHT: usize = 2;

#[derive(Debug, Error)]
pub enum TransportBenchError {
    #[error("libp2p: {0}")]
    Swarm(String),
    #[error("bad address {0:?}")]
    Address(String),
    #[error("reading the parent's commands: {0}")]
    Io(#[from] std::io::Error),
    #[error("content lane: {0}")]
    Lane(String),
}

pub struct PeerOptions {
    pub chunks: usize,
    pub chunk_size: usize,
    /// Pull every chunk on `go` (a receiver); a seed only serves.
    pub receive: bool,
    /// Move chunks over content lanes instead of libp2p.
    pub lanes: bool,
}

/// The chunks one receiver still has to ask for, and who is answering what.
struct Pull {
    next: VecDeque<u32>,
    in_flight: HashMap<PeerId, usize>,
    received: usize,
    started: Instant,
}

pub async fn run_peer(options: PeerOptions) -> Result<(), TransportBenchError> {
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let local = keypair.public().to_peer_id();
    let mut swarm = mirage_bootstrap::build_swarm(&keypair, |_| {
        request_response::Behaviour::with_codec(
            ContentCodec,
            [(CONTENT_PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(CHUNK_REQUEST_TIMEOUT)
                .with_max_concurrent_streams(256),
        )
    })
    .map_err(|e| TransportBenchError::Swarm(e.to_string()))?;
    let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().expect("a valid address");
    swarm.listen_on(listen).map_err(|e| TransportBenchError::Swarm(e.to_string()))?;

    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let (mut lanes, mut lane_events) = if options.lanes {
        Lanes::listen(std::net::SocketAddr::new(loopback, 0), 64, CHUNK_REQUEST_TIMEOUT)
            .await
            .map_err(|e| TransportBenchError::Lane(e.to_string()))?
    } else {
        Lanes::off()
    };
    let chunk = bytes::Bytes::from(vec![0x5au8; options.chunk_size]);
    let have = pack_bitmap(&vec![true; options.chunks]);
    // Any content id: every peer serves the same bytes whatever is asked.
    let content = Digest::of(b"transport floor");
    let mut peers: BTreeSet<PeerId> = BTreeSet::new();
    let mut pull: Option<Pull> = None;
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = commands.next_line() => {
                let Some(line) = line? else { return Ok(()) };
                if let Some(addr) = line.strip_prefix("dial ") {
                    let addr: Multiaddr = addr.parse().map_err(|_| TransportBenchError::Address(addr.into()))?;
                    swarm.dial(addr).map_err(|e| TransportBenchError::Swarm(e.to_string()))?;
                } else if line == "go" && options.receive {
                    let mut p = Pull {
                        next: (0..options.chunks as u32).collect(),
                        in_flight: HashMap::new(),
                        received: 0,
                        started: Instant::now(),
                    };
                    for peer in &peers {
                        if lanes.should_ask(*peer) {
                            swarm.behaviour_mut().send_request(peer, ContentRequest::Lane);
                        }
                        for _ in 0..PER_PEER_IN_FLIGHT {
                            ask(&mut swarm, &mut lanes, &mut p, *peer, content);
                        }
                    }
                    pull = Some(p);
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => println!("listening {address}/p2p/{local}"),
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peers.insert(peer_id) => {
                    lanes.peer_connected(peer_id, Some(loopback));
                    println!("connected {}", peers.len());
                }
                SwarmEvent::Behaviour(request_response::Event::Message { peer, message, .. }) => match message {
                    request_response::Message::Request { request: ContentRequest::Lane, channel, .. } => {
                        let response = ContentResponse::lane_offer(lanes.issue_ticket(peer));
                        let _ = swarm.behaviour_mut().send_response(channel, response);
                    }
                    request_response::Message::Request { channel, .. } => {
                        let response = ContentResponse::Chunk { data: chunk.clone(), have: have.clone() };
                        let _ = swarm.behaviour_mut().send_response(channel, response);
                    }
                    request_response::Message::Response { response: ContentResponse::Lane { port, ticket }, .. } => {
                        if !lanes.on_offer(peer, port, ticket).is_empty() {
                            return Err(TransportBenchError::Lane(format!("no address for {peer}")));
                        }
                    }
                    request_response::Message::Response { response, .. } => {
                        let Some(p) = pull.as_mut() else { continue };
                        let got = matches!(response, ContentResponse::Chunk { .. });
                        answered(&mut swarm, &mut lanes, p, peer, content, got, options.chunks);
                    }
                },
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { peer, error, .. }) => {
                    return Err(TransportBenchError::Swarm(format!("request to {peer} failed: {error}")));
                }
                _ => {}
            },
            Some(event) = lane_events.recv() => match event {
                LaneEvent::Request { reply, .. } => {
                    let _ = reply.send(Some(Served { data: chunk.clone(), have: have.clone() }));
                }
                LaneEvent::Answer { peer, chunk: answer, .. } => {
                    let Some(p) = pull.as_mut() else { continue };
                    answered(&mut swarm, &mut lanes, p, peer, content, answer.is_some(), options.chunks);
                }
                LaneEvent::Closed { peer, error, .. } => {
                    if let Some(e) = error {
                        return Err(TransportBenchError::Lane(format!("to {peer}: {e}")));
                    }
                }
            },
        }
    }
}

/// An answer from `peer` came in: count it and ask that peer for the next chunk.
fn answered(
    swarm: &mut libp2p::Swarm<request_response::Behaviour<ContentCodec>>,
    lanes: &mut Lanes,
    pull: &mut Pull,
    peer: PeerId,
    content: Digest,
    got_chunk: bool,
    chunks: usize,
) {
    if let Some(n) = pull.in_flight.get_mut(&peer) {
        *n = n.saturating_sub(1);
    }
    if got_chunk {
        pull.received += 1;
    }
    if pull.received == chunks {
        println!("done {:.3}", pull.started.elapsed().as_secs_f64());
    }
    ask(swarm, lanes, pull, peer, content);
}

fn ask(
    swarm: &mut libp2p::Swarm<request_response::Behaviour<ContentCodec>>,
    lanes: &mut Lanes,
    pull: &mut Pull,
    peer: PeerId,
    content: Digest,
) {
    let in_flight = pull.in_flight.entry(peer).or_default();
    if *in_flight >= PER_PEER_IN_FLIGHT {
        return;
    }
    let Some(index) = pull.next.pop_front() else { return };
    *in_flight += 1;
    if let Route::Libp2p = lanes.route(peer, content, index) {
        swarm.behaviour_mut().send_request(&peer, ContentRequest::Chunk { content, index });
    }
}
