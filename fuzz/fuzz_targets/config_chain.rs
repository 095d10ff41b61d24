//! A chain of configuration files that include one another (MySQL `!include`,
//! Apache `Include`, key/value `Include`, PHP's scan directory), as a root could hold
//! them: the input is split at NUL bytes into files; the chain must stay within its
//! limits whatever they say.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mirage_protocol::fingerprint::chain::{resolve, Limits, MemorySource};
use mirage_protocol::fingerprint::config::ConfigFormat;

const NAMES: [&str; 6] = [
    "/etc/app/app.conf",
    "/etc/app/conf.d/a.conf",
    "/etc/app/conf.d/b.cnf",
    "/etc/app/other.conf",
    "/etc/app/conf.d/sub/c.conf",
    "/etc/app/a.ini",
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let format = match which % 4 {
        0 => ConfigFormat::Ini,
        1 => ConfigFormat::KeyValue,
        2 => ConfigFormat::Apache,
        _ => ConfigFormat::Php,
    };
    let mut source = MemorySource::default();
    for (name, text) in NAMES.iter().zip(rest.split(|b| *b == 0)) {
        source.insert(name, &String::from_utf8_lossy(text));
    }
    let chain = resolve(format, NAMES[0], &["conf.d/*.conf".to_string()], &mut source, &|s: &str| s.to_string());
    assert!(chain.files.len() <= Limits::DEFAULT.files);
    assert!(chain.settings.len() <= Limits::DEFAULT.settings);
});
