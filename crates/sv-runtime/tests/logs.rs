//! The log pipeline with real child processes writing through real pipes into a [`LogHub`]
//! whose stdout/stderr are in-memory sinks.
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};

use sv_core::config::LogFormat;
use sv_runtime::logs::{LogHub, LogLine, Stream};
use sv_testkit::{WAIT, test_child, wait_until};

/// An in-memory sink that the test reads back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Shared {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).expect("sink output is UTF-8")
    }
    fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn hub(format: LogFormat, ring: usize, max: usize) -> (LogHub, Shared, Shared) {
    let (out, err) = (Shared::default(), Shared::default());
    let hub = LogHub::with_writers(
        format,
        ring,
        max,
        Box::new(out.clone()),
        Box::new(err.clone()),
    );
    (hub, out, err)
}

/// Spawns `argv` with stdout (and stderr, when given) on the hub's pipes. The Command, and with
/// it the parent's copies of the write ends, is dropped before returning so EOF can arrive.
fn spawn(argv: &[&str], stdout: OwnedFd, stderr: Option<OwnedFd>) -> Child {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout));
    if let Some(e) = stderr {
        cmd.stderr(Stdio::from(e));
    }
    cmd.spawn().expect("spawning the test program")
}

fn sh(script: &str, hub: &LogHub, program: &str) -> Child {
    let out = hub.pipe(program, Stream::Stdout, None).unwrap();
    let err = hub.pipe(program, Stream::Stderr, None).unwrap();
    spawn(&["sh", "-c", script], out, Some(err))
}

/// The text of a program's last `n` lines in the ring buffer.
fn tail_text(hub: &LogHub, program: &str, n: usize) -> Vec<String> {
    hub.tail(program, n)
        .iter()
        .map(|l| l.line.to_string())
        .collect()
}

/// The next line a follower receives, within the test's bound.
async fn next_followed(follower: &mut tokio::sync::broadcast::Receiver<LogLine>) -> LogLine {
    tokio::time::timeout(WAIT, follower.recv())
        .await
        .expect("follower got a line in time")
        .expect("follower not lagging")
}

/// Waits for the child and for every pipe to reach EOF and be written out.
async fn finish(hub: &LogHub, mut child: Child) {
    let status = child.wait().expect("waiting for the child");
    assert!(status.success(), "child failed: {status}");
    assert!(hub.drain(WAIT).await, "log readers did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_lines_arrive_complete_and_in_order() {
    let (hub, out, err) = hub(LogFormat::Text, 10, 16 * 1024);
    let pipe = hub.pipe("spam", Stream::Stdout, None).unwrap();
    let child = spawn(
        &[
            test_child().to_str().unwrap(),
            "--spam",
            "100000",
            "--spam-len",
            "80",
            "--exit-after-ms",
            "0",
        ],
        pipe,
        None,
    );
    finish(&hub, child).await;

    let lines = out.lines();
    assert_eq!(lines.len(), 100_000, "lines lost or split");
    let body = "x".repeat(68);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line, &format!("spam | {i:010} {body}"), "line {i}");
    }
    assert!(err.text().is_empty());
    let tail = hub.tail("spam", 3);
    assert_eq!(tail.len(), 3);
    assert!(tail[2].line.starts_with("0000099999 "));
    assert!(
        tail.iter()
            .all(|l| l.stream == Stream::Stdout && !l.partial)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_lines_go_to_stderr_with_the_same_prefix() {
    let (hub, out, err) = hub(LogFormat::Text, 10, 1024);
    finish(&hub, sh("echo out; echo err >&2", &hub, "p")).await;
    assert_eq!(out.text(), "p | out\n");
    assert_eq!(err.text(), "p | err\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirected_stderr_is_written_and_tagged_as_stdout() {
    let (hub, out, err) = hub(LogFormat::Text, 10, 1024);
    let o = hub.pipe("r", Stream::Stdout, None).unwrap();
    let e = hub.pipe("r", Stream::Stdout, None).unwrap();
    finish(
        &hub,
        spawn(&["sh", "-c", "echo out; echo err >&2"], o, Some(e)),
    )
    .await;
    let mut lines = out.lines();
    lines.sort();
    assert_eq!(lines, ["r | err", "r | out"]);
    assert!(err.text().is_empty());
    assert!(hub.tail("r", 10).iter().all(|l| l.stream == Stream::Stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_line_without_newline_is_emitted_at_eof() {
    let (hub, out, _) = hub(LogFormat::Text, 10, 1024);
    finish(&hub, sh(r"printf 'first\r\nno newline'", &hub, "p")).await;
    assert_eq!(out.text(), "p | first\np | no newline\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_are_split_into_marked_pieces() {
    let (hub, out, _) = hub(LogFormat::Text, 10, 100);
    // 249-byte lines: pieces of 100, 100 and 49 bytes.
    let pipe = hub.pipe("long", Stream::Stdout, None).unwrap();
    let child = spawn(
        &[
            test_child().to_str().unwrap(),
            "--spam",
            "2",
            "--spam-len",
            "250",
            "--exit-after-ms",
            "0",
        ],
        pipe,
        None,
    );
    finish(&hub, child).await;
    let lines = out.lines();
    assert_eq!(lines.len(), 6, "{lines:#?}");
    for (n, piece) in lines.chunks(3).enumerate() {
        assert_eq!(piece[0], format!("long | {n:010} {} …", "x".repeat(89)));
        assert_eq!(piece[1], format!("long | {} …", "x".repeat(100)));
        assert_eq!(piece[2], format!("long | {}", "x".repeat(49)));
        let joined: String = piece
            .iter()
            .map(|l| l.trim_start_matches("long | ").trim_end_matches(" …"))
            .collect();
        assert_eq!(joined.len(), 249);
    }
    let tail = hub.tail("long", 3);
    assert_eq!(
        tail.iter().map(|l| l.partial).collect::<Vec<_>>(),
        [true, true, false]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_utf8_lines_are_split_on_character_boundaries() {
    let (hub, out, _) = hub(LogFormat::Text, 10, 33);
    // 40 × "é" (2 bytes each) = 80 bytes: pieces of 32, 32 and 16 bytes.
    let script = format!("printf '{}\\n'", "é".repeat(40));
    finish(&hub, sh(&script, &hub, "u")).await;
    let text = out.text();
    assert!(!text.contains('\u{FFFD}'), "a character was cut: {text}");
    let e = |n| "é".repeat(n);
    assert_eq!(
        text,
        format!("u | {} …\nu | {} …\nu | {}\n", e(16), e(16), e(8))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_replaced_not_dropped() {
    let (hub, out, _) = hub(LogFormat::Text, 10, 1024);
    finish(&hub, sh(r"printf 'ok \377\376 end\nnext\n'", &hub, "b")).await;
    assert_eq!(out.text(), "b | ok \u{FFFD}\u{FFFD} end\nb | next\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_ts_program_stream_and_line() {
    let (hub, out, err) = hub(LogFormat::Json, 10, 8);
    finish(
        &hub,
        sh(
            r#"echo 'say "hi!"'; echo oops >&2; echo 0123456789ab"#,
            &hub,
            "j",
        ),
    )
    .await;
    let parse = |s: &str| -> serde_json::Value { serde_json::from_str(s).expect("a JSON line") };
    let outs: Vec<_> = out.lines().iter().map(|l| parse(l)).collect();
    let errs: Vec<_> = err.lines().iter().map(|l| parse(l)).collect();
    assert_eq!(outs.len(), 4, "{outs:#?}");
    assert_eq!(errs.len(), 1);
    for v in outs.iter().chain(&errs) {
        assert_eq!(v["program"], "j");
        let ts = v["ts"].as_str().expect("ts is a string");
        ts.parse::<jiff::Timestamp>().expect("ts is RFC 3339");
    }
    assert_eq!(outs[0]["line"], "say \"hi!");
    assert_eq!(outs[0]["partial"], true);
    assert_eq!(outs[1]["line"], "\"");
    assert!(outs[1].get("partial").is_none());
    assert_eq!(outs[2]["line"], "01234567");
    assert_eq!(outs[2]["partial"], true);
    assert_eq!(outs[3]["line"], "89ab");
    assert_eq!(outs[0]["stream"], "stdout");
    assert_eq!(errs[0]["stream"], "stderr");
    assert_eq!(errs[0]["line"], "oops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_keeps_the_last_lines_and_followers_see_new_ones() {
    let (hub, _, _) = hub(LogFormat::Text, 5, 1024);
    let mut follower = hub.follow("f");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook_seen = seen.clone();
    let hook: sv_runtime::logs::LineHook =
        Arc::new(move |l: &str| hook_seen.lock().unwrap().push(l.to_owned()));
    let o = hub.pipe("f", Stream::Stdout, Some(hook)).unwrap();
    let child = spawn(
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10; do echo line$i; done",
        ],
        o,
        None,
    );
    finish(&hub, child).await;

    assert_eq!(
        tail_text(&hub, "f", 100),
        ["line6", "line7", "line8", "line9", "line10"]
    );
    assert_eq!(tail_text(&hub, "f", 2), ["line9", "line10"]);
    assert!(hub.tail("nobody", 10).is_empty());

    for i in 1..=10 {
        let l = next_followed(&mut follower).await;
        assert_eq!(&*l.line, format!("line{i}"));
        assert_eq!(&*l.program, "f");
    }
    assert_eq!(seen.lock().unwrap().len(), 10, "on_line saw every line");
}

/// Followers come and go: the follow channel is dropped with the last follower and made again
/// for the next one, which must see the lines written after it started following.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_can_be_followed_again_after_every_follower_left() {
    let (hub, _, _) = hub(LogFormat::Text, 10, 1024);
    drop(hub.follow("f"));
    let o = hub.pipe("f", Stream::Stdout, None).unwrap();
    finish(&hub, spawn(&["sh", "-c", "echo unseen"], o, None)).await;
    let mut again = hub.follow("f");
    let o = hub.pipe("f", Stream::Stdout, None).unwrap();
    finish(&hub, spawn(&["sh", "-c", "echo seen"], o, None)).await;
    assert_eq!(&*next_followed(&mut again).await.line, "seen");
    assert_eq!(tail_text(&hub, "f", 10), ["unseen", "seen"]);
}

/// A sink that blocks every write until the gate opens: a stalled `docker logs` reader.
struct Gated {
    gate: Arc<(Mutex<bool>, Condvar)>,
    out: Shared,
}

impl Write for Gated {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (open, cv) = &*self.gate;
        let mut o = open.lock().unwrap();
        while !*o {
            o = cv.wait(o).unwrap();
        }
        drop(o);
        self.out.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stdout_blocks_the_program_and_loses_nothing() {
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let out = Shared::default();
    let hub = LogHub::with_writers(
        LogFormat::Text,
        10,
        1024,
        Box::new(Gated {
            gate: gate.clone(),
            out: out.clone(),
        }),
        Box::new(Shared::default()),
    );
    // 20 000 × 100 bytes is far more than the pipe, the channel and the writer's buffer hold.
    let pipe = hub.pipe("slow", Stream::Stdout, None).unwrap();
    let mut child = spawn(
        &[
            test_child().to_str().unwrap(),
            "--spam",
            "20000",
            "--spam-len",
            "100",
            "--exit-after-ms",
            "0",
        ],
        pipe,
        None,
    );
    let syscall = format!("/proc/{}/syscall", child.id());
    // Syscall 1 is write(2) on x86_64 (64 on aarch64): the program waits on the full pipe.
    let write_nr = if cfg!(target_arch = "aarch64") {
        "64"
    } else {
        "1"
    };
    wait_until("the program to block writing to its full pipe", || {
        std::fs::read_to_string(&syscall)
            .is_ok_and(|s| s.split_whitespace().next() == Some(write_nr))
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "program finished despite a stalled stdout"
    );
    assert!(out.text().is_empty());

    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    finish(&hub, child).await;
    let lines = out.lines();
    assert_eq!(lines.len(), 20_000, "lines were lost");
    assert!(lines[19_999].starts_with("slow | 0000019999 "));
}

/// A sink whose reader went away.
struct Broken;

impl Write for Broken {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_drops_output_but_keeps_the_pipeline_working() {
    let err = Shared::default();
    let hub = LogHub::with_writers(
        LogFormat::Text,
        10,
        1024,
        Box::new(Broken),
        Box::new(err.clone()),
    );
    let child = sh(
        "i=0; while [ $i -lt 2000 ]; do echo out$i; i=$((i+1)); done; echo done >&2",
        &hub,
        "c",
    );
    finish(&hub, child).await;
    assert_eq!(err.text(), "c | done\n", "stderr still written");
    let tail = hub.tail("c", 2);
    assert!(
        tail.iter().any(|l| &*l.line == "out1999"),
        "ring still fed: {tail:?}"
    );
}

#[test]
fn pipe_outside_a_runtime_is_an_error_not_a_panic() {
    let (hub, _, _) = hub(LogFormat::Text, 10, 1024);
    assert!(hub.pipe("x", Stream::Stdout, None).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_never_reads_skips_and_does_not_block_the_pipeline() {
    let (hub, out, _) = hub(LogFormat::Text, 10, 1024);
    let mut idle = hub.follow("fast");
    let pipe = hub.pipe("fast", Stream::Stdout, None).unwrap();
    let child = spawn(
        &[
            test_child().to_str().unwrap(),
            "--spam",
            "5000",
            "--exit-after-ms",
            "0",
        ],
        pipe,
        None,
    );
    finish(&hub, child).await;
    assert_eq!(out.lines().len(), 5000);
    assert!(matches!(
        idle.recv().await,
        Err(tokio::sync::broadcast::error::RecvError::Lagged(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_gives_up_on_a_pipe_still_held_open_but_writes_what_it_has() {
    let (hub, out, _) = hub(LogFormat::Text, 10, 1024);
    // The shell prints a line and then `sleep` keeps the pipe open.
    let o = hub.pipe("held", Stream::Stdout, None).unwrap();
    let mut child = spawn(&["sh", "-c", "echo before; exec sleep 30"], o, None);
    wait_until("the first line to be read", || {
        !hub.tail("held", 1).is_empty()
    });
    assert!(!hub.drain(std::time::Duration::from_millis(50)).await);
    assert_eq!(out.text(), "held | before\n");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(hub.drain(WAIT).await, "EOF once the holder is gone");
}
