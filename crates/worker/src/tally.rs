//! The tally: units of work done and coins found since the last flush to Redis.
//!
//! Workers add to it after every unit; the flusher takes from it once a second. It lives in
//! memory only, so that a Redis outage never stops or slows the mining: the work piles up here
//! and lands when Redis is back.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::Notify;

/// Coins kept while Redis is unreachable. At the workshop's speed (a coin every few seconds) this
/// is days of outage; in turbo mode, minutes. Past it, coins are still counted as units of work but
/// their wallet entries are dropped (and logged), so that memory stays bounded.
pub const MAX_PENDING_COINS: usize = 100_000;
/// Coins sent to Redis in one batch at most; as soon as this many wait, the flusher is told
/// (see [`Tally::coins_waiting`]), so that a turbo worker's coins do not pile up for a second.
pub const COINS_PER_BATCH: usize = 5000;

/// A coin: a SHA-256 digest whose hex starts with enough zeros (`WORKER_DIFFICULTY`), and the 32
/// random bytes it is the digest of. Both inline, no allocation: a turbo worker at difficulty 1
/// finds ~40,000 coins a second and holds them until the next flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coin {
    pub digest: [u8; 32],
    pub data: [u8; 32],
}

impl Coin {
    /// The digest as the wallet's field name, and the logs, show it: 64 hex digits.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }
}

impl Pending {
    /// Up to `max_coins` coins (the oldest first) and the count of dropped ones, nothing else.
    fn take_coins(&mut self, max_coins: usize) -> Pending {
        let coins = if self.coins.len() <= max_coins {
            std::mem::take(&mut self.coins)
        } else {
            self.coins.drain(..max_coins).collect()
        };
        Pending {
            coins,
            dropped_coins: std::mem::take(&mut self.dropped_coins),
            ..Pending::default()
        }
    }
}

/// A replica of a service: which service ("rng" or "hasher"), and its name.
pub type Replica = (&'static str, String);

/// What has been done and not yet taken by the flusher.
#[derive(Debug, Default)]
pub struct Tally {
    pending: Mutex<Pending>,
    /// Told when a batch's worth of coins waits.
    coins_ready: Notify,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub units: u64,
    pub coins: Vec<Coin>,
    /// Coins dropped because [`MAX_PENDING_COINS`] were already waiting.
    pub dropped_coins: u64,
    /// Calls served, per replica. As many entries as replicas answered: a handful.
    pub served: BTreeMap<Replica, u64>,
}

impl Tally {
    /// Counts `units` of work, the coins they found, and the replicas that served their calls.
    pub fn record(
        &self,
        units: u64,
        coins: Vec<Coin>,
        served_by: impl IntoIterator<Item = Replica>,
    ) {
        metrics::counter!("dockercoins_units_total").increment(units);
        metrics::counter!("dockercoins_coins_total").increment(coins.len() as u64);
        let mut pending = self.pending.lock().expect("tally lock is never poisoned");
        pending.units += units;
        for replica in served_by {
            *pending.served.entry(replica).or_default() += 1;
        }
        for coin in coins {
            if pending.coins.len() < MAX_PENDING_COINS {
                pending.coins.push(coin);
            } else {
                pending.dropped_coins += 1;
            }
        }
        let batch_ready = pending.coins.len() >= COINS_PER_BATCH;
        drop(pending);
        if batch_ready {
            self.coins_ready.notify_one();
        }
    }

    /// Waits until a batch's worth of coins waits (at once if that happened since the last call).
    pub async fn coins_waiting(&self) {
        self.coins_ready.notified().await;
    }

    /// Takes up to `max_coins` coins, and nothing else: the units wait for the next [`take`].
    ///
    /// [`take`]: Tally::take
    pub fn take_coins(&self, max_coins: usize) -> Pending {
        let mut pending = self.pending.lock().expect("tally lock is never poisoned");
        pending.take_coins(max_coins)
    }

    /// Takes all the units and up to `max_coins` coins; the other coins wait for the next take.
    pub fn take(&self, max_coins: usize) -> Pending {
        let mut pending = self.pending.lock().expect("tally lock is never poisoned");
        Pending {
            units: std::mem::take(&mut pending.units),
            served: std::mem::take(&mut pending.served),
            ..pending.take_coins(max_coins)
        }
    }

    /// Whether nothing waits to be taken.
    pub fn is_empty(&self) -> bool {
        let pending = self.pending.lock().expect("tally lock is never poisoned");
        pending.units == 0 && pending.coins.is_empty()
    }

    /// Whether coins wait to be taken.
    pub fn has_coins(&self) -> bool {
        let pending = self.pending.lock().expect("tally lock is never poisoned");
        !pending.coins.is_empty()
    }

    /// Units counted and not yet taken.
    pub fn units(&self) -> u64 {
        self.pending
            .lock()
            .expect("tally lock is never poisoned")
            .units
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coin(n: u8) -> Coin {
        Coin {
            digest: [n; 32],
            data: [n; 32],
        }
    }

    #[test]
    fn take_returns_everything_recorded_once() {
        let tally = Tally::default();
        tally.record(1, vec![], []);
        tally.record(1, vec![coin(1)], []);
        tally.record(1, vec![], []);
        let taken = tally.take(10);
        assert_eq!(taken.units, 3);
        assert_eq!(taken.coins, vec![coin(1)]);
        assert_eq!(tally.take(10), Pending::default());
    }

    #[test]
    fn coins_over_the_batch_size_wait_for_the_next_take() {
        let tally = Tally::default();
        for n in 0..5 {
            tally.record(1, vec![coin(n)], []);
        }
        let first = tally.take(2);
        assert_eq!((first.units, first.coins.len()), (5, 2));
        let second = tally.take(10);
        assert_eq!(
            (second.units, second.coins),
            (0, vec![coin(2), coin(3), coin(4)])
        );
    }

    #[tokio::test]
    async fn a_batch_of_coins_can_be_taken_before_the_units() {
        let tally = Tally::default();
        for n in 0..COINS_PER_BATCH + 1 {
            tally.record(1, vec![coin(n as u8)], [("rng", "a".to_string())]);
        }
        // Told once the batch was there; the permit waits for the flusher.
        tokio::time::timeout(std::time::Duration::from_secs(1), tally.coins_waiting())
            .await
            .expect("told that a batch of coins waits");
        let coins = tally.take_coins(COINS_PER_BATCH);
        assert_eq!((coins.units, coins.coins.len()), (0, COINS_PER_BATCH));
        assert!(coins.served.is_empty());
        let rest = tally.take(COINS_PER_BATCH);
        assert_eq!(rest.units, COINS_PER_BATCH as u64 + 1);
        assert_eq!(rest.coins, vec![coin(COINS_PER_BATCH as u8)]);
        assert_eq!(
            rest.served.values().sum::<u64>(),
            COINS_PER_BATCH as u64 + 1
        );
    }

    #[test]
    fn calls_are_counted_per_replica_until_taken() {
        let tally = Tally::default();
        let rng = |name: &str| ("rng", name.to_string());
        tally.record(1, vec![], [rng("a"), ("hasher", "h".to_string())]);
        tally.record(1, vec![], [rng("b"), ("hasher", "h".to_string())]);
        tally.record(1, vec![], [rng("a"), ("hasher", "h".to_string())]);
        let served = tally.take(10).served;
        assert_eq!(
            served.into_iter().collect::<Vec<_>>(),
            [
                (("hasher", "h".to_string()), 3),
                (rng("a"), 2),
                (rng("b"), 1)
            ]
        );
        assert!(tally.take(10).served.is_empty());
    }

    #[test]
    fn coins_past_the_cap_are_dropped_but_still_counted_as_units() {
        let tally = Tally::default();
        for _ in 0..MAX_PENDING_COINS + 3 {
            tally.record(1, vec![coin(0)], []);
        }
        let taken = tally.take(usize::MAX);
        assert_eq!(taken.units, MAX_PENDING_COINS as u64 + 3);
        assert_eq!(taken.coins.len(), MAX_PENDING_COINS);
        assert_eq!(taken.dropped_coins, 3);
    }
}
