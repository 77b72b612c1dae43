//! The `[supervisor]` and `[bridge]` tables.

use std::time::Duration;

use super::diag::Sink;
use super::model::{
    BridgeSection, DEFAULT_HTTP_MAX_CONNECTIONS, HttpSettings, LogFormat, SupervisorSettings,
};
use super::value::{Field, Table};

const SUPERVISOR_KEYS: &[&str] = &[
    "control_socket",
    "control_socket_mode",
    "log_format",
    "shutdown_timeout",
    "orphan_grace",
    "log_buffer_lines",
    "max_line_bytes",
    "max_control_connections",
    "http",
    "env_file",
    "minfds",
    "minprocs",
];

const BRIDGE_KEYS: &[&str] = &[
    "host",
    "port",
    "username",
    "password",
    "password_file",
    "base_topic",
    "client_prefix",
    "client_id",
    "qos",
    "retain",
    "keepalive",
    "instance",
    "iot2mqtt_path",
    "instance_file",
    "tz",
    "socket",
    "socket_group",
    "socket_mode",
    "max_line_bytes",
    "outbox_max_messages",
    "outbox_max_bytes",
    "max_devices",
    "max_subscriptions",
    "max_connections",
    "max_command_age",
    "property_topics",
    "tls",
    "ca_file",
    "client_cert",
    "client_key",
];

fn read<'a, 'i, T>(
    table: &Table<'a, 'i>,
    sink: &mut Sink,
    key: &str,
    f: impl FnOnce(&Field<'a, 'i>, &mut Sink) -> Option<T>,
) -> Option<T> {
    table.get(key).and_then(|field| f(&field, sink))
}

/// The largest accepted connection cap: far beyond what a container needs, low enough that a
/// typo cannot mean "unbounded".
const MAX_CONNECTIONS: i64 = 65_536;

/// `usize` bounds as `i64`, for [`Field::int_in`].
fn usize_max() -> i64 {
    i64::try_from(usize::MAX).unwrap_or(i64::MAX)
}

pub(super) fn supervisor(table: &Table<'_, '_>, sink: &mut Sink) -> SupervisorSettings {
    table.check_keys(sink, SUPERVISOR_KEYS);
    let mut s = SupervisorSettings::default();
    if let Some(v) = read(table, sink, "control_socket", |f, s| f.path(s)) {
        s.control_socket = v;
    }
    if let Some(v) = read(table, sink, "control_socket_mode", |f, s| f.mode(s)) {
        s.control_socket_mode = v;
    }
    if let Some(v) = read(table, sink, "env_file", |f, s| f.absolute_paths(s)) {
        s.env_files = v;
    }
    s.minfds = read(table, sink, "minfds", |f, s| f.int_in(s, 1, i64::MAX));
    s.minprocs = read(table, sink, "minprocs", |f, s| f.int_in(s, 1, i64::MAX));
    if let Some(v) = read(table, sink, "log_format", |f, s| {
        f.choice(s, &["text", "json"])
    }) {
        s.log_format = if v == "json" {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
    }
    if let Some(v) = read(table, sink, "shutdown_timeout", |f, s| f.duration(s, true)) {
        s.shutdown_timeout = v;
    }
    if let Some(v) = read(table, sink, "orphan_grace", |f, s| f.duration(s, false)) {
        s.orphan_grace = v;
    }
    if let Some(v) = read(table, sink, "log_buffer_lines", |f, s| {
        f.int_in(s, 0, usize_max())
    }) {
        s.log_buffer_lines = v;
    }
    if let Some(v) = read(table, sink, "max_line_bytes", |f, s| {
        f.int_in(s, 1, usize_max())
    }) {
        s.max_line_bytes = v;
    }
    if let Some(v) = read(table, sink, "max_control_connections", |f, s| {
        f.int_in(s, 1, MAX_CONNECTIONS)
    }) {
        s.max_control_connections = v;
    }
    if let Some(f) = table.get("http") {
        if let Some(http) = f.table(sink, table.child_path("http")) {
            http.check_keys(sink, &["listen", "max_connections"]);
            let max_connections = read(&http, sink, "max_connections", |f, s| {
                f.int_in(s, 1, MAX_CONNECTIONS)
            })
            .unwrap_or(DEFAULT_HTTP_MAX_CONNECTIONS);
            match http.get("listen") {
                Some(f) => {
                    if let Some(listen) = f.text(sink) {
                        if is_host_port(&listen, true) {
                            s.http = Some(HttpSettings {
                                listen,
                                max_connections,
                            });
                        } else {
                            f.error(
                                sink,
                                format!("\"listen\" must be host:port, found {listen:?}"),
                            );
                        }
                    }
                }
                None => sink.error(
                    &http.span,
                    format!("missing key \"listen\" in {}", http.path),
                ),
            }
        }
    }
    s
}

/// `host:port` with a non-empty host and a numeric port (`[::1]:80` works: the port is after
/// the last colon).
pub(super) fn is_host_port(text: &str, allow_port_zero: bool) -> bool {
    text.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && port.parse::<u16>().is_ok_and(|p| allow_port_zero || p > 0)
    })
}

pub(super) fn bridge(table: &Table<'_, '_>, sink: &mut Sink) -> BridgeSection {
    table.check_keys(sink, BRIDGE_KEYS);
    let text = |sink: &mut Sink, key: &str| read(table, sink, key, |f, s| f.text(s));
    let path = |sink: &mut Sink, key: &str| read(table, sink, key, |f, s| f.path(s));
    let boolean = |sink: &mut Sink, key: &str| read(table, sink, key, |f, s| f.bool(s));
    let size =
        |sink: &mut Sink, key: &str| read(table, sink, key, |f, s| f.int_in(s, 1, usize_max()));
    let b = BridgeSection {
        // An empty host means localhost, as MQTT_HOST does.
        host: read(table, sink, "host", |f, s| f.str(s).map(str::to_string)),
        port: read(table, sink, "port", |f, s| f.int_in(s, 1, 65535)),
        username: read(table, sink, "username", |f, s| f.str(s).map(str::to_string)),
        password: read(table, sink, "password", |f, s| f.str(s).map(str::to_string)),
        password_file: path(sink, "password_file"),
        base_topic: read(table, sink, "base_topic", |f, s| {
            let topic = f.text(s)?;
            if topic.contains(['+', '#']) {
                f.error(
                    s,
                    "\"base_topic\" must not contain the wildcards \"+\" or \"#\"",
                );
                None
            } else {
                Some(topic)
            }
        }),
        client_prefix: text(sink, "client_prefix"),
        client_id: text(sink, "client_id"),
        qos: read(table, sink, "qos", |f, s| f.int_in(s, 0, 2)),
        retain: boolean(sink, "retain"),
        // MQTT carries keepalive as a 16-bit number of seconds.
        keepalive: read(table, sink, "keepalive", |f, s| {
            let d = f.duration(s, true)?;
            if d > Duration::from_secs(65535) {
                f.error(s, "\"keepalive\" must be at most 65535 seconds");
                None
            } else {
                Some(d)
            }
        }),
        instance: text(sink, "instance"),
        iot2mqtt_path: path(sink, "iot2mqtt_path"),
        instance_file: path(sink, "instance_file"),
        tz: text(sink, "tz"),
        socket: path(sink, "socket"),
        socket_group: text(sink, "socket_group"),
        socket_mode: read(table, sink, "socket_mode", |f, s| f.mode(s)),
        max_line_bytes: size(sink, "max_line_bytes"),
        outbox_max_messages: size(sink, "outbox_max_messages"),
        outbox_max_bytes: size(sink, "outbox_max_bytes"),
        max_devices: size(sink, "max_devices"),
        max_subscriptions: size(sink, "max_subscriptions"),
        max_connections: size(sink, "max_connections"),
        max_command_age: read(table, sink, "max_command_age", |f, s| f.duration(s, true)),
        property_topics: boolean(sink, "property_topics"),
        tls: boolean(sink, "tls"),
        ca_file: path(sink, "ca_file"),
        client_cert: path(sink, "client_cert"),
        client_key: path(sink, "client_key"),
    };
    if let (Some(_), Some(f)) = (table.get("password"), table.get("password_file")) {
        sink.error(
            &f.key_span,
            "give either \"password\" or \"password_file\", not both",
        );
    }
    match (table.get("client_cert"), table.get("client_key")) {
        (Some(f), None) => sink.error(
            &f.key_span,
            "\"client_cert\" needs \"client_key\" (mutual TLS takes both)",
        ),
        (None, Some(f)) => sink.error(
            &f.key_span,
            "\"client_key\" needs \"client_cert\" (mutual TLS takes both)",
        ),
        _ => {}
    }
    b
}
