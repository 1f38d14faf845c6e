//! What p2c compares, and which two replicas it compares.
//!
//! tower's p2c balancer takes two ready replicas at random and sends the call to the one with the
//! lower load. With PeakEwma as the load, a client that sends many calls at once spreads them
//! well. The workshop's workers each send one call at a time, and there it falls short: with three
//! rng replicas (10 calls a second each) and ten workers, random pairs gave about 25 hashes/s and
//! PeakEwma about 22.5 (the workers chase the replica that looked fast a moment ago), where plain
//! round robin gives 30 (loopback, ten worker processes). Two calls that meet at one replica wait
//! while another replica idles. So here:
//!
//! - The two choices are the next two replicas in turn, going round in address order, not two at
//!   random. The others *rest*: they report not ready to the balancer until their turn comes.
//!   Every worker goes round in the same order, so their calls follow each other from replica to
//!   replica instead of meeting: 29–30 hashes/s.
//! - The cost of a replica is `latency × (1 + calls in flight from here)`, the latency being
//!   PeakEwma's: a slower one replaces it at once, and it fades over `decay`, also while the
//!   replica is unused, so that a replica that was slow is tried again later.
//! - The latency is the replica's own pace: what the call took, less the time it waited in the
//!   replica's queue, which the replica reports (`x-queue-wait-ms`, see `crate::server::queue`). A replica
//!   with a queue is busy, not slow; the rotation already spreads that. Acting on queue waits
//!   (or on the queue depth each replica reports) was measured to make things worse, 22.5–25.7
//!   hashes/s: that information is stale by the time a worker calls again.
//! - Costs within a factor [`TOLERANCE`] of each other count as equal, and the replica whose turn
//!   it is wins; past that, the cheaper one wins and the other is skipped. A replica made slow
//!   (+500 ms on 100) is skipped until its latency fades: it got 5% of the calls of ten workers.
//! - A failed call counts as a one-second answer, so that a replica that fails while it still
//!   reports SERVING is skipped the same way, with a trial call now and then.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Bound::{Excluded, Unbounded};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tower::Service;
use tower::load::Load;

use crate::server::queue::QUEUE_WAIT;

/// Costs closer than this factor are a tie, decided by the rotation: the replicas of one service
/// are alike, and their own pace varies by far less; +500 ms on 100 is six times slower.
const TOLERANCE: f64 = 2.0;

/// The latency a failed call counts as. The replica is then skipped until that fades below twice
/// a healthy replica's latency: about 8 s at the workshop's speed (decay 5 s), with a trial call
/// now and then.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// How many replicas take part in each choice.
const CHOICES: usize = 2;

/// A replica's channel, measured and taking its turn in the [`Rotation`].
pub struct Measured<S> {
    inner: S,
    /// Shared with the calls in flight: their number is this `Arc`'s count, less one.
    estimate: Arc<Mutex<Estimate>>,
    decay: Duration,
    rotation: Rotation,
    address: SocketAddr,
}

#[derive(Debug)]
struct Estimate {
    /// Peak-weighted moving average of the latency, in seconds.
    latency: f64,
    /// When `latency` was last updated.
    updated: Instant,
}

impl Estimate {
    /// Ages the estimate to `now` toward `sample` (0 to let it fade): a higher sample replaces
    /// it at once, a lower one is blended in by how much time has passed.
    fn update(&mut self, now: Instant, sample: f64, decay: Duration) -> f64 {
        if sample > self.latency {
            self.latency = sample;
        } else {
            let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
            let kept = (-elapsed / decay.as_secs_f64()).exp();
            self.latency = self.latency * kept + sample * (1.0 - kept);
        }
        self.updated = now;
        self.latency
    }
}

impl<S> Measured<S> {
    /// Measures `inner`, assuming `initial` latency until it has answered, as one replica of
    /// `rotation`.
    pub fn new(
        inner: S,
        address: SocketAddr,
        initial: Duration,
        decay: Duration,
        rotation: &Rotation,
    ) -> Self {
        rotation.join(address);
        Self {
            inner,
            estimate: Arc::new(Mutex::new(Estimate {
                latency: initial.as_secs_f64(),
                updated: Instant::now(),
            })),
            decay,
            rotation: rotation.clone(),
            address,
        }
    }
}

impl<S> Drop for Measured<S> {
    fn drop(&mut self) {
        self.rotation.leave(self.address);
    }
}

/// A replica's cost; see the module's documentation for how two compare.
#[derive(Clone, Copy, Debug)]
pub struct Cost {
    value: f64,
    /// How far the replica is from its turn (0: next).
    distance: usize,
}

impl PartialEq for Cost {
    fn eq(&self, other: &Self) -> bool {
        self.partial_cmp(other) == Some(std::cmp::Ordering::Equal)
    }
}

impl PartialOrd for Cost {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        let (a, b) = (self.value, other.value);
        if a > b * TOLERANCE || b > a * TOLERANCE {
            a.partial_cmp(&b)
        } else {
            self.distance.partial_cmp(&other.distance)
        }
    }
}

impl<S> Load for Measured<S> {
    type Metric = Cost;

    fn load(&self) -> Cost {
        let in_flight = Arc::strong_count(&self.estimate) - 1;
        let mut estimate = self.estimate.lock().expect("never poisoned");
        let latency = estimate.update(Instant::now(), 0.0, self.decay);
        Cost {
            value: latency * (1 + in_flight) as f64,
            distance: self.rotation.distance(self.address),
        }
    }
}

impl<S, R, B> Service<R> for Measured<S>
where
    S: Service<R, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            other => {
                self.rotation.set_ready(self.address, false);
                return other;
            }
        }
        if self.rotation.takes_part(self.address, cx.waker()) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.rotation.used(self.address);
        let sent = Instant::now();
        let estimate = self.estimate.clone();
        let decay = self.decay;
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            // The replica's own pace: what the call took, less its wait in the replica's queue.
            let waited = result.as_ref().map_or(0.0, |response| {
                response
                    .headers()
                    .get(QUEUE_WAIT)
                    .and_then(|value| value.to_str().ok()?.parse::<f64>().ok())
                    .map_or(0.0, |milliseconds| milliseconds / 1000.0)
            });
            let mut latency = (sent.elapsed().as_secs_f64() - waited).max(0.0);
            // A failure counts as a very slow answer: a replica that fails fast while it still
            // reports SERVING must not look like the fastest one (outlier ejection, in effect).
            if !succeeded(&result) {
                latency = latency.max(FAILURE_PENALTY.as_secs_f64());
            }
            estimate
                .lock()
                .expect("never poisoned")
                .update(Instant::now(), latency, decay);
            result
        })
    }
}

/// Whether a call succeeded: an answer, and for gRPC no error status in its headers (a unary
/// call that fails comes back as headers carrying `grpc-status`, with no body).
fn succeeded<B, E>(result: &Result<http::Response<B>, E>) -> bool {
    result.as_ref().is_ok_and(|response| {
        response.status().is_success()
            && response
                .headers()
                .get("grpc-status")
                .is_none_or(|status| status == "0")
    })
}

/// The turns of one balancer's replicas, in address order: the next choice is between the two
/// ready replicas that follow the one called last.
///
/// Address order rather than each client's own history, so that every worker goes round in the
/// same direction, also after replicas come and go: their calls then follow each other from
/// replica to replica instead of meeting (measured: 27.7 hashes/s when each worker kept its own
/// order, 30 in one shared order).
#[derive(Clone, Debug, Default)]
pub struct Rotation {
    turns: Arc<Mutex<Turns>>,
}

#[derive(Debug, Default)]
struct Turns {
    /// The replica called last, which may have gone since.
    last: Option<SocketAddr>,
    replicas: BTreeMap<SocketAddr, Turn>,
}

#[derive(Debug, Default)]
struct Turn {
    /// Whether its channel can take a call (a replica that cannot is no one's turn).
    ready: bool,
    /// The balancer's task, waiting for this replica's turn.
    waker: Option<Waker>,
}

impl Turns {
    /// Wakes every resting replica: the turns have changed.
    fn wake_all(&mut self) {
        for turn in self.replicas.values_mut() {
            if let Some(waker) = turn.waker.take() {
                waker.wake();
            }
        }
    }

    /// How many ready replicas come between the last one called and `address`, going round in
    /// address order (0: `address` is next).
    fn distance(&self, address: SocketAddr) -> usize {
        // Those after the last one called, then from the start round to it. Before any call, as
        // if the last in order had been called.
        let Some(last) = self
            .last
            .or_else(|| self.replicas.keys().next_back().copied())
        else {
            return usize::MAX;
        };
        self.replicas
            .range((Excluded(last), Unbounded))
            .chain(self.replicas.range(..=last))
            .filter(|(_, turn)| turn.ready)
            .position(|(&other, _)| other == address)
            .unwrap_or(usize::MAX)
    }
}

impl Rotation {
    fn lock(&self) -> std::sync::MutexGuard<'_, Turns> {
        self.turns.lock().expect("never poisoned")
    }

    fn join(&self, address: SocketAddr) {
        self.lock().replicas.insert(address, Turn::default());
    }

    fn leave(&self, address: SocketAddr) {
        let mut turns = self.lock();
        turns.replicas.remove(&address);
        turns.wake_all();
    }

    fn distance(&self, address: SocketAddr) -> usize {
        self.lock().distance(address)
    }

    fn used(&self, address: SocketAddr) {
        let mut turns = self.lock();
        turns.last = Some(address);
        turns.wake_all();
    }

    fn set_ready(&self, address: SocketAddr, ready: bool) {
        let mut turns = self.lock();
        let changed = turns
            .replicas
            .get_mut(&address)
            .is_some_and(|turn| std::mem::replace(&mut turn.ready, ready) != ready);
        if changed {
            turns.wake_all();
        }
    }

    /// Whether the ready replica at `address` is one of the next [`CHOICES`]; if not, it rests,
    /// and `waker` is woken when the turns change.
    fn takes_part(&self, address: SocketAddr, waker: &Waker) -> bool {
        self.set_ready(address, true);
        let mut turns = self.lock();
        let ready = turns.replicas.values().filter(|turn| turn.ready).count();
        if ready <= CHOICES || turns.distance(address) < CHOICES {
            return true;
        }
        if let Some(turn) = turns.replicas.get_mut(&address) {
            turn.waker = Some(waker.clone());
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;

    use tower::ServiceExt;

    /// A replica that answers after `pause`.
    fn replica(
        pause: Duration,
    ) -> impl Service<(), Response = http::Response<()>, Error = Infallible, Future: Send + 'static>
    {
        tower::service_fn(move |()| async move {
            tokio::time::sleep(pause).await;
            Ok::<_, Infallible>(http::Response::new(()))
        })
    }

    const DECAY: Duration = Duration::from_secs(10);
    const INITIAL: Duration = Duration::from_millis(10);

    fn address(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn a_slow_answer_raises_the_cost_at_once() {
        let rotation = Rotation::default();
        let mut slow = Measured::new(
            replica(Duration::from_millis(200)),
            address(1),
            INITIAL,
            DECAY,
            &rotation,
        );
        slow.ready().await.unwrap().call(()).await.unwrap();
        assert!(slow.load().value >= 0.2, "{:?}", slow.load());
    }

    #[tokio::test]
    async fn calls_in_flight_count() {
        let rotation = Rotation::default();
        let mut service = Measured::new(
            replica(Duration::from_secs(3600)),
            address(1),
            INITIAL,
            DECAY,
            &rotation,
        );
        let before = service.load().value;
        let call = service.ready().await.unwrap().call(());
        let during = service.load().value;
        assert!(during > 1.9 * before, "before {before}, during {during}");
        drop(call);
        assert!(service.load().value < 1.1 * before);
    }

    #[tokio::test]
    async fn a_failure_counts_as_a_very_slow_answer() {
        let failing = tower::service_fn(|()| async {
            let mut response = http::Response::new(());
            response
                .headers_mut()
                .insert("grpc-status", http::HeaderValue::from_static("14"));
            Ok::<_, Infallible>(response)
        });
        let rotation = Rotation::default();
        let mut service = Measured::new(failing, address(1), INITIAL, DECAY, &rotation);
        service.ready().await.unwrap().call(()).await.unwrap();
        assert!(service.load().value >= 0.9, "{:?}", service.load());
    }

    #[test]
    fn close_costs_go_to_the_replica_whose_turn_it_is() {
        let next = Cost {
            value: 0.15,
            distance: 0,
        };
        let after = Cost {
            value: 0.1,
            distance: 1,
        };
        assert!(next < after, "within the tolerance, the turn decides");
        let slow = Cost {
            value: 0.6,
            distance: 0,
        };
        assert!(after < slow, "past the tolerance, the cost decides");
    }

    #[test]
    fn the_estimate_fades_while_unused() {
        let start = Instant::now();
        let mut estimate = Estimate {
            latency: 1.0,
            updated: start,
        };
        let faded = estimate.update(start + Duration::from_secs(10), 0.0, DECAY);
        assert!((faded - (-1.0f64).exp()).abs() < 1e-9, "{faded}");
    }

    #[test]
    fn the_next_two_in_address_order_take_part_and_the_others_rest() {
        let rotation = Rotation::default();
        let waker = Waker::noop();
        let [a, b, c, d] = [1, 2, 3, 4].map(address);
        for replica in [d, b, a, c] {
            rotation.join(replica);
            rotation.set_ready(replica, true);
        }
        let taking_part = || {
            [a, b, c, d]
                .into_iter()
                .filter(|replica| rotation.lock().replicas.contains_key(replica))
                .filter(|&replica| rotation.takes_part(replica, waker))
                .collect::<Vec<_>>()
        };
        assert_eq!(taking_part(), [a, b], "before any call: from the start");
        rotation.used(a);
        assert_eq!(taking_part(), [b, c]);
        rotation.used(c);
        assert_eq!(taking_part(), [a, d], "round from the end to the start");
        rotation.set_ready(d, false);
        assert_eq!(taking_part(), [a, b, d], "d is ready again once asked");
        rotation.leave(c);
        rotation.leave(d);
        assert_eq!(taking_part(), [a, b], "two replicas: both take part");
    }
}
