//! The filter's cost in real Envoy, the variants below side by side in one run (see docs/performance.md):
//!   a) no Wasm filter
//!   b) floor: a Wasm filter that only buffers the request body and sets one header
//!   c) model-router routing a 2 KB chat request (body routing)
//!   d) model-router with full telemetry on a streaming (SSE) response
//!   f) stock Envoy doing the basic job natively: json_to_metadata takes the body's `model`, the
//!      route is selected by that metadata and sets a header from it (no aliases, weights, policy
//!      or metrics)
//!   g) (c) with a global request limit: one ShouldRateLimit per request to a real
//!      limitador-server (Redis storage); its CPU is Limitador's, not Envoy's, and is not counted
//!   h) the crossings alone: the floor filter making every host call model-router makes for (c)
//!      (headers, bodies, header writes, route cache, metrics, clock) and deciding nothing
//! Load: wrk on loopback. Upstream: Envoy direct_response (never the bottleneck), behind Envoy's
//! native buffer filter in every variant (see `bootstrap`). Rounds are
//! interleaved (a b c d, a b c d, …); per variant the median round is reported. CPU per request is
//! the Envoy process's own user+system time from /proc, not wall time.
//!
//! Then Envoy's memory for (a), (b), (c) at --concurrency 1 and 4 (`--memory`: only that).
//!
//! usage: envoy-bench [--smoke] [--memory] [--only VARIANTS] [--rounds N] [--seconds S] [--floor FILE] [--wasm FILE]
//!                    [--crossings "-metrics -clock ..."]   ((h) with those calls left out)

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::envoy::{admin_get, Envoy};
use serde_json::{json, Value};

const MODEL_CONFIG: &str = r#"{"bodyRouting":true,"models":[
  {"name":"llama-3-8b","aliases":["gpt-3.5-turbo"],"destinations":[{"name":"llama-v1","weight":90},{"name":"llama-v2","weight":10}]},
  {"name":"gpt-4o","destinations":[{"name":"openai"}]}]}"#;

/// (c) with a global request limit on the model (high enough never to refuse).
const GLOBAL_CONFIG: &str = r#"{"bodyRouting":true,
  "rateLimitService":{"cluster":"outbound|8081||limitador.bench.svc.cluster.local","timeout":"1s"},
  "models":[
  {"name":"llama-3-8b","aliases":["gpt-3.5-turbo"],"limits":{"requestsPerMinute":1000000000,"by":"global","mode":"global"},
   "destinations":[{"name":"llama-v1","weight":90},{"name":"llama-v2","weight":10}]},
  {"name":"gpt-4o","destinations":[{"name":"openai"}]}]}"#;

fn chat_body(stream: bool) -> String {
    // A 2 KB chat request with the model near the top, as clients send it.
    let filler = "Summarise the following text in two sentences. ".repeat(38);
    let mut b = json!({"model": "llama-3-8b", "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": filler}], "max_tokens": 64, "temperature": 0.2});
    if stream {
        b["stream"] = json!(true);
        b["stream_options"] = json!({"include_usage": true});
    }
    b.to_string()
}

fn json_response() -> String {
    json!({"id": "c1", "object": "chat.completion", "model": "llama-3-8b",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "A short answer."}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 512, "completion_tokens": 12, "total_tokens": 524}})
    .to_string()
}

fn sse_response() -> String {
    let mut s = String::new();
    for i in 0..24 {
        let c = json!({"id": "c1", "object": "chat.completion.chunk", "model": "llama-3-8b",
                       "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}, "finish_reason": null}], "usage": null});
        s.push_str(&format!("data: {c}\n\n"));
    }
    let u = json!({"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 512, "completion_tokens": 24, "total_tokens": 536}});
    s.push_str(&format!("data: {u}\n\ndata: [DONE]\n\n"));
    s
}

struct Variant {
    name: &'static str,
    what: &'static str,
    filter: Option<Value>,
    stream: bool,
    /// The rate limit service's port (variant g).
    rls_port: Option<u16>,
    /// Route by `json_to_metadata`'s metadata instead of the filter's header (variant f).
    native: bool,
}

/// Variant (f)'s filter: Envoy's own JSON body → dynamic metadata.
fn json_to_metadata() -> Value {
    json!({"name": "envoy.filters.http.json_to_metadata", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata",
        "request_rules": {"rules": [{"selectors": [{"key": "model"}],
            "on_present": {"metadata_namespace": "model_router", "key": "model", "type": "STRING"}}]}}})
}

fn wasm_filter(name: &str, wasm: &Path, config: &str) -> Value {
    json!({"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": name, "allow_on_headers_stop_iteration": true,
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config},
            "vm_config": {"vm_id": name, "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": wasm}}}}}})
}

fn bootstrap(v: &Variant) -> Value {
    let (body, ct) = if v.stream {
        (sse_response(), "text/event-stream")
    } else {
        (json_response(), "application/json")
    };
    let direct = json!({"status": 200, "body": {"inline_string": body}});
    let headers =
        json!([{"header": {"key": "content-type", "value": ct}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]);
    let mut routes: Vec<Value> = if v.native {
        // The model's route, chosen by the metadata; the model named to the backend in a header.
        ["llama-3-8b", "gpt-4o"]
            .iter()
            .map(|m| {
                json!({"match": {"prefix": "/", "dynamic_metadata": [{"filter": "model_router", "path": [{"key": "model"}],
                                                                    "value": {"string_match": {"exact": m}}}]},
                       "request_headers_to_add": [{"header": {"key": "x-ai-model", "value": "%DYNAMIC_METADATA(model_router:model)%"}}],
                       "direct_response": direct, "response_headers_to_add": headers})
            })
            .collect()
    } else {
        ["llama-v1", "llama-v2", "openai"]
            .iter()
            .map(|d| {
                json!({"match": {"prefix": "/", "headers": [{"name": "x-ai-route", "string_match": {"exact": d}}]},
                             "direct_response": direct, "response_headers_to_add": headers})
            })
            .collect()
    };
    routes.push(json!({"match": {"prefix": "/"}, "direct_response": direct, "response_headers_to_add": headers}));
    // Every variant reads the whole request (Envoy's native buffer filter) before the router's
    // direct response; otherwise a response sent before the body is read makes Envoy close the
    // HTTP/1.1 connection, and the run would measure connection set-up, not filters. (model-router
    // lets a request go as soon as it knows the model; a real upstream then reads the rest.)
    let mut filters: Vec<Value> = v.filter.iter().cloned().collect();
    filters.push(json!({"name": "envoy.filters.http.buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": 1048576}}));
    filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let clusters: Vec<Value> = v
        .rls_port
        .iter()
        .map(|port| {
            json!({"name": "outbound|8081||limitador.bench.svc.cluster.local", "type": "STATIC", "connect_timeout": "1s",
               "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                   "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                   "explicit_http_config": {"http2_protocol_options": {}}}},
               "load_assignment": {"cluster_name": "rls", "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
                   {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}})
        })
        .collect();
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "stats_config": {"stats_tags": wasmpack::bootstrap::stats_tags(), "histogram_bucket_settings": wasmpack::bootstrap::histogram_buckets()},
        "static_resources": {"listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "bench", "route_config": {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]},
                "http_filters": filters}}]}]}], "clusters": clusters}
    })
}

/// Envoy process CPU time (user + system) in microseconds.
fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000 / hz
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    cpu_us_per_req: f64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    requests: u64,
}

fn dur_us(s: &str) -> f64 {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * mult
}

fn wrk(url: &str, script: &Path, seconds: u64, pid: u32) -> Sample {
    wrk_with(url, script, seconds, pid, 8)
}

fn wrk_with(url: &str, script: &Path, seconds: u64, pid: u32, connections: u32) -> Sample {
    let before = cpu_us(pid);
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            "--latency",
            "-d",
            &format!("{seconds}s"),
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .unwrap_or_else(|e| {
            panic!("wrk not found ({e}): install it with `apt-get install wrk` (scripts/setup.sh does)")
        });
    let after = cpu_us(pid);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("Non-2xx"), "non-2xx responses: {text}");
    let mut s = Sample::default();
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("50%") {
            s.p50_us = dur_us(v);
        } else if let Some(v) = l.strip_prefix("99%") {
            s.p99_us = dur_us(v);
        } else if let Some(v) = l.strip_prefix("Requests/sec:") {
            s.rps = v.trim().parse().unwrap_or(0.0);
        } else if l.contains(" requests in ") {
            s.requests = l.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
        }
    }
    assert!(s.requests > 0, "no requests: {text}");
    s.cpu_us_per_req = (after - before) as f64 / s.requests as f64;
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The wrk script that sends variant `v`'s request, written into `dir`.
fn wrk_script(dir: &Path, v: &Variant) -> PathBuf {
    let script = dir.join(format!("{}.lua", v.name));
    let body = chat_body(v.stream);
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [==[{body}]==]\n"
        ),
    )
    .unwrap();
    script
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let rounds: usize = arg(&args, "--rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 1 } else { 5 });
    let seconds: u64 = arg(&args, "--seconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 1 } else { 6 });
    let release = e2e::envoy::wasm_release_dir();
    let wasm = arg(&args, "--wasm")
        .map(PathBuf::from)
        .unwrap_or(release.join("model_router.opt.wasm"));
    let floor = arg(&args, "--floor")
        .map(PathBuf::from)
        .unwrap_or(release.join("floor_filter.opt.wasm"));
    for p in [&wasm, &floor] {
        assert!(
            p.exists(),
            "{} missing: run scripts/bench.sh (it builds and optimises both modules)",
            p.display()
        );
    }
    // (h) with some of its calls left out, to measure them one at a time (words: see the floor
    // filter, e.g. "-metrics -clock").
    let crossings = arg(&args, "--crossings").unwrap_or_default();
    let variants = [
        Variant {
            name: "a",
            what: "no Wasm filter",
            filter: None,
            stream: false,
            rls_port: None,
            native: false,
        },
        Variant {
            name: "b",
            what: "floor filter (buffer body, set a header)",
            filter: Some(wasm_filter("floor", &floor, "")),
            stream: false,
            rls_port: None,
            native: false,
        },
        Variant {
            name: "c",
            what: "model-router, 2 KB chat request, body routing",
            filter: Some(wasm_filter("model-router", &wasm, MODEL_CONFIG)),
            stream: false,
            rls_port: None,
            native: false,
        },
        Variant {
            name: "d",
            what: "model-router, streaming response, full telemetry",
            filter: Some(wasm_filter("model-router", &wasm, MODEL_CONFIG)),
            stream: true,
            rls_port: None,
            native: false,
        },
        Variant {
            name: "g",
            what: "(c) + a global request limit (Limitador, Redis)",
            filter: Some(wasm_filter("model-router", &wasm, GLOBAL_CONFIG)),
            stream: false,
            rls_port: Some(0),
            native: false,
        },
        Variant {
            name: "h",
            what: "the crossings alone: (b) + every host call (c) makes, no logic",
            filter: Some(wasm_filter("floor", &floor, &format!("crossings {crossings}"))),
            stream: false,
            rls_port: None,
            native: false,
        },
        Variant {
            name: "f",
            what: "stock Envoy: json_to_metadata, route by metadata, header from it",
            filter: Some(json_to_metadata()),
            stream: false,
            rls_port: None,
            native: true,
        },
    ];
    // --only c: just these variants (for profiling one; no ratios then).
    let only = arg(&args, "--only");
    let mut variants: Vec<Variant> = variants
        .into_iter()
        .filter(|v| only.as_deref().is_none_or(|o| o.contains(v.name)))
        .collect();
    // --memory: Envoy's memory for (a), (b), (c) at --concurrency 1 and 4, idle and after load.
    if args.iter().any(|a| a == "--memory") {
        memory(&variants, seconds, 3);
        return;
    }
    // The real rate limit stack for (g), kept until the end.
    let mut _stack = None;
    if let Some(g) = variants.iter_mut().find(|v| v.rls_port.is_some()) {
        let cfg = model_router::config::Config::from_json(GLOBAL_CONFIG.as_bytes()).unwrap();
        let redis = e2e::rate_limit::Redis::start();
        let lim = e2e::rate_limit::Limitador::start(&wasmpack::limitador::limits_yaml(&cfg), &redis);
        g.rls_port = Some(lim.rls_port);
        _stack = Some((redis, lim));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut envoys = Vec::new();
    for v in &variants {
        let e = Envoy::start(&bootstrap(v), 1).unwrap_or_else(|e| panic!("variant {}: {e:#}", v.name));
        eprintln!("variant {}: envoy pid {}", v.name, e.pid());
        let script = wrk_script(dir.path(), v);
        envoys.push((e, script));
    }
    // Warm-up: JIT, connection pools, stats.
    for (e, script) in &envoys {
        let pid = e.pid();
        wrk(&e.url("/v1/chat/completions"), script, 1, pid);
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    for r in 0..rounds {
        for (i, (e, script)) in envoys.iter().enumerate() {
            let s = wrk(&e.url("/v1/chat/completions"), script, seconds, e.pid());
            eprintln!(
                "round {} variant {}: {:.1} us CPU/req, {:.0} req/s",
                r + 1,
                variants[i].name,
                s.cpu_us_per_req,
                s.rps
            );
            samples[i].push(s);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Where variant `name` is in this run (`--only` may have left it out).
    let at = |name: &str| variants.iter().position(|v| v.name == name);
    // The filters did their jobs: (d) counted tokens from the streams, (h) made its metric updates.
    let moved = |name: &str, stat: &str| {
        let Some(i) = at(name) else {
            return;
        };
        let stats = admin_get(envoys[i].0.admin_port, "/stats").unwrap_or_default();
        let counted = stats.lines().any(|l| l.contains(stat) && !l.ends_with(": 0"));
        assert!(counted, "variant {name}: no {stat} counted:\n{stats}");
    };
    moved(
        "d",
        "model=.=llama-3-8b;.;destination=.=llama-v1;.;type=.=output;.;model_router_tokens_total",
    );
    if !crossings.contains("-metrics") {
        moved("h", "floor_requests_total");
    }

    let cpu: Vec<f64> = samples
        .iter()
        .map(|s| median(s.iter().map(|x| x.cpu_us_per_req).collect()))
        .collect();
    println!("Envoy 1.40, --concurrency 1, wrk -t1 -c8, {rounds} interleaved round(s) of {seconds} s per variant (median round)\n");
    println!("| variant | | CPU µs/request | requests/s | p50 | p99 | Envoy RSS |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (i, v) in variants.iter().enumerate() {
        let s = &samples[i];
        let rps = median(s.iter().map(|x| x.rps).collect());
        let p50 = median(s.iter().map(|x| x.p50_us).collect());
        let p99 = median(s.iter().map(|x| x.p99_us).collect());
        let left_out = if v.name == "h" && !crossings.trim().is_empty() {
            format!(" (left out: {})", crossings.trim())
        } else {
            String::new()
        };
        println!(
            "| ({}) | {}{} | {:.1} | {:.0} | {:.0} µs | {:.0} µs | {} MiB |",
            v.name,
            v.what,
            left_out,
            cpu[i],
            rps,
            p50,
            p99,
            rss_kib(envoys[i].0.pid()) / 1024
        );
    }
    if let (Some(c), Some(g)) = (at("c"), at("g")) {
        let p = |i: usize, f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
        println!(
            "\nglobal check, (g) vs (c): CPU per request {:+.1} µs ({:.3}x), p50 {:+.0} µs, p99 {:+.0} µs (Envoy's CPU only; Limitador and Redis run beside it)",
            cpu[g] - cpu[c],
            cpu[g] / cpu[c],
            p(g, |x| x.p50_us) - p(c, |x| x.p50_us),
            p(g, |x| x.p99_us) - p(c, |x| x.p99_us)
        );
        let stats = admin_get(envoys[g].0.admin_port, "/stats/prometheus").unwrap_or_default();
        assert!(
            !stats
                .lines()
                .any(|l| l.starts_with("model_router_rate_limit_service_failures_total") && !l.ends_with(" 0")),
            "variant g: the rate limit service failed:\n{stats}"
        );
    }
    // Low load: one client, one request at a time; the latency the filter adds, not its throughput.
    if let (Some(b), Some(c)) = (at("b"), at("c")) {
        let one = |i: usize| {
            let (e, script) = &envoys[i];
            wrk_with(&e.url("/v1/chat/completions"), script, seconds, e.pid(), 1)
        };
        let (sb, sc) = (one(b), one(c));
        println!(
            "\nlow load (wrk -c1): (c) minus (b) p50 {:+.0} µs, p99 {:+.0} µs ((b) p50 {:.0} µs, p99 {:.0} µs)",
            sc.p50_us - sb.p50_us,
            sc.p99_us - sb.p99_us,
            sb.p50_us,
            sb.p99_us
        );
    }
    // The filter's own memory after everything it served ((c): JSON answers, (d): streams and
    // all telemetry).
    for (i, v) in variants.iter().enumerate().filter(|(_, v)| matches!(v.name, "c" | "d")) {
        let stats = admin_get(envoys[i].0.admin_port, "/stats/prometheus").unwrap_or_default();
        let bytes: f64 = stats
            .lines()
            .find(|l| l.starts_with("model_router_vm_memory_bytes"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        println!(
            "model_router_vm_memory_bytes after the run (variant {}, 1 worker VM): {:.2} MiB",
            v.name,
            bytes / 1048576.0
        );
    }
    if let (Some(b), Some(c), Some(f)) = (at("b"), at("c"), at("f")) {
        println!(
            "\nstock Envoy (f) vs the Wasm floor (b): {:.3}; model-router (c) vs stock Envoy (f): {:.3} CPU per request",
            cpu[f] / cpu[b],
            cpu[c] / cpu[f]
        );
    }
    if let (Some(b), Some(c), Some(h)) = (at("b"), at("c"), at("h")) {
        println!(
            "\nthe crossings alone (h) vs the floor (b): {:.3}; model-router (c) vs the crossings alone (h): {:.3} CPU per request\n  \
             ((h) makes (c)'s host calls and decides nothing: (h) - (b) = {:.1} µs is the ABI's share, (c) - (h) = {:.1} µs model-router's own work)",
            cpu[h] / cpu[b],
            cpu[c] / cpu[h],
            cpu[h] - cpu[b],
            cpu[c] - cpu[h]
        );
    }
    let (Some(a), Some(b), Some(c), Some(d)) = (at("a"), at("b"), at("c"), at("d")) else {
        return;
    };
    println!("\n(c)/(b) CPU per request: {:.3}   (target <= 1.25)", cpu[c] / cpu[b]);
    println!("(d)/(b) CPU per request: {:.3}   (target <= 1.40)", cpu[d] / cpu[b]);
    println!(
        "(b)/(a) CPU per request: {:.3}   (the cost of any body-reading Wasm filter)",
        cpu[b] / cpu[a]
    );
    // Memory last, with the Envoys above stopped.
    drop(envoys);
    memory(&variants, seconds, if smoke { 1 } else { 3 });
}

/// Envoy's allocator as its admin `/memory` reports it: (allocated, heap size) in KiB.
fn allocator_kib(admin_port: u16) -> (u64, u64) {
    let m: Value = admin_get(admin_port, "/memory")
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let n = |k: &str| {
        m[k].as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .or_else(|| m[k].as_u64())
            .unwrap_or(0)
            / 1024
    };
    (n("allocated"), n("heap_size"))
}

/// Envoy's memory for (a), (b) and (c) at --concurrency 1 and 4: RSS right after start (the
/// module compiled, one VM per worker and one on the main thread) and after load, with the
/// allocator's view (what is allocated, and the heap it keeps). Each variant is started `starts`
/// times, interleaved; medians; then (c) − (b), idle and after load, against the target.
fn memory(variants: &[Variant], seconds: u64, starts: usize) {
    let dir = tempfile::tempdir().unwrap();
    let load = seconds.min(3);
    let mut diffs = Vec::new();
    println!("\nEnvoy memory: {starts} start(s) per variant (median), RSS right after start and after {load} s of (c)'s load\n");
    println!("| concurrency | variant | RSS idle | RSS after load | allocated (tcmalloc) | heap (tcmalloc) |");
    println!("|---:|---|---:|---:|---:|---:|");
    let three: Vec<&Variant> = variants.iter().filter(|v| matches!(v.name, "a" | "b" | "c")).collect();
    let scripts: Vec<PathBuf> = three.iter().map(|v| wrk_script(dir.path(), v)).collect();
    for conc in [1u32, 4] {
        // Per variant: [idle, after load, allocated, heap] in MiB, one entry per start.
        let mut runs: Vec<Vec<[f64; 4]>> = vec![Vec::new(); three.len()];
        for _ in 0..starts {
            for (k, v) in three.iter().enumerate() {
                let e = Envoy::start(&bootstrap(v), conc).unwrap_or_else(|e| panic!("variant {}: {e:#}", v.name));
                std::thread::sleep(Duration::from_millis(500));
                let idle = rss_kib(e.pid());
                wrk_with(&e.url("/v1/chat/completions"), &scripts[k], load, e.pid(), 8 * conc);
                let (alloc, heap) = allocator_kib(e.admin_port);
                let mib = |kib: u64| kib as f64 / 1024.0;
                runs[k].push([mib(idle), mib(rss_kib(e.pid())), mib(alloc), mib(heap)]);
            }
        }
        let med: Vec<[f64; 4]> = runs
            .iter()
            .map(|r| std::array::from_fn(|j| median(r.iter().map(|x| x[j]).collect())))
            .collect();
        for (k, v) in three.iter().enumerate() {
            let m = med[k];
            println!(
                "| {conc} | ({}) | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
                v.name, m[0], m[1], m[2], m[3]
            );
        }
        let at = |n: &str| three.iter().position(|v| v.name == n);
        if let (Some(b), Some(c)) = (at("b"), at("c")) {
            diffs.push((conc, med[c][0] - med[b][0], med[c][1] - med[b][1]));
        }
    }
    for (conc, idle, loaded) in diffs {
        println!(
            "(c) - (b) Envoy RSS at --concurrency {conc}: {idle:+.1} MiB idle, {loaded:+.1} MiB after load   (target <= 5)"
        );
    }
}
