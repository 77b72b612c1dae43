//! `log_file`: a copy of a program's output in a file rotated by size, beside the supervisor's
//! stdout (supervisord's `stdout_logfile` with `maxbytes` and `backups`).
//!
//! Each file has its own thread, fed by [`LogFileSink::offer`] from the log pipeline's fan-out
//! with a non-blocking `try_send` of the batch the stdout writer also gets (shared, not copied).
//! So the file can never slow the program, the supervisor's stdout or PID 1's loop: when the
//! file is slow (a stalled network mount) or failing (ENOSPC, EIO, a deleted directory), its
//! lines are dropped and counted ([`LogFileSink::dropped`], shown by `status` and `/metrics`),
//! with one warning per episode of loss (not one per line).
//!
//! File content: each line as the program wrote it, without the `name | ` prefix, both streams
//! in the order read; pieces of an over-long line are joined back (no newline between them).
//!
//! Rotation, before a line would take the file past `max_bytes` (never inside a line):
//! `path.N-1` → `path.N`, …, `path` → `path.1`, then a new `path` (the oldest backup is
//! overwritten by the rename). With `backups = 0` the file is truncated instead; with
//! `max_bytes = 0` it is never rotated. A line longer than `max_bytes` gets a file of its own.

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sv_core::config::LogFileConfig;

use crate::logs::Batch;

/// Text queued for one file before its lines are dropped. Bounded in bytes, not in batches: a
/// burst of small reads (pipe buffers start at 4 KiB) from a chatty program on a busy machine
/// outran a queue of 32 batches while the file thread was merely descheduled for a moment. The
/// batches are shared with the ring buffer and stdout's writer, so a queue that keeps up costs
/// no copy; a stalled one holds at most this much.
const QUEUE_BYTES: usize = 1 << 20;
/// The channel's own bound, far above what [`QUEUE_BYTES`] lets through in practice.
const QUEUE_BATCHES: usize = 4096;

/// What the feeding side and the file's thread share.
#[derive(Debug, Default)]
struct Shared {
    /// Lines not written to the file since start.
    dropped: AtomicU64,
    /// In an episode of loss: the next successful write ends it.
    losing: AtomicBool,
    /// Bytes of text queued and not yet written (bounded by [`QUEUE_BYTES`]).
    queued: AtomicUsize,
}

impl Shared {
    /// Counts `lines` as lost; warns when this starts an episode of loss.
    fn lose(
        &self,
        program: &str,
        path: &std::path::Path,
        lines: usize,
        why: &dyn std::fmt::Display,
    ) {
        if lines == 0 {
            return;
        }
        self.dropped.fetch_add(lines as u64, Ordering::Relaxed);
        if !self.losing.swap(true, Ordering::Relaxed) {
            tracing::warn!(program, path = %path.display(), reason = %why, "log file is not keeping up; dropping its lines (stdout unaffected)");
        }
    }
}

/// The feeding end of one program's log file. Dropping it lets the thread finish its queue.
#[derive(Debug)]
pub(crate) struct LogFileSink {
    program: Arc<str>,
    path: PathBuf,
    tx: Option<SyncSender<Arc<Batch>>>,
    shared: Arc<Shared>,
    /// Disconnected once the thread has ended (it holds the sending end).
    done: Mutex<Receiver<()>>,
}

impl LogFileSink {
    /// Starts the file's thread. The file is opened (and created) on the first line.
    pub(crate) fn start(program: Arc<str>, cfg: &LogFileConfig) -> io::Result<LogFileSink> {
        let (tx, rx) = mpsc::sync_channel::<Arc<Batch>>(QUEUE_BATCHES);
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let shared = Arc::new(Shared::default());
        let mut file = Rotating {
            program: program.clone(),
            cfg: cfg.clone(),
            file: None,
            size: 0,
            mid_line: false,
            rotate_failed: false,
            shared: shared.clone(),
        };
        std::thread::Builder::new()
            .name("sv-log-file".into())
            .spawn(move || {
                let _done = done_tx;
                let mut buf = Vec::new();
                while let Ok(batch) = rx.recv() {
                    file.write_batch(&batch, &mut buf);
                    file.shared
                        .queued
                        .fetch_sub(batch.text_len(), Ordering::Relaxed);
                }
            })?;
        Ok(LogFileSink {
            program,
            path: cfg.path.clone(),
            tx: Some(tx),
            shared,
            done: Mutex::new(done_rx),
        })
    }

    /// Queues a batch for the file without ever waiting: a full queue drops it (counted).
    pub(crate) fn offer(&self, batch: &Arc<Batch>) {
        let Some(tx) = &self.tx else { return };
        let bytes = batch.text_len();
        if self.shared.queued.fetch_add(bytes, Ordering::Relaxed) + bytes > QUEUE_BYTES {
            self.shared.queued.fetch_sub(bytes, Ordering::Relaxed);
            return self.shared.lose(
                &self.program,
                &self.path,
                batch.len(),
                &"the write queue is full",
            );
        }
        let sent = tx.try_send(batch.clone());
        if sent.is_err() {
            self.shared.queued.fetch_sub(bytes, Ordering::Relaxed);
        }
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(b)) => self.shared.lose(
                &self.program,
                &self.path,
                b.len(),
                &"the write queue is full",
            ),
            Err(TrySendError::Disconnected(b)) => self.shared.lose(
                &self.program,
                &self.path,
                b.len(),
                &"the writer thread is gone",
            ),
        }
    }

    /// Lines dropped since start.
    pub(crate) fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Stops taking lines and waits (at most until `deadline`) for the queued ones to be
    /// written. Returns whether the thread finished.
    pub(crate) fn close(&mut self, deadline: Instant) -> bool {
        self.tx = None;
        let wait = deadline.saturating_duration_since(Instant::now());
        let done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        matches!(
            done.recv_timeout(wait.max(Duration::from_millis(1))),
            Err(mpsc::RecvTimeoutError::Disconnected)
        )
    }
}

/// The file and its rotation state; owned by the file's thread.
struct Rotating {
    program: Arc<str>,
    cfg: LogFileConfig,
    /// `None` until first opened, and again after an error (reopened on the next write).
    file: Option<File>,
    /// Bytes in the current file.
    size: u64,
    /// The last piece written was a partial line: no rotation until it ends.
    mid_line: bool,
    /// The last rotation failed (warned once until one succeeds).
    rotate_failed: bool,
    shared: Arc<Shared>,
}

impl Rotating {
    fn write_batch(&mut self, batch: &Batch, buf: &mut Vec<u8>) {
        buf.clear();
        let mut lines = 0;
        for (line, partial) in batch.iter() {
            let len = line.len() as u64 + u64::from(!partial);
            let max = self.cfg.max_bytes;
            let filled = self.size + buf.len() as u64;
            if !self.mid_line && max > 0 && filled > 0 && filled + len > max {
                self.write(buf, lines);
                buf.clear();
                lines = 0;
                self.rotate();
            }
            buf.extend_from_slice(line.as_bytes());
            if !partial {
                buf.push(b'\n');
            }
            self.mid_line = partial;
            lines += 1;
        }
        self.write(buf, lines);
    }

    /// Writes `buf` (`lines` lines) at the end of the file; on failure counts them as dropped.
    fn write(&mut self, buf: &[u8], lines: usize) {
        if buf.is_empty() {
            return;
        }
        let result = self.open().and_then(|f| f.write_all(buf));
        match result {
            Ok(()) => {
                self.size += buf.len() as u64;
                self.shared.losing.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                // Reopen next time: the size on disk is unknown after a partial write.
                self.file = None;
                self.shared.lose(&self.program, &self.cfg.path, lines, &e);
            }
        }
    }

    fn open(&mut self) -> io::Result<&mut File> {
        if let Some(f) = self.file.take() {
            return Ok(self.file.insert(f));
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.cfg.path)?;
        self.size = f.metadata()?.len();
        Ok(self.file.insert(f))
    }

    /// Shifts the backups and starts a new file. A failure leaves the current file in place
    /// (it keeps growing, no line is lost) with one warning until a rotation succeeds.
    fn rotate(&mut self) {
        self.file = None;
        let path = &self.cfg.path;
        let numbered = |i: u32| {
            let mut p = path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        let result = if self.cfg.backups == 0 {
            File::create(path).map(drop)
        } else {
            (1..self.cfg.backups)
                .rev()
                .try_for_each(|i| match std::fs::rename(numbered(i), numbered(i + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                })
                .and_then(|()| std::fs::rename(path, numbered(1)))
        };
        match result {
            Ok(()) => {
                self.size = 0;
                self.rotate_failed = false;
            }
            Err(e) => {
                if !std::mem::replace(&mut self.rotate_failed, true) {
                    tracing::warn!(program = %self.program, path = %path.display(), error = %e, "cannot rotate the log file; it keeps growing");
                }
            }
        }
    }
}
