//! Releases and content: admitting vendors' signed manifests from the release topic,
//! downloading artifacts chunk by chunk from every peer that holds them (found through
//! the DHT as providers of the content hash), and serving whatever we hold.
//!
//! The planning (which chunk from whom, verification, bans, timeouts) is the protocol
//! core's [`Download`]; this module turns its requests into content-protocol calls and
//! writes accepted chunks to the [`ChunkStore`].

use super::Node;
use crate::chunk_store::{ChunkStore, StoredArtifact};
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
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, info_span, warn};

/// How often a download asks its peers again which chunks they hold.
const HAVE_POLL: Duration = Duration::from_millis(1000);
/// How often a download (or a seeding vendor) looks for more providers.
const PROVIDER_POLL: Duration = Duration::from_secs(3);
/// Requests one peer may have outstanding for one download.
const PER_PEER_IN_FLIGHT: usize = 6;

/// A release this node admitted: the newest trusted manifest for its app.
pub struct Admitted {
    pub manifest: Verified<UpgradeManifest>,
    pub bytes: Vec<u8>,
}

/// What a peer run with `--allow-debug` can be told to do wrong when serving, so tests
/// attack honest nodes through the real network path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Misbehaviour {
    Honest,
    /// Claim every chunk of every known artifact and serve chunks with a flipped byte
    /// (or noise, for chunks not held).
    Corrupt,
    /// Claim every chunk and serve more bytes than the manifest's chunk length.
    Endless,
    /// Claim every chunk and serve the same chunk index of another artifact held
    /// (another version): mix-and-match.
    Mix,
    /// Serve honestly, but every chunk a quarter second late: a slow peer, so tests can
    /// interrupt a download half-way.
    Slow,
}

impl Misbehaviour {
    /// Whether the peer lies about what it holds.
    fn lies(self) -> bool {
        matches!(self, Misbehaviour::Corrupt | Misbehaviour::Endless | Misbehaviour::Mix)
    }
}

/// How late a [`Misbehaviour::Slow`] peer answers chunk requests.
const SLOW_SERVE_DELAY: Duration = Duration::from_millis(250);

/// A vendor's goal: seed until this many other peers hold a full copy.
pub struct SeedGoal {
    pub content: Digest,
    pub replicas: usize,
    pub replicated: BTreeSet<PeerId>,
    last_poll: Option<Instant>,
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
    bytes: u64,
}

pub struct Distribution {
    trust: TrustStore,
    chunks: ChunkStore,
    auto_fetch: bool,
    releases: BTreeMap<String, Admitted>,
    /// Artifacts on disk, complete or partial, keyed by content hash; served from here.
    held: HashMap<Digest, StoredArtifact>,
    downloads: HashMap<Digest, ActiveDownload>,
    chunk_requests: HashMap<request_response::OutboundRequestId, (Digest, usize)>,
    have_requests: HashMap<request_response::OutboundRequestId, Digest>,
    manifest_requests: HashMap<request_response::OutboundRequestId, String>,
    report_requests: HashMap<request_response::OutboundRequestId, String>,
    /// Ask every new peer for the problem reports it holds (a vendor collecting them).
    pub collect_reports: bool,
    provider_lookups: HashMap<kad::QueryId, Digest>,
    rejected_manifests: BTreeMap<&'static str, u64>,
    rejected_chunks: BTreeMap<&'static str, u64>,
    /// Releases to publish on their topic once the topic has peers.
    pending_publish: Vec<(String, Vec<u8>)>,
    pub seed_goal: Option<SeedGoal>,
    misbehaviour: Misbehaviour,
    /// Chunk responses held back by a slow peer, with when to send them.
    delayed: Vec<(Instant, request_response::ResponseChannel<ContentResponse>, ContentResponse)>,
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
    pub fn new(trust: TrustStore, chunks: ChunkStore, auto_fetch: bool) -> Self {
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
            collect_reports: false,
            provider_lookups: HashMap::new(),
            rejected_manifests: BTreeMap::new(),
            rejected_chunks: BTreeMap::new(),
            pending_publish: Vec::new(),
            seed_goal: None,
            misbehaviour: Misbehaviour::Honest,
            delayed: Vec::new(),
        }
    }

    /// Apps whose release topics this node follows.
    pub fn trusted_apps(&self) -> Vec<String> {
        self.trust.apps().map(str::to_string).collect()
    }

    pub fn release(&self, app: &str) -> Option<&Admitted> {
        self.releases.get(app)
    }

    /// The artifact of the first release this node seeds.
    pub fn seeded_content(&self) -> Option<Digest> {
        self.releases
            .values()
            .map(|a| a.manifest.payload().artifact.content_hash)
            .find(|c| self.held.get(c).is_some_and(StoredArtifact::is_complete) && !self.downloads.contains_key(c))
    }

    /// Whether the vendor's replication goal is met.
    pub fn replicated(&self) -> bool {
        self.seed_goal.as_ref().is_some_and(|g| g.replicated.len() >= g.replicas)
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

impl Node {
    /// Loads stored releases (re-checked: a manifest that expired while we were down is
    /// dropped) and resumes wanted downloads.
    pub(super) fn restore_releases(&mut self) -> Result<(), crate::store::StoreError> {
        let now = overlay::now();
        for (app, bytes) in self.store.releases()? {
            match check_release_message(&bytes, &app, now) {
                Ok(ReleaseMessage::Manifest(m)) if self.dist.trust.admit(&m, Some(&app), None, now).is_ok() => {
                    self.dist.releases.insert(app, Admitted { manifest: m, bytes });
                }
                _ => warn!(app, "stored release no longer valid; forgotten"),
            }
        }
        for (content, app) in self.store.wanted()? {
            let wanted = self.dist.releases.get(&app).is_some_and(|a| {
                let m = a.manifest.payload();
                m.artifact.content_hash.to_hex() == content
                    || m.test_bundle.as_ref().is_some_and(|b| b.content_hash.to_hex() == content)
            });
            if wanted {
                self.fetch_release(&app);
            } else {
                let _ = self.store.set_wanted(&content, &app, false);
            }
        }
        Ok(())
    }

    /// A vendor's own release: imported (and so verified) into the chunk store, admitted
    /// like any other, provided on the DHT and published on the release topic.
    pub(super) fn seed_release(&mut self, seed: &SeedRelease) -> Result<(), String> {
        let env = Envelope::from_bytes(&seed.envelope).map_err(|e| e.to_string())?;
        let manifest = env.verify::<UpgradeManifest>().map_err(|e| e.to_string())?;
        let m = manifest.payload().clone();
        self.dist.trust.trust(&m.app, *manifest.signer());
        let stored = self.dist.chunks.import(&m.artifact, &seed.artifact).map_err(|e| e.to_string())?;
        self.dist.held.insert(m.artifact.content_hash, stored);
        if let (Some(info), Some(path)) = (&m.test_bundle, &seed.bundle) {
            let stored = self.dist.chunks.import(info, path).map_err(|e| e.to_string())?;
            self.dist.held.insert(info.content_hash, stored);
        }
        for info in std::iter::once(&m.artifact).chain(m.test_bundle.as_ref()) {
            if let Err(e) =
                self.swarm.behaviour_mut().kad.start_providing(overlay::content_record_key(&info.content_hash))
            {
                warn!(error = %e, "cannot register as content provider");
            }
        }
        self.follow_release_topic(&m.app);
        self.dist.releases.insert(m.app.clone(), Admitted { manifest, bytes: seed.envelope.clone() });
        if let Err(e) = self.store.put_release(&m.app, &seed.envelope) {
            warn!(error = %e, "cannot store release");
        }
        self.dist.pending_publish.push((m.app.clone(), seed.envelope.clone()));
        info!(app = m.app, version = %m.version, content = %m.artifact.content_hash, size = m.artifact.size, "seeding release");
        Ok(())
    }

    pub(super) fn follow_release_topic(&mut self, app: &str) {
        if let Err(e) = overlay::subscribe_app(&mut self.swarm.behaviour_mut().gossipsub, overlay::release_topic(app)) {
            warn!(app, error = %e, "cannot subscribe to release topic");
        }
    }

    /// A message on a release topic.
    pub(super) fn on_release_message(&mut self, app: &str, from: PeerId, bytes: &[u8]) -> gossipsub::MessageAcceptance {
        let _span = info_span!("release", from = %from, app).entered();
        match check_release_message(bytes, app, overlay::now()) {
            Ok(ReleaseMessage::TestReport(report)) => self.on_test_report(app, report, bytes),
            Ok(ReleaseMessage::ProblemReport(report)) => self.on_problem_report(app, report, bytes),
            _ => self.admit_manifest(bytes, app, true),
        }
    }

    /// Checks and, if trusted and newer, admits a manifest. `counted` says whether a
    /// refusal counts (gossip: yes; a peer's answer to our manifest request: only real
    /// attacks, since an honest peer may simply not have heard of the newer release).
    fn admit_manifest(&mut self, bytes: &[u8], app: &str, counted: bool) -> gossipsub::MessageAcceptance {
        let now = overlay::now();
        let manifest = match check_release_message(bytes, app, now) {
            Ok(ReleaseMessage::Manifest(m)) => m,
            Ok(_) => return gossipsub::MessageAcceptance::Ignore,
            Err(reason) => {
                *self.dist.rejected_manifests.entry(drop_name(reason)).or_default() += 1;
                warn!(reason = drop_name(reason), "refused release message");
                return gossipsub::MessageAcceptance::Reject;
            }
        };
        let current = self.dist.releases.get(app).map(|a| a.manifest.payload().version.clone());
        if let Err(rejection) = self.dist.trust.admit(&manifest, Some(app), current.as_ref(), now) {
            // The same version again is a republication (or a second path to us), not an
            // attack: neither counted nor penalized.
            let same = matches!(&rejection, ManifestRejection::NotNewer { version, current, .. } if version == current);
            if same {
                debug!(%rejection, "release already known");
            } else if counted || !matches!(rejection, ManifestRejection::NotNewer { .. }) {
                *self.dist.rejected_manifests.entry(rejection_name(&rejection)).or_default() += 1;
                warn!(%rejection, "refused manifest");
            }
            return match rejection {
                ManifestRejection::NoTrustForApp(_) => gossipsub::MessageAcceptance::Ignore,
                ManifestRejection::NotNewer { .. } if same => gossipsub::MessageAcceptance::Ignore,
                _ => gossipsub::MessageAcceptance::Reject,
            };
        }
        let m = manifest.payload();
        info!(version = %m.version, signer = %manifest.signer().peer_id(), content = %m.artifact.content_hash,
            size = m.artifact.size, "release admitted");
        if let Err(e) = self.store.put_release(app, bytes) {
            warn!(error = %e, "cannot store release");
        }
        if let Some(old) = self.dist.releases.remove(app) {
            self.drop_release_content(&old);
        }
        self.dist.releases.insert(app.to_string(), Admitted { manifest, bytes: bytes.to_vec() });
        if self.dist.misbehaviour.lies() {
            self.provide_release(app);
        }
        if self.staging.manages(app) {
            self.staging_manifest(app);
        } else if self.dist.auto_fetch {
            self.fetch_release(app);
        }
        gossipsub::MessageAcceptance::Accept
    }

    /// Stops downloading a superseded release (what is on disk stays, to be served).
    fn drop_release_content(&mut self, old: &Admitted) {
        let m = old.manifest.payload();
        for info in std::iter::once(&m.artifact).chain(m.test_bundle.as_ref()) {
            if self.dist.downloads.get(&info.content_hash).is_some_and(|d| d.finished.is_none()) {
                self.dist.downloads.remove(&info.content_hash);
                let _ = self.store.set_wanted(&info.content_hash.to_hex(), &m.app, false);
            }
        }
    }

    fn provide_release(&mut self, app: &str) {
        let Some(a) = self.dist.releases.get(app) else { return };
        let m = a.manifest.payload();
        let keys: Vec<Digest> =
            std::iter::once(&m.artifact).chain(m.test_bundle.as_ref()).map(|i| i.content_hash).collect();
        for k in keys {
            let _ = self.swarm.behaviour_mut().kad.start_providing(overlay::content_record_key(&k));
        }
    }

    /// Starts (or resumes) downloading the admitted release of `app`: its artifact and
    /// test bundle. Returns the version, or why not.
    pub(super) fn fetch_release(&mut self, app: &str) -> Option<semver::Version> {
        let a = self.dist.releases.get(app)?;
        let m = a.manifest.payload().clone();
        let parts = std::iter::once(("artifact", &m.artifact)).chain(m.test_bundle.as_ref().map(|b| ("tests", b)));
        for (what, info) in parts {
            if let Err(e) = self.start_download(&m, what, info) {
                warn!(app, version = %m.version, error = %e, "cannot start download");
                return None;
            }
        }
        Some(m.version)
    }

    fn start_download(
        &mut self,
        m: &UpgradeManifest,
        what: &'static str,
        info: &ArtifactInfo,
    ) -> Result<(), crate::chunk_store::StoreError> {
        let content = info.content_hash;
        if self.dist.downloads.contains_key(&content) {
            return Ok(());
        }
        if !self.dist.held.contains_key(&content) {
            let stored = self.dist.chunks.open_artifact(info)?;
            self.dist.held.insert(content, stored);
        }
        let stored = &self.dist.held[&content];
        let have = stored.have().to_vec();
        let complete = stored.is_complete();
        let download = Download::new(info.clone(), have, rand::random())
            .with_limits(PER_PEER_IN_FLIGHT, crate::net::CHUNK_REQUEST_TIMEOUT);
        let (got, total) = download.progress();
        self.dist.downloads.insert(
            content,
            ActiveDownload {
                app: m.app.clone(),
                version: m.version.clone(),
                what,
                download,
                started: Instant::now(),
                finished: complete.then_some(Duration::ZERO),
                last_have_poll: None,
                last_provider_poll: None,
                holders: BTreeSet::new(),
                heard: HashMap::new(),
                bytes: 0,
            },
        );
        // Providing from the start lets other receivers find our partial copy.
        let _ = self.swarm.behaviour_mut().kad.start_providing(overlay::content_record_key(&content));
        if complete {
            return Ok(());
        }
        if let Err(e) = self.store.set_wanted(&content.to_hex(), &m.app, true) {
            warn!(error = %e, "cannot record wanted artifact");
        }
        info!(app = m.app, version = %m.version, what, %content, chunks = total, resumed = got, "download started");
        Ok(())
    }

    /// Periodic work: provider searches, have polls, timeouts, new requests, publishing.
    pub(super) fn distribution_tick(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.dist.delayed).into_iter().partition(|d| d.0 <= now);
        self.dist.delayed = later;
        for (_, channel, response) in due {
            let _ = self.swarm.behaviour_mut().content.send_response(channel, response);
        }
        let pending = std::mem::take(&mut self.dist.pending_publish);
        for (app, bytes) in pending {
            match self.swarm.behaviour_mut().gossipsub.publish(overlay::release_topic(&app), bytes.clone()) {
                Ok(_) | Err(gossipsub::PublishError::Duplicate) => info!(app, "release published"),
                Err(e) => {
                    debug!(app, error = %e, "release not published yet; will retry");
                    self.dist.pending_publish.push((app, bytes));
                }
            }
        }
        let active: Vec<Digest> =
            self.dist.downloads.iter().filter(|(_, d)| d.finished.is_none()).map(|(k, _)| *k).collect();
        for content in active {
            let Some(d) = self.dist.downloads.get_mut(&content) else { continue };
            let providers_due = d.last_provider_poll.is_none_or(|t| now - t >= PROVIDER_POLL);
            let have_due = d.last_have_poll.is_none_or(|t| now - t >= HAVE_POLL);
            if providers_due {
                d.last_provider_poll = Some(now);
            }
            if have_due {
                d.last_have_poll = Some(now);
            }
            d.download.on_tick(overlay::now());
            if providers_due {
                let id = self.swarm.behaviour_mut().kad.get_providers(overlay::content_record_key(&content));
                self.dist.provider_lookups.insert(id, content);
            }
            if have_due {
                let d = &self.dist.downloads[&content];
                let stale = |p: &PeerId| d.heard.get(p).is_none_or(|t| now - *t >= HAVE_POLL);
                let known: Vec<PeerId> =
                    d.holders.iter().filter(|p| !d.download.is_banned(p) && stale(p)).copied().collect();
                for p in known {
                    self.ask_have(p, content);
                }
            }
            self.pump(content);
        }
        if let Some(goal) = &mut self.dist.seed_goal {
            if goal.last_poll.is_none_or(|t| now - t >= Duration::from_secs(1)) {
                goal.last_poll = Some(now);
                let content = goal.content;
                let id = self.swarm.behaviour_mut().kad.get_providers(overlay::content_record_key(&content));
                self.dist.provider_lookups.insert(id, content);
            }
        }
    }

    fn ask_have(&mut self, peer: PeerId, content: Digest) {
        if peer == self.local_peer {
            return;
        }
        let id = self.swarm.behaviour_mut().content.send_request(&peer, ContentRequest::Have { content });
        self.dist.have_requests.insert(id, content);
    }

    /// Providers of `content` found on the DHT: ask each which chunks it holds.
    pub(super) fn on_content_providers(
        &mut self,
        id: &kad::QueryId,
        providers: &std::collections::HashSet<PeerId>,
    ) -> bool {
        let Some(content) = self.dist.provider_lookups.get(id).copied() else { return false };
        let seeding = self.dist.seed_goal.as_ref().is_some_and(|g| g.content == content);
        for p in providers {
            let downloading = self.dist.downloads.get(&content).is_some_and(|d| d.finished.is_none());
            let replicated = self.dist.seed_goal.as_ref().is_some_and(|g| g.replicated.contains(p));
            if (downloading || (seeding && !replicated)) && *p != self.local_peer {
                self.ask_have(*p, content);
            }
        }
        true
    }

    pub(super) fn forget_lookup(&mut self, id: &kad::QueryId) {
        self.dist.provider_lookups.remove(id);
    }

    /// Sends the requests the download plan wants now.
    fn pump(&mut self, content: Digest) {
        let Some(d) = self.dist.downloads.get_mut(&content) else { return };
        if d.finished.is_some() {
            return;
        }
        let requests = d.download.next_requests(overlay::now());
        for (peer, index) in requests {
            let id = self
                .swarm
                .behaviour_mut()
                .content
                .send_request(&peer, ContentRequest::Chunk { content, index: index as u32 });
            self.dist.chunk_requests.insert(id, (content, index));
        }
    }

    pub(super) fn on_peer_connected(&mut self, peer: PeerId) {
        for app in self.dist.trusted_apps() {
            let id =
                self.swarm.behaviour_mut().content.send_request(&peer, ContentRequest::Manifest { app: app.clone() });
            self.dist.manifest_requests.insert(id, app.clone());
            if self.dist.collect_reports {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .content
                    .send_request(&peer, ContentRequest::Reports { app: app.clone() });
                self.dist.report_requests.insert(id, app);
            }
        }
    }

    pub(super) fn on_peer_disconnected(&mut self, peer: &PeerId) {
        for d in self.dist.downloads.values_mut() {
            d.download.peer_gone(peer);
        }
    }

    pub(super) fn on_content(&mut self, event: request_response::Event<ContentRequest, ContentResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let chunk = matches!(request, ContentRequest::Chunk { .. });
                    let response = self.serve(request);
                    if chunk && self.dist.misbehaviour == Misbehaviour::Slow {
                        self.dist.delayed.push((Instant::now() + SLOW_SERVE_DELAY, channel, response));
                    } else {
                        let _ = self.swarm.behaviour_mut().content.send_response(channel, response);
                    }
                }
                request_response::Message::Response { request_id, response } => {
                    self.on_content_response(peer, request_id, response)
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some((content, index)) = self.dist.chunk_requests.remove(&request_id) {
                    debug!(%peer, index, %error, "chunk request failed");
                    if let Some(d) = self.dist.downloads.get_mut(&content) {
                        d.download.on_failure(&peer, index);
                    }
                    self.pump(content);
                }
                self.dist.have_requests.remove(&request_id);
                self.dist.manifest_requests.remove(&request_id);
                self.dist.report_requests.remove(&request_id);
            }
            _ => {}
        }
    }

    fn serve(&mut self, request: ContentRequest) -> ContentResponse {
        match request {
            ContentRequest::Reports { app } => {
                let reports = self.problem_reports(&app);
                if reports.is_empty() {
                    ContentResponse::NotFound
                } else {
                    ContentResponse::Reports(reports)
                }
            }
            ContentRequest::Manifest { app } => self
                .dist
                .releases
                .get(&app)
                .map_or(ContentResponse::NotFound, |a| ContentResponse::Manifest(a.bytes.clone())),
            ContentRequest::Have { content } => {
                if self.dist.misbehaviour.lies() {
                    if let Some(info) = self.dist.artifact_info(&content) {
                        return ContentResponse::Have(pack_bitmap(&vec![true; info.chunk_count()]));
                    }
                }
                self.dist
                    .held
                    .get(&content)
                    .map_or(ContentResponse::NotFound, |s| ContentResponse::Have(pack_bitmap(s.have())))
            }
            ContentRequest::Chunk { content, index } => {
                let index = index as usize;
                if self.dist.misbehaviour.lies() {
                    if let Some(bad) = self.bad_chunk(&content, index) {
                        let info = self.dist.artifact_info(&content).map_or(0, ArtifactInfo::chunk_count);
                        return ContentResponse::Chunk { data: Arc::new(bad), have: pack_bitmap(&vec![true; info]) };
                    }
                }
                match self.dist.held.get(&content) {
                    Some(s) if s.have().get(index).copied().unwrap_or(false) => match s.read_chunk(index) {
                        Ok(data) => ContentResponse::Chunk { data, have: pack_bitmap(s.have()) },
                        Err(e) => {
                            warn!(%content, index, error = %e, "cannot read chunk to serve");
                            ContentResponse::NotFound
                        }
                    },
                    _ => ContentResponse::NotFound,
                }
            }
        }
    }

    /// What a misbehaving peer serves instead of chunk `index` of `content`.
    fn bad_chunk(&self, content: &Digest, index: usize) -> Option<Vec<u8>> {
        let info = self.dist.artifact_info(content)?;
        let len = info.chunk_len(index)? as usize;
        let real = self.dist.held.get(content).filter(|s| s.have()[index]).and_then(|s| s.read_chunk(index).ok());
        let noise = || (0..len).map(|i| (i as u8).wrapping_mul(31) ^ 0x5a).collect::<Vec<u8>>();
        Some(match self.dist.misbehaviour {
            Misbehaviour::Honest | Misbehaviour::Slow => return None,
            Misbehaviour::Corrupt => {
                let mut bytes = real.map_or_else(noise, |r| r.as_ref().clone());
                bytes[len / 2] ^= 0xff;
                bytes
            }
            Misbehaviour::Endless => {
                let mut bytes = real.map_or_else(noise, |r| r.as_ref().clone());
                bytes.resize(len + (1 << 20), 0xee);
                bytes
            }
            Misbehaviour::Mix => {
                let other = self
                    .dist
                    .held
                    .iter()
                    .filter(|(k, s)| *k != content && s.have().get(index).copied().unwrap_or(false))
                    .find_map(|(_, s)| s.read_chunk(index).ok());
                other.map_or_else(noise, |o| o.as_ref().clone())
            }
        })
    }

    fn on_content_response(
        &mut self,
        peer: PeerId,
        id: request_response::OutboundRequestId,
        response: ContentResponse,
    ) {
        if let Some(app) = self.dist.manifest_requests.remove(&id) {
            if let ContentResponse::Manifest(bytes) = response {
                let _span = info_span!("release", from = %peer, app).entered();
                if self.admit_manifest(&bytes, &app, false) == gossipsub::MessageAcceptance::Reject {
                    self.penalize(peer);
                }
            }
            return;
        }
        if let Some(app) = self.dist.report_requests.remove(&id) {
            if let ContentResponse::Reports(reports) = response {
                let now = overlay::now();
                for bytes in reports.iter().take(256) {
                    match check_release_message(bytes, &app, now) {
                        Ok(ReleaseMessage::ProblemReport(r)) => {
                            self.on_problem_report(&app, r, bytes);
                        }
                        _ => debug!(%peer, "peer sent something other than a problem report"),
                    }
                }
            }
            return;
        }
        if let Some(content) = self.dist.have_requests.remove(&id) {
            self.on_have(peer, content, response);
            return;
        }
        let Some((content, index)) = self.dist.chunk_requests.remove(&id) else { return };
        let Some(d) = self.dist.downloads.get_mut(&content) else { return };
        let data = match response {
            ContentResponse::Chunk { data, have } => {
                // What the sender holds now: no need to ask it separately.
                if let Some(held) = unpack_bitmap(&have, d.download.artifact().chunk_count()) {
                    let full = held.len() == d.download.artifact().chunk_count();
                    d.download.peer_has(peer, held);
                    if full {
                        d.holders.remove(&peer);
                    }
                    d.heard.insert(peer, Instant::now());
                }
                data
            }
            _ => {
                d.download.on_failure(&peer, index);
                self.pump(content);
                return;
            }
        };
        match d.download.on_chunk(&peer, index, &data) {
            ChunkVerdict::Accept(proof) => {
                let Some(stored) = self.dist.held.get_mut(&content) else { return };
                let len = data.len() as u64;
                if let Err(e) = stored.store_chunk(index, data, proof) {
                    warn!(%content, index, error = %e, "cannot store chunk");
                    d.download.on_failure(&peer, index);
                } else {
                    d.download.mark_stored(index);
                    d.bytes += len;
                }
                if d.download.is_complete() {
                    self.finish_download(content);
                }
            }
            ChunkVerdict::Duplicate => {}
            ChunkVerdict::Reject(r) => {
                let name = chunk_rejection_name(r);
                *self.dist.rejected_chunks.entry(name).or_default() += 1;
                warn!(%peer, %content, index, reason = name, bytes = data.len(), "refused chunk; peer banned from this download");
                self.penalize(peer);
            }
        }
        self.pump(content);
    }

    fn on_have(&mut self, peer: PeerId, content: Digest, response: ContentResponse) {
        let ContentResponse::Have(bits) = response else { return };
        let Some(info) = self.dist.artifact_info(&content) else { return };
        let Some(chunks) = unpack_bitmap(&bits, info.chunk_count()) else {
            debug!(%peer, "have bitmap of the wrong length");
            return;
        };
        let full = chunks.len() == info.chunk_count();
        if let Some(goal) = &mut self.dist.seed_goal {
            if goal.content == content && full && goal.replicated.insert(peer) {
                info!(%peer, replicas = goal.replicated.len(), wanted = goal.replicas, "peer holds a full copy");
            }
        }
        if let Some(d) = self.dist.downloads.get_mut(&content) {
            if d.finished.is_none() {
                d.heard.insert(peer, Instant::now());
                if !full {
                    d.holders.insert(peer);
                } else {
                    // A full copy never changes: no need to ask again.
                    d.holders.remove(&peer);
                }
                d.download.peer_has(peer, chunks);
                self.pump(content);
            }
        }
    }

    fn finish_download(&mut self, content: Digest) {
        let Some(d) = self.dist.downloads.get_mut(&content) else { return };
        let elapsed = d.started.elapsed();
        d.finished = Some(elapsed);
        let (app, version, what, bytes) = (d.app.clone(), d.version.clone(), d.what, d.bytes);
        // The fsync and whole-content check run off the event loop, so this node keeps
        // serving the swarm meanwhile; until they are done a restart re-verifies chunks.
        match self.dist.held.get(&content).map(StoredArtifact::finisher) {
            Some(Ok(finisher)) => {
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = finisher.run() {
                        tracing::error!(%content, error = %e, "finished artifact failed its final check");
                    }
                });
            }
            Some(Err(e)) => warn!(error = %e, "cannot finish artifact"),
            None => {}
        }
        if let Err(e) = self.store.set_wanted(&content.to_hex(), &app, false) {
            warn!(error = %e, "cannot update wanted artifacts");
        }
        let secs = elapsed.as_secs_f64().max(1e-3);
        info!(app, %version, what, %content, seconds = secs, mib_per_s = bytes as f64 / secs / 1048576.0, "download complete");
        if self.staging.manages(&app) {
            self.staging_content_check(&app);
        }
    }

    /// Where the admitted release of `app` has its artifact and test bundle, once both
    /// are complete on disk.
    pub(super) fn release_content(&self, app: &str) -> Option<(PathBuf, Option<PathBuf>)> {
        let m = self.dist.releases.get(app)?.manifest.payload();
        let path = |info: &ArtifactInfo| {
            self.dist.held.get(&info.content_hash).filter(|s| s.is_complete()).map(StoredArtifact::data_path)
        };
        let artifact = path(&m.artifact)?;
        let bundle = match &m.test_bundle {
            Some(info) => Some(path(info)?),
            None => None,
        };
        Some((artifact, bundle))
    }

    pub(super) fn set_misbehaviour(&mut self, mode: Misbehaviour) {
        self.dist.misbehaviour = mode;
        let apps: Vec<String> = self.dist.releases.keys().cloned().collect();
        if mode.lies() {
            for app in apps {
                self.provide_release(&app);
            }
        }
        warn!(?mode, "serving behaviour changed on request");
    }

    /// Download and release state for `mirage status`.
    pub(super) fn distribution_status(&self) -> serde_json::Value {
        let releases: Vec<serde_json::Value> = self
            .dist
            .releases
            .iter()
            .map(|(app, a)| {
                let m = a.manifest.payload();
                let parts: Vec<serde_json::Value> = std::iter::once(("artifact", &m.artifact))
                    .chain(m.test_bundle.as_ref().map(|b| ("tests", b)))
                    .map(|(what, info)| self.artifact_status(what, info))
                    .collect();
                serde_json::json!({
                    "app": app,
                    "version": m.version.to_string(),
                    "manifest_id": m.id().to_hex(),
                    "signer": a.manifest.signer().to_hex(),
                    "expires_at_ms": m.expires_at.0,
                    "content": parts,
                })
            })
            .collect();
        serde_json::json!({
            "releases": releases,
            "rejected_manifests": self.dist.rejected_manifests,
            "rejected_chunks": self.dist.rejected_chunks,
            "replicas": self.dist.seed_goal.as_ref().map(|g| g.replicated.len()),
        })
    }

    fn artifact_status(&self, what: &str, info: &ArtifactInfo) -> serde_json::Value {
        let content = info.content_hash;
        let stored = self.dist.held.get(&content);
        let have = stored.map_or(0, |s| s.have().iter().filter(|h| **h).count());
        let complete = stored.is_some_and(StoredArtifact::is_complete);
        let d = self.dist.downloads.get(&content);
        let state = match (complete, d) {
            (true, _) => "complete",
            (false, Some(_)) => "downloading",
            (false, None) => "not-requested",
        };
        let banned: Vec<String> = d
            .map(|d| self.swarm.connected_peers().filter(|p| d.download.is_banned(p)).map(|p| p.to_base58()).collect())
            .unwrap_or_default();
        serde_json::json!({
            "what": what,
            "content_hash": content.to_hex(),
            "size": info.size,
            "chunks": info.chunk_count(),
            "have_chunks": have,
            "bytes_done": (have as u64 * info.chunk_size as u64).min(info.size),
            "state": state,
            "path": complete.then(|| stored.map(|s| s.data_path().display().to_string())).flatten(),
            "seconds": d.and_then(|d| d.finished).map(|f| f.as_secs_f64()),
            "banned_peers": banned,
        })
    }
}

impl SeedGoal {
    pub fn new(content: Digest, replicas: usize) -> Self {
        SeedGoal { content, replicas, replicated: BTreeSet::new(), last_poll: None }
    }
}
