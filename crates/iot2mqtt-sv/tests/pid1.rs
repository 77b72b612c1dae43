//! The supervisor's init duties with the real binary: reaping orphans as PID 1 of a PID
//! namespace (the container case) and as a child subreaper (any other case), and sweeping
//! leftover descendants (SIGTERM, then SIGKILL) before exiting.
//!
//! PID-1 tests run `iot2mqtt-sv run` under `unshare --pid --fork --mount-proc --kill-child`.
//! Creating a PID namespace needs root or user namespaces; without them those tests print a
//! skip line. The test process reads the host's /proc, where the namespace's processes are
//! visible with their host pids, so "orphan re-parented to the supervisor" is `ppid ==
//! supervisor's host pid` and "reaped" is "gone from /proc" (an unreaped orphan stays a zombie).
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{Sv, SvOptions, alive, child_cmd, children_of, wait_pid_file};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use sv_testkit::{WAIT, wait_for, wait_until};

fn pid_namespaces_usable() -> bool {
    sv_testkit::require(sv_testkit::Requirement::Unshare)
}

/// Starts the supervisor as PID 1 of a new PID namespace; returns it with the supervisor's host
/// pid, which also becomes the target of [`Sv::signal`] (`unshare` does not forward signals).
fn start_as_pid1(config: &str) -> (Sv, i32) {
    let opts = SvOptions {
        wrap: ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let mut sv = Sv::spawn(config, opts);
    let wrapper = sv.pid();
    let host_pid = wait_for("the supervisor under unshare", WAIT, || {
        children_of(wrapper).first().map(|c| c.0)
    });
    sv.set_signal_pid(host_pid);
    sv.wait_socket();
    (sv, host_pid)
}

/// Live `sleep` processes whose parent is `ppid`.
fn sleeping_orphans(ppid: i32) -> Vec<i32> {
    children_of(ppid)
        .into_iter()
        .filter(|(_, comm, state)| comm == "sleep" && *state != 'Z')
        .map(|(pid, ..)| pid)
        .collect()
}

fn zombies_of(ppid: i32) -> Vec<(i32, String, char)> {
    children_of(ppid)
        .into_iter()
        .filter(|c| c.2 == 'Z')
        .collect()
}

fn events(sv: &Sv, message: &str) -> Vec<Value> {
    sv.stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// Orphans of `spawner` (pid file `pidf`) are adopted by `sup`; once killed they are reaped.
fn assert_adopts_and_reaps(sv: &Sv, sup: i32, pidf: &std::path::Path, n: usize) {
    wait_pid_file(pidf);
    let orphans = wait_for(&format!("{n} orphans adopted by {sup}"), WAIT, || {
        let o = sleeping_orphans(sup);
        (o.len() >= n).then_some(o)
    });
    for &o in &orphans {
        kill(Pid::from_raw(o), Signal::SIGKILL).expect("killing an orphan");
    }
    // A supervisor that does not reap would leave them as zombies forever.
    wait_until("the killed orphans to be reaped", || {
        orphans
            .iter()
            .all(|&o| common::proc_stat(o).is_none_or(|(_, ppid)| ppid != sup))
    });
    assert!(zombies_of(sup).is_empty(), "{:?}", zombies_of(sup));
    assert_eq!(sv.status_json()["shutting_down"], false);
}

fn spawner_config(pidf: &std::path::Path, quick: &std::path::Path) -> String {
    format!(
        "[supervisor]\nlog_format = \"json\"\n\n\
         [program.spawner]\ncommand = {}\nstartsecs = 0\n\n\
         [program.quick]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&["--orphans", "5", "--pid-file", &pidf.display().to_string()]),
        // Orphans that exit at once: zombies the moment they die unless PID 1 reaps them.
        child_cmd(&[
            "--orphans",
            "20",
            "--orphan-sleep-ms",
            "0",
            "--pid-file",
            &quick.display().to_string()
        ]),
    )
}

#[test]
fn reaps_orphans_as_pid1() {
    if !pid_namespaces_usable() {
        return;
    }
    let dir = Sv::new_dir();
    let pidf = dir.path().join("spawner.pid");
    let quick = dir.path().join("quick.pid");
    let config = spawner_config(&pidf, &quick);
    let (sv, sup) = start_as_pid1(&config);
    let st = sv.status_json();
    assert_eq!(st["supervisor"]["pid"], 1, "{st}");
    assert_eq!(st["supervisor"]["mode"], "pid1", "{st}");
    wait_pid_file(&quick);
    wait_until("no zombie left under PID 1", || zombies_of(sup).is_empty());
    assert_adopts_and_reaps(&sv, sup, &pidf, 5);
}

#[test]
fn pid1_terms_then_kills_leftover_orphans_and_exits_0() {
    if !pid_namespaces_usable() {
        return;
    }
    let dir = Sv::new_dir();
    let pidf = dir.path().join("spawner.pid");
    let config = format!(
        "[supervisor]\nlog_format = \"json\"\norphan_grace = \"100ms\"\n\n\
         [program.spawner]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&[
            "--orphans",
            "3",
            "--orphans-unblocked",
            "--orphans-ignore-term",
            "--pid-file",
            &pidf.display().to_string()
        ]),
    );
    let (mut sv, sup) = start_as_pid1(&config);
    wait_pid_file(&pidf);
    let orphans = wait_for("3 orphans", WAIT, || {
        let o = sleeping_orphans(sup);
        (o.len() >= 3).then_some(o)
    });
    sv.sigterm();
    assert_eq!(sv.wait_exit(), 0, "stderr:\n{}", sv.stderr());
    let swept: Vec<String> = events(&sv, "signalled leftover processes")
        .iter()
        .map(|e| e["signal"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(swept, ["SIGTERM", "SIGKILL"], "stderr:\n{}", sv.stderr());
    for o in orphans {
        assert!(!alive(o), "orphan {o} survived");
    }
}

#[test]
fn subreaper_adopts_and_reaps_orphans() {
    let dir = Sv::new_dir();
    let pidf = dir.path().join("spawner.pid");
    let quick = dir.path().join("quick.pid");
    let config = spawner_config(&pidf, &quick);
    let sv = Sv::spawn_in(dir, &config, SvOptions::default());
    sv.wait_socket();
    let sup = sv.pid();
    let st = sv.status_json();
    assert_eq!(st["supervisor"]["mode"], "subreaper", "{st}");
    assert_eq!(st["supervisor"]["pid"], sup, "{st}");
    wait_pid_file(&quick);
    wait_until("no zombie left under the supervisor", || {
        zombies_of(sup).is_empty()
    });
    assert_adopts_and_reaps(&sv, sup, &pidf, 5);
}

#[test]
fn subreaper_sweeps_leftover_orphans_on_shutdown() {
    let dir = Sv::new_dir();
    let pidf = dir.path().join("spawner.pid");
    let config = format!(
        "[supervisor]\nlog_format = \"json\"\norphan_grace = \"100ms\"\n\n\
         [program.spawner]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&[
            "--orphans",
            "3",
            "--orphans-unblocked",
            "--orphans-ignore-term",
            "--pid-file",
            &pidf.display().to_string()
        ]),
    );
    let mut sv = Sv::spawn_in(dir, &config, SvOptions::default());
    sv.wait_socket();
    let sup = sv.pid();
    wait_pid_file(&pidf);
    let orphans = wait_for("3 orphans", WAIT, || {
        let o = sleeping_orphans(sup);
        (o.len() >= 3).then_some(o)
    });
    sv.sigterm();
    assert_eq!(sv.wait_exit(), 0, "stderr:\n{}", sv.stderr());
    // Not PID 1: nothing but the supervisor's own sweep can have ended them.
    for o in orphans {
        wait_until("a leftover orphan to be gone", || !alive(o));
    }
    let swept: Vec<String> = events(&sv, "signalled leftover processes")
        .iter()
        .map(|e| e["signal"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(swept, ["SIGTERM", "SIGKILL"], "stderr:\n{}", sv.stderr());
}

#[test]
fn orphans_outside_the_program_group_get_sigterm_and_no_sigkill_when_they_obey() {
    let dir = Sv::new_dir();
    let pidf = dir.path().join("spawner.pid");
    let config = format!(
        "[supervisor]\nlog_format = \"json\"\norphan_grace = \"1h\"\nshutdown_timeout = \"2h\"\n\n\
         [program.spawner]\ncommand = {}\nstartsecs = 0\n",
        child_cmd(&[
            "--orphans",
            "3",
            "--orphans-setsid",
            "--orphans-unblocked",
            "--pid-file",
            &pidf.display().to_string()
        ]),
    );
    let mut sv = Sv::spawn_in(dir, &config, SvOptions::default());
    sv.wait_socket();
    let sup = sv.pid();
    wait_pid_file(&pidf);
    let orphans = wait_for("3 orphans", WAIT, || {
        let o = sleeping_orphans(sup);
        (o.len() >= 3).then_some(o)
    });
    let spawner_pgid =
        nix::unistd::getpgid(Some(Pid::from_raw(wait_pid_file(&pidf)))).expect("getpgid");
    for &o in &orphans {
        let pgid = nix::unistd::getpgid(Some(Pid::from_raw(o))).expect("getpgid");
        assert_ne!(pgid, spawner_pgid, "orphan {o} is in the program's group");
    }
    sv.sigterm();
    // orphan_grace = 1h: exiting within the wait bound means the supervisor noticed that the
    // SIGTERM sweep left no child, instead of waiting out the grace.
    assert_eq!(sv.wait_exit(), 0, "stderr:\n{}", sv.stderr());
    let swept: Vec<String> = events(&sv, "signalled leftover processes")
        .iter()
        .map(|e| e["signal"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(swept, ["SIGTERM"], "stderr:\n{}", sv.stderr());
    for o in orphans {
        wait_until("a swept orphan to be gone", || !alive(o));
    }
}
