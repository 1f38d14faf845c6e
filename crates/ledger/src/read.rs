//! The webui's read: `hashes`, the coins and the calls served per replica, in one script.
//!
//! The worker changes them all in one script, so reading them in one script too means a reading
//! never shows a coin or a call whose unit of work is not in `hashes` yet. The script writes
//! nothing (`no-writes`, so Redis runs it even when full or a replica), and checks the type of
//! every key the worker writes: a key of the wrong type is read as empty and named, so that the
//! dashboard still shows the rest.

use redis::RedisResult;

use crate::{KeyedScript, SERVED_SERVICES, typed_keys_of};

/// KEYS: [`crate::typed_keys`] in their order. Returns `hashes` (or nil), the number of coins, the
/// problems found (one string, empty when none), and `HGETALL` of the counts of each served
/// service, in the order of KEYS (counts at 5, 7, 9…).
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
local served = {}
for k = 5, #KEYS, 2 do
  table.insert(served, ok[k] and redis.call('HGETALL', KEYS[k]) or {})
end
return {hashes, coins, table.concat(problems, '; '), served}
";

/// Calls served per replica of one service: replica name, calls.
pub type Served = Vec<(String, u64)>;

/// One reading of the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Units of work done: 0 before the first flush.
    pub hashes: u64,
    /// Coins found: the wallet's length.
    pub coins: u64,
    /// Per service of [`SERVED_SERVICES`], in its order: calls served per replica.
    pub served: Vec<(&'static str, Served)>,
    /// Keys the worker writes that hold the wrong type, in words; `None` when all are right.
    pub wrong_keys: Option<String>,
}

/// The read script, ready to read.
#[derive(Debug)]
pub struct Read {
    script: KeyedScript,
    services: &'static [&'static str],
}

impl Default for Read {
    fn default() -> Self {
        Self::counting(SERVED_SERVICES)
    }
}

impl Read {
    /// The script reading the counts of `services` (tests try other lists than the real one).
    pub(crate) fn counting(services: &'static [&'static str]) -> Self {
        Self {
            script: KeyedScript::new(READ_COUNTERS, typed_keys_of(services)),
            services,
        }
    }

    /// Reads the counters on `connection`.
    pub async fn counters(
        &self,
        connection: &mut impl redis::aio::ConnectionLike,
    ) -> RedisResult<Counters> {
        let (hashes, coins, problems, served): (Option<u64>, u64, String, Vec<Served>) =
            self.script.prepare().invoke_async(connection).await?;
        Ok(Counters {
            hashes: hashes.unwrap_or(0),
            coins,
            served: self.services.iter().copied().zip(served).collect(),
            wrong_keys: (!problems.is_empty()).then_some(problems),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typed_keys;

    #[test]
    fn the_script_writes_nothing_and_checks_every_key() {
        let read = Read::default();
        let script = read.script.source();
        assert!(script.starts_with("#!lua flags=no-writes\n"));
        assert_eq!(
            script.matches("'hash'").count() + script.matches("'zset'").count() + 1,
            typed_keys().len()
        );
        for write in ["'SET'", "'HSET'", "'INCRBY'", "'ZADD'", "'DEL'"] {
            assert!(!script.contains(write), "{write}");
        }
    }
}
