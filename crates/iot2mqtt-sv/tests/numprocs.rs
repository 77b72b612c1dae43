//! `numprocs` end to end with the real binary: `status` lists every instance with its group,
//! `{num}` reaches each instance's argv and environment, `restart GROUP` restarts every
//! instance and `restart INSTANCE` only that one, and `check` reports template errors with
//! their position.

mod common;

use common::{Sv, check, child_cmd, read, toml_str, wait_pid_file};
use serde_json::Value;

fn pid(sv: &Sv, name: &str) -> i64 {
    sv.program(name)["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("{name} has no pid"))
}

/// Three instances of `worker` (numbered from 1), each writing its pid to `w{num}.pid` and its
/// environment to `env{num}`, and a plain `other` program.
fn config(sv_dir: &std::path::Path) -> String {
    let pid_file = sv_dir.join("w{num}.pid").display().to_string();
    let env_file = sv_dir.join("env{num}").display().to_string();
    format!(
        "[program.worker]\ncommand = {}\nnumprocs = 3\nnumprocs_start = 1\nstartsecs = 0\n\
         environment = {{ SLOT = \"slot-{{num:02}}\" }}\n\n\
         [program.other]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&["--pid-file", &pid_file, "--report-env", &env_file]),
        child_cmd(&[]),
    )
}

#[test]
fn instances_are_listed_addressed_by_group_and_one_by_one() {
    let dir = Sv::new_dir();
    let cfg = config(dir.path());
    let sv = Sv::spawn_in(dir, &cfg, Default::default());
    sv.wait_socket();
    for n in ["worker_01", "worker_02", "worker_03", "other"] {
        sv.wait_state(n, "RUNNING");
    }

    // `status --json`: the instances, each with its group; the plain program without one.
    let out = sv.cli(&["status", "--json"]);
    assert!(out.status.success());
    let status: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let listed: Vec<(String, Value)> = status["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["group"].clone(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("other".to_string(), Value::Null),
            ("worker_01".to_string(), Value::from("worker")),
            ("worker_02".to_string(), Value::from("worker")),
            ("worker_03".to_string(), Value::from("worker")),
        ],
        "{status}"
    );

    // `{num}` reached argv (the pid file name) and the environment.
    for n in 1..=3 {
        let file_pid = wait_pid_file(&sv.path(&format!("w{n}.pid")));
        assert_eq!(i64::from(file_pid), pid(&sv, &format!("worker_0{n}")));
        let env = read(&sv.path(&format!("env{n}")));
        assert!(env.lines().any(|l| l == format!("SLOT=slot-0{n}")), "{env}");
        assert!(
            env.lines()
                .any(|l| l == format!("IOT2MQTT_SV_PROGRAM=worker_0{n}")),
            "{env}"
        );
    }

    // One instance: only it gets a new pid.
    let before: Vec<i64> = ["worker_01", "worker_02", "worker_03", "other"]
        .iter()
        .map(|n| pid(&sv, n))
        .collect();
    let out = sv.cli(&["restart", "worker_02"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after: Vec<i64> = ["worker_01", "worker_02", "worker_03", "other"]
        .iter()
        .map(|n| pid(&sv, n))
        .collect();
    assert_eq!(after[0], before[0]);
    assert_ne!(after[1], before[1]);
    assert_eq!(after[2], before[2]);
    assert_eq!(after[3], before[3]);

    // The group: every instance, and nothing else.
    let out = sv.cli(&["restart", "worker", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = serde_json::from_slice(&out.stdout).expect("restart --json");
    let restarted: Vec<&str> = reply["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        restarted,
        ["worker_01", "worker_02", "worker_03"],
        "{reply}"
    );
    let again: Vec<i64> = ["worker_01", "worker_02", "worker_03", "other"]
        .iter()
        .map(|n| pid(&sv, n))
        .collect();
    for i in 0..3 {
        assert_ne!(again[i], after[i], "instance {i} was not restarted");
    }
    assert_eq!(again[3], after[3], "other was restarted with the group");
}

#[test]
fn check_reports_template_errors_with_positions() {
    let dir = Sv::new_dir();
    let cfg = format!(
        "[program.worker]\ncommand = {}\nnumprocs = 2\nprocess_name = {}\n",
        toml_str("/bin/true"),
        toml_str("worker")
    );
    let out = check(dir.path(), &cfg);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "line 4, column 16: \"process_name\" \"worker\" must contain {num} when numprocs > 1"
        ),
        "{err}"
    );
}
