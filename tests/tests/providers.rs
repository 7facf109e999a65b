//! The APIs that name their model in the path (Gemini, Amazon Bedrock) and the answers that are
//! not OpenAI's (Gemini's usageMetadata in JSON, SSE and a JSON array in pieces; Bedrock's
//! Converse usage in JSON and AWS event-stream frames; Cohere v2; Ollama's NDJSON), in real
//! Envoy with recorded-shape answers from local backends: routed, checked and counted. And a
//! stream cut before its usage is charged at least what the client received.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use e2e::prom::{self, Sample};
use e2e::{metric, Scenario};
use serde_json::{json, Value};

const SONNET: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const OPUS: &str = "anthropic.claude-3-opus-20240229-v1:0";

fn config() -> Value {
    json!({
        "bodyRouting": true,
        "models": [
            {"name": "gemini-2.0-flash", "destinations": [{"name": "gemini"}]},
            {"name": SONNET, "destinations": [{"name": "bedrock"}]},
            {"name": OPUS, "allow": ["spiffe://td/ns/a/*"], "destinations": [{"name": "bedrock-private"}]},
            {"name": "gemini-private", "allow": ["spiffe://td/ns/a/*"], "destinations": [{"name": "gemini-private"}]},
            {"name": "command-r", "destinations": [{"name": "cohere"}]},
            {"name": "llama3.2", "destinations": [{"name": "ollama"}]}
        ]
    })
}

/// Samples once nothing is in flight any more (every exchange logged; only counters are read).
async fn scrape_when_idle(s: &Scenario) -> Vec<Sample> {
    let text = s
        .prometheus_when("no request in flight", |t| {
            prom::sum(&prom::parse(t).unwrap(), "model_router_in_flight_requests", &[]) == 0.0
        })
        .await;
    prom::parse(&text).unwrap()
}

type Key = (String, String, String);

fn by_labels(samples: &[Sample], name: &str) -> BTreeMap<Key, u64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name && s.value > 0.0) {
        let l = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        *out.entry((l("model"), l("destination"), l("type"))).or_default() += s.value as u64;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_answers_are_routed_and_their_tokens_counted() {
    let s = Scenario::start(config()).await;
    let gemini_body = json!({"contents": [{"role": "user", "parts": [{"text": "Why is the sky blue?"}]}]}).to_string();
    let converse_body = json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "/v1beta/models/gemini-2.0-flash:generateContent",
            gemini_body.clone(),
            "gemini",
        ),
        (
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
            gemini_body.clone(),
            "gemini",
        ),
        (
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
            gemini_body.clone(),
            "gemini",
        ),
        (
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse",
            converse_body.clone(),
            "bedrock",
        ),
        (
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream",
            converse_body.clone(),
            "bedrock",
        ),
        (
            "/model/anthropic.claude-3-5-sonnet-20240620-v1:0/invoke",
            json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": []}).to_string(),
            "bedrock",
        ),
        (
            "/v2/chat",
            json!({"model": "command-r", "messages": []}).to_string(),
            "cohere",
        ),
        (
            "/v2/chat",
            json!({"model": "command-r", "messages": [], "stream": true}).to_string(),
            "cohere",
        ),
        (
            "/api/chat",
            json!({"model": "llama3.2", "messages": []}).to_string(),
            "ollama",
        ),
        (
            "/api/chat",
            json!({"model": "llama3.2", "messages": [], "stream": false}).to_string(),
            "ollama",
        ),
    ];
    for (path, body, dest) in &cases {
        let r = s.post(path, body.clone(), &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.header("x-backend"), Some(*dest), "{path}");
        assert_eq!(r.header("x-ai-route"), Some(*dest), "{path}");
    }
    // What the backends reported, as the filter counts it.
    let model_of = |d: &str| match d {
        "gemini" => "gemini-2.0-flash",
        "bedrock" => SONNET,
        "cohere" => "command-r",
        _ => "llama3.2",
    };
    let mut want: BTreeMap<Key, u64> = BTreeMap::new();
    for dest in ["gemini", "bedrock", "cohere", "ollama"] {
        let ex = s.backend(dest).exchanges();
        assert_eq!(ex.len(), cases.iter().filter(|c| c.2 == dest).count(), "{dest}");
        for e in ex {
            let r = e
                .reported
                .clone()
                .unwrap_or_else(|| panic!("{dest} {} reported nothing", e.path));
            for (ty, n) in [("input", r.input), ("output", r.output)] {
                *want
                    .entry((model_of(dest).to_string(), dest.to_string(), ty.to_string()))
                    .or_default() += n;
            }
        }
    }
    let samples = scrape_when_idle(&s).await;
    let got = by_labels(&samples, "model_router_tokens_total");
    assert_eq!(got, want, "tokens counted vs reported");
    assert_eq!(prom::sum(&samples, "model_router_usage_missing_total", &[]), 0.0);
    assert_eq!(prom::sum(&samples, "model_router_usage_errors_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_a_bedrock_or_gemini_path_gets_past_access_control() {
    let s = Scenario::start(config()).await;
    let body = json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).to_string();
    let id = "anthropic.claude-3-opus-20240229-v1";
    for path in [
        format!("/model/{id}:0/converse"),
        format!("/model/{id}%3A0/converse"),
        format!("/model/{id}%3a0/converse-stream"),
        format!("/model/{id}%253A0/converse"),
        format!("/model/{id}%25253A0/invoke"),
        format!("/model/{id}%3A0/CONVERSE"),
        format!("/MODEL/{id}%3A0/Invoke-With-Response-Stream"),
        format!("/model/{id}%3A0/converse/"),
        format!("/model/{id}%3A0/converse?x=1"),
        format!("/model/{id}%3A0/count-tokens"),
        format!("//model//{id}%3A0//converse"),
        format!("/model/./{id}%3A0/converse"),
        format!("/model/{id}%3A0%2Fconverse"),
        format!("/%6Dodel/{id}%3A0/converse"),
        format!("/bedrock/model/{id}%3A0/converse"),
        "/v1beta/models/gemini-private:generateContent".into(),
        "/v1beta/models/gemini-private%3AgenerateContent".into(),
        "/v1beta/models/gemini-private:GENERATECONTENT/".into(),
        "/v1/models/gemini-private:streamGenerateContent?alt=sse".into(),
        "/gemini/v1beta/models/gemini-private:countTokens".into(),
        "/v1/projects/p/locations/l/publishers/google/models/gemini-private:streamGenerateContent".into(),
        "/v1beta/models/gemini-private:unknownMethod".into(),
    ] {
        let r = s.post(&path, body.clone(), &[]).await;
        assert!([403, 404, 400].contains(&r.status), "{path}: {} {}", r.status, r.text());
    }
    assert!(
        s.backend("bedrock-private").exchanges().is_empty(),
        "nothing reached the model"
    );
    // Nothing reached any backend either (a spelling that is not the model's is refused).
    assert!(
        s.default.exchanges().is_empty(),
        "{:?}",
        s.default.exchanges().iter().map(|e| e.path.clone()).collect::<Vec<_>>()
    );
    // The plain spelling is the model's, refused by its allow list and counted under it.
    let r = s.post(&format!("/model/{id}%3A0/converse"), body.clone(), &[]).await;
    assert_eq!(r.status, 403);
    let text = s.prometheus();
    assert!(metric(&text, "model_router_requests_total", &[("model", OPUS)]) >= 1.0);
}

async fn remaining_tokens(s: &Scenario) -> i64 {
    let r = s
        .post("/v1/embeddings", r#"{"model":"metered","input":"x"}"#, &[])
        .await;
    assert_eq!(r.status, 200, "{} {:?}", r.text(), r.headers);
    r.header("x-ratelimit-remaining-tokens").unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_before_its_usage_is_charged_what_the_client_received() {
    // 20 000 tokens a minute. The client asks for 10 tokens, the backend (ignoring it) streams
    // 8000 deltas, and the client leaves before the usage chunk: it received 8000 tokens.
    let s = Scenario::start(json!({
        "models": [{"name": "metered", "limits": {"tokensPerMinute": 20000, "by": "global"},
                    "destinations": [{"name": "metered"}]}]
    }))
    .await;
    let before = remaining_tokens(&s).await;
    let start = Instant::now();
    let body = json!({"model": "metered", "stream": true, "max_tokens": 10, "messages": []}).to_string();
    let mut resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-test-deltas", "8000")
        .header("x-test-chunk-delay-ms", "0")
        .header("x-test-hold-last-ms", "30000")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut seen = 0usize;
    let mut text = Vec::new();
    while seen < 8000 {
        let chunk = resp.chunk().await.unwrap().expect("the stream ended early");
        text.extend_from_slice(&chunk);
        seen = text.windows(7).filter(|w| w == b"\"delta\"").count();
    }
    assert!(!String::from_utf8_lossy(&text).contains("\"usage\":{"), "usage arrived");
    drop(resp);
    // The exchange is logged (and charged) once Envoy sees the client leave.
    s.prometheus_when("the cut stream accounted", |t| {
        e2e::metric_if_made(
            t,
            "model_router_usage_missing_total",
            &[("reason", "incomplete")],
            "model_router_requests_total",
        ) >= 1.0
    })
    .await;
    let after = remaining_tokens(&s).await;
    // The bucket refills 333 tokens a second while this runs.
    let refill = (start.elapsed().as_secs_f64() * 20000.0 / 60.0).ceil() as i64 + 10;
    let charged = before - after;
    assert!(
        charged + refill >= 8000,
        "charged {charged} (refill up to {refill}) for 8000 delivered tokens"
    );
}
