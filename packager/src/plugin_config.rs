//! Loading a plugin configuration file (YAML or JSON) with the filter's own parser.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use model_router::config::{Config, ConfigError, ErrorKind};
use serde_json::Value;

/// The known name closest to a misspelt one (`did you mean`), as configuration errors suggest it.
pub(crate) use config_yaml::closest;
use config_yaml::{shown, shown_path, words};
pub use config_yaml::{At, Places};

pub struct Loaded {
    pub config: Config,
    /// The configuration as JSON, exactly as the filter will receive it.
    pub json: Value,
}

pub fn load(path: &Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    read(&text).map_err(|(e, at)| {
        let at = at.map(|a| format!(":{}:{}", a.line, a.column)).unwrap_or_default();
        anyhow!("{}{at}: {}", path.display(), human(&e))
    })
}

/// A problem in a configuration file, as data (`check --output json`): what is wrong, the field
/// path (`models[0].name`; empty for the file as a whole), and where in the file when known;
/// `kind` says which problem it is (the core's `ErrorKind` name for a parser error, `invalid`
/// for a problem `manifests` would find, `warning`, or `unreadable`), with what was `expected`
/// and `found` where the kind has them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub message: String,
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub kind: &'static str,
    /// A type (`u32`, `a string`) for `invalidType`/`invalidValue`; the names allowed (a list)
    /// for `unknownField`/`unknownVariant`; the field for `missingField`/`duplicateField`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<Box<Value>>,
    /// What the file has instead: the value as the parser describes it (`floating point `1.5``),
    /// the unknown key or name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<Box<str>>,
}

impl Diagnostic {
    /// A problem (an error `render::plan` found, or a warning: `kind`) at a field path, placed in
    /// the file by the parser's positions.
    pub fn at(places: &Places, path: &str, message: &str, kind: &'static str) -> Diagnostic {
        let at = places.locate(path);
        Diagnostic {
            message: message.to_string(),
            path: shown(path).to_string(),
            line: at.map(|a| a.line),
            column: at.map(|a| a.column),
            kind,
            expected: None,
            found: None,
        }
    }

    /// The core's error, in a user's words (`config_yaml::words`, as the playground shows it), with
    /// its kind's data.
    fn of(e: &ConfigError, at: Option<At>) -> Diagnostic {
        let (expected, found) = match &e.kind {
            ErrorKind::InvalidType { found, expected } | ErrorKind::InvalidValue { found, expected } => {
                (Some(Value::from(*expected)), Some(found.clone()))
            }
            ErrorKind::UnknownField { field, expected } => (Some(Value::from(expected.to_vec())), Some(field.clone())),
            ErrorKind::UnknownVariant { variant, expected } => {
                (Some(Value::from(expected.to_vec())), Some(variant.clone()))
            }
            ErrorKind::MissingField { field } => (Some(Value::from(*field)), None),
            ErrorKind::DuplicateField { field } => (Some(Value::from(field.as_str())), None),
            ErrorKind::Syntax(_) | ErrorKind::Invalid(_) => (None, None),
        };
        let (expected, found) = (expected.map(Box::new), found.map(String::into_boxed_str));
        Diagnostic {
            message: words(&e.kind),
            path: shown_path(e).to_string(),
            line: at.map(|a| a.line),
            column: at.map(|a| a.column),
            kind: e.kind.name(),
            expected,
            found,
        }
    }
}

/// `load`, with the problem as data: a file that cannot be read says why (the OS error), a
/// parser error its field path, line and column.
pub fn load_diagnosed(path: &Path) -> Result<Loaded, Diagnostic> {
    let text = std::fs::read_to_string(path).map_err(|e| Diagnostic {
        message: format!("reading {}: {e}", path.display()),
        path: String::new(),
        line: None,
        column: None,
        kind: "unreadable",
        expected: None,
        found: None,
    })?;
    read(&text).map_err(|(e, at)| Diagnostic::of(&e, at))
}

/// YAML is a superset of JSON, so one reader takes both (`config_yaml`, the playground's too).
/// Errors name the field path; the position is the YAML reader's for a file that is not YAML,
/// else the field's, from the parser's positions (`Places`).
fn read(text: &str) -> Result<Loaded, (ConfigError, Option<At>)> {
    let (config, doc) = config_yaml::config(text)?;
    // The text the filter receives, read back as a value (the YAML is parsed once).
    let json: Value = serde_json::from_str(&doc.to_string()).map_err(|e| (ConfigError::syntax(e.to_string()), None))?;
    Ok(Loaded { config, json })
}

/// Reads a configuration (YAML or JSON) with the filter's own parser.
pub fn parse(text: &str) -> Result<Loaded, ConfigError> {
    read(text).map_err(|(e, _)| e)
}

/// A parser error for people, to follow the file name and position: `path: what is wrong`, the
/// path once, types in words, and a suggestion for a misspelt field or value.
pub fn human(e: &ConfigError) -> String {
    let msg = words(&e.kind);
    match shown_path(e) {
        "" => msg,
        path => format!("{path}: {msg}"),
    }
}

/// Headers that are unique per request (so stickiness never happens) or never reach the filter.
const NOT_STICKY: &[&str] = &[
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-cloud-trace-context",
    "content-length",
    "date",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
];

/// Settings that are valid but risky: (field path, message).
/// What global limits send, and what they cost when the service fails.
fn global_limit_warnings(config: &Config) -> Vec<(String, String)> {
    let mut w = Vec::new();
    if config.rate_limit_service.is_none() {
        return w;
    }
    let globals: Vec<(usize, &model_router::config::Limits)> = config
        .models
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.limits.as_ref().filter(|l| l.global).map(|l| (i, l)))
        .collect();
    if globals.is_empty() {
        w.push((
            "rateLimitService".into(),
            "no limit has `mode: global`: the service is never called".into(),
        ));
    }
    if let Some((i, l)) = globals
        .iter()
        .find(|(_, l)| matches!(l.by, model_router::config::LimitKey::Header(_)))
    {
        if let model_router::config::LimitKey::Header(h) = &l.by {
            w.push((
                format!("models[{i}].limits.by"),
                format!(
                    "a global limit by header `{h}` sends its value to the rate limit service (and its Redis) as \
                     the `caller` descriptor: use a header that names the caller (a tenant or key id), not a secret"
                ),
            ));
        }
    }
    w
}

pub fn warnings(config: &Config) -> Vec<(String, String)> {
    let mut w = Vec::new();
    if !config.body_routing {
        w.push((
            "bodyRouting".into(),
            "is off: requests whose model is in the JSON body (OpenAI, Anthropic clients) are not routed by \
             the filter; they go where the headers alone send them and are reported as destination \
             `unrouted`. Only models in the path (KServe v2, TF Serving, Azure deployments) are routed. \
             Remove `bodyRouting: false` (on is the default) to route them"
                .into(),
        ));
    }
    if config.max_body_bytes > crate::render::ENVOY_DEFAULT_BUFFER_LIMIT {
        w.push((
            "maxBodyBytes".into(),
            format!(
                "{} is over Envoy's default connection buffer limit (1 MiB): Envoy holds a request body only up to \
                 that limit and answers 413 itself past it. `wasmpack run` raises its listener's limit to match, and \
                 `wasmpack manifests` renders the patch that does it in Istio (EnvoyFilter `<name>-buffer-limit`: \
                 `per_connection_buffer_limit_bytes` {} on the listeners the filter runs on); a waypoint cannot be \
                 patched",
                config.max_body_bytes, config.max_body_bytes
            ),
        ));
    }
    w.extend(allow_warnings(config));
    w.extend(failover_warnings(config));
    w.extend(unenforceable_limits(config));
    w.extend(estimate_over_budget(config));
    w.extend(global_limit_warnings(config));
    if let Some(h) = &config.sticky_header {
        if NOT_STICKY.contains(&h.as_str()) || h.starts_with("x-envoy-") || h.starts_with(':') {
            w.push((
                "stickyHeader".into(),
                format!("`{h}` is set per request or by the proxy, not by clients: requests will not stick"),
            ));
        }
    }
    if config.models.is_empty() {
        w.push((
            "models".into(),
            "no models: every request with a model is unknown".into(),
        ));
    }
    for (i, m) in config.models.iter().enumerate() {
        for (j, d) in m.destinations.iter().enumerate() {
            if d.weight == 0 {
                w.push((
                    format!("models[{i}].destinations[{j}].weight"),
                    format!("destination `{}` has weight 0 and gets no traffic", d.name),
                ));
            }
            if d.host.is_none() {
                w.push((
                    format!("models[{i}].destinations[{j}].host"),
                    format!(
                        "destination `{}` has no host: `wasmpack manifests` renders no route for it",
                        d.name
                    ),
                ));
            }
        }
    }
    w
}

/// A response whose usage cannot be read (a dropped stream, a compressed answer) is charged the
/// request's `max_tokens`, else `estimatedOutputTokens`: over a model's whole per-minute token
/// budget, one such response locks its caller out for minutes.
fn estimate_over_budget(config: &Config) -> Vec<(String, String)> {
    let estimate = config.estimated_output_tokens;
    let mut w = Vec::new();
    for (i, m) in config.models.iter().enumerate() {
        let Some(tpm) = m.limits.as_ref().and_then(|l| l.tokens_per_minute) else {
            continue;
        };
        if estimate > tpm {
            w.push((
                format!("models[{i}].limits.tokensPerMinute"),
                format!(
                    "{tpm} tokens per minute is less than estimatedOutputTokens ({estimate}), what a response whose usage \
                     cannot be read (a stream the client drops before its usage) is charged when the request sets no \
                     max_tokens: one such response overdraws `{}`'s budget and locks its caller out for up to a minute; \
                     lower estimatedOutputTokens (a dropped stream is still charged at least what it delivered) or \
                     raise the limit",
                    m.name
                ),
            ));
        }
    }
    w
}

/// Allow entries that match what their author likely did not mean: a prefix that does not end at a
/// `/` (`…/ns/team-a*` admits `…/ns/team-abc/…`), an exact identity ending in `/` (none does).
fn allow_warnings(config: &Config) -> Vec<(String, String)> {
    use model_router::config::AllowRule;
    let mut w = Vec::new();
    for (i, m) in config.models.iter().enumerate() {
        for (j, rule) in m.allow.iter().flatten().enumerate() {
            let path = format!("models[{i}].allow[{j}]");
            match rule {
                AllowRule::Prefix(p) if !p.ends_with('/') && p.contains("/ns/") => w.push((
                    path,
                    format!(
                        "`{p}*` also admits every identity that merely starts with `{p}` (e.g. `{p}-other/…`); \
                         end the prefix at a `/` (`{p}/*`) unless that is meant"
                    ),
                )),
                AllowRule::Exact(e) if e.ends_with('/') => w.push((
                    path,
                    format!("`{e}` ends with `/`: no workload identity does, so it admits no one"),
                )),
                _ => {}
            }
        }
    }
    w
}

/// Where a configuration runs, for the warnings that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The callers' sidecars (`--selector`).
    Sidecar,
    /// An Istio gateway (`--gateway`).
    Gateway,
    /// An ambient waypoint (`--waypoint`).
    Waypoint,
    /// Envoy Gateway (`--envoy-gateway`).
    EnvoyGateway,
    /// `wasmpack run`: plain Envoy, plaintext.
    Run,
}

/// Models whose access rules or `by: principal` limits need the caller's identity, and where the
/// install gives none (docs/access-control.md, "Who the caller is").
pub fn identity_warnings(config: &Config, place: Place) -> Vec<(String, String)> {
    use model_router::config::{IdentitySource, LimitKey};
    let needs: Vec<String> = config
        .models
        .iter()
        .filter(|m| m.allow.is_some() || m.limits.as_ref().is_some_and(|l| l.by == LimitKey::Principal))
        .map(|m| format!("`{}`", m.name))
        .collect();
    if needs.is_empty() {
        return Vec::new();
    }
    let who = needs.join(", ");
    let header = config.identity_header.is_some();
    let source = config.identity_source;
    let message = match (place, source) {
        (_, IdentitySource::Header) => return Vec::new(),
        (Place::Run, _) if !header => format!(
            "`wasmpack run` listens in plaintext as plain Envoy: every caller is anonymous, so the rules of {who} \
             refuse everyone (allow lists) or count everyone as one caller (`by: principal`); set identityHeader to try \
             identities here"
        ),
        (Place::EnvoyGateway, _) if !header => format!(
            "at Envoy Gateway the filter sees no caller identity but a client certificate, so the rules of {who} \
             refuse every caller without one (allow lists) or count them as one caller (`by: principal`); set identityHeader to a header your authentication sets \
             (e.g. from a SecurityPolicy's JWT claims), and strip it from clients"
        ),
        (Place::Gateway, IdentitySource::Auto | IdentitySource::PeerCertificate) if !header => format!(
            "at a gateway the caller is known only by its client certificate: the rules of {who} refuse every \
             caller (allow lists) or count them as one caller (`by: principal`) unless the Gateway's listener requires client mTLS (frontend TLS validation), or \
             identityHeader names a header a trusted authentication step sets"
        ),
        (Place::Sidecar | Place::Gateway | Place::EnvoyGateway | Place::Run, IdentitySource::PeerPrincipal) => {
            format!(
                "peerPrincipal is Istio's waypoint filter state: outside a waypoint it is not set, \
                 so {who} see anonymous callers"
            )
        }
        (Place::Gateway | Place::Waypoint | Place::EnvoyGateway, IdentitySource::Workload) => format!(
            "workload is the callers' own sidecar: a gateway or waypoint never lends its own \
             identity, so {who} see anonymous callers; leave identitySource out"
        ),
        (Place::Sidecar, IdentitySource::PeerCertificate) => format!(
            "peerCertificate in the callers' sidecars: the app talks plaintext to its own sidecar, there is no \
             peer certificate, so {who} see anonymous callers; leave identitySource out (the sidecar's own workload)"
        ),
        (Place::Waypoint, IdentitySource::PeerCertificate) => format!(
            "peerCertificate on a waypoint: ztunnel's HBONE tunnel ends there, the caller is Istio's peer \
             principal, so {who} see anonymous callers; leave identitySource out"
        ),
        _ => return Vec::new(),
    };
    vec![("identitySource".into(), message)]
}

/// Policies that let requests past the filter unread, to the default route, where a model's
/// access rules and limits are never applied.
fn unenforceable_limits(config: &Config) -> Vec<(String, String)> {
    use model_router::config::Policy;
    let guarded: Vec<&str> = config
        .models
        .iter()
        .filter(|m| m.allow.is_some() || m.limits.is_some())
        .map(|m| m.name.as_str())
        .collect();
    if guarded.is_empty() {
        return Vec::new();
    }
    let who = guarded.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    let mut w = Vec::new();
    for (field, policy, what) in [
        (
            "onOversize",
            config.on_oversize,
            "bodies over maxBodyBytes (padding a request is enough)",
        ),
        (
            "onMissingModel",
            config.on_missing_model,
            "requests without a model (vLLM serves them with its one model)",
        ),
        ("onInvalidBody", config.on_invalid_body, "bodies the filter cannot read"),
        ("onUnknownModel", config.on_unknown_model, "unknown model names"),
    ] {
        if policy == Policy::Passthrough {
            w.push((
                field.into(),
                format!(
                    "passthrough lets {what} reach the default route unchecked: the access rules and limits of {who} \
                     cannot be enforced for them unless no route leads there by default; set `{field}: reject`"
                ),
            ));
        }
    }
    w
}

/// Failover settings that cannot act where the filter would run (docs/failover.md).
fn failover_warnings(config: &Config) -> Vec<(String, String)> {
    let mut w = Vec::new();
    if config.failover.is_none() {
        return w;
    }
    if !config.body_routing {
        w.push((
            "failover".into(),
            "acts only on requests the filter routes: with bodyRouting off, requests whose model is in the body \
             are not routed and do not fail over (nor use fallbacks of another model); only models in the path do"
                .into(),
        ));
    }
    let hosted = config
        .models
        .iter()
        .flat_map(|m| &m.destinations)
        .any(|d| d.host.is_some());
    for (i, m) in config.models.iter().enumerate() {
        let lists = std::iter::once((format!("models[{i}].fallbacks"), None, &m.fallbacks)).chain(
            m.destinations.iter().enumerate().map(move |(j, d)| {
                (
                    format!("models[{i}].destinations[{j}].fallbacks"),
                    Some(j),
                    &d.fallbacks,
                )
            }),
        );
        for (at, own, list) in lists {
            for (k, f) in list.iter().enumerate() {
                let fm = &config.models[f.model];
                let targets: Vec<_> = match f.destination {
                    Some(d) => fm.destinations.get(d).into_iter().collect(),
                    None => fm.destinations.iter().collect(),
                };
                if hosted && targets.iter().any(|d| d.host.is_none() && d.inference_pool.is_none()) {
                    w.push((
                        format!("{at}[{k}]"),
                        format!(
                            "a destination of `{}` has no `host`: `wasmpack manifests` renders no route to it, so a \
                             request failed over to it would go to the caller's own host",
                            fm.name
                        ),
                    ));
                }
                if f.model == i && f.destination.is_none() {
                    w.push((
                        format!("{at}[{k}]"),
                        "names its own model without a destination: its destinations are tried anyway".into(),
                    ));
                }
                if f.model == i && f.destination.is_some() && (own.is_none() || own == f.destination) {
                    let why = if own.is_none() {
                        "a destination of its own model: the model's fallbacks are tried only when every one of its \
                         destinations is open, so this one never serves"
                    } else {
                        "its own destination: it is open whenever this fallback is tried, so it never serves"
                    };
                    w.push((format!("{at}[{k}]"), format!("names {why}")));
                }
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_warnings_name_fallbacks_that_cannot_be_routed() {
        let c = Config::from_json(
            br#"{"failover":{},"bodyRouting":false,"models":[
              {"name":"m","destinations":[{"name":"a","host":"a.ai.svc.cluster.local"}],"fallbacks":[{"model":"f"}]},
              {"name":"f","destinations":[{"name":"fb"}]}]}"#,
        )
        .unwrap();
        let w: Vec<String> = failover_warnings(&c).into_iter().map(|(p, _)| p).collect();
        assert_eq!(w, ["failover", "models[0].fallbacks[0]"]);
        let fine = Config::from_json(
            br#"{"failover":{},"models":[{"name":"m","destinations":[{"name":"a"}],"fallbacks":[{"model":"f"}]},
              {"name":"f","destinations":[{"name":"fb"}]}]}"#,
        )
        .unwrap();
        assert!(failover_warnings(&fine).is_empty());
    }

    /// `(path, line, column)` of the error `text` has.
    fn placed(text: &str) -> (String, Option<usize>, Option<usize>) {
        match read(text) {
            Ok(_) => panic!("valid: {text}"),
            Err((e, at)) => (e.path, at.map(|a| a.line), at.map(|a| a.column)),
        }
    }

    #[test]
    fn yaml_errors_name_field_and_line() {
        let p = |path: &str, line: usize, column: usize| (path.to_string(), Some(line), Some(column));
        let text = "models:\n  - name: a\n    destinations:\n      - name: x\n        weight: lots\n";
        assert_eq!(
            placed(text),
            p("models[0].destinations[0].weight", 5, 17),
            "the value's column"
        );
        assert_eq!(placed("models: []\nbogus: 1\n"), p("bogus", 2, 1), "the key's column");
        let text = "models:\n- {name: a, destinations: [{\"name\": x, \"weight\": -3}]}\n";
        assert_eq!(
            placed(text),
            p("models[0].destinations[0].weight", 2, 50),
            "flow style, quoted key"
        );
        let text = "models:\n- name: a\n  destinations:\n  - {name: x, weight: 90.5}\n  - name: y\n    weight: 10\n";
        assert_eq!(
            placed(text),
            p("models[0].destinations[0].weight", 4, 23),
            "the key twice: the one at the path"
        );
        let (path, line, column) = placed("models: [}");
        assert_eq!(
            (path.as_str(), line, column),
            (".", Some(1), Some(9)),
            "syntax errors: YAML's own position"
        );
        let e = parse("models: [}").err().unwrap();
        assert!(
            !e.kind.to_string().contains("line"),
            "the position is not repeated in the message: {e}"
        );
        let ok = parse("{\"models\": []}").unwrap();
        assert_eq!(ok.json["models"], serde_json::json!([]));
    }

    /// `check` words a parser error with `config_yaml::words`, the function the playground
    /// shows it with: the same path and message for the same file (playground/src/lib.rs pins
    /// the page's side with the same files).
    #[test]
    fn errors_are_worded_as_the_playground_words_them() {
        // The page's side runs the same kinds of error (playground/src/lib.rs); one of each
        // shape of path here: a field's, and the whole file's (empty).
        for (text, path, message) in [
            (
                "models:\n- name: m\n  destinations:\n  - name: d\n    wieght: 1\n",
                "models[0].destinations[0].wieght",
                "unknown field `wieght`; did you mean `weight`?",
            ),
            ("[]", "", "expected an object (key: value pairs), found a list"),
        ] {
            let Err((e, at)) = read(text) else {
                panic!("valid: {text:?}")
            };
            let d = Diagnostic::of(&e, at);
            assert_eq!((d.path.as_str(), d.message.as_str()), (path, message), "{text:?}");
            let expected = if path.is_empty() {
                message.to_string()
            } else {
                format!("{path}: {message}")
            };
            assert_eq!(human(&e), expected);
        }
    }

    /// Errors whose key appears more than once in the file (every model has a `name`): the old
    /// text search gave up on them (`"line": null`); the parser's positions place each one.
    #[test]
    fn errors_at_keys_that_repeat_are_placed() {
        let p = |path: &str, line: usize, column: usize| (path.to_string(), Some(line), Some(column));
        // Two models with the same keys.
        let two = "models:\n\
                   - name: a\n  limits: {requestsPerMinute: 10}\n  destinations:\n  - name: x\n    weight: 1\n\
                   - name: b\n  limits: {requestsPerMinute: 10}\n  destinations:\n  - name: y\n    weight: 1\n";
        let second = |from: &str, to: &str| {
            let at = two.rfind(from).unwrap();
            format!("{}{to}{}", &two[..at], &two[at + from.len()..])
        };
        // A repeated model name: the second one.
        assert_eq!(placed(&second("name: b", "name: a")), p("models[1].name", 7, 9));
        // A repeated destination name in one model.
        let text = "models:\n- name: a\n  destinations:\n  - name: x\n  - name: x\n";
        assert_eq!(placed(text), p("models[0].destinations[1].name", 5, 11));
        // An invalid name.
        assert_eq!(placed(&second("name: b", "name: b c")), p("models[1].name", 7, 9));
        // A repeated key: the second occurrence.
        let text = second("- name: b\n", "- name: b\n  name: c\n");
        assert_eq!(placed(&text), p("models[1]", 8, 3));
        // An error inside the second of two models with the same keys.
        let text = second("requestsPerMinute: 10", "requestsPerMinute: 0");
        assert_eq!(placed(&text), p("models[1].limits.requestsPerMinute", 8, 31));
        // The same in JSON, on one line.
        let text = r#"{"models": [{"name": "a", "destinations": [{"name": "x"}]}, {"name": "b", "destinations": [{"name": "y", "weight": -1}]}]}"#;
        assert_eq!(placed(text), p("models[1].destinations[0].weight", 1, 116));
        // A warning at a field that repeats: the one of its own destination.
        let text = second("weight: 1\n", "weight: 0\n  - name: z\n");
        let l = parse(&text).unwrap();
        let places = Places::of(&text);
        let w: Vec<Diagnostic> = warnings(&l.config)
            .iter()
            .map(|(p, m)| Diagnostic::at(&places, p, m, "warning"))
            .collect();
        let weight = w.iter().find(|d| d.path == "models[1].destinations[0].weight").unwrap();
        assert_eq!((weight.line, weight.column), (Some(11), Some(13)), "{w:?}");
        // A warning about a field that is absent (no `host`): the destination it belongs to.
        let host = w.iter().find(|d| d.path == "models[1].destinations[0].host").unwrap();
        assert_eq!((host.line, host.column), (Some(10), Some(5)), "{w:?}");
    }

    #[test]
    fn identity_warnings_name_the_place_without_one() {
        let guarded =
            "models:\n- name: private\n  allow: [\"spiffe://cluster.local/ns/a/*\"]\n  destinations: [{name: x}]\n";
        let l = parse(guarded).unwrap();
        for (place, warns) in [
            (Place::Sidecar, false),
            (Place::Waypoint, false),
            (Place::Gateway, true),
            (Place::EnvoyGateway, true),
            (Place::Run, true),
        ] {
            let w = identity_warnings(&l.config, place);
            assert_eq!(!w.is_empty(), warns, "{place:?}: {w:?}");
            if let Some((_, m)) = w.first() {
                assert!(m.contains("`private`"), "{m}");
            }
        }
        let with_header = parse(&format!("identityHeader: x-caller\n{guarded}")).unwrap();
        assert!(identity_warnings(&with_header.config, Place::EnvoyGateway).is_empty());
        let workload = parse(&format!("identitySource: workload\n{guarded}")).unwrap();
        assert!(identity_warnings(&workload.config, Place::Gateway)[0]
            .1
            .contains("never lends"));
        let open = parse("models: [{name: a, destinations: [{name: x}]}]").unwrap();
        assert!(
            identity_warnings(&open.config, Place::Run).is_empty(),
            "nothing needs an identity"
        );
    }

    #[test]
    fn risky_settings_warn() {
        let l = parse("bodyRouting: false\nstickyHeader: X-Request-Id\nmodels:\n- name: a\n  destinations:\n  - {name: x, weight: 0}\n  - {name: y, host: y.ns.svc}\n").unwrap();
        let paths: Vec<String> = warnings(&l.config).into_iter().map(|w| w.0).collect();
        assert_eq!(
            paths,
            [
                "bodyRouting",
                "stickyHeader",
                "models[0].destinations[0].weight",
                "models[0].destinations[0].host"
            ]
        );
        // Limits with an explicit passthrough policy: what dodges them is named; the defaults
        // fail closed. A budget smaller than what one unreadable response is charged is named too.
        let l = parse("onOversize: passthrough\nmodels:\n- name: a\n  limits: {tokensPerMinute: 10}\n  destinations: [{name: x, host: x.ns.svc}]\n").unwrap();
        let paths: Vec<String> = warnings(&l.config).into_iter().map(|w| w.0).collect();
        assert_eq!(paths, ["onOversize", "models[0].limits.tokensPerMinute"]);
        let l = parse("estimatedOutputTokens: 500\nmodels:\n- name: a\n  limits: {tokensPerMinute: 1000}\n  destinations: [{name: x, host: x.ns.svc}]\n").unwrap();
        assert!(
            warnings(&l.config).is_empty(),
            "fail-closed defaults, an estimate within the budget"
        );
        assert!(
            parse("models: []").map(|l| warnings(&l.config).len()).unwrap() == 1,
            "no models"
        );
        // Bodies larger than Envoy holds by default (uploads): the limit to raise is named.
        let l = parse(
            "maxBodyBytes: 26214400
models: [{name: a, destinations: [{name: x, host: x.ns.svc}]}]
",
        )
        .unwrap();
        let w = warnings(&l.config);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].0, "maxBodyBytes");
        assert!(
            w[0].1.contains("per_connection_buffer_limit_bytes` 26214400"),
            "{}",
            w[0].1
        );
        let l = parse(
            "maxBodyBytes: 1048576
models: [{name: a, destinations: [{name: x, host: x.ns.svc}]}]
",
        )
        .unwrap();
        assert!(warnings(&l.config).is_empty());
    }
}
