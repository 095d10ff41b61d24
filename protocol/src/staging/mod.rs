//! Staged rollout: who tests an upgrade, when each cluster may apply it, and in which
//! order clusters go. Pure logic, driven by the node and by the simulator alike.
//!
//! - [`election`]: representatives by rendezvous hashing; seats pass down the ranking
//!   when a holder misses its report deadline.
//! - [`plan`]: clusters into stages (`no-staging`, `front-loading`, `balanced`).
//! - [`gate`]: one cluster's gate for one upgrade: which reports count, holds/halted.
//! - [`schedule`]: when each stage opens.
//! - [`campaign`]: what every node of an app knows in common (release, membership,
//!   plan, schedule, gates). The simulator keeps one for the whole fleet.
//! - [`member`]: one node's own progress; tiny, so the simulator keeps one per machine.
//! - [`problems`]: which problem reports a node keeps for the vendor, bounded.
//! - [`replay`]: what a restarted node feeds its rollout from its store, in order.
//! - [`rollout`]: the per-(node, app) core the node drives: events in, actions out.
//! - [`verdicts`]: whom a node asks for its cluster's verdict, and when again.

pub mod campaign;
pub mod election;
pub mod gate;
pub mod member;
pub mod plan;
pub mod problems;
pub mod replay;
pub mod rollout;
pub mod schedule;
pub mod verdicts;

#[cfg(test)]
mod tests;

pub use campaign::{Campaign, Release, ReleaseIgnored, RetestIgnored, View};
pub use election::{rank_members, Quorum, Seat};
pub use gate::{ClusterGate, Evaluation, ReportRejected, Verdict};
pub use member::{Fault, Member, Phase, Step, Work};
pub use plan::StagePlan;
pub use problems::{ProblemBook, ProblemDrop};
pub use rollout::{
    is_fresh, Action, ApplyResult, ApplyStep, Event, Ignored, LocalFault, NodeConfig, Pin, Rollout, Snapshot, Status,
    TestRun, LOCAL_RETRY_BASE, LOCAL_RETRY_MAX, MAX_INTERRUPTED_APPLIES, MAX_TEST_ATTEMPTS, MESSAGE_MAX_AGE,
    MESSAGE_MAX_SKEW,
};
pub use schedule::StageSchedule;
