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
    /// Only in snapshots of older nodes, which rolled back in a step of its own after a
    /// failed apply; restored as [`Phase::RolledBack`]. The installer now undoes a
    /// failed apply itself, so the node never enters this phase.
    RollingBack,
    /// The apply failed (unpack or health check) and the version that ran before is
    /// running again; the vendor got a problem report.
    RolledBack,
    /// A representative of this cluster failed the release: it will not be applied here.
    Halted,
    /// Testing or applying failed for a fault of this node (its sandbox, its disk), not
    /// of the release: nothing was signed, and the step is retried.
    LocalFault,
    /// This node could not test and handed its representative seat on; it applies once
    /// its cluster's gate holds, like any member.
    Abstained,
}

/// Whose fault a failed test or apply was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// The release's: its artifact does not unpack, its health check fails. The vendor
    /// hears of it in a problem report.
    Release,
    /// This node's: its sandbox cannot start, its disk is full, a file it needs is
    /// missing. Never reported as a verdict on the release; retried.
    Local,
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
            Phase::LocalFault => "local fault",
            Phase::Abstained => "abstained",
        }
    }

    /// An external action is under way in this phase; it must finish (or be re-issued
    /// after a restart) before the node moves on.
    pub fn in_flight(self) -> bool {
        matches!(self, Phase::Fetching | Phase::Testing | Phase::Applying)
    }
}

/// Something the node must go and do for a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    Fetch(Digest),
    /// Run the vendor's tests. An `Apply` of the same manifest that comes while they run
    /// supersedes them: the shell need not wait for them, and their result is stale.
    RunTests(Digest),
    /// Publish this node's test report (and, on failure, a problem report).
    Publish(Digest, Outcome),
    Apply(Digest),
    /// The apply failed for a fault of the release; the installer already left the
    /// version that ran before in place. Tell the vendor.
    ReportProblem(Digest),
}

impl Step {
    /// The manifest the step is about.
    pub fn manifest(&self) -> &Digest {
        match self {
            Step::Fetch(id) | Step::RunTests(id) | Step::Publish(id, _) | Step::Apply(id) | Step::ReportProblem(id) => {
                id
            }
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
        let work = work.map(|w| match w.phase {
            Phase::RollingBack => Work { phase: Phase::RolledBack, ..w },
            _ => w,
        });
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
            // A newer release supersedes the current one, except mid-apply: that
            // finishes first, then the node moves on.
            Some(w) if w.phase == Phase::Applying => return None,
            _ => Work { manifest: view.manifest, phase: Phase::WaitingForStage },
        };
        let id = work.manifest;
        let (phase, step) = match (work.phase, view.verdict) {
            (Phase::WaitingForStage, _) if view.open => (Phase::Fetching, Some(Step::Fetch(id))),
            (Phase::WaitingForGate | Phase::Passed | Phase::Abstained, Verdict::Holds { .. }) => {
                (Phase::Applying, Some(Step::Apply(id)))
            }
            (Phase::WaitingForGate | Phase::Passed | Phase::Abstained, Verdict::Halted { .. }) => (Phase::Halted, None),
            (Phase::WaitingForGate, Verdict::Pending) if view.seated => (Phase::Testing, Some(Step::RunTests(id))),
            // A representative still testing when its cluster's gate holds applies
            // without waiting for its own run: the gate needs no more reports, and a
            // hung test would hold this node back for as long as it hangs (in the
            // simulator, the worst-case latency of every staged policy was a hung
            // representative's). The run's result, when it comes, is stale and not
            // published. When the cluster halts instead, the run goes on: a second
            // failing report tells the vendor the failure is not one machine's.
            (Phase::Testing, Verdict::Holds { .. }) => (Phase::Applying, Some(Step::Apply(id))),
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

    /// This node's tests finished; the outcome must be published (an abstention too:
    /// it hands the seat on). The gate may hold without this node's report, so the
    /// caller observes again once it is out (the node does when its own report comes
    /// back to it).
    pub fn test_finished(&mut self, manifest: Digest, outcome: Outcome) -> Option<Step> {
        let next = match outcome {
            Outcome::Pass => Phase::Passed,
            Outcome::Fail => Phase::Failed,
            Outcome::Abstain => Phase::Abstained,
        };
        self.advance(manifest, Phase::Testing, next).then_some(Step::Publish(manifest, outcome))
    }

    /// The tests could not run, for a fault of this node: nothing to publish; the
    /// caller retries later with [`Member::retry`].
    pub fn test_fault(&mut self, manifest: Digest) -> bool {
        self.advance(manifest, Phase::Testing, Phase::LocalFault)
    }

    /// Applying finished. Whatever went wrong, the installer left the version that ran
    /// before in place: a release fault is reported, a local one waits for a retry.
    pub fn apply_finished(&mut self, manifest: Digest, result: Result<(), Fault>, view: Option<&View>) -> Option<Step> {
        match result {
            Ok(()) => {
                self.advance(manifest, Phase::Applying, Phase::Applied);
                self.observe(view)
            }
            Err(Fault::Release) => {
                self.advance(manifest, Phase::Applying, Phase::RolledBack).then_some(Step::ReportProblem(manifest))
            }
            Err(Fault::Local) => {
                self.advance(manifest, Phase::Applying, Phase::LocalFault);
                None
            }
        }
    }

    /// Time to try again after a local fault: back to waiting for the gate, from
    /// where the view decides (test again if still seated, apply if the gate holds).
    pub fn retry(&mut self, manifest: Digest, view: Option<&View>) -> Option<Step> {
        self.advance(manifest, Phase::LocalFault, Phase::WaitingForGate);
        self.observe(view)
    }

    /// The vendor asked this node's cluster to test `manifest` again: whatever the node
    /// concluded from the reports that no longer count (halted, failed, passed,
    /// abstained, a local fault) starts over from waiting for the gate.
    pub fn retest(&mut self, manifest: Digest, view: Option<&View>) -> Option<Step> {
        if let Some(w) = self.work.as_mut().filter(|w| w.manifest == manifest) {
            if matches!(w.phase, Phase::Halted | Phase::Failed | Phase::Passed | Phase::Abstained | Phase::LocalFault) {
                w.phase = Phase::WaitingForGate;
            }
        }
        self.observe(view)
    }

    /// The operator lifted a pin after rolling this node back from the release it
    /// had applied: apply it again once the view says so.
    pub fn unpin(&mut self, view: Option<&View>) -> Option<Step> {
        if let Some(w) = self.work.as_mut().filter(|w| w.phase == Phase::Applied) {
            w.phase = Phase::WaitingForGate;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::UnixMillis;
    use crate::PublicKey;

    fn view(verdict: Verdict) -> View {
        View { manifest: Digest([1; 32]), open: true, seated: true, verdict }
    }

    #[test]
    fn a_representative_whose_test_hangs_applies_once_its_cluster_holds_without_it() {
        let id = Digest([1; 32]);
        let mut m = Member::new();
        assert_eq!(m.observe(Some(&view(Verdict::Pending))), Some(Step::Fetch(id)));
        assert_eq!(m.content_ready(id, Some(&view(Verdict::Pending))), Some(Step::RunTests(id)));
        // The other representatives passed; this node's run is still going.
        let holds = view(Verdict::Holds { at: UnixMillis(5) });
        assert_eq!(m.observe(Some(&holds)), Some(Step::Apply(id)));
        assert_eq!(m.work().unwrap().phase, Phase::Applying);
        // Its run ends at last: nothing to publish, the apply goes on.
        assert_eq!(m.test_finished(id, Outcome::Fail), None);
        assert_eq!(m.apply_finished(id, Ok(()), Some(&holds)), None);
        assert_eq!(m.work().unwrap().phase, Phase::Applied);
    }

    #[test]
    fn a_representative_still_testing_when_its_cluster_halts_finishes_and_reports() {
        let id = Digest([1; 32]);
        let mut m = Member::restore(Some(Work { manifest: id, phase: Phase::Testing }));
        let halted = view(Verdict::Halted { at: UnixMillis(5), by: PublicKey([2; 32]) });
        assert_eq!(m.observe(Some(&halted)), None);
        assert_eq!(m.work().unwrap().phase, Phase::Testing);
        assert_eq!(m.test_finished(id, Outcome::Fail), Some(Step::Publish(id, Outcome::Fail)));
    }
}
