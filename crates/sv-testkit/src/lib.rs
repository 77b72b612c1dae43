//! Test support shared by every crate's integration tests.
//!
//! - [`wait_until`]: the only way tests wait. It polls a condition with a bounded deadline and
//!   panics with a description when the deadline passes, so a broken feature fails loudly instead
//!   of hanging or passing by luck. The deadline is a safety net, never an assertion on speed.
//! - [`free_port`]: a TCP port nobody listens on right now (tests never use fixed ports).
//! - [`Mosquitto`]: a real broker per test on a free loopback port, killed on drop.
//! - [`test_child`]: the path of the `test-child` program (see `src/bin/test-child.rs`).
//! - [`cargo_bin`]: the path of any binary built in this workspace's target directory.
//! - [`TempUser`]: a user with a supplementary group of its own, created as root for one test.
//! - [`require`] / [`require_that`]: what a test needs from the machine (root, `unshare`,
//!   `systemd-notify`, python3, node, go, mosquitto). Missing, the test prints a `skipped:` line
//!   and returns, unless the matching `REQUIRE_*=1` variable is set, which turns the skip into a
//!   failure: CI sets them all, so nothing there passes without testing.
#![forbid(unsafe_code)]
// A test fixture: it waits for and paces its own processes; the rules in clippy.toml
// are for the supervisor's runtime.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use tempfile::{TempDir, tempdir};

/// The default bound for [`wait_until`]: generous, because CI machines are slow and shared.
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `cond` every few milliseconds until it returns `Some`, or panics after `timeout` naming
/// `what`. Returns the value.
#[track_caller]
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        // Polling interval, not synchronisation: the condition is what we wait on.
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// [`wait_for`] with a boolean condition and the default bound.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(what, WAIT, || cond().then_some(()))
}

/// A TCP port on 127.0.0.1 that is free right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}

/// The target directory the running test binary was built into (`target/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test-binary> → target/debug
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of binary `name` built in this workspace. Integration tests of the crate that owns
/// the binary get it from `CARGO_BIN_EXE_*`; others rely on the workspace build (nextest and
/// `cargo test --workspace` build every binary first).
pub fn cargo_bin(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo nextest run --workspace` (scripts/test)",
        path.display()
    );
    path
}

/// The `test-child` program.
pub fn test_child() -> PathBuf {
    cargo_bin("test-child")
}

/// Whether tests that need mosquitto must fail (rather than skip) when it is missing.
pub fn mosquitto_required() -> bool {
    Requirement::Mosquitto.required()
}

/// Something a test needs from the machine, with the variable that makes it mandatory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Running as root (user switching, PID namespaces, mounts): `REQUIRE_ROOT`.
    Root,
    /// `unshare --pid --fork --mount-proc` works (a PID namespace): `REQUIRE_UNSHARE`.
    Unshare,
    /// systemd's `systemd-notify` is installed: `REQUIRE_SYSTEMD_NOTIFY`.
    SystemdNotify,
    /// `python3` is installed: `REQUIRE_PYTHON`.
    Python,
    /// `node` is installed: `REQUIRE_NODE`.
    Node,
    /// `go` is installed: `REQUIRE_GO`.
    Go,
    /// `mosquitto` is installed: `REQUIRE_MOSQUITTO`.
    Mosquitto,
}

impl Requirement {
    /// The environment variable that turns a missing requirement into a failure when `1`.
    pub fn env_var(self) -> &'static str {
        match self {
            Requirement::Root => "REQUIRE_ROOT",
            Requirement::Unshare => "REQUIRE_UNSHARE",
            Requirement::SystemdNotify => "REQUIRE_SYSTEMD_NOTIFY",
            Requirement::Python => "REQUIRE_PYTHON",
            Requirement::Node => "REQUIRE_NODE",
            Requirement::Go => "REQUIRE_GO",
            Requirement::Mosquitto => "REQUIRE_MOSQUITTO",
        }
    }

    /// Whether a test missing this must fail rather than skip.
    pub fn required(self) -> bool {
        std::env::var(self.env_var()).is_ok_and(|v| v == "1")
    }

    /// Whether the machine provides it right now, and what is missing when not.
    pub fn check(self) -> Result<(), String> {
        let tool = |name: &str| match which(name) {
            Some(_) => Ok(()),
            None => Err(format!("{name} is not installed")),
        };
        match self {
            Requirement::Root => {
                if nix::unistd::geteuid().is_root() {
                    Ok(())
                } else {
                    Err("this test needs root".into())
                }
            }
            Requirement::Unshare => {
                let ok = Command::new("unshare")
                    .args(["--pid", "--fork", "--mount-proc", "true"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    Ok(())
                } else {
                    Err("cannot create a PID namespace here (unshare --pid needs root)".into())
                }
            }
            Requirement::SystemdNotify => tool("systemd-notify"),
            Requirement::Python => tool("python3"),
            Requirement::Node => tool("node"),
            Requirement::Go => tool("go"),
            Requirement::Mosquitto => tool("mosquitto"),
        }
    }
}

/// Whether `req` is met. When it is not: panics if its `REQUIRE_*` variable is `1`, otherwise
/// prints a `skipped:` line and returns `false` (the caller returns).
#[track_caller]
pub fn require(req: Requirement) -> bool {
    match req.check() {
        Ok(()) => true,
        Err(why) => require_that(req, false, &why),
    }
}

/// Like [`require`] for a condition the caller checked itself (`met`), described by `why`
/// when it does not hold (e.g. "groupadd/useradd are not available").
#[track_caller]
pub fn require_that(req: Requirement, met: bool, why: &str) -> bool {
    if met {
        return true;
    }
    if req.required() {
        panic!("{why}, and {}=1 makes this a failure", req.env_var());
    }
    eprintln!("skipped: {why}");
    false
}

/// Like [`require_that`], the condition being that `cmd` runs and succeeds (its output
/// discarded): a probe of what this machine allows, e.g. `unshare --mount mount …`.
#[track_caller]
pub fn require_command(req: Requirement, cmd: &mut std::process::Command, why: &str) -> bool {
    let ok = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require_that(req, ok, why)
}

fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// A real mosquitto broker on a free loopback port, killed when dropped.
#[derive(Debug)]
pub struct Mosquitto {
    child: Option<Child>,
    /// The broker's port on 127.0.0.1.
    pub port: u16,
    dir: TempDir,
    extra_conf: String,
}

impl Mosquitto {
    /// Starts a broker, or returns `None` (after printing a skip line) when mosquitto is not
    /// installed and `REQUIRE_MOSQUITTO` is not `1`.
    pub fn start() -> Option<Mosquitto> {
        Self::start_with("")
    }

    /// Like [`Mosquitto::start`] with extra lines for the broker's config file.
    pub fn start_with(extra_conf: &str) -> Option<Mosquitto> {
        if !require(Requirement::Mosquitto) {
            return None;
        }
        let mut m = Mosquitto {
            child: None,
            port: free_port(),
            dir: tempdir().expect("tempdir"),
            extra_conf: extra_conf.to_string(),
        };
        m.launch();
        Some(m)
    }

    /// The directory holding the broker's config (usable for certificates and password files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn launch(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n{}\n",
                self.port, self.extra_conf
            ),
        )
        .expect("writing mosquitto.conf");
        let mut child = Command::new(which("mosquitto").expect("mosquitto"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // A file, not a pipe: nobody reads a pipe while the broker runs, and a full pipe
            // (64 KiB of log) would freeze the broker in write(2).
            .stderr(
                std::fs::File::create(self.dir.path().join("mosquitto.log"))
                    .expect("creating mosquitto.log"),
            )
            .spawn()
            .expect("spawning mosquitto");
        let port = self.port;
        let ok = {
            let deadline = Instant::now() + WAIT;
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break true;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break false;
                }
                if Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        if !ok {
            let _ = child.kill();
            let _ = child.wait();
            let err =
                std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default();
            panic!("mosquitto did not start on port {port}: {err}");
        }
        self.child = Some(child);
    }

    /// The broker's process id while it runs (to pause it with SIGSTOP, for instance).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the broker (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Runs `mosquitto_sub` against this broker; see [`Subscriber`].
    pub fn subscribe(&self, topic: &str) -> Subscriber {
        Subscriber::start(self.port, topic)
    }

    /// Publishes one message with `mosquitto_pub` and waits for it to be sent.
    pub fn publish(&self, topic: &str, payload: &str, qos: u8, retain: bool) {
        let mut cmd =
            Command::new(which("mosquitto_pub").expect("mosquitto_pub (mosquitto-clients)"));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-t",
            topic,
            "-m",
            payload,
            "-q",
            &qos.to_string(),
        ]);
        if retain {
            cmd.arg("-r");
        }
        let st = cmd.status().expect("running mosquitto_pub");
        assert!(st.success(), "mosquitto_pub failed: {st}");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An independent MQTT subscriber (`mosquitto_sub -v`), collecting `topic payload` lines.
#[derive(Debug)]
pub struct Subscriber {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Subscriber {
    fn start(port: u16, topic: &str) -> Subscriber {
        let mut child =
            Command::new(which("mosquitto_sub").expect("mosquitto_sub (mosquitto-clients)"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-t",
                    topic,
                    "-v",
                    "-q",
                    "1",
                    "-F",
                    "%t\t%p",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawning mosquitto_sub");
        let out = child.stdout.take().expect("stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let (t, p) = line.split_once('\t').unwrap_or((&line, ""));
                sink.lock()
                    .expect("lock")
                    .push((t.to_string(), p.to_string()));
            }
        });
        Subscriber { child, lines }
    }

    /// Every `(topic, payload)` received so far.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.lines.lock().expect("lock").clone()
    }

    /// Waits until a message on `topic` satisfies `pred`, and returns its payload.
    #[track_caller]
    pub fn wait_for(&self, topic: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_for(&format!("a message on {topic}"), WAIT, || {
            self.messages()
                .into_iter()
                .find(|(t, p)| t == topic && pred(p))
                .map(|(_, p)| p)
        })
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A user and group created for one test and deleted afterwards.
#[derive(Debug)]
pub struct TempUser {
    /// The user's name.
    pub user: String,
    /// The name of its supplementary group.
    pub group: String,
}

impl TempUser {
    /// Creates both (as root), or `None` when groupadd/useradd fail or are missing.
    pub fn create() -> Option<TempUser> {
        let id = std::process::id();
        let t = TempUser {
            user: format!("svprocu{id}"),
            group: format!("svprocg{id}"),
        };
        let run = |args: &[&str]| {
            std::process::Command::new(args[0])
                .args(&args[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !run(&["groupadd", &t.group]) {
            return None;
        }
        let ok = run(&[
            "useradd",
            "-M",
            "-N",
            "-g",
            "nogroup",
            "-G",
            &t.group,
            "-d",
            "/nonexistent",
            "-s",
            "/usr/sbin/nologin",
            &t.user,
        ]);
        if !ok {
            // Drop deletes the group.
            drop(t);
            return None;
        }
        Some(t)
    }
}

impl TempUser {
    /// For a test that needs one: the user with its passwd entry and its group's entry, or
    /// `None` after [`require`] said why not (root is needed; groupadd/useradd must exist).
    pub fn required() -> Option<(TempUser, nix::unistd::User, nix::unistd::Group)> {
        if !require(Requirement::Root) {
            return None;
        }
        let tmp = TempUser::create();
        if !require_that(
            Requirement::Root,
            tmp.is_some(),
            "groupadd/useradd are not available",
        ) {
            return None;
        }
        let tmp = tmp?;
        let user = nix::unistd::User::from_name(&tmp.user).ok()??;
        let group = nix::unistd::Group::from_name(&tmp.group).ok()??;
        Some((tmp, user, group))
    }

    /// Deletes the user and the group now (dropping does it too; a second time is harmless).
    pub fn delete(&self) {
        for args in [["userdel", &self.user], ["groupdel", &self.group]] {
            let _ = std::process::Command::new(args[0])
                .arg(args[1])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        self.delete();
    }
}
