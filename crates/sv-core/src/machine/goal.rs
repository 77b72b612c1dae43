//! Whether a program can still reach what an operator's request waits for.
//!
//! `start`, `stop`, `restart` and `reload` answer once every program they name has reached its
//! [`Goal`], or once it never will. The second half is a judgement about the machine's future —
//! a FATAL program is not restarted by itself, a program held back by a dependency that nobody
//! will start waits for good — so the machine makes it, from its own typed state
//! ([`State`], [`BlockedOn`], the reload's hold), never from the text `status` shows. The runtime
//! only decides *when* to answer (at once during a shutdown, or after its own wait bound).

use super::{BlockedOn, Machine, Phase, ProgramId, Reason, State};
use crate::config::DependencyCondition;

/// What a request waits for a program to reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Ready and running (`start`, `restart`, a program a reload adds or redefines).
    Running,
    /// No process left and none on its way (`stop`).
    Stopped,
    /// Removed by a reload, its process gone.
    Removed,
}

/// Where a program stands with respect to a [`Goal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The goal holds now.
    Reached,
    /// Not yet, and it still may.
    Pending,
    /// It will not, unless something from outside (an operator, a reload) changes the picture.
    Unreachable,
}

impl Machine {
    /// Where program `id` stands with respect to `goal`.
    ///
    /// - [`Goal::Running`] is unreachable for a program that is FATAL or EXITED (nothing
    ///   restarts it by itself), for one held back by a dependency that is not on its way
    ///   ([`Machine::dependencies_on_the_way`]), for a removed one, and during a shutdown. While
    ///   a reload has yet to give the program its new definition, the goal is pending whatever
    ///   the state (a RUNNING state is the old definition's).
    /// - [`Goal::Stopped`] is reached once no process is left and none is being started.
    /// - [`Goal::Removed`] is reached once the reload has retired the program.
    pub fn progress(&self, id: ProgramId, goal: Goal) -> Progress {
        let p = &self.progs[id.0];
        if p.retired {
            return if goal == Goal::Removed {
                Progress::Reached
            } else {
                Progress::Unreachable
            };
        }
        match goal {
            Goal::Removed => Progress::Pending,
            Goal::Stopped => {
                if p.pid.is_none() && !matches!(p.state, State::Starting | State::Stopping) {
                    Progress::Reached
                } else {
                    Progress::Pending
                }
            }
            Goal::Running if self.reload_pending(id) => Progress::Pending,
            Goal::Running if p.state == State::Running => Progress::Reached,
            Goal::Running => {
                let given_up = matches!(p.state, State::Fatal | State::Exited);
                let stranded = self.waits_on_dependency(id)
                    && !self.dependencies_on_the_way(id, self.progs.len());
                if given_up || stranded || self.phase != Phase::Running {
                    Progress::Unreachable
                } else {
                    Progress::Pending
                }
            }
        }
    }

    /// Whether the program is STOPPED because one of its dependencies does not hold yet.
    fn waits_on_dependency(&self, id: ProgramId) -> bool {
        let p = &self.progs[id.0];
        p.state == State::Stopped
            && matches!(
                p.reason,
                Some(Reason::Blocked(BlockedOn::Dependency { .. }))
            )
    }

    /// Whether a program held back by its dependencies can expect them to come: one of them is
    /// starting, backing off or stopping (to restart), running towards a `completed`
    /// condition, held by a reload that will start it, or itself waiting for dependencies on
    /// their way. `depth` bounds the walk (the dependency graph is validated acyclic, so the
    /// number of programs is enough).
    fn dependencies_on_the_way(&self, id: ProgramId, depth: usize) -> bool {
        if depth == 0 {
            return false;
        }
        self.cfg[id.0].depends_on.iter().any(|(name, cond)| {
            let Some(d) = self.find(name) else {
                return false;
            };
            let dp = &self.progs[d.0];
            match dp.state {
                State::Starting | State::Backoff | State::Stopping => true,
                State::Running => *cond == DependencyCondition::Completed,
                State::Stopped => {
                    (dp.held && dp.want_running)
                        || (self.waits_on_dependency(d)
                            && self.dependencies_on_the_way(d, depth - 1))
                }
                State::Exited | State::Fatal => false,
            }
        })
    }
}
