//! The bridge's side of the supervisor's control socket: a `watch` subscription feeding the
//! program table, and one short connection per `ready` report.
//!
//! The supervisor answers `{"op":"watch"}` with one JSON line now and one per change; the watch
//! connection is re-established with backoff whenever it drops, and the last view stays in force
//! meanwhile. Malformed lines are logged and skipped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};

use crate::{ProgramView, ReadyReport, SupervisorView};

/// Longest control line accepted (a table of many programs fits easily).
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Deserialize)]
struct WatchLine {
    programs: Vec<ProgramView>,
}

#[derive(Debug, Deserialize)]
struct ReplyError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct ControlReply {
    ok: bool,
    #[serde(default)]
    error: Option<ReplyError>,
}

/// Parses one `watch` line.
pub(crate) fn parse_view(line: &str) -> Result<SupervisorView, serde_json::Error> {
    let w: WatchLine = serde_json::from_str(line)?;
    Ok(SupervisorView {
        programs: w.programs,
    })
}

/// Keeps `tx` fed from the supervisor until every receiver is gone.
pub(crate) async fn watch_loop(path: PathBuf, tx: watch::Sender<SupervisorView>) {
    let mut attempt = 0u32;
    loop {
        if tx.is_closed() {
            return;
        }
        match watch_once(&path, &tx, &mut attempt).await {
            Ok(()) => tracing::warn!(path = %path.display(), "control socket closed the watch"),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "control socket watch failed")
            }
        }
        let delay = Duration::from_millis(100u64 << attempt.min(5));
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

async fn watch_once(
    path: &Path,
    tx: &watch::Sender<SupervisorView>,
    attempt: &mut u32,
) -> std::io::Result<()> {
    let stream = UnixStream::connect(path).await?;
    let (read, mut write) = stream.into_split();
    write.write_all(b"{\"op\":\"watch\"}\n").await?;
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    loop {
        match crate::server::read_line(&mut reader, MAX_LINE, &mut buf).await? {
            crate::server::Line::Eof => return Ok(()),
            crate::server::Line::TooLong => {
                tracing::warn!("oversized control line skipped");
            }
            crate::server::Line::Data => {
                let line = String::from_utf8_lossy(&buf);
                match parse_view(&line) {
                    Ok(view) => {
                        *attempt = 0;
                        if tx.send(view).is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "malformed control watch line skipped"),
                }
            }
        }
    }
}

/// Forwards each ready report to the supervisor on its own connection.
pub(crate) async fn forward_ready(path: PathBuf, mut rx: mpsc::Receiver<ReadyReport>) {
    while let Some(r) = rx.recv().await {
        match tokio::time::timeout(Duration::from_secs(5), send_ready(&path, &r)).await {
            Ok(Ok(())) => tracing::debug!(program = %r.program, "readiness forwarded"),
            Ok(Err(e)) => {
                tracing::warn!(program = %r.program, error = %e, "readiness not accepted")
            }
            Err(_) => {
                tracing::warn!(program = %r.program, "supervisor did not answer the readiness report")
            }
        }
    }
}

async fn send_ready(path: &Path, r: &ReadyReport) -> Result<(), String> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| format!("connecting to {}: {e}", path.display()))?;
    let (read, mut write) = stream.into_split();
    let line =
        serde_json::json!({"op": "ready", "program": r.program, "pid": r.pid}).to_string() + "\n";
    write
        .write_all(line.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    BufReader::new(read)
        .read_line(&mut reply)
        .await
        .map_err(|e| e.to_string())?;
    let parsed: ControlReply =
        serde_json::from_str(&reply).map_err(|e| format!("malformed reply {reply:?}: {e}"))?;
    if parsed.ok {
        Ok(())
    } else {
        let e = parsed.error.unwrap_or(ReplyError {
            code: "unknown".into(),
            message: String::new(),
        });
        Err(format!("{}: {}", e.code, e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_watch_line() {
        let v = parse_view(r#"{"programs":[{"name":"x","pid":123,"state":"RUNNING","ready":true,"critical":true,"healthy":true},{"name":"y","pid":null,"state":"STOPPED","ready":false,"critical":false,"healthy":false}],"healthy":true}"#).unwrap();
        assert_eq!(v.programs.len(), 2);
        assert_eq!(v.programs[0].pid, Some(123));
        assert_eq!(v.programs[1].pid, None);
        assert!(parse_view("{}").is_err());
    }
}
