//! Process entry points: `iot2mqtt-sv bridge` ([`main_bridge`]) and the shell client
//! `iot2mqtt-sv publish KIND ...` ([`main_publish`]).
//!
//! Both return an exit code instead of exiting, so the binary stays a thin dispatcher. Errors are
//! reported on one line with their whole cause chain.

// Neither runs in PID 1: the bridge is a supervised program whose output is a pipe to the
// supervisor (a stall there is back-pressure on the bridge, by design), and `publish`/`listen`
// run in the user's shell. They write to stdout and stderr directly.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tracing_subscriber::filter::LevelFilter;

use crate::codec::{DeviceSet, Op, Reply, Request, decode_reply, encode_request};
use crate::settings::{Settings, default_socket_path};
use crate::{ProgramView, SupervisorView, control, engine};

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Maps the platform's `LOG_LEVEL` names (DEBUG, INFO, WARNING, ERROR, CRITICAL; TRACE) onto
/// `tracing` levels; anything else is INFO.
pub fn log_level(level: Option<&str>) -> LevelFilter {
    match level.map(|l| l.trim().to_ascii_uppercase()).as_deref() {
        Some("TRACE") => LevelFilter::TRACE,
        Some("DEBUG") => LevelFilter::DEBUG,
        Some("WARNING" | "WARN") => LevelFilter::WARN,
        Some("ERROR" | "CRITICAL") => LevelFilter::ERROR,
        _ => LevelFilter::INFO,
    }
}

/// Sends `READY=1` to `$NOTIFY_SOCKET` (sd_notify(3); `@` names an abstract socket).
fn sd_notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", Path::new(&path))
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "sd_notify READY=1 failed");
    }
}

/// Entry point of `iot2mqtt-sv bridge -c CONFIG`. Returns the process exit code: 0 after a
/// graceful stop, 1 on a runtime error, 2 on a configuration error.
pub fn main_bridge(config_path: &Path) -> i32 {
    let env = |k: &str| std::env::var(k).ok();
    // Settings first: LOG_LEVEL may come from `.env`, and logging needs it. Errors are logged
    // once logging is set up.
    let prepared = std::fs::read_to_string(config_path)
        .map_err(|e| format!("reading config {}: {e}", config_path.display()))
        .and_then(|text| {
            sv_core::config::parse(&text, config_path, &env).map_err(|e| e.to_string())
        })
        .and_then(|config| {
            let section = config.bridge.clone().unwrap_or_default();
            Settings::resolve(&section, &env)
                .map(|s| (s.with_programs(&config), config))
                .map_err(|e| format!("invalid bridge settings: {}", chain(&e)))
        });
    let level = match &prepared {
        Ok((s, _)) => Some(s.log_level.clone()),
        Err(_) => std::env::var("LOG_LEVEL").ok(),
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // The supervisor captures this through a pipe: colour codes would end up in its log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // `RUST_LOG` directives need an `EnvFilter`, which compiles regexes; a plain level does not,
    // and keeps that code and memory out of the common case.
    let _ = match tracing_subscriber::EnvFilter::try_from_env("RUST_LOG") {
        Ok(filter) => builder.with_env_filter(filter).try_init(),
        Err(_) => builder
            .with_max_level(log_level(level.as_deref()))
            .try_init(),
    };
    let (settings, config) = match prepared {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "bridge not started");
            return 2;
        }
    };
    let control_socket = std::env::var_os("IOT2MQTT_SV_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| config.supervisor.control_socket.clone());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "starting the runtime failed");
            return 1;
        }
    };
    rt.block_on(async move {
        // Until the supervisor's first answer, a placeholder unhealthy program keeps the status
        // `offline`: nothing is known to be ready yet.
        let placeholder = SupervisorView {
            programs: vec![ProgramView {
                name: "supervisor".into(),
                pid: None,
                state: "UNKNOWN".into(),
                ready: false,
                critical: true,
                healthy: false,
            }],
        };
        let (view_tx, view_rx) = watch::channel(placeholder);
        let (ready_tx, ready_rx) = mpsc::channel(64);
        tokio::spawn(control::watch_loop(control_socket.clone(), view_tx));
        tokio::spawn(control::forward_ready(control_socket, ready_rx));
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut t), Ok(mut i)) => {
                    tokio::select! {
                        _ = t.recv() => {},
                        _ = i.recv() => {},
                    }
                }
                _ => std::future::pending::<()>().await,
            }
        };
        match engine::run(settings, view_rx, ready_tx, shutdown, sd_notify_ready).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %chain(&e), "bridge failed");
                1
            }
        }
    })
}

const PUBLISH_USAGE: &str = "usage: iot2mqtt-sv publish KIND ...
  state DEVICE JSON_OBJECT
  event DEVICE NAME [JSON]
  error DEVICE CODE MESSAGE [SEVERITY]
  telemetry DEVICE JSON_OBJECT
  devices_list JSON_ARRAY
  raw TOPIC PAYLOAD [retain]
  hello [DEVICE...]
  ready";

fn object(arg: &str, what: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(arg) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("{what}: expected a json object, got {arg:?}")),
        Err(e) => Err(format!("{what}: invalid json: {e}")),
    }
}

/// Builds the request of `publish KIND ...`; `Err` is a usage error.
fn publish_request(args: &[String]) -> Result<Request, String> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = match a.as_slice() {
        ["state", device, json] => Op::State {
            device_id: device.to_string(),
            state: object(json, "state")?,
            replace: false,
        },
        ["event", device, name] => Op::Event {
            device_id: device.to_string(),
            event: name.to_string(),
            data: Value::Null,
        },
        ["event", device, name, json] => Op::Event {
            device_id: device.to_string(),
            event: name.to_string(),
            data: serde_json::from_str(json)
                .map_err(|e| format!("event data: invalid json: {e}"))?,
        },
        ["error", device, code, message] => Op::Error {
            device_id: device.to_string(),
            error_code: code.to_string(),
            message: message.to_string(),
            severity: "error".into(),
            retry_info: None,
            extra: Map::new(),
        },
        ["error", device, code, message, severity] => Op::Error {
            device_id: device.to_string(),
            error_code: code.to_string(),
            message: message.to_string(),
            severity: severity.to_string(),
            retry_info: None,
            extra: Map::new(),
        },
        ["telemetry", device, json] => Op::Telemetry {
            device_id: device.to_string(),
            metrics: object(json, "telemetry")?,
        },
        ["devices_list", json] => match serde_json::from_str(json) {
            Ok(Value::Array(devices)) => Op::DevicesList { devices },
            _ => return Err("devices_list: expected a json array".into()),
        },
        ["raw", topic, payload] | ["raw", topic, payload, "retain"] => Op::Publish {
            topic: topic.to_string(),
            payload: Value::String(payload.to_string()),
            qos: None,
            retain: a.len() == 4,
        },
        ["hello"] => Op::Hello {
            devices: None,
            meta: false,
        },
        ["hello", devices @ ..] => Op::Hello {
            devices: Some(DeviceSet::Some(
                devices.iter().map(|d| d.to_string()).collect(),
            )),
            meta: false,
        },
        ["ready"] => Op::Ready,
        _ => return Err(PUBLISH_USAGE.to_string()),
    };
    let req = Request {
        id: Some(Value::from(1)),
        op,
    };
    // Validate exactly as the bridge will, so usage mistakes are exit code 2, not 1.
    let line = encode_request(&req);
    crate::codec::decode_request(line.trim_end().as_bytes()).map_err(|e| e.message)?;
    Ok(req)
}

/// Entry point of `iot2mqtt-sv publish KIND ...`: sends one request to
/// `$IOT2MQTT_SV_BRIDGE_SOCKET`, prints the reply line on stdout. Exit code 0 on `ok`, 1 on an
/// `error` reply or when the bridge cannot be reached, 2 on a usage error.
pub fn main_publish(args: &[String]) -> i32 {
    let args = match args.first().map(String::as_str) {
        Some("publish") => &args[1..],
        _ => args,
    };
    let req = match publish_request(args) {
        Ok(r) => r,
        Err(msg) => {
            let _ = writeln!(std::io::stderr(), "iot2mqtt-sv: error: {msg}");
            return 2;
        }
    };
    let path = std::env::var_os("IOT2MQTT_SV_BRIDGE_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(default_socket_path);
    match exchange(&path, &req) {
        Ok((line, ok)) => {
            let _ = writeln!(std::io::stdout(), "{line}");
            if ok { 0 } else { 1 }
        }
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "iot2mqtt-sv: error: bridge socket {}: {e}",
                path.display()
            );
            1
        }
    }
}

fn exchange(path: &Path, req: &Request) -> std::io::Result<(String, bool)> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(encode_request(req).as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a reply",
            ));
        }
        // Commands for a program that claimed all devices may interleave; only the reply counts.
        match decode_reply(line.trim_end().as_bytes()) {
            Ok(Reply::Ok { .. }) => return Ok((line.trim_end().to_string(), true)),
            Ok(Reply::Error { .. }) => return Ok((line.trim_end().to_string(), false)),
            _ => continue,
        }
    }
}

/// Entry point of `iot2mqtt-sv listen [DEVICE...]`: the shell programs' way to answer commands.
///
/// Connects to `$IOT2MQTT_SV_BRIDGE_SOCKET`, claims the devices (`hello`; none named = all),
/// then copies every line from the bridge (`cmd`, `get`, replies) to stdout and every line from
/// stdin (e.g. `cmd_result`, `state`) to the bridge, so a script drives it as a coprocess:
///
/// ```sh
/// coproc BRIDGE { iot2mqtt-sv listen thermometer; }
/// while read -r line <&"${BRIDGE[0]}"; do ...; echo '{"op":"cmd_result",...}' >&"${BRIDGE[1]}"; done
/// ```
///
/// When the bridge goes away (restart) it reconnects with backoff and claims the devices again;
/// lines written meanwhile wait for the connection. Exit code 0 when stdin ends, 2 on a usage
/// error.
// A blocking CLI command run by a program's shell script, not the bridge's event loop: its
// reconnect pause may sleep.
#[allow(clippy::disallowed_methods)]
pub fn main_listen(devices: &[String]) -> i32 {
    use std::sync::{Arc, Condvar, Mutex, PoisonError};

    let hello = match publish_request(&[&["hello".to_string()], devices].concat()) {
        Ok(r) => encode_request(&r),
        Err(msg) => {
            let _ = writeln!(std::io::stderr(), "iot2mqtt-sv: error: {msg}");
            return 2;
        }
    };
    let path = std::env::var_os("IOT2MQTT_SV_BRIDGE_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(default_socket_path);
    // The current connection's write half, shared with the stdin copier.
    let current: Arc<(Mutex<Option<UnixStream>>, Condvar)> =
        Arc::new((Mutex::new(None), Condvar::new()));

    let writer = current.clone();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(mut line) = line else { break };
            line.push('\n');
            let (lock, ready) = &*writer;
            let mut guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(s) = guard.as_mut() {
                    if s.write_all(line.as_bytes()).is_ok() {
                        break;
                    }
                    *guard = None;
                }
                guard = ready.wait(guard).unwrap_or_else(PoisonError::into_inner);
            }
        }
        // stdin ended: the script is done.
        std::process::exit(0);
    });

    let mut delay = Duration::from_millis(100);
    loop {
        match UnixStream::connect(&path).and_then(|s| {
            let mut w = s.try_clone()?;
            w.write_all(hello.as_bytes())?;
            Ok((s, w))
        }) {
            Ok((read, write)) => {
                delay = Duration::from_millis(100);
                let (lock, ready) = &*current;
                *lock.lock().unwrap_or_else(PoisonError::into_inner) = Some(write);
                ready.notify_all();
                let stdout = std::io::stdout();
                for line in BufReader::new(read).lines() {
                    let Ok(line) = line else { break };
                    let mut out = stdout.lock();
                    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                        // Nobody reads our output any more.
                        return 0;
                    }
                }
                *lock.lock().unwrap_or_else(PoisonError::into_inner) = None;
                tracing::warn!("bridge connection lost; reconnecting");
            }
            Err(e) => {
                tracing::debug!(error = %e, path = %path.display(), "bridge not reachable yet")
            }
        }
        // Reconnect pacing while the bridge restarts, not synchronisation.
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn publish_arguments_map_to_requests() {
        let r = publish_request(&args(&["state", "d1", r#"{"on":true}"#])).unwrap();
        assert!(matches!(r.op, Op::State { ref device_id, .. } if device_id == "d1"));
        let r = publish_request(&args(&["error", "d1", "E1", "broken", "critical"])).unwrap();
        assert!(matches!(r.op, Op::Error { ref severity, .. } if severity == "critical"));
        assert!(matches!(
            publish_request(&args(&["ready"])).unwrap().op,
            Op::Ready
        ));
        assert!(publish_request(&args(&["state", "d1", "[1]"])).is_err());
        assert!(publish_request(&args(&["error", "d1", "E", "m", "fatal"])).is_err());
        assert!(publish_request(&args(&["launch"])).is_err());
        assert!(publish_request(&args(&[])).is_err());
    }

    #[test]
    fn usage_errors_exit_2_and_unreachable_bridge_exits_1() {
        assert_eq!(main_publish(&args(&["publish", "bogus"])), 2);
        // SAFETY-free: the variable is read by main_publish only; tests in this module do not
        // depend on its absence.
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.sock");
        assert!(exchange(&missing, &publish_request(&args(&["ready"])).unwrap()).is_err());
    }

    #[test]
    fn log_levels_map() {
        assert_eq!(log_level(Some("WARNING")), LevelFilter::WARN);
        assert_eq!(log_level(Some("critical")), LevelFilter::ERROR);
        assert_eq!(log_level(None), LevelFilter::INFO);
    }
}
