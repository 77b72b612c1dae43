//! Starting programs and exec probes with a clean process state.
//!
//! Every child this module starts:
//! - leads its own session and process group (pgid == sid == pid), so a group signal reaches
//!   everything it started and nothing of the supervisor's;
//! - starts with default dispositions for every signal and an empty signal mask, whatever the
//!   supervisor ignores or blocks (std resets only SIGPIPE and keeps the parent's mask);
//! - inherits no descriptor but 0, 1 and 2: every fd ≥ 3 is marked close-on-exec in the child, so
//!   descriptors opened by any thread without `O_CLOEXEC` never leak into a program;
//! - gets, in this order, its `rlimits` (before the user switch, which drops the privilege to
//!   raise a hard limit), its umask, its user (supplementary groups, then gid, then uid), its
//!   working directory (entered as the new user, as supervisord does) and its environment:
//!   the supervisor's, then its `env_file`s (only for variables the supervisor does not have),
//!   then HOME/USER/LOGNAME of `user`, then `environment` (secrets from files included), then
//!   the caller's extra variables (later wins).
//!
//! Nothing here waits for a child: exit statuses belong to the one reaper ([`crate::reap`]), and
//! the `std::process::Child` is dropped at once (dropping neither waits nor kills). The one
//! exception is std's own: when the exec fails, `Command::spawn` waits for that child itself
//! (its pid is never returned) and panics if someone else reaped it first, so [`spawn`] and
//! [`crate::reap::reap`] hold the same lock.
//!
//! fork(2) in a multi-threaded process leaves the child with one thread and possibly locked
//! allocator mutexes, so everything that allocates or reads `/etc/passwd` and `/etc/group`
//! happens in the parent before spawning; the `pre_exec` closure makes only async-signal-safe
//! system calls and never allocates.
//!
//! std carries only an errno back from a failed child, so the closure tags the errno with the
//! step that failed (`step << 16 | errno`) and [`spawn`] turns it into a message; an untagged
//! errno is the exec's own.
//!
//! PATH: std runs `execvp` after installing the child's environment, so a bare command name is
//! looked up in the PATH the program will see (its own `environment` may change it); glibc falls
//! back to `/bin:/usr/bin` when PATH is unset.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::{Gid, Uid, User};
use sv_core::config::ProgramConfig;

/// What to start: a program from the config, its output destinations and extra variables.
#[derive(Debug)]
pub struct SpawnRequest<'a> {
    /// The program: `command`, `directory`, `environment`, `user`, `umask` are applied.
    pub program: &'a ProgramConfig,
    /// Added after the program's own environment (NOTIFY_SOCKET, IOT2MQTT_SV_PROGRAM, ...).
    pub extra_env: &'a [(String, String)],
    /// `Stdio::inherit()` or `Stdio::from(OwnedFd)` (a pipe's write end; the parent's copy is
    /// closed when the spawn returns).
    pub stdout: Stdio,
    /// Like `stdout`.
    pub stderr: Stdio,
}

/// A program could not be started. This is a failed start of that program, never a failure of
/// the supervisor.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct SpawnError {
    /// Lower-case, with the OS reason, e.g. `command not found: /usr/bin/x`. The program's name
    /// is not included: the caller adds it.
    pub reason: String,
    /// The shell's convention: 127 command not found, 126 found but not executable, 1 anything
    /// else (bad user, bad directory, fork failure).
    pub code: i32,
}

impl SpawnError {
    fn other(reason: impl Into<String>) -> SpawnError {
        SpawnError {
            reason: reason.into(),
            code: 1,
        }
    }
}

/// Starts a program and returns its pid. The exit status arrives through [`crate::reap::reap`].
/// Its `user` is looked up in the passwd and group databases now; [`spawn_as`] takes one
/// resolved earlier.
pub fn spawn(req: SpawnRequest<'_>) -> Result<i32, SpawnError> {
    let user = match &req.program.user {
        Some(spec) => Some(resolve_user(spec)?),
        None => None,
    };
    spawn_as(req, user.as_ref())
}

/// Like [`spawn`], with the program's `user` already resolved ([`resolve_users`]), so that no
/// passwd or group lookup (files, or NSS modules that may block on the network) happens in the
/// supervisor's loop per start. `user` is ignored for a program without `user`.
pub fn spawn_as(req: SpawnRequest<'_>, user: Option<&ResolvedUser>) -> Result<i32, SpawnError> {
    let program = req.program;
    let mut setup = ChildSetup::base();
    setup.umask = program.umask.map(|m| (m & 0o7777) as libc::mode_t);
    setup.rlimits = program
        .rlimits
        .iter()
        .map(|&(limit, value)| {
            let v = value.map_or(libc::RLIM_INFINITY, |v| v as libc::rlim_t);
            let rl = libc::rlimit {
                rlim_cur: v,
                rlim_max: v,
            };
            (crate::rlimits::resource(limit) as _, rl, limit.key())
        })
        .collect();

    let mut env: Vec<(String, String)> = env_from_files(program)?;
    if let (Some(_), Some(user)) = (&program.user, user) {
        env.push(("HOME".into(), user.home.clone()));
        env.push(("USER".into(), user.name.clone()));
        env.push(("LOGNAME".into(), user.name.clone()));
        setup.ids = user.switch.clone();
    }
    env.extend(program.environment.iter().cloned());
    env.extend(secret_env(program)?);
    env.extend(req.extra_env.iter().cloned());

    if let Some(dir) = &program.directory {
        setup.dir = Some(CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
            SpawnError::other(format!("directory {}: contains a NUL byte", dir.display()))
        })?);
        setup.dir_display = dir.display().to_string();
    }
    if let Some(spec) = &program.user {
        setup.user_display = spec.clone();
    }

    launch(&program.command, &env, setup, req.stdout, req.stderr)
}

/// The variables of the program's `env_file`s (in order, later files winning), minus those the
/// supervisor's own environment already has: the platform's rule that real variables win over
/// `.env`, so a program sees the values the bridge sees. Read at every spawn, so an edited file
/// applies at the next start. A malformed line is skipped with a warning naming the line (the
/// platform's own reader skips it too); a missing or unreadable file is a failed start.
fn env_from_files(program: &ProgramConfig) -> Result<Vec<(String, String)>, SpawnError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for path in &program.env_files {
        let bytes = std::fs::read(path).map_err(|e| {
            SpawnError::other(format!("env_file {}: {}", path.display(), os_reason(&e)))
        })?;
        let file = sv_core::envfile::EnvFile::parse(&bytes);
        for (_, m) in file.malformed() {
            tracing::warn!(program = %program.name, "env_file {}: {m}: line skipped", path.display());
        }
        for (k, v) in file.vars() {
            if std::env::var_os(k).is_none() {
                out.retain(|(o, _)| o != k);
                out.push((k.to_string(), v.to_string()));
            }
        }
    }
    Ok(out)
}

/// `NAME = { file = "..." }` entries: read here, in the parent, right before the fork, and handed
/// to this child's `Command` only, so the value never enters the supervisor's own environment,
/// its logs or its status. Errors name the variable and the file, never the content.
fn secret_env(program: &ProgramConfig) -> Result<Vec<(String, String)>, SpawnError> {
    program
        .secret_env
        .iter()
        .map(|(name, path)| {
            let fail = |why: String| {
                SpawnError::other(format!(
                    "environment {name}: file {}: {why}",
                    path.display()
                ))
            };
            let bytes = std::fs::read(path).map_err(|e| fail(os_reason(&e)))?;
            let mut text = String::from_utf8(bytes).map_err(|_| fail("not UTF-8".into()))?;
            if text.contains('\0') {
                return Err(fail("contains a NUL byte".into()));
            }
            // `echo secret > file` and most secret stores end the value with a newline.
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            Ok((name.clone(), text))
        })
        .collect()
}

/// The OS reason alone (`No such file or directory`), without std's ` (os error 2)`.
fn os_reason(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// For exec readiness/liveness probes: spawns `argv` (no shell) in its own session with
/// stdin/stdout/stderr = /dev/null and the same hygiene as [`spawn`], with `env` added to the
/// supervisor's environment. The caller routes its exit status via the reaper and may kill its
/// group on timeout.
pub fn spawn_probe(argv: &[String], env: &[(String, String)]) -> Result<i32, SpawnError> {
    launch(argv, env, ChildSetup::base(), Stdio::null(), Stdio::null())
}

/// Everything the child applies between fork and exec, computed in the parent.
#[derive(Debug)]
struct ChildSetup {
    umask: Option<libc::mode_t>,
    ids: Option<Ids>,
    dir: Option<CString>,
    /// Upper bound for the close-on-exec fallback loop (RLIMIT_NOFILE soft limit).
    fd_limit: libc::c_int,
    dir_display: String,
    user_display: String,
    /// `rlimits`, applied before the user switch (raising a hard limit needs the privilege the
    /// switch drops); the key names the limit in errors.
    rlimits: Vec<(RlimitResource, libc::rlimit, &'static str)>,
}

/// setrlimit's resource argument type, which glibc and musl spell differently.
#[cfg(target_env = "gnu")]
type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type RlimitResource = libc::c_int;

#[derive(Debug, Clone)]
struct Ids {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

impl ChildSetup {
    fn base() -> ChildSetup {
        let fd_limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft.min(i32::MAX as u64) as libc::c_int)
            .unwrap_or(1024);
        ChildSetup {
            umask: None,
            ids: None,
            dir: None,
            fd_limit,
            dir_display: String::new(),
            user_display: String::new(),
            rlimits: Vec::new(),
        }
    }
}

/// The steps of the child set-up, as tags on the errno std sends back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
enum Step {
    Setsid = 1,
    Groups = 2,
    Gid = 3,
    Uid = 4,
    Chdir = 5,
    Fds = 6,
    Mask = 7,
    Rlimit = 8,
}

const STEP_SHIFT: i32 = 16;

impl Step {
    fn from_tag(tag: i32) -> Option<Step> {
        [
            Step::Setsid,
            Step::Groups,
            Step::Gid,
            Step::Uid,
            Step::Chdir,
            Step::Fds,
            Step::Mask,
            Step::Rlimit,
        ]
        .into_iter()
        .find(|s| *s as i32 == tag)
    }

    /// The current errno, tagged with this step. Allocation-free (safe after fork).
    fn fail(self) -> io::Error {
        io::Error::from_raw_os_error(((self as i32) << STEP_SHIFT) | Errno::last_raw())
    }
}

fn launch(
    argv: &[String],
    env: &[(String, String)],
    setup: ChildSetup,
    stdout: Stdio,
    stderr: Stdio,
) -> Result<i32, SpawnError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(SpawnError::other("empty command"));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }

    let dir_display = setup.dir_display.clone();
    let user_display = setup.user_display.clone();
    let rlimit_keys: Vec<&'static str> = setup.rlimits.iter().map(|r| r.2).collect();
    // SAFETY: the closure runs in the forked child before exec. It only makes async-signal-safe
    // system calls (setsid, setrlimit, rt_sigaction, umask, setgroups/setgid/setuid, chdir,
    // close_range/fcntl, sigprocmask) on data prepared by the parent, and never allocates, locks
    // or panics: its errors are plain errnos.
    unsafe {
        cmd.pre_exec(move || child_setup(&setup));
    }

    // The process lock keeps the reaper from stealing the status of a child whose exec failed,
    // which std waits for itself (see the module docs).
    let _lock = crate::reap::process_lock();
    // Block every signal in this thread across fork: until the child has reset its dispositions,
    // a signal sent to it (Ctrl-C to our process group) would run the supervisor's handlers in
    // the child and write to the supervisor's own signal pipes. The child unblocks them last.
    let saved = SigSet::all().thread_swap_mask(SigmaskHow::SIG_SETMASK).ok();
    let result = cmd.spawn();
    if let Some(saved) = saved {
        // Restoring a mask we just read cannot fail; if it did, the old mask stays blocked-all,
        // which delays signals rather than losing them.
        let _ = saved.thread_set_mask();
    }
    drop(_lock);

    match result {
        Ok(child) => {
            let pid = child.id() as i32;
            // Dropping the Child neither waits nor kills: the reaper owns the exit status.
            drop(child);
            tracing::debug!(pid, command = %program, "spawned");
            Ok(pid)
        }
        Err(e) => Err(describe(
            &e,
            program,
            &dir_display,
            &user_display,
            &rlimit_keys,
        )),
    }
}

/// Runs in the forked child; see the SAFETY comment at the call site.
fn child_setup(p: &ChildSetup) -> io::Result<()> {
    nix::unistd::setsid().map_err(|_| Step::Setsid.fail())?;
    for (resource, limit, _) in &p.rlimits {
        // SAFETY: setrlimit(2) on a struct owned by the closure; async-signal-safe.
        if unsafe { libc::setrlimit(*resource, limit) } != 0 {
            return Err(Step::Rlimit.fail());
        }
    }
    if let Some(mask) = p.umask {
        // SAFETY: umask(2) cannot fail and touches no memory.
        unsafe { libc::umask(mask) };
    }
    if let Some(ids) = &p.ids {
        // setgroups before setgid before setuid: once the uid is dropped the others are denied.
        // SAFETY: the pointer and length describe a live Vec owned by the closure.
        if unsafe { libc::setgroups(ids.groups.len(), ids.groups.as_ptr()) } != 0 {
            return Err(Step::Groups.fail());
        }
        // SAFETY: plain system calls on integers.
        if unsafe { libc::setgid(ids.gid) } != 0 {
            return Err(Step::Gid.fail());
        }
        // SAFETY: as above.
        if unsafe { libc::setuid(ids.uid) } != 0 {
            return Err(Step::Uid.fail());
        }
    }
    if let Some(dir) = &p.dir {
        // SAFETY: `dir` is a NUL-terminated string owned by the closure.
        if unsafe { libc::chdir(dir.as_ptr()) } != 0 {
            return Err(Step::Chdir.fail());
        }
    }
    mark_fds_cloexec(p.fd_limit)?;
    // Every signal but glibc's two internal ones is blocked until the mask is emptied, so no
    // handler of ours can run here whatever the order; resetting after the user switch keeps
    // glibc's set-id machinery untouched while it may still need its signal.
    reset_dispositions();
    // Last, so no signal is delivered before every disposition is back to default.
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|_| Step::Mask.fail())?;
    Ok(())
}

/// Sets every catchable signal (1..=64, standard and real-time) to SIG_DFL. exec resets handled
/// signals anyway, but ignored ones survive exec (signal(7)).
///
/// The raw `rt_sigaction` system call is used because glibc's `sigaction` refuses its two
/// internal real-time signals (32 and 33) with EINVAL, and an ignored signal 32 inherited from
/// whoever started us would otherwise be passed on to every program.
fn reset_dispositions() {
    // The kernel's `struct sigaction` (handler, flags, restorer, mask in some arch-specific
    // order): all zeroes is SIG_DFL with no flags and an empty mask on every layout.
    let dfl = [0u64; 4];
    // The kernel's sigset size in bytes (_NSIG / 8).
    const SIGSET_SIZE: usize = if cfg!(any(target_arch = "mips", target_arch = "mips64")) {
        16
    } else {
        8
    };
    for signo in 1..=64 {
        if signo == libc::SIGKILL || signo == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction(2) reads `dfl` (a live local at least as large as the kernel's
        // struct) and writes nothing (old action pointer is null); it is a plain system call,
        // async-signal-safe. Failure is impossible for 1..=64 except KILL/STOP, skipped above.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signo as libc::c_long,
                dfl.as_ptr(),
                std::ptr::null_mut::<u64>(),
                SIGSET_SIZE,
            );
        }
    }
}

/// Marks every descriptor ≥ 3 close-on-exec. Marking rather than closing keeps std's own
/// exec-status pipe (already close-on-exec) working.
fn mark_fds_cloexec(limit: libc::c_int) -> io::Result<()> {
    // SAFETY: close_range(2) only changes descriptor flags; no memory is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // ENOSYS before Linux 5.9, EINVAL before 5.11 (no CLOSE_RANGE_CLOEXEC): the 5.4 and 5.10
    // LTS kernels of many IoT boards. Walking every possible descriptor up to RLIMIT_NOFILE
    // (1,048,576 in Docker) would cost a million fcntl calls per spawn and per exec probe, so
    // only the open ones are visited, as /proc/self/fd lists them; the full walk is left for a
    // system without /proc (issue 12).
    match mark_open_fds_cloexec() {
        Some(r) => r.map(|_| ()),
        None => {
            for fd in 3..limit {
                set_cloexec(fd)?;
            }
            Ok(())
        }
    }
}

/// Marks `fd` close-on-exec if it is open and not marked yet.
fn set_cloexec(fd: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl(2) on an arbitrary integer only fails with EBADF when it is not open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags >= 0
        && flags & libc::FD_CLOEXEC == 0
        // SAFETY: as above.
        && unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } != 0
    {
        return Err(Step::Fds.fail());
    }
    Ok(())
}

/// The `getdents64` buffer: `struct linux_dirent64` records are 8-byte aligned.
#[repr(C, align(8))]
struct DirentBuf([u8; 4096]);

/// Marks every open descriptor ≥ 3 close-on-exec, visiting only those listed in
/// /proc/self/fd. Safe after fork: plain system calls (open, getdents64, fcntl, close) on a
/// stack buffer, no allocation. Returns how many descriptors were marked or found marked, or
/// `None` when /proc/self/fd cannot be opened (no /proc), for the caller's fallback.
///
/// Setting a flag does not change the descriptor table, so marking while listing sees every
/// descriptor that was open when the listing started.
fn mark_open_fds_cloexec() -> Option<io::Result<usize>> {
    // SAFETY: a NUL-terminated literal; open(2) returns a new descriptor or -1.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return None;
    }
    let result = visit_listed_fds(dir);
    // SAFETY: `dir` was opened above and is closed once.
    unsafe { libc::close(dir) };
    Some(result)
}

fn visit_listed_fds(dir: libc::c_int) -> io::Result<usize> {
    // d_ino (8), d_off (8), d_reclen (2), d_type (1), then the NUL-terminated name.
    const NAME: usize = 19;
    let mut buf = DirentBuf([0; 4096]);
    let mut visited = 0;
    loop {
        // SAFETY: getdents64(2) writes at most `buf.0.len()` bytes into the live buffer.
        let n =
            unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.0.as_mut_ptr(), buf.0.len()) };
        if n < 0 {
            return Err(Step::Fds.fail());
        }
        if n == 0 {
            return Ok(visited);
        }
        let bytes = buf.0.get(..n as usize).unwrap_or(&[]);
        let mut off = 0;
        while let Some(rec) = bytes.get(off..) {
            let Some(&[lo, hi]) = rec.get(16..18) else {
                break;
            };
            let reclen = u16::from_ne_bytes([lo, hi]) as usize;
            if reclen <= NAME || reclen > rec.len() {
                break;
            }
            if let Some(fd) = parse_fd(&rec[NAME..reclen])
                && fd > 2
                && fd != dir
            {
                set_cloexec(fd)?;
                visited += 1;
            }
            off += reclen;
        }
    }
}

/// A descriptor number from a NUL-terminated directory entry name; `None` for `.`, `..` and
/// anything else that is not a plain number.
fn parse_fd(name: &[u8]) -> Option<libc::c_int> {
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let digits = &name[..end];
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0 as libc::c_int, |acc, &b| {
        let d = (b as char).to_digit(10)? as libc::c_int;
        acc.checked_mul(10)?.checked_add(d)
    })
}

/// Turns std's spawn error (possibly tagged with a [`Step`]) into a [`SpawnError`].
fn describe(e: &io::Error, program: &str, dir: &str, user: &str, rlimits: &[&str]) -> SpawnError {
    let Some(raw) = e.raw_os_error() else {
        // Not from the child: e.g. a NUL byte in an argument or variable.
        return SpawnError::other(format!("cannot start {program}: {e}"));
    };
    let errno = raw & ((1 << STEP_SHIFT) - 1);
    let reason = Errno::from_raw(errno).desc();
    match Step::from_tag(raw >> STEP_SHIFT) {
        Some(Step::Chdir) => SpawnError::other(format!("directory {dir}: {reason}")),
        Some(Step::Groups) => {
            SpawnError::other(format!("setting the groups of user {user}: {reason}"))
        }
        Some(Step::Gid) => SpawnError::other(format!("setting the group of user {user}: {reason}")),
        Some(Step::Uid) => SpawnError::other(format!("switching to user {user}: {reason}")),
        Some(Step::Setsid) => SpawnError::other(format!("creating a session: {reason}")),
        Some(Step::Fds) => SpawnError::other(format!("closing inherited descriptors: {reason}")),
        Some(Step::Mask) => SpawnError::other(format!("resetting the signal mask: {reason}")),
        Some(Step::Rlimit) => SpawnError::other(format!(
            "setting rlimits ({}): {reason} (raising a hard limit needs root)",
            rlimits.join(", ")
        )),
        None => match Errno::from_raw(errno) {
            Errno::ENOENT => {
                // An existing file that exec calls "missing" lacks its interpreter (#! line or
                // ELF loader); say so rather than "not found".
                let exists = program.contains('/') && Path::new(program).exists();
                if exists {
                    SpawnError {
                        reason: format!(
                            "cannot execute {program}: its interpreter is missing ({reason})"
                        ),
                        code: 127,
                    }
                } else {
                    SpawnError {
                        reason: format!("command not found: {program}"),
                        code: 127,
                    }
                }
            }
            Errno::EACCES | Errno::EPERM | Errno::ENOEXEC | Errno::EISDIR | Errno::ETXTBSY => {
                SpawnError {
                    reason: format!("cannot execute {program}: {reason}"),
                    code: 126,
                }
            }
            _ => SpawnError::other(format!("cannot start {program}: {reason}")),
        },
    }
}

/// Resolves the `user` of every program that has one, once per config load. A user that cannot
/// be resolved now is left out: [`spawn`] looks it up again at each start (a user created
/// after the supervisor started still works) and reports the failure as a failed start.
pub fn resolve_users<'a>(
    programs: impl IntoIterator<Item = &'a ProgramConfig>,
) -> HashMap<String, ResolvedUser> {
    programs
        .into_iter()
        .filter_map(|p| Some((p.name.clone(), resolve_user(p.user.as_deref()?).ok()?)))
        .collect()
}

/// A resolved `user`: environment values, and the ids to switch to (None when we already are
/// that user and cannot switch anyway).
#[derive(Debug, Clone)]
pub struct ResolvedUser {
    name: String,
    home: String,
    switch: Option<Ids>,
}

/// Resolves a user name or numeric uid against the passwd database, in the parent.
///
/// A numeric uid without a passwd entry is accepted (common in containers): it runs with
/// gid = uid, no supplementary groups, HOME=/ and USER/LOGNAME set to the number.
fn resolve_user(spec: &str) -> Result<ResolvedUser, SpawnError> {
    let lookup_err =
        |e: Errno| SpawnError::other(format!("looking up user {spec:?}: {}", e.desc()));
    let entry = match spec.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid))
            .map_err(lookup_err)?
            .ok_or(uid),
        Err(_) => match User::from_name(spec).map_err(lookup_err)? {
            Some(u) => Ok(u),
            None => return Err(SpawnError::other(format!("unknown user {spec:?}"))),
        },
    };
    let (name, home, uid, gid, groups) = match entry {
        Ok(u) => {
            let cname = CString::new(u.name.as_bytes()).map_err(|_| {
                SpawnError::other(format!("user {spec:?}: name contains a NUL byte"))
            })?;
            let groups = nix::unistd::getgrouplist(&cname, u.gid).map_err(|e| {
                SpawnError::other(format!("reading the groups of user {spec:?}: {}", e.desc()))
            })?;
            let home = u.dir.as_os_str();
            (
                u.name.clone(),
                String::from_utf8_lossy(OsStr::as_bytes(home)).into_owned(),
                u.uid,
                u.gid,
                groups.into_iter().map(Gid::as_raw).collect(),
            )
        }
        Err(uid) => (
            uid.to_string(),
            "/".to_string(),
            Uid::from_raw(uid),
            Gid::from_raw(uid),
            Vec::new(),
        ),
    };
    let euid = nix::unistd::geteuid();
    let switch = if euid.is_root() {
        Some(Ids {
            uid: uid.as_raw(),
            gid: gid.as_raw(),
            groups,
        })
    } else if euid == uid {
        None
    } else {
        return Err(SpawnError::other(format!(
            "cannot switch to user {spec:?} (uid {uid}): the supervisor is not running as root"
        )));
    };
    Ok(ResolvedUser { name, home, switch })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::resource::{Resource, getrlimit, setrlimit};

    #[test]
    fn descriptor_names_parse_as_numbers_only() {
        assert_eq!(parse_fd(b"17\0\0"), Some(17));
        assert_eq!(parse_fd(b"0\0"), Some(0));
        assert_eq!(parse_fd(b".\0"), None);
        assert_eq!(parse_fd(b"..\0"), None);
        assert_eq!(parse_fd(b"\0"), None);
        assert_eq!(parse_fd(b"99999999999\0"), None);
    }

    /// The fallback for kernels without CLOSE_RANGE_CLOEXEC, called directly: with
    /// RLIMIT_NOFILE raised to 1,048,576 (Docker's default) and a descriptor near the top, every
    /// open descriptor above 2 ends close-on-exec, and only the open ones are visited. A walk up
    /// to the limit would visit a million.
    #[test]
    fn the_close_on_exec_fallback_visits_only_open_descriptors() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        // Root may raise the hard limit; others make do with theirs.
        let limit = if setrlimit(Resource::RLIMIT_NOFILE, 1 << 20, 1 << 20).is_ok() {
            1 << 20
        } else {
            setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raising the soft limit");
            hard
        };
        let low = nix::unistd::dup(std::io::stdin()).expect("dup");
        let high_fd = (limit - 1) as libc::c_int;
        use std::os::fd::AsRawFd;
        // SAFETY: dup2(2) on a descriptor this test owns, onto a number nothing uses.
        let high = unsafe { libc::dup2(low.as_raw_fd(), high_fd) };
        assert_eq!(high, high_fd, "dup2 near the limit");
        let flags = |fd: libc::c_int| {
            // SAFETY: F_GETFD on a descriptor this test owns.
            unsafe { libc::fcntl(fd, libc::F_GETFD) }
        };
        assert_eq!(
            flags(low.as_raw_fd()) & libc::FD_CLOEXEC,
            0,
            "dup clears the flag"
        );
        assert_eq!(flags(high_fd) & libc::FD_CLOEXEC, 0);

        let visited = mark_open_fds_cloexec()
            .expect("/proc/self/fd is readable")
            .expect("marking");

        let open: Vec<libc::c_int> = std::fs::read_dir("/proc/self/fd")
            .expect("listing /proc/self/fd")
            .filter_map(|e| parse_fd(e.ok()?.file_name().as_encoded_bytes()))
            .filter(|&fd| fd > 2 && flags(fd) >= 0)
            .collect();
        for fd in &open {
            // The listing's own descriptor is gone by now; every other one must be marked.
            assert_ne!(
                flags(*fd) & libc::FD_CLOEXEC,
                0,
                "fd {fd} is not close-on-exec"
            );
        }
        assert!(open.contains(&high_fd));
        assert!(
            visited >= 2 && visited <= open.len() + 1,
            "visited {visited} descriptors with {} open",
            open.len()
        );
        // SAFETY: closing the descriptor dup2 created above, once.
        unsafe { libc::close(high_fd) };
    }
}
