//! Routing in real Envoy 1.40 with the built filter.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::Scenario;
use serde_json::{json, Value};

fn config(extra: Value) -> Value {
    let mut c = json!({
        "stickyHeader": "x-user-id",
        "bodyRouting": true,
        "models": [
            {"name": "llama-3-8b", "aliases": ["gpt-3.5-turbo"],
             "upstreamModel": "meta-llama/Meta-Llama-3-8B-Instruct",
             "destinations": [{"name": "llama-v1", "weight": 90}, {"name": "llama-v2", "weight": 10}]},
            {"name": "gpt-4o", "destinations": [{"name": "openai"}]},
            {"name": "resnet", "destinations": [{"name": "triton"}]}
        ]
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn chat(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}]}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_body_model_and_by_kserve_path() {
    let s = Scenario::start(config(json!({}))).await;
    let r = s.post("/v1/chat/completions", chat("gpt-4o"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-backend"), Some("openai"));
    assert_eq!(r.header("x-ai-route"), Some("openai"));
    let seen = &s.backend("openai").exchanges()[0];
    assert_eq!(seen.header("x-ai-route"), Some("openai"));
    assert_eq!(seen.header("x-ai-model"), Some("gpt-4o"));
    assert_eq!(
        seen.body.as_ref(),
        chat("gpt-4o").as_bytes(),
        "body untouched without upstreamModel"
    );

    let r = s
        .post("/v2/models/resnet/versions/2/infer", r#"{"inputs":[]}"#, &[])
        .await;
    assert_eq!(r.header("x-backend"), Some("triton"), "{}", r.text());
    assert_eq!(r.json()["model_name"], "resnet");
    assert_eq!(s.backend("triton").exchanges()[0].header("x-ai-model"), Some("resnet"));

    // A GET passes through untouched to the default route.
    let r = s.send("GET", "/v1/models", Vec::new(), &[]).await;
    assert_eq!(r.header("x-backend"), Some("default"));
    assert_eq!(r.header("x-ai-route"), None);
    assert!(s.default.exchanges()[0].header("x-ai-route").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_and_stickiness() {
    let s = Scenario::start(config(json!({}))).await;
    let n = 300;
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..n {
        let r = s.post("/v1/chat/completions", chat("llama-3-8b"), &[]).await;
        assert_eq!(r.status, 200);
        *counts
            .entry(r.header("x-backend").unwrap_or("?").to_string())
            .or_default() += 1;
    }
    // Binomial(300, 0.1): mean 30, sd 5.2; 4.5 sd either side.
    let v2 = counts.get("llama-v2").copied().unwrap_or(0);
    assert!((7..=54).contains(&v2), "split {counts:?}");
    assert_eq!(counts.values().sum::<u32>(), n);
    assert_eq!(counts.len(), 2, "{counts:?}");

    // Sticky: the same user always lands on the same destination...
    let mut per_user: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..3 {
        for u in 0..100 {
            let user = format!("user-{u}");
            let r = s
                .post("/v1/chat/completions", chat("llama-3-8b"), &[("x-user-id", &user)])
                .await;
            let got = r.header("x-ai-route").unwrap_or("?").to_string();
            if round == 0 {
                per_user.insert(user, got);
            } else {
                assert_eq!(per_user[&user], got, "{user} moved in round {round}");
            }
        }
    }
    // ...and across users the split still follows the weights: users do spread over both
    // destinations (100 users, p=0.1: mean 10, sd 3; 1..=25 is more than 3 sd either side).
    let v2_users = per_user.values().filter(|d| *d == "llama-v2").count();
    assert!(
        (1..=25).contains(&v2_users),
        "{v2_users} of 100 users on the 10% destination"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_and_rewrite_as_seen_by_the_backend() {
    let s = Scenario::start(config(json!({}))).await;
    // Odd spacing, escapes, a nested "model" and unicode must all survive byte for byte.
    let body = "{ \"messages\" : [{\"role\":\"user\",\"content\":\"say \\\"model\\\" \u{e9}\"}],\n  \"model\":\t\"gpt-3.5-turbo\" , \"tools\":[{\"model\":\"x\"}] }";
    let r = s.post("/v1/chat/completions", body, &[("x-user-id", "alice")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let dest = r.header("x-ai-route").unwrap_or("?").to_string();
    let seen = s
        .backend(&dest)
        .exchanges()
        .pop()
        .unwrap_or_else(|| panic!("{dest} saw nothing"));
    let want = body.replace("\"gpt-3.5-turbo\"", "\"meta-llama/Meta-Llama-3-8B-Instruct\"");
    assert_eq!(String::from_utf8_lossy(&seen.body), want);
    assert_eq!(seen.header("content-length"), Some(want.len().to_string().as_str()));
    assert_eq!(seen.header("x-ai-model"), Some("llama-3-8b"));
    assert_eq!(seen.header("x-ai-route"), Some(dest.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_of_the_contract() {
    let s = Scenario::start(config(json!({
        "onUnknownModel": "reject", "onMissingModel": "reject", "onInvalidBody": "reject",
        "onOversize": "reject", "maxBodyBytes": 2048
    })))
    .await;
    let big = json!({"model": "gpt-4o", "input": "x".repeat(4096)}).to_string();
    let cases: &[(&str, String, u16, &str)] = &[
        ("/v1/chat/completions", chat("no-such-model"), 404, "model_not_found"),
        ("/v2/models/no-such-model/infer", "{}".into(), 404, "model_not_found"),
        ("/v1/chat/completions", "{\"messages\": [".into(), 400, "invalid_json"),
        ("/v1/chat/completions", "\u{1}\u{2}binary".into(), 400, "invalid_json"),
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-4o","messages":[],"model":"resnet"}"#.into(),
            400,
            "duplicate_model",
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "gpt-4o", "messages": ["#.into(),
            400,
            "invalid_json",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-4o"} trailing"#.into(),
            400,
            "invalid_json",
        ),
        ("/v1/chat/completions", String::new(), 400, "model_required"),
        (
            "/v1/chat/completions",
            r#"{"messages":[]}"#.into(),
            400,
            "model_required",
        ),
        ("/v1/embeddings", big, 413, "body_too_large"),
    ];
    for (path, body, status, code) in cases {
        let r = s.post(path, body.clone(), &[]).await;
        assert_eq!(r.status, *status, "{path} {body:.60}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = r.json();
        assert_eq!(v["error"]["code"], *code, "{}", r.text());
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // None of them reached a backend.
    let reached: usize = s.backends.values().map(|b| b.exchanges().len()).sum::<usize>() + s.default.exchanges().len();
    assert_eq!(reached, 0);
    // Passthrough policies let the same requests through to the default route.
    let s = Scenario::start(config(json!({
        "onUnknownModel": "passthrough", "onMissingModel": "passthrough", "onInvalidBody": "passthrough",
        "onOversize": "passthrough", "maxBodyBytes": 2048
    })))
    .await;
    for body in [
        chat("no-such-model"),
        "{\"messages\": [".into(),
        r#"{"messages":[]}"#.into(),
    ] {
        let r = s.post("/v1/chat/completions", body, &[]).await;
        assert_eq!(r.header("x-backend"), Some("default"));
    }
}

/// A tiny deterministic generator for junk bodies.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn junk_bodies() -> Vec<Vec<u8>> {
    let mut g = Lcg(42);
    let mut out: Vec<Vec<u8>> = Vec::new();
    let valid = chat("gpt-4o").into_bytes();
    for i in 0..130 {
        let body = match i % 6 {
            0 => (0..(g.next() % 300)).map(|_| g.next() as u8).collect(),
            1 => valid[..(g.next() as usize % valid.len())].to_vec(),
            2 => {
                let mut v = valid.clone();
                let at = g.next() as usize % v.len();
                v[at] = g.next() as u8;
                v
            }
            3 => "[".repeat(1 + g.next() as usize % 2000).into_bytes(),
            4 => format!("{{\"model\":\"{}\"}}", "\\u00".repeat(g.next() as usize % 50)).into_bytes(),
            _ => format!(
                "{{\"model\":{}}}",
                ["1", "null", "{}", "[\"gpt-4o\"]", "\"\\ud800\"", "tru"][i % 6]
            )
            .into_bytes(),
        };
        out.push(body);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_never_breaks_the_vm() {
    let mut s = Scenario::start(config(json!({}))).await;
    for (i, body) in junk_bodies().into_iter().enumerate() {
        let ct = if i % 7 == 0 {
            "application/octet-stream"
        } else {
            "application/json"
        };
        let r = s.post("/v1/chat/completions", body, &[("content-type", ct)]).await;
        assert!(
            matches!(r.status, 200 | 400 | 404 | 413),
            "junk #{i}: {} {}",
            r.status,
            r.text()
        );
    }
    assert!(s.envoy.alive());
    let r = s.post("/v1/chat/completions", chat("gpt-4o"), &[]).await;
    assert_eq!(r.header("x-backend"), Some("openai"));
    let log = s.envoy.log();
    for bad in ["panicked", "Function: proxy_on", "wasm trap", "Wasm VM failed"] {
        assert!(!log.contains(bad), "envoy log has {bad:?}:\n{}", e2e::tail(&log));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_passes_through_byte_identical() {
    let s = Scenario::start(config(json!({}))).await;
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "stream": true, "max_tokens": 7, "stream_options": {"include_usage": true}, "messages": []}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "stream": true, "messages": []}),
        ),
    ] {
        let r = s.post(path, body.to_string(), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        let sent = s
            .backend("openai")
            .exchanges()
            .pop()
            .map(|e| e.sent)
            .unwrap_or_default();
        assert!(!sent.is_empty());
        assert_eq!(r.body, sent, "stream altered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_body_routing_requests_complete_routed_by_path_only() {
    let s = Scenario::start(config(json!({"bodyRouting": false}))).await;
    let started = Instant::now();
    let r = s.post("/v1/chat/completions", chat("gpt-3.5-turbo"), &[]).await;
    assert_eq!(r.status, 200);
    // The route was chosen from the headers: the default route, but the rewrite still happened.
    assert_eq!(r.header("x-backend"), Some("default"));
    let seen = s
        .default
        .exchanges()
        .pop()
        .unwrap_or_else(|| panic!("nothing reached default"));
    assert_eq!(seen.json()["model"], "meta-llama/Meta-Llama-3-8B-Instruct");
    assert!(
        seen.header("content-length").is_none()
            || seen.header("content-length") == Some(seen.body.len().to_string().as_str())
    );
    // Unknown models are still rejected from the body.
    let r = s.post("/v1/chat/completions", chat("nope"), &[]).await;
    assert_eq!(r.status, 404);
    let r = s.post("/v2/models/resnet/infer", "{}", &[]).await;
    assert_eq!(r.header("x-backend"), Some("triton"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_that_cannot_hold_headers_does_not_hang_requests() {
    let s = Scenario::start_with(
        config(json!({})),
        e2e::Options {
            allow_hold: false,
            ..Default::default()
        },
    )
    .await;
    // Three held requests in a row never get their body: each is let go after the safety net's
    // 1 s, unrouted; then the VM routes from headers only.
    for i in 0..3 {
        let started = Instant::now();
        let r = s.post("/v1/chat/completions", chat("gpt-4o"), &[]).await;
        let took = started.elapsed();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-backend"), Some("default"), "released unrouted");
        assert_eq!(r.header("x-ai-route"), None, "no destination claimed");
        assert!(took < Duration::from_secs(5), "request {i} took {took:?}");
    }
    let started = Instant::now();
    for _ in 0..5 {
        let r = s.post("/v1/chat/completions", chat("gpt-4o"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ai-route"), None);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "later requests waited: {:?}",
        started.elapsed()
    );
    // Unknown models are still refused from the body, and path routing still works.
    let r = s.post("/v1/chat/completions", chat("nope"), &[]).await;
    assert_eq!(r.status, 404);
    let r = s.post("/v2/models/resnet/infer", "{}", &[]).await;
    assert_eq!(r.header("x-backend"), Some("triton"));
    let log = s.envoy.log();
    assert!(log.contains("did not arrive within 1 s"), "{}", e2e::tail(&log));
    assert!(log.contains("routing from headers only"), "{}", e2e::tail(&log));
    let text = s.prometheus();
    assert_eq!(e2e::metric(&text, "model_router_hold_released_total", &[]), 3.0);
}

/// With access rules, a held request whose body never comes is refused (retryably), never let
/// through unchecked; once the VM routes from headers, the body still admits or refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_that_cannot_hold_headers_never_skips_access_rules() {
    let mut cfg = config(json!({}));
    cfg["models"][1]["allow"] = json!(["spiffe://td/ns/a/*"]);
    let s = Scenario::start_with(
        cfg,
        e2e::Options {
            allow_hold: false,
            ..Default::default()
        },
    )
    .await;
    for _ in 0..3 {
        let r = s.post("/v1/chat/completions", chat("gpt-4o"), &[]).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "body_not_received");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    let r = s.post("/v1/chat/completions", chat("gpt-4o"), &[]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = s.post("/v1/chat/completions", chat("llama-3-8b"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(s.backend("openai").exchanges().is_empty());
}
