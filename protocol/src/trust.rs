//! Which manifests a node accepts: only from vendor keys it was told to trust for that
//! application (no trust on first use), only unexpired, and only moving forward.
//!
//! These are the Update Framework's rules against arbitrary software (untrusted
//! signer), rollback (older or equal version), freeze/replay (expired manifest) and
//! mix-and-match across applications (a manifest for another app).

use crate::envelope::Verified;
use crate::manifest::UpgradeManifest;
use crate::time::UnixMillis;
use crate::PublicKey;
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ManifestRejection {
    #[error("no vendor key is trusted for app `{0}`")]
    NoTrustForApp(String),
    #[error("manifest for `{app}` signed by {signer}, which is not trusted for it")]
    UntrustedSigner { app: String, signer: String },
    #[error("manifest for `{app}` {version} expired at {expires_at}")]
    Expired { app: String, version: semver::Version, expires_at: UnixMillis },
    #[error("manifest for `{app}` {version} does not move forward from {current}")]
    NotNewer { app: String, version: semver::Version, current: semver::Version },
    #[error("manifest is for `{got}`, expected `{expected}`")]
    WrongApp { expected: String, got: String },
}

/// Vendor keys trusted per application.
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    keys: BTreeMap<String, BTreeSet<PublicKey>>,
}

impl TrustStore {
    pub fn trust(&mut self, app: &str, key: PublicKey) {
        self.keys.entry(app.to_string()).or_default().insert(key);
    }

    pub fn apps(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    pub fn is_trusted(&self, app: &str, key: &PublicKey) -> bool {
        self.keys.get(app).is_some_and(|k| k.contains(key))
    }

    /// Parses `APP=PUBKEY_HEX`, the form of `--trust` and of the config file.
    pub fn parse_entry(entry: &str) -> Result<(String, PublicKey), String> {
        let (app, key) = entry.split_once('=').ok_or_else(|| format!("`{entry}`: expected APP=PUBKEY"))?;
        crate::manifest::validate_app_name(app)?;
        let key = key.parse::<PublicKey>().map_err(|e| format!("`{entry}`: {e}"))?;
        Ok((app.to_string(), key))
    }

    /// Decides whether `manifest` may replace `current` (the newest version this node
    /// already accepted for the app, if any).
    pub fn admit(
        &self,
        manifest: &Verified<UpgradeManifest>,
        expected_app: Option<&str>,
        current: Option<&semver::Version>,
        now: UnixMillis,
    ) -> Result<(), ManifestRejection> {
        let m = manifest.payload();
        if let Some(expected) = expected_app {
            if expected != m.app {
                return Err(ManifestRejection::WrongApp { expected: expected.to_string(), got: m.app.clone() });
            }
        }
        let keys = self.keys.get(&m.app).ok_or_else(|| ManifestRejection::NoTrustForApp(m.app.clone()))?;
        if !keys.contains(manifest.signer()) {
            return Err(ManifestRejection::UntrustedSigner { app: m.app.clone(), signer: manifest.signer().to_hex() });
        }
        if m.is_expired(now) {
            return Err(ManifestRejection::Expired {
                app: m.app.clone(),
                version: m.version.clone(),
                expires_at: m.expires_at,
            });
        }
        if let Some(current) = current {
            if m.version <= *current {
                return Err(ManifestRejection::NotNewer {
                    app: m.app.clone(),
                    version: m.version.clone(),
                    current: current.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ArtifactInfo, StagingPolicy, MIN_CHUNK_SIZE};
    use crate::{Envelope, Keypair};

    fn manifest(app: &str, version: &str, expires: u64) -> UpgradeManifest {
        UpgradeManifest {
            app: app.into(),
            version: version.parse().unwrap(),
            artifact: ArtifactInfo::describe(b"new version", MIN_CHUNK_SIZE),
            test_bundle: None,
            tests: vec![],
            health_check: None,
            policy: StagingPolicy::default(),
            expires_at: UnixMillis(expires),
            notes: String::new(),
        }
    }

    fn signed(kp: &Keypair, m: &UpgradeManifest) -> Verified<UpgradeManifest> {
        Envelope::sign(kp, m, UnixMillis(1)).unwrap().verify().unwrap()
    }

    #[test]
    fn the_update_framework_attacks_are_refused() {
        let vendor = Keypair::from_secret_bytes(&[1; 32]);
        let mallory = Keypair::from_secret_bytes(&[2; 32]);
        let mut trust = TrustStore::default();
        trust.trust("mysql", vendor.public());
        let now = UnixMillis(1000);
        let current: semver::Version = "8.0.36".parse().unwrap();

        let good = signed(&vendor, &manifest("mysql", "8.0.37", 5000));
        assert_eq!(trust.admit(&good, Some("mysql"), Some(&current), now), Ok(()));
        assert_eq!(trust.admit(&good, None, None, now), Ok(()));

        let untrusted = signed(&mallory, &manifest("mysql", "8.0.37", 5000));
        assert!(matches!(
            trust.admit(&untrusted, None, Some(&current), now),
            Err(ManifestRejection::UntrustedSigner { .. })
        ));

        let rollback = signed(&vendor, &manifest("mysql", "8.0.35", 5000));
        assert!(matches!(trust.admit(&rollback, None, Some(&current), now), Err(ManifestRejection::NotNewer { .. })));
        let replay_same = signed(&vendor, &manifest("mysql", "8.0.36", 5000));
        assert!(matches!(
            trust.admit(&replay_same, None, Some(&current), now),
            Err(ManifestRejection::NotNewer { .. })
        ));

        let expired = signed(&vendor, &manifest("mysql", "8.0.38", 900));
        assert!(matches!(trust.admit(&expired, None, Some(&current), now), Err(ManifestRejection::Expired { .. })));

        // The vendor's key for mysql does not vouch for another app.
        let other_app = signed(&vendor, &manifest("php", "9.0.0", 5000));
        assert!(matches!(trust.admit(&other_app, None, None, now), Err(ManifestRejection::NoTrustForApp(_))));
        assert!(matches!(trust.admit(&good, Some("php"), None, now), Err(ManifestRejection::WrongApp { .. })));
    }

    #[test]
    fn trust_entries_parse() {
        let key = Keypair::from_secret_bytes(&[1; 32]).public();
        assert_eq!(TrustStore::parse_entry(&format!("mysql={key}")).unwrap(), ("mysql".into(), key));
        assert!(TrustStore::parse_entry("mysql").is_err());
        assert!(TrustStore::parse_entry("mysql=zz").is_err());
        assert!(TrustStore::parse_entry(&format!("My App={key}")).is_err());
    }
}
