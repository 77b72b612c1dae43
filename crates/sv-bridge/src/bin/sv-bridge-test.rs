//! Test fixture: the bridge as a standalone process, for tests that must kill it (`kill -9` to
//! prove the Last Will) or run the `publish` verb in a child process.
//!
//! `sv-bridge-test` resolves settings from the environment like the real bridge (plus
//! `SV_BRIDGE_TEST_SOCKET` for the socket path and `SV_BRIDGE_TEST_MAX_CONNECTIONS` for
//! `max_connections`), takes the supervisor view from the JSON in
//! `SV_BRIDGE_TEST_VIEW` (default: no programs) and runs until SIGTERM/SIGINT.
//! `sv-bridge-test publish KIND ...` runs the `publish` verb and `sv-bridge-test bridge -c CONFIG`
//! the real entry point ([`sv_bridge::main_bridge`]). Not installed in images.
#![forbid(unsafe_code)]
// A test fixture standing in for the supervised bridge: it logs to stderr directly, as the
// bridge does.
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("publish") => std::process::exit(sv_bridge::main_publish(&args[1..])),
        Some("bridge") if args.len() == 3 && args[1] == "-c" => {
            std::process::exit(sv_bridge::main_bridge(std::path::Path::new(&args[2])))
        }
        _ => {}
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
        .try_init();
    let env = |k: &str| std::env::var(k).ok();
    let section = sv_core::config::BridgeSection {
        socket: std::env::var_os("SV_BRIDGE_TEST_SOCKET").map(PathBuf::from),
        max_connections: env("SV_BRIDGE_TEST_MAX_CONNECTIONS").and_then(|v| v.parse().ok()),
        ..Default::default()
    };
    let settings = match sv_bridge::Settings::resolve(&section, &env) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "invalid settings");
            std::process::exit(2);
        }
    };
    let view: sv_bridge::SupervisorView = std::env::var("SV_BRIDGE_TEST_VIEW")
        .ok()
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async move {
        let (_view_tx, view_rx) = tokio::sync::watch::channel(view);
        let (ready_tx, _ready_rx) = tokio::sync::mpsc::channel(16);
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        };
        match sv_bridge::run(settings, view_rx, ready_tx, shutdown).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %e, "bridge failed");
                1
            }
        }
    });
    std::process::exit(code);
}
