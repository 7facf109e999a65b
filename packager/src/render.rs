//! Renders the Istio installation of the filter and the resources that go with it, as data.
//! No I/O: the image digest is resolved by the caller.

use std::collections::BTreeMap;

use model_router::config::Config;
use model_router::telemetry::{DURATION_BUCKETS_MS, IN_FLIGHT, LABEL_KEYS, TTFT_BUCKETS_MS};
use serde_json::{json, Value};

pub const FILTER_NAME: &str = "model-router";
pub const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// Where the filter runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Sidecars of the pods with these labels (the callers of the models): outbound traffic.
    Selector(BTreeMap<String, String>),
    /// A Gateway API gateway (deployed by Istio) of this name.
    Gateway(String),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub namespace: String,
    pub target: Target,
    /// `registry/repository` of the image.
    pub repository: String,
    /// `sha256:<hex>` of the image manifest.
    pub digest: String,
    pub fail_open: bool,
    pub phase: String,
    pub priority: Option<i32>,
    pub pull_secret: Option<String>,
    /// Destination name -> Deployment name (default: the destination name).
    pub workloads: BTreeMap<String, String>,
    pub max_in_flight: u32,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// SPIFFE principals allowed to call the model pods (default: the gateway, or the namespace).
    pub principals: Vec<String>,
    /// Pod selectors the model pods may reach besides DNS and istiod.
    pub dependencies: Vec<BTreeMap<String, String>>,
}

/// One rendered resource: a file stem, a comment explaining it, and the object.
#[derive(Debug, Clone)]
pub struct Doc {
    pub file: String,
    pub comment: String,
    pub value: Value,
}

/// A model-serving Service named by the destinations' `host`.
#[derive(Debug, Clone)]
struct Host {
    host: String,
    /// The Service's name (first label of the host): its pods are expected to carry `app: <name>`.
    service: String,
    port: Option<u16>,
    /// (destination, subset) in config order.
    routes: Vec<(String, Option<String>)>,
}

fn hosts(config: &Config) -> Vec<Host> {
    let mut out: Vec<Host> = Vec::new();
    for m in &config.models {
        for d in &m.destinations {
            let Some(host) = &d.host else { continue };
            let i = match out.iter().position(|h| &h.host == host) {
                Some(i) => i,
                None => {
                    out.push(Host {
                        host: host.clone(),
                        service: host.split('.').next().unwrap_or(host).to_string(),
                        port: None,
                        routes: Vec::new(),
                    });
                    out.len() - 1
                }
            };
            let h = &mut out[i];
            h.port = h.port.or(d.port);
            if !h.routes.iter().any(|(n, _)| n == &d.name) {
                h.routes.push((d.name.clone(), d.subset.clone()));
            }
        }
    }
    out
}

fn labels(map: &BTreeMap<String, String>) -> Value {
    json!(map)
}

fn meta(name: &str, ns: &str) -> Value {
    json!({"name": name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "wasmpack", "app.kubernetes.io/part-of": FILTER_NAME}})
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Every document, in apply order.
pub fn render(config_json: &Value, config: &Config, o: &Options) -> Vec<Doc> {
    let mut docs = Vec::new();
    let url = format!("oci://{}@{}", o.repository, o.digest);
    let ports = model_ports(config);
    if config.body_routing {
        docs.extend(envoy_filters(config_json, o, &url, &ports));
    } else {
        docs.push(wasm_plugin(config_json, o, &url, &ports));
    }
    let hs = hosts(config);
    for h in &hs {
        docs.push(destination_rule(h, o));
    }
    docs.extend(virtual_services(config, &hs, o));
    for m in &config.models {
        for d in m.destinations.iter().filter(|d| d.host.is_some()) {
            docs.push(hpa(&m.name, &d.name, o));
        }
    }
    docs.push(adapter_rules(o));
    for h in &hs {
        docs.push(network_policy(h, o));
        docs.push(authorization_policy(h, o));
    }
    docs
}

/// The Service ports the models are served on, when every destination names its port: in a
/// sidecar, the filter then runs only on outbound traffic to those ports, not on every call the
/// pod makes (its `scope` still decides within them).
fn model_ports(config: &Config) -> Vec<u16> {
    let mut ports = Vec::new();
    for d in config.models.iter().flat_map(|m| &m.destinations) {
        match d.port {
            Some(p) if !ports.contains(&p) => ports.push(p),
            Some(_) => {}
            None => return Vec::new(),
        }
    }
    ports.sort_unstable();
    ports
}

fn wasm_plugin(config_json: &Value, o: &Options, url: &str, ports: &[u16]) -> Doc {
    let mut spec = json!({
        "url": url,
        "sha256": hex(&o.digest),
        "imagePullPolicy": "IfNotPresent",
        "phase": o.phase,
        "failStrategy": if o.fail_open { "FAIL_OPEN" } else { "FAIL_CLOSE" },
        "pluginConfig": config_json,
    });
    match &o.target {
        Target::Selector(sel) => {
            spec["selector"] = json!({"matchLabels": labels(sel)});
            // Routing happens on the caller's side, where the VirtualService is applied.
            spec["match"] = if ports.is_empty() {
                json!([{"mode": "CLIENT"}])
            } else {
                let ports: Vec<Value> = ports.iter().map(|p| json!({"number": p})).collect();
                json!([{"mode": "CLIENT", "ports": ports}])
            };
        }
        Target::Gateway(name) => {
            spec["targetRefs"] = json!([{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": name}]);
        }
    }
    if let Some(p) = o.priority {
        spec["priority"] = json!(p);
    }
    if let Some(s) = &o.pull_secret {
        spec["imagePullSecret"] = json!(s);
    }
    Doc {
        file: "wasmplugin".into(),
        comment: format!(
            "The filter, pinned to the image manifest digest {}. Without bodyRouting a plain WasmPlugin\n\
             is enough: path models are routed, body models drive rejection, rewriting and telemetry.",
            o.digest
        ),
        value: json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "metadata": meta(FILTER_NAME, &o.namespace), "spec": spec}),
    }
}

/// The Wasm filter config for ECDS (also what `envoy --mode validate` checks, with a local module).
pub fn extension_config(config_json: &Value, o: &Options, url: &str) -> Value {
    json!({
        "name": format!("{}.{FILTER_NAME}", o.namespace),
        "typed_config": {
            "@type": WASM_TYPE_URL,
            "config": {
                "name": FILTER_NAME,
                // Lets the filter hold request headers until the body names the model.
                "allow_on_headers_stop_iteration": true,
                "fail_open": o.fail_open,
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config_json.to_string()},
                "vm_config": {
                    "vm_id": FILTER_NAME,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"remote": {"http_uri": {"uri": url, "timeout": "30s"}, "sha256": hex(&o.digest)}}
                }
            }
        }
    })
}

fn envoy_filters(config_json: &Value, o: &Options, url: &str, ports: &[u16]) -> Vec<Doc> {
    let ext = extension_config(config_json, o, url);
    let name = ext["name"].clone();
    let (context, scope) = match &o.target {
        Target::Selector(sel) => ("SIDECAR_OUTBOUND", json!({"workloadSelector": {"labels": labels(sel)}})),
        Target::Gateway(g) => (
            "GATEWAY",
            json!({"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": g}]}),
        ),
    };
    let mut ext_spec = scope.clone();
    ext_spec["configPatches"] = json!([{"applyTo": "EXTENSION_CONFIG", "patch": {"operation": "ADD", "value": ext}}]);
    let mut filter_spec = scope;
    let patch = |port: Option<u16>| {
        let mut listener = json!({"filterChain": {"filter": {
            "name": "envoy.filters.network.http_connection_manager",
            "subFilter": {"name": "envoy.filters.http.router"}}}});
        if let Some(p) = port {
            listener["portNumber"] = json!(p);
        }
        json!({
            "applyTo": "HTTP_FILTER",
            "match": {"context": context, "listener": listener},
            "patch": {"operation": "INSERT_BEFORE", "value": {
                "name": name,
                "config_discovery": {
                    "config_source": {"ads": {}, "initial_fetch_timeout": "0s"},
                    "type_urls": [WASM_TYPE_URL]
                }
            }}
        })
    };
    // In a sidecar, only the outbound listeners of the models' ports (when all are known).
    filter_spec["configPatches"] = if context == "SIDECAR_OUTBOUND" && !ports.is_empty() {
        Value::Array(ports.iter().map(|p| patch(Some(*p))).collect())
    } else {
        json!([patch(None)])
    };
    if let Some(p) = o.priority {
        filter_spec["priority"] = json!(p);
    }
    vec![
        Doc {
            file: "envoyfilter-extension".into(),
            comment: "bodyRouting needs allow_on_headers_stop_iteration, which a WasmPlugin cannot set, and an\n\
                      EnvoyFilter cannot MERGE into the config Istio generates for one. So the filter is added as\n\
                      its own extension config (ECDS); istio-agent fetches the oci:// module and checks its sha256."
                .into(),
            value: json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
                "metadata": meta(&format!("{FILTER_NAME}-extension"), &o.namespace), "spec": ext_spec}),
        },
        Doc {
            file: "envoyfilter-http-filter".into(),
            comment: "Inserts the filter before the router, pointing at the extension config above.".into(),
            value: json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
                "metadata": meta(FILTER_NAME, &o.namespace), "spec": filter_spec}),
        },
    ]
}

fn destination_rule(h: &Host, o: &Options) -> Doc {
    let subsets: Vec<Value> = h
        .routes
        .iter()
        .filter_map(|(_, s)| s.as_ref())
        .fold(Vec::<String>::new(), |mut acc, s| {
            if !acc.contains(s) {
                acc.push(s.clone());
            }
            acc
        })
        .into_iter()
        .map(|s| json!({"name": s, "labels": {"version": s}}))
        .collect();
    Doc {
        file: format!("destinationrule-{}", h.service),
        comment: format!("Subsets of {} by pod label `version`.", h.host),
        value: json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": meta(&h.service, &o.namespace), "spec": {"host": h.host, "subsets": subsets}}),
    }
}

fn route_destination(h: &Host, subset: Option<&String>) -> Value {
    let mut d = json!({"host": h.host});
    if let Some(s) = subset {
        d["subset"] = json!(s);
    }
    if let Some(p) = h.port {
        d["port"] = json!({"number": p});
    }
    d
}

fn virtual_services(config: &Config, hs: &[Host], o: &Options) -> Vec<Doc> {
    let header = &config.route_header;
    let route = |h: &Host, dest: &str, subset: Option<&String>| json!({"name": dest, "match": [{"headers": {header.as_str(): {"exact": dest}}}], "route": [{"destination": route_destination(h, subset)}]});
    match &o.target {
        Target::Selector(_) => hs
            .iter()
            .map(|h| {
                let mut http: Vec<Value> = h.routes.iter().map(|(d, s)| route(h, d, s.as_ref())).collect();
                http.push(json!({"name": "unrouted", "route": [{"destination": route_destination(h, None)}]}));
                Doc {
                    file: format!("virtualservice-{}", h.service),
                    comment: format!(
                        "Routes to {} by the `{header}` header the filter sets (the weighted, sticky split is\n\
                         the filter's); requests it did not route go to the Service as a whole.",
                        h.host
                    ),
                    value: json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                        "metadata": meta(&h.service, &o.namespace), "spec": {"hosts": [h.host], "http": http}}),
                }
            })
            .collect(),
        Target::Gateway(g) => {
            let mut http: Vec<Value> = hs
                .iter()
                .flat_map(|h| h.routes.iter().map(move |(d, s)| route(h, d, s.as_ref())))
                .collect();
            if let Some(h) = hs.first() {
                http.push(json!({"name": "unrouted", "route": [{"destination": route_destination(h, None)}]}));
            }
            vec![Doc {
                file: "virtualservice-gateway".into(),
                comment: format!("Routes requests entering gateway `{g}` by the `{header}` header the filter sets."),
                value: json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                    "metadata": meta(&format!("{FILTER_NAME}-gateway"), &o.namespace),
                    "spec": {"hosts": ["*"], "gateways": [g], "http": http}}),
            }]
        }
    }
}

fn hpa(model: &str, dest: &str, o: &Options) -> Doc {
    let workload = o.workloads.get(dest).cloned().unwrap_or_else(|| dest.to_string());
    Doc {
        file: format!("hpa-{workload}"),
        comment: format!(
            "Scales {workload} (model {model}, destination {dest}) on the filter's in-flight requests\n\
             (an External metric served by prometheus-adapter, rule below), with CPU as the fallback."
        ),
        value: json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": meta(&workload, &o.namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": workload},
            "minReplicas": o.min_replicas,
            "maxReplicas": o.max_replicas,
            "metrics": [
                {"type": "External", "external": {
                    "metric": {"name": IN_FLIGHT, "selector": {"matchLabels": {"destination": dest}}},
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
        value: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(&format!("{FILTER_NAME}-adapter-rules"), &o.namespace),
            "data": {"config.yaml": rules}}),
    }
}

fn network_policy(h: &Host, o: &Options) -> Doc {
    let from = match &o.target {
        Target::Gateway(g) => {
            json!([{"namespaceSelector": {}, "podSelector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": g}}}])
        }
        Target::Selector(sel) => json!([{"podSelector": {"matchLabels": labels(sel)}}]),
    };
    let mut egress = vec![
        json!({"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
               "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}),
        json!({"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}}, "podSelector": {"matchLabels": {"app": "istiod"}}}],
               "ports": [{"protocol": "TCP", "port": 15012}]}),
    ];
    for dep in &o.dependencies {
        egress.push(json!({"to": [{"podSelector": {"matchLabels": labels(dep)}}]}));
    }
    Doc {
        file: format!("networkpolicy-{}", h.service),
        comment: format!(
            "Only the {} reach the `{}` model pods; they reach only DNS, istiod and their declared dependencies.",
            match &o.target {
                Target::Gateway(g) => format!("gateway `{g}`"),
                Target::Selector(_) => "selected callers".to_string(),
            },
            h.service
        ),
        value: json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta(&format!("{}-model", h.service), &o.namespace),
            "spec": {"podSelector": {"matchLabels": {"app": h.service}}, "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": from}], "egress": egress}}),
    }
}

fn authorization_policy(h: &Host, o: &Options) -> Doc {
    let principals = if o.principals.is_empty() {
        match &o.target {
            Target::Gateway(g) => vec![format!("cluster.local/ns/{}/sa/{g}-istio", o.namespace)],
            Target::Selector(_) => vec![format!("cluster.local/ns/{}/sa/*", o.namespace)],
        }
    } else {
        o.principals.clone()
    };
    Doc {
        file: format!("authorizationpolicy-{}", h.service),
        comment: format!(
            "mTLS identity check: only these principals may call the `{}` model pods.",
            h.service
        ),
        value: json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": meta(&format!("{}-callers", h.service), &o.namespace),
            "spec": {"selector": {"matchLabels": {"app": h.service}}, "action": "ALLOW",
                     "rules": [{"from": [{"source": {"principals": principals}}]}]}}),
    }
}

/// The pod annotations that export the filter's metrics from the proxies it runs in.
pub fn stats_annotations() -> BTreeMap<String, String> {
    let mut buckets: Vec<u64> = DURATION_BUCKETS_MS.iter().chain(TTFT_BUCKETS_MS).copied().collect();
    buckets.sort_unstable();
    buckets.dedup();
    BTreeMap::from([
        (
            "proxy.istio.io/config".to_string(),
            format!(
                "extraStatTags: [{}]\nproxyStatsMatcher:\n  inclusionRegexps: [\".*model_router_.*\"]\n",
                LABEL_KEYS.join(", ")
            ),
        ),
        (
            "sidecar.istio.io/statsHistogramBuckets".to_string(),
            json!({ "wasmcustom": buckets }).to_string(),
        ),
    ])
}

/// kustomize patches adding the stats annotations to the workloads where the filter runs.
pub fn kustomization(docs: &[Doc], o: &Options) -> Value {
    let selector = match &o.target {
        Target::Selector(sel) => sel
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        Target::Gateway(g) => format!("gateway.networking.k8s.io/gateway-name={g}"),
    };
    // A strategic-merge patch adds the annotations without dropping existing ones.
    let patch = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "any"},
        "spec": {"template": {"metadata": {"annotations": stats_annotations()}}}});
    json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": docs.iter().map(|d| format!("{}.yaml", d.file)).collect::<Vec<_>>(),
        "patches": [{"target": {"kind": "Deployment", "labelSelector": selector}, "patch": patch.to_string()}]
    })
}
