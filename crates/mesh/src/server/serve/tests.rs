//! The limits as a client sees them: real sockets on 127.0.0.1, raw bytes for HTTP/1 and tonic
//! for HTTP/2, with limits small enough that each test takes about a second.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic_health::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response};

use super::*;
use crate::server::grpc::Health;

/// A server with gRPC health, `GET /` answering `ok` and `POST /echo` echoing its body, under
/// `limits`.
async fn start(limits: Limits) -> (SocketAddr, Health, Shutdown) {
    let (health, routes) =
        crate::server::grpc::health_and_reflection(&[], &[], &Default::default()).await;
    let app = routes
        .into_axum_router()
        .route("/", axum::routing::get(|| async { "ok" }))
        .route("/echo", axum::routing::post(|body: String| async { body }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    tokio::spawn(async move { serve(listener, app, &limits, stop).await });
    (addr, health, shutdown)
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// Reads one response to `GET /` (or any response head, if it is not a 200) from `stream`.
async fn response(stream: &mut TcpStream) -> Option<String> {
    let mut seen = Vec::new();
    let mut chunk = [0; 1024];
    let read_all = async {
        loop {
            let text = String::from_utf8_lossy(&seen).to_string();
            let done = match text.split_once("\r\n\r\n") {
                Some((head, body)) => !head.starts_with("HTTP/1.1 200") || body == "ok",
                None => false,
            };
            if done {
                return Some(text);
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), read_all)
        .await
        .ok()
        .flatten()
}

/// Whether `stream` still answers `GET /` with 200 ok.
async fn answers(stream: &mut TcpStream) -> bool {
    stream.write_all(GET).await.is_ok()
        && response(stream)
            .await
            .is_some_and(|text| text.starts_with("HTTP/1.1 200"))
}

/// How long the server took to close `stream` (EOF or reset), reading and discarding what it
/// sends; `None` if it is still open after `within`.
async fn closes_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut chunk = [0; 1024];
    let closed = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, closed)
        .await
        .ok()
        .map(|()| started.elapsed())
}

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn check(client: &mut HealthClient<tonic::transport::Channel>) -> Result<i32, tonic::Status> {
    let response = client.check(HealthCheckRequest::default()).await?;
    Ok(response.into_inner().status)
}

const SERVING: i32 = health_check_response::ServingStatus::Serving as i32;

const LIMIT: Duration = Duration::from_millis(300);

/// A connection to a server with `limits`: after one answered `GET /` if `after_a_request`, it
/// sends `sent` and nothing more. Asserts that the server closes it no sooner than `LIMIT` (less
/// a timer's slack) and within three seconds.
async fn assert_closed_after_limit(limits: Limits, after_a_request: bool, sent: &[u8]) {
    let (addr, _, _) = start(limits).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    if after_a_request {
        assert!(answers(&mut stream).await);
    }
    stream.write_all(sent).await.unwrap();
    let closed = closes_within(&mut stream, Duration::from_secs(3)).await;
    let closed = closed.expect("the server closes the connection");
    assert!(closed >= LIMIT - Duration::from_millis(50), "{closed:?}");
}

fn header_read_timeout() -> Limits {
    Limits {
        header_read_timeout: LIMIT,
        ..Limits::default()
    }
}

fn idle_timeout() -> Limits {
    Limits {
        idle_timeout: LIMIT,
        ..Limits::default()
    }
}

#[tokio::test]
async fn a_request_head_never_finished_is_closed_at_the_header_read_timeout() {
    let slowloris = b"GET / HTTP/1.1\r\nHost: x\r\n";
    assert_closed_after_limit(header_read_timeout(), false, slowloris).await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_read_timeout() {
    assert_closed_after_limit(header_read_timeout(), false, b"").await;
}

#[tokio::test]
async fn an_http2_connection_that_never_sends_a_request_is_closed_at_the_header_read_timeout() {
    let preface_only = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    assert_closed_after_limit(header_read_timeout(), false, preface_only).await;
}

#[tokio::test]
async fn an_http1_connection_waiting_for_its_next_head_is_closed_at_the_header_read_timeout() {
    assert_closed_after_limit(header_read_timeout(), true, b"").await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    assert_closed_after_limit(idle_timeout(), true, b"").await;
}

#[tokio::test]
async fn a_request_body_that_stops_half_way_is_closed_after_the_idle_timeout() {
    let stalled = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten..";
    assert_closed_after_limit(idle_timeout(), false, stalled).await;
}

#[tokio::test]
async fn an_http2_request_body_that_stops_half_way_is_closed_after_the_idle_timeout() {
    let (addr, _, _) = start(idle_timeout()).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    // A body that sends nothing and never ends, on a client that sends no PINGs.
    let never = http_body_util::StreamBody::new(futures::stream::pending::<
        Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >());
    let request = http::Request::post(format!("http://{addr}/echo"))
        .body(never)
        .unwrap();
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(3), client.request(request)).await;
    let closed = started.elapsed();
    assert!(
        matches!(answer, Ok(Err(_))),
        "the server closes the connection"
    );
    assert!(closed >= LIMIT - Duration::from_millis(50), "{closed:?}");
}

#[tokio::test]
async fn a_quiet_health_watch_outlives_the_idle_timeout() {
    let idle = Duration::from_millis(300);
    let (addr, health, _) = start(Limits {
        idle_timeout: idle,
        ..Limits::default()
    })
    .await;
    // A client that sends no PINGs, as grpcurl by default: the connection carries nothing while
    // the status holds.
    let mut client = HealthClient::new(channel(addr).await);
    let mut watch = client
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, SERVING);

    // Nothing is sent either way for four idle periods.
    tokio::time::sleep(idle * 4).await;
    health.set_all(ServingStatus::NotServing).await;
    let next = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .expect("the watch is still open")
        .expect("the stream did not fail")
        .expect("the stream did not end");
    assert_eq!(
        next.status,
        health_check_response::ServingStatus::NotServing as i32
    );
}

#[tokio::test]
async fn past_the_connection_cap_a_new_connection_is_closed_and_open_ones_keep_answering() {
    let (addr, _, _) = start(Limits {
        max_connections: 2,
        ..Limits::default()
    })
    .await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert!(answers(&mut first).await && answers(&mut second).await);

    let mut over = TcpStream::connect(addr).await.unwrap();
    let _ = over.write_all(GET).await;
    let closed = closes_within(&mut over, Duration::from_secs(2)).await;
    assert!(closed.is_some(), "the connection over the cap is closed");
    assert!(answers(&mut first).await, "open connections keep answering");

    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut next = TcpStream::connect(addr).await.unwrap();
        if answers(&mut next).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a freed slot lets a connection in"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_http1_head_over_the_cap_gets_431_and_the_server_keeps_serving() {
    let (addr, _, _) = start(Limits {
        max_header_bytes: 8192,
        ..Limits::default()
    })
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let _ = stream.write_all(big.as_bytes()).await;
    let answer = response(&mut stream).await.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    let mut next = TcpStream::connect(addr).await.unwrap();
    assert!(answers(&mut next).await);
}

#[tokio::test]
async fn an_http2_head_over_the_cap_is_refused_and_the_connection_keeps_serving() {
    let (addr, _, _) = start(Limits {
        max_header_bytes: 8192,
        ..Limits::default()
    })
    .await;
    let mut client = HealthClient::new(channel(addr).await);
    assert_eq!(check(&mut client).await.unwrap(), SERVING);

    let mut big = tonic::Request::new(HealthCheckRequest::default());
    big.metadata_mut()
        .insert("x-big", "a".repeat(10_000).parse().unwrap());
    let refused = client.check(big).await;
    // The server answers 431 on that stream, which tonic reports with the HTTP status.
    let refused = refused.expect_err("a head over the cap is refused");
    assert!(refused.message().contains("431"), "{refused:?}");

    assert_eq!(check(&mut client).await.unwrap(), SERVING);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once_and_serve_returns() {
    let (health, routes) =
        crate::server::grpc::health_and_reflection(&[], &[], &Default::default()).await;
    drop(health);
    let app = routes
        .into_axum_router()
        .route("/", axum::routing::get(|| async { "ok" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let server = tokio::spawn(async move { serve(listener, app, &Limits::default(), stop).await });

    let mut http1 = TcpStream::connect(addr).await.unwrap();
    assert!(answers(&mut http1).await);
    let mut client = HealthClient::new(channel(addr).await);
    assert_eq!(check(&mut client).await.unwrap(), SERVING);

    let started = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .expect("serve returns")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < DRAIN_DEADLINE,
        "idle connections do not wait for the drain deadline: {:?}",
        started.elapsed()
    );
    assert!(
        closes_within(&mut http1, Duration::from_secs(1))
            .await
            .is_some()
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn shutdown_says_not_serving_serves_through_the_grace_then_ends_watches_and_returns() {
    const GRACE: Duration = Duration::from_millis(300);
    const NOT_SERVING: i32 = health_check_response::ServingStatus::NotServing as i32;
    let (health, routes) =
        crate::server::grpc::health_and_reflection(&[], &[], &Default::default()).await;
    let app = routes.into_axum_router();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let server = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { serve(listener, app, &Limits::default(), shutdown).await })
    };
    tokio::spawn(health.follow(shutdown.clone()));
    let mut client = HealthClient::new(channel(addr).await);
    let mut watch = client
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, SERVING);

    let started = Instant::now();
    let phases = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { shutdown.begin(GRACE).await })
    };
    assert_eq!(watch.message().await.unwrap().unwrap().status, NOT_SERVING);
    let told = started.elapsed();
    assert!(told < GRACE, "NOT_SERVING comes first: {told:?}");
    // Through the grace the listener still accepts, and a new client is told the same.
    let mut late = HealthClient::new(channel(addr).await);
    assert_eq!(check(&mut late).await.unwrap(), NOT_SERVING);

    // At the drain the watch ends cleanly, and serve returns without waiting for its deadline.
    assert!(matches!(watch.message().await, Ok(None)), "the watch ends");
    let ended = started.elapsed();
    assert!(ended >= GRACE, "the watch outlives the grace: {ended:?}");
    tokio::time::timeout(DRAIN_DEADLINE, server)
        .await
        .expect("serve returns before the drain deadline")
        .unwrap()
        .unwrap();
    let returned = started.elapsed();
    assert!(
        returned < GRACE + DRAIN_DEADLINE / 2,
        "serve returned {returned:?} after shutdown started"
    );
    phases.await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn streams_past_the_http2_cap_wait_for_a_free_one() {
    let (addr, _, _) = start(Limits {
        max_streams: 1,
        ..Limits::default()
    })
    .await;
    let mut client = HealthClient::new(channel(addr).await);
    let mut first = client
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.message().await.unwrap().unwrap().status, SERVING);

    // The server allows one stream per connection: a second waits while the first is open.
    let mut second_client = client.clone();
    let second = tokio::spawn(async move { check(&mut second_client).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the second stream waits for the first"
    );

    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(2), second)
        .await
        .expect("the second stream runs once the first ends")
        .unwrap();
    assert_eq!(answer.unwrap(), SERVING);
}

/// The `date` of the answer to `GET /` over HTTP/2, if any.
async fn http2_date(addr: SocketAddr) -> Option<http::HeaderValue> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client
        .get(format!("http://{addr}/").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    response.headers().get(http::header::DATE).cloned()
}

#[tokio::test]
async fn grpc_answers_have_no_date_and_every_other_answer_has_one() {
    let (addr, _, _) = start(Limits::default()).await;

    let mut client = HealthClient::new(channel(addr).await);
    let answer = client.check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(answer.get_ref().status, SERVING);
    assert!(answer.metadata().get("date").is_none(), "{answer:?}");

    let date = http2_date(addr).await.expect("an HTTP/2 answer has a date");
    let date = httpdate::parse_http_date(date.to_str().unwrap()).unwrap();
    let off = std::time::SystemTime::now()
        .duration_since(date)
        .unwrap_or_default();
    assert!(
        off < Duration::from_secs(5),
        "the date is now, not {off:?} ago"
    );

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(GET).await.unwrap();
    let text = response(&mut stream).await.unwrap().to_lowercase();
    assert!(
        text.contains("\r\ndate: "),
        "an HTTP/1 answer has a date: {text}"
    );
}

#[tokio::test]
async fn every_answer_names_the_replica_that_gave_it() {
    let (addr, _, _) = start(Limits::default()).await;
    let name = crate::hostname();

    let mut client = HealthClient::new(channel(addr).await);
    let answer = client.check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(answer.metadata().get(SERVED_BY).unwrap(), name.as_str());

    for (request, status) in [
        (GET, "200"),
        (
            &b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"[..],
            "405",
        ),
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let text = response(&mut stream).await.unwrap();
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
        let line = format!("\r\n{SERVED_BY}: {name}\r\n");
        assert!(text.to_lowercase().contains(&line.to_lowercase()), "{text}");
    }
}
