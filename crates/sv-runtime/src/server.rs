//! The control socket's server side: accepts connections and serves [`Request`] lines.
//!
//! Each connection is its own task. Requests that read or change supervisor state go to the
//! main loop as [`ControlMsg`]s (so `health` proves the loop answers); `logs` and `watch` are
//! served here from the log hub and the snapshot channel, so a slow client never holds up the
//! loop. Lines are bounded ([`MAX_LINE`]); a malformed line gets a `bad_request` reply and the
//! connection stays usable. Connections are capped (`max_control_connections`, see
//! [`crate::limit`]): one more gets a `busy` error line and is closed.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sv_core::machine::Snapshot;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use crate::control::{Request, code, error_reply, ok_reply, parse_request};
use crate::limit::ConnLimit;
use crate::logs::{LogHub, LogLine};
use crate::supervisor::ControlMsg;

/// The longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;

/// How long the accept loop pauses after a failed `accept` (e.g. out of descriptors).
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// What every connection task needs.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) control: mpsc::Sender<ControlMsg>,
    pub(crate) snapshots: watch::Receiver<Snapshot>,
    pub(crate) logs: LogHub,
}

/// Creates the socket: parent directory (0755 when created), stale socket removed, mode set.
/// A live socket (another supervisor answering) is an error rather than stolen.
pub(crate) fn bind(path: &Path, mode: u32) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another supervisor is listening on it",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Accepts connections until `stop` turns true, at most `limit` at once; a connection past the
/// cap gets a `busy` error line and is closed.
pub(crate) async fn serve(
    listener: UnixListener,
    ctx: Context,
    limit: ConnLimit,
    mut stop: watch::Receiver<bool>,
) {
    let conn_stop = stop.clone();
    // Set while accept keeps failing, so a streak is logged once rather than ten times a second.
    let mut failing = false;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    failing = false;
                    match limit.admit() {
                        Some(permit) => {
                            let (ctx, stop) = (ctx.clone(), conn_stop.clone());
                            tokio::spawn(async move {
                                let _permit = permit;
                                connection(stream, ctx, stop).await;
                            });
                        }
                        None => {
                            let max = limit.max();
                            warn!(max, "control connection refused: too many connections");
                            let reply = error_reply(
                                code::BUSY,
                                format!("too many control connections (max_control_connections = {max})"),
                            );
                            let mut line = reply.to_string().into_bytes();
                            line.push(b'\n');
                            limit.refuse(stream, line);
                        }
                    }
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "control accept failed; retrying every {ACCEPT_PAUSE:?}");
                    }
                    failing = true;
                    // EMFILE/ENFILE leave the pending connection queued and the listener
                    // readable: retrying at once would spin PID 1 at full CPU until a
                    // descriptor frees up (accept(2)). Pausing lets connections close meanwhile.
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_PAUSE) => {}
                        () = stopped(&mut stop) => break,
                    }
                }
            },
            () = stopped(&mut stop) => break,
        }
    }
}

async fn write_json(w: &mut (impl AsyncWriteExt + Unpin), v: &serde_json::Value) -> io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

fn line_json(l: &LogLine) -> serde_json::Value {
    serde_json::json!({"ts": l.ts.to_string(), "program": &*l.program, "stream": l.stream.name(), "line": &*l.line})
}

async fn connection(stream: UnixStream, ctx: Context, mut stop: watch::Receiver<bool>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let mut limited = (&mut r).take(MAX_LINE as u64 + 1);
        let n = tokio::select! {
            n = limited.read_until(b'\n', &mut buf) => n,
            () = stopped(&mut stop) => return,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE {
            let _ = write_json(
                &mut w,
                &error_reply(
                    code::BAD_REQUEST,
                    format!("request line longer than {MAX_LINE} bytes"),
                ),
            )
            .await;
            return;
        }
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let reply = match parse_request(text) {
            Err(e) => e,
            Ok(Request::Watch) => return watch_stream(&mut w, ctx.snapshots.clone(), stop).await,
            Ok(Request::Logs {
                program,
                lines,
                follow,
            }) => {
                if !ctx
                    .snapshots
                    .borrow()
                    .programs
                    .iter()
                    .any(|p| p.name == program)
                {
                    error_reply(
                        code::UNKNOWN_PROGRAM,
                        format!("no program named {program:?}"),
                    )
                } else {
                    // Subscribe before reading the tail so no line falls between the two.
                    let mut rx = follow.then(|| ctx.logs.follow(&program));
                    let tail: Vec<_> = ctx
                        .logs
                        .tail(&program, lines)
                        .iter()
                        .map(line_json)
                        .collect();
                    if write_json(&mut w, &ok_reply(serde_json::json!({"lines": tail})))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let Some(rx) = rx.as_mut() else { continue };
                    loop {
                        tokio::select! {
                            l = rx.recv() => match l {
                                Ok(l) => if write_json(&mut w, &line_json(&l)).await.is_err() { return },
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                    let v = serde_json::json!({"skipped": n});
                                    if write_json(&mut w, &v).await.is_err() { return }
                                }
                                Err(_) => return,
                            },
                            () = stopped(&mut stop) => return,
                        }
                    }
                }
            }
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if ctx
                    .control
                    .send(ControlMsg { request, reply: tx })
                    .await
                    .is_err()
                {
                    error_reply(code::SHUTTING_DOWN, "the supervisor is shutting down")
                } else {
                    match rx.await {
                        Ok(v) => v,
                        Err(_) => {
                            error_reply(code::SHUTTING_DOWN, "the supervisor is shutting down")
                        }
                    }
                }
            }
        };
        if write_json(&mut w, &reply).await.is_err() {
            return;
        }
    }
}

async fn watch_stream(
    w: &mut (impl AsyncWriteExt + Unpin),
    mut rx: watch::Receiver<Snapshot>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let snap = rx.borrow_and_update().clone();
        let v = serde_json::json!({"programs": snap.programs, "healthy": snap.healthy, "reason": snap.reason, "shutting_down": snap.shutting_down});
        if write_json(w, &v).await.is_err() {
            return;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            () = stopped(&mut stop) => return,
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone). Returns `()` so no borrow of the
/// channel's value is held across an await (which would make the future `!Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
