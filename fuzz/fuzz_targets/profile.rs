//! A profile as a vendor ships it (TOML), parsed and its globs compiled.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mirage_protocol::fingerprint::Profile;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Profile::parse(text);
    }
});
