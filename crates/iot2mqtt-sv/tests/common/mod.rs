//! Shared helpers for the integration tests of the `iot2mqtt-sv` binary.
//!
//! [`Sv`] runs the real `iot2mqtt-sv run` on a config written into its own temporary directory,
//! with the control socket in that directory (`$IOT2MQTT_SV_SOCKET`) and the supervisor's stdout
//! and stderr captured into files there (files, not pipes: a pipe nobody drains would block the
//! supervisor and turn a bug into a hang). Every wait is bounded ([`sv_testkit::WAIT`]) and
//! polls an observable fact: the status over the control socket, a file written by `test-child`,
//! a line of output, the process having exited. Nothing here sleeps to synchronise.
//!
//! Invariants: an [`Sv`] never outlives its test: on drop it sends SIGTERM, waits (bounded) for
//! the supervisor to stop its programs, then SIGKILLs it. The API is additive: several test files
//! share it, so existing helpers keep their signatures.
// The harness starts, waits for and paces its own processes (the supervisor under test among
// them); the rules in clippy.toml are for the supervisor's runtime.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use sv_testkit::{TempDir, WAIT, tempdir, wait_for};

/// The `iot2mqtt-sv` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_iot2mqtt-sv"))
}

/// The `test-child` fixture. `cargo nextest run --workspace` builds it; a run limited to this
/// package (`-p iot2mqtt-sv`) does not build other packages' binaries, so it is built here on
/// first use, into the same target directory, with the cargo that is running the tests.
pub fn test_child() -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .map(|d| {
                if d.ends_with("deps") {
                    d.parent().unwrap_or(d)
                } else {
                    d
                }
            })
            .expect("test binary directory")
            .to_path_buf();
        if profile_dir.join("test-child").exists() {
            return;
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "sv-testkit", "--bin", "test-child"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // The target directory is the parent of the profile directory (`target/debug`).
        if let Some(target) = profile_dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let st = cmd.status().expect("running cargo build for test-child");
        assert!(st.success(), "building test-child failed: {st}");
    });
    sv_testkit::test_child()
}

/// A TOML basic string holding `s` (JSON string escapes are valid TOML escapes).
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

/// A TOML array running `test-child` with `args`: `["/…/test-child", "--exit", "7"]`.
pub fn child_cmd(args: &[&str]) -> String {
    let mut parts = vec![toml_str(&test_child().display().to_string())];
    parts.extend(args.iter().map(|a| toml_str(a)));
    format!("[{}]", parts.join(", "))
}

/// A file's text, or an empty string while it does not exist yet.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A file's lines (none while it does not exist).
pub fn lines(path: &Path) -> Vec<String> {
    read(path).lines().map(str::to_string).collect()
}

/// Waits until `path` has at least `n` lines, and returns them.
#[track_caller]
pub fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    wait_for(&format!("{n} lines in {}", path.display()), WAIT, || {
        let l = lines(path);
        (l.len() >= n).then_some(l)
    })
}

/// Waits until `path` exists and holds a pid (as `test-child --pid-file` writes it).
#[track_caller]
pub fn wait_pid_file(path: &Path) -> i32 {
    wait_for(&format!("a pid in {}", path.display()), WAIT, || {
        read(path).trim().parse().ok()
    })
}

/// `(state, ppid)` of a process from `/proc/PID/stat`, `None` once it is gone (reaped).
pub fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` may contain spaces and parentheses: fields are counted from the last `)`.
    let mut rest = stat[stat.rfind(')')? + 1..].split_ascii_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` is a live process (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(s, _)| s != 'Z')
}

/// The exit code a shell would report: the code, or `128 + signal` when killed by one.
pub fn shell_code(st: std::process::ExitStatus) -> i32 {
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// How to start an [`Sv`] beyond the config text.
#[derive(Debug, Default, Clone)]
pub struct SvOptions {
    /// A command line to run the supervisor under, e.g. `["unshare", "--pid", "--fork"]`.
    pub wrap: Vec<String>,
    /// Extra environment variables for the supervisor (and so for its programs).
    pub env: Vec<(String, String)>,
    /// Do not set `$IOT2MQTT_SV_SOCKET`: the config's `control_socket` applies.
    pub no_socket_env: bool,
    /// Extra arguments after `run -c FILE` (e.g. `["-s", "/tmp/x.sock"]`).
    pub args: Vec<String>,
    /// Give the supervisor a stdout pipe whose reading end is already closed, like a log
    /// collector that went away ([`Sv::stdout`] is then empty).
    pub stdout_closed: bool,
    /// Give the supervisor one 4 KiB pipe for both stdout and stderr whose reading end the
    /// [`Sv`] holds and never reads, like a stalled log collector ([`Sv::stdout`] and
    /// [`Sv::stderr`] are then empty).
    pub stalled_output: bool,
}

/// A running `iot2mqtt-sv run` in its own temporary directory.
#[derive(Debug)]
pub struct Sv {
    child: Child,
    dir: TempDir,
    /// The control socket (`<dir>/control.sock`).
    pub socket: PathBuf,
    /// The config file (`<dir>/config.toml`).
    pub config: PathBuf,
    exit: Option<i32>,
    signal_pid: Option<i32>,
    /// The unread end of the pipe of [`SvOptions::stalled_output`].
    stalled: Option<std::os::fd::OwnedFd>,
}

impl Sv {
    /// Writes `config` and starts the supervisor on it, then waits until its control socket
    /// answers `status`.
    #[track_caller]
    pub fn start(config: &str) -> Sv {
        let sv = Sv::spawn(config, SvOptions::default());
        sv.wait_socket();
        sv
    }

    /// Writes `config` and starts the supervisor on it without waiting for anything (for
    /// configs that must be refused, or wrapped runs).
    pub fn spawn(config: &str, opts: SvOptions) -> Sv {
        let dir = tempdir().expect("tempdir");
        Sv::spawn_in(dir, config, opts)
    }

    /// Like [`Sv::spawn`] in a directory the test prepared (files the config refers to can be
    /// created first; see [`Sv::new_dir`]).
    pub fn spawn_in(dir: TempDir, config: &str, opts: SvOptions) -> Sv {
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("writing config.toml");
        let socket = dir.path().join("control.sock");
        let out = File::create(dir.path().join("sv.stdout")).expect("creating sv.stdout");
        let err = File::create(dir.path().join("sv.stderr")).expect("creating sv.stderr");
        let mut argv: Vec<String> = opts.wrap.clone();
        argv.push(bin().display().to_string());
        argv.extend(["run".into(), "-c".into(), config_path.display().to_string()]);
        argv.extend(opts.args.iter().cloned());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(dir.path())
            .env_remove("IOT2MQTT_SV_CONFIG")
            .env_remove("IOT2MQTT_SV_SOCKET")
            .env_remove("LOG_LEVEL")
            .stdin(Stdio::null())
            .stderr(err);
        let mut stalled = None;
        if opts.stalled_output {
            let (reader, writer) = nix::unistd::pipe().expect("pipe");
            nix::fcntl::fcntl(&writer, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096))
                .expect("shrinking the pipe");
            cmd.stdout(Stdio::from(writer.try_clone().expect("dup")))
                .stderr(Stdio::from(writer));
            stalled = Some(reader);
        } else if opts.stdout_closed {
            let (reader, writer) = nix::unistd::pipe().expect("pipe");
            drop(reader);
            cmd.stdout(Stdio::from(writer));
        } else {
            cmd.stdout(out);
        }
        if !opts.no_socket_env {
            cmd.env("IOT2MQTT_SV_SOCKET", &socket);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawning iot2mqtt-sv run");
        Sv {
            child,
            dir,
            socket,
            config: config_path,
            exit: None,
            signal_pid: None,
            stalled,
        }
    }

    /// A fresh temporary directory for [`Sv::spawn_in`].
    pub fn new_dir() -> TempDir {
        tempdir().expect("tempdir")
    }

    /// The supervisor's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `<dir>/name`: where tests put files that programs write.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The pid of the process this helper started (the supervisor, or the wrapper).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until the control socket answers `status`; panics (with the supervisor's stderr)
    /// if the supervisor exits first.
    #[track_caller]
    pub fn wait_socket(&self) {
        wait_for("the control socket to answer", WAIT, || {
            if let Ok(Some(st)) = self.child_try_wait() {
                panic!(
                    "the supervisor exited ({st}) before its socket answered; stderr:\n{}",
                    self.stderr()
                );
            }
            self.try_request(&serde_json::json!({"op": "status"}))
        });
    }

    fn child_try_wait(&self) -> std::io::Result<Option<std::process::ExitStatus>> {
        // `try_wait` needs `&mut`; peeking at /proc keeps the read-only helpers `&self`.
        match proc_stat(self.pid()) {
            Some((s, _)) if s != 'Z' => Ok(None),
            _ => Ok(Some(std::process::ExitStatus::from_raw(0))),
        }
    }

    /// Sends one request object on the control socket and returns the reply, or `None` when
    /// the socket cannot be reached or answers nothing.
    pub fn try_request(&self, req: &Value) -> Option<Value> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        s.set_read_timeout(Some(WAIT)).ok()?;
        writeln!(s, "{req}").ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        serde_json::from_str(&line).ok()
    }

    /// Sends one request object on the control socket and returns the reply.
    #[track_caller]
    pub fn request(&self, req: &Value) -> Value {
        self.try_request(req)
            .unwrap_or_else(|| panic!("no reply to {req} from {}", self.socket.display()))
    }

    /// The status in the shape `status --json` prints: `{programs, healthy, reason,
    /// shutting_down, supervisor}`; `None` when the socket does not answer (e.g. after exit).
    pub fn try_status_json(&self) -> Option<Value> {
        let r = self.try_request(&serde_json::json!({"op": "status"}))?;
        (r["ok"] == true).then(|| {
            serde_json::json!({
                "programs": r["status"]["programs"],
                "healthy": r["status"]["healthy"],
                "reason": r["status"]["reason"],
                "shutting_down": r["status"]["shutting_down"],
                "supervisor": r["supervisor"],
            })
        })
    }

    /// [`Sv::try_status_json`], panicking when there is no answer.
    #[track_caller]
    pub fn status_json(&self) -> Value {
        self.try_status_json()
            .unwrap_or_else(|| panic!("no status from {}", self.socket.display()))
    }

    /// One program's status object (`name`, `state`, `pid`, `restarts`, `reason`, ...).
    #[track_caller]
    pub fn program(&self, name: &str) -> Value {
        find_program(&self.status_json(), name)
            .unwrap_or_else(|| panic!("no program {name:?} in status"))
    }

    /// Waits until program `name` satisfies `pred`, and returns its status object.
    #[track_caller]
    pub fn wait_program(&self, what: &str, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(&format!("{name}: {what}"), WAIT, || {
                let p = find_program(&self.try_status_json()?, name)?;
                last = p.clone();
                pred(&p).then_some(p)
            })
        }));
        found.unwrap_or_else(|_| {
            panic!(
                "timed out waiting for {name}: {what}; last status: {last}\nsupervisor stderr:\n{}",
                self.stderr()
            )
        })
    }

    /// Waits until program `name` is in `state` (e.g. `"RUNNING"`, `"FATAL"`), and returns its
    /// status object.
    #[track_caller]
    pub fn wait_state(&self, name: &str, state: &str) -> Value {
        self.wait_program(&format!("state {state}"), name, |p| p["state"] == state)
    }

    /// Runs the binary with `args` against this supervisor's socket and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("IOT2MQTT_SV_SOCKET", &self.socket)
            .env_remove("IOT2MQTT_SV_CONFIG")
            .stdin(Stdio::null())
            .output()
            .expect("running iot2mqtt-sv")
    }

    /// Makes [`Sv::signal`] (and the clean-up on drop) signal `pid` instead of the started
    /// process: the supervisor itself when a wrapper such as `unshare --fork` started it.
    pub fn set_signal_pid(&mut self, pid: i32) {
        self.signal_pid = Some(pid);
    }

    /// Sends `sig` to the supervisor process (see [`Sv::set_signal_pid`]).
    pub fn signal(&self, sig: Signal) {
        // ESRCH (already gone) is fine: the exit is what the caller will wait for.
        let _ = kill(Pid::from_raw(self.signal_pid.unwrap_or(self.pid())), sig);
    }

    /// Sends SIGTERM to the supervisor.
    pub fn sigterm(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// The exit code if the supervisor has exited (`128 + signal` when killed by one).
    pub fn try_exit(&mut self) -> Option<i32> {
        if self.exit.is_none()
            && let Ok(Some(st)) = self.child.try_wait()
        {
            self.exit = Some(shell_code(st));
        }
        self.exit
    }

    /// Waits (bounded) for the supervisor to exit and returns its exit code.
    #[track_caller]
    pub fn wait_exit(&mut self) -> i32 {
        let mut code = None;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for("the supervisor to exit", WAIT, || {
                code = self.try_exit();
                code
            })
        }));
        match r {
            Ok(c) => c,
            Err(_) => panic!(
                "the supervisor did not exit; stdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            ),
        }
    }

    /// Everything the supervisor has written to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.path("sv.stdout")).unwrap_or_default())
            .into_owned()
    }

    /// Everything the supervisor has written to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.path("sv.stderr")).unwrap_or_default())
            .into_owned()
    }

    /// Waits until the supervisor's stdout contains `needle`.
    #[track_caller]
    pub fn wait_stdout(&self, needle: &str) {
        wait_for(&format!("{needle:?} on stdout"), WAIT, || {
            self.stdout().contains(needle).then_some(())
        })
    }

    /// The unread end of the [`SvOptions::stalled_output`] pipe, for a test that starts reading
    /// it (the output then moves again).
    pub fn take_stalled_output(&mut self) -> Option<std::os::fd::OwnedFd> {
        self.stalled.take()
    }

    /// Waits until the supervisor's JSON log (stderr) has an event `message` for which `pred`
    /// holds. The supervisor's own lines reach stderr through the log writer thread, shortly
    /// after the state change that caused them may already show in `status`; one writer writes
    /// them in order, so once this event is there, every line logged before it is too.
    #[track_caller]
    pub fn wait_logged(&self, message: &str, pred: impl Fn(&Value) -> bool) {
        wait_for(&format!("a {message:?} event on stderr"), WAIT, || {
            self.stderr()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|v| v["message"] == message && pred(&v))
                .then_some(())
        })
    }

    /// Waits until the supervisor's stderr contains `needle`.
    #[track_caller]
    pub fn wait_stderr(&self, needle: &str) {
        wait_for(&format!("{needle:?} on stderr"), WAIT, || {
            self.stderr().contains(needle).then_some(())
        })
    }
}

impl Drop for Sv {
    fn drop(&mut self) {
        if self.try_exit().is_some() {
            return;
        }
        // A graceful stop first, so programs do not outlive the test as orphans.
        self.sigterm();
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if self.try_exit().is_some() {
                return;
            }
            // Polling interval of a clean-up path, not synchronisation.
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The object of program `name` in a status (as returned by [`Sv::status_json`]).
pub fn find_program(status: &Value, name: &str) -> Option<Value> {
    status["programs"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
}

/// Writes `config` into `dir/config.toml` and runs `iot2mqtt-sv check -c` on it.
pub fn check(dir: &Path, config: &str) -> Output {
    let path = dir.join("config.toml");
    std::fs::write(&path, config).expect("writing config.toml");
    Command::new(bin())
        .arg("check")
        .arg("-c")
        .arg(&path)
        .env_remove("IOT2MQTT_SV_CONFIG")
        .output()
        .expect("running iot2mqtt-sv check")
}

/// `(pid, comm, state)` of every process whose parent is `ppid`, from /proc (a snapshot).
pub fn children_of(ppid: i32) -> Vec<(i32, String, char)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<(i32, String, char)> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            let comm = stat.get(open + 1..close)?.to_string();
            let (state, parent) = proc_stat(pid)?;
            (parent == ppid).then_some((pid, comm, state))
        })
        .collect();
    out.sort();
    out
}

/// `VmRSS` of `pid` in KiB, from `/proc/PID/status`; `None` once the process is gone.
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Every listening TCP socket of the network namespace as `(local port, socket inode)`, from
/// `/proc/net/tcp` and `/proc/net/tcp6` (state `0A` is `TCP_LISTEN`).
pub fn tcp_listeners() -> Vec<(u16, u64)> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in read(Path::new(table)).lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let port = f[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if let (Some(port), Ok(inode)) = (port, f[9].parse::<u64>()) {
                out.push((port, inode));
            }
        }
    }
    out
}

/// The inodes of the sockets `pid` holds open (`socket:[N]` links in `/proc/PID/fd`).
pub fn socket_inodes(pid: i32) -> std::collections::HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Default::default();
    };
    dir.filter_map(|e| {
        let target = std::fs::read_link(e.ok()?.path()).ok()?;
        let t = target.to_str()?;
        t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    })
    .collect()
}

/// The TCP ports `pid` listens on (its sockets matched against [`tcp_listeners`]).
pub fn listening_ports(pid: i32) -> Vec<u16> {
    let mine = socket_inodes(pid);
    let mut ports: Vec<u16> = tcp_listeners()
        .into_iter()
        .filter(|(_, inode)| mine.contains(inode))
        .map(|(port, _)| port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The process listening on TCP `port`, found through `/proc`; `None` when nobody listens.
pub fn pid_listening_on(port: u16) -> Option<i32> {
    let inodes: Vec<u64> = tcp_listeners()
        .into_iter()
        .filter(|(p, _)| *p == port)
        .map(|(_, i)| i)
        .collect();
    if inodes.is_empty() {
        return None;
    }
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| socket_inodes(*pid).iter().any(|i| inodes.contains(i)))
}

/// An HTTP answer: status code, lower-cased header lines, body.
#[derive(Debug)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl HttpReply {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// One HTTP/1.1 request with `Connection: close`, read to the end.
pub fn http(addr: &str, method: &str, path: &str) -> HttpReply {
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to the http server");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("writing the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading the response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpReply {
        status,
        headers,
        body: body.to_string(),
    }
}
