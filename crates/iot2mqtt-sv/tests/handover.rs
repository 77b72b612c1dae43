//! Stopping a program whose main process was handed over with sd_notify `MAINPID=`, end to end
//! with the real binary and systemd's own `systemd-notify`.
//!
//! The wrapper pattern from docs/readiness-and-health.md: a shell starts a daemon in the
//! background, names it with `systemd-notify --ready --pid=$!` and exits. The daemon stays in the
//! wrapper's process group, so it leads none: a group signal to its pid finds no group (ESRCH).
//! `stop`, `restart` and a supervisor shutdown must still reach it, with SIGKILL after
//! `stopwaitsecs` when it ignores SIGTERM. Every wait is bounded by [`sv_testkit::WAIT`], far
//! below the generous `shutdown_timeout` these configs set, so a stop that only ends by the
//! shutdown timeout (or never) fails the test.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;

use common::{Sv, alive, lines, read, test_child, toml_str};
use serde_json::json;
use sv_testkit::{Requirement, WAIT, require, wait_for};

/// A program whose wrapper appends each daemon's pid to `pids` and hands over to it. The daemon
/// is `test-child` logging its signals to `signals` (ignoring SIGTERM when `ignore_term`); it
/// appends `armed` to `pids.armed` once its signal handling is in place.
fn wrapper_config(pids: &Path, signals: &Path, ignore_term: bool) -> String {
    let ignore = if ignore_term { " --ignore-term" } else { "" };
    let script = format!(
        "\"$3\"{ignore} --signal-log \"$2\" --print armed >> \"$1.armed\" & echo $! >> \"$1\"; \
         systemd-notify --ready --pid=$!; exit 0"
    );
    let argv = [
        "/bin/sh".to_string(),
        "-c".into(),
        script,
        "sh".into(),
        pids.display().to_string(),
        signals.display().to_string(),
        test_child().display().to_string(),
    ]
    .iter()
    .map(|a| toml_str(a))
    .collect::<Vec<_>>()
    .join(", ");
    format!(
        "[supervisor]\nshutdown_timeout = \"120s\"\n\n\
         [program.daemon]\ncommand = [{argv}]\nready = {{ kind = \"notify\" }}\n\
         stopwaitsecs = \"1s\"\nautorestart = false\ncritical = false\n"
    )
}

/// Starts the supervisor on the wrapper config and waits until the program is RUNNING as its
/// daemon (the handover accepted); returns the supervisor and the daemon's pid.
fn started(ignore_term: bool) -> Option<(Sv, i32)> {
    if !require(Requirement::SystemdNotify) {
        return None;
    }
    let dir = Sv::new_dir();
    let pids = dir.path().join("pids");
    let signals = dir.path().join("signals");
    let sv = Sv::spawn_in(
        dir,
        &wrapper_config(&pids, &signals, ignore_term),
        Default::default(),
    );
    sv.wait_socket();
    let daemon = wait_daemon(&sv, 1);
    Some((sv, daemon))
}

/// Waits for the `n`th daemon to be the program's main process; returns its pid.
fn wait_daemon(sv: &Sv, n: usize) -> i32 {
    let pids = sv.path("pids");
    let daemon: i32 = wait_for(&format!("daemon number {n}"), WAIT, || {
        lines(&pids).get(n - 1)?.trim().parse().ok()
    });
    sv.wait_program("the handover to the daemon", "daemon", |s| {
        s["state"] == "RUNNING" && s["pid"] == daemon
    });
    // A signal that lands before test-child handles them would show in no log.
    wait_for(
        &format!("daemon number {n} to handle signals"),
        WAIT,
        || (lines(&sv.path("pids.armed")).len() >= n).then_some(()),
    );
    daemon
}

/// Sends a control request that must succeed within WAIT; on failure, says what the supervisor
/// was doing.
#[track_caller]
fn answer(sv: &Sv, req: &serde_json::Value) -> serde_json::Value {
    let reply = sv.try_request(req);
    match reply {
        Some(r) if r["ok"] == true => r,
        other => panic!(
            "{req} answered {other:?}; status now: {:?}\nsupervisor stderr:\n{}",
            sv.try_status_json(),
            sv.stderr()
        ),
    }
}

/// The daemon received SIGTERM first (the stop signal reached it, not just a SIGKILL).
fn assert_got_sigterm(sv: &Sv) {
    let log = read(&sv.path("signals"));
    assert!(
        log.lines().next() == Some("SIGTERM"),
        "the daemon's signal log: {log:?}\nsupervisor stderr:\n{}",
        sv.stderr()
    );
}

fn stop_kills_the_daemon(ignore_term: bool) {
    let Some((sv, daemon)) = started(ignore_term) else {
        return;
    };
    answer(&sv, &json!({"op": "stop", "programs": ["daemon"]}));
    let s = sv.program("daemon");
    assert_eq!(s["state"], "STOPPED", "{s}");
    assert!(!alive(daemon), "the daemon {daemon} outlived `stop`");
    assert_got_sigterm(&sv);
}

#[test]
fn stop_after_a_mainpid_handover_terminates_the_daemon() {
    stop_kills_the_daemon(false);
}

#[test]
fn stop_after_a_mainpid_handover_kills_a_daemon_that_ignores_sigterm() {
    stop_kills_the_daemon(true);
}

#[test]
fn restart_after_a_mainpid_handover_replaces_a_daemon_that_ignores_sigterm() {
    let Some((sv, first)) = started(true) else {
        return;
    };
    answer(&sv, &json!({"op": "restart", "programs": ["daemon"]}));
    let second = wait_daemon(&sv, 2);
    assert_ne!(first, second);
    assert!(!alive(first), "the first daemon {first} outlived `restart`");
    assert_got_sigterm(&sv);
}

#[test]
fn shutdown_after_a_mainpid_handover_kills_a_daemon_that_ignores_sigterm() {
    let Some((mut sv, daemon)) = started(true) else {
        return;
    };
    sv.sigterm();
    // Bounded by WAIT (20 s), far below the configured shutdown_timeout (120 s): only the
    // program's own stopwaitsecs (1 s) may pass before SIGKILL.
    let code = sv.wait_exit();
    assert_eq!(code, 0, "{}", sv.stderr());
    assert!(
        !alive(daemon),
        "the daemon {daemon} outlived the supervisor"
    );
    assert_got_sigterm(&sv);
}

#[test]
fn stop_returns_when_the_wrapper_reaped_the_daemon_itself() {
    // A wrapper that stays and waits for its daemon reaps it: the supervisor never gets the
    // daemon's exit status. The stop must end anyway (at the SIGKILL that finds nobody), not
    // leave the program STOPPING for good.
    if !require(Requirement::SystemdNotify) {
        return;
    }
    let dir = Sv::new_dir();
    let pids = dir.path().join("pids");
    let signals = dir.path().join("signals");
    let script = "\"$3\" --signal-log \"$2\" --print armed >> \"$1.armed\" & d=$!; echo $d >> \"$1\"; \
                  systemd-notify --ready --pid=$d; wait $d; exec sleep 3600";
    let argv = [
        "/bin/sh",
        "-c",
        script,
        "sh",
        &pids.display().to_string(),
        &signals.display().to_string(),
        &test_child().display().to_string(),
    ]
    .iter()
    .map(|a| toml_str(a))
    .collect::<Vec<_>>()
    .join(", ");
    let config = format!(
        "[program.daemon]\ncommand = [{argv}]\nready = {{ kind = \"notify\" }}\n\
         stopwaitsecs = \"1s\"\nautorestart = false\ncritical = false\n"
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let daemon = wait_daemon(&sv, 1);
    answer(&sv, &json!({"op": "stop", "programs": ["daemon"]}));
    assert_eq!(sv.program("daemon")["state"], "STOPPED");
    assert!(!alive(daemon));
    assert_got_sigterm(&sv);
}
