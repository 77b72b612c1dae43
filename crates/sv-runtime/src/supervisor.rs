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
//!
//! This file is the loop itself, with spawning, signalling and reaping. The rest of the loop's
//! work is in files named after it: `supervisor/verbs.rs` (what each control request means),
//! `supervisor/waiters.rs` (requests waiting for programs to reach their goal),
//! `supervisor/readiness.rs` (sd_notify sockets, `log` readiness, probes),
//! `supervisor/reload.rs` (applying a reload) and `supervisor/events.rs` (a log line per
//! machine event).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use signal_hook::consts::signal::{
    SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH,
};
use sv_core::config::{Config, OutputMode};
use sv_core::machine::{Action, ExitStatus, Input, Machine, ProgramId, Snapshot};
use sv_core::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::logs::{LogHub, Stream};
use crate::reap::{self, ReaperMode};
use crate::{signals, spawn};

mod events;
mod readiness;
mod reload;
mod verbs;
mod waiters;

use readiness::ExecProbe;
pub(crate) use readiness::Internal;
pub(crate) use verbs::ControlMsg;
use waiters::Waiter;

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

/// How long output still held by pipes may take to arrive when the supervisor exits.
const LOG_DRAIN: Duration = Duration::from_millis(500);

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

    fn reap(&mut self) {
        let reaped = reap::reap();
        let now = Instant::now();
        for (pid, status) in reaped.exited {
            if !self.probe_exited(now, pid, status) {
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

    fn on_timer(&mut self) {
        let now = Instant::now();
        self.expire_probes(now);
        if self.machine.poll_timeout().is_some_and(|t| t <= now) {
            self.machine.set_wall_clock(now, jiff::Timestamp::now());
            self.machine.handle_timeout(now);
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
