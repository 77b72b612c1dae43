//! `test-child`: a small, scriptable program that integration tests supervise.
//!
//! Each flag makes it do one observable thing, so a test can assert on behaviour with real
//! processes and real signals. Flags are applied in this order: reports (`--pid-file`,
//! `--report-sigmask`, `--report-fds`, `--report-env`, `--report-ids`), `--orphans`, `--print`/
//! `--spam`, `--notify-ready`, then it waits (`--exit-after-ms`, or forever) and exits with
//! `--exit` (default 0). Signals: SIGTERM exits 0 (after `--term-delay-ms`) unless
//! `--ignore-term`; each received signal's name is appended to `--signal-log` (as `TAG NAME`
//! with `--signal-tag TAG`, so several programs can share one ordered log).
//! `--alloc-mb N` allocates and writes N MiB (resident) after the reports and keeps it.
//! `--orphans-ignore-term` makes the `--orphans` ignore SIGTERM; `--orphans-setsid` puts them
//! in a session (and process group) of their own. Orphans inherit the signals test-child blocks
//! (so SIGTERM does not end them) unless `--orphans-unblocked` spawns them before the blocking.
//!
//! The argument parser is deliberately tiny and std-only: this is a test fixture, and keeping it
//! free of dependencies keeps its start-up instant.
#![forbid(unsafe_code)]
// A test fixture: it waits for and paces its own processes; the rules in clippy.toml
// are for the supervisor's runtime.
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

#[derive(Default)]
struct Opts {
    exit: i32,
    exit_after_ms: Option<u64>,
    ignore_term: bool,
    term_delay_ms: u64,
    orphans: u32,
    orphan_sleep_ms: u64,
    print: Vec<String>,
    stderr: Vec<String>,
    spam: u64,
    spam_len: usize,
    pid_file: Option<PathBuf>,
    signal_log: Option<PathBuf>,
    report_sigmask: Option<PathBuf>,
    report_fds: Option<PathBuf>,
    report_env: Option<PathBuf>,
    report_ids: Option<PathBuf>,
    notify_ready: bool,
    notify_after_ms: u64,
    listen: Option<String>,
    append: Option<(PathBuf, String)>,
    signal_tag: Option<String>,
    orphans_ignore_term: bool,
    orphans_setsid: bool,
    orphans_unblocked: bool,
    alloc_mb: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!("test-child: {msg}");
    std::process::exit(64);
}

fn parse() -> Opts {
    let mut o = Opts {
        spam_len: 100,
        orphan_sleep_ms: 60_000,
        ..Default::default()
    };
    let mut args = std::env::args().skip(1);
    let val = |args: &mut dyn Iterator<Item = String>, f: &str| {
        args.next()
            .unwrap_or_else(|| usage(&format!("{f} needs a value")))
    };
    while let Some(a) = args.next() {
        let a = a.as_str();
        macro_rules! num {
            () => {
                val(&mut args, a)
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("{a} needs a number")))
            };
        }
        match a {
            "--exit" => o.exit = num!(),
            "--exit-after-ms" => o.exit_after_ms = Some(num!()),
            "--ignore-term" => o.ignore_term = true,
            "--term-delay-ms" => o.term_delay_ms = num!(),
            "--orphans" => o.orphans = num!(),
            "--alloc-mb" => o.alloc_mb = num!(),
            "--orphan-sleep-ms" => o.orphan_sleep_ms = num!(),
            "--print" => o.print.push(val(&mut args, a)),
            "--stderr" => o.stderr.push(val(&mut args, a)),
            "--spam" => o.spam = num!(),
            "--spam-len" => o.spam_len = num!(),
            "--pid-file" => o.pid_file = Some(val(&mut args, a).into()),
            "--signal-log" => o.signal_log = Some(val(&mut args, a).into()),
            "--report-sigmask" => o.report_sigmask = Some(val(&mut args, a).into()),
            "--report-fds" => o.report_fds = Some(val(&mut args, a).into()),
            "--report-env" => o.report_env = Some(val(&mut args, a).into()),
            "--report-ids" => o.report_ids = Some(val(&mut args, a).into()),
            "--notify-ready" => o.notify_ready = true,
            "--notify-after-ms" => o.notify_after_ms = num!(),
            "--listen" => o.listen = Some(val(&mut args, a)),
            "--append" => {
                let file = val(&mut args, a);
                let line = val(&mut args, a);
                o.append = Some((file.into(), line));
            }
            "--signal-tag" => o.signal_tag = Some(val(&mut args, a)),
            "--orphans-ignore-term" => o.orphans_ignore_term = true,
            "--orphans-setsid" => o.orphans_setsid = true,
            "--orphans-unblocked" => o.orphans_unblocked = true,
            other => usage(&format!("unknown flag {other:?}")),
        }
    }
    o
}

fn write_file(path: &PathBuf, text: &str) {
    // Write then rename, so a test polling for the file never reads it half-written.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("writing report");
    std::fs::rename(&tmp, path).expect("renaming report");
}

fn append_line(path: &PathBuf, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("opening log");
    // One write(2) per line: `writeln!` on a File writes the text and the newline separately,
    // and children appending to the same file at once could then interleave them.
    f.write_all(format!("{line}\n").as_bytes())
        .expect("appending");
}

fn main() {
    let o = parse();
    let pid = std::process::id();

    if let Some((file, line)) = &o.append {
        append_line(file, line);
    }
    if let Some(p) = &o.report_sigmask {
        let mut cur = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, None, Some(&mut cur)).expect("sigmask");
        let blocked: Vec<String> = Signal::iterator()
            .filter(|s| cur.contains(*s))
            .map(|s| s.to_string())
            .collect();
        // Dispositions: report signals that are ignored (SIG_IGN) as inherited from the parent.
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let ign = status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .unwrap_or("")
            .trim()
            .to_string();
        write_file(
            p,
            &format!("blocked={}\nignored={ign}\n", blocked.join(",")),
        );
    }
    if let Some(p) = &o.report_fds {
        let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        fds.sort_by_key(|f| f.parse::<u32>().unwrap_or(u32::MAX));
        write_file(p, &(fds.join("\n") + "\n"));
    }
    if let Some(p) = &o.report_env {
        let mut env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
        env.sort();
        let cwd = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        env.push(format!("@cwd={cwd}"));
        write_file(p, &(env.join("\n") + "\n"));
    }
    if let Some(p) = &o.report_ids {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let pick = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let umask = pick("Umask:");
        let pgid = nix::unistd::getpgrp();
        let sid = nix::unistd::getsid(None).map(|s| s.as_raw()).unwrap_or(-1);
        write_file(
            p,
            &format!(
                "uid={}\ngid={}\ngroups={}\numask={umask}\npgid={pgid}\nsid={sid}\npid={pid}\n",
                pick("Uid:"),
                pick("Gid:"),
                pick("Groups:")
            ),
        );
    }

    if o.alloc_mb > 0 {
        // Written, so the pages are resident (what `max_rss` measures), and kept until exit.
        let block = vec![0x5au8; o.alloc_mb << 20];
        std::hint::black_box(Box::leak(block.into_boxed_slice()));
    }

    // Signals: a dedicated thread waits for them synchronously (sigwait), so the main flow stays
    // simple and no async-signal-safety rules apply.
    if o.orphans_unblocked {
        // Before the signals below are blocked: the mask is inherited across fork and exec.
        spawn_orphans(&o);
    }
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    set.thread_block().expect("blocking signals");
    let ignore_term = o.ignore_term;
    let term_delay = o.term_delay_ms;
    let sig_log = o.signal_log.clone();
    let sig_tag = o.signal_tag.clone();
    std::thread::spawn(move || {
        loop {
            let Ok(sig) = set.wait() else { continue };
            if let Some(p) = &sig_log {
                match &sig_tag {
                    Some(tag) => append_line(p, &format!("{tag} {}", sig.as_str())),
                    None => append_line(p, sig.as_str()),
                }
            }
            let terminating = matches!(sig, Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT);
            if terminating && !ignore_term {
                std::thread::sleep(Duration::from_millis(term_delay));
                std::process::exit(0);
            }
        }
    });

    if !o.orphans_unblocked {
        spawn_orphans(&o);
    }

    if let Some(addr) = &o.listen {
        let l = std::net::TcpListener::bind(addr).expect("binding --listen");
        std::thread::spawn(move || for _ in l.incoming() {});
    }

    {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for line in &o.print {
            let _ = writeln!(out, "{line}");
        }
        if o.spam > 0 {
            let body: String = "x".repeat(o.spam_len.saturating_sub(12));
            for i in 0..o.spam {
                let _ = writeln!(out, "{i:010} {body}");
            }
        }
        let _ = out.flush();
    }
    for line in &o.stderr {
        eprintln!("{line}");
    }

    if let Some(p) = &o.pid_file {
        write_file(p, &pid.to_string());
    }

    if o.notify_ready {
        std::thread::sleep(Duration::from_millis(o.notify_after_ms));
        if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
            let sock = UnixDatagram::unbound().expect("datagram socket");
            sock.send_to(
                format!("READY=1\nSTATUS=ready\nMAINPID={pid}").as_bytes(),
                path,
            )
            .expect("sending READY=1");
        }
    }

    match o.exit_after_ms {
        Some(ms) => std::thread::sleep(Duration::from_millis(ms)),
        None => loop {
            std::thread::park();
        },
    }
    std::process::exit(o.exit);
}

fn spawn_orphans(o: &Opts) {
    for _ in 0..o.orphans {
        // The intermediate process exits at once, so the grandchild is re-parented to the
        // nearest subreaper or PID 1: exactly what the supervisor must reap.
        if let Err(e) = double_fork(o.orphan_sleep_ms, o.orphans_ignore_term, o.orphans_setsid) {
            usage(&format!("spawning an orphan: {e}"));
        }
    }
}

/// Spawns a grandchild that sleeps, through an intermediate child that exits at once.
/// Uses `sh` so this fixture needs no `fork` of its own (and no `unsafe`).
fn double_fork(sleep_ms: u64, ignore_term: bool, new_session: bool) -> std::io::Result<()> {
    let secs = format!("{}.{:03}", sleep_ms / 1000, sleep_ms % 1000);
    // An ignored disposition survives exec (signal(7)), so `trap '' TERM` makes the sleeping
    // grandchild immune to SIGTERM: only SIGKILL ends it.
    let trap = if ignore_term { "trap '' TERM; " } else { "" };
    // setsid(1) puts the orphan outside the program's process group, out of reach of the
    // group signals that stop the program.
    let setsid = if new_session { "setsid " } else { "" };
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{trap}{setsid}sleep {secs} </dev/null >/dev/null 2>&1 &"
        ))
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("sh exited {st}")))
    }
}
