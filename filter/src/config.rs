//! Plugin configuration: parsed once, validated, then immutable.
//!
//! Every rejection names the field path (`models[1].destinations[0].weight`), so that both the
//! filter's log line and `wasmpack check` point at the exact spot.

use std::collections::HashMap;

use serde::Deserialize;

pub use crate::failover::Failover;
use crate::failover::{Fallback, RawFailover, RawFallback};
use crate::json::{self, Json};

/// Which of the filter's decision headers leave the proxy on the response.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum ResponseHeaders {
    /// None: the decision stays inside the mesh (metrics, access log); client-visible
    /// `x-ai-route` / `x-ai-model` a backend may send are removed too.
    #[serde(rename = "none")]
    None,
    /// `x-ai-route` (the destination), when the filter routed the request.
    #[default]
    #[serde(rename = "route")]
    Route,
    /// `x-ai-route` and `x-ai-model` (the canonical model).
    #[serde(rename = "route+model")]
    RouteAndModel,
}

/// What the filter puts in `X-Gateway-Model-Name`, the header by which the Gateway API Inference
/// Extension routes to an `InferencePool` (the filter is then its body-based router).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InferenceModelHeader {
    /// Not set (and not touched).
    #[default]
    None,
    /// The canonical model name.
    Canonical,
    /// The name the backend is sent (`upstreamModel`, else the canonical name).
    Upstream,
}

/// The header of the Gateway API Inference Extension.
pub const INFERENCE_MODEL_HEADER: &str = "x-gateway-model-name";

/// Where the caller's SPIFFE identity comes from (docs/access-control.md, "Who the caller is").
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum IdentitySource {
    /// Decided where the filter runs, from Envoy's `node` and `listener_direction`: a sidecar's
    /// outbound listener → `workload`; a waypoint → `peerPrincipal`; anything else (a sidecar's
    /// inbound listener, a gateway, plain Envoy) → `peerCertificate`, then Istio's peer-principal
    /// filter state.
    #[default]
    Auto,
    /// The mTLS peer's certificate (`connection.uri_san_peer_certificate`): inbound listeners and
    /// gateways with client mTLS.
    PeerCertificate,
    /// The sidecar's own workload, `spiffe://<trustDomain>/ns/<NAMESPACE>/sa/<SERVICE_ACCOUNT>`
    /// from the node metadata Istio's agent writes: the callers' sidecars (outbound), where the
    /// app talks plaintext to its own proxy. Never on a gateway or waypoint, never inbound.
    Workload,
    /// Istio's filter state `io.istio.peer_principal`: ambient waypoints (HBONE from ztunnel).
    PeerPrincipal,
    /// Only `identityHeader`, set by a trusted proxy in front (e.g. an authenticating gateway).
    Header,
}

/// What to do with a request in a given bad situation.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Reject,
    Passthrough,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    /// Request header set to the chosen destination's name (default `x-ai-route`).
    #[serde(default = "default_route_header")]
    route_header: String,
    /// Request header set to the canonical model name (default `x-ai-model`).
    #[serde(default = "default_model_header")]
    model_header: String,
    /// Most request-body bytes the filter reads (default 1 MiB); see `onOversize`.
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: u64,
    /// A model that is neither a name nor an alias: 404 `model_not_found`, or let it through unrouted.
    #[serde(default = "reject")]
    on_unknown_model: Policy,
    /// A request without a model: 400 `model_required`, or let it through unrouted. Default:
    /// `reject` when some model has access rules or limits (fail closed), else `passthrough`.
    #[serde(default)]
    on_missing_model: Option<Policy>,
    /// A body that is not valid JSON: 400 `invalid_json`, or let it through unrouted.
    #[serde(default = "reject")]
    on_invalid_body: Policy,
    /// A body larger than `maxBodyBytes`: 413 `body_too_large`, or let it through unread.
    /// Default: `reject` when some model has access rules or limits (fail closed), else
    /// `passthrough`.
    #[serde(default)]
    on_oversize: Option<Policy>,
    /// Requests with the same value of this header get the same destination of a model.
    #[serde(default)]
    sticky_header: Option<String>,
    /// Hold request headers until the body's model is known, then route on it (default true).
    #[serde(default = "yes")]
    body_routing: bool,
    /// Make every streaming chat/completions request report its usage (always for token-limited models).
    #[serde(default)]
    inject_stream_usage: bool,
    /// Which requests the filter looks at (authorities and path prefixes).
    #[serde(default)]
    scope: Option<RawScope>,
    /// Output tokens charged for a response whose usage could not be read, when the request did
    /// not say its `max_tokens`.
    #[serde(default = "default_estimated_output_tokens")]
    estimated_output_tokens: u64,
    /// Answer `GET /v1/models` and `GET /v1/models/{id}` from the configuration.
    #[serde(default)]
    serve_model_list: bool,
    /// Which decision headers the response carries to the client.
    #[serde(default)]
    response_headers: ResponseHeaders,
    /// Put the client's model name back into responses when `upstreamModel` rewrote it.
    #[serde(default)]
    restore_model_name: bool,
    /// Set `X-Gateway-Model-Name` (Gateway API Inference Extension) to the routed model.
    #[serde(default)]
    inference_model_header: InferenceModelHeader,
    /// Default allow list for models without their own.
    #[serde(default)]
    allow: Option<Vec<String>>,
    /// Default limits for models without their own.
    #[serde(default)]
    limits: Option<RawLimits>,
    /// A request header carrying the caller's SPIFFE ID, trusted when the identity source finds
    /// none (no mTLS peer), or the only source with `identitySource: header`.
    #[serde(default)]
    identity_header: Option<String>,
    /// Where the caller's identity comes from (default `auto`: decided by where the filter runs).
    #[serde(default)]
    identity_source: IdentitySource,
    /// The mesh's trust domain, for the identity of a sidecar's own workload (default `cluster.local`).
    #[serde(default = "default_trust_domain")]
    trust_domain: String,
    /// The rate limit service that counts `mode: global` limits for every proxy (Envoy's RLS
    /// protocol; Limitador for token limits).
    #[serde(default)]
    rate_limit_service: Option<RawRateLimitService>,
    /// Store model, destination and token counts as filter state for access logs
    /// (`%FILTER_STATE(wasm.model_router.model:PLAIN)%` …); off by default: four writes into the
    /// proxy per request that only an access log reads.
    #[serde(default)]
    filter_state: bool,
    /// Destination health and failover (docs/failover.md); off when absent.
    #[serde(default)]
    failover: Option<RawFailover>,
    /// The models the filter knows.
    models: Vec<RawModel>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawScope {
    #[serde(default)]
    /// `:authority` names or `*.domain` patterns (port ignored).
    hosts: Option<Vec<String>>,
    #[serde(default)]
    /// Path prefixes (`["/"]`: all); default: the inference endpoints.
    paths: Option<Vec<String>>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawLimits {
    #[serde(default)]
    /// Requests per minute (a token bucket).
    requests_per_minute: Option<u64>,
    #[serde(default)]
    /// Input + output tokens per minute, charged as responses end.
    tokens_per_minute: Option<u64>,
    #[serde(default)]
    /// `principal` (default), `global`, or `header:NAME`.
    by: Option<String>,
    #[serde(default)]
    /// `local` (default): counted in each proxy; `global`: counted by `rateLimitService`, shared by every proxy.
    mode: Option<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRateLimitService {
    /// The Envoy cluster of the service, as Envoy names it (Istio: `outbound|8081||limitador.NS.svc.cluster.local`).
    cluster: String,
    #[serde(default = "default_rls_domain")]
    /// The RLS domain (Limitador's namespace) of the limits (default `model-router`).
    domain: String,
    #[serde(default)]
    /// How long a request waits for an answer: `200ms` (default), `1s`; at most `10s`.
    timeout: Option<String>,
    #[serde(default)]
    /// When the service cannot answer in time: `allow` (default) or `deny` (503).
    failure_mode: Option<String>,
}

fn default_rls_domain() -> String {
    "model-router".into()
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawModel {
    /// Canonical model name (label value of the metrics, value of `modelHeader`).
    name: String,
    #[serde(default)]
    /// Other names clients may send.
    aliases: Vec<String>,
    #[serde(default)]
    /// Rewrite the body's `model` to this before it goes upstream.
    upstream_model: Option<String>,
    #[serde(default)]
    /// SPIFFE IDs allowed to use this model (`*`, or a prefix ending in `*`).
    allow: Option<Vec<String>>,
    #[serde(default)]
    /// This model's rate limits.
    limits: Option<RawLimits>,
    /// Weighted split across backends (at least one).
    destinations: Vec<RawDestination>,
    #[serde(default)]
    /// Where its requests go, in order, when all its destinations are open (needs `failover`).
    fallbacks: Option<Vec<RawFallback>>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDestination {
    /// Value of `routeHeader` for this destination.
    name: String,
    #[serde(default = "default_weight")]
    /// Relative weight (default 1).
    weight: u32,
    #[serde(default)]
    /// The Kubernetes Service serving it (for `wasmpack manifests`; the filter ignores it).
    host: Option<String>,
    #[serde(default)]
    /// The DestinationRule subset (sidecar installs).
    subset: Option<String>,
    #[serde(default)]
    /// The Service port.
    port: Option<u16>,
    #[serde(default)]
    /// An InferencePool (Gateway API Inference Extension) serving it instead of a Service:
    /// gateway routes send there (for `wasmpack manifests`; the filter ignores it).
    inference_pool: Option<String>,
    #[serde(default)]
    /// Where its requests go first, in order, while it is open (needs `failover`).
    fallbacks: Option<Vec<RawFallback>>,
}

fn default_route_header() -> String {
    "x-ai-route".into()
}
fn default_model_header() -> String {
    "x-ai-model".into()
}
fn default_max_body_bytes() -> u64 {
    1024 * 1024
}
fn default_weight() -> u32 {
    1
}
fn default_trust_domain() -> String {
    "cluster.local".into()
}
fn default_estimated_output_tokens() -> u64 {
    4096
}
fn yes() -> bool {
    true
}
fn reject() -> Policy {
    Policy::Reject
}

/// The JSON Schema of the plugin configuration, generated from the types the parser reads (so
/// it cannot drift): for editors and YAML language servers (`wasmpack schema`).
#[cfg(feature = "schema")]
pub fn json_schema() -> serde_json::Value {
    let mut s = serde_json::to_value(schemars::schema_for!(RawConfig)).unwrap_or_default();
    if let Some(o) = s.as_object_mut() {
        o.insert("title".into(), "model-router plugin configuration".into());
        o.insert(
            "description".into(),
            "The configuration of the model-router proxy-wasm filter (docs/configuration.md).".into(),
        );
    }
    s
}

/// A configuration error: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Dotted path of the offending field, e.g. `models[0].destinations[1].weight`; `.` is the root.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// One backend a model can be sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub name: String,
    pub weight: u32,
    /// Only used by wasmpack to render Istio routing; the filter ignores it.
    pub host: Option<String>,
    pub subset: Option<String>,
    pub port: Option<u16>,
    /// An InferencePool instead of a Service (wasmpack only).
    pub inference_pool: Option<String>,
    /// Tried first while this destination is open.
    pub fallbacks: Vec<Fallback>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub name: String,
    pub aliases: Vec<String>,
    pub upstream_model: Option<String>,
    pub destinations: Vec<Destination>,
    /// Sum of the destination weights, > 0 (validated).
    pub total_weight: u64,
    /// Who may call this model (its own list, else the top-level one); `None`: everyone.
    pub allow: Option<Vec<AllowRule>>,
    /// Its limits (its own, else the top-level ones).
    pub limits: Option<Limits>,
    /// Tried in order when all its destinations are open.
    pub fallbacks: Vec<Fallback>,
}

/// One entry of an allow list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    /// `*`: any caller with an identity.
    Any,
    /// `spiffe://td/ns/team-a/*`: every identity starting with the part before `*`.
    Prefix(String),
    Exact(String),
}

impl AllowRule {
    pub fn matches(&self, principal: &str) -> bool {
        match self {
            AllowRule::Any => true,
            AllowRule::Prefix(p) => principal.starts_with(p.as_str()),
            AllowRule::Exact(e) => principal == e,
        }
    }
}

/// What a rate-limit bucket is keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The caller's identity (mTLS SPIFFE ID or the trusted identity header).
    Principal,
    /// The value of a request header (e.g. an API key set by an authenticating proxy).
    Header(String),
    /// One bucket for everyone.
    Global,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub by: LimitKey,
    /// Counted by the rate limit service (shared by every proxy), not in this proxy.
    pub global: bool,
}

/// The default time a request waits for the rate limit service.
pub const DEFAULT_RLS_TIMEOUT_MS: u32 = 200;
/// The longest wait that may be configured.
pub const MAX_RLS_TIMEOUT_MS: u32 = 10_000;

/// The external rate limit service of `mode: global` limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitService {
    /// The Envoy cluster name.
    pub cluster: String,
    /// RLS domain / Limitador namespace.
    pub domain: String,
    pub timeout_ms: u32,
    /// Refuse (503) rather than admit when the service does not answer.
    pub deny_on_failure: bool,
}

/// The validated plugin configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub route_header: String,
    pub model_header: String,
    pub max_body_bytes: u64,
    pub on_unknown_model: Policy,
    pub on_missing_model: Policy,
    pub on_invalid_body: Policy,
    pub on_oversize: Policy,
    pub sticky_header: Option<String>,
    pub body_routing: bool,
    pub inject_stream_usage: bool,
    pub identity_header: Option<String>,
    pub identity_source: IdentitySource,
    /// The trust domain of the SPIFFE IDs the filter makes (a sidecar's own workload).
    pub trust_domain: String,
    pub scope: Scope,
    pub estimated_output_tokens: u64,
    pub serve_model_list: bool,
    pub response_headers: ResponseHeaders,
    pub restore_model_name: bool,
    pub inference_model_header: InferenceModelHeader,
    pub rate_limit_service: Option<RateLimitService>,
    /// Write the access-log filter state (`wasm.model_router.*`).
    pub filter_state: bool,
    /// Destination health and failover; `None`: off.
    pub failover: Option<Failover>,
    pub models: Vec<Model>,
    /// Canonical names and aliases to the index in `models`.
    index: HashMap<String, usize>,
}

/// The longest model, alias or destination name accepted. Longer names are certainly a mistake and
/// would only bloat stat names.
pub const MAX_NAME_LEN: usize = 256;

impl Config {
    /// Parses and validates a JSON plugin configuration (what Envoy hands to `on_configure`).
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let doc = json::parse(bytes).map_err(|e| {
            let message = if e.message == "trailing characters" {
                format!("trailing data after the configuration: {e}")
            } else {
                e.to_string()
            };
            ConfigError::new(".", message)
        })?;
        Config::from_document(&doc)
    }

    /// Reads and validates a parsed document (the CLI reads YAML into one), keeping field paths.
    pub fn from_document(doc: &Json) -> Result<Config, ConfigError> {
        validate(read::config(doc)?)
    }

    /// Looks up a model by canonical name or alias (exact, case-sensitive: model ids are).
    #[cfg(test)]
    pub fn resolve(&self, name: &str) -> Option<&Model> {
        self.resolve_index(name).and_then(|i| self.models.get(i))
    }

    /// Index in `models` of the model called `name` (canonical or alias).
    pub fn resolve_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// True when some request could need its body rewritten, so the content length may change.
    pub fn may_rewrite_body(&self) -> bool {
        self.inject_stream_usage
            || self
                .models
                .iter()
                .any(|m| m.upstream_model.is_some() || m.limits.as_ref().is_some_and(|l| l.tokens_per_minute.is_some()))
    }
}

pub use crate::scope::Scope;

// The configuration code runs once per VM but is compiled whole by V8 at start-up, and V8's
// compile memory (kept by Envoy's allocator afterwards) grows with the size of each function:
// the parsers here stay small, separate functions (`#[inline(never)]`; docs/performance.md).
#[inline(never)]
fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let route_header = header_name("routeHeader", &raw.route_header)?;
    let model_header = header_name("modelHeader", &raw.model_header)?;
    if route_header == model_header {
        return Err(ConfigError::new(
            "modelHeader",
            format!("must differ from routeHeader (both are `{route_header}`)"),
        ));
    }
    let sticky_header = match &raw.sticky_header {
        Some(h) => Some(header_name("stickyHeader", h)?),
        None => None,
    };
    if raw.max_body_bytes == 0 {
        return Err(ConfigError::new("maxBodyBytes", "must be greater than 0"));
    }
    let identity_header = match &raw.identity_header {
        Some(h) => Some(header_name("identityHeader", h)?),
        None => None,
    };
    if raw.identity_source == IdentitySource::Header && identity_header.is_none() {
        return Err(ConfigError::new(
            "identitySource",
            "`header` needs identityHeader: the request header a trusted proxy sets to the caller's SPIFFE ID",
        ));
    }
    let trust_domain = trust_domain(&raw.trust_domain)?;
    let default_allow = match &raw.allow {
        Some(list) => Some(allow_rules("allow", list)?),
        None => None,
    };
    let default_limits = match &raw.limits {
        Some(l) => Some(limits("limits", l)?),
        None => None,
    };
    let mut scope = match &raw.scope {
        Some(s) => scope(s)?,
        None => Scope::default(),
    };
    if raw.estimated_output_tokens == 0 {
        return Err(ConfigError::new("estimatedOutputTokens", "must be greater than 0"));
    }
    let rate_limit_service = match &raw.rate_limit_service {
        Some(r) => Some(rate_limit_service(r)?),
        None => None,
    };

    let failover = match &raw.failover {
        Some(f) => Some(crate::failover::failover(f)?),
        None => None,
    };
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut models = Vec::with_capacity(raw.models.len());
    let mut raw_fallbacks = Vec::new();
    for (i, mut m) in raw.models.into_iter().enumerate() {
        if let Some(list) = m.fallbacks.take() {
            raw_fallbacks.push((i, None, list));
        }
        for (j, d) in m.destinations.iter_mut().enumerate() {
            if let Some(list) = d.fallbacks.take() {
                raw_fallbacks.push((i, Some(j), list));
            }
        }
        models.push(model(
            i,
            m,
            &mut index,
            default_allow.as_ref(),
            default_limits.as_ref(),
            rate_limit_service.is_some(),
        )?);
    }

    crate::failover::resolve(&mut models, raw_fallbacks, &index, failover.is_some())?;

    // A handful of hosts: a linear dedup (a sort would add kilobytes to the module).
    let mut model_hosts: Vec<String> = Vec::new();
    for d in models.iter().flat_map(|m: &Model| m.destinations.iter()) {
        let Some(h) = d.host.as_deref() else { continue };
        let h = h.trim_end_matches('.').to_ascii_lowercase();
        if !h.is_empty() && !model_hosts.contains(&h) {
            model_hosts.push(h);
        }
    }
    scope.model_hosts = model_hosts;
    // Fail closed where a policy exists: what the filter cannot judge must not pass unchecked.
    let guarded = models.iter().any(|m| m.allow.is_some() || m.limits.is_some());
    let fail_closed = if guarded { Policy::Reject } else { Policy::Passthrough };

    Ok(Config {
        route_header,
        model_header,
        max_body_bytes: raw.max_body_bytes,
        on_unknown_model: raw.on_unknown_model,
        on_missing_model: raw.on_missing_model.unwrap_or(fail_closed),
        on_invalid_body: raw.on_invalid_body,
        on_oversize: raw.on_oversize.unwrap_or(fail_closed),
        sticky_header,
        body_routing: raw.body_routing,
        inject_stream_usage: raw.inject_stream_usage,
        identity_header,
        identity_source: raw.identity_source,
        trust_domain,
        scope,
        estimated_output_tokens: raw.estimated_output_tokens,
        serve_model_list: raw.serve_model_list,
        response_headers: raw.response_headers,
        restore_model_name: raw.restore_model_name,
        inference_model_header: raw.inference_model_header,
        rate_limit_service,
        filter_state: raw.filter_state,
        failover,
        models,
        index,
    })
}

/// One entry of `models`, checked; its names claimed in `index`.
#[inline(never)]
fn model(
    i: usize,
    m: RawModel,
    index: &mut HashMap<String, usize>,
    default_allow: Option<&Vec<AllowRule>>,
    default_limits: Option<&Limits>,
    has_rate_limit_service: bool,
) -> Result<Model, ConfigError> {
    let at = format!("models[{i}]");
    name_check(&format!("{at}.name"), &m.name)?;
    claim(index, &m.name, i, &format!("{at}.name"))?;
    for (j, alias) in m.aliases.iter().enumerate() {
        let path = format!("{at}.aliases[{j}]");
        name_check(&path, alias)?;
        claim(index, alias, i, &path)?;
    }
    if let Some(up) = &m.upstream_model {
        if up.is_empty() {
            return Err(ConfigError::new(format!("{at}.upstreamModel"), "must not be empty"));
        }
    }
    if m.destinations.is_empty() {
        return Err(ConfigError::new(
            format!("{at}.destinations"),
            format!("model `{}` needs at least one destination", m.name),
        ));
    }
    let mut destinations = Vec::with_capacity(m.destinations.len());
    let mut total_weight: u64 = 0;
    for (j, d) in m.destinations.into_iter().enumerate() {
        let path = format!("{at}.destinations[{j}]");
        name_check(&format!("{path}.name"), &d.name)?;
        if destinations.iter().any(|x: &Destination| x.name == d.name) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("duplicate destination `{}` in model `{}`", d.name, m.name),
            ));
        }
        total_weight += u64::from(d.weight);
        destinations.push(Destination {
            name: d.name,
            weight: d.weight,
            host: d.host,
            subset: d.subset,
            port: d.port,
            inference_pool: d.inference_pool,
            fallbacks: Vec::new(),
        });
    }
    if total_weight == 0 {
        return Err(ConfigError::new(
            format!("{at}.destinations"),
            format!("all weights of model `{}` are 0: at least one must be positive", m.name),
        ));
    }
    let allow = match &m.allow {
        Some(list) => Some(allow_rules(&format!("{at}.allow"), list)?),
        None => default_allow.cloned(),
    };
    let (model_limits, limits_at) = match &m.limits {
        Some(l) => (Some(limits(&format!("{at}.limits"), l)?), format!("{at}.limits")),
        None => (default_limits.cloned(), "limits".to_string()),
    };
    if model_limits.as_ref().is_some_and(|l| l.global) && !has_rate_limit_service {
        return Err(ConfigError::new(
            format!("{limits_at}.mode"),
            "`global` limits are counted by a rate limit service: set rateLimitService.cluster",
        ));
    }
    Ok(Model {
        name: m.name,
        aliases: m.aliases,
        upstream_model: m.upstream_model,
        destinations,
        total_weight,
        allow,
        limits: model_limits,
        fallbacks: Vec::new(),
    })
}

#[inline(never)]
fn scope(raw: &RawScope) -> Result<Scope, ConfigError> {
    let hosts = match &raw.hosts {
        None => None,
        Some(list) => {
            if list.is_empty() {
                return Err(ConfigError::new(
                    "scope.hosts",
                    "must not be empty (leave it out for any host)",
                ));
            }
            let mut out = Vec::with_capacity(list.len());
            for (i, h) in list.iter().enumerate() {
                let lower = h.trim_end_matches('.').to_ascii_lowercase();
                let name = lower.strip_prefix("*.").unwrap_or(&lower);
                let ok = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
                if !ok {
                    return Err(ConfigError::new(
                        format!("scope.hosts[{i}]"),
                        format!("`{h}` is not a host name or `*.domain` pattern (no ports, no schemes)"),
                    ));
                }
                out.push(lower);
            }
            Some(out)
        }
    };
    let paths = match &raw.paths {
        None => None,
        Some(list) => {
            if list.is_empty() {
                return Err(ConfigError::new(
                    "scope.paths",
                    "must not be empty (leave it out for the built-in inference endpoints, or use [\"/\"] for all)",
                ));
            }
            for (i, p) in list.iter().enumerate() {
                if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == b'?' || b == b'#') {
                    return Err(ConfigError::new(
                        format!("scope.paths[{i}]"),
                        format!("`{p}` is not a path prefix (it must start with `/`, without spaces or a query)"),
                    ));
                }
            }
            Some(list.clone())
        }
    };
    Ok(Scope {
        hosts,
        paths,
        model_hosts: Vec::new(),
    })
}

/// A SPIFFE trust domain: a lowercase DNS-style name (spiffe.io, "Trust Domain").
#[inline(never)]
fn trust_domain(raw: &str) -> Result<String, ConfigError> {
    let ok = !raw.is_empty()
        && raw.len() <= 255
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    if !ok {
        return Err(ConfigError::new(
            "trustDomain",
            format!("`{raw}` is not a trust domain (lowercase letters, digits, `-`, `.`, `_`; e.g. cluster.local)"),
        ));
    }
    Ok(raw.to_string())
}

/// SPIFFE IDs, `*`, or a prefix ending in `*`.
#[inline(never)]
fn allow_rules(path: &str, list: &[String]) -> Result<Vec<AllowRule>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            let p = format!("{path}[{i}]");
            if e == "*" {
                return Ok(AllowRule::Any);
            }
            if !e.starts_with("spiffe://") {
                return Err(ConfigError::new(
                    p,
                    format!("`{e}` is not a SPIFFE ID (spiffe://trust-domain/path), `*`, or a prefix ending in `*`"),
                ));
            }
            if e.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
                return Err(ConfigError::new(p, format!("`{e}` has spaces or non-ASCII characters")));
            }
            match e.find('*') {
                None => Ok(AllowRule::Exact(e.clone())),
                Some(at) if at == e.len() - 1 => Ok(AllowRule::Prefix(e[..at].to_string())),
                Some(_) => Err(ConfigError::new(p, format!("`{e}`: `*` is only allowed at the end"))),
            }
        })
        .collect()
}

#[inline(never)]
fn limits(path: &str, l: &RawLimits) -> Result<Limits, ConfigError> {
    if l.requests_per_minute.is_none() && l.tokens_per_minute.is_none() {
        return Err(ConfigError::new(
            path,
            "set requestsPerMinute, tokensPerMinute, or both",
        ));
    }
    for (field, v) in [
        ("requestsPerMinute", l.requests_per_minute),
        ("tokensPerMinute", l.tokens_per_minute),
    ] {
        if v == Some(0) {
            return Err(ConfigError::new(format!("{path}.{field}"), "must be greater than 0"));
        }
    }
    let by = match l.by.as_deref() {
        None | Some("principal") => LimitKey::Principal,
        Some("global") => LimitKey::Global,
        Some(other) => match other.strip_prefix("header:") {
            Some(h) => LimitKey::Header(header_name(&format!("{path}.by"), h)?),
            None => {
                return Err(ConfigError::new(
                    format!("{path}.by"),
                    format!("`{other}`: expected `principal`, `global` or `header:NAME`"),
                ))
            }
        },
    };
    let global = match l.mode.as_deref() {
        None | Some("local") => false,
        Some("global") => true,
        Some(other) => {
            return Err(ConfigError::new(
                format!("{path}.mode"),
                format!("`{other}`: expected `local` or `global`"),
            ))
        }
    };
    if global && l.tokens_per_minute.is_some_and(|t| t > u64::from(u32::MAX)) {
        return Err(ConfigError::new(
            format!("{path}.tokensPerMinute"),
            format!(
                "a global limit is at most {} (the rate limit protocol counts in 32 bits)",
                u32::MAX
            ),
        ));
    }
    Ok(Limits {
        requests_per_minute: l.requests_per_minute,
        tokens_per_minute: l.tokens_per_minute,
        by,
        global,
    })
}

#[inline(never)]
fn rate_limit_service(r: &RawRateLimitService) -> Result<RateLimitService, ConfigError> {
    let cluster = r.cluster.trim();
    if cluster.is_empty() || cluster.len() > 512 || cluster.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ConfigError::new(
            "rateLimitService.cluster",
            "an Envoy cluster name, e.g. `outbound|8081||limitador.kuadrant-system.svc.cluster.local`",
        ));
    }
    let domain = r.domain.trim();
    if domain.is_empty() || domain.len() > 253 || domain.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ConfigError::new(
            "rateLimitService.domain",
            "a non-empty name without spaces (the RLS domain, Limitador's namespace)",
        ));
    }
    let timeout_ms = match r.timeout.as_deref() {
        None => DEFAULT_RLS_TIMEOUT_MS,
        Some(t) => match parse_duration_ms(t) {
            Some(ms) if (1..=MAX_RLS_TIMEOUT_MS).contains(&ms) => ms,
            Some(_) => {
                return Err(ConfigError::new(
                    "rateLimitService.timeout",
                    format!("`{t}`: between 1ms and {}s", MAX_RLS_TIMEOUT_MS / 1000),
                ))
            }
            None => {
                return Err(ConfigError::new(
                    "rateLimitService.timeout",
                    format!("`{t}`: a duration like `200ms` or `1s`"),
                ))
            }
        },
    };
    let deny_on_failure = match r.failure_mode.as_deref() {
        None | Some("allow") => false,
        Some("deny") => true,
        Some(other) => {
            return Err(ConfigError::new(
                "rateLimitService.failureMode",
                format!("`{other}`: expected `allow` or `deny`"),
            ))
        }
    };
    Ok(RateLimitService {
        cluster: cluster.to_string(),
        domain: domain.to_string(),
        timeout_ms,
        deny_on_failure,
    })
}

/// `250ms`, `1s`, `1.5s` → milliseconds (by hand: float parsing would add kilobytes to the module).
pub(crate) fn parse_duration_ms(t: &str) -> Option<u32> {
    let t = t.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1u64)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000u64)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000u64)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000u64)
    } else {
        return None;
    };
    let (whole, frac) = number.trim().split_once('.').unwrap_or((number.trim(), ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let mut ms = whole.checked_mul(scale)?;
    // Fractions count down to the millisecond.
    let mut unit = scale;
    for d in frac.bytes() {
        unit /= 10;
        ms = ms.checked_add(u64::from(d - b'0') * unit)?;
    }
    u32::try_from(ms).ok()
}

fn claim(index: &mut HashMap<String, usize>, name: &str, model: usize, path: &str) -> Result<(), ConfigError> {
    if let Some(&other) = index.get(name) {
        let what = if other == model {
            "the same model"
        } else {
            "another model"
        };
        return Err(ConfigError::new(
            path,
            format!("duplicate model name or alias `{name}` (already used by {what}, models[{other}])"),
        ));
    }
    index.insert(name.to_string(), model);
    Ok(())
}

/// Names end up in header values and in stat names (`model=.=NAME;.;`), so the characters that
/// would break either are refused.
fn name_check(path: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::new(path, "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ConfigError::new(path, format!("longer than {MAX_NAME_LEN} bytes")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || *c == ';' || *c == '=')
    {
        return Err(ConfigError::new(
            path,
            format!("`{name}` contains {c:?}; whitespace, control characters, `;` and `=` are not allowed"),
        ));
    }
    Ok(())
}

/// RFC 9110 token characters, lowercased (Envoy and HTTP/2 use lowercase names).
fn header_name(path: &str, name: &str) -> Result<String, ConfigError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        return Err(ConfigError::new(
            path,
            format!("`{name}` is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)"),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "host" | "content-length" | "content-type" | "transfer-encoding"
    ) {
        return Err(ConfigError::new(
            path,
            format!("`{name}` is reserved; pick another header"),
        ));
    }
    Ok(lower)
}

/// The configuration document read into the `Raw*` types, with serde's rules (unknown and
/// repeated fields refused, `null` is "not set" only for optional fields) and serde's wording, so
/// `wasmpack check` words them alike. Field lists are the serde declarations' (a test compares).
mod read {
    use super::*;

    type R<T> = Result<T, ConfigError>;

    fn join(path: &str, key: &str) -> String {
        if path == "." {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    }

    fn invalid(v: &Json, path: &str, expected: &str) -> ConfigError {
        ConfigError::new(path, format!("invalid type: {}, expected {expected}", v.describe()))
    }

    /// `expected `a``, `expected `a` or `b``, `expected one of `a`, `b`, `c`` (serde's phrasing).
    fn one_of(names: &[&str]) -> String {
        match names {
            [] => "there are none".into(),
            [a] => format!("expected `{a}`"),
            [a, b] => format!("expected `{a}` or `{b}`"),
            _ => format!("expected one of `{}`", names.join("`, `")),
        }
    }

    /// An object's members, checked against the field names of `what`.
    struct Fields<'a> {
        path: String,
        members: &'a [(String, Json)],
    }

    fn fields<'a>(v: &'a Json, path: &str, what: &str, known: &[&str]) -> R<Fields<'a>> {
        let Json::Obj(members) = v else {
            return Err(invalid(v, path, &format!("struct {what}")));
        };
        for (i, (k, _)) in members.iter().enumerate() {
            if !known.contains(&k.as_str()) {
                return Err(ConfigError::new(
                    join(path, k),
                    format!("unknown field `{k}`, {}", one_of(known)),
                ));
            }
            if members[..i].iter().any(|(p, _)| p == k) {
                return Err(ConfigError::new(path, format!("duplicate field `{k}`")));
            }
        }
        Ok(Fields {
            path: path.to_string(),
            members,
        })
    }

    impl Fields<'_> {
        fn get(&self, key: &str) -> Option<(&Json, String)> {
            self.members
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| (v, join(&self.path, key)))
        }

        /// Absent or `null`: `None`.
        fn opt<T>(&self, key: &str, read: impl Fn(&Json, &str) -> R<T>) -> R<Option<T>> {
            match self.get(key) {
                None | Some((Json::Null, _)) => Ok(None),
                Some((v, p)) => read(v, &p).map(Some),
            }
        }

        /// Absent: `default`; `null` is a wrong type here.
        fn or<T>(&self, key: &str, read: impl Fn(&Json, &str) -> R<T>, default: T) -> R<T> {
            match self.get(key) {
                None => Ok(default),
                Some((v, p)) => read(v, &p),
            }
        }

        fn req<T>(&self, key: &str, read: impl Fn(&Json, &str) -> R<T>) -> R<T> {
            match self.get(key) {
                None => Err(ConfigError::new(self.path.clone(), format!("missing field `{key}`"))),
                Some((v, p)) => read(v, &p),
            }
        }
    }

    fn string(v: &Json, path: &str) -> R<String> {
        match v {
            Json::Str(s) => Ok(s.clone()),
            _ => Err(invalid(v, path, "a string")),
        }
    }

    fn boolean(v: &Json, path: &str) -> R<bool> {
        match v {
            Json::Bool(b) => Ok(*b),
            _ => Err(invalid(v, path, "a boolean")),
        }
    }

    fn whole(v: &Json, path: &str, max: u64, name: &str) -> R<u64> {
        match v {
            Json::Num(n) if json::is_integer(n) => match n.parse::<u64>() {
                Ok(x) if x <= max => Ok(x),
                _ => Err(ConfigError::new(
                    path,
                    format!("invalid value: integer `{n}`, expected {name}"),
                )),
            },
            _ => Err(invalid(v, path, name)),
        }
    }

    fn u64_(v: &Json, path: &str) -> R<u64> {
        whole(v, path, u64::MAX, "u64")
    }

    fn u32_(v: &Json, path: &str) -> R<u32> {
        whole(v, path, u64::from(u32::MAX), "u32").map(|x| x as u32)
    }

    fn u16_(v: &Json, path: &str) -> R<u16> {
        whole(v, path, u64::from(u16::MAX), "u16").map(|x| x as u16)
    }

    fn list<T>(read: impl Fn(&Json, &str) -> R<T>) -> impl Fn(&Json, &str) -> R<Vec<T>> {
        move |v, path| match v {
            Json::Arr(items) => items
                .iter()
                .enumerate()
                .map(|(i, x)| read(x, &format!("{path}[{i}]")))
                .collect(),
            _ => Err(invalid(v, path, "a sequence")),
        }
    }

    fn variant<T: Copy>(choices: &'static [(&'static str, T)]) -> impl Fn(&Json, &str) -> R<T> {
        move |v, path| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            match v {
                Json::Str(s) => choices
                    .iter()
                    .find(|(n, _)| n == s)
                    .map(|(_, x)| *x)
                    .ok_or_else(|| ConfigError::new(path, format!("unknown variant `{s}`, {}", one_of(&names)))),
                _ => Err(invalid(v, path, "a string")),
            }
        }
    }

    const POLICY: &[(&str, Policy)] = &[("reject", Policy::Reject), ("passthrough", Policy::Passthrough)];

    #[inline(never)]
    pub(super) fn config(v: &Json) -> R<RawConfig> {
        let f = fields(
            v,
            ".",
            "RawConfig",
            &[
                "routeHeader",
                "modelHeader",
                "maxBodyBytes",
                "onUnknownModel",
                "onMissingModel",
                "onInvalidBody",
                "onOversize",
                "stickyHeader",
                "bodyRouting",
                "injectStreamUsage",
                "scope",
                "estimatedOutputTokens",
                "serveModelList",
                "responseHeaders",
                "restoreModelName",
                "inferenceModelHeader",
                "allow",
                "limits",
                "identityHeader",
                "identitySource",
                "trustDomain",
                "rateLimitService",
                "filterState",
                "failover",
                "models",
            ],
        )?;
        let policy = variant(POLICY);
        Ok(RawConfig {
            route_header: f.or("routeHeader", string, default_route_header())?,
            model_header: f.or("modelHeader", string, default_model_header())?,
            max_body_bytes: f.or("maxBodyBytes", u64_, default_max_body_bytes())?,
            on_unknown_model: f.or("onUnknownModel", &policy, reject())?,
            on_missing_model: f.opt("onMissingModel", &policy)?,
            on_invalid_body: f.or("onInvalidBody", &policy, reject())?,
            on_oversize: f.opt("onOversize", &policy)?,
            sticky_header: f.opt("stickyHeader", string)?,
            body_routing: f.or("bodyRouting", boolean, yes())?,
            inject_stream_usage: f.or("injectStreamUsage", boolean, false)?,
            scope: f.opt("scope", scope)?,
            estimated_output_tokens: f.or("estimatedOutputTokens", u64_, default_estimated_output_tokens())?,
            serve_model_list: f.or("serveModelList", boolean, false)?,
            response_headers: f.or(
                "responseHeaders",
                variant(&[
                    ("none", ResponseHeaders::None),
                    ("route", ResponseHeaders::Route),
                    ("route+model", ResponseHeaders::RouteAndModel),
                ]),
                ResponseHeaders::default(),
            )?,
            restore_model_name: f.or("restoreModelName", boolean, false)?,
            inference_model_header: f.or(
                "inferenceModelHeader",
                variant(&[
                    ("none", InferenceModelHeader::None),
                    ("canonical", InferenceModelHeader::Canonical),
                    ("upstream", InferenceModelHeader::Upstream),
                ]),
                InferenceModelHeader::default(),
            )?,
            allow: f.opt("allow", list(string))?,
            limits: f.opt("limits", limits)?,
            identity_header: f.opt("identityHeader", string)?,
            identity_source: f.or(
                "identitySource",
                variant(&[
                    ("auto", IdentitySource::Auto),
                    ("peerCertificate", IdentitySource::PeerCertificate),
                    ("workload", IdentitySource::Workload),
                    ("peerPrincipal", IdentitySource::PeerPrincipal),
                    ("header", IdentitySource::Header),
                ]),
                IdentitySource::default(),
            )?,
            trust_domain: f.or("trustDomain", string, default_trust_domain())?,
            rate_limit_service: f.opt("rateLimitService", rate_limit_service)?,
            filter_state: f.or("filterState", boolean, false)?,
            failover: f.opt("failover", failover)?,
            models: f.req("models", list(model))?,
        })
    }

    #[inline(never)]
    fn scope(v: &Json, path: &str) -> R<RawScope> {
        let f = fields(v, path, "RawScope", &["hosts", "paths"])?;
        Ok(RawScope {
            hosts: f.opt("hosts", list(string))?,
            paths: f.opt("paths", list(string))?,
        })
    }

    #[inline(never)]
    fn limits(v: &Json, path: &str) -> R<RawLimits> {
        let f = fields(
            v,
            path,
            "RawLimits",
            &["requestsPerMinute", "tokensPerMinute", "by", "mode"],
        )?;
        Ok(RawLimits {
            requests_per_minute: f.opt("requestsPerMinute", u64_)?,
            tokens_per_minute: f.opt("tokensPerMinute", u64_)?,
            by: f.opt("by", string)?,
            mode: f.opt("mode", string)?,
        })
    }

    #[inline(never)]
    fn rate_limit_service(v: &Json, path: &str) -> R<RawRateLimitService> {
        let f = fields(
            v,
            path,
            "RawRateLimitService",
            &["cluster", "domain", "timeout", "failureMode"],
        )?;
        Ok(RawRateLimitService {
            cluster: f.req("cluster", string)?,
            domain: f.or("domain", string, default_rls_domain())?,
            timeout: f.opt("timeout", string)?,
            failure_mode: f.opt("failureMode", string)?,
        })
    }

    #[inline(never)]
    fn model(v: &Json, path: &str) -> R<RawModel> {
        let f = fields(
            v,
            path,
            "RawModel",
            &[
                "name",
                "aliases",
                "upstreamModel",
                "allow",
                "limits",
                "destinations",
                "fallbacks",
            ],
        )?;
        Ok(RawModel {
            name: f.req("name", string)?,
            aliases: f.or("aliases", list(string), Vec::new())?,
            upstream_model: f.opt("upstreamModel", string)?,
            allow: f.opt("allow", list(string))?,
            limits: f.opt("limits", limits)?,
            destinations: f.req("destinations", list(destination))?,
            fallbacks: f.opt("fallbacks", list(fallback))?,
        })
    }

    #[inline(never)]
    fn destination(v: &Json, path: &str) -> R<RawDestination> {
        let f = fields(
            v,
            path,
            "RawDestination",
            &["name", "weight", "host", "subset", "port", "inferencePool", "fallbacks"],
        )?;
        Ok(RawDestination {
            name: f.req("name", string)?,
            weight: f.or("weight", u32_, default_weight())?,
            host: f.opt("host", string)?,
            subset: f.opt("subset", string)?,
            port: f.opt("port", u16_)?,
            inference_pool: f.opt("inferencePool", string)?,
            fallbacks: f.opt("fallbacks", list(fallback))?,
        })
    }

    #[inline(never)]
    fn fallback(v: &Json, path: &str) -> R<RawFallback> {
        let f = fields(v, path, "RawFallback", &["model", "destination"])?;
        Ok(RawFallback {
            model: f.req("model", string)?,
            destination: f.opt("destination", string)?,
        })
    }

    #[inline(never)]
    fn failover(v: &Json, path: &str) -> R<RawFailover> {
        let f = fields(
            v,
            path,
            "RawFailover",
            &[
                "consecutiveFailures",
                "probation",
                "maxProbation",
                "trialRequests",
                "failureStatuses",
                "firstByteTimeout",
            ],
        )?;
        Ok(RawFailover {
            consecutive_failures: f.opt("consecutiveFailures", u64_)?,
            probation: f.opt("probation", string)?,
            max_probation: f.opt("maxProbation", string)?,
            trial_requests: f.opt("trialRequests", u64_)?,
            failure_statuses: f.opt("failureStatuses", list(u64_))?,
            first_byte_timeout: f.opt("firstByteTimeout", string)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> ConfigError {
        match Config::from_json(json.as_bytes()) {
            Ok(_) => panic!("expected an error for {json}"),
            Err(e) => e,
        }
    }

    const GOOD: &str = r#"{
        "stickyHeader": "X-User-Id",
        "models": [
          {"name": "llama-3-8b", "aliases": ["gpt-3.5-turbo"],
           "upstreamModel": "meta-llama/Meta-Llama-3-8B-Instruct",
           "destinations": [
             {"name": "llama-3-8b-v1", "weight": 90, "host": "llama.ai.svc.cluster.local", "subset": "v1"},
             {"name": "llama-3-8b-v2", "weight": 10, "host": "llama.ai.svc.cluster.local", "subset": "v2"}]},
          {"name": "bge", "destinations": [{"name": "bge"}]}
        ]}"#;

    #[test]
    fn parses_defaults_and_contract_example() {
        let c = Config::from_json(GOOD.as_bytes()).unwrap();
        assert_eq!(c.route_header, "x-ai-route");
        assert_eq!(c.model_header, "x-ai-model");
        assert_eq!(c.max_body_bytes, 1_048_576);
        assert_eq!(c.on_unknown_model, Policy::Reject);
        assert_eq!(c.on_missing_model, Policy::Passthrough);
        assert_eq!(c.on_invalid_body, Policy::Reject);
        assert_eq!(c.on_oversize, Policy::Passthrough);
        assert_eq!(c.sticky_header.as_deref(), Some("x-user-id"));
        assert!(c.body_routing, "on by default: the body's model routes");
        assert_eq!(c.estimated_output_tokens, 4096);
        assert_eq!(
            c.scope,
            Scope {
                model_hosts: vec!["llama.ai.svc.cluster.local".into()],
                ..Scope::default()
            },
            "the default paths, and every path of the model hosts"
        );
        assert_eq!(c.identity_source, IdentitySource::Auto);
        assert_eq!(c.trust_domain, "cluster.local");
        assert_eq!(c.resolve("gpt-3.5-turbo").unwrap().name, "llama-3-8b");
        assert_eq!(c.resolve("llama-3-8b").unwrap().total_weight, 100);
        assert_eq!(c.resolve("bge").unwrap().destinations[0].weight, 1);
        assert!(c.resolve("LLAMA-3-8B").is_none());
        assert!(c.may_rewrite_body());
    }

    #[test]
    fn rejections_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            (r#"{"models":[],"bogus":1}"#, "bogus", "unknown field `bogus`"),
            (
                r#"{"models":[{"name":"a","destinations":[{"name":"x","wieght":1}]}]}"#,
                "models[0].destinations[0].wieght",
                "unknown field `wieght`",
            ),
            (
                r#"{"models":[{"name":"a","destinations":[]}]}"#,
                "models[0].destinations",
                "at least one destination",
            ),
            (
                r#"{"models":[{"name":"a","destinations":[{"name":"x","weight":0},{"name":"y","weight":0}]}]}"#,
                "models[0].destinations",
                "all weights",
            ),
            (
                r#"{"models":[{"name":"a","destinations":[{"name":"x"}]},{"name":"a","destinations":[{"name":"x"}]}]}"#,
                "models[1].name",
                "duplicate model",
            ),
            (
                r#"{"models":[{"name":"a","destinations":[{"name":"x"}]},{"name":"b","aliases":["a"],"destinations":[{"name":"x"}]}]}"#,
                "models[1].aliases[0]",
                "duplicate model",
            ),
            (
                r#"{"models":[{"name":"a","aliases":["b","b"],"destinations":[{"name":"x"}]}]}"#,
                "models[0].aliases[1]",
                "duplicate model",
            ),
            (
                r#"{"routeHeader":"bad header","models":[]}"#,
                "routeHeader",
                "not a valid HTTP header name",
            ),
            (
                r#"{"stickyHeader":"","models":[]}"#,
                "stickyHeader",
                "not a valid HTTP header name",
            ),
            (
                r#"{"modelHeader":"x-ai-route","models":[]}"#,
                "modelHeader",
                "must differ",
            ),
            (r#"{"maxBodyBytes":0,"models":[]}"#, "maxBodyBytes", "greater than 0"),
            (r#"{"maxBodyBytes":-1,"models":[]}"#, "maxBodyBytes", "invalid value"),
            (
                r#"{"onUnknownModel":"drop","models":[]}"#,
                "onUnknownModel",
                "unknown variant `drop`",
            ),
            (
                r#"{"onOversize":"REJECT","models":[]}"#,
                "onOversize",
                "unknown variant",
            ),
            (
                r#"{"models":[{"name":"a;b","destinations":[{"name":"x"}]}]}"#,
                "models[0].name",
                "not allowed",
            ),
            (
                r#"{"models":[{"name":"a","destinations":[{"name":"x"},{"name":"x"}]}]}"#,
                "models[0].destinations[1].name",
                "duplicate destination",
            ),
            (
                r#"{"models":[{"name":"a","destinations":[{"name":"x","weight":1.5}]}]}"#,
                "models[0].destinations[0].weight",
                "invalid type",
            ),
            (r#"{}"#, ".", "missing field `models`"),
            (
                r#"{"models":[{"name":"a","destinations":[{"name":"x"}]}]} x"#,
                ".",
                "trailing",
            ),
            (r#"not json"#, ".", "expected"),
        ];
        for (json, path, needle) in cases {
            let e = err(json);
            assert_eq!(&e.path, path, "path for {json}: {e}");
            assert!(e.to_string().contains(needle), "message for {json}: {e}");
        }
    }

    #[test]
    fn access_and_limits() {
        let c = Config::from_json(
            br#"{"allow":["spiffe://td/ns/a/*"],"limits":{"requestsPerMinute":10},"identityHeader":"X-Client-Id",
                 "models":[{"name":"m","destinations":[{"name":"d"}]},
                           {"name":"n","allow":["*","spiffe://td/ns/b/sa/x"],"limits":{"tokensPerMinute":5,"by":"header:x-api-key"},"destinations":[{"name":"d"}]}]}"#,
        )
        .unwrap();
        let m = c.resolve("m").unwrap();
        assert_eq!(m.allow, Some(vec![AllowRule::Prefix("spiffe://td/ns/a/".into())]));
        assert_eq!(m.limits.as_ref().unwrap().by, LimitKey::Principal);
        let n = c.resolve("n").unwrap();
        assert_eq!(n.allow.as_ref().unwrap()[0], AllowRule::Any);
        assert_eq!(
            n.limits,
            Some(Limits {
                requests_per_minute: None,
                tokens_per_minute: Some(5),
                by: LimitKey::Header("x-api-key".into()),
                global: false,
            })
        );
        assert_eq!(c.identity_header.as_deref(), Some("x-client-id"));
        assert!(AllowRule::Prefix("spiffe://td/ns/a/".into()).matches("spiffe://td/ns/a/sa/web"));
        assert!(!AllowRule::Exact("spiffe://td/ns/a/sa/web".into()).matches("spiffe://td/ns/a/sa/web2"));

        for (json, path) in [
            (r#"{"allow":["team-a"],"models":[]}"#, "allow[0]"),
            (r#"{"allow":["spiffe://td/*/x"],"models":[]}"#, "allow[0]"),
            (
                r#"{"models":[{"name":"m","allow":["spiffe://a b"],"destinations":[{"name":"d"}]}]}"#,
                "models[0].allow[0]",
            ),
            (r#"{"limits":{},"models":[]}"#, "limits"),
            (
                r#"{"limits":{"requestsPerMinute":0},"models":[]}"#,
                "limits.requestsPerMinute",
            ),
            (
                r#"{"limits":{"requestsPerMinute":1,"by":"ip"},"models":[]}"#,
                "limits.by",
            ),
            (
                r#"{"limits":{"requestsPerMinute":1,"by":"header:bad header"},"models":[]}"#,
                "limits.by",
            ),
            (r#"{"limits":{"rpm":1},"models":[]}"#, "limits.rpm"),
        ] {
            assert_eq!(err(json).path, path, "{json}");
        }
    }

    #[test]
    fn scope_defaults_and_patterns() {
        let d = Scope::default();
        for (path, inside) in [
            ("/v1/chat/completions", true),
            ("/v1/chat/completions?x=1", true),
            ("/openai/v1/chat/completions", true),
            ("/v1/embeddings/", true),
            ("/v1/messages", true),
            ("/v2/models/resnet/infer", true),
            ("/v1/models/mnist:predict", true),
            ("/openai/deployments/gpt4o/chat/completions?api-version=1", true),
            ("/v1/models", true),
            ("/api/orders", false),
            ("/v1/products", false),
            ("/v1/chat/completions/extra", false),
            ("/", false),
            // Dressed up the ways servers still read as inference endpoints.
            ("/v1/chat/%63ompletions", true),
            ("/v1/chat%2Fcompletions", true),
            ("/v1/chat%2fcompletions?x=1", true),
            ("/V1/Chat/Completions", true),
            ("/v1//chat/completions", true),
            ("/v1/./chat/completions", true),
            ("/v1/x/../chat/completions", true),
            ("/v1/chat/completions/.", true),
            ("/v1/chat/completions;jsessionid=1", true),
            ("/v1/chat;x/completions", true),
            ("/v2/models/m/%69nfer", true),
            ("/v1/models/m%3Apredict", true),
            ("/v1/chat/completions/%2e%2e/%2e%2e/orders", false),
            ("/api/%6Frders", false),
            ("/v1/chat/completions%ff", false),
        ] {
            assert_eq!(d.contains("shop.example.com", path), inside, "{path}");
        }
        let prefixed = Config::from_json(br#"{"scope":{"paths":["/tokenize","/v1/"]},"models":[]}"#).unwrap();
        for (path, inside) in [
            ("/tokenize", true),
            ("/%74okenize", true),
            ("/TOKENIZE", true),
            ("//v1/x", true),
            ("/api/v1/x", false),
        ] {
            assert_eq!(prefixed.scope.contains("h", path), inside, "{path}");
        }
        let c = Config::from_json(
            br#"{"scope":{"hosts":["LLM.example.com","*.ai.svc.cluster.local"],"paths":["/"]},"models":[]}"#,
        )
        .unwrap();
        for (host, inside) in [
            ("llm.example.com", true),
            ("llm.example.com:8443", true),
            ("LLM.EXAMPLE.COM.", true),
            ("vllm.ai.svc.cluster.local:8000", true),
            ("ai.svc.cluster.local", false),
            ("evil-llm.example.com", false),
            ("[::1]:80", false),
            ("", false),
        ] {
            assert_eq!(c.scope.contains(host, "/anything"), inside, "{host}");
        }
        for (json, path) in [
            (r#"{"scope":{"hosts":[]},"models":[]}"#, "scope.hosts"),
            (r#"{"scope":{"hosts":["https://x"]},"models":[]}"#, "scope.hosts[0]"),
            (r#"{"scope":{"hosts":["x:80"]},"models":[]}"#, "scope.hosts[0]"),
            (r#"{"scope":{"paths":["v1/"]},"models":[]}"#, "scope.paths[0]"),
            (r#"{"scope":{"paths":[]},"models":[]}"#, "scope.paths"),
            (r#"{"scope":{"path":["/"]},"models":[]}"#, "scope.path"),
            (r#"{"estimatedOutputTokens":0,"models":[]}"#, "estimatedOutputTokens"),
        ] {
            assert_eq!(err(json).path, path, "{json}");
        }
    }

    #[test]
    fn yaml_style_deserializer_keeps_paths() {
        let v: serde_json::Value = serde_json::json!({"models": [{"name": "a", "destinations": [{"name": 3}]}]});
        let doc: Json = serde_json::from_value(v).unwrap();
        let e = Config::from_document(&doc).unwrap_err();
        assert_eq!(e.path, "models[0].destinations[0].name");
        assert_eq!(e.message, "invalid type: integer `3`, expected a string");
    }

    /// The reader and the serde declarations (which the JSON Schema is generated from) agree:
    /// same fields at every level, same defaults, same values.
    #[test]
    fn reader_agrees_with_the_serde_declarations() {
        let full = r#"{"routeHeader":"x-r","modelHeader":"x-m","maxBodyBytes":10,"onUnknownModel":"passthrough",
            "onMissingModel":"reject","onInvalidBody":"passthrough","onOversize":"reject","stickyHeader":"x-u",
            "bodyRouting":false,"injectStreamUsage":true,"scope":{"hosts":["a"],"paths":["/v1"]},
            "estimatedOutputTokens":7,"serveModelList":true,"responseHeaders":"route+model","restoreModelName":true,
            "inferenceModelHeader":"upstream","allow":["*"],"limits":{"requestsPerMinute":1,"tokensPerMinute":2,
            "by":"global","mode":"global"},"identityHeader":"x-id","rateLimitService":{"cluster":"c","domain":"d",
            "timeout":"1s","failureMode":"deny"},"filterState":true,
            "models":[{"name":"m","aliases":["a"],"upstreamModel":"u","allow":null,"limits":{"requestsPerMinute":3},
              "destinations":[{"name":"d","weight":2,"host":"h","subset":"s","port":80,"inferencePool":"p"},{"name":"e"}]}]}"#;
        let ours = |t: &str| read::config(&json::parse(t.as_bytes()).unwrap());
        let serde = |t: &str| serde_json::from_str::<RawConfig>(t);
        for t in [
            full,
            r#"{"models":[]}"#,
            r#"{"models":[{"name":"m","destinations":[{"name":"d"}]}]}"#,
        ] {
            assert_eq!(
                format!("{:?}", ours(t).unwrap()),
                format!("{:?}", serde(t).unwrap()),
                "{t}"
            );
        }
        // An unknown field at each level lists the known ones: serde's list, in its order.
        let bogus = [
            r#"{"models":[],"bogus":1}"#,
            r#"{"models":[],"scope":{"bogus":1}}"#,
            r#"{"models":[],"limits":{"bogus":1}}"#,
            r#"{"models":[],"rateLimitService":{"cluster":"c","bogus":1}}"#,
            r#"{"models":[{"name":"m","destinations":[],"bogus":1}]}"#,
            r#"{"models":[{"name":"m","destinations":[{"name":"d","bogus":1}]}]}"#,
            r#"{"models":[],"onOversize":"drop"}"#,
            r#"{"models":[],"responseHeaders":"all"}"#,
            r#"{"models":[],"inferenceModelHeader":"x"}"#,
            r#"{"models":[{"name":"m","destinations":[{"name":"d","weight":1.5}]}]}"#,
            r#"{"models":[{"name":"m","destinations":[{"name":"d","port":70000}]}]}"#,
            r#"{"models":[{"name":"m","destinations":[{"name":"d","weight":-1}]}]}"#,
            r#"{"models":[{"name":"m","aliases":null,"destinations":[]}]}"#,
            r#"{"models":[{"name":"m","destinations":"x"}]}"#,
            r#"{"models":[{"destinations":[]}]}"#,
            r#"{"models":[],"bodyRouting":"yes"}"#,
            r#"{"models":[],"scope":"all"}"#,
            r#"{"models":[],"maxBodyBytes":1,"maxBodyBytes":2}"#,
        ];
        for t in bogus {
            let theirs = serde_path_to_error::deserialize::<_, RawConfig>(&mut serde_json::Deserializer::from_str(t))
                .unwrap_err();
            let mine = ours(t).unwrap_err();
            let inner = theirs.inner().to_string();
            assert_eq!(mine.path, theirs.path().to_string().replace("?", ""), "{t}");
            assert_eq!(
                mine.message,
                inner[..inner.find(" at line").unwrap_or(inner.len())],
                "{t}"
            );
        }
    }

    #[test]
    fn global_limits_need_a_rate_limit_service_and_say_so() {
        let ok = Config::from_json(
            br#"{"rateLimitService":{"cluster":"outbound|8081||limitador.rl.svc.cluster.local","timeout":"1.5s"},
                "limits":{"requestsPerMinute":20,"mode":"global"},
                "models":[{"name":"m","destinations":[{"name":"d"}]}]}"#,
        )
        .unwrap();
        let r = ok.rate_limit_service.as_ref().unwrap();
        assert_eq!(
            (r.domain.as_str(), r.timeout_ms, r.deny_on_failure),
            ("model-router", 1500, false)
        );
        assert!(ok.models[0].limits.as_ref().unwrap().global);
        for (json, path, words) in [
            (
                r#"{"models":[{"name":"m","limits":{"requestsPerMinute":1,"mode":"global"},"destinations":[{"name":"d"}]}]}"#,
                "models[0].limits.mode",
                "rateLimitService.cluster",
            ),
            (
                r#"{"limits":{"requestsPerMinute":1,"mode":"shared"},"models":[]}"#,
                "limits.mode",
                "expected `local` or `global`",
            ),
            (
                r#"{"rateLimitService":{"cluster":"a b"},"models":[]}"#,
                "rateLimitService.cluster",
                "Envoy cluster",
            ),
            (
                r#"{"rateLimitService":{"cluster":"c","timeout":"20"},"models":[]}"#,
                "rateLimitService.timeout",
                "like `200ms`",
            ),
            (
                r#"{"rateLimitService":{"cluster":"c","timeout":"0ms"},"models":[]}"#,
                "rateLimitService.timeout",
                "between",
            ),
            (
                r#"{"rateLimitService":{"cluster":"c","timeout":"11s"},"models":[]}"#,
                "rateLimitService.timeout",
                "between",
            ),
            (
                r#"{"rateLimitService":{"cluster":"c","failureMode":"open"},"models":[]}"#,
                "rateLimitService.failureMode",
                "`allow` or `deny`",
            ),
            (
                r#"{"rateLimitService":{"cluster":"c","domain":""},"models":[]}"#,
                "rateLimitService.domain",
                "non-empty",
            ),
            (
                r#"{"rateLimitService":{"domain":"x"},"models":[]}"#,
                "rateLimitService",
                "cluster",
            ),
        ] {
            let e = Config::from_json(json.as_bytes()).unwrap_err();
            assert_eq!(e.path, path, "{json}");
            assert!(e.to_string().contains(words), "{json}: {e}");
        }
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("0.25s"), Some(250));
        assert_eq!(parse_duration_ms("2s"), Some(2000));
        assert_eq!(parse_duration_ms("1.2345s"), Some(1234));
        assert_eq!(parse_duration_ms("-1s"), None);
        assert_eq!(parse_duration_ms(".5s"), None);
        assert_eq!(parse_duration_ms("99999999999s"), None);
    }
}
