//! An Envoy bootstrap running the filter in front of local backends: what `wasmpack run` starts
//! and what the end-to-end tests use. One listener with the Wasm filter (with
//! `allow_on_headers_stop_iteration`), a route per destination matched on the route header, a
//! default route, `stats_tags` that turn the filter's labels into Prometheus labels, OTel GenAI
//! histogram buckets, and an access log with model, destination and tokens.

use std::net::IpAddr;
use std::path::PathBuf;

use model_router::telemetry::{DURATION_BUCKETS_MS, LABEL_KEYS, TTFT_BUCKETS_MS};
use serde_json::{json, Value};

use crate::render::{listener_buffer_limit, ENVOY_DEFAULT_BUFFER_LIMIT};

/// A local backend a destination is served by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The destination name (the route header's value) and the cluster name.
    pub name: String,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub listen: (String, u16),
    pub admin: (String, u16),
    pub wasm: PathBuf,
    /// The plugin configuration, JSON.
    pub config_json: String,
    pub route_header: String,
    pub upstreams: Vec<Upstream>,
    /// The upstream for requests the filter does not route (default: the first one).
    pub default_upstream: Option<String>,
    /// `allow_on_headers_stop_iteration` (body routing); on unless testing the safety net.
    pub allow_hold: bool,
    /// Access log file (`/dev/stdout` for the console); none when `None`.
    pub access_log: Option<String>,
    /// Replaces the filter's http_filters entry (e.g. an ECDS `config_discovery` one).
    pub filter_entry: Option<Value>,
    /// Merge histograms on every admin read, so scrapes are current (tests, `wasmpack stats`).
    pub stats_flush_on_admin: bool,
    /// The listener's transport socket (e.g. TLS requiring client certificates).
    pub transport_socket: Option<Value>,
    /// HTTP filters before the Wasm filter (e.g. `set_filter_state`, as an Istio waypoint has).
    pub pre_filters: Vec<Value>,
    /// gRPC (HTTP/2) clusters the filter calls, e.g. the rate limit service (named as the
    /// configuration's `rateLimitService.cluster`).
    pub grpc_clusters: Vec<Upstream>,
    /// The routes' timeout: how long a request may take, streaming included (0: none).
    pub route_timeout_s: u64,
}

/// Model, destination and token counts from the filter's filter state, then status and timing.
pub const ACCESS_LOG_FORMAT: &str =
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%\" %RESPONSE_CODE% \
route=%REQ(X-AI-ROUTE)% model=%FILTER_STATE(wasm.model_router.model:PLAIN)% \
destination=%FILTER_STATE(wasm.model_router.destination:PLAIN)% \
input_tokens=%FILTER_STATE(wasm.model_router.input_tokens:PLAIN)% \
output_tokens=%FILTER_STATE(wasm.model_router.output_tokens:PLAIN)% \
failover=%FILTER_STATE(wasm.model_router.failover:PLAIN)% flags=%RESPONSE_FLAGS% duration_ms=%DURATION%\n";

/// The filter as an HCM http_filters entry, with the module from a local file.
pub fn wasm_filter(spec: &Spec) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "model-router",
                "allow_on_headers_stop_iteration": spec.allow_hold,
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": filter_config(spec)},
                "vm_config": {"vm_id": "model-router", "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": spec.wasm}}}
            }
        }
    })
}

/// The plugin configuration as given, with `filterState` on when there is an access log (its
/// format prints the filter state) and the configuration does not say otherwise.
fn filter_config(spec: &Spec) -> String {
    let mut config: Value = serde_json::from_str(&spec.config_json).unwrap_or(Value::Null);
    match config.as_object_mut() {
        Some(o) if spec.access_log.is_some() && !o.contains_key("filterState") => {
            o.insert("filterState".into(), Value::Bool(true));
            config.to_string()
        }
        _ => spec.config_json.clone(),
    }
}

fn address(host: &str, port: u16) -> Value {
    json!({"socket_address": {"address": host, "port_value": port}})
}

fn grpc_cluster(u: &Upstream) -> Value {
    let mut c = cluster(u);
    c["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}
        }
    });
    c["connect_timeout"] = json!("1s");
    c
}

fn cluster(u: &Upstream) -> Value {
    // Literal addresses need no DNS; names are resolved (and re-resolved) by Envoy.
    let kind = if u.host.parse::<IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    json!({
        "name": u.name,
        "type": kind,
        // `localhost` is often IPv4 only on the backend's side: try IPv4 first.
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": u.name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(&u.host, u.port)}}]}]}
    })
}

pub fn stats_tags() -> Vec<Value> {
    LABEL_KEYS
        .iter()
        .map(|t| json!({"tag_name": t, "regex": format!("({t}=\\.=(.*?);\\.;)")}))
        .collect()
}

pub fn histogram_buckets() -> Value {
    json!([
        {"match": {"suffix": "model_router_request_duration_milliseconds"}, "buckets": DURATION_BUCKETS_MS},
        {"match": {"suffix": "model_router_time_to_first_token_milliseconds"}, "buckets": TTFT_BUCKETS_MS},
    ])
}

pub fn render(spec: &Spec) -> Value {
    let timeout = format!("{}s", spec.route_timeout_s);
    let mut routes: Vec<Value> = spec
        .upstreams
        .iter()
        .map(|u| {
            json!({"match": {"prefix": "/", "headers": [{"name": spec.route_header, "string_match": {"exact": u.name}}]},
                   "route": {"cluster": u.name, "timeout": timeout}})
        })
        .collect();
    let default = spec
        .default_upstream
        .clone()
        .or_else(|| spec.upstreams.first().map(|u| u.name.clone()));
    match default {
        Some(d) => routes.push(json!({"match": {"prefix": "/"}, "route": {"cluster": d, "timeout": timeout}})),
        None => routes.push(json!({"match": {"prefix": "/"}, "direct_response": {"status": 404}})),
    }
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "route_config": {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": spec.pre_filters.iter().cloned().chain([
            spec.filter_entry.clone().unwrap_or_else(|| wasm_filter(spec)),
            json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
        ]).collect::<Vec<_>>()
    });
    if let Some(path) = &spec.access_log {
        hcm["access_log"] = json!([{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": path,
                "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}}
            }
        }]);
    }
    let mut b = json!({
        // xDS subscriptions (ECDS from a file) need a node identity.
        "node": {"id": "model-router", "cluster": "model-router"},
        "admin": {"address": address(&spec.admin.0, spec.admin.1)},
        "stats_config": {"stats_tags": stats_tags(), "histogram_bucket_settings": histogram_buckets()},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": address(&spec.listen.0, spec.listen.1),
                // A second Envoy on the same port fails to start instead of silently sharing it
                // (and splitting traffic and failover state).
                "enable_reuse_port": false,
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]
            }],
            "clusters": spec.upstreams.iter().map(cluster).chain(spec.grpc_clusters.iter().map(grpc_cluster)).collect::<Vec<_>>()
        }
    });
    if let Some(ts) = &spec.transport_socket {
        b["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = ts.clone();
    }
    // Envoy holds a request body only up to the connection's buffer limit (1 MiB by default) and
    // answers 413 itself past it: a larger `maxBodyBytes` needs the limit raised to match.
    let max_body = model_router::config::Config::from_json(spec.config_json.as_bytes()).map_or(0, |c| c.max_body_bytes);
    if max_body > ENVOY_DEFAULT_BUFFER_LIMIT {
        b["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] =
            json!(listener_buffer_limit(max_body));
    }
    if spec.stats_flush_on_admin {
        b["stats_flush_on_admin"] = json!(true);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_clusters_and_tags() {
        let spec = Spec {
            listen: ("127.0.0.1".into(), 10000),
            admin: ("127.0.0.1".into(), 9901),
            wasm: "/x/model_router.wasm".into(),
            config_json: "{}".into(),
            route_header: "x-ai-route".into(),
            upstreams: vec![
                Upstream {
                    name: "a".into(),
                    host: "127.0.0.1".into(),
                    port: 8001,
                },
                Upstream {
                    name: "b".into(),
                    host: "vllm.local".into(),
                    port: 8002,
                },
            ],
            default_upstream: Some("b".into()),
            allow_hold: true,
            access_log: Some("/dev/stdout".into()),
            filter_entry: None,
            stats_flush_on_admin: false,
            transport_socket: None,
            pre_filters: Vec::new(),
            grpc_clusters: Vec::new(),
            route_timeout_s: 300,
        };
        let b = render(&spec);
        let routes = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["route_config"]["virtual_hosts"][0]["routes"];
        assert_eq!(routes.as_array().unwrap().len(), 3);
        assert_eq!(routes[1]["match"]["headers"][0]["string_match"]["exact"], "b");
        assert_eq!(routes[2]["route"]["cluster"], "b");
        assert_eq!(routes[0]["route"]["timeout"], "300s");
        let clusters = &b["static_resources"]["clusters"];
        assert_eq!(clusters[0]["type"], "STATIC");
        assert_eq!(clusters[1]["type"], "STRICT_DNS");
        assert_eq!(
            b["stats_config"]["stats_tags"].as_array().unwrap().len(),
            LABEL_KEYS.len()
        );
        assert_eq!(b["stats_config"]["stats_tags"][0]["regex"], "(model=\\.=(.*?);\\.;)");
        // Envoy's own buffer limit stays as it is for bodies up to 1 MiB, and is raised to match
        // a larger maxBodyBytes (or Envoy would answer 413 before the filter read the body).
        let limit = |b: &Value| b["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"].clone();
        assert_eq!(limit(&b), Value::Null);
        let big = Spec {
            config_json: r#"{"maxBodyBytes": 8388608, "models": []}"#.into(),
            ..spec
        };
        assert_eq!(limit(&render(&big)), json!(8388608));
        // `run --route-timeout 0`: no limit (Envoy reads 0s as none).
        let unlimited = Spec {
            route_timeout_s: 0,
            ..big
        };
        let b = render(&unlimited);
        let routes = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["route_config"]["virtual_hosts"][0]["routes"];
        assert_eq!(routes[0]["route"]["timeout"], "0s");
        assert_eq!(routes[2]["route"]["timeout"], "0s");
    }
}
