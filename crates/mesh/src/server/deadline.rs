//! The caller's deadline, from gRPC's `grpc-timeout` request header.
//!
//! tonic honours `grpc-timeout` only inside its own `transport::Server`; the mesh serves tonic's
//! services as axum routes, so it reads the header itself. The request queue uses it: a call
//! whose caller has already given up is not worth a turn (see `crate::server::queue`).
//!
//! The format (gRPC over HTTP/2 spec): at most 8 ASCII digits, then one unit, `H` hours, `M`
//! minutes, `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds. A header that does
//! not parse is ignored, as tonic's server does: the call runs with no deadline rather than
//! failing for a header the client library wrote.

use std::time::Duration;

/// The request header that carries a gRPC call's timeout.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The timeout a gRPC request asks for, if it asks for one that parses.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(GRPC_TIMEOUT)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout)
}

/// Parses a `grpc-timeout` value such as `"250m"` or `"5S"`.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let digits = value.get(..value.len().checked_sub(1)?)?;
    let unit = value.get(digits.len()..)?;
    // The spec's 8 digits also keep every unit's arithmetic below far from overflow.
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_of_the_spec() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse_grpc_timeout("0m"), Some(Duration::ZERO));
    }

    #[test]
    fn at_most_eight_digits() {
        assert_eq!(
            parse_grpc_timeout("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(parse_grpc_timeout("100000000H"), None);
    }

    #[test]
    fn anything_else_is_no_deadline() {
        for bad in [
            "", "S", "5", "5s", "5 S", "-5S", "+5S", "1.5S", "5SS", "5é", "é", "0x5S",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn read_from_the_request_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_timeout(&headers), None);
        headers.insert(GRPC_TIMEOUT, http::HeaderValue::from_static("100m"));
        assert_eq!(grpc_timeout(&headers), Some(Duration::from_millis(100)));
    }
}
