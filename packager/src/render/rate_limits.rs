//! Global limits: Limitador's limits file for the filter's `mode: global` limits, and a
//! ServiceEntry for a rate limit service outside the cluster.

use model_router::config::Config;
use serde_json::json;

use super::options::Options;
use super::Doc;

/// Limitador's limits file (a ConfigMap next to Limitador), and a ServiceEntry when the service
/// is outside the cluster.
pub(super) fn docs(config: &Config, o: &Options, (host, port, ns): &(String, u16, Option<String>)) -> Vec<Doc> {
    let mut docs = Vec::new();
    let limits = crate::limitador::limits(config);
    if !limits.is_empty() {
        let ns = ns.clone().unwrap_or_else(|| o.namespace.clone());
        let envoy = crate::limitador::envoy_ratelimit_yaml(config);
        docs.push(Doc {
            file: "limitador-limits".into(),
            comment: format!(
                "Limitador's limits for the filter's `mode: global` limits (namespace = rateLimitService.domain).\n\
                 Mount it as Limitador's LIMITS_FILE (it reloads on change): limitador-server /etc/limitador/limits.yaml redis redis://...\n\
                 The same request limits for envoyproxy/ratelimit (token limits need Limitador's CheckRateLimit/Report):\n{}",
                envoy.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
            ),
            value: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": o.meta(&o.object_name("limitador-limits"), &ns),
                "data": {"limits.yaml": crate::limitador::limits_yaml(config)}}),
        });
    }
    if ns.is_none() {
        docs.push(Doc {
            file: "rate-limit-service-entry".into(),
            comment: format!(
                "The rate limit service is outside the mesh: this ServiceEntry gives the proxies the cluster\n\
                 `outbound|{port}||{host}` that rateLimitService.cluster names (gRPC, so HTTP/2)."
            ),
            value: json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                "metadata": o.meta(&o.object_name("rate-limit-service"), &o.namespace),
                "spec": {"hosts": [host], "location": "MESH_EXTERNAL", "resolution": "DNS",
                         "ports": [{"number": port, "name": "grpc", "protocol": "GRPC"}]}}),
        });
    }
    docs
}
