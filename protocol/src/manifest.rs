//! Upgrade manifests: what a vendor signs about a release.

use crate::envelope::{MessageKind, SignedPayload};
use crate::time::UnixMillis;
use crate::Digest;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The chunk size vendors use unless told otherwise (1 MiB).
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
pub const MIN_CHUNK_SIZE: u32 = 16 << 10;
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Upper bound on chunks per artifact (16 GiB at the default chunk size).
pub const MAX_CHUNKS: usize = 16_384;
pub const MAX_NAME_BYTES: usize = 64;
pub const MAX_TESTS: usize = 64;

/// Content addressing for one artifact: total size, whole-content hash, and the hash of
/// every fixed-size chunk, so each chunk can be verified the moment it arrives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    pub size: u64,
    pub chunk_size: u32,
    pub content_hash: Digest,
    pub chunk_hashes: Vec<Digest>,
}

impl ArtifactInfo {
    /// Describes `bytes` as an artifact cut into `chunk_size` pieces.
    pub fn describe(bytes: &[u8], chunk_size: u32) -> Self {
        let chunk_hashes = bytes.chunks(chunk_size as usize).map(Digest::of).collect();
        ArtifactInfo { size: bytes.len() as u64, chunk_size, content_hash: Digest::of(bytes), chunk_hashes }
    }

    pub fn chunk_count(&self) -> usize {
        self.size.div_ceil(self.chunk_size as u64) as usize
    }

    /// Byte length of chunk `index` (the last one may be short).
    pub fn chunk_len(&self, index: usize) -> Option<u64> {
        let start = index as u64 * self.chunk_size as u64;
        (start < self.size).then(|| (self.size - start).min(self.chunk_size as u64))
    }

    /// Whether `data` is exactly chunk `index` of this artifact.
    pub fn verify_chunk(&self, index: usize, data: &[u8]) -> bool {
        self.chunk_len(index) == Some(data.len() as u64) && self.chunk_hashes.get(index) == Some(&Digest::of(data))
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(format!("chunk size {} outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}", self.chunk_size));
        }
        if self.chunk_hashes.len() > MAX_CHUNKS {
            return Err(format!("{} chunks, over the {MAX_CHUNKS} limit", self.chunk_hashes.len()));
        }
        if self.chunk_hashes.len() != self.chunk_count() {
            return Err(format!(
                "{} chunk hashes for {} bytes in {}-byte chunks (want {})",
                self.chunk_hashes.len(),
                self.size,
                self.chunk_size,
                self.chunk_count()
            ));
        }
        Ok(())
    }
}

/// A command a test or health check runs, bounded in time and output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    pub timeout_secs: u32,
    pub max_output_bytes: u32,
}

/// A test a representative runs against its real environment with the upgrade applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TestSpec {
    /// The vendor's own test command; exit status 0 passes.
    Command { name: String, command: CommandSpec },
    /// MonDe-style replay: each recorded input under `inputs` (a directory in the test
    /// bundle) goes through the old and the new version; outputs must match except for
    /// `ignore_fields` (names of `key=value`/`key: value` fields allowed to differ).
    Replay { name: String, inputs: String, command: CommandSpec, ignore_fields: Vec<String> },
}

impl TestSpec {
    pub fn name(&self) -> &str {
        match self {
            TestSpec::Command { name, .. } | TestSpec::Replay { name, .. } => name,
        }
    }
}

/// How clusters are ordered through a rollout. The names follow the Mirage paper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    /// Every node applies on receipt: today's practice, kept as the baseline.
    NoStaging,
    /// Every cluster's representatives test at once; each cluster applies when its own
    /// gate holds.
    FrontLoading,
    /// Clusters go in stages of roughly equal machine count; a stage opens when every
    /// gate of the previous one holds or its timeout passes.
    Balanced,
}

impl PolicyKind {
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::NoStaging => "no-staging",
            PolicyKind::FrontLoading => "front-loading",
            PolicyKind::Balanced => "balanced",
        }
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "no-staging" => Ok(PolicyKind::NoStaging),
            "front-loading" => Ok(PolicyKind::FrontLoading),
            "balanced" => Ok(PolicyKind::Balanced),
            other => Err(format!("unknown policy `{other}` (no-staging, front-loading, balanced)")),
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageOrder {
    SmallestFirst,
    LargestFirst,
}

/// The vendor's staging policy, signed as part of the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingPolicy {
    pub kind: PolicyKind,
    /// Representatives per cluster (fewer in clusters that are smaller).
    pub representatives: u16,
    /// Passing reports a cluster needs before members apply (capped at the number of
    /// representatives the cluster actually has).
    pub threshold: u16,
    /// How long a representative may take before the next in line replaces it.
    pub report_deadline_secs: u32,
    /// `balanced`: how many stages, and how long a stage may wait for its gates.
    pub stages: u16,
    pub stage_timeout_secs: u32,
    pub order: StageOrder,
}

impl Default for StagingPolicy {
    fn default() -> Self {
        StagingPolicy {
            kind: PolicyKind::Balanced,
            representatives: 2,
            threshold: 2,
            report_deadline_secs: 600,
            stages: 3,
            stage_timeout_secs: 3600,
            order: StageOrder::SmallestFirst,
        }
    }
}

impl StagingPolicy {
    pub fn validate(&self) -> Result<(), String> {
        if self.representatives == 0 || self.representatives > 16 {
            return Err(format!("representatives {} outside 1..=16", self.representatives));
        }
        if self.threshold == 0 || self.threshold > self.representatives {
            return Err(format!("threshold {} outside 1..={}", self.threshold, self.representatives));
        }
        if self.stages == 0 || self.stages > 1000 {
            return Err(format!("stages {} outside 1..=1000", self.stages));
        }
        Ok(())
    }
}

/// A vendor's signed description of one release of one application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeManifest {
    pub app: String,
    pub version: semver::Version,
    pub artifact: ArtifactInfo,
    /// The bundle holding test scripts and recorded inputs, if the tests need files.
    pub test_bundle: Option<ArtifactInfo>,
    pub tests: Vec<TestSpec>,
    /// Run after applying; failure rolls the upgrade back.
    pub health_check: Option<CommandSpec>,
    pub policy: StagingPolicy,
    pub expires_at: UnixMillis,
    pub notes: String,
}

impl UpgradeManifest {
    /// The manifest's identity: a digest of its canonical encoding.
    pub fn id(&self) -> Digest {
        Digest::of(&crate::wire::encode(self).unwrap_or_default())
    }

    pub fn is_expired(&self, now: UnixMillis) -> bool {
        now >= self.expires_at
    }
}

/// Application names appear in topic names and paths, so they are kept to a safe alphabet.
pub fn validate_app_name(app: &str) -> Result<(), String> {
    let ok = !app.is_empty()
        && app.len() <= MAX_NAME_BYTES
        && app.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && app.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!("app name `{app}` must be 1-{MAX_NAME_BYTES} chars of a-z 0-9 - _, starting alphanumeric"))
    }
}

impl SignedPayload for UpgradeManifest {
    const KIND: MessageKind = MessageKind::Manifest;

    fn validate(&self) -> Result<(), String> {
        validate_app_name(&self.app)?;
        self.artifact.validate().map_err(|e| format!("artifact: {e}"))?;
        if let Some(bundle) = &self.test_bundle {
            bundle.validate().map_err(|e| format!("test bundle: {e}"))?;
        }
        if self.tests.len() > MAX_TESTS {
            return Err(format!("{} tests, over the {MAX_TESTS} limit", self.tests.len()));
        }
        for t in &self.tests {
            let cmd = match t {
                TestSpec::Command { command, .. } | TestSpec::Replay { command, .. } => command,
            };
            if cmd.argv.is_empty() {
                return Err(format!("test `{}` has an empty command", t.name()));
            }
        }
        self.policy.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Envelope, Keypair, VerifyError};

    pub(crate) fn sample(size: usize) -> UpgradeManifest {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        UpgradeManifest {
            app: "mysql".into(),
            version: "8.0.36".parse().unwrap(),
            artifact: ArtifactInfo::describe(&data, MIN_CHUNK_SIZE),
            test_bundle: None,
            tests: vec![TestSpec::Command {
                name: "smoke".into(),
                command: CommandSpec { argv: vec!["./smoke.sh".into()], timeout_secs: 30, max_output_bytes: 65536 },
            }],
            health_check: None,
            policy: StagingPolicy::default(),
            expires_at: UnixMillis(1_000_000),
            notes: String::new(),
        }
    }

    #[test]
    fn chunks_describe_and_verify() {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let a = ArtifactInfo::describe(&data, MIN_CHUNK_SIZE);
        assert_eq!(a.chunk_count(), 3);
        assert_eq!(a.chunk_len(2), Some(40_000 - 2 * 16384));
        assert_eq!(a.chunk_len(3), None);
        assert!(a.verify_chunk(1, &data[16384..32768]));
        assert!(!a.verify_chunk(0, &data[16384..32768]));
        assert!(!a.verify_chunk(2, &data[32768..39_999]));
        a.validate().unwrap();
    }

    #[test]
    fn manifest_signs_and_validates() {
        let kp = Keypair::from_secret_bytes(&[5; 32]);
        let m = sample(50_000);
        let v = Envelope::sign(&kp, &m, UnixMillis(1)).unwrap().verify::<UpgradeManifest>().unwrap();
        assert_eq!(v.payload().id(), m.id());

        let mut bad = m.clone();
        bad.artifact.chunk_hashes.pop();
        let e = Envelope::sign(&kp, &bad, UnixMillis(1)).unwrap().verify::<UpgradeManifest>();
        assert!(matches!(e, Err(VerifyError::Invalid(_))));

        let mut bad = m;
        bad.app = "../etc".into();
        let e = Envelope::sign(&kp, &bad, UnixMillis(1)).unwrap().verify::<UpgradeManifest>();
        assert!(matches!(e, Err(VerifyError::Invalid(_))));
    }

    #[test]
    fn policy_names_roundtrip() {
        for k in [PolicyKind::NoStaging, PolicyKind::FrontLoading, PolicyKind::Balanced] {
            assert_eq!(k.name().parse::<PolicyKind>().unwrap(), k);
        }
        assert!("fast".parse::<PolicyKind>().is_err());
    }
}
