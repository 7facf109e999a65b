//! proxy-wasm glue: the ABI implementation of the core's `Host` trait, and the root and HTTP
//! contexts that hand each callback to the core. No decisions live here (see `exchange`).

use std::cell::RefCell;
use std::rc::Rc;

use crate::config::Config;
use crate::exchange::{Action, Buffer, GrpcCall, Host, LogLevel, Map, Stream, Vm};
use crate::fast_hash::FastMap;
use crate::header_map::HeaderMap;
use crate::host;
use crate::policy::Store;
use crate::rls::Call;
use crate::telemetry::{Kind, MetricOp};

/// The proxy-wasm host, as the core sees it. Metric ids are defined once per stat name (the
/// cache is the VM's; borrowed only for a lookup, so re-entrant calls are fine).
pub struct ProxyHost<'a> {
    metrics: &'a RefCell<FastMap<String, u32>>,
    /// The VM's root context (detached calls are made for it).
    root_id: u32,
    /// The context whose callback runs (the root's own id in root callbacks).
    current_id: u32,
}

fn map_id(map: Map) -> u32 {
    match map {
        Map::Request => host::MAP_REQUEST_HEADERS,
        Map::Response => host::MAP_RESPONSE_HEADERS,
    }
}

fn buffer_id(which: Buffer) -> u32 {
    match which {
        Buffer::Request => host::BUF_REQUEST_BODY,
        Buffer::Response => host::BUF_RESPONSE_BODY,
    }
}

impl Store for ProxyHost<'_> {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, u32) {
        host::shared_data(key).unwrap_or((None, 0))
    }
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), bool> {
        host::set_shared_data(key, value, cas).map_err(|s| s == host::CAS_MISMATCH)
    }
}

impl Host for ProxyHost<'_> {
    fn now_ns(&mut self) -> u64 {
        host::now_nanos()
    }
    fn log(&mut self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Info => host::LOG_INFO,
            LogLevel::Warn => host::LOG_WARN,
            LogLevel::Error => host::LOG_ERROR,
        };
        host::log(level, message);
    }
    fn headers(&mut self, map: Map) -> HeaderMap {
        host::headers(map_id(map))
    }
    fn set_header(&mut self, map: Map, name: &str, value: &str) -> bool {
        host::set_header(map_id(map), name, value).is_ok()
    }
    fn remove_header(&mut self, map: Map, name: &str) -> bool {
        host::remove_header(map_id(map), name).is_ok()
    }
    fn body(&mut self, which: Buffer, start: usize, len: usize) -> Vec<u8> {
        host::buffer(buffer_id(which), start, len)
            .ok()
            .flatten()
            .unwrap_or_default()
    }
    fn replace_body(&mut self, which: Buffer, bytes: &[u8]) -> bool {
        // Envoy cannot splice a range: the whole buffer is replaced (size: anything at least as
        // large as the buffer).
        host::set_buffer(buffer_id(which), 0, usize::MAX >> 1, bytes).is_ok()
    }
    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        host::property(path)
    }
    fn set_filter_state(&mut self, key: &str, value: &[u8]) -> bool {
        host::set_property(&[key], value).is_ok()
    }
    fn send_reply(&mut self, status: u32, details: &str, headers: &[(&str, &str)], body: &[u8]) -> bool {
        host::send_local_response(status, details, headers, body).is_ok()
    }
    fn clear_route_cache(&mut self) -> bool {
        host::call_foreign("clear_route_cache", &[]).is_ok()
    }
    fn metric(&mut self, op: &MetricOp) {
        let stat = op.stat();
        // A stat the core keeps carries its id once it has one; the others are looked up by name.
        let id = match stat.host_id().or_else(|| self.metrics.borrow().get(&**stat).copied()) {
            Some(id) => id,
            None => {
                let host_kind = match op.kind() {
                    Kind::Counter => host::METRIC_COUNTER,
                    Kind::Gauge => host::METRIC_GAUGE,
                    Kind::Histogram => host::METRIC_HISTOGRAM,
                };
                let Ok(id) = host::define_metric(host_kind, stat) else {
                    return;
                };
                if !stat.is_kept() {
                    self.metrics.borrow_mut().insert(stat.to_string(), id);
                }
                id
            }
        };
        stat.set_host_id(id);
        let _ = match op {
            // A counter made at zero (`telemetry::failover_zeros`): defined above, nothing to add.
            MetricOp::Add { delta: 0, .. } => Ok(()),
            MetricOp::Add { delta, .. } => host::increment_metric(id, *delta),
            MetricOp::Record { value, .. } | MetricOp::Set { value, .. } => host::record_metric(id, *value),
        };
    }
    fn set_tick_ms(&mut self, ms: u32) {
        let _ = host::set_tick_period_ms(ms);
    }
    fn resume(&mut self, context_id: u32) -> bool {
        host::set_effective_context(context_id).is_ok() && host::resume_request().is_ok()
    }
    fn reply_to(&mut self, context_id: u32, status: u32, details: &str, headers: &[(&str, &str)], body: &[u8]) -> bool {
        host::set_effective_context(context_id).is_ok() && self.send_reply(status, details, headers, body)
    }
    fn memory_bytes(&mut self) -> u64 {
        // Pages of 64 KiB; reading the size is an instruction, not a host call.
        (core::arch::wasm32::memory_size(0) as u64) * 65_536
    }
    fn grpc_call(&mut self, call: &GrpcCall<'_>) -> Option<u32> {
        let switch = call.detached && self.current_id != self.root_id;
        if switch && host::set_effective_context(self.root_id).is_err() {
            return None;
        }
        let token = host::grpc_call(
            call.service,
            call.service_name,
            call.method,
            call.message,
            call.timeout_ms,
        )
        .ok();
        if switch {
            let _ = host::set_effective_context(self.current_id);
        }
        token
    }
}

/// What one VM shares between its root and HTTP contexts.
pub struct Shared {
    vm: Vm,
    metrics: RefCell<FastMap<String, u32>>,
    root_id: u32,
}

impl Shared {
    fn with<R>(&self, current_id: u32, f: impl FnOnce(&Vm, &mut ProxyHost) -> R) -> R {
        f(
            &self.vm,
            &mut ProxyHost {
                metrics: &self.metrics,
                root_id: self.root_id,
                current_id,
            },
        )
    }
}

pub struct Root {
    id: u32,
    shared: Option<Rc<Shared>>,
}

impl Root {
    pub fn new(id: u32) -> Root {
        Root { id, shared: None }
    }

    pub fn shared(&self) -> Option<Rc<Shared>> {
        self.shared.clone()
    }

    /// The request waiting for the answer `token` (the VM's table of calls), if any.
    pub fn caller_of(shared: &Shared, token: u32) -> Option<u32> {
        shared.vm.caller_of(token)
    }

    /// The answer to a call the root made (a `Report`).
    pub fn on_grpc(shared: &Shared, result: Result<&[u8], u32>) {
        shared.with(shared.root_id, |vm, h| vm.on_root_grpc(h, result));
    }

    pub fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match host::buffer(host::BUF_PLUGIN_CONFIGURATION, 0, size) {
            Ok(Some(b)) => b,
            _ => b"{}".to_vec(),
        };
        match Config::from_json(&bytes) {
            Ok(config) => {
                let vm = Vm::new(config, host::now_nanos());
                self.shared = Some(Rc::new(Shared {
                    vm,
                    metrics: RefCell::new(FastMap::default()),
                    root_id: self.id,
                }));
                host::log(host::LOG_INFO, "model-router: configuration loaded");
                true
            }
            Err(e) => {
                host::log(host::LOG_ERROR, &format!("model-router: invalid configuration: {e}"));
                false
            }
        }
    }

    /// Returns the requests whose rate limit answers are overdue, with those calls (see
    /// `Vm::on_tick`).
    pub fn on_tick(shared: &Shared) -> Vec<(u32, Vec<Call>)> {
        shared.with(shared.root_id, |vm, h| vm.on_tick(h))
    }
}

pub struct Http {
    id: u32,
    shared: Option<Rc<Shared>>,
    stream: Stream,
}

impl Http {
    pub fn new(id: u32, shared: Option<Rc<Shared>>) -> Http {
        Http {
            id,
            shared,
            stream: Stream::new(id),
        }
    }

    fn run(&mut self, f: impl FnOnce(&mut Stream, &Vm, &mut ProxyHost) -> Action) -> Action {
        match self.shared.clone() {
            Some(s) => s.with(self.id, |vm, h| f(&mut self.stream, vm, h)),
            None => Action::Continue,
        }
    }

    pub fn on_grpc(&mut self, token: u32, result: Result<&[u8], u32>) {
        self.run(|s, vm, h| {
            s.on_grpc_answer(vm, h, token, result);
            Action::Continue
        });
    }

    pub fn on_callout_expired(&mut self, calls: &[Call]) {
        self.run(|s, vm, h| {
            s.on_callout_expired(vm, h, calls);
            Action::Continue
        });
    }

    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        self.run(|s, vm, h| s.on_request_headers(vm, h, end_of_stream))
    }

    pub fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.run(|s, vm, h| s.on_request_body(vm, h, body_size, end_of_stream))
    }

    pub fn on_request_trailers(&mut self) -> Action {
        self.run(|s, vm, h| s.on_request_trailers(vm, h))
    }

    pub fn on_response_headers(&mut self, end_of_stream: bool) -> Action {
        self.run(|s, vm, h| s.on_response_headers(vm, h, end_of_stream))
    }

    pub fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.run(|s, vm, h| s.on_response_body(vm, h, body_size, end_of_stream))
    }

    pub fn on_response_trailers(&mut self) -> Action {
        self.run(|s, vm, h| s.on_response_trailers(vm, h))
    }

    pub fn on_log(&mut self) {
        self.run(|s, vm, h| {
            s.on_log(vm, h);
            Action::Continue
        });
    }
}
