//! `wasmpack route CONFIG --path P [--body FILE] [-H K:V]`: the decision the filter would make,
//! computed by the filter's own request flow.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use model_router::request::{apply_edits, BodyAction, HeadersAction, Outcome, RequestFlow, RequestInfo};
use model_router::routing::mix;
use serde_json::{json, Value};

use crate::cli::RouteArgs;
use crate::plugin_config;

pub fn run(args: &RouteArgs) -> Result<()> {
    let loaded = plugin_config::load(&args.config)?;
    let body = match &args.body {
        Some(p) if p.as_os_str() == "-" => {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).context("reading the body from stdin")?;
            Some(b)
        }
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for h in &args.headers {
        let Some((k, v)) = h.split_once(':') else {
            bail!("-H {h}: expected NAME:VALUE")
        };
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let decision = decide(&loaded, &args.method, &args.path, &headers, body.as_deref(), args.seed);
    println!("{}", serde_json::to_string_pretty(&decision)?);
    Ok(())
}

/// Runs the filter's flow over one request and describes what it did.
pub fn decide(
    loaded: &plugin_config::Loaded,
    method: &str,
    path: &str,
    headers: &BTreeMap<String, String>,
    body: Option<&[u8]>,
    seed: Option<u64>,
) -> Value {
    let cfg = &loaded.config;
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let sticky = cfg
        .sticky_header
        .as_ref()
        .and_then(|h| headers.get(h))
        .map(|v| v.as_bytes());
    let content_type = headers
        .get("content-type")
        .map(String::as_str)
        .or(body.map(|_| "application/json"));
    let info = RequestInfo {
        method,
        path,
        content_type,
        content_length: body.map(|b| b.len() as u64),
        sticky,
        end_of_stream: body.is_none_or(|b| b.is_empty()),
        random: mix(seed),
    };
    let mut flow = RequestFlow::default();
    let mut set: BTreeMap<String, String> = BTreeMap::new();
    let mut removed: Vec<&str> = Vec::new();
    let mut new_body: Option<Vec<u8>> = None;
    let mut reject = None;
    let held;
    match flow.on_request_headers(cfg, &info, true) {
        HeadersAction::Continue { set: s, remove } => {
            held = false;
            set.extend(s);
            removed = remove;
        }
        HeadersAction::Hold => held = true,
        HeadersAction::Reject(r) => {
            held = false;
            reject = Some(r);
        }
    }
    if reject.is_none() && flow.reading_body() {
        match flow.on_request_body(cfg, body.unwrap_or_default(), true) {
            BodyAction::Continue { set: s, edits } => {
                set.extend(s);
                if !edits.is_empty() {
                    new_body = Some(apply_edits(body.unwrap_or_default(), &edits));
                }
            }
            BodyAction::Reject(r) => reject = Some(r),
            BodyAction::NeedMore => {}
        }
    }
    let mut out = json!({
        "model": flow.requested_model(),
        "canonicalModel": null,
        "destination": null,
        "routedBy": null,
    });
    if let Some(r) = reject {
        let body: Value = serde_json::from_slice(&r.body()).unwrap_or(Value::Null);
        out["reject"] = json!({"status": r.status(), "code": r.reason.code(), "body": body});
        return out;
    }
    if let Some((m, d)) = flow.routed(cfg) {
        out["canonicalModel"] = json!(m.name);
        out["destination"] = json!(d.name);
    }
    out["routedBy"] = json!(if set.contains_key(&cfg.route_header) {
        if held {
            "body"
        } else {
            "path"
        }
    } else if matches!(flow.outcome(), Outcome::Routed { .. }) {
        "none: the route was chosen from the headers (bodyRouting is off); the model drives rejection, rewriting and telemetry"
    } else {
        "none"
    });
    out["outcome"] = json!(format!("{:?}", flow.outcome()));
    out["setHeaders"] = json!(set);
    if !removed.is_empty() {
        out["removeHeaders"] = json!(removed);
    }
    if let Some(b) = new_body {
        out["rewrittenBody"] = json!(String::from_utf8_lossy(&b));
    }
    if let Some((_, d)) = flow.routed(cfg) {
        out["responseHeaders"] = json!({"x-ai-route": d.name});
    }
    out
}
