//! Fuzzes the control socket's request parsing (`sv_runtime::control::parse_request`).
//!
//! Invariants checked: no line panics; a refusal is a `bad_request` error reply; a request
//! that parses serializes back to a line that parses to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sv_runtime::control::{code, parse_request};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match parse_request(line) {
        Ok(req) => {
            let again = serde_json::to_string(&req).expect("requests serialize");
            let back = parse_request(&again)
                .unwrap_or_else(|e| panic!("re-encoded request {again:?} does not parse: {e}"));
            assert_eq!(
                back, req,
                "request changed in a round trip through {again:?}"
            );
        }
        Err(reply) => {
            assert_eq!(reply["ok"], false, "{reply}");
            assert_eq!(reply["error"]["code"], code::BAD_REQUEST, "{reply}");
        }
    }
});
