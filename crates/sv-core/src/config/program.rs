//! `[program.NAME]` tables: every key, its type, default and per-program checks.
//!
//! Checks that need other programs (dependencies, reserved names) live in `graph.rs`; this
//! module hands them [`ProgramSpans`], the positions those checks report at.

use std::ops::Range;
use std::time::Duration;

use toml::de::DeValue;

use super::diag::Sink;
use super::expand::expand;
use super::instances::{self, Instances, MAX_NUMPROCS};
use super::model::{
    AutoRestart, BackoffConfig, DependencyCondition, LivenessConfig, MaxRss, OnDependencyRestart,
    OutputMode, ProgramConfig, ReadinessCheck, ReadinessConfig, RestartLimit, Rlimit,
};
use super::value::{Field, Table, display_key, with_article};
use crate::signal::Signal;

/// Every key a `[program.NAME]` table may have.
pub(super) const PROGRAM_KEYS: &[&str] = &[
    "command",
    "directory",
    "environment",
    "user",
    "umask",
    "priority",
    "autostart",
    "autorestart",
    "exitcodes",
    "startsecs",
    "startretries",
    "stopsignal",
    "stopwaitsecs",
    "stopasgroup",
    "killasgroup",
    "redirect_stderr",
    "output",
    "critical",
    "backoff",
    "ready",
    "liveness",
    "watchdog",
    "depends_on",
    "on_dependency_restart",
    "bridge_publish",
    "log_file",
    "schedule",
    "every",
    "run_on_start",
    "overlap",
    "env_file",
    "rlimits",
    "restart_limit",
    "max_rss",
    "numprocs",
    "numprocs_start",
    "process_name",
];

/// Why a supervisord `[program:x]` option has no counterpart here.
fn supervisord_hint(key: &str) -> Option<&'static str> {
    let output = key.starts_with("stdout_") || key.starts_with("stderr_");
    if output && key.contains("logfile") {
        Some(
            "output always goes to the supervisor's stdout; a copy in a rotated file is \
             log_file = { path, max_bytes, backups } (one file for both streams)",
        )
    } else if output {
        Some(
            "supervisord's capture and event options have no equivalent: output is captured and \
             written to the supervisor's stdout (see \"output\" and \"redirect_stderr\")",
        )
    } else if key == "serverurl" {
        Some("the control socket is set once, in [supervisor]")
    } else {
        None
    }
}

const BACKOFF_KEYS: &[&str] = &["initial", "max", "multiplier", "jitter", "reset_after"];

const READY_KINDS: &[&str] = &[
    "startsecs",
    "notify",
    "tcp",
    "http",
    "exec",
    "log",
    "bridge",
];
const READY_KEYS: &[&str] = &[
    "kind", "address", "port", "url", "command", "pattern", "timeout", "interval",
];

const LIVENESS_KINDS: &[&str] = &["tcp", "http", "exec"];
const LIVENESS_KEYS: &[&str] = &[
    "kind",
    "address",
    "port",
    "url",
    "command",
    "interval",
    "timeout",
    "failure_threshold",
    "initial_delay",
];

/// The keys that configure the probe of each kind (besides `kind` and the timing keys).
fn probe_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "tcp" => &["address", "port"],
        "http" => &["url"],
        "exec" => &["command"],
        "log" => &["pattern"],
        _ => &[],
    }
}

/// The timing keys a readiness kind uses: polling kinds have an interval, `startsecs` cannot
/// time out.
fn ready_timing_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "startsecs" => &[],
        "notify" | "bridge" | "log" => &["timeout"],
        _ => &["timeout", "interval"],
    }
}

/// One `depends_on` entry with its positions.
#[derive(Debug, Clone)]
pub(super) struct Dependency {
    pub(super) name: String,
    pub(super) name_span: Range<usize>,
    pub(super) condition: DependencyCondition,
    pub(super) condition_span: Range<usize>,
}

/// Where cross-program checks point.
#[derive(Debug, Clone)]
pub(super) struct ProgramSpans {
    /// The `NAME` in `[program.NAME]`.
    pub(super) name: Range<usize>,
    /// The `depends_on` key.
    pub(super) depends_on: Option<Range<usize>>,
    /// The entries of `depends_on`, in file order.
    pub(super) dependencies: Vec<Dependency>,
    /// The `kind` value when it is `"bridge"` (which needs a `[bridge]` table).
    pub(super) ready_bridge: Option<Range<usize>>,
    /// `numprocs`/`numprocs_start`/`process_name`, when any is given (and valid).
    pub(super) instances: Option<Instances>,
}

/// Reads an optional key: `None` when absent or wrong (the error is already recorded).
fn read<'a, 'i, T>(
    table: &Table<'a, 'i>,
    sink: &mut Sink,
    key: &str,
    f: impl FnOnce(&Field<'a, 'i>, &mut Sink) -> Option<T>,
) -> Option<T> {
    table.get(key).and_then(|field| f(&field, sink))
}

/// Validates one `[program.NAME]` table. Returns the program (defaults standing in for
/// whatever was wrong) and the positions later checks need.
pub(super) fn program(
    name: &str,
    field: &Field<'_, '_>,
    env: &dyn Fn(&str) -> Option<String>,
    sink: &mut Sink,
) -> Option<(ProgramConfig, ProgramSpans)> {
    let DeValue::Table(_) = field.get() else {
        sink.error(
            &field.span(),
            format!(
                "program \"{name}\" must be a table, found {}",
                with_article(field.get().type_str())
            ),
        );
        return None;
    };
    let table = field.table(sink, format!("[program.{}]", display_key(name)))?;
    table.check_keys_with(sink, PROGRAM_KEYS, supervisord_hint);
    let mut p = ProgramConfig::new(name, Vec::new());

    match table.get("command") {
        Some(f) => p.command = f.command(sink).unwrap_or_default(),
        None => sink.error(
            &table.span,
            format!("missing key \"command\" in {}", table.path),
        ),
    }
    p.directory = read(&table, sink, "directory", |f, s| f.path(s));
    if let Some(f) = table.get("environment") {
        environment(&table, &f, env, sink, &mut p);
    }
    if let Some(v) = read(&table, sink, "env_file", |f, s| f.absolute_paths(s)) {
        p.env_files = v;
    }
    if let Some(f) = table.get("restart_limit") {
        if let Some(t) = f.table(sink, table.child_path("restart_limit")) {
            t.check_keys(sink, &["burst", "within"]);
            let burst = read(&t, sink, "burst", |f, s| {
                f.int_in::<u32>(s, 1, u32::MAX.into())
            });
            let within = read(&t, sink, "within", |f, s| f.duration(s, true));
            for key in ["burst", "within"] {
                if t.get(key).is_none() {
                    sink.error(&t.span, format!("missing key \"{key}\" in {}", t.path));
                }
            }
            if let (Some(burst), Some(within)) = (burst, within) {
                p.restart_limit = Some(RestartLimit { burst, within });
            }
        }
    }
    if let Some(f) = table.get("max_rss") {
        p.max_rss = max_rss(&table, &f, sink);
    }
    if let Some(f) = table.get("rlimits") {
        if let Some(t) = f.table(sink, table.child_path("rlimits")) {
            let keys: Vec<&str> = Rlimit::ALL.iter().map(|(_, k)| *k).collect();
            t.check_keys(sink, &keys);
            for (limit, key) in Rlimit::ALL {
                if let Some(v) = read(&t, sink, key, |f, s| f.amount(s, limit.is_bytes(), true)) {
                    p.rlimits.push((limit, v));
                }
            }
        }
    }
    p.user = read(&table, sink, "user", |f, s| match f.get() {
        DeValue::Integer(_) => f
            .int_in::<u32>(s, 0, u32::MAX.into())
            .map(|u| u.to_string()),
        DeValue::String(_) => f.text(s),
        _ => {
            f.type_error(s, "a user name or a numeric uid");
            None
        }
    });
    p.umask = read(&table, sink, "umask", |f, s| f.mode(s));
    if let Some(v) = read(&table, sink, "priority", |f, s| {
        f.int_in(s, i32::MIN.into(), i32::MAX.into())
    }) {
        p.priority = v;
    }
    if let Some(v) = read(&table, sink, "autostart", |f, s| f.bool(s)) {
        p.autostart = v;
    }
    if let Some(v) = read(&table, sink, "autorestart", autorestart) {
        p.autorestart = v;
    }
    if let Some(v) = read(&table, sink, "exitcodes", exitcodes) {
        p.exitcodes = v;
    }
    if let Some(v) = read(&table, sink, "startsecs", |f, s| f.duration(s, false)) {
        p.startsecs = v;
    }
    if let Some(v) = read(&table, sink, "startretries", |f, s| {
        f.int_in(s, 0, u32::MAX.into())
    }) {
        p.startretries = v;
    }
    if let Some(v) = read(&table, sink, "stopsignal", |f, s| {
        let name = f.str(s)?;
        match name.parse::<Signal>() {
            Ok(sig) => Some(sig),
            Err(e) => {
                f.error(s, format!("\"stopsignal\": {e}"));
                None
            }
        }
    }) {
        p.stopsignal = v;
    }
    if let Some(v) = read(&table, sink, "stopwaitsecs", |f, s| f.duration(s, true)) {
        p.stopwaitsecs = v;
    }
    if let Some(v) = read(&table, sink, "stopasgroup", |f, s| f.bool(s)) {
        p.stopasgroup = v;
    }
    // supervisord: killasgroup follows stopasgroup unless set.
    p.killasgroup = read(&table, sink, "killasgroup", |f, s| f.bool(s)).unwrap_or(p.stopasgroup);
    if let Some(v) = read(&table, sink, "redirect_stderr", |f, s| f.bool(s)) {
        p.redirect_stderr = v;
    }
    if let Some(v) = read(&table, sink, "output", |f, s| {
        f.choice(s, &["capture", "inherit"])
    }) {
        p.output = match v {
            "inherit" => OutputMode::Inherit,
            _ => OutputMode::Capture,
        };
    }
    if let Some(v) = read(&table, sink, "critical", |f, s| f.bool(s)) {
        p.critical = v;
    }
    if let Some(f) = table.get("backoff") {
        if let Some(t) = f.table(sink, table.child_path("backoff")) {
            p.backoff = backoff(&t, sink);
        }
    }
    // The readiness kind, when known: no table means "startsecs".
    let mut ready_kind: Option<(&str, Range<usize>)> = Some(("startsecs", table.span.clone()));
    if let Some(f) = table.get("ready") {
        ready_kind = None;
        if let Some(t) = f.table(sink, table.child_path("ready")) {
            let (kind, readiness) = readiness(&t, sink);
            ready_kind = kind;
            if let Some(readiness) = readiness {
                p.readiness = readiness;
            }
        }
    }
    if let Some(f) = table.get("liveness") {
        if let Some(t) = f.table(sink, table.child_path("liveness")) {
            p.liveness = liveness(&t, sink);
        }
    }
    if let Some(f) = table.get("watchdog") {
        if let Some(d) = f.duration(sink, true) {
            match &ready_kind {
                Some(("notify", _)) => p.watchdog = Some(d),
                // An unknown kind is already reported.
                None => {}
                Some(_) => f.error(
                    sink,
                    "\"watchdog\" needs ready kind \"notify\" (WATCHDOG=1 pings arrive over sd_notify)",
                ),
            }
        }
    }
    if let Some((kind, span)) = &ready_kind {
        if *kind == "log" && p.output == OutputMode::Inherit {
            sink.error(
                span,
                "ready kind \"log\" needs output = \"capture\": with \"inherit\" the supervisor never sees the lines",
            );
        }
    }
    let mut spans = ProgramSpans {
        name: field.key_span.clone(),
        depends_on: None,
        dependencies: Vec::new(),
        ready_bridge: match &ready_kind {
            Some(("bridge", span)) => Some(span.clone()),
            _ => None,
        },
        instances: group(&table, field.key_span.clone(), sink),
    };
    if let Some(f) = table.get("depends_on") {
        spans.depends_on = Some(f.key_span.clone());
        spans.dependencies = depends_on(&f, sink);
        p.depends_on = spans
            .dependencies
            .iter()
            .map(|d| (d.name.clone(), d.condition))
            .collect();
    }
    if let Some(v) = read(&table, sink, "on_dependency_restart", |f, s| {
        f.choice(s, &["wait", "restart"])
    }) {
        p.on_dependency_restart = match v {
            "restart" => OnDependencyRestart::Restart,
            _ => OnDependencyRestart::Wait,
        };
    }
    if let Some(f) = table.get("bridge_publish") {
        p.bridge_publish = bridge_publish(&f, sink);
    }
    super::schedule::schedule(&table, &mut p, sink);
    if let Some(f) = table.get("log_file") {
        p.log_file = super::log_file::log_file(&table, &f, p.output, sink);
    }
    Some((p, spans))
}

/// `numprocs`, `numprocs_start` and `process_name`: `None` when none is given (one program
/// named after its table) or when one is wrong (the error is recorded).
fn group(table: &Table<'_, '_>, name_span: Range<usize>, sink: &mut Sink) -> Option<Instances> {
    let keys = ["numprocs", "numprocs_start", "process_name"];
    if keys.iter().all(|k| table.get(k).is_none()) {
        return None;
    }
    let numprocs = match table.get("numprocs") {
        Some(f) => f.int_in::<u32>(sink, 1, MAX_NUMPROCS),
        None => Some(1),
    };
    let start = match table.get("numprocs_start") {
        Some(f) => f.int_in::<u32>(sink, 0, u32::MAX.into()),
        None => Some(0),
    };
    let name_field = table.get("process_name");
    let process_name = match &name_field {
        Some(f) => Some((f.str(sink)?, f.span())),
        None => None,
    };
    instances::instances(numprocs?, start?, process_name, name_span, sink)
}

fn environment(
    program: &Table<'_, '_>,
    field: &Field<'_, '_>,
    env: &dyn Fn(&str) -> Option<String>,
    sink: &mut Sink,
    p: &mut ProgramConfig,
) {
    let Some(table) = field.table(sink, program.child_path("environment")) else {
        return;
    };
    let (out, secrets) = (&mut p.environment, &mut p.secret_env);
    for f in table.fields() {
        let name = f.key;
        if name.is_empty() || name.contains(['=', '\0']) {
            sink.error(
                &f.key_span,
                format!("invalid environment variable name {name:?}: it must be non-empty and contain no \"=\" or NUL"),
            );
            continue;
        }
        let value = match f.get() {
            DeValue::String(s) => match expand(s, env) {
                Ok(v) if v.contains('\0') => {
                    f.error(
                        sink,
                        format!("environment \"{name}\" must not contain a NUL character"),
                    );
                    continue;
                }
                Ok(v) => v,
                Err(errors) => {
                    for e in errors {
                        f.error(sink, format!("environment \"{name}\": {e}"));
                    }
                    continue;
                }
            },
            DeValue::Integer(_) => match f.integer(sink) {
                Some(v) => v.to_string(),
                None => continue,
            },
            DeValue::Float(v) => v.as_str().to_string(),
            DeValue::Boolean(b) => b.to_string(),
            DeValue::Table(_) => {
                let path = format!("environment \"{name}\"");
                let Some(t) = f.table(sink, path) else {
                    continue;
                };
                t.check_keys(sink, &["file"]);
                match t.get("file") {
                    Some(file) => {
                        if !matches!(file.get(), DeValue::String(_)) {
                            file.type_error(sink, "a path");
                        } else if let Some(p) = file.absolute_paths(sink).and_then(|mut v| v.pop()) {
                            secrets.push((name.to_string(), p));
                        }
                    }
                    // An unknown key (a misspelt `file`) is already reported.
                    None if !t.map.is_empty() => {}
                    None => sink.error(
                        &t.span,
                        format!("environment \"{name}\" needs \"file\": {{ file = \"/run/secrets/{}\" }}", name.to_ascii_lowercase()),
                    ),
                }
                continue;
            }
            _ => {
                f.type_error(sink, "a string, number, boolean or { file = \"/path\" }");
                continue;
            }
        };
        out.push((name.to_string(), value));
    }
}

/// `max_rss = "300MB"` or `max_rss = { limit = "300MB", for = "1m", interval = "10s" }`.
fn max_rss(program: &Table<'_, '_>, f: &Field<'_, '_>, sink: &mut Sink) -> Option<MaxRss> {
    let mut m = MaxRss {
        limit: 0,
        for_: Duration::ZERO,
        interval: Duration::from_secs(10),
    };
    if !matches!(f.get(), DeValue::Table(_)) {
        m.limit = f.amount(sink, true, false)?.filter(|n| *n > 0)?;
        return Some(m);
    }
    let t = f.table(sink, program.child_path("max_rss"))?;
    t.check_keys(sink, &["limit", "for", "interval"]);
    let Some(limit) = t.get("limit") else {
        sink.error(&t.span, format!("missing key \"limit\" in {}", t.path));
        return None;
    };
    m.limit = limit.amount(sink, true, false)?.unwrap_or(0);
    if m.limit == 0 {
        limit.error(sink, "\"limit\" must be greater than zero");
        return None;
    }
    if let Some(v) = read(&t, sink, "for", |f, s| f.duration(s, false)) {
        m.for_ = v;
    }
    if let Some(v) = read(&t, sink, "interval", |f, s| f.duration(s, true)) {
        m.interval = v;
    }
    Some(m)
}

fn autorestart(f: &Field<'_, '_>, sink: &mut Sink) -> Option<AutoRestart> {
    match f.get() {
        DeValue::Boolean(false) => Some(AutoRestart::Never),
        DeValue::Boolean(true) => Some(AutoRestart::Always),
        DeValue::String(s) => match s.as_ref() {
            "unexpected" => Some(AutoRestart::Unexpected),
            "true" => Some(AutoRestart::Always),
            "false" => Some(AutoRestart::Never),
            other => {
                f.error(
                    sink,
                    format!(
                        "\"autorestart\" must be true, false or \"unexpected\", found {other:?}"
                    ),
                );
                None
            }
        },
        _ => {
            f.type_error(sink, "true, false or \"unexpected\"");
            None
        }
    }
}

fn exitcodes(f: &Field<'_, '_>, sink: &mut Sink) -> Option<Vec<i32>> {
    const BAD: &str = "\"exitcodes\" must be exit codes from 0 to 255";
    match f.get() {
        DeValue::Array(items) => {
            let mut codes = Vec::with_capacity(items.len());
            let mut ok = true;
            for item in items.iter() {
                let field = Field {
                    key: f.key,
                    key_span: f.key_span.clone(),
                    value: item,
                };
                match item.get_ref() {
                    DeValue::Integer(_) => match field.int_in::<i32>(sink, 0, 255) {
                        Some(c) => codes.push(c),
                        None => ok = false,
                    },
                    _ => {
                        field.type_error(sink, "an array of integers");
                        ok = false;
                    }
                }
            }
            ok.then_some(codes)
        }
        // supervisord spells it `exitcodes=0,2`.
        DeValue::String(s) => {
            let parsed: Option<Vec<i32>> = s
                .split(',')
                .map(|part| part.trim().parse::<u8>().ok().map(i32::from))
                .collect();
            if parsed.is_none() {
                f.error(sink, format!("{BAD}, found {:?}", s.as_ref()));
            }
            parsed
        }
        _ => {
            f.type_error(sink, "an array of integers");
            None
        }
    }
}

fn backoff(table: &Table<'_, '_>, sink: &mut Sink) -> BackoffConfig {
    table.check_keys(sink, BACKOFF_KEYS);
    let mut b = BackoffConfig::default();
    let initial = table.get("initial");
    let max = table.get("max");
    if let Some(v) = initial.as_ref().and_then(|f| f.duration(sink, true)) {
        b.initial = v;
    }
    if let Some(v) = max.as_ref().and_then(|f| f.duration(sink, true)) {
        b.max = v;
    }
    if let Some(v) = read(table, sink, "multiplier", |f, s| f.number(s)) {
        if v >= 1.0 {
            b.multiplier = v;
        } else if let Some(f) = table.get("multiplier") {
            f.error(
                sink,
                format!("\"multiplier\" must be at least 1, found {v}"),
            );
        }
    }
    if let Some(v) = read(table, sink, "jitter", |f, s| f.number(s)) {
        if (0.0..=1.0).contains(&v) {
            b.jitter = v;
        } else if let Some(f) = table.get("jitter") {
            f.error(
                sink,
                format!("\"jitter\" must be between 0 and 1, found {v}"),
            );
        }
    }
    if let Some(v) = read(table, sink, "reset_after", |f, s| f.duration(s, true)) {
        b.reset_after = v;
    }
    if b.max < b.initial {
        let at = max.or(initial);
        if let Some(f) = at {
            f.error(
                sink,
                format!(
                    "backoff \"max\" ({:?}) must not be less than \"initial\" ({:?})",
                    b.max, b.initial
                ),
            );
        }
    }
    b
}

/// Reads `kind` and reports keys that do not apply to it. `None` when `kind` is missing or
/// unknown.
fn kind_of(
    table: &Table<'_, '_>,
    sink: &mut Sink,
    kinds: &[&'static str],
    known: &[&str],
    allowed: impl Fn(&str) -> Vec<&'static str>,
) -> Option<(&'static str, Range<usize>)> {
    let Some(f) = table.get("kind") else {
        let list = kinds
            .iter()
            .map(|k| format!("\"{k}\""))
            .collect::<Vec<_>>()
            .join(", ");
        sink.error(
            &table.span,
            format!("missing key \"kind\" in {} (one of {list})", table.path),
        );
        return None;
    };
    let kind = f.choice(sink, kinds)?;
    let allowed = allowed(kind);
    for other in table.fields() {
        if other.key != "kind"
            && !allowed.contains(&other.key)
            // Unknown keys are reported by `check_keys`.
            && known.contains(&other.key)
        {
            sink.error(
                &other.key_span,
                format!(
                    "key \"{}\" does not apply to kind \"{kind}\" in {}",
                    other.key, table.path
                ),
            );
        }
    }
    Some((kind, f.span()))
}

/// The kind (when known) and the whole readiness config (when valid).
fn readiness(
    table: &Table<'_, '_>,
    sink: &mut Sink,
) -> (
    Option<(&'static str, Range<usize>)>,
    Option<ReadinessConfig>,
) {
    table.check_keys(sink, READY_KEYS);
    let Some((kind, kind_span)) = kind_of(table, sink, READY_KINDS, READY_KEYS, |kind| {
        let mut keys = probe_keys(kind).to_vec();
        keys.extend_from_slice(ready_timing_keys(kind));
        keys
    }) else {
        return (None, None);
    };
    let check = probe(table, sink, kind);
    let mut r = ReadinessConfig {
        check: check.clone().unwrap_or(ReadinessCheck::StartSecs),
        timeout: Duration::from_secs(60),
        interval: Duration::from_millis(250),
    };
    let timing = ready_timing_keys(kind);
    if timing.contains(&"timeout") {
        if let Some(v) = read(table, sink, "timeout", |f, s| f.duration(s, true)) {
            r.timeout = v;
        }
    }
    if timing.contains(&"interval") {
        if let Some(v) = read(table, sink, "interval", |f, s| f.duration(s, true)) {
            r.interval = v;
        }
    }
    (Some((kind, kind_span)), check.map(|_| r))
}

fn liveness(table: &Table<'_, '_>, sink: &mut Sink) -> Option<LivenessConfig> {
    table.check_keys(sink, LIVENESS_KEYS);
    let (kind, _) = kind_of(table, sink, LIVENESS_KINDS, LIVENESS_KEYS, |kind| {
        let mut keys = probe_keys(kind).to_vec();
        keys.extend_from_slice(&["interval", "timeout", "failure_threshold", "initial_delay"]);
        keys
    })?;
    let check = probe(table, sink, kind);
    let mut l = LivenessConfig {
        check: check.clone().unwrap_or(ReadinessCheck::StartSecs),
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(1),
        failure_threshold: 3,
        initial_delay: Duration::ZERO,
    };
    if let Some(v) = read(table, sink, "interval", |f, s| f.duration(s, true)) {
        l.interval = v;
    }
    if let Some(v) = read(table, sink, "timeout", |f, s| f.duration(s, true)) {
        l.timeout = v;
    }
    if let Some(v) = read(table, sink, "failure_threshold", |f, s| {
        f.int_in(s, 1, u32::MAX.into())
    }) {
        l.failure_threshold = v;
    }
    if let Some(v) = read(table, sink, "initial_delay", |f, s| f.duration(s, false)) {
        l.initial_delay = v;
    }
    check.map(|_| l)
}

/// The probe-specific keys of a `ready` or `liveness` table.
fn probe(table: &Table<'_, '_>, sink: &mut Sink, kind: &str) -> Option<ReadinessCheck> {
    let missing = |sink: &mut Sink, what: &str| {
        sink.error(
            &table.span,
            format!("kind \"{kind}\" needs {what} in {}", table.path),
        );
    };
    match kind {
        "startsecs" => Some(ReadinessCheck::StartSecs),
        "notify" => Some(ReadinessCheck::Notify),
        "bridge" => Some(ReadinessCheck::Bridge),
        "tcp" => match (table.get("address"), table.get("port")) {
            (Some(_), Some(port)) => {
                port.error(sink, "give either \"address\" or \"port\", not both");
                None
            }
            (Some(f), None) => {
                let address = f.text(sink)?;
                let valid = address.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
                if valid {
                    Some(ReadinessCheck::Tcp { address })
                } else {
                    f.error(
                        sink,
                        format!("\"address\" must be host:port, found {address:?}"),
                    );
                    None
                }
            }
            (None, Some(f)) => {
                let port: u16 = f.int_in(sink, 1, 65535)?;
                Some(ReadinessCheck::Tcp {
                    address: format!("127.0.0.1:{port}"),
                })
            }
            (None, None) => {
                missing(sink, "\"address\" or \"port\"");
                None
            }
        },
        "http" => {
            let Some(f) = table.get("url") else {
                missing(sink, "\"url\"");
                return None;
            };
            let url = f.text(sink)?;
            if url.len() > "http://".len() && url.starts_with("http://") {
                Some(ReadinessCheck::Http { url })
            } else {
                f.error(
                    sink,
                    format!("\"url\" must start with \"http://\" (https is not supported for probes), found {url:?}"),
                );
                None
            }
        }
        "exec" => {
            let Some(f) = table.get("command") else {
                missing(sink, "\"command\"");
                return None;
            };
            f.command(sink)
                .map(|command| ReadinessCheck::Exec { command })
        }
        "log" => {
            let Some(f) = table.get("pattern") else {
                missing(sink, "\"pattern\"");
                return None;
            };
            let pattern = f.str(sink)?;
            match regex::Regex::new(pattern) {
                Ok(_) => Some(ReadinessCheck::Log {
                    pattern: pattern.to_string(),
                }),
                Err(e) => {
                    f.error(
                        sink,
                        format!("\"pattern\" is not a valid regex: {}", regex_summary(&e)),
                    );
                    None
                }
            }
        }
        _ => None,
    }
}

/// The one-line gist of a regex error (its `Display` is a multi-line diagram).
fn regex_summary(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.lines().next().unwrap_or("invalid pattern").to_string())
}

fn depends_on(f: &Field<'_, '_>, sink: &mut Sink) -> Vec<Dependency> {
    let mut deps: Vec<Dependency> = Vec::new();
    let mut push = |sink: &mut Sink, dep: Dependency| {
        if deps.iter().any(|d| d.name == dep.name) {
            sink.error(
                &dep.name_span,
                format!("\"{}\" is listed twice in \"depends_on\"", dep.name),
            );
        } else {
            deps.push(dep);
        }
    };
    match f.get() {
        DeValue::Array(_) => {
            for (name, span) in f.strings(sink).unwrap_or_default() {
                push(
                    sink,
                    Dependency {
                        name,
                        name_span: span.clone(),
                        condition: DependencyCondition::Ready,
                        condition_span: span,
                    },
                );
            }
        }
        DeValue::Table(map) => {
            let table = Table {
                map,
                span: f.span(),
                path: String::new(),
            };
            for entry in table.fields() {
                let Some(cond) = entry.choice(sink, &["started", "ready", "completed"]) else {
                    continue;
                };
                let condition = match cond {
                    "started" => DependencyCondition::Started,
                    "completed" => DependencyCondition::Completed,
                    _ => DependencyCondition::Ready,
                };
                push(
                    sink,
                    Dependency {
                        name: entry.key.to_string(),
                        name_span: entry.key_span.clone(),
                        condition,
                        condition_span: entry.span(),
                    },
                );
            }
        }
        _ => f.type_error(
            sink,
            "an array of program names or a table of name = \"started\" | \"ready\" | \"completed\"",
        ),
    }
    deps
}

fn bridge_publish(f: &Field<'_, '_>, sink: &mut Sink) -> Vec<String> {
    let mut out = Vec::new();
    for (filter, span) in f.strings(sink).unwrap_or_default() {
        match topic_filter_problem(&filter) {
            None => out.push(filter),
            Some(problem) => sink.error(
                &span,
                format!("invalid MQTT topic filter {filter:?} in \"bridge_publish\": {problem}"),
            ),
        }
    }
    out
}

/// Why a string is not a valid MQTT topic filter (MQTT 3.1.1 §4.7), if it is not.
pub(super) fn topic_filter_problem(filter: &str) -> Option<&'static str> {
    if filter.is_empty() {
        return Some("it is empty");
    }
    if filter.contains('\0') {
        return Some("it contains a NUL character");
    }
    if filter.len() > 65535 {
        return Some("it is longer than 65535 bytes");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Some("\"#\" must be a whole level and the last one");
        }
        if level.contains('+') && *level != "+" {
            return Some("\"+\" must be a whole level");
        }
    }
    None
}
