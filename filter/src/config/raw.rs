//! The configuration document's shape, declared once: each field with its doc comment, Rust name,
//! key, type, reader and presence (`required`, `optional`, or `or DEFAULT`). `config_struct!`
//! makes of each declaration the `Raw*` struct, its reader (`read`, with the list of its keys for
//! unknown-field errors) and, under the `schema` feature, its JSON Schema (`wasmpack schema`:
//! descriptions from the doc comments, defaults from the declared defaults, required fields);
//! `config_enum!` does the same for the enums of names (`Policy` …, in `super`).

use super::read::{boolean, invalid_type, list, name_index, string, u16_, u32_, u64_, Fields, R};
use super::{IdentitySource, InferenceModelHeader, Policy, ResponseHeaders};
use crate::json::Json;

/// A unit enum read by name (`config_enum!`).
pub(crate) trait Variants: Copy + 'static {
    /// The names, in the order of `VALUES`.
    const NAMES: &'static [&'static str];
    const VALUES: &'static [Self];
}

/// One of the names of `T`.
pub(crate) fn one<T: Variants>(v: &Json, path: &str) -> R<T> {
    let i = name_index(v, path, T::NAMES)?;
    // `NAMES` and `VALUES` have one length (`config_enum!`): never `None`.
    T::VALUES
        .get(i)
        .copied()
        .ok_or_else(|| invalid_type(v, path, "a string"))
}

/// A unit enum whose variants are read and written by name: `Variant = "name"`.
macro_rules! config_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $key:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $key)] $variant, )*
        }

        impl $crate::config::raw::Variants for $name {
            const NAMES: &'static [&'static str] = &[$($key),*];
            const VALUES: &'static [Self] = &[$($name::$variant),*];
        }
    };
}
pub(crate) use config_enum;

/// A configuration object. Each field: `name: Type = "key" (reader) PRESENCE,` where PRESENCE is
/// `required`, `optional` (absent or `null`: `None`; the type is an `Option`) or `or EXPR` (absent:
/// `EXPR`; `null` is a wrong type). The fields are read in their order (the first error wins).
macro_rules! config_struct {
    // Normalise each field to `{ [docs] [schema attributes] name [Type] "key" [reader] [presence] }`.
    (@munch $head:tt [$($done:tt)*]) => {
        config_struct!(@emit $head [$($done)*]);
    };
    (@munch $head:tt [$($done:tt)*]
        $(#[$doc:meta])* $field:ident : $ty:ty = $key:literal ($read:expr) required, $($rest:tt)*) => {
        config_struct!(@munch $head [$($done)*
            { [$(#[$doc])*] [] $field [$ty] $key [$read] [required] }
        ] $($rest)*);
    };
    (@munch $head:tt [$($done:tt)*]
        $(#[$doc:meta])* $field:ident : $ty:ty = $key:literal ($read:expr) optional, $($rest:tt)*) => {
        config_struct!(@munch $head [$($done)*
            // `null` as the schema's default, when the type serialises (not for nested objects).
            { [$(#[$doc])*] [#[cfg_attr(feature = "schema", schemars(default))]] $field [$ty] $key [$read] [optional] }
        ] $($rest)*);
    };
    (@munch $head:tt [$($done:tt)*]
        $(#[$doc:meta])* $field:ident : $ty:ty = $key:literal ($read:expr) or $default:expr, $($rest:tt)*) => {
        config_struct!(@munch $head [$($done)*
            // `default = "no_default"` makes the field optional in the schema without a value of
            // its own; the value is the declared default (`extend` applies last).
            { [$(#[$doc])*]
              [#[cfg_attr(feature = "schema", schemars(default = "no_default", extend("default" = ({ let d: $ty = $default; d }))))]]
              $field [$ty] $key [$read] [or $default] }
        ] $($rest)*);
    };
    (@emit [$(#[$meta:meta])* $name:ident] [$(
        { [$(#[$doc:meta])*] [$(#[$attr:meta])*] $field:ident [$ty:ty] $key:literal [$read:expr] [$($presence:tt)*] }
    )*]) => {
        $(#[$meta])*
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        #[cfg_attr(feature = "schema", schemars(deny_unknown_fields))]
        #[derive(Debug)]
        pub struct $name {
            $(
                $(#[$doc])*
                $(#[$attr])*
                #[cfg_attr(feature = "schema", schemars(rename = $key))]
                pub $field: $ty,
            )*
        }

        impl $name {
            /// Its keys, in declaration order (serde's list in an unknown-field error).
            pub const KEYS: &'static [&'static str] = &[$($key),*];

            /// Its required keys, in declaration order.
            #[cfg(all(test, feature = "schema"))]
            pub fn required() -> Vec<&'static str> {
                let mut keys = Vec::new();
                $( if config_struct!(@required $($presence)*) { keys.push($key); } )*
                keys
            }

            /// Reads the object at `path`.
            #[inline(never)]
            pub(crate) fn read(v: &Json, path: &str) -> R<Self> {
                let f = Fields::of(v, path, concat!("struct ", stringify!($name)), Self::KEYS)?;
                Ok($name {
                    $( $field: config_struct!(@read f $key [$read] $($presence)*), )*
                })
            }
        }
    };
    (@required required) => { true };
    (@required $($other:tt)*) => { false };
    (@read $f:ident $key:literal [$read:expr] required) => { $f.req($key, $read)? };
    (@read $f:ident $key:literal [$read:expr] optional) => { $f.opt($key, $read)? };
    (@read $f:ident $key:literal [$read:expr] or $default:expr) => { $f.or($key, $read, $default)? };
    // Entry: `[attributes] pub struct Name { fields }`.
    ($(#[$meta:meta])* pub struct $name:ident { $($fields:tt)* }) => {
        config_struct!(@munch [$(#[$meta])* $name] [] $($fields)*);
    };
}

/// What a field declared `or` gives the derive as its own default: nothing to put in the schema
/// (not `Serialize`); the declared default is put there instead.
#[cfg(feature = "schema")]
struct NoDefault;

#[cfg(feature = "schema")]
fn no_default() -> NoDefault {
    NoDefault
}

config_struct! {
    pub struct RawConfig {
        /// Request header set to the chosen destination's name (default `x-ai-route`).
        route_header: String = "routeHeader" (string) or "x-ai-route".into(),
        /// Request header set to the canonical model name (default `x-ai-model`).
        model_header: String = "modelHeader" (string) or "x-ai-model".into(),
        /// Most request-body bytes the filter reads (default 1 MiB); see `onOversize`.
        #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
        max_body_bytes: u64 = "maxBodyBytes" (u64_) or 1024 * 1024,
        /// A model that is neither a name nor an alias: 404 `model_not_found`, or let it through unrouted.
        on_unknown_model: Policy = "onUnknownModel" (one) or Policy::Reject,
        /// A request without a model: 400 `model_required`, or let it through unrouted. Default:
        /// `reject` when some model has access rules or limits (fail closed), else `passthrough`.
        on_missing_model: Option<Policy> = "onMissingModel" (one) optional,
        /// A body that is not valid JSON: 400 `invalid_json`, or let it through unrouted.
        on_invalid_body: Policy = "onInvalidBody" (one) or Policy::Reject,
        /// A body larger than `maxBodyBytes`: 413 `body_too_large`, or let it through unread.
        /// Default: `reject` when some model has access rules or limits (fail closed), else
        /// `passthrough`.
        on_oversize: Option<Policy> = "onOversize" (one) optional,
        /// Requests with the same value of this header get the same destination of a model.
        sticky_header: Option<String> = "stickyHeader" (string) optional,
        /// Hold request headers until the body's model is known, then route on it (default true).
        body_routing: bool = "bodyRouting" (boolean) or true,
        /// Make every streaming chat/completions request report its usage (always for token-limited models).
        inject_stream_usage: bool = "injectStreamUsage" (boolean) or false,
        /// Which requests the filter looks at (authorities and path prefixes).
        scope: Option<RawScope> = "scope" (RawScope::read) optional,
        /// Output tokens charged for a response whose usage could not be read, when the request did
        /// not say its `max_tokens`.
        #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
        estimated_output_tokens: u64 = "estimatedOutputTokens" (u64_) or 4096,
        /// Answer `GET /v1/models` and `GET /v1/models/{id}` from the configuration.
        serve_model_list: bool = "serveModelList" (boolean) or false,
        /// Which decision headers the response carries to the client.
        response_headers: ResponseHeaders = "responseHeaders" (one) or ResponseHeaders::Route,
        /// Put the client's model name back into responses when `upstreamModel` rewrote it.
        restore_model_name: bool = "restoreModelName" (boolean) or false,
        /// Set `X-Gateway-Model-Name` (Gateway API Inference Extension) to the routed model.
        inference_model_header: InferenceModelHeader = "inferenceModelHeader" (one) or InferenceModelHeader::None,
        /// Default allow list for models without their own.
        allow: Option<Vec<String>> = "allow" (list(string)) optional,
        /// Default limits for models without their own.
        limits: Option<RawLimits> = "limits" (RawLimits::read) optional,
        /// A request header carrying the caller's SPIFFE ID, trusted when the identity source finds
        /// none (no mTLS peer), or the only source with `identitySource: header`.
        identity_header: Option<String> = "identityHeader" (string) optional,
        /// Where the caller's identity comes from (default `auto`: decided by where the filter runs).
        identity_source: IdentitySource = "identitySource" (one) or IdentitySource::Auto,
        /// The mesh's trust domain, for the identity of a sidecar's own workload (default `cluster.local`).
        trust_domain: String = "trustDomain" (string) or "cluster.local".into(),
        /// The rate limit service that counts `mode: global` limits for every proxy (Envoy's RLS
        /// protocol; Limitador for token limits).
        rate_limit_service: Option<RawRateLimitService> = "rateLimitService" (RawRateLimitService::read) optional,
        /// Store model, destination and token counts as filter state for access logs
        /// (`%FILTER_STATE(wasm.model_router.model:PLAIN)%` …); off by default: four writes into the
        /// proxy per request that only an access log reads.
        filter_state: bool = "filterState" (boolean) or false,
        /// Destination health and failover (docs/failover.md); off when absent.
        failover: Option<RawFailover> = "failover" (RawFailover::read) optional,
        /// The models the filter knows.
        models: Vec<RawModel> = "models" (list(RawModel::read)) required,
    }
}

config_struct! {
    pub struct RawScope {
        /// `:authority` names or `*.domain` patterns (port ignored).
        hosts: Option<Vec<String>> = "hosts" (list(string)) optional,
        /// Path prefixes (`["/"]`: all); default: the inference endpoints.
        paths: Option<Vec<String>> = "paths" (list(string)) optional,
    }
}

config_struct! {
    pub struct RawLimits {
        /// Requests per minute (a token bucket).
        #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
        requests_per_minute: Option<u64> = "requestsPerMinute" (u64_) optional,
        /// Input + output tokens per minute, charged as responses end.
        #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
        tokens_per_minute: Option<u64> = "tokensPerMinute" (u64_) optional,
        /// `principal` (default), `global`, or `header:NAME`.
        #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^(principal|global|header:.+)$")))]
        by: Option<String> = "by" (string) optional,
        /// `local` (default): counted in each proxy; `global`: counted by `rateLimitService`, shared by every proxy.
        #[cfg_attr(feature = "schema", schemars(extend("enum" = ["local", "global", null])))]
        mode: Option<String> = "mode" (string) optional,
    }
}

config_struct! {
    pub struct RawRateLimitService {
        /// The Envoy cluster of the service, as Envoy names it (Istio: `outbound|8081||limitador.NS.svc.cluster.local`).
        cluster: String = "cluster" (string) required,
        /// The RLS domain (Limitador's namespace) of the limits (default `model-router`).
        domain: String = "domain" (string) or "model-router".into(),
        /// How long a request waits for an answer: `200ms` (default), `1s`; at most `10s`.
        #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^\s*[0-9]+(\.[0-9]*)?\s*(ms|s|m|h)\s*$")))]
        timeout: Option<String> = "timeout" (string) optional,
        /// When the service cannot answer in time: `allow` (default) or `deny` (503).
        #[cfg_attr(feature = "schema", schemars(extend("enum" = ["allow", "deny", null])))]
        failure_mode: Option<String> = "failureMode" (string) optional,
    }
}

config_struct! {
    pub struct RawModel {
        /// Canonical model name (label value of the metrics, value of `modelHeader`).
        name: String = "name" (string) required,
        /// Other names clients may send.
        aliases: Vec<String> = "aliases" (list(string)) or Vec::new(),
        /// Rewrite the body's `model` to this before it goes upstream.
        upstream_model: Option<String> = "upstreamModel" (string) optional,
        /// SPIFFE IDs allowed to use this model (`*`, or a prefix ending in `*`).
        allow: Option<Vec<String>> = "allow" (list(string)) optional,
        /// This model's rate limits.
        limits: Option<RawLimits> = "limits" (RawLimits::read) optional,
        /// Weighted split across backends (at least one).
        #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
        destinations: Vec<RawDestination> = "destinations" (list(RawDestination::read)) required,
        /// Where its requests go, in order, when all its destinations are open (needs `failover`).
        fallbacks: Option<Vec<RawFallback>> = "fallbacks" (list(RawFallback::read)) optional,
    }
}

config_struct! {
    pub struct RawDestination {
        /// Value of `routeHeader` for this destination.
        name: String = "name" (string) required,
        /// Relative weight (default 1).
        weight: u32 = "weight" (u32_) or 1,
        /// The Kubernetes Service serving it (for `wasmpack manifests`; the filter ignores it).
        host: Option<String> = "host" (string) optional,
        /// The DestinationRule subset (sidecar installs).
        subset: Option<String> = "subset" (string) optional,
        /// The Service port.
        port: Option<u16> = "port" (u16_) optional,
        /// An InferencePool (Gateway API Inference Extension) serving it instead of a Service:
        /// gateway routes send there (for `wasmpack manifests`; the filter ignores it).
        inference_pool: Option<String> = "inferencePool" (string) optional,
        /// Where its requests go first, in order, while it is open (needs `failover`).
        fallbacks: Option<Vec<RawFallback>> = "fallbacks" (list(RawFallback::read)) optional,
    }
}

config_struct! {
    /// `failover`: when a destination stops getting new requests, and when it is tried again.
    pub struct RawFailover {
        /// Failures in a row that open a destination's breaker (default 5).
        #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1000)))]
        consecutive_failures: Option<u64> = "consecutiveFailures" (u64_) optional,
        /// How long an open destination gets no new requests, the first time (default `5s`); it
        /// doubles each time the destination opens again before it recovered.
        #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^\s*[0-9]+(\.[0-9]*)?\s*(ms|s|m|h)\s*$")))]
        probation: Option<String> = "probation" (string) optional,
        /// The longest probation (default `60s`, or `probation` when that is longer).
        #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^\s*[0-9]+(\.[0-9]*)?\s*(ms|s|m|h)\s*$")))]
        max_probation: Option<String> = "maxProbation" (string) optional,
        /// Successful trial requests after a probation that close the breaker (default 1).
        #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 100)))]
        trial_requests: Option<u64> = "trialRequests" (u64_) optional,
        /// Response statuses that count as failures (default `[500, 502, 503, 504]`; add 429 to fail
        /// over from a rate-limited backend). Upstream resets and connect failures always count.
        #[cfg_attr(feature = "schema", schemars(inner(range(min = 400, max = 599))))]
        failure_statuses: Option<Vec<u64>> = "failureStatuses" (list(u64_)) optional,
        /// A response whose headers come later than this after the request went upstream counts as
        /// a failure (`30s`; default: none). The request itself is not cut short.
        #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^\s*[0-9]+(\.[0-9]*)?\s*(ms|s|m|h)\s*$")))]
        first_byte_timeout: Option<String> = "firstByteTimeout" (string) optional,
    }
}

config_struct! {
    /// One entry of `fallbacks`.
    pub struct RawFallback {
        /// A configured model (canonical name or alias); its `upstreamModel` rewrite applies.
        model: String = "model" (string) required,
        /// One of its destinations (default: its destinations by their weights).
        destination: Option<String> = "destination" (string) optional,
    }
}
