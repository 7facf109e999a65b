//! Per-model access control by workload identity and rate limits, in real Envoy: an mTLS
//! listener whose clients present SPIFFE URI SANs, two worker threads (so the limit buckets must
//! be shared across VMs), token limits charged from streaming usage, and a trusted identity header.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::pki::Pki;
use e2e::{prom, Scenario};
use reqwest::Method;
use serde_json::{json, Value};

const TEAM_A: &str = "spiffe://cluster.local/ns/team-a/sa/web";
const TEAM_B: &str = "spiffe://cluster.local/ns/team-b/sa/app";

fn config() -> Value {
    json!({
        "models": [
            {"name": "gpt-4o", "allow": ["spiffe://cluster.local/ns/team-a/*"], "destinations": [{"name": "openai"}]},
            {"name": "llama", "allow": [TEAM_B], "destinations": [{"name": "llama"}]},
            {"name": "limited", "limits": {"requestsPerMinute": 20}, "destinations": [{"name": "lim"}]},
            {"name": "metered", "limits": {"tokensPerMinute": 60, "by": "global"}, "destinations": [{"name": "meter"}]}
        ]
    })
}

fn chat(model: &str) -> Vec<u8> {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
        .into_bytes()
}

async fn post(s: &Scenario, c: &reqwest::Client, model: &str) -> e2e::Reply {
    s.send_with(c, Method::POST, "/v1/chat/completions", chat(model), &[])
        .await
}

async fn stream(s: &Scenario, c: &reqwest::Client) -> e2e::Reply {
    let body = json!({"model": "metered", "stream": true, "max_tokens": 30, "stream_options": {"include_usage": true}, "messages": []});
    s.send_with(
        c,
        Method::POST,
        "/v1/chat/completions",
        body.to_string().into_bytes(),
        &[],
    )
    .await
}

async fn with_identity(s: &Scenario, id: &str) -> u16 {
    let headers: &[(&str, &str)] = &[("x-client-identity", id)];
    s.post(
        "/v1/chat/completions",
        chat("gpt-4o"),
        if id.is_empty() { &[] } else { headers },
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_limits_and_token_budgets_over_mtls() {
    let pki = Arc::new(Pki::new());
    let s = Scenario::start_with(
        config(),
        e2e::Options {
            tls: Some(pki.clone()),
            concurrency: 2,
            ..Default::default()
        },
    )
    .await;
    let a = pki.client("team-a", Some(TEAM_A));
    let b = pki.client("team-b", Some(TEAM_B));

    // Allow lists: exact IDs and namespace prefixes.
    assert_eq!(post(&s, &a, "gpt-4o").await.status, 200);
    assert_eq!(post(&s, &b, "llama").await.status, 200);
    let denied = post(&s, &a, "llama").await;
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert_eq!(denied.json()["error"]["code"], "model_access_denied");
    assert!(denied.json()["error"]["message"].as_str().unwrap().contains(TEAM_A));
    assert_eq!(post(&s, &b, "gpt-4o").await.status, 403);

    // 40 concurrent requests against 20 per minute, across two worker VMs: the bucket is shared.
    let burst = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (c, url) = (a.clone(), s.url("/v1/chat/completions"));
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(url)
                .header("content-type", "application/json")
                .body(chat("limited"))
                .send()
                .await
                .unwrap();
            let h = |k: &str| r.headers().get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
            (
                r.status().as_u16(),
                h("retry-after"),
                h("x-ratelimit-limit-requests"),
                h("x-ratelimit-remaining-requests"),
            )
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        let (status, retry, limit, remaining) = t.await.unwrap();
        assert_eq!(
            limit.as_deref(),
            Some("20"),
            "x-ratelimit-limit-requests on every response"
        );
        match status {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
                assert_eq!(remaining.as_deref(), Some("0"));
            }
            other => panic!("unexpected {other}"),
        }
    }
    // 20 tokens, plus the refills while the burst ran (one per 3 s; more on a slow machine).
    let refills = 1 + (burst.elapsed().as_secs_f64() / 3.0).floor() as u32;
    assert!(
        ok >= 20 && ok <= 20 + refills,
        "{ok} allowed, {limited} limited, {refills} refills possible"
    );
    assert_eq!(ok + limited, 40);
    // Another principal has its own bucket.
    assert_eq!(post(&s, &b, "limited").await.status, 200);
    // The bucket is empty (a refill may just have landed, so allow a few tries for the 429).
    let mut r = post(&s, &a, "limited").await;
    for _ in 0..4 {
        if r.status == 429 {
            break;
        }
        r = post(&s, &a, "limited").await;
    }
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(r.json()["error"]["type"], "requests");
    // Recovery: one request every 3 s (the refill is the filter's clock in Envoy: poll for it).
    let empty = Instant::now();
    let mut refused_while_empty = 0;
    loop {
        let r = post(&s, &a, "limited").await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 429, "{}", r.text());
        refused_while_empty += 1;
        assert!(empty.elapsed() < Duration::from_secs(8), "the bucket never refilled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Token budget charged from streaming usage: 60 tokens per minute, each stream reports > 40.
    assert_eq!(stream(&s, &a).await.status, 200);
    let second = stream(&s, &b).await;
    assert_eq!(second.status, 200, "the budget was not yet below zero");
    let third = stream(&s, &a).await;
    assert_eq!(third.status, 429, "{}", third.text());
    assert_eq!(third.json()["error"]["type"], "tokens");
    assert_eq!(third.header("x-ratelimit-remaining-tokens"), Some("0"));
    assert_eq!(third.header("x-ratelimit-limit-tokens"), Some("60"));

    let samples = prom::parse(&s.prometheus()).unwrap();
    assert_eq!(
        prom::sum(
            &samples,
            "model_router_rejected_total",
            &[("reason", "model_access_denied")]
        ),
        2.0
    );
    let limited_total = prom::sum(
        &samples,
        "model_router_rejected_total",
        &[("reason", "rate_limit_exceeded")],
    );
    assert_eq!(limited_total as u32, limited + refused_while_empty + 2);
    let log = s.envoy.log();
    assert!(
        !log.contains("panicked") && !log.contains("wasm trap"),
        "{}",
        e2e::tail(&log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_identity_header_for_gateways_without_mtls() {
    let mut cfg = config();
    cfg["identityHeader"] = json!("x-client-identity");
    let s = Scenario::start(cfg).await;
    assert_eq!(with_identity(&s, TEAM_A).await, 200, "{}", e2e::tail(&s.envoy.log()));
    assert_eq!(with_identity(&s, TEAM_B).await, 403);
    for junk in [
        "team-a",
        "spiffe://cluster.local/ns/team-a/ sa",
        "",
        "spiffe://cluster.local/ns/team-a\tx",
    ] {
        assert_eq!(with_identity(&s, junk).await, 403, "{junk:?}");
    }
    let long = format!("spiffe://cluster.local/ns/team-a/{}", "x".repeat(4000));
    assert_eq!(with_identity(&s, &long).await, 403);
    // Binary junk in the header never breaks the VM.
    let r = s
        .client
        .post(s.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header(
            "x-client-identity",
            reqwest::header::HeaderValue::from_bytes(b"spiffe://\xff\xfe\x80").unwrap(),
        )
        .body(chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(with_identity(&s, TEAM_A).await, 200, "still working");
}
