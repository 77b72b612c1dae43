//! Timestamps on the wire.
//!
//! Outbound timestamps are RFC 3339 with millisecond precision and the explicit offset of the
//! configured zone (`2025-10-13T10:30:00.123+02:00`), never naive local time (platform defect 5).
//! Inbound timestamps are accepted with an offset or `Z`, and also naive (`2025-10-13T10:30:00.1`),
//! which is then read as local time in the configured zone — what the reference client emits.

use jiff::fmt::temporal::DateTimePrinter;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime};

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

/// Parses an inbound timestamp: RFC 3339 with offset or `Z`, or naive ISO 8601 taken as local
/// time in `tz`. Returns `None` when neither form matches.
pub fn parse(s: &str, tz: &TimeZone) -> Option<Timestamp> {
    let s = s.trim();
    if let Ok(t) = s.parse::<Timestamp>() {
        return Some(t);
    }
    if let Ok(z) = s.parse::<ZonedDateTime>() {
        return Some(z.timestamp());
    }
    let dt: jiff::civil::DateTime = s.parse().ok()?;
    dt.to_zoned_datetime(tz.clone()).ok().map(|z| z.timestamp())
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

    #[test]
    fn round_trips() {
        let tz = TimeZone::get("America/New_York").unwrap();
        let t = Timestamp::now();
        let back = parse(&format(t, &tz), &tz).unwrap();
        assert!(t.duration_since(back).as_millis().abs() <= 1);
    }
}
