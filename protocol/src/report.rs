//! What representatives say about an upgrade: test reports for their cluster, and
//! problem reports for the vendor.

use crate::envelope::{MessageKind, SignedPayload};
use crate::fingerprint::{ClusterKey, Fingerprint};
use crate::manifest::validate_app_name;
use crate::Digest;
use serde::{Deserialize, Serialize};

pub const MAX_SUMMARY_BYTES: usize = 1024;
pub const MAX_EXCERPT_BYTES: usize = 16 * 1024;

/// What a representative says about an upgrade in its environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Pass,
    Fail,
    /// The representative could not test here, for a fault of its own (its sandbox
    /// would not start, its disk is full): no verdict on the release. Its seat passes
    /// to the next member in line at once instead of at the report deadline.
    Abstain,
}

impl Outcome {
    /// The word `mirage status` and logs use.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Abstain => "abstain",
        }
    }

    /// A pass or a fail: a statement about the release, which a gate counts.
    pub fn is_verdict(self) -> bool {
        matches!(self, Outcome::Pass | Outcome::Fail)
    }
}

/// A representative's signed verdict on one upgrade for its cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestReport {
    pub manifest_id: Digest,
    pub app: String,
    pub version: semver::Version,
    pub cluster_key: ClusterKey,
    pub outcome: Outcome,
    pub summary: String,
    /// blake3 of the full test logs, which stay on the representative.
    pub logs_digest: Digest,
    pub tests_run: u32,
    pub duration_ms: u64,
}

impl SignedPayload for TestReport {
    const KIND: MessageKind = MessageKind::TestReport;

    fn validate(&self) -> Result<(), String> {
        validate_app_name(&self.app)?;
        if self.summary.len() > MAX_SUMMARY_BYTES {
            return Err(format!("summary over {MAX_SUMMARY_BYTES} bytes"));
        }
        Ok(())
    }
}

/// Sent to the vendor when a representative's tests fail: enough to reproduce the
/// environment (the fingerprint) and see what went wrong (an output excerpt).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemReport {
    pub manifest_id: Digest,
    pub app: String,
    pub version: semver::Version,
    pub cluster_key: ClusterKey,
    pub fingerprint: Fingerprint,
    pub failed_tests: Vec<String>,
    pub logs_digest: Digest,
    pub output_excerpt: String,
}

impl SignedPayload for ProblemReport {
    const KIND: MessageKind = MessageKind::ProblemReport;

    fn validate(&self) -> Result<(), String> {
        validate_app_name(&self.app)?;
        if self.output_excerpt.len() > MAX_EXCERPT_BYTES {
            return Err(format!("output excerpt over {MAX_EXCERPT_BYTES} bytes"));
        }
        if self.fingerprint.cluster_key() != self.cluster_key {
            return Err("fingerprint does not hash to the reported cluster key".into());
        }
        self.fingerprint.validate()
    }
}

/// The vendor asks clusters halted on a release to test it again (the failure was in
/// the test, say, not in the release). Only a key trusted for the app counts; reports
/// issued before the request no longer count in the clusters it names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetestRequest {
    pub manifest_id: Digest,
    pub app: String,
    pub version: semver::Version,
    /// The clusters to test again; empty: every cluster.
    pub clusters: Vec<ClusterKey>,
}

/// Most clusters one retest request may name.
pub const MAX_RETEST_CLUSTERS: usize = 256;

impl SignedPayload for RetestRequest {
    const KIND: MessageKind = MessageKind::RetestRequest;

    fn validate(&self) -> Result<(), String> {
        validate_app_name(&self.app)?;
        if self.clusters.len() > MAX_RETEST_CLUSTERS {
            return Err(format!("more than {MAX_RETEST_CLUSTERS} clusters"));
        }
        Ok(())
    }
}

impl RetestRequest {
    pub fn covers(&self, cluster: &ClusterKey) -> bool {
        self.clusters.is_empty() || self.clusters.contains(cluster)
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, keeping the tail, where
/// test failures usually are.
pub fn excerpt_tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_keeps_tail_on_char_boundary() {
        assert_eq!(excerpt_tail("hello", 10), "hello");
        assert_eq!(excerpt_tail("hello world", 5), "world");
        let s = "ééé";
        let e = excerpt_tail(s, 3);
        assert!(e.len() <= 3 && s.ends_with(&e));
    }
}
