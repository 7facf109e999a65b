//! Property tests over the extractor, the request flow and the config parser: no input panics,
//! chunking never changes a result, and the scanner agrees with serde_json.

#![allow(clippy::unwrap_used)]

use model_router::config::Config;
use model_router::json_scan::TopLevelScanner;
use model_router::request::{BodyAction, RequestFlow, RequestInfo};
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

const CFG: &str = r#"{"bodyRouting":true,"injectStreamUsage":true,"onOversize":"reject","maxBodyBytes":4096,
  "models":[{"name":"m","upstreamModel":"up/stream-model","destinations":[{"name":"a","weight":3},{"name":"b","weight":1}]}]}"#;

fn run_flow(body: &[u8], cuts: &[usize]) -> Vec<BodyAction> {
    let cfg = Config::from_json(CFG.as_bytes()).unwrap();
    let mut f = RequestFlow::default();
    let req = RequestInfo {
        method: "POST",
        path: "/v1/chat/completions",
        content_type: Some("application/json"),
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

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
        let mut s = TopLevelScanner::new(&["model"], 64);
        let ours = s.feed(&body).and_then(|_| s.finish()).is_ok();
        // The scanner validates structure, not the UTF-8 of strings it skips.
        let theirs = serde_json::from_slice::<Value>(&body).is_ok();
        // Compared on UTF-8 input only: strings it skips are not checked for UTF-8.
        if std::str::from_utf8(&body).is_ok() {
            prop_assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(&body));
        }
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
        prop_assert_eq!(whole.last(), split.last());
    }

    #[test]
    fn config_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200), v in json_value()) {
        let _ = Config::from_json(&bytes);
        let _ = Config::from_json(&serde_json::to_vec(&v).unwrap());
        let _ = Config::from_deserializer(v);
    }
}
