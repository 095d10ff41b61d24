//! The deterministic discrete-event simulator.
//!
//! A second shell over the protocol's staging core (`mirage_protocol::staging`): the
//! same `Campaign`, `ClusterGate`s and `Member`s the node runs decide who tests, who
//! applies and when stages open; the simulator only supplies virtual time, delays drawn
//! from a seeded RNG, test outcomes from the scenario, and a vendor that fixes what is
//! reported. Same scenario and seed, same result, bit for bit. See `SIMULATOR.md`.
//!
//! - [`scenario`]: fleet size, Zipf cluster sizes, problems, the vendor's policy.
//! - [`timing`]: how long gossip, downloads, tests, applies and fixes take.
//! - [`queue`]: the event queue in virtual time.
//! - [`vendor`]: releases, problem intake and fixes.
//! - [`engine`]: the loop that turns the core's steps into future events.
//! - [`overlay`]: sampled observers running the real roster and staging core: bytes
//!   per node, state, and whether observers agree on representatives and stages.
//! - [`outcome`]: overhead and latency per policy, and the comparison table.
//! - [`trace`]: one machine's inputs and steps, to replay into the node's core.

pub mod engine;
pub mod outcome;
pub mod overlay;
pub mod queue;
pub mod scenario;
pub mod timing;
pub mod trace;
pub mod vendor;

#[cfg(test)]
mod tests;

pub use engine::Simulation;
pub use outcome::{Comparison, PolicyOutcome};
pub use scenario::{Scenario, ScenarioError, World};
pub use timing::Timing;

use mirage_protocol::manifest::PolicyKind;

/// The policies in the order the comparison shows them.
pub const ALL_POLICIES: [PolicyKind; 3] = [PolicyKind::NoStaging, PolicyKind::FrontLoading, PolicyKind::Balanced];

/// Runs one policy over the world.
pub fn run(world: &World, policy: PolicyKind) -> PolicyOutcome {
    Simulation::new(world, policy).run()
}

/// Runs each policy over the same world.
pub fn compare(world: &World, policies: &[PolicyKind]) -> Comparison {
    Comparison { outcomes: policies.iter().map(|p| run(world, *p)).collect() }
}
