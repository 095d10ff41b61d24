//! Releases and content: admitting vendors' signed manifests from the release topic,
//! downloading artifacts chunk by chunk from every peer that holds them (found through
//! the DHT as providers of the content hash), and serving whatever we hold.
//!
//! The planning (which chunk from whom, verification, bans, timeouts) is the protocol
//! core's [`Download`]; this module turns its requests into content-protocol calls and
//! writes accepted chunks to the [`ChunkStore`].

mod download;
mod lanes;
mod releases;
mod serve;
mod status;

pub(super) use super::Node;
use crate::chunk_store::{ChunkStore, StoredArtifact};
use crate::lane::{LaneEvent, Lanes, Route, Served};
use crate::net::content::{pack_bitmap, unpack_bitmap};
use crate::net::{ContentRequest, ContentResponse};
use libp2p::{gossipsub, kad, request_response, PeerId};
use mirage_bootstrap::overlay;
use mirage_protocol::channel::{check_release_message, ReleaseMessage};
use mirage_protocol::manifest::{ArtifactInfo, UpgradeManifest};
use mirage_protocol::membership::DropReason;
use mirage_protocol::transfer::{ChunkVerdict, Download, Rejection};
use mirage_protocol::trust::{ManifestRejection, TrustStore};
use mirage_protocol::{Digest, Envelope, Verified};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracing::{debug, info, info_span, warn};

/// How often a download asks its peers again which chunks they hold.
const HAVE_POLL: Duration = Duration::from_millis(1000);
/// How often a download (or a seeding vendor) looks for more providers.
const PROVIDER_POLL: Duration = Duration::from_secs(3);
/// Requests one peer may have outstanding for one download. Two keep a peer's pipe full
/// (one answer streams while the next is asked for); with six, 16 receivers of 1 MiB
/// chunks queued so deep that requests took 2 s on average and up to 7.5 s, which set
/// off endgame duplicates, for no more throughput (`mirage bench swarm`: mean 0.7 s,
/// max 1.6 s with two).
const PER_PEER_IN_FLIGHT: usize = 2;

/// A release this node admitted: the newest trusted manifest for its app.
pub struct Admitted {
    pub manifest: Verified<UpgradeManifest>,
    pub bytes: Vec<u8>,
}

pub use mirage_protocol::control::Misbehaviour;

/// How late a [`Misbehaviour::Slow`] peer answers chunk requests.
const SLOW_SERVE_DELAY: Duration = Duration::from_millis(100);

/// A vendor's seed: which peers admitted the release, and the goal of seeding until
/// `replicas` other peers hold a full copy (0: until stopped).
pub struct SeedGoal {
    pub app: String,
    pub version: semver::Version,
    pub manifest: Digest,
    pub content: Digest,
    pub replicas: usize,
    pub replicated: BTreeSet<PeerId>,
    /// Peers that showed they admitted the manifest: they answered our manifest request
    /// with it, or asked us for its content.
    pub admitted: BTreeSet<PeerId>,
    /// What the other peers that answered hold for the app: another version, or none.
    pub answers: BTreeMap<PeerId, Option<semver::Version>>,
    /// When each peer was last asked for its manifest.
    asked: HashMap<PeerId, Instant>,
    last_poll: Option<Instant>,
}

/// How often a seed asks a peer that has not admitted its release what it holds.
pub const ADMISSION_POLL: Duration = Duration::from_secs(2);

impl SeedGoal {
    /// Peers to ask now for their manifest: connected, not yet admitted, not asked lately.
    pub fn due_asks(&mut self, connected: impl Iterator<Item = PeerId>, now: Instant) -> Vec<PeerId> {
        let due: Vec<PeerId> = connected
            .filter(|p| !self.admitted.contains(p))
            .filter(|p| self.asked.get(p).is_none_or(|t| now - *t >= ADMISSION_POLL))
            .take(64)
            .collect();
        for p in &due {
            self.asked.insert(*p, now);
        }
        due
    }

    /// A peer's answer to our manifest request: the manifest it holds, if any.
    pub fn on_answer(&mut self, peer: PeerId, held: Option<(Digest, semver::Version)>) {
        match held {
            Some((id, _)) if id == self.manifest => self.on_admitted(peer),
            Some((_, version)) => {
                self.answers.insert(peer, Some(version));
            }
            None => {
                self.answers.insert(peer, None);
            }
        }
    }

    pub fn on_admitted(&mut self, peer: PeerId) {
        self.answers.remove(&peer);
        if self.admitted.insert(peer) {
            tracing::info!(%peer, admitted = self.admitted.len(), "peer admitted the release");
        }
    }

    /// For `mirage status` and `vendor publish`.
    pub fn status(&self) -> serde_json::Value {
        let mut other: BTreeMap<String, usize> = BTreeMap::new();
        let mut without = 0;
        for v in self.answers.values() {
            match v {
                Some(v) => *other.entry(v.to_string()).or_default() += 1,
                None => without += 1,
            }
        }
        serde_json::json!({
            "app": self.app,
            "version": self.version.to_string(),
            "manifest_id": self.manifest.to_hex(),
            "admitted": self.admitted.len(),
            "other_versions": other,
            "without_release": without,
            "full_copies": self.replicated.len(),
            "replicas_wanted": self.replicas,
        })
    }
}

struct ActiveDownload {
    app: String,
    version: semver::Version,
    what: &'static str,
    download: Download<PeerId>,
    started: Instant,
    finished: Option<Duration>,
    last_have_poll: Option<Instant>,
    last_provider_poll: Option<Instant>,
    /// Peers that answered a have request: asked again when not heard from lately.
    holders: BTreeSet<PeerId>,
    /// When each peer last told us what it holds (a have answer or a chunk's bitmap).
    heard: HashMap<PeerId, Instant>,
    /// When each peer was last asked what it holds.
    asked: HashMap<PeerId, Instant>,
    bytes: u64,
    /// How long chunk requests took, from sending to the answer (any answer).
    latency: RequestLatency,
    /// How long after the start the first chunk was stored: the swarm's start-up delay
    /// (finding providers, asking what they hold, opening lanes).
    first_chunk: Option<Duration>,
}

/// Running figures of chunk request latency, logged when a download completes: the
/// swarm's health at a glance (a slow maximum means a peer queues requests too deep).
#[derive(Debug, Default)]
struct RequestLatency {
    count: u64,
    total: Duration,
    max: Duration,
}

impl RequestLatency {
    fn record(&mut self, took: Duration) {
        self.count += 1;
        self.total += took;
        self.max = self.max.max(took);
    }

    fn mean_ms(&self) -> u64 {
        (self.total.as_millis() as u64).checked_div(self.count).unwrap_or(0)
    }
}

pub struct Distribution {
    trust: TrustStore,
    chunks: ChunkStore,
    auto_fetch: bool,
    releases: BTreeMap<String, Admitted>,
    /// Artifacts on disk, complete or partial, keyed by content hash; served from here.
    held: HashMap<Digest, StoredArtifact>,
    downloads: HashMap<Digest, ActiveDownload>,
    chunk_requests: HashMap<request_response::OutboundRequestId, (Digest, usize, Instant)>,
    have_requests: HashMap<request_response::OutboundRequestId, Digest>,
    manifest_requests: HashMap<request_response::OutboundRequestId, String>,
    report_requests: HashMap<request_response::OutboundRequestId, String>,
    /// Verdict requests in flight, by app; and whom the core's rules say to ask when.
    pub(in crate::daemon) verdict_requests: HashMap<request_response::OutboundRequestId, String>,
    pub(in crate::daemon) verdict_asks: mirage_protocol::staging::verdicts::VerdictAsks<PeerId>,
    /// Ask every new peer for the problem reports it holds (a vendor collecting them).
    pub collect_reports: bool,
    provider_lookups: HashMap<kad::QueryId, Digest>,
    rejected_manifests: BTreeMap<&'static str, u64>,
    rejected_chunks: BTreeMap<&'static str, u64>,
    /// Reports and requests on a release topic that broke the channel's rules, by reason.
    pub(in crate::daemon) rejected_messages: BTreeMap<&'static str, u64>,
    /// Downloads this node could not start for a fault of its own (a full disk).
    pub(in crate::daemon) local_faults: BTreeMap<&'static str, u64>,
    /// Chunks served to peers, by where they came from: "memory" (the LRU) or "disk".
    served_chunks: BTreeMap<&'static str, u64>,
    /// Releases to publish on their topic once the topic has peers.
    pending_publish: Vec<(String, Vec<u8>)>,
    pub seed_goal: Option<SeedGoal>,
    misbehaviour: Misbehaviour,
    /// Chunk responses held back by a slow peer, with when to send them.
    delayed: Vec<(Instant, ReplyTo, ContentResponse)>,
    /// Content lanes: chunk bytes over plain TCP beside libp2p.
    pub lanes: Lanes,
    /// Chunks received, by the way they came: over content lanes or libp2p's content
    /// protocol.
    received_via_lane: u64,
    received_via_libp2p: u64,
    /// Lane tickets asked of peers, by request.
    lane_offers: HashMap<request_response::OutboundRequestId, PeerId>,
}

/// Where the answer to a chunk request goes.
pub(in crate::daemon) enum ReplyTo {
    Stream(request_response::ResponseChannel<ContentResponse>),
    Lane(tokio::sync::oneshot::Sender<Option<Served>>),
}

/// A release a vendor seeds: the signed manifest and the files it describes.
#[derive(Clone, Debug)]
pub struct SeedRelease {
    pub envelope: Vec<u8>,
    pub artifact: PathBuf,
    pub bundle: Option<PathBuf>,
}

fn rejection_name(r: &ManifestRejection) -> &'static str {
    match r {
        ManifestRejection::NoTrustForApp(_) => "no_trust_for_app",
        ManifestRejection::UntrustedSigner { .. } => "untrusted_signer",
        ManifestRejection::Expired { .. } => "expired",
        ManifestRejection::NotNewer { .. } => "not_newer",
        ManifestRejection::WrongApp { .. } => "wrong_app",
    }
}

fn drop_name(d: DropReason) -> &'static str {
    match d {
        // An expired manifest is the replay the Update Framework warns of.
        DropReason::Stale => "expired",
        other => other.name(),
    }
}

fn chunk_rejection_name(r: Rejection) -> &'static str {
    match r {
        Rejection::NoSuchChunk => "no_such_chunk",
        Rejection::WrongLength => "wrong_length",
        Rejection::WrongHash => "wrong_hash",
        Rejection::Unsolicited => "unsolicited",
    }
}

impl Distribution {
    pub fn new(trust: TrustStore, chunks: ChunkStore, auto_fetch: bool, lanes: Lanes) -> Self {
        Distribution {
            trust,
            chunks,
            auto_fetch,
            releases: BTreeMap::new(),
            held: HashMap::new(),
            downloads: HashMap::new(),
            chunk_requests: HashMap::new(),
            have_requests: HashMap::new(),
            manifest_requests: HashMap::new(),
            report_requests: HashMap::new(),
            verdict_requests: HashMap::new(),
            local_faults: BTreeMap::new(),
            rejected_messages: BTreeMap::new(),
            verdict_asks: Default::default(),
            collect_reports: false,
            provider_lookups: HashMap::new(),
            rejected_manifests: BTreeMap::new(),
            rejected_chunks: BTreeMap::new(),
            served_chunks: BTreeMap::new(),
            pending_publish: Vec::new(),
            seed_goal: None,
            misbehaviour: Misbehaviour::Honest,
            delayed: Vec::new(),
            lanes,
            lane_offers: HashMap::new(),
            received_via_lane: 0,
            received_via_libp2p: 0,
        }
    }

    /// Apps whose release topics this node follows.
    /// Whether `key` may sign for `app` (manifests, retest requests).
    pub fn trusts(&self, app: &str, key: &mirage_protocol::PublicKey) -> bool {
        self.trust.is_trusted(app, key)
    }

    /// Counts a refused release-topic message by reason, for `mirage status`.
    pub fn count_rejection(&mut self, reason: &'static str) {
        *self.rejected_manifests.entry(reason).or_default() += 1;
    }

    /// Queues a signed message for the app's release topic (sent once it has peers).
    pub fn queue_publish(&mut self, app: &str, bytes: Vec<u8>) {
        self.pending_publish.push((app.to_string(), bytes));
    }

    /// Release-topic messages still waiting for peers to send them to.
    pub fn pending_publishes(&self) -> usize {
        self.pending_publish.len()
    }

    pub fn trusted_apps(&self) -> Vec<String> {
        self.trust.apps().map(str::to_string).collect()
    }

    pub fn release(&self, app: &str) -> Option<&Admitted> {
        self.releases.get(app)
    }

    /// The first release this node seeds: app, version, manifest id, artifact.
    pub fn seeded(&self) -> Option<(String, semver::Version, Digest, Digest)> {
        self.releases.iter().find_map(|(app, a)| {
            let m = a.manifest.payload();
            let c = m.artifact.content_hash;
            (self.held.get(&c).is_some_and(StoredArtifact::is_complete) && !self.downloads.contains_key(&c))
                .then(|| (app.clone(), m.version.clone(), m.id(), c))
        })
    }

    /// Whether the vendor's replication goal is met.
    pub fn replicated(&self) -> bool {
        self.seed_goal.as_ref().is_some_and(|g| g.replicas > 0 && g.replicated.len() >= g.replicas)
    }

    fn artifact_info(&self, content: &Digest) -> Option<&ArtifactInfo> {
        self.held.get(content).map(StoredArtifact::info).or_else(|| {
            self.releases.values().find_map(|a| {
                let m = a.manifest.payload();
                std::iter::once(&m.artifact).chain(m.test_bundle.as_ref()).find(|i| &i.content_hash == content)
            })
        })
    }
}

impl SeedGoal {
    pub fn new(app: &str, version: semver::Version, manifest: Digest, content: Digest, replicas: usize) -> Self {
        SeedGoal {
            app: app.to_string(),
            version,
            manifest,
            content,
            replicas,
            replicated: BTreeSet::new(),
            admitted: BTreeSet::new(),
            answers: BTreeMap::new(),
            asked: HashMap::new(),
            last_poll: None,
        }
    }
}
