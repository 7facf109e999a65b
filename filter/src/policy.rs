//! Per-model access control and rate limits, decided after the model is known and before the
//! request is routed. Host-free: the shared store and the time are passed in.
//!
//! Limits are token buckets kept in proxy-wasm shared data, which every worker VM of one Envoy
//! shares; updates use compare-and-swap with retries. Request buckets refill `requestsPerMinute`
//! per minute and each request takes one; token buckets refill `tokensPerMinute` per minute, are
//! charged with the tokens a response reported, and admit a request while they are above zero
//! (so one request may overdraw, and later ones wait).

use crate::config::{Config, LimitKey, Limits, Model};
use crate::reply::{Reject, RejectReason};
use crate::routing::hash;

/// Longest identity or key value taken from a request; longer ones are junk.
const MAX_ID: usize = 2048;
/// CAS attempts before giving up (and letting the request through).
const CAS_TRIES: usize = 16;

/// The caller's SPIFFE ID: the mTLS peer's URI SAN, else the trusted identity header (only
/// consulted when configured). Anything that is not a printable `spiffe://` ID is no identity.
pub fn identity(peer_uri_san: Option<&[u8]>, header: Option<&[u8]>) -> Option<String> {
    let valid = |v: &[u8]| {
        let v = v.trim_ascii();
        (v.starts_with(b"spiffe://") && v.len() <= MAX_ID && v.iter().all(|b| (0x21..0x7f).contains(b)))
            .then(|| String::from_utf8_lossy(v).into_owned())
    };
    match peer_uri_san.filter(|v| !v.is_empty()) {
        Some(p) => valid(p),
        None => header.and_then(valid),
    }
}

/// An identity as Istio may store it (`cluster.local/ns/a/sa/b`), as a SPIFFE ID.
pub fn with_spiffe_scheme(v: Vec<u8>) -> Vec<u8> {
    let trimmed = v.trim_ascii();
    if trimmed.is_empty() || trimmed.starts_with(b"spiffe://") {
        return v;
    }
    let mut out = b"spiffe://".to_vec();
    out.extend_from_slice(trimmed);
    out
}

/// Shared storage with compare-and-swap (proxy-wasm shared data in the filter, a map in tests),
/// with proxy-wasm's semantics: `cas` 0 writes unconditionally; a key that exists is written only
/// if its CAS token still equals `cas`; a key that does not exist is created whatever `cas` is.
pub trait Store {
    /// The value and its CAS token (0 when absent).
    fn get(&self, key: &str) -> (Option<Vec<u8>>, u32);
    /// Writes if the CAS token still matches; `Err(true)` on a CAS mismatch, `Err(false)` otherwise.
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), bool>;
}

/// The CAS token used to create a key: non-zero, so the write fails with a mismatch if another
/// worker created the key since we saw it absent (proxy-wasm has no create-if-absent call; a
/// non-zero token on a new key is that call). Envoy hands out tokens from one counter, so an
/// existing key holds exactly this token only once every 2^32 writes.
const CREATE_CAS: u32 = u32::MAX;

/// A token bucket: its level, when it was last brought up to date, and whose it is (the
/// caller's keyed hash; 0: unknown, a value written before buckets had owners).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub level: f64,
    pub updated_ns: u64,
    pub owner: u64,
}

impl Bucket {
    fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.level.to_le_bytes());
        b[8..16].copy_from_slice(&self.updated_ns.to_le_bytes());
        b[16..].copy_from_slice(&self.owner.to_le_bytes());
        b
    }

    fn decode(v: &[u8]) -> Option<Bucket> {
        let level = f64::from_le_bytes(v.get(..8)?.try_into().ok()?);
        let updated_ns = u64::from_le_bytes(v.get(8..16)?.try_into().ok()?);
        let owner = match v.get(16..24) {
            Some(o) => u64::from_le_bytes(o.try_into().ok()?),
            None => 0,
        };
        level.is_finite().then_some(Bucket {
            level,
            updated_ns,
            owner,
        })
    }

    /// A full bucket for `owner`, as of `now`.
    fn full(per_minute: u64, now_ns: u64, owner: u64) -> Bucket {
        Bucket {
            level: per_minute as f64,
            updated_ns: now_ns,
            owner,
        }
    }

    /// Brought up to `now`: refilled at `per_minute` per minute, up to `per_minute`. A clock that
    /// went backwards refills nothing.
    fn refilled(self, now_ns: u64, per_minute: u64) -> Bucket {
        let cap = per_minute as f64;
        let elapsed = now_ns.saturating_sub(self.updated_ns) as f64 / 1e9;
        Bucket {
            level: (self.level + elapsed * cap / 60.0).min(cap),
            updated_ns: now_ns.max(self.updated_ns),
            owner: self.owner,
        }
    }
}

/// The rate-limit state a response reports (OpenAI's `x-ratelimit-*` headers).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateInfo {
    /// (limit, remaining, seconds until full when known) for requests, when limited by requests.
    pub requests: Option<(u64, u64, Option<u64>)>,
    /// The same for tokens.
    pub tokens: Option<(u64, u64, Option<u64>)>,
}

impl RateInfo {
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut h = Vec::new();
        for (kind, v) in [("requests", self.requests), ("tokens", self.tokens)] {
            if let Some((limit, remaining, reset)) = v {
                h.push((format!("x-ratelimit-limit-{kind}"), limit.to_string()));
                h.push((format!("x-ratelimit-remaining-{kind}"), remaining.to_string()));
                if let Some(reset) = reset {
                    h.push((format!("x-ratelimit-reset-{kind}"), format!("{reset}s")));
                }
            }
        }
        h
    }
}

/// Where a request's limits are kept: the caller's place in the bucket table and the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    place: Place,
    limits: Limits,
    /// For a global limit: the `caller` descriptor value (`None` for `by: global`).
    caller: Option<String>,
}

impl Charge {
    /// The model has a token limit, so the response's tokens are charged.
    pub fn counts_tokens(&self) -> bool {
        self.limits.tokens_per_minute.is_some()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The `caller` descriptor of a global limit.
    pub fn caller(&self) -> Option<&str> {
        self.caller.as_deref()
    }
}

/// Who a caller without identity (or without the `by: header:NAME` header) is counted as.
pub const ANONYMOUS: &str = "anonymous";

/// What the admission needs to know about the request.
#[derive(Debug, Clone, Default)]
pub struct Caller<'a> {
    pub principal: Option<&'a str>,
    /// Values of the headers named by `by: header:NAME` limits, by lowercase name.
    pub headers: &'a [(String, Vec<u8>)],
    /// The proxy's secret for placing callers in the bucket table (`bucket_seed`).
    pub seed: u64,
}

/// Slots per model and kind (requests, tokens) for the buckets of callers (`by: principal`,
/// `by: header:NAME`). Shared data is never freed, so the table is fixed: a client rotating
/// header values cannot grow the proxy (at most `BUCKET_SLOTS` × 2 keys of about 60 bytes per
/// model). A caller may take either of two slots picked by a keyed hash of its value: the one it
/// owns, else a free one, else one whose owner's bucket is full again (nothing is lost by
/// forgetting it: `evicted`); with both held by callers still using them, it shares one
/// (`shared`: counted in `model_router_limit_bucket_collisions_total`, never freeing anyone
/// from a limit — a shared bucket only limits sooner).
pub const BUCKET_SLOTS: u64 = 4096;

/// Where a caller's buckets may be: candidate keys (without the kind suffix) and the owner tag.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    keys: Vec<String>,
    owner: u64,
}

/// How a caller got a bucket that had another owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collision {
    /// The slot's owner had a full bucket again: forgotten, the slot taken over.
    Evicted,
    /// Both slots held by callers still using them: this caller shares one.
    Shared,
}

impl Collision {
    pub fn label(self) -> &'static str {
        match self {
            Collision::Evicted => "evicted",
            Collision::Shared => "shared",
        }
    }
}

/// The shared-data key of the proxy's bucket-placement secret.
const SEED_KEY: &str = "model-router/rl/seed";

/// The proxy's secret for placing callers in the bucket table, the same for every worker: the
/// first worker to ask stores `candidate` (random), the others read it. Keyed, so that nobody
/// can pick header values that land on another caller's slots. 0 if the store refuses.
pub fn bucket_seed<S: Store>(store: &mut S, candidate: u64) -> u64 {
    let read = |store: &S| {
        store
            .get(SEED_KEY)
            .0
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_le_bytes)
    };
    if let Some(seed) = read(store) {
        return seed;
    }
    let _ = store.set(SEED_KEY, &candidate.to_le_bytes(), CREATE_CAS);
    read(store).unwrap_or(0)
}

/// The header names `by: header:NAME` limits read, for the glue to fetch.
pub fn limit_headers(cfg: &Config) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in &cfg.models {
        if let Some(Limits {
            by: LimitKey::Header(h),
            ..
        }) = &m.limits
        {
            if !out.contains(h) {
                out.push(h.clone());
            }
        }
    }
    out
}

fn place(model: &Model, limits: &Limits, caller: &Caller) -> Place {
    let who: &[u8] = match &limits.by {
        LimitKey::Principal => caller.principal.unwrap_or(ANONYMOUS).as_bytes(),
        LimitKey::Global => {
            return Place {
                keys: vec![format!("model-router/rl/{}/global", model.name)],
                owner: 1,
            }
        }
        LimitKey::Header(h) => caller
            .headers
            .iter()
            .find(|(k, _)| k == h)
            .map(|(_, v)| v.get(..MAX_ID).unwrap_or(v))
            .unwrap_or_default(),
    };
    let mut keyed = Vec::with_capacity(8 + who.len());
    keyed.extend_from_slice(&caller.seed.to_le_bytes());
    keyed.extend_from_slice(who);
    // Never 0 (an unknown owner).
    let owner = hash(&keyed) | 1;
    let first = owner % BUCKET_SLOTS;
    let mut second = (owner >> 32) % BUCKET_SLOTS;
    if second == first {
        second = (first + 1) % BUCKET_SLOTS;
    }
    Place {
        keys: [first, second]
            .iter()
            .map(|s| format!("model-router/rl/{}/{s:03x}", model.name))
            .collect(),
        owner,
    }
}

/// Applies `f` to the caller's bucket of one kind (`suffix`) with compare-and-swap, in the first
/// of its slots it owns or may take (see `BUCKET_SLOTS`). `None` if contention never let a
/// write through (the caller then lets the request pass rather than fail it).
fn update_owned<S: Store, R>(
    store: &mut S,
    place: &Place,
    suffix: &str,
    per_minute: u64,
    now_ns: u64,
    mut f: impl FnMut(Bucket) -> (Bucket, R),
) -> Option<(R, Option<Collision>)> {
    let last = place.keys.len().saturating_sub(1);
    'slots: for (i, slot) in place.keys.iter().enumerate() {
        let key = format!("{slot}{suffix}");
        for _ in 0..CAS_TRIES {
            let (value, cas) = store.get(&key);
            let cas = if value.is_none() { CREATE_CAS } else { cas };
            let (bucket, note) = match value.as_deref().and_then(Bucket::decode) {
                None => (Bucket::full(per_minute, now_ns, place.owner), None),
                Some(b) if b.owner == place.owner => (b.refilled(now_ns, per_minute), None),
                Some(b) => {
                    let b = b.refilled(now_ns, per_minute);
                    if b.level >= per_minute as f64 {
                        (Bucket::full(per_minute, now_ns, place.owner), Some(Collision::Evicted))
                    } else if i < last {
                        continue 'slots;
                    } else {
                        (b, Some(Collision::Shared))
                    }
                }
            };
            let (bucket, result) = f(bucket);
            match store.set(&key, &bucket.encode(), cas) {
                Ok(()) => return Some((result, note)),
                Err(true) => continue,
                Err(false) => return None,
            }
        }
        return None;
    }
    None
}

fn secs_until(missing: f64, per_minute: u64) -> u64 {
    (missing.max(0.0) * 60.0 / per_minute as f64).ceil() as u64
}

/// Checks the allow list, then takes a request from the request bucket and checks that the
/// token bucket is not overdrawn. On success: what to charge later and the headers to report.
/// Buckets taken over from, or shared with, another caller are added to `collisions`.
pub fn admit<S: Store>(
    store: &mut S,
    cfg: &Config,
    model: usize,
    caller: &Caller,
    now_ns: u64,
    collisions: &mut Vec<Collision>,
) -> Result<(Option<Charge>, RateInfo), Reject> {
    let Some(m) = cfg.models.get(model) else {
        return Ok((None, RateInfo::default()));
    };
    if let Some(rules) = &m.allow {
        let allowed = caller.principal.is_some_and(|p| rules.iter().any(|r| r.matches(p)));
        if !allowed {
            let who = caller
                .principal
                .map(|p| format!("`{p}`"))
                .unwrap_or_else(|| "A caller without identity".into());
            return Err(Reject::new(
                RejectReason::ModelAccessDenied,
                format!("{who} may not use the model `{}`.", m.name),
            ));
        }
    }
    let Some(limits) = &m.limits else {
        return Ok((None, RateInfo::default()));
    };
    if limits.global {
        // Counted by the rate limit service: the exchange asks it.
        let who = match &limits.by {
            LimitKey::Global => None,
            LimitKey::Principal => Some(caller.principal.unwrap_or(ANONYMOUS).to_string()),
            LimitKey::Header(h) => Some(
                caller
                    .headers
                    .iter()
                    .find(|(k, _)| k == h)
                    .map(|(_, v)| crate::rls::caller_value(v))
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| ANONYMOUS.to_string()),
            ),
        };
        return Ok((
            Some(Charge {
                // No bucket here: the service counts.
                place: Place {
                    keys: Vec::new(),
                    owner: 0,
                },
                limits: limits.clone(),
                caller: who,
            }),
            RateInfo::default(),
        ));
    }
    let place = place(m, limits, caller);
    let mut info = RateInfo::default();
    if let Some(tpm) = limits.tokens_per_minute {
        let level = update_owned(store, &place, "/t", tpm, now_ns, |b| (b, b.level));
        if let Some((level, note)) = level {
            collisions.extend(note);
            info.tokens = Some((tpm, level.max(0.0) as u64, Some(secs_until(tpm as f64 - level, tpm))));
            if level <= 0.0 {
                let retry = secs_until(1.0 - level, tpm).max(1);
                return Err(limited(m, "tokens", tpm, retry, &info));
            }
        }
    }
    if let Some(rpm) = limits.requests_per_minute {
        let taken = update_owned(store, &place, "/r", rpm, now_ns, |b| {
            if b.level >= 1.0 {
                (
                    Bucket {
                        level: b.level - 1.0,
                        ..b
                    },
                    Ok(b.level - 1.0),
                )
            } else {
                (b, Err(b.level))
            }
        });
        let taken = taken.map(|(r, note)| {
            collisions.extend(note);
            r
        });
        match taken {
            Some(Ok(left)) => info.requests = Some((rpm, left as u64, Some(secs_until(rpm as f64 - left, rpm)))),
            Some(Err(level)) => {
                info.requests = Some((rpm, 0, Some(secs_until(rpm as f64 - level, rpm))));
                let retry = secs_until(1.0 - level, rpm).max(1);
                return Err(limited(m, "requests", rpm, retry, &info));
            }
            None => {}
        }
    }
    Ok((
        Some(Charge {
            place,
            limits: limits.clone(),
            caller: None,
        }),
        info,
    ))
}

fn limited(m: &Model, kind: &str, limit: u64, retry_after: u64, info: &RateInfo) -> Reject {
    limited_message(&m.name, kind, limit, "", retry_after, info)
}

/// The 429 of a limit (`shared`: how it is counted, for global limits).
pub fn limited_message(model: &str, kind: &str, limit: u64, shared: &str, retry_after: u64, info: &RateInfo) -> Reject {
    let mut r = Reject::new(
        RejectReason::RateLimitExceeded,
        format!(
            "Rate limit reached for model `{model}`: {limit} {kind} per minute{shared}. Retry after {retry_after} s."
        ),
    );
    r.error_type = kind.to_string();
    r.headers.push(("retry-after".into(), retry_after.to_string()));
    r.headers.extend(info.headers());
    r
}

/// Charges the tokens a response reported to the token bucket (it may go below zero, down to
/// one minute's worth, so a burst is paid back before more requests pass).
pub fn charge<S: Store>(store: &mut S, charge: &Charge, tokens: u64, now_ns: u64) {
    let Some(tpm) = charge.limits.tokens_per_minute else {
        return;
    };
    if tokens == 0 || charge.limits.global {
        return;
    }
    // The caller's slot again (it may have been taken over while the response streamed: the
    // bucket was full then, so the caller finds a slot as at admission).
    let _ = update_owned(store, &charge.place, "/t", tpm, now_ns, |b| {
        (
            Bucket {
                level: (b.level - tokens as f64).max(-(tpm as f64)),
                ..b
            },
            (),
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_host::SharedMem;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    /// The in-memory shared data (proxy-wasm's CAS rules), as one worker sees it.
    type Mem = SharedMem;

    /// Shared data another worker writes to between our read and our write, `races` times: it
    /// runs `rival` (a whole admission of its own) on the same store, so our write must notice
    /// the value changed under it.
    struct Racing<'a> {
        store: Rc<RefCell<SharedMem>>,
        races: usize,
        rival: &'a mut dyn FnMut(&mut SharedMem),
    }

    impl Store for Racing<'_> {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, u32) {
            self.store.borrow().get(key)
        }
        fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), bool> {
            if self.races > 0 {
                self.races -= 1;
                (self.rival)(&mut self.store.borrow_mut());
            }
            self.store.borrow_mut().set(key, value, cas)
        }
    }

    const S: u64 = 1_000_000_000;

    fn cfg(extra: &str) -> Config {
        Config::from_json(format!(r#"{{{extra}"models":[{{"name":"m","destinations":[{{"name":"d"}}]}}]}}"#).as_bytes())
            .unwrap()
    }

    fn caller(p: Option<&str>) -> Caller<'_> {
        Caller {
            principal: p,
            headers: &[],
            seed: 0,
        }
    }

    #[test]
    fn identity_sources_and_junk() {
        let id = "spiffe://cluster.local/ns/a/sa/web";
        assert_eq!(
            identity(Some(id.as_bytes()), Some(b"spiffe://x/evil")).as_deref(),
            Some(id),
            "mTLS wins"
        );
        assert_eq!(identity(None, Some(format!(" {id} ").as_bytes())).as_deref(), Some(id));
        assert_eq!(identity(Some(b""), Some(id.as_bytes())).as_deref(), Some(id));
        for junk in [
            &b"team-a"[..],
            b"spiffe://a b",
            b"spiffe://\xff\xfe",
            b"",
            &[b'x'; 5000],
        ] {
            assert_eq!(identity(None, Some(junk)), None, "{junk:?}");
        }
        let long = format!("spiffe://{}", "a".repeat(MAX_ID));
        assert_eq!(identity(None, Some(long.as_bytes())), None);
    }

    #[test]
    fn allow_lists() {
        let c = cfg(r#""allow":["spiffe://td/ns/a/*","spiffe://td/ns/b/sa/x"],"#);
        let mut s = Mem::default();
        assert!(admit(
            &mut s,
            &c,
            0,
            &caller(Some("spiffe://td/ns/a/sa/web")),
            0,
            &mut Vec::new()
        )
        .is_ok());
        assert!(admit(
            &mut s,
            &c,
            0,
            &caller(Some("spiffe://td/ns/b/sa/x")),
            0,
            &mut Vec::new()
        )
        .is_ok());
        for who in [Some("spiffe://td/ns/b/sa/y"), Some("spiffe://td/ns/ab/sa/z"), None] {
            let r = admit(&mut s, &c, 0, &caller(who), 0, &mut Vec::new()).unwrap_err();
            assert_eq!(r.reason, RejectReason::ModelAccessDenied);
            assert_eq!(r.status(), 403);
        }
        let open = cfg("");
        assert!(
            admit(&mut s, &open, 0, &caller(None), 0, &mut Vec::new()).is_ok(),
            "no allow list: everyone"
        );
    }

    #[test]
    fn request_bucket_limits_refills_and_reports() {
        let c = cfg(r#""limits":{"requestsPerMinute":3},"#);
        let mut s = Mem::default();
        let who = caller(Some("spiffe://td/ns/a/sa/web"));
        for left in [2, 1, 0] {
            let (_, info) = admit(&mut s, &c, 0, &who, 10 * S, &mut Vec::new()).unwrap();
            assert_eq!(info.requests.map(|r| r.1), Some(left));
        }
        let r = admit(&mut s, &c, 0, &who, 10 * S, &mut Vec::new()).unwrap_err();
        assert_eq!(r.reason, RejectReason::RateLimitExceeded);
        assert_eq!(r.status(), 429);
        let h: HashMap<_, _> = r.headers.iter().cloned().collect();
        assert_eq!(h["retry-after"], "20", "3/min: one request every 20 s");
        assert_eq!(h["x-ratelimit-limit-requests"], "3");
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
        // Another principal has its own bucket.
        assert!(admit(
            &mut s,
            &c,
            0,
            &caller(Some("spiffe://td/ns/b/sa/x")),
            10 * S,
            &mut Vec::new()
        )
        .is_ok());
        // 20 s later one request more.
        assert!(admit(&mut s, &c, 0, &who, 30 * S, &mut Vec::new()).is_ok());
        assert!(admit(&mut s, &c, 0, &who, 30 * S, &mut Vec::new()).is_err());
        // A clock that jumps back refills nothing and breaks nothing.
        assert!(admit(&mut s, &c, 0, &who, 5 * S, &mut Vec::new()).is_err());
        // A huge jump forward refills only to capacity.
        for _ in 0..3 {
            assert!(admit(&mut s, &c, 0, &who, 10_000 * S, &mut Vec::new()).is_ok());
        }
        assert!(admit(&mut s, &c, 0, &who, 10_000 * S, &mut Vec::new()).is_err());
    }

    #[test]
    fn token_bucket_is_charged_after_the_response() {
        let c = cfg(r#""limits":{"tokensPerMinute":100,"by":"global"},"#);
        let mut s = Mem::default();
        let (charge, info) = admit(&mut s, &c, 0, &caller(None), 0, &mut Vec::new()).unwrap();
        assert_eq!(info.tokens.map(|t| t.1), Some(100));
        charge_tokens(&mut s, charge.as_ref(), 80, 0);
        let (charge, _) = admit(&mut s, &c, 0, &caller(Some("spiffe://x/y")), 0, &mut Vec::new()).unwrap();
        charge_tokens(&mut s, charge.as_ref(), 80, 0);
        let r = admit(&mut s, &c, 0, &caller(None), 0, &mut Vec::new()).unwrap_err();
        assert_eq!(r.error_type, "tokens");
        let h: HashMap<_, _> = r.headers.iter().cloned().collect();
        assert_eq!(h["x-ratelimit-remaining-tokens"], "0");
        assert_eq!(
            h["retry-after"], "37",
            "level -60; above 0 again after 61 tokens at 100/min: 36.6 s"
        );
        assert!(admit(&mut s, &c, 0, &caller(None), 30 * S, &mut Vec::new()).is_err());
        assert!(admit(&mut s, &c, 0, &caller(None), 37 * S, &mut Vec::new()).is_ok());
    }

    fn charge_tokens(s: &mut Mem, c: Option<&Charge>, n: u64, now: u64) {
        charge(s, c.unwrap(), n, now);
    }

    #[test]
    fn header_keys_and_contention() {
        let c = cfg(r#""limits":{"requestsPerMinute":1,"by":"header:x-api-key"},"#);
        let mut s = Mem::default();
        let k1 = [("x-api-key".to_string(), b"key-1".to_vec())];
        let k2 = [("x-api-key".to_string(), b"\xff\x00junk".to_vec())];
        let c1 = Caller {
            principal: None,
            headers: &k1,
            seed: 0,
        };
        let c2 = Caller {
            principal: None,
            headers: &k2,
            seed: 0,
        };
        assert!(admit(&mut s, &c, 0, &c1, 0, &mut Vec::new()).is_ok());
        assert!(admit(&mut s, &c, 0, &c1, 0, &mut Vec::new()).is_err());
        assert!(
            admit(&mut s, &c, 0, &c2, 0, &mut Vec::new()).is_ok(),
            "a different key, even junk, is its own bucket"
        );
        assert_eq!(limit_headers(&c), vec!["x-api-key".to_string()]);
    }

    fn level(store: &SharedMem, key: &str) -> f64 {
        store
            .get(key)
            .0
            .as_deref()
            .and_then(Bucket::decode)
            .map(|b| b.level)
            .unwrap_or(f64::NAN)
    }

    /// Another worker admits requests between our read and our write: every write that lost the
    /// race is retried on the new value, so no request is lost or counted twice — including the
    /// first one, when both workers found the bucket missing and both create it.
    #[test]
    fn racing_workers_lose_no_update() {
        let c = cfg(r#""limits":{"requestsPerMinute":100,"by":"global"},"#);
        let key = "model-router/rl/m/global/r";
        for races in [1, 3, 15] {
            let store = Rc::new(RefCell::new(SharedMem::default()));
            let mut rival_admits = 0;
            let mut rival = |s: &mut SharedMem| {
                rival_admits += 1;
                assert!(admit(s, &c, 0, &caller(None), 0, &mut Vec::new()).is_ok());
            };
            let mut ours = Racing {
                store: store.clone(),
                races,
                rival: &mut rival,
            };
            assert!(admit(&mut ours, &c, 0, &caller(None), 0, &mut Vec::new()).is_ok());
            assert_eq!(rival_admits, races);
            assert_eq!(
                level(&store.borrow(), key),
                100.0 - 1.0 - races as f64,
                "{races} races: every admission took exactly one request"
            );
        }
        // Endless contention: give up after CAS_TRIES and let the request through rather than fail it.
        let store = Rc::new(RefCell::new(SharedMem::default()));
        let mut rival = |s: &mut SharedMem| {
            let _ = admit(s, &c, 0, &caller(None), 0, &mut Vec::new());
        };
        let mut ours = Racing {
            store: store.clone(),
            races: usize::MAX,
            rival: &mut rival,
        };
        assert!(admit(&mut ours, &c, 0, &caller(None), 0, &mut Vec::new()).is_ok());
    }

    /// The create race as proxy-wasm has it: a write with CAS 0 to a key another worker just
    /// created would overwrite it (the bug the create token fixes).
    #[test]
    fn creating_a_bucket_never_overwrites_one_created_meanwhile() {
        let mut s = SharedMem::default();
        assert!(s.get("k").0.is_none());
        s.set("k", b"theirs", 0).unwrap();
        assert_eq!(
            s.set("k", b"ours", CREATE_CAS),
            Err(true),
            "created meanwhile: mismatch"
        );
        assert_eq!(s.get("k").0.as_deref(), Some(&b"theirs"[..]));
        assert_eq!(s.set("new", b"ours", CREATE_CAS), Ok(()), "missing: created");
    }

    /// A client rotating header values: the table never grows past its slots, and a caller whose
    /// slots others contend for is never freed from its limit (a shared bucket only limits sooner).
    #[test]
    fn rotating_keys_cannot_grow_the_table_or_free_a_caller() {
        let c = cfg(r#""limits":{"requestsPerMinute":2,"by":"header:x-api-key"},"#);
        let mut s = Mem::default();
        let key = |v: &[u8]| [("x-api-key".to_string(), v.to_vec())];
        let victim = key(b"victim");
        fn as_caller(h: &[(String, Vec<u8>)]) -> Caller<'_> {
            Caller {
                principal: None,
                headers: h,
                seed: 7,
            }
        }
        let mut notes = Vec::new();
        assert!(admit(&mut s, &c, 0, &as_caller(&victim), 0, &mut notes).is_ok());
        assert!(admit(&mut s, &c, 0, &as_caller(&victim), 0, &mut notes).is_ok());
        for i in 0..3 * BUCKET_SLOTS {
            let k = key(&i.to_le_bytes());
            let _ = admit(&mut s, &c, 0, &as_caller(&k), 0, &mut notes);
        }
        assert!(
            admit(&mut s, &c, 0, &as_caller(&victim), 0, &mut Vec::new()).is_err(),
            "still limited"
        );
        assert!(s.keys().len() <= BUCKET_SLOTS as usize, "{} keys", s.keys().len());
        assert!(notes.contains(&Collision::Shared), "sharing is counted");
        assert!(!notes.contains(&Collision::Evicted), "no bucket was full again");
        // A minute later every bucket is full again: a slot is taken over, nothing is lost.
        notes.clear();
        let k = key(b"newcomer");
        assert!(admit(&mut s, &c, 0, &as_caller(&k), 60 * S, &mut notes).is_ok());
        assert_eq!(notes, [Collision::Evicted]);
        assert!(s.keys().len() <= BUCKET_SLOTS as usize);
        // The secret decides the slots: another proxy places the victim elsewhere.
        let placed = |seed| {
            let caller = Caller {
                principal: None,
                headers: &victim,
                seed,
            };
            place(&c.models[0], c.models[0].limits.as_ref().unwrap(), &caller)
        };
        assert_ne!(placed(7).keys, placed(8).keys);
        assert_eq!(placed(7), placed(7));
    }

    #[test]
    fn the_seed_is_the_first_workers_for_every_worker() {
        let mut s = Mem::default();
        let first = bucket_seed(&mut s, 41);
        assert_eq!(first, 41);
        assert_eq!(bucket_seed(&mut s, 99), 41, "a later worker reads it");
    }

    #[test]
    fn corrupt_bucket_values_are_replaced() {
        assert_eq!(Bucket::decode(b"short"), None);
        assert_eq!(Bucket::decode(&[0xff; 16]), None, "NaN level");
        let b = Bucket {
            level: 2.5,
            updated_ns: 7,
            owner: 9,
        };
        assert_eq!(Bucket::decode(&b.encode()), Some(b));
        let mut old = [0u8; 16];
        old.copy_from_slice(&b.encode()[..16]);
        assert_eq!(
            Bucket::decode(&old),
            Some(Bucket { owner: 0, ..b }),
            "a value from before owners: unknown owner"
        );
    }
}
