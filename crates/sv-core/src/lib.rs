//! Pure core of iot2mqtt-sv.
//!
//! Everything here is deterministic and free of IO: no tokio, no nix, no clock, no syscalls.
//! Time enters as an explicit `now: Instant` argument and randomness (backoff jitter) as an
//! explicit sample, so the IO runtime (`sv-runtime`) drives this crate and tests drive it with a
//! fake clock.
//!
//! - [`config`]: the TOML config model, parsed in two stages (spanned raw tree → validated
//!   [`config::Config`]) with every error collected and positioned.
//! - [`envfile`]: `.env` files read the way the IoT2MQTT platform writes them (raw `KEY=value`).
//! - [`signal`]: signal names and numbers as the config and the control protocol spell them.
//! - [`backoff`]: capped exponential restart backoff with jitter and a stability reset.
//! - [`machine`]: the supervisor state machine: facts in, commands out.
//! - [`plan`]: what a reload changes (old config vs new config).
#![forbid(unsafe_code)]

pub mod backoff;
pub mod config;
pub mod envfile;
pub mod health;
pub mod machine;
pub mod notify;
pub mod plan;
pub mod schedule;
pub mod signal;
