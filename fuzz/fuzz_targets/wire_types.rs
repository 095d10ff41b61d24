//! Every signed payload type decoded from arbitrary bytes and checked by its own rules,
//! as the envelope's verification does after the signature: the first byte picks the
//! type.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mirage_protocol::manifest::UpgradeManifest;
use mirage_protocol::report::{ProblemReport, RetestRequest, TestReport};
use mirage_protocol::roster::{CatchUp, CatchUpRequest, ClusterSummary, Heartbeat};
use mirage_protocol::{wire, Fingerprint, SignedPayload};

fn check<T: SignedPayload>(bytes: &[u8]) {
    if let Ok(value) = wire::decode::<T>(bytes) {
        let _ = value.validate();
        // What decodes must encode again.
        wire::encode(&value).expect("a decoded value encodes");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 8 {
        0 => check::<UpgradeManifest>(rest),
        1 => check::<TestReport>(rest),
        2 => check::<ProblemReport>(rest),
        3 => check::<RetestRequest>(rest),
        4 => check::<Fingerprint>(rest),
        5 => check::<Heartbeat>(rest),
        6 => check::<ClusterSummary>(rest),
        _ => {
            let _ = wire::decode::<CatchUpRequest>(rest);
            let _ = wire::decode::<CatchUp>(rest);
        }
    }
});
