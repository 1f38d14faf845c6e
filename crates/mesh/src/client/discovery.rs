//! Discovery: which replicas stand behind an endpoint, and which of them are serving.
//!
//! `http://rng:8001` names a service, not a server: Docker's DNS (and a Kubernetes headless
//! Service) answers with one address per replica. A gRPC client that connects once to "rng" keeps
//! one HTTP/2 connection to one replica, so `--scale rng=3` would not spread any load. Here the
//! names are resolved again every `interval`, each address gets a channel of its own, and each
//! channel is watched with the standard gRPC health protocol (`grpc.health.v1.Health/Watch`): a
//! replica enters the balancer when it reports SERVING, and leaves it when it reports NOT_SERVING
//! (as ours do on SIGTERM), when its watch breaks, or when DNS stops naming it.
//!
//! One task owns the membership and is the only sender of changes, so a late report from a
//! replica that DNS already dropped cannot bring it back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use http::Uri;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::discover::Change;
use tracing::{debug, info, warn};

use crate::Shutdown;

/// Bound of the change queue to the balancer: membership changes are rare and small.
const CHANGES: usize = 64;
/// Pause before watching a replica again after its watch broke.
const REWATCH_PAUSE: Duration = Duration::from_millis(500);

/// One or more `http://host:port` endpoints of the same service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints(pub Vec<Uri>);

impl std::fmt::Display for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self.0.iter().map(Uri::to_string).collect();
        f.write_str(&all.join(","))
    }
}

/// Parses `RNG_ENDPOINT`-style settings (a clap value parser): one `http://host:port` URL, or
/// several separated by commas.
pub fn parse_endpoints(raw: &str) -> Result<Endpoints, String> {
    let endpoints: Vec<Uri> = raw
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let uri: Uri = part
                .parse()
                .map_err(|err| format!("{part:?} is not a URL ({err})"))?;
            match (uri.scheme_str(), uri.host()) {
                (Some("http"), Some(_)) => Ok(uri),
                _ => Err(format!(
                    "{part:?}: expected an http:// URL with a host, such as http://rng:8001"
                )),
            }
        })
        .collect::<Result<_, _>>()?;
    if endpoints.is_empty() {
        return Err("no endpoint given".to_string());
    }
    Ok(Endpoints(endpoints))
}

/// The `host:port` to resolve for an endpoint (port 80 when the URL has none).
fn authority(uri: &Uri) -> String {
    let host = uri.host().unwrap_or_default();
    format!("{host}:{}", uri.port_u16().unwrap_or(80))
}

/// How every per-replica channel is set up.
#[derive(Clone, Debug)]
pub struct ChannelSettings {
    /// Deadline to open a connection.
    pub connect_timeout: Duration,
    /// How often the name is resolved again.
    pub resolve_interval: Duration,
}

/// What the discovery task learns from the health watchers.
struct Report {
    addr: SocketAddr,
    serving: bool,
}

/// One replica the discovery task knows of.
struct Replica {
    channel: Channel,
    watcher: tokio::task::JoinHandle<()>,
    in_balancer: bool,
}

/// Starts discovering the replicas behind `endpoints`; returns the stream of changes for a
/// balancer, and a handle on the task that tells whether it still runs (a caller with no
/// discovery cannot work, and its health should say so). Stops with `shutdown`.
pub fn spawn(
    Endpoints(endpoints): Endpoints,
    settings: ChannelSettings,
    shutdown: Shutdown,
) -> (mpsc::Receiver<Change<SocketAddr, Channel>>, AbortHandle) {
    let (changes, receiver) = mpsc::channel(CHANGES);
    let task = tokio::spawn(async move {
        Discovery {
            endpoints,
            settings,
            replicas: BTreeMap::new(),
            changes,
        }
        .run(shutdown)
        .await;
    });
    (receiver, task.abort_handle())
}

struct Discovery {
    endpoints: Vec<Uri>,
    settings: ChannelSettings,
    replicas: BTreeMap<SocketAddr, Replica>,
    changes: mpsc::Sender<Change<SocketAddr, Channel>>,
}

impl Discovery {
    async fn run(mut self, shutdown: Shutdown) {
        let (reports_tx, mut reports) = mpsc::channel::<Report>(CHANGES);
        let mut ticks = tokio::time::interval(self.settings.resolve_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // All three branches are cancellation-safe (interval tick, mpsc recv, token).
            tokio::select! {
                _ = ticks.tick() => self.resolve(&reports_tx).await,
                Some(report) = reports.recv() => self.apply(report).await,
                () = shutdown.cancelled() => break,
            }
            if self.changes.is_closed() {
                break; // The balancer is gone.
            }
        }
        for replica in self.replicas.values() {
            replica.watcher.abort();
        }
    }

    /// Resolves every endpoint, adds the new addresses, drops the ones no longer named.
    async fn resolve(&mut self, reports: &mpsc::Sender<Report>) {
        let mut seen = Vec::new();
        let mut failed = false;
        for endpoint in &self.endpoints {
            match tokio::net::lookup_host(authority(endpoint)).await {
                Ok(addrs) => seen.extend(addrs),
                Err(err) => {
                    failed = true;
                    warn!(endpoint = %endpoint, %err, "cannot resolve");
                }
            }
        }
        for addr in &seen {
            if !self.replicas.contains_key(addr) {
                info!(%addr, "replica discovered");
                let channel = self.channel(*addr);
                let watcher = tokio::spawn(watch(*addr, channel.clone(), reports.clone()));
                self.replicas.insert(
                    *addr,
                    Replica {
                        channel,
                        watcher,
                        in_balancer: false,
                    },
                );
            }
        }
        // A failed lookup is no news: keep the replicas known until DNS answers without them.
        if !failed {
            let gone: Vec<SocketAddr> = self
                .replicas
                .keys()
                .filter(|addr| !seen.contains(addr))
                .copied()
                .collect();
            for addr in gone {
                info!(%addr, "replica gone from DNS");
                if let Some(replica) = self.replicas.remove(&addr) {
                    replica.watcher.abort();
                    if replica.in_balancer {
                        let _ = self.changes.send(Change::Remove(addr)).await;
                    }
                }
            }
        }
    }

    /// Moves a replica in or out of the balancer as its health says.
    async fn apply(&mut self, report: Report) {
        let Some(replica) = self.replicas.get_mut(&report.addr) else {
            return; // Dropped from DNS since: the report is stale.
        };
        if replica.in_balancer == report.serving {
            return;
        }
        replica.in_balancer = report.serving;
        let change = if report.serving {
            info!(addr = %report.addr, "replica serving");
            Change::Insert(report.addr, replica.channel.clone())
        } else {
            info!(addr = %report.addr, "replica not serving, taken out");
            Change::Remove(report.addr)
        };
        let _ = self.changes.send(change).await;
    }

    fn channel(&self, addr: SocketAddr) -> Channel {
        Endpoint::from_shared(format!("http://{addr}"))
            .expect("a socket address is a valid authority")
            .connect_timeout(self.settings.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(2))
            .connect_lazy()
    }
}

/// Watches one replica's health for as long as the task lives, reporting every change.
async fn watch(addr: SocketAddr, channel: Channel, reports: mpsc::Sender<Report>) {
    let mut client = HealthClient::new(channel);
    loop {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        match client.watch(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            let serving = message.status() == ServingStatus::Serving;
                            if reports.send(Report { addr, serving }).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            debug!(%addr, %status, "health watch ended");
                            break;
                        }
                    }
                }
            }
            Err(status) => debug!(%addr, %status, "cannot watch health"),
        }
        // Whatever broke the watch, the replica cannot be trusted with calls until it answers.
        if reports
            .send(Report {
                addr,
                serving: false,
            })
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(REWATCH_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_one_or_more_http_urls() {
        let one = parse_endpoints("http://rng:8001").unwrap();
        assert_eq!(one.0.len(), 1);
        assert_eq!(authority(&one.0[0]), "rng:8001");
        let many = parse_endpoints("http://127.0.0.2:8001, http://127.0.0.3:8001,").unwrap();
        assert_eq!(
            many.to_string(),
            "http://127.0.0.2:8001/,http://127.0.0.3:8001/"
        );
        assert_eq!(
            authority(&parse_endpoints("http://rng").unwrap().0[0]),
            "rng:80"
        );
    }

    #[test]
    fn other_endpoints_are_refused() {
        for bad in ["", "rng:8001", "https://rng:8001", "http://", ","] {
            assert!(parse_endpoints(bad).is_err(), "{bad:?}");
        }
    }
}
