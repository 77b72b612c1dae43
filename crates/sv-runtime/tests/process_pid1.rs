//! The reaper and orphan signalling as PID 1 of a PID namespace, the way the supervisor runs in
//! a container.
//!
//! `pid1_mode_under_unshare` re-runs this test binary under `unshare --pid --fork --mount-proc`
//! so that `pid1_inside_a_namespace` (ignored in ordinary runs) executes as PID 1 with a private
//! /proc. Creating a PID namespace needs root or user namespaces; without them the test prints a
//! skip line.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::fs;
use std::process::{Command, Stdio};

use sv_core::machine::ExitStatus;
use sv_core::signal::Signal;
use sv_runtime::reap::{self, ReaperMode};
use sv_runtime::signals;
use sv_testkit::{WAIT, wait_for};

const INNER: &str = "pid1_inside_a_namespace";

fn unshare(args: &[&str]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"]).args(args);
    cmd
}

#[test]
fn pid1_mode_under_unshare() {
    let usable = unshare(&["true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !sv_testkit::require_that(
        sv_testkit::Requirement::Unshare,
        usable,
        "cannot create a PID namespace here (unshare --pid needs root)",
    ) {
        return;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let out = unshare(&[
        exe.to_str().expect("utf-8 path"),
        INNER,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .output()
    .expect("running the test binary under unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the PID-1 run failed:\n{text}");
    // Proves the inner test ran rather than being filtered out.
    assert!(text.contains("1 passed"), "{text}");
}

/// `sleep` processes that are not zombies and whose parent is PID 1 (us, inside the namespace).
fn orphaned_sleeps() -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid: &i32| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(close) = stat.rfind(')') else {
                return false;
            };
            let comm = stat.get(stat.find('(').map_or(0, |o| o + 1)..close);
            let mut rest = stat[close + 1..].split_whitespace();
            let state = rest.next();
            let ppid = rest.next();
            comm == Some("sleep") && state != Some("Z") && ppid == Some("1")
        })
        .collect()
}

#[test]
#[ignore = "runs as PID 1 inside a PID namespace, started by pid1_mode_under_unshare"]
fn pid1_inside_a_namespace() {
    assert_eq!(std::process::id(), 1, "must run as PID 1");
    assert_eq!(reap::init().unwrap(), ReaperMode::Pid1);

    let script = "sleep 60 & sleep 60 & sleep 60 &";
    let argv: Vec<String> = ["sh", "-c", script].map(String::from).to_vec();
    let sh = sv_runtime::spawn::spawn_probe(&argv, &[]).expect("spawn sh");
    let mut seen: HashMap<i32, ExitStatus> = HashMap::new();
    let mut wait_exit = |pid: i32| {
        wait_for(&format!("pid {pid} to be reaped"), WAIT, || {
            seen.extend(reap::reap().exited);
            seen.get(&pid).copied()
        })
    };
    assert_eq!(wait_exit(sh), ExitStatus::Code(0));
    let orphans = wait_for("3 orphans re-parented to PID 1", WAIT, || {
        let found = orphaned_sleeps();
        (found.len() == 3).then_some(found)
    });
    assert_eq!(signals::descendants(), orphans);

    // kill(-1) reaches everything but us.
    let n = signals::signal_orphans(Signal::Term, ReaperMode::Pid1);
    assert_eq!(n, 3);
    for &o in &orphans {
        assert_eq!(
            wait_exit(o),
            ExitStatus::Signaled(libc::SIGTERM),
            "orphan {o}"
        );
    }
    assert!(reap::reap().no_children);
    assert_eq!(signals::signal_orphans(Signal::Term, ReaperMode::Pid1), 0);
}
