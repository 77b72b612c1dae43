//! The control protocol: newline-delimited JSON over the supervisor's Unix stream socket.
//!
//! One request object per line, one reply object per line (`watch` and `logs` with `follow`
//! keep streaming). Every reply carries `"ok"`; failures carry a stable `error.code` and a
//! human `error.message`. The socket is mode 0600 by default: whoever can open it is the
//! operator, so there is no further authentication and no TCP variant at all.
//! `docs/control-protocol.md` documents every message with an example.
//!
//! The wire types live here, shared by the server (in the supervisor) and the client (the CLI
//! verbs), so the two cannot drift apart.

use serde::{Deserialize, Serialize};

/// A request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Unknown fields are ignored, as in the bridge protocol, so newer clients work with older
// supervisors.
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Every program with state, pid, restarts, health, CPU and memory.
    Status,
    /// Overall health, answered by the supervisor's own loop.
    Health,
    /// Start programs (`["all"]` for every program); waits until they are ready or failed.
    Start { programs: Vec<String> },
    /// Stop programs; waits until they have exited.
    Stop { programs: Vec<String> },
    /// Stop then start programs.
    Restart { programs: Vec<String> },
    /// Send a signal to programs' process groups.
    Signal {
        signal: String,
        programs: Vec<String>,
    },
    /// The supervisor's pid, or a program's.
    Pid {
        #[serde(default)]
        program: Option<String>,
    },
    /// Recent output lines of a program; with `follow`, new lines as they come.
    Logs {
        program: String,
        #[serde(default = "default_lines")]
        lines: usize,
        #[serde(default)]
        follow: bool,
    },
    /// A status object now and on every change (used by the bridge).
    Watch,
    /// Read the config file again and apply what changed (`dry_run`: only answer the plan).
    Reload {
        #[serde(default)]
        dry_run: bool,
    },
    /// Readiness of kind `bridge`, reported by the bridge on behalf of a program.
    Ready {
        program: String,
        #[serde(default)]
        pid: Option<i32>,
    },
}

fn default_lines() -> usize {
    50
}

/// Stable error codes of the control protocol.
pub mod code {
    /// The line was not a valid request.
    pub const BAD_REQUEST: &str = "bad_request";
    /// A program name is not in the config.
    pub const UNKNOWN_PROGRAM: &str = "unknown_program";
    /// A signal name is not known.
    pub const UNKNOWN_SIGNAL: &str = "unknown_signal";
    /// The supervisor is shutting down and takes no more orders.
    pub const SHUTTING_DOWN: &str = "shutting_down";
    /// The operation was carried out but did not reach its goal (e.g. a program went FATAL).
    pub const FAILED: &str = "failed";
    /// The request is valid but does not apply (e.g. `ready` for a program without bridge readiness).
    pub const NOT_APPLICABLE: &str = "not_applicable";
    /// The connection was refused: `max_control_connections` are open already. Sent unasked,
    /// as the only line, before the supervisor closes the connection.
    pub const BUSY: &str = "busy";
    /// `reload`: the config file is invalid (every problem is in `errors`); nothing changed.
    pub const INVALID_CONFIG: &str = "invalid_config";
}

/// A failure reply's `error` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One of [`code`].
    pub code: String,
    /// Lower-case, human-readable.
    pub message: String,
}

/// Builds a failure reply.
pub fn error_reply(code: &str, message: impl Into<String>) -> serde_json::Value {
    serde_json::json!({"ok": false, "error": {"code": code, "message": message.into()}})
}

/// Builds a success reply with extra fields merged in.
pub fn ok_reply(fields: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({"ok": true});
    if let (Some(obj), serde_json::Value::Object(extra)) = (v.as_object_mut(), fields) {
        obj.extend(extra);
    }
    v
}

/// Parses one request line, mapping serde's message into a protocol error.
pub fn parse_request(line: &str) -> Result<Request, serde_json::Value> {
    serde_json::from_str(line)
        .map_err(|e| error_reply(code::BAD_REQUEST, format!("invalid request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let all = [
            Request::Status,
            Request::Health,
            Request::Start {
                programs: vec!["a".into()],
            },
            Request::Stop {
                programs: vec!["all".into()],
            },
            Request::Restart {
                programs: vec!["b".into()],
            },
            Request::Signal {
                signal: "HUP".into(),
                programs: vec!["a".into()],
            },
            Request::Pid { program: None },
            Request::Logs {
                program: "a".into(),
                lines: 10,
                follow: true,
            },
            Request::Watch,
            Request::Reload { dry_run: true },
            Request::Ready {
                program: "a".into(),
                pid: Some(3),
            },
        ];
        for r in all {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(parse_request(&line).unwrap(), r, "{line}");
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert_eq!(
            parse_request(r#"{"op":"status","x":1}"#).unwrap(),
            Request::Status
        );
    }

    #[test]
    fn documented_examples_parse() {
        assert_eq!(
            parse_request(r#"{"op":"status"}"#).unwrap(),
            Request::Status
        );
        assert_eq!(
            parse_request(r#"{"op":"logs","program":"web"}"#).unwrap(),
            Request::Logs {
                program: "web".into(),
                lines: 50,
                follow: false
            }
        );
    }

    #[test]
    fn malformed_lines_are_bad_requests() {
        for bad in [
            "",
            "{",
            "[]",
            r#"{"op":"nope"}"#,
            r#"{"op":"start"}"#,
            "\u{0}",
        ] {
            let e = parse_request(bad).unwrap_err();
            assert_eq!(e["error"]["code"], code::BAD_REQUEST, "{bad:?}");
        }
    }
}
