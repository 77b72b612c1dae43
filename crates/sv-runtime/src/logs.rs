//! The log pipeline: programs' stdout/stderr → the supervisor's stdout/stderr, one prefixed
//! line at a time, plus a bounded in-memory ring of recent lines per program for `logs`.
//!
//! Shape: [`LogHub::pipe`] makes a pipe per captured stream and spawns a reader task on its read
//! end. Readers cut the bytes of each read into lines *in place*: a [`Batch`] holds the read's
//! text once and each line as a range of it, so a line costs no allocation of its own. The batch
//! is shared (one `Arc`) by the program's ring buffer and the single writer thread that owns the
//! supervisor's stdout and stderr, reached through one bounded channel. One writer means lines
//! from different programs never interleave mid-line. [`LogLine`]s (owned copies) are made only
//! for `logs` and followers.
//!
//! Output formats ([`LogFormat`]):
//! - text: `{program} | {line}`; lines the program wrote on stderr go to the supervisor's
//!   stderr with the same prefix (stdout when `redirect_stderr`, see [`LogHub::pipe`]).
//! - json: one object per line, `{"ts":"<RFC 3339>","program":"x","stream":"stdout","line":"..."}`,
//!   written to the supervisor's stdout or stderr like text.
//!
//! Line rules:
//! - a line longer than `max_line_bytes` is split into pieces of at most that many bytes, cut
//!   at a UTF-8 character boundary when the bytes are valid UTF-8. Every piece but the last is
//!   marked: [`LogLine::partial`] is true, the JSON object gets `"partial":true`, and the text
//!   line ends with ` …`. The last piece is an ordinary line, so a reader can join pieces back;
//! - bytes that are not UTF-8 are replaced by U+FFFD (lossy), per piece;
//! - a trailing `\r` is removed (CRLF programs);
//! - a last line without a newline is emitted when the program closes the pipe (EOF).
//!
//! Invariants:
//! - **backpressure, never loss**: the reader → writer channel is bounded; when the supervisor's
//!   stdout is slow, readers wait on the channel, stop reading, the pipe fills and the program
//!   blocks in `write(2)`, exactly as it would writing to a slow terminal. Nothing is dropped;
//! - followers (`logs -f`) use a bounded broadcast: a follower that lags skips lines and never
//!   slows the pipeline;
//! - the writer never panics: when a write fails (EPIPE after the reader of our stdout went
//!   away, or any other error) it logs one warning and drops that stream's output from then on;
//! - blocking writes happen on a dedicated thread, never on the async executor;
//! - the supervisor's own log lines (`tracing`, through [`OwnLogWriter`]) go through the same
//!   writer thread, so no line is ever split by another writer, by construction, with no lock
//!   shared with the event loop. They wait in a bounded queue ([`OWN_QUEUE_BYTES`]) that is never
//!   waited on: when the output stalls and the queue is full, a line is dropped and counted
//!   ([`own_lines_dropped`], shown by `status` and `/metrics`). Program output keeps its
//!   lossless backpressure on the programs; PID 1's loop never blocks on a write (issue 12);
//! - the writer writes to its own duplicates of fds 1 and 2, not through `std::io::stdout`, so a
//!   writer stuck in `write(2)` holds no lock anyone else takes, and the process can exit
//!   with it still blocked (exit ends every thread).
//!
//! The caller of [`LogHub::pipe`] must close its copy of the returned write end once the child
//! has it (after spawning), or the reader never sees EOF.

#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use nix::fcntl::OFlag;
use sv_core::config::LogFormat;
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::log_file::LogFileSink;

/// Which of a program's output streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// `"stdout"` or `"stderr"`, as the JSON format and the control protocol spell it.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One line of a program's output.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// When the supervisor read the line.
    pub ts: jiff::Timestamp,
    /// The program name.
    pub program: Arc<str>,
    /// The stream the line is tagged with (and written to).
    pub stream: Stream,
    /// The text, without its newline, lossily decoded. Shared, so that every follower of a
    /// program receives the line without a copy of its own.
    pub line: Arc<str>,
    /// A piece of an over-long line that continues in the next [`LogLine`].
    pub partial: bool,
}

/// Called with the text of every line (and every piece of a split line) as it is read.
pub type LineHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Batches (the lines of one pipe read, at most [`READ_BYTES`] of output each) in flight between
/// the readers and the writer. Small enough that a stalled stdout holds little memory, large
/// enough to absorb bursts without stalling programs.
const CHANNEL_BATCHES: usize = 16;
/// Lines a follower may fall behind before it starts skipping.
const FOLLOW_LINES: usize = 1024;
/// Bytes read from a pipe at once at most (the default Linux pipe capacity).
const READ_BYTES: usize = 64 * 1024;
/// A reader's first buffer; it doubles up to [`READ_BYTES`] while reads fill it.
const READ_BYTES_MIN: usize = 4 * 1024;
/// Buffer of each output stream of the writer.
const WRITE_BUF: usize = 64 * 1024;
/// The longest [`LogHub::flush`] waits for a writer that keeps making progress.
const FLUSH_MAX: Duration = Duration::from_secs(2);
/// Bytes of the supervisor's own log lines that may wait for the writer; past that, lines are
/// dropped and counted. About 500 lines: a burst of events (a start-up, a shutdown) fits, a
/// stalled log collector costs PID 1 no more memory than this.
pub const OWN_QUEUE_BYTES: usize = 64 * 1024;

enum Msg {
    /// The lines of one read from one pipe, in order: one channel message and one writer
    /// wake-up per read instead of per line.
    Lines(Arc<Batch>, LogFormat),
    Flush(oneshot::Sender<()>),
    /// The supervisor's own queue has lines (see [`OwnLines::push`]).
    Wake,
}

/// The supervisor's own log lines on their way to the writer.
struct OwnLines {
    // A std mutex: held to push or take lines, never while writing.
    queue: Mutex<(VecDeque<Vec<u8>>, usize)>,
    dropped: AtomicU64,
    /// A [`Msg::Wake`] is on its way or the writer is about to look at the queue anyway.
    wake_pending: AtomicBool,
}

impl OwnLines {
    /// Queues one line, or drops and counts it when the queue is full. Never blocks beyond the
    /// queue's mutex, which nobody holds across a write.
    fn push(&self, line: &[u8], tx: &mpsc::Sender<Msg>) {
        {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            if q.1 + line.len() > OWN_QUEUE_BYTES {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            q.1 += line.len();
            q.0.push_back(line.to_vec());
        }
        // When the channel is full the writer has messages to handle, and it takes the queue
        // before each one: no wake-up is needed then.
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = tx.try_send(Msg::Wake);
        }
    }

    /// Takes every queued line.
    fn take(&self) -> VecDeque<Vec<u8>> {
        self.wake_pending.store(false, Ordering::Release);
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.1 = 0;
        std::mem::take(&mut q.0)
    }
}

/// What the writer thread is doing, for [`LogHub::flush`] to tell a stalled output (stuck in
/// one `write`) from a slow or merely descheduled writer (on a loaded machine), which it waits for.
#[derive(Default)]
struct Progress {
    /// Writes and flushes completed.
    done: AtomicU64,
    /// Inside a write or flush of a sink.
    writing: AtomicBool,
}

impl Progress {
    /// Runs one write or flush, recording it.
    fn track<T>(&self, io: impl FnOnce() -> T) -> T {
        self.writing.store(true, Ordering::Release);
        let r = io();
        self.writing.store(false, Ordering::Release);
        self.done.fetch_add(1, Ordering::Release);
        r
    }
}

/// A writer thread over two sinks (stdout, stderr), and the queue of the supervisor's own lines.
struct Writer {
    tx: mpsc::Sender<Msg>,
    own: Arc<OwnLines>,
    progress: Arc<Progress>,
}

impl Writer {
    fn start([stdout, stderr]: [Box<dyn Write + Send>; 2]) -> Writer {
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        let own = Arc::new(OwnLines {
            queue: Mutex::new((VecDeque::new(), 0)),
            dropped: AtomicU64::new(0),
            wake_pending: AtomicBool::new(false),
        });
        let progress = Arc::new(Progress::default());
        let sinks = [
            Sink::new(stdout, "stdout", progress.clone()),
            Sink::new(stderr, "stderr", progress.clone()),
        ];
        let queue = own.clone();
        // A dedicated thread rather than spawn_blocking: it lives as long as the process and
        // would otherwise pin a blocking-pool thread (and hold up the runtime's shutdown); a
        // plain thread also needs no runtime to exist. If it cannot start, the channel is
        // closed: readers then drop lines instead of blocking programs forever, the ring
        // buffers still work, and the own queue fills and counts drops. (No message about it:
        // it would go to this very writer.)
        let _ = std::thread::Builder::new()
            .name("sv-log-writer".into())
            .spawn(move || write_loop(rx, &queue, sinks));
        Writer { tx, own, progress }
    }
}

/// The writer of the process's stdout and stderr, started on first use.
// The one place that touches fds 1 and 2: only to duplicate them for the writer thread.
#[allow(clippy::disallowed_methods)]
fn std_writer() -> &'static Writer {
    static STD: OnceLock<Writer> = OnceLock::new();
    STD.get_or_init(|| {
        Writer::start([
            std_file(io::stdout().as_fd()),
            std_file(io::stderr().as_fd()),
        ])
    })
}

/// The process's own log lines dropped so far because the output stalled (see the module doc).
pub fn own_lines_dropped() -> u64 {
    std_writer().own.dropped.load(Ordering::Relaxed)
}

/// A duplicate of fd 1 or 2 as a plain file: writes through it take no lock of `std::io`'s.
/// A closed fd gives a sink that discards.
fn std_file(fd: BorrowedFd<'_>) -> Box<dyn Write + Send> {
    match fd.try_clone_to_owned() {
        Ok(fd) => Box::new(std::fs::File::from(fd)),
        Err(_) => Box::new(io::sink()),
    }
}

/// The `tracing` writer for the supervisor's own log lines: each event (one `write` call per
/// formatted event, which is how `tracing-subscriber`'s fmt layer writes) goes to the queue of
/// the stdout/stderr writer, to stderr. Never blocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct OwnLogWriter;

impl Write for OwnLogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let w = std_writer();
        w.own.push(buf, &w.tx);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The lines of one read of one pipe: their text, once, and where each line is in it.
pub(crate) struct Batch {
    /// When the read returned (every line of it was read at that moment).
    ts: jiff::Timestamp,
    program: Arc<str>,
    stream: Stream,
    /// The lines' text back to back, without newlines (and lossily decoded where not UTF-8).
    text: String,
    /// Each line (or piece of an over-long line) as a byte range of `text`, on character
    /// boundaries, and whether it is a partial piece.
    lines: Vec<(usize, usize, bool)>,
}

impl Batch {
    fn new(ts: jiff::Timestamp, program: Arc<str>, stream: Stream, capacity: usize) -> Batch {
        Batch {
            ts,
            program,
            stream,
            text: String::with_capacity(capacity),
            lines: Vec::new(),
        }
    }

    /// Bytes of text in the batch.
    pub(crate) fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Lines (and pieces) in the batch.
    pub(crate) fn len(&self) -> usize {
        self.lines.len()
    }

    /// Each line (or piece) and whether it is a partial piece, in order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = (&str, bool)> + ExactSizeIterator {
        self.lines
            .iter()
            .map(|&(a, b, partial)| (&self.text[a..b], partial))
    }

    fn owned(&self, line: &str, partial: bool) -> LogLine {
        LogLine {
            ts: self.ts,
            program: self.program.clone(),
            stream: self.stream,
            line: Arc::from(line),
            partial,
        }
    }

    /// Appends one piece of text (decoded lossily if it is not UTF-8).
    fn push_piece(&mut self, bytes: &[u8], partial: bool) {
        let start = self.text.len();
        match std::str::from_utf8(bytes) {
            Ok(t) => self.text.push_str(t),
            Err(_) => self.text.push_str(&String::from_utf8_lossy(bytes)),
        }
        self.lines.push((start, self.text.len(), partial));
    }

    /// Appends one complete line (without its newline), split into pieces if too long.
    fn push_line(&mut self, line: &[u8], max: usize) {
        for_each_piece(line, max, false, |a, b, partial| {
            self.push_piece(&line[a..b], partial);
        });
    }

    /// Appends complete lines (`bytes` ends with a newline). Valid UTF-8, the normal case, is
    /// copied in one go and cut where the newlines are; anything else goes line by line.
    fn push_lines(&mut self, bytes: &[u8], max: usize) {
        let Ok(text) = std::str::from_utf8(bytes) else {
            for line in bytes[..bytes.len().saturating_sub(1)].split(|&b| b == b'\n') {
                self.push_line(line, max);
            }
            return;
        };
        let base = self.text.len();
        self.text.push_str(text);
        let lines = &mut self.lines;
        let mut start = 0;
        for newline in memchr::memchr_iter(b'\n', bytes) {
            let at = base + start;
            for_each_piece(&bytes[start..newline], max, true, |a, b, partial| {
                lines.push((at + a, at + b, partial));
            });
            start = newline + 1;
        }
    }
}

/// Cuts one line (without its newline, a trailing `\r` dropped) into pieces of at most `max`
/// bytes and calls `piece` with each one's range in `line` and whether more pieces follow. In
/// text known to be UTF-8 (`utf8`) no cut falls inside a character: only possible with
/// `max` < 4, the piece then takes the whole character.
fn for_each_piece(line: &[u8], max: usize, utf8: bool, mut piece: impl FnMut(usize, usize, bool)) {
    let end = line.len() - usize::from(line.last() == Some(&b'\r'));
    let mut pos = 0;
    while end - pos > max {
        let mut cut = pos + piece_len(&line[pos..end], max);
        while utf8 && cut < end && is_continuation(line[cut]) {
            cut += 1;
        }
        piece(pos, cut, true);
        pos = cut;
    }
    piece(pos, end, false);
}

struct ProgramLog {
    /// Whole batches, the oldest first, holding at least the last `ring_lines` lines (and at
    /// most one batch more than needed).
    ring: VecDeque<Arc<Batch>>,
    /// Lines in `ring`.
    ring_count: usize,
    /// Created by the first follower and dropped once none is left: its 1024 slots cost
    /// ~90 KB per program, which an unfollowed program (the normal case) should not pay.
    follow: Option<broadcast::Sender<LogLine>>,
    /// The program's `log_file`, when configured.
    file: Option<LogFileSink>,
}

struct Inner {
    format: LogFormat,
    progress: Arc<Progress>,
    ring_lines: usize,
    max_line_bytes: usize,
    tx: mpsc::Sender<Msg>,
    // A std mutex: held only to push or copy a few lines, never across an await.
    programs: Mutex<HashMap<Arc<str>, ProgramLog>>,
    readers: watch::Sender<usize>,
}

/// The log pipeline of one supervisor. Cheap to clone; every clone feeds the same writer.
#[derive(Clone)]
pub struct LogHub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LogHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHub")
            .field("ring_lines", &self.inner.ring_lines)
            .field("max_line_bytes", &self.inner.max_line_bytes)
            .finish_non_exhaustive()
    }
}

impl LogHub {
    /// A hub writing to the supervisor's own stdout and stderr, through the process's one
    /// writer thread (which also writes the supervisor's own log lines).
    pub fn new(format: LogFormat, ring_lines: usize, max_line_bytes: usize) -> LogHub {
        let w = std_writer();
        Self::build(
            format,
            ring_lines,
            max_line_bytes,
            w.tx.clone(),
            w.progress.clone(),
        )
    }

    /// A hub writing to the given sinks instead of stdout/stderr (tests, benchmarks), with a
    /// writer thread of its own.
    pub fn with_writers(
        format: LogFormat,
        ring_lines: usize,
        max_line_bytes: usize,
        stdout: Box<dyn Write + Send>,
        stderr: Box<dyn Write + Send>,
    ) -> LogHub {
        let writer = Writer::start([stdout, stderr]);
        Self::build(
            format,
            ring_lines,
            max_line_bytes,
            writer.tx,
            writer.progress,
        )
    }

    fn build(
        format: LogFormat,
        ring_lines: usize,
        max_line_bytes: usize,
        tx: mpsc::Sender<Msg>,
        progress: Arc<Progress>,
    ) -> LogHub {
        LogHub {
            inner: Arc::new(Inner {
                format,
                progress,
                ring_lines,
                max_line_bytes: max_line_bytes.max(1),
                tx,
                programs: Mutex::new(HashMap::new()),
                readers: watch::Sender::new(0),
            }),
        }
    }

    /// Creates a pipe (both ends close-on-exec), starts a reader task on the read end and
    /// returns the write end, to become the child's stdout or stderr (`dup2` clears
    /// close-on-exec on the child's copy). Lines are tagged and written as `as_stream`
    /// (pass [`Stream::Stdout`] for stderr when `redirect_stderr`). `on_line` sees every line.
    ///
    /// Must be called inside a tokio runtime (the reader is a task); fails otherwise.
    pub fn pipe(
        &self,
        program: &str,
        as_stream: Stream,
        on_line: Option<LineHook>,
    ) -> io::Result<OwnedFd> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other("log pipe needs a tokio runtime"));
        }
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let read = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
        let name = self.register(program);
        self.inner.readers.send_modify(|n| *n += 1);
        let reader = Reader {
            inner: self.inner.clone(),
            program: name,
            stream: as_stream,
            on_line,
        };
        tokio::spawn(reader.run(read));
        Ok(write)
    }

    /// The last `n` lines of `program` (both streams, in the order read). Empty for an unknown
    /// program.
    pub fn tail(&self, program: &str, n: usize) -> Vec<LogLine> {
        let programs = self
            .inner
            .programs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(p) = programs.get(program) else {
            return Vec::new();
        };
        let n = n.min(p.ring_count).min(self.inner.ring_lines);
        let mut tail: Vec<LogLine> = p
            .ring
            .iter()
            .rev()
            .flat_map(|b| b.iter().rev().map(move |(l, partial)| b.owned(l, partial)))
            .take(n)
            .collect();
        tail.reverse();
        tail
    }

    /// Lines of `program` from now on (for `logs -f`). A receiver that falls more than
    /// 1024 lines behind gets `RecvError::Lagged` and skips; it never slows the pipeline.
    /// Following a program that has no output yet works: lines arrive once it starts.
    pub fn follow(&self, program: &str) -> broadcast::Receiver<LogLine> {
        let name: Arc<str> = Arc::from(program);
        let mut programs = self
            .inner
            .programs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        programs
            .entry(name)
            .or_insert_with(ProgramLog::new)
            .follow
            .get_or_insert_with(|| broadcast::Sender::new(FOLLOW_LINES))
            .subscribe()
    }

    /// Waits until every line queued so far, the supervisor's own included, has been written
    /// and the sinks flushed, and returns true; or gives up and returns false once the output
    /// is stalled: the writer sat in one write for all of `stall`. A writer that makes progress
    /// or is not in a write (descheduled on a loaded machine) is waited for, at most
    /// [`FLUSH_MAX`] in all.
    pub async fn flush(&self, stall: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        let done = async { self.inner.tx.send(Msg::Flush(tx)).await.is_ok() && rx.await.is_ok() };
        let progress = &self.inner.progress;
        let mut seen = progress.done.load(Ordering::Acquire);
        let watch = async {
            loop {
                tokio::time::sleep(stall).await;
                let now = progress.done.load(Ordering::Acquire);
                if now == seen && progress.writing.load(Ordering::Acquire) {
                    return;
                }
                seen = now;
            }
        };
        tokio::select! {
            r = done => r,
            () = watch => false,
            () = tokio::time::sleep(FLUSH_MAX) => false,
        }
    }

    /// Waits (at most `grace`) until every pipe reached EOF, then flushes (at most `grace`
    /// again). At exit, after the programs are gone, this writes their last lines; `grace`
    /// bounds the wait for descendants that still hold a pipe open and for a stalled output.
    /// Returns whether every reader finished and everything was written.
    pub async fn drain(&self, grace: Duration) -> bool {
        let done = self.wait_readers(grace).await;
        self.flush(grace).await && done
    }

    /// Waits (at most `grace`) until every pipe reached EOF and its lines were handed to the
    /// writer (not necessarily written). Returns whether that happened.
    pub async fn wait_readers(&self, grace: Duration) -> bool {
        let mut readers = self.inner.readers.subscribe();
        tokio::time::timeout(grace, readers.wait_for(|&n| n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn register(&self, program: &str) -> Arc<str> {
        let mut programs = self
            .inner
            .programs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((name, _)) = programs.get_key_value(program) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(program);
        programs.insert(name.clone(), ProgramLog::new());
        name
    }
}

impl ProgramLog {
    fn new() -> ProgramLog {
        ProgramLog {
            ring: VecDeque::new(),
            ring_count: 0,
            follow: None,
            file: None,
        }
    }
}

/// Reads one pipe and cuts it into lines.
struct Reader {
    inner: Arc<Inner>,
    program: Arc<str>,
    stream: Stream,
    on_line: Option<LineHook>,
}

impl Reader {
    async fn run(self, mut pipe: tokio::net::unix::pipe::Receiver) {
        let max = self.inner.max_line_bytes;
        // Starts small and doubles whenever a read fills it: a quiet program keeps a few KB,
        // a chatty one reaches READ_BYTES (a whole default pipe buffer per system call).
        let mut buf = vec![0u8; READ_BYTES_MIN];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let n = match pipe.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(program = %self.program, stream = self.stream.name(), error = %e, "reading program output failed");
                    break;
                }
            };
            let mut batch =
                Batch::new(jiff::Timestamp::now(), self.program.clone(), self.stream, n);
            let data = &buf[..n];
            let rest = match memchr::memrchr(b'\n', data) {
                None => data,
                Some(last) => {
                    let mut complete = &data[..=last];
                    if !pending.is_empty() {
                        // The line that began in an earlier read ends here.
                        let i = memchr::memchr(b'\n', complete).unwrap_or(last);
                        pending.extend_from_slice(&complete[..i]);
                        batch.push_line(&pending, max);
                        pending.clear();
                        complete = &complete[i + 1..];
                    }
                    batch.push_lines(complete, max);
                    &data[last + 1..]
                }
            };
            pending.extend_from_slice(rest);
            // Bound memory for a program that never writes a newline.
            while pending.len() > max {
                let cut = piece_len(&pending, max);
                batch.push_piece(&pending[..cut], true);
                pending.drain(..cut);
            }
            if n == buf.len() && buf.len() < READ_BYTES {
                buf.resize(buf.len() * 2, 0);
            }
            self.send(batch).await;
        }
        if !pending.is_empty() {
            let mut batch = Batch::new(
                jiff::Timestamp::now(),
                self.program.clone(),
                self.stream,
                pending.len(),
            );
            batch.push_line(&pending, max);
            self.send(batch).await;
        }
        self.inner.readers.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Records a read's lines in the ring and for followers, then hands them to the writer.
    async fn send(&self, batch: Batch) {
        if batch.lines.is_empty() {
            return;
        }
        if let Some(hook) = &self.on_line {
            batch.iter().for_each(|(line, _)| hook(line));
        }
        let batch = Arc::new(batch);
        {
            let mut programs = self
                .inner
                .programs
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(p) = programs.get_mut(&self.program) {
                p.ring_count += batch.lines.len();
                p.ring.push_back(batch.clone());
                // Drop the oldest batches that the newer ones make unnecessary.
                while let Some(front) = p.ring.front()
                    && p.ring_count - front.lines.len() >= self.inner.ring_lines
                {
                    p.ring_count -= front.lines.len();
                    p.ring.pop_front();
                }
                // No followers is the normal case: then nothing is copied.
                if let Some(follow) = &p.follow {
                    if follow.receiver_count() == 0 {
                        p.follow = None;
                    } else {
                        for (line, partial) in batch.iter() {
                            let _ = follow.send(batch.owned(line, partial));
                        }
                    }
                }
                // Never waits: see `log_file`.
                if let Some(file) = &p.file {
                    file.offer(&batch);
                }
            }
        }
        // Waiting here is the backpressure: see the module doc. An error means the writer is
        // gone, and then there is nowhere left to write.
        let _ = self
            .inner
            .tx
            .send(Msg::Lines(batch, self.inner.format))
            .await;
    }
}

/// `log_file` (see [`crate::log_file`]).
impl LogHub {
    /// Also writes `program`'s lines to the file `cfg` describes, from now on.
    pub fn add_log_file(
        &self,
        program: &str,
        cfg: &sv_core::config::LogFileConfig,
    ) -> io::Result<()> {
        let name = self.register(program);
        let sink = LogFileSink::start(name.clone(), cfg)?;
        let mut programs = self.files_lock();
        if let Some(p) = programs.get_mut(&name) {
            p.file = Some(sink);
        }
        Ok(())
    }

    /// A reload's new definition of `program`: its lines go to the file `cfg` describes from
    /// now on, or to no file (`None`; the old file's writer finishes what it was given).
    pub fn set_log_file(
        &self,
        program: &str,
        cfg: Option<&sv_core::config::LogFileConfig>,
    ) -> io::Result<()> {
        if let Some(cfg) = cfg {
            return self.add_log_file(program, cfg);
        }
        if let Some(p) = self.files_lock().get_mut(program) {
            p.file = None;
        }
        Ok(())
    }

    /// Lines of `program` its log file dropped; `None` when it has none.
    pub fn log_file_dropped(&self, program: &str) -> Option<u64> {
        let programs = self.files_lock();
        programs
            .get(program)?
            .file
            .as_ref()
            .map(LogFileSink::dropped)
    }

    fn files_lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, ProgramLog>> {
        self.inner
            .programs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes every log file, waiting at most `grace` for queued lines to be written (at exit,
    /// after [`LogHub::drain`]). Returns whether all were written.
    pub fn close_log_files(&self, grace: Duration) -> bool {
        let deadline = std::time::Instant::now() + grace;
        let mut sinks: Vec<LogFileSink> = {
            let mut programs = self.files_lock();
            programs
                .values_mut()
                .filter_map(|p| p.file.take())
                .collect()
        };
        // Every sink is closed, even after one timed out.
        let mut all = true;
        for s in &mut sinks {
            all &= s.close(deadline);
        }
        all
    }
}

/// A UTF-8 continuation byte (not the start of a character).
fn is_continuation(b: u8) -> bool {
    b & 0xC0 == 0x80
}

/// How many bytes of `bytes` (longer than `max`) go into the next piece: `max`, moved back to
/// the start of a UTF-8 character when it would cut one (at most 3 bytes back).
fn piece_len(bytes: &[u8], max: usize) -> usize {
    let mut cut = max.min(bytes.len());
    let floor = cut.saturating_sub(3);
    while cut > floor && cut < bytes.len() && is_continuation(bytes[cut]) {
        cut -= 1;
    }
    if cut == 0 || (cut < bytes.len() && is_continuation(bytes[cut])) {
        // Not valid UTF-8 there anyway (or max < 4): cut where asked.
        max.min(bytes.len())
    } else {
        cut
    }
}

/// One output stream of the writer; after its first failure it drops everything.
struct Sink {
    out: BufWriter<Box<dyn Write + Send>>,
    name: &'static str,
    broken: bool,
    progress: Arc<Progress>,
}

impl Sink {
    fn new(w: Box<dyn Write + Send>, name: &'static str, progress: Arc<Progress>) -> Sink {
        Sink {
            out: BufWriter::with_capacity(WRITE_BUF, w),
            name,
            broken: false,
            progress,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        if !self.broken {
            let r = self.progress.track(|| self.out.write_all(bytes));
            self.check(r);
        }
    }

    fn flush(&mut self) {
        if !self.broken {
            let r = self.progress.track(|| self.out.flush());
            self.check(r);
        }
    }

    fn check(&mut self, r: io::Result<()>) {
        if let Err(e) = r {
            self.broken = true;
            tracing::warn!(stream = self.name, error = %e, "cannot write program output; dropping it from now on");
        }
    }
}

/// What the writer formats: one line of a batch, borrowed.
struct LineRef<'a> {
    /// RFC 3339, for the JSON format only.
    ts: &'a str,
    program: &'a str,
    stream: Stream,
    line: &'a str,
    partial: bool,
}

#[derive(serde::Serialize)]
struct JsonLine<'a> {
    ts: &'a str,
    program: &'a str,
    stream: &'static str,
    line: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    partial: bool,
}

/// Appends the formatted line (with its newline) to `buf`.
fn format_line(format: LogFormat, l: &LineRef<'_>, buf: &mut Vec<u8>) {
    match format {
        LogFormat::Text => {
            buf.extend_from_slice(l.program.as_bytes());
            buf.extend_from_slice(b" | ");
            buf.extend_from_slice(l.line.as_bytes());
            if l.partial {
                buf.extend_from_slice(" …".as_bytes());
            }
        }
        LogFormat::Json => {
            let obj = JsonLine {
                ts: l.ts,
                program: l.program,
                stream: l.stream.name(),
                line: l.line,
                partial: l.partial,
            };
            // Serialising strings and a bool into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *buf, &obj);
        }
    }
    buf.push(b'\n');
}

/// The writer thread: formats and writes lines in arrival order, flushing whenever it has
/// nothing more to do so lines appear promptly without a syscall per line under load. The
/// supervisor's own lines (`own`) are taken before every message, and written to stderr.
///
/// Only this thread writes to the two sinks, so when stdout and stderr are the same pipe or
/// file (`2>&1`, a terminal) a supervisor message still never lands inside a program's line,
/// although program output is written in blocks larger than the pipe's atomic write size.
fn write_loop(mut rx: mpsc::Receiver<Msg>, own: &OwnLines, mut sinks: [Sink; 2]) {
    let mut last: Option<usize> = None;
    let mut buf = Vec::with_capacity(1024);
    let mut reported = 0;
    loop {
        write_own(own, &mut sinks, &mut last);
        // Once the output moves again, say in the log itself that lines are missing (the line
        // goes through the queue like any other, and is counted if it cannot be queued).
        let dropped = own.dropped.load(Ordering::Relaxed);
        if dropped > reported {
            tracing::warn!(
                dropped = dropped - reported,
                total = dropped,
                "supervisor log lines were dropped: stdout/stderr did not keep up"
            );
            reported = own.dropped.load(Ordering::Relaxed);
        }
        let msg = match rx.try_recv() {
            Ok(m) => m,
            Err(mpsc::error::TryRecvError::Empty) => {
                sinks.iter_mut().for_each(Sink::flush);
                match rx.blocking_recv() {
                    Some(m) => m,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        match msg {
            Msg::Lines(batch, format) => {
                let idx = match batch.stream {
                    Stream::Stdout => 0,
                    Stream::Stderr => 1,
                };
                switch_to(&mut sinks, &mut last, idx);
                // JSON stamps every line of the batch with the same time: format it once.
                let ts = (format == LogFormat::Json).then(|| batch.ts.to_string());
                buf.clear();
                for (line, partial) in batch.iter() {
                    let l = LineRef {
                        ts: ts.as_deref().unwrap_or_default(),
                        program: &batch.program,
                        stream: batch.stream,
                        line,
                        partial,
                    };
                    format_line(format, &l, &mut buf);
                    // Formatted lines are gathered into `buf` and written in blocks, not one
                    // by one, to save a copy call per line.
                    if buf.len() >= WRITE_BUF / 2 {
                        sinks[idx].write(&buf);
                        buf.clear();
                    }
                }
                sinks[idx].write(&buf);
            }
            Msg::Flush(done) => {
                write_own(own, &mut sinks, &mut last);
                sinks.iter_mut().for_each(Sink::flush);
                let _ = done.send(());
            }
            Msg::Wake => {}
        }
    }
    write_own(own, &mut sinks, &mut last);
    sinks.iter_mut().for_each(Sink::flush);
}

/// Makes `idx` the stream being written. Keeps stdout and stderr lines in order relative to
/// each other when both go to the same terminal or log collector: switching streams flushes the
/// other one first.
fn switch_to(sinks: &mut [Sink; 2], last: &mut Option<usize>, idx: usize) {
    if let Some(prev) = last.filter(|&p| p != idx) {
        sinks[prev].flush();
    }
    *last = Some(idx);
}

/// Writes the supervisor's queued lines to stderr.
fn write_own(own: &OwnLines, sinks: &mut [Sink; 2], last: &mut Option<usize>) {
    let lines = own.take();
    if !lines.is_empty() {
        switch_to(sinks, last, 1);
        lines.iter().for_each(|l| sinks[1].write(l));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_end_on_character_boundaries() {
        let s = "aé€😀".repeat(10);
        let b = s.as_bytes();
        for max in 4..20 {
            let cut = piece_len(b, max);
            assert!(cut <= max && cut + 3 >= max, "max {max} cut {cut}");
            assert!(s.is_char_boundary(cut), "max {max} cut {cut}");
        }
    }

    #[test]
    fn invalid_bytes_are_cut_where_asked() {
        let b = [0x80u8; 10];
        assert_eq!(piece_len(&b, 4), 4);
        assert_eq!(piece_len(&b, 1), 1);
    }

    fn lines_of(b: &Batch) -> Vec<(String, bool)> {
        b.iter().map(|(l, p)| (l.to_owned(), p)).collect()
    }

    fn batch() -> Batch {
        Batch::new(
            jiff::Timestamp::UNIX_EPOCH,
            Arc::from("p"),
            Stream::Stdout,
            0,
        )
    }

    #[test]
    fn lines_are_cut_in_place_with_cr_removed_and_long_ones_in_pieces() {
        let mut b = batch();
        b.push_lines(b"one\r\n\ntwo-is-long\n", 4);
        let want = [
            ("one", false),
            ("", false),
            ("two-", true),
            ("is-l", true),
            ("ong", false),
        ];
        let want: Vec<(String, bool)> = want.iter().map(|(l, p)| (l.to_string(), *p)).collect();
        assert_eq!(lines_of(&b), want);
    }

    #[test]
    fn pieces_never_cut_a_character_even_below_four_bytes() {
        let mut b = batch();
        b.push_lines("a€b\n".as_bytes(), 2);
        assert_eq!(
            lines_of(&b),
            [
                ("a".to_string(), true),
                ("€".to_string(), true),
                ("b".to_string(), false)
            ]
        );
    }

    #[test]
    fn invalid_utf8_lines_are_decoded_one_by_one() {
        let mut b = batch();
        b.push_lines(b"ok\n\xffbad\r\nend\n", 100);
        let got: Vec<String> = lines_of(&b).into_iter().map(|(l, _)| l).collect();
        assert_eq!(got, ["ok", "\u{fffd}bad", "end"]);
    }

    #[test]
    fn text_and_json_shapes() {
        let ts = jiff::Timestamp::UNIX_EPOCH.to_string();
        let l = LineRef {
            ts: &ts,
            program: "web",
            stream: Stream::Stderr,
            line: "a \"b\"",
            partial: true,
        };
        let mut buf = Vec::new();
        format_line(LogFormat::Text, &l, &mut buf);
        assert_eq!(String::from_utf8_lossy(&buf), "web | a \"b\" …\n");
        buf.clear();
        format_line(LogFormat::Json, &l, &mut buf);
        assert_eq!(
            String::from_utf8_lossy(&buf),
            "{\"ts\":\"1970-01-01T00:00:00Z\",\"program\":\"web\",\"stream\":\"stderr\",\"line\":\"a \\\"b\\\"\",\"partial\":true}\n"
        );
    }
}
