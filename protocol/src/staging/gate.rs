//! One cluster's gate for one upgrade: which reports count, and whether the cluster may
//! apply (holds), must not (halted), or waits (pending).
//!
//! The gate stores reports and decides from them on demand, so its verdict is a pure
//! function of (membership, signed reports, open time, now). Nodes that have heard the
//! same reports agree, whatever order the reports arrived in.

use super::election::{next_hand_off, rank_members, seats_at, Quorum, Seat};
use crate::envelope::Verified;
use crate::fingerprint::ClusterKey;
use crate::identity::PublicKey;
use crate::manifest::{PolicyKind, UpgradeManifest};
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
    /// that completed the threshold).
    Holds { at: UnixMillis },
    /// An elected representative reported failure: nobody in the cluster applies.
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
    ranking: Vec<PublicKey>,
    /// The same members, sorted: membership checks stay logarithmic in big clusters.
    sorted: Vec<PublicKey>,
    opened_at: Option<UnixMillis>,
    reports: BTreeMap<PublicKey, ReportRecord>,
}

impl ClusterGate {
    pub fn new(
        manifest: &UpgradeManifest,
        manifest_id: Digest,
        released_at: UnixMillis,
        cluster: ClusterKey,
        members: &[PublicKey],
    ) -> Self {
        let policy = &manifest.policy;
        // No staging means no testing: the gate holds the moment the stage opens.
        let (representatives, threshold) = match policy.kind {
            PolicyKind::NoStaging => (0, 0),
            PolicyKind::FrontLoading | PolicyKind::Balanced => (policy.representatives, policy.threshold),
        };
        ClusterGate {
            manifest: manifest_id,
            app: manifest.app.clone(),
            version: manifest.version.clone(),
            cluster,
            representatives,
            threshold,
            deadline: Duration::from_secs(policy.report_deadline_secs as u64),
            valid_from: released_at,
            ranking: rank_members(&manifest_id, &cluster, members),
            sorted: sorted(members),
            opened_at: None,
            reports: BTreeMap::new(),
        }
    }

    fn is_member(&self, peer: &PublicKey) -> bool {
        self.sorted.binary_search(peer).is_ok()
    }

    pub fn cluster(&self) -> ClusterKey {
        self.cluster
    }

    pub fn manifest_id(&self) -> Digest {
        self.manifest
    }

    pub fn member_count(&self) -> usize {
        self.ranking.len()
    }

    pub fn opened_at(&self) -> Option<UnixMillis> {
        self.opened_at
    }

    pub fn quorum(&self) -> Quorum {
        Quorum::new(self.representatives, self.threshold, self.ranking.len())
    }

    /// The cluster's members in representative order.
    pub fn ranking(&self) -> &[PublicKey] {
        &self.ranking
    }

    /// Replaces the membership. Reports already stored are kept: a signer that was a
    /// stranger may turn out to be a member.
    pub fn set_members(&mut self, members: &[PublicKey]) {
        self.ranking = rank_members(&self.manifest, &self.cluster, members);
        self.sorted = sorted(members);
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
        true
    }

    /// Stores a verified report if it concerns this gate. Whether it counts is decided
    /// at evaluation, since seats move with time.
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
        if let Some(old) = self.reports.get(&signer) {
            if old.id == record.id {
                return Err(ReportRejected::Replay);
            }
            // One voice per signer. The earliest statement stands (ties by id), so every
            // node keeps the same one whatever the arrival order.
            if (old.issued_at, old.id) <= (record.issued_at, record.id) {
                return Err(ReportRejected::Duplicate);
            }
        } else if !self.is_member(&signer) {
            let strangers = self.reports.keys().filter(|k| !self.is_member(k)).count();
            if strangers >= MAX_STRANGER_REPORTS {
                return Err(ReportRejected::TooManyStrangers);
            }
        }
        self.reports.insert(signer, record);
        Ok(())
    }

    /// The verdict at `now`.
    pub fn evaluate(&self, now: UnixMillis) -> Evaluation {
        let Some(start) = self.opened_at else {
            return Evaluation { verdict: Verdict::NotOpen, seats: Vec::new(), next_deadline: None };
        };
        let quorum = self.quorum();
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
        let first_fail = counted.iter().filter(|c| c.1 == Outcome::Fail).min_by_key(|c| (c.0, c.2));
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
        Evaluation { verdict, seats, next_deadline }
    }
}

fn sorted(members: &[PublicKey]) -> Vec<PublicKey> {
    let mut s = members.to_vec();
    s.sort_unstable();
    s.dedup();
    s
}
