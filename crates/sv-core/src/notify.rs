//! sd_notify datagram parsing (pure).
//!
//! A program started with `NOTIFY_SOCKET` reports its state by sending datagrams of
//! newline-separated `KEY=VALUE` assignments (sd_notify(3)). [`parse`] turns one datagram into
//! the assignments it understands, in the order sent.
//!
//! Invariants: [`parse`] never panics, whatever the bytes; an assignment that is malformed
//! (no `=`, a number that does not parse, a value that is not UTF-8) is skipped, never fatal,
//! because a buggy program must not be able to disturb the supervisor. Flags (`READY`,
//! `STOPPING`, `RELOADING`, `WATCHDOG`) count only with the value `1`, as systemd does.
//! Unknown keys (including `BARRIER=1`, which `systemd-notify` sends after its message) are
//! kept as [`Notify::Other`] so they can be logged at debug level.

/// One understood assignment of an sd_notify datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    /// `READY=1`: start-up finished.
    Ready,
    /// `STOPPING=1`: the program began shutting down.
    Stopping,
    /// `RELOADING=1`: the program is reloading its configuration.
    Reloading,
    /// `STATUS=...`: free-form status text.
    Status(String),
    /// `WATCHDOG=1`: a keep-alive ping.
    Watchdog,
    /// `WATCHDOG_USEC=...`: the program asks for a different watchdog interval.
    WatchdogUsec(u64),
    /// `EXTEND_TIMEOUT_USEC=...`: the program needs this much more time for the current phase.
    ExtendTimeoutUsec(u64),
    /// `MAINPID=...`: the program's main process (a positive pid).
    MainPid(i32),
    /// `ERRNO=...`: the program reports a failure as an errno (non-negative).
    Errno(i32),
    /// Any other well-formed `KEY=VALUE`, kept verbatim.
    Other(String),
}

/// Parses one datagram. Lines are separated by `\n`; a trailing `\r` is ignored, and so are
/// empty lines and malformed entries.
pub fn parse(datagram: &[u8]) -> Vec<Notify> {
    datagram
        .split(|&b| b == b'\n')
        .filter_map(|raw| {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let line = std::str::from_utf8(raw).ok()?;
            let (key, value) = line.split_once('=')?;
            if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                return None;
            }
            parse_assignment(key, value, line)
        })
        .collect()
}

fn parse_assignment(key: &str, value: &str, line: &str) -> Option<Notify> {
    let flag = |n: Notify| (value == "1").then_some(n);
    match key {
        "READY" => flag(Notify::Ready),
        "STOPPING" => flag(Notify::Stopping),
        "RELOADING" => flag(Notify::Reloading),
        "WATCHDOG" => flag(Notify::Watchdog),
        "STATUS" => Some(Notify::Status(value.to_owned())),
        "WATCHDOG_USEC" => value
            .parse()
            .ok()
            .filter(|&v| v > 0)
            .map(Notify::WatchdogUsec),
        "EXTEND_TIMEOUT_USEC" => value.parse().ok().map(Notify::ExtendTimeoutUsec),
        "MAINPID" => value.parse().ok().filter(|&p| p > 0).map(Notify::MainPid),
        "ERRNO" => value.parse().ok().filter(|&e| e >= 0).map(Notify::Errno),
        _ => Some(Notify::Other(line.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_what_systemd_notify_sends() {
        assert_eq!(
            parse(b"READY=1\nSTATUS=listening on :80\nMAINPID=42"),
            vec![
                Notify::Ready,
                Notify::Status("listening on :80".into()),
                Notify::MainPid(42)
            ]
        );
        assert_eq!(parse(b"BARRIER=1"), vec![Notify::Other("BARRIER=1".into())]);
    }

    #[test]
    fn parses_every_known_key() {
        let d = b"STOPPING=1\nRELOADING=1\nWATCHDOG=1\nWATCHDOG_USEC=5000000\n\
                  EXTEND_TIMEOUT_USEC=2000000\nERRNO=2\n";
        assert_eq!(
            parse(d),
            vec![
                Notify::Stopping,
                Notify::Reloading,
                Notify::Watchdog,
                Notify::WatchdogUsec(5_000_000),
                Notify::ExtendTimeoutUsec(2_000_000),
                Notify::Errno(2),
            ]
        );
    }

    #[test]
    fn status_keeps_equals_signs_and_may_be_empty() {
        assert_eq!(parse(b"STATUS=a=b"), vec![Notify::Status("a=b".into())]);
        assert_eq!(parse(b"STATUS="), vec![Notify::Status(String::new())]);
    }

    #[test]
    fn skips_malformed_entries_and_keeps_the_rest() {
        let d = b"garbage\nREADY=0\nREADY=yes\nMAINPID=-3\nMAINPID=x\nWATCHDOG_USEC=0\n\
                  =1\nlower=1\nERRNO=-1\n\xff\xfe=1\r\nREADY=1\r\n";
        assert_eq!(parse(d), vec![Notify::Ready]);
    }

    #[test]
    fn empty_datagram_is_empty() {
        assert!(parse(b"").is_empty());
        assert!(parse(b"\n\n").is_empty());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn status_text_round_trips(text in "[^\n\r]{0,64}") {
            let d = format!("READY=1\nSTATUS={text}\n");
            prop_assert_eq!(parse(d.as_bytes()), vec![Notify::Ready, Notify::Status(text)]);
        }

        #[test]
        fn well_formed_lines_each_yield_one_entry(
            keys in proptest::collection::vec("[A-Z_]{1,12}", 1..8),
        ) {
            let d: String = keys.iter().map(|k| format!("{k}=1\n")).collect();
            prop_assert_eq!(parse(d.as_bytes()).len(), keys.len());
        }
    }
}
