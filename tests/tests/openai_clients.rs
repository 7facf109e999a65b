//! What OpenAI-compatible clients expect of a gateway, checked with the official `openai` Python
//! client against real Envoy: the model list from the configuration (only what the caller may
//! use), decision headers as configured, an empty model refused, and the client's model name in
//! JSON answers and streamed chunks.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use e2e::Scenario;
use serde_json::{json, Value};

const SCRIPT: &str = r#"
import json, sys, openai
base, identity = sys.argv[1], sys.argv[2]
headers = {"x-client-id": identity} if identity else {}
c = openai.OpenAI(base_url=base, api_key="test", max_retries=0, default_headers=headers)
out = {}
out["models"] = [m.id for m in c.models.list()]
try:
    out["retrieve_private"] = c.models.retrieve("private").id
except openai.NotFoundError as e:
    out["retrieve_private"] = "404 " + e.body.get("code", "") if isinstance(e.body, dict) else "404"
raw = c.chat.completions.with_raw_response.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}])
out["headers"] = {k: raw.headers.get(k) for k in ("x-ai-route", "x-ai-model")}
out["model"] = raw.parse().model
stream = c.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}], stream=True)
out["stream_models"] = sorted({chunk.model for chunk in stream})
try:
    c.chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}])
    out["empty"] = "accepted"
except openai.APIStatusError as e:
    out["empty"] = f"{e.status_code} {e.body.get('code') if isinstance(e.body, dict) else ''}"
print(json.dumps(out))
"#;

fn config(response_headers: &str) -> Value {
    json!({
        "identityHeader": "x-client-id",
        "serveModelList": true,
        "responseHeaders": response_headers,
        "restoreModelName": true,
        "models": [
            {"name": "llama-3-8b", "aliases": ["gpt-3.5-turbo"], "upstreamModel": "meta-llama/Llama-3.1-8B-Instruct",
             "destinations": [{"name": "llama-v1"}]},
            {"name": "private", "allow": ["spiffe://td/ns/a/*"], "destinations": [{"name": "private"}]}
        ]
    })
}

fn run_client(s: &Scenario, identity: &str) -> Value {
    let python = e2e::venv_python();
    let base = s.url("/v1");
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(&python)
            .args(["-c", SCRIPT, &base, identity])
            .output()
            .unwrap()
    });
    assert!(
        out.status.success(),
        "{}\nenvoy:\n{}",
        String::from_utf8_lossy(&out.stderr),
        e2e::tail(&s.envoy.log())
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_at_a_gateway() {
    let s = Scenario::start(config("none")).await;
    let v = run_client(&s, "");
    assert_eq!(v["models"], json!(["llama-3-8b", "gpt-3.5-turbo"]), "{v}");
    assert_eq!(v["retrieve_private"], "404 model_not_found", "{v}");
    assert_eq!(
        v["headers"],
        json!({"x-ai-route": null, "x-ai-model": null}),
        "no decision leaves: {v}"
    );
    assert_eq!(v["model"], "gpt-3.5-turbo", "the name the client asked for: {v}");
    assert_eq!(v["stream_models"], json!(["gpt-3.5-turbo"]), "{v}");
    assert_eq!(
        v["empty"], "404 model_not_found",
        "an empty model is no default route: {v}"
    );
    // The backend was sent the upstream name, and no model-list request reached a backend.
    let seen = s.backend("llama-v1").exchanges();
    assert!(seen
        .iter()
        .all(|e| e.json()["model"] == "meta-llama/Llama-3.1-8B-Instruct"));
    assert!(
        s.default.exchanges().is_empty(),
        "{:?}",
        s.default.exchanges().iter().map(|e| &e.path).collect::<Vec<_>>()
    );

    // A caller allowed to use `private` sees it.
    let v = run_client(&s, "spiffe://td/ns/a/sa/notebook");
    assert_eq!(v["models"], json!(["llama-3-8b", "gpt-3.5-turbo", "private"]), "{v}");
    assert_eq!(v["retrieve_private"], "private");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_headers_when_asked_for() {
    let s = Scenario::start(config("route+model")).await;
    let v = run_client(&s, "");
    assert_eq!(
        v["headers"],
        json!({"x-ai-route": "llama-v1", "x-ai-model": "llama-3-8b"}),
        "{v}"
    );
    let mut cfg = config("route");
    cfg["onMissingModel"] = json!("reject");
    let s = Scenario::start(cfg).await;
    let v = run_client(&s, "");
    assert_eq!(
        v["headers"],
        json!({"x-ai-route": "llama-v1", "x-ai-model": null}),
        "{v}"
    );
    assert_eq!(v["empty"], "400 model_required", "{v}");
}
