//! Renders the installation of the filter and the resources that go with it, as data. No I/O:
//! the image digest is resolved by the caller. `plan` checks everything that spans resources
//! (names, namespaces, what a mode can express) first; `render` cannot fail after it.
//!
//! One module per job, composed by `render` in apply order:
//!
//! | module | job |
//! |---|---|
//! | `options` | what to render: where the filter runs (`Target`), the parts, the object names |
//! | `names` | DNS labels, and what a destination's `host` names (a Service, or an external provider) |
//! | `plan` | the Services, workloads and inference pools to render for, every problem at once |
//! | `filter` | the filter: WasmPlugin / TrafficExtension, EnvoyFilter pair (ECDS), EnvoyExtensionPolicy + EnvoyPatchPolicy |
//! | `buffer_limit` | the listener buffer limit raised to `maxBodyBytes` (EnvoyFilter, ClientTrafficPolicy) |
//! | `routing` | the routes of the mode; in sidecars a VirtualService and a DestinationRule per model Service |
//! | `http_route` | Gateway API routes: a gateway's HTTPRoutes, a waypoint's mesh HTTPRoute |
//! | `scaling` | HorizontalPodAutoscalers on the in-flight gauge, and the prometheus-adapter rule |
//! | `access` | NetworkPolicy and AuthorizationPolicy of the model pods |
//! | `external` | an external provider's ServiceEntry and TLS-originating DestinationRule |
//! | `rate_limits` | Limitador's limits file, and the rate limit service's ServiceEntry |
//! | `stats` | the stats pod annotations and the kustomize Component that adds them |

mod access;
mod buffer_limit;
mod external;
mod filter;
mod http_route;
mod names;
mod options;
mod plan;
mod rate_limits;
mod routing;
mod scaling;
mod stats;
#[cfg(test)]
mod tests;

use model_router::config::Config;
use serde_json::{json, Value};

pub use buffer_limit::{
    default_buffer_limit, listener_buffer_limit, ENVOY_DEFAULT_BUFFER_LIMIT, ENVOY_GATEWAY_BUFFER_LIMIT,
};
pub use external::EXTERNAL_HTTP_PORT;
pub use filter::{envoy_gateway_listener_name, envoy_gateway_wasm_filter_name, extension_config};
pub use names::{dns_label, is_dns_label};
pub use options::{FilterApi, Network, Options, Part, Target};
pub use plan::{body_models_unrouted, plan, Host, Plan, Problem};
pub use stats::{istio_buckets, stats_annotations, stats_annotations_yaml, stats_component};

pub const FILTER_NAME: &str = "model-router";
pub const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// The label that ties every object to its installation (the inventory's selector).
pub const INSTALLATION_LABEL: &str = "wasmpack.model-router.io/installation";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "wasmpack");

/// One rendered resource: a file stem, a comment explaining it, and the object.
#[derive(Debug, Clone)]
pub struct Doc {
    pub file: String,
    pub comment: String,
    pub value: Value,
}

/// Every document, in apply order. `plan` must have accepted the configuration and options.
pub fn render(config_json: &Value, config: &Config, o: &Options, plan: &Plan) -> Vec<Doc> {
    let ports = model_ports(config);
    let mut docs = Vec::new();
    if o.wants(Part::Filter) {
        docs.extend(filter::docs(config_json, config, o, &ports));
    }
    if o.wants(Part::BufferLimit) {
        docs.extend(buffer_limit::buffer_limit(config, o, &ports));
    }
    docs.extend(routing::docs(config, o, plan));
    docs.extend(scaling::docs(o, plan));
    docs.extend(access::docs(config, o, plan));
    if o.wants(Part::External) {
        for h in plan.hosts.iter().filter(|h| h.external) {
            docs.extend(external::external_provider(h, o));
        }
    }
    if let (true, Some(rl)) = (o.wants(Part::RateLimits), &plan.rate_limit) {
        docs.extend(rate_limits::docs(config, o, rl));
    }
    docs
}

/// The Service ports the models are served on, when every destination names its port: in a
/// sidecar, the filter then runs only on outbound traffic to those ports, not on every call the
/// pod makes (its `scope` still decides within them).
fn model_ports(config: &Config) -> Vec<u16> {
    let mut ports = Vec::new();
    for d in config.models.iter().flat_map(|m| &m.destinations) {
        // An external provider is called on the mesh's plain-HTTP port, not its TLS port.
        let port = match &d.host {
            Some(h) if names::external_host(h) => Some(EXTERNAL_HTTP_PORT),
            _ => d.port,
        };
        match port {
            Some(p) if !ports.contains(&p) => ports.push(p),
            Some(_) => {}
            None => return Vec::new(),
        }
    }
    ports.sort_unstable();
    ports
}

/// A Gateway API parent or target reference to the Gateway `name`.
fn gateway_ref(name: &str) -> Value {
    json!({"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": name})
}

/// kustomization.yaml for the rendered files.
pub fn kustomization(docs: &[Doc]) -> Value {
    json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": docs.iter().map(|d| format!("{}.yaml", d.file)).collect::<Vec<_>>(),
    })
}
