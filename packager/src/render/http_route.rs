//! Gateway API routing by the header the filter sets: HTTPRoutes at a gateway (one per namespace
//! of backends, with Envoy Gateway's catch-all answered by an HTTPRouteFilter), and the mesh
//! (GAMMA) HTTPRoute of the Service clients call through a waypoint.

use std::collections::BTreeMap;

use model_router::config::Config;
use serde_json::{json, Value};

use super::external::EXTERNAL_HTTP_PORT;
use super::names::service_of;
use super::options::{Options, Target};
use super::plan::{Host, Plan};
use super::{gateway_ref, Doc};

/// A Gateway API backendRef: the Service, or an external provider's ServiceEntry host
/// (`networking.istio.io` `Hostname`, istio/istio pilot/pkg/config/kube/gateway/conversion.go).
fn backend_ref(h: &Host) -> Value {
    if h.external {
        json!({"group": "networking.istio.io", "kind": "Hostname", "name": h.host, "port": EXTERNAL_HTTP_PORT})
    } else {
        json!({"name": h.service, "port": h.port.unwrap_or(80)})
    }
}

/// The routes of a gateway: one per namespace of backends, next to them (Gateway API's
/// cross-namespace attachment: no ReferenceGrant needed); inference pools in the install
/// namespace. On Envoy Gateway, the answer of the catch-all rule first.
pub(super) fn gateway_routes(
    config: &Config,
    o: &Options,
    plan: &Plan,
    gateway: &str,
    hostnames: &[String],
) -> Vec<Doc> {
    let mut docs = Vec::new();
    let mut by_ns = backends_by_namespace(o, plan);
    if matches!(o.target, Target::EnvoyGateway { .. }) {
        // Envoy Gateway runs the filter only on a route that matched: one must match
        // first. That catch-all answers what the filter did not route itself (never a
        // model's backend, which would take every other model's unrouted requests).
        let filter = json!(unrouted_filter_name(o));
        by_ns.entry(o.namespace.as_str()).or_default().push(("", filter));
        docs.push(unrouted_filter(o));
    }
    for (ns, rules) in by_ns {
        docs.push(http_route(config, &rules, o, gateway, hostnames, ns));
    }
    docs
}

/// (destination, backendRef) by the namespace of the route that sends to it.
fn backends_by_namespace<'a>(o: &'a Options, plan: &'a Plan) -> BTreeMap<&'a str, Vec<(&'a str, Value)>> {
    let mut by_ns: BTreeMap<&str, Vec<(&str, Value)>> = BTreeMap::new();
    for h in &plan.hosts {
        for (d, _) in &h.routes {
            by_ns.entry(h.namespace.as_str()).or_default().push((d, backend_ref(h)));
        }
    }
    for (d, pool) in &plan.pools {
        let backend = json!({"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": pool});
        by_ns.entry(o.namespace.as_str()).or_default().push((d, backend));
    }
    by_ns
}

/// A mesh (GAMMA) HTTPRoute on the Service clients call through a waypoint: by the filter's
/// header to each destination's Service, anything else to the Service itself.
pub(super) fn mesh_route(
    config: &Config,
    hosts: &[Host],
    o: &Options,
    waypoint: &str,
    service: &str,
    port: u16,
) -> Doc {
    let header = &config.route_header;
    let (svc, ns) = service_of(service, &o.namespace).unwrap_or_else(|_| (service.to_string(), o.namespace.clone()));
    let mut rules: Vec<Value> = Vec::new();
    for h in hosts {
        for (d, _) in &h.routes {
            rules.push(header_rule(header, d, backend_ref(h)));
        }
    }
    rules.push(json!({"backendRefs": [{"name": svc, "port": port}]}));
    Doc {
        file: format!("httproute-{ns}-{svc}"),
        comment: format!(
            "Mesh route (Gateway API GAMMA) of `{service}` at waypoint `{waypoint}`: by the `{header}` header\n\
             the filter sets to each destination's Service; what it did not route goes to `{svc}` itself.\n\
             Enrol the Service (or its namespace) to the waypoint, in an ambient namespace:\n\
             \x20 kubectl label namespace {ns} istio.io/dataplane-mode=ambient\n\
             \x20 kubectl label service {svc} -n {ns} istio.io/use-waypoint={waypoint}{}",
            if ns == o.namespace {
                String::new()
            } else {
                format!(" istio.io/use-waypoint-namespace={}", o.namespace)
            }
        ),
        value: json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": o.meta(&o.object_name(&format!("{svc}-routes")), &ns),
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": svc, "port": port}], "rules": rules}}),
    }
}

/// Requests the filter sent to destination `d` go to `backend`, by its header; a provider
/// answers for its own host name only.
fn header_rule(header: &str, d: &str, backend: Value) -> Value {
    let hostname = (backend["kind"] == "Hostname").then(|| backend["name"].clone());
    let mut rule = json!({
        "matches": [{"headers": [{"type": "Exact", "name": header, "value": d}]}],
        "backendRefs": [backend]
    });
    if let Some(hostname) = hostname {
        rule["filters"] = json!([{"type": "URLRewrite", "urlRewrite": {"hostname": hostname}}]);
    }
    rule
}

fn unrouted_filter_name(o: &Options) -> String {
    o.object_name("unrouted")
}

/// The answer of the Envoy Gateway catch-all rule: requests the filter did not route (no model,
/// or a body model with bodyRouting off) get a clear 404, never a model's backend.
fn unrouted_filter(o: &Options) -> Doc {
    let body = json!({"error": {
        "message": "no model route took this request: name a model this gateway serves (GET /v1/models lists them)",
        "type": "invalid_request_error",
        "param": null,
        "code": "no_route"}});
    Doc {
        file: "httproutefilter-unrouted".into(),
        comment: "The answer of the HTTPRoute's catch-all rule (Envoy Gateway's direct response): a request the\n\
                  filter did not route to a destination gets 404 `no_route`, never one model's backend."
            .into(),
        value: json!({"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "HTTPRouteFilter",
            "metadata": o.meta(&unrouted_filter_name(o), &o.namespace),
            "spec": {"directResponse": {"contentType": "application/json", "statusCode": 404,
                     "body": {"type": "Inline", "inline": body.to_string()}}}}),
    }
}

/// The HTTPRoute in namespace `ns` of the gateway: a rule per (destination, backend), the
/// catch-all (destination `""`) answered by the HTTPRouteFilter.
fn http_route(
    config: &Config,
    backends: &[(&str, Value)],
    o: &Options,
    gateway: &str,
    hostnames: &[String],
    ns: &str,
) -> Doc {
    let header = &config.route_header;
    let rules = rules(header, backends);
    let catch_all = backends.iter().any(|(d, _)| d.is_empty());
    let mut parent = gateway_ref(gateway);
    let mut cross = String::new();
    if ns != o.namespace {
        parent["namespace"] = json!(o.namespace);
        cross = format!(
            "\nIt lives next to its Services in `{ns}` and attaches to the gateway in `{}`: the gateway's\n\
             listener must allow routes from `{ns}` (allowedRoutes.namespaces).",
            o.namespace
        );
    }
    Doc {
        file: format!("httproute-{ns}"),
        comment: format!(
            "Routes requests for {} at gateway `{gateway}` by the `{header}` header the filter sets.\n{}{cross}",
            hostnames.join(", "),
            if catch_all {
                "The last rule catches the rest (Envoy Gateway runs the filter only on a matched route): what\n\
                 the filter did not route is answered 404 `no_route` (HTTPRouteFilter), never sent to a model."
            } else {
                "There is no catch-all: a request the filter did not route matches no rule of this route\n\
                 (the gateway answers 404), and other traffic of a shared gateway is left to its own routes."
            }
        ),
        value: json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": o.meta(&o.object_name("routes"), ns),
            "spec": {"parentRefs": [parent], "hostnames": hostnames, "rules": rules}}),
    }
}

/// A header rule per (destination, backend); the catch-all (destination `""`, Envoy Gateway)
/// answered by the HTTPRouteFilter named by its backend.
fn rules(header: &str, backends: &[(&str, Value)]) -> Vec<Value> {
    backends
        .iter()
        .map(|(d, backend)| {
            if d.is_empty() {
                // The catch-all rule (Envoy Gateway): every request of these hosts matches a route,
                // and what the filter did not route gets the HTTPRouteFilter's answer.
                return json!({"filters": [{"type": "ExtensionRef", "extensionRef":
                    {"group": "gateway.envoyproxy.io", "kind": "HTTPRouteFilter", "name": backend}}]});
            }
            header_rule(header, d, backend.clone())
        })
        .collect()
}
