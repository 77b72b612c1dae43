//! Timestamps on the wire.
//!
//! Outbound timestamps are RFC 3339 with millisecond precision and the explicit offset of the
//! configured zone (`2025-10-13T10:30:00.123+02:00`), never naive local time (platform defect 5).
//! Inbound timestamps are accepted with an offset or `Z` (exact), and also naive
//! (`2025-10-13T10:30:00.123456`). A naive one has two plausible readings: local time in the
//! configured zone (what the reference client emits, `TZ` set in its container) and UTC (what the
//! platform's web backend emits: `datetime.now().isoformat()` in a container without `TZ`).
//! [`command_age`] takes the reading nearest to the bridge's clock, so neither sender's commands
//! are expired by the zone offset, and a stale one stays stale under both readings.

use jiff::fmt::temporal::DateTimePrinter;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ZonedDateTime};
use serde_json::Value;

/// RFC 3339 with exactly three fractional digits; the offset is always `±HH:MM`, never `Z`.
const PRINTER: DateTimePrinter = DateTimePrinter::new().precision(Some(3));

/// Formats `at` in `tz` as RFC 3339 with milliseconds and an explicit offset.
///
/// Every published state carries one, so this is on the per-message path: a fixed printer and
/// the zone's offset, not a `strftime` pattern read anew each time.
pub fn format(at: Timestamp, tz: &TimeZone) -> String {
    PRINTER.timestamp_with_offset_to_string(&at, tz.to_offset(at))
}

/// The current time, formatted by [`format`].
pub fn now(tz: &TimeZone) -> String {
    format(Timestamp::now(), tz)
}

/// An inbound timestamp as written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// With an offset or `Z`: one instant.
    Exact(Timestamp),
    /// Naive: the instant read as UTC, and read as local time in the zone.
    Naive {
        /// Read as UTC.
        utc: Timestamp,
        /// Read as local time in the configured zone.
        local: Timestamp,
    },
}

impl Inbound {
    /// How long before `now` it was issued (negative: in the future). A naive timestamp is aged
    /// by whichever reading is nearer to `now`.
    pub fn age(self, now: Timestamp) -> SignedDuration {
        match self {
            Inbound::Exact(t) => now.duration_since(t),
            Inbound::Naive { utc, local } => {
                let (a, b) = (now.duration_since(utc), now.duration_since(local));
                if a.abs() <= b.abs() { a } else { b }
            }
        }
    }
}

/// Parses an inbound timestamp: RFC 3339 with offset or `Z` (exact), or naive ISO 8601 (both
/// readings). Returns `None` when neither form matches.
pub fn parse_inbound(s: &str, tz: &TimeZone) -> Option<Inbound> {
    let s = s.trim();
    if let Ok(t) = s.parse::<Timestamp>() {
        return Some(Inbound::Exact(t));
    }
    if let Ok(z) = s.parse::<ZonedDateTime>() {
        return Some(Inbound::Exact(z.timestamp()));
    }
    let dt: jiff::civil::DateTime = s.parse().ok()?;
    let utc = dt.to_zoned_datetime(TimeZone::UTC).ok()?.timestamp();
    let local = dt.to_zoned_datetime(tz.clone()).ok()?.timestamp();
    Some(Inbound::Naive { utc, local })
}

/// Parses an inbound timestamp, a naive one taken as local time in `tz`. Returns `None` when
/// neither form matches.
pub fn parse(s: &str, tz: &TimeZone) -> Option<Timestamp> {
    match parse_inbound(s, tz)? {
        Inbound::Exact(t) | Inbound::Naive { local: t, .. } => Some(t),
    }
}

/// The age at `now` of a command's `timestamp` field: a string as [`parse_inbound`] reads it
/// (aged by [`Inbound::age`]), or a number of Unix seconds (milliseconds when it is too large
/// to be seconds). `None` when it is neither.
pub fn command_age(v: &Value, tz: &TimeZone, now: Timestamp) -> Option<SignedDuration> {
    match v {
        Value::String(s) => parse_inbound(s, tz).map(|t| t.age(now)),
        Value::Number(n) => n.as_f64().and_then(|f| {
            let secs = if f.abs() >= 1e11 { f / 1000.0 } else { f };
            Timestamp::from_millisecond((secs * 1000.0) as i64)
                .ok()
                .map(|t| now.duration_since(t))
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_explicit_offset() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let t: Timestamp = "2025-07-01T08:00:00.5Z".parse().unwrap();
        assert_eq!(format(t, &tz), "2025-07-01T10:00:00.500+02:00");
        assert_eq!(format(t, &TimeZone::UTC), "2025-07-01T08:00:00.500+00:00");
        // Whole seconds keep their three digits; negative and half-hour offsets.
        let t: Timestamp = "2025-01-01T05:00:00Z".parse().unwrap();
        let ny = TimeZone::get("America/New_York").unwrap();
        assert_eq!(format(t, &ny), "2025-01-01T00:00:00.000-05:00");
        let kolkata = TimeZone::get("Asia/Kolkata").unwrap();
        assert_eq!(format(t, &kolkata), "2025-01-01T10:30:00.000+05:30");
        // Sub-millisecond digits are cut, not rounded up into the next second.
        let t: Timestamp = "2025-01-01T05:00:00.9999Z".parse().unwrap();
        assert_eq!(format(t, &TimeZone::UTC), "2025-01-01T05:00:00.999+00:00");
    }

    #[test]
    fn naive_input_is_local_time_of_the_zone() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let naive = parse("2025-07-01T10:00:00.123456", &tz).unwrap();
        let zulu = parse("2025-07-01T08:00:00.123456Z", &tz).unwrap();
        let offset = parse("2025-07-01T10:00:00.123456+02:00", &tz).unwrap();
        assert_eq!(naive, zulu);
        assert_eq!(offset, zulu);
        assert!(parse("yesterday", &tz).is_none());
        assert!(parse("", &tz).is_none());
    }

    /// What the platform's web backend sends: `datetime.now().isoformat()` of a UTC clock.
    fn web_backend_naive(t: Timestamp) -> String {
        t.to_zoned_datetime(TimeZone::UTC)
            .strftime("%Y-%m-%dT%H:%M:%S.%6f")
            .to_string()
    }

    #[test]
    fn a_naive_timestamp_is_aged_by_its_nearer_reading() {
        let now: Timestamp = "2025-10-13T10:30:00Z".parse().unwrap();
        let max = SignedDuration::from_secs(30);
        for zone in ["Asia/Tokyo", "America/Los_Angeles", "UTC"] {
            let tz = TimeZone::get(zone).unwrap();
            // A naive UTC timestamp of now and one two minutes old.
            let fresh = Value::from(web_backend_naive(now - SignedDuration::from_secs(2)));
            let stale = Value::from(web_backend_naive(now - SignedDuration::from_secs(120)));
            assert_eq!(
                command_age(&fresh, &tz, now),
                Some(SignedDuration::from_secs(2)),
                "{zone}"
            );
            assert!(command_age(&stale, &tz, now).unwrap() > max, "{zone}");
            // The same clock written as naive local time in the zone (the reference client).
            let local = now.to_zoned_datetime(tz.clone()).datetime().to_string();
            assert_eq!(
                command_age(&Value::from(local), &tz, now),
                Some(SignedDuration::ZERO)
            );
        }
        // An explicit offset is exact: a UTC-clock time labelled +09:00 is nine hours old.
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        let labelled = Value::from(format!("{}+09:00", web_backend_naive(now)));
        assert_eq!(
            command_age(&labelled, &tokyo, now),
            Some(SignedDuration::from_hours(9))
        );
        assert_eq!(
            command_age(&Value::from(now.as_millisecond() - 5000), &tokyo, now),
            Some(SignedDuration::from_secs(5))
        );
        assert_eq!(command_age(&Value::from("soon"), &tokyo, now), None);
        assert_eq!(command_age(&Value::Bool(true), &tokyo, now), None);
    }

    #[test]
    fn round_trips() {
        let tz = TimeZone::get("America/New_York").unwrap();
        let t = Timestamp::now();
        let back = parse(&format(t, &tz), &tz).unwrap();
        assert!(t.duration_since(back).as_millis().abs() <= 1);
    }
}
