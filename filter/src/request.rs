//! What the filter decides about one request, as a host-free state machine: the exchange hands
//! it the headers and body chunks and carries out the decisions it returns.

use crate::config::{Config, Model, Policy};
use crate::form_scan::{self, FormScanner};
use crate::health::Table;
use crate::json::Json;
use crate::json_scan::{Found, TopLevelScanner};
use crate::path_model::{model_from_path, query_model};
use crate::reply::{Reject, RejectReason};
use crate::routing::{choose, pick, Choice, Pick, Via};

/// The parts of the request headers the flow looks at.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// `:authority` (the `Host`), for the scope.
    pub authority: &'a str,
    pub content_type: Option<&'a str>,
    pub content_length: Option<u64>,
    /// Value of the configured sticky header, when sent.
    pub sticky: Option<&'a [u8]>,
    /// The request has no body.
    pub end_of_stream: bool,
    /// A random number for the weighted choice (used only without a sticky value).
    pub random: u64,
}

/// What became of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still reading the body.
    Pending,
    /// Outside the configured scope: not looked at.
    OutOfScope,
    /// No model to be seen: a GET, no body, or a body without a model that was let through.
    NoModel,
    /// The model is `config.models[model]`. `destination` is the filter's choice, and is set only
    /// when that choice selected the route (a model in the path, or in the body of a request whose
    /// headers were held). `None`: the route had been chosen from the headers already, so the
    /// request is *unrouted* (it still counts, is admitted and is rewritten by this model).
    Matched { model: usize, destination: Option<usize> },
    /// A model the configuration does not know, let through (`onUnknownModel: passthrough`).
    Unknown(String),
    /// The body could not be read (invalid JSON or form, too large, or the host would not hold
    /// the headers) and the request was let through unrouted.
    Unread(Unread),
    /// Refused before a model was known (or for a name the configuration does not know).
    Rejected(RejectReason),
    /// A request for `config.models[model]`, refused (access control, limits, the rate limit
    /// service, a body the filter will not pass on): it counts under its model, sent nowhere.
    Denied { model: usize, reason: RejectReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unread {
    InvalidJson,
    /// A body labelled `multipart/*` that is not a form this filter reads the same way as any
    /// backend (see `form_scan`).
    InvalidForm,
    TooLarge,
    /// The safety net released held headers because the host never delivered the body.
    HoldReleased,
}

/// Replace `len` bytes at `start` of the (buffered) request body with `bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub start: usize,
    pub len: usize,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadersAction {
    /// Let the headers go on after setting and removing these request headers.
    Continue {
        set: Vec<(String, String)>,
        remove: Vec<&'static str>,
    },
    /// Hold the headers until the body has told the model.
    Hold,
    Reject(Reject),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyAction {
    /// Keep buffering: the body has not been read to its end.
    NeedMore,
    /// Apply the edits to the buffered body (see `apply_edits`), set the headers (only ever
    /// non-empty while they are held), and let everything go on.
    Continue {
        set: Vec<(String, String)>,
        edits: Vec<Edit>,
    },
    Reject(Reject),
}

/// Top-level request keys the scanner records.
const KEYS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
];
const K_MODEL: usize = 0;
const K_STREAM: usize = 1;
const K_STREAM_OPTIONS: usize = 2;
const K_MAX_TOKENS: [usize; 3] = [3, 4, 5];
/// Model names beyond this cannot match a configured model (names are at most 256 bytes).
const CAPTURE_LIMIT: usize = 1024;

/// The field of a form upload (`multipart/form-data`) that names the model.
const FORM_MODEL: &str = "model";

/// How the body is being read.
#[derive(Debug)]
enum BodyScan {
    /// A body labelled `multipart/*`, before its first byte: a form begins with `-` (its
    /// boundary); anything else is read as JSON, as some servers do whatever the label says.
    Sniff {
        boundary: Option<Vec<u8>>,
    },
    Json(TopLevelScanner),
    Form(FormScanner),
}

impl BodyScan {
    fn for_label(content_type: Option<&str>) -> BodyScan {
        if crate::header_map::mime_type(content_type).starts_with("multipart/") {
            return BodyScan::Sniff {
                boundary: content_type.and_then(form_scan::boundary),
            };
        }
        BodyScan::json()
    }

    fn json() -> BodyScan {
        BodyScan::Json(TopLevelScanner::new(KEYS, CAPTURE_LIMIT).strict_utf8())
    }
}

/// Why a body could not be read.
enum Unreadable {
    Empty,
    Json(String),
    Form(String),
}

/// Per-request state.
#[derive(Debug)]
pub struct RequestFlow {
    outcome: Outcome,
    scanner: Option<BodyScan>,
    held: bool,
    pick: Pick,
    content_length: Option<u64>,
    seen: u64,
    /// The body asked for a stream (`"stream": true`, or what a lenient parser takes for it).
    streaming: bool,
    /// The path is an OpenAI endpoint that takes `stream_options` (chat or text completions).
    takes_stream_options: bool,
    /// The filter looked for a model in this request (path or body).
    inspected: bool,
    /// The model came from the body (so the response is expected to report usage).
    from_body: bool,
    /// The body is a form upload (its bytes are no measure of its tokens).
    form: bool,
    /// The model name as the client sent it.
    requested: Option<String>,
    /// The `model` query parameter of a request whose body is read: the body's model must be
    /// the same (a server such as LiteLLM prefers the query's), and stands in for a missing one.
    query_model: Option<String>,
    /// The largest `max_tokens` / `max_completion_tokens` / `max_output_tokens` the body asked for.
    max_tokens: Option<u64>,
    /// Failover: the destinations' health as read for this request, and the time (ms).
    health: Option<(Table, u64)>,
    /// Failover: how the destination was found, and the breaker slot of a trial request.
    via: Via,
    trial: Option<usize>,
    /// The model the client's name resolved to (before any fallback).
    asked: Option<usize>,
}

impl Default for RequestFlow {
    fn default() -> Self {
        RequestFlow {
            outcome: Outcome::NoModel,
            scanner: None,
            held: false,
            pick: Pick::Random(0),
            content_length: None,
            seen: 0,
            streaming: false,
            takes_stream_options: false,
            inspected: false,
            from_body: false,
            form: false,
            requested: None,
            query_model: None,
            max_tokens: None,
            health: None,
            via: Via::First,
            trial: None,
            asked: None,
        }
    }
}

/// Methods whose JSON body is read for a model. GET and the rest pass through untouched.
fn has_inspectable_body(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH")
}

/// OpenAI's chat and text completions take `stream_options` (other APIs reject it).
fn takes_stream_options(path: &str) -> bool {
    let lenient = crate::path_model::lenient(path);
    // `/chat/completions` ends with `/completions` too.
    crate::path_model::trim_slashes(&lenient).ends_with(b"/completions")
}

/// What a lenient parser (pydantic in lax mode, as vLLM runs it) reads as `true`.
fn truthy(raw: &[u8]) -> bool {
    match raw {
        b"true" | b"1" => true,
        [b'"', inner @ .., b'"'] => matches!(
            inner.to_ascii_lowercase().as_slice(),
            b"1" | b"on" | b"t" | b"true" | b"y" | b"yes"
        ),
        _ => std::str::from_utf8(raw).is_ok_and(crate::json::is_one),
    }
}

/// A token count the client asked for (`max_tokens: 256`), if it is a sane number.
fn token_count(f: &Found) -> Option<u64> {
    let s = std::str::from_utf8(&f.raw).ok()?;
    crate::json::whole_count(s)
        .filter(|(_, overflow)| !overflow)
        .map(|(n, _)| n)
}

impl RequestFlow {
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// Failover is on: route with the destinations' health as read now (`now_ms`).
    pub fn set_health(&mut self, table: Table, now_ms: u64) {
        self.health = Some((table, now_ms));
    }

    /// How failover found the destination, and the breaker slot to mark when it is a trial.
    pub fn failover(&self) -> (Via, Option<usize>) {
        (self.via, self.trial)
    }

    /// The model the client asked for, when a fallback serves it instead.
    pub fn asked_model(&self) -> Option<usize> {
        self.asked.filter(|a| Some(*a) != self.model_index())
    }

    /// The model name the backend is sent: `upstreamModel`, or a fallback model's own name.
    pub fn upstream_name<'c>(&self, cfg: &'c Config) -> Option<&'c str> {
        let (m, _) = self.matched(cfg)?;
        match (&m.upstream_model, self.asked_model()) {
            (Some(up), _) => Some(up),
            (None, Some(_)) => Some(&m.name),
            _ => None,
        }
    }

    /// The model name as the client sent it (path or body), once known.
    pub fn requested_model(&self) -> Option<&str> {
        self.requested.as_deref()
    }

    /// The filter looked for a model in this request: it belongs in the per-model metrics.
    pub fn counted(&self) -> bool {
        self.inspected
    }

    /// The model came from the body.
    pub fn model_from_body(&self) -> bool {
        self.from_body
    }

    /// The request's input tokens as far as its body tells (about four bytes of JSON text per
    /// token, of the bytes read or declared; none for a form upload, whose bytes are mostly a file's).
    pub fn estimated_input_tokens(&self) -> u64 {
        if self.form {
            0
        } else {
            // A body not read (a model named in the path) is measured by its declared length.
            self.seen.max(self.content_length.unwrap_or(0)).div_ceil(4)
        }
    }

    /// The body asked for a streamed response.
    #[cfg(test)]
    pub fn streaming(&self) -> bool {
        self.streaming
    }

    /// Body bytes read so far.
    #[cfg(test)]
    pub fn body_bytes(&self) -> u64 {
        self.seen
    }

    /// The largest output-token limit the body asked for.
    pub fn max_tokens(&self) -> Option<u64> {
        self.max_tokens
    }

    /// True while body chunks are wanted.
    pub fn reading_body(&self) -> bool {
        self.scanner.is_some()
    }

    /// True while the request headers are held waiting for the body.
    pub fn held(&self) -> bool {
        self.held
    }

    /// The matched model, and the destination when the filter's choice selected the route.
    pub fn matched<'c>(&self, cfg: &'c Config) -> Option<(&'c Model, Option<&'c crate::config::Destination>)> {
        match self.outcome {
            Outcome::Matched { model, destination } => {
                let m = cfg.models.get(model)?;
                Some((m, destination.and_then(|d| m.destinations.get(d))))
            }
            _ => None,
        }
    }

    /// The configured model the request named, matched or refused.
    #[cfg(any(test, feature = "decide"))]
    pub fn model<'c>(&self, cfg: &'c Config) -> Option<&'c Model> {
        match self.outcome {
            Outcome::Matched { model, .. } | Outcome::Denied { model, .. } => cfg.models.get(model),
            _ => None,
        }
    }

    /// The model and destination, only when the filter routed the request.
    pub fn routed<'c>(&self, cfg: &'c Config) -> Option<(&'c Model, &'c crate::config::Destination)> {
        match self.matched(cfg)? {
            (m, Some(d)) => Some((m, d)),
            _ => None,
        }
    }

    /// `can_hold`: the host may be asked to hold the headers (see the hold safety net).
    pub fn on_request_headers(&mut self, cfg: &Config, req: &RequestInfo, can_hold: bool) -> HeadersAction {
        self.pick = Pick::new(req.sticky, req.random);
        self.content_length = req.content_length;
        // gRPC (the KServe v2 gRPC protocol is not read) is in scope only by its path, never
        // because its host serves a model: reading its protobuf as JSON would refuse every call.
        let grpc = crate::header_map::mime_type(req.content_type).starts_with("application/grpc");
        let in_scope = if grpc {
            cfg.scope.contains_by_path(req.authority, req.path)
        } else {
            cfg.scope.contains(req.authority, req.path)
        };
        if !in_scope {
            self.outcome = Outcome::OutOfScope;
            return continue_untouched();
        }
        // A `model` query parameter names the model too (OpenAI's Realtime API; LiteLLM reads it
        // before the body's): it is checked like any other way of naming one.
        let query = match query_model(req.path) {
            Ok(q) => q,
            Err(_) => {
                return HeadersAction::Reject(
                    self.conflict("The query string names `model` more than once; send it once."),
                )
            }
        };
        let path_model = model_from_path(req.path);
        if let (Some(p), Some(q)) = (path_model.as_deref(), query.as_deref()) {
            if p != q {
                return HeadersAction::Reject(
                    self.conflict("The path and the `model` query parameter name different models; send one."),
                );
            }
        }
        let bodiless = !has_inspectable_body(req.method) || req.end_of_stream || req.content_length == Some(0);
        let from_headers = path_model.or_else(|| query.as_deref().filter(|_| bodiless).map(std::borrow::Cow::Borrowed));
        if let Some(name) = from_headers {
            self.inspected = true;
            return match self.route(cfg, &name, true) {
                Ok(()) => HeadersAction::Continue {
                    set: self.route_headers(cfg),
                    remove: Vec::new(),
                },
                Err(r) => HeadersAction::Reject(r),
            };
        }
        if !has_inspectable_body(req.method) {
            self.outcome = Outcome::NoModel;
            return continue_untouched();
        }
        if req.end_of_stream || req.content_length == Some(0) {
            // A POST without a body: there is no model to find.
            self.inspected = cfg.on_missing_model == Policy::Reject;
            return match self.missing(cfg) {
                BodyAction::Reject(r) => HeadersAction::Reject(r),
                _ => continue_untouched(),
            };
        }
        if let Some(len) = req.content_length {
            if len > cfg.max_body_bytes {
                self.inspected = true;
                return match self.oversize(cfg, len) {
                    Some(r) => HeadersAction::Reject(r),
                    None => continue_untouched(),
                };
            }
        }
        self.outcome = Outcome::Pending;
        self.inspected = true;
        self.query_model = query;
        self.takes_stream_options = takes_stream_options(req.path);
        // The whole body is read and checked whenever its model is used: a backend must never
        // see a body the filter understood differently (a repeated key, trailing bytes). Bodies
        // are read whatever their label: many servers parse JSON whatever the label says, and
        // `curl -d` labels JSON `application/x-www-form-urlencoded`. A label must not be a way
        // around the filter; a `multipart/*` body is read as a form when it is one.
        self.scanner = Some(BodyScan::for_label(req.content_type));
        if cfg.body_routing && can_hold {
            self.held = true;
            return HeadersAction::Hold;
        }
        // The route is chosen from the headers; the body still drives rejection, admission,
        // rewriting and telemetry. A rewrite may change the length, so it must not be announced.
        let remove = if cfg.may_rewrite_body() {
            vec![CONTENT_LENGTH]
        } else {
            Vec::new()
        };
        HeadersAction::Continue {
            set: Vec::new(),
            remove,
        }
    }

    /// Feed the body bytes that arrived since the last call.
    pub fn on_request_body(&mut self, cfg: &Config, chunk: &[u8], end_of_stream: bool) -> BodyAction {
        let Some(scanner) = self.scanner.as_mut() else {
            return BodyAction::Continue {
                set: Vec::new(),
                edits: Vec::new(),
            };
        };
        self.seen += chunk.len() as u64;
        if self.seen > cfg.max_body_bytes {
            let seen = self.seen;
            return match self.oversize(cfg, seen) {
                Some(r) => BodyAction::Reject(r),
                None => self.release(),
            };
        }
        if let Err(e) = feed(scanner, chunk, end_of_stream) {
            return match e {
                Unreadable::Empty if cfg.on_missing_model == Policy::Reject => {
                    self.scanner = None;
                    self.missing(cfg)
                }
                Unreadable::Empty => self.invalid(cfg, "The request body is empty.".to_string()),
                Unreadable::Json(message) => self.invalid(cfg, message),
                Unreadable::Form(message) => self.invalid_form(cfg, message),
            };
        }
        if !end_of_stream {
            return BodyAction::NeedMore;
        }
        self.decide_from_body(cfg)
    }

    /// The matched model's index in the configuration.
    pub fn model_index(&self) -> Option<usize> {
        match self.outcome {
            Outcome::Matched { model, .. } => Some(model),
            _ => None,
        }
    }

    /// The request is refused after all (access control, rate limit, a body it will not pass):
    /// a matched one keeps its model.
    pub fn deny(&mut self, reason: RejectReason) {
        self.outcome = match self.outcome {
            Outcome::Matched { model, .. } | Outcome::Denied { model, .. } => Outcome::Denied { model, reason },
            _ => Outcome::Rejected(reason),
        };
        self.held = false;
        self.scanner = None;
    }

    /// The safety net gave up waiting for the body: let the request go on, unrouted.
    pub fn release_held(&mut self) {
        self.held = false;
        self.scanner = None;
        self.outcome = Outcome::Unread(Unread::HoldReleased);
    }

    fn decide_from_body(&mut self, cfg: &Config) -> BodyAction {
        match self.scanner.take() {
            Some(BodyScan::Json(scanner)) => self.decide_from_json(cfg, scanner),
            Some(BodyScan::Form(scanner)) => self.decide_from_form(cfg, scanner),
            Some(BodyScan::Sniff { .. }) | None => self.release(),
        }
    }

    fn duplicate_model(&mut self, message: &str) -> BodyAction {
        BodyAction::Reject(self.conflict(message))
    }

    /// A form upload's `model` field: routed, admitted and rewritten as a JSON body's `model` is.
    #[inline(never)]
    fn decide_from_form(&mut self, cfg: &Config, scanner: FormScanner) -> BodyAction {
        self.form = true;
        let found = scanner.found();
        if found.len() > 1 {
            return self.duplicate_model("The form has more than one `model` field; send exactly one.");
        }
        let name = match found.first() {
            None => return self.missing(cfg),
            Some(f) if f.truncated => String::from_utf8_lossy(&f.raw).into_owned(),
            Some(f) => match std::str::from_utf8(&f.raw) {
                Ok(s) => s.to_owned(),
                Err(_) => return self.invalid_form(cfg, "The form's `model` field is not UTF-8.".to_string()),
            },
        };
        if let Some(stop) = self.body_model(cfg, &name) {
            return stop;
        }
        let mut edits = Vec::new();
        if let (Some(up), Some(f)) = (self.upstream_name(cfg), found.first()) {
            {
                edits.push(Edit {
                    start: f.start as usize,
                    len: (f.end - f.start) as usize,
                    bytes: up.as_bytes().to_vec(),
                });
            }
        }
        self.let_go(cfg, edits)
    }

    fn decide_from_json(&mut self, cfg: &Config, scanner: TopLevelScanner) -> BodyAction {
        if scanner.count(K_MODEL) > 1 {
            return self.duplicate_model("The request body has more than one top-level `model` key; send exactly one.");
        }
        self.streaming = scanner.all(K_STREAM).any(|f| truthy(&f.raw));
        self.max_tokens = K_MAX_TOKENS
            .iter()
            .flat_map(|&k| scanner.all(k))
            .filter_map(token_count)
            .max();
        let name = match scanner.get(K_MODEL) {
            None => None,
            Some(f) if f.truncated => Some(String::from_utf8_lossy(&f.raw).into_owned()),
            Some(f) if f.raw.first() == Some(&b'"') => match crate::json::unescape(&f.raw) {
                Ok(s) => Some(s),
                Err(e) => {
                    return self.invalid(cfg, format!("The `model` field is not a valid JSON string: {e}."));
                }
            },
            // `null`, a number, an object: there is no model name to route on.
            Some(_) => None,
        };
        let Some(name) = name else {
            return self.missing(cfg);
        };
        if let Some(stop) = self.body_model(cfg, &name) {
            return stop;
        }
        if let Some(stop) = self.repeated_limit(&scanner) {
            return stop;
        }
        let mut edits = Vec::new();
        if let Some((model, _)) = self.matched(cfg) {
            if let (Some(up), Some(f)) = (self.upstream_name(cfg), scanner.get(K_MODEL)) {
                let bytes = crate::json::quote(up).into_bytes();
                edits.push(Edit {
                    start: f.start as usize,
                    len: (f.end - f.start) as usize,
                    bytes,
                });
            }
            let counts_tokens =
                cfg.inject_stream_usage || model.limits.as_ref().is_some_and(|l| l.tokens_per_minute.is_some());
            if counts_tokens && self.streaming && self.takes_stream_options {
                match self.force_stream_usage(&scanner) {
                    Ok(Some(e)) => edits.push(e),
                    Ok(None) => {}
                    Err(r) => {
                        self.deny(r.reason);
                        return BodyAction::Reject(r);
                    }
                }
            }
        }
        self.let_go(cfg, edits)
    }

    /// A token limit key given twice: refused (the estimate would read one, the backend maybe the
    /// other).
    #[inline(never)]
    fn repeated_limit(&mut self, scanner: &TopLevelScanner) -> Option<BodyAction> {
        if !K_MAX_TOKENS.iter().any(|&k| scanner.count(k) > 1) {
            return None;
        }
        self.deny(RejectReason::InvalidJson);
        Some(BodyAction::Reject(Reject::new(
            RejectReason::InvalidJson,
            "The request body repeats `max_tokens`, `max_completion_tokens` or `max_output_tokens`; send each once.",
        )))
    }

    /// The model the body named: a blank one is missing when a model is required; otherwise it
    /// is resolved and routed. `Some` when that ends the request's reading (a refusal).
    fn body_model(&mut self, cfg: &Config, name: &str) -> Option<BodyAction> {
        if self.query_model.as_deref().is_some_and(|q| q != name) {
            return Some(self.duplicate_model("The body's `model` and the `model` query parameter differ; send one."));
        }
        if name.trim().is_empty() && cfg.on_missing_model == Policy::Reject {
            return Some(self.missing(cfg));
        }
        // An empty name is not "no model": it is a name no model has (never the default route).
        self.from_body = true;
        self.route(cfg, name, self.held).err().map(BodyAction::Reject)
    }

    /// The request goes on with `edits` to its body; held headers get the route (and the new
    /// length).
    fn let_go(&mut self, cfg: &Config, edits: Vec<Edit>) -> BodyAction {
        let mut set = Vec::new();
        if self.held {
            set = self.route_headers(cfg);
            let delta: i64 = edits.iter().map(|e| e.bytes.len() as i64 - e.len as i64).sum();
            if let (Some(len), true) = (self.content_length, delta != 0) {
                // Kept last: the exchange sets it only once the body edit has been accepted.
                set.push((CONTENT_LENGTH.to_string(), (len as i64 + delta).to_string()));
            }
            self.held = false;
        }
        BodyAction::Continue { set, edits }
    }

    /// The edit that makes a stream report its usage (`stream_options.include_usage: true`),
    /// whatever the client asked: token accounting must not depend on the client's goodwill.
    fn force_stream_usage(&self, scanner: &TopLevelScanner) -> Result<Option<Edit>, Reject> {
        if scanner.count(K_STREAM) > 1 || scanner.count(K_STREAM_OPTIONS) > 1 {
            return Err(Reject::new(
                RejectReason::InvalidJson,
                "The request body repeats the top-level key `stream` or `stream_options`; send each once.",
            ));
        }
        let Some(f) = scanner.get(K_STREAM_OPTIONS) else {
            return Ok(scanner.top_open().map(|open| Edit {
                start: open as usize + 1,
                len: 0,
                bytes: br#""stream_options":{"include_usage":true},"#.to_vec(),
            }));
        };
        let mut members = match crate::json::parse(&f.raw) {
            Ok(Json::Obj(m)) if !f.truncated => m,
            _ => Vec::new(),
        };
        // A repeated key counts as its last value, as Python's and most parsers read it.
        let last = members.iter().rev().find(|(k, _)| k == "include_usage");
        if last.is_some_and(|(_, v)| *v == Json::Bool(true)) {
            return Ok(None);
        }
        members.retain(|(k, _)| k != "include_usage");
        members.push(("include_usage".into(), Json::Bool(true)));
        Ok(Some(Edit {
            start: f.start as usize,
            len: (f.end - f.start) as usize,
            bytes: Json::Obj(members).to_string().into_bytes(),
        }))
    }

    /// Resolves `name` and, when `routes` (the filter's choice selects the route), picks a
    /// destination; or applies `onUnknownModel`.
    fn route(&mut self, cfg: &Config, name: &str, routes: bool) -> Result<(), Reject> {
        self.requested = Some(name.to_string());
        match cfg.resolve_index(name).and_then(|i| Some((i, cfg.models.get(i)?))) {
            Some((model, m)) => {
                self.asked = Some(model);
                let mut chosen = (model, routes.then(|| pick(m, self.pick)));
                if let (true, Some((table, now))) = (routes, &self.health) {
                    match choose(cfg, table, *now, model, self.pick, self.from_body) {
                        Choice::Go {
                            model,
                            destination,
                            trial,
                            via,
                        } => {
                            chosen = (model, Some(destination));
                            (self.via, self.trial) = (via, trial);
                        }
                        Choice::Unavailable { until_ms } => {
                            self.outcome = Outcome::Denied {
                                model,
                                reason: RejectReason::ModelUnavailable,
                            };
                            return Err(unavailable(name, until_ms.saturating_sub(*now)));
                        }
                    }
                }
                self.outcome = Outcome::Matched {
                    model: chosen.0,
                    destination: chosen.1,
                };
                Ok(())
            }
            None if cfg.on_unknown_model == Policy::Reject => {
                self.outcome = Outcome::Rejected(RejectReason::ModelNotFound);
                Err(Reject::new(
                    RejectReason::ModelNotFound,
                    format!("The model `{}` does not exist.", shorten(name)),
                ))
            }
            None => {
                self.outcome = Outcome::Unknown(name.to_string());
                Ok(())
            }
        }
    }

    fn route_headers(&self, cfg: &Config) -> Vec<(String, String)> {
        use crate::config::{InferenceModelHeader, INFERENCE_MODEL_HEADER};
        let Some((m, d)) = self.routed(cfg) else {
            return Vec::new();
        };
        let mut set = vec![
            (cfg.route_header.clone(), d.name.clone()),
            (cfg.model_header.clone(), m.name.clone()),
        ];
        let inference = match cfg.inference_model_header {
            InferenceModelHeader::None => None,
            InferenceModelHeader::Canonical => Some(&m.name),
            InferenceModelHeader::Upstream => Some(m.upstream_model.as_ref().unwrap_or(&m.name)),
        };
        if let Some(v) = inference {
            set.push((INFERENCE_MODEL_HEADER.to_string(), v.clone()));
        }
        set
    }

    /// Two names of the model that differ: which one a server uses is its choice, so neither is.
    fn conflict(&mut self, message: &str) -> Reject {
        self.inspected = true;
        self.outcome = Outcome::Rejected(RejectReason::DuplicateModel);
        Reject::new(RejectReason::DuplicateModel, message)
    }

    fn missing(&mut self, cfg: &Config) -> BodyAction {
        // The body names none: the query's model is the model (as the server will read it).
        if let Some(name) = self.query_model.take() {
            return match self.route(cfg, &name, self.held) {
                Ok(()) => self.let_go(cfg, Vec::new()),
                Err(r) => BodyAction::Reject(r),
            };
        }
        if cfg.on_missing_model == Policy::Reject {
            self.outcome = Outcome::Rejected(RejectReason::ModelRequired);
            return BodyAction::Reject(Reject::new(
                RejectReason::ModelRequired,
                "The request has no `model`; one is required.",
            ));
        }
        self.outcome = Outcome::NoModel;
        self.finish_unrouted()
    }

    fn invalid(&mut self, cfg: &Config, message: String) -> BodyAction {
        self.unreadable(cfg, RejectReason::InvalidJson, Unread::InvalidJson, message)
    }

    fn invalid_form(&mut self, cfg: &Config, message: String) -> BodyAction {
        self.unreadable(cfg, RejectReason::InvalidForm, Unread::InvalidForm, message)
    }

    fn unreadable(&mut self, cfg: &Config, reason: RejectReason, unread: Unread, message: String) -> BodyAction {
        self.scanner = None;
        if cfg.on_invalid_body == Policy::Reject {
            self.outcome = Outcome::Rejected(reason);
            return BodyAction::Reject(Reject::new(reason, message));
        }
        self.outcome = Outcome::Unread(unread);
        self.finish_unrouted()
    }

    fn oversize(&mut self, cfg: &Config, len: u64) -> Option<Reject> {
        self.scanner = None;
        if cfg.on_oversize == Policy::Reject {
            self.outcome = Outcome::Rejected(RejectReason::BodyTooLarge);
            return Some(Reject::new(
                RejectReason::BodyTooLarge,
                format!(
                    "The request body is larger than the {} bytes this route reads ({len} bytes or more).",
                    cfg.max_body_bytes
                ),
            ));
        }
        self.outcome = Outcome::Unread(Unread::TooLarge);
        None
    }

    fn release(&mut self) -> BodyAction {
        self.scanner = None;
        self.finish_unrouted()
    }

    fn finish_unrouted(&mut self) -> BodyAction {
        self.held = false;
        BodyAction::Continue {
            set: Vec::new(),
            edits: Vec::new(),
        }
    }
}

pub const CONTENT_LENGTH: &str = "content-length";

/// 503 `model_unavailable`: every destination and fallback is open; `retry-after` when the
/// first probation ends.
fn unavailable(name: &str, wait_ms: u64) -> Reject {
    let mut r = Reject::new(
        RejectReason::ModelUnavailable,
        "Every backend of the model `".to_string() + &shorten(name) + "` is failing; retry later.",
    );
    r.error_type = "server_error".into();
    r.headers
        .push(("retry-after".into(), wait_ms.div_ceil(1000).max(1).to_string()));
    r
}

/// Feeds a chunk (and the end, when it is the last) to the body's scanner.
fn feed(scan: &mut BodyScan, chunk: &[u8], end_of_stream: bool) -> Result<(), Unreadable> {
    if matches!(scan, BodyScan::Sniff { .. }) && !sniff(scan, chunk, end_of_stream)? {
        return Ok(());
    }
    match scan {
        BodyScan::Json(s) => {
            let mut r = s.feed(chunk);
            if end_of_stream && r.is_ok() {
                r = s.finish();
            }
            r.map_err(|e| match e.reason {
                "empty body" => Unreadable::Empty,
                _ => Unreadable::Json(format!("The request body is not valid JSON: {e}.")),
            })
        }
        BodyScan::Form(s) => feed_form(s, chunk, end_of_stream),
        BodyScan::Sniff { .. } => Ok(()),
    }
}

/// A `multipart/*` body's first byte decides how it is read: false while there is none yet.
/// (Kept out of line, apart from the JSON path.)
#[inline(never)]
fn sniff(scan: &mut BodyScan, chunk: &[u8], end_of_stream: bool) -> Result<bool, Unreadable> {
    let BodyScan::Sniff { boundary } = scan else {
        return Ok(true);
    };
    *scan = match (chunk.first(), boundary.take()) {
        (Some(b'-'), Some(b)) => BodyScan::Form(FormScanner::new(&b, FORM_MODEL, CAPTURE_LIMIT)),
        (Some(b'-'), None) => {
            return Err(Unreadable::Form(
                "The request body is a multipart form, but its content type names no valid boundary.".into(),
            ))
        }
        (Some(_), _) => BodyScan::json(),
        // No byte at all: an empty body, as JSON's scanner reports it.
        (None, _) if end_of_stream => BodyScan::json(),
        (None, b) => {
            *boundary = b;
            return Ok(false);
        }
    };
    Ok(true)
}

#[inline(never)]
fn feed_form(s: &mut FormScanner, chunk: &[u8], end_of_stream: bool) -> Result<(), Unreadable> {
    let mut r = s.feed(chunk);
    if end_of_stream && r.is_ok() {
        r = s.finish();
    }
    r.map_err(|e| Unreadable::Form(format!("The request body is an {e}.")))
}

/// The body with `edits` applied. Envoy can only replace a buffered body whole, so the glue
/// writes this back over the entire buffer. Edits out of range are skipped.
pub fn apply_edits(body: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = body.to_vec();
    // Last offset first, so earlier offsets stay valid.
    let mut sorted: Vec<&Edit> = edits.iter().collect();
    sorted.sort_by_key(|e| std::cmp::Reverse(e.start));
    for e in sorted {
        if e.start + e.len <= out.len() {
            out.splice(e.start..e.start + e.len, e.bytes.iter().copied());
        }
    }
    out
}

fn continue_untouched() -> HeadersAction {
    HeadersAction::Continue {
        set: Vec::new(),
        remove: Vec::new(),
    }
}

/// Client-sent names go into error messages; a huge one is cut.
fn shorten(name: &str) -> String {
    if name.len() <= 128 {
        return name.to_string();
    }
    let mut end = 128;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"{
      "stickyHeader": "x-user-id",
      "models": [
        {"name": "llama-3-8b", "aliases": ["gpt-3.5-turbo"],
         "upstreamModel": "meta-llama/Meta-Llama-3-8B-Instruct",
         "destinations": [{"name": "llama-v1", "weight": 90}, {"name": "llama-v2", "weight": 10}]},
        {"name": "gpt-4o", "destinations": [{"name": "openai"}]},
        {"name": "claude-sonnet", "destinations": [{"name": "anthropic"}]},
        {"name": "resnet", "destinations": [{"name": "triton"}]},
        {"name": "mnist", "destinations": [{"name": "tfserving"}]},
        {"name": "gpt4o-prod", "destinations": [{"name": "azure"}]},
        {"name": "bge-small", "destinations": [{"name": "embedder"}]}
      ]}"#;

    fn cfg_with(extra: &str) -> Config {
        let json = CFG.replacen('{', &format!("{{{extra}"), 1);
        Config::from_json(json.as_bytes()).unwrap()
    }

    fn post<'a>(path: &'a str, body_len: usize) -> RequestInfo<'a> {
        RequestInfo {
            method: "POST",
            path,
            content_type: Some("application/json"),
            content_length: Some(body_len as u64),
            ..Default::default()
        }
    }

    /// The headers of a held request for `gpt-3.5-turbo` routed to the 10 % destination, its
    /// body rewritten to `len` bytes.
    fn canary_headers(len: usize) -> Vec<(String, String)> {
        vec![
            ("x-ai-route".to_string(), "llama-v2".to_string()),
            ("x-ai-model".to_string(), "llama-3-8b".to_string()),
            ("content-length".to_string(), len.to_string()),
        ]
    }

    /// Runs a whole request through the flow in one body chunk (or with the headers alone).
    fn run(
        cfg: &Config,
        req: &RequestInfo,
        body: &[u8],
        can_hold: bool,
    ) -> (RequestFlow, HeadersAction, Option<BodyAction>) {
        let mut f = RequestFlow::default();
        let h = f.on_request_headers(cfg, req, can_hold);
        let b = f.reading_body().then(|| f.on_request_body(cfg, body, true));
        (f, h, b)
    }

    fn routed_name(cfg: &Config, f: &RequestFlow) -> Option<(String, String)> {
        f.routed(cfg).map(|(m, d)| (m.name.clone(), d.name.clone()))
    }

    #[test]
    fn every_api_shape() {
        let cfg = cfg_with(r#""bodyRouting": true,"#);
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                "/v1/chat/completions",
                r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
                Some("gpt-4o"),
            ),
            (
                "/v1/completions",
                r#"{"prompt":"x","model":"gpt-3.5-turbo"}"#,
                Some("llama-3-8b"),
            ),
            (
                "/v1/embeddings",
                r#"{"input":["a","b"],"model":"bge-small"}"#,
                Some("bge-small"),
            ),
            (
                "/v1/responses",
                r#"{"model":"gpt-4o","input":"hi","stream":true}"#,
                Some("gpt-4o"),
            ),
            (
                "/v1/messages",
                r#"{"max_tokens":5,"model":"claude-sonnet","messages":[]}"#,
                Some("claude-sonnet"),
            ),
            (
                "/v2/models/resnet/infer",
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#,
                Some("resnet"),
            ),
            ("/v2/models/resnet/versions/2/infer", "", Some("resnet")),
            ("/v1/models/mnist:predict", r#"{"instances":[[1,2]]}"#, Some("mnist")),
            (
                "/openai/deployments/gpt4o-prod/chat/completions?api-version=1",
                r#"{"messages":[]}"#,
                Some("gpt4o-prod"),
            ),
            (
                "/v1/chat/completions",
                r#"{"messages":[{"model":"gpt-4o"}],"tools":[{"model":"x"}]}"#,
                None,
            ),
            (
                "/v1/chat/completions",
                r#"{"mod\u0065l":"gpt\u002d4o"}"#,
                Some("gpt-4o"),
            ),
            ("/v1/chat/completions", r#"{"model":null}"#, None),
            ("/v1/chat/completions", r#"{"model":""}"#, None),
            ("/v1/chat/completions", r#"[{"model":"gpt-4o"}]"#, None),
        ];
        for (path, body, want) in cases {
            let (f, _, b) = run(&cfg, &post(path, body.len()), body.as_bytes(), true);
            assert_eq!(
                routed_name(&cfg, &f).map(|x| x.0).as_deref(),
                *want,
                "{path} {body} -> {b:?}"
            );
        }
    }

    #[test]
    fn held_request_gets_route_headers_and_rewrite_with_fixed_length() {
        let cfg = cfg_with(r#""bodyRouting": true,"#);
        let body = br#"{"model": "gpt-3.5-turbo", "messages": [{"role":"user","content":"hi \"model\""}]}"#;
        let mut req = post("/v1/chat/completions", body.len());
        req.random = 95; // 95 % 100 lands on the 10% destination
        let (f, h, b) = run(&cfg, &req, body, true);
        assert_eq!(h, HeadersAction::Hold);
        let Some(BodyAction::Continue { set, edits }) = b else {
            panic!("{b:?}")
        };
        let out = apply_edits(body, &edits);
        let want = br#"{"model": "meta-llama/Meta-Llama-3-8B-Instruct", "messages": [{"role":"user","content":"hi \"model\""}]}"#;
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(want));
        assert_eq!(set, canary_headers(want.len()));
        assert!(!f.held());
    }

    #[test]
    fn the_inference_pool_header_names_the_canonical_or_the_upstream_model() {
        let body = br#"{"model":"gpt-3.5-turbo"}"#;
        for (mode, want) in [
            ("canonical", "llama-3-8b"),
            ("upstream", "meta-llama/Meta-Llama-3-8B-Instruct"),
        ] {
            let cfg = cfg_with(&format!(r#""inferenceModelHeader":"{mode}","#));
            let (_, _, b) = run(&cfg, &post("/v1/chat/completions", body.len()), body, true);
            let Some(BodyAction::Continue { set, .. }) = b else {
                panic!()
            };
            assert!(
                set.contains(&("x-gateway-model-name".to_string(), want.to_string())),
                "{set:?}"
            );
        }
    }

    #[test]
    fn path_model_routes_from_headers() {
        let cfg = cfg_with("");
        let mut f = RequestFlow::default();
        let h = f.on_request_headers(&cfg, &post("/v2/models/resnet/infer", 10), true);
        assert_eq!(
            h,
            HeadersAction::Continue {
                set: vec![
                    ("x-ai-route".into(), "triton".into()),
                    ("x-ai-model".into(), "resnet".into())
                ],
                remove: vec![]
            }
        );
        assert!(!f.reading_body());
    }

    #[test]
    fn edits_apply_in_any_order_and_skip_out_of_range() {
        let e = |start, len, b: &str| Edit {
            start,
            len,
            bytes: b.as_bytes().to_vec(),
        };
        let out = apply_edits(
            b"{\"model\":\"a\"}",
            &[e(1, 0, "X,"), e(9, 3, "\"bbb\""), e(99, 1, "z")],
        );
        assert_eq!(out, b"{X,\"model\":\"bbb\"}");
    }

    #[test]
    fn errors_follow_the_policies() {
        let reject_all = cfg_with(
            r#""onUnknownModel":"reject","onMissingModel":"reject","onInvalidBody":"reject","onOversize":"reject","maxBodyBytes":64,"#,
        );
        let pass_all = cfg_with(
            r#""onUnknownModel":"passthrough","onMissingModel":"passthrough","onInvalidBody":"passthrough","onOversize":"passthrough","maxBodyBytes":64,"#,
        );
        let big = format!(r#"{{"model":"gpt-4o","x":"{}"}}"#, "a".repeat(100));
        let cases: &[(&str, &str, RejectReason, Outcome)] = &[
            (
                "/v1/chat/completions",
                r#"{"model":"nope"}"#,
                RejectReason::ModelNotFound,
                Outcome::Unknown("nope".into()),
            ),
            (
                "/v2/models/nope/infer",
                "{}",
                RejectReason::ModelNotFound,
                Outcome::Unknown("nope".into()),
            ),
            (
                "/v1/chat/completions",
                r#"{"messages":[}"#,
                RejectReason::InvalidJson,
                Outcome::Unread(Unread::InvalidJson),
            ),
            (
                "/v1/chat/completions",
                r#"{"model":"gpt-4o"#,
                RejectReason::InvalidJson,
                Outcome::Unread(Unread::InvalidJson),
            ),
            (
                "/v1/chat/completions",
                "\u{0}\u{1}junk",
                RejectReason::InvalidJson,
                Outcome::Unread(Unread::InvalidJson),
            ),
            (
                "/v1/chat/completions",
                r#"{"messages":[]}"#,
                RejectReason::ModelRequired,
                Outcome::NoModel,
            ),
            (
                "/v1/chat/completions",
                &big,
                RejectReason::BodyTooLarge,
                Outcome::Unread(Unread::TooLarge),
            ),
        ];
        for (path, body, reason, passed) in cases {
            for held in [true, false] {
                let (f, h, b) = run(&reject_all, &post(path, body.len()), body.as_bytes(), held);
                let rejected = match (&h, &b) {
                    (HeadersAction::Reject(r), _) | (_, Some(BodyAction::Reject(r))) => r.clone(),
                    _ => panic!("{path} {body}: expected a rejection, got {h:?} {b:?}"),
                };
                assert_eq!(rejected.reason, *reason, "{body}");
                assert_eq!(f.outcome(), &Outcome::Rejected(*reason));
                let v: serde_json::Value = serde_json::from_slice(&rejected.body()).unwrap();
                assert_eq!(v["error"]["code"], reason.code());

                let (f, h, b) = run(&pass_all, &post(path, body.len()), body.as_bytes(), held);
                assert!(!matches!(h, HeadersAction::Reject(_)), "{h:?}");
                assert!(
                    !matches!(b, Some(BodyAction::Reject(_)) | Some(BodyAction::NeedMore)),
                    "{b:?}"
                );
                assert_eq!(f.outcome(), passed, "{body}");
            }
        }
    }

    /// The scan stops at the model: what comes after it is the backend's to judge.
    #[test]
    fn body_after_the_model_is_checked_too() {
        let cfg = cfg_with(r#""bodyRouting": true,"#);
        for body in [
            &br#"{"model":"gpt-4o","messages":[}"#[..],
            br#"{"model":"gpt-4o","messages": ["#,
            br#"{"model":"gpt-4o"} trailing"#,
            br#"{"model":"gpt-4o"}{"model":"llama-3-8b"}"#,
            b"{\"model\":\"gpt-4o\",\"messages\":\"a\tb\"}",
        ] {
            let (f, _, b) = run(&cfg, &post("/v1/chat/completions", body.len()), body, true);
            assert!(
                matches!(&b, Some(BodyAction::Reject(r)) if r.reason == RejectReason::InvalidJson),
                "{}: {b:?}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(f.outcome(), &Outcome::Rejected(RejectReason::InvalidJson));
        }
    }

    #[test]
    fn a_model_in_the_query_is_checked_like_any_other() {
        let cfg = cfg_with(r#""bodyRouting": true,"#);
        // OpenAI's Realtime API: a WebSocket GET, the model in the query.
        let get = RequestInfo {
            method: "GET",
            path: "/v1/realtime?model=gpt%2D4o",
            end_of_stream: true,
            ..Default::default()
        };
        let (f, h, _) = run(&cfg, &get, b"", true);
        assert!(matches!(h, HeadersAction::Continue { .. }), "{h:?}");
        assert_eq!(routed_name(&cfg, &f), Some(("gpt-4o".into(), "openai".into())));
        // A body whose model differs from the query's (LiteLLM serves the query's): refused.
        let body = br#"{"model":"bge-small","messages":[]}"#;
        for path in [
            "/v1/chat/completions?model=gpt-4o",
            "/chat/completions?x=1&MODEL=gpt-4o",
        ] {
            let (f, _, b) = run(&cfg, &post(path, body.len()), body, true);
            assert!(
                matches!(&b, Some(BodyAction::Reject(r)) if r.reason == RejectReason::DuplicateModel),
                "{path}: {b:?}"
            );
            assert_eq!(f.outcome(), &Outcome::Rejected(RejectReason::DuplicateModel));
        }
        // The same model in both, or only in the query: that model.
        let same = br#"{"model":"gpt-4o","messages":[]}"#;
        let (f, _, _) = run(&cfg, &post("/v1/chat/completions?model=gpt-4o", same.len()), same, true);
        assert_eq!(routed_name(&cfg, &f), Some(("gpt-4o".into(), "openai".into())));
        let none = br#"{"messages":[]}"#;
        let (f, _, b) = run(&cfg, &post("/v1/chat/completions?model=gpt-4o", none.len()), none, true);
        assert!(matches!(b, Some(BodyAction::Continue { .. })), "{b:?}");
        assert_eq!(routed_name(&cfg, &f), Some(("gpt-4o".into(), "openai".into())));
        // Twice in the query, or a path model the query contradicts: refused from the headers.
        for path in [
            "/v1/realtime?model=gpt-4o&model=bge-small",
            "/v2/models/resnet/infer?model=gpt-4o",
        ] {
            let (f, h, _) = run(&cfg, &post(path, 2), b"{}", true);
            assert!(
                matches!(&h, HeadersAction::Reject(r) if r.reason == RejectReason::DuplicateModel),
                "{path}: {h:?}"
            );
            assert_eq!(f.outcome(), &Outcome::Rejected(RejectReason::DuplicateModel));
        }
    }

    #[test]
    fn a_repeated_token_limit_is_refused_and_keeps_its_model() {
        let cfg = cfg_with("");
        for body in [
            &br#"{"model":"gpt-4o","max_tokens":10,"max_tokens":100000}"#[..],
            br#"{"max_completion_tokens":1,"model":"gpt-4o","max_completion_tokens":2}"#,
            br#"{"model":"gpt-4o","max_output_tokens":1,"max_output_tokens":1}"#,
        ] {
            let (f, _, b) = run(&cfg, &post("/v1/chat/completions", body.len()), body, true);
            let Some(BodyAction::Reject(r)) = b else {
                panic!("{b:?}")
            };
            assert_eq!((r.reason, r.status()), (RejectReason::InvalidJson, 400));
            assert!(matches!(f.outcome(), Outcome::Denied { .. }), "{:?}", f.outcome());
        }
        // Different limits once each: the largest is the estimate.
        let body = br#"{"model":"gpt-4o","max_tokens":10,"max_completion_tokens":20}"#;
        let (f, _, b) = run(&cfg, &post("/v1/chat/completions", body.len()), body, true);
        assert!(matches!(b, Some(BodyAction::Continue { .. })), "{b:?}");
        assert_eq!(f.max_tokens(), Some(20));
        // A model named in the path: its body is not read, its declared length is the estimate.
        let (f, _, _) = run(&cfg, &post("/v2/models/resnet/infer", 4000), b"", true);
        assert_eq!(f.estimated_input_tokens(), 1000);
    }

    #[test]
    fn a_repeated_model_is_refused_whatever_the_spelling() {
        let cfg = cfg_with(r#""bodyRouting": true,"onInvalidBody":"passthrough","#);
        for body in [
            &br#"{"model":"llama-3-8b","messages":[],"model":"resnet"}"#[..],
            br#"{"model":"gpt-4o","mod\u0065l":"gpt-4o"}"#,
        ] {
            let (f, _, b) = run(&cfg, &post("/v1/chat/completions", body.len()), body, true);
            let Some(BodyAction::Reject(r)) = b else {
                panic!("{b:?}")
            };
            assert_eq!((r.reason, r.status()), (RejectReason::DuplicateModel, 400));
            assert_eq!(f.outcome(), &Outcome::Rejected(RejectReason::DuplicateModel));
        }
    }

    #[test]
    fn empty_model_names_never_take_the_default_route() {
        let body = br#"{"model":"  ","messages":[]}"#;
        let reject = cfg_with(r#""onMissingModel":"reject","#);
        let (_, _, b) = run(&reject, &post("/v1/chat/completions", body.len()), body, true);
        assert!(matches!(b, Some(BodyAction::Reject(r)) if r.reason == RejectReason::ModelRequired));
        let pass = cfg_with("");
        let (_, _, b) = run(&pass, &post("/v1/chat/completions", body.len()), body, true);
        assert!(matches!(b, Some(BodyAction::Reject(r)) if r.reason == RejectReason::ModelNotFound));
        let lenient = cfg_with(r#""onUnknownModel":"passthrough","#);
        let (f, _, _) = run(&lenient, &post("/v1/chat/completions", body.len()), body, true);
        assert_eq!(f.outcome(), &Outcome::Unknown("  ".into()));
    }

    #[test]
    fn without_holding_the_model_is_known_but_no_destination_is_claimed() {
        let cfg = cfg_with(r#""bodyRouting": false,"#);
        let body = br#"{"model":"gpt-3.5-turbo"}"#;
        let (f, h, b) = run(&cfg, &post("/v1/chat/completions", body.len()), body, true);
        assert!(matches!(h, HeadersAction::Continue { .. }));
        assert!(matches!(b, Some(BodyAction::Continue { ref set, .. }) if set.is_empty()));
        assert_eq!(
            f.outcome(),
            &Outcome::Matched {
                model: 0,
                destination: None
            }
        );
        assert!(f.routed(&cfg).is_none());
        assert_eq!(
            f.matched(&cfg).map(|(m, d)| (m.name.as_str(), d.is_none())),
            Some(("llama-3-8b", true))
        );
        // The same with body routing on, but a host that cannot hold right now.
        let cfg = cfg_with("");
        let (f, _, _) = run(&cfg, &post("/v1/chat/completions", body.len()), body, false);
        assert!(f.routed(&cfg).is_none());
    }

    #[test]
    fn out_of_scope_requests_are_left_alone() {
        let cfg = cfg_with(r#""onMissingModel":"reject","#);
        let body = br#"{"model":"iPhone 15","qty":1}"#;
        let (f, h, b) = run(&cfg, &post("/api/orders", body.len()), body, true);
        assert_eq!(h, continue_untouched());
        assert!(b.is_none());
        assert_eq!(f.outcome(), &Outcome::OutOfScope);
        assert!(!f.counted());
        let scoped = cfg_with(r#""scope":{"hosts":["llm.example.com"]},"#);
        let mut req = post("/v1/chat/completions", body.len());
        req.authority = "shop.example.com";
        let (f, _, _) = run(&scoped, &req, body, true);
        assert_eq!(f.outcome(), &Outcome::OutOfScope);
        req.authority = "llm.example.com:443";
        let (f, _, _) = run(&scoped, &req, body, true);
        assert!(matches!(f.outcome(), Outcome::Rejected(RejectReason::ModelNotFound)));
    }

    #[test]
    fn every_path_of_a_model_host_is_in_scope_but_its_grpc() {
        let cfg = Config::from_json(
            br#"{"onMissingModel":"reject","models":[{"name":"private","allow":["spiffe://td/ns/a/*"],
                "destinations":[{"name":"v1","host":"vllm.ai.svc.cluster.local","port":8000}]}]}"#,
        )
        .unwrap();
        let body = br#"{"model":"private","prompt":"hi"}"#;
        for (authority, path, inside) in [
            ("vllm.ai.svc.cluster.local:8000", "/v1/custom/generate", true),
            ("vllm:8000", "/reset_prefix_cache", true),
            ("shop:8000", "/v1/custom/generate", false),
        ] {
            let mut req = post(path, body.len());
            req.authority = authority;
            let (f, _, _) = run(&cfg, &req, body, true);
            assert_eq!(f.outcome() != &Outcome::OutOfScope, inside, "{authority}{path}");
        }
        let mut req = post("/inference.GRPCInferenceService/ModelInfer", 10);
        req.authority = "vllm:8001";
        req.content_type = Some("application/grpc");
        let (f, h, _) = run(&cfg, &req, b"\0\0\0\0\x05hello", true);
        assert_eq!(f.outcome(), &Outcome::OutOfScope, "gRPC is not read as JSON");
        assert_eq!(h, continue_untouched());
    }

    #[test]
    fn model_with_invalid_utf8_is_invalid_json() {
        let cfg = cfg_with(r#""bodyRouting": true,"#);
        let body = b"{\"model\":\"gpt\xff\"}";
        let (f, _, b) = run(&cfg, &post("/v1/chat/completions", body.len()), body, true);
        assert!(matches!(b, Some(BodyAction::Reject(r)) if r.reason == RejectReason::InvalidJson));
        assert_eq!(f.outcome(), &Outcome::Rejected(RejectReason::InvalidJson));
    }

    #[test]
    fn oversize_without_content_length_is_noticed_while_reading() {
        let cfg = cfg_with(r#""onOversize":"reject","maxBodyBytes":16,"bodyRouting":true,"#);
        let mut req = post("/v1/chat/completions", 0);
        req.content_length = None;
        let mut f = RequestFlow::default();
        assert_eq!(f.on_request_headers(&cfg, &req, true), HeadersAction::Hold);
        assert_eq!(f.on_request_body(&cfg, br#"{"messages":"#, false), BodyAction::NeedMore);
        assert!(
            matches!(f.on_request_body(&cfg, br#"[1,2,3,4,5]"#, false), BodyAction::Reject(r) if r.reason == RejectReason::BodyTooLarge)
        );
    }

    #[test]
    fn labels_are_no_way_around_the_filter() {
        let cfg = cfg_with("");
        let body = br#"{"model":"gpt-4o","model":"llama-3-8b"}"#;
        for ct in [
            "application/x-www-form-urlencoded",
            "text/plain",
            "application/octet-stream",
        ] {
            let req = RequestInfo {
                content_type: Some(ct),
                ..post("/v1/chat/completions", body.len())
            };
            let (f, _, _) = run(&cfg, &req, body, true);
            assert_eq!(f.outcome(), &Outcome::Rejected(RejectReason::DuplicateModel), "{ct}");
        }
    }

    /// An upload as OpenAI's Python client sends it (`audio.transcriptions.create`).
    fn upload(model: &str) -> Vec<u8> {
        format!(
            "--bb8a34\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n\
             --bb8a34\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
             Content-Type: audio/x-wav\r\n\r\nRIFF\x00\x01\r\n--bb8\r\n--bb8a34--\r\n"
        )
        .into_bytes()
    }

    fn form_post(body: &[u8]) -> RequestInfo<'static> {
        RequestInfo {
            content_type: Some("multipart/form-data; boundary=bb8a34"),
            ..post("/v1/audio/transcriptions", body.len())
        }
    }

    #[test]
    fn form_uploads_are_routed_by_their_model_field() {
        let cfg = cfg_with(r#""bodyRouting": true,"#);
        let body = upload("gpt-3.5-turbo");
        let mut req = form_post(&body);
        req.random = 95;
        let (f, h, b) = run(&cfg, &req, &body, true);
        assert_eq!(h, HeadersAction::Hold);
        let Some(BodyAction::Continue { set, edits }) = b else {
            panic!("{b:?}")
        };
        // The field's value is rewritten in place, every other byte kept.
        let want = upload("meta-llama/Meta-Llama-3-8B-Instruct");
        assert_eq!(
            String::from_utf8_lossy(&apply_edits(&body, &edits)),
            String::from_utf8_lossy(&want)
        );
        assert_eq!(set, canary_headers(want.len()));
        assert!(f.model_from_body() && f.counted());
        assert_eq!(f.estimated_input_tokens(), 0, "a file's bytes are no measure of tokens");
        // Split anywhere, the same decision.
        for cut in 0..=body.len() {
            let mut g = RequestFlow::default();
            assert_eq!(g.on_request_headers(&cfg, &req, true), HeadersAction::Hold);
            assert_eq!(
                g.on_request_body(&cfg, &body[..cut], false),
                BodyAction::NeedMore,
                "cut {cut}"
            );
            let b = g.on_request_body(&cfg, &body[cut..], true);
            assert!(
                matches!(&b, BodyAction::Continue { set: s, .. } if *s == set),
                "cut {cut}: {b:?}"
            );
        }
        // An unknown model, a repeated field, no field, a broken form: as for JSON bodies.
        let reject = cfg_with(r#""bodyRouting": true, "onMissingModel": "reject","#);
        let two = String::from_utf8(upload("gpt-4o")).unwrap().replacen(
            "--bb8a34--",
            "--bb8a34\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nllama-3-8b\r\n--bb8a34--",
            1,
        );
        let none = String::from_utf8(upload("gpt-4o"))
            .unwrap()
            .replacen("name=\"model\"", "name=\"prompt\"", 1);
        let broken = String::from_utf8(upload("gpt-4o"))
            .unwrap()
            .replacen("\r\n--bb8a34--", "", 1);
        for (body, reason, code) in [
            (upload("whisper-9"), RejectReason::ModelNotFound, "model_not_found"),
            (two.into_bytes(), RejectReason::DuplicateModel, "duplicate_model"),
            (none.into_bytes(), RejectReason::ModelRequired, "model_required"),
            (broken.into_bytes(), RejectReason::InvalidForm, "invalid_form"),
        ] {
            let (f, _, b) = run(&reject, &form_post(&body), &body, true);
            assert_eq!(f.outcome(), &Outcome::Rejected(reason));
            let Some(BodyAction::Reject(r)) = b else {
                panic!("{b:?}")
            };
            assert_eq!(r.reason.code(), code);
        }
        // Let through unrouted when the policy says so.
        let lenient = cfg_with(r#""bodyRouting": true, "onInvalidBody": "passthrough","#);
        let broken = upload("gpt-4o")[..40].to_vec();
        let (f, _, _) = run(&lenient, &form_post(&broken), &broken, true);
        assert_eq!(f.outcome(), &Outcome::Unread(Unread::InvalidForm));
    }

    #[test]
    fn a_multipart_label_is_no_way_around_the_filter() {
        let cfg = cfg_with(r#""bodyRouting": true,"#);
        // JSON sent under a multipart label (servers that parse JSON whatever the label read it).
        let body = br#"{"model":"gpt-4o","model":"llama-3-8b"}"#;
        let req = RequestInfo {
            content_type: Some("multipart/form-data; boundary=bb8a34"),
            ..post("/v1/chat/completions", body.len())
        };
        let (f, _, _) = run(&cfg, &req, body, true);
        assert_eq!(f.outcome(), &Outcome::Rejected(RejectReason::DuplicateModel));
        let body = br#" {"model":"gpt-4o"}"#;
        let (f, _, _) = run(&cfg, &req, body, true);
        assert_eq!(routed_name(&cfg, &f), Some(("gpt-4o".into(), "openai".into())));
        // A form whose label names no boundary cannot be read: refused, not let through.
        let body = upload("gpt-4o");
        for ct in ["multipart/form-data", "multipart/form-data; boundary=other"] {
            let req = RequestInfo {
                content_type: Some(ct),
                ..form_post(&body)
            };
            let (f, _, _) = run(&cfg, &req, &body, true);
            assert_eq!(f.outcome(), &Outcome::Rejected(RejectReason::InvalidForm), "{ct}");
        }
        // Nor a body that is neither: JSON's error.
        let body = b"model=gpt-4o";
        let (f, _, _) = run(&cfg, &req, body, true);
        assert_eq!(f.outcome(), &Outcome::Rejected(RejectReason::InvalidJson));
    }

    #[test]
    fn untouched_requests() {
        let cfg = cfg_with(r#""onMissingModel":"reject","bodyRouting":true,"#);
        let get = RequestInfo {
            method: "GET",
            path: "/v1/models",
            end_of_stream: true,
            ..Default::default()
        };
        let mut f = RequestFlow::default();
        let h = f.on_request_headers(&cfg, &get, true);
        assert_eq!(
            h,
            HeadersAction::Continue {
                set: vec![],
                remove: vec![]
            }
        );
        assert!(!f.reading_body());
        assert_eq!(f.outcome(), &Outcome::NoModel);
        // A POST without a body has no model: refused when one is required.
        let head_only = RequestInfo {
            end_of_stream: true,
            ..post("/v1/chat/completions", 0)
        };
        let mut f = RequestFlow::default();
        assert!(
            matches!(f.on_request_headers(&cfg, &head_only, true), HeadersAction::Reject(r) if r.reason == RejectReason::ModelRequired)
        );
        let lenient = cfg_with("");
        let mut f = RequestFlow::default();
        assert_eq!(f.on_request_headers(&lenient, &head_only, true), continue_untouched());
        // An empty body that came after the headers: the same.
        let mut f = RequestFlow::default();
        let empty = post("/v1/chat/completions", 0);
        let req = RequestInfo {
            content_length: None,
            ..empty
        };
        assert_eq!(f.on_request_headers(&cfg, &req, true), HeadersAction::Hold);
        assert!(
            matches!(f.on_request_body(&cfg, b"", true), BodyAction::Reject(r) if r.reason == RejectReason::ModelRequired)
        );
    }

    #[test]
    fn not_held_removes_content_length_when_a_rewrite_may_happen() {
        let cfg = cfg_with(r#""bodyRouting":false,"#);
        let body = br#"{"model":"gpt-3.5-turbo"}"#;
        let (_, h, b) = run(&cfg, &post("/v1/chat/completions", body.len()), body, true);
        assert_eq!(
            h,
            HeadersAction::Continue {
                set: vec![],
                remove: vec!["content-length"]
            }
        );
        let Some(BodyAction::Continue { set, edits }) = b else {
            panic!()
        };
        assert!(set.is_empty(), "headers are gone already");
        assert_eq!(edits.len(), 1);
    }

    #[test]
    fn host_that_cannot_hold_is_not_asked_to() {
        let cfg = cfg_with(r#""bodyRouting": true,"#);
        let mut f = RequestFlow::default();
        let h = f.on_request_headers(&cfg, &post("/v1/chat/completions", 20), false);
        assert!(matches!(h, HeadersAction::Continue { .. }));
        assert!(f.reading_body());
        f.release_held();
        assert_eq!(f.outcome(), &Outcome::Unread(Unread::HoldReleased));
    }

    #[test]
    fn stream_usage_injection() {
        let cfg = cfg_with(r#""injectStreamUsage": true, "bodyRouting": true,"#);
        let body = br#"{"model":"gpt-4o","messages":[],"stream":true}"#;
        let (_, _, b) = run(&cfg, &post("/v1/chat/completions", body.len()), body, true);
        let Some(BodyAction::Continue { edits, set }) = b else {
            panic!()
        };
        let out = apply_edits(body, &edits);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "gpt-4o");
        assert!(set.contains(&("content-length".to_string(), out.len().to_string())));
        // Asked for already, not streaming, or not an API that takes stream_options: left alone.
        for (path, body) in [
            (
                "/v1/chat/completions",
                &br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}"#[..],
            ),
            ("/v1/chat/completions", br#"{"model":"gpt-4o","stream":false}"#),
            ("/v1/chat/completions", br#"{"model":"gpt-4o","stream":"no"}"#),
            ("/v1/messages", br#"{"model":"gpt-4o","stream":true}"#),
            ("/v1/responses", br#"{"model":"gpt-4o","stream":true}"#),
        ] {
            let (_, _, b) = run(&cfg, &post(path, body.len()), body, true);
            assert!(
                matches!(b, Some(BodyAction::Continue { edits, .. }) if edits.is_empty()),
                "{path}"
            );
        }
        // Declined, or sent in a form a lenient parser still reads as a stream: overridden.
        for body in [
            &br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":false,"continuous_usage_stats":true}}"#[..],
            br#"{"model":"gpt-4o","stream":"true","stream_options":null}"#,
            br#"{"model":"gpt-4o","stream":1}"#,
        ] {
            let (_, _, b) = run(&cfg, &post("/v1/completions", body.len()), body, true);
            let Some(BodyAction::Continue { edits, .. }) = b else { panic!() };
            let v: serde_json::Value = serde_json::from_slice(&apply_edits(body, &edits)).unwrap();
            assert_eq!(v["stream_options"]["include_usage"], true, "{}", String::from_utf8_lossy(body));
            if v["stream_options"].get("continuous_usage_stats").is_some() {
                assert_eq!(v["stream_options"]["continuous_usage_stats"], true, "other options kept");
            }
        }
        // A token-limited model forces it without injectStreamUsage; repeated keys are refused.
        let limited = cfg_with(r#""limits":{"tokensPerMinute":1000},"#);
        let body = br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":false}}"#;
        let (f, _, b) = run(&limited, &post("/v1/chat/completions", body.len()), body, true);
        assert!(matches!(b, Some(BodyAction::Continue { edits, .. }) if edits.len() == 1));
        assert!(f.streaming());
        let body = br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"stream_options":{"include_usage":false}}"#;
        let (_, _, b) = run(&limited, &post("/v1/chat/completions", body.len()), body, true);
        assert!(matches!(b, Some(BodyAction::Reject(r)) if r.reason == RejectReason::InvalidJson));
    }

    #[test]
    fn estimates_come_from_the_request() {
        let cfg = cfg_with("");
        let body = br#"{"model":"gpt-4o","max_tokens":100,"max_completion_tokens":250.0,"max_output_tokens":"x"}"#;
        let (f, _, _) = run(&cfg, &post("/v1/chat/completions", body.len()), body, true);
        assert_eq!(f.max_tokens(), Some(250));
        assert_eq!(f.body_bytes(), body.len() as u64);
        assert!(f.model_from_body());
    }

    /// Any split of the body into two chunks gives the same decision and edits as one chunk.
    #[test]
    fn body_split_at_every_byte() {
        let cfg = cfg_with(r#""bodyRouting": true, "injectStreamUsage": true,"#);
        let bodies: &[&[u8]] = &[
            br#"{"messages":[{"role":"user","content":"\"model\":\"gpt-4o\""}],"model":"gpt-3.5-turbo","stream":true}"#,
            br#"{"model":"nope"}"#,
            br#"{"model":"gpt-4o",}"#,
            br#"{"input":"x"}"#,
        ];
        for body in bodies {
            let (_, _, whole) = run(&cfg, &post("/v1/chat/completions", body.len()), body, true);
            for cut in 0..=body.len() {
                let mut f = RequestFlow::default();
                f.on_request_headers(&cfg, &post("/v1/chat/completions", body.len()), true);
                let mut a = f.on_request_body(&cfg, &body[..cut], cut == body.len());
                if a == BodyAction::NeedMore {
                    a = f.on_request_body(&cfg, &body[cut..], true);
                }
                assert_eq!(Some(a), whole, "cut {cut}");
            }
        }
    }
}
