//! The DockerCoins Redis layout: what the worker writes and the webui reads.
//!
//! The two services never talk to each other; they meet in Redis, so they must agree on every
//! key, its type, and the order in which the scripts take them. That agreement lives here, once:
//! the keys ([`HASHES`], [`WALLET`], the de-duplication marks, the calls served per replica, the
//! golden metrics), the list of services whose replicas are counted ([`SERVED_SERVICES`]), the
//! worker's exactly-once flush script ([`flush`]) and the webui's read script ([`read`]).
//! Everything that depends on how many services are counted (key indices, script arguments, the
//! types the scripts check) is derived from [`SERVED_SERVICES`], so counting a third service is a
//! one-line change.
//!
//! Redis 7.0 has no per-field expiry, so everything that must not grow forever is a hash paired
//! with a sorted set of last-seen times (Redis's own clock), pruned by the flush script:
//! per-replica counts go after [`SERVED_HORIZON_SECONDS`], a worker's de-duplication mark after
//! [`WORKER_HORIZON_SECONDS`]. Nothing the flush writes has a TTL, so nothing can expire or (with
//! `maxmemory-policy noeviction`) be evicted before a retry.
//!
//! Connections, deadlines and error kinds are not the layout's business: `mesh::redis` has them.

pub mod flush;
pub mod golden;
pub mod read;
#[cfg(test)]
mod redis_server;

/// The services whose replicas the workers count in [`served_key`], in the order the scripts take
/// them and the dashboard shows them.
pub const SERVED_SERVICES: &[&str] = &["rng", "hasher"];

/// How Redis must run for the layout's promise that no acknowledged count is lost: an append-only
/// file synced once a second (SIGTERM loses nothing, a crash at most that second), no snapshots,
/// and nothing ever evicted (a full Redis refuses writes, and the workers keep their counts).
/// Every deployment passes these flags, as do the tests and the bench; tests/kubernetes.rs checks
/// the deployment files against them.
pub const REDIS_DURABILITY: [(&str, &str); 4] = [
    ("--appendonly", "yes"),
    ("--appendfsync", "everysec"),
    ("--save", ""),
    ("--maxmemory-policy", "noeviction"),
];
/// Redis's `--maxmemory` in every deployment: days of the workshop's wallet.
pub const REDIS_MAXMEMORY: &str = "96mb";

/// Units of work done: a string holding an integer (`INCRBY`). The workshop's name, which its
/// readers (the original webui, people with `redis-cli`) know.
pub const HASHES: &str = "hashes";
/// Coins found: a hash, digest (64 hex digits) to the 32 bytes it is the digest of.
pub const WALLET: &str = "wallet";
/// The last batch number applied, per worker process: a hash, worker id to number.
pub const FLUSHED: &str = "dockercoins:flushed";
/// When each worker of [`FLUSHED`] last flushed: a sorted set, worker id scored by seconds.
pub const FLUSHED_SEEN: &str = "dockercoins:flushed:seen";
/// How long a worker's mark outlives its last flush. A retry comes within seconds; only a worker
/// cut off from Redis for a day while others flush could see its batch counted twice.
pub const WORKER_HORIZON_SECONDS: u64 = 24 * 3600;
/// How long a replica's served count outlives its last call: a scaled-down replica leaves the
/// hash after this (the dashboard stops showing it after 10 seconds already).
pub const SERVED_HORIZON_SECONDS: u64 = 600;

/// The Redis hash in which the workers count, per replica of `service`, the calls it served:
/// field = the replica's name (its hostname), value = calls.
pub fn served_key(service: &str) -> String {
    format!("dockercoins:served:{service}")
}

/// The sorted set of when each replica of `service` last served a call.
pub fn served_seen_key(service: &str) -> String {
    format!("dockercoins:served:{service}:seen")
}

/// A key the worker writes and the Redis type it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedKey {
    pub name: String,
    /// As `TYPE` names it: `string`, `hash`, `zset`.
    pub kind: &'static str,
}

/// Keys before the served counts in [`typed_keys`]: hashes, wallet, flushed, flushed:seen.
const FIXED_KEYS: usize = 4;

/// Every key the worker writes, with its type, in the order both scripts take them as KEYS:
/// [`HASHES`], [`WALLET`], [`FLUSHED`], [`FLUSHED_SEEN`], then the counts and the seen times of
/// each of [`SERVED_SERVICES`]. The scripts check the types before anything else: the flush
/// refuses to start on a wrong one, the webui names the key on the dashboard.
pub fn typed_keys() -> Vec<TypedKey> {
    typed_keys_of(SERVED_SERVICES)
}

fn typed_keys_of(services: &[&str]) -> Vec<TypedKey> {
    let key = |name: String, kind| TypedKey { name, kind };
    let mut keys = Vec::with_capacity(FIXED_KEYS + 2 * services.len());
    keys.extend([
        key(HASHES.to_string(), "string"),
        key(WALLET.to_string(), "hash"),
        key(FLUSHED.to_string(), "hash"),
        key(FLUSHED_SEEN.to_string(), "zset"),
    ]);
    for service in services {
        keys.push(key(served_key(service), "hash"));
        keys.push(key(served_seen_key(service), "zset"));
    }
    keys
}

/// `script` with its `{ TYPES }` placeholder replaced by a Lua table of the types of `keys`, in
/// their order: the scripts that check the keys they are given.
fn with_key_types(script: &str, keys: &[TypedKey]) -> String {
    let types: Vec<String> = keys.iter().map(|key| format!("'{}'", key.kind)).collect();
    script.replace("{ TYPES }", &format!("{{{}}}", types.join(", ")))
}

/// A script and the keys it is always given, in order.
#[derive(Debug)]
struct KeyedScript {
    source: String,
    script: redis::Script,
    keys: Vec<String>,
}

impl KeyedScript {
    /// `source` with the types of `keys` filled in, given `keys` at every call.
    fn new(source: &str, keys: Vec<TypedKey>) -> Self {
        let source = with_key_types(source, &keys);
        Self {
            script: redis::Script::new(&source),
            source,
            keys: keys.into_iter().map(|key| key.name).collect(),
        }
    }

    /// The script as Redis runs it.
    fn source(&self) -> &str {
        &self.source
    }

    /// An invocation with the keys set, for the caller's arguments.
    fn prepare(&self) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.script.prepare_invoke();
        for key in &self.keys {
            invocation.key(key);
        }
        invocation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list as it would be with a third counted service: everything below is derived from
    /// whatever list it is given, which is what makes adding one a one-line change.
    const THREE: &[&str] = &["rng", "hasher", "third"];

    #[test]
    fn every_key_is_typed_and_each_service_has_its_pair_at_a_derived_index() {
        for services in [SERVED_SERVICES, THREE] {
            let keys = typed_keys_of(services);
            assert_eq!(keys.len(), FIXED_KEYS + 2 * services.len());
            assert_eq!(keys[0].name, HASHES);
            assert_eq!(keys[1].name, WALLET);
            for (s, service) in services.iter().enumerate() {
                // Lua counts from 1: KEYS[5 + 2s] and KEYS[6 + 2s], as both scripts read them.
                let (counts, seen) = (&keys[FIXED_KEYS + 2 * s], &keys[FIXED_KEYS + 2 * s + 1]);
                assert_eq!(counts.name, served_key(service));
                assert_eq!(counts.kind, "hash");
                assert_eq!(seen.name, served_seen_key(service));
                assert_eq!(seen.kind, "zset");
            }
        }
    }

    #[test]
    fn served_keys_keep_their_names() {
        // The dashboard and people with redis-cli read these: renaming them loses the counts.
        assert_eq!(served_key("rng"), "dockercoins:served:rng");
        assert_eq!(served_seen_key("hasher"), "dockercoins:served:hasher:seen");
    }

    #[test]
    fn scripts_get_the_type_of_every_key_in_order() {
        assert_eq!(
            with_key_types("local types = { TYPES }", &typed_keys()),
            "local types = {'string', 'hash', 'hash', 'zset', 'hash', 'zset', 'hash', 'zset'}"
        );
        let three = with_key_types("{ TYPES }", &typed_keys_of(THREE));
        assert_eq!(three.matches("'zset'").count(), 1 + THREE.len());
    }
}
