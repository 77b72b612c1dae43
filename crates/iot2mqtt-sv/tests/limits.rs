//! Bounds on what peers can make PID 1 do, end to end with the real binary: connection caps on
//! the control socket and the HTTP server, a flood of sd_notify `MAINPID=` datagrams, and user
//! lookups done once per config load rather than per start.
//!
//! Every wait is bounded ([`sv_testkit::WAIT`]); a connection that should be refused must be
//! answered with the refusal, never left hanging.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixDatagram, UnixStream};

use common::{Sv, http, read, test_child, toml_str};
use serde_json::{Value, json};
use sv_testkit::{TempUser, WAIT, wait_for};

const CAP: usize = 3;

fn config() -> String {
    format!(
        "[supervisor]\nmax_control_connections = {CAP}\n\n\
         [supervisor.http]\nlisten = \"127.0.0.1:0\"\nmax_connections = {CAP}\n\n\
         [program.idle]\ncommand = [{}, {}]\nstartsecs = \"0s\"\n",
        toml_str("/bin/sleep"),
        toml_str("3600")
    )
}

/// The HTTP server's bound address, from `status`.
fn http_addr(sv: &Sv) -> String {
    let v = sv.status_json();
    v["supervisor"]["http"]
        .as_str()
        .unwrap_or_else(|| panic!("no supervisor.http in {v}"))
        .to_string()
}

/// A control connection the supervisor has accepted and is serving (it answered `health`).
fn served_control(sv: &Sv) -> UnixStream {
    let s = UnixStream::connect(&sv.socket).expect("connecting to the control socket");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    writeln!(&s, "{}", json!({"op": "health"})).expect("writing");
    let mut line = String::new();
    r.read_line(&mut line).expect("a health reply");
    let v: Value = serde_json::from_str(&line).expect("json");
    assert!(v.get("ok").is_some(), "{v}");
    s
}

/// The first line the supervisor sends on a fresh control connection after a request.
fn first_reply(sv: &Sv) -> Value {
    let s = UnixStream::connect(&sv.socket).expect("connecting to the control socket");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    // The request may meet a connection already closed by the refusal: that is fine.
    let _ = writeln!(&s, "{}", json!({"op": "health"}));
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .expect("a reply line (the refusal), not a hang");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

#[test]
fn control_connections_past_the_cap_are_refused_with_busy_and_health_still_answers() {
    let sv = Sv::start(&config());
    sv.wait_socket();
    let addr = http_addr(&sv);
    let held: Vec<UnixStream> = (0..CAP).map(|_| served_control(&sv)).collect();

    let refused = first_reply(&sv);
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["error"]["code"], "busy", "{refused}");
    let out = sv.cli(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("too many control connections"),
        "the CLI prints the refusal: {err}"
    );
    // The loop is unaffected: HTTP health answers meanwhile.
    assert_eq!(http(&addr, "GET", "/health").status, 200);

    drop(held);
    let v = wait_for("a control slot to come back", WAIT, || {
        sv.try_request(&json!({"op": "health"}))
            .filter(|v| v["ok"] == true)
    });
    assert_eq!(v["ok"], true);
    assert!(
        sv.stderr().contains("too many connections"),
        "refusals are logged"
    );
}

#[test]
fn http_connections_past_the_cap_get_503_and_control_health_still_answers() {
    let sv = Sv::start(&config());
    sv.wait_socket();
    let addr = http_addr(&sv);
    // Open connections that send nothing: each holds a slot until hyper's header timeout.
    let held: Vec<TcpStream> = (0..CAP)
        .map(|_| TcpStream::connect(&addr).expect("connecting"))
        .collect();
    // The server accepts in order, so the next connection is past the cap once the held ones
    // are accepted; until then it may still be served. Wait for the refusal.
    let refused = wait_for("a 503 past the cap", WAIT, || {
        let r = http(&addr, "GET", "/health");
        (r.status == 503 && r.body.contains("too many connections")).then_some(r)
    });
    assert_eq!(refused.header("connection"), Some("close"));
    let v = sv.request(&json!({"op": "health"}));
    assert_eq!(v["ok"], true, "{v}");

    drop(held);
    wait_for("an http slot to come back", WAIT, || {
        (http(&addr, "GET", "/health").status == 200).then_some(())
    });
}

#[test]
fn a_flood_of_mainpid_datagrams_does_not_stall_the_loop() {
    let dir = Sv::new_dir();
    let sock_file = dir.path().join("notify-path");
    let config = format!(
        "[program.svc]\ncommand = [{}, {}, {}, {}, {}]\nready = {{ kind = \"notify\" }}\n",
        toml_str("/bin/sh"),
        toml_str("-c"),
        toml_str("echo \"$NOTIFY_SOCKET\" > \"$1\"; exec sleep 3600"),
        toml_str("sh"),
        toml_str(&sock_file.display().to_string()),
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let path = wait_for("the program's NOTIFY_SOCKET", WAIT, || {
        let p = std::fs::read_to_string(&sock_file).ok()?;
        let p = p.trim().to_string();
        (!p.is_empty()).then_some(p)
    });
    // MAINPID= naming processes that are not the supervisor's (init, the test itself) must be
    // refused, each after a check of that one pid, not a scan of every process.
    let me = std::process::id();
    let tx = UnixDatagram::unbound().expect("datagram socket");
    // A full receive queue blocks the sender until the supervisor drains it; a loop that stopped
    // draining fails the test here instead of hanging it.
    tx.set_write_timeout(Some(WAIT)).expect("write timeout");
    let mut sent = 0;
    for i in 0..5_000u32 {
        let pid = if i % 2 == 0 { 1 } else { me };
        tx.send_to(format!("MAINPID={pid}").as_bytes(), &path)
            .unwrap_or_else(|e| panic!("datagram {i} to {path}: {e}"));
        sent += 1;
    }
    assert_eq!(sent, 5_000);
    let v = sv.request(&json!({"op": "health"}));
    assert!(v.get("ok").is_some(), "{v}");
    let s = sv.program("svc");
    assert_eq!(s["state"], "STARTING", "no MAINPID= was accepted: {s}");
    assert!(sv.stderr().contains("not ours"), "{}", sv.stderr());
}

/// `uid`, `gid` and `groups` lines of a `test-child --report-ids` report, once written.
fn ids(path: &std::path::Path) -> Option<(String, String, String)> {
    let text = read(path);
    let pick = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
    };
    let groups = text
        .lines()
        .find_map(|l| l.strip_prefix("groups="))?
        .to_string();
    Some((pick("uid=")?, pick("gid=")?, groups))
}

#[test]
fn a_programs_user_is_resolved_once_per_config_load() {
    use std::os::unix::fs::PermissionsExt;
    let Some((tmp, user, group)) = TempUser::required() else {
        return;
    };

    // A directory and a copy of test-child the new user can reach.
    let dir = Sv::new_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let exe = dir.path().join("test-child");
    std::fs::copy(test_child(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let report = dir.path().join("ids");
    let config = format!(
        "[program.svc]\ncommand = [{}, {}, {}]\nuser = {}\nstartsecs = \"0s\"\n",
        toml_str(&exe.display().to_string()),
        toml_str("--report-ids"),
        toml_str(&report.display().to_string()),
        toml_str(&tmp.user),
    );
    let sv = Sv::spawn_in(dir, &config, Default::default());
    sv.wait_socket();
    let expect = (
        user.uid.to_string(),
        user.gid.to_string(),
        format!("{} {}", user.gid, group.gid),
    );
    let first = wait_for("the first report of ids", WAIT, || ids(&report));
    assert_eq!(first.0, expect.0);
    assert_eq!(first.1, expect.1);
    let mut groups: Vec<&str> = first.2.split_whitespace().collect();
    groups.sort_unstable();
    let mut want: Vec<String> = expect.2.split(' ').map(String::from).collect();
    want.sort_unstable();
    assert_eq!(groups, want, "supplementary groups");

    // The passwd and group entries go away; the program's next start uses what was resolved
    // when the config was loaded, without looking them up again.
    // (userdel refuses while the user has processes: stop the program first.)
    let v = sv.request(&json!({"op": "stop", "programs": ["svc"]}));
    assert_eq!(v["ok"], true, "{v}\n{}", sv.stderr());
    tmp.delete();
    assert!(nix::unistd::User::from_name(&tmp.user).unwrap().is_none());
    std::fs::remove_file(&report).unwrap();
    let v = sv.request(&json!({"op": "start", "programs": ["svc"]}));
    assert_eq!(v["ok"], true, "{v}\n{}", sv.stderr());
    let again = wait_for("the second report of ids", WAIT, || ids(&report));
    assert_eq!(again, first);
}
