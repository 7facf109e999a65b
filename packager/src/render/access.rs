//! Who may reach the model pods, and what they may reach: a NetworkPolicy per model Service (the
//! proxies the filter runs in, metrics scraping; DNS, istiod and the `--egress-*` allowances) and
//! an AuthorizationPolicy of the principals allowed to call them (mTLS identities).

use model_router::config::Config;
use serde_json::{json, Value};

use super::options::{Options, Part, Target};
use super::plan::{Host, Plan};
use super::Doc;

/// For each model Service of the cluster, its NetworkPolicy, then its AuthorizationPolicy.
pub(super) fn docs(config: &Config, o: &Options, plan: &Plan) -> Vec<Doc> {
    // Envoy Gateway's proxies have no mesh identity: an AuthorizationPolicy would lock them out.
    let meshed = !matches!(o.target, Target::EnvoyGateway { .. });
    let mut docs = Vec::new();
    for h in plan.hosts.iter().filter(|h| !h.external) {
        if o.wants(Part::NetworkPolicy) {
            docs.push(network_policy(h, o));
        }
        if o.wants(Part::AuthorizationPolicy) && meshed {
            docs.push(authorization_policy(h, o, &config.trust_domain));
        }
    }
    docs
}

fn in_namespace(ns: &str) -> Value {
    json!({"matchLabels": {"kubernetes.io/metadata.name": ns}})
}

/// Ports Prometheus scrapes on an Istio pod: the sidecar's merged metrics (app + proxy) and Envoy's.
const METRICS_PORTS: [u16; 2] = [15020, 15090];

fn network_policy(h: &Host, o: &Options) -> Doc {
    Doc {
        file: format!("networkpolicy-{}-{}", h.namespace, h.service),
        comment: format!(
            "Only the {} (and --ingress-namespace) reach the `{}` model pods, plus metrics scraping on the\n\
             sidecar's ports {} and {}; the pods reach DNS, istiod and what --dependency, --egress-cidr,\n\
             --egress-namespace and --egress-port allow (model weights from a hub or S3 need one of those).",
            match &o.target {
                Target::Gateway { name, .. } | Target::EnvoyGateway { name, .. } => format!("gateway `{name}`"),
                Target::Waypoint { name, .. } => format!("waypoint `{name}` (HBONE, port 15008)"),
                Target::Selector(_) => "selected callers".to_string(),
            },
            h.service,
            METRICS_PORTS[0],
            METRICS_PORTS[1]
        ),
        value: json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": o.meta(&o.object_name(&format!("{}-model", h.service)), &h.namespace),
            "spec": {"podSelector": {"matchLabels": o.pods_of(h)}, "policyTypes": ["Ingress", "Egress"],
                     "ingress": ingress(o), "egress": egress(o)}}),
    }
}

/// The proxies the filter runs in (and `--ingress-namespace`), and metrics scraping.
fn ingress(o: &Options) -> Vec<Value> {
    let mut from = vec![proxies(o)];
    for ns in &o.network.ingress_namespaces {
        from.push(json!({"namespaceSelector": in_namespace(ns)}));
    }
    vec![
        json!({"from": from}),
        // Metrics scraping (Prometheus anywhere in the cluster) of the sidecar's ports only.
        json!({"ports": METRICS_PORTS.iter().map(|p| json!({"protocol": "TCP", "port": p})).collect::<Vec<_>>()}),
    ]
}

/// The pods of the proxies the filter runs in: the gateway's or waypoint's, or the callers'.
fn proxies(o: &Options) -> Value {
    match &o.target {
        Target::Gateway { name, .. } | Target::Waypoint { name, .. } => {
            json!({"namespaceSelector": in_namespace(&o.namespace),
            "podSelector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": name}}})
        }
        // Envoy Gateway's proxies run where its controller puts them (envoy-gateway-system by default).
        Target::EnvoyGateway { name, .. } => json!({"namespaceSelector": {},
            "podSelector": {"matchLabels": {"gateway.envoyproxy.io/owning-gateway-name": name,
                                            "gateway.envoyproxy.io/owning-gateway-namespace": o.namespace}}}),
        Target::Selector(sel) => {
            json!({"namespaceSelector": in_namespace(&o.namespace), "podSelector": {"matchLabels": sel}})
        }
    }
}

/// DNS and istiod, then what `--dependency`, `--egress-cidr`, `--egress-namespace` and
/// `--egress-port` allow.
fn egress(o: &Options) -> Vec<Value> {
    let mut egress = vec![
        json!({"to": [{"namespaceSelector": in_namespace("kube-system"), "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
               "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}),
        json!({"to": [{"namespaceSelector": in_namespace("istio-system"), "podSelector": {"matchLabels": {"app": "istiod"}}}],
               "ports": [{"protocol": "TCP", "port": 15012}]}),
    ];
    for dep in &o.network.dependencies {
        egress.push(json!({"to": [{"podSelector": {"matchLabels": dep}}]}));
    }
    for cidr in &o.network.egress_cidrs {
        egress.push(json!({"to": [{"ipBlock": {"cidr": cidr}}]}));
    }
    for ns in &o.network.egress_namespaces {
        egress.push(json!({"to": [{"namespaceSelector": in_namespace(ns)}]}));
    }
    if !o.network.egress_ports.is_empty() {
        let ports: Vec<Value> = o
            .network
            .egress_ports
            .iter()
            .map(|p| json!({"protocol": "TCP", "port": p}))
            .collect();
        egress.push(json!({"ports": ports}));
    }
    egress
}

/// `td`: the mesh's trust domain (`trustDomain`, `--trust-domain`): Istio's principals carry it.
fn authorization_policy(h: &Host, o: &Options, td: &str) -> Doc {
    let principals = if o.principals.is_empty() {
        default_principals(o, td)
    } else {
        o.principals.clone()
    };
    Doc {
        file: format!("authorizationpolicy-{}-{}", h.namespace, h.service),
        comment: format!(
            "mTLS identity check: only these principals may call the `{}` model pods.",
            h.service
        ),
        value: json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": o.meta(&o.object_name(&format!("{}-callers", h.service)), &h.namespace),
            "spec": {"selector": {"matchLabels": o.pods_of(h)}, "action": "ALLOW",
                     "rules": [{"from": [{"source": {"principals": principals}}]}]}}),
    }
}

/// Without `--allow-principal`: the gateway's or waypoint's service account, or any in the
/// callers' namespace.
fn default_principals(o: &Options, td: &str) -> Vec<String> {
    match &o.target {
        Target::Gateway { name, .. } | Target::EnvoyGateway { name, .. } => {
            vec![format!("{td}/ns/{}/sa/{name}-istio", o.namespace)]
        }
        // A waypoint's service account is its own name (Istio's deployment controller, no suffix).
        Target::Waypoint { name, .. } => vec![format!("{td}/ns/{}/sa/{name}", o.namespace)],
        Target::Selector(_) => vec![format!("{td}/ns/{}/sa/*", o.namespace)],
    }
}
