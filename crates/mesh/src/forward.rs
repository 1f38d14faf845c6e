//! A TCP forwarder: one published port in front of every replica of a scaled service.
//!
//! Compose publishes a host port per container, so `--scale rng=3` with `8001:8001` would clash.
//! Instead the replicas publish nothing and a forwarder (`rng forward --to rng:8001`, in the same
//! image) owns host port 8001. It resolves the name again for each connection, so replicas that
//! come and go are followed, and takes the addresses in turn. It balances connections, not
//! requests: a gRPC client that keeps one HTTP/2 connection stays on one replica, which is the
//! lesson the mesh's own balancing answers. `httping`, `curl` and `grpcurl` open a connection per
//! run, so they do reach every replica.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::Shutdown;

/// Deadline to connect to one replica before trying the next.
const CONNECT_DEADLINE: Duration = Duration::from_secs(1);

/// Accepts on `listener` and forwards each connection to a replica behind `target` (`host:port`)
/// until `shutdown`. Connections still open then are dropped with the process.
pub async fn run(listener: TcpListener, target: String, shutdown: Shutdown) -> std::io::Result<()> {
    info!(addr = %listener.local_addr()?, %target, "listening, forwarding");
    let turn = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (inbound, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors or the like: keep serving the others.
                warn!(%err, "accept failed");
                continue;
            }
        };
        let (target, turn) = (target.clone(), turn.clone());
        tokio::spawn(async move {
            if let Err(err) = forward(inbound, &target, &turn).await {
                debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
    info!("stopped forwarding");
    Ok(())
}

async fn forward(mut inbound: TcpStream, target: &str, turn: &AtomicUsize) -> std::io::Result<()> {
    let mut outbound = connect(target, turn).await?;
    inbound.set_nodelay(true)?;
    outbound.set_nodelay(true)?;
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

    #[tokio::test]
    async fn forwards_bytes_both_ways_and_stops_on_shutdown() {
        let target = backend("one").await.to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let server = tokio::spawn(run(listener, target, shutdown.clone()));

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
