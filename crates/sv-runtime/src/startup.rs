//! What `run` settles before it supervises anything: the directory its sockets go in, where
//! the bridge's executable is, and whether the programs' `user` keys can be honoured by the user
//! it runs as.
//!
//! Containers run with a read-only root and a non-root user (`docker run --read-only --user
//! 1000:1000`), where the default `/run/iot2mqtt-sv` cannot be created. The default control
//! socket therefore falls back, in this order, to the first directory that can be created and
//! written: `/run/iot2mqtt-sv`, `$XDG_RUNTIME_DIR/iot2mqtt-sv`, `/tmp/iot2mqtt-sv-<uid>`. The
//! client verbs (`status`, `health`, ...) look in the same order for the first socket that
//! exists, so both sides agree without configuration. A `control_socket` set in the config or
//! by `$IOT2MQTT_SV_SOCKET` / `-s` is used as given: an explicit choice is never second-guessed.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, Uid, User, access, geteuid};
use sv_core::config::Config;

/// The bridge's executable, shipped beside `iot2mqtt-sv` (docs/architecture.md, "Two
/// binaries"): a binary of its own, so that PID 1 maps none of the MQTT and TLS code.
pub const BRIDGE_EXECUTABLE: &str = "iot2mqtt-sv-bridge";

/// Where the bridge's executable must be for the supervisor running from `exe`: in the same
/// directory. Not looked up on `PATH`: another version found there would speak another
/// protocol to its programs, or another contract to the platform.
pub fn bridge_executable(exe: &Path) -> PathBuf {
    exe.with_file_name(BRIDGE_EXECUTABLE)
}

/// The control socket's path when nothing chooses another.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/iot2mqtt-sv/control.sock";

/// The control socket's candidate paths, best first: the configured one alone unless it is the
/// default, else the fallback chain of the module documentation.
pub fn candidates(configured: &Path, xdg_runtime_dir: Option<&Path>, uid: u32) -> Vec<PathBuf> {
    if configured != Path::new(DEFAULT_CONTROL_SOCKET) {
        return vec![configured.to_path_buf()];
    }
    let mut out = vec![configured.to_path_buf()];
    if let Some(xdg) = xdg_runtime_dir.filter(|d| d.is_absolute()) {
        out.push(xdg.join("iot2mqtt-sv/control.sock"));
    }
    out.push(PathBuf::from(format!(
        "/tmp/iot2mqtt-sv-{uid}/control.sock"
    )));
    out
}

fn this_process_candidates(configured: &Path) -> Vec<PathBuf> {
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    candidates(configured, xdg.as_deref(), geteuid().as_raw())
}

/// Where the supervisor puts its control socket (and, next to it, the bridge and notify
/// sockets): the first candidate whose directory exists or can be created, is writable, and
/// (for a directory shared by everyone, such as `/tmp`) is ours alone. The last candidate is
/// returned when none qualifies, so the bind error names a real path.
pub fn server_socket(configured: &Path) -> PathBuf {
    let all = this_process_candidates(configured);
    let shared = all.len() - 1;
    for (i, path) in all.iter().enumerate() {
        let Some(dir) = path.parent() else { continue };
        // The /tmp fallback is created 0700 and accepted only if it is ours: anyone can create
        // a directory there first, and a socket in it would then be theirs to replace.
        let made = if i == shared && all.len() > 1 {
            std::fs::DirBuilder::new().mode(0o700).create(dir).is_ok()
                || std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == geteuid().as_raw())
        } else {
            std::fs::create_dir_all(dir).is_ok()
        };
        if made && access(dir, AccessFlags::W_OK | AccessFlags::X_OK).is_ok() {
            return path.clone();
        }
    }
    all.last()
        .cloned()
        .unwrap_or_else(|| configured.to_path_buf())
}

/// Where a client verb finds the supervisor: the first candidate that is a socket, else the
/// first candidate (whose connect error then names the expected path).
pub fn client_socket(configured: &Path) -> PathBuf {
    let all = this_process_candidates(configured);
    all.iter()
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket()))
        .unwrap_or(&all[0])
        .clone()
}

/// Programs whose `user` the supervisor cannot switch to because it is not root, one message
/// each. A `user` naming the supervisor's own user (by name or uid) is allowed: nothing to
/// switch. Checked before anything starts, so the mistake is a config error (exit 2) rather
/// than a crash loop of failed starts.
pub fn unswitchable_users(cfg: &Config) -> Vec<String> {
    let euid = geteuid();
    if euid.is_root() {
        return Vec::new();
    }
    cfg.programs
        .iter()
        .filter_map(|p| {
            let spec = p.user.as_deref()?;
            let uid = match spec.parse::<u32>() {
                Ok(n) => Some(Uid::from_raw(n)),
                Err(_) => User::from_name(spec).ok().flatten().map(|u| u.uid),
            };
            (uid != Some(euid)).then(|| {
                format!(
                    "program {:?}: user = {spec:?} needs the supervisor to run as root, and it runs as uid {euid}; \
                     remove `user` (the programs then run as uid {euid}) or run the container as root",
                    p.name
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_socket_has_no_fallback() {
        let c = candidates(Path::new("/srv/sv.sock"), Some(Path::new("/run/user/7")), 7);
        assert_eq!(c, vec![PathBuf::from("/srv/sv.sock")]);
    }

    #[test]
    fn the_default_falls_back_to_xdg_then_tmp() {
        let c = candidates(
            Path::new(DEFAULT_CONTROL_SOCKET),
            Some(Path::new("/run/user/1000")),
            1000,
        );
        let want: Vec<PathBuf> = [
            "/run/iot2mqtt-sv/control.sock",
            "/run/user/1000/iot2mqtt-sv/control.sock",
            "/tmp/iot2mqtt-sv-1000/control.sock",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(c, want);
        // A relative XDG_RUNTIME_DIR is invalid by the XDG spec and skipped.
        let c = candidates(Path::new(DEFAULT_CONTROL_SOCKET), Some(Path::new("run")), 5);
        assert_eq!(c.len(), 2);
    }
}
