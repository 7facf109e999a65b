//! Plugin configuration: parsed once, validated, then immutable.
//!
//! Every rejection names the field path (`models[1].destinations[0].weight`), so that both the
//! filter's log line and `wasmpack check` point at the exact spot.
//!
//! | module | job |
//! |---|---|
//! | `mod.rs` | the runtime types (`Config` …) and the public API |
//! | `raw.rs` | the document's shape, one declaration per field: the `Raw*` structs, their readers and their JSON Schema |
//! | `read.rs` | the reader's primitives (strings, numbers, lists, names, an object's keys) |
//! | `validate.rs` | the `Raw*` values checked and turned into a `Config` |
//! | `error.rs` | `ConfigError`: the field path and an `ErrorKind` |

use std::collections::HashMap;

mod error;
mod raw;
mod read;
mod validate;

pub use crate::failover::Failover;
use crate::failover::Fallback;
use crate::json::{self, Json};
pub use error::{ConfigError, ErrorKind};
pub(crate) use raw::{RawFailover, RawFallback};

raw::config_enum! {
    /// Which of the filter's decision headers leave the proxy on the response.
    #[derive(Default)]
    pub enum ResponseHeaders {
        /// None: the decision stays inside the mesh (metrics, access log); client-visible
        /// `x-ai-route` / `x-ai-model` a backend may send are removed too.
        None = "none",
        /// `x-ai-route` (the destination), when the filter routed the request.
        #[default]
        Route = "route",
        /// `x-ai-route` and `x-ai-model` (the canonical model).
        RouteAndModel = "route+model",
    }
}

raw::config_enum! {
    /// What the filter puts in `X-Gateway-Model-Name`, the header by which the Gateway API Inference
    /// Extension routes to an `InferencePool` (the filter is then its body-based router).
    #[derive(Default)]
    pub enum InferenceModelHeader {
        /// Not set (and not touched).
        #[default]
        None = "none",
        /// The canonical model name.
        Canonical = "canonical",
        /// The name the backend is sent (`upstreamModel`, else the canonical name).
        Upstream = "upstream",
    }
}

/// The header of the Gateway API Inference Extension.
pub const INFERENCE_MODEL_HEADER: &str = "x-gateway-model-name";

raw::config_enum! {
    /// Where the caller's SPIFFE identity comes from (docs/access-control.md, "Who the caller is").
    #[derive(Default)]
    pub enum IdentitySource {
        /// Decided where the filter runs, from Envoy's `node` and `listener_direction`: a sidecar's
        /// outbound listener → `workload`; a waypoint → `peerPrincipal`; anything else (a sidecar's
        /// inbound listener, a gateway, plain Envoy) → `peerCertificate`, then Istio's peer-principal
        /// filter state.
        #[default]
        Auto = "auto",
        /// The mTLS peer's certificate (`connection.uri_san_peer_certificate`): inbound listeners and
        /// gateways with client mTLS.
        PeerCertificate = "peerCertificate",
        /// The sidecar's own workload, `spiffe://<trustDomain>/ns/<NAMESPACE>/sa/<SERVICE_ACCOUNT>`
        /// from the node metadata Istio's agent writes: the callers' sidecars (outbound), where the
        /// app talks plaintext to its own proxy. Never on a gateway or waypoint, never inbound.
        Workload = "workload",
        /// Istio's filter state `io.istio.peer_principal`: ambient waypoints (HBONE from ztunnel).
        PeerPrincipal = "peerPrincipal",
        /// Only `identityHeader`, set by a trusted proxy in front (e.g. an authenticating gateway).
        Header = "header",
    }
}

raw::config_enum! {
    /// What to do with a request in a given bad situation.
    pub enum Policy {
        Reject = "reject",
        Passthrough = "passthrough",
    }
}

/// The JSON Schema of the plugin configuration, generated from the types the parser reads (so
/// it cannot drift): for editors and YAML language servers (`wasmpack schema`).
#[cfg(feature = "schema")]
pub fn json_schema() -> serde_json::Value {
    let mut s = serde_json::to_value(schemars::schema_for!(raw::RawConfig)).unwrap_or_default();
    if let Some(o) = s.as_object_mut() {
        o.insert("title".into(), "model-router plugin configuration".into());
        o.insert(
            "description".into(),
            "The configuration of the model-router proxy-wasm filter (docs/configuration.md).".into(),
        );
    }
    s
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
            ConfigError::syntax(if e.message == "trailing characters" {
                format!("trailing data after the configuration: {e}")
            } else {
                e.to_string()
            })
        })?;
        Config::from_document(&doc)
    }

    /// Reads and validates a parsed document (the CLI reads YAML into one), keeping field paths.
    pub fn from_document(doc: &Json) -> Result<Config, ConfigError> {
        validate::validate(raw::RawConfig::read(doc, ".")?)
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

pub(crate) use validate::parse_duration_ms;

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
        assert_eq!(
            e.kind,
            ErrorKind::InvalidType {
                found: "integer `3`".into(),
                expected: "a string"
            }
        );
        assert_eq!(e.kind.to_string(), "invalid type: integer `3`, expected a string");
    }

    /// The reader's errors, worded as serde worded them when it read these structs (the messages
    /// were recorded from serde_json with serde_path_to_error): `wasmpack check`, its snapshots and
    /// the filter's log line depend on the wording.
    #[test]
    fn errors_keep_serdes_wording_and_paths() {
        let cases = [
            (
                r#"{"models":[],"bogus":1}"#,
                "bogus",
                "unknown field `bogus`, expected one of `routeHeader`, `modelHeader`, `maxBodyBytes`, `onUnknownModel`, `onMissingModel`, `onInvalidBody`, `onOversize`, `stickyHeader`, `bodyRouting`, `injectStreamUsage`, `scope`, `estimatedOutputTokens`, `serveModelList`, `responseHeaders`, `restoreModelName`, `inferenceModelHeader`, `allow`, `limits`, `identityHeader`, `identitySource`, `trustDomain`, `rateLimitService`, `filterState`, `failover`, `models`",
            ),
            (
                r#"{"models":[],"scope":{"bogus":1}}"#,
                "scope.bogus",
                "unknown field `bogus`, expected `hosts` or `paths`",
            ),
            (
                r#"{"models":[],"limits":{"bogus":1}}"#,
                "limits.bogus",
                "unknown field `bogus`, expected one of `requestsPerMinute`, `tokensPerMinute`, `by`, `mode`",
            ),
            (
                r#"{"models":[],"rateLimitService":{"cluster":"c","bogus":1}}"#,
                "rateLimitService.bogus",
                "unknown field `bogus`, expected one of `cluster`, `domain`, `timeout`, `failureMode`",
            ),
            (
                r#"{"models":[],"failover":{"bogus":1}}"#,
                "failover.bogus",
                "unknown field `bogus`, expected one of `consecutiveFailures`, `probation`, `maxProbation`, `trialRequests`, `failureStatuses`, `firstByteTimeout`",
            ),
            (
                r#"{"models":[{"name":"m","destinations":[],"bogus":1}]}"#,
                "models[0].bogus",
                "unknown field `bogus`, expected one of `name`, `aliases`, `upstreamModel`, `allow`, `limits`, `destinations`, `fallbacks`",
            ),
            (
                r#"{"models":[{"name":"m","destinations":[{"name":"d","bogus":1}]}]}"#,
                "models[0].destinations[0].bogus",
                "unknown field `bogus`, expected one of `name`, `weight`, `host`, `subset`, `port`, `inferencePool`, `fallbacks`",
            ),
            (
                r#"{"models":[{"name":"m","destinations":[],"fallbacks":[{"model":"x","bogus":1}]}]}"#,
                "models[0].fallbacks[0].bogus",
                "unknown field `bogus`, expected `model` or `destination`",
            ),
            (
                r#"{"models":[],"onOversize":"drop"}"#,
                "onOversize",
                "unknown variant `drop`, expected `reject` or `passthrough`",
            ),
            (
                r#"{"models":[],"responseHeaders":"all"}"#,
                "responseHeaders",
                "unknown variant `all`, expected one of `none`, `route`, `route+model`",
            ),
            (
                r#"{"models":[],"inferenceModelHeader":"x"}"#,
                "inferenceModelHeader",
                "unknown variant `x`, expected one of `none`, `canonical`, `upstream`",
            ),
            (
                r#"{"models":[],"identitySource":"x"}"#,
                "identitySource",
                "unknown variant `x`, expected one of `auto`, `peerCertificate`, `workload`, `peerPrincipal`, `header`",
            ),
            (
                r#"{"models":[{"name":"m","destinations":[{"name":"d","weight":1.5}]}]}"#,
                "models[0].destinations[0].weight",
                "invalid type: floating point `1.5`, expected u32",
            ),
            (
                r#"{"models":[{"name":"m","destinations":[{"name":"d","port":70000}]}]}"#,
                "models[0].destinations[0].port",
                "invalid value: integer `70000`, expected u16",
            ),
            (
                r#"{"models":[{"name":"m","destinations":[{"name":"d","weight":-1}]}]}"#,
                "models[0].destinations[0].weight",
                "invalid value: integer `-1`, expected u32",
            ),
            (
                r#"{"models":[{"name":"m","aliases":null,"destinations":[]}]}"#,
                "models[0].aliases",
                "invalid type: null, expected a sequence",
            ),
            (
                r#"{"models":[{"name":"m","destinations":"x"}]}"#,
                "models[0].destinations",
                r#"invalid type: string "x", expected a sequence"#,
            ),
            (
                r#"{"models":[{"destinations":[]}]}"#,
                "models[0]",
                "missing field `name`",
            ),
            (
                r#"{"models":[],"bodyRouting":"yes"}"#,
                "bodyRouting",
                r#"invalid type: string "yes", expected a boolean"#,
            ),
            (
                r#"{"models":[],"scope":"all"}"#,
                "scope",
                r#"invalid type: string "all", expected struct RawScope"#,
            ),
            (
                r#"{"models":[],"maxBodyBytes":1,"maxBodyBytes":2}"#,
                ".",
                "duplicate field `maxBodyBytes`",
            ),
            (
                r#"{"models":[],"rateLimitService":{}}"#,
                "rateLimitService",
                "missing field `cluster`",
            ),
            (
                r#"{"models":[],"failover":{"failureStatuses":[500,"x"]}}"#,
                "failover.failureStatuses[1]",
                r#"invalid type: string "x", expected u64"#,
            ),
            (
                "[]",
                ".",
                "invalid type: sequence, expected struct RawConfig",
            ),
            (
                r#"{"models":[],"routeHeader":null}"#,
                "routeHeader",
                "invalid type: null, expected a string",
            ),
            (
                r#"{"models":[{"name":"m","destinations":[]}],"allow":[1]}"#,
                "allow[0]",
                "invalid type: integer `1`, expected a string",
            ),
            (
                r#"{"models":[{"name":"m","destinations":[{"name":"d"}],"fallbacks":[{}]}]}"#,
                "models[0].fallbacks[0]",
                "missing field `model`",
            ),
        ];
        for (json, path, message) in cases {
            let e = err(json);
            assert_eq!(
                (e.path.as_str(), e.kind.to_string().as_str()),
                (path, message),
                "{json}"
            );
            assert_eq!(e.to_string(), format!("{path}: {message}"));
        }
        // The kinds, as data.
        assert_eq!(
            err(r#"{"models":[],"onOversize":"drop"}"#).kind,
            ErrorKind::UnknownVariant {
                variant: "drop".into(),
                expected: &["reject", "passthrough"]
            }
        );
        assert_eq!(
            err(r#"{"models":[{"destinations":[]}]}"#).kind,
            ErrorKind::MissingField { field: "name" }
        );
        assert_eq!(
            err(r#"{"models":[],"maxBodyBytes":1,"maxBodyBytes":2}"#).kind,
            ErrorKind::DuplicateField {
                field: "maxBodyBytes".into()
            }
        );
        assert!(matches!(
            err(r#"{"models":[],"scope":{"bogus":1}}"#).kind,
            ErrorKind::UnknownField { ref field, expected: &["hosts", "paths"] } if field == "bogus"
        ));
        assert_eq!(
            err(r#"{"models":[{"name":"m","destinations":[{"name":"d","port":70000}]}]}"#).kind,
            ErrorKind::InvalidValue {
                found: "integer `70000`".into(),
                expected: "u16"
            }
        );
        assert!(matches!(
            err(r#"{"maxBodyBytes":0,"models":[]}"#).kind,
            ErrorKind::Invalid(_)
        ));
        assert!(matches!(err("not json").kind, ErrorKind::Syntax(_)));
    }

    /// What the reader reads is what the JSON Schema (`wasmpack schema`) describes: the same keys
    /// and the same required keys in every object, and no other key allowed.
    #[cfg(feature = "schema")]
    #[test]
    fn the_schema_describes_what_the_reader_reads() {
        use raw::*;
        let schema = json_schema();
        let readers: [(&str, &[&str], Vec<&str>); 8] = [
            ("RawConfig", RawConfig::KEYS, RawConfig::required()),
            ("RawScope", RawScope::KEYS, RawScope::required()),
            ("RawLimits", RawLimits::KEYS, RawLimits::required()),
            (
                "RawRateLimitService",
                RawRateLimitService::KEYS,
                RawRateLimitService::required(),
            ),
            ("RawModel", RawModel::KEYS, RawModel::required()),
            ("RawDestination", RawDestination::KEYS, RawDestination::required()),
            ("RawFailover", RawFailover::KEYS, RawFailover::required()),
            ("RawFallback", RawFallback::KEYS, RawFallback::required()),
        ];
        let defs = schema["$defs"].as_object().unwrap();
        let objects: Vec<&str> = defs
            .iter()
            .filter(|(_, d)| d.get("properties").is_some())
            .map(|(n, _)| n.as_str())
            .collect();
        let mut named: Vec<&str> = readers.iter().map(|r| r.0).filter(|n| *n != "RawConfig").collect();
        named.sort_unstable();
        assert_eq!(objects, named, "every object of the schema has a reader here");
        for (name, keys, required) in readers {
            let s = if name == "RawConfig" { &schema } else { &defs[name] };
            let mut properties: Vec<&str> = s["properties"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let mut keys = keys.to_vec();
            properties.sort_unstable();
            keys.sort_unstable();
            assert_eq!(properties, keys, "{name}: keys");
            let listed: Vec<&str> = s
                .get("required")
                .and_then(|r| r.as_array())
                .map(|r| r.iter().filter_map(|k| k.as_str()).collect())
                .unwrap_or_default();
            assert_eq!(listed, required, "{name}: required keys");
            assert_eq!(s["additionalProperties"], false, "{name}: unknown keys refused");
        }
        // Defaults: the declared ones, as the reader applies them.
        let p = &schema["properties"];
        assert_eq!(p["routeHeader"]["default"], "x-ai-route");
        assert_eq!(p["maxBodyBytes"]["default"], 1_048_576);
        assert_eq!(p["onUnknownModel"]["default"], "reject");
        assert_eq!(p["responseHeaders"]["default"], "route");
        assert_eq!(p["stickyHeader"]["default"], serde_json::Value::Null);
        assert!(p["scope"].get("default").is_none(), "no default for an object");
        assert!(p["models"].get("default").is_none(), "none for a required field");
        assert_eq!(
            defs["RawModel"]["properties"]["aliases"]["default"],
            serde_json::json!([])
        );
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
