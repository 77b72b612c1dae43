//! State machine tests with a fake clock and a simulated process table.
//!
//! `World` plays the runtime: it carries out the machine's actions (spawning gives a fresh pid,
//! signals make processes exit according to their scripted behaviour) and advances a fake clock
//! straight to the next timeout, so seconds of backoff and stop deadlines pass in microseconds.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sv_core::config::*;
use sv_core::machine::*;
use sv_core::schedule::Overlap;
use sv_core::signal::Signal;

fn prog(name: &str) -> ProgramConfig {
    ProgramConfig::new(name, vec!["/bin/true".into()])
}

fn config(programs: Vec<ProgramConfig>) -> Config {
    let mut programs = programs;
    programs.sort_by(|a, b| a.name.cmp(&b.name));
    Config {
        supervisor: SupervisorSettings::default(),
        programs,
        bridge: None,
    }
}

/// How a simulated process reacts to its stop signal.
#[derive(Clone, Copy, Debug, PartialEq)]
enum OnTerm {
    /// Exits after this long.
    ExitAfter(Duration),
    /// Ignores it (only SIGKILL ends it).
    Ignore,
}

struct World {
    m: Machine,
    now: Instant,
    start: Instant,
    next_pid: i32,
    /// pid → (program, pending exit time and status)
    procs: HashMap<i32, (ProgramId, Option<(Instant, ExitStatus)>)>,
    on_term: HashMap<String, OnTerm>,
    /// Exit scripted right after spawn: program → (after, status), applied to every spawn.
    crash: HashMap<String, (Duration, ExitStatus)>,
    spawn_fail: HashSet<String>,
    spawns: Vec<(Instant, String)>,
    signals: Vec<(Instant, String, Signal)>,
    exits: Vec<(Instant, String)>,
    exit_code: Option<i32>,
    exit_at: Option<Instant>,
    probe_results: HashMap<String, Result<(), String>>,
    /// Resident memory each program reports to `max_rss` samples (default 0).
    rss: HashMap<String, u64>,
    /// When each `max_rss` sample was asked for.
    rss_samples: Vec<Instant>,
}

impl World {
    fn new(cfg: Config) -> World {
        let now = Instant::now();
        World {
            m: Machine::new(&cfg, 7),
            now,
            start: now,
            next_pid: 100,
            procs: HashMap::new(),
            on_term: HashMap::new(),
            crash: HashMap::new(),
            spawn_fail: HashSet::new(),
            spawns: vec![],
            signals: vec![],
            exits: vec![],
            exit_code: None,
            exit_at: None,
            probe_results: HashMap::new(),
            rss: HashMap::new(),
            rss_samples: Vec::new(),
        }
    }

    fn name(&self, id: ProgramId) -> String {
        self.m.program(id).name.clone()
    }

    fn id(&self, name: &str) -> ProgramId {
        self.m.find(name).unwrap()
    }

    fn boot(&mut self) {
        self.m.start(self.now);
        self.pump();
    }

    fn input(&mut self, i: Input) {
        self.m.handle(self.now, i);
        self.pump();
    }

    fn pump(&mut self) {
        while let Some(a) = self.m.poll_action() {
            match a {
                Action::Spawn(id) => {
                    let name = self.name(id);
                    let live: Vec<_> = self.procs.values().filter(|(p, _)| *p == id).collect();
                    assert!(
                        live.is_empty(),
                        "spawn of {name} while a process of it is alive"
                    );
                    if self.spawn_fail.contains(&name) {
                        self.m.handle(
                            self.now,
                            Input::SpawnFailed {
                                program: id,
                                reason: "not found".into(),
                                code: 127,
                            },
                        );
                        continue;
                    }
                    let pid = self.next_pid;
                    self.next_pid += 1;
                    let exit = self.crash.get(&name).map(|(d, s)| (self.now + *d, *s));
                    self.procs.insert(pid, (id, exit));
                    self.spawns.push((self.now, name));
                    self.m.handle(self.now, Input::Spawned { program: id, pid });
                }
                Action::Signal {
                    program,
                    pid,
                    signal,
                    ..
                } => {
                    let name = self.name(program);
                    self.signals.push((self.now, name.clone(), signal));
                    if let Some((_, exit)) = self.procs.get_mut(&pid) {
                        if signal == Signal::Kill {
                            *exit = Some((self.now, ExitStatus::Signaled(9)));
                        } else if let OnTerm::ExitAfter(d) = self
                            .on_term
                            .get(&name)
                            .copied()
                            .unwrap_or(OnTerm::ExitAfter(Duration::ZERO))
                        {
                            let at = self.now + d;
                            if exit.is_none_or(|(t, _)| t > at) {
                                *exit = Some((at, ExitStatus::Code(0)));
                            }
                        }
                    }
                }
                Action::Probe {
                    program,
                    pid,
                    kind: _,
                } => {
                    let r = self
                        .probe_results
                        .get(&self.name(program))
                        .cloned()
                        .unwrap_or(Ok(()));
                    self.m.handle(
                        self.now,
                        Input::ProbeResult {
                            program,
                            pid,
                            kind: ProbeKind::Readiness,
                            result: r.clone(),
                        },
                    );
                    // Liveness results are sent with the right kind below; the machine ignores a
                    // result whose kind does not match its state.
                    self.m.handle(
                        self.now,
                        Input::ProbeResult {
                            program,
                            pid,
                            kind: ProbeKind::Liveness,
                            result: r,
                        },
                    );
                }
                Action::SampleRss { program, pid } => {
                    self.rss_samples.push(self.now);
                    let rss = self.rss.get(&self.name(program)).copied().unwrap_or(0);
                    self.m.handle(
                        self.now,
                        Input::RssSampled {
                            program,
                            pid,
                            rss: Some(rss),
                        },
                    );
                }
                Action::SignalOrphans(_) => {
                    if self.procs.is_empty() {
                        self.m.handle(self.now, Input::NoChildren);
                    }
                }
                Action::Exit(code) => {
                    assert!(self.exit_code.is_none(), "exit emitted twice");
                    self.exit_code = Some(code);
                    self.exit_at = Some(self.now);
                }
            }
        }
    }

    /// Advances the fake clock to the next event (a timeout or a scripted exit) and handles it.
    fn step(&mut self) -> bool {
        let next_exit = self
            .procs
            .values()
            .filter_map(|(_, e)| e.map(|(t, _)| t))
            .min();
        let next_timeout = self.m.poll_timeout();
        let next = match (next_exit, next_timeout) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => return false,
            },
        };
        self.now = self.now.max(next);
        let due: Vec<i32> = self
            .procs
            .iter()
            .filter(|(_, (_, e))| e.is_some_and(|(t, _)| t <= self.now))
            .map(|(p, _)| *p)
            .collect();
        for pid in due {
            let (id, e) = self.procs.remove(&pid).unwrap();
            self.exits.push((self.now, self.name(id)));
            self.m.handle(
                self.now,
                Input::Exited {
                    pid,
                    status: e.unwrap().1,
                },
            );
            self.pump();
        }
        if self.m.poll_timeout().is_some_and(|t| t <= self.now) {
            self.m.handle_timeout(self.now);
            self.pump();
        }
        true
    }

    fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&World) -> bool) {
        while !cond(self) {
            assert!(
                self.now - self.start < limit,
                "condition not reached within {limit:?} of fake time"
            );
            if !self.step() {
                panic!("nothing left to happen and the condition does not hold");
            }
        }
    }

    fn state(&self, name: &str) -> State {
        self.m.state(self.id(name))
    }
}

#[test]
fn starts_in_priority_order_and_becomes_running_after_startsecs() {
    let mut a = prog("a");
    a.priority = 10;
    let mut b = prog("b");
    b.priority = 5;
    let mut c = prog("c");
    c.priority = 10;
    let mut w = World::new(config(vec![a, b, c]));
    w.boot();
    let names: Vec<_> = w.spawns.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["b", "a", "c"]);
    assert_eq!(w.state("a"), State::Starting);
    w.run_until(Duration::from_secs(5), |w| w.state("a") == State::Running);
    let snap = w.m.snapshot(w.now);
    assert!(snap.healthy, "{}", snap.reason);
}

#[test]
fn dependency_waits_for_ready_and_completed() {
    let mut setup = prog("gen");
    setup.autorestart = AutoRestart::Never;
    setup.startsecs = Duration::ZERO;
    let mut broker = prog("broker");
    broker.readiness.check = ReadinessCheck::Notify;
    let mut app = prog("app");
    app.priority = 1;
    app.depends_on = vec![
        ("broker".into(), DependencyCondition::Ready),
        ("gen".into(), DependencyCondition::Completed),
    ];
    let mut w = booted_crashing(
        vec![setup, broker, app],
        "gen",
        Duration::from_millis(300),
        ExitStatus::Code(0),
    );
    assert!(!w.spawns.iter().any(|(_, n)| n == "app"), "app must wait");
    let snap = w.m.snapshot(w.now);
    let app = snap.programs.iter().find(|p| p.name == "app").unwrap();
    assert!(
        app.reason.as_deref().unwrap().contains("waiting for"),
        "{:?}",
        app.reason
    );
    // gen completes; broker still not ready
    w.run_until(Duration::from_secs(2), |w| w.state("gen") == State::Exited);
    assert!(!w.spawns.iter().any(|(_, n)| n == "app"));
    let pid = w.m.pid(w.id("broker")).unwrap();
    w.input(Input::Ready {
        program: w.id("broker"),
        pid,
    });
    assert_eq!(w.spawns.last().unwrap().1, "app");
}

#[test]
fn failed_starts_back_off_exponentially_then_fatal_and_critical_exit_code() {
    let mut p = prog("flaky");
    p.startretries = 3;
    let mut w = booted_crashing(
        vec![p, prog("other")],
        "flaky",
        Duration::from_millis(10),
        ExitStatus::Code(3),
    );
    w.run_until(Duration::from_secs(60), |w| w.exit_code.is_some());
    assert_eq!(w.exit_code, Some(3));
    let starts: Vec<Instant> = w
        .spawns
        .iter()
        .filter(|(_, n)| n == "flaky")
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(starts.len(), 4, "1 start + 3 retries");
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // Each gap = 10 ms run + a delay that at least doubles (jitter only shortens by ≤ 20 %).
    for g in gaps.windows(2) {
        assert!(g[1] > g[0], "backoff must grow: {gaps:?}");
    }
    // other was stopped as part of the shutdown
    assert!(
        w.signals
            .iter()
            .any(|(_, n, s)| n == "other" && *s == Signal::Term)
    );
}

#[test]
fn non_critical_fatal_does_not_stop_the_supervisor() {
    let mut p = prog("helper");
    p.critical = false;
    p.startretries = 0;
    let mut w = World::new(config(vec![p, prog("main")]));
    w.spawn_fail.insert("helper".into());
    w.boot();
    assert_eq!(w.state("helper"), State::Fatal);
    w.run_until(Duration::from_secs(5), |w| {
        w.state("main") == State::Running
    });
    assert!(w.exit_code.is_none());
    assert!(w.m.snapshot(w.now).healthy);
}

#[test]
fn shutdown_is_reverse_order_and_kills_after_stopwaitsecs() {
    let mut a = prog("a");
    a.priority = 1;
    let mut b = prog("b");
    b.priority = 2;
    b.stopwaitsecs = Duration::from_secs(1);
    let mut c = prog("c");
    c.priority = 3;
    let mut w = World::new(config(vec![a, b, c]));
    w.on_term.insert("b".into(), OnTerm::Ignore);
    w.on_term
        .insert("c".into(), OnTerm::ExitAfter(Duration::from_millis(100)));
    w.boot();
    w.run_until(Duration::from_secs(5), |w| {
        ["a", "b", "c"].iter().all(|n| w.state(n) == State::Running)
    });
    w.input(Input::ShutdownRequested);
    w.run_until(Duration::from_secs(20), |w| w.exit_code.is_some());
    assert_eq!(w.exit_code, Some(0));
    let order: Vec<_> = w.exits.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(order, ["c", "b", "a"]);
    let kill = w
        .signals
        .iter()
        .find(|(_, n, s)| n == "b" && *s == Signal::Kill)
        .expect("b killed");
    let term = w
        .signals
        .iter()
        .find(|(_, n, s)| n == "b" && *s == Signal::Term)
        .unwrap();
    assert_eq!(kill.0 - term.0, Duration::from_secs(1));
}

#[test]
fn second_shutdown_request_stops_everything_at_once() {
    let mut a = prog("a");
    a.priority = 1;
    let mut b = prog("b");
    b.priority = 2;
    let mut w = World::new(config(vec![a, b]));
    w.on_term
        .insert("b".into(), OnTerm::ExitAfter(Duration::from_secs(5)));
    w.boot();
    w.run_until(Duration::from_secs(5), |w| {
        w.state("a") == State::Running && w.state("b") == State::Running
    });
    w.input(Input::ShutdownRequested);
    assert!(!w.signals.iter().any(|(_, n, _)| n == "a"), "a waits for b");
    w.input(Input::ShutdownRequested);
    assert!(
        w.signals
            .iter()
            .any(|(_, n, s)| n == "a" && *s == Signal::Term),
        "fast shutdown signals a too"
    );
}

#[test]
fn shutdown_never_exceeds_timeout_even_with_long_stopwaitsecs() {
    let mut a = prog("a");
    a.stopwaitsecs = Duration::from_secs(100);
    let mut w = World::new(config(vec![a]));
    w.on_term.insert("a".into(), OnTerm::Ignore);
    w.boot();
    w.input(Input::ShutdownRequested);
    let began = w.now;
    w.run_until(Duration::from_secs(60), |w| w.exit_code.is_some());
    assert!(w.exit_at.unwrap() - began <= Duration::from_secs(8));
}

#[test]
fn dependents_stop_before_dependencies_even_against_priority() {
    let mut db = prog("db");
    db.priority = 900;
    let mut app = prog("app");
    app.priority = 1;
    app.depends_on = vec![("db".into(), DependencyCondition::Started)];
    let mut w = World::new(config(vec![db, app]));
    w.boot();
    w.run_until(Duration::from_secs(5), |w| w.state("app") == State::Running);
    let names: Vec<_> = w.spawns.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["db", "app"]);
    w.input(Input::ShutdownRequested);
    w.run_until(Duration::from_secs(20), |w| w.exit_code.is_some());
    let order: Vec<_> = w.exits.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(order, ["app", "db"]);
}

#[test]
fn started_dependency_lets_the_dependent_go_before_it_is_ready() {
    let mut db = prog("db");
    db.readiness.check = ReadinessCheck::Notify;
    let mut app = prog("app");
    app.depends_on = vec![("db".into(), DependencyCondition::Started)];
    let mut w = World::new(config(vec![db, app]));
    w.boot();
    // db has a process but never reports readiness: `started` holds all the same.
    assert_eq!(w.state("db"), State::Starting);
    let names: Vec<_> = w.spawns.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["db", "app"]);
}

#[test]
fn readiness_timeout_is_a_failed_start() {
    let mut p = prog("slow");
    p.readiness = ReadinessConfig {
        check: ReadinessCheck::Notify,
        timeout: Duration::from_secs(2),
        interval: Duration::from_millis(250),
    };
    p.startretries = 1;
    p.critical = false;
    let mut w = World::new(config(vec![p]));
    w.boot();
    w.run_until(Duration::from_secs(60), |w| w.state("slow") == State::Fatal);
    assert_eq!(w.spawns.len(), 2);
    let snap = w.m.snapshot(w.now);
    assert!(
        snap.programs[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("not ready within")
    );
}

#[test]
fn tcp_readiness_polls_until_success() {
    let mut p = prog("web");
    p.readiness = ReadinessConfig {
        check: ReadinessCheck::Tcp {
            address: "127.0.0.1:1".into(),
        },
        timeout: Duration::from_secs(10),
        interval: Duration::from_millis(250),
    };
    let mut w = World::new(config(vec![p]));
    w.probe_results
        .insert("web".into(), Err("connection refused".into()));
    w.boot();
    w.run_until(Duration::from_secs(2), |w| {
        w.now - w.start >= Duration::from_secs(1)
    });
    assert_eq!(w.state("web"), State::Starting);
    w.probe_results.insert("web".into(), Ok(()));
    w.run_until(Duration::from_secs(3), |w| w.state("web") == State::Running);
}

#[test]
fn liveness_failures_restart_through_backoff() {
    let mut p = prog("svc");
    p.startsecs = Duration::ZERO;
    p.liveness = Some(LivenessConfig {
        check: ReadinessCheck::Tcp {
            address: "127.0.0.1:1".into(),
        },
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(1),
        failure_threshold: 3,
        initial_delay: Duration::ZERO,
    });
    let mut w = World::new(config(vec![p]));
    w.boot();
    assert_eq!(w.state("svc"), State::Running);
    w.probe_results
        .insert("svc".into(), Err("connection refused".into()));
    w.run_until(Duration::from_secs(60), |w| w.spawns.len() == 2);
    let snap = w.m.snapshot(w.now);
    assert_eq!(snap.programs[0].probe_failures, 3);
    assert_eq!(snap.programs[0].restarts, 1);
}

#[test]
fn a_passing_liveness_probe_clears_the_failure_reason() {
    let mut p = prog("svc");
    p.startsecs = Duration::ZERO;
    p.liveness = Some(LivenessConfig {
        check: ReadinessCheck::Tcp {
            address: "127.0.0.1:1".into(),
        },
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(1),
        failure_threshold: 3,
        initial_delay: Duration::ZERO,
    });
    let mut w = World::new(config(vec![p]));
    w.boot();
    w.probe_results
        .insert("svc".into(), Err("connection refused".into()));
    let reason = |w: &World| w.m.snapshot(w.now).programs[0].reason.clone();
    w.run_until(Duration::from_secs(60), |w| reason(w).is_some());
    assert_eq!(
        reason(&w).as_deref(),
        Some("liveness: connection refused (1 of 3 failures)")
    );
    w.probe_results.insert("svc".into(), Ok(()));
    w.run_until(Duration::from_secs(60), |w| reason(w).is_none());
    let snap = w.m.snapshot(w.now);
    assert_eq!(snap.programs[0].probe_failures, 1);
    assert_eq!(snap.programs[0].restarts, 0);
}

#[test]
fn watchdog_expiry_restarts_and_pings_keep_it_alive() {
    let mut p = prog("wd");
    p.readiness.check = ReadinessCheck::Notify;
    p.watchdog = Some(Duration::from_secs(5));
    let mut w = World::new(config(vec![p]));
    w.boot();
    let id = w.id("wd");
    let pid = w.m.pid(id).unwrap();
    w.input(Input::Ready { program: id, pid });
    for _ in 0..3 {
        w.now += Duration::from_secs(4);
        w.input(Input::WatchdogPing { program: id, pid });
        w.m.handle_timeout(w.now);
        w.pump();
    }
    assert_eq!(w.spawns.len(), 1, "pings keep it alive");
    w.run_until(Duration::from_secs(60), |w| w.spawns.len() == 2);
    assert!(
        w.signals
            .iter()
            .any(|(_, n, s)| n == "wd" && *s == Signal::Term)
    );
}

#[test]
fn backoff_resets_after_a_stable_run() {
    let mut p = prog("p");
    p.autorestart = AutoRestart::Always;
    p.backoff.jitter = 0.0;
    p.backoff.reset_after = Duration::from_secs(30);
    let mut w = World::new(config(vec![p]));
    w.crash
        .insert("p".into(), (Duration::from_secs(2), ExitStatus::Code(0)));
    w.boot();
    w.run_until(Duration::from_secs(600), |w| w.spawns.len() == 4);
    let starts: Vec<Instant> = w.spawns.iter().map(|(t, _)| *t).collect();
    // delays 100ms, 200ms, 400ms after each 2 s run
    assert_eq!(starts[1] - starts[0], Duration::from_millis(2100));
    assert_eq!(starts[3] - starts[2], Duration::from_millis(2400));
    // a long, stable run resets the attempt counter
    w.crash
        .insert("p".into(), (Duration::from_secs(40), ExitStatus::Code(0)));
    w.run_until(Duration::from_secs(600), |w| w.spawns.len() == 5);
    w.run_until(Duration::from_secs(600), |w| w.spawns.len() == 6);
    let s: Vec<Instant> = w.spawns.iter().map(|(t, _)| *t).collect();
    assert_eq!(s[5] - s[4], Duration::from_millis(40_100));
}

#[test]
fn expected_exit_without_restart_is_exited_and_healthy() {
    let mut p = prog("oneshot");
    p.autorestart = AutoRestart::Unexpected;
    p.startsecs = Duration::ZERO;
    let mut w = booted_crashing(
        vec![p],
        "oneshot",
        Duration::from_millis(5),
        ExitStatus::Code(0),
    );
    w.run_until(Duration::from_secs(5), |w| {
        w.state("oneshot") == State::Exited
    });
    assert!(w.m.snapshot(w.now).healthy);
    assert!(w.exit_code.is_none());
}

#[test]
fn critical_unexpected_exit_without_restart_exits_with_its_code() {
    let mut p = prog("main");
    p.autorestart = AutoRestart::Never;
    p.startsecs = Duration::ZERO;
    let mut w = booted_crashing(
        vec![p],
        "main",
        Duration::from_millis(5),
        ExitStatus::Signaled(11),
    );
    w.run_until(Duration::from_secs(20), |w| w.exit_code.is_some());
    assert_eq!(w.exit_code, Some(139));
}

#[test]
fn control_stop_start_restart() {
    let mut w = World::new(config(vec![prog("a")]));
    w.boot();
    let id = w.id("a");
    w.run_until(Duration::from_secs(5), |w| w.state("a") == State::Running);
    w.input(Input::StopRequested(id));
    w.run_until(Duration::from_secs(5), |w| w.state("a") == State::Stopped);
    assert!(
        w.m.snapshot(w.now).healthy,
        "stopped on request is not a failure"
    );
    w.input(Input::StartRequested(id));
    assert_eq!(w.spawns.len(), 2);
    w.run_until(Duration::from_secs(5), |w| w.state("a") == State::Running);
    w.input(Input::RestartRequested(id));
    w.run_until(Duration::from_secs(5), |w| w.spawns.len() == 3);
    assert_eq!(w.m.snapshot(w.now).programs[0].restarts, 2);
}

#[test]
fn on_dependency_restart_restart_follows_the_dependency() {
    let mut db = prog("db");
    db.autorestart = AutoRestart::Always;
    db.startsecs = Duration::ZERO;
    let mut app = prog("app");
    app.startsecs = Duration::ZERO;
    app.depends_on = vec![("db".into(), DependencyCondition::Ready)];
    app.on_dependency_restart = OnDependencyRestart::Restart;
    let mut w = World::new(config(vec![db, app]));
    w.boot();
    assert_eq!(w.state("app"), State::Running);
    let db_pid = w.m.pid(w.id("db")).unwrap();
    w.procs.remove(&db_pid);
    w.input(Input::Exited {
        pid: db_pid,
        status: ExitStatus::Signaled(9),
    });
    assert!(
        w.signals.iter().any(|(_, n, _)| n == "app"),
        "app is stopped when db goes away"
    );
    w.run_until(Duration::from_secs(10), |w| {
        w.spawns.iter().filter(|(_, n)| n == "app").count() == 2
    });
    assert_eq!(w.state("db"), State::Running);
}

#[test]
fn orphans_get_term_then_kill_before_exit() {
    let mut w = World::new(config(vec![prog("a")]));
    w.boot();
    w.input(Input::ShutdownRequested);
    // World answers NoChildren at once when no program process is left; check the order.
    w.run_until(Duration::from_secs(20), |w| w.exit_code.is_some());
    assert_eq!(w.exit_code, Some(0));
}

#[test]
fn unknown_pids_are_ignored() {
    let mut w = World::new(config(vec![prog("a")]));
    w.boot();
    w.input(Input::Exited {
        pid: 99999,
        status: ExitStatus::Code(1),
    });
    assert_eq!(w.state("a"), State::Starting);
}

#[derive(Debug, Clone)]
enum Op {
    Advance(u16),
    KillRandom(u8),
    Shutdown,
    Start(u8),
    Stop(u8),
    Restart(u8),
    Ready(u8),
    /// Two bits per program: keep, change its command, or remove it; bit 15 adds `extra`.
    Reload(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u16..5000).prop_map(Op::Advance),
        any::<u8>().prop_map(Op::KillRandom),
        Just(Op::Shutdown),
        any::<u8>().prop_map(Op::Start),
        any::<u8>().prop_map(Op::Stop),
        any::<u8>().prop_map(Op::Restart),
        any::<u8>().prop_map(Op::Ready),
        any::<u16>().prop_map(Op::Reload),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// Whatever happens (reloads included), a program never has two live processes, shutdown
    /// stops in reverse order and ends within `shutdown_timeout`, and Exit comes exactly once.
    #[test]
    fn invariants_hold_under_random_events(
        prios in proptest::collection::vec(0i32..4, 1..6),
        ignore in proptest::collection::vec(any::<bool>(), 6),
        ops in proptest::collection::vec(op(), 0..40),
    ) {
        let programs: Vec<ProgramConfig> = prios.iter().enumerate().map(|(i, p)| {
            let mut c = prog(&format!("p{i}"));
            c.priority = *p;
            c.critical = i == 0;
            c.autorestart = AutoRestart::Always;
            c.stopwaitsecs = Duration::from_secs(2);
            if i % 3 == 2 { c.readiness.check = ReadinessCheck::Notify; }
            c
        }).collect();
        let n = programs.len();
        let base = programs.clone();
        let mut current = config(programs);
        let mut w = World::new(current.clone());
        for (i, ig) in ignore.iter().enumerate().take(n) {
            if *ig { w.on_term.insert(format!("p{i}"), OnTerm::Ignore); }
        }
        w.boot();
        let mut shutdown_at = None;
        for o in ops {
            if w.exit_code.is_some() { break; }
            match o {
                Op::Advance(ms) => {
                    let target = w.now + Duration::from_millis(ms as u64);
                    while w.m.poll_timeout().is_some_and(|t| t <= target) || w.procs.values().any(|(_, e)| e.is_some_and(|(t, _)| t <= target)) {
                        w.step();
                    }
                    w.now = target;
                }
                Op::KillRandom(k) => {
                    let pids: Vec<i32> = { let mut v: Vec<i32> = w.procs.keys().copied().collect(); v.sort(); v };
                    if !pids.is_empty() {
                        let pid = pids[k as usize % pids.len()];
                        w.procs.remove(&pid);
                        w.input(Input::Exited { pid, status: ExitStatus::Signaled(9) });
                    }
                }
                Op::Shutdown => { shutdown_at.get_or_insert(w.now); w.input(Input::ShutdownRequested); }
                Op::Start(k) => { let id = ProgramId(k as usize % n); w.input(Input::StartRequested(id)); }
                Op::Stop(k) => { let id = ProgramId(k as usize % n); w.input(Input::StopRequested(id)); }
                Op::Restart(k) => { let id = ProgramId(k as usize % n); w.input(Input::RestartRequested(id)); }
                Op::Ready(k) => {
                    let id = ProgramId(k as usize % n);
                    if let Some(pid) = w.m.pid(id) { w.input(Input::Ready { program: id, pid }); }
                }
                Op::Reload(bits) => {
                    let mut programs: Vec<ProgramConfig> = Vec::new();
                    for (i, p) in base.iter().enumerate() {
                        match (bits >> (2 * i)) & 3 {
                            1 => {
                                let mut c = p.clone();
                                c.command.push(format!("-v{bits}"));
                                programs.push(c);
                            }
                            2 => {}
                            _ => programs.push(p.clone()),
                        }
                    }
                    if bits & 0x8000 != 0 {
                        programs.push(prog("extra"));
                    }
                    if programs.is_empty() { continue; }
                    let new = config(programs);
                    let plan = sv_core::plan::plan(&current, &new);
                    w.m.apply(w.now, &new, &plan);
                    w.pump();
                    if !w.m.is_shutting_down() { current = new; }
                }
            }
        }
        if w.exit_code.is_none() {
            shutdown_at.get_or_insert(w.now);
            w.input(Input::ShutdownRequested);
        }
        let began = shutdown_at.unwrap();
        let mut guard = 0;
        while w.exit_code.is_none() {
            prop_assert!(w.step(), "machine stalled before exit");
            guard += 1;
            prop_assert!(guard < 10_000);
        }
        prop_assert!(w.exit_at.unwrap() - began <= Duration::from_secs(8) || w.exit_at.unwrap() <= began);
        prop_assert!(w.procs.is_empty(), "exit with live processes: {:?}", w.procs);
    }
}

#[test]
fn shutdown_cancels_spawns_still_queued() {
    let cfg = config((0..50).map(|i| prog(&format!("p{i:02}"))).collect());
    let mut m = Machine::new(&cfg, 1);
    let now = Instant::now();
    m.start(now);
    // The runtime carried out a few spawns, then SIGTERM arrived.
    for _ in 0..3 {
        let Some(Action::Spawn(id)) = m.poll_action() else {
            panic!("expected a spawn")
        };
        m.handle(
            now,
            Input::Spawned {
                program: id,
                pid: 1000 + id.0 as i32,
            },
        );
    }
    m.handle(now, Input::ShutdownRequested);
    let mut spawns = 0;
    let mut signalled = 0;
    while let Some(a) = m.poll_action() {
        match a {
            Action::Spawn(_) => spawns += 1,
            Action::Signal { .. } => signalled += 1,
            _ => {}
        }
    }
    assert_eq!(spawns, 0, "queued spawns must be cancelled");
    assert_eq!(signalled, 3, "only the three started programs are stopped");
    let snap = m.snapshot(now);
    assert_eq!(
        snap.programs
            .iter()
            .filter(|p| p.state == State::Stopped)
            .count(),
        47
    );
}

/// Issue 12: the wrapper pattern `daemon & systemd-notify --ready --pid=$!` leaves the daemon in
/// its wrapper's process group. Its stop signal and SIGKILL must go to the process: a group
/// signal to its pid reaches nobody.
#[test]
fn a_mainpid_daemon_that_leads_no_group_is_signalled_as_a_process() {
    for leads_group in [false, true] {
        let mut a = prog("a");
        a.startsecs = Duration::ZERO;
        a.stopwaitsecs = Duration::from_secs(1);
        let cfg = config(vec![a]);
        let mut m = Machine::new(&cfg, 7);
        let t0 = Instant::now();
        m.start(t0);
        let id = m.find("a").unwrap();
        assert_eq!(m.poll_action(), Some(Action::Spawn(id)));
        m.handle(
            t0,
            Input::Spawned {
                program: id,
                pid: 100,
            },
        );
        assert!(m.signal_group(id), "a spawned process leads its group");
        m.handle(
            t0,
            Input::MainPid {
                program: id,
                pid: 100,
                main_pid: 200,
                leads_group,
            },
        );
        assert_eq!(m.pid(id), Some(200));
        assert_eq!(m.signal_group(id), leads_group);
        while m.poll_action().is_some() {}
        m.handle(t0, Input::StopRequested(id));
        let term = m.poll_action();
        assert_eq!(
            term,
            Some(Action::Signal {
                program: id,
                pid: 200,
                signal: Signal::Term,
                group: leads_group,
            })
        );
        let deadline = m.poll_timeout().expect("a kill deadline");
        m.handle_timeout(deadline);
        assert_eq!(
            m.poll_action(),
            Some(Action::Signal {
                program: id,
                pid: 200,
                signal: Signal::Kill,
                group: leads_group,
            })
        );
    }
}

fn scheduled(name: &str, trigger: sv_core::schedule::Trigger) -> ProgramConfig {
    let mut p = prog(name);
    p.autostart = false;
    p.autorestart = AutoRestart::Never;
    p.startsecs = Duration::ZERO;
    p.critical = false;
    p.schedule = Some(sv_core::schedule::ScheduleConfig {
        trigger,
        run_on_start: false,
        overlap: sv_core::schedule::Overlap::Skip,
    });
    p
}

fn every(
    name: &str,
    secs: u64,
    run_on_start: bool,
    overlap: sv_core::schedule::Overlap,
) -> ProgramConfig {
    let mut p = scheduled(
        name,
        sv_core::schedule::Trigger::Every(Duration::from_secs(secs)),
    );
    if let Some(s) = p.schedule.as_mut() {
        s.run_on_start = run_on_start;
        s.overlap = overlap;
    }
    p
}

/// A world whose `job` runs last `secs` and exit with `code` (not booted yet).
fn job_world(cfg: Config, secs: u64, code: i32) -> World {
    let mut w = World::new(cfg);
    w.crash.insert(
        "job".into(),
        (Duration::from_secs(secs), ExitStatus::Code(code)),
    );
    w
}

impl World {
    /// Seconds since boot of each spawn of `name`.
    fn spawn_secs(&self, name: &str) -> Vec<u64> {
        self.spawns
            .iter()
            .filter(|(_, n)| n == name)
            .map(|(t, _)| (*t - self.start).as_secs())
            .collect()
    }

    fn schedule_status(&self, name: &str) -> sv_core::schedule::ScheduleStatus {
        let snap = self.m.snapshot(self.now);
        let p = snap.programs.iter().find(|p| p.name == name).unwrap();
        p.schedule.clone().expect("a scheduled program")
    }
}

#[test]
fn every_runs_on_start_and_then_on_the_interval() {
    let mut w = job_world(config(vec![every("job", 10, true, Overlap::Skip)]), 1, 0);
    w.boot();
    w.run_until(Duration::from_secs(60), |w| w.spawns.len() == 4);
    assert_eq!(w.spawn_secs("job"), [0, 10, 20, 30]);
    w.run_until(Duration::from_secs(60), |w| w.exits.len() == 4);
    let s = w.schedule_status("job");
    assert_eq!((s.runs, s.failed_runs, s.skipped_runs), (4, 0, 0));
    assert_eq!(s.last_exit_code, Some(0));
    assert_eq!(w.state("job"), State::Exited);
    // Between runs the machine's only deadline is the next run.
    assert_eq!(
        w.m.poll_timeout().map(|t| (t - w.start).as_secs()),
        Some(40)
    );
}

#[test]
fn without_run_on_start_the_first_run_waits_one_interval() {
    let mut w = job_world(config(vec![every("job", 10, false, Overlap::Skip)]), 1, 0);
    w.boot();
    assert!(w.spawns.is_empty());
    w.run_until(Duration::from_secs(60), |w| !w.spawns.is_empty());
    assert_eq!(w.spawn_secs("job"), [10]);
}

#[test]
fn overlap_skip_skips_runs_due_while_one_is_going() {
    let mut w = job_world(config(vec![every("job", 10, true, Overlap::Skip)]), 25, 0);
    w.boot();
    w.run_until(Duration::from_secs(60), |w| w.spawns.len() == 2);
    // Due at 10 and 20 while the first run (0–25) was going: skipped; 30 runs.
    assert_eq!(w.spawn_secs("job"), [0, 30]);
    assert_eq!(w.schedule_status("job").skipped_runs, 2);
}

#[test]
fn overlap_queue_runs_once_right_after_the_current_run() {
    let mut w = job_world(config(vec![every("job", 10, true, Overlap::Queue)]), 25, 0);
    w.boot();
    w.run_until(Duration::from_secs(60), |w| w.spawns.len() == 2);
    // Due at 10 (queued) and 20 (one is already queued: skipped); the queued run starts at 25.
    assert_eq!(w.spawn_secs("job"), [0, 25]);
    assert_eq!(w.schedule_status("job").skipped_runs, 1);
}

#[test]
fn a_failed_run_is_counted_and_not_restarted_until_the_next_run() {
    let mut w = job_world(
        config(vec![prog("web"), every("job", 10, true, Overlap::Skip)]),
        1,
        3,
    );
    w.boot();
    w.run_until(Duration::from_secs(60), |w| w.exits.len() == 2);
    assert_eq!(w.spawn_secs("job"), [0, 10]);
    let s = w.schedule_status("job");
    assert_eq!(
        (s.runs, s.failed_runs, s.last_exit_code, s.last_ok),
        (2, 2, Some(3), Some(false))
    );
    // Not critical by default: the supervisor keeps running and stays healthy.
    assert!(w.exit_code.is_none());
    assert_eq!(w.state("web"), State::Running);
    assert!(w.m.snapshot(w.now).healthy);
}

#[test]
fn stop_pauses_the_schedule_and_start_runs_now_and_resumes_it() {
    let mut w = job_world(
        config(vec![prog("web"), every("job", 10, false, Overlap::Skip)]),
        1,
        0,
    );
    w.boot();
    let job = w.id("job");
    w.input(Input::StopRequested(job));
    assert!(w.schedule_status("job").paused);
    assert_eq!(w.schedule_status("job").next_run, None);
    // Nothing is due any more (web's startsecs passed), so nothing runs.
    w.run_until(Duration::from_secs(60), |w| w.m.poll_timeout().is_none());
    assert!(w.spawns.iter().all(|(_, n)| n != "job"));
    let resumed = (w.now - w.start).as_secs();
    w.input(Input::StartRequested(job));
    w.run_until(Duration::from_secs(120), |w| {
        w.spawns.iter().filter(|(_, n)| n == "job").count() == 2
    });
    assert_eq!(w.spawn_secs("job"), [resumed, resumed + 10]);
}

#[test]
fn cron_runs_follow_local_time_across_dst_in_berlin() {
    use sv_core::schedule::{CronPattern, Trigger};
    let cron = Trigger::Cron(CronPattern::parse("30 2 * * *").unwrap());
    let mut w = job_world(config(vec![scheduled("job", cron)]), 1, 0);
    w.m.set_time_zone(jiff::tz::TimeZone::get("Europe/Berlin").unwrap());
    // Noon UTC the day before DST starts (2026-03-29, 02:00 CET → 03:00 CEST).
    let wall: jiff::Timestamp = "2026-03-28T12:00:00Z".parse().unwrap();
    w.m.set_wall_clock(w.now, wall);
    w.boot();
    // 02:30 does not exist that night: the run is at 03:30 CEST = 01:30 UTC, 13.5 h later.
    assert_eq!(
        w.schedule_status("job").next_run.as_deref(),
        Some("2026-03-29T03:30:00+02:00")
    );
    w.run_until(Duration::from_secs(3 * 86400), |w| w.spawns.len() == 2);
    let h = |s: u64| s as f64 / 3600.0;
    let secs = w.spawn_secs("job");
    assert_eq!(h(secs[0]), 13.5);
    // The next night 02:30 CEST exists: 00:30 UTC, 23 h after the first run.
    assert_eq!(h(secs[1] - secs[0]), 23.0);
}

#[test]
fn cron_runs_once_in_the_hour_repeated_when_dst_ends() {
    use sv_core::schedule::{CronPattern, Trigger};
    let cron = Trigger::Cron(CronPattern::parse("30 2 * * *").unwrap());
    let mut w = job_world(config(vec![scheduled("job", cron)]), 1, 0);
    w.m.set_time_zone(jiff::tz::TimeZone::get("Europe/Berlin").unwrap());
    // 2026-10-25: 03:00 CEST → 02:00 CET, so 02:30 happens at 00:30 and 01:30 UTC.
    let wall: jiff::Timestamp = "2026-10-24T12:00:00Z".parse().unwrap();
    w.m.set_wall_clock(w.now, wall);
    w.boot();
    w.run_until(Duration::from_secs(3 * 86400), |w| w.spawns.len() == 2);
    let secs = w.spawn_secs("job");
    assert_eq!(secs[0], 12 * 3600 + 1800);
    // Not again an hour later: the next run is 02:30 CET the next day, 25 h later.
    assert_eq!(secs[1] - secs[0], 25 * 3600);
}

#[test]
fn no_scheduled_run_starts_during_a_shutdown() {
    let mut w = World::new(config(vec![
        prog("web"),
        every("job", 10, false, Overlap::Skip),
    ]));
    w.on_term
        .insert("web".into(), OnTerm::ExitAfter(Duration::from_secs(7)));
    w.boot();
    w.run_until(Duration::from_secs(5), |w| w.state("web") == State::Running);
    w.now += Duration::from_secs(5);
    w.input(Input::ShutdownRequested);
    w.run_until(Duration::from_secs(60), |w| w.exit_code.is_some());
    assert!(w.spawns.iter().all(|(_, n)| n != "job"), "{:?}", w.spawns);
}

#[test]
fn a_run_that_cannot_be_spawned_is_a_failed_run_and_the_next_one_still_comes() {
    let mut job = every("job", 10, true, Overlap::Skip);
    job.startretries = 0;
    let mut w = World::new(config(vec![prog("web"), job]));
    w.spawn_fail.insert("job".into());
    w.boot();
    // The spawn at start failed: FATAL, counted, and the supervisor keeps going.
    assert_eq!(w.state("job"), State::Fatal);
    assert_eq!(w.schedule_status("job").failed_runs, 1);
    w.run_until(Duration::from_secs(60), |w| {
        w.schedule_status("job").failed_runs == 3
    });
    assert_eq!((w.now - w.start).as_secs(), 20);
    assert!(w.exit_code.is_none());
}

/// A booted world where program `name` exits with `status` after running for `run`.
fn booted_crashing(
    programs: Vec<ProgramConfig>,
    name: &str,
    run: Duration,
    status: ExitStatus,
) -> World {
    let mut w = World::new(config(programs));
    w.crash.insert(name.into(), (run, status));
    w.boot();
    w
}

/// A program that becomes READY (so `startretries` never trips) and then crashes after `run`.
fn crashing_after(run: Duration, limit: Option<RestartLimit>) -> World {
    let mut p = prog("leaky");
    p.backoff.jitter = 0.0;
    p.backoff.max = Duration::from_secs(1);
    p.restart_limit = limit;
    booted_crashing(vec![p, prog("other")], "leaky", run, ExitStatus::Code(5))
}

fn leaky_starts(w: &World) -> usize {
    w.spawns.iter().filter(|(_, n)| n == "leaky").count()
}

#[test]
fn restart_limit_makes_a_program_fatal_after_burst_restarts_within_the_window() {
    let limit = RestartLimit {
        burst: 3,
        within: Duration::from_secs(60),
    };
    let mut w = crashing_after(Duration::from_secs(2), Some(limit));
    w.run_until(Duration::from_secs(600), |w| w.exit_code.is_some());
    // Critical: the container exits with the program's code.
    assert_eq!(w.exit_code, Some(5));
    assert_eq!(w.state("leaky"), State::Fatal);
    assert_eq!(
        leaky_starts(&w),
        4,
        "1 start + 3 restarts, the 4th crash exceeds the burst"
    );
    let snap = w.m.snapshot(w.now);
    let leaky = snap.programs.iter().find(|p| p.name == "leaky").unwrap();
    assert!(
        leaky
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("more than 3 restarts within 60s (restart_limit)"),
        "{leaky:?}"
    );
    assert_eq!(leaky.restart_limit_failures, Some(4));
    let other = snap.programs.iter().find(|p| p.name == "other").unwrap();
    assert_eq!(other.restart_limit_failures, None);

    // The same program without a restart_limit restarts forever: startretries counts only
    // failed starts in a row, and every start here succeeded.
    let mut w = crashing_after(Duration::from_secs(2), None);
    w.run_until(Duration::from_secs(600), |w| leaky_starts(w) > 50);
    assert_eq!(w.exit_code, None);
}

#[test]
fn restart_limit_window_slides_so_spaced_out_crashes_never_give_up() {
    let limit = RestartLimit {
        burst: 1,
        within: Duration::from_secs(60),
    };
    // One crash every ~70 s: never two inside a 60 s window.
    let mut w = crashing_after(Duration::from_secs(70), Some(limit));
    w.run_until(Duration::from_secs(1000), |w| leaky_starts(w) >= 10);
    assert_eq!(w.exit_code, None);
    assert_ne!(w.state("leaky"), State::Fatal);
    // One crash every ~40 s: the second lands inside the window of the first.
    let mut w = crashing_after(Duration::from_secs(40), Some(limit));
    w.run_until(Duration::from_secs(1000), |w| w.exit_code.is_some());
    assert_eq!(w.exit_code, Some(5));
    assert_eq!(leaky_starts(&w), 2);
}

#[test]
fn restart_limit_also_counts_failed_starts_before_startretries() {
    let mut p = prog("flaky");
    p.startretries = 10;
    p.restart_limit = Some(RestartLimit {
        burst: 2,
        within: Duration::from_secs(60),
    });
    let mut w = booted_crashing(
        vec![p],
        "flaky",
        Duration::from_millis(10),
        ExitStatus::Code(3),
    );
    w.run_until(Duration::from_secs(60), |w| w.exit_code.is_some());
    assert_eq!(w.exit_code, Some(3));
    assert_eq!(
        w.spawns.len(),
        3,
        "gave up at the 3rd failure, not after 11"
    );
}

fn with_max_rss(for_: Duration) -> World {
    let mut p = prog("leaky");
    p.max_rss = Some(MaxRss {
        limit: 300 << 20,
        for_,
        interval: Duration::from_secs(10),
    });
    let mut w = World::new(config(vec![p, prog("plain")]));
    w.boot();
    w.run_until(Duration::from_secs(5), |w| {
        w.state("leaky") == State::Running
    });
    w
}

fn memory_restarts(w: &World, name: &str) -> Option<u64> {
    let snap = w.m.snapshot(w.now);
    snap.programs
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| p.memory_restarts)
}

#[test]
fn max_rss_restarts_only_after_the_memory_stayed_above_the_limit_for_the_whole_period() {
    let mut w = with_max_rss(Duration::from_secs(60));
    let t0 = w.now;
    // Below the limit: sampled every interval, never restarted.
    w.run_until(Duration::from_secs(100), |w| w.rss_samples.len() >= 5);
    assert_eq!(w.spawns.iter().filter(|(_, n)| n == "leaky").count(), 1);
    // Above, then briefly below: the period starts again.
    w.rss.insert("leaky".into(), 400 << 20);
    let n = w.rss_samples.len();
    w.run_until(Duration::from_secs(100), |w| w.rss_samples.len() >= n + 3);
    w.rss.insert("leaky".into(), 100 << 20);
    let n = w.rss_samples.len();
    w.run_until(Duration::from_secs(100), |w| w.rss_samples.len() > n);
    assert_eq!(memory_restarts(&w, "leaky"), Some(0));
    // Above for 60 s: restarted, counted, and the cause is in the reason.
    w.rss.insert("leaky".into(), 400 << 20);
    let above_from = w.now;
    w.run_until(Duration::from_secs(200), |w| {
        w.spawns.iter().filter(|(_, n)| n == "leaky").count() == 2
    });
    assert!(w.now - above_from >= Duration::from_secs(60));
    assert_eq!(memory_restarts(&w, "leaky"), Some(1));
    let stopped_for = w.signals.iter().filter(|(_, n, _)| n == "leaky").count();
    assert_eq!(stopped_for, 1, "one stop signal for the restart");
    // A program without max_rss is never sampled and shows no counter.
    assert_eq!(memory_restarts(&w, "plain"), None);
    assert!(w.rss_samples.iter().all(|t| *t > t0));
}

#[test]
fn without_max_rss_there_is_no_sampling_timer() {
    let mut w = World::new(config(vec![prog("plain")]));
    w.boot();
    w.run_until(Duration::from_secs(5), |w| {
        w.state("plain") == State::Running
    });
    assert_eq!(
        w.m.poll_timeout(),
        None,
        "an idle supervisor never wakes up"
    );
    assert!(w.rss_samples.is_empty());
}

/// Applies `new` as a reload against `old`, the way the runtime does.
fn reload(w: &mut World, old: &Config, new: &Config) -> sv_core::plan::Plan {
    let plan = sv_core::plan::plan(old, new);
    w.m.apply(w.now, new, &plan);
    w.pump();
    plan
}

fn all_running(w: &World, names: &[&str]) -> bool {
    names.iter().all(|n| {
        w.m.find(n)
            .is_some_and(|id| w.m.state(id) == State::Running)
    })
}

#[test]
fn reload_stops_removed_and_changed_programs_dependents_first_and_leaves_the_rest_alone() {
    // b depends on c; both go (b removed, c changed). d depends on c but is unchanged.
    let mut b = prog("b");
    b.depends_on = vec![("c".into(), DependencyCondition::Ready)];
    let mut d = prog("d");
    d.depends_on = vec![("c".into(), DependencyCondition::Ready)];
    let old = config(vec![prog("a"), b, prog("c"), d, prog("e")]);
    let mut w = World::new(old.clone());
    w.boot();
    w.run_until(Duration::from_secs(10), |w| {
        all_running(w, &["a", "b", "c", "d", "e"])
    });
    let pids: Vec<Option<i32>> = ["a", "d", "e"].iter().map(|n| w.m.pid(w.id(n))).collect();
    let (signals_before, spawns_before) = (w.signals.len(), w.spawns.len());
    // c's process takes a while to stop, so the order is observable.
    w.on_term
        .insert("c".into(), OnTerm::ExitAfter(Duration::from_millis(300)));

    let mut c = prog("c");
    c.command.push("--v2".into());
    let mut f = prog("f");
    f.depends_on = vec![("c".into(), DependencyCondition::Ready)];
    let mut d = prog("d");
    d.depends_on = vec![("c".into(), DependencyCondition::Ready)];
    let new = config(vec![prog("a"), c, d, prog("e"), f]);
    let plan = reload(&mut w, &old, &new);
    assert_eq!(plan.added, ["f"]);
    assert_eq!(plan.removed, ["b"]);
    assert_eq!(plan.unchanged, ["a", "d", "e"]);
    // Until the old set has stopped, c's RUNNING is its old definition and f is held.
    assert!(w.m.reload_pending(w.id("c")) && w.m.reload_pending(w.id("f")));
    assert!(!w.m.reload_pending(w.id("a")));

    w.run_until(Duration::from_secs(20), |w| {
        all_running(w, &["a", "c", "d", "e", "f"])
    });
    assert_eq!(w.m.find("b"), None, "b is gone");
    assert!(!w.m.reload_pending(w.id("c")) && !w.m.reload_pending(w.id("f")));
    assert_eq!(w.m.program(w.id("c")).command, ["/bin/true", "--v2"]);
    let signalled: Vec<&str> = w.signals[signals_before..]
        .iter()
        .map(|(_, n, _)| n.as_str())
        .collect();
    assert_eq!(
        signalled,
        ["b", "c"],
        "dependents first, untouched ones never"
    );
    let spawned: Vec<&str> = w.spawns[spawns_before..]
        .iter()
        .map(|(_, n)| n.as_str())
        .collect();
    assert_eq!(spawned, ["c", "f"], "f waits for the new c");
    let after: Vec<Option<i32>> = ["a", "d", "e"].iter().map(|n| w.m.pid(w.id(n))).collect();
    assert_eq!(after, pids);
    // b's stop was asked for and expected: nothing shut the supervisor down.
    assert!(!w.m.is_shutting_down());
    let names: Vec<String> =
        w.m.snapshot(w.now)
            .programs
            .into_iter()
            .map(|p| p.name)
            .collect();
    assert_eq!(names, ["a", "c", "d", "e", "f"]);
}

#[test]
fn reloading_the_same_config_emits_nothing() {
    let old = config(vec![prog("a"), prog("b")]);
    let mut w = World::new(old.clone());
    w.boot();
    w.run_until(Duration::from_secs(10), |w| all_running(w, &["a", "b"]));
    while w.m.poll_event().is_some() {}
    let plan = sv_core::plan::plan(&old, &old);
    w.m.apply(w.now, &old, &plan);
    assert_eq!(w.m.poll_action(), None);
    assert_eq!(w.m.poll_event(), None);
}

#[test]
fn programs_without_a_process_change_at_once() {
    let mut idle = prog("idle");
    idle.autostart = false;
    let old = config(vec![prog("a"), idle.clone(), prog("gone")]);
    let mut w = World::new(old.clone());
    w.input(Input::StopRequested(w.id("gone")));
    w.boot();
    let gone = w.id("gone");
    let mut idle2 = idle;
    idle2.command.push("-x".into());
    let new = config(vec![prog("a"), idle2]);
    reload(&mut w, &old, &new);
    assert_eq!(w.m.find("gone"), None);
    assert_eq!(w.m.program(w.id("idle")).command, ["/bin/true", "-x"]);
    assert_eq!(
        w.state("idle"),
        State::Stopped,
        "autostart = false still holds"
    );
    let ev: Vec<Event> = std::iter::from_fn(|| w.m.poll_event()).collect();
    assert!(ev.contains(&Event::Removed { program: gone }), "{ev:?}");
}

#[test]
fn a_shutdown_during_a_reload_still_ends_with_exit() {
    let old = config(vec![prog("a"), prog("b")]);
    let mut w = World::new(old.clone());
    w.boot();
    w.run_until(Duration::from_secs(10), |w| all_running(w, &["a", "b"]));
    w.on_term.insert("b".into(), OnTerm::Ignore);
    let mut b = prog("b");
    b.command.push("-x".into());
    reload(&mut w, &old, &config(vec![prog("a"), b]));
    w.input(Input::ShutdownRequested);
    w.run_until(Duration::from_secs(30), |w| w.exit_code.is_some());
    assert_eq!(w.exit_code, Some(0));
}

#[test]
fn a_changed_program_that_exits_by_itself_before_its_turn_comes_back_with_the_new_definition() {
    let mut a = prog("a");
    a.depends_on = vec![("b".into(), DependencyCondition::Ready)];
    let old = config(vec![a.clone(), prog("b")]);
    let mut w = World::new(old.clone());
    w.boot();
    w.run_until(Duration::from_secs(10), |w| all_running(w, &["a", "b"]));
    // a (the dependent) is stopped first and takes its time; b waits for its turn.
    w.on_term
        .insert("a".into(), OnTerm::ExitAfter(Duration::from_millis(500)));
    let spawns_before = w.spawns.len();
    let (mut a2, mut b2) = (a, prog("b"));
    a2.command.push("--v2".into());
    b2.command.push("--v2".into());
    reload(&mut w, &old, &config(vec![a2, b2]));
    assert_eq!(w.state("b"), State::Running, "b's turn has not come");
    // b's old process crashes meanwhile.
    let b_pid = w.m.pid(w.id("b")).unwrap();
    w.procs.remove(&b_pid);
    w.input(Input::Exited {
        pid: b_pid,
        status: ExitStatus::Code(1),
    });
    w.run_until(Duration::from_secs(20), |w| {
        all_running(w, &["a", "b"]) && w.spawns.len() >= spawns_before + 2
    });
    for n in ["a", "b"] {
        assert_eq!(w.m.program(w.id(n)).command, ["/bin/true", "--v2"], "{n}");
    }
    let spawned: Vec<&str> = w.spawns[spawns_before..]
        .iter()
        .map(|(_, n)| n.as_str())
        .collect();
    assert_eq!(
        spawned,
        ["b", "a"],
        "only new definitions, dependency first"
    );
}

fn progress(w: &World, name: &str, goal: Goal) -> Progress {
    w.m.progress(w.id(name), goal)
}

/// `app` needs `db` ready; `db` fails every start (`startretries = 1`) and is not critical.
fn app_on_a_failing_db() -> World {
    let mut db = prog("db");
    db.startretries = 1;
    // Not critical: giving up on it must not shut the supervisor down.
    db.critical = false;
    db.startsecs = Duration::from_secs(1);
    let mut app = prog("app");
    app.depends_on = vec![("db".into(), DependencyCondition::Ready)];
    booted_crashing(
        vec![db, app],
        "db",
        Duration::from_millis(10),
        ExitStatus::Code(1),
    )
}

#[test]
fn a_program_held_by_its_dependency_says_so_in_types_and_in_the_old_words() {
    let w = app_on_a_failing_db();
    let app = w.m.status(w.now, w.id("app"));
    assert_eq!(app.state, State::Stopped);
    assert_eq!(
        app.blocked_on,
        Some(BlockedOn::Dependency {
            name: "db".into(),
            condition: DependencyCondition::Ready,
            state: State::Starting,
        })
    );
    // The text `status` and the control protocol show is rendered from the type, unchanged.
    assert_eq!(
        app.reason.as_deref(),
        Some("waiting for db to be ready (it is STARTING)")
    );
    let json = serde_json::to_value(&app).expect("json");
    assert_eq!(json["state"], "STOPPED");
    assert!(json.get("blocked_on").is_none(), "not part of the protocol");
    assert_eq!(w.m.blocked_on(w.id("db")), None);
}

#[test]
fn start_waits_while_a_dependency_backs_off_and_gives_up_when_it_is_fatal() {
    let mut w = app_on_a_failing_db();
    assert_eq!(progress(&w, "app", Goal::Running), Progress::Pending);
    w.run_until(Duration::from_secs(30), |w| w.state("db") == State::Backoff);
    assert_eq!(
        progress(&w, "app", Goal::Running),
        Progress::Pending,
        "db may still come up"
    );
    w.run_until(Duration::from_secs(60), |w| w.state("db") == State::Fatal);
    assert_eq!(progress(&w, "db", Goal::Running), Progress::Unreachable);
    assert_eq!(
        progress(&w, "app", Goal::Running),
        Progress::Unreachable,
        "nothing will start db again"
    );
    // An operator's `start db` changes the picture: both are on their way again.
    w.input(Input::StartRequested(w.id("db")));
    assert_eq!(progress(&w, "db", Goal::Running), Progress::Pending);
    assert_eq!(progress(&w, "app", Goal::Running), Progress::Pending);
}

#[test]
fn start_waits_through_a_chain_of_waiting_dependencies_until_the_root_is_stopped() {
    let mut db = prog("db");
    db.startretries = 100;
    let mut mid = prog("mid");
    mid.depends_on = vec![("db".into(), DependencyCondition::Ready)];
    let mut app = prog("app");
    app.depends_on = vec![("mid".into(), DependencyCondition::Started)];
    let mut w = booted_crashing(
        vec![db, mid, app],
        "db",
        Duration::from_millis(10),
        ExitStatus::Code(1),
    );
    w.run_until(Duration::from_secs(30), |w| w.state("db") == State::Backoff);
    assert!(matches!(
        w.m.blocked_on(w.id("app")),
        Some(BlockedOn::Dependency { ref name, .. }) if name == "mid"
    ));
    assert_eq!(progress(&w, "app", Goal::Running), Progress::Pending);
    // Stopped by the operator, db stays down: mid never starts, so app never does.
    w.input(Input::StopRequested(w.id("db")));
    assert_eq!(progress(&w, "db", Goal::Stopped), Progress::Reached);
    assert_eq!(progress(&w, "mid", Goal::Running), Progress::Unreachable);
    assert_eq!(progress(&w, "app", Goal::Running), Progress::Unreachable);
}

#[test]
fn start_waits_for_a_running_dependency_to_complete_but_not_for_one_that_will_never_run() {
    let mut job = prog("job");
    job.autorestart = AutoRestart::Never;
    let mut off = prog("off");
    off.autostart = false;
    let mut after = prog("after");
    after.depends_on = vec![("job".into(), DependencyCondition::Completed)];
    let mut orphan = prog("orphan");
    orphan.depends_on = vec![("off".into(), DependencyCondition::Started)];
    let mut w = World::new(config(vec![job, off, after, orphan]));
    w.boot();
    w.run_until(Duration::from_secs(5), |w| w.state("job") == State::Running);
    assert_eq!(
        progress(&w, "after", Goal::Running),
        Progress::Pending,
        "job may still complete"
    );
    assert_eq!(progress(&w, "orphan", Goal::Running), Progress::Unreachable);
    assert_eq!(progress(&w, "off", Goal::Stopped), Progress::Reached);
}

#[test]
fn stop_is_reached_once_the_process_is_gone_and_running_is_unreachable_in_a_shutdown() {
    let a = prog("a");
    let mut w = World::new(config(vec![a]));
    w.on_term
        .insert("a".into(), OnTerm::ExitAfter(Duration::from_millis(500)));
    w.boot();
    w.run_until(Duration::from_secs(5), |w| w.state("a") == State::Running);
    assert_eq!(progress(&w, "a", Goal::Running), Progress::Reached);
    w.input(Input::StopRequested(w.id("a")));
    assert_eq!(progress(&w, "a", Goal::Stopped), Progress::Pending);
    w.run_until(Duration::from_secs(5), |w| w.state("a") == State::Stopped);
    assert_eq!(progress(&w, "a", Goal::Stopped), Progress::Reached);
    w.input(Input::ShutdownRequested);
    assert_eq!(progress(&w, "a", Goal::Running), Progress::Unreachable);
}

/// A dependency that a reload holds back shows a reason beginning "waiting for", as a
/// dependency wait does. Deciding by that text (what the runtime used to do) took the held
/// program for one waiting on dependencies of its own, found none on their way, and answered
/// `start app` at once with a failure although the reload was about to start `db`. The typed
/// block tells the two apart.
#[test]
fn a_dependency_held_by_a_reload_is_on_its_way_whatever_its_reason_says() {
    let mut slow = prog("slow");
    slow.priority = -1;
    let db = prog("db");
    let mut app = prog("app");
    app.depends_on = vec![("db".into(), DependencyCondition::Ready)];
    app.on_dependency_restart = OnDependencyRestart::Restart;
    let old = config(vec![slow.clone(), db.clone(), app.clone()]);
    let mut w = World::new(old.clone());
    w.boot();
    w.run_until(Duration::from_secs(10), |w| {
        all_running(w, &["slow", "db", "app"])
    });
    // The reload redefines db and slow; slow takes a while to stop, and db (stopped first)
    // is held until it has.
    w.on_term
        .insert("slow".into(), OnTerm::ExitAfter(Duration::from_secs(2)));
    let (mut slow2, mut db2) = (slow, db);
    slow2.command.push("--v2".into());
    db2.command.push("--v2".into());
    let new = config(vec![slow2, db2, app]);
    let plan = reload(&mut w, &old, &new);
    assert_eq!(plan.unchanged, ["app"]);
    w.run_until(Duration::from_secs(10), |w| {
        w.m.blocked_on(w.id("db")) == Some(BlockedOn::Reload)
            && w.m.blocked_on(w.id("app")).is_some()
    });
    let db = w.m.status(w.now, w.id("db"));
    assert_eq!(db.state, State::Stopped);
    assert!(
        db.reason
            .as_deref()
            .unwrap_or("")
            .starts_with("waiting for"),
        "the text the old rule matched: {:?}",
        db.reason
    );
    assert!(!w.m.reload_pending(w.id("app")), "app itself is unchanged");
    assert_eq!(progress(&w, "app", Goal::Running), Progress::Pending);
    w.run_until(Duration::from_secs(20), |w| {
        all_running(w, &["slow", "db", "app"])
    });
    assert_eq!(progress(&w, "app", Goal::Running), Progress::Reached);
}

#[test]
fn a_removed_program_reaches_removed_and_nothing_else() {
    let old = config(vec![prog("a"), prog("b")]);
    let mut w = World::new(old.clone());
    w.boot();
    w.run_until(Duration::from_secs(5), |w| all_running(w, &["a", "b"]));
    let b = w.id("b");
    reload(&mut w, &old, &config(vec![prog("a")]));
    assert_eq!(w.m.progress(b, Goal::Removed), Progress::Pending);
    w.run_until(Duration::from_secs(10), |w| w.m.is_removed(b));
    assert_eq!(w.m.progress(b, Goal::Removed), Progress::Reached);
    assert_eq!(w.m.progress(b, Goal::Running), Progress::Unreachable);
    assert_eq!(w.m.progress(b, Goal::Stopped), Progress::Unreachable);
}

#[test]
fn a_probe_runs_its_own_check_and_a_readiness_attempt_is_bounded_by_a_second() {
    let tcp = ReadinessCheck::Tcp {
        address: "127.0.0.1:1".into(),
    };
    let exec = ReadinessCheck::Exec {
        command: vec!["/bin/true".into()],
    };
    let mut slow = prog("slow");
    slow.readiness.check = tcp.clone();
    slow.readiness.timeout = Duration::from_secs(30);
    slow.liveness = Some(LivenessConfig {
        check: exec.clone(),
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
        failure_threshold: 3,
        initial_delay: Duration::ZERO,
    });
    let mut quick = prog("quick");
    quick.readiness.check = tcp.clone();
    quick.readiness.timeout = Duration::from_millis(300);
    let w = World::new(config(vec![slow, quick]));
    let (slow, quick) = (w.id("slow"), w.id("quick"));
    assert_eq!(
        w.m.probe_check(slow, ProbeKind::Readiness),
        Some((&tcp, Duration::from_secs(1)))
    );
    assert_eq!(
        w.m.probe_check(quick, ProbeKind::Readiness),
        Some((&tcp, Duration::from_millis(300)))
    );
    assert_eq!(
        w.m.probe_check(slow, ProbeKind::Liveness),
        Some((&exec, Duration::from_secs(5)))
    );
    assert_eq!(w.m.probe_check(quick, ProbeKind::Liveness), None);
}
