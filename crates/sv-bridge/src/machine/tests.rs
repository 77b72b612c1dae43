//! The MQTT contract tested on the machine alone: a fake clock, a simulated broker connection
//! (it acknowledges when told, keeps retained messages, and publishes the Last Will on an
//! unclean close) and simulated programs, no sockets and no broker. Expected topics and payloads
//! are the platform's (docs/mqtt-contract.md, the reference's wire contract), not read back
//! from the implementation.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::json;
use sv_core::config::BridgeSection;

use super::*;
use crate::ProgramView;
use crate::codec::{decode_reply, decode_request};
use crate::settings::parse_instance_file;

const ROOT: &str = "IoT2mqtt/v1/instances/demo_ab12cd";
/// An instance file as the platform's web backend writes it, with a group as readers accept.
const INSTANCE: &str = r#"{
  "instance_id": "demo_ab12cd", "connector_type": "yeelight", "friendly_name": "Demo",
  "devices": [
    {"device_id": "lamp1", "name": "Lamp", "model": "L1", "enabled": true},
    {"device_id": "lamp2", "enabled": false}
  ],
  "groups": [{"group_id": "all", "devices": ["lamp1", "lamp2", "gone"]}]
}"#;

fn settings(tweak: impl FnOnce(&mut Settings)) -> Arc<Settings> {
    // Resolved once: the property tests build thousands of machines.
    static BASE: std::sync::OnceLock<Settings> = std::sync::OnceLock::new();
    let mut s = BASE
        .get_or_init(|| {
            let section = BridgeSection {
                instance: Some("demo_ab12cd".into()),
                iot2mqtt_path: Some(PathBuf::from("/nonexistent/iot2mqtt-sv-machine-tests")),
                socket: Some(PathBuf::from(
                    "/nonexistent/iot2mqtt-sv-machine-tests/b.sock",
                )),
                tz: Some("UTC".into()),
                ..BridgeSection::default()
            };
            let mut s =
                Settings::resolve(&section, &|_| None).expect("settings resolve without files");
            s.instance_config = parse_instance_file(Path::new("demo_ab12cd.json"), INSTANCE)
                .expect("instance file");
            s.ha_discovery = None;
            s
        })
        .clone();
    tweak(&mut s);
    Arc::new(s)
}

fn program(name: &str, pid: i32, critical: bool, healthy: bool) -> ProgramView {
    ProgramView {
        name: name.into(),
        pid: Some(pid),
        state: "RUNNING".into(),
        ready: healthy,
        critical,
        healthy,
    }
}

fn view(programs: Vec<ProgramView>) -> SupervisorView {
    SupervisorView { programs }
}

/// One publish as it went over the simulated connection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    id: u64,
    topic: String,
    payload: String,
    qos: u8,
    retain: bool,
}

impl Sent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.payload).expect("a JSON payload")
    }
}

/// The machine with a fake clock, a simulated broker and simulated programs.
struct Sim {
    m: Machine,
    now: Instant,
    wall: Timestamp,
    connects: usize,
    /// Publishes on the connection, not yet acknowledged.
    handed: VecDeque<Sent>,
    /// Publishes the broker acknowledged, in order.
    acked: Vec<Sent>,
    /// What the broker retains.
    retained: BTreeMap<String, String>,
    subscriptions: Vec<String>,
    closes: Vec<Transmit>,
    lines: HashMap<u64, Vec<Reply>>,
    /// Programs that do not read their socket.
    deaf: Vec<u64>,
    ready: Vec<ReadyReport>,
}

impl Sim {
    fn new(s: Arc<Settings>, v: SupervisorView) -> Sim {
        let now = Instant::now();
        let wall: Timestamp = "2026-11-27T06:00:00Z".parse().unwrap();
        let mut sim = Sim {
            m: Machine::new(s, v, now, wall, 1),
            now,
            wall,
            connects: 0,
            handed: VecDeque::new(),
            acked: Vec::new(),
            retained: BTreeMap::new(),
            subscriptions: Vec::new(),
            closes: Vec::new(),
            lines: HashMap::new(),
            deaf: Vec::new(),
            ready: Vec::new(),
        };
        sim.drain();
        sim
    }

    /// A connected machine: CONNACK given, everything acknowledged.
    fn connected(s: Arc<Settings>, v: SupervisorView) -> Sim {
        let mut sim = Sim::new(s, v);
        sim.connack();
        sim.ack_all();
        sim
    }

    /// Carries out the machine's outputs (subscriptions are acknowledged at once).
    fn drain(&mut self) {
        let mut inputs = Vec::new();
        while let Some(t) = self.m.poll_transmit() {
            match t {
                Transmit::Connect => self.connects += 1,
                Transmit::Subscribe(f) => {
                    self.subscriptions.extend(f);
                    inputs.push(Input::SubAcked);
                }
                Transmit::Publish { id, msg, .. } => self.handed.push_back(Sent {
                    id,
                    topic: msg.topic,
                    payload: String::from_utf8(msg.payload).unwrap(),
                    qos: msg.qos,
                    retain: msg.retain,
                }),
                Transmit::Abort => {
                    self.handed.clear();
                    self.will();
                    self.closes.push(Transmit::Abort);
                }
                Transmit::Disconnect => self.closes.push(Transmit::Disconnect),
            }
        }
        while let Some((conn, line)) = self.m.poll_deliver() {
            assert!(line.ends_with('\n'));
            let reply = decode_reply(line.trim_end().as_bytes()).expect("a reply line");
            self.lines.entry(conn).or_default().push(reply);
            if !self.deaf.contains(&conn) {
                inputs.push(Input::Written {
                    conn,
                    lines: 1,
                    bytes: line.len(),
                });
            }
        }
        while let Some(r) = self.m.poll_ready() {
            self.ready.push(r);
        }
        for i in inputs {
            self.m.handle(self.now, self.wall, i);
        }
        if self.m.poll_transmit_pending() || !self.m.deliveries.is_empty() {
            self.drain();
        }
    }

    fn input(&mut self, i: Input) {
        self.m.handle(self.now, self.wall, i);
        self.drain();
    }

    fn connack(&mut self) {
        self.input(Input::BrokerConnected);
    }

    /// The broker publishes the Last Will.
    fn will(&mut self) {
        self.retained
            .insert(format!("{ROOT}/status"), "offline".into());
    }

    /// The broker acknowledges the oldest publish on the connection.
    fn ack_one(&mut self) -> bool {
        let Some(p) = self.handed.pop_front() else {
            return false;
        };
        if p.retain {
            if p.payload.is_empty() {
                self.retained.remove(&p.topic);
            } else {
                self.retained.insert(p.topic.clone(), p.payload.clone());
            }
        }
        let id = p.id;
        self.acked.push(p);
        self.input(Input::Acked(id));
        true
    }

    fn ack_all(&mut self) {
        while self.ack_one() {}
    }

    /// The connection breaks (the broker publishes the Last Will).
    fn broker_down(&mut self, refused: bool) {
        self.handed.clear();
        self.will();
        self.input(Input::BrokerDown {
            error: "connection reset".into(),
            refused,
        });
    }

    /// Moves both clocks on and handles what fell due.
    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.wall += d;
        for _ in 0..16 {
            match self.m.poll_timeout() {
                Some(t) if t <= self.now => {
                    self.m.handle_timeout(self.now, self.wall);
                    self.drain();
                }
                _ => break,
            }
        }
    }

    fn open(&mut self, conn: u64, pid: Option<i32>) {
        self.input(Input::ProgramConnected {
            conn,
            pid,
            sid: None,
        });
    }

    /// A program's line, decoded as the socket server does.
    fn line(&mut self, conn: u64, line: &str) {
        let input = match decode_request(line.as_bytes()) {
            Ok(req) => Input::Line { conn, req },
            Err(e) => Input::Refused {
                conn,
                reply: Reply::error(e.id, e.code, e.message),
            },
        };
        self.input(input);
    }

    fn inbound(&mut self, topic: &str, payload: &str, retain: bool) {
        self.input(Input::Inbound {
            topic: format!("{ROOT}/{topic}"),
            payload: payload.as_bytes().to_vec(),
            retain,
        });
    }

    /// Everything handed to the connection or acknowledged on `topic` (under the root), oldest
    /// first, each message once.
    fn sent(&self, topic: &str) -> Vec<Sent> {
        let t = format!("{ROOT}/{topic}");
        let mut seen = Vec::new();
        for p in self.acked.iter().chain(self.handed.iter()) {
            if p.topic == t && !seen.iter().any(|s: &Sent| s.id == p.id) {
                seen.push(p.clone());
            }
        }
        seen
    }

    fn payloads(&self, topic: &str) -> Vec<String> {
        self.sent(topic).into_iter().map(|p| p.payload).collect()
    }

    fn take_lines(&mut self, conn: u64) -> Vec<Reply> {
        self.lines.remove(&conn).unwrap_or_default()
    }
}

impl Machine {
    fn poll_transmit_pending(&self) -> bool {
        !self.transmits.is_empty()
    }
}

fn ok(id: i64) -> Reply {
    Reply::Ok {
        id: Some(json!(id)),
    }
}

fn error_code(r: &Reply) -> Option<&'static str> {
    match r {
        Reply::Error { code, .. } => Some(code.as_str()),
        _ => None,
    }
}

// ---- status ----------------------------------------------------------------------------------

#[test]
fn online_only_while_connected_and_every_critical_program_is_healthy() {
    let sick = view(vec![
        program("bridge", 10, true, false),
        program("worker", 11, true, false),
        program("helper", 12, false, false),
    ]);
    let mut sim = Sim::new(settings(|_| {}), sick.clone());
    assert_eq!(sim.connects, 1);
    assert!(sim.payloads("status").is_empty(), "nothing before CONNACK");
    sim.connack();
    sim.ack_all();
    assert_eq!(sim.payloads("status"), ["offline"]);
    let status = &sim.sent("status")[0];
    assert_eq!((status.qos, status.retain), (1, true));
    // The bridge's own health and a non-critical program's do not count.
    let healthy = view(vec![
        program("bridge", 10, true, false),
        program("worker", 11, true, true),
        program("helper", 12, false, false),
    ]);
    sim.input(Input::View(healthy.clone()));
    sim.ack_all();
    assert_eq!(sim.payloads("status"), ["offline", "online"]);
    sim.input(Input::View(healthy));
    assert_eq!(sim.payloads("status"), ["offline", "online"], "no repeats");
    sim.input(Input::View(sick));
    sim.ack_all();
    assert_eq!(sim.payloads("status"), ["offline", "online", "offline"]);
    assert_eq!(sim.retained[&format!("{ROOT}/status")], "offline");
}

#[test]
fn status_and_subscriptions_are_renewed_after_every_reconnect() {
    let mut sim = Sim::connected(settings(|_| {}), view(vec![program("w", 11, true, true)]));
    assert_eq!(sim.payloads("status"), ["online"]);
    let filters = [
        format!("{ROOT}/devices/+/cmd"),
        format!("{ROOT}/devices/+/get"),
        format!("{ROOT}/groups/+/cmd"),
        format!("{ROOT}/meta/request/+"),
    ];
    assert_eq!(sim.subscriptions, filters);
    sim.broker_down(false);
    assert_eq!(
        sim.retained[&format!("{ROOT}/status")],
        "offline",
        "the Will"
    );
    assert_eq!(sim.connects, 1, "not at once: after the backoff");
    // An unreachable broker is retried within 1.2 s (1 s cap plus jitter).
    sim.advance(Duration::from_millis(1200));
    assert_eq!(sim.connects, 2);
    sim.connack();
    sim.ack_all();
    assert_eq!(sim.payloads("status"), ["online", "online"]);
    assert_eq!(sim.retained[&format!("{ROOT}/status")], "online");
    assert_eq!(sim.subscriptions.len(), 8, "subscribed again");
}

#[test]
fn a_refused_connect_backs_off_up_to_thirty_seconds() {
    let mut sim = Sim::new(settings(|_| {}), view(vec![]));
    for _ in 0..10 {
        let before = sim.connects;
        sim.input(Input::BrokerDown {
            error: "refused".into(),
            refused: true,
        });
        sim.advance(Duration::from_secs(36));
        assert_eq!(sim.connects, before + 1);
    }
    // By now the pause is at its cap: 30 s ± 20 %, so nothing within 23 s.
    sim.input(Input::BrokerDown {
        error: "refused".into(),
        refused: true,
    });
    let before = sim.connects;
    sim.advance(Duration::from_secs(23));
    assert_eq!(sim.connects, before);
}

#[test]
fn a_graceful_stop_sends_devices_then_the_instance_offline_and_disconnects_cleanly() {
    let mut sim = Sim::connected(settings(|_| {}), view(vec![program("w", 11, true, true)]));
    sim.open(1, Some(11));
    sim.line(1, r#"{"op":"hello","id":1,"devices":["lamp1"]}"#);
    sim.ack_all();
    assert_eq!(
        sim.payloads("devices/lamp1/availability"),
        ["offline", "online"]
    );
    sim.input(Input::Stop);
    let order: Vec<(String, String)> = sim
        .handed
        .iter()
        .map(|p| (p.topic.clone(), p.payload.clone()))
        .collect();
    assert_eq!(
        order,
        [
            (
                format!("{ROOT}/devices/lamp1/availability"),
                "offline".into()
            ),
            (format!("{ROOT}/status"), "offline".into()),
        ]
    );
    assert!(sim.closes.is_empty(), "not before the PUBACK");
    sim.ack_all();
    assert_eq!(sim.closes, [Transmit::Disconnect]);
    assert!(!sim.m.is_stopped());
    sim.input(Input::BrokerDown {
        error: "closed".into(),
        refused: false,
    });
    assert!(sim.m.is_stopped());
    assert_eq!(sim.retained[&format!("{ROOT}/status")], "offline");
    assert_eq!(sim.connects, 1, "no reconnect while stopping");
}

#[test]
fn a_stop_without_puback_closes_without_disconnect_within_the_budget() {
    let mut sim = Sim::connected(settings(|_| {}), view(vec![]));
    // A backlog filling the window, never acknowledged (a stalled broker).
    sim.open(1, None);
    for i in 0..(WINDOW + 10) {
        sim.line(
            1,
            &format!(r#"{{"op":"event","device_id":"lamp1","event":"e{i}","data":{{}}}}"#),
        );
    }
    sim.input(Input::Stop);
    // The final offline is on the wire despite the full window (the priority reserve).
    assert!(
        sim.handed
            .iter()
            .any(|p| p.topic == format!("{ROOT}/status") && p.payload == "offline")
    );
    sim.advance(STOP_BUDGET - STOP_CLOSE_WAIT - Duration::from_millis(1));
    assert!(sim.closes.is_empty());
    sim.advance(Duration::from_millis(1));
    assert_eq!(sim.closes, [Transmit::Abort]);
    assert!(sim.m.is_stopped());
    assert_eq!(
        sim.retained[&format!("{ROOT}/status")],
        "offline",
        "the Will"
    );
}

#[test]
fn a_stop_while_disconnected_is_immediate() {
    let mut sim = Sim::new(settings(|_| {}), view(vec![]));
    sim.input(Input::Stop);
    assert!(sim.m.is_stopped());
    assert_eq!(
        sim.closes,
        [Transmit::Abort],
        "the pending connect is dropped"
    );
}

// ---- commands --------------------------------------------------------------------------------

/// A program `w` (pid 11) that claimed lamp1, on connection 1.
fn with_handler() -> Sim {
    let mut sim = Sim::connected(settings(|_| {}), view(vec![program("w", 11, true, true)]));
    sim.open(1, Some(11));
    sim.line(1, r#"{"op":"hello","id":1,"devices":["lamp1"]}"#);
    assert_eq!(sim.take_lines(1), [ok(1)]);
    sim.ack_all();
    sim
}

#[test]
fn a_command_reaches_its_program_and_its_result_is_published_once() {
    let mut sim = with_handler();
    sim.inbound(
        "devices/lamp1/cmd",
        r#"{"id":"c-42","values":{"on":false},"timeout":5000}"#,
        false,
    );
    let lines = sim.take_lines(1);
    let [
        Reply::Cmd {
            device_id,
            cmd_id,
            values,
            timeout,
            timestamp,
        },
    ] = lines.as_slice()
    else {
        panic!("{lines:?}")
    };
    assert_eq!((device_id.as_str(), cmd_id.as_str()), ("lamp1", "c-42"));
    assert_eq!(Value::Object(values.clone()), json!({"on": false}));
    assert_eq!(*timeout, 5000);
    assert_eq!(timestamp, "2026-11-27T06:00:00.000+00:00");
    sim.line(
        1,
        r#"{"op":"cmd_result","id":4,"device_id":"lamp1","cmd_id":"c-42","status":"success","result":{"on":false}}"#,
    );
    assert_eq!(sim.take_lines(1), [ok(4)]);
    let r = sim.sent("devices/lamp1/cmd/response");
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].json(),
        json!({"cmd_id":"c-42","status":"success","result":{"on":false},"timestamp":"2026-11-27T06:00:00.000+00:00"})
    );
    assert_eq!((r[0].qos, r[0].retain), (1, false));
    // A second result for the same command is refused and publishes nothing.
    sim.line(
        1,
        r#"{"op":"cmd_result","id":5,"device_id":"lamp1","cmd_id":"c-42","status":"success"}"#,
    );
    assert_eq!(error_code(&sim.take_lines(1)[0]), Some("unknown_command"));
    assert_eq!(sim.sent("devices/lamp1/cmd/response").len(), 1);
}

#[test]
fn a_command_times_out_on_the_fake_clock_with_a_response_and_a_device_error() {
    let mut sim = with_handler();
    // A numeric id comes back as a number; a command without `values` is its values.
    sim.inbound(
        "devices/lamp1/cmd",
        r#"{"id":7,"on":true,"timeout":2000}"#,
        false,
    );
    let lines = sim.take_lines(1);
    assert!(
        matches!(&lines[..], [Reply::Cmd { cmd_id, values, .. }] if cmd_id == "7" && values.get("on") == Some(&json!(true)))
    );
    sim.advance(Duration::from_millis(1999));
    assert!(sim.sent("devices/lamp1/cmd/response").is_empty());
    sim.advance(Duration::from_millis(1));
    let r = sim.sent("devices/lamp1/cmd/response");
    assert_eq!(r.len(), 1);
    let v = r[0].json();
    assert_eq!((&v["cmd_id"], &v["status"]), (&json!(7), &json!("error")));
    assert_eq!(v["timestamp"], "2026-11-27T06:00:02.000+00:00");
    let e = sim.sent("devices/lamp1/error");
    assert_eq!(e[0].json()["error_code"], "timeout");
    assert_eq!(e[0].json()["severity"], "error");
    // Too late now.
    sim.line(
        1,
        r#"{"op":"cmd_result","id":9,"cmd_id":"7","status":"success"}"#,
    );
    assert_eq!(error_code(&sim.take_lines(1)[0]), Some("unknown_command"));
    assert_eq!(sim.sent("devices/lamp1/cmd/response").len(), 1);
}

#[test]
fn commands_fail_without_handler_when_the_handler_leaves_and_when_it_does_not_read() {
    let mut sim = with_handler();
    sim.inbound("devices/nobody/cmd", r#"{"id":"a","values":{}}"#, false);
    let e = sim.sent("devices/nobody/error");
    assert_eq!(e[0].json()["error_code"], "no_handler");
    assert_eq!(
        sim.sent("devices/nobody/cmd/response")[0].json()["status"],
        "error"
    );

    sim.inbound("devices/lamp1/cmd", r#"{"id":"b","values":{}}"#, false);
    sim.input(Input::ProgramLeft { conn: 1 });
    let r = sim.sent("devices/lamp1/cmd/response");
    assert_eq!(r[0].json()["cmd_id"], "b");
    assert!(
        r[0].json()["error"]
            .as_str()
            .unwrap()
            .contains("disconnected")
    );
    assert_eq!(
        sim.sent("devices/lamp1/error")[0].json()["error_code"],
        "handler_gone"
    );
    // The availability follows the program that left.
    assert_eq!(
        sim.payloads("devices/lamp1/availability")
            .last()
            .map(String::as_str),
        Some("offline")
    );

    // A program that reads nothing: its queue bound makes the next command `handler_busy`.
    sim.open(2, Some(11));
    sim.line(2, r#"{"op":"hello","devices":["lamp1"]}"#);
    sim.take_lines(2);
    sim.deaf.push(2);
    for i in 0..WRITE_QUEUE {
        sim.inbound(
            "devices/lamp1/cmd",
            &format!(r#"{{"id":"q{i}","values":{{}}}}"#),
            false,
        );
    }
    assert_eq!(sim.lines[&2].len(), WRITE_QUEUE);
    assert!(
        sim.payloads("devices/lamp1/cmd/response").len() == 1,
        "none failed yet"
    );
    sim.inbound("devices/lamp1/cmd", r#"{"id":"busy","values":{}}"#, false);
    let last = sim.sent("devices/lamp1/error").pop().unwrap();
    assert_eq!(last.json()["error_code"], "handler_busy");
    assert_eq!(sim.lines[&2].len(), WRITE_QUEUE, "nothing beyond the bound");
}

#[test]
fn stale_commands_are_rejected_and_naive_timestamps_take_the_nearer_reading() {
    let s = settings(|s| s.tz = jiff::tz::TimeZone::get("Asia/Tokyo").unwrap());
    let mut sim = Sim::connected(s, view(vec![]));
    sim.open(1, None);
    sim.line(1, r#"{"op":"hello","devices":"*"}"#);
    sim.take_lines(1);
    // The clock reads 06:00:00Z = 15:00:00 in Tokyo.
    let cases = [
        // The web backend: naive UTC, two seconds old.
        ("web", "2026-11-27T05:59:58.000000", true),
        // The reference client: naive local time in TZ.
        ("local", "2026-11-27T15:00:00.000000", true),
        // Two minutes old under both readings.
        ("old", "2026-11-27T05:58:00.000000", false),
        // Exact: a UTC clock labelled +09:00 is nine hours old.
        ("labelled", "2026-11-27T06:00:00+09:00", false),
        ("zulu", "2026-11-27T05:59:50Z", true),
    ];
    for (id, ts, fresh) in cases {
        sim.inbound(
            "devices/lamp1/cmd",
            &json!({"id": id, "timestamp": ts, "values": {}}).to_string(),
            false,
        );
        let forwarded = sim.take_lines(1).len() == 1;
        assert_eq!(forwarded, fresh, "{id} {ts}");
    }
    let expired: Vec<Value> = sim
        .sent("devices/lamp1/cmd/response")
        .iter()
        .map(|p| p.json()["cmd_id"].clone())
        .collect();
    assert_eq!(expired, [json!("old"), json!("labelled")]);
    let codes: Vec<Value> = sim
        .sent("devices/lamp1/error")
        .iter()
        .map(|p| p.json()["error_code"].clone())
        .collect();
    assert_eq!(codes, [json!("command_expired"), json!("command_expired")]);
    sim.inbound(
        "devices/lamp1/cmd",
        r#"{"id":"bad","timestamp":"soon","values":{}}"#,
        false,
    );
    assert_eq!(
        sim.sent("devices/lamp1/error").pop().unwrap().json()["error_code"],
        "invalid_command"
    );
}

#[test]
fn a_group_command_goes_to_each_enabled_member_only() {
    let mut sim = Sim::connected(settings(|_| {}), view(vec![]));
    sim.open(1, None);
    sim.line(1, r#"{"op":"hello","devices":["lamp1","lamp2","gone"]}"#);
    sim.take_lines(1);
    sim.inbound("groups/all/cmd", r#"{"values":{"on":true}}"#, false);
    let devices: Vec<String> = sim
        .take_lines(1)
        .into_iter()
        .filter_map(|r| match r {
            Reply::Cmd { device_id, .. } => Some(device_id),
            _ => None,
        })
        .collect();
    assert_eq!(devices, ["lamp1"]);
    sim.inbound("groups/unknown/cmd", r#"{"values":{"on":true}}"#, false);
    assert!(sim.take_lines(1).is_empty());
}

#[test]
fn retained_and_empty_requests_are_ignored() {
    let mut sim = with_handler();
    sim.inbound("devices/lamp1/cmd", r#"{"id":"r","values":{}}"#, true);
    sim.inbound("devices/lamp1/cmd", "  ", false);
    sim.inbound("meta/request/info", "", false);
    assert!(sim.take_lines(1).is_empty());
    assert!(sim.sent("devices/lamp1/cmd/response").is_empty());
    assert!(sim.sent("devices/lamp1/error").is_empty());
    assert!(sim.sent("meta/info").is_empty());
}

// ---- meta, state, availability ---------------------------------------------------------------

#[test]
fn meta_requests_are_answered_by_the_bridge_unless_a_program_claims_them() {
    let mut sim = Sim::connected(settings(|_| {}), view(vec![]));
    sim.advance(Duration::from_secs(42));
    sim.inbound("meta/request/info", "{}", false);
    let info = sim.sent("meta/info");
    assert_eq!((info[0].qos, info[0].retain), (1, true));
    let v = info[0].json();
    assert_eq!(v["instance_id"], "demo_ab12cd");
    assert_eq!(v["connector_type"], "yeelight");
    assert_eq!(v["devices_count"], 2);
    assert_eq!(v["groups_count"], 1);
    assert_eq!(v["uptime"], 42, "seconds since start, on the fake clock");
    assert_eq!(v["online"], true);
    assert_eq!(v["timestamp"], "2026-11-27T06:00:42.000+00:00");
    sim.inbound("meta/request/devices_list", "", false);
    assert!(
        sim.sent("meta/devices_list").is_empty(),
        "empty: not a request"
    );
    sim.inbound("meta/request/devices_list", "{}", false);
    assert_eq!(
        sim.sent("meta/devices_list")[0].json(),
        json!([
            {"device_id":"lamp1","global_id":"demo_ab12cd_lamp1","name":"Lamp","model":"L1","enabled":true,"online":false},
            {"device_id":"lamp2","global_id":"demo_ab12cd_lamp2","name":null,"model":null,"enabled":false,"online":false}
        ])
    );
    sim.open(1, None);
    sim.line(1, r#"{"op":"hello","devices":[],"meta":true}"#);
    sim.take_lines(1);
    sim.inbound("meta/request/info", "{}", false);
    assert!(matches!(&sim.take_lines(1)[..], [Reply::MetaRequest { kind, .. }] if kind == "info"));
    assert_eq!(sim.sent("meta/info").len(), 1);
}

#[test]
fn state_is_merged_published_whole_and_per_property_and_drives_availability() {
    let mut sim = with_handler();
    sim.line(
        1,
        r#"{"op":"state","id":2,"device_id":"lamp1","state":{"on":true,"brightness":80,"online":true}}"#,
    );
    sim.line(
        1,
        r#"{"op":"state","device_id":"lamp1","state":{"brightness":10}}"#,
    );
    sim.ack_all();
    let states = sim.sent("devices/lamp1/state");
    assert_eq!(
        states[1].json(),
        json!({"device_id":"lamp1","state":{"on":true,"brightness":10,"online":true},"timestamp":"2026-11-27T06:00:00.000+00:00"})
    );
    assert_eq!((states[1].qos, states[1].retain), (1, true));
    assert_eq!(sim.payloads("devices/lamp1/state/brightness"), ["80", "10"]);
    assert_eq!(sim.payloads("devices/lamp1/state/on"), ["true"]);
    assert_eq!(
        sim.payloads("devices/lamp1/availability"),
        ["offline", "online"]
    );
    sim.line(
        1,
        r#"{"op":"state","device_id":"lamp1","state":{"online":false}}"#,
    );
    sim.ack_all();
    assert_eq!(
        sim.payloads("devices/lamp1/availability"),
        ["offline", "online", "offline"]
    );
    // A `get` without a reachable handler is answered from the cached full state.
    sim.input(Input::ProgramLeft { conn: 1 });
    sim.inbound("devices/lamp1/get", "{}", false);
    let last = sim.sent("devices/lamp1/state").pop().unwrap();
    assert_eq!(
        last.json()["state"],
        json!({"on":true,"brightness":10,"online":false})
    );
}

#[test]
fn availability_follows_the_programs_readiness() {
    let mut sim = with_handler();
    assert_eq!(
        sim.payloads("devices/lamp1/availability"),
        ["offline", "online"]
    );
    sim.input(Input::View(view(vec![program("w", 11, true, false)])));
    sim.ack_all();
    assert_eq!(
        sim.payloads("devices/lamp1/availability"),
        ["offline", "online", "offline"]
    );
    assert_eq!(sim.payloads("status"), ["online", "offline"]);
}

#[test]
fn discovery_configs_of_removed_devices_are_cleared_and_the_index_waits_for_the_old_one() {
    let s = settings(|s| {
        s.ha_discovery = Some("homeassistant".into());
        s.instance_config = parse_instance_file(
            Path::new("demo_ab12cd.json"),
            r#"{"devices": [{"device_id": "lamp1", "class": "switch.outlet"}]}"#,
        )
        .unwrap();
    });
    let mut sim = Sim::new(s, view(vec![]));
    sim.connack();
    let index = format!("{ROOT}/meta/ha_discovery");
    assert!(sim.subscriptions.contains(&index));
    assert!(
        sim.subscriptions
            .contains(&"homeassistant/status".to_string())
    );
    let config = "homeassistant/switch/demo_ab12cd_lamp1/config";
    let on_wire = |sim: &Sim, topic: &str| -> Vec<Sent> {
        sim.acked
            .iter()
            .chain(sim.handed.iter())
            .filter(|p| p.topic == topic)
            .cloned()
            .collect()
    };
    let c = on_wire(&sim, config);
    assert_eq!((c.len(), c[0].qos, c[0].retain), (1, 1, true));
    assert_eq!(c[0].json()["unique_id"], "demo_ab12cd_lamp1_switch");
    // Only the probe so far: the previous run's index has not been read.
    let probe = on_wire(&sim, &index);
    assert_eq!(probe.len(), 1);
    assert!(probe[0].payload.is_empty() && !probe[0].retain);
    sim.ack_all();
    // The broker hands back the previous run's index (retained): a device since removed from
    // the file, and a program's config that outlives the restart.
    let old = json!({
        "devices": ["lamp1", "oldlamp"],
        "configs": [
            {"topic": "homeassistant/switch/demo_ab12cd_oldlamp/config", "device_id": "oldlamp", "source": "file"},
            {"topic": "homeassistant/sensor/demo_ab12cd_plug_rssi/config", "device_id": "plug", "source": "program"},
            {"topic": "elsewhere/x/config", "device_id": "oldlamp", "source": "file"}
        ]
    });
    for (payload, retain) in [(old.to_string(), true), (String::new(), false)] {
        sim.input(Input::Inbound {
            topic: index.clone(),
            payload: payload.into_bytes(),
            retain,
        });
    }
    sim.ack_all();
    let cleared = on_wire(&sim, "homeassistant/switch/demo_ab12cd_oldlamp/config");
    assert_eq!(cleared.len(), 1);
    assert!(cleared[0].payload.is_empty() && cleared[0].retain);
    assert!(on_wire(&sim, "homeassistant/sensor/demo_ab12cd_plug_rssi/config").is_empty());
    assert!(
        on_wire(&sim, "elsewhere/x/config").is_empty(),
        "never one of ours"
    );
    let new = on_wire(&sim, &index);
    assert_eq!(new.len(), 2, "the probe, then the index");
    assert!(new[1].retain);
    assert_eq!(
        new[1].json(),
        json!({
            "devices": ["lamp1"],
            "configs": [
                {"topic": config, "device_id": "lamp1", "source": "file"},
                {"topic": "homeassistant/sensor/demo_ab12cd_plug_rssi/config", "device_id": "plug", "source": "program"}
            ]
        })
    );
    // Home Assistant's birth message asks for every config again; a retained one does not.
    for retain in [true, false] {
        sim.input(Input::Inbound {
            topic: "homeassistant/status".into(),
            payload: b"online".to_vec(),
            retain,
        });
    }
    assert_eq!(on_wire(&sim, config).len(), 2);
}

// ---- ACL -------------------------------------------------------------------------------------

#[test]
fn a_claimed_device_speaks_only_through_its_program_or_a_bridge_publish_grant() {
    let v = view(vec![
        program("owner", 11, false, true),
        program("other", 12, false, true),
        program("granted", 13, false, true),
    ]);
    let s = settings(|s| {
        s.program_publish.insert(
            "granted".into(),
            vec![format!("{ROOT}/devices/+/state"), "shared/#".into()],
        );
    });
    let mut sim = Sim::connected(s, v);
    for (conn, pid) in [(1, 11), (2, 12), (3, 13)] {
        sim.open(conn, Some(pid));
    }
    sim.line(1, r#"{"op":"hello","id":1,"devices":["lamp1"]}"#);
    assert_eq!(sim.take_lines(1), [ok(1)]);
    sim.line(
        2,
        r#"{"op":"state","id":2,"device_id":"lamp1","state":{"on":true}}"#,
    );
    assert_eq!(error_code(&sim.take_lines(2)[0]), Some("device_claimed"));
    sim.line(2, r#"{"op":"hello","id":3,"devices":["lamp1"]}"#);
    assert_eq!(error_code(&sim.take_lines(2)[0]), Some("device_claimed"));
    sim.line(
        3,
        r#"{"op":"state","id":4,"device_id":"lamp1","state":{"on":true}}"#,
    );
    assert_eq!(sim.take_lines(3), [ok(4)]);
    assert_eq!(sim.sent("devices/lamp1/state").len(), 1);
    // Publishing outside the instance tree needs a grant.
    sim.line(
        2,
        r#"{"op":"publish","id":5,"topic":"shared/x","payload":"hi"}"#,
    );
    assert_eq!(error_code(&sim.take_lines(2)[0]), Some("forbidden"));
    sim.line(
        3,
        r#"{"op":"publish","id":6,"topic":"shared/x","payload":"hi"}"#,
    );
    assert_eq!(sim.take_lines(3), [ok(6)]);
    // Ready is forwarded for identified programs only.
    sim.line(1, r#"{"op":"ready","id":7}"#);
    sim.open(4, None);
    sim.line(4, r#"{"op":"ready","id":8}"#);
    assert_eq!(error_code(&sim.take_lines(4)[0]), Some("unknown_program"));
    assert_eq!(
        sim.ready,
        [ReadyReport {
            program: "owner".into(),
            pid: 11
        }]
    );
}

#[test]
fn a_descendant_of_a_program_is_identified_by_its_session() {
    let mut sim = Sim::connected(settings(|_| {}), view(vec![]));
    // A child of program `w` (pid 11, a session leader): its own pid is unknown to the
    // supervisor, its session id is w's pid; the view arrives after it connected.
    sim.input(Input::ProgramConnected {
        conn: 1,
        pid: Some(99),
        sid: Some(11),
    });
    sim.input(Input::View(view(vec![program("w", 11, true, true)])));
    sim.line(1, r#"{"op":"ready","id":1}"#);
    assert_eq!(sim.take_lines(1), [ok(1)]);
    assert_eq!(
        sim.ready,
        [ReadyReport {
            program: "w".into(),
            pid: 11
        }]
    );
    assert_eq!(identify(99, Some(98), &sim.m.view), None);
    // The supervisor's queue is full: refused, so the program can say it again.
    sim.m.set_ready_room(0);
    sim.line(1, r#"{"op":"ready","id":2}"#);
    assert_eq!(error_code(&sim.take_lines(1)[0]), Some("unavailable"));
    assert_eq!(sim.ready.len(), 1);
}

// ---- outbox ----------------------------------------------------------------------------------

#[test]
fn while_disconnected_retained_state_coalesces_and_the_outbox_drops_oldest_events() {
    let s = settings(|s| {
        s.outbox_max_messages = 20;
        s.property_topics = false;
    });
    let mut sim = Sim::new(s, view(vec![]));
    sim.open(1, None);
    for i in 0..100 {
        sim.line(
            1,
            &format!(r#"{{"op":"state","device_id":"lamp1","state":{{"n":{i}}}}}"#),
        );
        sim.line(
            1,
            &format!(r#"{{"op":"event","device_id":"lamp1","event":"e{i}","data":{{}}}}"#),
        );
        assert!(sim.m.outbox.len() <= 20);
    }
    assert!(sim.m.stats().dropped_total > 0);
    sim.connack();
    sim.ack_all();
    let states = sim.sent("devices/lamp1/state");
    assert_eq!(states.len(), 1, "one retained state per topic");
    assert_eq!(states[0].json()["state"]["n"], 99);
    let events: Vec<String> = sim
        .sent("devices/lamp1/events")
        .iter()
        .map(|p| p.json()["event"].as_str().unwrap().to_string())
        .collect();
    assert!(!events.is_empty());
    assert_eq!(
        events.last().map(String::as_str),
        Some("e99"),
        "the newest kept"
    );
    assert!(
        events.windows(2).all(|w| {
            let n = |s: &str| s[1..].parse::<u32>().unwrap();
            n(&w[0]) < n(&w[1])
        }),
        "in order: {events:?}"
    );
}

#[test]
fn unacknowledged_messages_are_sent_again_after_a_reconnect_in_order() {
    let mut sim = Sim::connected(settings(|_| {}), view(vec![]));
    sim.open(1, None);
    for i in 0..5 {
        sim.line(
            1,
            &format!(r#"{{"op":"event","device_id":"lamp1","event":"e{i}","data":{{}}}}"#),
        );
    }
    assert!(sim.ack_one());
    sim.broker_down(false);
    sim.advance(Duration::from_millis(1200));
    sim.connack();
    sim.ack_all();
    let events: Vec<Value> = sim
        .sent("devices/lamp1/events")
        .iter()
        .map(|p| p.json()["event"].clone())
        .collect();
    assert_eq!(
        events,
        [
            json!("e0"),
            json!("e1"),
            json!("e2"),
            json!("e3"),
            json!("e4")
        ]
    );
    assert_eq!(sim.m.outbox.len(), 0);
}

#[test]
fn qos0_publishes_leave_the_outbox_when_written_and_the_window_holds() {
    let mut sim = Sim::connected(settings(|_| {}), view(vec![]));
    sim.open(1, None);
    for i in 0..(3 * WINDOW) {
        sim.line(
            1,
            &format!(r#"{{"op":"publish","topic":"{ROOT}/x","payload":"{i}","qos":0}}"#),
        );
        assert!(sim.handed.len() <= WINDOW + PRIORITY_RESERVE);
    }
    assert_eq!(sim.handed.len(), WINDOW);
    sim.ack_all();
    assert_eq!(sim.sent("x").len(), 3 * WINDOW);
    assert!(sim.sent("x").iter().all(|p| p.qos == 0 && !p.retain));
    assert_eq!(sim.m.stats().outbox_messages, 0);
}

// ---- properties ------------------------------------------------------------------------------

/// One step of a random run.
#[derive(Debug, Clone)]
enum Step {
    Connack,
    Down(bool),
    AckOne,
    AckAll,
    Advance(u64),
    View(bool),
    Open(u64),
    Leave(u64),
    Hello(u64, bool),
    State(u64, u8, u16),
    Event(u64, u8),
    Cmd(u8, Option<u8>),
    CmdResult(u64, u8, u32),
    Deaf(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::Connack),
        any::<bool>().prop_map(Step::Down),
        Just(Step::AckOne),
        Just(Step::AckAll),
        (0u64..8000).prop_map(Step::Advance),
        any::<bool>().prop_map(Step::View),
        (1u64..4).prop_map(Step::Open),
        (1u64..4).prop_map(Step::Leave),
        ((1u64..4), any::<bool>()).prop_map(|(c, all)| Step::Hello(c, all)),
        ((1u64..4), (0u8..3), any::<u16>()).prop_map(|(c, d, n)| Step::State(c, d, n)),
        ((1u64..4), (0u8..3)).prop_map(|(c, d)| Step::Event(c, d)),
        ((0u8..3), proptest::option::of(0u8..4)).prop_map(|(d, t)| Step::Cmd(d, t)),
        ((1u64..4), (0u8..3), (0u32..64)).prop_map(|(c, d, n)| Step::CmdResult(c, d, n)),
        (1u64..4).prop_map(Step::Deaf),
    ]
}

const DEVICES: [&str; 3] = ["lamp1", "lamp2", "other"];

/// Runs `steps`, numbering commands with ids from 1; returns the ids sent.
fn run(sim: &mut Sim, steps: &[Step]) -> Vec<u32> {
    let mut ids = Vec::new();
    for s in steps {
        match s {
            Step::Connack => sim.connack(),
            Step::Down(refused) => {
                if sim.m.connecting {
                    sim.broker_down(*refused);
                }
            }
            Step::AckOne => {
                sim.ack_one();
            }
            Step::AckAll => sim.ack_all(),
            Step::Advance(ms) => sim.advance(Duration::from_millis(*ms)),
            Step::View(healthy) => {
                sim.input(Input::View(view(vec![program("w", 11, true, *healthy)])))
            }
            Step::Open(c) => {
                if !sim.m.conns.contains_key(c) {
                    sim.open(*c, Some(11));
                }
            }
            Step::Leave(c) => {
                sim.deaf.retain(|d| d != c);
                sim.input(Input::ProgramLeft { conn: *c });
            }
            Step::Hello(c, all) => {
                let devices = if *all { json!("*") } else { json!(["lamp1"]) };
                sim.line(*c, &json!({"op":"hello","devices":devices}).to_string());
            }
            Step::State(c, d, n) => sim.line(
                *c,
                &json!({"op":"state","device_id":DEVICES[*d as usize],"state":{"n":n}})
                    .to_string(),
            ),
            Step::Event(c, d) => sim.line(
                *c,
                &json!({"op":"event","device_id":DEVICES[*d as usize],"event":"e","data":{}})
                    .to_string(),
            ),
            Step::Cmd(d, timeout) => {
                let id = ids.len() as u32 + 1;
                ids.push(id);
                let mut cmd = json!({"id": id, "values": {"on": true}});
                if let Some(t) = timeout {
                    cmd["timeout"] = json!(u64::from(*t) * 1000);
                }
                sim.inbound(
                    &format!("devices/{}/cmd", DEVICES[*d as usize]),
                    &cmd.to_string(),
                    false,
                );
            }
            Step::CmdResult(c, d, n) => sim.line(
                *c,
                &json!({"op":"cmd_result","device_id":DEVICES[*d as usize],"cmd_id":n.to_string(),"status":"success"})
                    .to_string(),
            ),
            Step::Deaf(c) => sim.deaf.push(*c),
        }
        check_bounds(sim);
    }
    ids
}

fn check_bounds(sim: &Sim) {
    let m = &sim.m;
    assert!(m.outbox.len() <= m.s.outbox_max_messages);
    assert!(m.inflight <= WINDOW + PRIORITY_RESERVE);
    assert!(sim.handed.len() <= WINDOW + PRIORITY_RESERVE);
    assert!(m.subs_inflight <= SUB_WINDOW);
    for c in m.conns.values() {
        assert!(c.queued_lines <= WRITE_QUEUE);
        assert!(c.queued_lines <= 1 || c.queued_bytes <= WRITE_QUEUE_BYTES);
    }
}

/// Connects, acknowledges everything and lets every command time out.
fn settle(sim: &mut Sim) {
    if !sim.m.connected {
        if sim.m.connecting {
            sim.broker_down(false);
        }
        // The reconnect comes within the longest backoff (30 s plus 20 % jitter).
        sim.advance(Duration::from_secs(37));
        assert!(sim.m.connecting, "a reconnect within the longest backoff");
        sim.connack();
    }
    sim.ack_all();
    sim.advance(Duration::from_secs(601));
    sim.ack_all();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_command_with_an_id_gets_exactly_one_response(steps in proptest::collection::vec(step(), 0..120)) {
        let mut sim = Sim::new(settings(|s| s.outbox_max_messages = 100_000), view(vec![]));
        let ids = run(&mut sim, &steps);
        settle(&mut sim);
        let mut responses: HashMap<String, usize> = HashMap::new();
        for d in DEVICES {
            for p in sim.sent(&format!("devices/{d}/cmd/response")) {
                *responses.entry(p.json()["cmd_id"].to_string()).or_default() += 1;
            }
        }
        for id in &ids {
            prop_assert_eq!(responses.remove(&id.to_string()), Some(1), "command {}", id);
        }
        prop_assert!(responses.is_empty(), "responses to no command: {:?}", responses);
        prop_assert!(sim.m.pending.is_empty());
    }

    #[test]
    fn status_ends_offline_after_stop_whatever_came_before(steps in proptest::collection::vec(step(), 0..120), ack in any::<bool>()) {
        let mut sim = Sim::new(settings(|_| {}), view(vec![program("w", 11, true, true)]));
        run(&mut sim, &steps);
        sim.input(Input::Stop);
        if ack {
            sim.ack_all();
        }
        if !sim.m.is_stopped() {
            sim.advance(STOP_BUDGET);
        }
        if sim.closes.last() == Some(&Transmit::Disconnect) && !sim.m.is_stopped() {
            sim.input(Input::BrokerDown { error: "closed".into(), refused: false });
        }
        prop_assert!(sim.m.is_stopped());
        // The broker's view: the acknowledged final `offline`, or the Last Will.
        let status = sim.retained.get(&format!("{ROOT}/status")).map(String::as_str);
        prop_assert!(status.is_none() || status == Some("offline"), "{:?}", status);
        // A clean DISCONNECT (the broker discards the Will) only once `offline` was acknowledged
        // as the last status.
        if sim.closes.last() == Some(&Transmit::Disconnect) {
            let last = sim.acked.iter().rev().find(|p| p.topic == format!("{ROOT}/status"));
            prop_assert_eq!(last.map(|p| p.payload.as_str()), Some("offline"));
        }
    }

    #[test]
    fn once_settled_the_retained_status_is_the_gated_one(steps in proptest::collection::vec(step(), 0..120), healthy in any::<bool>()) {
        let mut sim = Sim::new(settings(|_| {}), view(vec![program("w", 11, true, false)]));
        run(&mut sim, &steps);
        sim.input(Input::View(view(vec![program("w", 11, true, healthy)])));
        settle(&mut sim);
        let want = if healthy { "online" } else { "offline" };
        prop_assert_eq!(sim.retained.get(&format!("{ROOT}/status")).map(String::as_str), Some(want));
        prop_assert_eq!(sim.m.stats().online, healthy);
    }

    #[test]
    fn the_outbox_and_every_queue_stay_within_their_bounds(steps in proptest::collection::vec(step(), 0..200)) {
        let mut sim = Sim::new(
            settings(|s| {
                s.outbox_max_messages = 12;
                s.outbox_max_bytes = 4096;
            }),
            view(vec![]),
        );
        run(&mut sim, &steps);
        settle(&mut sim);
        check_bounds(&sim);
    }
}
