//! One node's own progress through a release: the only per-node state of staging.
//!
//! It is deliberately tiny (a manifest id and a phase) so the simulator can hold one
//! per machine for hundreds of thousands of machines, and it never decides anything
//! about the cluster: it reads a [`View`] the shared [`Campaign`](super::Campaign)
//! computed. The one rule it enforces itself is the safety rule: it steps to `Apply`
//! only when its view of the same manifest says the gate holds.

use super::campaign::View;
use super::gate::Verdict;
use crate::report::Outcome;
use crate::Digest;
use serde::{Deserialize, Serialize};

/// Where a node stands on the release it is working on. Shown by `mirage status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// The release is known; the cluster's stage has not opened.
    WaitingForStage,
    Fetching,
    /// Content is here; waiting for the cluster's representatives.
    WaitingForGate,
    /// This node is a representative and is running the vendor's tests.
    Testing,
    /// This node's tests passed (report published); waiting for the gate.
    Passed,
    /// This node's tests failed (reports published); its cluster is halted.
    Failed,
    Applying,
    Applied,
    RollingBack,
    RolledBack,
    /// A representative of this cluster failed the release: it will not be applied here.
    Halted,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::WaitingForStage => "waiting for stage",
            Phase::Fetching => "fetching",
            Phase::WaitingForGate => "waiting for gate",
            Phase::Testing => "testing",
            Phase::Passed => "passed",
            Phase::Failed => "failed",
            Phase::Applying => "applying",
            Phase::Applied => "applied",
            Phase::RollingBack => "rolling back",
            Phase::RolledBack => "rolled back",
            Phase::Halted => "halted",
        }
    }

    /// An external action is under way in this phase; it must finish (or be re-issued
    /// after a restart) before the node moves on.
    pub fn in_flight(self) -> bool {
        matches!(self, Phase::Fetching | Phase::Testing | Phase::Applying | Phase::RollingBack)
    }
}

/// Something the node must go and do for a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    Fetch(Digest),
    RunTests(Digest),
    /// Publish this node's test report (and, on failure, a problem report).
    Publish(Digest, Outcome),
    Apply(Digest),
    RollBack(Digest),
}

impl Step {
    /// The manifest the step is about.
    pub fn manifest(&self) -> &Digest {
        match self {
            Step::Fetch(id) | Step::RunTests(id) | Step::Publish(id, _) | Step::Apply(id) | Step::RollBack(id) => id,
        }
    }
}

/// The release a node works on and how far it got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Work {
    pub manifest: Digest,
    pub phase: Phase,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    work: Option<Work>,
}

impl Member {
    pub fn new() -> Self {
        Member::default()
    }

    pub fn restore(work: Option<Work>) -> Self {
        Member { work }
    }

    pub fn work(&self) -> Option<Work> {
        self.work
    }

    /// Decides the next step from the cluster's view. Call after anything that may
    /// have changed the view.
    pub fn observe(&mut self, view: Option<&View>) -> Option<Step> {
        let view = view?;
        let work = match self.work {
            Some(w) if w.manifest == view.manifest => w,
            // A newer release supersedes the current one, except mid-apply or
            // mid-rollback: those finish first, then the node moves on.
            Some(w) if w.phase == Phase::Applying || w.phase == Phase::RollingBack => return None,
            _ => Work { manifest: view.manifest, phase: Phase::WaitingForStage },
        };
        let id = work.manifest;
        let (phase, step) = match (work.phase, view.verdict) {
            (Phase::WaitingForStage, _) if view.open => (Phase::Fetching, Some(Step::Fetch(id))),
            (Phase::WaitingForGate | Phase::Passed, Verdict::Holds { .. }) => (Phase::Applying, Some(Step::Apply(id))),
            (Phase::WaitingForGate | Phase::Passed, Verdict::Halted { .. }) => (Phase::Halted, None),
            (Phase::WaitingForGate, Verdict::Pending) if view.seated => (Phase::Testing, Some(Step::RunTests(id))),
            (phase, _) => (phase, None),
        };
        self.work = Some(Work { manifest: id, phase });
        step
    }

    /// The release's content is fetched and verified.
    pub fn content_ready(&mut self, manifest: Digest, view: Option<&View>) -> Option<Step> {
        self.advance(manifest, Phase::Fetching, Phase::WaitingForGate);
        self.observe(view)
    }

    /// This node's tests finished; the outcome must be published. The gate may hold
    /// without this node's report, so the caller observes again once it is out (the
    /// node does when its own report comes back to it).
    pub fn test_finished(&mut self, manifest: Digest, outcome: Outcome) -> Option<Step> {
        let next = match outcome {
            Outcome::Pass => Phase::Passed,
            Outcome::Fail => Phase::Failed,
        };
        self.advance(manifest, Phase::Testing, next).then_some(Step::Publish(manifest, outcome))
    }

    /// Applying finished: a healthy release is in place, an unhealthy one must go.
    pub fn apply_finished(&mut self, manifest: Digest, healthy: bool, view: Option<&View>) -> Option<Step> {
        if healthy {
            self.advance(manifest, Phase::Applying, Phase::Applied);
            self.observe(view)
        } else {
            self.advance(manifest, Phase::Applying, Phase::RollingBack).then_some(Step::RollBack(manifest))
        }
    }

    pub fn rollback_finished(&mut self, manifest: Digest, view: Option<&View>) -> Option<Step> {
        self.advance(manifest, Phase::RollingBack, Phase::RolledBack);
        self.observe(view)
    }

    /// Moves `from` → `to` if the node is in `from` for `manifest`; completions for a
    /// superseded release or an unexpected phase are stale and change nothing.
    fn advance(&mut self, manifest: Digest, from: Phase, to: Phase) -> bool {
        match &mut self.work {
            Some(w) if w.manifest == manifest && w.phase == from => {
                w.phase = to;
                true
            }
            _ => false,
        }
    }
}
