//! The bridge socket's line protocol: pure encoding and decoding, no IO.
//!
//! One JSON object per line, each with an `"op"` and an optional `"id"` that the bridge echoes in
//! its `ok` / `error` reply. [`decode_request`] never panics, whatever the bytes: it returns a
//! [`Request`] or a [`DecodeError`] carrying the stable error code and, when it could be read, the
//! request's `id`. Unknown fields are ignored so that newer clients work with older bridges.
//! The protocol is specified in `docs/protocol.md`; the examples there are tested here.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Stable error codes of `error` replies (documented in `docs/protocol.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not a JSON object.
    BadJson,
    /// The object has no string `op`, or an `op` this bridge does not know.
    UnknownOp,
    /// A field is missing or has the wrong type or value.
    BadRequest,
    /// The line exceeds `max_line_bytes`; it was discarded up to the next newline.
    LineTooLong,
    /// The topic is outside what this program may publish to.
    Forbidden,
    /// The peer could not be identified as a supervised program (needed for `ready`).
    UnknownProgram,
    /// The bridge cannot take the message right now (a queue is full).
    Overloaded,
    /// No pending command matches a `cmd_result`.
    UnknownCommand,
    /// The supervisor refused or could not be told.
    Unavailable,
    /// The device is claimed by another program's `hello`, and this program's `bridge_publish`
    /// does not cover it.
    DeviceClaimed,
    /// A new device id would exceed `max_devices`.
    TooManyDevices,
    /// The connection holds `max_subscriptions` subscriptions already.
    TooManySubscriptions,
    /// The socket has `max_connections` connections already (then the connection is closed).
    TooManyConnections,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::LineTooLong => "line_too_long",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnknownProgram => "unknown_program",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::DeviceClaimed => "device_claimed",
            ErrorCode::TooManyDevices => "too_many_devices",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::TooManyConnections => "too_many_connections",
        }
    }
}

/// Which devices a program handles (`hello`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeviceSet {
    /// `"*"`: every device of the instance.
    All(AllMarker),
    /// An explicit list.
    Some(Vec<String>),
}

/// The literal `"*"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllMarker {
    /// `"*"`.
    #[serde(rename = "*")]
    All,
}

/// `cmd_result` status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmdStatus {
    /// The command was executed.
    Success,
    /// The command failed.
    Error,
}

fn default_severity() -> String {
    "error".to_string()
}

/// The operation of a program → bridge message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Declares the devices this program handles (absent = all) and whether it answers
    /// `meta/request/*` itself.
    Hello {
        /// Devices handled; absent or `"*"` = all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        devices: Option<DeviceSet>,
        /// Whether meta requests go to this program instead of being answered by the bridge.
        #[serde(default)]
        meta: bool,
    },
    /// A device's state (merged into the last full state; `replace` drops keys not given).
    State {
        /// Device.
        device_id: String,
        /// Property values.
        state: Map<String, Value>,
        /// Replace the cached full state instead of merging into it.
        #[serde(default)]
        replace: bool,
    },
    /// A discrete event.
    Event {
        /// Device.
        device_id: String,
        /// Event name.
        event: String,
        /// Event data.
        #[serde(default)]
        data: Value,
    },
    /// A device error.
    Error {
        /// Device.
        device_id: String,
        /// Machine-readable code.
        error_code: String,
        /// Human-readable text.
        message: String,
        /// `info`, `warning`, `error` (default) or `critical`.
        #[serde(default = "default_severity")]
        severity: String,
        /// Merged into the published object, as the platform's `publish_error` does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_info: Option<Map<String, Value>>,
        /// Any other field, copied into the published object.
        #[serde(flatten)]
        extra: Map<String, Value>,
    },
    /// Telemetry metrics.
    Telemetry {
        /// Device.
        device_id: String,
        /// Metrics.
        metrics: Map<String, Value>,
    },
    /// The full device list, published as `meta/devices_list` (a JSON array).
    DevicesList {
        /// Device entries.
        devices: Vec<Value>,
    },
    /// The outcome of a `cmd`.
    CmdResult {
        /// Device (as in the `cmd`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_id: Option<String>,
        /// The `cmd_id` of the `cmd`.
        cmd_id: String,
        /// Outcome.
        status: CmdStatus,
        /// Result data for `success`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
        /// Error data for `error`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Value>,
    },
    /// The program is ready (readiness kind `bridge`).
    Ready,
    /// Subscribe to a raw MQTT filter; matching messages arrive as `message`.
    Subscribe {
        /// MQTT filter.
        topic: String,
    },
    /// Publish a raw message (ACL: inside the instance tree or `bridge_publish`).
    Publish {
        /// Topic name.
        topic: String,
        /// A string is sent as is; any other JSON value is sent serialized.
        payload: Value,
        /// Default: `MQTT_QOS`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        qos: Option<u8>,
        /// Default false.
        #[serde(default)]
        retain: bool,
    },
    /// Devices found by a scan, published on `{B}/v1/instances/{I}/discovered`.
    Discovered {
        /// Device descriptions, published as given.
        devices: Vec<Value>,
    },
    /// Adds, replaces or (with `config: null`) removes a Home Assistant discovery config of a
    /// device: `{prefix}/{component}/{I}_{device}[_{entity}]/config`.
    HaDiscovery {
        /// Device.
        device_id: String,
        /// Home Assistant component (`sensor`, `switch`, …).
        component: String,
        /// Suffix of the object id, for a device's second and further entities.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entity: Option<String>,
        /// The config (completed by the bridge), or `null` to remove it.
        config: Option<Map<String, Value>>,
    },
    /// Liveness of the socket itself: answered with `ok`.
    Ping,
    /// The bridge's figures (read-only, any peer): answered with a `stats` reply.
    Stats,
}

/// The op names [`Op`] knows, for telling `unknown_op` from `bad_request`.
pub const OPS: &[&str] = &[
    "hello",
    "state",
    "event",
    "error",
    "telemetry",
    "devices_list",
    "cmd_result",
    "ready",
    "subscribe",
    "publish",
    "ping",
    "stats",
    "discovered",
    "ha_discovery",
];

/// A program → bridge message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Echoed in the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// The operation.
    #[serde(flatten)]
    pub op: Op,
}

/// Why a line is not a [`Request`].
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    /// The request's `id`, when the line was an object with one.
    pub id: Option<Value>,
    /// Stable code.
    pub code: ErrorCode,
    /// Lower-case explanation.
    pub message: String,
}

/// A bridge → program message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply {
    /// The request with this `id` was accepted.
    Ok {
        /// Echoed id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    /// The request with this `id` was refused.
    Error {
        /// Echoed id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        /// Stable code.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
    /// Execute a command; answer with `cmd_result` within `timeout` ms.
    Cmd {
        /// Device.
        device_id: String,
        /// Correlation id for `cmd_result` (the MQTT `id`, or one made by the bridge).
        cmd_id: String,
        /// Requested values.
        values: Map<String, Value>,
        /// Milliseconds the bridge waits for `cmd_result`.
        timeout: u64,
        /// When the command was issued (RFC 3339).
        timestamp: String,
    },
    /// Publish the device's state (only `properties`, when given).
    Get {
        /// Device.
        device_id: String,
        /// Requested properties; absent = all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        properties: Option<Vec<String>>,
    },
    /// A `meta/request/{type}` for a program that claimed meta requests.
    MetaRequest {
        /// `info`, `devices_list`, ...
        #[serde(rename = "type")]
        kind: String,
        /// The request payload, when it was JSON.
        #[serde(default)]
        payload: Value,
    },
    /// The answer to `stats`: the bridge's figures since it started.
    Stats {
        /// Echoed id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        /// The figures.
        stats: sv_core::health::BridgeStats,
    },
    /// A message on a raw subscription.
    Message {
        /// Topic.
        topic: String,
        /// Payload as UTF-8 text (invalid sequences replaced).
        payload: String,
        /// Whether the broker delivered it as retained.
        retain: bool,
    },
}

impl Reply {
    /// An `error` reply.
    pub fn error(id: Option<Value>, code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::Error {
            id,
            code,
            message: message.into(),
        }
    }
}

/// The two fields every request may have, read before the operation itself. Every other field
/// is skipped without being built, so this pass allocates at most the `op` and `id` values.
#[derive(Deserialize)]
struct Head {
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    #[serde(default)]
    op: Option<Value>,
}

/// `Some` for any value, `null` included: a request's `"id": null` is echoed as such.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Decodes one line (without its newline; a trailing `\r` is tolerated).
///
/// Two passes over the bytes, both without an intermediate JSON tree: the head (`op`, `id`), so
/// that an error can carry the `id` and name the `op`, then the operation straight into its
/// [`Op`] variant. This is the bridge's per-message path (docs/benchmarks.md, throughput).
pub fn decode_request(line: &[u8]) -> Result<Request, DecodeError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // Checked first: a struct would also accept a JSON array (`[id, op]`).
    if line.trim_ascii_start().first() != Some(&b'{') {
        return Err(DecodeError {
            id: None,
            code: ErrorCode::BadJson,
            message: match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                Ok(_) => "expected a json object".into(),
                Err(e) => format!("invalid json: {e}"),
            },
        });
    }
    let head: Head = serde_json::from_slice(line).map_err(|e| DecodeError {
        id: None,
        // Valid JSON that is still not a request head: a duplicated `op` or `id`.
        code: if e.is_data() {
            ErrorCode::BadRequest
        } else {
            ErrorCode::BadJson
        },
        message: if e.is_data() {
            e.to_string()
        } else {
            format!("invalid json: {e}")
        },
    })?;
    let Head { id, op } = head;
    let name = match op {
        Some(Value::String(name)) => name,
        Some(_) => {
            return Err(DecodeError {
                id,
                code: ErrorCode::UnknownOp,
                message: "\"op\" must be a string".into(),
            });
        }
        None => {
            return Err(DecodeError {
                id,
                code: ErrorCode::UnknownOp,
                message: "missing \"op\"".into(),
            });
        }
    };
    if !OPS.contains(&name.as_str()) {
        return Err(DecodeError {
            id,
            code: ErrorCode::UnknownOp,
            message: format!("unknown op {name:?}"),
        });
    }
    let mut op: Op = match serde_json::from_slice(line) {
        Ok(op) => op,
        Err(e) => {
            return Err(DecodeError {
                id,
                code: ErrorCode::BadRequest,
                message: format!("{name}: {e}"),
            });
        }
    };
    // `extra` collects every field the variant does not name, the request's own `id` among
    // them: it is the line protocol's, not part of the device error the platform receives.
    if let Op::Error { extra, .. } = &mut op {
        extra.remove("id");
    }
    let request = Request { id, op };
    if let Err(message) = validate(&request) {
        return Err(DecodeError {
            id: request.id,
            code: ErrorCode::BadRequest,
            message: format!("{name}: {message}"),
        });
    }
    Ok(request)
}

fn validate(r: &Request) -> Result<(), String> {
    use crate::topics::valid_segment;
    let device = match &r.op {
        Op::State { device_id, .. }
        | Op::Event { device_id, .. }
        | Op::Error { device_id, .. }
        | Op::Telemetry { device_id, .. } => Some(device_id.as_str()),
        Op::CmdResult { device_id, .. } => device_id.as_deref(),
        Op::Hello {
            devices: Some(DeviceSet::Some(list)),
            ..
        } => {
            if let Some(bad) = list.iter().find(|d| !valid_segment(d)) {
                return Err(format!("invalid device_id {bad:?}"));
            }
            None
        }
        Op::Publish { qos: Some(q), .. } if *q > 2 => return Err("qos must be 0, 1 or 2".into()),
        Op::HaDiscovery {
            device_id,
            component,
            entity,
            ..
        } => {
            let word = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            };
            if !word(component) {
                return Err(format!("invalid component {component:?}"));
            }
            if let Some(e) = entity.as_deref().filter(|e| !word(e)) {
                return Err(format!("invalid entity {e:?}"));
            }
            Some(device_id.as_str())
        }
        _ => None,
    };
    if let Some(d) = device
        && !valid_segment(d)
    {
        return Err(format!(
            "invalid device_id {d:?}: must be non-empty without '/', '+' or '#'"
        ));
    }
    if let Op::Event { event, .. } = &r.op
        && event.is_empty()
    {
        return Err("event must not be empty".into());
    }
    if let Op::Error { severity, .. } = &r.op
        && !["info", "warning", "error", "critical"].contains(&severity.as_str())
    {
        return Err(format!(
            "severity {severity:?} is not one of info, warning, error, critical"
        ));
    }
    Ok(())
}

/// Encodes a request as one line including its newline (the client side).
pub fn encode_request(r: &Request) -> String {
    let mut s = serde_json::to_string(r).unwrap_or_else(|_| "{}".to_string());
    s.push('\n');
    s
}

/// Encodes a reply as one line including its newline.
pub fn encode_reply(r: &Reply) -> String {
    // The reply to nearly every request, so it skips the serializer.
    if let Reply::Ok { id: None } = r {
        return "{\"op\":\"ok\"}\n".to_string();
    }
    // Serializing these types cannot fail: every map key is a string.
    let mut s = serde_json::to_string(r).unwrap_or_else(|_| "{}".to_string());
    s.push('\n');
    s
}

/// Decodes a reply line (the client side: `publish` verb and tests).
pub fn decode_reply(line: &[u8]) -> Result<Reply, serde_json::Error> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    serde_json::from_slice(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn dec(s: &str) -> Result<Request, DecodeError> {
        decode_request(s.as_bytes())
    }

    #[test]
    fn documented_examples_decode() {
        let r = dec(r#"{"op":"hello","id":1,"devices":["lamp1","lamp2"]}"#).unwrap();
        assert_eq!(r.id, Some(json!(1)));
        assert!(matches!(
            r.op,
            Op::Hello {
                devices: Some(DeviceSet::Some(_)),
                meta: false
            }
        ));
        let r = dec(r#"{"op":"hello","devices":"*","meta":true}"#).unwrap();
        assert!(matches!(
            r.op,
            Op::Hello {
                devices: Some(DeviceSet::All(_)),
                meta: true
            }
        ));
        let r =
            dec(r#"{"op":"state","device_id":"lamp1","state":{"on":true,"online":true}}"#).unwrap();
        assert!(matches!(r.op, Op::State { replace: false, .. }));
        let r = dec(r#"{"op":"error","device_id":"d","error_code":"E1","message":"m"}"#).unwrap();
        assert!(matches!(r.op, Op::Error { ref severity, .. } if severity == "error"));
        dec(r#"{"op":"cmd_result","cmd_id":"c1","device_id":"d","status":"success","result":{"on":true}}"#).unwrap();
        dec(r#"{"op":"ready"}"#).unwrap();
        dec(r#"{"op":"publish","topic":"a/b","payload":"x","retain":true}"#).unwrap();
        dec(r#"{"op":"event","device_id":"d","event":"pressed"}"#).unwrap();
        dec(r#"{"op":"telemetry","device_id":"d","metrics":{"rssi":-60}}"#).unwrap();
        dec(r#"{"op":"devices_list","devices":[{"device_id":"d"}]}"#).unwrap();
        dec(r#"{"op":"subscribe","topic":"x/#"}"#).unwrap();
        dec("{\"op\":\"ping\"}\r").unwrap();
        dec(r#"{"op":"stats","id":12}"#).unwrap();
    }

    #[test]
    fn discovery_ops_and_error_extras_decode() {
        let r = dec(r#"{"op":"discovered","id":13,"devices":[{"device_id":"bulb_7"}]}"#).unwrap();
        assert!(matches!(r.op, Op::Discovered { ref devices } if devices.len() == 1));
        let r = dec(r#"{"op":"ha_discovery","device_id":"plug","component":"sensor","entity":"rssi","config":{"name":"RSSI"}}"#).unwrap();
        assert!(matches!(
            r.op,
            Op::HaDiscovery {
                config: Some(_),
                ..
            }
        ));
        let r =
            dec(r#"{"op":"ha_discovery","device_id":"plug","component":"switch","config":null}"#)
                .unwrap();
        assert!(matches!(
            r.op,
            Op::HaDiscovery {
                config: None,
                entity: None,
                ..
            }
        ));
        for bad in [
            r#"{"op":"ha_discovery","device_id":"plug","component":"a/b","config":null}"#,
            r#"{"op":"ha_discovery","device_id":"plug","component":"x","entity":"+","config":null}"#,
            r#"{"op":"ha_discovery","device_id":"a#","component":"x","config":null}"#,
            r#"{"op":"ha_discovery","device_id":"plug","component":"x","config":[1]}"#,
        ] {
            assert_eq!(dec(bad).unwrap_err().code, ErrorCode::BadRequest, "{bad}");
        }
        let r = dec(r#"{"op":"error","id":4,"device_id":"d","error_code":"E","message":"m","retry_info":{"attempt":3},"source":"poller"}"#).unwrap();
        let Op::Error {
            retry_info, extra, ..
        } = r.op
        else {
            panic!("not an error");
        };
        assert_eq!(retry_info.unwrap()["attempt"], 3);
        assert_eq!(extra["source"], "poller");
        assert!(
            !extra.contains_key("id"),
            "the request id is not an extra: {extra:?}"
        );
        let e =
            dec(r#"{"op":"error","device_id":"d","error_code":"E","message":"m","message":"n"}"#)
                .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    /// Found by the `socket_line` fuzz target on its seed corpus: the request id also landed in
    /// the error's extras, so the re-encoded line named `id` twice and no longer decoded (and
    /// the published error object carried the program's request id).
    #[test]
    fn an_error_request_round_trips_with_its_id() {
        let line = r#"{"op":"error","id":4,"device_id":"lamp1","error_code":"E_TIMEOUT","message":"no answer from lamp","severity":"warning"}"#;
        let req = dec(line).unwrap();
        let again = encode_request(&req);
        assert_eq!(dec(again.trim_end()).unwrap(), req, "{again}");
    }

    #[test]
    fn errors_carry_code_and_id() {
        let e = dec("not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadJson);
        let e = dec("[1,2]").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadJson);
        assert_eq!(e.message, "expected a json object");
        let e = dec(r#"  ["state"  "#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadJson);
        assert!(e.message.starts_with("invalid json"), "{}", e.message);
        let e = dec(r#"{"op":"ping"} trailing"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadJson);
        let e = dec(r#"{"op":"ping","op":"stats"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("duplicate field `op`"), "{}", e.message);
        let e = dec(r#"{"op":"event","device_id":"d","event":"e","event":"f"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(
            e.message.starts_with("event: duplicate field"),
            "{}",
            e.message
        );
        // An explicit null id is echoed as such, as any other id value.
        let e = dec(r#"{"id":null,"op":"launch"}"#).unwrap_err();
        assert_eq!(e.id, Some(Value::Null));
        let r = dec(r#"{"extra":{"deep":[1,{"x":"\u00e9"}]},"op":"ping","id":[1]}"#).unwrap();
        assert_eq!((r.id, r.op), (Some(json!([1])), Op::Ping));
        let e = dec(r#"{"id":"x","op":"launch"}"#).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::UnknownOp, Some(json!("x"))));
        let e = dec(r#"{"id":7}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownOp);
        let e = dec(r#"{"id":7,"op":"state","device_id":"d"}"#).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::BadRequest, Some(json!(7))));
        assert!(e.message.contains("state"), "{}", e.message);
        let e = dec(r#"{"op":"state","device_id":"a/b","state":{}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = dec(
            r#"{"op":"error","device_id":"d","error_code":"E","message":"m","severity":"fatal"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn requests_round_trip() {
        let reqs = [
            Request {
                id: Some(json!("a")),
                op: Op::State {
                    device_id: "d".into(),
                    state: json!({"on": true}).as_object().unwrap().clone(),
                    replace: true,
                },
            },
            Request {
                id: None,
                op: Op::Ready,
            },
            Request {
                id: Some(json!(3)),
                op: Op::CmdResult {
                    device_id: Some("d".into()),
                    cmd_id: "c".into(),
                    status: CmdStatus::Error,
                    result: None,
                    error: Some(json!("boom")),
                },
            },
        ];
        for r in reqs {
            let line = encode_request(&r);
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(dec(line.trim_end()).unwrap(), r);
        }
    }

    #[test]
    fn replies_round_trip() {
        let replies = [
            Reply::Ok { id: Some(json!(1)) },
            Reply::Ok { id: None },
            Reply::error(None, ErrorCode::LineTooLong, "too long"),
            Reply::Cmd {
                device_id: "d".into(),
                cmd_id: "c".into(),
                values: json!({"on": true}).as_object().unwrap().clone(),
                timeout: 5000,
                timestamp: "2025-01-01T00:00:00.000+00:00".into(),
            },
            Reply::Get {
                device_id: "d".into(),
                properties: Some(vec!["on".into()]),
            },
            Reply::MetaRequest {
                kind: "info".into(),
                payload: Value::Null,
            },
            Reply::Message {
                topic: "t".into(),
                payload: "p\n".into(),
                retain: false,
            },
            Reply::Stats {
                id: Some(json!(12)),
                stats: sv_core::health::BridgeStats {
                    connected: true,
                    published_total: 5,
                    ..Default::default()
                },
            },
        ];
        for r in replies {
            let line = encode_reply(&r);
            assert!(!line[..line.len() - 1].contains('\n'));
            assert_eq!(decode_reply(line.trim_end().as_bytes()).unwrap(), r);
        }
        // The shortcut for the common reply says what the serializer would.
        assert_eq!(
            encode_reply(&Reply::Ok { id: None }),
            serde_json::to_string(&Reply::Ok { id: None }).unwrap() + "\n"
        );
        assert_eq!(
            encode_reply(&Reply::error(Some(json!(2)), ErrorCode::Forbidden, "no")),
            "{\"op\":\"error\",\"id\":2,\"code\":\"forbidden\",\"message\":\"no\"}\n"
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(&bytes);
        }

        #[test]
        fn any_json_object_decodes_without_panic(
            op in prop::sample::select(OPS.to_vec()),
            key in "[a-z_]{1,10}",
            n in any::<i64>(),
            s in ".{0,20}",
        ) {
            let line = json!({"op": op, key.clone(): n, "device_id": s, "state": {key: n}}).to_string();
            let _ = decode_request(line.as_bytes());
        }
    }
}
