//! The log line for each machine [`Event`]: one `tracing` event per fact, with the program
//! as a structured field.

use sv_core::machine::Event;
use tracing::{error, info, warn};

use super::Supervisor;

impl Supervisor {
    pub(super) fn log_event(&self, ev: Event) {
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
