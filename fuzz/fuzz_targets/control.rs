//! A line on the control API, as any caller that reached the socket (or a TCP caller
//! before its token is checked) could send it: the hello, the HTTP check and the
//! request parse never panic, and a request that parses says the same thing again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mirage_protocol::control::{looks_like_http, Hello, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    let _ = looks_like_http(line);
    let _ = Hello::parse(line);
    if let Ok(request) = Request::parse(line) {
        let again = serde_json::to_string(&request).unwrap();
        assert_eq!(Request::parse(&again).unwrap(), request);
    }
});
