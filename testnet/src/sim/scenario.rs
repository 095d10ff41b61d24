//! The simulated world: how many machines, how they fall into clusters, which clusters
//! each upgrade problem breaks, and the staging policy the vendor signs.

use super::timing::Timing;
use super::vendor::APP;
use mirage_protocol::fingerprint::{ClusterKey, Fingerprint};
use mirage_protocol::manifest::{PolicyKind, StageOrder, StagingPolicy};
use mirage_protocol::{Digest, Keypair, PublicKey};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use thiserror::Error;

/// Problems are kept as a bit set per cluster.
pub const MAX_PROBLEMS: u32 = 64;

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ScenarioError {
    #[error("need at least one machine and one cluster")]
    Empty,
    #[error("{clusters} clusters cannot each get a machine out of {machines}")]
    MoreClustersThanMachines { machines: u32, clusters: u32 },
    #[error("at most {MAX_PROBLEMS} problems")]
    TooManyProblems,
    #[error("invalid staging policy: {0}")]
    Policy(String),
    #[error("touched variants must be between 1 and the number of clusters")]
    TouchedVariants,
}

/// Everything a run depends on. Same scenario, same seed: same result, bit for bit.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub machines: u32,
    pub clusters: u32,
    /// Cluster sizes follow a Zipf law: the cluster ranked r gets a share ∝ 1/r^s.
    pub zipf_exponent: f64,
    /// Faulty behaviours in the first release, each breaking a random subset of clusters.
    pub problems: u32,
    /// Share of clusters each problem breaks.
    pub problem_cluster_share: f64,
    /// Share of machines a problem also breaks outside its clusters: machines the
    /// clustering misplaced, whose representatives cannot speak for them. The paper's
    /// real-world clustering test found none, hence the default of zero.
    pub misplaced_share: f64,
    /// The release touches one facet of the environment, in this many variants: each
    /// cluster has one, problems break every cluster of the variants they hit, and
    /// [`World::per_upgrade`] groups the fleet by variant, as a release whose signed
    /// scope names that facet is staged (ImageElves' per-upgrade clusters).
    pub touched_variants: Option<u32>,
    pub seed: u64,
    pub timing: Timing,
    /// The vendor's policy; its `kind` is replaced by each run's (the kind is what a
    /// run compares).
    pub policy: StagingPolicy,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            machines: 100_000,
            clusters: 2_000,
            zipf_exponent: 1.0,
            problems: 3,
            problem_cluster_share: 0.05,
            misplaced_share: 0.0,
            touched_variants: None,
            seed: 1,
            timing: Timing::default(),
            policy: StagingPolicy {
                kind: PolicyKind::Balanced,
                representatives: 2,
                threshold: 2,
                report_deadline_secs: 30 * 60,
                stages: 3,
                stage_timeout_secs: 60 * 60,
                order: StageOrder::SmallestFirst,
                ..StagingPolicy::default()
            },
        }
    }
}

impl Scenario {
    pub fn policy(&self, kind: PolicyKind) -> StagingPolicy {
        StagingPolicy { kind, ..self.policy.clone() }
    }

    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.machines == 0 || self.clusters == 0 {
            return Err(ScenarioError::Empty);
        }
        if self.clusters > self.machines {
            return Err(ScenarioError::MoreClustersThanMachines { machines: self.machines, clusters: self.clusters });
        }
        if self.problems > MAX_PROBLEMS {
            return Err(ScenarioError::TooManyProblems);
        }
        if self.touched_variants.is_some_and(|t| t == 0 || t > self.clusters) {
            return Err(ScenarioError::TouchedVariants);
        }
        self.policy(PolicyKind::Balanced).validate().map_err(ScenarioError::Policy)
    }
}

/// The generated fleet, shared by the runs of every policy so they compare like for like.
pub struct World {
    pub scenario: Scenario,
    /// Machine index → cluster index.
    pub cluster_of: Vec<u32>,
    /// Cluster index → its machines.
    pub members: Vec<Vec<u32>>,
    pub cluster_keys: Vec<ClusterKey>,
    pub public_keys: Vec<PublicKey>,
    /// Cluster index → bit set of the problems that break it.
    pub breaks: Vec<u64>,
    /// Misplaced machines → the problems that break them although their cluster is fine.
    pub misplaced: HashMap<u32, u64>,
    /// How long the vendor takes to fix each problem once reported. Drawn with the
    /// world, so every policy faces the same fixes.
    pub fix_ms: Vec<u64>,
    /// Cluster index → the variant of what the release touches, when it touches one
    /// facet ([`Scenario::touched_variants`]).
    pub variant_of: Option<Vec<u32>>,
}

impl World {
    pub fn generate(scenario: Scenario) -> Result<World, ScenarioError> {
        scenario.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(scenario.seed);
        let sizes = zipf_sizes(scenario.machines, scenario.clusters, scenario.zipf_exponent);
        let mut cluster_of = Vec::with_capacity(scenario.machines as usize);
        let mut members = Vec::with_capacity(sizes.len());
        for (c, n) in sizes.iter().enumerate() {
            let first = cluster_of.len() as u32;
            cluster_of.extend(std::iter::repeat_n(c as u32, *n as usize));
            members.push((first..first + n).collect::<Vec<u32>>());
        }
        let cluster_keys =
            (0..scenario.clusters).map(|c| cluster_fingerprint(scenario.seed, c).cluster_key()).collect();
        let public_keys = {
            use rayon::prelude::*;
            (0..scenario.machines).into_par_iter().map(|m| secret_key(scenario.seed, m).public()).collect()
        };
        let mut breaks = vec![0u64; scenario.clusters as usize];
        // Problems hit clusters, or, when the release touches one facet, the variants
        // of that facet (and so every cluster that has one).
        let variant_of: Option<Vec<u32>> =
            scenario.touched_variants.map(|t| (0..scenario.clusters).map(|c| c % t).collect());
        let units = scenario.touched_variants.unwrap_or(scenario.clusters) as usize;
        let hit = ((units as f64 * scenario.problem_cluster_share).round() as usize).clamp(1, units);
        for p in 0..scenario.problems {
            for u in sample(&mut rng, units, hit) {
                match &variant_of {
                    Some(v) => (0..breaks.len()).filter(|&c| v[c] as usize == u).for_each(|c| breaks[c] |= 1 << p),
                    None => breaks[u] |= 1 << p,
                }
            }
        }
        let fix_ms = (0..scenario.problems).map(|_| scenario.timing.fix(&mut rng)).collect();
        let mut misplaced = HashMap::new();
        if scenario.problems > 0 && scenario.misplaced_share > 0.0 {
            let n = ((scenario.machines as f64 * scenario.misplaced_share).round() as usize)
                .min(scenario.machines as usize);
            for m in sample(&mut rng, scenario.machines as usize, n) {
                let p = rng.gen_range(0..scenario.problems);
                misplaced.insert(m as u32, 1u64 << p);
            }
        }
        Ok(World { scenario, cluster_of, members, cluster_keys, public_keys, breaks, misplaced, fix_ms, variant_of })
    }

    /// The same fleet grouped as a release scoped to the touched facet stages it: one
    /// cluster per variant, holding every cluster of that variant. `None` when the
    /// release touches no single facet.
    pub fn per_upgrade(&self) -> Option<World> {
        let variant_of = self.variant_of.as_ref()?;
        let variants = self.scenario.touched_variants? as usize;
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); variants];
        let mut breaks = vec![0u64; variants];
        for (c, m) in self.members.iter().enumerate() {
            let v = variant_of[c] as usize;
            members[v].extend(m);
            breaks[v] |= self.breaks[c];
        }
        let mut cluster_of = vec![0u32; self.cluster_of.len()];
        for (v, m) in members.iter().enumerate() {
            for &machine in m {
                cluster_of[machine as usize] = v as u32;
            }
        }
        let cluster_keys = (0..variants as u32)
            .map(|v| Fingerprint::new(APP.into(), derive(self.scenario.seed, b"variant", v), Vec::new()).cluster_key())
            .collect();
        Some(World {
            scenario: Scenario { clusters: variants as u32, ..self.scenario.clone() },
            cluster_of,
            members,
            cluster_keys,
            public_keys: self.public_keys.clone(),
            breaks,
            misplaced: self.misplaced.clone(),
            fix_ms: self.fix_ms.clone(),
            variant_of: None,
        })
    }

    /// The problems that break `machine`: its cluster's, plus its own if misplaced.
    pub fn breaks_of(&self, machine: u32) -> u64 {
        let cluster = self.breaks[self.cluster_of[machine as usize] as usize];
        cluster | self.misplaced.get(&machine).copied().unwrap_or(0)
    }

    /// The environment fingerprint every machine of `cluster` shares.
    pub fn fingerprint(&self, cluster: u32) -> Fingerprint {
        cluster_fingerprint(self.scenario.seed, cluster)
    }

    pub fn keypair(&self, machine: u32) -> Keypair {
        secret_key(self.scenario.seed, machine)
    }

    /// Machines in clusters that some problem breaks.
    pub fn machines_in_broken_clusters(&self) -> u64 {
        self.members.iter().zip(&self.breaks).filter(|(_, b)| **b != 0).map(|(m, _)| m.len() as u64).sum()
    }
}

fn derive(seed: u64, what: &[u8], index: u32) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"mirage-sim/v1/");
    h.update(what);
    h.update(&seed.to_le_bytes());
    h.update(&index.to_le_bytes());
    Digest(*h.finalize().as_bytes())
}

/// Clusters are told apart by a stand-in profile id; real fingerprints would differ in
/// their items, but only the cluster key they hash to matters here.
fn cluster_fingerprint(seed: u64, cluster: u32) -> Fingerprint {
    Fingerprint::new(APP.into(), derive(seed, b"cluster", cluster), Vec::new())
}

fn secret_key(seed: u64, machine: u32) -> Keypair {
    Keypair::from_secret_bytes(&derive(seed, b"machine", machine).0)
}

/// Splits `machines` over `clusters` by a Zipf law, every cluster getting at least one
/// machine, largest remainders rounding up, so the sizes sum to exactly `machines`.
pub fn zipf_sizes(machines: u32, clusters: u32, exponent: f64) -> Vec<u32> {
    let weights: Vec<f64> = (1..=clusters).map(|r| 1.0 / (r as f64).powf(exponent)).collect();
    let total: f64 = weights.iter().sum();
    // Everyone gets one machine; the rest is shared by weight.
    let spare = (machines - clusters) as f64;
    let exact: Vec<f64> = weights.iter().map(|w| spare * w / total).collect();
    let mut sizes: Vec<u32> = exact.iter().map(|x| 1 + x.floor() as u32).collect();
    let mut left = machines - sizes.iter().sum::<u32>();
    let mut by_remainder: Vec<usize> = (0..exact.len()).collect();
    by_remainder.sort_by(|a, b| {
        let (ra, rb) = (exact[*a] - exact[*a].floor(), exact[*b] - exact[*b].floor());
        rb.total_cmp(&ra).then(a.cmp(b))
    });
    for i in by_remainder {
        if left == 0 {
            break;
        }
        sizes[i] += 1;
        left -= 1;
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_sizes_sum_up_and_are_skewed() {
        let s = zipf_sizes(100_000, 2_000, 1.0);
        assert_eq!(s.len(), 2_000);
        assert_eq!(s.iter().sum::<u32>(), 100_000);
        assert!(s.iter().all(|n| *n >= 1));
        assert!(s[0] > 100 * s[1999], "{} vs {}", s[0], s[1999]);
        let flat = zipf_sizes(1000, 10, 0.0);
        assert!(flat.iter().all(|n| *n == 100));
    }

    #[test]
    fn worlds_are_reproducible() {
        let sc = Scenario { machines: 300, clusters: 30, ..Scenario::default() };
        let a = World::generate(sc.clone()).unwrap();
        let b = World::generate(sc.clone()).unwrap();
        assert_eq!(a.breaks, b.breaks);
        assert_eq!(a.public_keys, b.public_keys);
        let c = World::generate(Scenario { seed: 2, ..sc }).unwrap();
        assert_ne!(a.public_keys, c.public_keys);
        assert_eq!(a.keypair(7).public(), a.public_keys[7]);
    }

    #[test]
    fn a_release_touching_one_facet_is_staged_over_its_variants_with_the_same_breaks() {
        let sc = Scenario { machines: 2_000, clusters: 200, touched_variants: Some(8), ..Scenario::default() };
        let world = World::generate(sc).unwrap();
        let per = world.per_upgrade().unwrap();
        assert_eq!(per.members.len(), 8);
        assert_eq!(per.members.iter().map(Vec::len).sum::<usize>(), 2_000);
        // Every machine meets the same problems however the fleet is grouped.
        for m in 0..2_000 {
            assert_eq!(world.breaks_of(m), per.breaks_of(m));
        }
        // Problems follow the touched facet: clusters of one variant break together.
        let v = world.variant_of.as_ref().unwrap();
        for (c, variant) in v.iter().enumerate() {
            assert_eq!(world.breaks[c], world.breaks[*variant as usize]);
        }
        assert!(World::generate(Scenario { clusters: 5, touched_variants: Some(0), ..Scenario::default() }).is_err());
    }

    #[test]
    fn bad_scenarios_are_refused() {
        let sc = Scenario { machines: 10, clusters: 20, ..Scenario::default() };
        assert!(matches!(World::generate(sc).err(), Some(ScenarioError::MoreClustersThanMachines { .. })));
        let sc = Scenario { problems: 65, ..Scenario::default() };
        assert_eq!(sc.validate(), Err(ScenarioError::TooManyProblems));
    }
}
