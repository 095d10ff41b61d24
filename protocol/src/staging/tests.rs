//! Scenario tests of the staging core: gates, stages, the node's rollout, restarts,
//! and properties over arbitrary event orders.

use super::*;
use crate::fingerprint::{ClusterKey, Fingerprint};
use crate::identity::{Keypair, PublicKey};
use crate::manifest::{ArtifactInfo, PolicyKind, StagingPolicy, UpgradeManifest, MIN_CHUNK_SIZE};
use crate::presence::Presence;
use crate::report::{Outcome, ProblemDraft, RetestRequest, TestReport};
use crate::time::UnixMillis;
use crate::{Digest, Envelope, Verified};
use proptest::prelude::*;

const APP: &str = "mysql";
const SEC: u64 = 1000;

fn vendor() -> Keypair {
    Keypair::from_secret_bytes(&[200; 32])
}

fn keypair(cluster: u8, i: u8) -> Keypair {
    let mut secret = [0u8; 32];
    secret[0] = cluster;
    secret[1] = i;
    secret[2] = 7;
    Keypair::from_secret_bytes(&secret)
}

fn fingerprint(cluster: u8) -> Fingerprint {
    Fingerprint::new(APP.into(), Digest([cluster; 32]), Vec::new())
}

fn cluster_key(cluster: u8) -> ClusterKey {
    fingerprint(cluster).cluster_key()
}

fn policy(kind: PolicyKind) -> StagingPolicy {
    StagingPolicy {
        kind,
        representatives: 2,
        threshold: 2,
        report_deadline_secs: 600,
        stages: 2,
        stage_timeout_secs: 3600,
        order: crate::manifest::StageOrder::SmallestFirst,
        ..StagingPolicy::default()
    }
}

fn manifest(version: &str, policy: StagingPolicy) -> UpgradeManifest {
    UpgradeManifest {
        app: APP.into(),
        version: version.parse().unwrap(),
        artifact: ArtifactInfo::describe(version.as_bytes(), MIN_CHUNK_SIZE),
        test_bundle: None,
        tests: Vec::new(),
        health_check: None,
        policy,
        expires_at: UnixMillis(u64::MAX),
        notes: String::new(),
    }
}

fn signed_manifest(m: &UpgradeManifest, at: u64) -> Verified<UpgradeManifest> {
    Envelope::sign(&vendor(), m, UnixMillis(at)).unwrap().verify().unwrap()
}

fn report_for(
    signer: &Keypair,
    m: &UpgradeManifest,
    cluster: ClusterKey,
    outcome: Outcome,
    at: u64,
) -> Verified<TestReport> {
    let r = TestReport {
        manifest_id: m.id(),
        app: m.app.clone(),
        version: m.version.clone(),
        cluster_key: cluster,
        outcome,
        summary: String::new(),
        logs_digest: Digest([0; 32]),
        tests_run: 1,
        duration_ms: 1,
    };
    Envelope::sign(signer, &r, UnixMillis(at)).unwrap().verify().unwrap()
}

/// Members seen in their cluster from the beginning of time.
fn present(keys: &[PublicKey]) -> Vec<Presence> {
    keys.iter().map(|k| Presence { peer: *k, since: UnixMillis(0) }).collect()
}

/// A fleet for campaign-level tests: cluster `c` has `sizes[c]` members.
struct Fleet {
    keys: Vec<Vec<Keypair>>,
}

impl Fleet {
    fn new(sizes: &[u8]) -> Self {
        Fleet { keys: sizes.iter().enumerate().map(|(c, n)| (0..*n).map(|i| keypair(c as u8, i)).collect()).collect() }
    }

    fn keys(&self, c: usize) -> Vec<PublicKey> {
        self.keys[c].iter().map(|k| k.public()).collect()
    }

    /// Cluster `c`'s members, all seen there long before any release.
    fn members(&self, c: usize) -> Vec<Presence> {
        present(&self.keys(c))
    }

    fn campaign(&self) -> Campaign {
        let mut campaign = Campaign::new();
        for c in 0..self.keys.len() {
            campaign.set_members(cluster_key(c as u8), self.members(c), UnixMillis(0));
        }
        campaign
    }

    /// The keypair of the member ranked `rank` in cluster `c` for manifest `m`.
    fn ranked(&self, campaign: &Campaign, c: usize, rank: usize) -> &Keypair {
        let gate = campaign.gate(&cluster_key(c as u8)).unwrap();
        let pk = gate.ranking()[rank];
        self.keys[c].iter().find(|k| k.public() == pk).unwrap()
    }
}

fn verdict(campaign: &Campaign, c: u8) -> Verdict {
    campaign.evaluation(&cluster_key(c)).unwrap().verdict
}

#[test]
fn only_elected_representatives_count_and_each_once() {
    let fleet = Fleet::new(&[6]);
    let mut campaign = fleet.campaign();
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    campaign.start_release(&signed_manifest(&m, 0), UnixMillis(0)).unwrap();
    let c = cluster_key(0);
    assert_eq!(verdict(&campaign, 0), Verdict::Pending);

    // Passes from members ranked below the seats are stored but do not count.
    for rank in 2..6 {
        let r = report_for(fleet.ranked(&campaign, 0, rank), &m, c, Outcome::Pass, 10 * SEC);
        campaign.admit(&r, UnixMillis(10 * SEC)).unwrap();
    }
    assert_eq!(verdict(&campaign, 0), Verdict::Pending);

    // One representative's pass, replayed, is one pass.
    let first = report_for(fleet.ranked(&campaign, 0, 0), &m, c, Outcome::Pass, 20 * SEC);
    campaign.admit(&first, UnixMillis(20 * SEC)).unwrap();
    assert_eq!(campaign.admit(&first, UnixMillis(21 * SEC)), Err(ReportRejected::Replay));
    let again = report_for(fleet.ranked(&campaign, 0, 0), &m, c, Outcome::Pass, 22 * SEC);
    assert_eq!(campaign.admit(&again, UnixMillis(22 * SEC)), Err(ReportRejected::Duplicate));
    assert_eq!(verdict(&campaign, 0), Verdict::Pending);

    let second = report_for(fleet.ranked(&campaign, 0, 1), &m, c, Outcome::Pass, 30 * SEC);
    campaign.admit(&second, UnixMillis(30 * SEC)).unwrap();
    assert_eq!(verdict(&campaign, 0), Verdict::Holds { at: UnixMillis(30 * SEC) });
}

#[test]
fn reports_for_other_clusters_upgrades_or_releases_are_ignored() {
    let fleet = Fleet::new(&[3, 3]);
    let mut campaign = fleet.campaign();
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    campaign.start_release(&signed_manifest(&m, 0), UnixMillis(0)).unwrap();
    let rep = fleet.ranked(&campaign, 0, 0).clone();

    // Another upgrade.
    let other = manifest("0.9.0", policy(PolicyKind::FrontLoading));
    let r = report_for(&rep, &other, cluster_key(0), Outcome::Fail, SEC);
    assert_eq!(campaign.admit(&r, UnixMillis(SEC)), Err(ReportRejected::OtherUpgrade));

    // Right id, but claims another version: forged or broken, ignored.
    let mut wrong = m.clone();
    wrong.version = "1.0.1".parse().unwrap();
    let bad = TestReport {
        manifest_id: m.id(),
        app: APP.into(),
        version: wrong.version.clone(),
        cluster_key: cluster_key(0),
        outcome: Outcome::Fail,
        summary: String::new(),
        logs_digest: Digest([0; 32]),
        tests_run: 1,
        duration_ms: 1,
    };
    let bad = Envelope::sign(&rep, &bad, UnixMillis(SEC)).unwrap().verify().unwrap();
    assert_eq!(campaign.admit(&bad, UnixMillis(SEC)), Err(ReportRejected::WrongRelease));

    // A representative of cluster 0 reporting on cluster 1: it is not seated there.
    let r = report_for(&rep, &m, cluster_key(1), Outcome::Fail, SEC);
    campaign.admit(&r, UnixMillis(SEC)).unwrap();
    assert_eq!(verdict(&campaign, 1), Verdict::Pending);
    assert_eq!(verdict(&campaign, 0), Verdict::Pending);

    // An outsider with its own key, claiming cluster 0: a stranger, never counted.
    let outsider = Keypair::from_secret_bytes(&[99; 32]);
    let r = report_for(&outsider, &m, cluster_key(0), Outcome::Fail, SEC);
    campaign.admit(&r, UnixMillis(SEC)).unwrap();
    assert_eq!(verdict(&campaign, 0), Verdict::Pending);
}

#[test]
fn forged_reports_never_become_verified() {
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    let rep = keypair(0, 0);
    let r = report_for(&rep, &m, cluster_key(0), Outcome::Pass, SEC);
    let mut env = Envelope::sign(&rep, r.payload(), UnixMillis(SEC)).unwrap();
    // Claim a representative's identity without its key.
    env.signer = keypair(0, 1).public();
    assert!(env.verify::<TestReport>().is_err());
}

#[test]
fn reports_that_outrun_membership_count_once_members_are_known() {
    let fleet = Fleet::new(&[3, 3]);
    let mut campaign = Campaign::new();
    campaign.set_members(cluster_key(0), fleet.members(0), UnixMillis(0));
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    campaign.start_release(&signed_manifest(&m, 0), UnixMillis(0)).unwrap();
    let ranking = rank_members(&m.id(), &cluster_key(1), &fleet.keys(1));
    let key = |pk: PublicKey| fleet.keys[1].iter().find(|k| k.public() == pk).unwrap();
    for pk in &ranking[..2] {
        let r = report_for(key(*pk), &m, cluster_key(1), Outcome::Pass, 10 * SEC);
        campaign.admit(&r, UnixMillis(10 * SEC)).unwrap();
    }
    assert_eq!(verdict(&campaign, 1), Verdict::Pending, "no members known: nothing counts");
    campaign.set_members(cluster_key(1), fleet.members(1), UnixMillis(20 * SEC));
    assert_eq!(verdict(&campaign, 1), Verdict::Holds { at: UnixMillis(10 * SEC) });
}

#[test]
fn too_many_strangers_are_refused() {
    let fleet = Fleet::new(&[2]);
    let mut campaign = fleet.campaign();
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    campaign.start_release(&signed_manifest(&m, 0), UnixMillis(0)).unwrap();
    let mut refused = 0;
    for i in 0..=gate::MAX_STRANGER_REPORTS as u8 {
        let k = Keypair::from_secret_bytes(&[i.wrapping_add(100); 32]);
        if campaign.admit(&report_for(&k, &m, cluster_key(0), Outcome::Pass, SEC), UnixMillis(SEC)).is_err() {
            refused += 1;
        }
    }
    assert_eq!(refused, 1);
}

#[test]
fn reports_for_made_up_clusters_cost_at_most_a_bounded_number_of_gates() {
    let fleet = Fleet::new(&[2]);
    let mut campaign = fleet.campaign();
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    campaign.start_release(&signed_manifest(&m, 0), UnixMillis(0)).unwrap();
    let stranger = Keypair::from_secret_bytes(&[99; 32]);
    let made_up = |i: usize| {
        let mut d = [0xee; 32];
        d[..8].copy_from_slice(&(i as u64).to_le_bytes());
        ClusterKey(Digest(d))
    };
    let mut refused = Vec::new();
    for i in 0..campaign::MAX_UNKNOWN_CLUSTERS + 10 {
        if let Err(e) = campaign.admit(&report_for(&stranger, &m, made_up(i), Outcome::Fail, SEC), UnixMillis(SEC)) {
            refused.push(e);
        }
    }
    assert_eq!(refused, vec![ReportRejected::TooManyUnknownClusters; 10]);
    // The real cluster's reports still count.
    let r = report_for(fleet.ranked(&campaign, 0, 0), &m, cluster_key(0), Outcome::Pass, 2 * SEC);
    assert!(campaign.admit(&r, UnixMillis(2 * SEC)).is_ok());
}

#[test]
fn a_silent_representative_is_replaced_after_the_deadline() {
    let fleet = Fleet::new(&[5]);
    let mut campaign = fleet.campaign();
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    campaign.start_release(&signed_manifest(&m, 0), UnixMillis(0)).unwrap();
    let c = cluster_key(0);
    let r0 = report_for(fleet.ranked(&campaign, 0, 0), &m, c, Outcome::Pass, 100 * SEC);
    campaign.admit(&r0, UnixMillis(100 * SEC)).unwrap();
    assert_eq!(campaign.next_timeout(), Some(UnixMillis(600 * SEC)));

    // Rank 2 tests early, but only counts once it holds a seat.
    let r2 = report_for(fleet.ranked(&campaign, 0, 2), &m, c, Outcome::Pass, 590 * SEC);
    campaign.admit(&r2, UnixMillis(590 * SEC)).unwrap();
    assert_eq!(verdict(&campaign, 0), Verdict::Pending);
    assert_eq!(campaign.tick(UnixMillis(599 * SEC)), vec![]);
    assert_eq!(campaign.tick(UnixMillis(600 * SEC)), vec![c]);
    let e = campaign.evaluation(&c).unwrap();
    assert!(e.is_seated(&fleet.ranked(&campaign, 0, 2).public()));
    assert!(!e.is_seated(&fleet.ranked(&campaign, 0, 1).public()));
    assert_eq!(e.verdict, Verdict::Holds { at: UnixMillis(590 * SEC) });

    // The replaced representative's late report changes nothing.
    let late = report_for(fleet.ranked(&campaign, 0, 1), &m, c, Outcome::Fail, 800 * SEC);
    campaign.admit(&late, UnixMillis(800 * SEC)).unwrap();
    assert_eq!(verdict(&campaign, 0), Verdict::Holds { at: UnixMillis(590 * SEC) });
}

#[test]
fn tiny_clusters_need_only_the_representatives_they_have() {
    let fleet = Fleet::new(&[1]);
    let mut campaign = fleet.campaign();
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    campaign.start_release(&signed_manifest(&m, 0), UnixMillis(0)).unwrap();
    assert_eq!(campaign.gate(&cluster_key(0)).unwrap().quorum(), Quorum { seats: 1, threshold: 1 });
    let r = report_for(&fleet.keys[0][0], &m, cluster_key(0), Outcome::Pass, SEC);
    campaign.admit(&r, UnixMillis(SEC)).unwrap();
    assert_eq!(verdict(&campaign, 0), Verdict::Holds { at: UnixMillis(SEC) });
}

#[test]
fn a_failing_representative_halts_and_a_fix_restarts_the_cluster() {
    let fleet = Fleet::new(&[4, 4]);
    let mut campaign = fleet.campaign();
    let v1 = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    campaign.start_release(&signed_manifest(&v1, 0), UnixMillis(0)).unwrap();
    let c0 = cluster_key(0);
    let fail = report_for(fleet.ranked(&campaign, 0, 1), &v1, c0, Outcome::Fail, 50 * SEC);
    campaign.admit(&fail, UnixMillis(50 * SEC)).unwrap();
    let pass = report_for(fleet.ranked(&campaign, 0, 0), &v1, c0, Outcome::Pass, 60 * SEC);
    campaign.admit(&pass, UnixMillis(60 * SEC)).unwrap();
    assert!(matches!(verdict(&campaign, 0), Verdict::Halted { at: UnixMillis(50_000), .. }));

    // An older or equal release does not replace it; a newer one (the fix) does.
    let old = manifest("0.9.0", policy(PolicyKind::FrontLoading));
    assert!(matches!(
        campaign.start_release(&signed_manifest(&old, SEC), UnixMillis(SEC)),
        Err(ReleaseIgnored::NotNewer { .. })
    ));
    let v2 = manifest("1.0.1", policy(PolicyKind::FrontLoading));
    campaign.start_release(&signed_manifest(&v2, 100 * SEC), UnixMillis(100 * SEC)).unwrap();
    assert_eq!(verdict(&campaign, 0), Verdict::Pending);
    assert_eq!(campaign.gate(&c0).unwrap().opened_at(), Some(UnixMillis(100 * SEC)));
    // The old failure is a report on another upgrade now.
    assert_eq!(campaign.admit(&fail, UnixMillis(101 * SEC)), Err(ReportRejected::OtherUpgrade));
    for rank in 0..2 {
        let r = report_for(fleet.ranked(&campaign, 0, rank), &v2, c0, Outcome::Pass, 200 * SEC);
        campaign.admit(&r, UnixMillis(200 * SEC)).unwrap();
    }
    assert_eq!(verdict(&campaign, 0), Verdict::Holds { at: UnixMillis(200 * SEC) });
}

#[test]
fn balanced_stages_open_in_order_by_gates_or_timeout() {
    // Cluster 0 (2 machines) goes first, cluster 1 (10 machines) second.
    let fleet = Fleet::new(&[2, 10]);
    let mut campaign = fleet.campaign();
    let m = manifest("1.0.0", policy(PolicyKind::Balanced));
    campaign.start_release(&signed_manifest(&m, 0), UnixMillis(0)).unwrap();
    assert_eq!(campaign.plan().unwrap().stage_count(), 2);
    assert_eq!(verdict(&campaign, 0), Verdict::Pending);
    assert_eq!(verdict(&campaign, 1), Verdict::NotOpen);
    for rank in 0..2 {
        let r = report_for(fleet.ranked(&campaign, 0, rank), &m, cluster_key(0), Outcome::Pass, 300 * SEC);
        campaign.admit(&r, UnixMillis(310 * SEC)).unwrap();
    }
    assert_eq!(verdict(&campaign, 1), Verdict::Pending);
    assert_eq!(campaign.gate(&cluster_key(1)).unwrap().opened_at(), Some(UnixMillis(300 * SEC)));

    // Same fleet, but the first stage halts: the second opens at the timeout.
    let mut campaign = fleet.campaign();
    campaign.start_release(&signed_manifest(&m, 0), UnixMillis(0)).unwrap();
    let r = report_for(fleet.ranked(&campaign, 0, 0), &m, cluster_key(0), Outcome::Fail, 300 * SEC);
    campaign.admit(&r, UnixMillis(300 * SEC)).unwrap();
    assert_eq!(campaign.next_timeout(), Some(UnixMillis(3600 * SEC)));
    campaign.tick(UnixMillis(3599 * SEC));
    assert_eq!(verdict(&campaign, 1), Verdict::NotOpen);
    campaign.tick(UnixMillis(3600 * SEC));
    assert_eq!(verdict(&campaign, 1), Verdict::Pending);
}

/// A campaign as a member of cluster `own` keeps it on the flat-cost roster: the
/// members of its own cluster, and every cluster's size from the signed summaries.
fn roster_campaign(fleet: &Fleet, own: usize) -> Campaign {
    let mut campaign = Campaign::new();
    campaign.set_members(cluster_key(own as u8), fleet.members(own), UnixMillis(0));
    let sizes = (0..fleet.keys.len()).map(|c| (cluster_key(c as u8), fleet.keys[c].len() as u64)).collect();
    campaign.set_sizes(sizes, UnixMillis(0));
    campaign
}

/// A key whose rank score for (`m`, cluster `c`) is over the O(1) bar for a cluster
/// of `size` in round 0 (or under it, with `under`).
fn key_by_bar(m: &UpgradeManifest, c: u8, size: usize, under: bool) -> Keypair {
    (0u32..)
        .map(|i| {
            let mut secret = [9u8; 32];
            secret[..4].copy_from_slice(&i.to_be_bytes());
            Keypair::from_secret_bytes(&secret)
        })
        .find(|k| {
            let score = election::rank_score(&m.id(), &cluster_key(c), &k.public());
            election::may_hold_seat(&score, 2, 0, size, 0) == under
        })
        .unwrap()
}

#[test]
fn a_node_that_knows_only_cluster_sizes_plans_the_stages_its_cluster_mates_plan() {
    let fleet = Fleet::new(&[2, 10, 3, 7, 5]);
    let m = manifest("1.0.0", policy(PolicyKind::Balanced));
    let mut full = fleet.campaign();
    full.start_release(&signed_manifest(&m, 0), UnixMillis(0)).unwrap();
    for own in 0..5 {
        let mut flat = roster_campaign(&fleet, own);
        flat.start_release(&signed_manifest(&m, 0), UnixMillis(0)).unwrap();
        assert_eq!(flat.plan(), full.plan(), "member of cluster {own}");
        assert_eq!(flat.members(&cluster_key(1)).len(), usize::from(own == 1) * 10);
        let mine = full.evaluation(&cluster_key(own as u8)).unwrap();
        assert_eq!(flat.evaluation(&cluster_key(own as u8)).unwrap(), mine, "member of cluster {own}");
    }
}

#[test]
fn other_clusters_gates_judge_reports_by_the_bar_with_no_membership() {
    // Cluster 0 (2 machines) goes first, cluster 1 (10 machines) second. A member of
    // cluster 1 knows nobody in cluster 0, only its size.
    let fleet = Fleet::new(&[2, 10]);
    let m = manifest("1.0.0", policy(PolicyKind::Balanced));
    let mut campaign = roster_campaign(&fleet, 1);
    campaign.start_release(&signed_manifest(&m, 0), UnixMillis(0)).unwrap();
    assert!(campaign.gate(&cluster_key(0)).unwrap().is_estimated());
    assert!(!campaign.gate(&cluster_key(1)).unwrap().is_estimated());
    assert_eq!(verdict(&campaign, 1), Verdict::NotOpen);
    // In a cluster of two every score is under the bar: both passes count.
    for k in &fleet.keys[0] {
        let r = report_for(k, &m, cluster_key(0), Outcome::Pass, 300 * SEC);
        campaign.admit(&r, UnixMillis(310 * SEC)).unwrap();
    }
    assert_eq!(verdict(&campaign, 0), Verdict::Holds { at: UnixMillis(300 * SEC) });
    assert_eq!(campaign.gate(&cluster_key(1)).unwrap().opened_at(), Some(UnixMillis(300 * SEC)));
}

#[test]
fn a_report_over_the_bar_of_a_cluster_known_by_size_is_not_kept() {
    let fleet = Fleet::new(&[3, 3]);
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    let mut campaign = roster_campaign(&fleet, 0);
    // Cluster 1 is large by its summary: the bar is narrow.
    let mut sizes: std::collections::BTreeMap<ClusterKey, u64> =
        [(cluster_key(0), 3), (cluster_key(1), 100_000)].into_iter().collect();
    campaign.set_sizes(sizes.clone(), UnixMillis(0));
    campaign.start_release(&signed_manifest(&m, 0), UnixMillis(0)).unwrap();
    let over = key_by_bar(&m, 1, 100_000, false);
    let r = report_for(&over, &m, cluster_key(1), Outcome::Fail, 10 * SEC);
    assert_eq!(campaign.admit(&r, UnixMillis(10 * SEC)), Err(ReportRejected::NotElected));
    let under = key_by_bar(&m, 1, 100_000, true);
    let r = report_for(&under, &m, cluster_key(1), Outcome::Pass, 10 * SEC);
    campaign.admit(&r, UnixMillis(10 * SEC)).unwrap();
    // A report kept while the size was unknown counts only if it is under the bar
    // once the size is known: the verdict does not depend on what came first.
    sizes.insert(cluster_key(1), 3);
    campaign.set_sizes(sizes.clone(), UnixMillis(20 * SEC));
    let r = report_for(&over, &m, cluster_key(1), Outcome::Fail, 20 * SEC);
    campaign.admit(&r, UnixMillis(20 * SEC)).unwrap();
    assert!(matches!(verdict(&campaign, 1), Verdict::Halted { .. } | Verdict::NotOpen));
    sizes.insert(cluster_key(1), 100_000);
    campaign.set_sizes(sizes, UnixMillis(30 * SEC));
    let g = campaign.gate(&cluster_key(1)).unwrap();
    assert!(g.is_estimated());
    let e = g.evaluate(UnixMillis(30 * SEC));
    assert!(!matches!(e.verdict, Verdict::Halted { .. }), "{:?}", e.verdict);
}

#[test]
fn a_cluster_moved_into_an_open_stage_by_new_sizes_opens_its_gate() {
    // Cluster 0 (2 machines) is planned first, cluster 1 (3 machines) second.
    let fleet = Fleet::new(&[2, 3]);
    let mut campaign = fleet.campaign();
    let m = manifest("1.0.0", policy(PolicyKind::Balanced));
    campaign.start_release(&signed_manifest(&m, 0), UnixMillis(0)).unwrap();
    assert_eq!(verdict(&campaign, 1), Verdict::NotOpen);
    // Cluster 0 grows past cluster 1: the replanned first stage is cluster 1's, and it
    // is open, so cluster 1's representatives must start even though only cluster 0's
    // membership changed.
    let grown: Vec<PublicKey> = (0..5).map(|i| keypair(0, i).public()).collect();
    campaign.set_members(cluster_key(0), present(&grown), UnixMillis(10 * SEC));
    assert_eq!(campaign.plan().unwrap().stage_of(&cluster_key(1)), 0);
    assert_eq!(verdict(&campaign, 1), Verdict::Pending);
    // An opened gate stays open, wherever replanning puts its cluster.
    assert_eq!(verdict(&campaign, 0), Verdict::Pending);
}

#[test]
fn a_pass_issued_before_the_stage_opened_counts_for_every_member() {
    // Cluster 0 (2 machines) is planned first, cluster 1 (3 machines) second. One node's
    // early view knows a single member of cluster 1, which puts cluster 1 first: its
    // representative tests at once and passes at 100 s. Views converge; cluster 1's
    // stage opens at 300 s for everyone else, and its second representative passes at
    // 400 s. Both passes count in both views: the cluster holds everywhere.
    let fleet = Fleet::new(&[2, 3]);
    let m = manifest("1.0.0", policy(PolicyKind::Balanced));
    let release = signed_manifest(&m, 0);
    let mut converged = fleet.campaign();
    converged.start_release(&release, UnixMillis(0)).unwrap();
    assert_eq!(verdict(&converged, 1), Verdict::NotOpen);
    let first = fleet.ranked(&converged, 1, 0);
    let second = fleet.ranked(&converged, 1, 1);

    let mut early = Campaign::new();
    early.set_members(cluster_key(0), fleet.members(0), UnixMillis(0));
    early.set_members(cluster_key(1), present(&[first.public()]), UnixMillis(0));
    early.start_release(&release, UnixMillis(0)).unwrap();
    assert_eq!(verdict(&early, 1), Verdict::Pending, "cluster 1 tests at once in the early view");
    early.set_members(cluster_key(1), fleet.members(1), UnixMillis(50 * SEC));

    let early_pass = report_for(first, &m, cluster_key(1), Outcome::Pass, 100 * SEC);
    let stage_one: Vec<_> = (0..2)
        .map(|rank| report_for(fleet.ranked(&converged, 0, rank), &m, cluster_key(0), Outcome::Pass, 300 * SEC))
        .collect();
    let late_pass = report_for(second, &m, cluster_key(1), Outcome::Pass, 400 * SEC);
    for campaign in [&mut converged, &mut early] {
        campaign.admit(&early_pass, UnixMillis(100 * SEC)).unwrap();
        for r in &stage_one {
            campaign.admit(r, UnixMillis(300 * SEC)).unwrap();
        }
        campaign.admit(&late_pass, UnixMillis(400 * SEC)).unwrap();
        assert_eq!(verdict(campaign, 1), Verdict::Holds { at: UnixMillis(400 * SEC) });
    }
    assert_eq!(converged.gate(&cluster_key(1)).unwrap().opened_at(), Some(UnixMillis(300 * SEC)));
}

#[test]
fn no_staging_holds_everywhere_at_once() {
    let fleet = Fleet::new(&[2, 10, 3]);
    let mut campaign = fleet.campaign();
    let m = manifest("1.0.0", policy(PolicyKind::NoStaging));
    campaign.start_release(&signed_manifest(&m, 5), UnixMillis(5)).unwrap();
    for c in 0..3 {
        assert_eq!(verdict(&campaign, c), Verdict::Holds { at: UnixMillis(5) });
        assert!(campaign.evaluation(&cluster_key(c)).unwrap().seats.is_empty());
    }
    assert_eq!(campaign.next_timeout(), None);
}

// ---- The node's rollout ----

/// A node in cluster 0 of `Fleet::new(&[size])`, ranked `rank` for the manifest.
struct Node {
    rollout: Rollout,
    fleet: Fleet,
    me: Keypair,
}

fn node(size: u8, rank: usize, m: &UpgradeManifest) -> Node {
    let fleet = Fleet::new(&[size]);
    let ranking = rank_members(&m.id(), &cluster_key(0), &fleet.keys(0));
    let me = fleet.keys[0].iter().find(|k| k.public() == ranking[rank]).unwrap().clone();
    let config = NodeConfig { app: APP.into(), me: me.public(), fingerprint: fingerprint(0), scopes: Vec::new() };
    let mut rollout = Rollout::new(config);
    rollout.handle(Event::Members { cluster: cluster_key(0), members: fleet.members(0) }, UnixMillis(0));
    Node { rollout, fleet, me }
}

impl Node {
    fn key_ranked(&self, m: &UpgradeManifest, rank: usize) -> Keypair {
        let ranking = rank_members(&m.id(), &cluster_key(0), &self.fleet.keys(0));
        self.fleet.keys[0].iter().find(|k| k.public() == ranking[rank]).unwrap().clone()
    }
}

fn persist_precedes_every_action(actions: &[Action]) {
    let first_effect = actions.iter().position(|a| !matches!(a, Action::Persist(_) | Action::SetTimer(_)));
    if let Some(i) = first_effect {
        assert!(actions[..i].iter().any(|a| matches!(a, Action::Persist(_))), "no persist before {actions:?}");
    }
}

fn phase(n: &Node) -> Option<Phase> {
    n.rollout.status().phase
}

fn run(outcome: Outcome) -> TestRun {
    TestRun {
        outcome,
        summary: "1 test".into(),
        logs_digest: Digest([4; 32]),
        tests_run: 1,
        duration_ms: 10,
        failed_tests: if outcome == Outcome::Fail { vec!["smoke".into()] } else { Vec::new() },
        output: "boom".into(),
    }
}

#[test]
fn a_representative_tests_reports_and_applies_once_the_gate_holds() {
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    let id = m.id();
    let mut n = node(4, 0, &m);
    let a = n.rollout.handle(Event::Manifest(signed_manifest(&m, 0)), UnixMillis(0));
    persist_precedes_every_action(&a);
    assert!(a.contains(&Action::Fetch { manifest: id }));
    assert!(a.contains(&Action::SetTimer(UnixMillis(600 * SEC))));
    assert_eq!(phase(&n), Some(Phase::Fetching));

    let a = n.rollout.handle(Event::ContentReady { manifest: id }, UnixMillis(SEC));
    persist_precedes_every_action(&a);
    assert!(a.contains(&Action::RunTests { manifest: id }));
    assert!(n.rollout.status().representative);

    let a = n.rollout.handle(Event::TestFinished { manifest: id, run: run(Outcome::Pass) }, UnixMillis(2 * SEC));
    persist_precedes_every_action(&a);
    let Some(Action::PublishTestReport(report)) = a.iter().find(|a| matches!(a, Action::PublishTestReport(_))) else {
        panic!("no report in {a:?}");
    };
    assert_eq!(report.cluster_key, cluster_key(0));
    assert_eq!(phase(&n), Some(Phase::Passed));
    let own = Envelope::sign(&n.me, report, UnixMillis(2 * SEC)).unwrap().verify().unwrap();
    let a = n.rollout.handle(Event::Report(own), UnixMillis(3 * SEC));
    assert!(!a.iter().any(|a| matches!(a, Action::Apply { .. })));

    let other = report_for(&n.key_ranked(&m, 1), &m, cluster_key(0), Outcome::Pass, 4 * SEC);
    let a = n.rollout.handle(Event::Report(other), UnixMillis(4 * SEC));
    persist_precedes_every_action(&a);
    assert!(a.contains(&Action::Apply { manifest: id, version: m.version.clone() }));

    let a = n.rollout.handle(Event::ApplyFinished { manifest: id, result: ApplyResult::Healthy }, UnixMillis(5 * SEC));
    assert!(matches!(a.as_slice(), [Action::Persist(_)]));
    assert_eq!(phase(&n), Some(Phase::Applied));
    assert_eq!(n.rollout.status().running, Some(m.version.clone()));
}

#[test]
fn a_node_next_in_line_starts_testing_when_the_timer_replaces_a_silent_representative() {
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    let id = m.id();
    let mut n = node(6, 2, &m);
    let a = n.rollout.handle(Event::Manifest(signed_manifest(&m, 0)), UnixMillis(0));
    assert!(a.contains(&Action::SetTimer(UnixMillis(600 * SEC))));
    n.rollout.handle(Event::ContentReady { manifest: id }, UnixMillis(SEC));
    assert_eq!(phase(&n), Some(Phase::WaitingForGate));
    assert!(!n.rollout.status().representative);
    // Rank 0 reports in time; rank 1 stays silent.
    let r0 = report_for(&n.key_ranked(&m, 0), &m, cluster_key(0), Outcome::Pass, 100 * SEC);
    n.rollout.handle(Event::Report(r0), UnixMillis(100 * SEC));
    let a = n.rollout.handle(Event::Timer, UnixMillis(600 * SEC));
    assert!(n.rollout.status().representative);
    assert!(a.contains(&Action::RunTests { manifest: id }), "{a:?}");
    assert!(a.contains(&Action::SetTimer(UnixMillis(1200 * SEC))), "{a:?}");
    persist_precedes_every_action(&a);
}

#[test]
fn a_failing_test_reports_to_the_vendor_and_halts_the_cluster() {
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    let id = m.id();
    let mut rep = node(4, 0, &m);
    rep.rollout.handle(Event::Manifest(signed_manifest(&m, 0)), UnixMillis(0));
    rep.rollout.handle(Event::ContentReady { manifest: id }, UnixMillis(SEC));
    let a = rep.rollout.handle(Event::TestFinished { manifest: id, run: run(Outcome::Fail) }, UnixMillis(2 * SEC));
    let problem = a.iter().find_map(|a| match a {
        Action::PublishProblemReport(p) => Some(p.clone()),
        _ => None,
    });
    let problem = problem.expect("problem report");
    assert_eq!(problem.details.fingerprint, fingerprint(0));
    assert_eq!(problem.vendor, vendor().public(), "sealed to whoever signed the release");
    assert_eq!(problem.failed_tests, vec!["smoke".to_string()]);
    assert_eq!(phase(&rep), Some(Phase::Failed));

    // A plain member of the same cluster hears the failure and halts.
    let mut member = node(4, 3, &m);
    member.rollout.handle(Event::Manifest(signed_manifest(&m, 0)), UnixMillis(0));
    member.rollout.handle(Event::ContentReady { manifest: id }, UnixMillis(SEC));
    assert_eq!(phase(&member), Some(Phase::WaitingForGate));
    let fail = report_for(&rep.me, &m, cluster_key(0), Outcome::Fail, 2 * SEC);
    member.rollout.handle(Event::Report(fail), UnixMillis(3 * SEC));
    assert_eq!(phase(&member), Some(Phase::Halted));
    let pass = report_for(&member.key_ranked(&m, 1), &m, cluster_key(0), Outcome::Pass, 4 * SEC);
    let a = member.rollout.handle(Event::Report(pass), UnixMillis(4 * SEC));
    assert!(!a.iter().any(|a| matches!(a, Action::Apply { .. })));

    // The vendor's fix restarts the cluster: the member applies it once it passes.
    let fix = manifest("1.0.1", policy(PolicyKind::FrontLoading));
    let a = member.rollout.handle(Event::Manifest(signed_manifest(&fix, 100 * SEC)), UnixMillis(100 * SEC));
    assert!(a.contains(&Action::Fetch { manifest: fix.id() }));
    member.rollout.handle(Event::ContentReady { manifest: fix.id() }, UnixMillis(101 * SEC));
    let mut applied = false;
    // The fix's ranking is a new draw: the member may now hold a seat itself.
    if phase(&member) == Some(Phase::Testing) {
        let a = member
            .rollout
            .handle(Event::TestFinished { manifest: fix.id(), run: run(Outcome::Pass) }, UnixMillis(150 * SEC));
        applied |= a.contains(&Action::Apply { manifest: fix.id(), version: fix.version.clone() });
    }
    for rank in 0..2 {
        let r = report_for(&member.key_ranked(&fix, rank), &fix, cluster_key(0), Outcome::Pass, 200 * SEC);
        let a = member.rollout.handle(Event::Report(r), UnixMillis(200 * SEC));
        applied |= a.contains(&Action::Apply { manifest: fix.id(), version: fix.version.clone() });
    }
    assert!(applied);
}

fn failed(fault: Fault, step: ApplyStep) -> ApplyResult {
    ApplyResult::Failed { fault, step, logs_digest: Digest([1; 32]), output: "crash".into() }
}

fn problem_of(actions: &[Action]) -> Option<&ProblemDraft> {
    actions.iter().find_map(|a| match a {
        Action::PublishProblemReport(p) => Some(p),
        _ => None,
    })
}

/// Applies `m` under no staging and returns the actions of its completion.
fn apply_no_staging(n: &mut Node, m: &UpgradeManifest, at: u64, result: ApplyResult) -> Vec<Action> {
    let id = m.id();
    let a = n.rollout.handle(Event::Manifest(signed_manifest(m, at)), UnixMillis(at));
    assert!(a.contains(&Action::Fetch { manifest: id }), "{a:?}");
    let a = n.rollout.handle(Event::ContentReady { manifest: id }, UnixMillis(at + 1));
    assert!(a.contains(&Action::Apply { manifest: id, version: m.version.clone() }), "{a:?}");
    n.rollout.handle(Event::ApplyFinished { manifest: id, result }, UnixMillis(at + 2))
}

#[test]
fn an_unhealthy_release_is_reported_and_the_node_stays_on_what_it_ran() {
    let m = manifest("1.0.0", policy(PolicyKind::NoStaging));
    let mut n = node(3, 0, &m);
    let a = apply_no_staging(&mut n, &m, 0, failed(Fault::Release, ApplyStep::HealthCheck));
    persist_precedes_every_action(&a);
    // The installer already undid the apply: asking it to roll back again would step
    // back past the version that ran before.
    assert!(!a.iter().any(|a| matches!(a, Action::Apply { .. } | Action::RunTests { .. })), "{a:?}");
    assert_eq!(problem_of(&a).map(|p| p.failed_tests.clone()), Some(vec![rollout::HEALTH_CHECK.to_string()]));
    assert_eq!(phase(&n), Some(Phase::RolledBack));
    assert_eq!(n.rollout.status().running, None);
    // A crash right after persisting loses not the vendor's report.
    let Some(Action::Persist(snapshot)) = a.first() else { panic!("{a:?}") };
    let (r, again) = Rollout::restore(n.rollout_config(), (**snapshot).clone(), UnixMillis(0));
    assert!(again.iter().any(|a| matches!(a, Action::PublishProblemReport(_))), "{again:?}");
    assert_eq!(r.status().phase, Some(Phase::RolledBack));
}

#[test]
fn an_apply_the_node_keeps_dying_in_is_retried_later_not_in_a_loop() {
    let v1 = manifest("1.0.0", policy(PolicyKind::NoStaging));
    let v2 = manifest("2.0.0", policy(PolicyKind::NoStaging));
    let mut n = node(3, 0, &v1);
    apply_no_staging(&mut n, &v1, 0, ApplyResult::Healthy);
    let id = v2.id();
    n.rollout.handle(Event::Manifest(signed_manifest(&v2, 10 * SEC)), UnixMillis(10 * SEC));
    let a = n.rollout.handle(Event::ContentReady { manifest: id }, UnixMillis(10 * SEC + 1));
    let Some(Action::Persist(mut snapshot)) = a.first().cloned() else { panic!("{a:?}") };
    // The node dies in the apply, again and again: each restart counts the interruption
    // durably before it applies again.
    let mut now = 11 * SEC;
    for interrupted in 1..=rollout::MAX_INTERRUPTED_APPLIES {
        let (r, a) = Rollout::restore(n.rollout_config(), (*snapshot).clone(), UnixMillis(now));
        persist_precedes_every_action(&a);
        assert!(a.contains(&Action::Apply { manifest: id, version: v2.version.clone() }), "{interrupted}: {a:?}");
        assert_eq!(r.status().phase, Some(Phase::Applying));
        let Some(Action::Persist(next)) = a.first().cloned() else { panic!("{a:?}") };
        assert_eq!(next.local_fault.as_ref().map(|f| f.attempts), Some(interrupted));
        snapshot = next;
        now += SEC;
    }
    // One more: no apply at once, a retry as after a local fault, and the reason said.
    let (mut r, a) = Rollout::restore(n.rollout_config(), (*snapshot).clone(), UnixMillis(now));
    persist_precedes_every_action(&a);
    assert!(!a.iter().any(|a| matches!(a, Action::Apply { .. })), "{a:?}");
    let Some(Action::SetTimer(at)) = a.last().cloned() else { panic!("{a:?}") };
    assert!(at.0 >= now + rollout::LOCAL_RETRY_BASE.as_millis() as u64, "{at:?}");
    assert_eq!(r.status().phase, Some(Phase::LocalFault));
    let Some(Action::Persist(stored)) = a.first() else { panic!("{a:?}") };
    assert!(stored.local_fault.as_ref().is_some_and(|f| f.reason.contains("stopped while applying 2.0.0")));
    // The stored snapshot restores to the same wait, not to an apply.
    let (_, again) = Rollout::restore(n.rollout_config(), (**stored).clone(), UnixMillis(now + 1));
    assert!(!again.iter().any(|a| matches!(a, Action::Apply { .. })), "{again:?}");
    // When the time comes, the apply is tried again.
    r.handle(Event::Members { cluster: cluster_key(0), members: n.fleet.members(0) }, UnixMillis(at.0));
    r.handle(Event::Manifest(signed_manifest(&v2, 10 * SEC)), UnixMillis(at.0));
    let a = r.handle(Event::Timer, UnixMillis(at.0));
    assert!(a.contains(&Action::Apply { manifest: id, version: v2.version.clone() }), "{a:?}");
    // And an apply that ends, healthy, clears the count.
    r.handle(Event::ApplyFinished { manifest: id, result: ApplyResult::Healthy }, UnixMillis(at.0 + 1));
    assert!(r.snapshot().local_fault.is_none());
}

#[test]
fn a_failed_apply_never_moves_the_node_backwards() {
    let v1 = manifest("1.0.0", policy(PolicyKind::NoStaging));
    let v2 = manifest("2.0.0", policy(PolicyKind::NoStaging));
    let v3 = manifest("3.0.0", policy(PolicyKind::NoStaging));
    let mut n = node(3, 0, &v1);
    apply_no_staging(&mut n, &v1, 0, ApplyResult::Healthy);
    apply_no_staging(&mut n, &v2, 10 * SEC, ApplyResult::Healthy);
    assert_eq!(n.rollout.status().running, Some(v2.version.clone()));
    let a = apply_no_staging(&mut n, &v3, 20 * SEC, failed(Fault::Release, ApplyStep::HealthCheck));
    assert_eq!(n.rollout.status().running, Some(v2.version.clone()), "still on 2.0.0");
    assert!(problem_of(&a).is_some());
    // Nothing the core does afterwards touches the install: no event brings an apply
    // or test back for the failed release.
    for e in [Event::Timer, Event::ContentReady { manifest: v3.id() }, Event::Manifest(signed_manifest(&v3, 20 * SEC))]
    {
        let a = n.rollout.handle(e, UnixMillis(30 * SEC));
        assert!(!a.iter().any(|a| matches!(a, Action::Apply { .. } | Action::RunTests { .. })), "{a:?}");
    }
    // An artifact that does not unpack is the release's fault too: same outcome.
    let v4 = manifest("4.0.0", policy(PolicyKind::NoStaging));
    let a = apply_no_staging(&mut n, &v4, 40 * SEC, failed(Fault::Release, ApplyStep::Unpack));
    assert_eq!(problem_of(&a).map(|p| p.failed_tests.clone()), Some(vec!["unpack".to_string()]));
    assert_eq!(n.rollout.status().running, Some(v2.version.clone()));
}

#[test]
fn a_local_fault_while_applying_is_retried_and_never_reported() {
    let m = manifest("1.0.0", policy(PolicyKind::NoStaging));
    let id = m.id();
    let mut n = node(3, 0, &m);
    let a = apply_no_staging(&mut n, &m, 0, failed(Fault::Local, ApplyStep::Unpack));
    assert!(problem_of(&a).is_none(), "a full disk is no verdict on the release: {a:?}");
    assert_eq!(phase(&n), Some(Phase::LocalFault));
    let first = UnixMillis(2 + LOCAL_RETRY_BASE.as_millis() as u64);
    assert!(a.contains(&Action::SetTimer(first)), "{a:?}");
    assert!(n.rollout.handle(Event::Timer, UnixMillis(first.0 - 1)).iter().all(|a| !matches!(a, Action::Apply { .. })));
    let a = n.rollout.handle(Event::Timer, first);
    assert!(a.contains(&Action::Apply { manifest: id, version: m.version.clone() }), "{a:?}");
    // The second failure waits twice as long.
    let a =
        n.rollout.handle(Event::ApplyFinished { manifest: id, result: failed(Fault::Local, ApplyStep::Switch) }, first);
    assert!(a.contains(&Action::SetTimer(UnixMillis(first.0 + 2 * LOCAL_RETRY_BASE.as_millis() as u64))), "{a:?}");
    assert_eq!(n.rollout.status().local_fault.map(|f| f.attempts), Some(2));
    let a = n.rollout.handle(Event::Timer, UnixMillis(first.0 + 2 * LOCAL_RETRY_BASE.as_millis() as u64));
    assert!(a.contains(&Action::Apply { manifest: id, version: m.version.clone() }), "{a:?}");
    n.rollout.handle(Event::ApplyFinished { manifest: id, result: ApplyResult::Healthy }, UnixMillis(100 * SEC));
    assert_eq!(phase(&n), Some(Phase::Applied));
    assert_eq!(n.rollout.status().local_fault, None);
}

#[test]
fn a_representative_that_cannot_test_retries_then_hands_its_seat_on_without_a_verdict() {
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    let id = m.id();
    let mut rep = node(4, 0, &m);
    rep.rollout.handle(Event::Manifest(signed_manifest(&m, 0)), UnixMillis(0));
    let a = rep.rollout.handle(Event::ContentReady { manifest: id }, UnixMillis(SEC));
    assert!(a.contains(&Action::RunTests { manifest: id }));
    let why = "bwrap: cannot start the sandbox".to_string();
    let a = rep.rollout.handle(Event::TestsCouldNotRun { manifest: id, reason: why.clone() }, UnixMillis(2 * SEC));
    persist_precedes_every_action(&a);
    assert!(!a.iter().any(|a| matches!(a, Action::PublishTestReport(_) | Action::PublishProblemReport(_))), "{a:?}");
    assert_eq!(phase(&rep), Some(Phase::LocalFault));
    let retry = 2 * SEC + LOCAL_RETRY_BASE.as_millis() as u64;
    assert!(a.contains(&Action::SetTimer(UnixMillis(retry))), "{a:?}");
    let a = rep.rollout.handle(Event::Timer, UnixMillis(retry));
    assert!(a.contains(&Action::RunTests { manifest: id }), "retried: {a:?}");
    let a = rep.rollout.handle(Event::TestsCouldNotRun { manifest: id, reason: why }, UnixMillis(retry + SEC));
    assert!(problem_of(&a).is_none(), "{a:?}");
    let Some(Action::PublishTestReport(abstain)) = a.iter().find(|a| matches!(a, Action::PublishTestReport(_))) else {
        panic!("no abstention in {a:?}")
    };
    assert_eq!(abstain.outcome, Outcome::Abstain);
    assert_eq!(phase(&rep), Some(Phase::Abstained));

    // The member next in line takes the seat at once, not at the report deadline, and
    // the cluster is not halted.
    let mut next = node(4, 2, &m);
    next.rollout.handle(Event::Manifest(signed_manifest(&m, 0)), UnixMillis(0));
    next.rollout.handle(Event::ContentReady { manifest: id }, UnixMillis(SEC));
    assert!(!next.rollout.status().representative);
    let signed = Envelope::sign(&rep.me, abstain, UnixMillis(retry + SEC)).unwrap().verify().unwrap();
    let a = next.rollout.handle(Event::Report(signed.clone()), UnixMillis(retry + 2 * SEC));
    assert!(next.rollout.status().representative);
    assert!(a.contains(&Action::RunTests { manifest: id }), "{a:?}");
    assert_eq!(next.rollout.status().verdict, Some(Verdict::Pending));

    // Once the gate holds, the abstainer applies like any member.
    rep.rollout.handle(Event::Report(signed), UnixMillis(retry + 2 * SEC));
    let mut applied = false;
    for rank in [1, 2] {
        let r = report_for(&rep.key_ranked(&m, rank), &m, cluster_key(0), Outcome::Pass, retry + 3 * SEC);
        let a = rep.rollout.handle(Event::Report(r), UnixMillis(retry + 3 * SEC));
        applied |= a.contains(&Action::Apply { manifest: id, version: m.version.clone() });
    }
    assert!(applied);
}

#[test]
fn an_operator_rollback_pins_the_node_until_the_next_release_or_unpin() {
    let v1 = manifest("1.0.0", policy(PolicyKind::NoStaging));
    let v2 = manifest("2.0.0", policy(PolicyKind::NoStaging));
    let mut n = node(3, 0, &v1);
    apply_no_staging(&mut n, &v1, 0, ApplyResult::Healthy);
    apply_no_staging(&mut n, &v2, 10 * SEC, ApplyResult::Healthy);
    assert!(n.rollout.may_roll_back());
    let a = n.rollout.handle(Event::RolledBackByOperator { version: v1.version.clone() }, UnixMillis(20 * SEC));
    assert!(matches!(a.as_slice(), [Action::Persist(_)]), "{a:?}");
    let status = n.rollout.status();
    assert_eq!(status.running, Some(v1.version.clone()));
    assert_eq!(status.pin.as_ref().map(|p| &p.version), Some(&v1.version));
    // The same release heard again (a restart's replay) does not undo the operator.
    let (mut restored, _) = Rollout::restore(n.rollout_config(), n.rollout.snapshot(), UnixMillis(0));
    restored.handle(Event::Members { cluster: cluster_key(0), members: n.fleet.members(0) }, UnixMillis(21 * SEC));
    for r in [&mut n.rollout, &mut restored] {
        let a = r.handle(Event::Manifest(signed_manifest(&v2, 10 * SEC)), UnixMillis(21 * SEC));
        assert!(!a.iter().any(|a| matches!(a, Action::Apply { .. } | Action::Fetch { .. })), "{a:?}");
    }
    // Unpinned, it goes back to the release its cluster runs.
    let a = n.rollout.handle(Event::Unpin, UnixMillis(22 * SEC));
    assert!(a.contains(&Action::Apply { manifest: v2.id(), version: v2.version.clone() }), "{a:?}");
    assert_eq!(n.rollout.status().pin, None);
    // The next release lifts a pin by itself.
    let v3 = manifest("3.0.0", policy(PolicyKind::NoStaging));
    let a = restored.handle(Event::Manifest(signed_manifest(&v3, 30 * SEC)), UnixMillis(30 * SEC));
    assert!(a.contains(&Action::Fetch { manifest: v3.id() }), "{a:?}");
    assert_eq!(restored.status().pin, None);
}

#[test]
fn the_installed_version_is_what_the_core_runs() {
    let m = manifest("2.0.0", policy(PolicyKind::NoStaging));
    let mut n = node(1, 0, &m);
    n.rollout.handle(Event::Installed { version: Some("2.0.0".parse().unwrap()) }, UnixMillis(0));
    assert_eq!(n.rollout.status().running, Some(m.version.clone()));
    let a = n.rollout.handle(Event::Manifest(signed_manifest(&m, 0)), UnixMillis(0));
    assert!(a.is_empty(), "already running: {a:?}");
}

#[test]
fn manifests_for_other_apps_or_not_newer_than_running_are_ignored() {
    let m = manifest("1.0.0", policy(PolicyKind::NoStaging));
    let mut n = node(1, 0, &m);
    let mut other = m.clone();
    other.app = "postgres".into();
    assert!(n.rollout.handle(Event::Manifest(signed_manifest(&other, 0)), UnixMillis(0)).is_empty());
    assert_eq!(n.rollout.last_ignored(), Some(&Ignored::OtherApp));
    n.rollout.handle(Event::Manifest(signed_manifest(&m, 0)), UnixMillis(0));
    n.rollout.handle(Event::ContentReady { manifest: m.id() }, UnixMillis(1));
    n.rollout.handle(Event::ApplyFinished { manifest: m.id(), result: ApplyResult::Healthy }, UnixMillis(2));
    let (mut restored, _) = Rollout::restore(n.rollout_config(), n.rollout.snapshot(), UnixMillis(0));
    let older = manifest("0.5.0", policy(PolicyKind::NoStaging));
    assert!(restored.handle(Event::Manifest(signed_manifest(&older, 3)), UnixMillis(3)).is_empty());
    assert!(matches!(restored.last_ignored(), Some(Ignored::NotNewerThanRunning { .. })));
}

impl Node {
    fn rollout_config(&self) -> NodeConfig {
        NodeConfig { app: APP.into(), me: self.me.public(), fingerprint: fingerprint(0), scopes: Vec::new() }
    }
}

#[test]
fn restore_reissues_what_was_in_flight() {
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    let id = m.id();
    let mut n = node(4, 0, &m);
    n.rollout.handle(Event::Manifest(signed_manifest(&m, 0)), UnixMillis(0));
    let a = n.rollout.handle(Event::ContentReady { manifest: id }, UnixMillis(SEC));
    let Some(Action::Persist(snapshot)) = a.first() else { panic!("{a:?}") };
    // The snapshot survives the node's database encoding.
    let bytes = crate::wire::encode(snapshot).unwrap();
    let snapshot: Snapshot = crate::wire::decode(&bytes).unwrap();
    let (mut r, actions) = Rollout::restore(n.rollout_config(), snapshot, UnixMillis(0));
    assert_eq!(actions, vec![Action::RunTests { manifest: id }]);
    // Fed its stored manifest and membership again, it carries on from where it was.
    r.handle(Event::Members { cluster: cluster_key(0), members: n.fleet.members(0) }, UnixMillis(2 * SEC));
    let a = r.handle(Event::Manifest(signed_manifest(&m, 0)), UnixMillis(2 * SEC));
    assert!(!a.iter().any(|a| matches!(a, Action::Fetch { .. } | Action::RunTests { .. })));
    let a = r.handle(Event::TestFinished { manifest: id, run: run(Outcome::Pass) }, UnixMillis(3 * SEC));
    let Some(Action::Persist(snapshot)) = a.first() else { panic!("{a:?}") };
    // Crash between persist and publish: the report goes out again after restore.
    let (_, actions) = Rollout::restore(n.rollout_config(), (**snapshot).clone(), UnixMillis(0));
    assert!(matches!(actions.as_slice(), [Action::PublishTestReport(r)] if r.manifest_id == id));
}

// ---- Properties ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every member computes the same representatives whatever order it learned the
    /// membership in.
    #[test]
    fn all_members_agree_on_representatives(size in 1u8..30, seed in any::<u64>(), elapsed in 0u64..5000) {
        let fleet = Fleet::new(&[size]);
        let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
        let release = signed_manifest(&m, 0);
        let mut views = Vec::new();
        for shift in [0usize, 7, 13] {
            let mut members = fleet.members(0);
            let by = (seed as usize + shift) % members.len();
            members.rotate_left(by);
            if shift == 13 {
                members.reverse();
            }
            let mut campaign = Campaign::new();
            campaign.set_members(cluster_key(0), members, UnixMillis(0));
            campaign.start_release(&release, UnixMillis(0)).unwrap();
            campaign.tick(UnixMillis(elapsed * SEC));
            let seats: Vec<PublicKey> =
                campaign.evaluation(&cluster_key(0)).unwrap().seats.iter().map(|s| s.holder).collect();
            views.push(seats);
        }
        prop_assert_eq!(&views[0], &views[1]);
        prop_assert_eq!(&views[0], &views[2]);
        // Two seats, widened by silent holders' deadlines up to the whole cluster.
        prop_assert!(views[0].len() >= (size as usize).min(2) && views[0].len() <= size as usize);
    }

    /// Under any order of reports (from representatives, other members and outsiders),
    /// timers and the node's own completions, a node applies only while its cluster's
    /// gate holds, and never once a seated representative's failure was counted.
    #[test]
    fn never_applies_without_the_gate_or_after_a_counted_failure(
        size in 1u8..8,
        rank in 0usize..8,
        events in prop::collection::vec((0u8..6, 0usize..10, any::<bool>(), 0u64..2000), 1..40),
    ) {
        let rank = rank % size as usize;
        let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
        let id = m.id();
        let mut n = node(size, rank, &m);
        let mut now = 0;
        n.rollout.handle(Event::Manifest(signed_manifest(&m, 0)), UnixMillis(0));
        let mut halted = false;
        for (kind, who, pass, dt) in events {
            now += dt * SEC;
            let outcome = if pass { Outcome::Pass } else { Outcome::Fail };
            let event = match kind {
                0 | 1 => {
                    let signer = n.key_ranked(&m, who % size as usize);
                    Event::Report(report_for(&signer, &m, cluster_key(0), outcome, now))
                }
                2 => Event::Timer,
                3 => Event::ContentReady { manifest: id },
                4 => Event::TestFinished { manifest: id, run: run(outcome) },
                _ => Event::Report(report_for(&Keypair::from_secret_bytes(&[who as u8 + 50; 32]), &m, cluster_key(0), Outcome::Pass, now)),
            };
            let actions = n.rollout.handle(event, UnixMillis(now));
            let verdict = n.rollout.campaign().evaluation(&cluster_key(0)).unwrap().verdict;
            if actions.iter().any(|a| matches!(a, Action::Apply { .. })) {
                prop_assert!(matches!(verdict, Verdict::Holds { .. }), "applied under {:?}", verdict);
                prop_assert!(!halted, "applied after a counted failure");
            }
            halted |= matches!(verdict, Verdict::Halted { .. });
            persist_precedes_every_action(&actions);
        }
    }

    /// In a cluster whose first representative fails, no member that hears the failure
    /// within the representative's term applies that version, whatever order it hears
    /// the other reports, timers and its own completions in. (A failure delayed past the
    /// term can lose the race against replacements: seats are decided from what arrived.)
    #[test]
    fn a_failing_representative_stops_every_member(
        size in 2u8..8,
        rank in 0usize..8,
        order in Just((0..6usize).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        let rank = rank % size as usize;
        let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
        let id = m.id();
        let mut n = node(size, rank, &m);
        let deadline = m.policy.report_deadline_secs as u64 * SEC;
        let fail = report_for(&n.key_ranked(&m, 0), &m, cluster_key(0), Outcome::Fail, SEC);
        let mut events: Vec<Event> = vec![
            Event::Report(fail),
            Event::ContentReady { manifest: id },
            Event::Timer,
            Event::TestFinished { manifest: id, run: run(Outcome::Pass) },
        ];
        for r in 1..size.min(3) as usize {
            events.push(Event::Report(report_for(&n.key_ranked(&m, r), &m, cluster_key(0), Outcome::Pass, 10 * SEC)));
        }
        n.rollout.handle(Event::Manifest(signed_manifest(&m, 0)), UnixMillis(0));
        let mut now = 0;
        for i in order {
            if let Some(e) = events.get(i) {
                now += deadline / 10;
                let actions = n.rollout.handle(e.clone(), UnixMillis(now));
                let applied = actions.iter().any(|a| matches!(a, Action::Apply { .. }));
                prop_assert!(!applied, "applied despite the failure");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A gate's verdict and seats depend on which reports it holds, not on the order
    /// they arrived in: nodes that heard the same reports agree.
    #[test]
    fn gate_verdicts_do_not_depend_on_arrival_order(
        size in 1u8..10,
        reports in prop::collection::vec((0usize..10, any::<bool>(), 0u64..3000), 0..12),
        order in Just((0..12usize).collect::<Vec<_>>()).prop_shuffle(),
        at in 0u64..4000,
    ) {
        let fleet = Fleet::new(&[size]);
        let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
        let release = signed_manifest(&m, 0);
        let mut a = fleet.campaign();
        a.start_release(&release, UnixMillis(0)).unwrap();
        let mut b = fleet.campaign();
        b.start_release(&release, UnixMillis(0)).unwrap();
        let signed: Vec<_> = reports
            .iter()
            .map(|(who, pass, t)| {
                let signer = fleet.ranked(&a, 0, who % size as usize);
                let outcome = if *pass { Outcome::Pass } else { Outcome::Fail };
                report_for(signer, &m, cluster_key(0), outcome, t * SEC)
            })
            .collect();
        let now = UnixMillis(at * SEC);
        for r in &signed {
            let _ = a.admit(r, now);
        }
        for i in order.iter().filter(|i| **i < signed.len()) {
            let _ = b.admit(&signed[*i], now);
        }
        a.tick(now);
        b.tick(now);
        prop_assert_eq!(a.evaluation(&cluster_key(0)), b.evaluation(&cluster_key(0)));
    }
}

fn retest_for(m: &UpgradeManifest, clusters: Vec<ClusterKey>, at: u64) -> Verified<RetestRequest> {
    let r = RetestRequest { manifest_id: m.id(), app: m.app.clone(), version: m.version.clone(), clusters };
    Envelope::sign(&vendor(), &r, UnixMillis(at)).unwrap().verify().unwrap()
}

#[test]
fn a_vendor_retest_unhalts_the_cluster_and_reports_from_before_it_no_longer_count() {
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    let id = m.id();
    let mut member = node(4, 3, &m);
    member.rollout.handle(Event::Manifest(signed_manifest(&m, 0)), UnixMillis(0));
    member.rollout.handle(Event::ContentReady { manifest: id }, UnixMillis(SEC));
    let fail = report_for(&member.key_ranked(&m, 0), &m, cluster_key(0), Outcome::Fail, 2 * SEC);
    member.rollout.handle(Event::Report(fail.clone()), UnixMillis(2 * SEC));
    assert_eq!(phase(&member), Some(Phase::Halted));

    // A retest of another cluster changes nothing here.
    let elsewhere = retest_for(&m, vec![cluster_key(9)], 50 * SEC);
    member.rollout.handle(Event::Retest(elsewhere), UnixMillis(50 * SEC));
    assert_eq!(phase(&member), Some(Phase::Halted));

    let a =
        member.rollout.handle(Event::Retest(retest_for(&m, vec![cluster_key(0)], 100 * SEC)), UnixMillis(100 * SEC));
    persist_precedes_every_action(&a);
    assert_eq!(phase(&member), Some(Phase::WaitingForGate));
    assert_eq!(member.rollout.status().verdict, Some(Verdict::Pending));
    // The old failure, heard again, is refused; so is a request older than the last.
    member.rollout.handle(Event::Report(fail), UnixMillis(101 * SEC));
    assert!(matches!(member.rollout.last_ignored(), Some(Ignored::Report(ReportRejected::BeforeRetest))));
    member.rollout.handle(Event::Retest(retest_for(&m, Vec::new(), 60 * SEC)), UnixMillis(101 * SEC));
    assert_eq!(member.rollout.status().verdict, Some(Verdict::Pending));

    let mut applied = false;
    for rank in [0, 1] {
        let r = report_for(&member.key_ranked(&m, rank), &m, cluster_key(0), Outcome::Pass, 110 * SEC);
        let a = member.rollout.handle(Event::Report(r), UnixMillis(110 * SEC));
        applied |= a.contains(&Action::Apply { manifest: id, version: m.version.clone() });
    }
    assert!(applied, "the retested cluster applies once its representatives pass");

    // The representative that failed tests again at once.
    let mut rep = node(4, 0, &m);
    rep.rollout.handle(Event::Manifest(signed_manifest(&m, 0)), UnixMillis(0));
    rep.rollout.handle(Event::ContentReady { manifest: id }, UnixMillis(SEC));
    rep.rollout.handle(Event::TestFinished { manifest: id, run: run(Outcome::Fail) }, UnixMillis(2 * SEC));
    assert_eq!(phase(&rep), Some(Phase::Failed));
    let a = rep.rollout.handle(Event::Retest(retest_for(&m, Vec::new(), 100 * SEC)), UnixMillis(100 * SEC));
    assert!(a.contains(&Action::RunTests { manifest: id }), "{a:?}");
    assert!(rep.rollout.snapshot().own_problem.is_none());

    // A request for another release is ignored.
    let other = manifest("2.0.0", policy(PolicyKind::FrontLoading));
    rep.rollout.handle(Event::Retest(retest_for(&other, Vec::new(), 120 * SEC)), UnixMillis(120 * SEC));
    assert!(matches!(rep.rollout.last_ignored(), Some(Ignored::Retest(RetestIgnored::OtherRelease))));
}

#[test]
fn the_core_counts_no_report_that_is_long_stale_or_from_the_future() {
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    let mut n = node(4, 3, &m);
    let issued = 10 * SEC;
    n.rollout.handle(Event::Manifest(signed_manifest(&m, issued)), UnixMillis(issued));
    let week = MESSAGE_MAX_AGE.as_millis() as u64;
    let fail = report_for(&n.key_ranked(&m, 0), &m, cluster_key(0), Outcome::Fail, issued + SEC);
    n.rollout.handle(Event::Report(fail.clone()), UnixMillis(issued + SEC + week + 1));
    assert_eq!(n.rollout.last_ignored(), Some(&Ignored::Stale));
    let ahead = report_for(&n.key_ranked(&m, 0), &m, cluster_key(0), Outcome::Fail, issued + 10 * 60 * SEC);
    n.rollout.handle(Event::Report(ahead), UnixMillis(issued + 2 * SEC));
    assert_eq!(n.rollout.last_ignored(), Some(&Ignored::Stale));
    assert_eq!(n.rollout.status().verdict, Some(Verdict::Pending));
    // In time, the same failure halts the cluster.
    n.rollout.handle(Event::Report(fail), UnixMillis(issued + 2 * SEC));
    assert!(matches!(n.rollout.status().verdict, Some(Verdict::Halted { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Strangers copy the cluster's fingerprint under fresh keys once the manifest is
    /// out (ground for the lowest ranks, as many as they like), and sign failures and
    /// passes. They never hold a seat, never halt the cluster and never make it hold,
    /// and every observer that heard the same signed data, in any order, agrees.
    #[test]
    fn an_identity_that_joins_after_the_release_never_takes_a_seat(
        honest in 1u8..6,
        attackers in 1usize..24,
        joined_after in 0u64..5_000,
        outcomes in prop::collection::vec(any::<bool>(), 24),
        shift in 0usize..64,
        at in 0u64..4_000,
    ) {
        const RELEASE: u64 = 10_000 * SEC;
        let fleet = Fleet::new(&[honest]);
        let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
        let release = signed_manifest(&m, RELEASE);
        let cluster = cluster_key(0);
        // Keys ground after the release for the lowest ranks this manifest gives.
        let mut ground: Vec<Keypair> = (0..attackers * 8).map(|i| keypair(200, i as u8)).collect();
        ground.sort_by_key(|k| election::rank_score(&m.id(), &cluster, &k.public()));
        ground.truncate(attackers);
        let margin = m.policy.presence_margin_secs as u64 * 1000;
        let mut members = fleet.members(0);
        members.extend(ground.iter().map(|k| Presence { peer: k.public(), since: UnixMillis(RELEASE - margin + 1 + joined_after * SEC) }));
        let reports: Vec<Verified<TestReport>> = ground
            .iter()
            .zip(&outcomes)
            .map(|(k, pass)| report_for(k, &m, cluster, if *pass { Outcome::Pass } else { Outcome::Fail }, RELEASE + 1_000))
            .collect();
        let now = UnixMillis(RELEASE + at * SEC);
        let mut evaluations = Vec::new();
        for rotate in [0, shift] {
            let mut campaign = Campaign::new();
            let mut members = members.clone();
            let n = members.len();
            members.rotate_left(rotate % n);
            campaign.set_members(cluster, members, UnixMillis(RELEASE));
            campaign.start_release(&release, UnixMillis(RELEASE)).unwrap();
            let mut reports = reports.clone();
            let n = reports.len();
            reports.rotate_left(rotate % n);
            for r in &reports {
                prop_assert_eq!(campaign.admit(r, UnixMillis(RELEASE + 1_000)), Err(ReportRejected::JoinedAfterRelease));
            }
            campaign.tick(now);
            let e = campaign.evaluation(&cluster).unwrap().clone();
            for k in &ground {
                prop_assert!(!e.is_seated(&k.public()));
            }
            prop_assert_eq!(e.verdict, Verdict::Pending);
            prop_assert_eq!(campaign.gate(&cluster).unwrap().eligible_count(), honest as usize);
            evaluations.push(e);
        }
        prop_assert_eq!(&evaluations[0], &evaluations[1]);
    }
}

#[test]
fn a_stranger_unknown_to_the_membership_is_kept_only_if_its_rank_could_be_seated() {
    // A big cluster: of many unknown signers, only those under the seat bar are stored.
    let fleet = Fleet::new(&[200]);
    let mut campaign = fleet.campaign();
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    campaign.start_release(&signed_manifest(&m, 0), UnixMillis(0)).unwrap();
    let mut results = std::collections::BTreeMap::new();
    for i in 0..=255u8 {
        let r = report_for(&keypair(201, i), &m, cluster_key(0), Outcome::Fail, SEC);
        let result = campaign.admit(&r, UnixMillis(SEC)).err().map(|e| e.name());
        *results.entry(result).or_insert(0) += 1;
    }
    let not_elected = results.get(&Some("not_elected")).copied().unwrap_or(0);
    assert!(not_elected > 150, "most strangers are over the bar: {results:?}");
    assert_eq!(verdict(&campaign, 0), Verdict::Pending, "no stranger halts the cluster");
}

#[test]
fn a_critical_cluster_holds_only_once_the_vendors_testers_pass_too() {
    let fleet = Fleet::new(&[4, 4]);
    let tester = keypair(150, 1);
    let mut p = policy(PolicyKind::FrontLoading);
    p.testers = vec![tester.public()];
    p.critical = vec![cluster_key(0)];
    p.tester_quorum = 1;
    let m = manifest("1.0.0", p);
    let mut campaign = fleet.campaign();
    campaign.start_release(&signed_manifest(&m, 0), UnixMillis(0)).unwrap();
    for c in 0..2u8 {
        for rank in 0..2 {
            let k = fleet.ranked(&campaign, c as usize, rank).clone();
            campaign.admit(&report_for(&k, &m, cluster_key(c), Outcome::Pass, 10 * SEC), UnixMillis(10 * SEC)).unwrap();
        }
    }
    assert_eq!(verdict(&campaign, 1), Verdict::Holds { at: UnixMillis(10 * SEC) }, "not critical");
    assert_eq!(verdict(&campaign, 0), Verdict::Pending, "critical: waits for the vendor's tester");
    let pass = report_for(&tester, &m, cluster_key(0), Outcome::Pass, 20 * SEC);
    campaign.admit(&pass, UnixMillis(20 * SEC)).unwrap();
    assert_eq!(verdict(&campaign, 0), Verdict::Holds { at: UnixMillis(20 * SEC) });
    // A tester's failure halts a critical cluster even after its representatives passed.
    let fix = manifest("1.0.1", m.policy.clone());
    campaign.start_release(&signed_manifest(&fix, 100 * SEC), UnixMillis(100 * SEC)).unwrap();
    let fail = report_for(&tester, &fix, cluster_key(0), Outcome::Fail, 101 * SEC);
    campaign.admit(&fail, UnixMillis(101 * SEC)).unwrap();
    assert_eq!(verdict(&campaign, 0), Verdict::Halted { at: UnixMillis(101 * SEC), by: tester.public() });
}

/// Found by `never_applies_without_the_gate_or_after_a_counted_failure`: a one-member
/// cluster's representative said fail, then pass at the same millisecond, and the pass
/// (the lower id of a tie) replaced the counted failure, so the node applied.
#[test]
fn a_representatives_failure_stands_over_anything_else_it_signs() {
    let fleet = Fleet::new(&[3]);
    let m = manifest("1.0.0", policy(PolicyKind::FrontLoading));
    let c = cluster_key(0);
    for (fail_at, pass_at) in [(20, 20), (20, 30), (30, 20)] {
        for fail_first in [true, false] {
            let mut campaign = fleet.campaign();
            campaign.start_release(&signed_manifest(&m, 0), UnixMillis(0)).unwrap();
            let rep = fleet.ranked(&campaign, 0, 0).clone();
            let fail = report_for(&rep, &m, c, Outcome::Fail, fail_at * SEC);
            let pass = report_for(&rep, &m, c, Outcome::Pass, pass_at * SEC);
            let (a, b) = if fail_first { (&fail, &pass) } else { (&pass, &fail) };
            let _ = campaign.admit(a, UnixMillis(40 * SEC));
            let _ = campaign.admit(b, UnixMillis(40 * SEC));
            let second = report_for(fleet.ranked(&campaign, 0, 1), &m, c, Outcome::Pass, 35 * SEC);
            let _ = campaign.admit(&second, UnixMillis(40 * SEC));
            assert!(
                matches!(verdict(&campaign, 0), Verdict::Halted { .. }),
                "fail at {fail_at}, pass at {pass_at}, fail first {fail_first}: {:?}",
                verdict(&campaign, 0)
            );
        }
    }
}

// ---- Releases scoped to what they touch ----

fn scoped_node(scopes: Vec<crate::fingerprint::scope::Scope>, buffer_pool: &str) -> (Rollout, Keypair) {
    use crate::fingerprint::{Item, ItemValue, ResourceClass};
    let item = |class, path: &str, key: &str, value: &str| Item {
        class,
        path: path.into(),
        key: key.into(),
        value: ItemValue::Text(value.into()),
    };
    let fingerprint = Fingerprint::new(
        APP.into(),
        Digest([9; 32]),
        vec![
            item(ResourceClass::Library, "/usr/lib/libmysqlclient.so.21", "", "build 1"),
            item(ResourceClass::Config, "/etc/mysql/my.cnf", "mysqld.innodb_buffer_pool_size", buffer_pool),
        ],
    );
    let me = keypair(0, 0);
    (Rollout::new(NodeConfig { app: APP.into(), me: me.public(), fingerprint, scopes }), me)
}

fn library_scope() -> crate::fingerprint::scope::Scope {
    crate::fingerprint::scope::Scope { classes: vec![crate::fingerprint::ResourceClass::Library], paths: Vec::new() }
}

#[test]
fn a_release_scoped_to_the_library_is_staged_over_the_scopes_clusters_and_the_next_over_full_ones() {
    use crate::fingerprint::scope::membership_name;
    let (mut n, me) = scoped_node(vec![library_scope()], "1G");
    let full = n.cluster();
    assert_eq!(n.grouping().membership, APP);
    n.handle(Event::Members { cluster: full, members: present(&[me.public()]) }, UnixMillis(0));

    let mut scoped_policy = policy(PolicyKind::FrontLoading);
    scoped_policy.scope = Some(Box::new(library_scope()));
    let m = manifest("1.0.0", scoped_policy);
    n.handle(Event::Manifest(signed_manifest(&m, SEC)), UnixMillis(SEC));
    let scoped = n.cluster();
    assert_eq!(n.grouping().membership, membership_name(APP, &library_scope()));
    assert_ne!(scoped, full);
    // A machine that differs only in MySQL's tuning is in the same scoped cluster.
    let (mut tuned, _) = scoped_node(vec![library_scope()], "4G");
    assert_ne!(tuned.cluster(), full);
    tuned.handle(Event::Manifest(signed_manifest(&m, SEC)), UnixMillis(SEC));
    assert_eq!(tuned.cluster(), scoped);
    assert!(n.campaign().members(&full).is_empty(), "the full clusters' membership is forgotten");

    // Fed the scope's roster, the node is a representative of the scoped cluster, and
    // its report names that cluster.
    let mate = keypair(0, 1);
    n.handle(Event::Members { cluster: scoped, members: present(&[me.public(), mate.public()]) }, UnixMillis(SEC));
    n.handle(Event::ContentReady { manifest: m.id() }, UnixMillis(2 * SEC));
    assert!(n.status().representative);
    let a = n.handle(Event::TestFinished { manifest: m.id(), run: run(Outcome::Pass) }, UnixMillis(3 * SEC));
    let Some(Action::PublishTestReport(report)) = a.iter().find(|a| matches!(a, Action::PublishTestReport(_))) else {
        panic!("no report in {a:?}");
    };
    assert_eq!(report.cluster_key, scoped);

    // The next release names no scope: full clusters again.
    let next = manifest("1.1.0", policy(PolicyKind::FrontLoading));
    n.handle(Event::Manifest(signed_manifest(&next, 4 * SEC)), UnixMillis(4 * SEC));
    assert_eq!(n.grouping().membership, APP);
    assert_eq!(n.cluster(), full);
    assert!(n.campaign().members(&scoped).is_empty());
}

#[test]
fn a_scope_the_node_keeps_no_membership_for_is_staged_over_full_clusters() {
    let (mut n, _) = scoped_node(Vec::new(), "1G");
    let full = n.cluster();
    let mut scoped_policy = policy(PolicyKind::FrontLoading);
    scoped_policy.scope = Some(Box::new(library_scope()));
    n.handle(Event::Manifest(signed_manifest(&manifest("1.0.0", scoped_policy), SEC)), UnixMillis(SEC));
    assert_eq!(n.grouping().membership, APP);
    assert_eq!(n.cluster(), full);
}

#[test]
fn a_refused_release_does_not_regroup() {
    let (mut n, me) = scoped_node(vec![library_scope()], "1G");
    let full = n.cluster();
    let m = manifest("2.0.0", policy(PolicyKind::FrontLoading));
    n.handle(Event::Manifest(signed_manifest(&m, SEC)), UnixMillis(SEC));
    n.handle(Event::Members { cluster: full, members: present(&[me.public()]) }, UnixMillis(SEC));
    let mut older = policy(PolicyKind::FrontLoading);
    older.scope = Some(Box::new(library_scope()));
    n.handle(Event::Manifest(signed_manifest(&manifest("1.0.0", older), 2 * SEC)), UnixMillis(2 * SEC));
    assert!(n.last_ignored().is_some());
    assert_eq!(n.cluster(), full);
    assert_eq!(n.campaign().members(&full).len(), 1);
}

/// Writes the fuzz targets' seed corpus (`fuzz/corpus/<target>/`) from real signed
/// messages: `MIRAGE_FUZZ_CORPUS=fuzz/corpus cargo test -p mirage-protocol --lib -- --ignored fuzz_corpus`.
#[test]
#[ignore = "a tool, not a check: writes the fuzz seed corpus where MIRAGE_FUZZ_CORPUS says"]
fn fuzz_corpus() {
    use crate::fingerprint::{Item, ItemValue, ResourceClass};
    use crate::report::{ProblemDetails, ProblemDraft};
    use crate::roster::{ClusterSummary, Heartbeat};
    let Some(dir) = std::env::var_os("MIRAGE_FUZZ_CORPUS") else { return };
    let dir = std::path::PathBuf::from(dir);
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    };
    let at = 1_800_000_000_000 - 1000;
    let m = manifest("8.4.0", policy(PolicyKind::Balanced));
    let fp = Fingerprint::new(
        APP.into(),
        Digest([1; 32]),
        vec![Item {
            class: ResourceClass::Config,
            path: "/etc/mysql/my.cnf".into(),
            key: "mysqld.port".into(),
            value: ItemValue::Text("3306".into()),
        }],
    );
    let report = report_for(&keypair(0, 0), &m, fp.cluster_key(), Outcome::Fail, at);
    let problem = ProblemDraft {
        manifest_id: m.id(),
        app: APP.into(),
        version: m.version.clone(),
        cluster_key: fp.cluster_key(),
        failed_tests: vec!["config-validates".into()],
        logs_digest: Digest([2; 32]),
        vendor: vendor().public(),
        details: ProblemDetails { fingerprint: fp.clone(), output_excerpt: "unknown variable".into() },
    }
    .seal(&mut rand::rngs::OsRng)
    .unwrap();
    let retest =
        RetestRequest { manifest_id: m.id(), app: APP.into(), version: m.version.clone(), clusters: Vec::new() };
    let to_bytes = |e: Envelope| e.to_bytes().unwrap();
    let k = keypair(0, 1);
    write("release_message", "manifest", &to_bytes(Envelope::sign(&vendor(), &m, UnixMillis(at)).unwrap()));
    write(
        "release_message",
        "test-report",
        &to_bytes(Envelope::sign(&keypair(0, 0), report.payload(), UnixMillis(at)).unwrap()),
    );
    write("release_message", "problem-report", &to_bytes(Envelope::sign(&k, &problem, UnixMillis(at)).unwrap()));
    write("release_message", "retest", &to_bytes(Envelope::sign(&vendor(), &retest, UnixMillis(at)).unwrap()));
    write("app_message", "fingerprint", &to_bytes(Envelope::sign(&k, &fp, UnixMillis(at)).unwrap()));
    let summary = ClusterSummary { app: APP.into(), cluster_key: fp.cluster_key(), size: 4, epoch: 7 };
    write("app_message", "summary", &to_bytes(Envelope::sign(&k, &summary, UnixMillis(at)).unwrap()));
    let typed = |which: u8, bytes: Vec<u8>| [vec![which], bytes].concat();
    write("wire_types", "manifest", &typed(0, crate::wire::encode(&m).unwrap()));
    write("wire_types", "test-report", &typed(1, crate::wire::encode(report.payload()).unwrap()));
    write("wire_types", "problem-report", &typed(2, crate::wire::encode(&problem).unwrap()));
    write("wire_types", "retest", &typed(3, crate::wire::encode(&retest).unwrap()));
    write("wire_types", "fingerprint", &typed(4, crate::wire::encode(&fp).unwrap()));
    let heartbeat = Heartbeat { app: APP.into(), cluster_key: fp.cluster_key() };
    write("wire_types", "heartbeat", &typed(5, crate::wire::encode(&heartbeat).unwrap()));
    write("wire_types", "summary", &typed(6, crate::wire::encode(&summary).unwrap()));
    let configs: [(u8, &str); 4] = [
        (0, "[mysqld]\nport = 3306\n!include /etc/app/other.conf\n!includedir /etc/app/conf.d/\nskip-name-resolve\n"),
        (1, "Port 22\nInclude /etc/app/conf.d/*.conf\nPermitRootLogin no\n"),
        (2, "ServerRoot /etc/app\n<VirtualHost *:80>\n  DocumentRoot /var/www\n  IncludeOptional conf.d/*.conf\n</VirtualHost>\n"),
        (3, "[PHP]\nextension=mysqli\nmemory_limit = 128M\n[PATH=/var/www]\ndisplay_errors = Off\n"),
    ];
    for (which, text) in configs {
        write("config", &format!("format-{which}"), &typed(which, text.as_bytes().to_vec()));
        let chain = format!("{text}\0[client]\nport = 3307\nInclude /etc/app/app.conf\n\0x = 1\n");
        write("config_chain", &format!("format-{which}"), &typed(which, chain.into_bytes()));
    }
    use crate::exchange::{content, fetch, lane};
    let requests = [
        content::ContentRequest::Manifest { app: APP.into() },
        content::ContentRequest::Chunk { content: Digest([3; 32]), index: 7 },
        content::ContentRequest::Verdicts { app: APP.into(), manifest: m.id(), cluster: fp.cluster_key() },
    ];
    for (i, request) in requests.iter().enumerate() {
        write("exchange", &format!("content-request-{i}"), &typed(0, crate::wire::encode(request).unwrap()));
    }
    let reports = vec![to_bytes(Envelope::sign(&k, &problem, UnixMillis(at)).unwrap())];
    let answer = [vec![content::Tag::Reports as u8], crate::wire::encode(&reports).unwrap()].concat();
    write("exchange", "content-answer-reports", &typed(1, answer));
    let lane_offer = [vec![content::Tag::Lane as u8, 0x12, 0x34], vec![9; 16]].concat();
    write("exchange", "content-answer-lane", &typed(1, lane_offer));
    let chunk_head = [(1u32 << 20).to_be_bytes(), 16u32.to_be_bytes()].concat();
    write("exchange", "chunk-head", &typed(2, chunk_head));
    write("exchange", "bitmap", &typed(3, [vec![3], content::pack_bitmap(&[true, false, true, true, false])].concat()));
    let request = fetch::FetchRequest {
        app: APP.into(),
        announcement: Some(to_bytes(Envelope::sign(&k, &fp, UnixMillis(at)).unwrap())),
    };
    write("exchange", "fetch-request", &typed(4, crate::wire::encode(&request).unwrap()));
    let introduction = fetch::Introduction::new(k.public(), [vec![4, 127, 0, 0, 1, 6, 0x12, 0x5d]]);
    let response =
        fetch::FetchResponse { announcement: request.announcement.clone(), introductions: vec![introduction] };
    write("exchange", "fetch-response", &typed(5, crate::wire::encode(&response).unwrap()));
    write("exchange", "lane-hello", &typed(6, lane::encode_hello(&[5; 16]).to_vec()));
    let head = lane::AnswerHead::Chunk { index: 3, bitmap_len: 2, data_len: 1 << 16 };
    write("exchange", "lane-answer", &typed(7, [head.encode().to_vec(), vec![3]].concat()));
}
