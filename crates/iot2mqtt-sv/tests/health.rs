//! End-to-end health: `iot2mqtt-sv health` exit codes across program states, and the HTTP
//! server (`/live`, `/health`, `/ready`, `/metrics`) of the real `iot2mqtt-sv run`.
//!
//! HTTP requests are written by hand on a `std::net::TcpStream`, so the test sees exactly the
//! bytes a probe or a scraper would. Programs that must be observed while STARTING wait for a
//! gate file the test creates; every wait polls the status or the HTTP answer.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;

use common::{Sv, child_cmd, http, toml_str};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use sv_testkit::{WAIT, wait_for};

/// A TOML array running `script` with `/bin/sh -c`, with `args` as `$1`, `$2`, ...
fn sh(script: &str, args: &[&str]) -> String {
    let mut parts = vec![toml_str("/bin/sh"), toml_str("-c"), toml_str(script)];
    parts.push(toml_str("sh"));
    parts.extend(args.iter().map(|a| toml_str(a)));
    format!("[{}]", parts.join(", "))
}

/// A notify program that becomes ready once the file `gate` exists.
fn gated(gate: &Path) -> String {
    sh(
        "while [ ! -e \"$1\" ]; do sleep 0.01; done; systemd-notify --ready; exec sleep 3600",
        &[&gate.display().to_string()],
    )
}

fn touch(path: &Path) {
    std::fs::write(path, b"").expect("creating gate file");
}

/// `(exit code, stdout, stderr)` of a CLI run.
fn run(sv: &Sv, args: &[&str]) -> (i32, String, String) {
    let out = sv.cli(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The address the supervisor's HTTP server bound, from `status --json`.
fn http_addr(sv: &Sv) -> String {
    let (code, out, err) = run(sv, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("status --json");
    let addr = v["supervisor"]["http"]
        .as_str()
        .unwrap_or_else(|| panic!("no supervisor.http in {v}"))
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert_ne!(
        addr, "127.0.0.1:0",
        "the bound port is shown, not the configured 0"
    );
    addr
}

#[test]
fn health_exit_code_follows_critical_readiness() {
    let dir = Sv::new_dir();
    let gate = dir.path().join("gate");
    let config = format!(
        "[program.core]\ncommand = {}\nready = {{ kind = \"notify\" }}\n\n\
         [program.extra]\ncommand = {}\ncritical = false\nready = {{ kind = \"notify\" }}\n",
        gated(&gate),
        child_cmd(&[])
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_state("core", "STARTING");
    let (code, out, _) = run(&sv, &["health"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(out, "unhealthy: core is STARTING\n");
    let (code, out, _) = run(&sv, &["health", "--json"]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).expect("health --json");
    assert_eq!(v["healthy"], false, "{v}");
    assert_eq!(v["reason"], "core is STARTING", "{v}");
    touch(&gate);
    sv.wait_state("core", "RUNNING");
    // `extra` never becomes ready, but it is not critical.
    assert_eq!(sv.program("extra")["state"], "STARTING");
    let (code, out, _) = run(&sv, &["health"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "healthy: all critical programs ready\n");
    assert_eq!(out.lines().count(), 1);
}

#[test]
fn health_is_unhealthy_while_a_critical_program_backs_off() {
    let config = format!(
        "[program.crashy]\ncommand = {}\nstartsecs = 0\nbackoff = {{ initial = \"1h\", max = \"1h\" }}\n",
        child_cmd(&["--exit", "4", "--exit-after-ms", "0"])
    );
    let sv = Sv::start(&config);
    sv.wait_state("crashy", "BACKOFF");
    let (code, out, _) = run(&sv, &["health"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        out,
        "unhealthy: crashy is BACKOFF: exited with exit code 4\n"
    );
    // A program the operator stopped on purpose is healthy again.
    let (code, _, err) = run(&sv, &["stop", "crashy"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run(&sv, &["health"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn health_is_unhealthy_while_a_critical_program_is_fatal() {
    // FATAL of a critical program shuts the supervisor down; the shutdown itself is what health
    // must report while the last program is still stopping. `doomed` starts only once
    // `stubborn` runs: otherwise it could go FATAL while `stubborn`'s spawn is still queued,
    // and the shutdown cancels that spawn.
    let dir = Sv::new_dir();
    let config = format!(
        "[supervisor]\nshutdown_timeout = \"1m\"\n\n\
         [program.doomed]\ncommand = {}\nstartsecs = \"1h\"\nstartretries = 0\ndepends_on = [\"stubborn\"]\n\n\
         [program.stubborn]\ncommand = {}\nstartsecs = 0\nstopwaitsecs = \"1m\"\npriority = 1\n",
        child_cmd(&["--exit", "3", "--exit-after-ms", "0"]),
        child_cmd(&[
            "--ignore-term",
            "--pid-file",
            &dir.path().join("s.pid").display().to_string()
        ])
    );
    let mut sv = Sv::spawn_in(dir, &config, Default::default());
    let pid = common::wait_pid_file(&sv.path("s.pid"));
    let (code, out) = wait_for("health to report the shutdown", WAIT, || {
        let (code, out, _) = run(&sv, &["health"]);
        out.contains("shutting down").then_some((code, out))
    });
    assert_eq!(code, 1, "{out}");
    assert_eq!(sv.program("doomed")["state"], "FATAL");
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("SIGKILL");
    assert_eq!(sv.wait_exit(), 3);
}

#[test]
fn health_without_a_supervisor_is_unhealthy_and_says_why() {
    let dir = Sv::new_dir();
    let socket = dir.path().join("nobody.sock");
    let out = std::process::Command::new(common::bin())
        .arg("health")
        .env("IOT2MQTT_SV_SOCKET", &socket)
        .env_remove("IOT2MQTT_SV_CONFIG")
        .output()
        .expect("running health");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with("unhealthy: cannot reach the supervisor at ")
            && text.contains(&socket.display().to_string()),
        "{text}"
    );
}

#[test]
fn health_usage_error_exits_2() {
    let out = std::process::Command::new(common::bin())
        .args(["health", "--bogus"])
        .output()
        .expect("running health");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}

#[test]
fn http_endpoints_report_liveness_health_readiness_and_metrics() {
    let dir = Sv::new_dir();
    let gate = dir.path().join("gate");
    let config = format!(
        "[supervisor.http]\nlisten = \"127.0.0.1:0\"\n\n\
         [program.core]\ncommand = {}\nready = {{ kind = \"notify\" }}\n\n\
         [program.side]\ncommand = {}\nstartsecs = 0\ncritical = false\n",
        gated(&gate),
        child_cmd(&[])
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_state("core", "STARTING");
    sv.wait_state("side", "RUNNING");
    let addr = http_addr(&sv);

    let live = http(&addr, "GET", "/live");
    assert_eq!(live.status, 200, "{live:?}");
    assert_eq!(live.header("content-type"), Some("application/health+json"));
    assert_eq!(live.json()["status"], "pass");

    for path in ["/health", "/ready"] {
        let r = http(&addr, "GET", path);
        assert_eq!(r.status, 503, "{path}: {r:?}");
        assert_eq!(r.header("content-type"), Some("application/health+json"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let doc = r.json();
        assert_eq!(doc["status"], "fail", "{doc}");
        assert_eq!(doc["output"], "core is STARTING", "{doc}");
        let core = &doc["checks"]["program:core"][0];
        assert_eq!(core["status"], "fail", "{doc}");
        assert_eq!(core["observedValue"], "STARTING", "{doc}");
        assert_eq!(core["critical"], true, "{doc}");
        let side = &doc["checks"]["program:side"][0];
        assert_eq!(side["status"], "pass", "{doc}");
        assert_eq!(side["critical"], false, "{doc}");
    }

    touch(&gate);
    sv.wait_state("core", "RUNNING");
    for path in ["/health", "/ready"] {
        let r = http(&addr, "GET", path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let doc = r.json();
        assert_eq!(doc["status"], "pass", "{doc}");
        assert_eq!(doc["checks"]["program:core"][0]["observedValue"], "RUNNING");
    }

    let m = http(&addr, "GET", "/metrics");
    assert_eq!(m.status, 200, "{m:?}");
    assert!(
        m.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{m:?}"
    );
    for want in [
        "# TYPE iot2mqtt_sv_program_state gauge",
        "iot2mqtt_sv_program_state{program=\"core\",state=\"RUNNING\"} 1",
        "iot2mqtt_sv_program_state{program=\"core\",state=\"STARTING\"} 0",
        "iot2mqtt_sv_program_restarts_total{program=\"side\"} 0",
        "iot2mqtt_sv_program_ready{program=\"core\"} 1",
        "iot2mqtt_sv_program_probe_failures_total{program=\"core\"} 0",
        "iot2mqtt_sv_healthy 1",
    ] {
        assert!(
            m.body.lines().any(|l| l == want),
            "missing {want:?} in\n{}",
            m.body
        );
    }
    assert!(
        m.body
            .lines()
            .any(|l| l.starts_with("iot2mqtt_sv_program_uptime_seconds{program=\"side\"} ")),
        "{}",
        m.body
    );

    let head = http(&addr, "HEAD", "/live");
    assert_eq!(head.status, 200);
    assert_eq!(head.body, "");
    let post = http(&addr, "POST", "/health");
    assert_eq!(post.status, 405, "{post:?}");
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let missing = http(&addr, "GET", "/nope");
    assert_eq!(missing.status, 404, "{missing:?}");
}

#[test]
fn ready_endpoint_fails_during_shutdown_while_live_passes() {
    let dir = Sv::new_dir();
    let pidf = dir.path().join("slow.pid");
    let config = format!(
        "[supervisor]\nshutdown_timeout = \"1m\"\n\n[supervisor.http]\nlisten = \"127.0.0.1:0\"\n\n\
         [program.slow]\ncommand = {}\nstartsecs = 0\nstopwaitsecs = \"1m\"\n",
        child_cmd(&["--ignore-term", "--pid-file", &pidf.display().to_string()])
    );
    let mut sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_state("slow", "RUNNING");
    let addr = http_addr(&sv);
    assert_eq!(http(&addr, "GET", "/ready").status, 200);
    let pid = common::wait_pid_file(&pidf);
    sv.sigterm();
    let ready = wait_for("/ready to fail", WAIT, || {
        let r = http(&addr, "GET", "/ready");
        (r.status == 503).then_some(r)
    });
    let doc = ready.json();
    assert_eq!(doc["status"], "fail", "{doc}");
    assert_eq!(doc["output"], "shutting down", "{doc}");
    assert_eq!(http(&addr, "GET", "/live").status, 200);
    assert_eq!(http(&addr, "GET", "/health").status, 503);
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("SIGKILL");
    assert_eq!(sv.wait_exit(), 0);
}
