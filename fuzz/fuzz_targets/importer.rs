//! Fuzzes the supervisord importer (`sv_import::import_str`).
//!
//! The origin is a file in a directory that does not exist, so relative `[include]` patterns
//! match nothing. Inputs whose `[include] files=` could name a file elsewhere (a `/` or `..` on a
//! line holding `files` or on a continuation line) are skipped: such a pattern would read the
//! fuzzing machine's real files (`/dev/zero` never ends), which tests the machine, not the
//! importer.
//!
//! Invariants checked: no input panics; rendering errors and warnings does not panic; an
//! import that succeeds yields a config that the config parser accepts as TOML (it may still
//! refuse values, e.g. a command the importer passed through, but never the syntax).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fn may_include_real_files(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("include")
        && lower.lines().any(|l| {
            (l.contains("files") || l.starts_with(char::is_whitespace))
                && (l.contains('/') || l.contains(".."))
        })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if may_include_real_files(&text) {
        return;
    }
    match sv_import::import_str(&text, Path::new("/nonexistent/fuzz.conf"), &|_| None) {
        Ok(import) => {
            for w in &import.warnings {
                let _ = w.to_string();
            }
            if let Err(errors) =
                sv_core::config::parse(&import.toml, Path::new("imported.toml"), &|_| None)
            {
                assert!(
                    !errors
                        .0
                        .iter()
                        .any(|d| d.to_string().contains("invalid TOML")),
                    "importer wrote invalid TOML:\n{}\n---\n{errors}",
                    import.toml
                );
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
