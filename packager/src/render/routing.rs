//! Routing by the header the filter sets. This module picks the routes of the install mode; in
//! a sidecar they are Istio's: a VirtualService per model host (header rules to every destination
//! its callers may be sent to) and a DestinationRule of its subsets (with outlier detection under
//! failover). Gateways and waypoints route with Gateway API HTTPRoutes (`http_route`).

use model_router::config::{Config, Destination, Failover, Model};
use serde_json::{json, Value};

use super::external::EXTERNAL_HTTP_PORT;
use super::http_route;
use super::options::{Options, Part, Target};
use super::plan::{Host, Plan};
use super::Doc;

/// The routes of the install mode.
pub(super) fn docs(config: &Config, o: &Options, plan: &Plan) -> Vec<Doc> {
    match &o.target {
        Target::Selector(_) => sidecar_routes(config, o, &plan.hosts),
        _ if !o.wants(Part::HttpRoute) => Vec::new(),
        Target::Waypoint { service, port, name } => {
            vec![http_route::mesh_route(config, &plan.hosts, o, name, service, *port)]
        }
        Target::Gateway { name, hostnames, .. } | Target::EnvoyGateway { name, hostnames, .. } => {
            http_route::gateway_routes(config, o, plan, name, hostnames)
        }
    }
}

/// In the callers' sidecars: the DestinationRules of the model Services, then their
/// VirtualServices.
fn sidecar_routes(config: &Config, o: &Options, hosts: &[Host]) -> Vec<Doc> {
    let mut docs = Vec::new();
    if o.wants(Part::DestinationRule) {
        let failover = config.failover.as_ref();
        docs.extend(
            hosts
                .iter()
                .filter(|h| !h.external)
                .map(|h| destination_rule(h, o, failover)),
        );
    }
    if o.wants(Part::VirtualService) {
        docs.extend(hosts.iter().map(|h| virtual_service(config, h, hosts, o)));
    }
    docs
}

fn subset_key(h: &Host, o: &Options) -> String {
    o.subset_labels
        .get(&h.host)
        .cloned()
        .unwrap_or_else(|| "version".to_string())
}

fn destination_rule(h: &Host, o: &Options, failover: Option<&Failover>) -> Doc {
    let key = subset_key(h, o);
    let pods = o.pods_of(h);
    let mut subsets: Vec<Value> = Vec::new();
    for s in h.routes.iter().filter_map(|(_, s)| s.as_ref()) {
        if !subsets.iter().any(|x| x["name"] == json!(s)) {
            let mut labels = pods.clone();
            labels.insert(key.clone(), s.clone());
            subsets.push(json!({"name": s, "labels": labels}));
        }
    }
    let mut spec = json!({"host": h.host, "subsets": subsets});
    let mut comment = format!("Subsets of {} by pod label `{key}`.", h.host);
    if let Some(f) = failover {
        // Endpoint-level health inside each destination, complementary to the filter's
        // destination-level failover (docs/failover.md).
        spec["trafficPolicy"] = outlier_detection(f);
        comment.push_str(
            "\noutlierDetection ejects single failing pods (endpoints) of a destination; the filter's\n\
             failover takes a whole destination out of rotation (docs/failover.md).",
        );
    }
    Doc {
        file: format!("destinationrule-{}-{}", h.namespace, h.service),
        comment,
        value: json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": o.meta(&o.object_name(&h.service), &h.namespace), "spec": spec}),
    }
}

/// Istio's `outlierDetection` from the filter's `failover` thresholds.
fn outlier_detection(f: &Failover) -> Value {
    let secs = |ms: u32| format!("{}s", ms.div_ceil(1000).max(1));
    json!({"outlierDetection": {
        "consecutive5xxErrors": f.threshold,
        "interval": "10s",
        "baseEjectionTime": secs(f.probation_ms),
        "maxEjectionPercent": 50
    }})
}

/// The models whose destinations a request for a model of `served` may be sent to: those
/// models and, with failover, their fallbacks' models.
fn reachable_models(config: &Config, served: impl Fn(&Model) -> bool) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for (i, m) in config.models.iter().enumerate().filter(|(_, m)| served(m)) {
        let fallbacks = m
            .fallbacks
            .iter()
            .chain(m.destinations.iter().flat_map(|d| d.fallbacks.iter()));
        for j in std::iter::once(i).chain(fallbacks.map(|f| f.model)) {
            if !out.contains(&j) {
                out.push(j);
            }
        }
    }
    out.sort_unstable();
    out
}

fn route_destination(h: &Host, subset: Option<&String>) -> Value {
    let mut d = json!({"host": h.host});
    if let Some(s) = subset {
        d["subset"] = json!(s);
    }
    if h.external {
        d["port"] = json!({"number": EXTERNAL_HTTP_PORT});
    } else if let Some(p) = h.port {
        d["port"] = json!({"number": p});
    }
    d
}

fn virtual_service(config: &Config, h: &Host, hosts: &[Host], o: &Options) -> Doc {
    let header = &config.route_header;
    let mut http = header_rules(config, h, hosts);
    // The caller asked for this host; what the filter did not route still goes to it.
    http.push(json!({"name": "unrouted", "route": [{"destination": route_destination(h, None)}]}));
    Doc {
        file: format!("virtualservice-{}-{}", h.namespace, h.service),
        comment: format!(
            "Routes calls to {} by the `{header}` header the filter sets (the weighted, sticky split is\n\
             the filter's, to any destination of the models this host serves); calls it did not route go to\n\
             {} as a whole.",
            h.host, h.host
        ),
        value: json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": o.meta(&o.object_name(&h.service), &h.namespace), "spec": {"hosts": [h.host], "http": http}}),
    }
}

/// A rule for every destination of every model host `h` serves (and of their fallbacks' models):
/// the filter may pick one on another host.
fn header_rules(config: &Config, h: &Host, hosts: &[Host]) -> Vec<Value> {
    let mut http: Vec<Value> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    let served = |m: &Model| {
        m.destinations
            .iter()
            .any(|d| d.host.as_deref() == Some(h.host.as_str()))
    };
    for m in reachable_models(config, served).into_iter().map(|i| &config.models[i]) {
        for d in &m.destinations {
            let Some(target) = d.host.as_ref().and_then(|x| hosts.iter().find(|y| &y.host == x)) else {
                continue;
            };
            if seen.contains(&d.name.as_str()) {
                continue;
            }
            seen.push(&d.name);
            http.push(header_rule(config, h, d, target));
        }
    }
    http
}

/// Requests the filter sent to destination `d` (on `target`) go there, by its header: a
/// provider's host name set when the caller called another host, retried under failover.
fn header_rule(config: &Config, h: &Host, d: &Destination, target: &Host) -> Value {
    let header = &config.route_header;
    let mut rule = json!({"name": d.name, "match": [{"headers": {header.as_str(): {"exact": d.name}}}],
                          "route": [{"destination": route_destination(target, d.subset.as_ref())}]});
    if target.external && target.host != h.host {
        rule["rewrite"] = json!({"authority": target.host});
    }
    if config.failover.is_some() {
        // A request that never reached a backend is safe to send again.
        rule["retries"] = json!({"attempts": 2, "retryOn": "connect-failure,refused-stream"});
    }
    rule
}
