//! Reload end to end with the real binary: a running set of five programs, then configs that
//! add, remove, change one, change nothing, and are invalid, through `iot2mqtt-sv reload`
//! (and `--dry-run`), and the same through `SIGHUP`; more `numprocs` instances, a `[supervisor]`
//! key that only applies at start, and a `[bridge]` change (which restarts the bridge alone).
//! Programs the reload does not change keep their pids and receive no signal at all (each
//! program appends every signal it gets to a shared log).

mod common;

use std::path::Path;

use common::{Sv, child_cmd, lines};
use nix::sys::signal::Signal;
use serde_json::Value;

/// `[program.NAME]` running test-child, logging signals as `NAME SIGNAL`.
fn program(log: &Path, name: &str, env: &str) -> String {
    format!(
        "[program.{name}]\ncommand = {}\nstartsecs = 0\nenvironment = {{ V = \"{env}\" }}\n\n",
        child_cmd(&[
            "--signal-log",
            &log.display().to_string(),
            "--signal-tag",
            name
        ])
    )
}

fn config(log: &Path, programs: &[(&str, &str)]) -> String {
    programs
        .iter()
        .map(|(n, env)| program(log, n, env))
        .collect()
}

/// `(exit code, stdout, stderr)` of `iot2mqtt-sv ARGS`.
fn run(sv: &Sv, args: &[&str]) -> (i32, String, String) {
    let out = sv.cli(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Name → pid of every program in `status`.
fn pids(sv: &Sv) -> Vec<(String, Option<i64>)> {
    sv.status_json()["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .map(|p| (p["name"].as_str().unwrap_or("").into(), p["pid"].as_i64()))
        .collect()
}

fn pid_of(all: &[(String, Option<i64>)], name: &str) -> Option<i64> {
    all.iter().find(|(n, _)| n == name).and_then(|(_, p)| *p)
}

#[test]
fn reload_applies_only_the_difference_and_refuses_an_invalid_config() {
    let dir = Sv::new_dir();
    let log = dir.path().join("signals.log");
    let five = [
        ("p1", "a"),
        ("p2", "a"),
        ("p3", "a"),
        ("p4", "a"),
        ("p5", "a"),
    ];
    let sv = Sv::spawn_in(dir, &config(&log, &five), Default::default());
    sv.wait_socket();
    for (n, _) in five {
        sv.wait_state(n, "RUNNING");
    }
    let start = pids(&sv);
    let write = |programs: &[(&str, &str)]| {
        std::fs::write(&sv.config, config(&log, programs)).expect("writing the config");
    };

    // Add p6: started before the reply; nothing else touched.
    let six = [five.as_slice(), &[("p6", "a")]].concat();
    write(&six);
    let (code, out, err) = run(&sv, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("add      p6\n"), "{out}");
    assert!(out.contains("keep     p1, p2, p3, p4, p5\n"), "{out}");
    assert!(out.contains("p6: running"), "{out}");
    let now = pids(&sv);
    assert!(pid_of(&now, "p6").is_some());
    for (n, _) in five {
        assert_eq!(pid_of(&now, n), pid_of(&start, n), "{n} was touched");
    }

    // Remove p5: stopped and gone from status.
    let p5 = pid_of(&now, "p5").expect("p5 pid");
    let without_p5: Vec<_> = six.iter().copied().filter(|(n, _)| *n != "p5").collect();
    write(&without_p5);
    let (code, out, err) = run(&sv, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("remove   p5\n"), "{out}");
    assert!(out.contains("p5: removed"), "{out}");
    let now = pids(&sv);
    assert_eq!(pid_of(&now, "p5"), None);
    assert!(now.iter().all(|(n, _)| n != "p5"), "{now:?}");
    assert!(!common::alive(p5 as i32), "p5's process is gone");

    // Change p3's environment: p3 restarts, nothing else.
    let changed: Vec<_> = without_p5
        .iter()
        .map(|&(n, e)| if n == "p3" { (n, "b") } else { (n, e) })
        .collect();
    write(&changed);
    let (code, out, err) = run(&sv, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("restart  p3 (environment)\n"), "{out}");
    let after_change = pids(&sv);
    assert_ne!(pid_of(&after_change, "p3"), pid_of(&now, "p3"));
    for n in ["p1", "p2", "p4", "p6"] {
        assert_eq!(pid_of(&after_change, n), pid_of(&now, n), "{n} was touched");
    }

    // The same config again: nothing happens.
    let (code, out, err) = run(&sv, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing to change"), "{out}");
    assert_eq!(pids(&sv), after_change);

    // Invalid: every error with its position, exit 2, the running set untouched, one log line.
    let valid = std::fs::read_to_string(&sv.config).expect("config");
    std::fs::write(
        &sv.config,
        format!("{valid}[program.bad]\ncommand = \"x\"\nprority = 1\nstartsecs = \"soon\"\n"),
    )
    .expect("writing the config");
    let (code, out, err) = run(&sv, &["reload"]);
    assert_eq!(code, 2, "{out}{err}");
    let first_line = valid.lines().count() + 1;
    assert!(
        err.contains(&format!(
            "line {}, column 1: unknown key \"prority\"",
            first_line + 2
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("line {}, column 13:", first_line + 3)),
        "{err}"
    );
    assert_eq!(pids(&sv), after_change);
    sv.wait_stderr("reload refused, nothing changed");
    let refusals = sv
        .stderr()
        .lines()
        .filter(|l| l.contains("reload refused"))
        .count();
    assert_eq!(refusals, 1, "{}", sv.stderr());

    // Only the programs the reloads removed or changed ever got a signal.
    let mut signalled = lines(&log);
    signalled.sort();
    assert_eq!(signalled, ["p3 SIGTERM", "p5 SIGTERM"]);
}

#[test]
fn sighup_reloads_like_the_cli_and_dry_run_changes_nothing() {
    let dir = Sv::new_dir();
    let log = dir.path().join("signals.log");
    let two = [("p1", "a"), ("p2", "a")];
    let sv = Sv::spawn_in(dir, &config(&log, &two), Default::default());
    sv.wait_socket();
    sv.wait_state("p1", "RUNNING");
    sv.wait_state("p2", "RUNNING");
    let start = pids(&sv);

    std::fs::write(
        &sv.config,
        config(&log, &[("p1", "a"), ("p2", "b"), ("p3", "a")]),
    )
    .expect("writing the config");
    let (code, out, err) = run(&sv, &["reload", "--dry-run", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let reply: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(reply["applied"], false);
    assert_eq!(reply["plan"]["added"], serde_json::json!(["p3"]));
    assert_eq!(reply["plan"]["changed"][0]["name"], "p2");
    assert_eq!(pids(&sv), start, "a dry run changes nothing");

    // SIGHUP is a reload now, not forwarded to the programs.
    sv.signal(Signal::SIGHUP);
    sv.wait_state("p3", "RUNNING");
    let p2 = sv.wait_program("a new pid", "p2", |p| {
        p["state"] == "RUNNING" && p["pid"].as_i64() != pid_of(&start, "p2")
    });
    assert!(p2["pid"].is_i64());
    assert_eq!(pid_of(&pids(&sv), "p1"), pid_of(&start, "p1"));
    assert_eq!(lines(&log), ["p2 SIGTERM"], "p1 got no HUP");
}

#[test]
fn more_instances_add_only_the_new_ones_and_start_only_keys_are_named() {
    let dir = Sv::new_dir();
    let group = |n: u32, head: &str| {
        format!(
            "{head}[program.worker]\ncommand = {}\nstartsecs = 0\nnumprocs = {n}\n",
            child_cmd(&[])
        )
    };
    let sv = Sv::spawn_in(dir, &group(2, ""), Default::default());
    sv.wait_socket();
    sv.wait_state("worker_00", "RUNNING");
    sv.wait_state("worker_01", "RUNNING");
    let start = pids(&sv);

    std::fs::write(
        &sv.config,
        group(3, "[supervisor]\nlog_buffer_lines = 10\n\n"),
    )
    .expect("writing the config");
    let (code, out, err) = run(&sv, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("add      worker_02\n"), "{out}");
    assert!(out.contains("keep     worker_00, worker_01\n"), "{out}");
    assert!(
        out.contains("not applied until the supervisor restarts: [supervisor] log_buffer_lines"),
        "{out}"
    );
    let now = pids(&sv);
    assert!(pid_of(&now, "worker_02").is_some());
    for n in ["worker_00", "worker_01"] {
        assert_eq!(pid_of(&now, n), pid_of(&start, n), "{n} was touched");
    }
    sv.wait_stderr("reload: these changes take effect only when the supervisor restarts");
    // `restart worker` now covers the new instance too.
    let (code, out, err) = run(&sv, &["restart", "worker"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("worker_02: running"), "{out}");
}

#[test]
fn a_bridge_table_change_restarts_only_the_bridge() {
    let Some(broker) = sv_testkit::Mosquitto::start() else {
        return;
    };
    let dir = Sv::new_dir();
    let with_qos = |qos: u8| {
        format!(
            "[bridge]\nhost = \"127.0.0.1\"\nport = {}\ninstance = \"r1\"\nqos = {qos}\n\n\
             [program.dev]\ncommand = {}\nstartsecs = 0\n",
            broker.port,
            child_cmd(&[])
        )
    };
    let sv = Sv::spawn_in(dir, &with_qos(1), Default::default());
    sv.wait_socket();
    sv.wait_state("bridge", "RUNNING");
    sv.wait_state("dev", "RUNNING");
    let start = pids(&sv);

    std::fs::write(&sv.config, with_qos(0)).expect("writing the config");
    let (code, out, err) = run(&sv, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("restart  bridge ([bridge])\n"), "{out}");
    assert!(out.contains("keep     dev\n"), "{out}");
    let now = pids(&sv);
    assert!(pid_of(&now, "bridge").is_some());
    assert_ne!(pid_of(&now, "bridge"), pid_of(&start, "bridge"));
    assert_eq!(pid_of(&now, "dev"), pid_of(&start, "dev"));
}

#[test]
fn the_reply_comes_once_dependent_changed_programs_run_their_new_definitions() {
    let dir = Sv::new_dir();
    let pair = |v: &str| {
        format!(
            "[program.base]\ncommand = {c}\nstartsecs = 0\nenvironment = {{ V = \"{v}\" }}\n\n\
             [program.top]\ncommand = {c}\nstartsecs = 0\ndepends_on = [\"base\"]\n\
             environment = {{ V = \"{v}\" }}\n",
            c = child_cmd(&[])
        )
    };
    let sv = Sv::spawn_in(dir, &pair("a"), Default::default());
    sv.wait_socket();
    sv.wait_state("top", "RUNNING");
    let start = pids(&sv);
    std::fs::write(&sv.config, pair("b")).expect("writing the config");
    let (code, out, err) = run(&sv, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    // No wait here: the reply itself promises both run their new definitions.
    let status = sv.status_json();
    for n in ["base", "top"] {
        let p = common::find_program(&status, n).expect("program");
        assert_eq!(p["state"], "RUNNING", "{status}");
        assert_ne!(p["pid"].as_i64(), pid_of(&start, n), "{n}: {status}");
    }
}

#[test]
fn a_new_user_can_still_report_readiness_over_sd_notify() {
    let dir = Sv::new_dir();
    let cfg = |user: &str| {
        format!(
            "[program.n]\ncommand = {}\n{user}startretries = 0\ncritical = false\n\
             ready = {{ kind = \"notify\", timeout = \"10s\" }}\n",
            child_cmd(&["--notify-ready"])
        )
    };
    let sv = Sv::spawn_in(dir, &cfg(""), Default::default());
    sv.wait_socket();
    sv.wait_state("n", "RUNNING");
    std::fs::write(&sv.config, cfg("user = \"nobody\"\n")).expect("writing the config");
    let (code, out, err) = run(&sv, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("restart  n (user)\n"), "{out}");
    assert!(out.contains("n: running"), "{out}");
}
