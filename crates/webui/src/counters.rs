//! Reading the DockerCoins counters from Redis, within a deadline, and saying why it failed.
//!
//! The worker owns the keys: it adds its work to the string `hashes` and its coins to the hash
//! `wallet`, both in one script. The webui only reads them. Every read gives up after
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
use redis::RedisError;

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
    /// Keys the workers write that hold the wrong type, in words; `None` when all are right.
    pub wrong_keys: Option<String>,
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

/// Reads the counters without writing, atomically (a script runs alone in Redis), and checks the
/// type of every key the workers write (KEYS: [`mesh::redis::typed_keys`]). A key of the wrong
/// type is read as empty and named in the last value, so that the page still shows the rest.
/// Returns `hashes` (or nil), the coins, rng's and hasher's served calls, and the problems.
const READ_COUNTERS: &str = r"#!lua flags=no-writes
local types = { TYPES }
local problems, ok = {}, {}
for k, want in ipairs(types) do
  local got = redis.call('TYPE', KEYS[k])['ok']
  ok[k] = got == 'none' or got == want
  if not ok[k] then
    table.insert(problems, 'key ' .. KEYS[k] .. ' holds a ' .. got .. ', not a ' .. want)
  end
end
local hashes = ok[1] and redis.call('GET', KEYS[1])
if hashes and not string.match(hashes, '^%d+$') then
  table.insert(problems, 'key ' .. KEYS[1] .. ' holds a string that is not a count')
  hashes = false
end
local coins = ok[2] and redis.call('HLEN', KEYS[2]) or 0
local rng = ok[5] and redis.call('HGETALL', KEYS[5]) or {}
local hasher = ok[7] and redis.call('HGETALL', KEYS[7]) or {}
return {hashes, coins, rng, hasher, table.concat(problems, '; ')}
";

/// The read script with the types of [`mesh::redis::typed_keys`] filled in, in their order.
fn read_counters_script() -> redis::Script {
    redis::Script::new(&mesh::redis::with_key_types(READ_COUNTERS))
}

/// Reads `hashes`, the number of coins and the calls served per replica, with the time Redis
/// answered. In one script: the worker changes them all in one script, so one reading never
/// shows a coin or a call whose unit of work is not in `hashes` yet.
pub async fn read_sample(pool: &Pool) -> Result<Sample, ReadError> {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(read_counters_script);
    within_deadline(async {
        // Connecting is not timed: only the reads say when the values were read.
        let mut connection = pool.get().await?;
        let mut invocation = SCRIPT.prepare_invoke();
        for (key, _) in mesh::redis::typed_keys() {
            invocation.key(key);
        }
        let sent = Instant::now();
        let (hashes, coins, rng, hasher, problems): (Option<u64>, u64, Served, Served, String) =
            invocation.invoke_async(&mut connection).await?;
        let round_trip = sent.elapsed();
        Ok(Sample {
            hashes: hashes.unwrap_or(0),
            coins,
            served: SERVICES.into_iter().zip([rng, hasher]).collect(),
            wrong_keys: (!problems.is_empty()).then_some(problems),
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
pub async fn read_write_health(pool: &Pool) -> Result<WriteHealth, ReadError> {
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
        assert!(err.reason().contains("Redis"), "{}", err.reason());
    }
}
