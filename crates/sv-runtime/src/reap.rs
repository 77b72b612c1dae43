//! The one reaper: the only code in the supervisor that waits for children.
//!
//! Invariants:
//! - only [`reap`] calls `waitpid`, always with pid -1 and `WNOHANG`: it collects the statuses of
//!   our programs, our probes and every orphan re-parented to us, and the caller routes them by
//!   pid. Any other `waitpid` (std's `Child::wait`, `status`, `output`) would race it and lose
//!   statuses, so nothing else may wait.
//! - SIGCHLD coalesces (several exits, one signal), so every call drains until the kernel has
//!   nothing left; it never blocks.
//! - [`reap`] and [`crate::spawn`] hold the same lock: std waits for a child whose exec failed
//!   by its pid and panics if that status was already taken.
//!
//! Statuses are decoded with libc rather than nix: nix's `waitpid` returns an error for a child
//! killed by a real-time signal, after the kernel has already discarded the zombie.

use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;
use sv_core::machine::ExitStatus;

/// How we came to be responsible for orphans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaperMode {
    /// We are PID 1 of a PID namespace (a container): the kernel re-parents every orphan to us.
    Pid1,
    /// We are an ordinary process marked `PR_SET_CHILD_SUBREAPER`: orphans among our descendants
    /// are re-parented to us.
    Subreaper,
}

/// Becomes a child subreaper (prctl `PR_SET_CHILD_SUBREAPER`) unless we are PID 1.
pub fn init() -> std::io::Result<ReaperMode> {
    if nix::unistd::getpid().as_raw() == 1 {
        return Ok(ReaperMode::Pid1);
    }
    nix::sys::prctl::set_child_subreaper(true)?;
    Ok(ReaperMode::Subreaper)
}

/// What one [`reap`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Every child that exited since the last call, in the order the kernel reported them.
    pub exited: Vec<(i32, ExitStatus)>,
    /// `waitpid` answered ECHILD: no child of ours is left, running or not.
    pub no_children: bool,
}

static PROCESS_LOCK: Mutex<()> = Mutex::new(());

/// Serialises spawning and reaping (see the module docs). A poisoned lock guards no data, so it
/// is simply taken over.
pub(crate) fn process_lock() -> MutexGuard<'static, ()> {
    PROCESS_LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Drains `waitpid(-1, WNOHANG)` until nothing is left (SIGCHLD coalesces: always drain fully).
/// EINTR is retried. Never blocks (beyond a spawn in progress on another thread).
pub fn reap() -> Reaped {
    let _lock = process_lock();
    let mut out = Reaped::default();
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid(2) writes only to `status`, a live local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            if let Some(st) = decode(status) {
                out.exited.push((pid, st));
            }
            continue;
        }
        if pid == 0 {
            // Children exist, none has exited.
            break;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::ECHILD => {
                out.no_children = true;
                break;
            }
            e => {
                // Only EINVAL is documented, for bad options: a bug, not a runtime condition.
                tracing::error!(error = %e, "waitpid failed");
                break;
            }
        }
    }
    out
}

/// A wait status as [`ExitStatus`]; `None` for stop/continue reports (never requested).
fn decode(status: libc::c_int) -> Option<ExitStatus> {
    if libc::WIFEXITED(status) {
        Some(ExitStatus::Code(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(ExitStatus::Signaled(libc::WTERMSIG(status)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_exit_codes_and_signals() {
        // Linux encoding: code in bits 8..16, terminating signal in bits 0..7.
        assert_eq!(decode(3 << 8), Some(ExitStatus::Code(3)));
        assert_eq!(decode(0), Some(ExitStatus::Code(0)));
        assert_eq!(decode(9), Some(ExitStatus::Signaled(9)));
        // A real-time signal (SIGRTMIN+2 = 36) with a core dump flag.
        assert_eq!(decode(36 | 0x80), Some(ExitStatus::Signaled(36)));
        // Stopped by SIGSTOP.
        assert_eq!(decode((19 << 8) | 0x7f), None);
    }
}
