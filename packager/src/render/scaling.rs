//! Scaling the model workloads on the filter's in-flight requests: a HorizontalPodAutoscaler per
//! destination served by a Service of the cluster, and the prometheus-adapter rule that serves
//! the in-flight gauge as an External metric.

use model_router::telemetry::IN_FLIGHT;
use serde_json::json;

use super::options::{Options, Part};
use super::plan::{Dest, Host, Plan};
use super::Doc;

/// The HPAs (none for external providers or inference pools), then the adapter rules.
pub(super) fn docs(o: &Options, plan: &Plan) -> Vec<Doc> {
    let mut docs = Vec::new();
    if o.wants(Part::Hpa) {
        for d in plan.dests.iter() {
            if let Some(h) = d.host.and_then(|k| plan.hosts.get(k)).filter(|h| !h.external) {
                docs.push(hpa(d, h, o));
            }
        }
    }
    if o.wants(Part::AdapterRules) {
        docs.push(adapter_rules(o));
    }
    docs
}

fn hpa(d: &Dest, h: &Host, o: &Options) -> Doc {
    let workload = o.workload(&d.name);
    Doc {
        file: format!("hpa-{}-{workload}", h.namespace),
        comment: format!(
            "Scales {workload} (destination {}, model {}) on the filter's in-flight requests\n\
             (an External metric served by prometheus-adapter, rule below), with CPU as the fallback.\n\
             Skip it (--skip hpa) where the platform autoscales already (KServe, KEDA).",
            d.name,
            d.models.join(", ")
        ),
        value: json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": o.meta(&o.object_name(&workload), &h.namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": workload},
            "minReplicas": o.min_replicas,
            "maxReplicas": o.max_replicas,
            "metrics": [
                {"type": "External", "external": {
                    "metric": {"name": IN_FLIGHT, "selector": {"matchLabels": {"destination": d.name}}},
                    "target": {"type": "AverageValue", "averageValue": o.max_in_flight.to_string()}}},
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}
            ]
        }}),
    }
}

fn adapter_rules(o: &Options) -> Doc {
    let rules = format!(
        "externalRules:\n\
         - seriesQuery: '{IN_FLIGHT}{{destination!=\"\"}}'\n\
         \x20 resources:\n\
         \x20   namespaced: false\n\
         \x20 name:\n\
         \x20   as: {IN_FLIGHT}\n\
         \x20 metricsQuery: 'sum(<<.Series>>{{<<.LabelMatchers>>}}) by (destination)'\n"
    );
    Doc {
        file: "prometheus-adapter-rules".into(),
        comment: "prometheus-adapter rule serving the in-flight gauge (summed over every proxy that routes)\n\
                  as an External metric; merge it into your adapter's config."
            .into(),
        value: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": o.meta(&o.object_name("adapter-rules"), &o.namespace),
            "data": {"config.yaml": rules}}),
    }
}
