//! The two shipped binaries: `iot2mqtt-sv` (PID 1 and the CLI) and `iot2mqtt-sv-bridge`, which
//! the supervisor starts from its own directory for a config with a `[bridge]` table.
//!
//! An image that copies only `iot2mqtt-sv` (the layout before the bridge had a binary of its
//! own) must fail at once and say what is missing, not start a supervisor whose bridge fails to
//! exec until FATAL; and `iot2mqtt-sv bridge`, which scripts may still call, must become the
//! bridge binary. Each case runs the real binaries, copied where the test needs them alone.
// Tests start their own processes; the rules in clippy.toml are for the supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sv_testkit::tempdir;

const BRIDGE_CONFIG: &str = "[bridge]\nhost = \"127.0.0.1\"\nport = 1\n";

fn bridge_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_iot2mqtt-sv-bridge"))
}

/// `iot2mqtt-sv` alone in a directory of its own.
fn lone_supervisor(dir: &Path) -> PathBuf {
    let lone = dir.join("iot2mqtt-sv");
    std::fs::copy(common::bin(), &lone).expect("copying iot2mqtt-sv");
    lone
}

fn run(cmd: &mut Command) -> (i32, String) {
    let Output { status, stderr, .. } = cmd.output().expect("running the binary");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[test]
fn run_refuses_a_bridge_config_when_the_bridge_binary_is_missing() {
    let dir = tempdir().expect("a temporary directory");
    let config = dir.path().join("sv.toml");
    std::fs::write(&config, BRIDGE_CONFIG).unwrap();
    let lone = lone_supervisor(dir.path());
    let (code, err) = run(Command::new(&lone)
        .args(["run", "-c"])
        .arg(&config)
        .env("IOT2MQTT_SV_SOCKET", dir.path().join("control.sock")));
    assert_eq!(code, 2, "{err}");
    let missing = dir.path().join("iot2mqtt-sv-bridge");
    assert!(
        err.contains(&format!("needs {} beside", missing.display())),
        "names the missing file: {err}"
    );
    // Nothing was started: the error comes before the supervisor binds its socket.
    assert!(!dir.path().join("control.sock").exists());

    // `check` validates the config, which is fine, and warns about the installation.
    let (code, err) = run(Command::new(&lone).args(["check", "-c"]).arg(&config));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning:") && err.contains("iot2mqtt-sv-bridge"),
        "{err}"
    );

    // Without a [bridge] table the bridge binary is not needed.
    std::fs::write(&config, "[program.p]\ncommand = \"true\"\n").unwrap();
    let (code, err) = run(Command::new(&lone).args(["check", "-c"]).arg(&config));
    assert_eq!((code, err.as_str()), (0, ""));
}

#[test]
fn the_bridge_verb_becomes_the_bridge_binary() {
    let dir = tempdir().expect("a temporary directory");
    let config = dir.path().join("sv.toml");
    // Settings the bridge refuses (exit 2, "bridge not started"), so it stops at once.
    std::fs::write(
        &config,
        "[bridge]\nhost = \"127.0.0.1\"\nport = 1\nqos = 7\n",
    )
    .unwrap();
    let direct = run(Command::new(bridge_bin()).args(["-c"]).arg(&config));
    assert_eq!(direct.0, 2, "{}", direct.1);
    assert!(direct.1.contains("bridge not started"), "{}", direct.1);
    let via_verb = run(Command::new(common::bin())
        .args(["bridge", "-c"])
        .arg(&config));
    // The same log line but for its timestamp.
    let untimed =
        |(code, err): &(i32, String)| (*code, err.split_once(' ').map(|x| x.1.to_string()));
    assert_eq!(
        untimed(&via_verb),
        untimed(&direct),
        "`iot2mqtt-sv bridge` runs the bridge binary"
    );

    // Where the bridge binary is missing the verb says so (exit 2).
    let lone = lone_supervisor(dir.path());
    let (code, err) = run(Command::new(&lone).args(["bridge", "-c"]).arg(&config));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("iot2mqtt-sv-bridge"), "{err}");
}

#[test]
fn both_binaries_read_the_same_default_config() {
    // `IOT2MQTT_SV_CONFIG` when no `-c` is given: the supervisor starts the bridge with `-c`,
    // but an operator running either binary by hand gets the same file.
    let dir = tempdir().expect("a temporary directory");
    let config = dir.path().join("from-env.toml");
    std::fs::write(&config, "[bridge]\nport = 70000\n").unwrap();
    for bin in [common::bin(), bridge_bin()] {
        let mut cmd = Command::new(&bin);
        if bin == common::bin() {
            cmd.arg("check");
        }
        let (code, err) = run(cmd.env("IOT2MQTT_SV_CONFIG", &config));
        assert_eq!(code, 2, "{}: {err}", bin.display());
        assert!(err.contains("from-env.toml"), "{}: {err}", bin.display());
    }
}
