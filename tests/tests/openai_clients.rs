//! What OpenAI-compatible clients expect of a gateway, checked with the official `openai` Python
//! client against real Envoy: the model list from the configuration (only what the caller may
//! use), decision headers as configured, an empty model refused, the client's model name in
//! JSON answers and streamed chunks, and uploads (multipart forms) routed and checked by their
//! `model` field.

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
    run_script(s, SCRIPT, identity)
}

/// Runs a client script (`base URL`, `identity` as arguments) and reads the JSON it prints.
fn run_script(s: &Scenario, script: &str, identity: &str) -> Value {
    let python = e2e::venv_python();
    let base = s.url("/v1");
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(&python)
            .args(["-c", script, &base, identity])
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
        v["empty"], "400 model_required",
        "an empty model is no default route (a model here has access rules: the filter fails closed): {v}"
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

const UPLOADS: &str = r#"
import json, sys, urllib.request, urllib.error, openai
base, identity = sys.argv[1], sys.argv[2]
headers = {"x-client-id": identity} if identity else {}
c = openai.OpenAI(base_url=base, api_key="test", max_retries=0, default_headers=headers)
audio = ("a.wav", b"RIFF\x00\x01fake audio\r\n--not-the-boundary\r\n")
out = {}
raw = c.audio.transcriptions.with_raw_response.create(model="whisper-1", file=audio, language="en")
out["text"] = raw.parse().text
out["route"] = raw.headers.get("x-ai-route")
try:
    c.audio.transcriptions.create(model="private-asr", file=audio)
    out["private"] = "accepted"
except openai.APIStatusError as e:
    out["private"] = f"{e.status_code} {e.body.get('code') if isinstance(e.body, dict) else ''}"
# The same refusal for JSON sent under a multipart label (servers that read JSON whatever the
# label says would serve it), and a form whose `model` field is repeated.
def post(body):
    req = urllib.request.Request(base + "/audio/transcriptions", data=body, method="POST",
                                 headers={**headers, "content-type": "multipart/form-data; boundary=x"})
    try:
        urllib.request.urlopen(req)
        return "accepted"
    except urllib.error.HTTPError as e:
        return f"{e.code} {json.load(e)['error']['code']}"
out["json_as_form"] = post(json.dumps({"model": "private-asr"}).encode())
out["twice"] = post(b"--x\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
                    b"--x\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nprivate-asr\r\n--x--\r\n")
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_routed_and_checked_by_their_model_field() {
    let s = Scenario::start(json!({
        "identityHeader": "x-client-id",
        "responseHeaders": "route",
        "models": [
            {"name": "whisper", "aliases": ["whisper-1"], "upstreamModel": "openai/whisper-large-v3",
             "destinations": [{"name": "asr-v1"}]},
            {"name": "private-asr", "allow": ["spiffe://td/ns/a/*"], "destinations": [{"name": "private"}]}
        ]
    }))
    .await;
    let v = run_script(&s, UPLOADS, "");
    assert_eq!(v["text"], "hello", "{v}");
    assert_eq!(v["route"], "asr-v1", "{v}");
    assert_eq!(v["private"], "403 model_access_denied", "{v}");
    assert_eq!(v["json_as_form"], "403 model_access_denied", "{v}");
    assert_eq!(v["twice"], "400 duplicate_model", "{v}");
    // The backend got the form with only the model field's value changed, and its length.
    let seen = s.backend("asr-v1").exchanges();
    assert_eq!(seen.len(), 1);
    let body = String::from_utf8_lossy(&seen[0].body).into_owned();
    assert!(
        body.contains("name=\"model\"\r\n\r\nopenai/whisper-large-v3\r\n"),
        "{body:?}"
    );
    assert!(body.contains("fake audio\r\n--not-the-boundary\r\n"), "{body:?}");
    assert_eq!(seen[0].header("content-length"), Some(body.len().to_string().as_str()));
    assert!(s.backend("private").exchanges().is_empty());
    assert!(s.default.exchanges().is_empty());
    // Counted like any other request, with the tokens the answer reported.
    let prom = s.prometheus();
    let labels = [("model", "whisper"), ("destination", "asr-v1")];
    let reported = seen[0].reported.clone().unwrap();
    assert_eq!(
        e2e::metric(
            &prom,
            "model_router_tokens_total",
            &[labels[0], labels[1], ("type", "input")]
        ),
        reported.input as f64,
        "{prom}"
    );
    assert_eq!(
        e2e::metric(
            &prom,
            "model_router_requests_total",
            &[labels[0], labels[1], ("code_class", "2xx")]
        ),
        1.0
    );
}
