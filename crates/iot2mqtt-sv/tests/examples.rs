//! The examples newcomers run first, exercised end to end: `examples/quickstart` (directly and
//! through `scripts/demo --check`) and `examples/sensor-hub`, each under the real binary, with
//! real Python and Node.js programs and a real mosquitto on a free port.
//!
//! Each example directory is copied into the test's temporary directory and run from there with
//! its own config text (only the sensor hub's fixed health port is swapped for a free one), so
//! the test also proves the example is self-contained apart from the client libraries, which it
//! finds through `IOT2MQTT_SV_REPO` as `scripts/demo` does.
//!
//! Synchronisation is on observable facts only: the status over the control socket, messages a
//! `mosquitto_sub` received, the supervisor's event log. When mosquitto, python3 or node is missing
//! the tests print a skip line, except with `REQUIRE_MOSQUITTO=1` (CI), where they fail.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::{Sv, SvOptions, bin};
use serde_json::Value;
use sv_testkit::{Mosquitto, WAIT, free_port, wait_for};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Whether every tool an example needs is installed; prints a skip line when not, and fails
/// instead under `REQUIRE_MOSQUITTO=1`.
fn have_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        !sv_testkit::mosquitto_required(),
        "{} required (REQUIRE_MOSQUITTO=1) but not installed",
        missing.join(", ")
    );
    eprintln!("skipped: not installed: {}", missing.join(", "));
    false
}

const QUICKSTART_TOOLS: &[&str] = &[
    "mosquitto",
    "mosquitto_sub",
    "mosquitto_pub",
    "python3",
    "node",
];

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("creating a directory");
    for entry in std::fs::read_dir(src).expect("reading an example directory") {
        let entry = entry.expect("directory entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).expect("copying an example file");
        }
    }
}

/// `PATH` with the binary under test first, for programs that run `iot2mqtt-sv publish`.
fn path_with_bin() -> String {
    let dir = bin()
        .parent()
        .expect("binary directory")
        .display()
        .to_string();
    match std::env::var("PATH") {
        Ok(p) => format!("{dir}:{p}"),
        Err(_) => dir,
    }
}

/// A `mosquitto_sub -v` on any port (the quickstart runs its own broker, so the testkit's
/// [`Mosquitto::subscribe`] does not apply), collecting `(topic, payload)` pairs.
struct Sub {
    child: Child,
    lines: Arc<Mutex<Vec<(String, String)>>>,
}

impl Sub {
    fn start(port: u16, topic: &str) -> Sub {
        let mut child = Command::new(which("mosquitto_sub").expect("mosquitto_sub"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
            .args(["-v", "-q", "1", "-F", "%t\t%p"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning mosquitto_sub");
        let out = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let (t, p) = line.split_once('\t').unwrap_or((&line, ""));
                sink.lock()
                    .expect("lock")
                    .push((t.to_string(), p.to_string()));
            }
        });
        Sub { child, lines }
    }

    #[track_caller]
    fn wait_for(&self, topic: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_for(&format!("a message on {topic}"), WAIT, || {
            self.lines
                .lock()
                .expect("lock")
                .iter()
                .find(|(t, p)| t == topic && pred(p))
                .map(|(_, p)| p.clone())
        })
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a JSON message on `topic` satisfying `pred`, and returns it parsed.
#[track_caller]
fn wait_json(
    what: impl Fn(&str, &dyn Fn(&str) -> bool) -> String,
    topic: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let payload = what(topic, &|p: &str| {
        serde_json::from_str::<Value>(p).is_ok_and(|v| pred(&v))
    });
    serde_json::from_str(&payload).expect("json payload")
}

fn publish(port: u16, topic: &str, payload: &str) {
    let st = Command::new(which("mosquitto_pub").expect("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", payload])
        .status()
        .expect("running mosquitto_pub");
    assert!(st.success(), "mosquitto_pub failed: {st}");
}

const QS: &str = "IoT2mqtt/v1/instances/quickstart";

#[test]
fn quickstart_goes_online_with_state_from_all_three_programs_and_answers_commands() {
    if !have_tools(QUICKSTART_TOOLS) {
        return;
    }
    let example = repo().join("examples/quickstart");
    let dir = Sv::new_dir();
    copy_dir(&example, dir.path());
    let config = std::fs::read_to_string(example.join("iot2mqtt-sv.toml")).expect("config");
    let port = free_port();
    let env = |k: &str, v: &str| (k.to_string(), v.to_string());
    let sv = Sv::spawn_in(
        dir,
        &config,
        SvOptions {
            env: vec![
                env("MQTT_PORT", &port.to_string()),
                env("IOT2MQTT_SV_REPO", &repo().display().to_string()),
                env("PATH", &path_with_bin()),
            ],
            ..Default::default()
        },
    );
    sv.wait_socket();
    // The broker is a supervised program: subscribe once it says it is running.
    sv.wait_program("ready", "broker", |p| p["ready"] == true);
    let sub = Sub::start(port, "IoT2mqtt/#");
    // `online` is retained: receiving it also proves the subscription is in place.
    sub.wait_for(&format!("{QS}/status"), |p| p == "online");
    for name in ["bridge", "broker", "lamp", "plug", "thermometer"] {
        let p = sv.wait_program("RUNNING and ready", name, |p| {
            p["state"] == "RUNNING" && p["ready"] == true
        });
        assert_eq!(p["restarts"], 0, "{name} restarted: {p}");
    }
    let health = sv.cli(&["health"]);
    assert!(health.status.success(), "health: {health:?}");

    // One state per program, each through the bridge: Python, Node.js, shell.
    let w = |t: &str, f: &dyn Fn(&str) -> bool| sub.wait_for(t, f);
    let lamp = wait_json(w, &format!("{QS}/devices/lamp/state"), |v| {
        v["state"]["on"] == false
    });
    assert_eq!(lamp["state"]["brightness"], 60, "{lamp}");
    wait_json(w, &format!("{QS}/devices/plug/state"), |v| {
        v["state"]["power_w"] == 0
    });
    let thermo = wait_json(w, &format!("{QS}/devices/thermometer/state"), |v| {
        v["state"]["temperature"].is_number()
    });
    assert_eq!(thermo["state"]["unit"], "C", "{thermo}");

    // A command round trip to the Python program, with its answer on cmd/response.
    publish(
        port,
        &format!("{QS}/devices/lamp/cmd"),
        r#"{"id":"t-1","values":{"on":true,"brightness":42}}"#,
    );
    let resp = wait_json(w, &format!("{QS}/devices/lamp/cmd/response"), |v| {
        v["cmd_id"] == "t-1"
    });
    assert_eq!(resp["status"], "success", "{resp}");
    assert_eq!(resp["result"]["brightness"], 42, "{resp}");
    wait_json(w, &format!("{QS}/devices/lamp/state"), |v| {
        v["state"]["brightness"] == 42 && v["state"]["on"] == true
    });

    // A value the lamp refuses comes back as an error, and the lamp keeps running.
    publish(
        port,
        &format!("{QS}/devices/lamp/cmd"),
        r#"{"id":"t-2","values":{"brightness":150}}"#,
    );
    let resp = wait_json(w, &format!("{QS}/devices/lamp/cmd/response"), |v| {
        v["cmd_id"] == "t-2"
    });
    assert_eq!(resp["status"], "error", "{resp}");
    assert!(
        resp["error"]
            .as_str()
            .is_some_and(|e| e.contains("brightness")),
        "{resp}"
    );

    // The Node.js program answers too.
    publish(
        port,
        &format!("{QS}/devices/plug/cmd"),
        r#"{"id":"t-3","values":{"on":true}}"#,
    );
    let resp = wait_json(w, &format!("{QS}/devices/plug/cmd/response"), |v| {
        v["cmd_id"] == "t-3"
    });
    assert_eq!(resp["status"], "success", "{resp}");
    assert_eq!(resp["result"]["power_w"], 1800, "{resp}");

    // The shell sensor answers through `iot2mqtt-sv listen`: a supported command succeeds and
    // changes its state, anything else is refused with an error response.
    publish(
        port,
        &format!("{QS}/devices/thermometer/cmd"),
        r#"{"id":"t-4","values":{"unit":"F"}}"#,
    );
    let resp = wait_json(w, &format!("{QS}/devices/thermometer/cmd/response"), |v| {
        v["cmd_id"] == "t-4"
    });
    assert_eq!(resp["status"], "success", "{resp}");
    assert_eq!(resp["result"]["unit"], "F", "{resp}");
    wait_json(w, &format!("{QS}/devices/thermometer/state"), |v| {
        v["state"]["unit"] == "F"
    });
    publish(
        port,
        &format!("{QS}/devices/thermometer/cmd"),
        r#"{"id":"t-5","values":{"on":true}}"#,
    );
    let resp = wait_json(w, &format!("{QS}/devices/thermometer/cmd/response"), |v| {
        v["cmd_id"] == "t-5"
    });
    assert_eq!(resp["status"], "error", "{resp}");
    assert_eq!(sv.program("lamp")["restarts"], 0);
}

#[test]
fn demo_check_runs_the_quickstart_until_online_and_stops_cleanly() {
    if !have_tools(QUICKSTART_TOOLS) {
        return;
    }
    let out = Command::new(repo().join("scripts/demo"))
        .arg("--check")
        .env("IOT2MQTT_SV_BIN", bin())
        .env_remove("MQTT_PORT")
        .env_remove("IOT2MQTT_SV_SOCKET")
        .env_remove("IOT2MQTT_SV_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("running scripts/demo --check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/demo --check failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("OK: healthy, IoT2mqtt/v1/instances/quickstart/status = online"),
        "{stdout}\n{stderr}"
    );
    // The status table it prints shows every program ready.
    for name in ["bridge", "broker", "lamp", "plug", "thermometer"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(name) && l.contains("RUNNING") && l.contains(" yes ")),
            "{name} not RUNNING and ready in:\n{stdout}"
        );
    }
}

/// Index of the first line of `log` containing every one of `needles`.
fn line_index(log: &str, needles: &[&str]) -> Option<usize> {
    log.lines()
        .position(|l| needles.iter().all(|n| l.contains(n)))
}

const HUB: &str = "IoT2mqtt/v1/instances/sensor-hub";
const HUB_HEALTH_PORT: &str = "18765";

#[test]
fn sensor_hub_generates_its_config_first_then_runs_the_automation_and_group_commands() {
    if !have_tools(&["python3", "node"]) {
        return;
    }
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let example = repo().join("examples/sensor-hub");
    let dir = Sv::new_dir();
    copy_dir(&example, dir.path());
    let run_dir = dir.path().join("run");
    let config = std::fs::read_to_string(example.join("iot2mqtt-sv.toml")).expect("config");
    assert!(config.contains(HUB_HEALTH_PORT), "the health port moved");
    let config = config.replace(HUB_HEALTH_PORT, &free_port().to_string());
    let env = |k: &str, v: &str| (k.to_string(), v.to_string());
    let sub = broker.subscribe(&format!("{HUB}/#"));
    let sv = Sv::spawn_in(
        dir,
        &config,
        SvOptions {
            env: vec![
                env("MQTT_HOST", "127.0.0.1"),
                env("MQTT_PORT", &broker.port.to_string()),
                env("INSTANCE_NAME", "sensor-hub"),
                env("HUB_RUN_DIR", &run_dir.display().to_string()),
                env("IOT2MQTT_SV_REPO", &repo().display().to_string()),
                // Fast frames so the automation reacts to a changed limit promptly.
                env("RADIO_INTERVAL", "0.5"),
            ],
            ..Default::default()
        },
    );
    sv.wait_socket();
    sub.wait_for(&format!("{HUB}/status"), |p| p == "online");

    for name in ["bridge", "radio", "actuators", "coordinator"] {
        let p = sv.wait_program("RUNNING and ready", name, |p| {
            p["state"] == "RUNNING" && p["ready"] == true
        });
        assert_eq!(p["restarts"], 0, "{name} restarted: {p}");
    }
    let gen_status = sv.program("gen");
    assert_eq!(gen_status["state"], "EXITED", "{gen_status}");
    assert_eq!(gen_status["exit_status"], 0, "{gen_status}");
    let health = sv.cli(&["health"]);
    assert!(health.status.success(), "health: {health:?}");
    assert!(run_dir.join("hub.json").is_file());

    // The generator exited before anything that depends on it was spawned.
    // Written by the log writer thread shortly after the state change: waited for.
    let (log, gen_done) = wait_for("the exit of gen in the log", WAIT, || {
        let log = sv.stderr();
        line_index(&log, &["exited", "program=gen", "exit code 0"]).map(|i| (log, i))
    });
    for name in ["radio", "actuators", "coordinator"] {
        let spawned = line_index(&log, &["spawned", &format!("program={name} ")])
            .unwrap_or_else(|| panic!("{name} never spawned:\n{log}"));
        assert!(
            spawned > gen_done,
            "{name} spawned before gen completed:\n{log}"
        );
    }

    // The radio's sensors report through the bridge.
    let w = |t: &str, f: &dyn Fn(&str) -> bool| sub.wait_for(t, f);
    wait_json(w, &format!("{HUB}/devices/bath_humidity/state"), |v| {
        v["state"]["humidity"].is_number()
    });
    wait_json(w, &format!("{HUB}/devices/living_temp/state"), |v| {
        v["state"]["temperature"].is_number()
    });

    // Lowering the humidity limit makes the coordinator switch the bathroom fan on, through an
    // ordinary command that the actuator service executes.
    broker.publish(
        &format!("{HUB}/devices/hub/cmd"),
        r#"{"id":"h-1","values":{"humidity_limit":10}}"#,
        1,
        false,
    );
    let resp = wait_json(w, &format!("{HUB}/devices/hub/cmd/response"), |v| {
        v["cmd_id"] == "h-1"
    });
    assert_eq!(resp["status"], "success", "{resp}");
    wait_json(w, &format!("{HUB}/devices/bath_fan/state"), |v| {
        v["state"]["on"] == true && v["state"]["speed"] == 3
    });

    // A group command reaches every enabled member, in the Node.js service.
    broker.publish(
        &format!("{HUB}/groups/ventilation/cmd"),
        r#"{"values":{"on":true,"speed":2}}"#,
        1,
        false,
    );
    for fan in ["bath_fan", "kitchen_fan"] {
        wait_json(w, &format!("{HUB}/devices/{fan}/state"), |v| {
            v["state"]["on"] == true && v["state"]["speed"] == 2
        });
    }

    // Sensors are read-only: the radio refuses commands with a reason.
    broker.publish(
        &format!("{HUB}/devices/living_temp/cmd"),
        r#"{"id":"s-1","values":{"on":true}}"#,
        1,
        false,
    );
    let resp = wait_json(w, &format!("{HUB}/devices/living_temp/cmd/response"), |v| {
        v["cmd_id"] == "s-1"
    });
    assert_eq!(resp["status"], "error", "{resp}");
    assert!(
        resp["error"]
            .as_str()
            .is_some_and(|e| e.contains("read-only")),
        "{resp}"
    );
}

#[test]
fn sensor_hub_stops_with_the_generators_exit_code_when_the_instance_file_is_missing() {
    if !have_tools(&["python3"]) {
        return;
    }
    let example = repo().join("examples/sensor-hub");
    let dir = Sv::new_dir();
    copy_dir(&example, dir.path());
    let run_dir = dir.path().join("run");
    let config = std::fs::read_to_string(example.join("iot2mqtt-sv.toml")).expect("config");
    let config = config.replace(HUB_HEALTH_PORT, &free_port().to_string());
    let env = |k: &str, v: &str| (k.to_string(), v.to_string());
    let mut sv = Sv::spawn_in(
        dir,
        &config,
        SvOptions {
            env: vec![
                // No broker is needed to fail: the bridge only has to be up.
                env("MQTT_HOST", "127.0.0.1"),
                env("MQTT_PORT", &free_port().to_string()),
                env("INSTANCE_NAME", "no-such-instance"),
                env("HUB_RUN_DIR", &run_dir.display().to_string()),
            ],
            ..Default::default()
        },
    );
    assert_eq!(sv.wait_exit(), 2, "stderr:\n{}", sv.stderr());
    let out = format!("{}{}", sv.stdout(), sv.stderr());
    assert!(
        out.contains("instances/no-such-instance.json: no such file"),
        "{out}"
    );
    // Nothing that needs the generated configuration was started.
    for name in ["radio", "actuators", "coordinator"] {
        assert!(
            line_index(&out, &["spawned", &format!("program={name} ")]).is_none(),
            "{name} was started:\n{out}"
        );
    }
    assert!(!run_dir.join("hub.json").exists());
}
