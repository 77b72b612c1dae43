//! Applying a reload (`SIGHUP`, the control `reload` op) to the running supervisor: the new
//! config is read and made effective by `crate::reload`, compared with the running one
//! ([`sv_core::plan`]) and handed to the machine, which stops and starts what changed; this
//! file also brings the runtime's own per-program state (resolved users, log files, sd_notify
//! sockets) along.

use std::time::Instant;

use sv_core::machine::{Goal, ProgramId};
use tracing::{error, info, warn};

use super::readiness::resolve_uid;
use super::{Supervisor, schedule_time_zone};
use crate::control::{code, error_reply};
use crate::spawn;

impl Supervisor {
    /// Reads the config again and, unless `dry_run`, applies it as a diff. Returns the plan and
    /// what a `reload` request waits for, or the error reply (every problem of an invalid
    /// config, which changes nothing).
    pub(super) fn reload(
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
}
