//! How long things take in the simulated world, drawn from a seeded RNG.
//!
//! The paper's own figures (download, test and fix times) were not recovered, so these
//! defaults are our assumptions, stated in `SIMULATOR.md`, and every one is a flag.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

const SEC: u64 = 1000;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;

#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// Gossip delivery: a fixed hop cost plus an exponential tail.
    pub gossip_base_ms: u64,
    pub gossip_mean_ms: u64,
    /// Chance a gossip message is lost on first try and recovered by a later
    /// gossip round (gossipsub IHAVE/IWANT), `gossip_retry_ms` later.
    pub gossip_loss: f64,
    pub gossip_retry_ms: u64,
    /// Fetching the artifact from the swarm.
    pub download_base_ms: u64,
    pub download_mean_ms: u64,
    /// A representative's test run, uniform in this range.
    pub test_min_ms: u64,
    pub test_max_ms: u64,
    /// Chance a test run hangs and reports only after `slow_test_ms` (by then the
    /// representative has usually been replaced).
    pub slow_test_fraction: f64,
    pub slow_test_ms: u64,
    /// Applying (or rolling back) including the health check.
    pub apply_base_ms: u64,
    pub apply_mean_ms: u64,
    /// How long after a node's view changes it looks at it again (its event loop).
    pub react_max_ms: u64,
    /// The vendor's time to fix a problem once it is first reported.
    pub fix_base_ms: u64,
    pub fix_mean_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            gossip_base_ms: 200,
            gossip_mean_ms: 800,
            gossip_loss: 0.01,
            gossip_retry_ms: 30 * SEC,
            download_base_ms: MIN,
            download_mean_ms: 2 * MIN,
            test_min_ms: 5 * MIN,
            test_max_ms: 15 * MIN,
            slow_test_fraction: 0.02,
            slow_test_ms: 2 * HOUR,
            apply_base_ms: 20 * SEC,
            apply_mean_ms: 20 * SEC,
            react_max_ms: SEC,
            fix_base_ms: 4 * HOUR,
            fix_mean_ms: 2 * HOUR,
        }
    }
}

fn exponential(rng: &mut ChaCha8Rng, mean_ms: u64) -> u64 {
    if mean_ms == 0 {
        return 0;
    }
    let u: f64 = rng.gen();
    (-(mean_ms as f64) * (1.0 - u).ln()) as u64
}

impl Timing {
    pub fn gossip(&self, rng: &mut ChaCha8Rng) -> u64 {
        let lost = rng.gen_bool(self.gossip_loss.clamp(0.0, 1.0));
        self.gossip_base_ms + exponential(rng, self.gossip_mean_ms) + if lost { self.gossip_retry_ms } else { 0 }
    }

    pub fn download(&self, rng: &mut ChaCha8Rng) -> u64 {
        self.download_base_ms + exponential(rng, self.download_mean_ms)
    }

    pub fn test(&self, rng: &mut ChaCha8Rng) -> u64 {
        if rng.gen_bool(self.slow_test_fraction.clamp(0.0, 1.0)) {
            return self.slow_test_ms;
        }
        rng.gen_range(self.test_min_ms..=self.test_max_ms.max(self.test_min_ms))
    }

    pub fn apply(&self, rng: &mut ChaCha8Rng) -> u64 {
        self.apply_base_ms + exponential(rng, self.apply_mean_ms)
    }

    pub fn react(&self, rng: &mut ChaCha8Rng) -> u64 {
        rng.gen_range(0..=self.react_max_ms)
    }

    pub fn fix(&self, rng: &mut ChaCha8Rng) -> u64 {
        self.fix_base_ms + exponential(rng, self.fix_mean_ms)
    }
}
