//! Reads the caller's deadline from the `grpc-timeout` header.

use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;

/// Returns the instant the caller's deadline passes, if it sent one. An unreadable header is
/// ignored rather than refused, as the gRPC spec allows.
pub fn from_metadata(metadata: &MetadataMap, now: Instant) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    parse_timeout(value).map(|timeout| now + timeout)
}

/// Parses a `grpc-timeout` value: up to eight digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn parse_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    let duration = match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Some(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses() {
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_timeout("9n"), Some(Duration::from_nanos(9)));
    }

    #[test]
    fn malformed_values_are_ignored() {
        for value in ["", "S", "12", "1x", "123456789S", "-1S"] {
            assert_eq!(parse_timeout(value), None, "{value}");
        }
    }
}
