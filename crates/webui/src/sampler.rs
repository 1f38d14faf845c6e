//! The sampler: reads `hashes` and the calls served per replica four times a second, in the
//! background, for the speeds.
//!
//! The speed must not depend on when browsers happen to poll `/json`, nor on how many of them do:
//! one task reads the counter on a steady clock and feeds [`HashRate`], and `/json` only asks
//! it for the slope. Four readings a second place each flush within 250 ms of when it landed.
//! Once a second it also asks Redis whether it takes writes (memory, role), for the dashboard's
//! write-problem line, and reads the golden metrics of the last ten seconds (see
//! [`crate::golden`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_redis::Pool;
use mesh::Shutdown;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use crate::board::Board;
use crate::{counters, golden};

/// Time between two readings.
pub const EVERY: Duration = Duration::from_millis(250);

/// Readings between two checks of whether Redis takes writes: once a second is soon enough for
/// a line on the page, and `INFO` is not free.
const HEALTH_EVERY: u32 = 4;

/// A reading whose round trip took longer than this may be off by more than the spacing of the
/// readings themselves; the speed is better without it.
const MAX_ROUND_TRIP: Duration = EVERY;

/// Reads the counters from `pool` every [`EVERY`] onto `board`, until `shutdown`.
///
/// Logs once when Redis becomes unreachable and once when it is back, not at every reading.
pub async fn run(pool: Pool, board: Arc<Mutex<Board>>, shutdown: Shutdown) {
    let mut ticks = tokio::time::interval(EVERY);
    // After a slow read, carry on at the usual spacing rather than bursting to catch up.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reachable = None;
    // Whether the last check found a problem: logged when that changes, not as the numbers move.
    let mut write_problem = false;
    for reading_number in 0u32.. {
        // Dropping a reading midway is safe (see `counters::within_deadline`), so shutdown does
        // not wait for one to finish.
        let check_health = reading_number % HEALTH_EVERY == 0;
        let next = async {
            ticks.tick().await;
            let (health, golden) = if check_health {
                (
                    Some(counters::read_write_health(&pool).await),
                    Some(golden::read(&pool).await),
                )
            } else {
                (None, None)
            };
            (counters::read_sample(&pool).await, health, golden)
        };
        let Some((reading, health, golden)) = shutdown.run_until_cancelled(next).await else {
            break;
        };
        // A failed check says nothing about writes: the failed reading says Redis is away.
        if let Some(Ok(health)) = health {
            let problem = health.problem();
            if problem.is_some() != write_problem {
                match &problem {
                    Some(problem) => warn!(%problem, "Redis refuses or will soon refuse writes"),
                    None => info!("Redis takes writes again"),
                }
                write_problem = problem.is_some();
            }
            board
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .write_health(problem);
        }
        // Best-effort like their writing: a failed read keeps the last report, and the counts'
        // reading says whether Redis is away.
        match golden {
            Some(Ok(report)) => board
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .golden(report),
            Some(Err(err)) => debug!(error = %err.one_line(), "reading the golden metrics failed"),
            None => {}
        }
        match reading {
            Ok(reading) => {
                if reachable != Some(true) {
                    info!(hashes = reading.hashes, "reading the counters from Redis");
                    reachable = Some(true);
                }
                let timed = reading.round_trip <= MAX_ROUND_TRIP;
                if !timed {
                    debug!(round_trip = ?reading.round_trip, "slow reading left out of the speeds");
                }
                board
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(reading, timed);
            }
            Err(err) => {
                if reachable != Some(false) {
                    warn!(error = %err.one_line(), "cannot read Redis; /json answers 503 until it is back");
                    reachable = Some(false);
                }
                debug!(error = %err.one_line(), "reading of the counters failed");
                board
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .failed(err.one_line());
            }
        }
    }
    debug!("sampler stopped");
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn stops_at_once_on_shutdown_even_without_redis() {
        let pool = mesh::redis::pool("redis://127.0.0.1:1", 1).unwrap();
        let shutdown = Shutdown::new();
        let sampler = tokio::spawn(run(pool, Arc::default(), shutdown.clone()));
        tokio::time::sleep(3 * EVERY).await;
        let asked = Instant::now();
        shutdown.cancel();
        tokio::time::timeout(Duration::from_millis(100), sampler)
            .await
            .expect("the sampler stops within 100 ms")
            .unwrap();
        assert!(asked.elapsed() < Duration::from_millis(100));
    }
}
