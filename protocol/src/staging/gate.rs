//! One cluster's gate for one upgrade: which reports count, and whether the cluster may
//! apply (holds), must not (halted), or waits (pending).
//!
//! The gate stores reports and decides from them on demand, so its verdict is a pure
//! function of (membership, signed reports, open time, now). Nodes that have heard the
//! same reports agree, whatever order the reports arrived in.

use super::election::{may_hold_seat, next_hand_off, rank_members, rank_score, seats_at, Quorum, Seat};
use crate::envelope::Verified;
use crate::fingerprint::ClusterKey;
use crate::identity::PublicKey;
use crate::manifest::{PolicyKind, UpgradeManifest};
use crate::presence::Presence;
use crate::report::{Outcome, TestReport};
use crate::time::UnixMillis;
use crate::Digest;
use std::collections::BTreeMap;
use std::time::Duration;
use thiserror::Error;

/// Reports kept from signers the node does not (yet) know as members of the cluster:
/// membership may arrive after a report, but strangers must not grow memory unbounded.
pub const MAX_STRANGER_REPORTS: usize = 32;

/// Why a verified report does not enter a gate. Tests inject each of these.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ReportRejected {
    #[error("report is for another upgrade")]
    OtherUpgrade,
    #[error("report names this upgrade's id but another app or version")]
    WrongRelease,
    #[error("report is for another cluster")]
    OtherCluster,
    #[error("this exact report was already counted")]
    Replay,
    #[error("the signer already reported earlier; its first report stands")]
    Duplicate,
    #[error("too many reports from signers outside the cluster")]
    TooManyStrangers,
    #[error("the report predates the vendor's request to test again")]
    BeforeRetest,
    #[error("too many clusters this node knows no members of already hold reports")]
    TooManyUnknownClusters,
    #[error("the signer joined the cluster after the release: it may not represent it")]
    JoinedAfterRelease,
    #[error("the signer's rank could not hold a seat by the time of its report")]
    NotElected,
}

impl ReportRejected {
    /// A stable word for counters and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            ReportRejected::OtherUpgrade => "other_upgrade",
            ReportRejected::WrongRelease => "wrong_release",
            ReportRejected::OtherCluster => "other_cluster",
            ReportRejected::Replay => "replay",
            ReportRejected::Duplicate => "duplicate",
            ReportRejected::TooManyStrangers => "too_many_strangers",
            ReportRejected::BeforeRetest => "before_retest",
            ReportRejected::TooManyUnknownClusters => "too_many_unknown_clusters",
            ReportRejected::JoinedAfterRelease => "joined_after_release",
            ReportRejected::NotElected => "not_elected",
        }
    }
}

/// Where a cluster stands for one upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The cluster's stage has not opened.
    NotOpen,
    /// Representatives are testing.
    Pending,
    /// Enough elected representatives passed (the time is the issue time of the pass
    /// that completed the threshold), and in a critical cluster enough of the vendor's
    /// trusted testers too.
    Holds { at: UnixMillis },
    /// An elected representative (or a trusted tester of a critical cluster) reported
    /// failure: nobody in the cluster applies.
    Halted { at: UnixMillis, by: PublicKey },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ReportRecord {
    id: Digest,
    issued_at: UnixMillis,
    outcome: Outcome,
}

/// The gate's decision at one instant, with who holds the representative seats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    pub verdict: Verdict,
    pub seats: Vec<Seat>,
    /// When a seat may next pass on, if it still can.
    pub next_deadline: Option<UnixMillis>,
}

impl Evaluation {
    pub fn is_seated(&self, peer: &PublicKey) -> bool {
        self.seats.iter().any(|s| &s.holder == peer)
    }
}

/// The gate of one cluster for one manifest.
#[derive(Clone, Debug)]
pub struct ClusterGate {
    manifest: Digest,
    app: String,
    version: semver::Version,
    cluster: ClusterKey,
    representatives: u16,
    threshold: u16,
    deadline: Duration,
    /// When the release was issued, or the vendor last asked this cluster to test again:
    /// reports from before it count for nothing.
    valid_from: UnixMillis,
    /// Representatives must have been seen in the cluster this long before `valid_from`.
    margin: Duration,
    /// The eligible members (seen in the cluster before the cutoff) in representative
    /// order: only they hold seats.
    ranking: Vec<PublicKey>,
    /// Every known member with its first sighting, sorted by key: membership checks
    /// stay logarithmic in big clusters.
    members: Vec<Presence>,
    /// The cluster's size as its members' signed summaries state it, for a cluster
    /// this node is not in and knows no members of: its gate judges reports by the
    /// O(1) bar on their signers' rank scores instead of a ranking.
    estimate: Option<u64>,
    opened_at: Option<UnixMillis>,
    reports: BTreeMap<PublicKey, ReportRecord>,
    /// The vendor's trusted testers and how many must pass, if this cluster is critical.
    testers: Vec<PublicKey>,
    tester_quorum: usize,
}

impl ClusterGate {
    pub fn new(
        manifest: &UpgradeManifest,
        manifest_id: Digest,
        released_at: UnixMillis,
        cluster: ClusterKey,
        members: &[Presence],
    ) -> Self {
        let policy = &manifest.policy;
        let critical = policy.critical.contains(&cluster) && policy.kind != PolicyKind::NoStaging;
        // No staging means no testing: the gate holds the moment the stage opens.
        let (representatives, threshold) = match policy.kind {
            PolicyKind::NoStaging => (0, 0),
            PolicyKind::FrontLoading | PolicyKind::Balanced => (policy.representatives, policy.threshold),
        };
        let mut gate = ClusterGate {
            manifest: manifest_id,
            app: manifest.app.clone(),
            version: manifest.version.clone(),
            cluster,
            representatives,
            threshold,
            deadline: Duration::from_secs(policy.report_deadline_secs as u64),
            valid_from: released_at,
            margin: Duration::from_secs(policy.presence_margin_secs as u64),
            ranking: Vec::new(),
            members: Vec::new(),
            estimate: None,
            opened_at: None,
            reports: BTreeMap::new(),
            testers: if critical { policy.testers.clone() } else { Vec::new() },
            tester_quorum: if critical { policy.tester_quorum as usize } else { 0 },
        };
        gate.set_members(members);
        gate
    }

    /// Members seen in the cluster at or before this time may represent it.
    pub fn cutoff(&self) -> UnixMillis {
        self.valid_from.saturating_sub(self.margin)
    }

    fn member(&self, peer: &PublicKey) -> Option<&Presence> {
        self.members.binary_search_by(|m| m.peer.cmp(peer)).ok().map(|i| &self.members[i])
    }

    fn is_member(&self, peer: &PublicKey) -> bool {
        self.member(peer).is_some()
    }

    fn is_tester(&self, peer: &PublicKey) -> bool {
        self.tester_quorum > 0 && self.testers.contains(peer)
    }

    pub fn cluster(&self) -> ClusterKey {
        self.cluster
    }

    pub fn manifest_id(&self) -> Digest {
        self.manifest
    }

    /// Every known member, eligible or not.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Members who may represent the cluster for this release.
    pub fn eligible_count(&self) -> usize {
        self.ranking.len()
    }

    pub fn opened_at(&self) -> Option<UnixMillis> {
        self.opened_at
    }

    pub fn quorum(&self) -> Quorum {
        match self.estimated_size() {
            Some(size) => Quorum::new(self.representatives, self.threshold, size),
            None => Quorum::new(self.representatives, self.threshold, self.ranking.len()),
        }
    }

    /// Sets (or clears) the size estimate this gate judges by while it knows no
    /// members (see [`ClusterGate::is_estimated`]).
    pub fn set_estimate(&mut self, size: Option<u64>) {
        self.estimate = size;
    }

    /// The gate knows its cluster only by size: no members, a summary's estimate. Its
    /// verdict counts the reports of signers whose rank scores fall under the O(1) bar
    /// for that size ([`may_hold_seat`]), without electing anyone. A node judges other
    /// clusters this way, which only times when later stages open; its own cluster it
    /// always judges by the members it has seen, with their standing.
    pub fn is_estimated(&self) -> bool {
        self.members.is_empty() && self.estimate.is_some()
    }

    fn estimated_size(&self) -> Option<usize> {
        self.estimate.filter(|_| self.members.is_empty()).map(|e| e.min(usize::MAX as u64) as usize)
    }

    /// The eligible members in representative order.
    pub fn ranking(&self) -> &[PublicKey] {
        &self.ranking
    }

    /// Replaces the membership. Reports already stored are kept: a signer that was a
    /// stranger may turn out to be a member.
    pub fn set_members(&mut self, members: &[Presence]) {
        self.members = sorted(members);
        self.rerank();
    }

    fn rerank(&mut self) {
        let cutoff = self.cutoff();
        let eligible: Vec<PublicKey> = self.members.iter().filter(|m| m.predates(cutoff)).map(|m| m.peer).collect();
        self.ranking = rank_members(&self.manifest, &self.cluster, &eligible);
    }

    /// Starts testing (the cluster's stage opened). The first opening time stands.
    pub fn open(&mut self, at: UnixMillis) {
        self.opened_at.get_or_insert(at);
    }

    /// The vendor asked this cluster to test again as of `at`: earlier reports (the
    /// failure that halted it among them) no longer count, and seats start over from
    /// `at` in ranking order. Later requests move `at` forward; earlier ones change
    /// nothing, so every node that heard the same requests agrees.
    pub fn retest(&mut self, at: UnixMillis) -> bool {
        if at <= self.valid_from {
            return false;
        }
        self.valid_from = at;
        self.opened_at = self.opened_at.map(|o| o.max(at));
        self.reports.retain(|_, r| r.issued_at >= at);
        self.rerank();
        true
    }

    /// Stores a verified report if it concerns this gate. Whether it counts is decided
    /// at evaluation, since seats move with time.
    /// What `signer`'s report that stands here says, if it has one.
    pub fn outcome_of(&self, signer: &PublicKey) -> Option<Outcome> {
        self.reports.get(signer).map(|r| r.outcome)
    }

    pub fn admit(&mut self, report: &Verified<TestReport>) -> Result<(), ReportRejected> {
        let r = report.payload();
        if r.manifest_id != self.manifest {
            return Err(ReportRejected::OtherUpgrade);
        }
        if r.app != self.app || r.version != self.version {
            return Err(ReportRejected::WrongRelease);
        }
        if r.cluster_key != self.cluster {
            return Err(ReportRejected::OtherCluster);
        }
        let record = ReportRecord { id: report.id(), issued_at: report.issued_at(), outcome: r.outcome };
        if record.issued_at < self.valid_from {
            return Err(ReportRejected::BeforeRetest);
        }
        let signer = *report.signer();
        if self.member(&signer).is_some_and(|m| !m.predates(self.cutoff())) && !self.is_tester(&signer) {
            return Err(ReportRejected::JoinedAfterRelease);
        }
        if let Some(old) = self.reports.get(&signer) {
            if old.id == record.id {
                return Err(ReportRejected::Replay);
            }
            // One voice per signer, the same on every node whatever the arrival order:
            // a failure stands over anything else the signer said (a node that counted
            // it has halted, and only the vendor's retest restarts the cluster);
            // otherwise (and among failures) the earliest statement stands, ties by id.
            let standing = |r: &ReportRecord| (r.outcome != Outcome::Fail, r.issued_at, r.id);
            if standing(old) <= standing(&record) {
                return Err(ReportRejected::Duplicate);
            }
        } else if !self.is_member(&signer) && !self.is_tester(&signer) {
            // A stranger may be a member whose announcement has not reached us yet, but
            // only one whose rank could be seated by now is worth keeping.
            if !self.may_hold_seat(&signer, record.issued_at) {
                return Err(ReportRejected::NotElected);
            }
            let strangers = self.reports.keys().filter(|k| !self.is_member(k) && !self.is_tester(k)).count();
            if strangers >= MAX_STRANGER_REPORTS {
                return Err(ReportRejected::TooManyStrangers);
            }
        }
        self.reports.insert(signer, record);
        Ok(())
    }

    /// The O(1) bar on a signer's rank at `at` (see [`may_hold_seat`]).
    fn may_hold_seat(&self, signer: &PublicKey, at: UnixMillis) -> bool {
        let term = self.deadline.as_millis().max(1) as u64;
        let round = self.opened_at.map_or(0, |o| at.0.saturating_sub(o.0) / term);
        let handed_on = self.reports.values().filter(|r| r.outcome == Outcome::Abstain).count();
        // The ranking is drawn from the members, and the policy's seats are at least as
        // many as a small cluster gets.
        let seats = self.representatives as usize;
        let size = self.estimated_size().unwrap_or(self.members.len());
        may_hold_seat(&rank_score(&self.manifest, &self.cluster, signer), seats, handed_on, size, round.min(64) as u32)
    }

    /// The verdict at `now`.
    pub fn evaluate(&self, now: UnixMillis) -> Evaluation {
        let Some(start) = self.opened_at else {
            return Evaluation { verdict: Verdict::NotOpen, seats: Vec::new(), next_deadline: None };
        };
        let quorum = self.quorum();
        if self.is_estimated() {
            return self.evaluate_by_bar(start, quorum);
        }
        let reported = |k: &PublicKey| self.reports.get(k).map(|r| (r.issued_at, r.outcome));
        let mut seats = seats_at(&self.ranking, quorum.seats, start, self.deadline, now, self.valid_from, reported);
        // Replacements take ranks in order, so the highest seated rank tells how far down
        // the ranking the seats have gone.
        let exhausted = seats.iter().map(|s| s.rank + 1).max().unwrap_or(0) >= self.ranking.len();
        // With no one left to pass a seat to, a late verdict from its holder is all the
        // cluster will get, so it counts.
        if exhausted {
            for s in &mut seats {
                if reported(&s.holder).is_some_and(|(t, o)| o.is_verdict() && t >= self.valid_from) {
                    s.settled = true;
                }
            }
        }
        // Only passes and fails are verdicts; an abstention only moved its seat on.
        let counted: Vec<(UnixMillis, Outcome, PublicKey)> = seats
            .iter()
            .filter(|s| s.settled)
            .filter_map(|s| self.reports.get(&s.holder).map(|r| (r.issued_at, r.outcome, s.holder)))
            .filter(|c| c.1.is_verdict())
            .collect();
        let next_deadline = if exhausted { None } else { next_hand_off(&seats, self.valid_from, reported) };
        let verdict = self.verdict(start, quorum, &counted);
        Evaluation { verdict, seats, next_deadline }
    }

    /// The verdict of a gate that knows its cluster only by size: every pass or fail
    /// whose signer's rank was under the bar when it reported counts. Rechecked here
    /// (not only at admission), so that the same reports and estimate give the same
    /// verdict whatever was known when each report arrived.
    fn evaluate_by_bar(&self, start: UnixMillis, quorum: Quorum) -> Evaluation {
        let counted: Vec<(UnixMillis, Outcome, PublicKey)> = self
            .reports
            .iter()
            .filter(|(_, r)| r.outcome.is_verdict() && r.issued_at >= self.valid_from)
            .filter(|(k, r)| self.may_hold_seat(k, r.issued_at))
            .map(|(k, r)| (r.issued_at, r.outcome, *k))
            .collect();
        let verdict = self.verdict(start, quorum, &counted);
        Evaluation { verdict, seats: Vec::new(), next_deadline: None }
    }

    /// The verdict from the verdicts that count (passes and fails of seated or, by
    /// size, possibly seated signers) and the vendor's testers.
    fn verdict(&self, start: UnixMillis, quorum: Quorum, counted: &[(UnixMillis, Outcome, PublicKey)]) -> Verdict {
        let first_fail = counted.iter().filter(|c| c.1 == Outcome::Fail).min_by_key(|c| (c.0, c.2));
        // The vendor's own testers speak for a critical cluster beside its representatives.
        let testers: Vec<(UnixMillis, Outcome, PublicKey)> = if self.tester_quorum > 0 {
            self.testers
                .iter()
                .filter_map(|t| self.reports.get(t).map(|r| (r.issued_at, r.outcome, *t)))
                .filter(|c| c.1.is_verdict() && c.0 >= self.valid_from)
                .collect()
        } else {
            Vec::new()
        };
        let first_fail =
            first_fail.into_iter().chain(testers.iter().filter(|c| c.1 == Outcome::Fail)).min_by_key(|c| (c.0, c.2));
        let verdict = if let Some(&(at, _, by)) = first_fail {
            Verdict::Halted { at, by }
        } else {
            let mut passes: Vec<UnixMillis> = counted.iter().map(|c| c.0).collect();
            passes.sort_unstable();
            if self.representatives == 0 {
                Verdict::Holds { at: start }
            } else if quorum.threshold == 0 {
                // Members unknown yet: nobody can be elected, so nothing can pass.
                Verdict::Pending
            } else if passes.len() >= quorum.threshold {
                Verdict::Holds { at: passes[quorum.threshold - 1].max(start) }
            } else {
                Verdict::Pending
            }
        };
        match verdict {
            Verdict::Holds { at } if self.tester_quorum > 0 => {
                let mut passes: Vec<UnixMillis> = testers.iter().map(|c| c.0).collect();
                passes.sort_unstable();
                match passes.get(self.tester_quorum - 1) {
                    Some(t) => Verdict::Holds { at: at.max(*t) },
                    None => Verdict::Pending,
                }
            }
            v => v,
        }
    }
}

/// Sorted by key, one entry per key (the earliest sighting).
fn sorted(members: &[Presence]) -> Vec<Presence> {
    let mut s = members.to_vec();
    s.sort_unstable();
    s.dedup_by(|a, b| a.peer == b.peer);
    s
}
