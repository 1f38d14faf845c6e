//! Redis connection pools with deadlines, for the services that read or write the counters.
//!
//! Every Redis call in the mesh must fail fast when Redis is down or frozen: the worker keeps
//! mining and retries, the webui answers 503 within a second. deadpool-redis does the pooling;
//! this module sets its deadlines once for everyone.

use std::time::Duration;

pub use deadpool_redis::Pool;
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

/// Checks a Redis URL at start-up, as a clap value parser, so that a typo exits with status 2 and
/// the variable's name instead of failing at the first flush.
pub fn parse_url(url: &str) -> Result<String, String> {
    use deadpool_redis::redis::IntoConnectionInfo;
    url.into_connection_info()
        .map(|_| url.to_string())
        .map_err(|err| format!("not a Redis URL such as redis://127.0.0.1:6379 ({err})"))
}

/// The services whose replicas the workers count in [`served_key`], in the order the worker's
/// flush script takes them and the dashboard shows them.
pub const SERVED_SERVICES: [&str; 2] = ["rng", "hasher"];

/// The Redis hash in which the workers count, per replica of `service` ("rng" or "hasher"), the
/// calls it served: field = the replica's name (its hostname), value = calls.
pub fn served_key(service: &str) -> String {
    format!("dockercoins:served:{service}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_redis_urls() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://redis",
            "redis://:secret@redis:6380/2",
        ] {
            assert_eq!(parse_url(url).as_deref(), Ok(url));
        }
    }

    #[test]
    fn rejects_what_is_not_a_redis_url() {
        for url in ["127.0.0.1:6379", "http://redis", ""] {
            assert!(parse_url(url).is_err(), "{url}");
        }
    }

    #[tokio::test]
    async fn a_pool_is_made_without_reaching_redis() {
        let pool = pool("redis://127.0.0.1:1", 1).unwrap();
        let started = std::time::Instant::now();
        assert!(pool.get().await.is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
