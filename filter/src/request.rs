//! What the filter does with one request, as a host-free state machine: the glue hands it the
//! headers and body chunks and carries out the decisions it returns.

use crate::config::{Config, Model, Policy};
use crate::json_scan::TopLevelScanner;
use crate::path_model::model_from_path;
use crate::reply::{Reject, RejectReason};
use crate::routing::{pick, Pick};

/// The parts of the request headers the flow looks at.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo<'a> {
    pub method: &'a str,
    pub path: &'a str,
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
    /// No model to be seen: a GET, a non-JSON body, no body, or a JSON body without a model
    /// that was let through.
    NoModel,
    /// Routed to `config.models[model].destinations[destination]`.
    Routed {
        model: usize,
        destination: usize,
    },
    /// A model the configuration does not know, let through (`onUnknownModel: passthrough`).
    Unknown(String),
    /// The body could not be read (invalid JSON, too large, or the host would not hold the
    /// headers) and the request was let through unrouted.
    Unread(Unread),
    Rejected(RejectReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unread {
    InvalidJson,
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
    /// Keep buffering: the model is not known yet.
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
const KEYS: &[&str] = &["model", "stream", "stream_options"];
const K_MODEL: usize = 0;
const K_STREAM: usize = 1;
const K_STREAM_OPTIONS: usize = 2;
/// Model names beyond this cannot match a configured model (names are at most 256 bytes).
const CAPTURE_LIMIT: usize = 1024;

/// Per-request state.
#[derive(Debug)]
pub struct RequestFlow {
    outcome: Outcome,
    scanner: Option<TopLevelScanner>,
    held: bool,
    pick: Pick,
    content_length: Option<u64>,
    seen: u64,
    /// Read the whole body (stream fields), not just up to the model.
    full_scan: bool,
    /// The body asked for a stream (`"stream": true`).
    streaming: bool,
    /// The filter looked for a model in this request (path or JSON body).
    inspected: bool,
    /// The model name as the client sent it.
    requested: Option<String>,
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
            full_scan: false,
            streaming: false,
            inspected: false,
            requested: None,
        }
    }
}

/// Methods whose JSON body is read for a model. GET and the rest pass through untouched.
fn has_inspectable_body(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH")
}

/// JSON or unlabelled bodies are read; forms, multipart and binary are not.
fn is_json_content_type(ct: Option<&str>) -> bool {
    let Some(ct) = ct else { return true };
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || mime.ends_with("+json") || mime.is_empty()
}

impl RequestFlow {
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// The model name as the client sent it (path or body), once known.
    pub fn requested_model(&self) -> Option<&str> {
        self.requested.as_deref()
    }

    /// The filter looked for a model in this request: it belongs in the per-model metrics.
    pub fn counted(&self) -> bool {
        self.inspected
    }

    /// True while body chunks are wanted.
    pub fn reading_body(&self) -> bool {
        self.scanner.is_some()
    }

    /// True while the request headers are held waiting for the body.
    pub fn held(&self) -> bool {
        self.held
    }

    /// The routed model and destination.
    pub fn routed<'c>(&self, cfg: &'c Config) -> Option<(&'c Model, &'c crate::config::Destination)> {
        match self.outcome {
            Outcome::Routed { model, destination } => {
                let m = cfg.models.get(model)?;
                Some((m, m.destinations.get(destination)?))
            }
            _ => None,
        }
    }

    /// `can_hold`: the host is not known to be unable to hold headers (see the safety net).
    pub fn on_request_headers(&mut self, cfg: &Config, req: &RequestInfo, can_hold: bool) -> HeadersAction {
        self.pick = Pick::new(req.sticky, req.random);
        self.content_length = req.content_length;
        if let Some(name) = model_from_path(req.path) {
            self.inspected = true;
            return match self.route(cfg, &name) {
                Ok(()) => HeadersAction::Continue {
                    set: self.route_headers(cfg),
                    remove: Vec::new(),
                },
                Err(r) => HeadersAction::Reject(r),
            };
        }
        if req.end_of_stream || !has_inspectable_body(req.method) || !is_json_content_type(req.content_type) {
            self.outcome = Outcome::NoModel;
            return continue_untouched();
        }
        if let Some(len) = req.content_length {
            if len == 0 {
                self.outcome = Outcome::NoModel;
                return continue_untouched();
            }
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
        self.full_scan = cfg.inject_stream_usage;
        let enough = if self.full_scan { KEYS.len() } else { 1 };
        self.scanner = Some(TopLevelScanner::new(KEYS, CAPTURE_LIMIT).done_after(enough));
        if cfg.body_routing && can_hold {
            self.held = true;
            return HeadersAction::Hold;
        }
        // The route is chosen from the headers; the body still drives rejection, rewriting and
        // telemetry. A rewrite may change the length, so the length must not be announced.
        let remove = if cfg.may_rewrite_body() {
            vec!["content-length"]
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
        let mut result = scanner.feed(chunk);
        // Without a stream-usage rewrite, the model is all that is needed (see `done_after`).
        let enough = result.is_ok() && scanner.all_found();
        if end_of_stream && result.is_ok() && !enough {
            result = scanner.finish();
        }
        if let Err(e) = result {
            return self.invalid(cfg, format!("The request body is not valid JSON: {e}."));
        }
        if !(enough || end_of_stream) {
            return BodyAction::NeedMore;
        }
        self.decide_from_body(cfg)
    }

    /// The routed request was refused after all (access control, rate limit).
    pub fn deny(&mut self, reason: RejectReason) {
        self.outcome = Outcome::Rejected(reason);
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
        let Some(scanner) = self.scanner.take() else {
            return self.release();
        };
        self.streaming = scanner.get(K_STREAM).is_some_and(|f| f.raw == b"true");
        let name = match scanner.get(K_MODEL) {
            None => None,
            Some(f) if f.truncated => Some(String::from_utf8_lossy(&f.raw).into_owned()),
            Some(f) if f.raw.first() == Some(&b'"') => match serde_json::from_slice::<String>(&f.raw) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.scanner = Some(scanner);
                    return self.invalid(cfg, format!("The `model` field is not a valid JSON string: {e}."));
                }
            },
            // `null`, a number, an object: there is no model name to route on.
            Some(_) => None,
        };
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return self.missing(cfg);
        };
        if let Err(r) = self.route(cfg, &name) {
            return BodyAction::Reject(r);
        }
        let mut edits = Vec::new();
        if let Some((model, _)) = self.routed(cfg) {
            if let (Some(up), Some(f)) = (&model.upstream_model, scanner.get(K_MODEL)) {
                let bytes = serde_json::Value::String(up.clone()).to_string().into_bytes();
                edits.push(Edit {
                    start: f.start as usize,
                    len: (f.end - f.start) as usize,
                    bytes,
                });
            }
            if cfg.inject_stream_usage && self.streaming && scanner.get(K_STREAM_OPTIONS).is_none() {
                if let Some(open) = scanner.top_open() {
                    edits.push(Edit {
                        start: open as usize + 1,
                        len: 0,
                        bytes: br#""stream_options":{"include_usage":true},"#.to_vec(),
                    });
                }
            }
        }
        let mut set = Vec::new();
        if self.held {
            set = self.route_headers(cfg);
            let delta: i64 = edits.iter().map(|e| e.bytes.len() as i64 - e.len as i64).sum();
            if let (Some(len), true) = (self.content_length, delta != 0) {
                // Kept last: the glue sets it only once the body edit has been accepted.
                set.push((CONTENT_LENGTH.to_string(), (len as i64 + delta).to_string()));
            }
            self.held = false;
        }
        BodyAction::Continue { set, edits }
    }

    /// Resolves `name` and picks a destination, or applies `onUnknownModel`.
    fn route(&mut self, cfg: &Config, name: &str) -> Result<(), Reject> {
        self.requested = Some(name.to_string());
        match cfg.resolve_index(name).and_then(|i| Some((i, cfg.models.get(i)?))) {
            Some((model, m)) => {
                self.outcome = Outcome::Routed {
                    model,
                    destination: pick(m, self.pick),
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
        match self.routed(cfg) {
            Some((m, d)) => vec![
                (cfg.route_header.clone(), d.name.clone()),
                (cfg.model_header.clone(), m.name.clone()),
            ],
            None => Vec::new(),
        }
    }

    fn missing(&mut self, cfg: &Config) -> BodyAction {
        if cfg.on_missing_model == Policy::Reject {
            self.outcome = Outcome::Rejected(RejectReason::ModelRequired);
            return BodyAction::Reject(Reject::new(
                RejectReason::ModelRequired,
                "The request body has no `model` string; one is required.",
            ));
        }
        self.outcome = Outcome::NoModel;
        self.finish_unrouted()
    }

    fn invalid(&mut self, cfg: &Config, message: String) -> BodyAction {
        self.scanner = None;
        if cfg.on_invalid_body == Policy::Reject {
            self.outcome = Outcome::Rejected(RejectReason::InvalidJson);
            return BodyAction::Reject(Reject::new(RejectReason::InvalidJson, message));
        }
        self.outcome = Outcome::Unread(Unread::InvalidJson);
        self.finish_unrouted()
    }

    /// Applies `onOversize`: `Some` reply to reject, `None` to let it through unread.
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
        assert_eq!(
            set,
            vec![
                ("x-ai-route".to_string(), "llama-v2".to_string()),
                ("x-ai-model".to_string(), "llama-3-8b".to_string()),
                ("content-length".to_string(), want.len().to_string()),
            ]
        );
        assert!(!f.held());
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
    fn body_after_the_model_is_not_read() {
        let cfg = cfg_with(r#""bodyRouting": true,"#);
        let body = br#"{"model":"gpt-4o","messages":[}"#;
        let (f, _, b) = run(&cfg, &post("/v1/chat/completions", body.len()), body, true);
        assert!(matches!(b, Some(BodyAction::Continue { .. })));
        assert_eq!(routed_name(&cfg, &f).unwrap().0, "gpt-4o");
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
    fn untouched_requests() {
        let cfg = cfg_with(r#""onMissingModel":"reject","bodyRouting":true,"#);
        let get = RequestInfo {
            method: "GET",
            path: "/v1/models",
            end_of_stream: true,
            ..Default::default()
        };
        let form = RequestInfo {
            content_type: Some("multipart/form-data; boundary=x"),
            ..post("/v1/audio/transcriptions", 10)
        };
        let head_only = RequestInfo {
            end_of_stream: true,
            ..post("/v1/chat/completions", 0)
        };
        for req in [get, form, head_only] {
            let mut f = RequestFlow::default();
            let h = f.on_request_headers(&cfg, &req, true);
            assert_eq!(
                h,
                HeadersAction::Continue {
                    set: vec![],
                    remove: vec![]
                },
                "{req:?}"
            );
            assert!(!f.reading_body());
            assert_eq!(f.outcome(), &Outcome::NoModel);
        }
    }

    #[test]
    fn not_held_removes_content_length_when_a_rewrite_may_happen() {
        let cfg = cfg_with("");
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
        // Already asked for, or not streaming: left alone.
        for body in [
            &br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":false}}"#[..],
            br#"{"model":"gpt-4o","stream":false}"#,
        ] {
            let (_, _, b) = run(&cfg, &post("/v1/chat/completions", body.len()), body, true);
            assert!(matches!(b, Some(BodyAction::Continue { edits, .. }) if edits.is_empty()));
        }
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
