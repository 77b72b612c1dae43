//! Reload end to end with the real binary: a running set of five programs, then configs that
//! add, remove, change one, change nothing, and are invalid, through `iot2mqtt-sv reload`
//! (and `--dry-run`), and the same through `SIGHUP`; more `numprocs` instances, a `[supervisor]`
//! key that only applies at start, and a `[bridge]` change (which restarts the bridge alone).
//! Programs the reload does not change keep their pids and receive no signal at all (each
//! program appends every signal it gets to a shared log).
//!
//! Reloads of the keys a program's run depends on, each observed as a user would: a scheduled
//! program added, given another interval and removed (its runs appended to a file, against a
//! second job's runs as the clock); `log_file` added to a running program and a program with a
//! file removed (the file's content, the supervisor's open descriptors); another `env_file`
//! list and new content in a listed file (the environment the program reports); `rlimits`,
//! `max_rss` and `restart_limit` set (`status --json`, `/proc/PID/limits`).

mod common;

use std::path::Path;

use common::{Sv, child_cmd, lines};
use nix::sys::signal::Signal;
use serde_json::Value;
use sv_testkit::wait_until;

/// `[program.NAME]` running test-child, logging signals as `NAME SIGNAL` (once it has printed
/// `started`: see [`wait_started`]).
fn program(log: &Path, name: &str, env: &str) -> String {
    format!(
        "[program.{name}]\ncommand = {}\nstartsecs = 0\nenvironment = {{ V = \"{env}\" }}\n\n",
        child_cmd(&[
            "--signal-log",
            &log.display().to_string(),
            "--signal-tag",
            name,
            "--print",
            "started"
        ])
    )
}

/// Waits until `name` runs and logs the signals it gets: test-child prints after it has set up
/// its signal handling, while `startsecs = 0` makes it RUNNING as soon as it is spawned, when a
/// SIGTERM would still end it unlogged.
fn wait_started(sv: &Sv, name: &str) {
    sv.wait_state(name, "RUNNING");
    sv.wait_stdout(&format!("{name} | started"));
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
        wait_started(&sv, n);
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
    wait_started(&sv, "p1");
    wait_started(&sv, "p2");
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

/// `iot2mqtt-sv reload`, which must succeed; its stdout.
#[track_caller]
fn reload(sv: &Sv) -> String {
    let (code, out, err) = run(sv, &["reload"]);
    assert_eq!(code, 0, "{out}{err}\n{}", sv.stderr());
    out
}

/// Asserts that `job` (appending to `<dir>/runs`) does not run while `tick` (a 100 ms job
/// appending to `<dir>/ticks`) runs five more times: had `job` still been due every 100 or
/// 200 ms, it would have run meanwhile.
#[track_caller]
fn assert_no_runs_while_tick_runs(sv: &Sv, why: &str) {
    let runs = lines(&sv.path("runs")).len();
    let ticks = lines(&sv.path("ticks")).len();
    common::wait_lines(&sv.path("ticks"), ticks + 5);
    assert_eq!(lines(&sv.path("runs")).len(), runs, "{why}");
}

#[test]
fn a_reload_adds_reschedules_and_removes_a_scheduled_program() {
    let dir = Sv::new_dir();
    let d = dir.path().to_path_buf();
    let append = |file: &str, line: &str| {
        child_cmd(&[
            "--append",
            &d.join(file).display().to_string(),
            line,
            "--exit-after-ms",
            "0",
        ])
    };
    let tick = format!(
        "[program.tick]\ncommand = {}\nevery = \"100ms\"\n\n",
        append("ticks", "tick")
    );
    let job = |every: &str| {
        format!(
            "[program.job]\ncommand = {}\nevery = \"{every}\"\n",
            append("runs", "run")
        )
    };
    let without_job = tick.clone();
    let with_job = |every: &str| format!("{tick}{}", job(every));
    let sv = Sv::spawn_in(dir, &without_job, Default::default());
    sv.wait_socket();
    let write = |text: &str| std::fs::write(&sv.config, text).expect("writing the config");
    common::wait_lines(&sv.path("ticks"), 1);

    // Added: it runs on its interval (no run_on_start: the first run is one interval away).
    write(&with_job("100ms"));
    let out = reload(&sv);
    assert!(out.contains("add      job\n"), "{out}");
    let runs = common::wait_lines(&sv.path("runs"), 2);
    assert!(runs.iter().all(|l| l == "run"), "{runs:?}");
    let s = sv.wait_program("runs counted", "job", |p| {
        p["schedule"]["runs"].as_u64() >= Some(2)
    });
    assert_eq!(s["schedule"]["trigger"], "every 100ms", "{s}");
    assert_eq!(s["schedule"]["last_exit_code"], 0, "{s}");

    // A longer interval: a fresh schedule (counters too) whose first run is an hour away.
    write(&with_job("1h"));
    let out = reload(&sv);
    assert!(out.contains("restart  job (schedule)\n"), "{out}");
    assert!(out.contains("keep     tick\n"), "{out}");
    let s = sv.wait_program("the new schedule", "job", |p| {
        p["schedule"]["trigger"] == "every 3600s"
    });
    assert_eq!(s["schedule"]["runs"], 0, "{s}");
    assert!(s["schedule"]["next_run"].is_string(), "{s}");
    let runs_then = lines(&sv.path("runs")).len();
    assert_no_runs_while_tick_runs(&sv, "ran on the old interval");

    // Back to a short interval: it runs again.
    write(&with_job("200ms"));
    let out = reload(&sv);
    assert!(out.contains("restart  job (schedule)\n"), "{out}");
    common::wait_lines(&sv.path("runs"), runs_then + 2);
    let s = sv.wait_program("runs on the new schedule", "job", |p| {
        p["schedule"]["runs"].as_u64() >= Some(1)
    });
    assert_eq!(s["schedule"]["trigger"], "every 200ms", "{s}");

    // Removed: gone from status, and it never runs again.
    write(&without_job);
    let out = reload(&sv);
    assert!(out.contains("remove   job\n"), "{out}");
    assert!(out.contains("job: removed"), "{out}");
    assert!(common::find_program(&sv.status_json(), "job").is_none());
    assert_no_runs_while_tick_runs(&sv, "a removed job ran");
    assert!(sv.status_json()["healthy"] == true, "{}", sv.status_json());
}

/// Whether the supervisor has `path` open (through `/proc/PID/fd`).
fn has_open(sv: &Sv, path: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{}/fd", sv.pid()))
        .map(|fds| {
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == path))
        })
        .unwrap_or(false)
}

#[test]
fn a_reload_gives_a_program_its_new_log_file_and_closes_a_removed_ones() {
    let dir = Sv::new_dir();
    let talk_log = dir.path().join("talk.log");
    let gone_log = dir.path().join("gone.log");
    let talk = |log_file: &str| {
        format!(
            "[program.talk]\ncommand = {}\nstartsecs = 0\n{log_file}\n",
            child_cmd(&["--print", "hello from talk"])
        )
    };
    let gone = format!(
        "[program.gone]\ncommand = {}\nstartsecs = 0\nlog_file = {}\n",
        child_cmd(&["--print", "hello from gone"]),
        common::toml_str(&gone_log.display().to_string())
    );
    let sv = Sv::spawn_in(dir, &format!("{}{gone}", talk("")), Default::default());
    sv.wait_socket();
    sv.wait_state("talk", "RUNNING");
    sv.wait_stdout("talk | hello from talk");
    wait_until("gone's line in its file", || {
        lines(&gone_log) == ["hello from gone"]
    });
    assert!(!talk_log.exists());

    // `log_file` added to a running program: it restarts, and its new run's lines reach the file.
    let with_file = talk(&format!(
        "log_file = {}",
        common::toml_str(&talk_log.display().to_string())
    ));
    std::fs::write(&sv.config, format!("{with_file}{gone}")).expect("writing the config");
    let out = reload(&sv);
    assert!(out.contains("restart  talk (log_file)\n"), "{out}");
    wait_until("talk's line in its new file", || {
        lines(&talk_log) == ["hello from talk"]
    });
    assert_eq!(sv.program("talk")["log_file_dropped_lines"], 0);

    // The program with a file removed: the supervisor carries on and lets go of the file.
    assert!(
        has_open(&sv, &gone_log),
        "gone's file is open while it runs"
    );
    std::fs::write(&sv.config, &with_file).expect("writing the config");
    let out = reload(&sv);
    assert!(out.contains("remove   gone\n"), "{out}");
    wait_until("gone's file closed", || !has_open(&sv, &gone_log));
    assert!(has_open(&sv, &talk_log), "talk's file stays open");
    assert!(common::find_program(&sv.status_json(), "gone").is_none());
    assert_eq!(sv.program("talk")["state"], "RUNNING");
    assert_eq!(lines(&gone_log), ["hello from gone"]);
}

/// The environment `test-child --report-env` wrote to `path`, once complete.
fn reported_env(path: &Path) -> Vec<String> {
    sv_testkit::wait_for("the environment report", sv_testkit::WAIT, || {
        let text = std::fs::read_to_string(path).ok()?;
        text.contains("@cwd=")
            .then(|| text.lines().map(str::to_string).collect())
    })
}

#[test]
fn env_file_paths_are_a_change_and_env_file_content_is_read_at_the_next_start() {
    let dir = Sv::new_dir();
    let d = dir.path().to_path_buf();
    let report = d.join("env.txt");
    std::fs::write(d.join("a.env"), "FROM=a\nONLY_A=1\n").expect("writing a.env");
    std::fs::write(d.join("b.env"), "FROM=b\nONLY_B=1\n").expect("writing b.env");
    let app = |files: &[&str]| {
        let files: Vec<String> = files
            .iter()
            .map(|f| common::toml_str(&d.join(f).display().to_string()))
            .collect();
        format!(
            "[program.app]\ncommand = {}\nstartsecs = 0\nenv_file = [{}]\n",
            child_cmd(&["--report-env", &report.display().to_string()]),
            files.join(", ")
        )
    };
    let sv = Sv::spawn_in(dir, &app(&["a.env"]), Default::default());
    sv.wait_socket();
    let env = reported_env(&report);
    assert!(env.iter().any(|l| l == "FROM=a"), "{env:?}");
    sv.wait_state("app", "RUNNING");
    let first = pids(&sv);

    // Another file in the list: the program restarts with its variables (later files win).
    std::fs::remove_file(&report).expect("removing the report");
    std::fs::write(&sv.config, app(&["a.env", "b.env"])).expect("writing the config");
    let out = reload(&sv);
    assert!(out.contains("restart  app (env_file)\n"), "{out}");
    let env = reported_env(&report);
    for want in ["FROM=b", "ONLY_A=1", "ONLY_B=1"] {
        assert!(env.iter().any(|l| l == want), "{want} missing in {env:?}");
    }
    let second = pids(&sv);
    assert_ne!(pid_of(&second, "app"), pid_of(&first, "app"));

    // New content in a listed file is not a config change: the running process keeps its
    // environment until it next starts, which reads the file again.
    std::fs::write(d.join("b.env"), "FROM=c\nONLY_B=2\n").expect("writing b.env");
    let out = reload(&sv);
    assert!(out.contains("nothing to change"), "{out}");
    assert_eq!(pids(&sv), second);
    std::fs::remove_file(&report).expect("removing the report");
    let (code, out, err) = run(&sv, &["restart", "app"]);
    assert_eq!(code, 0, "{out}{err}");
    let env = reported_env(&report);
    for want in ["FROM=c", "ONLY_A=1", "ONLY_B=2"] {
        assert!(env.iter().any(|l| l == want), "{want} missing in {env:?}");
    }
}

#[test]
fn a_reload_that_sets_limits_restarts_the_program_under_them() {
    let dir = Sv::new_dir();
    let pid_file = dir.path().join("app.pid");
    let app = |limits: &str| {
        format!(
            "[program.app]\ncommand = {}\nstartsecs = 0\n{limits}\n",
            child_cmd(&["--pid-file", &pid_file.display().to_string()])
        )
    };
    let sv = Sv::spawn_in(dir, &app(""), Default::default());
    sv.wait_socket();
    let old = common::wait_pid_file(&pid_file);
    let p = sv.wait_state("app", "RUNNING");
    assert_eq!(p["memory_restarts"], Value::Null, "{p}");
    assert_eq!(p["restart_limit_failures"], Value::Null, "{p}");

    std::fs::write(
        &sv.config,
        app(
            "rlimits = { nofile = 1234 }\nrestart_limit = { burst = 5, within = \"1m\" }\n\
             max_rss = \"500MB\"",
        ),
    )
    .expect("writing the config");
    let out = reload(&sv);
    assert!(
        out.contains("restart  app (rlimits, restart_limit, max_rss)\n"),
        "{out}"
    );
    let p = sv.wait_program("the new definition running", "app", |p| {
        p["state"] == "RUNNING" && p["pid"].as_i64().is_some_and(|pid| pid != i64::from(old))
    });
    assert_eq!(p["memory_restarts"], 0, "{p}");
    assert_eq!(p["restart_limit_failures"], 0, "{p}");
    let pid = p["pid"].as_i64().expect("pid") as i32;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().skip(3).take(2).collect::<Vec<_>>());
    assert_eq!(nofile, Some(vec!["1234", "1234"]), "{limits}");
}
