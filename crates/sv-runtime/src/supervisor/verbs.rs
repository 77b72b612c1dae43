//! What each control request means: `status`, `health`, `start`, `stop`, `restart`,
//! `reload`, `signal`, `pid` and `ready`, answered from the loop that owns the machine.
//!
//! A request that changes programs feeds the machine its inputs and then waits for every
//! program to reach its goal (see `waiters.rs`); the others are answered at once. The wire
//! format (requests, replies, error codes) is `crate::control`'s and `docs/control-protocol.md`'s.

use std::time::Instant;

use sv_core::config::ReadinessCheck;
use sv_core::machine::{Goal, Input, ProgramId};
use sv_core::signal::Signal;
use tokio::sync::oneshot;

use super::Supervisor;
use super::waiters::{CONTROL_WAIT, Waiter};
use crate::control::{Request, code, error_reply, ok_reply};

/// A control request forwarded to the loop by a connection task.
#[derive(Debug)]
pub(crate) struct ControlMsg {
    pub(crate) request: Request,
    pub(crate) reply: oneshot::Sender<serde_json::Value>,
}

/// A control request's outcome: a reply now, or a wait for programs to reach their goals
/// (with fields to add to the final reply).
#[derive(Debug)]
enum Answer {
    Now(serde_json::Value),
    Wait(Vec<(ProgramId, Goal)>, Option<serde_json::Value>),
}

impl Supervisor {
    fn resolve(&self, names: &[String]) -> Result<Vec<ProgramId>, serde_json::Value> {
        if names.is_empty() {
            return Err(error_reply(code::BAD_REQUEST, "no program named"));
        }
        if names.iter().any(|n| n == "all") {
            return Ok(self.machine.ids().collect());
        }
        // A `numprocs` group name stands for all its instances; a program named twice (as
        // itself and through its group) is acted on once.
        let mut ids = Vec::new();
        for n in names {
            let found = self.machine.find_all(n);
            if found.is_empty() {
                return Err(error_reply(
                    code::UNKNOWN_PROGRAM,
                    format!("no program named {n:?}"),
                ));
            }
            for id in found {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    pub(super) fn on_control(&mut self, msg: ControlMsg) {
        let now = Instant::now();
        let ControlMsg { request, reply } = msg;
        match self.answer(now, request) {
            Answer::Now(v) => {
                let _ = reply.send(v);
            }
            Answer::Wait(ids, extra) => self.waiters.push(Waiter {
                ids,
                extra,
                deadline: now + CONTROL_WAIT,
                reply,
            }),
        }
    }

    fn answer(&mut self, now: Instant, request: Request) -> Answer {
        let answer = Answer::Now;
        match request {
            Request::Status => {
                let snap = self.snapshot(now);
                answer(ok_reply(serde_json::json!({
                    "supervisor": {
                        "pid": std::process::id(),
                        "mode": format!("{:?}", self.mode).to_lowercase(),
                        "http": self.http_addr,
                        "log_lines_dropped": crate::logs::own_lines_dropped(),
                    },
                    "status": snap,
                })))
            }
            Request::Health => {
                let snap = self.machine.snapshot(now);
                answer(ok_reply(
                    serde_json::json!({"healthy": snap.healthy, "reason": snap.reason}),
                ))
            }
            Request::Start { .. }
            | Request::Stop { .. }
            | Request::Restart { .. }
            | Request::Reload { .. }
                if self.machine.is_shutting_down() =>
            {
                answer(error_reply(
                    code::SHUTTING_DOWN,
                    "the supervisor is shutting down",
                ))
            }
            Request::Start { programs } => {
                self.order(now, &programs, Input::StartRequested, Goal::Running)
            }
            Request::Stop { programs } => {
                self.order(now, &programs, Input::StopRequested, Goal::Stopped)
            }
            Request::Restart { programs } => {
                self.order(now, &programs, Input::RestartRequested, Goal::Running)
            }
            Request::Reload { dry_run } => match self.reload(now, dry_run) {
                Err(reply) => answer(reply),
                Ok((plan, _)) if dry_run => answer(ok_reply(
                    serde_json::json!({"plan": plan, "applied": false, "results": []}),
                )),
                Ok((plan, goals)) => Answer::Wait(
                    goals,
                    Some(serde_json::json!({"plan": plan, "applied": true})),
                ),
            },
            Request::Signal { signal, programs } => {
                let sig = match signal.parse::<Signal>() {
                    Ok(s) => s,
                    Err(e) => return answer(error_reply(code::UNKNOWN_SIGNAL, e.to_string())),
                };
                match self.resolve(&programs) {
                    Ok(ids) => {
                        let mut results = Vec::new();
                        for id in ids {
                            let name = self.name(id).to_string();
                            let r = match self.machine.pid(id) {
                                Some(pid) => match self.signal_program(
                                    id,
                                    pid,
                                    sig,
                                    self.machine.signal_group(id),
                                ) {
                                    Ok(_) => {
                                        serde_json::json!({"name": name, "ok": true, "pid": pid})
                                    }
                                    Err(e) => {
                                        serde_json::json!({"name": name, "ok": false, "message": e.to_string()})
                                    }
                                },
                                None => {
                                    serde_json::json!({"name": name, "ok": false, "message": "not running"})
                                }
                            };
                            results.push(r);
                        }
                        let all_ok = results.iter().all(|r| r["ok"] == true);
                        answer(if all_ok {
                            ok_reply(serde_json::json!({"results": results}))
                        } else {
                            let mut v =
                                error_reply(code::FAILED, "some programs were not signalled");
                            v["results"] = serde_json::Value::Array(results);
                            v
                        })
                    }
                    Err(e) => answer(e),
                }
            }
            Request::Pid { program: None } => {
                answer(ok_reply(serde_json::json!({"pid": std::process::id()})))
            }
            Request::Pid {
                program: Some(name),
            } => match self.machine.find(&name) {
                Some(id) => answer(ok_reply(serde_json::json!({"pid": self.machine.pid(id)}))),
                None => answer(error_reply(
                    code::UNKNOWN_PROGRAM,
                    format!("no program named {name:?}"),
                )),
            },
            Request::Ready { program, pid } => match self.machine.find(&program) {
                Some(id) => {
                    if self.machine.program(id).readiness.check != ReadinessCheck::Bridge {
                        return answer(error_reply(
                            code::NOT_APPLICABLE,
                            format!("{program} does not use bridge readiness"),
                        ));
                    }
                    match (self.machine.pid(id), pid) {
                        (Some(cur), Some(p)) if cur != p => answer(error_reply(
                            code::NOT_APPLICABLE,
                            format!("{program} now runs as pid {cur}, not {p}"),
                        )),
                        (Some(cur), _) => {
                            self.machine.handle(
                                now,
                                Input::Ready {
                                    program: id,
                                    pid: cur,
                                },
                            );
                            answer(ok_reply(serde_json::json!({})))
                        }
                        (None, _) => answer(error_reply(
                            code::NOT_APPLICABLE,
                            format!("{program} is not running"),
                        )),
                    }
                }
                None => answer(error_reply(
                    code::UNKNOWN_PROGRAM,
                    format!("no program named {program:?}"),
                )),
            },
            // Served by the connection task itself.
            Request::Logs { .. } | Request::Watch => {
                answer(error_reply(code::BAD_REQUEST, "not a loop request"))
            }
        }
    }

    /// `start`/`stop`/`restart`: feeds one input per program, then waits for `goal`.
    fn order(
        &mut self,
        now: Instant,
        names: &[String],
        input: fn(ProgramId) -> Input,
        goal: Goal,
    ) -> Answer {
        match self.resolve(names) {
            Ok(ids) => {
                for &id in &ids {
                    self.machine.handle(now, input(id));
                }
                Answer::Wait(ids.into_iter().map(|id| (id, goal)).collect(), None)
            }
            Err(e) => Answer::Now(e),
        }
    }
}
