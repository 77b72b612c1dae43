//! Config errors through the real binary: `check` and `run` report every problem with file,
//! line and column and exit 2; `run` starts nothing on a bad config; a missing file is a clear
//! error, also exit 2.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;

use common::{Sv, bin, check, child_cmd};
use sv_testkit::tempdir;

/// Three mistakes at known positions (lines counted from 1).
fn bad_config(marker: &std::path::Path) -> String {
    format!(
        "[program.api]\n\
         command = {}\n\
         prority = 10\n\
         startsecs = \"fast\"\n\
         \n\
         [program.worker]\n\
         command = [\"/bin/true\"]\n\
         priority = \"high\"\n",
        child_cmd(&["--append", &marker.display().to_string(), "started"])
    )
}

#[test]
fn check_reports_every_error_with_its_position() {
    let dir = tempdir().expect("tempdir");
    let out = check(dir.path(), &bad_config(&dir.path().join("marker")));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let file = dir.path().join("config.toml").display().to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    let expect = [(3, 1, "prority"), (4, 13, "fast"), (8, 12, "priority")];
    for (l, (line, col, word)) in lines.iter().zip(expect) {
        let head = format!("iot2mqtt-sv: error: {file}: line {line}, column {col}: ");
        assert!(l.starts_with(&head), "{l:?} should start with {head:?}");
        assert!(l.contains(word), "{l:?} should mention {word}");
    }
    assert!(lines[0].contains("did you mean \"priority\""), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn check_accepts_a_valid_config() {
    let dir = tempdir().expect("tempdir");
    let out = check(
        dir.path(),
        "[program.a]\ncommand = [\"/bin/true\"]\n\n[program.b]\ncommand = \"/bin/true\"\n",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok: 2 programs"), "{text}");
}

#[test]
fn run_with_a_bad_config_exits_2_and_starts_nothing() {
    let dir = Sv::new_dir();
    let marker = dir.path().join("marker");
    let config = bad_config(&marker);
    let mut sv = Sv::spawn_in(dir, &config, Default::default());
    assert_eq!(sv.wait_exit(), 2);
    let err = sv.stderr();
    assert_eq!(
        err.lines().filter(|l| l.contains(": line ")).count(),
        3,
        "{err}"
    );
    assert!(!marker.exists(), "a program was started");
    assert!(!sv.socket.exists(), "the control socket was created");
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let dir = tempdir().expect("tempdir");
    let missing = dir.path().join("nope.toml");
    for verb in ["check", "run"] {
        let out = Command::new(bin())
            .args([verb, "-c"])
            .arg(&missing)
            .env_remove("IOT2MQTT_SV_CONFIG")
            .env("IOT2MQTT_SV_SOCKET", dir.path().join("s.sock"))
            .output()
            .expect("running iot2mqtt-sv");
        assert_eq!(out.status.code(), Some(2), "{verb}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let want = format!("iot2mqtt-sv: error: reading config {}: ", missing.display());
        assert!(err.starts_with(&want), "{verb}: {err}");
        assert!(err.contains("No such file"), "{verb}: {err}");
    }
}

#[test]
fn a_toml_syntax_error_is_positioned() {
    let dir = tempdir().expect("tempdir");
    let out = check(dir.path(), "[program.a]\ncommand = [\"/bin/true\"\n");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let file = dir.path().join("config.toml").display().to_string();
    assert!(
        err.starts_with(&format!("iot2mqtt-sv: error: {file}: line ")),
        "{err}"
    );
}
