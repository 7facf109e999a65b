//! Loading a plugin configuration file (YAML or JSON) with the filter's own parser.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use model_router::config::Config;
use serde_json::Value;

pub struct Loaded {
    pub config: Config,
    /// The configuration as JSON, exactly as the filter will receive it.
    pub json: Value,
}

pub fn load(path: &Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// YAML is a superset of JSON, so one parser takes both. Errors name the field path, and the
/// line when the YAML itself is at fault.
pub fn parse(text: &str) -> Result<Loaded, model_router::config::ConfigError> {
    let config = Config::from_deserializer(serde_yaml::Deserializer::from_str(text))?;
    let json: Value = serde_yaml::from_str(text).map_err(|e| model_router::config::ConfigError {
        path: ".".into(),
        message: e.to_string(),
    })?;
    Ok(Loaded { config, json })
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
    w.extend(unenforceable_limits(config));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_errors_name_field_and_line() {
        let e = parse("models:\n  - name: a\n    destinations:\n      - name: x\n        weight: lots\n")
            .err()
            .unwrap();
        assert_eq!(e.path, "models[0].destinations[0].weight");
        assert!(e.message.contains("line 5"), "{e}");
        let e = parse("models: []\nbogus: 1\n").err().unwrap();
        assert_eq!(e.path, "bogus");
        let ok = parse("{\"models\": []}").unwrap();
        assert_eq!(ok.json["models"], serde_json::json!([]));
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
        // Limits with the default passthrough policies: what dodges them is named.
        let l = parse("onMissingModel: reject\nmodels:\n- name: a\n  limits: {tokensPerMinute: 10}\n  destinations: [{name: x, host: x.ns.svc}]\n").unwrap();
        let paths: Vec<String> = warnings(&l.config).into_iter().map(|w| w.0).collect();
        assert_eq!(paths, ["onOversize"]);
        assert!(
            parse("models: []").map(|l| warnings(&l.config).len()).unwrap() == 1,
            "no models"
        );
    }
}
