//! Enforcement that holds, in real Envoy 1.40: what a careless or hostile client sends does not
//! steer, dodge or fool the filter, and the filter never claims a route it did not make.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e::{metric, Scenario};
use serde_json::{json, Value};

fn chat(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}]}).to_string()
}

fn reached(s: &Scenario) -> usize {
    s.backends.values().map(|b| b.exchanges().len()).sum::<usize>() + s.default.exchanges().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_route_headers_are_ignored() {
    let s = Scenario::start(json!({
        "models": [
            {"name": "llama-3-8b", "destinations": [{"name": "llama"}]},
            {"name": "private", "allow": ["spiffe://td/ns/a/*"], "destinations": [{"name": "private"}]}
        ]
    }))
    .await;
    let spoof = [("x-ai-route", "private"), ("x-ai-model", "private")];
    // A GET, a form upload and a JSON body without a model: none may be steered by the header.
    let r = s.send("GET", "/v1/models", Vec::new(), &spoof).await;
    assert_eq!(r.header("x-backend"), Some("default"));
    let form = [
        ("x-ai-route", "private"),
        ("content-type", "multipart/form-data; boundary=x"),
    ];
    // Without a model, with access rules configured: refused (fail closed), never steered.
    let r = s.post("/v1/audio/transcriptions", "--x--", &form).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_required");
    let r = s.post("/v1/chat/completions", r#"{"messages":[]}"#, &spoof).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(s.backend("private").exchanges().is_empty());
    // Nor a request for another model: it goes where the filter says.
    let r = s.post("/v1/chat/completions", chat("llama-3-8b"), &spoof).await;
    assert_eq!(r.header("x-backend"), Some("llama"));
    assert_eq!(
        s.backend("llama").exchanges()[0].header("x-ai-model"),
        Some("llama-3-8b")
    );
    assert!(
        s.backend("private").exchanges().is_empty(),
        "the allow list was bypassed"
    );
    for e in s.default.exchanges() {
        assert_eq!(e.header("x-ai-route"), None, "{}", e.path);
        assert_eq!(e.header("x-ai-model"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_body_routing_no_destination_is_claimed() {
    let s = Scenario::start(json!({
        "bodyRouting": false,
        "models": [
            {"name": "llama-3-8b", "destinations": [{"name": "llama-stable", "weight": 95}, {"name": "llama-canary", "weight": 5}]},
            {"name": "qwen2.5-7b", "destinations": [{"name": "qwen"}]}
        ]
    }))
    .await;
    for _ in 0..40 {
        let r = s.post("/v1/chat/completions", chat("llama-3-8b"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-backend"),
            Some("default"),
            "the route came from the headers"
        );
        assert_eq!(r.header("x-ai-route"), None, "no destination may be claimed");
    }
    let r = s.post("/v1/chat/completions", chat("qwen2.5-7b"), &[]).await;
    assert_eq!(r.header("x-ai-route"), None);
    let text = s.prometheus();
    let count = |model: &str, dest: &str| {
        metric(
            &text,
            "model_router_requests_total",
            &[("model", model), ("destination", dest), ("code_class", "2xx")],
        )
    };
    assert_eq!(count("llama-3-8b", "unrouted"), 40.0, "{text}");
    assert_eq!(count("qwen2.5-7b", "unrouted"), 1.0);
    let ours: Vec<&str> = text.lines().filter(|l| l.starts_with("model_router")).collect();
    assert!(
        ours.iter()
            .all(|l| !l.contains("llama-canary") && !l.contains("destination=\"qwen\"")),
        "{ours:#?}"
    );
    let log = s.access_log_line("qwen2.5-7b").await.unwrap_or_default();
    assert!(log.contains("destination=unrouted"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outside_the_scope_pass_untouched() {
    let s = Scenario::start(json!({
        "onMissingModel": "reject",
        "models": [{"name": "llama-3-8b", "destinations": [{"name": "llama"}]}]
    }))
    .await;
    let order = r#"{"model":"iPhone 15","qty":1}"#;
    let r = s.post("/api/orders", order, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-backend"), Some("default"));
    let seen = s.default.exchanges().pop().unwrap();
    assert_eq!(seen.body.as_ref(), order.as_bytes());
    // The same body on an inference endpoint is the filter's business.
    let r = s.post("/v1/chat/completions", order, &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
}

/// A `model` query parameter is a model too (OpenAI Realtime's WebSocket GET; LiteLLM prefers it
/// to the body's): checked, and never a way to name one model to the filter and another to the
/// server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_in_the_query_does_not_get_past_access_control() {
    let s = Scenario::start(json!({
        "models": [
            {"name": "private", "allow": ["spiffe://td/ns/a/*"], "destinations": [{"name": "private"}]},
            {"name": "open", "destinations": [{"name": "open"}]}
        ]
    }))
    .await;
    // LiteLLM serves the query's model: a body naming another is refused.
    for path in [
        "/v1/chat/completions?model=private",
        "/chat/completions?x=1&Model=priv%61te",
    ] {
        let r = s.post(path, chat("open"), &[]).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "duplicate_model", "{path}");
    }
    // Only in the query: that model's rules.
    let r = s
        .post("/v1/chat/completions?model=private", r#"{"messages":[]}"#, &[])
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // A WebSocket-style GET names its model in the query.
    let r = s
        .send(
            "GET",
            "/v1/realtime?model=private",
            Vec::new(),
            &[("upgrade", "websocket")],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_access_denied");
    assert_eq!(reached(&s), 0, "nothing reached a backend");
    // The same model in both is served.
    let r = s.post("/v1/chat/completions?model=open", chat("open"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Paths that servers still read as inference endpoints (uvicorn decodes `%2F` for vLLM and
/// KServe; Envoy passes them as sent unless `normalize_path` is on) get the filter's checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dressed_up_paths_do_not_get_past_access_control() {
    let s = Scenario::start(json!({
        "models": [{"name": "private", "allow": ["spiffe://td/ns/a/*"], "destinations": [{"name": "private"}]}]
    }))
    .await;
    for path in [
        "/v1/chat%2Fcompletions",
        "/v1/chat/%63ompletions",
        "/V1/Chat/Completions",
        "/v1//chat/completions",
        "/v1/chat/completions;x=1",
    ] {
        let r = s.post(path, chat("private"), &[]).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "model_access_denied", "{path}");
    }
    for path in ["/v2/models/private/%69nfer", "/v2/models/priv%61te/infer"] {
        let r = s.post(path, r#"{"inputs":[]}"#, &[]).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text());
    }
    assert_eq!(reached(&s), 0, "nothing reached a backend");
}

/// Requests of `metered` the filter has finished with (counted after their charge is made).
fn finished(text: &str) -> f64 {
    let samples = wasmpack::prom::parse(text).unwrap_or_else(|e| panic!("{e}"));
    wasmpack::prom::sum(&samples, "model_router_requests_total", &[("model", "metered")])
}

/// The tokens left, read from a small embeddings probe; returns once the probe's own charge is made.
async fn remaining_tokens(s: &Scenario) -> i64 {
    let done = finished(&s.prometheus());
    let r = s
        .post("/v1/embeddings", r#"{"model":"metered","input":"x"}"#, &[])
        .await;
    assert_eq!(r.status, 200, "{} {:?}", r.text(), r.headers);
    let left: i64 = r.header("x-ratelimit-remaining-tokens").unwrap().parse().unwrap();
    s.prometheus_when("the probe finished", |t| finished(t) > done).await;
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_limits_cannot_be_dodged_by_the_client() {
    // 600 tokens a minute: the bucket refills 10 tokens a second, slow enough to measure charges.
    let s = Scenario::start(json!({
        "models": [{"name": "metered", "limits": {"tokensPerMinute": 600, "by": "global"},
                    "destinations": [{"name": "metered"}]}]
    }))
    .await;
    // A stream that does not ask for usage (or declines it) is made to report it, and is charged.
    for options in [Value::Null, json!({"include_usage": false})] {
        let mut body = json!({"model": "metered", "stream": true, "max_tokens": 5, "messages": []});
        if !options.is_null() {
            body["stream_options"] = options;
        }
        let before = remaining_tokens(&s).await;
        let r = s.post("/v1/chat/completions", body.to_string(), &[]).await;
        assert_eq!(r.status, 200);
        let seen = s.backend("metered").exchanges().pop().unwrap();
        assert_eq!(seen.json()["stream_options"]["include_usage"], true, "forced");
        let reported = seen.reported.clone().unwrap();
        let after = remaining_tokens(&s).await;
        let charged = before - after;
        // The embeddings probe itself costs its input tokens; refill adds a few back.
        let expected = (reported.input + reported.output) as i64;
        assert!(
            (expected - 5..=expected + 40).contains(&charged),
            "charged {charged}, reported {reported:?}"
        );
    }

    // A client that disconnects mid-stream is charged its max_tokens (the stream never said).
    let before = remaining_tokens(&s).await;
    let body = json!({"model": "metered", "stream": true, "max_tokens": 50, "messages": []}).to_string();
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-test-chunk-delay-ms", "100")
        .body(body)
        .send()
        .await
        .unwrap();
    let mut resp = resp;
    let first = resp.chunk().await.unwrap();
    assert!(first.is_some());
    drop(resp);
    let missing = [
        ("model", "metered"),
        ("destination", "metered"),
        ("reason", "incomplete"),
    ];
    s.prometheus_when("the dropped stream finished", |t| {
        e2e::metric_if_made(
            t,
            "model_router_usage_missing_total",
            &missing,
            "model_router_requests_total",
        ) == 1.0
    })
    .await;
    let after = remaining_tokens(&s).await;
    assert!(
        before - after >= 50,
        "charged only {} for a dropped stream",
        before - after
    );
    let text = s.prometheus();
    assert_eq!(
        metric(
            &text,
            "model_router_usage_missing_total",
            &[
                ("model", "metered"),
                ("destination", "metered"),
                ("reason", "incomplete")
            ]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "model_router_in_flight_requests",
            &[("model", "metered"), ("destination", "metered")]
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_client_does_not_switch_body_routing_off() {
    let s = Scenario::start(json!({
        "models": [{"name": "gpt-4o", "destinations": [{"name": "openai"}]}]
    }))
    .await;
    let slow = |delay_ms: u64| {
        let body = chat("gpt-4o");
        let stream = futures_util::stream::once(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            Ok::<_, std::io::Error>(body)
        });
        s.client
            .post(s.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
    };
    // Before the host has proven it holds, a client that stalls past the safety net's 1 s is let
    // go unrouted (it cannot be told from a host that cannot hold)...
    let r = slow(1500).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("x-backend").unwrap(), "default");
    // ...but that alone does not switch body routing off: the next requests are routed.
    for _ in 0..3 {
        let r = s.post("/v1/chat/completions", chat("gpt-4o"), &[]).await;
        assert_eq!(r.header("x-ai-route"), Some("openai"), "{:?}", r.headers);
    }
    // Once proven, a slow client just waits and is routed.
    let started = Instant::now();
    let r = slow(1500).await.unwrap();
    assert_eq!(r.headers().get("x-ai-route").unwrap(), "openai");
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert_eq!(metric(&s.prometheus(), "model_router_hold_released_total", &[]), 1.0);
}

/// The official `openai` Python client, default headers (it accepts gzip): the filter asks the
/// backend for an uncompressed answer and counts its tokens; a backend that compresses anyway is
/// counted as missing, never as zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_answers_to_the_official_openai_client_are_counted() {
    let python = e2e::venv_python();
    let s = Scenario::start(json!({
        "models": [{"name": "qwen", "destinations": [{"name": "qwen"}]}]
    }))
    .await;
    let script = r#"
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1], api_key="test", max_retries=0)
extra = {"x-test-gzip": "always"} if sys.argv[2] == "always" else {}
r = c.chat.completions.create(model="qwen", messages=[{"role": "user", "content": "hi"}], extra_headers=extra)
print(r.usage.prompt_tokens, r.usage.completion_tokens)
"#;
    let base = s.url("/v1");
    let run = |mode: &str| {
        let out = std::process::Command::new(&python)
            .args(["-c", script, &base, mode])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let n: Vec<f64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
        (n[0], n[1])
    };
    let (input, output) = tokio::task::block_in_place(|| run("asked"));
    let seen = s.backend("qwen").exchanges().pop().unwrap();
    assert!(
        seen.header("accept-encoding").is_none(),
        "the filter should ask for an uncompressed answer: {:?}",
        seen.headers
    );
    let text = s.prometheus();
    let tokens = |ty: &str| {
        metric(
            &text,
            "model_router_tokens_total",
            &[("model", "qwen"), ("destination", "qwen"), ("type", ty)],
        )
    };
    assert_eq!(tokens("input"), input);
    assert_eq!(tokens("output"), output);

    let _ = tokio::task::block_in_place(|| run("always"));
    let text = s.prometheus();
    assert_eq!(
        metric(
            &text,
            "model_router_usage_missing_total",
            &[("model", "qwen"), ("destination", "qwen"), ("reason", "encoded")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "model_router_tokens_total",
            &[("model", "qwen"), ("destination", "qwen"), ("type", "input")]
        ),
        input,
        "nothing counted from the compressed answer"
    );
    assert_eq!(reached(&s), 2);
}

/// On an Istio waypoint the caller's identity is not a client certificate but the filter state
/// `io.istio.peer_principal`, which Istio sets with Envoy's `set_filter_state` ahead of the other
/// HTTP filters. The same here (from a test header standing in for the HBONE peer), in real Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waypoint_identity_source_is_honoured() {
    let set_state = json!({
        "name": "envoy.filters.http.set_filter_state",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
            "on_request_headers": [{
                "object_key": "io.istio.peer_principal",
                "factory_key": "envoy.string",
                "format_string": {"text_format_source": {"inline_string": "%REQ(x-test-hbone-peer)%"}}
            }]
        }
    });
    let s = Scenario::start_with(
        json!({
            "inferenceModelHeader": "upstream",
            "models": [{"name": "private", "upstreamModel": "org/private-7b", "allow": ["spiffe://cluster.local/ns/team-a/*"],
                        "destinations": [{"name": "private"}]}]
        }),
        e2e::Options {
            pre_filters: vec![set_state],
            ..Default::default()
        },
    )
    .await;
    for (peer, status) in [
        ("spiffe://cluster.local/ns/team-a/sa/notebook", 200),
        // Istio's own form, without the scheme.
        ("cluster.local/ns/team-a/sa/notebook", 200),
        ("spiffe://cluster.local/ns/team-b/sa/web", 403),
    ] {
        let r = s
            .post(
                "/v1/chat/completions",
                chat("private"),
                &[("x-test-hbone-peer", peer), ("x-gateway-model-name", "spoofed")],
            )
            .await;
        assert_eq!(r.status, status, "{peer}: {}", r.text());
    }
    let r = s.post("/v1/chat/completions", chat("private"), &[]).await;
    assert_eq!(r.status, 403, "no identity: {}", r.text());
    // The InferencePool header names the upstream model, whatever the client sent.
    let seen = s.backend("private").exchanges();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|e| e.header("x-gateway-model-name") == Some("org/private-7b")));
}

/// Sends `body` as an HTTP/1.1 chunked request that ends with a trailer, on a raw connection
/// (no client library sends trailers); returns the status and the answer's body.
fn chunked_with_trailer(port: u16, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: llm\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\ntrailer: x-checksum\r\nconnection: close\r\n\r\n\
         {:x}\r\n{body}\r\n0\r\nx-checksum: 1\r\n\r\n",
        body.len()
    );
    c.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    (status, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailer_does_not_carry_a_request_past_access_control() {
    // A body that ends with trailers never gets a body callback that says it ended: the filter
    // decides at the trailers. HTTP/2 clients can always send trailers; HTTP/1 ones where Envoy
    // keeps them, as here.
    let s = Scenario::start_with(
        json!({
            "onMissingModel": "reject",
            "models": [
                {"name": "llama-3-8b", "destinations": [{"name": "llama"}]},
                {"name": "private", "allow": ["spiffe://td/ns/a/*"], "destinations": [{"name": "private"}]}
            ]
        }),
        e2e::Options {
            http1_trailers: true,
            ..Default::default()
        },
    )
    .await;
    let port = s.envoy.listen_port;
    let send =
        |body: String| tokio::task::spawn_blocking(move || chunked_with_trailer(port, "/v1/chat/completions", &body));
    let (status, answer) = send(chat("private")).await.unwrap();
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("model_access_denied"), "{answer}");
    let (status, answer) = send(r#"{"messages":[]}"#.into()).await.unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("model_required"), "{answer}");
    assert_eq!(reached(&s), 0, "a request went upstream undecided");
    // An allowed model is routed as it would be without the trailer.
    let (status, answer) = send(chat("llama-3-8b")).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let seen = s.backend("llama").exchanges();
    assert_eq!(seen.len(), 1, "{answer}");
    assert_eq!(seen[0].header("x-ai-route"), Some("llama"));
    assert_eq!(reached(&s), 1);
}
