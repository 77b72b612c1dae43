//! Durations as config files spell them.
//!
//! Accepted forms (documented in `docs/config.md`):
//! - a non-negative number: seconds, integer or float (`10`, `0.5`);
//! - a string of one or more `<number><unit>` parts with no spaces, units `ms`, `s`, `m`, `h`,
//!   numbers with an optional decimal fraction: `"500ms"`, `"10s"`, `"1.5s"`, `"2m"`, `"1h30m"`.
//!
//! Invariant: every accepted duration is at most [`MAX`], so the runtime can add any configured
//! duration to a clock reading without overflow.
//!
//! This is a small hand-written grammar rather than `humantime` because `humantime` rejects
//! fractions (`"1.5s"`), which supervisord users expect to write.

use std::time::Duration;

/// The longest accepted duration: 365 days.
pub(super) const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// What a bad duration string is told to look like.
pub(super) const EXPECTED: &str =
    "seconds as a number, or a string like \"500ms\", \"1.5s\", \"2m\", \"1h30m\"";

/// Why a duration was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DurationError {
    /// Not in the grammar.
    Syntax,
    /// Below zero.
    Negative,
    /// Above [`MAX`].
    TooLong,
}

/// Parses the string form.
pub(super) fn parse_str(text: &str) -> Result<Duration, DurationError> {
    const UNITS: [(&str, u128); 4] = [
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    if text.starts_with('-') {
        return Err(DurationError::Negative);
    }
    let mut rest = text;
    let mut total: u128 = 0;
    if rest.is_empty() {
        return Err(DurationError::Syntax);
    }
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if int_len == 0 {
            return Err(DurationError::Syntax);
        }
        let (int_digits, after) = rest.split_at(int_len);
        let (frac_digits, after) = match after.strip_prefix('.') {
            Some(frac) => {
                let frac_len = frac.bytes().take_while(u8::is_ascii_digit).count();
                if frac_len == 0 {
                    return Err(DurationError::Syntax);
                }
                frac.split_at(frac_len)
            }
            None => ("", after),
        };
        // `ms` must be tried before `m`.
        let (unit_nanos, after) = UNITS
            .iter()
            .find_map(|(unit, nanos)| after.strip_prefix(unit).map(|a| (*nanos, a)))
            .ok_or(DurationError::Syntax)?;
        let whole: u128 = int_digits.parse().map_err(|_| DurationError::TooLong)?;
        // Digits beyond nanosecond precision cannot change the result; 18 keeps the product
        // below u128::MAX.
        let frac_digits = &frac_digits[..frac_digits.len().min(18)];
        let frac: u128 = if frac_digits.is_empty() {
            0
        } else {
            frac_digits.parse().map_err(|_| DurationError::Syntax)?
        };
        let frac_nanos = frac * unit_nanos / 10u128.pow(frac_digits.len() as u32);
        total = whole
            .checked_mul(unit_nanos)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| total.checked_add(n))
            .ok_or(DurationError::TooLong)?;
        rest = after;
    }
    from_nanos(total)
}

/// Integer seconds.
pub(super) fn from_secs_int(secs: i64) -> Result<Duration, DurationError> {
    let secs = u64::try_from(secs).map_err(|_| DurationError::Negative)?;
    checked_max(Duration::from_secs(secs))
}

/// Fractional seconds.
pub(super) fn from_secs_float(secs: f64) -> Result<Duration, DurationError> {
    if secs.is_nan() {
        return Err(DurationError::Syntax);
    }
    if secs < 0.0 {
        return Err(DurationError::Negative);
    }
    Duration::try_from_secs_f64(secs)
        .map_err(|_| DurationError::TooLong)
        .and_then(checked_max)
}

fn from_nanos(nanos: u128) -> Result<Duration, DurationError> {
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| DurationError::TooLong)?;
    let sub = (nanos % 1_000_000_000) as u32;
    checked_max(Duration::new(secs, sub))
}

fn checked_max(d: Duration) -> Result<Duration, DurationError> {
    if d > MAX {
        Err(DurationError::TooLong)
    } else {
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_documented_form() {
        assert_eq!(parse_str("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_str("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_str("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_str("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_str("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_str("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_str("1m0.25s"), Ok(Duration::from_millis(60_250)));
        assert_eq!(parse_str("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_str("0.0001ms"), Ok(Duration::from_nanos(100)));
        assert_eq!(
            parse_str("0.1234567891234567891234s"),
            Ok(Duration::from_nanos(123_456_789))
        );
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "", "10", "s", "1.s", ".5s", "10 s", " 10s", "10s ", "10sec", "1d", "1H", "+1s",
            "1e3s", "10ms5", "1_000s", "١s",
        ] {
            assert_eq!(parse_str(bad), Err(DurationError::Syntax), "{bad:?}");
        }
        assert_eq!(parse_str("-1s"), Err(DurationError::Negative));
        assert_eq!(parse_str("366d"), Err(DurationError::Syntax));
        assert_eq!(parse_str("8761h"), Err(DurationError::TooLong));
        assert_eq!(
            parse_str("99999999999999999999999999999999999999999h"),
            Err(DurationError::TooLong)
        );
    }

    #[test]
    fn numbers_are_seconds() {
        assert_eq!(from_secs_int(3), Ok(Duration::from_secs(3)));
        assert_eq!(from_secs_int(-1), Err(DurationError::Negative));
        assert_eq!(from_secs_float(0.25), Ok(Duration::from_millis(250)));
        assert_eq!(from_secs_float(-0.5), Err(DurationError::Negative));
        assert_eq!(from_secs_float(f64::NAN), Err(DurationError::Syntax));
        assert_eq!(from_secs_float(f64::INFINITY), Err(DurationError::TooLong));
        assert_eq!(from_secs_int(i64::MAX), Err(DurationError::TooLong));
    }
}
