//! What every Mirage overlay peer agrees on: protocol names, topics, transport and the
//! configuration of the shared libp2p behaviours (Kademlia, gossipsub with validation
//! and peer scoring, identify, connection limits). Nodes and bootstrap peers both build
//! their swarms from these, so they always speak the same overlay.

use libp2p::{connection_limits, gossipsub, identify, identity, kad, Multiaddr, PeerId, StreamProtocol};
use mirage_protocol::connections::{Connections, PeerFacts, Standing};
use mirage_protocol::fingerprint::scope::validate_membership_name;
use mirage_protocol::wire::MAX_MESSAGE_BYTES;
use mirage_protocol::UnixMillis;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Kademlia protocol of the Mirage DHT (kept apart from the public IPFS DHT).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/mirage/kad/1.0.0");
/// Identify protocol version string.
pub const IDENTIFY_VERSION: &str = "/mirage/id/1.0.0";
/// Prefix of the per-application announcement topics.
pub const APP_TOPIC_PREFIX: &str = "mirage/v1/app/";
/// Prefix of the per-application release topics (signed manifests and test reports).
pub const RELEASE_TOPIC_PREFIX: &str = "mirage/v1/release/";
/// Gossipsub frames may carry a full-size message plus protobuf framing. Messages
/// whose *data* is over [`MAX_MESSAGE_BYTES`] still reach the validator, which drops
/// and counts them as too large.
pub const MAX_TRANSMIT_BYTES: usize = MAX_MESSAGE_BYTES + 64 * 1024;
/// Most application topics a bootstrap peer relays.
pub const MAX_RELAYED_TOPICS: usize = 4096;

#[derive(Debug, Error)]
pub enum OverlayError {
    #[error("gossipsub configuration: {0}")]
    Gossipsub(String),
    #[error("transport: {0}")]
    Transport(String),
}

/// The gossipsub topic an application's fingerprints are announced on.
pub fn app_topic(app: &str) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("{APP_TOPIC_PREFIX}{app}"))
}

/// The membership (an application, or an application's scope) a topic hash belongs to,
/// if it is an announcement topic.
pub fn app_of_topic(topic: &gossipsub::TopicHash) -> Option<&str> {
    topic.as_str().strip_prefix(APP_TOPIC_PREFIX).filter(|a| validate_membership_name(a).is_ok())
}

/// Where a cluster's topic name starts, after the app's topic.
pub const CLUSTER_TOPIC_INFIX: &str = "/cluster/";

/// Hex digits of the cluster key a cluster's topic names: its first 128 bits. Every
/// copy of every heartbeat and every IHAVE carries the topic string, so the other half
/// of the key would cost each node about 20 KB/min at a million machines; and two
/// clusters whose keys share 128 bits would only share heartbeat traffic, since each
/// heartbeat names its full key and is checked against ours.
pub const CLUSTER_TOPIC_KEY_HEX: usize = 32;

/// The gossipsub topic of one cluster of an application: its members' heartbeats,
/// which only its members subscribe to.
pub fn cluster_topic(app: &str, cluster: &mirage_protocol::ClusterKey) -> gossipsub::IdentTopic {
    let key = cluster.to_hex();
    gossipsub::IdentTopic::new(format!("{APP_TOPIC_PREFIX}{app}{CLUSTER_TOPIC_INFIX}{}", &key[..CLUSTER_TOPIC_KEY_HEX]))
}

/// The application a topic hash belongs to, if it is a cluster topic.
pub fn app_of_cluster_topic(topic: &gossipsub::TopicHash) -> Option<&str> {
    let (app, hex) = topic.as_str().strip_prefix(APP_TOPIC_PREFIX)?.split_once(CLUSTER_TOPIC_INFIX)?;
    validate_membership_name(app).ok()?;
    (hex.len() == CLUSTER_TOPIC_KEY_HEX && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then_some(app)
}

/// The gossipsub topic an application's releases and test reports travel on.
pub fn release_topic(app: &str) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("{RELEASE_TOPIC_PREFIX}{app}"))
}

/// The application a topic hash belongs to, if it is a release topic.
pub fn app_of_release_topic(topic: &gossipsub::TopicHash) -> Option<&str> {
    topic
        .as_str()
        .strip_prefix(RELEASE_TOPIC_PREFIX)
        .filter(|a| mirage_protocol::manifest::validate_app_name(a).is_ok())
}

/// The Kademlia key under which the holders of an artifact provide.
pub fn content_record_key(content: &mirage_protocol::Digest) -> kad::RecordKey {
    let mut bytes = b"mirage/v1/content/".to_vec();
    bytes.extend_from_slice(&content.0);
    kad::RecordKey::new(&bytes)
}

/// The Kademlia key under which the members of a cluster provide.
pub fn cluster_record_key(key: &mirage_protocol::ClusterKey) -> kad::RecordKey {
    let mut bytes = b"mirage/v1/cluster/".to_vec();
    bytes.extend_from_slice(&key.0 .0);
    kad::RecordKey::new(&bytes)
}

/// Wall-clock time as the protocol core takes it.
pub fn now() -> UnixMillis {
    UnixMillis(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// The libp2p identity for a Mirage key pair (same peer id as `PublicKey::peer_id`).
pub fn libp2p_keypair(keypair: &mirage_protocol::Keypair) -> identity::Keypair {
    let mut secret = keypair.secret_bytes();
    identity::Keypair::ed25519_from_bytes(&mut secret).expect("32 bytes are a valid ed25519 secret")
}

/// Converts a peer id to the Mirage public key it encodes (ed25519 peers only).
pub fn public_key_of(peer: &PeerId) -> Option<mirage_protocol::PublicKey> {
    mirage_protocol::PublicKey::from_peer_id(&peer.to_base58())
}

pub fn peer_id_of(key: &mirage_protocol::PublicKey) -> PeerId {
    PeerId::from_bytes(&key.peer_id_bytes()).expect("an ed25519 public key is a valid peer id")
}

/// Checks that no other process listens on a listen address's fixed port. libp2p
/// binds its TCP listeners with `SO_REUSEPORT`, so a second node or bootstrap peer on a
/// port in use would start, print that it listens, and share the port's connections
/// with the first. A plain bind (no `SO_REUSEPORT`) fails where anyone listens. Port 0
/// and addresses that are not ip/tcp or ip/udp are left to libp2p.
pub fn check_port_free(addr: &Multiaddr) -> Result<(), std::io::Error> {
    use libp2p::multiaddr::Protocol;
    let mut parts = addr.iter();
    let ip: IpAddr = match parts.next() {
        Some(Protocol::Ip4(ip)) => ip.into(),
        Some(Protocol::Ip6(ip)) => ip.into(),
        _ => return Ok(()),
    };
    let in_use = |e: std::io::Error, what: &str, port: u16| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(
                e.kind(),
                format!("address in use: another process listens on {ip} {what} port {port} (another mirage node or bootstrap peer?)"),
            )
        } else {
            e
        }
    };
    match parts.next() {
        Some(Protocol::Tcp(port)) if port != 0 => {
            std::net::TcpListener::bind((ip, port)).map(drop).map_err(|e| in_use(e, "TCP", port))
        }
        Some(Protocol::Udp(port)) if port != 0 => {
            std::net::UdpSocket::bind((ip, port)).map(drop).map_err(|e| in_use(e, "UDP", port))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn a_port_another_process_listens_on_is_reported_in_use() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let e = check_port_free(&addr).unwrap_err();
        assert!(e.to_string().contains("address in use"), "{e}");
        drop(taken);
        assert!(check_port_free(&addr).is_ok());
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/udp/{port}/quic-v1").parse().unwrap();
        assert!(check_port_free(&addr).unwrap_err().to_string().contains("address in use"));
        assert!(check_port_free(&"/ip4/127.0.0.1/tcp/0".parse().unwrap()).is_ok());
    }
}

/// Splits `/ip4/.../tcp/N/p2p/<id>` into the peer id and the address.
pub fn split_peer_addr(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut addr = addr.clone();
    match addr.pop() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => Some((peer, addr)),
        _ => None,
    }
}

/// Gossipsub timing; tests and benchmarks may tighten the heartbeat.
#[derive(Clone, Debug)]
pub struct GossipTuning {
    pub heartbeat: Duration,
}

impl Default for GossipTuning {
    fn default() -> Self {
        GossipTuning { heartbeat: Duration::from_millis(700) }
    }
}

/// Gossipsub with anonymous messages, forwarded only once the application reports them
/// valid. Every message Mirage publishes is an envelope signed by its author's key and
/// checked before it is forwarded, so gossipsub's own author, sequence number and
/// signature (118 bytes on every copy, a third of a heartbeat's) would sign it twice;
/// Ethereum's beacon chain drops them for the same reason. Message ids are content
/// hashes, so a relayed message is recognized as the same message everywhere.
pub fn gossipsub(tuning: &GossipTuning) -> Result<gossipsub::Behaviour, OverlayError> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .max_transmit_size(MAX_TRANSMIT_BYTES)
        .heartbeat_interval(tuning.heartbeat)
        .message_id_fn(|m: &gossipsub::Message| {
            let mut h = blake3::Hasher::new();
            h.update(m.topic.as_str().as_bytes());
            h.update(&[0]);
            h.update(&m.data);
            gossipsub::MessageId::from(h.finalize().as_bytes()[..20].to_vec())
        })
        .duplicate_cache_time(Duration::from_secs(120))
        .build()
        .map_err(|e| OverlayError::Gossipsub(e.to_string()))?;
    let mut behaviour = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config)
        .map_err(|e| OverlayError::Gossipsub(e.to_string()))?;
    behaviour.with_peer_score(peer_score_params(), peer_score_thresholds()).map_err(OverlayError::Gossipsub)?;
    Ok(behaviour)
}

/// Peer scoring. Co-location on loopback is whitelisted (test fleets and benchmarks run
/// every peer on 127.0.0.1); everything else keeps libp2p's defaults.
pub fn peer_score_params() -> gossipsub::PeerScoreParams {
    gossipsub::PeerScoreParams {
        ip_colocation_factor_whitelist: HashSet::from([
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]),
        ..Default::default()
    }
}

pub fn peer_score_thresholds() -> gossipsub::PeerScoreThresholds {
    gossipsub::PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: -80.0,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 5.0,
    }
}

/// Scoring for an announcement topic. Announcements are rare (one per node per minute),
/// so mesh delivery-rate penalties (P3, P3b) are off: they would punish honest quiet
/// peers. Invalid messages (P4) cost 1 × count², decaying over about ten minutes: one
/// bad announcement drops a peer below the gossip threshold after a few repeats, and a
/// flood of them graylists it.
pub fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 300.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_decay: gossipsub::score_parameter_decay(Duration::from_secs(600)),
        first_message_deliveries_cap: 20.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -1.0,
        invalid_message_deliveries_decay: gossipsub::score_parameter_decay(Duration::from_secs(600)),
        ..Default::default()
    }
}

/// Subscribes to an application's announcement or release topic with its scoring parameters.
pub fn subscribe_app(behaviour: &mut gossipsub::Behaviour, topic: gossipsub::IdentTopic) -> Result<bool, OverlayError> {
    behaviour.set_topic_params(topic.clone(), topic_score_params()).map_err(|e| OverlayError::Gossipsub(e.into()))?;
    behaviour.subscribe(&topic).map_err(|e| OverlayError::Gossipsub(e.to_string()))
}

/// Kademlia timing; provider records are re-published well before they expire.
#[derive(Clone, Debug)]
pub struct KadTuning {
    pub provider_ttl: Duration,
    pub provider_republish: Duration,
    /// How often the routing table is refreshed by a bootstrap (a lookup of our own key
    /// and one per bucket). Every minute cost each node about 730 KB/min in a fleet of
    /// 50 (`mirage bench overlay-cost`), more than all its membership traffic; Kademlia
    /// refreshes a bucket after an hour without a lookup in it, and libp2p bootstraps on
    /// its own while the table is sparse, so half an hour is plenty.
    pub bootstrap_interval: Duration,
}

impl Default for KadTuning {
    fn default() -> Self {
        KadTuning {
            provider_ttl: Duration::from_secs(3600),
            provider_republish: Duration::from_secs(1200),
            bootstrap_interval: Duration::from_secs(1800),
        }
    }
}

/// A Kademlia behaviour in server mode, with room for large clusters under one key.
pub fn kad(peer: PeerId, tuning: &KadTuning) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut config = kad::Config::new(KAD_PROTOCOL);
    config
        .set_provider_record_ttl(Some(tuning.provider_ttl))
        .set_provider_publication_interval(Some(tuning.provider_republish))
        .set_query_timeout(Duration::from_secs(20))
        .set_periodic_bootstrap_interval(Some(tuning.bootstrap_interval))
        .set_replication_factor(NonZeroUsize::new(20).expect("non-zero"));
    let store = kad::store::MemoryStore::with_config(
        peer,
        kad::store::MemoryStoreConfig {
            max_records: 1024,
            max_value_bytes: 64 * 1024,
            max_providers_per_key: 10_000,
            max_provided_keys: 1024,
        },
    );
    let mut behaviour = kad::Behaviour::with_config(peer, store, config);
    behaviour.set_mode(Some(kad::Mode::Server));
    behaviour
}

pub fn identify(public: identity::PublicKey, agent: &str) -> identify::Behaviour {
    identify::Behaviour::new(
        identify::Config::new(IDENTIFY_VERSION.to_string(), public)
            .with_agent_version(format!("{agent}/{}", env!("CARGO_PKG_VERSION")))
            .with_interval(Duration::from_secs(120)),
    )
}

pub fn connection_limits(max_established: u32) -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established(Some(max_established))
            .with_max_established_per_peer(Some(2))
            .with_max_pending_incoming(Some(128))
            .with_max_pending_outgoing(Some(128)),
    )
}

/// The peers over the connection budget, given what gossipsub knows of each: what
/// every shell (node, bootstrap peer, calibration harness) disconnects at its upkeep.
pub fn over_budget(connections: &Connections<PeerId>, gs: &gossipsub::Behaviour, now: UnixMillis) -> Vec<PeerId> {
    let facts = gossip_facts(gs);
    connections.to_close(now, |p| facts.get(p).copied())
}

/// Connected peers subscribed to `topic`.
pub fn topic_peer_count(gs: &gossipsub::Behaviour, topic: &gossipsub::TopicHash) -> usize {
    gs.all_peers().filter(|(_, topics)| topics.contains(&topic)).count()
}

/// What gossipsub knows of each peer it has a connection to, for the connection
/// budget ([`mirage_protocol::connections`]): whether the peer is in one of our meshes,
/// and which of our topics it shares (a cluster's topic ranks above an app's).
fn gossip_facts(gs: &gossipsub::Behaviour) -> HashMap<PeerId, PeerFacts> {
    let ours: HashSet<&gossipsub::TopicHash> = gs.topics().collect();
    let mesh: HashSet<&PeerId> = gs.all_mesh_peers().collect();
    gs.all_peers()
        .map(|(peer, topics)| {
            let standing = topics
                .into_iter()
                .filter(|t| ours.contains(t))
                .map(|t| if app_of_cluster_topic(t).is_some() { Standing::ClusterPeer } else { Standing::AppPeer })
                .max()
                .unwrap_or(Standing::Stranger);
            (*peer, PeerFacts { standing, in_mesh: mesh.contains(peer) })
        })
        .collect()
}

/// Whether identify says the peer speaks our DHT.
pub fn speaks_kad(info: &identify::Info) -> bool {
    info.protocols.contains(&KAD_PROTOCOL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_keys() {
        let t = app_topic("mysql");
        assert_eq!(t.hash().as_str(), "mirage/v1/app/mysql");
        assert_eq!(app_of_topic(&t.hash()), Some("mysql"));
        assert_eq!(app_of_topic(&gossipsub::IdentTopic::new("other/mysql").hash()), None);
        assert_eq!(app_of_topic(&gossipsub::IdentTopic::new("mirage/v1/app/BAD NAME").hash()), None);
        let scoped = app_topic("mysql.scope-0123456789abcdef");
        assert_eq!(app_of_topic(&scoped.hash()), Some("mysql.scope-0123456789abcdef"));
        assert_eq!(app_of_topic(&gossipsub::IdentTopic::new("mirage/v1/app/mysql.scope-xyz").hash()), None);
        let a = mirage_protocol::ClusterKey(mirage_protocol::Digest([1; 32]));
        let b = mirage_protocol::ClusterKey(mirage_protocol::Digest([2; 32]));
        assert_ne!(cluster_record_key(&a), cluster_record_key(&b));
        assert_ne!(cluster_record_key(&a), content_record_key(&a.0));
        let r = release_topic("mysql");
        assert_eq!(app_of_release_topic(&r.hash()), Some("mysql"));
        assert_eq!(app_of_topic(&r.hash()), None);
        assert_eq!(app_of_release_topic(&t.hash()), None);
        assert_eq!(cluster_record_key(&a), cluster_record_key(&a));
    }

    #[test]
    fn a_clusters_topic_names_its_app_and_half_its_key() {
        let key = mirage_protocol::ClusterKey(mirage_protocol::Digest([0xab; 32]));
        let t = cluster_topic("mysql", &key).hash();
        assert_eq!(t.as_str(), format!("mirage/v1/app/mysql/cluster/{}", "ab".repeat(16)));
        assert_eq!(app_of_cluster_topic(&t), Some("mysql"));
        assert_eq!(app_of_topic(&t), None, "a cluster's topic is not the app's");
        assert_eq!(app_of_cluster_topic(&app_topic("mysql").hash()), None);
        for bad in ["mirage/v1/app/mysql/cluster/abc", "mirage/v1/app/my sql/cluster/00000000000000000000000000000000"]
        {
            assert_eq!(app_of_cluster_topic(&gossipsub::IdentTopic::new(bad).hash()), None, "{bad}");
        }
    }

    #[test]
    fn identities_agree_with_libp2p() {
        let kp = mirage_protocol::Keypair::from_secret_bytes(&[5; 32]);
        let peer = libp2p_keypair(&kp).public().to_peer_id();
        assert_eq!(peer.to_base58(), kp.public().peer_id());
        assert_eq!(peer_id_of(&kp.public()), peer);
        assert_eq!(public_key_of(&peer), Some(kp.public()));
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/4701/p2p/{peer}").parse().unwrap();
        assert_eq!(split_peer_addr(&addr), Some((peer, "/ip4/127.0.0.1/tcp/4701".parse().unwrap())));
        assert_eq!(split_peer_addr(&"/ip4/127.0.0.1/tcp/4701".parse().unwrap()), None);
    }

    #[test]
    fn scoring_parameters_are_valid() {
        let mut params = peer_score_params();
        params.topics.insert(app_topic("x").hash(), topic_score_params());
        params.validate().unwrap();
        peer_score_thresholds().validate().unwrap();
        let mut gs = gossipsub(&GossipTuning::default()).unwrap();
        assert!(subscribe_app(&mut gs, app_topic("mysql")).unwrap());
    }
}
