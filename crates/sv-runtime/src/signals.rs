//! Sending signals to programs, their process groups and leftover descendants, and holding the
//! supervisor's own signals pending until their handlers exist ([`hold_signals`]).
//!
//! Invariants:
//! - [`send`] never signals pid ≤ 0: `kill(0)`/`kill(-1)` would hit the supervisor's own group or
//!   every process, so a zero or negative pid from a caller is an error, not a broadcast.
//! - A target that is already gone (ESRCH) is not an error: exits race with signals all the time.
//!   But a group signal that finds no group while the process itself is alive is an error, never
//!   "gone": a process that leads no group (a `MAINPID=` daemon left in its wrapper's group) must
//!   be signalled as a process, and the caller falls back to that (issue 12).
//! - [`signal_orphans`] signals only our descendants, never ourselves; as PID 1 it relies on
//!   `kill(-1)`, which the kernel never delivers to the caller or to PID 1 (kill(2)).

use std::collections::HashMap;
use std::io;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal as NixSignal, kill, killpg};
use nix::unistd::Pid;
use sv_core::signal::Signal;

use crate::reap::ReaperMode;

/// The signals the supervisor installs handlers for (besides SIGCHLD, whose default is to be
/// ignored and so cannot be lost).
const HELD: [NixSignal; 7] = [
    NixSignal::SIGTERM,
    NixSignal::SIGINT,
    NixSignal::SIGQUIT,
    NixSignal::SIGHUP,
    NixSignal::SIGUSR1,
    NixSignal::SIGUSR2,
    NixSignal::SIGWINCH,
];

fn held_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in HELD {
        set.add(s);
    }
    set
}

/// Blocks the supervisor's signals in the calling thread (and every thread it creates later)
/// until [`release_held_signals`], so they stay pending instead of being lost while the config
/// is read. As PID 1 a signal without a handler is discarded (pid_namespaces(7)), even one sent
/// from the host: a `docker stop` during start-up would be lost and Docker would SIGKILL us 10 s
/// later. A blocked signal is never discarded (the handler may exist by the time it is
/// unblocked). Programs are unaffected: they start with an empty mask ([`crate::spawn`]).
pub fn hold_signals() -> io::Result<()> {
    held_set().thread_block().map_err(io::Error::from)
}

/// Unblocks what [`hold_signals`] blocked; call once the handlers are installed. Pending
/// signals are delivered to their handlers at once.
pub fn release_held_signals() -> io::Result<()> {
    held_set().thread_unblock().map_err(io::Error::from)
}

/// The platform signal for a [`Signal`].
pub fn to_nix(sig: Signal) -> NixSignal {
    match sig {
        Signal::Hup => NixSignal::SIGHUP,
        Signal::Int => NixSignal::SIGINT,
        Signal::Quit => NixSignal::SIGQUIT,
        Signal::Kill => NixSignal::SIGKILL,
        Signal::Usr1 => NixSignal::SIGUSR1,
        Signal::Usr2 => NixSignal::SIGUSR2,
        Signal::Term => NixSignal::SIGTERM,
        Signal::Cont => NixSignal::SIGCONT,
        Signal::Stop => NixSignal::SIGSTOP,
        Signal::Winch => NixSignal::SIGWINCH,
        Signal::Alrm => NixSignal::SIGALRM,
        Signal::Pwr => NixSignal::SIGPWR,
    }
}

/// `kill(pid)`, or `killpg(pid)` when `group`. `Ok(false)` when the target is already gone
/// (ESRCH with no live process `pid`), `Ok(true)` when the signal was sent. A pid ≤ 0 is refused
/// with `InvalidInput`; a group signal to a live process that leads no group is an error.
pub fn send(pid: i32, sig: Signal, group: bool) -> io::Result<bool> {
    if pid <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal pid {pid}"),
        ));
    }
    let target = Pid::from_raw(pid);
    let r = if group {
        killpg(target, to_nix(sig))
    } else {
        kill(target, to_nix(sig))
    };
    match r {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) if group && stat(pid).is_some_and(|s| s.state != 'Z') => Err(
            io::Error::other(format!("process {pid} is alive but leads no process group")),
        ),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `Z`, ... (proc(5)).
    pub state: char,
    /// The parent's pid (0 when the parent is outside our PID namespace).
    pub ppid: i32,
    /// The process group id.
    pub pgrp: i32,
}

/// The stat of `pid`, `None` when it does not exist (or /proc is unreadable).
pub fn stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The stat of `pid` when it is a live (non-zombie) descendant of ours, `None` otherwise.
///
/// Walks `pid`'s ancestry only, one `/proc/PID/stat` per generation, rather than listing every
/// process: sd_notify `MAINPID=` datagrams arrive from programs at any rate, and a scan of all
/// of /proc per datagram would be PID 1's loop spending its time on them (issue 12). The walk
/// is bounded (a pid reused mid-walk could in theory form a loop).
pub fn live_descendant(pid: i32) -> Option<ProcStat> {
    let me = nix::unistd::getpid().as_raw();
    let first = stat(pid).filter(|s| s.state != 'Z' && pid != me)?;
    let mut parent = first.ppid;
    for _ in 0..MAX_ANCESTRY {
        if parent == me {
            return Some(first);
        }
        if parent <= 1 {
            // 0: the parent is outside the namespace; 1: init, which we are not (or `me` == 1
            // would have matched).
            return None;
        }
        parent = stat(parent)?.ppid;
    }
    None
}

/// The deepest process ancestry [`live_descendant`] follows.
const MAX_ANCESTRY: usize = 4096;

/// Signals every remaining descendant: as PID 1 `kill(-1, sig)` (the kernel spares PID 1
/// itself); as a subreaper, every process whose parent chain in /proc leads to us (not
/// ourselves). Zombies are skipped. Returns how many were signalled; as PID 1 that is the
/// number of descendants /proc listed just before (at least 1 when `kill(-1)` reached anyone).
pub fn signal_orphans(sig: Signal, mode: ReaperMode) -> usize {
    match mode {
        ReaperMode::Pid1 => {
            let listed = descendants().len();
            match kill(Pid::from_raw(-1), to_nix(sig)) {
                Ok(()) => listed.max(1),
                Err(Errno::ESRCH) => 0,
                Err(e) => {
                    tracing::warn!(error = %e, signal = %sig, "signalling every process failed");
                    0
                }
            }
        }
        ReaperMode::Subreaper => descendants()
            .into_iter()
            .filter(|&pid| match kill(Pid::from_raw(pid), to_nix(sig)) {
                Ok(()) => true,
                Err(Errno::ESRCH) => false,
                Err(e) => {
                    tracing::warn!(pid, error = %e, signal = %sig, "signalling a descendant failed");
                    false
                }
            })
            .collect::<Vec<_>>()
            .len(),
    }
}

/// Every live (non-zombie) process whose parent chain in /proc leads to us, excluding us.
/// A snapshot: processes may start or exit right after it is taken.
pub fn descendants() -> Vec<i32> {
    let me = nix::unistd::getpid().as_raw();
    let procs = read_proc();
    let parent: HashMap<i32, i32> = procs.iter().map(|p| (p.pid, p.ppid)).collect();
    let mut out: Vec<i32> = procs
        .iter()
        .filter(|p| p.pid != me && !p.zombie && leads_to(p.pid, me, &parent))
        .map(|p| p.pid)
        .collect();
    out.sort_unstable();
    out
}

/// Whether `pid`'s ancestry reaches `ancestor`. Bounded, because the snapshot is not atomic and
/// a reused pid could in theory form a loop.
fn leads_to(pid: i32, ancestor: i32, parent: &HashMap<i32, i32>) -> bool {
    let mut cur = pid;
    for _ in 0..parent.len() + 1 {
        match parent.get(&cur) {
            Some(&pp) if pp == ancestor => return true,
            Some(&pp) if pp > 0 => cur = pp,
            _ => return false,
        }
    }
    false
}

#[derive(Debug)]
struct ProcEntry {
    pid: i32,
    ppid: i32,
    zombie: bool,
}

fn read_proc() -> Vec<ProcEntry> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        tracing::warn!("cannot read /proc: descendants cannot be listed");
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            // Processes exit while we scan: a missing stat file is normal.
            stat(pid).map(|s| ProcEntry {
                pid,
                ppid: s.ppid,
                zombie: s.state == 'Z',
            })
        })
        .collect()
}

/// State, ppid and pgrp from `/proc/PID/stat`: `pid (comm) state ppid pgrp ...`. `comm` may
/// contain spaces and parentheses, so fields are counted from the last `)` (proc(5)).
fn parse_stat(stat: &str) -> Option<ProcStat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcStat { state, ppid, pgrp })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_maps_to_the_same_name() {
        for sig in Signal::ALL {
            assert_eq!(to_nix(*sig).as_str(), sig.to_string());
        }
    }

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let st = |state, ppid, pgrp| Some(ProcStat { state, ppid, pgrp });
        assert_eq!(parse_stat("42 (a) b) (c) S 7 40 42 0 -1"), st('S', 7, 40));
        assert_eq!(parse_stat("9 (zz) Z 1 9"), st('Z', 1, 9));
        assert_eq!(parse_stat("9 (zz) Z 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn ancestry_walk_is_bounded_and_stops_at_unknown_parents() {
        let parent: HashMap<i32, i32> = [(10, 5), (11, 10), (12, 11), (20, 1), (30, 31), (31, 30)]
            .into_iter()
            .collect();
        assert!(leads_to(12, 5, &parent));
        assert!(leads_to(10, 5, &parent));
        assert!(!leads_to(20, 5, &parent));
        assert!(!leads_to(30, 5, &parent), "a loop must terminate");
    }

    /// A `sleep 60` child of this test process, in the test's own process group.
    fn sleeping_child() -> (std::process::Child, i32) {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawning sleep");
        let pid = child.id() as i32;
        (child, pid)
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a test child of its own, not one the reaper owns
    fn a_live_process_that_leads_no_group_is_an_error_not_gone() {
        // A plain child stays in our process group: its pid names no group.
        let (mut child, pid) = sleeping_child();
        assert_ne!(stat(pid).map(|s| s.pgrp), Some(pid));
        let e = send(pid, Signal::Term, true).unwrap_err();
        assert!(e.to_string().contains("leads no process group"), "{e}");
        assert!(send(pid, Signal::Kill, false).unwrap());
        child.wait().expect("waiting for sleep");
        assert!(
            !send(pid, Signal::Kill, true).unwrap(),
            "a reaped process is gone"
        );
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a test child of its own, not one the reaper owns
    fn our_own_child_is_a_live_descendant_and_init_is_not() {
        let (mut child, pid) = sleeping_child();
        assert!(live_descendant(pid).is_some());
        assert!(live_descendant(1).is_none());
        assert!(live_descendant(nix::unistd::getpid().as_raw()).is_none());
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn refuses_non_positive_pids() {
        for pid in [0, -1, -42] {
            let e = send(pid, Signal::Term, false).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(send(pid, Signal::Term, true).is_err());
        }
    }
}
