//! When each stage opens.
//!
//! Stage 0 opens when the campaign starts. Stage s+1 opens when every cluster of stage s
//! has settled (its gate held for some release of this campaign), at the issue time of
//! the last settling report, or when stage s has been open for the policy's timeout,
//! whichever comes first. Both times come from signed data, so nodes agree on them.
//! Opened stages stay open: a release that fixes a problem continues the campaign
//! rather than walking every stage again.

use super::plan::StagePlan;
use crate::fingerprint::ClusterKey;
use crate::time::UnixMillis;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageSchedule {
    timeout: Duration,
    /// Opening times of the stages opened so far, in order.
    opened: Vec<UnixMillis>,
    /// First time each cluster's gate held during this campaign.
    settled: BTreeMap<ClusterKey, UnixMillis>,
    /// Per stage: how many of its clusters have settled and the latest settling time.
    progress: Vec<(usize, UnixMillis)>,
}

impl StageSchedule {
    /// A campaign whose first stage opens at `start`.
    pub fn start(plan: &StagePlan, start: UnixMillis, timeout: Duration) -> Self {
        let mut s = StageSchedule { timeout, opened: vec![start], settled: BTreeMap::new(), progress: Vec::new() };
        s.replan(plan);
        s
    }

    /// Recounts progress after the plan changed (membership moved clusters around).
    pub fn replan(&mut self, plan: &StagePlan) {
        self.progress = vec![(0, UnixMillis(0)); plan.stage_count()];
        for (cluster, at) in &self.settled {
            let p = &mut self.progress[plan.stage_of(cluster)];
            p.0 += 1;
            p.1 = p.1.max(*at);
        }
    }

    pub fn opened_at(&self, stage: usize) -> Option<UnixMillis> {
        self.opened.get(stage).copied()
    }

    pub fn open_stages(&self) -> usize {
        self.opened.len()
    }

    pub fn is_settled(&self, cluster: &ClusterKey) -> bool {
        self.settled.contains_key(cluster)
    }

    /// Records that `cluster`'s gate held at `at`. The earliest time stands.
    pub fn settle(&mut self, plan: &StagePlan, cluster: ClusterKey, at: UnixMillis) {
        if self.settled.contains_key(&cluster) {
            return;
        }
        self.settled.insert(cluster, at);
        if let Some(p) = self.progress.get_mut(plan.stage_of(&cluster)) {
            p.0 += 1;
            p.1 = p.1.max(at);
        }
    }

    /// Opens every stage whose condition holds at `now`; returns the stages it opened.
    pub fn advance(&mut self, plan: &StagePlan, now: UnixMillis) -> std::ops::Range<usize> {
        let first_new = self.opened.len();
        while self.opened.len() < plan.stage_count() {
            let last = self.opened.len() - 1;
            let last_open = self.opened[last];
            let by_timeout = last_open.saturating_add(self.timeout);
            let (done, latest) = self.progress[last];
            let by_gates = (done >= plan.stages()[last].len()).then_some(latest.max(last_open));
            let at = match by_gates {
                Some(t) => t.min(by_timeout),
                None => by_timeout,
            };
            if at > now {
                break;
            }
            self.opened.push(at);
        }
        first_new..self.opened.len()
    }

    /// When a stage would open by timeout, if any stage is still closed.
    pub fn next_timeout(&self, plan: &StagePlan) -> Option<UnixMillis> {
        (self.opened.len() < plan.stage_count())
            .then(|| self.opened.last().map(|t| t.saturating_add(self.timeout)))
            .flatten()
    }

    /// Every stage is open and every cluster has settled: a new release starts afresh.
    pub fn is_complete(&self, plan: &StagePlan) -> bool {
        self.opened.len() >= plan.stage_count()
            && plan.stages().iter().enumerate().all(|(i, s)| self.progress.get(i).is_some_and(|p| p.0 >= s.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{PolicyKind, StagingPolicy};
    use crate::Digest;

    fn key(i: u32) -> ClusterKey {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&i.to_be_bytes());
        ClusterKey(Digest(d))
    }

    fn plan3() -> StagePlan {
        let policy = StagingPolicy { kind: PolicyKind::Balanced, stages: 3, ..StagingPolicy::default() };
        StagePlan::new(&policy, &(0..6).map(|i| (key(i), 10)).collect())
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn stages_open_when_all_gates_of_the_previous_stage_hold() {
        let plan = plan3();
        let mut s = StageSchedule::start(&plan, UnixMillis(0), HOUR);
        assert_eq!(s.advance(&plan, UnixMillis(1000)), 1..1);
        let stage0 = plan.stages()[0].clone();
        s.settle(&plan, stage0[0], UnixMillis(500));
        assert_eq!(s.advance(&plan, UnixMillis(1000)), 1..1);
        s.settle(&plan, stage0[1], UnixMillis(900));
        assert_eq!(s.advance(&plan, UnixMillis(1000)), 1..2);
        assert_eq!(s.opened_at(1), Some(UnixMillis(900)));
        assert!(!s.is_complete(&plan));
    }

    #[test]
    fn stages_open_by_timeout_when_a_gate_never_holds() {
        let plan = plan3();
        let mut s = StageSchedule::start(&plan, UnixMillis(0), HOUR);
        assert_eq!(s.next_timeout(&plan), Some(UnixMillis(3_600_000)));
        assert_eq!(s.advance(&plan, UnixMillis(3_599_999)), 1..1);
        assert_eq!(s.advance(&plan, UnixMillis(7_200_000)), 1..3);
        assert_eq!(s.opened_at(2), Some(UnixMillis(7_200_000)));
        assert_eq!(s.next_timeout(&plan), None);
    }

    #[test]
    fn complete_once_every_cluster_settled() {
        let plan = plan3();
        let mut s = StageSchedule::start(&plan, UnixMillis(0), HOUR);
        for (i, stage) in plan.stages().iter().enumerate() {
            for c in stage {
                s.settle(&plan, *c, UnixMillis(10 * (i as u64 + 1)));
            }
            s.advance(&plan, UnixMillis(100));
        }
        assert_eq!(s.open_stages(), 3);
        assert_eq!(s.opened_at(2), Some(UnixMillis(20)));
        assert!(s.is_complete(&plan));
    }
}
