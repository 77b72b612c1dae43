//! The container tier: iot2mqtt-sv as ENTRYPOINT and HEALTHCHECK of real images under Podman,
//! checked through what a user sees from the engine — `podman inspect`, `podman logs`, exit
//! codes, `podman exec … iot2mqtt-sv status`, and MQTT on a broker outside the container.
//!
//! Every test is `#[ignore]`d: they need images that `scripts/test-containers` builds (it names
//! them in `$IOT2MQTT_SV_TEST_IMAGES`) and then runs exactly these tests with
//! `--run-ignored ignored-only`. Containers use Podman's private bridge network, so nothing in
//! them can clash with a port on the host; the host's broker listens on a free port on every
//! interface and the container reaches it as `host.containers.internal`.
//!
//! Podman runs healthchecks from a systemd timer, which CI machines lack: the tests run each
//! check with `podman healthcheck run` (the image's HEALTHCHECK command, counted against its
//! `--retries` as the timer would) and read the verdict from `podman inspect`.
// Tests drive podman and the CLI as a user would and wait for them: the one-reaper rule is PID
// 1's, not the test harness's.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use sv_testkit::{Mosquitto, Subscriber, TempDir, free_port, tempdir, wait_for};

/// Containers start, stop and restart through the engine, several at once on a busy machine.
const LONG: Duration = Duration::from_secs(90);

fn image(name: &str) -> String {
    let prefix = std::env::var("IOT2MQTT_SV_TEST_IMAGES").expect(
        "IOT2MQTT_SV_TEST_IMAGES is unset: run these tests through scripts/test-containers",
    );
    format!("{prefix}/{name}")
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("running podman")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A host broker reachable from containers: the testkit's loopback listener for the test's own
/// subscribers, plus one on every interface for the container.
struct Broker {
    mqtt: Mosquitto,
    outside_port: u16,
}

impl Broker {
    fn start() -> Broker {
        let outside_port = free_port();
        let mqtt = Mosquitto::start_with(&format!("listener {outside_port}"))
            .expect("mosquitto (REQUIRE_MOSQUITTO=1 in this tier)");
        Broker { mqtt, outside_port }
    }

    /// `-e` arguments that point a container's bridge at this broker, for `instance`.
    fn env(&self, instance: &str) -> Vec<String> {
        [
            "MQTT_HOST=host.containers.internal".to_string(),
            format!("MQTT_PORT={}", self.outside_port),
            format!("INSTANCE_NAME={instance}"),
        ]
        .into_iter()
        .flat_map(|e| ["-e".to_string(), e])
        .collect()
    }

    /// A connector image built from `examples/<example>`, as the platform runs it (the
    /// instance is named after the example, whose instance file the image carries).
    fn connector(&self, example: &str) -> Container {
        Container::run(&image(example), None, &self.env(example))
    }

    fn subscribe(&self, topic: &str) -> Subscriber {
        self.mqtt.subscribe(topic)
    }
}

/// A detached container, removed (with SIGKILL) when dropped.
struct Container {
    name: String,
    dir: TempDir,
}

impl Container {
    /// `podman run -d` of `image` with `args` before the image name; `config`, when given,
    /// is mounted read-only at `/etc/iot2mqtt-sv.toml` (the supervisor's default path).
    fn run(image: &str, config: Option<&str>, args: &[String]) -> Container {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "iot2mqtt-sv-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempdir().expect("tempdir");
        let mut cmd: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.clone()];
        if let Some(config) = config {
            let file = dir.path().join("iot2mqtt-sv.toml");
            std::fs::write(&file, config).expect("writing the config");
            cmd.push("-v".into());
            cmd.push(format!("{}:/etc/iot2mqtt-sv.toml:ro", file.display()));
        }
        cmd.extend(args.iter().cloned());
        cmd.push(image.to_string());
        let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let out = podman(&refs);
        assert!(out.status.success(), "podman {cmd:?}: {}", text(&out));
        Container { name, dir }
    }

    fn busybox(config: &str, args: &[&str]) -> Container {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Container::run(&image("busybox"), Some(config), &args)
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["exec", &self.name];
        all.extend_from_slice(args);
        podman(&all)
    }

    /// `podman exec` that must succeed; its stdout.
    fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        assert!(out.status.success(), "exec {script:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn inspect(&self, format: &str) -> String {
        let out = podman(&["inspect", "--format", format, &self.name]);
        assert!(out.status.success(), "inspect: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `podman logs`: the supervisor's stdout and stderr, as the engine recorded them.
    fn logs(&self) -> String {
        text(&podman(&["logs", &self.name]))
    }

    #[track_caller]
    fn wait_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_for(what, LONG, || {
            let logs = self.logs();
            pred(&logs).then_some(logs)
        })
    }

    /// `iot2mqtt-sv status --json` run inside the container, as a user would.
    fn status(&self) -> Option<Value> {
        let out = self.exec(&["iot2mqtt-sv", "status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    #[track_caller]
    fn wait_program(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(&format!("{name}: {what}"), LONG, || {
            let status = self.status()?;
            let p = status["programs"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == name)?
                .clone();
            pred(&p).then_some(p)
        })
    }

    #[track_caller]
    fn wait_running(&self, names: &[&str]) {
        for name in names {
            self.wait_program(name, "RUNNING and ready", |p| {
                p["state"] == "RUNNING" && p["ready"] == true
            });
        }
    }

    /// Runs the image's HEALTHCHECK once; true when it passed.
    fn check_health(&self) -> bool {
        podman(&["healthcheck", "run", &self.name]).status.success()
    }

    /// Runs the HEALTHCHECK until the engine's verdict (`podman inspect`) is `want`.
    #[track_caller]
    fn wait_health(&self, want: &str) {
        wait_for(&format!("podman inspect health {want}"), LONG, || {
            self.check_health();
            (self.inspect("{{.State.Health.Status}}") == want).then_some(())
        })
    }

    /// The container's exit code once the engine reports it exited.
    #[track_caller]
    fn wait_exit(&self) -> i64 {
        wait_for("the container to exit", LONG, || {
            (self.inspect("{{.State.Status}}") == "exited").then_some(())
        });
        self.inspect("{{.State.ExitCode}}")
            .parse()
            .expect("exit code")
    }

    /// `podman stop` with Docker's default grace (SIGTERM, SIGKILL 10 s later).
    fn stop(&self) {
        let out = podman(&["stop", "--time", "10", &self.name]);
        assert!(out.status.success(), "podman stop: {}", text(&out));
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.name]);
    }
}

/// The positions of the supervisor's text-format event lines with this message and program.
fn event(logs: &str, message: &str, program: &str) -> usize {
    let needle = format!("program={program} ");
    logs.lines()
        .position(|l| l.contains(&format!(" {message} ")) && l.contains(&needle))
        .unwrap_or_else(|| panic!("no `{message}` event for {program} in:\n{logs}"))
}

fn wait_message(sub: &Subscriber, what: &str, pred: impl Fn(&str, &str) -> bool) {
    wait_for(what, LONG, || {
        sub.messages().iter().any(|(t, p)| pred(t, p)).then_some(())
    })
}

/// A host broker, a subscriber on `topic` there, and the example's connector image running.
fn connector(example: &str, topic: &str) -> (Broker, Subscriber, Container) {
    let broker = Broker::start();
    let sub = broker.subscribe(topic);
    let c = broker.connector(example);
    (broker, sub, c)
}

const QS: &str = "IoT2mqtt/v1/instances/quickstart";
const HUB: &str = "IoT2mqtt/v1/instances/sensor-hub";

#[test]
#[ignore = "container tier: scripts/test-containers"]
fn quickstart_image_runs_its_programs_reports_healthy_and_publishes_state() {
    let (_broker, sub, c) = connector("quickstart", &format!("{QS}/#"));

    c.wait_running(&["bridge", "lamp", "plug", "thermometer"]);
    let status = c.exec(&["iot2mqtt-sv", "status"]);
    assert!(status.status.success(), "status: {}", text(&status));
    assert!(
        text(&status).contains("healthy: all critical programs ready"),
        "{}",
        text(&status)
    );
    c.wait_health("healthy");
    wait_message(&sub, "online", |t, p| {
        t == format!("{QS}/status") && p == "online"
    });
    wait_message(&sub, "a device state", |t, _| {
        t.starts_with(&format!("{QS}/devices/")) && t.ends_with("/state")
    });
}

/// The static binary COPYed into a plain Debian base: Python and Node.js programs, ready by
/// their own means (sd_notify from Python, an HTTP answer from Node.js), and the HEALTHCHECK
/// passes. The port is the container's own: its network namespace is private.
#[test]
#[ignore = "container tier: scripts/test-containers"]
fn debian_image_runs_python_and_node_programs_to_ready() {
    let c = Container::run(
        &image("debian"),
        Some(
            r#"
[program.py]
command = ["python3", "-c", "import os, socket, time\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\ns.connect(os.environ['NOTIFY_SOCKET'])\ns.send(b'READY=1')\ntime.sleep(1e6)"]
ready = { kind = "notify", timeout = "60s" }

[program.js]
command = ["node", "-e", "require('http').createServer((q, r) => r.end('ok')).listen(8080, '127.0.0.1')"]
ready = { kind = "http", url = "http://127.0.0.1:8080/", timeout = "60s" }
depends_on = ["py"]
"#,
        ),
        &[],
    );
    c.wait_running(&["py", "js"]);
    c.wait_health("healthy");
    let status = c.exec(&["iot2mqtt-sv", "status"]);
    assert!(
        text(&status).contains("healthy: all critical programs ready"),
        "{}",
        text(&status)
    );
}

/// Scenario 1's second half: a critical program's readiness drives the engine's health verdict
/// both ways. The liveness probe restarts `core` when /tmp/down appears; its readiness then
/// holds it in STARTING until the file is gone.
#[test]
#[ignore = "container tier: scripts/test-containers"]
fn health_turns_unhealthy_while_a_critical_program_is_unready_and_back() {
    let c = Container::busybox(
        r#"
[program.core]
command = ["sleep", "1000000"]
ready = { kind = "exec", command = ["sh", "-c", "! test -e /tmp/down"], timeout = "10m" }
liveness = { kind = "exec", command = ["sh", "-c", "! test -e /tmp/down"], interval = "200ms", failure_threshold = 1 }
backoff = { initial = "100ms", max = "100ms" }
"#,
        // The image's HEALTHCHECK as it is: failures inside its 30 s start period do not count
        // (podman 4.3 applies --health-start-period only with --health-cmd), so `unhealthy`
        // comes after 30 s and three failed checks, as in production.
        &[],
    );
    c.wait_running(&["core"]);
    c.wait_health("healthy");

    c.sh("touch /tmp/down");
    c.wait_program("core", "not ready", |p| p["ready"] == false);
    let out = podman(&["healthcheck", "run", &c.name]);
    assert!(
        !out.status.success(),
        "healthcheck passed while core is unready"
    );
    c.wait_health("unhealthy");

    c.sh("rm /tmp/down");
    c.wait_health("healthy");
    assert_eq!(c.inspect("{{.State.Status}}"), "running");
}

#[test]
#[ignore = "container tier: scripts/test-containers"]
fn podman_stop_stops_programs_in_order_publishes_offline_and_exits_0() {
    let (_broker, sub, c) = connector("sensor-hub", &format!("{HUB}/status"));
    c.wait_running(&["bridge", "radio", "actuators", "coordinator"]);
    wait_message(&sub, "online", |_, p| p == "online");

    c.stop();
    assert_eq!(c.wait_exit(), 0, "logs:\n{}", c.logs());
    wait_message(&sub, "offline", |_, p| p == "offline");
    let logs = c.logs();
    // Reverse start order, level by level: the coordinator (depends on radio and actuators)
    // has exited before either of them is asked; the bridge (every program's dependency) last.
    let coordinator_exited = event(&logs, "exited", "coordinator");
    for p in ["radio", "actuators"] {
        assert!(
            coordinator_exited < event(&logs, "stopping", p),
            "{p} asked to stop before coordinator exited:\n{logs}"
        );
        assert!(
            event(&logs, "exited", p) < event(&logs, "stopping", "bridge"),
            "bridge asked to stop before {p} exited:\n{logs}"
        );
    }
    assert!(!logs.contains("did not stop in time"), "{logs}");
    assert!(logs.contains("supervisor exiting code=0"), "{logs}");
}

/// A program that ignores SIGTERM is SIGKILLed inside `shutdown_timeout`, so the supervisor
/// exits 0 on its own before the engine's 10 s grace: an engine SIGKILL would show as 137.
#[test]
#[ignore = "container tier: scripts/test-containers"]
fn a_program_ignoring_sigterm_is_killed_inside_shutdown_timeout() {
    let c = Container::busybox(
        r#"
[supervisor]
shutdown_timeout = "3s"

[program.stubborn]
command = ["sh", "-c", "trap '' TERM; echo trap set; while :; do sleep 1; done"]
startsecs = 0
"#,
        &[],
    );
    c.wait_log("the trap", |l| l.contains("stubborn | trap set"));
    c.stop();
    assert_eq!(c.wait_exit(), 0, "logs:\n{}", c.logs());
    let logs = c.logs();
    assert!(
        logs.contains("did not stop in time: SIGKILL") && logs.contains("program=stubborn"),
        "{logs}"
    );
}

const FATAL_PROGRAM: &str = r#"
[program.broken]
command = ["sh", "-c", "echo failing; exit 7"]
startretries = 1
backoff = { initial = "100ms", max = "100ms" }
"#;

#[test]
#[ignore = "container tier: scripts/test-containers"]
fn a_fatal_critical_program_ends_the_container_with_its_exit_code() {
    let c = Container::busybox(FATAL_PROGRAM, &[]);
    assert_eq!(c.wait_exit(), 7, "logs:\n{}", c.logs());
    let logs = c.logs();
    assert!(logs.contains("gave up: FATAL"), "{logs}");
    assert_eq!(c.inspect("{{.RestartCount}}"), "0");
}

/// The engine's restart policy takes over after a FATAL exit. Without systemd, Podman restarts
/// through conmon's exit hook (`podman container cleanup`), which works as long as the engine's
/// binaries are on conmon's PATH; the count is `RestartCount` in `podman inspect`.
#[test]
#[ignore = "container tier: scripts/test-containers"]
fn restart_on_failure_restarts_the_container_after_a_fatal_exit() {
    let c = Container::busybox(FATAL_PROGRAM, &["--restart", "on-failure:2"]);
    wait_for("two restarts", LONG, || {
        (c.inspect("{{.RestartCount}}") == "2").then_some(())
    });
    assert_eq!(c.wait_exit(), 7, "logs:\n{}", c.logs());
    // Three runs, each ending the same way.
    assert_eq!(
        c.logs().matches("gave up: FATAL").count(),
        3,
        "{}",
        c.logs()
    );
}

/// Orphans of a program are adopted by PID 1 (the supervisor) and reaped when they exit: `ps`
/// in the container shows them with parent 1 while alive, and no zombie afterwards. An orphan
/// daemon in its own session (out of reach of the program's process group) that never exits is
/// swept at `podman stop`, and the container still exits 0.
#[test]
#[ignore = "container tier: scripts/test-containers"]
fn orphans_are_adopted_and_reaped_leaving_no_zombies() {
    let c = Container::busybox(
        r#"
[program.forker]
command = ["sh", "-c", "for i in 1 2 3; do (sh -c 'while [ ! -e /tmp/go ]; do sleep 0.1; done' &); done; (setsid sleep 999999 &); exec sleep 1000000"]
startsecs = 0
"#,
        &[],
    );
    let ps = || c.sh("ps -o pid,ppid,stat,args");
    let orphans_of_1 = |table: &str, args: &str| {
        table
            .lines()
            .filter(|l| l.contains(args))
            .filter(|l| l.split_whitespace().nth(1) == Some("1"))
            .count()
    };
    wait_for("four orphans of PID 1", LONG, || {
        let table = ps();
        (orphans_of_1(&table, "/tmp/go") == 3 && orphans_of_1(&table, "sleep 999999") == 1)
            .then_some(())
    });
    c.sh("touch /tmp/go");
    let table = wait_for("the orphans gone", LONG, || {
        let table = ps();
        (!table.contains("/tmp/go")).then_some(table)
    });
    let zombies: Vec<&str> = table
        .lines()
        .skip(1)
        .filter(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|s| s.starts_with('Z'))
        })
        .collect();
    assert!(zombies.is_empty(), "zombies: {zombies:?}\n{table}");

    c.stop();
    assert_eq!(c.wait_exit(), 0, "logs:\n{}", c.logs());
    let logs = c.logs();
    assert!(
        logs.contains("signalled leftover processes count=1"),
        "{logs}"
    );
}

/// The bridge's instance file for the quickstart instance, mounted where the platform puts it.
fn instances() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/instances");
    format!("{}:/app/instances:ro", dir.display())
}

/// `--read-only` with a tmpfs /run and `--user 1000:1000`: /run/iot2mqtt-sv cannot be created,
/// so the sockets fall back to /tmp/iot2mqtt-sv-1000 (no $XDG_RUNTIME_DIR in a container), and
/// `status`, `health` and the bridge all find them there.
#[test]
#[ignore = "container tier: scripts/test-containers"]
fn read_only_root_as_non_root_user_falls_back_to_a_writable_socket_directory() {
    let broker = Broker::start();
    let sub = broker.subscribe(&format!("{QS}/status"));
    let mut args = broker.env("quickstart");
    args.extend(
        [
            "--read-only",
            "--tmpfs",
            "/run",
            "--user",
            "1000:1000",
            "-v",
            &instances(),
        ]
        .map(String::from),
    );
    let c = Container::run(
        &image("busybox"),
        Some(
            r#"
[bridge]

[program.worker]
command = ["sleep", "1000000"]
startsecs = 0
"#,
        ),
        &args,
    );
    c.wait_running(&["bridge", "worker"]);
    let listing = c.sh("ls /tmp/iot2mqtt-sv-1000");
    assert!(
        listing.contains("control.sock") && listing.contains("bridge.sock"),
        "{listing}"
    );
    let health = c.exec(&["iot2mqtt-sv", "health"]);
    assert!(health.status.success(), "health: {}", text(&health));
    c.wait_health("healthy");
    wait_message(&sub, "online", |_, p| p == "online");
    assert!(
        c.logs()
            .contains("control socket listening path=/tmp/iot2mqtt-sv-1000/control.sock"),
        "{}",
        c.logs()
    );
}

#[test]
#[ignore = "container tier: scripts/test-containers"]
fn a_program_user_under_a_non_root_supervisor_is_a_config_error() {
    let c = Container::busybox(
        r#"
[program.worker]
command = ["sleep", "1000000"]
user = "root"
"#,
        &["--user", "1000:1000"],
    );
    assert_eq!(c.wait_exit(), 2, "logs:\n{}", c.logs());
    let logs = c.logs();
    assert!(
        logs.contains(r#"program "worker": user = "root" needs the supervisor to run as root"#),
        "{logs}"
    );
    assert!(!logs.contains("spawned"), "{logs}");
}

/// A program that reports each signal it receives, and the container running it.
fn signal_reporter() -> Container {
    let c = Container::busybox(
        r#"
[program.reporter]
command = ["sh", "-c", "trap 'echo got HUP' HUP; trap 'echo got USR1' USR1; echo armed; while :; do sleep 0.1; done"]
startsecs = 0
"#,
        &[],
    );
    c.wait_log("the traps", |l| l.contains("reporter | armed"));
    c
}

/// `podman kill -s SIG` reaches PID 1, which forwards it to the program and does nothing else.
fn assert_forwarded(signal: &str) {
    let c = signal_reporter();
    let out = podman(&["kill", "--signal", signal, &c.name]);
    assert!(out.status.success(), "podman kill: {}", text(&out));
    c.wait_log(&format!("the program's report of {signal}"), |l| {
        l.contains(&format!("reporter | got {signal}"))
    });
    let p = c.wait_program("reporter", "still running", |p| p["state"] == "RUNNING");
    assert_eq!(p["restarts"], 0, "{p}");
    assert_eq!(c.inspect("{{.State.Status}}"), "running");
}

#[test]
#[ignore = "container tier: scripts/test-containers"]
fn sigusr1_from_the_engine_is_forwarded_to_programs() {
    assert_forwarded("USR1");
}

/// SIGHUP means reload (docs/signals-and-exit-codes.md): `podman kill -s HUP` makes PID 1 read
/// its config again and apply the difference; the running program neither gets the signal nor
/// restarts.
#[test]
#[ignore = "container tier: scripts/test-containers"]
fn sighup_from_the_engine_reloads_the_config() {
    let c = signal_reporter();
    let before = c.wait_program("reporter", "running", |p| p["state"] == "RUNNING");
    let config = c.dir.path().join("iot2mqtt-sv.toml");
    let mut text_now = std::fs::read_to_string(&config).expect("reading the config");
    text_now.push_str("\n[program.added]\ncommand = [\"sleep\", \"1000000\"]\nstartsecs = 0\n");
    // Rewritten in place: the bind mount follows the inode.
    std::fs::write(&config, text_now).expect("rewriting the config");
    let out = podman(&["kill", "--signal", "HUP", &c.name]);
    assert!(out.status.success(), "podman kill: {}", text(&out));
    c.wait_program("added", "started by the reload", |p| {
        p["state"] == "RUNNING"
    });
    let after = c.wait_program("reporter", "still running", |p| p["state"] == "RUNNING");
    assert_eq!(
        after["pid"], before["pid"],
        "untouched by the reload: {after}"
    );
    assert_eq!(after["restarts"], 0, "{after}");
    assert!(
        !c.logs().contains("reporter | got HUP"),
        "the program got the supervisor's SIGHUP:\n{}",
        c.logs()
    );
    assert_eq!(c.inspect("{{.State.Status}}"), "running");
}
