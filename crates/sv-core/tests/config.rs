//! Valid configs: every key accepted, every default as documented, environment expansion and
//! the duration forms.

use std::path::Path;
use std::time::Duration;

use sv_core::config::{
    AutoRestart, BackoffConfig, BridgeSection, Config, ConfigErrors, DependencyCondition,
    HttpSettings, LivenessConfig, LogFormat, OnDependencyRestart, OutputMode, ReadinessCheck,
    ReadinessConfig, parse,
};
use sv_core::signal::Signal;

fn env(name: &str) -> Option<String> {
    match name {
        "MQTT_HOST" => Some("broker.local".into()),
        "EMPTY" => Some(String::new()),
        "HOME" => Some("/root".into()),
        _ => None,
    }
}

fn ok(source: &str) -> Config {
    match parse(source, Path::new("test.toml"), &env) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn err(source: &str) -> ConfigErrors {
    parse(source, Path::new("test.toml"), &env).expect_err("expected errors")
}

#[test]
fn a_program_with_only_a_command_gets_every_default() {
    let config = ok("[program.web]\ncommand = \"/usr/bin/web --port 80\"\n");
    assert_eq!(config.programs.len(), 1);
    let p = &config.programs[0];
    assert_eq!(p.name, "web");
    assert_eq!(p.command, ["/usr/bin/web", "--port", "80"]);
    assert_eq!(p.directory, None);
    assert!(p.environment.is_empty());
    assert_eq!(p.user, None);
    assert_eq!(p.umask, None);
    assert_eq!(p.priority, 999);
    assert!(p.autostart);
    assert_eq!(p.autorestart, AutoRestart::Unexpected);
    assert_eq!(p.exitcodes, [0]);
    assert_eq!(p.startsecs, Duration::from_secs(1));
    assert_eq!(p.startretries, 3);
    assert_eq!(p.stopsignal, Signal::Term);
    assert_eq!(p.stopwaitsecs, Duration::from_secs(10));
    assert!(p.stopasgroup);
    assert!(p.killasgroup);
    assert!(!p.redirect_stderr);
    assert_eq!(p.output, OutputMode::Capture);
    assert!(p.critical);
    assert_eq!(p.backoff, BackoffConfig::default());
    assert_eq!(
        p.backoff,
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
            reset_after: Duration::from_secs(60),
        }
    );
    assert_eq!(
        p.readiness,
        ReadinessConfig {
            check: ReadinessCheck::StartSecs,
            timeout: Duration::from_secs(60),
            interval: Duration::from_millis(250),
        }
    );
    assert_eq!(p.liveness, None);
    assert_eq!(p.watchdog, None);
    assert!(p.depends_on.is_empty());
    assert_eq!(p.on_dependency_restart, OnDependencyRestart::Wait);
    assert!(p.bridge_publish.is_empty());
    assert_eq!(p.log_file, None);
}

#[test]
fn supervisor_defaults_and_no_bridge() {
    let config = ok("[program.a]\ncommand = [\"/bin/true\"]\n");
    let s = &config.supervisor;
    assert_eq!(s.control_socket, Path::new("/run/iot2mqtt-sv/control.sock"));
    assert_eq!(s.control_socket_mode, 0o600);
    assert_eq!(s.log_format, LogFormat::Text);
    assert_eq!(s.shutdown_timeout, Duration::from_secs(8));
    assert_eq!(s.orphan_grace, Duration::from_millis(500));
    assert_eq!(s.log_buffer_lines, 1000);
    assert_eq!(s.max_line_bytes, 16 * 1024);
    assert_eq!(s.http, None);
    assert_eq!(config.bridge, None);
}

#[test]
fn every_supervisor_key_is_accepted() {
    let config = ok(r#"
[supervisor]
control_socket = "/tmp/sv.sock"
control_socket_mode = "660"
log_format = "json"
shutdown_timeout = "5s"
orphan_grace = 0
log_buffer_lines = 50
max_line_bytes = 4096

[supervisor.http]
listen = "0.0.0.0:9100"

[program.a]
command = "a"
"#);
    let s = &config.supervisor;
    assert_eq!(s.control_socket, Path::new("/tmp/sv.sock"));
    assert_eq!(s.control_socket_mode, 0o660);
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(s.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(s.orphan_grace, Duration::ZERO);
    assert_eq!(s.log_buffer_lines, 50);
    assert_eq!(s.max_line_bytes, 4096);
    assert_eq!(
        s.http,
        Some(HttpSettings {
            listen: "0.0.0.0:9100".into(),
            max_connections: 256,
        })
    );
}

#[test]
fn every_program_key_is_accepted() {
    let config = ok(r#"
[program.db]
command = ["/usr/bin/db"]
ready = { kind = "tcp", port = 5432 }

[program.setup]
command = "/bin/setup"
autorestart = false

[program.web]
command = ["/usr/bin/web", "--flag", ""]
directory = "/srv/web"
environment = { B = "2", A = 1, C = true, D = 1.5, E = "${MQTT_HOST}" }
user = 1000
umask = "027"
priority = -5
autostart = false
autorestart = true
exitcodes = [0, 2, 255]
startsecs = 0
startretries = 10
stopsignal = "sigint"
stopwaitsecs = 2.5
stopasgroup = false
redirect_stderr = true
output = "capture"
critical = false
watchdog = "30s"
depends_on = { db = "ready", setup = "completed" }
on_dependency_restart = "restart"
bridge_publish = ["other/+/state", "global/#"]

[program.web.backoff]
initial = "1s"
max = "1m"
multiplier = 1
jitter = 0
reset_after = "2h"

[program.web.ready]
kind = "notify"
timeout = "90s"

[program.web.liveness]
kind = "http"
url = "http://127.0.0.1:8080/health"
interval = "5s"
timeout = "500ms"
failure_threshold = 5
initial_delay = "10s"
"#);
    let names: Vec<&str> = config.programs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["db", "setup", "web"], "sorted by name");
    let web = &config.programs[2];
    assert_eq!(web.command, ["/usr/bin/web", "--flag", ""]);
    assert_eq!(web.directory.as_deref(), Some(Path::new("/srv/web")));
    // Inline table keys come back in file order, numbers and booleans stringified.
    assert_eq!(
        web.environment,
        [
            ("B".to_string(), "2".to_string()),
            ("A".into(), "1".into()),
            ("C".into(), "true".into()),
            ("D".into(), "1.5".into()),
            ("E".into(), "broker.local".into()),
        ]
    );
    assert_eq!(web.user.as_deref(), Some("1000"));
    assert_eq!(web.umask, Some(0o027));
    assert_eq!(web.priority, -5);
    assert!(!web.autostart);
    assert_eq!(web.autorestart, AutoRestart::Always);
    assert_eq!(web.exitcodes, [0, 2, 255]);
    assert_eq!(web.startsecs, Duration::ZERO);
    assert_eq!(web.startretries, 10);
    assert_eq!(web.stopsignal, Signal::Int);
    assert_eq!(web.stopwaitsecs, Duration::from_millis(2500));
    assert!(!web.stopasgroup);
    assert!(!web.killasgroup, "killasgroup follows stopasgroup");
    assert!(web.redirect_stderr);
    assert!(!web.critical);
    assert_eq!(web.watchdog, Some(Duration::from_secs(30)));
    assert_eq!(
        web.depends_on,
        [
            ("db".to_string(), DependencyCondition::Ready),
            ("setup".to_string(), DependencyCondition::Completed)
        ]
    );
    assert_eq!(web.on_dependency_restart, OnDependencyRestart::Restart);
    assert_eq!(web.bridge_publish, ["other/+/state", "global/#"]);
    assert_eq!(
        web.backoff,
        BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 1.0,
            jitter: 0.0,
            reset_after: Duration::from_secs(7200),
        }
    );
    assert_eq!(
        web.readiness,
        ReadinessConfig {
            check: ReadinessCheck::Notify,
            timeout: Duration::from_secs(90),
            interval: Duration::from_millis(250),
        }
    );
    assert_eq!(
        web.liveness,
        Some(LivenessConfig {
            check: ReadinessCheck::Http {
                url: "http://127.0.0.1:8080/health".into()
            },
            interval: Duration::from_secs(5),
            timeout: Duration::from_millis(500),
            failure_threshold: 5,
            initial_delay: Duration::from_secs(10),
        })
    );
    assert_eq!(
        config.programs[0].readiness.check,
        ReadinessCheck::Tcp {
            address: "127.0.0.1:5432".into()
        }
    );
    assert_eq!(config.programs[1].autorestart, AutoRestart::Never);
}

#[test]
fn every_readiness_kind() {
    let config = ok(r#"
[program.a]
command = "a"
ready.kind = "startsecs"
[program.b]
command = "b"
ready = { kind = "tcp", address = "[::1]:1883", interval = "1s" }
[program.c]
command = "c"
ready = { kind = "http", url = "http://localhost:8080/ready" }
[program.d]
command = "d"
ready = { kind = "exec", command = "pg_isready -h 'local host'" }
[program.e]
command = "e"
ready = { kind = "log", pattern = '^listening on \d+$' }
[bridge]
[program.f]
command = "f"
ready = { kind = "bridge", timeout = 5 }
[program.g]
command = "g"
liveness = { kind = "exec", command = ["/bin/check", "--quick"] }
[program.h]
command = "h"
liveness = { kind = "tcp", port = 80 }
"#);
    let checks: Vec<&ReadinessCheck> = config.programs.iter().map(|p| &p.readiness.check).collect();
    assert_eq!(
        checks,
        [
            &ReadinessCheck::StartSecs,
            &ReadinessCheck::Tcp {
                address: "[::1]:1883".into()
            },
            &ReadinessCheck::Http {
                url: "http://localhost:8080/ready".into()
            },
            &ReadinessCheck::Exec {
                command: vec!["pg_isready".into(), "-h".into(), "local host".into()]
            },
            &ReadinessCheck::Log {
                pattern: r"^listening on \d+$".into()
            },
            &ReadinessCheck::Bridge,
            &ReadinessCheck::StartSecs,
            &ReadinessCheck::StartSecs,
        ]
    );
    assert_eq!(
        config.programs[1].readiness.interval,
        Duration::from_secs(1)
    );
    assert_eq!(config.programs[5].readiness.timeout, Duration::from_secs(5));
    let g = config.programs[6].liveness.as_ref().expect("liveness");
    assert_eq!(
        g.check,
        ReadinessCheck::Exec {
            command: vec!["/bin/check".into(), "--quick".into()]
        }
    );
    assert_eq!(g.interval, Duration::from_secs(10));
    assert_eq!(g.timeout, Duration::from_secs(1));
    assert_eq!(g.failure_threshold, 3);
    assert_eq!(g.initial_delay, Duration::ZERO);
    assert_eq!(
        config.programs[7].liveness.as_ref().map(|l| &l.check),
        Some(&ReadinessCheck::Tcp {
            address: "127.0.0.1:80".into()
        })
    );
}

#[test]
fn supervisord_spellings_are_accepted() {
    let config = ok(r#"
[program.a]
command = "a"
autorestart = "true"
exitcodes = "0, 2"
umask = 18
stopsignal = "KILL"
[program.b]
command = "b"
autorestart = "false"
umask = 0o077
[program.c]
command = "c"
autorestart = "unexpected"
user = "nobody"
"#);
    let [a, b, c] = &config.programs[..] else {
        panic!("three programs")
    };
    assert_eq!(a.autorestart, AutoRestart::Always);
    assert_eq!(a.exitcodes, [0, 2]);
    assert_eq!(a.umask, Some(0o022));
    assert_eq!(a.stopsignal, Signal::Kill);
    assert_eq!(b.autorestart, AutoRestart::Never);
    assert_eq!(b.umask, Some(0o077));
    assert_eq!(c.autorestart, AutoRestart::Unexpected);
    assert_eq!(c.user.as_deref(), Some("nobody"));
}

#[test]
fn depends_on_array_means_ready_and_keeps_file_order() {
    let config = ok(r#"
[program.z]
command = "z"
[program.a]
command = "a"
[program.m]
command = "m"
depends_on = ["z", "a"]
"#);
    let m = config.programs.iter().find(|p| p.name == "m").expect("m");
    assert_eq!(
        m.depends_on,
        [
            ("z".to_string(), DependencyCondition::Ready),
            ("a".to_string(), DependencyCondition::Ready)
        ]
    );
    let config = ok(r#"
[program.a]
command = "a"
[program.b]
command = "b"
depends_on = { a = "started" }
"#);
    assert_eq!(
        config.programs[1].depends_on,
        [("a".to_string(), DependencyCondition::Started)]
    );
}

#[test]
fn killasgroup_can_differ_from_stopasgroup() {
    let config = ok("[program.a]\ncommand = \"a\"\nkillasgroup = false\n");
    assert!(config.programs[0].stopasgroup);
    assert!(!config.programs[0].killasgroup);
}

#[test]
fn empty_bridge_table_means_everything_from_the_environment() {
    let config = ok("[bridge]\n");
    assert_eq!(config.bridge, Some(BridgeSection::default()));
    assert!(config.programs.is_empty());
}

#[test]
fn every_bridge_key_is_accepted() {
    let config = ok(r#"
[bridge]
host = "mqtt.local"
port = 8883
username = "user"
password = "secret"
base_topic = "iot2mqtt"
client_prefix = "iot2mqtt"
client_id = "conn-1"
qos = 1
retain = true
keepalive = 60
instance = "living_room"
iot2mqtt_path = "/app"
instance_file = "/app/instances/x.json"
tz = "Europe/Berlin"
socket = "/run/iot2mqtt-sv/bridge.sock"
socket_group = "app"
socket_mode = "0660"
max_line_bytes = 65536
outbox_max_messages = 100
outbox_max_bytes = 1048576
max_devices = 5000
max_subscriptions = 64
max_connections = 32
max_command_age = "30s"
property_topics = false
tls = true
ca_file = "/etc/ssl/ca.pem"
client_cert = "/etc/ssl/c.pem"
client_key = "/etc/ssl/c.key"

[program.app]
command = "/app/run"
depends_on = ["bridge"]
"#);
    let b = config.bridge.expect("bridge");
    assert_eq!(
        b,
        BridgeSection {
            host: Some("mqtt.local".into()),
            port: Some(8883),
            username: Some("user".into()),
            password: Some("secret".into()),
            password_file: None,
            base_topic: Some("iot2mqtt".into()),
            client_prefix: Some("iot2mqtt".into()),
            client_id: Some("conn-1".into()),
            qos: Some(1),
            retain: Some(true),
            keepalive: Some(Duration::from_secs(60)),
            instance: Some("living_room".into()),
            iot2mqtt_path: Some("/app".into()),
            instance_file: Some("/app/instances/x.json".into()),
            tz: Some("Europe/Berlin".into()),
            socket: Some("/run/iot2mqtt-sv/bridge.sock".into()),
            socket_group: Some("app".into()),
            socket_mode: Some(0o660),
            max_line_bytes: Some(65536),
            outbox_max_messages: Some(100),
            outbox_max_bytes: Some(1048576),
            max_devices: Some(5000),
            max_subscriptions: Some(64),
            max_connections: Some(32),
            max_command_age: Some(Duration::from_secs(30)),
            property_topics: Some(false),
            tls: Some(true),
            ca_file: Some("/etc/ssl/ca.pem".into()),
            client_cert: Some("/etc/ssl/c.pem".into()),
            client_key: Some("/etc/ssl/c.key".into()),
        }
    );
    assert_eq!(
        config.programs[0].depends_on,
        [("bridge".to_string(), DependencyCondition::Ready)],
        "the supervisor-provided bridge program is a valid dependency"
    );
}

#[test]
fn environment_expansion() {
    let config = ok(r#"
[program.a]
command = "a"
[program.a.environment]
HOST = "${MQTT_HOST}"
URL = "mqtt://${MQTT_HOST}:${PORT:-1883}/x"
FALLBACK = "${EMPTY:-used when empty}"
RAW = "${EMPTY}"
PRICE = "$$5 and $${NOT_EXPANDED}"
PLAIN = "no dollars"
"#);
    assert_eq!(
        config.programs[0].environment,
        [
            ("HOST".to_string(), "broker.local".to_string()),
            ("URL".into(), "mqtt://broker.local:1883/x".into()),
            ("FALLBACK".into(), "used when empty".into()),
            ("RAW".into(), "".into()),
            ("PRICE".into(), "$5 and ${NOT_EXPANDED}".into()),
            ("PLAIN".into(), "no dollars".into()),
        ]
    );
}

#[test]
fn environment_expansion_errors_name_the_variable() {
    let e = err("[program.a]\ncommand = \"a\"\nenvironment = { X = \"${NOPE}\", Y = \"$HOME\" }\n");
    let messages: Vec<String> = e.0.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "test.toml: line 3, column 21: environment \"X\": environment variable \"NOPE\" is not set (write \"${NOPE:-default}\" to give a default)",
            "test.toml: line 3, column 36: environment \"Y\": \"$\" must be followed by \"{NAME}\" (write \"$$\" for a literal dollar)",
        ]
    );
}

#[test]
fn duration_forms() {
    let cases = [
        ("3", Duration::from_secs(3)),
        ("0.25", Duration::from_millis(250)),
        ("\"500ms\"", Duration::from_millis(500)),
        ("\"10s\"", Duration::from_secs(10)),
        ("\"1.5s\"", Duration::from_millis(1500)),
        ("\"2m\"", Duration::from_secs(120)),
        ("\"1h\"", Duration::from_secs(3600)),
        ("\"1h30m\"", Duration::from_secs(5400)),
    ];
    for (text, expected) in cases {
        let config = ok(&format!(
            "[program.a]\ncommand = \"a\"\nstopwaitsecs = {text}\n"
        ));
        assert_eq!(config.programs[0].stopwaitsecs, expected, "{text}");
    }
}

#[test]
fn log_file_takes_supervisord_sizes_and_defaults_like_supervisord() {
    let c = ok(
        "[program.a]\ncommand = \"a\"\nlog_file = \"/var/log/a.log\"\n\
         [program.b]\ncommand = \"b\"\nlog_file = { path = \"/var/log/b.log\", max_bytes = \"1MB\", backups = 0 }\n",
    );
    let a = c.programs[0].log_file.clone().expect("a has a log file");
    assert_eq!(a.path, std::path::Path::new("/var/log/a.log"));
    // supervisord: stdout_logfile_maxbytes=50MB, stdout_logfile_backups=10.
    assert_eq!((a.max_bytes, a.backups), (50 * 1024 * 1024, 10));
    let b = c.programs[1].log_file.clone().expect("b has a log file");
    assert_eq!((b.max_bytes, b.backups), (1024 * 1024, 0));
}

#[test]
fn a_scheduled_program_defaults_to_no_autostart_no_autorestart_not_critical() {
    let c = ok(
        "[program.sync]\ncommand = \"sync\"\nschedule = \"*/5 * * * *\"\n\
                [program.poll]\ncommand = \"poll\"\nevery = \"10m\"\nrun_on_start = true\n\
                overlap = \"queue\"\ncritical = true\nstartsecs = 2\n",
    );
    let poll = &c.programs[0];
    let s = poll.schedule.clone().expect("scheduled");
    assert_eq!(
        s.trigger,
        sv_core::schedule::Trigger::Every(Duration::from_secs(600))
    );
    assert!(s.run_on_start);
    assert_eq!(s.overlap, sv_core::schedule::Overlap::Queue);
    // Given keys win over the scheduled defaults.
    assert!(poll.critical);
    assert_eq!(poll.startsecs, Duration::from_secs(2));
    let sync = &c.programs[1];
    let s = sync.schedule.clone().expect("scheduled");
    assert!(!s.run_on_start);
    assert_eq!(s.overlap, sv_core::schedule::Overlap::Skip);
    assert!(!sync.autostart);
    assert_eq!(sync.autorestart, AutoRestart::Never);
    assert!(!sync.critical);
    assert_eq!(sync.startsecs, Duration::ZERO);
    assert_eq!(sync.startretries, 0);
}
