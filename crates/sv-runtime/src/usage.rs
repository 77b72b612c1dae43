//! CPU and memory of processes, for `status` (measured in the CLI client, not in PID 1).

use std::collections::HashMap;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// One process's usage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU use over the sampling window, percent of one core.
    pub cpu_percent: f32,
    /// Resident memory.
    pub rss_bytes: u64,
}

/// Samples `pids` twice, `sysinfo::MINIMUM_CPU_UPDATE_INTERVAL` apart (CPU % is a rate).
/// Runs in the CLI client only (`status`), never in the supervisor's loop, hence the sleep.
#[allow(clippy::disallowed_methods)]
pub fn measure(pids: &[i32]) -> HashMap<i32, Usage> {
    if pids.is_empty() {
        return HashMap::new();
    }
    let list: Vec<Pid> = pids.iter().map(|&p| Pid::from_u32(p as u32)).collect();
    let kind = ProcessRefreshKind::nothing().with_cpu().with_memory();
    let Ok(mut sys) = System::new() else {
        return HashMap::new();
    };
    sys.refresh_processes_specifics(ProcessesToUpdate::Some(&list), true, kind);
    // A rate needs two samples; this pause is the measurement window, not synchronisation.
    std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
    sys.refresh_processes_specifics(ProcessesToUpdate::Some(&list), true, kind);
    list.iter()
        .zip(pids)
        .filter_map(|(p, &raw)| {
            sys.process(*p).map(|pr| {
                (
                    raw,
                    Usage {
                        cpu_percent: pr.cpu_usage(),
                        rss_bytes: pr.memory(),
                    },
                )
            })
        })
        .collect()
}
