//! The bridge as a supervised program: how PID 1 runs it when the config has a `[bridge]`
//! table. These defaults are the bridge's side of its contract with the supervisor — ready once
//! its socket listens (readiness `notify`), stopped within [`crate::STOP_BUDGET`] of its stop
//! signal, started before and stopped after every program that talks through it — so they live
//! here, next to the code that has to honour them, not in the supervisor's runtime.
//!
//! Pure: it edits a [`Config`]. The binary calls it for `run` and hands it to the reload source
//! (`sv_runtime::reload::Source`), and chooses the command line: which executable runs the
//! bridge is the binary's business.

use std::time::Duration;

use sv_core::config::{
    AutoRestart, BRIDGE_PROGRAM, Config, DependencyCondition, ProgramConfig, ReadinessCheck,
    ReadinessConfig,
};

/// Adds the bridge as a supervised program running `command`: started first, stopped last,
/// and every other program waits until its socket is listening (readiness `notify`).
pub fn add_bridge_program(config: &mut Config, command: Vec<String>) {
    let bridge = ProgramConfig {
        priority: i32::MIN,
        autorestart: AutoRestart::Always,
        startsecs: Duration::ZERO,
        // The bridge is ready as soon as its socket listens, before it talks to any broker, so
        // a failed start is a configuration error (missing INSTANCE_NAME, unreadable instance
        // file): give up after a couple of tries instead of backing off for a minute.
        startretries: 2,
        stopwaitsecs: Duration::from_secs(3),
        readiness: ReadinessConfig {
            check: ReadinessCheck::Notify,
            timeout: Duration::from_secs(30),
            interval: Duration::from_millis(250),
        },
        ..ProgramConfig::new(BRIDGE_PROGRAM, command)
    };
    for p in &mut config.programs {
        if !p.depends_on.iter().any(|(d, _)| d == BRIDGE_PROGRAM) {
            p.depends_on
                .push((BRIDGE_PROGRAM.into(), DependencyCondition::Ready));
        }
    }
    config.programs.push(bridge);
    config.programs.sort_by(|a, b| a.name.cmp(&b.name));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The supervisor SIGKILLs the bridge `stopwaitsecs` after SIGTERM; the bridge's own stop
    /// (final `offline`, then a clean or a deliberately unclean close) must end before that, or
    /// the kill would decide whether the broker publishes the Last Will.
    #[test]
    fn the_bridge_stops_within_its_stopwaitsecs() {
        let mut cfg =
            sv_core::config::parse("[bridge]\n", std::path::Path::new("t.toml"), &|_| None)
                .expect("config");
        add_bridge_program(&mut cfg, vec!["bridge".into()]);
        let bridge = cfg
            .programs
            .iter()
            .find(|p| p.name == BRIDGE_PROGRAM)
            .expect("the bridge program");
        assert!(crate::STOP_BUDGET < bridge.stopwaitsecs);
    }

    /// Every other program waits for the bridge to be ready, once, whatever it already names.
    #[test]
    fn every_other_program_depends_on_the_ready_bridge_once() {
        let text = "[bridge]\n[program.a]\ncommand = \"a\"\n[program.b]\ncommand = \"b\"\ndepends_on = { bridge = \"started\" }\n";
        let mut cfg = sv_core::config::parse(text, std::path::Path::new("t.toml"), &|_| None)
            .expect("config");
        add_bridge_program(&mut cfg, vec!["sv".into(), "bridge".into()]);
        let names: Vec<&str> = cfg.programs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "bridge"]);
        let deps = |n: &str| {
            cfg.programs
                .iter()
                .find(|p| p.name == n)
                .map(|p| p.depends_on.clone())
                .unwrap_or_default()
        };
        assert_eq!(
            deps("a"),
            [(BRIDGE_PROGRAM.to_string(), DependencyCondition::Ready)]
        );
        assert_eq!(
            deps("b"),
            [(BRIDGE_PROGRAM.to_string(), DependencyCondition::Started)]
        );
        assert!(deps("bridge").is_empty());
    }
}
