//! Hostile and heavy use of the bridge socket: oversized and endless lines, idle clients, a
//! thousand simultaneous clients, and a client that never reads what the bridge sends it.
//!
//! The bridge runs as its own process (the `sv-bridge-test` fixture) against a real mosquitto, so
//! its memory can be read from `/proc/PID/status`. The memory bound asserted (64 MiB of VmRSS)
//! is a resource bound, generous on purpose; the measured figures are printed and recorded in
//! `docs/reliability.md`. Every test also proves that an ordinary client's round trip (a request,
//! its reply, and the message at an independent subscriber) still works while the abuse goes on.
//! No sleeps, no wall-clock assertions: every wait is a bounded poll.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use sv_testkit::{Mosquitto, TempDir, WAIT, wait_for};

const BASE: &str = "L";
const INST: &str = "load";
/// The memory bound of the bridge under every abuse here.
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// The bridge as a process, killed on drop.
struct BridgeProc {
    child: Child,
    socket: PathBuf,
    _dir: TempDir,
}

impl BridgeProc {
    fn start(broker: &Mosquitto) -> BridgeProc {
        let dir = sv_testkit::tempdir().expect("tempdir");
        let socket = dir.path().join("bridge.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_sv-bridge-test"))
            .env("IOT2MQTT_PATH", dir.path())
            .env("IOT2MQTT_SECRETS_DIR", dir.path())
            .env("INSTANCE_NAME", INST)
            .env("MQTT_HOST", "127.0.0.1")
            .env("MQTT_PORT", broker.port.to_string())
            .env("MQTT_BASE_TOPIC", BASE)
            .env("SV_BRIDGE_TEST_SOCKET", &socket)
            // Above the default `max_connections` (256): these tests load the bridge with a
            // thousand clients at once.
            .env("SV_BRIDGE_TEST_MAX_CONNECTIONS", "2000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning sv-bridge-test");
        let b = BridgeProc {
            child,
            socket,
            _dir: dir,
        };
        wait_for("the bridge to be connected", WAIT, || {
            b.stats().filter(|s| s["connected"] == true)
        });
        b
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the bridge is running");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.socket).expect("connecting to the bridge");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        s
    }

    fn stats(&self) -> Option<Value> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        s.set_read_timeout(Some(WAIT)).ok()?;
        writeln!(s, "{}", json!({"op": "stats", "id": "s"})).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        let v: Value = serde_json::from_str(&line).ok()?;
        (v["op"] == "stats").then(|| v["stats"].clone())
    }
}

impl Drop for BridgeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads lines until the reply with `id`.
fn reply_for(r: &mut BufReader<&UnixStream>, id: &Value) -> Value {
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).expect("reading a reply");
        assert!(n > 0, "connection closed before the reply to {id}");
        let v: Value = serde_json::from_str(&line).expect("reply json");
        if &v["id"] == id {
            return v;
        }
    }
}

/// An ordinary client's round trip: a `state` is accepted and reaches the subscriber.
fn round_trip(bridge: &BridgeProc, sub: &sv_testkit::Subscriber, n: u64) {
    let s = bridge.connect();
    let mut w = &s;
    writeln!(
        w,
        "{}",
        json!({"op": "state", "id": n, "device_id": "probe", "state": {"n": n}})
    )
    .expect("write");
    let r = reply_for(&mut BufReader::new(&s), &json!(n));
    assert_eq!(r["op"], "ok", "{r}");
    let topic = format!("{BASE}/v1/instances/{INST}/devices/probe/state");
    sub.wait_for(&topic, |p| {
        serde_json::from_str::<Value>(p).is_ok_and(|v| v["state"]["n"] == n)
    });
}

#[test]
fn oversized_endless_and_idle_clients_and_a_thousand_others_leave_the_bridge_serving() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let sub = broker.subscribe(&format!("{BASE}/v1/instances/{INST}/devices/+/state"));
    let bridge = BridgeProc::start(&broker);
    round_trip(&bridge, &sub, 1);
    let rss_before = bridge.rss_kib();

    // Connects and never sends a byte.
    let _idle = bridge.connect();

    // A 200 KB line is refused with line_too_long and the connection keeps working.
    let big = bridge.connect();
    let mut w = &big;
    let mut line = vec![b'x'; 200 * 1024];
    line.push(b'\n');
    w.write_all(&line).expect("oversized line");
    writeln!(w, "{}", json!({"op": "ping", "id": "after"})).expect("ping");
    let mut r = BufReader::new(&big);
    let mut first = String::new();
    r.read_line(&mut first).expect("reply");
    let v: Value = serde_json::from_str(&first).expect("json");
    assert_eq!(v["code"], "line_too_long", "{v}");
    assert_eq!(reply_for(&mut r, &json!("after"))["op"], "ok");

    // 16 MiB without a newline: read and discarded, never buffered.
    let endless = bridge.connect();
    let writer = {
        let s = endless.try_clone().expect("clone");
        std::thread::spawn(move || {
            let chunk = vec![b'y'; 1 << 20];
            let mut s = s;
            for _ in 0..16 {
                s.write_all(&chunk).expect("the bridge keeps reading");
            }
        })
    };
    writer.join().expect("endless writer");

    // A thousand simultaneous clients with a request each in flight.
    let clients: Vec<UnixStream> = (0..1000).map(|_| bridge.connect()).collect();
    for (i, c) in clients.iter().enumerate() {
        let mut w = c;
        writeln!(w, "{}", json!({"op": "ping", "id": i})).expect("ping");
    }
    let stats = bridge.stats().expect("stats with 1000 clients");
    assert!(
        stats["clients"].as_u64().is_some_and(|n| n >= 1000),
        "{stats}"
    );
    round_trip(&bridge, &sub, 2);
    for (i, c) in clients.iter().enumerate() {
        let r = reply_for(&mut BufReader::new(c), &json!(i));
        assert_eq!(r["op"], "ok", "{r}");
    }
    let rss_after = bridge.rss_kib();
    eprintln!(
        "measured: bridge VmRSS {rss_before} KiB before, {rss_after} KiB with 1,000 clients, an idle one, a 200 KB line and 16 MiB without a newline"
    );
    assert!(rss_after < RSS_BOUND_KIB, "bridge VmRSS {rss_after} KiB");
    drop(clients);
    wait_for("the clients to be gone", WAIT, || {
        bridge.stats().filter(|s| s["clients"].as_u64() < Some(10))
    });
    round_trip(&bridge, &sub, 3);
}

#[test]
fn a_client_that_never_reads_costs_bounded_memory_and_loses_only_its_own_messages() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let sub = broker.subscribe(&format!("{BASE}/v1/instances/{INST}/devices/+/state"));
    let bridge = BridgeProc::start(&broker);
    let rss_before = bridge.rss_kib();

    // Subscribes to a topic, then never reads a byte of what arrives on it.
    let deaf = bridge.connect();
    let mut w = &deaf;
    writeln!(
        w,
        "{}",
        json!({"op": "subscribe", "id": 1, "topic": "blob"})
    )
    .expect("subscribe");
    // Its `ok` is the proof the subscription is in place (reading it is the last read).
    assert_eq!(reply_for(&mut BufReader::new(&deaf), &json!(1))["op"], "ok");

    // 200 messages of 512 KiB: 100 MiB, of which 256 lines' worth would be queued for it
    // without a byte bound.
    let dir = sv_testkit::tempdir().expect("tempdir");
    let blob = dir.path().join("blob");
    std::fs::write(&blob, vec![b'z'; 512 * 1024]).expect("blob");
    publish_file(broker.port, "blob", &blob, 200);
    let stats = wait_for(
        "the messages for the deaf client to be dropped",
        WAIT,
        || {
            bridge
                .stats()
                .filter(|s| s["client_drops_total"].as_u64() >= Some(150))
        },
    );

    round_trip(&bridge, &sub, 1);
    let rss_after = bridge.rss_kib();
    eprintln!(
        "measured: bridge VmRSS {rss_before} KiB before, {rss_after} KiB after 100 MiB for a client that never reads ({} lines dropped for it)",
        stats["client_drops_total"]
    );
    assert!(rss_after < RSS_BOUND_KIB, "bridge VmRSS {rss_after} KiB");
}

/// Publishes the contents of `file` on `topic` `n` times (QoS 1) with `mosquitto_pub`.
fn publish_file(port: u16, topic: &str, file: &Path, n: u32) {
    let st = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-q",
            "1",
        ])
        .arg("-f")
        .arg(file)
        .args(["--repeat", &n.to_string()])
        .status()
        .expect("running mosquitto_pub");
    assert!(st.success(), "mosquitto_pub failed: {st}");
}
