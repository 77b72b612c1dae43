//! The supervisor's main loop: one task owns the [`Machine`] and every piece of mutable state.
//!
//! Everything else — signal delivery, the control socket's connections, sd_notify sockets,
//! log-line readiness, tcp/http probes, the HTTP server — runs in its own task and talks to
//! this loop through channels; the loop publishes a [`Snapshot`] on a `watch` channel after
//! every change. Nothing locks the machine from outside (house style: one owner, messages in,
//! snapshots out).
//!
//! The loop sleeps until something happens: a signal, a message, or the machine's next timer
//! ([`Machine::poll_timeout`]). There is no periodic tick.
//!
//! Reaping: this loop is the only caller of `waitpid` (through [`crate::reap::reap`]) and routes
//! every status by pid: to the machine for programs, to the pending exec probe for probes, and
//! nowhere for orphans, which are simply collected.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use signal_hook::consts::signal::{
    SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH,
};
use sv_core::config::{Config, OutputMode, ProgramConfig, ReadinessCheck};
use sv_core::machine::{
    Action, Event, ExitStatus, Goal, Input, Machine, ProbeKind, ProgramId, Progress, Snapshot,
};
use sv_core::notify::Notify;
use sv_core::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::control::{Request, code, error_reply, ok_reply};
use crate::logs::{LineHook, LogHub, Stream};
use crate::notify::NotifySocket;
use crate::reap::{self, ReaperMode};
use crate::{probe, signals, spawn};

/// How the supervisor is to run.
#[derive(Debug)]
pub struct Options {
    /// The validated config (with the bridge program already added when configured).
    pub config: Config,
    /// The control socket path (config value, or `$IOT2MQTT_SV_SOCKET`).
    pub control_socket: PathBuf,
    /// Added to every program's environment (e.g. `IOT2MQTT_SV_BRIDGE_SOCKET`).
    pub extra_env: Vec<(String, String)>,
    /// Where `SIGHUP` and the `reload` op read the config again (`None`: reload is refused).
    pub reload: Option<crate::reload::Source>,
}

/// A message from a helper task to the loop.
#[derive(Debug)]
pub(crate) enum Internal {
    Notify {
        program: ProgramId,
        messages: Vec<Notify>,
    },
    LogMatched {
        program: ProgramId,
    },
    Probe {
        program: ProgramId,
        pid: i32,
        kind: ProbeKind,
        result: Result<(), String>,
    },
}

/// A control request forwarded to the loop by a connection task.
#[derive(Debug)]
pub(crate) struct ControlMsg {
    pub(crate) request: Request,
    pub(crate) reply: oneshot::Sender<serde_json::Value>,
}

/// A control request's outcome: a reply now, or a wait for programs to reach their goals
/// (with fields to add to the final reply).
#[derive(Debug)]
enum Answer {
    Now(serde_json::Value),
    Wait(Vec<(ProgramId, Goal)>, Option<serde_json::Value>),
}

#[derive(Debug)]
struct Waiter {
    ids: Vec<(ProgramId, Goal)>,
    extra: Option<serde_json::Value>,
    deadline: Instant,
    reply: oneshot::Sender<serde_json::Value>,
}

#[derive(Debug)]
struct ExecProbe {
    program: ProgramId,
    pid: i32,
    kind: ProbeKind,
    deadline: Instant,
}

/// How long a `start`/`stop`/`restart` request waits for its goal before answering anyway.
const CONTROL_WAIT: Duration = Duration::from_secs(60);
/// How long output still held by pipes may take to arrive when the supervisor exits.
const LOG_DRAIN: Duration = Duration::from_millis(500);
/// Per-attempt bound of a readiness probe (the overall bound is the readiness `timeout`).
const READINESS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The environment variables every program gets.
pub const ENV_PROGRAM: &str = "IOT2MQTT_SV_PROGRAM";
/// The control socket path, for programs and the bridge.
pub const ENV_SOCKET: &str = "IOT2MQTT_SV_SOCKET";

struct Supervisor {
    machine: Machine,
    mode: ReaperMode,
    logs: LogHub,
    control_socket: PathBuf,
    extra_env: Vec<(String, String)>,
    notify_paths: HashMap<ProgramId, PathBuf>,
    internal_tx: mpsc::Sender<Internal>,
    probes: HashMap<i32, ExecProbe>,
    waiters: Vec<Waiter>,
    snapshot_tx: watch::Sender<Snapshot>,
    http_addr: Option<String>,
    exit: Option<i32>,
    /// Every program's `user`, resolved once when the config is loaded (passwd and group
    /// lookups may block, so they are kept out of each start); see [`spawn::resolve_users`].
    users: HashMap<String, spawn::ResolvedUser>,
    /// The effective config the machine runs (what the next reload is compared with).
    config: Config,
    reload: Option<crate::reload::Source>,
    rundir: PathBuf,
    stop_rx: watch::Receiver<bool>,
}

/// Runs the supervisor until it has shut down; returns the process exit code.
///
/// Must be called on a tokio runtime, from the process that is to supervise (PID 1 or not).
pub async fn run(opts: Options) -> i32 {
    let mode = match reap::init() {
        Ok(m) => m,
        Err(e) => {
            // Without subreaper status orphans escape to the host's init; supervising still works.
            warn!(error = %e, "cannot become a child subreaper; orphans will not be reaped here");
            ReaperMode::Subreaper
        }
    };
    info!(mode = ?mode, programs = opts.config.programs.len(), "supervisor starting");

    let settings = &opts.config.supervisor;
    let logs = LogHub::new(
        settings.log_format,
        settings.log_buffer_lines,
        settings.max_line_bytes,
    );
    // Log lines go through the writer thread: an early exit flushes them (bounded), or the
    // reason it gives would be lost with the process.
    let fail = |code: i32| {
        let logs = logs.clone();
        async move {
            logs.flush(LOG_DRAIN).await;
            code
        }
    };

    // Signals first, so a SIGTERM during start-up is a shutdown and not lost.
    let mut sigs = match signal_hook_tokio::Signals::new([
        SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH, SIGCHLD,
    ]) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            return fail(1).await;
        }
    };
    // Held since `main` (see `signals::hold_signals`): a SIGTERM that came meanwhile is handled now.
    if let Err(e) = signals::release_held_signals() {
        error!(error = %e, "cannot unblock signals");
        return fail(1).await;
    }

    if let Err(e) = crate::rlimits::raise_minimums(settings) {
        error!("{e}");
        return fail(2).await;
    }
    let (internal_tx, mut internal_rx) = mpsc::channel::<Internal>(1024);
    let (control_tx, mut control_rx) = mpsc::channel::<ControlMsg>(64);
    let (ask_tx, mut ask_rx) = mpsc::channel::<oneshot::Sender<Snapshot>>(64);
    let (stop_tx, stop_rx) = watch::channel(false);

    let machine = Machine::new(&opts.config, seed());
    let (snapshot_tx, snapshot_rx) = watch::channel(machine.snapshot(Instant::now()));

    // The control socket. A supervisor that cannot create it keeps supervising (a crash loop
    // would help nobody) but says so loudly; `health` will then report it unreachable.
    let rundir = opts
        .control_socket
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    // Only a socket we bound is ours to remove at exit: the path may be another live
    // supervisor's, which `bind` refuses to steal.
    let mut socket_owned = false;
    match crate::server::bind(&opts.control_socket, settings.control_socket_mode) {
        Ok(listener) => {
            socket_owned = true;
            let ctx = crate::server::Context {
                control: control_tx.clone(),
                snapshots: snapshot_rx.clone(),
                logs: logs.clone(),
            };
            let limit = crate::limit::ConnLimit::new(settings.max_control_connections);
            tokio::spawn(crate::server::serve(listener, ctx, limit, stop_rx.clone()));
            info!(path = %opts.control_socket.display(), "control socket listening");
        }
        Err(e) => {
            error!(path = %opts.control_socket.display(), error = %e, "cannot create the control socket; status, health and control verbs will not work")
        }
    }

    let mut http_addr = None;
    if let Some(http) = &settings.http {
        match crate::http::bind(&http.listen).await {
            Ok((listener, addr)) => {
                info!(address = %addr, "health and metrics server listening");
                http_addr = Some(addr.to_string());
                let mut stop = stop_rx.clone();
                // The bridge's socket, as exported to every program: `/metrics` asks it for the
                // bridge's figures on each scrape.
                let bridge = opts
                    .extra_env
                    .iter()
                    .find(|(k, _)| k == "IOT2MQTT_SV_BRIDGE_SOCKET")
                    .map(|(_, v)| PathBuf::from(v));
                tokio::spawn(crate::http::serve_with_bridge(
                    listener,
                    ask_tx.clone(),
                    bridge,
                    http.max_connections,
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                ));
            }
            Err(e) => {
                error!(listen = %http.listen, error = %e, "cannot start the health and metrics server")
            }
        }
    }
    drop(ask_tx);

    let mut sup = Supervisor {
        machine,
        mode,
        logs,
        control_socket: opts.control_socket.clone(),
        extra_env: opts.extra_env,
        notify_paths: HashMap::new(),
        internal_tx,
        probes: HashMap::new(),
        waiters: Vec::new(),
        snapshot_tx,
        http_addr,
        exit: None,
        users: spawn::resolve_users(&opts.config.programs),
        config: opts.config,
        reload: opts.reload,
        rundir,
        stop_rx,
    };
    let ids: Vec<ProgramId> = sup.machine.ids().collect();
    sup.bind_notify_sockets(&ids);
    for p in &sup.config.programs {
        if let Some(file) = &p.log_file {
            if let Err(e) = sup.logs.add_log_file(&p.name, file) {
                error!(program = %p.name, error = %e, "cannot start the log file writer; output goes to stdout only");
            }
        }
    }

    if sup.config.programs.iter().any(|p| p.schedule.is_some()) {
        sup.machine.set_time_zone(schedule_time_zone());
    }
    let now = Instant::now();
    sup.machine.set_wall_clock(now, jiff::Timestamp::now());
    sup.machine.start(now);
    sup.pump(&mut sigs);

    while sup.exit.is_none() {
        let wake = sup.next_wake();
        let sleep = async {
            match wake {
                Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            // Notifications first: a daemon's MAINPID= (sent before its parent exits) must be
            // seen before the SIGCHLD of that parent, or the program would look dead.
            Some(msg) = internal_rx.recv() => sup.on_internal(msg),
            Some(sig) = sigs.next() => sup.on_signal(sig),
            Some(msg) = control_rx.recv() => sup.on_control(msg),
            Some(reply) = ask_rx.recv() => { let _ = reply.send(sup.snapshot(Instant::now())); }
            () = sleep => sup.on_timer(),
        }
        sup.pump(&mut sigs);
    }
    let code = sup.exit.unwrap_or(0);
    let _ = stop_tx.send(true);
    sigs.handle().close();
    for path in sup.notify_paths.values() {
        let _ = std::fs::remove_file(path);
    }
    if socket_owned {
        let _ = std::fs::remove_file(&sup.control_socket);
    }
    if !sup.logs.wait_readers(LOG_DRAIN).await {
        debug!("some output pipes were still open at exit, or the output is stalled");
    }
    if !sup.logs.close_log_files(LOG_DRAIN) {
        warn!("some log file lines were still being written at exit");
    }
    info!(code, "supervisor exiting");
    // One bounded flush for the programs' last lines and this one: with the output stalled the
    // writer thread stays blocked, and the process exits without it (issue 12).
    sup.logs.flush(LOG_DRAIN).await;
    code
}

/// The `log` readiness hook of one incarnation: its first line matching `re` reports readiness,
/// once. The report is never lost: when the loop's channel is momentarily full (a burst of
/// sd_notify datagrams or probe results), a task waits for room instead of dropping it. Marking
/// the hook as fired before a failed `try_send` used to lose readiness for good, and the program
/// then timed out in STARTING.
fn log_ready_hook(re: regex::Regex, id: ProgramId, tx: mpsc::Sender<Internal>) -> LineHook {
    let fired = AtomicBool::new(false);
    Arc::new(move |line: &str| {
        if fired.load(Ordering::Relaxed)
            || !re.is_match(line)
            || fired.swap(true, Ordering::Relaxed)
        {
            return;
        }
        match tx.try_send(Internal::LogMatched { program: id }) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            // The hook runs in a reader task, so a runtime is there; at most one such task per
            // incarnation exists, as the hook fires once.
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(msg).await;
                });
            }
        }
    })
}

/// The zone cron schedules are evaluated in: `TZ` (as the platform sets it for connectors, e.g.
/// `Europe/Berlin`, with or without a leading `:`), else the system's zone, else UTC.
fn schedule_time_zone() -> jiff::tz::TimeZone {
    use jiff::tz::TimeZone;
    match std::env::var("TZ") {
        Ok(name) if !name.trim().is_empty() => {
            let name = name.trim().trim_start_matches(':');
            TimeZone::get(name).unwrap_or_else(|e| {
                warn!(tz = name, error = %e, "unknown TZ; cron schedules use UTC");
                TimeZone::UTC
            })
        }
        _ => TimeZone::try_system().unwrap_or(TimeZone::UTC),
    }
}

/// A seed for backoff jitter: different per process so a fleet restarted together spreads out.
fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32)
}

impl Supervisor {
    /// The machine's snapshot with what only the runtime knows (log file losses).
    fn snapshot(&self, now: Instant) -> Snapshot {
        let mut snap = self.machine.snapshot(now);
        for p in &mut snap.programs {
            p.log_file_dropped_lines = self.logs.log_file_dropped(&p.name);
        }
        snap
    }

    fn next_wake(&self) -> Option<Instant> {
        let probe = self.probes.values().map(|p| p.deadline).min();
        let waiter = self.waiters.iter().map(|w| w.deadline).min();
        [self.machine.poll_timeout(), probe, waiter]
            .into_iter()
            .flatten()
            .min()
    }

    /// Binds the sd_notify socket of every program in `ids` that needs one and has none yet.
    fn bind_notify_sockets(&mut self, ids: &[ProgramId]) {
        let wants =
            |p: &ProgramConfig| p.readiness.check == ReadinessCheck::Notify || p.watchdog.is_some();
        let ids: Vec<ProgramId> = ids
            .iter()
            .copied()
            .filter(|id| wants(self.machine.program(*id)) && !self.notify_paths.contains_key(id))
            .collect();
        if ids.is_empty() {
            return;
        }
        let dir = self.rundir.join("notify");
        if let Err(e) = std::fs::create_dir_all(&dir) {
            error!(dir = %dir.display(), error = %e, "cannot create the sd_notify directory");
            return;
        }
        for id in ids {
            let p = self.machine.program(id);
            let stop = &self.stop_rx;
            let path = dir.join(format!("{}.sock", p.name));
            let owner = p.user.as_deref().and_then(resolve_uid);
            match NotifySocket::bind(&path, owner) {
                Ok(sock) => {
                    self.notify_paths.insert(id, path);
                    let tx = self.internal_tx.clone();
                    let mut stop = stop.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::select! {
                                r = sock.recv() => match r {
                                    Ok((_, messages)) if !messages.is_empty() => {
                                        if tx.send(Internal::Notify { program: id, messages }).await.is_err() { break; }
                                    }
                                    Ok(_) => {}
                                    Err(e) => { warn!(error = %e, "sd_notify socket failed"); break; }
                                },
                                _ = stop.changed() => if *stop.borrow() { break },
                            }
                        }
                    });
                }
                Err(e) => {
                    error!(program = %p.name, path = %path.display(), error = %e, "cannot bind the sd_notify socket")
                }
            }
        }
    }

    /// Carries out every pending action and logs every event, then publishes the snapshot.
    ///
    /// Signals already delivered are handled between actions, so a SIGTERM during a long
    /// start-up (hundreds of spawns) takes effect at once instead of after the last spawn.
    fn pump(&mut self, sigs: &mut signal_hook_tokio::Signals) {
        use futures_util::FutureExt;
        loop {
            while let Some(ev) = self.machine.poll_event() {
                self.log_event(ev);
            }
            let Some(action) = self.machine.poll_action() else {
                break;
            };
            self.act(action);
            while let Some(Some(sig)) = sigs.next().now_or_never() {
                self.on_signal(sig);
            }
        }
        let now = Instant::now();
        self.check_waiters(now);
        let snap = self.snapshot(now);
        self.snapshot_tx.send_if_modified(|old| {
            // Uptime changes every instant; publish only what watchers care about.
            let changed = old.healthy != snap.healthy
                || old.shutting_down != snap.shutting_down
                || old.programs.len() != snap.programs.len()
                || old.programs.iter().zip(&snap.programs).any(|(a, b)| {
                    a.state != b.state
                        || a.pid != b.pid
                        || a.healthy != b.healthy
                        || a.reason != b.reason
                        || a.restarts != b.restarts
                });
            if changed {
                *old = snap;
            }
            changed
        });
    }

    fn act(&mut self, action: Action) {
        let now = Instant::now();
        match action {
            Action::Spawn(id) => {
                let input = match self.spawn(id) {
                    Ok(pid) => Input::Spawned { program: id, pid },
                    Err(e) => Input::SpawnFailed {
                        program: id,
                        reason: e.reason,
                        code: e.code,
                    },
                };
                self.machine.handle(now, input);
            }
            Action::Signal {
                program,
                pid,
                signal,
                group,
            } => {
                let gone = matches!(self.signal_program(program, pid, signal, group), Ok(false));
                if gone && self.machine.pid(program) == Some(pid) {
                    // No such process, not even a zombie, yet we never reaped it: someone else
                    // did (a `MAINPID=` daemon that died before its wrapper exited). Its status
                    // went to them; without this the program would stay STOPPING for good.
                    warn!(program = %self.name(program), pid, "the program's process is gone without an exit status; taking it as ended by {signal}");
                    let status = ExitStatus::Signaled(signals::to_nix(signal) as i32);
                    self.machine.handle(now, Input::Exited { pid, status });
                }
            }
            Action::Probe { program, pid, kind } => self.start_probe(program, pid, kind),
            Action::SampleRss { program, pid } => {
                let rss = crate::rlimits::resident_bytes(pid);
                self.machine
                    .handle(now, Input::RssSampled { program, pid, rss });
            }
            Action::SignalOrphans(sig) => {
                let n = signals::signal_orphans(sig, self.mode);
                if n > 0 {
                    info!(count = n, signal = %sig, "signalled leftover processes");
                }
                // Orphans that are already gone never send SIGCHLD: look now.
                self.reap();
            }
            Action::Exit(code) => self.exit = Some(code),
        }
    }

    /// Signals a program's process (its group when `group`), logging failures. A group signal
    /// that fails while the process lives falls back to the process itself: a stop signal that
    /// reaches nobody would leave the program STOPPING with no SIGKILL ever delivered.
    fn signal_program(
        &self,
        program: ProgramId,
        pid: i32,
        signal: Signal,
        group: bool,
    ) -> std::io::Result<bool> {
        match signals::send(pid, signal, group) {
            Err(e) if group => {
                warn!(program = %self.name(program), pid, signal = %signal, error = %e, "cannot signal the process group; signalling the process");
                signals::send(pid, signal, false).inspect_err(|e| {
                    error!(program = %self.name(program), pid, signal = %signal, error = %e, "cannot signal");
                })
            }
            r => r.inspect_err(|e| {
                error!(program = %self.name(program), pid, signal = %signal, error = %e, "cannot signal");
            }),
        }
    }

    fn name(&self, id: ProgramId) -> &str {
        &self.machine.program(id).name
    }

    fn spawn(&mut self, id: ProgramId) -> Result<i32, spawn::SpawnError> {
        let cfg = self.machine.program(id).clone();
        let mut env: Vec<(String, String)> = vec![
            (ENV_PROGRAM.into(), cfg.name.clone()),
            (ENV_SOCKET.into(), self.control_socket.display().to_string()),
        ];
        env.extend(self.extra_env.iter().cloned());
        if let Some(path) = self.notify_paths.get(&id) {
            env.push(("NOTIFY_SOCKET".into(), path.display().to_string()));
        }
        if let Some(wd) = cfg.watchdog {
            env.push(("WATCHDOG_USEC".into(), wd.as_micros().to_string()));
        }
        let (stdout, stderr) = match cfg.output {
            OutputMode::Inherit => (Stdio::inherit(), Stdio::inherit()),
            OutputMode::Capture => {
                let hook = self.log_hook(id, &cfg);
                let err_stream = if cfg.redirect_stderr {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                };
                let out = self.logs.pipe(&cfg.name, Stream::Stdout, hook.clone());
                let err = self.logs.pipe(&cfg.name, err_stream, hook);
                match (out, err) {
                    (Ok(o), Ok(e)) => (Stdio::from(o), Stdio::from(e)),
                    (o, e) => {
                        let err = o
                            .err()
                            .or(e.err())
                            .map(|e| e.to_string())
                            .unwrap_or_default();
                        return Err(spawn::SpawnError {
                            reason: format!("cannot create output pipes: {err}"),
                            code: 1,
                        });
                    }
                }
            }
        };
        // The parent's copies of the pipe write ends are dropped with `req` right after the
        // spawn, so the readers see EOF when the program (and its descendants) close theirs.
        let req = spawn::SpawnRequest {
            program: &cfg,
            extra_env: &env,
            stdout,
            stderr,
        };
        match self.users.get(&cfg.name) {
            Some(user) => spawn::spawn_as(req, Some(user)),
            None => spawn::spawn(req),
        }
    }

    /// The `log` readiness hook: the first matching line of this incarnation reports readiness.
    fn log_hook(&self, id: ProgramId, cfg: &ProgramConfig) -> Option<LineHook> {
        let ReadinessCheck::Log { pattern } = &cfg.readiness.check else {
            return None;
        };
        let re = match regex::Regex::new(pattern) {
            Ok(re) => re,
            Err(e) => {
                // Validation compiled it already; this is unreachable in practice.
                error!(program = %cfg.name, error = %e, "invalid readiness pattern");
                return None;
            }
        };
        Some(log_ready_hook(re, id, self.internal_tx.clone()))
    }

    fn start_probe(&mut self, id: ProgramId, pid: i32, kind: ProbeKind) {
        let cfg = self.machine.program(id);
        let (check, timeout) = match kind {
            ProbeKind::Readiness => (
                cfg.readiness.check.clone(),
                READINESS_PROBE_TIMEOUT.min(cfg.readiness.timeout),
            ),
            ProbeKind::Liveness => match &cfg.liveness {
                Some(l) => (l.check.clone(), l.timeout),
                None => return,
            },
        };
        let tx = self.internal_tx.clone();
        match check {
            ReadinessCheck::Tcp { .. } | ReadinessCheck::Http { .. } => {
                tokio::spawn(async move {
                    let result = match &check {
                        ReadinessCheck::Tcp { address } => probe::tcp(address, timeout).await,
                        ReadinessCheck::Http { url } => probe::http(url, timeout).await,
                        _ => return,
                    };
                    let _ = tx
                        .send(Internal::Probe {
                            program: id,
                            pid,
                            kind,
                            result,
                        })
                        .await;
                });
            }
            ReadinessCheck::Exec { command } => {
                let env = vec![
                    (ENV_PROGRAM.to_string(), cfg.name.clone()),
                    ("IOT2MQTT_SV_PID".to_string(), pid.to_string()),
                ];
                match spawn::spawn_probe(&command, &env) {
                    Ok(probe_pid) => {
                        self.probes.insert(
                            probe_pid,
                            ExecProbe {
                                program: id,
                                pid,
                                kind,
                                deadline: Instant::now() + timeout,
                            },
                        );
                    }
                    Err(e) => self.machine.handle(
                        Instant::now(),
                        Input::ProbeResult {
                            program: id,
                            pid,
                            kind,
                            result: Err(e.reason),
                        },
                    ),
                }
            }
            _ => {}
        }
    }

    fn reap(&mut self) {
        let reaped = reap::reap();
        let now = Instant::now();
        for (pid, status) in reaped.exited {
            if let Some(p) = self.probes.remove(&pid) {
                let result = match status.code() {
                    0 => Ok(()),
                    c => Err(format!("probe command exited with code {c}")),
                };
                self.machine.handle(
                    now,
                    Input::ProbeResult {
                        program: p.program,
                        pid: p.pid,
                        kind: p.kind,
                        result,
                    },
                );
            } else {
                self.machine.handle(now, Input::Exited { pid, status });
            }
        }
        if reaped.no_children {
            self.machine.handle(now, Input::NoChildren);
        }
    }

    fn on_signal(&mut self, sig: i32) {
        let now = Instant::now();
        match sig {
            SIGCHLD => self.reap(),
            SIGTERM | SIGINT | SIGQUIT => {
                info!(signal = signal_name(sig), "received shutdown signal");
                self.machine.handle(now, Input::ShutdownRequested);
            }
            // supervisord's meaning: read the config again and apply what changed.
            SIGHUP => {
                info!("received SIGHUP: reloading the config");
                let _ = self.reload(now, false);
            }
            SIGUSR1 | SIGUSR2 | SIGWINCH => {
                let Some(signal) = signal_name(sig)
                    .strip_prefix("SIG")
                    .and_then(|s| s.parse::<Signal>().ok())
                else {
                    return;
                };
                for id in self.machine.ids() {
                    if let Some(pid) = self.machine.pid(id) {
                        let _ = self.signal_program(id, pid, signal, self.machine.signal_group(id));
                    }
                }
                debug!(signal = %signal, "forwarded to every running program");
            }
            _ => {}
        }
    }

    fn on_internal(&mut self, msg: Internal) {
        let now = Instant::now();
        match msg {
            Internal::Probe {
                program,
                pid,
                kind,
                result,
            } => {
                self.machine.handle(
                    now,
                    Input::ProbeResult {
                        program,
                        pid,
                        kind,
                        result,
                    },
                );
            }
            Internal::LogMatched { program } => {
                if let Some(pid) = self.machine.pid(program) {
                    self.machine.handle(now, Input::Ready { program, pid });
                }
            }
            Internal::Notify { program, messages } => {
                // Each program has its own socket (systemd's NotifyAccess=all): any process of
                // the program may speak for it, which is what `systemd-notify` from a shell needs.
                let Some(pid) = self.machine.pid(program) else {
                    return;
                };
                for m in messages {
                    let input = match m {
                        Notify::Ready => Some(Input::Ready { program, pid }),
                        Notify::Watchdog => Some(Input::WatchdogPing { program, pid }),
                        Notify::Status(text) => Some(Input::StatusText { program, pid, text }),
                        Notify::MainPid(main_pid) if main_pid != pid => {
                            // Only a descendant of ours may become a program's main process:
                            // anything else would let a program have us signal a stranger.
                            // Whether it leads a group is recorded now: a daemon left in its
                            // wrapper's group must be signalled as a process.
                            match signals::live_descendant(main_pid) {
                                Some(st) => Some(Input::MainPid {
                                    program,
                                    pid,
                                    main_pid,
                                    leads_group: st.pgrp == main_pid,
                                }),
                                None => {
                                    warn!(program = %self.name(program), main_pid, "ignoring MAINPID= of a process that is not ours");
                                    None
                                }
                            }
                        }
                        Notify::ExtendTimeoutUsec(us) => Some(Input::ExtendTimeout {
                            program,
                            pid,
                            by: Duration::from_micros(us),
                        }),
                        Notify::Stopping => {
                            info!(program = %self.name(program), "program reports it is stopping");
                            None
                        }
                        _ => None,
                    };
                    if let Some(i) = input {
                        self.machine.handle(now, i);
                    }
                }
            }
        }
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        let expired: Vec<i32> = self
            .probes
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for probe_pid in expired {
            if let Some(p) = self.probes.remove(&probe_pid) {
                let _ = signals::send(probe_pid, Signal::Kill, true);
                self.machine.handle(
                    now,
                    Input::ProbeResult {
                        program: p.program,
                        pid: p.pid,
                        kind: p.kind,
                        result: Err("probe command timed out".into()),
                    },
                );
            }
        }
        if self.machine.poll_timeout().is_some_and(|t| t <= now) {
            self.machine.set_wall_clock(now, jiff::Timestamp::now());
            self.machine.handle_timeout(now);
        }
    }

    fn resolve(&self, names: &[String]) -> Result<Vec<ProgramId>, serde_json::Value> {
        if names.is_empty() {
            return Err(error_reply(code::BAD_REQUEST, "no program named"));
        }
        if names.iter().any(|n| n == "all") {
            return Ok(self.machine.ids().collect());
        }
        // A `numprocs` group name stands for all its instances; a program named twice (as
        // itself and through its group) is acted on once.
        let mut ids = Vec::new();
        for n in names {
            let found = self.machine.find_all(n);
            if found.is_empty() {
                return Err(error_reply(
                    code::UNKNOWN_PROGRAM,
                    format!("no program named {n:?}"),
                ));
            }
            for id in found {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    fn on_control(&mut self, msg: ControlMsg) {
        let now = Instant::now();
        let ControlMsg { request, reply } = msg;
        match self.answer(now, request) {
            Answer::Now(v) => {
                let _ = reply.send(v);
            }
            Answer::Wait(ids, extra) => self.waiters.push(Waiter {
                ids,
                extra,
                deadline: now + CONTROL_WAIT,
                reply,
            }),
        }
    }

    fn answer(&mut self, now: Instant, request: Request) -> Answer {
        let answer = Answer::Now;
        match request {
            Request::Status => {
                let snap = self.snapshot(now);
                answer(ok_reply(serde_json::json!({
                    "supervisor": {
                        "pid": std::process::id(),
                        "mode": format!("{:?}", self.mode).to_lowercase(),
                        "http": self.http_addr,
                        "log_lines_dropped": crate::logs::own_lines_dropped(),
                    },
                    "status": snap,
                })))
            }
            Request::Health => {
                let snap = self.machine.snapshot(now);
                answer(ok_reply(
                    serde_json::json!({"healthy": snap.healthy, "reason": snap.reason}),
                ))
            }
            Request::Start { .. }
            | Request::Stop { .. }
            | Request::Restart { .. }
            | Request::Reload { .. }
                if self.machine.is_shutting_down() =>
            {
                answer(error_reply(
                    code::SHUTTING_DOWN,
                    "the supervisor is shutting down",
                ))
            }
            Request::Start { programs } => {
                self.order(now, &programs, Input::StartRequested, Goal::Running)
            }
            Request::Stop { programs } => {
                self.order(now, &programs, Input::StopRequested, Goal::Stopped)
            }
            Request::Restart { programs } => {
                self.order(now, &programs, Input::RestartRequested, Goal::Running)
            }
            Request::Reload { dry_run } => match self.reload(now, dry_run) {
                Err(reply) => answer(reply),
                Ok((plan, _)) if dry_run => answer(ok_reply(
                    serde_json::json!({"plan": plan, "applied": false, "results": []}),
                )),
                Ok((plan, goals)) => Answer::Wait(
                    goals,
                    Some(serde_json::json!({"plan": plan, "applied": true})),
                ),
            },
            Request::Signal { signal, programs } => {
                let sig = match signal.parse::<Signal>() {
                    Ok(s) => s,
                    Err(e) => return answer(error_reply(code::UNKNOWN_SIGNAL, e.to_string())),
                };
                match self.resolve(&programs) {
                    Ok(ids) => {
                        let mut results = Vec::new();
                        for id in ids {
                            let name = self.name(id).to_string();
                            let r = match self.machine.pid(id) {
                                Some(pid) => match self.signal_program(
                                    id,
                                    pid,
                                    sig,
                                    self.machine.signal_group(id),
                                ) {
                                    Ok(_) => {
                                        serde_json::json!({"name": name, "ok": true, "pid": pid})
                                    }
                                    Err(e) => {
                                        serde_json::json!({"name": name, "ok": false, "message": e.to_string()})
                                    }
                                },
                                None => {
                                    serde_json::json!({"name": name, "ok": false, "message": "not running"})
                                }
                            };
                            results.push(r);
                        }
                        let all_ok = results.iter().all(|r| r["ok"] == true);
                        answer(if all_ok {
                            ok_reply(serde_json::json!({"results": results}))
                        } else {
                            let mut v =
                                error_reply(code::FAILED, "some programs were not signalled");
                            v["results"] = serde_json::Value::Array(results);
                            v
                        })
                    }
                    Err(e) => answer(e),
                }
            }
            Request::Pid { program: None } => {
                answer(ok_reply(serde_json::json!({"pid": std::process::id()})))
            }
            Request::Pid {
                program: Some(name),
            } => match self.machine.find(&name) {
                Some(id) => answer(ok_reply(serde_json::json!({"pid": self.machine.pid(id)}))),
                None => answer(error_reply(
                    code::UNKNOWN_PROGRAM,
                    format!("no program named {name:?}"),
                )),
            },
            Request::Ready { program, pid } => match self.machine.find(&program) {
                Some(id) => {
                    if self.machine.program(id).readiness.check != ReadinessCheck::Bridge {
                        return answer(error_reply(
                            code::NOT_APPLICABLE,
                            format!("{program} does not use bridge readiness"),
                        ));
                    }
                    match (self.machine.pid(id), pid) {
                        (Some(cur), Some(p)) if cur != p => answer(error_reply(
                            code::NOT_APPLICABLE,
                            format!("{program} now runs as pid {cur}, not {p}"),
                        )),
                        (Some(cur), _) => {
                            self.machine.handle(
                                now,
                                Input::Ready {
                                    program: id,
                                    pid: cur,
                                },
                            );
                            answer(ok_reply(serde_json::json!({})))
                        }
                        (None, _) => answer(error_reply(
                            code::NOT_APPLICABLE,
                            format!("{program} is not running"),
                        )),
                    }
                }
                None => answer(error_reply(
                    code::UNKNOWN_PROGRAM,
                    format!("no program named {program:?}"),
                )),
            },
            // Served by the connection task itself.
            Request::Logs { .. } | Request::Watch => {
                answer(error_reply(code::BAD_REQUEST, "not a loop request"))
            }
        }
    }

    /// `start`/`stop`/`restart`: feeds one input per program, then waits for `goal`.
    fn order(
        &mut self,
        now: Instant,
        names: &[String],
        input: fn(ProgramId) -> Input,
        goal: Goal,
    ) -> Answer {
        match self.resolve(names) {
            Ok(ids) => {
                for &id in &ids {
                    self.machine.handle(now, input(id));
                }
                Answer::Wait(ids.into_iter().map(|id| (id, goal)).collect(), None)
            }
            Err(e) => Answer::Now(e),
        }
    }

    fn check_waiters(&mut self, now: Instant) {
        if self.waiters.is_empty() {
            return;
        }
        let shutting_down = self.machine.is_shutting_down();
        let waiters = std::mem::take(&mut self.waiters);
        for w in waiters {
            let mut done = true;
            let mut results = Vec::new();
            for &(id, goal) in &w.ids {
                let progress = self.machine.progress(id, goal);
                // During a shutdown every request is answered at once, with where things stand.
                if progress == Progress::Pending && !shutting_down && now < w.deadline {
                    done = false;
                    break;
                }
                let reached = progress == Progress::Reached;
                if self.machine.is_removed(id) {
                    // Gone: what a removal waits for, and the end of any other wait.
                    results.push(serde_json::json!({
                        "name": self.name(id), "ok": reached, "state": "REMOVED", "pid": null,
                        "message": (!reached).then_some("removed by a reload"),
                    }));
                    continue;
                }
                let s = self.machine.status(now, id);
                results.push(serde_json::json!({
                    "name": s.name, "ok": reached, "state": s.state, "pid": s.pid, "message": s.reason,
                }));
            }
            if !done {
                self.waiters.push(w);
                continue;
            }
            let ok = results.iter().all(|r| r["ok"] == true);
            let mut reply = if ok {
                ok_reply(serde_json::json!({"results": results}))
            } else {
                let mut v = error_reply(code::FAILED, "not every program reached its goal");
                v["results"] = serde_json::Value::Array(results);
                v
            };
            if let (Some(obj), Some(serde_json::Value::Object(extra))) =
                (reply.as_object_mut(), w.extra)
            {
                obj.extend(extra);
            }
            let _ = w.reply.send(reply);
        }
    }

    /// Reads the config again and, unless `dry_run`, applies it as a diff. Returns the plan and
    /// what a `reload` request waits for, or the error reply (every problem of an invalid
    /// config, which changes nothing).
    fn reload(
        &mut self,
        now: Instant,
        dry_run: bool,
    ) -> Result<(sv_core::plan::Plan, Vec<(ProgramId, Goal)>), serde_json::Value> {
        let Some(source) = &self.reload else {
            return Err(error_reply(
                code::NOT_APPLICABLE,
                "this supervisor was started without a config file to reload",
            ));
        };
        let new = match source.load() {
            Ok(c) => c,
            Err(errors) => {
                error!(
                    config = %source.path.display(),
                    "reload refused, nothing changed: {}",
                    errors.join("; ")
                );
                let mut v = error_reply(
                    code::INVALID_CONFIG,
                    format!("{} is invalid; nothing changed", source.path.display()),
                );
                v["errors"] = serde_json::json!(errors);
                return Err(v);
            }
        };
        let (new, plan) = source.prepare(&self.config, new);
        if dry_run {
            return Ok((plan, Vec::new()));
        }
        let changed: Vec<&str> = plan.changed.iter().map(|c| c.name.as_str()).collect();
        info!(
            added = ?plan.added,
            removed = ?plan.removed,
            changed = ?changed,
            unchanged = plan.unchanged.len(),
            "reload: applying the new config"
        );
        if !plan.not_applied.is_empty() {
            warn!(
                keys = ?plan.not_applied,
                "reload: these changes take effect only when the supervisor restarts"
            );
        }
        // What the running set resolved once per config load (users, the schedules' zone and
        // wall clock) is resolved again for the new one before the machine plans with it.
        self.users = spawn::resolve_users(&new.programs);
        if new.programs.iter().any(|p| p.schedule.is_some()) {
            self.machine.set_time_zone(schedule_time_zone());
        }
        self.machine.set_wall_clock(now, jiff::Timestamp::now());
        // Looked up before the machine applies the plan: one without a process (stopped, or a
        // scheduled program between runs) is forgotten at once and then found no more.
        let removed = self.machine_ids_named(&plan.removed);
        self.machine.apply(now, &new, &plan);
        for name in plan.changed.iter().map(|c| &c.name).chain(&plan.added) {
            let file = new
                .programs
                .iter()
                .find(|p| &p.name == name)
                .and_then(|p| p.log_file.as_ref());
            if let Err(e) = self.logs.set_log_file(name, file) {
                error!(program = %name, error = %e, "cannot start the log file writer; output goes to stdout only");
            }
        }
        for name in &plan.removed {
            let _ = self.logs.set_log_file(name, None);
        }
        self.config = new;
        let mut goals = Vec::new();
        for name in plan.changed.iter().map(|c| &c.name).chain(&plan.added) {
            if let Some(id) = self.machine.find(name) {
                if self.machine.program(id).autostart {
                    goals.push((id, Goal::Running));
                }
            }
        }
        let starting: Vec<ProgramId> = goals.iter().map(|(id, _)| *id).collect();
        self.bind_notify_sockets(&starting);
        for id in removed {
            goals.push((id, Goal::Removed));
        }
        self.reown_notify_sockets(&plan);
        Ok((plan, goals))
    }

    /// A program whose `user` changed must still be able to write to its sd_notify socket,
    /// which was bound (mode 0600) for the old user.
    fn reown_notify_sockets(&self, plan: &sv_core::plan::Plan) {
        for c in plan
            .changed
            .iter()
            .filter(|c| c.reasons.iter().any(|r| r == "user"))
        {
            let Some(path) = self
                .machine
                .find(&c.name)
                .and_then(|id| self.notify_paths.get(&id))
            else {
                continue;
            };
            let user = self
                .config
                .programs
                .iter()
                .find(|p| p.name == c.name)
                .and_then(|p| p.user.as_deref());
            let uid = user
                .and_then(resolve_uid)
                .unwrap_or_else(|| nix::unistd::geteuid().as_raw());
            if let Err(e) = std::os::unix::fs::lchown(path, Some(uid), None) {
                warn!(program = %c.name, path = %path.display(), error = %e, "cannot hand the sd_notify socket to the new user");
            }
        }
    }

    /// The ids of the named programs that the machine still knows.
    fn machine_ids_named(&self, names: &[String]) -> Vec<ProgramId> {
        names.iter().filter_map(|n| self.machine.find(n)).collect()
    }

    fn log_event(&self, ev: Event) {
        match ev {
            Event::Spawned { program, pid } => info!(program = %self.name(program), pid, "spawned"),
            Event::Ready { program, pid } => info!(program = %self.name(program), pid, "ready"),
            Event::MainPid { program, old, pid } => {
                info!(program = %self.name(program), old, pid, "main process changed (MAINPID)")
            }
            Event::Exited {
                program,
                pid,
                status,
                expected,
            } => {
                if expected {
                    info!(program = %self.name(program), pid, status = %status, "exited")
                } else {
                    warn!(program = %self.name(program), pid, status = %status, "exited unexpectedly")
                }
            }
            Event::SpawnFailed { program, reason } => {
                error!(program = %self.name(program), %reason, "spawn failed")
            }
            Event::StartFailed { program, reason } => {
                warn!(program = %self.name(program), %reason, "start failed")
            }
            Event::Backoff {
                program,
                delay,
                attempt,
            } => {
                info!(program = %self.name(program), delay_ms = delay.as_millis() as u64, attempt, "backing off before restart")
            }
            Event::Fatal { program, reason } => {
                error!(program = %self.name(program), %reason, "gave up: FATAL")
            }
            Event::Stopping {
                program,
                pid,
                reason,
            } => info!(program = %self.name(program), pid, %reason, "stopping"),
            Event::Killed { program, pid } => {
                warn!(program = %self.name(program), pid, "did not stop in time: SIGKILL")
            }
            Event::Unhealthy {
                program,
                pid,
                reason,
            } => warn!(program = %self.name(program), pid, %reason, "unhealthy"),
            Event::Shutdown { reason } => info!(%reason, "shutting down"),
            Event::Scheduled { program, what } => {
                info!(program = %self.name(program), "{what}")
            }
            Event::Removed { program } => {
                info!(program = %self.name(program), "removed by the reload")
            }
            Event::Replaced { program } => {
                info!(program = %self.name(program), "new definition from the reload")
            }
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGQUIT => "SIGQUIT",
        SIGHUP => "SIGHUP",
        SIGUSR1 => "SIGUSR1",
        SIGUSR2 => "SIGUSR2",
        SIGWINCH => "SIGWINCH",
        SIGCHLD => "SIGCHLD",
        _ => "signal",
    }
}

fn resolve_uid(user: &str) -> Option<u32> {
    if let Ok(uid) = user.parse::<u32>() {
        return Some(uid);
    }
    nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

/// Adds the bridge as a supervised program: started first, stopped last, and every other
/// program waits until its socket is listening (readiness `notify`).
pub fn add_bridge_program(config: &mut Config, command: Vec<String>) {
    use sv_core::config::{AutoRestart, DependencyCondition, ReadinessConfig};
    let bridge = ProgramConfig {
        priority: i32::MIN,
        autorestart: AutoRestart::Always,
        startsecs: Duration::ZERO,
        // The bridge is ready as soon as its socket listens, before it talks to any broker, so
        // a failed start is a configuration error (missing INSTANCE_NAME, unreadable instance
        // file): give up after a couple of tries instead of backing off for a minute.
        startretries: 2,
        stopwaitsecs: Duration::from_secs(3),
        readiness: ReadinessConfig {
            check: ReadinessCheck::Notify,
            timeout: Duration::from_secs(30),
            interval: Duration::from_millis(250),
        },
        ..ProgramConfig::new(BRIDGE_PROGRAM, command)
    };
    for p in &mut config.programs {
        if !p.depends_on.iter().any(|(d, _)| d == BRIDGE_PROGRAM) {
            p.depends_on
                .push((BRIDGE_PROGRAM.into(), DependencyCondition::Ready));
        }
    }
    config.programs.push(bridge);
    config.programs.sort_by(|a, b| a.name.cmp(&b.name));
}

/// The reserved program name of the bridge.
pub const BRIDGE_PROGRAM: &str = "bridge";

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12, point 5: a match while the loop's channel is full must still arrive.
    #[tokio::test]
    async fn log_readiness_survives_a_full_channel() {
        let (tx, mut rx) = mpsc::channel::<Internal>(1);
        tx.try_send(Internal::LogMatched {
            program: ProgramId(7),
        })
        .expect("room for the filler");
        let hook = log_ready_hook(
            regex::Regex::new("listening").expect("pattern"),
            ProgramId(0),
            tx,
        );
        hook("server listening on :80");
        hook("server listening again");
        let filler = rx.recv().await.expect("the filler");
        assert!(matches!(filler, Internal::LogMatched { program } if program == ProgramId(7)));
        let ready = tokio::time::timeout(sv_testkit::WAIT, rx.recv())
            .await
            .expect("the readiness report was lost")
            .expect("channel open");
        assert!(matches!(ready, Internal::LogMatched { program } if program == ProgramId(0)));
        // Once only: the second match sends nothing.
        assert!(rx.try_recv().is_err());
    }
}
