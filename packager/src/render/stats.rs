//! Exporting the filter's metrics from the proxies it runs in: Istio's stats pod annotations
//! (which stats, their labels, the histogram buckets), and a kustomize Component that adds them.

use std::collections::BTreeMap;

use model_router::telemetry::{DURATION_BUCKETS_MS, LABEL_KEYS, TTFT_BUCKETS_MS};
use serde_json::{json, Value};

use super::options::{Options, Target};

/// The histogram buckets Istio's annotation takes: one list for every `wasmcustom` stat (it
/// matches by stat-name prefix, and the labels come first in the name), so the union of the
/// request-duration and TTFT buckets (docs/telemetry.md).
pub fn istio_buckets() -> Vec<u64> {
    let mut buckets: Vec<u64> = DURATION_BUCKETS_MS.iter().chain(TTFT_BUCKETS_MS).copied().collect();
    buckets.sort_unstable();
    buckets.dedup();
    buckets
}

/// The pod annotations that export the filter's metrics from the proxies it runs in: Istio's
/// per-setting annotations (comma-separated lists, istio/istio pkg/bootstrap), which add to the
/// pod's `proxy.istio.io/config` instead of replacing it (a Deployment's own proxy settings, such
/// as `holdApplicationUntilProxyStarts`, stay).
pub fn stats_annotations() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "sidecar.istio.io/statsInclusionRegexps".to_string(),
            ".*model_router_.*".to_string(),
        ),
        ("sidecar.istio.io/extraStatTags".to_string(), LABEL_KEYS.join(",")),
        (
            "sidecar.istio.io/statsHistogramBuckets".to_string(),
            json!({ "wasmcustom": istio_buckets() }).to_string(),
        ),
    ])
}

/// The stats annotations as a YAML `annotations:` block (for a comment a user can paste).
pub fn stats_annotations_yaml() -> String {
    let v = json!({"annotations": stats_annotations()});
    crate::yaml::to_string(&v).unwrap_or_default()
}

/// A kustomize Component that adds the stats annotations where the filter runs: to the callers'
/// Deployments (include it in the kustomization that has them), or, at a gateway, to the Gateway's
/// `spec.infrastructure.annotations`, which Istio copies to the gateway's pods.
pub fn stats_component(o: &Options) -> Value {
    let annotations = stats_annotations();
    let (target, patch) = match &o.target {
        Target::Selector(sel) => (
            json!({"kind": "Deployment", "labelSelector": sel.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "any"},
                   "spec": {"template": {"metadata": {"annotations": annotations}}}}),
        ),
        Target::Gateway { name, .. } | Target::Waypoint { name, .. } | Target::EnvoyGateway { name, .. } => (
            json!({"kind": "Gateway", "name": name}),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": name},
                   "spec": {"infrastructure": {"annotations": annotations}}}),
        ),
    };
    json!({
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "patches": [{"target": target, "patch": crate::yaml::to_string(&patch).unwrap_or_default()}]
    })
}
