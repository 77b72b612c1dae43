//! Pending `start`/`stop`/`restart`/`reload` requests: each waits until every program it
//! names has reached its goal, can no longer reach it, the supervisor shuts down, or
//! [`CONTROL_WAIT`] has passed; then it is answered with where each program stands.
//!
//! Whether a goal is reached or out of reach is the machine's decision
//! ([`sv_core::machine::Machine::progress`]); this file only decides when to answer and
//! renders the reply.

use std::time::{Duration, Instant};

use sv_core::machine::{Goal, ProgramId, Progress};
use tokio::sync::oneshot;

use super::Supervisor;
use crate::control::{code, error_reply, ok_reply};

#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) ids: Vec<(ProgramId, Goal)>,
    pub(super) extra: Option<serde_json::Value>,
    pub(super) deadline: Instant,
    pub(super) reply: oneshot::Sender<serde_json::Value>,
}

/// How long a `start`/`stop`/`restart` request waits for its goal before answering anyway.
pub(super) const CONTROL_WAIT: Duration = Duration::from_secs(60);

impl Supervisor {
    pub(super) fn check_waiters(&mut self, now: Instant) {
        if self.waiters.is_empty() {
            return;
        }
        let shutting_down = self.machine.is_shutting_down();
        let waiters = std::mem::take(&mut self.waiters);
        for w in waiters {
            let mut done = true;
            let mut results = Vec::new();
            for &(id, goal) in &w.ids {
                let progress = self.machine.progress(id, goal);
                // During a shutdown every request is answered at once, with where things stand.
                if progress == Progress::Pending && !shutting_down && now < w.deadline {
                    done = false;
                    break;
                }
                let reached = progress == Progress::Reached;
                if self.machine.is_removed(id) {
                    // Gone: what a removal waits for, and the end of any other wait.
                    results.push(serde_json::json!({
                        "name": self.name(id), "ok": reached, "state": "REMOVED", "pid": null,
                        "message": (!reached).then_some("removed by a reload"),
                    }));
                    continue;
                }
                let s = self.machine.status(now, id);
                results.push(serde_json::json!({
                    "name": s.name, "ok": reached, "state": s.state, "pid": s.pid, "message": s.reason,
                }));
            }
            if !done {
                self.waiters.push(w);
                continue;
            }
            let ok = results.iter().all(|r| r["ok"] == true);
            let mut reply = if ok {
                ok_reply(serde_json::json!({"results": results}))
            } else {
                let mut v = error_reply(code::FAILED, "not every program reached its goal");
                v["results"] = serde_json::Value::Array(results);
                v
            };
            if let (Some(obj), Some(serde_json::Value::Object(extra))) =
                (reply.as_object_mut(), w.extra)
            {
                obj.extend(extra);
            }
            let _ = w.reply.send(reply);
        }
    }
}
