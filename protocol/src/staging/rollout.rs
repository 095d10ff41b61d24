//! The per-(node, app) staging core the node drives: events in, actions out, time
//! passed in.
//!
//! It composes the shared [`Campaign`] (what every node of the app knows) with this
//! node's own [`Member`] progress, and turns member steps into actions with full
//! payloads. Every change of persisted state is emitted as [`Action::Persist`] before
//! the actions it guards, so a node that crashes between the two redoes the action
//! after [`Rollout::restore`] instead of losing it.
//!
//! # Driving it (what the node does)
//!
//! Events to feed, each with the current wall-clock time:
//! - every manifest for the app that verified and that `trust::TrustStore::admit`
//!   accepted (a trusted vendor key for the app): the core checks app, expiry and
//!   version order again, but not who signed ([`Event::Manifest`]);
//! - the members of this node's cluster, and of every cluster it learns of, with when
//!   each was first seen there, whenever the DHT/membership view changes
//!   ([`Event::Members`]). Without its own cluster's members the node waits: it never
//!   elects itself on a guess;
//! - every test report gossiped on the app topic that verified and passed the freshness
//!   check ([`Event::Report`]), including the node's own, fed back after publishing;
//! - completions of the actions below, and [`Event::Timer`] when the last
//!   [`Action::SetTimer`] time comes.
//!
//! Actions, in order: [`Action::Persist`] must be durable before anything after it is
//! done. Fetch, run tests, apply and roll back are long-running: start them and report
//! back with the matching event. The core may supersede the release while one runs;
//! stale completions are ignored, so cancelling is an optimisation, not a duty.
//!
//! After a restart: [`Rollout::restore`] from the last persisted snapshot, carry out the
//! actions it returns, then replay the stored manifests, memberships and reports of the
//! app in the order they were issued. Reports for a manifest the core does not know yet
//! are rejected ([`ReportRejected::OtherUpgrade`]), so keep them and replay them after
//! their manifest.

use super::campaign::{Campaign, ReleaseIgnored, RetestIgnored, View};
use super::gate::{ReportRejected, Verdict};
use super::member::{Fault, Member, Phase, Step, Work};
use crate::envelope::Verified;
use crate::fingerprint::scope::Scope;
use crate::fingerprint::{ClusterKey, Fingerprint};
use crate::identity::PublicKey;
use crate::manifest::UpgradeManifest;
use crate::presence::Presence;
use crate::report::{
    excerpt_tail, Outcome, ProblemDetails, ProblemDraft, RetestRequest, TestReport, MAX_EXCERPT_BYTES,
    MAX_SUMMARY_BYTES,
};
use crate::time::UnixMillis;
use crate::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Who this node is, for one app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub app: String,
    pub me: PublicKey,
    /// The node's fingerprint for the app; its cluster key is the node's cluster.
    pub fingerprint: Fingerprint,
    /// The scopes the node keeps a membership for (its profile's): a release naming
    /// one of them is staged over that scope's clusters, any other over full clusters.
    pub scopes: Vec<Scope>,
}

/// Which clusters a release is staged over, from this node's side: the membership
/// whose roster the shell feeds (the app's, or a scope's) and this node's cluster in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grouping {
    /// The membership's name: the app, or a scope's
    /// [`membership_name`](crate::fingerprint::scope::membership_name).
    pub membership: String,
    pub cluster: ClusterKey,
}

impl NodeConfig {
    fn full_grouping(&self) -> Grouping {
        Grouping { membership: self.app.clone(), cluster: self.fingerprint.cluster_key() }
    }

    /// The grouping a release is staged over. A scope this node keeps no membership
    /// for falls back to full clusters: every member of a full cluster runs the same
    /// profile (its id is in the fingerprint), so a whole cluster falls back together,
    /// and full clusters are never coarser than a scope's.
    pub fn grouping_for(&self, manifest: &UpgradeManifest) -> Grouping {
        let Some(scope) = manifest.policy.scope.as_deref() else { return self.full_grouping() };
        if !self.scopes.iter().any(|s| s.id() == scope.id()) {
            return self.full_grouping();
        }
        match self.fingerprint.scoped(scope) {
            Ok(fp) => Grouping { membership: fp.app().to_string(), cluster: fp.cluster_key() },
            Err(_) => self.full_grouping(),
        }
    }
}

/// What a finished test run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRun {
    pub outcome: Outcome,
    pub summary: String,
    pub logs_digest: Digest,
    pub tests_run: u32,
    pub duration_ms: u64,
    pub failed_tests: Vec<String>,
    pub output: String,
}

/// The step of an apply that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyStep {
    /// Unpacking the artifact beside the running version.
    Unpack,
    /// Switching `current` to the new version.
    Switch,
    /// The manifest's health check against the switched version.
    HealthCheck,
}

impl ApplyStep {
    /// The name problem reports list the step under, beside the vendor's test names.
    pub fn name(self) -> &'static str {
        match self {
            ApplyStep::Unpack => "unpack",
            ApplyStep::Switch => "switch",
            ApplyStep::HealthCheck => HEALTH_CHECK,
        }
    }
}

/// How applying a release ended. The shell's installer is atomic: whatever failed, the
/// version that ran before is running again when it reports, so the core never asks
/// for a rollback of its own (which would step back once more).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyResult {
    /// Installed and the health check (if any) passed.
    Healthy,
    /// Not applied; the previous version is in place. A [`Fault::Release`] goes to the
    /// vendor as a problem report, a [`Fault::Local`] is retried.
    Failed { fault: Fault, step: ApplyStep, logs_digest: Digest, output: String },
}

impl ApplyResult {
    /// A failed apply whose logs are `output` (their digest goes into problem reports).
    pub fn failed(fault: Fault, step: ApplyStep, output: String) -> Self {
        ApplyResult::Failed { fault, step, logs_digest: Digest::of(output.as_bytes()), output }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A manifest whose signature checked out and whose signer the node trusts for
    /// the app (see `trust::TrustStore`).
    Manifest(Verified<UpgradeManifest>),
    /// The members of a cluster (this node's or another's) as the DHT now shows them,
    /// each with when this node first saw it there (`presence::PresenceBook`): only
    /// members seen before a release may represent their cluster for it.
    Members {
        cluster: ClusterKey,
        members: Vec<Presence>,
    },
    /// Cluster sizes as the fleet's signed summaries state them (the roster's table,
    /// this node's cluster included): the stage plan is made from these, and other
    /// clusters' gates judge reports by them.
    Sizes(BTreeMap<ClusterKey, u64>),
    /// The release's artifact (and test bundle) is fetched and verified.
    ContentReady {
        manifest: Digest,
    },
    TestFinished {
        manifest: Digest,
        run: TestRun,
    },
    /// The tests could not run for a fault of this node (the sandbox did not start, a
    /// resource is missing, the disk is full): retried, never signed as a verdict.
    TestsCouldNotRun {
        manifest: Digest,
        reason: String,
    },
    /// A test report whose signature checked out, including this node's own, fed back.
    Report(Verified<TestReport>),
    /// The time set by the last [`Action::SetTimer`] has come.
    Timer,
    ApplyFinished {
        manifest: Digest,
        result: ApplyResult,
    },
    /// The version the installer has in place (after recovery at start-up): the core
    /// takes it as what runs, so the two never disagree.
    Installed {
        version: Option<semver::Version>,
    },
    /// The operator rolled the app back to `version` (`mirage rollback`): the node is
    /// pinned there until a release newer than any it knows, or [`Event::Unpin`].
    RolledBackByOperator {
        version: semver::Version,
    },
    /// The operator lifted the pin (`mirage unpin`).
    Unpin,
    /// The vendor's signed request to test the release again. Feed it only if its
    /// signer is trusted for the app, as for manifests.
    Retest(Verified<RetestRequest>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Store this state durably before carrying out the actions after it.
    Persist(Box<Snapshot>),
    /// Fetch and verify the artifact (and test bundle) the manifest describes.
    Fetch { manifest: Digest },
    /// Run the manifest's tests in a sandbox, then send [`Event::TestFinished`].
    RunTests { manifest: Digest },
    /// Sign, gossip on the app topic, and feed back as [`Event::Report`].
    PublishTestReport(TestReport),
    /// Sign and send to the vendor.
    /// Seal (the details, to the vendor), sign and publish.
    PublishProblemReport(ProblemDraft),
    /// Apply atomically, run the health check, then send [`Event::ApplyFinished`].
    /// On any failure the version that ran before must be in place when it is sent.
    Apply { manifest: Digest, version: semver::Version },
    /// Send [`Event::Timer`] at this time (replaces any earlier timer).
    SetTimer(UnixMillis),
}

/// The node's durable staging state. Manifests and reports are stored by the node as
/// the signed envelopes they came in and fed back as events after a restart, so the
/// snapshot only holds what no one else can tell the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub app: String,
    pub work: Option<Work>,
    /// The version being applied, so a restart can re-issue `Apply`.
    pub work_version: Option<semver::Version>,
    /// The last version applied healthily: releases not newer than it are ignored.
    pub running: Option<semver::Version>,
    /// This node's report on the current release, re-published after a restart.
    pub own_report: Option<TestReport>,
    /// This node's problem report on the current release, re-sent after a restart.
    pub own_problem: Option<ProblemDraft>,
    /// A test or apply that failed for a fault of this node, and when to retry it.
    pub local_fault: Option<LocalFault>,
    /// Set by the operator's rollback: no release is applied while it stands.
    pub pin: Option<Pin>,
    /// The newest retest request this node acted on (manifest, issue time): replayed
    /// after a restart, it must not send the node back to testing again.
    pub retested: Option<(Digest, UnixMillis)>,
}

/// A step that failed for a fault of this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalFault {
    pub manifest: Digest,
    /// What failed: [`Phase::Testing`] or [`Phase::Applying`].
    pub during: Phase,
    pub attempts: u32,
    /// When to try again; `None` once the retry was made.
    pub retry_at: Option<UnixMillis>,
    pub reason: String,
}

/// The operator's rollback: the node stays on `version` until a release newer than
/// `through` (the newest it knew then) arrives, or the operator unpins it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub version: semver::Version,
    pub through: Option<semver::Version>,
}

/// Test reports and retest requests older than this count for nothing (a replay, or
/// long stale), and so do those issued further ahead of the node's clock than
/// [`MESSAGE_MAX_SKEW`]. The core decides, so the node, its restart replay and the
/// simulator judge alike.
pub const MESSAGE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
pub const MESSAGE_MAX_SKEW: std::time::Duration = std::time::Duration::from_secs(120);

/// Whether a signed staging message (a test report, a retest request) may still count
/// at `now`.
pub fn is_fresh<T>(message: &Verified<T>, now: UnixMillis) -> bool {
    message.check_freshness(now, MESSAGE_MAX_AGE, MESSAGE_MAX_SKEW).is_ok()
}

/// A representative whose tests could not run this many times hands its seat on.
pub const MAX_TEST_ATTEMPTS: u32 = 2;
/// Applies re-issued at once after the node stopped in the middle of them, in a row;
/// the next waits like a retry after a local fault ([`Rollout::restore`]).
pub const MAX_INTERRUPTED_APPLIES: u32 = 3;
/// The first retry after a local fault; each further one waits twice as long.
pub const LOCAL_RETRY_BASE: std::time::Duration = std::time::Duration::from_secs(15);
/// The longest wait between retries of a locally failed apply.
pub const LOCAL_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(600);

fn retry_delay(attempts: u32) -> u64 {
    let base = LOCAL_RETRY_BASE.as_millis() as u64;
    let doubled = base.saturating_mul(1u64 << attempts.saturating_sub(1).min(16));
    doubled.min(LOCAL_RETRY_MAX.as_millis() as u64)
}

/// Why an event changed nothing. Returned for logging and tests; never fatal.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Ignored {
    #[error("manifest for another app")]
    OtherApp,
    #[error("manifest expired")]
    Expired,
    #[error("manifest version {offered} is not newer than running {running}")]
    NotNewerThanRunning { offered: semver::Version, running: semver::Version },
    #[error(transparent)]
    Release(#[from] ReleaseIgnored),
    #[error(transparent)]
    Report(#[from] ReportRejected),
    #[error(transparent)]
    Retest(#[from] RetestIgnored),
    #[error("message issued too long ago, or too far ahead of this node's clock")]
    Stale,
}

impl Ignored {
    /// A stable word for counters and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Ignored::OtherApp => "other_app",
            Ignored::Expired => "expired",
            Ignored::NotNewerThanRunning { .. } => "not_newer_than_running",
            Ignored::Release(ReleaseIgnored::AlreadyKnown) => "release_known",
            Ignored::Release(ReleaseIgnored::OtherApp) => "release_other_app",
            Ignored::Release(ReleaseIgnored::NotNewer { .. }) => "release_not_newer",
            Ignored::Report(r) => r.name(),
            Ignored::Retest(RetestIgnored::OtherRelease) => "retest_other_release",
            Ignored::Retest(RetestIgnored::TooManyClusters) => "retest_too_many_clusters",
            Ignored::Stale => "stale",
        }
    }
}

/// What `mirage status` shows for an app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub running: Option<semver::Version>,
    pub target: Option<semver::Version>,
    pub phase: Option<Phase>,
    pub stage: Option<usize>,
    pub open_stages: usize,
    pub stage_count: usize,
    pub verdict: Option<Verdict>,
    pub representative: bool,
    pub local_fault: Option<LocalFault>,
    pub pin: Option<Pin>,
}

pub struct Rollout {
    config: NodeConfig,
    /// The current release's grouping (full clusters until a release names a scope).
    grouping: Grouping,
    campaign: Campaign,
    member: Member,
    running: Option<semver::Version>,
    applying: Option<semver::Version>,
    own_report: Option<TestReport>,
    own_problem: Option<ProblemDraft>,
    local_fault: Option<LocalFault>,
    pin: Option<Pin>,
    retested: Option<(Digest, UnixMillis)>,
    timer: Option<UnixMillis>,
    last_ignored: Option<Ignored>,
}

/// Data an event carried that the resulting step needs for its payload.
enum Detail {
    Run(TestRun),
    ApplyFailed { step: ApplyStep, logs_digest: Digest, output: String },
}

impl Rollout {
    pub fn new(config: NodeConfig) -> Self {
        Rollout {
            grouping: config.full_grouping(),
            config,
            campaign: Campaign::new(),
            member: Member::new(),
            running: None,
            applying: None,
            own_report: None,
            own_problem: None,
            local_fault: None,
            pin: None,
            retested: None,
            timer: None,
            last_ignored: None,
        }
    }

    /// Rebuilds a node's core from its snapshot. The returned actions re-issue whatever
    /// was in flight; the node then feeds its stored manifests, memberships and reports
    /// back as events.
    ///
    /// An apply the node was in the middle of is re-issued, and counted as a local
    /// fault of its own: after [`MAX_INTERRUPTED_APPLIES`] in a row (a release whose
    /// apply takes the node down with it, say) the next waits as retries after local
    /// faults do, so the node cannot crash-loop. `now` times that wait.
    pub fn restore(config: NodeConfig, snapshot: Snapshot, now: UnixMillis) -> (Self, Vec<Action>) {
        let mut r = Rollout::new(config);
        r.member = Member::restore(snapshot.work);
        r.running = snapshot.running;
        r.applying = snapshot.work_version.clone();
        r.own_report = snapshot.own_report;
        r.own_problem = snapshot.own_problem;
        r.local_fault = snapshot.local_fault;
        r.pin = snapshot.pin;
        r.retested = snapshot.retested;
        let mut actions = Vec::new();
        if let Some(w) = r.member.work() {
            match w.phase {
                Phase::Fetching => actions.push(Action::Fetch { manifest: w.manifest }),
                Phase::Testing => actions.push(Action::RunTests { manifest: w.manifest }),
                Phase::Applying => {
                    if let Some(version) = snapshot.work_version {
                        actions.extend(r.apply_interrupted(w.manifest, version, now));
                    }
                }
                _ => {}
            }
        }
        // Publishing is idempotent for the gate (one voice per signer), so a report
        // that may not have left before the crash is simply sent again.
        if let Some(report) = &r.own_report {
            actions.push(Action::PublishTestReport(report.clone()));
        }
        if let Some(problem) = &r.own_problem {
            actions.push(Action::PublishProblemReport(problem.clone()));
        }
        (r, actions)
    }

    /// The node stopped while applying `version`: counted, persisted, then applied
    /// again at once or, after too many interruptions in a row, later.
    fn apply_interrupted(&mut self, manifest: Digest, version: semver::Version, now: UnixMillis) -> Vec<Action> {
        let attempts = self.local_attempts(manifest, Phase::Applying) + 1;
        let back_off = attempts > MAX_INTERRUPTED_APPLIES;
        let retry_at = back_off.then(|| UnixMillis(now.0.saturating_add(retry_delay(attempts))));
        self.local_fault = Some(LocalFault {
            manifest,
            during: Phase::Applying,
            attempts,
            retry_at,
            reason: format!("the node stopped while applying {version} ({attempts} times in a row)"),
        });
        let mut actions = Vec::new();
        if back_off {
            self.member.apply_finished(manifest, Err(Fault::Local), None);
            self.applying = None;
        }
        // Counted durably before the apply starts again, or a crash in it would not be.
        actions.push(Action::Persist(Box::new(self.snapshot())));
        match retry_at {
            Some(at) => {
                self.timer = Some(at);
                actions.push(Action::SetTimer(at));
            }
            None => actions.push(Action::Apply { manifest, version }),
        }
        actions
    }

    /// This node's cluster for the current release.
    pub fn cluster(&self) -> ClusterKey {
        self.grouping.cluster
    }

    /// Which membership's roster to feed as [`Event::Members`] and [`Event::Sizes`],
    /// and this node's cluster in it: it changes with a release that names a scope.
    pub fn grouping(&self) -> &Grouping {
        &self.grouping
    }

    pub fn campaign(&self) -> &Campaign {
        &self.campaign
    }

    /// When the core next needs [`Event::Timer`], for shells that poll rather than
    /// follow [`Action::SetTimer`].
    pub fn next_timeout(&self) -> Option<UnixMillis> {
        let retry = self.local_fault.as_ref().and_then(|f| f.retry_at);
        self.campaign.next_timeout().into_iter().chain(retry).min()
    }

    /// This node's phase for the release it works on (what `status().phase` says,
    /// without computing the rest of the status).
    pub fn phase(&self) -> Option<Phase> {
        self.member.work().map(|w| w.phase)
    }

    /// Whether the operator may roll the app back now: not while an apply is under
    /// way, whose end would contradict it.
    pub fn may_roll_back(&self) -> bool {
        self.member.work().is_none_or(|w| w.phase != Phase::Applying)
    }

    /// Why the last event was ignored, if it was.
    pub fn last_ignored(&self) -> Option<&Ignored> {
        self.last_ignored.as_ref()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            app: self.config.app.clone(),
            work: self.member.work(),
            work_version: self.applying.clone(),
            running: self.running.clone(),
            own_report: self.own_report.clone(),
            own_problem: self.own_problem.clone(),
            local_fault: self.local_fault.clone(),
            pin: self.pin.clone(),
            retested: self.retested,
        }
    }

    pub fn status(&self) -> Status {
        let view = self.view();
        let plan = self.campaign.plan();
        Status {
            running: self.running.clone(),
            target: self.work_version(),
            phase: self.phase(),
            stage: plan.map(|p| p.stage_of(&self.grouping.cluster)),
            open_stages: self.campaign.schedule().map_or(0, |s| s.open_stages()),
            stage_count: plan.map_or(0, |p| p.stage_count()),
            verdict: view.map(|v| v.verdict),
            representative: view.is_some_and(|v| v.seated),
            local_fault: self.local_fault.clone(),
            pin: self.pin.clone(),
        }
    }

    /// Handles one event at `now` and returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: UnixMillis) -> Vec<Action> {
        let before = self.snapshot();
        self.last_ignored = None;
        let (step, detail) = match self.apply_event(event, now) {
            Ok(done) => done,
            Err(why) => {
                self.last_ignored = Some(why);
                (None, None)
            }
        };
        // The view may have changed under the member even if the event was not its own.
        let step = step.or_else(|| {
            let view = self.view();
            self.member.observe(view.as_ref())
        });
        let mut actions = Vec::new();
        let work_actions = step.map(|s| self.carry_out(s, detail)).unwrap_or_default();
        let after = self.snapshot();
        if after != before {
            actions.push(Action::Persist(Box::new(after)));
        }
        actions.extend(work_actions);
        let next = self.next_timeout();
        if next != self.timer {
            self.timer = next;
            if let Some(at) = next {
                actions.push(Action::SetTimer(at));
            }
        }
        actions
    }

    /// What the member acts on. A pinned node acts on nothing: it keeps the version
    /// the operator chose.
    fn view(&self) -> Option<View> {
        if self.pin.is_some() {
            return None;
        }
        self.campaign.view(&self.grouping.cluster, &self.config.me)
    }

    fn work_version(&self) -> Option<semver::Version> {
        let w = self.member.work()?;
        let release = self.campaign.release()?;
        (release.id == w.manifest).then(|| release.manifest.version.clone())
    }

    fn apply_event(&mut self, event: Event, now: UnixMillis) -> Result<(Option<Step>, Option<Detail>), Ignored> {
        match event {
            Event::Manifest(m) => {
                let manifest = m.payload();
                if manifest.app != self.config.app {
                    return Err(Ignored::OtherApp);
                }
                if manifest.is_expired(now) {
                    return Err(Ignored::Expired);
                }
                if let Some(running) = &self.running {
                    if &manifest.version <= running {
                        return Err(Ignored::NotNewerThanRunning {
                            offered: manifest.version.clone(),
                            running: running.clone(),
                        });
                    }
                }
                self.campaign.check_release(&m)?;
                // The next release lifts an operator's pin: it is what the pin waited for.
                if self.pin.as_ref().is_some_and(|p| p.through.as_ref().is_none_or(|t| &manifest.version > t)) {
                    self.pin = None;
                }
                // Another grouping: what was known of the old clusters says nothing of
                // the new ones, which the shell feeds from the other membership.
                let grouping = self.config.grouping_for(manifest);
                if grouping != self.grouping {
                    self.campaign.regroup();
                    self.grouping = grouping;
                }
                self.campaign.start_release(&m, now)?;
                if self.local_fault.as_ref().is_some_and(|f| f.manifest != manifest.id()) {
                    self.local_fault = None;
                }
                if self.own_report.as_ref().is_some_and(|r| r.manifest_id != manifest.id()) {
                    self.own_report = None;
                }
                if self.own_problem.as_ref().is_some_and(|p| p.manifest_id != manifest.id()) {
                    self.own_problem = None;
                }
                Ok((None, None))
            }
            Event::Members { cluster, mut members } => {
                // A node always counts itself in its own cluster, even before the DHT
                // shows it there.
                // (Since when is the shell's to say: without it, the node is not
                // eligible to represent the cluster.)
                if cluster == self.grouping.cluster && !members.iter().any(|m| m.peer == self.config.me) {
                    members.push(Presence { peer: self.config.me, since: UnixMillis::MAX });
                }
                self.campaign.set_members(cluster, members, now);
                Ok((None, None))
            }
            Event::Sizes(sizes) => {
                self.campaign.set_sizes(sizes, now);
                Ok((None, None))
            }
            Event::ContentReady { manifest } => {
                let view = self.view();
                Ok((self.member.content_ready(manifest, view.as_ref()), None))
            }
            Event::TestFinished { manifest, run } => {
                if self.local_fault.as_ref().is_some_and(|f| f.manifest == manifest) {
                    self.local_fault = None;
                }
                Ok((self.member.test_finished(manifest, run.outcome), Some(Detail::Run(run))))
            }
            Event::TestsCouldNotRun { manifest, reason } => {
                let testing = self.member.work().is_some_and(|w| w.manifest == manifest && w.phase == Phase::Testing);
                if !testing {
                    return Ok((None, None));
                }
                let attempts = self.local_attempts(manifest, Phase::Testing) + 1;
                if attempts >= MAX_TEST_ATTEMPTS {
                    // Hand the seat on rather than hold the cluster until the deadline.
                    self.local_fault = None;
                    let run = TestRun {
                        outcome: Outcome::Abstain,
                        summary: format!("could not test here ({attempts} attempts): {reason}"),
                        logs_digest: Digest::of(reason.as_bytes()),
                        tests_run: 0,
                        duration_ms: 0,
                        failed_tests: Vec::new(),
                        output: reason,
                    };
                    return Ok((self.member.test_finished(manifest, Outcome::Abstain), Some(Detail::Run(run))));
                }
                self.member.test_fault(manifest);
                self.local_fault = Some(LocalFault {
                    manifest,
                    during: Phase::Testing,
                    attempts,
                    retry_at: Some(UnixMillis(now.0.saturating_add(retry_delay(attempts)))),
                    reason,
                });
                Ok((None, None))
            }
            Event::Report(r) => {
                if !is_fresh(&r, now) {
                    return Err(Ignored::Stale);
                }
                self.campaign.admit(&r, now)?;
                Ok((None, None))
            }
            Event::Timer => {
                self.timer = None;
                self.campaign.tick(now);
                let due = self.local_fault.as_mut().filter(|f| f.retry_at.is_some_and(|t| t <= now));
                let Some(fault) = due else { return Ok((None, None)) };
                fault.retry_at = None;
                let manifest = fault.manifest;
                let view = self.view();
                Ok((self.member.retry(manifest, view.as_ref()), None))
            }
            Event::Installed { version } => {
                self.running = version;
                Ok((None, None))
            }
            Event::RolledBackByOperator { version } => {
                let through = [self.running.clone(), self.campaign.release().map(|r| r.manifest.version.clone())]
                    .into_iter()
                    .flatten()
                    .max();
                self.running = Some(version.clone());
                self.applying = None;
                self.local_fault = None;
                self.pin = Some(Pin { version, through });
                Ok((None, None))
            }
            Event::Retest(request) => {
                if !is_fresh(&request, now) {
                    return Err(Ignored::Stale);
                }
                self.campaign.retest(&request, now)?;
                let r = request.payload();
                let at = request.issued_at();
                let acted = self.retested.is_some_and(|(m, t)| m == r.manifest_id && t >= at);
                if !r.covers(&self.grouping.cluster) || acted {
                    return Ok((None, None));
                }
                self.retested = Some((r.manifest_id, at));
                // What this node said before no longer counts; its next word replaces it.
                if self.own_report.as_ref().is_some_and(|o| o.manifest_id == r.manifest_id) {
                    self.own_report = None;
                }
                if self.own_problem.as_ref().is_some_and(|o| o.manifest_id == r.manifest_id) {
                    self.own_problem = None;
                }
                if self.local_fault.as_ref().is_some_and(|f| f.manifest == r.manifest_id) {
                    self.local_fault = None;
                }
                let view = self.view();
                Ok((self.member.retest(r.manifest_id, view.as_ref()), None))
            }
            Event::Unpin => {
                if self.pin.take().is_none() {
                    return Ok((None, None));
                }
                let view = self.view();
                Ok((self.member.unpin(view.as_ref()), None))
            }
            Event::ApplyFinished { manifest, result } => {
                let was_applying =
                    self.member.work().is_some_and(|w| w.manifest == manifest && w.phase == Phase::Applying);
                if was_applying {
                    self.applying_ended(manifest, &result, now);
                }
                let view = self.view();
                match result {
                    ApplyResult::Healthy => Ok((self.member.apply_finished(manifest, Ok(()), view.as_ref()), None)),
                    ApplyResult::Failed { fault, step, logs_digest, output } => {
                        let next = self.member.apply_finished(manifest, Err(fault), view.as_ref());
                        Ok((next, Some(Detail::ApplyFailed { step, logs_digest, output })))
                    }
                }
            }
        }
    }

    /// Bookkeeping when the apply this node was doing ends: what runs now, and when to
    /// try again after a local fault.
    fn applying_ended(&mut self, manifest: Digest, result: &ApplyResult, now: UnixMillis) {
        let version = self.applying.take();
        match result {
            ApplyResult::Healthy => {
                self.running = version;
                self.local_fault = None;
            }
            ApplyResult::Failed { fault: Fault::Release, .. } => self.local_fault = None,
            ApplyResult::Failed { fault: Fault::Local, output, .. } => {
                let attempts = self.local_attempts(manifest, Phase::Applying) + 1;
                self.local_fault = Some(LocalFault {
                    manifest,
                    during: Phase::Applying,
                    attempts,
                    retry_at: Some(UnixMillis(now.0.saturating_add(retry_delay(attempts)))),
                    reason: excerpt_tail(output, MAX_SUMMARY_BYTES),
                });
            }
        }
    }

    /// Local faults so far for this manifest in this phase.
    fn local_attempts(&self, manifest: Digest, during: Phase) -> u32 {
        self.local_fault.as_ref().filter(|f| f.manifest == manifest && f.during == during).map_or(0, |f| f.attempts)
    }

    /// Turns a member step into actions with full payloads.
    fn carry_out(&mut self, step: Step, detail: Option<Detail>) -> Vec<Action> {
        let Some(release) = self.campaign.release() else {
            return Vec::new();
        };
        let manifest = &release.manifest;
        match step {
            Step::Fetch(id) => vec![Action::Fetch { manifest: id }],
            Step::RunTests(id) => vec![Action::RunTests { manifest: id }],
            Step::Apply(id) => {
                let version = manifest.version.clone();
                self.applying = Some(version.clone());
                vec![Action::Apply { manifest: id, version }]
            }
            Step::Publish(id, outcome) => {
                let Some(Detail::Run(run)) = detail else {
                    return Vec::new();
                };
                let report = TestReport {
                    manifest_id: id,
                    app: manifest.app.clone(),
                    version: manifest.version.clone(),
                    cluster_key: self.grouping.cluster,
                    outcome,
                    summary: excerpt_tail(&run.summary, MAX_SUMMARY_BYTES),
                    logs_digest: run.logs_digest,
                    tests_run: run.tests_run,
                    duration_ms: run.duration_ms,
                };
                let mut actions = vec![Action::PublishTestReport(report.clone())];
                if outcome == Outcome::Fail {
                    let problem = self.problem_report(id, run.failed_tests, run.logs_digest, &run.output);
                    self.own_problem = Some(problem.clone());
                    actions.push(Action::PublishProblemReport(problem));
                }
                self.own_report = Some(report);
                actions
            }
            Step::ReportProblem(id) => {
                let Some(Detail::ApplyFailed { step, logs_digest, output }) = detail else {
                    return Vec::new();
                };
                let problem = self.problem_report(id, vec![step.name().to_string()], logs_digest, &output);
                self.own_problem = Some(problem.clone());
                vec![Action::PublishProblemReport(problem)]
            }
        }
    }

    fn problem_report(&self, id: Digest, failed_tests: Vec<String>, logs_digest: Digest, output: &str) -> ProblemDraft {
        let release = self.campaign.release();
        ProblemDraft {
            manifest_id: id,
            app: self.config.app.clone(),
            version: release.map_or_else(|| semver::Version::new(0, 0, 0), |r| r.manifest.version.clone()),
            cluster_key: self.grouping.cluster,
            failed_tests,
            logs_digest,
            vendor: release.map_or(PublicKey([0; 32]), |r| r.vendor),
            details: ProblemDetails {
                fingerprint: self.config.fingerprint.clone(),
                output_excerpt: excerpt_tail(output, MAX_EXCERPT_BYTES),
            },
        }
    }
}

/// The name a failed post-apply health check goes by in problem reports.
pub const HEALTH_CHECK: &str = "health-check";
