//! Client-side load balancing over the replicas [`crate::client::discovery`] finds.
//!
//! Three policies, so that the workshop can show the problem and the fix:
//! - `p2c` (default): tower's power-of-two-choices balancer over a PeakEwma-style load measure.
//!   Each call goes to the less loaded of two replicas: the next two in turn (see
//!   [`crate::client::load`] for why not two at random), so that calls go round the replicas and a slow
//!   one is skipped.
//! - `pick_first`: every call to the first serving replica (by address), as a plain gRPC channel
//!   to a service name behaves: the pinning problem.
//! - `round_robin`: the serving replicas in turn, blind to their load.
//!
//! Whatever the policy, the result is one cloneable channel with a per-call deadline, which the
//! generated tonic clients take as they take a `Channel`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::{Change, Discover};
use tower::util::BoxService;
use tower::{BoxError, Service};

use crate::client::load::{Measured, Rotation};

/// How calls are spread over the replicas.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
#[clap(rename_all = "snake_case")]
pub enum Policy {
    /// Power of two choices over latency-weighted load (spreads, and avoids slow replicas).
    P2c,
    /// Always the first serving replica (shows the pinning problem).
    PickFirst,
    /// Serving replicas in turn, blind to load.
    RoundRobin,
}

/// Latency assumed for a replica before any call has been timed.
const DEFAULT_RTT: Duration = Duration::from_millis(100);
/// How fast a replica's latency estimate forgets. A replica made slow (+500 ms) is tried again
/// once every few seconds: with 2 s it still got 15% of the calls of ten workers, with 5 s 5%.
const DECAY: Duration = Duration::from_secs(5);
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
    let service: BoxService<Request, Response, BoxError> = match policy {
        Policy::P2c => {
            let rotation = Rotation::default();
            let discover = discover.map(move |change| {
                change.map(|change| match change {
                    Change::Insert(key, channel) => Change::Insert(
                        key,
                        Measured::new(channel, key, DEFAULT_RTT, DECAY, &rotation),
                    ),
                    Change::Remove(key) => Change::Remove(key),
                })
            });
            BoxService::new(Balance::new(discover))
        }
        Policy::PickFirst | Policy::RoundRobin => BoxService::new(Ordered::new(discover, policy)),
    };
    Balanced {
        inner: tower::timeout::Timeout::new(Buffer::new(service, BUFFER), deadline),
    }
}

/// `pick_first` and `round_robin`: the serving replicas kept in address order.
struct Ordered<D: Discover> {
    discover: D,
    replicas: BTreeMap<D::Key, D::Service>,
    policy: Policy,
    turn: usize,
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
            turn: 0,
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
                }
                Some(Err(err)) => return Err(err.into()),
                None => return Err("discovery ended".into()),
            }
        }
        Ok(())
    }

    /// The replica the next call goes to, by policy.
    fn pick(&mut self) -> Option<D::Key> {
        let index = match self.policy {
            Policy::PickFirst | Policy::P2c => 0,
            Policy::RoundRobin => {
                self.turn = self.turn.wrapping_add(1);
                self.turn % self.replicas.len().max(1)
            }
        };
        self.replicas.keys().nth(index).cloned()
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
        loop {
            let Some(key) = self.chosen.clone().or_else(|| self.pick()) else {
                // No serving replica: discovery wakes us when one comes.
                return Poll::Pending;
            };
            let service = self.replicas.get_mut(&key).expect("picked from the map");
            match ready!(service.poll_ready(cx)) {
                Ok(()) => {
                    self.chosen = Some(key);
                    return Poll::Ready(Ok(()));
                }
                Err(err) => {
                    tracing::debug!(error = %err.into(), "replica failed, dropping it until rediscovered");
                    self.replicas.remove(&key);
                    self.chosen = None;
                }
            }
        }
    }

    fn call(&mut self, request: R) -> Self::Future {
        let key = self.chosen.take().expect("poll_ready before call");
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
        seen.sort_unstable();
        assert_eq!(seen, [1, 1, 2, 2, 3, 3]);
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
