//! The `iot2mqtt-sv-bridge` binary: the MQTT bridge process, which the supervisor starts as the
//! program `bridge` when the config has a `[bridge]` table.
//!
//! A binary of its own rather than a verb of `iot2mqtt-sv`, so that PID 1 maps none of the MQTT,
//! TLS and time-zone code: each process keeps only its own code resident, on every compiler and
//! architecture (docs/architecture.md, "Two binaries"). Both ship together in one directory.
//!
//! Exit codes: 0 after a graceful stop, 1 on a runtime error, 2 on a configuration error or bad
//! arguments.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "iot2mqtt-sv-bridge",
    version,
    about = "The IoT2MQTT MQTT bridge (started by iot2mqtt-sv for a config with a [bridge] table)"
)]
struct Cli {
    /// Config file [default: $IOT2MQTT_SV_CONFIG, else /etc/iot2mqtt-sv.toml].
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = sv_core::config::path(cli.config.as_deref(), &|k| std::env::var(k).ok());
    ExitCode::from(sv_bridge::main_bridge(&path).clamp(0, 255) as u8)
}
