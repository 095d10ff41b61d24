//! The node's libp2p stack: the shared overlay behaviours (see
//! [`mirage_bootstrap::overlay`]) plus the fingerprint fetch and content protocols.

pub mod codec;
pub mod content;

use libp2p::swarm::NetworkBehaviour;
use libp2p::{gossipsub, identify, kad, ping, request_response, Swarm};
use mirage_bootstrap::overlay::{self, GossipTuning, KadTuning, OverlayError};
use std::time::Duration;

pub use codec::{FetchCodec, FetchRequest, FetchResponse};
pub use content::{ContentCodec, ContentRequest, ContentResponse};

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub limits: libp2p::connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub gossipsub: gossipsub::Behaviour,
    pub fetch: request_response::Behaviour<FetchCodec>,
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
    let gossip = overlay::gossipsub(keypair, &options.gossip)?;
    let local = keypair.public().to_peer_id();
    mirage_bootstrap::build_swarm(keypair, |k| Behaviour {
        limits: overlay::connection_limits(options.max_connections),
        identify: overlay::identify(k.public(), "mirage-node"),
        ping: ping::Behaviour::default(),
        kad: overlay::kad(local, &options.kad),
        gossipsub: gossip,
        fetch: request_response::Behaviour::with_codec(
            FetchCodec,
            [(codec::FETCH_PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(10))
                .with_max_concurrent_streams(64),
        ),
        content: request_response::Behaviour::with_codec(
            ContentCodec,
            [(content::CONTENT_PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(CHUNK_REQUEST_TIMEOUT)
                .with_max_concurrent_streams(256),
        ),
    })
}
