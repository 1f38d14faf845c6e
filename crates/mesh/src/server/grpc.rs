//! gRPC health and server reflection, wired the same way in every gRPC service.
//!
//! Health answers for the whole server ("") and for each named service, which is what `grpcurl`,
//! Docker healthchecks and Kubernetes `grpc:` probes ask. Reflection (v1 and v1alpha, since
//! grpcurl and older tools differ) serves the descriptors the service hands over and those of
//! health and reflection, so `grpcurl list`, `describe` and calls need no `.proto` file.

use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::Layer as _;

use crate::headers::is_grpc;
use crate::telemetry::metrics::RecordLayer;

/// The services every gRPC server of the mesh serves beside its own.
const PROBE_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The encoded descriptor sets of [`PROBE_SERVICES`], served by reflection beside the service's
/// own and read for the names of the methods that metrics count.
const PROBE_DESCRIPTOR_SETS: [&[u8]; 3] = [
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// Largest health request or answer: a service name and a status. A limit far below tonic's 4 MiB
/// default matters because health stays outside every queue and admission layer: tonic refuses a
/// larger message from its length prefix (OUT_OF_RANGE), before reading it into memory.
const HEALTH_MAX_MESSAGE: usize = 4 * 1024;
/// Largest reflection request (a symbol or file name).
const REFLECTION_MAX_REQUEST: usize = 64 * 1024;
/// Largest reflection answer: the service's, health's and reflection's descriptors.
const REFLECTION_MAX_ANSWER: usize = 1024 * 1024;

/// Reports the serving status of one server's gRPC services.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: Vec<&'static str>,
}

impl Health {
    /// Sets every service, and the server as a whole, to `status`.
    pub async fn set_all(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for service in &self.services {
            self.reporter.set_service_status(service, status).await;
        }
    }

    /// Reports NOT_SERVING for the server and its services, so that balancers and probes stop
    /// sending new work while in-flight calls drain.
    pub async fn set_not_serving(&self) {
        self.set_all(ServingStatus::NotServing).await;
    }

    /// Ends every health `Watch` stream: tonic-health ends the streams of a service whose status
    /// is cleared. A Watch never finishes by itself, so one left open (every worker holds one per
    /// replica) would hold the drain to its deadline. A `Check` would answer NOT_FOUND from then
    /// on, which no new client sees: the listener no longer accepts, and HTTP/2 clients have
    /// GOAWAY.
    pub async fn end_watches(&self) {
        let mut reporter = self.reporter.clone();
        reporter.clear_service_status("").await;
        for service in &self.services {
            reporter.clear_service_status(service).await;
        }
    }

    /// Follows `shutdown` phase by phase: NOT_SERVING as soon as it starts, so that balancers take
    /// this server out while it still serves; at the drain, every watch ended.
    pub async fn follow(self, shutdown: crate::Shutdown) {
        shutdown.cancelled().await;
        self.set_not_serving().await;
        tracing::info!("reported NOT_SERVING");
        shutdown.draining().await;
        self.end_watches().await;
        tracing::info!("health watches ended, draining");
    }
}

/// Builds the health and reflection services for a server that serves `services` (their full
/// names, e.g. `dockercoins.rng.v1.RngService`), every one reported SERVING, described by
/// `descriptor_sets` (encoded `FileDescriptorSet`s, as prost and tonic build them), each counted
/// and timed by `record`.
///
/// Returns the reporter and the gRPC routes, to which the caller adds its own service. These two
/// stay outside any request queue: a probe must answer even when the queue is full.
pub async fn health_and_reflection(
    services: &[&'static str],
    descriptor_sets: &[&'static [u8]],
    record: &RecordLayer,
) -> (Health, Routes) {
    let (reporter, health_server) = tonic_health::server::health_reporter();
    let health_server = health_server
        .max_decoding_message_size(HEALTH_MAX_MESSAGE)
        .max_encoding_message_size(HEALTH_MAX_MESSAGE);
    let health = Health {
        reporter,
        services: services.to_vec(),
    };
    health.set_all(ServingStatus::Serving).await;

    // Advertise exactly what this server serves: a set may describe more services than it
    // serves, and listing another service would send grpcurl users to the wrong port.
    let reflection = || {
        let builder = descriptor_sets
            .iter()
            .copied()
            .chain(PROBE_DESCRIPTOR_SETS)
            .fold(
                tonic_reflection::server::Builder::configure().include_reflection_service(false),
                |builder, set| builder.register_encoded_file_descriptor_set(set),
            );
        services
            .iter()
            .copied()
            .chain(PROBE_SERVICES)
            .fold(builder, |builder, name| builder.with_service_name(name))
    };
    let v1 = reflection()
        .build_v1()
        .expect("the compiled descriptor sets are valid")
        .max_decoding_message_size(REFLECTION_MAX_REQUEST)
        .max_encoding_message_size(REFLECTION_MAX_ANSWER);
    let v1alpha = reflection()
        .build_v1alpha()
        .expect("the compiled descriptor sets are valid")
        .max_decoding_message_size(REFLECTION_MAX_REQUEST)
        .max_encoding_message_size(REFLECTION_MAX_ANSWER);

    let routes = Routes::new(record.layer(health_server))
        .add_service(record.layer(v1))
        .add_service(record.layer(v1alpha));
    (health, routes)
}

/// One port's router: `service` (a tonic server) and the HTTP `shim` behind one request `queue`
/// and the injected `fault`, health and reflection (from the service's encoded `descriptor_set`)
/// outside them, every route counted and timed, and [`fallback`] for every other path.
///
/// Returns the health reporter too, so that shutdown can report NOT_SERVING. What applies to
/// every answer alike (`x-served-by`, the request's span) is put around the whole router by
/// [`serve_until`], once, rather than on each route.
pub async fn router<S>(
    service: S,
    descriptor_set: &'static [u8],
    shim: axum::Router,
    queue: crate::server::queue::Queue,
    fault: crate::admin::fault::Fault,
) -> (Health, axum::Router)
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    // Calls are counted per method of the services this port serves, and no other name.
    let services: Vec<&str> = std::iter::once(S::NAME).chain(PROBE_SERVICES).collect();
    let sets: Vec<&[u8]> = std::iter::once(descriptor_set)
        .chain(PROBE_DESCRIPTOR_SETS)
        .collect();
    let record = RecordLayer::with_grpc_methods(methods(&services, &sets));
    let (health, grpc) = health_and_reflection(&[S::NAME], &[descriptor_set], &record).await;
    // What the service's calls and the shim's requests go through, in this order: counted and
    // timed until the answer ends (see `crate::telemetry::metrics`), then the injected fault
    // (see `crate::admin::fault`), then the queue. Around the gRPC service itself, and as one
    // `route_layer` for the shim: axum boxes a route again for each layer put on it, and every
    // request pays for each box (a clone and a boxed future).
    let layers = tower::ServiceBuilder::new()
        .layer(record)
        .layer(fault)
        .layer(queue);
    let grpc = grpc.add_service(layers.service(service)).into_axum_router();
    let app = shim
        .route_layer(layers)
        .merge(grpc)
        // `/metrics` and the fault switch are on the admin port (`crate::admin`): nothing a
        // client sends here changes the service.
        .fallback(fallback);
    (health, app)
}

/// The full path (`/package.Service/Method`) of every method of `services`, as the encoded
/// `descriptor_sets` describe them.
fn methods(services: &[&str], descriptor_sets: &[&[u8]]) -> Vec<String> {
    use prost::Message as _;
    let mut methods = Vec::new();
    for &set in descriptor_sets {
        let set = prost_types::FileDescriptorSet::decode(set)
            .expect("the compiled descriptor sets are valid");
        for file in &set.file {
            for service in &file.service {
                let name = match file.package() {
                    "" => service.name().to_string(),
                    package => format!("{package}.{}", service.name()),
                };
                if services.contains(&name.as_str()) {
                    let paths = service.method.iter();
                    methods.extend(paths.map(|method| format!("/{name}/{}", method.name())));
                }
            }
        }
    }
    methods
}

/// Answers requests that match no route: gRPC's UNIMPLEMENTED for gRPC clients, and a 404 with a
/// one-line reason for everyone else (tonic's own fallback would answer HTTP 200 with an empty
/// body, which tells a `curl` user nothing).
pub async fn fallback(request: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    if is_grpc(request.headers()) {
        let status =
            tonic::Status::unimplemented(format!("no such method: {}", request.uri().path()));
        return status.into_http::<axum::body::Body>();
    }
    (
        http::StatusCode::NOT_FOUND,
        format!("no such path: {}\n", request.uri().path()),
    )
        .into_response()
}

/// The settings [`serve_until`] needs besides the service's own.
pub struct Serving<'a> {
    /// The admin listener's address (`/metrics`, `/healthz`, `/readyz`, the fault switch).
    pub admin_listen: std::net::SocketAddr,
    pub limits: &'a crate::Limits,
    /// Whether the fault switch exists, and the fault the service starts with.
    pub faults: (crate::admin::fault::Injection, std::time::Duration, f64),
}

/// Serves the gRPC server that `app` builds around the configured fault on `listener`, and the
/// admin routes beside it, until `shutdown`: on the signal, reports NOT_SERVING and goes on
/// serving for the grace; then ends the health watches, stops accepting and drains (see
/// [`Health::follow`] and [`crate::server::serve`]).
pub async fn serve_until<F, Fut>(
    listener: tokio::net::TcpListener,
    serving: Serving<'_>,
    shutdown: crate::Shutdown,
    app: F,
) -> std::io::Result<()>
where
    F: FnOnce(crate::admin::fault::Fault) -> Fut,
    Fut: std::future::Future<Output = (Health, axum::Router)>,
{
    let (injection, delay, error_rate) = serving.faults;
    let (fault, switch) = injection.start(delay, error_rate);
    let (health, app) = app(fault).await;
    let app = tower::ServiceBuilder::new()
        // A span per request, with the caller's trace id (see `crate::telemetry::trace`), when
        // spans are on (export, or `RUST_LOG` at debug for them); otherwise no layer at all.
        .option_layer(crate::telemetry::trace::spans_enabled().then(|| {
            tower::ServiceBuilder::new()
                // One body type whether the layer is there or not.
                .map_response(|response: http::Response<_>| response.map(axum::body::Body::new))
                .layer(
                    tower_http::trace::TraceLayer::new_for_http()
                        .make_span_with(crate::telemetry::trace::request_span),
                )
        }))
        .service(app);
    let admin = crate::admin::Admin::new(shutdown.clone()).fault(switch);
    let admin_listener = crate::server::serve::bind(serving.admin_listen).await?;
    let reporter = tokio::spawn(health.follow(shutdown.clone()));
    tokio::try_join!(
        crate::serve(listener, app, serving.limits, shutdown.clone()),
        crate::admin::serve(admin_listener, admin.router(), serving.limits, shutdown),
    )?;
    reporter.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_methods_of_the_served_services_are_read_from_their_descriptors() {
        let methods = methods(&["grpc.health.v1.Health"], &PROBE_DESCRIPTOR_SETS);
        for method in [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
        ] {
            assert!(methods.iter().any(|known| known == method), "{methods:?}");
        }
        assert!(
            !methods.iter().any(|known| known.contains("Reflection")),
            "only the services asked for: {methods:?}"
        );
    }
}
