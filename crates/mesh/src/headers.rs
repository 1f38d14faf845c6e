//! Names and tests on request headers that the layers of both sides share. A leaf: it imports
//! nothing from the crate, so that server, client and telemetry modules can all use it without
//! importing each other.

use http::header;

/// The response header (gRPC metadata) naming the replica that answered.
pub const SERVED_BY: &str = "x-served-by";

/// The response header (gRPC metadata) with the milliseconds a request waited in the replica's
/// queue, so that a caller can tell a busy replica from a slow one.
pub const QUEUE_WAIT: &str = "x-queue-wait-ms";

/// Whether a request is a gRPC call, by its content type (`application/grpc`, `+proto`, …).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// Whether a request says its body is JSON (`application/json`, parameters allowed).
pub fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|kind| kind.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        headers
    }

    #[test]
    fn json_is_recognised_with_parameters_and_in_any_case() {
        assert!(is_json(&headers("application/json")));
        assert!(is_json(&headers("Application/JSON; charset=utf-8")));
        assert!(!is_json(&headers("text/plain")));
        assert!(!is_json(&headers("application/x-www-form-urlencoded")));
        assert!(!is_json(&http::HeaderMap::new()));
    }

    #[test]
    fn grpc_is_recognised_by_its_content_type_prefix() {
        assert!(is_grpc(&headers("application/grpc")));
        assert!(is_grpc(&headers("application/grpc+proto")));
        assert!(!is_grpc(&headers("application/json")));
        assert!(!is_grpc(&http::HeaderMap::new()));
    }
}
