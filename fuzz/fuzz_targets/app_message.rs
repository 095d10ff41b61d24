//! What a peer can put on an app's topic or send in a fingerprint exchange: signed
//! fingerprints and cluster summaries, and the envelope under them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mirage_protocol::membership::{check_announcement, check_app_message, decode_envelope, MembershipConfig};
use mirage_protocol::UnixMillis;

fuzz_target!(|data: &[u8]| {
    let now = UnixMillis(1_800_000_000_000);
    let config = MembershipConfig::default();
    let _ = decode_envelope(data);
    let _ = check_app_message(data, "mysql", None, now, &config);
    let _ = check_announcement(data, "mysql", None, now, &config);
});
