//! Global limits: the messages of the rate limit service protocols, as data.
//!
//! - Request limits: Envoy's `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` with
//!   `hits_addend` 1, before the request is routed (check and count in one atomic step; served by
//!   Limitador and by envoyproxy/ratelimit).
//! - Token limits: Limitador's `kuadrant.service.ratelimit.v1.RateLimitService/CheckRateLimit`
//!   before admission (is there budget left? nothing counted), then `Report` with the tokens the
//!   response used once it ended (check-then-report: the cost is only known afterwards).
//!
//! Every call carries one descriptor: `model` (canonical name), `kind` (`requests` | `tokens`) and,
//! unless the limit is `by: global`, `caller` (the SPIFFE ID, `anonymous`, or the `by: header:NAME`
//! value). A Limitador limit matches them with CEL, e.g. condition
//! `descriptors[0]['model'] == 'llama-3-8b' && descriptors[0]['kind'] == 'tokens'` and variable
//! `descriptors[0]['caller']` (one counter per caller).

use crate::proto::{self, Value};

pub const RLS_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const KUADRANT_SERVICE: &str = "kuadrant.service.ratelimit.v1.RateLimitService";

/// Descriptor keys.
pub const KEY_MODEL: &str = "model";
pub const KEY_KIND: &str = "kind";
pub const KEY_CALLER: &str = "caller";

/// Longest `caller` value sent (longer values are cut, at a character boundary).
const MAX_CALLER: usize = 1024;

/// A call to the rate limit service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `ShouldRateLimit`, hits 1: takes one request from the shared count.
    Requests,
    /// `CheckRateLimit`: is the token budget not yet spent?
    Tokens,
    /// `Report`: the tokens a response used.
    Report,
}

impl Call {
    pub fn service(self) -> &'static str {
        match self {
            Call::Requests => RLS_SERVICE,
            Call::Tokens | Call::Report => KUADRANT_SERVICE,
        }
    }

    pub fn method(self) -> &'static str {
        match self {
            Call::Requests => "ShouldRateLimit",
            Call::Tokens => "CheckRateLimit",
            Call::Report => "Report",
        }
    }

    /// The `call` label of the failure metric.
    pub fn label(self) -> &'static str {
        match self {
            Call::Requests => "requests",
            Call::Tokens => "tokens",
            Call::Report => "report",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Call::Requests => "requests",
            Call::Tokens | Call::Report => "tokens",
        }
    }
}

/// A caller value as sent: valid UTF-8 (protobuf strings must be), bounded.
pub fn caller_value(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut end = s.len().min(MAX_CALLER);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The serialized `RateLimitRequest` of a call.
pub fn request(call: Call, domain: &str, model: &str, caller: Option<&str>, hits: u32) -> Vec<u8> {
    let mut descriptor = Vec::new();
    let mut entries: Vec<(&str, &str)> = vec![(KEY_MODEL, model), (KEY_KIND, call.kind())];
    if let Some(c) = caller {
        entries.push((KEY_CALLER, c));
    }
    for (k, v) in entries {
        let mut entry = Vec::with_capacity(k.len() + v.len() + 4);
        proto::put_bytes(&mut entry, 1, k.as_bytes());
        proto::put_bytes(&mut entry, 2, v.as_bytes());
        proto::put_bytes(&mut descriptor, 1, &entry);
    }
    let mut msg = Vec::with_capacity(domain.len() + descriptor.len() + 8);
    proto::put_bytes(&mut msg, 1, domain.as_bytes());
    proto::put_bytes(&mut msg, 2, &descriptor);
    proto::put_uint(&mut msg, 3, u64::from(hits));
    msg
}

/// Envoy's `GrpcService` naming a cluster (`envoy_grpc.cluster_name`): what `proxy_grpc_call`
/// takes as the upstream (a bare cluster name can, by chance, parse as a protobuf). Its
/// `authority` is the cluster name by default, but an Istio name (`outbound|8081||host`) is no
/// valid `:authority` (HTTP/2 refuses it: every call is reset), so then it is `host:8081`.
pub fn grpc_service(cluster: &str) -> Vec<u8> {
    let mut envoy_grpc = Vec::with_capacity(cluster.len() * 2 + 8);
    proto::put_bytes(&mut envoy_grpc, 1, cluster.as_bytes());
    if let Some(authority) = authority_for(cluster) {
        proto::put_bytes(&mut envoy_grpc, 2, authority.as_bytes());
    }
    let mut out = Vec::with_capacity(envoy_grpc.len() + 4);
    proto::put_bytes(&mut out, 1, &envoy_grpc);
    out
}

/// The `:authority` for a cluster whose name is not a valid one; `None` if it is.
fn authority_for(cluster: &str) -> Option<String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._:".contains(&b);
    let valid = |s: &str| !s.is_empty() && s.bytes().all(allowed);
    if valid(cluster) {
        return None;
    }
    let parts: Vec<&str> = cluster.split('|').collect();
    if let [_, port, _, host] = parts.as_slice() {
        let a = format!("{host}:{port}");
        if valid(&a) {
            return Some(a);
        }
    }
    Some(
        cluster
            .bytes()
            .map(|b| if allowed(b) { b as char } else { '-' })
            .collect(),
    )
}

/// What the service answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok,
    OverLimit,
    /// `UNKNOWN` (Limitador: an empty domain) or a code this filter does not know.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub code: Code,
    /// What is left of the tightest limit, when the service says (envoyproxy/ratelimit statuses,
    /// Limitador's `X-RateLimit-Remaining` with `--rate-limit-headers DRAFT_VERSION_03`).
    pub remaining: Option<u64>,
    /// Seconds until that limit resets, when the service says.
    pub reset_s: Option<u64>,
}

/// Reads a `RateLimitResponse`; `None` if it is not one.
pub fn answer(bytes: &[u8]) -> Option<Answer> {
    let mut code = 0u64;
    let mut tightest: Option<(u64, Option<u64>)> = None;
    let mut header_remaining = None;
    let mut header_reset = None;
    for (field, value) in proto::fields(bytes)? {
        match (field, value) {
            (1, Value::Varint(c)) => code = c,
            (2, Value::Bytes(status)) => {
                let mut remaining = None;
                let mut reset = None;
                let mut has_limit = false;
                for (f, v) in proto::fields(status)? {
                    match (f, v) {
                        (2, Value::Bytes(_)) => has_limit = true,
                        (3, Value::Varint(r)) => remaining = Some(r),
                        (4, Value::Bytes(d)) => {
                            for (df, dv) in proto::fields(d)? {
                                if let (1, Value::Varint(s)) = (df, dv) {
                                    reset = Some(s);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                if has_limit {
                    let r = remaining.unwrap_or(0);
                    if tightest.is_none_or(|(t, _)| r < t) {
                        tightest = Some((r, reset));
                    }
                }
            }
            (3, Value::Bytes(header)) => {
                let mut key: &[u8] = b"";
                let mut val: &[u8] = b"";
                for (f, v) in proto::fields(header)? {
                    match (f, v) {
                        (1, Value::Bytes(k)) => key = k,
                        (2 | 3, Value::Bytes(x)) => val = x,
                        _ => {}
                    }
                }
                let number = || leading_number(val);
                if key.eq_ignore_ascii_case(b"x-ratelimit-remaining") {
                    header_remaining = number();
                } else if key.eq_ignore_ascii_case(b"x-ratelimit-reset") {
                    header_reset = number();
                }
            }
            _ => {}
        }
    }
    let code = match code {
        1 => Code::Ok,
        2 => Code::OverLimit,
        _ => Code::Unknown,
    };
    let (remaining, reset_s) = match tightest {
        Some((r, reset)) => (Some(r), reset),
        None => (header_remaining, header_reset),
    };
    Some(Answer {
        code,
        remaining,
        reset_s,
    })
}

/// The descriptor entries and hits of a serialized `RateLimitRequest` (for `wasmpack route`).
#[cfg(any(test, feature = "decide"))]
pub fn describe(msg: &[u8]) -> Option<(Vec<(String, String)>, u64)> {
    let mut entries = Vec::new();
    let mut hits = 0;
    for (f, v) in proto::fields(msg)? {
        match (f, v) {
            (2, Value::Bytes(d)) => {
                for (_, e) in proto::fields(d)? {
                    let Value::Bytes(e) = e else { continue };
                    let mut kv = (String::new(), String::new());
                    for (ef, ev) in proto::fields(e)? {
                        if let Value::Bytes(b) = ev {
                            let s = String::from_utf8_lossy(b).into_owned();
                            if ef == 1 {
                                kv.0 = s;
                            } else {
                                kv.1 = s;
                            }
                        }
                    }
                    entries.push(kv);
                }
            }
            (3, Value::Varint(h)) => hits = h,
            _ => {}
        }
    }
    Some((entries, hits))
}

/// `12`, `12, 12;w=60` → 12.
fn leading_number(v: &[u8]) -> Option<u64> {
    let digits: Vec<u8> = v.trim_ascii().iter().copied().take_while(u8::is_ascii_digit).collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// gRPC status codes the failure metric names.
pub const GRPC_DEADLINE_EXCEEDED: u32 = 4;
pub const GRPC_UNAVAILABLE: u32 = 14;

/// The `reason` label for a call that failed with gRPC status `status`.
pub fn failure_reason(status: u32) -> &'static str {
    match status {
        GRPC_DEADLINE_EXCEEDED => "timeout",
        GRPC_UNAVAILABLE => "unavailable",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(msg: &[u8]) -> (String, Vec<(String, String)>, u64) {
        let fields = proto::fields(msg).unwrap();
        assert!(
            fields.iter().all(|(f, _)| (1..=3).contains(f)),
            "unexpected fields: {fields:?}"
        );
        let domain = fields
            .iter()
            .find_map(|(f, v)| match (f, v) {
                (1, Value::Bytes(d)) => Some(String::from_utf8(d.to_vec()).unwrap()),
                _ => None,
            })
            .unwrap_or_default();
        let (entries, hits) = describe(msg).unwrap();
        (domain, entries, hits)
    }

    #[test]
    fn requests_carry_the_model_the_kind_and_the_caller() {
        let msg = request(
            Call::Report,
            "model-router",
            "llama-3-8b",
            Some("spiffe://td/ns/a/sa/b"),
            1234,
        );
        let (domain, e, hits) = entries(&msg);
        assert_eq!(domain, "model-router");
        assert_eq!(hits, 1234);
        let pairs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            vec![
                ("model", "llama-3-8b"),
                ("kind", "tokens"),
                ("caller", "spiffe://td/ns/a/sa/b")
            ]
        );
        let (_, e, hits) = entries(&request(Call::Requests, "d", "m", None, 1));
        assert_eq!((e.len(), e[1].1.as_str(), hits), (2, "requests", 1));
        assert_eq!(Call::Tokens.method(), "CheckRateLimit");
        assert_eq!(Call::Requests.service(), RLS_SERVICE);
    }

    #[test]
    fn caller_values_are_utf8_and_bounded() {
        assert_eq!(caller_value(b"team-a"), "team-a");
        assert_eq!(caller_value(&[0xff, b'a']), "\u{fffd}a");
        let long = "é".repeat(2000);
        let v = caller_value(long.as_bytes());
        assert!(v.len() <= MAX_CALLER && v.chars().all(|c| c == 'é'));
    }

    fn status(remaining: u32, reset: Option<u64>) -> Vec<u8> {
        let mut limit = Vec::new();
        proto::put_uint(&mut limit, 1, 20);
        proto::put_uint(&mut limit, 2, 2);
        let mut s = Vec::new();
        proto::put_uint(&mut s, 1, 1);
        proto::put_bytes(&mut s, 2, &limit);
        proto::put_uint(&mut s, 3, u64::from(remaining));
        if let Some(r) = reset {
            let mut d = Vec::new();
            proto::put_uint(&mut d, 1, r);
            proto::put_bytes(&mut s, 4, &d);
        }
        s
    }

    #[test]
    fn answers_say_the_code_and_the_tightest_limit() {
        // envoyproxy/ratelimit: statuses with limits, remaining and reset.
        let mut msg = Vec::new();
        proto::put_uint(&mut msg, 1, 2);
        proto::put_bytes(&mut msg, 2, &status(7, Some(40)));
        proto::put_bytes(&mut msg, 2, &status(0, Some(12)));
        let a = answer(&msg).unwrap();
        assert_eq!(
            a,
            Answer {
                code: Code::OverLimit,
                remaining: Some(0),
                reset_s: Some(12)
            }
        );

        // Limitador: no statuses; draft-03 headers when enabled.
        let mut h = Vec::new();
        proto::put_bytes(&mut h, 1, b"X-RateLimit-Remaining");
        proto::put_bytes(&mut h, 2, b"3");
        let mut msg = Vec::new();
        proto::put_uint(&mut msg, 1, 1);
        proto::put_bytes(&mut msg, 3, &h);
        assert_eq!(
            answer(&msg).unwrap(),
            Answer {
                code: Code::Ok,
                remaining: Some(3),
                reset_s: None
            }
        );

        // An empty message is proto3's all-defaults: code UNKNOWN.
        assert_eq!(answer(b"").unwrap().code, Code::Unknown);
        assert_eq!(answer(&[0x08, 0x07]).unwrap().code, Code::Unknown);
        assert_eq!(answer(&[0x12, 0x05, 0x01]), None);
        assert_eq!(leading_number(b" 1, 1;w=60"), Some(1));
    }

    #[test]
    fn the_service_is_named_by_its_cluster() {
        let s = grpc_service("outbound|8081||limitador.kuadrant-system.svc.cluster.local");
        let f = proto::fields(&s).unwrap();
        let Value::Bytes(inner) = f[0].1 else { panic!() };
        assert_eq!(
            proto::fields(inner).unwrap(),
            vec![
                (
                    1,
                    Value::Bytes(b"outbound|8081||limitador.kuadrant-system.svc.cluster.local".as_slice())
                ),
                (
                    2,
                    Value::Bytes(b"limitador.kuadrant-system.svc.cluster.local:8081".as_slice())
                ),
            ]
        );
        assert_eq!(authority_for("limitador"), None);
        assert_eq!(authority_for("rate limit/x").as_deref(), Some("rate-limit-x"));
        assert_eq!(failure_reason(4), "timeout");
        assert_eq!(failure_reason(14), "unavailable");
        assert_eq!(failure_reason(13), "error");
    }
}
