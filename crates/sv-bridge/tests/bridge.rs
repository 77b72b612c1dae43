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
    let env = env_for(app, port);
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

#[test]
fn state_event_error_and_telemetry_topics_and_payloads() {
    let Some((_broker, _app, _bridge, sub)) = setup() else {
        return;
    };
    let mut p = Prog::connect(&_bridge.socket);
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
    assert_eq!(
        sub.wait_for(&dev_topic("d1", "availability"), |_| true),
        "online"
    );

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
    p.call(json!({"op":"state","device_id":"d1","state":{"online":true}}));
    sub.wait_for(&dev_topic("d1", "availability"), |p| p == "online");
    broker.publish(
        &format!("{}/meta/request/devices_list", root()),
        "",
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
