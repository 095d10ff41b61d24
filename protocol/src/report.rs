//! What representatives say about an upgrade: test reports for their cluster, and
//! problem reports for the vendor.

use crate::envelope::{MessageKind, SignedPayload};
use crate::fingerprint::{ClusterKey, Fingerprint};
use crate::identity::PublicKey;
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

/// Most bytes a problem report's sealed part may take: its fingerprint and excerpt.
pub const MAX_SEALED_BYTES: usize = 512 * 1024;

/// Sent to the vendor when a representative's tests fail (or an apply fails its health
/// check). What identifies the failure is public: the release, the cluster, the
/// failing tests. What could tell a stranger about this machine (its fingerprint) or
/// what its tests printed is sealed to the key that signed the release, so it is never
/// readable on gossip, where every peer of the app relays it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemReport {
    pub manifest_id: Digest,
    pub app: String,
    pub version: semver::Version,
    pub cluster_key: ClusterKey,
    pub failed_tests: Vec<String>,
    pub logs_digest: Digest,
    /// The release's signer, whom [`ProblemReport::sealed`] is for.
    pub vendor: PublicKey,
    /// [`ProblemDetails`], sealed (libsodium's sealed box) to `vendor`'s X25519 key.
    pub sealed: Vec<u8>,
}

/// The part of a problem report only the vendor reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemDetails {
    /// Enough to reproduce the environment.
    pub fingerprint: Fingerprint,
    /// The tail of what the failing tests (or the apply) printed.
    pub output_excerpt: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the vendor's key has no X25519 form")]
    BadKey,
    #[error("the details do not encode: {0}")]
    Encode(String),
    #[error("sealed part over {MAX_SEALED_BYTES} bytes")]
    TooLarge,
    #[error("cannot open: not sealed to this key, or altered")]
    Open,
    #[error("opened details break the rules: {0}")]
    Invalid(String),
}

impl ProblemDetails {
    /// Seals the details to `vendor`: only its secret key opens them.
    pub fn seal(
        &self,
        vendor: &PublicKey,
        rng: &mut impl crypto_box::aead::rand_core::CryptoRngCore,
    ) -> Result<Vec<u8>, SealError> {
        let key = crypto_box::PublicKey::from_bytes(vendor.x25519().ok_or(SealError::BadKey)?);
        let plain = crate::wire::encode(self).map_err(|e| SealError::Encode(e.to_string()))?;
        let sealed = key.seal(rng, &plain).map_err(|_| SealError::Encode("sealing failed".into()))?;
        if sealed.len() > MAX_SEALED_BYTES {
            return Err(SealError::TooLarge);
        }
        Ok(sealed)
    }
}

/// A problem report as the core writes it, before the shell seals its details (the
/// core holds no randomness): what persists until it is published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemDraft {
    pub manifest_id: Digest,
    pub app: String,
    pub version: semver::Version,
    pub cluster_key: ClusterKey,
    pub failed_tests: Vec<String>,
    pub logs_digest: Digest,
    pub vendor: PublicKey,
    pub details: ProblemDetails,
}

impl ProblemDraft {
    pub fn seal(&self, rng: &mut impl crypto_box::aead::rand_core::CryptoRngCore) -> Result<ProblemReport, SealError> {
        Ok(ProblemReport {
            manifest_id: self.manifest_id,
            app: self.app.clone(),
            version: self.version.clone(),
            cluster_key: self.cluster_key,
            failed_tests: self.failed_tests.clone(),
            logs_digest: self.logs_digest,
            vendor: self.vendor,
            sealed: self.details.seal(&self.vendor, rng)?,
        })
    }
}

impl ProblemReport {
    /// Opens the sealed details with the vendor's key and checks them.
    pub fn open(&self, vendor: &crate::identity::Keypair) -> Result<ProblemDetails, SealError> {
        let secret = crypto_box::SecretKey::from_bytes(vendor.x25519_secret());
        let plain = secret.unseal(&self.sealed).map_err(|_| SealError::Open)?;
        let details: ProblemDetails = crate::wire::decode(&plain).map_err(|e| SealError::Invalid(e.to_string()))?;
        if details.output_excerpt.len() > MAX_EXCERPT_BYTES {
            return Err(SealError::Invalid(format!("output excerpt over {MAX_EXCERPT_BYTES} bytes")));
        }
        // The full fingerprint: for a release staged over a scope, the reported cluster
        // is its projection's, so the two keys need not agree.
        details.fingerprint.validate().map_err(SealError::Invalid)?;
        Ok(details)
    }
}

impl SignedPayload for ProblemReport {
    const KIND: MessageKind = MessageKind::ProblemReport;

    fn validate(&self) -> Result<(), String> {
        validate_app_name(&self.app)?;
        if self.sealed.len() > MAX_SEALED_BYTES {
            return Err(format!("sealed part over {MAX_SEALED_BYTES} bytes"));
        }
        if self.failed_tests.len() > 256 || self.failed_tests.iter().any(|t| t.len() > 256) {
            return Err("too many failed tests, or a name over 256 bytes".into());
        }
        Ok(())
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

#[cfg(test)]
mod sealing_tests {
    use super::*;
    use crate::identity::Keypair;
    use crate::{Envelope, UnixMillis};

    fn draft(vendor: &Keypair) -> ProblemDraft {
        let fingerprint = Fingerprint::new("mysql".into(), Digest([1; 32]), Vec::new());
        ProblemDraft {
            manifest_id: Digest([2; 32]),
            app: "mysql".into(),
            version: "8.4.0".parse().unwrap(),
            cluster_key: fingerprint.cluster_key(),
            failed_tests: vec!["config-validates".into()],
            logs_digest: Digest([3; 32]),
            vendor: vendor.public(),
            details: ProblemDetails { fingerprint, output_excerpt: "password=hunter2 in my.cnf line 3".into() },
        }
    }

    #[test]
    fn only_the_vendor_reads_what_a_problem_report_seals() {
        let vendor = Keypair::generate(&mut rand::rngs::OsRng);
        let draft = draft(&vendor);
        let report = draft.seal(&mut rand::rngs::OsRng).unwrap();
        // What every peer relays: the public part, and no trace of the output.
        let reporter = Keypair::generate(&mut rand::rngs::OsRng);
        let wire = Envelope::sign(&reporter, &report, UnixMillis(1)).unwrap().to_bytes().unwrap();
        assert!(!wire.windows(7).any(|w| w == b"hunter2"), "the excerpt travels in the clear");
        let relayed = Envelope::from_bytes(&wire).unwrap().verify::<ProblemReport>().unwrap();
        assert_eq!(relayed.payload().failed_tests, draft.failed_tests);
        assert_eq!(relayed.payload().open(&vendor).unwrap(), draft.details);
        // Another key, even the reporter's own, opens nothing; an altered box neither.
        assert_eq!(report.open(&reporter), Err(SealError::Open));
        let mut altered = report.clone();
        altered.sealed[40] ^= 1;
        assert_eq!(altered.open(&vendor), Err(SealError::Open));
    }

    #[test]
    fn oversized_sealed_parts_are_refused() {
        let vendor = Keypair::generate(&mut rand::rngs::OsRng);
        let mut report = draft(&vendor).seal(&mut rand::rngs::OsRng).unwrap();
        report.sealed = vec![0; MAX_SEALED_BYTES + 1];
        assert!(report.validate().unwrap_err().contains("sealed part"));
    }
}
