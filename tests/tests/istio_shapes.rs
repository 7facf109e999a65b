//! The resources `wasmpack manifests` renders for body routing (manifests/llm-gateway/install.yaml,
//! kept fresh by the packager's tests), run in real Envoy in the shape Istio delivers them: the
//! EnvoyFilter's extension config over ECDS (from a file instead of istiod, with the module as the
//! local file istio-agent would have fetched), and its `config_discovery` HTTP filter.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use e2e::envoy::{repo_root, wasm_path};
use e2e::Scenario;
use serde_json::{json, Value};

fn rendered() -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join("manifests/llm-gateway/install.yaml")).unwrap();
    serde_saphyr::from_multiple(&text).unwrap()
}

fn patch_value(docs: &[Value], name: &str) -> Value {
    docs.iter()
        .find(|d| d["kind"] == "EnvoyFilter" && d["metadata"]["name"] == name)
        .map(|d| d["spec"]["configPatches"][0]["patch"]["value"].clone())
        .unwrap_or_else(|| panic!("no EnvoyFilter {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_ecds_config_routes_in_real_envoy() {
    let docs = rendered();
    let mut ext = patch_value(&docs, "model-router-extension");
    let mut filter = patch_value(&docs, "model-router");
    // What istio-agent does: the oci:// module becomes a local file.
    ext["typed_config"]["config"]["vm_config"]["code"] = json!({"local": {"filename": wasm_path()}});
    let dir = tempfile::tempdir().unwrap();
    let ecds = dir.path().join("ecds.json");
    let response = json!({"version_info": "1", "resources": [{
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": ext["name"], "typed_config": ext["typed_config"]}]});
    std::fs::write(&ecds, response.to_string()).unwrap();
    // What istiod does: serve it; here from the file.
    assert_eq!(
        filter["name"], ext["name"],
        "the HTTP filter points at the extension config"
    );
    filter["config_discovery"]["config_source"] =
        json!({"path_config_source": {"path": ecds}, "resource_api_version": "V3"});

    // The configuration as wasmpack reads it (and the filter receives it).
    let config: Value = wasmpack::plugin_config::load(&repo_root().join("manifests/llm-gateway/config.yaml"))
        .unwrap()
        .json;
    let s = Scenario::start_with(
        config,
        e2e::Options {
            filter_entry: Some(filter),
            ..Default::default()
        },
    )
    .await;

    // Body routing works: the held headers get the route the body's model decides.
    let body = json!({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let r = s
        .post("/v1/chat/completions", body.clone(), &[("x-user-id", "bob")])
        .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), e2e::tail(&s.envoy.log()));
    // A gateway install keeps the decision inside (`responseHeaders: none` is its default).
    assert_eq!(r.header("x-ai-route"), None);
    let dest = r.header("x-backend").unwrap_or("?").to_string();
    assert!(dest.starts_with("llama-3-8b-v"), "{dest}");
    let seen = s.backend(&dest).exchanges().pop().unwrap();
    assert_eq!(seen.json()["model"], "meta-llama/Meta-Llama-3-8B-Instruct");
    let r = s
        .post(
            "/v1/embeddings",
            json!({"model": "bge-small", "input": "x"}).to_string(),
            &[],
        )
        .await;
    assert_eq!(r.header("x-backend"), Some("bge-small"));
    let r = s
        .post("/v1/chat/completions", json!({"model": "nope"}).to_string(), &[])
        .await;
    assert_eq!(r.status, 404);

    // The stats carry the labels the rendered stats wiring names.
    let text = s.prometheus();
    assert!(
        text.contains("model_router_requests_total{model=\"llama-3-8b\""),
        "{text}"
    );
    // The histogram-bucket setting rendered for Istio matches stats by the `wasmcustom` prefix.
    let names = s.envoy.admin("/stats?filter=model_router_request_duration").unwrap();
    assert!(names.lines().any(|l| l.starts_with("wasmcustom.")), "{names}");
}
