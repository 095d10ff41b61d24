//! `mirage node run`: the node's event loop. It turns swarm events, API requests,
//! rescans and timers into calls on the protocol core's [`Membership`], and carries out
//! the [`Action`]s it returns on the network and in the database.

pub mod api;
mod distribute;
mod roster;
mod staging;

pub use distribute::{Misbehaviour, SeedRelease};

use crate::net::{self, Behaviour, BehaviourEvent, FetchRequest, FetchResponse, Introduction};
use crate::store::{KnownPeer, Store, StoreError};
use api::{InjectKind, Request};
use distribute::{Distribution, SeedGoal};
use futures::StreamExt;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, kad, request_response, Multiaddr, PeerId, Swarm};
use mirage_bootstrap::overlay::{self, GossipTuning, KadTuning};
use mirage_bootstrap::BehaviourEvent as OverlayEvent;
use mirage_protocol::connections::{Budget, Connections};
use mirage_protocol::fingerprint::scope::{membership_name, Scope};
use mirage_protocol::fingerprint::Profile;
use mirage_protocol::membership::{check_announcement, Action, DropReason, Membership, MembershipConfig, Verdict};
use mirage_protocol::wire::MAX_MESSAGE_BYTES;
use mirage_protocol::{Envelope, Fingerprint, Keypair, PublicKey, UnixMillis};
use staging::Staging;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Key(#[from] crate::keyfile::KeyFileError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("profile {path}: {reason}")]
    Profile { path: PathBuf, reason: String },
    #[error("two profiles are for app `{0}`")]
    DuplicateApp(String),
    #[error("scanning {app}: {reason}")]
    Scan { app: String, reason: String },
    #[error(transparent)]
    Overlay(#[from] overlay::OverlayError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("content store: {0}")]
    Content(#[from] crate::chunk_store::StoreError),
    #[error("cannot seed release: {0}")]
    Seed(String),
    #[error("installs under {path}: {reason}")]
    Install { path: PathBuf, reason: String },
    #[error("the test sandbox: {0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("content lanes on {addr}: {source}")]
    Lanes { addr: SocketAddr, source: std::io::Error },
    #[error("control API on {addr}: {source}")]
    Api { addr: SocketAddr, source: std::io::Error },
    #[error("control API socket {path}: {source}")]
    ApiSocket { path: PathBuf, source: std::io::Error },
    #[error("control API token {path}: {source}")]
    ApiToken { path: PathBuf, source: std::io::Error },
    #[error("control API group `{0}`: no such group on this machine")]
    ApiGroup(String),
}

/// Where the control API listens (see [`api`]).
#[derive(Clone, Debug, Default)]
pub struct ApiOptions {
    /// The Unix socket; default `DATA/api.sock`.
    pub socket: Option<PathBuf>,
    /// A group whose members may use the socket too (mode 0660 instead of 0600).
    pub group: Option<String>,
    /// A TCP endpoint as well, for callers that present the token.
    pub tcp: Option<SocketAddr>,
    /// The token TCP callers present; default `DATA/api.token`, made if missing.
    pub token_file: Option<PathBuf>,
}

/// Everything `mirage node run` needs; the binary fills it from flags and the config file.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub data_dir: PathBuf,
    pub key: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub apps: Vec<PathBuf>,
    pub root: PathBuf,
    pub api: ApiOptions,
    pub membership: MembershipConfig,
    pub gossip: GossipTuning,
    pub kad: KadTuning,
    pub rescan_interval: Duration,
    pub max_connections: u32,
    /// Keep at least this many connections, dialing peers from the DHT's routing table.
    pub target_peers: usize,
    /// Allow the `inject` API request (test fleets only).
    pub allow_debug: bool,
    /// Vendor keys trusted per app; manifests signed by anyone else are refused.
    pub trust: mirage_protocol::trust::TrustStore,
    /// Download every admitted release at once (otherwise only on `fetch`).
    pub auto_fetch: bool,
    /// Releases this node seeds (a vendor).
    pub seed: Vec<SeedRelease>,
    /// Signed messages (app, envelope) to publish on release topics once they have
    /// peers: a vendor's retest request.
    pub release_messages: Vec<(String, Vec<u8>)>,
    /// Stop once this many other peers hold a full copy of the first seeded release.
    pub stop_after_replicas: Option<usize>,
    /// Where this node installs its apps' versions (`<prefix>/<app>/current`). With it,
    /// the node stages releases of its apps itself: tests as a representative, applies
    /// when its cluster's gate holds. Without it, it only distributes content.
    pub install_prefix: Option<PathBuf>,
    /// Ask peers for the problem reports they hold (`mirage vendor reports`).
    pub collect_reports: bool,
    /// Move chunk bytes over content lanes (plain TCP beside libp2p; see [`crate::lane`]),
    /// serving them on the IP of the first listen address.
    pub content_lanes: bool,
    /// The TCP port content lanes listen on; 0 picks a free one (the node tells peers
    /// which over libp2p), a fixed one suits firewalls.
    pub lane_port: u16,
}

impl NodeOptions {
    /// Defaults for everything but where the node keeps its data and key: no apps, no
    /// bootstrap peers, TCP on an ephemeral loopback port, API on an ephemeral port.
    pub fn new(data_dir: PathBuf, key: PathBuf) -> Self {
        NodeOptions {
            data_dir,
            key,
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr")],
            bootstrap: Vec::new(),
            apps: Vec::new(),
            root: PathBuf::from("/"),
            api: ApiOptions::default(),
            membership: MembershipConfig::default(),
            gossip: GossipTuning::default(),
            kad: KadTuning::default(),
            rescan_interval: Duration::from_secs(300),
            max_connections: 256,
            target_peers: 8,
            allow_debug: false,
            trust: mirage_protocol::trust::TrustStore::default(),
            auto_fetch: true,
            seed: Vec::new(),
            release_messages: Vec::new(),
            stop_after_replicas: None,
            install_prefix: None,
            collect_reports: false,
            content_lanes: true,
            lane_port: 0,
        }
    }
}

/// The file in the data directory holding the TCP API's bound address (the port may be 0).
pub const API_ADDR_FILE: &str = "api.addr";
/// The control API's Unix socket in the data directory (by default).
pub const API_SOCKET_FILE: &str = "api.sock";
/// The TCP API's token in the data directory (by default).
pub const API_TOKEN_FILE: &str = "api.token";
const DB_FILE: &str = "node.redb";
/// The folder in the data directory holding artifacts, by content hash.
const CONTENT_DIR: &str = "content";
/// Application-score penalty per invalid fetch reply (weighted ×10 by gossipsub): two
/// put a peer below the gossip threshold, five below the graylist threshold.
const FETCH_PENALTY: f64 = 1.0;
/// Introduced cluster-mates whose addresses a node keeps for dialing, at most.
const INTRODUCED_PEERS: std::num::NonZeroUsize = std::num::NonZeroUsize::new(256).expect("non-zero");

struct LocalApp {
    profile: Profile,
}

/// A scope's membership, kept beside its app's: see [`mirage_protocol::fingerprint::scope`].
struct ScopeMembership {
    app: String,
    /// The profile's name for it (`[scopes.NAME]`), for status.
    name: String,
    scope: Scope,
}

struct Node {
    swarm: Swarm<Behaviour>,
    store: Store,
    membership: Membership,
    keypair: Keypair,
    local_peer: PeerId,
    apps: BTreeMap<String, LocalApp>,
    /// Scoped memberships by membership name.
    scoped: BTreeMap<String, ScopeMembership>,
    lookups: HashMap<kad::QueryId, (String, mirage_protocol::ClusterKey)>,
    /// DHT searches for the addresses of peers a fetch could not dial.
    address_lookups: HashMap<kad::QueryId, (PublicKey, String)>,
    /// When we last searched for a peer's addresses (at most one search per peer per 30 s).
    address_searched: HashMap<PublicKey, UnixMillis>,
    fetches: HashMap<request_response::OutboundRequestId, (PublicKey, String)>,
    stored_addrs: HashMap<PeerId, Vec<Multiaddr>>,
    /// Where cluster-mates named in fetch answers listen (used to dial them, nothing else).
    introduced: lru::LruCache<PeerId, Vec<Multiaddr>>,
    /// Application-score penalties of peers whose fetch replies were invalid.
    penalties: HashMap<PeerId, f64>,
    allow_debug: bool,
    target_peers: usize,
    /// The connection budget: which connections to close so that their number stays
    /// flat (gossipsub would keep every connection ever opened).
    connections: Connections<PeerId>,
    /// Connections the budget closed since start.
    trimmed: u64,
    /// Connections refused because their address held too many peers already.
    refused_by_ip: u64,
    /// Peers a test cut this node off from (`Request::Block`, debug only).
    blocked: HashSet<PeerId>,
    /// The bootstrap peers given at start, to tell whether the overlay is reachable.
    bootstrap_peers: Vec<PeerId>,
    dist: Distribution,
    staging: Staging,
}

/// Runs the node until `shutdown` resolves.
pub async fn run(options: NodeOptions, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&options.data_dir)
        .map_err(|e| DaemonError::DataDir { path: options.data_dir.clone(), source: e })?;
    let keypair = crate::keyfile::load_or_create(&options.key)?;
    let peer_id = keypair.public().peer_id();
    let span = info_span!("node", peer = %peer_id);
    run_inner(options, keypair, shutdown).instrument(span).await
}

async fn run_inner(
    options: NodeOptions,
    keypair: Keypair,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let store = Store::open(&options.data_dir.join(DB_FILE))?;
    store.check_identity(&keypair.public().peer_id())?;
    let cache = Arc::new(crate::digest_cache::DigestCache::in_database(store.database()));

    let mut apps = BTreeMap::new();
    for path in &options.apps {
        let text = std::fs::read_to_string(path)
            .map_err(|e| DaemonError::Profile { path: path.clone(), reason: e.to_string() })?;
        let profile =
            Profile::parse(&text).map_err(|e| DaemonError::Profile { path: path.clone(), reason: e.to_string() })?;
        let app = profile.app().to_string();
        if apps.insert(app.clone(), LocalApp { profile }).is_some() {
            return Err(DaemonError::DuplicateApp(app));
        }
    }

    let scoped: BTreeMap<String, ScopeMembership> = apps
        .values()
        .flat_map(|a| a.profile.scopes().iter().map(move |(name, scope)| (a.profile.app(), name, scope)))
        .map(|(app, name, scope)| {
            (
                membership_name(app, scope),
                ScopeMembership { app: app.to_string(), name: name.clone(), scope: scope.clone() },
            )
        })
        .collect();
    let (staging, mut completions) = staging_for(&options, &store, apps.keys().cloned().collect())?;

    let lane_addr = options.content_lanes.then(|| lane_ip(&options.listen)).flatten();
    let (lanes, mut lane_events) = match lane_addr.map(|ip| SocketAddr::new(ip, options.lane_port)) {
        Some(addr) => crate::lane::Lanes::listen(addr, options.max_connections as usize, net::CHUNK_REQUEST_TIMEOUT)
            .await
            .map_err(|e| DaemonError::Lanes { addr, source: e })?,
        None => crate::lane::Lanes::off(),
    };
    if let Some(port) = lanes.port() {
        info!(port, "content lanes listening");
    }
    let lp_key = overlay::libp2p_keypair(&keypair);
    let local_peer = lp_key.public().to_peer_id();
    let swarm = net::build(
        &lp_key,
        &net::NetOptions {
            max_connections: options.max_connections,
            gossip: options.gossip.clone(),
            kad: options.kad.clone(),
        },
    )?;
    let mut node = Node {
        swarm,
        store,
        membership: Membership::new(keypair.clone(), options.membership.clone()),
        keypair,
        local_peer,
        apps,
        scoped,
        lookups: HashMap::new(),
        address_lookups: HashMap::new(),
        address_searched: HashMap::new(),
        fetches: HashMap::new(),
        stored_addrs: HashMap::new(),
        introduced: lru::LruCache::new(INTRODUCED_PEERS),
        penalties: HashMap::new(),
        allow_debug: options.allow_debug,
        target_peers: options.target_peers,
        connections: Connections::new(Budget::NODE),
        trimmed: 0,
        refused_by_ip: 0,
        blocked: HashSet::new(),
        bootstrap_peers: options.bootstrap.iter().filter_map(overlay::split_peer_addr).map(|(p, _)| p).collect(),
        dist: Distribution::new(
            options.trust.clone(),
            crate::chunk_store::ChunkStore::open(&options.data_dir.join(CONTENT_DIR))?,
            options.auto_fetch,
            lanes,
        ),
        staging,
    };
    node.dist.collect_reports = options.collect_reports;

    for addr in &options.listen {
        overlay::check_port_free(addr)
            .map_err(|e| DaemonError::Listen { addr: addr.clone(), reason: e.to_string() })?;
        node.swarm
            .listen_on(addr.clone())
            .map_err(|e| DaemonError::Listen { addr: addr.clone(), reason: e.to_string() })?;
    }
    let app_names: Vec<String> = node.apps.keys().cloned().collect();
    for name in node.membership_names() {
        overlay::subscribe_app(&mut node.swarm.behaviour_mut().overlay.gossipsub, overlay::app_topic(&name))?;
    }
    for app in node.dist.trusted_apps() {
        node.follow_release_topic(&app);
    }
    node.restore_announcements()?;
    node.restore_releases()?;
    for seed in &options.seed {
        node.seed_release(seed).map_err(DaemonError::Seed)?;
    }
    for (app, bytes) in &options.release_messages {
        node.follow_release_topic(app);
        node.dist.queue_publish(app, bytes.clone());
    }
    if let (false, Some((app, version, manifest, content))) = (options.seed.is_empty(), node.dist.seeded()) {
        let replicas = options.stop_after_replicas.unwrap_or(0);
        node.dist.seed_goal = Some(SeedGoal::new(&app, version, manifest, content, replicas));
    }
    node.dial_initial(&options.bootstrap)?;

    // Fingerprints: scanned off the event loop; the first scan gates announcements.
    let (scan_tx, mut scan_rx) = mpsc::channel::<Result<Fingerprint, DaemonError>>(16);
    let profiles: Vec<Profile> = node.apps.values().map(|a| a.profile.clone()).collect();
    let root = options.root.clone();
    spawn_scans(profiles.clone(), root.clone(), cache.clone(), scan_tx.clone());
    let mut rescan = tokio::time::interval_at(
        tokio::time::Instant::now() + options.rescan_interval,
        options.rescan_interval.max(Duration::from_secs(1)),
    );

    let (api_tx, mut api_rx) = mpsc::channel::<api::Incoming>(64);
    let api_socket = options.api.socket.clone().unwrap_or_else(|| options.data_dir.join(API_SOCKET_FILE));
    let gid = match &options.api.group {
        Some(name) => Some(api::group_id(name).ok_or_else(|| DaemonError::ApiGroup(name.clone()))?),
        None => None,
    };
    let unix = api::bind_unix(&api_socket, gid)
        .await
        .map_err(|e| DaemonError::ApiSocket { path: api_socket.clone(), source: e })?;
    let mut api_tasks = vec![tokio::spawn(api::serve_unix(unix, api_tx.clone()))];
    if let Some(addr) = options.api.tcp {
        let token_file = options.api.token_file.clone().unwrap_or_else(|| options.data_dir.join(API_TOKEN_FILE));
        let token = api::ApiToken::load_or_create(&token_file)
            .map_err(|e| DaemonError::ApiToken { path: token_file.clone(), source: e })?;
        if !addr.ip().is_loopback() {
            warn!(api = %addr, "the control API's TCP endpoint is reachable from other machines (callers need its token)");
        }
        let (listener, bound) = api::bind(addr).await.map_err(|e| DaemonError::Api { addr, source: e })?;
        api_tasks.push(tokio::spawn(api::serve(listener, token, api_tx.clone())));
        write_api_addr(&options.data_dir, bound).map_err(|e| DaemonError::Api { addr: bound, source: e })?;
        info!(api = %bound, token = %token_file.display(), "control API on TCP too");
    }
    drop(api_tx);
    info!(api = %api_socket.display(), apps = ?app_names, "node running");

    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut maintain = tokio::time::interval(Duration::from_secs(3));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            event = node.swarm.select_next_some() => node.on_swarm_event(event),
            Some((req, reply)) = api_rx.recv() => {
                let _ = reply.send(node.on_api(req));
            }
            Some(scanned) = scan_rx.recv() => match scanned {
                Ok(fp) => node.on_fingerprint(fp),
                Err(e) => warn!(error = %e, "scan failed"),
            },
            _ = rescan.tick() => spawn_scans(profiles.clone(), root.clone(), cache.clone(), scan_tx.clone()),
            _ = tick.tick() => {
                let actions = node.membership.tick(overlay::now());
                node.execute(actions);
                node.persist_presence();
                node.distribution_tick();
                node.staging_rosters();
                node.staging_tick();
                if node.dist.replicated() {
                    info!("the release is replicated; seeding done");
                    break;
                }
            }
            _ = maintain.tick() => node.maintain_connections(),
            Some(done) = completions.recv() => node.on_staging_completion(done),
            Some(event) = lane_events.recv() => node.on_lane_event(event),
        }
    }
    info!("shutting down");
    for task in api_tasks {
        task.abort();
    }
    let _ = std::fs::remove_file(options.data_dir.join(API_ADDR_FILE));
    let _ = std::fs::remove_file(&api_socket);
    Ok(())
}

/// The peer a request-response event came from or went to, when something crossed.
fn exchange_peer<Q, A>(event: &request_response::Event<Q, A>) -> Option<PeerId> {
    match event {
        request_response::Event::Message { peer, .. } => Some(*peer),
        _ => None,
    }
}

/// The IP content lanes listen on: that of the first listen address that names one.
/// Why a debug request is refused: the node was not started for it, or (the shipped
/// binary) it was built without the test hooks.
fn debug_refused(what: &str) -> String {
    if cfg!(feature = "test-hooks") {
        format!("{what} is disabled (start the node with --allow-debug)")
    } else {
        format!("{what} is not in this build (debug requests need the test-hooks feature)")
    }
}

fn lane_ip(listen: &[Multiaddr]) -> Option<std::net::IpAddr> {
    listen.iter().find_map(ip_of)
}

fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => Some(ip.into()),
        libp2p::multiaddr::Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

/// The staging driver: with an install prefix, an installer (recovered from any crash
/// first) and a working sandbox; without, a driver that manages nothing.
fn staging_for(
    options: &NodeOptions,
    store: &Store,
    apps: std::collections::BTreeSet<String>,
) -> Result<(Staging, mpsc::UnboundedReceiver<staging::Completion>), DaemonError> {
    let work_dir = options.data_dir.join("staging");
    let Some(prefix) = &options.install_prefix else {
        return Ok(Staging::new(None, None, options.root.clone(), work_dir, apps));
    };
    let install_err =
        |e: crate::install::InstallError| DaemonError::Install { path: prefix.clone(), reason: e.to_string() };
    let installer = crate::install::Installer::open(prefix, store.database())
        .map_err(install_err)?
        .with_machine_root(&options.root);
    for (app, version) in installer.recover_all().map_err(install_err)? {
        info!(app, version = ?version.map(|v| v.to_string()), "installed version after recovery");
    }
    // Tests never see the node's database, content, key or other runs' copies.
    let sandbox = crate::sandbox::Sandbox::new()?
        .with_scratch_dir(&work_dir)
        .hiding([options.data_dir.clone(), options.key.clone()]);
    std::fs::create_dir_all(&work_dir).map_err(|e| DaemonError::DataDir { path: work_dir.clone(), source: e })?;
    // Said now, at start, rather than as a failed test when the first release comes.
    for path in [prefix, &options.root, &work_dir] {
        sandbox.reaches(path)?;
    }
    info!(confinement = %sandbox.confinement().describe(), "tests run sandboxed");
    Ok(Staging::new(Some(installer), Some(sandbox), options.root.clone(), work_dir, apps))
}

fn write_api_addr(dir: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let tmp = dir.join(format!("{API_ADDR_FILE}.tmp"));
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(tmp, dir.join(API_ADDR_FILE))
}

fn spawn_scans(
    profiles: Vec<Profile>,
    root: PathBuf,
    cache: Arc<crate::digest_cache::DigestCache>,
    tx: mpsc::Sender<Result<Fingerprint, DaemonError>>,
) {
    tokio::task::spawn_blocking(move || {
        for profile in profiles {
            let result = crate::scan::scan(&profile, &root, Some(&cache))
                .map(|s| s.fingerprint)
                .map_err(|e| DaemonError::Scan { app: profile.app().to_string(), reason: e.to_string() });
            if tx.blocking_send(result).is_err() {
                return;
            }
        }
    });
}

impl Node {
    /// Every membership this node keeps: its apps', and their scopes'.
    fn membership_names(&self) -> Vec<String> {
        self.apps.keys().chain(self.scoped.keys()).cloned().collect()
    }

    fn runs_membership(&self, name: &str) -> bool {
        self.apps.contains_key(name) || self.scoped.contains_key(name)
    }

    /// A scan's result: the app's membership, each of its scopes', and its staging.
    fn on_fingerprint(&mut self, fp: Fingerprint) {
        let now = overlay::now();
        let app = fp.app().to_string();
        let mut local = vec![fp.clone()];
        for (name, s) in self.scoped.iter().filter(|(_, s)| s.app == app) {
            match fp.scoped(&s.scope) {
                Ok(scoped) => local.push(scoped),
                Err(e) => warn!(app, scope = s.name, membership = name, error = %e, "cannot project the fingerprint"),
            }
        }
        for f in local {
            let (name, key) = (f.app().to_string(), f.cluster_key());
            let actions = self.membership.set_local(f, now);
            if !actions.is_empty() {
                info!(app, membership = name, cluster = %key, "environment fingerprinted");
            }
            self.execute(actions);
        }
        self.staging_fingerprint(&fp);
    }

    fn restore_announcements(&mut self) -> Result<(), StoreError> {
        let now = overlay::now();
        for app in self.membership_names() {
            // First sightings before announcements: a restart must not make every
            // member look new (and unable to represent its cluster).
            let sightings = self.store.presence(&app)?;
            self.membership.restore_presence(&app, sightings);
            for (peer, bytes) in self.store.announcements(&app)? {
                let signer = PublicKey::from_peer_id(&peer);
                if signer.is_none()
                    || check_announcement(&bytes, &app, signer.as_ref(), now, self.membership.config()).is_err()
                {
                    self.store.remove_announcement(&app, &peer)?;
                    continue;
                }
                self.membership.on_announcement(&bytes, &app, signer.as_ref(), now);
            }
        }
        Ok(())
    }

    /// Writes the first sightings of the last moments, in one transaction.
    fn persist_presence(&mut self) {
        let changes = self.membership.take_presence_changes();
        if let Err(e) = self.store.put_presence(&changes) {
            warn!(error = %e, sightings = changes.len(), "cannot store first sightings");
        }
    }

    fn dial_initial(&mut self, bootstrap: &[Multiaddr]) -> Result<(), StoreError> {
        for addr in bootstrap {
            if let Some((peer, a)) = overlay::split_peer_addr(addr) {
                self.swarm.behaviour_mut().overlay.kad.add_address(&peer, a);
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                warn!(%addr, error = %e, "cannot dial bootstrap peer");
            }
        }
        // Peers known from earlier runs: re-dial the most recent ones.
        for (peer, known) in self.store.known_peers()?.into_iter().take(32) {
            let Ok(peer) = peer.parse::<PeerId>() else { continue };
            let addrs: Vec<Multiaddr> = known.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            for a in &addrs {
                self.swarm.behaviour_mut().overlay.kad.add_address(&peer, a.clone());
            }
            self.stored_addrs.insert(peer, addrs.clone());
            let _ = self.swarm.dial(DialOpts::peer_id(peer).addresses(addrs).build());
        }
        if let Err(e) = self.swarm.behaviour_mut().overlay.kad.bootstrap() {
            debug!(error = %e, "no peers for a DHT bootstrap yet");
        }
        Ok(())
    }

    /// A request or answer crossed the connection to `peer`: it is in use.
    fn exchanged(&mut self, peer: Option<PeerId>) {
        if let Some(peer) = peer {
            self.connections.on_exchange(&peer, overlay::now());
        }
    }

    /// Keeps the node connected to enough peers for a healthy gossip mesh, and to no
    /// more than the connection budget allows.
    fn maintain_connections(&mut self) {
        let now = overlay::now();
        for peer in overlay::over_budget(&self.connections, &self.swarm.behaviour().overlay.gossipsub, now) {
            debug!(%peer, "over the connection budget; disconnecting");
            if self.swarm.disconnect_peer_id(peer).is_ok() {
                self.trimmed += 1;
            }
        }
        let apps: Vec<String> = self.membership.local_apps().map(|(a, _)| a.to_string()).collect();
        for app in apps {
            let on_topic = self.cluster_topic_peers(&app);
            let swarm = &self.swarm;
            let actions = self.membership.meet_cluster_peers(
                &app,
                on_topic,
                |p| swarm.is_connected(&overlay::peer_id_of(p)),
                now,
            );
            self.execute(actions);
        }
        let connected: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
        if connected.len() >= self.target_peers {
            return;
        }
        let mut candidates = Vec::new();
        for bucket in self.swarm.behaviour_mut().overlay.kad.kbuckets() {
            for entry in bucket.iter() {
                let peer = *entry.node.key.preimage();
                if !connected.contains(&peer) {
                    candidates.push(peer);
                }
            }
        }
        for peer in candidates.into_iter().take(self.target_peers - connected.len()) {
            let _ = self.swarm.dial(peer);
        }
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Publish { app, bytes } => {
                    if let Err(e) = self.store.put_own_fingerprint(&app, &bytes) {
                        warn!(app, error = %e, "cannot store own fingerprint");
                    }
                    let ok = self.publish(&app, bytes);
                    self.membership.on_publish_result(&app, ok, overlay::now());
                }
                Action::Resigned { app, bytes } => {
                    if let Err(e) = self.store.put_own_fingerprint(&app, &bytes) {
                        warn!(app, error = %e, "cannot store own fingerprint");
                    }
                }
                Action::StartProviding { key } => {
                    let _span = info_span!("provide", cluster = %key).entered();
                    if let Err(e) =
                        self.swarm.behaviour_mut().overlay.kad.start_providing(overlay::cluster_record_key(&key))
                    {
                        warn!(error = %e, "cannot register as provider");
                    }
                }
                Action::StopProviding { key } => {
                    self.swarm.behaviour_mut().overlay.kad.stop_providing(&overlay::cluster_record_key(&key));
                }
                Action::FindProviders { app, key } => {
                    let id = self.swarm.behaviour_mut().overlay.kad.get_providers(overlay::cluster_record_key(&key));
                    self.lookups.insert(id, (app, key));
                }
                Action::Fetch { peer, app } => {
                    let peer_id = overlay::peer_id_of(&peer);
                    // A peer we only heard of through relayed gossip: find where it
                    // listens first (the fetch follows the search).
                    if !self.swarm.is_connected(&peer_id)
                        && !self.stored_addrs.contains_key(&peer_id)
                        && !self.introduced.contains(&peer_id)
                        && self.search_address(peer, app.clone())
                    {
                        continue;
                    }
                    debug!(peer = %peer_id, app, "fetching fingerprint");
                    let announcement = self.membership.local_announcement(&app).map(<[u8]>::to_vec);
                    let request = FetchRequest { app: app.clone(), announcement };
                    let fetch = &mut self.swarm.behaviour_mut().fetch;
                    let id = match self.introduced.get(&peer_id) {
                        Some(addrs) => fetch.send_request_with_addresses(&peer_id, request, addrs.clone()),
                        None => fetch.send_request(&peer_id, request),
                    };
                    self.fetches.insert(id, (peer, app));
                }
                Action::JoinCluster { app, cluster } => self.join_cluster(&app, &cluster),
                Action::LeaveCluster { app, cluster } => self.leave_cluster(&app, &cluster),
                Action::PublishHeartbeat { app, cluster, bytes } => self.publish_heartbeat(&app, &cluster, bytes),
                Action::PublishSummary { app, bytes } => self.publish_summary(&app, bytes),
                Action::CatchUp { app, request } => self.ask_catch_up(&app, request),
            }
        }
    }

    fn publish(&mut self, app: &str, bytes: Vec<u8>) -> bool {
        match self.swarm.behaviour_mut().overlay.gossipsub.publish(overlay::app_topic(app), bytes) {
            Ok(_) => true,
            Err(gossipsub::PublishError::Duplicate) => true,
            Err(e) => {
                debug!(app, error = %e, "publish failed; will retry");
                false
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => info!(%address, "listening"),
            SwarmEvent::ConnectionEstablished { peer_id, num_established, endpoint, connection_id, .. } => {
                debug!(peer = %peer_id, "connected");
                let origin = mirage_protocol::connections::Origin {
                    ip: ip_of(endpoint.get_remote_address()),
                    outbound: endpoint.is_dialer(),
                };
                if self.blocked.contains(&peer_id) {
                    self.swarm.close_connection(connection_id);
                    return;
                }
                if self.connections.admit(peer_id, origin, overlay::now()).is_err() {
                    debug!(peer = %peer_id, ip = ?origin.ip, "refused: too many peers from its address");
                    self.refused_by_ip += 1;
                    self.swarm.close_connection(connection_id);
                    return;
                }
                self.dist.lanes.peer_connected(peer_id, ip_of(endpoint.get_remote_address()));
                if num_established.get() == 1 {
                    self.on_peer_connected(peer_id);
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                debug!(peer = %peer_id, "disconnected");
                self.connections.on_closed(&peer_id);
                self.on_peer_disconnected(&peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Overlay(OverlayEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            }))) => self.on_identify(peer_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::Overlay(OverlayEvent::Gossipsub(event))) => self.on_gossip(event),
            SwarmEvent::Behaviour(BehaviourEvent::Overlay(OverlayEvent::Kad(event))) => self.on_kad(event),
            SwarmEvent::Behaviour(BehaviourEvent::Fetch(event)) => {
                self.exchanged(exchange_peer(&event));
                self.on_fetch(event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Roster(event)) => {
                self.exchanged(exchange_peer(&event));
                self.on_roster(event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Content(event)) => {
                self.exchanged(exchange_peer(&event));
                self.on_content(event)
            }
            _ => {}
        }
    }

    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        if !overlay::speaks_kad(&info) {
            return;
        }
        let addrs: Vec<Multiaddr> = info.listen_addrs.into_iter().take(16).collect();
        for a in &addrs {
            self.swarm.behaviour_mut().overlay.kad.add_address(&peer, a.clone());
        }
        if self.stored_addrs.get(&peer) != Some(&addrs) {
            let known =
                KnownPeer { addrs: addrs.iter().map(|a| a.to_string()).collect(), last_seen_ms: overlay::now().0 };
            if let Err(e) = self.store.put_known_peer(&peer.to_base58(), &known) {
                warn!(error = %e, "cannot store known peer");
            }
            self.stored_addrs.insert(peer, addrs);
        }
    }

    fn on_gossip(&mut self, event: gossipsub::Event) {
        let gossipsub::Event::Message { propagation_source, message_id, message } = event else { return };
        let acceptance = self.judge_gossip(propagation_source, &message);
        self.swarm.behaviour_mut().overlay.gossipsub.report_message_validation_result(
            &message_id,
            &propagation_source,
            acceptance,
        );
    }

    /// Whether gossipsub should forward a message, by its topic: a release topic's, our
    /// cluster's, or an app's (a summary or an announcement).
    fn judge_gossip(&mut self, from: PeerId, message: &gossipsub::Message) -> gossipsub::MessageAcceptance {
        if let Some(app) = overlay::app_of_release_topic(&message.topic).map(str::to_string) {
            return self.on_release_message(&app, from, &message.data);
        }
        if let Some(app) = overlay::app_of_cluster_topic(&message.topic) {
            let app = app.to_string();
            return self.on_cluster_message(&app, &message.data);
        }
        let Some(app) = overlay::app_of_topic(&message.topic).map(str::to_string).filter(|a| self.runs_membership(a))
        else {
            self.membership.count_drop(DropReason::WrongApp);
            return gossipsub::MessageAcceptance::Reject;
        };
        let summary = mirage_protocol::membership::decode_envelope(&message.data)
            .ok()
            .filter(|e| e.kind == mirage_protocol::envelope::MessageKind::ClusterSummary);
        if let Some(summary) = summary {
            return self.on_summary(&app, &summary);
        }
        let _span = info_span!("announcement", %from, app).entered();
        // Gossip is anonymous: the envelope's signature names the author.
        let (acceptance, joined) = self.on_announcement(&message.data, &app, None);
        if let Some(peer) = joined {
            let exchange = self.membership.exchange_with(&peer, &app, overlay::now());
            self.execute(exchange.into_iter().collect());
        }
        acceptance
    }

    /// Shared by gossip and fetch replies: verdict, persistence, acceptance.
    /// Returns the acceptance for gossip and, if the signer just joined our cluster, who.
    fn on_announcement(
        &mut self,
        bytes: &[u8],
        app: &str,
        signer: Option<&PublicKey>,
    ) -> (gossipsub::MessageAcceptance, Option<PublicKey>) {
        let now = overlay::now();
        match self.membership.on_announcement(bytes, app, signer, now) {
            Verdict::Accepted { member_changed } => {
                if let Ok(env) = Envelope::from_bytes(bytes) {
                    let peer = env.signer.peer_id();
                    let ours = self.membership.is_member(app, &env.signer);
                    let result = if ours {
                        self.store.put_announcement(app, &peer, bytes)
                    } else if member_changed {
                        self.store.remove_announcement(app, &peer)
                    } else {
                        Ok(())
                    };
                    if let Err(e) = result {
                        warn!(error = %e, "cannot store announcement");
                    }
                    if member_changed {
                        info!(app, %peer, member = ours, members = self.membership.member_count(app), "cluster changed");
                    }
                    if member_changed && ours {
                        return (gossipsub::MessageAcceptance::Accept, Some(env.signer));
                    }
                }
                (gossipsub::MessageAcceptance::Accept, None)
            }
            Verdict::Ignored => (gossipsub::MessageAcceptance::Ignore, None),
            // A stale announcement is late, not hostile: gossip delivers old messages.
            Verdict::Rejected(reason @ DropReason::Stale) => {
                debug!(app, %reason, "dropped announcement");
                (gossipsub::MessageAcceptance::Reject, None)
            }
            Verdict::Rejected(reason) => {
                warn!(app, %reason, "dropped announcement");
                (gossipsub::MessageAcceptance::Reject, None)
            }
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        let kad::Event::OutboundQueryProgressed { id, result, step, .. } = event else { return };
        match result {
            kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders { providers, .. })) => {
                let content = self.on_content_providers(&id, &providers);
                if let Some((app, key)) = self.lookups.get(&id).cloned().filter(|_| !content) {
                    let keys: Vec<PublicKey> = providers.iter().filter_map(overlay::public_key_of).collect();
                    let _span = info_span!("providers", cluster = %key, app).entered();
                    debug!(found = keys.len(), "providers");
                    let actions = self.membership.on_providers(&app, key, &keys, overlay::now());
                    self.execute(actions);
                }
            }
            kad::QueryResult::GetClosestPeers(result) if step.last => {
                if let Some((signer, app)) = self.address_lookups.remove(&id) {
                    let target = overlay::peer_id_of(&signer);
                    let peers = match result {
                        Ok(ok) => ok.peers,
                        Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                    };
                    match peers.into_iter().find(|p| p.peer_id == target) {
                        Some(info) if !info.addrs.is_empty() => {
                            for a in &info.addrs {
                                self.swarm.behaviour_mut().overlay.kad.add_address(&target, a.clone());
                            }
                            let announcement = self.membership.local_announcement(&app).map(<[u8]>::to_vec);
                            let req = FetchRequest { app: app.clone(), announcement };
                            let rid =
                                self.swarm.behaviour_mut().fetch.send_request_with_addresses(&target, req, info.addrs);
                            self.fetches.insert(rid, (signer, app));
                        }
                        _ => debug!(peer = %target, "no address found for the peer"),
                    }
                }
            }
            kad::QueryResult::GetProviders(Err(e)) => debug!(error = %e, "provider lookup failed"),
            kad::QueryResult::StartProviding(Err(e)) => debug!(error = %e, "provider registration incomplete"),
            kad::QueryResult::Bootstrap(Err(e)) => debug!(error = %e, "DHT bootstrap failed"),
            _ => {}
        }
        if step.last {
            self.forget_lookup(&id);
            self.lookups.remove(&id);
            self.address_lookups.remove(&id);
        }
    }

    fn on_fetch(&mut self, event: request_response::Event<FetchRequest, FetchResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let signer = overlay::public_key_of(&peer);
                    if let (Some(bytes), Some(signer), true) =
                        (&request.announcement, signer, self.runs_membership(&request.app))
                    {
                        let _span = info_span!("exchange", from = %peer, app = request.app).entered();
                        match self.on_announcement(bytes, &request.app, Some(&signer)).0 {
                            gossipsub::MessageAcceptance::Reject => self.penalize(peer, "a bad announcement"),
                            gossipsub::MessageAcceptance::Accept => info!("fingerprint received in an exchange"),
                            gossipsub::MessageAcceptance::Ignore => {}
                        }
                    }
                    let announcement = self.membership.local_announcement(&request.app).map(<[u8]>::to_vec);
                    // A fingerprint near the wire's limit leaves no room for introductions.
                    let room = announcement
                        .as_ref()
                        .is_none_or(|a| a.len() + net::codec::INTRODUCTIONS_ROOM <= MAX_MESSAGE_BYTES);
                    let introductions = match signer {
                        Some(s) if room => self.introductions_for(&request.app, &s),
                        _ => Vec::new(),
                    };
                    debug!(%peer, app = request.app, found = announcement.is_some(), introduced = introductions.len(), "fingerprint requested");
                    let response = FetchResponse { announcement, introductions };
                    let _ = self.swarm.behaviour_mut().fetch.send_response(channel, response);
                }
                request_response::Message::Response { request_id, response } => {
                    let Some((signer, app)) = self.fetches.remove(&request_id) else { return };
                    if let Some(bytes) = response.announcement {
                        let _span = info_span!("fetched", from = %peer, app).entered();
                        match self.on_announcement(&bytes, &app, Some(&signer)).0 {
                            gossipsub::MessageAcceptance::Reject => self.penalize(peer, "a bad announcement"),
                            gossipsub::MessageAcceptance::Accept => info!("fingerprint fetched"),
                            gossipsub::MessageAcceptance::Ignore => debug!("fetched fingerprint was not news"),
                        }
                    }
                    self.on_introductions(&app, &signer, &response.introductions);
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                let fetch = self.fetches.remove(&request_id);
                debug!(%peer, %error, "fingerprint fetch failed");
                // We heard of the peer through gossip relayed by others, so we may not
                // know where it listens: ask the DHT, then try once more.
                if let (Some((signer, app)), request_response::OutboundFailure::DialFailure) = (fetch, &error) {
                    self.search_address(signer, app);
                }
            }
            _ => {}
        }
    }

    /// The cluster-mates to name to `requester` in a fetch's answer: connected ones whose
    /// listen addresses identify told us.
    fn introductions_for(&self, app: &str, requester: &PublicKey) -> Vec<Introduction> {
        let addrs_of = |p: &PublicKey| {
            let id = overlay::peer_id_of(p);
            self.stored_addrs.get(&id).filter(|a| !a.is_empty() && self.swarm.is_connected(&id))
        };
        let named = self.membership.introductions(app, requester, |p| addrs_of(p).is_some(), overlay::now());
        named.into_iter().filter_map(|p| addrs_of(&p).map(|a| net::codec::introduce(p, a))).collect()
    }

    /// `from` named these cluster-mates in its answer: the core decides whom to fetch
    /// from, and their addresses are kept for dialing them.
    fn on_introductions(&mut self, app: &str, from: &PublicKey, named: &[Introduction]) {
        if named.is_empty() {
            return;
        }
        let keys: Vec<PublicKey> = named.iter().map(|i| i.peer).collect();
        let on_topic = self.cluster_topic_peers(app);
        let swarm = &self.swarm;
        let is_connected = |p: &PublicKey| swarm.is_connected(&overlay::peer_id_of(p));
        let actions = self.membership.on_introductions(app, from, &keys, on_topic, is_connected, overlay::now());
        for action in &actions {
            if let Action::Fetch { peer, .. } = action {
                let addrs =
                    named.iter().find(|i| i.peer == *peer).map(net::codec::introduced_addrs).unwrap_or_default();
                if !addrs.is_empty() {
                    self.introduced.put(overlay::peer_id_of(peer), addrs);
                }
            }
        }
        self.execute(actions);
    }

    /// Connected peers subscribed to our cluster's topic for `app`.
    fn cluster_topic_peers(&self, app: &str) -> usize {
        let Some(cluster) = self.membership.local_fingerprint(app).map(Fingerprint::cluster_key) else { return 0 };
        overlay::topic_peer_count(
            &self.swarm.behaviour().overlay.gossipsub,
            &overlay::cluster_topic(app, &cluster).hash(),
        )
    }

    /// Starts a DHT search for `signer`'s addresses, after which the fetch for `app` is
    /// sent. At most one search per peer per 30 s; returns whether one started.
    fn search_address(&mut self, signer: PublicKey, app: String) -> bool {
        let now = overlay::now();
        self.address_searched.retain(|_, t| now.since(*t) < Duration::from_secs(30));
        match self.address_searched.entry(signer) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(now);
                let id = self.swarm.behaviour_mut().overlay.kad.get_closest_peers(overlay::peer_id_of(&signer));
                self.address_lookups.insert(id, (signer, app));
                true
            }
        }
    }

    /// Scores down a peer that answered a fetch with a bad announcement. Gossip already
    /// scores bad messages itself (P4); fetch replies go through the application score.
    fn penalize(&mut self, peer: PeerId, what: &str) {
        let penalty = self.penalties.entry(peer).or_default();
        *penalty += FETCH_PENALTY;
        let score = -*penalty;
        self.swarm.behaviour_mut().overlay.gossipsub.set_application_score(&peer, score);
        warn!(%peer, application_score = score, "peer answered a request with {what}");
    }

    fn on_api(&mut self, req: Request) -> api::Reply {
        match req {
            Request::Status => Ok(self.status()),
            Request::Announce { app } => {
                let now = overlay::now();
                let mut apps: Vec<String> = match app {
                    Some(a) if self.apps.contains_key(&a) => vec![a],
                    Some(a) => return Err(format!("this node has no app `{a}`").into()),
                    None => self.apps.keys().cloned().collect(),
                };
                let scopes = self.scoped.iter().filter(|(_, s)| apps.contains(&s.app)).map(|(n, _)| n.clone());
                apps.extend(scopes.collect::<Vec<_>>());
                let mut published = Vec::new();
                for a in apps {
                    if let Some(action) = self.membership.announce_now(&a, now) {
                        self.execute(vec![action]);
                        published.push(a);
                    }
                }
                Ok(serde_json::json!({ "issued_at_ms": now.0, "apps": published }))
            }
            Request::Seen { app, peer } => {
                let key =
                    PublicKey::from_peer_id(&peer).ok_or_else(|| format!("`{peer}` is not an ed25519 peer id"))?;
                // The newest fingerprint held from the peer, and what the roster heard
                // of it (first and last heartbeat).
                let record = self.membership.peer_record(&app, &key);
                let sighting = self.membership.roster(&app).and_then(|r| r.sighting(&key));
                if record.is_none() && sighting.is_none() {
                    return Ok(serde_json::Value::Null);
                }
                Ok(serde_json::json!({
                    "cluster_key": record.map(|r| r.cluster_key.to_hex()),
                    "issued_at_ms": record.map(|r| r.issued_at.0),
                    "received_at_ms": record.map(|r| r.received_at.0),
                    "roster": sighting.map(|s| serde_json::json!({
                        "cluster_key": s.cluster.to_hex(),
                        "since_ms": s.since.0,
                        "last_seen_ms": s.last_seen.0,
                    })),
                }))
            }
            Request::Fetch { app, version } => {
                let newest = self.dist.release(&app).map(|a| a.manifest.payload().version.clone());
                let known = self.apps.contains_key(&app) || self.dist.trusted_apps().iter().any(|a| a == &app);
                let want = match version.as_deref().map(semver::Version::parse).transpose() {
                    Ok(w) => w,
                    Err(e) => return Err(format!("`{}` is not a version: {e}", version.unwrap_or_default()).into()),
                };
                match (&newest, want) {
                    (None, _) if !known => {
                        return Err(format!(
                            "this node neither runs `{app}` nor trusts a vendor for it (--trust {app}=VENDORKEY)"
                        )
                        .into())
                    }
                    (None, _) => return Err(api::ApiError::not_yet(format!("no release of `{app}` admitted yet"))),
                    (Some(v), Some(want)) if &want < v => {
                        return Err(format!("{app} {want} is older than the newest admitted release, {v}").into())
                    }
                    (Some(v), Some(want)) if &want > v => {
                        return Err(api::ApiError::not_yet(format!(
                            "no release {want} of `{app}` admitted yet (newest: {v})"
                        )))
                    }
                    _ => {}
                }
                let version = self.fetch_release(&app).ok_or("cannot start the download (see the node's log)")?;
                Ok(serde_json::json!({ "app": app, "version": version.to_string() }))
            }
            Request::Rollback { app } => self.operator_rollback(&app).map_err(Into::into),
            Request::Unpin { app } => self.operator_unpin(&app).map_err(Into::into),
            Request::ProblemReports { app } => {
                let reports: Vec<String> = self.problem_reports(&app, usize::MAX).iter().map(hex::encode).collect();
                Ok(serde_json::json!({ "app": app, "reports": reports }))
            }
            Request::Block { peers } => {
                if !self.allow_debug {
                    return Err(debug_refused("blocking peers").into());
                }
                let peers: HashSet<PeerId> = peers
                    .iter()
                    .map(|p| p.parse::<PeerId>().map_err(|e| format!("peer id `{p}`: {e}")))
                    .collect::<Result<_, _>>()?;
                for p in &peers {
                    let _ = self.swarm.disconnect_peer_id(*p);
                }
                warn!(blocked = peers.len(), "peers blocked on request");
                self.blocked = peers;
                Ok(serde_json::json!({ "blocked": self.blocked.len() }))
            }
            Request::Misbehave { mode } => {
                if !self.allow_debug {
                    return Err(debug_refused("misbehaving").into());
                }
                self.set_misbehaviour(mode);
                Ok(serde_json::json!({ "mode": mode }))
            }
            Request::PublishRelease { app, hex } => {
                if !self.allow_debug {
                    return Err(debug_refused("raw publishing").into());
                }
                let bytes = hex::decode(hex).map_err(|e| format!("hex: {e}"))?;
                let id = self
                    .swarm
                    .behaviour_mut()
                    .overlay
                    .gossipsub
                    .publish(overlay::release_topic(&app), bytes.clone())
                    .map_err(|e| format!("publish: {e}"))?;
                warn!(app, "published raw bytes on the release topic on request");
                // Gossip does not hand a node its own messages: judge them here as any
                // peer would, so the publisher knows (and can serve) what it announced.
                let local = self.local_peer;
                let verdict = self.on_release_message(&app, local, &bytes);
                Ok(serde_json::json!({ "message_id": id.to_string(), "local": format!("{verdict:?}") }))
            }
            Request::Inject { kind, app } => {
                if !self.allow_debug {
                    return Err(debug_refused("injection").into());
                }
                let app = match app {
                    Some(a) => a,
                    None => self.apps.keys().next().cloned().ok_or("this node has no apps")?,
                };
                let bytes = self.bad_announcement(kind, &app)?;
                let size = bytes.len();
                let id = self
                    .swarm
                    .behaviour_mut()
                    .overlay
                    .gossipsub
                    .publish(overlay::app_topic(&app), bytes)
                    .map_err(|e| format!("publish: {e}"))?;
                warn!(?kind, app, size, "published a bad announcement on request");
                Ok(serde_json::json!({ "message_id": id.to_string(), "bytes": size }))
            }
        }
    }

    /// Builds the bad announcement `kind` stands for.
    fn bad_announcement(&self, kind: InjectKind, app: &str) -> Result<Vec<u8>, String> {
        let fp = self.membership.local_fingerprint(app).ok_or("no fingerprint yet for that app")?.clone();
        let now = overlay::now();
        let sign = |fp: &Fingerprint, at: UnixMillis| Envelope::sign(&self.keypair, fp, at).map_err(|e| e.to_string());
        let encode = |env: Envelope| env.to_bytes().map_err(|e| e.to_string());
        Ok(match kind {
            InjectKind::Malformed => {
                let mut junk = vec![mirage_protocol::wire::WIRE_VERSION];
                junk.extend_from_slice(&now.0.to_le_bytes());
                junk.extend_from_slice(b"definitely not an envelope");
                junk
            }
            InjectKind::Oversized => {
                let mut big = vec![mirage_protocol::wire::WIRE_VERSION];
                big.resize(mirage_protocol::wire::MAX_MESSAGE_BYTES + 1024, (now.0 % 251) as u8);
                big
            }
            InjectKind::Unsigned => {
                let mut env = sign(&fp, now)?;
                env.signature = mirage_protocol::identity::Signature([0; 64]);
                encode(env)?
            }
            InjectKind::WrongSignature => {
                let other = Keypair::generate(&mut rand::rngs::OsRng);
                let mut env = Envelope::sign(&other, &fp, now).map_err(|e| e.to_string())?;
                env.signer = self.keypair.public();
                encode(env)?
            }
            InjectKind::Stale => {
                let old = now.saturating_sub(self.membership.config().max_age * 2);
                encode(sign(&fp, old)?)?
            }
            InjectKind::WrongApp => {
                let other = if app == "other-app" { "another-app" } else { "other-app" };
                let wrong = Fingerprint::new(other.to_string(), fp.profile_id(), fp.items().to_vec());
                encode(sign(&wrong, now)?)?
            }
        })
    }

    /// Our cluster's members as `mirage status` lists them: the roster's live members
    /// (what staging elects from), or, before the roster exists, the fingerprints held.
    fn cluster_members(&self, app: &str) -> Vec<String> {
        match self.membership.roster(app) {
            Some(r) => r.members(overlay::now()).iter().map(|m| m.peer.peer_id().to_string()).collect(),
            None => self.membership.members(app).iter().map(|m| m.peer_id().to_string()).collect(),
        }
    }

    fn status(&mut self) -> serde_json::Value {
        let clusters: Vec<serde_json::Value> = self
            .membership
            .local_apps()
            .map(|(app, key)| {
                let scope = self.scoped.get(app);
                serde_json::json!({
                    "app": app,
                    "scope": scope.map(|s| serde_json::json!({ "app": s.app, "name": s.name })),
                    "cluster_key": key.to_hex(),
                    "members": self.cluster_members(app),
                    "known_peers": self.membership.known_peers(app),
                    "roster": self.membership.roster(app).map(|r| self.roster_status(r)),
                })
            })
            .collect();
        let pending: Vec<&String> =
            self.apps.keys().filter(|a| self.membership.local_fingerprint(a).is_none()).collect();
        let drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
            .iter()
            .map(|r| (r.name().to_string(), self.membership.drops().get(r).copied().unwrap_or(0).into()))
            .collect();
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let gs = &self.swarm.behaviour().overlay.gossipsub;
        let scores: serde_json::Map<String, serde_json::Value> =
            connected.iter().filter_map(|p| gs.peer_score(p).map(|s| (p.to_base58(), s.into()))).collect();
        let bootstrap_connected = self.bootstrap_peers.iter().filter(|p| connected.contains(p)).count();
        let mut status = serde_json::json!({
            "peer_id": self.local_peer.to_base58(),
            "connected_peers": connected.len(),
            "connections": {
                "connected": connected.len(),
                "budget": { "low": self.connections.budget().low, "high": self.connections.budget().high },
                "closed_by_budget": self.trimmed,
                "refused_per_ip": self.refused_by_ip,
            },
            "bootstrap_peers": { "configured": self.bootstrap_peers.len(), "connected": bootstrap_connected },
            "seeding": self.dist.seed_goal.as_ref().map(|g| g.status()),
            "pending_publishes": self.dist.pending_publishes(),
            "listen_addrs": self.swarm.listeners().map(|a| a.to_string()).collect::<Vec<_>>(),
            "clusters": clusters,
            "apps_pending_scan": pending,
            "dropped_announcements": drops,
            "peer_scores": scores,
        });
        if let (Some(out), serde_json::Value::Object(dist)) = (status.as_object_mut(), self.distribution_status()) {
            out.extend(dist);
            out.insert("staging".into(), self.staging_status());
        }
        status
    }
}
