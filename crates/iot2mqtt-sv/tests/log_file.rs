//! `log_file` through the real `iot2mqtt-sv run`: the file holds exactly the lines stdout
//! shows, rotates at `max_bytes` keeping `backups` files, and a file that cannot be written
//! (`/dev/full`: every write fails with ENOSPC, as on a full disk) costs file lines only,
//! counted in `status --json` and `/metrics`, never stdout lines or the program's progress.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;

use common::{Sv, child_cmd, read, toml_str};
use sv_testkit::{WAIT, wait_for, wait_until};

/// The test-child's `--spam` line `i` (100 bytes with its newline).
fn spam_line(i: usize) -> String {
    format!("{i:010} {}", "x".repeat(100 - 12))
}

/// The lines of `program` on the supervisor's stdout, without the `name | ` prefix.
fn stdout_lines(sv: &Sv, program: &str) -> Vec<String> {
    let prefix = format!("{program} | ");
    sv.stdout()
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

/// Waits until `spam`'s last `--spam` line (of `n`) is on stdout; returns `spam`'s lines.
fn wait_stdout_spam(sv: &Sv, n: usize) -> Vec<String> {
    let last = spam_line(n - 1);
    wait_for("the last line on stdout", WAIT, || {
        let lines = stdout_lines(sv, "spam");
        (lines.last() == Some(&last)).then_some(lines)
    })
}

/// A `spam` program that writes `n` lines and exits, with `log_file = {log_file}`.
fn spam_exiting(n: usize, log_file: &str) -> String {
    format!(
        "[program.spam]\ncommand = {}\nstartsecs = 0\nautorestart = false\nlog_file = {log_file}\n",
        child_cmd(&["--spam", &n.to_string(), "--exit-after-ms", "0"]),
    )
}

fn file_lines(path: &Path) -> Vec<String> {
    read(path).lines().map(str::to_string).collect()
}

#[test]
fn the_log_file_holds_exactly_the_lines_stdout_shows() {
    const N: usize = 5000;
    let dir = Sv::new_dir();
    let log = dir.path().join("spam.log");
    let config = format!(
        "[program.spam]\ncommand = {}\nstartsecs = 0\nautorestart = false\nlog_file = {{ path = {} }}\n",
        child_cmd(&["--print", "first line", "--spam", &N.to_string()]),
        toml_str(&log.display().to_string()),
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let out = wait_stdout_spam(&sv, N);
    assert_eq!(out.len(), N + 1);
    let last = spam_line(N - 1);
    let file = wait_for("the last line in the file", WAIT, || {
        let lines = file_lines(&log);
        (lines.last() == Some(&last)).then_some(lines)
    });
    assert_eq!(file, out);
    let status = sv.program("spam");
    assert_eq!(status["log_file_dropped_lines"], 0, "{status}");
}

#[test]
fn the_log_file_rotates_at_max_bytes_keeping_backups() {
    const N: usize = 1000;
    let dir = Sv::new_dir();
    let log = dir.path().join("spam.log");
    // 100 lines of 100 bytes fill a file exactly; 10 files' worth of output, 3 kept.
    let config = format!(
        "[program.spam]\ncommand = {}\nstartsecs = 0\nautorestart = false\n\
         log_file = {{ path = {}, max_bytes = 10000, backups = 2 }}\n",
        child_cmd(&["--spam", &N.to_string()]),
        toml_str(&log.display().to_string()),
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let last = spam_line(N - 1);
    wait_until("the last line in the file", || {
        file_lines(&log).last() == Some(&last)
    });
    let numbered = |i: usize| Path::new(&format!("{}.{i}", log.display())).to_path_buf();
    for (file, first) in [(log.clone(), 900), (numbered(1), 800), (numbered(2), 700)] {
        let want: Vec<String> = (first..first + 100).map(spam_line).collect();
        assert_eq!(file_lines(&file), want, "{}", file.display());
        assert_eq!(std::fs::metadata(&file).map(|m| m.len()).ok(), Some(10000));
    }
    assert!(!numbered(3).exists(), "only 2 backups are kept");
    assert_eq!(stdout_lines(&sv, "spam").len(), N);
}

#[test]
fn a_full_disk_drops_file_lines_with_a_count_and_never_stdout_lines() {
    const N: usize = 3000;
    let config = format!(
        "[supervisor.http]\nlisten = \"127.0.0.1:0\"\n\n{}",
        spam_exiting(N, "\"/dev/full\"")
    );
    let sv = Sv::start(&config);
    // The program ran to its end and stdout has every line.
    sv.wait_state("spam", "EXITED");
    let out = wait_stdout_spam(&sv, N);
    assert_eq!(out.len(), N, "stdout lost lines");
    assert_eq!(sv.program("spam")["exit_status"], 0);
    // Every line failed to reach the file, and each one is counted.
    let status = sv.wait_program("every file line counted", "spam", |p| {
        p["log_file_dropped_lines"] == N
    });
    assert_eq!(status["state"], "EXITED");
    sv.wait_stderr("log file is not keeping up");
    let addr = sv.status_json()["supervisor"]["http"]
        .as_str()
        .expect("http address")
        .to_string();
    let metrics = common::http(&addr, "GET", "/metrics").body;
    let want = format!("iot2mqtt_sv_program_log_file_dropped_lines_total{{program=\"spam\"}} {N}");
    assert!(metrics.lines().any(|l| l == want), "{metrics}");
    let text = sv.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("log file dropped {N} lines")),
        "{text}"
    );
}

#[test]
fn a_stalled_log_file_never_slows_stdout_or_the_program() {
    const N: usize = 20_000;
    let dir = Sv::new_dir();
    // Opening a FIFO nobody reads blocks forever: the file's writer is stuck from its first line.
    let fifo = dir.path().join("stalled");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("running mkfifo");
    assert!(made.success());
    let config = spam_exiting(N, &toml_str(&fifo.display().to_string()));
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv.wait_state("spam", "EXITED");
    let out = wait_stdout_spam(&sv, N);
    assert_eq!(out.len(), N, "stdout lost lines");
    let dropped = sv.program("spam")["log_file_dropped_lines"]
        .as_u64()
        .expect("a count");
    assert!(dropped > 0 && dropped < N as u64, "dropped {dropped}");
}
