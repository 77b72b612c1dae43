//! The bridge against a real mosquitto: every test starts its own broker on a free port, runs
//! `sv_bridge::run` (in-process, on its own runtime thread, or as the `sv-bridge-test` process
//! when it must be killed), talks to it over a real Unix socket in a temp dir, and checks what an
//! independent `mosquitto_sub` receives. All waits are bounded polls on observable events.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde_json::{Value, json};
use sv_bridge::{BridgeError, ProgramView, ReadyReport, Settings, SupervisorView};
use sv_core::config::BridgeSection;
use sv_testkit::{Mosquitto, Subscriber, TempDir, WAIT, wait_for, wait_until};
use tokio::sync::{mpsc, oneshot, watch};

const BASE: &str = "T";
const INST: &str = "inst";

fn root() -> String {
    format!("{BASE}/v1/instances/{INST}")
}

fn dev_topic(d: &str, leaf: &str) -> String {
    format!("{}/devices/{d}/{leaf}", root())
}

/// A temp `IOT2MQTT_PATH` with an instance file (d1, d2 enabled, d3 disabled; group g1 of all).
fn app_dir() -> TempDir {
    let d = sv_testkit::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("instances")).unwrap();
    std::fs::write(
        d.path().join(format!("instances/{INST}.json")),
        json!({
            "instance_id": INST,
            "connector_type": "demo",
            "friendly_name": "Demo",
            "devices": [
                {"device_id": "d1", "model": "m1", "enabled": true},
                {"device_id": "d2", "model": "m2", "enabled": true},
                {"device_id": "d3", "model": "m3", "enabled": false}
            ],
            "groups": [{"group_id": "g1", "devices": ["d1", "d2", "d3"]}]
        })
        .to_string(),
    )
    .unwrap();
    d
}

fn env_for(app: &Path, port: u16) -> Vec<(String, String)> {
    [
        ("IOT2MQTT_PATH", app.to_str().unwrap().to_string()),
        ("IOT2MQTT_SECRETS_DIR", app.to_str().unwrap().to_string()),
        ("INSTANCE_NAME", INST.to_string()),
        ("MQTT_HOST", "127.0.0.1".to_string()),
        ("MQTT_PORT", port.to_string()),
        ("MQTT_BASE_TOPIC", BASE.to_string()),
        ("MQTT_KEEPALIVE", "5".to_string()),
        ("TZ", "Europe/Berlin".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn settings(app: &Path, port: u16, section: BridgeSection) -> Settings {
    settings_env(app, port, section, &[])
}

/// [`settings`] with extra environment variables.
fn settings_env(app: &Path, port: u16, section: BridgeSection, extra: &[(&str, &str)]) -> Settings {
    let mut env = env_for(app, port);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let section = BridgeSection {
        socket: Some(app.join("bridge.sock")),
        ..section
    };
    Settings::resolve(&section, &|k| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
    .expect("settings")
}

fn me(name: &str, healthy: bool) -> ProgramView {
    ProgramView {
        name: name.into(),
        pid: Some(std::process::id() as i32),
        state: "RUNNING".into(),
        ready: healthy,
        critical: true,
        healthy,
    }
}

fn view(programs: Vec<ProgramView>) -> SupervisorView {
    SupervisorView { programs }
}

/// `sv_bridge::run` on its own runtime thread.
struct Bridge {
    view: watch::Sender<SupervisorView>,
    ready: Mutex<mpsc::Receiver<ReadyReport>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), BridgeError>>>,
    socket: PathBuf,
}

impl Bridge {
    fn start(s: Settings, v: SupervisorView) -> Bridge {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let socket = s.socket.clone();
        let (view_tx, view_rx) = watch::channel(v);
        let (ready_tx, ready_rx) = mpsc::channel(16);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(sv_bridge::run(s, view_rx, ready_tx, async {
                let _ = stop_rx.await;
            }))
        });
        wait_until("the bridge socket", || socket.exists());
        Bridge {
            view: view_tx,
            ready: Mutex::new(ready_rx),
            stop: Some(stop_tx),
            thread: Some(thread),
            socket,
        }
    }

    fn connect(&self) -> Prog {
        Prog::connect(&self.socket)
    }

    fn stop(&mut self) -> Result<(), BridgeError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().expect("bridge thread"),
            None => Ok(()),
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A program connected to the bridge socket.
struct Prog {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Prog {
    fn connect(path: &Path) -> Prog {
        let s = UnixStream::connect(path).expect("connecting to the bridge socket");
        s.set_read_timeout(Some(WAIT)).unwrap();
        Prog {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            next_id: 0,
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn send(&mut self, v: &Value) {
        self.send_raw(format!("{v}\n").as_bytes());
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .expect("reading from the bridge");
        assert!(n > 0, "bridge closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"))
    }

    /// Receives until a message with `op` arrives (others are skipped).
    fn recv_op(&mut self, op: &str) -> Value {
        loop {
            let v = self.recv();
            if v["op"] == op {
                return v;
            }
        }
    }

    /// Sends `v` with a fresh id and returns the `ok`/`error` reply carrying that id.
    fn call(&mut self, mut v: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        v["id"] = json!(id);
        self.send(&v);
        loop {
            let r = self.recv();
            if (r["op"] == "ok" || r["op"] == "error") && r["id"] == json!(id) {
                return r;
            }
        }
    }
}

/// A broker that does not log: the test kit never drains the broker's stderr, and a full pipe
/// would stall it after a few hundred connections.
fn quiet_broker() -> Option<Mosquitto> {
    Mosquitto::start_with("log_dest none")
}

/// Publishes `n` copies of `payload` (QoS 0) through one `mosquitto_pub -l` connection.
fn publish_lines(broker: &Mosquitto, topic: &str, payload: &str, n: usize) {
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-t",
            topic,
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    let mut stdin = child.stdin.take().unwrap();
    for _ in 0..n {
        writeln!(stdin, "{payload}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// A `#` subscriber that is known to be subscribed (it received a retained marker).
fn subscriber(broker: &Mosquitto) -> Subscriber {
    broker.publish("sv-test/marker", "m", 1, true);
    let sub = broker.subscribe("#");
    sub.wait_for("sv-test/marker", |_| true);
    sub
}

fn payloads(sub: &Subscriber, topic: &str) -> Vec<String> {
    sub.messages()
        .into_iter()
        .filter(|(t, _)| t == topic)
        .map(|(_, p)| p)
        .collect()
}

fn json_on(sub: &Subscriber, topic: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let p = sub.wait_for(topic, |p| {
        serde_json::from_str::<Value>(p).is_ok_and(|v| pred(&v))
    });
    serde_json::from_str(&p).unwrap()
}

fn status(sub: &Subscriber) -> Vec<String> {
    payloads(sub, &format!("{}/status", root()))
}

/// A broker, an app dir and a bridge whose program `prog` (this test process) is healthy;
/// returns once the bridge is connected and subscribed (status seen).
fn setup_with(section: BridgeSection) -> Option<(Mosquitto, TempDir, Bridge, Subscriber)> {
    let broker = quiet_broker()?;
    let app = app_dir();
    let sub = subscriber(&broker);
    let bridge = Bridge::start(
        settings(app.path(), broker.port, section),
        view(vec![me("prog", true)]),
    );
    sub.wait_for(&format!("{}/status", root()), |p| p == "online");
    Some((broker, app, bridge, sub))
}

fn setup() -> Option<(Mosquitto, TempDir, Bridge, Subscriber)> {
    setup_with(BridgeSection::default())
}

fn now_berlin() -> String {
    sv_bridge::time::now(&jiff::tz::TimeZone::get("Europe/Berlin").unwrap())
}

#[test]
fn online_only_after_critical_programs_are_healthy_and_offline_when_they_stop_being() {
    let Some(broker) = quiet_broker() else { return };
    let app = app_dir();
    let sub = subscriber(&broker);
    let mut bridge = Bridge::start(
        settings(app.path(), broker.port, BridgeSection::default()),
        view(vec![
            me("prog", false),
            ProgramView {
                name: "bridge".into(),
                healthy: false,
                ..me("bridge", false)
            },
            ProgramView {
                critical: false,
                ..me("helper", false)
            },
        ]),
    );
    let topic = format!("{}/status", root());
    sub.wait_for(&topic, |p| p == "offline");
    assert!(!status(&sub).contains(&"online".to_string()));

    bridge.view.send_modify(|v| v.programs[0].healthy = true);
    sub.wait_for(&topic, |p| p == "online");

    bridge.view.send_modify(|v| v.programs[0].healthy = false);
    wait_until("offline after the program became unhealthy", || {
        status(&sub).last().map(String::as_str) == Some("offline")
    });

    // Graceful stop: `offline` published by the bridge itself, then `run` returns Ok.
    bridge.view.send_modify(|v| v.programs[0].healthy = true);
    wait_until("online again", || {
        status(&sub).last().map(String::as_str) == Some("online")
    });
    bridge.stop().expect("graceful stop");
    wait_until("offline after a graceful stop", || {
        status(&sub).last().map(String::as_str) == Some("offline")
    });
}

#[test]
fn online_and_subscriptions_are_renewed_after_a_broker_restart() {
    let Some((mut broker, _app, bridge, _sub)) = setup() else {
        return;
    };
    let mut p = bridge.connect();
    p.call(json!({"op":"hello","devices":["d1"]}));
    broker.restart();
    // The restarted broker has no retained messages: only a republish can deliver `online`.
    let sub = subscriber(&broker);
    sub.wait_for(&format!("{}/status", root()), |p| p == "online");
    // `online` follows the resubscription on the same connection, so commands flow again.
    broker.publish(
        &dev_topic("d1", "cmd"),
        r#"{"id":"after","values":{}}"#,
        1,
        false,
    );
    assert_eq!(p.recv_op("cmd")["cmd_id"], "after");
}

#[test]
fn a_flooding_program_is_slowed_down_and_loses_nothing_while_connected() {
    let Some((_broker, _app, bridge, sub)) = setup_with(BridgeSection {
        outbox_max_messages: Some(8),
        ..Default::default()
    }) else {
        return;
    };
    const N: usize = 1000;
    let mut p = bridge.connect();
    let mut writer = p.writer.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        for i in 0..N {
            let line = json!({"op":"telemetry","id":i,"device_id":"d1","metrics":{"i":i}});
            writeln!(writer, "{line}").unwrap();
        }
    });
    for _ in 0..N {
        assert_eq!(p.recv_op("ok")["op"], "ok");
    }
    flood.join().unwrap();
    let topic = dev_topic("d1", "telemetry");
    wait_until("every telemetry message at the broker", || {
        payloads(&sub, &topic).len() >= N
    });
    let got: Vec<i64> = payloads(&sub, &topic)
        .iter()
        .map(|p| {
            serde_json::from_str::<Value>(p).unwrap()["metrics"]["i"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        got,
        (0..N as i64).collect::<Vec<_>>(),
        "in order, none dropped"
    );
}

#[test]
fn last_will_offline_when_the_bridge_process_is_killed() {
    let Some(broker) = quiet_broker() else { return };
    let app = app_dir();
    let sub = subscriber(&broker);
    let socket = app.path().join("bridge.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sv-bridge-test"))
        .envs(env_for(app.path(), broker.port))
        .env("SV_BRIDGE_TEST_SOCKET", &socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let topic = format!("{}/status", root());
    sub.wait_for(&topic, |p| p == "online");
    child.kill().unwrap(); // SIGKILL: no chance to publish anything itself
    child.wait().unwrap();
    wait_until("the broker's last will", || {
        status(&sub).last().map(String::as_str) == Some("offline")
    });
}

/// Sends `sig` to the broker process (SIGSTOP pauses it: connections stay open, nothing is read).
fn signal_broker(broker: &Mosquitto, sig: nix::sys::signal::Signal) {
    let pid = broker.pid().expect("broker running") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

#[test]
fn status_ends_offline_when_the_broker_stalls_behind_a_backlog_at_stop() {
    use nix::sys::signal::Signal;
    let Some(broker) = quiet_broker() else { return };
    let app = app_dir();
    let sub = subscriber(&broker);
    let socket = app.path().join("bridge.sock");
    let log = app.path().join("bridge.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sv-bridge-test"))
        .envs(env_for(app.path(), broker.port))
        // Long enough that neither side gives up on the other's silence during the test: the
        // outcome must come from the bridge's stop, not from a keepalive timeout.
        .env("MQTT_KEEPALIVE", "120")
        .env("SV_BRIDGE_TEST_SOCKET", &socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let topic = format!("{}/status", root());
    sub.wait_for(&topic, |p| p == "online");
    let mut p = Prog::connect(&socket);
    signal_broker(&broker, Signal::SIGSTOP);
    // A program goes on publishing state: a QoS 1 backlog the broker does not acknowledge.
    for i in 0..200 {
        let r = p.call(json!({"op":"state","device_id":format!("dev{i}"),"state":{"n":i}}));
        assert_eq!(r["op"], "ok", "{r}");
    }
    p.send(&json!({"op":"stats"}));
    let stats = p.recv_op("stats");
    assert!(
        stats["stats"]["outbox_messages"].as_u64() >= Some(200),
        "{stats}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    // The broker resumes once the bridge has given up waiting for the PUBACK of `offline`,
    // while the bridge still holds the connection: whatever the bridge did then (a clean
    // DISCONNECT would suppress the Last Will) is what the broker now reads.
    wait_until("the bridge giving up on the final offline", || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("no acknowledgement for the final offline status"))
    });
    signal_broker(&broker, Signal::SIGCONT);
    let exit = wait_for("the bridge to exit", WAIT, || child.try_wait().unwrap());
    assert!(exit.success(), "{exit}");
    wait_until("status offline", || {
        status(&sub).last().map(String::as_str) == Some("offline")
    });
    // And that is what the broker keeps: a new subscriber gets the retained status.
    let retained = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-t", &topic, "-C", "1", "-W", "30"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&retained.stdout).trim(), "offline");
}

#[test]
fn state_event_error_and_telemetry_topics_and_payloads() {
    let Some((_broker, _app, _bridge, sub)) = setup() else {
        return;
    };
    let mut p = Prog::connect(&_bridge.socket);
    p.call(json!({"op":"hello","devices":["d1"]}));
    let r = p.call(json!({"op":"state","device_id":"d1","state":{"on":true,"brightness":5,"name":"x","online":true}}));
    assert_eq!(r["op"], "ok", "{r}");
    let st = json_on(&sub, &dev_topic("d1", "state"), |_| true);
    assert_eq!(st["device_id"], "d1");
    assert_eq!(
        st["state"],
        json!({"on":true,"brightness":5,"name":"x","online":true})
    );
    let ts = st["timestamp"].as_str().unwrap();
    assert!(ts.ends_with("+01:00") || ts.ends_with("+02:00"), "{ts}");
    // Per-property values are JSON-encoded.
    assert_eq!(sub.wait_for(&dev_topic("d1", "state/on"), |_| true), "true");
    assert_eq!(
        sub.wait_for(&dev_topic("d1", "state/name"), |_| true),
        "\"x\""
    );
    sub.wait_for(&dev_topic("d1", "availability"), |p| p == "online");

    // A partial update (as after a filtered get) never shrinks the retained full state.
    p.call(json!({"op":"state","device_id":"d1","state":{"brightness":7,"online":false}}));
    let st = json_on(&sub, &dev_topic("d1", "state"), |v| {
        v["state"]["brightness"] == 7
    });
    assert_eq!(st["state"]["on"], true);
    sub.wait_for(&dev_topic("d1", "availability"), |p| p == "offline");

    p.call(json!({"op":"event","device_id":"d1","event":"pressed","data":{"n":2}}));
    let ev = json_on(&sub, &dev_topic("d1", "events"), |_| true);
    assert_eq!(
        (ev["event"].clone(), ev["data"].clone()),
        (json!("pressed"), json!({"n":2}))
    );
    assert!(ev["timestamp"].is_string());
    let g = json_on(&sub, &format!("{BASE}/v1/global/events"), |_| true);
    assert_eq!(g["source"], format!("{INST}_d1"));
    assert_eq!(g["event"], "pressed");

    p.call(json!({"op":"error","device_id":"d1","error_code":"E_IO","message":"read failed","severity":"warning"}));
    let e = json_on(&sub, &dev_topic("d1", "error"), |_| true);
    assert_eq!(e["error_code"], "E_IO");
    assert_eq!(e["message"], "read failed");
    assert_eq!(e["severity"], "warning");

    p.call(json!({"op":"telemetry","device_id":"d1","metrics":{"rssi":-60}}));
    let t = json_on(&sub, &dev_topic("d1", "telemetry"), |_| true);
    assert_eq!(t["metrics"]["rssi"], -60);

    p.call(json!({"op":"devices_list","devices":[{"device_id":"d1"}]}));
    let l = json_on(&sub, &format!("{}/meta/devices_list", root()), |_| true);
    assert!(l.is_array());
}

#[test]
fn command_round_trip_publishes_the_response() {
    let Some((broker, _app, bridge, sub)) = setup() else {
        return;
    };
    let mut p = bridge.connect();
    assert_eq!(p.call(json!({"op":"hello","devices":["d1"]}))["op"], "ok");
    let cmd = json!({"id":"c1","timestamp": now_berlin(),"values":{"on":true},"timeout":5000});
    broker.publish(&dev_topic("d1", "cmd"), &cmd.to_string(), 1, false);
    let c = p.recv_op("cmd");
    assert_eq!(c["device_id"], "d1");
    assert_eq!(c["cmd_id"], "c1");
    assert_eq!(c["values"], json!({"on":true}));
    assert_eq!(c["timeout"], 5000);
    let r = p.call(json!({"op":"cmd_result","device_id":"d1","cmd_id":"c1","status":"success","result":{"on":true}}));
    assert_eq!(r["op"], "ok", "{r}");
    let resp = json_on(&sub, &dev_topic("d1", "cmd/response"), |_| true);
    assert_eq!(resp["cmd_id"], "c1");
    assert_eq!(resp["status"], "success");
    assert_eq!(resp["result"], json!({"on":true}));

    // A flat command (no `values`) is accepted too, and a second answer is refused.
    broker.publish(
        &dev_topic("d1", "cmd"),
        r#"{"id":"c2","on":false}"#,
        1,
        false,
    );
    let c = p.recv_op("cmd");
    assert_eq!(c["values"], json!({"on":false}));
    p.call(json!({"op":"cmd_result","cmd_id":"c2","status":"error","error":"device busy"}));
    let resp = json_on(&sub, &dev_topic("d1", "cmd/response"), |v| {
        v["cmd_id"] == "c2"
    });
    assert_eq!(resp["status"], "error");
    assert_eq!(resp["error"], "device busy");
    let again = p.call(json!({"op":"cmd_result","cmd_id":"c2","status":"success"}));
    assert_eq!(again["code"], "unknown_command");

    // A get is forwarded to the handler with its properties.
    broker.publish(
        &dev_topic("d1", "get"),
        r#"{"properties":["on"]}"#,
        1,
        false,
    );
    let g = p.recv_op("get");
    assert_eq!(g["properties"], json!(["on"]));
}

#[test]
fn commands_without_handler_or_answer_fail_with_a_response_and_an_error() {
    let Some((broker, _app, bridge, sub)) = setup() else {
        return;
    };
    broker.publish(
        &dev_topic("d2", "cmd"),
        r#"{"id":"n1","values":{"on":true}}"#,
        1,
        false,
    );
    let resp = json_on(&sub, &dev_topic("d2", "cmd/response"), |v| {
        v["cmd_id"] == "n1"
    });
    assert_eq!(resp["status"], "error");
    assert!(
        resp["error"]
            .as_str()
            .unwrap()
            .contains("no program handles"),
        "{resp}"
    );
    let e = json_on(&sub, &dev_topic("d2", "error"), |_| true);
    assert_eq!(e["error_code"], "no_handler");

    let mut p = bridge.connect();
    p.call(json!({"op":"hello","devices":["d1"]}));
    broker.publish(
        &dev_topic("d1", "cmd"),
        r#"{"id":"t1","values":{"on":true},"timeout":200}"#,
        1,
        false,
    );
    let c = p.recv_op("cmd");
    assert_eq!(c["timeout"], 200);
    let resp = json_on(&sub, &dev_topic("d1", "cmd/response"), |v| {
        v["cmd_id"] == "t1"
    });
    assert_eq!(resp["status"], "error");
    assert!(
        resp["error"].as_str().unwrap().contains("timeout"),
        "{resp}"
    );
    let e = json_on(&sub, &dev_topic("d1", "error"), |_| true);
    assert_eq!(e["error_code"], "timeout");
}

#[test]
fn expired_commands_are_rejected_and_naive_local_timestamps_are_timezone_correct() {
    let Some((broker, _app, bridge, sub)) = setup() else {
        return;
    };
    let mut p = bridge.connect();
    p.call(json!({"op":"hello"}));
    let tz = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
    let old = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(120);
    let naive_old = old.to_zoned_datetime(tz.clone()).datetime().to_string();
    broker.publish(
        &dev_topic("d1", "cmd"),
        &json!({"id":"old","timestamp":naive_old,"values":{}}).to_string(),
        1,
        false,
    );
    let resp = json_on(&sub, &dev_topic("d1", "cmd/response"), |v| {
        v["cmd_id"] == "old"
    });
    assert!(
        resp["error"].as_str().unwrap().contains("expired"),
        "{resp}"
    );
    json_on(&sub, &dev_topic("d1", "error"), |v| {
        v["error_code"] == "command_expired"
    });
    // Unix time in milliseconds is understood too.
    let epoch_ms = old.as_millisecond();
    broker.publish(
        &dev_topic("d1", "cmd"),
        &json!({"id":"old-ms","timestamp":epoch_ms,"values":{}}).to_string(),
        1,
        false,
    );
    let resp = json_on(&sub, &dev_topic("d1", "cmd/response"), |v| {
        v["cmd_id"] == "old-ms"
    });
    assert!(
        resp["error"].as_str().unwrap().contains("expired"),
        "{resp}"
    );

    // A naive timestamp of *now* in the configured zone is fresh, whatever the host's zone.
    let naive_now = jiff::Timestamp::now()
        .to_zoned_datetime(tz)
        .datetime()
        .to_string();
    broker.publish(
        &dev_topic("d1", "cmd"),
        &json!({"id":"fresh","timestamp":naive_now,"values":{"x":1}}).to_string(),
        1,
        false,
    );
    let c = p.recv_op("cmd");
    assert_eq!(c["cmd_id"], "fresh");
}

/// What the platform's web backend sends as a command timestamp: `datetime.now().isoformat()`
/// in a container without `TZ`, i.e. naive UTC with microseconds (`mqtt_service.send_command`).
fn web_backend_timestamp(at: jiff::Timestamp) -> String {
    at.to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%dT%H:%M:%S.%6f")
        .to_string()
}

/// A web-backend command as `mqtt_service.send_command` builds it.
fn web_backend_command(id: &str, at: jiff::Timestamp) -> String {
    json!({"id": id, "timestamp": web_backend_timestamp(at), "values": {"on": true}, "timeout": 5000})
        .to_string()
}

#[test]
fn naive_utc_web_commands_are_fresh_east_and_west_of_utc_and_stale_ones_are_rejected() {
    for zone in ["Asia/Tokyo", "America/Los_Angeles"] {
        let Some(broker) = quiet_broker() else { return };
        let app = app_dir();
        // TZ only in the connector's .env, as the platform's installer writes it.
        std::fs::write(app.path().join(".env"), format!("TZ={zone}\n")).unwrap();
        let env: Vec<_> = env_for(app.path(), broker.port)
            .into_iter()
            .filter(|(k, _)| k != "TZ")
            .collect();
        let section = BridgeSection {
            socket: Some(app.path().join("bridge.sock")),
            ..BridgeSection::default()
        };
        let s = Settings::resolve(&section, &|k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
        .expect("settings");
        assert_eq!(s.tz_name.as_deref(), Some(zone));
        let sub = subscriber(&broker);
        let bridge = Bridge::start(s, view(vec![me("prog", true)]));
        sub.wait_for(&format!("{}/status", root()), |p| p == "online");
        let mut p = bridge.connect();
        p.call(json!({"op":"hello","devices":["d1"]}));

        let stale = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(120);
        let cmd = web_backend_command("stale", stale);
        broker.publish(&dev_topic("d1", "cmd"), &cmd, 1, false);
        let resp = json_on(&sub, &dev_topic("d1", "cmd/response"), |v| {
            v["cmd_id"] == "stale"
        });
        assert!(
            resp["error"].as_str().unwrap().contains("expired"),
            "{zone}: {resp}"
        );

        let cmd = web_backend_command("fresh", jiff::Timestamp::now());
        broker.publish(&dev_topic("d1", "cmd"), &cmd, 1, false);
        // The first command the program sees is the fresh one: the stale one never reached it.
        let c = p.recv_op("cmd");
        assert_eq!(c["cmd_id"], "fresh", "{zone}");
    }
}

#[test]
fn empty_requests_from_clear_topics_reach_no_program_and_a_numeric_id_stays_a_number() {
    let Some((broker, _app, bridge, sub)) = setup() else {
        return;
    };
    let mut p = bridge.connect();
    assert_eq!(
        p.call(json!({"op":"hello","devices":["d1"],"meta":true}))["op"],
        "ok"
    );
    let requests = [
        dev_topic("d1", "cmd"),
        dev_topic("d2", "cmd"),
        dev_topic("d1", "get"),
        format!("{}/groups/g1/cmd", root()),
        format!("{}/meta/request/info", root()),
        format!("{}/meta/request/devices_list", root()),
    ];
    // What the web UI's "clear topics" sends (empty, retained, QoS 0), and blank variants.
    for t in &requests {
        broker.publish(t, "", 0, true);
        broker.publish(t, " \n\t ", 1, false);
    }
    // A sentinel after them, with a numeric id as a JSON number.
    broker.publish(
        &dev_topic("d1", "cmd"),
        r#"{"id":7,"values":{"on":true}}"#,
        1,
        false,
    );
    let mut before = Vec::new();
    let c = loop {
        let v = p.recv();
        if v["op"] == "cmd" && v["cmd_id"] == "7" {
            break v;
        }
        before.push(v);
    };
    assert!(before.is_empty(), "reached the program: {before:?}");
    assert_eq!(c["values"], json!({"on":true}));
    let r = p.call(json!({"op":"cmd_result","device_id":"d1","cmd_id":"7","status":"success"}));
    assert_eq!(r["op"], "ok", "{r}");
    let resp = json_on(&sub, &dev_topic("d1", "cmd/response"), |_| true);
    assert_eq!(resp["cmd_id"], json!(7), "echoed as a number: {resp}");
    // Everything the bridge published before the sentinel's response is in by now: no
    // response, error or meta answer to any of the empty requests.
    let answers: Vec<_> = sub
        .messages()
        .into_iter()
        .filter(|(t, _)| {
            t.starts_with(&root())
                && (t.ends_with("/cmd/response") || t.ends_with("/error") || t.contains("/meta/"))
                && !t.contains("/meta/request/")
                // The discovery index is the bridge's own bookkeeping, not an answer.
                && !t.ends_with("/meta/ha_discovery")
        })
        .collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
}

#[test]
fn device_ids_past_max_devices_are_refused_and_known_ones_still_update() {
    let Some((_broker, _app, bridge, sub)) = setup_with(BridgeSection {
        max_devices: Some(3),
        ..BridgeSection::default()
    }) else {
        return;
    };
    let mut p = bridge.connect();
    let state = |d: &str, n: i64| json!({"op":"state","device_id":d,"state":{"n":n}});
    for d in ["d1", "d2", "x1"] {
        assert_eq!(p.call(state(d, 1))["op"], "ok");
    }
    let r = p.call(state("x2", 1));
    assert_eq!(r["code"], "too_many_devices", "{r}");
    assert_eq!(p.call(state("d1", 2))["op"], "ok", "a known device");
    json_on(&sub, &dev_topic("d1", "state"), |v| v["state"]["n"] == 2);
    assert!(payloads(&sub, &dev_topic("x2", "state")).is_empty());

    // Claims are bounded the same way, all or nothing.
    let mut q = bridge.connect();
    assert_eq!(
        q.call(json!({"op":"hello","devices":["a","b","c"]}))["op"],
        "ok"
    );
    let r = q.call(json!({"op":"hello","devices":["a","z"]}));
    assert_eq!(r["code"], "too_many_devices", "{r}");
    assert_eq!(
        q.call(json!({"op":"hello","devices":["a","b"]}))["op"],
        "ok"
    );
    // "z" was not claimed: another program may speak for it.
    assert_eq!(
        p.call(json!({"op":"event","device_id":"z","event":"e"}))["op"],
        "ok"
    );
}

#[test]
fn a_state_that_cannot_be_published_is_not_kept() {
    let Some((_broker, _app, bridge, sub)) = setup() else {
        return;
    };
    let mut p = bridge.connect();
    // Within the line limit each, together past the largest publishable message (1 MiB).
    let chunk = "x".repeat(60 * 1024);
    let mut refused = None;
    for i in 0..40 {
        let key = format!("k{i}");
        let r = p.call(json!({"op":"state","device_id":"d1","state":{key.clone(): chunk}}));
        if r["op"] == "error" {
            assert_eq!(r["code"], "bad_request", "{r}");
            refused = Some(key);
            break;
        }
    }
    let refused = refused.expect("a state past the packet size is refused");
    let r = p.call(json!({"op":"state","device_id":"d1","state":{"small":1}}));
    assert_eq!(
        r["op"], "ok",
        "the cached state does not hold the refused value: {r}"
    );
    let v = json_on(&sub, &dev_topic("d1", "state"), |v| {
        v["state"]["small"] == 1
    });
    assert!(
        v["state"].get(&refused).is_none(),
        "refused key {refused} was kept"
    );
    assert!(v["state"].get("k0").is_some(), "earlier values are kept");
}

#[test]
fn subscriptions_past_max_subscriptions_are_refused_per_connection() {
    let Some((_broker, _app, bridge, _sub)) = setup_with(BridgeSection {
        max_subscriptions: Some(2),
        ..BridgeSection::default()
    }) else {
        return;
    };
    let mut p = bridge.connect();
    let sub = |t: &str| json!({"op":"subscribe","topic":t});
    assert_eq!(p.call(sub("a/#"))["op"], "ok");
    assert_eq!(p.call(sub("b/#"))["op"], "ok");
    assert_eq!(
        p.call(sub("a/#"))["op"],
        "ok",
        "a repeated filter is not a new one"
    );
    let r = p.call(sub("c/#"));
    assert_eq!(r["code"], "too_many_subscriptions", "{r}");
    let mut q = bridge.connect();
    assert_eq!(
        q.call(sub("c/#"))["op"],
        "ok",
        "another connection has its own"
    );
}

#[test]
fn connections_past_max_connections_get_an_error_line_and_are_closed() {
    let Some((_broker, _app, bridge, _sub)) = setup_with(BridgeSection {
        max_connections: Some(3),
        ..BridgeSection::default()
    }) else {
        return;
    };
    let mut progs: Vec<Prog> = (0..3).map(|_| bridge.connect()).collect();
    for p in &mut progs {
        assert_eq!(p.call(json!({"op":"ping"}))["op"], "ok");
    }
    let mut extra = bridge.connect();
    let r = extra.recv();
    assert_eq!(r["op"], "error");
    assert_eq!(r["code"], "too_many_connections", "{r}");
    let mut rest = String::new();
    assert_eq!(extra.reader.read_line(&mut rest).unwrap(), 0, "then closed");
    // A slot freed by a closing program is served again.
    drop(progs.pop());
    let mut again = wait_for("a free connection slot", WAIT, || {
        let mut p = bridge.connect();
        p.send(&json!({"op":"ping","id":1}));
        (p.recv()["op"] == "ok").then_some(p)
    });
    assert_eq!(again.call(json!({"op":"ping"}))["op"], "ok");
}

#[test]
fn group_commands_expand_to_enabled_members() {
    let Some((broker, _app, bridge, _sub)) = setup() else {
        return;
    };
    let mut p = bridge.connect();
    p.call(json!({"op":"hello","devices":"*"}));
    broker.publish(
        &format!("{}/groups/g1/cmd", root()),
        r#"{"values":{"on":true}}"#,
        1,
        false,
    );
    let a = p.recv_op("cmd");
    let b = p.recv_op("cmd");
    let mut devices = vec![a["device_id"].clone(), b["device_id"].clone()];
    devices.sort_by_key(|v| v.to_string());
    assert_eq!(devices, [json!("d1"), json!("d2")]);
    assert_eq!(a["values"], json!({"on":true}));
    // d3 is disabled: a ping round trip proves no third command is queued before it.
    p.send(&json!({"op":"ping","id":"after"}));
    let next = p.recv();
    assert_eq!(next["op"], "ok", "unexpected {next}");
}

#[test]
fn meta_requests_are_answered_by_the_bridge_unless_a_program_claims_them() {
    let Some((broker, _app, bridge, sub)) = setup() else {
        return;
    };
    let mut p = bridge.connect();
    p.call(json!({"op":"hello","devices":["d1"]}));
    p.call(json!({"op":"state","device_id":"d1","state":{"online":true}}));
    sub.wait_for(&dev_topic("d1", "availability"), |p| p == "online");
    broker.publish(
        &format!("{}/meta/request/devices_list", root()),
        "{}",
        1,
        false,
    );
    let l = json_on(&sub, &format!("{}/meta/devices_list", root()), |_| true);
    let list = l.as_array().expect("devices_list is a json array");
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["device_id"], "d1");
    assert_eq!(list[0]["global_id"], format!("{INST}_d1"));
    assert_eq!(list[0]["model"], "m1");
    assert_eq!(list[0]["online"], true);
    assert_eq!(list[2]["enabled"], false);

    broker.publish(&format!("{}/meta/request/info", root()), "{}", 1, false);
    let i = json_on(&sub, &format!("{}/meta/info", root()), |_| true);
    assert_eq!(i["instance_id"], INST);
    assert_eq!(i["connector_type"], "demo");
    assert_eq!(i["devices_count"], 3);
    assert_eq!(i["groups_count"], 1);

    p.call(json!({"op":"hello","devices":[],"meta":true}));
    broker.publish(
        &format!("{}/meta/request/info", root()),
        r#"{"x":1}"#,
        1,
        false,
    );
    let m = p.recv_op("meta_request");
    assert_eq!(m["type"], "info");
    assert_eq!(m["payload"], json!({"x":1}));
}

#[test]
fn the_outbox_survives_a_broker_restart_without_losing_messages() {
    let Some((mut broker, _app, bridge, _sub)) = setup() else {
        return;
    };
    let mut p = bridge.connect();
    broker.kill();
    for i in 0..40 {
        let r = p.call(json!({"op":"state","device_id":format!("x{i}"),"state":{"n":i}}));
        assert_eq!(r["op"], "ok");
    }
    broker.restart();
    // Retained messages published after the restart prove the queued QoS 1 messages arrived.
    let sub = subscriber(&broker);
    for i in 0..40 {
        let v = json_on(&sub, &dev_topic(&format!("x{i}"), "state"), |_| true);
        assert_eq!(v["state"]["n"], i);
    }
    sub.wait_for(&format!("{}/status", root()), |p| p == "online");
}

#[test]
fn malformed_unknown_and_oversized_lines_get_error_replies_and_the_connection_stays_usable() {
    let Some((_broker, _app, bridge, _sub)) = setup() else {
        return;
    };
    let mut p = bridge.connect();
    p.send_raw(b"this is not json\n");
    assert_eq!(p.recv()["code"], "bad_json");
    p.send_raw(b"{\"op\":\"launch\",\"id\":9}\n");
    let r = p.recv();
    assert_eq!(
        (r["code"].clone(), r["id"].clone()),
        (json!("unknown_op"), json!(9))
    );
    p.send_raw(b"{\"op\":\"state\",\"id\":10}\n");
    assert_eq!(p.recv()["code"], "bad_request");
    let mut big = b"{\"op\":\"ping\",\"pad\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 70 * 1024));
    big.extend(b"\"}\n");
    p.send_raw(&big);
    assert_eq!(p.recv()["code"], "line_too_long");
    p.send_raw(&[0xff, 0xfe, 0x00, b'\n']);
    assert_eq!(p.recv()["code"], "bad_json");
    let r = p.call(json!({"op":"ping"}));
    assert_eq!(r["op"], "ok");
}

#[test]
fn publishing_outside_the_instance_tree_needs_bridge_publish() {
    let Some(broker) = quiet_broker() else { return };
    let app = app_dir();
    let sub = subscriber(&broker);
    let mut s = settings(app.path(), broker.port, BridgeSection::default());
    s.program_publish
        .insert("prog".into(), vec!["shared/+/events".into()]);
    let bridge = Bridge::start(s, view(vec![me("prog", true)]));
    sub.wait_for(&format!("{}/status", root()), |p| p == "online");
    let mut p = bridge.connect();
    let r = p.call(json!({"op":"publish","topic":"elsewhere/x","payload":"no"}));
    assert_eq!(r["code"], "forbidden", "{r}");
    let r = p.call(
        json!({"op":"publish","topic":format!("{BASE}/v1/instances/other/x"),"payload":"no"}),
    );
    assert_eq!(r["code"], "forbidden", "{r}");
    let r = p.call(json!({"op":"publish","topic":"shared/a/events","payload":{"k":1}}));
    assert_eq!(r["op"], "ok", "{r}");
    let r = p.call(
        json!({"op":"publish","topic":format!("{}/custom", root()),"payload":"in","retain":true}),
    );
    assert_eq!(r["op"], "ok", "{r}");
    assert_eq!(sub.wait_for("shared/a/events", |_| true), r#"{"k":1}"#);
    assert_eq!(sub.wait_for(&format!("{}/custom", root()), |_| true), "in");
    assert!(payloads(&sub, "elsewhere/x").is_empty());

    // Raw subscriptions deliver messages as `message`.
    p.call(json!({"op":"subscribe","topic":"ext/#"}));
    broker.publish("ext/a", "hello", 1, false);
    let m = p.recv_op("message");
    assert_eq!(
        (m["topic"].clone(), m["payload"].clone()),
        (json!("ext/a"), json!("hello"))
    );
}

#[test]
fn ready_is_forwarded_for_identified_programs_only() {
    let Some(broker) = quiet_broker() else { return };
    let app = app_dir();
    let sub = subscriber(&broker);
    let bridge = Bridge::start(
        settings(app.path(), broker.port, BridgeSection::default()),
        view(vec![]),
    );
    sub.wait_for(&format!("{}/status", root()), |p| p == "online");
    let mut p = bridge.connect();
    assert_eq!(p.call(json!({"op":"ready"}))["code"], "unknown_program");
    bridge
        .view
        .send_modify(|v| v.programs.push(me("prog", false)));
    let r = wait_for("identification after the view changed", WAIT, || {
        let r = p.call(json!({"op":"ready"}));
        (r["op"] == "ok").then_some(r)
    });
    assert_eq!(r["op"], "ok");
    let report = bridge
        .ready
        .lock()
        .unwrap()
        .try_recv()
        .expect("a ready report");
    assert_eq!(
        report,
        ReadyReport {
            program: "prog".into(),
            pid: std::process::id() as i32
        }
    );
}

#[test]
fn the_publish_verb_sends_one_request_and_reports_the_reply() {
    let Some((_broker, _app, bridge, sub)) = setup() else {
        return;
    };
    let exe = env!("CARGO_BIN_EXE_sv-bridge-test");
    let run = |args: &[&str]| {
        Command::new(exe)
            .arg("publish")
            .args(args)
            .env("IOT2MQTT_SV_BRIDGE_SOCKET", &bridge.socket)
            .output()
            .unwrap()
    };
    let out = run(&["state", "d2", r#"{"on":true}"#]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"op\":\"ok\""));
    let st = json_on(&sub, &dev_topic("d2", "state"), |_| true);
    assert_eq!(st["state"]["on"], true);
    let out = run(&["error", "d2", "E1", "broken", "critical"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    json_on(&sub, &dev_topic("d2", "error"), |v| {
        v["severity"] == "critical"
    });
    let out = run(&["raw", "forbidden/topic", "x"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("forbidden"));
    let out = run(&["nonsense"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn a_program_that_does_not_read_does_not_block_others() {
    let Some((broker, _app, bridge, sub)) = setup() else {
        return;
    };
    // `lazy` claims d1 and never reads; its socket buffers and queue fill up with commands.
    let mut lazy = bridge.connect();
    lazy.call(json!({"op":"hello","devices":["d1"]}));
    let mut busy = bridge.connect();
    busy.call(json!({"op":"hello","devices":["d2"]}));
    let flood = json!({"values":{"pad":"y".repeat(4096)},"timeout":600000}).to_string();
    publish_lines(&broker, &dev_topic("d1", "cmd"), &flood, 400);
    broker.publish(
        &dev_topic("d2", "cmd"),
        r#"{"id":"ok2","values":{"on":true}}"#,
        1,
        false,
    );
    let c = busy.recv_op("cmd");
    assert_eq!(c["cmd_id"], "ok2");
    busy.call(json!({"op":"cmd_result","device_id":"d2","cmd_id":"ok2","status":"success"}));
    json_on(&sub, &dev_topic("d2", "cmd/response"), |v| {
        v["status"] == "success"
    });
    // The lazy program's own commands were refused once its queue was full.
    json_on(&sub, &dev_topic("d1", "error"), |v| {
        v["error_code"] == "handler_busy"
    });
    drop(lazy);
}

#[test]
fn tls_connection_with_a_private_ca() {
    tls_round_trip(false);
}

#[test]
fn mutual_tls_with_a_client_certificate() {
    tls_round_trip(true);
}

/// A broker with a TLS listener whose certificate is signed by a CA made here (requiring a client
/// certificate when `mutual`), and a bridge that must connect through it.
fn tls_round_trip(mutual: bool) {
    let dir = sv_testkit::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "iot2mqtt-sv test ca");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issue = |names: Vec<String>, file: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, file);
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.path().join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.path().join(format!("{file}.key")), key.serialize_pem()).unwrap();
    };
    issue(vec!["localhost".into(), "127.0.0.1".into()], "server");
    issue(vec![], "client");
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let tls_port = sv_testkit::free_port();
    let extra = format!(
        "log_dest none\nlistener {tls_port} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nrequire_certificate {mutual}\n",
        dir.path().display()
    );
    let Some(broker) = Mosquitto::start_with(&extra) else {
        return;
    };
    wait_until("the tls listener", || {
        std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    });
    let app = app_dir();
    let sub = subscriber(&broker);
    let section = BridgeSection {
        ca_file: Some(dir.path().join("ca.pem")),
        client_cert: mutual.then(|| dir.path().join("client.pem")),
        client_key: mutual.then(|| dir.path().join("client.key")),
        ..Default::default()
    };
    let s = settings(app.path(), tls_port, section);
    assert!(s.tls.is_some());
    let bridge = Bridge::start(s, view(vec![me("prog", true)]));
    sub.wait_for(&format!("{}/status", root()), |p| p == "online");
    let mut p = bridge.connect();
    p.call(json!({"op":"state","device_id":"d1","state":{"tls":true}}));
    json_on(&sub, &dev_topic("d1", "state"), |v| {
        v["state"]["tls"] == true
    });
}

#[test]
fn the_socket_is_created_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let Some((_broker, _app, bridge, _sub)) = setup() else {
        return;
    };
    let mode = std::fs::metadata(&bridge.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_python_client_round_trips_a_command() {
    if !sv_testkit::require(sv_testkit::Requirement::Python) {
        return;
    }
    client_round_trip(
        "python3",
        &["example_echo.py"],
        &repo().join("clients/python"),
        "python3",
    );
}

#[test]
fn the_node_client_round_trips_a_command() {
    if !sv_testkit::require(sv_testkit::Requirement::Node) {
        return;
    }
    client_round_trip(
        "node",
        &["example_echo.js"],
        &repo().join("clients/node"),
        "node",
    );
}

#[test]
fn the_go_client_round_trips_a_command() {
    let dir = repo().join("clients/go/iot2mqttsv");
    let out = sv_testkit::tempdir().unwrap();
    let exe = out.path().join("echo");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&exe)
        .arg("./example/echo")
        .current_dir(&dir)
        .status();
    match built {
        Err(_) => {
            sv_testkit::require_that(sv_testkit::Requirement::Go, false, "go is not installed");
        }
        Ok(st) => {
            assert!(st.success(), "go build failed");
            client_round_trip(exe.to_str().unwrap(), &[], &dir, "go");
        }
    }
}

/// Runs an example program of a client helper: it says hello for d1, publishes a state naming
/// itself, and answers every command with success, echoing the values.
fn client_round_trip(program: &str, args: &[&str], dir: &Path, name: &str) {
    if !args.is_empty() && Command::new(program).arg("--version").output().is_err() {
        eprintln!("skipped: {program} is not installed");
        return;
    }
    let Some((broker, _app, bridge, sub)) = setup() else {
        return;
    };
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("IOT2MQTT_SV_BRIDGE_SOCKET", &bridge.socket)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let st = json_on(&sub, &dev_topic("d1", "state"), |v| {
        v["state"]["client"].is_string()
    });
    assert_eq!(st["state"]["client"], name);
    broker.publish(
        &dev_topic("d1", "cmd"),
        r#"{"id":"k1","values":{"level":3}}"#,
        1,
        false,
    );
    let resp = json_on(&sub, &dev_topic("d1", "cmd/response"), |v| {
        v["cmd_id"] == "k1"
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(resp["status"], "success", "{resp}");
    assert_eq!(resp["result"], json!({"level":3}));
}

/// A stand-in for the supervisor's control socket: answers `watch` with the views pushed by the
/// test and records `ready` requests (replying `{"ok":true}`).
struct FakeSupervisor {
    watchers: std::sync::Arc<Mutex<Vec<UnixStream>>>,
    readies: std::sync::Arc<Mutex<Vec<Value>>>,
    current: std::sync::Arc<Mutex<Value>>,
}

impl FakeSupervisor {
    fn start(path: &Path, initial: Value) -> FakeSupervisor {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        let s = FakeSupervisor {
            watchers: Default::default(),
            readies: Default::default(),
            current: std::sync::Arc::new(Mutex::new(initial)),
        };
        let (watchers, readies, current) =
            (s.watchers.clone(), s.readies.clone(), s.current.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut line = String::new();
                if BufReader::new(stream.try_clone().unwrap())
                    .read_line(&mut line)
                    .is_err()
                {
                    continue;
                }
                let Ok(req) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if req["op"] == "watch" {
                    let v = current.lock().unwrap().to_string();
                    let _ = writeln!(stream, "{v}");
                    watchers.lock().unwrap().push(stream);
                } else if req["op"] == "ready" {
                    readies.lock().unwrap().push(req);
                    let _ = writeln!(stream, "{{\"ok\":true}}");
                }
            }
        });
        s
    }

    fn push(&self, view: Value) {
        *self.current.lock().unwrap() = view.clone();
        for w in self.watchers.lock().unwrap().iter_mut() {
            let _ = writeln!(w, "{view}");
        }
    }
}

#[test]
fn main_bridge_follows_the_supervisor_notifies_readiness_and_forwards_ready() {
    let Some(broker) = quiet_broker() else { return };
    let app = app_dir();
    let sub = subscriber(&broker);
    let socket = app.path().join("bridge.sock");
    let config = app.path().join("iot2mqtt-sv.toml");
    std::fs::write(
        &config,
        format!(
            "[bridge]\nsocket = \"{}\"\ninstance = \"{INST}\"\nhost = \"127.0.0.1\"\nport = {}\nbase_topic = \"{BASE}\"\n\n[program.prog]\ncommand = \"sleep 1000\"\nbridge_publish = [\"shared/#\"]\n",
            socket.display(),
            broker.port
        ),
    )
    .unwrap();
    let pid = std::process::id();
    let table = |healthy: bool| {
        json!({"programs":[
            {"name":"bridge","pid":1,"state":"RUNNING","ready":true,"critical":true,"healthy":true},
            {"name":"prog","pid":pid,"state":"RUNNING","ready":healthy,"critical":true,"healthy":healthy}
        ],"healthy":healthy})
    };
    let control = app.path().join("control.sock");
    let supervisor = FakeSupervisor::start(&control, table(false));
    let notify_path = app.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_sv-bridge-test"))
        .arg("bridge")
        .arg("-c")
        .arg(&config)
        .env("IOT2MQTT_PATH", app.path())
        .env("IOT2MQTT_SV_SOCKET", &control)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("TZ", "UTC")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("sd_notify from the bridge");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(socket.exists(), "READY=1 before the socket listens");

    let topic = format!("{}/status", root());
    sub.wait_for(&topic, |p| p == "offline");
    assert!(!status(&sub).contains(&"online".to_string()));
    supervisor.push(table(true));
    sub.wait_for(&topic, |p| p == "online");

    let mut p = Prog::connect(&socket);
    assert_eq!(p.call(json!({"op":"ready"}))["op"], "ok");
    wait_until("the ready report at the supervisor", || {
        supervisor
            .readies
            .lock()
            .unwrap()
            .iter()
            .any(|r| r["program"] == "prog" && r["pid"] == json!(pid))
    });
    let r = p.call(json!({"op":"publish","topic":"shared/x","payload":"ok"}));
    assert_eq!(r["op"], "ok", "bridge_publish from the config applies: {r}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0));
    wait_until("offline after SIGTERM", || {
        status(&sub).last().map(String::as_str) == Some("offline")
    });
}

#[test]
fn two_bridges_with_one_client_id_are_diagnosed_in_the_log() {
    let Some(broker) = quiet_broker() else { return };
    let app = app_dir();
    let logs = std::sync::Arc::new(Mutex::new(String::new()));
    let mut children = Vec::new();
    for n in 0..2 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sv-bridge-test"))
            .envs(env_for(app.path(), broker.port))
            .env(
                "SV_BRIDGE_TEST_SOCKET",
                app.path().join(format!("b{n}.sock")),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
            }
        });
        children.push(child);
    }
    wait_until("the client id diagnosis", || {
        logs.lock()
            .unwrap()
            .contains("another client probably uses the same client id")
    });
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn the_outbox_is_bounded_and_keeps_the_newest_messages_while_disconnected() {
    let Some((mut broker, _app, bridge, _sub)) = setup_with(BridgeSection {
        outbox_max_messages: Some(5),
        ..Default::default()
    }) else {
        return;
    };
    let mut p = bridge.connect();
    broker.kill();
    for i in 0..30 {
        let r = p.call(json!({"op":"publish","topic":format!("{}/seq/{i}", root()),"payload":i.to_string(),"retain":true}));
        assert_eq!(r["op"], "ok");
    }
    broker.restart();
    let sub = subscriber(&broker);
    // Replayed in order: once the newest is there, the dropped ones would have come before it.
    sub.wait_for(&format!("{}/seq/29", root()), |_| true);
    let seen: Vec<String> = sub
        .messages()
        .into_iter()
        .filter(|(t, _)| t.contains("/seq/"))
        .map(|(_, p)| p)
        .collect();
    assert!(!seen.contains(&"0".to_string()), "oldest kept: {seen:?}");
    assert!(seen.len() <= 5, "bound exceeded: {seen:?}");
    // The newest survive (the status republished on connect may take one slot).
    assert!(seen.contains(&"28".to_string()), "{seen:?}");
}

#[test]
fn socket_group_sets_group_and_mode_0660() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let gid = nix::unistd::getgid().as_raw();
    let Some((_broker, _app, bridge, _sub)) = setup_with(BridgeSection {
        socket_group: Some(gid.to_string()),
        ..Default::default()
    }) else {
        return;
    };
    let meta = std::fs::metadata(&bridge.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);
}

/// The last payload seen on `topic`.
fn last(sub: &Subscriber, topic: &str) -> Option<String> {
    payloads(sub, topic).pop()
}

/// Waits until the last payload on `topic` is `want`.
#[track_caller]
fn wait_last(sub: &Subscriber, topic: &str, want: &str) {
    wait_until(&format!("{want} on {topic}"), || {
        last(sub, topic).as_deref() == Some(want)
    });
}

/// Issue 13.4: availability follows the owning program's claim, readiness, reports and
/// connection, overwrites a stale `online` left by a crash, and goes `offline` for every device
/// before the instance's own `offline` on a graceful stop.
#[test]
fn device_availability_follows_the_owning_program_and_the_bridge_stop() {
    let Some(broker) = quiet_broker() else { return };
    let app = app_dir();
    // What a crashed bridge leaves behind: the Last Will covers `status`, not the devices.
    broker.publish(&dev_topic("d2", "availability"), "online", 1, true);
    let sub = subscriber(&broker);
    sub.wait_for(&dev_topic("d2", "availability"), |p| p == "online");
    let mut bridge = Bridge::start(
        settings(app.path(), broker.port, BridgeSection::default()),
        view(vec![me("prog", true)]),
    );
    sub.wait_for(&format!("{}/status", root()), |p| p == "online");
    let d1 = dev_topic("d1", "availability");
    let d2 = dev_topic("d2", "availability");
    wait_last(&sub, &d2, "offline");
    wait_last(&sub, &d1, "offline");

    // Claimed by a connected, ready program: online, unless it reports otherwise.
    let mut p = bridge.connect();
    p.call(json!({"op":"hello","devices":["d1"]}));
    wait_last(&sub, &d1, "online");
    p.call(json!({"op":"state","device_id":"d1","state":{"online":false,"on":true}}));
    wait_last(&sub, &d1, "offline");
    p.call(json!({"op":"state","device_id":"d1","state":{"online":true}}));
    wait_last(&sub, &d1, "online");

    // meta/devices_list follows the same rule.
    let list_topic = format!("{}/meta/devices_list", root());
    broker.publish(
        &format!("{}/meta/request/devices_list", root()),
        "{}",
        1,
        false,
    );
    let l = json_on(&sub, &list_topic, |_| true);
    assert_eq!(l[0]["online"], true, "{l}");
    assert_eq!(l[1]["online"], false, "{l}");

    // The program stops being ready (the supervisor's view): offline; ready again: online.
    bridge.view.send_modify(|v| v.programs[0].ready = false);
    wait_last(&sub, &d1, "offline");
    bridge.view.send_modify(|v| v.programs[0].ready = true);
    wait_last(&sub, &d1, "online");

    // The owning program disconnects: offline at once.
    drop(p);
    wait_last(&sub, &d1, "offline");
    broker.publish(
        &format!("{}/meta/request/devices_list", root()),
        "{}",
        1,
        false,
    );
    json_on(&sub, &list_topic, |l| l[0]["online"] == false);

    // A catch-all claim covers the instance file's enabled devices, not the disabled one.
    let mut p = bridge.connect();
    p.call(json!({"op":"hello","devices":"*"}));
    wait_last(&sub, &d1, "online");
    wait_last(&sub, &d2, "online");
    assert_eq!(
        last(&sub, &dev_topic("d3", "availability")).as_deref(),
        Some("offline")
    );

    // Graceful stop: every device offline, before the instance's own offline.
    bridge.stop().expect("graceful stop");
    let status = format!("{}/status", root());
    wait_last(&sub, &status, "offline");
    let msgs = sub.messages();
    let pos = |topic: &str, payload: &str| {
        msgs.iter()
            .rposition(|(t, p)| t == topic && p == payload)
            .unwrap_or_else(|| panic!("no {payload} on {topic}"))
    };
    let stop = pos(&status, "offline");
    assert!(pos(&d1, "offline") < stop && pos(&d2, "offline") < stop);
    assert!(pos(&d1, "online") < pos(&d1, "offline"));
    drop(p);
}

/// Issue 13.4 with a client helper: the device of a program that exits goes offline.
#[test]
fn device_availability_goes_offline_when_the_program_exits() {
    if !sv_testkit::require(sv_testkit::Requirement::Python) {
        return;
    }
    let Some((_broker, _app, bridge, sub)) = setup() else {
        return;
    };
    let d1 = dev_topic("d1", "availability");
    let mut child = Command::new("python3")
        .arg("example_echo.py")
        .current_dir(repo().join("clients/python"))
        .env("IOT2MQTT_SV_BRIDGE_SOCKET", &bridge.socket)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_last(&sub, &d1, "online");
    child.kill().unwrap();
    child.wait().unwrap();
    wait_last(&sub, &d1, "offline");
}

/// A bridge with extra environment whose program `prog` (this test process) is healthy.
fn start_env(broker: &Mosquitto, app: &Path, extra: &[(&str, &str)]) -> Bridge {
    Bridge::start(
        settings_env(app, broker.port, BridgeSection::default(), extra),
        view(vec![me("prog", true)]),
    )
}

/// Replaces the instance file.
fn write_instance(app: &Path, v: &Value) {
    std::fs::write(app.join(format!("instances/{INST}.json")), v.to_string()).unwrap();
}

/// An instance file with Home Assistant classes (the platform's `class`/`capabilities`).
fn write_ha_instance(app: &Path, with_old: bool) {
    let mut devices = vec![
        json!({"device_id": "lamp", "name": "Desk lamp", "class": "light.dimmable",
               "capabilities": {"power": {"settable": true},
                                "brightness": {"settable": true, "min": 0, "max": 100}}}),
        json!({"device_id": "th", "name": "Thermometer", "class": "sensor.temperature",
               "capabilities": {"temperature": {"settable": false}}}),
    ];
    if with_old {
        devices.push(json!({"device_id": "old", "class": "switch.outlet"}));
    }
    write_instance(
        app,
        &json!({"instance_id": INST, "connector_type": "demo", "devices": devices}),
    );
}

/// Runs `code` with the Python client helper connected to `socket`, to completion.
fn python(socket: &Path, code: &str) -> bool {
    if !sv_testkit::require(sv_testkit::Requirement::Python) {
        return false;
    }
    let st = Command::new("python3")
        .args(["-c", code])
        .current_dir(repo().join("clients/python"))
        .env("IOT2MQTT_SV_BRIDGE_SOCKET", socket)
        .status()
        .unwrap();
    assert!(st.success(), "python program failed");
    true
}

/// Issue 13.5: discovery configs from the instance file and from programs, republished on Home
/// Assistant's birth message, and cleared for a device removed from the instance file.
#[test]
fn home_assistant_discovery_follows_the_instance_file_and_programs() {
    let Some(broker) = quiet_broker() else { return };
    let app = app_dir();
    write_ha_instance(app.path(), true);
    let sub = subscriber(&broker);
    let mut bridge = start_env(&broker, app.path(), &[]);
    let light_topic = format!("homeassistant/light/{INST}_lamp/config");
    let light = json_on(&sub, &light_topic, |_| true);
    assert_eq!(light["unique_id"], format!("{INST}_lamp_light"));
    assert_eq!(light["schema"], "template");
    assert_eq!(light["state_topic"], dev_topic("lamp", "state"));
    assert_eq!(light["command_topic"], dev_topic("lamp", "cmd"));
    assert_eq!(
        light["device"]["identifiers"],
        json!([format!("{INST}_lamp")])
    );
    assert_eq!(light["device"]["name"], "Desk lamp");
    assert_eq!(light["device"]["via_device"], INST);
    assert_eq!(
        light["availability"],
        json!([{"topic": format!("{}/status", root())}, {"topic": dev_topic("lamp", "availability")}])
    );
    assert_eq!(light["availability_mode"], "all");
    assert_eq!(
        serde_json::from_str::<Value>(light["command_off_template"].as_str().unwrap()).unwrap(),
        json!({"values": {"power": false}})
    );
    let sensor = json_on(
        &sub,
        &format!("homeassistant/sensor/{INST}_th_temperature/config"),
        |_| true,
    );
    assert_eq!(
        sensor["value_template"],
        "{{ value_json.state.temperature }}"
    );
    assert_eq!(sensor["device_class"], "temperature");
    let old_topic = format!("homeassistant/switch/{INST}_old/config");
    sub.wait_for(&old_topic, |p| !p.is_empty());

    // A program describes a device the instance file does not know.
    let ext_topic = format!("homeassistant/sensor/{INST}_ext_rssi/config");
    if !python(
        &bridge.socket,
        "from iot2mqtt_sv import Client\n\
         c = Client(devices=['ext']); c.connect(timeout=20)\n\
         c.ha_discovery('ext', 'sensor', {'name': 'RSSI', 'state_topic': 'x/y',\n\
         'value_template': '{{ value_json.rssi }}', 'unit_of_measurement': 'dBm'}, entity='rssi')\n\
         c.close()\n",
    ) {
        return;
    }
    let ext = json_on(&sub, &ext_topic, |_| true);
    assert_eq!(ext["unique_id"], format!("{INST}_ext_rssi"));
    assert_eq!(ext["device"]["identifiers"], json!([format!("{INST}_ext")]));
    assert_eq!(
        ext["availability"][1]["topic"],
        dev_topic("ext", "availability")
    );

    // Home Assistant restarted: its birth message brings every config again.
    let before = payloads(&sub, &light_topic).len();
    broker.publish("homeassistant/status", "online", 1, false);
    wait_until("configs published again", || {
        payloads(&sub, &light_topic).len() > before
    });
    bridge.stop().unwrap();

    // The device leaves the instance file: the next run clears its config, not the program's.
    write_ha_instance(app.path(), false);
    let _bridge = start_env(&broker, app.path(), &[]);
    sub.wait_for(&old_topic, str::is_empty);
    let index_topic = format!("{}/meta/ha_discovery", root());
    // The previous run's program config is carried over into the new index.
    let index = json_on(&sub, &index_topic, |v| {
        let text = v.to_string();
        !text.contains(&old_topic) && text.contains(&ext_topic)
    });
    let topics: Vec<&str> = index["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["topic"].as_str().unwrap())
        .collect();
    assert!(topics.contains(&ext_topic.as_str()), "{index}");
    assert!(topics.contains(&light_topic.as_str()), "{index}");
    assert!(!payloads(&sub, &ext_topic).iter().any(String::is_empty));
}

/// Issue 13.5: `HA_DISCOVERY_ENABLED=false` in `.env` turns discovery off, and the op says so.
#[test]
fn home_assistant_discovery_can_be_switched_off_in_dotenv() {
    let Some(broker) = quiet_broker() else { return };
    let app = app_dir();
    write_ha_instance(app.path(), false);
    std::fs::write(app.path().join(".env"), "HA_DISCOVERY_ENABLED=false\n").unwrap();
    let sub = subscriber(&broker);
    let bridge = start_env(&broker, app.path(), &[]);
    sub.wait_for(&format!("{}/status", root()), |p| p == "online");
    let mut p = bridge.connect();
    let r = p.call(json!({"op":"ha_discovery","device_id":"lamp","component":"light","config":{}}));
    assert_eq!(r["code"], "unavailable", "{r}");
    assert!(
        !sub.messages()
            .iter()
            .any(|(t, _)| t.starts_with("homeassistant/")),
        "discovery published while disabled"
    );
}

/// Issue 13.5: `HA_DISCOVERY_PREFIX` moves the configs.
#[test]
fn home_assistant_discovery_prefix_comes_from_the_environment() {
    let Some(broker) = quiet_broker() else { return };
    let app = app_dir();
    write_ha_instance(app.path(), false);
    let sub = subscriber(&broker);
    let _bridge = start_env(&broker, app.path(), &[("HA_DISCOVERY_PREFIX", "ha2")]);
    sub.wait_for(&format!("ha2/light/{INST}_lamp/config"), |p| !p.is_empty());
}

/// Issue 13.6: `meta/info` as the platform publishes it (with `connector_type` from
/// CONNECTOR_TYPE when the instance file has none, and a real uptime), the `discovered` op,
/// `error` with `retry_info` merged, and property topics cleared by a replacing state.
#[test]
fn meta_info_discovered_error_extras_and_replaced_properties() {
    let Some(broker) = quiet_broker() else { return };
    let app = app_dir();
    write_instance(
        app.path(),
        &json!({"devices": [{"device_id": "d1"}], "groups": []}),
    );
    let sub = subscriber(&broker);
    let bridge = start_env(&broker, app.path(), &[("CONNECTOR_TYPE", "yeelight")]);
    sub.wait_for(&format!("{}/status", root()), |p| p == "online");

    broker.publish(&format!("{}/meta/request/info", root()), "{}", 1, false);
    let i = json_on(&sub, &format!("{}/meta/info", root()), |_| true);
    assert_eq!(i["instance_id"], INST);
    assert_eq!(i["connector_type"], "yeelight");
    assert_eq!(i["devices_count"], 1);
    assert_eq!(i["groups_count"], 0);
    // Seconds since start, not the epoch time the reference sends.
    assert!(i["uptime"].as_u64().is_some_and(|u| u < 3600), "{i}");

    if !python(
        &bridge.socket,
        "from iot2mqtt_sv import Client\n\
         c = Client(devices=['d1']); c.connect(timeout=20)\n\
         c.discovered([{'device_id': 'bulb_7', 'ip': '192.168.1.7'}])\n\
         c.error('d1', 'E_TIMEOUT', 'no answer', retry_info={'attempt': 3, 'next_retry_s': 30})\n\
         c.close()\n",
    ) {
        return;
    }
    let d = json_on(&sub, &format!("{}/discovered", root()), |_| true);
    assert_eq!(
        d["devices"],
        json!([{"device_id": "bulb_7", "ip": "192.168.1.7"}])
    );
    assert!(d["timestamp"].is_string());
    let e = json_on(&sub, &dev_topic("d1", "error"), |_| true);
    assert_eq!(
        (
            e["error_code"].clone(),
            e["attempt"].clone(),
            e["next_retry_s"].clone()
        ),
        (json!("E_TIMEOUT"), json!(3), json!(30))
    );

    // `replace`: a key that disappeared loses its retained property topic.
    let mut p = bridge.connect();
    p.call(json!({"op":"state","device_id":"d1","state":{"a":1,"b":2}}));
    sub.wait_for(&dev_topic("d1", "state/b"), |p| p == "2");
    p.call(json!({"op":"state","device_id":"d1","state":{"a":5},"replace":true}));
    sub.wait_for(&dev_topic("d1", "state/b"), str::is_empty);
    let st = json_on(&sub, &dev_topic("d1", "state"), |v| v["state"]["a"] == 5);
    assert_eq!(st["state"], json!({"a": 5}));
}

/// Issue 13.6: the instance file's `mqtt.retain_state: false` makes states non-retained (the
/// broker hands a new subscriber the retained status but no state).
#[test]
fn instance_file_retain_state_false_publishes_states_unretained() {
    let Some(broker) = quiet_broker() else { return };
    let app = app_dir();
    write_instance(
        app.path(),
        &json!({"devices": [{"device_id": "d1"}], "mqtt": {"retain_state": false}}),
    );
    let sub = subscriber(&broker);
    let bridge = start_env(&broker, app.path(), &[]);
    sub.wait_for(&format!("{}/status", root()), |p| p == "online");
    let mut p = bridge.connect();
    p.call(json!({"op":"state","device_id":"d1","state":{"a":1}}));
    sub.wait_for(&dev_topic("d1", "state/a"), |p| p == "1");
    // Mosquitto sends the retained messages of one SUBSCRIBE filter by filter, in order: a
    // retained state would arrive before the (always retained) status.
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args([
            "-t",
            &dev_topic("d1", "state"),
            "-t",
            &format!("{}/status", root()),
        ])
        .args(["-F", "%t", "-C", "1"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}/status", root())
    );
}

/// Renders a discovery config's templates with Jinja2 (the engine Home Assistant renders them
/// with): each `(template key, variables)` of `cases` gives the rendered text.
fn render_jinja(config: &Value, cases: &[(&str, Value)]) -> Option<Vec<String>> {
    let probe = Command::new("python3")
        .args(["-c", "import jinja2"])
        .status();
    if !sv_testkit::require_that(
        sv_testkit::Requirement::Python,
        probe.is_ok_and(|s| s.success()),
        "python3 with jinja2 is not installed (python3 -m pip install jinja2)",
    ) {
        return None;
    }
    let input = json!({"config": config, "cases": cases.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()});
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, sys, jinja2\n\
             env = jinja2.Environment()\n\
             d = json.load(sys.stdin)\n\
             print(json.dumps([env.from_string(d['config'][k]).render(**v) for k, v in d['cases']]))\n",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "jinja2 rendering failed");
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// Issue 13.5: what Home Assistant would show and send. Every state template, rendered against
/// the bridge's state envelope, gives the value Home Assistant compares with its payloads, and
/// every command template gives the platform's `{"values": {...}}` command.
#[test]
fn home_assistant_templates_read_the_state_envelope_and_write_platform_commands() {
    use sv_bridge::discovery::{Context, generate};
    let devices: Vec<sv_bridge::settings::DeviceInfo> = serde_json::from_value(json!([
        {"device_id": "lamp", "class": "light.dimmable",
         "capabilities": {"power": {"settable": true}, "brightness": {"settable": true, "max": 100}}},
        {"device_id": "plug", "class": "switch.outlet", "capabilities": {"on": {"settable": true}}},
        {"device_id": "pir", "class": "sensor.motion"},
        {"device_id": "ac", "class": "climate.ac",
         "capabilities": {"target_temperature": {"settable": true}}},
        {"device_id": "fan", "class": "climate.air_purifier",
         "capabilities": {"speed": {"settable": true}}},
        {"device_id": "door", "class": "security.lock"}
    ]))
    .unwrap();
    let ctx = Context {
        prefix: "homeassistant",
        root: "IoT2mqtt/v1/instances/inst",
        instance: "inst",
    };
    let configs = generate(&ctx, &devices);
    let by = |d: &str| &configs.iter().find(|c| c.device_id == d).unwrap().payload;
    // The envelope as the bridge publishes it on …/state.
    let env =
        |state: Value| json!({"value_json": {"timestamp": "t", "device_id": "d", "state": state}});
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));

    let lamp = by("lamp");
    let Some(r) = render_jinja(
        lamp,
        &[
            (
                "state_template",
                env(json!({"power": true, "brightness": 50})),
            ),
            ("state_template", env(json!({"power": false}))),
            (
                "brightness_template",
                env(json!({"power": true, "brightness": 50})),
            ),
            (
                "command_on_template",
                json!({"state": "on", "brightness": 255}),
            ),
            ("command_on_template", json!({"state": "on"})),
            ("command_off_template", json!({"state": "off"})),
        ],
    ) else {
        return;
    };
    assert_eq!(
        (r[0].as_str(), r[1].as_str(), r[2].as_str()),
        ("on", "off", "128")
    );
    assert_eq!(
        parse(&r[3]),
        json!({"values": {"power": true, "brightness": 100}})
    );
    assert_eq!(parse(&r[4]), json!({"values": {"power": true}}));
    assert_eq!(parse(&r[5]), json!({"values": {"power": false}}));

    let plug = by("plug");
    let r = render_jinja(plug, &[("value_template", env(json!({"on": true})))]).unwrap();
    assert_eq!(r[0], plug["state_on"].as_str().unwrap());

    let pir = by("pir");
    let r = render_jinja(pir, &[("value_template", env(json!({"motion": false})))]).unwrap();
    assert_eq!(r[0], pir["payload_off"].as_str().unwrap());

    let ac = by("ac");
    let r = render_jinja(
        ac,
        &[
            ("mode_command_template", json!({"value": "cool"})),
            ("temperature_command_template", json!({"value": 21.5})),
            (
                "current_temperature_template",
                env(json!({"temperature": 23.4})),
            ),
        ],
    )
    .unwrap();
    assert_eq!(parse(&r[0]), json!({"values": {"mode": "cool"}}));
    assert_eq!(
        parse(&r[1]),
        json!({"values": {"target_temperature": 21.5}})
    );
    assert_eq!(r[2], "23.4");

    let fan = by("fan");
    let r = render_jinja(
        fan,
        &[
            ("command_template", json!({"value": "ON"})),
            ("command_template", json!({"value": "OFF"})),
            ("percentage_command_template", json!({"value": 40})),
            ("state_value_template", env(json!({"power": true}))),
        ],
    )
    .unwrap();
    assert_eq!(parse(&r[0]), json!({"values": {"power": true}}));
    assert_eq!(parse(&r[1]), json!({"values": {"power": false}}));
    assert_eq!(parse(&r[2]), json!({"values": {"speed": 40}}));
    assert_eq!(r[3], "ON");

    let lock = by("door");
    let r = render_jinja(lock, &[("value_template", env(json!({"locked": true})))]).unwrap();
    assert_eq!(r[0], "LOCKED");
    assert_eq!(
        parse(lock["payload_unlock"].as_str().unwrap()),
        json!({"values": {"locked": false}})
    );
}

/// Issue 13.5 and 13.6 with the Node.js helper: `haDiscovery` and `discovered`.
#[test]
fn the_node_helper_sends_discovery_configs_and_discovered_devices() {
    if !sv_testkit::require(sv_testkit::Requirement::Node) {
        return;
    }
    let Some((_broker, _app, bridge, sub)) = setup() else {
        return;
    };
    // The helper writes queued requests on connect; ending the socket after that flushes them.
    let st = Command::new("node")
        .args([
            "-e",
            "const { Client } = require('./iot2mqtt_sv');\n\
             const c = new Client({ devices: ['d1'] });\n\
             c.haDiscovery('d1', 'binary_sensor', { state_topic: 'x', name: 'Window' }, 'window');\n\
             c.discovered([{ device_id: 'new1' }]);\n\
             c.connect();\n\
             c.sock.on('connect', () => c.close());\n",
        ])
        .current_dir(repo().join("clients/node"))
        .env("IOT2MQTT_SV_BRIDGE_SOCKET", &bridge.socket)
        .status()
        .unwrap();
    assert!(st.success());
    let c = json_on(
        &sub,
        &format!("homeassistant/binary_sensor/{INST}_d1_window/config"),
        |_| true,
    );
    assert_eq!(c["unique_id"], format!("{INST}_d1_window"));
    assert_eq!(c["availability_mode"], "all");
    let d = json_on(&sub, &format!("{}/discovered", root()), |_| true);
    assert_eq!(d["devices"], json!([{"device_id": "new1"}]));
}
