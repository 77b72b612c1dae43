//! Scheduled programs: `schedule = "*/5 * * * *"` (cron, in the supervisor's `TZ`) or
//! `every = "10m"`, with `run_on_start` and `overlap`.
//!
//! Pure, like the rest of the core: the runtime tells the machine the wall-clock time that goes
//! with a monotonic `now` ([`crate::machine::Machine::set_wall_clock`]) and the time zone; this
//! module turns "the next cron time after this wall-clock instant" into a monotonic deadline, so
//! the loop sleeps until the next run with no periodic tick.
//!
//! Cron times are wall-clock times in the zone (as cron does): the pattern is matched in civil
//! time, then the civil time is placed in the zone. A civil time that does not exist (the hour
//! skipped when DST starts) runs at the same offset after the change (02:30 becomes 03:30 in
//! Europe/Berlin); a civil time that occurs twice (the hour repeated when DST ends) runs once,
//! at its first occurrence.

use std::str::FromStr;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A parsed cron pattern (five fields, or six with seconds first), compared by its text.
#[derive(Debug, Clone)]
pub struct CronPattern {
    text: String,
    /// Boxed: a parsed pattern is a few hundred bytes, and most programs have none.
    cron: Box<croner::Cron>,
}

impl PartialEq for CronPattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl CronPattern {
    /// Parses a pattern; the error is croner's message.
    pub fn parse(text: &str) -> Result<CronPattern, String> {
        let cron = croner::Cron::from_str(text).map_err(|e| e.to_string())?;
        Ok(CronPattern {
            text: text.to_string(),
            cron: Box::new(cron),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first run strictly after `after`, in `tz`; `None` when the pattern never matches
    /// again (e.g. February 30th).
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let mut civil = tz.to_datetime(after);
        // A few rounds at most: only a civil time mapped to an instant not after `after` (the
        // second pass of a repeated hour) needs another.
        for _ in 0..8 {
            let naive = to_naive(civil)?;
            let next = self.cron.find_next_occurrence(&naive, false).ok()?;
            civil = from_naive(next)?;
            // `compatible`: a skipped time moves forward by the gap, a repeated one takes its
            // first occurrence.
            let at = tz.to_ambiguous_timestamp(civil).compatible().ok()?;
            if at > after {
                return Some(at);
            }
        }
        None
    }
}

fn to_naive(dt: jiff::civil::DateTime) -> Option<chrono::NaiveDateTime> {
    let date = chrono::NaiveDate::from_ymd_opt(
        i32::from(dt.year()),
        u32::try_from(dt.month()).ok()?,
        u32::try_from(dt.day()).ok()?,
    )?;
    date.and_hms_opt(
        u32::try_from(dt.hour()).ok()?,
        u32::try_from(dt.minute()).ok()?,
        u32::try_from(dt.second()).ok()?,
    )
}

fn from_naive(n: chrono::NaiveDateTime) -> Option<jiff::civil::DateTime> {
    use chrono::{Datelike, Timelike};
    jiff::civil::DateTime::new(
        i16::try_from(n.year()).ok()?,
        i8::try_from(n.month()).ok()?,
        i8::try_from(n.day()).ok()?,
        i8::try_from(n.hour()).ok()?,
        i8::try_from(n.minute()).ok()?,
        i8::try_from(n.second()).ok()?,
        0,
    )
    .ok()
}

/// When a scheduled program runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// `schedule`: a cron pattern in the supervisor's `TZ`.
    Cron(CronPattern),
    /// `every`: a fixed interval, measured on the monotonic clock from the supervisor's start.
    Every(Duration),
}

/// What happens when a run is due while the previous one is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlap {
    /// `"skip"` (default): the due run is skipped (counted and logged).
    #[default]
    Skip,
    /// `"queue"`: one run is started as soon as the current one ends (further due runs while
    /// one is queued are skipped).
    Queue,
}

/// The schedule keys of a `[program.NAME]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    /// `schedule` or `every`.
    pub trigger: Trigger,
    /// `run_on_start`: also run once when the supervisor starts. Default false.
    pub run_on_start: bool,
    /// `overlap`: default `"skip"`.
    pub overlap: Overlap,
}

/// A scheduled program's run history and next run, as `status` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScheduleStatus {
    /// `"*/5 * * * *"` or `"every 10m"`.
    pub trigger: String,
    /// The next run (RFC 3339 in the time zone); null while stopped by request.
    pub next_run: Option<String>,
    /// When the last run ended (RFC 3339).
    pub last_run: Option<String>,
    /// The last run's exit code (`128 + signal` when killed by one).
    pub last_exit_code: Option<i32>,
    /// Whether the last run's exit code was in `exitcodes`.
    pub last_ok: Option<bool>,
    /// Runs that ended since the supervisor started.
    pub runs: u64,
    /// Runs that ended with an exit code not in `exitcodes`.
    pub failed_runs: u64,
    /// Due runs skipped because a run was still going (`overlap = "skip"`).
    pub skipped_runs: u64,
    /// Stopped by request: no runs until `start`.
    pub paused: bool,
}

/// The schedule's state inside the machine.
#[derive(Debug, Clone)]
pub(crate) struct Sched {
    pub(crate) cfg: ScheduleConfig,
    /// The monotonic deadline of the next run.
    pub(crate) due: Option<Instant>,
    /// The same, in wall-clock time (for `status`).
    pub(crate) due_at: Option<Timestamp>,
    pub(crate) queued: bool,
    pub(crate) paused: bool,
    pub(crate) runs: u64,
    pub(crate) failed: u64,
    pub(crate) skipped: u64,
    pub(crate) last: Option<(Timestamp, i32, bool)>,
}

impl Sched {
    pub(crate) fn new(cfg: ScheduleConfig) -> Sched {
        Sched {
            cfg,
            due: None,
            due_at: None,
            queued: false,
            paused: false,
            runs: 0,
            failed: 0,
            skipped: 0,
            last: None,
        }
    }

    /// Sets the next deadline after `now` (wall-clock `wall`). An interval counts from the
    /// previous deadline when that is recent, so runs do not drift by the loop's latency.
    pub(crate) fn plan(&mut self, now: Instant, wall: Timestamp, tz: &TimeZone) {
        match &self.cfg.trigger {
            Trigger::Every(d) => {
                let base = self
                    .due
                    .filter(|&t| t <= now && now.saturating_duration_since(t) < *d)
                    .unwrap_or(now);
                let due = base + *d;
                self.due = Some(due);
                self.due_at = wall.checked_add(due.saturating_duration_since(now)).ok();
            }
            Trigger::Cron(c) => {
                self.due_at = c.next_after(wall, tz);
                self.due = self.due_at.and_then(|at| {
                    let wait = wall.duration_until(at).unsigned_abs();
                    now.checked_add(wait)
                });
            }
        }
    }

    /// Records the end of a run.
    pub(crate) fn finished(&mut self, wall: Timestamp, code: i32, ok: bool) {
        self.runs += 1;
        if !ok {
            self.failed += 1;
        }
        self.last = Some((wall, code, ok));
    }

    pub(crate) fn status(&self, tz: &TimeZone) -> ScheduleStatus {
        let show = |t: Timestamp| {
            t.to_zoned_datetime(tz.clone())
                .strftime("%Y-%m-%dT%H:%M:%S%:z")
                .to_string()
        };
        ScheduleStatus {
            trigger: match &self.cfg.trigger {
                Trigger::Cron(c) => c.as_str().to_string(),
                Trigger::Every(d) => format!("every {d:?}"),
            },
            next_run: if self.paused {
                None
            } else {
                self.due_at.map(show)
            },
            last_run: self.last.map(|(t, _, _)| show(t)),
            last_exit_code: self.last.map(|(_, c, _)| c),
            last_ok: self.last.map(|(_, _, ok)| ok),
            runs: self.runs,
            failed_runs: self.failed,
            skipped_runs: self.skipped,
            paused: self.paused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin() -> TimeZone {
        TimeZone::get("Europe/Berlin").expect("the tz database has Europe/Berlin")
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    fn next(pattern: &str, after: &str) -> String {
        let c = CronPattern::parse(pattern).expect("valid");
        c.next_after(at(after), &berlin())
            .expect("a next run")
            .to_string()
    }

    #[test]
    fn every_five_minutes_is_on_the_wall_clock_minute() {
        assert_eq!(
            next("*/5 * * * *", "2026-07-01T10:02:13Z"),
            "2026-07-01T10:05:00Z"
        );
    }

    #[test]
    fn a_daily_time_is_local_time_on_both_sides_of_dst() {
        // 07:00 in Berlin is 05:00 UTC in summer (CEST) and 06:00 UTC in winter (CET).
        assert_eq!(
            next("0 7 * * *", "2026-07-01T12:00:00Z"),
            "2026-07-02T05:00:00Z"
        );
        assert_eq!(
            next("0 7 * * *", "2026-12-01T12:00:00Z"),
            "2026-12-02T06:00:00Z"
        );
    }

    #[test]
    fn a_time_skipped_by_dst_runs_shifted_by_the_gap() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist and runs at 03:30 CEST.
        assert_eq!(
            next("30 2 * * *", "2026-03-28T23:00:00Z"),
            "2026-03-29T01:30:00Z"
        );
    }

    #[test]
    fn a_time_repeated_by_dst_runs_once() {
        // 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice, runs on the first.
        let first = next("30 2 * * *", "2026-10-24T23:00:00Z");
        assert_eq!(first, "2026-10-25T00:30:00Z");
        // After the first, the next is the following day, not the repeated 02:30 CET.
        assert_eq!(next("30 2 * * *", &first), "2026-10-26T01:30:00Z");
    }

    #[test]
    fn impossible_dates_never_run_and_bad_patterns_are_refused() {
        let c = CronPattern::parse("0 0 30 2 *").expect("valid syntax");
        assert_eq!(c.next_after(at("2026-01-01T00:00:00Z"), &berlin()), None);
        assert!(CronPattern::parse("61 * * * *").is_err());
        assert!(CronPattern::parse("* * *").is_err());
    }
}
