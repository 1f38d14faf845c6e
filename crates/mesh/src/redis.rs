//! Redis connection pools with deadlines, and the ways a Redis call fails, for the services that
//! use Redis. What they keep there (keys, scripts) is theirs: see the `ledger` crate.
//!
//! Every Redis call in the mesh must fail fast when Redis is down or frozen: the worker keeps
//! mining and retries, the webui answers 503 within a second. deadpool-redis does the pooling;
//! this module sets its deadlines once for everyone, and sorts failures into the few kinds that
//! logs and metrics name.

use std::time::Duration;

pub use deadpool_redis::Pool;
use deadpool_redis::redis::RedisError;
use deadpool_redis::{Config, PoolConfig, Runtime, Timeouts};

/// Deadline to get a connection, to open one, and to check an idle one.
pub const CONNECTION_DEADLINE: Duration = Duration::from_millis(500);

/// A pool of at most `max_size` connections to `url`. Connecting is lazy: this never fails because
/// Redis is down, only because the URL is malformed.
pub fn pool(url: &str, max_size: usize) -> Result<Pool, deadpool_redis::CreatePoolError> {
    let mut config = Config::from_url(url);
    let mut pool = PoolConfig::new(max_size);
    pool.timeouts = Timeouts {
        wait: Some(CONNECTION_DEADLINE),
        create: Some(CONNECTION_DEADLINE),
        recycle: Some(CONNECTION_DEADLINE),
    };
    config.pool = Some(pool);
    config.create_pool(Some(Runtime::Tokio1))
}

/// A Redis URL that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("not a Redis URL such as redis://127.0.0.1:6379 ({0})")]
pub struct BadUrl(RedisError);

/// Checks a Redis URL at start-up, as a clap value parser, so that a typo exits with status 2 and
/// the variable's name instead of failing at the first flush.
pub fn parse_url(url: &str) -> Result<String, BadUrl> {
    use deadpool_redis::redis::IntoConnectionInfo;
    url.into_connection_info()
        .map(|_| url.to_string())
        .map_err(BadUrl)
}

/// Why a call to Redis failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach Redis: {0}")]
    Connect(#[from] deadpool_redis::PoolError),
    #[error("Redis failed the call: {}", reason(.0))]
    Redis(#[from] RedisError),
    #[error("Redis did not answer within {0:?}")]
    Deadline(Duration),
}

/// A Redis error as Redis wrote it (`WRONGTYPE key hashes holds a list…`), where it sent one.
fn reason(err: &RedisError) -> String {
    match (err.code(), err.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => err.to_string(),
    }
}

impl Error {
    /// The error on one line, as a log line or a page shows it: Redis's can span several.
    pub fn one_line(&self) -> String {
        self.to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Its kind, from Redis's error code where it sent one.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Connect(_) => ErrorKind::Unreachable,
            Self::Deadline(_) => ErrorKind::Timeout,
            Self::Redis(err) => match err.code() {
                Some("OOM") => ErrorKind::OutOfMemory,
                Some("WRONGTYPE") => ErrorKind::WrongType,
                Some("READONLY") => ErrorKind::ReadOnly,
                Some("LOADING") => ErrorKind::Loading,
                _ if err.is_io_error() || err.is_connection_dropped() => ErrorKind::Unreachable,
                _ if err.is_timeout() => ErrorKind::Timeout,
                _ => ErrorKind::Other,
            },
        }
    }
}

/// Runs `call`, giving up after `deadline`. Dropping a call midway leaves the connection in doubt,
/// which the pool checks before lending it again.
pub async fn within<T>(
    deadline: Duration,
    call: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(deadline, call)
        .await
        .unwrap_or(Err(Error::Deadline(deadline)))
}

/// The kinds of Redis failure: the `kind` label of the services' Redis error counters (a fixed
/// set), and what they log once per outage rather than once a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// Connection refused, reset, or the pool could not open one.
    Unreachable,
    /// No answer within the deadline (Redis frozen, paused or swamped).
    Timeout,
    /// Redis is loading its data after a restart.
    Loading,
    /// Redis is at `maxmemory` and refuses writes (`noeviction`).
    OutOfMemory,
    /// A key holds another type than the caller's script expects (the script names it).
    WrongType,
    /// Redis is a read-only replica.
    ReadOnly,
    /// Anything else Redis answered with an error.
    Other,
}

impl ErrorKind {
    /// Every kind, for tests and dashboards.
    pub const ALL: [ErrorKind; 7] = [
        Self::Unreachable,
        Self::Timeout,
        Self::Loading,
        Self::OutOfMemory,
        Self::WrongType,
        Self::ReadOnly,
        Self::Other,
    ];

    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Timeout => "timeout",
            Self::Loading => "loading",
            Self::OutOfMemory => "oom",
            Self::WrongType => "wrong_type",
            Self::ReadOnly => "read_only",
            Self::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn accepts_redis_urls() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://redis",
            "redis://:secret@redis:6380/2",
        ] {
            assert_eq!(parse_url(url).ok().as_deref(), Some(url));
        }
    }

    #[test]
    fn rejects_what_is_not_a_redis_url() {
        for url in ["127.0.0.1:6379", "http://redis", ""] {
            let err = parse_url(url).unwrap_err().to_string();
            assert!(err.starts_with("not a Redis URL such as"), "{url}: {err}");
        }
    }

    #[test]
    fn error_kinds_have_distinct_labels() {
        let labels: BTreeSet<&str> = ErrorKind::ALL.iter().map(|kind| kind.label()).collect();
        assert_eq!(labels.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn errors_are_classified_by_the_code_redis_sent() {
        use deadpool_redis::redis::{Value, parse_redis_value};
        let server = |line: &str| match parse_redis_value(line.as_bytes()).unwrap() {
            Value::ServerError(err) => Error::Redis(err.into()),
            other => panic!("{other:?}"),
        };
        for (line, kind) in [
            (
                "-OOM command not allowed when used memory > 'maxmemory'.\r\n",
                ErrorKind::OutOfMemory,
            ),
            (
                "-WRONGTYPE key hashes holds a list, not a string; nothing written\r\n",
                ErrorKind::WrongType,
            ),
            (
                "-READONLY You can't write against a read only replica.\r\n",
                ErrorKind::ReadOnly,
            ),
            (
                "-LOADING Redis is loading the dataset in memory\r\n",
                ErrorKind::Loading,
            ),
            ("-ERR something else\r\n", ErrorKind::Other),
        ] {
            assert_eq!(server(line).kind(), kind, "{line}");
        }
        assert_eq!(
            Error::Deadline(Duration::from_millis(1)).kind(),
            ErrorKind::Timeout
        );
    }

    #[test]
    fn an_error_is_one_line_with_what_redis_said() {
        let err = Error::Redis(RedisError::from((
            deadpool_redis::redis::ErrorKind::Io,
            "broken pipe",
            "first line\nsecond line".to_string(),
        )));
        let line = err.one_line();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("first line second line"), "{line}");
    }

    #[tokio::test]
    async fn a_pool_is_made_without_reaching_redis() {
        let pool = pool("redis://127.0.0.1:1", 1).unwrap();
        let started = std::time::Instant::now();
        assert!(pool.get().await.is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_is_a_timeout() {
        let never = std::future::pending::<Result<(), Error>>();
        let err = within(Duration::from_millis(10), never).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
    }
}
