//! Fuzzes readiness-notification datagram parsing (`sv_core::notify::parse`).
//!
//! Invariants checked: no datagram panics; there are never more entries than lines.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let entries = sv_core::notify::parse(data);
    let lines = data.iter().filter(|&&b| b == b'\n').count() + 1;
    assert!(
        entries.len() <= lines,
        "{} entries from {lines} lines",
        entries.len()
    );
});
