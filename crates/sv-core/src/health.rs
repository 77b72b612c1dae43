//! Health and metrics rendering of a [`Snapshot`] (pure).
//!
//! The HTTP server (`sv-runtime::http`) serves what these functions return; keeping them here
//! means the exact bytes a monitoring system sees are unit-tested without a socket.
//!
//! - [`health_json`]: the body of `/health` and `/ready`, in the style of the IETF draft
//!   "Health Check Response Format for HTTP APIs" (`application/health+json`): an overall
//!   `status` of `pass` or `fail`, an `output` saying why, and one check per program under the
//!   key `program:<name>`.
//! - [`metrics_text`]: the Prometheus text exposition format, version 0.0.4.
//! - [`supervisor_metrics_text`]: the supervisor process's own figures (log lines dropped).
//! - [`bridge_metrics_text`]: the `iot2mqtt_sv_bridge_*` families, appended to the metrics when
//!   the config has a bridge. The figures are [`BridgeStats`], the bridge's answer to its
//!   `stats` request, pulled on demand by the HTTP handler; `None` (no answer) renders only
//!   `iot2mqtt_sv_bridge_up 0`.
//!
//! The text format is rendered here rather than through `prometheus-client`: that crate only
//! emits OpenMetrics and is built around a long-lived registry of atomic metrics, whereas this
//! is a point-in-time rendering of a snapshot into four line shapes (`# HELP`, `# TYPE`,
//! `name{labels} value`), and the pure core stays free of dependencies. The escaping rules of
//! the format (label values escape `\`, `"` and newline; help text escapes `\` and newline) are
//! covered by tests below.
//!
//! Invariants: every metric family has exactly one `# HELP` and one `# TYPE` line before its
//! samples; label values are always escaped; no sample value is ever rendered in a form the
//! format rejects (non-finite floats are `NaN`, `+Inf`, `-Inf`).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::machine::{Snapshot, State};

/// The content type of [`health_json`] bodies.
pub const HEALTH_CONTENT_TYPE: &str = "application/health+json";

/// The content type of [`metrics_text`] bodies.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every state a program can be in, as `iot2mqtt_sv_program_state` enumerates them.
const STATES: [State; 7] = [
    State::Stopped,
    State::Starting,
    State::Running,
    State::Backoff,
    State::Stopping,
    State::Exited,
    State::Fatal,
];

fn pass_fail(ok: bool) -> &'static str {
    if ok { "pass" } else { "fail" }
}

/// The health document for `snap`:
/// `{"status":"pass"|"fail","output":"<reason>","checks":{"program:<name>":[{...}]}}`.
///
/// Each program check has `status` (from the program's `healthy`), `observedValue` (its state
/// name), `componentType` `"process"`, `critical`, and `output` when there is a reason or an
/// sd_notify status text to show.
pub fn health_json(snap: &Snapshot) -> Value {
    let mut checks = Map::new();
    for p in &snap.programs {
        let mut check = Map::new();
        check.insert("componentType".into(), json!("process"));
        check.insert("status".into(), json!(pass_fail(p.healthy)));
        check.insert("observedValue".into(), json!(p.state));
        check.insert("critical".into(), json!(p.critical));
        if let Some(out) = p.reason.as_ref().or(p.status_text.as_ref()) {
            check.insert("output".into(), json!(out));
        }
        checks.insert(
            format!("program:{}", p.name),
            Value::Array(vec![Value::Object(check)]),
        );
    }
    json!({
        "status": pass_fail(snap.healthy),
        "output": snap.reason,
        "checks": checks,
    })
}

/// The health document for a supervisor whose main loop did not answer: `status` `fail` with
/// `reason`, and no checks (nothing is known about the programs).
pub fn unresponsive_json(reason: &str) -> Value {
    json!({ "status": "fail", "output": reason, "checks": {} })
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes help text: backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Appends one metric family: its HELP and TYPE lines, then its samples.
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: &[(Vec<(&str, &str)>, String)],
) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        out.push_str(name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", escape_label(v));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }
}

/// The Prometheus text exposition (format 0.0.4) of `snap`:
///
/// - `iot2mqtt_sv_program_state{program,state}`: 1 for the current state, 0 for the others;
/// - `iot2mqtt_sv_program_restarts_total{program}`;
/// - `iot2mqtt_sv_program_uptime_seconds{program}`: 0 when no process is running;
/// - `iot2mqtt_sv_program_last_exit_code{program}`: only once the program has exited;
/// - `iot2mqtt_sv_program_ready{program}`: 1 or 0;
/// - `iot2mqtt_sv_program_probe_failures_total{program}`;
/// - `iot2mqtt_sv_program_log_file_dropped_lines_total{program}`: only programs with a `log_file`;
/// - `iot2mqtt_sv_program_scheduled_runs_total`, `…_failed_runs_total`, `…_skipped_runs_total`
///   `{program}`: only scheduled programs;
/// - `iot2mqtt_sv_program_restart_limit_failures{program}`: only with `restart_limit`;
/// - `iot2mqtt_sv_program_memory_restarts_total{program}`: only with `max_rss`;
/// - `iot2mqtt_sv_healthy`: 1 or 0.
pub fn metrics_text(snap: &Snapshot) -> String {
    let mut out = String::new();
    let progs = &snap.programs;
    let per_program = |f: &dyn Fn(&crate::machine::ProgramStatus) -> Option<String>| {
        progs
            .iter()
            .filter_map(|p| f(p).map(|v| (vec![("program", p.name.as_str())], v)))
            .collect::<Vec<_>>()
    };

    let mut states = Vec::new();
    for p in progs {
        for s in STATES {
            let v = if s == p.state { "1" } else { "0" };
            states.push((
                vec![("program", p.name.as_str()), ("state", s.name())],
                v.to_owned(),
            ));
        }
    }
    family(
        &mut out,
        "iot2mqtt_sv_program_state",
        "gauge",
        "Current state of each program: 1 for the state it is in, 0 for the others.",
        &states,
    );
    family(
        &mut out,
        "iot2mqtt_sv_program_restarts_total",
        "counter",
        "Restarts of each program since the supervisor started.",
        &per_program(&|p| Some(p.restarts.to_string())),
    );
    family(
        &mut out,
        "iot2mqtt_sv_program_uptime_seconds",
        "gauge",
        "Seconds since the program's current process was spawned (0 when not running).",
        &per_program(&|p| Some(float(p.uptime_s.unwrap_or(0.0)))),
    );
    family(
        &mut out,
        "iot2mqtt_sv_program_last_exit_code",
        "gauge",
        "Exit code of the program's last process (128 + signal when killed by a signal).",
        &per_program(&|p| p.exit_status.map(|c| c.to_string())),
    );
    family(
        &mut out,
        "iot2mqtt_sv_program_ready",
        "gauge",
        "Whether the program passed its readiness check and is still running (1) or not (0).",
        &per_program(&|p| Some(u8::from(p.ready).to_string())),
    );
    family(
        &mut out,
        "iot2mqtt_sv_program_probe_failures_total",
        "counter",
        "Liveness probe and watchdog failures of each program since the supervisor started.",
        &per_program(&|p| Some(p.probe_failures.to_string())),
    );
    // Families of opt-in keys: absent unless some program sets the key.
    for (name, kind, help, samples) in [
        (
            "iot2mqtt_sv_program_memory_restarts_total",
            "counter",
            "Restarts of each program because its resident memory stayed above max_rss.",
            per_program(&|p| p.memory_restarts.map(|n| n.to_string())),
        ),
        (
            "iot2mqtt_sv_program_restart_limit_failures",
            "gauge",
            "Automatic restarts inside the program's restart_limit window.",
            per_program(&|p| p.restart_limit_failures.map(|n| n.to_string())),
        ),
    ] {
        if !samples.is_empty() {
            family(&mut out, name, kind, help, &samples);
        }
    }
    family(
        &mut out,
        "iot2mqtt_sv_program_log_file_dropped_lines_total",
        "counter",
        "Output lines not written to the program's log_file (slow or failing file; stdout has them).",
        &per_program(&|p| p.log_file_dropped_lines.map(|n| n.to_string())),
    );
    let scheduled = |f: &dyn Fn(&crate::schedule::ScheduleStatus) -> String| {
        per_program(&|p| p.schedule.as_ref().map(f))
    };
    family(
        &mut out,
        "iot2mqtt_sv_program_scheduled_runs_total",
        "counter",
        "Runs of a scheduled program that ended.",
        &scheduled(&|s| s.runs.to_string()),
    );
    family(
        &mut out,
        "iot2mqtt_sv_program_scheduled_failed_runs_total",
        "counter",
        "Runs of a scheduled program that ended with an exit code not in exitcodes.",
        &scheduled(&|s| s.failed_runs.to_string()),
    );
    family(
        &mut out,
        "iot2mqtt_sv_program_scheduled_skipped_runs_total",
        "counter",
        "Due runs of a scheduled program skipped because the previous run was still going.",
        &scheduled(&|s| s.skipped_runs.to_string()),
    );
    family(
        &mut out,
        "iot2mqtt_sv_healthy",
        "gauge",
        "Whether the supervisor is healthy (1): every critical program is ready.",
        &[(vec![], u8::from(snap.healthy).to_string())],
    );
    out
}

/// The bridge's figures since it started, as its `stats` request answers them
/// (`docs/protocol.md`). Counters restart at 0 when the bridge process restarts, which
/// Prometheus treats as a counter reset. Unknown fields are ignored and missing ones are 0, so a
/// supervisor and a bridge of different versions still agree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BridgeStats {
    /// Whether the broker connection is up (CONNACK received and not lost since).
    pub connected: bool,
    /// Whether the last instance status published is `online`.
    pub online: bool,
    /// Successful connections to the broker (the first one included).
    pub connects_total: u64,
    /// Connections lost or attempts failed.
    pub disconnects_total: u64,
    /// Messages the broker acknowledged (QoS 0: written to the connection).
    pub published_total: u64,
    /// Messages dropped from the outbox to stay within its bounds.
    pub dropped_total: u64,
    /// Messages in the outbox now (sent but unacknowledged included).
    pub outbox_messages: u64,
    /// Bytes (topics and payloads) in the outbox now.
    pub outbox_bytes: u64,
    /// Program connections open now.
    pub clients: u64,
    /// Requests received from programs.
    pub requests_total: u64,
    /// Requests answered with an `error`.
    pub refused_total: u64,
    /// Lines for a program dropped because it did not read its socket.
    pub client_drops_total: u64,
    /// Commands delivered to programs.
    pub commands_total: u64,
    /// Commands that failed (no handler, timeout, busy or gone handler, expired, invalid).
    pub command_failures_total: u64,
    /// Commands answered by a program with `cmd_result`.
    pub command_results_total: u64,
}

/// The supervisor process's own figures, appended to [`metrics_text`]:
/// `iot2mqtt_sv_log_lines_dropped_total`, the supervisor's own log lines dropped because its
/// stdout/stderr stalled.
pub fn supervisor_metrics_text(log_lines_dropped: u64) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "iot2mqtt_sv_log_lines_dropped_total",
        "counter",
        "Supervisor log lines dropped because its stdout/stderr did not keep up.",
        &[(vec![], log_lines_dropped.to_string())],
    );
    out
}

/// The `iot2mqtt_sv_bridge_*` metric families for `stats` (`None`: the bridge did not answer):
///
/// - `iot2mqtt_sv_bridge_up`: 1 when the bridge answered;
/// - `iot2mqtt_sv_bridge_connected`, `iot2mqtt_sv_bridge_online`: 1 or 0;
/// - `iot2mqtt_sv_bridge_connects_total`, `…_disconnects_total`;
/// - `iot2mqtt_sv_bridge_published_total`, `…_dropped_total` (outbox overflow);
/// - `iot2mqtt_sv_bridge_outbox_messages`, `…_outbox_bytes`;
/// - `iot2mqtt_sv_bridge_clients`, `…_requests_total`, `…_refused_total`, `…_client_drops_total`;
/// - `iot2mqtt_sv_bridge_commands_total`, `…_command_failures_total`, `…_command_results_total`.
pub fn bridge_metrics_text(stats: Option<&BridgeStats>) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "iot2mqtt_sv_bridge_up",
        "gauge",
        "Whether the MQTT bridge answered the stats request (1) or not (0).",
        &[(vec![], u8::from(stats.is_some()).to_string())],
    );
    let Some(s) = stats else {
        return out;
    };
    let families: [(&str, &str, &str, u64); 15] = [
        (
            "connected",
            "gauge",
            "Whether the bridge is connected to the broker.",
            u64::from(s.connected),
        ),
        (
            "online",
            "gauge",
            "Whether the instance status last published is online.",
            u64::from(s.online),
        ),
        (
            "connects_total",
            "counter",
            "Successful broker connections since the bridge started.",
            s.connects_total,
        ),
        (
            "disconnects_total",
            "counter",
            "Broker connections lost or attempts failed since the bridge started.",
            s.disconnects_total,
        ),
        (
            "published_total",
            "counter",
            "Messages acknowledged by the broker since the bridge started.",
            s.published_total,
        ),
        (
            "dropped_total",
            "counter",
            "Messages dropped from the outbox to stay within outbox_max_messages or outbox_max_bytes.",
            s.dropped_total,
        ),
        (
            "outbox_messages",
            "gauge",
            "Messages waiting in the outbox (unacknowledged included).",
            s.outbox_messages,
        ),
        (
            "outbox_bytes",
            "gauge",
            "Bytes (topics and payloads) waiting in the outbox.",
            s.outbox_bytes,
        ),
        (
            "clients",
            "gauge",
            "Program connections to the bridge socket.",
            s.clients,
        ),
        (
            "requests_total",
            "counter",
            "Requests received from programs.",
            s.requests_total,
        ),
        (
            "refused_total",
            "counter",
            "Requests answered with an error.",
            s.refused_total,
        ),
        (
            "client_drops_total",
            "counter",
            "Lines for programs dropped because the program did not read its socket.",
            s.client_drops_total,
        ),
        (
            "commands_total",
            "counter",
            "MQTT commands delivered to programs.",
            s.commands_total,
        ),
        (
            "command_failures_total",
            "counter",
            "MQTT commands answered with an error by the bridge (no handler, timeout, busy, gone, expired, invalid).",
            s.command_failures_total,
        ),
        (
            "command_results_total",
            "counter",
            "Command results received from programs.",
            s.command_results_total,
        ),
    ];
    for (suffix, kind, help, v) in families {
        family(
            &mut out,
            &format!("iot2mqtt_sv_bridge_{suffix}"),
            kind,
            help,
            &[(vec![], v.to_string())],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::ProgramStatus;

    #[test]
    fn bridge_families_render_the_stats_or_only_up_0() {
        assert_eq!(
            bridge_metrics_text(None)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            ["iot2mqtt_sv_bridge_up 0"]
        );
        let s = BridgeStats {
            connected: true,
            dropped_total: 7,
            outbox_messages: 3,
            ..BridgeStats::default()
        };
        let text = bridge_metrics_text(Some(&s));
        for want in [
            "iot2mqtt_sv_bridge_up 1",
            "iot2mqtt_sv_bridge_connected 1",
            "iot2mqtt_sv_bridge_online 0",
            "iot2mqtt_sv_bridge_dropped_total 7",
            "iot2mqtt_sv_bridge_outbox_messages 3",
            "# TYPE iot2mqtt_sv_bridge_dropped_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "missing {want:?} in\n{text}"
            );
        }
        // Missing fields are 0 and unknown ones are ignored (version skew).
        let parsed: BridgeStats =
            serde_json::from_str(r#"{"connected":true,"future":1}"#).expect("stats");
        assert!(parsed.connected && parsed.published_total == 0);
    }

    fn program(name: &str, state: State, healthy: bool) -> ProgramStatus {
        ProgramStatus {
            name: name.into(),
            group: None,
            state,
            blocked_on: None,
            pid: Some(42),
            ready: healthy,
            healthy,
            critical: true,
            readiness: "startsecs",
            restarts: 3,
            exit_status: None,
            uptime_s: Some(12.5),
            reason: None,
            status_text: None,
            probe_failures: 1,
            log_file_dropped_lines: None,
            schedule: None,
            restart_limit_failures: None,
            memory_restarts: None,
        }
    }

    fn snapshot(programs: Vec<ProgramStatus>, healthy: bool, reason: &str) -> Snapshot {
        Snapshot {
            programs,
            healthy,
            reason: reason.into(),
            shutting_down: false,
        }
    }

    #[test]
    fn healthy_document_passes_with_a_check_per_program() {
        let mut web = program("web", State::Running, true);
        web.status_text = Some("serving".into());
        let snap = snapshot(
            vec![program("db", State::Running, true), web],
            true,
            "all critical programs ready",
        );
        let doc = health_json(&snap);
        assert_eq!(doc["status"], "pass");
        assert_eq!(doc["output"], "all critical programs ready");
        let db = &doc["checks"]["program:db"][0];
        assert_eq!(db["status"], "pass");
        assert_eq!(db["observedValue"], "RUNNING");
        assert_eq!(db["componentType"], "process");
        assert!(db.get("output").is_none());
        assert_eq!(doc["checks"]["program:web"][0]["output"], "serving");
    }

    #[test]
    fn unhealthy_document_fails_and_says_why() {
        let mut db = program("db", State::Backoff, false);
        db.reason = Some("exited with code 1".into());
        let snap = snapshot(vec![db], false, "db is not ready: exited with code 1");
        let doc = health_json(&snap);
        assert_eq!(doc["status"], "fail");
        assert_eq!(doc["output"], "db is not ready: exited with code 1");
        let c = &doc["checks"]["program:db"][0];
        assert_eq!(c["status"], "fail");
        assert_eq!(c["observedValue"], "BACKOFF");
        assert_eq!(c["output"], "exited with code 1");
    }

    #[test]
    fn unresponsive_document_fails() {
        let doc = unresponsive_json("supervisor loop not responding");
        assert_eq!(doc["status"], "fail");
        assert_eq!(doc["output"], "supervisor loop not responding");
        assert!(doc["checks"].as_object().is_some_and(|m| m.is_empty()));
    }

    #[test]
    fn memory_and_restart_limit_families_appear_only_for_programs_that_set_them() {
        let plain = snapshot(vec![program("web", State::Running, true)], true, "ok");
        let text = metrics_text(&plain);
        assert!(!text.contains("memory_restarts") && !text.contains("restart_limit"));
        let mut leaky = program("leaky", State::Running, true);
        leaky.memory_restarts = Some(2);
        leaky.restart_limit_failures = Some(1);
        let text = metrics_text(&snapshot(vec![leaky], true, "ok"));
        for want in [
            "# TYPE iot2mqtt_sv_program_memory_restarts_total counter",
            r#"iot2mqtt_sv_program_memory_restarts_total{program="leaky"} 2"#,
            "# TYPE iot2mqtt_sv_program_restart_limit_failures gauge",
            r#"iot2mqtt_sv_program_restart_limit_failures{program="leaky"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "missing {want:?} in\n{text}"
            );
        }
    }

    #[test]
    fn metrics_have_every_family_with_help_and_type() {
        let mut db = program("db", State::Exited, false);
        db.exit_status = Some(137);
        db.uptime_s = None;
        let snap = snapshot(
            vec![db, program("web", State::Running, true)],
            false,
            "db exited",
        );
        let text = metrics_text(&snap);
        let lines: Vec<&str> = text.lines().collect();
        for (name, kind) in [
            ("iot2mqtt_sv_program_state", "gauge"),
            ("iot2mqtt_sv_program_restarts_total", "counter"),
            ("iot2mqtt_sv_program_uptime_seconds", "gauge"),
            ("iot2mqtt_sv_program_last_exit_code", "gauge"),
            ("iot2mqtt_sv_program_ready", "gauge"),
            ("iot2mqtt_sv_program_probe_failures_total", "counter"),
            ("iot2mqtt_sv_healthy", "gauge"),
        ] {
            let help = format!("# HELP {name} ");
            let ty = format!("# TYPE {name} {kind}");
            assert_eq!(
                lines.iter().filter(|l| l.starts_with(&help)).count(),
                1,
                "{name}"
            );
            assert_eq!(lines.iter().filter(|l| **l == ty).count(), 1, "{name}");
        }
        for want in [
            r#"iot2mqtt_sv_program_state{program="db",state="EXITED"} 1"#,
            r#"iot2mqtt_sv_program_state{program="db",state="RUNNING"} 0"#,
            r#"iot2mqtt_sv_program_state{program="web",state="RUNNING"} 1"#,
            r#"iot2mqtt_sv_program_restarts_total{program="web"} 3"#,
            r#"iot2mqtt_sv_program_uptime_seconds{program="web"} 12.5"#,
            r#"iot2mqtt_sv_program_uptime_seconds{program="db"} 0"#,
            r#"iot2mqtt_sv_program_last_exit_code{program="db"} 137"#,
            r#"iot2mqtt_sv_program_ready{program="db"} 0"#,
            r#"iot2mqtt_sv_program_ready{program="web"} 1"#,
            r#"iot2mqtt_sv_program_probe_failures_total{program="db"} 1"#,
            "iot2mqtt_sv_healthy 0",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in\n{text}");
        }
        // No exit yet: no sample rather than a misleading 0.
        assert!(!text.contains(r#"iot2mqtt_sv_program_last_exit_code{program="web"}"#));
        // Exactly one state is 1 per program.
        let ones = lines
            .iter()
            .filter(|l| l.starts_with("iot2mqtt_sv_program_state{") && l.ends_with(" 1"))
            .count();
        assert_eq!(ones, 2);
    }

    #[test]
    fn every_sample_line_has_the_exposition_shape() {
        let snap = snapshot(
            vec![program("a.b-c_1", State::Starting, false)],
            false,
            "starting",
        );
        let shape = regex::Regex::new(
            r#"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*"(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*")*\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$"#,
        )
        .expect("regex");
        for line in metrics_text(&snap).lines() {
            if line.starts_with('#') {
                assert!(
                    line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                    "{line}"
                );
            } else {
                assert!(shape.is_match(line), "bad sample line {line:?}");
            }
        }
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("x\\y\nz\"q"), "x\\\\y\\nz\"q");
        let snap = snapshot(vec![program("we\"ird\n", State::Running, true)], true, "ok");
        assert!(metrics_text(&snap).contains(r#"{program="we\"ird\n"} 3"#));
    }

    #[test]
    fn non_finite_floats_use_the_format_spelling() {
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(0.25), "0.25");
    }
}
