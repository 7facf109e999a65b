use super::*;
use crate::hold::{State, HOLD_TIMEOUT_NS};
use crate::memory_host::MemoryHost;
use crate::telemetry::{REJECTED_TOTAL, REQUESTS_TOTAL, USAGE_MISSING_TOTAL};

const CFG: &str = r#"{
  "models": [
    {"name": "llama-3-8b", "aliases": ["gpt-3.5-turbo"],
     "destinations": [{"name": "llama-stable", "weight": 95}, {"name": "llama-canary", "weight": 5}]},
    {"name": "qwen", "destinations": [{"name": "qwen"}]},
    {"name": "resnet", "destinations": [{"name": "triton"}]},
    {"name": "private", "allow": ["spiffe://td/ns/a/*"], "destinations": [{"name": "private"}]},
    {"name": "metered", "limits": {"tokensPerMinute": 1000, "by": "global"}, "destinations": [{"name": "metered"}]}
  ]}"#;

/// The test configuration with `extra` fields (and the access-log filter state on, which
/// these tests read).
fn vm(extra: &str) -> Vm {
    let json = CFG.replacen('{', &format!("{{\"filterState\":true,{extra}"), 1);
    Vm::new(Config::from_json(json.as_bytes()).unwrap(), 42)
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> MemoryHost {
    let mut h = MemoryHost::new();
    h.now_ns = 1_000_000_000;
    h.request_headers = vec![
        (":method".into(), method.into()),
        (":path".into(), path.into()),
        (":authority".into(), "llm.example.com".into()),
    ];
    if !body.is_empty() {
        h.request_headers
            .push(("content-length".into(), body.len().to_string()));
    }
    for (k, v) in headers {
        h.request_headers.push((k.to_string(), v.to_string()));
    }
    h.request_body = body.to_vec();
    h
}

/// Request headers, then the body in one piece. Returns whether the request went upstream.
fn send(vm: &Vm, h: &mut MemoryHost, s: &mut Stream) -> bool {
    let body_len = h.request_body.len();
    let a = s.on_request_headers(vm, h, body_len == 0);
    if h.reply.is_some() {
        return false;
    }
    if a == Action::Pause || s.flow().reading_body() {
        let b = s.on_request_body(vm, h, body_len, true);
        return h.reply.is_none() && b == Action::Continue;
    }
    true
}

/// A response: headers, then the chunks; `ends`: whether the last chunk ends the stream.
fn respond(vm: &Vm, h: &mut MemoryHost, s: &mut Stream, headers: &[(&str, &str)], chunks: &[&[u8]], ends: bool) {
    h.response_headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    s.on_response_headers(vm, h, chunks.is_empty() && ends);
    for (i, c) in chunks.iter().enumerate() {
        h.response_body = c.to_vec();
        s.on_response_body(vm, h, c.len(), ends && i + 1 == chunks.len());
    }
    s.on_log(vm, h);
}

fn ok_json() -> Vec<(&'static str, &'static str)> {
    vec![(":status", "200"), ("content-type", "application/json")]
}

#[test]
fn a_refused_route_header_is_a_500_not_a_misroute_and_refusals_are_counted() {
    let vm = vm("");
    let body = br#"{"model":"qwen","messages":[]}"#;
    let calls = ["set_header", "clear_route_cache"];
    for refused in calls {
        let mut h = request(
            "POST",
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            body,
        );
        h.refuse = vec![refused];
        let mut s = Stream::new(1);
        assert!(!send(&vm, &mut h, &mut s), "{refused}: not sent on");
        let reply = h.reply.clone().unwrap();
        assert_eq!(reply.status, 500, "{refused}");
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            (v["error"]["code"].as_str(), v["error"]["type"].as_str()),
            (Some("route_failed"), Some("server_error"))
        );
        s.on_log(&vm, &mut h);
        let n = |name: &str, labels: &[(&str, &str)]| h.metrics.get(&telemetry::stat_name(name, labels)).copied();
        assert!(
            n(telemetry::HOST_ERRORS_TOTAL, &[("call", refused)]) >= Some(1),
            "{refused}: {:?}",
            h.metrics
        );
        assert_eq!(
            n(REJECTED_TOTAL, &[("model", "qwen"), ("reason", "route_failed")]),
            Some(1)
        );
        assert!(
            !h.metrics.keys().any(|k| k.contains("destination=.=qwen;")),
            "{refused}: never counted as routed to qwen: {:?}",
            h.metrics
        );
    }
    // A refused access-log write is counted; the request goes on.
    let mut h = request(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        body,
    );
    h.refuse = vec!["set_filter_state"];
    let mut s = Stream::new(1);
    assert!(send(&vm, &mut h, &mut s));
    assert_eq!(h.header(Map::Request, "x-ai-route"), Some("qwen"));
    assert!(
        h.metrics.get(&telemetry::stat_name(
            telemetry::HOST_ERRORS_TOTAL,
            &[("call", "set_filter_state")]
        )) >= Some(&1)
    );
}

#[test]
fn spoofed_route_and_model_headers_are_dropped_from_every_request() {
    let vm = vm("");
    for (method, path, ct, body) in [
        ("GET", "/v1/chat/completions", "application/json", &b""[..]),
        ("POST", "/v1/chat/completions", "text/plain", b"hello"),
        ("POST", "/v1/chat/completions", "application/json", b"{\"messages\":[]}"),
        ("POST", "/api/orders", "application/json", b"{\"model\":\"x\"}"),
    ] {
        let mut h = request(
            method,
            path,
            &[
                ("content-type", ct),
                ("x-ai-route", "llama-canary"),
                ("x-ai-model", "private"),
            ],
            body,
        );
        let mut s = Stream::new(1);
        send(&vm, &mut h, &mut s);
        assert_eq!(h.header(Map::Request, "x-ai-route"), None, "{method} {path} {ct}");
        assert_eq!(h.header(Map::Request, "x-ai-model"), None);
    }
}

#[test]
fn held_body_routing_sets_the_route_and_says_so() {
    let vm = vm("");
    let body = br#"{"model":"qwen","messages":[]}"#;
    let mut h = request(
        "POST",
        "/v1/chat/completions",
        &[("accept-encoding", "gzip, deflate")],
        body,
    );
    let mut s = Stream::new(1);
    assert_eq!(s.on_request_headers(&vm, &mut h, false), Action::Pause);
    assert_eq!(
        h.header(Map::Request, "accept-encoding"),
        None,
        "an uncompressed answer is asked for"
    );
    assert_eq!(s.on_request_body(&vm, &mut h, body.len(), true), Action::Continue);
    assert_eq!(h.header(Map::Request, "x-ai-route"), Some("qwen"));
    assert_eq!(h.route_cache_cleared, 1);
    assert_eq!(vm.hold_state(), State::Proven);
    respond(
        &vm,
        &mut h,
        &mut s,
        &ok_json(),
        &[br#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#],
        true,
    );
    assert_eq!(h.header(Map::Response, ROUTE_RESPONSE_HEADER), Some("qwen"));
    assert_eq!(
        h.filter_state.get(FS_DESTINATION).map(Vec::as_slice),
        Some(&b"qwen"[..])
    );
    assert_eq!(
        h.metric(
            REQUESTS_TOTAL,
            &[("model", "qwen"), ("destination", "qwen"), ("code_class", "2xx")]
        ),
        1
    );
    assert_eq!(
        h.metric(
            USAGE_MISSING_TOTAL,
            &[("model", "qwen"), ("destination", "qwen"), ("reason", "absent")]
        ),
        0
    );
}

#[test]
fn without_body_routing_nothing_claims_a_destination() {
    let vm = vm(r#""bodyRouting": false,"#);
    for body in [&br#"{"model":"llama-3-8b"}"#[..], br#"{"model":"qwen"}"#] {
        let mut h = request("POST", "/v1/chat/completions", &[], body);
        let mut s = Stream::new(1);
        assert!(send(&vm, &mut h, &mut s));
        assert_eq!(h.header(Map::Request, "x-ai-route"), None);
        respond(&vm, &mut h, &mut s, &ok_json(), &[b"{}"], true);
        assert_eq!(h.header(Map::Response, ROUTE_RESPONSE_HEADER), None);
        assert_eq!(
            h.filter_state.get(FS_DESTINATION).map(Vec::as_slice),
            Some(&b"unrouted"[..])
        );
        assert!(
            h.metrics
                .keys()
                .all(|k| !k.contains("canary") && !k.contains("destination=.=qwen")),
            "{:?}",
            h.metrics
        );
    }
    // A model in the path is still routed from the headers.
    let mut h = request("POST", "/v2/models/resnet/infer", &[], b"{}");
    let mut s = Stream::new(1);
    send(&vm, &mut h, &mut s);
    assert_eq!(h.header(Map::Request, "x-ai-route"), Some("triton"));
}

#[test]
fn bad_bodies_are_refused_before_anything_goes_upstream() {
    let vm = vm(r#""onMissingModel": "reject","#);
    for (body, status, code) in [
        (
            &br#"{"model":"llama-3-8b","messages":[],"model":"resnet"}"#[..],
            400,
            "duplicate_model",
        ),
        (br#"{"model": "llama-3-8b", "messages": ["#, 400, "invalid_json"),
        (br#"{"model":"llama-3-8b"} trailing"#, 400, "invalid_json"),
        (b"", 400, "model_required"),
    ] {
        let mut h = request(
            "POST",
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            body,
        );
        let mut s = Stream::new(1);
        assert!(!send(&vm, &mut h, &mut s), "{}", String::from_utf8_lossy(body));
        let reply = h.reply.clone().unwrap();
        assert_eq!(reply.status, status);
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v["error"]["code"], code);
        assert_eq!(h.header(Map::Request, "x-ai-route"), None);
        s.on_log(&vm, &mut h);
        assert_eq!(h.metric(REJECTED_TOTAL, &[("model", "other"), ("reason", code)]), 1);
    }
}

#[test]
fn admission_answers_403_and_limits_charge_on_every_ending() {
    let vm = vm("");
    let body = br#"{"model":"private"}"#;
    let mut h = request("POST", "/v1/chat/completions", &[], body);
    let mut s = Stream::new(1);
    assert!(!send(&vm, &mut h, &mut s));
    assert_eq!(h.reply.as_ref().map(|r| r.status), Some(403));
    let mut h = request("POST", "/v1/chat/completions", &[], body);
    h.properties.insert(
        "connection.uri_san_peer_certificate".into(),
        b"spiffe://td/ns/a/sa/web".to_vec(),
    );
    assert!(send(&vm, &mut h, &mut Stream::new(2)));

    // A stream that declined usage: the filter asked for it anyway; the client then
    // disconnects before the end: charged max_tokens (plus input estimated from the body).
    let body = br#"{"model":"metered","stream":true,"stream_options":{"include_usage":false},"max_tokens":300}"#;
    let mut h = request("POST", "/v1/chat/completions", &[], body);
    let mut s = Stream::new(3);
    assert!(send(&vm, &mut h, &mut s));
    let forced: serde_json::Value = serde_json::from_slice(&h.request_body).unwrap();
    assert_eq!(forced["stream_options"]["include_usage"], true);
    let sse = [(":status", "200"), ("content-type", "text/event-stream")];
    respond(
        &vm,
        &mut h,
        &mut s,
        &sse,
        &[b"data: {\"choices\":[{\"delta\":{}}]}\n\n"],
        false,
    );
    let labels = [
        ("model", "metered"),
        ("destination", "metered"),
        ("reason", "incomplete"),
    ];
    assert_eq!(h.metric(USAGE_MISSING_TOTAL, &labels), 1);
    let shared = h.shared.clone();
    let bucket_level = |shared: &crate::memory_host::SharedMem| {
        let (k, _) = shared_key(shared);
        let (v, _) = shared.get(&k);
        f64::from_le_bytes(v.unwrap()[..8].try_into().unwrap())
    };
    let charged = 1000.0 - bucket_level(&shared);
    let input_estimate = (body.len() as f64 / 4.0).ceil();
    assert!((charged - (300.0 + input_estimate)).abs() < 1.0, "charged {charged}");

    // A complete stream with usage: exactly what was reported.
    let body = br#"{"model":"metered","stream":true}"#;
    let mut h2 = request("POST", "/v1/chat/completions", &[], body);
    h2.shared = shared;
    let mut s = Stream::new(4);
    assert!(send(&vm, &mut h2, &mut s));
    let before = bucket_level(&h2.shared);
    respond(
        &vm,
        &mut h2,
        &mut s,
        &sse,
        &[b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":5}}\n\ndata: [DONE]\n\n"],
        true,
    );
    assert!((before - bucket_level(&h2.shared) - 12.0).abs() < 0.5);

    // 429 once the bucket is empty.
    let mut h3 = request("POST", "/v1/chat/completions", &[], br#"{"model":"metered"}"#);
    h3.shared = h2.shared.clone();
    let mut s = Stream::new(5);
    assert!(send(&vm, &mut h3, &mut s));
    respond(
        &vm,
        &mut h3,
        &mut s,
        &ok_json(),
        &[br#"{"usage":{"prompt_tokens":900,"completion_tokens":900}}"#],
        true,
    );
    let mut h4 = request("POST", "/v1/chat/completions", &[], br#"{"model":"metered"}"#);
    h4.shared = h3.shared.clone();
    assert!(!send(&vm, &mut h4, &mut Stream::new(6)));
    assert_eq!(h4.reply.as_ref().map(|r| r.status), Some(429));
}

/// A request for `private` (allowed: `spiffe://td/ns/a/*`) in a proxy described by `props`.
fn private_in(vm: &Vm, props: &[(&str, &[u8])], headers: &[(&str, &str)]) -> (MemoryHost, Stream) {
    let mut h = request("POST", "/v1/chat/completions", headers, br#"{"model":"private"}"#);
    for (k, v) in props {
        h.properties.insert(k.to_string(), v.to_vec());
    }
    let mut s = Stream::new(1);
    send(vm, &mut h, &mut s);
    (h, s)
}

const OUTBOUND: &[u8] = &2i64.to_le_bytes();
const INBOUND: &[u8] = &1i64.to_le_bytes();

#[test]
fn a_sidecars_outbound_caller_is_its_own_workload() {
    let vm = vm(r#""trustDomain":"td","identityHeader":"x-caller","#);
    let sidecar = |ns: &'static [u8], dir: &'static [u8]| -> Vec<(&'static str, &'static [u8])> {
        vec![
            ("xds.node.id", b"sidecar~10.0.0.1~web-1.a~a.svc.cluster.local"),
            ("xds.node.metadata.NAMESPACE", ns),
            ("xds.node.metadata.SERVICE_ACCOUNT", b"web"),
            ("xds.listener_direction", dir),
        ]
    };
    // Plaintext from the app, no peer certificate: the sidecar's own workload is the caller.
    let (h, s) = private_in(&vm, &sidecar(b"a", OUTBOUND), &[]);
    assert!(h.reply.is_none(), "admitted: {:?}", h.reply);
    assert_eq!(s.caller(), Some((Some("spiffe://td/ns/a/sa/web"), Source::Workload)));
    // Another namespace's workload is refused, whatever header it sends.
    let vm_b = vm_fresh(&vm);
    let (h, s) = private_in(
        &vm_b,
        &sidecar(b"b", OUTBOUND),
        &[("x-caller", "spiffe://td/ns/a/sa/web")],
    );
    assert_eq!(h.reply.as_ref().map(|r| r.status), Some(403));
    assert_eq!(s.caller(), Some((Some("spiffe://td/ns/b/sa/web"), Source::Workload)));
    // Inbound, the workload is the callee: the peer's certificate names the caller.
    let vm_c = vm_fresh(&vm);
    let mut props = sidecar(b"a", INBOUND);
    let (h, _) = private_in(&vm_c, &props, &[]);
    assert_eq!(
        h.reply.as_ref().map(|r| r.status),
        Some(403),
        "no certificate, no identity"
    );
    props.push(("connection.uri_san_peer_certificate", b"spiffe://td/ns/a/sa/api"));
    let (h, s) = private_in(&vm_c, &props, &[]);
    assert!(h.reply.is_none());
    assert_eq!(
        s.caller(),
        Some((Some("spiffe://td/ns/a/sa/api"), Source::PeerCertificate))
    );
}

#[test]
fn older_envoys_top_level_node_attributes_are_read_too() {
    let legacy: Vec<(&str, &[u8])> = vec![
        ("node.id", b"sidecar~10.0.0.1~web-1.a~a.svc.cluster.local"),
        ("node.metadata.NAMESPACE", b"a"),
        ("node.metadata.SERVICE_ACCOUNT", b"web"),
        ("listener_direction", OUTBOUND),
    ];
    let (h, s) = private_in(&vm_default(), &legacy, &[]);
    assert!(h.reply.is_none(), "{:?}", h.reply);
    assert_eq!(s.caller(), Some((Some("spiffe://td/ns/a/sa/web"), Source::Workload)));
}

/// The same configuration in a new VM (the node is read once per VM).
fn vm_fresh(vm: &Vm) -> Vm {
    Vm::new(vm.config.clone(), 42)
}

#[test]
fn a_gateway_never_lends_its_own_identity() {
    let gateway: Vec<(&str, &[u8])> = vec![
        ("xds.node.id", b"router~10.0.0.2~gw-1.a~a.svc.cluster.local"),
        ("xds.node.metadata.NAMESPACE", b"a"),
        ("xds.node.metadata.SERVICE_ACCOUNT", b"gw"),
        ("xds.listener_direction", OUTBOUND),
    ];
    for extra in ["", r#""identitySource":"workload","#] {
        let vm = vm(&format!(r#"{extra}"trustDomain":"td","#));
        let (h, s) = private_in(&vm, &gateway, &[]);
        assert_eq!(h.reply.as_ref().map(|r| r.status), Some(403), "{extra}");
        assert_eq!(s.caller().and_then(|(p, _)| p), None, "{extra}");
    }
    let vm = vm(r#""identitySource":"workload","trustDomain":"td","#);
    let (h, s) = private_in(&vm, &gateway, &[]);
    assert_eq!(s.caller(), Some((None, Source::Refused)));
    assert!(h.logs.iter().any(|(_, m)| m.contains("never lends")), "{:?}", h.logs);
    // With client mTLS, the caller's certificate.
    let mut with_cert = gateway.clone();
    with_cert.push(("connection.uri_san_peer_certificate", b"spiffe://td/ns/a/sa/partner"));
    let (h, s) = private_in(&vm_fresh(&vm_default()), &with_cert, &[]);
    assert!(h.reply.is_none());
    assert_eq!(
        s.caller(),
        Some((Some("spiffe://td/ns/a/sa/partner"), Source::PeerCertificate))
    );
}

fn vm_default() -> Vm {
    vm(r#""trustDomain":"td","#)
}

#[test]
fn a_waypoint_reads_istios_peer_principal_and_headers_only_where_configured() {
    let waypoint: Vec<(&str, &[u8])> = vec![
        ("xds.node.id", b"waypoint~10.0.0.3~waypoint-1.a~a.svc.cluster.local"),
        ("filter_state.io.istio.peer_principal", b"td/ns/a/sa/web"),
    ];
    let (h, s) = private_in(&vm_default(), &waypoint, &[]);
    assert!(h.reply.is_none());
    assert_eq!(
        s.caller(),
        Some((Some("spiffe://td/ns/a/sa/web"), Source::PeerPrincipal))
    );
    // A header names nobody unless configured, and then only as the configured source says.
    let (h, _) = private_in(&vm_default(), &[], &[("x-caller", "spiffe://td/ns/a/sa/web")]);
    assert_eq!(h.reply.as_ref().map(|r| r.status), Some(403));
    let header_only = vm(r#""identitySource":"header","identityHeader":"x-caller","#);
    let (h, s) = private_in(&header_only, &waypoint[..1], &[("x-caller", "spiffe://td/ns/a/sa/web")]);
    assert!(h.reply.is_none());
    assert_eq!(s.caller(), Some((Some("spiffe://td/ns/a/sa/web"), Source::Header)));
}

#[test]
fn refusals_keep_their_model_in_metrics_and_the_access_log() {
    let vm = vm("");
    let (mut h, mut s) = private_in(&vm, &[], &[]);
    assert_eq!(h.reply.as_ref().map(|r| r.status), Some(403));
    s.on_log(&vm, &mut h);
    assert_eq!(
        h.metric(
            REJECTED_TOTAL,
            &[("model", "private"), ("reason", "model_access_denied")]
        ),
        1
    );
    let labels = [("model", "private"), ("destination", "none"), ("code_class", "4xx")];
    assert_eq!(h.metric(REQUESTS_TOTAL, &labels), 1);
    assert_eq!(h.filter_state.get(FS_MODEL).map(Vec::as_slice), Some(&b"private"[..]));
    assert_eq!(
        h.filter_state.get(FS_DESTINATION).map(Vec::as_slice),
        Some(&b"none"[..])
    );
    // An unknown name stays `other`.
    let mut h = request("POST", "/v1/chat/completions", &[], br#"{"model":"nope"}"#);
    let mut s = Stream::new(2);
    send(&vm, &mut h, &mut s);
    s.on_log(&vm, &mut h);
    assert_eq!(
        h.metric(REJECTED_TOTAL, &[("model", "other"), ("reason", "model_not_found")]),
        1
    );
}

#[test]
fn with_access_rules_what_cannot_be_judged_is_refused_by_default() {
    let guarded = vm(r#""maxBodyBytes":64,"#);
    assert_eq!(guarded.config.on_missing_model, crate::config::Policy::Reject);
    let padded = format!(r#"{{"model":"private","pad":"{}"}}"#, "x".repeat(100));
    for (body, status) in [
        (&br#"{"model":null,"messages":[]}"#[..], 400),
        (br#"{"Model":"private"}"#, 400),
        (br#"{"model":["private"]}"#, 400),
        (br#"{"messages":[]}"#, 400),
        (padded.as_bytes(), 413),
    ] {
        let mut h = request("POST", "/v1/chat/completions", &[], body);
        assert!(
            !send(&guarded, &mut h, &mut Stream::new(1)),
            "{}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(
            h.reply.as_ref().map(|r| r.status),
            Some(status),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // Without any model policy, the defaults let them through unrouted (as before).
    let open = Vm::new(
        Config::from_json(br#"{"maxBodyBytes":64,"models":[{"name":"m","destinations":[{"name":"d"}]}]}"#).unwrap(),
        1,
    );
    let mut h = request("POST", "/v1/chat/completions", &[], br#"{"model":null}"#);
    assert!(send(&open, &mut h, &mut Stream::new(1)));
    let mut h = request("POST", "/v1/chat/completions", &[], padded.as_bytes());
    assert!(send(&open, &mut h, &mut Stream::new(2)));
    // An explicit passthrough stays possible (and `wasmpack check` warns about it).
    let explicit = vm(r#""onMissingModel":"passthrough","#);
    let mut h = request("POST", "/v1/chat/completions", &[], br#"{"model":null}"#);
    assert!(send(&explicit, &mut h, &mut Stream::new(1)));
}

fn shared_key(s: &crate::memory_host::SharedMem) -> (String, ()) {
    (s.keys().into_iter().find(|k| k.ends_with("/t")).unwrap_or_default(), ())
}

#[test]
fn compressed_answers_are_counted_as_missing_never_as_zero() {
    let vm = vm("");
    let mut h = request(
        "POST",
        "/v1/chat/completions",
        &[("accept-encoding", "gzip")],
        br#"{"model":"qwen"}"#,
    );
    let mut s = Stream::new(1);
    assert!(send(&vm, &mut h, &mut s));
    let headers = [
        (":status", "200"),
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ];
    respond(&vm, &mut h, &mut s, &headers, &[b"\x1f\x8b\x08\x00junk"], true);
    assert_eq!(
        h.metric(
            USAGE_MISSING_TOTAL,
            &[("model", "qwen"), ("destination", "qwen"), ("reason", "encoded")]
        ),
        1
    );
    assert!(h.metrics.keys().all(|k| !k.ends_with("model_router_tokens_total")));
}

#[test]
fn the_safety_net_lets_go_and_only_consecutive_failures_switch_holding_off() {
    // No access rules or limits: a request let go continues, unrouted.
    let vm = Vm::new(
        Config::from_json(br#"{"models":[{"name":"qwen","destinations":[{"name":"qwen"}]}]}"#).unwrap(),
        1,
    );
    let mut h = request("POST", "/v1/chat/completions", &[], br#"{"model":"qwen"}"#);
    let mut streams: Vec<Stream> = (1..=3).map(Stream::new).collect();
    for s in streams.iter_mut().take(2) {
        assert_eq!(s.on_request_headers(&vm, &mut h, false), Action::Pause);
    }
    assert_eq!(h.tick_ms, crate::hold::TICK_MS);
    h.now_ns += HOLD_TIMEOUT_NS + 1;
    vm.on_tick(&mut h);
    assert_eq!(h.resumed, vec![1, 2]);
    assert_eq!(vm.hold_state(), State::Unknown { failures: 2 });
    // The released stream's body comes later: too late to route; it goes on unrouted.
    let len = h.request_body.len();
    assert_eq!(streams[0].on_request_body(&vm, &mut h, len, true), Action::Continue);
    assert_eq!(
        streams[0].flow().outcome(),
        &Outcome::Unread(crate::request::Unread::HoldReleased)
    );
    // A third in a row switches holding off; requests then go on at once, unrouted.
    assert_eq!(streams[2].on_request_headers(&vm, &mut h, false), Action::Pause);
    h.now_ns += HOLD_TIMEOUT_NS + 1;
    vm.on_tick(&mut h);
    assert!(matches!(vm.hold_state(), State::Off { .. }));
    assert_eq!(h.tick_ms, 0, "timer stopped");
    let mut s = Stream::new(4);
    assert_eq!(s.on_request_headers(&vm, &mut h, false), Action::Continue);
    assert_eq!(h.metric(crate::telemetry::HOLD_RELEASED_TOTAL, &[]), 3);
}

#[test]
fn a_body_that_ends_with_trailers_is_decided_before_anything_goes_on() {
    let vm = vm(r#""onMissingModel": "reject","#);
    // Headers, the body without an end, then trailers: the decision is made at the trailers.
    let trailed = |body: &[u8]| {
        let mut h = request("POST", "/v1/chat/completions", &[], body);
        let mut s = Stream::new(3);
        assert_eq!(s.on_request_headers(&vm, &mut h, false), Action::Pause);
        if !body.is_empty() {
            assert_eq!(s.on_request_body(&vm, &mut h, body.len(), false), Action::Pause);
        }
        let a = s.on_request_trailers(&vm, &mut h);
        (h, s, a)
    };
    // A model the caller may not use is refused, never passed on undecided.
    let (h, s, a) = trailed(br#"{"model":"private","messages":[]}"#);
    assert_eq!(a, Action::Pause);
    let reply = h.reply.clone().unwrap();
    assert_eq!(reply.status, 403, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(
        s.flow().outcome(),
        &Outcome::Denied {
            model: 3,
            reason: RejectReason::ModelAccessDenied
        }
    );
    assert_eq!(h.header(Map::Request, "x-ai-route"), None);
    // No body at all, only trailers: no model.
    let (h, _, a) = trailed(b"");
    assert_eq!(a, Action::Pause);
    assert_eq!(h.reply.clone().unwrap().status, 400);
    // A model it may use is routed.
    let (mut h, mut s, a) = trailed(br#"{"model":"qwen","messages":[]}"#);
    assert_eq!(a, Action::Continue);
    assert!(h.reply.is_none());
    assert_eq!(h.header(Map::Request, "x-ai-route"), Some("qwen"));
    assert_eq!(h.route_cache_cleared, 1);
    // The answer's trailers end its body too: the usage is final before the log.
    h.response_headers = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "text/event-stream".into()),
    ];
    assert_eq!(s.on_response_headers(&vm, &mut h, false), Action::Continue);
    let events =
        b"data: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\n";
    h.response_body = events.to_vec();
    assert_eq!(s.on_response_body(&vm, &mut h, events.len(), false), Action::Continue);
    assert_eq!(h.filter_state.get(FS_OUTPUT_TOKENS), None);
    assert_eq!(s.on_response_trailers(&vm, &mut h), Action::Continue);
    assert_eq!(h.filter_state.get(FS_OUTPUT_TOKENS).map(Vec::as_slice), Some(&b"7"[..]));
    s.on_log(&vm, &mut h);
    assert_eq!(
        h.metric(
            crate::telemetry::TOKENS_TOTAL,
            &[("model", "qwen"), ("destination", "qwen"), ("type", "input")]
        ),
        5
    );
}

#[test]
fn with_access_rules_a_body_that_never_comes_is_refused_not_let_through() {
    let vm = vm("");
    let mut h = request("POST", "/v1/chat/completions", &[], br#"{"model":"private"}"#);
    let mut s = Stream::new(7);
    assert_eq!(s.on_request_headers(&vm, &mut h, false), Action::Pause);
    h.now_ns += HOLD_TIMEOUT_NS + 1;
    vm.on_tick(&mut h);
    assert!(h.resumed.is_empty());
    let reply = h.reply.clone().unwrap();
    assert_eq!(reply.status, 503);
    assert!(reply.headers.contains(&("retry-after".into(), "1".into())));
    s.on_log(&vm, &mut h);
    assert_eq!(s.flow().outcome(), &Outcome::Rejected(RejectReason::BodyNotReceived));
}

#[test]
fn the_models_list_comes_from_the_configuration_and_the_callers_rights() {
    let vm = vm(r#""serveModelList": true, "identityHeader": "x-client-id","#);
    let ids = |h: &MemoryHost| -> Vec<String> {
        let r = h.reply.clone().unwrap();
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut h = request("GET", "/v1/models", &[], b"");
    assert_eq!(Stream::new(1).on_request_headers(&vm, &mut h, true), Action::Pause);
    assert_eq!(ids(&h), ["llama-3-8b", "gpt-3.5-turbo", "qwen", "resnet", "metered"]);
    let mut h = request("GET", "/v1/models", &[("x-client-id", "spiffe://td/ns/a/sa/x")], b"");
    Stream::new(1).on_request_headers(&vm, &mut h, true);
    assert!(ids(&h).contains(&"private".to_string()));
    let mut h = request("GET", "/v1/models/private", &[], b"");
    Stream::new(1).on_request_headers(&vm, &mut h, true);
    assert_eq!(h.reply.as_ref().map(|r| r.status), Some(404));
    // Off: the request goes on to the backend as before.
    let off = vm_plain();
    let mut h = request("GET", "/v1/models", &[], b"");
    assert_eq!(Stream::new(1).on_request_headers(&off, &mut h, true), Action::Continue);
    assert!(h.reply.is_none());
}

fn vm_plain() -> Vm {
    vm("")
}

#[test]
fn decision_headers_follow_the_setting() {
    for (mode, route, model) in [
        ("none", None, None),
        ("route", Some("qwen"), None),
        ("route+model", Some("qwen"), Some("qwen")),
    ] {
        let vm = vm(&format!(r#""responseHeaders": "{mode}","#));
        let mut h = request("POST", "/v1/chat/completions", &[], br#"{"model":"qwen"}"#);
        let mut s = Stream::new(1);
        assert!(send(&vm, &mut h, &mut s));
        let mut headers = ok_json();
        headers.push(("x-ai-route", "echoed-by-backend"));
        respond(&vm, &mut h, &mut s, &headers, &[b"{}"], true);
        assert_eq!(h.header(Map::Response, ROUTE_RESPONSE_HEADER), route, "{mode}");
        assert_eq!(h.header(Map::Response, MODEL_RESPONSE_HEADER), model, "{mode}");
        // The decision is still in the metrics and the access log.
        assert_eq!(
            h.filter_state.get(FS_DESTINATION).map(Vec::as_slice),
            Some(&b"qwen"[..])
        );
    }
}

#[test]
fn the_clients_model_name_comes_back_in_json_and_streams() {
    let json = CFG.replace(
        r#""aliases": ["gpt-3.5-turbo"],"#,
        r#""aliases": ["gpt-3.5-turbo"], "upstreamModel": "meta-llama/Llama-3.1-8B-Instruct","#,
    );
    let json = json.replacen('{', r#"{"restoreModelName": true,"#, 1);
    let vm = Vm::new(Config::from_json(json.as_bytes()).unwrap(), 1);
    let mut h = request("POST", "/v1/chat/completions", &[], br#"{"model":"gpt-3.5-turbo"}"#);
    let mut s = Stream::new(1);
    assert!(send(&vm, &mut h, &mut s));
    assert!(String::from_utf8_lossy(&h.request_body).contains("meta-llama/Llama-3.1-8B-Instruct"));
    let answer = br#"{"model":"meta-llama/Llama-3.1-8B-Instruct","usage":{"prompt_tokens":2,"completion_tokens":3}}"#;
    let mut headers = ok_json();
    headers.push(("content-length", "100"));
    h.response_headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    s.on_response_headers(&vm, &mut h, false);
    assert_eq!(h.header(Map::Response, "content-length"), None, "the length changes");
    h.response_body = answer.to_vec();
    s.on_response_body(&vm, &mut h, answer.len(), true);
    assert_eq!(
        String::from_utf8_lossy(&h.response_body),
        r#"{"model":"gpt-3.5-turbo","usage":{"prompt_tokens":2,"completion_tokens":3}}"#
    );
    s.on_log(&vm, &mut h);
    assert_eq!(
        h.metric(
            crate::telemetry::TOKENS_TOTAL,
            &[
                ("model", "llama-3-8b"),
                ("destination", "llama-stable"),
                ("type", "output")
            ]
        ) + h.metric(
            crate::telemetry::TOKENS_TOTAL,
            &[
                ("model", "llama-3-8b"),
                ("destination", "llama-canary"),
                ("type", "output")
            ]
        ),
        3,
        "usage still read from what the backend sent"
    );

    // A stream, in two chunks cutting an event.
    let mut h = request(
        "POST",
        "/v1/chat/completions",
        &[],
        br#"{"model":"gpt-3.5-turbo","stream":true}"#,
    );
    let mut s = Stream::new(2);
    assert!(send(&vm, &mut h, &mut s));
    h.response_headers = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "text/event-stream".into()),
    ];
    s.on_response_headers(&vm, &mut h, false);
    let mut seen = Vec::new();
    for (chunk, eos) in [
        (
            &b"data: {\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"choices\":[]}\n\ndata: {\"model\":\"meta-ll"[..],
            false,
        ),
        (b"ama/Llama-3.1-8B-Instruct\"}\n\ndata: [DONE]\n\n", true),
    ] {
        h.response_body = chunk.to_vec();
        s.on_response_body(&vm, &mut h, chunk.len(), eos);
        seen.extend_from_slice(&h.response_body);
    }
    assert_eq!(
        String::from_utf8_lossy(&seen),
        "data: {\"model\":\"gpt-3.5-turbo\",\"choices\":[]}\n\ndata: {\"model\":\"gpt-3.5-turbo\"}\n\ndata: [DONE]\n\n"
    );
}

#[test]
fn on_a_waypoint_the_identity_comes_from_istios_filter_state() {
    let vm = vm("");
    let body = br#"{"model":"private"}"#;
    for (state, allowed) in [
        (Some(&b"spiffe://td/ns/a/sa/web"[..]), true),
        (Some(b"td/ns/a/sa/web"), true),
        (Some(b"spiffe://td/ns/b/sa/x"), false),
        (None, false),
    ] {
        let mut h = request("POST", "/v1/chat/completions", &[], body);
        if let Some(v) = state {
            h.properties
                .insert(format!("filter_state.{PEER_PRINCIPAL_STATE}"), v.to_vec());
        }
        assert_eq!(send(&vm, &mut h, &mut Stream::new(1)), allowed, "{state:?}");
    }
    // The certificate, when there is one, wins.
    let mut h = request("POST", "/v1/chat/completions", &[], body);
    h.properties.insert(
        "connection.uri_san_peer_certificate".into(),
        b"spiffe://td/ns/b/sa/x".to_vec(),
    );
    h.properties.insert(
        format!("filter_state.{PEER_PRINCIPAL_STATE}"),
        b"spiffe://td/ns/a/sa/web".to_vec(),
    );
    assert!(!send(&vm, &mut h, &mut Stream::new(1)));
}

#[test]
fn the_inference_pool_header_is_the_filters_only() {
    for (mode, want) in [("canonical", Some("llama-3-8b")), ("none", None)] {
        let vm = vm(&format!(r#""inferenceModelHeader": "{mode}","#));
        let mut h = request(
            "POST",
            "/v1/chat/completions",
            &[("x-gateway-model-name", "spoofed")],
            br#"{"model":"gpt-3.5-turbo"}"#,
        );
        assert!(send(&vm, &mut h, &mut Stream::new(1)));
        let got = h.header(Map::Request, "x-gateway-model-name");
        match want {
            Some(w) => assert_eq!(got, Some(w)),
            // Off: the filter neither sets nor touches it.
            None => assert_eq!(got, Some("spoofed")),
        }
    }
}

/// A configuration with global limits on `team-model` (requests and tokens, per caller).
fn global_vm(failure_mode: &str) -> Vm {
    let json = format!(
        r#"{{"rateLimitService": {{"cluster": "outbound|8081||limitador.rl.svc.cluster.local",
             "timeout": "150ms", "failureMode": "{failure_mode}"}},
            "models": [{{"name": "team-model", "aliases": ["tm"],
             "limits": {{"requestsPerMinute": 20, "tokensPerMinute": 1000, "mode": "global"}},
             "destinations": [{{"name": "tm"}}]}}]}}"#
    );
    Vm::new(Config::from_json(json.as_bytes()).unwrap(), 42)
}

fn rls_answer(code: u64) -> Vec<u8> {
    let mut m = Vec::new();
    crate::proto::put_uint(&mut m, 1, code);
    m
}

/// The descriptor entries and hits of a call the filter made.
fn described(msg: &[u8]) -> (Vec<(String, String)>, u64) {
    rls::describe(msg).unwrap()
}

fn descriptor(msg: &[u8]) -> Vec<(String, String)> {
    described(msg).0
}

const TEAM_MODEL: &[u8] = br#"{"model":"team-model"}"#;

/// A `team-model` request (stream `id`) sent whole: it has asked the rate limit service.
fn sent_to_the_service(vm: &Vm, id: u32) -> (MemoryHost, Stream) {
    let mut h = request("POST", "/v1/chat/completions", &[], TEAM_MODEL);
    let mut s = Stream::new(id);
    s.on_request_headers(vm, &mut h, false);
    s.on_request_body(vm, &mut h, TEAM_MODEL.len(), true);
    (h, s)
}

#[test]
fn a_global_limit_asks_the_service_and_waits_for_both_answers() {
    let vm = global_vm("allow");
    let body = br#"{"model":"tm","messages":[]}"#;
    let mut h = request("POST", "/v1/chat/completions", &[], body);
    h.properties.insert(
        "connection.uri_san_peer_certificate".into(),
        b"spiffe://td/ns/a/sa/team-a".to_vec(),
    );
    let mut s = Stream::new(7);
    assert_eq!(s.on_request_headers(&vm, &mut h, false), Action::Pause);
    // Body routing: the decision is made at the end of the body, which then waits.
    assert_eq!(s.on_request_body(&vm, &mut h, body.len(), true), Action::Pause);
    assert_eq!(h.grpc_calls.len(), 2, "ShouldRateLimit and CheckRateLimit, at once");
    let (t1, req) = h.grpc_calls[0].clone();
    let (t2, tok) = h.grpc_calls[1].clone();
    assert_eq!(
        (req.service_name.as_str(), req.method.as_str()),
        (rls::RLS_SERVICE, "ShouldRateLimit")
    );
    assert_eq!(
        (tok.service_name.as_str(), tok.method.as_str()),
        (rls::KUADRANT_SERVICE, "CheckRateLimit")
    );
    assert_eq!(req.timeout_ms, 150);
    assert!(!req.detached);
    assert_eq!(
        descriptor(&req.message),
        vec![
            ("model".to_string(), "team-model".to_string()),
            ("kind".to_string(), "requests".to_string()),
            ("caller".to_string(), "spiffe://td/ns/a/sa/team-a".to_string()),
        ]
    );
    assert_eq!(h.tick_ms, TICK_MS, "the tick backstops the host's timeout");
    // The route is already set; nothing is counted in flight until admitted.
    assert_eq!(h.header(Map::Request, "x-ai-route"), Some("tm"));
    assert!(h.metrics.keys().all(|k| !k.contains("in_flight")));
    s.on_grpc_answer(&vm, &mut h, t1, Ok(&rls_answer(1)));
    assert!(h.resumed.is_empty(), "one answer is not enough");
    // A body chunk while waiting would let the headers go: held.
    assert_eq!(s.on_request_body(&vm, &mut h, body.len(), true), Action::Pause);
    s.on_grpc_answer(&vm, &mut h, t2, Ok(&rls_answer(1)));
    assert_eq!(h.resumed, vec![7]);
    assert!(h.reply.is_none());
    // The answer is the backend's; its usage is reported to the service, detached.
    respond(
        &vm,
        &mut h,
        &mut s,
        &ok_json(),
        &[br#"{"usage":{"prompt_tokens":30,"completion_tokens":12}}"#],
        true,
    );
    let (_, report) = h.grpc_calls.last().unwrap().clone();
    assert_eq!(report.method, "Report");
    assert!(report.detached, "a Report outlives the request");
    let hits = Some(described(&report.message).1);
    assert_eq!(hits, Some(42));
    assert_eq!(descriptor(&report.message)[1].1, "tokens");
    assert!(vm.callouts.borrow().is_empty());
}

#[test]
fn over_a_global_limit_is_a_429_and_failures_follow_the_failure_mode() {
    // Over the limit: 429 with retry-after from the service's reset, else a minute.
    let vm = global_vm("allow");
    let (mut h, mut s) = sent_to_the_service(&vm, 1);
    assert_eq!(descriptor(&h.grpc_calls[0].1.message)[2].1, "anonymous");
    let (t1, t2) = (h.grpc_calls[0].0, h.grpc_calls[1].0);
    s.on_grpc_answer(&vm, &mut h, t2, Ok(&rls_answer(1)));
    s.on_grpc_answer(&vm, &mut h, t1, Ok(&rls_answer(2)));
    let reply = h.reply.clone().expect("a 429");
    assert_eq!(reply.status, 429);
    assert!(reply.headers.contains(&("retry-after".into(), "60".into())));
    let text = String::from_utf8_lossy(&reply.body).to_string();
    assert!(
        text.contains("20 requests per minute (counted across all proxies)"),
        "{text}"
    );
    assert!(h.resumed.is_empty());
    s.on_log(&vm, &mut h);
    assert_eq!(h.grpc_calls.len(), 2, "nothing reported for a refused request");

    // The service fails (unavailable, timeout): allow lets it through, counted.
    let (mut h, mut s) = sent_to_the_service(&vm, 2);
    let (t1, t2) = (h.grpc_calls[0].0, h.grpc_calls[1].0);
    s.on_grpc_answer(&vm, &mut h, t1, Err(rls::GRPC_UNAVAILABLE));
    s.on_grpc_answer(&vm, &mut h, t2, Err(rls::GRPC_DEADLINE_EXCEEDED));
    assert!(h.reply.is_none());
    assert_eq!(h.resumed, vec![2]);
    let failures = telemetry::RATE_LIMIT_SERVICE_FAILURES_TOTAL;
    assert_eq!(
        h.metric(failures, &[("call", "requests"), ("reason", "unavailable")]),
        1
    );
    assert_eq!(h.metric(failures, &[("call", "tokens"), ("reason", "timeout")]), 1);

    // deny: the same failure is a 503, retryable.
    let vm = global_vm("deny");
    let (mut h, mut s) = sent_to_the_service(&vm, 3);
    let (t1, t2) = (h.grpc_calls[0].0, h.grpc_calls[1].0);
    s.on_grpc_answer(&vm, &mut h, t1, Ok(&rls_answer(1)));
    s.on_grpc_answer(&vm, &mut h, t2, Ok(b"\x12\x05"));
    let reply = h.reply.clone().expect("a 503");
    assert_eq!(reply.status, 503);
    assert!(String::from_utf8_lossy(&reply.body).contains("rate_limit_unavailable"));
    assert_eq!(
        h.metric(failures, &[("call", "tokens"), ("reason", "invalid_response")]),
        1
    );

    // A cluster the host does not know: decided at once, nothing waits.
    let mut h = request("POST", "/v1/chat/completions", &[], TEAM_MODEL);
    h.refuse_grpc = true;
    assert!(!send(&vm, &mut h, &mut Stream::new(4)));
    assert_eq!(h.reply.as_ref().map(|r| r.status), Some(503));
    assert_eq!(
        h.metric(failures, &[("call", "requests"), ("reason", "unreachable")]),
        1
    );
    assert!(vm.callouts.borrow().is_empty());
    let vm = global_vm("allow");
    let mut h = request("POST", "/v1/chat/completions", &[], TEAM_MODEL);
    h.refuse_grpc = true;
    assert!(send(&vm, &mut h, &mut Stream::new(5)));
}

#[test]
fn the_vm_reports_its_memory_as_it_grows() {
    let vm = vm_plain();
    let mut total = 0i64;
    for (i, memory) in [1 << 20, 1 << 20, 3 << 20].into_iter().enumerate() {
        let mut h = request("POST", "/v1/chat/completions", &[], br#"{"model":"qwen"}"#);
        h.memory = memory;
        let mut s = Stream::new(i as u32 + 1);
        send(&vm, &mut h, &mut s);
        respond(&vm, &mut h, &mut s, &ok_json(), &[b"{}"], true);
        // Each host starts from zero; add up what this VM reported through it.
        total += h.metric(telemetry::VM_MEMORY_BYTES, &[]);
        assert_eq!(total, memory as i64, "after request {i}");
    }
}

#[test]
fn a_failure_after_the_whole_timeout_is_a_timeout_whatever_the_status() {
    // Envoy reports its own deadline as UNAVAILABLE; a refused connection comes at once.
    let vm = global_vm("allow");
    let (mut h, mut s) = sent_to_the_service(&vm, 1);
    let (t1, t2) = (h.grpc_calls[0].0, h.grpc_calls[1].0);
    h.now_ns += 1_000_000;
    s.on_grpc_answer(&vm, &mut h, t1, Err(rls::GRPC_UNAVAILABLE));
    h.now_ns += 150_000_000;
    s.on_grpc_answer(&vm, &mut h, t2, Err(rls::GRPC_UNAVAILABLE));
    let failures = telemetry::RATE_LIMIT_SERVICE_FAILURES_TOTAL;
    assert_eq!(
        h.metric(failures, &[("call", "requests"), ("reason", "unavailable")]),
        1
    );
    assert_eq!(h.metric(failures, &[("call", "tokens"), ("reason", "timeout")]), 1);
}

#[test]
fn no_request_waits_past_the_timeout_even_if_the_host_never_answers() {
    let vm = global_vm("deny");
    let mut h = request("POST", "/v1/chat/completions", &[], TEAM_MODEL);
    let mut s = Stream::new(9);
    s.on_request_headers(&vm, &mut h, false);
    assert_eq!(s.on_request_body(&vm, &mut h, TEAM_MODEL.len(), true), Action::Pause);
    h.now_ns += 150_000_000 + CALLOUT_GRACE_NS - 1;
    assert!(vm.on_tick(&mut h).is_empty());
    h.now_ns += 1;
    let expired = vm.on_tick(&mut h);
    assert_eq!(expired, vec![(9, vec![Call::Requests, Call::Tokens])]);
    s.on_callout_expired(&vm, &mut h, &expired[0].1);
    assert_eq!(h.reply.as_ref().map(|r| r.status), Some(503));
    assert_eq!(
        h.metric(
            telemetry::RATE_LIMIT_SERVICE_FAILURES_TOTAL,
            &[("call", "tokens"), ("reason", "timeout")]
        ),
        1
    );
    // A late answer changes nothing; the tick stops once nothing waits.
    let late = h.grpc_calls[0].0;
    s.on_grpc_answer(&vm, &mut h, late, Ok(&rls_answer(1)));
    assert!(h.resumed.is_empty());
    h.now_ns += 1_000_000_000;
    vm.on_tick(&mut h);
    assert_eq!(h.tick_ms, 0);
}

#[test]
fn a_disconnect_while_waiting_or_streaming_is_handled() {
    let vm = global_vm("allow");
    let body = br#"{"model":"team-model","stream":true,"max_tokens":50}"#;
    // The client leaves while the service thinks: nothing charged, nothing left waiting.
    let mut h = request("POST", "/v1/chat/completions", &[], body);
    let mut s = Stream::new(1);
    s.on_request_headers(&vm, &mut h, false);
    s.on_request_body(&vm, &mut h, body.len(), true);
    s.on_log(&vm, &mut h);
    assert!(vm.callouts.borrow().is_empty());
    assert_eq!(h.grpc_calls.len(), 2);
    // Admitted, then the client leaves mid-stream: the estimate is reported.
    let mut h = request("POST", "/v1/chat/completions", &[], body);
    let mut s = Stream::new(2);
    s.on_request_headers(&vm, &mut h, false);
    s.on_request_body(&vm, &mut h, body.len(), true);
    for (t, _) in h.grpc_calls.clone() {
        s.on_grpc_answer(&vm, &mut h, t, Ok(&rls_answer(1)));
    }
    let sse = [(":status", "200"), ("content-type", "text/event-stream")];
    respond(&vm, &mut h, &mut s, &sse, &[b"data: {\"choices\":[]}\n\n"], false);
    let (_, report) = h.grpc_calls.last().unwrap().clone();
    assert_eq!(report.method, "Report");
    let hits = Some(described(&report.message).1);
    let input = (body.len() as u64).div_ceil(4);
    assert_eq!(hits, Some(input + 50));
}

#[test]
fn a_stream_cut_before_its_usage_is_charged_at_least_what_the_client_received() {
    // The client read 2000 deltas of an answer its `max_tokens` said would be 50 (the
    // backend ignored it), then left before the usage chunk: charged what it received.
    let vm = global_vm("allow");
    let body = br#"{"model":"team-model","stream":true,"max_tokens":50}"#;
    let mut h = request("POST", "/v1/chat/completions", &[], body);
    let mut s = Stream::new(1);
    s.on_request_headers(&vm, &mut h, false);
    s.on_request_body(&vm, &mut h, body.len(), true);
    for (t, _) in h.grpc_calls.clone() {
        s.on_grpc_answer(&vm, &mut h, t, Ok(&rls_answer(1)));
    }
    let delta = b"data: {\"choices\":[{\"delta\":{\"content\":\"tok\"}}],\"usage\":null}\n\n";
    let chunk = delta.repeat(100);
    let chunks = vec![&chunk[..]; 20];
    let sse = [(":status", "200"), ("content-type", "text/event-stream")];
    respond(&vm, &mut h, &mut s, &sse, &chunks, false);
    let (_, report) = h.grpc_calls.last().unwrap().clone();
    assert_eq!(report.method, "Report");
    let input = (body.len() as u64).div_ceil(4);
    assert_eq!(described(&report.message).1, input + 2000);
}
