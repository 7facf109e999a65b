//! The rate limit service's side of `mode: global` limits, from the same configuration the filter
//! reads: Limitador's limits file, and the equivalent envoyproxy/ratelimit configuration.
//!
//! The filter sends one descriptor per call: `model`, `kind` (`requests` | `tokens`) and, unless
//! the limit is `by: global`, `caller`. Limitador matches it with CEL conditions and counts one
//! counter per `caller` value; envoyproxy/ratelimit matches the same entries as a tree.

use model_router::config::{Config, LimitKey, Limits};
use serde::Serialize;
use serde_json::Value;

/// The window of every rendered limit: the configuration's limits are per minute.
pub const WINDOW_SECONDS: u64 = 60;

/// `outbound|PORT|SUBSET|HOST` (how Istio names a Service's cluster) → (host, port).
pub fn istio_cluster(cluster: &str) -> Option<(String, u16)> {
    let parts: Vec<&str> = cluster.split('|').collect();
    match parts.as_slice() {
        ["outbound", port, _, host] if !host.is_empty() => Some((host.to_string(), port.parse().ok()?)),
        _ => None,
    }
}

/// A CEL string literal.
fn cel(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn global_limits(config: &Config) -> impl Iterator<Item = (&str, &Limits)> {
    config
        .models
        .iter()
        .filter_map(|m| m.limits.as_ref().filter(|l| l.global).map(|l| (m.name.as_str(), l)))
}

fn kinds(l: &Limits) -> impl Iterator<Item = (&'static str, u64)> {
    [("requests", l.requests_per_minute), ("tokens", l.tokens_per_minute)]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
}

/// One of Limitador's limits, its fields in Limitador's own order.
#[derive(Serialize)]
struct Limit {
    namespace: String,
    name: String,
    max_value: u64,
    seconds: u64,
    conditions: Vec<String>,
    variables: Vec<&'static str>,
}

fn limit_list(config: &Config) -> Vec<Limit> {
    let Some(rls) = &config.rate_limit_service else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (model, l) in global_limits(config) {
        for (kind, max) in kinds(l) {
            out.push(Limit {
                namespace: rls.domain.clone(),
                name: format!("{model} {kind} per minute"),
                max_value: max,
                seconds: WINDOW_SECONDS,
                conditions: vec![
                    format!("descriptors[0]['model'] == {}", cel(model)),
                    format!("descriptors[0]['kind'] == '{kind}'"),
                ],
                variables: match l.by {
                    LimitKey::Global => Vec::new(),
                    _ => vec!["descriptors[0]['caller']"],
                },
            });
        }
    }
    out
}

/// Limitador's limits (the list its `LIMITS_FILE` holds), one per model and kind.
pub fn limits(config: &Config) -> Vec<Value> {
    limit_list(config)
        .iter()
        .filter_map(|l| serde_json::to_value(l).ok())
        .collect()
}

/// The limits file as YAML, serialised from the limits themselves (Limitador's own key order).
pub fn limits_yaml(config: &Config) -> String {
    let limits = limit_list(config);
    if limits.is_empty() {
        return "[]\n".to_string();
    }
    crate::yaml::to_string(&limits).unwrap_or_default()
}

/// One level of envoyproxy/ratelimit's descriptor tree.
#[derive(Serialize)]
struct Descriptor {
    key: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimit>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    descriptors: Vec<Descriptor>,
}

#[derive(Serialize)]
struct RateLimit {
    unit: &'static str,
    requests_per_unit: u64,
}

#[derive(Serialize)]
struct RatelimitConfig {
    domain: String,
    descriptors: Vec<Descriptor>,
}

/// The same request limits for envoyproxy/ratelimit (token limits need Limitador's
/// check-then-report API): its descriptor tree matches the filter's entries in order.
pub fn envoy_ratelimit_yaml(config: &Config) -> String {
    let Some(rls) = &config.rate_limit_service else {
        return String::new();
    };
    let mut descriptors = Vec::new();
    for (model, l) in global_limits(config) {
        let Some(rpm) = l.requests_per_minute else {
            continue;
        };
        let limit = Some(RateLimit {
            unit: "minute",
            requests_per_unit: rpm,
        });
        let leaf = |key, value| Descriptor {
            key,
            value,
            rate_limit: None,
            descriptors: Vec::new(),
        };
        let kind = match l.by {
            LimitKey::Global => Descriptor {
                rate_limit: limit,
                ..leaf("kind", Some("requests".into()))
            },
            _ => Descriptor {
                descriptors: vec![Descriptor {
                    rate_limit: limit,
                    ..leaf("caller", None)
                }],
                ..leaf("kind", Some("requests".into()))
            },
        };
        descriptors.push(Descriptor {
            descriptors: vec![kind],
            ..leaf("model", Some(model.to_string()))
        });
    }
    crate::yaml::to_string(&RatelimitConfig {
        domain: rls.domain.clone(),
        descriptors,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_configuration() {
        let c = Config::from_json(
            br#"{"rateLimitService":{"cluster":"outbound|8081||limitador.rl.svc.cluster.local","domain":"llm"},
                "models":[
                  {"name":"llama","limits":{"requestsPerMinute":20,"tokensPerMinute":100000,"mode":"global"},"destinations":[{"name":"a"}]},
                  {"name":"it's","limits":{"requestsPerMinute":5,"by":"global","mode":"global"},"destinations":[{"name":"b"}]},
                  {"name":"local","limits":{"requestsPerMinute":5},"destinations":[{"name":"c"}]}]}"#,
        )
        .unwrap();
        let l = limits(&c);
        assert_eq!(l.len(), 3, "{l:#?}");
        assert_eq!(l[0]["namespace"], "llm");
        assert_eq!(l[1]["max_value"], 100000);
        assert_eq!(l[1]["conditions"][1], "descriptors[0]['kind'] == 'tokens'");
        assert_eq!(l[1]["variables"][0], "descriptors[0]['caller']");
        assert_eq!(l[2]["conditions"][0], "descriptors[0]['model'] == 'it\\'s'");
        assert_eq!(l[2]["variables"], serde_json::json!([]));
        let back: Value = serde_saphyr::from_str(&limits_yaml(&c)).unwrap();
        assert_eq!(back, Value::from(l.clone()), "the YAML says the same");
        let e: Value = serde_saphyr::from_str(&envoy_ratelimit_yaml(&c)).unwrap();
        assert_eq!(e["domain"], "llm");
        assert_eq!(
            e["descriptors"][0]["descriptors"][0]["descriptors"][0]["rate_limit"]["requests_per_unit"],
            20
        );
        assert_eq!(
            e["descriptors"][1]["descriptors"][0]["rate_limit"]["requests_per_unit"],
            5
        );
        assert_eq!(
            istio_cluster("outbound|8081||limitador.rl.svc.cluster.local"),
            Some(("limitador.rl.svc.cluster.local".into(), 8081))
        );
        assert_eq!(istio_cluster("limitador"), None);
    }
}
