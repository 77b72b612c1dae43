//! IO runtime of iot2mqtt-sv: drives the pure [`sv_core::machine`] with real processes,
//! signals, pipes and sockets.

// PID 1 writes to fds 1 and 2 only through the log writer thread (`logs.rs`): a direct print
// blocks the event loop as soon as the output stalls.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod client;
pub mod control;
pub mod http;
pub mod limit;
mod log_file;
pub mod logs;
pub mod notify;
pub mod probe;
pub mod reap;
pub mod reload;
pub mod rlimits;
mod server;
pub mod signals;
pub mod spawn;
pub mod startup;
pub mod supervisor;
pub mod usage;
