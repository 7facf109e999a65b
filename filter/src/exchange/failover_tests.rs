use super::*;
use crate::memory_host::{MemoryHost, SharedMem};
use crate::telemetry::{DESTINATION_FAILURES_TOTAL, DESTINATION_STATE, FAILOVERS_TOTAL, REJECTED_TOTAL};

const CFG: &str = r#"{"filterState":true,"restoreModelName":true,
  "failover":{"consecutiveFailures":3,"probation":"10s","maxProbation":"40s"},
  "models":[
    {"name":"llama","destinations":[{"name":"stable","weight":90},{"name":"canary","weight":10}],
     "fallbacks":[{"model":"qwen"}]},
    {"name":"qwen","upstreamModel":"Qwen/Qwen2-7B","destinations":[{"name":"qwen-a"}]}
  ]}"#;

struct World {
    vm: Vm,
    shared: SharedMem,
    now_ns: u64,
    metrics: std::collections::BTreeMap<String, i64>,
    next: u32,
}

/// A chat request with `body` on `h` (its headers and its buffered body).
fn chat_request(h: &mut MemoryHost, body: &[u8]) {
    h.request_headers = vec![
        (":method".into(), "POST".into()),
        (":path".into(), "/v1/chat/completions".into()),
        (":authority".into(), "llm".into()),
        ("content-length".into(), body.len().to_string()),
    ];
    h.request_body = body.to_vec();
}

/// What happened to one request.
#[derive(Debug)]
struct Sent {
    route: Option<String>,
    body: Vec<u8>,
    reply: Option<(u32, Vec<(String, String)>)>,
    client_body: Vec<u8>,
    failover: Option<String>,
}

impl World {
    fn new() -> World {
        World::with(CFG)
    }

    fn with(cfg: &str) -> World {
        World {
            vm: Vm::new(Config::from_json(cfg.as_bytes()).unwrap(), 1),
            shared: SharedMem::default(),
            now_ns: 1_000_000_000_000,
            metrics: Default::default(),
            next: 1,
        }
    }

    /// One chat request for `model`, answered by its destination with `status` (when it
    /// went upstream); `flags`: Envoy's response flags, with no response headers.
    fn send(&mut self, model: &str, random: u64, status: Option<u32>, flags: u64) -> Sent {
        self.send_after(model, random, status, flags, 0)
    }

    /// `send`, the response coming `wait_ms` after the request went upstream.
    fn send_after(&mut self, model: &str, random: u64, status: Option<u32>, flags: u64, wait_ms: u64) -> Sent {
        let body = format!(r#"{{"model":"{model}","messages":[]}}"#);
        let mut h = MemoryHost::new();
        h.now_ns = self.now_ns;
        h.shared = std::mem::take(&mut self.shared);
        h.metrics = std::mem::take(&mut self.metrics);
        chat_request(&mut h, body.as_bytes());
        self.vm.rng.set(random);
        let mut s = Stream::new(self.next);
        self.next += 1;
        let n = h.request_body.len();
        s.on_request_headers(&self.vm, &mut h, false);
        if h.reply.is_none() {
            s.on_request_body(&self.vm, &mut h, n, true);
        }
        let route = h.header(Map::Request, "x-ai-route").map(str::to_string);
        h.now_ns += wait_ms * 1_000_000;
        let sent_body = h.request_body.clone();
        let mut client_body = Vec::new();
        if h.reply.is_none() {
            match status {
                Some(st) => {
                    h.response_headers = vec![
                        (":status".into(), st.to_string()),
                        ("content-type".into(), "application/json".into()),
                    ];
                    s.on_response_headers(&self.vm, &mut h, false);
                    h.response_body = br#"{"model":"Qwen/Qwen2-7B","usage":{"prompt_tokens":1}}"#.to_vec();
                    let len = h.response_body.len();
                    s.on_response_body(&self.vm, &mut h, len, true);
                    client_body = h.response_body.clone();
                }
                None => {
                    h.properties
                        .insert("response.flags".into(), flags.to_le_bytes().to_vec());
                }
            }
        }
        // Envoy's flags as the exchange ends (with a status: how its body ended).
        h.properties
            .insert("response.flags".into(), flags.to_le_bytes().to_vec());
        s.on_log(&self.vm, &mut h);
        self.now_ns = h.now_ns;
        self.shared = std::mem::take(&mut h.shared);
        self.metrics = std::mem::take(&mut h.metrics);
        Sent {
            route,
            body: sent_body,
            reply: h.reply.map(|r| (r.status, r.headers)),
            client_body,
            failover: h
                .filter_state
                .get(FS_FAILOVER)
                .map(|v| String::from_utf8_lossy(v).into_owned()),
        }
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> i64 {
        self.metrics
            .get(&telemetry::stat_name(name, labels))
            .copied()
            .unwrap_or(0)
    }

    fn state(&self, d: &str) -> i64 {
        self.metric(DESTINATION_STATE, &[("model", "llama"), ("destination", d)])
    }
}

/// A random value that the weighted choice maps to `stable` (point < 90 of 100) or `canary`.
const TO_STABLE: u64 = 0;
fn to_canary(w: &World) -> u64 {
    // The VM's xorshift output for a state is deterministic: search one that lands on canary.
    (1..10_000u64)
        .find(|&r| {
            w.vm.rng.set(r);
            w.vm.random() % 100 >= 90
        })
        .unwrap()
}

#[test]
fn a_failing_destination_opens_at_its_threshold_then_is_tried_and_returns() {
    let mut w = World::new();
    let canary = to_canary(&w);
    for i in 0..3 {
        let s = w.send("llama", canary, Some(503), 0);
        assert_eq!(s.route.as_deref(), Some("canary"), "request {i}");
    }
    assert_eq!(w.state("canary"), 1, "open after 3 failures");
    // Its share now goes to stable; stable's own requests are unchanged.
    let s = w.send("llama", canary, Some(200), 0);
    assert_eq!(s.route.as_deref(), Some("stable"));
    assert_eq!(s.failover.as_deref(), Some("destination"));
    assert_eq!(
        w.send("llama", TO_STABLE, Some(200), 0).route.as_deref(),
        Some("stable")
    );
    assert_eq!(
        w.metric(FAILOVERS_TOTAL, &[("model", "llama"), ("reason", "destination")]),
        1
    );
    // Probation over: the next request that lands on it is a trial; it succeeds: closed.
    w.now_ns += 10_000_000_000;
    let s = w.send("llama", canary, Some(200), 0);
    assert_eq!(s.route.as_deref(), Some("canary"));
    assert_eq!(s.failover.as_deref(), Some("trial"));
    assert_eq!(w.state("canary"), 0);
    assert_eq!(w.send("llama", canary, Some(200), 0).route.as_deref(), Some("canary"));
}

/// The test configuration with `firstByteTimeout: 2s`.
fn with_first_byte_timeout() -> World {
    World::with(&CFG.replace(
        r#""maxProbation":"40s""#,
        r#""maxProbation":"40s","firstByteTimeout":"2s""#,
    ))
}

#[test]
fn late_first_bytes_count_as_failures() {
    let mut w = with_first_byte_timeout();
    let canary = to_canary(&w);
    w.send_after("llama", canary, Some(200), 0, 2_000);
    assert_eq!(w.state("canary"), 0);
    for _ in 0..3 {
        w.send_after("llama", canary, Some(200), 0, 2_001);
    }
    assert_eq!(w.state("canary"), 1, "three late answers open it");
    assert_eq!(
        w.metric(
            telemetry::DESTINATION_FAILURES_TOTAL,
            &[("model", "llama"), ("destination", "canary"), ("reason", "timeout")]
        ),
        3
    );
}

#[test]
fn the_tick_counts_a_request_whose_first_byte_is_overdue_once_and_lets_it_go_on() {
    let mut w = with_first_byte_timeout();
    let canary = to_canary(&w);
    let mut h = MemoryHost::new();
    h.now_ns = w.now_ns;
    let body = br#"{"model":"llama","messages":[]}"#;
    let mut streams = Vec::new();
    for (id, random, route) in [
        (1, canary, "canary"),
        (2, canary, "canary"),
        (3, canary, "canary"),
        (4, TO_STABLE, "stable"),
    ] {
        chat_request(&mut h, body);
        w.vm.rng.set(random);
        let mut s = Stream::new(id);
        s.on_request_headers(&w.vm, &mut h, false);
        assert_eq!(s.on_request_body(&w.vm, &mut h, body.len(), true), Action::Continue);
        assert_eq!(h.header(Map::Request, "x-ai-route"), Some(route));
        streams.push(s);
    }
    assert_eq!(h.tick_ms, TICK_MS, "awaiting first bytes keeps the timer on");
    let answer = |s: &mut Stream, h: &mut MemoryHost| {
        h.response_headers = vec![(":status".into(), "200".into())];
        s.on_response_headers(&w.vm, h, true);
        s.on_log(&w.vm, h);
    };
    h.now_ns += 1_000_000_000;
    answer(&mut streams[3], &mut h);
    w.vm.on_tick(&mut h);
    h.now_ns += 1_000_000_000;
    w.vm.on_tick(&mut h);
    w.metrics = h.metrics.clone();
    assert_eq!(w.state("canary"), 0, "not yet overdue at the deadline itself");
    h.now_ns += 1_000_000;
    w.vm.on_tick(&mut h);
    w.metrics = h.metrics.clone();
    assert_eq!(
        w.state("canary"),
        1,
        "three requests without a first byte open it, still in flight"
    );
    let timeouts = |w: &World, d: &str| {
        w.metric(
            telemetry::DESTINATION_FAILURES_TOTAL,
            &[("model", "llama"), ("destination", d), ("reason", "timeout")],
        )
    };
    assert_eq!((timeouts(&w, "canary"), timeouts(&w, "stable")), (3, 0));
    // Their answers come late, successfully: not counted again, and the breaker stays open.
    let (late, _) = streams.split_at_mut(3);
    for s in late {
        answer(s, &mut h);
    }
    w.metrics = h.metrics.clone();
    assert_eq!((timeouts(&w, "canary"), w.state("canary")), (3, 1));
    w.vm.on_tick(&mut h);
    assert_eq!(h.tick_ms, 0, "nothing awaited: the timer stops");
}

#[test]
fn resets_and_connect_failures_count_and_a_failed_trial_doubles_the_probation() {
    let mut w = World::new();
    let canary = to_canary(&w);
    for flags in [FLAG_CONNECT_FAILURE, FLAG_REMOTE_RESET, FLAG_CONNECTION_TERMINATION] {
        w.send("llama", canary, None, flags);
    }
    assert_eq!(w.state("canary"), 1);
    assert_eq!(
        w.metric(
            telemetry::DESTINATION_FAILURES_TOTAL,
            &[("model", "llama"), ("destination", "canary"), ("reason", "reset")]
        ),
        2
    );
    // A client that went away (no flags that blame the backend) changes nothing.
    let mut w2 = World::new();
    for _ in 0..5 {
        w2.send("llama", canary, None, 0x4000);
    }
    assert_eq!(w2.state("canary"), 0);
    // A failed trial: open again, for twice as long.
    w.now_ns += 10_000_000_000;
    w.send("llama", canary, Some(503), 0);
    assert_eq!(w.state("canary"), 1);
    w.now_ns += 10_000_000_000;
    assert_eq!(w.send("llama", canary, Some(200), 0).route.as_deref(), Some("stable"));
    w.now_ns += 10_000_000_000;
    assert_eq!(w.send("llama", canary, Some(200), 0).route.as_deref(), Some("canary"));
}

#[test]
fn all_open_goes_to_the_fallback_model_rewritten_and_restored_then_503() {
    let mut w = World::new();
    let canary = to_canary(&w);
    for r in [TO_STABLE, canary] {
        for _ in 0..3 {
            w.send("llama", r, Some(500), 0);
        }
    }
    let s = w.send("llama", TO_STABLE, Some(200), 0);
    assert_eq!(s.route.as_deref(), Some("qwen-a"));
    assert_eq!(s.failover.as_deref(), Some("fallback"));
    assert!(
        String::from_utf8_lossy(&s.body).contains(r#""model":"Qwen/Qwen2-7B""#),
        "{}",
        String::from_utf8_lossy(&s.body)
    );
    assert!(
        String::from_utf8_lossy(&s.client_body).contains(r#""model":"llama""#),
        "the client's name is restored"
    );
    // The fallback fails too: 503 model_unavailable at once, retry-after the nearest probation.
    for _ in 0..3 {
        w.send("qwen", TO_STABLE, Some(502), 0);
    }
    w.now_ns += 2_500_000_000;
    let s = w.send("llama", TO_STABLE, Some(200), 0);
    let (status, headers) = s.reply.expect("a local reply");
    assert_eq!(status, 503);
    assert!(headers.contains(&("retry-after".into(), "8".into())), "{headers:?}");
    assert_eq!(s.route, None);
    assert_eq!(
        w.metric(REJECTED_TOTAL, &[("model", "llama"), ("reason", "model_unavailable")]),
        1
    );
}

#[test]
fn a_caller_served_by_a_fallback_is_checked_and_charged_as_the_model_it_asked_for() {
    let mut w = World::with(
        r#"{"failover":{"consecutiveFailures":3,"probation":"10s","maxProbation":"40s"},
          "models":[
            {"name":"llama","limits":{"requestsPerMinute":4,"by":"global"},
             "destinations":[{"name":"stable"}],"fallbacks":[{"model":"qwen"}]},
            {"name":"qwen","destinations":[{"name":"qwen-a"}]}]}"#,
    );
    for _ in 0..3 {
        assert_eq!(w.send("llama", 0, Some(503), 0).route.as_deref(), Some("stable"));
    }
    // Open: the fallback serves it, charged to llama's limit (the fourth request of four).
    let s = w.send("llama", 0, Some(200), 0);
    assert_eq!((s.route.as_deref(), s.reply.map(|r| r.0)), (Some("qwen-a"), None));
    // The fifth is over llama's limit, whoever would serve it.
    let s = w.send("llama", 0, Some(200), 0);
    assert_eq!(s.reply.map(|r| r.0), Some(429));
    assert_eq!(s.route, None);
}

#[test]
fn an_answer_that_the_backend_breaks_off_mid_body_is_a_failure() {
    let mut w = World::new();
    let canary = to_canary(&w);
    // A client that leaves mid-answer (downstream termination) is no failure of the backend.
    for _ in 0..3 {
        w.send("llama", canary, Some(200), 0x4000);
    }
    assert_eq!(w.state("canary"), 0);
    // A backend that resets or breaks its chunked body after its 200 headers fails.
    for flags in [
        FLAG_REMOTE_RESET,
        FLAG_UPSTREAM_PROTOCOL_ERROR,
        FLAG_CONNECTION_TERMINATION,
    ] {
        assert_eq!(
            w.send("llama", canary, Some(200), flags).route.as_deref(),
            Some("canary")
        );
    }
    assert_eq!(w.state("canary"), 1, "three broken answers open it");
    assert_eq!(
        w.metric(
            telemetry::DESTINATION_FAILURES_TOTAL,
            &[("model", "llama"), ("destination", "canary"), ("reason", "reset")]
        ),
        3
    );
}

/// Every failover counter of every model and destination exists, at zero, from the VM's first
/// request on: `rate()` and alerts see a series before its first count (Prometheus counters
/// that appear only at their first increment hide the first failures from `increase()`).
#[test]
fn the_failover_counters_exist_at_zero_before_any_failure() {
    let mut w = World::new();
    assert_eq!(
        w.send("llama", TO_STABLE, Some(200), 0).route.as_deref(),
        Some("stable")
    );
    let cfg = Config::from_json(CFG.as_bytes()).unwrap();
    for m in &cfg.models {
        for reason in telemetry::FAILOVER_REASONS {
            let name = telemetry::stat_name(FAILOVERS_TOTAL, &[("model", &m.name), ("reason", reason)]);
            assert_eq!(w.metrics.get(&name), Some(&0), "{name}");
        }
        let name = telemetry::stat_name(REJECTED_TOTAL, &[("model", &m.name), ("reason", "model_unavailable")]);
        assert_eq!(w.metrics.get(&name), Some(&0), "{name}");
        for d in &m.destinations {
            for reason in telemetry::FAILURE_REASONS {
                let labels = [
                    ("model", m.name.as_str()),
                    ("destination", d.name.as_str()),
                    ("reason", reason),
                ];
                let name = telemetry::stat_name(DESTINATION_FAILURES_TOTAL, &labels);
                assert_eq!(w.metrics.get(&name), Some(&0), "{name}");
            }
        }
    }
    // Made once per VM: counts go on from there.
    for _ in 0..2 {
        w.send("llama", to_canary(&w), Some(503), 0);
    }
    let failures = [("model", "llama"), ("destination", "canary"), ("reason", "status")];
    assert_eq!(w.metric(DESTINATION_FAILURES_TOTAL, &failures), 2);
}
