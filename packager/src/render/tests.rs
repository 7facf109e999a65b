//! The planning and rendering of `plan` and `render` together, on whole configurations: what
//! the jobs' documents say about each other (routes to fallbacks, the filter's ports, the
//! buffer limit of each mode, Envoy Gateway's catch-all, a waypoint's Service).

use std::collections::BTreeMap;

use model_router::config::Config;
use serde_json::{json, Value};

use super::*;

fn sidecar_options() -> Options {
    Options {
        name: "mr".into(),
        namespace: "ai".into(),
        target: Target::Selector(BTreeMap::from([("app".into(), "chat".into())])),
        extension_api: FilterApi::WasmPlugin,
        repository: "r.example.com/mr".into(),
        digest: format!("sha256:{}", "a".repeat(64)),
        fail_open: false,
        phase: "UNSPECIFIED_PHASE".into(),
        priority: None,
        pull_secret: None,
        workloads: BTreeMap::new(),
        max_in_flight: 4,
        min_replicas: 1,
        max_replicas: 2,
        principals: Vec::new(),
        network: Network::default(),
        pod_selectors: BTreeMap::new(),
        subset_labels: BTreeMap::new(),
        only: Vec::new(),
        skip: Vec::new(),
    }
}

#[test]
fn failover_renders_outlier_detection_retries_and_routes_to_fallbacks() {
    let json: Value = serde_json::from_str(
        r#"{"failover": {"consecutiveFailures": 4, "probation": "2500ms"}, "models": [
            {"name": "m", "destinations": [{"name": "a", "host": "a.ai.svc.cluster.local", "port": 8000}],
             "fallbacks": [{"model": "f"}]},
            {"name": "f", "destinations": [{"name": "fb", "host": "f.ai.svc.cluster.local", "port": 8000}]}]}"#,
    )
    .unwrap();
    let config = Config::from_json(json.to_string().as_bytes()).unwrap();
    let o = sidecar_options();
    let plan = plan(&config, &o).unwrap();
    let docs = render(&json, &config, &o, &plan);
    let find = |kind: &str, host: &str| {
        docs.iter()
            .map(|d| &d.value)
            .find(|v| v["kind"] == kind && (v["spec"]["host"] == host || v["spec"]["hosts"][0] == host))
            .unwrap()
            .clone()
    };
    let dr = find("DestinationRule", "a.ai.svc.cluster.local");
    assert_eq!(
        dr["spec"]["trafficPolicy"]["outlierDetection"],
        json!({"consecutive5xxErrors": 4, "interval": "10s", "baseEjectionTime": "3s", "maxEjectionPercent": 50})
    );
    let vs = find("VirtualService", "a.ai.svc.cluster.local");
    let rules = vs["spec"]["http"].as_array().unwrap();
    let names: Vec<&str> = rules.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["a", "fb", "unrouted"],
        "the fallback's destination is routable from a's callers"
    );
    assert_eq!(rules[0]["retries"]["retryOn"], "connect-failure,refused-stream");
}

#[test]
fn a_caller_of_one_host_reaches_every_destination_of_its_models_and_providers_get_tls() {
    let json: Value = serde_json::from_str(
        r#"{"bodyRouting": false, "models": [{"name": "m", "destinations": [
            {"name": "a", "host": "a.ai.svc.cluster.local", "port": 8000},
            {"name": "b", "host": "b.ai.svc.cluster.local", "port": 8000},
            {"name": "openai", "host": "api.openai.com", "port": 443}]}]}"#,
    )
    .unwrap();
    let config = Config::from_json(json.to_string().as_bytes()).unwrap();
    let o = sidecar_options();
    let plan = plan(&config, &o).unwrap();
    let docs = render(&json, &config, &o, &plan);
    let vs: Vec<&Value> = docs
        .iter()
        .map(|d| &d.value)
        .filter(|v| v["kind"] == "VirtualService")
        .collect();
    assert_eq!(vs.len(), 3);
    let a = vs
        .iter()
        .find(|v| v["spec"]["hosts"][0] == "a.ai.svc.cluster.local")
        .unwrap();
    let names: Vec<&str> = a["spec"]["http"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["a", "b", "openai", "unrouted"],
        "a caller of `a` can be sent to `b` or the provider"
    );
    assert_eq!(
        a["spec"]["http"][1]["route"][0]["destination"]["host"],
        "b.ai.svc.cluster.local"
    );
    assert_eq!(a["spec"]["http"][2]["rewrite"]["authority"], "api.openai.com");
    assert_eq!(a["spec"]["http"][2]["route"][0]["destination"]["port"]["number"], 80);
    let kinds: Vec<&str> = docs.iter().map(|d| d.value["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"ServiceEntry"), "{kinds:?}");
    let dr: Vec<&Value> = docs
        .iter()
        .map(|d| &d.value)
        .filter(|v| v["kind"] == "DestinationRule")
        .collect();
    assert!(dr
        .iter()
        .any(|d| d["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]["sni"] == "api.openai.com"));
    // Nothing of ours runs at the provider: no HPA, NetworkPolicy or AuthorizationPolicy for it.
    assert!(!docs.iter().any(|d| d.file.contains("api-openai-com")
        && d.value["kind"] != "ServiceEntry"
        && d.value["kind"] != "DestinationRule"
        && d.value["kind"] != "VirtualService"));
    // The sidecar's filter runs on the port the mesh calls the provider on.
    let wp = docs.iter().find(|d| d.value["kind"] == "WasmPlugin").unwrap();
    assert_eq!(
        wp.value["spec"]["match"][0]["ports"],
        json!([{"number": 80}, {"number": 8000}])
    );
}

/// The listener's buffer limit is raised to maxBodyBytes only where the proxy's default is
/// lower: over 1 MiB in Istio (per model port in a sidecar), over 32 KiB on Envoy Gateway.
#[test]
fn the_buffer_limit_is_raised_where_the_default_is_lower() {
    let limit_docs = |max: u64, target: Target, skip: Vec<Part>| {
        let json = json!({"bodyRouting": false, "maxBodyBytes": max, "models": [{"name": "m", "destinations": [
            {"name": "a", "host": "a.ai.svc.cluster.local", "port": 8000},
            {"name": "b", "host": "b.ai.svc.cluster.local", "port": 8080}]}]});
        let config = Config::from_json(json.to_string().as_bytes()).unwrap();
        let o = Options {
            target,
            skip,
            ..sidecar_options()
        };
        let plan = plan(&config, &o).unwrap();
        render(&json, &config, &o, &plan)
            .into_iter()
            .filter(|d| d.file.ends_with("buffer-limit"))
            .map(|d| d.value)
            .collect::<Vec<Value>>()
    };
    let sidecar = || Target::Selector(BTreeMap::from([("app".into(), "chat".into())]));
    let gateway = || Target::Gateway {
        name: "gw".into(),
        hostnames: vec!["llm.example.com".into()],
    };
    let eg = || Target::EnvoyGateway {
        name: "eg".into(),
        hostnames: vec!["llm.example.com".into()],
        listener: "ai/eg/http".into(),
    };
    let waypoint = || Target::Waypoint {
        name: "wp".into(),
        service: "llm.ai.svc.cluster.local".into(),
        port: 8000,
    };
    let mib = 1 << 20;

    let d = limit_docs(8 * mib, sidecar(), Vec::new());
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["kind"], "EnvoyFilter");
    assert_eq!(d[0]["spec"]["workloadSelector"]["labels"]["app"], "chat");
    let patches = d[0]["spec"]["configPatches"].as_array().unwrap();
    let ports: Vec<&Value> = patches.iter().map(|p| &p["match"]["listener"]["portNumber"]).collect();
    assert_eq!(
        ports,
        [&json!(8000), &json!(8080)],
        "the outbound listeners of the models' ports"
    );
    for p in patches {
        assert_eq!(p["applyTo"], "LISTENER");
        assert_eq!(p["match"]["context"], "SIDECAR_OUTBOUND");
        assert_eq!(p["patch"]["operation"], "MERGE");
        assert_eq!(p["patch"]["value"]["per_connection_buffer_limit_bytes"], 8 * mib);
    }

    let d = limit_docs(8 * mib, gateway(), Vec::new());
    assert_eq!(d[0]["spec"]["targetRefs"][0]["name"], "gw");
    assert_eq!(d[0]["spec"]["configPatches"][0]["match"], json!({"context": "GATEWAY"}));

    // Envoy's default already holds 1 MiB; a waypoint cannot be patched (manifests warns).
    assert!(limit_docs(mib, sidecar(), Vec::new()).is_empty());
    assert!(limit_docs(mib, gateway(), Vec::new()).is_empty());
    assert!(limit_docs(8 * mib, waypoint(), Vec::new()).is_empty());

    // Envoy Gateway's listeners hold 32 KiB: the default 1 MiB body needs its policy.
    let d = limit_docs(mib, eg(), Vec::new());
    assert_eq!(d[0]["kind"], "ClientTrafficPolicy");
    assert_eq!(d[0]["spec"]["connection"]["bufferLimit"], mib);
    assert_eq!(d[0]["spec"]["targetRefs"][0]["name"], "eg");
    assert!(limit_docs(32 << 10, eg(), Vec::new()).is_empty());

    // Envoy's field is 32-bit; --skip buffer-limit leaves it out.
    let d = limit_docs(u64::MAX, gateway(), Vec::new());
    assert_eq!(
        d[0]["spec"]["configPatches"][0]["patch"]["value"]["per_connection_buffer_limit_bytes"],
        u32::MAX
    );
    assert!(limit_docs(8 * mib, gateway(), vec![Part::BufferLimit]).is_empty());
}

fn two_models() -> (Value, Config) {
    let json = json!({"models": [
        {"name": "chat", "destinations": [
            {"name": "chat-v1", "weight": 90, "host": "chat-v1.ai.svc.cluster.local", "port": 8000},
            {"name": "chat-v2", "weight": 10, "host": "chat-v2.ai.svc.cluster.local", "port": 8000}]},
        {"name": "embeddings", "destinations": [
            {"name": "embed", "host": "embed.ai.svc.cluster.local", "port": 8000}]}]});
    let config = Config::from_json(json.to_string().as_bytes()).unwrap();
    (json, config)
}

/// Envoy Gateway routes body-named models: the EnvoyPatchPolicy lets the filter named after
/// the EnvoyExtensionPolicy hold headers on the chosen listener, and the catch-all rule
/// answers itself instead of sending every unrouted request to one model's Service.
#[test]
fn envoy_gateway_holds_headers_and_its_catch_all_is_no_model() {
    let (json, config) = two_models();
    let o = Options {
        target: Target::EnvoyGateway {
            name: "eg".into(),
            hostnames: vec!["llm.example.com".into()],
            listener: "ai/eg/http".into(),
        },
        ..sidecar_options()
    };
    let plan = plan(&config, &o).unwrap();
    let docs = render(&json, &config, &o, &plan);
    let epp = docs.iter().find(|d| d.value["kind"] == "EnvoyPatchPolicy").unwrap();
    assert_eq!(epp.value["metadata"]["name"], "mr-body-routing");
    let patches = epp.value["spec"]["jsonPatches"].as_array().unwrap();
    assert_eq!(patches[0]["name"], "ai/eg/http");
    assert_eq!(
        patches[0]["operation"]["jsonPath"],
        "..http_filters[?(@.name=='envoy.filters.http.wasm/envoyextensionpolicy/ai/mr/wasm/0')].typed_config.config"
    );
    assert_eq!(patches[0]["operation"]["path"], "/allow_on_headers_stop_iteration");
    assert_eq!(patches[1]["operation"]["path"], "/per_connection_buffer_limit_bytes");
    assert_eq!(patches[1]["operation"]["value"], 1 << 20);
    // The EnvoyExtensionPolicy the filter name is made of.
    let eep = docs.iter().find(|d| d.value["kind"] == "EnvoyExtensionPolicy").unwrap();
    assert_eq!(eep.value["metadata"]["name"], "mr");
    assert_eq!(eep.value["metadata"]["namespace"], "ai");
    // No ClientTrafficPolicy besides: the patch raises the buffer limit.
    assert!(!docs.iter().any(|d| d.value["kind"] == "ClientTrafficPolicy"));
    let route = docs.iter().find(|d| d.value["kind"] == "HTTPRoute").unwrap();
    let rules = route.value["spec"]["rules"].as_array().unwrap();
    let last = rules.last().unwrap();
    assert!(last.get("matches").is_none(), "the last rule catches the rest");
    assert!(last.get("backendRefs").is_none(), "never a model's backend: {last}");
    assert_eq!(last["filters"][0]["extensionRef"]["name"], "mr-unrouted");
    let answer = docs.iter().find(|d| d.value["kind"] == "HTTPRouteFilter").unwrap();
    assert_eq!(answer.value["spec"]["directResponse"]["statusCode"], 404);
    for r in &rules[..rules.len() - 1] {
        assert!(r["matches"][0]["headers"][0]["value"].is_string(), "{r}");
    }
}

/// A waypoint cannot route by the body: its catch-all is the Service clients call. When that
/// is one model's Service, the other models' requests would land there: refused, naming them.
#[test]
fn a_waypoint_whose_catch_all_is_one_models_service_is_refused() {
    let (mut json, _) = two_models();
    json["bodyRouting"] = json!(false);
    let config = Config::from_json(json.to_string().as_bytes()).unwrap();
    let waypoint = |service: &str| Options {
        target: Target::Waypoint {
            name: "wp".into(),
            service: service.into(),
            port: 8000,
        },
        ..sidecar_options()
    };
    let problems = plan(&config, &waypoint("chat-v1.ai.svc.cluster.local")).unwrap_err();
    let p = problems.iter().find(|p| p.at == "--service").unwrap();
    assert!(p.message.contains("`chat`, `embeddings`"), "{}", p.message);
    // The embeddings Service serves all of `embeddings`, not `chat`.
    let problems = plan(&config, &waypoint("embed")).unwrap_err();
    assert!(
        problems.iter().any(|p| p.message.contains("model `chat` in")),
        "{problems:?}"
    );
    // A Service in front of the models is the Service clients call: accepted.
    assert!(plan(&config, &waypoint("llm.ai.svc.cluster.local")).is_ok());
    // With a single model served there entirely, nothing goes astray.
    let one = Config::from_json(
        br#"{"bodyRouting": false, "models": [{"name": "e", "destinations": [{"name": "embed", "host": "embed", "port": 8000}]}]}"#,
    )
    .unwrap();
    assert!(plan(&one, &waypoint("embed")).is_ok());
}
