//! What a restarted node feeds its rollout from its store, and in which order.
//!
//! After [`Rollout::restore`](super::Rollout::restore) the node feeds, in this order:
//! the admitted release, the memberships, then the stored messages [`replay`] returns.
//! Retests come before reports: a gate refuses reports older than a retest whatever
//! the order, and the core's snapshot says which retests the node already acted on.
//! Reports come in issue order, stale ones are left out, and of a signer's reports on
//! one manifest only the earliest is kept (the one every gate keeps).

use super::rollout::{is_fresh, Event};
use crate::envelope::Verified;
use crate::report::{RetestRequest, TestReport};
use crate::time::UnixMillis;
use std::collections::BTreeMap;

/// The stored retest requests (already checked against the trust store) and test
/// reports, as events to feed in order.
pub fn replay(
    mut retests: Vec<Verified<RetestRequest>>,
    reports: Vec<Verified<TestReport>>,
    now: UnixMillis,
) -> Vec<Event> {
    retests.sort_by_key(|r| (r.issued_at(), r.id()));
    let mut kept: BTreeMap<_, Verified<TestReport>> = BTreeMap::new();
    for r in reports.into_iter().filter(|r| is_fresh(r, now)) {
        let slot = (r.payload().manifest_id, *r.signer());
        match kept.get(&slot) {
            Some(old) if (old.issued_at(), old.id()) <= (r.issued_at(), r.id()) => {}
            _ => {
                kept.insert(slot, r);
            }
        }
    }
    let mut reports: Vec<Verified<TestReport>> = kept.into_values().collect();
    reports.sort_by_key(|r| (r.issued_at(), r.id()));
    retests.into_iter().map(Event::Retest).chain(reports.into_iter().map(Event::Report)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::ClusterKey;
    use crate::identity::Keypair;
    use crate::report::Outcome;
    use crate::{Digest, Envelope};

    fn report(signer: u8, manifest: u8, at: u64) -> Verified<TestReport> {
        let r = TestReport {
            manifest_id: Digest([manifest; 32]),
            app: "app".into(),
            version: "1.0.0".parse().unwrap(),
            cluster_key: ClusterKey(Digest([1; 32])),
            outcome: Outcome::Pass,
            summary: format!("at {at}"),
            logs_digest: Digest([0; 32]),
            tests_run: 1,
            duration_ms: 1,
        };
        Envelope::sign(&Keypair::from_secret_bytes(&[signer; 32]), &r, UnixMillis(at)).unwrap().verify().unwrap()
    }

    fn retest(at: u64) -> Verified<RetestRequest> {
        let r = RetestRequest {
            manifest_id: Digest([1; 32]),
            app: "app".into(),
            version: "1.0.0".parse().unwrap(),
            clusters: Vec::new(),
        };
        Envelope::sign(&Keypair::from_secret_bytes(&[9; 32]), &r, UnixMillis(at)).unwrap().verify().unwrap()
    }

    const DAY: u64 = 24 * 3600 * 1000;

    #[test]
    fn retests_then_reports_in_issue_order_the_earliest_per_signer_and_none_stale() {
        let now = 30 * DAY;
        let reports = vec![
            report(1, 1, now - 50),
            report(2, 1, now - 90),
            report(1, 1, now - 70),
            report(3, 1, now - 20 * DAY),
            report(1, 2, now - 10),
        ];
        let retests = vec![retest(now - 5), retest(now - 60)];
        let events = replay(retests, reports.clone(), UnixMillis(now));
        let times: Vec<(char, u64)> = events
            .iter()
            .map(|e| match e {
                Event::Retest(r) => ('r', now - r.issued_at().0),
                Event::Report(r) => ('t', now - r.issued_at().0),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(times, vec![('r', 60), ('r', 5), ('t', 90), ('t', 70), ('t', 10)]);
        // Whatever order the store gives them in.
        let mut shuffled = reports;
        shuffled.reverse();
        assert_eq!(replay(vec![retest(now - 60), retest(now - 5)], shuffled, UnixMillis(now)), events);
    }
}
