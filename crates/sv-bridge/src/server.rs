//! The bridge's Unix socket: binding with the configured permissions, accepting programs, and
//! one reader and one writer task per connection.
//!
//! Invariants: a line longer than `max_line_bytes` is never buffered whole (it is discarded up to
//! the next newline and answered with `line_too_long`); a reader waits while the engine's input
//! queue is full, which slows a flooding program down without affecting others; each connection
//! has its own write queue, bounded in lines ([`WRITE_QUEUE`]) and bytes
//! ([`crate::machine::WRITE_QUEUE_BYTES`]) by the machine, which the writer tells what it wrote,
//! so a program that does not read only loses its own messages and costs bounded memory; at most
//! `max_connections` connections are served at once (one more is told `too_many_connections`
//! and closed), so connecting in a loop costs bounded memory too.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::BridgeError;
use crate::codec::{ErrorCode, Reply, decode_request};
use crate::engine::{FromConn, Written};
use crate::machine::WRITE_QUEUE;
use crate::settings::Settings;

/// Queued lines are gathered into one write up to about this size (still counted as queued
/// until written).
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Binds the socket, replacing a stale one, and applies mode and group.
pub(crate) fn bind(s: &Settings) -> Result<UnixListener, BridgeError> {
    let path = &s.socket;
    let err = |source| BridgeError::Socket {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // A socket file left by a killed bridge blocks bind(2) with EADDRINUSE; anything that is not
    // a socket is left alone and reported.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(err)?;
        }
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    set_permissions(path, s.socket_mode, s.socket_group.as_deref())?;
    Ok(listener)
}

fn set_permissions(path: &Path, mode: u32, group: Option<&str>) -> Result<(), BridgeError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        BridgeError::Socket {
            path: path.to_path_buf(),
            source,
        }
    })?;
    if let Some(g) = group {
        let gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => match nix::unistd::Group::from_name(g) {
                Ok(Some(gr)) => gr.gid.as_raw(),
                _ => return Err(BridgeError::UnknownGroup(g.to_string())),
            },
        };
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| BridgeError::Socket {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

pub(crate) async fn accept_loop(
    listener: UnixListener,
    max_line: usize,
    max_connections: usize,
    to_engine: mpsc::Sender<FromConn>,
    written: mpsc::UnboundedSender<Written>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut next = 0u64;
    // Logged once per episode: a program connecting in a loop would flood the log.
    let mut refusing = false;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    refusing = false;
                    next += 1;
                    let to_engine = to_engine.clone();
                    let written = written.clone();
                    tokio::spawn(async move {
                        serve(stream, next, max_line, to_engine, written).await;
                        drop(slot);
                    });
                }
                Err(_) => {
                    if !refusing {
                        refusing = true;
                        tracing::warn!(
                            max_connections,
                            "bridge socket full: refusing connections (too_many_connections)"
                        );
                    }
                    refuse(&stream, max_connections);
                }
            },
            Err(e) => {
                // EMFILE/ENFILE: pausing lets other connections close instead of spinning.
                tracing::warn!(error = %e, "accepting a bridge connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Tells a connection past `max_connections` why it is closed. A fresh socket's send buffer is
/// empty, so the one short line is written without waiting; the acceptor never blocks on it.
fn refuse(stream: &UnixStream, max: usize) {
    let reply = Reply::error(
        None,
        ErrorCode::TooManyConnections,
        format!("the bridge already serves {max} connections (max_connections)"),
    );
    let _ = stream.try_write(crate::codec::encode_reply(&reply).as_bytes());
}

async fn serve(
    stream: UnixStream,
    conn: u64,
    max_line: usize,
    to_engine: mpsc::Sender<FromConn>,
    written: mpsc::UnboundedSender<Written>,
) {
    let pid = stream.peer_cred().ok().and_then(|c| c.pid());
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<String>(WRITE_QUEUE);
    tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(line) = rx.recv().await {
            // Lines queued meanwhile leave in the same write: a program streaming requests gets
            // its replies in batches, one system call and one wake-up for many.
            out.clear();
            out.extend_from_slice(line.as_bytes());
            let mut lines = 1;
            while out.len() < WRITE_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(more) => {
                        out.extend_from_slice(more.as_bytes());
                        lines += 1;
                    }
                    Err(_) => break,
                }
            }
            let result = write.write_all(&out).await;
            // The machine counts these lines as queued until told.
            let _ = written.send(Written {
                conn,
                lines,
                bytes: out.len(),
            });
            if result.is_err() {
                break;
            }
        }
    });
    if to_engine
        .send(FromConn::Opened { conn, pid, tx })
        .await
        .is_err()
    {
        return;
    }
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    loop {
        match read_line(&mut reader, max_line, &mut buf).await {
            Ok(Line::Data) => {
                if buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match decode_request(&buf) {
                    Ok(req) => {
                        if to_engine
                            .send(FromConn::Request { conn, req })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        // Through the engine, so replies keep the order of the requests.
                        let reply = Reply::error(e.id, e.code, e.message);
                        if to_engine
                            .send(FromConn::Refused { conn, reply })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            Ok(Line::TooLong) => {
                let reply = Reply::error(
                    None,
                    ErrorCode::LineTooLong,
                    format!("line longer than {max_line} bytes discarded"),
                );
                if to_engine
                    .send(FromConn::Refused { conn, reply })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(Line::Eof) | Err(_) => break,
        }
    }
    let _ = to_engine.send(FromConn::Closed { conn }).await;
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A line is in the buffer (without its newline).
    Data,
    /// A line exceeded the limit and was skipped through its newline.
    TooLong,
    /// The peer closed the connection.
    Eof,
}

/// Reads one newline-terminated line into `buf`, holding at most `max` bytes of it.
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(if too_long {
                Line::TooLong
            } else if buf.is_empty() {
                Line::Eof
            } else {
                Line::Data
            });
        }
        let (chunk, found) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (&avail[..i], Some(i)),
            None => (avail, None),
        };
        if !too_long {
            if buf.len() + chunk.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        match found {
            Some(i) => {
                r.consume(i + 1);
                return Ok(if too_long { Line::TooLong } else { Line::Data });
            }
            None => {
                let n = avail.len();
                r.consume(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_skipped_and_the_next_line_is_read() {
        let input = format!("{}\nshort\nlast", "x".repeat(100));
        let mut r = BufReader::with_capacity(7, input.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(
            read_line(&mut r, 10, &mut buf).await.unwrap(),
            Line::TooLong
        );
        assert_eq!(read_line(&mut r, 10, &mut buf).await.unwrap(), Line::Data);
        assert_eq!(buf, b"short");
        assert_eq!(read_line(&mut r, 10, &mut buf).await.unwrap(), Line::Data);
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut r, 10, &mut buf).await.unwrap(), Line::Eof);
    }
}
