//! Outlier detection: a replica that keeps failing, or answers far slower than its peers, is taken
//! out of the balancer for a while, as Envoy's outlier detection and linkerd's failure accrual do.
//!
//! Discovery only knows what a replica says of itself (gRPC health). A replica can report SERVING
//! and still fail every call (the fault switch does exactly that), or answer five times slower than
//! the others. Each replica's channel is wrapped in an [`Outlier`] service that watches how its
//! calls end:
//!
//! - **Consecutive failures.** [`Settings::consecutive_failures`] calls in a row that failed
//!   because of the replica (no answer, HTTP 5xx, gRPC UNAVAILABLE, INTERNAL, UNKNOWN or
//!   DATA_LOSS; not the caller's errors, nor a full queue's RESOURCE_EXHAUSTED, which means busy)
//!   eject it.
//! - **Latency.** A call is slow when the replica's own pace (the call's time less the time it
//!   waited in the replica's queue, which the replica reports in `x-queue-wait-ms`, see
//!   [`crate::server::queue`]) is over [`Settings::slow_factor`] times, and at least
//!   [`Settings::slow_excess`] over, the typical pace of its peers (the median of their moving
//!   averages). Taking the queue wait out tells a *busy* replica (a long queue: the balancer
//!   already spreads that) from a *slow* one. [`Settings::consecutive_slow`] slow calls in a row
//!   eject it. Comparing with the peers rather than with a fixed bound means that when every
//!   replica slows down alike, none is ejected.
//! - **Ejection.** An ejected replica reports not ready, so the balancer passes it by, for a
//!   backoff that doubles with each ejection, from [`Settings::base_ejection`] up to
//!   [`Settings::max_ejection`]. Then it is on probation: one call at a time, and the first to end
//!   decides. A good answer re-admits it; a failure or a slow answer ejects it again, for twice as
//!   long. The count of ejections is forgotten once the replica has served well for the longest
//!   backoff. Each backoff is made up to [`Settings::jitter`] shorter at random, so that the
//!   workers that ejected a replica together do not all probe it at the same moment.
//! - **The cap.** At most [`Settings::max_ejected_share`] of the replicas are ejected at once, at
//!   least one and never all of them: when every replica fails, the fault is not theirs, and
//!   ejecting them all would only stop the calls that could tell.
//!
//! One [`Detector`] per balancer holds what the replicas' services share (their paces, for the
//! latency test, and their states, for the cap). It wraps each replica's channel as discovery
//! finds it: as a [`tower::Layer`], or with [`Detector::named`] to name the replica in the logs.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::headers::QUEUE_WAIT;

/// When a replica counts as an outlier, and what happens to it then.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Failed calls in a row that eject a replica.
    pub consecutive_failures: u32,
    /// Slow calls in a row that eject a replica.
    pub consecutive_slow: u32,
    /// How many times its peers' typical pace a call's pace must be to count as slow.
    pub slow_factor: f64,
    /// How far over its peers' typical pace a call's pace must also be to count as slow, so that
    /// jitter on sub-millisecond calls is not taken for slowness.
    pub slow_excess: Duration,
    /// How long the first ejection lasts; each one after doubles it.
    pub base_ejection: Duration,
    /// The longest ejection, and how long a replica must serve well for its count to be forgotten.
    pub max_ejection: Duration,
    /// The largest share of the replicas ejected at once.
    pub max_ejected_share: f64,
    /// Up to how much shorter, as a share, an ejection is made at random.
    pub jitter: f64,
}

impl Default for Settings {
    /// Envoy's defaults, made quicker to act: the workshop makes a replica fail or slow down and
    /// expects the mesh to react within seconds, not Envoy's 10 s analysis interval and 30 s base
    /// ejection.
    fn default() -> Self {
        Self {
            // Envoy's default. Each failed call is sent again, out of a retry budget of ten in
            // reserve, so a failing replica must be ejected well within ten failures.
            consecutive_failures: 5,
            // One slow call may be a hiccup; two in a row, each three times its peers' pace, are
            // not. A worker with one call in flight sends a replica one call in three, so each
            // more would let a slow replica hold it for another round.
            consecutive_slow: 2,
            slow_factor: 3.0,
            // rng's and hasher's own pace is 100 ms at the workshop's settings and well under a
            // millisecond in turbo mode: a replica must be a whole such call behind to be slow.
            slow_excess: Duration::from_millis(100),
            // Each worker probes an ejected replica once a backoff. Ten one-call workers make
            // about 20 calls a second over the replicas left, so a 10 s backoff costs them 1 call
            // in 20; a replica that recovers is back within 10 s.
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(60),
            // Workers that ejected a replica together would probe it together.
            jitter: 0.2,
            // Envoy's default is 10% but at least one replica; half keeps most of the capacity
            // while letting one of two or three replicas go.
            max_ejected_share: 0.5,
        }
    }
}

/// What the replicas of one balancer share for outlier detection; a [`Layer`] that wraps each
/// replica's service.
#[derive(Clone, Debug, Default)]
pub struct Detector {
    settings: Settings,
    fleet: Arc<Mutex<Fleet>>,
}

#[derive(Debug, Default)]
struct Fleet {
    next_id: u64,
    replicas: HashMap<u64, Record>,
}

/// What is known of one replica.
#[derive(Debug, Default)]
struct Record {
    /// For the logs.
    name: String,
    state: State,
    consecutive_failures: u32,
    consecutive_slow: u32,
    /// Moving average of its own pace, in seconds (none before its first answer).
    pace: Option<f64>,
    /// Ejections since it last served well for [`Settings::max_ejection`].
    ejections: u32,
    /// When it last came back from an ejection.
    readmitted: Option<Instant>,
    /// The balancer, waiting for the probe in flight to end.
    waiting: Option<Waker>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum State {
    #[default]
    Serving,
    Ejected {
        until: Instant,
    },
    /// Back from an ejection: one call at a time until one ends well.
    Probation {
        in_flight: bool,
    },
}

/// How a call ended, as outlier detection sees it.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// An answer, and the replica's own pace in seconds (the queue wait taken out).
    Answered { pace: f64 },
    /// The replica's failure.
    Failed,
    /// Dropped before it ended (the caller's deadline, or the caller gone), after so many seconds:
    /// at least that slow, and nothing else known.
    Abandoned { after: f64 },
}

/// Weight of a new answer in a replica's moving average of its pace: high, so that when every
/// replica slows down at once their averages follow within a call or two, before the first to
/// answer slowly looks like an outlier next to the others.
const PACE_WEIGHT: f64 = 0.5;

impl Detector {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            fleet: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Fleet> {
        self.fleet.lock().expect("never poisoned")
    }

    /// Records how a call to replica `id` ended, ejecting or re-admitting it as that decides.
    fn record(&self, id: u64, outcome: Outcome, now: Instant) {
        let settings = &self.settings;
        let mut fleet = self.lock();
        let slow = match outcome {
            Outcome::Answered { pace } | Outcome::Abandoned { after: pace } => {
                fleet.is_slow(id, pace, settings)
            }
            Outcome::Failed => false,
        };
        let may_eject = fleet.may_eject(id, settings);
        let Some(replica) = fleet.replicas.get_mut(&id) else {
            return; // Gone from the balancer since.
        };
        if let State::Ejected { .. } = replica.state {
            // A call sent before the ejection: it is out already, and its backoff stands.
            if let Outcome::Answered { pace } = outcome {
                replica.average(pace);
            }
            return;
        }
        match outcome {
            Outcome::Failed => replica.consecutive_failures += 1,
            Outcome::Answered { pace } => {
                replica.consecutive_failures = 0;
                replica.average(pace);
            }
            Outcome::Abandoned { .. } => {}
        }
        if slow {
            replica.consecutive_slow += 1;
        } else if matches!(outcome, Outcome::Answered { .. }) {
            replica.consecutive_slow = 0;
        }
        let bad = slow || matches!(outcome, Outcome::Failed);
        let on_probation = matches!(replica.state, State::Probation { .. });
        let outlier = if on_probation {
            bad
        } else {
            replica.consecutive_failures >= settings.consecutive_failures
                || replica.consecutive_slow >= settings.consecutive_slow
        };
        if outlier && may_eject {
            replica.eject(now, settings);
        } else if on_probation {
            replica.state = if bad || matches!(outcome, Outcome::Abandoned { .. }) {
                // Not ejected (the cap), or nothing learnt: the next call probes again.
                State::Probation { in_flight: false }
            } else {
                replica.readmitted = Some(now);
                State::Serving
            };
            if replica.state == State::Serving {
                tracing::info!(replica = %replica.name, "replica re-admitted after its probe");
            }
        }
        if let Some(waker) = replica.waiting.take() {
            waker.wake();
        }
    }
}

impl Fleet {
    /// Whether `pace` (seconds) is slow for replica `id`, next to the typical pace of the other
    /// replicas that are not ejected: the median of their averages (the higher of the two middle
    /// ones, so that with two replicas, one slow, neither calls the other slow).
    fn is_slow(&self, id: u64, pace: f64, settings: &Settings) -> bool {
        let mut peers: Vec<f64> = self
            .replicas
            .iter()
            .filter(|(other, replica)| {
                **other != id && !matches!(replica.state, State::Ejected { .. })
            })
            .filter_map(|(_, replica)| replica.pace)
            .collect();
        if peers.is_empty() {
            return false;
        }
        peers.sort_by(f64::total_cmp);
        let typical = peers[peers.len() / 2];
        pace > typical * settings.slow_factor && pace - typical > settings.slow_excess.as_secs_f64()
    }

    /// Whether replica `id` may be ejected now: fewer than the cap are, counting it out.
    fn may_eject(&self, id: u64, settings: &Settings) -> bool {
        let all = self.replicas.len();
        let cap = ((all as f64 * settings.max_ejected_share).floor() as usize)
            .max(1)
            .min(all.saturating_sub(1));
        let ejected = self
            .replicas
            .iter()
            .filter(|(other, replica)| {
                **other != id && matches!(replica.state, State::Ejected { .. })
            })
            .count();
        ejected < cap
    }
}

impl Record {
    fn average(&mut self, pace: f64) {
        self.pace = Some(match self.pace {
            Some(average) => average + PACE_WEIGHT * (pace - average),
            None => pace,
        });
    }

    fn eject(&mut self, now: Instant, settings: &Settings) {
        // Served well since it was last re-admitted, for as long as the longest backoff: the
        // earlier ejections are forgotten.
        if self
            .readmitted
            .take()
            .is_some_and(|at| now.duration_since(at) >= settings.max_ejection)
        {
            self.ejections = 0;
        }
        self.ejections += 1;
        let backoff = settings
            .base_ejection
            .saturating_mul(1 << (self.ejections - 1).min(16))
            .min(settings.max_ejection)
            .mul_f64(1.0 - settings.jitter * rand::random::<f64>());
        self.state = State::Ejected {
            until: now + backoff,
        };
        self.consecutive_failures = 0;
        self.consecutive_slow = 0;
        tracing::info!(
            replica = %self.name,
            ejections = self.ejections,
            ?backoff,
            "replica ejected as an outlier"
        );
    }
}

impl Detector {
    /// Wraps the service of the replica called `name` in the logs.
    pub fn named<S>(&self, name: impl std::fmt::Display, inner: S) -> Outlier<S> {
        let mut fleet = self.lock();
        let id = fleet.next_id;
        fleet.next_id += 1;
        let name = name.to_string();
        fleet.replicas.insert(
            id,
            Record {
                name,
                ..Record::default()
            },
        );
        Outlier {
            inner,
            detector: self.clone(),
            id,
            sleep: None,
        }
    }
}

impl<S> Layer<S> for Detector {
    type Service = Outlier<S>;

    /// Wraps a replica's service, named by its number in the logs.
    fn layer(&self, inner: S) -> Outlier<S> {
        let id = self.lock().next_id;
        self.named(format_args!("#{id}"), inner)
    }
}

/// One replica's service, which reports not ready while the replica is ejected.
pub struct Outlier<S> {
    inner: S,
    detector: Detector,
    id: u64,
    /// Wakes the balancer when the ejection ends.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> Drop for Outlier<S> {
    fn drop(&mut self) {
        self.detector.lock().replicas.remove(&self.id);
    }
}

impl<S, R, B> Service<R> for Outlier<S>
where
    S: Service<R, Response = http::Response<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        loop {
            let mut fleet = self.detector.lock();
            let Some(replica) = fleet.replicas.get_mut(&self.id) else {
                break;
            };
            match replica.state {
                State::Serving | State::Probation { in_flight: false } => break,
                State::Probation { in_flight: true } => {
                    replica.waiting = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                State::Ejected { until } if Instant::now() >= until => {
                    replica.state = State::Probation { in_flight: false };
                }
                State::Ejected { until } => {
                    drop(fleet);
                    let sleep = self
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                    if sleep.deadline() != until {
                        sleep.as_mut().reset(until);
                    }
                    ready!(sleep.as_mut().poll(cx));
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        if let Some(replica) = self.detector.lock().replicas.get_mut(&self.id)
            && replica.state == (State::Probation { in_flight: false })
        {
            replica.state = State::Probation { in_flight: true };
        }
        ResponseFuture {
            inner: self.inner.call(request),
            call: Some(Call {
                detector: self.detector.clone(),
                id: self.id,
                sent: Instant::now(),
                outcome: None,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call to one replica; its outcome is recorded when it ends, or when it is dropped.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

/// A call in flight, which records its outcome when dropped: an abandoned call counts too.
struct Call {
    detector: Detector,
    id: u64,
    sent: Instant,
    outcome: Option<Outcome>,
}

impl Drop for Call {
    fn drop(&mut self) {
        let now = Instant::now();
        let outcome = self.outcome.take().unwrap_or(Outcome::Abandoned {
            after: now.duration_since(self.sent).as_secs_f64(),
        });
        self.detector.record(self.id, outcome, now);
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(mut call) = this.call.take() {
            call.outcome = Some(outcome(&result, call.sent.elapsed()));
        }
        Poll::Ready(result)
    }
}

/// How a call ended: an answer with the replica's own pace, or the replica's failure.
///
/// A unary gRPC call that fails comes back as headers carrying `grpc-status`, with no body (a
/// trailers-only answer), so the headers tell; an error status in trailers after a body is not
/// seen here, and the replicas send none.
fn outcome<B, E>(result: &Result<http::Response<B>, E>, took: Duration) -> Outcome {
    let Ok(response) = result else {
        return Outcome::Failed;
    };
    let headers = response.headers();
    let replicas_fault = matches!(
        headers.get("grpc-status").map(http::HeaderValue::as_bytes),
        // UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS: the codes a broken server answers with.
        Some(b"2" | b"13" | b"14" | b"15")
    );
    if replicas_fault || response.status().is_server_error() {
        return Outcome::Failed;
    }
    let waited = headers
        .get(QUEUE_WAIT)
        .and_then(|value| value.to_str().ok()?.parse::<f64>().ok())
        .map_or(0.0, |milliseconds| milliseconds / 1000.0);
    Outcome::Answered {
        pace: (took.as_secs_f64() - waited).max(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use tower::ServiceExt;

    /// How a test replica answers; the test changes it as it goes.
    #[derive(Default)]
    struct Behaviour {
        failing: AtomicBool,
        /// Milliseconds each answer takes.
        pause: AtomicU64,
        /// Milliseconds each answer says it waited in the queue (within `pause`).
        queued: AtomicU64,
    }

    type Replica = Outlier<tower::util::BoxService<(), http::Response<()>, Infallible>>;

    fn replica(detector: &Detector, behaviour: &Arc<Behaviour>) -> Replica {
        let behaviour = behaviour.clone();
        detector.layer(tower::util::BoxService::new(tower::service_fn(move |()| {
            let behaviour = behaviour.clone();
            async move {
                let pause = behaviour.pause.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let mut response = http::Response::new(());
                let headers = response.headers_mut();
                headers.insert(QUEUE_WAIT, behaviour.queued.load(Ordering::SeqCst).into());
                if behaviour.failing.load(Ordering::SeqCst) {
                    headers.insert("grpc-status", http::HeaderValue::from_static("14"));
                }
                Ok(response)
            }
        })))
    }

    /// A failing replica, ejected by its consecutive failures, beside one that behaves (with which
    /// the ejection stays under the cap). Returns it, its behaviour (to mend it), and the other.
    async fn ejected(detector: &Detector) -> (Replica, Arc<Behaviour>, Replica) {
        let other = replica(detector, &behaving(1));
        let behaviour = failing();
        let mut flaky = replica(detector, &behaviour);
        for _ in 0..settings().consecutive_failures {
            call(&mut flaky).await;
        }
        (flaky, behaviour, other)
    }

    fn behaving(pause: u64) -> Arc<Behaviour> {
        let behaviour = Behaviour::default();
        behaviour.pause.store(pause, Ordering::SeqCst);
        Arc::new(behaviour)
    }

    fn failing() -> Arc<Behaviour> {
        let behaviour = behaving(1);
        behaviour.failing.store(true, Ordering::SeqCst);
        behaviour
    }

    /// Whether the replica takes a call now, without waiting.
    fn is_ready(replica: &mut Replica) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        matches!(replica.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    /// One call, once the replica is ready: the time it waited for that.
    async fn call(replica: &mut Replica) -> Duration {
        let start = Instant::now();
        replica.ready().await.unwrap().call(()).await.unwrap();
        start.elapsed()
    }

    /// The defaults, without the jitter, so that the backoffs are exact.
    fn settings() -> Settings {
        Settings {
            jitter: 0.0,
            ..Settings::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_a_replica() {
        let detector = Detector::new(settings());
        let mut good = replica(&detector, &behaving(1));
        let mut bad = replica(&detector, &failing());
        for _ in 1..settings().consecutive_failures {
            call(&mut bad).await;
            assert!(is_ready(&mut bad), "not yet");
        }
        call(&mut bad).await;
        assert!(!is_ready(&mut bad), "ejected");
        assert!(is_ready(&mut good));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count_of_failures() {
        let detector = Detector::new(settings());
        let _other = replica(&detector, &behaving(1));
        let behaviour = failing();
        let mut flaky = replica(&detector, &behaviour);
        for _ in 0..3 {
            for _ in 1..settings().consecutive_failures {
                call(&mut flaky).await;
            }
            behaviour.failing.store(false, Ordering::SeqCst);
            call(&mut flaky).await;
            behaviour.failing.store(true, Ordering::SeqCst);
        }
        assert!(is_ready(&mut flaky), "never that many failures in a row");
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_doubles_with_each_ejection_up_to_the_longest() {
        let detector = Detector::new(settings());
        let (mut bad, _, _other) = ejected(&detector).await;
        // Each probe fails: out again, for twice as long, up to the cap (10, 20, 40, 60 s).
        let mut waits = Vec::new();
        for _ in 0..5 {
            waits.push(call(&mut bad).await.as_secs());
        }
        assert_eq!(waits, [10, 20, 40, 60, 60]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_replica_is_readmitted_after_its_backoff_when_its_probe_succeeds() {
        let detector = Detector::new(settings());
        let (mut flaky, behaviour, _other) = ejected(&detector).await;
        behaviour.failing.store(false, Ordering::SeqCst);
        tokio::time::sleep(settings().base_ejection - Duration::from_millis(10)).await;
        assert!(!is_ready(&mut flaky), "still ejected");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(is_ready(&mut flaky), "on probation");
        let probe = flaky.call(());
        assert!(
            !is_ready(&mut flaky),
            "one call at a time while on probation"
        );
        probe.await.unwrap();
        assert!(is_ready(&mut flaky), "re-admitted");
        let record = |detector: &Detector| detector.lock().replicas[&flaky.id].state;
        assert_eq!(record(&detector), State::Serving);
    }

    #[tokio::test(start_paused = true)]
    async fn the_count_of_ejections_is_forgotten_after_serving_well_for_the_longest_backoff() {
        let detector = Detector::new(settings());
        let _other = replica(&detector, &behaving(1));
        let behaviour = failing();
        let mut flaky = replica(&detector, &behaviour);
        /// Ejects the replica twice (its probe fails once); the second backoff, in seconds.
        async fn twice(flaky: &mut Replica, behaviour: &Behaviour) -> u64 {
            behaviour.failing.store(true, Ordering::SeqCst);
            for _ in 0..settings().consecutive_failures {
                call(flaky).await;
            }
            call(flaky).await;
            behaviour.failing.store(false, Ordering::SeqCst);
            call(flaky).await.as_secs()
        }
        assert_eq!(twice(&mut flaky, &behaviour).await, 20);
        tokio::time::sleep(settings().max_ejection).await;
        assert_eq!(
            twice(&mut flaky, &behaviour).await,
            20,
            "from the first backoff again (else 60)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_far_slower_than_its_peers_is_ejected() {
        let detector = Detector::new(settings());
        let mut peers = [
            replica(&detector, &behaving(100)),
            replica(&detector, &behaving(100)),
        ];
        let slow = behaving(100);
        let mut replica = replica(&detector, &slow);
        for peer in &mut peers {
            call(peer).await;
        }
        call(&mut replica).await;
        slow.pause.store(600, Ordering::SeqCst);
        for _ in 1..settings().consecutive_slow {
            call(&mut replica).await;
            assert!(is_ready(&mut replica), "not yet");
        }
        call(&mut replica).await;
        assert!(!is_ready(&mut replica), "ejected");
        // Its probe is slow too: out again, for twice as long.
        assert_eq!(call(&mut replica).await.as_millis(), 10_000 + 600);
        assert_eq!(call(&mut replica).await.as_millis(), 20_000 + 600);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_replica_is_not_a_slow_one() {
        let detector = Detector::new(settings());
        let mut peer = replica(&detector, &behaving(100));
        let busy = behaving(600);
        busy.queued.store(500, Ordering::SeqCst);
        let mut busy_replica = replica(&detector, &busy);
        call(&mut peer).await;
        for _ in 0..10 {
            call(&mut busy_replica).await;
        }
        assert!(is_ready(&mut busy_replica), "its own pace is its peers'");
    }

    #[tokio::test(start_paused = true)]
    async fn when_all_slow_down_alike_none_is_ejected() {
        let detector = Detector::new(settings());
        let behaviour = behaving(100);
        let mut replicas = [
            replica(&detector, &behaviour),
            replica(&detector, &behaviour),
            replica(&detector, &behaviour),
        ];
        for replica in &mut replicas {
            call(replica).await;
        }
        behaviour.pause.store(1000, Ordering::SeqCst);
        for _ in 0..5 {
            for replica in &mut replicas {
                call(replica).await;
            }
        }
        assert!(replicas.iter_mut().all(is_ready));
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_half_the_replicas_are_ejected_and_never_all() {
        let detector = Detector::new(settings());
        let mut replicas: Vec<Replica> = (0..5).map(|_| replica(&detector, &failing())).collect();
        for _ in 0..settings().consecutive_failures {
            for replica in &mut replicas {
                call(replica).await;
            }
        }
        let ejected = replicas
            .iter_mut()
            .map(is_ready)
            .filter(|ready| !ready)
            .count();
        assert_eq!(ejected, 2, "half of five");

        let detector = Detector::new(settings());
        let mut only = replica(&detector, &failing());
        for _ in 0..2 * settings().consecutive_failures {
            call(&mut only).await;
        }
        assert!(is_ready(&mut only), "a replica alone is never ejected");

        let detector = Detector::new(settings());
        let mut pair = [
            replica(&detector, &failing()),
            replica(&detector, &failing()),
        ];
        for _ in 0..settings().consecutive_failures {
            for replica in &mut pair {
                call(replica).await;
            }
        }
        assert_eq!(
            pair.iter_mut().map(is_ready).filter(|ready| *ready).count(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_leaves_frees_its_place_under_the_cap() {
        let detector = Detector::new(settings());
        let _healthy = replica(&detector, &behaving(1));
        let mut first = replica(&detector, &failing());
        let mut second = replica(&detector, &failing());
        for _ in 0..settings().consecutive_failures {
            call(&mut first).await;
            call(&mut second).await;
        }
        assert!(
            !is_ready(&mut first) && is_ready(&mut second),
            "one of three"
        );
        drop(first);
        for _ in 0..settings().consecutive_failures {
            call(&mut second).await;
        }
        assert!(!is_ready(&mut second), "one of two");
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_call_ends_a_probe_without_a_verdict() {
        let detector = Detector::new(settings());
        let (mut flaky, behaviour, _other) = ejected(&detector).await;
        tokio::time::sleep(settings().base_ejection).await;
        behaviour.failing.store(false, Ordering::SeqCst);
        behaviour.pause.store(50, Ordering::SeqCst);
        assert!(is_ready(&mut flaky));
        drop(flaky.call(()));
        assert!(is_ready(&mut flaky), "the next call probes");
    }
}
