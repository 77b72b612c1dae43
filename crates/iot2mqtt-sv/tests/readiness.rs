//! End-to-end readiness, dependencies, liveness and the watchdog with the real
//! `iot2mqtt-sv run`.
//!
//! Programs that must be observed while STARTING wait for a *gate* file the test creates, so the
//! moment they become ready is chosen by the test, not by a clock. Every wait polls the status
//! over the control socket or a file a program writes; nothing sleeps to synchronise and nothing
//! asserts on how long anything took.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use common::{Sv, child_cmd, lines, read, toml_str, wait_lines, wait_pid_file};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sv_testkit::{WAIT, free_port, wait_for, wait_until};

/// A TOML array running `script` with `/bin/sh -c`, with `args` as `$1`, `$2`, ...
fn sh(script: &str, args: &[&str]) -> String {
    let mut parts = vec![toml_str("/bin/sh"), toml_str("-c"), toml_str(script)];
    parts.push(toml_str("sh"));
    parts.extend(args.iter().map(|a| toml_str(a)));
    format!("[{}]", parts.join(", "))
}

/// Shell that blocks until the file `$1` exists (the test opens the gate).
const WAIT_GATE: &str = "while [ ! -e \"$1\" ]; do sleep 0.01; done; ";

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn touch(path: &Path) {
    std::fs::write(path, b"").expect("creating gate file");
}

fn kill9(pid: i64) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("SIGKILL");
}

/// The supervisor's own event lines (tracing JSON on stderr) whose message is `message`.
fn events(sv: &Sv, message: &str) -> Vec<Value> {
    sv.stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// One raw request line on a fresh connection to the control socket.
fn raw(sv: &Sv, req: &Value) -> Value {
    let mut s = UnixStream::connect(&sv.socket).expect("connecting to the control socket");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    writeln!(s, "{req}").expect("writing the request");
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .expect("reading the reply");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
}

const JSON_LOG: &str = "[supervisor]\nlog_format = \"json\"\n\n";

#[test]
fn systemd_notify_ready_moves_starting_to_running_with_status_text() {
    let dir = Sv::new_dir();
    let gate = dir.path().join("gate");
    let env = dir.path().join("env.txt");
    let config = format!(
        "{JSON_LOG}[program.svc]\ncommand = {}\nready = {{ kind = \"notify\" }}\n",
        sh(
            &format!(
                "echo \"$NOTIFY_SOCKET\" > \"$2\"; {WAIT_GATE}\
                 systemd-notify --ready --status=\"serving requests\"; exec sleep 3600"
            ),
            &[&p(&gate), &p(&env)]
        )
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    wait_until("the program to report its NOTIFY_SOCKET", || {
        read(&env).ends_with('\n')
    });
    assert_eq!(
        read(&env).trim(),
        p(&sv.dir().join("notify").join("svc.sock")),
        "NOTIFY_SOCKET is <control socket dir>/notify/<program>.sock"
    );
    let s = sv.program("svc");
    assert_eq!(s["state"], "STARTING", "{s}");
    assert_eq!(s["ready"], false, "{s}");
    assert_eq!(s["readiness"], "notify", "{s}");
    touch(&gate);
    let s = sv.wait_state("svc", "RUNNING");
    assert_eq!(s["ready"], true, "{s}");
    assert_eq!(s["status_text"], "serving requests", "{s}");
    // The table shows the STATUS= text where there is no reason.
    let out = sv.cli(&["status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("serving requests"), "{table}");
}

#[test]
fn test_child_notify_ready_after_a_delay() {
    let config = format!(
        "[program.svc]\ncommand = {}\nready = {{ kind = \"notify\", timeout = \"1m\" }}\n",
        child_cmd(&["--notify-ready", "--notify-after-ms", "150"])
    );
    let sv = Sv::start(&config);
    let s = sv.wait_state("svc", "RUNNING");
    assert_eq!(s["status_text"], "ready", "{s}");
    assert_eq!(s["ready"], true, "{s}");
}

#[test]
fn readiness_is_required_again_after_the_program_is_killed() {
    let dir = Sv::new_dir();
    let gate = dir.path().join("gate");
    // Each incarnation consumes the gate, so the next one stays STARTING until it is reopened.
    let config = format!(
        "{JSON_LOG}[program.svc]\ncommand = {}\nready = {{ kind = \"notify\" }}\n\
         backoff = {{ initial = \"10ms\", jitter = 0 }}\n",
        sh(
            &format!("{WAIT_GATE}rm -f \"$1\"; systemd-notify --ready; exec sleep 3600"),
            &[&p(&gate)]
        )
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_state("svc", "STARTING");
    touch(&gate);
    let first = sv.wait_state("svc", "RUNNING");
    assert_eq!(first["restarts"], 0);
    kill9(first["pid"].as_i64().expect("pid"));
    let again = sv.wait_program("a new process, STARTING", "svc", |s| {
        s["state"] == "STARTING" && s["pid"].is_i64() && s["pid"] != first["pid"]
    });
    assert_eq!(again["ready"], false, "{again}");
    assert_eq!(again["restarts"], 1, "{again}");
    touch(&gate);
    let s = sv.wait_state("svc", "RUNNING");
    assert_eq!(s["pid"], again["pid"], "{s}");
}

#[test]
fn tcp_readiness_waits_for_the_port_to_accept() {
    let dir = Sv::new_dir();
    let gate = dir.path().join("gate");
    let addr = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "[program.net]\ncommand = {}\nready = {{ kind = \"tcp\", address = {}, interval = \"20ms\" }}\n",
        sh(
            &format!("{WAIT_GATE}exec \"$2\" --listen \"$3\""),
            &[&p(&gate), &p(&common::test_child()), &addr]
        ),
        toml_str(&addr)
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let s = sv.wait_program("a failed tcp probe", "net", |s| {
        s["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("readiness: "))
    });
    assert_eq!(s["state"], "STARTING", "{s}");
    assert!(
        s["reason"].as_str().unwrap_or("").contains("refused"),
        "{s}"
    );
    touch(&gate);
    let s = sv.wait_state("net", "RUNNING");
    assert_eq!(s["reason"], Value::Null, "{s}");
}

#[test]
fn http_readiness_needs_a_2xx_answer() {
    let dir = Sv::new_dir();
    let gate = dir.path().join("gate");
    let port = free_port();
    // Answers 503 until the gate exists, then 200.
    let server = r#"
import http.server, os, sys
gate = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if os.path.exists(gate) else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[2])), H).serve_forever()
"#;
    let config = format!(
        "[program.web]\ncommand = [\"python3\", \"-c\", {}, {}, \"{port}\"]\n\
         ready = {{ kind = \"http\", url = \"http://127.0.0.1:{port}/healthz\", interval = \"20ms\" }}\n",
        toml_str(server),
        toml_str(&p(&gate)),
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let s = sv.wait_program("a 503 from the server", "web", |s| {
        s["reason"] == "readiness: status 503"
    });
    assert_eq!(s["state"], "STARTING", "{s}");
    touch(&gate);
    sv.wait_state("web", "RUNNING");
}

#[test]
fn exec_readiness_runs_the_command_until_it_succeeds() {
    let dir = Sv::new_dir();
    let gate = dir.path().join("gate");
    let config = format!(
        "[program.job]\ncommand = {}\n\
         ready = {{ kind = \"exec\", command = [\"test\", \"-e\", {}], interval = \"20ms\" }}\n",
        child_cmd(&[]),
        toml_str(&p(&gate))
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let s = sv.wait_program("a failed exec probe", "job", |s| {
        s["reason"] == "readiness: probe command exited with code 1"
    });
    assert_eq!(s["state"], "STARTING", "{s}");
    touch(&gate);
    sv.wait_state("job", "RUNNING");
}

#[test]
fn log_readiness_matches_a_line_of_output() {
    let dir = Sv::new_dir();
    let gate = dir.path().join("gate");
    let config = format!(
        "[program.app]\ncommand = {}\n\
         ready = {{ kind = \"log\", pattern = 'listening on port \\d+' }}\n",
        sh(
            &format!(
                "echo booting; echo 'listening on port x'; {WAIT_GATE}\
                 echo 'listening on port 8080'; exec sleep 3600"
            ),
            &[&p(&gate)]
        )
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    // The non-matching lines are already in the log buffer: readiness did not fire on them.
    wait_until("the first lines in the log buffer", || {
        let out = sv.cli(&["logs", "app"]);
        String::from_utf8_lossy(&out.stdout).contains("listening on port x")
    });
    assert_eq!(sv.program("app")["state"], "STARTING");
    touch(&gate);
    sv.wait_state("app", "RUNNING");
}

#[test]
fn ready_op_errors_name_the_problem() {
    let config = format!(
        "[program.plain]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&[])
    );
    let sv = Sv::start(&config);
    sv.wait_state("plain", "RUNNING");
    let r = raw(&sv, &json!({"op": "ready", "program": "plain"}));
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "not_applicable", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("bridge readiness"),
        "{r}"
    );
    let r = raw(&sv, &json!({"op": "ready", "program": "nope", "pid": 1}));
    assert_eq!(r["error"]["code"], "unknown_program", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("nope"),
        "{r}"
    );
}

#[test]
fn bridge_readiness_is_reported_with_the_ready_op() {
    let Some(broker) = sv_testkit::Mosquitto::start() else {
        return;
    };
    let dir = Sv::new_dir();
    let pidf = dir.path().join("dev.pid");
    let config = format!(
        "{JSON_LOG}[bridge]\nhost = \"127.0.0.1\"\nport = {}\ninstance = \"t1\"\n\n\
         [program.dev]\ncommand = {}\nready = {{ kind = \"bridge\" }}\n",
        broker.port,
        child_cmd(&["--pid-file", &p(&pidf)])
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_state("bridge", "RUNNING");
    let pid = wait_pid_file(&pidf);
    let s = sv.wait_state("dev", "STARTING");
    assert_eq!(s["pid"], pid, "{s}");
    // A report for another incarnation is refused and changes nothing.
    let r = raw(
        &sv,
        &json!({"op": "ready", "program": "dev", "pid": pid + 100_000}),
    );
    assert_eq!(r["error"]["code"], "not_applicable", "{r}");
    assert_eq!(sv.program("dev")["state"], "STARTING");
    let r = raw(&sv, &json!({"op": "ready", "program": "dev", "pid": pid}));
    assert_eq!(r["ok"], true, "{r}");
    let s = sv.wait_state("dev", "RUNNING");
    assert_eq!(s["ready"], true, "{s}");
}

#[test]
fn readiness_timeout_fails_starts_until_fatal() {
    let dir = Sv::new_dir();
    let config = format!(
        "{JSON_LOG}[program.mute]\ncommand = {}\nready = {{ kind = \"notify\", timeout = \"200ms\" }}\n\
         startretries = 1\ncritical = false\nbackoff = {{ initial = \"10ms\", jitter = 0 }}\n\n\
         [program.steady]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&[]),
        child_cmd(&[])
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let s = sv.wait_state("mute", "FATAL");
    let reason = s["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("not ready within 200ms (notify readiness)")
            && reason.contains("gave up after 2 failed starts"),
        "{s}"
    );
    assert_eq!(s["pid"], Value::Null, "{s}");
    sv.wait_logged("gave up: FATAL", |e| e["program"] == "mute");
    let spawns = events(&sv, "spawned")
        .iter()
        .filter(|e| e["program"] == "mute")
        .count();
    assert_eq!(spawns, 2, "one start and one retry");
    let failed = events(&sv, "start failed");
    assert_eq!(failed.len(), 2, "{}", sv.stderr());
    assert!(events(&sv, "backing off before restart").len() == 1);
    // Not critical: the supervisor keeps running and stays healthy.
    let status = sv.status_json();
    assert_eq!(status["shutting_down"], false, "{status}");
    assert_eq!(sv.program("steady")["state"], "RUNNING");
    assert_eq!(sv.cli(&["health"]).status.code(), Some(0));
}

#[test]
fn a_dependent_is_not_spawned_until_its_dependency_is_ready() {
    let dir = Sv::new_dir();
    let gate = dir.path().join("gate");
    let app_pid = dir.path().join("app.pid");
    let config = format!(
        "[program.db]\ncommand = {}\nready = {{ kind = \"notify\" }}\n\n\
         [program.app]\ncommand = {}\nstartsecs = 0\ndepends_on = [\"db\"]\n",
        sh(
            &format!("{WAIT_GATE}systemd-notify --ready; exec sleep 3600"),
            &[&p(&gate)]
        ),
        child_cmd(&["--pid-file", &p(&app_pid)])
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_state("db", "STARTING");
    let app = sv.wait_program("waiting for db", "app", |s| {
        s["reason"] == "waiting for db to be ready (it is STARTING)"
    });
    assert_eq!(app["state"], "STOPPED", "{app}");
    assert_eq!(app["pid"], Value::Null, "{app}");
    assert!(!app_pid.exists(), "app was spawned before db was ready");
    // Waiting for a dependency is not healthy.
    assert_eq!(sv.cli(&["health"]).status.code(), Some(1));
    touch(&gate);
    let pid = wait_pid_file(&app_pid);
    let app = sv.wait_state("app", "RUNNING");
    assert_eq!(app["pid"], pid, "{app}");
    assert_eq!(sv.program("db")["state"], "RUNNING");
}

#[test]
fn a_completed_one_shot_runs_before_the_program_that_reads_its_output() {
    let dir = Sv::new_dir();
    let generated = dir.path().join("generated.conf");
    let copy = dir.path().join("seen.conf");
    let config = format!(
        "[program.gen]\ncommand = {}\nstartsecs = 0\nautorestart = false\n\n\
         [program.main]\ncommand = {}\nstartsecs = 0\ndepends_on = {{ gen = \"completed\" }}\n",
        sh(
            "sleep 0.05; echo 'port = 1883' > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"",
            &[&p(&generated)]
        ),
        sh(
            "cat \"$1\" > \"$2.tmp\" && mv \"$2.tmp\" \"$2\"; exec sleep 3600",
            &[&p(&generated), &p(&copy)]
        ),
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_state("main", "RUNNING");
    wait_until("main to copy the generated file", || copy.exists());
    assert_eq!(read(&copy), "port = 1883\n");
    let gen_status = sv.program("gen");
    assert_eq!(gen_status["state"], "EXITED", "{gen_status}");
    assert_eq!(gen_status["exit_status"], 0, "{gen_status}");
    // A one-shot that completed as expected counts as healthy.
    let out = sv.cli(&["health"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn started_condition_only_needs_the_dependency_spawned() {
    let dir = Sv::new_dir();
    let app_pid = dir.path().join("app.pid");
    let config = format!(
        "[program.slow]\ncommand = {}\nready = {{ kind = \"notify\" }}\n\n\
         [program.app]\ncommand = {}\nstartsecs = 0\ndepends_on = {{ slow = \"started\" }}\n",
        child_cmd(&[]),
        child_cmd(&["--pid-file", &p(&app_pid)])
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    wait_pid_file(&app_pid);
    sv.wait_state("app", "RUNNING");
    // The dependency never notifies: it is still starting, yet `started` holds.
    assert_eq!(sv.program("slow")["state"], "STARTING");
}

#[test]
fn on_dependency_restart_restart_follows_the_dependency() {
    let dir = Sv::new_dir();
    let follower_runs = dir.path().join("follower.txt");
    let waiter_runs = dir.path().join("waiter.txt");
    let config = format!(
        "{JSON_LOG}[program.db]\ncommand = {}\nstartsecs = 0\nbackoff = {{ initial = \"10ms\", jitter = 0 }}\n\n\
         [program.follower]\ncommand = {}\nstartsecs = 0\ndepends_on = [\"db\"]\non_dependency_restart = \"restart\"\n\n\
         [program.waiter]\ncommand = {}\nstartsecs = 0\ndepends_on = [\"db\"]\n",
        child_cmd(&[]),
        child_cmd(&["--append", &p(&follower_runs), "run"]),
        child_cmd(&["--append", &p(&waiter_runs), "run"]),
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let db = sv.wait_state("db", "RUNNING");
    let follower = sv.wait_state("follower", "RUNNING");
    let waiter = sv.wait_state("waiter", "RUNNING");
    kill9(db["pid"].as_i64().expect("db pid"));
    wait_lines(&follower_runs, 2);
    let f = sv.wait_program("a new process, RUNNING", "follower", |s| {
        s["state"] == "RUNNING" && s["pid"] != follower["pid"]
    });
    assert_eq!(f["restarts"], 1, "{f}");
    let db2 = sv.wait_state("db", "RUNNING");
    assert_ne!(db2["pid"], db["pid"]);
    sv.wait_logged("spawned", |e| {
        e["program"] == "follower" && e["pid"] == f["pid"]
    });
    // The follower waited for the new db process before starting again.
    let stopping = events(&sv, "stopping");
    assert!(
        stopping
            .iter()
            .any(|e| e["program"] == "follower" && e["reason"] == "dependency db restarted"),
        "{}",
        sv.stderr()
    );
    // `wait` (the default) leaves the other dependent alone.
    let w = sv.program("waiter");
    assert_eq!(w["pid"], waiter["pid"], "{w}");
    assert_eq!(w["restarts"], 0, "{w}");
    assert_eq!(wait_lines(&waiter_runs, 1).len(), 1);
}

#[test]
fn shutdown_stops_dependents_before_their_dependencies() {
    let dir = Sv::new_dir();
    let log = dir.path().join("signals.txt");
    let l = p(&log);
    // Each logs its signals under its name and says by a pid file when it handles them.
    let child = |name: &str| {
        let pid = p(&dir.path().join(format!("{name}.pid")));
        child_cmd(&["--signal-log", &l, "--signal-tag", name, "--pid-file", &pid])
    };
    // Priorities say the opposite of the dependency: the dependency must win.
    let config = format!(
        "[program.db]\ncommand = {}\nstartsecs = 0\npriority = 50\n\n\
         [program.api]\ncommand = {}\nstartsecs = 0\npriority = 1\ndepends_on = [\"db\"]\n\n\
         [program.web]\ncommand = {}\nstartsecs = 0\npriority = 1\ndepends_on = [\"api\"]\n",
        child("db"),
        child("api"),
        child("web"),
    );
    let mut sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    // RUNNING (startsecs = 0) comes at spawn; the pid file once test-child handles signals.
    for n in ["db", "api", "web"] {
        wait_pid_file(&sv.path(&format!("{n}.pid")));
    }
    sv.sigterm();
    assert_eq!(sv.wait_exit(), 0, "{}", sv.stderr());
    assert_eq!(lines(&log), ["web SIGTERM", "api SIGTERM", "db SIGTERM"]);
}

#[test]
fn failing_liveness_probe_restarts_the_program() {
    let dir = Sv::new_dir();
    let alive = dir.path().join("alive");
    let runs = dir.path().join("runs.txt");
    touch(&alive);
    let config = format!(
        "{JSON_LOG}[program.svc]\ncommand = {}\nstartsecs = 0\n\
         backoff = {{ initial = \"10ms\", jitter = 0 }}\n\
         liveness = {{ kind = \"exec\", command = [\"test\", \"-e\", {}], interval = \"20ms\", failure_threshold = 2 }}\n",
        child_cmd(&["--append", &p(&runs), "run"]),
        toml_str(&p(&alive))
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let first = sv.wait_state("svc", "RUNNING");
    assert_eq!(first["probe_failures"], 0, "{first}");
    std::fs::remove_file(&alive).expect("removing the liveness file");
    let s = sv.wait_program("a failed liveness probe", "svc", |s| {
        s["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("liveness: probe command exited with code 1"))
    });
    assert!(s["probe_failures"].as_u64() >= Some(1), "{s}");
    let s = sv.wait_program("a restart", "svc", |s| {
        s["restarts"].as_u64() >= Some(1) && s["pid"].is_i64() && s["pid"] != first["pid"]
    });
    assert!(s["probe_failures"].as_u64() >= Some(2), "{s}");
    wait_lines(&runs, 2);
    sv.wait_logged("spawned", |e| e["program"] == "svc" && e["pid"] == s["pid"]);
    let unhealthy = events(&sv, "unhealthy");
    assert!(
        unhealthy
            .iter()
            .any(|e| e["reason"] == "liveness: probe command exited with code 1 (2 of 2 failures)"),
        "{}",
        sv.stderr()
    );
    // Once the probe passes again the program stays up and the failures stop counting.
    touch(&alive);
    let settled = sv.wait_program("a passing probe", "svc", |s| {
        s["state"] == "RUNNING" && s["reason"].is_null()
    });
    assert!(settled["pid"].is_i64());
}

#[test]
fn a_silent_watchdog_restarts_the_program() {
    let dir = Sv::new_dir();
    let usec = dir.path().join("usec.txt");
    let config = format!(
        "{JSON_LOG}[program.dog]\ncommand = {}\nready = {{ kind = \"notify\" }}\nwatchdog = \"300ms\"\n\
         backoff = {{ initial = \"10ms\", jitter = 0 }}\n",
        sh(
            "echo \"$WATCHDOG_USEC\" >> \"$1\"; systemd-notify --ready; exec sleep 3600",
            &[&p(&usec)]
        )
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let first = sv.wait_state("dog", "RUNNING");
    let s = sv.wait_program("a watchdog restart", "dog", |s| {
        s["restarts"].as_u64() >= Some(1) && s["pid"] != first["pid"]
    });
    assert!(s["probe_failures"].as_u64() >= Some(1), "{s}");
    assert_eq!(
        wait_lines(&usec, 2)[0],
        "300000",
        "WATCHDOG_USEC is exported"
    );
    sv.wait_logged("spawned", |e| e["program"] == "dog" && e["pid"] == s["pid"]);
    let unhealthy = events(&sv, "unhealthy");
    assert!(
        unhealthy
            .iter()
            .any(|e| e["program"] == "dog" && e["reason"] == "watchdog: no WATCHDOG=1 within 300ms"),
        "{}",
        sv.stderr()
    );
}

#[test]
fn watchdog_pings_keep_the_program_running() {
    let dir = Sv::new_dir();
    let pings = dir.path().join("pings.txt");
    // Pings well within the watchdog period; the test waits for many pings to have been sent,
    // which spans several periods, and then checks that nothing was restarted.
    let config = format!(
        "[program.dog]\ncommand = {}\nready = {{ kind = \"notify\" }}\nwatchdog = \"3s\"\n",
        sh(
            "systemd-notify --ready; while :; do systemd-notify WATCHDOG=1; echo ping >> \"$1\"; sleep 0.05; done",
            &[&p(&pings)]
        )
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let first = sv.wait_state("dog", "RUNNING");
    wait_lines(&pings, 80);
    let s = sv.program("dog");
    assert_eq!(s["state"], "RUNNING", "{s}");
    assert_eq!(s["pid"], first["pid"], "{s}");
    assert_eq!(s["probe_failures"], 0, "{s}");
}

#[test]
fn extend_timeout_usec_pushes_the_readiness_deadline_out() {
    let dir = Sv::new_dir();
    let marker = dir.path().join("past-timeout");
    // The program asks for a minute more, then stays unready for longer than the configured
    // timeout (its own sleep, not the test's), and writes its pid to the marker file. Without
    // the extension no process could live long enough to write it.
    let config = format!(
        "[program.slow]\ncommand = {}\nready = {{ kind = \"notify\", timeout = \"200ms\" }}\n\
         critical = false\nbackoff = {{ initial = \"10ms\", jitter = 0 }}\n",
        sh(
            "systemd-notify EXTEND_TIMEOUT_USEC=60000000; sleep 0.6; \
             echo $$ > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; exec sleep 3600",
            &[&p(&marker)]
        )
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    wait_until("the program to outlive the configured timeout", || {
        marker.exists()
    });
    let pid: i64 = read(&marker).trim().parse().expect("a pid in the marker");
    let s = sv.program("slow");
    assert_eq!(s["state"], "STARTING", "{s}");
    assert_eq!(s["pid"], pid, "{s}");
}

#[test]
fn tcp_liveness_restarts_a_program_that_stops_listening() {
    let dir = Sv::new_dir();
    let gate = dir.path().join("gate");
    let addr = format!("127.0.0.1:{}", free_port());
    // The listener is a child of the shell; opening the gate kills it while the program (the
    // shell) lives on. The gate is consumed, so the next run keeps listening.
    let config = format!(
        "{JSON_LOG}[program.net]\ncommand = {}\n\
         backoff = {{ initial = \"10ms\", jitter = 0 }}\n\
         ready = {{ kind = \"tcp\", address = {addr}, interval = \"20ms\" }}\n\
         liveness = {{ kind = \"tcp\", address = {addr}, interval = \"20ms\", failure_threshold = 2 }}\n",
        sh(
            &format!(
                "\"$2\" --listen \"$3\" & l=$!; {WAIT_GATE}rm -f \"$1\"; kill $l; \
                 while :; do sleep 1; done"
            ),
            &[&p(&gate), &p(&common::test_child()), &addr]
        ),
        addr = toml_str(&addr)
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let first = sv.wait_state("net", "RUNNING");
    touch(&gate);
    let s = sv.wait_program("a restart", "net", |s| {
        s["restarts"] == 1 && s["state"] == "RUNNING"
    });
    assert_ne!(s["pid"], first["pid"], "{s}");
    assert!(s["probe_failures"].as_u64() >= Some(2), "{s}");
    sv.wait_logged("spawned", |e| e["program"] == "net" && e["pid"] == s["pid"]);
    let unhealthy = events(&sv, "unhealthy");
    assert!(
        unhealthy.iter().any(|e| e["program"] == "net"
            && e["reason"] == "liveness: connection refused (2 of 2 failures)"),
        "{}",
        sv.stderr()
    );
}

#[test]
fn mainpid_hands_the_program_over_to_the_daemon_it_forked() {
    // The wrapper starts a daemon, names it with MAINPID= (systemd-notify --pid) and exits:
    // the program is the daemon from then on, its wrapper's exit goes unnoticed, and the
    // daemon's own death is the program's exit.
    let dir = Sv::new_dir();
    let daemon_pid = dir.path().join("daemon.pid");
    let wrapper_pid = dir.path().join("wrapper.pid");
    let config = format!(
        "{JSON_LOG}[program.svc]\ncommand = {}\nready = {{ kind = \"notify\" }}\nautorestart = false\ncritical = false\n",
        sh(
            "echo $$ > \"$2\"; sleep 3600 & echo $! > \"$1\"; systemd-notify --ready --pid=$!; exit 0",
            &[&p(&daemon_pid), &p(&wrapper_pid)]
        )
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let daemon: i32 = wait_for("the daemon's pid", WAIT, || {
        read(&daemon_pid).trim().parse().ok()
    });
    let s = sv.wait_program("svc to be its daemon", "svc", |s| {
        s["state"] == "RUNNING" && s["pid"] == daemon
    });
    assert_eq!(s["restarts"], 0, "{s}");
    // Once the wrapper has exited, the daemon is the supervisor's (as subreaper) and the program
    // is still RUNNING as it. (A daemon that dies while the wrapper still runs is the wrapper's
    // to reap; docs/readiness-and-health.md says so.)
    let wrapper: i32 = read(&wrapper_pid).trim().parse().unwrap();
    wait_until("the wrapper to exit", || {
        !std::path::Path::new(&format!("/proc/{wrapper}")).exists()
    });
    assert_eq!(sv.program("svc")["state"], "RUNNING");
    kill(Pid::from_raw(daemon), Signal::SIGKILL).unwrap();
    let s = sv.wait_program("svc to exit with its daemon", "svc", |s| s["pid"].is_null());
    assert_eq!(s["exit_status"], 137, "{s}");
    assert!(
        sv.stderr().contains("main process changed"),
        "{}",
        sv.stderr()
    );
}
