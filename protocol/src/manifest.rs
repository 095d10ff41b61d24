//! Upgrade manifests: what a vendor signs about a release.

use crate::envelope::{MessageKind, SignedPayload};
use crate::fingerprint::ClusterKey;
use crate::identity::PublicKey;
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

/// Content addressing for one artifact: total size, whole-content hash, and a digest of
/// every fixed-size chunk, so each chunk can be verified the moment it arrives.
///
/// The digests are nodes of the artifact's own BLAKE3 tree (as in Bao): the chunk size
/// is a power of two, each chunk digest is the BLAKE3 chaining value of that chunk at its
/// offset (or, for a one-chunk artifact, its plain hash), and `content_hash` is the
/// plain BLAKE3 hash of the whole artifact, which is the root of the tree over the chunk
/// digests. So [`ArtifactInfo::validate`] can check that the chunk digests add up to the
/// content hash without the content, and a copy whose every chunk was verified *is* the
/// content: no second pass over the bytes is needed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    pub size: u64,
    pub chunk_size: u32,
    pub content_hash: Digest,
    pub chunk_hashes: Vec<Digest>,
}

/// Whether `chunk_size` can cut an artifact: in range, and a power of two (so chunks are
/// whole BLAKE3 subtrees).
pub fn valid_chunk_size(chunk_size: u32) -> bool {
    (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) && chunk_size.is_power_of_two()
}

/// The digest of chunk `index` (holding `data`) of an artifact of `chunk_count` chunks of
/// `chunk_size` bytes (see [`ArtifactInfo`]).
pub fn chunk_digest(chunk_count: usize, chunk_size: u32, index: usize, data: &[u8]) -> Digest {
    if chunk_count <= 1 {
        return Digest::of(data);
    }
    use blake3::hazmat::HasherExt;
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(index as u64 * chunk_size as u64);
    hasher.update(data);
    Digest(hasher.finalize_non_root())
}

/// The BLAKE3 hash of a whole artifact, from the digests of its chunks (see
/// [`ArtifactInfo`]). BLAKE3 splits any input of more than one chunk into a left subtree
/// of the largest power of two of chunks that leaves at least one byte for the right.
pub fn content_hash_of(chunk_hashes: &[Digest]) -> Digest {
    use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, Mode};
    fn left_count(n: usize) -> usize {
        1 << (usize::BITS - 1 - (n - 1).leading_zeros())
    }
    fn subtree(cvs: &[Digest]) -> [u8; 32] {
        if cvs.len() == 1 {
            return cvs[0].0;
        }
        let (left, right) = cvs.split_at(left_count(cvs.len()));
        merge_subtrees_non_root(&subtree(left), &subtree(right), Mode::Hash)
    }
    match chunk_hashes {
        [] => Digest::of(&[]),
        [only] => *only,
        _ => {
            let (left, right) = chunk_hashes.split_at(left_count(chunk_hashes.len()));
            Digest(*merge_subtrees_root(&subtree(left), &subtree(right), Mode::Hash).as_bytes())
        }
    }
}

impl ArtifactInfo {
    /// Describes `bytes` as an artifact cut into `chunk_size` pieces.
    ///
    /// # Panics
    /// If `chunk_size` is not a valid chunk size ([`valid_chunk_size`]).
    pub fn describe(bytes: &[u8], chunk_size: u32) -> Self {
        assert!(valid_chunk_size(chunk_size), "chunk size {chunk_size} is no power of two in range");
        let count = bytes.len().div_ceil(chunk_size as usize);
        let chunk_hashes: Vec<Digest> =
            bytes.chunks(chunk_size as usize).enumerate().map(|(i, c)| chunk_digest(count, chunk_size, i, c)).collect();
        ArtifactInfo {
            size: bytes.len() as u64,
            chunk_size,
            content_hash: content_hash_of(&chunk_hashes),
            chunk_hashes,
        }
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
        self.chunk_len(index) == Some(data.len() as u64)
            && self.chunk_hashes.get(index) == Some(&chunk_digest(self.chunk_count(), self.chunk_size, index, data))
    }

    /// Checks the description is well formed and consistent: a valid chunk size, one
    /// digest per chunk, and chunk digests whose tree root is the content hash.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_chunk_size(self.chunk_size) {
            return Err(format!(
                "chunk size {} is not a power of two in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                self.chunk_size
            ));
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
        if content_hash_of(&self.chunk_hashes) != self.content_hash {
            return Err("chunk hashes do not add up to the content hash".into());
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
#[serde(rename_all = "kebab-case")]
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
#[serde(rename_all = "kebab-case")]
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
    /// A representative must have been seen in its cluster this long before the
    /// release was issued (or the vendor's last retest request): identities that
    /// appear after a release, however they sign, never represent a cluster for it.
    /// The default covers the clock skew nodes tolerate.
    pub presence_margin_secs: u32,
    /// Keys the vendor trusts to test (its own lab machines, say). Their reports count
    /// for the clusters in `critical`, where `tester_quorum` of them must pass too.
    pub testers: Vec<PublicKey>,
    pub critical: Vec<ClusterKey>,
    pub tester_quorum: u16,
    /// What the upgrade touches. When set, a machine's cluster for this release is the
    /// projection of its fingerprint onto the scope
    /// ([`Fingerprint::cluster_key_for`](crate::fingerprint::Fingerprint::cluster_key_for)),
    /// so machines that differ only elsewhere test and apply as one cluster.
    pub scope: Option<Box<crate::fingerprint::scope::Scope>>,
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
            presence_margin_secs: DEFAULT_PRESENCE_MARGIN_SECS,
            testers: Vec::new(),
            critical: Vec::new(),
            tester_quorum: 0,
            scope: None,
        }
    }
}

/// The default [`StagingPolicy::presence_margin_secs`]: the clock skew a node tolerates
/// on signed messages.
pub const DEFAULT_PRESENCE_MARGIN_SECS: u32 = 120;

/// Most trusted tester keys and critical clusters a policy may name.
pub const MAX_TESTERS: usize = 64;
pub const MAX_CRITICAL_CLUSTERS: usize = 1024;

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
        if self.testers.len() > MAX_TESTERS {
            return Err(format!("{} trusted testers, at most {MAX_TESTERS}", self.testers.len()));
        }
        if self.critical.len() > MAX_CRITICAL_CLUSTERS {
            return Err(format!("{} critical clusters, at most {MAX_CRITICAL_CLUSTERS}", self.critical.len()));
        }
        if self.tester_quorum as usize > self.testers.len() {
            return Err(format!(
                "tester quorum {} over the {} trusted testers",
                self.tester_quorum,
                self.testers.len()
            ));
        }
        if !self.critical.is_empty() && self.tester_quorum == 0 {
            return Err("critical clusters need a tester quorum of at least 1".into());
        }
        if let Some(scope) = &self.scope {
            scope.validate()?;
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
    fn the_content_hash_is_the_blake3_of_the_whole_and_the_root_of_the_chunks() {
        // One chunk, exact multiples, short last chunks, and the powers of two around
        // which BLAKE3's tree changes shape.
        let cs = MIN_CHUNK_SIZE as usize;
        for chunks in [1usize, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33] {
            for short in [0usize, 1, cs / 2, cs - 1] {
                let len = chunks * cs - short;
                let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
                let a = ArtifactInfo::describe(&data, MIN_CHUNK_SIZE);
                assert_eq!(a.chunk_count(), chunks);
                assert_eq!(a.content_hash, Digest::of(&data), "{chunks} chunks, {short} short");
                a.validate().unwrap();
                for (i, c) in data.chunks(cs).enumerate() {
                    assert!(a.verify_chunk(i, c));
                }
            }
        }
        let empty = ArtifactInfo::describe(&[], MIN_CHUNK_SIZE);
        assert_eq!(empty.content_hash, Digest::of(&[]));
        empty.validate().unwrap();
    }

    #[test]
    fn chunk_digests_that_do_not_add_up_are_refused() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 249) as u8).collect();
        let good = ArtifactInfo::describe(&data, MIN_CHUNK_SIZE);
        let mut swapped = good.clone();
        swapped.chunk_hashes.swap(0, 1);
        assert!(swapped.validate().unwrap_err().contains("add up"));
        let mut other_content = good.clone();
        other_content.content_hash = Digest::of(b"something else");
        assert!(other_content.validate().is_err());
        // A chunk's plain hash is not its digest: the tree binds each chunk to its place.
        assert!(!good.verify_chunk(1, &[]));
        let mut plain = good.clone();
        plain.chunk_hashes[1] = Digest::of(&data[16384..32768]);
        assert!(plain.validate().is_err());
        let odd = ArtifactInfo { chunk_size: MIN_CHUNK_SIZE + 512, ..good };
        assert!(odd.validate().unwrap_err().contains("power of two"));
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
