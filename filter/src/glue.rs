//! proxy-wasm glue: the ABI implementation of the core's `Host` trait, and the root and HTTP
//! contexts that hand each callback to the core. No decisions live here (see `exchange`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::config::Config;
use crate::exchange::{Action, Buffer, Host, LogLevel, Map, Stream, Vm};
use crate::header_map::HeaderMap;
use crate::host;
use crate::policy::Store;
use crate::telemetry::{Kind, MetricOp};

/// The proxy-wasm host, as the core sees it. Metric ids are defined once per stat name (the
/// cache is the VM's; borrowed only for a lookup, so re-entrant calls are fine).
pub struct ProxyHost<'a> {
    metrics: &'a RefCell<HashMap<String, u32>>,
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
    fn set_header(&mut self, map: Map, name: &str, value: &str) {
        let _ = host::set_header(map_id(map), name, value);
    }
    fn remove_header(&mut self, map: Map, name: &str) {
        let _ = host::remove_header(map_id(map), name);
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
    fn set_filter_state(&mut self, key: &str, value: &[u8]) {
        let _ = host::set_property(&[key], value);
    }
    fn send_reply(&mut self, status: u32, details: &str, headers: &[(&str, &str)], body: &[u8]) -> bool {
        host::send_local_response(status, details, headers, body).is_ok()
    }
    fn clear_route_cache(&mut self) {
        let _ = host::call_foreign("clear_route_cache", &[]);
    }
    fn metric(&mut self, op: &MetricOp) {
        let (kind, name) = match op {
            MetricOp::Add { kind, name, .. } => (*kind, name),
            MetricOp::Record { name, .. } => (Kind::Histogram, name),
        };
        let known = self.metrics.borrow().get(name).copied();
        let id = match known {
            Some(id) => id,
            None => {
                let host_kind = match kind {
                    Kind::Counter => host::METRIC_COUNTER,
                    Kind::Gauge => host::METRIC_GAUGE,
                    Kind::Histogram => host::METRIC_HISTOGRAM,
                };
                let Ok(id) = host::define_metric(host_kind, name) else {
                    return;
                };
                self.metrics.borrow_mut().insert(name.clone(), id);
                id
            }
        };
        let _ = match op {
            MetricOp::Add { delta, .. } => host::increment_metric(id, *delta),
            MetricOp::Record { value, .. } => host::record_metric(id, *value),
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
}

/// What one VM shares between its root and HTTP contexts.
pub struct Shared {
    vm: Vm,
    metrics: RefCell<HashMap<String, u32>>,
}

impl Shared {
    fn with<R>(&self, f: impl FnOnce(&Vm, &mut ProxyHost) -> R) -> R {
        f(&self.vm, &mut ProxyHost { metrics: &self.metrics })
    }
}

#[derive(Default)]
pub struct Root {
    shared: Option<Rc<Shared>>,
}

impl Root {
    pub fn shared(&self) -> Option<Rc<Shared>> {
        self.shared.clone()
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
                    metrics: RefCell::new(HashMap::new()),
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

    pub fn on_tick(shared: &Shared) {
        shared.with(|vm, h| vm.on_tick(h));
    }
}

pub struct Http {
    shared: Option<Rc<Shared>>,
    stream: Stream,
}

impl Http {
    pub fn new(id: u32, shared: Option<Rc<Shared>>) -> Http {
        Http {
            shared,
            stream: Stream::new(id),
        }
    }

    fn run(&mut self, f: impl FnOnce(&mut Stream, &Vm, &mut ProxyHost) -> Action) -> Action {
        match self.shared.clone() {
            Some(s) => s.with(|vm, h| f(&mut self.stream, vm, h)),
            None => Action::Continue,
        }
    }

    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        self.run(|s, vm, h| s.on_request_headers(vm, h, end_of_stream))
    }

    pub fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.run(|s, vm, h| s.on_request_body(vm, h, body_size, end_of_stream))
    }

    pub fn on_response_headers(&mut self, end_of_stream: bool) -> Action {
        self.run(|s, vm, h| s.on_response_headers(vm, h, end_of_stream))
    }

    pub fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.run(|s, vm, h| s.on_response_body(vm, h, body_size, end_of_stream))
    }

    pub fn on_log(&mut self) {
        self.run(|s, vm, h| {
            s.on_log(vm, h);
            Action::Continue
        });
    }
}
