//! Program output through the real `iot2mqtt-sv run`: prefixed lines without loss under load,
//! the JSON format, stderr kept on stderr, a last line without a newline, `output = "inherit"`,
//! and the `logs` verb (`-n`, `-f`).
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use std::fs::File;
use std::process::{Command, Stdio};

use common::{Sv, bin, child_cmd, read, toml_str};
use serde_json::Value;
use sv_testkit::{WAIT, wait_for, wait_until};

#[test]
fn a_flood_of_lines_arrives_complete_in_order_and_prefixed() {
    const N: usize = 200_000;
    let config = format!(
        "[program.spam]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&["--spam", &N.to_string(), "--print", "done"])
    );
    let sv = Sv::start(&config);
    // test-child writes `--print` lines before the spam; the spam's last line ends the flood.
    let last = format!("spam | {:010} ", N - 1);
    let out = wait_for("the last spam line on stdout", WAIT * 3, || {
        let out = sv.stdout();
        out.contains(&last).then_some(out)
    });
    let body = "x".repeat(100 - 12);
    let mut expected = 0usize;
    let mut saw_done = false;
    for line in out.lines() {
        let rest = line
            .strip_prefix("spam | ")
            .unwrap_or_else(|| panic!("line without the prefix: {line:?}"));
        if rest == "done" {
            saw_done = true;
            continue;
        }
        assert_eq!(rest, format!("{expected:010} {body}"), "line {expected}");
        expected += 1;
    }
    assert!(saw_done);
    assert_eq!(expected, N, "lines lost");
}

#[test]
fn json_format_lines_parse_with_ts_program_stream_and_line() {
    let config = format!(
        "[supervisor]\nlog_format = \"json\"\n\n[program.talker]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&["--print", "hello \"world\"", "--stderr", "oops"])
    );
    let sv = Sv::start(&config);
    let find = |text: String, line: &str| -> Option<Value> {
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["program"] == "talker" && v["line"] == line)
    };
    let out = wait_for("the JSON stdout line", WAIT, || {
        find(sv.stdout(), "hello \"world\"")
    });
    assert_eq!(out["stream"], "stdout", "{out}");
    assert!(out["ts"].as_str().is_some_and(|t| !t.is_empty()), "{out}");
    let err = wait_for("the JSON stderr line", WAIT, || find(sv.stderr(), "oops"));
    assert_eq!(err["stream"], "stderr", "{err}");
    // Every line the supervisor writes to stdout is one JSON object.
    for l in sv.stdout().lines() {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
    }
}

#[test]
fn stderr_lines_go_to_stderr_with_the_prefix() {
    let config = format!(
        "[program.errs]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&["--stderr", "went-to-stderr", "--print", "went-to-stdout"])
    );
    let sv = Sv::start(&config);
    sv.wait_stderr("errs | went-to-stderr\n");
    sv.wait_stdout("errs | went-to-stdout\n");
    assert!(!sv.stdout().contains("went-to-stderr"));
    assert!(!sv.stderr().contains("went-to-stdout"));
}

#[test]
fn redirect_stderr_writes_stderr_lines_to_stdout() {
    let config = format!(
        "[program.errs]\ncommand = {}\nstartsecs = 0\nredirect_stderr = true\n",
        child_cmd(&["--stderr", "redirected-line"])
    );
    let sv = Sv::start(&config);
    sv.wait_stdout("errs | redirected-line\n");
    assert!(!sv.stderr().contains("redirected-line"));
}

#[test]
fn a_last_line_without_newline_is_not_lost() {
    let config = "[program.tail]\ncommand = [\"/bin/sh\", \"-c\", \"printf 'first\\\\nno-newline-at-end'\"]\n\
                  startsecs = 0\nautorestart = false\n";
    let sv = Sv::start(config);
    sv.wait_state("tail", "EXITED");
    sv.wait_stdout("tail | first\ntail | no-newline-at-end\n");
}

#[test]
fn inherited_output_is_written_unprefixed() {
    let config = format!(
        "[program.raw]\ncommand = {}\nstartsecs = 0\noutput = \"inherit\"\n",
        child_cmd(&["--print", "raw-output-line"])
    );
    let sv = Sv::start(&config);
    wait_until("the raw line on stdout", || {
        sv.stdout().lines().any(|l| l == "raw-output-line")
    });
    assert!(!sv.stdout().contains("raw | "));
}

#[test]
fn logs_n_returns_the_last_lines() {
    let lines: Vec<String> = (1..=20).map(|i| format!("line-{i:02}")).collect();
    let mut args = Vec::new();
    for l in &lines {
        args.extend(["--print", l.as_str()]);
    }
    let config = format!(
        "[program.chatty]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&args)
    );
    let sv = Sv::start(&config);
    sv.wait_stdout("chatty | line-20\n");
    let out = sv.cli(&["logs", "chatty", "-n", "5"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line-16\nline-17\nline-18\nline-19\nline-20\n"
    );
    let unknown = sv.cli(&["logs", "nobody"]);
    assert_eq!(unknown.status.code(), Some(2), "{unknown:?}");
}

#[test]
fn logs_follow_streams_new_lines() {
    let dir = Sv::new_dir();
    let trigger = dir.path().join("trigger");
    let script = format!(
        "echo before; while [ ! -e {t} ]; do sleep 0.02; done; echo after-trigger; exec sleep 600",
        t = trigger.display()
    );
    let config = format!(
        "[program.waiter]\ncommand = [\"/bin/sh\", \"-c\", {}]\nstartsecs = 0\n",
        toml_str(&script)
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_stdout("waiter | before\n");
    let follow_out = sv.path("follow.out");
    let mut follower = Command::new(bin())
        .args(["logs", "waiter", "-f", "-n", "10"])
        .env("IOT2MQTT_SV_SOCKET", &sv.socket)
        .stdin(Stdio::null())
        .stdout(File::create(&follow_out).expect("follow.out"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning logs -f");
    wait_until("the follower to print the backlog", || {
        read(&follow_out).contains("before\n")
    });
    assert!(!read(&follow_out).contains("after-trigger"));
    std::fs::write(&trigger, "").expect("trigger");
    wait_until("the follower to print the new line", || {
        read(&follow_out).contains("after-trigger\n")
    });
    let _ = follower.kill();
    let _ = follower.wait();
}

#[test]
fn long_lines_are_split_and_marked_and_odd_bytes_survive() {
    // 50 bytes per piece; a CRLF line loses its `\r`; invalid UTF-8 becomes U+FFFD.
    let script = "printf '%0120d\\n' 0; printf 'dos-line\\r\\n'; printf 'bad-\\377-byte\\n'";
    let config = format!(
        "[supervisor]\nmax_line_bytes = 50\n\n[program.odd]\ncommand = [\"/bin/sh\", \"-c\", {}]\n\
         startsecs = 0\nautorestart = false\n",
        toml_str(script)
    );
    let sv = Sv::start(&config);
    sv.wait_state("odd", "EXITED");
    sv.wait_stdout("odd | bad-\u{FFFD}-byte\n");
    let out = sv.stdout();
    let zeros = |n: usize| "0".repeat(n);
    let expected = format!(
        "odd | {} …\nodd | {} …\nodd | {}\nodd | dos-line\nodd | bad-\u{FFFD}-byte\n",
        zeros(50),
        zeros(50),
        zeros(20)
    );
    assert_eq!(out, expected);
}

#[test]
fn logs_follow_ends_when_the_supervisor_exits() {
    let config = format!(
        "[program.p]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&["--print", "hello-follower"])
    );
    let mut sv = Sv::start(&config);
    sv.wait_stdout("p | hello-follower\n");
    let follow_out = sv.path("follow.out");
    let mut follower = Command::new(bin())
        .args(["logs", "p", "-f"])
        .env("IOT2MQTT_SV_SOCKET", &sv.socket)
        .stdin(Stdio::null())
        .stdout(File::create(&follow_out).expect("follow.out"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning logs -f");
    wait_until("the follower to print the backlog", || {
        read(&follow_out).contains("hello-follower\n")
    });
    sv.sigterm();
    assert_eq!(sv.wait_exit(), 0);
    let st = wait_for("the follower to exit", WAIT, || {
        follower.try_wait().ok().flatten()
    });
    assert_eq!(st.code(), Some(0), "{st}");
}

#[test]
fn a_closed_stdout_neither_blocks_programs_nor_kills_the_supervisor() {
    let config = format!(
        "[program.spam]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&["--spam", "50000", "--print", "first"])
    );
    let mut sv = Sv::spawn(
        &config,
        common::SvOptions {
            stdout_closed: true,
            ..Default::default()
        },
    );
    sv.wait_socket();
    // The ring buffer still receives every line: the pipeline kept reading.
    let last = format!("{:010} ", 50_000 - 1);
    wait_until("the last spam line in `logs`", || {
        let out = sv.cli(&["logs", "spam", "-n", "1"]);
        String::from_utf8_lossy(&out.stdout).starts_with(&last)
    });
    assert_eq!(sv.program("spam")["state"], "RUNNING");
    sv.sigterm();
    assert_eq!(sv.wait_exit(), 0, "stderr:\n{}", sv.stderr());
}

/// With the supervisor's stdout and stderr one pipe (`2>&1`, a terminal), its own messages —
/// here a crash-looping program's `exited` lines, logged by the main loop — never land inside a
/// program's line, although program output is written in blocks larger than the pipe's atomic
/// write size (one writer thread writes both, in turn).
#[test]
fn with_stdout_and_stderr_one_pipe_supervisor_messages_never_split_program_lines() {
    const N: usize = 20_000;
    let dir = Sv::new_dir();
    let config = format!(
        "[supervisor]\ncontrol_socket = {sock}\n\n\
         [program.spam]\ncommand = {spam}\nstartsecs = 0\n\n\
         [program.flap]\ncommand = {flap}\nstartsecs = 0\ncritical = false\n\
         [program.flap.backoff]\ninitial = \"1ms\"\nmax = \"2ms\"\njitter = 0.0\n",
        sock = toml_str(&dir.path().join("ctl.sock").display().to_string()),
        spam = child_cmd(&["--spam", &N.to_string(), "--spam-len", "1000"]),
        flap = child_cmd(&["--exit", "3", "--exit-after-ms", "0"]),
    );
    let path = dir.path().join("sv.toml");
    std::fs::write(&path, config).expect("writing the config");
    let (reader, writer) = std::io::pipe().expect("pipe");
    // The smallest pipe: the supervisor's large writes then block part-way again and again,
    // which is when another writer's message could slip in between their parts.
    nix::fcntl::fcntl(&writer, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096))
        .expect("shrinking the pipe");
    let mut sv = Command::new(bin())
        .args(["run", "-c"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(writer.try_clone().expect("dup"))
        .stderr(writer)
        .spawn()
        .expect("starting iot2mqtt-sv");
    let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = out.clone();
    let drain = std::thread::spawn(move || {
        use std::io::Read;
        let mut reader = reader;
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let last = format!("spam | {:010} ", N - 1);
    wait_for("the last spam line", WAIT * 3, || {
        String::from_utf8_lossy(&out.lock().unwrap())
            .contains(&last)
            .then_some(())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sv.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    sv.wait().expect("waiting for iot2mqtt-sv");
    drain.join().expect("reader thread");

    let out = String::from_utf8(out.lock().unwrap().clone()).expect("UTF-8 output");
    let body = "x".repeat(1000 - 12);
    let mut expected = 0usize;
    let mut own = 0usize;
    for line in out.lines() {
        match line.strip_prefix("spam | ") {
            Some(rest) => {
                assert_eq!(rest, format!("{expected:010} {body}"), "line {expected}");
                expected += 1;
            }
            None => {
                assert!(!line.contains("spam | "), "a line was split: {line:.200}");
                own += usize::from(line.contains("program=flap"));
            }
        }
    }
    assert_eq!(expected, N, "every spam line arrived");
    assert!(own > 0, "the supervisor's own messages share the pipe");
}
