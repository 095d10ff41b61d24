//! Staged deployment on a node: drives the protocol core's [`Rollout`] for every app the
//! node manages (`--install-prefix`), and carries out what it asks: fetching, testing in
//! the bubblewrap sandbox, publishing signed test and problem reports, applying and
//! rolling back through the crash-safe [`Installer`].
//!
//! The core is fed, as its documentation asks: every admitted manifest, the clusters the
//! membership knows (each time they change), every verified test report (our own fed
//! back), the completions of long-running actions, and its timer. Every `Persist` is
//! written to the database before the actions after it are started.

use super::Node;
use crate::install::{ApplyOutcome, Installer};
use crate::sandbox::{Sandbox, TestRun as SandboxRun};
use libp2p::gossipsub;
use mirage_bootstrap::overlay;
use mirage_protocol::fingerprint::ResourceClass;
use mirage_protocol::report::{Outcome, ProblemReport, TestReport};
use mirage_protocol::staging::{Action, ApplyResult, Event, NodeConfig, Rollout, Snapshot, TestRun};
use mirage_protocol::{wire, ClusterKey, Digest, Envelope, Fingerprint, SignedPayload, UnixMillis, Verified};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{error, info, info_span, warn};

/// Test reports older than this are not fed to the core (a replay, or long stale).
const REPORT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
const REPORT_MAX_SKEW: Duration = Duration::from_secs(120);
/// Most problem reports a node keeps per app for the vendor.
const MAX_PROBLEMS: usize = 256;

/// What a long-running staging action reports back to the event loop.
pub enum Completion {
    Tested { app: String, manifest: Digest, run: TestRun },
    Applied { app: String, manifest: Digest, result: ApplyResult },
    RolledBack { app: String, manifest: Digest },
}

struct AppRollout {
    rollout: Rollout,
    fingerprint: Fingerprint,
    /// The clusters last fed, so unchanged views are not fed again.
    fed_clusters: BTreeMap<ClusterKey, Vec<mirage_protocol::PublicKey>>,
    timer: Option<UnixMillis>,
    /// Verified test reports seen for this app: (manifest id, signer) → report.
    reports: BTreeMap<(Digest, mirage_protocol::PublicKey), Verified<TestReport>>,
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
    /// Problem reports seen per app, as signed envelopes, for the vendor.
    problems: BTreeMap<String, BTreeMap<Digest, Vec<u8>>>,
    completions: mpsc::UnboundedSender<Completion>,
    /// Reports to publish once the release topic has peers.
    pending: Vec<(String, Vec<u8>)>,
    /// The membership generation last fed to the cores.
    fed_generation: Option<u64>,
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
            completions: tx,
            pending: Vec::new(),
            fed_generation: None,
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

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail => "fail",
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
        let config = NodeConfig { app: app.clone(), me: self.keypair.public(), fingerprint: fingerprint.clone() };
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
        let (rollout, actions) = match snapshot {
            Some(s) => Rollout::restore(config, s),
            None => (Rollout::new(config), Vec::new()),
        };
        let mut reports = BTreeMap::new();
        let now = overlay::now();
        for bytes in self.store.reports(&app).unwrap_or_default() {
            let Ok(env) = Envelope::from_bytes(&bytes) else { continue };
            if let Ok(r) = env.verify::<TestReport>() {
                if r.check_freshness(now, REPORT_MAX_AGE, REPORT_MAX_SKEW).is_ok() {
                    reports.insert((r.payload().manifest_id, *r.signer()), r);
                }
            } else if let Ok(p) = env.verify::<ProblemReport>() {
                self.staging.problems.entry(app.clone()).or_default().insert(p.id(), bytes);
            }
        }
        self.staging.rollouts.insert(
            app.clone(),
            AppRollout {
                rollout,
                fingerprint: fingerprint.clone(),
                fed_clusters: BTreeMap::new(),
                timer: None,
                reports: BTreeMap::new(),
                waiting: None,
            },
        );
        info!("staging core ready");
        self.staging_execute(&app, actions);
        // Replay in issue order: the release first, then memberships, then reports.
        self.staging_manifest(&app);
        self.staging_members(&app);
        let mut stored: Vec<Verified<TestReport>> = reports.into_values().collect();
        stored.sort_by_key(|r| r.issued_at());
        for r in stored {
            self.staging_feed_report(&app, r);
        }
    }

    fn staging_handle(&mut self, app: &str, event: Event) {
        let Some(r) = self.staging.rollouts.get_mut(app) else { return };
        let actions = r.rollout.handle(event, overlay::now());
        if let Some(why) = r.rollout.last_ignored() {
            tracing::debug!(app, %why, "staging event ignored");
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
    }

    /// Feeds the clusters of `app` that changed since the last feed.
    pub(super) fn staging_members(&mut self, app: &str) {
        let clusters = self.membership.clusters(app);
        let Some(r) = self.staging.rollouts.get_mut(app) else { return };
        let changed: Vec<(ClusterKey, Vec<mirage_protocol::PublicKey>)> =
            clusters.iter().filter(|(k, v)| r.fed_clusters.get(k) != Some(v)).map(|(k, v)| (*k, v.clone())).collect();
        // Clusters that emptied out are fed as empty.
        let gone: Vec<ClusterKey> = r.fed_clusters.keys().filter(|k| !clusters.contains_key(k)).copied().collect();
        r.fed_clusters = clusters;
        for (cluster, members) in &changed {
            info!(app, %cluster, size = members.len(), "cluster size for staging");
        }
        for (cluster, members) in changed {
            self.staging_handle(app, Event::Members { cluster, members });
        }
        for cluster in gone {
            self.staging_handle(app, Event::Members { cluster, members: Vec::new() });
        }
    }

    /// Feeds every managed app's clusters, if the membership changed since last time.
    pub(super) fn staging_all_members(&mut self) {
        let generation = self.membership.generation();
        if self.staging.fed_generation == Some(generation) {
            return;
        }
        self.staging.fed_generation = Some(generation);
        let apps: Vec<String> = self.staging.rollouts.keys().cloned().collect();
        for app in apps {
            self.staging_members(&app);
        }
    }

    /// A test report from the release topic.
    pub(super) fn on_test_report(
        &mut self,
        app: &str,
        report: Verified<TestReport>,
        bytes: &[u8],
    ) -> gossipsub::MessageAcceptance {
        if report.check_freshness(overlay::now(), REPORT_MAX_AGE, REPORT_MAX_SKEW).is_err() {
            warn!(signer = %report.signer().peer_id(), "stale test report dropped");
            return gossipsub::MessageAcceptance::Reject;
        }
        if !self.staging.manages(app) {
            return gossipsub::MessageAcceptance::Accept;
        }
        if let Err(e) = self.store.put_report(app, &report.id().to_hex(), bytes) {
            warn!(error = %e, "cannot store test report");
        }
        self.staging_feed_report(app, report);
        gossipsub::MessageAcceptance::Accept
    }

    fn staging_feed_report(&mut self, app: &str, report: Verified<TestReport>) {
        let Some(r) = self.staging.rollouts.get_mut(app) else { return };
        r.reports.insert((report.payload().manifest_id, *report.signer()), report.clone());
        let p = report.payload();
        info!(app, signer = %report.signer().peer_id(), version = %p.version, cluster = %p.cluster_key,
            outcome = outcome_name(p.outcome), "test report");
        self.staging_handle(app, Event::Report(report));
    }

    /// A problem report from the release topic: kept for the vendor.
    pub(super) fn on_problem_report(
        &mut self,
        app: &str,
        report: Verified<ProblemReport>,
        bytes: &[u8],
    ) -> gossipsub::MessageAcceptance {
        let p = report.payload();
        let kept = self.staging.problems.entry(app.to_string()).or_default();
        if kept.len() < MAX_PROBLEMS && !kept.contains_key(&report.id()) {
            kept.insert(report.id(), bytes.to_vec());
            warn!(app, signer = %report.signer().peer_id(), version = %p.version, cluster = %p.cluster_key,
                failed = ?p.failed_tests, "problem report");
            if let Err(e) = self.store.put_report(app, &report.id().to_hex(), bytes) {
                warn!(error = %e, "cannot store problem report");
            }
        }
        gossipsub::MessageAcceptance::Accept
    }

    /// The problem reports this node holds for `app` (signed envelopes).
    pub(super) fn problem_reports(&self, app: &str) -> Vec<Vec<u8>> {
        self.staging.problems.get(app).map(|m| m.values().cloned().collect()).unwrap_or_default()
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
        self.fetch_release(app);
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
            Completion::Tested { app, manifest, run } => {
                info!(
                    app,
                    outcome = outcome_name(run.outcome),
                    tests = run.tests_run,
                    summary = run.summary,
                    "tests finished"
                );
                self.staging_handle(&app, Event::TestFinished { manifest, run });
            }
            Completion::Applied { app, manifest, result } => {
                match &result {
                    ApplyResult::Healthy => info!(app, "upgrade applied"),
                    ApplyResult::Unhealthy { .. } => warn!(app, "upgrade unhealthy; rolled back"),
                }
                self.staging_handle(&app, Event::ApplyFinished { manifest, result });
            }
            Completion::RolledBack { app, manifest } => {
                info!(app, "rolled back");
                self.staging_handle(&app, Event::RollbackFinished { manifest });
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
                Action::RollBack { manifest } => self.start_rollback(app, manifest),
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
        info!(app, outcome = outcome_name(report.outcome), version = %report.version, "published test report");
        let verified = Envelope::from_bytes(&bytes).ok().and_then(|e| e.verify::<TestReport>().ok());
        if let Some(v) = verified {
            if let Err(e) = self.store.put_report(app, &v.id().to_hex(), &bytes) {
                warn!(error = %e, "cannot store own report");
            }
            self.staging_feed_report(app, v);
        }
    }

    fn publish_problem_report(&mut self, app: &str, report: ProblemReport) {
        let Some(bytes) = self.sign_and_publish(app, &report) else { return };
        warn!(app, version = %report.version, failed = ?report.failed_tests, "sent problem report to the vendor");
        if let Some(v) = Envelope::from_bytes(&bytes).ok().and_then(|e| e.verify::<ProblemReport>().ok()) {
            self.on_problem_report(app, v, &bytes);
        }
    }

    /// The files of the app's environment that tests get throw-away copies of.
    fn resources(&self, app: &str) -> Vec<PathBuf> {
        let Some(r) = self.staging.rollouts.get(app) else { return Vec::new() };
        let paths: BTreeSet<&str> = r
            .fingerprint
            .items()
            .iter()
            .filter(|i| {
                matches!(
                    i.class,
                    ResourceClass::Config | ResourceClass::Data | ResourceClass::Log | ResourceClass::Temp
                )
            })
            .map(|i| i.path.as_str())
            .collect();
        paths
            .into_iter()
            .filter_map(|p| crate::scan::resolve(&self.staging.root, p).ok().flatten())
            .filter(|p| p.exists())
            .collect()
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
        let root = self.staging.root.clone();
        let work = self.staging.work_dir.join(manifest.to_hex());
        let tx = self.staging.completions.clone();
        let app = app.to_string();
        info!(app, version = %release.version, tests = release.tests.len(), "testing in the sandbox");
        tokio::task::spawn_blocking(move || {
            let run =
                run_tests(&installer, &sandbox, &app, &release, &artifact, bundle.as_deref(), resources, &root, &work)
                    .unwrap_or_else(|reason| TestRun {
                        outcome: Outcome::Fail,
                        summary: mirage_protocol::report::excerpt_tail(&reason, 512),
                        logs_digest: Digest::of(reason.as_bytes()),
                        tests_run: 0,
                        duration_ms: 0,
                        failed_tests: vec!["setup".into()],
                        output: reason,
                    });
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
                Some(b) if unpack_once(b, &tests_dir).is_ok() => Some(tests_dir.as_path()),
                _ => None,
            };
            let result = match installer.apply_with_health_dir(
                &app,
                &version,
                &artifact,
                release.health_check.as_ref(),
                health_dir,
            ) {
                Ok(ApplyOutcome::Applied { .. }) => ApplyResult::Healthy,
                Ok(ApplyOutcome::RolledBack { reason, output_excerpt }) => {
                    let output = format!("{reason}\n{output_excerpt}");
                    ApplyResult::Unhealthy { logs_digest: Digest::of(output.as_bytes()), output }
                }
                Err(e) => {
                    let output = format!("apply failed: {e}");
                    ApplyResult::Unhealthy { logs_digest: Digest::of(output.as_bytes()), output }
                }
            };
            let _ = tx.send(Completion::Applied { app, manifest, result });
        });
    }

    fn start_rollback(&mut self, app: &str, manifest: Digest) {
        let Some(installer) = self.staging.installer.clone() else { return };
        let tx = self.staging.completions.clone();
        let app = app.to_string();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = installer.rollback(&app) {
                warn!(app, error = %e, "rollback");
            }
            let _ = tx.send(Completion::RolledBack { app, manifest });
        });
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
                            "outcome": outcome_name(p.outcome),
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
                    "verdict": s.verdict.map(|v| format!("{v:?}")),
                    "reports": reports,
                })
            })
            .collect();
        serde_json::Value::Array(apps)
    }
}

/// Unpacks a tar once into `dir` (kept for the manifest's lifetime).
fn unpack_once(tar: &Path, dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    crate::install::unpack::unpack_safely(tar, &partial).map_err(|e| e.to_string())?;
    std::fs::rename(&partial, dir).map_err(|e| format!("{}: {e}", dir.display()))
}

#[allow(clippy::too_many_arguments)]
fn run_tests(
    installer: &Installer,
    sandbox: &Sandbox,
    app: &str,
    release: &mirage_protocol::manifest::UpgradeManifest,
    artifact: &Path,
    bundle: Option<&Path>,
    resources: Vec<PathBuf>,
    root: &Path,
    work: &Path,
) -> Result<TestRun, String> {
    let new_version_dir = installer.prepare(app, &release.version, artifact).map_err(|e| e.to_string())?;
    let old_version_dir = installer.current(app).map_err(|e| e.to_string())?.map(|v| installer.version_dir(app, &v));
    let bundle_dir = match bundle {
        Some(b) => {
            let dir = work.join("tests");
            std::fs::create_dir_all(work).map_err(|e| e.to_string())?;
            unpack_once(b, &dir)?;
            Some(dir)
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
    };
    let results = sandbox.run_tests(&run).map_err(|e| e.to_string())?;
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
