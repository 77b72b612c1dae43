//! The IoT2MQTT MQTT bridge.
//!
//! One broker connection for every program of a connector container: programs speak a
//! newline-delimited JSON protocol over a Unix socket (`docs/protocol.md`) and the bridge speaks
//! the IoT2MQTT MQTT contract (`docs/mqtt-contract.md`). It runs as a supervised program of the
//! same binary (`iot2mqtt-sv bridge`), so nothing a broker or a program sends can reach PID 1.
//!
//! Module map: [`settings`] (environment → validated [`Settings`]), [`codec`] (the pure line
//! protocol), [`outbox`] (the pure message queue that survives reconnects), [`topics`] and
//! [`time`] (the wire contract's names and timestamps), [`discovery`] (Home Assistant discovery
//! configs from the instance file), [`program`] (the defaults PID 1 runs the bridge with); the
//! bridge's state machine (the MQTT contract without IO), the engine that drives it, the socket
//! server and the control client are private and reached through [`run`], [`main_bridge`] and
//! [`main_publish`].
#![deny(unsafe_code)] // one audited exception: `quickack`

pub mod codec;
pub mod discovery;
#[doc(hidden)]
pub mod fuzz;
pub mod outbox;
pub mod program;
pub mod settings;
pub mod time;
pub mod topics;

mod cli;
mod control;
mod engine;
mod machine;
mod merge;
mod quickack;
mod server;

use std::future::Future;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use cli::{log_level, main_bridge, main_listen, main_publish};
pub use program::add_bridge_program;
pub use settings::{Secret, Settings, SettingsError, default_socket_path, socket_path};

/// The longest the bridge takes from its stop signal to its exit (final `offline` included).
pub const STOP_BUDGET: std::time::Duration = machine::STOP_BUDGET;

/// What the bridge needs to know about the supervisor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorView {
    /// Every supervised program (the bridge itself included, as `bridge`).
    pub programs: Vec<ProgramView>,
}

/// One program as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramView {
    /// Program name.
    pub name: String,
    /// Process id while running (also its session id: programs are session leaders).
    #[serde(default)]
    pub pid: Option<i32>,
    /// State name, e.g. `RUNNING`.
    #[serde(default)]
    pub state: String,
    /// Whether its readiness check passed.
    #[serde(default)]
    pub ready: bool,
    /// Whether it is critical (its health gates `online`).
    #[serde(default)]
    pub critical: bool,
    /// Whether it counts as healthy now.
    #[serde(default)]
    pub healthy: bool,
}

/// A program said `ready` over the bridge socket (readiness kind `bridge`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyReport {
    /// The program's name.
    pub program: String,
    /// The program's pid as the supervisor knows it.
    pub pid: i32,
}

/// Why the bridge could not run.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The Unix socket could not be created or given its permissions.
    #[error("bridge socket {path}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `socket_group` names no group.
    #[error("socket_group {0:?}: no such group")]
    UnknownGroup(String),
}

/// Runs the bridge until `shutdown` resolves; then publishes `offline` ahead of any backlog,
/// waits (bounded) for its PUBACK and disconnects, or closes the connection without DISCONNECT
/// when the PUBACK did not come, so that the broker publishes the Last Will ([`STOP_BUDGET`]). `supervisor` feeds the program table (it gates `online` and maps
/// peers to program names); `ready` receives `ready` ops of identified programs.
pub async fn run(
    settings: Settings,
    supervisor: tokio::sync::watch::Receiver<SupervisorView>,
    ready: tokio::sync::mpsc::Sender<ReadyReport>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BridgeError> {
    engine::run(settings, supervisor, ready, shutdown, || {}).await
}
