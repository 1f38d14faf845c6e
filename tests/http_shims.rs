//! The HTTP shims on the gRPC ports: what `httping` and `curl` users get, as in the original
//! DockerCoins (`GET /`, `GET /{n}` on rng, `POST /` on hasher), and clear errors for bad input.

mod support;

use std::path::Path;

use reqwest::StatusCode;
use support::{Service, backends, http, run, sha256_hex, tool};

fn fast() -> Vec<(&'static str, String)> {
    vec![("RNG_DELAY", "0s".into()), ("HASHER_DELAY", "0s".into())]
}

/// Asserts `httping <extra> -c 3 <addr>` pinged three times with no failure.
fn assert_httping(httping: &Path, extra: &[&str], service: &Service) {
    let addr = service.addr.to_string();
    let mut args = extra.to_vec();
    args.extend(["-c", "3", &addr]);
    let output = run(httping, &args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "httping {args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("3 connects, 3 ok, 0.00% failed"),
        "{stdout}"
    );
}

#[test]
fn httping_head_and_get_succeed_on_both_shims() {
    let (rng, hasher) = backends(&fast());
    let httping = tool("httping");
    for service in [&rng, &hasher] {
        assert_httping(&httping, &[], service);
        assert_httping(&httping, &["-G"], service);
    }
}

/// Asserts a 4xx answer whose body is one line containing `reason`.
fn assert_refused(response: reqwest::blocking::Response, status: StatusCode, reason: &str) {
    assert_eq!(response.status(), status);
    let body = response.text().unwrap();
    assert_eq!(body.trim_end().lines().count(), 1, "one line: {body:?}");
    assert!(body.contains(reason), "{body:?} should contain {reason:?}");
}

#[test]
fn rng_serves_a_banner_and_random_bytes_and_refuses_bad_sizes() {
    let mut env = fast();
    env.push(("RNG_MAX_SIZE", "1000".into()));
    let rng = Service::start("rng", &env);
    let client = http();

    let banner = client.get(rng.url()).send().unwrap();
    assert_eq!(banner.status(), StatusCode::OK);
    assert!(banner.text().unwrap().starts_with("RNG running on "));

    let bytes = client.get(format!("{}/32", rng.url())).send().unwrap();
    assert_eq!(bytes.status(), StatusCode::OK);
    assert_eq!(bytes.headers()["content-type"], "application/octet-stream");
    assert_eq!(bytes.bytes().unwrap().len(), 32);
    assert_eq!(
        client
            .get(format!("{}/1000", rng.url()))
            .send()
            .unwrap()
            .bytes()
            .unwrap()
            .len(),
        1000
    );

    for bad in ["abc", "-1", "1.5"] {
        let response = client.get(format!("{}/{bad}", rng.url())).send().unwrap();
        assert_refused(
            response,
            StatusCode::BAD_REQUEST,
            "not a non-negative integer",
        );
    }
    let response = client.get(format!("{}/1001", rng.url())).send().unwrap();
    assert_refused(response, StatusCode::BAD_REQUEST, "cap of 1000 bytes");
    let response = client.post(rng.url()).body("x").send().unwrap();
    assert_refused(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed",
    );
    let response = client.get(format!("{}/a/b", rng.url())).send().unwrap();
    assert_refused(response, StatusCode::NOT_FOUND, "no such path");

    // Still serving after all that.
    assert_eq!(
        client
            .get(format!("{}/8", rng.url()))
            .send()
            .unwrap()
            .bytes()
            .unwrap()
            .len(),
        8
    );
}

#[test]
fn hasher_answers_the_digest_of_the_posted_body_and_refuses_large_bodies() {
    let mut env = fast();
    env.push(("HASHER_MAX_BODY", "100".into()));
    let hasher = Service::start("hasher", &env);
    let client = http();

    let banner = client.get(hasher.url()).send().unwrap();
    assert_eq!(banner.status(), StatusCode::OK);
    assert!(banner.text().unwrap().starts_with("HASHER running on "));

    for body in [&b"abc"[..], b"", &[1u8; 100]] {
        let response = client
            .post(hasher.url())
            .body(body.to_vec())
            .send()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().unwrap(), sha256_hex(body));
    }
    let response = client
        .post(hasher.url())
        .body(vec![1u8; 101])
        .send()
        .unwrap();
    assert_refused(
        response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "length limit exceeded",
    );
    let response = client.put(hasher.url()).body("x").send().unwrap();
    assert_refused(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed",
    );

    let response = client.post(hasher.url()).body("abc").send().unwrap();
    assert_eq!(response.text().unwrap(), sha256_hex(b"abc"));
}

#[test]
fn hasher_hashes_large_and_chunked_bodies_through_its_large_body_turns() {
    let hasher = Service::start("hasher", &fast());
    let client = http();
    // Over 64 KiB: read on a large-body turn, and hashed on a thread of its own.
    let large = vec![9u8; 512 * 1024];
    let response = client
        .post(hasher.url())
        .body(large.clone())
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().unwrap(), sha256_hex(&large));
    // No Content-Length: a body of unknown length takes a large-body turn too.
    let chunked = reqwest::blocking::Body::new(std::io::Cursor::new(b"abc".to_vec()));
    let response = client.post(hasher.url()).body(chunked).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().unwrap(), sha256_hex(b"abc"));
}
