//! Scheduled programs through the real `iot2mqtt-sv run`: `run_on_start`, runs on an `every`
//! interval, `overlap = "skip"` never starting a second run, exit codes counted without an
//! immediate restart, `stop` pausing the schedule. Each run appends a line to a file, so runs
//! are observed by what the runs did, with bounded waits.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{Sv, child_cmd, lines, toml_str};
use serde_json::Value;
use sv_testkit::wait_until;

/// A scheduled `job` whose every run appends `run` to `<dir>/runs` and then runs `extra`.
fn job(sv_dir: &std::path::Path, keys: &str, extra: &[&str]) -> String {
    let runs = sv_dir.join("runs").display().to_string();
    let mut args = vec!["--append", runs.as_str(), "run"];
    args.extend_from_slice(extra);
    format!(
        "[supervisor.http]\nlisten = \"127.0.0.1:0\"\n\n\
         [program.web]\ncommand = {}\n\n[program.job]\ncommand = {}\n{keys}\n",
        child_cmd(&[]),
        child_cmd(&args)
    )
}

fn start(keys: &str, extra: &[&str]) -> Sv {
    let dir = Sv::new_dir();
    let config = job(dir.path(), keys, extra);
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    sv
}

fn schedule(sv: &Sv) -> Value {
    sv.program("job")["schedule"].clone()
}

#[test]
fn run_on_start_runs_at_once_even_with_a_long_interval() {
    let sv = start(
        "every = \"1h\"\nrun_on_start = true\n",
        &["--exit-after-ms", "0"],
    );
    let s = sv.wait_program("the first run recorded", "job", |p| {
        p["schedule"]["runs"] == 1
    });
    assert_eq!(lines(&sv.path("runs")), ["run"]);
    assert_eq!(s["state"], "EXITED", "{s}");
    assert_eq!(s["schedule"]["last_exit_code"], 0, "{s}");
    assert_eq!(s["schedule"]["trigger"], "every 3600s", "{s}");
    assert!(s["schedule"]["next_run"].is_string(), "{s}");
    // Not critical: a scheduled program between runs leaves the supervisor healthy.
    sv.wait_state("web", "RUNNING");
    assert_eq!(sv.status_json()["healthy"], true);
}

#[test]
fn every_runs_again_and_again_and_counts_failed_exit_codes() {
    let sv = start(
        "every = \"100ms\"\n",
        &["--exit-after-ms", "0", "--exit", "3"],
    );
    let s = sv.wait_program("three failed runs", "job", |p| {
        p["schedule"]["failed_runs"]
            .as_u64()
            .is_some_and(|n| n >= 3)
    });
    assert_eq!(s["schedule"]["last_exit_code"], 3, "{s}");
    assert_eq!(s["schedule"]["last_ok"], false, "{s}");
    // Each recorded run ran the program (which wrote its line before exiting).
    let runs = s["schedule"]["runs"].as_u64().unwrap_or(0) as usize;
    let written = lines(&sv.path("runs")).len();
    assert!(written >= runs, "{written} lines for {runs} runs");
    // A failing run does not stop the supervisor or the other program.
    sv.wait_state("web", "RUNNING");
    sv.wait_program("another failed run", "job", |p| {
        p["schedule"]["failed_runs"].as_u64() > s["schedule"]["failed_runs"].as_u64()
    });
    let text = sv.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("last run exit 3"), "{text}");
    let addr = sv.status_json()["supervisor"]["http"]
        .as_str()
        .expect("http address")
        .to_string();
    let metrics = common::http(&addr, "GET", "/metrics").body;
    let failed = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("iot2mqtt_sv_program_scheduled_failed_runs_total{program=\"job\"} ")
        })
        .and_then(|v| v.parse::<u64>().ok());
    assert!(failed.is_some_and(|n| n >= 3), "{metrics}");
    assert!(
        !metrics.contains("scheduled_runs_total{program=\"web\"}"),
        "{metrics}"
    );
}

#[test]
fn overlap_skip_never_starts_a_second_run_while_one_is_going() {
    // Every run would take forever: only the first one may ever start.
    let sv = start(
        &format!(
            "every = \"100ms\"\nrun_on_start = true\noverlap = {}\n",
            toml_str("skip")
        ),
        &[],
    );
    sv.wait_program("three skipped runs", "job", |p| {
        p["schedule"]["skipped_runs"]
            .as_u64()
            .is_some_and(|n| n >= 3)
    });
    assert_eq!(lines(&sv.path("runs")), ["run"]);
    let s = sv.program("job");
    assert_eq!(s["state"], "RUNNING", "{s}");
    assert_eq!(s["schedule"]["runs"], 0, "{s}");
    assert!(
        sv.stderr()
            .contains("run due while the last one is still going: skipped"),
        "{}",
        sv.stderr()
    );
}

#[test]
fn stop_pauses_the_schedule_until_start() {
    let sv = start("every = \"100ms\"\n", &["--exit-after-ms", "0"]);
    sv.wait_program("a run", "job", |p| {
        p["schedule"]["runs"].as_u64() >= Some(1)
    });
    let out = sv.cli(&["stop", "job"]);
    assert!(out.status.success(), "{out:?}");
    let s = schedule(&sv);
    assert_eq!(s["paused"], true, "{s}");
    assert_eq!(s["next_run"], Value::Null, "{s}");
    let runs_then = lines(&sv.path("runs")).len();
    // `start` runs it now and resumes the 100 ms schedule.
    let out = sv.cli(&["start", "job"]);
    assert!(out.status.success(), "{out:?}");
    wait_until("runs again after start", || {
        lines(&sv.path("runs")).len() >= runs_then + 2
    });
    assert_eq!(schedule(&sv)["paused"], false);
}

#[test]
fn check_refuses_overlap_allow_and_autostart_with_positions() {
    let dir = Sv::new_dir();
    let out = common::check(
        dir.path(),
        "[program.job]\ncommand = \"true\"\nevery = \"1m\"\noverlap = \"allow\"\nautostart = true\n",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 4, column 11: overlap = \"allow\" is not supported"),
        "{err}"
    );
    assert!(
        err.contains("line 5, column 1: \"autostart\" does not apply to a scheduled program"),
        "{err}"
    );
}
