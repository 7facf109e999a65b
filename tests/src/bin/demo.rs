//! The README's first command: real Envoy with model_router.wasm in front of local
//! OpenAI-compatible backends, a mix of real requests, then the routing and token metrics.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use e2e::prom;
use e2e::Scenario;
use serde_json::json;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let config = json!({
        "stickyHeader": "x-user-id",
        "bodyRouting": true,
        "injectStreamUsage": true,
        "models": [
            {"name": "llama-3-8b", "aliases": ["gpt-3.5-turbo"], "upstreamModel": "meta-llama/Meta-Llama-3-8B-Instruct",
             "destinations": [{"name": "llama-v1", "weight": 90}, {"name": "llama-v2", "weight": 10}]},
            {"name": "gpt-4o", "destinations": [{"name": "openai"}]},
            {"name": "bge-small", "destinations": [{"name": "embedder"}]}
        ]
    });
    println!(
        "== plugin configuration\n{}",
        serde_json::to_string_pretty(&config).unwrap()
    );
    let s = Scenario::start(config).await;
    println!(
        "\n== Envoy 1.40 with model_router.wasm listening on {}",
        s.envoy.url("/")
    );
    let chat = |model: &str, stream: bool| {
        json!({"model": model, "stream": stream, "max_tokens": 8, "messages": [{"role": "user", "content": "hello"}]})
            .to_string()
    };

    let mut split: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..100 {
        let r = s.post("/v1/chat/completions", chat("llama-3-8b", false), &[]).await;
        *split
            .entry(r.header("x-ai-route").unwrap_or("-").to_string())
            .or_default() += 1;
    }
    println!("\n== 100 chat requests for llama-3-8b (canary 90/10): {split:?}");
    let r = s.post("/v1/chat/completions", chat("gpt-3.5-turbo", false), &[]).await;
    let dest = r.header("x-ai-route").unwrap_or("-").to_string();
    let seen = s.backend(&dest).exchanges().pop().map(|e| e.json()["model"].clone());
    println!(
        "== alias gpt-3.5-turbo -> routed to {dest}; the backend saw model {}",
        seen.unwrap_or_default()
    );
    for _ in 0..5 {
        let r = s.post("/v1/chat/completions", chat("gpt-4o", true), &[]).await;
        assert_eq!(r.status, 200);
    }
    println!("== 5 streaming chat requests for gpt-4o (usage injected, counted from SSE)");
    for _ in 0..5 {
        s.post(
            "/v1/embeddings",
            json!({"model": "bge-small", "input": ["a", "b"]}).to_string(),
            &[],
        )
        .await;
    }
    println!("== 5 embeddings requests for bge-small");
    let r = s.post("/v1/chat/completions", chat("no-such-model", false), &[]).await;
    println!("== unknown model -> {} {}", r.status, r.text());
    let r = s.post("/v1/chat/completions", "{not json", &[]).await;
    println!("== broken JSON -> {} {}", r.status, r.text());

    let text = s.prometheus_flushed().await;
    let samples = prom::parse(&text).unwrap();
    println!("\n== per-model metrics from Envoy /stats/prometheus");
    println!(
        "{:<12} {:<10} {:>8} {:>7} {:>9} {:>9} {:>9}",
        "MODEL", "DEST", "REQUESTS", "ERRORS", "TOKENS_IN", "TOKENS_OUT", "IN_FLIGHT"
    );
    let mut rows: BTreeMap<(String, String), [f64; 5]> = BTreeMap::new();
    for x in samples.iter().filter(|x| x.name.starts_with("model_router_")) {
        let key = (
            x.labels.get("model").cloned().unwrap_or_default(),
            x.labels.get("destination").cloned().unwrap_or_default(),
        );
        let row = rows.entry(key).or_default();
        match (
            x.name.as_str(),
            x.labels.get("code_class").map(String::as_str),
            x.labels.get("type").map(String::as_str),
        ) {
            ("model_router_requests_total", cc, _) => {
                row[0] += x.value;
                if cc != Some("2xx") {
                    row[1] += x.value;
                }
            }
            ("model_router_tokens_total", _, Some("input")) => row[2] += x.value,
            ("model_router_tokens_total", _, Some("output")) => row[3] += x.value,
            ("model_router_in_flight_requests", _, _) => row[4] += x.value,
            _ => {}
        }
    }
    for ((m, d), r) in rows.iter().filter(|(k, _)| !k.0.is_empty()) {
        println!(
            "{m:<12} {d:<10} {:>8} {:>7} {:>9} {:>9} {:>9}",
            r[0], r[1], r[2], r[3], r[4]
        );
    }
    println!("\n== raw series (excerpt)");
    for line in text
        .lines()
        .filter(|l| l.starts_with("model_router_tokens_total") || l.starts_with("model_router_rejected_total"))
    {
        println!("{line}");
    }
}
