//! What one simulated machine's node would have been fed, and what it did.
//!
//! Replaying a trace into the node's own core (`staging::Rollout`) must reproduce the
//! machine's steps: that is the check that the simulator's split of the core (one
//! shared `Campaign`, one `Member` per machine) decides exactly what the node decides.

use super::queue::SimTime;
use mirage_protocol::manifest::UpgradeManifest;
use mirage_protocol::report::{Outcome, TestReport};
use mirage_protocol::staging::Step;
use mirage_protocol::{Digest, Verified};

/// An input the watched machine's node would have handled.
#[derive(Clone, Debug)]
pub enum TraceInput {
    Manifest(Verified<UpgradeManifest>),
    Report(Verified<TestReport>),
    Timer,
    ContentReady(Digest),
    TestFinished(Digest, Outcome),
    ApplyFinished(Digest, bool),
}

#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// Inputs in the order the simulation handled them, with their times.
    pub inputs: Vec<(SimTime, TraceInput)>,
    /// The steps the machine's member took, in order.
    pub steps: Vec<Step>,
}
