//! Validation: the `Raw*` values read from the document checked and turned into the runtime
//! `Config`. Every refusal names the field path and says what is wrong in words
//! (`ErrorKind::Invalid`).
//!
//! The configuration code runs once per VM but is compiled whole by V8 at start-up, and V8's
//! compile memory (kept by Envoy's allocator afterwards) grows with the size of each function:
//! the checks here stay small, separate functions (`#[inline(never)]`; docs/performance.md).

use std::collections::HashMap;

use super::raw::{RawConfig, RawLimits, RawModel, RawRateLimitService, RawScope};
use super::{
    AllowRule, Config, ConfigError, Destination, IdentitySource, LimitKey, Limits, Model, Policy, RateLimitService,
    Scope, DEFAULT_RLS_TIMEOUT_MS, MAX_NAME_LEN, MAX_RLS_TIMEOUT_MS,
};

#[inline(never)]
pub(super) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let route_header = header_name("routeHeader", &raw.route_header)?;
    let model_header = header_name("modelHeader", &raw.model_header)?;
    if route_header == model_header {
        return Err(ConfigError::invalid(
            "modelHeader",
            format!("must differ from routeHeader (both are `{route_header}`)"),
        ));
    }
    let sticky_header = match &raw.sticky_header {
        Some(h) => Some(header_name("stickyHeader", h)?),
        None => None,
    };
    if raw.max_body_bytes == 0 {
        return Err(ConfigError::invalid("maxBodyBytes", "must be greater than 0"));
    }
    let identity_header = match &raw.identity_header {
        Some(h) => Some(header_name("identityHeader", h)?),
        None => None,
    };
    if raw.identity_source == IdentitySource::Header && identity_header.is_none() {
        return Err(ConfigError::invalid(
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
        return Err(ConfigError::invalid("estimatedOutputTokens", "must be greater than 0"));
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
            return Err(ConfigError::invalid(format!("{at}.upstreamModel"), "must not be empty"));
        }
    }
    if m.destinations.is_empty() {
        return Err(ConfigError::invalid(
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
            return Err(ConfigError::invalid(
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
        return Err(ConfigError::invalid(
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
        return Err(ConfigError::invalid(
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
                return Err(ConfigError::invalid(
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
                    return Err(ConfigError::invalid(
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
                return Err(ConfigError::invalid(
                    "scope.paths",
                    "must not be empty (leave it out for the built-in inference endpoints, or use [\"/\"] for all)",
                ));
            }
            for (i, p) in list.iter().enumerate() {
                if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == b'?' || b == b'#') {
                    return Err(ConfigError::invalid(
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
        return Err(ConfigError::invalid(
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
                return Err(ConfigError::invalid(
                    p,
                    format!("`{e}` is not a SPIFFE ID (spiffe://trust-domain/path), `*`, or a prefix ending in `*`"),
                ));
            }
            if e.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
                return Err(ConfigError::invalid(
                    p,
                    format!("`{e}` has spaces or non-ASCII characters"),
                ));
            }
            match e.split_once('*') {
                None => Ok(AllowRule::Exact(e.clone())),
                Some((prefix, "")) => Ok(AllowRule::Prefix(prefix.to_string())),
                Some(_) => Err(ConfigError::invalid(
                    p,
                    format!("`{e}`: `*` is only allowed at the end"),
                )),
            }
        })
        .collect()
}

#[inline(never)]
fn limits(path: &str, l: &RawLimits) -> Result<Limits, ConfigError> {
    if l.requests_per_minute.is_none() && l.tokens_per_minute.is_none() {
        return Err(ConfigError::invalid(
            path,
            "set requestsPerMinute, tokensPerMinute, or both",
        ));
    }
    for (field, v) in [
        ("requestsPerMinute", l.requests_per_minute),
        ("tokensPerMinute", l.tokens_per_minute),
    ] {
        if v == Some(0) {
            return Err(ConfigError::invalid(
                format!("{path}.{field}"),
                "must be greater than 0",
            ));
        }
    }
    let by = match l.by.as_deref() {
        None | Some("principal") => LimitKey::Principal,
        Some("global") => LimitKey::Global,
        Some(other) => match other.strip_prefix("header:") {
            Some(h) => LimitKey::Header(header_name(&format!("{path}.by"), h)?),
            None => {
                return Err(ConfigError::invalid(
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
            return Err(ConfigError::invalid(
                format!("{path}.mode"),
                format!("`{other}`: expected `local` or `global`"),
            ))
        }
    };
    if global && l.tokens_per_minute.is_some_and(|t| t > u64::from(u32::MAX)) {
        return Err(ConfigError::invalid(
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
        return Err(ConfigError::invalid(
            "rateLimitService.cluster",
            "an Envoy cluster name, e.g. `outbound|8081||limitador.kuadrant-system.svc.cluster.local`",
        ));
    }
    let domain = r.domain.trim();
    if domain.is_empty() || domain.len() > 253 || domain.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ConfigError::invalid(
            "rateLimitService.domain",
            "a non-empty name without spaces (the RLS domain, Limitador's namespace)",
        ));
    }
    let timeout_ms = match r.timeout.as_deref() {
        None => DEFAULT_RLS_TIMEOUT_MS,
        Some(t) => match parse_duration_ms(t) {
            Some(ms) if (1..=MAX_RLS_TIMEOUT_MS).contains(&ms) => ms,
            Some(_) => {
                return Err(ConfigError::invalid(
                    "rateLimitService.timeout",
                    format!("`{t}`: between 1ms and {}s", MAX_RLS_TIMEOUT_MS / 1000),
                ))
            }
            None => {
                return Err(ConfigError::invalid(
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
            return Err(ConfigError::invalid(
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
        return Err(ConfigError::invalid(
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
        return Err(ConfigError::invalid(path, "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ConfigError::invalid(path, format!("longer than {MAX_NAME_LEN} bytes")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || *c == ';' || *c == '=')
    {
        return Err(ConfigError::invalid(
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
        return Err(ConfigError::invalid(
            path,
            format!("`{name}` is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)"),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "host" | "content-length" | "content-type" | "transfer-encoding"
    ) {
        return Err(ConfigError::invalid(
            path,
            format!("`{name}` is reserved; pick another header"),
        ));
    }
    Ok(lower)
}
