//! The health/metrics HTTP server on 127.0.0.1:0, queried by a raw HTTP/1.1 client, with a
//! task standing in for the supervisor's main loop.

use std::net::SocketAddr;

use sv_core::machine::{ProgramStatus, Snapshot, State};
use sv_runtime::http;
use sv_testkit::WAIT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

fn program(name: &str, state: State, healthy: bool) -> ProgramStatus {
    ProgramStatus {
        name: name.into(),
        group: None,
        state,
        blocked_on: None,
        pid: Some(100),
        ready: healthy,
        healthy,
        critical: true,
        readiness: "notify",
        restarts: 2,
        exit_status: None,
        uptime_s: Some(3.5),
        reason: (!healthy).then(|| "exited with code 1".to_owned()),
        status_text: None,
        probe_failures: 0,
        log_file_dropped_lines: None,
        schedule: None,
        restart_limit_failures: None,
        memory_restarts: None,
    }
}

fn healthy() -> Snapshot {
    Snapshot {
        programs: vec![program("web", State::Running, true)],
        healthy: true,
        reason: "all critical programs ready".into(),
        shutting_down: false,
    }
}

fn unhealthy() -> Snapshot {
    Snapshot {
        programs: vec![program("web", State::Backoff, false)],
        healthy: false,
        reason: "web is not ready: exited with code 1".into(),
        shutting_down: false,
    }
}

/// The supervisor's side of `ask`.
enum Loop {
    /// Answers every request with this snapshot.
    Answers(Snapshot),
    /// Takes requests and never answers (a stuck loop).
    Stuck,
    /// Gone: the channel is closed.
    Gone,
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(behaviour: Loop) -> Server {
    let (listener, addr) = http::bind("127.0.0.1:0").await.unwrap();
    assert_ne!(addr.port(), 0, "the bound port is reported");
    let (ask, mut asks) = mpsc::channel::<oneshot::Sender<Snapshot>>(8);
    match behaviour {
        Loop::Answers(snap) => {
            tokio::spawn(async move {
                while let Some(reply) = asks.recv().await {
                    let _ = reply.send(snap.clone());
                }
            });
        }
        Loop::Stuck => {
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Some(reply) = asks.recv().await {
                    held.push(reply);
                }
            });
        }
        Loop::Gone => drop(asks),
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(http::serve(listener, ask, async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        task,
    }
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("an answer in time");
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    Reply {
        status,
        headers: headers.to_owned(),
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn healthy_supervisor_answers_200_with_a_check_per_program() {
    let srv = start(Loop::Answers(healthy())).await;
    for path in ["/health", "/ready"] {
        let r = request(srv.addr, "GET", path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/health+json")
        );
        let doc = r.json();
        assert_eq!(doc["status"], "pass");
        assert_eq!(doc["output"], "all critical programs ready");
        assert_eq!(doc["checks"]["program:web"][0]["status"], "pass");
        assert_eq!(doc["checks"]["program:web"][0]["observedValue"], "RUNNING");
    }
    let live = request(srv.addr, "GET", "/live").await;
    assert_eq!(live.status, 200);
    assert_eq!(live.json()["status"], "pass");
}

#[tokio::test]
async fn unhealthy_supervisor_answers_503_and_says_why() {
    let srv = start(Loop::Answers(unhealthy())).await;
    for path in ["/health", "/ready"] {
        let r = request(srv.addr, "GET", path).await;
        assert_eq!(r.status, 503, "{path}");
        let doc = r.json();
        assert_eq!(doc["status"], "fail");
        assert_eq!(doc["output"], "web is not ready: exited with code 1");
        let check = &doc["checks"]["program:web"][0];
        assert_eq!(check["status"], "fail");
        assert_eq!(check["observedValue"], "BACKOFF");
        assert_eq!(check["output"], "exited with code 1");
    }
    // Unhealthy programs do not make the supervisor itself dead.
    assert_eq!(request(srv.addr, "GET", "/live").await.status, 200);
}

#[tokio::test]
async fn ready_fails_while_shutting_down() {
    let mut snap = healthy();
    snap.shutting_down = true;
    let srv = start(Loop::Answers(snap)).await;
    let r = request(srv.addr, "GET", "/ready").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["output"], "shutting down");
    assert_eq!(request(srv.addr, "GET", "/health").await.status, 200);
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let srv = start(Loop::Answers(healthy())).await;
    let r = request(srv.addr, "GET", "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.header("content-type")
    );
    for want in [
        r#"iot2mqtt_sv_program_state{program="web",state="RUNNING"} 1"#,
        r#"iot2mqtt_sv_program_restarts_total{program="web"} 2"#,
        r#"iot2mqtt_sv_program_uptime_seconds{program="web"} 3.5"#,
        r#"iot2mqtt_sv_program_ready{program="web"} 1"#,
        "iot2mqtt_sv_healthy 1",
    ] {
        assert!(
            r.body.lines().any(|l| l == want),
            "missing {want:?} in\n{}",
            r.body
        );
    }
}

#[tokio::test]
async fn a_stuck_loop_makes_live_and_health_fail() {
    let srv = start(Loop::Stuck).await;
    for path in ["/live", "/health"] {
        let r = request(srv.addr, "GET", path).await;
        assert_eq!(r.status, 503, "{path}");
        assert_eq!(r.json()["status"], "fail");
        assert_eq!(r.json()["output"], "supervisor loop not responding");
    }
}

#[tokio::test]
async fn a_gone_loop_makes_live_fail() {
    let srv = start(Loop::Gone).await;
    let r = request(srv.addr, "GET", "/live").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["output"], "supervisor loop not responding");
    assert_eq!(request(srv.addr, "GET", "/metrics").await.status, 503);
}

#[tokio::test]
async fn only_get_and_head_on_known_paths() {
    let srv = start(Loop::Answers(healthy())).await;
    for method in ["POST", "PUT", "DELETE"] {
        let r = request(srv.addr, method, "/health").await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD"));
    }
    assert_eq!(request(srv.addr, "GET", "/stop").await.status, 404);
    assert_eq!(request(srv.addr, "GET", "/").await.status, 404);

    let head = request(srv.addr, "HEAD", "/health").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD has no body: {:?}", head.body);
}

#[tokio::test]
async fn serve_returns_on_shutdown_and_stops_listening() {
    let mut srv = start(Loop::Answers(healthy())).await;
    assert_eq!(request(srv.addr, "GET", "/live").await.status, 200);
    srv.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(WAIT, &mut srv.task)
        .await
        .expect("serve returned after shutdown")
        .unwrap();
    let refused = tokio::net::TcpStream::connect(srv.addr).await;
    assert!(refused.is_err(), "still listening after shutdown");
}
