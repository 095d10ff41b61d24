//! Signed envelopes: how every forgeable message travels.
//!
//! A signature covers a domain tag for the message kind, the signer, the issue time and
//! the encoded payload. The domain tag means a signature made over a fingerprint can
//! never be replayed as a test report or a manifest, even if the payload bytes happened
//! to decode as both. Verification is the only way to obtain a [`Verified`] value, so
//! code that holds one knows the check happened.

use crate::identity::{Keypair, PublicKey, Signature};
use crate::time::UnixMillis;
use crate::wire::{self, WireError};
use crate::Digest;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::time::Duration;
use thiserror::Error;

/// What a signed payload is. Part of what is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MessageKind {
    Fingerprint,
    Manifest,
    TestReport,
    ProblemReport,
    RetestRequest,
    Heartbeat,
    ClusterSummary,
}

impl MessageKind {
    fn domain(self) -> &'static [u8] {
        match self {
            MessageKind::Fingerprint => b"mirage/v1/fingerprint",
            MessageKind::Manifest => b"mirage/v1/manifest",
            MessageKind::TestReport => b"mirage/v1/test-report",
            MessageKind::ProblemReport => b"mirage/v1/problem-report",
            MessageKind::RetestRequest => b"mirage/v1/retest-request",
            MessageKind::Heartbeat => b"mirage/v1/heartbeat",
            MessageKind::ClusterSummary => b"mirage/v1/cluster-summary",
        }
    }
}

/// A payload type that may travel in an envelope.
pub trait SignedPayload: Serialize + DeserializeOwned {
    const KIND: MessageKind;

    /// Semantic checks beyond decoding (lengths, invariants). Run during verification.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("expected a {expected:?} message, got {actual:?}")]
    KindMismatch { expected: MessageKind, actual: MessageKind },
    #[error("bad signature from {0}")]
    BadSignature(String),
    #[error("payload: {0}")]
    Payload(#[from] WireError),
    #[error("invalid payload: {0}")]
    Invalid(String),
    #[error("message issued {age_ms} ms ago, older than the {max_ms} ms allowed")]
    Stale { age_ms: u64, max_ms: u64 },
    #[error("message issued {ahead_ms} ms in the future")]
    FromTheFuture { ahead_ms: u64 },
}

/// A signed message as it travels: its fields are public because an envelope proves
/// nothing until [`Envelope::verify`] says so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub kind: MessageKind,
    pub signer: PublicKey,
    pub issued_at: UnixMillis,
    pub payload: Vec<u8>,
    pub signature: Signature,
}

fn signing_input(kind: MessageKind, signer: &PublicKey, issued_at: UnixMillis, payload: &[u8]) -> Vec<u8> {
    let domain = kind.domain();
    let mut input = Vec::with_capacity(domain.len() + 1 + 32 + 8 + payload.len());
    input.extend_from_slice(domain);
    input.push(0);
    input.extend_from_slice(&signer.0);
    input.extend_from_slice(&issued_at.0.to_be_bytes());
    input.extend_from_slice(payload);
    input
}

impl Envelope {
    /// Encodes and signs `payload`. Fails only if the payload is over the wire limit.
    pub fn sign<T: SignedPayload>(keypair: &Keypair, payload: &T, issued_at: UnixMillis) -> Result<Self, WireError> {
        let payload = wire::encode(payload)?;
        let signer = keypair.public();
        let signature = keypair.sign(&signing_input(T::KIND, &signer, issued_at, &payload));
        Ok(Envelope { kind: T::KIND, signer, issued_at, payload, signature })
    }

    /// Checks kind, signature, payload decoding and payload validity, in that order.
    pub fn verify<T: SignedPayload>(&self) -> Result<Verified<T>, VerifyError> {
        if self.kind != T::KIND {
            return Err(VerifyError::KindMismatch { expected: T::KIND, actual: self.kind });
        }
        let input = signing_input(self.kind, &self.signer, self.issued_at, &self.payload);
        if !self.signer.verify(&input, &self.signature) {
            return Err(VerifyError::BadSignature(self.signer.peer_id()));
        }
        let payload: T = wire::decode(&self.payload)?;
        payload.validate().map_err(VerifyError::Invalid)?;
        Ok(Verified { signer: self.signer, issued_at: self.issued_at, payload, id: Digest::of(&input) })
    }

    /// The id and payload of an envelope this node verified before and kept in its own
    /// store, read back without checking the signature again. Only for the node's own
    /// store: what a peer sends goes through [`Envelope::verify`].
    pub fn stored<T: SignedPayload>(&self) -> Option<(Digest, T)> {
        if self.kind != T::KIND {
            return None;
        }
        let payload: T = wire::decode(&self.payload).ok()?;
        Some((Digest::of(&signing_input(self.kind, &self.signer, self.issued_at, &self.payload)), payload))
    }

    /// Encodes the whole envelope for the wire.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        wire::encode(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, WireError> {
        wire::decode(bytes)
    }
}

/// A payload whose signature, kind and contents were checked. Only
/// [`Envelope::verify`] makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified<T> {
    signer: PublicKey,
    issued_at: UnixMillis,
    payload: T,
    id: Digest,
}

impl<T> Verified<T> {
    pub fn signer(&self) -> &PublicKey {
        &self.signer
    }

    pub fn issued_at(&self) -> UnixMillis {
        self.issued_at
    }

    pub fn payload(&self) -> &T {
        &self.payload
    }

    /// A digest of everything signed: equal ids mean the same signed statement, so it
    /// serves for de-duplication and replay detection.
    pub fn id(&self) -> Digest {
        self.id
    }

    /// Rejects messages older than `max_age` or more than `max_skew` ahead of `now`.
    pub fn check_freshness(&self, now: UnixMillis, max_age: Duration, max_skew: Duration) -> Result<(), VerifyError> {
        if self.issued_at > now {
            let ahead = self.issued_at.since(now);
            if ahead > max_skew {
                return Err(VerifyError::FromTheFuture { ahead_ms: ahead.as_millis() as u64 });
            }
            return Ok(());
        }
        let age = now.since(self.issued_at);
        if age > max_age {
            return Err(VerifyError::Stale { age_ms: age.as_millis() as u64, max_ms: max_age.as_millis() as u64 });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;
    use crate::report::{Outcome, TestReport};

    fn kp() -> Keypair {
        Keypair::from_secret_bytes(&[9; 32])
    }

    fn sample_report() -> TestReport {
        TestReport {
            manifest_id: Digest([1; 32]),
            app: "mysql".into(),
            version: "8.0.1".parse().unwrap(),
            cluster_key: crate::ClusterKey(Digest([2; 32])),
            outcome: Outcome::Pass,
            summary: "3 tests passed".into(),
            logs_digest: Digest([3; 32]),
            tests_run: 3,
            duration_ms: 1200,
        }
    }

    #[test]
    fn sign_verify_roundtrip_over_the_wire() {
        let env = Envelope::sign(&kp(), &sample_report(), UnixMillis(1000)).unwrap();
        let bytes = env.to_bytes().unwrap();
        let back = Envelope::from_bytes(&bytes).unwrap();
        let v = back.verify::<TestReport>().unwrap();
        assert_eq!(v.payload(), &sample_report());
        assert_eq!(v.signer(), &kp().public());
        assert_eq!(v.issued_at(), UnixMillis(1000));
    }

    #[test]
    fn tampering_is_detected() {
        let env = Envelope::sign(&kp(), &sample_report(), UnixMillis(1000)).unwrap();
        let mut t = env.clone();
        t.issued_at = UnixMillis(1001);
        assert!(matches!(t.verify::<TestReport>(), Err(VerifyError::BadSignature(_))));
        let mut t = env.clone();
        *t.payload.last_mut().unwrap() ^= 1;
        assert!(matches!(t.verify::<TestReport>(), Err(VerifyError::BadSignature(_))));
        let mut t = env.clone();
        t.signer = Keypair::from_secret_bytes(&[8; 32]).public();
        assert!(matches!(t.verify::<TestReport>(), Err(VerifyError::BadSignature(_))));
    }

    #[test]
    fn domain_separation_blocks_cross_kind_replay() {
        let env = Envelope::sign(&kp(), &sample_report(), UnixMillis(5)).unwrap();
        // Asking for another kind fails on the kind tag...
        assert!(matches!(env.verify::<Fingerprint>(), Err(VerifyError::KindMismatch { .. })));
        // ...and relabelling the envelope breaks the signature, since the tag is signed.
        let mut relabelled = env.clone();
        relabelled.kind = MessageKind::Fingerprint;
        assert!(matches!(relabelled.verify::<Fingerprint>(), Err(VerifyError::BadSignature(_))));
    }

    #[test]
    fn freshness() {
        let env = Envelope::sign(&kp(), &sample_report(), UnixMillis(10_000)).unwrap();
        let v = env.verify::<TestReport>().unwrap();
        let min = Duration::from_secs(60);
        assert!(v.check_freshness(UnixMillis(20_000), min, min).is_ok());
        assert!(matches!(v.check_freshness(UnixMillis(100_000), min, min), Err(VerifyError::Stale { .. })));
        let skew = Duration::from_secs(1);
        assert!(matches!(v.check_freshness(UnixMillis(0), min, skew), Err(VerifyError::FromTheFuture { .. })));
    }

    #[test]
    fn invalid_payload_is_rejected_after_signature() {
        let mut r = sample_report();
        r.summary = "x".repeat(crate::report::MAX_SUMMARY_BYTES + 1);
        let env = Envelope::sign(&kp(), &r, UnixMillis(5)).unwrap();
        assert!(matches!(env.verify::<TestReport>(), Err(VerifyError::Invalid(_))));
    }
}
