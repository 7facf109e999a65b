//! `GET /v1/models` and `GET /v1/models/{id}` answered from the configuration, in OpenAI's shape,
//! honouring each model's access rules for the caller. Pure: the caller sends the reply.

use crate::config::Config;
use crate::reply::{Reject, RejectReason};

/// What a models request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelsRequest {
    List,
    /// One model, by the (percent-decoded) id in the path.
    Get(String),
}

/// `GET …/v1/models` or `GET …/v1/models/{id}` (a KServe v1 / TF Serving path such as
/// `/v1/models/mnist:predict` or `/v1/models/mnist/versions/2` is not one).
pub fn models_request(method: &str, path: &str) -> Option<ModelsRequest> {
    if method != "GET" {
        return None;
    }
    let p = path.split(['?', '#']).next().unwrap_or("");
    let p = p.trim_end_matches('/');
    if p.ends_with("/v1/models") {
        return Some(ModelsRequest::List);
    }
    let (_, id) = p.rsplit_once("/v1/models/")?;
    if id.is_empty() || id.contains(':') || id.contains('/') {
        return None;
    }
    Some(ModelsRequest::Get(percent_decode(id)))
}

fn percent_decode(s: &str) -> String {
    crate::path_model::percent_decode(s).into_owned()
}

/// The names a caller may use: canonical names and aliases of the models whose access rules
/// admit it, in configuration order.
fn visible<'c>(cfg: &'c Config, principal: Option<&str>) -> Vec<(&'c str, &'c str)> {
    let mut out = Vec::new();
    for m in &cfg.models {
        let allowed = match &m.allow {
            None => true,
            Some(rules) => principal.is_some_and(|p| rules.iter().any(|r| r.matches(p))),
        };
        if allowed {
            out.push((m.name.as_str(), m.name.as_str()));
            out.extend(m.aliases.iter().map(|a| (a.as_str(), m.name.as_str())));
        }
    }
    out
}

/// OpenAI's model object, in OpenAI's key order.
fn entry(out: &mut String, id: &str, created: u64) {
    out.push_str("{\"id\":");
    crate::json::write_str(out, id);
    out.push_str(",\"object\":\"model\",\"created\":");
    out.push_str(&created.to_string());
    out.push_str(",\"owned_by\":\"model-router\"}");
}

/// The reply: `Ok(body)` for a 200, or the OpenAI-style 404 for a model the caller may not see.
/// `created`: when the configuration was loaded (seconds since the epoch).
pub fn answer(cfg: &Config, req: &ModelsRequest, principal: Option<&str>, created: u64) -> Result<Vec<u8>, Reject> {
    let names = visible(cfg, principal);
    match req {
        ModelsRequest::List => {
            let mut out = String::from("{\"object\":\"list\",\"data\":[");
            for (i, (id, _)) in names.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                entry(&mut out, id, created);
            }
            out.push_str("]}");
            Ok(out.into_bytes())
        }
        ModelsRequest::Get(id) => match names.iter().find(|(n, _)| n == id) {
            Some((n, _)) => {
                let mut out = String::new();
                entry(&mut out, n, created);
                Ok(out.into_bytes())
            }
            // Not found and not allowed look the same: the list must not leak what exists.
            None => Err(Reject::new(
                RejectReason::ModelNotFound,
                format!(
                    "The model `{}` does not exist.",
                    id.chars().take(128).collect::<String>()
                ),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_lists() {
        assert_eq!(models_request("GET", "/v1/models"), Some(ModelsRequest::List));
        assert_eq!(
            models_request("GET", "/openai/v1/models/?x=1"),
            Some(ModelsRequest::List)
        );
        assert_eq!(
            models_request("GET", "/v1/models/gpt-4o"),
            Some(ModelsRequest::Get("gpt-4o".into()))
        );
        assert_eq!(
            models_request("GET", "/v1/models/meta-llama%2FLlama-3"),
            Some(ModelsRequest::Get("meta-llama/Llama-3".into()))
        );
        for (m, p) in [
            ("POST", "/v1/models"),
            ("GET", "/v1/models/mnist:predict"),
            ("GET", "/v1/models/mnist/versions/2"),
            ("GET", "/v1/chat/completions"),
        ] {
            assert_eq!(models_request(m, p), None, "{m} {p}");
        }
        let cfg = Config::from_json(
            br#"{"models":[{"name":"a","aliases":["gpt-4o"],"destinations":[{"name":"x"}]},
                           {"name":"secret","allow":["spiffe://td/ns/a/*"],"destinations":[{"name":"y"}]}]}"#,
        )
        .unwrap();
        let ids = |p: Option<&str>| -> Vec<String> {
            let b = answer(&cfg, &ModelsRequest::List, p, 7).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["object"], "list");
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(ids(None), ["a", "gpt-4o"]);
        assert_eq!(ids(Some("spiffe://td/ns/a/sa/x")), ["a", "gpt-4o", "secret"]);
        assert!(answer(&cfg, &ModelsRequest::Get("secret".into()), None, 7).is_err());
        let one = answer(&cfg, &ModelsRequest::Get("gpt-4o".into()), None, 7).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&one).unwrap();
        assert_eq!(
            (v["id"].as_str(), v["object"].as_str(), v["created"].as_u64()),
            (Some("gpt-4o"), Some("model"), Some(7))
        );
    }
}
