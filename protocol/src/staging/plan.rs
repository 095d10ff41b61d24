//! Which clusters go in which stage.
//!
//! `no-staging` and `front-loading` put every cluster in one stage (they differ in
//! whether clusters test first, which the gate decides). `balanced` cuts the clusters,
//! ordered by size as the vendor asked, into stages of roughly equal machine count.
//! Every node computes the plan from the cluster sizes it knows, so nodes that know the
//! same membership agree on it.

use crate::fingerprint::ClusterKey;
use crate::manifest::{PolicyKind, StageOrder, StagingPolicy};
use std::collections::BTreeMap;

/// Stages in opening order; each stage lists its clusters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagePlan {
    stages: Vec<Vec<ClusterKey>>,
    stage_of: BTreeMap<ClusterKey, usize>,
}

impl StagePlan {
    /// Plans the rollout of `policy` over clusters of the given sizes (machine counts).
    pub fn new(policy: &StagingPolicy, sizes: &BTreeMap<ClusterKey, u64>) -> Self {
        let stages = match policy.kind {
            PolicyKind::NoStaging | PolicyKind::FrontLoading => {
                vec![sizes.keys().copied().collect()]
            }
            PolicyKind::Balanced => balanced(sizes, policy.stages.max(1) as usize, policy.order),
        };
        let stages: Vec<Vec<ClusterKey>> = stages.into_iter().filter(|s: &Vec<ClusterKey>| !s.is_empty()).collect();
        let stage_of =
            stages.iter().enumerate().flat_map(|(i, s)| s.iter().map(move |c| (*c, i))).collect::<BTreeMap<_, _>>();
        StagePlan { stages, stage_of }
    }

    pub fn stages(&self) -> &[Vec<ClusterKey>] {
        &self.stages
    }

    pub fn stage_count(&self) -> usize {
        self.stages.len()
    }

    /// The stage a cluster belongs to. A cluster the plan has not heard of goes last:
    /// it joined after planning, and the last stage is the safest place for an unknown.
    pub fn stage_of(&self, cluster: &ClusterKey) -> usize {
        self.stage_of.get(cluster).copied().unwrap_or(self.stages.len().saturating_sub(1))
    }
}

fn balanced(sizes: &BTreeMap<ClusterKey, u64>, stages: usize, order: StageOrder) -> Vec<Vec<ClusterKey>> {
    let mut clusters: Vec<(u64, ClusterKey)> = sizes.iter().map(|(k, n)| (*n, *k)).collect();
    match order {
        StageOrder::SmallestFirst => clusters.sort_unstable(),
        StageOrder::LargestFirst => clusters.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1))),
    }
    let total: u64 = clusters.iter().map(|c| c.0).sum();
    let mut out: Vec<Vec<ClusterKey>> = vec![Vec::new(); stages];
    let mut placed: u64 = 0;
    let mut stage = 0;
    for (n, key) in clusters {
        // Move on when this cluster's midpoint would fall past the stage's share of the
        // machines; the last stage takes whatever is left. A cluster is never split, so a
        // huge cluster makes its stage heavier than the rest: the best balance available.
        while stage + 1 < stages
            && !out[stage].is_empty()
            && placed + n / 2 >= total * (stage as u64 + 1) / stages as u64
        {
            stage += 1;
        }
        out[stage].push(key);
        placed += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Digest;

    fn key(i: u32) -> ClusterKey {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&i.to_be_bytes());
        ClusterKey(Digest(d))
    }

    fn policy(kind: PolicyKind, stages: u16, order: StageOrder) -> StagingPolicy {
        StagingPolicy { kind, stages, order, ..StagingPolicy::default() }
    }

    #[test]
    fn unstaged_policies_use_one_stage() {
        let sizes: BTreeMap<_, _> = (0..10).map(|i| (key(i), 5)).collect();
        for kind in [PolicyKind::NoStaging, PolicyKind::FrontLoading] {
            let plan = StagePlan::new(&policy(kind, 4, StageOrder::SmallestFirst), &sizes);
            assert_eq!(plan.stage_count(), 1);
            assert_eq!(plan.stages()[0].len(), 10);
        }
    }

    #[test]
    fn balanced_stages_have_similar_machine_counts_smallest_first() {
        // Sizes 1..=100: 5050 machines in 4 stages, about 1262 each.
        let sizes: BTreeMap<_, _> = (1..=100).map(|i| (key(i), i as u64)).collect();
        let plan = StagePlan::new(&policy(PolicyKind::Balanced, 4, StageOrder::SmallestFirst), &sizes);
        assert_eq!(plan.stage_count(), 4);
        let loads: Vec<u64> = plan.stages().iter().map(|s| s.iter().map(|c| sizes[c]).sum()).collect();
        for l in &loads {
            assert!((1100..=1450).contains(l), "{loads:?}");
        }
        assert_eq!(plan.stage_of(&key(1)), 0);
        assert_eq!(plan.stage_of(&key(100)), 3);
        assert_eq!(plan.stage_of(&key(5000)), 3, "unknown clusters go last");
        // Smallest first: more clusters in the first stage than in the last.
        assert!(plan.stages()[0].len() > plan.stages()[3].len());
    }

    #[test]
    fn largest_first_reverses_the_order() {
        let sizes: BTreeMap<_, _> = (1..=100).map(|i| (key(i), i as u64)).collect();
        let plan = StagePlan::new(&policy(PolicyKind::Balanced, 4, StageOrder::LargestFirst), &sizes);
        assert_eq!(plan.stage_of(&key(100)), 0);
        assert_eq!(plan.stage_of(&key(1)), 3);
    }

    #[test]
    fn fewer_clusters_than_stages_leaves_no_empty_stage() {
        let sizes: BTreeMap<_, _> = (0..2).map(|i| (key(i), 10)).collect();
        let plan = StagePlan::new(&policy(PolicyKind::Balanced, 5, StageOrder::SmallestFirst), &sizes);
        assert_eq!(plan.stage_count(), 2);
        assert!(plan.stages().iter().all(|s| !s.is_empty()));
    }

    #[test]
    fn one_giant_cluster_gets_its_own_stage() {
        let mut sizes: BTreeMap<_, _> = (0..10).map(|i| (key(i), 1)).collect();
        sizes.insert(key(99), 1000);
        let plan = StagePlan::new(&policy(PolicyKind::Balanced, 3, StageOrder::SmallestFirst), &sizes);
        assert_eq!(plan.stages().last().unwrap(), &vec![key(99)]);
    }
}
