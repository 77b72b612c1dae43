//! Environment files as real deployments have them, checked with the real binary: the `.env`
//! that the IoT2MQTT web backend writes (raw `KEY=value`, no quoting) read by the bridge against a
//! mosquitto that requires the exact password.
//!
//! Waits are bounded polls on observable facts (a retained MQTT message, a file a program wrote,
//! the status over the control socket).
// Tests start, wait for and pace their own processes; the rules in clippy.toml are for the
// supervisor's runtime.
#![allow(clippy::disallowed_methods)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{Sv, SvOptions, child_cmd, toml_str};
use sv_testkit::{Mosquitto, WAIT, wait_for};

/// A password with everything a strict dotenv parser mangles: `$` (expansion), a blank and `#`
/// (an unquoted value ending early).
const PASSWORD: &str = "pa$s w0rd#1";
const USER: &str = "iot";

/// A broker that admits only `USER` with `PASSWORD` (a `mosquitto_passwd` file, no anonymous
/// clients); the password file's directory is returned with it.
fn password_broker() -> Option<(Mosquitto, sv_testkit::TempDir)> {
    let pw_dir = sv_testkit::tempdir().unwrap();
    // mosquitto drops to its own user before reading the password file.
    std::fs::set_permissions(pw_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pw = pw_dir.path().join("passwd");
    let st = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&pw)
        .args([USER, PASSWORD])
        .status();
    match st {
        Ok(st) => assert!(st.success(), "mosquitto_passwd: {st}"),
        Err(e) => {
            assert!(!sv_testkit::mosquitto_required(), "mosquitto_passwd: {e}");
            eprintln!("skipped: mosquitto_passwd is not installed");
            return None;
        }
    }
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let broker = Mosquitto::start_with(&format!(
        "log_dest none\nallow_anonymous false\npassword_file {}\n",
        pw.display()
    ))?;
    Some((broker, pw_dir))
}

/// One retained message on `topic`, read with the test's own credentials (`None` when none came
/// within a short window).
fn retained(port: u16, topic: &str) -> Option<String> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-u", USER, "-P", PASSWORD, "-t", topic, "-C", "1", "-W", "2",
        ])
        .output()
        .expect("running mosquitto_sub");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn issue_13_the_bridge_logs_in_with_a_password_the_web_backend_wrote_raw_into_dot_env() {
    let Some((broker, _pw)) = password_broker() else {
        return;
    };
    let app = sv_testkit::tempdir().unwrap();
    std::fs::create_dir_all(app.path().join("instances")).unwrap();
    // Byte for byte what `config_service.save_env` writes: a header, group comments and
    // `f"{key}={value}\n"` lines; plus a stray line the platform's own reader skips.
    let env = format!(
        "# IoT2MQTT Configuration\n# Generated at 2026-01-01T10:00:00.000000\n\n\
         # Web Interface\nWEB_ACCESS_KEY=k\"e'y\\with\\backslashes\n\n\
         # MQTT Broker Settings\nMQTT_HOST=127.0.0.1\nMQTT_PORT={}\nMQTT_USERNAME={USER}\n\
         MQTT_PASSWORD={PASSWORD}\n\n\
         # MQTT Topics and Client\nMQTT_BASE_TOPIC=Env\nMQTT_CLIENT_PREFIX=iot2mqtt\n\n\
         TZ=Europe/Berlin\nnote for the admin: rotate the password\n",
        broker.port
    );
    std::fs::write(app.path().join(".env"), env).unwrap();
    let config = format!(
        "[bridge]\niot2mqtt_path = {}\n\n[program.app]\ncommand = {}\n",
        toml_str(&app.path().display().to_string()),
        child_cmd(&[])
    );
    let sv = Sv::spawn(
        &config,
        SvOptions {
            // The platform injects INSTANCE_NAME as a real variable; everything MQTT is in .env.
            env: vec![("INSTANCE_NAME".into(), "envtest".into())],
            ..SvOptions::default()
        },
    );
    let topic = "Env/v1/instances/envtest/status";
    let got = std::panic::catch_unwind(|| {
        wait_for("the bridge's retained online", WAIT, || {
            retained(broker.port, topic).filter(|p| p == "online")
        })
    });
    assert!(
        got.is_ok(),
        "no `online` on {topic}; supervisor stderr:\n{}\nstdout:\n{}",
        sv.stderr(),
        sv.stdout()
    );
}

/// A secret value that must show up in the program's environment and nowhere else.
const SECRET: &str = "s3cr3t-Xy9-never-printed";

#[test]
fn env_files_and_secret_files_reach_the_program_in_precedence_order_and_the_secret_nowhere_else() {
    let dir = Sv::new_dir();
    let d = dir.path();
    std::fs::write(
        d.join("a.env"),
        "# [supervisor] env_file\nSHARED=from-a\nONLY_A=a\nSV_REAL=from-file\n\
         PASS_RAW=pa$s w0rd#1\nexport QUOTED=\"q v\"\nthis line is not KEY=value\n",
    )
    .unwrap();
    std::fs::write(d.join("b.env"), "SHARED=from-b\nOVERRIDE=from-b\n").unwrap();
    std::fs::write(d.join("db_password"), format!("{SECRET}\n")).unwrap();
    let report = d.join("env.txt");
    let config = format!(
        "[supervisor]\nenv_file = [{}]\n\n[program.app]\ncommand = {}\nenv_file = {}\n\
         environment = {{ OVERRIDE = \"from-config\", DB_PASSWORD = {{ file = {} }} }}\n",
        toml_str(&d.join("a.env").display().to_string()),
        child_cmd(&["--report-env", &report.display().to_string()]),
        toml_str(&d.join("b.env").display().to_string()),
        toml_str(&d.join("db_password").display().to_string()),
    );
    let sv = Sv::spawn_in(
        dir,
        &config,
        SvOptions {
            env: vec![("SV_REAL".into(), "real".into())],
            ..SvOptions::default()
        },
    );
    sv.wait_socket();
    let env = wait_for("the program's environment report", WAIT, || {
        std::fs::read_to_string(&report)
            .ok()
            .filter(|t| t.contains("@cwd="))
    });
    for want in [
        "SHARED=from-b",
        "ONLY_A=a",
        "SV_REAL=real",
        "PASS_RAW=pa$s w0rd#1",
        "QUOTED=q v",
        "OVERRIDE=from-config",
        &format!("DB_PASSWORD={SECRET}"),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} missing in:\n{env}");
    }
    sv.wait_state("app", "RUNNING");

    let status = sv.cli(&["status"]);
    let json = sv.cli(&["status", "--json"]);
    let environ = std::fs::read(format!("/proc/{}/environ", sv.pid())).unwrap();
    for (what, text) in [
        (
            "status",
            String::from_utf8_lossy(&status.stdout).into_owned(),
        ),
        (
            "status --json",
            String::from_utf8_lossy(&json.stdout).into_owned(),
        ),
        ("supervisor stdout", sv.stdout()),
        ("supervisor stderr", sv.stderr()),
        (
            "/proc/<supervisor>/environ",
            String::from_utf8_lossy(&environ).into_owned(),
        ),
    ] {
        assert!(
            !text.contains(SECRET),
            "the secret leaked into {what}:\n{text}"
        );
    }
    assert!(String::from_utf8_lossy(&json.stdout).contains("\"app\""));
    // The malformed line is reported by number, without its text.
    assert!(
        sv.stderr()
            .contains("a.env: line 7: a key cannot contain blanks: line skipped"),
        "{}",
        sv.stderr()
    );
}

#[test]
fn a_missing_secret_or_env_file_is_a_failed_start_that_names_the_file() {
    let dir = Sv::new_dir();
    let d = dir.path().to_path_buf();
    let config = format!(
        "[program.secret]\ncommand = {cmd}\ncritical = false\nstartretries = 0\n\
         environment = {{ DB_PASSWORD = {{ file = {} }} }}\n\n\
         [program.envfile]\ncommand = {cmd}\ncritical = false\nstartretries = 0\nenv_file = {}\n",
        toml_str(&d.join("missing-secret").display().to_string()),
        toml_str(&d.join("missing.env").display().to_string()),
        cmd = child_cmd(&[]),
    );
    let sv = Sv::spawn_in(dir, &config, SvOptions::default());
    sv.wait_socket();
    let p = sv.wait_state("secret", "FATAL");
    let reason = p["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "environment DB_PASSWORD: file {}: No such file or directory",
            d.join("missing-secret").display()
        )),
        "{p}"
    );
    let p = sv.wait_state("envfile", "FATAL");
    assert!(
        p["reason"].as_str().unwrap_or_default().contains(&format!(
            "env_file {}: No such file or directory",
            d.join("missing.env").display()
        )),
        "{p}"
    );
}
