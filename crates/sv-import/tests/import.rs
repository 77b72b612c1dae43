//! Importer tests: a corpus of supervisord configs with checked-in expected output, malformed
//! inputs with the line of their error, the example config, and round-trip properties.
//!
//! Golden files: `tests/corpus/NAME/supervisord.conf` imports to `expected.toml` with the
//! warnings in `expected.warnings`. Absolute paths (from `%(here)s`) are written as `<corpus>`.
//! After an intended change, regenerate them with `UPDATE_GOLDEN=1 cargo test -p sv-import` and
//! review the diff.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use sv_import::{ImportError, import_file, import_str};

/// The environment every corpus import sees.
fn corpus_env(name: &str) -> Option<String> {
    match name {
        "LOG_LEVEL" => Some("debug".into()),
        "SITE" => Some("lab".into()),
        "HOSTNAME" => Some("gateway-7".into()),
        "CONF_DIR" => Some("conf.d".into()),
        _ => None,
    }
}

/// What the supervisor sees when it loads an imported config: the platform sets INSTANCE_NAME.
fn runtime_env(name: &str) -> Option<String> {
    match name {
        "INSTANCE_NAME" => Some("camera_demo01".into()),
        _ => corpus_env(name),
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn corpus_cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(crate_dir().join("tests/corpus"))
        .expect("corpus directory")
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.join("supervisord.conf").is_file())
        .collect();
    cases.sort();
    cases
}

/// Imports a corpus case with paths relative to the crate, so output and warnings are stable.
fn import_case(case: &Path) -> sv_import::Import {
    let rel = case
        .strip_prefix(crate_dir())
        .expect("case under crate dir");
    let conf = rel.join("supervisord.conf");
    let cwd_conf = crate_dir().join(&conf);
    // Tests run with the package root as working directory.
    assert!(cwd_conf.is_file());
    import_file(&conf, &corpus_env).unwrap_or_else(|e| panic!("{}: {e}", conf.display()))
}

fn normalize(text: &str) -> String {
    let abs = crate_dir().join("tests/corpus").display().to_string();
    text.replace(&abs, "<corpus>")
}

fn check_golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs from the import (rerun with UPDATE_GOLDEN=1 and review the diff)",
        path.display()
    );
}

/// Parses the output as TOML and, when the config parser of sv-core is available, validates it.
fn assert_valid(toml_text: &str, origin: &Path) {
    let value: toml::Table = toml::from_str(toml_text)
        .unwrap_or_else(|e| panic!("{}: output is not TOML: {e}\n{toml_text}", origin.display()));
    assert!(value.contains_key("supervisor"));
    match sv_core::config::parse(toml_text, origin, &runtime_env) {
        Ok(_) => {}
        Err(errors) if not_implemented(&errors) => {}
        Err(errors) => panic!(
            "{}: output fails validation:\n{errors}\n---\n{toml_text}",
            origin.display()
        ),
    }
}

fn not_implemented(errors: &sv_core::config::ConfigErrors) -> bool {
    errors
        .0
        .iter()
        .any(|d| d.message.contains("not implemented"))
}

#[test]
fn corpus_imports_match_golden_files_and_validate() {
    let cases = corpus_cases();
    assert!(cases.len() >= 6, "corpus has {} cases", cases.len());
    for case in cases {
        let import = import_case(&case);
        let toml_text = normalize(&import.toml);
        check_golden(&case.join("expected.toml"), &toml_text);
        let warnings: String = import
            .warnings
            .iter()
            .map(|w| format!("{}\n", normalize(&w.to_string())))
            .collect();
        check_golden(&case.join("expected.warnings"), &warnings);
        assert_valid(&import.toml, &case.join("expected.toml"));
        // Every warning is also a comment in the output.
        for w in &import.warnings {
            let tail = format!(":{}: {}", w.line, w.message);
            let escaped: String = tail.chars().flat_map(char::escape_default).collect();
            assert!(
                import.toml.contains(&tail) || import.toml.contains(&escaped),
                "warning {w} has no comment in the output"
            );
        }
    }
}

/// Reads one program table of an import.
fn program<'a>(doc: &'a toml::Table, name: &str) -> &'a toml::Table {
    doc["program"][name]
        .as_table()
        .unwrap_or_else(|| panic!("no program {name}"))
}

fn parse(import: &sv_import::Import) -> toml::Table {
    toml::from_str(&import.toml).expect("output is TOML")
}

fn import_text(text: &str) -> Result<sv_import::Import, ImportError> {
    import_str(text, Path::new("test.conf"), &corpus_env)
}

#[test]
fn connector_shapes_translate_each_option() {
    let import = import_case(&crate_dir().join("tests/corpus/connector"));
    let doc = parse(&import);
    let bridge = program(&doc, "mqtt-bridge");
    assert_eq!(
        bridge["command"].as_array().unwrap().len(),
        4,
        "command is split into argv"
    );
    assert_eq!(bridge["priority"].as_integer(), Some(1));
    assert_eq!(bridge["autorestart"].as_bool(), Some(true));
    assert_eq!(bridge["startsecs"].as_integer(), Some(5));
    assert_eq!(bridge["startretries"].as_integer(), Some(5));
    assert_eq!(bridge["directory"].as_str(), Some("/app/bridge"));
    // Defaults and log settings that point at the container output are not written.
    assert!(!bridge.contains_key("autostart"));
    assert!(!bridge.contains_key("stdout_logfile"));
    let streams = program(&doc, "streams");
    assert_eq!(
        streams["command"].as_array().unwrap()[2].as_str(),
        Some("sleep 5 && exec /app/bin/streams --config /app/streams.yaml")
    );
    assert_eq!(streams["stopsignal"].as_str(), Some("INT"));
    assert_eq!(streams["redirect_stderr"].as_bool(), Some(true));
    assert_eq!(streams["umask"].as_str(), Some("022"));
    assert_eq!(streams["exitcodes"].as_array().unwrap().len(), 2);
    let env = streams["environment"].as_table().unwrap();
    assert_eq!(
        env["PYTHONUNBUFFERED"].as_str(),
        Some("1"),
        "merged from [supervisord]"
    );
    assert_eq!(env["STREAMS"].as_str(), Some("front door,back yard"));
    let messages: Vec<&str> = import.warnings.iter().map(|w| w.message.as_str()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("[unix_http_server]: not needed"))
    );
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("[eventlistener:fatal-exit]"))
    );
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("[supervisord] pidfile="))
    );
    assert!(!messages.iter().any(|m| m.contains("nodaemon")));
    assert!(!messages.iter().any(|m| m.contains("logfile_maxbytes")));
}

#[test]
fn multi_line_environment_with_quotes_commas_and_escapes() {
    let text = r#"
[program:app]
command=/bin/app
environment=
    A="one, two",
    B='say "hi"',
    C="escaped \"quote\" and back\\slash",
    D=plain/path:1.2,
    E="multi
  line",
    F="%(ENV_SITE)s-%(program_name)s",
    G="costs $5"
"#;
    let import = import_text(text).unwrap();
    let doc = parse(&import);
    let env = program(&doc, "app")["environment"].as_table().unwrap();
    assert_eq!(env["A"].as_str(), Some("one, two"));
    assert_eq!(env["B"].as_str(), Some("say \"hi\""));
    assert_eq!(env["C"].as_str(), Some("escaped \"quote\" and back\\slash"));
    assert_eq!(env["D"].as_str(), Some("plain/path:1.2"));
    assert_eq!(env["E"].as_str(), Some("multi\nline"));
    // Variables stay variables for the supervisor to expand when it starts; `$` is escaped.
    assert_eq!(env["F"].as_str(), Some("${SITE}-app"));
    assert_eq!(env["G"].as_str(), Some("costs $$5"));
    // supervisord 4.2 would reject this value (escaped quotes), so no reading differs.
    assert!(import.warnings.is_empty(), "{:?}", import.warnings);
    let keys: Vec<&String> = env.keys().collect();
    assert_eq!(keys.len(), 7);
}

#[test]
fn values_supervisord_4_2_reads_differently_are_warned() {
    // supervisord 4.2 strips every quote character from both ends: `say "hi`.
    let text = "[program:p]\ncommand=/p\nenvironment=A='say \"hi\"',B=\"plain\"\n";
    let import = import_text(text).unwrap();
    let doc = parse(&import);
    let env = program(&doc, "p")["environment"].as_table().unwrap();
    assert_eq!(env["A"].as_str(), Some("say \"hi\""));
    assert_eq!(import.warnings.len(), 1, "{:?}", import.warnings);
    assert_eq!(import.warnings[0].line, 3);
    assert!(
        import.warnings[0]
            .message
            .contains("supervisord 4.2 reads A as \"say \\\"hi\""),
        "{}",
        import.warnings[0].message
    );
}

#[test]
fn supervisord_environment_is_merged_and_program_values_win() {
    let text = "[supervisord]\nenvironment=A=\"global\",B=\"global\"\n\
                [program:p]\ncommand=/bin/p\nenvironment=B=\"own\",C=\"own\"\n";
    let doc = parse(&import_text(text).unwrap());
    let env = program(&doc, "p")["environment"].as_table().unwrap();
    assert_eq!(env["A"].as_str(), Some("global"));
    assert_eq!(env["B"].as_str(), Some("own"));
    assert_eq!(env["C"].as_str(), Some("own"));
}

/// One program as the supervisor runs it: name, argv, environment.
type Effective = (String, Vec<String>, Vec<(String, String)>);

/// The programs a config means, as the supervisor reads it.
fn effective(toml_text: &str) -> Vec<Effective> {
    let config = sv_core::config::parse(toml_text, Path::new("out.toml"), &|_| None)
        .unwrap_or_else(|e| panic!("the import does not validate:\n{e}\n{toml_text}"));
    config
        .programs
        .into_iter()
        .map(|p| (p.name, p.command, p.environment))
        .collect()
}

#[test]
fn numprocs_become_a_group_with_the_same_programs() {
    let text = "[program:worker]\n\
                command=/bin/worker --id %(process_num)d --of %(numprocs)d\n\
                process_name=%(program_name)s_%(process_num)02d\n\
                environment=SLOT=\"s%(process_num)d\"\n\
                numprocs=3\nnumprocs_start=1\npriority=5\n";
    let import = import_text(text).unwrap();
    let doc = parse(&import);
    let w = program(&doc, "worker");
    assert_eq!(w["numprocs"].as_integer(), Some(3));
    assert_eq!(w["numprocs_start"].as_integer(), Some(1));
    assert_eq!(w["process_name"].as_str(), Some("worker_{num:02}"));
    assert_eq!(w["priority"].as_integer(), Some(5));
    let programs = effective(&import.toml);
    let w2 = &programs[1];
    assert_eq!(w2.0, "worker_02");
    assert_eq!(w2.1, ["/bin/worker", "--id", "2", "--of", "3"]);
    assert_eq!(w2.2, [("SLOT".to_string(), "s2".to_string())]);
    let names: Vec<&str> = programs.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["worker_01", "worker_02", "worker_03"]);
}

#[test]
fn numprocs_stay_separate_programs_when_no_template_says_the_same() {
    // The directory differs per process, and `directory` has no {num}.
    let text = "[program:worker]\n\
                command=/bin/worker\n\
                directory=/data/%(process_num)d\n\
                process_name=w%(process_num)d\n\
                numprocs=2\n";
    let doc = parse(&import_text(text).unwrap());
    let names: Vec<&String> = doc["program"].as_table().unwrap().keys().collect();
    assert_eq!(names, ["w0", "w1"]);
    assert_eq!(program(&doc, "w1")["directory"].as_str(), Some("/data/1"));
}

#[test]
fn the_folded_corpus_means_the_same_programs_as_the_expanded_one() {
    // The numprocs corpus as it was imported when every process became its own program.
    let expanded = "[program.worker-01]\n\
        command = [\"/app/worker\", \"--slot\", \"1\", \"--of\", \"3\", \"--group\", \"workers\"]\n\
        priority = 50\nenvironment = { SLOT = \"1\", WORKER_NAME = \"worker\" }\n\
        [program.worker-02]\n\
        command = [\"/app/worker\", \"--slot\", \"2\", \"--of\", \"3\", \"--group\", \"workers\"]\n\
        priority = 50\nenvironment = { SLOT = \"2\", WORKER_NAME = \"worker\" }\n\
        [program.worker-03]\n\
        command = [\"/app/worker\", \"--slot\", \"3\", \"--of\", \"3\", \"--group\", \"workers\"]\n\
        priority = 50\nenvironment = { SLOT = \"3\", WORKER_NAME = \"worker\" }\n\
        [program.indexer]\ncommand = [\"/app/indexer\", \"--name\", \"indexer\", \"--group\", \"workers\"]\n\
        priority = 60\n\
        [program.solo_gateway-7]\ncommand = [\"/app/solo\"]\n";
    let folded = import_case(&crate_dir().join("tests/corpus/numprocs"));
    assert!(folded.toml.contains("numprocs = 3"), "{}", folded.toml);
    assert_eq!(effective(&folded.toml), effective(expanded));
}

#[test]
fn groups_become_comments_and_set_group_name() {
    let text = "[group:pipeline]\nprograms=a,b\npriority=5\n\
                [program:a]\ncommand=/bin/run %(group_name)s\n\
                [program:b]\ncommand=/bin/run %(group_name)s\n";
    let import = import_text(text).unwrap();
    let doc = parse(&import);
    assert_eq!(
        program(&doc, "a")["command"].as_array().unwrap()[1].as_str(),
        Some("pipeline")
    );
    assert!(
        import
            .toml
            .contains("# test.conf:1: [group:pipeline] programs=a,b: groups are not needed")
    );
    assert_eq!(import.warnings.len(), 1, "{:?}", import.warnings);
    assert_eq!(import.warnings[0].line, 3);
    assert!(
        import.warnings[0]
            .message
            .contains("group priorities are not carried over")
    );
}

#[test]
fn expansions_follow_python_formatting() {
    let text = "[program:p]\n\
                command=/bin/p --dir %(here)s --host %(host_node_name)s --pct 50%% --site %(ENV_SITE)s\n";
    let import = import_text(text).unwrap();
    let doc = parse(&import);
    let argv: Vec<&str> = program(&doc, "p")["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let here = std::path::absolute(".").unwrap().display().to_string();
    assert_eq!(
        argv,
        [
            "/bin/p",
            "--dir",
            &here,
            "--host",
            "gateway-7",
            "--pct",
            "50%",
            "--site",
            "lab"
        ]
    );
    // Values fixed at import time are reported.
    let w = &import.warnings[0];
    assert_eq!(w.line, 2);
    assert!(
        w.message
            .contains("%(host_node_name)s (from $HOSTNAME), %(ENV_SITE)s replaced"),
        "{}",
        w.message
    );
}

#[test]
fn inline_comments_follow_configparser() {
    let text = "[program:p]\ncommand=/bin/p a;b ; a comment\nstartsecs=3 # another\n";
    let doc = parse(&import_text(text).unwrap());
    let p = program(&doc, "p");
    assert_eq!(p["command"].as_array().unwrap()[1].as_str(), Some("a;b"));
    assert_eq!(p["startsecs"].as_integer(), Some(3));
}

#[test]
fn command_splitting_follows_python_shlex() {
    let text = r#"[program:p]
command=/bin/sh -c 'echo "$HOME"' "a \"b\" c" "C:\path" back\ slash "\$X"
"#;
    let doc = parse(&import_text(text).unwrap());
    let argv: Vec<&str> = program(&doc, "p")["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        argv,
        [
            "/bin/sh",
            "-c",
            "echo \"$HOME\"",
            "a \"b\" c",
            "C:\\path",
            "back slash",
            "\\$X"
        ]
    );
}

#[test]
fn stop_group_settings_map_onto_the_new_defaults() {
    let text = "[program:a]\ncommand=/a\n\
                [program:b]\ncommand=/b\nstopasgroup=false\nkillasgroup=true\n\
                [program:c]\ncommand=/c\nstopasgroup=true\n\
                [program:d]\ncommand=/d\nstopasgroup=false\n";
    let doc = parse(&import_text(text).unwrap());
    assert!(!program(&doc, "a").contains_key("stopasgroup"));
    assert_eq!(program(&doc, "b")["stopasgroup"].as_bool(), Some(false));
    assert_eq!(program(&doc, "b")["killasgroup"].as_bool(), Some(true));
    assert!(!program(&doc, "c").contains_key("stopasgroup"));
    assert_eq!(program(&doc, "d")["stopasgroup"].as_bool(), Some(false));
    assert!(!program(&doc, "d").contains_key("killasgroup"));
}

#[test]
fn stderr_to_stdout_becomes_redirect_stderr() {
    let text = "[program:p]\ncommand=/p\nstderr_logfile=/dev/fd/1\n";
    let import = import_text(text).unwrap();
    assert_eq!(
        program(&parse(&import), "p")["redirect_stderr"].as_bool(),
        Some(true)
    );
    assert!(import.warnings.is_empty());
}

/// (config text, line of the error, words the message must contain)
const MALFORMED: &[(&str, usize, &str)] = &[
    ("; comment\ncommand=/bin/x\n", 2, "outside any section"),
    (
        "[program:p]\ncommand=/bin/x\njust words\n",
        3,
        "neither a [section] header",
    ),
    (
        "[program:p]\ncommand=/bin/x \"open\n",
        2,
        "no closing quotation",
    ),
    (
        "[program:p]\ncommand=/bin/x\nenvironment=A=\"1\",\n  B=\"open\n",
        3,
        "no closing quotation",
    ),
    (
        "[program:p]\ncommand=/bin/x\nenvironment=A=1 B=2\n",
        3,
        "KEY=value pairs",
    ),
    (
        "[program:p]\ncommand=/bin/x\nenvironment=A=user@host\n",
        3,
        "KEY=value pairs",
    ),
    (
        "[program:p]\ncommand=/bin/x\n\npriority=high\n",
        4,
        "\"high\" is not an integer",
    ),
    (
        "[program:p]\ncommand=/bin/x\nautorestart=sometimes\n",
        3,
        "not one of true, false, unexpected",
    ),
    (
        "[program:p]\ncommand=/bin/x\nautostart=maybe\n",
        3,
        "not a boolean",
    ),
    (
        "[program:p]\ncommand=/bin/x\nexitcodes=0,256\n",
        3,
        "exit codes",
    ),
    (
        "[program:p]\ncommand=/bin/x\nstartsecs=-1\n",
        3,
        "out of range",
    ),
    (
        "[program:p]\ncommand=/bin/x\nstopsignal=TSTP\n",
        3,
        "not one iot2mqtt-sv can send",
    ),
    (
        "[program:p]\ncommand=/bin/x\numask=089\n",
        3,
        "not an octal umask",
    ),
    ("[program:p]\npriority=1\n", 1, "does not specify a command"),
    ("[program:p]\ncommand=/bin/x 100%\n", 2, "percent sign"),
    ("[program:p]\ncommand=/bin/x %(nope)s\n", 2, "unknown name"),
    (
        "[program:p]\ncommand=/bin/x %(ENV_UNSET_FOR_TEST)s\n",
        2,
        "UNSET_FOR_TEST is not set",
    ),
    (
        "[program:p]\ncommand=/bin/x\nstopasgroup=true\nkillasgroup=false\n",
        4,
        "rejected by supervisord",
    ),
    (
        "[program:p]\ncommand=/bin/x\nnumprocs=2\n",
        3,
        "%(process_num) must be present",
    ),
    (
        "[program:p]\ncommand=/bin/x\nprocess_name=same\n[program:same]\ncommand=/y\n",
        4,
        "already used",
    ),
    (
        "[group:g]\nprograms=p,missing\n[program:p]\ncommand=/x\n",
        2,
        "unknown program \"missing\"",
    ),
    ("[program:a b]\ncommand=/x\n", 1, "invalid program name"),
    ("[include]\nnothing=here\n", 1, "no \"files\" setting"),
];

#[test]
fn malformed_input_is_an_error_at_its_line() {
    for (text, line, words) in MALFORMED {
        match import_text(text) {
            Ok(import) => panic!("{text:?} imported:\n{}", import.toml),
            Err(ImportError::Invalid {
                file,
                line: got,
                message,
            }) => {
                assert_eq!(file, Path::new("test.conf"), "{text:?}");
                assert_eq!(got, *line, "{text:?}: {message}");
                assert!(
                    message.contains(words),
                    "{text:?}: {message:?} lacks {words:?}"
                );
                let shown = import_text(text).unwrap_err().to_string();
                assert_eq!(shown, format!("test.conf: line {line}: {message}"));
            }
            Err(other) => panic!("{text:?}: unexpected {other}"),
        }
    }
}

#[test]
fn include_cycle_is_an_error() {
    let conf = Path::new("tests/includes-cycle/supervisord.conf");
    let err = import_file(conf, &no_env).unwrap_err();
    match &err {
        ImportError::Invalid {
            file,
            line,
            message,
        } => {
            assert!(file.ends_with("b.conf"), "{err}");
            assert_eq!(*line, 4);
            assert!(message.contains("cycle"), "{message}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let err = import_file(Path::new("tests/no-such.conf"), &no_env).unwrap_err();
    assert!(matches!(err, ImportError::Io { .. }));
    assert_eq!(err.to_string(), "reading tests/no-such.conf");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn non_utf8_input_is_an_error_at_its_line() {
    let dir = std::env::temp_dir().join(format!("sv-import-utf8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("supervisord.conf");
    std::fs::write(&conf, b"[program:p]\ncommand=/bin/\xff\n").unwrap();
    let err = import_file(&conf, &no_env).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    match err {
        ImportError::Invalid { line, message, .. } => {
            assert_eq!(line, 2);
            assert!(message.contains("UTF-8"), "{message}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn warning_display_is_file_line_warning_message() {
    let import =
        import_text("[unix_http_server]\nfile=/tmp/s.sock\n[program:p]\ncommand=/p\n").unwrap();
    assert_eq!(
        import.warnings[0].to_string(),
        "test.conf:1: warning: [unix_http_server]: not needed; the control socket is always on \
         (see [supervisor] control_socket)"
    );
}

#[test]
fn output_is_deterministic() {
    let case = crate_dir().join("tests/corpus/connector");
    assert_eq!(import_case(&case), import_case(&case));
}

#[test]
fn example_import_is_checked_in_unchanged() {
    let root = crate_dir().join("../..");
    let conf = root.join("examples/from-supervisord/supervisord.conf");
    let import = import_file(&conf, &no_env).expect("example imports");
    check_golden(
        &root.join("examples/from-supervisord/supervisord.imported.toml"),
        &import.toml,
    );
    assert_valid(&import.toml, &conf);
}

/// Writes `value` as a double-quoted supervisord environment value.
fn supervisord_quote(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '%' => out.push_str("%%"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any value a supervisord line can hold survives import → TOML parse, with `$` escaped for
    /// the supervisor's `${VAR}` syntax; and when sv-core's parser is available, the validated
    /// environment holds the original value.
    #[test]
    fn environment_values_round_trip(value in "[^\n\r\u{0}]{0,40}") {
        // configparser would take " ;" or " #" as the start of a comment and strip the ends of
        // the line; a real config could not hold those either.
        let comment_start = value.char_indices().any(|(i, c)| {
            (c == ';' || c == '#') && value[..i].chars().last().is_some_and(char::is_whitespace)
        });
        prop_assume!(!comment_start);
        let text = format!(
            "[program:p]\ncommand=/bin/p\nenvironment=K={},L=\"tail\"\n",
            supervisord_quote(&value)
        );
        let import = import_str(&text, Path::new("prop.conf"), &no_env).expect("imports");
        let doc: toml::Table = toml::from_str(&import.toml).expect("output is TOML");
        let env = doc["program"]["p"]["environment"].as_table().expect("environment table");
        let escaped = value.replace('$', "$$");
        prop_assert_eq!(env["K"].as_str(), Some(escaped.as_str()));
        prop_assert_eq!(env["L"].as_str(), Some("tail"));
        match sv_core::config::parse(&import.toml, Path::new("prop.toml"), &no_env) {
            Ok(config) => {
                let p = &config.programs[0];
                prop_assert_eq!(&p.environment[0], &("K".to_string(), value.clone()));
            }
            Err(errors) if not_implemented(&errors) => {}
            Err(errors) => prop_assert!(false, "{}\n{}", errors, import.toml),
        }
    }

    /// Any argv survives quoting into `command=`, import and TOML parsing.
    #[test]
    fn command_arguments_round_trip(args in proptest::collection::vec("[^\n\r\u{0}]{1,12}", 1..5)) {
        let quoted: Vec<String> = args.iter().map(|a| supervisord_quote(a)).collect();
        let line = quoted.join(" ");
        let comment_start = line.char_indices().any(|(i, c)| {
            (c == ';' || c == '#') && line[..i].chars().last().is_some_and(char::is_whitespace)
        });
        prop_assume!(!comment_start);
        let text = format!("[program:p]\ncommand={line}\n");
        let import = import_str(&text, Path::new("prop.conf"), &no_env).expect("imports");
        let doc: toml::Table = toml::from_str(&import.toml).expect("output is TOML");
        let argv: Vec<String> = doc["program"]["p"]["command"]
            .as_array()
            .expect("array")
            .iter()
            .map(|v| v.as_str().expect("string").to_string())
            .collect();
        prop_assert_eq!(argv, args);
    }
}
