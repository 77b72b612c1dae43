//! Resource limits with the real binary: `rlimits` as the kernel reports them in
//! `/proc/<child>/limits`, and `minfds` raising the supervisor's own limit.
//!
//! Waits are bounded polls on observable facts (a pid file, the status over the control socket).
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{Sv, SvOptions, child_cmd, wait_pid_file};

/// The `(soft, hard)` columns of one row of `/proc/PID/limits`, e.g. `"Max open files"`.
fn proc_limit(pid: i32, row: &str) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(row))
        .unwrap_or_else(|| panic!("no {row:?} in:\n{text}"));
    let mut cols = line[row.len()..].split_whitespace();
    (
        cols.next().unwrap_or_default().to_string(),
        cols.next().unwrap_or_default().to_string(),
    )
}

fn pair(soft: &str, hard: &str) -> (String, String) {
    (soft.to_string(), hard.to_string())
}

#[test]
fn rlimits_are_set_in_the_child_before_exec() {
    let dir = Sv::new_dir();
    let pid_file = dir.path().join("app.pid");
    let config = format!(
        "[program.app]\ncommand = {}\n\
         rlimits = {{ nofile = 1234, nproc = 777, core = 0, memlock = \"64KB\", stack = \"4MiB\" }}\n\n\
         [program.plain]\ncommand = {}\n",
        child_cmd(&["--pid-file", &pid_file.display().to_string()]),
        child_cmd(&[]),
    );
    let sv = Sv::spawn_in(dir, &config, SvOptions::default());
    sv.wait_socket();
    let pid = wait_pid_file(&pid_file);
    assert_eq!(proc_limit(pid, "Max open files"), pair("1234", "1234"));
    assert_eq!(proc_limit(pid, "Max processes"), pair("777", "777"));
    assert_eq!(proc_limit(pid, "Max core file size"), pair("0", "0"));
    assert_eq!(proc_limit(pid, "Max locked memory"), pair("65536", "65536"));
    assert_eq!(
        proc_limit(pid, "Max stack size"),
        pair("4194304", "4194304")
    );
    // A program without `rlimits` inherits the supervisor's.
    let plain = sv.wait_state("plain", "RUNNING")["pid"].as_i64().unwrap() as i32;
    assert_eq!(
        proc_limit(plain, "Max open files"),
        proc_limit(sv.pid(), "Max open files")
    );
}

/// The supervisor started with RLIMIT_NOFILE `soft:hard` (prlimit execs it: same pid).
/// A supervisor with `minfds`, started under `wrap` and then `prlimit --nofile=LIMITS`.
fn sv_with_nofile(wrap: &[&str], limits: &str, minfds: u64) -> Sv {
    let config = format!(
        "[supervisor]\nminfds = {minfds}\n\n[program.app]\ncommand = {}\n",
        child_cmd(&[])
    );
    let mut argv: Vec<String> = wrap.iter().map(|s| s.to_string()).collect();
    argv.extend(["prlimit".into(), format!("--nofile={limits}")]);
    Sv::spawn(
        &config,
        SvOptions {
            wrap: argv,
            ..SvOptions::default()
        },
    )
}

#[test]
fn minfds_raises_the_supervisors_own_soft_limit() {
    let sv = sv_with_nofile(&[], "1024:4096", 3000);
    sv.wait_socket();
    assert_eq!(proc_limit(sv.pid(), "Max open files"), pair("3000", "4096"));
    // Programs inherit the raised limit.
    let app = sv.wait_state("app", "RUNNING")["pid"].as_i64().unwrap() as i32;
    assert_eq!(proc_limit(app, "Max open files"), pair("3000", "4096"));
}

#[test]
fn minfds_above_a_hard_limit_that_cannot_be_raised_refuses_to_start() {
    // Whether the supervisor may raise its own hard limit (CAP_SYS_RESOURCE) decides what it
    // can do; only the refusal is tested here, so the supervisor runs without that capability,
    // as in a container that lacks it: root takes it away with setpriv (bounding set and
    // inheritable set, so the exec'd supervisor does not regain it); other users never had it.
    let drop_cap: &[&str] = if nix::unistd::geteuid().is_root() {
        &[
            "setpriv",
            "--inh-caps=-sys_resource",
            "--bounding-set=-sys_resource",
        ]
    } else {
        &[]
    };
    let mut sv = sv_with_nofile(drop_cap, "1024:4096", 5000);
    assert_eq!(sv.wait_exit(), 2);
    assert!(
        sv.stderr()
            .contains("minfds = 5000: cannot raise the limit (soft 1024, hard 4096)"),
        "{}",
        sv.stderr()
    );
}

#[test]
fn restart_limit_gives_up_and_a_critical_program_ends_the_container_with_its_code() {
    // Each run passes startsecs (so startretries never trips) and then fails with 7.
    let config = format!(
        "[program.leaky]\ncommand = {}\nstartsecs = \"200ms\"\n\
         restart_limit = {{ burst = 2, within = \"10m\" }}\n\n[program.other]\ncommand = {}\n",
        child_cmd(&["--exit-after-ms", "400", "--exit", "7"]),
        child_cmd(&[]),
    );
    let mut sv = Sv::spawn(&config, SvOptions::default());
    assert_eq!(sv.wait_exit(), 7);
    let err = sv.stderr();
    assert!(
        err.contains("more than 2 restarts within 600s (restart_limit)"),
        "{err}"
    );
    assert_eq!(err.matches("spawned program=leaky").count(), 3, "{err}");
}

#[test]
fn max_rss_restarts_a_program_whose_resident_memory_stays_above_the_limit() {
    let config = format!(
        "[program.leaky]\ncommand = {}\nstartsecs = 0\n\
         max_rss = {{ limit = \"20MB\", for = \"300ms\", interval = \"100ms\" }}\n\n\
         [program.small]\ncommand = {}\nmax_rss = \"200MB\"\n",
        child_cmd(&["--alloc-mb", "64"]),
        child_cmd(&[]),
    );
    let sv = Sv::start(&config);
    let p = sv.wait_program("a memory restart", "leaky", |p| {
        p["memory_restarts"].as_u64() >= Some(1) && p["restarts"].as_u64() >= Some(1)
    });
    assert!(p["memory_restarts"].is_u64(), "{p}");
    let err = sv.stderr();
    assert!(
        err.contains("MiB above max_rss 20 MiB for 300ms: restarting"),
        "{err}"
    );
    // A program under its limit is sampled but left alone.
    let small = sv.program("small");
    assert_eq!(small["memory_restarts"], 0, "{small}");
    assert_eq!(small["restarts"], 0, "{small}");
}
