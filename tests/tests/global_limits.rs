//! Global limits in real Envoy against the real rate limit stack: two Envoys (two "replicas" of
//! a gateway), each calling its own `limitador-server`, both counting in one Redis. The limits
//! file the Limitadors load is the ConfigMap `wasmpack manifests` renders from the same
//! configuration.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e::rate_limit::{Blackhole, Limitador, Redis};
use e2e::{metric, metric_if_made, Options, Scenario};
use serde_json::{json, Value};
use wasmpack::bootstrap::Upstream;

/// What the configuration names the service (an Istio outbound cluster, as in a mesh).
const CLUSTER: &str = "outbound|8081||limitador.rate-limits.svc.cluster.local";
const FAILURES: &str = "model_router_rate_limit_service_failures_total";

/// The rate limit service's failures: the series is made on the first failure, so none is zero.
fn no_failures_yet(text: &str) -> f64 {
    metric_if_made(text, FAILURES, &[], "model_router_requests_total")
}

fn config(failure_mode: &str, timeout: &str) -> Value {
    json!({
        "rateLimitService": {"cluster": CLUSTER, "domain": "llm-gateway", "timeout": timeout, "failureMode": failure_mode},
        "models": [
            {"name": "team-model", "limits": {"requestsPerMinute": 20, "by": "global", "mode": "global"},
             "destinations": [{"name": "tm"}]},
            {"name": "budget", "limits": {"tokensPerMinute": 50, "by": "header:x-tenant", "mode": "global"},
             "destinations": [{"name": "budget"}]}
        ]
    })
}

/// The Limitador limits file `wasmpack manifests` renders for `config` (its ConfigMap's data).
fn rendered_limits(config: &Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let out = std::process::Command::new(e2e::demo::wasmpack_bin())
        .args(["manifests", "--config"])
        .arg(&cfg)
        .args([
            "--image",
            &format!("registry.example.com/model-router@sha256:{}", "a".repeat(64)),
        ])
        .args([
            "--namespace",
            "ai-gateway",
            "--gateway",
            "ai-gw",
            "--hostname",
            "llm.example.com",
        ])
        .args(["--only", "rate-limits"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for doc in text.split("\n---") {
        let v: Value = serde_saphyr::from_str(doc).unwrap_or(Value::Null);
        if v["kind"].as_str() == Some("ConfigMap") {
            assert_eq!(
                v["metadata"]["namespace"].as_str(),
                Some("rate-limits"),
                "next to Limitador"
            );
            return v["data"]["limits.yaml"].as_str().unwrap().to_string();
        }
    }
    panic!("no ConfigMap in:\n{text}")
}

async fn replica(config: &Value, rls_port: u16) -> Scenario {
    Scenario::start_with(
        config.clone(),
        Options {
            concurrency: 2,
            grpc_clusters: vec![Upstream {
                name: CLUSTER.into(),
                host: "127.0.0.1".into(),
                port: rls_port,
            }],
            ..Default::default()
        },
    )
    .await
}

fn chat(model: &str, extra: Value) -> Vec<u8> {
    let mut v = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v.to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_one_request_limit_exactly() {
    // A timeout long enough for a loaded test machine: this counts, it does not time.
    let cfg = config("allow", "5s");
    let limits = rendered_limits(&cfg);
    let redis = Redis::start();
    let (l1, l2) = (Limitador::start(&limits, &redis), Limitador::start(&limits, &redis));
    assert!(l1.limits("llm-gateway").contains("team-model requests per minute"));
    let (a, b) = (replica(&cfg, l1.rls_port).await, replica(&cfg, l2.rls_port).await);

    // 40 requests, alternately through each replica, against 20 per minute for everyone:
    // exactly 20 are admitted, wherever they arrive.
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..40 {
        let s = if i % 2 == 0 { &a } else { &b };
        let r = s.post("/v1/chat/completions", chat("team-model", json!({})), &[]).await;
        match r.status {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert!(r.header("retry-after").is_some(), "{}", r.text());
                assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
                assert_eq!(r.json()["error"]["type"], "requests");
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    let failures: f64 = [&a, &b].iter().map(|s| no_failures_yet(&s.prometheus())).sum();
    assert_eq!(failures, 0.0, "the service answered every call");
    assert_eq!((ok, limited), (20, 20), "exactly the limit, across both replicas");
    let served = a.backend("tm").exchanges().len() + b.backend("tm").exchanges().len();
    assert_eq!(served, 20, "only admitted requests reached the model");
    for s in [&a, &b] {
        let text = s.prometheus();
        assert_eq!(no_failures_yet(&text), 0.0, "{}", e2e::tail(&s.envoy.log()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_budget_spent_on_one_replica_is_spent_on_the_other_and_recovers() {
    let cfg = config("deny", "500ms");
    let limits = rendered_limits(&cfg);
    let redis = Redis::start();
    let (l1, l2) = (Limitador::start(&limits, &redis), Limitador::start(&limits, &redis));
    let (a, b) = (replica(&cfg, l1.rls_port).await, replica(&cfg, l2.rls_port).await);
    let team_a = [("x-tenant", "team-a")];
    let team_b = [("x-tenant", "team-b")];

    // A real stream through replica A; its usage (input + 50 output) is more than the budget.
    let stream = chat("budget", json!({"stream": true, "max_tokens": 50}));
    let r = a.post("/v1/chat/completions", stream.clone(), &team_a).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("\"usage\""),
        "the filter asked for usage: {}",
        r.text()
    );
    let reported = a.backend("budget").exchanges()[0].reported.clone().unwrap();
    assert!(reported.input + reported.output > 50, "{reported:?}");

    // The Report is sent as the stream ends: replica B refuses team-a as soon as it is counted.
    let mut refused = None;
    for _ in 0..50 {
        let r = b.post("/v1/chat/completions", chat("budget", json!({})), &team_a).await;
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = refused.expect("team-a refused on the other replica");
    assert_eq!(refused.json()["error"]["type"], "tokens");
    assert!(refused.text().contains("counted across all proxies"));
    // Another caller has its own budget.
    let r = b.post("/v1/chat/completions", chat("budget", json!({})), &team_b).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The window (a minute, from the first tokens counted) ends: team-a gets through again.
    let started = Instant::now();
    loop {
        let r = b
            .post(
                "/v1/chat/completions",
                chat("budget", json!({"max_tokens": 1})),
                &team_a,
            )
            .await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(
            started.elapsed() < Duration::from_secs(75),
            "the budget never recovered"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for s in [&a, &b] {
        assert_eq!(no_failures_yet(&s.prometheus()), 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrent_burst_over_both_replicas_is_never_refused_below_the_limit() {
    // Limitador's Redis storage reads the counter, then increments it (two round trips): in a
    // burst, requests that read the same value all pass. It never refuses below the limit, and
    // it over-admits only within that window (docs/global-limits.md); this checks both sides.
    let cfg = config("allow", "5s");
    let limits = rendered_limits(&cfg);
    let redis = Redis::start();
    let (l1, l2) = (Limitador::start(&limits, &redis), Limitador::start(&limits, &redis));
    let (a, b) = (replica(&cfg, l1.rls_port).await, replica(&cfg, l2.rls_port).await);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = if i % 2 == 0 { &a } else { &b };
        let (client, url) = (s.client.clone(), s.url("/v1/chat/completions"));
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(chat("team-model", json!({})))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    assert!(ok >= 20, "refused below the limit: {ok} of 40 admitted");
    eprintln!("burst of 40 over two replicas: {ok} admitted (limit 20)");
    // Once the burst is counted, nobody else gets in, on either replica.
    for s in [&a, &b] {
        let r = s.post("/v1/chat/completions", chat("team-model", json!({})), &[]).await;
        assert_eq!(r.status, 429, "{}", r.text());
    }
    let served = a.backend("tm").exchanges().len() + b.backend("tm").exchanges().len();
    assert_eq!(served, ok, "only admitted requests reached the model");
}

/// Requests through `s` for a model with a global limit: (statuses, slowest).
async fn burst(s: &Scenario, n: usize) -> (Vec<u16>, Duration) {
    let mut statuses = Vec::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        let r = s.post("/v1/chat/completions", chat("team-model", json!({})), &[]).await;
        slowest = slowest.max(t.elapsed());
        statuses.push(r.status);
    }
    (statuses, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_that_is_down_or_hangs_gets_the_failure_mode_and_nobody_waits() {
    let redis = Redis::start();
    let limits = rendered_limits(&config("allow", "300ms"));
    let mut lim = Limitador::start(&limits, &redis);
    let allow = replica(&config("allow", "300ms"), lim.rls_port).await;
    let deny = replica(&config("deny", "300ms"), lim.rls_port).await;
    let (statuses, _) = burst(&allow, 2).await;
    assert_eq!(statuses, vec![200, 200], "the service answers");

    // Limitador stopped: allow lets requests through, deny refuses them; both counted.
    lim.stop();
    let (statuses, _) = burst(&allow, 3).await;
    assert_eq!(statuses, vec![200; 3]);
    let (statuses, _) = burst(&deny, 3).await;
    assert_eq!(statuses, vec![503; 3]);
    let r = deny
        .post("/v1/chat/completions", chat("team-model", json!({})), &[])
        .await;
    assert_eq!(r.json()["error"]["code"], "rate_limit_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        metric(
            &allow.prometheus(),
            FAILURES,
            &[("call", "requests"), ("reason", "unavailable")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &deny.prometheus(),
            FAILURES,
            &[("call", "requests"), ("reason", "unavailable")]
        ),
        4.0
    );
    assert_eq!(
        metric(
            &deny.prometheus(),
            "model_router_rejected_total",
            &[("reason", "rate_limit_unavailable")]
        ),
        4.0
    );
    assert!(allow.backend("tm").exchanges().len() == 5 && deny.backend("tm").exchanges().is_empty());

    // A service that accepts and never answers: each request waits the timeout, not more.
    let hole = Blackhole::start();
    let hung_allow = replica(&config("allow", "300ms"), hole.port).await;
    let hung_deny = replica(&config("deny", "300ms"), hole.port).await;
    let (statuses, slowest) = burst(&hung_allow, 2).await;
    assert_eq!(statuses, vec![200, 200]);
    assert!(
        slowest < Duration::from_millis(1300),
        "waited {slowest:?} for a 300 ms timeout"
    );
    let (statuses, slowest) = burst(&hung_deny, 2).await;
    assert_eq!(statuses, vec![503, 503]);
    assert!(
        slowest < Duration::from_millis(1300),
        "waited {slowest:?} for a 300 ms timeout"
    );
    let text = hung_allow.prometheus();
    assert_eq!(
        metric(&text, FAILURES, &[("call", "requests"), ("reason", "timeout")]),
        2.0,
        "{}",
        text.lines()
            .filter(|l| l.contains("failures"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
