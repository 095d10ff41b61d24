//! The simulated vendor: signs releases, learns of problems from problem reports, fixes
//! each one some hours later and re-releases with every fix ready so far.

use mirage_protocol::manifest::{ArtifactInfo, StagingPolicy, UpgradeManifest, MIN_CHUNK_SIZE};
use mirage_protocol::{Digest, Envelope, Keypair, UnixMillis, Verified};

pub struct Release {
    pub manifest: Verified<UpgradeManifest>,
    pub id: Digest,
    /// Bit set of the problems this release fixes.
    pub fixed: u64,
}

pub struct Vendor {
    keypair: Keypair,
    policy: StagingPolicy,
    releases: Vec<Release>,
    known: u64,
    fixed: u64,
}

/// The simulated app; its name only appears in manifests and reports.
pub const APP: &str = "sim-app";

impl Vendor {
    pub fn new(seed: u64, policy: StagingPolicy) -> Self {
        let mut secret = [0u8; 32];
        secret[..8].copy_from_slice(&seed.to_le_bytes());
        secret[8..16].copy_from_slice(b"vendor!!");
        Vendor { keypair: Keypair::from_secret_bytes(&secret), policy, releases: Vec::new(), known: 0, fixed: 0 }
    }

    pub fn releases(&self) -> &[Release] {
        &self.releases
    }

    pub fn release_at(&self, index: u16) -> &Release {
        &self.releases[index as usize]
    }

    pub fn index_of(&self, id: &Digest) -> Option<u16> {
        self.releases.iter().position(|r| &r.id == id).map(|i| i as u16)
    }

    /// Whether `release` still carries a problem that breaks a cluster with `breaks`.
    pub fn is_faulty(&self, release: u16, breaks: u64) -> bool {
        breaks & !self.releases[release as usize].fixed != 0
    }

    /// Signs and publishes the next release, with every fix ready so far.
    pub fn release(&mut self, now: u64) -> u16 {
        let n = self.releases.len() as u64;
        let version = semver::Version::new(1, 0, n);
        let artifact = ArtifactInfo::describe(version.to_string().as_bytes(), MIN_CHUNK_SIZE);
        let manifest = UpgradeManifest {
            app: APP.into(),
            version,
            artifact,
            test_bundle: None,
            tests: Vec::new(),
            health_check: None,
            policy: self.policy.clone(),
            expires_at: UnixMillis(u64::MAX),
            notes: format!("fixes {:#b}", self.fixed),
        };
        let id = manifest.id();
        // A tiny manifest signed by our own key always encodes and verifies; failing
        // here would be a bug in the protocol crate, not a condition to handle.
        let envelope = Envelope::sign(&self.keypair, &manifest, UnixMillis(now)).expect("a tiny manifest encodes");
        let manifest = envelope.verify().expect("the vendor's own signature verifies");
        self.releases.push(Release { manifest, id, fixed: self.fixed });
        (self.releases.len() - 1) as u16
    }

    /// A problem report came from a cluster with `breaks` about `release`: returns the
    /// problems the vendor learns of for the first time (it starts fixing those).
    pub fn problem_reported(&mut self, release: u16, breaks: u64) -> u64 {
        let shown = breaks & !self.releases[release as usize].fixed;
        let new = shown & !self.known;
        self.known |= new;
        new
    }

    pub fn fix_ready(&mut self, problem: u32) {
        self.fixed |= 1 << problem;
    }
}
