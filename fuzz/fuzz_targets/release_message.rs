//! Everything a peer can put on an app's release topic: manifests, test reports,
//! problem reports, retest requests (envelope decoding, signature, payload rules).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mirage_protocol::channel::check_release_message;
use mirage_protocol::UnixMillis;

fuzz_target!(|data: &[u8]| {
    let _ = check_release_message(data, "mysql", UnixMillis(1_800_000_000_000));
});
