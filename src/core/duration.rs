//! Durations as Istio manifests write them: `5s`, `1.5s`, `250ms`, `1m30s`.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected e.g. `5s`, `1.5s`, `250ms` or `1m30s`")]
pub struct DurationError(pub String);

pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(text.to_owned());
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let (number, after) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| err())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let seconds_per_unit = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(err()),
        };
        let part = Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|_| err())?;
        total = total.checked_add(part).ok_or_else(err)?;
        rest = after;
    }
    // Protobuf's Duration holds at most 10,000 years; Envoy refuses anything longer.
    if total > MAX {
        return Err(err());
    }
    Ok(total)
}

/// The longest duration a protobuf `Duration` can carry.
const MAX: Duration = Duration::from_secs(315_576_000_000);

/// Decimal seconds to the millisecond (`3s`, `0.5s`): what [`parse`] reads and also the
/// proto3 JSON form of a `Duration`.
pub fn format(duration: Duration) -> String {
    let millis = duration.subsec_millis();
    if millis == 0 {
        return format!("{}s", duration.as_secs());
    }
    let fraction = format!("{millis:03}");
    format!("{}.{}s", duration.as_secs(), fraction.trim_end_matches('0'))
}

/// Converts to the protobuf well-known type.
pub fn to_proto(duration: Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: duration.as_secs() as i64,
        nanos: duration.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_what_it_parses() {
        for (millis, text) in [(3000, "3s"), (500, "0.5s"), (1250, "1.25s"), (100, "0.1s")] {
            let duration = Duration::from_millis(millis);
            assert_eq!(format(duration), text);
            assert_eq!(parse(text), Ok(duration));
        }
    }

    #[test]
    fn parses_istio_forms() {
        assert_eq!(parse("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "5", "s", "5x", "-1s", "1..2s"] {
            assert!(parse(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn durations_past_what_protobuf_holds_are_errors_not_overflows() {
        for text in [
            "1e300h",
            "5000000000000000h5000000000000000h",
            "10000000000000000000s",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
        assert_eq!(parse("87600h").unwrap(), Duration::from_secs(87_600 * 3600));
    }
}
