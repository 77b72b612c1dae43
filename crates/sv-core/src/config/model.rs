//! The validated configuration model.
//!
//! These types are what the rest of the supervisor consumes. They are only ever built by
//! [`super::parse`], which guarantees the invariants stated on each field (names are unique and
//! well-formed, dependencies exist and form no cycle, durations are positive where they must be).
//! Defaults follow supervisord where it has an option of the same meaning.

use std::path::PathBuf;
use std::time::Duration;

use crate::signal::Signal;

/// The whole, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The `[supervisor]` table.
    pub supervisor: SupervisorSettings,
    /// Every `[program.NAME]` table, sorted by name (start order is decided by the machine).
    pub programs: Vec<ProgramConfig>,
    /// The `[bridge]` table, when present (an empty table means "everything from the environment").
    pub bridge: Option<BridgeSection>,
}

/// How the supervisor writes its own events and the programs' output lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `name | line` for program output, human-readable `tracing` lines for events.
    #[default]
    Text,
    /// One JSON object per line: `{"ts","program","stream","line"}` for output, `tracing` JSON for events.
    Json,
}

/// The `[supervisor]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorSettings {
    /// `control_socket`: the Unix stream socket of the control protocol. Default
    /// `/run/iot2mqtt-sv/control.sock`. `$IOT2MQTT_SV_SOCKET` overrides it (applied by the binary).
    pub control_socket: PathBuf,
    /// `control_socket_mode`: permission bits of the control socket. Default `0o600`.
    pub control_socket_mode: u32,
    /// `log_format`: `"text"` (default) or `"json"`.
    pub log_format: LogFormat,
    /// `shutdown_timeout`: the bound on a whole graceful shutdown. Default 8 s, so Docker's
    /// SIGKILL 10 s after SIGTERM never arrives first.
    pub shutdown_timeout: Duration,
    /// `orphan_grace`: after the last program stopped, how long leftover descendants get between
    /// SIGTERM and SIGKILL. Default 500 ms.
    pub orphan_grace: Duration,
    /// `log_buffer_lines`: lines of recent output kept in memory per program for `logs`. Default 1000.
    pub log_buffer_lines: usize,
    /// `max_line_bytes`: an output line longer than this is split and marked. Default 16 KiB.
    pub max_line_bytes: usize,
    /// `[supervisor.http]`: the optional health/metrics HTTP server (off when absent).
    pub http: Option<HttpSettings>,
    /// `max_control_connections`: control socket connections served at once; one more gets a
    /// `busy` error and is closed. Default [`DEFAULT_MAX_CONTROL_CONNECTIONS`].
    pub max_control_connections: usize,
    /// `env_file`: `.env` files (absolute paths) read for every program before its own
    /// `env_file`s, at each spawn. Default none.
    pub env_files: Vec<PathBuf>,
    /// `minfds`: at start the supervisor raises its own RLIMIT_NOFILE (soft, and hard when
    /// needed) to at least this, or refuses to start (supervisord's `minfds`). Default none.
    pub minfds: Option<u64>,
    /// `minprocs`: the same for RLIMIT_NPROC (supervisord's `minprocs`). Default none.
    pub minprocs: Option<u64>,
}

/// The default of `max_control_connections`: room for the 1,000 simultaneous clients the
/// reliability tests hold open (docs/reliability.md), at a bounded cost.
pub const DEFAULT_MAX_CONTROL_CONNECTIONS: usize = 1024;
/// The default of `[supervisor.http] max_connections`: probes and scrapers, not crowds.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 256;

/// `[supervisor.http]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// `listen`: `host:port`; port 0 picks a free port (the bound address is logged and shown in
    /// status). Default `127.0.0.1:0`... there is no default: the table requires it.
    pub listen: String,
    /// `max_connections`: HTTP connections served at once; one more gets a 503 and is closed.
    /// Default [`DEFAULT_HTTP_MAX_CONNECTIONS`].
    pub max_connections: usize,
}

/// A resource limit a program may set (`rlimits` keys), as setrlimit(2) names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rlimit {
    /// `nofile`: RLIMIT_NOFILE, open descriptors.
    Nofile,
    /// `nproc`: RLIMIT_NPROC, processes of the program's user.
    Nproc,
    /// `core`: RLIMIT_CORE, bytes of a core dump.
    Core,
    /// `memlock`: RLIMIT_MEMLOCK, bytes of locked memory.
    Memlock,
    /// `stack`: RLIMIT_STACK, bytes of the main thread's stack.
    Stack,
}

impl Rlimit {
    /// Every limit with its key, in documentation order.
    pub const ALL: [(Rlimit, &'static str); 5] = [
        (Rlimit::Nofile, "nofile"),
        (Rlimit::Nproc, "nproc"),
        (Rlimit::Core, "core"),
        (Rlimit::Memlock, "memlock"),
        (Rlimit::Stack, "stack"),
    ];

    /// The key, e.g. `"nofile"`.
    pub fn key(self) -> &'static str {
        Rlimit::ALL
            .iter()
            .find(|(r, _)| *r == self)
            .map_or("", |(_, k)| k)
    }

    /// Whether the value is a size in bytes (so `"8MB"` is accepted).
    pub fn is_bytes(self) -> bool {
        matches!(self, Rlimit::Core | Rlimit::Memlock | Rlimit::Stack)
    }
}

/// `autorestart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoRestart {
    /// `false`: never restart.
    Never,
    /// `"unexpected"` (default): restart when the exit status is not in `exitcodes`.
    #[default]
    Unexpected,
    /// `true`: always restart.
    Always,
}

/// Where a program's stdout/stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputMode {
    /// `"capture"` (default): piped through the supervisor, one prefixed line at a time, and kept
    /// in the ring buffer for `logs`.
    #[default]
    Capture,
    /// `"inherit"`: the program writes straight to the supervisor's stdout/stderr (no copy, no
    /// prefix, no `logs`, no `log` readiness).
    Inherit,
}

/// `[program.NAME.backoff]`: capped exponential restart backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// `initial`: delay before the first restart. Default 100 ms.
    pub initial: Duration,
    /// `max`: the cap. Default 30 s.
    pub max: Duration,
    /// `multiplier`: growth factor per consecutive failure, ≥ 1.0. Default 2.0.
    pub multiplier: f64,
    /// `jitter`: fraction in [0, 1] of the delay that is randomised (± jitter/2... see backoff).
    /// Default 0.2.
    pub jitter: f64,
    /// `reset_after`: a run at least this long (after being ready) resets the backoff to
    /// `initial` and the retry count to zero. Default 60 s.
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
            reset_after: Duration::from_secs(60),
        }
    }
}

/// `max_rss`: restart a program whose resident memory stays above `limit` for `for_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxRss {
    /// `limit`: bytes of resident memory of the program's main process.
    pub limit: u64,
    /// `for`: how long the samples must stay above the limit. Default 0 (the first sample).
    pub for_: Duration,
    /// `interval`: how often `/proc/PID/statm` is read. Default 10 s.
    pub interval: Duration,
}

/// `restart_limit`: more than `burst` automatic restarts within `within` make the program FATAL
/// (systemd's `StartLimitBurst` / `StartLimitIntervalSec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartLimit {
    /// `burst`: automatic restarts allowed inside the window, ≥ 1.
    pub burst: u32,
    /// `within`: the sliding window, > 0.
    pub within: Duration,
}

/// `[program.NAME.ready]`: when a STARTING program counts as READY.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadinessConfig {
    /// The kind of check.
    pub check: ReadinessCheck,
    /// `timeout`: a program not ready within this is a failed start. Default 60 s
    /// (for `startsecs` it is unused: the check cannot fail by time).
    pub timeout: Duration,
    /// `interval`: how often polling checks (`tcp`, `http`, `exec`) run. Default 250 ms.
    pub interval: Duration,
}

/// The readiness kinds. Absent table = [`ReadinessCheck::StartSecs`].
#[derive(Debug, Clone, PartialEq)]
pub enum ReadinessCheck {
    /// `kind = "startsecs"`: up for `startsecs` (the default, as supervisord).
    StartSecs,
    /// `kind = "notify"`: sd_notify `READY=1` on the program's own `NOTIFY_SOCKET`.
    Notify,
    /// `kind = "tcp"`, `address = "127.0.0.1:1883"` (or `port = 1883`, meaning 127.0.0.1).
    Tcp { address: String },
    /// `kind = "http"`, `url = "http://127.0.0.1:8080/health"`: GET answers 200–399.
    Http { url: String },
    /// `kind = "exec"`, `command = [...]`: the command exits 0.
    Exec { command: Vec<String> },
    /// `kind = "log"`, `pattern = "regex"`: a matching line appears on stdout or stderr.
    Log { pattern: String },
    /// `kind = "bridge"`: the program sends `{"op":"ready"}` over the bridge socket.
    Bridge,
}

/// `[program.NAME.liveness]`: a periodic probe while RUNNING/READY.
#[derive(Debug, Clone, PartialEq)]
pub struct LivenessConfig {
    /// The probe: only `Tcp`, `Http` and `Exec` are valid here.
    pub check: ReadinessCheck,
    /// `interval`: default 10 s.
    pub interval: Duration,
    /// `timeout`: per probe, default 1 s.
    pub timeout: Duration,
    /// `failure_threshold`: consecutive failures before a restart, default 3.
    pub failure_threshold: u32,
    /// `initial_delay`: wait after READY before the first probe, default 0.
    pub initial_delay: Duration,
}

/// A dependency condition in `depends_on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependencyCondition {
    /// `"started"`: the dependency's process has been spawned (RUNNING or READY).
    Started,
    /// `"ready"` (default for the array form): the dependency is READY.
    Ready,
    /// `"completed"`: the dependency exited with an expected code (one-shot set-up task).
    Completed,
}

/// What a dependent does when one of its dependencies restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDependencyRestart {
    /// `"wait"` (default): keep running; only programs not yet started wait again.
    #[default]
    Wait,
    /// `"restart"`: stop the dependent and start it again once its conditions hold.
    Restart,
}

/// One `[program.NAME]` table, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramConfig {
    /// The table name: `[a-zA-Z0-9_.-]+`, unique.
    pub name: String,
    /// `command`: argv, non-empty. A string is split like a shell would (quotes honoured) but no
    /// shell runs.
    pub command: Vec<String>,
    /// `directory`: working directory.
    pub directory: Option<PathBuf>,
    /// `environment`: added to the inherited environment, `${VAR}`/`${VAR:-default}` already
    /// expanded against the supervisor's environment, in file order.
    pub environment: Vec<(String, String)>,
    /// `user`: a user name or numeric uid to switch to (with its primary and supplementary groups,
    /// and HOME/USER/LOGNAME set).
    pub user: Option<String>,
    /// `umask`: octal, e.g. `"022"` or `0o022`.
    pub umask: Option<u32>,
    /// `priority`: lower starts first, stops last. Default 999.
    pub priority: i32,
    /// `autostart`: default true.
    pub autostart: bool,
    /// `autorestart`: default `"unexpected"`.
    pub autorestart: AutoRestart,
    /// `exitcodes`: expected exit codes. Default `[0]`.
    pub exitcodes: Vec<i32>,
    /// `startsecs`: how long a program must stay up for the start to count. Default 1 s.
    pub startsecs: Duration,
    /// `startretries`: failed starts in a row before FATAL. Default 3.
    pub startretries: u32,
    /// `stopsignal`: default TERM.
    pub stopsignal: Signal,
    /// `stopwaitsecs`: SIGKILL after this. Default 10 s.
    pub stopwaitsecs: Duration,
    /// `stopasgroup`: send `stopsignal` to the process group. Default **true** here (a deliberate
    /// difference from supervisord: every program has its own process group anyway).
    pub stopasgroup: bool,
    /// `killasgroup`: send SIGKILL to the process group. Default true (follows `stopasgroup`).
    pub killasgroup: bool,
    /// `redirect_stderr`: stderr lines are written as stdout lines. Default false.
    pub redirect_stderr: bool,
    /// `output`: `"capture"` (default) or `"inherit"`.
    pub output: OutputMode,
    /// `critical`: when this program goes FATAL, shut everything down and exit with its code.
    /// Default true.
    pub critical: bool,
    /// `[program.NAME.backoff]`.
    pub backoff: BackoffConfig,
    /// `[program.NAME.ready]`.
    pub readiness: ReadinessConfig,
    /// `[program.NAME.liveness]`.
    pub liveness: Option<LivenessConfig>,
    /// `watchdog`: with `notify` readiness, `WATCHDOG=1` pings are expected within this
    /// (exported as `WATCHDOG_USEC`); a missed deadline restarts the program.
    pub watchdog: Option<Duration>,
    /// `depends_on`: program name → condition, in file order; names exist, no cycles, no self.
    pub depends_on: Vec<(String, DependencyCondition)>,
    /// `on_dependency_restart`: default `"wait"`.
    pub on_dependency_restart: OnDependencyRestart,
    /// `bridge_publish`: extra MQTT topic filters this program may publish to outside the
    /// instance tree (bridge ACL). Default empty.
    pub bridge_publish: Vec<String>,
    /// `env_file`: `.env` files (absolute paths, platform rules, see [`crate::envfile`]) read at
    /// each spawn, `[supervisor] env_file` first; later files win, the supervisor's own
    /// environment and `environment` win over all of them. Default none.
    pub env_files: Vec<PathBuf>,
    /// `environment` entries written `NAME = { file = "/run/secrets/x" }`: the variable's value
    /// is the file's content (one trailing newline dropped), read at each spawn and passed to
    /// the child only. Default none.
    pub secret_env: Vec<(String, PathBuf)>,
    /// `rlimits`: limits set in the child before exec, soft = hard; `None` = unlimited.
    /// Default none (inherited from the supervisor).
    pub rlimits: Vec<(Rlimit, Option<u64>)>,
    /// `restart_limit`: default none (only `startretries` gives up).
    pub restart_limit: Option<RestartLimit>,
    /// `max_rss`: default none (no sampling at all).
    pub max_rss: Option<MaxRss>,
    /// `log_file`: a size-rotated copy of the program's output. Default none.
    pub log_file: Option<LogFileConfig>,
    /// `schedule` / `every` with `run_on_start` and `overlap`: a scheduled program. Default none.
    pub schedule: Option<crate::schedule::ScheduleConfig>,
    /// The `[program.NAME]` table this program is an instance of, when the table has
    /// `numprocs` (then `name` comes from `process_name`). `None` for a plain program.
    pub group: Option<String>,
    /// The instance number (`{num}`), from `numprocs_start` up.
    pub num: Option<u32>,
}

/// `log_file = { path, max_bytes, backups }`: the program's output lines (both streams, without
/// the `name | ` prefix) also written to `path`, rotated by size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFileConfig {
    /// `path`: absolute.
    pub path: PathBuf,
    /// `max_bytes`: rotate before the file would grow past this; 0 never rotates. Default 50 MiB
    /// (supervisord's `stdout_logfile_maxbytes`).
    pub max_bytes: u64,
    /// `backups`: rotated files kept (`path.1` … `path.N`); 0 truncates instead. Default 10.
    pub backups: u32,
}

impl LogFileConfig {
    /// `path` with the default size and backups.
    pub fn new(path: PathBuf) -> LogFileConfig {
        LogFileConfig {
            path,
            max_bytes: 50 << 20,
            backups: 10,
        }
    }
}

impl ProgramConfig {
    /// A program with every default (supervisord's where it has the option). This is what a
    /// `[program.NAME]` table with only `command` means.
    pub fn new(name: impl Into<String>, command: Vec<String>) -> ProgramConfig {
        ProgramConfig {
            name: name.into(),
            command,
            directory: None,
            environment: Vec::new(),
            user: None,
            umask: None,
            priority: 999,
            autostart: true,
            autorestart: AutoRestart::Unexpected,
            exitcodes: vec![0],
            startsecs: Duration::from_secs(1),
            startretries: 3,
            stopsignal: Signal::Term,
            stopwaitsecs: Duration::from_secs(10),
            stopasgroup: true,
            killasgroup: true,
            redirect_stderr: false,
            output: OutputMode::Capture,
            critical: true,
            backoff: BackoffConfig::default(),
            readiness: ReadinessConfig {
                check: ReadinessCheck::StartSecs,
                timeout: Duration::from_secs(60),
                interval: Duration::from_millis(250),
            },
            liveness: None,
            watchdog: None,
            depends_on: Vec::new(),
            on_dependency_restart: OnDependencyRestart::Wait,
            bridge_publish: Vec::new(),
            log_file: None,
            schedule: None,
            env_files: Vec::new(),
            secret_env: Vec::new(),
            rlimits: Vec::new(),
            restart_limit: None,
            max_rss: None,
            group: None,
            num: None,
        }
    }

    /// Whether the program gets an sd_notify socket (`NOTIFY_SOCKET`): for readiness `notify`
    /// and for a `watchdog`, the two things it reports through one.
    pub fn wants_notify_socket(&self) -> bool {
        self.readiness.check == ReadinessCheck::Notify || self.watchdog.is_some()
    }
}

impl Default for SupervisorSettings {
    /// The defaults documented on each field.
    fn default() -> Self {
        SupervisorSettings {
            control_socket: PathBuf::from("/run/iot2mqtt-sv/control.sock"),
            control_socket_mode: 0o600,
            log_format: LogFormat::Text,
            shutdown_timeout: Duration::from_secs(8),
            orphan_grace: Duration::from_millis(500),
            log_buffer_lines: 1000,
            max_line_bytes: 16 * 1024,
            http: None,
            max_control_connections: DEFAULT_MAX_CONTROL_CONNECTIONS,
            env_files: Vec::new(),
            minfds: None,
            minprocs: None,
        }
    }
}

/// The `[bridge]` table: every field is optional and overrides the environment/.env value of
/// the same meaning (resolved by `sv-bridge`, not here).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BridgeSection {
    /// `host` (MQTT_HOST; empty = localhost).
    pub host: Option<String>,
    /// `port` (MQTT_PORT).
    pub port: Option<u16>,
    /// `username` (MQTT_USERNAME).
    pub username: Option<String>,
    /// `password` (MQTT_PASSWORD). Never logged.
    pub password: Option<String>,
    /// `password_file`: a file whose trimmed content is the password.
    pub password_file: Option<PathBuf>,
    /// `base_topic` (MQTT_BASE_TOPIC).
    pub base_topic: Option<String>,
    /// `client_prefix` (MQTT_CLIENT_PREFIX).
    pub client_prefix: Option<String>,
    /// `client_id`: overrides `{client_prefix}_{instance}`.
    pub client_id: Option<String>,
    /// `qos` (MQTT_QOS): 0, 1 or 2.
    pub qos: Option<u8>,
    /// `retain` (MQTT_RETAIN).
    pub retain: Option<bool>,
    /// `keepalive` (MQTT_KEEPALIVE).
    pub keepalive: Option<std::time::Duration>,
    /// `instance` (INSTANCE_NAME).
    pub instance: Option<String>,
    /// `iot2mqtt_path` (IOT2MQTT_PATH, default `/app`).
    pub iot2mqtt_path: Option<PathBuf>,
    /// `instance_file`: overrides `$IOT2MQTT_PATH/instances/$INSTANCE_NAME.json`.
    pub instance_file: Option<PathBuf>,
    /// `tz` (TZ).
    pub tz: Option<String>,
    /// `socket`: the bridge's Unix socket path. Default `/run/iot2mqtt-sv/bridge.sock`.
    pub socket: Option<PathBuf>,
    /// `socket_group`: group owning the socket (mode 0660); default none (mode 0600... see docs).
    pub socket_group: Option<String>,
    /// `socket_mode`: permission bits of the bridge socket.
    pub socket_mode: Option<u32>,
    /// `max_line_bytes`: longest accepted protocol line. Default 64 KiB.
    pub max_line_bytes: Option<usize>,
    /// `outbox_max_messages`: QoS ≥ 1 messages held while disconnected. Default 10 000.
    pub outbox_max_messages: Option<usize>,
    /// `outbox_max_bytes`: default 16 MiB.
    pub outbox_max_bytes: Option<usize>,
    /// `max_devices`: device ids the bridge keeps state or a claim for. Default 10 000.
    pub max_devices: Option<usize>,
    /// `max_subscriptions`: raw subscriptions per connection. Default 256.
    pub max_subscriptions: Option<usize>,
    /// `max_connections`: simultaneous connections on the bridge socket. Default 256.
    pub max_connections: Option<usize>,
    /// `max_command_age`: older commands are rejected. Default 30 s.
    pub max_command_age: Option<Duration>,
    /// `property_topics`: also publish `state/{prop}` per top-level state key. Default true.
    pub property_topics: Option<bool>,
    /// `tls`: enable TLS (also implied by port 8883 or `ca_file`).
    pub tls: Option<bool>,
    /// `ca_file`: PEM CA bundle for TLS.
    pub ca_file: Option<PathBuf>,
    /// `client_cert` / `client_key`: PEM files for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// See `client_cert`.
    pub client_key: Option<PathBuf>,
}
