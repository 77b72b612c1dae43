//! sd_notify sockets with real senders: systemd's own `systemd-notify` and `test-child`.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use sv_core::notify::Notify;
use sv_runtime::notify::NotifySocket;
use sv_testkit::{Requirement, WAIT, require, require_that, tempdir, test_child};

const SYSTEMD_NOTIFY: &str = "/usr/bin/systemd-notify";

fn have_systemd_notify() -> bool {
    require_that(
        Requirement::SystemdNotify,
        Path::new(SYSTEMD_NOTIFY).exists(),
        &format!("{SYSTEMD_NOTIFY} is not installed"),
    )
}

fn spawn_with_socket(argv: &[&str], sock: &NotifySocket) -> Child {
    Command::new(argv[0])
        .args(&argv[1..])
        .env("NOTIFY_SOCKET", sock.path())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawning the sender")
}

async fn recv(sock: &NotifySocket) -> (Option<i32>, Vec<Notify>) {
    tokio::time::timeout(WAIT, sock.recv())
        .await
        .expect("a datagram in time")
        .expect("recv")
}

#[tokio::test]
async fn systemd_notify_ready_and_status_arrive_and_its_barrier_completes() {
    if !have_systemd_notify() {
        return;
    }
    let dir = tempdir().unwrap();
    let sock = NotifySocket::bind(&dir.path().join("web.sock"), None).unwrap();
    let mut child = spawn_with_socket(&[SYSTEMD_NOTIFY, "--ready", "--status=warming up"], &sock);

    let (pid, msg) = recv(&sock).await;
    assert_eq!(msg, [Notify::Ready, Notify::Status("warming up".into())]);
    // systemd-notify claims its parent's pid (here: this test) in the credentials when the
    // kernel lets it (root), and otherwise sends its own.
    let (parent, own) = (std::process::id() as i32, child.id() as i32);
    assert!(
        pid == Some(parent) || pid == Some(own),
        "sender {pid:?}, expected {parent} or {own}"
    );

    // systemd 252 then sends BARRIER=1 with a pipe fd and waits for it to be closed; it only
    // exits (successfully) if recv closed the fd it received.
    let (_, barrier) = recv(&sock).await;
    assert_eq!(barrier, [Notify::Other("BARRIER=1".into())]);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "systemd-notify failed: {status}");
}

#[tokio::test]
async fn systemd_notify_with_pid_speaks_for_the_shell_that_ran_it() {
    if !have_systemd_notify() {
        return;
    }
    let dir = tempdir().unwrap();
    let sock = NotifySocket::bind(&dir.path().join("db.sock"), None).unwrap();
    let script = format!("{SYSTEMD_NOTIFY} --ready --pid=$$ && exec sleep 30");
    let mut child = spawn_with_socket(&["sh", "-c", &script], &sock);
    let shell = child.id() as i32;

    let (pid, msg) = recv(&sock).await;
    assert_eq!(msg, [Notify::Ready, Notify::MainPid(shell)]);
    assert_eq!(pid, Some(shell), "--pid makes the kernel report that pid");
    let (_, barrier) = recv(&sock).await;
    assert_eq!(barrier, [Notify::Other("BARRIER=1".into())]);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn test_child_notify_ready_is_received_with_its_pid() {
    let dir = tempdir().unwrap();
    let sock = NotifySocket::bind(&dir.path().join("tc.sock"), None).unwrap();
    let mut child = spawn_with_socket(
        &[
            test_child().to_str().unwrap(),
            "--notify-ready",
            "--exit-after-ms",
            "0",
        ],
        &sock,
    );
    let pid = child.id() as i32;
    let (sender, msg) = recv(&sock).await;
    assert_eq!(sender, Some(pid));
    assert_eq!(
        msg,
        [
            Notify::Ready,
            Notify::Status("ready".into()),
            Notify::MainPid(pid)
        ]
    );
    child.wait().unwrap();
}

#[tokio::test]
async fn garbage_datagrams_yield_nothing_and_the_socket_keeps_working() {
    let dir = tempdir().unwrap();
    let path = dir.path().join("g.sock");
    let sock = NotifySocket::bind(&path, None).unwrap();
    let tx = std::os::unix::net::UnixDatagram::unbound().unwrap();
    tx.send_to(b"\xff\x00garbage\nREADY=2", &path).unwrap();
    tx.send_to(&vec![b'x'; 10_000], &path).unwrap(); // over-long: dropped
    tx.send_to(b"WATCHDOG=1", &path).unwrap();
    let (pid, msg) = recv(&sock).await;
    assert_eq!(pid, Some(std::process::id() as i32));
    assert!(msg.is_empty());
    let (_, msg) = recv(&sock).await;
    assert_eq!(msg, [Notify::Watchdog]);
}

#[tokio::test]
async fn socket_is_private_replaces_a_stale_socket_and_spares_other_files() {
    let dir = tempdir().unwrap();
    let path = dir.path().join("p.sock");
    drop(NotifySocket::bind(&path, None).unwrap());
    // The first socket's file is still there (stale): binding again replaces it.
    assert!(path.exists());
    let sock = NotifySocket::bind(&path, None).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    drop(sock);

    let file = dir.path().join("data.sock");
    std::fs::write(&file, "keep me").unwrap();
    let err = NotifySocket::bind(&file, None).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[tokio::test]
async fn socket_is_owned_by_the_program_user_when_given() {
    if !require(Requirement::Root) {
        return;
    }
    let dir = tempdir().unwrap();
    let path = dir.path().join("o.sock");
    let _sock = NotifySocket::bind(&path, Some(65534)).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.uid(), 65534);
    assert_eq!(meta.mode() & 0o777, 0o600);
}
