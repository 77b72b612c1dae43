//! The supervisor state machine: facts in, commands out, time passed in.
//!
//! Modelled on quinn-proto: the machine owns no IO and no clock. The runtime feeds it
//! [`Input`]s (past-tense facts such as [`Input::Exited`]) with the current `now`, asks
//! [`Machine::poll_action`] for [`Action`]s to carry out (imperative commands such as
//! [`Action::Spawn`]), and calls [`Machine::handle_timeout`] at [`Machine::poll_timeout`].
//! Tests drive a fake `now` forward to the next timeout, so backoff, start timeouts, stop
//! deadlines and probe intervals are tested in microseconds without sleeping.
//!
//! Invariants (checked by property tests):
//! - a program never has two live pids: [`Action::Spawn`] is only emitted for a program with no
//!   live process;
//! - a graceful shutdown stops programs in reverse start order (dependents before their
//!   dependencies, higher `priority` before lower) and always ends by `shutdown_timeout`;
//! - the machine emits [`Action::Exit`] exactly once, and only after every program has exited.

mod goal;
mod sched;

pub use goal::{Goal, Progress};

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::backoff;
use crate::config::{
    AutoRestart, Config, DependencyCondition, OnDependencyRestart, ProgramConfig, ReadinessCheck,
};
use crate::plan::Plan;
use crate::signal::Signal;

/// A program's slot in the machine: the index in the config it was built from, then one new
/// slot per program a reload adds. Ids are never reused, so a removed program's id cannot
/// come to mean another program while the runtime still holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProgramId(pub usize);

/// How a process ended, as `waitpid` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal number.
    Signaled(i32),
}

impl ExitStatus {
    /// The shell convention: the code, or `128 + signal`.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signaled(s) => write!(f, "signal {s} (code {})", 128 + s),
        }
    }
}

/// A program's state; `status` prints supervisord's names for them ([`State::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// Not running and not asked to (or waiting for its dependencies).
    Stopped,
    /// Spawned (or about to be) and not yet ready.
    Starting,
    /// Ready (passed `startsecs` or its readiness check) and running.
    Running,
    /// Waiting out a restart delay.
    Backoff,
    /// Asked to stop; waiting for the process to exit.
    Stopping,
    /// Exited and not restarted (expected exit, or `autorestart = false`).
    Exited,
    /// Gave up: too many failed starts in a row.
    Fatal,
}

impl State {
    /// The upper-case name, e.g. `"RUNNING"`.
    pub fn name(self) -> &'static str {
        match self {
            State::Stopped => "STOPPED",
            State::Starting => "STARTING",
            State::Running => "RUNNING",
            State::Backoff => "BACKOFF",
            State::Stopping => "STOPPING",
            State::Exited => "EXITED",
            State::Fatal => "FATAL",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What holds a program that is to run in `STOPPED`. Decisions are taken on this value; the
/// text `status` shows as the program's `reason` is rendered from it ([`BlockedOn`]'s
/// `Display`), so rewording that text changes no behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockedOn {
    /// Its `depends_on` entry `name` does not meet `condition`; `state` is the dependency's
    /// state when the program last tried to start.
    Dependency {
        name: String,
        condition: DependencyCondition,
        state: State,
    },
    /// Added or redefined by a reload that is still stopping the programs it replaces.
    Reload,
}

impl std::fmt::Display for BlockedOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockedOn::Dependency {
                name,
                condition,
                state,
            } => {
                let what = match condition {
                    DependencyCondition::Started => "started",
                    DependencyCondition::Ready => "ready",
                    DependencyCondition::Completed => "completed",
                };
                write!(f, "waiting for {name} to be {what} (it is {state})")
            }
            BlockedOn::Reload => {
                f.write_str("waiting for the reload to stop the programs it replaces")
            }
        }
    }
}

/// Why a program is in its state, as the machine keeps it: a typed block, or the text of a
/// failure or an operator's request.
#[derive(Debug, Clone, PartialEq)]
enum Reason {
    Blocked(BlockedOn),
    Text(String),
}

impl From<String> for Reason {
    fn from(text: String) -> Reason {
        Reason::Text(text)
    }
}

impl From<&str> for Reason {
    fn from(text: &str) -> Reason {
        Reason::Text(text.to_string())
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Blocked(b) => b.fmt(f),
            Reason::Text(t) => f.write_str(t),
        }
    }
}

/// Which probe an [`Action::Probe`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// The program's `[ready]` check (tcp/http/exec kinds only).
    Readiness,
    /// The program's `[liveness]` check.
    Liveness,
}

/// Past-tense facts the runtime reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The process for `program` was spawned with `pid` (answer to [`Action::Spawn`]).
    Spawned { program: ProgramId, pid: i32 },
    /// Spawning failed before the program ran (exec error, bad user or directory). `code` is the
    /// shell convention (127 not found, 126 not executable, 1 otherwise).
    SpawnFailed {
        program: ProgramId,
        reason: String,
        code: i32,
    },
    /// `waitpid` reaped `pid`. Unknown pids (orphans) are ignored.
    Exited { pid: i32, status: ExitStatus },
    /// No child processes are left (`waitpid` answered ECHILD).
    NoChildren,
    /// The program with `pid` reported readiness (sd_notify READY=1, a log line, the bridge).
    Ready { program: ProgramId, pid: i32 },
    /// An sd_notify `WATCHDOG=1` ping.
    WatchdogPing { program: ProgramId, pid: i32 },
    /// A free-form status text (sd_notify `STATUS=`), kept for `status`.
    StatusText {
        program: ProgramId,
        pid: i32,
        text: String,
    },
    /// sd_notify `MAINPID=`: the program's main process is now `main_pid` (a daemon that forked
    /// away from the process we spawned). The runtime has checked that `main_pid` descends from
    /// the supervisor and belongs to no other program, and whether it leads a process group of
    /// its own (`leads_group`): a daemon left in its wrapper's group does not, and a group signal
    /// to its pid would reach nobody (issue 12).
    MainPid {
        program: ProgramId,
        pid: i32,
        main_pid: i32,
        leads_group: bool,
    },
    /// sd_notify `EXTEND_TIMEOUT_USEC`: push the readiness deadline out.
    ExtendTimeout {
        program: ProgramId,
        pid: i32,
        by: std::time::Duration,
    },
    /// Result of an [`Action::Probe`].
    ProbeResult {
        program: ProgramId,
        pid: i32,
        kind: ProbeKind,
        result: Result<(), String>,
    },
    /// SIGTERM/SIGINT/SIGQUIT arrived (a second one skips the ordering).
    ShutdownRequested,
    /// Control: start a program (no-op when running).
    StartRequested(ProgramId),
    /// Control: stop a program (it stays stopped until started).
    StopRequested(ProgramId),
    /// Control: stop then start a program, resetting its retry count.
    RestartRequested(ProgramId),
    /// Answer to [`Action::SampleRss`]: `pid`'s resident memory in bytes (`None`: unreadable,
    /// the process is gone).
    RssSampled {
        program: ProgramId,
        pid: i32,
        rss: Option<u64>,
    },
}

/// Commands for the runtime.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Spawn the program; answer with [`Input::Spawned`] or [`Input::SpawnFailed`].
    Spawn(ProgramId),
    /// Send `signal` to `pid`, or to its process group when `group`. `group` is only ever set
    /// for a process that leads its group: every spawned process does, a `MAINPID=` daemon may
    /// not.
    Signal {
        program: ProgramId,
        pid: i32,
        signal: crate::signal::Signal,
        group: bool,
    },
    /// Run a probe for the process `pid`; answer with [`Input::ProbeResult`].
    Probe {
        program: ProgramId,
        pid: i32,
        kind: ProbeKind,
    },
    /// Read the resident memory of `pid` (`max_rss`); answer with [`Input::RssSampled`].
    SampleRss { program: ProgramId, pid: i32 },
    /// Send `signal` to every remaining descendant (orphans) after the programs stopped.
    SignalOrphans(crate::signal::Signal),
    /// Exit the supervisor with this code. The last action ever emitted.
    Exit(i32),
}

/// Something worth logging, emitted alongside actions.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A process was spawned.
    Spawned { program: ProgramId, pid: i32 },
    /// A process became ready.
    Ready { program: ProgramId, pid: i32 },
    /// A process exited; `expected` per `exitcodes`.
    Exited {
        program: ProgramId,
        pid: i32,
        status: ExitStatus,
        expected: bool,
    },
    /// Spawning failed.
    SpawnFailed { program: ProgramId, reason: String },
    /// A start failed (exited too early, readiness timeout, spawn failure).
    StartFailed { program: ProgramId, reason: String },
    /// Waiting before the next start.
    Backoff {
        program: ProgramId,
        delay: std::time::Duration,
        attempt: u32,
    },
    /// Gave up.
    Fatal { program: ProgramId, reason: String },
    /// Stopping a process.
    Stopping {
        program: ProgramId,
        pid: i32,
        reason: String,
    },
    /// The stop deadline passed; SIGKILL sent.
    Killed { program: ProgramId, pid: i32 },
    /// The program's main process changed (sd_notify `MAINPID=`).
    MainPid {
        program: ProgramId,
        old: i32,
        pid: i32,
    },
    /// A liveness probe or the watchdog failed.
    Unhealthy {
        program: ProgramId,
        pid: i32,
        reason: String,
    },
    /// Shutdown started (`reason`), or was escalated.
    Shutdown { reason: String },
    /// A scheduled program's run came due: started, skipped or queued (`what`).
    Scheduled { program: ProgramId, what: String },
    /// A reload removed the program and its process is gone: the id is retired.
    Removed { program: ProgramId },
    /// A reload's new definition of the program took over (it starts again from STOPPED).
    Replaced { program: ProgramId },
}

/// One program as `status` shows it. Serialised as the control protocol's status object.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProgramStatus {
    /// The program name.
    pub name: String,
    /// The `[program.NAME]` table of a `numprocs` instance (absent for a plain program).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Its state, serialised as supervisord's name, e.g. `"RUNNING"`.
    pub state: State,
    /// What holds it in `STOPPED` although it is to run; not part of the control protocol
    /// (`reason` carries its text).
    #[serde(skip)]
    pub blocked_on: Option<BlockedOn>,
    /// The live process, if any.
    pub pid: Option<i32>,
    /// Passed its readiness check and still running.
    pub ready: bool,
    /// Counts as healthy for the overall health (see [`crate::health`]).
    pub healthy: bool,
    /// From the config.
    pub critical: bool,
    /// The readiness kind, e.g. `"startsecs"`, `"notify"`.
    pub readiness: &'static str,
    /// Restarts since the supervisor started.
    pub restarts: u64,
    /// The last exit status as a shell code (`128 + signal` when signalled).
    pub exit_status: Option<i32>,
    /// Seconds since the current process was spawned.
    pub uptime_s: Option<f64>,
    /// Why it is in its state: waiting for a dependency ([`ProgramStatus::blocked_on`]
    /// rendered), the last failure, a probe error.
    pub reason: Option<String>,
    /// The last sd_notify `STATUS=` text.
    pub status_text: Option<String>,
    /// Liveness probe and watchdog failures since start.
    pub probe_failures: u64,
    /// A scheduled program's next run and run history; absent for other programs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<crate::schedule::ScheduleStatus>,
    /// Lines its `log_file` dropped (slow or failing file); absent without a `log_file`. Filled
    /// in by the runtime, which owns the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_file_dropped_lines: Option<u64>,
    /// With `restart_limit`: automatic restarts inside the current window (FATAL above `burst`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_limit_failures: Option<u32>,
    /// With `max_rss`: restarts because resident memory stayed above the limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_restarts: Option<u64>,
}

/// The whole supervisor as `status` and `health` see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Snapshot {
    /// Every program, in config order (sorted by name).
    pub programs: Vec<ProgramStatus>,
    /// Overall health.
    pub healthy: bool,
    /// One line: why unhealthy, or `"all critical programs ready"`.
    pub reason: String,
    /// A shutdown is under way.
    pub shutting_down: bool,
}

/// Why a process is being stopped: decides what happens once it has exited.
#[derive(Debug, Clone, PartialEq)]
enum StopIntent {
    /// Operator `stop`: stay stopped.
    User,
    /// Operator `restart`: start again at once, retry count reset.
    Restart,
    /// Part of the supervisor's shutdown.
    Shutdown,
    /// Never became ready in time: a failed start.
    FailedStart(String),
    /// Liveness probe or watchdog failed: restart through backoff.
    Unhealthy(String),
    /// A dependency restarted (`on_dependency_restart = "restart"`): wait for it again.
    Dependency(String),
    /// A reload removes the program or replaces its definition.
    Reload,
}

#[derive(Debug, Clone)]
struct Prog {
    state: State,
    pid: Option<i32>,
    /// Whether `pid` leads its own process group (group signals are sent only then).
    leads_group: bool,
    spawn_pending: bool,
    /// The operator's or the config's wish: keep this program running.
    want_running: bool,
    ever_spawned: bool,
    started_at: Option<Instant>,
    ready_at: Option<Instant>,
    /// Failed starts in a row (reset when the program becomes ready).
    failures: u32,
    /// Backoff attempt index for restarts after a run (reset after `reset_after` of stability).
    attempt: u32,
    restarts: u64,
    last_exit: Option<i32>,
    /// Exited with an expected code and not started since: satisfies `completed`.
    completed: bool,
    reason: Option<Reason>,
    status_text: Option<String>,
    probe_failures: u64,
    consecutive_probe_failures: u32,
    stop_intent: Option<StopIntent>,
    start_deadline: Option<Instant>,
    backoff_until: Option<Instant>,
    kill_at: Option<Instant>,
    next_probe: Option<Instant>,
    /// The kind of the probe the runtime is running now, if any.
    probe_in_flight: Option<ProbeKind>,
    watchdog_deadline: Option<Instant>,
    /// With `restart_limit`: when each automatic restart inside the window happened.
    recent_failures: VecDeque<Instant>,
    /// With `max_rss`: the next `/proc` sample, and since when samples are above the limit.
    next_rss_check: Option<Instant>,
    rss_over_since: Option<Instant>,
    memory_restarts: u64,
    /// A reload removes this program once its process is gone.
    removing: bool,
    /// A reload's new definition, taken over once the current process is gone.
    replacement: Option<Box<ProgramConfig>>,
    /// Added or replaced by a reload that is still stopping other programs: not started
    /// until it is done, so a new definition never starts beside an old one it depends on.
    held: bool,
    /// Removed by a reload: no longer part of the supervisor (kept so ids stay stable).
    retired: bool,
}

impl Prog {
    fn new(want_running: bool) -> Prog {
        Prog {
            state: State::Stopped,
            pid: None,
            leads_group: true,
            spawn_pending: false,
            want_running,
            ever_spawned: false,
            started_at: None,
            ready_at: None,
            failures: 0,
            attempt: 0,
            restarts: 0,
            last_exit: None,
            completed: false,
            reason: None,
            status_text: None,
            probe_failures: 0,
            consecutive_probe_failures: 0,
            stop_intent: None,
            start_deadline: None,
            backoff_until: None,
            kill_at: None,
            next_probe: None,
            probe_in_flight: None,
            watchdog_deadline: None,
            recent_failures: VecDeque::new(),
            next_rss_check: None,
            rss_over_since: None,
            memory_restarts: 0,
            removing: false,
            replacement: None,
            held: false,
            retired: false,
        }
    }

    fn live(&self) -> bool {
        self.pid.is_some() || self.spawn_pending
    }

    fn clear_timers(&mut self) {
        self.start_deadline = None;
        self.backoff_until = None;
        self.kill_at = None;
        self.next_probe = None;
        self.probe_in_flight = None;
        self.watchdog_deadline = None;
        self.next_rss_check = None;
        self.rss_over_since = None;
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Running,
    /// Stopping programs level by level.
    Stopping {
        /// SIGKILL every remaining program at this instant, whatever its `stopwaitsecs`.
        programs_deadline: Instant,
        /// The end of the whole shutdown (`shutdown_timeout` after it began).
        deadline: Instant,
        /// A second SIGTERM arrived: stop everything at once.
        fast: bool,
    },
    /// Every program is gone; leftover descendants got SIGTERM and get SIGKILL at `kill_at`.
    Orphans {
        kill_at: Instant,
        deadline: Instant,
        killed: bool,
    },
    /// [`Action::Exit`] was emitted.
    Done,
}

/// After SIGKILL to leftover descendants, how long to wait for them to be reaped before exiting
/// anyway (a process stuck in uninterruptible sleep cannot be reaped; exiting as PID 1 makes
/// the kernel kill it).
const ORPHAN_KILL_WAIT: Duration = Duration::from_millis(200);

/// The bound of one readiness probe attempt; the readiness `timeout` bounds them all.
const READINESS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The supervisor state machine. See the module documentation.
#[derive(Debug)]
pub struct Machine {
    cfg: Vec<ProgramConfig>,
    progs: Vec<Prog>,
    /// Program indices in start order: dependencies first, then ascending priority, then name.
    order: Vec<ProgramId>,
    /// Stop level per program: higher levels stop first, equal levels in parallel.
    level: Vec<u32>,
    dependents: Vec<Vec<ProgramId>>,
    shutdown_timeout: Duration,
    orphan_grace: Duration,
    phase: Phase,
    exit_code: i32,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    rng: u64,
    /// Per program: its schedule, if scheduled (see `sched.rs`).
    sched: Vec<Option<crate::schedule::Sched>>,
    /// The last wall-clock reading and the instant it was taken at.
    clock: Option<(Instant, jiff::Timestamp)>,
    /// Where cron schedules are evaluated.
    tz: jiff::tz::TimeZone,
}

impl Machine {
    /// Builds the machine for a validated config. `seed` feeds backoff jitter (any value; tests
    /// pass a constant, the runtime a random one). Nothing starts until [`Machine::start`].
    pub fn new(config: &Config, seed: u64) -> Machine {
        let cfg = config.programs.clone();
        let mut m = Machine {
            sched: sched::schedules(&cfg),
            clock: None,
            tz: jiff::tz::TimeZone::UTC,
            progs: cfg.iter().map(|p| Prog::new(p.autostart)).collect(),
            cfg,
            order: Vec::new(),
            level: Vec::new(),
            dependents: Vec::new(),
            shutdown_timeout: config.supervisor.shutdown_timeout,
            orphan_grace: config.supervisor.orphan_grace,
            phase: Phase::Running,
            exit_code: 0,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
        };
        m.layout();
        m
    }

    /// Computes start order, stop levels and dependents over the programs that are not retired.
    fn layout(&mut self) {
        let cfg = &self.cfg;
        let n = cfg.len();
        let active = |i: usize| !self.progs[i].retired;
        let index = |name: &str| (0..n).find(|&i| active(i) && cfg[i].name == name);
        let deps: Vec<Vec<usize>> = cfg
            .iter()
            .map(|p| p.depends_on.iter().filter_map(|(d, _)| index(d)).collect())
            .collect();
        let mut dependents = vec![Vec::new(); n];
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                dependents[d].push(ProgramId(i));
            }
        }
        let total = (0..n).filter(|&i| active(i)).count();
        // Kahn's algorithm over dependency edges, always taking the lowest (priority, name)
        // among the programs whose dependencies are placed. The config is validated acyclic;
        // should a cycle slip through, the leftovers are appended so nothing is lost.
        let mut placed: Vec<bool> = (0..n).map(|i| !active(i)).collect();
        let mut order = Vec::with_capacity(total);
        while order.len() < total {
            let next = (0..n)
                .filter(|&i| !placed[i] && deps[i].iter().all(|&d| placed[d]))
                .min_by(|&a, &b| {
                    (cfg[a].priority, &cfg[a].name).cmp(&(cfg[b].priority, &cfg[b].name))
                })
                .or_else(|| (0..n).find(|&i| !placed[i]));
            let Some(i) = next else { break };
            placed[i] = true;
            order.push(ProgramId(i));
        }
        // Levels grow along the start order: a program shares its predecessor's level only when
        // it has the same priority and depends on nothing at that level, so stopping by
        // descending level is exactly the reverse start order with equal priorities in parallel.
        let mut level = vec![0u32; n];
        for (k, &ProgramId(i)) in order.iter().enumerate() {
            if k == 0 {
                continue;
            }
            let ProgramId(prev) = order[k - 1];
            let cur = level[prev];
            let same =
                cfg[i].priority == cfg[prev].priority && deps[i].iter().all(|&d| level[d] < cur);
            level[i] = if same { cur } else { cur + 1 };
        }
        self.order = order;
        self.level = level;
        self.dependents = dependents;
    }

    /// Applies a reload: `config` is the new effective config and `plan` its difference from
    /// the running one ([`crate::plan::plan`]).
    ///
    /// Unchanged programs are not touched. Removed and changed programs are stopped together,
    /// dependents first (the same levels as a shutdown); a removed program's id is retired once
    /// its process is gone, a changed one takes its new definition. Added and changed programs
    /// start, in dependency order, once every program the reload stops has stopped.
    /// `[supervisor]` timings (`shutdown_timeout`, `orphan_grace`) apply at once. Ignored during
    /// a shutdown.
    pub fn apply(&mut self, now: Instant, config: &Config, plan: &Plan) {
        if self.phase != Phase::Running {
            return;
        }
        self.shutdown_timeout = config.supervisor.shutdown_timeout;
        self.orphan_grace = config.supervisor.orphan_grace;
        for name in &plan.removed {
            if let Some(id) = self.find(name) {
                let p = &mut self.progs[id.0];
                p.removing = true;
                p.replacement = None;
                p.want_running = false;
            }
        }
        for new in &config.programs {
            let replace = plan.is_changed(&new.name) || plan.added.contains(&new.name);
            if !replace {
                continue;
            }
            match self.find(&new.name) {
                // Added, or added back while its removal is still under way.
                Some(id) => {
                    let p = &mut self.progs[id.0];
                    p.removing = false;
                    p.replacement = Some(Box::new(new.clone()));
                }
                None => {
                    let mut p = Prog::new(new.autostart);
                    p.held = true;
                    self.cfg.push(new.clone());
                    self.progs.push(p);
                    self.sched.push(None);
                    self.reschedule(now, self.progs.len() - 1);
                }
            }
        }
        self.layout();
        // Programs with no process take their new state at once.
        for i in 0..self.progs.len() {
            let p = &self.progs[i];
            if !p.retired && !p.live() && (p.removing || p.replacement.is_some()) {
                self.finish_reload(now, ProgramId(i));
            }
        }
        self.advance_reload(now);
    }

    /// The process of a program a reload removes or replaces is gone (or there was none).
    fn finish_reload(&mut self, now: Instant, id: ProgramId) {
        let p = &mut self.progs[id.0];
        if p.removing {
            p.clear_timers();
            p.state = State::Stopped;
            p.removing = false;
            p.retired = true;
            self.sched[id.0] = None;
            self.events.push_back(Event::Removed { program: id });
        } else if let Some(new) = p.replacement.take() {
            let restarts = p.restarts;
            let ever_spawned = p.ever_spawned;
            *p = Prog::new(new.autostart);
            p.restarts = restarts;
            p.ever_spawned = ever_spawned;
            p.held = true;
            self.cfg[id.0] = *new;
            self.events.push_back(Event::Replaced { program: id });
            self.reschedule(now, id.0);
        }
        self.layout();
    }

    /// Stops the next level of programs the reload removes or replaces; once none is left,
    /// starts what the reload holds back.
    fn advance_reload(&mut self, now: Instant) {
        let going: Vec<usize> = (0..self.progs.len())
            .filter(|&i| {
                let p = &self.progs[i];
                !p.retired && p.live() && (p.removing || p.replacement.is_some())
            })
            .collect();
        if going.is_empty() {
            let mut released = false;
            for p in &mut self.progs {
                if p.held {
                    p.held = false;
                    released = true;
                }
            }
            if released {
                self.try_start_all(now);
            }
            return;
        }
        let top = going.iter().map(|&i| self.level[i]).max().unwrap_or(0);
        for i in going {
            if self.level[i] == top && self.progs[i].state != State::Stopping {
                self.begin_stop(now, ProgramId(i), StopIntent::Reload, "reload".into());
            }
        }
        for p in &mut self.progs {
            if p.held {
                p.reason = Some(Reason::Blocked(BlockedOn::Reload));
            }
        }
    }

    /// Whether a reload has yet to give the program its new definition or start it (until
    /// then a RUNNING state is the old definition's).
    pub fn reload_pending(&self, id: ProgramId) -> bool {
        let p = &self.progs[id.0];
        p.replacement.is_some() || p.held
    }

    /// Whether the program was removed by a reload (its id means nothing any more).
    pub fn is_removed(&self, id: ProgramId) -> bool {
        self.progs[id.0].retired
    }

    /// Starts every `autostart` program whose dependencies allow it.
    pub fn start(&mut self, now: Instant) {
        self.try_start_all(now);
        self.schedule_start(now);
    }

    /// The program's config.
    pub fn program(&self, id: ProgramId) -> &ProgramConfig {
        &self.cfg[id.0]
    }

    /// What an [`Action::Probe`] of `kind` runs for the program, and how long one attempt may
    /// take: the `[ready]` check, an attempt at most a second (never more than the readiness
    /// `timeout`), or the `[liveness]` check with its own `timeout`. `None` for a liveness probe
    /// of a program without one.
    pub fn probe_check(
        &self,
        id: ProgramId,
        kind: ProbeKind,
    ) -> Option<(&ReadinessCheck, Duration)> {
        let c = &self.cfg[id.0];
        match kind {
            ProbeKind::Readiness => Some((
                &c.readiness.check,
                READINESS_PROBE_TIMEOUT.min(c.readiness.timeout),
            )),
            ProbeKind::Liveness => c.liveness.as_ref().map(|l| (&l.check, l.timeout)),
        }
    }

    /// Looks a program up by name (removed programs are not found).
    pub fn find(&self, name: &str) -> Option<ProgramId> {
        self.ids().find(|id| self.cfg[id.0].name == name)
    }

    /// The programs `name` addresses: the program of that name, or every instance of the
    /// `numprocs` group of that name (in config order). Empty when neither exists.
    pub fn find_all(&self, name: &str) -> Vec<ProgramId> {
        match self.find(name) {
            Some(id) => vec![id],
            None => self
                .ids()
                .filter(|id| self.cfg[id.0].group.as_deref() == Some(name))
                .collect(),
        }
    }

    /// Every program id (config order, then programs added by reloads), removed ones left out.
    pub fn ids(&self) -> impl Iterator<Item = ProgramId> + '_ {
        (0..self.cfg.len())
            .filter(|&i| !self.progs[i].retired)
            .map(ProgramId)
    }

    /// Program ids in start order (dependencies first, then priority).
    pub fn start_order(&self) -> &[ProgramId] {
        &self.order
    }

    /// The live pid of a program.
    pub fn pid(&self, id: ProgramId) -> Option<i32> {
        self.progs[id.0].pid
    }

    /// Whether a signal for the program (`stopasgroup`) goes to its process group: only when
    /// configured and its main process leads a group.
    pub fn signal_group(&self, id: ProgramId) -> bool {
        self.cfg[id.0].stopasgroup && self.progs[id.0].leads_group
    }

    /// The program's current state.
    pub fn state(&self, id: ProgramId) -> State {
        self.progs[id.0].state
    }

    /// Whether [`Action::Exit`] has been emitted.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether a shutdown is under way.
    pub fn is_shutting_down(&self) -> bool {
        self.phase != Phase::Running
    }

    /// The next command for the runtime.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event to log.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Machine::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for p in &self.progs {
            consider(p.start_deadline);
            consider(p.backoff_until);
            consider(p.kill_at);
            consider(if p.probe_in_flight.is_some() {
                None
            } else {
                p.next_probe
            });
            consider(p.watchdog_deadline);
            consider(p.next_rss_check);
        }
        consider(self.next_schedule_due());
        match self.phase {
            Phase::Stopping {
                programs_deadline,
                deadline,
                ..
            } => {
                consider(Some(programs_deadline));
                consider(Some(deadline));
            }
            Phase::Orphans {
                kill_at,
                deadline,
                killed,
            } => {
                consider(Some(if killed { deadline } else { kill_at }));
            }
            Phase::Running | Phase::Done => {}
        }
        t
    }

    /// Feeds one fact.
    pub fn handle(&mut self, now: Instant, input: Input) {
        if self.phase == Phase::Done {
            return;
        }
        match input {
            Input::Spawned { program, pid } => self.on_spawned(now, program, pid),
            Input::SpawnFailed {
                program,
                reason,
                code,
            } => {
                let p = &mut self.progs[program.0];
                if !p.spawn_pending {
                    return;
                }
                p.spawn_pending = false;
                p.last_exit = Some(code);
                self.events.push_back(Event::SpawnFailed {
                    program,
                    reason: reason.clone(),
                });
                self.after_exit(now, program, None, code, false, Some(reason));
                self.schedule_run_ended(now, program, code, false);
            }
            Input::Exited { pid, status } => {
                if let Some(i) = self.progs.iter().position(|p| p.pid == Some(pid)) {
                    self.on_exited(now, ProgramId(i), pid, status);
                }
            }
            Input::NoChildren => {
                if let Phase::Orphans { .. } = self.phase {
                    self.finish();
                }
            }
            Input::Ready { program, pid } => {
                let p = &self.progs[program.0];
                if p.pid == Some(pid) && p.state == State::Starting && p.stop_intent.is_none() {
                    self.become_ready(now, program);
                }
            }
            Input::WatchdogPing { program, pid } => {
                let wd = self.cfg[program.0].watchdog;
                let p = &mut self.progs[program.0];
                if p.pid == Some(pid) && p.watchdog_deadline.is_some() {
                    p.watchdog_deadline = wd.map(|d| now + d);
                }
            }
            Input::StatusText { program, pid, text } => {
                let p = &mut self.progs[program.0];
                if p.pid == Some(pid) {
                    p.status_text = Some(text);
                }
            }
            Input::MainPid {
                program,
                pid,
                main_pid,
                leads_group,
            } => {
                let p = &mut self.progs[program.0];
                if p.pid == Some(pid)
                    && matches!(p.state, State::Starting | State::Running)
                    && !self.progs.iter().any(|q| q.pid == Some(main_pid))
                {
                    // From now on the program is that process: its exit is the program's exit,
                    // stop signals go to it; the process we spawned may exit unnoticed.
                    let p = &mut self.progs[program.0];
                    p.pid = Some(main_pid);
                    p.leads_group = leads_group;
                    self.events.push_back(Event::MainPid {
                        program,
                        old: pid,
                        pid: main_pid,
                    });
                }
            }
            Input::ExtendTimeout { program, pid, by } => {
                let p = &mut self.progs[program.0];
                if p.pid == Some(pid) && p.state == State::Starting {
                    if let Some(d) = p.start_deadline {
                        p.start_deadline = Some(d.max(now + by));
                    }
                }
            }
            Input::ProbeResult {
                program,
                pid,
                kind,
                result,
            } => self.on_probe(now, program, pid, kind, result),
            Input::ShutdownRequested => self.request_shutdown(now, 0, "shutdown requested".into()),
            Input::StartRequested(id) => {
                self.on_start_requested(now, id);
                self.schedule_resumed(now, id);
            }
            Input::StopRequested(id) => {
                if self.phase != Phase::Running {
                    return;
                }
                self.schedule_paused(id);
                let p = &mut self.progs[id.0];
                p.want_running = false;
                if p.live() {
                    self.begin_stop(now, id, StopIntent::User, "stop requested".into());
                } else {
                    p.clear_timers();
                    p.state = State::Stopped;
                    p.reason = Some("stopped by request".into());
                }
            }
            Input::RssSampled { program, pid, rss } => self.on_rss(now, program, pid, rss),
            Input::RestartRequested(id) => {
                if self.phase != Phase::Running {
                    return;
                }
                let p = &mut self.progs[id.0];
                p.want_running = true;
                p.failures = 0;
                p.attempt = 0;
                if p.live() {
                    self.begin_stop(now, id, StopIntent::Restart, "restart requested".into());
                } else {
                    p.clear_timers();
                    p.state = State::Stopped;
                    self.try_start_all(now);
                }
            }
        }
    }

    /// Processes every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.fire_schedules(now);
        for i in 0..self.progs.len() {
            let id = ProgramId(i);
            let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
            if due(self.progs[i].kill_at) {
                self.progs[i].kill_at = None;
                if let Some(pid) = self.progs[i].pid {
                    let group = self.cfg[i].killasgroup && self.progs[i].leads_group;
                    self.actions.push_back(Action::Signal {
                        program: id,
                        pid,
                        signal: Signal::Kill,
                        group,
                    });
                    self.events.push_back(Event::Killed { program: id, pid });
                }
            }
            if due(self.progs[i].start_deadline) {
                self.progs[i].start_deadline = None;
                if self.progs[i].state == State::Starting {
                    match self.cfg[i].readiness.check {
                        ReadinessCheck::StartSecs => self.become_ready(now, id),
                        _ => {
                            let reason = format!(
                                "not ready within {:?} ({} readiness)",
                                self.cfg[i].readiness.timeout,
                                readiness_name(&self.cfg[i].readiness.check)
                            );
                            self.begin_stop(
                                now,
                                id,
                                StopIntent::FailedStart(reason.clone()),
                                reason,
                            );
                        }
                    }
                }
            }
            if due(self.progs[i].backoff_until) {
                self.progs[i].backoff_until = None;
                if self.progs[i].state == State::Backoff {
                    self.progs[i].state = State::Stopped;
                    self.try_start_all(now);
                }
            }
            if self.progs[i].probe_in_flight.is_none() && due(self.progs[i].next_probe) {
                if let Some(pid) = self.progs[i].pid {
                    let kind = if self.progs[i].state == State::Starting {
                        ProbeKind::Readiness
                    } else {
                        ProbeKind::Liveness
                    };
                    self.progs[i].next_probe = None;
                    self.progs[i].probe_in_flight = Some(kind);
                    self.actions.push_back(Action::Probe {
                        program: id,
                        pid,
                        kind,
                    });
                } else {
                    self.progs[i].next_probe = None;
                }
            }
            if due(self.progs[i].next_rss_check) {
                let p = &mut self.progs[i];
                p.next_rss_check = None;
                if let (Some(pid), Some(m), State::Starting | State::Running) =
                    (p.pid, self.cfg[i].max_rss, p.state)
                {
                    p.next_rss_check = Some(now + m.interval);
                    self.actions
                        .push_back(Action::SampleRss { program: id, pid });
                }
            }
            if due(self.progs[i].watchdog_deadline) {
                self.progs[i].watchdog_deadline = None;
                if self.progs[i].state == State::Running {
                    let reason = format!(
                        "watchdog: no WATCHDOG=1 within {:?}",
                        self.cfg[i].watchdog.unwrap_or_default()
                    );
                    self.progs[i].probe_failures += 1;
                    if let Some(pid) = self.progs[i].pid {
                        self.events.push_back(Event::Unhealthy {
                            program: id,
                            pid,
                            reason: reason.clone(),
                        });
                    }
                    self.begin_stop(now, id, StopIntent::Unhealthy(reason.clone()), reason);
                }
            }
        }
        match self.phase.clone() {
            Phase::Stopping {
                programs_deadline,
                deadline,
                ..
            } => {
                if now >= programs_deadline {
                    // Past the program budget: SIGKILL whatever is left, once.
                    for i in 0..self.progs.len() {
                        if let (Some(pid), true) = (
                            self.progs[i].pid,
                            self.progs[i].state != State::Stopping
                                || self.progs[i].kill_at.is_some(),
                        ) {
                            let group = self.cfg[i].killasgroup && self.progs[i].leads_group;
                            self.progs[i].state = State::Stopping;
                            self.progs[i].kill_at = None;
                            self.progs[i].stop_intent = Some(StopIntent::Shutdown);
                            self.actions.push_back(Action::Signal {
                                program: ProgramId(i),
                                pid,
                                signal: Signal::Kill,
                                group,
                            });
                            self.events.push_back(Event::Killed {
                                program: ProgramId(i),
                                pid,
                            });
                        }
                    }
                    self.phase = Phase::Stopping {
                        programs_deadline: deadline,
                        deadline,
                        fast: true,
                    };
                    if now >= deadline {
                        self.enter_orphans(now, deadline);
                    }
                }
            }
            Phase::Orphans {
                kill_at,
                deadline,
                killed,
            } => {
                if !killed && now >= kill_at {
                    self.actions.push_back(Action::SignalOrphans(Signal::Kill));
                    self.phase = Phase::Orphans {
                        kill_at,
                        deadline: now + ORPHAN_KILL_WAIT,
                        killed: true,
                    };
                } else if killed && now >= deadline {
                    self.finish();
                }
            }
            Phase::Running | Phase::Done => {}
        }
    }

    /// Everything `status` shows.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut programs: Vec<ProgramStatus> = self.ids().map(|id| self.status(now, id)).collect();
        // Programs added by a reload come after the others in id order; `status` is by name.
        programs.sort_by(|a, b| a.name.cmp(&b.name));
        let (healthy, reason) = if self.phase != Phase::Running {
            (false, "shutting down".to_string())
        } else {
            match programs.iter().find(|s| s.critical && !s.healthy) {
                Some(s) => (
                    false,
                    match &s.reason {
                        Some(r) => format!("{} is {}: {r}", s.name, s.state),
                        None => format!("{} is {}", s.name, s.state),
                    },
                ),
                None => (true, "all critical programs ready".to_string()),
            }
        };
        Snapshot {
            programs,
            healthy,
            reason,
            shutting_down: self.phase != Phase::Running,
        }
    }

    /// One program as `status` shows it.
    pub fn status(&self, now: Instant, id: ProgramId) -> ProgramStatus {
        let c = &self.cfg[id.0];
        let p = &self.progs[id.0];
        ProgramStatus {
            name: c.name.clone(),
            group: c.group.clone(),
            state: p.state,
            blocked_on: self.blocked_on(id),
            pid: p.pid,
            ready: p.state == State::Running,
            healthy: self.program_healthy(id),
            critical: c.critical,
            readiness: readiness_name(&c.readiness.check),
            restarts: p.restarts,
            exit_status: p.last_exit,
            uptime_s: p
                .pid
                .and(p.started_at)
                .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            reason: p.reason.as_ref().map(ToString::to_string),
            status_text: p.status_text.clone(),
            probe_failures: p.probe_failures,
            schedule: self.schedule_status(id),
            log_file_dropped_lines: None,
            restart_limit_failures: c.restart_limit.map(|l| {
                let inside = p
                    .recent_failures
                    .iter()
                    .filter(|t| now.saturating_duration_since(**t) < l.within)
                    .count();
                u32::try_from(inside).unwrap_or(u32::MAX)
            }),
            memory_restarts: c.max_rss.map(|_| p.memory_restarts),
        }
    }

    /// What holds the program in `STOPPED` although it is to run, if anything.
    pub fn blocked_on(&self, id: ProgramId) -> Option<BlockedOn> {
        let p = &self.progs[id.0];
        if p.state != State::Stopped {
            return None;
        }
        if p.held {
            return Some(BlockedOn::Reload);
        }
        match &p.reason {
            Some(Reason::Blocked(b @ BlockedOn::Dependency { .. })) => Some(b.clone()),
            _ => None,
        }
    }

    /// A program counts as healthy when it is ready, finished as expected, or deliberately not
    /// running (autostart off, stopped by the operator).
    fn program_healthy(&self, id: ProgramId) -> bool {
        let p = &self.progs[id.0];
        match p.state {
            State::Running => true,
            State::Exited => p.completed,
            State::Stopped => !p.want_running,
            State::Starting | State::Backoff | State::Stopping | State::Fatal => false,
        }
    }

    fn next_sample(&mut self) -> f64 {
        // splitmix64: a tiny deterministic generator; jitter needs spread, not cryptography.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn deps_hold(&self, id: ProgramId) -> Result<(), BlockedOn> {
        for (name, cond) in &self.cfg[id.0].depends_on {
            let Some(d) = self.find(name) else { continue };
            let p = &self.progs[d.0];
            let ok = match cond {
                DependencyCondition::Started => {
                    matches!(p.state, State::Running)
                        || (p.state == State::Starting && p.pid.is_some())
                        || p.completed
                }
                DependencyCondition::Ready => p.state == State::Running,
                DependencyCondition::Completed => p.completed,
            };
            if !ok {
                return Err(BlockedOn::Dependency {
                    name: name.clone(),
                    condition: *cond,
                    state: p.state,
                });
            }
        }
        Ok(())
    }

    fn try_start_all(&mut self, now: Instant) {
        if self.phase != Phase::Running {
            return;
        }
        for k in 0..self.order.len() {
            let id = self.order[k];
            let p = &self.progs[id.0];
            if !p.want_running || p.live() || p.state != State::Stopped || p.held {
                continue;
            }
            match self.deps_hold(id) {
                Ok(()) => self.spawn(now, id),
                Err(why) => self.progs[id.0].reason = Some(Reason::Blocked(why)),
            }
        }
    }

    fn spawn(&mut self, _now: Instant, id: ProgramId) {
        let p = &mut self.progs[id.0];
        p.clear_timers();
        p.state = State::Starting;
        p.spawn_pending = true;
        p.completed = false;
        p.reason = None;
        p.stop_intent = None;
        p.status_text = None;
        self.actions.push_back(Action::Spawn(id));
    }

    fn on_spawned(&mut self, now: Instant, id: ProgramId, pid: i32) {
        let c = &self.cfg[id.0];
        let p = &mut self.progs[id.0];
        if !p.spawn_pending {
            return;
        }
        p.spawn_pending = false;
        p.pid = Some(pid);
        // The runtime starts every program as the leader of its own session and group.
        p.leads_group = true;
        p.started_at = Some(now);
        p.ready_at = None;
        p.consecutive_probe_failures = 0;
        if p.ever_spawned {
            p.restarts += 1;
        }
        p.ever_spawned = true;
        p.next_rss_check = c.max_rss.map(|m| now + m.interval);
        self.events.push_back(Event::Spawned { program: id, pid });
        if let Some(intent) = p.stop_intent.clone() {
            // Stopped while the spawn was being carried out: stop the new process right away.
            self.begin_stop(now, id, intent, "stop requested during spawn".into());
            return;
        }
        match &c.readiness.check {
            ReadinessCheck::StartSecs => {
                if c.startsecs.is_zero() {
                    self.become_ready(now, id);
                } else {
                    p.start_deadline = Some(now + c.startsecs);
                }
            }
            check => {
                p.start_deadline = Some(now + c.readiness.timeout);
                if matches!(
                    check,
                    ReadinessCheck::Tcp { .. }
                        | ReadinessCheck::Http { .. }
                        | ReadinessCheck::Exec { .. }
                ) {
                    p.next_probe = Some(now);
                }
            }
        }
        // A process now exists: dependents waiting for `started` may go.
        if self.progs[id.0].state == State::Starting {
            self.try_start_all(now);
        }
    }

    fn become_ready(&mut self, now: Instant, id: ProgramId) {
        let c = &self.cfg[id.0];
        let p = &mut self.progs[id.0];
        p.state = State::Running;
        p.ready_at = Some(now);
        p.failures = 0;
        p.start_deadline = None;
        p.probe_in_flight = None;
        p.reason = None;
        p.next_probe = c.liveness.as_ref().map(|l| now + l.initial_delay);
        p.watchdog_deadline = c.watchdog.map(|d| now + d);
        if let Some(pid) = p.pid {
            self.events.push_back(Event::Ready { program: id, pid });
        }
        self.try_start_all(now);
    }

    fn on_probe(
        &mut self,
        now: Instant,
        id: ProgramId,
        pid: i32,
        kind: ProbeKind,
        result: Result<(), String>,
    ) {
        let p = &mut self.progs[id.0];
        if p.pid != Some(pid) || p.probe_in_flight != Some(kind) {
            return;
        }
        p.probe_in_flight = None;
        match (kind, p.state) {
            (ProbeKind::Readiness, State::Starting) => match result {
                Ok(()) => self.become_ready(now, id),
                Err(e) => {
                    p.reason = Some(format!("readiness: {e}").into());
                    p.next_probe = Some(now + self.cfg[id.0].readiness.interval);
                }
            },
            (ProbeKind::Liveness, State::Running) => {
                let Some(l) = self.cfg[id.0].liveness.clone() else {
                    return;
                };
                match result {
                    Ok(()) => {
                        if p.consecutive_probe_failures > 0 {
                            // The failure it described is over: `status` must not keep showing it.
                            p.reason = None;
                        }
                        p.consecutive_probe_failures = 0;
                        p.next_probe = Some(now + l.interval);
                    }
                    Err(e) => {
                        p.consecutive_probe_failures += 1;
                        p.probe_failures += 1;
                        let reason = format!(
                            "liveness: {e} ({} of {} failures)",
                            p.consecutive_probe_failures, l.failure_threshold
                        );
                        p.reason = Some(reason.clone().into());
                        if p.consecutive_probe_failures >= l.failure_threshold {
                            self.events.push_back(Event::Unhealthy {
                                program: id,
                                pid,
                                reason: reason.clone(),
                            });
                            self.begin_stop(now, id, StopIntent::Unhealthy(reason.clone()), reason);
                        } else {
                            p.next_probe = Some(now + l.interval);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn begin_stop(&mut self, now: Instant, id: ProgramId, intent: StopIntent, reason: String) {
        let c = &self.cfg[id.0];
        let p = &mut self.progs[id.0];
        if p.spawn_pending {
            p.stop_intent = Some(intent);
            return;
        }
        let Some(pid) = p.pid else {
            p.clear_timers();
            p.state = State::Stopped;
            return;
        };
        if p.state == State::Stopping {
            // Already stopping: a shutdown overrides any other intent, a reload any but a
            // shutdown; the deadline stays.
            let overrides = match intent {
                StopIntent::Shutdown => true,
                StopIntent::Reload => p.stop_intent != Some(StopIntent::Shutdown),
                _ => false,
            };
            if overrides {
                p.stop_intent = Some(intent);
            }
            return;
        }
        let was_running = p.state == State::Running;
        p.clear_timers();
        p.state = State::Stopping;
        p.stop_intent = Some(intent);
        let mut kill_at = now + c.stopwaitsecs;
        if let Phase::Stopping {
            programs_deadline, ..
        } = self.phase
        {
            kill_at = kill_at.min(programs_deadline);
        }
        p.kill_at = Some(kill_at);
        self.actions.push_back(Action::Signal {
            program: id,
            pid,
            signal: c.stopsignal,
            group: c.stopasgroup && p.leads_group,
        });
        self.events.push_back(Event::Stopping {
            program: id,
            pid,
            reason,
        });
        if was_running {
            self.dependency_left(now, id);
        }
    }

    /// `id` stopped being ready: dependents with `on_dependency_restart = "restart"` follow it.
    fn dependency_left(&mut self, now: Instant, id: ProgramId) {
        if self.phase != Phase::Running {
            return;
        }
        let name = self.cfg[id.0].name.clone();
        for q in self.dependents[id.0].clone() {
            let c = &self.cfg[q.0];
            let cond = c
                .depends_on
                .iter()
                .find(|(d, _)| *d == name)
                .map(|(_, c)| *c);
            if c.on_dependency_restart == OnDependencyRestart::Restart
                && cond != Some(DependencyCondition::Completed)
                && self.progs[q.0].live()
            {
                let reason = format!("dependency {name} restarted");
                self.begin_stop(now, q, StopIntent::Dependency(reason.clone()), reason);
            }
        }
    }

    fn on_exited(&mut self, now: Instant, id: ProgramId, pid: i32, status: ExitStatus) {
        let c = &self.cfg[id.0];
        let expected = matches!(status, ExitStatus::Code(code) if c.exitcodes.contains(&code));
        let p = &mut self.progs[id.0];
        p.pid = None;
        p.last_exit = Some(status.code());
        let was_running = p.state == State::Running;
        // An exit we asked for is expected, whatever its status.
        let asked = p.stop_intent.as_ref().is_some_and(|i| {
            matches!(
                i,
                StopIntent::User
                    | StopIntent::Restart
                    | StopIntent::Shutdown
                    | StopIntent::Dependency(_)
                    | StopIntent::Reload
            )
        });
        self.events.push_back(Event::Exited {
            program: id,
            pid,
            status,
            expected: expected || asked,
        });
        if was_running {
            self.dependency_left(now, id);
        }
        self.after_exit(now, id, Some(status), status.code(), expected, None);
        self.schedule_run_ended(now, id, status.code(), expected);
    }

    /// Decides what follows the end of a process (or a failed spawn, with `status` None).
    fn after_exit(
        &mut self,
        now: Instant,
        id: ProgramId,
        status: Option<ExitStatus>,
        code: i32,
        expected: bool,
        spawn_error: Option<String>,
    ) {
        let c = self.cfg[id.0].clone();
        let shutting_down = self.phase != Phase::Running;
        let p = &mut self.progs[id.0];
        let intent = p.stop_intent.take();
        let state_before = p.state;
        p.clear_timers();
        let ran_for = p.ready_at.map(|t| now.saturating_duration_since(t));
        p.ready_at = None;
        p.started_at = None;

        if shutting_down {
            p.state = State::Stopped;
            p.reason = Some("stopped for shutdown".into());
            self.advance_shutdown(now);
            return;
        }
        // A reload was waiting to stop this program, whatever ended it (its own crash, a failed
        // probe): its old definition must not come back through a restart.
        if p.removing || p.replacement.is_some() {
            p.state = State::Stopped;
            self.finish_reload(now, id);
            self.advance_reload(now);
            return;
        }
        let failed_start = |reason: String| (true, reason);
        let (is_failed_start, reason) = match intent {
            Some(StopIntent::User) => {
                p.state = State::Stopped;
                p.reason = Some("stopped by request".into());
                return;
            }
            Some(StopIntent::Dependency(r)) => {
                p.state = State::Stopped;
                p.reason = Some(r.into());
                self.try_start_all(now);
                return;
            }
            Some(StopIntent::Shutdown) => {
                p.state = State::Stopped;
                return;
            }
            // A reload that was overtaken (the program was added back unchanged): carry on.
            Some(StopIntent::Reload) => {
                p.state = State::Stopped;
                self.advance_reload(now);
                self.try_start_all(now);
                return;
            }
            Some(StopIntent::Restart) => {
                p.state = State::Stopped;
                p.failures = 0;
                p.attempt = 0;
                p.recent_failures.clear();
                self.try_start_all(now);
                return;
            }
            Some(StopIntent::FailedStart(r)) => failed_start(r),
            Some(StopIntent::Unhealthy(r)) => (false, r),
            None if state_before == State::Starting => failed_start(match (&spawn_error, status) {
                (Some(e), _) => format!("spawn failed: {e}"),
                (None, Some(s)) => format!("exited before ready with {s}"),
                (None, None) => "exited before ready".into(),
            }),
            None => {
                let restart = match c.autorestart {
                    AutoRestart::Always => true,
                    AutoRestart::Unexpected => !expected,
                    AutoRestart::Never => false,
                };
                let what = status.map_or_else(|| format!("exit code {code}"), |s| s.to_string());
                if !restart {
                    p.state = State::Exited;
                    p.want_running = false;
                    p.completed = expected;
                    p.reason = Some(format!("exited with {what}").into());
                    if c.critical && !expected {
                        let reason = format!("critical program {} exited with {what}", c.name);
                        // Exit code 0 is "success" to the container runtime; an unexpected exit
                        // (0 not in `exitcodes`) must not look like one.
                        self.request_shutdown(now, if code == 0 { 1 } else { code }, reason);
                    } else {
                        self.try_start_all(now);
                    }
                    return;
                }
                (false, format!("exited with {what}"))
            }
        };
        // Every automatic restart counts against `restart_limit`, failed start or not; it is
        // checked before `startretries`, which counts only failed starts in a row.
        let over_limit = c.restart_limit.and_then(|l| {
            let recent = &mut p.recent_failures;
            recent.push_back(now);
            while recent
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= l.within)
            {
                recent.pop_front();
            }
            (recent.len() > l.burst as usize).then(|| {
                format!(
                    "{reason}; gave up: more than {} restarts within {:?} (restart_limit)",
                    l.burst, l.within
                )
            })
        });
        if is_failed_start {
            p.failures += 1;
            self.events.push_back(Event::StartFailed {
                program: id,
                reason: reason.clone(),
            });
        }
        if let Some(why) = over_limit {
            self.give_up(now, id, why, code);
            return;
        }
        if is_failed_start {
            let p = &mut self.progs[id.0];
            if p.failures > c.startretries {
                let why = format!("{reason}; gave up after {} failed starts", p.failures);
                self.give_up(now, id, why, code);
                return;
            }
            let attempt = p.failures - 1;
            self.enter_backoff(now, id, attempt, reason);
        } else {
            // A restart after a run: stable runs reset the backoff.
            if ran_for.is_some_and(|d| d >= c.backoff.reset_after) {
                p.attempt = 0;
            }
            let attempt = p.attempt;
            p.attempt = p.attempt.saturating_add(1);
            self.enter_backoff(now, id, attempt, reason);
        }
    }

    /// The memmon rule: restart once every sample for `for` was above `limit`.
    fn on_rss(&mut self, now: Instant, id: ProgramId, pid: i32, rss: Option<u64>) {
        let Some(m) = self.cfg[id.0].max_rss else {
            return;
        };
        let p = &mut self.progs[id.0];
        if p.pid != Some(pid) || !matches!(p.state, State::Starting | State::Running) {
            return;
        }
        let Some(rss) = rss.filter(|r| *r > m.limit) else {
            p.rss_over_since = None;
            return;
        };
        let since = *p.rss_over_since.get_or_insert(now);
        if now.saturating_duration_since(since) < m.for_ {
            return;
        }
        p.memory_restarts += 1;
        let reason = format!(
            "resident memory {} MiB above max_rss {} MiB for {:?}: restarting",
            rss >> 20,
            m.limit >> 20,
            m.for_
        );
        self.events.push_back(Event::Unhealthy {
            program: id,
            pid,
            reason: reason.clone(),
        });
        self.begin_stop(now, id, StopIntent::Unhealthy(reason.clone()), reason);
    }

    /// FATAL with `why`; for a critical program the supervisor shuts down with `code`.
    fn give_up(&mut self, now: Instant, id: ProgramId, why: String, code: i32) {
        let p = &mut self.progs[id.0];
        p.state = State::Fatal;
        p.want_running = false;
        p.reason = Some(why.clone().into());
        self.events.push_back(Event::Fatal {
            program: id,
            reason: why,
        });
        let c = &self.cfg[id.0];
        if c.critical {
            let reason = format!("critical program {} is FATAL", c.name);
            self.request_shutdown(now, if code == 0 { 1 } else { code }, reason);
        }
    }

    fn enter_backoff(&mut self, now: Instant, id: ProgramId, attempt: u32, reason: String) {
        let sample = self.next_sample();
        let delay = backoff::delay(&self.cfg[id.0].backoff, attempt, sample);
        let p = &mut self.progs[id.0];
        p.state = State::Backoff;
        p.backoff_until = Some(now + delay);
        p.reason = Some(reason.into());
        self.events.push_back(Event::Backoff {
            program: id,
            delay,
            attempt,
        });
    }

    fn on_start_requested(&mut self, now: Instant, id: ProgramId) {
        if self.phase != Phase::Running {
            return;
        }
        let p = &mut self.progs[id.0];
        p.want_running = true;
        match p.state {
            State::Starting | State::Running | State::Stopping => {}
            State::Stopped | State::Exited | State::Fatal | State::Backoff => {
                p.failures = 0;
                p.attempt = 0;
                // An operator's start is a fresh budget, as `systemctl reset-failed`.
                p.recent_failures.clear();
                p.clear_timers();
                p.state = State::Stopped;
                p.completed = false;
                self.try_start_all(now);
            }
        }
    }

    fn request_shutdown(&mut self, now: Instant, code: i32, reason: String) {
        match self.phase {
            Phase::Running => {
                self.exit_code = code;
                let deadline = now + self.shutdown_timeout;
                // The orphan sweep needs its grace inside the same budget.
                let programs_deadline = deadline
                    .checked_sub(self.orphan_grace)
                    .filter(|d| *d > now)
                    .unwrap_or(deadline);
                self.phase = Phase::Stopping {
                    programs_deadline,
                    deadline,
                    fast: false,
                };
                self.events.push_back(Event::Shutdown { reason });
                // Spawns still queued (a long start-up interrupted by SIGTERM) are cancelled:
                // starting a program only to stop it again wastes the shutdown budget.
                let progs = &mut self.progs;
                self.actions.retain(|a| match a {
                    Action::Spawn(id) => {
                        progs[id.0].spawn_pending = false;
                        false
                    }
                    _ => true,
                });
                for i in 0..self.progs.len() {
                    let p = &mut self.progs[i];
                    if !p.live() {
                        p.clear_timers();
                        if matches!(p.state, State::Backoff | State::Starting) {
                            p.state = State::Stopped;
                        }
                    } else if p.state != State::Stopping {
                        // Probes and watchdogs stop mattering once we are going down.
                        p.next_probe = None;
                        p.watchdog_deadline = None;
                        p.start_deadline = None;
                    }
                }
                self.advance_shutdown(now);
            }
            Phase::Stopping {
                programs_deadline,
                deadline,
                fast: false,
            } => {
                self.phase = Phase::Stopping {
                    programs_deadline,
                    deadline,
                    fast: true,
                };
                self.events.push_back(Event::Shutdown {
                    reason: format!("{reason} again: stopping every program at once"),
                });
                self.advance_shutdown(now);
            }
            _ => {}
        }
    }

    fn advance_shutdown(&mut self, now: Instant) {
        let Phase::Stopping { deadline, fast, .. } = self.phase else {
            return;
        };
        let live: Vec<usize> = (0..self.progs.len())
            .filter(|&i| self.progs[i].live())
            .collect();
        if live.is_empty() {
            self.enter_orphans(now, deadline);
            return;
        }
        let top = live.iter().map(|&i| self.level[i]).max().unwrap_or(0);
        for i in live {
            if (fast || self.level[i] == top) && self.progs[i].state != State::Stopping {
                self.begin_stop(now, ProgramId(i), StopIntent::Shutdown, "shutdown".into());
            }
        }
    }

    fn enter_orphans(&mut self, now: Instant, deadline: Instant) {
        self.actions.push_back(Action::SignalOrphans(Signal::Term));
        let kill_at = (now + self.orphan_grace).min(deadline.max(now));
        self.phase = Phase::Orphans {
            kill_at,
            deadline,
            killed: false,
        };
    }

    fn finish(&mut self) {
        self.phase = Phase::Done;
        self.actions.push_back(Action::Exit(self.exit_code));
    }
}

/// The config spelling of a readiness kind.
pub fn readiness_name(check: &ReadinessCheck) -> &'static str {
    match check {
        ReadinessCheck::StartSecs => "startsecs",
        ReadinessCheck::Notify => "notify",
        ReadinessCheck::Tcp { .. } => "tcp",
        ReadinessCheck::Http { .. } => "http",
        ReadinessCheck::Exec { .. } => "exec",
        ReadinessCheck::Log { .. } => "log",
        ReadinessCheck::Bridge => "bridge",
    }
}
