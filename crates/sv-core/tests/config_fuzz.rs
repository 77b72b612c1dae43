//! `parse` never panics: arbitrary text, byte-level mutations of a valid config, and
//! well-formed TOML built from known keys with arbitrary values all come back as `Ok` or `Err`.

use std::path::Path;

use proptest::prelude::*;
use sv_core::config::parse;

fn env(name: &str) -> Option<String> {
    (name == "X").then(|| "x".to_string())
}

const BASE: &str = r#"
[supervisor]
log_format = "json"
shutdown_timeout = "5s"
[supervisor.http]
listen = "127.0.0.1:0"

[bridge]
port = 1883

[program.setup]
command = "/bin/setup --once"
autorestart = false

[program.web]
command = ["/usr/bin/web", "--port", "8080"]
environment = { A = "${X}", B = "${Y:-d}", C = 1 }
priority = 10
depends_on = { setup = "completed", bridge = "ready" }
ready = { kind = "http", url = "http://127.0.0.1:8080/" }
liveness = { kind = "tcp", port = 8080 }
backoff = { initial = "1s", max = "10s" }
"#;

const KEYS: &[&str] = &[
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
    "kind",
    "address",
    "port",
    "url",
    "pattern",
    "timeout",
    "interval",
    "initial",
    "max",
    "multiplier",
    "jitter",
    "reset_after",
    "failure_threshold",
    "initial_delay",
    "listen",
    "qos",
    "keepalive",
];

const STRINGS: &[&str] = &[
    "",
    "10s",
    "1.5s",
    "500ms",
    "-1s",
    "1h30m",
    "ready",
    "completed",
    "started",
    "notify",
    "tcp",
    "http",
    "exec",
    "log",
    "bridge",
    "startsecs",
    "http://x",
    "a:1",
    "(",
    "${X}",
    "${Y",
    "$",
    "TERM",
    "022",
    "0,2",
    "true",
    "unexpected",
    "inherit",
    "a/#",
    "web",
    "setup",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_string),
        1 => "[a-z_]{1,8}",
    ]
}

fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        (-10i64..100).prop_map(|i| i.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        Just("nan".to_string()),
        Just("inf".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        proptest::sample::select(STRINGS).prop_map(|s| format!("\"{s}\"")),
        "[a-zA-Z0-9 $:{}/#+.-]{0,12}".prop_map(|s| toml_string(&s)),
        Just("1979-05-27T07:32:00Z".to_string()),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::btree_map(key(), inner, 0..5).prop_map(|m| {
                let body: Vec<String> = m.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", body.join(", "))
            }),
        ]
    })
}

/// A TOML basic string (JSON escaping is a subset of TOML's for these characters).
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn table() -> impl Strategy<Value = String> {
    let header = prop_oneof![
        Just("supervisor".to_string()),
        Just("supervisor.http".to_string()),
        Just("bridge".to_string()),
        "program\\.[a-z]{1,3}",
        "program\\.[a-z]{1,3}\\.(ready|liveness|backoff|environment)",
        "[a-z]{1,6}",
    ];
    (header, prop::collection::btree_map(key(), value(), 0..8)).prop_map(|(h, m)| {
        let body: Vec<String> = m.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
        format!("[{h}]\n{}\n", body.join("\n"))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(source in any::<String>()) {
        let _ = parse(&source, Path::new("fuzz.toml"), &env);
    }

    #[test]
    fn mutated_valid_config_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>(), 0u8..3), 1..6)
    ) {
        let mut source: Vec<char> = BASE.chars().collect();
        for (at, c, op) in edits {
            if source.is_empty() {
                break;
            }
            let i = at.index(source.len());
            match op {
                0 => { source.remove(i); }
                1 => source.insert(i, c),
                _ => source[i] = c,
            }
        }
        let source: String = source.into_iter().collect();
        let result = parse(&source, Path::new("fuzz.toml"), &env);
        if let Err(e) = result {
            prop_assert!(!e.0.is_empty());
            for d in &e.0 {
                prop_assert!(d.line >= 1 && d.column >= 1);
            }
        }
    }

    #[test]
    fn well_formed_toml_with_arbitrary_values_never_panics(
        tables in prop::collection::vec(table(), 0..6)
    ) {
        let source = tables.concat();
        let result = parse(&source, Path::new("fuzz.toml"), &env);
        if let Err(e) = result {
            // Errors stay in file order.
            let positions: Vec<(usize, usize)> = e.0.iter().map(|d| (d.line, d.column)).collect();
            let mut sorted = positions.clone();
            sorted.sort();
            prop_assert_eq!(positions, sorted);
        }
    }
}

#[test]
fn the_fuzz_base_config_is_valid() {
    // The mutation test starts from a valid config, or it would only exercise error paths.
    if let Err(e) = parse(BASE, Path::new("base.toml"), &env) {
        panic!("{e}");
    }
}

#[test]
fn the_generator_mostly_produces_well_formed_toml() {
    // Otherwise the property above would only ever exercise the syntax-error path.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = prop::collection::vec(table(), 1..4);
    let mut syntax_errors = 0;
    let mut reached_validation = 0;
    for _ in 0..200 {
        let source = strategy
            .new_tree(&mut runner)
            .map(|tree| tree.current().concat())
            .unwrap_or_default();
        match parse(&source, Path::new("gen.toml"), &env) {
            Err(e) if e.0[0].message.starts_with("invalid TOML") => syntax_errors += 1,
            _ => reached_validation += 1,
        }
    }
    assert!(
        reached_validation > syntax_errors,
        "{syntax_errors} syntax errors, {reached_validation} validated"
    );
}

#[test]
fn deeply_nested_input_does_not_overflow_the_stack() {
    let deep_arrays = format!("x = {}", "[".repeat(100_000));
    let deep_tables = format!("x = {}", "{ a = ".repeat(100_000));
    let deep_keys = format!("[program.{}]\n", vec!["a"; 100_000].join("."));
    let deep_dotted = format!("{} = 1\n", vec!["b"; 100_000].join("."));
    for source in [deep_arrays, deep_tables, deep_keys, deep_dotted] {
        let result = parse(&source, Path::new("deep.toml"), &env);
        assert!(result.is_err());
    }
}
