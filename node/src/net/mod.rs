//! The node's libp2p stack: the shared overlay behaviours (see
//! [`mirage_bootstrap::overlay`]) plus the fingerprint fetch and content protocols.

pub mod codec;
pub mod content;

use libp2p::swarm::NetworkBehaviour;
use libp2p::{request_response, Swarm};
use mirage_bootstrap::overlay::{GossipTuning, KadTuning, OverlayError};
use std::time::Duration;

pub use codec::{FetchCodec, FetchRequest, FetchResponse, Introduction, RosterCodec};
pub use content::{ContentCodec, ContentRequest, ContentResponse};

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// The behaviours every overlay peer shares with the bootstrap peers.
    pub overlay: mirage_bootstrap::Behaviour,
    pub fetch: request_response::Behaviour<FetchCodec>,
    pub roster: request_response::Behaviour<RosterCodec>,
    pub content: request_response::Behaviour<ContentCodec>,
}

/// A chunk request that takes longer than this fails and strikes the peer.
pub const CHUNK_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct NetOptions {
    pub max_connections: u32,
    pub gossip: GossipTuning,
    pub kad: KadTuning,
}

pub fn build(keypair: &libp2p::identity::Keypair, options: &NetOptions) -> Result<Swarm<Behaviour>, OverlayError> {
    let behaviour = behaviour(keypair, options)?;
    mirage_bootstrap::build_swarm(keypair, |_| behaviour)
}

/// The node's behaviour, for a swarm built here or by a harness over another transport.
pub fn behaviour(keypair: &libp2p::identity::Keypair, options: &NetOptions) -> Result<Behaviour, OverlayError> {
    let overlay = mirage_bootstrap::Behaviour::new(
        keypair,
        options.max_connections,
        &options.gossip,
        &options.kad,
        "mirage-node",
    )?;
    Ok(Behaviour {
        overlay,
        fetch: protocol(FetchCodec::default(), codec::FETCH_PROTOCOL, Duration::from_secs(10), 64),
        roster: protocol(RosterCodec::default(), codec::ROSTER_PROTOCOL, Duration::from_secs(10), 16),
        content: protocol(ContentCodec, content::CONTENT_PROTOCOL, CHUNK_REQUEST_TIMEOUT, 256),
    })
}

/// A request-response behaviour speaking one protocol both ways.
fn protocol<C>(
    codec: C,
    name: libp2p::StreamProtocol,
    timeout: Duration,
    streams: usize,
) -> request_response::Behaviour<C>
where
    C: request_response::Codec<Protocol = libp2p::StreamProtocol> + Clone + Send + 'static,
{
    request_response::Behaviour::with_codec(
        codec,
        [(name, request_response::ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(timeout).with_max_concurrent_streams(streams),
    )
}
