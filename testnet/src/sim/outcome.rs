//! What a run measured, and the side-by-side table of policies.

use mirage_protocol::manifest::PolicyKind;
use std::fmt;

/// The paper's cost model for one policy: upgrade overhead and deployment latency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyOutcome {
    pub policy: PolicyKind,
    pub machines: u64,
    /// Machines that installed a faulty release at least once.
    pub installed_faulty: u64,
    /// Machines that tested a faulty release (representatives) at least once.
    pub tested_faulty: u64,
    /// Machines that did either: everyone who met a faulty release.
    pub hit_by_faulty: u64,
    pub tests_run: u64,
    /// Releases the vendor signed: the first plus one per batch of fixes.
    pub releases: u32,
    /// Time from the first release until the last machine ran a working release.
    pub latency_max_ms: u64,
    /// Mean over machines of the time until each ran a working release.
    pub latency_mean_ms: u64,
    /// Machines that never ran a working release (should be zero).
    pub never_working: u64,
    /// Reports the core ignored (late, duplicate or for a superseded release).
    pub reports_rejected: u64,
    pub events: u64,
}

/// Outcomes of several policies over the same world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    pub outcomes: Vec<PolicyOutcome>,
}

impl Comparison {
    fn baseline(&self) -> Option<&PolicyOutcome> {
        self.outcomes.iter().find(|o| o.policy == PolicyKind::NoStaging)
    }

    /// Worst-case latency of `policy` relative to no-staging.
    pub fn latency_ratio(&self, policy: PolicyKind) -> Option<f64> {
        let base = self.baseline()?;
        let o = self.outcomes.iter().find(|o| o.policy == policy)?;
        (base.latency_max_ms > 0).then(|| o.latency_max_ms as f64 / base.latency_max_ms as f64)
    }
}

fn hours(ms: u64) -> String {
    format!("{:.2} h", ms as f64 / 3_600_000.0)
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<14} {:>10} {:>10} {:>10} {:>9} {:>9} {:>11} {:>11} {:>9}",
            "policy", "installed", "tested", "hit", "tests", "releases", "latency max", "mean", "vs none"
        )?;
        writeln!(
            f,
            "{:<14} {:>10} {:>10} {:>10} {:>9} {:>9} {:>11} {:>11} {:>9}",
            "", "faulty", "faulty", "", "", "", "", "", "(max)"
        )?;
        for o in &self.outcomes {
            let ratio = self.latency_ratio(o.policy).map_or("-".to_string(), |r| format!("{r:.2}x"));
            writeln!(
                f,
                "{:<14} {:>10} {:>10} {:>10} {:>9} {:>9} {:>11} {:>11} {:>9}",
                o.policy.name(),
                o.installed_faulty,
                o.tested_faulty,
                o.hit_by_faulty,
                o.tests_run,
                o.releases,
                hours(o.latency_max_ms),
                hours(o.latency_mean_ms),
                ratio
            )?;
            if o.never_working > 0 {
                writeln!(f, "  warning: {} machines never ran a working release", o.never_working)?;
            }
        }
        Ok(())
    }
}
