//! Every kind of config error, with its exact line and column, and collection of many errors at
//! once in file order.

use std::path::Path;

use sv_core::config::parse;

fn env(name: &str) -> Option<String> {
    (name == "SET").then(|| "value".to_string())
}

/// `line:column: message` for every diagnostic.
fn errors(source: &str) -> Vec<String> {
    match parse(source, Path::new("/etc/sv.toml"), &env) {
        Ok(config) => panic!("expected errors, got a valid config: {config:?}"),
        Err(e) => {
            assert!(!e.0.is_empty(), "errors are never empty");
            e.0.iter()
                .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
                .collect()
        }
    }
}

/// The one error of a program table whose body is `body` (starting on line 3).
fn program_error(body: &str) -> String {
    let errors = errors(&format!("[program.web]\ncommand = \"web\"\n{body}\n"));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors.into_iter().next().unwrap_or_default()
}

#[test]
fn display_has_path_line_column_and_message() {
    let e = parse(
        "[program.web]\nprority = 1\n",
        Path::new("/etc/sv.toml"),
        &env,
    )
    .expect_err("invalid");
    assert_eq!(
        e.to_string(),
        "/etc/sv.toml: line 1, column 1: missing key \"command\" in [program.web]\n\
         /etc/sv.toml: line 2, column 1: unknown key \"prority\" in [program.web], did you mean \"priority\"?"
    );
}

#[test]
fn toml_syntax_errors_are_positioned() {
    assert_eq!(
        errors("[program.web]\ncommand = [\"a\",\n"),
        ["2:16: invalid TOML: unclosed array, expected `]`"]
    );
    assert_eq!(
        errors("[program.web]\ncommand = \"a\"\ncommand = \"b\"\n"),
        ["3:1: invalid TOML: duplicate key \"command\""]
    );
}

#[test]
fn duplicate_environment_keys_are_errors() {
    assert_eq!(
        errors(
            "[program.web]\ncommand = \"a\"\n[program.web.environment]\nA = \"1\"\n  A = \"2\"\n"
        ),
        ["5:3: invalid TOML: duplicate key \"A\""]
    );
}

#[test]
fn unknown_keys_suggest_the_nearest_known_key() {
    assert_eq!(
        program_error("prority = 1"),
        "3:1: unknown key \"prority\" in [program.web], did you mean \"priority\"?"
    );
    assert_eq!(
        program_error("  autorestrat = true"),
        "3:3: unknown key \"autorestrat\" in [program.web], did you mean \"autorestart\"?"
    );
    assert_eq!(
        program_error("stdout_logfile = \"/dev/stdout\""),
        "3:1: unknown key \"stdout_logfile\" in [program.web]: output always goes to the supervisor's stdout; \
         a copy in a rotated file is log_file = { path, max_bytes, backups } (one file for both streams)"
    );
    assert_eq!(
        program_error("xyzzy = 1"),
        "3:1: unknown key \"xyzzy\" in [program.web]"
    );
    assert_eq!(
        program_error("ready = { kind = \"tcp\", port = 1, timout = 3 }"),
        "3:35: unknown key \"timout\" in [program.web.ready], did you mean \"timeout\"?"
    );
    assert_eq!(
        errors("[supervisor]\nlog_fromat = \"json\"\n[program.a]\ncommand = \"a\"\n"),
        ["2:1: unknown key \"log_fromat\" in [supervisor], did you mean \"log_format\"?"]
    );
    assert_eq!(
        errors("[bridge]\nhots = \"x\"\n"),
        ["2:1: unknown key \"hots\" in [bridge], did you mean \"host\"?"]
    );
}

#[test]
fn unknown_top_level_tables_are_errors() {
    assert_eq!(
        errors("[programs.web]\ncommand = \"a\"\n[bridge]\n"),
        [
            "1:2: unknown table \"programs\" (expected [supervisor], [program.NAME] or [bridge]), did you mean \"program\"?"
        ]
    );
    assert_eq!(
        errors("debug = true\n[bridge]\n"),
        [
            "1:1: unknown top-level key \"debug\" (expected [supervisor], [program.NAME] or [bridge])"
        ]
    );
    assert_eq!(
        errors("[[program]]\ncommand = \"a\"\n"),
        [
            "1:1: \"program\" must be a table of [program.NAME] tables, found an array (write [program.NAME], not [[program]])"
        ]
    );
}

#[test]
fn wrong_types_name_the_expected_and_found_type() {
    assert_eq!(
        program_error("priority = \"high\""),
        "3:12: \"priority\" must be an integer, found a string"
    );
    assert_eq!(
        program_error("autostart = \"yes\""),
        "3:13: \"autostart\" must be a boolean, found a string"
    );
    assert_eq!(
        program_error("directory = [\"/a\"]"),
        "3:13: \"directory\" must be a string, found an array"
    );
    assert_eq!(
        program_error("environment = \"A=1\""),
        "3:15: \"environment\" must be a table, found a string"
    );
    assert_eq!(
        program_error("environment = { A = [1] }"),
        "3:21: \"A\" must be a string, number, boolean or { file = \"/path\" }, found an array"
    );
    assert_eq!(
        program_error("exitcodes = [0, \"1\"]"),
        "3:17: \"exitcodes\" must be an array of integers, found a string"
    );
    assert_eq!(
        program_error("startsecs = true"),
        "3:13: \"startsecs\" must be a duration (seconds or a string like \"10s\"), found a boolean"
    );
    assert_eq!(
        program_error("autorestart = 1"),
        "3:15: \"autorestart\" must be true, false or \"unexpected\", found an integer"
    );
    assert_eq!(
        program_error("depends_on = \"db\""),
        "3:14: \"depends_on\" must be an array of program names or a table of name = \"started\" | \"ready\" | \"completed\", found a string"
    );
    assert_eq!(
        errors("[program]\nweb = \"/bin/web\"\n"),
        ["2:7: program \"web\" must be a table, found a string"]
    );
}

#[test]
fn bad_values_are_errors() {
    assert_eq!(
        program_error("priority = 3000000000"),
        "3:12: \"priority\" must be between -2147483648 and 2147483647, found 3000000000"
    );
    assert_eq!(
        program_error("exitcodes = [0, 256]"),
        "3:17: \"exitcodes\" must be between 0 and 255, found 256"
    );
    assert_eq!(
        program_error("exitcodes = \"0,x\""),
        "3:13: \"exitcodes\" must be exit codes from 0 to 255, found \"0,x\""
    );
    assert_eq!(
        program_error("umask = \"089\""),
        "3:9: \"umask\" must be octal digits like \"022\", found \"089\""
    );
    assert_eq!(
        program_error("umask = 0o1777"),
        "3:9: \"umask\" must be at most 0o777"
    );
    assert_eq!(
        program_error("stopsignal = \"TERMINATE\""),
        "3:14: \"stopsignal\": unknown signal \"TERMINATE\" (expected one of HUP, INT, QUIT, KILL, USR1, USR2, TERM, CONT, STOP, WINCH, ALRM, PWR)"
    );
    assert_eq!(
        program_error("output = \"inhert\""),
        "3:10: \"output\" must be one of \"capture\", \"inherit\", found \"inhert\", did you mean \"inherit\"?"
    );
    assert_eq!(
        program_error("autorestart = \"always\""),
        "3:15: \"autorestart\" must be true, false or \"unexpected\", found \"always\""
    );
    assert_eq!(
        program_error("user = \"\""),
        "3:8: \"user\" must not be empty"
    );
    assert_eq!(
        program_error("bridge_publish = [\"a/#/b\"]"),
        "3:19: invalid MQTT topic filter \"a/#/b\" in \"bridge_publish\": \"#\" must be a whole level and the last one"
    );
    assert_eq!(
        program_error("depends_on = { web2 = \"up\" }"),
        "3:23: \"web2\" must be one of \"started\", \"ready\", \"completed\", found \"up\""
    );
}

#[test]
fn command_errors() {
    assert_eq!(
        errors("[program.web]\nuser = \"x\"\n"),
        ["1:1: missing key \"command\" in [program.web]"]
    );
    assert_eq!(
        errors("[program.web]\ncommand = \"\"\n"),
        ["2:11: \"command\" must not be empty"]
    );
    assert_eq!(
        errors("[program.web]\ncommand = []\n"),
        ["2:11: \"command\" must not be empty"]
    );
    assert_eq!(
        errors("[program.web]\ncommand = \"/bin/sh -c 'echo\"\n"),
        ["2:11: \"command\" has an unclosed quote or escape"]
    );
    assert_eq!(
        errors("[program.web]\ncommand = [\"/bin/x\", 3]\n"),
        ["2:22: \"command\" must be an array of strings, found an integer in it"]
    );
}

#[test]
fn program_name_errors() {
    assert_eq!(
        errors("[program.\"my web\"]\ncommand = \"a\"\n"),
        ["1:10: invalid program name \"my web\": use letters, digits, \"_\", \".\" and \"-\""]
    );
    assert_eq!(
        errors("[bridge]\n\n[program.bridge]\ncommand = \"a\"\n"),
        [
            "3:10: program name \"bridge\" is reserved when a [bridge] table exists (the supervisor runs the bridge under that name)"
        ]
    );
    // Without a [bridge] table the name is free.
    assert!(parse("[program.bridge]\ncommand = \"a\"\n", Path::new("x"), &env).is_ok());
}

#[test]
fn nothing_to_supervise_is_an_error() {
    assert_eq!(
        errors(""),
        ["1:1: nothing to supervise: add a [program.NAME] table or a [bridge] table"]
    );
    assert_eq!(
        errors("[supervisor]\nlog_format = \"json\"\n"),
        ["1:1: nothing to supervise: add a [program.NAME] table or a [bridge] table"]
    );
    assert_eq!(
        errors("[program]\n"),
        ["1:1: nothing to supervise: add a [program.NAME] table or a [bridge] table"]
    );
}

#[test]
fn duration_errors() {
    assert_eq!(
        program_error("startsecs = \"10 sec\""),
        "3:13: invalid duration \"10 sec\" for \"startsecs\": expected seconds as a number, or a string like \"500ms\", \"1.5s\", \"2m\", \"1h30m\""
    );
    assert_eq!(
        program_error("startsecs = -1"),
        "3:13: \"startsecs\" must not be negative"
    );
    assert_eq!(
        program_error("startsecs = \"-1s\""),
        "3:13: \"startsecs\" must not be negative"
    );
    assert_eq!(
        program_error("stopwaitsecs = 0"),
        "3:16: \"stopwaitsecs\" must be greater than zero"
    );
    assert_eq!(
        program_error("stopwaitsecs = nan"),
        "3:16: invalid duration nan for \"stopwaitsecs\": expected seconds as a number, or a string like \"500ms\", \"1.5s\", \"2m\", \"1h30m\""
    );
    assert_eq!(
        program_error("stopwaitsecs = \"400d\""),
        "3:16: invalid duration \"400d\" for \"stopwaitsecs\": expected seconds as a number, or a string like \"500ms\", \"1.5s\", \"2m\", \"1h30m\""
    );
    assert_eq!(
        program_error("stopwaitsecs = \"9000h\""),
        "3:16: \"stopwaitsecs\" must be at most 365 days"
    );
    assert_eq!(
        errors("[supervisor]\nshutdown_timeout = \"0s\"\n[bridge]\n"),
        ["2:20: \"shutdown_timeout\" must be greater than zero"]
    );
}

#[test]
fn backoff_errors() {
    assert_eq!(
        program_error("backoff = { initial = \"10s\", max = \"1s\" }"),
        "3:36: backoff \"max\" (1s) must not be less than \"initial\" (10s)"
    );
    // Only `initial` given, above the default cap: reported at `initial`.
    assert_eq!(
        program_error("backoff = { initial = \"1m\" }"),
        "3:23: backoff \"max\" (30s) must not be less than \"initial\" (60s)"
    );
    assert_eq!(
        program_error("backoff = { multiplier = 0.5 }"),
        "3:26: \"multiplier\" must be at least 1, found 0.5"
    );
    assert_eq!(
        program_error("backoff = { jitter = 1.5 }"),
        "3:22: \"jitter\" must be between 0 and 1, found 1.5"
    );
    assert_eq!(
        program_error("backoff = { initial = 0 }"),
        "3:23: \"initial\" must be greater than zero"
    );
}

#[test]
fn readiness_errors() {
    assert_eq!(
        program_error("ready = { timeout = 3 }"),
        "3:9: missing key \"kind\" in [program.web.ready] (one of \"startsecs\", \"notify\", \"tcp\", \"http\", \"exec\", \"log\", \"bridge\")"
    );
    assert_eq!(
        program_error("ready = { kind = \"tpc\", port = 1 }"),
        "3:18: \"kind\" must be one of \"startsecs\", \"notify\", \"tcp\", \"http\", \"exec\", \"log\", \"bridge\", found \"tpc\", did you mean \"tcp\"?"
    );
    assert_eq!(
        program_error("ready = { kind = \"tcp\", port = 80, url = \"http://x\" }"),
        "3:36: key \"url\" does not apply to kind \"tcp\" in [program.web.ready]"
    );
    assert_eq!(
        program_error("ready = { kind = \"startsecs\", timeout = 3 }"),
        "3:31: key \"timeout\" does not apply to kind \"startsecs\" in [program.web.ready]"
    );
    assert_eq!(
        program_error("ready = { kind = \"tcp\" }"),
        "3:9: kind \"tcp\" needs \"address\" or \"port\" in [program.web.ready]"
    );
    assert_eq!(
        program_error("ready = { kind = \"tcp\", address = \"localhost\" }"),
        "3:35: \"address\" must be host:port, found \"localhost\""
    );
    assert_eq!(
        program_error("ready = { kind = \"tcp\", address = \"a:1\", port = 2 }"),
        "3:49: give either \"address\" or \"port\", not both"
    );
    assert_eq!(
        program_error("ready = { kind = \"tcp\", port = 70000 }"),
        "3:32: \"port\" must be between 1 and 65535, found 70000"
    );
    assert_eq!(
        program_error("ready = { kind = \"http\", url = \"https://x/health\" }"),
        "3:32: \"url\" must start with \"http://\" (https is not supported for probes), found \"https://x/health\""
    );
    assert_eq!(
        program_error("ready = { kind = \"exec\" }"),
        "3:9: kind \"exec\" needs \"command\" in [program.web.ready]"
    );
    let regex = program_error("ready = { kind = \"log\", pattern = \"(unclosed\" }");
    assert!(
        regex.starts_with("3:35: \"pattern\" is not a valid regex: "),
        "{regex}"
    );
    assert!(!regex.contains('\n'), "one line: {regex}");
    assert_eq!(
        program_error("ready = { kind = \"log\", pattern = \"up\" }\noutput = \"inherit\""),
        "3:18: ready kind \"log\" needs output = \"capture\": with \"inherit\" the supervisor never sees the lines"
    );
    assert_eq!(
        program_error("ready = { kind = \"bridge\" }"),
        "3:18: ready kind \"bridge\" needs a [bridge] table (the program reports ready over the bridge socket)"
    );
    assert_eq!(
        program_error("watchdog = \"10s\""),
        "3:12: \"watchdog\" needs ready kind \"notify\" (WATCHDOG=1 pings arrive over sd_notify)"
    );
    assert_eq!(
        program_error("liveness = { kind = \"notify\" }"),
        "3:21: \"kind\" must be one of \"tcp\", \"http\", \"exec\", found \"notify\""
    );
    assert_eq!(
        program_error("liveness = { kind = \"exec\", command = \"x\", failure_threshold = 0 }"),
        "3:64: \"failure_threshold\" must be between 1 and 4294967295, found 0"
    );
}

#[test]
fn dependency_errors() {
    assert_eq!(
        errors(
            "[program.database]\ncommand = \"db\"\n[program.web]\ncommand = \"web\"\ndepends_on = [\"databse\"]\n"
        ),
        ["5:15: \"depends_on\" names unknown program \"databse\", did you mean \"database\"?"]
    );
    assert_eq!(
        errors("[program.web]\ncommand = \"web\"\ndepends_on = { web = \"started\" }\n"),
        ["3:16: program \"web\" depends on itself"]
    );
    assert_eq!(
        errors(
            "[program.web]\ncommand = \"web\"\ndepends_on = [\"db\", \"db\"]\n[program.db]\ncommand = \"db\"\n"
        ),
        ["3:21: \"db\" is listed twice in \"depends_on\""]
    );
    assert_eq!(
        errors(
            "[program.setup]\ncommand = \"s\"\nautorestart = true\n[program.web]\ncommand = \"web\"\ndepends_on = { setup = \"completed\" }\n"
        ),
        ["6:24: \"completed\" can never hold for \"setup\": it has autorestart = true"]
    );
    assert_eq!(
        errors(
            "[bridge]\n[program.web]\ncommand = \"web\"\ndepends_on = { bridge = \"completed\" }\n"
        ),
        ["4:25: \"completed\" can never hold for \"bridge\": the bridge runs until shutdown"]
    );
}

#[test]
fn dependency_cycles_are_reported_once_from_the_first_program() {
    let source = "\
[program.c]
command = \"c\"
depends_on = [\"a\"]
[program.a]
command = \"a\"
depends_on = [\"b\"]
[program.b]
command = \"b\"
depends_on = { c = \"started\" }
[program.x]
command = \"x\"
depends_on = [\"y\"]
[program.y]
command = \"y\"
depends_on = [\"x\"]
";
    assert_eq!(
        errors(source),
        [
            "3:15: dependency cycle: c -> a -> b -> c",
            "12:15: dependency cycle: x -> y -> x",
        ]
    );
}

#[test]
fn bridge_errors() {
    assert_eq!(
        errors(
            "[bridge]\nport = 0\nqos = 3\npassword = \"a\"\npassword_file = \"/f\"\nclient_cert = \"/c\"\nbase_topic = \"a/#\"\n"
        ),
        [
            "2:8: \"port\" must be between 1 and 65535, found 0",
            "3:7: \"qos\" must be between 0 and 2, found 3",
            "5:1: give either \"password\" or \"password_file\", not both",
            "6:1: \"client_cert\" needs \"client_key\" (mutual TLS takes both)",
            "7:14: \"base_topic\" must not contain the wildcards \"+\" or \"#\"",
        ]
    );
    assert_eq!(
        errors("bridge = 1\n"),
        ["1:10: \"bridge\" must be a table, found an integer"]
    );
}

#[test]
fn supervisor_errors() {
    assert_eq!(
        errors(
            "[supervisor]\nlog_format = \"yaml\"\ncontrol_socket_mode = \"rw\"\n[supervisor.http]\n[bridge]\n"
        ),
        [
            "2:14: \"log_format\" must be one of \"text\", \"json\", found \"yaml\"",
            "3:23: \"control_socket_mode\" must be octal digits like \"022\", found \"rw\"",
            "4:1: missing key \"listen\" in [supervisor.http]",
        ]
    );
    assert_eq!(
        errors("[supervisor.http]\nlisten = \"9100\"\n[bridge]\n"),
        ["2:10: \"listen\" must be host:port, found \"9100\""]
    );
}

#[test]
fn three_mistakes_give_three_errors_in_file_order() {
    let source = "\
[program.worker]
command = \"w\"
depends_on = [\"nope\"]

[program.api]
command = \"api\"
prority = 5
startsecs = \"fast\"
";
    assert_eq!(
        errors(source),
        [
            "3:15: \"depends_on\" names unknown program \"nope\"",
            "7:1: unknown key \"prority\" in [program.api], did you mean \"priority\"?",
            "8:13: invalid duration \"fast\" for \"startsecs\": expected seconds as a number, or a string like \"500ms\", \"1.5s\", \"2m\", \"1h30m\"",
        ]
    );
}

#[test]
fn errors_in_every_program_are_collected() {
    let source = "\
[program.a]
command = \"\"
[program.b]
priority = true
[program.c]
command = \"c\"
environment = { X = \"${UNSET}\" }
ready = { kind = \"http\" }
";
    assert_eq!(
        errors(source),
        [
            "2:11: \"command\" must not be empty",
            "3:1: missing key \"command\" in [program.b]",
            "4:12: \"priority\" must be an integer, found a boolean",
            "7:21: environment \"X\": environment variable \"UNSET\" is not set (write \"${UNSET:-default}\" to give a default)",
            "8:9: kind \"http\" needs \"url\" in [program.c.ready]",
        ]
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    assert_eq!(
        errors("[program.web]\ncommand = \"wéb\"\nenvironment = { \"É\" = \"${UNSET}\" }\n"),
        [
            "3:23: environment \"É\": environment variable \"UNSET\" is not set (write \"${UNSET:-default}\" to give a default)"
        ]
    );
}

#[test]
fn log_file_errors_point_at_the_value() {
    assert_eq!(
        program_error("log_file = { path = \"web.log\" }"),
        "3:21: \"log_file\" path must be absolute, found \"web.log\""
    );
    assert_eq!(
        program_error("log_file = { path = \"/l\", max_bytes = \"5 parsecs\" }"),
        "3:39: \"max_bytes\" must be a size such as 1048576, \"512KB\" or \"50MB\", found \"5 parsecs\""
    );
    assert_eq!(
        program_error("log_file = { path = \"/l\", backups = -1 }"),
        "3:37: \"backups\" must be between 0 and 1000, found -1"
    );
    assert_eq!(
        program_error("log_file = { max_bytes = 10 }"),
        "3:12: missing key \"path\" in [program.web.log_file]"
    );
    assert_eq!(
        program_error("output = \"inherit\"\nlog_file = \"/var/log/web.log\""),
        "4:12: \"log_file\" needs output = \"capture\": with \"inherit\" the supervisor never sees the lines"
    );
}

#[test]
fn schedule_errors_point_at_the_key_or_value() {
    assert!(
        program_error("schedule = \"61 * * * *\"")
            .starts_with("3:12: \"schedule\" is not a valid cron pattern: "),
    );
    assert_eq!(
        program_error("schedule = \"* * * * *\"\nevery = \"1m\""),
        "4:9: give either \"schedule\" or \"every\", not both"
    );
    assert_eq!(
        program_error("every = \"0s\""),
        "3:9: \"every\" must be greater than zero"
    );
    assert_eq!(
        program_error("run_on_start = true"),
        "3:1: \"run_on_start\" needs \"schedule\" or \"every\""
    );
    assert_eq!(
        program_error("every = \"1m\"\noverlap = \"allow\""),
        "4:11: overlap = \"allow\" is not supported: a program runs one process at a time; \
         use \"skip\" or \"queue\", or a second [program] with the same command"
    );
    assert_eq!(
        program_error("every = \"1m\"\nautorestart = true"),
        "4:1: \"autorestart\" does not apply to a scheduled program: runs are started by the \
         schedule (or \"run_on_start\", or `start`), and a failed run waits for the next one"
    );
}

#[test]
fn env_file_and_secret_files_are_checked_with_positions() {
    assert_eq!(
        program_error("env_file = \"app.env\""),
        "3:12: \"env_file\" paths must be absolute, found \"app.env\" (the working directory of PID 1 is rarely what you expect)"
    );
    assert_eq!(
        program_error("env_file = 5"),
        "3:12: \"env_file\" must be a path or an array of paths, found an integer"
    );
    assert_eq!(
        program_error("environment = { PW = { fil = \"/run/secrets/pw\" } }"),
        "3:24: unknown key \"fil\" in environment \"PW\", did you mean \"file\"?"
    );
    assert_eq!(
        program_error("environment = { PW = { file = [\"/a\"] } }"),
        "3:31: \"file\" must be a path, found an array"
    );
    let e =
        errors("[supervisor]\nenv_file = [\"/app/.env\", \"rel\"]\n[program.a]\ncommand = \"a\"\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("2:26: \"env_file\" paths must be absolute"),
        "{e:?}"
    );
}

#[test]
fn rlimits_and_minfds_are_checked_with_positions() {
    assert_eq!(
        program_error("rlimits = { nofile = \"many\" }"),
        "3:22: \"nofile\" must be an integer or \"unlimited\", found a string"
    );
    assert_eq!(
        program_error("rlimits = { stack = \"8 parsecs\" }"),
        "3:21: invalid size \"8 parsecs\" for \"stack\": expected bytes or a number with K, M, G or T (\"300MB\") or \"unlimited\""
    );
    assert_eq!(
        program_error("rlimits = { nofiles = 10 }"),
        "3:13: unknown key \"nofiles\" in [program.web.rlimits], did you mean \"nofile\"?"
    );
    let e = errors("[supervisor]\nminfds = 0\n[program.a]\ncommand = \"a\"\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("2:10: "), "{e:?}");
}

#[test]
fn restart_limit_is_checked_with_positions() {
    assert_eq!(
        program_error("restart_limit = { burst = 0, within = \"60s\" }"),
        "3:27: \"burst\" must be between 1 and 4294967295, found 0"
    );
    assert_eq!(
        program_error("restart_limit = { burst = 5 }"),
        "3:17: missing key \"within\" in [program.web.restart_limit]"
    );
}

#[test]
fn max_rss_is_checked_with_positions() {
    assert_eq!(
        program_error("max_rss = \"lots\""),
        "3:11: invalid size \"lots\" for \"max_rss\": expected bytes or a number with K, M, G or T (\"300MB\")"
    );
    assert_eq!(
        program_error("max_rss = { limit = \"300MB\", for = \"soon\" }"),
        "3:36: invalid duration \"soon\" for \"for\": expected seconds as a number, or a string like \"500ms\", \"1.5s\", \"2m\", \"1h30m\""
    );
    assert_eq!(
        program_error("max_rss = { for = \"1m\" }"),
        "3:11: missing key \"limit\" in [program.web.max_rss]"
    );
    assert_eq!(
        program_error("max_rss = { limit = 0 }"),
        "3:21: \"limit\" must be greater than zero"
    );
}
