//! Who tests an upgrade for a cluster: representatives by rendezvous hashing, with
//! seats that pass down the ranking when their holder misses its report deadline.
//!
//! Every member ranks the cluster's members by `blake3(manifest id, cluster key, peer id)`,
//! so all members who know the same membership compute the same ranking with no
//! coordinator, and a new manifest reshuffles who carries the testing load.
//!
//! Replacement is a pure function of signed data (report issue times) and the current
//! time, not of arrival order: a node that hears a late-delivered but on-time report
//! recomputes the same seats as a node that heard it early.

use crate::fingerprint::ClusterKey;
use crate::identity::PublicKey;
use crate::report::Outcome;
use crate::time::UnixMillis;
use crate::Digest;
use std::time::Duration;

/// Domain tag so rendezvous scores can never collide with another blake3 use.
const RANK_DOMAIN: &[u8] = b"mirage/v1/representative-rank";

/// A member's rendezvous score for one (manifest, cluster): lower ranks first.
pub fn rank_score(manifest: &Digest, cluster: &ClusterKey, peer: &PublicKey) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(RANK_DOMAIN);
    h.update(&manifest.0);
    h.update(&cluster.0 .0);
    h.update(&peer.peer_id_bytes());
    *h.finalize().as_bytes()
}

/// Orders `members` by rendezvous score (duplicates removed). Every member computes the
/// same order from the same membership.
pub fn rank_members(manifest: &Digest, cluster: &ClusterKey, members: &[PublicKey]) -> Vec<PublicKey> {
    let mut scored: Vec<([u8; 32], PublicKey)> =
        members.iter().map(|m| (rank_score(manifest, cluster, m), *m)).collect();
    scored.sort_unstable();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().map(|(_, m)| m).collect()
}

/// Whether a member whose rendezvous score is `score` can be holding a seat by `round`
/// (whole report deadlines since its cluster's stage opened) in a cluster of about
/// `size` eligible members with `seats` seats and `handed_on` seats handed on early
/// (abstentions): O(1), no member list.
///
/// Seats go down the ranking at most `seats` per round plus one per abstention, so a
/// holder's rank stays under `(seats + handed_on) · (round + 1)`; scores are uniform, and
/// the j-th lowest of `size` of them lies under `8 · j · 2^round / size` except with a
/// probability below e^-8 for one seat and far smaller for more. A report above that
/// bar cannot be a representative's: nothing about it is kept, whatever the node knows
/// of the membership.
pub fn may_hold_seat(score: &[u8; 32], seats: usize, handed_on: usize, size: usize, round: u32) -> bool {
    let reach = (seats + handed_on).max(1) as f64 * 8.0 * 2f64.powi(round.min(62) as i32);
    let bar = reach / size.max(1) as f64;
    if bar >= 1.0 {
        return true;
    }
    let head = u64::from_be_bytes(score[..8].try_into().expect("8 bytes"));
    (head as f64) < bar * (u64::MAX as f64)
}

/// A representative seat: who holds it and since when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seat {
    /// Index of the holder in the ranking.
    pub rank: usize,
    pub holder: PublicKey,
    pub elected_at: UnixMillis,
    /// The holder's report must be issued by then, or the seat passes on.
    pub deadline: UnixMillis,
    /// The holder issued a report in time, so the seat can no longer pass on.
    pub settled: bool,
}

/// How many representatives a cluster of `members` machines gets, and how many passes
/// its gate needs: the policy's numbers, capped so tiny clusters are not stuck waiting
/// for representatives they do not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quorum {
    pub seats: usize,
    pub threshold: usize,
}

impl Quorum {
    pub fn new(representatives: u16, threshold: u16, members: usize) -> Self {
        let seats = (representatives as usize).min(members);
        Quorum { seats, threshold: (threshold as usize).min(seats) }
    }
}

/// Computes the seats at `now`, given when testing started, the report deadline, when
/// the release was issued and a lookup of each member's report (issue time, outcome).
///
/// All seats start at `start`. A seat passes to the next unused member in the ranking
/// as soon as its holder abstains (it could not test, for a fault of its own), and to
/// the next *two* when its holder's term ends without a pass or fail from it: a
/// silent holder may have hung, and so may its successor, and with two one report is
/// enough (rounds widen; the seats at most double per term, which the O(1) bar on
/// strangers allows for). Hand-offs happen in order of time, ties in seat order, so the
/// result is deterministic. A seat stays with its last holder when the ranking is
/// exhausted.
///
/// A report counts from the release's issue time (`valid_from`) on, not only from
/// `start`: a representative whose early view of the membership put its cluster in an
/// open stage may have tested before the stage opened in the views of others, and its
/// result is a test of this release in this environment all the same. Counting from
/// each node's own opening time made nodes with different plan histories disagree on
/// the same report, and deadlock until the report deadline.
pub fn seats_at(
    ranking: &[PublicKey],
    seats: usize,
    start: UnixMillis,
    deadline: Duration,
    now: UnixMillis,
    valid_from: UnixMillis,
    reported: impl Fn(&PublicKey) -> Option<(UnixMillis, Outcome)>,
) -> Vec<Seat> {
    let seats = seats.min(ranking.len());
    let term = deadline.as_millis().clamp(1, u64::MAX as u128) as u64;
    let seat = |rank: usize, elected_at: UnixMillis| {
        let holder = ranking[rank];
        let deadline = UnixMillis(elected_at.0.saturating_add(term));
        let settled =
            reported(&holder).is_some_and(|(t, outcome)| outcome.is_verdict() && t >= valid_from && t <= deadline);
        Seat { rank, holder, elected_at, deadline, settled }
    };
    // When a seat passes on, if it does: at its holder's abstention, or at its deadline
    // (then it widens).
    let hand_off = |s: &Seat| -> Option<(UnixMillis, bool)> {
        if s.settled {
            return None;
        }
        match reported(&s.holder) {
            Some((t, Outcome::Abstain)) if t >= valid_from && t <= s.deadline => Some((t.max(s.elected_at), false)),
            _ => Some((s.deadline, true)),
        }
    };
    let mut out: Vec<Seat> = (0..seats).map(|rank| seat(rank, start)).collect();
    let mut next = seats;
    while next < ranking.len() {
        let due = out
            .iter()
            .enumerate()
            .filter_map(|(i, s)| hand_off(s).filter(|(t, _)| *t <= now).map(|(t, widen)| (t, i, widen)))
            .min();
        let Some((at, i, widen)) = due else { break };
        out[i] = seat(next, at);
        next += 1;
        // A holder silent until its deadline may be stuck, and so may its successor:
        // two take over, so that one more hung test does not cost another deadline.
        // (An abstention says why; one successor is enough.)
        if widen && next < ranking.len() {
            out.push(seat(next, at));
            next += 1;
        }
    }
    out
}

/// When the next seat may pass on after `now` (an abstention issued ahead of the
/// local clock, or a deadline), for the timer.
pub fn next_hand_off(
    seats: &[Seat],
    valid_from: UnixMillis,
    reported: impl Fn(&PublicKey) -> Option<(UnixMillis, Outcome)>,
) -> Option<UnixMillis> {
    seats
        .iter()
        .filter(|s| !s.settled)
        .map(|s| match reported(&s.holder) {
            Some((t, Outcome::Abstain)) if t >= valid_from && t <= s.deadline => t.max(s.elected_at),
            _ => s.deadline,
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn peers(n: u8) -> Vec<PublicKey> {
        (0..n).map(|i| PublicKey([i; 32])).collect()
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn ranking_is_a_permutation_independent_of_input_order() {
        let m = Digest([1; 32]);
        let c = ClusterKey(Digest([2; 32]));
        let p = peers(20);
        let mut rev = p.clone();
        rev.reverse();
        rev.push(p[3]);
        let a = rank_members(&m, &c, &p);
        assert_eq!(a, rank_members(&m, &c, &rev));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, p);
    }

    #[test]
    fn ranking_changes_with_the_manifest() {
        let c = ClusterKey(Digest([2; 32]));
        let p = peers(20);
        assert_ne!(rank_members(&Digest([1; 32]), &c, &p), rank_members(&Digest([9; 32]), &c, &p));
    }

    #[test]
    fn the_seat_bar_needs_no_membership_and_widens_with_rounds() {
        let m = Digest([1; 32]);
        let c = ClusterKey(Digest([2; 32]));
        // In a cluster of 100,000, about 8·2·2^r / 100,000 of all keys pass the bar.
        let keys: Vec<PublicKey> = (0..20_000u32)
            .map(|i| {
                let mut k = [0u8; 32];
                k[..4].copy_from_slice(&i.to_be_bytes());
                PublicKey(k)
            })
            .collect();
        let passing =
            |round| keys.iter().filter(|k| may_hold_seat(&rank_score(&m, &c, k), 2, 0, 100_000, round)).count();
        let (r0, r3) = (passing(0), passing(3));
        assert!((1..=12).contains(&r0), "{r0} of 20,000 pass round 0 (expect ~3)");
        assert!(r3 > r0 && (10..=60).contains(&r3), "{r3} pass round 3 (expect ~26)");
        // Small clusters: everyone.
        assert!(keys.iter().all(|k| may_hold_seat(&rank_score(&m, &c, k), 2, 0, 16, 0)));
        // The lowest-ranked members of a real ranking always pass.
        let ranking = rank_members(&m, &c, &keys);
        for k in &ranking[..4] {
            assert!(may_hold_seat(&rank_score(&m, &c, k), 2, 0, keys.len(), 0));
        }
    }

    #[test]
    fn quorum_is_capped_for_tiny_clusters() {
        assert_eq!(Quorum::new(2, 2, 1), Quorum { seats: 1, threshold: 1 });
        assert_eq!(Quorum::new(3, 2, 10), Quorum { seats: 3, threshold: 2 });
        assert_eq!(Quorum::new(0, 0, 10), Quorum { seats: 0, threshold: 0 });
    }

    #[test]
    fn silent_holders_are_replaced_by_two_in_rank_order_each_deadline() {
        let p = peers(10);
        let start = UnixMillis(1_000);
        let none = |_: &PublicKey| None;
        let ranks = |now: u64| -> Vec<usize> {
            seats_at(&p, 2, start, MIN, UnixMillis(now), UnixMillis(0), none).iter().map(|s| s.rank).collect()
        };
        assert_eq!(ranks(1_000 + 59_999), vec![0, 1]);
        // Seat 0 passes to ranks 2 and 3, then seat 1 to ranks 4 and 5.
        assert_eq!(ranks(1_000 + 60_000), vec![2, 4, 3, 5]);
        let s = seats_at(&p, 2, start, MIN, UnixMillis(61_000), UnixMillis(0), none);
        assert!(s.iter().all(|s| s.elected_at == UnixMillis(61_000)));
        // Next deadline: ranks 2 and 4 pass on to 6-7 and 8-9; 3 and 5 find no one left.
        assert_eq!(ranks(1_000 + 120_000), vec![6, 8, 3, 5, 7, 9]);
        // Exhausted: the last holders keep their seats for good.
        assert_eq!(ranks(10_000_000), vec![6, 8, 3, 5, 7, 9]);
    }

    /// Two representatives in a row whose tests hang cost one deadline, not two: the
    /// silent seat passed to two, and one of them reporting is enough.
    #[test]
    fn one_of_two_successors_reporting_settles_a_widened_seat() {
        let p = peers(10);
        let mut reports = BTreeMap::new();
        reports.insert(p[0], (UnixMillis(30_000), Outcome::Pass));
        // Rank 1 hangs; of its successors, rank 2 hangs too and rank 3 passes.
        reports.insert(p[3], (UnixMillis(100_000), Outcome::Pass));
        let s = seats_at(&p, 2, UnixMillis(0), MIN, UnixMillis(110_000), UnixMillis(0), |k| reports.get(k).copied());
        let settled: Vec<usize> = s.iter().filter(|s| s.settled).map(|s| s.rank).collect();
        assert_eq!(settled, vec![0, 3]);
    }

    #[test]
    fn an_on_time_report_settles_a_seat_even_if_heard_late() {
        let p = peers(6);
        let start = UnixMillis(0);
        let mut reports = BTreeMap::new();
        reports.insert(p[0], UnixMillis(59_000));
        let s = seats_at(&p, 2, start, MIN, UnixMillis(500_000), UnixMillis(0), |k| {
            reports.get(k).map(|t| (*t, Outcome::Pass))
        });
        assert_eq!(s[0].rank, 0);
        assert!(s[0].settled);
        // Seat 1 passed to ranks 2 and 3, then rank 2's to 4 and 5 (exhausted).
        assert_eq!(s.iter().map(|s| s.rank).collect::<Vec<_>>(), vec![0, 4, 3, 5]);
        // A report issued after the term does not settle it.
        reports.insert(p[1], UnixMillis(61_000));
        let s = seats_at(&p, 2, start, MIN, UnixMillis(61_000), UnixMillis(0), |k| {
            reports.get(k).map(|t| (*t, Outcome::Pass))
        });
        assert_eq!(s[1].rank, 2);
    }

    #[test]
    fn reports_count_from_the_release_on_even_before_testing_started() {
        let p = peers(3);
        let (start, released) = (UnixMillis(10_000), UnixMillis(4_000));
        let s = seats_at(&p, 1, start, MIN, start, released, |_| Some((UnixMillis(5_000), Outcome::Pass)));
        assert!(s[0].settled, "tested early, after the release: counts");
        let s = seats_at(&p, 1, start, MIN, start, released, |_| Some((UnixMillis(3_999), Outcome::Fail)));
        assert!(!s[0].settled, "a report older than the release is no test of it");
    }

    #[test]
    fn an_abstaining_holder_hands_its_seat_on_at_once() {
        let p = peers(8);
        let start = UnixMillis(0);
        let mut reports = BTreeMap::new();
        reports.insert(p[0], (UnixMillis(5_000), Outcome::Abstain));
        let at = |now: u64| seats_at(&p, 2, start, MIN, UnixMillis(now), UnixMillis(0), |k| reports.get(k).copied());
        let before = at(4_999);
        assert_eq!(before.iter().map(|s| s.rank).collect::<Vec<_>>(), vec![0, 1]);
        let after = at(5_000);
        assert_eq!(after.iter().map(|s| s.rank).collect::<Vec<_>>(), vec![2, 1], "seat 0 passed on, seat 1 kept");
        assert_eq!(after[0].elected_at, UnixMillis(5_000));
        assert_eq!(after[0].deadline, UnixMillis(65_000), "the new holder gets a full term");
        assert!(!after.iter().any(|s| s.settled), "an abstention is no verdict");
        // At the shared deadline the silent seat 1 passes on to two (one abstention
        // passed to one), then seat 0 to two in its own time.
        assert_eq!(at(60_000).iter().map(|s| s.rank).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(at(65_000).iter().map(|s| s.rank).collect::<Vec<_>>(), vec![5, 3, 4, 6]);
        let seats = at(5_000);
        assert_eq!(next_hand_off(&seats, UnixMillis(0), |k| reports.get(k).copied()), Some(UnixMillis(60_000)));
    }
}
