//! The decision the filter would make for one request, as JSON: computed by the filter's own
//! exchange (`exchange::Stream`) on the in-memory host — the same code, in the same order, as in
//! Envoy. `wasmpack route` prints it and the browser playground shows it (documented in
//! docs/configuration.md, "wasmpack route").

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::config::Config;
use crate::exchange::{Action, Map, Stream, Vm};
use crate::memory_host::{MemoryHost, SharedMem};
use crate::request::{Outcome, Unread};

/// Where the filter runs, as Envoy's properties tell it (`identity::source`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Proxy {
    /// Plain Envoy (`wasmpack run`, Envoy Gateway): no Istio node.
    #[default]
    Envoy,
    /// An Istio sidecar's outbound listener (the callers' sidecars).
    Sidecar,
    /// An Istio sidecar's inbound listener (the model pods' sidecars).
    SidecarInbound,
    /// An Istio gateway.
    Gateway,
    /// An Istio ambient waypoint.
    Waypoint,
}

impl Proxy {
    /// Istio's node id and the listener direction for this proxy.
    fn node(self) -> Option<(&'static str, i64)> {
        match self {
            Proxy::Envoy => None,
            Proxy::Sidecar => Some(("sidecar~127.0.0.1~route.default~default.svc.cluster.local", 2)),
            Proxy::SidecarInbound => Some(("sidecar~127.0.0.1~route.default~default.svc.cluster.local", 1)),
            Proxy::Gateway => Some(("router~127.0.0.1~gateway.default~default.svc.cluster.local", 2)),
            Proxy::Waypoint => Some(("waypoint~127.0.0.1~waypoint.default~default.svc.cluster.local", 1)),
        }
    }
}

/// One request to decide.
pub struct RouteRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Lowercase names.
    pub headers: &'a [(String, String)],
    pub body: Option<&'a [u8]>,
    /// The mTLS peer's URI SAN (on a waypoint: Istio's peer principal).
    pub peer_identity: Option<&'a str>,
    /// Where the filter runs.
    pub proxy: Proxy,
    /// The sidecar's own workload, `(namespace, service account)`, as its node metadata says.
    pub workload: Option<(&'a str, &'a str)>,
}

/// `decide` `repeat` times through one filter instance (its limits shared; all at the same
/// instant, as a burst), with a summary of the statuses.
pub fn decide_repeated(config: &Config, req: &RouteRequest, seed: u64, repeat: u32) -> Value {
    decide_in(config, req, seed, repeat, SharedMem::default())
}

/// The time `route` decides at (ms since the epoch).
const ROUTE_NOW_MS: u64 = 1_700_000_000_000;

/// Shared data holding failover's breakers as given: `(destination, state)` with the state
/// `closed`, `open` (in its probation), `probation-over` (open, the next request that lands on it
/// is a trial) or `half-open` (a trial under way); a destination name
/// stands for that destination in every model that has it.
pub fn destination_states(config: &Config, states: &[(String, String)]) -> Result<SharedMem, String> {
    use crate::health::{Health, Table, HALF_OPEN, OPEN};
    let Some(failover) = &config.failover else {
        return Err("the configuration has no `failover` section: destinations have no state".into());
    };
    // An open destination has just opened: its first probation (what a client's retry-after says).
    let probation = u64::from(failover.probation_ms);
    let mut t = Table(Vec::new());
    for m in &config.models {
        for d in &m.destinations {
            t.0.push(
                match states.iter().find(|(n, _)| *n == d.name).map(|(_, s)| s.as_str()) {
                    Some("open") => Health {
                        state: OPEN,
                        level: 1,
                        count: 0,
                        at_ms: ROUTE_NOW_MS + probation,
                    },
                    // Its probation is over: the next request that lands on it is a trial.
                    Some("probation-over") => Health {
                        state: OPEN,
                        level: 1,
                        count: 0,
                        at_ms: ROUTE_NOW_MS,
                    },
                    // A trial is under way: no other request goes to it meanwhile.
                    Some("half-open") => Health {
                        state: HALF_OPEN,
                        level: 1,
                        count: 0,
                        at_ms: ROUTE_NOW_MS,
                    },
                    _ => Health::default(),
                },
            );
        }
    }
    for (i, (n, st)) in states.iter().enumerate() {
        if states.iter().take(i).any(|(m, _)| m == n) {
            return Err(format!("{n}: given more than once"));
        }
        if !config
            .models
            .iter()
            .any(|m| m.destinations.iter().any(|d| d.name == *n))
        {
            return Err(format!("{n}: no configured destination has that name"));
        }
        if !matches!(st.as_str(), "closed" | "open" | "half-open" | "probation-over") {
            return Err(format!("{n}={st}: expected closed, open, probation-over or half-open"));
        }
    }
    let mut shared = SharedMem::default();
    let _ = crate::policy::Store::set(&mut shared, &crate::health::key(config), &t.encode(), 0);
    Ok(shared)
}

/// `decide_repeated` with the proxy's shared data as given (`destination_states`).
pub fn decide_in(config: &Config, req: &RouteRequest, seed: u64, repeat: u32, shared: SharedMem) -> Value {
    let vm = Vm::new(config.clone(), seed);
    let mut shared = shared;
    let mut statuses: BTreeMap<String, u32> = BTreeMap::new();
    let mut last = Value::Null;
    for i in 0..repeat.max(1) {
        let (v, s) = decide_on(&vm, req, shared, i + 1);
        shared = s;
        let status = v.pointer("/reject/status").and_then(Value::as_u64).unwrap_or(200);
        *statuses.entry(status.to_string()).or_default() += 1;
        last = v;
    }
    if repeat > 1 {
        put(&mut last, "repeat", json!({"requests": repeat, "statuses": statuses}));
    }
    last
}

/// Sets `key` of the object `out` (not an object: nothing; serde_json's `out[key] = ` panics).
fn put(out: &mut Value, key: &str, value: Value) {
    if let Some(o) = out.as_object_mut() {
        o.insert(key.to_owned(), value);
    }
}

fn decide_on(vm: &Vm, req: &RouteRequest, shared: SharedMem, id: u32) -> (Value, SharedMem) {
    let cfg = &vm.config;
    let body = req.body.unwrap_or_default();
    let mut h = MemoryHost::new();
    h.shared = shared;
    h.now_ns = 1_700_000_000_000_000_000;
    let authority = req
        .headers
        .iter()
        .find(|(k, _)| k == "host" || k == ":authority")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "localhost".into());
    h.request_headers = vec![
        (":method".into(), req.method.to_string()),
        (":path".into(), req.path.to_string()),
        (":authority".into(), authority),
    ];
    if req.body.is_some() && !req.headers.iter().any(|(k, _)| k == "content-type") {
        h.request_headers
            .push(("content-type".into(), "application/json".into()));
    }
    if req.body.is_some() {
        h.request_headers
            .push(("content-length".into(), body.len().to_string()));
    }
    h.request_headers.extend(
        req.headers
            .iter()
            .filter(|(k, _)| k != "host" && k != ":authority" && k != "content-length")
            .cloned(),
    );
    if let Some((id, direction)) = req.proxy.node() {
        h.properties.insert("xds.node.id".into(), id.as_bytes().to_vec());
        h.properties
            .insert("xds.listener_direction".into(), direction.to_le_bytes().to_vec());
    }
    if let Some((ns, sa)) = req.workload {
        h.properties
            .insert("xds.node.metadata.NAMESPACE".into(), ns.as_bytes().to_vec());
        h.properties
            .insert("xds.node.metadata.SERVICE_ACCOUNT".into(), sa.as_bytes().to_vec());
    }
    if let Some(p) = req.peer_identity {
        let property = if req.proxy == Proxy::Waypoint {
            "filter_state.io.istio.peer_principal"
        } else {
            "connection.uri_san_peer_certificate"
        };
        h.properties.insert(property.into(), p.as_bytes().to_vec());
    }
    h.request_body = body.to_vec();

    let mut s = Stream::new(id);
    let eos = body.is_empty();
    let mut went_on = s.on_request_headers(vm, &mut h, eos) == Action::Continue;
    if h.reply.is_none() && s.flow().reading_body() {
        went_on = s.on_request_body(vm, &mut h, body.len(), true) == Action::Continue;
    }
    // Global limits: the calls the filter makes to the rate limit service; `route` does not call
    // it, and shows what happens when it admits the request.
    let calls: Vec<Value> = h
        .grpc_calls
        .iter()
        .map(|(_, c)| {
            let (entries, hits) = crate::rls::describe(&c.message).unwrap_or_default();
            let descriptor: BTreeMap<String, String> = entries.into_iter().collect();
            json!({"method": format!("{}/{}", c.service_name, c.method), "descriptor": descriptor, "hits": hits})
        })
        .collect();
    if !calls.is_empty() && h.reply.is_none() {
        let ok = [0x08, 0x01];
        for (token, _) in h.grpc_calls.clone() {
            s.on_grpc_answer(vm, &mut h, token, Ok(&ok));
        }
        went_on = h.reply.is_none();
    }
    let flow = s.flow();
    let mut out = json!({
        "model": flow.requested_model(),
        "canonicalModel": flow.model(cfg).map(|m| m.name.clone()),
        "destination": null,
        "routedBy": null,
        "outcome": outcome_name(flow.outcome()),
    });
    if let Some(p) = req.peer_identity {
        put(&mut out, "peerIdentity", json!(p));
    }
    if let Some((principal, source)) = s.caller() {
        put(
            &mut out,
            "caller",
            json!({"identity": principal, "source": source.name()}),
        );
    }
    if !calls.is_empty() {
        put(
            &mut out,
            "rateLimitService",
            json!({"calls": calls, "answer": "OK (assumed: route does not call the service)"}),
        );
    }
    if let Some(r) = h.reply.take() {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let headers: BTreeMap<String, String> = r.headers.into_iter().filter(|(k, _)| k != "content-type").collect();
        put(
            &mut out,
            "reject",
            json!({
                "status": r.status,
                "code": body.pointer("/error/code"),
                "headers": headers,
                "body": body,
            }),
        );
        s.on_log(vm, &mut h);
        return (out, h.shared);
    }
    if let Some((m, d)) = flow.routed(cfg) {
        if cfg.failover.is_some() {
            let (via, trial) = flow.failover();
            let how = match (via, trial) {
                (crate::routing::Via::First, Some(_)) => "trial",
                (v, _) => v.label(),
            };
            put(&mut out, "failover", json!(how));
            if flow.asked_model().is_some() {
                put(&mut out, "servedBy", json!(m.name));
            }
        }
        put(&mut out, "destination", json!(d.name));
        put(
            &mut out,
            "routedBy",
            json!(if flow.model_from_body() { "body" } else { "path" }),
        );
    } else if let Some(note) = note(cfg.body_routing, flow.outcome()) {
        put(&mut out, "note", json!(note));
    }
    let mut set: BTreeMap<String, String> = BTreeMap::new();
    let mut removed: Vec<String> = Vec::new();
    for (map, name, value) in &h.header_edits {
        if *map != Map::Request {
            continue;
        }
        match value {
            Some(v) => {
                set.insert(name.clone(), v.clone());
            }
            None if !removed.contains(name) => removed.push(name.clone()),
            None => {}
        }
    }
    put(&mut out, "setHeaders", json!(set));
    if !removed.is_empty() {
        put(&mut out, "removeHeaders", json!(removed));
    }
    if h.request_body != body {
        put(
            &mut out,
            "rewrittenBody",
            json!(String::from_utf8_lossy(&h.request_body)),
        );
    }
    if went_on {
        // What the client would see on a 200 from the backend.
        h.response_headers = vec![
            (":status".into(), "200".into()),
            ("content-type".into(), "application/json".into()),
        ];
        s.on_response_headers(vm, &mut h, true);
        let resp: BTreeMap<String, String> = h
            .response_headers
            .iter()
            .filter(|(k, _)| !k.starts_with(':') && k != "content-type")
            .cloned()
            .collect();
        if !resp.is_empty() {
            put(&mut out, "responseHeaders", json!(resp));
        }
    }
    s.on_log(vm, &mut h);
    (out, h.shared)
}

/// The outcome as a stable name (documented).
pub fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Pending => "pending",
        Outcome::OutOfScope => "out_of_scope",
        Outcome::NoModel => "no_model",
        Outcome::Matched {
            destination: Some(_), ..
        } => "routed",
        Outcome::Matched { destination: None, .. } => "unrouted",
        Outcome::Unknown(_) => "unknown_model",
        Outcome::Unread(Unread::InvalidJson) => "unread_invalid_json",
        Outcome::Unread(Unread::InvalidForm) => "unread_invalid_form",
        Outcome::Unread(Unread::TooLarge) => "unread_too_large",
        Outcome::Unread(Unread::HoldReleased) => "unread_hold_released",
        Outcome::Rejected(_) | Outcome::Denied { .. } => "rejected",
    }
}

fn note(body_routing: bool, o: &Outcome) -> Option<&'static str> {
    match o {
        Outcome::Matched { destination: None, .. } if !body_routing => Some(
            "bodyRouting is off: the route was chosen from the headers before the body was read, so the \
             filter does not route this request (destination `unrouted`); the model still drives access \
             rules, limits, rewriting and telemetry",
        ),
        Outcome::OutOfScope => Some("outside the configured scope: the filter leaves this request alone"),
        Outcome::NoModel => Some("no model in the path or body: the request goes on unrouted"),
        Outcome::Unknown(_) => Some("unknown model let through (onUnknownModel: passthrough), unrouted"),
        Outcome::Unread(_) => Some("the body could not be read and was let through unrouted"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_states_explain_failover() {
        let cfg = Config::from_json(
            br#"{"failover":{},"models":[{"name":"m","destinations":[{"name":"a"},{"name":"b"}],
                "fallbacks":[{"model":"f"}]},{"name":"f","destinations":[{"name":"f1"}]}]}"#,
        )
        .unwrap();
        let req = RouteRequest {
            method: "POST",
            path: "/v1/chat/completions",
            headers: &[],
            body: Some(br#"{"model":"m"}"#),
            peer_identity: None,
            proxy: Proxy::Envoy,
            workload: None,
        };
        let st = |s: &[(&str, &str)]| {
            let v: Vec<(String, String)> = s.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
            destination_states(&cfg, &v)
        };
        let d = decide_in(&cfg, &req, 1, 1, st(&[("a", "open")]).unwrap());
        assert_eq!(
            (d["destination"].as_str(), d["failover"].as_str()),
            (Some("b"), Some("destination"))
        );
        let d = decide_in(&cfg, &req, 1, 1, st(&[("a", "open"), ("b", "half-open")]).unwrap());
        assert_eq!(
            (d["destination"].as_str(), d["servedBy"].as_str()),
            (Some("f1"), Some("f"))
        );
        let d = decide_in(
            &cfg,
            &req,
            1,
            1,
            st(&[("a", "open"), ("b", "open"), ("f1", "open")]).unwrap(),
        );
        assert_eq!(d["reject"]["code"], "model_unavailable");
        // A probation that is over: the request is that destination's trial.
        let d = decide_in(&cfg, &req, 1, 1, st(&[("a", "probation-over"), ("b", "open")]).unwrap());
        assert_eq!(
            (d["destination"].as_str(), d["failover"].as_str()),
            (Some("a"), Some("trial"))
        );
        assert_eq!(
            st(&[("a", "open"), ("a", "closed")]).unwrap_err(),
            "a: given more than once"
        );
        assert!(st(&[("zz", "open")]).is_err());
        assert!(st(&[("a", "broken")]).is_err());
    }
}
