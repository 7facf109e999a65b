//! Failover (#33) in real Envoy 1.40: backends that start failing on command.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e::{metric, Options, Reply, Scenario};
use serde_json::{json, Value};

fn config() -> Value {
    json!({
        "filterState": true,
        "restoreModelName": true,
        "failover": {"consecutiveFailures": 3, "probation": "1s", "maxProbation": "4s"},
        "models": [
            {"name": "llama",
             "destinations": [{"name": "stable", "weight": 50}, {"name": "canary", "weight": 50}],
             "fallbacks": [{"model": "qwen"}]},
            {"name": "qwen", "upstreamModel": "Qwen/Qwen2-7B", "destinations": [{"name": "qwen-a"}]}
        ]
    })
}

/// Envoy with two workers (one breaker table shared by both) and the backends `cfg` names.
async fn start(cfg: Value) -> Scenario {
    let opts = Options {
        concurrency: 2,
        ..Options::default()
    };
    Scenario::start_with(cfg, opts).await
}

fn chat(model: &str, stream: bool) -> String {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

async fn ask(s: &Scenario, model: &str) -> Reply {
    s.post("/v1/chat/completions", chat(model, false), &[]).await
}

fn state(s: &Scenario, model: &str, d: &str) -> f64 {
    metric(
        &s.prometheus(),
        "model_router_destination_state",
        &[("model", model), ("destination", d)],
    )
}

/// A destination's breaker state in Prometheus text (0 before the gauges are made).
fn state_in(p: &str, model: &str, d: &str) -> f64 {
    e2e::metric_if_made(
        p,
        "model_router_destination_state",
        &[("model", model), ("destination", d)],
        "model_router_destination_state",
    )
}

fn received(s: &Scenario, d: &str) -> usize {
    s.backend(d).exchanges().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_destinations_are_skipped_probed_and_return_and_fallbacks_take_over() {
    let s = start(config()).await;
    for _ in 0..20 {
        assert_eq!(ask(&s, "llama").await.status, 200);
    }
    assert!(received(&s, "canary") > 0 && received(&s, "stable") > 0);
    // Every failover counter is in the scrape, at zero, before the first failure (`increase()`
    // and alerts see the first one).
    let p = s.prometheus();
    for d in ["stable", "canary"] {
        for reason in ["status", "reset", "connect_failure", "timeout"] {
            assert_eq!(destination_failures(&p, d, reason), 0.0, "{d} {reason}");
        }
    }
    for reason in ["destination", "fallback", "unavailable"] {
        let labels = [("model", "llama"), ("reason", reason)];
        assert_eq!(series(&p, "model_router_failovers_total", &labels), 1, "{reason}");
        assert_eq!(metric(&p, "model_router_failovers_total", &labels), 0.0, "{reason}");
    }
    let unavailable = [("model", "llama"), ("reason", "model_unavailable")];
    assert_eq!(series(&p, "model_router_rejected_total", &unavailable), 1, "{p}");

    // The canary answers 503 from now on: after exactly 3 failures it gets no new requests
    // (two workers, one shared state), and its share goes to stable.
    s.backend("canary").set_failing(Some(503));
    let before = received(&s, "canary");
    let mut failed = 0;
    for _ in 0..40 {
        let r = ask(&s, "llama").await;
        if r.status != 200 {
            assert_eq!(r.header("x-ai-route"), Some("canary"));
            failed += 1;
        }
    }
    assert_eq!(failed, 3, "only the threshold's requests met the failing canary");
    assert_eq!(received(&s, "canary") - before, 3);
    assert_eq!(state(&s, "llama", "canary"), 1.0, "the gauge says open");
    let log = s.access_log_line("failover=destination").await;
    assert!(log.is_some(), "{}", s.access_log());

    // After its probation a trial request reaches it (and fails: open again, for longer).
    let deadline = Instant::now() + Duration::from_secs(10);
    while received(&s, "canary") - before == 3 {
        assert!(Instant::now() < deadline, "no trial request after the probation");
        ask(&s, "llama").await;
    }
    assert_eq!(received(&s, "canary") - before, 4, "one trial, not a flood");
    assert_eq!(state(&s, "llama", "canary"), 1.0);

    // It recovers: the next trial succeeds and it takes its share again.
    s.backend("canary").set_failing(None);
    let deadline = Instant::now() + Duration::from_secs(15);
    while state(&s, "llama", "canary") != 0.0 {
        assert!(Instant::now() < deadline, "the canary never closed");
        assert_eq!(ask(&s, "llama").await.status, 200);
    }
    let back = received(&s, "canary");
    for _ in 0..20 {
        assert_eq!(ask(&s, "llama").await.status, 200);
    }
    assert!(received(&s, "canary") > back, "traffic returned to the canary");

    // Both destinations reset their connections: Envoy's reset flags count as failures, then
    // every request goes to the fallback model, rewritten for it and restored for the client.
    s.backend("stable").set_failing(Some(0));
    s.backend("canary").set_failing(Some(0));
    let deadline = Instant::now() + Duration::from_secs(15);
    let answer = loop {
        assert!(Instant::now() < deadline, "never fell back");
        let r = ask(&s, "llama").await;
        if r.header("x-ai-route") == Some("qwen-a") {
            break r;
        }
        assert_eq!(r.status, 503, "{}", r.text());
    };
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["model"], "llama", "the client's name restored");
    let seen = s.backend("qwen-a").exchanges();
    assert_eq!(seen.last().unwrap().json()["model"], "Qwen/Qwen2-7B");
    let p = s.prometheus();
    let resets = metric(
        &p,
        "model_router_destination_failures_total",
        &[("model", "llama"), ("reason", "reset")],
    );
    assert!(resets >= 6.0, "Envoy's reset flags were read: {resets}\n{p}");
    let line = s.access_log_line("failover=fallback").await.unwrap();
    assert!(line.contains("route=qwen-a"), "{line}");

    // Streaming too.
    let r = s.post("/v1/chat/completions", chat("llama", true), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ai-route"), Some("qwen-a"));
    assert!(r.text().contains(r#""model":"llama""#), "{}", r.text());

    // The fallback fails too: once it is open, 503 model_unavailable at once, sent nowhere.
    s.backend("qwen-a").set_failing(Some(502));
    for _ in 0..3 {
        assert_eq!(ask(&s, "llama").await.status, 502);
    }
    let n = received(&s, "qwen-a");
    let t = Instant::now();
    for model in ["llama", "qwen"] {
        let r = ask(&s, model).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "model_unavailable");
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=4).contains(&wait), "{wait}");
    }
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(received(&s, "qwen-a"), n, "nothing sent into a known failure");
    let p = s.prometheus();
    assert_eq!(
        metric(
            &p,
            "model_router_destination_state",
            &[("model", "qwen"), ("destination", "qwen-a")]
        ),
        1.0
    );
    assert!(
        metric(
            &p,
            "model_router_failovers_total",
            &[("model", "llama"), ("reason", "fallback")]
        ) >= 2.0
    );
    assert_eq!(
        metric(
            &p,
            "model_router_failovers_total",
            &[("model", "llama"), ("reason", "unavailable")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &p,
            "model_router_rejected_total",
            &[("model", "qwen"), ("reason", "model_unavailable")]
        ),
        1.0
    );
}

/// Sends a chat request for `model` in its own task (it may wait long for its answer).
fn ask_in_background(s: &Scenario, model: &str) -> tokio::task::JoinHandle<u16> {
    let (client, url, body) = (s.client.clone(), s.url("/v1/chat/completions"), chat(model, false));
    tokio::spawn(async move {
        match client
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(e) => panic!("{e}"),
        }
    })
}

/// How many series of `name` have `labels`.
fn series(p: &str, name: &str, labels: &[(&str, &str)]) -> usize {
    e2e::prom::parse(p)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter(|x| x.name == name)
        .filter(|x| {
            labels
                .iter()
                .all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .count()
}

/// A failure counter (made at zero with failover: it must be in the scrape).
fn destination_failures(p: &str, d: &str, reason: &str) -> f64 {
    let name = "model_router_destination_failures_total";
    let labels = [("model", "llama"), ("destination", d), ("reason", reason)];
    assert_eq!(series(p, name, &labels), 1, "no series of {labels:?} in the scrape");
    metric(p, name, &labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_hangs_before_its_first_byte_stops_getting_requests_while_they_wait() {
    let mut cfg = config();
    cfg["failover"]["firstByteTimeout"] = "1s".into();
    cfg["failover"]["probation"] = "30s".into();
    cfg["failover"]["maxProbation"] = "60s".into();
    let s = start(cfg).await;
    // The canary takes requests and never answers: three of them are in flight when its
    // breaker opens, by the filter's timer, before any of them ends.
    s.backend("canary").hang();
    let mut hung = Vec::new();
    while received(&s, "canary") < 3 {
        let seen = received(&s, "canary") + received(&s, "stable");
        let task = ask_in_background(&s, "llama");
        let deadline = Instant::now() + Duration::from_secs(10);
        while received(&s, "canary") + received(&s, "stable") == seen {
            assert!(Instant::now() < deadline, "the request reached no backend");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if received(&s, "canary") > hung.len() {
            hung.push(task);
        } else {
            assert_eq!(task.await.unwrap(), 200);
        }
    }
    let p = s
        .prometheus_when("the canary opens while its requests still wait", |p| {
            state_in(p, "llama", "canary") == 1.0
        })
        .await;
    assert!(hung.iter().all(|t| !t.is_finished()), "requests are not cut short");
    assert_eq!(destination_failures(&p, "canary", "timeout"), 3.0, "{p}");
    // New requests go to stable only.
    for _ in 0..10 {
        let r = ask(&s, "llama").await;
        assert_eq!((r.status, r.header("x-ai-route")), (200, Some("stable")));
    }
    assert_eq!(received(&s, "canary"), 3);
    // The canary answers at last: the waiting requests get their answers, and a late success
    // is not a second count (nor does it close the breaker before its probation).
    s.backend("canary").set_failing(None);
    for t in hung {
        assert_eq!(t.await.unwrap(), 200);
    }
    let p = s.prometheus();
    assert_eq!(destination_failures(&p, "canary", "timeout"), 3.0, "{p}");
    assert_eq!(state(&s, "llama", "canary"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_refuses_connections_is_skipped_after_its_threshold() {
    let s = start(config()).await;
    for _ in 0..10 {
        assert_eq!(ask(&s, "llama").await.status, 200);
    }
    s.backend("canary").stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.backend("canary").refuses_connections() {
        assert!(Instant::now() < deadline, "the canary still accepts connections");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Envoy answers 503 with its connect-failure flag for exactly the threshold's requests;
    // then every request goes to stable.
    let mut refused = 0;
    for _ in 0..40 {
        let r = ask(&s, "llama").await;
        match r.header("x-ai-route") {
            Some("canary") => {
                assert_eq!(r.status, 503, "{}", r.text());
                refused += 1;
            }
            route => assert_eq!((r.status, route), (200, Some("stable"))),
        }
    }
    assert_eq!(refused, 3);
    let p = s.prometheus();
    assert_eq!(destination_failures(&p, "canary", "connect_failure"), 3.0, "{p}");
    assert_eq!(state(&s, "llama", "canary"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_breaks_off_its_streams_mid_answer_stops_getting_requests() {
    let s = start(json!({
        "restoreModelName": true,
        "failover": {"consecutiveFailures": 3, "probation": "30s", "maxProbation": "60s"},
        "models": [
            {"name": "llama", "destinations": [{"name": "solo"}], "fallbacks": [{"model": "qwen"}]},
            {"name": "qwen", "destinations": [{"name": "qwen-a"}]}
        ]
    }))
    .await;
    let cut = || async {
        let r = s
            .client
            .post(s.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-test-reset-after", "2")
            .body(chat("llama", true))
            .send()
            .await
            .unwrap();
        let route = r.headers().get("x-ai-route").map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), route, r.bytes().await.is_err())
    };
    // Headers 200, then the backend aborts the stream: three of those open it.
    for _ in 0..3 {
        assert_eq!(cut().await, (200, Some("solo".to_string()), true));
    }
    let p = s
        .prometheus_when("solo opens", |p| state_in(p, "llama", "solo") == 1.0)
        .await;
    assert_eq!(
        destination_failures(&p, "solo", "reset"),
        3.0,
        "{p}\n{}",
        s.access_log()
    );
    // The next one goes to the fallback (which breaks it off too: the header asks the backend to).
    let (status, route, _) = cut().await;
    assert_eq!((status, route.as_deref()), (200, Some("qwen-a")));
}
