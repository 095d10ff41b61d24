//! Staged deployment on a node: drives the protocol core's [`Rollout`] for every app the
//! node manages (`--install-prefix`), and carries out what it asks: fetching, testing in
//! the bubblewrap sandbox, publishing signed test and problem reports, applying and
//! rolling back through the crash-safe [`Installer`].
//!
//! The core is fed, as its documentation asks: every admitted manifest, what the roster
//! shows (our cluster's live members, every cluster's size) once it is ready and each
//! time it changes, every verified test report (our own fed back), the completions of
//! long-running actions, and its timer. Every `Persist` is
//! written to the database before the actions after it are started.

use super::Node;
use crate::install::{ApplyOutcome, Installer};
use crate::sandbox::{Sandbox, TestRun as SandboxRun};
use libp2p::{gossipsub, PeerId};
use mirage_bootstrap::overlay;
use mirage_protocol::report::{Outcome, ProblemReport, RetestRequest, TestReport};
use mirage_protocol::staging::problems::Caps;
use mirage_protocol::staging::{
    self, Action, ApplyResult, ApplyStep, Event, Fault, NodeConfig, Phase, ProblemBook, Rollout, Snapshot, TestRun,
};
use mirage_protocol::{wire, ClusterKey, Digest, Envelope, Fingerprint, SignedPayload, UnixMillis, Verified};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{error, info, info_span, warn};

/// How often the roster's view is fed to the staging core at most.
const ROSTER_FEED: std::time::Duration = std::time::Duration::from_secs(1);

/// Most test reports for a release not known yet kept per app, to replay when it
/// comes (a report can outrun its manifest).
const MAX_EARLY_REPORTS: usize = 64;
/// Most test reports sent, and taken, in answer to a verdict request.
pub const MAX_VERDICTS: usize = 64;
/// What a vendor's request for problem reports may take: one wire message.
const VENDOR_ANSWER_BYTES: usize = mirage_protocol::wire::MAX_MESSAGE_BYTES - 1024;

/// The problem reports kept for the vendor for one app: which (the core's book) and
/// their bytes.
#[derive(Default)]
struct Problems {
    book: ProblemBook,
    bytes: BTreeMap<Digest, Vec<u8>>,
}

/// What became of a test report.
enum ReportFate {
    /// It counts in a gate: stored and relayed.
    Admitted,
    /// For a release not known yet: held (bounded) until it comes.
    Early,
    Refused,
}

/// What a long-running staging action reports back to the event loop.
pub enum Completion {
    /// `Err` carries why the tests could not run here (a fault of this node's).
    Tested {
        app: String,
        manifest: Digest,
        run: Result<TestRun, String>,
    },
    Applied {
        app: String,
        manifest: Digest,
        result: ApplyResult,
    },
}

struct AppRollout {
    rollout: Rollout,
    fingerprint: Fingerprint,
    /// What the roster last fed, so unchanged views are not fed again; from which
    /// membership.
    fed_from: String,
    fed_members: Vec<mirage_protocol::presence::Presence>,
    fed_sizes: BTreeMap<ClusterKey, u64>,
    next_feed: UnixMillis,
    timer: Option<UnixMillis>,
    /// Test reports the core admitted for the current release in our own cluster, by
    /// signer, for `mirage status` (the core holds every cluster's).
    reports: BTreeMap<mirage_protocol::PublicKey, Verified<TestReport>>,
    /// Reports for a release the core does not know yet, oldest first.
    early: std::collections::VecDeque<(Verified<TestReport>, Vec<u8>)>,
    /// The release the stored reports belong to (older ones are pruned).
    release: Option<Digest>,
    /// An action that needs the release's content, held until the download is done
    /// (after a restart the core re-issues work whose content must be opened again).
    waiting: Option<Action>,
}

pub struct Staging {
    installer: Option<Arc<Installer>>,
    sandbox: Option<Arc<Sandbox>>,
    root: PathBuf,
    work_dir: PathBuf,
    apps: BTreeSet<String>,
    rollouts: BTreeMap<String, AppRollout>,
    /// Problem reports kept per app for the vendor.
    problems: BTreeMap<String, Problems>,
    /// Problem reports not kept, per app and reason.
    problem_drops: BTreeMap<String, BTreeMap<&'static str, u64>>,
    completions: mpsc::UnboundedSender<Completion>,
    /// Reports to publish once the release topic has peers.
    pending: Vec<(String, Vec<u8>)>,
    /// Events the cores refused, per app and reason (`mirage status --json`).
    ignored: BTreeMap<String, BTreeMap<&'static str, u64>>,
}

impl Staging {
    /// `installer` is `None` when the node does not manage installs (no staging).
    pub fn new(
        installer: Option<Installer>,
        sandbox: Option<Sandbox>,
        root: PathBuf,
        work_dir: PathBuf,
        apps: BTreeSet<String>,
    ) -> (Self, mpsc::UnboundedReceiver<Completion>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let staging = Staging {
            installer: installer.map(Arc::new),
            sandbox: sandbox.map(Arc::new),
            root,
            work_dir,
            apps,
            rollouts: BTreeMap::new(),
            problems: BTreeMap::new(),
            problem_drops: BTreeMap::new(),
            completions: tx,
            pending: Vec::new(),
            ignored: BTreeMap::new(),
        };
        (staging, rx)
    }

    /// Whether this node stages and installs `app` itself.
    pub fn manages(&self, app: &str) -> bool {
        self.installer.is_some() && self.apps.contains(app)
    }

    pub fn installer(&self) -> Option<&Installer> {
        self.installer.as_deref()
    }
}

impl Node {
    /// The app's fingerprint is known (first scan, or changed): build its core, from the
    /// stored snapshot if there is one, and feed it everything the node already holds.
    pub(super) fn staging_fingerprint(&mut self, fingerprint: &Fingerprint) {
        let app = fingerprint.app().to_string();
        if !self.staging.manages(&app) {
            return;
        }
        if self.staging.rollouts.get(&app).is_some_and(|r| &r.fingerprint == fingerprint) {
            return;
        }
        let _span = info_span!("staging", app, cluster = %fingerprint.cluster_key()).entered();
        let scopes = self.apps.get(&app).map(|a| a.profile.scopes().iter().map(|(_, s)| s.clone()).collect());
        let config = NodeConfig {
            app: app.clone(),
            me: self.keypair.public(),
            fingerprint: fingerprint.clone(),
            scopes: scopes.unwrap_or_default(),
        };
        let snapshot = match self.store.snapshot(&app) {
            Ok(Some(bytes)) => match wire::decode::<Snapshot>(&bytes) {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!(error = %e, "stored staging state unreadable; starting afresh");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "cannot read staging state");
                None
            }
        };
        let (rollout, mut actions) = match snapshot {
            Some(s) => Rollout::restore(config, s, overlay::now()),
            None => (Rollout::new(config), Vec::new()),
        };
        // What the installer has in place after its recovery is what runs: the core
        // takes it over whatever its snapshot said.
        let installed = match self.staging.installer().map(|i| i.current(&app)).transpose() {
            Ok(v) => v.flatten(),
            Err(e) => {
                error!(error = %e, "cannot read the install journal");
                None
            }
        };
        let mut reports = Vec::new();
        let mut retests = Vec::new();
        let mut problems = Vec::new();
        for bytes in self.store.reports(&app).unwrap_or_default() {
            let Ok(env) = Envelope::from_bytes(&bytes) else { continue };
            if let Ok(r) = env.verify::<RetestRequest>() {
                if self.dist.trusts(&app, r.signer()) {
                    retests.push(r);
                }
            } else if let Ok(r) = env.verify::<TestReport>() {
                reports.push((r, bytes));
            } else if let Ok(p) = env.verify::<ProblemReport>() {
                problems.push((p, bytes));
            }
        }
        self.staging.rollouts.insert(
            app.clone(),
            AppRollout {
                rollout,
                fingerprint: fingerprint.clone(),
                fed_from: app.clone(),
                fed_members: Vec::new(),
                fed_sizes: BTreeMap::new(),
                next_feed: UnixMillis(0),
                timer: None,
                reports: BTreeMap::new(),
                early: std::collections::VecDeque::new(),
                release: None,
                waiting: None,
            },
        );
        info!(installed = ?installed.as_ref().map(|v| v.to_string()), "staging core ready");
        if let Some(r) = self.staging.rollouts.get_mut(&app) {
            actions.extend(r.rollout.handle(Event::Installed { version: installed }, overlay::now()));
        }
        self.staging_execute(&app, actions);
        // The release, the roster's view, then the stored messages in the core's order.
        self.staging_manifest(&app);
        self.staging_roster(&app);
        let stored: BTreeMap<Digest, Vec<u8>> = reports.iter().map(|(r, b)| (r.id(), b.clone())).collect();
        let reports = reports.into_iter().map(|(r, _)| r).collect();
        for event in staging::replay::replay(retests, reports, overlay::now()) {
            match event {
                Event::Report(r) => {
                    let bytes = stored.get(&r.id()).cloned().unwrap_or_default();
                    self.staging_feed_report(&app, r, &bytes);
                }
                other => self.staging_handle(&app, other),
            }
        }
        // After the reports: what backs a problem report is known by now. One the book
        // no longer takes (stale by now, say) leaves the store.
        let refused: BTreeSet<String> = problems
            .into_iter()
            .filter(|(p, bytes)| self.keep_problem(&app, p, bytes).is_err())
            .map(|(p, _)| p.id().to_hex())
            .collect();
        if !refused.is_empty() {
            if let Err(e) = self.store.retain_reports(&app, |id| !refused.contains(id)) {
                warn!(app, error = %e, "cannot forget problem reports");
            }
        }
    }

    fn staging_handle(&mut self, app: &str, event: Event) {
        let Some(r) = self.staging.rollouts.get_mut(app) else { return };
        let before = r.rollout.phase();
        let actions = r.rollout.handle(event, overlay::now());
        if let Some(why) = r.rollout.last_ignored() {
            tracing::debug!(app, %why, "staging event ignored");
            *self.staging.ignored.entry(app.to_string()).or_default().entry(why.name()).or_default() += 1;
        }
        let after = r.rollout.phase();
        if after != before {
            let version = r.rollout.status().target.map(|v| v.to_string()).unwrap_or_default();
            match after {
                Some(Phase::Halted) => {
                    warn!(app, %version, "cluster halted: a representative failed this release; it is not applied here")
                }
                Some(p) => info!(app, %version, phase = p.name(), "staging phase"),
                None => {}
            }
        }
        self.staging_execute(app, actions);
    }

    /// Feeds the admitted release of `app` to its core.
    pub(super) fn staging_manifest(&mut self, app: &str) {
        let Some(manifest) = self.dist.release(app).map(|a| a.manifest.clone()) else { return };
        if !self.staging.rollouts.contains_key(app) {
            return;
        }
        info!(app, version = %manifest.payload().version, policy = %manifest.payload().policy.kind, "release enters staging");
        self.staging_handle(app, Event::Manifest(manifest));
        self.staging_new_release(app);
    }

    /// Feeds `app`'s core what its roster shows, once the roster is ready (its view
    /// settled, and a whole epoch of summaries heard): the live members of our cluster
    /// with their standing, and every cluster's size from the signed summaries. Until
    /// then the core knows no cluster, so the node waits rather than plan its stages
    /// alone. At most once per [`ROSTER_FEED`], and only what changed: taking the
    /// members is a pass over our cluster, never a step per message.
    /// A release that names a scope of the profile is staged over that scope's
    /// membership instead of the app's (the core says which).
    pub(super) fn staging_roster(&mut self, app: &str) {
        let now = overlay::now();
        let Some(r) = self.staging.rollouts.get_mut(app) else { return };
        let from = &r.rollout.grouping().membership;
        if &r.fed_from != from {
            info!(app, membership = %from, "staging follows another membership");
            r.fed_from = from.clone();
            r.fed_members.clear();
            r.fed_sizes.clear();
        }
        let Some(roster) = self.membership.roster(from) else { return };
        if !roster.is_ready(now) || r.next_feed > now || roster.cluster() != Some(r.rollout.cluster()) {
            return;
        }
        r.next_feed = now.saturating_add(ROSTER_FEED);
        let cluster = r.rollout.cluster();
        let sizes = roster.sizes();
        let members = roster.members(now);
        let mut events = Vec::new();
        if r.fed_sizes != sizes {
            info!(app, clusters = sizes.len(), "cluster sizes for staging");
            r.fed_sizes = sizes.clone();
            events.push(Event::Sizes(sizes));
        }
        if r.fed_members != members {
            info!(app, %cluster, live = members.len(), "cluster members for staging");
            r.fed_members = members.clone();
            events.push(Event::Members { cluster, members });
        }
        for event in events {
            self.staging_handle(app, event);
        }
    }

    /// Feeds every managed app what its roster shows now.
    pub(super) fn staging_rosters(&mut self) {
        let apps: Vec<String> = self.staging.rollouts.keys().cloned().collect();
        for app in apps {
            self.staging_roster(&app);
        }
    }

    /// A test report from the release topic. Kept (stored, relayed, shown) only when the
    /// core admits it: a stranger's report that counts nowhere costs nothing but its
    /// check, and nobody else is sent it.
    pub(super) fn on_test_report(
        &mut self,
        app: &str,
        report: Verified<TestReport>,
        bytes: &[u8],
    ) -> gossipsub::MessageAcceptance {
        // (Stale reports were refused by the channel's rules, as every relay refuses them.)
        if !self.staging.manages(app) {
            return gossipsub::MessageAcceptance::Accept;
        }
        match self.staging_feed_report(app, report, bytes) {
            ReportFate::Admitted => gossipsub::MessageAcceptance::Accept,
            // Not judged yet, or judged worthless by the rules every node applies: not
            // forwarded, and no fault of the peer that relayed it.
            ReportFate::Early | ReportFate::Refused => gossipsub::MessageAcceptance::Ignore,
        }
    }

    fn staging_feed_report(&mut self, app: &str, report: Verified<TestReport>, bytes: &[u8]) -> ReportFate {
        let p = report.payload();
        let (id, manifest, signer, cluster, outcome) =
            (report.id(), p.manifest_id, *report.signer(), p.cluster_key, p.outcome);
        tracing::debug!(app, signer = %signer.peer_id(), version = %p.version, %cluster, outcome = outcome.name(), "test report");
        self.staging_handle(app, Event::Report(report.clone()));
        let Some(r) = self.staging.rollouts.get_mut(app) else { return ReportFate::Refused };
        match r.rollout.last_ignored() {
            None => {}
            Some(staging::Ignored::Report(mirage_protocol::staging::ReportRejected::OtherUpgrade))
                if r.rollout.campaign().release().is_none_or(|rel| rel.manifest.version < report.payload().version) =>
            {
                if r.early.len() >= MAX_EARLY_REPORTS {
                    r.early.pop_front();
                }
                r.early.push_back((report, bytes.to_vec()));
                return ReportFate::Early;
            }
            Some(_) => return ReportFate::Refused,
        }
        if cluster == r.rollout.cluster() {
            r.reports.insert(signer, report);
        }
        if let Err(e) = self.store.put_report(app, &id.to_hex(), bytes) {
            warn!(error = %e, "cannot store test report");
        }
        info!(app, signer = %signer.peer_id(), %cluster, outcome = outcome.name(), "test report counts");
        if outcome == Outcome::Fail {
            let problems = self.staging.problems.entry(app.to_string()).or_default();
            let evicted = problems.book.vouch(&manifest, &signer);
            self.forget_problems(app, &evicted);
        }
        ReportFate::Admitted
    }

    /// A new release came: what was kept for the old one goes, and reports that waited
    /// for it are judged.
    fn staging_new_release(&mut self, app: &str) {
        let Some(r) = self.staging.rollouts.get_mut(app) else { return };
        let current = r.rollout.campaign().release().map(|rel| rel.id);
        if r.release == current {
            return;
        }
        r.release = current;
        r.reports.clear();
        let early: Vec<_> = std::mem::take(&mut r.early).into();
        self.prune_stored_reports(app);
        for (report, bytes) in early {
            self.staging_feed_report(app, report, &bytes);
        }
        self.staging_ask_verdicts(app);
    }

    /// The verdict this node's cluster reached while it was away (or before it heard
    /// the release) was gossiped without it: ask a few connected cluster-mates (else
    /// any peers) for the reports that count in our gate. The answers go through the
    /// same checks as gossip.
    fn staging_ask_verdicts(&mut self, app: &str) {
        let now = overlay::now();
        let Some(r) = self.staging.rollouts.get(app) else { return };
        let Some(manifest) = r.rollout.campaign().release().map(|rel| rel.id) else { return };
        let membership = r.rollout.grouping().membership.clone();
        let mates: Vec<PeerId> = self
            .membership
            .roster(&membership)
            .map(|roster| roster.members(now))
            .unwrap_or_default()
            .iter()
            .map(|m| overlay::peer_id_of(&m.peer))
            .filter(|p| *p != self.local_peer && self.swarm.is_connected(p))
            .collect();
        let others: Vec<PeerId> = self.swarm.connected_peers().copied().filter(|p| !mates.contains(p)).collect();
        for peer in self.dist.verdict_asks.choose(manifest, mates.into_iter().chain(others), now) {
            self.send_verdicts_request(app, peer, manifest);
        }
    }

    /// Every period of the core's rules, asks again for the verdicts of releases whose
    /// gate here is still undecided.
    fn staging_reask_verdicts(&mut self) {
        if !self.dist.verdict_asks.round_due(overlay::now()) {
            return;
        }
        let undecided = self.releases_awaiting_verdict(|v| v == Some(staging::Verdict::Pending));
        for (app, _) in undecided {
            self.staging_ask_verdicts(&app);
        }
    }

    /// Asks a peer that just connected, if a release of ours still waits on its gate.
    pub(super) fn staging_ask_verdicts_of(&mut self, peer: PeerId) {
        let waiting = self.releases_awaiting_verdict(|v| {
            v.is_none_or(|v| matches!(v, staging::Verdict::Pending | staging::Verdict::NotOpen))
        });
        let now = overlay::now();
        for (app, manifest) in waiting {
            if self.dist.verdict_asks.ask_new_peer(peer, manifest, now) {
                self.send_verdicts_request(&app, peer, manifest);
            }
        }
    }

    /// Each app's current release whose gate here is in a state `waiting` counts as
    /// undecided (`None`: the gate has no evaluation yet).
    fn releases_awaiting_verdict(&self, waiting: impl Fn(Option<staging::Verdict>) -> bool) -> Vec<(String, Digest)> {
        self.staging
            .rollouts
            .iter()
            .filter(|(_, r)| waiting(r.rollout.campaign().evaluation(&r.rollout.cluster()).map(|e| e.verdict)))
            .filter_map(|(app, r)| r.rollout.campaign().release().map(|rel| (app.clone(), rel.id)))
            .collect()
    }

    fn send_verdicts_request(&mut self, app: &str, peer: PeerId, manifest: Digest) {
        let Some(cluster) = self.staging.rollouts.get(app).map(|r| r.rollout.cluster()) else { return };
        let request = crate::net::ContentRequest::Verdicts { app: app.to_string(), manifest, cluster };
        let id = self.swarm.behaviour_mut().content.send_request(&peer, request);
        self.dist.verdict_requests.insert(id, app.to_string());
    }

    /// The test reports that count in `cluster`'s gate for `manifest`, as stored here
    /// (only admitted reports are stored), within one message.
    pub(super) fn verdicts(&self, app: &str, manifest: &Digest, cluster: &ClusterKey) -> Vec<Vec<u8>> {
        let Some(r) = self.staging.rollouts.get(app) else { return Vec::new() };
        if r.rollout.campaign().release().is_none_or(|rel| &rel.id != manifest) {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut used = 0;
        for bytes in self.store.reports(app).unwrap_or_default() {
            let Some((_, p)) = Envelope::from_bytes(&bytes).ok().and_then(|e| e.stored::<TestReport>()) else {
                continue;
            };
            if &p.manifest_id == manifest && &p.cluster_key == cluster && used + bytes.len() + 10 <= VENDOR_ANSWER_BYTES
            {
                used += bytes.len() + 10;
                out.push(bytes);
                if out.len() == MAX_VERDICTS {
                    break;
                }
            }
        }
        out
    }

    /// Drops stored test reports and retest requests of releases other than the
    /// current one (problem reports leave the store as the book lets them go).
    fn prune_stored_reports(&mut self, app: &str) {
        let Some(r) = self.staging.rollouts.get(app) else { return };
        let Some(current) = r.rollout.campaign().release().map(|rel| rel.id) else { return };
        let gone: BTreeSet<String> = self
            .store
            .reports(app)
            .unwrap_or_default()
            .iter()
            .filter_map(|bytes| {
                let env = Envelope::from_bytes(bytes).ok()?;
                let (id, manifest) = match (env.stored::<TestReport>(), env.stored::<RetestRequest>()) {
                    (Some((id, t)), _) => (id, t.manifest_id),
                    (_, Some((id, q))) => (id, q.manifest_id),
                    _ => return None,
                };
                (manifest != current).then(|| id.to_hex())
            })
            .collect();
        if gone.is_empty() {
            return;
        }
        match self.store.retain_reports(app, |id| !gone.contains(id)) {
            Ok(0) => {}
            Ok(n) => info!(app, removed = n, "pruned reports of older releases"),
            Err(e) => warn!(app, error = %e, "cannot prune stored reports"),
        }
    }

    /// The vendor's request to test a release again: only from a key trusted for the
    /// app, as for manifests. Kept with the reports, so a restart replays it.
    pub(super) fn on_retest(
        &mut self,
        app: &str,
        request: Verified<RetestRequest>,
        bytes: &[u8],
    ) -> gossipsub::MessageAcceptance {
        if !self.dist.trusts(app, request.signer()) {
            self.dist.count_rejection("untrusted_retest");
            warn!(app, signer = %request.signer().peer_id(), "refused a retest request from a key not trusted for the app");
            // Trust is ours to judge, not the relay's.
            return gossipsub::MessageAcceptance::Ignore;
        }
        if !self.staging.manages(app) {
            return gossipsub::MessageAcceptance::Accept;
        }
        let r = request.payload();
        info!(app, version = %r.version, clusters = r.clusters.len(), "the vendor asks to test again");
        if let Err(e) = self.store.put_report(app, &request.id().to_hex(), bytes) {
            warn!(error = %e, "cannot store the retest request");
        }
        self.staging_handle(app, Event::Retest(request));
        gossipsub::MessageAcceptance::Accept
    }

    /// A problem report from the release topic (or a peer's answer to our collector):
    /// kept for the vendor if the book has room for it, relayed only then.
    pub(super) fn on_problem_report(
        &mut self,
        app: &str,
        report: Verified<ProblemReport>,
        bytes: &[u8],
    ) -> gossipsub::MessageAcceptance {
        let p = report.payload();
        match self.keep_problem(app, &report, bytes) {
            Ok(()) => {
                info!(app, signer = %report.signer().peer_id(), version = %p.version, cluster = %p.cluster_key,
                    failed = ?p.failed_tests, "problem report, kept for the vendor");
                gossipsub::MessageAcceptance::Accept
            }
            Err(why) => {
                tracing::debug!(app, reason = why.name(), "problem report not kept");
                *self.staging.problem_drops.entry(app.to_string()).or_default().entry(why.name()).or_default() += 1;
                gossipsub::MessageAcceptance::Ignore
            }
        }
    }

    /// Offers a problem report to the app's book, vouched for when our core counts its
    /// signer's failure, or the signer is in our cluster; stores what the book keeps.
    fn keep_problem(
        &mut self,
        app: &str,
        report: &Verified<ProblemReport>,
        bytes: &[u8],
    ) -> Result<(), mirage_protocol::staging::ProblemDrop> {
        let (p, signer) = (report.payload(), report.signer());
        let vouched = self.dist.collect_reports
            || self.staging.rollouts.get(app).is_some_and(|r| {
                let campaign = r.rollout.campaign();
                campaign.failure_stands(&p.manifest_id, &p.cluster_key, signer)
                    || campaign.members(&r.rollout.cluster()).iter().any(|m| &m.peer == signer)
            });
        let caps = if self.dist.collect_reports { Caps::COLLECTOR } else { Caps::NODE };
        let problems = self
            .staging
            .problems
            .entry(app.to_string())
            .or_insert_with(|| Problems { book: ProblemBook::with_caps(caps), bytes: BTreeMap::new() });
        let evicted = problems.book.offer(report, bytes.len(), vouched, overlay::now())?;
        problems.bytes.insert(report.id(), bytes.to_vec());
        if !evicted.is_empty() {
            let drops = self.staging.problem_drops.entry(app.to_string()).or_default();
            *drops.entry("evicted").or_default() += evicted.len() as u64;
        }
        self.forget_problems(app, &evicted);
        if let Err(e) = self.store.put_report(app, &report.id().to_hex(), bytes) {
            warn!(error = %e, "cannot store problem report");
        }
        Ok(())
    }

    fn forget_problems(&mut self, app: &str, ids: &[Digest]) {
        let Some(problems) = self.staging.problems.get_mut(app) else { return };
        let mut gone = std::collections::BTreeSet::new();
        for id in ids {
            if problems.bytes.remove(id).is_some() {
                gone.insert(id.to_hex());
            }
        }
        if !gone.is_empty() {
            if let Err(e) = self.store.retain_reports(app, |id| !gone.contains(id)) {
                warn!(error = %e, "cannot forget problem reports");
            }
        }
    }

    /// The problem reports this node holds for `app` (signed envelopes), vouched ones
    /// first and newest first, as many as fit in `budget` bytes.
    pub(super) fn problem_reports(&self, app: &str, budget: usize) -> Vec<Vec<u8>> {
        let Some(problems) = self.staging.problems.get(app) else { return Vec::new() };
        problems.book.for_vendor(budget, 10).iter().filter_map(|id| problems.bytes.get(id).cloned()).collect()
    }

    /// What a vendor's collector is sent: one wire message's worth.
    pub(super) fn problem_reports_for_vendor(&self, app: &str) -> Vec<Vec<u8>> {
        self.problem_reports(app, VENDOR_ANSWER_BYTES)
    }

    /// Whether the release's content is all here; if so, tells the core, and carries out
    /// an action that was waiting for it.
    pub(super) fn staging_content_check(&mut self, app: &str) {
        let Some(id) = self.dist.release(app).map(|a| a.manifest.payload().id()) else { return };
        if self.release_content(app).is_none() {
            return;
        }
        let waiting = self.staging.rollouts.get_mut(app).and_then(|r| r.waiting.take());
        self.staging_handle(app, Event::ContentReady { manifest: id });
        if let Some(action) = waiting {
            self.staging_execute(app, vec![action]);
        }
    }

    /// The release's content for an action that needs it: opened (and fetched if it is
    /// not all on disk). `None` means the action waits until the content is complete.
    fn content_for(&mut self, app: &str, action: Action) -> Option<(PathBuf, Option<PathBuf>)> {
        if let Some(content) = self.release_content(app) {
            return Some(content);
        }
        if let Err(e) = self.try_fetch_release(app) {
            // Our disk cannot hold the release: a local fault, retried by the core,
            // never a verdict on the release.
            let reason = format!("cannot download the release: {e}");
            let event = match action {
                Action::RunTests { manifest } => Event::TestsCouldNotRun { manifest, reason },
                Action::Apply { manifest, .. } => Event::ApplyFinished {
                    manifest,
                    result: ApplyResult::failed(Fault::Local, ApplyStep::Unpack, reason),
                },
                _ => return None,
            };
            self.staging_handle(app, event);
            return None;
        }
        if let Some(content) = self.release_content(app) {
            return Some(content);
        }
        info!(app, "waiting for the release's content");
        if let Some(r) = self.staging.rollouts.get_mut(app) {
            r.waiting = Some(action);
        }
        None
    }

    /// The core's timers, checked on every tick.
    pub(super) fn staging_tick(&mut self) {
        let now = overlay::now();
        let due: Vec<String> = self
            .staging
            .rollouts
            .iter_mut()
            .filter(|(_, r)| r.timer.is_some_and(|t| t <= now))
            .map(|(app, r)| {
                r.timer = None;
                app.clone()
            })
            .collect();
        for app in due {
            self.staging_handle(&app, Event::Timer);
        }
        self.staging_reask_verdicts();
        let pending = std::mem::take(&mut self.staging.pending);
        for (app, bytes) in pending {
            if let Err(e) =
                self.swarm.behaviour_mut().overlay.gossipsub.publish(overlay::release_topic(&app), bytes.clone())
            {
                if !matches!(e, gossipsub::PublishError::Duplicate) {
                    self.staging.pending.push((app, bytes));
                }
            }
        }
    }

    pub(super) fn on_staging_completion(&mut self, completion: Completion) {
        match completion {
            Completion::Tested { app, manifest, run: Ok(run) } => {
                info!(
                    app,
                    outcome = run.outcome.name(),
                    tests = run.tests_run,
                    summary = run.summary,
                    "tests finished"
                );
                self.staging_handle(&app, Event::TestFinished { manifest, run });
            }
            Completion::Tested { app, manifest, run: Err(reason) } => {
                warn!(app, %reason, "could not test here (a local fault, not a verdict on the release)");
                self.staging_handle(&app, Event::TestsCouldNotRun { manifest, reason });
            }
            Completion::Applied { app, manifest, result } => {
                match &result {
                    ApplyResult::Healthy => info!(app, "upgrade applied"),
                    ApplyResult::Failed { fault: Fault::Release, step, output, .. } => {
                        warn!(app, step = step.name(), reason = %first_line(output), "upgrade not applied; the previous version runs")
                    }
                    ApplyResult::Failed { fault: Fault::Local, step, output, .. } => {
                        warn!(app, step = step.name(), reason = %first_line(output), "upgrade not applied (a local fault); will retry")
                    }
                }
                self.staging_handle(&app, Event::ApplyFinished { manifest, result });
            }
        }
    }

    fn staging_execute(&mut self, app: &str, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Persist(snapshot) => {
                    let stored = wire::encode(&*snapshot)
                        .map_err(|e| e.to_string())
                        .and_then(|bytes| self.store.put_snapshot(app, &bytes).map_err(|e| e.to_string()));
                    if let Err(e) = stored {
                        // Acting on state that is not durable could repeat or lose a step
                        // after a crash; stop here and let the next event retry.
                        error!(app, error = %e, "cannot persist staging state; holding back its actions");
                        return;
                    }
                }
                Action::Fetch { manifest } => {
                    if self.dist.release(app).is_some_and(|a| a.manifest.payload().id() == manifest) {
                        info!(app, "fetching the release");
                        self.fetch_release(app);
                        self.staging_content_check(app);
                    }
                }
                Action::RunTests { manifest } => self.start_tests(app, manifest),
                Action::PublishTestReport(report) => self.publish_test_report(app, report),
                Action::PublishProblemReport(report) => self.publish_problem_report(app, report),
                Action::Apply { manifest, version } => self.start_apply(app, manifest, version),
                Action::SetTimer(at) => {
                    if let Some(r) = self.staging.rollouts.get_mut(app) {
                        r.timer = Some(at);
                    }
                }
            }
        }
    }

    fn sign_and_publish<T: SignedPayload>(&mut self, app: &str, payload: &T) -> Option<Vec<u8>> {
        let bytes = match Envelope::sign(&self.keypair, payload, overlay::now()).and_then(|e| e.to_bytes()) {
            Ok(b) => b,
            Err(e) => {
                error!(app, error = %e, "cannot sign report");
                return None;
            }
        };
        if let Err(e) = self.swarm.behaviour_mut().overlay.gossipsub.publish(overlay::release_topic(app), bytes.clone())
        {
            tracing::debug!(app, error = %e, "report not published yet; will retry");
            self.staging.pending.push((app.to_string(), bytes.clone()));
        }
        Some(bytes)
    }

    fn publish_test_report(&mut self, app: &str, report: TestReport) {
        let Some(bytes) = self.sign_and_publish(app, &report) else { return };
        info!(app, outcome = report.outcome.name(), version = %report.version, "published test report");
        let verified = Envelope::from_bytes(&bytes).ok().and_then(|e| e.verify::<TestReport>().ok());
        if let Some(v) = verified {
            self.staging_feed_report(app, v, &bytes);
        }
    }

    /// Seals the draft's details to the release's vendor, signs and publishes it.
    fn publish_problem_report(&mut self, app: &str, draft: mirage_protocol::report::ProblemDraft) {
        let report = match draft.seal(&mut rand::rngs::OsRng) {
            Ok(r) => r,
            Err(e) => {
                error!(app, error = %e, "cannot seal the problem report to the vendor");
                return;
            }
        };
        let Some(bytes) = self.sign_and_publish(app, &report) else { return };
        warn!(app, version = %report.version, failed = ?report.failed_tests, "sent problem report to the vendor");
        if let Some(v) = Envelope::from_bytes(&bytes).ok().and_then(|e| e.verify::<ProblemReport>().ok()) {
            self.on_problem_report(app, v, &bytes);
        }
    }

    /// The files of the app's environment that tests get throw-away copies of.
    fn resources(&self, app: &str) -> Vec<PathBuf> {
        let Some(r) = self.staging.rollouts.get(app) else { return Vec::new() };
        crate::sandbox::resources_of(&r.fingerprint, &self.staging.root)
    }

    fn start_tests(&mut self, app: &str, manifest: Digest) {
        let Some(release) = self.dist.release(app).map(|a| a.manifest.payload().clone()) else { return };
        if release.id() != manifest {
            return;
        }
        let (Some(installer), Some(sandbox)) = (self.staging.installer.clone(), self.staging.sandbox.clone()) else {
            return;
        };
        let Some((artifact, bundle)) = self.content_for(app, Action::RunTests { manifest }) else { return };
        let resources = self.resources(app);
        // Other apps' files are none of this release's business.
        let hidden = self
            .apps
            .keys()
            .filter(|a| a.as_str() != app)
            .filter_map(|a| self.membership.local_fingerprint(a))
            .flat_map(|fp| crate::sandbox::resources_of(fp, &self.staging.root))
            .filter(|p| !resources.contains(p))
            .collect();
        let root = self.staging.root.clone();
        let work = self.staging.work_dir.join(manifest.to_hex());
        let tx = self.staging.completions.clone();
        let app = app.to_string();
        info!(app, version = %release.version, tests = release.tests.len(), "testing in the sandbox");
        tokio::task::spawn_blocking(move || {
            let files = Files { resources, hidden, root: &root, work: &work };
            let run = run_tests(&installer, &sandbox, &app, &release, &artifact, bundle.as_deref(), files);
            let _ = tx.send(Completion::Tested { app, manifest, run });
        });
    }

    fn start_apply(&mut self, app: &str, manifest: Digest, version: semver::Version) {
        let Some(installer) = self.staging.installer.clone() else { return };
        let Some(release) = self.dist.release(app).map(|a| a.manifest.payload().clone()) else { return };
        if release.id() != manifest {
            return;
        }
        let Some((artifact, bundle)) = self.content_for(app, Action::Apply { manifest, version: version.clone() })
        else {
            return;
        };
        let tests_dir = self.staging.work_dir.join(manifest.to_hex()).join("tests");
        let tx = self.staging.completions.clone();
        let app = app.to_string();
        info!(app, %version, "applying");
        tokio::task::spawn_blocking(move || {
            // The health check runs from the unpacked tests directory, where its
            // relative paths point.
            let health_dir = match &bundle {
                None => None,
                Some(b) => match unpack_once(b, &tests_dir) {
                    Ok(()) => Some(tests_dir.as_path()),
                    // Without its bundle the health check would run elsewhere and fail
                    // for the wrong reason; whose fault it is decides what happens next.
                    Err(e) => {
                        let output = format!("the test bundle does not unpack: {e}");
                        let result = ApplyResult::failed(e.fault(), ApplyStep::Unpack, output);
                        let _ = tx.send(Completion::Applied { app, manifest, result });
                        return;
                    }
                },
            };
            let result = match installer.apply_with_health_dir(
                &app,
                &version,
                &artifact,
                release.health_check.as_ref(),
                health_dir,
            ) {
                Ok(ApplyOutcome::Applied { .. }) => ApplyResult::Healthy,
                Ok(ApplyOutcome::NotApplied { fault, step, reason, output_excerpt }) => {
                    ApplyResult::failed(fault, step, format!("{reason}\n{output_excerpt}"))
                }
                // The installer could not even settle its own state (its journal, the
                // disk): this node's fault; its recovery runs before the retry.
                Err(e) => ApplyResult::failed(e.fault(), ApplyStep::Switch, format!("apply failed: {e}")),
            };
            let _ = tx.send(Completion::Applied { app, manifest, result });
        });
    }

    /// `mirage rollback`: one step back through the install history, then pinned there
    /// until the next release or `mirage unpin`. Refused while an apply is under way.
    pub(super) fn operator_rollback(&mut self, app: &str) -> Result<serde_json::Value, String> {
        let installer = self.staging.installer.clone().ok_or("this node manages no installs (no --install-prefix)")?;
        if !self.staging.apps.contains(app) {
            return Err(format!("this node runs no app `{app}`"));
        }
        // The pin lives in the app's staging core: without one yet (the app is not
        // fingerprinted), a rollback would be undone by the first release it hears.
        let Some(r) = self.staging.rollouts.get(app) else {
            return Err(format!("{app} is not fingerprinted yet; try again in a moment"));
        };
        if !r.rollout.may_roll_back() {
            return Err(format!("an upgrade of {app} is being applied; roll back once it has finished"));
        }
        let back = installer.rollback(app).map_err(|e| e.to_string())?;
        info!(app, to = %back.to, from = ?back.from.as_ref().map(|v| v.to_string()), "rolled back on request; pinned");
        self.staging_handle(app, Event::RolledBackByOperator { version: back.to.clone() });
        Ok(serde_json::json!({
            "app": app,
            "from": back.from.map(|v| v.to_string()),
            "version": back.to.to_string(),
            "pinned": true,
            "earlier": back.earlier.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        }))
    }

    /// `mirage unpin`: the app follows its cluster's releases again.
    pub(super) fn operator_unpin(&mut self, app: &str) -> Result<serde_json::Value, String> {
        let r = self.staging.rollouts.get(app).ok_or_else(|| format!("this node stages no app `{app}`"))?;
        let was = r.rollout.status().pin.map(|p| p.version.to_string());
        self.staging_handle(app, Event::Unpin);
        if let Some(version) = &was {
            info!(app, %version, "unpinned on request");
        }
        Ok(serde_json::json!({ "app": app, "was_pinned_to": was }))
    }

    /// Per-app staging state for `mirage status`.
    pub(super) fn staging_status(&self) -> serde_json::Value {
        let apps: Vec<serde_json::Value> = self
            .staging
            .rollouts
            .iter()
            .map(|(app, r)| {
                let s = r.rollout.status();
                let installed = self.staging.installer().and_then(|i| i.current(app).ok().flatten());
                let release = r.rollout.campaign().release();
                let cluster = r.rollout.cluster();
                let reports: Vec<serde_json::Value> = r
                    .reports
                    .values()
                    .filter(|rep| release.is_some_and(|rel| rel.id == rep.payload().manifest_id))
                    .filter(|rep| rep.payload().cluster_key == cluster)
                    .map(|rep| {
                        let p = rep.payload();
                        serde_json::json!({
                            "signer": rep.signer().peer_id(),
                            "version": p.version.to_string(),
                            "outcome": p.outcome.name(),
                            "summary": p.summary,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "app": app,
                    "cluster_key": cluster.to_hex(),
                    "installed": installed.map(|v| v.to_string()),
                    "running": s.running.map(|v| v.to_string()),
                    "target": s.target.map(|v| v.to_string()),
                    "phase": s.phase.map(|p| p.name()),
                    "representative": s.representative,
                    "stage": s.stage,
                    "stage_count": s.stage_count,
                    "open_stages": s.open_stages,
                    // What the core elects from: our cluster's members as last fed.
                    "members": r.rollout.campaign().members(&cluster).len(),
                    "verdict": s.verdict.map(verdict_name),
                    "pinned": s.pin.as_ref().map(|p| p.version.to_string()),
                    "ignored": self.staging.ignored.get(app).cloned().unwrap_or_default(),
                    "problem_reports": {
                        "kept": self.staging.problems.get(app).map_or(0, |p| p.book.len()),
                        "dropped": self.staging.problem_drops.get(app).cloned().unwrap_or_default(),
                    },
                    "local_fault": s.local_fault.as_ref().map(|f| serde_json::json!({
                        "during": f.during.name(),
                        "attempts": f.attempts,
                        "reason": f.reason,
                        "retry_at_ms": f.retry_at.map(|t| t.0),
                    })),
                    "reports": reports,
                })
            })
            .collect();
        serde_json::Value::Array(apps)
    }
}

/// A gate's verdict as a word for status output.
fn verdict_name(v: mirage_protocol::staging::Verdict) -> &'static str {
    use mirage_protocol::staging::Verdict;
    match v {
        Verdict::NotOpen => "not-open",
        Verdict::Pending => "pending",
        Verdict::Holds { .. } => "holds",
        Verdict::Halted { .. } => "halted",
    }
}

/// Unpacks an archive once into `dir` (kept for the manifest's lifetime).
fn unpack_once(tar: &Path, dir: &Path) -> Result<(), crate::install::InstallError> {
    if dir.is_dir() {
        return Ok(());
    }
    // A test run and an apply of the same release may unpack at once (an apply does
    // not wait for a representative's own run once its cluster holds): each unpacks
    // into its own partial directory, and whoever renames second keeps the first's.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = dir.with_extension(format!("partial-{}-{n}", std::process::id()));
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|source| crate::install::InstallError::Io { path: parent.to_path_buf(), source })?;
    }
    let _ = std::fs::remove_dir_all(&partial);
    mirage_artifact::unpack_safely(tar, &partial)?;
    match std::fs::rename(&partial, dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&partial);
            Ok(())
        }
        Err(source) => Err(crate::install::InstallError::Io { path: dir.to_path_buf(), source }),
    }
}

/// The first line of a multi-line reason, for one-line logs.
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// A failing run for content of the release that this node could not unpack: the
/// vendor's archive is broken, which is a verdict on the release.
fn broken_content(what: &str, e: &crate::install::InstallError) -> TestRun {
    let output = format!("{what}: {e}");
    TestRun {
        outcome: Outcome::Fail,
        summary: mirage_protocol::report::excerpt_tail(&output, 512),
        logs_digest: Digest::of(output.as_bytes()),
        tests_run: 0,
        duration_ms: 0,
        failed_tests: vec![ApplyStep::Unpack.name().to_string()],
        output,
    }
}

/// The files a test run involves on this machine.
struct Files<'a> {
    /// The app's, which tests get copies of.
    resources: Vec<PathBuf>,
    /// Other apps', which tests do not see.
    hidden: Vec<PathBuf>,
    root: &'a Path,
    /// Where the release's test bundle is unpacked.
    work: &'a Path,
}

/// Runs the release's tests. `Ok` is a verdict on the release (including an artifact
/// or bundle that does not unpack); `Err` is why this node could not test it (its disk,
/// its sandbox): never signed, retried by the core.
fn run_tests(
    installer: &Installer,
    sandbox: &Sandbox,
    app: &str,
    release: &mirage_protocol::manifest::UpgradeManifest,
    artifact: &Path,
    bundle: Option<&Path>,
    files: Files<'_>,
) -> Result<TestRun, String> {
    let Files { resources, hidden, root, work } = files;
    let new_version_dir = match installer.prepare(app, &release.version, artifact) {
        Ok(dir) => dir,
        Err(e) if e.fault() == Fault::Release => return Ok(broken_content("the artifact does not unpack", &e)),
        Err(e) => return Err(format!("preparing the new version: {e}")),
    };
    let old_version_dir = installer.current(app).map_err(|e| e.to_string())?.map(|v| installer.version_dir(app, &v));
    let bundle_dir = match bundle {
        Some(b) => {
            let dir = work.join("tests");
            std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
            match unpack_once(b, &dir) {
                Ok(()) => Some(dir),
                Err(e) if e.fault() == Fault::Release => {
                    return Ok(broken_content("the test bundle does not unpack", &e))
                }
                Err(e) => return Err(format!("unpacking the test bundle: {e}")),
            }
        }
        None => None,
    };
    let run = SandboxRun {
        app: app.to_string(),
        install_prefix: installer.prefix().to_path_buf(),
        old_version_dir,
        new_version_dir,
        resources,
        bundle_dir,
        tests: release.tests.clone(),
        machine_root: root.to_path_buf(),
        hidden,
    };
    // Every sandbox error is a setup error of this node's: a test that ran and failed
    // comes back as results, not as an error.
    let results = sandbox.run_tests(&run).map_err(|e| format!("the sandbox: {e}"))?;
    Ok(TestRun {
        outcome: if results.passed { Outcome::Pass } else { Outcome::Fail },
        summary: results.summary,
        logs_digest: results.logs_digest,
        tests_run: results.tests.len() as u32,
        duration_ms: results.tests.iter().map(|t| t.duration_ms).sum(),
        failed_tests: results.tests.iter().filter(|t| !t.passed).map(|t| t.name.clone()).collect(),
        output: results.failure_excerpt,
    })
}
