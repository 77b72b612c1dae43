//! Fuzzes the config parser and validator (`sv_core::config::parse`).
//!
//! Invariants checked: no input panics (valid UTF-8 as is, anything else after lossy
//! conversion, as a file read with replacement characters would be); a refused config carries
//! at least one diagnostic, and rendering the diagnostics (which slices the source to show the
//! position) does not panic either.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fn check(text: &str) {
    match sv_core::config::parse(text, Path::new("fuzz.toml"), &|_| None) {
        Ok(_) => {}
        Err(errors) => {
            assert!(!errors.0.is_empty(), "refused without a diagnostic");
            let _ = errors.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(text) => check(text),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});
