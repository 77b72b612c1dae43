//! PID 1 never hangs on what it does not control (issue 12): a log collector that stopped
//! reading the supervisor's output, and a DNS resolver that never answers a probe's lookup.
//!
//! Each test drives the real binary into the stall, then checks that the supervisor still
//! answers and exits on SIGTERM. Every wait is bounded ([`sv_testkit::WAIT`]), so a regression
//! fails the test instead of hanging it.

// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;

use common::{Sv, SvOptions, alive, child_cmd, find_program};
use serde_json::Value;
use sv_testkit::{WAIT, wait_for};

/// Supervisor stdout and stderr on one full pipe nobody reads (a stalled log driver, `2>&1`
/// into a full pipe), a chatty program and a crash-looping one that makes the supervisor log
/// all the time. The loop must keep answering `status`, `health` and `/metrics`, drop (and count)
/// its own lines, and stop every program and exit on SIGTERM although the writer thread is stuck
/// in `write(2)`. Before the fix the loop blocked in a log call: no answer, no shutdown.
/// Starts a supervisor whose stdout and stderr are one 4 KiB pipe nobody reads, with a program
/// that writes without pause and a crash-looping one that makes the supervisor log all the time,
/// and waits until the stall shows: the supervisor's own lines no longer fit and are counted.
/// Returns it with that count.
fn stalled_supervisor() -> (Sv, u64) {
    let config = format!(
        "[supervisor.http]\nlisten = \"127.0.0.1:0\"\n\n\
         [program.spam]\ncommand = {spam}\nstartsecs = 0\n\n\
         [program.flap]\ncommand = {flap}\nstartsecs = 0\ncritical = false\n\
         [program.flap.backoff]\ninitial = \"1ms\"\nmax = \"2ms\"\njitter = 0.0\n",
        spam = child_cmd(&["--spam", "100000000"]),
        flap = child_cmd(&["--exit", "3", "--exit-after-ms", "0"]),
    );
    let sv = Sv::spawn(
        &config,
        SvOptions {
            stalled_output: true,
            ..Default::default()
        },
    );
    sv.wait_socket();
    let dropped = wait_for("supervisor log lines dropped in status", WAIT, || {
        let n = sv.try_status_json()?["supervisor"]["log_lines_dropped"].as_u64()?;
        (n > 0).then_some(n)
    });
    (sv, dropped)
}

/// A stalled log collector (`2>&1` into a full pipe) while a program is chatty. The loop must
/// keep answering `status`, `health` and `/metrics`, drop (and count) its own lines, and stop
/// every program and exit on SIGTERM although the writer thread is stuck in `write(2)`. Before
/// the fix the loop blocked in a log call: no answer, no shutdown.
#[test]
fn stalled_output_never_blocks_the_supervisor() {
    let (mut sv, dropped) = stalled_supervisor();
    let status = sv.status_json();
    let spam = find_program(&status, "spam").expect("spam in status");
    assert_eq!(spam["state"], "RUNNING", "{status}");
    let spam_pid = spam["pid"].as_i64().expect("spam pid") as i32;

    // The CLI verbs answer (each bounded by the client's own reply timeout).
    let health = sv.cli(&["health", "--json"]);
    let answer: Value = serde_json::from_slice(&health.stdout).expect("health --json output");
    assert!(
        answer["healthy"].is_boolean()
            && !answer["reason"]
                .as_str()
                .unwrap_or("")
                .contains("supervisor"),
        "health did not get an answer from the supervisor: {answer}"
    );
    let text = sv.cli(&["status"]);
    assert!(text.status.success(), "status failed: {text:?}");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("spam") && text.contains("supervisor log lines dropped"),
        "{text}"
    );

    let addr = status["supervisor"]["http"]
        .as_str()
        .expect("http address")
        .to_string();
    let metrics = common::http(&addr, "GET", "/metrics");
    let counted: u64 = metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("iot2mqtt_sv_log_lines_dropped_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no drop counter in /metrics:\n{}", metrics.body));
    assert!(counted >= dropped, "{counted} < {dropped}");

    sv.sigterm();
    assert_eq!(sv.wait_exit(), 0);
    assert!(!alive(spam_pid), "spam outlived the supervisor");
}

/// When the output moves again, the log itself says that supervisor lines are missing, and
/// program output resumes.
#[test]
fn once_output_moves_again_the_log_says_lines_were_dropped() {
    let (mut sv, _) = stalled_supervisor();
    let reader = sv.take_stalled_output().expect("the stalled pipe");
    let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = out.clone();
    // Reads until the supervisor and its programs have closed the pipe.
    let drain = std::thread::spawn(move || {
        use std::io::Read;
        let mut reader = std::fs::File::from(reader);
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    wait_for("the report of dropped lines", WAIT, || {
        let text = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
        text.contains("supervisor log lines were dropped: stdout/stderr did not keep up")
            .then_some(())
    });
    sv.sigterm();
    assert_eq!(sv.wait_exit(), 0);
    drain.join().expect("reader thread");
}

/// Whether this machine can give a process a network namespace with a TUN device as its
/// default route and a resolv.conf of its own (root, `unshare`, `ip`, `/dev/net/tun`).
fn blackhole_resolver_usable() -> bool {
    sv_testkit::require_command(
        sv_testkit::Requirement::Root,
        Command::new("unshare")
            .args(["--net", "--mount", "sh", "-c"])
            .arg("ip tuntap add sv-dns mode tun && ip link set sv-dns up"),
        "cannot create a network namespace with a TUN device here (needs root, unshare and ip)",
    )
}

/// A tcp readiness probe of a host name whose lookup never gets an answer: glibc's resolver
/// waits `timeout:30 attempts:5` on a name server reached through a TUN device nobody reads
/// (packets vanish, no ICMP comes back), so `getaddrinfo` blocks a thread of tokio's blocking
/// pool for minutes while the probe itself gives up after its timeout. On SIGTERM the
/// supervisor must exit anyway; before the fix, dropping the runtime waited for that thread.
#[test]
fn a_name_lookup_that_never_answers_does_not_delay_exit() {
    if !blackhole_resolver_usable() {
        return;
    }
    let dir = Sv::new_dir();
    let resolv = dir.path().join("resolv.conf");
    // 192.0.2.53: TEST-NET-1 (RFC 5737), reachable only through the TUN device.
    std::fs::write(
        &resolv,
        "nameserver 192.0.2.53\noptions timeout:30 attempts:5\n",
    )
    .expect("writing resolv.conf");
    let script = format!(
        "ip link set lo up && ip tuntap add sv-dns mode tun && ip link set sv-dns up && \
         ip route add default dev sv-dns && mount --bind '{}' /etc/resolv.conf && exec \"$0\" \"$@\"",
        resolv.display(),
    );
    let config = format!(
        "[program.app]\ncommand = {}\n\
         ready = {{ kind = \"tcp\", address = \"never-answered.example:80\", interval = \"20ms\", timeout = \"1h\" }}\n",
        child_cmd(&[]),
    );
    let opts = SvOptions {
        // `unshare` without --fork and `exec`: the supervisor keeps the started process's pid.
        wrap: vec![
            "unshare".into(),
            "--net".into(),
            "--mount".into(),
            "sh".into(),
            "-c".into(),
            script,
        ],
        ..Default::default()
    };
    let mut sv = Sv::spawn_in(dir, &config, opts);
    sv.wait_socket();
    // A probe attempt has timed out: its lookup is still blocked in getaddrinfo.
    let app = sv.wait_program("a readiness probe timed out", "app", |p| {
        p["reason"]
            .as_str()
            .is_some_and(|r| r.contains("timed out"))
    });
    assert_eq!(app["state"], "STARTING", "{app}");
    sv.sigterm();
    assert_eq!(sv.wait_exit(), 0, "stderr:\n{}", sv.stderr());
}
