//! What every node of an app knows in common about the current rollout: the release
//! being rolled out, cluster membership, the stage plan and schedule, and every
//! cluster's gate.
//!
//! Everything here is a function of signed data (manifests, test reports), membership
//! and time. That is what lets the simulator keep one `Campaign` for the whole fleet
//! (every simulated node would compute the same one) while each node keeps only its
//! own [`Member`](super::Member) progress.

use super::gate::{ClusterGate, Evaluation, ReportRejected, Verdict};
use super::plan::StagePlan;
use super::schedule::StageSchedule;
use crate::envelope::Verified;
use crate::fingerprint::ClusterKey;
use crate::identity::PublicKey;
use crate::manifest::UpgradeManifest;
use crate::presence::Presence;
use crate::report::{RetestRequest, TestReport};
use crate::time::UnixMillis;
use crate::Digest;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use thiserror::Error;

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ReleaseIgnored {
    #[error("this manifest is already being rolled out")]
    AlreadyKnown,
    #[error("manifest is for another app")]
    OtherApp,
    #[error("manifest version {offered} is not newer than {current}")]
    NotNewer { offered: semver::Version, current: semver::Version },
}

/// A verified manifest, reduced to what the rollout needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub manifest: UpgradeManifest,
    pub id: Digest,
    /// The vendor's signed issue time: the campaign clock starts here.
    pub issued_at: UnixMillis,
    /// Who signed it: problem reports are sealed to this key.
    pub vendor: PublicKey,
}

impl Release {
    pub fn from_verified(m: &Verified<UpgradeManifest>) -> Self {
        Release { manifest: m.payload().clone(), id: m.payload().id(), issued_at: m.issued_at(), vendor: *m.signer() }
    }
}

/// What one member needs to know about its cluster to decide its next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub manifest: Digest,
    /// The cluster's stage is open: fetching and testing may start.
    pub open: bool,
    /// This member holds a representative seat.
    pub seated: bool,
    pub verdict: Verdict,
}

#[derive(Clone, Debug)]
struct Active {
    release: Release,
    plan: StagePlan,
    schedule: StageSchedule,
    gates: BTreeMap<ClusterKey, ClusterGate>,
    /// Looked up by every member's view (a million times per release in the simulator),
    /// never iterated for a decision: a hash map. Cluster keys are blake3 outputs.
    evaluations: HashMap<ClusterKey, Evaluation>,
    /// Every evaluation's next deadline, in time order, kept in step with
    /// `evaluations`: the next timeout and the due gates without a pass over every
    /// cluster (the simulator asks after every report, with 20,000 clusters).
    deadlines: BTreeSet<(UnixMillis, ClusterKey)>,
    /// Gates made for a report naming a cluster known neither by members nor by size.
    unknown: BTreeSet<ClusterKey>,
    /// The vendor's latest request to test again, for every cluster and per cluster:
    /// applied to gates made later too.
    retest_all: Option<UnixMillis>,
    retests: BTreeMap<ClusterKey, UnixMillis>,
}

/// Most clusters a campaign remembers retest requests for; more are dropped.
pub const MAX_RETESTED_CLUSTERS: usize = 4096;

/// Most clusters with no known members a campaign keeps reports for. A report can
/// outrun the membership it belongs to, so a few are worth keeping; but anyone can sign
/// a report naming a made-up cluster, and each would cost a gate.
pub const MAX_UNKNOWN_CLUSTERS: usize = 256;

/// Why a retest request changed nothing.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RetestIgnored {
    #[error("the request is for another release than the one being rolled out")]
    OtherRelease,
    #[error("too many clusters asked to test again")]
    TooManyClusters,
}

/// The shared rollout state of one app.
#[derive(Clone, Debug, Default)]
pub struct Campaign {
    members: BTreeMap<ClusterKey, Vec<Presence>>,
    /// Cluster sizes from signed summaries (rounded, so nodes agree on them). Where a
    /// cluster has one, the plan uses it over a count of members.
    estimates: BTreeMap<ClusterKey, u64>,
    active: Option<Active>,
}

impl Campaign {
    pub fn new() -> Self {
        Campaign::default()
    }

    pub fn release(&self) -> Option<&Release> {
        self.active.as_ref().map(|a| &a.release)
    }

    pub fn plan(&self) -> Option<&StagePlan> {
        self.active.as_ref().map(|a| &a.plan)
    }

    pub fn schedule(&self) -> Option<&StageSchedule> {
        self.active.as_ref().map(|a| &a.schedule)
    }

    pub fn gate(&self, cluster: &ClusterKey) -> Option<&ClusterGate> {
        self.active.as_ref().and_then(|a| a.gates.get(cluster))
    }

    pub fn evaluation(&self, cluster: &ClusterKey) -> Option<&Evaluation> {
        self.active.as_ref().and_then(|a| a.evaluations.get(cluster))
    }

    /// Whether `signer`'s failure of `manifest` stands in `cluster`'s gate: what backs its
    /// problem report.
    pub fn failure_stands(&self, manifest: &Digest, cluster: &ClusterKey, signer: &PublicKey) -> bool {
        self.active.as_ref().is_some_and(|a| &a.release.id == manifest)
            && self.gate(cluster).and_then(|g| g.outcome_of(signer)) == Some(crate::report::Outcome::Fail)
    }

    pub fn members(&self, cluster: &ClusterKey) -> &[Presence] {
        self.members.get(cluster).map_or(&[], |m| m.as_slice())
    }

    /// What `me`, a member of `cluster`, sees of the current release.
    pub fn view(&self, cluster: &ClusterKey, me: &PublicKey) -> Option<View> {
        let a = self.active.as_ref()?;
        let (open, seated, verdict) = match a.evaluations.get(cluster) {
            Some(e) => (e.verdict != Verdict::NotOpen, e.is_seated(me), e.verdict),
            None => (false, false, Verdict::NotOpen),
        };
        Some(View { manifest: a.release.id, open, seated, verdict })
    }

    /// Replaces what is known of one cluster's membership (each member with when it was
    /// first seen there); returns clusters whose view may have changed.
    pub fn set_members(&mut self, cluster: ClusterKey, members: Vec<Presence>, now: UnixMillis) -> Vec<ClusterKey> {
        self.members.insert(cluster, members);
        let Some(a) = self.active.as_mut() else {
            return Vec::new();
        };
        if !self.members[&cluster].is_empty() {
            a.unknown.remove(&cluster);
        }
        a.plan = StagePlan::new(&a.release.manifest.policy, &sizes(&self.members, &self.estimates));
        a.schedule.replan(&a.plan);
        let members = &self.members[&cluster];
        match a.gates.get_mut(&cluster) {
            Some(g) => g.set_members(members),
            None => {
                let mut g = a.new_gate(cluster, members);
                g.set_estimate(self.estimates.get(&cluster).copied());
                a.gates.insert(cluster, g);
            }
        }
        // New sizes can move any cluster into a stage that is already open: its gate
        // opens now, not only the gate of the cluster whose membership changed.
        let clusters: Vec<ClusterKey> = a.gates.keys().copied().collect();
        let mut changed: Vec<ClusterKey> =
            clusters.into_iter().filter_map(|c| a.open_gate_if_stage_open(c, now)).collect();
        changed.extend(a.refresh(cluster, now));
        changed.extend(a.open_ready_stages(now));
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    /// Replaces the cluster sizes known from signed summaries (this node's own cluster
    /// among them, as its members state it); returns clusters whose view may have
    /// changed. A cluster known only by size gets a gate that judges by the O(1) bar
    /// ([`ClusterGate::is_estimated`]).
    pub fn set_sizes(&mut self, estimates: BTreeMap<ClusterKey, u64>, now: UnixMillis) -> Vec<ClusterKey> {
        self.estimates = estimates;
        let Some(a) = self.active.as_mut() else {
            return Vec::new();
        };
        a.plan = StagePlan::new(&a.release.manifest.policy, &sizes(&self.members, &self.estimates));
        a.schedule.replan(&a.plan);
        for g in a.gates.values_mut() {
            g.set_estimate(self.estimates.get(&g.cluster()).copied());
        }
        for (c, size) in &self.estimates {
            a.unknown.remove(c);
            if !a.gates.contains_key(c) {
                let mut g = a.new_gate(*c, &[]);
                g.set_estimate(Some(*size));
                a.gates.insert(*c, g);
            }
        }
        let clusters: Vec<ClusterKey> = a.gates.keys().copied().collect();
        let mut changed: Vec<ClusterKey> = Vec::new();
        for c in clusters {
            changed.extend(a.open_gate_if_stage_open(c, now));
            changed.extend(a.refresh(c, now));
        }
        changed.extend(a.open_ready_stages(now));
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    /// Whether [`Campaign::start_release`] would take `manifest`.
    pub fn check_release(&self, manifest: &Verified<UpgradeManifest>) -> Result<(), ReleaseIgnored> {
        let Some(a) = &self.active else { return Ok(()) };
        let (current, offered) = (&a.release.manifest, manifest.payload());
        if a.release.id == offered.id() {
            return Err(ReleaseIgnored::AlreadyKnown);
        }
        if current.app != offered.app {
            return Err(ReleaseIgnored::OtherApp);
        }
        if offered.version <= current.version {
            return Err(ReleaseIgnored::NotNewer {
                offered: offered.version.clone(),
                current: current.version.clone(),
            });
        }
        Ok(())
    }

    /// Forgets every cluster's members and size: the next release is staged over other
    /// clusters (another scope's projection), whose membership comes in afresh.
    pub fn regroup(&mut self) {
        self.members.clear();
        self.estimates.clear();
    }

    /// Starts rolling out a newer release. A release that comes while the campaign is
    /// unfinished (some cluster never held, or stages are still closed) continues it:
    /// that is how a vendor's fix restarts exactly the halted clusters, in stages that
    /// are already open, without walking the earlier stages again.
    pub fn start_release(
        &mut self,
        manifest: &Verified<UpgradeManifest>,
        now: UnixMillis,
    ) -> Result<Vec<ClusterKey>, ReleaseIgnored> {
        self.check_release(manifest)?;
        let release = Release::from_verified(manifest);
        let policy = &release.manifest.policy;
        let plan = StagePlan::new(policy, &sizes(&self.members, &self.estimates));
        let timeout = Duration::from_secs(policy.stage_timeout_secs as u64);
        let schedule = match self.active.take() {
            Some(a) if !a.schedule.is_complete(&a.plan) => {
                let mut s = a.schedule;
                s.replan(&plan);
                s
            }
            _ => StageSchedule::start(&plan, release.issued_at, timeout),
        };
        let mut gates = self
            .members
            .iter()
            .map(|(c, m)| (*c, ClusterGate::new(&release.manifest, release.id, release.issued_at, *c, m)))
            .collect::<BTreeMap<_, _>>();
        for (c, size) in &self.estimates {
            gates
                .entry(*c)
                .or_insert_with(|| ClusterGate::new(&release.manifest, release.id, release.issued_at, *c, &[]))
                .set_estimate(Some(*size));
        }
        let mut a = Active {
            release,
            plan,
            schedule,
            gates,
            evaluations: HashMap::new(),
            deadlines: BTreeSet::new(),
            unknown: BTreeSet::new(),
            retest_all: None,
            retests: BTreeMap::new(),
        };
        let clusters: Vec<ClusterKey> = a.gates.keys().copied().collect();
        let mut changed = clusters.clone();
        for c in clusters {
            a.open_gate_if_stage_open(c, now);
            a.refresh(c, now);
        }
        changed.extend(a.open_ready_stages(now));
        self.active = Some(a);
        changed.sort_unstable();
        changed.dedup();
        Ok(changed)
    }

    /// Admits a verified report into its cluster's gate.
    pub fn admit(&mut self, report: &Verified<TestReport>, now: UnixMillis) -> Result<Vec<ClusterKey>, ReportRejected> {
        let Some(a) = self.active.as_mut() else {
            return Err(ReportRejected::OtherUpgrade);
        };
        if report.payload().manifest_id != a.release.id {
            return Err(ReportRejected::OtherUpgrade);
        }
        let cluster = report.payload().cluster_key;
        let mut changed = Vec::new();
        if !a.gates.contains_key(&cluster) {
            if a.unknown.len() >= MAX_UNKNOWN_CLUSTERS {
                return Err(ReportRejected::TooManyUnknownClusters);
            }
            // A report can outrun membership; keep it under a gate that has no members
            // yet (so it counts for nothing until the members are known).
            let g = a.new_gate(cluster, &[]);
            a.gates.insert(cluster, g);
            a.unknown.insert(cluster);
            changed.extend(a.open_gate_if_stage_open(cluster, now));
        }
        a.gates.get_mut(&cluster).map(|g| g.admit(report)).unwrap_or(Err(ReportRejected::OtherCluster))?;
        changed.extend(a.refresh(cluster, now));
        changed.extend(a.open_ready_stages(now));
        Ok(changed)
    }

    /// The vendor's request (signature and trust checked by the caller) to test the
    /// current release again in the clusters it names; returns the clusters whose view
    /// changed.
    pub fn retest(
        &mut self,
        request: &Verified<RetestRequest>,
        now: UnixMillis,
    ) -> Result<Vec<ClusterKey>, RetestIgnored> {
        let Some(a) = self.active.as_mut() else {
            return Err(RetestIgnored::OtherRelease);
        };
        let r = request.payload();
        if r.manifest_id != a.release.id || r.app != a.release.manifest.app || r.version != a.release.manifest.version {
            return Err(RetestIgnored::OtherRelease);
        }
        let at = request.issued_at();
        if r.clusters.is_empty() {
            a.retest_all = Some(a.retest_all.map_or(at, |t| t.max(at)));
        } else {
            let new = r.clusters.iter().filter(|c| !a.retests.contains_key(c)).count();
            if a.retests.len() + new > MAX_RETESTED_CLUSTERS {
                return Err(RetestIgnored::TooManyClusters);
            }
            for c in &r.clusters {
                let t = a.retests.entry(*c).or_insert(at);
                *t = (*t).max(at);
            }
        }
        let mut changed = Vec::new();
        let clusters: Vec<ClusterKey> = a.gates.keys().copied().filter(|c| r.covers(c)).collect();
        for c in clusters {
            if a.gates.get_mut(&c).is_some_and(|g| g.retest(at)) {
                changed.extend(a.refresh(c, now));
            }
        }
        changed.extend(a.open_ready_stages(now));
        Ok(changed)
    }

    /// Handles the passage of time: seats passing on, stages opening by timeout.
    pub fn tick(&mut self, now: UnixMillis) -> Vec<ClusterKey> {
        let Some(a) = self.active.as_mut() else {
            return Vec::new();
        };
        let due: Vec<ClusterKey> = a.deadlines.iter().take_while(|(d, _)| *d <= now).map(|(_, c)| *c).collect();
        let mut changed = Vec::new();
        for c in due {
            changed.extend(a.refresh(c, now));
        }
        changed.extend(a.open_ready_stages(now));
        changed
    }

    /// The next time [`Campaign::tick`] may change something.
    pub fn next_timeout(&self) -> Option<UnixMillis> {
        let a = self.active.as_ref()?;
        let gates = a.deadlines.first().map(|(d, _)| *d);
        debug_assert_eq!(
            a.deadlines.iter().map(|(_, c)| *c).collect::<BTreeSet<_>>(),
            a.evaluations.iter().filter(|(_, e)| e.next_deadline.is_some()).map(|(c, _)| *c).collect(),
            "the deadline index lost step with the evaluations"
        );
        gates.into_iter().chain(a.schedule.next_timeout(&a.plan)).min()
    }
}

impl Active {
    /// A cluster's gate, with the retest requests already heard applied.
    fn new_gate(&self, cluster: ClusterKey, members: &[Presence]) -> ClusterGate {
        let mut g = ClusterGate::new(&self.release.manifest, self.release.id, self.release.issued_at, cluster, members);
        let at = [self.retest_all, self.retests.get(&cluster).copied()].into_iter().flatten().max();
        if let Some(at) = at {
            g.retest(at);
        }
        g
    }

    /// Re-evaluates one gate; returns the cluster if its evaluation changed.
    fn refresh(&mut self, cluster: ClusterKey, now: UnixMillis) -> Option<ClusterKey> {
        let gate = self.gates.get(&cluster)?;
        let e = gate.evaluate(now);
        if let Verdict::Holds { at } = e.verdict {
            self.schedule.settle(&self.plan, cluster, at);
        }
        if self.evaluations.get(&cluster) == Some(&e) {
            return None;
        }
        if let Some(d) = e.next_deadline {
            self.deadlines.insert((d, cluster));
        }
        if let Some(old) = self.evaluations.insert(cluster, e).and_then(|old| old.next_deadline) {
            if Some(old) != self.evaluations[&cluster].next_deadline {
                self.deadlines.remove(&(old, cluster));
            }
        }
        Some(cluster)
    }

    fn open_gate_if_stage_open(&mut self, cluster: ClusterKey, now: UnixMillis) -> Option<ClusterKey> {
        let opened = self.schedule.opened_at(self.plan.stage_of(&cluster))?;
        let gate = self.gates.get_mut(&cluster)?;
        gate.open(opened.max(self.release.issued_at));
        self.refresh(cluster, now)
    }

    /// Opens stages until none is ready; gates that hold at once (no testing) may open
    /// further stages in the same call.
    fn open_ready_stages(&mut self, now: UnixMillis) -> Vec<ClusterKey> {
        let mut changed = Vec::new();
        loop {
            let opened = self.schedule.advance(&self.plan, now);
            if opened.is_empty() {
                return changed;
            }
            for stage in opened {
                for cluster in self.plan.stages()[stage].clone() {
                    changed.extend(self.open_gate_if_stage_open(cluster, now));
                }
            }
        }
    }
}

/// The sizes the plan is made from: a summary's where there is one (every node hears
/// the same), else the count of known members.
fn sizes(
    members: &BTreeMap<ClusterKey, Vec<Presence>>,
    estimates: &BTreeMap<ClusterKey, u64>,
) -> BTreeMap<ClusterKey, u64> {
    let mut out: BTreeMap<ClusterKey, u64> = members.iter().map(|(c, m)| (*c, m.len() as u64)).collect();
    out.extend(estimates.iter().map(|(c, s)| (*c, *s)));
    out
}
