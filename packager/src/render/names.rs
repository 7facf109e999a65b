//! Names: DNS labels for objects, and what a destination's `host` names (a Service of the
//! cluster, or an external provider).

/// RFC 1123 label: lowercase letters, digits and `-`, starting and ending alphanumeric, ≤ 63.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS label made from any name (`OpenAI.Prod` → `openai-prod`,
/// `meta-llama/Llama-3.1-8B` → `meta-llama-llama-3-1-8b`); `None` if nothing is left.
pub fn dns_label(s: &str) -> Option<String> {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-');
    let mut out: String = out.chars().take(63).collect();
    while out.ends_with('-') {
        out.pop();
    }
    (!out.is_empty()).then_some(out)
}

/// A public DNS name outside the cluster (`api.openai.com`): three or more labels, not a
/// `*.svc` / `*.svc.cluster.local` Service host.
pub(super) fn external_host(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    labels.len() >= 3
        && labels.iter().all(|l| is_dns_label(l))
        && !labels.contains(&"svc")
        && !host.ends_with(".cluster.local")
}

/// Service and namespace of a host: `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`.
pub(super) fn service_of(host: &str, default_ns: &str) -> Result<(String, String), String> {
    if external_host(host) {
        return Err(format!(
            "`{host}` is outside the cluster, not a Kubernetes Service host"
        ));
    }
    let labels: Vec<&str> = host.split('.').collect();
    if labels.iter().any(|l| !is_dns_label(l)) {
        return Err(format!(
            "`{host}` is not a Kubernetes Service host (lowercase DNS labels: svc, svc.ns or svc.ns.svc.cluster.local)"
        ));
    }
    let ns = match labels.as_slice() {
        [_] => default_ns.to_string(),
        [_, ns] | [_, ns, "svc"] | [_, ns, "svc", _, _] => ns.to_string(),
        _ => {
            return Err(format!(
                "`{host}` is not a Kubernetes Service host (svc, svc.ns, svc.ns.svc or svc.ns.svc.cluster.local); \
                 an external provider is a public name such as api.openai.com"
            ))
        }
    };
    Ok((labels[0].to_string(), ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert_eq!(dns_label("OpenAI.Prod").as_deref(), Some("openai-prod"));
        assert_eq!(
            dns_label("meta-llama/Llama-3.1-8B").as_deref(),
            Some("meta-llama-llama-3-1-8b")
        );
        assert_eq!(dns_label("--").as_deref(), None);
        assert_eq!(dns_label(&"a".repeat(80)).map(|s| s.len()), Some(63));
        assert!(is_dns_label("llama-v1"));
        assert!(!is_dns_label("Llama"));
        assert_eq!(
            service_of("llama.team-a.svc.cluster.local", "ai").unwrap(),
            ("llama".into(), "team-a".into())
        );
        assert_eq!(
            service_of("llama.team-b", "ai").unwrap(),
            ("llama".into(), "team-b".into())
        );
        assert_eq!(service_of("llama", "ai").unwrap(), ("llama".into(), "ai".into()));
        assert!(service_of("api.openai.com", "ai").is_err());
        assert!(service_of("Llama.ai", "ai").is_err());
    }
}
