//! The `iot2mqtt-sv` binary (PID 1 and the CLI): argument parsing, config loading and exit codes
//! only; every behaviour lives in the library crates (`sv-runtime`, `sv-bridge`, `sv-import`).
//! The bridge runs from its own binary, `iot2mqtt-sv-bridge` (`src/bridge.rs`), shipped beside
//! this one.
//!
//! Exit codes: 0 success (or healthy); 1 failure, unhealthy, or supervisor unreachable;
//! 2 usage or config errors (unknown program, invalid config, bad arguments). `run` exits with
//! 0 after a requested shutdown, or with a critical program's exit code when its failure caused
//! the shutdown.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sv_core::config::{self, Config, LogFormat};
use sv_runtime::control::Request;
use sv_runtime::{client, startup};

/// How long `run` waits at exit for blocking tasks still running (issue 12, point 7).
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, Parser)]
#[command(
    name = "iot2mqtt-sv",
    version,
    about = "A PID-1 process supervisor and MQTT bridge for IoT2MQTT connector containers"
)]
struct Cli {
    /// Control socket of the running supervisor (client verbs; `run` also honours it).
    #[arg(
        short = 's',
        long = "socket",
        env = "IOT2MQTT_SV_SOCKET",
        global = true
    )]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the supervisor (the container ENTRYPOINT).
    Run(ConfigArg),
    /// Validate a config and print every problem (exit 0 valid, 2 invalid).
    Check(ConfigArg),
    /// Show every program's state.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Start programs (names, or `all`) and wait until they are ready.
    Start(Names),
    /// Stop programs (names, or `all`) and wait until they have exited.
    Stop(Names),
    /// Restart programs (names, or `all`).
    Restart(Names),
    /// Read the config file again and apply what changed; prints the plan and waits for it
    /// (exit 2 with every error when the new config is invalid: nothing changes then).
    Reload {
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Send a signal (e.g. HUP) to programs' process groups.
    Signal {
        /// Signal name, with or without `SIG`.
        signal: String,
        #[command(flatten)]
        names: Names,
    },
    /// Print the supervisor's pid, or a program's.
    Pid {
        /// Program name.
        name: Option<String>,
    },
    /// Print a program's recent output.
    Logs {
        /// Program name.
        name: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// How many recent lines.
        #[arg(short = 'n', long = "lines", default_value_t = 50)]
        lines: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when healthy, 1 when not (the Docker HEALTHCHECK command).
    Health {
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the MQTT bridge: replaces itself with `iot2mqtt-sv-bridge` from the same directory
    /// (what the supervisor starts when the config has a [bridge] table).
    Bridge(ConfigArg),
    /// Send one message to the bridge from a shell: `publish state DEVICE '{"on":true}'`.
    Publish {
        /// KIND and its arguments (see docs/protocol.md).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Answer commands from a shell script: claim DEVICEs, bridge lines to stdout, stdin to the bridge.
    Listen {
        /// Devices to claim (none: all devices).
        devices: Vec<String>,
    },
    /// Translate a supervisord config into iot2mqtt-sv TOML.
    ImportSupervisord {
        /// The supervisord config file.
        file: PathBuf,
        /// Write the TOML here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// Config file [default: $IOT2MQTT_SV_CONFIG, else /etc/iot2mqtt-sv.toml].
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct Names {
    /// Program names, or `all`.
    #[arg(required = true)]
    names: Vec<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn config_path(arg: &ConfigArg) -> PathBuf {
    config::path(arg.config.as_deref(), &env)
}

/// The bridge's executable beside this one, or why it cannot run (a config with `[bridge]`
/// needs both binaries: an image that copied only `iot2mqtt-sv` would otherwise start a
/// supervisor whose bridge fails to exec, over and over, until FATAL).
fn bridge_executable() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let bridge = startup::bridge_executable(&exe);
    if bridge.is_file() {
        Ok(bridge)
    } else {
        Err(format!(
            "the [bridge] table needs {} beside {}, and it is not there: copy both binaries \
             (COPY --from=iot2mqtt-sv /usr/local/bin/ /usr/local/bin/)",
            bridge.display(),
            exe.display()
        ))
    }
}

/// `iot2mqtt-sv bridge`: becomes `iot2mqtt-sv-bridge`, so scripts that start the bridge
/// through the main binary keep working. Returns only when the exec failed.
fn exec_bridge(arg: &ConfigArg) -> u8 {
    use std::os::unix::process::CommandExt;
    let bridge = match bridge_executable() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("iot2mqtt-sv: error: {e}");
            return 2;
        }
    };
    let e = std::process::Command::new(&bridge)
        .arg("-c")
        .arg(config_path(arg))
        .exec();
    eprintln!("iot2mqtt-sv: error: starting {}: {e}", bridge.display());
    1
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// Reads and validates a config; on failure prints every problem and returns exit code 2.
fn load(path: &Path) -> Result<Config, u8> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        eprintln!("iot2mqtt-sv: error: reading config {}: {e}", path.display());
        2
    })?;
    config::parse(&text, path, &env).map_err(|errors| {
        for d in &errors.0 {
            eprintln!("iot2mqtt-sv: error: {d}");
        }
        2
    })
}

/// The control socket for client verbs: `-s`/`$IOT2MQTT_SV_SOCKET`, else the one named in the
/// config (if it can be read), else the default or the first of its fallbacks that exists.
fn client_socket(cli_socket: Option<PathBuf>) -> PathBuf {
    if let Some(s) = cli_socket {
        return s;
    }
    let path = config_path(&ConfigArg { config: None });
    let configured = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| config::parse(&t, &path, &env).ok())
        .map(|c| c.supervisor.control_socket)
        .unwrap_or_else(|| PathBuf::from(startup::DEFAULT_CONTROL_SOCKET));
    startup::client_socket(&configured)
}

// Asks whether stderr is a terminal (for colours); the writes go through the log writer.
#[allow(clippy::disallowed_methods)]
fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    // A plain level rather than an `EnvFilter`: parsing filter directives compiles regexes,
    // which PID 1 would carry in its resident memory for nothing.
    let builder = tracing_subscriber::fmt()
        .with_max_level(sv_bridge::log_level(env("LOG_LEVEL").as_deref()))
        // Through the log writer's bounded queue, never a blocking write from the loop: with
        // stdout stalled, lines are dropped and counted instead (issue 12).
        .with_writer(|| sv_runtime::logs::OwnLogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn run(cli_socket: Option<PathBuf>, arg: &ConfigArg) -> u8 {
    // Before anything slow: a shutdown signal arriving while the config is read must wait for
    // the handlers rather than be lost (the supervisor releases them once installed).
    if let Err(e) = sv_runtime::signals::hold_signals() {
        eprintln!("iot2mqtt-sv: error: blocking signals: {e}");
        return 1;
    }
    let path = config_path(arg);
    let mut cfg = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_tracing(cfg.supervisor.log_format);
    let refused = startup::unswitchable_users(&cfg);
    if !refused.is_empty() {
        for r in &refused {
            eprintln!("iot2mqtt-sv: error: {}: {r}", path.display());
        }
        return 2;
    }
    let control_socket =
        cli_socket.unwrap_or_else(|| startup::server_socket(&cfg.supervisor.control_socket));
    let mut extra_env = Vec::new();
    let abs = std::path::absolute(&path).unwrap_or(path.clone());
    // Without a `[bridge]` table at start there is no bridge to run: a reload cannot add one
    // (sv-runtime's reload.rs keeps the running bridge setup), so no command is needed.
    let mut bridge_command = Vec::new();
    if cfg.bridge.is_some() {
        match bridge_executable() {
            Ok(bridge) => {
                bridge_command = vec![
                    bridge.display().to_string(),
                    "-c".into(),
                    abs.display().to_string(),
                ];
            }
            Err(e) => {
                eprintln!("iot2mqtt-sv: error: {}: {e}", path.display());
                return 2;
            }
        }
    }
    if let Some(section) = cfg.bridge.clone() {
        let socket = section
            .socket
            .clone()
            .unwrap_or_else(|| control_socket.with_file_name("bridge.sock"));
        extra_env.push((
            "IOT2MQTT_SV_BRIDGE_SOCKET".to_string(),
            socket.display().to_string(),
        ));
        sv_bridge::add_bridge_program(&mut cfg, bridge_command.clone());
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iot2mqtt-sv: error: starting the runtime: {e}");
            return 1;
        }
    };
    let code = rt.block_on(sv_runtime::supervisor::run(
        sv_runtime::supervisor::Options {
            config: cfg,
            control_socket,
            extra_env,
            reload: Some(sv_runtime::reload::Source {
                path: abs,
                bridge_command,
                add_bridge: sv_bridge::add_bridge_program,
            }),
        },
    ));
    // Dropping the runtime would wait for every blocking task, and a name resolution of a
    // tcp/http probe (getaddrinfo on tokio's blocking pool) can hang for minutes on a resolver
    // that does not answer: bound the wait, the process exit ends such threads.
    rt.shutdown_timeout(RUNTIME_SHUTDOWN);
    code.clamp(0, 255) as u8
}

// A CLI verb, run in the user's shell, not in PID 1: it prints directly.
#[allow(clippy::disallowed_methods)]
fn check(arg: &ConfigArg) -> u8 {
    let path = config_path(arg);
    match load(&path) {
        Ok(cfg) => {
            let bridge = if cfg.bridge.is_some() {
                // The config is valid; the installation beside this binary is another matter,
                // and `check` often runs elsewhere than where the config will.
                if let Err(e) = bridge_executable() {
                    eprintln!("iot2mqtt-sv: warning: {e}");
                }
                " and the MQTT bridge"
            } else {
                ""
            };
            let _ = writeln!(
                std::io::stdout(),
                "{}: ok: {} programs{bridge}",
                path.display(),
                cfg.programs.len()
            );
            0
        }
        Err(code) => code,
    }
}

// A CLI verb, run in the user's shell, not in PID 1: it prints directly.
#[allow(clippy::disallowed_methods)]
fn import(file: &Path, output: Option<&Path>) -> u8 {
    match sv_import::import_file(file, &env) {
        Ok(imp) => {
            for w in &imp.warnings {
                eprintln!("{w}");
            }
            let written = match output {
                Some(out) => std::fs::write(out, &imp.toml)
                    .map_err(|e| format!("writing {}: {e}", out.display())),
                None => std::io::stdout()
                    .write_all(imp.toml.as_bytes())
                    .map_err(|e| e.to_string()),
            };
            match written {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("iot2mqtt-sv: error: {e}");
                    1
                }
            }
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("iot2mqtt-sv: error: {msg}");
            2
        }
    }
}

fn client_result(r: Result<i32, client::ClientError>) -> u8 {
    match r {
        Ok(code) => code as u8,
        Err(e) => {
            eprintln!("iot2mqtt-sv: error: {e}");
            1
        }
    }
}

// The CLI verbs print their answers here; `run` hands its output to the log writer instead.
#[allow(clippy::disallowed_methods)]
fn main() -> ExitCode {
    // As PID 1, a signal without a handler is discarded by the kernel: hold them from the first
    // instruction, before argument parsing, so a `docker stop` right after start is kept pending
    // until the supervisor's handlers exist (`run` holds them too when not PID 1).
    if std::process::id() == 1 {
        let _ = sv_runtime::signals::hold_signals();
    }
    let cli = Cli::parse();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let code = match cli.command {
        Command::Run(arg) => run(cli.socket, &arg),
        Command::Check(arg) => check(&arg),
        Command::Bridge(arg) => exec_bridge(&arg),
        Command::Publish { args } => sv_bridge::main_publish(&args).clamp(0, 255) as u8,
        Command::Listen { devices } => sv_bridge::main_listen(&devices).clamp(0, 255) as u8,
        Command::ImportSupervisord { file, output } => import(&file, output.as_deref()),
        Command::Health { json } => {
            client::health(&client_socket(cli.socket), json, &mut out) as u8
        }
        Command::Status { json } => client_result(client::status(
            &client_socket(cli.socket),
            json,
            &mut out,
            &mut err,
        )),
        Command::Start(n) => client_result(client::control(
            &client_socket(cli.socket),
            &Request::Start { programs: n.names },
            n.json,
            &mut out,
            &mut err,
        )),
        Command::Stop(n) => client_result(client::control(
            &client_socket(cli.socket),
            &Request::Stop { programs: n.names },
            n.json,
            &mut out,
            &mut err,
        )),
        Command::Restart(n) => client_result(client::control(
            &client_socket(cli.socket),
            &Request::Restart { programs: n.names },
            n.json,
            &mut out,
            &mut err,
        )),
        Command::Reload { dry_run, json } => client_result(client::reload(
            &client_socket(cli.socket),
            dry_run,
            json,
            &mut out,
            &mut err,
        )),
        Command::Signal { signal, names } => client_result(client::control(
            &client_socket(cli.socket),
            &Request::Signal {
                signal,
                programs: names.names,
            },
            names.json,
            &mut out,
            &mut err,
        )),
        Command::Pid { name } => client_result(client::pid(
            &client_socket(cli.socket),
            name,
            &mut out,
            &mut err,
        )),
        Command::Logs {
            name,
            follow,
            lines,
            json,
        } => client_result(client::logs(
            &client_socket(cli.socket),
            name,
            lines,
            follow,
            json,
            &mut out,
            &mut err,
        )),
    };
    ExitCode::from(code)
}
