//! Per-model telemetry in real Envoy: a scripted traffic mix, then /stats/prometheus parsed and
//! compared with what the backends really reported.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use e2e::prom::{self, Sample};
use e2e::Scenario;
use futures_util::StreamExt;
use serde_json::{json, Value};

fn config() -> Value {
    json!({
        "bodyRouting": true,
        "models": [
            {"name": "gpt-4o", "destinations": [{"name": "openai"}]},
            {"name": "claude-sonnet", "destinations": [{"name": "anthropic"}]},
            {"name": "llama", "destinations": [{"name": "llama-v1", "weight": 1}, {"name": "llama-v2", "weight": 1}]},
            {"name": "bge", "destinations": [{"name": "embedder"}]}
        ]
    })
}

type Key = (String, String, String);

/// Token sums the backends reported, by (model, destination, type), mapped the way the filter
/// documents it (Anthropic input = input + cache reads).
fn reported_tokens(s: &Scenario, model_of: &dyn Fn(&str) -> &'static str) -> BTreeMap<Key, u64> {
    let mut out = BTreeMap::new();
    for (dest, b) in &s.backends {
        for e in b.exchanges() {
            let Some(r) = e.reported.clone() else { continue };
            let anthropic = e.path.ends_with("/v1/messages");
            let input = if anthropic { r.input + r.cached_input } else { r.input };
            for (ty, n) in [
                ("input", input),
                ("output", r.output),
                ("cached_input", r.cached_input),
                ("reasoning", r.reasoning),
            ] {
                if n > 0 {
                    *out.entry((model_of(dest).to_string(), dest.clone(), ty.to_string()))
                        .or_default() += n;
                }
            }
        }
    }
    out
}

fn by_labels(samples: &[Sample], name: &str, keys: [&str; 3]) -> BTreeMap<Key, u64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name && s.value > 0.0) {
        let l = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        *out.entry((l(keys[0]), l(keys[1]), l(keys[2]))).or_default() += s.value as u64;
    }
    out
}

/// The samples once no request is in flight and the duration histogram holds `durations`
/// samples (histograms are merged from the workers after a scrape asks for it).
async fn scrape_when_idle(s: &Scenario, durations: u64) -> Vec<Sample> {
    let text = s
        .prometheus_when(&format!("idle, {durations} request durations recorded"), |t| {
            let samples = prom::parse(t).unwrap_or_else(|e| panic!("bad exposition: {e}"));
            prom::sum(&samples, "model_router_in_flight_requests", &[]) == 0.0
                && prom::sum(&samples, "model_router_request_duration_milliseconds_count", &[]) as u64 == durations
        })
        .await;
    prom::parse(&text).unwrap_or_else(|e| panic!("bad exposition: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_what_the_backends_reported() {
    let s = Scenario::start(config()).await;
    let chat = |model: &str, extra: Value| {
        let mut b = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        if let (Some(o), Some(e)) = (b.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        b.to_string()
    };
    let mut streams = 0;
    let mut ok = 0;
    for i in 0..3 {
        let r = s
            .post(
                "/v1/chat/completions",
                chat("gpt-4o", json!({"max_tokens": 4 + i})),
                &[],
            )
            .await;
        assert_eq!(r.status, 200);
        ok += 1;
    }
    for _ in 0..2 {
        let r = s
            .post(
                "/v1/chat/completions",
                chat(
                    "gpt-4o",
                    json!({"stream": true, "stream_options": {"include_usage": true}}),
                ),
                &[],
            )
            .await;
        assert_eq!(r.status, 200);
        streams += 1;
        ok += 1;
    }
    // Streaming without include_usage: no counts reported, none invented.
    let r = s
        .post("/v1/chat/completions", chat("llama", json!({"stream": true})), &[])
        .await;
    assert_eq!(r.status, 200);
    streams += 1;
    ok += 1;
    for stream in [true, true, false] {
        let r = s
            .post(
                "/v1/messages",
                chat("claude-sonnet", json!({"stream": stream, "max_tokens": 6})),
                &[],
            )
            .await;
        assert_eq!(r.status, 200);
        streams += stream as u32;
        ok += 1;
    }
    for _ in 0..2 {
        let r = s
            .post(
                "/v1/embeddings",
                json!({"model": "bge", "input": ["a", "b"]}).to_string(),
                &[],
            )
            .await;
        assert_eq!(r.status, 200);
        ok += 1;
    }
    for stream in [true, false] {
        let r = s
            .post(
                "/v1/responses",
                json!({"model": "llama", "input": "x", "stream": stream}).to_string(),
                &[],
            )
            .await;
        assert_eq!(r.status, 200);
        streams += stream as u32;
        ok += 1;
    }
    // Rejections.
    for body in [
        chat("nope", json!({})),
        chat("nope2", json!({})),
        "{\"messages\": [".to_string(),
    ] {
        let r = s.post("/v1/chat/completions", body, &[]).await;
        assert!(r.status == 404 || r.status == 400);
    }
    // A client that goes away mid-stream.
    let resp = s
        .client
        .post(s.envoy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-test-chunk-delay-ms", "150")
        .body(chat("gpt-4o", json!({"stream": true, "max_tokens": 30})))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut body = resp.bytes_stream();
    let first = body.next().await;
    assert!(first.is_some_and(|c| c.is_ok()));
    drop(body);
    streams += 1;
    // An upstream that resets mid-stream (after two events).
    let cut = s
        .client
        .post(s.envoy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-test-reset-after", "2")
        .body(chat("gpt-4o", json!({"stream": true, "max_tokens": 10})))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cut.status(), 200, "headers went out before the reset");
    assert!(cut.bytes().await.is_err(), "the client sees the stream cut");
    streams += 1;

    let samples = scrape_when_idle(&s, ok + 2 + 3).await;
    let in_flight: Vec<&Sample> = samples
        .iter()
        .filter(|x| x.name == "model_router_in_flight_requests")
        .collect();
    assert!(!in_flight.is_empty(), "in-flight gauge missing");
    assert!(
        in_flight.iter().all(|x| x.value == 0.0),
        "in flight not back to 0: {in_flight:?}"
    );

    // Tokens: exactly what the backends reported, per model, destination and type.
    let model_of = |dest: &str| match dest {
        "openai" => "gpt-4o",
        "anthropic" => "claude-sonnet",
        "embedder" => "bge",
        _ => "llama",
    };
    let want = reported_tokens(&s, &model_of);
    let got = by_labels(&samples, "model_router_tokens_total", ["model", "destination", "type"]);
    assert!(want.len() >= 8, "{want:?}");
    assert_eq!(got, want);

    // Requests by code class: 2xx per model; the rejected and the aborted one counted too.
    let requests = by_labels(
        &samples,
        "model_router_requests_total",
        ["model", "destination", "code_class"],
    );
    let total_2xx: u64 = requests.iter().filter(|(k, _)| k.2 == "2xx").map(|(_, v)| v).sum();
    // The client that went away and the stream the upstream cut are counted too.
    assert_eq!(total_2xx, ok + 2, "{requests:?}");
    assert_eq!(
        requests.get(&("other".into(), "other".into(), "4xx".into())),
        Some(&3),
        "{requests:?}"
    );
    assert_eq!(requests.get(&("bge".into(), "embedder".into(), "2xx".into())), Some(&2));

    // Histograms: one duration sample per counted request, TTFT only for streams.
    let count = |name: &str| prom::sum(&samples, name, &[]) as u64;
    let hist: Vec<String> = samples
        .iter()
        .filter(|x| x.name.contains("duration") || x.name.contains("first_token"))
        .map(|x| format!("{x:?}"))
        .collect();
    assert_eq!(
        count("model_router_request_duration_milliseconds_count"),
        ok + 2 + 3,
        "{hist:#?}"
    );
    assert_eq!(
        count("model_router_time_to_first_token_milliseconds_count"),
        streams as u64
    );
    assert!(samples
        .iter()
        .any(|x| x.name == "model_router_request_duration_milliseconds_bucket"
            && x.labels.get("le").map(String::as_str) == Some("81920")));
    assert!(samples
        .iter()
        .any(|x| x.name == "model_router_time_to_first_token_milliseconds_bucket"
            && x.labels.get("le").map(String::as_str) == Some("7500")));
    let ttft_json = prom::sum(
        &samples,
        "model_router_time_to_first_token_milliseconds_count",
        &[("model", "bge")],
    );
    assert_eq!(ttft_json, 0.0, "no TTFT for JSON responses");

    // Rejections by reason.
    assert_eq!(
        prom::sum(
            &samples,
            "model_router_rejected_total",
            &[("reason", "model_not_found")]
        ),
        2.0
    );
    assert_eq!(
        prom::sum(&samples, "model_router_rejected_total", &[("reason", "invalid_json")]),
        1.0
    );

    // Cardinality guard: only configured names (or `other`) as label values.
    for smp in samples.iter().filter(|x| x.name.starts_with("model_router_")) {
        if let Some(m) = smp.labels.get("model") {
            assert!(
                ["gpt-4o", "claude-sonnet", "llama", "bge", "other"].contains(&m.as_str()),
                "{smp:?}"
            );
        }
    }

    // The access log carries model, destination and tokens.
    let line = s
        .access_log_line("model=bge")
        .await
        .unwrap_or_else(|| panic!("no access log line for bge:\n{}", s.access_log()));
    let emb = s.backend("embedder").exchanges()[0]
        .reported
        .clone()
        .unwrap_or_default();
    assert!(line.contains("destination=embedder"), "{line}");
    assert!(line.contains(&format!("input_tokens={}", emb.input)), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_stream_usage_is_counted() {
    let mut cfg = config();
    cfg["injectStreamUsage"] = json!(true);
    let s = Scenario::start(cfg).await;
    let body = json!({"model": "gpt-4o", "stream": true, "max_tokens": 5, "messages": []}).to_string();
    let r = s.post("/v1/chat/completions", body, &[]).await;
    assert_eq!(r.status, 200);
    let seen = s
        .backend("openai")
        .exchanges()
        .pop()
        .unwrap_or_else(|| panic!("nothing reached openai"));
    assert_eq!(
        seen.json()["stream_options"]["include_usage"],
        true,
        "{}",
        String::from_utf8_lossy(&seen.body)
    );
    assert_eq!(
        seen.header("content-length"),
        Some(seen.body.len().to_string().as_str())
    );
    let reported = seen.reported.unwrap_or_default();
    assert!(reported.output == 5);
    let samples = scrape_when_idle(&s, 1).await;
    let out = prom::sum(
        &samples,
        "model_router_tokens_total",
        &[("model", "gpt-4o"), ("type", "output")],
    );
    assert_eq!(out, 5.0);
    // The client still gets the stream byte for byte as the backend sent it.
    assert_eq!(r.body, seen.sent);
}
