//! Fault tests of the real `iot2mqtt-sv run` against real processes: crash loops at scale,
//! orphan storms as PID 1, shutdown signals at awkward moments, sockets on read-only and full
//! filesystems, and bad input on the control socket.
//!
//! Every wait is bounded and polls an observable fact (status over the control socket, a file a
//! program writes, the supervisor's JSON event log, `/proc`). Nothing asserts on wall-clock
//! time: shutdowns are only required to *end* within a bound somewhat longer than
//! `shutdown_timeout`; the measured durations, CPU and memory figures are printed as
//! `measured:` lines (run with `--nocapture`) and recorded in `docs/reliability.md`. Resource
//! bounds (CPU per restart, resident memory growth) are asserted with generous margins.
//!
//! Tests that need root (PID namespaces, mounts) print a `skipped:` line when not permitted,
//! and fail instead under `REQUIRE_ROOT=1` / `REQUIRE_UNSHARE=1`.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Sv, SvOptions, alive, child_cmd, children_of, proc_stat, toml_str, wait_pid_file};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use sv_testkit::{WAIT, wait_for, wait_until};

/// `/proc/PID/stat` reports CPU times in clock ticks of `USER_HZ`, which the kernel ABI fixes
/// at 100 on every architecture (proc(5), `sysconf(_SC_CLK_TCK)`).
const USER_HZ: u64 = 100;

/// How much longer than `shutdown_timeout` a shutdown may take before the test calls it hung:
/// the documented exit adds at most 0.7 s, the rest is slack for a loaded CI machine.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

/// The supervisor's own event lines (tracing JSON on stderr) whose message is `message`.
fn events(sv: &Sv, message: &str) -> Vec<Value> {
    sv.stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// Events named `message` about program `name`.
fn program_events(sv: &Sv, message: &str, name: &str) -> Vec<Value> {
    events(sv, message)
        .into_iter()
        .filter(|e| e["program"] == name)
        .collect()
}

/// User plus system CPU time of `pid`, from `/proc/PID/stat` (fields 14 and 15).
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading stat");
    let rest: Vec<&str> = stat[stat.rfind(')').expect("comm") + 1..]
        .split_ascii_whitespace()
        .collect();
    // `rest[0]` is field 3 (state): utime is field 14, stime field 15.
    let ticks: u64 =
        rest[11].parse::<u64>().expect("utime") + rest[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 1000 / USER_HZ)
}

/// Resident memory of `pid` in KiB (`VmRSS` from `/proc/PID/status`).
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Sends `sig` to the supervisor and waits, bounded by `shutdown_timeout + SHUTDOWN_SLACK`,
/// for it to exit. Returns the exit code and the measured time (for the record, not asserted).
#[track_caller]
fn signal_and_wait_exit(sv: &mut Sv, sig: Signal, shutdown_timeout: Duration) -> (i32, Duration) {
    let t0 = Instant::now();
    sv.signal(sig);
    wait_exit_within(sv, t0, shutdown_timeout)
}

/// Waits for the supervisor's exit, bounded by `shutdown_timeout + SHUTDOWN_SLACK` from `t0`.
#[track_caller]
fn wait_exit_within(sv: &mut Sv, t0: Instant, shutdown_timeout: Duration) -> (i32, Duration) {
    let bound = shutdown_timeout + SHUTDOWN_SLACK;
    let mut code = None;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("the supervisor to exit", bound, || {
            code = sv.try_exit();
            code
        })
    }));
    match r {
        Ok(c) => (c, t0.elapsed()),
        Err(_) => panic!(
            "the supervisor did not exit within {bound:?}; stderr:\n{}",
            sv.stderr()
        ),
    }
}

fn measured(what: &str, value: impl std::fmt::Display) {
    eprintln!("measured: {what}: {value}");
}

fn pid_namespaces_usable() -> bool {
    sv_testkit::require(sv_testkit::Requirement::Unshare)
}

fn mounts_usable(dir: &Path) -> bool {
    sv_testkit::require_command(
        sv_testkit::Requirement::Root,
        Command::new("unshare")
            .args([
                "--mount",
                "mount",
                "-t",
                "tmpfs",
                "-o",
                "ro,size=64k",
                "tmpfs",
            ])
            .arg(dir),
        "cannot mount a tmpfs in a mount namespace here (needs root)",
    )
}

/// The PID namespace of `pid` (`/proc/PID/ns/pid` link target).
fn pid_ns(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Zombies in the PID namespace `ns`, seen through the host's /proc.
fn zombies_in(ns: &Path) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|(s, _)| s == 'Z'))
        .filter(|&pid| pid_ns(pid).as_deref() == Some(ns))
        .collect()
}

fn sh_cmd(script: &str) -> String {
    format!("[\"/bin/sh\", \"-c\", {}]", toml_str(script))
}

fn tc() -> String {
    common::test_child().display().to_string()
}

// ---------------------------------------------------------------------------------------------
// Crash loops, FATAL and critical programs
// ---------------------------------------------------------------------------------------------

#[test]
fn crash_loop_of_1000_kills_caps_backoff_with_flat_memory_and_little_cpu() {
    let config = format!(
        "[supervisor]\nlog_format = \"json\"\n\n\
         [program.crasher]\ncommand = {}\nstartsecs = 0\nautorestart = true\n\
         backoff = {{ initial = \"1ms\", max = \"20ms\" }}\n\n\
         [program.steady]\ncommand = {}\nstartsecs = 0\n",
        sh_cmd("kill -KILL $$"),
        child_cmd(&[]),
    );
    let sv = Sv::start(&config);
    let sup = sv.pid();
    let loop_bound = Duration::from_secs(600);
    let at = |n: u64| {
        wait_for(&format!("crasher: {n} restarts"), loop_bound, || {
            let st = sv.try_status_json()?;
            let p = common::find_program(&st, "crasher")?;
            (p["restarts"].as_u64()? >= n).then_some(())
        });
        (Instant::now(), cpu_time(sup), rss_kib(sup))
    };
    let (t100, cpu100, rss100) = at(100);
    let (t1000, cpu1000, rss1000) = at(1000);

    let per_restart = (cpu1000 - cpu100) / 900;
    measured(
        "crash loop: 900 restarts (100 → 1000) took",
        format!("{:?}", t1000 - t100),
    );
    measured(
        "crash loop: supervisor CPU per restart",
        format!("{per_restart:?} (total {cpu1000:?} at 1000 restarts)"),
    );
    measured(
        "crash loop: supervisor VmRSS after 100 / 1000 restarts",
        format!("{rss100} KiB / {rss1000} KiB"),
    );
    assert!(
        per_restart < Duration::from_millis(5),
        "supervisor CPU per restart {per_restart:?}"
    );
    assert!(
        rss1000 <= rss100 + 1024,
        "supervisor VmRSS grew from {rss100} KiB to {rss1000} KiB"
    );

    // The delay is a value the supervisor logs: never above `max`, and the cap is reached.
    let delays: Vec<u64> = program_events(&sv, "backing off before restart", "crasher")
        .iter()
        .filter_map(|e| e["delay_ms"].as_u64())
        .collect();
    assert!(delays.len() >= 1000, "{} backoff events", delays.len());
    let max = delays.iter().copied().max().unwrap_or(0);
    assert!(max <= 20, "a backoff delay of {max} ms exceeds max = 20ms");
    assert!(max >= 10, "the delay never grew towards max: {max} ms");
    measured(
        "crash loop: backoff delays (ms) min / max",
        format!("{} / {max}", delays.iter().min().unwrap_or(&0)),
    );

    // The rest of the supervisor is unaffected, and its loop still answers `health` (whose
    // verdict is "unhealthy": a program in a crash loop is not running).
    let st = sv.status_json();
    assert_eq!(
        common::find_program(&st, "steady").unwrap()["state"],
        "RUNNING"
    );
    let health = sv.request(&serde_json::json!({"op": "health"}));
    assert_eq!(health["ok"], true, "{health}");
    assert!(health["healthy"].is_boolean(), "{health}");
}

fn fatal_config(critical: bool, code: &str) -> String {
    format!(
        "[supervisor]\nlog_format = \"json\"\n\n\
         [program.broken]\ncommand = {}\nstartsecs = \"10s\"\nstartretries = 3\n\
         critical = {critical}\nbackoff = {{ initial = \"1ms\", max = \"5ms\" }}\n\n\
         [program.steady]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&["--exit-after-ms", "0", "--exit", code]),
        child_cmd(&[]),
    )
}

#[test]
fn failing_start_of_a_critical_program_goes_fatal_and_ends_run_with_its_code() {
    let mut sv = Sv::spawn(&fatal_config(true, "3"), SvOptions::default());
    let t0 = Instant::now();
    let (code, took) = wait_exit_within(&mut sv, t0, Duration::from_secs(8));
    assert_eq!(code, 3, "stderr:\n{}", sv.stderr());
    // startretries = 3: the first start and three retries fail, then FATAL, once.
    assert_eq!(program_events(&sv, "start failed", "broken").len(), 4);
    assert_eq!(program_events(&sv, "gave up: FATAL", "broken").len(), 1);
    measured("critical FATAL: start to exit", format!("{took:?}"));
}

#[test]
fn failing_start_of_a_non_critical_program_goes_fatal_and_the_rest_keeps_running() {
    let sv = Sv::start(&fatal_config(false, "3"));
    let p = sv.wait_state("broken", "FATAL");
    assert_eq!(p["restarts"], 3, "{p}");
    let st = sv.status_json();
    assert_eq!(st["shutting_down"], false);
    assert_eq!(
        common::find_program(&st, "steady").unwrap()["state"],
        "RUNNING"
    );
    sv.wait_logged("gave up: FATAL", |e| e["program"] == "broken");
    // FATAL is final: no further start attempt is made behind the operator's back.
    assert_eq!(program_events(&sv, "start failed", "broken").len(), 4);
    // The supervisor itself answers; its health verdict about the FATAL program is recorded.
    let health = sv.cli(&["health"]);
    measured(
        "non-critical FATAL: `health` exit code",
        health.status.code().unwrap_or(-1),
    );
    assert!(matches!(health.status.code(), Some(0 | 1)));
}

// ---------------------------------------------------------------------------------------------
// Orphans as PID 1
// ---------------------------------------------------------------------------------------------

#[test]
fn ten_thousand_orphans_as_pid1_leave_no_zombie_and_health_answers() {
    if !pid_namespaces_usable() {
        return;
    }
    let dir = Sv::new_dir();
    let done = dir.path().join("storm.pid");
    // Each `( true & )` is a subshell that exits at once, leaving its background `true` to the
    // namespace's PID 1: 10,000 orphans that exit at once, each a zombie unless PID 1 reaps it.
    let script = format!(
        "i=0; while [ $i -lt 10000 ]; do ( true & ); i=$((i+1)); done; exec {} --pid-file {}",
        tc(),
        done.display()
    );
    let config = format!(
        "[supervisor]\nlog_format = \"json\"\n\n\
         [program.storm]\ncommand = {}\nstartsecs = 0\n\n\
         [program.steady]\ncommand = {}\nstartsecs = 0\n",
        sh_cmd(&script),
        child_cmd(&[]),
    );
    std::fs::write(dir.path().join("config.toml"), &config).expect("config");
    let opts = SvOptions {
        wrap: ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let mut sv = Sv::spawn_in(dir, &config, opts);
    let wrapper = sv.pid();
    let sup = wait_for("the supervisor under unshare", WAIT, || {
        children_of(wrapper).first().map(|c| c.0)
    });
    sv.set_signal_pid(sup);
    sv.wait_socket();
    let ns = pid_ns(sup).expect("the supervisor's pid namespace");

    // While the storm runs, health keeps answering; sample the zombie count as we go.
    let mut health_answers = 0u32;
    let mut max_zombies = 0usize;
    let t0 = Instant::now();
    wait_for(
        "the orphan storm to finish",
        Duration::from_secs(600),
        || {
            max_zombies = max_zombies.max(zombies_in(&ns).len());
            let h = sv.cli(&["health"]);
            assert_eq!(
                h.status.code(),
                Some(0),
                "health during the storm: {}",
                String::from_utf8_lossy(&h.stderr)
            );
            health_answers += 1;
            common::read(&done).trim().parse::<i32>().ok()
        },
    );
    let took = t0.elapsed();
    wait_until("no zombie left in the namespace", || {
        zombies_in(&ns).is_empty()
    });
    let cpu = cpu_time(sup);
    measured("10,000 orphans: storm took", format!("{took:?}"));
    measured(
        "10,000 orphans: health answers during the storm / most zombies seen at once",
        format!("{health_answers} / {max_zombies}"),
    );
    measured(
        "10,000 orphans: supervisor CPU / VmRSS afterwards",
        format!("{cpu:?} / {} KiB", rss_kib(sup)),
    );
    assert!(health_answers > 0);
    let st = sv.status_json();
    assert_eq!(st["supervisor"]["pid"], 1, "{st}");
    assert_eq!(
        common::find_program(&st, "storm").unwrap()["state"],
        "RUNNING"
    );
    assert_eq!(sv.cli(&["health"]).status.code(), Some(0));
    let (code, _) = signal_and_wait_exit(&mut sv, Signal::SIGTERM, Duration::from_secs(8));
    assert_eq!(code, 0, "stderr:\n{}", sv.stderr());
}

// ---------------------------------------------------------------------------------------------
// Shutdown signals at awkward moments
// ---------------------------------------------------------------------------------------------

/// `a` (slow to become ready, writes `a.pid`) and `b`, which waits for `a` to be ready.
fn startup_config(dir: &Path, shutdown_timeout: &str) -> String {
    format!(
        "[supervisor]\nlog_format = \"json\"\nshutdown_timeout = \"{shutdown_timeout}\"\n\n\
         [program.a]\ncommand = {}\nstartsecs = \"30s\"\n\n\
         [program.b]\ncommand = {}\ndepends_on = [\"a\"]\nstartsecs = 0\n",
        child_cmd(&["--pid-file", &dir.join("a.pid").display().to_string()]),
        child_cmd(&[]),
    )
}

#[test]
fn sigterm_as_soon_as_the_control_socket_exists_exits_0() {
    let dir = Sv::new_dir();
    let config = startup_config(dir.path(), "2s");
    let mut sv = Sv::spawn_in(dir, &config, SvOptions::default());
    // The socket file appears before the first program is spawned: this is mid start-up.
    wait_until("the control socket file", || sv.socket.exists());
    let (code, took) = signal_and_wait_exit(&mut sv, Signal::SIGTERM, Duration::from_secs(2));
    assert_eq!(code, 0, "stderr:\n{}", sv.stderr());
    assert!(
        program_events(&sv, "spawned", "b").is_empty(),
        "b started during a shutdown"
    );
    if let Ok(pid) = common::read(&sv.path("a.pid")).trim().parse::<i32>() {
        assert!(!alive(pid), "a outlived the supervisor");
    }
    measured(
        "SIGTERM at control-socket creation: exit after",
        format!("{took:?}"),
    );
}

#[test]
fn sigterm_while_the_first_program_is_starting_exits_0() {
    let dir = Sv::new_dir();
    let config = startup_config(dir.path(), "2s");
    let pid_file = dir.path().join("a.pid");
    let mut sv = Sv::spawn_in(dir, &config, SvOptions::default());
    let a = wait_pid_file(&pid_file);
    let (code, took) = signal_and_wait_exit(&mut sv, Signal::SIGTERM, Duration::from_secs(2));
    assert_eq!(code, 0, "stderr:\n{}", sv.stderr());
    assert!(!alive(a), "a outlived the supervisor");
    assert!(
        program_events(&sv, "spawned", "b").is_empty(),
        "b started during a shutdown"
    );
    measured("SIGTERM while STARTING: exit after", format!("{took:?}"));
}

#[test]
fn sigterm_while_a_program_is_in_backoff_exits_0_without_waiting_for_the_restart() {
    let config = format!(
        "[supervisor]\nlog_format = \"json\"\nshutdown_timeout = \"2s\"\n\n\
         [program.crasher]\ncommand = {}\nstartsecs = 0\nautorestart = true\n\
         backoff = {{ initial = \"10m\", max = \"10m\", jitter = 0 }}\n\n\
         [program.steady]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&["--exit-after-ms", "0", "--exit", "1"]),
        child_cmd(&[]),
    );
    let mut sv = Sv::start(&config);
    sv.wait_state("crasher", "BACKOFF");
    // The bound (2 s + slack) is far below the 10-minute backoff.
    let (code, took) = signal_and_wait_exit(&mut sv, Signal::SIGTERM, Duration::from_secs(2));
    assert_eq!(code, 0, "stderr:\n{}", sv.stderr());
    assert_eq!(program_events(&sv, "spawned", "crasher").len(), 1);
    measured("SIGTERM during BACKOFF: exit after", format!("{took:?}"));
}

#[test]
fn second_sigterm_stops_the_next_level_at_once_and_still_exits_0() {
    let dir = Sv::new_dir();
    let d = |n: &str| dir.path().join(n).display().to_string();
    // `top` depends on `base`, so `top` is stopped first; it ignores SIGTERM and would hold the
    // shutdown until the budget SIGKILLs it. The second SIGTERM must not wait for that.
    let config = format!(
        "[supervisor]\nlog_format = \"json\"\nshutdown_timeout = \"6s\"\n\n\
         [program.base]\ncommand = {}\nstartsecs = 0\n\n\
         [program.top]\ncommand = {}\nstartsecs = 0\ndepends_on = [\"base\"]\nstopwaitsecs = \"60s\"\n",
        child_cmd(&["--pid-file", &d("base.pid"), "--signal-log", &d("base.sig")]),
        child_cmd(&[
            "--ignore-term",
            "--pid-file",
            &d("top.pid"),
            "--signal-log",
            &d("top.sig")
        ]),
    );
    let mut sv = Sv::spawn_in(dir, &config, SvOptions::default());
    sv.wait_socket();
    sv.wait_state("top", "RUNNING");
    let top = wait_pid_file(&sv.path("top.pid"));
    let t0 = Instant::now();
    sv.sigterm();
    wait_until("top to get SIGTERM", || {
        common::read(&sv.path("top.sig")).contains("SIGTERM")
    });
    assert!(!common::read(&sv.path("base.sig")).contains("SIGTERM"));
    sv.sigterm();
    wait_until("base to get SIGTERM after the second signal", || {
        common::read(&sv.path("base.sig")).contains("SIGTERM")
    });
    // `top` ignores SIGTERM and has a 60 s stopwaitsecs: only the budget ends it, so `base` was
    // stopped ahead of the level order.
    assert!(
        alive(top),
        "top was already killed: the second signal changed nothing"
    );
    let (code, took) = wait_exit_within(&mut sv, t0, Duration::from_secs(6));
    assert_eq!(code, 0, "stderr:\n{}", sv.stderr());
    assert!(!alive(top));
    measured(
        "two SIGTERMs, a 60 s stopwaitsecs under a 6 s budget: exit after",
        format!("{took:?}"),
    );
}

#[test]
fn programs_ignoring_sigterm_are_killed_and_run_exits_0() {
    let config = format!(
        "[supervisor]\nlog_format = \"json\"\nshutdown_timeout = \"3s\"\n\n\
         [program.short]\ncommand = {}\nstartsecs = 0\nstopwaitsecs = \"300ms\"\n\n\
         [program.long]\ncommand = {}\nstartsecs = 0\nstopwaitsecs = \"60s\"\n",
        child_cmd(&["--ignore-term", "--pid-file", "short.pid"]),
        child_cmd(&["--ignore-term", "--pid-file", "long.pid"]),
    );
    let mut sv = Sv::start(&config);
    // RUNNING comes at spawn (`startsecs = 0`); the pid files, once SIGTERM is blocked: before
    // that, a SIGTERM would simply end the program.
    let short = wait_pid_file(&sv.path("short.pid"));
    let long = wait_pid_file(&sv.path("long.pid"));
    let (code, took) = signal_and_wait_exit(&mut sv, Signal::SIGTERM, Duration::from_secs(3));
    assert_eq!(code, 0, "stderr:\n{}", sv.stderr());
    assert!(!alive(short) && !alive(long));
    assert_eq!(
        program_events(&sv, "did not stop in time: SIGKILL", "short").len(),
        1
    );
    measured(
        "programs ignoring SIGTERM (stopwaitsecs 0.3 s and 60 s, budget 3 s): exit after",
        format!("{took:?}"),
    );
}

#[test]
fn a_daemon_left_behind_by_its_program_is_termed_then_killed_at_shutdown() {
    let dir = Sv::new_dir();
    let daemon_pid = dir.path().join("daemon.pid");
    // The classic "fork a daemon and exit": the daemon is an orphan of the supervisor, ignores
    // SIGTERM, and belongs to no program.
    let script = format!(
        "{} --ignore-term --pid-file {} </dev/null >/dev/null 2>&1 & exit 0",
        tc(),
        daemon_pid.display()
    );
    let config = format!(
        "[supervisor]\nlog_format = \"json\"\nshutdown_timeout = \"2s\"\norphan_grace = \"200ms\"\n\n\
         [program.launcher]\ncommand = {}\nstartsecs = 0\nautorestart = false\n",
        sh_cmd(&script),
    );
    let mut sv = Sv::spawn_in(dir, &config, SvOptions::default());
    sv.wait_socket();
    let daemon = wait_pid_file(&daemon_pid);
    sv.wait_state("launcher", "EXITED");
    wait_until("the daemon to be adopted by the supervisor", || {
        proc_stat(daemon).is_some_and(|(_, ppid)| ppid == sv.pid())
    });
    let (code, took) = signal_and_wait_exit(&mut sv, Signal::SIGTERM, Duration::from_secs(2));
    assert_eq!(code, 0, "stderr:\n{}", sv.stderr());
    assert!(!alive(daemon), "the daemon outlived the supervisor");
    let swept: Vec<String> = events(&sv, "signalled leftover processes")
        .iter()
        .map(|e| e["signal"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(swept, ["SIGTERM", "SIGKILL"], "stderr:\n{}", sv.stderr());
    measured("daemon ignoring SIGTERM: exit after", format!("{took:?}"));
}

#[test]
fn an_output_pipe_held_open_by_a_grandchild_does_not_block_shutdown() {
    let dir = Sv::new_dir();
    let holder_pid = dir.path().join("holder.pid");
    let main_pid = dir.path().join("main.pid");
    // The grandchild keeps the program's stdout and stderr pipes open, leaves the program's
    // process group (setsid), ignores SIGTERM and never exits on its own.
    let script = format!(
        "setsid {tc} --ignore-term --pid-file {} & exec {tc} --print hello --pid-file {}",
        holder_pid.display(),
        main_pid.display(),
        tc = tc(),
    );
    let config = format!(
        "[supervisor]\nlog_format = \"json\"\nshutdown_timeout = \"2s\"\norphan_grace = \"200ms\"\n\n\
         [program.piped]\ncommand = {}\nstartsecs = 0\n",
        sh_cmd(&script),
    );
    let mut sv = Sv::spawn_in(dir, &config, SvOptions::default());
    sv.wait_socket();
    let holder = wait_pid_file(&holder_pid);
    let main = wait_pid_file(&main_pid);
    sv.wait_stdout("hello");
    let (code, took) = signal_and_wait_exit(&mut sv, Signal::SIGTERM, Duration::from_secs(2));
    assert_eq!(code, 0, "stderr:\n{}", sv.stderr());
    assert!(!alive(main) && !alive(holder));
    measured(
        "stdout held by a SIGTERM-immune grandchild: exit after",
        format!("{took:?}"),
    );
}

// ---------------------------------------------------------------------------------------------
// Read-only and full filesystems
// ---------------------------------------------------------------------------------------------

/// Starts the supervisor in a private mount namespace where `mountpoint` is a fresh tmpfs set
/// up by `setup` (a shell snippet; `$0` is the mountpoint) before the supervisor is exec'd.
fn spawn_with_mount(dir: sv_testkit::TempDir, config: &str, setup: &str) -> Sv {
    let script = format!("{setup} && exec \"$@\"");
    let mountpoint = dir.path().join("mnt");
    let opts = SvOptions {
        wrap: vec![
            "unshare".into(),
            "--mount".into(),
            "/bin/sh".into(),
            "-c".into(),
            script,
            mountpoint.display().to_string(),
        ],
        no_socket_env: true,
        ..Default::default()
    };
    Sv::spawn_in(dir, config, opts)
}

/// A supervisor whose control socket cannot be created keeps supervising: program `steady`
/// (pid in `steady.pid`) is restarted when killed. Returns the supervisor's stderr.
fn assert_supervises_without_control_socket(sv: &mut Sv) -> String {
    sv.wait_stderr("cannot create the control socket");
    let first = wait_pid_file(&sv.path("steady.pid"));
    kill(Pid::from_raw(first), Signal::SIGKILL).expect("SIGKILL steady");
    wait_until("steady to be restarted", || {
        common::read(&sv.path("steady.pid"))
            .trim()
            .parse::<i32>()
            .is_ok_and(|p| p != first && alive(p))
    });
    // No control socket: every client verb reports the supervisor unreachable (exit 1).
    let health = Command::new(common::bin())
        .arg("health")
        .env("IOT2MQTT_SV_SOCKET", sv.path("mnt/control.sock"))
        .output()
        .expect("running health");
    assert_eq!(health.status.code(), Some(1));
    let (code, _) = signal_and_wait_exit(sv, Signal::SIGTERM, Duration::from_secs(2));
    assert_eq!(code, 0, "stderr:\n{}", sv.stderr());
    // Exactly one attempt: a missing socket is not retried in a loop.
    let attempts = sv
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("cannot create the control socket"))
        })
        .count();
    assert_eq!(attempts, 1, "stderr:\n{}", sv.stderr());
    sv.stderr()
}

fn no_socket_config(dir: &Path, extra: &str) -> String {
    format!(
        "[supervisor]\nlog_format = \"json\"\nshutdown_timeout = \"2s\"\ncontrol_socket = {}\n\n\
         [program.steady]\ncommand = {}\nstartsecs = 0\nautorestart = true\n\
         backoff = {{ initial = \"1ms\", max = \"5ms\" }}\n{extra}",
        toml_str(&dir.join("mnt/control.sock").display().to_string()),
        child_cmd(&["--pid-file", &dir.join("steady.pid").display().to_string()]),
    )
}

#[test]
fn control_socket_on_a_read_only_filesystem_is_logged_and_supervision_continues() {
    let dir = Sv::new_dir();
    std::fs::create_dir(dir.path().join("mnt")).expect("mountpoint");
    if !mounts_usable(&dir.path().join("mnt")) {
        return;
    }
    let config = no_socket_config(dir.path(), "");
    let mut sv = spawn_with_mount(dir, &config, "mount -t tmpfs -o ro,size=64k tmpfs \"$0\"");
    let err = assert_supervises_without_control_socket(&mut sv);
    assert!(err.contains("Read-only file system"), "stderr:\n{err}");
}

#[test]
fn sockets_on_a_full_filesystem_are_logged_and_supervision_continues() {
    let dir = Sv::new_dir();
    std::fs::create_dir(dir.path().join("mnt")).expect("mountpoint");
    if !mounts_usable(&dir.path().join("mnt")) {
        return;
    }
    // Both the control socket and the sd_notify directory live on the full filesystem; the
    // program that needs sd_notify can never report READY there.
    let extra = format!(
        "\n[program.notifier]\ncommand = {}\ncritical = false\nstartretries = 1\n\
         ready = {{ kind = \"notify\", timeout = \"200ms\" }}\n\
         backoff = {{ initial = \"1ms\", max = \"5ms\" }}\n",
        child_cmd(&["--notify-ready"]),
    );
    let config = no_socket_config(dir.path(), &extra);
    // Blocks and inodes both used up: nothing new can be created on it. (`true`, not `:`: a
    // failed redirection of a special built-in ends a POSIX shell.)
    let fill = "mount -t tmpfs -o size=64k,nr_inodes=16 tmpfs \"$0\" && \
                { dd if=/dev/zero of=\"$0/fill\" bs=4k 2>/dev/null; \
                  i=0; while true 2>/dev/null > \"$0/f$i\"; do i=$((i+1)); done; true; }";
    let mut sv = spawn_with_mount(dir, &config, fill);
    sv.wait_stderr("cannot create the sd_notify directory");
    wait_until("notifier to go FATAL", || {
        !program_events(&sv, "gave up: FATAL", "notifier").is_empty()
    });
    let err = assert_supervises_without_control_socket(&mut sv);
    assert!(err.contains("No space left on device"), "stderr:\n{err}");
    // Bounded: the first start and one retry, then FATAL; no crash loop.
    assert_eq!(program_events(&sv, "start failed", "notifier").len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Bad input on the control socket
// ---------------------------------------------------------------------------------------------

fn connect(sv: &Sv) -> UnixStream {
    let s = UnixStream::connect(&sv.socket).expect("connecting to the control socket");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    s
}

fn read_reply(r: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    r.read_line(&mut line).expect("reading a reply");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
}

#[test]
fn garbage_and_oversized_lines_get_errors_and_idle_clients_do_not_block_others() {
    let config = format!(
        "[supervisor]\nlog_format = \"json\"\n\n[program.steady]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&[]),
    );
    let sv = Sv::start(&config);
    // Connected, silent, kept open for the whole test.
    let idle = connect(&sv);

    let s = connect(&sv);
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut w = s;
    let nested = "[".repeat(10_000);
    let garbage: Vec<Vec<u8>> = vec![
        b"hello".to_vec(),
        b"\xff\xfe\x00\x01 not utf-8".to_vec(),
        br#"{"op": 1}"#.to_vec(),
        br#"{"op": "status""#.to_vec(),
        br#"{"op": "no-such-op"}"#.to_vec(),
        br#"{"op": "signal", "signal": "SIGNOPE", "programs": ["steady"]}"#.to_vec(),
        br#"{"op": "stop", "programs": ["nobody"]}"#.to_vec(),
        nested.into_bytes(),
    ];
    for g in &garbage {
        w.write_all(g).expect("writing garbage");
        w.write_all(b"\n").expect("writing newline");
        let reply = read_reply(&mut r);
        assert_eq!(reply["ok"], false, "{reply}");
        assert!(reply["error"]["code"].is_string(), "{reply}");
    }
    // The same connection is still usable.
    w.write_all(b"{\"op\":\"status\"}\n")
        .expect("writing status");
    assert_eq!(read_reply(&mut r)["ok"], true);

    // An oversized line: an error, then the connection is closed; the supervisor is fine.
    let big = connect(&sv);
    let mut big_r = BufReader::new(big.try_clone().expect("clone"));
    let mut big_w = big;
    let chunk = vec![b'x'; 1 << 20];
    // The server may close before reading all of it: a write error here is expected.
    let _ = big_w.write_all(&chunk);
    let reply = read_reply(&mut big_r);
    assert_eq!(reply["ok"], false, "{reply}");
    let mut rest = Vec::new();
    let _ = big_r.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "more after the oversized-line error: {rest:?}"
    );

    assert_eq!(sv.cli(&["health"]).status.code(), Some(0));
    assert_eq!(sv.program("steady")["state"], "RUNNING");
    drop(idle);
}

#[test]
fn a_thousand_simultaneous_control_clients_cost_bounded_memory_and_status_answers() {
    let config = format!(
        "[supervisor]\nlog_format = \"json\"\n\n[program.steady]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&[]),
    );
    let sv = Sv::start(&config);
    let sup = sv.pid();
    sv.wait_state("steady", "RUNNING");
    let rss0 = rss_kib(sup);
    let mut clients: Vec<UnixStream> = (0..1000).map(|_| connect(&sv)).collect();
    // Half of them send half a request and stall.
    for c in clients.iter_mut().step_by(2) {
        c.write_all(b"{\"op\":\"sta").expect("partial request");
    }
    // The supervisor still answers a new client while all of them hang on.
    wait_until("status with 1000 clients connected", || {
        sv.try_status_json().is_some()
    });
    let rss_held = rss_kib(sup);
    // Now every one of them asks, and every one gets its answer.
    for (i, c) in clients.iter_mut().enumerate() {
        let rest: &[u8] = if i % 2 == 0 {
            b"tus\"}\n"
        } else {
            b"{\"op\":\"status\"}\n"
        };
        c.write_all(rest).expect("request");
    }
    for c in &clients {
        let mut r = BufReader::new(c.try_clone().expect("clone"));
        assert_eq!(read_reply(&mut r)["ok"], true);
    }
    let rss_answered = rss_kib(sup);
    drop(clients);
    wait_until("status after the clients left", || {
        sv.try_status_json().is_some()
    });
    let rss_after = rss_kib(sup);
    measured(
        "1000 control clients: supervisor VmRSS before / held / all answered / after",
        format!("{rss0} / {rss_held} / {rss_answered} / {rss_after} KiB"),
    );
    assert!(
        rss_answered <= rss0 + 32 * 1024,
        "VmRSS grew from {rss0} KiB to {rss_answered} KiB"
    );
    assert_eq!(sv.cli(&["health"]).status.code(), Some(0));
}

#[test]
fn running_out_of_descriptors_for_control_clients_does_not_spin_and_recovers() {
    let config = format!(
        "[supervisor]\nlog_format = \"json\"\n\n[program.steady]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&[]),
    );
    // A low descriptor limit that 100 idle clients exhaust.
    let opts = SvOptions {
        wrap: ["prlimit", "--nofile=64:64"].map(String::from).to_vec(),
        ..Default::default()
    };
    let mut sv = Sv::spawn(&config, opts);
    sv.wait_socket();
    sv.wait_state("steady", "RUNNING");
    // `prlimit CMD` execs CMD: the pid is the supervisor's.
    let sup = sv.pid();
    let clients: Vec<UnixStream> = (0..100).map(|_| connect(&sv)).collect();
    sv.wait_stderr("control accept failed");
    // A measurement window, not synchronisation: how much CPU does the supervisor burn while
    // the pending connections cannot be accepted? Retrying accept(2) at once spins at full
    // speed (the listener stays readable); the bound is a quarter of the window.
    let window = Duration::from_secs(1);
    let cpu0 = cpu_time(sup);
    std::thread::sleep(window);
    let burnt = cpu_time(sup) - cpu0;
    measured(
        "control clients beyond the descriptor limit: supervisor CPU in a 1 s window",
        format!("{burnt:?}"),
    );
    assert!(
        burnt < window / 4,
        "the accept loop spins: {burnt:?} CPU in {window:?}"
    );
    drop(clients);
    // Once descriptors are free again the supervisor answers as before.
    wait_until("status after the clients left", || {
        sv.try_status_json().is_some()
    });
    assert_eq!(sv.program("steady")["state"], "RUNNING");
    let (code, _) = signal_and_wait_exit(&mut sv, Signal::SIGTERM, Duration::from_secs(8));
    assert_eq!(code, 0, "stderr:\n{}", sv.stderr());
}

#[test]
fn bridge_socket_on_a_full_filesystem_is_fatal_after_backing_off_with_a_clear_error() {
    let dir = Sv::new_dir();
    std::fs::create_dir(dir.path().join("mnt")).expect("mountpoint");
    if !mounts_usable(&dir.path().join("mnt")) {
        return;
    }
    let app = dir.path().join("app");
    std::fs::create_dir_all(app.join("instances")).expect("app dir");
    std::fs::write(
        app.join("instances/x.json"),
        r#"{"instance_id": "x", "devices": []}"#,
    )
    .expect("instance file");
    // The broker address is never reached: the bridge fails on its socket first.
    let config = format!(
        "[supervisor]\nlog_format = \"json\"\nshutdown_timeout = \"2s\"\ncontrol_socket = {}\n\n\
         [bridge]\nsocket = {}\nhost = \"127.0.0.1\"\nport = 1\ninstance = \"x\"\niot2mqtt_path = {}\n\n\
         [program.app]\ncommand = {}\nstartsecs = 0\n",
        toml_str(&dir.path().join("control.sock").display().to_string()),
        toml_str(&dir.path().join("mnt/bridge.sock").display().to_string()),
        toml_str(&app.display().to_string()),
        child_cmd(&[]),
    );
    let fill = "mount -t tmpfs -o size=64k,nr_inodes=16 tmpfs \"$0\" && \
                { dd if=/dev/zero of=\"$0/fill\" bs=4k 2>/dev/null; \
                  i=0; while true 2>/dev/null > \"$0/f$i\"; do i=$((i+1)); done; true; }";
    let mut sv = spawn_with_mount(dir, &config, fill);
    // The bridge fails at once on every start, a configuration-class error: after its few
    // retries it is FATAL and, being critical, ends `run` with its exit code (1).
    let (code, took) = wait_exit_within(&mut sv, Instant::now(), Duration::from_secs(20));
    let err = sv.stderr();
    assert_eq!(code, 1, "stderr:\n{err}");
    // The bridge says why on its own stderr, which the supervisor prefixes and passes on.
    assert!(err.contains("No space left on device"), "stderr:\n{err}");
    assert_eq!(program_events(&sv, "gave up: FATAL", "bridge").len(), 1);
    // Backing off, not a crash loop: every delay is longer than the one before.
    let delays: Vec<u64> = program_events(&sv, "backing off before restart", "bridge")
        .iter()
        .filter_map(|e| e["delay_ms"].as_u64())
        .collect();
    assert!(!delays.is_empty(), "stderr:\n{err}");
    assert!(delays.windows(2).all(|w| w[1] > w[0]), "delays {delays:?}");
    // The program that needs the bridge was never started.
    assert!(program_events(&sv, "spawned", "app").is_empty());
    measured(
        "bridge socket on a full filesystem: backoff delays (ms) / run ended after",
        format!("{delays:?} / {took:?}"),
    );
}

#[test]
fn sigterm_as_pid1_before_the_handlers_are_installed_is_not_lost() {
    if !pid_namespaces_usable() {
        return;
    }
    // A large config keeps the supervisor busy parsing before it installs its signal handlers:
    // that is the window in which `docker stop` may arrive. PID 1 without a handler discards
    // SIGTERM (pid_namespaces(7)), so unless the signal is held until the handlers exist, the
    // supervisor would run on and the test time out.
    let mut config =
        String::from("[supervisor]\nlog_format = \"json\"\nshutdown_timeout = \"2s\"\n\n");
    for i in 0..1000 {
        config.push_str(&format!(
            "[program.p{i}]\ncommand = [\"true\"]\nautostart = false\n\n"
        ));
    }
    let opts = SvOptions {
        wrap: ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let mut sv = Sv::spawn(&config, opts);
    let wrapper = sv.pid();
    let bin = common::bin();
    let sup = wait_for("the supervisor to be exec'd under unshare", WAIT, || {
        children_of(wrapper)
            .first()
            .map(|c| c.0)
            .filter(|&p| std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == bin))
    });
    sv.set_signal_pid(sup);
    // Between exec and the first instructions of `main` no process can hold a signal: wait
    // until SIGTERM is blocked (held) or caught (handled), so the test asks exactly whether a
    // signal arriving while the config is parsed is kept, not whether it won a race with exec.
    wait_until("the supervisor to hold or handle SIGTERM", || {
        let status = std::fs::read_to_string(format!("/proc/{sup}/status")).unwrap_or_default();
        let mask = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0)
        };
        (mask("SigBlk:") | mask("SigCgt:")) & (1 << (Signal::SIGTERM as i32 - 1)) != 0
    });
    let socket_existed = sv.socket.exists();
    let (code, took) = signal_and_wait_exit(&mut sv, Signal::SIGTERM, Duration::from_secs(2));
    measured(
        "SIGTERM to PID 1 right after exec: control socket existed / exit after",
        format!("{socket_existed} / {took:?}"),
    );
    assert_eq!(code, 0, "stderr:\n{}", sv.stderr());
}
