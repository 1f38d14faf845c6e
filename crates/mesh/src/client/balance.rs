//! Client-side load balancing over the replicas [`crate::client::discovery`] finds.
//!
//! What Envoy and linkerd do, in two small layers: a balancer that spreads the calls over the
//! replicas that are ready, and in front of each replica an outlier detector
//! ([`crate::client::outlier`]) that makes one that fails or answers far slower than its peers
//! report not ready for a while. Three policies, so that the workshop can show the problem and the
//! fix:
//! - `round_robin` (default): the ready replicas in turn, in address order, each call to the next
//!   one after the replica called last; outliers are ejected.
//! - `least_request`: tower's power-of-two-choices balancer over the calls each replica has in
//!   flight from here (Envoy's `LEAST_REQUEST`); outliers are ejected.
//! - `pick_first`: every call to the first serving replica (by address), as a plain gRPC channel
//!   to a service name behaves: the pinning problem. No outlier detection, as in gRPC.
//!
//! Why round robin is the default: the workshop's workers each have one call in flight. A worker
//! that counts its own calls in flight sees every replica at zero, so least-request picks at
//! random, and two workers' calls often meet at one replica while another idles. Round robin sends
//! each worker round the replicas in the same order, so their calls follow each other instead
//! of meeting: on the set-up of `tests/mesh.rs`, ten one-call workers reach the three replicas'
//! ceiling with round robin and fall well short of it with least-request (docs/BENCHMARKS.md has
//! the numbers). Least-request pays off where one client has many calls in flight and the
//! replicas differ in speed, which outlier ejection already covers here.
//!
//! `p2c`, the name of an earlier default, is still accepted, for the default.
//!
//! Whatever the policy, the result is one cloneable channel with a per-call deadline, which the
//! generated tonic clients take as they take a `Channel`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Bound::{Excluded, Unbounded};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::{Change, Discover};
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::util::BoxService;
use tower::{BoxError, Service};

use crate::client::outlier::Detector;

/// How calls are spread over the replicas.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
#[clap(rename_all = "snake_case")]
pub enum Policy {
    /// The ready replicas in turn, outliers ejected.
    #[value(alias = "p2c")]
    RoundRobin,
    /// The one with fewer calls in flight of two ready replicas at random, outliers ejected.
    LeastRequest,
    /// Always the first serving replica (shows the pinning problem).
    PickFirst,
}

/// Calls waiting for a replica; past this, callers wait for room (backpressure).
const BUFFER: usize = 1024;

type Request = http::Request<Body>;
type Response = http::Response<Body>;

type Inner = tower::timeout::Timeout<
    Buffer<Request, <BoxService<Request, Response, BoxError> as Service<Request>>::Future>,
>;

/// A balanced, cloneable channel whose every call has a deadline.
///
/// A named type with a boxed `'static` future, rather than the bare tower stack: the compiler
/// cannot prove the stack's futures `Send` for every lifetime once tonic's generic client wraps it.
#[derive(Clone)]
pub struct Balanced {
    inner: Inner,
}

impl Service<Request> for Balanced {
    type Response = Response;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response, BoxError>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        Box::pin(self.inner.call(request))
    }
}

/// Builds the balanced channel for `policy` over the `changes` from discovery. Each call fails
/// after `deadline`, including the time it waits for a serving replica.
///
/// Must be called inside the Tokio runtime (the buffer's worker is spawned there).
pub fn channel(
    policy: Policy,
    changes: mpsc::Receiver<Change<SocketAddr, Channel>>,
    deadline: Duration,
) -> Balanced {
    let discover = ReceiverStream::new(changes).map(Ok::<_, std::convert::Infallible>);
    let detector = Detector::default();
    let outliers = move |change: Result<Change<SocketAddr, Channel>, _>| {
        change.map(|change| match change {
            Change::Insert(key, channel) => Change::Insert(key, detector.named(key, channel)),
            Change::Remove(key) => Change::Remove(key),
        })
    };
    let service: BoxService<Request, Response, BoxError> = match policy {
        Policy::RoundRobin => BoxService::new(Ordered::new(discover.map(outliers), policy)),
        Policy::LeastRequest => {
            let discover = discover.map(outliers).map(|change| {
                change.map(|change| match change {
                    Change::Insert(key, service) => Change::Insert(
                        key,
                        PendingRequests::new(service, CompleteOnResponse::default()),
                    ),
                    Change::Remove(key) => Change::Remove(key),
                })
            });
            BoxService::new(Balance::new(discover))
        }
        Policy::PickFirst => BoxService::new(Ordered::new(discover, policy)),
    };
    Balanced {
        inner: tower::timeout::Timeout::new(Buffer::new(service, BUFFER), deadline),
    }
}

/// `pick_first` and `round_robin`: the serving replicas kept in address order.
///
/// Address order rather than the order in which they came, so that every worker goes round in the
/// same order, also after replicas come and go.
struct Ordered<D: Discover> {
    discover: D,
    replicas: BTreeMap<D::Key, D::Service>,
    policy: Policy,
    /// The replica called last (it may have gone since): round robin goes on from there.
    last: Option<D::Key>,
    /// The replica made ready for the next call.
    chosen: Option<D::Key>,
}

impl<D> Ordered<D>
where
    D: Discover + Unpin,
    D::Key: Ord + Clone,
{
    fn new(discover: D, policy: Policy) -> Self {
        Self {
            discover,
            replicas: BTreeMap::new(),
            policy,
            last: None,
            chosen: None,
        }
    }

    /// Applies every change discovery has ready.
    fn update(&mut self, cx: &mut Context<'_>) -> Result<(), BoxError>
    where
        D::Error: Into<BoxError>,
    {
        while let Poll::Ready(change) = Pin::new(&mut self.discover).poll_discover(cx) {
            match change {
                Some(Ok(Change::Insert(key, service))) => {
                    self.replicas.insert(key, service);
                }
                Some(Ok(Change::Remove(key))) => {
                    self.replicas.remove(&key);
                    if self.chosen.as_ref() == Some(&key) {
                        self.chosen = None;
                    }
                }
                Some(Err(err)) => return Err(err.into()),
                None => return Err("discovery ended".into()),
            }
        }
        Ok(())
    }

    /// The replicas the next call may go to, in the order they are tried: for `pick_first` the
    /// first alone, for `round_robin` all of them, starting after the one called last.
    fn candidates(&self) -> Vec<D::Key> {
        let keys = self.replicas.keys().cloned();
        match (self.policy, &self.last) {
            (Policy::PickFirst, _) => keys.take(1).collect(),
            (_, Some(last)) => self
                .replicas
                .range((Excluded(last), Unbounded))
                .chain(self.replicas.range(..=last))
                .map(|(key, _)| key.clone())
                .collect(),
            (_, None) => keys.collect(),
        }
    }
}

impl<D, R> Service<R> for Ordered<D>
where
    D: Discover + Unpin,
    D::Key: Ord + Clone,
    D::Error: Into<BoxError>,
    D::Service: Service<R>,
    <D::Service as Service<R>>::Error: Into<BoxError>,
    <D::Service as Service<R>>::Future: Send + 'static,
    <D::Service as Service<R>>::Response: 'static,
{
    type Response = <D::Service as Service<R>>::Response;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.update(cx)?;
        if self.chosen.is_some() {
            return Poll::Ready(Ok(()));
        }
        // The first that is ready takes the call. Each one that is not has registered to wake
        // this task when it is; with none at all, discovery wakes it when one comes.
        for key in self.candidates() {
            let service = self.replicas.get_mut(&key).expect("a candidate is known");
            match service.poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    self.chosen = Some(key);
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(err)) => {
                    tracing::debug!(error = %err.into(), "replica failed, dropping it until rediscovered");
                    self.replicas.remove(&key);
                }
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    fn call(&mut self, request: R) -> Self::Future {
        let key = self.chosen.take().expect("poll_ready before call");
        self.last = Some(key.clone());
        let future = self
            .replicas
            .get_mut(&key)
            .expect("chosen replica")
            .call(request);
        Box::pin(async move { future.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    type Answer = BoxService<(), u16, BoxError>;

    /// A replica that answers with its own number.
    fn replica(number: u16) -> Answer {
        BoxService::new(tower::service_fn(move |()| async move {
            Ok::<_, BoxError>(number)
        }))
    }

    fn ordered(
        policy: Policy,
    ) -> (
        mpsc::Sender<Change<u16, Answer>>,
        Ordered<
            impl Discover<Key = u16, Service = Answer, Error = std::convert::Infallible> + Unpin,
        >,
    ) {
        let (changes, receiver) = mpsc::channel(16);
        let discover = ReceiverStream::new(receiver).map(Ok::<_, std::convert::Infallible>);
        (changes, Ordered::new(discover, policy))
    }

    async fn call<S: Service<(), Response = u16, Error = BoxError>>(service: &mut S) -> u16 {
        service.ready().await.unwrap().call(()).await.unwrap()
    }

    #[tokio::test]
    async fn pick_first_sticks_to_the_first_serving_replica() {
        let (changes, mut balancer) = ordered(Policy::PickFirst);
        for number in [3, 1, 2] {
            changes
                .send(Change::Insert(number, replica(number)))
                .await
                .unwrap();
        }
        for _ in 0..5 {
            assert_eq!(call(&mut balancer).await, 1);
        }
        changes.send(Change::Remove(1)).await.unwrap();
        assert_eq!(call(&mut balancer).await, 2);
    }

    #[tokio::test]
    async fn round_robin_takes_every_replica_in_turn() {
        let (changes, mut balancer) = ordered(Policy::RoundRobin);
        for number in [1, 2, 3] {
            changes
                .send(Change::Insert(number, replica(number)))
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(call(&mut balancer).await);
        }
        assert_eq!(seen, [1, 2, 3, 1, 2, 3], "in address order");
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_passes_an_ejected_replica_by_until_its_backoff_ends() {
        use crate::client::outlier::{Detector, Settings};

        let (changes, receiver) = mpsc::channel(16);
        let detector = Detector::default();
        let discover = ReceiverStream::new(receiver).map(Ok::<_, std::convert::Infallible>);
        let mut balancer = Ordered::new(discover, Policy::RoundRobin);
        for number in [1u16, 2, 3] {
            // Replica 2 answers every call with UNAVAILABLE, as a failing replica that still
            // reports SERVING does.
            let service = tower::service_fn(move |()| async move {
                let mut response = http::Response::new(number);
                if number == 2 {
                    response
                        .headers_mut()
                        .insert("grpc-status", http::HeaderValue::from_static("14"));
                }
                Ok::<_, BoxError>(response)
            });
            changes
                .send(Change::Insert(number, detector.named(number, service)))
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        for _ in 0..30 {
            let response = balancer.ready().await.unwrap().call(()).await.unwrap();
            seen.push(response.into_body());
        }
        let failures = Settings::default().consecutive_failures as usize;
        let to_2 = |calls: &[u16]| calls.iter().filter(|&&n| n == 2).count();
        assert_eq!(to_2(&seen), failures, "in turn until ejected: {seen:?}");
        assert!(!seen[20..].contains(&2), "then passed by: {seen:?}");

        tokio::time::sleep(Settings::default().base_ejection).await;
        let mut after = Vec::new();
        for _ in 0..3 {
            let response = balancer.ready().await.unwrap().call(()).await.unwrap();
            after.push(response.into_body());
        }
        assert_eq!(to_2(&after), 1, "probed once its backoff ended: {after:?}");
    }

    #[tokio::test]
    async fn a_call_waits_for_a_serving_replica() {
        let (changes, mut balancer) = ordered(Policy::RoundRobin);
        let waiting = tokio::spawn(async move { call(&mut balancer).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "no replica yet");
        changes.send(Change::Insert(7, replica(7))).await.unwrap();
        assert_eq!(waiting.await.unwrap(), 7);
    }
}
