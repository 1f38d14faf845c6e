//! Reading the DockerCoins counters from Redis, within a deadline, and saying why it failed.
//!
//! The worker owns the keys: it adds its work to the string `hashes` and its coins to the hash
//! `wallet`, both in one script. The webui only reads them. Every read gives up after
//! [`READ_DEADLINE`], so that a Redis that is down or frozen turns into a 503 the page can show
//! within a second, not a request that hangs.

use std::time::{Duration, Instant};

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use deadpool_redis::Pool;
use deadpool_redis::redis::{self, RedisError};

use crate::replicas::SERVICES;

/// Deadline of one read, connecting included. `/json` must answer within a second; this leaves
/// room for the rest of the request. The pool's own deadlines (500 ms to wait for, open or check a
/// connection) fit inside it.
pub const READ_DEADLINE: Duration = Duration::from_millis(700);

/// One reading of the counters, timed for the speeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Units of work done: `GET hashes`, 0 before the first flush.
    pub hashes: u64,
    /// Coins found: `HLEN wallet`.
    pub coins: u64,
    /// Per service of [`crate::replicas::SERVICES`]: calls served per replica.
    pub served: Vec<(&'static str, Vec<(String, u64)>)>,
    /// Halfway through the round trip: the best guess at when Redis read the values.
    pub at: Instant,
    /// How long the read took, so that the caller can tell how far `at` may be off.
    pub round_trip: Duration,
}

/// Why the counters could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot reach Redis: {0}")]
    Connect(#[from] deadpool_redis::PoolError),
    #[error("Redis failed the read: {0}")]
    Redis(#[from] RedisError),
    #[error("Redis did not answer within {0:?}")]
    Deadline(Duration),
}

impl ReadError {
    /// The reason on one line, as the page and a log line show it (Redis's errors can span
    /// several).
    pub fn reason(&self) -> String {
        self.to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Why `/json` has no counters to show: the reason, on one line.
#[derive(Debug)]
pub struct Unavailable(pub String);

/// `503 {"error": "<reason>"}`: the webui is fine, what it reads from is not. Every read failure
/// is one the page waits out (Redis down, frozen, restarting), so they all answer the same way.
impl IntoResponse for Unavailable {
    fn into_response(self) -> Response {
        let reason = self.0;
        let body = Json(ErrorBody { error: &reason });
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        // The page polls every second anyway; this tells other clients when trying again is worth it.
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

/// Calls served per replica of one service, as `HGETALL` gives them.
type Served = Vec<(String, u64)>;

/// Reads `hashes`, the number of coins and the calls served per replica, with the time Redis
/// answered. In one MULTI/EXEC: the worker changes them all in one script, so one reading never
/// shows a coin or a call whose unit of work is not in `hashes` yet.
pub async fn read_sample(pool: &Pool) -> Result<Sample, ReadError> {
    within_deadline(async {
        // Connecting is not timed: only the reads say when the values were read.
        let mut connection = pool.get().await?;
        let mut pipe = redis::pipe();
        pipe.atomic().get("hashes").hlen("wallet");
        for service in SERVICES {
            pipe.hgetall(mesh::redis::served_key(service));
        }
        let sent = Instant::now();
        let (hashes, coins, rng, hasher): (Option<u64>, u64, Served, Served) =
            pipe.query_async(&mut connection).await?;
        let round_trip = sent.elapsed();
        Ok(Sample {
            hashes: hashes.unwrap_or(0),
            coins,
            served: SERVICES.into_iter().zip([rng, hasher]).collect(),
            at: sent + round_trip / 2,
            round_trip,
        })
    })
    .await
}

/// Runs `read`, giving up after [`READ_DEADLINE`]. Dropping a read midway is harmless: it
/// writes nothing, and the pool checks the connection before lending it again.
async fn within_deadline<T>(
    read: impl Future<Output = Result<T, ReadError>>,
) -> Result<T, ReadError> {
    tokio::time::timeout(READ_DEADLINE, read)
        .await
        .unwrap_or(Err(ReadError::Deadline(READ_DEADLINE)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_one_line() {
        let err = ReadError::Redis(RedisError::from((
            redis::ErrorKind::Io,
            "broken pipe",
            "first line\nsecond line".to_string(),
        )));
        let reason = err.reason();
        assert!(!reason.contains('\n'), "{reason}");
        assert!(reason.contains("first line second line"), "{reason}");
    }

    #[tokio::test]
    async fn a_closed_port_fails_fast_naming_redis() {
        let pool = mesh::redis::pool("redis://127.0.0.1:1", 1).unwrap();
        let started = Instant::now();
        let err = read_sample(&pool).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(err.reason().contains("Redis"), "{}", err.reason());
    }
}
