//! End-to-end CLI verbs and the control protocol against the real `iot2mqtt-sv run`: `status`
//! (table and `--json`), `start`/`stop`/`restart` (one, several, `all`), `signal`, `pid`,
//! `logs --json`, the exit codes for unknown programs (2) and an unreachable supervisor (1), how
//! clients find the socket, and raw protocol lines (`bad_request`, `watch`).
//!
//! Every wait polls the status over the control socket or a file a program writes.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use common::{Sv, SvOptions, alive, child_cmd, lines, read, toml_str, wait_pid_file};
use serde_json::{Value, json};
use sv_testkit::{WAIT, wait_until};

/// `(exit code, stdout, stderr)` of a CLI run against `sv`.
fn run(sv: &Sv, args: &[&str]) -> (i32, String, String) {
    let out = sv.cli(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pid_of(sv: &Sv, name: &str) -> i64 {
    sv.program(name)["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} has no pid"))
}

/// Three always-running programs and one that does not start by itself.
fn four_programs() -> String {
    let prog = |name: &str, extra: &str| {
        format!(
            "[program.{name}]\ncommand = {}\nstartsecs = 0\n{extra}\n",
            child_cmd(&[])
        )
    };
    format!(
        "{}{}{}{}",
        prog("alpha", ""),
        prog("beta", ""),
        prog("gamma", ""),
        prog("idle", "autostart = false")
    )
}

#[test]
fn status_table_shows_every_column_and_usage_of_running_programs() {
    let sv = Sv::start(&four_programs());
    for n in ["alpha", "beta", "gamma"] {
        sv.wait_state(n, "RUNNING");
    }
    let (code, out, err) = run(&sv, &["status"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "NAME", "STATE", "PID", "READY", "UPTIME", "RESTARTS", "EXIT", "CPU%", "RSS", "INFO"
        ],
        "{out}"
    );
    let row = |name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no row for {name} in\n{out}"))
            .clone()
    };
    let alpha = row("alpha");
    assert_eq!(alpha[1], "RUNNING", "{out}");
    assert_eq!(alpha[2], pid_of(&sv, "alpha").to_string(), "{out}");
    assert_eq!(alpha[3], "yes", "{out}");
    assert!(alpha[4].ends_with('s') || alpha[4].ends_with('m'), "{out}");
    assert_eq!(alpha[5], "0", "{out}");
    assert!(
        alpha[7].parse::<f64>().is_ok(),
        "CPU% of a running program: {out}"
    );
    assert!(
        alpha[8].ends_with('K') || alpha[8].ends_with('M'),
        "RSS of a running program: {out}"
    );
    let idle = row("idle");
    assert_eq!(
        &idle[1..9],
        ["STOPPED", "-", "no", "-", "0", "-", "-", "-"],
        "{out}"
    );
    assert!(
        out.contains("\nhealthy: all critical programs ready\n"),
        "{out}"
    );

    let (code, out, err) = run(&sv, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "one JSON document: {out}");
    let v: Value = serde_json::from_str(&out).expect("status --json");
    assert_eq!(v["healthy"], true, "{v}");
    assert_eq!(v["shutting_down"], false, "{v}");
    assert_eq!(v["supervisor"]["pid"], sv.pid(), "{v}");
    assert_eq!(v["supervisor"]["mode"], "subreaper", "{v}");
    assert_eq!(v["supervisor"]["http"], Value::Null, "{v}");
    let programs = v["programs"].as_array().expect("programs");
    let names: Vec<&str> = programs.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["alpha", "beta", "gamma", "idle"]);
    let alpha = &programs[0];
    assert!(
        alpha["cpu_percent"].is_f64() || alpha["cpu_percent"].is_u64(),
        "{alpha}"
    );
    assert!(
        alpha["rss_bytes"].as_u64().is_some_and(|b| b > 0),
        "{alpha}"
    );
    for key in [
        "state",
        "pid",
        "ready",
        "healthy",
        "critical",
        "readiness",
        "restarts",
        "exit_status",
        "uptime_s",
        "reason",
        "status_text",
        "probe_failures",
    ] {
        assert!(alpha.get(key).is_some(), "{key} missing from {alpha}");
    }
    assert_eq!(programs[3]["cpu_percent"], Value::Null);
    assert_eq!(programs[3]["rss_bytes"], Value::Null);
}

#[test]
fn stop_start_and_restart_one_several_and_all() {
    let sv = Sv::start(&four_programs());
    for n in ["alpha", "beta", "gamma"] {
        sv.wait_state(n, "RUNNING");
    }
    // stop waits until the process is gone.
    let old = pid_of(&sv, "alpha");
    let (code, out, err) = run(&sv, &["stop", "alpha"]);
    assert_eq!((code, out.as_str()), (0, "alpha: stopped\n"), "{err}");
    assert!(
        !alive(old as i32),
        "stop returned before the process exited"
    );
    let a = sv.program("alpha");
    assert_eq!(a["state"], "STOPPED", "{a}");
    assert_eq!(a["reason"], "stopped by request", "{a}");

    let (code, out, err) = run(&sv, &["stop", "beta", "gamma"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "beta: stopped\ngamma: stopped\n"),
        "{err}"
    );
    // Stopped on purpose: still healthy.
    assert_eq!(run(&sv, &["health"]).0, 0);

    let (code, out, err) = run(&sv, &["start", "alpha"]);
    assert_eq!((code, out.as_str()), (0, "alpha: running\n"), "{err}");
    assert_eq!(sv.program("alpha")["state"], "RUNNING");

    let (code, out, err) = run(&sv, &["start", "all"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "alpha: running\nbeta: running\ngamma: running\nidle: running\n"
    );

    // beta was stopped and started once already.
    let before = sv.program("beta");
    assert_eq!(before["restarts"], 1, "{before}");
    let (code, out, err) = run(&sv, &["restart", "beta"]);
    assert_eq!((code, out.as_str()), (0, "beta: running\n"), "{err}");
    let b = sv.program("beta");
    assert_eq!(b["restarts"], 2, "{b}");
    assert_ne!(b["pid"], before["pid"], "{b}");

    let (code, out, err) = run(&sv, &["restart", "all", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("restart --json");
    assert_eq!(v["ok"], true, "{v}");
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 4, "{v}");
    assert!(
        results
            .iter()
            .all(|r| r["ok"] == true && r["state"] == "RUNNING"),
        "{v}"
    );
    let s = sv.status_json();
    let restarts: Vec<u64> = s["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .filter_map(|p| p["restarts"].as_u64())
        .collect();
    // alpha, gamma: stop+start and restart all; beta: those and its own restart; idle: its
    // first start is no restart, then restart all.
    assert_eq!(restarts, [2, 3, 2, 1], "{s}");

    let pids: Vec<i64> = ["alpha", "beta", "gamma", "idle"]
        .iter()
        .map(|n| pid_of(&sv, n))
        .collect();
    let (code, _, err) = run(&sv, &["stop", "all"]);
    assert_eq!(code, 0, "{err}");
    assert!(pids.iter().all(|&p| !alive(p as i32)));
}

#[test]
fn start_of_a_program_that_cannot_start_fails_with_its_reason() {
    let config = format!(
        "[program.broken]\ncommand = {}\nautostart = false\nstartsecs = \"1h\"\n\
         startretries = 0\ncritical = false\n",
        child_cmd(&["--exit", "6", "--exit-after-ms", "0"])
    );
    let sv = Sv::start(&config);
    let (code, out, err) = run(&sv, &["start", "broken"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.starts_with("broken: fatal (exited before ready with exit code 6"),
        "{err}"
    );
    assert!(
        err.ends_with("iot2mqtt-sv: error: not every program reached its goal\n"),
        "{err}"
    );
}

#[test]
fn signal_reaches_the_program() {
    let dir = Sv::new_dir();
    let log = dir.path().join("signals.txt");
    let pidf = dir.path().join("hup.pid");
    let config = format!(
        "[program.hup]\ncommand = {}\nstartsecs = 0\n\n\
         [program.idle]\ncommand = {}\nautostart = false\n",
        child_cmd(&[
            "--signal-log",
            &log.display().to_string(),
            "--pid-file",
            &pidf.display().to_string()
        ]),
        child_cmd(&[])
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_state("hup", "RUNNING");
    // RUNNING comes at spawn (startsecs = 0); the pid file once test-child handles signals.
    wait_pid_file(&pidf);
    let (code, out, err) = run(&sv, &["signal", "HUP", "hup"]);
    assert_eq!((code, out.as_str()), (0, "hup: ok\n"), "{err}");
    wait_until("SIGHUP in the program's log", || lines(&log) == ["SIGHUP"]);
    let (code, _, err) = run(&sv, &["signal", "sigusr1", "hup"]);
    assert_eq!(code, 0, "{err}");
    wait_until("SIGUSR1 in the program's log", || {
        lines(&log) == ["SIGHUP", "SIGUSR1"]
    });
    assert_eq!(sv.program("hup")["state"], "RUNNING");

    let (code, _, err) = run(&sv, &["signal", "BOGUS", "hup"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("BOGUS"), "{err}");

    let (code, _, err) = run(&sv, &["signal", "HUP", "idle"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("idle: failed (not running)"), "{err}");
}

#[test]
fn pid_prints_the_supervisor_and_a_program() {
    let dir = Sv::new_dir();
    let pidf = dir.path().join("app.pid");
    let config = format!(
        "[program.app]\ncommand = {}\nstartsecs = 0\n\n[program.idle]\ncommand = {}\nautostart = false\n",
        child_cmd(&["--pid-file", &pidf.display().to_string()]),
        child_cmd(&[])
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let app = wait_pid_file(&pidf);
    let (code, out, err) = run(&sv, &["pid"]);
    assert_eq!((code, out), (0, format!("{}\n", sv.pid())), "{err}");
    let (code, out, err) = run(&sv, &["pid", "app"]);
    assert_eq!((code, out), (0, format!("{app}\n")), "{err}");
    let (code, out, err) = run(&sv, &["pid", "idle"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err, "iot2mqtt-sv: error: not running\n");
}

#[test]
fn logs_json_prints_one_object_per_line() {
    let config = format!(
        "[program.talk]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&["--print", "one", "--stderr", "two"])
    );
    let sv = Sv::start(&config);
    let objs = sv_testkit::wait_for("both lines in the buffer", WAIT, || {
        let (_, out, _) = run(&sv, &["logs", "talk", "--json"]);
        let v: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        (v.len() == 2).then_some(v)
    });
    let mut seen: Vec<(String, String)> = objs
        .iter()
        .map(|o| {
            assert_eq!(o["program"], "talk", "{o}");
            assert!(o["ts"].is_string(), "{o}");
            (
                o["stream"].as_str().unwrap_or("").to_string(),
                o["line"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("stderr".to_string(), "two".to_string()),
            ("stdout".to_string(), "one".to_string())
        ]
    );
}

#[test]
fn an_unknown_program_is_a_usage_error_naming_it() {
    let sv = Sv::start(&four_programs());
    for args in [
        &["start", "ghost"][..],
        &["stop", "alpha", "ghost"],
        &["restart", "ghost"],
        &["signal", "HUP", "ghost"],
        &["pid", "ghost"],
        &["logs", "ghost"],
    ] {
        let (code, out, err) = run(&sv, args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert_eq!(
            err, "iot2mqtt-sv: error: no program named \"ghost\"\n",
            "{args:?}"
        );
    }
    // Nothing was done for the valid name in a request with an unknown one.
    assert_eq!(sv.program("alpha")["state"], "RUNNING");
}

#[test]
fn every_client_verb_without_a_supervisor_exits_1_with_a_clear_message() {
    let dir = Sv::new_dir();
    let socket = dir.path().join("absent.sock");
    let s = socket.display().to_string();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["start", "x"],
        &["stop", "all"],
        &["restart", "x"],
        &["signal", "HUP", "x"],
        &["pid"],
        &["logs", "x"],
    ] {
        let out = Command::new(common::bin())
            .args(["-s", &s])
            .args(args)
            .env_remove("IOT2MQTT_SV_SOCKET")
            .env_remove("IOT2MQTT_SV_CONFIG")
            .output()
            .expect("running the verb");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with(&format!(
                "iot2mqtt-sv: error: cannot reach the supervisor at {s}: "
            )) && err.contains("is `iot2mqtt-sv run` running?"),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn clients_find_the_socket_named_in_the_config() {
    let dir = Sv::new_dir();
    let socket = dir.path().join("ctl").join("control.sock");
    let config = format!(
        "[supervisor]\ncontrol_socket = {}\n\n[program.app]\ncommand = {}\nstartsecs = 0\n",
        toml_str(&socket.display().to_string()),
        child_cmd(&[])
    );
    let sv = Sv::spawn_in(
        dir,
        &config,
        SvOptions {
            no_socket_env: true,
            ..Default::default()
        },
    );
    wait_until("the configured socket", || socket.exists());
    let cli = |extra_env: Option<(&str, &std::path::Path)>| {
        let mut c = Command::new(common::bin());
        c.args(["status", "--json"])
            .env_remove("IOT2MQTT_SV_SOCKET")
            .env_remove("IOT2MQTT_SV_CONFIG")
            .stdin(Stdio::null());
        if let Some((k, v)) = extra_env {
            c.env(k, v);
        }
        c.output().expect("running status")
    };
    // $IOT2MQTT_SV_CONFIG points clients at the config, which names the socket.
    let out = cli(Some(("IOT2MQTT_SV_CONFIG", &sv.config)));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // $IOT2MQTT_SV_SOCKET names it directly.
    let out = cli(Some(("IOT2MQTT_SV_SOCKET", &socket)));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(v["supervisor"]["pid"], sv.pid());
}

/// A raw connection to the control socket.
struct Conn {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Conn {
    fn open(sv: &Sv) -> Conn {
        let w = UnixStream::connect(&sv.socket).expect("connect");
        w.set_read_timeout(Some(WAIT)).expect("timeout");
        let r = BufReader::new(w.try_clone().expect("clone"));
        Conn { w, r }
    }

    fn send(&mut self, line: &str) {
        self.w.write_all(line.as_bytes()).expect("write");
        self.w.write_all(b"\n").expect("write");
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("read");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
}

#[test]
fn control_protocol_errors_keep_the_connection_usable() {
    let sv = Sv::start(&four_programs());
    let mut c = Conn::open(&sv);
    for bad in ["{", "[]", r#"{"op":"nope"}"#, r#"{"op":"start"}"#] {
        c.send(bad);
        let r = c.recv();
        assert_eq!(r["ok"], false, "{bad}: {r}");
        assert_eq!(r["error"]["code"], "bad_request", "{bad}: {r}");
    }
    c.send(r#"{"op":"signal","signal":"NOPE","programs":["alpha"]}"#);
    assert_eq!(c.recv()["error"]["code"], "unknown_signal");
    c.send(r#"{"op":"health"}"#);
    let r = c.recv();
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["healthy"].is_boolean() && r["reason"].is_string(), "{r}");
    c.send(r#"{"op":"pid"}"#);
    assert_eq!(c.recv(), json!({"ok": true, "pid": sv.pid()}));
}

#[test]
fn watch_streams_a_status_now_and_on_every_change() {
    let dir = Sv::new_dir();
    let gate = dir.path().join("gate");
    let config = format!(
        "[program.svc]\ncommand = [\"/bin/sh\", \"-c\", {}, \"sh\", {}]\nready = {{ kind = \"notify\" }}\n",
        toml_str(
            "while [ ! -e \"$1\" ]; do sleep 0.01; done; systemd-notify --ready; exec sleep 3600"
        ),
        toml_str(&gate.display().to_string())
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_state("svc", "STARTING");
    let mut c = Conn::open(&sv);
    c.send(r#"{"op":"watch"}"#);
    let first = c.recv();
    assert_eq!(first["programs"][0]["state"], "STARTING", "{first}");
    assert_eq!(first["healthy"], false, "{first}");
    assert_eq!(first["shutting_down"], false, "{first}");
    std::fs::write(&gate, b"").expect("gate");
    let mut seen = Vec::new();
    loop {
        let v = c.recv();
        seen.push(v.clone());
        if v["programs"][0]["state"] == "RUNNING" {
            assert_eq!(v["healthy"], true, "{v}");
            break;
        }
        assert!(seen.len() < 20, "no RUNNING update in {seen:?}");
    }
    assert!(read(&gate).is_empty());
}

#[test]
fn start_all_waits_for_dependencies_to_become_ready() {
    let config = format!(
        "[program.db]\ncommand = {}\nstartsecs = \"200ms\"\n\n\
         [program.app]\ncommand = {}\nstartsecs = 0\ndepends_on = [\"db\"]\n",
        child_cmd(&[]),
        child_cmd(&[])
    );
    let sv = Sv::start(&config);
    sv.wait_state("app", "RUNNING");
    let (code, _, err) = run(&sv, &["stop", "all"]);
    assert_eq!(code, 0, "{err}");
    // app cannot start before db is ready; `start all` waits for that rather than failing.
    let (code, out, err) = run(&sv, &["start", "all"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "app: running\ndb: running\n"),
        "{err}"
    );
}

#[test]
fn start_of_a_program_whose_dependency_is_stopped_fails_at_once() {
    let config = format!(
        "[program.db]\ncommand = {}\nstartsecs = 0\nautostart = false\n\n\
         [program.app]\ncommand = {}\nstartsecs = 0\nautostart = false\ndepends_on = [\"db\"]\n",
        child_cmd(&[]),
        child_cmd(&[])
    );
    let sv = Sv::start(&config);
    let (code, _, err) = run(&sv, &["start", "app"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("app: stopped (waiting for db to be ready (it is STOPPED))\n"),
        "{err}"
    );
}

#[test]
fn start_waits_while_the_dependency_is_still_starting() {
    let dir = Sv::new_dir();
    let gate = dir.path().join("gate");
    let config = format!(
        "[program.db]\ncommand = [\"/bin/sh\", \"-c\", {}, \"sh\", {}]\nready = {{ kind = \"notify\" }}\n\n\
         [program.app]\ncommand = {}\nstartsecs = 0\nautostart = false\ndepends_on = [\"db\"]\n",
        toml_str(
            "while [ ! -e \"$1\" ]; do sleep 0.01; done; systemd-notify --ready; exec sleep 3600"
        ),
        toml_str(&gate.display().to_string()),
        child_cmd(&[])
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_state("db", "STARTING");
    let start = Command::new(common::bin())
        .args(["start", "app"])
        .env("IOT2MQTT_SV_SOCKET", &sv.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning start");
    sv.wait_program("the start request to register", "app", |s| {
        s["reason"] == "waiting for db to be ready (it is STARTING)"
    });
    std::fs::write(&gate, b"").expect("gate");
    let out = start.wait_with_output().expect("start output");
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "app: running\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn stop_of_a_program_that_is_still_starting_stops_it() {
    let config = format!(
        "[program.slow]\ncommand = {}\nready = {{ kind = \"notify\" }}\n",
        child_cmd(&[])
    );
    let sv = Sv::start(&config);
    let s = sv.wait_program("a process", "slow", |s| s["pid"].is_i64());
    assert_eq!(s["state"], "STARTING", "{s}");
    let (code, out, err) = run(&sv, &["stop", "slow"]);
    assert_eq!((code, out.as_str()), (0, "slow: stopped\n"), "{err}");
    assert!(!alive(s["pid"].as_i64().unwrap_or(0) as i32));
    let s = sv.program("slow");
    assert_eq!(s["state"], "STOPPED", "{s}");
    assert_eq!(s["restarts"], 0, "{s}");
}
