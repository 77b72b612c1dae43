//! Reading the config again for a reload (`SIGHUP`, the control `reload` op).
//!
//! The file is read and validated exactly as at start, then made *effective* the same way (the
//! bridge program added for a `[bridge]` table), so [`sv_core::plan::plan`] compares like with
//! like. What a running supervisor cannot take over — a `[bridge]` table appearing or going
//! away, a new bridge socket path (every program's environment names it) — keeps its running
//! value and is listed in the plan's `not_applied`.

use std::path::PathBuf;

use sv_core::config::{self, Config};
use sv_core::plan::{self, Plan};

/// Adds the bridge program running a command line to a config with a `[bridge]` table.
/// The bridge's defaults are the bridge's own (`sv_bridge::add_bridge_program`); the binary
/// passes that function in, so the supervisor's runtime does not link the bridge.
pub type AddBridge = fn(&mut Config, Vec<String>);

/// Where the config comes from, and how the bridge program is run.
#[derive(Debug, Clone)]
pub struct Source {
    /// The config file `run -c` was given.
    pub path: PathBuf,
    /// The bridge program's command line, when the supervisor runs the bridge.
    pub bridge_command: Vec<String>,
    /// How the bridge program is added, as at start.
    pub add_bridge: AddBridge,
}

impl Source {
    /// Reads and validates the file. `Err` holds every problem, one positioned line each
    /// (`/etc/x.toml: line 4, column 1: ...`).
    pub fn load(&self) -> Result<Config, Vec<String>> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| vec![format!("reading config {}: {e}", self.path.display())])?;
        let env = |k: &str| std::env::var(k).ok();
        config::parse(&text, &self.path, &env)
            .map_err(|errors| errors.0.iter().map(ToString::to_string).collect())
    }

    /// The new config made effective against the running one, and the plan to get there.
    pub fn prepare(&self, running: &Config, mut new: Config) -> (Config, Plan) {
        let mut not_applied = Vec::new();
        match (&running.bridge, &mut new.bridge) {
            (Some(old), Some(b)) => {
                if old.socket != b.socket {
                    b.socket.clone_from(&old.socket);
                    not_applied.push("[bridge] socket".to_string());
                }
            }
            (None, None) => {}
            (old, _) => {
                not_applied.push(if old.is_some() {
                    "[bridge] removed".to_string()
                } else {
                    "[bridge] added".to_string()
                });
                new.bridge.clone_from(old);
            }
        }
        if new.bridge.is_some() {
            (self.add_bridge)(&mut new, self.bridge_command.clone());
        }
        let mut p = plan::plan(running, &new);
        p.not_applied.extend(not_applied);
        (new, p)
    }
}
