//! The `failover` section and the `fallbacks` of models and destinations: read, checked and
//! resolved to indexes (docs/failover.md).

use serde::Deserialize;

use crate::config::{ConfigError, Model};

/// `failover`: when a destination stops getting new requests, and when it is tried again.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFailover {
    #[serde(default)]
    /// Failures in a row that open a destination's breaker (default 5).
    pub consecutive_failures: Option<u64>,
    #[serde(default)]
    /// How long an open destination gets no new requests, the first time (default `5s`); it
    /// doubles each time the destination opens again before it recovered.
    pub probation: Option<String>,
    #[serde(default)]
    /// The longest probation (default `60s`).
    pub max_probation: Option<String>,
    #[serde(default)]
    /// Successful trial requests after a probation that close the breaker (default 1).
    pub trial_requests: Option<u64>,
    #[serde(default)]
    /// Response statuses that count as failures (default `[500, 502, 503, 504]`; add 429 to fail
    /// over from a rate-limited backend). Upstream resets and connect failures always count.
    pub failure_statuses: Option<Vec<u64>>,
    #[serde(default)]
    /// A response whose headers come later than this after the request went upstream counts as
    /// a failure (`30s`; default: none). The request itself is not cut short.
    pub first_byte_timeout: Option<String>,
}

/// One entry of `fallbacks`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFallback {
    /// A configured model (canonical name or alias); its `upstreamModel` rewrite applies.
    pub model: String,
    #[serde(default)]
    /// One of its destinations (default: its destinations by their weights).
    pub destination: Option<String>,
}

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
    ConfigError {
        path: path.to_string(),
        message: message.to_string(),
    }
}

fn duration(path: &str, v: Option<&str>, default: u32, none_ok: bool) -> Result<u32, ConfigError> {
    match v {
        None => Ok(default),
        Some(t) => match crate::config::parse_duration_ms(t) {
            Some(ms) if ms > 0 && ms <= 86_400_000 => Ok(ms),
            _ if none_ok => Err(err(path, "a duration like `30s` or `500ms`, at most 24h")),
            _ => Err(err(path, "a duration like `5s` or `500ms`, at most 24h")),
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
    let probation_ms = duration("failover.probation", raw.probation.as_deref(), 5_000, false)?;
    let max_probation_ms = duration("failover.maxProbation", raw.max_probation.as_deref(), 60_000, false)?;
    if max_probation_ms < probation_ms {
        return Err(err("failover.maxProbation", "must not be shorter than probation"));
    }
    let first_byte_timeout_ms = match raw.first_byte_timeout.as_deref() {
        None => None,
        t => Some(duration("failover.firstByteTimeout", t, 0, true)?),
    };
    let mut statuses = Vec::new();
    match &raw.failure_statuses {
        None => statuses.extend([500, 502, 503, 504]),
        Some(list) => {
            for (i, s) in list.iter().enumerate() {
                if !(400..=599).contains(s) {
                    let path = crate::config::indexed("failover.failureStatuses", i);
                    return Err(err(&path, "a status between 400 and 599"));
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

/// Resolves a list of fallbacks at `path` against the configuration's models.
#[inline(never)]
pub fn resolve(
    path: &str,
    raw: &[RawFallback],
    models: &[Model],
    find: &dyn Fn(&str) -> Option<usize>,
) -> Result<Vec<Fallback>, ConfigError> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, f) in raw.iter().enumerate() {
        let at = crate::config::indexed(path, i);
        let Some(model) = find(&f.model) else {
            return Err(err(&(at + ".model"), "not a configured model or alias"));
        };
        let destination = match &f.destination {
            None => None,
            Some(d) => match models[model].destinations.iter().position(|x| x.name == *d) {
                Some(j) => Some(j),
                None => return Err(err(&(at + ".destination"), "not a destination of that model")),
            },
        };
        out.push(Fallback { model, destination });
    }
    Ok(out)
}
