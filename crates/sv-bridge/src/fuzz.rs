//! Entry points for the fuzz targets in `fuzz/` (not a stable interface).
//!
//! [`inbound`] feeds one broker message through the bridge machine's own inbound handling —
//! topic classification, `cmd` / `get` / group `cmd` / `meta/request` payload parsing, command
//! routing and the bridge's own answers — without a socket, a broker or a runtime: the machine
//! is built but never connected, so everything it would publish stays in its outbox, and the
//! lines it delivers to the program connection are returned. Invariant: nothing here
//! touches the network; the only file access is the one-time settings resolution, which looks
//! for files under a directory that does not exist.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use sv_core::config::BridgeSection;

use crate::SupervisorView;
use crate::codec::{DeviceSet, Op, Request};
use crate::machine::{Input, Machine};
use crate::settings::{Settings, parse_instance_file};

/// The instance root the fuzzing machine listens under; inbound topics are built below it.
pub const ROOT: &str = "B/v1/instances/i";

/// The instance file of the fuzzing machine.
const INSTANCE: &str = r#"{
  "devices": [{"device_id": "d1"}, {"device_id": "d2", "enabled": false}],
  "groups": [{"group_id": "g1", "devices": ["d1", "d2", "gone", "a/b"]}]
}"#;

/// Settings of the fuzzing machine: instance `i` under base topic `B`, UTC, devices `d1`
/// (enabled) and `d2` (disabled), group `g1` with both, an unknown member and an invalid name.
fn settings() -> Arc<Settings> {
    static SETTINGS: OnceLock<Arc<Settings>> = OnceLock::new();
    SETTINGS
        .get_or_init(|| {
            let section = BridgeSection {
                instance: Some("i".into()),
                base_topic: Some("B".into()),
                iot2mqtt_path: Some(PathBuf::from("/nonexistent/iot2mqtt-sv-fuzz")),
                socket: Some(PathBuf::from("/nonexistent/iot2mqtt-sv-fuzz/bridge.sock")),
                tz: Some("UTC".into()),
                ..BridgeSection::default()
            };
            let mut s = Settings::resolve(&section, &|_| None)
                .expect("fixed fuzzing settings resolve without files");
            s.instance_config = parse_instance_file(Path::new("fuzz.json"), INSTANCE)
                .expect("the fixed fuzzing instance file parses");
            Arc::new(s)
        })
        .clone()
}

/// Handles one inbound message on `topic` exactly as the engine does for a message from the
/// broker, and returns the lines the engine sent to the program connection.
///
/// With `handler` a program is connected that said `hello` for every device and for meta
/// requests, so commands, `get` and meta requests are forwarded to it; without, the bridge
/// answers (or refuses) them itself.
#[doc(hidden)]
pub fn inbound(topic: &str, payload: &[u8], retain: bool, handler: bool) -> Vec<String> {
    let now = std::time::Instant::now();
    let wall = jiff::Timestamp::now();
    let mut m = Machine::new(settings(), SupervisorView::default(), now, wall, 0);
    let conn = 1;
    m.handle(
        now,
        wall,
        Input::ProgramConnected {
            conn,
            pid: None,
            sid: None,
        },
    );
    if handler {
        let req = Request {
            id: None,
            op: Op::Hello {
                devices: Some(DeviceSet::All(crate::codec::AllMarker::All)),
                meta: true,
            },
        };
        m.handle(now, wall, Input::Line { conn, req });
    }
    m.handle(
        now,
        wall,
        Input::Inbound {
            topic: topic.to_string(),
            payload: payload.to_vec(),
            retain,
        },
    );
    let mut lines = Vec::new();
    while let Some((_, line)) = m.poll_deliver() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Reply, decode_reply};

    fn replies(lines: &[String]) -> Vec<Reply> {
        lines
            .iter()
            .map(|l| decode_reply(l.trim_end().as_bytes()).unwrap())
            .collect()
    }

    #[test]
    fn commands_reach_the_handler_and_nothing_else_does() {
        let topic = format!("{ROOT}/devices/d1/cmd");
        let got = replies(&inbound(
            &topic,
            br#"{"id":"c1","values":{"on":true}}"#,
            false,
            true,
        ));
        assert!(
            matches!(got.as_slice(), [Reply::Ok { .. }, Reply::Cmd { cmd_id, .. }] if cmd_id == "c1")
        );

        let got = replies(&inbound(&topic, br#"{"id":"c1"}"#, false, false));
        assert!(got.is_empty(), "no handler, nothing forwarded: {got:?}");
        let got = replies(&inbound(&topic, br#"{"id":"c1"}"#, true, true));
        assert!(
            matches!(got.as_slice(), [Reply::Ok { .. }]),
            "retained: {got:?}"
        );
    }

    #[test]
    fn group_get_and_meta_are_forwarded() {
        let got = replies(&inbound(
            &format!("{ROOT}/groups/g1/cmd"),
            b"{}",
            false,
            true,
        ));
        let cmds: Vec<_> = got
            .iter()
            .filter_map(|r| match r {
                Reply::Cmd { device_id, .. } => Some(device_id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(cmds, ["d1"], "only enabled, known members");

        let got = replies(&inbound(
            &format!("{ROOT}/devices/d1/get"),
            br#"{"properties":["on"]}"#,
            false,
            true,
        ));
        assert!(
            got.iter()
                .any(|r| matches!(r, Reply::Get { properties: Some(p), .. } if p == &["on"]))
        );

        let got = replies(&inbound(
            &format!("{ROOT}/meta/request/info"),
            b"x",
            false,
            true,
        ));
        assert!(
            got.iter()
                .any(|r| matches!(r, Reply::MetaRequest { kind, .. } if kind == "info"))
        );
    }
}
