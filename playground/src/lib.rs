//! The browser playground's engine: the filter's own core compiled to `wasm32-unknown-unknown`
//! with wasm-bindgen. Every function takes and returns JSON text, so the page stays plain
//! JavaScript and the same functions are tested natively (`cargo test -p playground`).
//!
//! - `check(config)`: the configuration (YAML or JSON) through the filter's parser → errors with
//!   field paths, or a summary of models, aliases, weights, access rules and limits.
//! - `route(config, request)`: the decision for one request, the JSON `wasmpack route` prints
//!   (`model_router::decide`, the same code).
//! - `simulate(config, model, users, identity)`: the weighted (and sticky) split over `users`
//!   callers, each with the caller identity `identity` (empty: none), so `allow` lists apply.

use std::collections::BTreeMap;

use model_router::config::{AllowRule, Config, LimitKey};
use model_router::decide::{decide_repeated, Proxy, RouteRequest};
use serde_json::{json, Value};
use wasm_bindgen::prelude::wasm_bindgen;

/// The seed of the weighted choice: fixed, so the page, its tests and `wasmpack route --seed 42`
/// agree on every decision.
pub const SEED: u64 = 42;

/// The configuration read as `wasmpack check` reads it (`config_yaml`): an error names its field
/// path (empty for the file as a whole), says what is wrong in `wasmpack check`'s words
/// (`config_yaml::words`), and gives its line and column in the text (the parser's for a syntax
/// error, else the field's).
fn parse(config: &str) -> Result<Config, Value> {
    config_yaml::config(config).map(|(c, _)| c).map_err(|(e, at)| {
        json!({"path": config_yaml::shown_path(&e), "message": config_yaml::words(&e.kind),
               "line": at.map(|a| a.line), "column": at.map(|a| a.column)})
    })
}

/// `{"valid": true, "models": [...]}` or `{"valid": false, "errors": [{path, message, line}]}`.
#[wasm_bindgen]
pub fn check(config: &str) -> String {
    let c = match parse(config) {
        Ok(c) => c,
        Err(e) => return json!({"valid": false, "errors": [e]}).to_string(),
    };
    let models: Vec<Value> = c
        .models
        .iter()
        .map(|m| {
            let total = m.total_weight.max(1);
            let destinations: Vec<Value> = m
                .destinations
                .iter()
                .map(|d| {
                    json!({"name": d.name, "weight": d.weight,
                           "share": (u64::from(d.weight) * 1000 / total) as f64 / 10.0})
                })
                .collect();
            let limits = m.limits.as_ref().map(|l| {
                json!({"requestsPerMinute": l.requests_per_minute, "tokensPerMinute": l.tokens_per_minute,
                       "by": match &l.by { LimitKey::Principal => "principal".to_string(),
                                           LimitKey::Global => "global".to_string(),
                                           LimitKey::Header(h) => format!("header:{h}") },
                       "mode": if l.global { "global" } else { "local" }})
            });
            // One identity the allow list lets in (the page's presets use it).
            let allowed = m.allow.as_ref().and_then(|rules| rules.first()).map(|r| match r {
                AllowRule::Any => "spiffe://cluster.local/ns/default/sa/app".to_string(),
                AllowRule::Prefix(p) => format!("{p}app"),
                AllowRule::Exact(e) => e.clone(),
            });
            json!({"name": m.name, "aliases": m.aliases, "upstreamModel": m.upstream_model,
                   "destinations": destinations, "restricted": m.allow.is_some(),
                   "allowedIdentity": allowed, "limits": limits})
        })
        .collect();
    json!({"valid": true, "bodyRouting": c.body_routing, "stickyHeader": c.sticky_header,
           "routeHeader": c.route_header, "models": models})
    .to_string()
}

/// One request from the page, owned (a `RouteRequest` borrows from it).
struct Parts {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    peer: Option<String>,
}

/// One request from the page: `{method, path, headers: {name: value}, body, peerIdentity}`.
fn request_parts(request: &Value) -> Parts {
    let s = |k: &str| request[k].as_str().map(str::to_string);
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(h) = request["headers"].as_object() {
        for (k, v) in h {
            headers.push((
                k.trim().to_ascii_lowercase(),
                v.as_str().unwrap_or_default().trim().to_string(),
            ));
        }
    }
    let body = request["body"]
        .as_str()
        .filter(|b| !b.is_empty())
        .map(|b| b.as_bytes().to_vec());
    Parts {
        method: s("method").unwrap_or_else(|| "POST".into()),
        path: s("path").unwrap_or_else(|| "/v1/chat/completions".into()),
        headers,
        body,
        peer: s("peerIdentity").filter(|p| !p.trim().is_empty()),
    }
}

/// The decision as `wasmpack route` prints it, or `{"configError": ...}`.
#[wasm_bindgen]
pub fn route(config: &str, request: &str) -> String {
    let c = match parse(config) {
        Ok(c) => c,
        Err(e) => return json!({"configError": e}).to_string(),
    };
    let request: Value = match serde_json::from_str(request) {
        Ok(v) => v,
        Err(e) => return json!({"requestError": e.to_string()}).to_string(),
    };
    let p = request_parts(&request);
    let repeat = request["repeat"].as_u64().map_or(1, |n| n.clamp(1, 10_000) as u32);
    let req = RouteRequest {
        method: &p.method,
        path: &p.path,
        headers: &p.headers,
        body: p.body.as_deref(),
        peer_identity: p.peer.as_deref(),
        proxy: Proxy::default(),
        workload: None,
    };
    decide_repeated(&c, &req, SEED, repeat).to_string()
}

/// Where `users` callers (each its own sticky value, if the configuration has a sticky header)
/// asking for `model` as the caller identity `identity` (empty: no identity) are sent:
/// `{"users": n, "sticky": bool, "destinations": {name: count}}`.
#[wasm_bindgen]
pub fn simulate(config: &str, model: &str, users: u32, identity: &str) -> String {
    let identity = Some(identity.trim()).filter(|i| !i.is_empty());
    let c = match parse(config) {
        Ok(c) => c,
        Err(e) => return json!({"configError": e}).to_string(),
    };
    let users = users.clamp(1, 20_000);
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for u in 0..users {
        let mut headers = Vec::new();
        if let Some(h) = &c.sticky_header {
            headers.push((h.clone(), format!("user-{u}")));
        }
        let req = RouteRequest {
            method: "POST",
            path: "/v1/chat/completions",
            headers: &headers,
            body: Some(body.as_bytes()),
            peer_identity: identity,
            proxy: Proxy::default(),
            workload: None,
        };
        // A fresh VM per caller (seeded per caller): the split a fleet of proxies produces.
        let d = decide_repeated(&c, &req, SEED.wrapping_add(u64::from(u)), 1);
        let key = match (d["destination"].as_str(), d["reject"]["code"].as_str()) {
            (Some(dest), _) => dest.to_string(),
            (None, Some(code)) => format!("({code})"),
            (None, None) => "(unrouted)".to_string(),
        };
        *counts.entry(key).or_default() += 1;
    }
    json!({"users": users, "sticky": c.sticky_header.is_some(), "destinations": counts}).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CONFIG: &str = "stickyHeader: x-user-id\nmodels:\n- name: llama-3-8b\n  aliases: [gpt-3.5-turbo]\n  destinations:\n  - {name: v1, weight: 90}\n  - {name: v2, weight: 10}\n";

    #[test]
    fn check_names_the_field_and_summarises_a_good_config() {
        let bad: Value = serde_json::from_str(&check(
            "models:\n- name: m\n  destinations:\n  - {name: d, weight: x}\n",
        ))
        .unwrap();
        assert_eq!(bad["valid"], false);
        assert_eq!(bad["errors"][0]["path"], "models[0].destinations[0].weight");
        assert_eq!(bad["errors"][0]["line"], 4, "{bad}");
        assert_eq!(bad["errors"][0]["column"], 23, "{bad}");
        let good: Value = serde_json::from_str(&check(CONFIG)).unwrap();
        assert_eq!(good["models"][0]["destinations"][0]["share"], 90.0);
        assert_eq!(good["models"][0]["aliases"][0], "gpt-3.5-turbo");
    }

    /// Every error is placed, as `wasmpack check` places it (not only syntax errors): a wrong
    /// value at the value, an unknown field at its key, a missing field at its object, a syntax
    /// error where the parser stopped.
    #[test]
    fn every_error_has_its_line_and_column() {
        let placed = |config: &str| {
            let v: Value = serde_json::from_str(&check(config)).unwrap();
            assert_eq!(v["valid"], false, "{v}");
            let e = &v["errors"][0];
            (
                e["path"].as_str().unwrap().to_string(),
                e["line"].clone(),
                e["column"].clone(),
            )
        };
        let weight = "models:\n- name: m\n  destinations:\n  - name: d\n    weight: -1\n";
        assert_eq!(
            placed(weight),
            ("models[0].destinations[0].weight".into(), json!(5), json!(13))
        );
        let unknown = "models:\n- name: m\n  destinations:\n  - name: d\n    wieght: 1\n";
        assert_eq!(
            placed(unknown),
            ("models[0].destinations[0].wieght".into(), json!(5), json!(5))
        );
        let missing = "stickyHeader: x\nmodels:\n- name: m\n";
        assert_eq!(placed(missing), ("models[0]".into(), json!(3), json!(3)));
        let syntax = "models:\n- name: m\n  destinations: [\n";
        let (path, line, _) = placed(syntax);
        assert_eq!(
            path, "",
            "the file as a whole, as `wasmpack check --output json` names it"
        );
        assert!(line.as_u64().is_some_and(|l| l >= 3), "{line}");
        // The same through `route` and `simulate`.
        let r: Value = serde_json::from_str(&route(weight, "{}")).unwrap();
        assert_eq!(r["configError"]["line"], 5, "{r}");
        let s: Value = serde_json::from_str(&simulate(weight, "m", 1, "")).unwrap();
        assert_eq!(s["configError"]["line"], 5, "{s}");
    }

    /// The page says what is wrong in `wasmpack check`'s words (`config_yaml::words`, the one
    /// function both call), not serde's: the same path and message for the same file.
    #[test]
    fn errors_are_worded_as_wasmpack_check_words_them() {
        for (config, path, message) in [
            (
                "models:\n- name: m\n  destinations:\n  - {name: d, weight: ten}\n",
                "models[0].destinations[0].weight",
                "expected a whole number from 0 to 4294967295, found \"ten\"",
            ),
            ("", "", "expected an object (key: value pairs), found nothing (null)"),
            (
                "models:\n- name: m\n  destinations:\n  - name: d\n    wieght: 1\n",
                "models[0].destinations[0].wieght",
                "unknown field `wieght`; did you mean `weight`?",
            ),
            (
                "onOversize: passthru\nmodels: []\n",
                "onOversize",
                "`passthru` is not one of `reject`, `passthrough`; did you mean `passthrough`?",
            ),
            (
                "models:\n- name: m\n",
                "models[0]",
                "missing field `destinations` (it is required)",
            ),
        ] {
            let v: Value = serde_json::from_str(&check(config)).unwrap();
            let e = &v["errors"][0];
            assert_eq!(
                (e["path"].as_str(), e["message"].as_str()),
                (Some(path), Some(message)),
                "{config:?}: {v}"
            );
            // The function `wasmpack check` words it with, on the same error.
            let (cli, _) = config_yaml::config(config).unwrap_err();
            assert_eq!(config_yaml::shown_path(&cli), path);
            assert_eq!(config_yaml::words(&cli.kind), message);
        }
    }

    #[test]
    fn route_is_the_cli_decision_and_attacks_are_refused() {
        let req = json!({"method": "POST", "path": "/v1/chat/completions", "headers": {"x-user-id": "alice"},
                         "body": r#"{"model":"gpt-3.5-turbo","messages":[]}"#});
        let d: Value = serde_json::from_str(&route(CONFIG, &req.to_string())).unwrap();
        assert_eq!(d["canonicalModel"], "llama-3-8b");
        assert_eq!(d["outcome"], "routed");
        let dup = json!({"body": r#"{"model":"gpt-3.5-turbo","model":"other"}"#});
        let d: Value = serde_json::from_str(&route(CONFIG, &dup.to_string())).unwrap();
        assert_eq!(d["reject"]["code"], "duplicate_model");
    }

    #[test]
    fn the_split_follows_the_weights_and_stickiness() {
        let s: Value = serde_json::from_str(&simulate(CONFIG, "llama-3-8b", 2000, "")).unwrap();
        let v1 = s["destinations"]["v1"].as_u64().unwrap();
        assert!((1700..=1900).contains(&v1), "{s}");
        assert_eq!(s["sticky"], true);
    }

    #[test]
    fn the_split_uses_the_caller_identity() {
        let cfg = "models:\n- name: m\n  allow: [\"spiffe://td/ns/a/*\"]\n  destinations:\n  - {name: d}\n";
        let s: Value = serde_json::from_str(&simulate(cfg, "m", 10, "spiffe://td/ns/a/sa/x")).unwrap();
        assert_eq!(s["destinations"]["d"], 10, "{s}");
        let s: Value = serde_json::from_str(&simulate(cfg, "m", 10, "")).unwrap();
        assert!(s["destinations"].get("d").is_none(), "{s}");
        let c: Value = serde_json::from_str(&check(cfg)).unwrap();
        assert_eq!(c["models"][0]["allowedIdentity"], "spiffe://td/ns/a/app");
    }
}
