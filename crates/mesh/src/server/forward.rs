//! A TCP forwarder: one published port in front of every replica of a scaled service.
//!
//! Compose publishes a host port per container, so `--scale rng=3` with `8001:8001` would clash.
//! Instead the replicas publish nothing and a forwarder (`rng forward --to rng:8001`, in the same
//! image) owns host port 8001. It resolves the name again for each connection, so replicas that
//! come and go are followed, and takes the addresses in turn. It balances connections, not
//! requests: a gRPC client that keeps one HTTP/2 connection stays on one replica, which is the
//! lesson the mesh's own balancing answers. `httping`, `curl` and `grpcurl` open a connection per
//! run, so they do reach every replica.
//!
//! It is a listener like any other, so the same [`Limits`] apply where they can to bytes it does
//! not parse: the connection cap, the idle timeout (nothing read from either side), and the
//! pause after accept errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use crate::Shutdown;
use crate::server::accept::{Accepted, Acceptor};
use crate::server::idle::{Activity, Connections, Tracked};
use crate::server::limits::Limits;

/// Deadline to connect to one replica before trying the next.
const CONNECT_DEADLINE: Duration = Duration::from_secs(1);

/// Accepts on `listener` and forwards each connection to a replica behind `target` (`host:port`)
/// until `shutdown`, under the connection cap and idle timeout of `limits`. Connections still
/// open then are dropped.
pub async fn run(
    listener: TcpListener,
    target: String,
    limits: &Limits,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    info!(addr = %listener.local_addr()?, %target, "listening, forwarding");
    let mut acceptor = Acceptor::new(listener, limits);
    let turn = Arc::new(AtomicUsize::new(0));
    let mut connections = Connections::new(limits.idle_timeout, None);
    loop {
        // Each branch is cancel-safe: `accept` loses no connection, `tend` no task and no sweep.
        let Accepted { stream, peer, slot } = tokio::select! {
            accepted = acceptor.accept() => accepted,
            () = connections.tend() => continue,
            () = shutdown.cancelled() => break,
        };
        let (target, turn) = (target.clone(), turn.clone());
        connections.spawn(peer, |activity| async move {
            if let Err(err) = forward(stream, &target, &turn, activity).await {
                debug!(%peer, %err, "connection ended with an error");
            }
            drop(slot);
        });
    }
    info!("stopped forwarding");
    Ok(())
}

/// Copies bytes both ways between `inbound` and a replica until either side closes, noting
/// what it reads from either in `activity`.
async fn forward(
    inbound: TcpStream,
    target: &str,
    turn: &AtomicUsize,
    activity: Arc<Activity>,
) -> std::io::Result<()> {
    let outbound = connect(target, turn).await?;
    // The acceptor set the inbound side's options; a replica's own listener sets its side's.
    outbound.set_nodelay(true)?;
    // One activity for both directions: a client waiting for a long answer is not idle.
    let mut inbound = Tracked::new(inbound, activity.clone());
    let mut outbound = Tracked::new(outbound, activity);
    tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await?;
    Ok(())
}

/// `addrs` starting at the `start`-th (modulo), then the others in order.
fn in_turn(addrs: &[SocketAddr], start: usize) -> Vec<SocketAddr> {
    let len = addrs.len().max(1);
    addrs
        .iter()
        .cycle()
        .skip(start % len)
        .take(addrs.len())
        .copied()
        .collect()
}

/// Connects to the next replica in turn, trying the others if it does not answer.
async fn connect(target: &str, turn: &AtomicUsize) -> std::io::Result<TcpStream> {
    let mut addrs: Vec<_> = tokio::net::lookup_host(target).await?.collect();
    // DNS may rotate the answer or not; a stable order makes the turn meaningful.
    addrs.sort();
    let mut last_error = None;
    for addr in in_turn(&addrs, turn.fetch_add(1, Ordering::Relaxed)) {
        match tokio::time::timeout(CONNECT_DEADLINE, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(err)) => last_error = Some(err),
            Err(_) => last_error = Some(std::io::ErrorKind::TimedOut.into()),
        }
    }
    Err(last_error
        .unwrap_or_else(|| std::io::Error::other(format!("{target} resolves to nothing"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that answers every connection with its own name.
    async fn backend(name: &'static str) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(name.as_bytes()).await;
            }
        });
        addr
    }

    /// An echo backend: every connection gets back what it sends.
    async fn echo_backend() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr.to_string()
    }

    fn spawn(
        listener: TcpListener,
        target: String,
        limits: Limits,
        shutdown: Shutdown,
    ) -> tokio::task::JoinHandle<std::io::Result<()>> {
        tokio::spawn(async move { run(listener, target, &limits, shutdown).await })
    }

    /// A forwarder in front of an echo backend, with `limits`.
    async fn echo_forwarder(limits: Limits) -> std::net::SocketAddr {
        let target = echo_backend().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = listener.local_addr().unwrap();
        spawn(listener, target, limits, Shutdown::new());
        front
    }

    /// Whether `stream` still gets its bytes back.
    async fn echoes(stream: &mut TcpStream) -> bool {
        let mut answer = [0; 4];
        stream.write_all(b"ping").await.is_ok()
            && tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut answer))
                .await
                .is_ok_and(|read| read.is_ok())
    }

    /// Waits up to `within` for the far side to close `stream`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut byte = [0];
        matches!(
            tokio::time::timeout(within, stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn past_the_cap_new_connections_are_closed_and_open_ones_keep_working() {
        let front = echo_forwarder(Limits {
            max_connections: 2,
            ..Limits::default()
        })
        .await;
        let mut open = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(front).await.unwrap();
            assert!(echoes(&mut stream).await);
            open.push(stream);
        }
        let mut over = TcpStream::connect(front).await.unwrap();
        assert!(closed_within(&mut over, Duration::from_secs(2)).await);
        assert!(echoes(&mut open[0]).await, "open connections keep working");

        drop(open.pop());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut next = TcpStream::connect(front).await.unwrap();
            if echoes(&mut next).await {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a freed slot lets one in"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_connection_idle_both_ways_is_closed_and_a_busy_one_is_not() {
        let idle = Duration::from_millis(300);
        let front = echo_forwarder(Limits {
            idle_timeout: idle,
            ..Limits::default()
        })
        .await;
        let mut quiet = TcpStream::connect(front).await.unwrap();
        let mut busy = TcpStream::connect(front).await.unwrap();
        assert!(echoes(&mut quiet).await);
        let started = std::time::Instant::now();
        // The busy one talks every 100 ms for three idle periods.
        while started.elapsed() < idle * 3 {
            assert!(echoes(&mut busy).await, "a busy connection stays open");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(closed_within(&mut quiet, Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn forwards_bytes_both_ways_and_stops_on_shutdown() {
        let target = backend("one").await.to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let server = spawn(listener, target, Limits::default(), shutdown.clone());

        let mut client = TcpStream::connect(front).await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "one");

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[test]
    fn each_connection_starts_with_the_next_replica() {
        let addrs: Vec<std::net::SocketAddr> = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
            .map(|a| a.parse().unwrap())
            .to_vec();
        assert_eq!(in_turn(&addrs, 0), addrs);
        assert_eq!(in_turn(&addrs, 1), [addrs[1], addrs[2], addrs[0]]);
        assert_eq!(in_turn(&addrs, 5), [addrs[2], addrs[0], addrs[1]]);
        assert!(in_turn(&[], 3).is_empty());
    }
}
