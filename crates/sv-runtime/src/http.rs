//! The optional health and metrics HTTP server (`[supervisor.http]`), for Kubernetes probes,
//! Docker health checks and Prometheus.
//!
//! Endpoints (GET or HEAD only; any other method is 405, any other path 404):
//! - `/live`: 200 while the supervisor's main loop answers, else 503;
//! - `/health`: 200 when the supervisor is healthy, else 503; `application/health+json` body
//!   with one check per program ([`sv_core::health::health_json`]);
//! - `/ready`: as `/health`, and also 503 once a shutdown is under way, so a load balancer stops
//!   sending traffic before the programs stop;
//! - `/metrics`: Prometheus text format ([`sv_core::health::metrics_text`]), then the
//!   supervisor's own figures ([`sv_core::health::supervisor_metrics_text`]), then, when the
//!   supervisor runs a bridge, by the bridge's figures ([`sv_core::health::bridge_metrics_text`]).
//!
//! The server exposes no control verbs: it can only read.
//!
//! Every request asks the main loop for a fresh [`Snapshot`] through `ask` (a oneshot reply
//! channel). That round trip is what proves the loop responsive: no answer within
//! [`ASK_TIMEOUT`] (or a closed channel) makes `/live`, `/health` and `/ready` answer 503 with
//! `"supervisor loop not responding"`. The server holds no state of its own.
//!
//! The bridge's figures are pulled the same way, on demand: `/metrics` sends `{"op":"stats"}`
//! on the bridge socket and waits at most [`BRIDGE_TIMEOUT`] for the one-line answer. Nothing
//! polls the bridge between scrapes (no periodic wake-ups), and sv-runtime needs no dependency
//! on sv-bridge: the request is one JSON line and the answer is [`BridgeStats`].
//!
//! Invariants: [`serve`] returns once `shutdown` completes, after aborting open connections; a
//! failing connection never stops the server; responses are never cached (`no-store`); at most
//! `max_connections` are served at once, one more is answered 503 and closed ([`crate::limit`]).
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use sv_core::health::{
    BridgeStats, HEALTH_CONTENT_TYPE, METRICS_CONTENT_TYPE, bridge_metrics_text, health_json,
    metrics_text, supervisor_metrics_text, unresponsive_json,
};
use sv_core::machine::Snapshot;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::limit::ConnLimit;

/// How the server asks the main loop for a snapshot: it sends a reply channel.
pub type Ask = mpsc::Sender<oneshot::Sender<Snapshot>>;

/// How long a request waits for the main loop's snapshot before declaring it unresponsive.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The reason given when the main loop does not answer.
pub const NOT_RESPONDING: &str = "supervisor loop not responding";

/// How long `/metrics` waits for the bridge's `stats` answer before reporting
/// `iot2mqtt_sv_bridge_up 0`.
pub const BRIDGE_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest `stats` answer read from the bridge.
const BRIDGE_MAX_LINE: u64 = 64 * 1024;

/// Binds `listen` (`host:port`, port 0 picks a free one) and returns the listener with the
/// address actually bound, for the log and `status`.
pub async fn bind(listen: &str) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves HTTP/1.1 on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, ask: Ask, shutdown: impl Future<Output = ()>) {
    serve_with_bridge(listener, ask, None, DEFAULT_MAX_CONNECTIONS, shutdown).await;
}

/// The default of `[supervisor.http] max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = sv_core::config::DEFAULT_HTTP_MAX_CONNECTIONS;

/// The answer to a connection past the cap.
fn busy_response(max: usize) -> Vec<u8> {
    let body = format!("too many connections (max_connections = {max})\n");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncache-control: no-store\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Like [`serve`]; with `bridge` (the bridge's socket), `/metrics` adds the bridge's figures.
/// At most `max_connections` are served at once; one more gets a 503 and is closed.
pub async fn serve_with_bridge(
    listener: TcpListener,
    ask: Ask,
    bridge: Option<PathBuf>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    let limit = ConnLimit::new(max_connections);
    let bridge = bridge.map(Arc::new);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(permit) = limit.admit() else {
                        tracing::warn!(%peer, max = limit.max(), "http connection refused: too many connections");
                        limit.refuse(stream, busy_response(limit.max()));
                        continue;
                    };
                    let ask = ask.clone();
                    let bridge = bridge.clone();
                    conns.spawn(async move {
                        let _permit = permit;
                        let svc = hyper::service::service_fn(move |req| {
                            handle(req, ask.clone(), bridge.clone())
                        });
                        let served = hyper::server::conn::http1::Builder::new()
                            // The timer enables hyper's header read timeout (slow clients).
                            .timer(TokioTimer::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                        if let Err(e) = served {
                            tracing::debug!(%peer, error = %e, "http connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and friends: the listener stays readable, so pause instead of
                    // spinning; connections in progress free descriptors meanwhile.
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

/// Asks the main loop for a snapshot; `None` when it does not answer in time or is gone.
async fn ask_snapshot(ask: &Ask) -> Option<Snapshot> {
    let (tx, rx) = oneshot::channel();
    let round_trip = async {
        ask.send(tx).await.ok()?;
        rx.await.ok()
    };
    tokio::time::timeout(ASK_TIMEOUT, round_trip)
        .await
        .ok()
        .flatten()
}

/// Asks the bridge listening on `path` for its figures; `None` when it does not answer in time
/// or answers something else.
pub async fn bridge_stats(path: &Path) -> Option<BridgeStats> {
    let exchange = async {
        let stream = UnixStream::connect(path).await.ok()?;
        let (read, mut write) = stream.into_split();
        write
            .write_all(b"{\"op\":\"stats\",\"id\":\"metrics\"}\n")
            .await
            .ok()?;
        let mut line = String::new();
        BufReader::new(read.take(BRIDGE_MAX_LINE))
            .read_line(&mut line)
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&line).ok()?;
        if v["op"] != "stats" {
            return None;
        }
        serde_json::from_value(v["stats"].clone()).ok()
    };
    tokio::time::timeout(BRIDGE_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}

fn response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

fn json_response(status: StatusCode, doc: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = doc.to_string();
    body.push('\n');
    response(status, HEALTH_CONTENT_TYPE, body)
}

fn ok_or_unavailable(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Routes one request. HEAD is answered like GET; hyper leaves the body out.
async fn handle(
    req: Request<Incoming>,
    ask: Ask,
    bridge: Option<Arc<PathBuf>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n",
        );
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(resp);
    }
    let path = req.uri().path();
    if !matches!(path, "/live" | "/health" | "/ready" | "/metrics") {
        return Ok(response(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        ));
    }
    let Some(snap) = ask_snapshot(&ask).await else {
        tracing::warn!(path, "{NOT_RESPONDING}");
        return Ok(if path == "/metrics" {
            response(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("{NOT_RESPONDING}\n"),
            )
        } else {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &unresponsive_json(NOT_RESPONDING),
            )
        });
    };
    Ok(match path {
        "/live" => json_response(
            StatusCode::OK,
            &serde_json::json!({ "status": "pass", "output": "supervisor loop responding" }),
        ),
        "/health" => json_response(ok_or_unavailable(snap.healthy), &health_json(&snap)),
        "/ready" => {
            let mut doc = health_json(&snap);
            let ready = snap.healthy && !snap.shutting_down;
            if snap.shutting_down {
                doc["status"] = "fail".into();
                doc["output"] = "shutting down".into();
            }
            json_response(ok_or_unavailable(ready), &doc)
        }
        _ => {
            let mut text = metrics_text(&snap);
            text.push_str(&supervisor_metrics_text(crate::logs::own_lines_dropped()));
            if let Some(path) = bridge {
                let stats = bridge_stats(&path).await;
                text.push_str(&bridge_metrics_text(stats.as_ref()));
            }
            response(StatusCode::OK, METRICS_CONTENT_TYPE, text)
        }
    })
}
