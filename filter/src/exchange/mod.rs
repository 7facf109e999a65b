//! One exchange, from the request headers to the log, driven through a small `Host` trait.
//!
//! This is the whole per-request protocol: what is read from the host and when, the order of
//! decisions (strip spoofed headers → scope → model → admission → route → rewrite), the hold
//! safety net, what is charged and counted on every ending, which response headers are set and
//! which filter state is written. The proxy-wasm glue implements `Host` with ABI calls and holds
//! no decisions; `memory_host::MemoryHost` implements it in memory for tests and `wasmpack route`.
//!
//! Here: the `Host` trait, the per-VM and per-request state. By job: `vm` (loading, the root's
//! timer, node facts, rate limit calls), `request_phase` (headers and body: scope, model,
//! routing headers, local replies), `admission` (access control, limits, the rate limit
//! service's answers, going on), `response_phase` (response headers and body, the end of the
//! exchange: counting and charging), `failover` (breakers and what a response tells of its
//! destination).

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

mod admission;
mod failover;
mod request_phase;
mod response_phase;
mod vm;

use failover::Awaiting;
use request_phase::details;
pub use request_phase::PEER_PRINCIPAL_STATE;

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
    /// The rate limit service's calls that requests wait for: the one table of calls in flight
    /// (by token: the request's context, the call, and when the tick gives up on it — a
    /// backstop: the host's own gRPC timeout answers first).
    callouts: RefCell<Vec<Callout>>,
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
/// `UPE`: the upstream broke the protocol, e.g. closed a chunked body before its end.
pub const FLAG_UPSTREAM_PROTOCOL_ERROR: u64 = 0x80_0000;

/// How long past its timeout the tick waits for a rate limit answer the host never delivered.
pub const CALLOUT_GRACE_NS: u64 = 1_000_000_000;

/// A call to the rate limit service that a request waits for (`Vm::callouts`).
#[derive(Debug, Clone, Copy)]
struct Callout {
    token: u32,
    context: u32,
    call: Call,
    deadline_ns: u64,
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
    /// What the answers so far refuse the request with (over a limit, or the service failed
    /// with `failureMode: deny`).
    refusal: Option<Reject>,
    /// When the calls were made (a failure that took the whole timeout is a timeout, whatever
    /// status the host reports: Envoy turns its own deadline into UNAVAILABLE).
    asked_ns: u64,
    /// Failover: the (model, destination, breaker slot) the request went to and when, until its
    /// outcome is counted.
    sent: Option<((usize, usize, usize), u64)>,
    /// Failover: its response headers came in time with a status that is no failure; the
    /// outcome waits for the end of the body (a backend that dies mid-answer fails).
    answered: bool,
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
            refusal: None,
            asked_ns: 0,
            sent: None,
            answered: false,
        }
    }

    #[cfg(any(test, feature = "decide"))]
    pub fn flow(&self) -> &RequestFlow {
        &self.flow
    }

    #[cfg(any(test, feature = "decide"))]
    /// The caller's identity as the filter determined it, and its source (`None`: not read,
    /// the request needed no identity).
    pub fn caller(&self) -> Option<(Option<&str>, Source)> {
        self.identity_source.map(|s| (self.principal.as_deref(), s))
    }
}

#[cfg(test)]
mod crossings;
#[cfg(test)]
mod failover_tests;
#[cfg(test)]
mod tests;
