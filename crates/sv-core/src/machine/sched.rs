//! The machine's side of scheduled programs (see [`crate::schedule`]): deadlines, overlap,
//! pause by `stop`, and the run history. Kept apart from the process life cycle, which a run
//! goes through unchanged: a due run is an internal `start`, and the end of a run is the
//! ordinary exit of a program with `autorestart = false`.
//!
//! Rules:
//! - runs happen only while the supervisor is running (none during a shutdown);
//! - a run is "going" from its start until its process has exited, including a wait for
//!   `depends_on` and the backoff of a failed spawn; a due run meanwhile is skipped or queued
//!   (`overlap`);
//! - `stop NAME` stops the current run and pauses the schedule; `start NAME` runs it now and
//!   resumes the schedule; `restart NAME` is a run now.

use std::time::Instant;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::{Event, Machine, Phase, ProgramId, State};
use crate::schedule::{Overlap, Sched, ScheduleStatus};

impl Machine {
    /// Tells the machine the wall-clock time at the monotonic instant `now`. Cron schedules
    /// need it; call it before [`Machine::start`] and before each [`Machine::handle_timeout`]
    /// (a clock that was stepped meanwhile is then noticed at the next deadline).
    pub fn set_wall_clock(&mut self, now: Instant, wall: Timestamp) {
        self.clock = Some((now, wall));
    }

    /// The time zone cron schedules are evaluated in (the supervisor's `TZ`). Default UTC.
    pub fn set_time_zone(&mut self, tz: TimeZone) {
        self.tz = tz;
    }

    /// The wall-clock time at `now`, extrapolated from the last [`Machine::set_wall_clock`].
    fn wall(&self, now: Instant) -> Timestamp {
        let Some((at, wall)) = self.clock else {
            return Timestamp::UNIX_EPOCH;
        };
        let signed = if now >= at {
            jiff::SignedDuration::try_from(now - at)
        } else {
            jiff::SignedDuration::try_from(at - now).map(|d| -d)
        };
        signed
            .ok()
            .and_then(|d| wall.checked_add(d).ok())
            .unwrap_or(wall)
    }

    /// At start-up: plans every schedule and starts the `run_on_start` runs.
    pub(super) fn schedule_start(&mut self, now: Instant) {
        for i in 0..self.sched.len() {
            if self.sched[i].is_none() {
                continue;
            }
            self.plan(now, i);
            if self.sched[i].as_ref().is_some_and(|s| s.cfg.run_on_start) {
                self.run(now, ProgramId(i));
            }
        }
    }

    /// A reload gave program `i` a new definition: its schedule (if any) starts afresh from
    /// `now`, counters included. `run_on_start` is for the supervisor's start only, so a reload
    /// never runs a job at once; its first run is the next one due.
    pub(super) fn reschedule(&mut self, now: Instant, i: usize) {
        self.sched[i] = self.cfg[i]
            .schedule
            .clone()
            .map(crate::schedule::Sched::new);
        if self.sched[i].is_some() {
            self.plan(now, i);
        }
    }

    fn plan(&mut self, now: Instant, i: usize) {
        let wall = self.wall(now);
        let tz = self.tz.clone();
        if let Some(s) = self.sched[i].as_mut() {
            s.plan(now, wall, &tz);
        }
    }

    /// The earliest schedule deadline, while running.
    pub(super) fn next_schedule_due(&self) -> Option<Instant> {
        if self.phase != Phase::Running {
            return None;
        }
        self.sched
            .iter()
            .flatten()
            .filter(|s| !s.paused)
            .filter_map(|s| s.due)
            .min()
    }

    /// Starts (or skips, or queues) every run due at `now`.
    pub(super) fn fire_schedules(&mut self, now: Instant) {
        if self.phase != Phase::Running {
            return;
        }
        for i in 0..self.sched.len() {
            let due = self.sched[i]
                .as_ref()
                .is_some_and(|s| !s.paused && s.due.is_some_and(|t| t <= now));
            if !due {
                continue;
            }
            self.plan(now, i);
            let id = ProgramId(i);
            if !self.run_going(id) {
                self.run(now, id);
                continue;
            }
            let Some(s) = self.sched[i].as_mut() else {
                continue;
            };
            let what = match s.cfg.overlap {
                Overlap::Queue if !s.queued => {
                    s.queued = true;
                    "run due while the last one is still going: queued".to_string()
                }
                _ => {
                    s.skipped += 1;
                    "run due while the last one is still going: skipped".to_string()
                }
            };
            self.events
                .push_back(Event::Scheduled { program: id, what });
        }
    }

    /// Whether a run of `id` is under way (or waiting to start).
    fn run_going(&self, id: ProgramId) -> bool {
        let p = &self.progs[id.0];
        p.live()
            || matches!(p.state, State::Starting | State::Backoff | State::Stopping)
            || (p.want_running && p.state == State::Stopped)
    }

    fn run(&mut self, now: Instant, id: ProgramId) {
        self.events.push_back(Event::Scheduled {
            program: id,
            what: "run due: starting".into(),
        });
        self.on_start_requested(now, id);
    }

    /// `stop NAME` on a scheduled program: no runs until `start NAME`.
    pub(super) fn schedule_paused(&mut self, id: ProgramId) {
        if let Some(s) = self.sched[id.0].as_mut() {
            s.paused = true;
            s.queued = false;
        }
    }

    /// `start NAME` on a scheduled program (the run itself is the ordinary start): resumes the
    /// schedule from now.
    pub(super) fn schedule_resumed(&mut self, now: Instant, id: ProgramId) {
        if self.sched[id.0].as_ref().is_some_and(|s| s.paused) {
            if let Some(s) = self.sched[id.0].as_mut() {
                s.paused = false;
            }
            self.plan(now, id.0);
        }
    }

    /// A scheduled program's process ended: record the run, start a queued one.
    pub(super) fn schedule_run_ended(&mut self, now: Instant, id: ProgramId, code: i32, ok: bool) {
        let wall = self.wall(now);
        let Some(s) = self.sched[id.0].as_mut() else {
            return;
        };
        s.finished(wall, code, ok);
        let queued = std::mem::take(&mut s.queued);
        if queued && !s.paused && self.phase == Phase::Running && !self.run_going(id) {
            self.run(now, id);
        }
    }

    pub(super) fn schedule_status(&self, id: ProgramId) -> Option<ScheduleStatus> {
        self.sched[id.0].as_ref().map(|s| s.status(&self.tz))
    }
}

/// One schedule state per program (`None` for unscheduled ones).
pub(super) fn schedules(cfg: &[crate::config::ProgramConfig]) -> Vec<Option<Sched>> {
    cfg.iter()
        .map(|p| p.schedule.clone().map(Sched::new))
        .collect()
}
