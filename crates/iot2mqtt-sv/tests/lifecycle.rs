//! End-to-end lifecycle of the real `iot2mqtt-sv run`: start order, restarts and backoff,
//! FATAL and critical programs, the shutdown sequence and its bounds, signal forwarding, the
//! environment programs get, and spawn failures.
//!
//! Every test runs real `test-child` programs under the real binary and synchronises on what
//! can be observed from outside: the status over the control socket, files the programs write,
//! the supervisor's event log (JSON lines on stderr with `log_format = "json"`) and its exit.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{Sv, alive, child_cmd, lines, read, toml_str, wait_lines, wait_pid_file};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use sv_testkit::{WAIT, wait_for, wait_until};

/// The supervisor's own event lines (tracing JSON on stderr) whose message is `message`.
fn events(sv: &Sv, message: &str) -> Vec<Value> {
    sv.stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

fn kill9(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("SIGKILL");
}

#[test]
fn starts_programs_by_priority_with_equal_priorities_together() {
    let dir = Sv::new_dir();
    let order = dir.path().join("order.txt");
    let o = order.display().to_string();
    let prog = |name: &str, prio: i32, startsecs: &str| {
        format!(
            "[program.{name}]\ncommand = {}\npriority = {prio}\nstartsecs = {startsecs}\n",
            child_cmd(&["--append", &o, name])
        )
    };
    // Names sort against priorities so that config order, name order and start order differ.
    let config = format!(
        "[supervisor]\nlog_format = \"json\"\n\n{}{}{}{}",
        prog("alpha", 30, "0"),
        prog("zulu", 10, "0"),
        // Never ready: the program after it must still start, since priority orders starts but
        // does not wait for readiness (only `depends_on` does).
        prog("mid_b", 20, "\"1h\""),
        prog("mid_a", 20, "0"),
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    wait_lines(&order, 4);
    sv.wait_state("alpha", "RUNNING");
    sv.wait_state("mid_b", "STARTING");
    wait_until("four spawn events", || events(&sv, "spawned").len() == 4);
    let spawned: Vec<String> = events(&sv, "spawned")
        .iter()
        .map(|e| e["program"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(spawned, ["zulu", "mid_a", "mid_b", "alpha"]);
    let mut ran = lines(&order);
    ran.sort();
    assert_eq!(ran, ["alpha", "mid_a", "mid_b", "zulu"]);
}

#[test]
fn crash_loop_counts_restarts_and_backs_off_exponentially() {
    let dir = Sv::new_dir();
    let runs = dir.path().join("runs.txt");
    let config = format!(
        r#"[supervisor]
log_format = "json"

[program.crash]
command = {}
startsecs = 0
autorestart = true
critical = false
backoff = {{ initial = "20ms", max = "160ms", multiplier = 2, jitter = 0 }}
"#,
        child_cmd(&[
            "--append",
            &runs.display().to_string(),
            "run",
            "--exit",
            "3",
            "--exit-after-ms",
            "0"
        ])
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let seen = sv.wait_program("BACKOFF", "crash", |p| p["state"] == "BACKOFF");
    assert_eq!(seen["reason"], "exited with exit code 3", "{seen}");
    assert_eq!(seen["exit_status"], 3, "{seen}");
    let p = sv.wait_program("6 restarts", "crash", |p| {
        p["restarts"].as_u64().is_some_and(|r| r >= 6)
    });
    assert_ne!(
        p["state"], "FATAL",
        "runs that became ready never exhaust startretries"
    );
    wait_until("six backoff events", || {
        events(&sv, "backing off before restart").len() >= 6
    });
    let delays: Vec<(u64, u64)> = events(&sv, "backing off before restart")
        .iter()
        .take(6)
        .map(|e| {
            (
                e["attempt"].as_u64().expect("attempt"),
                e["delay_ms"].as_u64().expect("delay_ms"),
            )
        })
        .collect();
    // Without jitter the delays are exact: doubling from `initial`, capped at `max`.
    assert_eq!(
        delays,
        [(0, 20), (1, 40), (2, 80), (3, 160), (4, 160), (5, 160)]
    );
    assert!(lines(&runs).len() >= 6);
}

#[test]
fn failed_starts_beyond_startretries_make_a_program_fatal() {
    let dir = Sv::new_dir();
    let attempts = dir.path().join("attempts.txt");
    let config = format!(
        r#"[program.flaky]
command = {}
startsecs = "1h"
startretries = 2
critical = false
backoff = {{ initial = "10ms", jitter = 0 }}

[program.steady]
command = {}
startsecs = 0
"#,
        child_cmd(&[
            "--append",
            &attempts.display().to_string(),
            "attempt",
            "--exit",
            "5",
            "--exit-after-ms",
            "0"
        ]),
        child_cmd(&[])
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let p = sv.wait_state("flaky", "FATAL");
    let reason = p["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("exited before ready with exit code 5")
            && reason.contains("gave up after 3 failed starts"),
        "{p}"
    );
    // startretries = 2: the first start plus two retries, then no more.
    assert_eq!(lines(&attempts).len(), 3);
    // A non-critical FATAL leaves everything else running.
    let status = sv.status_json();
    assert_eq!(status["shutting_down"], false, "{status}");
    assert_eq!(sv.program("steady")["state"], "RUNNING");
    assert_eq!(
        lines(&attempts).len(),
        3,
        "a FATAL program is not started again"
    );
}

#[test]
fn critical_fatal_shuts_down_and_exits_with_its_code() {
    let dir = Sv::new_dir();
    let sig = dir.path().join("other.signals");
    let config = format!(
        r#"[program.crit]
command = {}
startsecs = "1h"
startretries = 1
backoff = {{ initial = "10ms", jitter = 0 }}
# `other` reports readiness only once its signal handling is in place, so the shutdown's
# SIGTERM cannot reach it before it can log it.
depends_on = ["other"]

[program.other]
command = {}
ready = {{ kind = "notify" }}
"#,
        child_cmd(&["--exit", "7", "--exit-after-ms", "0"]),
        child_cmd(&["--signal-log", &sig.display().to_string(), "--notify-ready"])
    );
    let mut sv = Sv::spawn_in(dir, &config, Default::default());
    assert_eq!(sv.wait_exit(), 7, "stderr:\n{}", sv.stderr());
    assert_eq!(lines(&sig), ["SIGTERM"], "the other program was stopped");
    assert!(sv.stderr().contains("critical program crit is FATAL"));
}

#[test]
fn critical_exit_without_autorestart_exits_with_its_code() {
    let config = format!(
        "[program.job]\ncommand = {}\nstartsecs = 0\nautorestart = false\n",
        child_cmd(&["--exit", "9", "--exit-after-ms", "0"])
    );
    let mut sv = Sv::spawn(&config, Default::default());
    assert_eq!(sv.wait_exit(), 9, "stderr:\n{}", sv.stderr());
}

#[test]
fn expected_exit_without_autorestart_keeps_running() {
    let dir = Sv::new_dir();
    let config = format!(
        "[program.job]\ncommand = {}\nstartsecs = 0\nautorestart = false\n\n\
         [program.steady]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&["--exit", "0", "--exit-after-ms", "0"]),
        child_cmd(&[])
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let p = sv.wait_state("job", "EXITED");
    assert_eq!(p["exit_status"], 0);
    assert_eq!(sv.status_json()["shutting_down"], false);
}

#[test]
fn critical_program_killed_by_a_signal_exits_128_plus_signal() {
    let dir = Sv::new_dir();
    let pidf = dir.path().join("job.pid");
    let config = format!(
        "[program.job]\ncommand = {}\nstartsecs = 0\nautorestart = false\n",
        child_cmd(&["--pid-file", &pidf.display().to_string()])
    );
    let mut sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_state("job", "RUNNING");
    kill9(wait_pid_file(&pidf));
    assert_eq!(sv.wait_exit(), 128 + 9, "stderr:\n{}", sv.stderr());
}

/// Four programs sharing one signal log: `d` (priority 3) stops first, then `b` and `c`
/// (priority 2) together, then `a`. `b` ignores SIGTERM and waits for a SIGKILL.
fn ordered_shutdown_config(dir: &std::path::Path) -> String {
    let log = dir.join("signals.log").display().to_string();
    let mut config = String::from("[supervisor]\nshutdown_timeout = \"1h\"\n");
    for (name, prio, extra) in [
        ("a", 1, vec![]),
        ("b", 2, vec!["--ignore-term"]),
        ("c", 2, vec![]),
        ("d", 3, vec![]),
    ] {
        let pid = dir.join(format!("{name}.pid")).display().to_string();
        let mut args = vec![
            "--signal-log",
            &log,
            "--signal-tag",
            name,
            "--pid-file",
            &pid,
        ];
        args.extend(extra);
        config.push_str(&format!(
            "\n[program.{name}]\ncommand = {}\npriority = {prio}\nstartsecs = 0\nstopwaitsecs = \"1h\"\n",
            child_cmd(&args)
        ));
    }
    config
}

#[test]
fn sigterm_stops_in_reverse_priority_order_with_equal_priorities_together() {
    let dir = Sv::new_dir();
    let config = ordered_shutdown_config(dir.path());
    let log = dir.path().join("signals.log");
    let b_pid_file = dir.path().join("b.pid");
    let mut sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    for n in ["a", "b", "c", "d"] {
        sv.wait_state(n, "RUNNING");
        // test-child writes its pid file once it handles signals.
        wait_pid_file(&sv.path(&format!("{n}.pid")));
    }
    let b = wait_pid_file(&b_pid_file);
    sv.sigterm();
    let got = wait_lines(&log, 3);
    assert_eq!(got[0], "d SIGTERM", "{got:?}");
    let mut level2 = got[1..3].to_vec();
    level2.sort();
    assert_eq!(level2, ["b SIGTERM", "c SIGTERM"], "{got:?}");
    // `c` has exited; `b` still runs: `a` must not have been asked to stop yet.
    sv.wait_program("c stopped", "c", |p| p["pid"].is_null());
    assert!(alive(b));
    let status = sv.status_json();
    assert_eq!(status["shutting_down"], true);
    assert_eq!(lines(&log).len(), 3, "a was signalled before b exited");
    kill9(b);
    let got = wait_lines(&log, 4);
    assert_eq!(got[3], "a SIGTERM", "{got:?}");
    assert_eq!(sv.wait_exit(), 0, "stderr:\n{}", sv.stderr());
}

#[test]
fn second_sigterm_stops_every_program_at_once() {
    let dir = Sv::new_dir();
    let config = ordered_shutdown_config(dir.path());
    let log = dir.path().join("signals.log");
    let b_pid_file = dir.path().join("b.pid");
    let mut sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    for n in ["a", "b", "c", "d"] {
        sv.wait_state(n, "RUNNING");
        // test-child writes its pid file once it handles signals.
        wait_pid_file(&sv.path(&format!("{n}.pid")));
    }
    let b = wait_pid_file(&b_pid_file);
    sv.sigterm();
    wait_lines(&log, 3);
    sv.wait_program("c stopped", "c", |p| p["pid"].is_null());
    assert_eq!(lines(&log).len(), 3);
    sv.sigterm();
    // `b` still ignores its SIGTERM, yet `a` is now stopped without waiting for it.
    let got = wait_lines(&log, 4);
    assert!(got[3..].contains(&"a SIGTERM".to_string()), "{got:?}");
    assert!(alive(b));
    kill9(b);
    assert_eq!(sv.wait_exit(), 0, "stderr:\n{}", sv.stderr());
}

#[test]
fn a_program_ignoring_sigterm_is_killed_after_stopwaitsecs() {
    let dir = Sv::new_dir();
    let sig = dir.path().join("stubborn.signals");
    let pidf = dir.path().join("stubborn.pid");
    let config = format!(
        "[supervisor]\nshutdown_timeout = \"1h\"\n\n[program.stubborn]\ncommand = {}\nstartsecs = 0\nstopwaitsecs = \"200ms\"\n",
        child_cmd(&[
            "--ignore-term",
            "--signal-log",
            &sig.display().to_string(),
            "--pid-file",
            &pidf.display().to_string()
        ])
    );
    let mut sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_state("stubborn", "RUNNING");
    let pid = wait_pid_file(&pidf);
    sv.sigterm();
    assert_eq!(sv.wait_exit(), 0, "stderr:\n{}", sv.stderr());
    assert_eq!(lines(&sig), ["SIGTERM"]);
    assert!(!alive(pid), "the program outlived the supervisor");
    assert!(sv.stderr().contains("did not stop in time: SIGKILL"));
}

#[test]
fn shutdown_timeout_bounds_a_stop_longer_than_it() {
    let dir = Sv::new_dir();
    let pidf = dir.path().join("stubborn.pid");
    let config = format!(
        "[supervisor]\nshutdown_timeout = \"300ms\"\norphan_grace = \"50ms\"\n\n\
         [program.stubborn]\ncommand = {}\nstartsecs = 0\nstopwaitsecs = \"1h\"\n",
        child_cmd(&["--ignore-term", "--pid-file", &pidf.display().to_string()])
    );
    let mut sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_state("stubborn", "RUNNING");
    let pid = wait_pid_file(&pidf);
    sv.sigterm();
    // With stopwaitsecs = 1h only the shutdown budget can end this within the wait bound.
    assert_eq!(sv.wait_exit(), 0, "stderr:\n{}", sv.stderr());
    assert!(!alive(pid), "the program outlived the supervisor");
}

#[test]
fn usr1_usr2_winch_are_forwarded_to_every_program_and_hup_reloads_instead() {
    let dir = Sv::new_dir();
    let mut config = String::new();
    for n in ["one", "two"] {
        let log = dir
            .path()
            .join(format!("{n}.signals"))
            .display()
            .to_string();
        let pid = dir.path().join(format!("{n}.pid")).display().to_string();
        config.push_str(&format!(
            "[program.{n}]\ncommand = {}\nstartsecs = 0\n\n",
            child_cmd(&["--signal-log", &log, "--pid-file", &pid])
        ));
    }
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    for n in ["one", "two"] {
        sv.wait_state(n, "RUNNING");
        // Written once test-child handles signals: earlier, SIGHUP would kill it.
        wait_pid_file(&sv.path(&format!("{n}.pid")));
    }
    // SIGHUP is the supervisor's own (reload, as supervisord): the programs never see it, so
    // their logs below start with SIGUSR1.
    sv.signal(Signal::SIGHUP);
    sv.wait_stderr("received SIGHUP: reloading the config");
    let sigs = [
        (Signal::SIGUSR1, "SIGUSR1"),
        (Signal::SIGUSR2, "SIGUSR2"),
        (Signal::SIGWINCH, "SIGWINCH"),
    ];
    for (i, (sig, name)) in sigs.iter().enumerate() {
        sv.signal(*sig);
        // One at a time, so the logs also prove the order is kept.
        for n in ["one", "two"] {
            let got = wait_lines(&sv.path(&format!("{n}.signals")), i + 1);
            assert_eq!(got[i], *name, "{n}: {got:?}");
        }
    }
    // The supervisor itself is unaffected.
    assert_eq!(sv.status_json()["shutting_down"], false);
    assert_eq!(sv.program("one")["state"], "RUNNING");
}

#[test]
fn environment_directory_and_umask_are_applied() {
    let dir = Sv::new_dir();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    let env_file = dir.path().join("env.txt");
    let ids_file = dir.path().join("ids.txt");
    let config = format!(
        r#"[program.envy]
command = {}
directory = {}
umask = "027"
startsecs = 0
environment = {{ GREETING = "hello world", WORKERS = 4, FROM_SV = "${{SV_TEST_VALUE:-unset}}", PRICE = "$$5" }}
"#,
        child_cmd(&[
            "--report-env",
            &env_file.display().to_string(),
            "--report-ids",
            &ids_file.display().to_string()
        ]),
        toml_str(&work.display().to_string())
    );
    let sv = Sv::spawn_in(
        dir,
        &config,
        common::SvOptions {
            env: vec![("SV_TEST_VALUE".into(), "from-the-supervisor".into())],
            ..Default::default()
        },
    );
    sv.wait_socket();
    let env = wait_for("the environment report", WAIT, || {
        let t = read(&env_file);
        (!t.is_empty()).then_some(t)
    });
    let has = |l: &str| env.lines().any(|x| x == l);
    for want in [
        "GREETING=hello world".to_string(),
        "WORKERS=4".into(),
        "FROM_SV=from-the-supervisor".into(),
        "PRICE=$5".into(),
        "IOT2MQTT_SV_PROGRAM=envy".into(),
        format!("IOT2MQTT_SV_SOCKET={}", sv.socket.display()),
        format!("@cwd={}", work.display()),
    ] {
        assert!(has(&want), "missing {want:?} in:\n{env}");
    }
    let ids = wait_for("the ids report", WAIT, || {
        let t = read(&ids_file);
        (!t.is_empty()).then_some(t)
    });
    assert!(ids.lines().any(|l| l == "umask=0027"), "{ids}");
}

#[test]
fn a_missing_binary_is_fatal_with_command_not_found() {
    let config = format!(
        "[program.ghost]\ncommand = [\"/nonexistent/bin/ghost\"]\nstartretries = 1\ncritical = false\n\
         backoff = {{ initial = \"10ms\", jitter = 0 }}\n\n[program.steady]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&[])
    );
    let sv = Sv::start(&config);
    let p = sv.wait_state("ghost", "FATAL");
    let reason = p["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("command not found") && reason.contains("/nonexistent/bin/ghost"),
        "{p}"
    );
    assert_eq!(p["exit_status"], 127, "{p}");
    assert_eq!(sv.program("steady")["state"], "RUNNING");
    assert_eq!(sv.status_json()["shutting_down"], false);
}

#[test]
fn critical_exit_0_outside_exitcodes_does_not_exit_0() {
    // Regression: an unexpected exit with code 0 (`exitcodes = [3]`) ended `run` with 0, which
    // a container runtime reads as a clean stop.
    let config = format!(
        "[program.job]\ncommand = {}\nstartsecs = 0\nautorestart = false\nexitcodes = [3]\n",
        child_cmd(&["--exit", "0", "--exit-after-ms", "0"])
    );
    let mut sv = Sv::spawn(&config, Default::default());
    assert_eq!(sv.wait_exit(), 1, "stderr:\n{}", sv.stderr());
}

#[test]
fn sigint_and_sigquit_also_shut_down_gracefully() {
    for (sig, _) in [(Signal::SIGINT, "INT"), (Signal::SIGQUIT, "QUIT")] {
        let dir = Sv::new_dir();
        let log = dir.path().join("p.signals");
        let pidf = dir.path().join("p.pid");
        let config = format!(
            "[program.p]\ncommand = {}\nstartsecs = 0\nstopsignal = \"INT\"\n",
            child_cmd(&[
                "--signal-log",
                &log.display().to_string(),
                "--pid-file",
                &pidf.display().to_string()
            ])
        );
        let mut sv = Sv::spawn_in(dir, &config, Default::default());
        sv.wait_socket();
        sv.wait_state("p", "RUNNING");
        wait_pid_file(&pidf);
        sv.signal(sig);
        assert_eq!(sv.wait_exit(), 0, "{sig}: stderr:\n{}", sv.stderr());
        // The program gets its configured stopsignal, not the one the supervisor received.
        assert_eq!(lines(&log), ["SIGINT"], "{sig}");
    }
}

#[test]
fn sigterm_during_a_long_backoff_exits_at_once() {
    let config = format!(
        "[program.crash]\ncommand = {}\nstartsecs = 0\ncritical = false\n\
         backoff = {{ initial = \"1h\", max = \"1h\" }}\n",
        child_cmd(&["--exit", "3", "--exit-after-ms", "0"])
    );
    let mut sv = Sv::start(&config);
    sv.wait_state("crash", "BACKOFF");
    sv.sigterm();
    assert_eq!(sv.wait_exit(), 0, "stderr:\n{}", sv.stderr());
}

#[test]
fn a_critical_program_whose_command_is_missing_ends_run_with_127() {
    let config = "[program.ghost]\ncommand = [\"/nonexistent/bin/ghost\"]\nstartretries = 0\n";
    let mut sv = Sv::spawn(config, Default::default());
    assert_eq!(sv.wait_exit(), 127, "stderr:\n{}", sv.stderr());
}

#[test]
fn control_verbs_are_refused_during_a_shutdown() {
    let dir = Sv::new_dir();
    let pidf = dir.path().join("p.pid");
    let config = format!(
        "[supervisor]\nshutdown_timeout = \"1h\"\n\n[program.p]\ncommand = {}\nstartsecs = 0\nstopwaitsecs = \"1h\"\n",
        child_cmd(&["--ignore-term", "--pid-file", &pidf.display().to_string()])
    );
    let mut sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_state("p", "RUNNING");
    let pid = wait_pid_file(&pidf);
    sv.sigterm();
    wait_until("shutting_down in status", || {
        sv.status_json()["shutting_down"] == true
    });
    let out = sv.cli(&["restart", "p"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shutting down"),
        "{out:?}"
    );
    let health = sv.cli(&["health"]);
    assert_eq!(health.status.code(), Some(1), "{health:?}");
    kill9(pid);
    assert_eq!(sv.wait_exit(), 0);
}

#[test]
fn a_second_supervisor_on_a_live_socket_leaves_it_alone() {
    let config = format!("[program.p]\ncommand = {}\nstartsecs = 0\n", child_cmd(&[]));
    let first = Sv::start(&config);
    let first_pid = first.status_json()["supervisor"]["pid"].clone();
    // A second supervisor whose config names the first one's socket.
    let second_config = format!(
        "[supervisor]\ncontrol_socket = {}\n\n{config}",
        toml_str(&first.socket.display().to_string())
    );
    let mut second = Sv::spawn(
        &second_config,
        common::SvOptions {
            no_socket_env: true,
            ..Default::default()
        },
    );
    second.wait_stderr("another supervisor is listening");
    second.sigterm();
    assert_eq!(second.wait_exit(), 0, "stderr:\n{}", second.stderr());
    // Exiting must not remove a socket it never owned.
    let st = first
        .try_status_json()
        .expect("the first supervisor's socket is gone");
    assert_eq!(st["supervisor"]["pid"], first_pid);
}

#[test]
fn a_stale_control_socket_is_replaced() {
    let dir = Sv::new_dir();
    let stale = dir.path().join("control.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("binding a stale socket"));
    assert!(stale.exists());
    let config = format!("[program.p]\ncommand = {}\nstartsecs = 0\n", child_cmd(&[]));
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_state("p", "RUNNING");
}

#[test]
fn run_honours_the_socket_flag() {
    let dir = Sv::new_dir();
    let flag_socket = dir.path().join("flag.sock");
    let config = format!("[program.p]\ncommand = {}\nstartsecs = 0\n", child_cmd(&[]));
    let mut sv = Sv::spawn_in(
        dir,
        &config,
        common::SvOptions {
            args: vec!["-s".into(), flag_socket.display().to_string()],
            ..Default::default()
        },
    );
    // `-s` wins over `$IOT2MQTT_SV_SOCKET` (which the helper sets to control.sock).
    sv.socket = flag_socket.clone();
    sv.wait_socket();
    assert!(!sv.path("control.sock").exists());
    sv.sigterm();
    assert_eq!(sv.wait_exit(), 0);
    assert!(!flag_socket.exists(), "the socket is removed at exit");
}

#[test]
fn a_missing_working_directory_is_a_failed_start_with_a_reason() {
    let config = format!(
        "[program.lost]\ncommand = {}\ndirectory = \"/nonexistent/dir\"\nstartretries = 0\ncritical = false\n\n\
         [program.steady]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&[]),
        child_cmd(&[])
    );
    let sv = Sv::start(&config);
    let p = sv.wait_state("lost", "FATAL");
    let reason = p["reason"].as_str().unwrap_or("");
    assert!(reason.contains("/nonexistent/dir"), "{p}");
    assert_eq!(sv.program("steady")["state"], "RUNNING");
}

#[test]
fn forwarded_and_stop_signals_reach_the_whole_process_group() {
    let dir = Sv::new_dir();
    let tc = common::test_child().display().to_string();
    let p = |n: &str| dir.path().join(n).display().to_string();
    // A background helper in the program's process group, then the program itself.
    let script = format!(
        "{tc} --signal-log {helper_log} --pid-file {helper_pid} & exec {tc} --pid-file {main_pid}",
        helper_log = p("helper.signals"),
        helper_pid = p("helper.pid"),
        main_pid = p("main.pid"),
    );
    let config = format!(
        "[program.group]\ncommand = [\"/bin/sh\", \"-c\", {}]\nstartsecs = 0\n",
        toml_str(&script)
    );
    let helper_log = dir.path().join("helper.signals");
    let helper_pid_file = dir.path().join("helper.pid");
    let main_pid_file = dir.path().join("main.pid");
    let mut sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let helper = wait_pid_file(&helper_pid_file);
    wait_pid_file(&main_pid_file);
    sv.wait_state("group", "RUNNING");
    sv.signal(Signal::SIGUSR1);
    assert_eq!(wait_lines(&helper_log, 1), ["SIGUSR1"]);
    sv.sigterm();
    assert_eq!(sv.wait_exit(), 0, "stderr:\n{}", sv.stderr());
    assert_eq!(lines(&helper_log), ["SIGUSR1", "SIGTERM"]);
    assert!(!alive(helper));
}

#[test]
fn dependents_stop_before_their_dependencies_whatever_the_priorities() {
    let dir = Sv::new_dir();
    let log = dir.path().join("signals.log").display().to_string();
    let pid = |n: &str| dir.path().join(format!("{n}.pid")).display().to_string();
    // `app` has the lower priority number but depends on `db`: it starts after and stops
    // before it.
    let config = format!(
        "[program.app]\ncommand = {}\npriority = 1\nstartsecs = 0\ndepends_on = [\"db\"]\n\n\
         [program.db]\ncommand = {}\npriority = 100\nready = {{ kind = \"notify\" }}\n",
        child_cmd(&[
            "--signal-log",
            &log,
            "--signal-tag",
            "app",
            "--pid-file",
            &pid("app")
        ]),
        child_cmd(&[
            "--signal-log",
            &log,
            "--signal-tag",
            "db",
            "--pid-file",
            &pid("db"),
            "--notify-ready"
        ]),
    );
    let log = dir.path().join("signals.log");
    let app_pid = dir.path().join("app.pid");
    let mut sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_state("app", "RUNNING");
    wait_pid_file(&app_pid);
    // Text log: `spawned program=NAME`; written by the log writer thread, so waited for.
    let spawned: Vec<String> = wait_for("two spawn lines", WAIT, || {
        let v: Vec<String> = sv
            .stderr()
            .lines()
            .filter(|l| l.contains(" spawned "))
            .filter_map(|l| l.split("program=").nth(1))
            .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
            .collect();
        (v.len() >= 2).then_some(v)
    });
    assert_eq!(spawned, ["db", "app"]);
    sv.sigterm();
    assert_eq!(sv.wait_exit(), 0, "stderr:\n{}", sv.stderr());
    assert_eq!(lines(&log), ["app SIGTERM", "db SIGTERM"]);
}
