//! `numprocs`, `numprocs_start` and `process_name`: instances of one table, `{num}` in commands
//! and environments, dependencies on a group, and every positioned error.

use std::path::Path;

use sv_core::config::{Config, DependencyCondition, parse};

fn env(name: &str) -> Option<String> {
    (name == "BASE").then(|| "/srv".to_string())
}

fn ok(source: &str) -> Config {
    match parse(source, Path::new("test.toml"), &env) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

/// `line:column: message` for every diagnostic.
fn errors(source: &str) -> Vec<String> {
    match parse(source, Path::new("test.toml"), &env) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => {
            e.0.iter()
                .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
                .collect()
        }
    }
}

fn names(c: &Config) -> Vec<&str> {
    c.programs.iter().map(|p| p.name.as_str()).collect()
}

#[test]
fn numprocs_alone_makes_instances_named_by_the_default_template() {
    let c = ok(r#"
[program.worker]
command = ["/app/worker", "--slot={num}", "--port=80{num:02}"]
environment = { SLOT = "{num}", DATA = "${BASE}/w{num}", LITERAL = "{x}" }
numprocs = 3
"#);
    assert_eq!(names(&c), ["worker_00", "worker_01", "worker_02"]);
    let w1 = &c.programs[1];
    assert_eq!(w1.group.as_deref(), Some("worker"));
    assert_eq!(w1.num, Some(1));
    assert_eq!(w1.command, ["/app/worker", "--slot=1", "--port=8001"]);
    assert_eq!(
        w1.environment,
        [
            ("SLOT".to_string(), "1".to_string()),
            ("DATA".to_string(), "/srv/w1".to_string()),
            ("LITERAL".to_string(), "{x}".to_string()),
        ]
    );
}

#[test]
fn start_and_template_shape_the_names() {
    let c = ok(r#"
[program.worker]
command = "worker {num}"
numprocs = 2
numprocs_start = 7
process_name = "{name}-{num}"
"#);
    assert_eq!(names(&c), ["worker-7", "worker-8"]);
    assert_eq!(c.programs[0].command, ["worker", "7"]);
}

#[test]
fn a_plain_program_keeps_its_name_and_its_braces() {
    let c = ok("[program.web]\ncommand = \"echo {num}\"\n");
    assert_eq!(names(&c), ["web"]);
    assert_eq!(c.programs[0].group, None);
    assert_eq!(c.programs[0].command, ["echo", "{num}"]);
}

#[test]
fn one_instance_may_keep_the_table_name() {
    let c = ok("[program.web]\ncommand = \"web\"\nprocess_name = \"{name}\"\n");
    assert_eq!(names(&c), ["web"]);
    assert_eq!(c.programs[0].group.as_deref(), Some("web"));
}

#[test]
fn depends_on_a_group_means_every_instance() {
    let c = ok("[program.worker]\ncommand = \"worker\"\nnumprocs = 2\n\n\
         [program.api]\ncommand = \"api\"\ndepends_on = { worker = \"started\" }\n");
    let api = c.programs.iter().find(|p| p.name == "api").unwrap();
    assert_eq!(
        api.depends_on,
        [
            ("worker_00".to_string(), DependencyCondition::Started),
            ("worker_01".to_string(), DependencyCondition::Started),
        ]
    );
}

#[test]
fn bad_keys_are_positioned() {
    assert_eq!(
        errors("[program.w]\ncommand = \"w\"\nnumprocs = 0\n"),
        ["3:12: \"numprocs\" must be between 1 and 1000, found 0"]
    );
    assert_eq!(
        errors("[program.w]\ncommand = \"w\"\nnumprocs = 2\nprocess_name = \"{name}\"\n"),
        [
            "4:16: \"process_name\" \"{name}\" must contain {num} when numprocs > 1 (every instance needs its own name)"
        ]
    );
    assert_eq!(
        errors("[program.w]\ncommand = \"w\"\nprocess_name = \"{name}_{n}\"\n"),
        [
            "3:16: invalid \"process_name\" \"{name}_{n}\": unknown placeholder \"{n}\" (use {name}, {num} or {num:02})"
        ]
    );
    assert_eq!(
        errors("[program.w]\ncommand = \"w\"\nprocess_name = \"{name\"\n"),
        ["3:16: invalid \"process_name\" \"{name\": unclosed \"{\""]
    );
    assert_eq!(
        errors("[program.w]\ncommand = \"w\"\nprocess_name = \"a b{num}\"\n"),
        [
            "3:16: \"process_name\" makes the invalid program name \"a b0\": use letters, digits, \"_\", \".\" and \"-\""
        ]
    );
    assert_eq!(
        errors("[program.w]\ncommand = \"w\"\nnumprocs_start = -1\n"),
        ["3:18: \"numprocs_start\" must be between 0 and 4294967295, found -1"]
    );
}

#[test]
fn clashing_names_are_errors() {
    // An instance named like another program.
    assert_eq!(
        errors("[program.w_01]\ncommand = \"x\"\n\n[program.w]\ncommand = \"w\"\nnumprocs = 2\n"),
        ["4:10: program name \"w_01\" is made by both [program.w_01] and [program.w]"]
    );
    // An instance named like another group, which would make `restart w` ambiguous.
    assert_eq!(
        errors(
            "[program.w]\ncommand = \"w\"\nnumprocs = 2\n\n[program.v]\ncommand = \"v\"\nprocess_name = \"w\"\n"
        ),
        ["7:16: program name \"w\" is also the name of the group [program.w] (w_00, w_01)"]
    );
    // The bridge's reserved name.
    assert_eq!(
        errors("[bridge]\n\n[program.w]\ncommand = \"w\"\nprocess_name = \"bridge\"\n"),
        ["5:16: \"process_name\" makes the reserved program name \"bridge\""]
    );
}
