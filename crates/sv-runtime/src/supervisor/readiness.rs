//! How readiness and liveness reports reach the loop: each program's sd_notify socket, the
//! `log` readiness hook on its output, and tcp/http/exec probes.
//!
//! These run outside the loop (a task per socket, the log reader tasks, a task per tcp/http
//! probe) and report through [`Internal`] messages; exec probes are child processes, reaped by
//! the loop like every other child and matched by pid ([`ExecProbe`]). The loop turns every
//! report into a machine [`Input`], checked against the program's current pid, so a late report
//! about an earlier process changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sv_core::config::{ProgramConfig, ReadinessCheck};
use sv_core::machine::{ExitStatus, Input, ProbeKind, ProgramId};
use sv_core::notify::Notify;
use sv_core::signal::Signal;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::{ENV_PROGRAM, Supervisor};
use crate::logs::LineHook;
use crate::notify::NotifySocket;
use crate::{probe, signals, spawn};

/// A message from a helper task to the loop.
#[derive(Debug)]
pub(crate) enum Internal {
    Notify {
        program: ProgramId,
        messages: Vec<Notify>,
    },
    LogMatched {
        program: ProgramId,
    },
    Probe {
        program: ProgramId,
        pid: i32,
        kind: ProbeKind,
        result: Result<(), String>,
    },
}

/// An exec probe in flight, keyed by the probe process's pid: the loop reaps it like any child
/// and reports its exit as the probe's result.
#[derive(Debug)]
pub(super) struct ExecProbe {
    pub(super) program: ProgramId,
    pub(super) pid: i32,
    pub(super) kind: ProbeKind,
    pub(super) deadline: Instant,
}

/// The `log` readiness hook of one incarnation: its first line matching `re` reports readiness,
/// once. The report is never lost: when the loop's channel is momentarily full (a burst of
/// sd_notify datagrams or probe results), a task waits for room instead of dropping it. Marking
/// the hook as fired before a failed `try_send` used to lose readiness for good, and the program
/// then timed out in STARTING.
pub(super) fn log_ready_hook(
    re: regex::Regex,
    id: ProgramId,
    tx: mpsc::Sender<Internal>,
) -> LineHook {
    let fired = AtomicBool::new(false);
    Arc::new(move |line: &str| {
        if fired.load(Ordering::Relaxed)
            || !re.is_match(line)
            || fired.swap(true, Ordering::Relaxed)
        {
            return;
        }
        match tx.try_send(Internal::LogMatched { program: id }) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            // The hook runs in a reader task, so a runtime is there; at most one such task per
            // incarnation exists, as the hook fires once.
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(msg).await;
                });
            }
        }
    })
}

impl Supervisor {
    /// Binds the sd_notify socket of every program in `ids` that needs one and has none yet.
    pub(super) fn bind_notify_sockets(&mut self, ids: &[ProgramId]) {
        let ids: Vec<ProgramId> = ids
            .iter()
            .copied()
            .filter(|id| {
                self.machine.program(*id).wants_notify_socket()
                    && !self.notify_paths.contains_key(id)
            })
            .collect();
        if ids.is_empty() {
            return;
        }
        let dir = self.rundir.join("notify");
        if let Err(e) = std::fs::create_dir_all(&dir) {
            error!(dir = %dir.display(), error = %e, "cannot create the sd_notify directory");
            return;
        }
        for id in ids {
            let p = self.machine.program(id);
            let stop = &self.stop_rx;
            let path = dir.join(format!("{}.sock", p.name));
            let owner = p.user.as_deref().and_then(resolve_uid);
            match NotifySocket::bind(&path, owner) {
                Ok(sock) => {
                    self.notify_paths.insert(id, path);
                    let tx = self.internal_tx.clone();
                    let mut stop = stop.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::select! {
                                r = sock.recv() => match r {
                                    Ok((_, messages)) if !messages.is_empty() => {
                                        if tx.send(Internal::Notify { program: id, messages }).await.is_err() { break; }
                                    }
                                    Ok(_) => {}
                                    Err(e) => { warn!(error = %e, "sd_notify socket failed"); break; }
                                },
                                _ = stop.changed() => if *stop.borrow() { break },
                            }
                        }
                    });
                }
                Err(e) => {
                    error!(program = %p.name, path = %path.display(), error = %e, "cannot bind the sd_notify socket")
                }
            }
        }
    }

    /// The `log` readiness hook: the first matching line of this incarnation reports readiness.
    pub(super) fn log_hook(&self, id: ProgramId, cfg: &ProgramConfig) -> Option<LineHook> {
        let ReadinessCheck::Log { pattern } = &cfg.readiness.check else {
            return None;
        };
        let re = match regex::Regex::new(pattern) {
            Ok(re) => re,
            Err(e) => {
                // Validation compiled it already; this is unreachable in practice.
                error!(program = %cfg.name, error = %e, "invalid readiness pattern");
                return None;
            }
        };
        Some(log_ready_hook(re, id, self.internal_tx.clone()))
    }

    pub(super) fn start_probe(&mut self, id: ProgramId, pid: i32, kind: ProbeKind) {
        let Some((check, timeout)) = self.machine.probe_check(id, kind) else {
            return;
        };
        let check = check.clone();
        let cfg = self.machine.program(id);
        let tx = self.internal_tx.clone();
        match check {
            ReadinessCheck::Tcp { .. } | ReadinessCheck::Http { .. } => {
                tokio::spawn(async move {
                    let result = match &check {
                        ReadinessCheck::Tcp { address } => probe::tcp(address, timeout).await,
                        ReadinessCheck::Http { url } => probe::http(url, timeout).await,
                        _ => return,
                    };
                    let _ = tx
                        .send(Internal::Probe {
                            program: id,
                            pid,
                            kind,
                            result,
                        })
                        .await;
                });
            }
            ReadinessCheck::Exec { command } => {
                let env = vec![
                    (ENV_PROGRAM.to_string(), cfg.name.clone()),
                    ("IOT2MQTT_SV_PID".to_string(), pid.to_string()),
                ];
                match spawn::spawn_probe(&command, &env) {
                    Ok(probe_pid) => {
                        self.probes.insert(
                            probe_pid,
                            ExecProbe {
                                program: id,
                                pid,
                                kind,
                                deadline: Instant::now() + timeout,
                            },
                        );
                    }
                    Err(e) => self.machine.handle(
                        Instant::now(),
                        Input::ProbeResult {
                            program: id,
                            pid,
                            kind,
                            result: Err(e.reason),
                        },
                    ),
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_internal(&mut self, msg: Internal) {
        let now = Instant::now();
        match msg {
            Internal::Probe {
                program,
                pid,
                kind,
                result,
            } => {
                self.machine.handle(
                    now,
                    Input::ProbeResult {
                        program,
                        pid,
                        kind,
                        result,
                    },
                );
            }
            Internal::LogMatched { program } => {
                if let Some(pid) = self.machine.pid(program) {
                    self.machine.handle(now, Input::Ready { program, pid });
                }
            }
            Internal::Notify { program, messages } => {
                // Each program has its own socket (systemd's NotifyAccess=all): any process of
                // the program may speak for it, which is what `systemd-notify` from a shell needs.
                let Some(pid) = self.machine.pid(program) else {
                    return;
                };
                for m in messages {
                    let input = match m {
                        Notify::Ready => Some(Input::Ready { program, pid }),
                        Notify::Watchdog => Some(Input::WatchdogPing { program, pid }),
                        Notify::Status(text) => Some(Input::StatusText { program, pid, text }),
                        Notify::MainPid(main_pid) if main_pid != pid => {
                            // Only a descendant of ours may become a program's main process:
                            // anything else would let a program have us signal a stranger.
                            // Whether it leads a group is recorded now: a daemon left in its
                            // wrapper's group must be signalled as a process.
                            match signals::live_descendant(main_pid) {
                                Some(st) => Some(Input::MainPid {
                                    program,
                                    pid,
                                    main_pid,
                                    leads_group: st.pgrp == main_pid,
                                }),
                                None => {
                                    warn!(program = %self.name(program), main_pid, "ignoring MAINPID= of a process that is not ours");
                                    None
                                }
                            }
                        }
                        Notify::ExtendTimeoutUsec(us) => Some(Input::ExtendTimeout {
                            program,
                            pid,
                            by: Duration::from_micros(us),
                        }),
                        Notify::Stopping => {
                            info!(program = %self.name(program), "program reports it is stopping");
                            None
                        }
                        _ => None,
                    };
                    if let Some(i) = input {
                        self.machine.handle(now, i);
                    }
                }
            }
        }
    }

    /// Exec probes past their deadline are killed and reported as failed.
    pub(super) fn expire_probes(&mut self, now: Instant) {
        let expired: Vec<i32> = self
            .probes
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for probe_pid in expired {
            let _ = signals::send(probe_pid, Signal::Kill, true);
            self.finish_probe(now, probe_pid, Err("probe command timed out".into()));
        }
    }

    /// Whether the reaped `pid` was an exec probe; if so, its exit code is the probe's result.
    pub(super) fn probe_exited(&mut self, now: Instant, pid: i32, status: ExitStatus) -> bool {
        let result = match status.code() {
            0 => Ok(()),
            c => Err(format!("probe command exited with code {c}")),
        };
        self.finish_probe(now, pid, result)
    }

    /// Reports the result of the exec probe `probe_pid` to the machine; false when it is none.
    fn finish_probe(&mut self, now: Instant, probe_pid: i32, result: Result<(), String>) -> bool {
        let Some(p) = self.probes.remove(&probe_pid) else {
            return false;
        };
        self.machine.handle(
            now,
            Input::ProbeResult {
                program: p.program,
                pid: p.pid,
                kind: p.kind,
                result,
            },
        );
        true
    }
}

pub(super) fn resolve_uid(user: &str) -> Option<u32> {
    if let Ok(uid) = user.parse::<u32>() {
        return Some(uid);
    }
    nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12, point 5: a match while the loop's channel is full must still arrive.
    #[tokio::test]
    async fn log_readiness_survives_a_full_channel() {
        let (tx, mut rx) = mpsc::channel::<Internal>(1);
        tx.try_send(Internal::LogMatched {
            program: ProgramId(7),
        })
        .expect("room for the filler");
        let hook = log_ready_hook(
            regex::Regex::new("listening").expect("pattern"),
            ProgramId(0),
            tx,
        );
        hook("server listening on :80");
        hook("server listening again");
        let filler = rx.recv().await.expect("the filler");
        assert!(matches!(filler, Internal::LogMatched { program } if program == ProgramId(7)));
        let ready = tokio::time::timeout(sv_testkit::WAIT, rx.recv())
            .await
            .expect("the readiness report was lost")
            .expect("channel open");
        assert!(matches!(ready, Internal::LogMatched { program } if program == ProgramId(0)));
        // Once only: the second match sends nothing.
        assert!(rx.try_recv().is_err());
    }
}
