//! The worker's flush: one batch of work added to Redis by one script, exactly once.
//!
//! Each batch carries the worker's id and a sequence number; the script (atomic in Redis) applies
//! it only if this worker's last applied number, in [`crate::FLUSHED`], is lower. So the worker can
//! retry a batch whose answer it never got without counting it twice.
//!
//! Redis does not roll back a script that fails halfway, so the script checks every key's type
//! (and that [`crate::HASHES`] holds an integer) before its first write, and is declared as a
//! writing script (`#!lua`), which Redis refuses up front when it is at `maxmemory` or a read-only
//! replica: a batch is applied whole or not at all.

use redis::{RedisResult, ToRedisArgs};

use crate::{KeyedScript, SERVED_SERVICES, typed_keys_of};

/// Gone workers' marks and gone replicas' counts pruned per flush at most, so that a flush after
/// a mass scale-down stays short; the rest go at the next flushes.
pub const PRUNE_PER_FLUSH: u32 = 100;

/// The types check, then the batch. KEYS: [`crate::typed_keys`] in their order (hashes, wallet,
/// flushed, flushed:seen, then counts and seen of each served service). ARGV: worker id,
/// sequence, units, worker horizon, served horizon, prune limit, then the number of replicas of
/// each served service in the batch, then replica and calls of each (in the services' order),
/// then digest and bytes of each coin. The number of services is read from KEYS. Returns 1 when
/// applied, 0 when this batch was already applied; an error that names the key, with nothing
/// written, when a key has the wrong type.
const APPLY_BATCH: &str = r"#!lua
local types = { TYPES }
for k, want in ipairs(types) do
  local got = redis.call('TYPE', KEYS[k])['ok']
  if got ~= 'none' and got ~= want then
    return redis.error_reply('WRONGTYPE key ' .. KEYS[k] .. ' holds a ' .. got .. ', not a ' .. want .. '; nothing written')
  end
end
local count = redis.call('GET', KEYS[1])
if count and not string.match(count, '^%-?%d+$') then
  return redis.error_reply('WRONGTYPE key ' .. KEYS[1] .. ' holds a string that is not an integer; nothing written')
end
local worker, limit = ARGV[1], tonumber(ARGV[6])
local now = tonumber(redis.call('TIME')[1])
local last = tonumber(redis.call('HGET', KEYS[3], worker) or '-1')
redis.call('ZADD', KEYS[4], now, worker)
if tonumber(ARGV[2]) <= last then
  return 0
end
redis.call('HSET', KEYS[3], worker, ARGV[2])
local function prune(counts, seen, horizon)
  local gone = redis.call('ZRANGEBYSCORE', seen, '-inf', now - tonumber(horizon), 'LIMIT', 0, limit)
  for _, name in ipairs(gone) do
    redis.call('HDEL', counts, name)
    redis.call('ZREM', seen, name)
  end
end
prune(KEYS[3], KEYS[4], ARGV[4])
local services = (#KEYS - 4) / 2
local i = 7 + services
for s = 0, services - 1 do
  local counts, seen = KEYS[5 + 2 * s], KEYS[6 + 2 * s]
  for _ = 1, tonumber(ARGV[7 + s]) do
    redis.call('HINCRBY', counts, ARGV[i], ARGV[i + 1])
    redis.call('ZADD', seen, now, ARGV[i])
    i = i + 2
  end
  prune(counts, seen, ARGV[5])
end
for j = i, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[j], ARGV[j + 1])
end
redis.call('INCRBY', KEYS[1], ARGV[3])
return 1
";

/// One batch, as the flush script takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch<'a> {
    /// The worker's id, unique per process: its batches are de-duplicated together.
    pub worker: &'a str,
    /// Higher than every batch this worker sent before, and the same on a retry.
    pub sequence: u64,
    /// Units of work done, added to [`crate::HASHES`].
    pub units: u64,
    /// Calls served: service, replica, calls. Only the services of [`SERVED_SERVICES`] count.
    pub served: Vec<(&'a str, &'a str, u64)>,
    /// Coins found: digest (64 hex digits), and the 32 bytes it is the digest of.
    pub coins: Vec<(String, &'a [u8])>,
}

/// The flush script, ready to apply batches.
#[derive(Debug)]
pub struct Flush {
    script: KeyedScript,
    services: &'static [&'static str],
}

impl Default for Flush {
    fn default() -> Self {
        Self::counting(SERVED_SERVICES)
    }
}

impl Flush {
    /// The script counting the replicas of `services` (tests try other lists than the real one).
    fn counting(services: &'static [&'static str]) -> Self {
        Self {
            script: KeyedScript::new(APPLY_BATCH, typed_keys_of(services)),
            services,
        }
    }

    /// Applies `batch` on `connection`: `true` when applied, `false` when it was already.
    pub async fn apply(
        &self,
        connection: &mut impl redis::aio::ConnectionLike,
        batch: &Batch<'_>,
    ) -> RedisResult<bool> {
        let mut invocation = self.script.prepare();
        for arg in arguments(batch, self.services) {
            invocation.arg(arg);
        }
        let applied: i64 = invocation.invoke_async(connection).await?;
        Ok(applied == 1)
    }

    /// The script's source, as Redis runs it.
    pub fn source(&self) -> &str {
        self.script.source()
    }
}

/// ARGV of [`APPLY_BATCH`] for `batch`, counting the replicas of `services`.
fn arguments(batch: &Batch<'_>, services: &[&str]) -> Vec<Vec<u8>> {
    fn one(value: impl ToRedisArgs) -> Vec<u8> {
        value.to_redis_args().concat()
    }
    let mut argv = vec![
        one(batch.worker),
        one(batch.sequence),
        one(batch.units),
        one(crate::WORKER_HORIZON_SECONDS),
        one(crate::SERVED_HORIZON_SECONDS),
        one(PRUNE_PER_FLUSH),
    ];
    for service in services {
        let replicas = batch.served.iter().filter(|(of, _, _)| of == service);
        argv.push(one(replicas.count()));
    }
    for service in services {
        for (_, replica, calls) in batch.served.iter().filter(|(of, _, _)| of == service) {
            argv.push(one(*replica));
            argv.push(one(*calls));
        }
    }
    for (digest, data) in &batch.coins {
        argv.push(one(digest.as_str()));
        argv.push(data.to_vec());
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::read::Read;
    use crate::redis_server::RedisServer;
    use crate::typed_keys;

    #[test]
    fn the_script_checks_the_type_of_every_key_before_its_first_write() {
        let flush = Flush::default();
        let script = flush.source();
        assert!(!script.contains("TYPES"));
        let listed: Vec<String> = typed_keys()
            .iter()
            .map(|key| format!("'{}'", key.kind))
            .collect();
        let listed = format!("local types = {{{}}}", listed.join(", "));
        assert!(script.contains(&listed), "{script}");
        // Declared as a writing script: Redis refuses it whole when full or read-only.
        assert!(script.starts_with("#!lua\n"));
        let first_write = ["'ZADD'", "'HSET'", "'HINCRBY'", "'INCRBY'", "'HDEL'"]
            .iter()
            .filter_map(|write| script.find(write))
            .min()
            .unwrap();
        assert!(script.rfind("error_reply").unwrap() < first_write);
    }

    const THREE: &[&str] = &["rng", "hasher", "third"];

    fn text(argv: &[Vec<u8>]) -> Vec<String> {
        argv.iter()
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect()
    }

    #[test]
    fn arguments_follow_the_served_list_whatever_its_length() {
        let data = [7u8; 32];
        let batch = Batch {
            worker: "w",
            sequence: 3,
            units: 10,
            served: vec![
                ("hasher", "h1", 4),
                ("rng", "r1", 5),
                ("third", "t1", 6),
                ("rng", "r2", 1),
            ],
            coins: vec![("00ab".to_string(), &data[..])],
        };
        for services in [SERVED_SERVICES, THREE] {
            let argv = text(&arguments(&batch, services));
            assert_eq!(argv[..3], ["w", "3", "10"]);
            assert_eq!(argv[5], PRUNE_PER_FLUSH.to_string());
            // ARGV[7 + s] in Lua: how many replicas of service s follow.
            let counts: Vec<usize> = (0..services.len())
                .map(|s| argv[6 + s].parse().unwrap())
                .collect();
            let replicas: Vec<&str> = argv[6 + services.len()..]
                .chunks(2)
                .take(counts.iter().sum())
                .map(|pair| pair[0].as_str())
                .collect();
            let expected: Vec<&str> = services
                .iter()
                .flat_map(|service| {
                    batch
                        .served
                        .iter()
                        .filter(move |(of, _, _)| of == service)
                        .map(|(_, replica, _)| *replica)
                })
                .collect();
            assert_eq!(replicas, expected, "{services:?}");
            // The coins come last, as the script's last loop takes them.
            assert_eq!(argv[argv.len() - 2], "00ab");
            assert_eq!(arguments(&batch, services).last().unwrap(), &data.to_vec());
        }
    }

    /// A batch of `units` with one coin, and calls to replicas of three services.
    fn batch<'a>(sequence: u64, data: &'a [u8]) -> Batch<'a> {
        Batch {
            worker: "w",
            sequence,
            units: 10,
            served: vec![("rng", "r1", 5), ("hasher", "h1", 4), ("third", "t1", 6)],
            coins: vec![("00ab".to_string(), data)],
        }
    }

    #[tokio::test]
    async fn a_third_counted_service_is_written_and_read_back_by_the_scripts() {
        let redis = RedisServer::start();
        let mut connection = redis.connection().await;
        let (flush, read) = (Flush::counting(THREE), Read::counting(THREE));
        let data = [7u8; 32];
        assert!(
            flush
                .apply(&mut connection, &batch(1, &data))
                .await
                .unwrap()
        );
        // The same batch again (a retry after a lost answer) counts nothing twice.
        assert!(
            !flush
                .apply(&mut connection, &batch(1, &data))
                .await
                .unwrap()
        );
        let counters = read.counters(&mut connection).await.unwrap();
        assert_eq!((counters.hashes, counters.coins), (10, 1));
        assert_eq!(
            counters.served,
            [
                ("rng", vec![("r1".to_string(), 5)]),
                ("hasher", vec![("h1".to_string(), 4)]),
                ("third", vec![("t1".to_string(), 6)]),
            ]
        );
        assert_eq!(counters.wrong_keys, None);
    }

    #[tokio::test]
    async fn the_real_list_ignores_calls_to_services_it_does_not_count() {
        let redis = RedisServer::start();
        let mut connection = redis.connection().await;
        let data = [7u8; 32];
        let flush = Flush::default();
        assert!(
            flush
                .apply(&mut connection, &batch(1, &data))
                .await
                .unwrap()
        );
        let counters = Read::default().counters(&mut connection).await.unwrap();
        let services: Vec<&str> = counters.served.iter().map(|(name, _)| *name).collect();
        assert_eq!(services, SERVED_SERVICES);
        assert_eq!(counters.hashes, 10);
    }
}
