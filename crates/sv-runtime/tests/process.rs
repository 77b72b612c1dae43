//! The process layer with real processes: what a spawned program inherits (environment,
//! directory, umask, user and groups, signal state, descriptors, session), how exec failures are
//! reported, how the one reaper collects statuses, and how signals reach groups and orphans.
//!
//! Every child is the `test-child` fixture (or `sh`), which reports what it sees into files the
//! test polls for. Each test owns its children: under nextest each test is its own process; under
//! `cargo test` a lock serialises them, because `reap()` collects every child of the process.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard, PoisonError};
use sv_core::config::{OutputMode, ProgramConfig};
use sv_core::machine::ExitStatus;
use sv_core::signal::Signal;
use sv_runtime::reap::{self, ReaperMode};
use sv_runtime::signals;
use sv_runtime::spawn::{self, SpawnError, SpawnRequest};
use sv_testkit::{Requirement, TempUser, WAIT, require, tempdir, test_child, wait_for, wait_until};

// ---------------------------------------------------------------------------------------------
// helpers

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises tests within one process and starts from a clean slate (no leftover children).
fn serial() -> MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    wait_until("leftover children of an earlier test to be reaped", || {
        reap::reap().no_children
    });
    guard
}

fn program(command: Vec<String>) -> ProgramConfig {
    ProgramConfig {
        output: OutputMode::Inherit,
        ..ProgramConfig::new("proc-test", command)
    }
}

/// `test-child` followed by `args`.
fn child_cmd(args: &[&str]) -> Vec<String> {
    std::iter::once(test_child().display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

fn start(prog: &ProgramConfig, extra_env: &[(String, String)]) -> Result<i32, SpawnError> {
    spawn::spawn(SpawnRequest {
        program: prog,
        extra_env,
        stdout: Stdio::inherit(),
        stderr: Stdio::inherit(),
    })
}

/// Kills the child's whole process group when the test ends, whatever happens.
struct Killer(i32);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = signals::send(self.0, Signal::Kill, true);
    }
}

/// Waits for a report file `test-child` writes (atomically, by rename) and returns its text.
#[track_caller]
fn report(path: &Path) -> String {
    wait_until(&format!("report {}", path.display()), || path.exists());
    fs::read_to_string(path).expect("reading report")
}

/// `key=value` lines of a report.
fn fields(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// The first number of a `/proc/PID/status` style value (`Uid:  0 0 0 0` → 0).
fn first(v: &str) -> u32 {
    v.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {v:?}"))
}

/// Statuses collected from `reap()` across calls, looked up by pid.
#[derive(Default)]
struct Statuses(HashMap<i32, ExitStatus>);

impl Statuses {
    #[track_caller]
    fn wait_exit(&mut self, pid: i32) -> ExitStatus {
        wait_for(&format!("pid {pid} to be reaped"), WAIT, || {
            self.0.extend(reap::reap().exited);
            self.0.get(&pid).copied()
        })
    }
}

/// `(state, ppid, comm)` of a process, from `/proc/PID/stat`.
fn proc_stat(pid: i32) -> Option<(char, i32, String)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    let mut rest = stat[close + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid, comm))
}

/// A directory everyone may enter and write (for children running as another user), with a copy
/// of `test-child` everyone may execute (the build directory may not be reachable for them).
fn shared_dir() -> (sv_testkit::TempDir, PathBuf) {
    let dir = tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let exe = dir.path().join("test-child");
    fs::copy(test_child(), &exe).expect("copying test-child");
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).expect("chmod");
    (dir, exe)
}

// ---------------------------------------------------------------------------------------------
// environment, directory, umask, user

#[test]
fn environment_is_inherited_then_program_then_extra_in_order() {
    let _s = serial();
    let dir = tempdir().unwrap();
    let out = dir.path().join("env");
    let our_path = std::env::var("PATH").expect("PATH");
    let mut prog = program(child_cmd(&[
        "--report-env",
        p(&out),
        "--exit-after-ms",
        "0",
    ]));
    prog.environment = vec![
        ("SV_A".into(), "program".into()),
        ("SV_B".into(), "program".into()),
        ("SV_A".into(), "again".into()),
        // Expansion is the parser's job: the value is passed verbatim.
        ("SV_LITERAL".into(), "${HOME}".into()),
        ("PATH".into(), format!("{our_path}:/sv-test-extra")),
    ];
    let extra = vec![
        ("SV_B".to_string(), "extra".to_string()),
        ("SV_C".to_string(), "extra".to_string()),
    ];
    let pid = start(&prog, &extra).expect("spawn");
    let env = fields(&report(&out));
    assert_eq!(env["SV_A"], "again", "later environment entries win");
    assert_eq!(
        env["SV_B"], "extra",
        "extra_env overrides the program's environment"
    );
    assert_eq!(env["SV_C"], "extra");
    assert_eq!(env["SV_LITERAL"], "${HOME}");
    assert_eq!(env["PATH"], format!("{our_path}:/sv-test-extra"));
    // Everything else is inherited unchanged.
    let ours: Vec<(String, String)> = std::env::vars()
        .filter(|(k, v)| k != "PATH" && !k.starts_with("SV_") && !v.contains('\n'))
        .collect();
    assert!(!ours.is_empty());
    for (k, v) in ours {
        assert_eq!(
            env.get(&k).map(String::as_str),
            Some(v.trim()),
            "inherited {k}"
        );
    }
    assert_eq!(Statuses::default().wait_exit(pid), ExitStatus::Code(0));
}

#[test]
fn bare_command_is_looked_up_in_the_programs_own_path() {
    let _s = serial();
    let dir = tempdir().unwrap();
    fs::create_dir(dir.path().join("bin")).unwrap();
    std::os::unix::fs::symlink(test_child(), dir.path().join("bin/sv-proc-tool")).unwrap();
    let out = dir.path().join("env");
    let cmd = vec![
        "sv-proc-tool".to_string(),
        "--report-env".into(),
        p(&out).into(),
        "--exit-after-ms".into(),
        "0".into(),
    ];

    // Not on the supervisor's PATH...
    let err = start(&program(cmd.clone()), &[]).expect_err("not on our PATH");
    assert_eq!(err.code, 127);
    assert_eq!(err.reason, "command not found: sv-proc-tool");

    // ...but on the PATH the program's environment sets.
    let mut prog = program(cmd);
    prog.environment = vec![("PATH".into(), p(&dir.path().join("bin")).to_string())];
    let pid = start(&prog, &[]).expect("found through the program's PATH");
    assert_eq!(fields(&report(&out))["PATH"], p(&dir.path().join("bin")));
    assert_eq!(Statuses::default().wait_exit(pid), ExitStatus::Code(0));
}

#[test]
fn working_directory_is_applied() {
    let _s = serial();
    let dir = tempdir().unwrap();
    let work = dir.path().join("work");
    fs::create_dir(&work).unwrap();
    let out = dir.path().join("env");
    let mut prog = program(child_cmd(&[
        "--report-env",
        p(&out),
        "--exit-after-ms",
        "0",
    ]));
    prog.directory = Some(work.clone());
    let pid = start(&prog, &[]).expect("spawn");
    let env = fields(&report(&out));
    assert_eq!(
        Path::new(&env["@cwd"]).canonicalize().unwrap(),
        work.canonicalize().unwrap()
    );
    Statuses::default().wait_exit(pid);
}

#[test]
fn missing_directory_is_a_clear_spawn_error() {
    let _s = serial();
    let mut prog = program(child_cmd(&["--exit-after-ms", "0"]));
    prog.directory = Some("/nonexistent/sv-proc-dir".into());
    let err = start(&prog, &[]).expect_err("missing directory");
    assert_eq!(
        err.reason,
        "directory /nonexistent/sv-proc-dir: No such file or directory"
    );
    assert_eq!(err.code, 1);
    // std reaped the failed child itself: nothing is left for the reaper.
    let r = reap::reap();
    assert!(r.exited.is_empty(), "{r:?}");
    assert!(r.no_children);
}

#[test]
fn umask_is_applied() {
    let _s = serial();
    let dir = tempdir().unwrap();
    let out = dir.path().join("ids");
    let mut prog = program(child_cmd(&[
        "--report-ids",
        p(&out),
        "--exit-after-ms",
        "0",
    ]));
    prog.umask = Some(0o027);
    let pid = start(&prog, &[]).expect("spawn");
    assert_eq!(fields(&report(&out))["umask"], "0027");
    Statuses::default().wait_exit(pid);
}

#[test]
fn user_switch_to_nobody_by_name_and_by_uid() {
    let _s = serial();
    if !require(Requirement::Root) {
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a nobody user");
    let (dir, exe) = shared_dir();
    for spec in ["nobody".to_string(), nobody.uid.to_string()] {
        let ids = dir.path().join(format!("ids-{spec}"));
        let env = dir.path().join(format!("env-{spec}"));
        let mut prog = program(vec![
            p(&exe).into(),
            "--report-ids".into(),
            p(&ids).into(),
            "--report-env".into(),
            p(&env).into(),
            "--exit-after-ms".into(),
            "0".into(),
        ]);
        prog.user = Some(spec.clone());
        let pid = start(&prog, &[]).expect("spawn as nobody");
        let got = fields(&report(&ids));
        assert_eq!(first(&got["uid"]), nobody.uid.as_raw(), "{spec}: {got:?}");
        // Real, effective, saved and filesystem uids all switched.
        assert!(
            got["uid"]
                .split_whitespace()
                .all(|u| u == nobody.uid.to_string())
        );
        assert_eq!(first(&got["gid"]), nobody.gid.as_raw());
        assert!(
            !got["groups"].split_whitespace().any(|g| g == "0"),
            "root's groups were dropped: {got:?}"
        );
        let env = fields(&report(&env));
        assert_eq!(env["USER"], "nobody");
        assert_eq!(env["LOGNAME"], "nobody");
        assert_eq!(Path::new(&env["HOME"]), nobody.dir);
        assert_eq!(Statuses::default().wait_exit(pid), ExitStatus::Code(0));
    }
}

#[test]
fn explicit_environment_wins_over_the_users_home() {
    let _s = serial();
    if !require(Requirement::Root) {
        return;
    }
    let (dir, exe) = shared_dir();
    let env = dir.path().join("env");
    let mut prog = program(vec![
        p(&exe).into(),
        "--report-env".into(),
        p(&env).into(),
        "--exit-after-ms".into(),
        "0".into(),
    ]);
    prog.user = Some("nobody".into());
    prog.environment = vec![("HOME".into(), "/custom-home".into())];
    let pid = start(&prog, &[]).expect("spawn");
    let env = fields(&report(&env));
    assert_eq!(env["HOME"], "/custom-home");
    assert_eq!(env["USER"], "nobody");
    Statuses::default().wait_exit(pid);
}

#[test]
fn user_switch_keeps_supplementary_groups() {
    let _s = serial();
    let Some((tmp, user, group)) = TempUser::required() else {
        return;
    };
    let (dir, exe) = shared_dir();
    let ids = dir.path().join("ids");
    let mut prog = program(vec![
        p(&exe).into(),
        "--report-ids".into(),
        p(&ids).into(),
        "--exit-after-ms".into(),
        "0".into(),
    ]);
    prog.user = Some(tmp.user.clone());
    let pid = start(&prog, &[]).expect("spawn");
    let got = fields(&report(&ids));
    assert_eq!(first(&got["uid"]), user.uid.as_raw());
    assert_eq!(first(&got["gid"]), user.gid.as_raw());
    let groups: Vec<u32> = got["groups"]
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    assert!(
        groups.contains(&group.gid.as_raw()),
        "supplementary group {} missing from {groups:?}",
        group.gid
    );
    assert!(!groups.contains(&0), "root's groups leaked: {groups:?}");
    Statuses::default().wait_exit(pid);
}

#[test]
fn unknown_user_is_a_spawn_error() {
    let _s = serial();
    let mut prog = program(child_cmd(&["--exit-after-ms", "0"]));
    prog.user = Some("sv-no-such-user".into());
    let err = start(&prog, &[]).expect_err("unknown user");
    assert_eq!(err.reason, "unknown user \"sv-no-such-user\"");
    assert_eq!(err.code, 1);
    assert!(reap::reap().no_children, "nothing was forked");
}

#[test]
fn directory_is_entered_as_the_new_user() {
    let _s = serial();
    if !require(Requirement::Root) {
        return;
    }
    let (dir, exe) = shared_dir();
    let private = dir.path().join("private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let mut prog = program(vec![p(&exe).into(), "--exit-after-ms".into(), "0".into()]);
    prog.user = Some("nobody".into());
    prog.directory = Some(private.clone());
    let err = start(&prog, &[]).expect_err("nobody cannot enter a root-only directory");
    assert_eq!(
        err.reason,
        format!("directory {}: Permission denied", private.display())
    );
    assert_eq!(err.code, 1);
}

// ---------------------------------------------------------------------------------------------
// signal state, descriptors, session

#[test]
fn signal_mask_and_dispositions_are_clean_even_when_ours_are_not() {
    let _s = serial();
    use nix::sys::signal::{SigHandler, SigSet, Signal as S};
    let mut usr1 = SigSet::empty();
    usr1.add(S::SIGUSR1);
    usr1.thread_block().unwrap();
    // SAFETY: installing SIG_IGN runs no code of ours in signal context.
    unsafe { nix::sys::signal::signal(S::SIGHUP, SigHandler::SigIgn) }.unwrap();
    // The precondition, so the test cannot pass vacuously.
    let ours = fs::read_to_string("/proc/thread-self/status").unwrap();
    let hex = |key: &str, text: &str| {
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .trim()
            .to_string();
        u64::from_str_radix(&v, 16).unwrap()
    };
    assert_ne!(hex("SigBlk:", &ours) & (1 << (libc::SIGUSR1 - 1)), 0);
    assert_ne!(hex("SigIgn:", &ours) & (1 << (libc::SIGHUP - 1)), 0);

    let dir = tempdir().unwrap();
    let out = dir.path().join("sig");
    let pid = start(
        &program(child_cmd(&[
            "--report-sigmask",
            p(&out),
            "--exit-after-ms",
            "0",
        ])),
        &[],
    )
    .expect("spawn");
    let got = fields(&report(&out));
    assert_eq!(got["blocked"], "", "the child's mask must be empty");
    let ignored = u64::from_str_radix(&got["ignored"], 16).unwrap();
    // Every Rust program ignores SIGPIPE itself before main; nothing else may be ignored.
    let sigpipe = 1u64 << (libc::SIGPIPE - 1);
    assert_eq!(
        ignored & !sigpipe,
        0,
        "inherited ignored signals: {ignored:#x}"
    );

    // Restore, for `cargo test` where tests share the process.
    usr1.thread_unblock().unwrap();
    // SAFETY: as above.
    unsafe { nix::sys::signal::signal(S::SIGHUP, SigHandler::SigDfl) }.unwrap();
    Statuses::default().wait_exit(pid);
}

#[test]
fn no_stray_descriptors_and_stdin_is_dev_null() {
    let _s = serial();
    let file = fs::File::open("/dev/null").unwrap();
    // dup(2) never sets close-on-exec: a descriptor any careless thread could hold.
    let leak = nix::unistd::dup(&file).unwrap();
    let flags = nix::fcntl::fcntl(&leak, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert_eq!(
        flags & libc::FD_CLOEXEC,
        0,
        "precondition: an inheritable fd"
    );

    let dir = tempdir().unwrap();
    let out = dir.path().join("fds");
    let pid = start(&program(child_cmd(&["--report-fds", p(&out)])), &[]).expect("spawn");
    let _k = Killer(pid);
    // 0, 1, 2, and the directory descriptor the child uses to list /proc/self/fd.
    assert_eq!(report(&out), "0\n1\n2\n3\n");
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/fd/0")).unwrap(),
        Path::new("/dev/null")
    );
    drop(leak);
}

#[test]
fn output_goes_to_the_given_pipe_and_our_copy_is_closed() {
    let _s = serial();
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let prog = program(child_cmd(&[
        "--print",
        "hello from the child",
        "--exit-after-ms",
        "0",
    ]));
    let pid = spawn::spawn(SpawnRequest {
        program: &prog,
        extra_env: &[],
        stdout: Stdio::from(write),
        stderr: Stdio::inherit(),
    })
    .expect("spawn");
    // EOF arrives only when every write end is closed: the child's by exiting, ours by spawn.
    let mut text = String::new();
    fs::File::from(read).read_to_string(&mut text).unwrap();
    assert_eq!(text, "hello from the child\n");
    Statuses::default().wait_exit(pid);
}

#[test]
fn each_program_leads_its_own_session_and_group() {
    let _s = serial();
    let dir = tempdir().unwrap();
    let out = dir.path().join("ids");
    let pid = start(&program(child_cmd(&["--report-ids", p(&out)])), &[]).expect("spawn");
    let _k = Killer(pid);
    let got = fields(&report(&out));
    assert_eq!(got["pid"], pid.to_string());
    assert_eq!(got["pgid"], pid.to_string());
    assert_eq!(got["sid"], pid.to_string());
    assert_ne!(
        nix::unistd::getsid(None).unwrap().as_raw(),
        pid,
        "not our session"
    );
}

// ---------------------------------------------------------------------------------------------
// exec failures

#[test]
fn missing_binary_is_127_with_the_reason() {
    let _s = serial();
    let err = start(&program(vec!["/nonexistent/sv-proc-binary".into()]), &[])
        .expect_err("missing binary");
    assert_eq!(err.code, 127);
    assert_eq!(err.reason, "command not found: /nonexistent/sv-proc-binary");

    let err = start(&program(vec!["sv-no-such-command".into()]), &[]).expect_err("not on PATH");
    assert_eq!(err.code, 127);
    assert_eq!(err.reason, "command not found: sv-no-such-command");
    assert_eq!(err.to_string(), err.reason);

    let r = reap::reap();
    assert!(r.exited.is_empty() && r.no_children, "{r:?}");
}

#[test]
fn script_with_a_missing_interpreter_says_so() {
    let _s = serial();
    let dir = tempdir().unwrap();
    let script = dir.path().join("script");
    fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let err = start(&program(vec![p(&script).into()]), &[]).expect_err("no interpreter");
    assert_eq!(err.code, 127);
    assert_eq!(
        err.reason,
        format!(
            "cannot execute {}: its interpreter is missing (No such file or directory)",
            script.display()
        )
    );
}

#[test]
fn non_executable_file_is_126_with_the_reason() {
    let _s = serial();
    let dir = tempdir().unwrap();
    let file = dir.path().join("not-executable");
    fs::write(&file, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let err = start(&program(vec![p(&file).into()]), &[]).expect_err("not executable");
    assert_eq!(err.code, 126);
    assert_eq!(
        err.reason,
        format!("cannot execute {}: Permission denied", file.display())
    );

    let err = start(&program(vec![p(dir.path()).into()]), &[]).expect_err("a directory");
    assert_eq!(err.code, 126);
    assert!(reap::reap().no_children);
}

#[test]
fn empty_command_is_refused() {
    let _s = serial();
    let err = start(&program(Vec::new()), &[]).expect_err("empty");
    assert_eq!((err.code, err.reason.as_str()), (1, "empty command"));
    let err = spawn::spawn_probe(&[], &[]).expect_err("empty probe");
    assert_eq!(err.code, 1);
}

// ---------------------------------------------------------------------------------------------
// reaping

#[test]
fn reap_reports_exit_codes_and_signals_by_pid() {
    let _s = serial();
    let exits = start(
        &program(child_cmd(&["--exit", "3", "--exit-after-ms", "0"])),
        &[],
    )
    .expect("spawn");
    let runs = start(&program(child_cmd(&[])), &[]).expect("spawn");
    let mut st = Statuses::default();
    assert_eq!(st.wait_exit(exits), ExitStatus::Code(3));

    // Still running: reaping does not block and says children remain.
    let r = reap::reap();
    assert!(r.exited.is_empty() && !r.no_children, "{r:?}");

    assert!(signals::send(runs, Signal::Kill, false).unwrap());
    let status = st.wait_exit(runs);
    assert_eq!(status, ExitStatus::Signaled(libc::SIGKILL));
    assert_eq!(status.code(), 137);

    // Gone: signalling it again is not an error.
    assert!(
        !signals::send(runs, Signal::Term, false).unwrap(),
        "already gone"
    );
    assert!(reap::reap().no_children);
}

#[test]
fn one_reap_drains_a_burst_of_50_exits() {
    let _s = serial();
    let pids: Vec<i32> = (0..50)
        .map(|_| start(&program(child_cmd(&[])), &[]).expect("spawn"))
        .collect();
    let _killers: Vec<Killer> = pids.iter().map(|&p| Killer(p)).collect();
    for &pid in &pids {
        assert!(signals::send(pid, Signal::Kill, false).unwrap());
    }
    // All 50 are zombies at once, as after one coalesced SIGCHLD.
    wait_until("all 50 children to be zombies", || {
        pids.iter()
            .all(|&pid| proc_stat(pid).is_some_and(|(state, ..)| state == 'Z'))
    });
    let r = reap::reap();
    assert_eq!(r.exited.len(), 50, "{r:?}");
    let mut reaped: Vec<i32> = r.exited.iter().map(|(pid, _)| *pid).collect();
    reaped.sort_unstable();
    let mut expected = pids.clone();
    expected.sort_unstable();
    assert_eq!(reaped, expected);
    assert!(
        r.exited
            .iter()
            .all(|(_, s)| *s == ExitStatus::Signaled(libc::SIGKILL))
    );
    assert!(r.no_children, "the same call reports that no child is left");
}

#[test]
fn reap_with_no_children_says_so() {
    let _s = serial();
    let r = reap::reap();
    assert_eq!(
        r,
        reap::Reaped {
            exited: Vec::new(),
            no_children: true
        }
    );
}

// ---------------------------------------------------------------------------------------------
// signals, groups, orphans

#[test]
fn group_signal_reaches_a_grandchild() {
    let _s = serial();
    // As a subreaper, the grandchild is re-parented to us if the shell dies first, so its exit
    // is observable either way.
    assert_eq!(reap::init().unwrap(), ReaperMode::Subreaper);
    let dir = tempdir().unwrap();
    let pid_file = dir.path().join("grandchild.pid");
    let script = format!(
        "'{}' --pid-file '{}' & wait",
        test_child().display(),
        pid_file.display()
    );
    let sh = start(&program(vec!["sh".into(), "-c".into(), script]), &[]).expect("spawn sh");
    let _k = Killer(sh);
    let grandchild: i32 = report(&pid_file).trim().parse().unwrap();
    assert_eq!(
        proc_stat(grandchild).map(|s| s.1),
        Some(sh),
        "a grandchild of ours"
    );

    assert!(signals::send(sh, Signal::Term, true).unwrap());
    let mut st = Statuses::default();
    assert_eq!(st.wait_exit(sh), ExitStatus::Signaled(libc::SIGTERM));
    wait_until("the grandchild to be gone", || {
        st.0.extend(reap::reap().exited);
        st.0.contains_key(&grandchild) || proc_stat(grandchild).is_none()
    });
    // The group is gone too.
    assert!(
        !signals::send(sh, Signal::Term, true).unwrap(),
        "group gone"
    );
}

/// Live `sleep` processes whose parent is us.
fn sleeps_parented_to_us() -> Vec<i32> {
    let me = std::process::id() as i32;
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&q: &i32| {
            proc_stat(q)
                .is_some_and(|(state, ppid, comm)| ppid == me && comm == "sleep" && state != 'Z')
        })
        .collect()
}

#[test]
fn signal_orphans_as_subreaper_terminates_reparented_grandchildren() {
    let _s = serial();
    assert_eq!(reap::init().unwrap(), ReaperMode::Subreaper);
    // The shell backgrounds three sleeps and exits: they are re-parented to us, the subreaper.
    let script = "sleep 60 & sleep 60 & sleep 60 &";
    let sh = start(&program(vec!["sh".into(), "-c".into(), script.into()]), &[]).expect("spawn");
    let mut st = Statuses::default();
    assert_eq!(st.wait_exit(sh), ExitStatus::Code(0));
    let orphans = wait_for("3 orphans re-parented to us", WAIT, || {
        let found = sleeps_parented_to_us();
        (found.len() == 3).then_some(found)
    });
    let _killers: Vec<Killer> = orphans.iter().map(|&o| Killer(o)).collect();
    assert_eq!(signals::descendants(), orphans);

    assert_eq!(
        signals::signal_orphans(Signal::Term, ReaperMode::Subreaper),
        3
    );
    for &o in &orphans {
        assert_eq!(
            st.wait_exit(o),
            ExitStatus::Signaled(libc::SIGTERM),
            "orphan {o}"
        );
    }
    assert!(reap::reap().no_children);
    assert!(signals::descendants().is_empty());
    assert_eq!(
        signals::signal_orphans(Signal::Term, ReaperMode::Subreaper),
        0
    );
}

#[test]
fn signal_orphans_as_subreaper_reaches_every_descendant() {
    let _s = serial();
    assert_eq!(reap::init().unwrap(), ReaperMode::Subreaper);
    // test-child's orphans inherit its blocked SIGTERM, so only SIGKILL ends them: exactly the
    // case the escalation after `orphan_grace` exists for.
    let pid = start(&program(child_cmd(&["--orphans", "3"])), &[]).expect("spawn");
    let _k = Killer(pid);
    let orphans = wait_for("3 orphans re-parented to us", WAIT, || {
        let found = sleeps_parented_to_us();
        (found.len() == 3).then_some(found)
    });
    let _killers: Vec<Killer> = orphans.iter().map(|&o| Killer(o)).collect();
    let all = signals::descendants();
    assert!(
        all.contains(&pid) && orphans.iter().all(|o| all.contains(o)),
        "{all:?}"
    );

    let n = signals::signal_orphans(Signal::Kill, ReaperMode::Subreaper);
    assert_eq!(n, 4, "3 orphans and their parent");
    let mut st = Statuses::default();
    for &o in orphans.iter().chain([&pid]) {
        assert_eq!(
            st.wait_exit(o),
            ExitStatus::Signaled(libc::SIGKILL),
            "pid {o}"
        );
    }
    assert!(reap::reap().no_children);
}

// ---------------------------------------------------------------------------------------------
// exec probes

#[test]
fn probe_runs_in_its_own_session_with_null_stdio_and_its_env() {
    let _s = serial();
    let dir = tempdir().unwrap();
    let ids = dir.path().join("ids");
    let env = dir.path().join("env");
    let argv = child_cmd(&["--report-ids", p(&ids), "--report-env", p(&env)]);
    let pid = spawn::spawn_probe(&argv, &[("SV_PROBE".into(), "yes".into())]).expect("probe");
    let _k = Killer(pid);
    let got = fields(&report(&ids));
    assert_eq!(got["pgid"], pid.to_string());
    assert_eq!(got["sid"], pid.to_string());
    assert_eq!(fields(&report(&env))["SV_PROBE"], "yes");
    for fd in 0..3 {
        assert_eq!(
            fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap(),
            Path::new("/dev/null"),
            "fd {fd}"
        );
    }
}

#[test]
fn probe_exit_status_comes_through_the_reaper() {
    let _s = serial();
    let argv: Vec<String> = ["sh", "-c", "exit 3"].map(String::from).to_vec();
    let pid = spawn::spawn_probe(&argv, &[]).expect("probe");
    assert_eq!(Statuses::default().wait_exit(pid), ExitStatus::Code(3));
    let err = spawn::spawn_probe(&["/nonexistent/probe".into()], &[]).expect_err("missing");
    assert_eq!(err.code, 127);
}
