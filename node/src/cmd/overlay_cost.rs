//! `mirage bench overlay-cost`: calibrates the simulator's cost model against real
//! libp2p. It runs hundreds of overlay nodes in one process on 127.0.0.1, each with
//! the node's own network behaviour (`net::Behaviour`: gossipsub, Kademlia, identify,
//! ping and the fingerprint-fetch and roster protocols, configured as the node
//! configures them) and the node's membership core, carried out as the daemon carries
//! it out: the cluster's topic, heartbeats, summaries, provider records and fetches.
//! A real bootstrap peer (`mirage_bootstrap::run`) is their entry point.
//!
//! Every byte each node's TCP connections carry is counted (noise, yamux, multistream
//! and every protocol included). After every node knows its whole cluster, the
//! harness measures a window and prints bytes per node per minute and the time until
//! every node knew its cluster, beside what the simulator's cost model
//! (`sim::overlay::GossipModel`) predicts for the same fleet at the same time scale.
//!
//! What it leaves out of the daemon: staging, distribution and the redb store (no
//! traffic of their own while no release is out), and catch-ups (no node restarts).

use anyhow::{bail, Result};
use futures::{AsyncRead, AsyncWrite, StreamExt};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, MemoryTransport, Transport};
use libp2p::core::upgrade::Version;
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, kad, noise, request_response, tcp, yamux, Multiaddr, PeerId, Swarm};
use mirage_bootstrap::overlay::{self, GossipTuning, KadTuning};
use mirage_bootstrap::BehaviourEvent as OverlayEvent;
use mirage_node::net::{self, BehaviourEvent, FetchRequest, FetchResponse};
use mirage_protocol::connections::{Budget, Connections};
use mirage_protocol::fingerprint::{Item, ItemValue, ResourceClass};
use mirage_protocol::membership::{decode_envelope, Action, Membership, MembershipConfig};
use mirage_protocol::roster::{round_size, RosterTiming};
use mirage_protocol::{Digest, Fingerprint, Keypair, MessageKind, PublicKey};
use mirage_testnet::sim::overlay::GossipModel;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

const APP: &str = "mysql";

/// As often as the daemon's connection upkeep.
const UPKEEP_EVERY: Duration = Duration::from_secs(3);

#[derive(clap::Args)]
pub struct OverlayCostArgs {
    /// Overlay nodes to run in this process.
    #[arg(long, default_value_t = 500)]
    nodes: usize,
    /// Clusters they fall into (node i is in cluster i mod clusters).
    #[arg(long, default_value_t = 25)]
    clusters: usize,
    /// The roster's time scale (as `mirage node run --roster-time-scale`): rates are
    /// this many times production's, and so are the bytes per minute.
    #[arg(long, default_value_t = 20)]
    time_scale: u32,
    /// Seconds measured once every node knows its whole cluster.
    #[arg(long, default_value_t = 60)]
    measure_secs: u64,
    /// Connect over TCP on 127.0.0.1 instead of libp2p's in-process memory transport
    /// (the same bytes above the transport; the kernel's loopback costs a 2-core
    /// machine more CPU than the nodes themselves at 500 nodes).
    #[arg(long)]
    tcp: bool,
    /// Give up if the clusters have not formed by then.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Start measuring once this share of the nodes knows its whole cluster (the cost
    /// is a steady-state figure; the time until all know is reported either way).
    #[arg(long, default_value_t = 1.0)]
    measure_at_share: f64,
    /// Seconds between steady-state DHT provider lookups (the node's default: 30).
    #[arg(long)]
    lookup_interval_secs: Option<u64>,
    /// Seconds between Kademlia routing-table refreshes (the node's default: 60).
    #[arg(long)]
    bootstrap_interval_secs: Option<u64>,
    /// Run the overlay without the membership (no app, no heartbeats, summaries or
    /// DHT records): what the libp2p stack costs by itself.
    #[arg(long, hide = true)]
    idle: bool,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Bytes a node's connections carried, both ways.
#[derive(Default)]
struct Counter {
    read: AtomicU64,
    written: AtomicU64,
}

/// A TCP stream that counts what passes through it.
struct Counted<S> {
    inner: S,
    counter: Arc<Counter>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.counter.read.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.counter.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// The node's swarm, over TCP on 127.0.0.1 or libp2p's in-process memory transport,
/// with every connection's bytes (noise, yamux and all above) counted.
fn counted_swarm(
    key: &libp2p::identity::Keypair,
    counter: Arc<Counter>,
    kad: &KadTuning,
    memory: bool,
) -> Result<Swarm<net::Behaviour>> {
    let behaviour = net::behaviour(
        key,
        &net::NetOptions { max_connections: 1024, gossip: GossipTuning::default(), kad: kad.clone() },
    )?;
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let builder = libp2p::SwarmBuilder::with_existing_identity(key.clone()).with_tokio();
    let with_transport = builder.with_other_transport(|key| -> Result<_, BoxError> {
        let noise = noise::Config::new(key)?;
        // One upgrade path over either base transport, each connection counted.
        fn secured<T>(base: T, noise: noise::Config, counter: Arc<Counter>) -> Boxed<(PeerId, StreamMuxerBox)>
        where
            T: Transport + Send + Unpin + 'static,
            T::Output: AsyncRead + AsyncWrite + Unpin + Send + 'static,
            T::Error: Send + Sync + 'static,
            T::Dial: Send + 'static,
            T::ListenerUpgrade: Send + 'static,
        {
            base.map(move |stream, _| Counted { inner: stream, counter: counter.clone() })
                .upgrade(Version::V1)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .map(|(p, m), _| (p, StreamMuxerBox::new(m)))
                .boxed()
        }
        Ok(if memory {
            secured(MemoryTransport::default(), noise, counter)
        } else {
            secured(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)), noise, counter)
        })
    })?;
    Ok(with_transport
        .with_behaviour(|_| behaviour)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}

/// A fingerprint that puts node `i` in cluster `i mod clusters`.
fn fingerprint(cluster: usize) -> Fingerprint {
    let item = Item {
        class: ResourceClass::Config,
        path: "/etc/mysql/my.cnf".into(),
        key: "mysqld.innodb_buffer_pool_size".into(),
        value: ItemValue::Digest(Digest::of(&(cluster as u64).to_be_bytes())),
    };
    Fingerprint::new(APP.into(), Digest([7; 32]), vec![item])
}

/// What the harness reads of one node.
#[derive(Default)]
struct Progress {
    /// Milliseconds from the start until the roster first counted the whole cluster.
    knew_cluster_ms: AtomicU64,
    /// Peers connected now.
    connections: AtomicU64,
    /// Mesh peers on the cluster's topic and on the app's.
    cluster_mesh: AtomicU64,
    app_mesh: AtomicU64,
    /// Members of its cluster the roster counts live now.
    live: AtomicU64,
    /// Connected peers subscribed to its cluster's topic.
    cluster_peers: AtomicU64,
    /// DHT queries finished.
    queries: AtomicU64,
    /// Sums of the connections and of the cluster's topic peers, one sample per tick,
    /// and the ticks: the window's means come from these, not from one moment's count
    /// (connections come and go with every DHT query).
    connections_summed: AtomicU64,
    cluster_peers_summed: AtomicU64,
    ticks: AtomicU64,
    /// Gossip messages gossipsub could not queue to a peer whose queue was full: what a
    /// harness short of CPU fails to carry, and so leaves out of the real bytes.
    dropped_to_slow_peers: AtomicU64,
}

struct OverlayNode {
    swarm: Swarm<net::Behaviour>,
    listen: Multiaddr,
    bootstrap: Multiaddr,
    membership: Membership,
    lookups: HashMap<kad::QueryId, mirage_protocol::ClusterKey>,
    fetches: HashMap<request_response::OutboundRequestId, PublicKey>,
    /// Peers heard of through the DHT whose address is being looked up, as the daemon
    /// does when a fetch cannot dial.
    address_lookups: HashMap<kad::QueryId, PublicKey>,
    cluster_size: u64,
    progress: Arc<Progress>,
    started: Instant,
    /// The node's connection budget, trimmed as the daemon trims it.
    connections: Connections<PeerId>,
    /// Where connected peers listen (identify), to name them to cluster-mates.
    listen_addrs: HashMap<PeerId, Vec<Multiaddr>>,
    /// Where cluster-mates named to us listen.
    introduced: lru::LruCache<PeerId, Vec<Multiaddr>>,
    last_upkeep: Instant,
}

impl OverlayNode {
    fn execute(&mut self, actions: Vec<Action>) {
        let now = overlay::now();
        for action in actions {
            let b = self.swarm.behaviour_mut();
            match action {
                Action::Publish { app, bytes } => {
                    let _ = b.overlay.gossipsub.publish(overlay::app_topic(&app), bytes);
                }
                Action::Resigned { .. } | Action::CatchUp { .. } => {}
                Action::StartProviding { key } => {
                    let _ = b.overlay.kad.start_providing(overlay::cluster_record_key(&key));
                }
                Action::StopProviding { key } => b.overlay.kad.stop_providing(&overlay::cluster_record_key(&key)),
                Action::FindProviders { key, .. } => {
                    let q = b.overlay.kad.get_providers(overlay::cluster_record_key(&key));
                    self.lookups.insert(q, key);
                }
                Action::Fetch { peer, app } => {
                    let announcement = self.membership.local_announcement(&app).map(<[u8]>::to_vec);
                    let (id, request) = (overlay::peer_id_of(&peer), FetchRequest { app, announcement });
                    let rid = match self.introduced.get(&id) {
                        Some(addrs) => b.fetch.send_request_with_addresses(&id, request, addrs.clone()),
                        None => b.fetch.send_request(&id, request),
                    };
                    self.fetches.insert(rid, peer);
                }
                Action::JoinCluster { app, cluster } => {
                    let _ = overlay::subscribe_app(&mut b.overlay.gossipsub, overlay::cluster_topic(&app, &cluster));
                }
                Action::LeaveCluster { app, cluster } => {
                    b.overlay.gossipsub.unsubscribe(&overlay::cluster_topic(&app, &cluster));
                }
                Action::PublishHeartbeat { app, cluster, bytes } => {
                    let sent = b.overlay.gossipsub.publish(overlay::cluster_topic(&app, &cluster), bytes);
                    if matches!(sent, Err(ref e) if !matches!(e, gossipsub::PublishError::Duplicate)) {
                        self.membership.on_heartbeat_unsent(&app, now);
                    }
                }
                Action::PublishSummary { app, bytes } => {
                    let _ = b.overlay.gossipsub.publish(overlay::app_topic(&app), bytes);
                }
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let now = overlay::now();
        if let SwarmEvent::Behaviour(BehaviourEvent::Overlay(OverlayEvent::Kad(
            kad::Event::OutboundQueryProgressed { step, .. },
        ))) = &event
        {
            // Every DHT query the node made (its lookups and provider records, and
            // Kademlia's own bootstraps and republishing), counted once, as it ends.
            if step.last {
                self.progress.queries.fetch_add(1, Ordering::Relaxed);
            }
        }
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Overlay(OverlayEvent::Gossipsub(gossipsub::Event::SlowPeer {
                failed_messages,
                ..
            }))) => {
                let failed = failed_messages.priority + failed_messages.non_priority;
                self.progress.dropped_to_slow_peers.fetch_add(failed as u64, Ordering::Relaxed);
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => self.connections.on_established(peer_id, now),
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.connections.on_closed(&peer_id);
                self.listen_addrs.remove(&peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Overlay(OverlayEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            }))) if overlay::speaks_kad(&info) => {
                let addrs: Vec<Multiaddr> = info.listen_addrs.into_iter().take(16).collect();
                for a in &addrs {
                    self.swarm.behaviour_mut().overlay.kad.add_address(&peer_id, a.clone());
                }
                self.listen_addrs.insert(peer_id, addrs);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Overlay(OverlayEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }))) => {
                let acceptance = self.on_gossip(&message, now);
                let _ = self.swarm.behaviour_mut().overlay.gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    acceptance,
                );
            }
            SwarmEvent::Behaviour(BehaviourEvent::Overlay(OverlayEvent::Kad(
                kad::Event::OutboundQueryProgressed {
                    id,
                    result: kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders { providers, .. })),
                    ..
                },
            ))) => {
                let Some(key) = self.lookups.get(&id).copied() else { return };
                let keys: Vec<PublicKey> = providers.iter().filter_map(overlay::public_key_of).collect();
                let actions = self.membership.on_providers(APP, key, &keys, now);
                self.execute(actions);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Overlay(OverlayEvent::Kad(
                kad::Event::OutboundQueryProgressed {
                    id, result: kad::QueryResult::GetClosestPeers(result), step, ..
                },
            ))) if step.last => {
                let Some(signer) = self.address_lookups.remove(&id) else { return };
                let target = overlay::peer_id_of(&signer);
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                if let Some(info) = peers.into_iter().find(|p| p.peer_id == target && !p.addrs.is_empty()) {
                    for a in &info.addrs {
                        self.swarm.behaviour_mut().overlay.kad.add_address(&target, a.clone());
                    }
                    let announcement = self.membership.local_announcement(APP).map(<[u8]>::to_vec);
                    let req = FetchRequest { app: APP.into(), announcement };
                    let rid = self.swarm.behaviour_mut().fetch.send_request_with_addresses(&target, req, info.addrs);
                    self.fetches.insert(rid, signer);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Fetch(request_response::Event::OutboundFailure {
                request_id,
                error: request_response::OutboundFailure::DialFailure,
                ..
            })) => {
                if let Some(signer) = self.fetches.remove(&request_id) {
                    let q = self.swarm.behaviour_mut().overlay.kad.get_closest_peers(overlay::peer_id_of(&signer));
                    self.address_lookups.insert(q, signer);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Fetch(request_response::Event::Message {
                peer, message, ..
            })) => {
                self.connections.on_exchange(&peer, now);
                self.on_fetch(peer, message, now);
            }
            _ => {}
        }
    }

    fn on_fetch(
        &mut self,
        peer: PeerId,
        message: request_response::Message<FetchRequest, FetchResponse>,
        now: mirage_protocol::UnixMillis,
    ) {
        match message {
            request_response::Message::Request { request, channel, .. } => {
                if let (Some(bytes), Some(signer)) = (&request.announcement, overlay::public_key_of(&peer)) {
                    self.membership.on_announcement(bytes, &request.app, Some(&signer), now);
                }
                let announcement = self.membership.local_announcement(&request.app).map(<[u8]>::to_vec);
                // As the daemon: name connected cluster-mates to a cluster-mate.
                let addrs_of = |p: &PublicKey| self.listen_addrs.get(&overlay::peer_id_of(p)).filter(|a| !a.is_empty());
                let introductions = match overlay::public_key_of(&peer) {
                    Some(requester) => self
                        .membership
                        .introductions(&request.app, &requester, |p| addrs_of(p).is_some(), now)
                        .into_iter()
                        .filter_map(|p| addrs_of(&p).map(|a| net::codec::introduce(p, a)))
                        .collect(),
                    None => Vec::new(),
                };
                let response = FetchResponse { announcement, introductions };
                let _ = self.swarm.behaviour_mut().fetch.send_response(channel, response);
            }
            request_response::Message::Response { request_id, response } => {
                let Some(signer) = self.fetches.remove(&request_id) else { return };
                if let Some(bytes) = response.announcement {
                    self.membership.on_announcement(&bytes, APP, Some(&signer), now);
                }
                let named: Vec<PublicKey> = response.introductions.iter().map(|i| i.peer).collect();
                let on_topic = self.cluster_topic_peers();
                let swarm = &self.swarm;
                let is_connected = |p: &PublicKey| swarm.is_connected(&overlay::peer_id_of(p));
                let actions = self.membership.on_introductions(APP, &signer, &named, on_topic, is_connected, now);
                for action in &actions {
                    if let Action::Fetch { peer, .. } = action {
                        let addrs =
                            response.introductions.iter().find(|i| i.peer == *peer).map(net::codec::introduced_addrs);
                        if let Some(addrs) = addrs.filter(|a| !a.is_empty()) {
                            self.introduced.put(overlay::peer_id_of(peer), addrs);
                        }
                    }
                }
                self.execute(actions);
            }
        }
    }

    /// As the daemon judges gossip: heartbeats on the cluster's topic, summaries (and
    /// any announcement) on the app's.
    fn on_gossip(
        &mut self,
        message: &gossipsub::Message,
        now: mirage_protocol::UnixMillis,
    ) -> gossipsub::MessageAcceptance {
        use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
        use mirage_protocol::roster::RosterDrop;
        if let Some(app) = overlay::app_of_cluster_topic(&message.topic) {
            return match self.membership.on_heartbeat(app, &message.data, now) {
                Ok(_) => Accept,
                Err(RosterDrop::Stale | RosterDrop::Own) => Ignore,
                Err(_) => Reject,
            };
        }
        let Some(app) = overlay::app_of_topic(&message.topic).map(str::to_string) else { return Ignore };
        let Ok(env) = decode_envelope(&message.data) else { return Reject };
        if env.kind == MessageKind::ClusterSummary {
            return match self.membership.on_summary(&app, &env, now) {
                Ok(()) => Accept,
                Err(RosterDrop::Stale | RosterDrop::Older) => Ignore,
                Err(_) => Reject,
            };
        }
        // Gossip is anonymous: the envelope's signature names the author.
        match self.membership.on_announcement(&message.data, &app, None, now) {
            mirage_protocol::membership::Verdict::Rejected(_) => Reject,
            _ => Accept,
        }
    }

    /// Connected peers subscribed to our cluster's topic.
    fn cluster_topic_peers(&self) -> usize {
        let Some(cluster) = self.membership.local_apps().next().map(|(_, c)| c) else { return 0 };
        overlay::topic_peer_count(
            &self.swarm.behaviour().overlay.gossipsub,
            &overlay::cluster_topic(APP, &cluster).hash(),
        )
    }

    /// The daemon's connection upkeep: trim to the budget, then meet cluster-mates.
    fn upkeep(&mut self) {
        let now = overlay::now();
        for peer in overlay::over_budget(&self.connections, &self.swarm.behaviour().overlay.gossipsub, now) {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let on_topic = self.cluster_topic_peers();
        self.progress.cluster_peers.store(on_topic as u64, Ordering::Relaxed);
        let swarm = &self.swarm;
        let actions =
            self.membership.meet_cluster_peers(APP, on_topic, |p| swarm.is_connected(&overlay::peer_id_of(p)), now);
        self.execute(actions);
    }

    fn tick(&mut self) {
        // A bootstrap peer busy with hundreds of handshakes refuses some: try again,
        // as the daemon's connection upkeep does.
        if self.swarm.connected_peers().next().is_none() {
            let _ = self.swarm.dial(self.bootstrap.clone());
        }
        let actions = self.membership.tick(overlay::now());
        self.execute(actions);
        if self.last_upkeep.elapsed() >= UPKEEP_EVERY {
            self.last_upkeep = Instant::now();
            self.upkeep();
        }
        let connected = self.swarm.connected_peers().count() as u64;
        self.progress.connections.store(connected, Ordering::Relaxed);
        self.progress.connections_summed.fetch_add(connected, Ordering::Relaxed);
        let on_topic = self.progress.cluster_peers.load(Ordering::Relaxed);
        self.progress.cluster_peers_summed.fetch_add(on_topic, Ordering::Relaxed);
        self.progress.ticks.fetch_add(1, Ordering::Relaxed);
        let gs = &self.swarm.behaviour().overlay.gossipsub;
        let app = overlay::app_topic(APP).hash();
        let cluster = self.membership.local_apps().next().map(|(a, c)| overlay::cluster_topic(a, &c).hash());
        self.progress.app_mesh.store(gs.mesh_peers(&app).count() as u64, Ordering::Relaxed);
        let mesh = cluster.map_or(0, |c| gs.mesh_peers(&c).count() as u64);
        self.progress.cluster_mesh.store(mesh, Ordering::Relaxed);
        let live = self.membership.roster(APP).map_or(0, |r| r.live_count(overlay::now()));
        self.progress.live.store(live, Ordering::Relaxed);
        if self.progress.knew_cluster_ms.load(Ordering::Relaxed) == 0 && live >= self.cluster_size {
            let ms = self.started.elapsed().as_millis().max(1) as u64;
            self.progress.knew_cluster_ms.store(ms, Ordering::Relaxed);
        }
    }
}

/// Runs one node until the harness drops its task.
async fn run_node(mut node: OverlayNode, fp: Option<Fingerprint>) {
    let bootstrap = node.bootstrap.clone();
    if let Err(e) = node.swarm.listen_on(node.listen.clone()) {
        eprintln!("cannot listen: {e}");
        return;
    }
    if let Some((peer, a)) = overlay::split_peer_addr(&bootstrap) {
        node.swarm.behaviour_mut().overlay.kad.add_address(&peer, a);
    }
    let _ = node.swarm.dial(bootstrap);
    let _ = node.swarm.behaviour_mut().overlay.kad.bootstrap();
    if let Some(fp) = fp {
        let _ = overlay::subscribe_app(&mut node.swarm.behaviour_mut().overlay.gossipsub, overlay::app_topic(APP));
        let actions = node.membership.set_local(fp, overlay::now());
        node.execute(actions);
    } else {
        node.progress.knew_cluster_ms.store(1, Ordering::Relaxed);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            event = node.swarm.select_next_some() => node.on_event(event),
            _ = tick.tick() => node.tick(),
        }
    }
}

/// What the simulator's model predicts for this fleet, per node per minute, each
/// term as (in, out).
struct Modelled {
    /// Heartbeats on each cluster's topic and summaries on the app's.
    gossip: (f64, f64),
    /// Keeping the measured connections alive.
    keepalive: f64,
    /// The measured DHT queries.
    dht: f64,
}

impl Modelled {
    fn total(&self) -> (f64, f64) {
        (self.gossip.0 + self.keepalive + self.dht, self.gossip.1 + self.keepalive + self.dht)
    }
}

/// What the harness measured that the model takes as given, per node on average.
struct Measured {
    /// Connections held (every node subscribes to the app's topic: all are its peers).
    connections: f64,
    /// Connected peers on the cluster's topic.
    cluster_peers: f64,
    /// DHT queries made per minute.
    queries_per_min: f64,
}

/// The model's terms for this fleet in steady state, given what was measured.
fn modelled(nodes: usize, clusters: usize, scale: u32, m: &Measured) -> Modelled {
    let gossip = GossipModel::default();
    let timing = RosterTiming::scaled(scale);
    let size = (nodes / clusters.max(1)).max(1) as u64;
    let app_topic = format!("mirage/v1/app/{APP}").len() as u64;
    let cluster_topic = overlay::cluster_topic(APP, &mirage_protocol::ClusterKey(mirage_protocol::Digest([0; 32])))
        .hash()
        .as_str()
        .len() as u64;
    let (heartbeat, summary) = mirage_testnet::sim::overlay::wire_sizes();
    // Each member hears the others' heartbeats once per period, and sends its own.
    let period_min = timing.heartbeat_period(round_size(size)).as_secs_f64() / 60.0;
    let heard = (size - 1) as f64 / period_min;
    let own = 1.0 / period_min;
    let cluster_peers = m.cluster_peers.min((size - 1) as f64);
    let (hb_in, hb_out) = gossip.per_message_among(cluster_peers, heartbeat, cluster_topic);
    let hb_publish = gossip.per_publish_among(cluster_peers, heartbeat, cluster_topic);
    // Summaries: `duty` members of each cluster, once an epoch.
    let epoch_min = timing.epoch_length(clusters as u64).as_secs_f64() / 60.0;
    let duty = (timing.duty(clusters as u64) as f64).min(size as f64);
    let summaries = clusters as f64 * duty / epoch_min;
    let app_peers = m.connections.min((nodes - 1) as f64);
    let (s_in, s_out) = gossip.per_message_among(app_peers, summary, app_topic);
    let s_publish = gossip.per_publish_among(app_peers, summary, app_topic) / nodes as f64;
    let ihaves = gossip.ihave_framing_per_min(cluster_peers, heard + own, cluster_topic)
        + gossip.ihave_framing_per_min(app_peers, summaries, app_topic);
    Modelled {
        gossip: (
            heard * hb_in + summaries * s_in + ihaves,
            heard * hb_out + own * hb_publish + summaries * (s_out + s_publish) + ihaves,
        ),
        keepalive: m.connections * gossip.keepalive_per_connection as f64,
        dht: gossip.dht_per_min(m.queries_per_min),
    }
}

pub fn run(args: OverlayCostArgs) -> Result<()> {
    if args.nodes < 2 || args.clusters == 0 || args.clusters > args.nodes {
        bail!("need at least 2 nodes and between 1 and --nodes clusters");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(measure(args))
}

async fn measure(args: OverlayCostArgs) -> Result<()> {
    // Over TCP, a real bootstrap peer on a port found free. In memory (where the
    // bootstrap peer's swarm cannot listen), the first node is everyone's entry point.
    let keys: Vec<Keypair> = (0..args.nodes).map(|_| Keypair::generate(&mut rand::rngs::OsRng)).collect();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let boot_key = Keypair::generate(&mut rand::rngs::OsRng);
    let boot_id = mirage_bootstrap::peer_id(&boot_key);
    let listen: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse()?;
    let bootstrap: Multiaddr = if args.tcp {
        format!("{listen}/p2p/{boot_id}").parse()?
    } else {
        format!("/memory/1000000/p2p/{}", mirage_bootstrap::peer_id(&keys[0])).parse()?
    };
    let boot = (args.tcp).then(|| {
        tokio::spawn(mirage_bootstrap::run(
            mirage_bootstrap::BootstrapOptions {
                keypair: boot_key,
                listen: vec![listen],
                peers: Vec::new(),
                max_connections: (args.nodes as u32 + 64).max(1024),
                gossip: GossipTuning::default(),
                announcements: MembershipConfig::default(),
            },
            futures::future::pending::<()>(),
        ))
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut kad = KadTuning::default();
    if let Some(s) = args.bootstrap_interval_secs {
        kad.bootstrap_interval = Duration::from_secs(s.max(1));
    }
    let started = Instant::now();
    let mut config = MembershipConfig { roster: RosterTiming::scaled(args.time_scale), ..MembershipConfig::default() };
    if let Some(s) = args.lookup_interval_secs {
        config.lookup_interval = Duration::from_secs(s.max(1));
    }
    let mut counters = Vec::new();
    let mut progress = Vec::new();
    let mut tasks = Vec::new();
    for (i, key) in keys.into_iter().enumerate() {
        let counter = Arc::new(Counter::default());
        let swarm = counted_swarm(&overlay::libp2p_keypair(&key), counter.clone(), &kad, !args.tcp)?;
        let cluster = i % args.clusters;
        let cluster_size = (args.nodes / args.clusters + usize::from(cluster < args.nodes % args.clusters)) as u64;
        let p = Arc::new(Progress::default());
        let listen: Multiaddr =
            if args.tcp { "/ip4/127.0.0.1/tcp/0".parse()? } else { format!("/memory/{}", 1_000_000 + i).parse()? };
        let node = OverlayNode {
            swarm,
            listen,
            bootstrap: bootstrap.clone(),
            membership: Membership::new(key, config.clone()),
            lookups: HashMap::new(),
            fetches: HashMap::new(),
            address_lookups: HashMap::new(),
            cluster_size,
            progress: p.clone(),
            started,
            connections: Connections::new(Budget::NODE),
            listen_addrs: HashMap::new(),
            introduced: lru::LruCache::new(std::num::NonZeroUsize::new(256).expect("non-zero")),
            last_upkeep: Instant::now(),
        };
        let fp = (!args.idle).then(|| fingerprint(cluster));
        tasks.push(tokio::spawn(run_node(node, fp)));
        counters.push(counter);
        progress.push(p);
        // Start in small batches, as a fleet does, not in one burst.
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let all_up = started.elapsed();

    // Until every node's roster counts its whole cluster.
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let mut next_report = 10;
    let wanted = ((args.nodes as f64 * args.measure_at_share.clamp(0.0, 1.0)).ceil() as usize).max(1);
    loop {
        let knowing = progress.iter().filter(|p| p.knew_cluster_ms.load(Ordering::Relaxed) > 0).count();
        if knowing >= wanted {
            break;
        }
        if !args.json && started.elapsed().as_secs() >= next_report {
            next_report += 10;
            let conns = progress.iter().map(|p| p.connections.load(Ordering::Relaxed)).sum::<u64>();
            let behind: Vec<&Arc<Progress>> =
                progress.iter().filter(|p| p.knew_cluster_ms.load(Ordering::Relaxed) == 0).collect();
            let mean_behind = |f: fn(&Progress) -> &AtomicU64| {
                behind.iter().map(|p| f(p).load(Ordering::Relaxed)).sum::<u64>() as f64 / behind.len().max(1) as f64
            };
            eprintln!(
                "  {:>5.1} s: {knowing}/{} nodes know their whole cluster, {:.1} connections per node; \
                 the others count {:.1} live members, with {:.1} mesh peers of {:.1} connected on the cluster's topic",
                started.elapsed().as_secs_f64(),
                args.nodes,
                conns as f64 / args.nodes as f64,
                mean_behind(|p| &p.live),
                mean_behind(|p| &p.cluster_mesh),
                mean_behind(|p| &p.cluster_peers),
            );
        }
        if Instant::now() > deadline {
            bail!("after {} s only {knowing} of {} nodes know their whole cluster", args.timeout_secs, args.nodes);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let formed = started.elapsed();
    let mut known: Vec<u64> =
        progress.iter().map(|p| p.knew_cluster_ms.load(Ordering::Relaxed)).filter(|t| *t > 0).collect();
    known.sort_unstable();
    let knew = known.len();

    // Let provider records, meshes and summaries settle for a few epochs, then measure.
    let settle = RosterTiming::scaled(args.time_scale).epoch_length(args.clusters as u64) * 3;
    tokio::time::sleep(settle).await;
    let before: Vec<(u64, u64)> =
        counters.iter().map(|c| (c.read.load(Ordering::Relaxed), c.written.load(Ordering::Relaxed))).collect();
    let queries_before: u64 = progress.iter().map(|p| p.queries.load(Ordering::Relaxed)).sum();
    let dropped_before: u64 = progress.iter().map(|p| p.dropped_to_slow_peers.load(Ordering::Relaxed)).sum();
    let sampled = |p: &Progress| {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (load(&p.connections_summed), load(&p.cluster_peers_summed), load(&p.ticks))
    };
    let samples_before: Vec<(u64, u64, u64)> = progress.iter().map(|p| sampled(p)).collect();
    let cpu_before = process_cpu();
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.measure_secs)).await;
    let minutes = window.elapsed().as_secs_f64() / 60.0;
    let cores_used = (process_cpu() - cpu_before).as_secs_f64() / (minutes * 60.0);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let dropped =
        progress.iter().map(|p| p.dropped_to_slow_peers.load(Ordering::Relaxed)).sum::<u64>() - dropped_before;
    let queries: u64 = progress.iter().map(|p| p.queries.load(Ordering::Relaxed)).sum::<u64>() - queries_before;
    let queries_per_min = queries as f64 / args.nodes as f64 / minutes;
    let per_node: Vec<(f64, f64)> = counters
        .iter()
        .zip(&before)
        .map(|(c, (r, w))| {
            let r = (c.read.load(Ordering::Relaxed) - r) as f64 / minutes;
            let w = (c.written.load(Ordering::Relaxed) - w) as f64 / minutes;
            (r, w)
        })
        .collect();
    let mean = |f: fn(&Progress) -> &AtomicU64| {
        progress.iter().map(|p| f(p).load(Ordering::Relaxed)).sum::<u64>() as f64 / args.nodes as f64
    };
    // Means over the window, per node, then over nodes.
    let (mut connections, mut cluster_peers) = (0.0, 0.0);
    for (p, (c0, t0, n0)) in progress.iter().zip(&samples_before) {
        let (c1, t1, n1) = sampled(p);
        let ticks = (n1 - n0).max(1) as f64;
        connections += (c1 - c0) as f64 / ticks / args.nodes as f64;
        cluster_peers += (t1 - t0) as f64 / ticks / args.nodes as f64;
    }
    let (cluster_mesh, app_mesh) = (mean(|p| &p.cluster_mesh), mean(|p| &p.app_mesh));
    for t in tasks {
        t.abort();
    }
    if let Some(b) = boot {
        b.abort();
    }

    let n = per_node.len() as f64;
    let mean_in = per_node.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_out = per_node.iter().map(|p| p.1).sum::<f64>() / n;
    let max_in = per_node.iter().map(|p| p.0).fold(0.0, f64::max);
    let measured = Measured { connections, cluster_peers, queries_per_min };
    let model = modelled(args.nodes, args.clusters, args.time_scale, &measured);
    let (model_in, model_out) = model.total();
    let ratio = (model_in + model_out) / (mean_in + mean_out);
    let pct = |p: f64| known[((known.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    let out = serde_json::json!({
        "nodes": args.nodes,
        "clusters": args.clusters,
        "time_scale": args.time_scale,
        "all_started_s": all_up.as_secs_f64(),
        "knew_cluster_s": { "p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0) },
        "knew_cluster_nodes": knew,
        "knew_cluster_by_s": formed.as_secs_f64(),
        "measured_s": minutes * 60.0,
        "connections_per_node": connections,
        "mesh_peers": { "cluster_topic": cluster_mesh, "app_topic": app_mesh },
        "bytes_in_per_node_per_min": mean_in,
        "bytes_out_per_node_per_min": mean_out,
        "bytes_in_per_node_per_min_max": max_in,
        "model_bytes_in_per_node_per_min": model_in,
        "model_bytes_out_per_node_per_min": model_out,
        "model_over_measured": ratio,
        "dht_queries_per_node_per_min": queries_per_min,
        "cpu_cores_used": cores_used,
        "cpu_cores": cores,
        "gossip_dropped_to_slow_peers_per_node_per_min": dropped as f64 / n / minutes,
        "model_terms_bytes_per_node_per_min": {
            "gossip_in": model.gossip.0,
            "gossip_out": model.gossip.1,
            "keepalive_each_way": model.keepalive,
            "dht_each_way": model.dht,
        },
    });
    if args.json {
        println!("{out}");
        return Ok(());
    }
    println!(
        "overlay cost: {} real libp2p nodes in {} clusters, one process, roster time scale {}",
        args.nodes, args.clusters, args.time_scale
    );
    println!(
        "  {knew} of {} nodes knew their whole cluster {:.1} s after the first started (of those, p50 {:.1} s, p99 {:.1} s); all started by {:.1} s",
        args.nodes,
        formed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        all_up.as_secs_f64()
    );
    println!(
        "  measured over {:.0} s of steady state (every byte of every connection, both ways), {connections:.1} connections per node \
         on average over the window, {cluster_peers:.1} of them on the cluster's topic, \
         mesh peers {cluster_mesh:.1} on the cluster's topic and {app_mesh:.1} on the app's:",
        minutes * 60.0
    );
    println!("    {:>12} {:>12} {:>12}", "", "in B/min", "out B/min");
    println!("    {:>12} {:>12.0} {:>12.0}   (max in {:.0})", "real", mean_in, mean_out, max_in);
    println!("    {:>12} {:>12.0} {:>12.0}", "model", model_in, model_out);
    println!(
        "    model terms, each way: gossip {:.0} in / {:.0} out, keep-alive {:.0}, DHT {:.0} ({queries_per_min:.2} queries per node per minute)",
        model.gossip.0, model.gossip.1, model.keepalive, model.dht
    );
    println!("  model / real, in + out: {ratio:.2}");
    println!(
        "  the harness used {cores_used:.2} of {cores} cores over the window and gossipsub dropped {:.1} messages per node \
         per minute to peers whose queues were full{}",
        dropped as f64 / n / minutes,
        if cores_used > 0.9 * cores as f64 || dropped > 0 {
            ": short of CPU, the real bytes are what got through, not what the nodes sent"
        } else {
            ""
        }
    );
    Ok(())
}

/// CPU time this process has used, all threads, user and system.
fn process_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given and reads nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
