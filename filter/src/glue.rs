//! proxy-wasm glue: reads what the host gives, asks the core, carries out its decisions.
//! No routing or parsing logic lives here.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use crate::config::Config;
use crate::host::{self, MAP_REQUEST_HEADERS as REQ, MAP_RESPONSE_HEADERS as RESP};
use crate::policy::{self, Caller, Charge, RateInfo};
use crate::reply::Reject;
use crate::request::Outcome;
use crate::request::{apply_edits, BodyAction, HeadersAction, RequestFlow, RequestInfo, CONTENT_LENGTH};
use crate::telemetry::{self, Exchange, Kind, MetricOp};

/// Filter-state keys (Envoy stores them as `wasm.<key>`; access logs print them with
/// `%FILTER_STATE(wasm.model_router.model:PLAIN)%`).
const FS_MODEL: &str = "model_router.model";
const FS_DESTINATION: &str = "model_router.destination";
const FS_INPUT_TOKENS: &str = "model_router.input_tokens";
const FS_OUTPUT_TOKENS: &str = "model_router.output_tokens";

/// How long held headers wait for the first body callback before the host is judged unable to
/// deliver it (Envoy without `allow_on_headers_stop_iteration`).
const HOLD_TIMEOUT_NS: u64 = 1_000_000_000;
const TICK_MS: u32 = 100;

/// What a stream callback tells the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue = 0,
    /// Stop iteration (headers held, or body buffered).
    Pause = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldSupport {
    Unknown,
    Yes,
    No,
}

/// State shared by the root context and every HTTP context of one VM.
pub struct Shared {
    config: Rc<Config>,
    hold: Cell<HoldSupport>,
    /// Held request contexts and when they were held.
    waiting: RefCell<HashMap<u32, u64>>,
    /// Contexts the safety net released.
    released: RefCell<Vec<u32>>,
    rng: Cell<u64>,
    logged_release: Cell<bool>,
    /// The root's tick timer is running.
    ticking: Cell<bool>,
    /// Metric ids by stat name, defined on first use.
    metrics: RefCell<HashMap<String, u32>>,
    /// Request headers that `by: header:NAME` limits read.
    limit_headers: Vec<String>,
    /// Some model has an allow list or limits.
    policies: bool,
}

/// Rate-limit buckets in proxy-wasm shared data, shared by every worker VM of this Envoy.
struct SharedData;

impl policy::Store for SharedData {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, u32) {
        host::shared_data(key).unwrap_or((None, 0))
    }
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), bool> {
        host::set_shared_data(key, value, cas).map_err(|s| s == host::CAS_MISMATCH)
    }
}

impl Shared {
    fn apply(&self, ops: &[MetricOp]) {
        for op in ops {
            let (kind, name) = match op {
                MetricOp::Add { kind, name, .. } => (*kind, name),
                MetricOp::Record { name, .. } => (Kind::Histogram, name),
            };
            let Some(id) = self.metric_id(kind, name) else { continue };
            let _ = match op {
                MetricOp::Add { delta, .. } => host::increment_metric(id, *delta),
                MetricOp::Record { value, .. } => host::record_metric(id, *value),
            };
        }
    }

    fn metric_id(&self, kind: Kind, name: &str) -> Option<u32> {
        if let Some(id) = self.metrics.borrow().get(name) {
            return Some(*id);
        }
        let host_kind = match kind {
            Kind::Counter => host::METRIC_COUNTER,
            Kind::Gauge => host::METRIC_GAUGE,
            Kind::Histogram => host::METRIC_HISTOGRAM,
        };
        let id = host::define_metric(host_kind, name).ok()?;
        self.metrics.borrow_mut().insert(name.to_string(), id);
        Some(id)
    }

    fn random(&self) -> u64 {
        // xorshift64*: statistically fine for traffic splitting, seeded from host time.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[derive(Default)]
pub struct Root {
    shared: Option<Rc<Shared>>,
}

impl Root {
    pub fn shared(&self) -> Option<Rc<Shared>> {
        self.shared.clone()
    }

    pub fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match host::buffer(host::BUF_PLUGIN_CONFIGURATION, 0, size) {
            Ok(Some(b)) => b,
            _ => b"{}".to_vec(),
        };
        let config = match Config::from_json(&bytes) {
            Ok(c) => Rc::new(c),
            Err(e) => {
                host::log(host::LOG_ERROR, &format!("model-router: invalid configuration: {e}"));
                return false;
            }
        };
        let seed = crate::routing::mix(host::now_nanos() ^ 0x9e37_79b9_7f4a_7c15) | 1;
        let limit_headers = policy::limit_headers(&config);
        let policies = config.models.iter().any(|m| m.allow.is_some() || m.limits.is_some());
        self.shared = Some(Rc::new(Shared {
            config,
            hold: Cell::new(HoldSupport::Unknown),
            waiting: RefCell::new(HashMap::new()),
            released: RefCell::new(Vec::new()),
            rng: Cell::new(seed),
            logged_release: Cell::new(false),
            ticking: Cell::new(false),
            metrics: RefCell::new(HashMap::new()),
            limit_headers,
            policies,
        }));
        host::log(host::LOG_INFO, "model-router: configuration loaded");
        true
    }

    pub fn on_tick(shared: &Shared) {
        if shared.hold.get() == HoldSupport::Yes {
            // Proven able to hold: a request still waiting just has a slow client, which is
            // Envoy's timeouts' business, not a reason to release it unrouted.
            shared.waiting.borrow_mut().clear();
            let _ = host::set_tick_period_ms(0);
            shared.ticking.set(false);
            return;
        }
        let now = host::now_nanos();
        let overdue: Vec<u32> = {
            let waiting = shared.waiting.borrow();
            waiting
                .iter()
                .filter(|(_, &since)| now.saturating_sub(since) > HOLD_TIMEOUT_NS)
                .map(|(&id, _)| id)
                .collect()
        };
        if overdue.is_empty() {
            if shared.waiting.borrow().is_empty() {
                let _ = host::set_tick_period_ms(0);
                shared.ticking.set(false);
            }
            return;
        }
        shared.hold.set(HoldSupport::No);
        for id in &overdue {
            shared.waiting.borrow_mut().remove(id);
            shared.released.borrow_mut().push(*id);
            shared.apply(&[telemetry::hold_released()]);
        }
        if !shared.logged_release.replace(true) {
            host::log(
                host::LOG_WARN,
                "model-router: the host did not deliver the body of a held request; releasing it unrouted. \
                 Body routing needs allow_on_headers_stop_iteration: true (see docs). \
                 Later requests on this VM are routed from headers only.",
            );
        }
        // No borrow is held here: resuming can call back into this VM.
        for id in overdue {
            if host::set_effective_context(id).is_ok() {
                let _ = host::resume_request();
            }
        }
        if shared.waiting.borrow().is_empty() {
            let _ = host::set_tick_period_ms(0);
            shared.ticking.set(false);
        }
    }
}

pub struct Http {
    id: u32,
    shared: Option<Rc<Shared>>,
    flow: RequestFlow,
    /// Bytes of the buffered request body already fed to the flow.
    body_seen: usize,
    exchange: Exchange,
    /// Where to charge the response's tokens (a model with a token limit).
    charge: Option<Charge>,
    /// `x-ratelimit-*` to report on the response.
    rate_info: RateInfo,
    /// The caller's identity and limit-key headers, read with the headers (later they may be
    /// gone upstream already).
    principal: Option<String>,
    limit_values: Vec<(String, Vec<u8>)>,
    /// The response status, from the response headers.
    status: Option<u32>,
}

impl Http {
    pub fn new(id: u32, shared: Option<Rc<Shared>>) -> Http {
        Http {
            id,
            shared,
            flow: RequestFlow::default(),
            body_seen: 0,
            exchange: Exchange::new(0),
            charge: None,
            rate_info: RateInfo::default(),
            principal: None,
            limit_values: Vec::new(),
            status: None,
        }
    }

    /// Feeds a passing response chunk to the accounting (the chunk itself is never changed).
    fn response_body(&mut self, shared: &Shared, body_size: usize, end_of_stream: bool) {
        if !self.exchange.wants_body() {
            return;
        }
        let chunk = if body_size > 0 {
            host::buffer(host::BUF_RESPONSE_BODY, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if let Some(ttft) = self.exchange.response_body(&chunk, end_of_stream, host::now_nanos()) {
            let (m, d) = telemetry::labels(&shared.config, self.flow.outcome());
            shared.apply(&[Exchange::ttft_op(&m, &d, ttft)]);
        }
        if end_of_stream {
            let u = self.exchange.usage();
            if let Some(charge) = &self.charge {
                let tokens = u.input.unwrap_or(0) + u.output.unwrap_or(0);
                policy::charge(&mut SharedData, charge, tokens, host::now_nanos());
            }
            if let Some(n) = u.input {
                let _ = host::set_property(&[FS_INPUT_TOKENS], n.to_string().as_bytes());
            }
            if let Some(n) = u.output {
                let _ = host::set_property(&[FS_OUTPUT_TOKENS], n.to_string().as_bytes());
            }
        }
    }
}

/// Replaces the whole buffered request body with the edited one (Envoy cannot splice a range).
fn rewrite_body(body_size: usize, edits: &[crate::request::Edit]) -> bool {
    let Ok(Some(body)) = host::buffer(host::BUF_REQUEST_BODY, 0, body_size) else {
        return false;
    };
    let edited = apply_edits(&body, edits);
    host::set_buffer(host::BUF_REQUEST_BODY, 0, body.len(), &edited).is_ok()
}

impl Http {
    fn was_released(&self, shared: &Shared) -> bool {
        let mut released = shared.released.borrow_mut();
        match released.iter().position(|&id| id == self.id) {
            Some(i) => {
                released.swap_remove(i);
                true
            }
            None => false,
        }
    }

    fn reject(&mut self, shared: &Shared, r: &crate::reply::Reject) -> Action {
        shared.apply(&[telemetry::rejected(r.reason)]);
        let body = r.body();
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        headers.extend(r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let sent = host::send_local_response(
            r.status(),
            &format!("model_router_{}", r.reason.code()),
            &headers,
            &body,
        );
        if sent.is_err() {
            // The host refused a local reply: never leave the request hanging.
            return Action::Continue;
        }
        Action::Pause
    }

    fn set_request_headers(&self, set: &[(String, String)], remove: &[&str]) {
        for name in remove {
            let _ = host::remove_header(REQ, name);
        }
        for (k, v) in set {
            let _ = host::set_header(REQ, k, v);
        }
        if !set.is_empty() {
            // Envoy >= 1.33: make sure the route is chosen again with the new headers.
            let _ = host::call_foreign("clear_route_cache", &[]);
        }
    }

    /// Access control and rate limits for a routed request (no-op for models without them).
    fn admit(&mut self, shared: &Shared) -> Result<(), Reject> {
        let Outcome::Routed { model, .. } = *self.flow.outcome() else {
            return Ok(());
        };
        let cfg = &shared.config;
        if cfg
            .models
            .get(model)
            .is_none_or(|m| m.allow.is_none() && m.limits.is_none())
        {
            return Ok(());
        }
        let caller = Caller {
            principal: self.principal.as_deref(),
            headers: &self.limit_values,
        };
        match policy::admit(&mut SharedData, cfg, model, &caller, host::now_nanos()) {
            Ok((charge, info)) => {
                self.charge = charge;
                self.rate_info = info;
                Ok(())
            }
            Err(r) => {
                self.flow.deny(r.reason);
                Err(r)
            }
        }
    }

    /// Once the flow has routed the request: count it in flight, and name it for access logs.
    fn note_routed(&mut self, shared: &Shared) {
        if let Some((m, d)) = self.flow.routed(&shared.config) {
            let ops = self.exchange.routed(&m.name, &d.name);
            if !ops.is_empty() {
                shared.apply(&ops);
                let _ = host::set_property(&[FS_MODEL], m.name.as_bytes());
                let _ = host::set_property(&[FS_DESTINATION], d.name.as_bytes());
            }
        }
    }
}

impl Http {
    pub fn on_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let start_ns = host::now_nanos();
        self.exchange = Exchange::new(start_ns);
        let cfg = &shared.config;
        let h = host::headers(REQ);
        let method = h.get_str(":method").unwrap_or_default();
        let path = h.get_str(":path").unwrap_or_default();
        let content_type = h.get_str("content-type");
        let content_length = h.get_str("content-length").and_then(|v| v.trim().parse().ok());
        let sticky = cfg.sticky_header.as_deref().and_then(|n| h.get(n)).map(<[u8]>::to_vec);
        let info = RequestInfo {
            method: &method,
            path: &path,
            content_type: content_type.as_deref(),
            content_length,
            sticky: sticky.as_deref(),
            end_of_stream,
            random: shared.random(),
        };
        if shared.policies {
            let peer = host::property(&["connection", "uri_san_peer_certificate"]);
            let claimed = cfg
                .identity_header
                .as_deref()
                .and_then(|n| h.get(n))
                .map(<[u8]>::to_vec);
            self.principal = policy::identity(peer.as_deref(), claimed.as_deref());
            self.limit_values = shared
                .limit_headers
                .iter()
                .filter_map(|n| h.get(n).map(|v| (n.clone(), v.to_vec())))
                .collect();
        }
        let can_hold = shared.hold.get() != HoldSupport::No;
        match self.flow.on_request_headers(cfg, &info, can_hold) {
            HeadersAction::Continue { set, remove } => {
                if let Err(r) = self.admit(&shared) {
                    return self.reject(&shared, &r);
                }
                self.set_request_headers(&set, &remove);
                self.note_routed(&shared);
                Action::Continue
            }
            HeadersAction::Hold => {
                // The safety net is needed only until a body callback has proven that this host
                // holds headers; after that, holding costs no timer and no bookkeeping.
                if shared.hold.get() == HoldSupport::Unknown {
                    shared.waiting.borrow_mut().insert(self.id, start_ns);
                    if !shared.ticking.replace(true) {
                        let _ = host::set_tick_period_ms(TICK_MS);
                    }
                }
                Action::Pause
            }
            HeadersAction::Reject(r) => self.reject(&shared, &r),
        }
    }

    pub fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        if self.was_released(&shared) {
            // Envoy delivers the body once a released request goes on; it is too late to route.
            self.flow.release_held();
            return Action::Continue;
        }
        if self.flow.held() {
            // Body callbacks while headers are held: this host can hold.
            shared.hold.set(HoldSupport::Yes);
            shared.waiting.borrow_mut().remove(&self.id);
        }
        if !self.flow.reading_body() {
            return Action::Continue;
        }
        let chunk = if body_size > self.body_seen {
            match host::buffer(host::BUF_REQUEST_BODY, self.body_seen, body_size - self.body_seen) {
                Ok(b) => b.unwrap_or_default(),
                Err(_) => Vec::new(),
            }
        } else {
            Vec::new()
        };
        self.body_seen = body_size;
        let cfg = &shared.config;
        match self.flow.on_request_body(cfg, &chunk, end_of_stream) {
            BodyAction::NeedMore => Action::Pause,
            BodyAction::Continue { mut set, edits } => {
                if let Err(r) = self.admit(&shared) {
                    return self.reject(&shared, &r);
                }
                if !edits.is_empty() && !rewrite_body(body_size, &edits) {
                    // Body unchanged: its length must not change either.
                    set.retain(|(k, _)| k != CONTENT_LENGTH);
                    host::log(host::LOG_WARN, "model-router: the host refused the body rewrite");
                }
                self.set_request_headers(&set, &[]);
                self.note_routed(&shared);
                Action::Continue
            }
            BodyAction::Reject(r) => self.reject(&shared, &r),
        }
    }

    pub fn on_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        if let Some((_, d)) = self.flow.routed(&shared.config) {
            let _ = host::set_header(RESP, "x-ai-route", &d.name);
        }
        for (k, v) in self.rate_info.headers() {
            let _ = host::set_header(RESP, &k, &v);
        }
        if self.flow.counted() {
            let h = host::headers(RESP);
            let count = |name| h.get_str(name).and_then(|v| v.trim().parse::<u64>().ok());
            self.status = count(":status").and_then(|s| u32::try_from(s).ok());
            let ct = h.get_str("content-type");
            self.exchange
                .response_headers(ct.as_deref(), count("x-prompt-tokens"), count("x-generated-tokens"));
            if end_of_stream {
                self.response_body(&shared, 0, true);
            }
        }
        Action::Continue
    }

    pub fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(shared) = self.shared.clone() {
            self.response_body(&shared, body_size, end_of_stream);
        }
        Action::Continue
    }

    pub fn on_log(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        shared.waiting.borrow_mut().remove(&self.id);
        self.was_released(&shared);
        // The status seen in the response headers, else (local replies, resets) Envoy's own.
        let status = self.status.unwrap_or_else(|| {
            host::property(&["response", "code"])
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map(|b| u32::try_from(i64::from_le_bytes(b)).unwrap_or(0))
                .unwrap_or(0)
        });
        let (model, dest) = telemetry::labels(&shared.config, self.flow.outcome());
        let ops = self
            .exchange
            .finish(self.flow.counted(), (&model, &dest), status, host::now_nanos());
        shared.apply(&ops);
    }
}
