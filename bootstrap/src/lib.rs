//! The Mirage bootstrap peer: what community mirrors run so that machines can find each
//! other. A Kademlia server and a gossip relay with no upgrade state of its own. It
//! subscribes to each application and release topic its peers use, validates every
//! announcement and release message before relaying it (so garbage stops here too), and scores misbehaving peers down.

pub mod overlay;

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{gossipsub, identify, kad, noise, ping, tcp, yamux, Multiaddr, PeerId, Swarm};
use mirage_protocol::channel::check_release_message;
use mirage_protocol::connections::{Budget, Connections};
use mirage_protocol::membership::{check_app_message, DropReason, MembershipConfig};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::time::Duration;
use thiserror::Error;
use tracing::{debug, info, info_span, warn};

#[derive(Debug, Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Overlay(#[from] overlay::OverlayError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
}

/// The overlay every Mirage peer speaks: connection limits, identify, ping, Kademlia
/// and gossipsub, configured from [`overlay`]. A bootstrap peer runs just this; a node
/// nests it beside its own protocols, so both are always built the same way.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub limits: libp2p::connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub gossipsub: gossipsub::Behaviour,
}

impl Behaviour {
    /// `agent` names the kind of peer in identify (`mirage-node`, `mirage-bootstrap`).
    pub fn new(
        keypair: &libp2p::identity::Keypair,
        max_connections: u32,
        gossip: &overlay::GossipTuning,
        kad: &overlay::KadTuning,
        agent: &str,
    ) -> Result<Behaviour, overlay::OverlayError> {
        Ok(Behaviour {
            limits: overlay::connection_limits(max_connections),
            identify: overlay::identify(keypair.public(), agent),
            ping: ping::Behaviour::default(),
            kad: overlay::kad(keypair.public().to_peer_id(), kad),
            gossipsub: overlay::gossipsub(gossip)?,
        })
    }
}

pub struct BootstrapOptions {
    pub keypair: mirage_protocol::Keypair,
    pub listen: Vec<Multiaddr>,
    /// Other bootstrap peers, as `/ip4/../tcp/../p2p/<id>`.
    pub peers: Vec<Multiaddr>,
    pub max_connections: u32,
    pub gossip: overlay::GossipTuning,
    pub announcements: MembershipConfig,
}

/// Builds a swarm over tcp and quic (noise, yamux) for `behaviour`.
pub fn build_swarm<B: NetworkBehaviour>(
    keypair: &libp2p::identity::Keypair,
    behaviour: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> Result<Swarm<B>, overlay::OverlayError> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| overlay::OverlayError::Transport(e.to_string()))?
        .with_quic()
        .with_behaviour(behaviour)
        .map_err(|e| overlay::OverlayError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}

/// Runs a bootstrap peer until `shutdown` completes. Prints one `listening <addr>` line
/// per listen address on stdout (with the peer id), so scripts can pick up ports.
pub async fn run(options: BootstrapOptions, shutdown: impl Future<Output = ()>) -> Result<(), BootstrapError> {
    let keypair = overlay::libp2p_keypair(&options.keypair);
    let local = keypair.public().to_peer_id();
    let span = info_span!("bootstrap", peer = %local);
    let _enter = span.enter();
    let behaviour = Behaviour::new(
        &keypair,
        options.max_connections,
        &options.gossip,
        &overlay::KadTuning::default(),
        "mirage-bootstrap",
    )?;
    let mut swarm = build_swarm(&keypair, |_| behaviour)?;
    for addr in &options.listen {
        overlay::check_port_free(addr)
            .map_err(|e| BootstrapError::Listen { addr: addr.clone(), reason: e.to_string() })?;
        swarm
            .listen_on(addr.clone())
            .map_err(|e| BootstrapError::Listen { addr: addr.clone(), reason: e.to_string() })?;
    }
    for addr in &options.peers {
        if let Some((peer, a)) = overlay::split_peer_addr(addr) {
            swarm.behaviour_mut().kad.add_address(&peer, a);
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }
    let mut drops: BTreeMap<DropReason, u64> = BTreeMap::new();
    let mut relayed: u64 = 0;
    let mut report = tokio::time::interval(Duration::from_secs(60));
    // Gossipsub keeps every connection open; without trimming, a bootstrap peer would
    // fill up with the fleet's first contacts and turn newcomers away.
    let mut connections = Connections::new(Budget::for_capacity(options.max_connections as usize));
    let mut trimmed: u64 = 0;
    let mut maintain = tokio::time::interval(Duration::from_secs(3));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = report.tick() => {
                info!(connected = swarm.connected_peers().count(), trimmed, relayed, ?drops, "bootstrap status");
            }
            _ = maintain.tick() => {
                for peer in overlay::over_budget(&connections, &swarm.behaviour().gossipsub, overlay::now()) {
                    if swarm.disconnect_peer_id(peer).is_ok() {
                        trimmed += 1;
                    }
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    info!(%address, "listening");
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "listening {address}/p2p/{local}");
                    let _ = out.flush();
                }
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, connection_id, .. } => {
                    debug!(peer = %peer_id, "connected");
                    let ip = endpoint.get_remote_address().iter().find_map(|p| match p {
                        libp2p::multiaddr::Protocol::Ip4(ip) => Some(ip.into()),
                        libp2p::multiaddr::Protocol::Ip6(ip) => Some(ip.into()),
                        _ => None,
                    });
                    let origin = mirage_protocol::connections::Origin { ip, outbound: endpoint.is_dialer() };
                    if connections.admit(peer_id, origin, overlay::now()).is_err() {
                        // One address may not take a bootstrap peer's slots from everyone
                        // else (an eclipse starts by owning the newcomers' first peers).
                        debug!(peer = %peer_id, ?ip, "refused: too many peers from its address");
                        swarm.close_connection(connection_id);
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                    debug!(peer = %peer_id, "disconnected");
                    connections.on_closed(&peer_id);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }))
                    if overlay::speaks_kad(&info) =>
                {
                    for addr in info.listen_addrs {
                        swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => {
                    on_gossip(&mut swarm, event, &options.announcements, &mut drops, &mut relayed);
                }
                _ => {}
            }
        }
    }
    info!(relayed, ?drops, "bootstrap shutting down");
    Ok(())
}

fn on_gossip(
    swarm: &mut Swarm<Behaviour>,
    event: gossipsub::Event,
    config: &MembershipConfig,
    drops: &mut BTreeMap<DropReason, u64>,
    relayed: &mut u64,
) {
    match event {
        gossipsub::Event::Subscribed { peer_id, topic } => {
            let gs = &mut swarm.behaviour_mut().gossipsub;
            let relay = match (overlay::app_of_topic(&topic), overlay::app_of_release_topic(&topic)) {
                (Some(app), _) => overlay::app_topic(app),
                (None, Some(app)) => overlay::release_topic(app),
                (None, None) => return,
            };
            let app = relay.hash().into_string();
            if gs.topics().any(|t| t == &topic) || gs.topics().count() >= overlay::MAX_RELAYED_TOPICS {
                return;
            }
            match overlay::subscribe_app(gs, relay) {
                Ok(_) => info!(peer = %peer_id, topic = app, "relaying topic"),
                Err(e) => warn!(app, error = %e, "cannot subscribe"),
            }
        }
        gossipsub::Event::Message { propagation_source, message_id, message } => {
            let now = overlay::now();
            let verdict = match (overlay::app_of_topic(&message.topic), overlay::app_of_release_topic(&message.topic)) {
                (Some(app), _) => {
                    // Gossip is anonymous: the envelope's signature names the author.
                    check_app_message(&message.data, app, None, now, config)
                }
                // Releases are relayed if well formed, signed and unexpired; whom to
                // trust is each node's decision, not the relay's.
                (None, Some(app)) => check_release_message(&message.data, app, now).map(|_| ()),
                (None, None) => Err(DropReason::WrongApp),
            };
            let acceptance = match verdict {
                Ok(()) => {
                    *relayed += 1;
                    gossipsub::MessageAcceptance::Accept
                }
                Err(reason) => {
                    *drops.entry(reason).or_default() += 1;
                    warn!(peer = %propagation_source, %reason, topic = %message.topic, "dropped message");
                    gossipsub::MessageAcceptance::Reject
                }
            };
            swarm.behaviour_mut().gossipsub.report_message_validation_result(
                &message_id,
                &propagation_source,
                acceptance,
            );
        }
        _ => {}
    }
}

/// Resolves when the process gets SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The peer id a Mirage key pair has on the overlay.
pub fn peer_id(keypair: &mirage_protocol::Keypair) -> PeerId {
    overlay::libp2p_keypair(keypair).public().to_peer_id()
}
