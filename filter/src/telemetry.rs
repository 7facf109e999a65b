//! Per-model telemetry as data: what to count for one exchange, with labels encoded in the stat
//! name the way Istio's own stats are (`model=.=llama;.;destination=.=v1;.;NAME`), so that
//! `stats_tags` / Istio `extraStatTags` turn them into Prometheus labels. Time is passed in.

use std::cell::{Cell, OnceCell, RefCell};
use std::ops::Deref;
use std::rc::Rc;

use crate::config::Config;
use crate::reply::RejectReason;
use crate::request::Outcome;
use crate::usage::{ResponseUsage, Usage, UsageErrors, TOKEN_TYPES};

pub const REQUESTS_TOTAL: &str = "model_router_requests_total";
pub const TOKENS_TOTAL: &str = "model_router_tokens_total";
pub const DURATION_MS: &str = "model_router_request_duration_milliseconds";
pub const TTFT_MS: &str = "model_router_time_to_first_token_milliseconds";
pub const IN_FLIGHT: &str = "model_router_in_flight_requests";
pub const REJECTED_TOTAL: &str = "model_router_rejected_total";
/// Responses whose tokens had to be estimated or could not be read, by reason.
pub const USAGE_MISSING_TOTAL: &str = "model_router_usage_missing_total";
/// Parts of responses' usage that could not be read (an event too large, unparsable, a number
/// beyond 64 bits), by reason.
pub const USAGE_ERRORS_TOTAL: &str = "model_router_usage_errors_total";
/// Requests whose held headers the safety net let go because the body never came.
pub const HOLD_RELEASED_TOTAL: &str = "model_router_hold_released_total";
/// Times a VM tried holding headers again after header-only routing.
pub const HOLD_PROBES_TOTAL: &str = "model_router_hold_probes_total";
/// Calls to the rate limit service that got no usable answer (the failure mode then decided),
/// by call (`requests`, `tokens`, `report`) and reason.
pub const RATE_LIMIT_SERVICE_FAILURES_TOTAL: &str = "model_router_rate_limit_service_failures_total";
/// Callers' rate-limit buckets that took over (`evicted`) or share (`shared`) another caller's
/// slot of the fixed table, by model and reason (`policy::BUCKET_SLOTS`).
pub const LIMIT_BUCKET_COLLISIONS_TOTAL: &str = "model_router_limit_bucket_collisions_total";
/// Each destination's breaker (`failover`): 0 closed, 1 open, 2 half-open.
pub const DESTINATION_STATE: &str = "model_router_destination_state";
/// Requests that did not go to their first choice, by the model asked for and reason
/// (`destination`, `fallback`, `unavailable`).
pub const FAILOVERS_TOTAL: &str = "model_router_failovers_total";
/// Failures the breakers counted, by model, destination and reason (`status`, `reset`,
/// `connect_failure`, `timeout`).
pub const DESTINATION_FAILURES_TOTAL: &str = "model_router_destination_failures_total";
/// Host calls the proxy refused, by call (`set_header`, `remove_header`, `set_filter_state`,
/// `clear_route_cache`).
pub const HOST_ERRORS_TOTAL: &str = "model_router_host_errors_total";
/// The filter's Wasm linear memory, summed over the worker VMs of a proxy.
pub const VM_MEMORY_BYTES: &str = "model_router_vm_memory_bytes";

/// The destination label of a request whose model is known but whose route the filter did not
/// choose (`bodyRouting: false`, or a host that cannot hold headers).
pub const UNROUTED: &str = "unrouted";
/// The destination label of a request for a configured model that the filter refused (403,
/// 429, 503 …): it was sent nowhere.
pub const NO_DESTINATION: &str = "none";

/// Every counter and gauge the filter emits (histograms: `HISTOGRAMS`).
pub const COUNTERS_AND_GAUGES: &[&str] = &[
    REQUESTS_TOTAL,
    TOKENS_TOTAL,
    IN_FLIGHT,
    REJECTED_TOTAL,
    USAGE_MISSING_TOTAL,
    USAGE_ERRORS_TOTAL,
    HOLD_RELEASED_TOTAL,
    HOLD_PROBES_TOTAL,
    RATE_LIMIT_SERVICE_FAILURES_TOTAL,
    LIMIT_BUCKET_COLLISIONS_TOTAL,
    VM_MEMORY_BYTES,
    DESTINATION_STATE,
    FAILOVERS_TOTAL,
    DESTINATION_FAILURES_TOTAL,
    HOST_ERRORS_TOTAL,
];
pub const HISTOGRAMS: &[&str] = &[DURATION_MS, TTFT_MS];

/// Every label key the filter encodes; the `stats_tags` to render, one regex each.
pub const LABEL_KEYS: &[&str] = &["model", "destination", "code_class", "type", "reason", "call"];

/// Label value for anything not in the configuration: keeps cardinality bounded.
pub const OTHER: &str = "other";

/// Envoy's default histogram buckets do not suit LLM latencies; these follow the OpenTelemetry
/// GenAI semantic conventions (`gen_ai.server.request.duration`,
/// `gen_ai.server.time_to_first_token`), in milliseconds.
pub const DURATION_BUCKETS_MS: &[u64] = &[
    10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240, 20480, 40960, 81920,
];
pub const TTFT_BUCKETS_MS: &[u64] = &[
    1, 5, 10, 20, 40, 60, 80, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One thing for the glue to do to a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricOp {
    /// Add to a counter (> 0: Envoy rejects other increments; 0 only makes it, `failover_zeros`) or a
    /// gauge (any sign).
    Add { kind: Kind, name: Stat, delta: i64 },
    /// Record a histogram value.
    Record { name: Stat, value: u64 },
    /// Set a gauge.
    Set { name: Stat, value: u64 },
}

impl MetricOp {
    pub fn stat(&self) -> &Stat {
        match self {
            MetricOp::Add { name, .. } | MetricOp::Record { name, .. } | MetricOp::Set { name, .. } => name,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            MetricOp::Add { kind, .. } => *kind,
            MetricOp::Record { .. } => Kind::Histogram,
            MetricOp::Set { .. } => Kind::Gauge,
        }
    }
}

/// A stat's full name, and the id the host gave it once the glue defined it. The names of a
/// label pair are made once per VM (`StatNames`) and shared, so a request's metric updates
/// neither format names nor look them up: the host's id travels with the name.
#[derive(Debug, Clone)]
pub struct Stat(Rc<StatInner>);

#[derive(Debug)]
struct StatInner {
    name: Box<str>,
    host_id: Cell<Option<u32>>,
    /// The core keeps this stat for later requests (`PairStats`): its host id stays with it.
    kept: bool,
}

impl Stat {
    /// The host's id for this stat, once `set_host_id` recorded one.
    pub fn host_id(&self) -> Option<u32> {
        self.0.host_id.get()
    }

    pub fn set_host_id(&self, id: u32) {
        self.0.host_id.set(Some(id));
    }

    /// The core keeps this stat for later requests, so the host's id need not be remembered by
    /// name (the other stats are made again for each request that uses them).
    pub fn is_kept(&self) -> bool {
        self.0.kept
    }

    fn new(name: String, kept: bool) -> Stat {
        Stat(Rc::new(StatInner {
            name: name.into_boxed_str(),
            host_id: Cell::new(None),
            kept,
        }))
    }
}

/// A stat made for one request.
impl From<String> for Stat {
    fn from(name: String) -> Stat {
        Stat::new(name, false)
    }
}

impl Deref for Stat {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0.name
    }
}

/// Two stats are the same stat when their names are (the host's id is a cache).
impl PartialEq for Stat {
    fn eq(&self, other: &Stat) -> bool {
        **self == **other
    }
}

impl Eq for Stat {}

/// `k=.=v;.;` for each label, then the metric name.
pub fn stat_name(metric: &str, labels: &[(&str, &str)]) -> String {
    let size = labels.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>() + metric.len();
    let mut s = String::with_capacity(size);
    for (k, v) in labels {
        s.push_str(k);
        s.push_str("=.=");
        s.push_str(v);
        s.push_str(";.;");
    }
    s.push_str(metric);
    s
}

/// The status classes of `code_class`, in order.
const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The stats every counted request of one (model, destination) label pair updates, each named
/// on its first use and then kept.
#[derive(Debug)]
pub struct PairStats {
    /// `model=.=M;.;destination=.=D;.;`: how every name of the pair begins.
    labels: Box<str>,
    /// In flight, duration, TTFT; then requests by `CODE_CLASSES`; then tokens by `TOKEN_TYPES`.
    stats: [OnceCell<Stat>; 3 + CODE_CLASSES.len() + TOKEN_TYPES.len()],
}

impl PairStats {
    pub fn new(model: &str, destination: &str) -> PairStats {
        PairStats {
            labels: stat_name("", &[("model", model), ("destination", destination)]).into(),
            stats: Default::default(),
        }
    }

    // `at` comes from the methods below, each under the array's length (3 + 5 + 5).
    #[allow(clippy::indexing_slicing)]
    fn stat(&self, at: usize, metric: &str, label: Option<(&str, &str)>) -> &Stat {
        self.stats[at].get_or_init(|| {
            let mut name = String::from(&*self.labels);
            if let Some((k, v)) = label {
                name.push_str(&stat_name("", &[(k, v)]));
            }
            name.push_str(metric);
            Stat::new(name, true)
        })
    }

    pub fn in_flight(&self) -> &Stat {
        self.stat(0, IN_FLIGHT, None)
    }

    pub fn duration(&self) -> &Stat {
        self.stat(1, DURATION_MS, None)
    }

    pub fn ttft(&self) -> &Stat {
        self.stat(2, TTFT_MS, None)
    }

    /// Requests answered with `status`.
    // `code_class_index` is under 5, `CODE_CLASSES`' length.
    #[allow(clippy::indexing_slicing)]
    pub fn requests(&self, status: u32) -> &Stat {
        let i = code_class_index(status);
        self.stat(3 + i, REQUESTS_TOTAL, Some(("code_class", CODE_CLASSES[i])))
    }

    /// Tokens of the type `TOKEN_TYPES[i]`.
    // Its only caller enumerates `Usage::counts`, one per token type.
    #[allow(clippy::indexing_slicing)]
    fn tokens(&self, i: usize) -> &Stat {
        self.stat(3 + CODE_CLASSES.len() + i, TOKENS_TOTAL, Some(("type", TOKEN_TYPES[i])))
    }
}

/// The `PairStats` of a VM's label pairs, made on a pair's first request: one slot for each
/// configured model's destinations, its `unrouted` and its `other`, and one for (`other`,
/// `other`). Found by the request's outcome, without formatting or hashing a name.
#[derive(Debug)]
pub struct StatNames {
    slots: RefCell<Vec<Option<Rc<PairStats>>>>,
    /// Where each model's slots begin: its destinations, then `unrouted`, `other` and `none`.
    starts: Vec<usize>,
}

impl StatNames {
    pub fn new(cfg: &Config) -> StatNames {
        let mut starts = Vec::with_capacity(cfg.models.len());
        let mut n = 0;
        for m in &cfg.models {
            starts.push(n);
            n += m.destinations.len() + 3;
        }
        StatNames {
            slots: RefCell::new(vec![None; n + 1]),
            starts,
        }
    }

    /// The stats of the labels `labels(cfg, outcome)`; `cfg` is the one this was made for.
    pub fn pair(&self, cfg: &Config, outcome: &Outcome) -> Rc<PairStats> {
        let slot = match outcome {
            Outcome::Matched { model, destination } => match (self.starts.get(*model), cfg.models.get(*model)) {
                (Some(&start), Some(m)) => {
                    let n = m.destinations.len();
                    start
                        + match *destination {
                            Some(d) if d < n => d,
                            None => n,
                            Some(_) => n + 1,
                        }
                }
                _ => usize::MAX,
            },
            Outcome::Denied { model, .. } => match (self.starts.get(*model), cfg.models.get(*model)) {
                (Some(&start), Some(m)) => start + m.destinations.len() + 2,
                _ => usize::MAX,
            },
            _ => usize::MAX,
        };
        let mut slots = self.slots.borrow_mut();
        // Anything else is (`other`, `other`), the last slot.
        let last = slots.len() - 1;
        // `slots` has n + 1 entries (never none): `slot.min(last)` is one of them.
        #[allow(clippy::indexing_slicing)]
        let cell = &mut slots[slot.min(last)];
        if let Some(p) = cell {
            return Rc::clone(p);
        }
        let (model, destination) = labels(cfg, outcome);
        let p = Rc::new(PairStats::new(model, destination));
        *cell = Some(Rc::clone(&p));
        p
    }
}

#[cfg(test)]
pub fn code_class(status: u32) -> &'static str {
    CODE_CLASSES[code_class_index(status)]
}

fn code_class_index(status: u32) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// The model and destination labels of a request: configured names only, `other` otherwise;
/// `unrouted` as the destination when the filter did not choose the route.
pub fn labels<'a>(cfg: &'a Config, outcome: &Outcome) -> (&'a str, &'a str) {
    match outcome {
        Outcome::Matched { model, destination } => {
            let Some(m) = cfg.models.get(*model) else {
                return (OTHER, OTHER);
            };
            let d = match destination.map(|d| m.destinations.get(d)) {
                None => UNROUTED,
                Some(Some(d)) => d.name.as_str(),
                Some(None) => OTHER,
            };
            (m.name.as_str(), d)
        }
        Outcome::Denied { model, .. } => match cfg.models.get(*model) {
            Some(m) => (m.name.as_str(), NO_DESTINATION),
            None => (OTHER, OTHER),
        },
        _ => (OTHER, OTHER),
    }
}

fn count(name: String) -> MetricOp {
    MetricOp::Add {
        kind: Kind::Counter,
        name: name.into(),
        delta: 1,
    }
}

/// A response whose usage had to be estimated or could not be read.
pub fn usage_missing(model: &str, destination: &str, reason: &str) -> MetricOp {
    count(stat_name(
        USAGE_MISSING_TOTAL,
        &[("model", model), ("destination", destination), ("reason", reason)],
    ))
}

/// Counters for what could not be read of a response's usage.
pub fn usage_errors(model: &str, destination: &str, e: &UsageErrors) -> Vec<MetricOp> {
    let mut ops = Vec::new();
    for (reason, n) in [
        ("unreadable", e.unreadable),
        ("event_too_large", e.event_too_large),
        ("overflow", u64::from(e.overflow)),
    ] {
        if n > 0 {
            ops.push(MetricOp::Add {
                kind: Kind::Counter,
                name: stat_name(
                    USAGE_ERRORS_TOTAL,
                    &[("model", model), ("destination", destination), ("reason", reason)],
                )
                .into(),
                delta: i64::try_from(n).unwrap_or(i64::MAX),
            });
        }
    }
    ops
}

/// A change of a VM's linear memory.
pub fn vm_memory(delta: i64) -> MetricOp {
    gauge(VM_MEMORY_BYTES.to_string().into(), delta)
}

/// A call to the rate limit service without a usable answer.
pub fn rate_limit_service_failure(call: &str, reason: &str) -> MetricOp {
    MetricOp::Add {
        kind: Kind::Counter,
        name: stat_name(RATE_LIMIT_SERVICE_FAILURES_TOTAL, &[("call", call), ("reason", reason)]).into(),
        delta: 1,
    }
}

/// A caller's bucket placed on another caller's slot (`evicted`, `shared`).
pub fn limit_bucket_collision(model: &str, reason: &str) -> MetricOp {
    count(stat_name(
        LIMIT_BUCKET_COLLISIONS_TOTAL,
        &[("model", model), ("reason", reason)],
    ))
}

/// A destination's breaker state (`health::CLOSED` …).
pub fn destination_state(model: &str, destination: &str, state: u8) -> MetricOp {
    MetricOp::Set {
        name: stat_name(DESTINATION_STATE, &[("model", model), ("destination", destination)]).into(),
        value: u64::from(state),
    }
}

/// A request that failover sent elsewhere (or refused).
pub fn failover(model: &str, reason: &str) -> MetricOp {
    count(stat_name(FAILOVERS_TOTAL, &[("model", model), ("reason", reason)]))
}

/// The `reason`s of `model_router_failovers_total` and of `model_router_destination_failures_total`:
/// each VM makes their series at zero when failover starts (`failover_zeros`), so `rate()` and alerts see
/// a series before its first count.
pub const FAILOVER_REASONS: [&str; 3] = [
    crate::routing::Via::Destination.label(),
    crate::routing::Via::Fallback.label(),
    "unavailable",
];
pub const FAILURE_REASONS: [&str; 4] = ["status", "reset", "connect_failure", "timeout"];

/// Every failover counter of `model` and its `destinations`, made at zero without counting (the
/// glue defines each and adds nothing).
pub fn failover_zeros(model: &str, destinations: &[crate::config::Destination], made: &mut dyn FnMut(&MetricOp)) {
    for r in FAILOVER_REASONS {
        zero(made, FAILOVERS_TOTAL, &[("model", model), ("reason", r)]);
    }
    // The 503 `model_unavailable` (alert `ModelRouterModelUnavailable`).
    let unavailable = RejectReason::ModelUnavailable.code();
    zero(made, REJECTED_TOTAL, &[("model", model), ("reason", unavailable)]);
    for d in destinations {
        for r in FAILURE_REASONS {
            zero(
                made,
                DESTINATION_FAILURES_TOTAL,
                &[("model", model), ("destination", &d.name), ("reason", r)],
            );
        }
    }
}

/// One counter made at zero (one copy of the code for every name).
#[inline(never)]
fn zero(made: &mut dyn FnMut(&MetricOp), metric: &str, labels: &[(&str, &str)]) {
    made(&MetricOp::Add {
        kind: Kind::Counter,
        name: stat_name(metric, labels).into(),
        delta: 0,
    });
}

/// A failure a breaker counted.
pub fn destination_failure(model: &str, destination: &str, reason: &str) -> MetricOp {
    count(stat_name(
        DESTINATION_FAILURES_TOTAL,
        &[("model", model), ("destination", destination), ("reason", reason)],
    ))
}

pub fn hold_probe() -> MetricOp {
    count(HOLD_PROBES_TOTAL.into())
}

/// The counter increment for a rejection; `model`: the configured model it was for (`other`
/// when none was known).
pub fn rejected(reason: RejectReason, model: &str) -> MetricOp {
    MetricOp::Add {
        kind: Kind::Counter,
        name: stat_name(REJECTED_TOTAL, &[("model", model), ("reason", reason.code())]).into(),
        delta: 1,
    }
}

/// A host call the proxy refused.
pub fn host_error(call: &str) -> MetricOp {
    count(stat_name(HOST_ERRORS_TOTAL, &[("call", call)]))
}

pub fn hold_released() -> MetricOp {
    count(HOLD_RELEASED_TOTAL.into())
}

/// Telemetry for one request/response exchange.
#[derive(Debug)]
pub struct Meter {
    start_ns: u64,
    /// The in-flight gauge while the request is counted in flight.
    in_flight: Option<Stat>,
    /// Response bytes arrived (TTFT is taken once).
    first_byte_seen: bool,
    response: Option<ResponseUsage>,
    usage: Usage,
    /// The response body arrived to its end.
    ended: bool,
    /// The response came content-encoded (compressed): its usage cannot be read.
    encoded: bool,
    finished: bool,
}

impl Meter {
    pub fn new(start_ns: u64) -> Self {
        Meter {
            start_ns,
            in_flight: None,
            first_byte_seen: false,
            response: None,
            usage: Usage::default(),
            ended: false,
            encoded: false,
            finished: false,
        }
    }

    /// The response body arrived to its end (not cut by a reset or a disconnect).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The response was compressed, so its usage was not read.
    pub fn encoded(&self) -> bool {
        self.encoded
    }

    /// A final usage report was read.
    pub fn usage_complete(&self) -> bool {
        self.response.as_ref().is_some_and(ResponseUsage::complete)
    }

    /// Stream messages the response delivered (each streamed delta carries a token or more).
    pub fn messages_seen(&self) -> u64 {
        self.response.as_ref().map_or(0, ResponseUsage::messages)
    }

    pub fn usage_errors(&self) -> UsageErrors {
        self.response.as_ref().map(ResponseUsage::errors).unwrap_or_default()
    }

    /// The request was routed: it is now in flight.
    pub fn routed(&mut self, stats: &PairStats) -> Vec<MetricOp> {
        if self.in_flight.is_some() || self.finished {
            return Vec::new();
        }
        self.in_flight = Some(stats.in_flight().clone());
        vec![gauge(stats.in_flight().clone(), 1)]
    }

    /// Response headers arrived. `encoded`: a `content-encoding` other than `identity`.
    pub fn response_headers(
        &mut self,
        content_type: Option<&str>,
        encoded: bool,
        prompt_tokens: Option<u64>,
        generated_tokens: Option<u64>,
    ) {
        self.encoded = encoded;
        // A compressed body is not read (bytes of gzip are not JSON); its length still counts.
        let mut r = ResponseUsage::for_content_type(if encoded { None } else { content_type });
        r.from_headers(prompt_tokens, generated_tokens);
        self.response = Some(r);
    }

    /// True when the response body should be fed (it can carry usage).
    pub fn wants_body(&self) -> bool {
        self.response.is_some() && !self.finished
    }

    /// A response body chunk passed. Returns the TTFT sample on the first byte of a stream.
    /// `now_ns` is asked only for the first bytes (the clock is a crossing into the proxy).
    pub fn response_body(&mut self, chunk: &[u8], end_of_stream: bool, now_ns: impl FnOnce() -> u64) -> Option<u64> {
        let r = self.response.as_mut()?;
        let mut ttft = None;
        if !chunk.is_empty() && !self.first_byte_seen {
            self.first_byte_seen = true;
            if r.is_stream() {
                ttft = Some(ms(now_ns().saturating_sub(self.start_ns)));
            }
        }
        r.feed(chunk);
        if end_of_stream {
            self.usage = r.finish();
            self.ended = true;
        }
        ttft
    }

    /// TTFT as a metric op for the given labels.
    pub fn ttft_op(stats: &PairStats, value_ms: u64) -> MetricOp {
        MetricOp::Record {
            name: stats.ttft().clone(),
            value: value_ms,
        }
    }

    /// Usage known so far (complete once the body ended).
    pub fn usage(&self) -> Usage {
        if self.usage.is_empty() {
            self.response.as_ref().map(ResponseUsage::usage).unwrap_or_default()
        } else {
            self.usage
        }
    }

    /// The exchange ended (any way: completion, reset, local reply). `counted`: whether the request
    /// belongs in the per-model request metrics. Idempotent: only the first call reports.
    pub fn finish(&mut self, counted: bool, stats: &PairStats, status: u32, now_ns: u64) -> Vec<MetricOp> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        let mut ops = Vec::new();
        if let Some(name) = self.in_flight.take() {
            ops.push(gauge(name, -1));
        }
        if !counted {
            return ops;
        }
        ops.push(MetricOp::Add {
            kind: Kind::Counter,
            name: stats.requests(status).clone(),
            delta: 1,
        });
        ops.push(MetricOp::Record {
            name: stats.duration().clone(),
            value: ms(now_ns.saturating_sub(self.start_ns)),
        });
        for (i, n) in self.usage().counts().into_iter().enumerate() {
            if let Some(n) = n.filter(|&n| n > 0) {
                ops.push(MetricOp::Add {
                    kind: Kind::Counter,
                    name: stats.tokens(i).clone(),
                    delta: i64::try_from(n).unwrap_or(i64::MAX),
                });
            }
        }
        ops
    }
}

fn gauge(name: Stat, delta: i64) -> MetricOp {
    MetricOp::Add {
        kind: Kind::Gauge,
        name,
        delta,
    }
}

#[cfg(test)]
fn in_flight_op(model: &str, destination: &str, delta: i64) -> MetricOp {
    gauge(
        stat_name(IN_FLIGHT, &[("model", model), ("destination", destination)]).into(),
        delta,
    )
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_names_match_istio_encoding() {
        assert_eq!(
            stat_name(
                TOKENS_TOTAL,
                &[("model", "llama"), ("destination", "v1"), ("type", "input")]
            ),
            "model=.=llama;.;destination=.=v1;.;type=.=input;.;model_router_tokens_total"
        );
        assert_eq!(code_class(204), "2xx");
        assert_eq!(code_class(429), "4xx");
        assert_eq!(code_class(0), "5xx");
    }

    #[test]
    fn a_streamed_exchange() {
        let ms_ = 1_000_000;
        let md = PairStats::new("m", "d");
        let mut x = Meter::new(0);
        let ops = x.routed(&md);
        assert_eq!(ops, vec![in_flight_op("m", "d", 1)]);
        assert!(x.routed(&md).is_empty(), "counted once");
        x.response_headers(Some("text/event-stream"), false, None, None);
        assert_eq!(x.response_body(b"", false, || 5 * ms_), None);
        assert_eq!(
            x.response_body(b"data: {\"choices\":[]}\n\n", false, || 42 * ms_),
            Some(42)
        );
        assert_eq!(
            x.response_body(
                b"data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
                false,
                || 50 * ms_
            ),
            None
        );
        x.response_body(b"data: [DONE]\n\n", true, || 60 * ms_);
        let ops = x.finish(true, &md, 200, 70 * ms_);
        assert_eq!(
            ops,
            vec![
                in_flight_op("m", "d", -1),
                MetricOp::Add {
                    kind: Kind::Counter,
                    name: stat_name(
                        REQUESTS_TOTAL,
                        &[("model", "m"), ("destination", "d"), ("code_class", "2xx")]
                    )
                    .into(),
                    delta: 1
                },
                MetricOp::Record {
                    name: stat_name(DURATION_MS, &[("model", "m"), ("destination", "d")]).into(),
                    value: 70
                },
                MetricOp::Add {
                    kind: Kind::Counter,
                    name: stat_name(TOKENS_TOTAL, &[("model", "m"), ("destination", "d"), ("type", "input")]).into(),
                    delta: 3
                },
                MetricOp::Add {
                    kind: Kind::Counter,
                    name: stat_name(
                        TOKENS_TOTAL,
                        &[("model", "m"), ("destination", "d"), ("type", "output")]
                    )
                    .into(),
                    delta: 4
                },
            ]
        );
        assert!(x.finish(true, &md, 200, 80 * ms_).is_empty(), "finish is idempotent");
    }

    #[test]
    fn json_responses_have_no_ttft_and_reset_streams_still_leave_flight() {
        let md = PairStats::new("m", "d");
        let mut x = Meter::new(0);
        x.routed(&md);
        x.response_headers(Some("application/json"), false, None, None);
        assert_eq!(x.response_body(b"{\"usage\":{\"prompt_tokens\":1}}", true, || 1), None);
        assert_eq!(x.usage().input, Some(1));

        let mut y = Meter::new(0);
        y.routed(&md);
        y.response_headers(Some("text/event-stream"), false, None, None);
        y.response_body(b"data: {\"x\":1}\n\n", false, || 10);
        let ops = y.finish(true, &md, 200, 20);
        assert_eq!(ops[0], in_flight_op("m", "d", -1));
        assert!(ops
            .iter()
            .all(|o| !matches!(o, MetricOp::Add { name, .. } if name.ends_with(TOKENS_TOTAL))));
    }

    #[test]
    fn a_label_pairs_stats_are_named_once_and_carry_the_hosts_id() {
        let cfg =
            Config::from_json(br#"{"models":[{"name":"m","destinations":[{"name":"d"},{"name":"e"}]},{"name":"n","destinations":[{"name":"d"}]}]}"#)
                .unwrap();
        let names = StatNames::new(&cfg);
        let to = |model, destination| Outcome::Matched { model, destination };
        let first = names.pair(&cfg, &to(0, Some(0)));
        let mut x = Meter::new(0);
        x.routed(&first)[0].stat().set_host_id(7);
        // The next request of the pair gets the same stats, with the id the glue recorded.
        let mut y = Meter::new(0);
        let ops = y.routed(&names.pair(&cfg, &to(0, Some(0))));
        assert_eq!(ops, vec![in_flight_op("m", "d", 1)]);
        assert_eq!(ops[0].stat().host_id(), Some(7));
        // Every other pair is its own stats, named by `labels`.
        let pairs = [
            (to(0, Some(1)), "m", "e"),
            (to(0, None), "m", UNROUTED),
            (to(0, Some(2)), "m", OTHER),
            (to(1, None), "n", UNROUTED),
            (to(2, None), OTHER, OTHER),
            (
                Outcome::Denied {
                    model: 1,
                    reason: RejectReason::ModelAccessDenied,
                },
                "n",
                NO_DESTINATION,
            ),
        ];
        for (outcome, model, destination) in &pairs {
            let p = names.pair(&cfg, outcome);
            // A stat is named on its first use only.
            assert!(p.stats.iter().all(|s| s.get().is_none()), "{outcome:?}");
            assert_eq!(
                &**p.in_flight(),
                stat_name(IN_FLIGHT, &[("model", model), ("destination", destination)])
            );
            assert_eq!(p.in_flight().host_id(), None, "{outcome:?}");
            p.in_flight().set_host_id(1);
            assert_eq!(p.stats.iter().filter(|s| s.get().is_some()).count(), 1);
            assert!(p.in_flight().is_kept());
        }
        // What is made for one request is not kept: the glue remembers its id by name.
        assert!(!rejected(RejectReason::ModelNotFound, OTHER).stat().is_kept());
        assert!(Rc::ptr_eq(
            &names.pair(&cfg, &Outcome::NoModel),
            &names.pair(&cfg, &to(2, None))
        ));
        assert!(Rc::ptr_eq(
            &names.pair(&cfg, &Outcome::Rejected(RejectReason::ModelNotFound)),
            &names.pair(&cfg, &to(2, None))
        ));
        assert_eq!(
            &**first.requests(404),
            "model=.=m;.;destination=.=d;.;code_class=.=4xx;.;model_router_requests_total"
        );
    }

    #[test]
    fn uncounted_requests_only_leave_flight() {
        let mut x = Meter::new(0);
        assert!(x.finish(false, &PairStats::new(OTHER, OTHER), 200, 5).is_empty());
    }
}
