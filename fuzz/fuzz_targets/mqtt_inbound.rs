//! Fuzzes the bridge's handling of inbound MQTT messages (`sv_bridge::fuzz::inbound`): the
//! `devices/{d}/cmd`, `devices/{d}/get`, `groups/{g}/cmd` and `meta/request/{type}` topics.
//!
//! Input format: the first line is the topic below the instance root, the rest is the payload
//! (so `devices/d1/cmd\n{"id":"c1","values":{"on":true}}`). Each input runs twice: with a program
//! that handles every device and meta requests, and with none (the bridge answers itself).
//!
//! Invariants checked: no payload or topic panics the engine; every line it sends to a program
//! is one line that decodes as a reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sv_bridge::codec::decode_reply;
use sv_bridge::fuzz::{ROOT, inbound};

fuzz_target!(|data: &[u8]| {
    let (suffix, payload) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let topic = format!("{ROOT}/{}", String::from_utf8_lossy(suffix));
    for handler in [true, false] {
        for line in inbound(&topic, payload, false, handler) {
            let body = line
                .strip_suffix('\n')
                .expect("lines to programs end with a newline");
            assert!(
                !body.contains('\n'),
                "line to a program spans lines: {line:?}"
            );
            if let Err(e) = decode_reply(body.as_bytes()) {
                panic!("line to a program does not decode: {body:?}: {e}");
            }
        }
    }
});
