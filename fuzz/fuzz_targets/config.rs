//! One configuration file in each format the fingerprint parses (INI, key/value,
//! Apache, PHP, and the guess between them): the first byte picks the format.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mirage_protocol::fingerprint::config::{parse, ConfigFormat};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let format = match which % 5 {
        0 => ConfigFormat::Ini,
        1 => ConfigFormat::KeyValue,
        2 => ConfigFormat::Apache,
        3 => ConfigFormat::Php,
        _ => ConfigFormat::Auto,
    };
    let text = String::from_utf8_lossy(rest);
    let _ = parse(format, "/etc/app/app.conf", &text, &|s: &str| s.to_string());
});
