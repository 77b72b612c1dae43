//! Resource limits: the supervisor's own floor (`minfds`/`minprocs`, as supervisord), the
//! translation of a program's `rlimits` into what the child applies before exec, and the
//! resident-memory sample behind `max_rss`.
//!
//! supervisord raises its soft limit, and the hard one when the soft would exceed it, and refuses
//! to start when it cannot: a supervisor that silently runs with fewer descriptors than its
//! programs were configured for fails much later and much less clearly.

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use sv_core::config::{Rlimit, SupervisorSettings};

/// The setrlimit(2) resource of a config limit.
pub fn resource(limit: Rlimit) -> Resource {
    match limit {
        Rlimit::Nofile => Resource::RLIMIT_NOFILE,
        Rlimit::Nproc => Resource::RLIMIT_NPROC,
        Rlimit::Core => Resource::RLIMIT_CORE,
        Rlimit::Memlock => Resource::RLIMIT_MEMLOCK,
        Rlimit::Stack => Resource::RLIMIT_STACK,
    }
}

/// Raises the supervisor's own limits to `minfds` / `minprocs`; the error names the key, the
/// wanted value, the current limits and the OS reason.
pub fn raise_minimums(settings: &SupervisorSettings) -> Result<(), String> {
    for (key, min, res) in [
        ("minfds", settings.minfds, Resource::RLIMIT_NOFILE),
        ("minprocs", settings.minprocs, Resource::RLIMIT_NPROC),
    ] {
        let Some(min) = min else { continue };
        let (soft, hard) = getrlimit(res).map_err(|e| format!("{key}: getrlimit: {}", e.desc()))?;
        if soft >= min {
            continue;
        }
        setrlimit(res, min, hard.max(min)).map_err(|e| {
            format!(
                "{key} = {min}: cannot raise the limit (soft {soft}, hard {hard}): {}; \
                 raise it for the container (docker run --ulimit) or lower {key}",
                e.desc()
            )
        })?;
        tracing::info!(
            key,
            from = soft,
            to = min,
            "raised the supervisor's resource limit"
        );
    }
    Ok(())
}

/// Resident memory of `pid` in bytes: the second field of `/proc/PID/statm` (pages) times the
/// page size. One small read, no parsing of `status` or `smaps`; `None` when the process is gone.
pub fn resident_bytes(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64);
    Some(pages.saturating_mul(page))
}
