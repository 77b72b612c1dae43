//! Security properties of the running supervisor and bridge, checked from the outside: socket
//! permissions, identity by peer credentials, the bridge's access rules between programs, the
//! absence of network listeners nobody configured, a read-only HTTP server, and secrets that
//! never leave the process that needs them.
//!
//! Everything runs for real: `iot2mqtt-sv run` with its supervised `bridge`, programs that
//! connect to the bridge socket from their own process trees (so the bridge identifies them by
//! `SO_PEERCRED` and their session), `/proc/net/tcp*` for listeners, and a real mosquitto where
//! the bridge needs a broker. Waits are bounded polls on observable facts.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{Sv, SvOptions, listening_ports, toml_str};
use serde_json::{Value, json};
use sv_testkit::{Mosquitto, WAIT, free_port, wait_for, wait_until};

const INST: &str = "sec";
const BASE: &str = "S";

fn bridge_table(port: u16, dir: &Path, extra: &str) -> String {
    format!(
        "[bridge]\nhost = \"127.0.0.1\"\nport = {port}\ninstance = \"{INST}\"\n\
         base_topic = \"{BASE}\"\niot2mqtt_path = {}\n{extra}\n",
        toml_str(&dir.display().to_string())
    )
}

/// The Python interpreter for the program fixtures.
fn python() -> String {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("python3")
        .to_string()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("socket metadata")
        .permissions()
        .mode()
        & 0o777
}

fn wait_bridge_socket(sv: &Sv) {
    sv.wait_state("bridge", "RUNNING");
    let sock = sv.path("bridge.sock");
    wait_until("the bridge socket", || sock.exists());
}

#[test]
fn sockets_are_owner_only_by_default_and_group_restricted_with_socket_group() {
    let dir = Sv::new_dir();
    // No broker is needed for the socket; the bridge keeps retrying meanwhile.
    let config = bridge_table(free_port(), dir.path(), "");
    let sv = Sv::spawn_in(dir, &config, SvOptions::default());
    sv.wait_socket();
    wait_bridge_socket(&sv);
    assert_eq!(mode(&sv.socket), 0o600, "control socket");
    assert_eq!(mode(&sv.path("bridge.sock")), 0o600, "bridge socket");
    drop(sv);

    let gid = nix::unistd::getegid().as_raw();
    let dir = Sv::new_dir();
    let config = bridge_table(
        free_port(),
        dir.path(),
        &format!("socket_group = \"{gid}\"\n"),
    );
    let sv = Sv::spawn_in(dir, &config, SvOptions::default());
    sv.wait_socket();
    wait_bridge_socket(&sv);
    let meta = std::fs::metadata(sv.path("bridge.sock")).expect("bridge socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);
    assert_eq!(
        mode(&sv.socket),
        0o600,
        "the control socket stays owner-only"
    );
}

/// Claims `lamp`, records the reply in ARGV[1], then holds the connection open.
const OWNER_PY: &str = r#"
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.environ["IOT2MQTT_SV_BRIDGE_SOCKET"])
s.sendall(b'{"op":"hello","id":1,"devices":["lamp"]}\n')
reply = s.makefile().readline()
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(reply)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    time.sleep(3600)
"#;

/// Waits for the owner's claim, then runs `publish` with each of `attempts` (`(file, args)`)
/// from its own process tree, the reply going to `DIR/NAME.<file>`; then marks `DIR/NAME.done`.
fn attempts_script(bin: &Path, dir: &Path, name: &str, attempts: &[(&str, &str)]) -> String {
    let d = dir.display();
    let mut s = format!("while [ ! -s {d}/owner.ready ]; do sleep 0.05; done\n");
    for (file, args) in attempts {
        s.push_str(&format!(
            "{} publish {args} > {d}/{name}.{file} 2>&1\n",
            bin.display()
        ));
    }
    s.push_str(&format!("touch {d}/{name}.done\nexec sleep 3600\n"));
    s
}

#[test]
fn peer_credentials_decide_who_may_speak_for_a_device_and_where_it_may_publish() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = Sv::new_dir();
    let d = dir.path().to_path_buf();
    std::fs::write(d.join("owner.py"), OWNER_PY).expect("owner.py");
    let intruder = attempts_script(
        &common::bin(),
        &d,
        "intruder",
        &[
            ("state", r#"state lamp '{"on":false}'"#),
            ("hello", "hello lamp"),
            ("spare", r#"state spare '{"on":true}'"#),
            ("raw", "raw elsewhere/x hi"),
        ],
    );
    std::fs::write(d.join("intruder.sh"), intruder).expect("intruder.sh");
    let delegate = attempts_script(
        &common::bin(),
        &d,
        "delegate",
        &[("state", r#"state lamp '{"on":true}'"#)],
    );
    std::fs::write(d.join("delegate.sh"), delegate).expect("delegate.sh");
    let lamp_filter = format!("{BASE}/v1/instances/{INST}/devices/lamp/#");
    let config = format!(
        "{}\n[program.owner]\ncommand = [{}, {}, {}]\n\n\
         [program.intruder]\ncommand = [\"/bin/sh\", {}]\n\n\
         [program.delegate]\ncommand = [\"/bin/sh\", {}]\n\
         bridge_publish = [{}]\n",
        bridge_table(broker.port, &d, ""),
        toml_str(&python()),
        toml_str(&d.join("owner.py").display().to_string()),
        toml_str(&d.join("owner.ready").display().to_string()),
        toml_str(&d.join("intruder.sh").display().to_string()),
        toml_str(&d.join("delegate.sh").display().to_string()),
        toml_str(&lamp_filter),
    );
    let sv = Sv::spawn_in(dir, &config, SvOptions::default());
    sv.wait_socket();
    for p in ["intruder", "delegate"] {
        let done = sv.path(&format!("{p}.done"));
        wait_until(&format!("{p} to finish its attempts"), || done.exists());
    }
    let owner: Value =
        serde_json::from_str(&common::read(&sv.path("owner.ready"))).expect("owner reply");
    assert_eq!(owner["op"], "ok", "{owner}");
    let reply = |name: &str| -> Value {
        let text = common::read(&sv.path(name));
        serde_json::from_str(text.lines().next().unwrap_or("")).unwrap_or_else(|_| json!(text))
    };

    // Another program may neither report for the owner's device nor take it over; the refusal
    // names both programs, identified from the peers' credentials.
    for what in ["intruder.state", "intruder.hello"] {
        let r = reply(what);
        assert_eq!(r["code"], "device_claimed", "{what}: {r}");
        let msg = r["message"].as_str().unwrap_or("");
        assert!(
            msg.contains("program owner") && msg.contains("program intruder"),
            "{what}: {msg}"
        );
    }
    // Devices nobody claimed are open; topics outside the instance are not.
    assert_eq!(reply("intruder.spare")["op"], "ok");
    assert_eq!(reply("intruder.raw")["code"], "forbidden");
    // A program whose bridge_publish covers the device may speak for it.
    assert_eq!(
        reply("delegate.state")["op"],
        "ok",
        "{}",
        reply("delegate.state")
    );

    // An unidentified peer (this test process) is refused the claimed device too.
    let mut s = std::os::unix::net::UnixStream::connect(sv.path("bridge.sock")).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    writeln!(
        s,
        "{}",
        json!({"op": "state", "id": 1, "device_id": "lamp", "state": {"on": false}})
    )
    .expect("write");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line).expect("reply");
    let r: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(r["code"], "device_claimed", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap_or("")
            .contains("program unknown"),
        "{r}"
    );
}

fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let r = common::http(addr, method, path);
    (r.status, r.body)
}

#[test]
fn no_tcp_listener_unless_configured_and_then_only_the_configured_one() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let program = format!("[program.app]\ncommand = {}\n", common::child_cmd(&[]));
    let dir = Sv::new_dir();
    let config = format!("{}\n{program}", bridge_table(broker.port, dir.path(), ""));
    let sv = Sv::spawn_in(dir, &config, SvOptions::default());
    sv.wait_socket();
    sv.wait_state("app", "RUNNING");
    let bridge_pid = sv.program("bridge")["pid"].as_i64().expect("bridge pid") as i32;
    assert_eq!(listening_ports(sv.pid()), Vec::<u16>::new(), "supervisor");
    assert_eq!(listening_ports(bridge_pid), Vec::<u16>::new(), "bridge");
    drop(sv);

    let dir = Sv::new_dir();
    let config = format!(
        "[supervisor.http]\nlisten = \"127.0.0.1:0\"\n\n{}\n{program}",
        bridge_table(broker.port, dir.path(), "")
    );
    let sv = Sv::spawn_in(dir, &config, SvOptions::default());
    sv.wait_socket();
    sv.wait_state("app", "RUNNING");
    let addr = sv.status_json()["supervisor"]["http"]
        .as_str()
        .expect("http address")
        .to_string();
    let port: u16 = addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("port");
    let bridge_pid = sv.program("bridge")["pid"].as_i64().expect("bridge pid") as i32;
    assert_eq!(listening_ports(sv.pid()), vec![port], "supervisor");
    assert_eq!(listening_ports(bridge_pid), Vec::<u16>::new(), "bridge");
}

#[test]
fn the_http_server_has_no_control_verbs_and_reports_bridge_figures() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let dir = Sv::new_dir();
    let config = format!(
        "[supervisor.http]\nlisten = \"127.0.0.1:0\"\n\n{}\n[program.app]\ncommand = {}\n",
        bridge_table(broker.port, dir.path(), ""),
        common::child_cmd(&[])
    );
    let sv = Sv::spawn_in(dir, &config, SvOptions::default());
    sv.wait_socket();
    let app = sv.wait_state("app", "RUNNING");
    let addr = sv.status_json()["supervisor"]["http"]
        .as_str()
        .expect("http address")
        .to_string();
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in ["/metrics", "/health", "/stop", "/restart/app"] {
            assert_eq!(http(&addr, method, path).0, 405, "{method} {path}");
        }
    }
    for path in [
        "/start",
        "/stop",
        "/restart",
        "/stop/app",
        "/signal",
        "/shutdown",
    ] {
        assert_eq!(http(&addr, "GET", path).0, 404, "GET {path}");
    }
    let now = sv.program("app");
    assert_eq!(
        (now["pid"].clone(), now["restarts"].clone()),
        (app["pid"].clone(), json!(0))
    );

    // The bridge's figures are pulled into /metrics on demand.
    let body = wait_for("bridge figures in /metrics", WAIT, || {
        let (code, body) = http(&addr, "GET", "/metrics");
        (code == 200 && body.contains("iot2mqtt_sv_bridge_connected 1")).then_some(body)
    });
    for family in [
        "iot2mqtt_sv_bridge_up 1",
        "# TYPE iot2mqtt_sv_bridge_dropped_total counter",
        "# TYPE iot2mqtt_sv_bridge_outbox_messages gauge",
        "iot2mqtt_sv_bridge_connects_total 1",
    ] {
        assert!(
            body.lines().any(|l| l == family),
            "missing {family:?}\n{body}"
        );
    }
    // With the bridge gone, /metrics still answers and says so.
    assert_eq!(sv.cli(&["stop", "bridge"]).status.code(), Some(0));
    let body = wait_for("bridge_up 0", WAIT, || {
        let (_, body) = http(&addr, "GET", "/metrics");
        body.contains("iot2mqtt_sv_bridge_up 0").then_some(body)
    });
    assert!(body.contains("iot2mqtt_sv_program_state"), "{body}");
}

#[test]
fn mqtt_secrets_never_appear_in_logs_status_metrics_or_errors() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    // The same password three ways: environment, password_file, /run/secrets-style file.
    for source in ["env", "password_file", "secrets_dir"] {
        let secret = format!("s3cr3t-{source}-Zq8");
        let dir = Sv::new_dir();
        let d = dir.path().to_path_buf();
        let mut env = vec![("LOG_LEVEL".to_string(), "DEBUG".to_string())];
        let mut extra = "username = \"alice\"\n".to_string();
        match source {
            "env" => env.push(("MQTT_PASSWORD".into(), secret.clone())),
            "password_file" => {
                std::fs::write(d.join("pw"), format!("{secret}\n")).expect("pw");
                extra.push_str(&format!(
                    "password_file = {}\n",
                    toml_str(&d.join("pw").display().to_string())
                ));
            }
            _ => {
                std::fs::write(
                    d.join(format!("{INST}_mqtt")),
                    format!("username=alice\npassword={secret}\n"),
                )
                .expect("secrets file");
                env.push(("IOT2MQTT_SECRETS_DIR".into(), d.display().to_string()));
            }
        }
        let config = format!(
            "[supervisor.http]\nlisten = \"127.0.0.1:0\"\n\n{}\n[program.app]\ncommand = {}\n",
            bridge_table(broker.port, &d, &extra),
            common::child_cmd(&[])
        );
        let sv = Sv::spawn_in(
            dir,
            &config,
            SvOptions {
                env,
                ..Default::default()
            },
        );
        sv.wait_socket();
        sv.wait_state("app", "RUNNING");
        let addr = sv.status_json()["supervisor"]["http"]
            .as_str()
            .expect("http address")
            .to_string();
        let (_, metrics) = wait_for("the bridge connected", WAIT, || {
            let (c, b) = http(&addr, "GET", "/metrics");
            b.contains("iot2mqtt_sv_bridge_connected 1")
                .then_some((c, b))
        });
        let status = sv.cli(&["status", "--json"]);
        let status_text = sv.cli(&["status"]);
        // A failing verb's error message, too.
        let err = sv.cli(&["restart", "no-such-program"]);
        let everything = [
            sv.stdout(),
            sv.stderr(),
            metrics,
            String::from_utf8_lossy(&status.stdout).into_owned(),
            String::from_utf8_lossy(&status_text.stdout).into_owned(),
            String::from_utf8_lossy(&err.stdout).into_owned(),
            String::from_utf8_lossy(&err.stderr).into_owned(),
            sv.status_json().to_string(),
        ];
        assert!(
            sv.stderr().contains("connected to broker"),
            "{source}: the bridge logged its connection at debug level"
        );
        for (i, text) in everything.iter().enumerate() {
            assert!(
                !text.contains(&secret),
                "{source}: the secret leaked in output #{i}"
            );
        }
    }

    // A settings error next to a secret names the bad value, never the secret.
    let secret = "s3cr3t-error-Zq8";
    let dir = Sv::new_dir();
    let config = format!(
        "{}\n[program.app]\ncommand = {}\n",
        bridge_table(broker.port, dir.path(), "username = \"alice\"\n"),
        common::child_cmd(&[])
    );
    let sv = Sv::spawn_in(
        dir,
        &config,
        SvOptions {
            env: vec![
                ("MQTT_PASSWORD".into(), secret.into()),
                ("MQTT_QOS".into(), "7".into()),
            ],
            ..Default::default()
        },
    );
    sv.wait_socket();
    wait_until("the bridge's settings error", || {
        let all = sv.stdout() + &sv.stderr();
        all.contains("MQTT_QOS")
    });
    let all = sv.stdout() + &sv.stderr();
    assert!(
        !all.contains(secret),
        "the secret leaked next to a settings error"
    );
}
