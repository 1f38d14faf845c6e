//! Reading the DockerCoins counters from Redis, within a deadline, and saying why it failed.
//!
//! The worker owns the keys (see the `ledger` crate): it adds its work and its coins in one
//! script, and the webui only reads them, with the ledger's read script. Every read gives up after
//! [`READ_DEADLINE`], so that a Redis that is down or frozen turns into a 503 the page can show
//! within a second, not a request that hangs.
//!
//! When Redis refuses the workers' writes, the workers keep their counts and say so in their own
//! logs, but they cannot tell the dashboard through a Redis that refuses writes. The webui sees the
//! causes itself: a key of the wrong type (checked by the read script, which still reads the rest)
//! and memory at `maxmemory` or a read-only replica ([`read_write_problem`], from `INFO`).

use std::time::{Duration, Instant};

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use deadpool_redis::Pool;
use mesh::redis::Error;

/// Deadline of one read, connecting included. `/json` must answer within a second; this leaves
/// room for the rest of the request. The pool's own deadlines (500 ms to wait for, open or check a
/// connection) fit inside it.
pub const READ_DEADLINE: Duration = Duration::from_millis(700);

/// One reading of the counters, timed for the speeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Units of work done, 0 before the first flush.
    pub hashes: u64,
    /// Coins found.
    pub coins: u64,
    /// Per service of [`ledger::SERVED_SERVICES`]: calls served per replica.
    pub served: Vec<(&'static str, ledger::read::Served)>,
    /// Keys the workers write that hold the wrong type, in words; `None` when all are right.
    pub wrong_keys: Option<String>,
    /// Halfway through the round trip: the best guess at when Redis read the values.
    pub at: Instant,
    /// How long the read took, so that the caller can tell how far `at` may be off.
    pub round_trip: Duration,
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

/// Reads `hashes`, the number of coins and the calls served per replica, with the time Redis
/// answered, in one script (see [`ledger::read`]).
pub async fn read_sample(pool: &Pool) -> Result<Sample, Error> {
    static READ: std::sync::LazyLock<ledger::read::Read> =
        std::sync::LazyLock::new(ledger::read::Read::default);
    within_deadline(async {
        // Connecting is not timed: only the reads say when the values were read.
        let mut connection = pool.get().await?;
        let sent = Instant::now();
        let counters = READ.counters(&mut *connection).await?;
        let round_trip = sent.elapsed();
        Ok(Sample {
            hashes: counters.hashes,
            coins: counters.coins,
            served: counters.served,
            wrong_keys: counters.wrong_keys,
            at: sent + round_trip / 2,
            round_trip,
        })
    })
    .await
}

/// What `INFO memory replication` says about whether Redis takes writes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WriteHealth {
    /// Bytes that count against `maxmemory` (`used_memory` less `mem_not_counted_for_evict`).
    pub used: u64,
    /// `maxmemory`, 0 for none.
    pub maxmemory: u64,
    /// Whether Redis is a replica (which refuses writes).
    pub replica: bool,
}

/// Memory use from which the dashboard warns: a turbo run can fill the last tenth within minutes.
const NEARLY_FULL: f64 = 0.9;

impl WriteHealth {
    /// Parses the fields it needs from `INFO`'s text.
    pub fn parse(info: &str) -> Self {
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let number = |name: &str| -> u64 { field(name).and_then(|v| v.parse().ok()).unwrap_or(0) };
        Self {
            used: number("used_memory").saturating_sub(number("mem_not_counted_for_evict")),
            maxmemory: number("maxmemory"),
            replica: field("role") == Some("slave"),
        }
    }

    /// Why the workers' writes are or soon will be refused, in one line; `None` when all is well.
    pub fn problem(&self) -> Option<String> {
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        if self.replica {
            return Some("Redis is a read-only replica: it refuses the workers' counts".into());
        }
        if self.maxmemory == 0 {
            return None;
        }
        let share = self.used as f64 / self.maxmemory as f64;
        if self.used >= self.maxmemory {
            Some(format!(
                "Redis is full ({:.1} MiB of its {:.1} MiB maxmemory): it refuses the workers' counts, which wait in the workers",
                mib(self.used),
                mib(self.maxmemory)
            ))
        } else if share >= NEARLY_FULL {
            Some(format!(
                "Redis is {:.0}% full ({:.1} MiB of its {:.1} MiB maxmemory): it will refuse the workers' counts when full",
                share * 100.0,
                mib(self.used),
                mib(self.maxmemory)
            ))
        } else {
            None
        }
    }
}

/// Reads whether Redis takes writes (memory and role), within [`READ_DEADLINE`].
pub async fn read_write_health(pool: &Pool) -> Result<WriteHealth, Error> {
    within_deadline(async {
        let mut connection = pool.get().await?;
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .arg("replication")
            .query_async(&mut connection)
            .await?;
        Ok(WriteHealth::parse(&info))
    })
    .await
}

/// Runs `read`, giving up after [`READ_DEADLINE`]. Dropping a read midway is harmless: it
/// writes nothing, and the pool checks the connection before lending it again.
pub(crate) async fn within_deadline<T>(
    read: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    mesh::redis::within(READ_DEADLINE, read).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_at_maxmemory_or_a_replica_is_a_write_problem() {
        let info = |used: u64, max: u64, role: &str| {
            format!(
                "# Memory\r\nused_memory:{used}\r\nused_memory_human:x\r\nmaxmemory:{max}\r\nmem_not_counted_for_evict:1000\r\n# Replication\r\nrole:{role}\r\n"
            )
        };
        let mib = 1024 * 1024;
        let health = WriteHealth::parse(&info(50 * mib + 1000, 96 * mib, "master"));
        assert_eq!(
            health,
            WriteHealth {
                used: 50 * mib,
                maxmemory: 96 * mib,
                replica: false
            }
        );
        assert_eq!(health.problem(), None);
        assert_eq!(
            WriteHealth::parse(&info(50 * mib, 0, "master")).problem(),
            None
        );
        let full = WriteHealth::parse(&info(97 * mib, 96 * mib, "master"))
            .problem()
            .unwrap();
        assert!(
            full.starts_with("Redis is full (97.0 MiB of its 96.0 MiB"),
            "{full}"
        );
        let nearly = WriteHealth::parse(&info(90 * mib, 96 * mib, "master"))
            .problem()
            .unwrap();
        assert!(nearly.starts_with("Redis is 94% full"), "{nearly}");
        let replica = WriteHealth::parse(&info(1, 96 * mib, "slave"))
            .problem()
            .unwrap();
        assert!(replica.contains("read-only replica"), "{replica}");
    }

    #[tokio::test]
    async fn a_closed_port_fails_fast_naming_redis() {
        let pool = mesh::redis::pool("redis://127.0.0.1:1", 1).unwrap();
        let started = Instant::now();
        let err = read_sample(&pool).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(err.one_line().contains("Redis"), "{}", err.one_line());
    }
}
