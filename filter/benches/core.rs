//! Criterion microbenchmarks of the filter core (docs/performance.md).
//!   extract/*   model extraction on 1 KB … 1 MB bodies: model near the top (the scan stops early)
//!               and model at the end (the whole top level is scanned: linear, no quadratic case)
//!   sse/*       usage accounting per SSE chunk
//!   config/*    parsing a configuration
//!   route/*     a whole routing decision for a 2 KB chat request
//!   restore/*   putting the client's model name back into a JSON answer and an SSE chunk
//!   exchange/*  the whole per-request protocol (headers, body, response, log) on the in-memory
//!               host, for a 2 KB chat request with a JSON answer

#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use model_router::config::Config;
use model_router::exchange::{Stream, Vm};
use model_router::memory_host::MemoryHost;
use model_router::request::{BodyAction, RequestFlow, RequestInfo};
use model_router::restore::ModelRestorer;
use model_router::usage::ResponseUsage;
use serde_json::json;
use std::hint::black_box;

const CONFIG: &str = r#"{"bodyRouting":true,"stickyHeader":"x-user-id","models":[
  {"name":"llama-3-8b","aliases":["gpt-3.5-turbo"],"upstreamModel":"meta-llama/Meta-Llama-3-8B-Instruct",
   "destinations":[{"name":"llama-v1","weight":90},{"name":"llama-v2","weight":10}]},
  {"name":"gpt-4o","destinations":[{"name":"openai"}]},
  {"name":"bge-small","destinations":[{"name":"embeddings"}]}]}"#;

/// A chat body of about `size` bytes, the model first or last.
fn body(size: usize, model_first: bool) -> Vec<u8> {
    let msg = json!({"role": "user", "content": "x".repeat(1000)}).to_string();
    let n = size / (msg.len() + 1);
    let messages = vec![msg; n.max(1)].join(",");
    if model_first {
        format!(r#"{{"model":"gpt-4o","messages":[{messages}],"max_tokens":64}}"#).into_bytes()
    } else {
        format!(r#"{{"messages":[{messages}],"max_tokens":64,"model":"gpt-4o"}}"#).into_bytes()
    }
}

fn decide(cfg: &Config, body: &[u8]) -> BodyAction {
    let mut f = RequestFlow::default();
    let req = RequestInfo {
        method: "POST",
        path: "/v1/chat/completions",
        content_type: Some("application/json"),
        content_length: Some(body.len() as u64),
        random: 7,
        ..Default::default()
    };
    f.on_request_headers(cfg, &req, true);
    f.on_request_body(cfg, body, true)
}

fn extract(c: &mut Criterion) {
    let mut cfg = Config::from_json(CONFIG.as_bytes()).unwrap();
    cfg.max_body_bytes = 4 << 20;
    for (label, first) in [("model_near_top", true), ("model_at_end", false)] {
        let mut g = c.benchmark_group(format!("extract/{label}"));
        for size in [1 << 10, 16 << 10, 256 << 10, 1 << 20] {
            let b = body(size, first);
            assert!(matches!(decide(&cfg, &b), BodyAction::Continue { .. }));
            g.throughput(Throughput::Bytes(b.len() as u64));
            g.bench_with_input(
                BenchmarkId::from_parameter(format!("{}KiB", size >> 10)),
                &b,
                |bench, b| bench.iter(|| decide(&cfg, black_box(b))),
            );
        }
        g.finish();
    }
}

fn sse(c: &mut Criterion) {
    let chunk = format!(
        "data: {}\n\n",
        json!({"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o",
               "choices": [{"index": 0, "delta": {"content": "Hello there"}, "finish_reason": null}], "usage": null})
    );
    let usage = format!(
        "data: {}\n\ndata: [DONE]\n\n",
        json!({"choices": [], "usage": {"prompt_tokens": 512, "completion_tokens": 24, "total_tokens": 536}})
    );
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("content_chunk", |b| {
        let mut r = ResponseUsage::for_content_type(Some("text/event-stream"));
        b.iter(|| r.feed(black_box(chunk.as_bytes())))
    });
    g.bench_function("usage_chunk", |b| {
        b.iter(|| {
            let mut r = ResponseUsage::for_content_type(Some("text/event-stream"));
            r.feed(black_box(usage.as_bytes()));
            r.finish()
        })
    });
    g.finish();
}

fn config(c: &mut Criterion) {
    c.bench_function("config/parse", |b| {
        b.iter(|| Config::from_json(black_box(CONFIG.as_bytes())).unwrap())
    });
}

fn route(c: &mut Criterion) {
    let cfg = Config::from_json(CONFIG.as_bytes()).unwrap();
    let b = body(2 << 10, true);
    c.bench_function("route/chat_2KiB", |bench| bench.iter(|| decide(&cfg, black_box(&b))));
}

fn restore(c: &mut Criterion) {
    let up = "meta-llama/Llama-3.1-8B-Instruct";
    let answer = json!({"id": "c1", "object": "chat.completion", "model": up,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x".repeat(2000)}}],
        "usage": {"prompt_tokens": 19, "completion_tokens": 10}})
    .to_string();
    let chunk = format!(
        "data: {}\n\n",
        json!({"id": "c1", "object": "chat.completion.chunk", "model": up,
               "choices": [{"index": 0, "delta": {"content": "Hello there"}, "finish_reason": null}], "usage": null})
    );
    let mut g = c.benchmark_group("restore");
    g.throughput(Throughput::Bytes(answer.len() as u64));
    g.bench_function("json_2KiB", |b| {
        b.iter(|| {
            let mut r = ModelRestorer::new(up, "gpt-4o-mini", false);
            let mut out = r.feed(black_box(answer.as_bytes()));
            out.extend(r.finish());
            out
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("sse_chunk", |b| {
        let mut r = ModelRestorer::new(up, "gpt-4o-mini", true);
        b.iter(|| r.feed(black_box(chunk.as_bytes())))
    });
    g.finish();
}

fn exchange(c: &mut Criterion) {
    let vm = Vm::new(Config::from_json(CONFIG.as_bytes()).unwrap(), 1);
    let body = body(2 << 10, true);
    let answer = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10}}"#;
    let mut h = MemoryHost::new();
    c.bench_function("exchange/chat_2KiB", |bench| {
        bench.iter(|| {
            h.request_headers = vec![
                (":method".into(), "POST".into()),
                (":path".into(), "/v1/chat/completions".into()),
                ("content-type".into(), "application/json".into()),
                ("content-length".into(), body.len().to_string()),
            ];
            h.request_body.clone_from(&body);
            h.response_headers = vec![
                (":status".into(), "200".into()),
                ("content-type".into(), "application/json".into()),
            ];
            h.response_body = answer.to_vec();
            let mut s = Stream::new(1);
            s.on_request_headers(&vm, &mut h, false);
            s.on_request_body(&vm, &mut h, body.len(), true);
            s.on_response_headers(&vm, &mut h, false);
            s.on_response_body(&vm, &mut h, answer.len(), true);
            s.on_log(&vm, &mut h);
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = extract, sse, config, route, restore, exchange
}
criterion_main!(benches);
