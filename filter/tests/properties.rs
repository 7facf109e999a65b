//! Property tests over the extractor, the request flow and the config parser: no input panics,
//! chunking never changes a result, and the scanner agrees with serde_json.

#![allow(clippy::unwrap_used)]

use model_router::config::Config;
use model_router::exchange::{Action, Stream, Vm};
use model_router::json_scan::TopLevelScanner;
use model_router::memory_host::MemoryHost;
use model_router::reply::RejectReason;
use model_router::request::{BodyAction, RequestFlow, RequestInfo};
use model_router::restore::ModelRestorer;
use proptest::prelude::*;
use serde_json::Value;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(("(model|stream|\\PC{0,6})", inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A JSON object written by hand, so keys can repeat (a map cannot hold duplicates) and strings
/// can carry raw control characters (serde would escape them).
fn raw_object() -> impl Strategy<Value = (Vec<u8>, usize, bool)> {
    let key = prop_oneof![
        Just("model".to_string()),
        Just("stream".to_string()),
        Just("messages".to_string()),
        Just("mod\\u0065l".to_string()),
        "[a-z]{1,4}",
    ];
    let value = prop_oneof![
        json_value().prop_map(|v| serde_json::to_string(&v).unwrap()),
        Just("\"m\"".to_string()),
        // A raw control character inside a string.
        (0u8..0x20).prop_map(|c| format!("\"a{}b\"", c as char)),
    ];
    prop::collection::vec((key, value), 0..6).prop_map(|kv| {
        let models = kv.iter().filter(|(k, _)| *k == "model" || *k == "mod\\u0065l").count();
        let raw_control = kv.iter().any(|(_, v)| v.bytes().any(|b| b < 0x20));
        let fields: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        (format!("{{{}}}", fields.join(",")).into_bytes(), models, raw_control)
    })
}

const CFG: &str = r#"{"bodyRouting":true,"injectStreamUsage":true,"onOversize":"reject","maxBodyBytes":4096,
  "models":[{"name":"m","upstreamModel":"up/stream-model","destinations":[{"name":"a","weight":3},{"name":"b","weight":1}]}]}"#;

/// The decision without its message: where a body breaks in two ways at one byte (say, a byte
/// that is neither UTF-8 nor JSON), which problem the message names may depend on the cut.
fn decision(a: Option<&BodyAction>) -> Option<BodyAction> {
    a.cloned().map(|a| match a {
        BodyAction::Reject(mut r) => {
            r.message.clear();
            BodyAction::Reject(r)
        }
        other => other,
    })
}

fn run_flow(body: &[u8], cuts: &[usize]) -> Vec<BodyAction> {
    run_labelled(body, cuts, "application/json")
}

fn run_labelled(body: &[u8], cuts: &[usize], content_type: &str) -> Vec<BodyAction> {
    let cfg = Config::from_json(CFG.as_bytes()).unwrap();
    let mut f = RequestFlow::default();
    let req = RequestInfo {
        method: "POST",
        path: "/v1/chat/completions",
        content_type: Some(content_type),
        content_length: Some(body.len() as u64),
        random: 7,
        ..Default::default()
    };
    f.on_request_headers(&cfg, &req, true);
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    points.sort_unstable();
    points.push(body.len());
    let mut out = Vec::new();
    let mut prev = 0;
    for p in points {
        if p < prev || !f.reading_body() {
            continue;
        }
        let a = f.on_request_body(&cfg, &body[prev..p], p == body.len());
        prev = p;
        out.push(a);
    }
    out
}

/// A multipart form written by hand: parts named `model`, `file` or otherwise, values that hold
/// CRs, LFs and pieces of the delimiter, and now and then a broken line.
fn raw_form() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![Just("model"), Just("file"), Just("mod\\el"), Just("x")];
    let value = prop_oneof![
        Just("m".to_string()),
        Just("\r\n--b".to_string()),
        Just("a\r\r\n--bx-".to_string()),
        "[a-z\r\n-]{0,8}",
    ];
    let part = (name, value, any::<bool>(), 0u8..8).prop_map(|(n, v, file, glitch)| {
        let file = if file { "; filename=\"f\"" } else { "" };
        let sep = if glitch == 0 { "\n" } else { "\r\n" };
        format!("--bx\r\nContent-Disposition: form-data; name=\"{n}\"{file}{sep}\r\n{v}\r\n")
    });
    (prop::collection::vec(part, 0..4), any::<bool>()).prop_map(|(parts, closed)| {
        format!("{}{}", parts.concat(), if closed { "--bx--\r\n" } else { "" }).into_bytes()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    /// Forms: no input panics, and where a body is cut never changes what is decided.
    #[test]
    fn form_flow_never_panics_and_chunking_does_not_matter(
        body in prop_oneof![raw_form(), prop::collection::vec(any::<u8>(), 0..120)],
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let ct = "multipart/form-data; boundary=bx";
        let whole = run_labelled(&body, &[], ct);
        let split = run_labelled(&body, &cuts, ct);
        prop_assert_ne!(whole.last(), Some(&BodyAction::NeedMore));
        prop_assert_eq!(decision(whole.last()), decision(split.last()));
    }

    /// An inference endpoint stays one however it is dressed up: any of its characters escaped
    /// (`%XX`, either case of hex) or its letters capitalised, doubled slashes, `./` segments. No
    /// path panics the readers.
    #[test]
    fn dressed_up_endpoints_stay_in_scope(
        endpoint in prop::sample::select(vec!["/v1/chat/completions", "/v1/embeddings", "/v1/messages", "/v1/responses"]),
        dress in prop::collection::vec(0u8..6, 24),
        junk in "\\PC{0,40}",
    ) {
        let mut path = String::new();
        for (i, c) in endpoint.chars().enumerate() {
            match dress[i % dress.len()] {
                0 => path.push_str(&format!("%{:02X}", c as u32)),
                1 => path.push_str(&format!("%{:02x}", c as u32)),
                2 => path.push(c.to_ascii_uppercase()),
                3 if c == '/' => path.push_str("//"),
                4 if c == '/' => path.push_str("/./"),
                _ => path.push(c),
            }
        }
        let scope = model_router::config::Scope::default();
        prop_assert!(scope.contains("llm", &path), "{}", path);
        let _ = scope.contains("llm", &junk);
        let _ = model_router::path_model::model_from_path(&junk);
    }

    #[test]
    fn scanner_agrees_with_serde_json(v in json_value(), model in "\\PC{0,20}") {
        let mut obj = match v { Value::Object(o) => o, other => { let mut o = serde_json::Map::new(); o.insert("x".into(), other); o } };
        obj.insert("model".into(), Value::String(model.clone()));
        let body = serde_json::to_vec(&Value::Object(obj)).unwrap();
        let mut s = TopLevelScanner::new(&["model"], 4096);
        s.feed(&body).unwrap();
        s.finish().unwrap();
        let f = s.get(0).unwrap();
        let got: String = serde_json::from_slice(&f.raw).unwrap();
        prop_assert_eq!(got, model);
        prop_assert_eq!(&body[f.start as usize..f.end as usize], &f.raw[..]);
    }

    #[test]
    fn scanner_validity_matches_serde_json(body in prop_oneof![
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        prop::collection::vec(any::<u8>(), 0..64),
        "[\\[\\]{}:,\"a-z0-9 .eE+-]{0,40}".prop_map(|s| s.into_bytes()),
    ]) {
        let mut s = TopLevelScanner::new(&["model"], 64).strict_utf8();
        let ours = s.feed(&body).and_then(|_| s.finish()).is_ok();
        let theirs = serde_json::from_slice::<Value>(&body).is_ok();
        prop_assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(&body));
    }

    /// Repeated keys and raw control characters: the flow refuses exactly what it must, and the
    /// scanner agrees with serde_json on what is JSON at all.
    #[test]
    fn repeated_models_and_control_characters((body, models, raw_control) in raw_object(), cuts in prop::collection::vec(any::<usize>(), 0..4)) {
        let mut s = TopLevelScanner::new(&["model"], 64).strict_utf8();
        let ours = s.feed(&body).and_then(|_| s.finish()).is_ok();
        prop_assert_eq!(ours, serde_json::from_slice::<Value>(&body).is_ok(), "{:?}", String::from_utf8_lossy(&body));
        prop_assert_eq!(ours, !raw_control);
        let whole = run_flow(&body, &[]);
        let last = whole.last().cloned();
        let reason = match &last { Some(BodyAction::Reject(r)) => Some(r.reason), _ => None };
        if raw_control {
            prop_assert_eq!(reason, Some(RejectReason::InvalidJson));
        } else if models > 1 {
            prop_assert_eq!(reason, Some(RejectReason::DuplicateModel));
        } else {
            prop_assert_ne!(reason, Some(RejectReason::DuplicateModel));
        }
        let split = run_flow(&body, &cuts);
        prop_assert_eq!(decision(last.as_ref()), decision(split.last()));
    }

    /// The whole exchange on the in-memory host: whatever the body and however it is cut, the
    /// request is answered or goes on (never left paused), and nothing stays in flight.
    #[test]
    fn exchange_never_hangs_and_leaves_nothing_in_flight(
        body in prop_oneof![prop::collection::vec(any::<u8>(), 0..120), raw_object().prop_map(|b| b.0)],
        cuts in prop::collection::vec(any::<usize>(), 0..4),
        held in any::<bool>(),
    ) {
        let cfg = CFG.replace(r#""bodyRouting":true"#, if held { r#""bodyRouting":true"# } else { r#""bodyRouting":false"# });
        let vm = Vm::new(Config::from_json(cfg.as_bytes()).unwrap(), 3);
        let mut h = MemoryHost::new();
        h.request_headers = vec![
            (":method".into(), "POST".into()),
            (":path".into(), "/v1/chat/completions".into()),
            ("content-type".into(), "application/json".into()),
        ];
        let mut s = Stream::new(1);
        let mut paused = s.on_request_headers(&vm, &mut h, body.is_empty()) == Action::Pause;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        points.sort_unstable();
        points.push(body.len());
        for p in points {
            if h.reply.is_some() || !s.flow().reading_body() || body.is_empty() {
                break;
            }
            h.request_body = body[..p].to_vec();
            paused = s.on_request_body(&vm, &mut h, p, p == body.len()) == Action::Pause;
        }
        prop_assert!(h.reply.is_some() || !paused, "left paused: {:?}", s.flow().outcome());
        if h.reply.is_none() {
            h.response_headers = vec![(":status".into(), "200".into()), ("content-type".into(), "application/json".into())];
            s.on_response_headers(&vm, &mut h, false);
            let answer = br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
            h.response_body = answer.to_vec();
            s.on_response_body(&vm, &mut h, answer.len(), true);
        }
        s.on_log(&vm, &mut h);
        let in_flight: i64 = h.metrics.iter().filter(|(k, _)| k.ends_with("model_router_in_flight_requests")).map(|(_, v)| *v).sum();
        prop_assert_eq!(in_flight, 0);
    }

    #[test]
    fn flow_never_panics_and_chunking_does_not_matter(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            (json_value(), prop::bool::ANY).prop_map(|(v, s)| {
                let mut o = serde_json::Map::new();
                o.insert("x".into(), v); o.insert("model".into(), "m".into()); o.insert("stream".into(), s.into());
                serde_json::to_vec(&Value::Object(o)).unwrap()
            }),
        ],
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let whole = run_flow(&body, &[]);
        let split = run_flow(&body, &cuts);
        // An empty body is left alone at the headers, so it has no body actions at all.
        prop_assert_eq!(whole.is_empty(), body.is_empty());
        prop_assert_ne!(whole.last(), Some(&BodyAction::NeedMore));
        prop_assert_eq!(decision(whole.last()), decision(split.last()));
    }

    /// The restorer changes only the top-level `model` (when it is the upstream name), whatever
    /// the body and however it is cut.
    #[test]
    fn restoring_the_model_name_touches_nothing_else(
        v in json_value(),
        upstream_model in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let up = "meta-llama/Llama-3.1-8B-Instruct";
        let mut obj = match v { Value::Object(o) => o, other => { let mut o = serde_json::Map::new(); o.insert("x".into(), other); o } };
        obj.insert("model".into(), Value::String(if upstream_model { up.into() } else { "other".into() }));
        let body = serde_json::to_vec(&Value::Object(obj)).unwrap();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        points.sort_unstable();
        points.push(body.len());
        let mut r = ModelRestorer::new(up, "gpt-4o-mini", false);
        let mut out = Vec::new();
        let mut prev = 0;
        for p in points {
            out.extend(r.feed(&body[prev..p]));
            prev = p;
        }
        out.extend(r.finish());
        let got: Value = serde_json::from_slice(&out).unwrap();
        // Compared after the same parse (serde_json's float parsing does not round-trip exactly).
        let mut want: Value = serde_json::from_slice(&body).unwrap();
        if upstream_model {
            want["model"] = Value::String("gpt-4o-mini".into());
        }
        prop_assert_eq!(got, want);
        if !upstream_model {
            prop_assert_eq!(out, body);
        }
    }

    #[test]
    fn config_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200), v in json_value()) {
        let _ = Config::from_json(&bytes);
        let _ = Config::from_json(&serde_json::to_vec(&v).unwrap());
        let doc: model_router::json::Json = serde_json::from_value(v).unwrap();
        let _ = Config::from_document(&doc);
    }

    /// The filter's own JSON reader accepts what serde_json accepts, refuses what it refuses, and
    /// reads the same value (written back, it parses to the same thing).
    #[test]
    fn json_reader_agrees_with_serde_json(bytes in prop::collection::vec(any::<u8>(), 0..64), v in json_value()) {
        let text = serde_json::to_vec(&v).unwrap();
        for input in [&bytes, &text] {
            let ours = model_router::json::parse(input);
            let theirs = serde_json::from_slice::<Value>(input);
            prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{:?}", String::from_utf8_lossy(input));
            if let (Ok(o), Ok(t)) = (ours, theirs) {
                let back: Value = serde_json::from_str(&o.to_string()).unwrap();
                prop_assert_eq!(back, t);
            }
        }
    }
}
