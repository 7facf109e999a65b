//! The proxies' listener buffer limit, raised to `maxBodyBytes` where their default is lower (a
//! body past it is answered 413 by Envoy before the filter sees it whole).

use model_router::config::Config;
use serde_json::json;

use super::filter::{envoy_filter_scope, per_listener};
use super::options::{Options, Target};
use super::{gateway_ref, Doc};

/// Envoy holds a request body the filter reads only up to the connection's buffer limit and
/// answers 413 itself past it: 1 MiB by default, 32 KiB on Envoy Gateway's listeners.
pub const ENVOY_DEFAULT_BUFFER_LIMIT: u64 = 1 << 20;
pub const ENVOY_GATEWAY_BUFFER_LIMIT: u64 = 32 << 10;

/// The listener buffer limit the target's proxies have unless told otherwise.
pub fn default_buffer_limit(target: &Target) -> u64 {
    match target {
        Target::EnvoyGateway { .. } => ENVOY_GATEWAY_BUFFER_LIMIT,
        _ => ENVOY_DEFAULT_BUFFER_LIMIT,
    }
}

/// The listener buffer limit a `maxBodyBytes` needs (Envoy's field is 32-bit).
pub fn listener_buffer_limit(max_body_bytes: u64) -> u64 {
    max_body_bytes.min(u64::from(u32::MAX))
}

/// The listener's buffer limit raised to `maxBodyBytes` where the proxy's default is lower: an
/// EnvoyFilter (LISTENER, MERGE) for Istio's gateways and sidecars over 1 MiB, a
/// ClientTrafficPolicy for Envoy Gateway (whose listeners default to 32 KiB). A waypoint cannot
/// be patched (`wasmpack manifests` warns).
pub(super) fn buffer_limit(config: &Config, o: &Options, ports: &[u16]) -> Option<Doc> {
    if config.max_body_bytes <= default_buffer_limit(&o.target) {
        return None;
    }
    let limit = listener_buffer_limit(config.max_body_bytes);
    let why = format!(
        "The filter reads request bodies up to maxBodyBytes ({}), and Envoy holds a body only up to\n\
         the listener's per-connection buffer limit, answering 413 itself past it.",
        config.max_body_bytes
    );
    match &o.target {
        // The EnvoyPatchPolicy of body routing sets it on the listener it patches.
        Target::EnvoyGateway { .. } if config.body_routing => None,
        Target::EnvoyGateway { name, .. } => Some(client_traffic_policy(o, name, limit, &why)),
        Target::Selector(_) | Target::Gateway { .. } => Some(listener_envoy_filter(o, ports, limit, &why)),
        // Istio applies no EnvoyFilter to a waypoint (`wasmpack manifests` warns).
        Target::Waypoint { .. } => None,
    }
}

/// Envoy Gateway: a ClientTrafficPolicy on the Gateway.
fn client_traffic_policy(o: &Options, gateway: &str, limit: u64, why: &str) -> Doc {
    Doc {
        file: "clienttrafficpolicy-buffer-limit".into(),
        comment: format!(
            "{why}\n\
             Envoy Gateway's listeners default to 32 KiB: this raises the limit of Gateway `{gateway}` to {limit}.\n\
             Envoy Gateway takes one ClientTrafficPolicy per Gateway (the oldest wins): if `{gateway}` has one\n\
             already, set its connection.bufferLimit to {limit} there and render with --skip buffer-limit."
        ),
        value: json!({"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "ClientTrafficPolicy",
            "metadata": o.meta(&o.object_name("buffer-limit"), &o.namespace),
            "spec": {"targetRefs": [gateway_ref(gateway)], "connection": {"bufferLimit": limit}}}),
    }
}

/// Istio (sidecar or gateway): an EnvoyFilter merging the limit into the listeners the filter
/// runs on.
fn listener_envoy_filter(o: &Options, ports: &[u16], limit: u64, why: &str) -> Doc {
    let (context, mut spec) = envoy_filter_scope(&o.target);
    let patch = |port: Option<u16>| {
        let mut m = json!({"context": context});
        if let Some(p) = port {
            m["listener"] = json!({"portNumber": p});
        }
        json!({"applyTo": "LISTENER", "match": m,
               "patch": {"operation": "MERGE", "value": {"per_connection_buffer_limit_bytes": limit}}})
    };
    spec["configPatches"] = per_listener(context, ports, patch);
    Doc {
        file: "envoyfilter-buffer-limit".into(),
        comment: format!(
            "{why}\n\
             Istio leaves Envoy's default of 1 MiB: this raises it to {limit} on the listeners the filter\n\
             runs on."
        ),
        value: json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
            "metadata": o.meta(&o.object_name("buffer-limit"), &o.namespace), "spec": spec}),
    }
}
