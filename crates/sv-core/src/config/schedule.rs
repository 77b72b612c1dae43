//! The schedule keys of `[program.NAME]`: `schedule` or `every`, `run_on_start`, `overlap`.
//!
//! A scheduled program runs when its time comes, not at start-up, so its defaults differ:
//! `autostart` is off (a run is started by the schedule, `run_on_start`, or `start NAME`),
//! `autorestart` is `false` (a failed run is not retried at once: the next run is the retry),
//! `startsecs` is 0 (a run that ends quickly is a run, not a failed start), `startretries` is 0
//! (a run that cannot be spawned is a failed run, not a series of retries) and `critical` is
//! `false`. `autostart` and `autorestart` cannot be set on a scheduled program; `startsecs` and
//! `critical` can.

use super::diag::Sink;
use super::model::{AutoRestart, ProgramConfig};
use super::value::Table;
use crate::schedule::{CronPattern, Overlap, ScheduleConfig, Trigger};

/// Reads the schedule keys into `p` and applies the scheduled defaults.
pub(super) fn schedule(table: &Table<'_, '_>, p: &mut ProgramConfig, sink: &mut Sink) {
    let cron = table.get("schedule");
    let every = table.get("every");
    let trigger = match (&cron, &every) {
        (Some(_), Some(e)) => {
            e.error(sink, "give either \"schedule\" or \"every\", not both");
            None
        }
        (Some(f), None) => {
            let text = f.str(sink);
            text.and_then(|t| match CronPattern::parse(t) {
                Ok(c) => Some(Trigger::Cron(c)),
                Err(e) => {
                    f.error(
                        sink,
                        format!("\"schedule\" is not a valid cron pattern: {e}"),
                    );
                    None
                }
            })
        }
        (None, Some(f)) => f.duration(sink, true).map(Trigger::Every),
        (None, None) => {
            for key in ["run_on_start", "overlap"] {
                if let Some(f) = table.get(key) {
                    sink.error(
                        &f.key_span,
                        format!("\"{key}\" needs \"schedule\" or \"every\""),
                    );
                }
            }
            return;
        }
    };
    let run_on_start = table.get("run_on_start").and_then(|f| f.bool(sink));
    let overlap =
        table
            .get("overlap")
            .and_then(|f| match f.choice(sink, &["skip", "queue", "allow"])? {
                "queue" => Some(Overlap::Queue),
                "allow" => {
                    f.error(
                    sink,
                    "overlap = \"allow\" is not supported: a program runs one process at a time; \
                     use \"skip\" or \"queue\", or a second [program] with the same command",
                );
                    None
                }
                _ => Some(Overlap::Skip),
            });
    for key in ["autostart", "autorestart"] {
        if let Some(f) = table.get(key) {
            sink.error(
                &f.key_span,
                format!(
                    "\"{key}\" does not apply to a scheduled program: runs are started by the \
                     schedule (or \"run_on_start\", or `start`), and a failed run waits for the next one"
                ),
            );
        }
    }
    p.autostart = false;
    p.autorestart = AutoRestart::Never;
    if table.get("startsecs").is_none() {
        p.startsecs = std::time::Duration::ZERO;
    }
    if table.get("startretries").is_none() {
        p.startretries = 0;
    }
    if table.get("critical").is_none() {
        p.critical = false;
    }
    if let Some(trigger) = trigger {
        p.schedule = Some(ScheduleConfig {
            trigger,
            run_on_start: run_on_start.unwrap_or(false),
            overlap: overlap.unwrap_or_default(),
        });
    }
}
