//! Fuzzes the bridge socket's line codec (`sv_bridge::codec`).
//!
//! Invariants checked: decoding any bytes never panics; a line that decodes re-encodes to one
//! line (no embedded newline) that decodes to the same request; the same holds for replies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sv_bridge::codec::{decode_reply, decode_request, encode_reply, encode_request};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_request(data) {
        let line = encode_request(&req);
        let body = line
            .strip_suffix('\n')
            .expect("encoded requests end with a newline");
        assert!(
            !body.contains('\n'),
            "encoded request spans lines: {line:?}"
        );
        let back = decode_request(body.as_bytes())
            .unwrap_or_else(|e| panic!("re-encoded request {body:?} does not decode: {e:?}"));
        assert_eq!(
            back, req,
            "request changed in a round trip through {body:?}"
        );
    }
    if let Ok(reply) = decode_reply(data) {
        let line = encode_reply(&reply);
        let body = line
            .strip_suffix('\n')
            .expect("encoded replies end with a newline");
        assert!(!body.contains('\n'), "encoded reply spans lines: {line:?}");
        let back = decode_reply(body.as_bytes())
            .unwrap_or_else(|e| panic!("re-encoded reply {body:?} does not decode: {e}"));
        assert_eq!(
            back, reply,
            "reply changed in a round trip through {body:?}"
        );
    }
});
