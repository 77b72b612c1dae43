//! Sending signals to programs, their process groups and leftover descendants, and holding the
//! supervisor's own signals pending until their handlers exist ([`hold_signals`]).
//!
//! Invariants:
//! - [`send`] never signals pid ≤ 0: `kill(0)`/`kill(-1)` would hit the supervisor's own group or
//!   every process, so a zero or negative pid from a caller is an error, not a broadcast.
//! - A target that is already gone (ESRCH) is not an error: exits race with signals all the time.
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
/// (ESRCH), `Ok(true)` when the signal was sent. A pid ≤ 0 is refused with `InvalidInput`.
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
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

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
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(&stat).map(|(state, ppid)| ProcEntry {
                pid,
                ppid,
                zombie: state == 'Z',
            })
        })
        .collect()
}

/// `(state, ppid)` from `/proc/PID/stat`: `pid (comm) state ppid ...`. `comm` may contain spaces
/// and parentheses, so fields are counted from the last `)` (proc(5)).
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
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
        assert_eq!(parse_stat("42 (a) b) (c) S 7 42 42 0 -1"), Some(('S', 7)));
        assert_eq!(parse_stat("9 (zz) Z 1 9"), Some(('Z', 1)));
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

    #[test]
    fn refuses_non_positive_pids() {
        for pid in [0, -1, -42] {
            let e = send(pid, Signal::Term, false).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(send(pid, Signal::Term, true).is_err());
        }
    }
}
