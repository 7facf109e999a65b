//! One exchange, from the request headers to the log, driven through a small `Host` trait.
//!
//! This is the whole per-request protocol: what is read from the host and when, the order of
//! decisions (strip spoofed headers → scope → model → admission → route → rewrite), the hold
//! safety net, what is charged and counted on every ending, which response headers are set and
//! which filter state is written. The proxy-wasm glue implements `Host` with ABI calls and holds
//! no decisions; `memory_host::MemoryHost` implements it in memory for tests and `wasmpack route`.

use std::cell::{Cell, OnceCell, RefCell};

use crate::config::{Config, IdentitySource, InferenceModelHeader, ResponseHeaders, INFERENCE_MODEL_HEADER};
use crate::failover::Failover;
use crate::header_map::HeaderMap;
use crate::health::Event;
use crate::hold::{HoldNet, Permit, TICK_MS};
use crate::identity::{self, Direction, NodeKind, Source};
use crate::models::{self, ModelsRequest};
use crate::policy::{self, Caller, Charge, RateInfo, Store};
use crate::reply::{Reject, RejectReason};
use crate::request::{apply_edits, BodyAction, HeadersAction, Outcome, RequestFlow, RequestInfo, CONTENT_LENGTH};
use crate::restore::ModelRestorer;
use crate::rls::{self, Call};
use crate::routing::Via;
use crate::telemetry::{self, Meter, MetricOp, StatNames};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Map {
    Request,
    Response,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    Request,
    Response,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

/// What the exchange needs from the proxy. Reads that fail give nothing (the caller's defaults
/// apply); writes say whether the host took them (`false`: refused, counted in
/// `model_router_host_errors_total{call}`).
pub trait Host: Store {
    fn now_ns(&mut self) -> u64;
    fn log(&mut self, level: LogLevel, message: &str);
    /// All headers of a map (one crossing).
    fn headers(&mut self, map: Map) -> HeaderMap;
    #[must_use]
    fn set_header(&mut self, map: Map, name: &str, value: &str) -> bool;
    #[must_use]
    fn remove_header(&mut self, map: Map, name: &str) -> bool;
    /// Bytes `start..start + len` of the buffered body (request) or the current chunk (response).
    fn body(&mut self, which: Buffer, start: usize, len: usize) -> Vec<u8>;
    /// Replaces the whole buffered body; false if the host refused.
    fn replace_body(&mut self, which: Buffer, bytes: &[u8]) -> bool;
    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>>;
    /// Filter state for access logs (`%FILTER_STATE(wasm.<key>:PLAIN)%`).
    #[must_use]
    fn set_filter_state(&mut self, key: &str, value: &[u8]) -> bool;
    /// A local reply to the current request; false if the host refused.
    fn send_reply(&mut self, status: u32, details: &str, headers: &[(&str, &str)], body: &[u8]) -> bool;
    /// The route is chosen again with the request's headers as they are now.
    #[must_use]
    fn clear_route_cache(&mut self) -> bool;
    fn metric(&mut self, op: &MetricOp);
    /// The root context's timer (0 stops it).
    fn set_tick_ms(&mut self, ms: u32);
    /// Resumes the held request of another context (from the root's tick).
    fn resume(&mut self, context_id: u32) -> bool;
    /// A local reply to another context's request (from the root's tick).
    fn reply_to(&mut self, context_id: u32, status: u32, details: &str, headers: &[(&str, &str)], body: &[u8]) -> bool;
    /// Starts a unary gRPC call (`service`: a serialized Envoy `GrpcService`); the token its
    /// answer will carry, or `None` if the host refused (e.g. no such cluster). `detached`: the
    /// call belongs to the VM's root context, so it outlives the current request (a `Report`
    /// made as the request ends); else the answer comes back to this request.
    fn grpc_call(&mut self, call: &GrpcCall<'_>) -> Option<u32>;
    /// The VM's linear memory, in bytes (0 where unknown).
    fn memory_bytes(&mut self) -> u64;
}

/// The host's writes, each refusal counted (`model_router_host_errors_total{call}`): what the
/// exchange calls instead of the raw `Host` writes.
trait Writes: Host {
    fn put_header(&mut self, map: Map, name: &str, value: &str) -> bool {
        let ok = self.set_header(map, name, value);
        self.counted(ok, "set_header")
    }
    fn del_header(&mut self, map: Map, name: &str) -> bool {
        let ok = self.remove_header(map, name);
        self.counted(ok, "remove_header")
    }
    fn put_filter_state(&mut self, key: &str, value: &[u8]) -> bool {
        let ok = self.set_filter_state(key, value);
        self.counted(ok, "set_filter_state")
    }
    fn reroute(&mut self) -> bool {
        let ok = self.clear_route_cache();
        self.counted(ok, "clear_route_cache")
    }
    fn counted(&mut self, ok: bool, call: &str) -> bool {
        if !ok {
            self.metric(&telemetry::host_error(call));
        }
        ok
    }
}

impl<H: Host> Writes for H {}

/// A unary gRPC call for `Host::grpc_call`.
#[derive(Debug, Clone, Copy)]
pub struct GrpcCall<'a> {
    pub service: &'a [u8],
    pub service_name: &'a str,
    pub method: &'a str,
    pub message: &'a [u8],
    pub timeout_ms: u32,
    pub detached: bool,
}

/// What a stream callback tells the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue = 0,
    /// Stop iteration (headers held, or body buffered).
    Pause = 1,
}

/// Filter-state keys (Envoy stores them as `wasm.<key>`).
pub const FS_MODEL: &str = "model_router.model";
pub const FS_DESTINATION: &str = "model_router.destination";
pub const FS_INPUT_TOKENS: &str = "model_router.input_tokens";
pub const FS_OUTPUT_TOKENS: &str = "model_router.output_tokens";
/// How failover placed the request: `destination`, `fallback`, `trial` or `unavailable`.
pub const FS_FAILOVER: &str = "model_router.failover";

/// The response header that names the destination the filter chose.
pub const ROUTE_RESPONSE_HEADER: &str = "x-ai-route";
/// The response header that names the canonical model (`responseHeaders: route+model`).
pub const MODEL_RESPONSE_HEADER: &str = "x-ai-model";

/// The first of these headers that holds a count (TGI's, Bedrock's token count headers).
#[inline(never)]
fn count_header(h: &HeaderMap, names: [&str; 2]) -> Option<u64> {
    names
        .iter()
        .find_map(|n| h.get_str(n).and_then(|v| v.trim().parse().ok()))
}

/// State of one VM (one worker thread), shared by its root and HTTP contexts.
#[derive(Debug)]
pub struct Vm {
    pub config: Config,
    hold: RefCell<HoldNet>,
    rng: Cell<u64>,
    /// The root's timer is running.
    ticking: Cell<bool>,
    logged_release: Cell<bool>,
    /// Request headers that `by: header:NAME` limits read.
    limit_headers: Vec<String>,
    /// Some model has an allow list or limits.
    policies: bool,
    /// When the configuration was loaded, seconds since the epoch (the models list's `created`).
    loaded_s: u64,
    /// Requests waiting for the rate limit service, and when the tick gives up on it for them
    /// (a backstop: the host's own gRPC timeout answers first).
    callouts: RefCell<Vec<(u32, u64)>>,
    /// The serialized `GrpcService` of the rate limit service.
    rls_service: Vec<u8>,
    /// The linear memory this VM last added to `model_router_vm_memory_bytes`.
    memory_reported: Cell<u64>,
    /// The per-model stats, named once per label pair.
    stats: StatNames,
    /// Where the filter runs (read from the host on the first request that needs it).
    node: OnceCell<NodeInfo>,
    /// An identity source that cannot name anyone here was logged.
    logged_identity: Cell<bool>,
    /// The proxy's secret for placing callers' buckets (`policy::bucket_seed`), once read.
    bucket_seed: Cell<Option<u64>>,
    /// Failover: the shared-data key of the breakers, and how many there are (0: off).
    health_key: String,
    health_slots: usize,
    /// The breakers' gauges were set from the shared table.
    announced: Cell<bool>,
    /// Failover with `firstByteTimeout`: requests sent upstream whose response headers have not
    /// come, by context, with their deadline and breaker (the tick counts the overdue ones).
    awaiting: RefCell<Vec<Awaiting>>,
}

/// A request waiting for its first byte (`Vm::awaiting`).
#[derive(Debug, Clone, Copy)]
struct Awaiting {
    id: u32,
    deadline_ns: u64,
    at: (usize, usize, usize),
}

/// What the proxy's node tells about where the filter runs.
#[derive(Debug, Clone)]
struct NodeInfo {
    kind: NodeKind,
    /// The sidecar's own workload (only read where it may be the caller).
    workload: Option<String>,
    /// The listener direction's attribute in this Envoy: `xds.listener_direction` (Envoy 1.40),
    /// or the older top-level `listener_direction`, as its node was found.
    direction: &'static [&'static str],
}

/// Envoy's `response.flags` (`StreamInfo::legacyResponseFlags()`: bit n is `CoreResponseFlag` n):
/// `UH` no healthy upstream, `UT` upstream request timeout, `UR` upstream remote reset, `UF`
/// upstream connection failure, `UC` upstream connection termination.
pub const FLAG_NO_HEALTHY_UPSTREAM: u64 = 0x2;
pub const FLAG_REQUEST_TIMEOUT: u64 = 0x4;
pub const FLAG_REMOTE_RESET: u64 = 0x10;
pub const FLAG_CONNECT_FAILURE: u64 = 0x20;
pub const FLAG_CONNECTION_TERMINATION: u64 = 0x40;

/// How long past its timeout the tick waits for a rate limit answer the host never delivered.
pub const CALLOUT_GRACE_NS: u64 = 1_000_000_000;

impl Vm {
    /// `now_ns`: the host's clock at load time (also the weighted choice's seed).
    pub fn new(config: Config, now_ns: u64) -> Vm {
        let seed = now_ns;
        let limit_headers = policy::limit_headers(&config);
        let policies = config.models.iter().any(|m| m.allow.is_some() || m.limits.is_some());
        let rls_service = config
            .rate_limit_service
            .as_ref()
            .map(|r| rls::grpc_service(&r.cluster))
            .unwrap_or_default();
        let stats = StatNames::new(&config);
        let health_slots = if config.failover.is_some() {
            config.models.iter().map(|m| m.destinations.len()).sum()
        } else {
            0
        };
        let health_key = if health_slots > 0 {
            crate::health::key(&config)
        } else {
            String::new()
        };
        Vm {
            config,
            hold: RefCell::new(HoldNet::default()),
            rng: Cell::new(crate::routing::mix(seed ^ 0x9e37_79b9_7f4a_7c15) | 1),
            ticking: Cell::new(false),
            logged_release: Cell::new(false),
            rls_service,
            limit_headers,
            policies,
            loaded_s: now_ns / 1_000_000_000,
            callouts: RefCell::new(Vec::new()),
            memory_reported: Cell::new(0),
            stats,
            node: OnceCell::new(),
            logged_identity: Cell::new(false),
            bucket_seed: Cell::new(None),
            health_key,
            health_slots,
            announced: Cell::new(false),
            awaiting: RefCell::new(Vec::new()),
        }
    }

    /// The breakers' gauges, once per VM, from the shared table; the table for this request.
    #[inline(never)]
    fn health<H: Host>(&self, host: &mut H) -> crate::health::Table {
        let t = crate::health::read(host, &self.health_key, self.health_slots);
        if !self.announced.replace(true) {
            let mut i = 0;
            for m in &self.config.models {
                for d in &m.destinations {
                    host.metric(&telemetry::destination_state(&m.name, &d.name, t.get(i).state));
                    i += 1;
                }
            }
        }
        t
    }

    /// Applies `f` to a breaker; a change of state is set on its gauge (and an opening logged).
    #[inline(never)]
    fn breaker<H: Host>(&self, host: &mut H, at: (usize, usize, usize), event: Event) {
        let (m, d, slot) = at;
        let Some((before, after)) = crate::health::update(host, &self.health_key, self.health_slots, slot, event)
        else {
            return;
        };
        let (Some(m), true) = (self.config.models.get(m), before.state != after.state) else {
            return;
        };
        let Some(d) = m.destinations.get(d) else { return };
        host.metric(&telemetry::destination_state(&m.name, &d.name, after.state));
        let said = |what: &str| "destination `".to_string() + &d.name + "` of model `" + &m.name + "` " + what;
        if after.state == crate::health::OPEN {
            let seconds = self
                .config
                .failover
                .as_ref()
                .map_or(0, |f| crate::health::probation_ms(f, after.level).div_ceil(1000));
            host.log(
                LogLevel::Warn,
                &said(&("is failing: no new requests for its probation of ".to_string() + &seconds.to_string() + " s")),
            );
        } else if after.state == crate::health::CLOSED {
            host.log(LogLevel::Info, &said("recovered: it takes new requests again"));
        }
    }

    fn bucket_seed<H: Host>(&self, host: &mut H) -> u64 {
        if let Some(seed) = self.bucket_seed.get() {
            return seed;
        }
        let seed = policy::bucket_seed(host, self.random());
        self.bucket_seed.set(Some(seed));
        seed
    }

    /// The proxy's node, read once (three crossings at most, on the first request that asks).
    fn node<H: Host>(&self, host: &mut H) -> &NodeInfo {
        self.node.get_or_init(|| {
            // Envoy's configuration attributes are `xds.node`, `xds.listener_direction`; older
            // Envoys had them at the top level.
            let (xds, id) = match host.property(&["xds", "node", "id"]) {
                Some(id) => (true, Some(id)),
                None => (false, host.property(&["node", "id"])),
            };
            let attribute = |path: &[&'static str]| -> Vec<&'static str> {
                xds.then_some("xds").into_iter().chain(path.iter().copied()).collect()
            };
            let direction: &'static [&'static str] = if xds {
                &["xds", "listener_direction"]
            } else {
                &["listener_direction"]
            };
            let kind = NodeKind::from_node_id(&id.unwrap_or_default());
            let may_be_caller = match self.config.identity_source {
                IdentitySource::Auto => kind == NodeKind::Sidecar,
                IdentitySource::Workload => matches!(kind, NodeKind::Sidecar | NodeKind::Other),
                _ => false,
            };
            let workload = if may_be_caller {
                let ns = host.property(&attribute(&["node", "metadata", "NAMESPACE"]));
                let sa = host.property(&attribute(&["node", "metadata", "SERVICE_ACCOUNT"]));
                identity::workload_principal(&self.config.trust_domain, ns.as_deref(), sa.as_deref())
            } else {
                None
            };
            NodeInfo {
                kind,
                workload,
                direction,
            }
        })
    }

    fn log_identity_once<H: Host>(&self, host: &mut H, message: &str) {
        if !self.logged_identity.replace(true) {
            host.log(LogLevel::Warn, message);
        }
    }

    /// Keeps `model_router_vm_memory_bytes` (the sum over the VMs that share the stat) current
    /// with this VM's linear memory; it only ever changes when the memory grows.
    fn report_memory<H: Host>(&self, host: &mut H) {
        let now = host.memory_bytes();
        let before = self.memory_reported.replace(now);
        if now != before {
            let delta = i64::try_from(now).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX);
            host.metric(&telemetry::vm_memory(delta));
        }
    }

    /// A call to the rate limit service, for `Host::grpc_call`.
    fn rls_call<'a>(&'a self, call: Call, message: &'a [u8]) -> Option<GrpcCall<'a>> {
        let r = self.config.rate_limit_service.as_ref()?;
        Some(GrpcCall {
            service: &self.rls_service,
            service_name: call.service(),
            method: call.method(),
            message,
            timeout_ms: r.timeout_ms,
            detached: call == Call::Report,
        })
    }

    /// The rate limit service's timeout (requests only wait on it when there is one).
    fn rls_timeout_ns(&self) -> u64 {
        self.config
            .rate_limit_service
            .as_ref()
            .map_or(0, |r| u64::from(r.timeout_ms) * 1_000_000)
    }

    fn watch_callout<H: Host>(&self, host: &mut H, id: u32, now: u64) {
        let deadline = now
            .saturating_add(self.rls_timeout_ns())
            .saturating_add(CALLOUT_GRACE_NS);
        self.callouts.borrow_mut().push((id, deadline));
        if !self.ticking.replace(true) {
            host.set_tick_ms(TICK_MS);
        }
    }

    fn callout_done(&self, id: u32) {
        self.callouts.borrow_mut().retain(|(i, _)| *i != id);
    }

    /// An answer to a call the root made (a `Report`): only failures are worth a count.
    pub fn on_root_grpc<H: Host>(&self, host: &mut H, result: Result<&[u8], u32>) {
        let reason = match result {
            Ok(bytes) => match rls::answer(bytes) {
                Some(a) if a.code != rls::Code::Unknown => return,
                _ => "invalid_response",
            },
            Err(status) => rls::failure_reason(status),
        };
        host.metric(&telemetry::rate_limit_service_failure(Call::Report.label(), reason));
    }

    pub fn hold_state(&self) -> crate::hold::State {
        self.hold.borrow().state()
    }

    fn random(&self) -> u64 {
        // xorshift64*: statistically fine for traffic splitting.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The root context's timer: lets go of held requests whose body never came. Returns the
    /// requests whose rate limit answer is overdue: the caller runs `Stream::on_callout_expired`
    /// on each (in its context).
    pub fn on_tick<H: Host>(&self, host: &mut H) -> Vec<u32> {
        let now = host.now_ns();
        let tick = self.hold.borrow_mut().tick(now);
        let expired: Vec<u32> = {
            let mut callouts = self.callouts.borrow_mut();
            let expired = callouts.iter().filter(|(_, d)| *d <= now).map(|(id, _)| *id).collect();
            callouts.retain(|(_, d)| *d > now);
            expired
        };
        self.first_byte_overdue(host, now);
        if tick.stop && self.callouts.borrow().is_empty() && self.awaiting.borrow().is_empty() {
            host.set_tick_ms(0);
            self.ticking.set(false);
        }
        if !tick.release.is_empty() {
            self.release_held(host, tick);
        }
        expired
    }

    /// Failover: a request sent upstream is awaited until its response headers come; the tick
    /// counts it as a timeout once its `firstByteTimeout` passed (the request goes on).
    fn await_first_byte<H: Host>(&self, host: &mut H, id: u32, at: (usize, usize, usize), now: u64) {
        let Some(t) = self.config.failover.as_ref().and_then(|f| f.first_byte_timeout_ms) else {
            return;
        };
        let deadline_ns = now.saturating_add(u64::from(t) * 1_000_000);
        self.awaiting.borrow_mut().push(Awaiting { id, deadline_ns, at });
        if !self.ticking.replace(true) {
            host.set_tick_ms(TICK_MS);
        }
    }

    /// The request's first byte came (or it ended): `false` when the tick already counted it.
    fn first_byte_came(&self, id: u32) -> bool {
        if self
            .config
            .failover
            .as_ref()
            .is_none_or(|f| f.first_byte_timeout_ms.is_none())
        {
            return true;
        }
        let mut awaiting = self.awaiting.borrow_mut();
        let before = awaiting.len();
        awaiting.retain(|a| a.id != id);
        awaiting.len() != before
    }

    /// The tick: every awaited request past its deadline is a timeout failure of its destination.
    fn first_byte_overdue<H: Host>(&self, host: &mut H, now: u64) {
        let overdue: Vec<Awaiting> = {
            let mut awaiting = self.awaiting.borrow_mut();
            if awaiting.iter().all(|a| a.deadline_ns >= now) {
                return;
            }
            let overdue = awaiting.iter().filter(|a| a.deadline_ns < now).copied().collect();
            awaiting.retain(|a| a.deadline_ns >= now);
            overdue
        };
        let Some(p) = self.config.failover.as_ref() else { return };
        for a in overdue {
            self.failed(host, p, a.at, "timeout", now);
        }
    }

    /// One outcome of a destination on its breaker (`failure`: its reason), counted.
    fn failed<H: Host>(&self, host: &mut H, p: &Failover, at: (usize, usize, usize), failure: &str, now: u64) {
        self.breaker(host, at, Event::Outcome(p, false, now / 1_000_000));
        if let Some(m) = self.config.models.get(at.0) {
            if let Some(d) = m.destinations.get(at.1) {
                host.metric(&telemetry::destination_failure(&m.name, &d.name, failure));
            }
        }
    }

    fn release_held<H: Host>(&self, host: &mut H, tick: crate::hold::Tick) {
        if !self.logged_release.replace(true) {
            host.log(
                LogLevel::Warn,
                "model-router: the body of a held request did not arrive within 1 s; letting it go. \
                 If every request does this, the host cannot hold headers: body routing needs \
                 allow_on_headers_stop_iteration: true (see docs/configuration.md).",
            );
        }
        if tick.switched_off {
            host.log(
                LogLevel::Warn,
                "model-router: several held requests in a row never got their body; routing from headers \
                 only for now (requests whose model is in the body are unrouted), trying again later.",
            );
        }
        // No borrow is held here: resuming can call back into this VM.
        for id in tick.release {
            host.metric(&telemetry::hold_released());
            if self.policies {
                // Going on unread would skip access control and limits: refuse, retryably.
                let r = Reject::new(
                    RejectReason::BodyNotReceived,
                    "The request body did not arrive in time to check the model's access rules; retry.",
                );
                host.metric(&telemetry::rejected(r.reason, telemetry::OTHER));
                let body = r.body();
                let headers = [("content-type", "application/json"), ("retry-after", "1")];
                if !host.reply_to(id, r.status(), &details(&r), &headers, &body) {
                    host.resume(id);
                }
            } else {
                host.resume(id);
            }
        }
    }

    fn watch_held<H: Host>(&self, host: &mut H, id: u32, now: u64) {
        if self.hold.borrow_mut().held(id, now) && !self.ticking.replace(true) {
            host.set_tick_ms(TICK_MS);
        }
    }
}

/// Where Istio puts the caller's identity on a waypoint (and in its other HBONE listeners):
/// there is no client certificate on the connection the waypoint's HTTP filters see.
pub const PEER_PRINCIPAL_STATE: &str = "io.istio.peer_principal";

/// The caller's SPIFFE identity and the source it came from (`identity::source`: where the
/// filter runs decides), reading only the properties that source needs.
fn caller_identity<H: Host>(vm: &Vm, host: &mut H, h: &HeaderMap) -> (Option<String>, Source) {
    let cfg = &vm.config;
    let (kind, direction) = if Source::needs_node(cfg.identity_source) {
        let (kind, attribute) = {
            let node = vm.node(host);
            (node.kind, node.direction)
        };
        let direction = if kind == NodeKind::Sidecar || cfg.identity_source == IdentitySource::Workload {
            Direction::from_property(host.property(attribute).as_deref())
        } else {
            Direction::Unspecified
        };
        (kind, direction)
    } else {
        (NodeKind::Other, Direction::Unspecified)
    };
    let source = identity::source(cfg.identity_source, kind, direction);
    let peer_certificate = |host: &mut H| {
        host.property(&["connection", "uri_san_peer_certificate"])
            .filter(|p| !p.is_empty())
    };
    let peer_principal = |host: &mut H| {
        host.property(&["filter_state", PEER_PRINCIPAL_STATE])
            .filter(|p| !p.is_empty())
            .map(policy::with_spiffe_scheme)
    };
    let found = match source {
        Source::Workload => {
            let w = vm.node(host).workload.clone().map(String::into_bytes);
            if w.is_none() {
                vm.log_identity_once(
                    host,
                    "model-router: the caller is this sidecar's own workload, but the node metadata has no valid \
                     NAMESPACE and SERVICE_ACCOUNT (Istio's agent writes them): callers have no identity",
                );
            }
            w
        }
        Source::Refused => {
            vm.log_identity_once(
                host,
                &format!(
                    "model-router: identitySource: workload does not apply {} (a proxy never lends its own identity \
                     to its callers): callers have no identity",
                    if direction == Direction::Inbound {
                        "on an inbound listener".to_string()
                    } else {
                        format!("on a {}", kind.name())
                    },
                ),
            );
            None
        }
        Source::PeerCertificate => peer_certificate(host),
        Source::PeerPrincipal => peer_principal(host),
        Source::Peer => peer_certificate(host).or_else(|| peer_principal(host)),
        Source::Header => None,
    };
    let claimed = cfg.identity_header.as_deref().and_then(|n| h.get(n));
    let identity = match source {
        Source::Header => policy::identity(None, claimed),
        s if s.header_fallback() && found.is_none() => policy::identity(None, claimed),
        _ => policy::identity(found.as_deref(), None),
    };
    (identity, source)
}

fn details(r: &Reject) -> String {
    format!("model_router_{}", r.reason.code())
}

/// One request/response exchange.
#[derive(Debug)]
pub struct Stream {
    id: u32,
    flow: RequestFlow,
    /// Bytes of the buffered request body already fed to the flow.
    body_seen: usize,
    meter: Meter,
    /// Where to charge the response's tokens (a model with limits).
    charge: Option<Charge>,
    /// `x-ratelimit-*` to report on the response.
    rate_info: RateInfo,
    /// The caller's identity and limit-key headers, read with the request headers.
    principal: Option<String>,
    /// Where the identity came from (once read).
    identity_source: Option<Source>,
    limit_values: Vec<(String, Vec<u8>)>,
    /// The response status, from the response headers.
    status: Option<u32>,
    /// The request got past admission and went on to a backend.
    admitted: bool,
    /// Puts the client's model name back into the response (`restoreModelName`).
    restorer: Option<ModelRestorer>,
    /// Calls to the rate limit service this request waits for before it goes on: (token, call).
    waiting: Vec<(u32, Call)>,
    /// What the answers so far refuse the request with (over a limit, or the service failed
    /// with `failureMode: deny`).
    refusal: Option<Reject>,
    /// When the calls were made (a failure that took the whole timeout is a timeout, whatever
    /// status the host reports: Envoy turns its own deadline into UNAVAILABLE).
    asked_ns: u64,
    /// Failover: the (model, destination, breaker slot) the request went to and when, until its
    /// outcome is counted.
    sent: Option<((usize, usize, usize), u64)>,
}

/// What admission decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Admitted,
    /// Waiting for the rate limit service: the request stays stopped until it answers.
    Waiting,
}

impl Stream {
    pub fn new(id: u32) -> Stream {
        Stream {
            id,
            flow: RequestFlow::default(),
            body_seen: 0,
            meter: Meter::new(0),
            charge: None,
            rate_info: RateInfo::default(),
            principal: None,
            identity_source: None,
            limit_values: Vec::new(),
            status: None,
            admitted: false,
            restorer: None,
            waiting: Vec::new(),
            refusal: None,
            asked_ns: 0,
            sent: None,
        }
    }

    pub fn flow(&self) -> &RequestFlow {
        &self.flow
    }

    /// The caller's identity as the filter determined it, and its source (`None`: not read,
    /// the request needed no identity).
    pub fn caller(&self) -> Option<(Option<&str>, Source)> {
        self.identity_source.map(|s| (self.principal.as_deref(), s))
    }

    pub fn on_request_headers<H: Host>(&mut self, vm: &Vm, host: &mut H, end_of_stream: bool) -> Action {
        let now = host.now_ns();
        self.meter = Meter::new(now);
        let cfg = &vm.config;
        let h = host.headers(Map::Request);
        // Only the filter sets the route and model headers: a client's are dropped first.
        let inference = (cfg.inference_model_header != InferenceModelHeader::None).then_some(INFERENCE_MODEL_HEADER);
        for name in [cfg.route_header.as_str(), cfg.model_header.as_str()]
            .into_iter()
            .chain(inference)
        {
            if h.get(name).is_some() {
                host.del_header(Map::Request, name);
            }
        }
        let method = h.get_str(":method").unwrap_or_default();
        let path = h.get_str(":path").unwrap_or_default();
        let authority = h
            .get_str(":authority")
            .or_else(|| h.get_str("host"))
            .unwrap_or_default();
        let content_type = h.get_str("content-type");
        let content_length = h.get_str("content-length").and_then(|v| v.trim().parse().ok());
        if cfg.serve_model_list && cfg.scope.contains(&authority, &path) {
            if let Some(req) = models::models_request(&method, &path) {
                return self.models_reply(vm, host, &h, &req);
            }
        }
        let sticky = cfg.sticky_header.as_deref().and_then(|n| h.get(n)).map(<[u8]>::to_vec);
        let permit = if cfg.body_routing {
            vm.hold.borrow_mut().permit(now)
        } else {
            Permit::No
        };
        if permit == Permit::Probe {
            host.metric(&telemetry::hold_probe());
        }
        if vm.health_slots > 0 {
            let t = vm.health(host);
            self.flow.set_health(t, now / 1_000_000);
        }
        let info = RequestInfo {
            method: &method,
            path: &path,
            authority: &authority,
            content_type: content_type.as_deref(),
            content_length,
            sticky: sticky.as_deref(),
            end_of_stream,
            random: vm.random(),
        };
        let action = self.flow.on_request_headers(cfg, &info, permit != Permit::No);
        if vm.policies && self.flow.counted() {
            let (principal, source) = caller_identity(vm, host, &h);
            self.principal = principal;
            self.identity_source = Some(source);
            self.limit_values = vm
                .limit_headers
                .iter()
                .filter_map(|n| h.get(n).map(|v| (n.clone(), v.to_vec())))
                .collect();
        }
        if self.flow.counted() && !matches!(action, HeadersAction::Reject(_)) && h.get("accept-encoding").is_some() {
            // The response's usage is read: ask the backend for an uncompressed answer.
            host.del_header(Map::Request, "accept-encoding");
        }
        match action {
            HeadersAction::Continue { set, remove } => {
                let admission = match self.admit(vm, host, Some(now)) {
                    Ok(a) => a,
                    Err(r) => return self.reject(vm, host, &r),
                };
                for name in remove {
                    host.del_header(Map::Request, name);
                }
                if !self.set_request_headers(host, &set) {
                    return self.route_failed(vm, host);
                }
                self.go_on(vm, host, admission)
            }
            HeadersAction::Hold => {
                vm.watch_held(host, self.id, now);
                Action::Pause
            }
            HeadersAction::Reject(r) => self.reject(vm, host, &r),
        }
    }

    pub fn on_request_body<H: Host>(&mut self, vm: &Vm, host: &mut H, body_size: usize, end_of_stream: bool) -> Action {
        if self.take_released(vm) {
            return Action::Continue;
        }
        if !self.waiting.is_empty() {
            // Still waiting for the rate limit service: going on now would let the headers go too.
            return Action::Pause;
        }
        if self.flow.held() {
            // A body callback while the headers are held: this host holds headers.
            vm.hold.borrow_mut().delivered(self.id);
        }
        if !self.flow.reading_body() {
            return Action::Continue;
        }
        let chunk = if body_size > self.body_seen {
            host.body(Buffer::Request, self.body_seen, body_size - self.body_seen)
        } else {
            Vec::new()
        };
        self.body_seen = body_size;
        match self.flow.on_request_body(&vm.config, &chunk, end_of_stream) {
            BodyAction::NeedMore => Action::Pause,
            BodyAction::Continue { mut set, edits } => {
                let admission = match self.admit(vm, host, None) {
                    Ok(a) => a,
                    Err(r) => return self.reject(vm, host, &r),
                };
                if !edits.is_empty() {
                    let body = host.body(Buffer::Request, 0, body_size);
                    if !host.replace_body(Buffer::Request, &apply_edits(&body, &edits)) {
                        // Body unchanged: its length must not change either.
                        set.retain(|(k, _)| k != CONTENT_LENGTH);
                        host.log(LogLevel::Warn, "model-router: the host refused the body rewrite");
                    }
                }
                if !self.set_request_headers(host, &set) {
                    return self.route_failed(vm, host);
                }
                self.go_on(vm, host, admission)
            }
            BodyAction::Reject(r) => self.reject(vm, host, &r),
        }
    }

    /// The request's trailers: the body ended without a body callback saying so (HTTP/2, or
    /// HTTP/1 chunked trailers where Envoy keeps them). The body is whole: decide now, as at the
    /// end of the body. (Answering `Continue` undecided would let Envoy pass the held headers and
    /// body on: a client could send any model past access control by adding a trailer.)
    pub fn on_request_trailers<H: Host>(&mut self, vm: &Vm, host: &mut H) -> Action {
        let seen = self.body_seen;
        self.on_request_body(vm, host, seen, true)
    }

    pub fn on_response_headers<H: Host>(&mut self, vm: &Vm, host: &mut H, end_of_stream: bool) -> Action {
        let mode = vm.config.response_headers;
        if mode != ResponseHeaders::None {
            if let Some((_, d)) = self.flow.routed(&vm.config) {
                host.put_header(Map::Response, ROUTE_RESPONSE_HEADER, &d.name);
            }
            if let (ResponseHeaders::RouteAndModel, Some((m, _))) = (mode, self.flow.matched(&vm.config)) {
                host.put_header(Map::Response, MODEL_RESPONSE_HEADER, &m.name);
            }
        }
        for (k, v) in self.rate_info.headers() {
            host.put_header(Map::Response, &k, &v);
        }
        if self.flow.counted() {
            let h = host.headers(Map::Response);
            if mode == ResponseHeaders::None {
                // The decision stays inside the mesh; nothing a backend echoes gives it away.
                // (Only requests the filter decided about have a decision to give away.)
                for name in [ROUTE_RESPONSE_HEADER, MODEL_RESPONSE_HEADER] {
                    if h.get(name).is_some() {
                        host.del_header(Map::Response, name);
                    }
                }
            }
            let number = |name| h.get_str(name).and_then(|v| v.trim().parse::<u64>().ok());
            self.status = number(":status").and_then(|s| u32::try_from(s).ok());
            if let Some(s) = self.status {
                self.outcome(vm, host, Some(s));
            }
            let encoded = h
                .get_str("content-encoding")
                .is_some_and(|e| !e.trim().is_empty() && !e.trim().eq_ignore_ascii_case("identity"));
            let ct = h.get_str("content-type");
            self.meter.response_headers(
                ct.as_deref(),
                encoded,
                count_header(&h, ["x-prompt-tokens", "x-amzn-bedrock-input-token-count"]),
                count_header(&h, ["x-generated-tokens", "x-amzn-bedrock-output-token-count"]),
            );
            if !encoded && !end_of_stream {
                self.restorer = self.restorer_for(vm, ct.as_deref());
                if self.restorer.is_some() && h.get("content-length").is_some() {
                    // The body's length changes: it goes on chunked (or with HTTP/2 framing).
                    host.del_header(Map::Response, "content-length");
                }
            }
            if end_of_stream {
                self.response_body(vm, host, 0, true);
            }
        }
        Action::Continue
    }

    pub fn on_response_body<H: Host>(
        &mut self,
        vm: &Vm,
        host: &mut H,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        self.response_body(vm, host, body_size, end_of_stream);
        Action::Continue
    }

    /// The response's trailers: its body ended without a body callback saying so. Its usage and
    /// time to first token are final now. Bytes the model-name restorer still held (an SSE event
    /// without its closing blank line) cannot be added here: the host has no body left to write
    /// to, and that is logged.
    pub fn on_response_trailers<H: Host>(&mut self, vm: &Vm, host: &mut H) -> Action {
        self.response_body(vm, host, 0, true);
        Action::Continue
    }

    /// The exchange ended, however it ended: count it, charge it, release what it held.
    pub fn on_log<H: Host>(&mut self, vm: &Vm, host: &mut H) {
        self.take_released(vm);
        vm.hold.borrow_mut().forget(self.id);
        if !self.waiting.is_empty() {
            // Ended (the client went away) before the rate limit service answered.
            self.waiting.clear();
            vm.callout_done(self.id);
        }
        if self.sent.is_some() {
            self.outcome(vm, host, None);
        }
        let cfg = &vm.config;
        // The status seen in the response headers, else (local replies, resets) Envoy's own.
        let status = self.status.unwrap_or_else(|| {
            host.property(&["response", "code"])
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map(|b| u32::try_from(i64::from_le_bytes(b)).unwrap_or(0))
                .unwrap_or(0)
        });
        let (model, dest) = telemetry::labels(cfg, self.flow.outcome());
        let mut ops = Vec::new();
        if self.admitted && matches!(self.flow.outcome(), Outcome::Matched { .. }) {
            ops.extend(self.account(vm, host, status, model, dest));
        }
        let now = host.now_ns();
        let stats = vm.stats.pair(cfg, self.flow.outcome());
        ops.extend(self.meter.finish(self.flow.counted(), &stats, status, now));
        for op in &ops {
            host.metric(op);
        }
        vm.report_memory(host);
    }

    /// Tokens of a finished exchange: charged to its limits (what was reported, else a bounded
    /// estimate), and counted as missing when they could not be read.
    fn account<H: Host>(&mut self, vm: &Vm, host: &mut H, status: u32, model: &str, dest: &str) -> Vec<MetricOp> {
        let mut ops = telemetry::usage_errors(model, dest, &self.meter.usage_errors());
        // Only a backend that answered 2xx (or did not get to answer: a reset, a disconnect)
        // produced tokens; an error answer did not.
        if !(status == 0 || (200..300).contains(&status)) {
            return ops;
        }
        let charges_tokens = self.charge.as_ref().is_some_and(Charge::counts_tokens);
        if !(charges_tokens || self.flow.model_from_body()) {
            return ops;
        }
        let usage = self.meter.usage();
        let complete = self.meter.usage_complete();
        let reason = if self.meter.encoded() {
            Some("encoded")
        } else if !self.meter.ended() {
            (!complete).then_some("incomplete")
        } else if !complete && self.meter.usage_errors().unreadable > 0 {
            Some("unreadable")
        } else {
            (!complete).then_some("absent")
        };
        if let Some(reason) = reason {
            ops.push(telemetry::usage_missing(model, dest, reason));
        }
        if let Some(charge) = self.charge.as_ref().filter(|c| c.counts_tokens()) {
            let input = usage.input.unwrap_or_else(|| self.flow.estimated_input_tokens());
            // A final report without output tokens is an embedding's: none were produced.
            // Without one, the estimate, but never less than the stream delivered.
            let output = if complete {
                usage.output.unwrap_or(0)
            } else {
                let estimate = self.flow.max_tokens().unwrap_or(vm.config.estimated_output_tokens);
                estimate.max(self.meter.messages_seen())
            };
            let tokens = input.saturating_add(output);
            if charge.limits().global {
                // Limitador counts `hits_addend` 0 as 1: nothing used, nothing reported.
                if tokens > 0 {
                    let hits = u32::try_from(tokens).unwrap_or(u32::MAX);
                    let matched = self.flow.model_index().and_then(|i| vm.config.models.get(i));
                    if let (Some(m), Some(r)) = (matched, vm.config.rate_limit_service.as_ref()) {
                        let msg = rls::request(Call::Report, &r.domain, &m.name, charge.caller(), hits);
                        if let Some(call) = vm.rls_call(Call::Report, &msg) {
                            if host.grpc_call(&call).is_none() {
                                ops.push(telemetry::rate_limit_service_failure(
                                    Call::Report.label(),
                                    "unreachable",
                                ));
                            }
                        }
                    }
                }
            } else {
                let now = host.now_ns();
                policy::charge(host, charge, tokens, now);
            }
        }
        ops
    }

    /// The client asked for an alias or a name `upstreamModel` replaced: put it back in the answer.
    fn restorer_for(&self, vm: &Vm, content_type: Option<&str>) -> Option<ModelRestorer> {
        if !vm.config.restore_model_name {
            return None;
        }
        let upstream = self.flow.upstream_name(&vm.config)?;
        let client = self.flow.requested_model()?;
        if client == upstream || !(200..300).contains(&self.status.unwrap_or(0)) {
            return None;
        }
        let mime = crate::header_map::mime_type(content_type);
        let sse = mime == "text/event-stream";
        (sse || mime == "application/json" || mime.ends_with("+json"))
            .then(|| ModelRestorer::new(upstream, client, sse))
    }

    fn response_body<H: Host>(&mut self, vm: &Vm, host: &mut H, body_size: usize, end_of_stream: bool) {
        if !self.meter.wants_body() && self.restorer.is_none() {
            return;
        }
        // Each response chunk passes on at once: the buffer holds just this one.
        let chunk = if body_size > 0 {
            host.body(Buffer::Response, 0, body_size)
        } else {
            Vec::new()
        };
        if let Some(r) = self.restorer.as_mut() {
            let mut out = r.feed(&chunk);
            if end_of_stream {
                out.extend(r.finish());
            }
            if out != chunk && !host.replace_body(Buffer::Response, &out) {
                host.log(LogLevel::Warn, "model-router: the host refused the response rewrite");
                self.restorer = None;
            }
        }
        if let Some(ttft) = self.meter.response_body(&chunk, end_of_stream, || host.now_ns()) {
            host.metric(&Meter::ttft_op(&vm.stats.pair(&vm.config, self.flow.outcome()), ttft));
        }
        if end_of_stream && vm.config.filter_state {
            let u = self.meter.usage();
            if let Some(n) = u.input {
                host.put_filter_state(FS_INPUT_TOKENS, n.to_string().as_bytes());
            }
            if let Some(n) = u.output {
                host.put_filter_state(FS_OUTPUT_TOKENS, n.to_string().as_bytes());
            }
        }
    }

    fn models_reply<H: Host>(&mut self, vm: &Vm, host: &mut H, h: &HeaderMap, req: &ModelsRequest) -> Action {
        let (principal, source) = caller_identity(vm, host, h);
        self.principal = principal.clone();
        self.identity_source = Some(source);
        match models::answer(&vm.config, req, principal.as_deref(), vm.loaded_s) {
            Ok(body) => {
                if host.send_reply(
                    200,
                    "model_router_models",
                    &[("content-type", "application/json")],
                    &body,
                ) {
                    Action::Pause
                } else {
                    Action::Continue
                }
            }
            Err(r) => self.reject(vm, host, &r),
        }
    }

    /// True (once) if the safety net let this held request go; the flow then learns how.
    fn take_released(&mut self, vm: &Vm) -> bool {
        if !vm.hold.borrow_mut().take_released(self.id) {
            return false;
        }
        if vm.policies {
            self.flow.deny(RejectReason::BodyNotReceived);
        } else {
            self.flow.release_held();
        }
        true
    }

    fn reject<H: Host>(&mut self, vm: &Vm, host: &mut H, r: &Reject) -> Action {
        let (model, _) = telemetry::labels(&vm.config, self.flow.outcome());
        host.metric(&telemetry::rejected(r.reason, model));
        if r.reason == RejectReason::ModelUnavailable {
            host.metric(&telemetry::failover(model, "unavailable"));
            if vm.config.filter_state {
                host.put_filter_state(FS_FAILOVER, b"unavailable");
            }
        }
        if vm.config.filter_state {
            // The access log names the model a refusal was for (`other` when none was known).
            host.put_filter_state(FS_MODEL, model.as_bytes());
            host.put_filter_state(FS_DESTINATION, telemetry::NO_DESTINATION.as_bytes());
        }
        let body = r.body();
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        headers.extend(r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if !host.send_reply(r.status(), &details(r), &headers, &body) {
            // The host refused a local reply: never leave the request hanging.
            return Action::Continue;
        }
        self.status = Some(r.status());
        Action::Pause
    }

    /// Sets the routing headers; false if the host refused one (or refused to choose the route
    /// again): the request would not go where the filter chose.
    fn set_request_headers<H: Host>(&self, host: &mut H, set: &[(String, String)]) -> bool {
        let mut ok = true;
        for (k, v) in set {
            ok &= host.put_header(Map::Request, k, v);
        }
        // Envoy >= 1.33: make sure the route is chosen again with the new headers.
        ok && (set.is_empty() || host.reroute())
    }

    /// The host refused the routing headers: refused, not sent somewhere the filter did not
    /// choose (and not counted as routed).
    fn route_failed<H: Host>(&mut self, vm: &Vm, host: &mut H) -> Action {
        host.log(
            LogLevel::Error,
            "model-router: the proxy refused to set the routing header; request refused",
        );
        let r = Reject::new(
            RejectReason::RouteFailed,
            "The proxy could not route this request to the model's destination.",
        );
        self.flow.deny(r.reason);
        if !self.waiting.is_empty() {
            // Its rate limit answers no longer matter.
            self.waiting.clear();
            vm.callout_done(self.id);
        }
        self.reject(
            vm,
            host,
            &Reject {
                error_type: "server_error".into(),
                ..r
            },
        )
    }

    /// Access control and rate limits for a matched request (no-op for models without them).
    /// Global limits ask the rate limit service: the request then waits for its answers.
    /// `now`: the time when the caller has read it already.
    fn admit<H: Host>(&mut self, vm: &Vm, host: &mut H, now: Option<u64>) -> Result<Admission, Reject> {
        let Outcome::Matched { model, .. } = *self.flow.outcome() else {
            return Ok(Admission::Admitted);
        };
        let cfg = &vm.config;
        if cfg
            .models
            .get(model)
            .is_none_or(|m| m.allow.is_none() && m.limits.is_none())
        {
            self.admitted = true;
            return Ok(Admission::Admitted);
        }
        // The clock only where a limit needs it (a crossing saved on every other request).
        let now = now.unwrap_or_else(|| host.now_ns());
        let caller = Caller {
            principal: self.principal.as_deref(),
            headers: &self.limit_values,
            seed: vm.bucket_seed(host),
        };
        let mut collisions = Vec::new();
        let admitted = policy::admit(host, cfg, model, &caller, now, &mut collisions);
        for c in collisions {
            let name = cfg.models.get(model).map_or(telemetry::OTHER, |m| m.name.as_str());
            host.metric(&telemetry::limit_bucket_collision(name, c.label()));
        }
        match admitted {
            Ok((charge, info)) => {
                self.rate_info = info;
                let global = charge.as_ref().is_some_and(|c| c.limits().global);
                self.charge = charge;
                if global {
                    self.ask_service(vm, host, model, now);
                    if let Some(r) = self.refusal.take() {
                        self.waiting.clear();
                        vm.callout_done(self.id);
                        self.flow.deny(r.reason);
                        return Err(r);
                    }
                    if !self.waiting.is_empty() {
                        return Ok(Admission::Waiting);
                    }
                }
                self.admitted = true;
                Ok(Admission::Admitted)
            }
            Err(r) => {
                self.flow.deny(r.reason);
                Err(r)
            }
        }
    }

    /// Starts the calls a global limit needs: `ShouldRateLimit` for requests, `CheckRateLimit`
    /// for tokens, at once (the request waits for the slower one, not for their sum).
    fn ask_service<H: Host>(&mut self, vm: &Vm, host: &mut H, model: usize, now: u64) {
        let (Some(charge), Some(m), Some(r)) = (
            self.charge.as_ref(),
            vm.config.models.get(model),
            vm.config.rate_limit_service.as_ref(),
        ) else {
            return;
        };
        let limits = charge.limits();
        let calls = [
            (Call::Requests, limits.requests_per_minute.is_some()),
            (Call::Tokens, limits.tokens_per_minute.is_some()),
        ];
        let caller = charge.caller().map(str::to_string);
        for (call, needed) in calls {
            if !needed {
                continue;
            }
            let msg = rls::request(call, &r.domain, &m.name, caller.as_deref(), 1);
            match vm.rls_call(call, &msg).and_then(|c| host.grpc_call(&c)) {
                Some(token) => self.waiting.push((token, call)),
                None => self.service_failed(vm, host, call, "unreachable"),
            }
        }
        if !self.waiting.is_empty() {
            self.asked_ns = now;
            vm.watch_callout(host, self.id, now);
        }
    }

    /// The rate limit service could not say: counted, then `failureMode` decides.
    fn service_failed<H: Host>(&mut self, vm: &Vm, host: &mut H, call: Call, reason: &str) {
        host.metric(&telemetry::rate_limit_service_failure(call.label(), reason));
        let deny = vm.config.rate_limit_service.as_ref().is_some_and(|r| r.deny_on_failure);
        if deny && self.refusal.is_none() {
            let mut r = Reject::new(
                RejectReason::RateLimitUnavailable,
                "The rate limit service could not be reached or did not answer in time, and this model's \
                 limits must be checked before it is used; retry.",
            );
            // A server-side condition, not a fault of the request (OpenAI's type for those).
            r.error_type = "server_error".into();
            r.headers.push(("retry-after".into(), "1".into()));
            self.refusal = Some(r);
        }
    }

    /// The answer to a call this request made (`result`: the response message, or the gRPC
    /// status it failed with).
    pub fn on_grpc_answer<H: Host>(&mut self, vm: &Vm, host: &mut H, token: u32, result: Result<&[u8], u32>) {
        let Some(pos) = self.waiting.iter().position(|(t, _)| *t == token) else {
            return;
        };
        let (_, call) = self.waiting.remove(pos);
        match result.map(rls::answer) {
            Ok(Some(a)) if a.code != rls::Code::Unknown => self.answered(vm, call, a),
            Ok(_) => self.service_failed(vm, host, call, "invalid_response"),
            Err(status) => {
                let timeout_ns = vm.rls_timeout_ns();
                let waited = host.now_ns().saturating_sub(self.asked_ns);
                let reason = if waited >= timeout_ns - timeout_ns / 10 {
                    "timeout"
                } else {
                    rls::failure_reason(status)
                };
                self.service_failed(vm, host, call, reason);
            }
        }
        if self.waiting.is_empty() {
            self.decided(vm, host);
        }
    }

    /// The host never answered in time (the tick's backstop): every call still out failed.
    pub fn on_callout_expired<H: Host>(&mut self, vm: &Vm, host: &mut H) {
        if self.waiting.is_empty() {
            return;
        }
        for (_, call) in std::mem::take(&mut self.waiting) {
            self.service_failed(vm, host, call, "timeout");
        }
        self.decided(vm, host);
    }

    fn answered(&mut self, vm: &Vm, call: Call, a: rls::Answer) {
        let Some(limits) = self.charge.as_ref().map(Charge::limits) else {
            return;
        };
        let (kind, limit) = match call {
            Call::Requests => ("requests", limits.requests_per_minute),
            _ => ("tokens", limits.tokens_per_minute),
        };
        let limit = limit.unwrap_or(0);
        if let Some(remaining) = a.remaining {
            let v = Some((limit, remaining, a.reset_s));
            match call {
                Call::Requests => self.rate_info.requests = v,
                _ => self.rate_info.tokens = v,
            }
        }
        if a.code == rls::Code::OverLimit
            && self
                .refusal
                .as_ref()
                .is_none_or(|r| r.reason != RejectReason::RateLimitExceeded)
        {
            let model = self
                .flow
                .model_index()
                .and_then(|i| vm.config.models.get(i))
                .map_or("", |m| m.name.as_str());
            // Limitador's windows are fixed: a minute at most when it does not say.
            let retry = a.reset_s.unwrap_or(60).max(1);
            self.refusal = Some(policy::limited_message(
                model,
                kind,
                limit,
                " (counted across all proxies)",
                retry,
                &self.rate_info,
            ));
        }
    }

    /// Every answer is in: refuse, or let the stopped request go on.
    fn decided<H: Host>(&mut self, vm: &Vm, host: &mut H) {
        vm.callout_done(self.id);
        if let Some(r) = self.refusal.take() {
            self.flow.deny(r.reason);
            if self.reject(vm, host, &r) == Action::Continue {
                host.resume(self.id);
            }
            return;
        }
        self.admitted = true;
        self.note_matched(vm, host);
        host.resume(self.id);
    }

    /// After admission: a request admitted now goes on; one waiting for the service stays stopped.
    fn go_on<H: Host>(&mut self, vm: &Vm, host: &mut H, admission: Admission) -> Action {
        match admission {
            Admission::Admitted => {
                self.note_matched(vm, host);
                Action::Continue
            }
            Admission::Waiting => Action::Pause,
        }
    }

    /// Failover: a routed request goes upstream; a trial is marked on its breaker, a failover
    /// counted, and the outcome awaited.
    #[inline(never)]
    fn failover_sent<H: Host>(&mut self, vm: &Vm, host: &mut H) {
        let Outcome::Matched {
            model,
            destination: Some(d),
        } = *self.flow.outcome()
        else {
            return;
        };
        let cfg = &vm.config;
        let now = host.now_ns();
        let at = (model, d, crate::routing::slot(cfg, model, d));
        let (via, trial) = self.flow.failover();
        if let Some(slot) = trial {
            vm.breaker(host, (model, d, slot), Event::Trial(now / 1_000_000));
        }
        let label = match (via, trial) {
            (Via::First, Some(_)) => "trial",
            (Via::First, None) => "",
            (v, _) => v.label(),
        };
        if via != Via::First {
            let asked = self.flow.asked_model().unwrap_or(model);
            let name = cfg.models.get(asked).map_or(telemetry::OTHER, |m| m.name.as_str());
            host.metric(&telemetry::failover(name, label));
        }
        if cfg.filter_state && !label.is_empty() {
            host.put_filter_state(FS_FAILOVER, label.as_bytes());
        }
        self.sent = Some((at, now));
        vm.await_first_byte(host, self.id, at, now);
    }

    /// Failover: what the response (`status`: its headers' status; `None`: none came) tells of
    /// the destination. Envoy's response flags tell resets, connect failures and its timeouts.
    #[inline(never)]
    fn outcome<H: Host>(&mut self, vm: &Vm, host: &mut H, status: Option<u32>) {
        let (Some((at, sent_ns)), Some(p)) = (self.sent.take(), vm.config.failover.as_ref()) else {
            return;
        };
        if !vm.first_byte_came(self.id) {
            // The tick counted it as a timeout already.
            return;
        }
        let now = host.now_ns();
        let late = p
            .first_byte_timeout_ms
            .is_some_and(|t| now.saturating_sub(sent_ns) > u64::from(t) * 1_000_000);
        let mut flags = || {
            host.property(&["response", "flags"])
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map_or(0, u64::from_le_bytes)
        };
        let from_flags = |f: u64| match f {
            _ if f & (FLAG_NO_HEALTHY_UPSTREAM | FLAG_CONNECT_FAILURE) != 0 => Some("connect_failure"),
            _ if f & (FLAG_REMOTE_RESET | FLAG_CONNECTION_TERMINATION) != 0 => Some("reset"),
            _ if f & FLAG_REQUEST_TIMEOUT != 0 => Some("timeout"),
            _ => None,
        };
        let failure = match status {
            Some(s) if s >= 500 || p.fails(s) => from_flags(flags()).or(p.fails(s).then_some("status")),
            Some(_) => None,
            None => match from_flags(flags()) {
                None if !late => return,
                f => f,
            },
        }
        .or(late.then_some("timeout"));
        match failure {
            Some(reason) => vm.failed(host, p, at, reason, now),
            None => vm.breaker(host, at, Event::Outcome(p, true, now / 1_000_000)),
        }
    }

    /// Once the model is known and admitted: count it in flight, and name it for access logs.
    fn note_matched<H: Host>(&mut self, vm: &Vm, host: &mut H) {
        if !matches!(self.flow.outcome(), Outcome::Matched { .. }) {
            return;
        }
        if vm.health_slots > 0 {
            self.failover_sent(vm, host);
        }
        let ops = self.meter.routed(&vm.stats.pair(&vm.config, self.flow.outcome()));
        if !ops.is_empty() {
            for op in &ops {
                host.metric(op);
            }
            if vm.config.filter_state {
                let (m, d) = telemetry::labels(&vm.config, self.flow.outcome());
                host.put_filter_state(FS_MODEL, m.as_bytes());
                host.put_filter_state(FS_DESTINATION, d.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::{State, HOLD_TIMEOUT_NS};
    use crate::memory_host::MemoryHost;
    use crate::telemetry::{REJECTED_TOTAL, REQUESTS_TOTAL, USAGE_MISSING_TOTAL};

    const CFG: &str = r#"{
      "models": [
        {"name": "llama-3-8b", "aliases": ["gpt-3.5-turbo"],
         "destinations": [{"name": "llama-stable", "weight": 95}, {"name": "llama-canary", "weight": 5}]},
        {"name": "qwen", "destinations": [{"name": "qwen"}]},
        {"name": "resnet", "destinations": [{"name": "triton"}]},
        {"name": "private", "allow": ["spiffe://td/ns/a/*"], "destinations": [{"name": "private"}]},
        {"name": "metered", "limits": {"tokensPerMinute": 1000, "by": "global"}, "destinations": [{"name": "metered"}]}
      ]}"#;

    /// The test configuration with `extra` fields (and the access-log filter state on, which
    /// these tests read).
    fn vm(extra: &str) -> Vm {
        let json = CFG.replacen('{', &format!("{{\"filterState\":true,{extra}"), 1);
        Vm::new(Config::from_json(json.as_bytes()).unwrap(), 42)
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> MemoryHost {
        let mut h = MemoryHost::new();
        h.now_ns = 1_000_000_000;
        h.request_headers = vec![
            (":method".into(), method.into()),
            (":path".into(), path.into()),
            (":authority".into(), "llm.example.com".into()),
        ];
        if !body.is_empty() {
            h.request_headers
                .push(("content-length".into(), body.len().to_string()));
        }
        for (k, v) in headers {
            h.request_headers.push((k.to_string(), v.to_string()));
        }
        h.request_body = body.to_vec();
        h
    }

    /// Request headers, then the body in one piece. Returns whether the request went upstream.
    fn send(vm: &Vm, h: &mut MemoryHost, s: &mut Stream) -> bool {
        let body_len = h.request_body.len();
        let a = s.on_request_headers(vm, h, body_len == 0);
        if h.reply.is_some() {
            return false;
        }
        if a == Action::Pause || s.flow().reading_body() {
            let b = s.on_request_body(vm, h, body_len, true);
            return h.reply.is_none() && b == Action::Continue;
        }
        true
    }

    /// A response: headers, then the chunks; `ends`: whether the last chunk ends the stream.
    fn respond(vm: &Vm, h: &mut MemoryHost, s: &mut Stream, headers: &[(&str, &str)], chunks: &[&[u8]], ends: bool) {
        h.response_headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        s.on_response_headers(vm, h, chunks.is_empty() && ends);
        for (i, c) in chunks.iter().enumerate() {
            h.response_body = c.to_vec();
            s.on_response_body(vm, h, c.len(), ends && i + 1 == chunks.len());
        }
        s.on_log(vm, h);
    }

    fn ok_json() -> Vec<(&'static str, &'static str)> {
        vec![(":status", "200"), ("content-type", "application/json")]
    }

    #[test]
    fn a_refused_route_header_is_a_500_not_a_misroute_and_refusals_are_counted() {
        let vm = vm("");
        let body = br#"{"model":"qwen","messages":[]}"#;
        let calls = ["set_header", "clear_route_cache"];
        for refused in calls {
            let mut h = request(
                "POST",
                "/v1/chat/completions",
                &[("content-type", "application/json")],
                body,
            );
            h.refuse = vec![refused];
            let mut s = Stream::new(1);
            assert!(!send(&vm, &mut h, &mut s), "{refused}: not sent on");
            let reply = h.reply.clone().unwrap();
            assert_eq!(reply.status, 500, "{refused}");
            let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(
                (v["error"]["code"].as_str(), v["error"]["type"].as_str()),
                (Some("route_failed"), Some("server_error"))
            );
            s.on_log(&vm, &mut h);
            let n = |name: &str, labels: &[(&str, &str)]| h.metrics.get(&telemetry::stat_name(name, labels)).copied();
            assert!(
                n(telemetry::HOST_ERRORS_TOTAL, &[("call", refused)]) >= Some(1),
                "{refused}: {:?}",
                h.metrics
            );
            assert_eq!(
                n(REJECTED_TOTAL, &[("model", "qwen"), ("reason", "route_failed")]),
                Some(1)
            );
            assert!(
                !h.metrics.keys().any(|k| k.contains("destination=.=qwen;")),
                "{refused}: never counted as routed to qwen: {:?}",
                h.metrics
            );
        }
        // A refused access-log write is counted; the request goes on.
        let mut h = request(
            "POST",
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            body,
        );
        h.refuse = vec!["set_filter_state"];
        let mut s = Stream::new(1);
        assert!(send(&vm, &mut h, &mut s));
        assert_eq!(h.header(Map::Request, "x-ai-route"), Some("qwen"));
        assert!(
            h.metrics.get(&telemetry::stat_name(
                telemetry::HOST_ERRORS_TOTAL,
                &[("call", "set_filter_state")]
            )) >= Some(&1)
        );
    }

    #[test]
    fn spoofed_route_and_model_headers_are_dropped_from_every_request() {
        let vm = vm("");
        for (method, path, ct, body) in [
            ("GET", "/v1/chat/completions", "application/json", &b""[..]),
            ("POST", "/v1/chat/completions", "text/plain", b"hello"),
            ("POST", "/v1/chat/completions", "application/json", b"{\"messages\":[]}"),
            ("POST", "/api/orders", "application/json", b"{\"model\":\"x\"}"),
        ] {
            let mut h = request(
                method,
                path,
                &[
                    ("content-type", ct),
                    ("x-ai-route", "llama-canary"),
                    ("x-ai-model", "private"),
                ],
                body,
            );
            let mut s = Stream::new(1);
            send(&vm, &mut h, &mut s);
            assert_eq!(h.header(Map::Request, "x-ai-route"), None, "{method} {path} {ct}");
            assert_eq!(h.header(Map::Request, "x-ai-model"), None);
        }
    }

    #[test]
    fn held_body_routing_sets_the_route_and_says_so() {
        let vm = vm("");
        let body = br#"{"model":"qwen","messages":[]}"#;
        let mut h = request(
            "POST",
            "/v1/chat/completions",
            &[("accept-encoding", "gzip, deflate")],
            body,
        );
        let mut s = Stream::new(1);
        assert_eq!(s.on_request_headers(&vm, &mut h, false), Action::Pause);
        assert_eq!(
            h.header(Map::Request, "accept-encoding"),
            None,
            "an uncompressed answer is asked for"
        );
        assert_eq!(s.on_request_body(&vm, &mut h, body.len(), true), Action::Continue);
        assert_eq!(h.header(Map::Request, "x-ai-route"), Some("qwen"));
        assert_eq!(h.route_cache_cleared, 1);
        assert_eq!(vm.hold_state(), State::Proven);
        respond(
            &vm,
            &mut h,
            &mut s,
            &ok_json(),
            &[br#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#],
            true,
        );
        assert_eq!(h.header(Map::Response, ROUTE_RESPONSE_HEADER), Some("qwen"));
        assert_eq!(
            h.filter_state.get(FS_DESTINATION).map(Vec::as_slice),
            Some(&b"qwen"[..])
        );
        assert_eq!(
            h.metric(
                REQUESTS_TOTAL,
                &[("model", "qwen"), ("destination", "qwen"), ("code_class", "2xx")]
            ),
            1
        );
        assert_eq!(
            h.metric(
                USAGE_MISSING_TOTAL,
                &[("model", "qwen"), ("destination", "qwen"), ("reason", "absent")]
            ),
            0
        );
    }

    #[test]
    fn without_body_routing_nothing_claims_a_destination() {
        let vm = vm(r#""bodyRouting": false,"#);
        for body in [&br#"{"model":"llama-3-8b"}"#[..], br#"{"model":"qwen"}"#] {
            let mut h = request("POST", "/v1/chat/completions", &[], body);
            let mut s = Stream::new(1);
            assert!(send(&vm, &mut h, &mut s));
            assert_eq!(h.header(Map::Request, "x-ai-route"), None);
            respond(&vm, &mut h, &mut s, &ok_json(), &[b"{}"], true);
            assert_eq!(h.header(Map::Response, ROUTE_RESPONSE_HEADER), None);
            assert_eq!(
                h.filter_state.get(FS_DESTINATION).map(Vec::as_slice),
                Some(&b"unrouted"[..])
            );
            assert!(
                h.metrics
                    .keys()
                    .all(|k| !k.contains("canary") && !k.contains("destination=.=qwen")),
                "{:?}",
                h.metrics
            );
        }
        // A model in the path is still routed from the headers.
        let mut h = request("POST", "/v2/models/resnet/infer", &[], b"{}");
        let mut s = Stream::new(1);
        send(&vm, &mut h, &mut s);
        assert_eq!(h.header(Map::Request, "x-ai-route"), Some("triton"));
    }

    #[test]
    fn bad_bodies_are_refused_before_anything_goes_upstream() {
        let vm = vm(r#""onMissingModel": "reject","#);
        for (body, status, code) in [
            (
                &br#"{"model":"llama-3-8b","messages":[],"model":"resnet"}"#[..],
                400,
                "duplicate_model",
            ),
            (br#"{"model": "llama-3-8b", "messages": ["#, 400, "invalid_json"),
            (br#"{"model":"llama-3-8b"} trailing"#, 400, "invalid_json"),
            (b"", 400, "model_required"),
        ] {
            let mut h = request(
                "POST",
                "/v1/chat/completions",
                &[("content-type", "application/json")],
                body,
            );
            let mut s = Stream::new(1);
            assert!(!send(&vm, &mut h, &mut s), "{}", String::from_utf8_lossy(body));
            let reply = h.reply.clone().unwrap();
            assert_eq!(reply.status, status);
            let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(v["error"]["code"], code);
            assert_eq!(h.header(Map::Request, "x-ai-route"), None);
            s.on_log(&vm, &mut h);
            assert_eq!(h.metric(REJECTED_TOTAL, &[("model", "other"), ("reason", code)]), 1);
        }
    }

    #[test]
    fn admission_answers_403_and_limits_charge_on_every_ending() {
        let vm = vm("");
        let body = br#"{"model":"private"}"#;
        let mut h = request("POST", "/v1/chat/completions", &[], body);
        let mut s = Stream::new(1);
        assert!(!send(&vm, &mut h, &mut s));
        assert_eq!(h.reply.as_ref().map(|r| r.status), Some(403));
        let mut h = request("POST", "/v1/chat/completions", &[], body);
        h.properties.insert(
            "connection.uri_san_peer_certificate".into(),
            b"spiffe://td/ns/a/sa/web".to_vec(),
        );
        assert!(send(&vm, &mut h, &mut Stream::new(2)));

        // A stream that declined usage: the filter asked for it anyway; the client then
        // disconnects before the end: charged max_tokens (plus input estimated from the body).
        let body = br#"{"model":"metered","stream":true,"stream_options":{"include_usage":false},"max_tokens":300}"#;
        let mut h = request("POST", "/v1/chat/completions", &[], body);
        let mut s = Stream::new(3);
        assert!(send(&vm, &mut h, &mut s));
        let forced: serde_json::Value = serde_json::from_slice(&h.request_body).unwrap();
        assert_eq!(forced["stream_options"]["include_usage"], true);
        let sse = [(":status", "200"), ("content-type", "text/event-stream")];
        respond(
            &vm,
            &mut h,
            &mut s,
            &sse,
            &[b"data: {\"choices\":[{\"delta\":{}}]}\n\n"],
            false,
        );
        let labels = [
            ("model", "metered"),
            ("destination", "metered"),
            ("reason", "incomplete"),
        ];
        assert_eq!(h.metric(USAGE_MISSING_TOTAL, &labels), 1);
        let shared = h.shared.clone();
        let bucket_level = |shared: &crate::memory_host::SharedMem| {
            let (k, _) = shared_key(shared);
            let (v, _) = shared.get(&k);
            f64::from_le_bytes(v.unwrap()[..8].try_into().unwrap())
        };
        let charged = 1000.0 - bucket_level(&shared);
        let input_estimate = (body.len() as f64 / 4.0).ceil();
        assert!((charged - (300.0 + input_estimate)).abs() < 1.0, "charged {charged}");

        // A complete stream with usage: exactly what was reported.
        let body = br#"{"model":"metered","stream":true}"#;
        let mut h2 = request("POST", "/v1/chat/completions", &[], body);
        h2.shared = shared;
        let mut s = Stream::new(4);
        assert!(send(&vm, &mut h2, &mut s));
        let before = bucket_level(&h2.shared);
        respond(
            &vm,
            &mut h2,
            &mut s,
            &sse,
            &[b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":5}}\n\ndata: [DONE]\n\n"],
            true,
        );
        assert!((before - bucket_level(&h2.shared) - 12.0).abs() < 0.5);

        // 429 once the bucket is empty.
        let mut h3 = request("POST", "/v1/chat/completions", &[], br#"{"model":"metered"}"#);
        h3.shared = h2.shared.clone();
        let mut s = Stream::new(5);
        assert!(send(&vm, &mut h3, &mut s));
        respond(
            &vm,
            &mut h3,
            &mut s,
            &ok_json(),
            &[br#"{"usage":{"prompt_tokens":900,"completion_tokens":900}}"#],
            true,
        );
        let mut h4 = request("POST", "/v1/chat/completions", &[], br#"{"model":"metered"}"#);
        h4.shared = h3.shared.clone();
        assert!(!send(&vm, &mut h4, &mut Stream::new(6)));
        assert_eq!(h4.reply.as_ref().map(|r| r.status), Some(429));
    }

    /// A request for `private` (allowed: `spiffe://td/ns/a/*`) in a proxy described by `props`.
    fn private_in(vm: &Vm, props: &[(&str, &[u8])], headers: &[(&str, &str)]) -> (MemoryHost, Stream) {
        let mut h = request("POST", "/v1/chat/completions", headers, br#"{"model":"private"}"#);
        for (k, v) in props {
            h.properties.insert(k.to_string(), v.to_vec());
        }
        let mut s = Stream::new(1);
        send(vm, &mut h, &mut s);
        (h, s)
    }

    const OUTBOUND: &[u8] = &2i64.to_le_bytes();
    const INBOUND: &[u8] = &1i64.to_le_bytes();

    #[test]
    fn a_sidecars_outbound_caller_is_its_own_workload() {
        let vm = vm(r#""trustDomain":"td","identityHeader":"x-caller","#);
        let sidecar = |ns: &'static [u8], dir: &'static [u8]| -> Vec<(&'static str, &'static [u8])> {
            vec![
                ("xds.node.id", b"sidecar~10.0.0.1~web-1.a~a.svc.cluster.local"),
                ("xds.node.metadata.NAMESPACE", ns),
                ("xds.node.metadata.SERVICE_ACCOUNT", b"web"),
                ("xds.listener_direction", dir),
            ]
        };
        // Plaintext from the app, no peer certificate: the sidecar's own workload is the caller.
        let (h, s) = private_in(&vm, &sidecar(b"a", OUTBOUND), &[]);
        assert!(h.reply.is_none(), "admitted: {:?}", h.reply);
        assert_eq!(s.caller(), Some((Some("spiffe://td/ns/a/sa/web"), Source::Workload)));
        // Another namespace's workload is refused, whatever header it sends.
        let vm_b = vm_fresh(&vm);
        let (h, s) = private_in(
            &vm_b,
            &sidecar(b"b", OUTBOUND),
            &[("x-caller", "spiffe://td/ns/a/sa/web")],
        );
        assert_eq!(h.reply.as_ref().map(|r| r.status), Some(403));
        assert_eq!(s.caller(), Some((Some("spiffe://td/ns/b/sa/web"), Source::Workload)));
        // Inbound, the workload is the callee: the peer's certificate names the caller.
        let vm_c = vm_fresh(&vm);
        let mut props = sidecar(b"a", INBOUND);
        let (h, _) = private_in(&vm_c, &props, &[]);
        assert_eq!(
            h.reply.as_ref().map(|r| r.status),
            Some(403),
            "no certificate, no identity"
        );
        props.push(("connection.uri_san_peer_certificate", b"spiffe://td/ns/a/sa/api"));
        let (h, s) = private_in(&vm_c, &props, &[]);
        assert!(h.reply.is_none());
        assert_eq!(
            s.caller(),
            Some((Some("spiffe://td/ns/a/sa/api"), Source::PeerCertificate))
        );
    }

    #[test]
    fn older_envoys_top_level_node_attributes_are_read_too() {
        let legacy: Vec<(&str, &[u8])> = vec![
            ("node.id", b"sidecar~10.0.0.1~web-1.a~a.svc.cluster.local"),
            ("node.metadata.NAMESPACE", b"a"),
            ("node.metadata.SERVICE_ACCOUNT", b"web"),
            ("listener_direction", OUTBOUND),
        ];
        let (h, s) = private_in(&vm_default(), &legacy, &[]);
        assert!(h.reply.is_none(), "{:?}", h.reply);
        assert_eq!(s.caller(), Some((Some("spiffe://td/ns/a/sa/web"), Source::Workload)));
    }

    /// The same configuration in a new VM (the node is read once per VM).
    fn vm_fresh(vm: &Vm) -> Vm {
        Vm::new(vm.config.clone(), 42)
    }

    #[test]
    fn a_gateway_never_lends_its_own_identity() {
        let gateway: Vec<(&str, &[u8])> = vec![
            ("xds.node.id", b"router~10.0.0.2~gw-1.a~a.svc.cluster.local"),
            ("xds.node.metadata.NAMESPACE", b"a"),
            ("xds.node.metadata.SERVICE_ACCOUNT", b"gw"),
            ("xds.listener_direction", OUTBOUND),
        ];
        for extra in ["", r#""identitySource":"workload","#] {
            let vm = vm(&format!(r#"{extra}"trustDomain":"td","#));
            let (h, s) = private_in(&vm, &gateway, &[]);
            assert_eq!(h.reply.as_ref().map(|r| r.status), Some(403), "{extra}");
            assert_eq!(s.caller().and_then(|(p, _)| p), None, "{extra}");
        }
        let vm = vm(r#""identitySource":"workload","trustDomain":"td","#);
        let (h, s) = private_in(&vm, &gateway, &[]);
        assert_eq!(s.caller(), Some((None, Source::Refused)));
        assert!(h.logs.iter().any(|(_, m)| m.contains("never lends")), "{:?}", h.logs);
        // With client mTLS, the caller's certificate.
        let mut with_cert = gateway.clone();
        with_cert.push(("connection.uri_san_peer_certificate", b"spiffe://td/ns/a/sa/partner"));
        let (h, s) = private_in(&vm_fresh(&vm_default()), &with_cert, &[]);
        assert!(h.reply.is_none());
        assert_eq!(
            s.caller(),
            Some((Some("spiffe://td/ns/a/sa/partner"), Source::PeerCertificate))
        );
    }

    fn vm_default() -> Vm {
        vm(r#""trustDomain":"td","#)
    }

    #[test]
    fn a_waypoint_reads_istios_peer_principal_and_headers_only_where_configured() {
        let waypoint: Vec<(&str, &[u8])> = vec![
            ("xds.node.id", b"waypoint~10.0.0.3~waypoint-1.a~a.svc.cluster.local"),
            ("filter_state.io.istio.peer_principal", b"td/ns/a/sa/web"),
        ];
        let (h, s) = private_in(&vm_default(), &waypoint, &[]);
        assert!(h.reply.is_none());
        assert_eq!(
            s.caller(),
            Some((Some("spiffe://td/ns/a/sa/web"), Source::PeerPrincipal))
        );
        // A header names nobody unless configured, and then only as the configured source says.
        let (h, _) = private_in(&vm_default(), &[], &[("x-caller", "spiffe://td/ns/a/sa/web")]);
        assert_eq!(h.reply.as_ref().map(|r| r.status), Some(403));
        let header_only = vm(r#""identitySource":"header","identityHeader":"x-caller","#);
        let (h, s) = private_in(&header_only, &waypoint[..1], &[("x-caller", "spiffe://td/ns/a/sa/web")]);
        assert!(h.reply.is_none());
        assert_eq!(s.caller(), Some((Some("spiffe://td/ns/a/sa/web"), Source::Header)));
    }

    #[test]
    fn refusals_keep_their_model_in_metrics_and_the_access_log() {
        let vm = vm("");
        let (mut h, mut s) = private_in(&vm, &[], &[]);
        assert_eq!(h.reply.as_ref().map(|r| r.status), Some(403));
        s.on_log(&vm, &mut h);
        assert_eq!(
            h.metric(
                REJECTED_TOTAL,
                &[("model", "private"), ("reason", "model_access_denied")]
            ),
            1
        );
        let labels = [("model", "private"), ("destination", "none"), ("code_class", "4xx")];
        assert_eq!(h.metric(REQUESTS_TOTAL, &labels), 1);
        assert_eq!(h.filter_state.get(FS_MODEL).map(Vec::as_slice), Some(&b"private"[..]));
        assert_eq!(
            h.filter_state.get(FS_DESTINATION).map(Vec::as_slice),
            Some(&b"none"[..])
        );
        // An unknown name stays `other`.
        let mut h = request("POST", "/v1/chat/completions", &[], br#"{"model":"nope"}"#);
        let mut s = Stream::new(2);
        send(&vm, &mut h, &mut s);
        s.on_log(&vm, &mut h);
        assert_eq!(
            h.metric(REJECTED_TOTAL, &[("model", "other"), ("reason", "model_not_found")]),
            1
        );
    }

    #[test]
    fn with_access_rules_what_cannot_be_judged_is_refused_by_default() {
        let guarded = vm(r#""maxBodyBytes":64,"#);
        assert_eq!(guarded.config.on_missing_model, crate::config::Policy::Reject);
        let padded = format!(r#"{{"model":"private","pad":"{}"}}"#, "x".repeat(100));
        for (body, status) in [
            (&br#"{"model":null,"messages":[]}"#[..], 400),
            (br#"{"Model":"private"}"#, 400),
            (br#"{"model":["private"]}"#, 400),
            (br#"{"messages":[]}"#, 400),
            (padded.as_bytes(), 413),
        ] {
            let mut h = request("POST", "/v1/chat/completions", &[], body);
            assert!(
                !send(&guarded, &mut h, &mut Stream::new(1)),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(
                h.reply.as_ref().map(|r| r.status),
                Some(status),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Without any model policy, the defaults let them through unrouted (as before).
        let open = Vm::new(
            Config::from_json(br#"{"maxBodyBytes":64,"models":[{"name":"m","destinations":[{"name":"d"}]}]}"#).unwrap(),
            1,
        );
        let mut h = request("POST", "/v1/chat/completions", &[], br#"{"model":null}"#);
        assert!(send(&open, &mut h, &mut Stream::new(1)));
        let mut h = request("POST", "/v1/chat/completions", &[], padded.as_bytes());
        assert!(send(&open, &mut h, &mut Stream::new(2)));
        // An explicit passthrough stays possible (and `wasmpack check` warns about it).
        let explicit = vm(r#""onMissingModel":"passthrough","#);
        let mut h = request("POST", "/v1/chat/completions", &[], br#"{"model":null}"#);
        assert!(send(&explicit, &mut h, &mut Stream::new(1)));
    }

    fn shared_key(s: &crate::memory_host::SharedMem) -> (String, ()) {
        (s.keys().into_iter().find(|k| k.ends_with("/t")).unwrap_or_default(), ())
    }

    #[test]
    fn compressed_answers_are_counted_as_missing_never_as_zero() {
        let vm = vm("");
        let mut h = request(
            "POST",
            "/v1/chat/completions",
            &[("accept-encoding", "gzip")],
            br#"{"model":"qwen"}"#,
        );
        let mut s = Stream::new(1);
        assert!(send(&vm, &mut h, &mut s));
        let headers = [
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ];
        respond(&vm, &mut h, &mut s, &headers, &[b"\x1f\x8b\x08\x00junk"], true);
        assert_eq!(
            h.metric(
                USAGE_MISSING_TOTAL,
                &[("model", "qwen"), ("destination", "qwen"), ("reason", "encoded")]
            ),
            1
        );
        assert!(h.metrics.keys().all(|k| !k.ends_with("model_router_tokens_total")));
    }

    #[test]
    fn the_safety_net_lets_go_and_only_consecutive_failures_switch_holding_off() {
        // No access rules or limits: a request let go continues, unrouted.
        let vm = Vm::new(
            Config::from_json(br#"{"models":[{"name":"qwen","destinations":[{"name":"qwen"}]}]}"#).unwrap(),
            1,
        );
        let mut h = request("POST", "/v1/chat/completions", &[], br#"{"model":"qwen"}"#);
        let mut streams: Vec<Stream> = (1..=3).map(Stream::new).collect();
        for s in streams.iter_mut().take(2) {
            assert_eq!(s.on_request_headers(&vm, &mut h, false), Action::Pause);
        }
        assert_eq!(h.tick_ms, crate::hold::TICK_MS);
        h.now_ns += HOLD_TIMEOUT_NS + 1;
        vm.on_tick(&mut h);
        assert_eq!(h.resumed, vec![1, 2]);
        assert_eq!(vm.hold_state(), State::Unknown { failures: 2 });
        // The released stream's body comes later: too late to route; it goes on unrouted.
        let len = h.request_body.len();
        assert_eq!(streams[0].on_request_body(&vm, &mut h, len, true), Action::Continue);
        assert_eq!(
            streams[0].flow().outcome(),
            &Outcome::Unread(crate::request::Unread::HoldReleased)
        );
        // A third in a row switches holding off; requests then go on at once, unrouted.
        assert_eq!(streams[2].on_request_headers(&vm, &mut h, false), Action::Pause);
        h.now_ns += HOLD_TIMEOUT_NS + 1;
        vm.on_tick(&mut h);
        assert!(matches!(vm.hold_state(), State::Off { .. }));
        assert_eq!(h.tick_ms, 0, "timer stopped");
        let mut s = Stream::new(4);
        assert_eq!(s.on_request_headers(&vm, &mut h, false), Action::Continue);
        assert_eq!(h.metric(crate::telemetry::HOLD_RELEASED_TOTAL, &[]), 3);
    }

    #[test]
    fn a_body_that_ends_with_trailers_is_decided_before_anything_goes_on() {
        let vm = vm(r#""onMissingModel": "reject","#);
        // Headers, the body without an end, then trailers: the decision is made at the trailers.
        let trailed = |body: &[u8]| {
            let mut h = request("POST", "/v1/chat/completions", &[], body);
            let mut s = Stream::new(3);
            assert_eq!(s.on_request_headers(&vm, &mut h, false), Action::Pause);
            if !body.is_empty() {
                assert_eq!(s.on_request_body(&vm, &mut h, body.len(), false), Action::Pause);
            }
            let a = s.on_request_trailers(&vm, &mut h);
            (h, s, a)
        };
        // A model the caller may not use is refused, never passed on undecided.
        let (h, s, a) = trailed(br#"{"model":"private","messages":[]}"#);
        assert_eq!(a, Action::Pause);
        let reply = h.reply.clone().unwrap();
        assert_eq!(reply.status, 403, "{}", String::from_utf8_lossy(&reply.body));
        assert_eq!(
            s.flow().outcome(),
            &Outcome::Denied {
                model: 3,
                reason: RejectReason::ModelAccessDenied
            }
        );
        assert_eq!(h.header(Map::Request, "x-ai-route"), None);
        // No body at all, only trailers: no model.
        let (h, _, a) = trailed(b"");
        assert_eq!(a, Action::Pause);
        assert_eq!(h.reply.clone().unwrap().status, 400);
        // A model it may use is routed.
        let (mut h, mut s, a) = trailed(br#"{"model":"qwen","messages":[]}"#);
        assert_eq!(a, Action::Continue);
        assert!(h.reply.is_none());
        assert_eq!(h.header(Map::Request, "x-ai-route"), Some("qwen"));
        assert_eq!(h.route_cache_cleared, 1);
        // The answer's trailers end its body too: the usage is final before the log.
        h.response_headers = vec![
            (":status".into(), "200".into()),
            ("content-type".into(), "text/event-stream".into()),
        ];
        assert_eq!(s.on_response_headers(&vm, &mut h, false), Action::Continue);
        let events = b"data: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\n";
        h.response_body = events.to_vec();
        assert_eq!(s.on_response_body(&vm, &mut h, events.len(), false), Action::Continue);
        assert_eq!(h.filter_state.get(FS_OUTPUT_TOKENS), None);
        assert_eq!(s.on_response_trailers(&vm, &mut h), Action::Continue);
        assert_eq!(h.filter_state.get(FS_OUTPUT_TOKENS).map(Vec::as_slice), Some(&b"7"[..]));
        s.on_log(&vm, &mut h);
        assert_eq!(
            h.metric(
                crate::telemetry::TOKENS_TOTAL,
                &[("model", "qwen"), ("destination", "qwen"), ("type", "input")]
            ),
            5
        );
    }

    #[test]
    fn with_access_rules_a_body_that_never_comes_is_refused_not_let_through() {
        let vm = vm("");
        let mut h = request("POST", "/v1/chat/completions", &[], br#"{"model":"private"}"#);
        let mut s = Stream::new(7);
        assert_eq!(s.on_request_headers(&vm, &mut h, false), Action::Pause);
        h.now_ns += HOLD_TIMEOUT_NS + 1;
        vm.on_tick(&mut h);
        assert!(h.resumed.is_empty());
        let reply = h.reply.clone().unwrap();
        assert_eq!(reply.status, 503);
        assert!(reply.headers.contains(&("retry-after".into(), "1".into())));
        s.on_log(&vm, &mut h);
        assert_eq!(s.flow().outcome(), &Outcome::Rejected(RejectReason::BodyNotReceived));
    }

    #[test]
    fn the_models_list_comes_from_the_configuration_and_the_callers_rights() {
        let vm = vm(r#""serveModelList": true, "identityHeader": "x-client-id","#);
        let ids = |h: &MemoryHost| -> Vec<String> {
            let r = h.reply.clone().unwrap();
            assert_eq!(r.status, 200);
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect()
        };
        let mut h = request("GET", "/v1/models", &[], b"");
        assert_eq!(Stream::new(1).on_request_headers(&vm, &mut h, true), Action::Pause);
        assert_eq!(ids(&h), ["llama-3-8b", "gpt-3.5-turbo", "qwen", "resnet", "metered"]);
        let mut h = request("GET", "/v1/models", &[("x-client-id", "spiffe://td/ns/a/sa/x")], b"");
        Stream::new(1).on_request_headers(&vm, &mut h, true);
        assert!(ids(&h).contains(&"private".to_string()));
        let mut h = request("GET", "/v1/models/private", &[], b"");
        Stream::new(1).on_request_headers(&vm, &mut h, true);
        assert_eq!(h.reply.as_ref().map(|r| r.status), Some(404));
        // Off: the request goes on to the backend as before.
        let off = vm_plain();
        let mut h = request("GET", "/v1/models", &[], b"");
        assert_eq!(Stream::new(1).on_request_headers(&off, &mut h, true), Action::Continue);
        assert!(h.reply.is_none());
    }

    fn vm_plain() -> Vm {
        vm("")
    }

    #[test]
    fn decision_headers_follow_the_setting() {
        for (mode, route, model) in [
            ("none", None, None),
            ("route", Some("qwen"), None),
            ("route+model", Some("qwen"), Some("qwen")),
        ] {
            let vm = vm(&format!(r#""responseHeaders": "{mode}","#));
            let mut h = request("POST", "/v1/chat/completions", &[], br#"{"model":"qwen"}"#);
            let mut s = Stream::new(1);
            assert!(send(&vm, &mut h, &mut s));
            let mut headers = ok_json();
            headers.push(("x-ai-route", "echoed-by-backend"));
            respond(&vm, &mut h, &mut s, &headers, &[b"{}"], true);
            assert_eq!(h.header(Map::Response, ROUTE_RESPONSE_HEADER), route, "{mode}");
            assert_eq!(h.header(Map::Response, MODEL_RESPONSE_HEADER), model, "{mode}");
            // The decision is still in the metrics and the access log.
            assert_eq!(
                h.filter_state.get(FS_DESTINATION).map(Vec::as_slice),
                Some(&b"qwen"[..])
            );
        }
    }

    #[test]
    fn the_clients_model_name_comes_back_in_json_and_streams() {
        let json = CFG.replace(
            r#""aliases": ["gpt-3.5-turbo"],"#,
            r#""aliases": ["gpt-3.5-turbo"], "upstreamModel": "meta-llama/Llama-3.1-8B-Instruct","#,
        );
        let json = json.replacen('{', r#"{"restoreModelName": true,"#, 1);
        let vm = Vm::new(Config::from_json(json.as_bytes()).unwrap(), 1);
        let mut h = request("POST", "/v1/chat/completions", &[], br#"{"model":"gpt-3.5-turbo"}"#);
        let mut s = Stream::new(1);
        assert!(send(&vm, &mut h, &mut s));
        assert!(String::from_utf8_lossy(&h.request_body).contains("meta-llama/Llama-3.1-8B-Instruct"));
        let answer =
            br#"{"model":"meta-llama/Llama-3.1-8B-Instruct","usage":{"prompt_tokens":2,"completion_tokens":3}}"#;
        let mut headers = ok_json();
        headers.push(("content-length", "100"));
        h.response_headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        s.on_response_headers(&vm, &mut h, false);
        assert_eq!(h.header(Map::Response, "content-length"), None, "the length changes");
        h.response_body = answer.to_vec();
        s.on_response_body(&vm, &mut h, answer.len(), true);
        assert_eq!(
            String::from_utf8_lossy(&h.response_body),
            r#"{"model":"gpt-3.5-turbo","usage":{"prompt_tokens":2,"completion_tokens":3}}"#
        );
        s.on_log(&vm, &mut h);
        assert_eq!(
            h.metric(
                crate::telemetry::TOKENS_TOTAL,
                &[
                    ("model", "llama-3-8b"),
                    ("destination", "llama-stable"),
                    ("type", "output")
                ]
            ) + h.metric(
                crate::telemetry::TOKENS_TOTAL,
                &[
                    ("model", "llama-3-8b"),
                    ("destination", "llama-canary"),
                    ("type", "output")
                ]
            ),
            3,
            "usage still read from what the backend sent"
        );

        // A stream, in two chunks cutting an event.
        let mut h = request(
            "POST",
            "/v1/chat/completions",
            &[],
            br#"{"model":"gpt-3.5-turbo","stream":true}"#,
        );
        let mut s = Stream::new(2);
        assert!(send(&vm, &mut h, &mut s));
        h.response_headers = vec![
            (":status".into(), "200".into()),
            ("content-type".into(), "text/event-stream".into()),
        ];
        s.on_response_headers(&vm, &mut h, false);
        let mut seen = Vec::new();
        for (chunk, eos) in [
            (
                &b"data: {\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"choices\":[]}\n\ndata: {\"model\":\"meta-ll"
                    [..],
                false,
            ),
            (b"ama/Llama-3.1-8B-Instruct\"}\n\ndata: [DONE]\n\n", true),
        ] {
            h.response_body = chunk.to_vec();
            s.on_response_body(&vm, &mut h, chunk.len(), eos);
            seen.extend_from_slice(&h.response_body);
        }
        assert_eq!(
            String::from_utf8_lossy(&seen),
            "data: {\"model\":\"gpt-3.5-turbo\",\"choices\":[]}\n\ndata: {\"model\":\"gpt-3.5-turbo\"}\n\ndata: [DONE]\n\n"
        );
    }

    #[test]
    fn on_a_waypoint_the_identity_comes_from_istios_filter_state() {
        let vm = vm("");
        let body = br#"{"model":"private"}"#;
        for (state, allowed) in [
            (Some(&b"spiffe://td/ns/a/sa/web"[..]), true),
            (Some(b"td/ns/a/sa/web"), true),
            (Some(b"spiffe://td/ns/b/sa/x"), false),
            (None, false),
        ] {
            let mut h = request("POST", "/v1/chat/completions", &[], body);
            if let Some(v) = state {
                h.properties
                    .insert(format!("filter_state.{PEER_PRINCIPAL_STATE}"), v.to_vec());
            }
            assert_eq!(send(&vm, &mut h, &mut Stream::new(1)), allowed, "{state:?}");
        }
        // The certificate, when there is one, wins.
        let mut h = request("POST", "/v1/chat/completions", &[], body);
        h.properties.insert(
            "connection.uri_san_peer_certificate".into(),
            b"spiffe://td/ns/b/sa/x".to_vec(),
        );
        h.properties.insert(
            format!("filter_state.{PEER_PRINCIPAL_STATE}"),
            b"spiffe://td/ns/a/sa/web".to_vec(),
        );
        assert!(!send(&vm, &mut h, &mut Stream::new(1)));
    }

    #[test]
    fn the_inference_pool_header_is_the_filters_only() {
        for (mode, want) in [("canonical", Some("llama-3-8b")), ("none", None)] {
            let vm = vm(&format!(r#""inferenceModelHeader": "{mode}","#));
            let mut h = request(
                "POST",
                "/v1/chat/completions",
                &[("x-gateway-model-name", "spoofed")],
                br#"{"model":"gpt-3.5-turbo"}"#,
            );
            assert!(send(&vm, &mut h, &mut Stream::new(1)));
            let got = h.header(Map::Request, "x-gateway-model-name");
            match want {
                Some(w) => assert_eq!(got, Some(w)),
                // Off: the filter neither sets nor touches it.
                None => assert_eq!(got, Some("spoofed")),
            }
        }
    }

    /// A configuration with global limits on `team-model` (requests and tokens, per caller).
    fn global_vm(failure_mode: &str) -> Vm {
        let json = format!(
            r#"{{"rateLimitService": {{"cluster": "outbound|8081||limitador.rl.svc.cluster.local",
                 "timeout": "150ms", "failureMode": "{failure_mode}"}},
                "models": [{{"name": "team-model", "aliases": ["tm"],
                 "limits": {{"requestsPerMinute": 20, "tokensPerMinute": 1000, "mode": "global"}},
                 "destinations": [{{"name": "tm"}}]}}]}}"#
        );
        Vm::new(Config::from_json(json.as_bytes()).unwrap(), 42)
    }

    fn rls_answer(code: u64) -> Vec<u8> {
        let mut m = Vec::new();
        crate::proto::put_uint(&mut m, 1, code);
        m
    }

    /// The descriptor entries and hits of a call the filter made.
    fn described(msg: &[u8]) -> (Vec<(String, String)>, u64) {
        rls::describe(msg).unwrap()
    }

    fn descriptor(msg: &[u8]) -> Vec<(String, String)> {
        described(msg).0
    }

    const TEAM_MODEL: &[u8] = br#"{"model":"team-model"}"#;

    /// A `team-model` request (stream `id`) sent whole: it has asked the rate limit service.
    fn sent_to_the_service(vm: &Vm, id: u32) -> (MemoryHost, Stream) {
        let mut h = request("POST", "/v1/chat/completions", &[], TEAM_MODEL);
        let mut s = Stream::new(id);
        s.on_request_headers(vm, &mut h, false);
        s.on_request_body(vm, &mut h, TEAM_MODEL.len(), true);
        (h, s)
    }

    #[test]
    fn a_global_limit_asks_the_service_and_waits_for_both_answers() {
        let vm = global_vm("allow");
        let body = br#"{"model":"tm","messages":[]}"#;
        let mut h = request("POST", "/v1/chat/completions", &[], body);
        h.properties.insert(
            "connection.uri_san_peer_certificate".into(),
            b"spiffe://td/ns/a/sa/team-a".to_vec(),
        );
        let mut s = Stream::new(7);
        assert_eq!(s.on_request_headers(&vm, &mut h, false), Action::Pause);
        // Body routing: the decision is made at the end of the body, which then waits.
        assert_eq!(s.on_request_body(&vm, &mut h, body.len(), true), Action::Pause);
        assert_eq!(h.grpc_calls.len(), 2, "ShouldRateLimit and CheckRateLimit, at once");
        let (t1, req) = h.grpc_calls[0].clone();
        let (t2, tok) = h.grpc_calls[1].clone();
        assert_eq!(
            (req.service_name.as_str(), req.method.as_str()),
            (rls::RLS_SERVICE, "ShouldRateLimit")
        );
        assert_eq!(
            (tok.service_name.as_str(), tok.method.as_str()),
            (rls::KUADRANT_SERVICE, "CheckRateLimit")
        );
        assert_eq!(req.timeout_ms, 150);
        assert!(!req.detached);
        assert_eq!(
            descriptor(&req.message),
            vec![
                ("model".to_string(), "team-model".to_string()),
                ("kind".to_string(), "requests".to_string()),
                ("caller".to_string(), "spiffe://td/ns/a/sa/team-a".to_string()),
            ]
        );
        assert_eq!(h.tick_ms, TICK_MS, "the tick backstops the host's timeout");
        // The route is already set; nothing is counted in flight until admitted.
        assert_eq!(h.header(Map::Request, "x-ai-route"), Some("tm"));
        assert!(h.metrics.keys().all(|k| !k.contains("in_flight")));
        s.on_grpc_answer(&vm, &mut h, t1, Ok(&rls_answer(1)));
        assert!(h.resumed.is_empty(), "one answer is not enough");
        // A body chunk while waiting would let the headers go: held.
        assert_eq!(s.on_request_body(&vm, &mut h, body.len(), true), Action::Pause);
        s.on_grpc_answer(&vm, &mut h, t2, Ok(&rls_answer(1)));
        assert_eq!(h.resumed, vec![7]);
        assert!(h.reply.is_none());
        // The answer is the backend's; its usage is reported to the service, detached.
        respond(
            &vm,
            &mut h,
            &mut s,
            &ok_json(),
            &[br#"{"usage":{"prompt_tokens":30,"completion_tokens":12}}"#],
            true,
        );
        let (_, report) = h.grpc_calls.last().unwrap().clone();
        assert_eq!(report.method, "Report");
        assert!(report.detached, "a Report outlives the request");
        let hits = Some(described(&report.message).1);
        assert_eq!(hits, Some(42));
        assert_eq!(descriptor(&report.message)[1].1, "tokens");
        assert!(vm.callouts.borrow().is_empty());
    }

    #[test]
    fn over_a_global_limit_is_a_429_and_failures_follow_the_failure_mode() {
        // Over the limit: 429 with retry-after from the service's reset, else a minute.
        let vm = global_vm("allow");
        let (mut h, mut s) = sent_to_the_service(&vm, 1);
        assert_eq!(descriptor(&h.grpc_calls[0].1.message)[2].1, "anonymous");
        let (t1, t2) = (h.grpc_calls[0].0, h.grpc_calls[1].0);
        s.on_grpc_answer(&vm, &mut h, t2, Ok(&rls_answer(1)));
        s.on_grpc_answer(&vm, &mut h, t1, Ok(&rls_answer(2)));
        let reply = h.reply.clone().expect("a 429");
        assert_eq!(reply.status, 429);
        assert!(reply.headers.contains(&("retry-after".into(), "60".into())));
        let text = String::from_utf8_lossy(&reply.body).to_string();
        assert!(
            text.contains("20 requests per minute (counted across all proxies)"),
            "{text}"
        );
        assert!(h.resumed.is_empty());
        s.on_log(&vm, &mut h);
        assert_eq!(h.grpc_calls.len(), 2, "nothing reported for a refused request");

        // The service fails (unavailable, timeout): allow lets it through, counted.
        let (mut h, mut s) = sent_to_the_service(&vm, 2);
        let (t1, t2) = (h.grpc_calls[0].0, h.grpc_calls[1].0);
        s.on_grpc_answer(&vm, &mut h, t1, Err(rls::GRPC_UNAVAILABLE));
        s.on_grpc_answer(&vm, &mut h, t2, Err(rls::GRPC_DEADLINE_EXCEEDED));
        assert!(h.reply.is_none());
        assert_eq!(h.resumed, vec![2]);
        let failures = telemetry::RATE_LIMIT_SERVICE_FAILURES_TOTAL;
        assert_eq!(
            h.metric(failures, &[("call", "requests"), ("reason", "unavailable")]),
            1
        );
        assert_eq!(h.metric(failures, &[("call", "tokens"), ("reason", "timeout")]), 1);

        // deny: the same failure is a 503, retryable.
        let vm = global_vm("deny");
        let (mut h, mut s) = sent_to_the_service(&vm, 3);
        let (t1, t2) = (h.grpc_calls[0].0, h.grpc_calls[1].0);
        s.on_grpc_answer(&vm, &mut h, t1, Ok(&rls_answer(1)));
        s.on_grpc_answer(&vm, &mut h, t2, Ok(b"\x12\x05"));
        let reply = h.reply.clone().expect("a 503");
        assert_eq!(reply.status, 503);
        assert!(String::from_utf8_lossy(&reply.body).contains("rate_limit_unavailable"));
        assert_eq!(
            h.metric(failures, &[("call", "tokens"), ("reason", "invalid_response")]),
            1
        );

        // A cluster the host does not know: decided at once, nothing waits.
        let mut h = request("POST", "/v1/chat/completions", &[], TEAM_MODEL);
        h.refuse_grpc = true;
        assert!(!send(&vm, &mut h, &mut Stream::new(4)));
        assert_eq!(h.reply.as_ref().map(|r| r.status), Some(503));
        assert_eq!(
            h.metric(failures, &[("call", "requests"), ("reason", "unreachable")]),
            1
        );
        assert!(vm.callouts.borrow().is_empty());
        let vm = global_vm("allow");
        let mut h = request("POST", "/v1/chat/completions", &[], TEAM_MODEL);
        h.refuse_grpc = true;
        assert!(send(&vm, &mut h, &mut Stream::new(5)));
    }

    #[test]
    fn the_vm_reports_its_memory_as_it_grows() {
        let vm = vm_plain();
        let mut total = 0i64;
        for (i, memory) in [1 << 20, 1 << 20, 3 << 20].into_iter().enumerate() {
            let mut h = request("POST", "/v1/chat/completions", &[], br#"{"model":"qwen"}"#);
            h.memory = memory;
            let mut s = Stream::new(i as u32 + 1);
            send(&vm, &mut h, &mut s);
            respond(&vm, &mut h, &mut s, &ok_json(), &[b"{}"], true);
            // Each host starts from zero; add up what this VM reported through it.
            total += h.metric(telemetry::VM_MEMORY_BYTES, &[]);
            assert_eq!(total, memory as i64, "after request {i}");
        }
    }

    #[test]
    fn a_failure_after_the_whole_timeout_is_a_timeout_whatever_the_status() {
        // Envoy reports its own deadline as UNAVAILABLE; a refused connection comes at once.
        let vm = global_vm("allow");
        let (mut h, mut s) = sent_to_the_service(&vm, 1);
        let (t1, t2) = (h.grpc_calls[0].0, h.grpc_calls[1].0);
        h.now_ns += 1_000_000;
        s.on_grpc_answer(&vm, &mut h, t1, Err(rls::GRPC_UNAVAILABLE));
        h.now_ns += 150_000_000;
        s.on_grpc_answer(&vm, &mut h, t2, Err(rls::GRPC_UNAVAILABLE));
        let failures = telemetry::RATE_LIMIT_SERVICE_FAILURES_TOTAL;
        assert_eq!(
            h.metric(failures, &[("call", "requests"), ("reason", "unavailable")]),
            1
        );
        assert_eq!(h.metric(failures, &[("call", "tokens"), ("reason", "timeout")]), 1);
    }

    #[test]
    fn no_request_waits_past_the_timeout_even_if_the_host_never_answers() {
        let vm = global_vm("deny");
        let mut h = request("POST", "/v1/chat/completions", &[], TEAM_MODEL);
        let mut s = Stream::new(9);
        s.on_request_headers(&vm, &mut h, false);
        assert_eq!(s.on_request_body(&vm, &mut h, TEAM_MODEL.len(), true), Action::Pause);
        h.now_ns += 150_000_000 + CALLOUT_GRACE_NS - 1;
        assert!(vm.on_tick(&mut h).is_empty());
        h.now_ns += 1;
        assert_eq!(vm.on_tick(&mut h), vec![9]);
        s.on_callout_expired(&vm, &mut h);
        assert_eq!(h.reply.as_ref().map(|r| r.status), Some(503));
        assert_eq!(
            h.metric(
                telemetry::RATE_LIMIT_SERVICE_FAILURES_TOTAL,
                &[("call", "tokens"), ("reason", "timeout")]
            ),
            1
        );
        // A late answer changes nothing; the tick stops once nothing waits.
        let late = h.grpc_calls[0].0;
        s.on_grpc_answer(&vm, &mut h, late, Ok(&rls_answer(1)));
        assert!(h.resumed.is_empty());
        h.now_ns += 1_000_000_000;
        vm.on_tick(&mut h);
        assert_eq!(h.tick_ms, 0);
    }

    #[test]
    fn a_disconnect_while_waiting_or_streaming_is_handled() {
        let vm = global_vm("allow");
        let body = br#"{"model":"team-model","stream":true,"max_tokens":50}"#;
        // The client leaves while the service thinks: nothing charged, nothing left waiting.
        let mut h = request("POST", "/v1/chat/completions", &[], body);
        let mut s = Stream::new(1);
        s.on_request_headers(&vm, &mut h, false);
        s.on_request_body(&vm, &mut h, body.len(), true);
        s.on_log(&vm, &mut h);
        assert!(vm.callouts.borrow().is_empty());
        assert_eq!(h.grpc_calls.len(), 2);
        // Admitted, then the client leaves mid-stream: the estimate is reported.
        let mut h = request("POST", "/v1/chat/completions", &[], body);
        let mut s = Stream::new(2);
        s.on_request_headers(&vm, &mut h, false);
        s.on_request_body(&vm, &mut h, body.len(), true);
        for (t, _) in h.grpc_calls.clone() {
            s.on_grpc_answer(&vm, &mut h, t, Ok(&rls_answer(1)));
        }
        let sse = [(":status", "200"), ("content-type", "text/event-stream")];
        respond(&vm, &mut h, &mut s, &sse, &[b"data: {\"choices\":[]}\n\n"], false);
        let (_, report) = h.grpc_calls.last().unwrap().clone();
        assert_eq!(report.method, "Report");
        let hits = Some(described(&report.message).1);
        let input = (body.len() as u64).div_ceil(4);
        assert_eq!(hits, Some(input + 50));
    }

    #[test]
    fn a_stream_cut_before_its_usage_is_charged_at_least_what_the_client_received() {
        // The client read 2000 deltas of an answer its `max_tokens` said would be 50 (the
        // backend ignored it), then left before the usage chunk: charged what it received.
        let vm = global_vm("allow");
        let body = br#"{"model":"team-model","stream":true,"max_tokens":50}"#;
        let mut h = request("POST", "/v1/chat/completions", &[], body);
        let mut s = Stream::new(1);
        s.on_request_headers(&vm, &mut h, false);
        s.on_request_body(&vm, &mut h, body.len(), true);
        for (t, _) in h.grpc_calls.clone() {
            s.on_grpc_answer(&vm, &mut h, t, Ok(&rls_answer(1)));
        }
        let delta = b"data: {\"choices\":[{\"delta\":{\"content\":\"tok\"}}],\"usage\":null}\n\n";
        let chunk = delta.repeat(100);
        let chunks = vec![&chunk[..]; 20];
        let sse = [(":status", "200"), ("content-type", "text/event-stream")];
        respond(&vm, &mut h, &mut s, &sse, &chunks, false);
        let (_, report) = h.grpc_calls.last().unwrap().clone();
        assert_eq!(report.method, "Report");
        let input = (body.len() as u64).div_ceil(4);
        assert_eq!(described(&report.message).1, input + 2000);
    }
}

#[cfg(test)]
mod crossings {
    //! How often a request crosses into the proxy (each host call is one, and in Envoy each costs
    //! about a microsecond): counted per call for the benchmark's requests, so a change that adds
    //! crossings shows here, in numbers, before any benchmark runs.
    use super::*;
    use crate::memory_host::MemoryHost;

    const CFG: &str = r#"{"models":[
      {"name":"llama-3-8b","aliases":["gpt-3.5-turbo"],"destinations":[{"name":"llama-v1","weight":90},{"name":"llama-v2","weight":10}]},
      {"name":"gpt-4o","destinations":[{"name":"openai"}]}]}"#;

    fn run(stream: bool, extra: &str) -> MemoryHost {
        let json = CFG.replacen('{', &format!("{{{extra}"), 1);
        let vm = Vm::new(Config::from_json(json.as_bytes()).unwrap(), 7);
        let body = format!(
            r#"{{"model":"gpt-3.5-turbo","stream":{stream},"messages":[{{"role":"user","content":"{}"}}]}}"#,
            "x".repeat(2000)
        );
        let mut h = MemoryHost::new();
        h.now_ns = 1_000_000_000;
        h.request_headers = [
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            (":authority", "llm.example.com"),
            ("content-type", "application/json"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        h.request_headers
            .push(("content-length".into(), body.len().to_string()));
        h.request_body = body.into_bytes();
        let mut s = Stream::new(1);
        s.on_request_headers(&vm, &mut h, false);
        let n = h.request_body.len();
        s.on_request_body(&vm, &mut h, n, true);
        let (ct, chunks): (&str, Vec<Vec<u8>>) = if stream {
            let mut c: Vec<Vec<u8>> = (0..8)
                .map(|i| {
                    format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"t{i}\"}}}}],\"usage\":null}}\n\n")
                        .into_bytes()
                })
                .collect();
            c.push(
                b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":8}}\n\ndata: [DONE]\n\n"
                    .to_vec(),
            );
            ("text/event-stream", c)
        } else {
            (
                "application/json",
                vec![br#"{"id":"x","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10}}"#.to_vec()],
            )
        };
        h.response_headers = vec![(":status".into(), "200".into()), ("content-type".into(), ct.into())];
        s.on_response_headers(&vm, &mut h, false);
        let last = chunks.len() - 1;
        for (i, c) in chunks.into_iter().enumerate() {
            let n = c.len();
            h.response_body = c;
            s.on_response_body(&vm, &mut h, n, i == last);
        }
        s.on_log(&vm, &mut h);
        h
    }

    #[test]
    fn crossings_per_request() {
        // (c) and (d) of the benchmark: 17 (2 header maps, 2 body reads, 3 header writes, the
        // route cache, 6 metric updates, the clock twice, the hold timer) and 27 (one body read
        // per SSE chunk, TTFT: a metric and the clock).
        for (stream, most) in [(false, 17), (true, 27)] {
            let h = run(stream, "");
            eprintln!("stream={stream}: {} crossings {:?}", h.crossings(), h.crossings_by_call);
            assert!(h.crossings() <= most, "stream={stream}: {} > {most}", h.crossings());
            assert!(!h.crossings_by_call.contains_key("set_filter_state"), "off by default");
            // The clock: start, end, and (streams) the first bytes for TTFT; not per chunk.
            assert_eq!(h.crossings_by_call["now_ns"], 2 + u64::from(stream));
            let on = run(stream, r#""filterState":true,"#);
            assert_eq!(on.crossings_by_call["set_filter_state"], 4);
        }
    }
}

#[cfg(test)]
mod failover_tests {
    use super::*;
    use crate::memory_host::{MemoryHost, SharedMem};
    use crate::telemetry::{DESTINATION_STATE, FAILOVERS_TOTAL, REJECTED_TOTAL};

    const CFG: &str = r#"{"filterState":true,"restoreModelName":true,
      "failover":{"consecutiveFailures":3,"probation":"10s","maxProbation":"40s"},
      "models":[
        {"name":"llama","destinations":[{"name":"stable","weight":90},{"name":"canary","weight":10}],
         "fallbacks":[{"model":"qwen"}]},
        {"name":"qwen","upstreamModel":"Qwen/Qwen2-7B","destinations":[{"name":"qwen-a"}]}
      ]}"#;

    struct World {
        vm: Vm,
        shared: SharedMem,
        now_ns: u64,
        metrics: std::collections::BTreeMap<String, i64>,
        next: u32,
    }

    /// What happened to one request.
    #[derive(Debug)]
    struct Sent {
        route: Option<String>,
        body: Vec<u8>,
        reply: Option<(u32, Vec<(String, String)>)>,
        client_body: Vec<u8>,
        failover: Option<String>,
    }

    impl World {
        fn new() -> World {
            World::with(CFG)
        }

        fn with(cfg: &str) -> World {
            World {
                vm: Vm::new(Config::from_json(cfg.as_bytes()).unwrap(), 1),
                shared: SharedMem::default(),
                now_ns: 1_000_000_000_000,
                metrics: Default::default(),
                next: 1,
            }
        }

        /// One chat request for `model`, answered by its destination with `status` (when it
        /// went upstream); `flags`: Envoy's response flags, with no response headers.
        fn send(&mut self, model: &str, random: u64, status: Option<u32>, flags: u64) -> Sent {
            self.send_after(model, random, status, flags, 0)
        }

        /// `send`, the response coming `wait_ms` after the request went upstream.
        fn send_after(&mut self, model: &str, random: u64, status: Option<u32>, flags: u64, wait_ms: u64) -> Sent {
            let body = format!(r#"{{"model":"{model}","messages":[]}}"#);
            let mut h = MemoryHost::new();
            h.now_ns = self.now_ns;
            h.shared = std::mem::take(&mut self.shared);
            h.metrics = std::mem::take(&mut self.metrics);
            h.request_headers = vec![
                (":method".into(), "POST".into()),
                (":path".into(), "/v1/chat/completions".into()),
                (":authority".into(), "llm".into()),
                ("content-length".into(), body.len().to_string()),
            ];
            h.request_body = body.into_bytes();
            self.vm.rng.set(random);
            let mut s = Stream::new(self.next);
            self.next += 1;
            let n = h.request_body.len();
            s.on_request_headers(&self.vm, &mut h, false);
            if h.reply.is_none() {
                s.on_request_body(&self.vm, &mut h, n, true);
            }
            let route = h.header(Map::Request, "x-ai-route").map(str::to_string);
            h.now_ns += wait_ms * 1_000_000;
            let sent_body = h.request_body.clone();
            let mut client_body = Vec::new();
            if h.reply.is_none() {
                match status {
                    Some(st) => {
                        h.response_headers = vec![
                            (":status".into(), st.to_string()),
                            ("content-type".into(), "application/json".into()),
                        ];
                        s.on_response_headers(&self.vm, &mut h, false);
                        h.response_body = br#"{"model":"Qwen/Qwen2-7B","usage":{"prompt_tokens":1}}"#.to_vec();
                        let len = h.response_body.len();
                        s.on_response_body(&self.vm, &mut h, len, true);
                        client_body = h.response_body.clone();
                    }
                    None => {
                        h.properties
                            .insert("response.flags".into(), flags.to_le_bytes().to_vec());
                    }
                }
            }
            s.on_log(&self.vm, &mut h);
            self.now_ns = h.now_ns;
            self.shared = std::mem::take(&mut h.shared);
            self.metrics = std::mem::take(&mut h.metrics);
            Sent {
                route,
                body: sent_body,
                reply: h.reply.map(|r| (r.status, r.headers)),
                client_body,
                failover: h
                    .filter_state
                    .get(FS_FAILOVER)
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
            }
        }

        fn metric(&self, name: &str, labels: &[(&str, &str)]) -> i64 {
            self.metrics
                .get(&telemetry::stat_name(name, labels))
                .copied()
                .unwrap_or(0)
        }

        fn state(&self, d: &str) -> i64 {
            self.metric(DESTINATION_STATE, &[("model", "llama"), ("destination", d)])
        }
    }

    /// A random value that the weighted choice maps to `stable` (point < 90 of 100) or `canary`.
    const TO_STABLE: u64 = 0;
    fn to_canary(w: &World) -> u64 {
        // The VM's xorshift output for a state is deterministic: search one that lands on canary.
        (1..10_000u64)
            .find(|&r| {
                w.vm.rng.set(r);
                w.vm.random() % 100 >= 90
            })
            .unwrap()
    }

    #[test]
    fn a_failing_destination_opens_at_its_threshold_then_is_tried_and_returns() {
        let mut w = World::new();
        let canary = to_canary(&w);
        for i in 0..3 {
            let s = w.send("llama", canary, Some(503), 0);
            assert_eq!(s.route.as_deref(), Some("canary"), "request {i}");
        }
        assert_eq!(w.state("canary"), 1, "open after 3 failures");
        // Its share now goes to stable; stable's own requests are unchanged.
        let s = w.send("llama", canary, Some(200), 0);
        assert_eq!(s.route.as_deref(), Some("stable"));
        assert_eq!(s.failover.as_deref(), Some("destination"));
        assert_eq!(
            w.send("llama", TO_STABLE, Some(200), 0).route.as_deref(),
            Some("stable")
        );
        assert_eq!(
            w.metric(FAILOVERS_TOTAL, &[("model", "llama"), ("reason", "destination")]),
            1
        );
        // Probation over: the next request that lands on it is a trial; it succeeds: closed.
        w.now_ns += 10_000_000_000;
        let s = w.send("llama", canary, Some(200), 0);
        assert_eq!(s.route.as_deref(), Some("canary"));
        assert_eq!(s.failover.as_deref(), Some("trial"));
        assert_eq!(w.state("canary"), 0);
        assert_eq!(w.send("llama", canary, Some(200), 0).route.as_deref(), Some("canary"));
    }

    #[test]
    fn late_first_bytes_count_as_failures() {
        let mut w = World::with(&CFG.replace(
            r#""maxProbation":"40s""#,
            r#""maxProbation":"40s","firstByteTimeout":"2s""#,
        ));
        let canary = to_canary(&w);
        w.send_after("llama", canary, Some(200), 0, 2_000);
        assert_eq!(w.state("canary"), 0);
        for _ in 0..3 {
            w.send_after("llama", canary, Some(200), 0, 2_001);
        }
        assert_eq!(w.state("canary"), 1, "three late answers open it");
        assert_eq!(
            w.metric(
                telemetry::DESTINATION_FAILURES_TOTAL,
                &[("model", "llama"), ("destination", "canary"), ("reason", "timeout")]
            ),
            3
        );
    }

    #[test]
    fn the_tick_counts_a_request_whose_first_byte_is_overdue_once_and_lets_it_go_on() {
        let mut w = World::with(&CFG.replace(
            r#""maxProbation":"40s""#,
            r#""maxProbation":"40s","firstByteTimeout":"2s""#,
        ));
        let canary = to_canary(&w);
        let mut h = MemoryHost::new();
        h.now_ns = w.now_ns;
        let body = br#"{"model":"llama","messages":[]}"#;
        let mut streams = Vec::new();
        for (id, random, route) in [
            (1, canary, "canary"),
            (2, canary, "canary"),
            (3, canary, "canary"),
            (4, TO_STABLE, "stable"),
        ] {
            h.request_headers = vec![
                (":method".into(), "POST".into()),
                (":path".into(), "/v1/chat/completions".into()),
                (":authority".into(), "llm".into()),
                ("content-length".into(), body.len().to_string()),
            ];
            h.request_body = body.to_vec();
            w.vm.rng.set(random);
            let mut s = Stream::new(id);
            s.on_request_headers(&w.vm, &mut h, false);
            assert_eq!(s.on_request_body(&w.vm, &mut h, body.len(), true), Action::Continue);
            assert_eq!(h.header(Map::Request, "x-ai-route"), Some(route));
            streams.push(s);
        }
        assert_eq!(h.tick_ms, TICK_MS, "awaiting first bytes keeps the timer on");
        let answer = |s: &mut Stream, h: &mut MemoryHost| {
            h.response_headers = vec![(":status".into(), "200".into())];
            s.on_response_headers(&w.vm, h, true);
            s.on_log(&w.vm, h);
        };
        h.now_ns += 1_000_000_000;
        answer(&mut streams[3], &mut h);
        w.vm.on_tick(&mut h);
        h.now_ns += 1_000_000_000;
        w.vm.on_tick(&mut h);
        w.metrics = h.metrics.clone();
        assert_eq!(w.state("canary"), 0, "not yet overdue at the deadline itself");
        h.now_ns += 1_000_000;
        w.vm.on_tick(&mut h);
        w.metrics = h.metrics.clone();
        assert_eq!(
            w.state("canary"),
            1,
            "three requests without a first byte open it, still in flight"
        );
        let timeouts = |w: &World, d: &str| {
            w.metric(
                telemetry::DESTINATION_FAILURES_TOTAL,
                &[("model", "llama"), ("destination", d), ("reason", "timeout")],
            )
        };
        assert_eq!((timeouts(&w, "canary"), timeouts(&w, "stable")), (3, 0));
        // Their answers come late, successfully: not counted again, and the breaker stays open.
        let (late, _) = streams.split_at_mut(3);
        for s in late {
            answer(s, &mut h);
        }
        w.metrics = h.metrics.clone();
        assert_eq!((timeouts(&w, "canary"), w.state("canary")), (3, 1));
        w.vm.on_tick(&mut h);
        assert_eq!(h.tick_ms, 0, "nothing awaited: the timer stops");
    }

    #[test]
    fn resets_and_connect_failures_count_and_a_failed_trial_doubles_the_probation() {
        let mut w = World::new();
        let canary = to_canary(&w);
        for flags in [FLAG_CONNECT_FAILURE, FLAG_REMOTE_RESET, FLAG_CONNECTION_TERMINATION] {
            w.send("llama", canary, None, flags);
        }
        assert_eq!(w.state("canary"), 1);
        assert_eq!(
            w.metric(
                telemetry::DESTINATION_FAILURES_TOTAL,
                &[("model", "llama"), ("destination", "canary"), ("reason", "reset")]
            ),
            2
        );
        // A client that went away (no flags that blame the backend) changes nothing.
        let mut w2 = World::new();
        for _ in 0..5 {
            w2.send("llama", canary, None, 0x4000);
        }
        assert_eq!(w2.state("canary"), 0);
        // A failed trial: open again, for twice as long.
        w.now_ns += 10_000_000_000;
        w.send("llama", canary, Some(503), 0);
        assert_eq!(w.state("canary"), 1);
        w.now_ns += 10_000_000_000;
        assert_eq!(w.send("llama", canary, Some(200), 0).route.as_deref(), Some("stable"));
        w.now_ns += 10_000_000_000;
        assert_eq!(w.send("llama", canary, Some(200), 0).route.as_deref(), Some("canary"));
    }

    #[test]
    fn all_open_goes_to_the_fallback_model_rewritten_and_restored_then_503() {
        let mut w = World::new();
        let canary = to_canary(&w);
        for r in [TO_STABLE, canary] {
            for _ in 0..3 {
                w.send("llama", r, Some(500), 0);
            }
        }
        let s = w.send("llama", TO_STABLE, Some(200), 0);
        assert_eq!(s.route.as_deref(), Some("qwen-a"));
        assert_eq!(s.failover.as_deref(), Some("fallback"));
        assert!(
            String::from_utf8_lossy(&s.body).contains(r#""model":"Qwen/Qwen2-7B""#),
            "{}",
            String::from_utf8_lossy(&s.body)
        );
        assert!(
            String::from_utf8_lossy(&s.client_body).contains(r#""model":"llama""#),
            "the client's name is restored"
        );
        // The fallback fails too: 503 model_unavailable at once, retry-after the nearest probation.
        for _ in 0..3 {
            w.send("qwen", TO_STABLE, Some(502), 0);
        }
        w.now_ns += 2_500_000_000;
        let s = w.send("llama", TO_STABLE, Some(200), 0);
        let (status, headers) = s.reply.expect("a local reply");
        assert_eq!(status, 503);
        assert!(headers.contains(&("retry-after".into(), "8".into())), "{headers:?}");
        assert_eq!(s.route, None);
        assert_eq!(
            w.metric(REJECTED_TOTAL, &[("model", "llama"), ("reason", "model_unavailable")]),
            1
        );
    }
}
