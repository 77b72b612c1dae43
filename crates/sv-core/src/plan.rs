//! Reload plans: what applying a new config to a running supervisor changes.
//!
//! [`plan`] compares the running [`Config`] with a newly read one and sorts every program into
//! added, removed, changed (with the keys that differ) and unchanged. The machine then applies
//! exactly that ([`crate::machine::Machine::apply`]): unchanged programs are not touched, not even
//! signalled. Both configs are the *effective* ones — environment values already expanded, the
//! bridge program already added — so a changed `${VAR}` default or an edited `[bridge]` table is
//! a change like any other.
//!
//! `[supervisor]` keys that only matter at start (the control socket, the log format, ...) are
//! listed in [`Plan::not_applied`] rather than silently ignored.

use crate::config::{BRIDGE_PROGRAM, Config, ProgramConfig, SupervisorSettings};

/// The difference between two configs.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Plan {
    /// Programs only in the new config: started (when `autostart`) in dependency order.
    pub added: Vec<String>,
    /// Programs only in the old config: stopped, dependents first, then forgotten.
    pub removed: Vec<String>,
    /// Programs whose definition differs: stopped and started again with the new one.
    pub changed: Vec<Change>,
    /// Programs left exactly as they are.
    pub unchanged: Vec<String>,
    /// Changes that take effect only when the supervisor itself restarts, as
    /// `"[supervisor] log_format"`.
    pub not_applied: Vec<String>,
}

/// One changed program and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Change {
    /// The program name.
    pub name: String,
    /// The config keys that differ, e.g. `["command", "environment"]`, or `"[bridge]"`.
    pub reasons: Vec<String>,
}

impl Plan {
    /// Whether applying the plan changes nothing at all.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// Whether `name` is to be restarted with a new definition.
    pub fn is_changed(&self, name: &str) -> bool {
        self.changed.iter().any(|c| c.name == name)
    }
}

/// Compares the running config with a new one.
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut p = Plan::default();
    for n in &new.programs {
        match old.programs.iter().find(|o| o.name == n.name) {
            None => p.added.push(n.name.clone()),
            Some(o) => {
                let mut reasons = program_differences(o, n);
                // The bridge program reads `[bridge]` itself: a change there is a change of the
                // program even though its command line is the same.
                if n.name == BRIDGE_PROGRAM && old.bridge.is_some() && old.bridge != new.bridge {
                    reasons.push("[bridge]".to_string());
                }
                if reasons.is_empty() {
                    p.unchanged.push(n.name.clone());
                } else {
                    p.changed.push(Change {
                        name: n.name.clone(),
                        reasons,
                    });
                }
            }
        }
    }
    for o in &old.programs {
        if !new.programs.iter().any(|n| n.name == o.name) {
            p.removed.push(o.name.clone());
        }
    }
    p.not_applied = supervisor_differences(&old.supervisor, &new.supervisor)
        .into_iter()
        .map(|k| format!("[supervisor] {k}"))
        .collect();
    p
}

/// The `[supervisor]` keys a running supervisor can take over: the ones the machine reads.
pub const LIVE_SUPERVISOR_KEYS: &[&str] = &["shutdown_timeout", "orphan_grace"];

/// The `[supervisor]` keys that differ and cannot change while running.
fn supervisor_differences(old: &SupervisorSettings, new: &SupervisorSettings) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut differ = |same: bool, key: &'static str| {
        if !same {
            keys.push(key);
        }
    };
    differ(old.control_socket == new.control_socket, "control_socket");
    differ(
        old.control_socket_mode == new.control_socket_mode,
        "control_socket_mode",
    );
    differ(old.log_format == new.log_format, "log_format");
    differ(
        old.log_buffer_lines == new.log_buffer_lines,
        "log_buffer_lines",
    );
    differ(old.max_line_bytes == new.max_line_bytes, "max_line_bytes");
    differ(old.http == new.http, "http");
    if keys.is_empty() {
        // Keys not listed above (and not live) still deserve a mention. `env_file` is read
        // into every program's own list, so a change there is a change of each program.
        let live = SupervisorSettings {
            shutdown_timeout: new.shutdown_timeout,
            orphan_grace: new.orphan_grace,
            env_files: new.env_files.clone(),
            ..old.clone()
        };
        if live != *new {
            keys.push("(other keys)");
        }
    }
    keys
}

/// The keys in which two definitions of one program differ, in config-reference order.
fn program_differences(a: &ProgramConfig, b: &ProgramConfig) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut differ = |same: bool, key: &str| {
        if !same {
            keys.push(key.to_string());
        }
    };
    differ(a.command == b.command, "command");
    differ(a.directory == b.directory, "directory");
    // Secrets are `environment` entries in the file.
    differ(
        a.environment == b.environment && a.secret_env == b.secret_env,
        "environment",
    );
    // The list of files only: their content is read at each spawn, not at a reload.
    differ(a.env_files == b.env_files, "env_file");
    differ(a.user == b.user, "user");
    differ(a.umask == b.umask, "umask");
    differ(a.priority == b.priority, "priority");
    differ(a.autostart == b.autostart, "autostart");
    differ(a.autorestart == b.autorestart, "autorestart");
    differ(a.exitcodes == b.exitcodes, "exitcodes");
    differ(a.startsecs == b.startsecs, "startsecs");
    differ(a.startretries == b.startretries, "startretries");
    differ(a.stopsignal == b.stopsignal, "stopsignal");
    differ(a.stopwaitsecs == b.stopwaitsecs, "stopwaitsecs");
    differ(a.stopasgroup == b.stopasgroup, "stopasgroup");
    differ(a.killasgroup == b.killasgroup, "killasgroup");
    differ(a.redirect_stderr == b.redirect_stderr, "redirect_stderr");
    differ(a.output == b.output, "output");
    differ(a.critical == b.critical, "critical");
    differ(a.backoff == b.backoff, "backoff");
    differ(a.readiness == b.readiness, "ready");
    differ(a.liveness == b.liveness, "liveness");
    differ(a.watchdog == b.watchdog, "watchdog");
    differ(a.depends_on == b.depends_on, "depends_on");
    differ(
        a.on_dependency_restart == b.on_dependency_restart,
        "on_dependency_restart",
    );
    differ(a.bridge_publish == b.bridge_publish, "bridge_publish");
    differ(a.group == b.group && a.num == b.num, "numprocs");
    differ(a.rlimits == b.rlimits, "rlimits");
    differ(a.restart_limit == b.restart_limit, "restart_limit");
    differ(a.max_rss == b.max_rss, "max_rss");
    differ(a.log_file == b.log_file, "log_file");
    differ(a.schedule == b.schedule, "schedule");
    if keys.is_empty() && a != b {
        // A key this list does not name yet: still a change, never a silent skip.
        keys.push("definition".to_string());
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BridgeSection;
    use std::time::Duration;

    fn config(programs: Vec<ProgramConfig>) -> Config {
        Config {
            supervisor: SupervisorSettings::default(),
            programs,
            bridge: None,
        }
    }

    fn prog(name: &str) -> ProgramConfig {
        ProgramConfig::new(name, vec![format!("/bin/{name}")])
    }

    #[test]
    fn sorts_programs_into_added_removed_changed_unchanged() {
        let old = config(vec![prog("a"), prog("b"), prog("c")]);
        let mut b = prog("b");
        b.environment.push(("X".into(), "1".into()));
        b.command.push("--flag".into());
        let new = config(vec![prog("a"), b, prog("d")]);
        let p = plan(&old, &new);
        assert_eq!(p.added, ["d"]);
        assert_eq!(p.removed, ["c"]);
        assert_eq!(
            p.changed,
            [Change {
                name: "b".into(),
                reasons: vec!["command".into(), "environment".into()]
            }]
        );
        assert_eq!(p.unchanged, ["a"]);
        assert!(p.not_applied.is_empty());
        assert!(!p.is_empty());
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let c = config(vec![prog("a"), prog("b")]);
        let p = plan(&c, &c.clone());
        assert!(p.is_empty());
        assert_eq!(p.unchanged, ["a", "b"]);
    }

    #[test]
    fn readiness_and_user_changes_are_named() {
        let old = config(vec![prog("a")]);
        let mut a = prog("a");
        a.user = Some("app".into());
        a.readiness.timeout = Duration::from_secs(5);
        let p = plan(&old, &config(vec![a]));
        assert_eq!(p.changed[0].reasons, ["user", "ready"]);
    }

    #[test]
    fn a_bridge_table_change_restarts_the_bridge_program() {
        let mut old = config(vec![prog("bridge"), prog("a")]);
        old.bridge = Some(BridgeSection::default());
        let mut new = old.clone();
        new.bridge = Some(BridgeSection {
            qos: Some(2),
            ..BridgeSection::default()
        });
        let p = plan(&old, &new);
        assert_eq!(
            p.changed,
            [Change {
                name: "bridge".into(),
                reasons: vec!["[bridge]".into()]
            }]
        );
        assert_eq!(p.unchanged, ["a"]);
    }

    #[test]
    fn supervisor_keys_that_cannot_change_live_are_listed() {
        let old = config(vec![prog("a")]);
        let mut new = old.clone();
        new.supervisor.log_format = crate::config::LogFormat::Json;
        new.supervisor.shutdown_timeout = Duration::from_secs(5);
        let p = plan(&old, &new);
        assert_eq!(p.not_applied, ["[supervisor] log_format"]);
        assert!(p.is_empty(), "no program is touched");
    }

    #[test]
    fn env_files_limits_log_files_and_schedules_are_named() {
        use crate::config::{LogFileConfig, MaxRss, RestartLimit, Rlimit};
        use crate::schedule::{Overlap, ScheduleConfig, Trigger};
        let old = config(vec![prog("a")]);
        let mut a = prog("a");
        a.secret_env.push(("PW".into(), "/run/secrets/pw".into()));
        a.env_files.push("/etc/app.env".into());
        a.rlimits.push((Rlimit::Nofile, Some(1024)));
        a.restart_limit = Some(RestartLimit {
            burst: 3,
            within: Duration::from_secs(60),
        });
        a.max_rss = Some(MaxRss {
            limit: 1 << 20,
            for_: Duration::ZERO,
            interval: Duration::from_secs(10),
        });
        a.log_file = Some(LogFileConfig::new("/var/log/a.log".into()));
        a.schedule = Some(ScheduleConfig {
            trigger: Trigger::Every(Duration::from_secs(60)),
            run_on_start: false,
            overlap: Overlap::Skip,
        });
        let p = plan(&old, &config(vec![a]));
        assert_eq!(
            p.changed[0].reasons,
            [
                "environment",
                "env_file",
                "rlimits",
                "restart_limit",
                "max_rss",
                "log_file",
                "schedule"
            ]
        );
    }

    #[test]
    fn a_supervisor_env_file_change_is_applied_through_the_programs() {
        let old = config(vec![prog("a")]);
        let mut new = old.clone();
        new.supervisor.env_files.push("/etc/all.env".into());
        new.programs[0].env_files.push("/etc/all.env".into());
        let p = plan(&old, &new);
        assert!(p.not_applied.is_empty(), "{:?}", p.not_applied);
        assert_eq!(p.changed[0].reasons, ["env_file"]);
    }
}
