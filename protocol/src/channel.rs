//! What travels on an application's release channel (its gossip topic for releases):
//! vendors' signed manifests and representatives' signed test and problem reports. Anyone can
//! check that a message is well formed, signed and for the channel's app; whether a
//! manifest is *trusted* is each node's own decision ([`crate::trust`]).

use crate::envelope::{MessageKind, Verified, VerifyError};
use crate::manifest::UpgradeManifest;
use crate::membership::{decode_envelope, DropReason};
use crate::report::{ProblemReport, RetestRequest, TestReport};
use crate::time::UnixMillis;

#[derive(Clone, Debug)]
pub enum ReleaseMessage {
    Manifest(Verified<UpgradeManifest>),
    TestReport(Verified<TestReport>),
    /// A representative's failure report, for the vendor (and kept by peers until the
    /// vendor asks).
    ProblemReport(Verified<ProblemReport>),
    /// The vendor's request to test a release again (trusted keys only: each node checks).
    Retest(Verified<RetestRequest>),
}

impl ReleaseMessage {
    pub fn app(&self) -> &str {
        match self {
            ReleaseMessage::Manifest(m) => &m.payload().app,
            ReleaseMessage::TestReport(r) => &r.payload().app,
            ReleaseMessage::ProblemReport(r) => &r.payload().app,
            ReleaseMessage::Retest(r) => &r.payload().app,
        }
    }
}

fn verify_error(e: VerifyError) -> DropReason {
    match e {
        VerifyError::KindMismatch { .. } | VerifyError::Payload(_) => DropReason::Decode,
        VerifyError::BadSignature(_) => DropReason::Signature,
        VerifyError::Invalid(_) => DropReason::Invalid,
        VerifyError::Stale { .. } | VerifyError::FromTheFuture { .. } => DropReason::Stale,
    }
}

/// Decodes and verifies a release-channel message for `app`. Expired manifests, and
/// reports and retest requests older than [`crate::staging::MESSAGE_MAX_AGE`] (or from
/// the future), are [`DropReason::Stale`]: relaying them would only help a replay.
///
/// These are the rules every node and every relay applies alike, and the only ones
/// whose breach costs the peer that relayed a message: what a node refuses for reasons
/// of its own (whom it trusts, what its gates count) it ignores, so an honest relay
/// that cannot know them loses nothing.
pub fn check_release_message(bytes: &[u8], app: &str, now: UnixMillis) -> Result<ReleaseMessage, DropReason> {
    let envelope = decode_envelope(bytes)?;
    let message = match envelope.kind {
        MessageKind::Manifest => {
            let m = envelope.verify::<UpgradeManifest>().map_err(verify_error)?;
            if m.payload().is_expired(now) {
                return Err(DropReason::Stale);
            }
            ReleaseMessage::Manifest(m)
        }
        MessageKind::TestReport => ReleaseMessage::TestReport(envelope.verify::<TestReport>().map_err(verify_error)?),
        MessageKind::ProblemReport => {
            ReleaseMessage::ProblemReport(envelope.verify::<ProblemReport>().map_err(verify_error)?)
        }
        MessageKind::RetestRequest => ReleaseMessage::Retest(envelope.verify::<RetestRequest>().map_err(verify_error)?),
        MessageKind::Fingerprint | MessageKind::Heartbeat | MessageKind::ClusterSummary => {
            return Err(DropReason::Decode)
        }
    };
    if message.app() != app {
        return Err(DropReason::WrongApp);
    }
    let fresh = match &message {
        ReleaseMessage::Manifest(_) => true,
        ReleaseMessage::TestReport(r) => crate::staging::is_fresh(r, now),
        ReleaseMessage::ProblemReport(r) => crate::staging::is_fresh(r, now),
        ReleaseMessage::Retest(r) => crate::staging::is_fresh(r, now),
    };
    if !fresh {
        return Err(DropReason::Stale);
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ArtifactInfo, StagingPolicy};
    use crate::wire::MAX_MESSAGE_BYTES;
    use crate::{Envelope, Keypair};

    fn manifest(app: &str, expires_at: u64) -> UpgradeManifest {
        UpgradeManifest {
            app: app.into(),
            version: semver::Version::new(1, 2, 3),
            artifact: ArtifactInfo::describe(&[7; 100_000], 16 << 10),
            test_bundle: None,
            tests: vec![],
            health_check: None,
            policy: StagingPolicy::default(),
            expires_at: UnixMillis(expires_at),
            notes: String::new(),
        }
    }

    #[test]
    fn reports_older_than_a_week_are_stale_for_relays_and_nodes_alike() {
        use crate::report::{Outcome, TestReport};
        let signer = Keypair::from_secret_bytes(&[2; 32]);
        let report = TestReport {
            manifest_id: crate::Digest([1; 32]),
            app: "mysql".into(),
            version: semver::Version::new(1, 0, 0),
            cluster_key: crate::ClusterKey(crate::Digest([2; 32])),
            outcome: Outcome::Pass,
            summary: String::new(),
            logs_digest: crate::Digest([0; 32]),
            tests_run: 1,
            duration_ms: 1,
        };
        let now = UnixMillis(30 * 24 * 3600 * 1000);
        let at = |t: u64| Envelope::sign(&signer, &report, UnixMillis(t)).unwrap().to_bytes().unwrap();
        assert!(check_release_message(&at(now.0 - 1000), "mysql", now).is_ok());
        assert_eq!(
            check_release_message(&at(now.0 - 8 * 24 * 3600 * 1000), "mysql", now).unwrap_err(),
            DropReason::Stale
        );
        assert_eq!(check_release_message(&at(now.0 + 3600 * 1000), "mysql", now).unwrap_err(), DropReason::Stale);
    }

    #[test]
    fn accepts_signed_manifests_for_the_app_only() {
        let vendor = Keypair::from_secret_bytes(&[1; 32]);
        let now = UnixMillis(1_000_000);
        let bytes = Envelope::sign(&vendor, &manifest("mysql", 2_000_000), now).unwrap().to_bytes().unwrap();
        assert!(matches!(check_release_message(&bytes, "mysql", now), Ok(ReleaseMessage::Manifest(_))));
        assert_eq!(check_release_message(&bytes, "php", now).unwrap_err(), DropReason::WrongApp);
        assert_eq!(check_release_message(&bytes, "mysql", UnixMillis(3_000_000)).unwrap_err(), DropReason::Stale);
        let mut env = Envelope::from_bytes(&bytes).unwrap();
        env.payload[3] ^= 1;
        assert_eq!(check_release_message(&env.to_bytes().unwrap(), "mysql", now).unwrap_err(), DropReason::Signature);
        assert_eq!(check_release_message(b"junk", "mysql", now).unwrap_err(), DropReason::Decode);
        let huge = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert_eq!(check_release_message(&huge, "mysql", now).unwrap_err(), DropReason::TooLarge);
    }
}
