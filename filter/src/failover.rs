//! The `failover` section and the `fallbacks` of models and destinations: read, checked and
//! resolved to indexes (docs/failover.md).

use std::collections::HashMap;

use crate::config::{ConfigError, Model, RawFailover, RawFallback};

/// The validated `failover` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    pub threshold: u16,
    pub probation_ms: u32,
    pub max_probation_ms: u32,
    pub trials: u8,
    pub statuses: Vec<u16>,
    pub first_byte_timeout_ms: Option<u32>,
}

impl Failover {
    /// A response with `status` is a failure.
    pub fn fails(&self, status: u32) -> bool {
        self.statuses.iter().any(|s| u32::from(*s) == status)
    }
}

/// A fallback, resolved: `config.models[model]`, one destination or all by weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback {
    pub model: usize,
    pub destination: Option<usize>,
}

fn err(path: &str, message: &str) -> ConfigError {
    ConfigError::invalid(path, message)
}

fn duration(path: &str, v: Option<&str>, default: u32) -> Result<u32, ConfigError> {
    match v {
        None => Ok(default),
        Some(t) => match crate::config::parse_duration_ms(t) {
            Some(0) => Err(err(path, "must be more than 0")),
            Some(ms) if ms <= 86_400_000 => Ok(ms),
            Some(_) => Err(err(path, "at most 24h")),
            None => Err(err(path, "a duration like `500ms`, `30s`, `5m` or `1h`")),
        },
    }
}

#[inline(never)]
pub fn failover(raw: &RawFailover) -> Result<Failover, ConfigError> {
    let threshold = match raw.consecutive_failures {
        None => 5,
        Some(n @ 1..=1000) => n as u16,
        Some(_) => return Err(err("failover.consecutiveFailures", "between 1 and 1000")),
    };
    let trials = match raw.trial_requests {
        None => 1,
        Some(n @ 1..=100) => n as u8,
        Some(_) => return Err(err("failover.trialRequests", "between 1 and 100")),
    };
    let probation_ms = duration("failover.probation", raw.probation.as_deref(), 5_000)?;
    // Unset, the longest probation is 60 s, or the first probation when that is longer.
    let max_probation_ms = duration(
        "failover.maxProbation",
        raw.max_probation.as_deref(),
        probation_ms.max(60_000),
    )?;
    if max_probation_ms < probation_ms {
        return Err(err("failover.maxProbation", "must not be shorter than probation"));
    }
    let first_byte_timeout_ms = match raw.first_byte_timeout.as_deref() {
        None => None,
        t => Some(duration("failover.firstByteTimeout", t, 0)?),
    };
    let mut statuses = Vec::new();
    match &raw.failure_statuses {
        None => statuses.extend([500, 502, 503, 504]),
        Some(list) => {
            for (i, s) in list.iter().enumerate() {
                if !(400..=599).contains(s) {
                    return Err(err(
                        &format!("failover.failureStatuses[{i}]"),
                        "a status between 400 and 599",
                    ));
                }
                statuses.push(*s as u16);
            }
        }
    }
    Ok(Failover {
        threshold,
        probation_ms,
        max_probation_ms,
        trials,
        statuses,
        first_byte_timeout_ms,
    })
}

/// Resolves the fallbacks read for `models[i]` (`None`) or its destination `j` against the
/// configuration's names; `on`: the configuration has `failover`.
#[inline(never)]
pub fn resolve(
    models: &mut [Model],
    raw: Vec<(usize, Option<usize>, Vec<RawFallback>)>,
    index: &HashMap<String, usize>,
    on: bool,
) -> Result<(), ConfigError> {
    for (i, d, list) in raw {
        let path = |k: Option<usize>, field: &str| {
            let mut p = format!("models[{i}]");
            if let Some(j) = d {
                p += &format!(".destinations[{j}]");
            }
            p += ".fallbacks";
            if let Some(k) = k {
                p += &format!("[{k}].{field}");
            }
            p
        };
        if !on {
            return Err(err(&path(None, ""), "fallbacks need the top-level `failover` section"));
        }
        let mut out = Vec::with_capacity(list.len());
        for (k, f) in list.iter().enumerate() {
            let Some((model, target)) = index.get(&f.model).and_then(|&m| Some((m, models.get(m)?))) else {
                return Err(err(&path(Some(k), "model"), "not a configured model or alias"));
            };
            if model != i && (target.allow.is_some() || target.limits.is_some()) {
                // A caller is checked and charged as the model it asked for: serving it from a
                // model with its own rules would bypass them (or refuse it for a model it never
                // asked for).
                return Err(err(
                    &path(Some(k), "model"),
                    "a model with `allow` or `limits` cannot be another model's fallback: its callers \
                     would be served without its access rules and limits; fall back to a model without them",
                ));
            }
            let destination = match &f.destination {
                None => None,
                Some(name) => match target.destinations.iter().position(|x| x.name == *name) {
                    Some(j) => Some(j),
                    None => return Err(err(&path(Some(k), "destination"), "not a destination of that model")),
                },
            };
            out.push(Fallback { model, destination });
        }
        let m = models.get_mut(i);
        let slot = match d {
            None => m.map(|m| &mut m.fallbacks),
            Some(j) => m.and_then(|m| m.destinations.get_mut(j)).map(|x| &mut x.fallbacks),
        };
        if let Some(slot) = slot {
            *slot = out;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(json: &str) -> (String, String) {
        let e = Config::from_json(json.as_bytes()).expect_err(json);
        (e.path, e.kind.to_string())
    }

    const MODELS: &str = r#""models":[{"name":"m","destinations":[{"name":"a"},{"name":"b"}]},{"name":"f","aliases":["g"],"destinations":[{"name":"f1"}]}]"#;

    #[test]
    fn durations_in_ms_s_m_h_more_than_0_at_most_a_day() {
        let with = |f: &str| format!(r#"{{"failover":{{{f}}},{MODELS}}}"#);
        let ok = |f: &str| Config::from_json(with(f).as_bytes()).unwrap().failover.unwrap();
        let f = ok(r#""probation":"2m","maxProbation":"1h","firstByteTimeout":"1.5s""#);
        assert_eq!(
            (f.probation_ms, f.max_probation_ms, f.first_byte_timeout_ms),
            (120_000, 3_600_000, Some(1_500))
        );
        assert_eq!(ok(r#""maxProbation":"24h""#).max_probation_ms, 86_400_000);
        // A first probation over the 60 s default raises the default longest one with it.
        let f = ok(r#""probation":"90s""#);
        assert_eq!((f.probation_ms, f.max_probation_ms), (90_000, 90_000));
        for (field, value, message) in [
            ("probation", "0s", "must be more than 0"),
            ("maxProbation", "25h", "at most 24h"),
            (
                "firstByteTimeout",
                "soon",
                "a duration like `500ms`, `30s`, `5m` or `1h`",
            ),
            ("probation", "1m30s", "a duration like `500ms`, `30s`, `5m` or `1h`"),
        ] {
            let json = with(&format!(r#""{field}":"{value}""#));
            assert_eq!(
                err(&json),
                (format!("failover.{field}"), message.to_string()),
                "{value}"
            );
        }
    }

    #[test]
    fn a_model_with_access_rules_or_limits_is_no_other_models_fallback() {
        for rules in [
            r#""allow":["spiffe://td/ns/vip/*"]"#,
            r#""limits":{"requestsPerMinute":10}"#,
        ] {
            let json = format!(
                r#"{{"failover":{{}},"models":[{{"name":"m","destinations":[{{"name":"a"}}],"fallbacks":[{{"model":"p"}}]}},
                   {{"name":"p",{rules},"destinations":[{{"name":"p1"}}]}}]}}"#
            );
            let (path, message) = err(&json);
            assert_eq!(path, "models[0].fallbacks[0].model", "{rules}");
            assert!(message.contains("`allow` or `limits`"), "{message}");
        }
        // Within one model (a canary falling back to its stable), its own rules apply anyway.
        Config::from_json(
            br#"{"failover":{},"models":[{"name":"m","allow":["spiffe://td/ns/a/*"],
                "destinations":[{"name":"a"},{"name":"b","fallbacks":[{"model":"m","destination":"a"}]}]}]}"#,
        )
        .unwrap();
    }

    #[test]
    fn defaults_and_fallbacks_resolve() {
        let c = Config::from_json(
            br#"{"failover":{},"models":[{"name":"m","destinations":[{"name":"a","fallbacks":[{"model":"g","destination":"f1"}]}],
                "fallbacks":[{"model":"f"}]},{"name":"f","aliases":["g"],"destinations":[{"name":"f1"}]}]}"#,
        )
        .unwrap();
        let f = c.failover.unwrap();
        assert_eq!(
            (
                f.threshold,
                f.probation_ms,
                f.max_probation_ms,
                f.trials,
                f.statuses,
                f.first_byte_timeout_ms
            ),
            (5, 5000, 60_000, 1, vec![500, 502, 503, 504], None)
        );
        let m = &c.models[0];
        assert_eq!((m.fallbacks[0].model, m.fallbacks[0].destination), (1, None));
        assert_eq!(
            (
                m.destinations[0].fallbacks[0].model,
                m.destinations[0].fallbacks[0].destination
            ),
            (1, Some(0))
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (json, path) in [
            (
                r#"{"failover":{"consecutiveFailures":0},"#,
                "failover.consecutiveFailures",
            ),
            (r#"{"failover":{"probation":"5"},"#, "failover.probation"),
            (
                r#"{"failover":{"probation":"5s","maxProbation":"1s"},"#,
                "failover.maxProbation",
            ),
            (r#"{"failover":{"trialRequests":101},"#, "failover.trialRequests"),
            (
                r#"{"failover":{"failureStatuses":[503,200]},"#,
                "failover.failureStatuses[1]",
            ),
            (
                r#"{"failover":{"firstByteTimeout":"soon"},"#,
                "failover.firstByteTimeout",
            ),
            (r#"{"failover":{"retries":1},"#, "failover.retries"),
        ] {
            assert_eq!(err(&(json.to_string() + MODELS + "}")).0, path, "{json}");
        }
        let with = |fallbacks: &str, failover: bool| {
            let models = MODELS.replacen(
                r#"[{"name":"a"}"#,
                &format!(r#"[{{"name":"a","fallbacks":{fallbacks}}}"#),
                1,
            );
            let f = if failover { r#""failover":{},"# } else { "" };
            format!("{{{f}{models}}}")
        };
        assert_eq!(
            err(&with(r#"[{"model":"f"}]"#, false)).0,
            "models[0].destinations[0].fallbacks"
        );
        assert_eq!(
            err(&with(r#"[{"model":"f"},{"model":"nope"}]"#, true)).0,
            "models[0].destinations[0].fallbacks[1].model"
        );
        assert_eq!(
            err(&with(r#"[{"model":"f","destination":"a"}]"#, true)).0,
            "models[0].destinations[0].fallbacks[0].destination"
        );
        assert_eq!(
            err(&with(r#"[{"model":"f","weight":1}]"#, true)).0,
            "models[0].destinations[0].fallbacks[0].weight"
        );
    }
}
