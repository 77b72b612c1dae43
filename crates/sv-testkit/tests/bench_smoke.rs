//! Keeps the benchmark harness from rotting: runs `scripts/bench --smoke` against the debug
//! binary and checks that it completes and prints a row for every scenario.
//!
//! Nothing here asserts on time. A smoke run uses tiny durations and measures nothing worth
//! reading; the targets are judged by the harness itself, in full runs (docs/benchmarks.md).
#![forbid(unsafe_code)]
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sv_testkit::{cargo_bin, mosquitto_required, tempdir, wait_for};

/// The harness must finish well within this; it is a bound against hangs, not a speed check.
const BOUND: Duration = Duration::from_secs(100);

fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p)
            .chain([PathBuf::from("/usr/sbin")])
            .any(|d| d.join(prog).is_file())
    })
}

/// Stops the harness if the test fails while it runs: SIGTERM lets it kill what it started.
struct Harness(Child);

impl Drop for Harness {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
            let _ = wait_for("the harness to stop", Duration::from_secs(10), || {
                self.0.try_wait().ok().flatten()
            });
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn bench_smoke_run_prints_every_scenario() {
    if !sv_testkit::require(sv_testkit::Requirement::Python) {
        return;
    }
    // Rust links with cc on Linux: a machine that built this test has it.
    assert!(on_path("cc"), "scripts/bench needs cc");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = std::env::var_os("IOT2MQTT_SV_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| cargo_bin("iot2mqtt-sv"));
    let dir = tempdir().expect("tempdir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let child = Command::new(root.join("scripts/bench"))
        .arg("--smoke")
        .env("IOT2MQTT_SV_BIN", &bin)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("running scripts/bench");
    let mut harness = Harness(child);
    let status = wait_for("scripts/bench --smoke to finish", BOUND, || {
        harness.0.try_wait().expect("waiting for scripts/bench")
    });
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.success(),
        "scripts/bench --smoke failed ({status})\n--- stdout\n{out}\n--- stderr\n{err}"
    );

    let mut rows = vec![
        "| 1 memory | supervisor RSS | iot2mqtt-sv |",
        "| 2 start | exec → all 4 running | iot2mqtt-sv |",
        "| 3 respawn | SIGKILL → running again | iot2mqtt-sv |",
        "| 4 shutdown | SIGTERM → exit (4 prompt) | iot2mqtt-sv |",
        "| 4 shutdown | SIGTERM → exit (1 ignores TERM, stopwait 1 s) | iot2mqtt-sv |",
        "| 5 idle | supervisor context switches / min | iot2mqtt-sv |",
        "| 8 logs | program bytes/s through the sink | iot2mqtt-sv |",
        "| 8 logs | program bytes/s through the sink | direct write (no supervisor) |",
        "| Target | Measured (medians) | Verdict |",
    ];
    let broker = ["mosquitto", "mosquitto_pub", "mosquitto_sub"]
        .iter()
        .all(|t| on_path(t));
    if broker || mosquitto_required() {
        rows.extend([
            "| 1 memory | bridge RSS | iot2mqtt-sv |",
            "| 6 throughput QoS 0 | messages/s received | iot2mqtt-sv |",
            "| 6 throughput QoS 1 | messages/s received | mosquitto_pub (direct) |",
            "| 7 commands | latency p99 | iot2mqtt-sv |",
        ]);
    } else {
        eprintln!("bridge scenarios not checked: mosquitto is not installed");
    }
    if on_path("supervisord") {
        rows.push("| 2 start | exec → all 4 running | supervisord |");
    }
    if on_path("s6-svscan") {
        rows.push("| 2 start | exec → all 4 running | s6 (s6-svscan) |");
    }
    for row in rows {
        assert!(
            out.contains(row),
            "no row starting {row:?} in the smoke run's table\n--- stdout\n{out}\n--- stderr\n{err}"
        );
    }
}
